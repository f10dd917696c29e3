"""The failover controller's leader against real etcd: the shared cluster as the global control
etcd (a fresh prefix per test) and two single-member clusters as regions `a` and `b` (the fence
key is one fixed path per regional etcd, so each region needs an etcd of its own).

Checked: after a failover the old region's key is frozen and the new one's becomes
`active:b@E+1` before the record is writable; an unfence waits for the new region's key; the
periodic reconcile freezes a stale `active:` key and sets missing ones; hysteresis and the
failback setting are what the controller itself observed, not the record's wall-clock `since`;
a blocked failover is published once per start, change of cause and end, by the leader only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from haplane.gate.controller import ControllerSettings, FailoverController
from haplane.gate.failover import Settings, decide
from haplane.gate.forwarder import Forwarder
from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import FENCE_KEY, ActiveRegion, EtcdClient, FenceValue, GlobalState
from haplane.store.global_state import FailoverBlock
from tests.gate.helpers import eventually, free_port

GATES = ("g1", "g2", "g3")  # vantage points whose reports the test writes


@pytest_asyncio.fixture(scope="module")
async def regions(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, list[str]]]:
    """Two regional etcds (one member each): region -> client endpoints."""
    clusters = {
        r: EtcdCluster(tmp_path_factory.mktemp(f"etcd-{r}"), size=1, scope=r) for r in ("a", "b")
    }
    try:
        await asyncio.gather(*(c.start() for c in clusters.values()))
        yield {r: c.endpoints for r, c in clusters.items()}
    finally:
        await asyncio.gather(*(c.stop() for c in clusters.values()))


@pytest_asyncio.fixture
async def fence_clients(regions: dict[str, list[str]]) -> AsyncIterator[dict[str, EtcdClient]]:
    """A client per region, each region's fence key deleted first (tests share the etcds)."""
    clients = {r: EtcdClient(eps, timeout=2.0) for r, eps in regions.items()}
    for c in clients.values():
        await c.delete(FENCE_KEY)
    try:
        yield clients
    finally:
        for c in clients.values():
            await c.close()


@pytest.fixture
def gate_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="haplane.gate")
    yield caplog


async def fence(client: EtcdClient) -> str | None:
    kv = await client.get(FENCE_KEY)
    return kv.value.decode() if kv is not None else None


def make_controller(
    global_endpoints: list[str],
    prefix: bytes,
    region_etcd: dict[str, list[str]],
    *,
    min_interval: float = 0.0,
    failback: bool = False,
    gate: str = "g0",
    block_settle: float = 1.0,
) -> FailoverController:
    decision = Settings(
        vantage_points=GATES, priority=("a", "b"), min_interval=min_interval, failback=failback
    )
    settings = ControllerSettings(
        gate=gate,  # not a vantage point (g0): its own (empty) report is no vote
        etcd=global_endpoints,
        prefix=prefix.decode(),
        decision=decision,
        region_etcd=region_etcd,
        fence_interval=0.1,
        block_settle=block_settle,
    )
    return FailoverController(Forwarder(name="controller-test"), settings)


@contextlib.asynccontextmanager
async def running(controller: FailoverController) -> AsyncIterator[FailoverController]:
    controller.start()
    try:
        yield controller
    finally:
        await controller.stop()
        await controller.forwarder.stop(grace=0)


async def write_reports(
    client: EtcdClient,
    prefix: bytes,
    a_healthy: bool,
    *,
    b_healthy: bool = True,
    gates: tuple[str, ...] = GATES,
) -> None:
    """Every gate (of `gates`) reports region a healthy or down for a while, b healthy (or
    down) for a while."""
    for gate in gates:
        body = {
            "gate": gate,
            "at": time.time(),
            "regions": {
                "a": {"healthy": a_healthy, "heldFor": 30.0},
                "b": {"healthy": b_healthy, "heldFor": 30.0},
            },
        }
        await client.put(prefix + b"vantage/" + gate.encode(), json.dumps(body).encode())


