"""`haplane status`: what runs, and what etcd itself says about each member.

Layer: run (local). Reads the state dir, asks the supervisor over its socket, and asks each etcd
member directly (so status works even when the supervisor is gone).

"Healthy" for a cluster means a real quorum answered a linearizable read within 1 s; for a member,
that it answered, sees a leader, has no alarm, and its cluster has quorum.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict, dataclass, field
from ssl import SSLContext
from typing import Any

import aiohttp

from haplane.store import (
    EtcdClient,
    EtcdError,
    GlobalState,
    MemberStatus,
    RegionFences,
    ReplicationReport,
)
from haplane.store.sync_state import describe
from haplane.topology import Topology, load_file
from haplane.topology.model import GLOBAL_SCOPE

from . import pidfile
from .control_client import ControlClient, ControlError
from .gate_plans import ConsolePlan, GitopsPlan, TopologyPlan, plan_of
from .plans import ClusterPlan, ReplicaPlan, global_plan
from .security import expiry_summary, http_ssl
from .state_dir import StateDir


@dataclass
class MemberReport:
    name: str
    kind: str
    endpoint: str
    state: str
    pid: int | None
    restarts: int
    member_id: str | None = None
    is_leader: bool = False
    raft_term: int | None = None
    revision: int | None = None
    db_size: int | None = None
    quota: int | None = None
    alarms: list[str] = field(default_factory=list)
    healthy: bool = False
    error: str | None = None


@dataclass
class ClusterReport:
    name: str
    quorum: bool
    leader: str | None
    members: list[MemberReport]
    error: str | None = None


@dataclass
class ReplicaReport:
    name: str
    kind: str
    url: str
    state: str
    pid: int | None
    restarts: int
    ready: bool
    detail: str


@dataclass
class EdgeReport:
    """A regional balancer or a gate instance: its process, readiness, and what its admin
    listener says about its upstreams (state, connections) and, for a gate, the region it
    forwards to."""

    name: str
    kind: str  # balancer | gate
    url: str
    admin_url: str
    state: str
    pid: int | None
    restarts: int
    ready: bool
    active_pool: str | None = None
    epoch: int | None = None
    upstreams: list[dict[str, Any]] = field(default_factory=list)
    connections_active: int = 0
    connections_total: int = 0
    region_health: dict[str, Any] | None = None
    controller: dict[str, Any] | None = None  # a gate's failover controller (leader, decision)
    drained: str | None = None  # why it was taken out of service (`haplane maintenance drain`)
    error: str | None = None


@dataclass
class GitopsReport:
    """A GitOps controller instance: its process, readiness (it reached the platform through
    its gate) and whether it holds the controller Lease, as its own `/metrics` says."""

    name: str
    site: str
    url: str
    server: str  # the gate it dials
    state: str
    pid: int | None
    restarts: int
    ready: bool
    leading: bool | None = None  # None: its listener did not say
    error: str | None = None


@dataclass
class ConsoleReport:
    """A web console instance: its process and whether its HTTPS listener is ready (it
    gathers the platform's status and reaches its gate)."""

    name: str
    site: str
    url: str
    server: str  # the gate it asks the API through
    state: str
    pid: int | None
    restarts: int
    ready: bool
    error: str | None = None


@dataclass
class GlobalReport:
    """The active region and its epoch, and the most recent changes (oldest first)."""

    active: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    # each region's fence key (`haplane.store.fence_key`): its value, "(none)" when absent,
    # None when the region's etcd did not answer
    fences: dict[str, str | None] = field(default_factory=dict)


@dataclass
class ReplicationRow:
    """One region's replication: its leading replicator's last report (from the global control
    etcd) and its replicator processes."""

    region: str
    state: str  # Streaming, Resyncing, Disconnected, Idle, or "no report"
    source: str | None = None
    applied_revision: int | None = None
    source_revision: int | None = None
    lag_seconds: float | None = None
    lag_revisions: int | None = None
    leader: str | None = None
    report_age: float | None = None  # seconds since the report was written
    last_resync: dict[str, Any] | None = None
    # its copy is incomplete (a resync, or a restore not caught up): never promoted automatically
    partial: bool = False
    replicators: list[dict[str, Any]] = field(default_factory=list)  # name, state, pid, restarts


@dataclass
class StatusReport:
    topology: str
    state_dir: str
    supervisor: str  # healthy, starting, ..., or "not running"
    etcd_version: str | None
    clusters: list[ClusterReport]
    replicas: list[ReplicaReport] = field(default_factory=list)
    global_state: GlobalReport | None = None
    edges: list[EdgeReport] = field(default_factory=list)
    replication: list[ReplicationRow] = field(default_factory=list)
    cuts: list[dict[str, Any]] = field(default_factory=list)  # the last few, oldest first
    # what returning regions wrote after a cut (saved before re-seeding), the last few
    divergences: list[dict[str, Any]] = field(default_factory=list)
    # who is synchronous (haplane.store.sync_state), when the topology has a Sync pair
    sync: dict[str, Any] | None = None
    # count, the soonest to expire, those within 30 days (None: insecure, or no PKI yet)
    certificates: dict[str, Any] | None = None
    gitops: list[GitopsReport] = field(default_factory=list)
    console: list[ConsoleReport] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def healthy(self) -> bool:
        return (
            all(c.quorum for c in self.clusters)
            and all(m.healthy for c in self.clusters for m in c.members)
            and all(r.ready for r in self.replicas)
            and all(e.ready or e.drained for e in self.edges)  # drained: on purpose
            and all(r["state"] == "running" for row in self.replication for r in row.replicators)
            and all(g.ready for g in self.gitops)
            and all(c.ready for c in self.console)
        )


class NothingRunning(Exception):
    pass


async def gather_status(
    state: StateDir, timeout: float = 1.0, *, history: int = 5, certificates: bool = True
) -> StatusReport:
    """Everything `haplane status` shows; `history`: how many of the last epochs to read,
    `certificates`: whether to read every certificate for the expiry summary (the console,
    which gathers every second, leaves them out)."""
    if not state.topology_file.exists():
        raise NothingRunning(f"no topology has been started in {state.root} (`haplane up` first)")
    topology = load_file(state.topology_file)
    processes: dict[str, dict[str, Any]] = {}
    phase = "not running"
    version = None
    try:
        snap = await ControlClient(state.socket, timeout=3.0).snapshot()
        phase = str(snap["phase"])
        version = snap["etcd"]["version"]
        processes = {c["name"]: c for c in snap["components"]}
    except ControlError:
        # No supervisor: report processes from their pid records.
        for path in state.run_dir.glob("*.json"):
            rec = pidfile.read(path)
            if rec is not None and rec.alive():
                processes[rec.name] = {
                    "state": "running (unsupervised)",
                    "pid": rec.pid,
                    "restarts": 0,
                }
    plan = plan_of(topology, state)
    ssl = http_ssl(plan.tls)
    clusters = await asyncio.gather(
        *(_cluster_report(topology, c, processes, timeout) for c in plan.clusters)
    )
    replicas = await asyncio.gather(
        *(_replica_report(r, processes, timeout, ssl) for r in plan.replicas)
    )
    global_state = await _global_report(plan.clusters, timeout, history)
    edge_reports = asyncio.gather(
        *(
            _edge_report(e.qualified_name, kind, e.url, e.admin_url, processes, timeout, ssl)
            for kind, group in (("balancer", plan.balancers), ("gate", plan.gates))
            for e in group
        )
    )
    gitops_reports = asyncio.gather(
        *(_gitops_report(g, processes, timeout, ssl) for g in plan.gitops)
    )
    console_reports = asyncio.gather(
        *(_console_report(c, processes, timeout, ssl) for c in plan.console)
    )
    edges, gitops, consoles = await asyncio.gather(edge_reports, gitops_reports, console_reports)
    replication, cuts, divergences, sync = await _replication_report(
        topology, plan, processes, timeout
    )
    expiry = None
    if certificates and plan.tls is not None and plan.tls.etcd_ca.exists():
        from haplane.auth.pki import PkiError

        with contextlib.suppress(PkiError, OSError):
            expiry = expiry_summary(plan.tls)
    return StatusReport(
        topology.name,
        str(state.root),
        phase,
        version,
        list(clusters),
        list(replicas),
        global_state,
        list(edges),
        replication,
        cuts,
        divergences,
        sync,
        expiry,
        list(gitops),
        list(consoles),
    )


async def _replication_report(
    topology: Topology,
    plan: TopologyPlan,
    processes: dict[str, dict[str, Any]],
    timeout: float,
) -> tuple[list[ReplicationRow], list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None]:
    """Per region with replicators: the leading replicator's report and the processes; the
    last cuts recorded by switches, divergences, and the sync record (Sync pairs only)."""
    if not plan.replicators:
        return [], [], [], None
    sync: dict[str, Any] | None = None
    has_sync = any(r.mode == "Sync" for r in topology.spec.global_.replication)
    reports: dict[str, ReplicationReport] = {}
    cuts: list[dict[str, Any]] = []
    divergences: list[dict[str, Any]] = []
    with contextlib.suppress(EtcdError):
        async with global_plan(plan.clusters).client(timeout) as client:
            g = GlobalState(client)
            reports = await g.replication_reports(timeout=timeout)
            recorded = await g.cuts(timeout=timeout)
            cuts = [recorded[e].as_dict() for e in sorted(recorded)[-5:]]
            divergences = [dict(d) for d in (await g.divergences(timeout=timeout))[-5:]]
            if has_sync:
                rec = await g.sync.read(timeout=timeout)
                sync = {**rec.as_dict(), "says": describe(rec)} if rec else {"says": describe(None)}
    rows = []
    for site, _ in topology.regions():
        mine = [r for r in plan.replicators if r.region == site.name]
        if not mine:
            continue
        rep = reports.get(site.name)
        row = ReplicationRow(site.name, rep.state if rep else "no report")
        if rep is not None:
            row.source = rep.source
            row.applied_revision = rep.applied_revision
            row.source_revision = rep.source_revision
            row.lag_seconds = rep.lag_seconds
            row.lag_revisions = rep.lag_revisions
            row.leader = rep.leader
            row.report_age = round(rep.age(), 3)
            row.last_resync = rep.last_resync
            row.partial = rep.partial
        for r in mine:
            proc = processes.get(r.qualified_name, {})
            row.replicators.append(
                {
                    "name": r.qualified_name,
                    "url": r.url,
                    "state": str(proc.get("state", "not running")),
                    "pid": proc.get("pid"),
                    "restarts": int(proc.get("restarts") or 0),
                }
            )
        rows.append(row)
    return rows, cuts, divergences, sync


async def _edge_report(
    name: str,
    kind: str,
    url: str,
    admin_url: str,
    processes: dict[str, dict[str, Any]],
    timeout: float,
    ssl: SSLContext | bool = True,
) -> EdgeReport:
    proc = processes.get(name, {})
    report = EdgeReport(
        name=name,
        kind=kind,
        url=url,
        admin_url=admin_url,
        state=str(proc.get("state", "not running")),
        pid=proc.get("pid"),
        restarts=int(proc.get("restarts") or 0),
        ready=False,
    )
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout + 0.5),
            connector=aiohttp.TCPConnector(ssl=ssl),
        ) as session:
            async with session.get(f"{admin_url}/readyz") as resp:
                report.ready = resp.status == 200
            async with session.get(f"{admin_url}/status") as resp:
                doc = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        report.error = f"admin listener: {exc or type(exc).__name__}"
        return report
    report.active_pool = doc.get("active_pool")
    report.epoch = (doc.get("follow") or {}).get("epoch")
    report.region_health = doc.get("region")
    report.controller = doc.get("controller")
    report.drained = doc.get("drained")
    listeners = doc.get("listeners") or []
    report.connections_active = sum(int(x.get("connections_active") or 0) for x in listeners)
    report.connections_total = sum(int(x.get("connections_total") or 0) for x in listeners)
    for pool_name, pool in (doc.get("pools") or {}).items():
        for u in pool.get("upstreams") or []:
            report.upstreams.append(
                {
                    "pool": pool_name,
                    "name": u.get("name"),
                    "state": u.get("state"),
                    "active": u.get("active"),
                    "connections_total": u.get("connections_total"),
                    "last_check_latency_ms": u.get("last_check_latency_ms"),
                    "last_check": u.get("last_check"),
                }
            )
    return report


