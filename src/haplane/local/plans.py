"""Where each etcd member and API replica of a topology listens: the plans the supervisor starts
and that status, the CLI and the gate plans read.

Layer: run (`haplane.local`). Pure: from the topology and the port registry (ports the file
leaves out are assigned once and persisted).
"""

from __future__ import annotations

from dataclasses import dataclass

from haplane.store import MemberAddress
from haplane.topology import EtcdClusterView, Topology
from haplane.topology.model import GLOBAL_SCOPE

from .ports import PortRegistry


@dataclass
class ClusterPlan:
    view: EtcdClusterView
    addresses: dict[str, MemberAddress]

    @property
    def endpoints(self) -> list[str]:
        return [a.client_endpoint for a in self.addresses.values()]


def global_plan(clusters: list[ClusterPlan]) -> ClusterPlan:
    """The global control etcd among a topology's clusters."""
    return next(c for c in clusters if c.view.scope == GLOBAL_SCOPE)


@dataclass(frozen=True)
class ReplicaPlan:
    """One API server replica: its region, name, address and its region's etcd."""

    region: str
    name: str
    host: str
    port: int
    etcd_endpoints: tuple[str, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.region}/{self.name}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def resolve_replicas(
    topology: Topology, ports: PortRegistry, clusters: list[ClusterPlan]
) -> list[ReplicaPlan]:
    etcd_of = {c.view.scope: c for c in clusters}
    plans = []
    for site, region in topology.regions():
        endpoints = tuple(etcd_of[site.name].endpoints)
        for api in region.api_servers:
            host = topology.host_of(api, site.name)
            port = ports.resolve(f"{site.name}/{api.name}#http", host, api.port)
            plans.append(ReplicaPlan(site.name, api.name, host, port, endpoints))
    return plans


def port_key(qualified_name: str, which: str) -> str:
    return f"{qualified_name}#{which}"


def member_addresses(cluster: EtcdClusterView, ports: PortRegistry) -> dict[str, MemberAddress]:
    """Each member's address, assigning (and persisting) the ports the file left out."""
    return {
        m.qualified_name: MemberAddress(
            host=m.host,
            client_port=ports.resolve(port_key(m.qualified_name, "client"), m.host, m.client_port),
            peer_port=ports.resolve(port_key(m.qualified_name, "peer"), m.host, m.peer_port),
        )
        for m in cluster.members
    }


def resolve_addresses(topology: Topology, ports: PortRegistry) -> list[ClusterPlan]:
    """Every etcd cluster with the addresses of its members."""
    return [ClusterPlan(c, member_addresses(c, ports)) for c in topology.etcd_clusters()]
