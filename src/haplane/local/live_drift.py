"""`haplane validate --live`: how a running topology differs from a topology file.

Layer: run (`haplane.local`). Asks each running etcd cluster for its members and each member for
its status (etcd's own answers, not haplane's records), and probes the API replicas, balancers
and gates at the addresses the running topology gave them; compares with the file. Findings use
the validation `Finding` shape (rule, severity, field path, message, fix).

What is compared:
- etcd members: members the file names that the live cluster lacks (`live-missing-member`), and
  members the live cluster has that the file does not name (`live-extra-member`);
- placement: a component whose zone, site or host in the file differs from the running
  topology's (`live-placement`): etcd cannot tell zones apart, so the running topology (the file
  `haplane up` was given, kept in the state dir) is the record of where things were placed;
- ports: an explicit port in the file that differs from the one the component listens on
  (`live-port`), for etcd from the member's own client and peer URLs;
- versions: members of one cluster running different etcd versions (`live-version`);
- reachability: a component of the file that does not answer where it should (`live-unreachable`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from haplane.store import EtcdError, etcd_member_name
from haplane.topology import Finding, Topology, load_file

from .gate_plans import resolve_all
from .ports import PortRegistry
from .security import http_ssl, platform_tls
from .state_dir import StateDir


class NotRunning(Exception):
    pass


def _finding(rule: str, severity: str, path: str, message: str, fix: str) -> Finding:
    return Finding(rule, severity, path, message, fix)  # type: ignore[arg-type]


def _placements(topology: Topology) -> dict[str, tuple[str, str, str]]:
    """Every component by its status name: (site, zone, host)."""
    out: dict[str, tuple[str, str, str]] = {}
    for site, region in topology.regions():
        for group in (region.etcd.members, region.api_servers, region.balancers):
            for c in group:
                out[f"{site.name}/{c.name}"] = (site.name, c.zone, topology.host_of(c, site.name))
    for m in topology.spec.global_.control_etcd.members:
        out[f"global/{m.name}"] = (m.site, m.zone or "", topology.host_of(m))
    for g in topology.spec.global_.gates:
        out[f"global/{g.name}"] = (g.site, "", topology.host_of(g))
    for x in topology.spec.global_.gitops:
        out[f"global/{x.name}"] = (x.site, "", topology.host_of(x))
    for ci in topology.spec.global_.console.instances:
        out[f"global/{ci.name}"] = (ci.site, "", topology.host_of(ci))
    return out


async def live_findings(
    file_topology: Topology, state: StateDir, timeout: float = 1.0
) -> list[Finding]:
    if not state.topology_file.exists():
        raise NotRunning(f"no topology has been started in {state.root} (`haplane up` first)")
    running = load_file(state.topology_file)
    ports = PortRegistry(state.ports_file, read_only=True)
    findings: list[Finding] = []

    # placement: the file against the running topology's record
    live_place = _placements(running)
    for name, (site, zone, host) in _placements(file_topology).items():
        was = live_place.get(name)
        if was is not None and was != (site, zone, host):
            findings.append(
                _finding(
                    "live-placement",
                    "error",
                    name,
                    f"{name} runs at site {was[0]} zone {was[1] or '-'} host {was[2]}; the file "
                    f"places it at site {site} zone {zone or '-'} host {host}",
                    "move it (stop, change the file, `haplane up`), or fix the file",
                )
            )

    # etcd: each cluster's own member list and statuses, at the running addresses
    plan = resolve_all(running, ports, platform_tls(state, running))
    running_clusters = {c.view.scope: c for c in plan.clusters}
    for cluster in file_topology.etcd_clusters():
        live = running_clusters.get(cluster.scope)
        if live is None:
            findings.append(
                _finding(
                    "live-missing-member",
                    "error",
                    cluster.name,
                    f"{cluster.name} is in the file but not running",
                    "`haplane up` the file",
                )
            )
            continue
        endpoints = live.endpoints
        try:
            async with live.client(timeout) as client:
                members = await client.members()
                statuses = []
                for ep in endpoints:
                    try:
                        statuses.append(await client.status(ep))
                    except EtcdError:
                        continue
        except EtcdError as exc:
            findings.append(
                _finding(
                    "live-unreachable",
                    "error",
                    cluster.name,
                    f"{cluster.name} did not answer: {exc}",
                    "`haplane status`; restart its members",
                )
            )
            continue
        live_names = {m.name: m for m in members}
        wanted = {etcd_member_name(m): m for m in cluster.members}
        for name, m in wanted.items():
            member = live_names.get(name)
            if member is None:
                findings.append(
                    _finding(
                        "live-missing-member",
                        "error",
                        m.qualified_name,
                        f"{m.qualified_name} is in the file but not a member of the running "
                        f"{cluster.name}",
                        f"add it: `etcdctl member add {name} --peer-urls ...`, then start it",
                    )
                )
                continue
            for which, explicit, urls in (
                ("client", m.client_port, member.client_urls),
                ("peer", m.peer_port, member.peer_urls),
            ):
                if explicit is not None and not any(u.endswith(f":{explicit}") for u in urls):
                    findings.append(
                        _finding(
                            "live-port",
                            "error",
                            m.qualified_name,
                            f"{m.qualified_name} {which} URLs are {', '.join(urls) or '-'}; the "
                            f"file says port {explicit}",
                            "change the file to the running port, or re-create the member",
                        )
                    )
        for name in sorted(set(live_names) - set(wanted)):
            findings.append(
                _finding(
                    "live-extra-member",
                    "warning",
                    cluster.name,
                    f"the running {cluster.name} has member {name}, which the file does not name",
                    f"remove it (`etcdctl member remove {live_names[name].member_id:x}`) or add "
                    "it to the file",
                )
            )
        versions = {s.version for s in statuses}
        if len(versions) > 1:
            findings.append(
                _finding(
                    "live-version",
                    "warning",
                    cluster.name,
                    f"{cluster.name} members run different etcd versions: "
                    f"{', '.join(sorted(versions))}",
                    "finish the rolling upgrade (one member at a time)",
                )
            )

    # API replicas, balancers, gates, GitOps controllers, consoles: do they answer where
    # they should?
    targets = [(r.qualified_name, f"{r.url}/livez") for r in plan.replicas]
    targets += [(b.qualified_name, f"{b.admin_url}/livez") for b in plan.balancers]
    targets += [(g.qualified_name, f"{g.admin_url}/livez") for g in plan.gates]
    targets += [(x.qualified_name, f"{x.url}/livez") for x in plan.gitops]
    targets += [(c.qualified_name, f"{c.url}/livez") for c in plan.console]
    file_names = set(_placements(file_topology))
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout + 1),
        connector=aiohttp.TCPConnector(ssl=http_ssl(plan.tls, identity=False)),
    ) as s:

        async def answers(url: str) -> bool:
            try:
                async with s.get(url) as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        results = await asyncio.gather(*(answers(url) for _, url in targets))
    for (name, url), ok in zip(targets, results, strict=True):
        if name in file_names and not ok:
            findings.append(
                _finding(
                    "live-unreachable",
                    "error",
                    name,
                    f"{name} does not answer at {url.removesuffix('/livez')}",
                    f"`haplane status`; `haplane fault restart {name}`",
                )
            )
    running_names = {name for name, _ in targets}
    for name in sorted(_served_components(file_topology) - running_names):
        findings.append(
            _finding(
                "live-missing-member",
                "error",
                name,
                f"{name} is in the file but not running",
                "stop and `haplane up` the file to start it",
            )
        )
    return findings


def _served_components(topology: Topology) -> set[str]:
    """API replicas, balancers, gates, GitOps controllers and consoles of a topology, by status
    name."""
    names = {
        f"{site.name}/{a.name}" for site, region in topology.regions() for a in region.api_servers
    }
    names |= {
        f"{site.name}/{b.name}" for site, region in topology.regions() for b in region.balancers
    }
    names |= {f"global/{x.name}" for x in topology.spec.global_.gitops}
    names |= {f"global/{c.name}" for c in topology.spec.global_.console.instances}
    return names | {f"global/{g.name}" for g in topology.spec.global_.gates}


def as_dicts(findings: list[Finding]) -> list[dict[str, Any]]:
    return [f.as_dict() for f in findings]
