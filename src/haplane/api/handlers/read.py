"""get and list, as the object or list, or as the Table `kubectl get` asks for.

Layer: api (handlers).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import errors, tables
from ..request import Target, include_object, json_response, list_options
from ..resources import ResourceType
from .context import HandlerContext


async def get(ctx: HandlerContext, request: web.BaseRequest, target: Target) -> web.Response:
    got = await ctx.store(target).get(
        target.namespace, target.name or "", request.query.get("resourceVersion")
    )
    return json_response(maybe_table(request, target.rtype, [got], got))


async def list_(ctx: HandlerContext, request: web.BaseRequest, target: Target) -> web.Response:
    opts = list_options(request.query, target.rtype)
    listed = await ctx.store(target).list(target.namespace, opts)
    return json_response(maybe_table(request, target.rtype, listed["items"], listed))


def maybe_table(
    request: web.BaseRequest,
    t: ResourceType,
    objects: list[dict[str, Any]],
    plain: dict[str, Any],
) -> dict[str, Any]:
    """`kubectl get` asks for a Table (Accept: ...;as=Table;g=meta.k8s.io); others get the
    plain object or list."""
    version = tables.table_request(request.headers.get("Accept"))
    if version is None:
        return plain
    meta = (
        plain.get("metadata", {})
        if plain.get("kind", "").endswith("List")
        else {"resourceVersion": plain.get("metadata", {}).get("resourceVersion")}
    )
    try:
        return tables.to_table(
            objects,
            columns(t),
            list_meta=meta,
            include_object=include_object(request.query),
            version=version,
        )
    except ValueError as exc:
        raise errors.bad_request(str(exc)) from exc


def columns(t: ResourceType) -> list[tables.Column]:
    return (
        tables.crd_columns(list(t.printer_columns))
        if t.custom or t.printer_columns
        else tables.builtin_columns(t.kind)
    )
