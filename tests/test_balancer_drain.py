"""Draining a regional balancer (`haplane maintenance drain --direct`,
`haplane.local.balancer_drain`) with real processes: two balancers (`python -m haplane.gate`
with region health on the shared etcd) in front of one upstream, and a gate in front of
both checking their `/healthz/region` as `haplane up` does.

Drained, a balancer's region health says 503: the gate marks it DRAINING, sends new
connections to its twin, and leaves the open one alone (it still works; DOWN would have cut
it). The drain waits for that connection and says it is still open; the twin, now the
region's last balancer in service, is refused; undrained, the balancer is UP again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from haplane.local.balancer_drain import DrainError, drain
from haplane.local.etcd_cluster import EtcdCluster
from haplane.local.gate_plans import BalancerPlan
from tests.gate.helpers import Backend, Gate, eventually, free_port, gate_config, request


def plan(gate: Gate, name: str) -> BalancerPlan:
    port = int(gate.config["listeners"][0]["port"])
    return BalancerPlan(
        region="r", name=name, zone="a", host="127.0.0.1", port=port,
        admin_port=gate.admin_port, replicas=(), etcd_endpoints=(),
    )  # fmt: skip


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One keep-alive request on an open connection; the status line of its answer."""
    writer.write(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    lines = head.split(b"\r\n")
    length = next(int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    return head.split(b"\r\n")[0]


async def test_a_drained_balancer_gets_no_new_connections_and_keeps_its_open_one(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    started: list[Backend | Gate] = []
    try:
        backend = await Backend(tmp_path, "api").start()
        started.append(backend)
        lbs = []
        for name in ("lb-1", "lb-2"):
            config = gate_config(
                {"r": [backend]},
                [{"port": free_port(), "mode": "l4"}],
                check={"path": "/readyz", "interval": 0.1},
                region={"name": "r", "etcd": etcd_cluster.endpoints},
            )
            lb = Gate(tmp_path, config, name)
            started.append(lb)
            lbs.append(await lb.start())
        front_port = free_port()
        front_config = gate_config({}, [{"port": front_port, "mode": "l4"}], active="r")
        front_config["pools"] = {
            "r": {
                "upstreams": [
                    {
                        "name": n,
                        "host": "127.0.0.1",
                        "port": int(lb.config["listeners"][0]["port"]),
                        "check_port": lb.admin_port,
                    }
                    for n, lb in zip(("lb-1", "lb-2"), lbs, strict=True)
                ],
                "check": {"path": "/healthz/region", "interval": 0.1, "fall": 2, "rise": 2},
            }
        }
        front = Gate(tmp_path, front_config, "front")
        started.append(front)
        await front.start()
        await front.wait_state("lb-1", "up")
        await front.wait_state("lb-2", "up")
        plans = [plan(lbs[0], "lb-1"), plan(lbs[1], "lb-2")]

        # an open connection through the front gate, on whichever balancer it landed
        reader, writer = await asyncio.open_connection("127.0.0.1", front_port)
        assert (await roundtrip(reader, writer)).endswith(b"200 OK")
        busy = next(n for n, c in (await front.active()).items() if c == 1)
        twin = "lb-2" if busy == "lb-1" else "lb-1"

        result = await drain(plans, f"r/{busy}", True, reason="kernel update", timeout=1.5)
        assert result.drained and result.connections_left == 1, result
        assert "1 still open" in result.message()
        await front.wait_state(busy, "draining")
        busy_lb = lbs[0] if busy == "lb-1" else lbs[1]
        health = await request(busy_lb.admin_port, "GET", "/healthz/region")
        assert health.status == 503 and health.json()["drained"] == "kernel update"
        assert (await roundtrip(reader, writer)).endswith(b"200 OK")  # not cut
        before = (await front.status())["pools"]["r"]["upstreams"]
        for _ in range(6):  # every new connection goes to the twin
            assert (await request(front_port, "GET", "/whoami")).status == 200
        after = (await front.status())["pools"]["r"]["upstreams"]
        grew = {
            a["name"]: a["connections_total"] - b["connections_total"]
            for a, b in zip(after, before, strict=True)
        }
        assert grew == {busy: 0, twin: 6}, grew

        with pytest.raises(DrainError, match=r"no balancer in service.*is drained"):
            await drain(plans, f"r/{twin}", True, reason="both")
        assert await front.state(twin) == "up"  # refused: nothing changed
        with pytest.raises(DrainError, match="no balancer named 'r/lb-9'"):
            await drain(plans, "r/lb-9", True)

        writer.close()
        result = await drain(plans, f"r/{busy}", True, undo=True)
        # a twin whose region health says 503 (its replicas not ready) is no twin in service
        await backend.set_ready(False)
        twin_lb = lbs[1] if busy == "lb-1" else lbs[0]

        async def unhealthy() -> bool:
            return (await request(twin_lb.admin_port, "GET", "/healthz/region")).status == 503

        await eventually(unhealthy, 10.0, "the twin's region unhealthy")
        with pytest.raises(DrainError, match=r"no balancer in service.*region unhealthy"):
            await drain(plans, f"r/{busy}", True, reason="not now")
        await backend.set_ready(True)
        await front.wait_state(busy, "up")
        await front.wait_state(twin, "up")

        async def healthy() -> bool:  # (the twin's own view: what the drain asks)
            return (await request(twin_lb.admin_port, "GET", "/healthz/region")).status == 200

        await eventually(healthy, 10.0, "the twin's region healthy again")
        result = await drain(plans, busy, True, reason="kernel update", timeout=5.0)
        assert result.connections_left == 0, result
        result = await drain(plans, busy, True, undo=True)
        assert not result.drained
        await front.wait_state(busy, "up")
        await eventually(lambda: _served_by_both(front_port, front), 10.0, "both serve again")
    finally:
        for p in started:
            p.kill()


async def _served_by_both(port: int, front: Gate) -> bool:
    before = {
        u["name"]: u["connections_total"] for u in (await front.status())["pools"]["r"]["upstreams"]
    }
    for _ in range(4):
        await request(port, "GET", "/whoami")
    after = {
        u["name"]: u["connections_total"] for u in (await front.status())["pools"]["r"]["upstreams"]
    }
    return all(after[n] > before[n] for n in after)
