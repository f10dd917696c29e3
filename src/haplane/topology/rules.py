"""HA rules: cross-field checks of a schema-valid topology, as findings.

Layer: model. Pure functions of a `Topology`; no I/O. `haplane validate` prints these findings,
`haplane up` refuses a file with errors unless `--force`, and tools that only reason about a file
(analyse, diagram) accept any schema-valid file regardless of findings.

Every finding names its rule id, severity, the field path (as in the file) and the fix.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from .model import (
    GLOBAL_SCOPE,
    ApiServer,
    Balancer,
    ConsoleInstance,
    EtcdClusterView,
    Gate,
    GitopsController,
    Placement,
    Replication,
    Replicator,
    Topology,
)

Severity = Literal["error", "warning"]

# etcd's own limits (server/embed/config.go Validate): election >= 5 x heartbeat, <= 50 s.
ETCD_MIN_ELECTION_TO_HEARTBEAT = 5
ETCD_MAX_ELECTION_MS = 50_000

RULES: dict[str, str] = {
    "etcd-member-count": "an etcd cluster needs an odd number of members, at least 3",
    "etcd-zone-majority": "no single zone may hold a majority of a regional etcd cluster",
    "control-etcd-sites": "the global control etcd needs members on 3 or more sites, no site "
    "holding a majority (a witness site breaks ties between two regions)",
    "gate-vantage-sites": "gate instances (health vantage points) on 3 or more sites",
    "gate-shared-port": "gate instances on one host share one port (clients know one address) "
    "and one mode",
    "gitops-controllers": "GitOps controller instances, when there are any, are 2 or more on "
    "2 or more sites (one leads; another takes over when its site fails)",
    "console-instances": "web console instances, when there are any, are 2 or more on 2 or "
    "more sites (a site failure leaves one to look at it with)",
    "api-replicas": "each region needs 2 or more API server replicas",
    "balancer-count": "each region needs balancers; 2 or more avoid a single point of failure",
    "duplicate-name": "names are unique within their scope",
    "port-conflict": "no two components listen on the same host and port",
    "etcd-timing": "etcd election timing that etcd itself accepts",
    "unknown-reference": "zones, sites and regions referred to must exist",
    "region-count": "region failover needs two or more regions",
    "failover-priority": "the failover priority lists every region exactly once",
    "replication-pair": "replication pairs join two different regions, once each (a pair "
    "replicates both ways: a->b and b->a are the same pair)",
    "replication-mode": "`syncTimeoutMs` and `strict` apply to `mode: Sync` pairs only; a "
    "region has at most one Sync pair; a strict pair stops writes while either region is down",
    "replicators": "a replicated region needs 2 or more replicators, in distinct zones",
    "unreplicated": "with two or more regions, every region is paired with another (else a "
    "failover to or from it hands clients none of the data)",
    "security": "TLS, authentication and RBAC stay on unless `security.insecure: true` says "
    "otherwise (a warning: every link is plain HTTP and every request allowed); a supplied CA "
    "is used as given, with `ca` settings it cannot have; with TLS no host is a wildcard "
    "address (certificates name what clients dial), and `certSANs` are DNS names or addresses",
    "fence-grant": "the write grant must exceed the safety margin by more than the minimum write "
    "window (grants only ever grow across epochs: a bad value would stay)",
}

# haplane.api.fencing.MIN_WRITE_WINDOW in ms: a permission shorter than this is never used
MIN_WRITE_WINDOW_MS = 20


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    path: str
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def validate(topo: Topology) -> list[Finding]:
    findings: list[Finding] = []
    for check in (
        _names,
        _references,
        _regional_etcd,
        _control_etcd,
        _gates,
        _gate_ports,
        _gitops,
        _console,
        _region_components,
        _failover,
        _replication,
        _ports,
        _security,
    ):
        findings.extend(check(topo))
    return findings


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


def _err(rule: str, path: str, message: str, fix: str) -> Finding:
    return Finding(rule, "error", path, message, fix)


def _warn(rule: str, path: str, message: str, fix: str) -> Finding:
    return Finding(rule, "warning", path, message, fix)


def _site_path(topo: Topology, site: str) -> str:
    idx = next(i for i, s in enumerate(topo.spec.sites) if s.name == site)
    return f"spec.sites[{idx}]"


def _names(topo: Topology) -> list[Finding]:
    out: list[Finding] = []

    def dupes(names: list[str], path: str, what: str) -> None:
        for name, n in Counter(names).items():
            if n > 1:
                out.append(
                    _err(
                        "duplicate-name",
                        path,
                        f"{what} {name!r} is defined {n} times",
                        f"give each {what} a distinct name",
                    )
                )

    dupes([s.name for s in topo.spec.sites], "spec.sites", "site")
    for i, site in enumerate(topo.spec.sites):
        if site.name == GLOBAL_SCOPE:
            out.append(
                _err(
                    "duplicate-name",
                    f"spec.sites[{i}].name",
                    f"site name {GLOBAL_SCOPE!r} is reserved for global components",
                    "rename the site",
                )
            )
        dupes(site.zones, f"spec.sites[{i}].zones", "zone")
        if site.region is not None:
            r = site.region
            dupes(
                [m.name for m in r.etcd.members]
                + [a.name for a in r.api_servers]
                + [b.name for b in r.balancers]
                + [x.name for x in r.replicators],
                f"spec.sites[{i}].region",
                f"component of region {site.name}:",
            )
    g = topo.spec.global_
    dupes(
        [m.name for m in g.control_etcd.members]
        + [x.name for x in g.gates]
        + [x.name for x in g.gitops]
        + [x.name for x in g.console.instances],
        "spec.global",
        "global component",
    )
    return out


def _references(topo: Topology) -> list[Finding]:
    out: list[Finding] = []
    for i, site in enumerate(topo.spec.sites):
        if site.region is None:
            continue
        r = site.region
        groups: list[tuple[str, list[str]]] = [
            ("etcd.members", [m.zone for m in r.etcd.members]),
            ("apiServers", [a.zone for a in r.api_servers]),
            ("balancers", [b.zone for b in r.balancers]),
            ("replicators", [x.zone for x in r.replicators]),
        ]
        for field, zones in groups:
            for j, zone in enumerate(zones):
                if zone not in site.zones:
                    out.append(
                        _err(
                            "unknown-reference",
                            f"spec.sites[{i}].region.{field}[{j}].zone",
                            f"zone {zone!r} is not a zone of site {site.name!r}",
                            f"use one of: {', '.join(site.zones)}",
                        )
                    )
    site_names = [s.name for s in topo.spec.sites]
    g = topo.spec.global_
    for j, m in enumerate(g.control_etcd.members):
        path = f"spec.global.controlEtcd.members[{j}]"
        msite = topo.site(m.site)
        if msite is None:
            out.append(
                _err(
                    "unknown-reference",
                    f"{path}.site",
                    f"no site named {m.site!r}",
                    f"use one of: {', '.join(site_names)}",
                )
            )
        elif m.zone is not None and m.zone not in msite.zones:
            out.append(
                _err(
                    "unknown-reference",
                    f"{path}.zone",
                    f"zone {m.zone!r} is not a zone of site {msite.name!r}",
                    f"use one of: {', '.join(msite.zones)}",
                )
            )
    placed_on_sites: list[tuple[str, Sequence[GitopsController | Gate | ConsoleInstance]]] = [
        ("gates", g.gates),
        ("gitops", g.gitops),
        ("console.instances", g.console.instances),
    ]
    for field, on_sites in placed_on_sites:
        for j, x in enumerate(on_sites):
            if topo.site(x.site) is None:
                out.append(
                    _err(
                        "unknown-reference",
                        f"spec.global.{field}[{j}].site",
                        f"no site named {x.site!r}",
                        f"use one of: {', '.join(site_names)}",
                    )
                )
    return out


def _quorum(n: int) -> int:
    return n // 2 + 1


def _member_count(cluster: EtcdClusterView, path: str) -> list[Finding]:
    n = len(cluster.members)
    if n < 3:
        return [
            _err(
                "etcd-member-count",
                path,
                f"{cluster.name} has {n} member(s): it cannot lose a single one",
                "use 3 members (tolerates 1 failure) or 5 (tolerates 2)",
            )
        ]
    if n % 2 == 0:
        tolerated = (n - 1) // 2
        return [
            _err(
                "etcd-member-count",
                path,
                f"{cluster.name} has {n} members: {n} members tolerate no more failures than "
                f"{n - 1} ({tolerated}), and more members fail more often",
                f"use {n - 1} or {n + 1} members",
            )
        ]
    return []


def _timing(topo: Topology, cluster: EtcdClusterView, path: str) -> list[Finding]:
    s = cluster.settings
    out: list[Finding] = []
    if s.election_timeout_ms < ETCD_MIN_ELECTION_TO_HEARTBEAT * s.heartbeat_interval_ms:
        out.append(
            _err(
                "etcd-timing",
                f"{path}.electionTimeoutMs",
                f"{cluster.name}: election timeout {s.election_timeout_ms} ms is less than "
                f"5 x the heartbeat interval {s.heartbeat_interval_ms} ms; etcd refuses it",
                f"set electionTimeoutMs >= {5 * s.heartbeat_interval_ms} (10 x heartbeat is usual)",
            )
        )
    if s.election_timeout_ms > ETCD_MAX_ELECTION_MS:
        out.append(
            _err(
                "etcd-timing",
                f"{path}.electionTimeoutMs",
                f"{cluster.name}: election timeout {s.election_timeout_ms} ms exceeds "
                f"etcd's limit of {ETCD_MAX_ELECTION_MS} ms",
                f"set electionTimeoutMs <= {ETCD_MAX_ELECTION_MS}",
            )
        )
    return out


def _regional_etcd(topo: Topology) -> list[Finding]:
    out: list[Finding] = []
    clusters = {c.scope: c for c in topo.etcd_clusters()}
    for i, site in enumerate(topo.spec.sites):
        if site.region is None:
            continue
        cluster = clusters[site.name]
        path = f"spec.sites[{i}].region.etcd"
        out += _member_count(cluster, f"{path}.members")
        out += _timing(topo, cluster, path)
        n = len(cluster.members)
        for zone, k in Counter(m.zone for m in cluster.members).items():
            if n > 1 and k >= _quorum(n):
                out.append(
                    _err(
                        "etcd-zone-majority",
                        f"{path}.members",
                        f"zone {zone!r} holds {k} of {n} members of {cluster.name}: "
                        "losing that zone loses quorum",
                        f"spread members so that no zone holds {_quorum(n)} or more "
                        "(one member per zone)",
                    )
                )
    return out


def _control_etcd(topo: Topology) -> list[Finding]:
    control = next(c for c in topo.etcd_clusters() if c.scope == GLOBAL_SCOPE)
    path = "spec.global.controlEtcd"
    out = _member_count(control, f"{path}.members") + _timing(topo, control, path)
    sites = Counter(m.site for m in control.members)
    n = len(control.members)
    if len(sites) < 3:
        out.append(
            _err(
                "control-etcd-sites",
                f"{path}.members",
                f"the global control etcd spans {len(sites)} site(s): when the site "
                "holding its majority fails, no region can be failed over",
                "place one member on each of 3 sites, one of them a witness site",
            )
        )
    else:
        for site, k in sites.items():
            if k >= _quorum(n):
                out.append(
                    _err(
                        "control-etcd-sites",
                        f"{path}.members",
                        f"site {site!r} holds {k} of {n} members of the global control "
                        "etcd: losing that site stops failover",
                        "spread the members so that no site holds a majority",
                    )
                )
    return out


def _gates(topo: Topology) -> list[Finding]:
    sites = {g.site for g in topo.spec.global_.gates}
    if len(sites) < 3:
        return [
            _err(
                "gate-vantage-sites",
                "spec.global.gates",
                f"gate instances are on {len(sites)} site(s): with fewer than 3 vantage "
                "sites, a one-sided network cut cannot be told from a region failure",
                "place a gate instance on each of 3 or more sites, including the witness",
            )
        ]
    return []


def _gate_ports(topo: Topology) -> list[Finding]:
    """Instances on one host must agree: all leave the port out, or all name the same one."""
    by_host: dict[str, list[tuple[int, int | None]]] = defaultdict(list)
    for j, gate in enumerate(topo.spec.global_.gates):
        by_host[topo.host_of(gate)].append((j, gate.port))
    out: list[Finding] = []
    for host, gates in by_host.items():
        ports = {port for _, port in gates}
        if len(ports) > 1:
            j = next(j for j, port in gates if port != gates[0][1])
            out.append(
                _err(
                    "gate-shared-port",
                    f"spec.global.gates[{j}].port",
                    f"gate instances on {host} would listen on different ports "
                    f"({', '.join(str(p) if p else 'assigned' for p in sorted(ports, key=str))}):"
                    " a client that knows one address loses the gate when that instance dies",
                    "give every gate instance on this host the same port, or leave all out",
                )
            )
        mode_of = {j: topo.spec.global_.gates[j].mode for j, _ in gates}
        if len(set(mode_of.values())) > 1:
            first = mode_of[gates[0][0]]
            j = next(j for j, mode in mode_of.items() if mode != first)
            out.append(
                _err(
                    "gate-shared-port",
                    f"spec.global.gates[{j}].mode",
                    f"gate instances on {host} share one port but not one mode (l4 and l7): a "
                    "client would get either, connection by connection",
                    "give every gate instance on this host the same mode",
                )
            )
    return out


def _gitops(topo: Topology) -> list[Finding]:
    """None is fine (GitOps is optional); one instance, or all on one site, is a single point
    of failure for every Sync (objects already applied stay, nothing new is applied)."""
    instances = topo.spec.global_.gitops
    sites = {x.site for x in instances}
    path = "spec.global.gitops"
    if len(instances) == 1:
        return [
            _warn(
                "gitops-controllers",
                path,
                f"a single GitOps controller instance ({instances[0].name} on "
                f"{instances[0].site}): while it is down, or its site is, nothing is synced",
                "add a second instance on another site, e.g. "
                f"{{name: gitops-2, site: {_other_site(topo, instances[0].site)}}}",
            )
        ]
    if len(instances) > 1 and len(sites) == 1:
        site = next(iter(sites))
        return [
            _warn(
                "gitops-controllers",
                path,
                f"every GitOps controller instance is on site {site!r}: when it fails, "
                "nothing is synced",
                f"place one instance on another site, e.g. {_other_site(topo, site)}",
            )
        ]
    return []


def _console(topo: Topology) -> list[Finding]:
    """None is fine (the console is optional); one instance, or all on one site, leaves
    nobody a console when that site fails, which is when it is wanted most."""
    instances = topo.spec.global_.console.instances
    path = "spec.global.console.instances"
    sites = {x.site for x in instances}
    if len(instances) == 1:
        return [
            _warn(
                "console-instances",
                path,
                f"a single console instance ({instances[0].name} on {instances[0].site}): "
                "while it or its site is down, there is no console",
                "add a second instance on another site, e.g. "
                f"{{name: console-2, site: {_other_site(topo, instances[0].site)}}}",
            )
        ]
    if len(instances) > 1 and len(sites) == 1:
        site = next(iter(sites))
        return [
            _warn(
                "console-instances",
                path,
                f"every console instance is on site {site!r}: when it fails, there is no console",
                f"place one instance on another site, e.g. {_other_site(topo, site)}",
            )
        ]
    return []


def _other_site(topo: Topology, site: str) -> str:
    return next((s.name for s in topo.spec.sites if s.name != site), "ANOTHER-SITE")


def _region_components(topo: Topology) -> list[Finding]:
    out: list[Finding] = []
    for i, site in enumerate(topo.spec.sites):
        if site.region is None:
            continue
        path = f"spec.sites[{i}].region"
        n_api = len(site.region.api_servers)
        if n_api < 2:
            out.append(
                _err(
                    "api-replicas",
                    f"{path}.apiServers",
                    f"region {site.name!r} has {n_api} API server replica(s): one failure "
                    "stops its control plane",
                    "run 2 or more replicas, in different zones",
                )
            )
        n_lb = len(site.region.balancers)
        if n_lb == 0:
            out.append(
                _err(
                    "balancer-count",
                    f"{path}.balancers",
                    f"region {site.name!r} has no balancer: clients cannot reach it",
                    "add 2 balancers in different zones",
                )
            )
        elif n_lb == 1:
            out.append(
                _warn(
                    "balancer-count",
                    f"{path}.balancers",
                    f"region {site.name!r} has a single balancer: a single point of "
                    "failure for the region",
                    "add a second balancer in another zone",
                )
            )
    return out


def _failover(topo: Topology) -> list[Finding]:
    regions = [s.name for s, _ in topo.regions()]
    out: list[Finding] = []
    if len(regions) < 2:
        out.append(
            _warn(
                "region-count",
                "spec.sites",
                f"{len(regions)} region(s): a region failure cannot be failed over",
                "add a second region (a site with a `region` block)",
            )
        )
    failover = topo.spec.global_.failover
    if failover.grant_ms <= failover.safety_margin_ms + MIN_WRITE_WINDOW_MS:
        out.append(
            _err(
                "fence-grant",
                "spec.global.failover.grantMs",
                f"grantMs {failover.grant_ms} is not above safetyMarginMs "
                f"{failover.safety_margin_ms} + {MIN_WRITE_WINDOW_MS} ms: the active region's "
                "replicas would never hold a usable write permission, and a grant recorded "
                "once never shrinks in later epochs",
                f"set grantMs above {failover.safety_margin_ms + MIN_WRITE_WINDOW_MS} (e.g. "
                f"{max(1000, 4 * failover.safety_margin_ms)}), or lower safetyMarginMs",
            )
        )
    prio = failover.priority
    if prio is not None:
        path = "spec.global.failover.priority"
        for name in prio:
            if name not in regions:
                out.append(
                    _err(
                        "failover-priority",
                        path,
                        f"{name!r} is not a region",
                        f"use region names: {', '.join(regions)}",
                    )
                )
        for name, k in Counter(prio).items():
            if k > 1:
                out.append(
                    _err(
                        "failover-priority",
                        path,
                        f"{name!r} is listed {k} times",
                        "list each region once",
                    )
                )
        missing = [r for r in regions if r not in prio]
        if missing:
            out.append(
                _err(
                    "failover-priority",
                    path,
                    f"regions missing from the priority list: {', '.join(missing)}",
                    "list every region, most preferred first",
                )
            )
    return out


_SAN_DNS = re.compile(
    r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", re.IGNORECASE
)


def _explicit_hosts(topo: Topology) -> Iterator[tuple[str, str]]:
    """(field path, host) of every host the file sets."""
    yield "spec.defaults.host", topo.spec.defaults.host
    for i, site in enumerate(topo.spec.sites):
        if site.host:
            yield f"spec.sites[{i}].host", site.host
        if site.region is None:
            continue
        r, base = site.region, f"spec.sites[{i}].region"
        placed: list[tuple[str, Sequence[Placement]]] = [
            ("etcd.members", r.etcd.members),
            ("apiServers", r.api_servers),
            ("balancers", r.balancers),
            ("replicators", r.replicators),
        ]
        for field, components in placed:
            for j, c in enumerate(components):
                if c.host:
                    yield f"{base}.{field}[{j}].host", c.host
    g = topo.spec.global_
    for field, global_components in (("controlEtcd.members", g.control_etcd.members),
                                      ("gates", g.gates), ("gitops", g.gitops),
                                      ("console.instances", g.console.instances)):  # fmt: skip
        for j, c in enumerate(global_components):
            if c.host:
                yield f"spec.global.{field}[{j}].host", c.host


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _certificate_names(topo: Topology) -> list[Finding]:
    """With TLS, every address is written into certificates: it must be one clients dial."""
    out: list[Finding] = []
    for path, host in _explicit_hosts(topo):
        if _unspecified(host):
            out.append(
                _err(
                    "security",
                    path,
                    f"{host} listens on every address, but a component's host is also the "
                    "address others dial and its certificate names: a client on another "
                    f"host cannot dial {host}, so no certificate it checks could match",
                    "give the host's own address (and reach it by other names through "
                    "`spec.security.certSANs`)",
                )
            )
    for k, san in enumerate(topo.spec.security.cert_sans):
        path = f"spec.security.certSANs[{k}]"
        try:
            address = ipaddress.ip_address(san)
        except ValueError:
            if not _SAN_DNS.fullmatch(san) or any(len(p) > 63 for p in san.split(".")):
                out.append(
                    _err(
                        "security",
                        path,
                        f"{san!r} is neither an IP address nor a DNS name",
                        "write a DNS name (e.g. api.example.com, `*.` allowed first) or an "
                        "IPv4/IPv6 address",
                    )
                )
            continue
        if address.is_unspecified or address.is_multicast:
            out.append(
                _err(
                    "security",
                    path,
                    f"{san} is no address a client dials",
                    "name the virtual IP or the DNS name clients use",
                )
            )
    return out


def _security(topo: Topology) -> list[Finding]:
    sec = topo.spec.security
    out: list[Finding] = [] if sec.insecure else _certificate_names(topo)
    if sec.insecure:
        out.append(
            _warn(
                "security",
                "spec.security.insecure",
                "security is off: every link is plain HTTP, anyone who reaches a listener is "
                "served, and every request is allowed",
                "remove `insecure: true` (TLS, client certificates, tokens and RBAC are the "
                "default) unless this topology is a throwaway experiment",
            )
        )
        if sec.ca is not None:
            out.append(
                _err(
                    "security",
                    "spec.security.ca",
                    "a CA is given but `insecure: true` issues no certificates",
                    "remove `ca`, or `insecure: true`",
                )
            )
    return out


def _replication(topo: Topology) -> list[Finding]:
    regions = {s.name for s, _ in topo.regions()}
    out: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for j, pair in enumerate(topo.spec.global_.replication):
        path = f"spec.global.replication[{j}]"
        for field, name in (("from", pair.from_), ("to", pair.to)):
            if name not in regions:
                out.append(
                    _err(
                        "replication-pair",
                        f"{path}.{field}",
                        f"{name!r} is not a region",
                        f"use one of: {', '.join(sorted(regions))}",
                    )
                )
        if pair.from_ == pair.to:
            out.append(
                _err(
                    "replication-pair",
                    path,
                    "a region cannot replicate to itself",
                    "name two different regions",
                )
            )
        key = tuple(sorted((pair.from_, pair.to)))
        if key in seen:
            out.append(
                _err(
                    "replication-pair",
                    path,
                    f"{pair.from_} and {pair.to} are paired twice (a pair replicates both ways)",
                    "remove the duplicate",
                )
            )
        seen.add((key[0], key[1]))
        out += _pair_mode(pair, path)
    out += _strict_alone(topo)
    paired = {r for pair in seen for r in pair}
    for i, site in enumerate(topo.spec.sites):
        if site.region is None:
            continue
        path = f"spec.sites[{i}].region.replicators"
        reps = site.region.replicators
        zones = {x.zone for x in reps}
        if site.name in paired and (len(reps) < 2 or len(zones) < 2):
            have = (
                "no replicator"
                if not reps
                else f"{len(reps)} replicator(s) in {len(zones)} zone(s)"
            )
            out.append(
                _err(
                    "replicators",
                    path,
                    f"region {site.name!r} is replicated but has {have}: one failure stops "
                    "the copy into it",
                    "add 2 replicators in different zones, e.g. "
                    "[{name: rep-1, zone: a}, {name: rep-2, zone: b}]",
                )
            )
        if len(regions) >= 2 and site.name not in paired:
            out.append(
                _warn(
                    "unreplicated",
                    f"spec.sites[{i}]",
                    f"region {site.name!r} is paired with no other region: a failover to or "
                    "from it hands clients none of the data written elsewhere",
                    f"add a pair to spec.global.replication, e.g. {{from: {site.name}, to: "
                    f"{next(iter(sorted(regions - {site.name})))}}}",
                )
            )
            if reps:
                out.append(
                    _warn(
                        "replicators",
                        path,
                        f"region {site.name!r} has replicators but no pair: they will idle",
                        "pair the region in spec.global.replication, or remove them",
                    )
                )
    return out


def _pair_mode(pair: Replication, path: str) -> list[Finding]:
    """`syncTimeoutMs` (any value) or `strict: true` on an Async pair: settings that would do
    nothing, most likely a forgotten `mode: Sync`. An explicit `strict: false` is what Async
    does anyway and passes."""
    out = []
    if pair.mode == "Async":
        for field, name in (("sync_timeout_ms", "syncTimeoutMs"), ("strict", "strict")):
            if field in pair.model_fields_set and (field != "strict" or pair.strict):
                out.append(
                    _err(
                        "replication-mode",
                        f"{path}.{name}",
                        f"{name} applies to synchronous pairs; this pair is Async",
                        f"set `mode: Sync` on the pair, or remove {name}",
                    )
                )
    return out


def _strict_alone(topo: Topology) -> list[Finding]:
    """Synchronous pairs: one per region at most (the acknowledgement trusts its one standby's
    confirmation without asking the control etcd who is synchronous: with two candidates a
    replica's stale view could acknowledge a write the promoted one lacks); and a strict pair
    stops its regions' writes while the other is down."""
    out = []
    pairs = topo.spec.global_.replication
    seen: dict[str, int] = {}
    pairs_seen: set[frozenset[str]] = set()
    for j, pair in enumerate(pairs):
        key = frozenset((pair.from_, pair.to))
        if pair.mode != "Sync" or key in pairs_seen:
            continue  # a pair listed twice is the `replication-pair` rule's
        pairs_seen.add(key)
        for region in dict.fromkeys((pair.from_, pair.to)):
            if region in seen:
                out.append(
                    _err(
                        "replication-mode",
                        f"spec.global.replication[{j}].mode",
                        f"region {region!r} is already in a Sync pair "
                        f"(spec.global.replication[{seen[region]}]): a region has at most one "
                        "synchronous partner",
                        "make this pair `mode: Async`",
                    )
                )
            seen.setdefault(region, j)
        if pair.strict:
            out.append(
                _warn(
                    "replication-mode",
                    f"spec.global.replication[{j}].strict",
                    f"strict synchronous replication: while one of {pair.from_} and {pair.to} "
                    "is down, the other (when active) answers every write with 504, and after "
                    "an unplanned failover writes wait until the lost region has rejoined",
                    "accept it (an RPO of zero over availability), or set `strict: false` "
                    "(degrade to `sync: none`)",
                )
            )
    return out


def _ports(topo: Topology) -> list[Finding]:
    """Explicit ports only: ports left out are assigned free ones at start-up."""
    owners: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)  # -> (kind, who)
    for i, site in enumerate(topo.spec.sites):
        if site.region is None:
            continue
        r = site.region
        base = f"spec.sites[{i}].region"
        for j, m in enumerate(r.etcd.members):
            for field, port in (("clientPort", m.client_port), ("peerPort", m.peer_port)):
                if port is not None:
                    owners[(topo.host_of(m, site.name), port)].append(
                        ("etcd", f"{base}.etcd.members[{j}].{field}")
                    )
        placed: list[tuple[str, Sequence[ApiServer | Balancer | Replicator]]] = [
            ("apiServers", r.api_servers),
            ("balancers", r.balancers),
            ("replicators", r.replicators),
        ]
        for field, components in placed:
            for j, c in enumerate(components):
                if c.port is not None:
                    owners[(topo.host_of(c, site.name), c.port)].append(
                        (field, f"{base}.{field}[{j}].port")
                    )
    g = topo.spec.global_
    for j, cm in enumerate(g.control_etcd.members):
        for field, port in (("clientPort", cm.client_port), ("peerPort", cm.peer_port)):
            if port is not None:
                owners[(topo.host_of(cm), port)].append(
                    ("etcd", f"spec.global.controlEtcd.members[{j}].{field}")
                )
    for j, gate in enumerate(g.gates):
        if gate.port is not None:
            owners[(topo.host_of(gate), gate.port)].append(("gate", f"spec.global.gates[{j}].port"))
    for j, x in enumerate(g.gitops):
        if x.port is not None:
            owners[(topo.host_of(x), x.port)].append(("gitops", f"spec.global.gitops[{j}].port"))
    for j, ci in enumerate(g.console.instances):
        if ci.port is not None:
            owners[(topo.host_of(ci), ci.port)].append(
                ("console", f"spec.global.console.instances[{j}].port")
            )
    out: list[Finding] = []
    for (host, port), users in owners.items():
        # Gate instances on one host share one port on purpose (SO_REUSEPORT).
        if len(users) < 2 or all(kind == "gate" for kind, _ in users):
            continue
        paths = [p for _, p in users]
        out.append(
            _err(
                "port-conflict",
                paths[1],
                f"port {port} on {host} is used by {len(users)} components: " + ", ".join(paths),
                "give each component its own port, or leave ports out to have them assigned",
            )
        )
    return out
