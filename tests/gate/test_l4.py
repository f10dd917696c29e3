"""L4 mode with real processes: balancing, SIGKILL and SIGSTOP of an upstream, draining, and
every upstream down.

Layer: tests (gate). Real gate and backend processes (see conftest)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from tests.gate.helpers import (
    Backend,
    Gate,
    NoResponse,
    Stream,
    eventually,
    free_port,
    gate_config,
    request,
)

Backends = Callable[..., Awaitable[list[Backend]]]
Gates = Callable[..., Awaitable[Gate]]


def l4(port: int) -> list[dict[str, object]]:
    return [{"port": port, "mode": "l4"}]


async def whoami(port: int) -> str:
    r = await request(port, "GET", "/whoami")
    assert r.status == 200, r
    return str(r.json()["name"])


async def _equal(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def streams_on_each(port: int, names: set[str]) -> dict[str, Stream]:
    """Open streams through the gate until each named backend holds one."""
    found: dict[str, Stream] = {}
    for _ in range(4 * len(names)):
        stream = await Stream.open(port, "/stream?interval=0.05")
        name = (await stream.next_event())["name"]
        if name in found or name not in names:
            stream.close()
        else:
            found[name] = stream
        if set(found) == names:
            return found
    raise AssertionError(f"streams reached only {sorted(found)}")


async def test_l4_least_connections_then_round_robin(backends: Backends, gate: Gates) -> None:
    a, b, c = await backends("a", "b", "c")
    port = free_port()
    g = await gate(gate_config({"p": [a, b, c]}, l4(port)))
    held = await streams_on_each(port, {"b"})  # b now carries one more connection
    want = {"a": 0, "b": 1, "c": 0}
    await eventually(lambda: _equal(g.active(), want), what="streams opened on the way closed")
    try:
        seen: Counter[str] = Counter()
        for _ in range(30):
            # each request's relay is released before the next, so loads are exact
            await eventually(lambda: _equal(g.active(), want), what="previous relay released")
            seen[await whoami(port)] += 1
        # least connections: b gets none while it holds a stream; a and c take turns
        assert seen == {"a": 15, "c": 15}, seen
    finally:
        held["b"].close()


async def test_l4_sigkill_closes_relays_reroutes_and_restart_brings_it_back(
    backends: Backends, gate: Gates
) -> None:
    a, b = await backends("a", "b")
    port = free_port()
    g = await gate(gate_config({"p": [a, b]}, l4(port)))
    streams = await streams_on_each(port, {"a", "b"})
    a.kill()
    await streams["a"].wait_closed()
    assert (await streams["b"].next_event())["name"] == "b"
    assert {await whoami(port) for _ in range(20)} == {"b"}
    await g.wait_state("a", "down")
    await a.start()  # same port
    await eventually(lambda: g.state("a"), what="a checked again")
    await g.wait_state("a", "up")
    assert "a" in {await whoami(port) for _ in range(10)}
    events = [e for e in g.events() if e["event"] == "upstream_state" and e["upstream"] == "a"]
    assert [e["to"] for e in events][-2:] == ["down", "up"], events
    assert all(set(e) >= {"ts", "level", "pool", "from", "to", "reason"} for e in events)
    streams["b"].close()


async def test_l4_hung_upstream_loses_its_relays_when_checks_fail(
    backends: Backends, gate: Gates
) -> None:
    a, b = await backends("a", "b")
    port = free_port()
    g = await gate(gate_config({"p": [a, b]}, l4(port), check={"timeout": 0.2}))
    streams = await streams_on_each(port, {"a", "b"})
    a.signal(signal.SIGSTOP)  # accepts nothing, answers nothing, keeps its sockets open
    try:
        await g.wait_state("a", "down")
        await streams["a"].wait_closed()  # closed by the gate, not by the frozen upstream
        assert {await whoami(port) for _ in range(10)} == {"b"}
    finally:
        a.signal(signal.SIGCONT)
        streams["b"].close()


async def test_l4_draining_keeps_existing_stream_and_sends_new_connections_elsewhere(
    backends: Backends, gate: Gates
) -> None:
    a, b = await backends("a", "b")
    port = free_port()
    g = await gate(gate_config({"p": [a, b]}, l4(port)))
    streams = await streams_on_each(port, {"a", "b"})
    await a.set_ready(False)
    await g.wait_state("a", "draining")
    assert {await whoami(port) for _ in range(20)} == {"b"}
    seqs = [(await streams["a"].next_event())["seq"] for _ in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5  # still flowing from a
    await a.set_ready(True)
    await g.wait_state("a", "up")
    for s in streams.values():
        s.close()


async def test_all_upstreams_down_l4_closes_at_once_and_l7_answers_503_status(
    backends: Backends, gate: Gates
) -> None:
    a, b = await backends("a", "b")
    p4, p7 = free_port(), free_port()
    g = await gate(gate_config({"p": [a, b]}, [*l4(p4), {"port": p7, "mode": "l7"}]))
    a.kill()
    b.kill()
    # before the checks noticed: passive checks refuse both, the client is closed, no hang
    with pytest.raises((NoResponse, ConnectionError)):
        await request(p4, "GET", "/whoami", timeout=5.0)
    await g.wait_state("a", "down")
    await g.wait_state("b", "down")
    with pytest.raises((NoResponse, ConnectionError)):
        await request(p4, "GET", "/whoami", timeout=5.0)
    r = await request(p7, "GET", "/whoami", timeout=5.0)
    assert r.status == 503
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["kind"] == "Status" and body["reason"] == "ServiceUnavailable"
    assert body["code"] == 503 and body["status"] == "Failure" and "p" in body["message"]
    status = await g.status()
    assert status["listeners"][0]["rejected"] >= 2


async def test_l4_relays_large_bodies_both_ways(backends: Backends, gate: Gates) -> None:
    (a,) = await backends("a")
    port = free_port()
    await gate(gate_config({"p": [a]}, l4(port)))
    body = bytes(range(256)) * 8192  # 2 MiB: several write-buffer high-water marks
    r = await asyncio.wait_for(request(port, "POST", "/echo", body, timeout=20.0), 30.0)
    assert r.status == 200 and r.body == body
