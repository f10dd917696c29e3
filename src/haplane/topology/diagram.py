"""Diagrams of a topology: Graphviz DOT (rendered to SVG/PNG) and Mermaid, optionally with failures.

Layer: model. `to_dot` and `to_mermaid` are pure text; `render` pipes the DOT source through
Graphviz's `dot` via the `graphviz` package, imported lazily so that this module (and Mermaid
output) works without it.

Drawn: one cluster per site ("region <name>" or "witness site"), nested clusters per zone, a node
per component (regional etcd member, API replica, balancer, control etcd member, gate instance,
GitOps controller and web console instance; gates, GitOps controllers, consoles and zoneless
control members sit in their site's first zone, as in `failures.py`), a small
"<region> etcd" node per regional etcd cluster and one "global control etcd" node. Edges: gate ->
every balancer (solid to the active, highest-priority region, dashed to the others), balancer ->
API replica, API replica -> its region's etcd, etcd cluster - member, control etcd - member,
GitOps controller or console -> the gate it dials (dotted), and one bold "async replication"
(or "sync replication") edge per replication pair, drawn from the active region (a pair copies
both ways, in whichever direction the active region makes it).

`failed` names failures as `failures.failure_named` accepts them (GitOps controllers and
consoles serve no API request, so the failure model leaves them out and `failed` cannot name
them; a zone or site failure still shades them). Components a component, zone or
site failure takes down are filled grey with a red border and a "DOWN" label; network cuts shade
nothing but add a dashed red "cut" link between the sites; etcd clusters that lose quorum under
the whole failure set (`failures.evaluate`) get a "NO QUORUM" label.

`live` (a `Live`: the web console's view of a running topology) colours the same drawing by
what runs instead: each component's health (`ok` green border, `warn` amber, `down` grey with a
red border and "DOWN"), leaders starred, the active region (and its epoch) named on its site,
and the gate and replication edges drawn towards the region that is active now rather than the
file's first. Nodes carry an SVG class (`ok`, `warn`, `down`, `unknown`) for tools.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from .failures import ComponentKind, Failure, evaluate, failure_model
from .model import GLOBAL_SCOPE, Topology

Format = Literal["svg", "png"]
DOWN = "DOWN"
NO_QUORUM = "NO QUORUM"


def cluster_node(scope: str) -> str:
    """The node of an etcd cluster (a region's, or "global"); no component can be named so."""
    return f"etcd cluster {scope}"


CONTROL_ETCD = cluster_node(GLOBAL_SCOPE)
# what is drawn: the failure model's components, and GitOps controllers and web consoles
# (which it leaves out: neither serves the API)
DrawnKind: TypeAlias = ComponentKind | Literal["gitops controller", "console"]


class DiagramError(Exception):
    """The diagram cannot be rendered here (Graphviz missing or failing)."""


@dataclass(frozen=True, slots=True)
class Component:
    qualified_name: str  # as `failures.py` names it: "<region>/<name>" or "global/<name>"
    name: str
    kind: DrawnKind
    site: str
    zone: str
    region: str | None  # the region it belongs to (None for control etcd members and gates)


@dataclass(frozen=True, slots=True)
class Cut:
    source: str
    target: str
    one_way: bool


# (DOT shape, DOT style extras, fill colour, Mermaid open, Mermaid close)
_KIND_STYLE: dict[DrawnKind, tuple[str, str, str, str, str]] = {
    "etcd member": ("cylinder", "", "#dbe9f6", "[(", ")]"),
    "API replica": ("box", ",rounded", "#e2f0d9", "(", ")"),
    "balancer": ("hexagon", "", "#fff2cc", "{{", "}}"),
    "replicator": ("cds", "", "#d9f2f2", ">", "]"),
    "control etcd member": ("cylinder", "", "#e8dcf7", "[(", ")]"),
    "gate": ("invhouse", "", "#fde2cf", "[/", "\\]"),
    "gitops controller": ("component", "", "#f6e0ee", "[[", "]]"),
    "console": ("tab", "", "#eceff3", "[\\", "\\]"),
}
_HEALTH_BORDER = {"ok": "#1d8a3a", "warn": "#b7791f"}


@dataclass(frozen=True)
class Live:
    """What runs: health by qualified name (`ok`, `warn`, `down`; a component left out is
    `unknown`), leaders (etcd members, the leading replicator or GitOps instance), the active
    region and its epoch (None: unknown)."""

    health: Mapping[str, str] = field(default_factory=dict)
    leaders: frozenset[str] = frozenset()
    active: str | None = None
    epoch: int | None = None


_DOWN_FILL = "#bdbdbd"
_DOWN_BORDER = "#d00000"
_NO_QUORUM_ATTRS = ', color="#e07000", penwidth=2.5, fontcolor="#e07000"'


# ---- the model the diagrams draw ----------------------------------------------------------


def components(topology: Topology) -> list[Component]:
    """Every component, placed as `failures.py` places it."""
    out: list[Component] = []
    for site, region in topology.regions():
        groups: tuple[tuple[ComponentKind, Sequence[Any]], ...] = (
            ("etcd member", region.etcd.members),
            ("API replica", region.api_servers),
            ("balancer", region.balancers),
            ("replicator", region.replicators),
        )
        for kind, items in groups:
            for item in items:
                out.append(
                    Component(
                        f"{site.name}/{item.name}", item.name, kind, site.name, item.zone, site.name
                    )
                )
    g = topology.spec.global_
    for cm in g.control_etcd.members:
        zone = cm.zone or _first_zone(topology, cm.site)
        out.append(
            Component(
                f"{GLOBAL_SCOPE}/{cm.name}", cm.name, "control etcd member", cm.site, zone, None
            )
        )
    for gate in g.gates:
        zone = _first_zone(topology, gate.site)
        out.append(
            Component(f"{GLOBAL_SCOPE}/{gate.name}", gate.name, "gate", gate.site, zone, None)
        )
    for x in g.gitops:
        zone = _first_zone(topology, x.site)
        out.append(
            Component(f"{GLOBAL_SCOPE}/{x.name}", x.name, "gitops controller", x.site, zone, None)
        )
    for con in g.console.instances:
        zone = _first_zone(topology, con.site)
        out.append(
            Component(f"{GLOBAL_SCOPE}/{con.name}", con.name, "console", con.site, zone, None)
        )
    return out


def _first_zone(topology: Topology, site: str) -> str:
    s = topology.site(site)
    return s.zones[0] if s is not None and s.zones else "default"


def _layout(topology: Topology, comps: list[Component]) -> dict[str, list[str]]:
    """Sites (declared first, then any a component names) -> their zones, in file order."""
    sites: dict[str, list[str]] = {s.name: list(s.zones) for s in topology.spec.sites}
    for c in comps:
        zones = sites.setdefault(c.site, [])
        if c.zone not in zones:
            zones.append(c.zone)
    return sites


def parse_failures(topology: Topology, failed: Sequence[str]) -> list[Failure]:
    """The failures named in `failed`; ValueError (with valid examples) for an unknown name."""
    model = failure_model(topology)
    out: list[Failure] = []
    for name in failed:
        try:
            out.append(model.failure_named(name))
        except KeyError:
            examples: dict[str, str] = {}
            for f in model.single_failures:
                examples.setdefault(f.kind, str(f))
            raise ValueError(
                f"unknown failure {name!r}; valid examples: " + ", ".join(examples.values())
            ) from None
    return out


def components_down(topology: Topology, failures: Sequence[Failure]) -> set[str]:
    """Qualified names of the components that component, zone and site failures take down."""
    comps = components(topology)
    down: set[str] = set()
    for f in failures:
        if f.kind == "component":
            down.add(f.target)
        elif f.kind == "zone":
            site, zone = f.target.split("/", 1)
            down.update(c.qualified_name for c in comps if c.site == site and c.zone == zone)
        elif f.kind == "site":
            down.update(c.qualified_name for c in comps if c.site == f.target)
    return down


def _cuts(topology: Topology, failures: Sequence[Failure]) -> list[Cut]:
    sites = list(_layout(topology, components(topology)))
    out: list[Cut] = []
    for f in failures:
        if f.kind == "link":
            out.append(Cut(f.target, f.other or "", one_way=False))
        elif f.kind == "one-way":
            out.append(Cut(f.target, f.other or "", one_way=True))
        elif f.kind == "isolation":
            out += [Cut(f.target, s, one_way=False) for s in sites if s != f.target]
    return list(dict.fromkeys(out))


EdgeKind = Literal[
    "gate-active",
    "gate-standby",
    "serves",
    "stores",
    "member",
    "replication",
    "replication-sync",
    "gitops",
    "console",
]


@dataclass(frozen=True, slots=True)
class Edge:
    source: str  # qualified component names, or `cluster_node(scope)`
    target: str
    kind: EdgeKind


_DOT_EDGE: dict[EdgeKind, str] = {
    "gate-active": "style=solid",
    "gate-standby": "style=dashed",
    "serves": "",
    "stores": "",
    "member": 'dir=none, style=dotted, color="#4a78b0"',
    "replication": 'style=bold, penwidth=2.5, color="#1f5fa8", '
    'label="async replication\\n(from the active region)", fontcolor="#1f5fa8"',
    "replication-sync": 'style=bold, penwidth=2.5, color="#1f5fa8", '
    'label="sync replication\\n(from the active region)", fontcolor="#1f5fa8"',
    "gitops": 'style=dotted, color="#a0457a"',
    "console": 'style=dotted, color="#5b6b7f"',
}
_MERMAID_EDGE: dict[EdgeKind, str] = {
    "gate-active": "-->",
    "gate-standby": "-.->",
    "serves": "-->",
    "stores": "-->",
    "member": "-.-",
    "replication": '== "async replication (from the active region)" ==>',
    "replication-sync": '== "sync replication (from the active region)" ==>',
    "gitops": "-.->",
    "console": "-.->",
}


def edges(
    topology: Topology, comps: Sequence[Component] | None = None, active: str | None = None
) -> list[Edge]:
    """Gate -> every balancer (to the active region or a standby), balancer -> API replicas of
    its region, API replica -> its region's etcd, etcd cluster - members, GitOps controller and
    console -> the gate it dials (its own site's, else the first), replication pairs. `active`: the
    region active now (default: the file's first by priority)."""
    comps = components(topology) if comps is None else comps
    regions = [s.name for s, _ in topology.regions()]
    active = active if active in regions else _active_region(topology)
    out: list[Edge] = []
    for gate in (c for c in comps if c.kind == "gate"):
        for lb in (c for c in comps if c.kind == "balancer"):
            kind: EdgeKind = "gate-active" if lb.region == active else "gate-standby"
            out.append(Edge(gate.qualified_name, lb.qualified_name, kind))
    for region in regions:
        mine = [c for c in comps if c.region == region]
        apis = [c for c in mine if c.kind == "API replica"]
        for lb in (c for c in mine if c.kind == "balancer"):
            out += [Edge(lb.qualified_name, api.qualified_name, "serves") for api in apis]
        out += [Edge(api.qualified_name, cluster_node(region), "stores") for api in apis]
        # a replicator writes its own region's etcd (what it copies from the active one)
        out += [
            Edge(x.qualified_name, cluster_node(region), "stores")
            for x in mine
            if x.kind == "replicator"
        ]
        out += [
            Edge(cluster_node(region), m.qualified_name, "member")
            for m in mine
            if m.kind == "etcd member"
        ]
    out += [
        Edge(CONTROL_ETCD, m.qualified_name, "member")
        for m in comps
        if m.kind == "control etcd member"
    ]
    gates = [c for c in comps if c.kind == "gate"]
    for x in (c for c in comps if c.kind in ("gitops controller", "console")):
        dialled = next((g for g in gates if g.site == x.site), gates[0] if gates else None)
        if dialled is not None:
            dials: EdgeKind = "gitops" if x.kind == "gitops controller" else "console"
            out.append(Edge(x.qualified_name, dialled.qualified_name, dials))
    for r in topology.spec.global_.replication:
        if r.from_ in regions and r.to in regions:
            # a pair copies both ways, from whichever region is active: drawn from the active
            # one (after a failback too), else as written
            src, dst = (r.to, r.from_) if r.to == active else (r.from_, r.to)
            how: EdgeKind = "replication-sync" if r.mode == "Sync" else "replication"
            out.append(Edge(cluster_node(src), cluster_node(dst), how))
    return out


def _active_region(topology: Topology) -> str | None:
    """The highest-priority region, as `failures.py` decides it."""
    regions = [s.name for s, _ in topology.regions()]
    prio = [p for p in topology.region_priority() if p in regions]
    return prio[0] if prio else (regions[0] if regions else None)


@dataclass
class _Scene:
    comps: list[Component]
    sites: dict[str, list[str]]
    down: set[str]
    cuts: list[Cut]
    lost_quorum: set[str]
    edges: list[Edge]


def _scene(topology: Topology, failed: Sequence[str], active: str | None = None) -> _Scene:
    failures = parse_failures(topology, failed)
    comps = components(topology)
    lost: set[str] = set()
    if failures:
        lost = set(evaluate(topology, failures).lost_quorum)
    return _Scene(
        comps,
        _layout(topology, comps),
        components_down(topology, failures),
        _cuts(topology, failures),
        lost,
        edges(topology, comps, active),
    )


def _site_label(topology: Topology, site: str) -> str:
    s = topology.site(site)
    if s is not None and s.region is not None:
        return f"region {site}"
    return "witness site" if site == "witness" else f"witness site {site}"


def _etcd_label(scope: str, lost: set[str]) -> str:
    name = "global control etcd" if scope == GLOBAL_SCOPE else f"{scope} etcd"
    return f"{name}\n{NO_QUORUM}" if f"{scope}/etcd" in lost else name


# ---- DOT ------------------------------------------------------------------------------------


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(topology: Topology, failed: Sequence[str] = (), live: Live | None = None) -> str:
    """Graphviz DOT source of `topology`, with the components `failed` takes down marked DOWN,
    or coloured by what runs (`live`)."""
    sc = _scene(topology, failed, live.active if live is not None else None)
    lines = [
        f"digraph {_q(topology.name)} {{",
        f"  label={_q(f'topology {topology.name}')}; labelloc=t; fontname=Helvetica; fontsize=18;",
        "  compound=true; newrank=true; rankdir=TB; nodesep=0.3; ranksep=0.7;",
        "  node [fontname=Helvetica, fontsize=11, style=filled];",
        '  edge [fontname=Helvetica, fontsize=9, color="#555555"];',
    ]
    by_place: dict[tuple[str, str], list[Component]] = {}
    for c in sc.comps:
        by_place.setdefault((c.site, c.zone), []).append(c)
    first_node: dict[str, str] = {}
    for i, (site, zones) in enumerate(sc.sites.items()):
        s = topology.site(site)
        is_region = s is not None and s.region is not None
        lines.append(f"  subgraph cluster_site_{i} {{")
        label, border, width = _site_label(topology, site), "#7a8ca3", 1.0
        if live is not None and is_region and site == live.active:
            epoch = f", epoch {live.epoch}" if live.epoch is not None else ""
            label, border, width = f"{label} (active{epoch})", _HEALTH_BORDER["ok"], 3.0
        lines.append(
            f'    label={_q(label)}; fontsize=14; style="rounded,filled"; '
            f"fillcolor={_q('#f4f8fc' if is_region else '#f7f7f7')}; color={_q(border)}; "
            f"penwidth={width};"
        )
        if is_region:
            etcd = cluster_node(site)
            extra = _NO_QUORUM_ATTRS if f"{site}/etcd" in sc.lost_quorum else ""
            lines.append(
                f"    {_q(etcd)} [label={_q(_etcd_label(site, sc.lost_quorum))}, shape=note, "
                f'fontsize=9, fillcolor="#c6dbef"{extra}];'
            )
            first_node.setdefault(site, etcd)
        for j, zone in enumerate(zones):
            lines.append(f"    subgraph cluster_site_{i}_zone_{j} {{")
            lines.append(
                f'      label={_q(f"zone {zone}")}; fontsize=10; style="dashed,rounded"; '
                'color="#9aa7b8";'
            )
            placed = by_place.get((site, zone), [])
            if not placed:  # an empty zone still shows as a box
                lines.append(
                    f'      {_q(f"{site}/zone {zone}")} [label="", shape=point, style=invis];'
                )
            for c in placed:
                if live is None:
                    lines.append("      " + _dot_node(c, c.qualified_name in sc.down))
                else:
                    lines.append("      " + _live_node(c, live))
                first_node.setdefault(site, c.qualified_name)
            lines.append("    }")
        lines.append("  }")
    # the global control etcd, outside every site
    extra = _NO_QUORUM_ATTRS if f"{GLOBAL_SCOPE}/etcd" in sc.lost_quorum else ""
    lines.append(
        f"  {_q(CONTROL_ETCD)} [label={_q(_etcd_label(GLOBAL_SCOPE, sc.lost_quorum))}, "
        f'shape=note, fontsize=9, fillcolor="#d9c8f0"{extra}];'
    )

    site_idx = {s: i for i, s in enumerate(sc.sites)}
    for e in sc.edges:
        attrs = _DOT_EDGE[e.kind]
        lines.append(f"  {_q(e.source)} -> {_q(e.target)}{' [' + attrs + ']' if attrs else ''};")
    for cut in sc.cuts:
        a, b = first_node.get(cut.source), first_node.get(cut.target)
        if a is None or b is None:
            continue
        label = "one-way cut" if cut.one_way else "cut"
        direction = "forward" if cut.one_way else "both"
        tail, head = site_idx[cut.source], site_idx[cut.target]
        lines.append(
            f"  {_q(a)} -> {_q(b)} [style=dashed, color={_q(_DOWN_BORDER)}, penwidth=2, "
            f"fontcolor={_q(_DOWN_BORDER)}, label={_q(label)}, dir={direction}, "
            "arrowhead=tee, arrowtail=tee, constraint=false, "
            f"ltail=cluster_site_{tail}, lhead=cluster_site_{head}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_node(c: Component, down: bool) -> str:
    shape, style, fill, _, _ = _KIND_STYLE[c.kind]
    label = f"{c.name}\n{DOWN}" if down else c.name
    attrs = [
        f"label={_q(label)}",
        f"shape={shape}",
        f"style={_q('filled' + style)}",
        f"tooltip={_q(f'{c.kind} {c.qualified_name}')}",
    ]
    if down:
        attrs += [
            f"fillcolor={_q(_DOWN_FILL)}",
            f"color={_q(_DOWN_BORDER)}",
            "penwidth=2.5",
            f"fontcolor={_q(_DOWN_BORDER)}",
        ]
    else:
        attrs.append(f"fillcolor={_q(fill)}")
    return f"{_q(c.qualified_name)} [{', '.join(attrs)}];"


def _live_node(c: Component, live: Live) -> str:
    shape, style, fill, _, _ = _KIND_STYLE[c.kind]
    health = live.health.get(c.qualified_name, "unknown")
    name = c.name + (" \u2605" if c.qualified_name in live.leaders else "")
    label, extra = name, [f"fillcolor={_q(fill)}"]
    if health == "down":
        label = f"{name}\n{DOWN}"
        extra = [
            f"fillcolor={_q(_DOWN_FILL)}",
            f"color={_q(_DOWN_BORDER)}",
            "penwidth=2.5",
            f"fontcolor={_q(_DOWN_BORDER)}",
        ]
    elif health in _HEALTH_BORDER:
        extra += [f"color={_q(_HEALTH_BORDER[health])}", "penwidth=2"]
    else:  # not reported: drawn as the file has it, dashed
        style = ",dashed" + style
    attrs = [
        f"label={_q(label)}",
        f"shape={shape}",
        f"style={_q('filled' + style)}",
        f"tooltip={_q(f'{c.kind} {c.qualified_name}: {health}')}",
        f"class={_q(health)}",
        *extra,
    ]
    return f"{_q(c.qualified_name)} [{', '.join(attrs)}];"


def render(
    topology: Topology, fmt: Format = "svg", failed: Sequence[str] = (), live: Live | None = None
) -> bytes:
    """The diagram as SVG or PNG bytes, via Graphviz's `dot`; DiagramError if it is missing."""
    if fmt not in ("svg", "png"):
        raise ValueError(f"unsupported format {fmt!r}: use svg or png (or mermaid via to_mermaid)")
    source = to_dot(topology, failed, live)
    try:
        graphviz: Any = importlib.import_module("graphviz")
    except ImportError as err:
        raise DiagramError(
            "the graphviz Python package is not installed: pip install graphviz; "
            "--format mermaid needs nothing"
        ) from err
    try:
        data: bytes = graphviz.Source(source).pipe(format=fmt)
    except graphviz.ExecutableNotFound as err:
        raise DiagramError(
            "Graphviz's dot is not installed: apt-get install graphviz; "
            "--format mermaid needs nothing"
        ) from err
    except graphviz.CalledProcessError as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else ""
        raise DiagramError(f"Graphviz's dot failed: {stderr.strip() or err}") from err
    return data


# ---- Mermaid ----------------------------------------------------------------------------------


def _mid(name: str) -> str:
    """A Mermaid node id: names are DNS labels joined by "/" or " ", so this is injective."""
    return "n_" + name.replace("-", "_").replace("/", "__").replace(" ", "___")


def _mlabel(text: str) -> str:
    return '"' + text.replace('"', "#quot;").replace("\n", "<br/>") + '"'


def to_mermaid(topology: Topology, failed: Sequence[str] = ()) -> str:
    """A Mermaid flowchart of `topology`, the same nodes and edges as `to_dot`."""
    sc = _scene(topology, failed)
    lines = ["flowchart TB"]
    by_place: dict[tuple[str, str], list[Component]] = {}
    for c in sc.comps:
        by_place.setdefault((c.site, c.zone), []).append(c)
    site_ids: dict[str, str] = {}
    for i, (site, zones) in enumerate(sc.sites.items()):
        sid = site_ids[site] = f"site_{i}"
        lines.append(f"  subgraph {sid}[{_mlabel(_site_label(topology, site))}]")
        lines.append("    direction TB")
        s = topology.site(site)
        if s is not None and s.region is not None:
            lines.append(
                f"    {_mid(cluster_node(site))}[{_mlabel(_etcd_label(site, sc.lost_quorum))}]"
            )
        for j, zone in enumerate(zones):
            lines.append(f"    subgraph {sid}_zone_{j}[{_mlabel(f'zone {zone}')}]")
            for c in by_place.get((site, zone), []):
                _, _, _, open_, close = _KIND_STYLE[c.kind]
                label = f"{c.name} {DOWN}" if c.qualified_name in sc.down else c.name
                lines.append(f"      {_mid(c.qualified_name)}{open_}{_mlabel(label)}{close}")
            lines.append("    end")
        lines.append("  end")
    lines.append(f"  {_mid(CONTROL_ETCD)}[{_mlabel(_etcd_label(GLOBAL_SCOPE, sc.lost_quorum))}]")

    links: list[str] = []
    red: list[int] = []
    for e in sc.edges:
        links.append(f"{_mid(e.source)} {_MERMAID_EDGE[e.kind]} {_mid(e.target)}")
    for cut in sc.cuts:
        if cut.source in site_ids and cut.target in site_ids:
            red.append(len(links))
            label = "one-way cut" if cut.one_way else "cut"
            arrow = f"-. {label} .->" if cut.one_way else f"<-. {label} .->"
            links.append(f"{site_ids[cut.source]} {arrow} {site_ids[cut.target]}")
    lines += [f"  {link}" for link in links]

    lines.append(
        f"  classDef down fill:{_DOWN_FILL},stroke:{_DOWN_BORDER},stroke-width:3px,"
        f"color:{_DOWN_BORDER}"
    )
    lines.append("  classDef noquorum stroke:#e07000,stroke-width:3px")
    down = [_mid(c.qualified_name) for c in sc.comps if c.qualified_name in sc.down]
    if down:
        lines.append(f"  class {','.join(down)} down")
    lost = [_mid(cluster_node(n.rsplit("/", 1)[0])) for n in sorted(sc.lost_quorum)]
    if lost:
        lines.append(f"  class {','.join(lost)} noquorum")
    if red:
        lines.append(
            f"  linkStyle {','.join(map(str, red))} stroke:{_DOWN_BORDER},stroke-width:2px"
        )
    return "\n".join(lines) + "\n"
