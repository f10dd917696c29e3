"""create, update, delete and deletecollection.

Layer: api (handlers). Admission runs here, after authorization and decoding, before storage.
"""

from __future__ import annotations

from aiohttp import web

from .. import errors
from ..request import (
    Target,
    body,
    delete_options,
    field_manager,
    json_response,
    list_options,
)
from .context import HandlerContext


async def create(
    ctx: HandlerContext, request: web.BaseRequest, target: Target, dry_run: bool
) -> web.Response:
    t = target.rtype
    if t.custom and t.qualified in ctx.terminating_crds:
        raise errors.StatusError(
            405,
            "MethodNotAllowed",
            f"create not allowed while custom resource definition {t.qualified} is terminating",
        )
    obj = await body(request)
    await ctx.admit("create", target, obj)
    if ctx.ops is not None and not t.fenced:
        await ctx.ops.prepare_create(request, t, obj, dry_run)
    created = await ctx.store(target).create(
        target.namespace,
        obj,
        dry_run=dry_run,
        manager=field_manager(request),
        handed_over=True,
    )
    return json_response(created, 201)


async def update(
    ctx: HandlerContext, request: web.BaseRequest, target: Target, dry_run: bool
) -> web.Response:
    obj = await body(request)
    await ctx.admit("update", target, obj)
    updated = await ctx.store(target).update(
        target.namespace,
        target.name or "",
        obj,
        dry_run=dry_run,
        manager=field_manager(request),
    )
    return json_response(updated)


async def delete(
    ctx: HandlerContext, request: web.BaseRequest, target: Target, dry_run: bool
) -> web.Response:
    t = target.rtype
    name = target.name or ""
    options = delete_options(await body(request, optional=True) or {})
    result = await ctx.store(target).delete(
        target.namespace,
        name,
        precondition_uid=options.get("uid"),
        precondition_rv=options.get("resourceVersion"),
        dry_run=dry_run or options.get("dryRun") == "All",
        propagation=request.query.get("propagationPolicy") or options.get("propagationPolicy"),
    )
    if not result.deleted:  # waiting for finalizers: the object, as Kubernetes answers
        return json_response(result.object)
    meta = result.object["metadata"]
    return json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": meta.get("name"),
                "group": t.group,
                "kind": t.plural,
                "uid": meta.get("uid"),
            },
        }
    )


async def delete_collection(
    ctx: HandlerContext, request: web.BaseRequest, target: Target, dry_run: bool
) -> web.Response:
    opts = list_options(request.query, target.rtype)
    return json_response(
        await ctx.store(target).delete_collection(target.namespace, opts, dry_run=dry_run)
    )
