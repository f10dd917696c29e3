"""The failover controller beside a gate instance: observe -> decide -> act.

Layer: gate. Talks to the global control etcd (its own client) and, when it leads, to every
regional etcd (one client each, `region_etcd`: only the fence key `/haplane/fence` there); reads
this gate's pool health from the forwarder it runs beside. Decisions are
`haplane.gate.failover.decide`.

Every instance:
- **reports** (vantage point): every `report_interval` it writes, under `vantage/<gate>`, whether
  it sees each region healthy (some balancer of the region passes its `/healthz/region` check)
  and for how long that has held;
- **campaigns**: one instance leads at a time, holding `controller/leader` with an etcd lease
  (TTL `lease_ttl` whole seconds, etcd's minimum being 1.5 x its election timeout rounded up;
  renewed every quarter of it). Instances on the active region's site stand back: they
  campaign only after 2 s without a leader, and a leader there steps down (once the epoch is
  writable and an instance on another site reports), so that losing the active region never
  also costs the leader's lease time. Leadership only avoids duplicate work: every action is a
  transaction guarded by the epoch, so a deposed leader that has not noticed yet cannot undo
  or double a change;
- **notes when it first observed each epoch** (monotonic, its own clock; followers too, as
  they read the record while campaigning).

The leader, every `tick`:
- reads all reports; a report's age is the time since the leader saw it change (reports it has
  not seen change since it took over count as stale: a dead gate's last word is no vote);
- reads the active record and, when the topology enables failback, the operators' failback
  setting (`GlobalState.failback_setting`; unreadable counts as suspended). Hysteresis
  (`min_interval`) and `failback_after` count from when this instance first observed the
  current epoch, never from the record's `since` (another machine's wall clock): an instance
  that sees an epoch for the first time waits the full interval from then. The fence wait
  counts from when this leader first saw the epoch unwritable (monotonic, safety);
- reads every region's replication report (`GlobalState.replication_reports`): which standby
  to promote is decided on how much of the active region it applied (see `failover.decide`);
- decides, and acts. A failback between replicated regions is a planned switchover
  (`haplane.store.switchover.planned_switchover`: freeze the old region with a cut marker,
  wait until the new one applied it, promote, commit writable, reverse the stream); when it is
  refused nothing switched, and automatic failback rests for `failback_after`. A failover (or a
  failback without replication) commits epoch + 1 naming the new region, not yet
  writable, then at once steps every other region's fence key down to the new epoch
  (`RegionFences.freeze_others`: `active:` to `frozen:`, the rest to `standby:`) where its etcd
  answers within `fence_timeout` (a dead or cut-off region is covered by the time-based fence,
  and frozen by a reconcile pass when it answers again); an unfence must set the new
  region's key to `active:<region>@<epoch>` (`RegionFence.activate`) before it makes the
  record writable: when that region's etcd does not answer, the epoch stays unwritable and the
  next tick tries again. Until then the new region's replicator keeps copying whatever the old
  region still serves; once its key is active it can apply nothing more, and what it had
  applied is recorded as the epoch's cut (`switchover.record_unplanned_cut`).

The leader publishes a failover it cannot make (`Decision.blocked`: the active region is down
and nothing may move) under `controller/blocked` (`GlobalState.publish_failover_block`), and
its end without a failover: once per start, change of cause or end, after the new state has
held for `block_settle` (a cause that flickers is not a story), guarded by its leader key as
it created it (its create revision: a deposed leader's word is not written). A task of its own
writes, beside the decisions: a tick only hands it the state to publish, so a slow or failing
control etcd never delays a decision; one write at a time, the latest state first, and after a
failure (or a refused guard) the next try waits `BLOCK_RETRY_FIRST`, doubled up to
`BLOCK_RETRY_MAX`. A leader that takes over reads what the last one published first, so it
says nothing again (and keeps when the block started), and judges only once it has led for
`stale_after` (until then it counts every report stale). The supervisor's platform watch
makes Events of it (`haplane.local.platform_watch`): one writer, whichever gate leads.

The leader also reconciles every fence key with the record (`RegionFences.reconcile_all`) at
once when it takes the lead and every `fence_interval` after: a region that comes back with a
stale `active:` key is frozen, missing keys are set (the writable active region's too, never
from `frozen:`), standbys follow the epoch. A pass runs
beside the decisions (a dead region's timeout never delays a failover) and is cancelled while
an action runs, so no pass ever writes from a record older than the action's. Every key
change it sees is one `fence_key` log line; `report()` shows the keys as last read. Without
`region_etcd` it cannot set a promoted region's key, so it never unfences (the gate's config
requires `region_etcd`).

When the global control etcd has no quorum nobody can report, lead or switch: the controller
waits, and the active region's replicas fence themselves (see `haplane.api.fencing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from haplane.store import (
    ActiveRegion,
    Compare,
    EtcdClient,
    EtcdError,
    EtcdTls,
    FenceChanged,
    FenceRead,
    GlobalState,
    Op,
    RegionFences,
    StaleEpoch,
    SyncRecord,
    prefix_end,
)
from haplane.store.global_state import (
    FailbackSetting,
    FailoverBlock,
    HeldKey,
    ReplicationReport,
)
from haplane.store.switchover import (
    SwitchoverRefused,
    planned_switchover,
    record_unplanned_cut,
)

from .api_recorder import ApiRecorder
from .events import GateEvent
from .failover import Decision, RegionView, Report, Settings, Snapshot, decide
from .forwarder import Forwarder
from .health import UpstreamState
from .operations import Operations, record_automatic

log = logging.getLogger("haplane.gate")

# a block is the (epoch, region, code) of a blocked decision; None: not blocked
BlockKey = tuple[int, str, str] | None
BLOCK_RETRY_FIRST = 0.5  # seconds before a block that failed to publish is tried again
BLOCK_RETRY_MAX = 8.0  # doubled after each failure, up to this

CAMPAIGN_EVERY = 0.2  # seconds between attempts to lead: a dead leader's key is noticed soon
BACKUP_AFTER = 2.0  # a gate on the active region's site leads only after this long leaderless


@dataclass(frozen=True)
class ControllerSettings:
    gate: str  # this instance's name (a vantage point)
    etcd: list[str]  # the global control etcd
    prefix: str
    decision: Settings
    site: str | None = None  # the site it runs on
    vantage_sites: dict[str, str] = field(default_factory=dict)  # gate -> site
    report_interval: float = 0.2
    tick: float = 0.1
    lease_ttl: int = 1
    startup_grace: float = 10.0
    region_etcd: dict[str, list[str]] = field(default_factory=dict)  # region -> its etcd
    fence_interval: float = 0.5  # the leader reconciles every fence key this often
    fence_timeout: float = 0.5  # for each call to a regional etcd
    tls: EtcdTls | None = None  # the client certificate for every etcd above
    # records automatic switches through the API with the controller's ServiceAccount
    recorder: ApiRecorder | None = None
    block_settle: float = 1.0  # a failover block (or its end) is published once it held this long


class FailoverController:
    def __init__(self, forwarder: Forwarder, settings: ControllerSettings) -> None:
        self.forwarder = forwarder
        self.settings = settings
        self.prefix = settings.prefix.encode()
        self.vantage_prefix = self.prefix + b"vantage/"
        self.leader_key = self.prefix + b"controller/leader"
        self.leading = False
        self.leader: str | None = None
        self.last_decision: Decision | None = None
        self.last_action: dict[str, Any] | None = None
        self.error: str | None = None
        self._changed: dict[str, tuple[bool, float]] = {}  # region -> (healthy, since; monotonic)
        self._seen: dict[bytes, tuple[int, float | None]] = {}  # report key -> (mod rev, seen at)
        self._fenced_seen: dict[int, float] = {}  # epoch -> first seen unwritable (monotonic)
        self._epoch_seen: dict[int, float] = {}  # epoch -> first observed (monotonic)
        self.failback: FailbackSetting | None = None  # as last read (when failback is on)
        self._fences: RegionFences | None = None
        self.fence_keys: dict[str, FenceRead | None] = {}  # as last read; None: no answer
        self._fence_known: dict[str, FenceRead] = {}  # the last value each key was read with
        self._fence_keys_at: float | None = None
        self._fence_pass: asyncio.Task[None] | None = None
        self._acting = False
        self._fence_wake = asyncio.Event()
        self._unfence_deferred: tuple[str, int] | None = None  # (region, epoch) last logged
        self._tasks: list[asyncio.Task[None]] = []
        self._recordings: set[asyncio.Task[None]] = set()
        self._client: EtcdClient | None = None
        self._started = time.monotonic()
        self._seen_healthy: set[str] = set()
        self._active_region: str | None = None
        self._writable = True
        self._fresh_reporters: set[str] = set()
        self._changed_now = asyncio.Event()
        self.replication: dict[str, ReplicationReport] = {}  # as last read, by target region
        self.sync: SyncRecord | None = None  # the sync record as last read (sync pairs only)
        self._failback_refused: tuple[float, str] | None = None  # (monotonic, why)
        self.operations = Operations(self)  # operators' approved Switchovers
        # the block (or its end) the decisions say now: (key, since: monotonic, wall clock)
        self._block_pending: tuple[BlockKey, float, float] | None = None
        # the last that held for `block_settle`, handed to the publisher: (key, what to write)
        self._block_wanted: tuple[BlockKey, FailoverBlock] | None = None
        self._block_wake = asyncio.Event()
        self._block_read = False  # has this leader read what the last one published?
        self._block_published: FailoverBlock | None = None  # as this leader read or wrote it
        self.block_error: str | None = None  # the last publish's failure (None: it worked)
        self._led_since = 0.0  # monotonic
        self._leader_created = 0  # the create revision of this leader's key
        forwarder.subscribe(self._on_gate_event)

    # ---- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        tls = self.settings.tls
        self._client = EtcdClient(self.settings.etcd, timeout=0.5, tls=tls)
        if self.settings.region_etcd:
            t = self.settings.fence_timeout
            self._fences = RegionFences(
                {
                    r: EtcdClient(eps, timeout=t, tls=tls)
                    for r, eps in self.settings.region_etcd.items()
                }
            )
        self._tasks = [
            asyncio.create_task(self._report_loop(), name="vantage report"),
            asyncio.create_task(self._campaign_loop(), name="controller campaign"),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._recordings]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        if self._fences is not None:
            await self._fences.close()

    # ---- what the operations executor uses (haplane.gate.operations.Host) -----------------

    @property
    def gate(self) -> str:
        return self.settings.gate

    @property
    def decision(self) -> Settings:
        return self.settings.decision

    @property
    def regions(self) -> set[str]:
        return set(self.settings.region_etcd) or set(self.settings.decision.priority)

    @property
    def fences(self) -> RegionFences | None:
        return self._fences

    def paused(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._fence_writes_paused()

    async def freeze_others(self, record: ActiveRegion) -> None:
        await self._freeze_others(record)

    def log(self, event: str, **fields: Any) -> None:
        self._log(event, **fields)

    def note_committed(self, epoch: int, *, writable: bool) -> None:
        """An epoch this controller just committed: counted from now (hysteresis), and for an
        unwritable one the fence wait from now too."""
        committed = time.monotonic()
        if not writable:
            self._fenced_seen[epoch] = committed
        self._epoch_seen = {epoch: committed}

    def _log(self, event: str, **fields: Any) -> None:
        log.info(
            json.dumps(
                {
                    "component": self.settings.gate,
                    "event": event,
                    **fields,
                },
                default=str,
            )
        )

    # ---- observe: this gate's view -------------------------------------------------------

    def view(self) -> dict[str, RegionView]:
        """This gate's vote on every region. Until it has seen a region healthy once, a gate
        that started less than `startup_grace` ago does not vote it down: at start-up the
        balancers are not ready yet, and a region that merely started later than another
        must not be failed away from."""
        now = time.monotonic()
        out = {}
        for region in self.settings.decision.priority:
            pool = self.forwarder.pools.get(region)
            healthy = pool is not None and any(
                u.state == UpstreamState.UP for u in pool.upstreams.values()
            )
            if healthy:
                self._seen_healthy.add(region)
            elif (
                region not in self._seen_healthy
                and now - self._started < self.settings.startup_grace
            ):
                continue
            was = self._changed.get(region)
            if was is None or was[0] != healthy:
                self._changed[region] = was = (healthy, now)
                self._log("vantage_view", region=region, healthy=healthy)
            out[region] = RegionView(healthy, now - was[1])
        return out

    async def _report_loop(self) -> None:
        assert self._client is not None
        key = self.vantage_prefix + self.settings.gate.encode()
        while True:
            view = self.view()
            body = {
                "gate": self.settings.gate,
                "at": time.time(),
                "regions": {
                    r: {"healthy": v.healthy, "heldFor": round(v.held_for, 3)}
                    for r, v in view.items()
                },
            }
            with contextlib.suppress(EtcdError):
                await self._client.put(key, json.dumps(body).encode(), timeout=0.5)
            # the next report after `report_interval`, or at once when an upstream changes
            self._changed_now.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.report_interval):
                    await self._changed_now.wait()

    def _on_gate_event(self, event: GateEvent) -> None:
        """An upstream of a region changed state: note the time exactly (not at the next
        report) and report now."""
        if event.event == "upstream_state" and event.pool in self.settings.decision.priority:
            self.view()
            self._changed_now.set()

    # ---- leadership ----------------------------------------------------------------------

    def _defers(self) -> bool:
        """Should this instance leave leadership to others? Yes when it sits on the active
        region's site (and is not the only vantage point): losing that site must not also
        take the controller's leader, whose lease would first have to run out (1 s or more,
        renewed to full length by a control-etcd election) before anyone could fail over."""
        return (
            self.settings.site is not None
            and self._active_region == self.settings.site
            and len(self.settings.decision.vantage_points) > 1
        )

    async def _campaign_loop(self) -> None:
        assert self._client is not None
        client = self._client
        state = GlobalState(client, prefix=self.prefix)
        absent_since: float | None = None
        while True:
            lease = 0
            try:
                active = await state.read()
                self._note_epoch(active)
                self._active_region = active.region if active is not None else None
                kv = await client.get(self.leader_key)
                now = time.monotonic()
                if kv is not None:
                    self.leader, absent_since = kv.value.decode(), None
                else:
                    absent_since = absent_since or now
                    if not self._defers() or now - absent_since >= BACKUP_AFTER:
                        lease = await client.lease_grant(self.settings.lease_ttl)
                        r = await client.txn(
                            [Compare(self.leader_key, "create", "=", 0)],
                            [Op("put", self.leader_key, self.settings.gate.encode(), lease=lease)],
                            [Op("get", self.leader_key)],
                        )
                        if r.succeeded:
                            absent_since = None
                            await self._lead(client, lease, r.revision)
                        else:
                            self.leader = r.results[0][0].value.decode() if r.results[0] else None
            except asyncio.CancelledError:
                if lease:
                    with contextlib.suppress(EtcdError, asyncio.CancelledError):
                        await asyncio.shield(client.lease_revoke(lease, timeout=0.3))
                raise
            except EtcdError as exc:
                self.error = str(exc)
            except Exception as exc:  # a bug: log it, keep campaigning
                self.error = repr(exc)
                log.exception("failover controller failed")
            if self.leading:
                self.leading = False
                self._log("controller_follower")
            if lease:
                with contextlib.suppress(EtcdError):
                    await client.lease_revoke(lease, timeout=0.3)
            await asyncio.sleep(CAMPAIGN_EVERY)

    async def _lead(self, client: EtcdClient, lease: int, created: int) -> None:
        """Lead while the lease is known to live: until a renewal says it expired, or no
        renewal has succeeded for a whole TTL. Renewals failing for a moment (the global etcd
        electing a leader, which renews every lease anyway) do not end the leadership: a
        leader that stepped down there would leave the key to expire before anyone else
        could lead, which is the slowest outcome. `created`: the leader key's create
        revision (the campaign's transaction)."""
        self.leading, self.leader, self.error = True, self.settings.gate, None
        self._seen.clear()
        self._fenced_seen.clear()
        self._block_pending = self._block_wanted = self._block_published = None
        self._block_read, self.block_error = False, None
        self._block_wake.clear()
        self._led_since = time.monotonic()
        self._leader_created = created
        self._log("controller_leader")
        work = asyncio.create_task(self._decide_loop(client), name="controller decide")
        publishing = asyncio.create_task(self._block_loop(client), name="controller blocks")
        fencing = None
        if self._fences is not None:
            fencing = asyncio.create_task(self._fence_loop(client), name="controller fences")
        try:
            renew_every = self.settings.lease_ttl / 4
            deadline = time.monotonic() + self.settings.lease_ttl
            while not work.done():
                await asyncio.sleep(renew_every)
                sent = time.monotonic()
                try:
                    ttl = await client.lease_keepalive(lease, timeout=renew_every)
                except EtcdError as exc:
                    self.error = str(exc)
                    if time.monotonic() >= deadline:
                        return
                    continue
                if ttl <= 0:
                    return
                deadline = sent + ttl
                if self._defers() and self._writable and self._others_report():
                    self._log("controller_stepping_down", reason="on the active region's site")
                    return
        finally:
            tasks = [t for t in (work, publishing, fencing) if t is not None]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- decide and act (the leader) -----------------------------------------------------

    async def _observe(self, state: GlobalState, client: EtcdClient) -> Snapshot:
        now, wall = time.monotonic(), time.time()
        kvs, _ = await client.range(self.vantage_prefix, prefix_end(self.vantage_prefix))
        reports: dict[str, Report] = {}
        for kv in kvs:
            seen = self._seen.get(kv.key)
            if seen is None:
                seen = (kv.mod_revision, None)  # unseen change: stale until it changes
            elif seen[0] != kv.mod_revision:
                seen = (kv.mod_revision, now)
            self._seen[kv.key] = seen
            if seen[1] is None:
                continue
            try:
                body = json.loads(kv.value)
                regions = {
                    r: RegionView(bool(v["healthy"]), float(v["heldFor"]))
                    for r, v in body["regions"].items()
                }
                reports[str(body["gate"])] = Report(str(body["gate"]), now - seen[1], regions)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        active = await state.read()
        # counted from after the read answered: the epoch was committed before that, never
        # after (a time taken before the calls could predate the commit and unfence early)
        seen_at = time.monotonic()
        self._active_region = active.region if active is not None else None
        self._writable = active is None or active.writable
        self._fresh_reporters = {
            g for g, r in reports.items() if r.age <= self.settings.decision.stale_after
        }
        fenced_for = 0.0
        if active is not None and not active.writable:
            if active.epoch not in self._fenced_seen:
                self._fenced_seen = {active.epoch: seen_at}  # only the current epoch matters
            first = self._fenced_seen[active.epoch]
            fenced_for = seen_at - first
        since = seen_at - self._note_epoch(active, seen_at) if active is not None else 0.0
        suspended, note = await self._failback_suspended(state)
        refused = self._failback_refused
        if not suspended and refused is not None:
            if time.monotonic() - refused[0] < self.settings.decision.failback_after:
                suspended, note = True, f"the last planned failback was refused: {refused[1]}"
            else:
                self._failback_refused = None
        # on error: decide on the reports as last read (a slow read must not stall a failover)
        with contextlib.suppress(EtcdError):
            self.replication = await state.replication_reports()
        # no suppression: a failover in sync mode must know who is synchronous
        sync = await state.sync.read() if self.settings.decision.sync_pairs else None
        self.sync = sync
        return Snapshot(
            active,
            reports,
            since,
            fenced_for,
            suspended,
            note,
            replication=self.replication,
            now=time.time(),
            sync=sync,
            observed_at=wall,
        )

    def _note_epoch(self, active: ActiveRegion | None, at: float | None = None) -> float:
        """When this instance first observed `active`'s epoch (monotonic; `at`, default now,
        if this is the first time). Hysteresis and failback count from here: the record's
        `since` is another machine's wall clock."""
        if active is None:
            return at if at is not None else time.monotonic()
        first = self._epoch_seen.get(active.epoch)
        if first is None:
            first = at if at is not None else time.monotonic()
            self._epoch_seen = {active.epoch: first}  # only the current epoch matters
        return first

    async def _failback_suspended(self, state: GlobalState) -> tuple[bool, str]:
        """Have operators suspended automatic failback? Read only when the topology enables
        failback; a setting that cannot be read counts as suspended (failback is never
        urgent, and the operator's word may be in it)."""
        if not self.settings.decision.failback:
            return False, ""
        try:
            setting = await state.failback_setting()
        except EtcdError as exc:
            self.failback = None
            return True, f"the failback setting cannot be read: {exc}"
        self.failback = setting
        if setting.enabled:
            return False, ""
        return True, f"by {setting.by} since {setting.since}: {setting.reason}"

    async def _decide_loop(self, client: EtcdClient) -> None:
        state = GlobalState(client, prefix=self.prefix)
        while True:
            t0 = time.monotonic()
            try:
                snapshot = await self._observe(state, client)
                decision = decide(snapshot, self.settings.decision)
                self._note(decision)
                self._note_block(decision, snapshot.active)
                if decision.action != "none":
                    await self._act(state, decision, snapshot.active)
                await self.operations.advance(state, client)
            except EtcdError as exc:
                self.error = str(exc)
            except Exception as exc:  # a bug: say so, and keep deciding
                self.error = repr(exc)
                log.exception("failover controller: deciding failed")
            await asyncio.sleep(max(0.0, t0 + self.settings.tick - time.monotonic()))

    def _note(self, decision: Decision) -> None:
        last = self.last_decision
        if last is None or (last.action, last.down, last.healthy, last.to, last.blocked) != (
            decision.action,
            decision.down,
            decision.healthy,
            decision.to,
            decision.blocked,
        ):
            self._log(
                "controller_decision",
                action=decision.action,
                to=decision.to,
                epoch=decision.epoch,
                down=decision.down,
                healthy=decision.healthy,
                blocked=decision.blocked,
                reason=decision.reason,
            )
        self.last_decision = decision

    def _note_block(self, d: Decision, active: ActiveRegion | None) -> None:
        """Hand the decision's block, or its end, to the publisher (`_block_loop`) once it
        has held for `block_settle`. No I/O: a tick never waits for the publisher."""
        now = time.monotonic()
        if d.action in ("failover", "failback"):
            self._block_pending = None  # ended by the switch: the new epoch says so
            return
        if active is None or d.epoch is None:
            return
        if now - self._led_since < self.settings.decision.stale_after:
            return  # every report counts as stale until seen to change: not judged yet
        want: BlockKey = (d.epoch, active.region, d.blocked) if d.blocked else None
        pending = self._block_pending
        if pending is None or pending[0] != want:
            pending = self._block_pending = (want, now, time.time())
        if now - pending[1] < self.settings.block_settle:
            return
        if self._block_wanted is not None and self._block_wanted[0] == want:
            return  # handed over already
        block = FailoverBlock(
            active.region,
            d.epoch,
            d.blocked,
            d.reason,
            _rfc3339(pending[2]),
            f"controller:{self.settings.gate}",
        )
        self._block_wanted = (want, block)
        self._block_wake.set()

    async def _block_loop(self, client: EtcdClient) -> None:
        """Publish what the decisions hand over, one write at a time and always the latest
        wanted; after a failure wait (`BLOCK_RETRY_FIRST`, doubled up to `BLOCK_RETRY_MAX`),
        then try again with whatever is wanted by then. Failures are `block_error`, never the
        decisions' `error`."""
        state = GlobalState(client, prefix=self.prefix)
        retry = 0.0
        while True:
            await self._block_wake.wait()
            self._block_wake.clear()
            wanted = self._block_wanted
            if wanted is None:
                continue
            try:
                done = await self._publish_block(state, *wanted)
            except EtcdError as exc:
                done, self.block_error = False, str(exc)
            except Exception as exc:  # a bug: say so, and keep publishing
                done, self.block_error = False, repr(exc)
                log.exception("failover controller: publishing a block failed")
            if done:
                retry = 0.0
                continue
            retry = min(max(2 * retry, BLOCK_RETRY_FIRST), BLOCK_RETRY_MAX)
            await asyncio.sleep(retry)
            self._block_wake.set()

    async def _publish_block(
        self, state: GlobalState, want: BlockKey, block: FailoverBlock
    ) -> bool:
        """Write `block` unless what was published says the same already (this leader's, or
        the last leader's as read when this one took over), with when the block started:
        kept from the published block of the same epoch and region. False: not written (the
        guard refused: this gate no longer holds the leader key it created)."""
        if not self._block_read:
            self._block_published = await state.failover_block()
            self._block_read = True
        published = self._block_published
        if _block_key(published) == want:
            self.block_error = None
            return True  # nothing new (or nothing was blocked)
        if (
            published is not None
            and published.blocked is not None
            and (published.epoch, published.region) == (block.epoch, block.region)
        ):
            block = replace(block, started=published.started or published.since)
        elif block.blocked is not None:
            block = replace(block, started=block.since)  # a new block
        holder = HeldKey(self.leader_key, self.settings.gate.encode(), self._leader_created)
        if not await state.publish_failover_block(block, leader=holder):
            self.block_error = "not written: this gate no longer holds the leader key it created"
            return False
        self._block_published, self.block_error = block, None
        self._log(
            "failover_blocked" if block.blocked else "failover_unblocked",
            region=block.region,
            epoch=block.epoch,
            blocked=block.blocked,
            reason=block.reason,
            since=block.since,
            started=block.started,
        )
        return True

    async def _act(self, state: GlobalState, d: Decision, active: ActiveRegion | None) -> None:
        assert d.epoch is not None and active is not None
        by = f"controller:{self.settings.gate}"
        async with self._fence_writes_paused():
            try:
                if d.action == "unfence":
                    if not await self._activate_fence(active):
                        return
                    if not await self._record_cut(state, active):
                        return  # next tick: a partial copy's GC pause must precede writes
                    record = await state.unfence(d.epoch)
                    self._log("unfenced", region=record.region, epoch=record.epoch)
                elif (
                    d.action == "failback"
                    and d.to is not None
                    and self.settings.decision.pair(active.region, d.to)[0]
                    and self._fences is not None
                ):
                    planned = await self._planned(state, active, d.to, by, d.reason)
                    if planned is None:
                        return
                    record = planned
                    await self._freeze_others(record)  # a third region follows the new one
                else:
                    assert d.to is not None
                    rep = self.replication.get(d.to)
                    # counted back from when the reports were read, not from now: the
                    # reads after them (record, replication, sync) may have taken a while
                    now = d.observed_at if d.observed_at is not None else time.time()
                    record = await state.switch(
                        d.to,
                        expected_epoch=d.epoch,
                        by=by,
                        reason=d.reason,
                        replication={d.to: rep.as_dict()} if rep is not None else None,
                        sync_revision=d.sync_revision,
                        sync_mode=self.settings.decision.synchronous(active.region),
                        detected=_ago(now, d.detected_ago),
                        agreed=_ago(now, d.agreed_ago),
                    )
                    committed = time.monotonic()  # the commit is behind us
                    self._fenced_seen[record.epoch] = committed
                    self._epoch_seen = {record.epoch: committed}
                    self._log(
                        "committed",
                        action=d.action,
                        region=record.region,
                        epoch=record.epoch,
                        previous=active.region,
                        reason=d.reason,
                        detected=record.detected,
                        agreed=record.agreed,
                    )
                    await self._freeze_others(record)
            except StaleEpoch as exc:
                self._log("action_lost", action=d.action, reason=str(exc))
                return
        if d.action != "unfence":  # for review, in the background: the API may take seconds
            task = asyncio.create_task(
                record_automatic(
                    self,
                    state.client,
                    action=d.action,
                    record=record,
                    previous=active,
                    reason=d.reason,
                    recorder=self.settings.recorder,
                ),
                name=f"record epoch {record.epoch}",
            )
            self._recordings.add(task)
            task.add_done_callback(self._recordings.discard)
        self.last_action = {"action": d.action, "region": record.region, "epoch": record.epoch}

    async def _planned(
        self, state: GlobalState, active: ActiveRegion, to: str, by: str, reason: str
    ) -> ActiveRegion | None:
        """A planned failback (freeze, catch up, switch, reverse); None when refused (nothing
        switched: failback rests for `failback_after`)."""
        assert self._fences is not None
        try:
            done = await planned_switchover(
                state,
                self._fences,
                active,
                to,
                by=by,
                reason=f"{reason} (planned failback)",
                sync=self.settings.decision.is_sync_pair(active.region, to),
            )
        except SwitchoverRefused as exc:
            self._failback_refused = (time.monotonic(), str(exc))
            self.error = str(exc)
            self._log("failback_refused", region=to, epoch=active.epoch, reason=str(exc))
            return None
        committed = time.monotonic()
        self._epoch_seen = {done.record.epoch: committed}
        self._log(
            "committed",
            action="failback",
            region=done.record.region,
            epoch=done.record.epoch,
            previous=active.region,
            reason=reason,
            planned=True,
            cut=done.cut.as_dict(),
            caught_up_seconds=round(done.caught_up_seconds, 3),
            warnings=list(done.warnings),
        )
        return done.record

    async def _record_cut(self, state: GlobalState, record: ActiveRegion) -> bool:
        """After an unplanned promotion made `record.region`'s key active: record how far its
        copy of the old region reached (and pause its garbage collector when that copy is
        partial). False when that could not be written: the unfence waits for it."""
        if self._fences is None or record.region not in self._fences.fences:
            return True
        rep = self.replication.get(record.region)
        try:
            cut = await record_unplanned_cut(
                state,
                self._fences[record.region].client,
                record,
                lag_seconds=rep.lag_answered if rep is not None else None,
                timeout=self.settings.fence_timeout,
            )
        except EtcdError as exc:
            self._log("cut_not_recorded", epoch=record.epoch, reason=str(exc))
            return False
        self._log("cut", **cut.as_dict())
        return True

    # ---- the data fence: one key in each regional etcd (the leader) ----------------------

    @contextlib.asynccontextmanager
    async def _fence_writes_paused(self) -> AsyncIterator[None]:
        """While an action runs, no reconcile pass writes: one in flight is cancelled (it may
        hold a record older than the action's), and the next starts at once after."""
        self._acting = True
        try:
            task = self._fence_pass
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task})
            yield
        finally:
            self._acting = False
            self._fence_wake.set()

    async def _freeze_others(self, record: ActiveRegion) -> None:
        """Freeze every region but `record.region` whose etcd answers in time (best effort)."""
        if self._fences is not None:
            reads = await self._fences.freeze_others(record, timeout=self.settings.fence_timeout)
            self._note_fences(reads, "freeze", record.epoch)

    async def _activate_fence(self, record: ActiveRegion) -> bool:
        """Before unfencing `record`: set its region's key to `active:<region>@<epoch>`.
        False (and logged once): that key could not be set, so the record must stay
        unwritable for now."""
        fence = self._fences.fences.get(record.region) if self._fences is not None else None
        if fence is None:
            why = f"no etcd is configured for region {record.region}: its fence key cannot be set"
        else:
            # The other regions were stepped down right after the commit, and reconcile passes
            # freeze any that answers only later: waiting here for one that does not answer (a
            # partition) would add its timeout to every unfence (measured: +0.5 s).
            try:
                activated = await fence.activate(record.epoch, timeout=self.settings.fence_timeout)
            except (EtcdError, FenceChanged) as exc:
                why = f"{record.region}'s fence key could not be set: {exc}"
            else:
                self._unfence_deferred = None
                self._note_fences({record.region: activated}, "activate", record.epoch)
                return True
        self.error = why
        if (record.region, record.epoch) != self._unfence_deferred:
            self._unfence_deferred = (record.region, record.epoch)
            self._log("unfence_deferred", region=record.region, epoch=record.epoch, reason=why)
        return False

    async def _fence_loop(self, client: EtcdClient) -> None:
        """Reconcile every fence key with the record: at once, then every `fence_interval`
        (and at once after each action). Each pass is a task an action can cancel."""
        state = GlobalState(client, prefix=self.prefix)
        while True:
            if not self._acting:
                task = asyncio.create_task(self._reconcile_fences(state), name="fence pass")
                self._fence_pass = task
                try:
                    await asyncio.wait({task})
                finally:
                    if not task.done():  # this loop was cancelled
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)
                    self._fence_pass = None
                if not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if isinstance(exc, EtcdError):
                        self.error = str(exc)
                    else:  # a bug: say so, and keep reconciling
                        self.error = repr(exc)
                        log.error("failover controller: fence pass failed", exc_info=exc)
            self._fence_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.fence_interval):
                    await self._fence_wake.wait()

    async def _reconcile_fences(self, state: GlobalState) -> None:
        assert self._fences is not None
        record = await state.read()
        if record is None:
            return
        # activate=True: a writable record's region whose key is missing or older (lost, or
        # an `up` whose one attempt failed) gets it back; never from `frozen:`, and a record
        # older than a switch cannot do it (the switch's step-down moved the key on first)
        reads = await self._fences.reconcile_all(
            record, activate=True, timeout=self.settings.fence_timeout
        )
        self._note_fences(reads, "reconcile", record.epoch)

    def _note_fences(self, reads: dict[str, FenceRead | None], source: str, epoch: int) -> None:
        """Keep what was read; log each key that changed since it was last read (whoever
        changed it) and each regional etcd that stopped or started answering."""
        for region, now in reads.items():
            was = self.fence_keys.get(region)
            if now is None:
                if was is not None or region not in self.fence_keys:
                    self._log("fence_key_unreachable", region=region, source=source)
                self.fence_keys[region] = None
                continue
            last = self._fence_known.get(region)
            if last is None or (last.value, last.raw) != (now.value, now.raw):
                self._log(
                    "fence_key",
                    region=region,
                    value=_fence_text(now),
                    previous=_fence_text(last) if last is not None else None,
                    source=source,
                    epoch=epoch,
                )
            self.fence_keys[region] = self._fence_known[region] = now
        self._fence_keys_at = time.monotonic()

    def _others_report(self) -> bool:
        """Is a gate off the active region's site alive and reporting (so that it can take
        over at once, rather than another gate of this site after its 2 s wait)?"""
        sites = self.settings.vantage_sites
        return any(
            g != self.settings.gate and sites.get(g) not in (None, self._active_region)
            for g in self._fresh_reporters
        )

    def report(self) -> dict[str, Any]:
        d = self.last_decision
        seen = next(iter(self._epoch_seen.items()), None)
        return {
            "leading": self.leading,
            "leader": self.leader,
            "error": self.error,
            "view": {r: v.healthy for r, v in self.view().items()},
            "decision": None
            if d is None
            else {
                "action": d.action,
                "reason": d.reason,
                "down": d.down,
                "healthy": d.healthy,
                "blocked": d.blocked,
            },
            "last_action": self.last_action,
            "block_error": self.block_error,  # publishing the decision's block failed
            "fence_keys": {
                r: _fence_text(f) if f is not None else None for r, f in self.fence_keys.items()
            },
            "fence_keys_age": None
            if self._fence_keys_at is None
            else round(time.monotonic() - self._fence_keys_at, 3),
            "failback_setting": None if self.failback is None else self.failback.as_dict(),
            "sync": None if self.sync is None else self.sync.as_dict(),
            # how long this instance has known the current epoch: its hysteresis and
            # failback count from here (drills wait on it)
            "epoch_seen": None
            if seen is None
            else {"epoch": seen[0], "for": round(time.monotonic() - seen[1], 3)},
        }


def _fence_text(read: FenceRead) -> str:
    """A fence key for logs and status: its value, `missing`, or `malformed: <raw>`."""
    if read.value is not None:
        return str(read.value)
    if read.raw is None:
        return "missing"
    return f"malformed: {read.raw.decode('utf-8', 'replace')}"


def _block_key(block: FailoverBlock | None) -> BlockKey:
    if block is None or block.blocked is None:
        return None
    return (block.epoch, block.region, block.blocked)


def _ago(now: float, seconds: float | None) -> str | None:
    """`seconds` before the wall-clock `now`, as the global state writes its times; None for
    None."""
    return None if seconds is None else _rfc3339(now - seconds)


def _rfc3339(t: float) -> str:
    """The wall-clock time `t` as the global state writes its times (RFC 3339, UTC, µs)."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
