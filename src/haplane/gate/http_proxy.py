"""L7 mode: an HTTP/1.1 reverse proxy with per-request balancing (least outstanding requests).

Layer: gate. Opens sockets (the listener, pooled connections to upstreams). Parsing is httptools
(llhttp, a C parser) on asyncio Protocols: FIELD-NOTES measured an aiohttp-based proxy at ~150 us
per request, several times HAProxy; here a request costs a few parser callbacks and two writes.

Per client connection, requests are served in order (HTTP/1.1 pipelining is honoured by queueing);
each request goes to one upstream over a pooled keep-alive connection. Bodies stream both ways
as they arrive (chunked bodies are re-framed chunk by chunk, so a watch event reaches the client
as soon as the upstream flushed it). Backpressure: a full write buffer on one side pauses reading
on the other.

Retries (`retry_decision`, pure): a request is re-sent to another upstream only if it was never
sent (connect failed, or the pooled connection was found closed before the write), or if it is an
idempotent read (GET, HEAD, OPTIONS) that failed before any response byte reached the client and
whose body (if any) is still held. A write that may have reached an upstream is never re-sent:
502 (connection lost) or 504 (no response headers in time) instead. Errors the proxy makes itself
are Kubernetes `Status` bodies (`k8s_status`) and close the client connection.

Deadlines (one per client connection, checked by the engine's periodic sweep, so the hot path
sets a float instead of arming a timer):
- IDLE: no request in progress: `client_idle` (a new connection: `client_header`) -> close;
- HEADERS: request started: `client_header` to the end of its headers -> 408;
- BODY: request body in progress: `client_idle` between bytes -> 408;
- WAIT: request sent: `response_header` to the response headers -> retry a GET, else 504;
- STREAM: response body: `response_idle` between bytes -> abort; none for watches (`?watch=`) and
  upgraded connections (101), which may be silent for minutes.

TLS (`ListenerSpec.tls`, what `haplane up` gives an l7 gate): the listener terminates the
client's TLS; a client certificate verified against the platform CA becomes `X-Remote-User`
(CN) and `X-Remote-Group` (each O) on every request of that connection, and whatever
`X-Remote-*` headers the client sent are dropped. Upstreams are dialled over TLS (verified
against the platform CA) with the front-proxy certificate, the one identity the replicas
believe those headers from (kube-aggregator's requestheader scheme). A client without a
certificate passes its own credentials (a bearer token) on untouched. Both pairs are re-read
when their files change (`haplane pki rotate`), from the next handshake on.

Not done: trailers are dropped; headers listed in `Connection` other than the standard hop-by-hop
ones are forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from pathlib import Path
from typing import cast

import httptools

from haplane.auth.listener import ListenerAccess
from haplane.auth.pki import PkiError, client_context, identity_from_peercert

from .balancing import Pool, Routing, Upstream
from .health import UpstreamState
from .k8s_status import status_response
from .listening import open_server
from .settings import ListenerSpec, ListenerTls
from .tcp_relay import close_with_linger, describe_connect_error

log = logging.getLogger("haplane.gate")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)
MAX_HEAD = 64 * 1024  # request line + headers
MAX_REPLAY = 1024 * 1024  # an idempotent request's body kept for a retry
MAX_PENDING = 256 * 1024  # request bytes buffered while no upstream connection is attached
MAX_QUEUE = 16  # pipelined requests waiting behind the current one

_IDLE, _HEADERS, _BODY, _WAIT, _STREAM, _TUNNEL = range(6)
_INF = float("inf")
_BY_UPSTREAM, _BY_BUFFER = 1, 2


def is_watch(url: bytes) -> bool:
    """A Kubernetes watch: `?watch=true|1` (any value but false/0/empty) or the legacy
    `/watch/` path prefix. Watches may hold a response open and silent for minutes."""
    path, _, query = url.partition(b"?")
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == b"watch":
            return value.lower() not in (b"", b"0", b"false")
    return b"/watch/" in path


def retry_decision(
    *, sent: bool, idempotent: bool, replayable: bool, attempts: int, retries: int, timed_out: bool
) -> int:
    """0 = try another upstream; otherwise the status to answer. Only called while no response
    byte has reached the client."""
    if not sent:
        return 0
    if idempotent and replayable and attempts < retries:
        return 0
    return 504 if timed_out else 502


class _HeadTooLarge(Exception):
    pass


class _BadUpstreamResponse(Exception):
    pass


class Exchange:
    """One request and its response."""

    __slots__ = (
        "attempts",
        "body_done",
        "cancelled",
        "chunked",
        "close_after",
        "conn",
        "failure",
        "finished",
        "has_body",
        "head",
        "http10",
        "idempotent",
        "keep_alive",
        "method",
        "pending",
        "pending_size",
        "pool",
        "replay",
        "replay_size",
        "responded",
        "sent",
        "tried",
        "upgrade",
        "upstream",
        "watch",
    )

    def __init__(
        self,
        method: bytes,
        head: bytes,
        *,
        watch: bool,
        upgrade: bool,
        keep_alive: bool,
        chunked: bool,
        has_body: bool,
        http10: bool = False,
    ) -> None:
        self.method = method
        self.http10 = http10  # cannot read chunked: bodies of unknown length end with the close
        self.head = head
        self.idempotent = method in IDEMPOTENT and not upgrade
        self.watch = watch
        self.upgrade = upgrade
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.has_body = has_body
        self.body_done = False
        self.pending: list[bytes] = []  # request bytes not yet written (framed as on the wire)
        self.pending_size = 0
        self.replay: list[bytes] | None = [] if self.idempotent else None
        self.replay_size = 0
        self.upstream: Upstream | None = None  # counted in upstream.active while set
        self.pool: Pool | None = None
        self.conn: UpstreamConnection | None = None
        self.tried: list[Upstream] | None = None
        self.attempts = 0
        self.failure: tuple[int, str] | None = None
        self.sent = False
        self.responded = False
        self.close_after = False
        self.cancelled = False
        self.finished = False


class HttpClient(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "_chunked",
        "_conn_lines",
        "_has_body",
        "_head",
        "_head_size",
        "_host",
        "_identity",
        "_url",
        "_xff",
        "client_eof",
        "closed",
        "current",
        "deadline",
        "in_headers",
        "listener",
        "parser",
        "parsing",
        "paused",
        "peer",
        "phase",
        "queue",
        "routing",
        "transport",
        "upgrading",
        "writing_paused",
    )

    def __init__(self, listener: HttpListener) -> None:
        self.listener = listener
        self.routing = listener.routing
        self.parser = httptools.HttpRequestParser(self)
        self.current: Exchange | None = None
        self.parsing: Exchange | None = None
        self.queue: deque[Exchange] | None = None
        self.phase = _IDLE
        self.deadline = _INF
        self.closed = False
        self.client_eof = False
        self.in_headers = False
        self.upgrading = False
        self.paused = 0
        self.writing_paused = False
        self.peer = b"unknown"
        self._identity = b""  # X-Remote-* lines of a verified client certificate
        self._reset_request()

    def _reset_request(self) -> None:
        self._url = b""
        self._head: list[bytes] = []
        self._head_size = 0
        self._xff: bytes | None = None
        self._host = False
        self._chunked = False
        self._has_body = False
        self._conn_lines: list[bytes] | None = None

    # ---- transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0]).encode()
        listener = self.listener
        if listener.tls is not None:
            self._identity = listener.identity_lines(transport.get_extra_info("ssl_object"))
        listener.accepted_total += 1
        listener.connections.add(self)
        self._set_phase(_IDLE, self.routing.timeouts.client_header)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.upgrading:
            ex = self.current
            if ex is not None and not ex.finished:
                self._forward_request_bytes(ex, data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrading = True
            rest = data[int(exc.args[0]) :]
            ex = self.current
            if rest and ex is not None and not ex.finished:
                self._forward_request_bytes(ex, rest)
        except httptools.HttpParserError as exc:
            too_large = isinstance(exc.__context__, _HeadTooLarge)
            self._reject(431 if too_large else 400, f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool:
        # A client may half-close after its request: answer it, then close.
        self.client_eof = True
        return not (self.current is None and not self.in_headers)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        pending = [self.current, self.parsing, *(self.queue or ())]
        for ex in pending:
            if ex is None or ex.finished:
                continue
            ex.cancelled = True
            ex.finished = True
            conn = ex.conn
            if conn is not None:
                ex.conn = None
                conn.exchange = None
                conn.abort()  # a half-read response or a tunnel cannot be reused
            self.unassign(ex)
        self.current = self.parsing = None
        self.queue = None

    def pause_writing(self) -> None:
        self.writing_paused = True
        ex = self.current
        if ex is not None and ex.conn is not None:
            ex.conn.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        ex = self.current
        if ex is not None and ex.conn is not None:
            ex.conn.resume_reading()

    # ---- httptools callbacks (request) ------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.closed:
            return
        self.in_headers = True
        self._reset_request()
        if self.current is None:
            self._set_phase(_HEADERS, self.routing.timeouts.client_header)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD:
            raise _HeadTooLarge
        lname = name.lower()
        if lname in _HOP_BY_HOP:
            if lname == b"connection" or lname == b"upgrade":
                # kept aside: forwarded only if this turns out to be an Upgrade request
                if self._conn_lines is None:
                    self._conn_lines = []
                self._conn_lines.append(name + b": " + value + b"\r\n")
            return
        if lname == b"x-forwarded-for":
            self._xff = value
            return
        if lname.startswith(b"x-remote-") and self.listener.tls is not None:
            return  # only the proxy asserts identities, from the verified certificate
        if lname == b"content-length":
            self._has_body = True
        elif lname == b"transfer-encoding":
            self._has_body = True
            self._chunked = b"chunked" in value.lower()
        elif lname == b"host":
            self._host = True
        self._head.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.in_headers = False
        if self.closed:
            return
        method = parser.get_method()
        upgrade = parser.should_upgrade()
        lines = self._head
        if upgrade and self._conn_lines:
            lines.extend(self._conn_lines)
        if not self._host:
            spec = self.listener.spec
            lines.append(b"Host: %s:%d\r\n" % (spec.host.encode(), self.listener.port))
        xff = self._xff + b", " + self.peer if self._xff else self.peer
        head = b"%s %s HTTP/1.1\r\n%s%sX-Forwarded-For: %s\r\n\r\n" % (
            method,
            self._url,
            b"".join(lines),
            self._identity,
            xff,
        )
        ex = Exchange(
            method,
            head,
            watch=is_watch(self._url),
            upgrade=upgrade,
            keep_alive=parser.should_keep_alive() and not upgrade,
            chunked=self._chunked,
            has_body=self._has_body,
            http10=parser.get_http_version() == "1.0",
        )
        self.parsing = ex
        if self.current is None:
            self.current = ex
            self._dispatch(ex)
        else:
            if self.queue is None:
                self.queue = deque()
            self.queue.append(ex)
            if len(self.queue) >= MAX_QUEUE:
                self.pause_for(_BY_BUFFER)

    def on_body(self, data: bytes) -> None:
        ex = self.parsing
        if ex is None or ex.finished:
            return
        if ex.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self._forward_request_bytes(ex, data)

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        if ex is None or ex.finished:
            return
        ex.body_done = True
        if ex.chunked:
            self._forward_request_bytes(ex, b"0\r\n\r\n")
        if ex is self.current and self.phase == _BODY:
            self._set_phase(_WAIT, self.routing.timeouts.response_header)

    # ---- forwarding the request ---------------------------------------------------------------

    def _forward_request_bytes(self, ex: Exchange, data: bytes) -> None:
        replay = ex.replay
        if replay is not None:
            ex.replay_size += len(data)
            if ex.replay_size > MAX_REPLAY:
                ex.replay = None
            else:
                replay.append(data)
        conn = ex.conn
        if conn is not None:
            conn.bytes_up += len(data)
            conn.transport.write(data)
            if self.phase == _BODY and ex is self.current:
                self.deadline = self.listener.loop.time() + self.routing.timeouts.client_idle
        else:
            ex.pending.append(data)
            ex.pending_size += len(data)
            if ex.pending_size > MAX_PENDING:
                self.pause_for(_BY_BUFFER)

    def _dispatch(self, ex: Exchange) -> None:
        pool = self.routing.active_pool
        upstream = pool.pick(ex.tried) if pool is not None else None
        if pool is None or upstream is None:
            if ex.failure is not None:
                self._fail(ex, *ex.failure)
            elif pool is None:
                self._fail(ex, 503, "no active upstream pool")
            else:
                self._fail(ex, 503, f"no healthy upstream in pool {pool.name}")
            return
        ex.upstream = upstream
        ex.pool = pool
        upstream.active += 1
        self._set_phase(_WAIT if ex.body_done else _BODY, self._phase_timeout(ex))
        idle = upstream.idle
        while idle:
            conn = idle.pop()
            if conn.alive:
                # only this module pools connections: every idle one is an UpstreamConnection
                self._send(ex, cast(UpstreamConnection, conn))
                return
        task = self.listener.loop.create_task(self._connect(ex, upstream, pool))
        self.listener.pending.add(task)
        task.add_done_callback(self.listener.pending.discard)

    def _phase_timeout(self, ex: Exchange) -> float:
        t = self.routing.timeouts
        return t.response_header if ex.body_done else t.client_idle

    async def _connect(self, ex: Exchange, upstream: Upstream, pool: Pool) -> None:
        routing = self.routing
        timeout = routing.timeouts.connect
        address = upstream.address
        try:
            async with asyncio.timeout(timeout):
                upstream_tls = self.listener.upstream_tls
                _, conn = await self.listener.loop.create_connection(
                    lambda: UpstreamConnection(upstream, self.listener),
                    address.host,
                    address.port,
                    ssl=upstream_tls,
                    server_hostname=address.host if upstream_tls is not None else None,
                )
        except (OSError, TimeoutError) as exc:
            routing.upstream_failed(upstream, describe_connect_error(exc, timeout))
            if ex.finished:
                return
            self.unassign(ex)
            ex.tried = [*(ex.tried or ()), upstream]
            self._dispatch(ex)  # nothing was sent: safe for every method
            return
        except Exception:
            log.exception("l7 connect: unexpected error")
            if not ex.finished:
                self._fail(ex, 502, "internal error while connecting to an upstream")
            return
        if ex.finished:
            conn.park()
            return
        if (
            upstream.counters.state is not UpstreamState.UP
            or upstream.retired
            or routing.active_pool is not pool
        ):
            conn.abort()
            self.unassign(ex)
            self._dispatch(ex)  # nothing sent yet; pick again (maybe in the new active pool)
            return
        self._send(ex, conn)

    def _send(self, ex: Exchange, conn: UpstreamConnection) -> None:
        ex.conn = conn
        conn.exchange = ex
        conn.client = self
        if ex.pending:
            data = ex.head + b"".join(ex.pending)
            ex.pending = []
            ex.pending_size = 0
        else:
            data = ex.head
        ex.sent = True
        conn.bytes_up += len(data)
        conn.transport.write(data)
        if self.writing_paused:
            conn.pause_reading()
        if self.paused & _BY_BUFFER:
            self._check_buffer()

    # ---- called by the upstream connection --------------------------------------------------

    def response_started(self, ex: Exchange) -> None:
        ex.responded = True
        if ex.watch or ex.upgrade:
            self._set_phase(_STREAM, _INF)
        else:
            self._set_phase(_STREAM, self.routing.timeouts.response_idle)

    def start_tunnel(self, ex: Exchange) -> None:
        ex.responded = True
        self._set_phase(_TUNNEL, _INF)

    def exchange_done(self, ex: Exchange, status: int) -> None:
        ex.finished = True
        ex.conn = None
        self.unassign(ex)
        self.resume_for(_BY_UPSTREAM)  # that upstream connection no longer reads from us
        self.listener.count(status)
        self.current = None
        if ex.close_after or not ex.keep_alive:
            close_with_linger(self.transport, self.routing.timeouts.linger)
            self.closed = True
            return
        self._next_exchange()

    def upstream_failed(self, ex: Exchange, reason: str, *, timed_out: bool) -> None:
        """The upstream connection serving `ex` ended or timed out before the response did."""
        if ex.finished:
            return
        ex.conn = None
        if ex.responded:
            ex.finished = True
            self.unassign(ex)
            self.listener.count(502)
            self.closed = True
            self.transport.abort()  # a truncated response must not look complete
            return
        upstream = ex.upstream
        decision = retry_decision(
            sent=ex.sent,
            idempotent=ex.idempotent,
            replayable=ex.replay is not None,
            attempts=ex.attempts,
            retries=self.routing.retries,
            timed_out=timed_out,
        )
        self.unassign(ex)
        name = upstream.name if upstream is not None else "?"
        if decision:
            method = ex.method.decode(errors="replace")
            retry_note = "" if ex.idempotent else f"; a {method} is never re-sent"
            self._fail(ex, decision, f"upstream {name}: {reason}{retry_note}")
            return
        if upstream is not None:
            ex.tried = [*(ex.tried or ()), upstream]
        if ex.sent:
            ex.attempts += 1
            ex.failure = (504 if timed_out else 502, f"upstream {name}: {reason}")
            ex.pending = list(ex.replay or ())
            ex.pending_size = ex.replay_size
            ex.sent = False
            self.listener.retries_total += 1
        self._dispatch(ex)

    # ---- deadlines ----------------------------------------------------------------------------

    def _set_phase(self, phase: int, timeout: float) -> None:
        self.phase = phase
        self.deadline = self.listener.loop.time() + timeout if timeout != _INF else _INF

    def on_deadline(self) -> None:
        phase = self.phase
        t = self.routing.timeouts
        ex = self.current
        if phase == _IDLE:
            self.closed = True
            self.transport.close()
        elif phase == _HEADERS:
            self._reject(408, f"request headers not received within {t.client_header:g}s")
        elif ex is None or ex.finished:
            self._set_phase(_IDLE, t.client_idle)
        elif phase == _BODY:
            self._detach(ex)
            self._fail(ex, 408, f"request body stalled for {t.client_idle:g}s")
        elif phase == _WAIT:
            if ex.conn is None:  # still connecting: the connect timeout decides
                self._set_phase(_WAIT, t.connect)
                return
            self._detach(ex)
            self.upstream_failed(
                ex, f"no response headers within {t.response_header:g}s", timed_out=True
            )
        else:  # STREAM: the upstream stopped sending in the middle of a response
            self._detach(ex)
            self.upstream_failed(ex, f"response stalled for {t.response_idle:g}s", timed_out=True)

    # ---- internals ----------------------------------------------------------------------------

    def _next_exchange(self) -> None:
        queue = self.queue
        if queue:
            ex = queue.popleft()
            self.current = ex
            self._check_buffer()
            self._dispatch(ex)
        elif self.in_headers:
            self._set_phase(_HEADERS, self.routing.timeouts.client_header)
        elif self.listener.draining or self.client_eof:
            self.closed = True
            self.transport.close()
        else:
            self._set_phase(_IDLE, self.routing.timeouts.client_idle)

    def _detach(self, ex: Exchange) -> None:
        conn = ex.conn
        if conn is not None:
            ex.conn = None
            conn.exchange = None
            conn.abort()
        self.resume_for(_BY_UPSTREAM)

    def unassign(self, ex: Exchange) -> None:
        upstream = ex.upstream
        if upstream is not None:
            ex.upstream = None
            upstream.active -= 1

    def _fail(self, ex: Exchange, code: int, message: str) -> None:
        """Answer an error the proxy generated and close the connection."""
        ex.finished = True
        self._detach(ex)
        self.unassign(ex)
        if ex.responded or self.current is not ex:
            self.closed = True
            self.transport.abort()
            return
        self._reject(code, message, head_only=ex.method == b"HEAD")

    def _reject(self, code: int, message: str, *, head_only: bool = False) -> None:
        self.listener.count(code)
        ex = self.current
        if ex is not None and not ex.finished:
            if ex.responded:
                self.closed = True
                self.transport.abort()
                return
            ex.finished = True
            self._detach(ex)
            self.unassign(ex)
        if not self.transport.is_closing():
            self.transport.write(status_response(code, message, head_only=head_only))
            close_with_linger(self.transport, self.routing.timeouts.linger)
        self.closed = True

    def pause_for(self, why: int) -> None:
        if not self.paused and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused |= why

    def resume_for(self, why: int) -> None:
        if self.paused & why:
            self.paused &= ~why
            if not self.paused and not self.transport.is_closing():
                self.transport.resume_reading()

    def _check_buffer(self) -> None:
        queued = len(self.queue) if self.queue else 0
        buffered = sum(ex.pending_size for ex in (self.parsing, self.current) if ex is not None)
        if queued < MAX_QUEUE and buffered <= MAX_PENDING:
            self.resume_for(_BY_BUFFER)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream; serves one exchange at a time."""

    __slots__ = (
        "aborted",
        "alive",
        "bytes_down",
        "bytes_up",
        "client",
        "close_conn",
        "exchange",
        "has_length",
        "head",
        "head_out",
        "idle_since",
        "interim",
        "listener",
        "out_chunked",
        "parser",
        "read_paused",
        "reason",
        "stale_parser",
        "status",
        "transport",
        "tunnel",
        "until_close",
        "upgrade_lines",
        "upstream",
    )

    def __init__(self, upstream: Upstream, listener: HttpListener) -> None:
        self.upstream = upstream
        self.listener = listener
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.client: HttpClient | None = None
        self.alive = False
        self.aborted = False
        self.tunnel = False
        self.read_paused = False
        self.stale_parser = False
        self.interim = False
        self.idle_since = 0.0
        self.bytes_up = 0
        self.bytes_down = 0
        self.status = 0
        self._reset_response()

    def _reset_response(self) -> None:
        self.head: list[bytes] = []
        self.reason = b""
        self.has_length = False
        self.until_close = False
        self.out_chunked = False
        self.close_conn = False
        self.head_out: bytes | None = None
        self.upgrade_lines: list[bytes] | None = None

    # ---- transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.alive = True
        self.upstream.links.add(self)
        self.upstream.connections_total += 1

    def data_received(self, data: bytes) -> None:
        self.bytes_down += len(data)
        client = self.client
        if self.tunnel:
            if client is not None and not client.closed:
                client.transport.write(data)
            return
        if self.exchange is None or client is None:
            self.abort()  # bytes nobody asked for: this connection is out of step
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[int(exc.args[0]) :]
            if rest and not client.closed:
                client.transport.write(rest)
        except httptools.HttpParserError as exc:
            self._broken(f"malformed response: {exc}")
        if self.stale_parser:
            self.stale_parser = False
            self.parser = httptools.HttpResponseParser(self)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        upstream = self.upstream
        upstream.links.discard(self)
        upstream.bytes_closed[0] += self.bytes_up
        upstream.bytes_closed[1] += self.bytes_down
        if self in upstream.idle:
            upstream.idle.remove(self)
        ex = self.exchange
        client = self.client
        if ex is None or client is None:
            return
        self.exchange = None
        if self.tunnel:
            ex.finished = True
            ex.conn = None
            client.unassign(ex)
            if not client.closed:
                client.closed = True
                close_with_linger(client.transport, client.routing.timeouts.linger)
            return
        if ex.responded and self.until_close and exc is None and not self.aborted:
            # the response was delimited by the connection's end: that end completes it
            out = (self.head_out or b"") + (b"0\r\n\r\n" if self.out_chunked else b"")
            self.head_out = None
            if not client.closed:
                client.transport.write(out)
            client.exchange_done(ex, self.status)
            return
        if self.aborted:
            reason = "connection closed by the gate (upstream down, removed or its pool switched)"
        elif exc is None:
            reason = "connection closed"
        else:
            reason = f"connection lost: {exc}"
        if not ex.responded:
            reason += " before response headers"
        client.upstream_failed(ex, reason, timed_out=False)

    def pause_writing(self) -> None:
        if self.client is not None and self.exchange is not None:
            self.client.pause_for(_BY_UPSTREAM)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_for(_BY_UPSTREAM)

    # ---- httptools callbacks (response) -------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset_response()

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname in _HOP_BY_HOP:
            if lname == b"connection" and b"close" in value.lower():
                self.close_conn = True
            if lname == b"connection" or lname == b"upgrade":
                if self.upgrade_lines is None:
                    self.upgrade_lines = []
                self.upgrade_lines.append(name + b": " + value + b"\r\n")
            return
        if lname == b"content-length":
            self.has_length = True
        elif lname == b"transfer-encoding":
            self.out_chunked = b"chunked" in value.lower()
        self.head.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        ex = self.exchange
        client = self.client
        assert ex is not None and client is not None
        status = self.parser.get_status_code()
        self.status = status
        if status < 200 and status != 101:  # 100 Continue, 103 Early Hints: pass through
            self.interim = True
            if not client.closed:
                client.transport.write(
                    b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, self.reason, b"".join(self.head))
                )
            return
        if status == 101:
            if not ex.upgrade:
                raise _BadUpstreamResponse("101 Switching Protocols to a request without Upgrade")
            self.tunnel = True
            lines = self.head
            if self.upgrade_lines:
                lines.extend(self.upgrade_lines)
            client.start_tunnel(ex)
            if not client.closed:
                client.transport.write(
                    b"HTTP/1.1 101 %s\r\n%s\r\n" % (self.reason, b"".join(lines))
                )
            return
        lines = self.head
        if ex.method == b"HEAD" or status == 204 or status == 304:
            self.out_chunked = False  # no body follows, whatever the headers say
        elif ex.http10 and (self.out_chunked or not self.has_length):
            # an HTTP/1.0 client reads until the close: send the body bare, then close
            self.until_close = not self.out_chunked
            self.out_chunked = False
            lines = [x for x in lines if not x.lower().startswith(b"transfer-encoding:")]
            ex.close_after = True
        elif not self.out_chunked and not self.has_length:
            # body delimited by the connection's end: re-frame as chunked to keep the client
            self.until_close = self.out_chunked = True
            lines.append(b"Transfer-Encoding: chunked\r\n")
        if not ex.keep_alive or ex.upgrade or client.listener.draining or ex.close_after:
            ex.close_after = True
            lines.append(b"Connection: close\r\n")
        self.head_out = b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, self.reason, b"".join(lines))
        client.response_started(ex)
        if ex.method == b"HEAD":
            # llhttp cannot know a HEAD answer has no body: finish here, use a fresh parser
            self.stale_parser = True
            self.on_message_complete()

    def on_body(self, data: bytes) -> None:
        client = self.client
        if client is None or client.closed:
            return
        if self.out_chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if self.head_out is not None:
            data = self.head_out + data
            self.head_out = None
        client.transport.write(data)
        if client.deadline != _INF:
            client.deadline = self.listener.loop.time() + client.routing.timeouts.response_idle

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.tunnel:  # llhttp ends the 101 message; the exchange lives on as a tunnel
            return
        ex = self.exchange
        client = self.client
        if ex is None or client is None:
            return
        out = self.head_out or b""
        self.head_out = None
        if self.out_chunked:
            out += b"0\r\n\r\n"
        if out and not client.closed:
            client.transport.write(out)
        self.exchange = None
        reusable = not self.close_conn and not self.until_close and self.parser.should_keep_alive()
        self.upstream.requests_total += 1
        if reusable:
            self.park()
        else:
            self.alive = False
            self.transport.close()
        client.exchange_done(ex, self.status)

    # ---- pooling ------------------------------------------------------------------------------

    def park(self) -> None:
        """Back to the upstream's idle pool, if the upstream may still get requests."""
        upstream = self.upstream
        self.exchange = None
        self.client = None
        if self.read_paused:
            self.resume_reading()
        if (
            self.alive
            and upstream.counters.state is UpstreamState.UP
            and not upstream.retired
            and not self.listener.draining
        ):
            self.idle_since = self.listener.loop.time()
            upstream.idle.append(self)
        else:
            self.alive = False
            self.transport.close()

    def pause_reading(self) -> None:
        if not self.read_paused and not self.transport.is_closing():
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def abort(self) -> None:
        self.alive = False
        self.aborted = True
        self.transport.abort()

    def _broken(self, reason: str) -> None:
        ex, client = self.exchange, self.client
        self.exchange = None
        self.abort()
        if ex is not None and client is not None:
            client.upstream_failed(ex, reason, timed_out=False)


