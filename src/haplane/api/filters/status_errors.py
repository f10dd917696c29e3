"""Every failure becomes a Kubernetes `Status` with its code (a bug: 500, logged loudly), and
every response not already sent carries the region, replica and epoch headers.

Layer: api (filters).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from .. import errors
from ..errors import StatusError
from ..request import MAX_BODY_BYTES, Handler, json_response

log = logging.getLogger("haplane.api")


class StatusErrors:
    def __init__(
        self,
        epoch: Callable[[], int],
        stamp_headers: Callable[[web.StreamResponse, int], None],
    ):
        self._epoch = epoch
        self._stamp = stamp_headers

    async def __call__(self, request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
        # the epoch the request began under: a write is fenced and runs under it, and the
        # replica may learn a newer one while the write is in flight
        epoch = self._epoch()
        try:
            response = await handler(request)
        except StatusError as exc:
            response = json_response(exc.status(), exc.code)
        except web.HTTPRequestEntityTooLarge:
            response = json_response(
                errors.too_large(f"the request body exceeds {MAX_BODY_BYTES} bytes").status(), 413
            )
        except web.HTTPException:
            raise
        except Exception as exc:  # a bug: answer 500 as a Status and log it loudly
            log.exception("unhandled error serving %s %s", request.method, request.path)
            err = errors.internal(f"internal error: {type(exc).__name__}: {exc}")
            response = json_response(err.status(), 500)
        if not response.prepared:
            self._stamp(response, epoch)
        return response
