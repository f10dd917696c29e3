"""A resource request, resolved against the served types and routed to its verb's handler.

Layer: api (handlers). The fence is checked here, before a write's body is read: a fenced
region answers 503 at once (the storage layer checks again right before the transaction).
"""

from __future__ import annotations

from aiohttp import web

from .. import errors
from ..request import WRITES, RequestInfo, dry_run, resolve_target
from . import read, write
from .context import HandlerContext
from .patch import patch
from .reviews import review
from .subresource import subresource
from .watch import watch


async def serve(
    ctx: HandlerContext, request: web.BaseRequest, info: RequestInfo
) -> web.StreamResponse:
    target = resolve_target(info, ctx.registry)
    request["resource"] = target.rtype.plural
    if target.watch_path and request.method != "GET":
        raise errors.method_not_allowed(f"{request.method} is not supported on {request.path}")
    if target.rtype.virtual:
        return await review(ctx, request, target)
    q = request.query
    dry = dry_run(q)
    m = request.method
    if m in WRITES and not dry and target.rtype.fenced:
        ctx.check_fence()
    if target.subresource is not None:
        return await subresource(ctx, request, target, dry)
    if info.verb not in target.rtype.verbs:
        raise errors.method_not_allowed(
            f"{info.verb} is not supported on {target.rtype.plural}: "
            f"the resource supports {', '.join(target.rtype.verbs)}"
        )
    watching = target.watch_path or q.get("watch") in ("true", "1")
    if m == "GET" and watching:
        return await watch(ctx, request, target)
    if q.get("sendInitialEvents") in ("true", "1"):
        raise errors.unprocessable("sendInitialEvents is only for watch requests")
    if m == "GET":
        if target.name is None:
            return await read.list_(ctx, request, target)
        return await read.get(ctx, request, target)
    if m == "POST" and target.name is None:
        return await write.create(ctx, request, target, dry)
    if m == "PUT" and target.name is not None:
        return await write.update(ctx, request, target, dry)
    if m == "PATCH" and target.name is not None:
        return await patch(ctx, request, target, dry)
    if m == "DELETE" and target.name is not None:
        return await write.delete(ctx, request, target, dry)
    if m == "DELETE":
        return await write.delete_collection(ctx, request, target, dry)
    raise errors.method_not_allowed(f"{m} is not supported on {request.path}")