class HttpListener:
    mode = "l7"

    def __init__(self, spec: ListenerSpec, routing: Routing) -> None:
        self.spec = spec
        self.routing = routing
        self.connections: set[HttpClient] = set()
        self.pending: set[asyncio.Task[None]] = set()
        self.accepted_total = 0
        self.rejected_total = 0  # answered by the proxy itself (>= 400 generated here)
        self.retries_total = 0
        self.codes: dict[int, int] = {}
        self.draining = False
        self.port = spec.port
        self.loop = asyncio.get_running_loop()
        self._server: asyncio.Server | None = None
        self.tls: ListenerTls | None = spec.tls
        self.upstream_tls: ssl.SSLContext | None = None
        self._access: ListenerAccess | None = None
        self._tls_checked = 0.0
        self._upstream_stamp: tuple[int, int] | None = None
        if spec.tls is not None:
            self._access = ListenerAccess(
                Path(spec.tls.cert), Path(spec.tls.key), Path(spec.tls.client_ca)
            )
            self._load_upstream_tls()

    def _load_upstream_tls(self) -> None:
        tls = self.tls
        assert tls is not None
        cert, key = Path(tls.upstream_cert), Path(tls.upstream_key)
        stamp = (cert.stat().st_mtime_ns, key.stat().st_mtime_ns)
        if stamp != self._upstream_stamp:
            self.upstream_tls = client_context(tls.upstream_ca, cert, key)
            self._upstream_stamp = stamp

    def reload_tls(self) -> None:
        """Pairs rotated on disk serve from the next handshake on (checked, whole pairs)."""
        if self._access is None:
            return
        self._access.reload_if_changed()
        # caught half-rotated: keep the context we have, look again later
        with contextlib.suppress(OSError, PkiError):
            self._load_upstream_tls()

    def identity_lines(self, ssl_object: object) -> bytes:
        """X-Remote-User and X-Remote-Group lines for a verified client certificate (b""
        without one). A name or group that could break a header line is not passed on."""
        if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
            return b""
        der = ssl_object.getpeercert(binary_form=True)
        if not der:
            return b""
        try:
            user, groups = identity_from_peercert(der)
        except PkiError:
            return b""
        values = [user, *groups]
        if any(not v.isprintable() or not v.isascii() for v in values):
            log.warning("l7: a client certificate names an unprintable identity; not passed on")
            return b""
        lines = [b"X-Remote-User: " + user.encode()]
        lines += [b"X-Remote-Group: " + g.encode() for g in groups]
        return b"\r\n".join(lines) + b"\r\n"

    def count(self, status: int) -> None:
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1

    async def start(self) -> int:
        self.loop = asyncio.get_running_loop()
        context = self._access.context() if self._access is not None else None
        self._server, self.port = await open_server(self.spec, lambda: HttpClient(self), context)
        return self.port

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    def begin_shutdown(self) -> None:
        """Idle keep-alive connections close now; busy ones after their current response."""
        self.draining = True
        for client in list(self.connections):
            if client.current is None and not client.in_headers and not client.closed:
                client.closed = True
                client.transport.close()

    def abort_all(self) -> None:
        for task in list(self.pending):
            task.cancel()
        for client in list(self.connections):
            client.closed = True
            client.transport.abort()

    def tick(self, now: float) -> None:
        if self._access is not None and now - self._tls_checked >= 1.0:
            self._tls_checked = now
            self.reload_tls()
        for client in list(self.connections):
            if now >= client.deadline and not client.closed:
                client.on_deadline()

    @property
    def active_connections(self) -> int:
        return len(self.connections)
