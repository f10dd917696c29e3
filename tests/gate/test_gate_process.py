"""The gate as a process and as a library: switching pools, SO_REUSEPORT, config errors,
SIGTERM, status, metrics and logs; and the Python API the gate logic uses in-process.

Layer: tests (gate). Real gate and backend processes, and one engine in the test's own loop."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from haplane.gate.admin import AdminServer
from haplane.gate.events import GateEvent
from haplane.gate.forwarder import Forwarder
from haplane.gate.settings import HealthCheck, ListenerSpec, Timeouts, UpstreamAddress
from tests.gate.helpers import (
    Backend,
    Conn,
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


async def name_via(port: int) -> str:
    r = await request(port, "GET", "/whoami")
    assert r.status == 200, r
    return str(r.json()["name"])


async def post_json(port: int, path: str, body: object) -> tuple[int, dict[str, object]]:
    r = await request(port, "POST", path, json.dumps(body).encode())
    return r.status, r.json()


async def test_pool_switch_closes_old_connections_and_routes_new_ones_to_the_new_pool(
    backends: Backends, gate: Gates
) -> None:
    a, b = await backends("a", "b")
    p4, p7 = free_port(), free_port()
    listeners = [{"port": p4, "mode": "l4"}, {"port": p7, "mode": "l7"}]
    g = await gate(gate_config({"one": [a], "two": [b]}, listeners, active="one"))
    s4 = await Stream.open(p4, "/stream?watch=1")
    s7 = await Stream.open(p7, "/stream?watch=1")
    assert (await s4.next_event())["name"] == "a" and (await s7.next_event())["name"] == "a"
    conn = await Conn.open(p7)  # a client keep-alive connection with a pooled upstream one to a
    try:
        assert (await conn.request("GET", "/whoami")).json()["name"] == "a"
        code, status = await post_json(g.admin_port, "/pool", {"pool": "two", "activate": True})
        assert code == 200 and status["active_pool"] == "two"
        await s4.wait_closed()
        await s7.wait_closed()
        assert await name_via(p4) == "b" and await name_via(p7) == "b"
        assert (await conn.request("GET", "/whoami")).json()["name"] == "b"
    finally:
        conn.close()
    switch = [e for e in g.events() if e.get("event") == "pool_activated"][-1]
    assert (switch["from"], switch["to"]) == ("one", "two")
    assert await g.state("a", "one") == "up"  # the standby pool is still checked

    # replace a pool's upstreams through the admin API; a bad body names the field
    code, _ = await post_json(
        g.admin_port, "/pool", {"pool": "two", "upstreams": [{"name": "a", "host": "127.0.0.1",
                                                              "port": a.port}]}
    )  # fmt: skip
    assert code == 200
    assert await name_via(p7) == "a"
    code, body = await post_json(
        g.admin_port, "/pool", {"pool": "two", "upstreams": [{"name": "x", "port": 1}]}
    )
    assert code == 400 and "upstreams.0.host" in str(body["message"])


async def test_reuse_port_two_gates_one_port_and_sigkill_of_one(
    backends: Backends, gate: Gates
) -> None:
    (a,) = await backends("a")
    port = free_port()

    def config() -> dict[str, object]:
        return gate_config({"p": [a]}, [{"port": port, "mode": "l4", "reuse_port": True}])

    g1 = await gate(config(), name="g1")
    g2 = await gate(config(), name="g2")
    loop = asyncio.get_running_loop()
    results: list[tuple[float, bool]] = []
    running = True

    async def client() -> None:
        while running:
            started = loop.time()
            try:
                ok = (await request(port, "GET", "/whoami", timeout=5.0)).status == 200
            except (NoResponse, OSError, TimeoutError):
                ok = False
            results.append((started, ok))

    clients = [asyncio.create_task(client()) for _ in range(4)]
    try:

        async def both_serving() -> bool:
            totals = [(await g.status())["listeners"][0]["connections_total"] for g in (g1, g2)]
            return all(totals)

        await eventually(both_serving, what="the kernel spreads connections over both gates")
        g1.kill()  # SIGKILL, and reaped: its listening socket is gone
        killed_at = loop.time()
        await eventually(lambda: sum(1 for t, _ in results if t > killed_at) >= 50, what="load")
    finally:
        running = False
        await asyncio.gather(*clients)
    after = [ok for started, ok in results if started > killed_at]
    assert all(after), f"{after.count(False)} of {len(after)} new connections failed"
    assert all(ok for started, ok in results if started < killed_at - 1.0)


async def test_config_error_exits_2_and_names_the_field(tmp_path: Path) -> None:
    config = {
        "listeners": [{"port": free_port()}],
        "pools": {"p": {"upstreams": [{"name": "a", "host": "127.0.0.1", "port": 70000}]}},
        "active_pool": "p",
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "haplane.gate", "--config", str(path)]
    done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, timeout=60)
    assert done.returncode == 2
    assert "pools.p.upstreams.0.port" in done.stderr.decode()


async def test_sigterm_lets_requests_finish_then_exits_0(backends: Backends, gate: Gates) -> None:
    (a,) = await backends("a")
    p4, p7 = free_port(), free_port()
    listeners = [{"port": p4, "mode": "l4"}, {"port": p7, "mode": "l7"}]
    g = await gate({**gate_config({"p": [a]}, listeners), "shutdown_grace": 10.0})
    slow = [
        asyncio.create_task(request(port, "GET", "/slow?seconds=1.5", timeout=20.0))
        for port in (p4, p7)
    ]

    async def both_in_flight() -> bool:
        return await g.active() == {"a": 2}

    await eventually(both_in_flight, what="two slow requests in flight")
    exit_code = asyncio.create_task(g.terminate())

    async def refused() -> bool:
        try:
            await request(p7, "GET", "/whoami", timeout=2.0)
        except ConnectionRefusedError:
            return True
        return False

    await eventually(refused, what="listeners closed")
    assert [(await t).status for t in slow] == [200, 200]
    assert await exit_code == 0
    kinds = [e.get("event") for e in g.events()]
    assert kinds[-2:] == ["stopping", "stopped"]


async def test_status_metrics_readiness_and_state_change_logs(
    backends: Backends, gate: Gates
) -> None:
    a, b = await backends("a", "b")
    p4, p7 = free_port(), free_port()
    listeners = [{"name": "tcp", "port": p4, "mode": "l4"}, {"name": "http", "port": p7,
                                                             "mode": "l7"}]  # fmt: skip
    g = await gate(gate_config({"p": [a, b]}, listeners))
    for _ in range(3):
        await name_via(p7)
    for _ in range(2):
        await name_via(p4)
    assert (await request(g.admin_port, "GET", "/readyz")).status == 200
    await a.set_ready(False)
    await g.wait_state("a", "draining")
    b.kill()
    await g.wait_state("b", "down")

    status = await g.status()
    assert status["active_pool"] == "p"
    http = next(x for x in status["listeners"] if x["name"] == "http")
    assert http["requests"] == {"200": 3} and http["connections_total"] == 3, status
    ups = {u["name"]: u for u in status["pools"]["p"]["upstreams"]}
    assert ups["a"]["state"] == "draining", ups
    assert ups["a"]["detail"] == {"ready": False, "name": "a"}, ups
    assert ups["a"]["last_check"] == "HTTP 503" and ups["a"]["last_check_latency_ms"] > 0, ups
    assert ups["a"]["requests_total"] + ups["b"]["requests_total"] == 3, ups
    assert ups["b"]["state"] == "down" and ups["b"]["detail"] is None, ups

    ready = await request(g.admin_port, "GET", "/readyz")
    assert ready.status == 503 and ready.json()["kind"] == "Status"

    metrics = (await request(g.admin_port, "GET", "/metrics")).body.decode()
    for line in (
        'haplane_gate_connections_total{listener="http",mode="l7"} 3.0',
        'haplane_gate_connections_total{listener="tcp",mode="l4"} 2.0',
        'haplane_gate_requests_total{code="200",listener="http"} 3.0',
        'haplane_gate_upstream_state{pool="p",state="draining",upstream="a"} 1.0',
        'haplane_gate_upstream_state_changes_total{pool="p",to="down",upstream="b"} 1.0',
        'haplane_gate_pool_active{pool="p"} 1.0',
    ):
        assert line in metrics, (line, metrics)
    for name in ("haplane_gate_health_check_duration_seconds_count", "haplane_gate_upstream_bytes"):
        assert name in metrics

    lines = [line for line in g.log().splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), lines  # every log line is JSON
    changes = [e for e in g.events() if e.get("event") == "upstream_state"]
    assert all(
        set(e) >= {"ts", "level", "event", "pool", "upstream", "from", "to", "reason"}
        for e in changes
    )
    b_down = next(e for e in changes if e["upstream"] == "b" and e["to"] == "down")
    assert b_down["from"] == "up" and b_down["level"] == "warning" and b_down["reason"], changes
    a_drain = next(e for e in changes if e["upstream"] == "a" and e["to"] == "draining")
    assert a_drain["reason"] == "check: HTTP 503", changes


async def test_forwarder_python_api_in_process(backends: Backends) -> None:
    a, b = await backends("a", "b")
    forwarder = Forwarder(name="in-process", timeouts=Timeouts(connect=1.0))
    seen: list[GateEvent] = []
    forwarder.subscribe(seen.append)
    admin = AdminServer(forwarder, "127.0.0.1", 0)
    check = HealthCheck(path="/readyz", interval=0.05, timeout=1.0)
    try:
        await forwarder.set_pool("one", [UpstreamAddress("a", "127.0.0.1", a.port)], check)
        await forwarder.set_pool("two", [UpstreamAddress("b", "127.0.0.1", b.port)], check)
        forwarder.activate("one")
        port = await forwarder.start_listener(ListenerSpec("api", "127.0.0.1", 0, mode="l7"))
        admin_port = await admin.start()
        assert await name_via(port) == "a"
        forwarder.activate("two")
        assert await name_via(port) == "b"
        status = forwarder.status()
        assert status["active_pool"] == "two"
        assert [u["state"] for p in status["pools"].values() for u in p["upstreams"]] == [
            "up",
            "up",
        ]
        assert b"haplane_gate_requests_total" in generate_latest(forwarder.metrics.registry)
        assert (await request(admin_port, "GET", "/readyz")).status == 200
        assert [e.to_state for e in seen if e.event == "pool_activated"] == ["one", "two"]
    finally:
        await admin.stop()
        await forwarder.stop(grace=1.0)


def test_listener_and_admin_tls_config_errors_name_the_field() -> None:
    from pydantic import ValidationError

    from haplane.gate.config import GateConfig

    tls = {
        "cert": "c", "key": "k", "client_ca": "ca",
        "upstream_ca": "ca", "upstream_cert": "p", "upstream_key": "pk",
    }  # fmt: skip
    base = {"pools": {"p": {"upstreams": []}}}
    with pytest.raises(ValidationError, match="only an l7 listener terminates TLS"):
        GateConfig.model_validate({**base, "listeners": [{"port": 1, "mode": "l4", "tls": tls}]})
    assert (
        GateConfig.model_validate({**base, "listeners": [{"port": 1, "mode": "l7", "tls": tls}]})
        .listeners[0]
        .to_spec()
        .tls
        is not None
    )
    with pytest.raises(ValidationError, match="tls_cert and tls_key go together"):
        GateConfig.model_validate(
            {**base, "listeners": [{"port": 1}], "admin": {"port": 2, "tls_cert": "c"}}
        )
    with pytest.raises(ValidationError, match="client_ca needs TLS"):
        GateConfig.model_validate(
            {**base, "listeners": [{"port": 1}], "admin": {"port": 2, "client_ca": "c"}}
        )
