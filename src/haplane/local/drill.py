"""`haplane drill SCENARIO`: inject a fault into a running topology while a client writes and
reads through the gate, then measure what the client saw and check what the servers recorded.

Layer: run (`haplane.local`). Uses the supervisor's fault API (by PIDs it started), the drill
client and report (`haplane.dr`), the state directory's logs and write journals, and, for
partitions, the site network (`haplane.local.netns`) the topology was started in.

A drill:
1. reads the active region and epoch; waits until the last change is `minIntervalMs` (+1 s)
   old, so that the controller's hysteresis neither holds back a failover nor hides a wrong
   vote; starts the client (writes, reads, updates and gets every `interval`, see
   `haplane.dr.client`);
2. after `warmup`, injects the scenario's fault ("fault" event);
3. waits until the scenario's outcome shows (a write acknowledged in a newer epoch when a
   failover is expected; `observe` seconds otherwise), then `tail` more seconds;
4. undoes the fault ("restored"), reads back every acknowledged write and update through the
   gate, from wherever it now leads (`haplane.dr.client.read_back`), reads the cut of an
   unplanned failover (a loss above it is the RPO, reported apart), waits until every standby
   streams from the active region again (a returning region saves its divergence and is
   re-seeded first), and collects the replicas' write journals and the gates' decision logs;
   replication reports are sampled throughout (the largest lag each region showed);
5. reports (`haplane.dr.report.summarize`): detection, agreement, switch, fence wait, reconnect,
   the longest client-visible gaps, errors by kind, expected conflicts, acknowledged writes and
   updates lost, stale reads, the journals against the client's operations both ways,
   epoch-order violations; `verdict` says what fails the drill (`haplane.dr.report.verdict`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext
from typing import Any

from haplane.dr.client import DrillClient, key_prefix, read_back
from haplane.dr.report import (
    DrillResult,
    Event,
    Expectation,
    Operation,
    ServerWrite,
    summarize,
)
from haplane.dr.report import verdict as verdict  # what fails a drill: `drill.verdict(result)`
from haplane.store import ActiveRegion, EtcdError, GlobalState, ReplicationReport
from haplane.topology import Topology, load_file

from . import global_control, site_network
from .control_client import FaultInjector
from .gate_plans import TopologyPlan, plan_of
from .logs import parse_ts
from .plans import global_plan
from .security import PlatformTls, http_ssl
from .state_dir import StateDir
from .status import gather_status


class DrillError(Exception):
    """The drill could not run (nothing up, unknown scenario, a fault that was refused)."""


# seconds past the warm-up a drill waits for its first acknowledged write (a loaded machine
# may pass the warm-up with none: a fault then would show nothing)
BASELINE_WAIT = 10.0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    expect_failover: bool


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("replica-kill", "SIGKILL one API replica of the active region", False),
        Scenario("etcd-leader-kill", "SIGKILL the etcd leader of the active region", False),
        Scenario(
            "region-kill",
            "SIGKILL the whole active region's site: its etcd, replicas, balancers and "
            "replicators, and the global components placed there (control etcd member, gate, "
            "GitOps controllers, consoles)",
            True,
        ),
        Scenario("balancers-pause", "SIGSTOP every balancer of the active region", True),
        Scenario(
            "partition",
            "cut the active region's site off from every other site (nftables drops in its "
            "network namespace; needs `haplane up --netns`)",
            True,
        ),
        Scenario(
            "gate-cut",
            "cut one other site (its gate is a lone vantage point) from the active region's site "
            "(must not fail over; needs `haplane up --netns`)",
            False,
        ),
        Scenario(
            "blip",
            "SIGSTOP every balancer of the active region for less than downAfterMs, then "
            "SIGCONT (must not fail over)",
            False,
        ),
        Scenario(
            "switchover",
            "a planned switchover to the standby under load (`haplane failover --to`): freeze, "
            "catch up, switch; nothing may be lost",
            True,
        ),
        Scenario(
            "replicator-kill",
            "SIGKILL the leading replicator of a standby region (must not fail over; the other "
            "replicator takes over and replication catches up)",
            False,
        ),
        Scenario(
            "standby-partition",
            "cut a standby region's site off from the active region's site (must not fail "
            "over; lag grows, and replication catches up once the cut heals; needs `haplane up "
            "--netns`)",
            False,
        ),
    )
}

Undo = Callable[[], Awaitable[None]]


class ClientProcess:
    """The drill client (`python -m haplane.dr.client`) in a namespace of its own, like a user
    outside every site; its operations arrive as JSON lines, timed on the same monotonic clock
    (CLOCK_MONOTONIC is the machine's, shared by every network namespace)."""

    def __init__(
        self,
        prefix: list[str],
        gates: list[str],
        run_id: str,
        interval: float,
        tls: PlatformTls | None = None,
    ):
        self.start = time.monotonic()
        self.operations: list[Operation] = []
        self.argv = [
            *prefix,
            sys.executable,
            "-m",
            "haplane.dr.client",
            *(a for g in gates for a in ("--gate", g)),
            "--run-id",
            run_id,
            "--interval",
            str(interval),
            "--start",
            repr(self.start),
        ]
        if tls is not None:
            admin = tls.admin
            self.argv += ["--ca", str(tls.ca), "--cert", str(admin.cert), "--key", str(admin.key)]
        self._proc: asyncio.subprocess.Process | None = None
        self._stopped = False

    def now(self) -> float:
        return time.monotonic() - self.start

    async def run(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
        )
        if self._stopped:
            self.stop()
        assert self._proc.stdout is not None
        try:
            async for line in self._proc.stdout:
                self.operations.append(Operation.from_dict(json.loads(line)))
        finally:
            if self._proc.returncode is None:
                self._proc.kill()  # our own child, by its PID
            await self._proc.wait()

    def stop(self) -> None:
        self._stopped = True
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)