@contextlib.asynccontextmanager
async def reporting(
    client: EtcdClient, prefix: bytes, a_healthy: bool, **views: Any
) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            await write_reports(client, prefix, a_healthy, **views)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest_asyncio.fixture
async def leader(
    etcd_cluster, key_prefix, regions, fence_clients
) -> AsyncIterator[tuple[EtcdClient, GlobalState, FailoverController]]:
    """A controller running (it leads: nobody else campaigns under this prefix) with both
    regional etcds (their keys deleted first), and a client and the global state under the
    test's prefix."""
    client = etcd_cluster.client(timeout=2.0)
    state = GlobalState(client, prefix=key_prefix)
    controller = make_controller(etcd_cluster.endpoints, key_prefix, regions)
    try:
        async with running(controller):
            yield client, state, controller
    finally:
        await client.close()


async def started_in_a(state: GlobalState, fence_clients: dict[str, EtcdClient]) -> None:
    """Epoch 1 in `a`, recorded unfenced: the controller unfences it (setting a's key first)
    and makes b a standby."""
    await state.initialize("a", by="t", reason="t")
    await eventually(
        lambda: _keys(fence_clients, {"a": "active:a@1", "b": "standby:a@1"}),
        what="the keys of epoch 1",
    )
    await eventually(lambda: _writable(state, 1), what="epoch 1 unfenced")


async def _keys(clients: dict[str, EtcdClient], want: dict[str, str | None]) -> bool:
    return {r: await fence(clients[r]) for r in want} == want


async def _writable(state: GlobalState, epoch: int) -> bool:
    record = await state.read()
    return record is not None and record.epoch == epoch and record.writable


async def test_a_failover_freezes_the_old_region_and_activates_the_new_before_it_is_writable(
    leader, key_prefix, fence_clients, gate_log
):
    client, state, controller = leader
    seen: list[tuple[ActiveRegion, str | None, str | None]] = []

    async def watch() -> None:
        """At every change of the record: both keys, read right after."""
        async for record in state.watch():
            if record is None:
                continue
            keys = await fence(fence_clients["a"]), await fence(fence_clients["b"])
            seen.append((record, *keys))

    watcher = asyncio.create_task(watch())
    try:
        await started_in_a(state, fence_clients)
        async with reporting(client, key_prefix, a_healthy=False):
            await eventually(lambda: _writable(state, 2), what="epoch 2 unfenced")
        await asyncio.sleep(0.3)  # a reconcile pass or two after the unfence
        report = controller.report()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

    by_state = {(r.epoch, r.writable): (r, a, b) for r, a, b in seen}
    # epoch 1 became writable only once a's key said so
    assert by_state[(1, True)][1] == "active:a@1"
    committed, _, b_then = by_state[(2, False)]
    assert committed.region == "b" and committed.by == "controller:g0" and committed.previous == "a"
    # the failover history's times: first seen down, then agreed down, then committed
    assert committed.detected and committed.agreed
    assert committed.detected <= committed.agreed <= committed.since, committed
    assert b_then != "active:b@2"  # not before the fence wait
    # when the record turned writable, a was already frozen and b already active
    assert by_state[(2, True)][1:] == ("frozen:a@1", "active:b@2")
    assert report["fence_keys"] == {"a": "frozen:a@1", "b": "active:b@2"}
    lines = [json.loads(r.getMessage()) for r in gate_log.records if r.getMessage().startswith("{")]
    changes = [(x["region"], x["value"], x["source"]) for x in lines if x["event"] == "fence_key"]
    assert ("b", "active:b@2", "activate") in changes
    assert ("a", "frozen:a@1", "freeze") in changes  # right after the commit, not by reconcile


async def test_the_old_region_is_frozen_right_after_the_commit(leader, key_prefix, fence_clients):
    """Frozen well before the fence wait is over (1.25 s here): by the commit's own freeze."""
    client, state, _ = leader
    await started_in_a(state, fence_clients)
    async with reporting(client, key_prefix, a_healthy=False):
        committed = await eventually(lambda: _epoch(state, 2), what="epoch 2 committed")
        t0 = time.monotonic()
        await eventually(lambda: _keys(fence_clients, {"a": "frozen:a@1"}), timeout=2)
        assert time.monotonic() - t0 < committed.fence_wait
        record = await state.read()
        assert record is not None and not record.writable  # still in the fence wait


async def _epoch(state: GlobalState, epoch: int) -> ActiveRegion | None:
    record = await state.read()
    return record if record is not None and record.epoch == epoch else None


