"""Pure pieces of the ordered stream: source watch events grouped into whole source revisions,
filtered to what travels, and packed into target transactions.

Layer: replication. No I/O.

A source revision is one etcd transaction in the source; its events arrive together (etcd never
splits a revision across watch responses unless the watcher asks for fragments, which we do not).
Each becomes a `Revision`: the puts and deletes of its replicated keys, in order. A revision
whose keys are all region-local carries no ops, but still counts as applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from haplane.store import HEARTBEAT_KEY, Heartbeat, Op, WatchEvent, replicated


@dataclass
class Revision:
    revision: int
    ops: list[Op] = field(default_factory=list)
    size: int = 0  # bytes of keys and values
    heartbeat: float | None = None  # the heartbeat time this revision carries, if any


def revisions(events: Iterable[WatchEvent]) -> list[Revision]:
    """Group events (in revision order, as a watch delivers them) by source revision."""
    out: list[Revision] = []
    for ev in events:
        rev = ev.kv.mod_revision
        if not out or out[-1].revision != rev:
            if out and rev < out[-1].revision:
                raise ValueError(f"events out of order: {rev} after {out[-1].revision}")
            out.append(Revision(rev))
        group = out[-1]
        key = ev.kv.key
        if not replicated(key):
            continue
        if ev.type == "PUT":
            group.ops.append(Op("put", key, ev.kv.value))
            group.size += len(key) + len(ev.kv.value)
            if key == HEARTBEAT_KEY:
                hb = Heartbeat.parse(ev.kv.value)
                if hb is not None:
                    group.heartbeat = hb.time
        else:
            group.ops.append(Op("delete", key))
            group.size += len(key)
    return out


def batches(
    groups: Sequence[Revision], *, max_ops: int, max_bytes: int
) -> Iterator[list[Revision]]:
    """Consecutive whole revisions packed into transactions of at most `max_ops` operations and
    `max_bytes` bytes; a revision is never split. One revision larger than the limits alone
    makes a batch of its own (the caller decides whether etcd can take it). Revisions without
    ops ride along with their neighbours.

    A key appears at most once per batch: etcd refuses a transaction that names a key twice,
    and folding two changes into one would make the target's per-key `version` differ from the
    source's. A revision touching a key already in the batch starts the next one."""
    batch: list[Revision] = []
    keys: set[bytes] = set()
    ops = size = 0
    for g in groups:
        mine = {op.key for op in g.ops}
        if batch and (
            ops + len(g.ops) > max_ops or size + g.size > max_bytes or not keys.isdisjoint(mine)
        ):
            yield batch
            batch, keys, ops, size = [], set(), 0, 0
        batch.append(g)
        keys |= mine
        ops += len(g.ops)
        size += g.size
    if batch:
        yield batch
