"""The platform's status as the console shows it: a map of sites, zones and components with
their health, the active region and its epoch, and the failover history.

Layer: console. Pure: from a `StatusReport` (what `haplane status` gathers) and the topology
(where each component is placed); no I/O, so every rule below is tested on data.

Health is one of three words, the colours of the map:

- `ok`: the component answers as it should (an etcd member is healthy: it answered, sees a
  leader, has no alarm and its cluster has quorum; a replica, balancer, gate, GitOps or
  console instance is ready; a replicator process runs);
- `warn`: on purpose or on its way (a drained balancer; a process starting or restarting);
- `down`: anything else (killed, stopped, not answering, not ready).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from haplane.local.status import ReplicationRow, StatusReport
from haplane.topology import Topology
from haplane.topology.diagram import Live
from haplane.topology.model import GLOBAL_SCOPE

Health = Literal["ok", "warn", "down"]
SITE_WIDE = ""  # the zone of components placed on a site but in no zone (gates, consoles)
KIND_ORDER = ("etcd", "api", "balancer", "replicator", "control", "gate", "gitops", "console")


@dataclass(frozen=True)
class ComponentView:
    name: str  # as `haplane status` names it: eu-west/etcd-1, global/gate-witness
    kind: str  # one of KIND_ORDER
    health: Health
    detail: str  # the words behind the colour: "healthy", "killed", "not ready: ..."
    leader: bool = False  # an etcd member that leads its cluster, the leading GitOps instance

    @property
    def label(self) -> str:
        return self.name.rpartition("/")[2]


@dataclass(frozen=True)
class ZoneView:
    name: str  # SITE_WIDE for components without a zone
    components: list[ComponentView]


@dataclass(frozen=True)
class SiteView:
    name: str
    region: bool  # a site with a regional control plane (else a witness)
    active: bool  # the active region
    fence: str | None  # its fence key (regions only), None when its etcd did not answer
    zones: list[ZoneView]


@dataclass(frozen=True)
class EpochView:
    """One epoch of the failover history: who made it, why, from which region, and when it
    became writable (`unfenced`: for the current epoch from the active record; None while it
    is fenced, or for an older epoch whose history entry was written before its unfence)."""

    epoch: int
    region: str
    previous: str | None
    by: str
    reason: str
    since: str
    unfenced: str | None
    writable: bool
    current: bool = False
    fence_wait: float | None = None  # seconds from the commit to the unfence
    # an automatic failover: when the old region was first seen down, and agreed down by a
    # majority of the gates (RFC 3339, the deciding gate's clock); None for the others
    detected: str | None = None
    agreed: str | None = None
    detected_before: float | None = None  # seconds from `detected` to the commit
    agreed_before: float | None = None  # seconds from `agreed` to the commit
    # where the epoch began (its cut) and what that cost, in words: "none (planned)", "none
    # acknowledged (sync)", "up to 0.4 s of writes (async, above revision 1234)"; None: no
    # cut recorded (the first epoch, or older than the last few)
    data: str | None = None
    saved: int | None = None  # writes a returning region made after the cut, saved aside


@dataclass(frozen=True)
class MapView:
    topology: str
    supervisor: str
    active_region: str | None
    epoch: int | None
    writable: bool | None
    sites: list[SiteView]
    history: list[EpochView] = field(default_factory=list)  # newest first
    error: str | None = None  # the global control etcd did not answer, ...
    replication: list[ReplicationRow] = field(default_factory=list)  # per region, as gathered

    def components(self) -> list[ComponentView]:
        return [c for s in self.sites for z in s.zones for c in z.components]

    def counts(self) -> dict[Health, int]:
        out: dict[Health, int] = {"ok": 0, "warn": 0, "down": 0}
        for c in self.components():
            out[c.health] += 1
        return out


def placements(topology: Topology) -> dict[str, tuple[str, str]]:
    """Every component's (site, zone) by its status name; SITE_WIDE for those without a zone."""
    out: dict[str, tuple[str, str]] = {}
    for site, region in topology.regions():
        for m in region.etcd.members:
            out[f"{site.name}/{m.name}"] = (site.name, m.zone)
        for a in region.api_servers:
            out[f"{site.name}/{a.name}"] = (site.name, a.zone)
        for b in region.balancers:
            out[f"{site.name}/{b.name}"] = (site.name, b.zone)
        for r in region.replicators:
            out[f"{site.name}/{r.name}"] = (site.name, r.zone)
    g = topology.spec.global_
    for c in g.control_etcd.members:
        out[f"{GLOBAL_SCOPE}/{c.name}"] = (c.site, c.zone or SITE_WIDE)
    for name, site_name in [
        *((x.name, x.site) for x in g.gates),
        *((x.name, x.site) for x in g.gitops),
        *((x.name, x.site) for x in g.console.instances),
    ]:
        out[f"{GLOBAL_SCOPE}/{name}"] = (site_name, SITE_WIDE)
    return out