async def test_reconcile_freezes_a_stale_active_key_and_sets_missing_ones(
    leader, fence_clients, gate_log
):
    _, state, _ = leader
    await started_in_a(state, fence_clients)
    # b comes back from an old epoch in which it was active
    await fence_clients["b"].put(FENCE_KEY, FenceValue.active("b", 0).encode())
    await eventually(lambda: _keys(fence_clients, {"b": "frozen:b@0"}), timeout=2)
    # a lost key is set again: the standby's, and the writable active region's (never from
    # `frozen:`, and a reconcile holding a record from before a switch cannot: the switch's
    # step-down moved every key on first)
    await fence_clients["b"].delete(FENCE_KEY)
    await fence_clients["a"].delete(FENCE_KEY)
    await eventually(
        lambda: _keys(fence_clients, {"a": "active:a@1", "b": "standby:a@1"}), timeout=2
    )

    def changes() -> list[tuple[str, str]]:
        lines = [
            json.loads(r.getMessage()) for r in gate_log.records if r.getMessage().startswith("{")
        ]
        return [(x["region"], x["value"]) for x in lines if x["event"] == "fence_key"]

    # the log line follows the write the keys show: it may come a moment after
    await eventually(lambda: changes().count(("b", "standby:a@1")) == 2, timeout=2)
    assert ("b", "frozen:b@0") in changes()


async def test_no_unfence_while_the_new_regions_key_cannot_be_set(
    etcd_cluster, key_prefix, regions, fence_clients, gate_log
):
    """b's etcd does not answer: the controller freezes a, waits out the fence wait, and still
    leaves epoch 2 unwritable (retrying), saying why once."""
    client = etcd_cluster.client(timeout=2.0)
    state = GlobalState(client, prefix=key_prefix)
    dead_b = {"a": regions["a"], "b": [f"127.0.0.1:{free_port()}"]}
    controller = make_controller(etcd_cluster.endpoints, key_prefix, dead_b)
    try:
        async with running(controller):
            await state.initialize("a", by="t", reason="t", grant_ms=200, margin_ms=50)
            await eventually(lambda: _writable(state, 1), what="epoch 1 unfenced")
            await state.switch("b", expected_epoch=1, by="operator:t", reason="t")
            await eventually(lambda: _keys(fence_clients, {"a": "frozen:a@1"}), timeout=2)
            await asyncio.sleep(1.0)  # four fence waits
            record = await state.read()
            assert record is not None and (record.epoch, record.writable) == (2, False)
            report = controller.report()
            assert report["fence_keys"]["b"] is None and "b" in (report["error"] or "")
    finally:
        await client.close()
    deferred = [r for r in gate_log.records if '"unfence_deferred"' in r.getMessage()]
    assert len(deferred) == 1, [r.getMessage() for r in deferred]


# ---- what the controller observes: its own clock, the operators' failback setting ----------


async def _snapshot_twice(controller, state, client, prefix, a_healthy, pause=0.0):
    """Two observations (a leader counts only reports it has seen change), `pause` apart."""
    await write_reports(client, prefix, a_healthy)
    await controller._observe(state, client)
    await asyncio.sleep(pause)
    await write_reports(client, prefix, a_healthy)
    return await controller._observe(state, client)


@pytest.mark.parametrize("since", ["2000-01-01T00:00:00Z", "2999-01-01T00:00:00Z"])
async def test_hysteresis_counts_from_the_controllers_first_sight_of_the_epoch(
    etcd_cluster, key_prefix, since
):
    """The record says it changed in 2000 (or in 2999, by a laptop's wrong clock): neither
    matters. An epoch seen for the first time waits the full `min_interval` from then."""
    client = etcd_cluster.client(timeout=2.0)
    state = GlobalState(client, prefix=key_prefix)
    record = ActiveRegion("a", 3, since, "operator:laptop", "t")
    await client.put(state.active_key, record.to_json())
    controller = make_controller(etcd_cluster.endpoints, key_prefix, {}, min_interval=0.5)
    try:
        first = await _snapshot_twice(controller, state, client, key_prefix, a_healthy=False)
        d = decide(first, controller.settings.decision)
        assert first.since_change < 0.5 and d.action == "none" and "hysteresis" in d.reason
        await asyncio.sleep(0.5)
        later = await _snapshot_twice(controller, state, client, key_prefix, a_healthy=False)
        assert later.since_change >= 0.5
        assert decide(later, controller.settings.decision).action == "failover"
    finally:
        await client.close()
        await controller.forwarder.stop(grace=0)


