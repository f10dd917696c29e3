"""Where the regional balancers and the global gate instances of a topology listen, what they
forward to, and the config file each `python -m haplane.gate` process is started with; where
the GitOps controller and console instances listen and which gate each dials.

Layer: run (`haplane.local`). Pure: from the topology, the port registry and the resolved etcd
clusters and API replicas; the supervisor writes the configs and starts the processes.

Ports the file leaves out are assigned once and persisted like every other port. Gate
instances on one host share one client port (SO_REUSEPORT: a kubeconfig names one address, and
a client keeps working when one instance dies); each has its own admin port (metrics, status).
A balancer's admin port also serves its region's aggregate health, which the gates probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from haplane.store import DEFAULT_GLOBAL_PREFIX
from haplane.topology import Topology
from haplane.topology.model import GLOBAL_SCOPE

from .plans import (
    ClusterPlan,
    ReplicaPlan,
    ReplicatorPlan,
    global_plan,
    port_key,
    resolve_addresses,
    resolve_replicas,
    resolve_replicators,
)
from .ports import PortRegistry
from .security import PlatformTls, platform_tls
from .state_dir import StateDir

# Fast health defaults (200 ms / fall 2 / rise 2): a dead replica leaves rotation at its first
# refused connect or within ~0.4 s of checks. A check may take up to 1 s: a busy replica's
# /readyz (a quorum read) can exceed the interval without the replica being unhealthy.
CHECK_INTERVAL = 0.2
CHECK_TIMEOUT = 1.0
CHECK_FALL = 2
CHECK_RISE = 2
# A gate's check of a balancer's /healthz/region answers from the balancer's memory (no etcd
# call): 0.5 s is ample, and halves the detection of a hung or silently cut-off region (two
# timed-out checks) that region failover waits for.
GATE_CHECK_TIMEOUT = 0.5
REGION_HEALTH_PATH = "/healthz/region"


class _Listening:
    """The client and admin addresses of a forwarding-engine process."""

    host: str
    port: int
    admin_port: int
    tls: bool

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.admin_port}"


@dataclass(frozen=True)
class BalancerPlan(_Listening):
    region: str
    name: str
    zone: str
    host: str
    port: int
    admin_port: int
    replicas: tuple[ReplicaPlan, ...]
    etcd_endpoints: tuple[str, ...]
    mode: str = "l4"
    control_endpoints: tuple[str, ...] = ()
    unhealthy_grace: float = 0.0  # 2 x the region's etcd election timeout
    tls: bool = False  # HTTPS on the admin listener (and through it, the replicas')

    @property
    def qualified_name(self) -> str:
        return f"{self.region}/{self.name}"


@dataclass(frozen=True)
class GatePlan(_Listening):
    name: str
    site: str
    host: str
    port: int
    admin_port: int
    regions: dict[str, tuple[BalancerPlan, ...]] = field(default_factory=dict)
    control_endpoints: tuple[str, ...] = ()
    mode: str = "l4"
    region_etcd: dict[str, tuple[str, ...]] = field(default_factory=dict)  # for fence keys
    tls: bool = False

    @property
    def qualified_name(self) -> str:
        return f"{GLOBAL_SCOPE}/{self.name}"


def resolve_balancers(
    topology: Topology,
    ports: PortRegistry,
    clusters: list[ClusterPlan],
    replicas: list[ReplicaPlan],
    tls: bool = False,
) -> list[BalancerPlan]:
    etcd_of = {c.view.scope: c for c in clusters}
    plans = []
    for site, region in topology.regions():
        mine = tuple(r for r in replicas if r.region == site.name)
        endpoints = tuple(etcd_of[site.name].endpoints)
        for lb in region.balancers:
            host = topology.host_of(lb, site.name)
            q = f"{site.name}/{lb.name}"
            plans.append(
                BalancerPlan(
                    region=site.name,
                    name=lb.name,
                    zone=lb.zone,
                    host=host,
                    port=ports.resolve(port_key(q, "listen"), host, lb.port),
                    admin_port=ports.resolve(port_key(q, "admin"), host, None),
                    replicas=mine,
                    etcd_endpoints=endpoints,
                    control_endpoints=tuple(global_plan(clusters).endpoints),
                    unhealthy_grace=2 * etcd_of[site.name].view.settings.election_timeout_ms / 1000,
                    tls=tls,
                )
            )
    return plans


def resolve_gates(
    topology: Topology,
    ports: PortRegistry,
    clusters: list[ClusterPlan],
    balancers: list[BalancerPlan],
    tls: bool = False,
) -> list[GatePlan]:
    control_endpoints = tuple(global_plan(clusters).endpoints)
    regions = {
        site.name: tuple(b for b in balancers if b.region == site.name)
        for site, _ in topology.regions()
    }
    etcd_of = {c.view.scope: c for c in clusters}
    region_etcd = {site.name: tuple(etcd_of[site.name].endpoints) for site, _ in topology.regions()}
    plans = []
    for gate in topology.spec.global_.gates:
        host = topology.host_of(gate)
        shared = ports.resolve(port_key(f"{GLOBAL_SCOPE}/gates@{host}", "listen"), host, None)
        plans.append(
            GatePlan(
                name=gate.name,
                site=gate.site,
                host=host,
                port=gate.port if gate.port is not None else shared,
                admin_port=ports.resolve(
                    port_key(f"{GLOBAL_SCOPE}/{gate.name}", "admin"), host, None
                ),
                regions=regions,
                control_endpoints=control_endpoints,
                region_etcd=region_etcd,
                tls=tls,
                mode=gate.mode,
            )
        )
    return plans


@dataclass(frozen=True)
class SiteInstancePlan:
    """A global instance placed on a site that reaches the platform through a gate (its own
    site's, else the first): a GitOps controller (its listener serves webhooks, health and
    metrics) or a web console (its HTTPS listener; it asks the API as the signed-in user)."""

    name: str
    site: str
    host: str
    port: int
    server: str  # the gate's URL
    tls: bool = False

    @property
    def qualified_name(self) -> str:
        return f"{GLOBAL_SCOPE}/{self.name}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


GitopsPlan = SiteInstancePlan
ConsolePlan = SiteInstancePlan


def _resolve_site_instances(
    instances: Sequence[Any],
    topology: Topology,
    ports: PortRegistry,
    gates: list[GatePlan],
    tls: bool,
    protocol: str,
) -> list[SiteInstancePlan]:
    plans = []
    for x in instances:
        host = topology.host_of(x)
        gate = next((g for g in gates if g.site == x.site), gates[0] if gates else None)
        plans.append(
            SiteInstancePlan(
                name=x.name,
                site=x.site,
                host=host,
                port=ports.resolve(port_key(f"{GLOBAL_SCOPE}/{x.name}", protocol), host, x.port),
                server=gate.url if gate is not None else "",
                tls=tls,
            )
        )
    return plans


def resolve_gitops(
    topology: Topology, ports: PortRegistry, gates: list[GatePlan], tls: bool = False
) -> list[GitopsPlan]:
    instances = topology.spec.global_.gitops
    return _resolve_site_instances(instances, topology, ports, gates, tls, "http")


def resolve_console(
    topology: Topology, ports: PortRegistry, gates: list[GatePlan], tls: bool = False
) -> list[ConsolePlan]:
    instances = topology.spec.global_.console.instances
    return _resolve_site_instances(instances, topology, ports, gates, tls, "https")


@dataclass(frozen=True)
class TopologyPlan:
    """Where everything of a topology listens: etcd clusters, API replicas, balancers, gates,
    replicators, GitOps controllers, consoles."""

    clusters: list[ClusterPlan]
    replicas: list[ReplicaPlan]
    balancers: list[BalancerPlan]
    gates: list[GatePlan]
    replicators: list[ReplicatorPlan] = field(default_factory=list)
    tls: PlatformTls | None = None  # None: `security.insecure: true`
    gitops: list[GitopsPlan] = field(default_factory=list)
    console: list[ConsolePlan] = field(default_factory=list)


def resolve_all(
    topology: Topology, ports: PortRegistry, tls: PlatformTls | None = None
) -> TopologyPlan:
    """Where everything listens; with `tls`, every URL is https and every etcd client of the
    supervisor and the CLI carries its certificate."""
    on = tls is not None
    clusters = resolve_addresses(topology, ports, tls)
    replicas = resolve_replicas(topology, ports, clusters, on)
    balancers = resolve_balancers(topology, ports, clusters, replicas, on)
    gates = resolve_gates(topology, ports, clusters, balancers, on)
    return TopologyPlan(
        clusters,
        replicas,
        balancers,
        gates,
        resolve_replicators(topology, ports, clusters, on),
        tls,
        resolve_gitops(topology, ports, gates, on),
        resolve_console(topology, ports, gates, on),
    )


def plan_of(topology: Topology, state: StateDir, read_only: bool = True) -> TopologyPlan:
    """A running topology's plan as the CLI reads it: ports from the state dir's registry
    (`read_only`: none assigned), TLS as the topology says."""
    return resolve_all(
        topology, PortRegistry(state.ports_file, read_only=read_only), platform_tls(state, topology)
    )


def _check(
    path: str, timeout: float = CHECK_TIMEOUT, tls: PlatformTls | None = None
) -> dict[str, Any]:
    """A health check; over HTTPS, verifying the upstream against the platform CA, with
    `tls` (health endpoints answer anonymous clients: no certificate is presented)."""
    check: dict[str, Any] = {
        "path": path,
        "interval": CHECK_INTERVAL,
        "timeout": timeout,
        "fall": CHECK_FALL,
        "rise": CHECK_RISE,
    }
    if tls is not None:
        check["tls_ca"] = str(tls.ca)
    return check


def _admin(host: str, port: int, tls: PlatformTls | None, kind: str, name: str) -> dict[str, Any]:
    admin: dict[str, Any] = {"host": host, "port": port}
    if tls is not None:
        pair = tls.serving(kind, name)
        admin.update(tls_cert=str(pair.cert), tls_key=str(pair.key), client_ca=str(tls.ca))
    return admin


def _etcd_tls(tls: PlatformTls | None, who: str) -> dict[str, str] | None:
    if tls is None:
        return None
    c = tls.etcd_client(who)
    return {"ca": str(c.ca), "cert": str(c.cert), "key": str(c.key)}


def balancer_config(plan: BalancerPlan, tls: PlatformTls | None = None) -> dict[str, Any]:
    """A regional balancer: the region's API replicas, checked on `/readyz`."""
    return {
        "name": plan.qualified_name,
        "listeners": [
            {"host": plan.host, "port": plan.port, "mode": plan.mode, "reuse_port": False}
        ],
        "pools": {
            plan.region: {
                "upstreams": [
                    {"name": r.name, "host": r.host, "port": r.port} for r in plan.replicas
                ],
                "check": _check("/readyz", tls=tls),
            }
        },
        "active_pool": plan.region,
        "admin": _admin(plan.host, plan.admin_port, tls, "balancer", plan.qualified_name),
        "etcd_tls": _etcd_tls(tls, f"balancer/{plan.qualified_name}"),
        "region": {
            "name": plan.region,
            "etcd": list(plan.etcd_endpoints),
            "global_etcd": list(plan.control_endpoints),
            "unhealthy_grace": plan.unhealthy_grace,
        },
    }