LEADER_GAUGE = "haplane_gitops_leader"


async def _gitops_report(
    plan: GitopsPlan,
    processes: dict[str, dict[str, Any]],
    timeout: float,
    ssl: SSLContext | bool = True,
) -> GitopsReport:
    """Its `/readyz`, and its `/metrics` for the Lease (cheap: one listener, no API call)."""
    proc = processes.get(plan.qualified_name, {})
    report = GitopsReport(
        name=plan.qualified_name,
        site=plan.site,
        url=plan.url,
        server=plan.server,
        state=str(proc.get("state", "not running")),
        pid=proc.get("pid"),
        restarts=int(proc.get("restarts") or 0),
        ready=False,
    )
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout + 0.5),
            connector=aiohttp.TCPConnector(ssl=ssl),
        ) as session:
            async with session.get(f"{plan.url}/readyz") as resp:
                report.ready = resp.status == 200
                if not report.ready:
                    report.error = (await resp.text()).strip()[:80] or f"HTTP {resp.status}"
            async with session.get(f"{plan.url}/metrics") as resp:
                report.leading = leader_gauge(await resp.text())
    except (aiohttp.ClientError, TimeoutError) as exc:
        report.error = f"listener: {exc or type(exc).__name__}"
    return report


async def _console_report(
    plan: ConsolePlan,
    processes: dict[str, dict[str, Any]],
    timeout: float,
    ssl: SSLContext | bool = True,
) -> ConsoleReport:
    """Its `/readyz` (no credentials needed: health is all an anonymous caller gets)."""
    proc = processes.get(plan.qualified_name, {})
    report = ConsoleReport(
        name=plan.qualified_name,
        site=plan.site,
        url=plan.url,
        server=plan.server,
        state=str(proc.get("state", "not running")),
        pid=proc.get("pid"),
        restarts=int(proc.get("restarts") or 0),
        ready=False,
    )
    try:
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout + 0.5),
                connector=aiohttp.TCPConnector(ssl=ssl),
            ) as session,
            session.get(f"{plan.url}/readyz") as resp,
        ):
            report.ready = resp.status == 200
            if not report.ready:
                report.error = (await resp.text()).strip()[:80] or f"HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        report.error = f"listener: {exc or type(exc).__name__}"
    return report