async def test_the_operators_failback_setting_reaches_the_decision(etcd_cluster, key_prefix):
    client = etcd_cluster.client(timeout=2.0)
    state = GlobalState(client, prefix=key_prefix)
    await client.put(state.active_key, ActiveRegion("b", 4, "", "t", "t").to_json())
    controller = make_controller(etcd_cluster.endpoints, key_prefix, {}, failback=True)
    off = make_controller(etcd_cluster.endpoints, key_prefix, {}, failback=False)
    try:
        s = await controller._observe(state, client)
        assert not s.failback_suspended  # never set: the topology's word
        await state.set_failback(False, by="operator:alice", reason="operator switchover to b")
        s = await controller._observe(state, client)
        assert s.failback_suspended and "operator:alice" in s.failback_note
        assert "switchover to b" in s.failback_note
        assert controller.report()["failback_setting"]["enabled"] is False
        s = await off._observe(state, client)  # failback off in the topology: not even read
        assert not s.failback_suspended and off.failback is None
        await client.put(state.failback_key, b"{not json")
        s = await controller._observe(state, client)
        assert s.failback_suspended and "cannot be read" in s.failback_note
        await state.set_failback(True, by="operator:bob", reason="b is fine")
        assert not (await controller._observe(state, client)).failback_suspended
    finally:
        await client.close()
        for c in (controller, off):
            await c.forwarder.stop(grace=0)


async def test_a_blocked_failover_is_published_once_per_cause_by_the_leader_only(
    etcd_cluster, key_prefix
):
    """a is down and so is b: blocked (no healthy region), written once however many ticks;
    a leader that takes over says nothing again; two gates stop reporting: the cause changes
    (no quorum of vantage points); a comes back: the block ends, without a failover. The
    supervisor's watch makes each of the three one event."""
    from haplane.local.platform_watch import changes, look

    client = etcd_cluster.client(timeout=2.0)
    state = GlobalState(client, prefix=key_prefix)
    await client.put(state.active_key, ActiveRegion("a", 1, "", "t", "t").to_json())

    def controller(gate: str) -> FailoverController:
        return make_controller(etcd_cluster.endpoints, key_prefix, {}, gate=gate, block_settle=0.3)

    async def published(code: str | None) -> int | None:
        kv = await client.get(state.failover_block_key)
        block = await state.failover_block()
        return kv.mod_revision if kv and block and block.blocked == code else None

    both_down: dict[str, Any] = {"a_healthy": False, "b_healthy": False}
    try:
        before = (await look(state, key_prefix)).seen
        async with running(controller("g0")), reporting(client, key_prefix, **both_down):
            revision = await eventually(lambda: published("no-healthy-region"), what="block")
            await asyncio.sleep(1.0)  # ten ticks: nothing written again
            assert await published("no-healthy-region") == revision
        async with running(controller("g9")) as other:  # another leader, the same block
            async with reporting(client, key_prefix, **both_down):
                await eventually(lambda: other.leading, what="g9 leads")
                await asyncio.sleep(2.0)
                assert await published("no-healthy-region") == revision
                assert other.report()["decision"]["blocked"] == "no-healthy-region"
            blocked = await look(state, key_prefix, before=before)
            assert blocked.seen.block is not None
            assert changes(before, blocked) == [
                ("failover-blocked", {
                    "region": "a", "epoch": 1, "blocked": "no-healthy-region",
                    "by": "controller:g0", "since": blocked.seen.block.since,
                    "started": blocked.seen.block.since,
                    "why": "a is down and no other region is seen healthy by 2 of 3 vantage "
                           "points",
                })
            ]  # fmt: skip
            async with reporting(client, key_prefix, **both_down, gates=("g1",)):
                await eventually(lambda: published("no-vantage-quorum"), what="new cause")
                quorum = await look(state, key_prefix, before=blocked.seen)
            ((event, fields),) = changes(blocked.seen, quorum)
            assert (event, fields["blocked"], fields["by"]) == (
                "failover-blocked", "no-vantage-quorum", "controller:g9"
            )  # fmt: skip
            assert "only 1 report" in str(fields["why"])
            # the same block, begun under g0: when it began is kept across the new cause
            assert fields["started"] == blocked.seen.block.since != fields["since"]
            assert changes(quorum.seen, quorum) == []
        async with (
            reporting(client, key_prefix, a_healthy=True, b_healthy=False),
            running(controller("g0")),
        ):
            await eventually(lambda: published(None), what="the block's end")
        ended = await look(state, key_prefix, before=quorum.seen)
        ((event, fields),) = changes(quorum.seen, ended)
        assert (event, fields["region"], fields["was"]) == (
            "failover-block-cleared", "a", "no-vantage-quorum"
        )  # fmt: skip
        assert fields["why"] == "a is active and not seen down by a majority"
        # the whole block: from its start under g0, not from its last cause under g9
        assert ended.seen.block is not None and quorum.seen.block is not None
        whole = _seconds(blocked.seen.block.since, ended.seen.block.since)
        assert fields["blocked_seconds"] == pytest.approx(whole, abs=0.002)
        assert whole > _seconds(quorum.seen.block.since, ended.seen.block.since)
    finally:
        await client.close()


