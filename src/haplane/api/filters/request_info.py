"""Resolve who the request is for (`haplane.api.request.request_info`) once, before
authentication: authorization and audit then judge the same attributes the handler serves.

Layer: api (filters). Stores `request["info"]` and the verb for the metrics.
"""

from __future__ import annotations

from aiohttp import web

from ..request import Handler, request_info


async def with_request_info(request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
    info = request_info(request.method, request.path.rstrip("/") or "/", request.query)
    request["info"] = info
    if info.resource_request:
        request["verb"] = info.verb
    return await handler(request)
