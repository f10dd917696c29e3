"""A gate's follower of the active region, on a real etcd with an in-process forwarder: it routes
only where the global state says, refuses when the state names no region it can serve, and never
goes back to an older epoch."""

from __future__ import annotations

import asyncio
import json
import time

from haplane.gate.forwarder import Forwarder
from haplane.gate.metrics import FollowerCollector
from haplane.gate.roles import ActiveRegionFollower
from haplane.gate.settings import HealthCheck, UpstreamAddress
from haplane.store import GlobalState


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.02)


def test_a_cut_off_gate_exports_no_epoch():
    """What it saw last may be stale: a fence alert must not read its `writable`."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    follower = SimpleNamespace(epoch=3, writable=True, cut_off=False)
    registry = CollectorRegistry()
    registry.register(FollowerCollector(follower))  # type: ignore[arg-type]

    def samples() -> list[str]:
        text = generate_latest(registry).decode()
        return [line for line in text.splitlines() if not line.startswith("#")]

    assert samples() == ["haplane_gate_epoch 3.0", "haplane_gate_epoch_writable 1.0"]
    follower.cut_off = True
    assert samples() == []


def _metrics(forwarder: Forwarder) -> tuple[float, float]:
    """(haplane_gate_epoch, haplane_gate_epoch_writable) as a scrape of the gate reads them."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(forwarder.metrics.registry).decode()
    values = {f.name: f.samples[0].value for f in text_string_to_metric_families(text) if f.samples}
    return values["haplane_gate_epoch"], values["haplane_gate_epoch_writable"]


async def test_follower_routes_only_where_the_global_state_says(etcd_cluster, key_prefix):
    forwarder = Forwarder(name="gate-test")
    check = HealthCheck(path="/readyz", interval=0.5, timeout=0.2)
    for region in ("a", "b"):  # nothing listens there: routing, not health, is under test
        await forwarder.set_pool(region, [UpstreamAddress("lb", "127.0.0.1", 9)], check)
    follower = ActiveRegionFollower(forwarder, etcd_cluster.endpoints, key_prefix)
    forwarder.metrics.registry.register(FollowerCollector(follower))
    client = etcd_cluster.client(timeout=2.0)
    state = GlobalState(client, prefix=key_prefix)

    def active() -> str | None:
        pool = forwarder.active_pool
        return pool.name if pool is not None else None

    try:
        follower.start()
        await _until(lambda: follower.connected)
        assert active() is None  # nothing recorded: refuse clients
        await state.initialize("a", by="t", reason="t", fresh=True)
        await _until(lambda: active() == "a")
        assert follower.writable is True and _metrics(forwarder) == (1.0, 1.0)
        await state.switch("b", expected_epoch=1, by="t", reason="t")
        await _until(lambda: active() == "b" and follower.epoch == 2)
        # a switch is fenced until unfenced under the same epoch: the gate's metrics say so
        assert follower.writable is False and _metrics(forwarder) == (2.0, 0.0)
        await state.unfence(2)
        await _until(lambda: follower.writable is True)
        assert _metrics(forwarder) == (2.0, 1.0)
        # a confirming read sent before the unfence, answered after it, is not a re-fence
        follower._apply("b", 2, False)
        assert follower.writable is True
        # a region this gate has no pool for: refuse rather than keep serving b
        await state.switch("c", expected_epoch=2, by="t", reason="t")
        await _until(lambda: follower.epoch == 3)
        assert active() is None
        await state.switch("a", expected_epoch=3, by="t", reason="t")
        await _until(lambda: active() == "a" and follower.epoch == 4)
        # an older epoch written behind the transactions' back is ignored
        stale = {"region": "b", "epoch": 2, "since": "", "by": "x", "reason": "x", "from": None}
        await client.put(state.active_key, json.dumps(stale).encode())
        await asyncio.sleep(0.5)
        assert active() == "a" and follower.epoch == 4
    finally:
        await follower.stop()
        await forwarder.stop(grace=0)
        await client.close()
