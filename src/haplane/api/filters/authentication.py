"""Who is asking. Layer: api (filters).

Until the platform's identities are wired in, every caller is the anonymous user (bind to
loopback): the link exists so that the real authenticators replace it without touching the
handlers.
"""

from __future__ import annotations

from aiohttp import web

from ..request import Handler


async def authenticate(request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
    request["user"] = {"username": "system:anonymous", "groups": ["system:unauthenticated"]}
    return await handler(request)