def _seconds(a: str, b: str) -> float:
    from haplane.local.logs import parse_ts

    t0, t1 = parse_ts(a), parse_ts(b)
    assert t0 is not None and t1 is not None
    return t1 - t0


async def _epoch_1_in_a(etcd_cluster: Any, key_prefix: bytes) -> tuple[EtcdClient, GlobalState]:
    """A client, and the global state under the test's prefix with epoch 1 in a (writable)."""
    client = etcd_cluster.client(timeout=2.0)
    state = GlobalState(client, prefix=key_prefix)
    await client.put(state.active_key, ActiveRegion("a", 1, "", "t", "t").to_json())
    return client, state


async def _published(state: GlobalState) -> tuple[int, FailoverBlock | None] | None:
    """The block record's mod revision and its contents; None: no record."""
    kv = await state.client.get(state.failover_block_key)
    return (kv.mod_revision, FailoverBlock.parse(kv.value)) if kv is not None else None


BOTH_DOWN: dict[str, Any] = {"a_healthy": False, "b_healthy": False}


async def test_a_deposed_leader_publishes_no_block(etcd_cluster, key_prefix, monkeypatch):
    """g0 leads and has published a block; its leader key is then written over by another
    holder, and later deleted and created again under g0's own name (as a re-acquire would):
    g0 has not noticed, still decides and tries to publish a new cause, then the block's end,
    but neither is written: the guard compares the key as g0 created it."""
    client, state = await _epoch_1_in_a(etcd_cluster, key_prefix)
    tries: list[tuple[str | None, bool]] = []  # (the block's code, written)
    real_publish = GlobalState.publish_failover_block

    async def counted(self: GlobalState, block: FailoverBlock, **kw: Any) -> bool:
        written = await real_publish(self, block, **kw)
        tries.append((block.blocked, written))
        return written

    monkeypatch.setattr(GlobalState, "publish_failover_block", counted)
    g0 = make_controller(etcd_cluster.endpoints, key_prefix, {}, block_settle=0.2)
    leader_key = key_prefix + b"controller/leader"
    try:
        async with running(g0):
            async with reporting(client, key_prefix, **BOTH_DOWN):
                first = await eventually(lambda: _published(state), what="the block")
                assert first[1] is not None and first[1].blocked == "no-healthy-region"
                assert tries == [("no-healthy-region", True)]
            await client.put(leader_key, b"g9")  # another holder
            async with reporting(client, key_prefix, **BOTH_DOWN, gates=("g1",)):
                await eventually(
                    lambda: ("no-vantage-quorum", False) in tries, what="the new cause, tried"
                )
                assert g0.leading and await _published(state) == first
                assert g0.block_error is not None and "leader key" in g0.block_error
            await client.delete(leader_key)
            await client.put(leader_key, b"g0")  # g0's name, not the key g0 created
            async with reporting(client, key_prefix, a_healthy=True):
                await eventually(lambda: (None, False) in tries, what="the end, tried")
                assert g0.leading and await _published(state) == first
        assert all(not written for _, written in tries[1:])
    finally:
        await client.delete(leader_key)
        await client.close()


