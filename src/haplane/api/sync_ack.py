"""Synchronous replication, the replica's side: a write is acknowledged only once a synchronous
standby applied it, or once the global record says that none is synchronous.

Layer: api. Reads each synchronous standby's applied record (`haplane.store.APPLIED_KEY`) in
that standby region's etcd by watching it (a cross-region read: an acknowledgement never writes
into its own region's etcd, where it would itself be a revision to acknowledge), and reads and
compare-and-swaps the sync record in the global control etcd (`haplane.store.sync_state`, whose
docstring gives the rules and why they lose nothing). Touches nothing else; `EtcdStorage` calls
`acknowledge` after each committed write, the controller leader runs `keep`.

Per write at source revision R, in epoch E (the replica's permit):
- confirmed: the standby the record names (or the one being made synchronous; without a record
  of E, any synchronous standby) applied R from this region's cluster in E, while streaming;
- not within `timeout`: non-strict, degrade: write `sync: none` (compare-and-swap) before
  answering; strict, answer 504 (`Unconfirmed`: committed locally, its durability elsewhere
  unknown), and keep answering so until a standby confirms again;
- while the record already says `none` (non-strict): no wait, but a read of the record sent
  after R committed must still say `none` (reads are shared by the writes they follow).
A read or write of the control etcd that fails leaves the write unacknowledged (504).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from haplane.store import (
    APPLIED_KEY,
    AppliedRecord,
    EtcdClient,
    EtcdError,
    SyncRecord,
    SyncState,
)
from haplane.store.sync_state import describe

log = logging.getLogger("haplane.api.sync")

KEEP_EVERY = 0.2  # seconds between the controller leader's looks at the sync record
CATCH_UP_LIMIT = 3.0  # how long a standby being made synchronous may take to apply the head


class Unconfirmed(Exception):
    """The write committed in this region; no synchronous standby confirmed it and `none`
    could not be (or, strict, may not be) recorded: its outcome elsewhere is unknown."""


@dataclass(frozen=True)
class SyncConfig:
    """This region's synchronous standbys (region -> its etcd members, in preference order),
    how long an acknowledgement waits for one, and whether it may degrade."""

    standbys: dict[str, list[str]]
    timeout: float = 0.5
    strict: bool = False


@dataclass
class _Waiter:
    revision: int
    epoch: int
    standbys: frozenset[str]
    done: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class SyncMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.acks = Counter(
            "haplane_sync_acknowledgements_total",
            "writes answered in sync mode, by how: confirmed by a standby, degraded (sync: "
            "none recorded), unconfirmed (504)",
            ["outcome"],
            registry=registry,
        )
        self.wait = Histogram(
            "haplane_sync_wait_seconds",
            "time from a write's commit to its acknowledgement in sync mode",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.changes = Counter(
            "haplane_sync_changes_total",
            "sync record changes this replica made, by what it recorded",
            ["to"],
            registry=registry,
        )
        self.synchronous = Gauge(
            "haplane_sync_standby",
            "1 while the sync record names this standby synchronous for this region",
            ["standby"],
            registry=registry,
        )
        self.applied = Gauge(
            "haplane_sync_standby_applied_revision",
            "the revision of this region each synchronous standby last applied",
            ["standby"],
            registry=registry,
        )


class SyncAck:
    def __init__(
        self,
        region: str,
        config: SyncConfig,
        global_client: EtcdClient,
        prefix: bytes,
        *,
        cluster_id: Callable[[], int],
        name: str,
        registry: CollectorRegistry | None = None,
        standby_clients: dict[str, EtcdClient] | None = None,
    ):
        self.region = region
        self.config = config
        self.state = SyncState(global_client, prefix)
        self.cluster_id = cluster_id
        self.name = name
        self.metrics = SyncMetrics(registry or CollectorRegistry())
        self.clients = standby_clients or {
            r: EtcdClient(eps, timeout=1.0) for r, eps in config.standbys.items()
        }
        self._own_clients = standby_clients is None
        self.applied: dict[str, AppliedRecord] = {}
        self.record: SyncRecord | None = None  # as last seen (watch); decisions re-read it
        self._waiters: list[_Waiter] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._degrade_lock = asyncio.Lock()
        self._read: tuple[float, asyncio.Task[SyncRecord | None]] | None = None
        self.last_error: str | None = None
        self.unconfirmed_since: float | None = None  # strict: when confirmations stopped

    # ---- following the standbys and the record -------------------------------------------

    def start(self) -> None:
        for region, client in self.clients.items():
            self._tasks.append(
                asyncio.create_task(self._follow_applied(region, client), name=f"sync {region}")
            )
        self._tasks.append(asyncio.create_task(self._follow_record(), name="sync record"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._own_clients:
            for c in self.clients.values():
                await c.close()

    async def _follow_applied(self, region: str, client: EtcdClient) -> None:
        """Watch `region`'s applied record; on any error start again (the last record seen
        stays true: what a standby applied, it has)."""
        while True:
            try:
                kvs, rev = await client.range(APPLIED_KEY, timeout=1.0)
                if kvs:
                    self._applied(region, AppliedRecord.from_kv(kvs[0]))
                async for batch in client.watch(APPLIED_KEY, start_revision=rev + 1):
                    for ev in batch.events:
                        if ev.type == "PUT":
                            self._applied(region, AppliedRecord.from_kv(ev.kv))
                        else:
                            self.applied.pop(region, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable standby, malformed record: retry
                self.last_error = f"{region}: {exc}"
                await asyncio.sleep(0.2)

    def _applied(self, region: str, record: AppliedRecord) -> None:
        self.applied[region] = record
        if record.source == self.region:
            self.metrics.applied.labels(region).set(record.revision)
        if not self._waiters:
            return
        keep = []
        for w in self._waiters:
            if w.done.done():
                continue
            if region in w.standbys and self.confirms(region, w.revision, w.epoch):
                w.done.set_result(region)
            else:
                keep.append(w)
        self._waiters = keep

    def confirms(self, standby: str, revision: int, epoch: int) -> bool:
        """Has `standby` applied this region's `revision` of `epoch` (from this very cluster,
        while streaming: a resync's record names a revision not yet complete)?"""
        a = self.applied.get(standby)
        return (
            a is not None
            and a.source == self.region
            and a.epoch == epoch
            and a.state == "streaming"
            and a.cluster_id == self.cluster_id()
            and a.revision >= revision
        )

    async def _follow_record(self) -> None:
        while True:
            try:
                kvs, rev = await self.state.client.range(self.state.key, timeout=1.0)
                self._seen(SyncRecord.from_kv(kvs[0]) if kvs else None)
                async for batch in self.state.client.watch(self.state.key, start_revision=rev + 1):
                    for ev in batch.events:
                        self._seen(SyncRecord.from_kv(ev.kv) if ev.type == "PUT" else None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"sync record: {exc}"
                await asyncio.sleep(0.2)

    def _seen(self, record: SyncRecord | None) -> None:
        old = self.record
        self.record = record
        for s in self.config.standbys:
            mine = record is not None and record.region == self.region and record.standby == s
            self.metrics.synchronous.labels(s).set(1 if mine else 0)
        if old is None or record is None or old.as_dict() != record.as_dict():
            log.info(
                json.dumps(
                    {
                        "msg": "sync record",
                        "component": self.name,
                        "record": record.as_dict() if record else None,
                        "says": describe(record),
                    }
                )
            )

    # ---- acknowledging a write -----------------------------------------------------------

    def _targets(self, record: SyncRecord | None, epoch: int) -> frozenset[str]:
        """Whose confirmation acknowledges a write of `epoch`, by the record as known."""
        if record is not None and record.names(epoch, self.region):
            if record.standby is not None:
                return frozenset({record.standby})
            if record.pending is not None:
                return frozenset({record.pending})
        return frozenset(self.config.standbys)  # no record of this epoch, or none: any

    async def acknowledge(self, revision: int, epoch: int, committed: float) -> None:
        """Return once the write at `revision` (committed at `committed`, monotonic) may be
        acknowledged; raise `Unconfirmed` when it may not."""
        try:
            outcome = await self._acknowledge(revision, epoch, committed)
        except Unconfirmed:
            self.metrics.acks.labels("unconfirmed").inc()
            raise
        self.metrics.acks.labels(outcome).inc()
        self.metrics.wait.observe(time.monotonic() - committed)

    async def _acknowledge(self, revision: int, epoch: int, committed: float) -> str:
        record = self.record
        if record is not None and (
            record.epoch > epoch or (record.epoch == epoch and record.region != self.region)
        ):
            raise Unconfirmed(
                f"epoch {record.epoch} ({record.region}) has begun: this write of epoch {epoch} "
                "committed here, but no synchronous standby is known to have it"
            )
        targets = self._targets(record, epoch)
        if any(self.confirms(s, revision, epoch) for s in targets):
            self.unconfirmed_since = None
            return "confirmed"
        if (
            not self.config.strict
            and record is not None
            and record.names(epoch, self.region)
            and record.degraded
        ):
            # degraded: acknowledged without waiting once a read sent after the commit still
            # says so (a standby being made synchronous meanwhile must have it: see sync_state)
            fresh = await self._read_after(committed)
            if fresh is not None and fresh.names(epoch, self.region) and fresh.degraded:
                return "degraded"
            record = fresh
            targets = self._targets(record, epoch)
        if await self._wait(revision, epoch, targets):
            self.unconfirmed_since = None
            return "confirmed"
        if self.config.strict:
            if self.unconfirmed_since is None:
                self.unconfirmed_since = time.monotonic()
                log.warning(
                    json.dumps(
                        {
                            "msg": "sync: no standby confirms; strict: writes answer 504",
                            "component": self.name,
                            "standbys": sorted(targets),
                            "revision": revision,
                        }
                    )
                )
            raise Unconfirmed(
                f"committed in {self.region} at revision {revision}, but no synchronous standby "
                f"({', '.join(sorted(targets))}) confirmed it within "
                f"{self.config.timeout * 1000:.0f} ms (strict synchronous replication: its "
                "durability elsewhere is unknown)"
            )
        await self._degrade(revision, epoch, targets)
        return "degraded"

    async def _wait(self, revision: int, epoch: int, targets: frozenset[str]) -> bool:
        if any(self.confirms(s, revision, epoch) for s in targets):
            return True
        w = _Waiter(revision, epoch, targets)
        self._waiters.append(w)
        try:
            async with asyncio.timeout(self.config.timeout):
                await w.done
            return True
        except TimeoutError:
            return any(self.confirms(s, revision, epoch) for s in targets)
        finally:
            if not w.done.done():
                w.done.cancel()

    async def _read_after(self, committed: float) -> SyncRecord | None:
        """A linearizable read of the record sent after `committed`: one in flight that was sent
        after it is shared. Raises `Unconfirmed` when it fails."""
        current = self._read
        if current is None or current[0] < committed or current[1].done():
            task = asyncio.ensure_future(self.state.read(timeout=self.config.timeout))
            current = self._read = (time.monotonic(), task)
        try:
            return await asyncio.shield(current[1])
        except (EtcdError, TimeoutError) as exc:
            self.last_error = f"sync record: {exc}"
            raise Unconfirmed(
                f"committed in {self.region}, but the global control etcd did not answer "
                f"whether a standby is synchronous ({exc}): outcome unknown"
            ) from None

    async def _degrade(self, revision: int, epoch: int, targets: frozenset[str]) -> None:
        """Record `sync: none` for this region's epoch before acknowledging a write no standby
        confirmed (or find it recorded by a read sent now, after the commit)."""
        async with self._degrade_lock:
            try:
                current = await self.state.read(timeout=self.config.timeout)
                for _ in range(4):
                    if any(
                        self.confirms(s, revision, epoch) for s in self._targets(current, epoch)
                    ):
                        return
                    if current is not None and (
                        current.epoch > epoch
                        or (current.epoch == epoch and current.region != self.region)
                    ):
                        raise Unconfirmed(
                            f"epoch {current.epoch} ({current.region}) has begun: this write "
                            f"committed in {self.region} but no standby confirmed it"
                        )
                    if (
                        current is not None
                        and current.names(epoch, self.region)
                        and current.degraded
                    ):
                        return
                    who = (
                        (current.standby or current.pending)
                        if current is not None and current.names(epoch, self.region)
                        else ", ".join(sorted(targets))
                    )
                    new = SyncRecord.none(
                        epoch,
                        self.region,
                        by=self.name,
                        reason=f"{who} did not confirm revision {revision} within "
                        f"{self.config.timeout * 1000:.0f} ms",
                    )
                    ok, current = await self.state.swap(current, new, timeout=self.config.timeout)
                    if ok:
                        self.metrics.changes.labels("none").inc()
                        log.warning(
                            json.dumps(
                                {
                                    "msg": "sync: degraded to none",
                                    "component": self.name,
                                    "epoch": epoch,
                                    "reason": new.reason,
                                }
                            )
                        )
                        return
            except (EtcdError, TimeoutError) as exc:
                self.last_error = f"sync record: {exc}"
                raise Unconfirmed(
                    f"committed in {self.region} at revision {revision}; no synchronous standby "
                    f"confirmed it and `sync: none` could not be recorded ({exc}): outcome "
                    "unknown"
                ) from None
            raise Unconfirmed(f"the sync record kept changing while degrading revision {revision}")

    # ---- the controller leader: making a standby synchronous again ---------------------------

    async def keep(
        self,
        *,
        epoch: Callable[[], int | None],
        head_revision: Callable[[], Awaitable[int]],
        every: float = KEEP_EVERY,
    ) -> None:
        """While `epoch()` gives this region's writable epoch (None: not leading or not
        writable), make a caught-up standby synchronous whenever none is (the three steps of
        `haplane.store.sync_state`). Runs forever."""
        backoff_until = 0.0
        while True:
            await asyncio.sleep(every)
            e = epoch()
            if e is None or time.monotonic() < backoff_until:
                continue
            try:
                if not await self._make_synchronous(e, head_revision):
                    backoff_until = time.monotonic() + 1.0
            except (EtcdError, TimeoutError) as exc:
                self.last_error = f"keeping sync: {exc}"
                backoff_until = time.monotonic() + 1.0
            except Exception:
                log.exception("sync keeper failed")
                backoff_until = time.monotonic() + 1.0

    async def _make_synchronous(
        self, epoch: int, head_revision: Callable[[], Awaitable[int]]
    ) -> bool:
        """One pass; False when a candidate did not make it (back off)."""
        record = await self.state.read(timeout=1.0)
        if record is not None and (
            record.epoch > epoch or (record.epoch == epoch and record.region != self.region)
        ):
            return True  # not ours to keep
        if record is not None and record.names(epoch, self.region) and record.standby is not None:
            return True
        candidates = self._candidates(epoch)
        if not candidates:
            return True
        # first, without changing anything: a standby that cannot apply the head now (paused,
        # cut off, far behind) would only make writes wait for it and then cancel it
        x = await self._caught_up(candidates, epoch, await head_revision())
        if x is None:
            return False
        pending = SyncRecord.catching_up(
            epoch, self.region, x, by=self.name, reason=f"{x} is catching up to be synchronous"
        )
        ok, now = await self.state.swap(record, pending, timeout=1.0)
        if not ok or now is None:
            return False
        head = await head_revision()
        deadline = time.monotonic() + CATCH_UP_LIMIT
        while not self.confirms(x, head, epoch):
            if time.monotonic() > deadline:
                cancel = SyncRecord.none(
                    epoch,
                    self.region,
                    by=self.name,
                    reason=f"{x} did not apply revision {head} within {CATCH_UP_LIMIT:.0f}s",
                )
                await self.state.swap(now, cancel, timeout=1.0)
                return False
            await self._wait(head, epoch, frozenset({x}))
        sync = SyncRecord.synchronous(
            epoch,
            self.region,
            x,
            by=self.name,
            reason=f"{x} applied every revision up to {head}",
        )
        ok, _ = await self.state.swap(now, sync, timeout=1.0)
        if ok:
            self.metrics.changes.labels("synchronous").inc()
            log.info(
                json.dumps(
                    {
                        "msg": "sync: standby synchronous",
                        "component": self.name,
                        "standby": x,
                        "epoch": epoch,
                        "revision": head,
                    }
                )
            )
        return ok

    async def _caught_up(self, candidates: Sequence[str], epoch: int, head: int) -> str | None:
        """The first of `candidates` to apply `head` within `timeout` (None: none did)."""
        for x in candidates:
            if self.confirms(x, head, epoch):
                return x
        if await self._wait(head, epoch, frozenset(candidates)):
            return next((x for x in candidates if self.confirms(x, head, epoch)), None)
        return None

    def _candidates(self, epoch: int) -> Sequence[str]:
        """Standbys following this region in `epoch` while streaming, in preference order."""
        out = []
        for s in self.config.standbys:
            a = self.applied.get(s)
            if (
                a is not None
                and a.source == self.region
                and a.epoch == epoch
                and a.state == "streaming"
                and a.cluster_id == self.cluster_id()
            ):
                out.append(s)
        return out

    def status(self) -> dict[str, object]:
        rec = self.record
        return {
            "standbys": list(self.config.standbys),
            "timeoutMs": round(self.config.timeout * 1000),
            "strict": self.config.strict,
            "record": rec.as_dict() if rec else None,
            "says": describe(rec),
            "applied": {
                s: {"source": a.source, "epoch": a.epoch, "revision": a.revision, "state": a.state}
                for s, a in self.applied.items()
            },
            "confirming": self.unconfirmed_since is None,
            "lastError": self.last_error,
        }
