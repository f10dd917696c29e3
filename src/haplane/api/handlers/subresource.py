"""Subresources: `status` (get, update, patch), `scale` (the same, through the Scale view of
the type's replica paths) and `finalize` (update) of namespaces.

Layer: api (handlers).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import errors
from ..crds import to_scale
from ..request import Target, body, json_response
from .context import HandlerContext
from .patch import patch_function


async def subresource(
    ctx: HandlerContext, request: web.BaseRequest, target: Target, dry_run: bool
) -> web.Response:
    store = ctx.store(target)
    sub, m, name = target.subresource or "", request.method, target.name or ""
    scale = target.rtype.scale_paths if sub == "scale" else None
    view = (lambda obj: to_scale(obj, scale)) if scale else (lambda obj: obj)
    if sub == "token":
        if m != "POST" or ctx.access is None:
            raise errors.method_not_allowed(f"{m} is not supported on {request.path}")
        sa = await store.get(target.namespace, name)
        return json_response(await ctx.access.token_request(sa, await body(request)), 201)
    if sub == "approval":
        if m != "PUT" or ctx.ops is None:
            raise errors.method_not_allowed(f"{m} is not supported on {request.path}")
        approval = await body(request)
        if not isinstance(approval, dict):
            raise errors.bad_request("the request body must be an object")
        return json_response(await ctx.ops.approval(store, request, name, approval, dry_run))
    if m == "GET" and sub in ("status", "scale"):
        return json_response(view(await store.get(target.namespace, name)))
    if m == "PUT":
        new = await body(request)
        return json_response(
            view(
                await store.update_subresource(
                    target.namespace, name, sub, lambda current: new, dry_run=dry_run
                )
            )
        )
    if m == "PATCH" and sub in ("status", "scale"):
        apply = await patch_function(request, target)

        def patched(current: dict[str, Any]) -> dict[str, Any]:
            return apply(view(current))  # a scale patch applies to the Scale view

        return json_response(
            view(
                await store.update_subresource(
                    target.namespace, name, sub, patched, dry_run=dry_run
                )
            )
        )
    raise errors.method_not_allowed(f"{m} is not supported on {request.path}")
