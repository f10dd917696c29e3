"""The write-fencing rule of an API replica (haplane.api.fencing), on a fake clock: permission
only while its region holds the current, writable epoch and less than grant - margin has passed
since the send time of the last successful read; a newer epoch naming another region fences at
once; an older answer arriving late changes nothing."""

from __future__ import annotations

import time

import pytest

from haplane.api.fencing import Fenced, WriteFence
from haplane.store import ActiveRegion


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(region: str, epoch: int, *, writable: bool = True) -> ActiveRegion:
    return ActiveRegion(
        region, epoch, "", "t", "t", writable=writable, grant_ms=1000, margin_ms=250
    )


@pytest.fixture
def fence() -> tuple[WriteFence, Clock]:
    clock = Clock()
    f = WriteFence("a", client=None, clock=clock)
    f.state = object()  # type: ignore[assignment]  # enabled, without a loop
    return f, clock


def test_no_permission_before_the_first_read(fence):
    f, _ = fence
    with pytest.raises(Fenced):
        f.remaining()


def test_permission_runs_from_the_send_time_of_the_last_read(fence):
    f, clock = fence
    f.observe(record("a", 3), sent=clock.now)
    clock.now += 0.5  # the answer took 0.5 s: permission still counts from the send
    assert f.remaining() == pytest.approx(0.25)
    clock.now += 0.22
    assert f.remaining() == pytest.approx(0.03)
    clock.now += 0.015  # less than MIN_WRITE_WINDOW left: not worth starting a write
    with pytest.raises(Fenced, match="cannot confirm"):
        f.remaining()
    f.observe(record("a", 3), sent=clock.now)
    assert f.remaining() == pytest.approx(0.75)


def test_another_region_or_an_unfenced_epoch_means_no_writes(fence):
    f, clock = fence
    f.observe(record("a", 3), sent=clock.now)
    assert f.permitted()
    f.observe(record("b", 4, writable=False), sent=clock.now)
    with pytest.raises(Fenced) as info:
        f.remaining()
    assert info.value.active == "b" and "not active" in str(info.value)
    # the old record answering late (sent earlier, arriving now) does not give permission back
    f.observe(record("a", 3), sent=clock.now - 0.1)
    assert not f.permitted() and f.epoch == 4


def test_a_promoted_region_waits_for_the_unfence(fence):
    f, clock = fence
    f.observe(record("a", 5, writable=False), sent=clock.now)
    with pytest.raises(Fenced, match="becomes writable"):
        f.remaining()
    f.observe(record("a", 5, writable=True), sent=clock.now)
    assert f.permitted()


def test_epoch_and_permission_callbacks(fence):
    f, clock = fence
    epochs: list[int] = []
    permitted: list[bool] = []
    f.on_epoch = epochs.append
    f.on_permitted = lambda: permitted.append(True)
    f.observe(record("a", 1), sent=clock.now)
    f.observe(record("a", 1), sent=clock.now)
    f.observe(record("b", 2), sent=clock.now)
    f.observe(record("a", 3), sent=clock.now)
    assert epochs == [1, 2, 3] and permitted == [True, True]


def test_a_bare_replica_is_always_writable():
    f = WriteFence("a", client=None)
    assert not f.enabled and f.remaining() == float("inf") and f.epoch == 0


def test_the_permission_counts_through_a_suspend(monkeypatch):
    """CLOCK_MONOTONIC stops while the host is suspended; the fence's clock must not: after an
    hour of suspend, a grant read before it is long over."""
    f = WriteFence("a", client=None)
    f.state = object()  # type: ignore[assignment]
    f.observe(record("a", 3), sent=f.clock())
    assert f.permitted()
    real = time.clock_gettime

    def suspended(clock: int) -> float:
        return real(clock) + (3600.0 if clock == time.CLOCK_BOOTTIME else 0.0)

    monkeypatch.setattr(time, "clock_gettime", suspended)
    assert not f.permitted()


def test_the_permission_is_an_absolute_end_on_the_boot_clock(fence):
    f, clock = fence
    f.observe(record("a", 3), sent=clock.now)
    clock.now += 0.3
    permit = f.permit()
    assert permit.epoch == 3 and permit.deadline == pytest.approx(100.75)
    clock.now += 10  # after a pause: the end it handed out is long past, and nothing new
    with pytest.raises(Fenced):
        f.permit()


def test_a_record_that_went_back_is_taken_when_read_after_the_higher_one(fence):
    """An epoch lower than one seen, answered to a read sent after the read that saw the
    higher one: the control etcd was wiped or restored; an older answer arriving late is not."""
    f, clock = fence
    f.observe(record("a", 7), sent=clock.now)
    f.observe(record("a", 1, writable=False), sent=clock.now - 0.05)  # late answer
    assert f.epoch == 7 and f.permitted()
    clock.now += 0.1
    f.observe(record("a", 1, writable=False), sent=clock.now)
    assert f.epoch == 1 and not f.permitted()  # recreated records wait out the fence wait


def test_lapsed_counts_only_a_permission_the_region_should_hold(fence):
    f, clock = fence
    f.observe(record("a", 3), sent=clock.now)
    assert f.lapsed_for() == 0.0
    clock.now += 0.73  # reads failing: the permission ended at 100 + 0.75 - MIN_WRITE_WINDOW
    assert f.lapsed_for() == pytest.approx(0.0, abs=1e-9)
    clock.now += 1.0
    assert f.lapsed_for() == pytest.approx(1.0)
    f.observe(record("b", 4), sent=clock.now)  # another region is active: no fault of ours
    assert f.lapsed_for() == 0.0


def test_the_fence_read_budget_follows_the_grant(fence):
    f, clock = fence
    assert f._read_budget() == pytest.approx(0.75)  # defaults before the first read
    f.observe(ActiveRegion("a", 3, "", "t", "t", grant_ms=4000, margin_ms=500), sent=clock.now)
    assert f._read_budget() == pytest.approx(3.5)  # a far control etcd has time to answer


def test_a_lower_epoch_from_a_read_overlapping_the_higher_one_is_ignored(fence):
    """Sent after the higher epoch's read was sent but before its answer came: the two reads
    overlapped, and the lower answer may simply be older."""
    f, clock = fence
    f.observe(record("a", 6), sent=clock.now)
    sent_earlier = clock.now - 0.01  # a read sent before the epoch-7 answer arrived...
    clock.now += 0.05
    f.observe(record("a", 7), sent=clock.now - 0.04)
    clock.now += 0.05
    f.observe(record("a", 6), sent=sent_earlier + 0.05)  # ...answered after it
    assert f.epoch == 7
