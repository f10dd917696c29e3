"""A region that comes back after losing the active role: keep what it wrote after the cut,
then let it become a standby and be re-seeded.

Layer: replication. Reads this region's etcd history, the global control etcd (the record and
the cuts) and the active region's etcd; writes only this region's fence key (and clears its
applied record) and files under the divergence directory.

When this region's fence key says `frozen:<region>@E` while the global record names another
region, writable, in a later epoch, and that has lasted `grace` seconds (a planned switchover
passes through that state for a few round trips before it makes the old region follow), the
region was cut off from a failover: whatever it committed after the cut (the last revision the
new region had applied, `GlobalState.cuts`) is in no other region. Before anything overwrites it:

1. the keys it changed after the cut are found in its own history (a watch from the cut's
   revision + 1 to now); if that history was compacted, no cut was recorded, or the cut was
   taken from an incomplete copy (a promotion during a resync), its keyspace is compared with
   the active region's at one revision and every difference kept instead;
2. each such key's value here, as stored bytes (Secrets stay in their stored form, never
   decoded), and a summary are saved under `<divergence dir>/<epoch>/` (`epoch`: the first
   epoch after this region's), written to a temporary directory and renamed, so a saved
   divergence is complete or absent;
3. a record goes to the global control etcd (`divergence/<epoch>`: `haplane status` shows it);
4. only then the fence key moves `frozen:<region>@E` -> `standby:<active>@<epoch>` (one
   compare-and-swap on that exact value) and the applied record is removed in the same
   transaction: the replicator re-seeds the region with a full resync, then streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haplane.store import (
    APPLIED_KEY,
    CUT_KEY,
    HEARTBEAT_KEY,
    Compare,
    EtcdClient,
    EtcdCompacted,
    EtcdError,
    FenceValue,
    GlobalState,
    Op,
    replicated,
)
from haplane.store.fence_key import FENCE_KEY
from haplane.store.replication_keys import ALL_KEYS

# replication's own replicated keys: they always differ after a cut, and hold no client data
_NOT_DIVERGENCE = (HEARTBEAT_KEY, CUT_KEY)


@dataclass(frozen=True)
class Diverged:
    key: bytes
    change: str  # "put" | "delete" (after the cut, here) | "differs" | "only-here" | "missing-here"
    value: bytes | None  # this region's value (None: deleted or absent here)
    revision: int  # this region's revision of the change (0 when compared by keyspace)


def divergent(key: bytes) -> bool:
    return replicated(key) and key not in _NOT_DIVERGENCE


async def changes_after(client: EtcdClient, cut: int, head: int) -> list[Diverged]:
    """The last change of every key this region changed in `(cut, head]`, from its history;
    `EtcdCompacted` when that history is gone."""
    if head <= cut:
        return []
    last: dict[bytes, Diverged] = {}
    async for wb in client.watch(
        ALL_KEYS[0], range_end=ALL_KEYS[1], start_revision=cut + 1, connect_timeout=5.0
    ):
        for ev in wb.events:
            if ev.kv.mod_revision <= head and divergent(ev.kv.key):
                last[ev.kv.key] = Diverged(
                    ev.kv.key,
                    "put" if ev.type == "PUT" else "delete",
                    ev.kv.value if ev.type == "PUT" else None,
                    ev.kv.mod_revision,
                )
        if wb.events and wb.events[-1].kv.mod_revision >= head:
            break  # `head` is some key's change: its event ends the history we want
    return sorted(last.values(), key=lambda d: d.revision)


async def keyspace_difference(mine: EtcdClient, active: EtcdClient) -> list[Diverged]:
    """Every replicated key whose value differs between this region and the active one (each
    read whole at one revision)."""
    here = await _keyspace(mine)
    there = await _keyspace(active)
    out = []
    for key in sorted(here.keys() | there.keys()):
        a, b = here.get(key), there.get(key)
        if a == b:
            continue
        change = (
            "differs"
            if a is not None and b is not None
            else ("only-here" if a is not None else "missing-here")
        )
        out.append(Diverged(key, change, a, 0))
    return out


async def _keyspace(client: EtcdClient) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    start, revision = ALL_KEYS[0], 0
    while True:
        kvs, at, _ = await client.range_page(
            start, ALL_KEYS[1], revision=revision, limit=1000, timeout=10.0
        )
        revision = revision or at
        out.update((kv.key, kv.value) for kv in kvs if divergent(kv.key))
        if len(kvs) < 1000:
            return out
        start = kvs[-1].key + b"\0"


def save(
    root: Path,
    epoch: int,
    region: str,
    active: str,
    cut: int | None,
    method: str,
    items: list[Diverged],
) -> Path:
    """Write the divergence of `region` at `epoch` under `root/<epoch>/` atomically (a temporary
    directory renamed into place); returns the directory. An existing one is kept (a rejoin
    that was interrupted after saving and runs again finds the same changes)."""
    final = root / str(epoch)
    if final.exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{epoch}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "objects").mkdir(parents=True)
    entries: list[dict[str, Any]] = []
    for i, d in enumerate(items):
        entry: dict[str, Any] = {
            "key": d.key.decode(errors="replace"),
            "change": d.change,
            "revision": d.revision,
            "file": None,
        }
        if d.value is not None:
            name = f"objects/{i:06d}.stored"
            (tmp / name).write_bytes(d.value)  # stored bytes: never decoded to plaintext
            entry["file"] = name
            entry["bytes"] = len(d.value)
        entries.append(entry)
    summary = {
        "name": str(epoch),
        "epoch": epoch,
        "region": region,
        "active": active,
        "cut": cut,
        "method": method,
        "count": len(items),
        "time": time.time(),
        "entries": entries,
    }
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    for path in (tmp / "summary.json", tmp / "objects"):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    os.replace(tmp, final)
    return final


class Rejoin:
    """The replicator's hook for a frozen region (`Replicator(on_frozen=Rejoin(...))`)."""

    def __init__(self, directory: Path | None, *, grace: float = 3.0):
        self.directory = directory
        # a planned switchover leaves the old region frozen under the new record for a few
        # round trips before it makes it follow: act only on a state that lasts this long
        self.grace = grace
        self._since: tuple[str, int, float] | None = None  # (fence value, epoch, first seen)
        self.last: dict[str, Any] | None = None  # the last divergence handled (for /status)

    async def __call__(self, rep: Any, v: FenceValue) -> None:
        control: GlobalState | None = rep.control
        if control is None:
            return
        try:
            record = await control.read(timeout=1.0)
        except EtcdError:
            return
        if (
            record is None
            or record.region == rep.region
            or not record.writable
            or record.epoch <= v.epoch
        ):
            return  # still the active region's own freeze (a switchover in flight), or no news
        source: EtcdClient | None = rep.sources.get(record.region)
        if source is None:
            return  # not paired with the active region: nothing can re-seed this one
        seen = (str(v), record.epoch)
        if self._since is None or self._since[:2] != seen:
            self._since = (*seen, time.monotonic())
        if time.monotonic() - self._since[2] < self.grace:
            return
        rep._set_state("Rejoining", f"saving what {rep.region} wrote after the cut")
        cuts = await control.cuts(timeout=2.0)
        cut = next(
            (c for e, c in sorted(cuts.items()) if e > v.epoch and c.source == rep.region), None
        )
        _, head = await rep.target.range(ALL_KEYS[0], ALL_KEYS[1], limit=1, timeout=2.0)
        method = "history"
        try:
            if cut is None or cut.partial:  # no cut, or a copy incomplete below it too
                raise EtcdCompacted("no usable cut", compact_revision=0)
            items = await asyncio.wait_for(changes_after(rep.target, cut.revision, head), 60)
        except EtcdCompacted:
            method = "keyspace"
            items = await keyspace_difference(rep.target, source)
        epoch = cut.epoch if cut is not None else v.epoch + 1
        saved: Path | None = None
        if self.directory is not None and items:
            saved = await asyncio.to_thread(
                save,
                self.directory,
                epoch,
                rep.region,
                record.region,
                cut.revision if cut else None,
                method,
                items,
            )
        note = {
            "name": str(epoch),
            "epoch": epoch,
            "region": rep.region,
            "active": record.region,
            "cut": cut.revision if cut else None,
            "method": method,
            "count": len(items),
            "path": str(saved) if saved else None,
            "time": time.time(),
        }
        await control.record_divergence(note, timeout=2.0)
        rep._event("divergence", note)
        self.last = note
        # frozen -> standby of the active region, and no applied record: a full resync follows
        want = FenceValue.standby(record.region, record.epoch)
        r = await rep.target.txn(
            [Compare(FENCE_KEY, "value", "=", v.encode())],
            [Op("put", FENCE_KEY, want.encode()), Op("delete", APPLIED_KEY)],
            timeout=2.0,
        )
        if r.succeeded:
            rep._event("rejoined", {"fence": str(want), "divergence": note["count"]})
        with contextlib.suppress(Exception):
            rep._set_state("Idle", "rejoined: re-seeding")
