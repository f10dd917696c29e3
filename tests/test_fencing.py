"""The write-fencing rule of an API replica (haplane.api.fencing), on a fake clock: permission
only while its region holds the current, writable epoch and less than grant - margin has passed
since the send time of the last successful read; a newer epoch naming another region fences at
once; an older answer arriving late changes nothing."""

from __future__ import annotations

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
