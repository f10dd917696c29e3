"""The global control state: which region is active, under which epoch, and how it got there.

Layer: store. Lives in the global control etcd; used by the gate (to route), the CLI (`haplane
failover --to`, `haplane status`) and, later, the failover controller and the fencing of API
replicas. Knows nothing of HTTP or processes.

Keys (under `prefix`, default `/haplane/global/`):
- `active`: `{"region", "epoch", "since", "by", "reason", "from", "writable", "grantMs",
  "marginMs", "unfenced"}` as JSON;
- `history/<epoch, 12 digits>`: the record as the epoch began, one per epoch, never rewritten;
- `failback`: `{"enabled", "by", "reason", "since"}`, operators' suspension of automatic
  failback (absent: enabled; an operator's switchover writes `enabled: false`);
- `replication/<target region>`: the leading replicator's report of that region's replication
  (`ReplicationReport`), rewritten every 200 ms while it leads;
- `cut/<epoch, 12 digits>`: where epoch `<epoch>` cut the old region's history
  (`Cut`: the last source revision the new region had applied when it was made active);
- `sync`: who is synchronous for the active region's epoch (`haplane.store.sync_state`);
- `controller/blocked`: the leading failover controller's word on a failover it cannot make
  (`FailoverBlock`), rewritten only when the block starts, changes its cause or ends.

Fencing (see `haplane.api.fencing`): the record grants the active region write permission for
`grantMs` after each successful linearizable read of it, minus `marginMs`. A newly promoted
region's record starts with `writable: false`; whoever committed the epoch (the failover
controller or `haplane failover`) sets it true with `unfence` only `grantMs + marginMs` after the
commit, when no replica of the old region can still hold permission.

Every change is one etcd transaction guarded by the mod revision of `active` as it was read, so
two writers that both saw epoch N cannot both write epoch N + 1: the loser gets `StaleEpoch`
with the winner's record. The first record is created only if `active` is absent (epoch 1).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from .errors import EtcdError
from .etcd_client import Compare, EtcdClient, KeyValue, Op, prefix_end
from .sync_state import SyncRecord, SyncState

DEFAULT_PREFIX = b"/haplane/global/"
DEFAULT_GRANT_MS = 1000
DEFAULT_MARGIN_MS = 250


class StaleEpoch(Exception):
    """The active region changed since it was read; `current` is what etcd holds now."""

    def __init__(self, message: str, current: ActiveRegion | None):
        super().__init__(message)
        self.current = current


@dataclass(frozen=True)
class ActiveRegion:
    region: str
    epoch: int
    since: str  # RFC 3339, UTC
    by: str  # who or what made the change: "haplane up", "operator:alice", "controller:gate-1"
    reason: str
    previous: str | None = None  # the region active before
    revision: int = 0  # etcd mod revision of the record (0: not read from etcd)
    writable: bool = True  # false from a switch until the old region's grant has run out
    grant_ms: int = DEFAULT_GRANT_MS  # T: how long a successful read grants write permission
    margin_ms: int = DEFAULT_MARGIN_MS  # taken off T by replicas, added to T before unfencing
    unfenced: str | None = None  # when writes were allowed in this epoch (RFC 3339)
    # the replication reports the decision saw (target region -> report dict), if any
    replication: dict[str, object] | None = None
    # sync mode: whether this region was the synchronous standby of the previous epoch when it
    # was promoted (True: no acknowledged write can be above its cut); None: no sync record
    synchronous: bool | None = None
    # an automatic failover: when the first vantage point saw the old region down, and when a
    # majority agreed it was (RFC 3339, the deciding gate's wall clock); None otherwise
    detected: str | None = None
    agreed: str | None = None

    def age(self) -> float:
        """Seconds since `since` by this machine's wall clock (for pacing, e.g. hysteresis;
        never for safety); infinite when `since` does not parse."""
        try:
            t = datetime.fromisoformat(self.since.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return float("inf")
        return max(0.0, time.time() - t)

    @property
    def fence_wait(self) -> float:
        """Seconds from committing a new epoch until its region may be unfenced."""
        return (self.grant_ms + self.margin_ms) / 1000

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), sort_keys=True).encode()

    @classmethod
    def from_kv(cls, kv: KeyValue) -> ActiveRegion:
        try:
            d = json.loads(kv.value)
            return cls(
                region=str(d["region"]),
                epoch=int(d["epoch"]),
                since=str(d.get("since", "")),
                by=str(d.get("by", "")),
                reason=str(d.get("reason", "")),
                previous=d.get("from"),
                revision=kv.mod_revision,
                writable=bool(d.get("writable", True)),
                grant_ms=int(d.get("grantMs", DEFAULT_GRANT_MS)),
                margin_ms=int(d.get("marginMs", DEFAULT_MARGIN_MS)),
                unfenced=d.get("unfenced"),
                replication=d.get("replication"),
                synchronous=d.get("synchronous"),
                detected=d.get("detected"),
                agreed=d.get("agreed"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise EtcdError(f"malformed global state at {kv.key!r}: {exc}") from exc

    def as_dict(self) -> dict[str, object]:
        return {
            "region": self.region,
            "epoch": self.epoch,
            "since": self.since,
            "by": self.by,
            "reason": self.reason,
            "from": self.previous,
            "writable": self.writable,
            "grantMs": self.grant_ms,
            "marginMs": self.margin_ms,
            "unfenced": self.unfenced,
            **({"replication": self.replication} if self.replication is not None else {}),
            **({"synchronous": self.synchronous} if self.synchronous is not None else {}),
            **({"detected": self.detected} if self.detected is not None else {}),
            **({"agreed": self.agreed} if self.agreed is not None else {}),
        }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class GlobalState:
    def __init__(self, client: EtcdClient, prefix: bytes = DEFAULT_PREFIX):
        self.client = client
        self.active_key = prefix + b"active"
        self.history_prefix = prefix + b"history/"
        self.sync = SyncState(client, prefix)

    def _history_key(self, epoch: int) -> bytes:
        return self.history_prefix + f"{epoch:012d}".encode()

    async def read(self, *, timeout: float | None = None) -> ActiveRegion | None:
        """A linearizable read: None when nothing was ever written."""
        kv = await self.client.get(self.active_key, timeout=timeout)
        return ActiveRegion.from_kv(kv) if kv is not None else None

    async def initialize(
        self,
        region: str,
        *,
        by: str,
        reason: str,
        grant_ms: int = DEFAULT_GRANT_MS,
        margin_ms: int = DEFAULT_MARGIN_MS,
        fresh: bool = False,
        min_epoch: int = 1,
    ) -> tuple[ActiveRegion, bool]:
        """Record `region` as active if no active region is recorded; (record, created). An
        existing record is never changed here (a restart must not undo a failover). The epoch
        is 1, or one past the last in the history if the record was deleted: epochs never go
        back and history entries are never rewritten.

        Writable at once only when `fresh` (the caller knows the whole platform is brand new:
        no replica anywhere can hold a grant) and there is no history. Otherwise an earlier
        grant may still run, held by a replica that read a record since lost (a wiped or
        restored control etcd): the record starts fenced and whoever unfences it waits its
        fence wait first, with the grant and margin at least as large as any configured or
        recorded (`grant_ms`, `margin_ms` are the caller's largest configured values).

        `min_epoch`: the lowest epoch the new record may have, above every epoch the regions'
        fence keys name (`RegionFences.highest_epoch` + 1): a record rebuilt in a control etcd
        that lost its history must not start below them, or no key would ever let a region
        write again (fence keys never move back)."""
        history = await self.history(1)
        epoch = max(history[-1].epoch + 1 if history else 1, min_epoch)
        if history:  # an earlier grant may still run: never wait less than it lasts
            grant_ms = max(grant_ms, history[-1].grant_ms)
            margin_ms = max(margin_ms, history[-1].margin_ms)
        writable = fresh and not history
        now = _now()
        record = ActiveRegion(
            region,
            epoch,
            now,
            by,
            reason,
            writable=writable,
            grant_ms=grant_ms,
            margin_ms=margin_ms,
            unfenced=now if writable else None,
        )
        r = await self.client.txn(
            [
                Compare(self.active_key, "mod", "=", 0),
                Compare(self._history_key(epoch), "create", "=", 0),
            ],
            [
                Op("put", self.active_key, record.to_json()),
                Op("put", self._history_key(epoch), record.to_json()),
            ],
            [Op("get", self.active_key)],
        )
        if r.succeeded:
            return replace(record, revision=r.revision), True
        if not r.results[0]:
            raise StaleEpoch(f"epoch {epoch} was recorded meanwhile; try again", None)
        return ActiveRegion.from_kv(r.results[0][0]), False

    async def switch(
        self,
        to: str,
        *,
        expected_epoch: int,
        by: str,
        reason: str,
        grant_ms: int | None = None,
        margin_ms: int | None = None,
        replication: dict[str, object] | None = None,
        writable: bool = False,
        sync_standby: str | None = None,
        sync_revision: int | None = None,
        sync_reason: str = "",
        sync_mode: bool = False,
        detected: str | None = None,
        agreed: str | None = None,
    ) -> ActiveRegion:
        """Make `to` active under epoch `expected_epoch + 1`, fenced (`writable: false`), only
        if the epoch is still `expected_epoch`; otherwise `StaleEpoch` (nothing written). The
        caller unfences it with `unfence` after `fence_wait` seconds. The grant settings carry
        over from the current record unless given.

        `writable=True` only for a planned switchover whose old region's fence key has been
        frozen (`switchover.freeze_with_cut_marker`): no write can commit there any more, so
        no grant needs to run out first.

        The sync record (`haplane.store.sync_state`), when one exists, `sync_standby` is
        given or `sync_mode` says the old region replicates synchronously (then also where
        none exists yet), is replaced in the same transaction by the new epoch's: `sync_standby`
        synchronous (a planned switchover's old region, which has every write of the new
        epoch: none yet), or `none`. The transaction compares the record's mod revision with
        `sync_revision` (the record the caller decided on; `StaleEpoch` when it changed) or,
        without one, with the record as read here: a replica of the old epoch degrading to
        `none` afterwards fails its compare-and-swap, and never acknowledges."""
        sync_now = await self.sync.read()
        current = await self.read()
        if current is None:
            raise StaleEpoch("no active region is recorded yet (is the topology up?)", None)
        if current.epoch != expected_epoch:
            raise StaleEpoch(
                f"the epoch is {current.epoch}, not {expected_epoch}: "
                f"{current.region} became active at {current.since} ({current.reason})",
                current,
            )
        record = ActiveRegion(
            to,
            expected_epoch + 1,
            _now(),
            by,
            reason,
            previous=current.region,
            # a grant never shrinks across a switch: the fence wait of the new epoch must
            # cover the longest permission the old epoch's replicas can hold
            grant_ms=max(current.grant_ms, grant_ms or 0),
            margin_ms=max(current.margin_ms, margin_ms or 0),
            replication=replication,
            writable=writable,
            detected=detected,
            agreed=agreed,
        )
        if writable:
            record = replace(record, unfenced=record.since)
        if sync_now is not None and sync_now.names(current.epoch, current.region):
            record = replace(record, synchronous=sync_now.standby == to)
        compares = [
            Compare(self.active_key, "mod", "=", current.revision),
            Compare(self._history_key(record.epoch), "create", "=", 0),
        ]
        ops = [
            Op("put", self.active_key, record.to_json()),
            Op("put", self._history_key(record.epoch), record.to_json()),
        ]
        if (
            sync_now is not None
            or sync_standby is not None
            or sync_revision is not None
            or (sync_mode)
        ):
            expected = (
                sync_revision
                if sync_revision is not None
                else (sync_now.revision if sync_now is not None else 0)
            )
            if sync_standby is not None:
                new_sync = SyncRecord.synchronous(
                    record.epoch, to, sync_standby, by=by, reason=sync_reason or reason
                )
            else:
                new_sync = SyncRecord.none(
                    record.epoch,
                    to,
                    by=by,
                    reason=sync_reason or "a new epoch: no standby is synchronous yet",
                )
            compares.append(Compare(self.sync.key, "mod", "=", expected))
            ops.append(Op("put", self.sync.key, new_sync.to_json()))
        r = await self.client.txn(
            compares, ops, [Op("get", self.active_key), Op("get", self.sync.key)]
        )
        if not r.succeeded:
            now = ActiveRegion.from_kv(r.results[0][0]) if r.results[0] else None
            if now is not None and now.revision == current.revision:
                raise StaleEpoch(
                    "the sync record changed since the decision read it: decide again", now
                )
            raise StaleEpoch(
                f"another change won: the epoch is now {now.epoch if now else '?'}", now
            )
        return replace(record, revision=r.revision)

    async def unfence(self, epoch: int) -> ActiveRegion:
        """Allow writes in `epoch`: only if it is still the current epoch (`StaleEpoch`
        otherwise). The caller must have waited `fence_wait` since the epoch was committed.
        Idempotent: an already writable record is returned as it is."""
        current = await self.read()
        if current is None or current.epoch != epoch:
            raise StaleEpoch(
                f"epoch {epoch} is no longer current (now {current.epoch if current else None})",
                current,
            )
        if current.writable:
            return current
        record = replace(current, writable=True, unfenced=_now(), revision=0)
        r = await self.client.txn(
            [Compare(self.active_key, "mod", "=", current.revision)],
            [Op("put", self.active_key, record.to_json())],
            [Op("get", self.active_key)],
        )
        if not r.succeeded:
            now = ActiveRegion.from_kv(r.results[0][0]) if r.results[0] else None
            if now is not None and now.epoch == epoch and now.writable:
                return now
            raise StaleEpoch(f"the record changed while unfencing epoch {epoch}", now)
        return replace(record, revision=r.revision)

    async def history(self, limit: int = 20) -> list[ActiveRegion]:
        """The most recent `limit` changes, oldest first."""
        kvs, _ = await self.client.range(self.history_prefix, prefix_end(self.history_prefix))
        return [ActiveRegion.from_kv(kv) for kv in kvs[-limit:]] if limit else []

    async def watch(self) -> AsyncIterator[ActiveRegion | None]:
        """The current record (linearizable), then every change, for as long as the caller
        iterates; resumes across etcd member failures (the client's watch does)."""
        kvs, revision = await self.client.range(self.active_key)
        yield ActiveRegion.from_kv(kvs[0]) if kvs else None
        async for batch in self.client.watch(self.active_key, start_revision=revision + 1):
            for ev in batch.events:
                yield ActiveRegion.from_kv(ev.kv) if ev.type == "PUT" else None

    # ---- replication: reports and cuts -------------------------------------------------

    @property
    def _base(self) -> bytes:
        return self.active_key.removesuffix(b"active")

    def replication_key(self, target: str) -> bytes:
        return self._base + b"replication/" + target.encode()

    async def report_replication(
        self, report: ReplicationReport, *, timeout: float | None = None
    ) -> None:
        key = self.replication_key(report.target)
        await self.client.put(key, report.to_json(), timeout=timeout)

    async def replication_reports(
        self, *, timeout: float | None = None
    ) -> dict[str, ReplicationReport]:
        """Every region's last replication report (by target region); malformed ones skipped."""
        prefix = self._base + b"replication/"
        kvs, _ = await self.client.range(prefix, prefix_end(prefix), timeout=timeout)
        out: dict[str, ReplicationReport] = {}
        for kv in kvs:
            report = ReplicationReport.parse(kv.value)
            if report is not None:
                out[report.target] = report
        return out

    def _cut_key(self, epoch: int) -> bytes:
        return self._base + b"cut/" + f"{epoch:012d}".encode()

    async def record_cut(self, cut: Cut, *, timeout: float | None = None) -> None:
        """Record where `cut.epoch` began in the old region's history (first writer wins: a
        cut is never rewritten)."""
        key = self._cut_key(cut.epoch)
        await self.client.txn(
            [Compare(key, "create", "=", 0)], [Op("put", key, cut.to_json())], timeout=timeout
        )

    async def cuts(self, *, timeout: float | None = None) -> dict[int, Cut]:
        prefix = self._base + b"cut/"
        kvs, _ = await self.client.range(prefix, prefix_end(prefix), timeout=timeout)
        out: dict[int, Cut] = {}
        for kv in kvs:
            cut = Cut.parse(kv.value)
            if cut is not None:
                out[cut.epoch] = cut
        return out

    def _divergence_key(self, epoch: int) -> bytes:
        return self._base + b"divergence/" + f"{epoch:012d}".encode()

    async def record_divergence(
        self, note: dict[str, object], *, timeout: float | None = None
    ) -> None:
        """What a returning region had written after the cut of epoch `note["epoch"]` and where
        it was saved (`haplane.replication.rejoin`)."""
        epoch = note["epoch"]
        assert isinstance(epoch, int)
        await self.client.put(
            self._divergence_key(epoch), json.dumps(note, sort_keys=True).encode(), timeout=timeout
        )

    async def divergences(self, *, timeout: float | None = None) -> list[dict[str, object]]:
        prefix = self._base + b"divergence/"
        kvs, _ = await self.client.range(prefix, prefix_end(prefix), timeout=timeout)
        out = []
        for kv in kvs:
            with contextlib.suppress(ValueError):
                out.append(json.loads(kv.value))
        return out

    # ---- garbage collection paused in a region promoted from a partial copy ----------------

    def _gc_key(self, region: str) -> bytes:
        return self._base + b"gc/" + region.encode()

    async def pause_gc(
        self, region: str, *, epoch: int, reason: str, timeout: float | None = None
    ) -> None:
        """Stop `region`'s garbage collector: it was promoted while its copy was incomplete
        (a resync under way), so owners not yet copied must not get their dependents deleted.
        Only an operator resumes it (`resume_gc`)."""
        note = {"paused": True, "epoch": epoch, "reason": reason, "since": _now()}
        await self.client.put(
            self._gc_key(region), json.dumps(note, sort_keys=True).encode(), timeout=timeout
        )

    async def resume_gc(self, region: str, *, timeout: float | None = None) -> None:
        await self.client.delete(self._gc_key(region), timeout=timeout)

    async def gc_paused(
        self, region: str, *, timeout: float | None = None
    ) -> dict[str, object] | None:
        """Why `region`'s garbage collector is paused; None: it runs."""
        kv = await self.client.get(self._gc_key(region), timeout=timeout)
        if kv is None:
            return None
        try:
            note = json.loads(kv.value)
        except ValueError:
            return {"paused": True, "reason": "unreadable pause record"}
        return note if isinstance(note, dict) else {"paused": True, "reason": str(note)}

    # ---- automatic failback: an operator's setting ---------------------------------------

    @property
    def failback_key(self) -> bytes:
        """`failback` under the prefix (beside `active`): see `FailbackSetting`."""
        return self.active_key.removesuffix(b"active") + b"failback"

    async def failback_setting(self, *, timeout: float | None = None) -> FailbackSetting:
        """A linearizable read of the operators' failback setting; absent: enabled (automatic
        failback then follows the topology's `failback`)."""
        kv = await self.client.get(self.failback_key, timeout=timeout)
        return FailbackSetting.from_kv(kv) if kv is not None else FailbackSetting()

    async def set_failback(
        self, enabled: bool, *, by: str, reason: str, timeout: float | None = None
    ) -> FailbackSetting:
        """Suspend (`enabled=False`) or re-enable automatic failback; the last writer wins
        (an operator's word, not a transition guarded by what was read)."""
        setting = FailbackSetting(enabled, by, reason, _now())
        revision = await self.client.put(self.failback_key, setting.to_json(), timeout=timeout)
        return replace(setting, revision=revision)

    # ---- a failover the controller cannot make: its leader's word -------------------------

    @property
    def failover_block_key(self) -> bytes:
        return self._base + b"controller/blocked"

    async def failover_block(self, *, timeout: float | None = None) -> FailoverBlock | None:
        """The failover controller's last published block (None: never published, or
        unreadable: a record, never a safety input)."""
        kv = await self.client.get(self.failover_block_key, timeout=timeout)
        return FailoverBlock.parse(kv.value) if kv is not None else None

    async def publish_failover_block(
        self, block: FailoverBlock, *, leader: HeldKey | None = None, timeout: float | None = None
    ) -> bool:
        """Write `block` (one compare-and-set): only while `leader` is held as its holder
        created it (the controller's leader key: a deposed leader's word is not written, nor
        one of a holder that lost the key and took it again). False when it was not."""
        guard = leader.compares() if leader is not None else []
        r = await self.client.txn(
            guard, [Op("put", self.failover_block_key, block.to_json())], timeout=timeout
        )
        return r.succeeded


@dataclass(frozen=True)
class HeldKey:
    """A key as its holder created it: `value` written at `created` (its create revision,
    taken from the transaction that created it). A key deleted and created again, even by
    the same holder, or written over, is no longer it."""

    key: bytes
    value: bytes
    created: int

    def compares(self) -> list[Compare]:
        return [
            Compare(self.key, "create", "=", self.created),
            Compare(self.key, "value", "=", self.value),
        ]


@dataclass(frozen=True)
class FailoverBlock:
    """Why the failover controller cannot fail `region` (active in `epoch`, and down, or
    seen down by too few to agree) over: `blocked`, a code of `haplane.gate.failover`'s
    `BLOCKED_REASONS`, and `reason`, the decision's words when the block started or changed
    cause (`since`). `started`: when the block began, kept across its changes of cause in the
    same epoch and region. `blocked` None: no block since `since` (the decision's words then
    in `reason`; `started`: when the block it ended began, "" if none of this epoch).
    JSON `{"region", "epoch", "blocked", "reason", "since", "started", "by"}` under
    `<prefix>controller/blocked`."""

    region: str
    epoch: int
    blocked: str | None
    reason: str
    since: str  # RFC 3339, UTC: when this state (the block's cause, or its end) began
    by: str  # "controller:<gate>"
    started: str = ""  # RFC 3339, UTC: when the block began ("": unknown, an older writer)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()  # its fields are its keys

    @classmethod
    def parse(cls, raw: bytes) -> FailoverBlock | None:
        try:
            d = _json_object(raw)
            blocked = d.get("blocked")
            return cls(
                region=str(d["region"]),
                epoch=int(d["epoch"]),
                blocked=str(blocked) if blocked is not None else None,
                reason=str(d.get("reason", "")),
                since=str(d.get("since", "")),
                by=str(d.get("by", "")),
                started=str(d.get("started") or ""),
            )
        except (ValueError, KeyError, TypeError, OverflowError):
            return None


def _json_object(raw: bytes) -> dict[str, Any]:
    """`raw` as a JSON object; ValueError when it is not JSON, TypeError when it is JSON but
    not an object (null, a list, a string, a number)."""
    d = json.loads(raw)
    if not isinstance(d, dict):
        raise TypeError(f"a JSON {type(d).__name__}, not an object")
    return d


@dataclass(frozen=True)
class FailbackSetting:
    """Whether operators let the failover controller fail back automatically, stored as JSON
    `{"enabled", "by", "reason", "since"}` under `<prefix>failback`. An operator's switchover
    suspends it (the operator chose where writes go; the controller must not move them back),
    `haplane failback on` re-enables it. It never enables failback the topology leaves off."""

    enabled: bool = True
    by: str | None = None  # None: never set (the default)
    reason: str | None = None
    since: str | None = None  # RFC 3339, UTC
    revision: int = 0  # etcd mod revision (0: not stored)

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), sort_keys=True).encode()

    def as_dict(self) -> dict[str, object]:
        return {"enabled": self.enabled, "by": self.by, "reason": self.reason, "since": self.since}

    @classmethod
    def from_kv(cls, kv: KeyValue) -> FailbackSetting:
        try:
            d = json.loads(kv.value)
            enabled = d["enabled"]
            if not isinstance(enabled, bool):
                raise TypeError(f"enabled is {enabled!r}, not true or false")
            return cls(
                enabled,
                d.get("by"),
                d.get("reason"),
                d.get("since"),
                revision=kv.mod_revision,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise EtcdError(f"malformed failback setting at {kv.key!r}: {exc}") from exc


@dataclass(frozen=True)
class ReplicationReport:
    """A region's replication as its leading replicator last saw it (JSON in the global
    control etcd). `state`: `Streaming` (following the source), `Resyncing` (a full copy is
    under way: such a region is never chosen by automatic failover), `Disconnected` (the
    source does not answer), `Idle` (the region is not a standby: active, frozen or without a
    fence key). Clocks: `time`, `sourceAnsweredAt` and lags in seconds are the replicator's
    wall clock (CLOCK_REALTIME) against the heartbeat writer's."""

    target: str
    source: str | None
    state: str
    epoch: int
    applied_revision: int
    source_revision: int
    lag_seconds: float | None
    lag_revisions: int | None
    # the lag measured when the source last answered, and when that was
    lag_answered: float | None
    source_answered_at: float | None
    leader: str
    time: float
    last_resync: dict[str, object] | None = None
    # the region's copy is incomplete (its applied record says `resyncing`), whatever its
    # connection to the source does now: never promoted automatically
    partial: bool = False

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), sort_keys=True).encode()

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "source": self.source,
            "state": self.state,
            "epoch": self.epoch,
            "appliedRevision": self.applied_revision,
            "sourceRevision": self.source_revision,
            "lagSeconds": self.lag_seconds,
            "lagRevisions": self.lag_revisions,
            "lagSecondsAnswered": self.lag_answered,
            "sourceAnsweredAt": self.source_answered_at,
            "leader": self.leader,
            "time": self.time,
            "lastResync": self.last_resync,
            "partial": self.partial,
        }

    @classmethod
    def parse(cls, raw: bytes) -> ReplicationReport | None:
        try:
            d = _json_object(raw)
            return cls(
                target=str(d["target"]),
                source=d.get("source"),
                state=str(d["state"]),
                epoch=int(d.get("epoch", 0)),
                applied_revision=int(d.get("appliedRevision", 0)),
                source_revision=int(d.get("sourceRevision", 0)),
                lag_seconds=d.get("lagSeconds"),
                lag_revisions=d.get("lagRevisions"),
                lag_answered=d.get("lagSecondsAnswered"),
                source_answered_at=d.get("sourceAnsweredAt"),
                leader=str(d.get("leader", "")),
                time=float(d.get("time", 0.0)),
                last_resync=d.get("lastResync"),
                partial=bool(d.get("partial", False)),
            )
        except (ValueError, KeyError, TypeError, OverflowError):
            return None

    def age(self) -> float:
        return max(0.0, time.time() - self.time)


