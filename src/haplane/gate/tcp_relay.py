"""L4 mode (like HAProxy `mode tcp`): each client connection is relayed, byte for byte, to one
upstream picked at accept time (least connections among the active pool's UP upstreams).

Layer: gate. Opens sockets (the listener, connections to upstreams); knows nothing of HTTP.

Written by hand because no library does an asyncio TCP relay with health-aware balancing
(aiohttp and the like proxy HTTP, not streams; FIELD-NOTES measured a plain uvloop relay at the
cost of HAProxy per request). The relay is two asyncio Protocols sharing transports: bytes go
from one `data_received` straight into the other transport's `write`, and backpressure is the
transports' own: when one side's write buffer passes its high-water mark (`pause_writing`), the
other side stops reading until it drains (`resume_writing`).

Invariants:
- bytes a client sends before its upstream is connected are held (reading pauses past 64 KiB;
  uvloop ignores `pause_reading` inside `connection_made`, so holding is needed anyway), and a
  failed connect has sent nothing, so moving on to the next upstream is safe;
- a connect failure marks the upstream DOWN at once (passive check) and tries the next UP one;
  with none left the client connection is closed at once, never left hanging;
- a half-close is forwarded (write_eof); the relay ends when both directions ended or either
  connection is lost;
- an upstream going DOWN, being removed, or its pool being switched away aborts its relays.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from .balancing import Pool, Routing, Upstream
from .health import UpstreamState
from .listening import open_server
from .settings import ListenerSpec

log = logging.getLogger("haplane.gate")

EARLY_LIMIT = 64 * 1024


def describe_connect_error(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"connect timeout after {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    return f"connect failed: {type(exc).__name__}: {exc}"


def close_with_linger(transport: asyncio.BaseTransport, linger: float) -> None:
    """Close after flushing, but never wait forever on a peer that stopped reading."""
    if transport.is_closing():
        return
    transport.close()
    if isinstance(transport, asyncio.WriteTransport) and transport.get_write_buffer_size():
        asyncio.get_running_loop().call_later(linger, transport.abort)


class _UpstreamSide(asyncio.Protocol):
    __slots__ = ("relay",)

    def __init__(self, relay: TcpRelay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        relay.bytes_down += len(data)
        relay.transport.write(data)

    def eof_received(self) -> bool:
        return self.relay.upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.upstream_lost()

    def pause_writing(self) -> None:
        self.relay.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.relay.transport.is_closing():
            self.relay.transport.resume_reading()


class TcpRelay(asyncio.Protocol):
    """The client side of one relayed connection; also the `Link` its upstream holds."""

    __slots__ = (
        "bytes_down",
        "bytes_up",
        "client_eof",
        "closed",
        "early",
        "idle_mark",
        "idle_since",
        "listener",
        "transport",
        "up_eof",
        "up_transport",
        "upstream",
    )

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.upstream: Upstream | None = None
        self.up_transport: asyncio.Transport | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.client_eof = False
        self.up_eof = False
        self.closed = False
        self.early: list[bytes] | None = []
        self.idle_mark = 0
        self.idle_since = 0.0

    # ---- client side ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        listener = self.listener
        listener.accepted_total += 1
        listener.connections.add(self)
        pool = listener.routing.active_pool
        upstream = pool.pick() if pool is not None else None
        if pool is None or upstream is None:
            listener.rejected_total += 1
            self.transport.close()
            return
        upstream.active += 1
        task = asyncio.get_running_loop().create_task(self._connect(pool, upstream))
        listener.pending.add(task)
        task.add_done_callback(listener.pending.discard)

    def data_received(self, data: bytes) -> None:
        self.bytes_up += len(data)
        up = self.up_transport
        if up is not None:
            up.write(data)
            return
        early = self.early
        if early is not None:
            early.append(data)
            if sum(map(len, early)) > EARLY_LIMIT:
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.client_eof = True
        up = self.up_transport
        if up is None:
            return True  # forwarded once connected
        if self.up_eof:
            close_with_linger(up, self.listener.routing.timeouts.linger)
            return False
        if not up.is_closing():
            up.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        up = self.up_transport
        if up is not None:
            close_with_linger(up, self.listener.routing.timeouts.linger)
        self._release()

    def pause_writing(self) -> None:
        if self.up_transport is not None:
            self.up_transport.pause_reading()

    def resume_writing(self) -> None:
        up = self.up_transport
        if up is not None and not up.is_closing():
            up.resume_reading()

    # ---- upstream side (called by _UpstreamSide) ----------------------------------------------

    def upstream_eof(self) -> bool:
        self.up_eof = True
        if self.client_eof or self.closed:
            close_with_linger(self.transport, self.listener.routing.timeouts.linger)
            return False
        if not self.transport.is_closing():
            self.transport.write_eof()
        return True

    def upstream_lost(self) -> None:
        self._release()
        if not self.closed:
            close_with_linger(self.transport, self.listener.routing.timeouts.linger)

    # ---- the Link interface -----------------------------------------------------------------

    def abort(self) -> None:
        if self.up_transport is not None:
            self.up_transport.abort()
        self.transport.abort()

    # ---- internals ----------------------------------------------------------------------------

    def _release(self) -> None:
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.active -= 1
            up.links.discard(self)
            up.bytes_closed[0] += self.bytes_up
            up.bytes_closed[1] += self.bytes_down

    async def _connect(self, pool: Pool, upstream: Upstream) -> None:
        routing = self.listener.routing
        timeout = routing.timeouts.connect
        loop = asyncio.get_running_loop()
        tried: list[Upstream] = []
        try:
            while True:
                address = upstream.address
                try:
                    async with asyncio.timeout(timeout):
                        transport, _ = await loop.create_connection(
                            lambda: _UpstreamSide(self), address.host, address.port
                        )
                    break
                except (OSError, TimeoutError) as exc:
                    upstream.active -= 1
                    routing.upstream_failed(upstream, describe_connect_error(exc, timeout))
                    if self.closed:
                        return
                    tried.append(upstream)
                    current = routing.active_pool
                    next_upstream = current.pick(tried) if current is not None else None
                    if current is None or next_upstream is None:
                        self.listener.rejected_total += 1
                        self.transport.close()
                        return
                    pool, upstream = current, next_upstream
                    upstream.active += 1
            self.upstream = upstream
            self.up_transport = transport
            upstream.links.add(self)
            upstream.connections_total += 1
            if (
                self.closed
                or upstream.counters.state is UpstreamState.DOWN
                or upstream.retired
                or routing.active_pool is not pool
            ):
                self.abort()  # went away (or the pool switched) while we were connecting
                return
            early, self.early = self.early, None
            if early:
                transport.write(b"".join(early))
                self.transport.resume_reading()
            if self.client_eof:
                transport.write_eof()
        except Exception:
            log.exception("l4 connect: unexpected error")
            self.abort()


class TcpListener:
    mode = "l4"

    def __init__(self, spec: ListenerSpec, routing: Routing) -> None:
        self.spec = spec
        self.routing = routing
        self.connections: set[TcpRelay] = set()
        self.pending: set[asyncio.Task[None]] = set()
        self.accepted_total = 0
        self.rejected_total = 0
        self.port = spec.port
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server, self.port = await open_server(self.spec, lambda: TcpRelay(self))
        return self.port

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    def begin_shutdown(self) -> None:
        """Relays end on their own; nothing to tell them."""

    def abort_all(self) -> None:
        for task in list(self.pending):
            task.cancel()
        for relay in list(self.connections):
            relay.abort()

    def tick(self, now: float) -> None:
        idle = self.routing.timeouts.tcp_idle
        if idle is None:
            return
        for relay in list(self.connections):
            moved = relay.bytes_up + relay.bytes_down
            if moved != relay.idle_mark or relay.idle_since == 0.0:
                relay.idle_mark, relay.idle_since = moved, now
            elif now - relay.idle_since >= idle:
                relay.abort()

    @property
    def active_connections(self) -> int:
        return len(self.connections)
