"""One replicator: copies the active region's etcd into its own region's etcd, in order.

Layer: replication. Talks to etcd (its own region's, the source's, the global control etcd)
through `haplane.store`; knows nothing of HTTP servers, processes or the CLI.

What it copies from follows its region's fence key (`haplane.store.fence_key`): while the key
says `standby:<source>@<epoch>`, the leading replicator of the region streams `<source>`'s
keyspace into it; under any other value it writes nothing. So whoever moves the fence keys (a
switchover, the failover controller) also turns the stream around.

Invariants:
- **One leader per region**: a key with a lease in the region's own etcd (`LEADER_KEY`); every
  write compares the key's create revision with the one this replicator created, so a
  replicator that lost its lease without noticing cannot write.
- **Whole source revisions, in order**: a target transaction holds one or more complete source
  revisions (`stream.batches`), never part of one.
- **Exactly once**: the same transaction records the source cluster, epoch and last applied
  source revision (`APPLIED_KEY`) and compares the record's mod revision with the one this
  replicator last wrote or read. Resuming starts at the recorded revision + 1, whoever resumes.
- **Never into a promoted region**: every transaction compares the fence key with exactly
  `standby:<source>@<epoch>`.
- **Resync**: without a usable record (none, another source cluster, an unfinished resync) or
  when the source compacted past it, every key is read at one source revision and the target
  made equal to it (keys the source lacks deleted), then the stream continues from there. The
  record says `resyncing` meanwhile, so a resync cut short is started again, never resumed from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from haplane.store import (
    APPLIED_KEY,
    HEARTBEAT_KEY,
    LEADER_KEY,
    RESTORED_KEY,
    AppliedRecord,
    Compare,
    EtcdClient,
    EtcdCompacted,
    EtcdError,
    EtcdOutcomeUnknown,
    FenceValue,
    GlobalState,
    Heartbeat,
    Op,
    RegionFence,
    ReplicationReport,
    RestoredMarker,
    WatchBatch,
    replicated,
)
from haplane.store.etcd_member import MAX_TXN_OPS
from haplane.store.fence_key import FENCE_KEY
from haplane.store.replication_keys import ALL_KEYS

from .stream import Revision, batches, revisions

log = logging.getLogger("haplane.replication")

# One revision plus the bookkeeping put must fit etcd's --max-txn-ops; requests stay well under
# etcd's default --max-request-bytes (1.5 MiB).
MAX_OPS = MAX_TXN_OPS - 1
MAX_BYTES = 1024 * 1024
PAGE_KEYS = 1000


class Stale(Exception):
    """A guard lost: the fence key, the leader key or the applied record changed since read
    (or a write's outcome is unknown): start over from what the target says now."""


@dataclass(frozen=True)
class _Interrupted:
    """The source's watch stream broke; the watch is trying the source's members again."""

    why: str


class SourceDown(Exception):
    """The source region's etcd did not answer."""


class TargetDown(Exception):
    """This region's own etcd refused or did not answer a write or read."""


class NeedResync(Exception):
    """The stream cannot go on from the applied revision (compacted, or a revision too large
    for one target transaction)."""


@dataclass
class ReplicatorStatus:
    """What this replicator knows now (for its report, its metrics and `/status`)."""

    leading: bool = False
    state: str = "Starting"  # Streaming | Resyncing | Disconnected | Idle | Starting
    detail: str = ""
    source: str | None = None
    epoch: int = 0
    applied_revision: int = 0
    source_revision: int = 0
    heartbeat: float | None = None  # source wall-clock time of the newest heartbeat applied
    source_answered_at: float | None = None
    lag_answered: float | None = None
    # applied everything the source had when it last answered (a progress answer at or below
    # the applied revision): no write is missing, whatever the heartbeat's age
    caught_up: bool = False
    # the copy in this region is incomplete: the applied record says `resyncing` (a resync
    # started and has not finished, whatever the connection does now)
    partial: bool = False
    last_resync: dict[str, Any] | None = None
    txns: int = 0
    revisions: int = 0
    resyncs: int = 0
    errors: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    def lag_seconds(self, now: float | None = None) -> float | None:
        """How far behind the copy is, in source time: from the newest heartbeat applied, or,
        when everything the source had at its last answer is applied, from that answer (a
        source whose heartbeat writer died is no reason to call a complete copy behind)."""
        now = now or time.time()
        if self.caught_up and self.source_answered_at is not None:
            return max(0.0, now - self.source_answered_at)
        if self.heartbeat is None:
            return None
        return max(0.0, now - self.heartbeat)

    def lag_revisions(self) -> int | None:
        if not self.source_revision:
            return None
        return max(0, self.source_revision - self.applied_revision)


class Replicator:
    def __init__(
        self,
        region: str,
        target: EtcdClient,
        sources: Mapping[str, EtcdClient],
        *,
        identity: str,
        control: GlobalState | None = None,
        lease_ttl: int = 2,
        report_every: float = 0.2,
        idle_poll: float = 0.2,
        max_ops: int = MAX_OPS,
        max_bytes: int = MAX_BYTES,
        page_keys: int = PAGE_KEYS,
        on_frozen: Callable[[Replicator, FenceValue], Awaitable[None]] | None = None,
    ):
        self.region = region
        self.target = target
        self.sources = dict(sources)
        self.identity = identity
        self.control = control
        self.lease_ttl = lease_ttl
        self.report_every = report_every
        self.idle_poll = idle_poll
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self.page_keys = page_keys
        self.on_frozen = on_frozen
        self.status = ReplicatorStatus()
        self._lease = 0
        self._leader_rev = 0  # create revision of our leader key
        self._applied_mod = 0  # mod revision of APPLIED_KEY as we last wrote or read it
        self._guard_fence: bytes = b""
        self._catch_up_to: int | None = None  # after a restore: partial until applied this far

    # ---- life cycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Campaign, replicate while leading, campaign again when leadership is lost; forever
        (cancel to stop; `resign` hands leadership over at once)."""
        reporter = asyncio.create_task(self._report_loop(), name="replication report")
        try:
            while True:
                try:
                    await self._campaign()
                except EtcdError as exc:
                    self._note_error("campaign", exc)
                    await asyncio.sleep(0.5)
                    continue
                lost = asyncio.Event()
                keeper = asyncio.create_task(self._keep_lease(lost), name="replication lease")
                work = asyncio.create_task(self._replicate(), name="replication")
                waiter = asyncio.create_task(lost.wait())
                try:
                    await asyncio.wait([keeper, work, waiter], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in (keeper, work, waiter):
                        t.cancel()
                    await asyncio.gather(keeper, work, waiter, return_exceptions=True)
                    self.status.leading = False
                if work.done() and not work.cancelled() and work.exception() is not None:
                    self._note_error("replication", work.exception())
                self._event("follower", {"reason": "lease lost"})
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    async def resign(self) -> None:
        """Give leadership up now (a clean stop): another replicator takes over at once."""
        if self._lease:
            with contextlib.suppress(EtcdError):
                await self.target.lease_revoke(self._lease, timeout=1.0)
            self._lease = 0

    async def _campaign(self) -> None:
        """Block until this replicator holds the region's leader key."""
        self.status.state = "Following" if self.status.state == "Starting" else self.status.state
        while True:
            lease = await self.target.lease_grant(self.lease_ttl)
            r = await self.target.txn(
                [Compare(LEADER_KEY, "create", "=", 0)],
                [Op("put", LEADER_KEY, self.identity.encode(), lease=lease)],
                [Op("get", LEADER_KEY)],
            )
            if r.succeeded:
                self._lease, self._leader_rev = lease, r.revision
                self.status.leading = True
                self._event("leader", {"leaderRevision": r.revision})
                return
            with contextlib.suppress(EtcdError):
                await self.target.lease_revoke(lease)
            self.status.state = "Following"
            await asyncio.sleep(max(0.1, self.lease_ttl / 4))

    async def _keep_lease(self, lost: asyncio.Event) -> None:
        """Renew the lease every third of its TTL; give up (and stop replicating) once it has
        certainly expired or etcd could not be reached for a whole TTL."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                ttl = await self.target.lease_keepalive(self._lease, timeout=self.lease_ttl / 3)
            except EtcdError:
                if time.monotonic() - last_ok > self.lease_ttl:
                    lost.set()
                    return
                continue
            if ttl <= 0:
                lost.set()
                return
            last_ok = time.monotonic()

    # ---- the work while leading -------------------------------------------------------------

    async def _replicate(self) -> None:
        fence = RegionFence(self.region, self.target)
        while True:
            try:
                read = await fence.read(timeout=1.0)
            except EtcdError as exc:  # keep the lease: this region's etcd may be back soon
                self._note_error("fence key", exc)
                await asyncio.sleep(0.2)
                continue
            v = read.value
            if v is None or v.state != "standby":
                self._idle(v)
                if v is not None and v.state == "frozen" and self.on_frozen is not None:
                    try:
                        await self.on_frozen(self, v)
                    except (EtcdError, TimeoutError, OSError) as exc:
                        self._note_error("rejoin", exc)
                await asyncio.sleep(self.idle_poll)
                continue
            src = self.sources.get(v.region)
            if src is None:
                self._set_state("Idle", f"no endpoints known for source region {v.region}")
                await asyncio.sleep(1.0)
                continue
            self._guard_fence = v.encode()
            self.status.source, self.status.epoch = v.region, v.epoch
            try:
                await self._follow(v, src)
            except Stale as exc:
                log.info(json.dumps({"msg": "starting over", "reason": str(exc)}))
            except SourceDown as exc:
                self._set_state("Disconnected", str(exc))
                await asyncio.sleep(0.5)
            except (TargetDown, EtcdError) as exc:  # the target: try again shortly
                self._note_error("target", exc)
                await asyncio.sleep(0.2)

    def _idle(self, v: FenceValue | None) -> None:
        what = "no fence key" if v is None else f"fence key {v}"
        if v is not None and v.state == "active":
            what = f"active in epoch {v.epoch}"
        s = self.status
        s.source, s.heartbeat, s.lag_answered, s.source_answered_at = None, None, None, None
        s.applied_revision = s.source_revision = 0
        s.caught_up = s.partial = False
        self._set_state("Idle", f"not a standby: {what}")

    def _guards(self) -> list[Compare]:
        return [
            Compare(FENCE_KEY, "value", "=", self._guard_fence),
            Compare(LEADER_KEY, "create", "=", self._leader_rev),
            Compare(APPLIED_KEY, "mod", "=", self._applied_mod),
        ]

    async def _txn(self, ops: list[Op]) -> int:
        """One guarded write; returns its revision (the applied record's new mod revision when
        the ops put it). A lost guard or an unknown outcome is `Stale`."""
        try:
            r = await self.target.txn(self._guards(), ops, timeout=5.0)
        except EtcdOutcomeUnknown as exc:
            raise Stale(f"a target write's outcome is unknown ({exc})") from None
        except EtcdError as exc:
            raise TargetDown(f"this region's etcd did not take a write: {exc}") from None
        if not r.succeeded:
            raise Stale("the fence key, the leader key or the applied record changed")
        self.status.txns += 1
        return r.revision

    async def read_applied(self) -> AppliedRecord | None:
        kv = await self.target.get(APPLIED_KEY, timeout=1.0)
        self._applied_mod = kv.mod_revision if kv is not None else 0
        if kv is None:
            return None
        try:
            return AppliedRecord.from_kv(kv)
        except EtcdError:
            return None  # unreadable: a resync rewrites it

    async def _follow(self, v: FenceValue, src: EtcdClient) -> None:
        applied = await self.read_applied()
        try:
            cluster_id = await src.cluster_id(timeout=1.0)
            _, head, _ = await src.range_page(*ALL_KEYS, limit=1, timeout=1.0)
        except EtcdError as exc:
            raise SourceDown(f"source {v.region} does not answer: {exc}") from None
        s = self.status
        # figures of another stream (another source, or before a resync) mean nothing here
        s.source_revision, s.caught_up, s.lag_answered = head, False, None
        s.partial = applied is not None and applied.state == "resyncing"
        usable = (
            applied is not None
            and applied.cluster_id == cluster_id
            and applied.state == "streaming"
            and 0 < applied.revision <= head
        )
        await self._restored(v, head, applied.revision if usable and applied else 0)
        if usable:
            assert applied is not None
            s.applied_revision, s.heartbeat = applied.revision, applied.heartbeat
            start = applied.revision
        else:
            s.applied_revision, s.heartbeat = 0, None
            why = (
                "no applied record"
                if applied is None
                else f"the applied record names cluster {applied.cluster_id:x} of "
                f"{applied.source} ({applied.state})"
                if applied.cluster_id != cluster_id or applied.state != "streaming"
                else f"the source's head {head} is below the applied revision "
                f"{applied.revision}: it was rebuilt (same cluster id, new history)"
                if applied.revision > head
                else "nothing applied yet"
            )
            start = await self.resync(v, src, cluster_id, why)
        while True:
            try:
                await self._stream(v, src, cluster_id, start)
                return
            except NeedResync as exc:
                start = await self.resync(v, src, cluster_id, str(exc))

    async def _restored(self, v: FenceValue, head: int, applied: int) -> None:
        """This region was rebuilt from a snapshot (`RESTORED_KEY`): its copy counts as
        partial (never promoted automatically) until it applied its source up to where the
        source stood at the restore (another source since: up to its head now)."""
        try:
            kv = await self.target.get(RESTORED_KEY, timeout=1.0)
        except EtcdError as exc:
            raise TargetDown(f"this region's restore marker unreadable: {exc}") from None
        marker = RestoredMarker.parse(kv.value) if kv is not None else None
        if kv is None:
            self._catch_up_to = None
            return
        until = marker.revision if marker is not None and marker.source == v.region else head
        self._catch_up_to = until
        if applied >= until:
            await self._caught_up_after_restore()
        else:
            self.status.partial = True

    async def _caught_up_after_restore(self) -> None:
        await self._txn([Op("delete", RESTORED_KEY)])
        self._catch_up_to = None
        self.status.partial = False
        self._event("restore-caught-up", {})

    # ---- streaming ----------------------------------------------------------------------------

    async def _stream(self, v: FenceValue, src: EtcdClient, cluster_id: int, after: int) -> None:
        """Apply the source's revisions after `after`, forever (returns when the fence key no
        longer says this stream)."""
        self._set_state("Streaming", f"from {v.region} after revision {after}")
        applied = after
        checked = time.monotonic()
        fence = RegionFence(self.region, self.target)
        # The watch is read by a task of its own: while a target transaction is in flight the
        # source's answers queue up, and the next transaction takes all of them at once (one
        # per answer could not keep up with more than a few hundred revisions a second).
        # An interruption (a member's stream ended; the watch tries the others) is queued in
        # order with the answers: the state says Disconnected once every answer before it is
        # applied, and Streaming again at the next answer. So a source that died whole is shown
        # at once, not after the watch's 2 s of trying. With 1024 answers waiting the mark is
        # dropped: the applier is busy with them, and the watch's budget ends it anyway.
        queue: asyncio.Queue[WatchBatch | _Interrupted | BaseException] = asyncio.Queue(
            maxsize=1024
        )

        def interrupted(why: str) -> None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(_Interrupted(why))

        async def produce() -> None:
            try:
                async for wb in src.watch(
                    ALL_KEYS[0],
                    range_end=ALL_KEYS[1],
                    start_revision=after + 1,
                    connect_timeout=2.0,
                    on_interrupted=interrupted,
                ):
                    await queue.put(wb)
            except Exception as exc:  # handed to the applier, in order
                await queue.put(exc)

        producer = asyncio.create_task(produce(), name="replication watch")
        try:
            while True:
                # answers up to the first interruption or failure, applied together
                taken = [await queue.get()]
                while not queue.empty() and isinstance(taken[-1], WatchBatch):
                    taken.append(queue.get_nowait())
                failure: BaseException | None = None
                broken: _Interrupted | None = None
                if isinstance(taken[-1], BaseException):
                    failure = taken.pop()  # type: ignore[assignment]
                elif isinstance(taken[-1], _Interrupted):
                    broken = taken.pop()  # type: ignore[assignment]
                answers = [wb for wb in taken if isinstance(wb, WatchBatch)]
                if answers:
                    now = time.time()
                    head = max(wb.revision for wb in answers)
                    events = [ev for wb in answers for ev in wb.events]
                    self.status.source_answered_at = now
                    self.status.source_revision = max(self.status.source_revision, head)
                    if self.status.state != "Streaming":
                        self._set_state("Streaming", f"from {v.region}")
                    if events:
                        groups = revisions(events)
                        for batch in batches(
                            groups, max_ops=self.max_ops, max_bytes=self.max_bytes
                        ):
                            await self._apply(v, cluster_id, batch)
                        applied = groups[-1].revision
                        self.status.applied_revision = applied
                        self.status.source_revision = max(self.status.source_revision, applied)
                    # caught up: the last answer held no event past what is applied (a
                    # progress answer: the source had nothing more at its revision)
                    last = answers[-1]
                    self.status.caught_up = not last.events and last.revision <= applied
                    self.status.lag_answered = self.status.lag_seconds(now)
                if broken is not None:
                    self._set_state(
                        "Disconnected", f"{v.region} does not answer ({broken.why}); retrying"
                    )
                if failure is not None:
                    raise failure
                if time.monotonic() - checked > 1.0:  # quiet source: is the stream still ours?
                    checked = time.monotonic()
                    try:
                        read = await fence.read(timeout=1.0)
                    except EtcdError as exc:
                        raise TargetDown(f"fence key unreadable: {exc}") from None
                    if read.value is None or read.value.encode() != self._guard_fence:
                        return
        except EtcdCompacted as exc:
            raise NeedResync(f"the source compacted past revision {applied + 1}: {exc}") from None
        except EtcdError as exc:
            raise SourceDown(f"source {v.region}'s watch ended: {exc}") from None
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    async def _apply(self, v: FenceValue, cluster_id: int, batch: list[Revision]) -> None:
        ops = [op for g in batch for op in g.ops]
        last = batch[-1].revision
        if not ops:
            return  # region-local keys only: nothing to write (counted as applied)
        if len(ops) > self.max_ops or sum(g.size for g in batch) > self.max_bytes * 1.4:
            raise NeedResync(
                f"source revision {batch[0].revision} holds {len(ops)} operations, more than "
                "one target transaction can take"
            )
        heartbeat = next(
            (g.heartbeat for g in reversed(batch) if g.heartbeat is not None),
            self.status.heartbeat,
        )
        record = AppliedRecord(v.region, cluster_id, v.epoch, last, "streaming", heartbeat)
        self._applied_mod = await self._txn([*ops, Op("put", APPLIED_KEY, record.to_json())])
        self.status.heartbeat = heartbeat
        if self._catch_up_to is not None and last >= self._catch_up_to:
            await self._caught_up_after_restore()
        self.status.revisions += sum(1 for g in batch if g.ops)

    # ---- resync -------------------------------------------------------------------------------

    async def resync(self, v: FenceValue, src: EtcdClient, cluster_id: int, why: str) -> int:
        """Make the target equal to the source at one source revision; returns it."""
        t0 = time.monotonic()
        self._set_state("Resyncing", why)
        self.status.partial, self.status.caught_up = True, False
        self._event("resync-start", {"source": v.region, "reason": why})
        try:
            _, at, _ = await src.range_page(*ALL_KEYS, limit=1, timeout=2.0)
        except EtcdError as exc:
            raise SourceDown(f"source {v.region} does not answer: {exc}") from None
        marker = AppliedRecord(v.region, cluster_id, v.epoch, at, "resyncing")
        self._applied_mod = await self._txn([Op("put", APPLIED_KEY, marker.to_json())])
        mine: dict[bytes, bytes] = {}
        try:
            async for kvs in _pages(self.target, 0, self.page_keys):
                for kv in kvs:
                    if replicated(kv.key):
                        mine[kv.key] = kv.value
        except EtcdError as exc:
            raise TargetDown(f"this region's keys unreadable: {exc}") from None
        seen: set[bytes] = set()
        pending: list[Op] = []
        size = written = deleted = 0
        heartbeat: float | None = None

        async def flush() -> None:
            nonlocal pending, size
            if pending:
                await self._txn(pending)
                pending, size = [], 0

        try:
            async for kvs in _pages(src, at, self.page_keys):
                for kv in kvs:
                    if not replicated(kv.key):
                        continue
                    seen.add(kv.key)
                    if kv.key == HEARTBEAT_KEY:
                        hb = Heartbeat.parse(kv.value)
                        heartbeat = hb.time if hb is not None else heartbeat
                    if mine.get(kv.key) == kv.value:
                        continue
                    if len(pending) + 1 > self.max_ops or size + len(kv.value) > self.max_bytes:
                        await flush()
                    pending.append(Op("put", kv.key, kv.value))
                    size += len(kv.key) + len(kv.value)
                    written += 1
        except EtcdCompacted as exc:
            raise Stale(f"the source compacted revision {at} during the resync: {exc}") from None
        except EtcdError as exc:
            raise SourceDown(f"source {v.region} stopped answering in a resync: {exc}") from None
        for key in mine.keys() - seen:
            if len(pending) + 1 > self.max_ops:
                await flush()
            pending.append(Op("delete", key))
            deleted += 1
        await flush()
        done = AppliedRecord(v.region, cluster_id, v.epoch, at, "streaming", heartbeat)
        self._applied_mod = await self._txn([Op("put", APPLIED_KEY, done.to_json())])
        seconds = time.monotonic() - t0
        self.status.resyncs += 1
        self.status.partial = False
        self.status.applied_revision = at
        if self._catch_up_to is not None:
            if at >= self._catch_up_to:
                await self._caught_up_after_restore()
            else:
                self.status.partial = True
        self.status.heartbeat = heartbeat
        self.status.last_resync = {
            "time": time.time(),
            "source": v.region,
            "revision": at,
            "keys": len(seen),
            "written": written,
            "deleted": deleted,
            "seconds": round(seconds, 3),
            "reason": why,
        }
        self._event("resync-done", self.status.last_resync)
        return at

    # ---- reporting ---------------------------------------------------------------------------

    def report(self) -> ReplicationReport:
        s = self.status
        now = time.time()
        return ReplicationReport(
            target=self.region,
            source=s.source,
            state=s.state,
            epoch=s.epoch,
            applied_revision=s.applied_revision,
            source_revision=s.source_revision,
            lag_seconds=_round(s.lag_seconds(now)),
            lag_revisions=s.lag_revisions(),
            lag_answered=_round(s.lag_answered),
            source_answered_at=s.source_answered_at,
            leader=self.identity,
            time=now,
            last_resync=s.last_resync,
            partial=s.partial,
        )

    async def _report_loop(self) -> None:
        if self.control is None:
            return
        failing = False
        while True:
            await asyncio.sleep(self.report_every)
            if not self.status.leading:
                continue
            try:
                await self.control.report_replication(self.report(), timeout=0.5)
                failing = False
            except EtcdError as exc:
                if not failing:
                    log.info(json.dumps({"msg": "report not written", "error": str(exc)}))
                failing = True

    def _set_state(self, state: str, detail: str) -> None:
        if (state, detail) != (self.status.state, self.status.detail):
            if state != self.status.state:
                self._event("state", {"state": state, "detail": detail})
            self.status.state, self.status.detail = state, detail

    def _note_error(self, where: str, exc: BaseException | None) -> None:
        self.status.errors += 1
        log.info(json.dumps({"msg": f"{where} error", "error": str(exc)}))

    def _event(self, what: str, fields: Mapping[str, Any]) -> None:
        log.info(
            json.dumps(
                {"msg": what, "component": self.identity, "region": self.region, **fields},
                default=str,
            )
        )


async def _pages(client: EtcdClient, revision: int, limit: int) -> Any:
    """Every key of a cluster at `revision` (0: now, then pinned to the first page's), in pages."""
    start = ALL_KEYS[0]
    while True:
        kvs, at, _ = await client.range_page(
            start, ALL_KEYS[1], revision=revision, limit=limit, timeout=10.0
        )
        revision = revision or at
        if kvs:
            yield kvs
        if len(kvs) < limit:
            return
        start = kvs[-1].key + b"\0"


def _round(x: float | None) -> float | None:
    return round(x, 4) if x is not None else None
