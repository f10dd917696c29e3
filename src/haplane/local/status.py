"""`haplane status`: what runs, and what etcd itself says about each member.

Layer: run (local). Reads the state dir, asks the supervisor over its socket, and asks each etcd
member directly (so status works even when the supervisor is gone).

"Healthy" for a cluster means a real quorum answered a linearizable read within 1 s; for a member,
that it answered, sees a leader, has no alarm, and its cluster has quorum.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from ssl import SSLContext
from typing import Any

from haplane.store import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    GlobalState,
    MemberStatus,
    RegionFences,
    ReplicationReport,
)
from haplane.store.sync_state import describe

from . import pidfile
from .control_client import ControlClient, ControlError
from .security import PlatformTls, expiry_summary
from .state_dir import StateDir
from .status_plan import (
    ClusterTargets,
    EdgeListener,
    Listener,
    SiteListener,
    StatusTargets,
    targets,
)
from .stdlib_http import Answer, HttpError, KeptConnections, fetch


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


class KeptClients:
    """What a caller that gathers again and again (the supervisor) keeps open between status
    gathers: an etcd client per cluster (its channels stay connected, so a status asks etcd
    without a TLS handshake per member), the HTTPS connections to every listener, and the TLS
    context they were made with. A cluster whose members or certificates changed gets a new
    client; new certificate files, a new context (and so new connections)."""

    def __init__(self, timeout: float = 1.0) -> None:
        self.timeout = timeout
        self._clients: dict[Any, EtcdClient] = {}
        # when every member answered the last gather, by client key (gRPC lets a channel idle
        # long enough go, and a member may restart between gathers); a replaced client's key
        # leaves it with the client
        self._warm: dict[Any, float] = {}
        self.http = KeptConnections()
        self._context: tuple[Any, SSLContext] | None = None

    @staticmethod
    def _key(cluster: ClusterTargets) -> tuple[Any, ...]:
        # the certificate files' identity too: a client's channels keep the bytes they were
        # made with, and `pki rotate` rewrites the files in place
        return (cluster.name, tuple(cluster.members.values()), _files(cluster.etcd_tls))

    def client(self, cluster: ClusterTargets) -> EtcdClient:
        key = self._key(cluster)
        found = self._clients.get(key)
        if found is None:
            for stale in [k for k in self._clients if k[0] == cluster.name]:
                self._close(stale)
            found = self._clients[key] = cluster.client(self.timeout)
        return found

    def retain(self, clusters: list[ClusterTargets]) -> None:
        """Close the clients of clusters no longer in the plan (a topology changed under a
        long-lived caller: their channels would retry a gone cluster until it closes)."""
        names = {c.name for c in clusters}
        for key in [k for k in self._clients if k[0] not in names]:
            self._close(key)

    def _close(self, key: Any) -> None:
        old = self._clients.pop(key)
        self._warm.pop(key, None)
        task = asyncio.get_running_loop().create_task(old.close())
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)

    def warm(self, clusters: list[ClusterTargets]) -> bool:
        """Whether every cluster's kept client was answered by quorum and by every member in
        the last gather (its channels are up)."""
        now = time.monotonic()
        return all(now - self._warm.get(self._key(c), -math.inf) <= WARM_FOR for c in clusters)

    def mark_warm(self, clusters: list[ClusterTargets], answered: list[bool]) -> None:
        for c, ok in zip(clusters, answered, strict=True):
            key = self._key(c)
            if ok and key in self._clients:
                self._warm[key] = time.monotonic()
            else:
                self._warm.pop(key, None)

    def cool(self) -> None:
        """Nothing is warm any more (a gather failed: its channels' state is unknown)."""
        self._warm.clear()

    def context(self, tls: PlatformTls) -> SSLContext:
        """The platform client context, made again when the CA or admin files changed."""
        key = (str(tls.root), _files((str(tls.ca), str(tls.admin.cert), str(tls.admin.key))))
        if self._context is None or self._context[0] != key:
            if self._context is not None:
                self.http.close()  # made with the old files
            self._context = (key, tls.client_context())
        return self._context[1]

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        self._warm.clear()
        self.http.close()
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


_CLOSING: set[asyncio.Task[None]] = set()
# how long a cluster whose every member answered counts as warm (its channels up): longer
# than between the gathers of a script asking in a loop, far shorter than gRPC's idle timeout
WARM_FOR = 15.0
# seconds between a member's failed status and the one retry (the etcd client's reconnect
# backoff starts at 100 ms)
MEMBER_RETRY_PAUSE = 0.15


def _files(paths: tuple[str, ...] | None) -> tuple[Any, ...] | None:
    """Paths with their size and modification time (None for a missing file)."""
    if paths is None:
        return None
    out: list[Any] = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, None))
    return tuple(out)


