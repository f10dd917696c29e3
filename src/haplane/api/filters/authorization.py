"""May they. Layer: api (filters).

Until RBAC is wired in, everything is allowed: the link exists so that the authorizer
replaces it without touching the handlers.
"""

from __future__ import annotations

from aiohttp import web

from ..request import Handler


async def authorize(request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
    return await handler(request)