@dataclass(frozen=True)
class Cut:
    """Where an epoch began: the new region `region` had applied `source`'s history up to
    `revision` (a planned switchover: the cut marker's revision, nothing lost; an unplanned
    one: writes the old region committed above it are not in the new region). `lag_seconds`:
    the replication lag at the cut, the RPO in time."""

    epoch: int
    region: str
    source: str | None
    revision: int
    planned: bool
    lag_seconds: float | None
    time: str = ""
    # the new region was promoted in the middle of a resync: its copy below `revision` is
    # incomplete too (a returning region compares keyspaces instead of trusting the cut)
    partial: bool = False
    # the new region was the synchronous standby (sync mode): every write the old region
    # acknowledged is at or below `revision`; anything above it was never acknowledged
    synchronous: bool = False

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), sort_keys=True).encode()

    def as_dict(self) -> dict[str, object]:
        return {
            "epoch": self.epoch,
            "region": self.region,
            "source": self.source,
            "revision": self.revision,
            "planned": self.planned,
            "lagSeconds": self.lag_seconds,
            "time": self.time or _now(),
            "partial": self.partial,
            "synchronous": self.synchronous,
        }

    @classmethod
    def parse(cls, raw: bytes) -> Cut | None:
        try:
            d = _json_object(raw)
            return cls(
                epoch=int(d["epoch"]),
                region=str(d["region"]),
                source=d.get("source"),
                revision=int(d["revision"]),
                planned=bool(d.get("planned", False)),
                lag_seconds=d.get("lagSeconds"),
                time=str(d.get("time", "")),
                partial=bool(d.get("partial", False)),
                synchronous=bool(d.get("synchronous", False)),
            )
        except (ValueError, KeyError, TypeError, OverflowError):
            return None
