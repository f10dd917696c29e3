"""patch: JSON patch, merge patch, strategic merge patch (built-in types with a patch
schema), and server-side apply (`application/apply-patch+yaml`).

Layer: api (handlers). The patch itself becomes a function of the current object, applied by
the store inside its optimistic-concurrency loop; patch errors become Statuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from .. import errors
from ..patch import PatchError, apply_json_patch, apply_merge_patch, apply_strategic_merge_patch
from ..request import Target, body, content_type, field_manager, json_loads, json_response
from ..request import raw_body as read_raw
from .context import HandlerContext

APPLY_PATCH = "application/apply-patch+yaml"


async def patch(
    ctx: HandlerContext, request: web.BaseRequest, target: Target, dry_run: bool
) -> web.Response:
    store = ctx.store(target)
    if content_type(request) == APPLY_PATCH:
        manager = request.query.get("fieldManager")
        if not manager:
            raise errors.unprocessable(
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                "is required for apply patch"
            )
        force = request.query.get("force") in ("true", "1")
        obj = await body(request, content_type="application/yaml")
        applied, created = await store.apply(
            target.namespace,
            target.name or "",
            obj,
            manager=manager[:128],
            force=force,
            dry_run=dry_run,
        )
        return json_response(applied, 201 if created else 200)
    guarded = await patch_function(request, target)
    patched = await store.patch(
        target.namespace,
        target.name or "",
        guarded,
        dry_run=dry_run,
        manager=field_manager(request),
    )
    return json_response(patched)


async def patch_function(
    request: web.BaseRequest, target: Target
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The request's patch as a function of the current object (errors become Statuses)."""
    ctype = content_type(request)
    raw = await read_raw(request)
    try:
        document = json_loads(raw)[0] if raw else None
    except ValueError as exc:
        raise errors.bad_request(f"the patch is not valid JSON: {exc}") from exc
    request["object"] = document  # for the audit log, as Kubernetes logs a patch
    schema = target.rtype.patch_schema
    if ctype == "application/merge-patch+json":

        def apply(obj: dict[str, Any]) -> dict[str, Any]:
            result = apply_merge_patch(obj, document)
            if not isinstance(result, dict):
                raise errors.bad_request("a merge patch must be a JSON object")
            return result
    elif ctype == "application/json-patch+json":

        def apply(obj: dict[str, Any]) -> dict[str, Any]:
            result = apply_json_patch(obj, document)
            if not isinstance(result, dict):
                raise errors.unprocessable("the JSON patch replaced the whole object")
            return result
    elif ctype == "application/strategic-merge-patch+json" and schema is not None:

        def apply(obj: dict[str, Any]) -> dict[str, Any]:
            return apply_strategic_merge_patch(obj, document, schema)
    else:
        raise errors.unsupported_media(
            f"the body of the request was in an unknown format - accepted media types "
            f"include: application/json-patch+json, application/merge-patch+json"
            f"{', application/strategic-merge-patch+json' if schema else ''} "
            f"(got {ctype!r})"
        )

    def guarded(obj: dict[str, Any]) -> dict[str, Any]:
        try:
            return apply(obj)
        except PatchError as exc:
            raise errors.StatusError(
                exc.code, "BadRequest" if exc.code == 400 else "Invalid", exc.message
            ) from exc

    return guarded
