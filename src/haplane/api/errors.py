"""Kubernetes `Status` errors: every failure of the API becomes one of these at the boundary.

Layer: api. Pure data.

    StatusError(code, reason, message)      -> a `Status` object with that HTTP code
      bad_request 400 BadRequest, not_found 404 NotFound, already_exists 409 AlreadyExists,
      conflict 409 Conflict, gone 410 Expired, invalid 422 Invalid (with causes),
      too_large 413 RequestEntityTooLarge, unsupported_media 415 UnsupportedMediaType,
      method_not_allowed 405 MethodNotAllowed, timeout 504 Timeout (outcome unknown),
      unavailable 503 ServiceUnavailable, internal 500 InternalError
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson


class StatusError(Exception):
    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(kind: str | None, name: str | None, group: str | None) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if name:
        d["name"] = name
    if group:
        d["group"] = group
    if kind:
        d["kind"] = kind
    return d


def dumps(body: Any) -> bytes:
    """JSON for responses: orjson (measured 17-21x faster than the standard library, see
    bench/json_codecs.py); the standard library for what orjson refuses (integers beyond 64
    bits), so a valid object always serialises."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def not_found(resource: str, name: str, group: str = "") -> StatusError:
    qualified = f"{resource}.{group}" if group else resource
    return StatusError(
        404,
        "NotFound",
        f'{qualified} "{name}" not found',
        details=_details(resource, name, group),
    )


def no_such_resource(path: str) -> StatusError:
    return StatusError(
        404, "NotFound", f"the server could not find the requested resource ({path})"
    )


def already_exists(resource: str, name: str, group: str = "") -> StatusError:
    qualified = f"{resource}.{group}" if group else resource
    return StatusError(
        409,
        "AlreadyExists",
        f'{qualified} "{name}" already exists',
        details=_details(resource, name, group),
    )


def conflict(resource: str, name: str, why: str, group: str = "") -> StatusError:
    qualified = f"{resource}.{group}" if group else resource
    return StatusError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified} "{name}": {why}',
        details=_details(resource, name, group),
    )


def gone(message: str) -> StatusError:
    return StatusError(410, "Expired", message)


def invalid(kind: str, name: str, causes: Sequence[dict[str, Any]], group: str = "") -> StatusError:
    """422 as apimachinery's NewInvalid words it: `Kind.group "name" is invalid: ERR`, the
    errors as its aggregate prints them (each text once; several in brackets)."""
    texts = list(dict.fromkeys(f"{c.get('field', '')}: {c.get('message', '')}" for c in causes))
    summary = texts[0] if len(texts) == 1 else f"[{', '.join(texts)}]"
    qualified = f"{kind}.{group}" if group else kind
    message = f'{qualified} "{name}" is invalid' + (f": {summary}" if texts else "")
    details = _details(kind, name, group)
    details["causes"] = list(causes)
    return StatusError(422, "Invalid", message, details=details)


def unprocessable(message: str) -> StatusError:
    return StatusError(422, "Invalid", message)


def too_large(message: str) -> StatusError:
    return StatusError(413, "RequestEntityTooLarge", message)


def unsupported_media(message: str) -> StatusError:
    return StatusError(415, "UnsupportedMediaType", message)


def method_not_allowed(message: str) -> StatusError:
    return StatusError(405, "MethodNotAllowed", message)


def timeout(message: str) -> StatusError:
    return StatusError(504, "Timeout", message)


def unavailable(message: str) -> StatusError:
    return StatusError(503, "ServiceUnavailable", message)


def internal(message: str) -> StatusError:
    return StatusError(500, "InternalError", message)


def unauthorized() -> StatusError:
    """401: no credentials where they are needed, or credentials that did not check out
    (Kubernetes says no more than this, on purpose)."""
    return StatusError(401, "Unauthorized", "Unauthorized")


def forbidden(
    user: str,
    verb: str,
    *,
    resource: str = "",
    subresource: str = "",
    group: str = "",
    namespace: str = "",
    name: str = "",
    path: str = "",
    reason: str = "",
) -> StatusError:
    """403 in kube-apiserver's words: `configmaps "x" is forbidden: User "alice" cannot get
    resource "configmaps" in API group "" in the namespace "dev"`, or `forbidden: User "alice"
    cannot get path "/metrics"`."""
    if not resource:
        message = f'forbidden: User "{user}" cannot {verb} path "{path}"'
        return StatusError(403, "Forbidden", message + (f": {reason}" if reason else ""))
    qualified = f"{resource}.{group}" if group else resource
    what = f'{qualified} "{name}"' if name else qualified
    full = f"{resource}/{subresource}" if subresource else resource
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    message = (
        f'{what} is forbidden: User "{user}" cannot {verb} resource "{full}" in API group '
        f'"{group}" {scope}'
    )
    if reason:
        message += f": {reason}"
    return StatusError(
        403, "Forbidden", message, details=_details(resource, name or None, group or None)
    )