async def test_a_publish_that_hangs_delays_no_decision(etcd_cluster, key_prefix, monkeypatch):
    """The block's write hangs (a slow control etcd): the decisions go on every tick, the
    failover that becomes possible is made at once, and the writes wait their turn: one at a
    time, then the latest wanted (the cause that changed meanwhile is never written)."""
    import haplane.gate.controller as controller_module

    client, state = await _epoch_1_in_a(etcd_cluster, key_prefix)
    decided, writes, release = [0], list[FailoverBlock](), asyncio.Event()
    real_publish = GlobalState.publish_failover_block

    def counting(snapshot: Any, settings: Settings) -> Any:
        decided[0] += 1
        return decide(snapshot, settings)

    async def slow(self: GlobalState, block: FailoverBlock, **kw: Any) -> bool:
        writes.append(block)
        await release.wait()
        return await real_publish(self, block, **kw)

    monkeypatch.setattr(controller_module, "decide", counting)
    monkeypatch.setattr(GlobalState, "publish_failover_block", slow)
    c = make_controller(etcd_cluster.endpoints, key_prefix, {}, block_settle=0.2)
    try:
        async with running(c):
            async with reporting(client, key_prefix, **BOTH_DOWN):
                await eventually(lambda: writes, what="the block's write, hanging")
                ticks = decided[0]
                await asyncio.sleep(1.0)
                assert decided[0] - ticks >= 4  # ten ticks (a loaded machine is slower)
            async with reporting(client, key_prefix, **BOTH_DOWN, gates=("g1",)):
                await eventually(
                    lambda: c.report()["decision"]["blocked"] == "no-vantage-quorum",
                    what="a new cause",
                )
                await asyncio.sleep(0.5)  # settled, and handed over: not written yet
            async with reporting(client, key_prefix, a_healthy=False):
                record = await eventually(
                    lambda: _epoch(state, 2), timeout=5.0, what="the failover, at once"
                )
                assert record.region == "b" and len(writes) == 1 and c.error is None
                await asyncio.sleep(1.0)  # epoch 2, not blocked: settled and handed over
                release.set()
                await eventually(lambda: len(writes) == 2, what="the latest wanted")
        assert [(w.epoch, w.blocked) for w in writes] == [(1, "no-healthy-region"), (2, None)]
        published = await _published(state)
        assert published is not None and published[1] == writes[1]
    finally:
        await client.close()


async def _epoch(state: GlobalState, epoch: int) -> ActiveRegion | None:
    record = await state.read()
    return record if record is not None and record.epoch == epoch else None


async def test_a_failing_publish_backs_off_and_is_no_decision_error(
    etcd_cluster, key_prefix, monkeypatch
):
    """The block's write fails every time: it is tried again after 0.5 s, 1 s, 2 s (not on
    every tick); the controller's `error` is the decisions', `block_error` says why."""
    from haplane.store import EtcdError

    client, _ = await _epoch_1_in_a(etcd_cluster, key_prefix)
    tries: list[float] = []

    async def failing(self: GlobalState, block: FailoverBlock, **kw: Any) -> bool:
        tries.append(time.monotonic())
        raise EtcdError("the control etcd is slow")

    monkeypatch.setattr(GlobalState, "publish_failover_block", failing)
    c = make_controller(etcd_cluster.endpoints, key_prefix, {}, block_settle=0.2)
    try:
        async with running(c), reporting(client, key_prefix, **BOTH_DOWN):
            await eventually(lambda: tries, what="the first try")
            await asyncio.sleep(2.7)
            assert 3 <= len(tries) <= 4, tries  # at 0, 0.5, 1.5, 3.5 s: not every 0.1 s
            gaps = [b - a for a, b in itertools.pairwise(tries)]
            assert gaps[0] >= 0.45 and gaps[1] >= 0.95, gaps
            assert c.error is None and c.block_error == "the control etcd is slow"
            assert c.report()["block_error"] == "the control etcd is slow"
    finally:
        await client.close()


def test_gate_configs_name_every_regions_etcd(tmp_path: Path):
    """`haplane up` gives every controller the client endpoints of every regional etcd."""
    from haplane.gate.config import parse_config
    from haplane.local.gate_plans import gate_config, resolve_all
    from haplane.local.ports import PortRegistry
    from haplane.topology.loader import load_example

    topology = load_example("two-regions")
    plan = resolve_all(topology, PortRegistry(tmp_path / "ports.json"))
    etcd_of = {c.view.scope: c.endpoints for c in plan.clusters}
    for g in plan.gates:
        config = parse_config(gate_config(g, topology))
        assert config.controller is not None
        assert config.controller.region_etcd == {r: etcd_of[r] for r in topology.region_priority()}