def _process_health(state: str, ready: bool, detail: str) -> tuple[Health, str]:
    if ready:
        return "ok", "ready"
    if state in ("starting", "restarting", "backoff"):
        return "warn", state
    if state != "running":
        return "down", state
    return "down", detail or "not ready"


def _components(report: StatusReport) -> list[ComponentView]:
    out: list[ComponentView] = []
    for cluster in report.clusters:
        # clusters are named `<scope>/etcd`: the global control etcd is `global/etcd`
        kind = "control" if cluster.name.partition("/")[0] == GLOBAL_SCOPE else "etcd"
        for m in cluster.members:
            if m.healthy:
                health: Health = "ok"
                detail = "healthy, leader" if m.is_leader else "healthy"
            else:
                health = "down"
                detail = m.state if m.state != "running" else (m.error or "unhealthy")
            out.append(ComponentView(m.name, kind, health, detail, leader=m.is_leader))
    for r in report.replicas:
        health, detail = _process_health(r.state, r.ready, r.detail)
        out.append(ComponentView(r.name, "api", health, detail))
    for e in report.edges:
        if e.drained:
            health, detail = "warn", f"drained: {e.drained}"
        else:
            health, detail = _process_health(e.state, e.ready, e.error or "")
        if e.kind == "gate" and e.active_pool and health == "ok":
            detail = f"forwards to {e.active_pool}"
        out.append(ComponentView(e.name, e.kind, health, detail))
    for row in report.replication:
        for rep in row.replicators:
            state = str(rep.get("state"))
            health = "ok" if state == "running" else "warn" if state == "starting" else "down"
            leads = rep.get("name") == row.leader or str(rep.get("name", "")).endswith(
                f"/{row.leader}"
            )
            out.append(
                ComponentView(str(rep.get("name")), "replicator", health, state, leader=leads)
            )
    for g in report.gitops:
        health, detail = _process_health(g.state, g.ready, g.error or "")
        out.append(ComponentView(g.name, "gitops", health, detail, leader=bool(g.leading)))
    for c in report.console:
        health, detail = _process_health(c.state, c.ready, c.error or "")
        out.append(ComponentView(c.name, "console", health, detail))
    return out


