"""A planned switchover's steps against real etcd clusters (`haplane.store.switchover`): it
carries every write to the new region and reverses the stream; when it is refused (the old
region unreachable, or the new one not catching up in time) nothing switches and the old
region stays writable."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import pytest_asyncio

from haplane.local.etcd_cluster import EtcdCluster
from haplane.replication import Replicator
from haplane.store import (
    APPLIED_KEY,
    CUT_KEY,
    FENCE_KEY,
    AppliedRecord,
    EtcdClient,
    EtcdOutcomeUnknown,
    FenceValue,
    GlobalState,
    Op,
    RegionFences,
)
from haplane.store.switchover import (
    SwitchoverRefused,
    planned_switchover,
    record_unplanned_cut,
)

pytestmark = pytest.mark.timeout(120)


@pytest_asyncio.fixture(scope="module")
async def pair(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[EtcdCluster, EtcdCluster]]:
    a = EtcdCluster(tmp_path_factory.mktemp("a"), scope="a")
    b = EtcdCluster(tmp_path_factory.mktemp("b"), scope="b")
    try:
        await asyncio.gather(a.start(), b.start())
        yield a, b
    finally:
        await asyncio.gather(a.stop(), b.stop())


@contextlib.asynccontextmanager
async def setup(
    pair: tuple[EtcdCluster, EtcdCluster], control_cluster: EtcdCluster, prefix: bytes
) -> AsyncIterator[tuple[EtcdClient, EtcdClient, GlobalState, RegionFences]]:
    a, b = pair[0].client(2.0), pair[1].client(2.0)
    control = control_cluster.client(2.0)
    for c in (a, b):
        await c.txn([], [Op("delete", b"\0", range_end=b"\0")])
    state = GlobalState(control, prefix=prefix)
    await state.initialize("a", by="t", reason="t", fresh=True)
    await a.put(FENCE_KEY, FenceValue.active("a", 1).encode())
    await b.put(FENCE_KEY, FenceValue.standby("a", 1).encode())
    fences = RegionFences({"a": a, "b": b})
    try:
        yield a, b, state, fences
    finally:
        await fences.close()
        await control.close()


@contextlib.asynccontextmanager
async def replicating(region: str, target: EtcdClient, source: str, src: EtcdClient):
    rep = Replicator(region, target, {source: src}, identity=f"{region}/r")
    task = asyncio.create_task(rep.run())
    try:
        yield rep
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await rep.resign()


async def test_a_planned_switchover_carries_every_write_and_reverses_the_stream(
    pair: tuple[EtcdCluster, EtcdCluster], etcd_cluster: EtcdCluster, key_prefix: bytes
) -> None:
    async with setup(pair, etcd_cluster, key_prefix) as (a, b, state, fences):
        async with replicating("b", b, "a", a):
            for i in range(50):
                await a.put(f"/registry/configmaps/ns/c{i}".encode(), b"x" * 100)
            before = await state.read()
            assert before is not None
            done = await planned_switchover(state, fences, before, "b", by="t", reason="t")
        assert done.record.region == "b" and done.record.writable and done.record.epoch == 2
        assert done.reversed and done.cut.planned
        for i in range(50):  # acknowledged in a before the cut: all in b
            assert await b.get(f"/registry/configmaps/ns/c{i}".encode()) is not None
        assert (await a.get(FENCE_KEY)).value == b"standby:b@2"  # type: ignore[union-attr]
        assert (await b.get(FENCE_KEY)).value == b"active:b@2"  # type: ignore[union-attr]
        assert await b.get(CUT_KEY) is not None  # the marker travelled
        rec = AppliedRecord.from_kv(await a.get(APPLIED_KEY))  # type: ignore[arg-type]
        assert (rec.source, rec.epoch, rec.cluster_id) == ("b", 2, await b.cluster_id())
        # a follows b from the promotion: a write in b reaches a without a resync
        async with replicating("a", a, "b", b) as back:
            await b.put(b"/registry/configmaps/ns/after", b"y")
            for _ in range(100):
                if await a.get(b"/registry/configmaps/ns/after") is not None:
                    break
                await asyncio.sleep(0.05)
            assert await a.get(b"/registry/configmaps/ns/after") is not None
            assert back.status.resyncs == 0
        assert (await state.cuts())[2].revision == done.marker_revision


async def test_a_standby_that_does_not_catch_up_refuses_and_the_old_region_stays_writable(
    pair: tuple[EtcdCluster, EtcdCluster], etcd_cluster: EtcdCluster, key_prefix: bytes
) -> None:
    async with setup(pair, etcd_cluster, key_prefix) as (a, b, state, fences):
        before = await state.read()
        assert before is not None
        with pytest.raises(SwitchoverRefused, match="did not apply the cut marker") as info:
            # no replicator runs in b: the marker never arrives
            await planned_switchover(
                state, fences, before, "b", by="t", reason="t", catch_up_limit=0.5
            )
        assert info.value.thawed
        assert (await a.get(FENCE_KEY)).value == b"active:a@1"  # type: ignore[union-attr]
        assert (await b.get(FENCE_KEY)).value == b"standby:a@1"  # type: ignore[union-attr]
        assert (await state.read()) == before


async def test_a_switchover_cancelled_while_catching_up_leaves_the_old_region_writable(
    pair: tuple[EtcdCluster, EtcdCluster], etcd_cluster: EtcdCluster, key_prefix: bytes
) -> None:
    """The controller running it lost the lead (its task cancelled) while the standby caught
    up: nothing activates a frozen key but a switch, so the freeze is undone on the way out."""
    async with setup(pair, etcd_cluster, key_prefix) as (a, b, state, fences):
        before = await state.read()
        assert before is not None
        task = asyncio.create_task(
            planned_switchover(state, fences, before, "b", by="t", reason="t", catch_up_limit=30)
        )
        for _ in range(100):  # frozen: the catch-up wait has begun (no replicator runs in b)
            if (await a.get(FENCE_KEY)).value.startswith(b"frozen:"):  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("never frozen")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await a.get(FENCE_KEY)).value == b"active:a@1"  # type: ignore[union-attr]
        assert (await b.get(FENCE_KEY)).value == b"standby:a@1"  # type: ignore[union-attr]
        assert (await state.read()) == before


async def test_an_unreachable_old_region_refuses_and_switches_nothing(
    pair: tuple[EtcdCluster, EtcdCluster], etcd_cluster: EtcdCluster, key_prefix: bytes
) -> None:
    async with setup(pair, etcd_cluster, key_prefix) as (a, _b, state, _fences):
        before = await state.read()
        assert before is not None
        dead = EtcdClient(["127.0.0.1:9"], timeout=0.3)  # nothing listens there
        cut_off = RegionFences({"a": dead, "b": pair[1].client(2.0)})
        try:
            with pytest.raises(SwitchoverRefused, match="does not answer"):
                await planned_switchover(state, cut_off, before, "b", by="t", reason="t")
        finally:
            await cut_off.close()
        assert (await a.get(FENCE_KEY)).value == b"active:a@1"  # type: ignore[union-attr]
        assert (await state.read()) == before


async def test_a_region_promoted_mid_resync_has_its_garbage_collector_paused(
    pair: tuple[EtcdCluster, EtcdCluster], etcd_cluster: EtcdCluster, key_prefix: bytes
) -> None:
    async with setup(pair, etcd_cluster, key_prefix) as (_a, b, state, _fences):
        partial = AppliedRecord("a", 1, 1, 10, "resyncing")
        await b.put(APPLIED_KEY, partial.to_json())
        record = await state.switch("b", expected_epoch=1, by="t", reason="--force")
        await b.put(FENCE_KEY, FenceValue.active("b", 2).encode())
        await record_unplanned_cut(state, b, record, lag_seconds=None)
        note = await state.gc_paused("b")
        assert note is not None and "resync" in str(note["reason"]) and note["epoch"] == 2
        assert await state.gc_paused("a") is None
        await state.resume_gc("b")
        assert await state.gc_paused("b") is None
        # a complete copy pauses nothing
        await b.put(APPLIED_KEY, AppliedRecord("a", 1, 1, 10).to_json())
        await record_unplanned_cut(state, b, replace(record, epoch=3), lag_seconds=None)
        assert await state.gc_paused("b") is None


class _LosesAnAnswer(EtcdClient):
    """Commits the first write whose ops put `key`, then reports its outcome unknown."""

    def __init__(self, endpoints: list[str], key: bytes):
        super().__init__(endpoints, timeout=2.0)
        self.key, self.lost = key, False

    async def txn(self, compare, success, failure=(), **kw):  # type: ignore[no-untyped-def]
        r = await super().txn(compare, success, failure, **kw)
        if not self.lost and any(o.kind == "put" and o.key == self.key for o in success):
            self.lost = True
            raise EtcdOutcomeUnknown("the answer was lost (test)")
        return r


@pytest.mark.parametrize("lost", ["freeze", "promotion"])
async def test_a_lost_answer_is_undone_and_nothing_switches(
    pair: tuple[EtcdCluster, EtcdCluster], etcd_cluster: EtcdCluster, key_prefix: bytes, lost: str
) -> None:
    async with setup(pair, etcd_cluster, key_prefix) as (a, b, state, _fences):
        before = await state.read()
        assert before is not None
        if lost == "freeze":
            flaky = RegionFences(
                {"a": _LosesAnAnswer(pair[0].endpoints, CUT_KEY), "b": pair[1].client(2.0)}
            )
        else:
            flaky = RegionFences(
                {"a": pair[0].client(2.0), "b": _LosesAnAnswer(pair[1].endpoints, FENCE_KEY)}
            )
        try:
            async with replicating("b", b, "a", a):
                with pytest.raises(SwitchoverRefused, match="got no answer") as info:
                    await planned_switchover(state, flaky, before, "b", by="t", reason="t")
        finally:
            await flaky.close()
        assert info.value.thawed
        assert (await a.get(FENCE_KEY)).value == b"active:a@1"  # type: ignore[union-attr]
        assert (await b.get(FENCE_KEY)).value == b"standby:a@1"  # type: ignore[union-attr]
        assert (await state.read()) == before
