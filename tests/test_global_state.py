"""The global control state on a real etcd: first write only if absent, epoch-guarded switches
(one winner among concurrent ones), history, and a watch that sees every change."""

from __future__ import annotations

import asyncio

import pytest

from haplane.store import GlobalState, StaleEpoch, SyncRecord


@pytest.fixture
async def state(etcd_cluster, key_prefix):
    client = etcd_cluster.client(timeout=2.0)
    try:
        yield GlobalState(client, prefix=key_prefix)
    finally:
        await client.close()


async def test_initialize_writes_epoch_one_only_once(state):
    assert await state.read() is None
    first, created = await state.initialize(
        "eu-west", by="haplane up", reason="first start", fresh=True
    )
    assert created and (first.region, first.epoch) == ("eu-west", 1)
    again, created = await state.initialize(
        "eu-central", by="haplane up", reason="restart", fresh=True
    )
    assert not created and (again.region, again.epoch) == ("eu-west", 1)
    assert (await state.read()).region == "eu-west"


async def test_switch_raises_the_epoch_and_refuses_a_stale_one(state):
    await state.initialize("eu-west", by="t", reason="t", fresh=True)
    moved = await state.switch("eu-central", expected_epoch=1, by="operator", reason="drill")
    assert (moved.region, moved.epoch, moved.previous) == ("eu-central", 2, "eu-west")
    with pytest.raises(StaleEpoch) as info:
        await state.switch("eu-west", expected_epoch=1, by="operator", reason="late")
    assert info.value.current is not None and info.value.current.epoch == 2
    history = await state.history()
    assert [(h.region, h.epoch) for h in history] == [("eu-west", 1), ("eu-central", 2)]
    assert history[-1].by == "operator" and history[-1].reason == "drill"


async def test_switch_before_any_record_is_refused(state):
    with pytest.raises(StaleEpoch):
        await state.switch("eu-west", expected_epoch=0, by="t", reason="t")
    assert await state.read() is None