def gate_config(
    plan: GatePlan, topology: Topology | None = None, tls: PlatformTls | None = None
) -> dict[str, Any]:
    """A gate instance: one pool per region (its balancers, checked on their aggregate
    health), the active one named by the global control etcd."""
    listener: dict[str, Any] = {
        "host": plan.host,
        "port": plan.port,
        "mode": plan.mode,
        "reuse_port": True,
    }
    if tls is not None and plan.mode == "l7":
        serving, proxy = tls.serving("gate", plan.name), tls.front_proxy
        listener["tls"] = {
            "cert": str(serving.cert),
            "key": str(serving.key),
            "client_ca": str(tls.ca),
            "upstream_ca": str(tls.ca),
            "upstream_cert": str(proxy.cert),
            "upstream_key": str(proxy.key),
        }
    return {
        "name": plan.qualified_name,
        "listeners": [listener],
        "pools": {
            region: {
                "upstreams": [
                    {"name": b.name, "host": b.host, "port": b.port, "check_port": b.admin_port}
                    for b in lbs
                ],
                "check": _check(REGION_HEALTH_PATH, GATE_CHECK_TIMEOUT, tls),
            }
            for region, lbs in plan.regions.items()
        },
        "active_pool": None,  # until the global control etcd says which region is active
        "admin": _admin(plan.host, plan.admin_port, tls, "gate", plan.name),
        "etcd_tls": _etcd_tls(tls, f"gate/{plan.name}"),
        "follow": {
            "etcd": list(plan.control_endpoints),
            "prefix": DEFAULT_GLOBAL_PREFIX.decode(),
        },
        "controller": controller_config(plan, topology, tls) if topology is not None else None,
    }


