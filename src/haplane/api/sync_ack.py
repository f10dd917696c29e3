"""Synchronous replication, the replica's side: a write is acknowledged only once a synchronous
standby applied it, or once the global record says that none is synchronous.

Layer: api. Reads the synchronous standby's applied record (`haplane.store.APPLIED_KEY`) in
that standby region's etcd by watching it (a cross-region read: an acknowledgement never writes
into its own region's etcd, where it would itself be a revision to acknowledge), and reads and
compare-and-swaps the sync record in the global control etcd (`haplane.store.sync_state`, whose
docstring gives the rules and why they lose nothing). Touches nothing else; `EtcdStorage` calls
`acknowledge` after each committed write, and every replica of the writable region runs
`keep` (its steps are compare-and-swaps: concurrent keepers only cost a retry).

A region has one synchronous standby at most (`haplane validate` refuses two): the only region
the record can ever name for it, so its confirmation is trusted whatever a replica's (possibly
stale) view of the record says. Per write at source revision R, in epoch E (the replica's
permit):
- confirmed: the standby applied R from this region's cluster in E, while streaming;
- non-strict, not confirmed within `timeout`: degrade: `sync: none` is written for E
  (compare-and-swap) before answering, or found by a read sent after R committed;
- non-strict, while the record already says `none`: no wait, but a read of the record sent
  after R committed must still say `none` (reads are shared by the writes they follow);
- strict: only while the record names the standby synchronous for E, and on its confirmation;
  otherwise 504 (`Unconfirmed`: committed locally, its durability elsewhere unknown), until
  a keeper made it synchronous again.
A read or write of the control etcd that fails leaves the write unacknowledged (504).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from haplane.store import (
    APPLIED_KEY,
    AppliedRecord,
    EtcdClient,
    EtcdError,
    EtcdTls,
    SyncRecord,
    SyncState,
)
from haplane.store.sync_state import describe
from haplane.telemetry import Api as M

log = logging.getLogger("haplane.api.sync")

KEEP_EVERY = 0.2  # seconds between a keeper's looks at the sync record
CATCH_UP_LIMIT = 3.0  # how long a standby being made synchronous may take to apply the head


class Unconfirmed(Exception):
    """The write committed in this region; no synchronous standby confirmed it and `none`
    could not be (or, strict, may not be) recorded: its outcome elsewhere is unknown."""


@dataclass(frozen=True)
class SyncConfig:
    """This region's synchronous standby (region -> its etcd members: exactly one, see
    `haplane.topology.rules`: its confirmation is trusted without asking the control etcd who
    is synchronous, which is sound only while no other standby could be), how long an
    acknowledgement waits for it, and whether it may degrade."""

    standbys: dict[str, list[str]]
    timeout: float = 0.5
    strict: bool = False
    tls: EtcdTls | None = None  # this replica's etcd client certificate


@dataclass(eq=False)
class _Waiter:
    revision: int
    epoch: int
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class SyncMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.acks = M.sync_acks.counter(registry)
        self.wait = M.sync_wait.histogram(registry)
        self.changes = M.sync_changes.counter(registry)
        self.synchronous = M.sync_standby.gauge(registry)
        self.applied = M.sync_applied.gauge(registry)


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
        if len(config.standbys) != 1:
            raise ValueError("synchronous replication takes exactly one standby region")
        self.region = region
        self.config = config
        self.standby = next(iter(config.standbys))
        self.state = SyncState(global_client, prefix)
        self.cluster_id = cluster_id
        self.name = name
        self.metrics = SyncMetrics(registry or CollectorRegistry())
        self.clients = standby_clients or {
            r: EtcdClient(eps, timeout=1.0, tls=config.tls) for r, eps in config.standbys.items()
        }
        self._own_clients = standby_clients is None
        self.applied: dict[str, AppliedRecord] = {}
        self.record: SyncRecord | None = None  # as last seen (watch); decisions re-read it
        self._waiters: set[_Waiter] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._degrade_lock = asyncio.Lock()
        self._read: tuple[float, asyncio.Task[SyncRecord | None]] | None = None
        # the last read or write that found or made `none`: (its send time, the record)
        self._degraded: tuple[float, SyncRecord] | None = None
        self._promoted_at: float | None = None  # when the keeper last made one synchronous
        self._flap = 0.0  # the keeper's hold after a standby degraded soon after promotion
        self._hold_until = 0.0
        self._logged_error_at = 0.0
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
        if region != self.standby:
            return
        for w in [w for w in self._waiters if not w.done.done()]:
            if self.confirms(region, w.revision, w.epoch):
                w.done.set_result(None)

    def confirms(self, standby: str, revision: int, epoch: int) -> bool:
        """Has `standby` applied this region's `revision` of `epoch` (from this very cluster,
        while streaming: a resync's record names a revision not yet complete)?"""
        a = self.applied.get(standby)
        return a is not None and self._streaming(standby, epoch) and a.revision >= revision

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
                "committed here, but its standby is not known to have it"
            )
        if self.config.strict:
            return await self._acknowledge_strict(revision, epoch, record)
        # The one standby's confirmation suffices whatever the record says: it has the write,
        # and it is the only region that can ever be recorded synchronous for this one.
        if self.confirms(self.standby, revision, epoch):
            return "confirmed"
        if record is not None and record.names(epoch, self.region) and record.degraded:
            # degraded: no wait, once a read sent after the commit still says so (a standby
            # being made synchronous meanwhile must have the write: see sync_state)
            try:
                fresh = await self._read_after(committed)
            except Unconfirmed:  # the control etcd does not answer: the standby still may
                if await self._wait(revision, epoch):
                    return "confirmed"
                raise
            if fresh is not None and fresh.names(epoch, self.region) and fresh.degraded:
                return "degraded"
        if await self._wait(revision, epoch):
            return "confirmed"
        await self._degrade(revision, epoch, committed)
        return "degraded"

    async def _acknowledge_strict(
        self, revision: int, epoch: int, record: SyncRecord | None
    ) -> str:
        """Strict: only while the record names the standby synchronous for this epoch (it
        never stops naming it within the epoch: strict replicas never degrade, the keeper
        acts only on `none`), and only on its confirmation; 504 otherwise."""
        if record is None or not record.names(epoch, self.region) or record.standby != self.standby:
            self._unconfirmed(revision)
            raise Unconfirmed(
                f"committed in {self.region} at revision {revision}, but no standby is "
                f"synchronous for epoch {epoch} ({describe(record)}): strict synchronous "
                "replication acknowledges nothing until one is"
            )
        if await self._wait(revision, epoch):
            self.unconfirmed_since = None
            return "confirmed"
        self._unconfirmed(revision)
        raise Unconfirmed(
            f"committed in {self.region} at revision {revision}, but the synchronous standby "
            f"{self.standby} did not confirm it within {self.config.timeout * 1000:.0f} ms "
            "(strict synchronous replication: its durability elsewhere is unknown)"
        )

    def _unconfirmed(self, revision: int) -> None:
        if self.unconfirmed_since is None:
            self.unconfirmed_since = time.monotonic()
            log.warning(
                json.dumps(
                    {
                        "msg": "sync: no standby confirms; strict: writes answer 504",
                        "component": self.name,
                        "standby": self.standby,
                        "revision": revision,
                    }
                )
            )

    async def _wait(self, revision: int, epoch: int) -> bool:
        """Whether the standby applies `revision` of `epoch` within the timeout."""
        if self.confirms(self.standby, revision, epoch):
            return True
        w = _Waiter(revision, epoch)
        self._waiters.add(w)
        try:
            async with asyncio.timeout(self.config.timeout):
                await w.done
            return True
        except TimeoutError:
            return self.confirms(self.standby, revision, epoch)
        finally:
            self._waiters.discard(w)
            if not w.done.done():
                w.done.cancel()

    async def _read_after(self, committed: float) -> SyncRecord | None:
        """A linearizable read of the record sent after `committed`: one in flight that was sent
        after it is shared. Raises `Unconfirmed` when it fails."""
        current = self._read
        if current is None or current[0] <= committed or current[1].done():
            task = asyncio.ensure_future(self.state.read(timeout=self.config.timeout))
            current = self._read = (time.monotonic(), task)
        try:
            record = await asyncio.shield(current[1])
        except (EtcdError, TimeoutError) as exc:
            self.last_error = f"sync record: {exc}"
            raise Unconfirmed(
                f"committed in {self.region}, but the global control etcd did not answer "
                f"whether a standby is synchronous ({exc}): outcome unknown"
            ) from None
        if record is not None and record.degraded:
            self._degraded = (current[0], record)  # serves `_degrade` of earlier commits too
        return record

    async def _degrade(self, revision: int, epoch: int, committed: float) -> None:
        """Record `sync: none` for this region's epoch before acknowledging a write the standby
        did not confirm, or find it recorded by a read sent after the commit. One at a time: a
        read or write that established `none` after this write committed serves it too."""
        async with self._degrade_lock:
            done = self._degraded
            if done is not None and done[0] > committed and done[1].names(epoch, self.region):
                return
            if self.confirms(self.standby, revision, epoch):
                return
            try:
                sent = time.monotonic()
                current = await self.state.read(timeout=self.config.timeout)
                for _ in range(4):
                    if current is not None and (
                        current.epoch > epoch
                        or (current.epoch == epoch and current.region != self.region)
                    ):
                        raise Unconfirmed(
                            f"epoch {current.epoch} ({current.region}) has begun: this write "
                            f"committed in {self.region} but its standby did not confirm it"
                        )
                    if (
                        current is not None
                        and current.names(epoch, self.region)
                        and current.degraded
                    ):
                        self._degraded = (sent, current)
                        return
                    new = SyncRecord.none(
                        epoch,
                        self.region,
                        by=self.name,
                        reason=f"{self.standby} did not confirm revision {revision} within "
                        f"{self.config.timeout * 1000:.0f} ms",
                    )
                    sent = time.monotonic()
                    ok, now = await self.state.swap(current, new, timeout=self.config.timeout)
                    if ok and now is not None:
                        self._degraded = (sent, now)
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
                    current = now
                    if self.confirms(self.standby, revision, epoch):
                        return
            except (EtcdError, TimeoutError) as exc:
                self.last_error = f"sync record: {exc}"
                raise Unconfirmed(
                    f"committed in {self.region} at revision {revision}; its synchronous "
                    f"standby did not confirm it and `sync: none` could not be recorded ({exc}): "
                    "outcome unknown"
                ) from None
            raise Unconfirmed(f"the sync record kept changing while degrading revision {revision}")

    # ---- the keeper (every replica of the writable region): the standby synchronous again ---

    async def keep(
        self,
        *,
        epoch: Callable[[], int | None],
        head_revision: Callable[[], Awaitable[int]],
        every: float = KEEP_EVERY,
    ) -> None:
        """While `epoch()` gives this region's writable epoch (None: not leading or not
        writable), make the standby synchronous whenever it is not and has caught up (the
        three steps of `haplane.store.sync_state`). Runs until cancelled."""
        backoff_until = 0.0
        while True:
            await asyncio.sleep(every)
            e = epoch()
            now = time.monotonic()
            if e is None or now < max(backoff_until, self._hold_until):
                continue
            try:
                if not await self._make_synchronous(e, head_revision):
                    backoff_until = time.monotonic() + 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an etcd outage here or there: try again later
                self.last_error = f"keeping sync: {exc}"
                backoff_until = time.monotonic() + 1.0
                if time.monotonic() - self._logged_error_at > 30:
                    self._logged_error_at = time.monotonic()
                    log.warning(json.dumps({"msg": "sync keeper", "error": repr(exc)}))

    async def _make_synchronous(
        self, epoch: int, head_revision: Callable[[], Awaitable[int]]
    ) -> bool:
        """One pass; False when the standby did not make it (back off)."""
        seen = self.record  # every replica keeps: no read while its view says all is well
        if seen is not None and seen.names(epoch, self.region) and seen.standby == self.standby:
            return True
        record = await self.state.read(timeout=1.0)
        if record is not None and (
            record.epoch > epoch or (record.epoch == epoch and record.region != self.region)
        ):
            return True  # not ours to keep
        # (a record naming another region, no longer this one's partner after a topology
        # change, is made right by the same three steps)
        if (
            record is not None
            and record.names(epoch, self.region)
            and record.standby == self.standby
        ):
            return True
        x = self.standby
        if self._promoted_at is not None:
            # it was synchronous and degraded again: hold off, longer each time it happens soon
            # after a promotion (a standby too slow for the timeout would stall writes by
            # `timeout` at every round)
            soon = time.monotonic() - self._promoted_at < 10.0
            self._flap = min(30.0, max(1.0, self._flap * 2)) if soon else 0.0
            self._promoted_at = None
            if self._flap:
                self._hold_until = time.monotonic() + self._flap
                return True
        if not self._streaming(x, epoch):
            return True
        # first, without changing anything: a standby that cannot apply the head now (paused,
        # cut off, far behind) would only make writes wait for it and then cancel it
        if not await self._wait(await head_revision(), epoch):
            return False
        pending = SyncRecord.catching_up(
            epoch, self.region, x, by=self.name, reason=f"{x} is catching up to be synchronous"
        )
        ok, now = await self.state.swap(record, pending, timeout=1.0)
        if not ok or now is None:
            return False
        head = await head_revision()
        deadline = time.monotonic() + CATCH_UP_LIMIT
        while not await self._wait(head, epoch):
            if time.monotonic() > deadline:
                cancel = SyncRecord.none(
                    epoch,
                    self.region,
                    by=self.name,
                    reason=f"{x} did not apply revision {head} within {CATCH_UP_LIMIT:.0f}s",
                )
                await self.state.swap(now, cancel, timeout=1.0)
                return False
        sync = SyncRecord.synchronous(
            epoch, self.region, x, by=self.name, reason=f"{x} applied every revision up to {head}"
        )
        ok, _ = await self.state.swap(now, sync, timeout=1.0)
        if ok:
            self._promoted_at = time.monotonic()
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

    def _streaming(self, standby: str, epoch: int) -> bool:
        """Does `standby` follow this region in `epoch`, streaming?"""
        a = self.applied.get(standby)
        return (
            a is not None
            and a.source == self.region
            and a.epoch == epoch
            and a.state == "streaming"
            and a.cluster_id == self.cluster_id()
        )

    def status(self) -> dict[str, object]:
        rec = self.record
        return {
            "standby": self.standby,
            "timeoutMs": round(self.config.timeout * 1000),
            "strict": self.config.strict,
            "record": rec.as_dict() if rec else None,
            "says": describe(rec),
            "applied": {
                s: {"source": a.source, "epoch": a.epoch, "revision": a.revision, "state": a.state}
                for s, a in self.applied.items()
            },
            "confirming": self.unconfirmed_since is None,
            "waiting": len(self._waiters),
            "lastError": self.last_error,
        }