async def gather_status(
    state: StateDir,
    timeout: float = 1.0,
    *,
    history: int = 5,
    certificates: bool = True,
    supervisor: dict[str, Any] | None = None,
    clients: KeptClients | None = None,
) -> StatusReport:
    """Everything `haplane status` shows; `history`: how many of the last epochs to read,
    `certificates`: whether to read every certificate for the expiry summary (the console,
    which gathers every second, leaves them out); `supervisor`: its snapshot, when the
    supervisor itself asks (else it is asked over its socket); `clients`: etcd clients kept
    open by the caller (else made for this gather and closed after it).

    The etcd clusters are asked first, side by side (one client per cluster, shared by every
    question to it); then the global state, the fences and every listener, all at once."""
    if not state.topology_file.exists():
        raise NothingRunning(f"no topology has been started in {state.root} (`haplane up` first)")
    # off the loop: a stale plan is resolved through the topology model (the supervisor's
    # loop serves its socket meanwhile)
    plan = await asyncio.to_thread(targets, state)
    processes: dict[str, dict[str, Any]] = {}
    phase = "not running"
    version = None
    try:
        snap = supervisor or await ControlClient(state.socket, timeout=3.0).snapshot()
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
    tls = plan.tls
    kept = clients
    ctx = None if tls is None else kept.context(tls) if kept is not None else tls.client_context()
    keep = kept.http if kept is not None else None
    asks = (processes, timeout, ctx, keep)  # what every listener's report is asked with
    if kept is not None:
        kept.retain(plan.clusters)
    clients_of = {
        c.name: (kept.client(c) if kept is not None else c.client(timeout)) for c in plan.clusters
    }
    # kept clients that answered a whole gather before: their channels are up
    warm = kept is not None and kept.warm(plan.clusters)
    try:
        etcd = asyncio.gather(
            *(_cluster_report(c, clients_of[c.name], processes, timeout) for c in plan.clusters)
        )
        if not warm:
            # etcd first, and in each cluster one read before the others: with every gRPC
            # channel's TLS handshake started at once beside the HTTP requests, a member
            # missed its 1 s deadline in 5 of 12 runs with the example running here (0 of 12
            # this way, and sooner); once the channels are up, the global state's reads
            # share them. Channels already up are asked beside the rest (~50 ms sooner)
            await etcd
        (
            clusters,
            (
                replicas,
                (global_state, replication, cuts, divergences, sync),
                edges,
                gitops,
                consoles,
            ),
        ) = await asyncio.gather(
            etcd,
            asyncio.gather(
                asyncio.gather(*(_replica_report(r, *asks) for r in plan.replicas)),
                _global_report(plan, clients_of, processes, timeout, history),
                asyncio.gather(*(_edge_report(e, *asks) for e in plan.edges)),
                asyncio.gather(*(_gitops_report(g, *asks) for g in plan.gitops)),
                asyncio.gather(*(_console_report(c, *asks) for c in plan.console)),
            ),
        )
        if kept is not None:
            kept.mark_warm(
                plan.clusters,
                [c.quorum and all(m.member_id is not None for m in c.members) for c in clusters],
            )
    except BaseException:
        if kept is not None:
            kept.cool()  # the channels' state is unknown: the next gather asks etcd first
        raise
    finally:
        if kept is None:
            await asyncio.gather(*(c.close() for c in clients_of.values()), return_exceptions=True)
    expiry = None
    if certificates and tls is not None and tls.etcd_ca.exists():
        try:
            expiry = await asyncio.to_thread(expiry_summary, tls)
        except OSError:
            pass
        except Exception as exc:  # PkiError, imported only then (its module needs cryptography)
            from haplane.auth.pki import PkiError

            if not isinstance(exc, PkiError):
                raise
    return StatusReport(
        plan.topology,
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


def _process(name: str, processes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A component's process as the supervisor (or its pid record) says: state, pid, restarts."""
    proc = processes.get(name, {})
    return {
        "state": str(proc.get("state", "not running")),
        "pid": proc.get("pid"),
        "restarts": int(proc.get("restarts") or 0),
    }


async def _global_report(
    plan: StatusTargets,
    clients: dict[str, EtcdClient],
    processes: dict[str, dict[str, Any]],
    timeout: float,
    history: int,
) -> tuple[
    GlobalReport,
    list[ReplicationRow],
    list[dict[str, Any]],
    list[dict[str, Any]],
    dict[str, Any] | None,
]:
    """From the global control etcd: the active region and the last epochs; with replicators,
    each region's replication (the leading replicator's report and the processes), the last
    cuts recorded by switches, divergences, and the sync record (Sync pairs only). And each
    region's fence key, from the regions' own etcd."""
    g = GlobalState(clients[plan.global_cluster.name])

    async def active_and_history() -> tuple[Any, list[Any], str | None]:
        try:
            active, changes = await asyncio.gather(g.read(), g.history(history))
        except EtcdError as exc:
            return None, [], f"global control etcd: {exc}"
        return active, changes, None

    async def replication_records() -> tuple[
        dict[str, ReplicationReport],
        list[dict[str, Any]],
        list[dict[str, Any]],
        dict[str, Any] | None,
    ]:
        try:  # on its own: a late record leaves the active region shown
            return await _replication_records(plan, g, timeout)
        except EtcdError:
            return {}, [], [], None

    (active, changes, error), (reports, cuts, divergences, sync), fences = await asyncio.gather(
        active_and_history(), replication_records(), _fences(plan, clients, timeout)
    )
    return (
        GlobalReport(
            active.as_dict() if active else None,
            [c.as_dict() for c in changes],
            error,
            fences,
        ),
        _replication_rows(plan, reports, processes),
        cuts,
        divergences,
        sync,
    )


async def _replication_records(
    plan: StatusTargets, g: GlobalState, timeout: float
) -> tuple[
    dict[str, ReplicationReport], list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None
]:
    if not plan.replication:
        return {}, [], [], None
    reports, recorded, divergences = await asyncio.gather(
        g.replication_reports(timeout=timeout),
        g.cuts(timeout=timeout),
        g.divergences(timeout=timeout),
    )
    sync: dict[str, Any] | None = None
    if plan.has_sync:
        rec = await g.sync.read(timeout=timeout)
        sync = {**rec.as_dict(), "says": describe(rec)} if rec else {"says": describe(None)}
    return (
        reports,
        [recorded[e].as_dict() for e in sorted(recorded)[-5:]],
        [dict(d) for d in divergences[-5:]],
        sync,
    )


def _replication_rows(
    plan: StatusTargets,
    reports: dict[str, ReplicationReport],
    processes: dict[str, dict[str, Any]],
) -> list[ReplicationRow]:
    rows = []
    for region in plan.replication:
        rep = reports.get(region.region)
        row = ReplicationRow(region.region, rep.state if rep else "no report")
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
        for r in region.replicators:
            row.replicators.append({"name": r.name, "url": r.url, **_process(r.name, processes)})
        rows.append(row)
    return rows


async def _edge_report(
    edge: EdgeListener,
    processes: dict[str, dict[str, Any]],
    timeout: float,
    ctx: SSLContext | None = None,
    keep: KeptConnections | None = None,
) -> EdgeReport:
    report = EdgeReport(
        name=edge.name,
        kind=edge.kind,
        url=edge.url,
        admin_url=edge.admin_url,
        ready=False,
        **_process(edge.name, processes),
    )
    try:
        ready, status = await fetch(
            edge.admin_url,
            [("GET", "/readyz", None), ("GET", "/status", None)],
            timeout=timeout + 0.5,
            context=ctx,
            keep=keep,
        )
        report.ready = ready.status == 200
        doc = status.json()
        if not isinstance(doc, dict):
            raise ValueError(f"/status answered {type(doc).__name__}, not an object")
    except (HttpError, ValueError) as exc:
        if isinstance(exc, HttpError) and exc.answers:  # /readyz answered; /status did not
            report.ready = exc.answers[0].status == 200
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
    g: SiteListener,
    processes: dict[str, dict[str, Any]],
    timeout: float,
    ctx: SSLContext | None = None,
    keep: KeptConnections | None = None,
) -> GitopsReport:
    """Its `/readyz`, and its `/metrics` for the Lease (cheap: one listener, no API call)."""
    report = GitopsReport(
        name=g.name,
        site=g.site,
        url=g.url,
        server=g.server,
        ready=False,
        **_process(g.name, processes),
    )
    answers = await _site_answers(g, report, ("/readyz", "/metrics"), timeout, ctx, keep)
    if answers is not None:
        report.leading = leader_gauge(answers[1].text())
    return report


async def _site_answers(
    site: SiteListener,
    report: GitopsReport | ConsoleReport,
    paths: tuple[str, ...],
    timeout: float,
    ctx: SSLContext | None,
    keep: KeptConnections | None = None,
) -> list[Answer] | None:
    """A site instance's answers to GETs of `paths` (`/readyz` first) on one connection, its
    readiness (from `/readyz` alone) and error set on `report`; None unless all answered."""
    complete: list[Answer] | None = None
    try:
        got = complete = await fetch(
            site.url,
            [("GET", p, None) for p in paths],
            timeout=timeout + 0.5,
            context=ctx,
            keep=keep,
        )
    except HttpError as exc:
        got = exc.answers
        report.error = f"listener: {paths[len(got)]}: {exc}" if got else f"listener: {exc}"
    if got:  # /readyz answered
        report.ready = got[0].status == 200
        if not report.ready:
            report.error = got[0].text().strip()[:80] or f"HTTP {got[0].status}"
    return complete


async def _console_report(
    c: SiteListener,
    processes: dict[str, dict[str, Any]],
    timeout: float,
    ctx: SSLContext | None = None,
    keep: KeptConnections | None = None,
) -> ConsoleReport:
    """Its `/readyz` (no credentials needed: health is all an anonymous caller gets)."""
    report = ConsoleReport(
        name=c.name,
        site=c.site,
        url=c.url,
        server=c.server,
        ready=False,
        **_process(c.name, processes),
    )
    await _site_answers(c, report, ("/readyz",), timeout, ctx, keep)
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


async def _fences(
    plan: StatusTargets, clients: dict[str, EtcdClient], timeout: float
) -> dict[str, str | None]:
    """Each region's fence key (the clients are the caller's: not closed here)."""
    fences = RegionFences(
        {c.name.rpartition("/")[0]: clients[c.name] for c in plan.regional_clusters}
    )
    reads = await fences.read_all(timeout=timeout)
    return {
        region: None
        if read is None
        else str(read.value)
        if read.value
        else (read.raw.decode(errors="replace") if read.raw else "(none)")
        for region, read in reads.items()
    }


async def _replica_report(
    r: Listener,
    processes: dict[str, dict[str, Any]],
    timeout: float,
    ctx: SSLContext | None = None,
    keep: KeptConnections | None = None,
) -> ReplicaReport:
    ready, detail = False, "unreachable"
    with contextlib.suppress(HttpError):
        (answer,) = await fetch(
            r.url, [("GET", "/readyz", None)], timeout=timeout + 0.5, context=ctx, keep=keep
        )
        ready, detail = answer.status == 200, answer.text().strip()[:80]
    return ReplicaReport(
        name=r.name,
        kind="api",
        url=r.url,
        ready=ready,
        detail=detail,
        **_process(r.name, processes),
    )


async def _cluster_report(
    plan: ClusterTargets,
    client: EtcdClient,
    processes: dict[str, dict[str, Any]],
    timeout: float,
) -> ClusterReport:
    endpoints = plan.members

    async def quorum_and_alarms() -> tuple[str | None, dict[int, list[str]]]:
        try:
            await client.range(b"/haplane/health", timeout=timeout)
        except EtcdError as exc:
            return str(exc), {}
        alarms: dict[int, list[str]] = {}
        with contextlib.suppress(EtcdError):
            for a in await client.alarms(timeout=timeout):
                alarms.setdefault(a.member_id, []).append(a.alarm)
        return None, alarms

    async def member_status(ep: str) -> MemberStatus:
        """One member's status; asked again once when it failed early (a refused or torn
        connection, a handshake the member closed: seen right after a member replacement) and
        half the time is left: one failed connection is no verdict on a member."""
        started = time.monotonic()
        try:
            return await client.status(ep, timeout=timeout)
        except EtcdUnavailable:  # not a refusal (a certificate refused is not asked again)
            left = timeout - (time.monotonic() - started) - MEMBER_RETRY_PAUSE
            if left < timeout / 2:
                raise
        await asyncio.sleep(MEMBER_RETRY_PAUSE)  # past the channel's reconnect backoff
        return await client.status(ep, timeout=left)

    quorum_error, alarms = await quorum_and_alarms()  # first: its channel, then the others
    statuses = await asyncio.gather(
        *(member_status(ep) for ep in endpoints.values()), return_exceptions=True
    )
    quorum = quorum_error is None
    members = []
    leader_name = None
    for (name, ep), st in zip(endpoints.items(), statuses, strict=True):
        report = MemberReport(
            name=name, kind="etcd", endpoint=ep, quota=plan.quota, **_process(name, processes)
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
    return ClusterReport(plan.name, quorum, leader_name, members, quorum_error)
