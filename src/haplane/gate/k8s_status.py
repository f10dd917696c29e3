"""Errors the proxy answers itself, as Kubernetes `Status` objects.

Layer: gate. Pure: builds bytes. Kubernetes clients decode any non-2xx JSON body as a `Status`
(kubectl prints its `message`), so the proxy's own errors look like the API server's. Reasons
follow `metav1.StatusReason`: 400 and 431 BadRequest, 404 NotFound, 408 and 504 Timeout,
502 InternalError (there is no reason for a bad gateway), 503 ServiceUnavailable.
"""

from __future__ import annotations

import orjson

_PHRASES = {
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

REASONS = {
    400: "BadRequest",
    404: "NotFound",
    408: "Timeout",
    431: "BadRequest",
    502: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_body(code: int, message: str) -> bytes:
    return orjson.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": REASONS.get(code, "InternalError"),
            "code": code,
        }
    )


def status_response(code: int, message: str, *, head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 response that closes the connection (after a proxy error the client's
    byte stream may be out of step, so the connection is never reused)."""
    body = status_body(code, message)
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (code, _PHRASES.get(code, b"Error"), len(body))
    )
    return head if head_only else head + body