async def test_concurrent_switches_from_one_epoch_have_one_winner(state):
    await state.initialize("a", by="t", reason="t", fresh=True)
    results = await asyncio.gather(
        *(state.switch(r, expected_epoch=1, by=r, reason="race") for r in ("b", "c", "b", "c")),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1 and all(isinstance(r, StaleEpoch) for r in results if r not in winners)
    final = await state.read()
    assert final.epoch == 2 and final.region == winners[0].region
    assert len(await state.history()) == 2


async def test_watch_sees_the_current_record_then_each_change(state):
    await state.initialize("a", by="t", reason="t", fresh=True)
    seen = []

    async def follow():
        async for record in state.watch():
            seen.append((record.region, record.epoch))
            if len(seen) == 3:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    await state.switch("b", expected_epoch=1, by="t", reason="t")
    await state.switch("a", expected_epoch=2, by="t", reason="t")
    await asyncio.wait_for(task, 10)
    assert seen == [("a", 1), ("b", 2), ("a", 3)]


async def test_a_deleted_record_never_sends_the_epoch_back(state):
    await state.initialize("a", by="t", reason="first", fresh=True)
    await state.switch("b", expected_epoch=1, by="t", reason="t")
    await state.client.delete(state.active_key)  # e.g. an operator's etcdctl del
    record, created = await state.initialize("a", by="t", reason="again", fresh=True)
    assert created and record.epoch == 3
    history = await state.history()
    assert [(h.epoch, h.reason) for h in history] == [(1, "first"), (2, "t"), (3, "again")]


async def test_a_switch_is_fenced_until_unfenced_in_its_own_epoch(state):
    first, _ = await state.initialize(
        "a", by="t", reason="t", grant_ms=800, margin_ms=200, fresh=True
    )
    assert first.writable and first.unfenced is not None  # nobody held an earlier grant
    moved = await state.switch("b", expected_epoch=1, by="t", reason="t")
    assert not moved.writable and (moved.grant_ms, moved.margin_ms) == (800, 200)
    assert moved.fence_wait == pytest.approx(1.0)
    with pytest.raises(StaleEpoch):
        await state.unfence(1)  # an old epoch can never be unfenced
    done = await state.unfence(2)
    assert done.writable and done.unfenced and (await state.read()).writable
    assert (await state.unfence(2)).epoch == 2  # idempotent
    history = await state.history()
    assert not history[-1].writable  # history keeps the epoch as it began


async def test_a_record_recreated_after_deletion_starts_fenced(state):
    await state.initialize("a", by="t", reason="t", fresh=True)
    await state.client.delete(state.active_key)
    again, created = await state.initialize("a", by="t", reason="t", fresh=True)
    assert created and again.epoch == 2 and not again.writable  # an epoch-1 grant may be live


async def test_a_first_record_outside_a_brand_new_platform_starts_fenced(state):
    """No record and no history, but the platform is not brand new (a wiped control etcd):
    a replica may still hold a grant read before the loss, so the record waits to be
    unfenced after the fence wait, with the largest configured grant."""
    record, created = await state.initialize("a", by="t", reason="t", grant_ms=3000)
    assert created and record.epoch == 1 and not record.writable and record.unfenced is None
    assert record.fence_wait == pytest.approx(3.25)


async def test_a_rebuilt_record_starts_above_the_fence_keys_epochs(state):
    """The control etcd lost its data while the regions' keys name epoch 7: a record at epoch 1
    would never match a key again (keys never move back)."""
    record, created = await state.initialize("a", by="t", reason="rebuilt", min_epoch=8)
    assert created and record.epoch == 8 and not record.writable
    again, created = await state.initialize("a", by="t", reason="t", min_epoch=20)
    assert not created and again.epoch == 8  # an existing record is never changed


async def test_a_switch_writes_the_new_epochs_sync_record_and_compares_the_decided_one(state):
    """A replica degrading to `sync: none` after the controller read the record makes the
    controller's switch fail (decide again); the switch itself writes the next epoch's record,
    so a replica of the old epoch can no longer degrade (its compare-and-swap fails)."""
    await state.initialize("a", by="t", reason="t", fresh=True)
    ok, _ = await state.sync.swap(None, SyncRecord.synchronous(1, "a", "b", by="t", reason="t"))
    assert ok
    decided = await state.sync.read()
    assert decided is not None and decided.standby == "b"
    # a replica of `a` degrades meanwhile (compare-and-swap on the record it read)
    ok, degraded = await state.sync.swap(decided, SyncRecord.none(1, "a", by="r", reason="t"))
    assert ok and degraded is not None
    with pytest.raises(StaleEpoch, match="sync record changed"):
        await state.switch(
            "b", expected_epoch=1, by="c", reason="t", sync_revision=decided.revision
        )
    assert (await state.read()).epoch == 1  # nothing switched
    moved = await state.switch(
        "b", expected_epoch=1, by="c", reason="t", sync_revision=degraded.revision
    )
    now = await state.sync.read()
    assert now is not None and (now.epoch, now.region, now.standby) == (2, "b", None)
    assert moved.synchronous is False  # the record said none: b was not synchronous
    assert (await state.read()).synchronous is False
    # the old epoch's replica that read `degraded` cannot record anything any more
    ok, current = await state.sync.swap(degraded, SyncRecord.none(1, "a", by="r", reason="late"))
    assert not ok and current is not None and current.epoch == moved.epoch
    # a planned switch names the old region synchronous in the same transaction
    await state.switch("a", expected_epoch=2, by="c", reason="t", sync_standby="b")
    now = await state.sync.read()
    assert now is not None and (now.epoch, now.region, now.standby) == (3, "a", "b")
    # promoting the synchronous standby is recorded as such (drills then tolerate no loss)
    back = await state.switch("b", expected_epoch=3, by="c", reason="t")
    assert back.synchronous is True and (await state.read()).synchronous is True


async def test_a_switch_keeps_no_sync_record_unless_sync_mode_asks_for_one(state):
    await state.initialize("a", by="t", reason="t", fresh=True)
    await state.switch("b", expected_epoch=1, by="c", reason="t")
    assert await state.sync.read() is None  # asynchronous topologies keep no record
    # sync mode, decided on "no record" (0): a replica that creates one meanwhile (degrading
    # in the old epoch) makes the switch stale; otherwise the new epoch's record is created
    ok, _ = await state.sync.swap(None, SyncRecord.none(2, "b", by="r", reason="t"))
    assert ok
    with pytest.raises(StaleEpoch, match="sync record changed"):
        await state.switch("a", expected_epoch=2, by="c", reason="t", sync_revision=0)
    await state.sync.client.delete(state.sync.key)
    await state.switch("a", expected_epoch=2, by="c", reason="t", sync_revision=0)
    now = await state.sync.read()
    assert now is not None and (now.epoch, now.region, now.standby) == (3, "a", None)


async def test_a_switch_in_sync_mode_creates_the_record_where_none_exists(state):
    await state.initialize("a", by="t", reason="t", fresh=True)
    await state.switch("b", expected_epoch=1, by="c", reason="t", sync_mode=True)
    now = await state.sync.read()
    assert now is not None and now.names(2, "b") and now.degraded


async def test_a_malformed_sync_record_reads_as_none_of_no_epoch(state):
    await state.sync.client.put(state.sync.key, b"{not json")
    rec = await state.sync.read()
    assert rec is not None and rec.epoch == 0 and rec.degraded and rec.revision > 0
    assert "malformed" in rec.reason
    await state.initialize("a", by="t", reason="t", fresh=True)
    await state.switch("b", expected_epoch=1, by="c", reason="t")  # replaced, not stuck
    assert (await state.sync.read()).names(2, "b")