@dataclass
class DrillContext:
    state: StateDir
    topology: Topology
    plan: TopologyPlan
    injector: FaultInjector
    active: str  # the region active when the drill began

    def region_components(self, region: str) -> list[str]:
        """Everything on the region's site, by status name: the region's own components, and
        the global ones placed there (a control etcd member, a gate, GitOps controllers and
        consoles), as the loss of that site would take them."""
        out: list[str] = []
        for site, r in self.topology.regions():
            if site.name == region:
                out += [f"{region}/{m.name}" for m in r.etcd.members]
                out += [f"{region}/{a.name}" for a in r.api_servers]
                out += [f"{region}/{b.name}" for b in r.balancers]
                out += [f"{region}/{x.name}" for x in r.replicators]
        g = self.topology.spec.global_
        out += [f"global/{m.name}" for m in g.control_etcd.members if m.site == region]
        out += [f"global/{x.name}" for x in g.gates if x.site == region]
        out += [f"global/{x.name}" for x in g.gitops if x.site == region]
        out += [f"global/{x.name}" for x in g.console.instances if x.site == region]
        return out

    def balancers(self, region: str) -> list[str]:
        return [b.qualified_name for b in self.plan.balancers if b.region == region]

    async def each(self, action: str, components: list[str], undo: str | None = None) -> None:
        """`action` on every component at once; if any fails, `undo` what may have been done
        (best effort) before raising, so a half-injected fault is not left behind."""
        faults = {
            "kill": self.injector.kill,
            "pause": self.injector.pause,
            "resume": self.injector.resume,
            "restart": self.injector.restart,
        }
        results = await asyncio.gather(
            *(faults[action](c) for c in components), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            if undo is not None:
                await asyncio.gather(*(faults[undo](c) for c in components), return_exceptions=True)
            raise DrillError(f"{action} failed: {failed[0]}")


async def _inject(ctx: DrillContext, scenario: str, blip: float) -> tuple[str, Undo]:
    region = ctx.active
    if scenario == "replica-kill":
        victim = next(r.qualified_name for r in ctx.plan.replicas if r.region == region)
        await ctx.injector.kill(victim)
        return victim, lambda: ctx.each("restart", [victim])
    if scenario == "etcd-leader-kill":
        report = await gather_status(ctx.state)
        cluster = next((c for c in report.clusters if c.name == f"{region}/etcd"), None)
        if cluster is None or cluster.leader is None:
            raise DrillError(f"{region}/etcd has no leader to kill")
        leader = cluster.leader
        await ctx.injector.kill(leader)
        return leader, lambda: ctx.each("restart", [leader])
    if scenario == "region-kill":
        victims = ctx.region_components(region)
        await ctx.each("kill", victims, undo="restart")
        return ", ".join(victims), lambda: ctx.each("restart", victims)
    if scenario in ("balancers-pause", "blip"):
        lbs = ctx.balancers(region)
        await ctx.each("pause", lbs, undo="resume")
        if scenario == "blip":
            await asyncio.sleep(blip)
            await ctx.each("resume", lbs)

            async def nothing() -> None:
                return None

            return f"{', '.join(lbs)} paused for {blip:.2f}s", nothing
        return ", ".join(lbs), lambda: ctx.each("resume", lbs)
    if scenario == "switchover":
        other = _standby(ctx)
        fences = global_control.region_fences(ctx.topology, ctx.state)
        try:
            async with global_control.control_client(ctx.topology, ctx.state) as client:
                done = await global_control.switch(
                    client, ctx.topology, other, reason="drill: planned switchover", fences=fences
                )
        except global_control.FailoverError as exc:
            raise DrillError(f"the switchover was refused: {exc}") from exc
        finally:
            await fences.close()
        caught = done.caught_up_seconds or 0.0

        async def nothing_to_undo() -> None:
            return None

        return f"planned switchover to {other} (caught up in {caught:.3f}s)", nothing_to_undo
    if scenario == "replicator-kill":
        report = await gather_status(ctx.state)
        row = next((r for r in report.replication if r.region != region and r.leader), None)
        if row is None or row.leader is None:
            raise DrillError("no standby region reports a leading replicator")
        victim = row.leader
        await ctx.injector.kill(victim)
        return victim, lambda: ctx.each("restart", [victim])
    if scenario in ("partition", "gate-cut", "standby-partition"):
        network = site_network.load(ctx.state)
        if network is None:
            raise DrillError(
                f"{scenario} needs each site in its own network namespace: start the topology "
                "with `haplane up --netns`"
            )
        sites = [s.name for s in ctx.topology.spec.sites]
        if scenario == "partition":
            others = [s for s in sites if s != region]
            network.cut([region], others)
            text = f"{region} cut off from {', '.join(others)}"
        elif scenario == "standby-partition":
            standby = _standby(ctx)
            network.cut([standby], [region])
            text = f"{standby} (a standby) cut off from {region}"
        else:
            lone = next(
                (g.site for g in ctx.topology.spec.global_.gates if g.site not in (region,)),
                None,
            )
            if lone is None:
                raise DrillError("no gate outside the active region's site to cut")
            network.cut([lone], [region])
            text = f"{lone} cut from {region} (its gate alone sees {region} down)"

        async def heal() -> None:
            network.heal()

        return text, heal
    raise DrillError(f"unknown scenario {scenario!r}; one of: {', '.join(SCENARIOS)}")


def _standby(ctx: DrillContext) -> str:
    """The standby region the drill acts on: the first other region, in priority order, that
    replicates with the active one."""
    for region in ctx.topology.region_priority():
        if region != ctx.active and global_control.paired(ctx.topology, ctx.active, region):
            return region
    raise DrillError(f"no region replicates with {ctx.active}: this scenario needs a pair")


class ReplicationSampler:
    """Every region's replication report, sampled every `every` seconds during the drill:
    the largest lag each showed and the states it went through."""

    def __init__(self, plan: TopologyPlan, clock: Callable[[], float], every: float = 0.25):
        self.plan, self.clock, self.every = plan, clock, every
        self.samples: list[tuple[float, ReplicationReport]] = []

    async def run(self) -> None:
        async with global_plan(self.plan.clusters).client(0.5) as c:
            state = GlobalState(c)
            while True:
                try:
                    for report in (await state.replication_reports(timeout=0.5)).values():
                        self.samples.append((self.clock(), report))
                except EtcdError:
                    pass
                await asyncio.sleep(self.every)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _, r in self.samples:
            row = out.setdefault(r.target, {"max_lag_seconds": None, "states": []})
            if r.lag_seconds is not None and r.state == "Streaming":
                row["max_lag_seconds"] = max(row["max_lag_seconds"] or 0.0, r.lag_seconds)
            if not row["states"] or row["states"][-1] != r.state:
                row["states"].append(r.state)
        return out


async def _caught_up(
    plan: TopologyPlan, region: str, source: str | None, wait: float
) -> tuple[float | None, ReplicationReport | None]:
    """Seconds until `region` streams from `source` (any, when None) with a lag under a
    second and its applied revision at the source head it saw; (None, last report) when it
    did not within `wait`."""
    t0 = time.monotonic()
    last: ReplicationReport | None = None
    async with global_plan(plan.clusters).client(1.0) as c:
        state = GlobalState(c)
        while time.monotonic() - t0 < wait:
            try:
                last = (await state.replication_reports(timeout=1.0)).get(region)
            except EtcdError:
                last = None
            if (
                last is not None
                and last.state == "Streaming"
                and (source is None or last.source == source)
                and last.age() < 1.0
                and (last.lag_seconds or 0.0) < 1.0
            ):
                return time.monotonic() - t0, last
            await asyncio.sleep(0.25)
    return None, last


async def _read_active(plan: TopologyPlan, wait: float) -> ActiveRegion | None:
    """The global record, retried for `wait` seconds (the control etcd may be electing a
    leader just after an earlier drill healed a partition)."""
    deadline = time.monotonic() + wait
    async with global_plan(plan.clusters).client(2.0) as client:
        while True:
            try:
                return await GlobalState(client).read()
            except EtcdError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)


