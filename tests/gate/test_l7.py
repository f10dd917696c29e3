"""L7 mode with real processes: per-request balancing on keep-alive connections, what is and is
never retried, streaming, bad input, timeouts, upgrades.

Layer: tests (gate). Real gate and backend processes (see conftest)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.gate.helpers import (
    Backend,
    Conn,
    Gate,
    Stream,
    eventually,
    free_port,
    gate_config,
    request,
)

Backends = Callable[..., Awaitable[list[Backend]]]
Gates = Callable[..., Awaitable[Gate]]


def l7(port: int) -> list[dict[str, object]]:
    return [{"port": port, "mode": "l7"}]


def assert_status(body: Any, code: int, reason: str) -> None:
    assert body["kind"] == "Status" and body["apiVersion"] == "v1", body
    assert body["status"] == "Failure" and body["metadata"] == {}
    assert body["code"] == code and body["reason"] == reason, body


async def test_l7_balances_each_request_on_one_keep_alive_connection(
    backends: Backends, gate: Gates
) -> None:
    a, b = await backends("a", "b")
    port = free_port()
    await gate(gate_config({"p": [a, b]}, l7(port)))
    conn = await Conn.open(port)
    try:
        names = [(await conn.request("GET", "/whoami")).json()["name"] for _ in range(10)]
        assert Counter(names) == {"a": 5, "b": 5}, names
        pipelined = await conn.pipeline(
            [("GET", "/whoami", None)] * 3 + [("GET", "/headers", None)]
        )
        assert [r.status for r in pipelined] == [200] * 4
        headers = pipelined[-1].json()["headers"]
        assert headers["X-Forwarded-For"] == "127.0.0.1"
        assert headers["Host"] == "test"  # the client's Host goes through
        assert "Connection" not in headers or headers["Connection"] != "close"
    finally:
        conn.close()
    r = await request(port, "GET", "/headers", headers={"X-Forwarded-For": "10.1.2.3"})
    assert r.json()["headers"]["X-Forwarded-For"] == "10.1.2.3, 127.0.0.1"
    assert r.headers.get("connection") == "close"  # the client asked for close


async def test_l7_write_is_never_resent_after_the_upstream_died_with_it(
    backends: Backends, gate: Gates
) -> None:
    a, b = await backends("a", "b")
    port = free_port()
    await gate(gate_config({"p": [a, b]}, l7(port)))
    r = await request(port, "POST", "/die", b'{"kind":"ConfigMap"}')
    assert r.status == 502, r
    assert r.headers["content-type"] == "application/json"
    assert_status(r.json(), 502, "InternalError")
    assert "never re-sent" in r.json()["message"]
    reached = a.requests("/die") + b.requests("/die")
    assert len(reached) == 1, reached  # exactly one upstream saw it: not re-sent


async def test_l7_idempotent_get_is_retried_on_another_upstream(
    backends: Backends, gate: Gates
) -> None:
    (a,) = await backends("a", drop_gets=True)  # closes every GET /drop unanswered
    (b,) = await backends("b")
    port = free_port()
    g = await gate(gate_config({"p": [a, b]}, l7(port)))
    for _ in range(6):
        r = await request(port, "GET", "/drop")
        assert r.status == 200 and r.json()["name"] == "b", r
    assert len(a.requests("/drop")) >= 1  # some went to a first, and were retried on b
    status = await g.status()
    assert status["listeners"][0]["retries"] == len(a.requests("/drop"))


async def test_l7_watch_streams_chunk_by_chunk_and_only_non_watches_idle_out(
    backends: Backends, gate: Gates
) -> None:
    (a,) = await backends("a")
    port = free_port()
    await gate(gate_config({"p": [a]}, l7(port), timeouts={"response_idle": 0.3}))
    watch = await Stream.open(port, "/stream?watch=1&interval=0.5")
    try:
        # the stream never ends: each event arrives on its own, and silences longer than
        # response_idle do not cut a watch
        assert watch.collector.headers["transfer-encoding"] == "chunked"
        assert [(await watch.next_event())["seq"] for _ in range(4)] == [0, 1, 2, 3]
    finally:
        watch.close()
    plain = await Stream.open(port, "/stream?interval=0.5")
    assert (await plain.next_event())["seq"] == 0
    await plain.wait_closed()  # not a watch: cut after response_idle


async def test_l7_streams_request_bodies_both_framings(backends: Backends, gate: Gates) -> None:
    (a,) = await backends("a")
    port = free_port()
    await gate(gate_config({"p": [a]}, l7(port)))
    body = bytes(range(256)) * 8192  # 2 MiB
    r = await request(port, "POST", "/echo", body, timeout=20.0)
    assert r.status == 200 and r.body == body
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"hello ", b"chunked ", b"world"))
    r = await request(
        port, "POST", "/echo", chunked + b"0\r\n\r\n", headers={"Transfer-Encoding": "chunked"}
    )
    assert r.status == 200 and r.body == b"hello chunked world"
    r = await request(port, "HEAD", "/whoami")
    assert r.status == 200 and r.body == b""


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE /x HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost t\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
async def test_l7_malformed_request_gets_400_status_and_close(
    backends: Backends, gate: Gates, raw: bytes
) -> None:
    (a,) = await backends("a")
    port = free_port()
    await gate(gate_config({"p": [a]}, l7(port)))
    r = await request(port, raw=raw)
    assert r.status == 400
    assert_status(r.json(), 400, "BadRequest")
    assert r.headers["connection"] == "close"
    assert a.requests() == []


async def test_l7_slow_client_gets_408_after_the_header_timeout(
    backends: Backends, gate: Gates
) -> None:
    (a,) = await backends("a")
    port = free_port()
    await gate(gate_config({"p": [a]}, l7(port), timeouts={"client_header": 0.5}))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /whoami HTTP/1.1\r\nHost: t\r\n")  # and never the end of headers
        async with asyncio.timeout(10.0):
            data = await reader.read()  # until the gate closes
    finally:
        writer.transport.abort()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert_status(json.loads(body), 408, "Timeout")
    assert a.requests() == []


async def test_l7_hung_upstream_504_for_writes_retry_for_reads(
    backends: Backends, gate: Gates
) -> None:
    (a,) = await backends("a", hang=True)  # accepts, reads, never answers /hang
    (b,) = await backends("b")
    port = free_port()
    await gate(gate_config({"p": [a, b]}, l7(port), timeouts={"response_header": 0.5}))
    codes = Counter()
    for _ in range(4):
        r = await request(port, "POST", "/hang", b"{}", timeout=10.0)
        codes[r.status] += 1
        if r.status == 504:
            assert_status(r.json(), 504, "Timeout")
    assert codes[504] >= 1 and codes[504] + codes[200] == 4, codes
    # each POST reached exactly one upstream: the ones a swallowed were not re-sent to b
    assert len(a.requests("/hang")) == codes[504]
    assert len(b.requests("/hang")) == codes[200]
    for _ in range(4):
        r = await request(port, "GET", "/hang", timeout=10.0)
        assert r.status == 200 and r.json()["name"] == "b"


async def test_l7_upgrade_to_websocket_is_tunnelled(backends: Backends, gate: Gates) -> None:
    (a,) = await backends("a")
    port = free_port()
    await gate(gate_config({"p": [a]}, l7(port)))
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws,
    ):
        for text in ("one", "two"):
            await ws.send_str(text)
            assert (await ws.receive_str(timeout=5.0)) == f"a: {text}"


async def test_l7_client_leaving_a_watch_frees_the_upstream(
    backends: Backends, gate: Gates
) -> None:
    (a,) = await backends("a")
    port = free_port()
    g = await gate(gate_config({"p": [a]}, l7(port)))
    stream = await Stream.open(port, "/stream?watch=1")
    await stream.next_event()
    assert (await g.active()) == {"a": 1}
    stream.close()

    async def freed() -> bool:
        return await g.active() == {"a": 0}

    await eventually(freed, what="outstanding request released")
    assert (await request(port, "GET", "/whoami")).status == 200


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)


async def test_l7_head_answer_ends_at_its_headers_and_the_connection_goes_on(
    backends: Backends, gate: Gates
) -> None:
    (a,) = await backends("a")
    port = free_port()
    await gate(gate_config({"p": [a]}, l7(port)))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(2):  # the second pair reuses the pooled upstream connection
            writer.write(b"HEAD /whoami HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await _read_head(reader)
            assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 13" in head
            writer.write(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await _read_head(reader)  # no stray body bytes came before this head
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert json.loads(await reader.readexactly(13)) == {"name": "a"}
    finally:
        writer.transport.abort()


async def test_l7_http10_client_gets_bodies_without_chunked_framing(
    backends: Backends, gate: Gates
) -> None:
    (a,) = await backends("a")
    port = free_port()
    await gate(gate_config({"p": [a]}, l7(port)))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /stream?watch=1&interval=0.05 HTTP/1.0\r\n\r\n")
        head = await _read_head(reader)
        assert b"Transfer-Encoding" not in head and b"Connection: close" in head, head
        line = await asyncio.wait_for(reader.readline(), 5.0)
        assert json.loads(line) == {"name": "a", "seq": 0}  # raw, not a chunk-size line
    finally:
        writer.transport.abort()
