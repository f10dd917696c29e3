"""The health prober's kept connection (haplane.gate.health.Prober) against a small keep-alive
HTTP server: checks share one connection until `reuse_for` passes; an upstream that closed the
idle connection is dialled again within the same check; a dead upstream fails at once, a hung
one by timeout, and neither leaves the connection kept; a `Connection: close` answer is
honoured; cancelling a check drops the connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest_asyncio

from haplane.gate.health import CheckOutcome, Prober, probe
from haplane.gate.settings import HealthCheck

CHECK = HealthCheck(interval=0.2, timeout=0.5)


@dataclass
class Upstream:
    port: int = 0
    accepted: int = 0
    requests: int = 0
    # ok | close-after (answers with Connection: close) | hang | 500 | interim (a 100 first)
    # | no-length (the body ends with the connection)
    mode: str = "ok"
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                if self.mode == "hang":
                    await asyncio.sleep(3600)
                close = self.mode in ("close-after", "no-length", "gzip-coding")
                body = b'{"ready":true}'
                if self.mode == "interim":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                status = b"500 Internal Server Error" if self.mode == "500" else b"200 OK"
                length = {
                    "no-length": b"",
                    "gzip-coding": b"Transfer-Encoding: gzip\r\n",  # not chunked: until close
                }.get(self.mode, b"Content-Length: %d\r\n" % len(body))
                writer.write(
                    b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n%s%s\r\n%s"
                    % (status, length, b"Connection: close\r\n" if close else b"", body)
                )
                await writer.drain()
                if close:
                    break
        writer.close()

    def drop_idle(self, reset: bool = False) -> None:
        """Close every open connection, as a server's keep-alive timeout does (`reset`: with
        a TCP reset, as a crashed host's kernel answers)."""
        for w in self.writers:
            sock = w.get_extra_info("socket")
            if reset and sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        self.writers.clear()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        self.drop_idle()
        await self.server.wait_closed()


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[Upstream]:
    u = Upstream()
    await u.start()
    try:
        yield u
    finally:
        await u.stop()


@pytest_asyncio.fixture
async def prober(upstream: Upstream) -> AsyncIterator[Prober]:
    """A prober of `upstream` with the default reuse, closed after the test."""
    p = Prober("127.0.0.1", upstream.port)
    try:
        yield p
    finally:
        p.close()


async def test_checks_share_one_connection_until_reuse_for_passes(upstream):
    prober = Prober("127.0.0.1", upstream.port, reuse_for=0.3)
    try:
        for _ in range(3):
            result = await prober.check(CHECK)
            assert result.outcome is CheckOutcome.OK, result
            assert result.detail == {"ready": True}
        assert (upstream.accepted, upstream.requests, prober.connections_opened) == (1, 3, 1)
        await asyncio.sleep(0.35)
        assert (await prober.check(CHECK)).outcome is CheckOutcome.OK
        assert (upstream.accepted, prober.connections_opened) == (2, 2)
    finally:
        prober.close()


async def test_a_connection_the_upstream_closed_while_idle_is_dialled_again_in_the_check(
    upstream, prober
):
    assert (await prober.check(CHECK)).outcome is CheckOutcome.OK
    upstream.drop_idle()
    await asyncio.sleep(0.05)
    result = await prober.check(CHECK)
    assert result.outcome is CheckOutcome.OK, result
    assert upstream.accepted == 2


async def test_a_dead_upstream_fails_the_next_check():
    u = Upstream()
    await u.start()
    prober = Prober("127.0.0.1", u.port)
    try:
        assert (await prober.check(CHECK)).outcome is CheckOutcome.OK
        await u.stop()  # listener gone and the kept connection reset
        result = await prober.check(CHECK)
        assert result.outcome is CheckOutcome.FAILED
        assert result.reason == "connection refused", result
    finally:
        prober.close()


async def test_a_hung_upstream_times_out_and_the_connection_is_not_kept(upstream, prober):
    assert (await prober.check(CHECK)).outcome is CheckOutcome.OK
    upstream.mode = "hang"
    result = await prober.check(CHECK)
    assert result.outcome is CheckOutcome.FAILED and result.reason.startswith("timeout")
    upstream.mode = "ok"
    # the hung connection is not asked again: a new one answers
    assert (await prober.check(CHECK)).outcome is CheckOutcome.OK
    assert upstream.accepted == 2


async def test_connection_close_answers_and_one_shot_probes_dial_each_time(upstream, prober):
    upstream.mode = "close-after"
    for _ in range(2):
        assert (await prober.check(CHECK)).outcome is CheckOutcome.OK
    assert upstream.accepted == 2
    upstream.mode = "ok"
    for _ in range(2):
        assert (await probe("127.0.0.1", upstream.port, CHECK)).outcome is CheckOutcome.OK
    assert upstream.accepted == 4


async def test_a_cancelled_check_drops_its_connection(upstream, prober):
    assert (await prober.check(CHECK)).outcome is CheckOutcome.OK
    upstream.mode = "hang"
    task = asyncio.create_task(prober.check(CHECK))
    await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    upstream.mode = "ok"
    assert (await prober.check(CHECK)).outcome is CheckOutcome.OK
    assert upstream.accepted == 2


async def test_tls_files_that_cannot_be_read_fail_the_check():
    prober = Prober("127.0.0.1", 9)
    result = await prober.check(HealthCheck(interval=0.2, tls_ca="/nonexistent/ca.crt"))
    assert result.outcome is CheckOutcome.FAILED and "FileNotFoundError" in result.reason


async def test_a_failed_answer_drops_the_connection(upstream, prober):
    upstream.mode = "500"
    for _ in range(2):
        result = await prober.check(CHECK)
        assert (result.outcome, result.reason) == (CheckOutcome.FAILED, "HTTP 500")
    assert upstream.accepted == 2


async def test_interim_answers_are_skipped_and_the_connection_stays_in_step(upstream, prober):
    upstream.mode = "interim"
    for _ in range(3):
        result = await prober.check(CHECK)
        assert (result.outcome, result.detail) == (CheckOutcome.OK, {"ready": True}), result
    assert (upstream.accepted, upstream.requests) == (1, 3)


async def test_an_answer_without_a_length_ends_with_its_connection(upstream):
    for mode in ("no-length", "gzip-coding"):
        upstream.mode = mode
        prober = Prober("127.0.0.1", upstream.port)
        try:
            result = await prober.check(CHECK)
            assert result.outcome is CheckOutcome.OK, (mode, result)
        finally:
            prober.close()


def test_a_connection_reset_while_idle_is_dialled_again_under_uvloop():
    """The gate runs on uvloop, whose transports close themselves on a reset: the write of the
    next check then raises RuntimeError instead of an OSError."""
    import uvloop

    async def go() -> None:
        u = Upstream()
        await u.start()
        prober = Prober("127.0.0.1", u.port)
        try:
            assert (await prober.check(CHECK)).outcome is CheckOutcome.OK
            for reset in (True, False):
                u.drop_idle(reset=reset)
                await asyncio.sleep(0.05)
                result = await prober.check(CHECK)
                assert result.outcome is CheckOutcome.OK, result
            assert u.accepted == 3
        finally:
            prober.close()
            await u.stop()

    uvloop.run(go())
