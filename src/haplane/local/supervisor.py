"""The supervisor: starts a topology's processes on this machine and keeps them running.

Layer: run (local). Owns the processes it spawns, the state dir, and its control socket.

Start-up: every etcd cluster (each region's and the global control etcd) starts concurrently; a
cluster is up when a linearizable read answers (a real quorum) and every member sees a leader.
A member of a *fresh* cluster that loses the race for a free port ("address already in use") makes
that cluster start again on newly assigned ports (its data dirs are empty, so nothing is lost);
a member with data never changes ports, because etcd remembers its peer URLs.

Then, all at once, the API replicas, balancers, gates and replicators. Once the replicas are
ready the supervisor keeps the controllers' ServiceAccount tokens (`controller_token`): the
failover controller's and the GitOps controller's. The GitOps controller instances start last,
once the gates are ready and (with TLS) the GitOps token of this run is written: they reach
the platform only through a gate, as that ServiceAccount. The web console instances start
beside them (`python -m haplane.console`): they gather the status from the state dir and ask
the API through their site's gate as whoever signs in to them, with no identity of their own.

After start-up each process is supervised (see `process.py`): restarted with backoff when it exits
on its own, left down when stopped on purpose by a fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from haplane.store import (
    EtcdBinary,
    EtcdClient,
    EtcdError,
    EtcdTls,
    GlobalState,
    RegionFences,
    find_etcd,
    join_command,
    member_command,
)
from haplane.telemetry import json_logging
from haplane.topology import Topology
from haplane.topology.model import GLOBAL_SCOPE
from haplane.topology.model import Audit as AuditSpec

from . import security, site_network
from .gate_plans import (
    BalancerPlan,
    ConsolePlan,
    GatePlan,
    GitopsPlan,
    balancer_config,
    gate_config,
    resolve_all,
    resolve_balancers,
    resolve_console,
    resolve_gates,
    resolve_gitops,
)
from .plans import (
    ClusterPlan,
    ReplicaPlan,
    ReplicatorPlan,
    global_plan,
    member_addresses,
    port_key,
    resolve_addresses,
    resolve_replicas,
    resolve_replicators,
)
from .platform_events import EventForwarder
from .ports import PortRegistry
from .process import FaultAction, ManagedProcess, ProcessSpec
from .security import SUPERVISOR, PlatformTls, platform_tls
from .state_dir import ENV_STATE_DIR, StateDir

log = logging.getLogger("haplane.supervisor")

START_ATTEMPTS = 3
_BIND_CONFLICT = "address already in use"


class SupervisorError(Exception):
    pass


class UnknownComponent(SupervisorError):
    pass


def emit(event: str, fields: dict[str, Any]) -> None:
    """A JSON log line: timestamp, level, component, message."""
    log.info(
        json.dumps(
            {
                "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                + f".{int(time.time() * 1000) % 1000:03d}Z",
                "level": "info",
                "component": fields.get("component", "supervisor"),
                "msg": event,
                **{k: v for k, v in fields.items() if k != "component"},
            }
        )
    )


class Supervisor:
    def __init__(
        self,
        topology: Topology,
        state: StateDir,
        *,
        binary: EtcdBinary | None = None,
        progress: Callable[[str], None] | None = None,
    ):
        self.topology = topology
        self.state = state
        self.binary = binary or find_etcd()
        self.progress = progress or (lambda msg: None)
        self.phase = "new"  # new -> starting -> healthy -> stopping -> stopped | failed
        self.error: str | None = None
        self.processes: dict[str, ManagedProcess] = {}
        self.clusters: list[ClusterPlan] = []
        # written at start (`security.encryption_config`): what every replica is given
        self.encryption_config = security.encryption_config_path(state, topology)
        self.replicas: list[ReplicaPlan] = []
        self.balancers: list[BalancerPlan] = []
        self.gates: list[GatePlan] = []
        self.replicators: list[ReplicatorPlan] = []
        self.gitops: list[GitopsPlan] = []
        self.console: list[ConsolePlan] = []
        # the controllers' tokens kept fresh, the snapshot schedule: cancelled at stop
        self._tokens: list[asyncio.Task[None]] = []
        self._events: tuple[EventForwarder, asyncio.Task[None]] | None = None
        self.started_in: float | None = None
        self.network = site_network.load(state)
        self.tls: PlatformTls | None = platform_tls(state, topology)
        self.etcd_tls = self.tls.etcd_client(SUPERVISOR) if self.tls is not None else None

    # ---- start ---------------------------------------------------------------------------

    async def start(self, timeout: float = 60.0) -> None:
        t0 = time.monotonic()
        self.phase = "starting"
        self.state.ensure()
        if self.binary.warning:
            self.progress(f"warning: {self.binary.warning}")
            emit("etcd-binary-warning", {"warning": self.binary.warning})
        self.progress(f"etcd {self.binary.version_text} ({self.binary.path})")
        ports = PortRegistry(self.state.ports_file)
        if self.tls is not None:
            issued = await asyncio.to_thread(
                security.ensure,
                self.tls,
                self.topology,
                resolve_all(self.topology, ports, self.tls),
            )
            self.progress(
                f"certificates: {len(issued)} issued" if issued else "certificates: current"
            )
            emit("certificates", {"issued": issued})
        self.encryption_config = await asyncio.to_thread(
            security.encryption_config, self.state, self.topology
        )
        self.clusters = resolve_addresses(self.topology, ports, self.tls)
        if self.network is not None:
            self.network.create()
            self.progress(f"site network: {', '.join(self.network.namespaces().values())}")
        try:
            fresh = await asyncio.gather(
                *(self._start_cluster(c, ports, timeout) for c in self.clusters)
            )
            await self._record_first_active_region(fresh=all(fresh))
            await self._reconcile_fences(activate=True)  # before any replica or gate starts
            on = self.tls is not None
            self.replicas = resolve_replicas(self.topology, ports, self.clusters, on)
            self.balancers = resolve_balancers(
                self.topology, ports, self.clusters, self.replicas, on
            )
            self.gates = resolve_gates(self.topology, ports, self.clusters, self.balancers, on)
            self.replicators = resolve_replicators(self.topology, ports, self.clusters, on)
            self.gitops = resolve_gitops(self.topology, ports, self.gates, on)
            self.console = resolve_console(self.topology, ports, self.gates, on)
            gitops_token = asyncio.Event()
            # All at once: a balancer is ready when a replica behind it is, a gate when a
            # balancer of the active region is; starting them together overlaps their start-up.
            await asyncio.gather(
                self._start_replicas(timeout, gitops_token),
                *(
                    self._start_engine(
                        b.qualified_name, "balancer", balancer_config(b, self.tls), timeout
                    )
                    for b in self.balancers
                ),
                *(
                    self._start_engine(
                        g.qualified_name, "gate", gate_config(g, self.topology, self.tls), timeout
                    )
                    for g in self.gates
                ),
                *(self._start_replicator(r, timeout) for r in self.replicators),
            )

            async def gitops() -> None:
                if self.gitops:
                    await self._await_gitops_token(gitops_token, timeout)
                    await asyncio.gather(*(self._start_gitops(g, timeout) for g in self.gitops))

            # the consoles need the gates only (not GitOps): they start beside it, which keeps
            # `up` from waiting for two more Python start-ups in a row on a busy machine
            await asyncio.gather(gitops(), *(self._start_console(c, timeout) for c in self.console))
        except BaseException as exc:
            self.phase = "failed"
            self.error = str(exc)
            await self._stop_all()
            raise
        for proc in self.processes.values():
            proc.supervise()
        events = EventForwarder(self.topology, self.state)  # also as Kubernetes Events
        self._events = (events, asyncio.create_task(events.run(), name="platform events"))
        recorded = events.wrap(emit)
        failures: asyncio.Queue[str] = asyncio.Queue()  # failed snapshots, for the triggers

        def snapshot_emit(event: str, fields: dict[str, object]) -> None:
            recorded(event, fields)
            if event == "snapshot-failed" and triggers.enabled:
                failures.put_nowait(str(fields.get("scope")))

        from .platform_watch import keep_watching

        self._tokens.append(
            asyncio.create_task(
                keep_watching(self.topology, self.state, recorded), name="platform watch"
            )
        )
        triggers = self.topology.spec.global_.runbook_triggers
        if self.topology.spec.global_.backups.snapshots.enabled:
            from .snapshots import keep_snapshots

            self._tokens.append(
                asyncio.create_task(
                    keep_snapshots(self.topology, self.state, snapshot_emit),
                    name="snapshot schedule",
                )
            )
        if triggers.enabled:
            from .runbook_triggers import keep_triggers

            self._tokens.append(
                asyncio.create_task(
                    keep_triggers(self.state, recorded, failures, float(triggers.every_seconds)),
                    name="runbook triggers",
                )
            )
        if self.topology.spec.global_.drills.enabled:
            from .drill_schedule import keep_drills

            self._tokens.append(
                asyncio.create_task(
                    keep_drills(self.topology, self.state, recorded), name="drill schedule"
                )
            )
        if self.topology.spec.global_.backups.logical.enabled:
            from .backup_schedule import keep_logical_backups

            self._tokens.append(
                asyncio.create_task(
                    keep_logical_backups(self.topology, self.state, recorded),
                    name="logical backup schedule",
                )
            )
        self.started_in = time.monotonic() - t0
        self.phase = "healthy"
        self.progress(f"healthy in {self.started_in:.1f}s")
        emit("healthy", {"seconds": round(self.started_in, 3)})

    def _child_env(self) -> dict[str, str]:
        """Children carry their state dir: operators (and tests) can tell whose they are. And
        UTC: the lines Go's log package writes (grpc-go inside etcd) carry local time without
        a zone, which `haplane logs` reads as UTC."""
        return {**os.environ, ENV_STATE_DIR: str(self.state.root), "TZ": "UTC"}

    def _process(
        self, name: str, kind: str, argv: list[str], host: str | None = None
    ) -> ManagedProcess:
        """A component's process: its log and pid record in the state dir, our env; in its
        site's network namespace when the topology runs with one per site (`ip netns exec`
        execs, so the PID is the component's own)."""
        prefix = self.network.exec_prefix(host) if self.network and host else []
        spec = ProcessSpec(
            name=name,
            kind=kind,
            argv=prefix + argv,
            log_path=self.state.log_file(name),
            pid_path=self.state.pid_file(name),
            env=self._child_env(),
        )
        return ManagedProcess(spec, on_event=emit)

    def _member_process(self, plan: ClusterPlan, qualified: str) -> ManagedProcess:
        member = next(m for m in plan.view.members if m.qualified_name == qualified)
        argv = member_command(
            self.binary,
            self.topology.name,
            plan.view,
            member,
            plan.addresses,
            self.state.data_dir(qualified),
            tls=self.tls.member(qualified) if self.tls is not None else None,
        )
        proc = self._process(qualified, "etcd", argv, member.host)
        original = list(proc.spec.argv)
        data, join = self.state.data_dir(qualified), self.state.join_file(qualified)

        async def before_spawn() -> None:
            """A member replaced with a fresh data dir (`haplane member replace`) joins the
            running cluster (`--initial-cluster-state existing`) instead of founding one."""
            proc.spec.argv = original
            try:
                initial = join.read_text().strip()
            except OSError:
                return
            if (data / "member").exists():  # joined already: its WAL says the rest
                join.unlink(missing_ok=True)
                return
            proc.spec.argv = join_command(original, initial)

        proc.before_spawn = before_spawn
        return proc

    async def _start_cluster(self, plan: ClusterPlan, ports: PortRegistry, timeout: float) -> bool:
        """Start a cluster's members and wait for quorum; whether it was new (no data)."""
        name = plan.view.name
        for attempt in range(1, START_ATTEMPTS + 1):
            fresh = not any(
                (self.state.data_dir(m.qualified_name) / "member").exists()
                for m in plan.view.members
            )
            self.progress(
                f"{name}: starting {len(plan.view.members)} members"
                + (" (new cluster)" if fresh else "")
            )
            procs = [self._member_process(plan, m.qualified_name) for m in plan.view.members]
            for p in procs:
                self.processes[p.spec.name] = p
                await p.spawn()
            exited = await self._await_cluster(plan, procs, timeout)
            if not exited:
                self.progress(f"{name}: quorum answered")
                return fresh
            conflicts = [p for p in exited if _BIND_CONFLICT in _tail(p.spec.log_path)]
            if fresh and conflicts and attempt < START_ATTEMPTS:
                self.progress(f"{name}: lost a race for a port; retrying on new ports")
                for p in procs:
                    await p.stop(grace=2.0)
                for m in plan.view.members:
                    shutil.rmtree(self.state.data_dir(m.qualified_name), ignore_errors=True)
                    if m.client_port is None:
                        ports.reassign(port_key(m.qualified_name, "client"), m.host)
                    if m.peer_port is None:
                        ports.reassign(port_key(m.qualified_name, "peer"), m.host)
                plan.addresses = member_addresses(plan.view, ports, self.tls is not None)
                continue
            details = (
                "; ".join(
                    f"{p.spec.name} exited with code {p.exit_code} (log {p.spec.log_path}): "
                    f"{_tail(p.spec.log_path, 300)}"
                    for p in exited
                )
                or f"no quorum within {timeout:.0f}s"
            )
            raise SupervisorError(f"{name} did not start: {details}")
        raise SupervisorError(f"{name} did not start in {START_ATTEMPTS} attempts")

    async def _record_first_active_region(self, *, fresh: bool) -> None:
        """The first start names the region of highest priority active under epoch 1; a record
        that exists (a restart after a failover) is kept. Writable at once only when every
        etcd cluster is brand new (`fresh`): otherwise a replica may still hold a grant read
        from a record since lost, and the failover controller unfences after the fence wait."""
        endpoints = global_plan(self.clusters).endpoints
        first = self.topology.region_priority()[0]
        failover = self.topology.spec.global_.failover
        endpoints_of = self._region_endpoints()
        fences = RegionFences(
            {r: EtcdClient(e, timeout=1.0, tls=self.etcd_tls) for r, e in endpoints_of.items()}
        )
        try:
            highest = await fences.highest_epoch(timeout=1.0)
        finally:
            await fences.close()
        async with EtcdClient(endpoints, timeout=2.0, tls=self.etcd_tls) as client:
            record, created = await GlobalState(client).initialize(
                first,
                by="haplane up",
                reason="first start: the region of highest priority",
                grant_ms=failover.grant_ms,
                margin_ms=failover.safety_margin_ms,
                fresh=fresh and highest == 0,
                min_epoch=highest + 1,
            )
        self.progress(
            f"active region: {record.region} (epoch {record.epoch}"
            + (", recorded now)" if created else ", as recorded)")
        )
        emit("active-region", {**record.as_dict(), "created": created})

    def _region_endpoints(self) -> dict[str, list[str]]:
        return {c.view.scope: c.endpoints for c in self.clusters if c.view.scope != GLOBAL_SCOPE}

    async def _reconcile_fences(
        self, regions: list[str] | None = None, *, activate: bool = False
    ) -> None:
        """Bring each region's fence key in line with the global record
        (`haplane.store.fence_key.target`): the others `standby:`, a returning region that
        still says `active:` frozen; with `activate` (only at `up`, before any replica or
        gate runs: state dirs from before the data fence get their keys here) also the active
        region `active:` when the record is writable. Before every start of a replica too (a
        region that was away)."""
        endpoints = self._region_endpoints()
        wanted = regions if regions is not None else list(endpoints)
        clients = {r: EtcdClient(endpoints[r], timeout=1.0, tls=self.etcd_tls) for r in wanted}
        fences = RegionFences(clients)
        try:
            async with global_plan(self.clusters).client(timeout=1.0) as control:
                record = await GlobalState(control).read()
            after = await fences.reconcile_all(record, activate=activate)
        except EtcdError as exc:
            self.progress(f"warning: fence keys not checked: {exc}")
            return
        finally:
            await fences.close()
        for region, read in after.items():
            value = str(read.value) if read is not None and read.value else None
            emit("fence-key", {"region": region, "value": value, "answered": read is not None})
            if regions is None:
                self.progress(f"{region}: fence key {value or '(no answer)'}")

    async def _start_replicas(self, timeout: float, gitops_token: asyncio.Event) -> None:
        """Every API replica; once they are ready, the controllers' tokens (`_keep_tokens`)."""
        await asyncio.gather(*(self._start_replica(r, timeout) for r in self.replicas))
        self._keep_tokens(gitops_token)

    def _keep_tokens(self, gitops_written: asyncio.Event) -> None:
        """The failover controller's and the GitOps controller's ServiceAccount tokens,
        renewed (`controller_token`) until `stop`; none for an insecure topology (no
        authentication: the failover controller records in etcd, GitOps needs no token)."""
        if self.tls is None:
            gitops_written.set()
            return
        from haplane.auth.rbac import FAILOVER_CONTROLLER_SA, GITOPS_CONTROLLER_SA

        from .controller_token import keep

        urls = [r.url for r in self.replicas]
        ssl = security.http_ssl(self.tls)
        self._tokens += [
            asyncio.create_task(
                keep(self.tls.controller_token, urls, ssl, FAILOVER_CONTROLLER_SA),
                name="failover controller token",
            ),
        ]
        if self.gitops:
            self._tokens.append(
                asyncio.create_task(
                    keep(self.tls.gitops_token, urls, ssl, GITOPS_CONTROLLER_SA, gitops_written),
                    name="gitops controller token",
                )
            )

    async def _await_gitops_token(self, written: asyncio.Event, timeout: float) -> None:
        """The GitOps token of this run on disk (the replicas create the ServiceAccount once
        their region is writable): an instance started before it would reach the platform
        anonymously, and read its `tokenFile` again only seconds later."""
        try:
            await asyncio.wait_for(written.wait(), timeout)
        except TimeoutError:
            raise SupervisorError(
                f"no token for the GitOps controller's ServiceAccount within {timeout:.0f}s "
                "(the API replicas create it once their region is writable; see their logs)"
            ) from None
        if self.tls is not None:
            self.progress("gitops: ServiceAccount token written")

    async def _start_replica(self, plan: ReplicaPlan, timeout: float) -> None:
        proc = self._process(
            plan.qualified_name,
            "api",
            [
                sys.executable,
                "-m",
                "haplane.api",
                "--region",
                plan.region,
                "--replica",
                plan.name,
                "--listen",
                f"{plan.host}:{plan.port}",
                "--etcd",
                ",".join(plan.etcd_endpoints),
                "--global-etcd",
                ",".join(global_plan(self.clusters).endpoints),
                "--regions",
                ",".join(s.name for s, _ in self.topology.regions()),
                "--write-log",
                str(self.state.write_log(plan.qualified_name)),
                *_sync_args(plan),
                *self._replica_security_args(plan),
                "--encryption-provider-config",
                str(self.encryption_config),
            ],
            plan.host,
        )
        region = plan.region

        async def check_fence() -> None:
            await self._reconcile_fences([region])

        proc.before_spawn = check_fence
        self.processes[plan.qualified_name] = proc
        await proc.spawn()
        await self._await_ready(proc, f"{plan.url}/readyz", timeout)
        self.progress(f"{plan.qualified_name}: ready at {plan.url}")

    def _replica_security_args(self, plan: ReplicaPlan) -> list[str]:
        """TLS, authentication, RBAC and audit (kube-apiserver's flags), unless insecure."""
        if self.tls is None:
            return []
        serving = self.tls.serving("apiserver", plan.qualified_name)
        audit = self.topology.spec.security.audit
        args = [
            "--tls-cert-file", str(serving.cert),
            "--tls-private-key-file", str(serving.key),
            "--client-ca-file", str(self.tls.ca),
            "--service-account-key-file", str(self.tls.service_account_key),
            "--anonymous", "health",
            "--authorization-mode", "RBAC",
            "--audit-log-path", str(self.state.audit_log(plan.qualified_name)),
            *audit_args(audit),
            *_etcd_tls_args(self.tls.etcd_client(f"apiserver/{plan.qualified_name}")),
        ]  # fmt: skip
        if any(g.mode == "l7" for g in self.topology.spec.global_.gates):
            # only then: the replicas believe X-Remote-* headers from the front-proxy CA's
            # certificate with this CN
            args += [
                "--requestheader-client-ca-file", str(self.tls.front_proxy_ca),
                "--requestheader-allowed-names", security.FRONT_PROXY,
            ]  # fmt: skip
        return args

    async def _start_replicator(self, plan: ReplicatorPlan, timeout: float) -> None:
        """A region's replicator (`python -m haplane.replication`): it copies from whichever
        paired region its region's fence key names as the source."""
        argv = [
            sys.executable, "-m", "haplane.replication",
            "--region", plan.region,
            "--name", plan.name,
            "--listen", f"{plan.host}:{plan.port}",
            "--etcd", ",".join(plan.etcd_endpoints),
            "--global-etcd", ",".join(global_plan(self.clusters).endpoints),
            "--divergence-dir", str(self.state.root / "divergence"),
        ]  # fmt: skip
        for region, endpoints in plan.sources:
            argv += ["--source", f"{region}={','.join(endpoints)}"]
        if self.tls is not None:
            serving = self.tls.serving("replicator", plan.qualified_name)
            argv += [
                "--tls-cert-file", str(serving.cert),
                "--tls-private-key-file", str(serving.key),
                "--client-ca-file", str(self.tls.ca),
                *_etcd_tls_args(self.tls.etcd_client(f"replicator/{plan.qualified_name}")),
            ]  # fmt: skip
        proc = self._process(plan.qualified_name, "replicator", argv, plan.host)
        self.processes[plan.qualified_name] = proc
        await proc.spawn()
        await self._await_ready(proc, f"{plan.url}/readyz", timeout)
        self.progress(f"{plan.qualified_name}: ready at {plan.url}")

    async def _start_gitops(self, plan: GitopsPlan, timeout: float) -> None:
        """A GitOps controller instance (`python -m haplane.gitops`), with a kubeconfig of its
        own naming the gate it dials and (with TLS) the GitOps token file; ready once its
        `/readyz` says it reached the platform."""
        # private: clones of private repositories, kubeconfigs naming the token
        self.state.gitops_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.state.gitops_dir.chmod(0o700)
        cache = self.state.gitops_dir / plan.name
        cache.mkdir(mode=0o700, exist_ok=True)
        argv = [
            sys.executable, "-m", "haplane.gitops",
            "--kubeconfig", str(self._gitops_kubeconfig(plan)),
            "--identity", plan.name,
            "--cache", str(cache),
            "--listen", f"{plan.host}:{plan.port}",
        ]  # fmt: skip
        if self.tls is not None:
            serving = self.tls.serving("gitops", plan.name)
            argv += [
                "--tls-cert-file", str(serving.cert),
                "--tls-private-key-file", str(serving.key),
                # webhooks must be signed: an unsigned poke is 401
                "--webhook-secret-file", str(self._gitops_webhook_secret()),
            ]  # fmt: skip
        proc = self._process(plan.qualified_name, "gitops", argv, plan.host)
        self.processes[plan.qualified_name] = proc
        await proc.spawn()
        await self._await_ready(proc, f"{plan.url}/readyz", timeout)
        self.progress(f"{plan.qualified_name}: ready at {plan.url} (through {plan.server})")

    async def _start_console(self, plan: ConsolePlan, timeout: float) -> None:
        """A web console instance (`python -m haplane.console`): HTTPS with its pair from the
        platform CA; it asks the API through `plan.server` as the signed-in user (a token's, or
        a client certificate's owner through impersonation with `console-client`); ready once
        it gathered the status."""
        argv = [
            sys.executable, "-m", "haplane.console",
            "--state-dir", str(self.state.root),
            "--name", plan.name,
            "--listen", f"{plan.host}:{plan.port}",
            "--server", plan.server,
        ]  # fmt: skip
        for gate_url in dict.fromkeys(g.url for g in self.gates):  # one URL per gate host
            if gate_url != plan.server:
                argv += ["--fallback-server", gate_url]
        if self.tls is not None:
            serving = self.tls.serving("console", plan.name)
            impersonator = self.tls.console_client
            argv += [
                "--ca-file", str(self.tls.ca),
                "--tls-cert-file", str(serving.cert),
                "--tls-private-key-file", str(serving.key),
                # browsers' client certificates, checked against the platform CA; the console
                # then asks as their owner with its own pair (impersonation)
                "--client-ca-file", str(self.tls.ca),
                "--client-cert-file", str(impersonator.cert),
                "--client-key-file", str(impersonator.key),
            ]  # fmt: skip
        proc = self._process(plan.qualified_name, "console", argv, plan.host)
        self.processes[plan.qualified_name] = proc
        await proc.spawn()
        await self._await_ready(proc, f"{plan.url}/readyz", timeout)
        self.progress(f"{plan.qualified_name}: ready at {plan.url} (through {plan.server})")

    def _gitops_webhook_secret(self) -> Path:
        """STATE/gitops/webhook.secret (0600), made once: give it to the git server that
        sends push notifications."""
        path = self.state.gitops_webhook_secret
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            os.replace(tmp, path)
        return path

    def _gitops_kubeconfig(self, plan: GitopsPlan) -> Path:
        """STATE/gitops/NAME.kubeconfig (0600): the gate, the platform CA and the token file
        the supervisor renews; plain HTTP and no user when insecure."""
        return write_kubeconfig(
            self.state.gitops_dir / f"{plan.name}.kubeconfig",
            self.topology.name,
            plan.server,
            ca=self.tls.ca if self.tls is not None else None,
            token_file=self.tls.gitops_token if self.tls is not None else None,
            user="haplane-gitops",
        )

    async def _start_engine(
        self, name: str, kind: str, config: dict[str, Any], timeout: float
    ) -> None:
        """A regional balancer or a gate instance: `python -m haplane.gate` with its config
        written to the state dir; ready once its admin `/readyz` answers 200 (its active pool
        has a healthy upstream)."""
        path = self.state.config_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, path)
        proc = self._process(
            name,
            kind,
            [sys.executable, "-m", "haplane.gate", "--config", str(path)],
            config["listeners"][0]["host"],
        )
        self.processes[name] = proc
        await proc.spawn()
        admin = config["admin"]
        scheme = "https" if self.tls is not None else "http"
        url = f"{scheme}://{admin['host']}:{admin['port']}/readyz"
        await self._await_ready(proc, url, timeout)
        self.progress(f"{name}: ready")

    async def _await_ready(self, proc: ManagedProcess, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # health endpoints answer anonymous clients: the platform CA, no certificate
        ssl_context = self.tls.client_context(identity=False) if self.tls is not None else None
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=1.5),
            connector=aiohttp.TCPConnector(ssl=ssl_context if ssl_context else True),
        ) as session:
            while time.monotonic() < deadline:
                if proc._proc is not None and proc._proc.returncode is not None:
                    raise SupervisorError(
                        f"{proc.spec.name} exited with code {proc._proc.returncode}: "
                        f"{_tail(proc.spec.log_path, 600)}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise SupervisorError(f"{proc.spec.name} not ready within {timeout:.0f}s ({url})")

    async def _await_cluster(
        self, plan: ClusterPlan, procs: list[ManagedProcess], timeout: float
    ) -> list[ManagedProcess]:
        """Wait for quorum. Returns the members that exited meanwhile ([] = healthy)."""
        endpoints = plan.endpoints
        deadline = time.monotonic() + timeout
        async with EtcdClient(endpoints, timeout=0.5, tls=self.etcd_tls) as client:
            while time.monotonic() < deadline:
                exited = [
                    p for p in procs if p._proc is not None and p._proc.returncode is not None
                ]
                if exited:
                    for p in exited:
                        p.exit_code = p._proc.returncode if p._proc else None
                        p.state = "exited"
                        p.spec.pid_path.unlink(missing_ok=True)
                    return exited
                if await cluster_ready(client, endpoints):
                    return []
                await asyncio.sleep(0.1)
        return [p for p in procs if p._proc is not None and p._proc.returncode is not None]

    # ---- run and stop --------------------------------------------------------------------

    async def stop(self) -> None:
        self.phase = "stopping"
        self.progress("stopping")
        await self._stop_all()
        self.phase = "stopped"
        emit("stopped", {})

    async def _stop_all(self) -> None:
        for task in self._tokens:
            task.cancel()
        await asyncio.gather(*self._tokens, return_exceptions=True)
        self._tokens = []
        if self._events is not None:  # what is still queued, while the gates still run
            forwarder, task = self._events
            await forwarder.drain(2.0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._events = None
        # the platform's processes, then each etcd cluster leader last (`stop_leader_last`)
        etcd = {n for n, p in self.processes.items() if p.spec.kind == "etcd"}
        await asyncio.gather(*(p.stop() for n, p in self.processes.items() if n not in etcd))

        async def cluster(plan: ClusterPlan) -> None:
            eps = {
                m.qualified_name: plan.addresses[m.qualified_name].client_endpoint
                for m in plan.view.members
                if m.qualified_name in etcd
            }
            async with plan.client(timeout=0.5) as client:
                await stop_leader_last(client, eps, lambda n: self.processes[n].stop())

        for c, outcome in zip(
            self.clusters,
            await asyncio.gather(*(cluster(c) for c in self.clusters), return_exceptions=True),
            strict=True,
        ):
            if isinstance(outcome, BaseException):
                self.progress(f"warning: {c.view.scope}'s members not stopped in order: {outcome}")
        await asyncio.gather(*(p.stop() for p in self.processes.values()))  # any left
        if self.network is not None:
            try:
                self.network.cleanup()
            except Exception as exc:
                self.progress(f"warning: site network not fully removed: {exc}")

    async def fault(self, action: FaultAction, name: str) -> dict[str, Any]:
        proc = self.processes.get(name)
        if proc is None:
            raise UnknownComponent(
                f"no component named {name!r}; known: {', '.join(sorted(self.processes))}"
            )
        await proc.fault(action)
        return proc.snapshot()

    def snapshot(self) -> dict[str, Any]:
        return {
            "topology": self.topology.name,
            "phase": self.phase,
            "error": self.error,
            "startedInSeconds": self.started_in,
            "etcd": {
                "version": self.binary.version_text,
                "path": str(self.binary.path),
                "warning": self.binary.warning,
            },
            "components": [p.snapshot() for p in self.processes.values()],
        }


async def stop_leader_last(
    client: EtcdClient, endpoints: Mapping[str, str], stop: Callable[[str], Awaitable[None]]
) -> None:
    """Stop a cluster's members (name -> client endpoint), followers first, the leader last.
    A leader stopped together with its followers spends its stop trying to hand leadership
    to one of them, until its grace runs out (measured here: 2.0-2.1 s for a 3-member
    cluster, ~5 s in a topology's `down`); stopped alone, it has nobody to hand it to and
    stops at once (0.07-0.12 s for the three). No leader answering: all at once."""

    async def leads(ep: str) -> bool:
        with contextlib.suppress(EtcdError):
            return (await client.status(ep, timeout=0.5)).is_leader
        return False

    answers = await asyncio.gather(*(leads(ep) for ep in endpoints.values()))
    leader = next((n for n, yes in zip(endpoints, answers, strict=True) if yes), None)
    await asyncio.gather(*(stop(n) for n in endpoints if n != leader))
    if leader is not None:
        await stop(leader)


async def cluster_ready(client: EtcdClient, endpoints: list[str]) -> bool:
    """A real quorum answered a linearizable read, and every member sees a leader."""
    try:
        await client.range(b"/haplane/health", timeout=0.5)
        statuses = await asyncio.gather(
            *(client.status(ep, timeout=0.5) for ep in endpoints), return_exceptions=True
        )
    except EtcdError:
        return False
    return all(not isinstance(s, BaseException) and s.leader != 0 for s in statuses)


def _tail(path: Any, limit: int = 4000) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - limit))
        return f.read().decode("utf-8", "replace")
    return ""


