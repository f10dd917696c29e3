"""Loss a drill may tolerate: writes above the cut of an unplanned failover (the RPO).

Layer: dr. Pure: no I/O, no clocks.

An unplanned failover promotes a standby at the last revision of the old region its replicator
had applied: the cut (`haplane.store.Cut`). A write the old region acknowledged with a higher
revision never reached the new region; that loss is the price of asynchronous replication, the
recovery point, and is reported as such. Any other loss fails the drill: a write at or below the
cut, a write the cut says nothing about (no journal entry), or any loss in a planned switchover.
Synchronous replication tolerates nothing: a cut whose new region was the synchronous standby
(`Cut.synchronous`) has every acknowledged write at or below it, so any loss fails the drill.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .report import Operation, ServerWrite


def above_cut(op: Operation, writes: Iterable[ServerWrite], cut: Mapping[str, Any] | None) -> bool:
    """Whether `op`'s loss is explained by the cut: an unplanned cut of the region that
    acknowledged it, in an earlier epoch, and the journal of that region holds the write's key
    at a revision above the cut (for an update: its latest journaled revision there)."""
    if cut is None or cut.get("planned") or cut.get("synchronous") or op.region is None:
        return False
    source, epoch, revision = cut.get("source"), cut.get("epoch"), cut.get("revision")
    if op.region != source or not isinstance(epoch, int) or not isinstance(revision, int):
        return False
    if op.epoch is None or op.epoch >= epoch:
        return False
    revisions = [w.revision for w in writes if w.region == source and w.key == op.key]
    return bool(revisions) and max(revisions) > revision


def split_by_cut(
    lost: Iterable[Operation], writes: Iterable[ServerWrite], cut: Mapping[str, Any] | None
) -> tuple[tuple[Operation, ...], tuple[Operation, ...]]:
    """(lost that fails the drill, lost above the cut)."""
    w = list(writes)
    failing: list[Operation] = []
    tolerated: list[Operation] = []
    for op in lost:
        (tolerated if above_cut(op, w, cut) else failing).append(op)
    return tuple(failing), tuple(tolerated)
