"""The fence key's values and the pure rule for what each region's key should become, and the
compare-and-swap primitives on a real etcd (haplane.store.fence_key)."""

from __future__ import annotations

import pytest

from haplane.store import (
    ActiveRegion,
    FenceChanged,
    FenceRead,
    FenceValue,
    RegionFence,
    RegionFences,
)
from haplane.store.fence_key import MalformedFence, target


def rec(region: str, epoch: int, writable: bool = True) -> ActiveRegion:
    return ActiveRegion(region, epoch, "", "t", "t", writable=writable)


@pytest.mark.parametrize(
    "raw",
    ["active:eu-west@3", "frozen:eu-west@12", "standby:eu-central@1", "active:a@b@4"],
)
def test_values_round_trip(raw: str) -> None:
    assert str(FenceValue.parse(raw.encode())) == raw


@pytest.mark.parametrize(
    "raw", ["", "active", "active:eu-west", "active:@3", "leader:eu-west@3", "active:a@x"]
)
def test_malformed_values_are_refused(raw: str) -> None:
    with pytest.raises(MalformedFence, match="active\\|frozen\\|standby"):
        FenceValue.parse(raw.encode())


A, F, S = FenceValue.active, FenceValue.frozen, FenceValue.standby

CASES = [
    # (region, record, current, wanted); the recorded region's key only without `activate`
    ("a", rec("a", 1), None, None),  # only `up` (activate=True) or the unfencer activates
    ("a", rec("a", 2), S("b", 1), None),
    ("a", rec("a", 2), A("a", 2), None),
    ("b", rec("a", 2), None, S("a", 2)),
    ("b", rec("a", 2), S("a", 1), S("a", 2)),  # standbys follow the epoch
    ("b", rec("a", 2), S("a", 2), None),
    ("b", rec("a", 2), A("b", 1), F("b", 1)),  # lost the epoch (maybe while away)
    ("b", rec("a", 2, writable=False), A("b", 1), F("b", 1)),  # mid-switch: freeze at once
    ("b", rec("a", 2), F("b", 1), None),  # a frozen region stays frozen (rejoin's business)
    ("a", None, A("a", 1), None),  # no record: touch nothing
    ("a", rec("a", 2), F("a", 2), None),  # frozen by a newer switch: only activate() undoes
    ("a", rec("a", 3), F("a", 2), None),
    ("b", rec("a", 2), A("b", 3), None),  # a key newer than the record: the record is stale
    ("b", rec("a", 2), A("b", 2), F("b", 2)),  # nobody else is active in the record's epoch
    ("a", rec("a", 3), A("a", 2), F("a", 2)),  # the new region's own stale key, until activated
    ("b", rec("a", 2), S("a", 3), None),
]


@pytest.mark.parametrize(("region", "record", "current", "wanted"), CASES)
def test_target(region, record, current, wanted) -> None:
    assert target(region, record, current) == wanted
    if region != getattr(record, "region", None):
        assert target(region, record, current, activate=True) == wanted


UP_CASES = [  # `haplane up` and the controller's reconcile: the recorded region may be activated
    (rec("a", 1), None, A("a", 1)),  # a state dir from before the data fence
    (rec("a", 2), S("b", 1), A("a", 2)),  # writable: every old grant has run out
    (rec("a", 2, writable=False), S("b", 1), None),  # the unfencer activates it
    (rec("a", 2), F("a", 2), None),  # frozen: never from a reconcile
    (rec("a", 2), A("a", 3), None),
    (rec("a", 2), A("a", 1), A("a", 2)),
    (rec("a", 2, writable=False), A("a", 1), F("a", 1)),
]


@pytest.mark.parametrize(("record", "current", "wanted"), UP_CASES)
def test_target_at_up(record, current, wanted) -> None:
    assert target("a", record, current, activate=True) == wanted


def test_no_region_other_than_the_recorded_one_is_ever_made_active() -> None:
    values = [None, A("a", 1), A("b", 1), F("b", 1), S("a", 1), S("c", 3)]
    for writable in (True, False):
        record = rec("a", 2, writable)
        for current in values:
            for region in ("b", "c"):
                wanted = target(region, record, current)
                assert wanted is None or wanted.state != "active", (region, current, wanted)


async def test_compare_and_swap(etcd_cluster, key_prefix: bytes) -> None:
    async with etcd_cluster.client(timeout=2.0) as client:
        fence = RegionFence("a", client, key=key_prefix + b"fence")
        empty = await fence.read()
        assert empty == FenceRead(None, 0)
        first = await fence.swap(empty, A("a", 1))
        with pytest.raises(FenceChanged) as info:
            await fence.swap(empty, S("b", 1))  # read before the first swap: stale
        assert info.value.current.value == A("a", 1)
        frozen = await fence.freeze()
        assert frozen.value == F("a", 1) and frozen.mod_revision > first.mod_revision
        assert (await fence.freeze()).value == F("a", 1)  # idempotent
        assert (await fence.activate(3)).value == A("a", 3)
        with pytest.raises(FenceChanged, match="epoch 2 is over"):
            await fence.activate(2)  # never back to an older epoch
        # a step-down for an older record never stops a region activated since
        assert (await fence.step_down(rec("b", 3))).value == A("a", 3)
        assert (await fence.step_down(rec("b", 4))).value == F("a", 3)
        with pytest.raises(FenceChanged, match="epoch 3 is over"):
            await fence.activate(3)  # frozen in epoch 3: a later epoch took over
        await client.put(fence.key, b"garbage")
        garbage = await fence.read()
        assert garbage.value is None and garbage.raw == b"garbage"
        assert (await fence.reconcile(rec("b", 4))).value == S("b", 4)


async def test_a_step_down_makes_swaps_prepared_before_the_switch_fail(
    etcd_cluster, key_prefix: bytes
) -> None:
    """A reconcile that read the key before a switch (a deposed leader, a supervisor) must not
    land after it: the step-down moves every key below the new epoch, not only `active:`."""
    async with etcd_cluster.client(timeout=2.0) as client:
        fence = RegionFence("a", client, key=key_prefix + b"fence")
        seen_before = await fence.read()  # missing: a reconcile would set standby:b@4
        after = await fence.step_down(rec("c", 5))
        assert after.value == S("c", 5)
        with pytest.raises(FenceChanged):
            await fence.swap(seen_before, S("b", 4))
        assert (await fence.reconcile(rec("b", 4))).value == S("c", 5)  # older record: left
        assert (await fence.step_down(rec("b", 4))).value == S("c", 5)


async def test_highest_epoch_over_regions(etcd_cluster, key_prefix: bytes) -> None:
    async with (
        etcd_cluster.client(timeout=2.0) as client,
    ):
        fences = RegionFences(
            {"a": client, "b": client}  # one etcd, two keys: see RegionFences(key=...)
        )
        fences.fences["a"].key = key_prefix + b"a"
        fences.fences["b"].key = key_prefix + b"b"
        assert await fences.highest_epoch() == 0
        await fences["a"].swap(await fences["a"].read(), F("a", 7))
        await fences["b"].swap(await fences["b"].read(), S("a", 6))
        assert await fences.highest_epoch() == 7