def configure_logging(handler: logging.Handler | None = None) -> None:
    """Every logger of the supervisor's process (`haplane.local.*` too) as JSON lines to
    `handler` (default: stderr, which the detached supervisor writes to its log)."""
    json_logging("supervisor", handler)


def write_kubeconfig(
    path: Path,
    cluster: str,
    server: str,
    *,
    ca: Path | None,
    token_file: Path | None,
    user: str,
) -> Path:
    """A kubeconfig of one context (mode 0600, written whole then renamed): `server`, trusted
    with `ca`, and a bearer token read from `token_file` (kubectl's `tokenFile`)."""
    cluster_entry: dict[str, Any] = {"server": server}
    if ca is not None:
        cluster_entry["certificate-authority"] = str(ca)
    user_entry: dict[str, Any] = {}
    if token_file is not None:
        user_entry["tokenFile"] = str(token_file)
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": cluster_entry}],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [{"name": f"{user}@{cluster}", "context": {"cluster": cluster, "user": user}}],
        "current-context": f"{user}@{cluster}",
    }
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)  # JSON is YAML: kubectl and the controller read it
    os.chmod(tmp, 0o600)  # an older file of that name keeps its mode through O_TRUNC
    tmp.replace(path)
    return path


def audit_args(audit: AuditSpec) -> list[str]:
    """A replica's audit flags from the topology's `security.audit` (the log's path aside)."""
    args = ["--audit-log-maxsize", str(audit.max_size_mb),
            "--audit-log-maxbackup", str(audit.max_backups)]  # fmt: skip
    if audit.policy_file:
        args += ["--audit-policy-file", audit.policy_file]
    if audit.mode == "batch":
        args += ["--audit-log-mode", "batch",
                 "--audit-log-batch-max-wait", f"{audit.batch_max_wait_ms}ms"]  # fmt: skip
    return args


def _etcd_tls_args(tls: EtcdTls) -> list[str]:
    return ["--etcd-cafile", str(tls.ca), "--etcd-certfile", str(tls.cert),
            "--etcd-keyfile", str(tls.key)]  # fmt: skip


def _sync_args(plan: ReplicaPlan) -> list[str]:
    """An API replica's flags for synchronous replication (none for asynchronous pairs)."""
    out: list[str] = []
    for region, endpoints in plan.sync_standbys:
        out += ["--sync-standby", f"{region}={','.join(endpoints)}"]
    if out:
        out += ["--sync-timeout-ms", str(plan.sync_timeout_ms)]
        out += ["--sync-strict"] if plan.sync_strict else []
    return out