def controller_config(
    plan: GatePlan, topology: Topology, tls: PlatformTls | None = None
) -> dict[str, Any]:
    """The failover controller beside a gate: every gate instance is a vantage point; it
    holds a client for every regional etcd, for the fence keys, and (with TLS) the token of
    its ServiceAccount to record automatic switches through the API."""
    f = topology.spec.global_.failover
    api = None
    if tls is not None:
        api = {
            "token_file": str(tls.controller_token),
            "ca": str(tls.ca),
            "regions": {r: [b.url for b in lbs] for r, lbs in plan.regions.items()},
        }
    return {
        "api": api,
        "gate": plan.name,
        "site": plan.site,
        "etcd": list(plan.control_endpoints),
        "prefix": DEFAULT_GLOBAL_PREFIX.decode(),
        "vantage_points": [g.name for g in topology.spec.global_.gates],
        "vantage_sites": {g.name: g.site for g in topology.spec.global_.gates},
        "priority": topology.region_priority(),
        "automatic": f.automatic,
        "down_after": f.down_after_ms / 1000,
        "min_interval": f.min_interval_ms / 1000,
        "failback": f.failback,
        "failback_after": f.failback_after_ms / 1000,
        "region_etcd": {r: list(eps) for r, eps in plan.region_etcd.items()},
        "pairs": [
            {
                "regions": [r.from_, r.to],
                "max_lag": r.max_lag_ms / 1000 if r.max_lag_ms is not None else None,
                "mode": r.mode,
            }
            for r in topology.spec.global_.replication
        ],
    }