def _log_events(state: StateDir, active: str, since: float) -> list[tuple[float, str, str]]:
    """(wall time, event name, detail) from the gates' and balancers' JSON logs."""
    out: list[tuple[float, str, str]] = []
    logs = state.root / "logs"
    for path in sorted(logs.glob("global/gate-*.log")) + sorted(logs.glob(f"{active}/lb-*.log")):
        with open(path, errors="replace") as f:
            for line in f:
                if not line.startswith("{"):
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                t = parse_ts(rec.get("ts"))
                if t is None or t < since:
                    continue
                ev, who = rec.get("event"), rec.get("component", path.stem)
                if ev == "vantage_view" and rec.get("region") == active and not rec["healthy"]:
                    out.append((t, "detected", f"{who} sees {active} down"))
                elif ev == "upstream_state" and rec.get("to") in ("down", "draining"):
                    out.append((t, "detected", f"{who}: {rec.get('upstream')} {rec.get('to')}"))
                elif ev == "controller_decision" and rec.get("action") in ("failover", "failback"):
                    out.append((t, "agreed", f"{who}: {rec.get('reason')}"))
                elif ev == "committed":
                    out.append((t, "committed", f"{who}: epoch {rec.get('epoch')}"))
                elif ev == "unfenced":
                    out.append((t, "unfenced", f"{who}: epoch {rec.get('epoch')}"))
    return sorted(out)