def leader_gauge(metrics: str) -> bool | None:
    """`haplane_gitops_leader` from a Prometheus text page: whether that instance leads."""
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if name == LEADER_GAUGE:
            try:
                return float(value) == 1.0
            except ValueError:
                return None
    return None


async def _global_report(
    plans: list[ClusterPlan], timeout: float, history: int = 5
) -> GlobalReport:
    try:
        async with global_plan(plans).client(timeout) as client:
            state = GlobalState(client)
            active = await state.read()
            changes = await state.history(history)
    except EtcdError as exc:
        return GlobalReport(None, [], f"global control etcd: {exc}", await _fences(plans, timeout))
    return GlobalReport(
        active.as_dict() if active else None,
        [c.as_dict() for c in changes],
        None,
        await _fences(plans, timeout),
    )


async def _fences(plans: list[ClusterPlan], timeout: float) -> dict[str, str | None]:
    fences = RegionFences(
        {p.view.scope: p.client(timeout) for p in plans if p.view.scope != GLOBAL_SCOPE}
    )
    try:
        reads = await fences.read_all(timeout=timeout)
    finally:
        await fences.close()
    return {
        region: None
        if read is None
        else str(read.value)
        if read.value
        else (read.raw.decode(errors="replace") if read.raw else "(none)")
        for region, read in reads.items()
    }


