"""`with_ticks`: a silent source yields ticks, a source's error reaches the reader, and closing
or cancelling the reader stops the pump (no task left behind, cancellation not swallowed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from haplane.api.storage import StorageEvent, with_ticks


async def _source(events: list[StorageEvent], then: BaseException | None, gate: asyncio.Event):
    for ev in events:
        yield ev
    await gate.wait()
    if then is not None:
        raise then


def _ev(rev: int) -> StorageEvent:
    return StorageEvent("ADDED", {"metadata": {"name": str(rev)}}, rev, key=f"/k/{rev}")


async def test_a_silent_source_ticks_at_the_last_revision():
    gate = asyncio.Event()
    stream: AsyncIterator[StorageEvent] = with_ticks(_source([_ev(5)], None, gate), 0.05)
    got = [await anext(stream) for _ in range(3)]
    assert [(e.type, e.revision) for e in got] == [("ADDED", 5), ("BOOKMARK", 5), ("BOOKMARK", 5)]
    await stream.aclose()  # type: ignore[attr-defined]


async def test_an_error_of_the_source_reaches_the_reader():
    gate = asyncio.Event()
    gate.set()
    stream = with_ticks(_source([_ev(1)], RuntimeError("etcd gone"), gate), 5.0)
    assert (await anext(stream)).revision == 1
    with pytest.raises(RuntimeError, match="etcd gone"):
        await anext(stream)


async def test_cancelling_the_reader_stops_the_pump_and_stays_cancelled():
    gate = asyncio.Event()
    before = len(asyncio.all_tasks())

    async def reader() -> None:
        async for _ in with_ticks(_source([], None, gate), 10.0):
            pass

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) == before + 2  # the reader and its pump
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before