def _journals(state: StateDir, since: float, start_wall: float) -> list[ServerWrite]:
    out = []
    for path in sorted((state.root / "logs").glob("*.writes.jsonl")):
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a SIGKILL
                if rec.get("sent", 0) < since:
                    continue
                out.append(
                    ServerWrite(
                        region=rec["region"],
                        epoch=int(rec["epoch"]),
                        key=str(rec["key"]).rsplit("/", 1)[-1],
                        revision=int(rec["revision"]),
                        sent=rec["sent"] - start_wall,
                        acked=rec["acked"] - start_wall,
                    )
                )
    return out


async def _read_back(
    gates: list[str], regions: list[str], run_id: str, wait: float, ssl: SSLContext | bool
) -> tuple[dict[tuple[str, str], int | None], list[str]]:
    """What a client reads through the gate after the drill, from wherever it now leads: key
    -> update counter of every drill object, filed under every region (a write acknowledged by
    any region must be there); a read-back that fails for `wait` seconds is a problem."""
    deadline = time.monotonic() + wait
    while True:
        try:
            held = await read_back(gates, run_id, ssl=ssl)
            break
        except RuntimeError as exc:
            if time.monotonic() > deadline:
                return {}, [f"through the gate: {exc}"]
            await asyncio.sleep(0.5)
    return {(region, k): v for region in regions for k, v in held.items()}, []