async def _replica_report(
    plan: ReplicaPlan,
    processes: dict[str, dict[str, Any]],
    timeout: float,
    ssl: SSLContext | bool = True,
) -> ReplicaReport:
    proc = processes.get(plan.qualified_name, {})
    ready, detail = False, "unreachable"
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout + 0.5),
                connector=aiohttp.TCPConnector(ssl=ssl),
            ) as s,
            s.get(f"{plan.url}/readyz") as resp,
        ):
            ready, detail = resp.status == 200, (await resp.text()).strip()[:80]
    return ReplicaReport(
        name=plan.qualified_name,
        kind="api",
        url=plan.url,
        state=str(proc.get("state", "not running")),
        pid=proc.get("pid"),
        restarts=int(proc.get("restarts") or 0),
        ready=ready,
        detail=detail,
    )


async def _cluster_report(
    topology: Topology, plan: ClusterPlan, processes: dict[str, dict[str, Any]], timeout: float
) -> ClusterReport:
    endpoints = {name: a.client_endpoint for name, a in plan.addresses.items()}
    async with EtcdClient(list(endpoints.values()), timeout=timeout, tls=plan.tls) as client:
        quorum_error: str | None = None
        try:
            await client.range(b"/haplane/health", timeout=timeout)
            quorum = True
        except EtcdError as exc:
            quorum, quorum_error = False, str(exc)
        alarms: dict[int, list[str]] = {}
        if quorum:
            try:
                for a in await client.alarms(timeout=timeout):
                    alarms.setdefault(a.member_id, []).append(a.alarm)
            except EtcdError:
                pass
        statuses = await asyncio.gather(
            *(client.status(ep, timeout=timeout) for ep in endpoints.values()),
            return_exceptions=True,
        )
    members = []
    leader_name = None
    for (name, ep), st in zip(endpoints.items(), statuses, strict=True):
        proc = processes.get(name, {})
        report = MemberReport(
            name=name,
            kind="etcd",
            endpoint=ep,
            state=str(proc.get("state", "not running")),
            pid=proc.get("pid"),
            restarts=int(proc.get("restarts") or 0),
            quota=plan.view.settings.quota_backend_bytes,
        )
        if isinstance(st, MemberStatus):
            report.member_id = f"{st.member_id:x}"
            report.is_leader = st.is_leader
            report.raft_term = st.raft_term
            report.revision = st.revision
            report.db_size = st.db_size
            report.alarms = alarms.get(st.member_id, [])
            report.healthy = quorum and st.leader != 0 and not report.alarms
            if st.is_leader:
                leader_name = name
            if st.leader == 0:
                report.error = "no leader"
        else:
            report.error = str(st) if isinstance(st, EtcdError) else repr(st)
        members.append(report)
    return ClusterReport(plan.view.name, quorum, leader_name, members, quorum_error)
