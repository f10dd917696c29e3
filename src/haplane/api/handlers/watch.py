"""watch: newline-delimited JSON events, flushed per event, served from the watch cache
(bookmarks, sendInitialEvents, timeoutSeconds; Tables for `kubectl get -w`).

Layer: api (handlers). A stream ends when the client leaves, the replica drains, or its
timeout passes; an error after the stream began is an ERROR event inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from aiohttp import web

from .. import errors, tables
from ..errors import StatusError
from ..generic_store import ListOptions
from ..request import JSON, RESPONSE_STARTED, Target, bounded_int, include_object, list_options
from ..selectors import (
    SelectorError,
    escape_field_value,
    parse_field_selector,
    parse_label_selector,
)
from .context import HandlerContext
from .read import columns

log = logging.getLogger("haplane.api")


async def watch(
    ctx: HandlerContext, request: web.BaseRequest, target: Target
) -> web.StreamResponse:
    q = request.query
    opts = list_options(q, target.rtype)
    if target.name is not None:  # /watch/.../NAME: a field selector on the name
        name_term = f"metadata.name={escape_field_value(target.name)}"
        try:
            fields = parse_field_selector(
                ",".join(filter(None, [q.get("fieldSelector"), name_term])),
                {"metadata.name", "metadata.namespace"},
            )
            labels = parse_label_selector(q.get("labelSelector"))
        except SelectorError as exc:
            raise errors.bad_request(str(exc)) from exc
        opts = ListOptions(labels, fields, 0, None, q.get("resourceVersion") or None)
    send_initial = q.get("sendInitialEvents") in ("true", "1")
    if send_initial and (
        q.get("resourceVersionMatch") != "NotOlderThan"
        or q.get("allowWatchBookmarks") not in ("true", "1")
    ):
        raise errors.unprocessable(
            "sendInitialEvents requires resourceVersionMatch=NotOlderThan and "
            "allowWatchBookmarks=true"
        )
    timeout = None
    if q.get("timeoutSeconds"):
        timeout = float(bounded_int(q["timeoutSeconds"], "timeoutSeconds"))
    table_version = tables.table_request(request.headers.get("Accept"))
    include = include_object(q)
    cols = columns(target.rtype)
    sent_headers = False
    response = web.StreamResponse(headers={"Content-Type": JSON})
    response.enable_chunked_encoding()
    ctx.stamp_headers(response)
    await response.prepare(request)
    started = request.get(RESPONSE_STARTED)
    if started is not None:
        started()
    gauge = ctx.watch_gauge(target.rtype.plural)
    gauge.inc()
    events = ctx.store(target).watch(
        target.namespace,
        opts,
        bookmarks=q.get("allowWatchBookmarks") in ("true", "1"),
        timeout_seconds=timeout,
        send_initial_events=send_initial,
        ticks=True,
    )
    try:
        async for ev in events:
            # Checked at every event and, on a silent stream, every tick (about a second):
            # aiohttp does not cancel a handler whose client left, and a quiet watch would
            # otherwise hold its etcd watch forever.
            if request.transport is None or request.transport.is_closing():
                break  # the client went away
            if ctx.stopping.is_set():
                break  # draining: end the stream cleanly, the client re-watches elsewhere
            if ev.type == "TICK":
                continue
            if not table_version or ev.type not in ("ADDED", "MODIFIED", "DELETED"):
                await response.write(ev.encoded())
                continue
            obj = tables.table_for_watch_event(
                ev.object,
                cols,
                include_object=include,
                version=table_version,
                no_headers=sent_headers,
            )
            sent_headers = True
            await response.write(json.dumps({"type": ev.type, "object": obj}).encode() + b"\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    except StatusError as exc:  # e.g. the initial list failed: say so inside the stream
        with contextlib.suppress(ConnectionResetError):
            await response.write(
                json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n"
            )
    except Exception as exc:  # a bug: the stream is open, so report it as an ERROR event
        log.exception("watch on %s failed", request.path)
        status = errors.internal(f"watch failed: {type(exc).__name__}: {exc}").status()
        with contextlib.suppress(ConnectionResetError):
            await response.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
    finally:
        gauge.dec()
        await events.aclose()  # type: ignore[attr-defined]
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response