async def _epoch_known_for(state: StateDir, epoch: int) -> float:
    """The shortest time any reachable failover controller has known `epoch` (0 for one that
    has not seen it yet): what its hysteresis counts. The record's own age when no controller
    answers (a topology without gates)."""
    report = await gather_status(state, timeout=1.0)
    known = []
    for edge in report.edges:
        if edge.controller is None:
            continue
        seen = edge.controller.get("epoch_seen") or {}  # none yet: a gate just started
        known.append(float(seen["for"]) if seen.get("epoch") == epoch else 0.0)
    if known:
        return min(known)
    record = report.global_state.active if report.global_state else None
    return ActiveRegion(**_record_fields(record)).age() if record else float("inf")


def _record_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "region": record["region"],
        "epoch": record["epoch"],
        "since": record.get("since", ""),
        "by": record.get("by", ""),
        "reason": record.get("reason", ""),
    }


async def _wait_out_hysteresis(
    state: StateDir, epoch: int, min_interval: float, progress: Callable[[str], None]
) -> None:
    """Until every reachable controller has known `epoch` for `min_interval` + 0.5 s; a
    `DrillError` when the epoch moves meanwhile or the wait runs 30 s past the interval."""
    give_up = time.monotonic() + min_interval + 30.0
    while True:
        left = min_interval + 0.5 - await _epoch_known_for(state, epoch)
        if left <= 0:
            return
        report = await gather_status(state, timeout=1.0)
        now = report.global_state.active if report.global_state else None
        if now is not None and now.get("epoch") != epoch:
            raise DrillError(f"the epoch moved from {epoch} to {now.get('epoch')}; try again")
        if time.monotonic() > give_up:
            raise DrillError(
                f"a failover controller still has not known epoch {epoch} for minIntervalMs"
            )
        progress(
            f"waiting {left:.1f}s: a controller has known epoch {epoch} for less than minIntervalMs"
        )
        await asyncio.sleep(min(left, 5.0))


