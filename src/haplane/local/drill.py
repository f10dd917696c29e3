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
4. undoes the fault ("restored"), reads back every acknowledged write and update from the
   region that acknowledged it (`haplane.dr.client.read_back`, one region at a time), and
   collects the replicas' write journals and the gates' decision logs;
5. reports (`haplane.dr.report.summarize`): detection, agreement, switch, fence wait, reconnect,
   the longest client-visible gaps, errors by kind, expected conflicts, acknowledged writes and
   updates lost, stale reads, the journals against the client's operations both ways,
   epoch-order violations; `verdict` says what fails the drill (`haplane.dr.report.verdict`).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
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
from haplane.store import ActiveRegion, EtcdClient, EtcdError, GlobalState
from haplane.topology import Topology, load_file

from . import site_network
from .control import FaultInjector
from .gate_plans import TopologyPlan, resolve_all
from .plans import global_plan
from .ports import PortRegistry
from .state_dir import StateDir
from .status import gather_status


class DrillError(Exception):
    """The drill could not run (nothing up, unknown scenario, a fault that was refused)."""


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
            "SIGKILL the whole active region: its etcd, replicas, balancers, its gate and its "
            "global control etcd member",
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
    )
}

Undo = Callable[[], Awaitable[None]]


class ClientProcess:
    """The drill client (`python -m haplane.dr.client`) in a namespace of its own, like a user
    outside every site; its operations arrive as JSON lines, timed on the same monotonic clock
    (CLOCK_MONOTONIC is the machine's, shared by every network namespace)."""

    def __init__(self, prefix: list[str], gates: list[str], run_id: str, interval: float):
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
        """Everything on the region's site, by status name."""
        out: list[str] = []
        for site, r in self.topology.regions():
            if site.name == region:
                out += [f"{region}/{m.name}" for m in r.etcd.members]
                out += [f"{region}/{a.name}" for a in r.api_servers]
                out += [f"{region}/{b.name}" for b in r.balancers]
        g = self.topology.spec.global_
        out += [f"global/{m.name}" for m in g.control_etcd.members if m.site == region]
        out += [f"global/{x.name}" for x in g.gates if x.site == region]
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
    if scenario in ("partition", "gate-cut"):
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


def _ts(value: object) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


async def _read_active(plan: TopologyPlan, wait: float) -> ActiveRegion | None:
    """The global record, retried for `wait` seconds (the control etcd may be electing a
    leader just after an earlier drill healed a partition)."""
    deadline = time.monotonic() + wait
    async with EtcdClient(global_plan(plan.clusters).endpoints, timeout=2.0) as client:
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
                t = _ts(rec.get("ts"))
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
    plan: TopologyPlan, regions: set[str], run_id: str, wait: float
) -> tuple[dict[tuple[str, str], int | None], list[str]]:
    """(region, key) -> update counter of every drill object each region holds, read from
    that region's replicas; regions that did not answer in `wait` seconds (e.g. still
    restarting) are listed as problems."""
    found: dict[tuple[str, str], int | None] = {}
    problems = []
    for region in sorted(regions):
        endpoint = [r.url for r in plan.replicas if r.region == region]
        deadline = time.monotonic() + wait
        while True:
            try:
                held = await read_back(endpoint, run_id)
                found.update(((region, k), v) for k, v in held.items())
                break
            except RuntimeError as exc:
                if time.monotonic() > deadline:
                    problems.append(f"{region}: {exc}")
                    break
                await asyncio.sleep(0.5)
    return found, problems


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
    plan = resolve_all(topology, PortRegistry(state.ports_file))
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
    gates = sorted({f"http://{g.host}:{g.port}" for g in plan.gates})
    run_id = uuid.uuid4().hex[:8]
    network = site_network.load(state)
    drill: DrillClient | ClientProcess = (
        ClientProcess(network.client_prefix(), gates, run_id, interval)
        if network is not None
        else DrillClient(gates, run_id, interval=interval)
    )
    start_wall = time.time() - drill.now()
    events: list[Event] = []
    progress(f"drill {scenario} ({run_id}): {before.region} active in epoch {before.epoch}")
    task = asyncio.create_task(drill.run())
    expect = SCENARIOS[scenario].expect_failover
    undo: Undo | None = None
    try:
        await asyncio.sleep(warmup)
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
    progress("fault undone; reading back every acknowledged write")
    after = await _read_active(plan, wait=15.0)
    for t, name, text in _log_events(state, before.region, start_wall + events[0].t):
        events.append(Event(t - start_wall, name, text))
    failed_over = after is not None and after.epoch > before.epoch
    unfenced = _ts(after.unfenced) if after is not None and failed_over else None
    if unfenced is not None and not any(e.name == "unfenced" for e in events):
        # no leader's log line says it (its gate died with a region): the record says when
        events.append(Event(unfenced - start_wall, "unfenced", "from the global record"))
    events.sort(key=lambda e: e.t)
    acked_regions = {
        o.region for o in drill.operations if o.ok and o.kind in ("write", "update") and o.region
    }
    found, problems = await _read_back(plan, acked_regions, run_id, wait=30.0)
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
    )


def write_reports(result: DrillResult, directory: Path) -> tuple[Path, Path]:
    from haplane.dr.report import render_html, render_json

    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{result.scenario}-{result.meta.get('run', 'run')}"
    j, h = directory / f"{stem}.json", directory / f"{stem}.html"
    j.write_text(render_json(result))
    h.write_text(render_html(result))
    return j, h
