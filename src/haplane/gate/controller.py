"""The failover controller beside a gate instance: observe -> decide -> act.

Layer: gate. Talks to the global control etcd only (its own client); reads this gate's pool
health from the forwarder it runs beside. Decisions are `haplane.gate.failover.decide`.

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
  or double a change.

The leader, every `tick`:
- reads all reports; a report's age is the time since the leader saw it change (reports it has
  not seen change since it took over count as stale: a dead gate's last word is no vote);
- reads the active record; hysteresis counts from the record's `since` (wall clock, only for
  pacing), the fence wait from when this leader first saw the epoch unwritable (monotonic,
  safety);
- decides, and acts: a failover or failback commits epoch + 1 naming the new region, not yet
  writable; an unfence makes it writable once no old grant can be live.

When the global control etcd has no quorum nobody can report, lead or switch: the controller
waits, and the active region's replicas fence themselves (see `haplane.api.fencing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from haplane.store import (
    ActiveRegion,
    Compare,
    EtcdClient,
    EtcdError,
    GlobalState,
    Op,
    StaleEpoch,
    prefix_end,
)

from .events import GateEvent
from .failover import Decision, RegionView, Report, Settings, Snapshot, decide
from .forwarder import Forwarder
from .health import UpstreamState

log = logging.getLogger("haplane.gate")

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
        self._tasks: list[asyncio.Task[None]] = []
        self._client: EtcdClient | None = None
        self._started = time.monotonic()
        self._seen_healthy: set[str] = set()
        self._active_region: str | None = None
        self._writable = True
        self._fresh_reporters: set[str] = set()
        self._changed_now = asyncio.Event()
        forwarder.subscribe(self._on_gate_event)

    # ---- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._client = EtcdClient(self.settings.etcd, timeout=0.5)
        self._tasks = [
            asyncio.create_task(self._report_loop(), name="vantage report"),
            asyncio.create_task(self._campaign_loop(), name="controller campaign"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    def _log(self, event: str, **fields: Any) -> None:
        log.info(
            json.dumps(
                {
                    "ts": time.time(),
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
                            await self._lead(client, lease)
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

    async def _lead(self, client: EtcdClient, lease: int) -> None:
        """Lead while the lease is known to live: until a renewal says it expired, or no
        renewal has succeeded for a whole TTL. Renewals failing for a moment (the global etcd
        electing a leader, which renews every lease anyway) do not end the leadership: a
        leader that stepped down there would leave the key to expire before anyone else
        could lead, which is the slowest outcome."""
        self.leading, self.leader, self.error = True, self.settings.gate, None
        self._seen.clear()
        self._fenced_seen.clear()
        self._log("controller_leader")
        work = asyncio.create_task(self._decide_loop(client), name="controller decide")
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
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)

    # ---- decide and act (the leader) -----------------------------------------------------

    async def _observe(self, state: GlobalState, client: EtcdClient) -> Snapshot:
        now = time.monotonic()
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
        since = active.age() if active is not None else 0.0
        return Snapshot(active, reports, since, fenced_for)

    async def _decide_loop(self, client: EtcdClient) -> None:
        state = GlobalState(client, prefix=self.prefix)
        while True:
            t0 = time.monotonic()
            try:
                snapshot = await self._observe(state, client)
                decision = decide(snapshot, self.settings.decision)
                self._note(decision)
                if decision.action != "none":
                    await self._act(state, decision, snapshot.active)
            except EtcdError as exc:
                self.error = str(exc)
            except Exception as exc:  # a bug: say so, and keep deciding
                self.error = repr(exc)
                log.exception("failover controller: deciding failed")
            await asyncio.sleep(max(0.0, t0 + self.settings.tick - time.monotonic()))

    def _note(self, decision: Decision) -> None:
        last = self.last_decision
        if last is None or (last.action, last.down, last.healthy, last.to) != (
            decision.action,
            decision.down,
            decision.healthy,
            decision.to,
        ):
            self._log(
                "controller_decision",
                action=decision.action,
                to=decision.to,
                epoch=decision.epoch,
                down=decision.down,
                healthy=decision.healthy,
                reason=decision.reason,
            )
        self.last_decision = decision

    async def _act(self, state: GlobalState, d: Decision, active: ActiveRegion | None) -> None:
        assert d.epoch is not None and active is not None
        by = f"controller:{self.settings.gate}"
        try:
            if d.action == "unfence":
                record = await state.unfence(d.epoch)
                self._log("unfenced", region=record.region, epoch=record.epoch)
            else:
                assert d.to is not None
                record = await state.switch(d.to, expected_epoch=d.epoch, by=by, reason=d.reason)
                self._fenced_seen[record.epoch] = time.monotonic()  # the commit is behind us
                self._log(
                    "committed",
                    action=d.action,
                    region=record.region,
                    epoch=record.epoch,
                    previous=active.region,
                    reason=d.reason,
                )
        except StaleEpoch as exc:
            self._log("action_lost", action=d.action, reason=str(exc))
            return
        self.last_action = {"action": d.action, "region": record.region, "epoch": record.epoch}

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
        return {
            "leading": self.leading,
            "leader": self.leader,
            "error": self.error,
            "view": {r: v.healthy for r, v in self.view().items()},
            "decision": None
            if d is None
            else {"action": d.action, "reason": d.reason, "down": d.down, "healthy": d.healthy},
            "last_action": self.last_action,
        }