async def run_drill(
    state: StateDir,
    scenario: str,
    *,
    warmup: float = 2.0,
    observe: float = 6.0,
    tail: float = 2.0,
    max_wait: float = 30.0,
    interval: float = 0.02,
    blip: float | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> DrillResult:
    if scenario not in SCENARIOS:
        raise DrillError(f"unknown scenario {scenario!r}; one of: {', '.join(SCENARIOS)}")
    if not state.topology_file.exists():
        raise DrillError(f"no topology has been started in {state.root} (`haplane up` first)")
    topology = load_file(state.topology_file)
    plan = plan_of(topology, state, read_only=False)
    ssl = http_ssl(plan.tls)
    failover = topology.spec.global_.failover
    before = await _read_active(plan, wait=15.0)
    if before is None:
        raise DrillError("no active region is recorded: is the topology up?")
    if not before.writable:
        raise DrillError(f"epoch {before.epoch} is not writable yet; try again in a moment")
    min_interval = failover.min_interval_ms / 1000
    # within minIntervalMs the hysteresis holds back a failover: one that must happen would
    # wait, and one that must not would not show a wrong vote. It counts on each controller's
    # own clock from when it first saw the epoch (a gate restarted since counts from its start)
    await _wait_out_hysteresis(state, before.epoch, min_interval, progress)
    ctx = DrillContext(state, topology, plan, FaultInjector(state.socket), before.region)
    gates = sorted({g.url for g in plan.gates})
    run_id = uuid.uuid4().hex[:8]
    network = site_network.load(state)
    drill: DrillClient | ClientProcess = (
        ClientProcess(network.client_prefix(), gates, run_id, interval, plan.tls)
        if network is not None
        else DrillClient(gates, run_id, interval=interval, ssl=ssl)
    )
    start_wall = time.time() - drill.now()
    events: list[Event] = []
    progress(f"drill {scenario} ({run_id}): {before.region} active in epoch {before.epoch}")
    task = asyncio.create_task(drill.run())
    sampler = ReplicationSampler(plan, drill.now) if plan.replicators else None
    sampling = asyncio.create_task(sampler.run()) if sampler is not None else None
    expect = SCENARIOS[scenario].expect_failover
    undo: Undo | None = None
    try:
        await asyncio.sleep(warmup)
        # a baseline first: no fault before a write was acknowledged in the current epoch
        # (on a loaded machine the warm-up may pass with none, and a drill then shows nothing)
        late = drill.now() + BASELINE_WAIT
        while not any(
            o.ok and o.kind == "write" and o.epoch == before.epoch for o in drill.operations
        ):
            if drill.now() >= late:
                raise DrillError(
                    f"no write was acknowledged in {warmup + BASELINE_WAIT:g}s of warm-up: the "
                    "platform does not serve through the gate; nothing was injected"
                )
            await asyncio.sleep(0.05)
        since_change = await _epoch_known_for(state, before.epoch)
        t_fault = drill.now()
        detail, undo = await _inject(ctx, scenario, blip or failover.down_after_ms / 2000)
        events.append(Event(t_fault, "fault", detail))
        progress(f"fault: {detail}")
        deadline = t_fault + (max_wait if expect else observe)
        while drill.now() < deadline:
            if expect and any(
                o.ok and o.kind == "write" and (o.epoch or 0) > before.epoch
                for o in drill.operations[-200:]
            ):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(tail)
    finally:
        drill.stop()
        await asyncio.gather(task, return_exceptions=True)
        if undo is not None:
            await undo()
            events.append(Event(drill.now(), "restored", ""))
        if sampling is not None:
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
    progress("fault undone; reading back every acknowledged write")
    after = await _read_active(plan, wait=15.0)
    for t, name, text in _log_events(state, before.region, start_wall + events[0].t):
        events.append(Event(t - start_wall, name, text))
    failed_over = after is not None and after.epoch > before.epoch
    unfenced = parse_ts(after.unfenced) if after is not None and failed_over else None
    if unfenced is not None and not any(e.name == "unfenced" for e in events):
        # no leader's log line says it (its gate died with a region): the record says when
        events.append(Event(unfenced - start_wall, "unfenced", "from the global record"))
    events.sort(key=lambda e: e.t)
    regions = [site.name for site, _ in topology.regions()]
    found, problems = await _read_back(gates, regions, run_id, 30.0, ssl)
    cut: dict[str, Any] | None = None
    if failed_over and after is not None:
        async with global_plan(plan.clusters).client(2.0) as c:
            with contextlib.suppress(EtcdError):
                cuts = await GlobalState(c).cuts(timeout=2.0)
                first = min((e for e in cuts if e > before.epoch), default=None)
                cut = cuts[first].as_dict() if first is not None else None
    replication_problems: list[str] = []
    rejoin: dict[str, Any] | None = None
    if plan.replicators:
        replication_problems, rejoin = await _replication_after(
            plan, scenario, before, after, progress
        )
    writes = _journals(state, start_wall, start_wall)
    meta: dict[str, Any] = {
        "run": run_id,
        "scenario": SCENARIOS[scenario].description,
        "topology": topology.name,
        "before": before.as_dict(),
        "after": after.as_dict() if after else None,
        "expect_failover": expect,
        "failed_over": failed_over,
        "failover_as_expected": failed_over == expect,
        "read_back_problems": problems,
        "replication_problems": replication_problems,
        "replication": sampler.summary() if sampler is not None else None,
        "rejoin": rejoin,
        "interval_s": interval,
        "client": (
            f"own network namespace ({network.namespaces()['client']})"
            if network is not None
            else "root network namespace (loopback topology)"
        ),
        "settings": {
            "downAfterMs": failover.down_after_ms,
            "grantMs": before.grant_ms,
            "safetyMarginMs": before.margin_ms,
            "minIntervalMs": failover.min_interval_ms,
            "gateChecks": "every 200 ms, fall 2, rise 2, timeout 1 s",
            "etcd": {
                c.view.name: {
                    "heartbeatMs": c.view.settings.heartbeat_interval_ms,
                    "electionMs": c.view.settings.election_timeout_ms,
                }
                for c in plan.clusters
            },
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    expectation = Expectation(
        failover=expect,
        epoch_before=before.epoch,
        epoch_after=after.epoch if after is not None else None,
        writable_after=after is not None and after.writable,
        since_change_at_fault=since_change,
        min_interval=min_interval,
    )
    return summarize(
        scenario,
        drill.operations,
        events,
        writes,
        found,
        meta,
        expectation=expectation,
        key_prefix=key_prefix(run_id),
        cut=cut,
    )


async def _replication_after(
    plan: TopologyPlan,
    scenario: str,
    before: ActiveRegion,
    after: ActiveRegion | None,
    progress: Callable[[str], None],
) -> tuple[list[str], dict[str, Any] | None]:
    """After the fault is undone: every standby streams from the active region again, caught
    up (a returning old region first saves its divergence and is re-seeded: `rejoin`)."""
    problems: list[str] = []
    rejoin: dict[str, Any] | None = None
    active = after.region if after is not None else before.region
    standbys = sorted({r.region for r in plan.replicators} - {active})
    for region in standbys:
        progress(f"waiting for {region} to stream from {active} again")
        seconds, last = await _caught_up(plan, region, active, wait=60.0)
        if seconds is None:
            state = f"{last.state} from {last.source}" if last is not None else "no report"
            problems.append(f"{region} did not catch up with {active} within 60 s ({state})")
        elif after is not None and region == before.region and after.epoch > before.epoch:
            rejoin = {"region": region, "seconds": round(seconds, 3)}
            async with global_plan(plan.clusters).client(2.0) as c:
                with contextlib.suppress(EtcdError):
                    notes = await GlobalState(c).divergences(timeout=2.0)
                    rejoin["divergence"] = next(
                        (n for n in notes if n.get("epoch") == after.epoch), None
                    )
    return problems, rejoin


def write_reports(result: DrillResult, directory: Path) -> tuple[Path, Path]:
    from haplane.dr.report import render_html, render_json

    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{result.scenario}-{result.meta.get('run', 'run')}"
    j, h = directory / f"{stem}.json", directory / f"{stem}.html"
    j.write_text(render_json(result))
    h.write_text(render_html(result))
    return j, h
