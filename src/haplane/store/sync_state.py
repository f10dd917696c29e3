"""Who is synchronous: the record of synchronous replication in the global control etcd.

Layer: store. One key, `<prefix>sync` (beside `active`), as Patroni keeps `/sync`: which standby
region is synchronous for the active region's epoch. Written by the API replicas of the active
region (degrading to `none`, and making the standby synchronous again) and whoever commits a
new epoch (`GlobalState.switch`, which writes the new epoch's record in the
same transaction and compares the one its decision read). Knows nothing of HTTP or processes.

`{"epoch", "region", "standby", "pending", "since", "by", "reason"}`:
- `standby`: the synchronous standby. Every write the active region acknowledged in `epoch`
  was applied by it first, or was acknowledged only after this record said `none` (`null`).
- `pending`: a standby being made synchronous (`standby` is then null). From the moment a
  replica sees it, the replica waits for that standby's confirmation too; a replica that
  cannot get it writes `none` without `pending` (compare-and-swap), which cancels the change.

The rules that make "only the synchronous standby may be promoted" lose nothing (each step is
one compare-and-swap on this key's mod revision, so they are ordered by the control etcd):
1. A replica acknowledges a write at revision R that no recorded standby confirmed only after
   it (a) read, after R committed, a record of its epoch saying `none` without `pending`, or
   (b) wrote such a record itself. A failed read or write: the write is not acknowledged
   (504, outcome unknown).
2. A replica of the active region (a keeper) makes standby X synchronous in three steps:
   write `pending: X`; read its own region's head revision H (after that write); once X
   applied H, write `standby: X` comparing the first write's mod revision. A write
   acknowledged under `none` was committed before a read that saw no `pending` (rule 1a),
   hence before step 1, hence at or below H: X has it.
3. A promotion compares the mod revision of the record it decided on, and writes the new
   epoch's record: a replica of the old epoch that degrades afterwards fails its
   compare-and-swap and answers 504.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from .etcd_client import Compare, EtcdClient, KeyValue, Op


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class SyncRecord:
    epoch: int
    region: str  # the active region of `epoch`
    standby: str | None = None  # the synchronous standby; None: `sync: none`
    pending: str | None = None  # a standby being made synchronous (standby is None)
    since: str = ""
    by: str = ""
    reason: str = ""
    revision: int = 0  # etcd mod revision of the key as read (0: absent / not read)

    def names(self, epoch: int, region: str) -> bool:
        """Is this the record of `region` in `epoch`?"""
        return self.epoch == epoch and self.region == region

    @property
    def unknown(self) -> bool:
        """A malformed record: who was synchronous cannot be told."""
        return self.epoch == 0 and not self.region

    @property
    def degraded(self) -> bool:
        """`sync: none` with no standby being made synchronous: acknowledgements need none."""
        return self.standby is None and self.pending is None

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), sort_keys=True).encode()

    def as_dict(self) -> dict[str, object]:
        return {
            "epoch": self.epoch,
            "region": self.region,
            "standby": self.standby,
            "pending": self.pending,
            "since": self.since,
            "by": self.by,
            "reason": self.reason,
        }

    @classmethod
    def from_kv(cls, kv: KeyValue) -> SyncRecord:
        try:
            d = json.loads(kv.value)
            standby, pending = d.get("standby"), d.get("pending")
            if not all(v is None or isinstance(v, str) for v in (standby, pending)):
                raise TypeError(f"standby {standby!r} / pending {pending!r} are not region names")
            return cls(
                epoch=int(d["epoch"]),
                region=str(d["region"]),
                standby=standby,
                pending=pending,
                since=str(d.get("since", "")),
                by=str(d.get("by", "")),
                reason=str(d.get("reason", "")),
                revision=kv.mod_revision,
            )
        except (ValueError, KeyError, TypeError) as exc:
            # names no region or epoch (`unknown`): acknowledgements follow `none` (a replica
            # degrading replaces it), failover promotes only the synchronous partner, and its
            # revision still guards compare-and-swaps
            return cls(0, "", reason=f"malformed sync record: {exc}", revision=kv.mod_revision)

    @classmethod
    def none(cls, epoch: int, region: str, *, by: str, reason: str) -> SyncRecord:
        return cls(epoch, region, None, None, _now(), by, reason)

    @classmethod
    def catching_up(
        cls, epoch: int, region: str, pending: str, *, by: str, reason: str
    ) -> SyncRecord:
        return cls(epoch, region, None, pending, _now(), by, reason)

    @classmethod
    def synchronous(
        cls, epoch: int, region: str, standby: str, *, by: str, reason: str
    ) -> SyncRecord:
        return cls(epoch, region, standby, None, _now(), by, reason)


def describe(record: SyncRecord | None) -> str:
    """One line for status output and logs."""
    if record is None:
        return "no sync record"
    if record.unknown:
        return record.reason
    if record.standby is not None:
        return f"{record.standby} is synchronous for {record.region} (epoch {record.epoch})"
    if record.pending is not None:
        return f"none; {record.pending} is being made synchronous (epoch {record.epoch})"
    return f"none: {record.region} acknowledges without a standby (epoch {record.epoch})"


class SyncState:
    """Reads and compare-and-swaps of the sync record."""

    def __init__(self, client: EtcdClient, prefix: bytes):
        self.client = client
        self.key = prefix + b"sync"

    async def read(self, *, timeout: float | None = None) -> SyncRecord | None:
        """A linearizable read; None when absent."""
        kv = await self.client.get(self.key, timeout=timeout)
        return SyncRecord.from_kv(kv) if kv is not None else None

    async def swap(
        self, expected: SyncRecord | None, new: SyncRecord, *, timeout: float | None = None
    ) -> tuple[bool, SyncRecord | None]:
        """Write `new` only if the key is still as `expected` was read (None: absent);
        (written, the record now: `new` with its revision, or what another writer left)."""
        r = await self.client.txn(
            [Compare(self.key, "mod", "=", expected.revision if expected is not None else 0)],
            [Op("put", self.key, new.to_json())],
            [Op("get", self.key)],
            timeout=timeout,
        )
        if r.succeeded:
            return True, replace(new, revision=r.revision)
        kvs = r.results[0]
        return False, (SyncRecord.from_kv(kvs[0]) if kvs else None)
