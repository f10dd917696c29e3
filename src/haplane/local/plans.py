"""Where each etcd member and API replica of a topology listens: the plans the supervisor starts
and that status, the CLI and the gate plans read.

Layer: run (`haplane.local`). Pure: from the topology and the port registry (ports the file
leaves out are assigned once and persisted).
"""

from __future__ import annotations

from dataclasses import dataclass

from haplane.store import EtcdClient, EtcdTls, MemberAddress
from haplane.topology import EtcdClusterView, Topology
from haplane.topology.model import GLOBAL_SCOPE

from .ports import PortRegistry
from .security import SUPERVISOR, PlatformTls


@dataclass
class ClusterPlan:
    view: EtcdClusterView
    addresses: dict[str, MemberAddress]
    tls: EtcdTls | None = None  # the supervisor's and the CLI's client certificate

    @property
    def endpoints(self) -> list[str]:
        return [a.client_endpoint for a in self.addresses.values()]

    def client(self, timeout: float) -> EtcdClient:
        """A client of this cluster as the supervisor and the CLI dial it."""
        return EtcdClient(self.endpoints, timeout=timeout, tls=self.tls)


def global_plan(clusters: list[ClusterPlan]) -> ClusterPlan:
    """The global control etcd among a topology's clusters."""
    return next(c for c in clusters if c.view.scope == GLOBAL_SCOPE)


@dataclass(frozen=True)
class RegionalPlan:
    """A process of one region: its region, name, address and its region's etcd."""

    region: str
    name: str
    host: str
    port: int
    etcd_endpoints: tuple[str, ...]
    tls: bool = False  # serves HTTPS (the platform's certificates)

    @property
    def qualified_name(self) -> str:
        return f"{self.region}/{self.name}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class ReplicaPlan(RegionalPlan):
    """One API server replica, and its region's synchronous standbys (the regions paired with
    it in `Sync` mode, with their etcd endpoints; the longest `syncTimeoutMs` and any
    `strict` among those pairs)."""

    sync_standbys: tuple[tuple[str, tuple[str, ...]], ...] = ()
    sync_timeout_ms: int = 500
    sync_strict: bool = False


def resolve_replicas(
    topology: Topology, ports: PortRegistry, clusters: list[ClusterPlan], tls: bool = False
) -> list[ReplicaPlan]:
    etcd_of = {c.view.scope: c for c in clusters}
    plans = []
    for site, region in topology.regions():
        endpoints = tuple(etcd_of[site.name].endpoints)
        sync = [
            r
            for r in topology.spec.global_.replication
            if r.mode == "Sync" and site.name in (r.from_, r.to)
        ]
        standbys = tuple(
            (p, tuple(etcd_of[p].endpoints))
            for p in dict.fromkeys(r.to if r.from_ == site.name else r.from_ for r in sync)
            if p in etcd_of and p != site.name
        )
        timeout = max((r.sync_timeout_ms for r in sync), default=500)
        strict = any(r.strict for r in sync)
        for api in region.api_servers:
            host = topology.host_of(api, site.name)
            port = ports.resolve(f"{site.name}/{api.name}#http", host, api.port)
            plans.append(
                ReplicaPlan(
                    region=site.name,
                    name=api.name,
                    host=host,
                    port=port,
                    etcd_endpoints=endpoints,
                    tls=tls,
                    sync_standbys=standbys,
                    sync_timeout_ms=timeout,
                    sync_strict=strict,
                )
            )
    return plans


@dataclass(frozen=True)
class ReplicatorPlan(RegionalPlan):
    """One replicator, and the etcd of every region it may copy from (those paired with its
    own)."""

    sources: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (region, its etcd endpoints)


def resolve_replicators(
    topology: Topology, ports: PortRegistry, clusters: list[ClusterPlan], tls: bool = False
) -> list[ReplicatorPlan]:
    etcd_of = {c.view.scope: c for c in clusters}
    plans = []
    for site, region in topology.regions():
        pairs = [r for r in topology.spec.global_.replication if site.name in (r.from_, r.to)]
        partners = sorted({r.to if r.from_ == site.name else r.from_ for r in pairs} - {site.name})
        sources = tuple((p, tuple(etcd_of[p].endpoints)) for p in partners if p in etcd_of)
        for rep in region.replicators:
            host = topology.host_of(rep, site.name)
            port = ports.resolve(f"{site.name}/{rep.name}#http", host, rep.port)
            plans.append(
                ReplicatorPlan(
                    region=site.name,
                    name=rep.name,
                    host=host,
                    port=port,
                    etcd_endpoints=tuple(etcd_of[site.name].endpoints),
                    tls=tls,
                    sources=sources,
                )
            )
    return plans


def port_key(qualified_name: str, which: str) -> str:
    return f"{qualified_name}#{which}"


def member_addresses(
    cluster: EtcdClusterView, ports: PortRegistry, tls: bool = False
) -> dict[str, MemberAddress]:
    """Each member's address, assigning (and persisting) the ports the file left out."""
    return {
        m.qualified_name: MemberAddress(
            host=m.host,
            client_port=ports.resolve(port_key(m.qualified_name, "client"), m.host, m.client_port),
            peer_port=ports.resolve(port_key(m.qualified_name, "peer"), m.host, m.peer_port),
            tls=tls,
        )
        for m in cluster.members
    }


def resolve_addresses(
    topology: Topology, ports: PortRegistry, tls: PlatformTls | None = None
) -> list[ClusterPlan]:
    """Every etcd cluster with the addresses of its members (https with `tls`), and the
    supervisor's client certificate."""
    client = tls.etcd_client(SUPERVISOR) if tls is not None else None
    return [
        ClusterPlan(c, member_addresses(c, ports, tls is not None), client)
        for c in topology.etcd_clusters()
    ]