def _seconds_between(a: str | None, b: str | None) -> float | None:
    from datetime import datetime

    try:
        if not a or not b:
            return None
        t0 = datetime.fromisoformat(a.replace("Z", "+00:00"))
        t1 = datetime.fromisoformat(b.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((t1 - t0).total_seconds(), 3)


def cut_words(cut: dict[str, Any]) -> str:
    """What an epoch's cut says about data: a planned switch lost nothing; a synchronous
    standby had every acknowledged write; an asynchronous one may miss what its source
    committed above the cut, at most its lag then (the RPO in time)."""
    revision = cut.get("revision")
    partial = "; promoted during a resync, its copy incomplete" if cut.get("partial") else ""
    if cut.get("planned"):
        return f"none (planned, cut at revision {revision}){partial}"
    if cut.get("synchronous"):
        return f"none acknowledged (synchronous standby, cut at revision {revision}){partial}"
    lag = cut.get("lagSeconds")
    within = f"up to {float(lag):.3f} s of writes" if isinstance(lag, int | float) else "unknown"
    return f"{within} (asynchronous, above revision {revision}){partial}"


def _epoch(d: dict[str, Any], current: bool = False) -> EpochView:
    return EpochView(
        epoch=int(d.get("epoch") or 0),
        region=str(d.get("region") or ""),
        previous=str(d["from"]) if d.get("from") else None,
        by=str(d.get("by") or ""),
        reason=str(d.get("reason") or ""),
        since=str(d.get("since") or ""),
        unfenced=str(d["unfenced"]) if d.get("unfenced") else None,
        writable=bool(d.get("writable", True)),
        current=current,
        detected=str(d["detected"]) if d.get("detected") else None,
        agreed=str(d["agreed"]) if d.get("agreed") else None,
    )


def _timed(e: EpochView, cuts: dict[int, dict[str, Any]], saved: dict[int, int]) -> EpochView:
    """The epoch with its durations, and what its cut cost when the cut is among `cuts`
    (else what it said already)."""
    return replace(
        e,
        fence_wait=_seconds_between(e.since, e.unfenced),
        detected_before=_seconds_between(e.detected, e.since),
        agreed_before=_seconds_between(e.agreed, e.since),
        data=cut_words(cuts[e.epoch]) if e.epoch in cuts else e.data,
        saved=saved.get(e.epoch, e.saved),
    )


def _with_current(
    history: list[EpochView],
    active: dict[str, Any],
    cuts: dict[int, dict[str, Any]],
    saved: dict[int, int],
) -> list[EpochView]:
    """`history` with the active record as its current epoch, newest first: the record
    replaces that epoch's entry (keeping what its cut cost), every other entry is past."""
    current = _timed(_epoch(active, current=True), cuts, saved)
    same = next((e for e in history if e.epoch == current.epoch), None)
    if same is not None:
        current = replace(
            current,
            data=current.data if current.data is not None else same.data,
            saved=current.saved if current.saved is not None else same.saved,
        )
    past = [replace(e, current=False) for e in history if e.epoch != current.epoch]
    return sorted([*past, current], key=lambda e: -e.epoch)


def newer(active: dict[str, Any], view: MapView) -> bool:
    """Whether the active-region record `active` is newer than what `view` shows: a later
    epoch, or the same epoch become writable (a record goes from fenced to unfenced within its
    epoch, never back)."""
    try:
        theirs = (int(active["epoch"]), bool(active.get("writable", True)))
    except (KeyError, TypeError, ValueError):
        return False
    return view.epoch is None or theirs > (view.epoch, bool(view.writable))


def with_active(view: MapView, active: dict[str, Any]) -> MapView:
    """`view` as the active-region record `active` says (its `as_dict` form): the active region
    and epoch, which site is active, the current epoch in the history. What a watch of that
    record shows at once, before the next gather reads everything else (each component's
    health, the fences, the cuts)."""
    region = str(active["region"])
    return replace(
        view,
        active_region=region,
        epoch=int(active["epoch"]),
        writable=bool(active.get("writable", True)),
        sites=[replace(s, active=s.name == region) for s in view.sites],
        history=_with_current(view.history, active, {}, {}),
    )


def map_view(report: StatusReport, topology: Topology) -> MapView:
    """The map: every site of the topology in file order, its zones in file order (site-wide
    components last), each zone's components by kind; a component the topology does not
    place (a stale state dir) lands on a site of its scope's name, if any."""
    placed = placements(topology)
    glob = report.global_state
    active = glob.active if glob is not None else None
    active_region = str(active["region"]) if active else None
    by_site: dict[str, dict[str, list[ComponentView]]] = {}
    for c in _components(report):
        site, zone = placed.get(c.name, (c.name.partition("/")[0], SITE_WIDE))
        by_site.setdefault(site, {}).setdefault(zone, []).append(c)
    fences = glob.fences if glob is not None else {}
    sites = []
    for s in topology.spec.sites:
        zones_of = by_site.get(s.name, {})
        zones = []
        for z in [*s.zones, SITE_WIDE]:
            comps = sorted(zones_of.get(z, []), key=lambda c: (KIND_ORDER.index(c.kind), c.name))
            if comps:
                zones.append(ZoneView(z, comps))
        sites.append(
            SiteView(
                name=s.name,
                region=s.region is not None,
                active=s.name == active_region,
                fence=fences.get(s.name) if s.region is not None else None,
                zones=zones,
            )
        )
    cuts = {int(c["epoch"]): c for c in report.cuts if isinstance(c.get("epoch"), int)}
    saved = {
        int(d["epoch"]): int(d.get("count") or 0)
        for d in report.divergences
        if isinstance(d.get("epoch"), int)
    }
    history = [_timed(_epoch(d), cuts, saved) for d in (glob.history if glob is not None else [])]
    if active:
        # the unfence is written to the active record only: the current epoch's history
        # entry learns it from there
        history = _with_current(history, active, cuts, saved)
    return MapView(
        topology=report.topology,
        supervisor=report.supervisor,
        active_region=active_region,
        epoch=int(active["epoch"]) if active else None,
        writable=bool(active.get("writable", True)) if active else None,
        sites=sites,
        history=sorted(history, key=lambda e: -e.epoch),
        error=glob.error if glob is not None else "no global state",
        replication=list(report.replication),
    )


def diagram_state(view: MapView) -> Live:
    """The map as `haplane diagram` colours a running topology: each component's health,
    leaders, the active region and its epoch."""
    comps = view.components()
    return Live(
        health={c.name: c.health for c in comps},
        leaders=frozenset(c.name for c in comps if c.leader),
        active=view.active_region,
        epoch=view.epoch,
    )
