"""`haplane docs FILE`: one document describing a topology, as Markdown or standalone HTML.

Layer: model. Pure functions of a `Topology`, except that `diagram_svg=True` calls
`diagram.render`, which runs Graphviz's `dot` (skipped quietly when Graphviz is missing: the
Mermaid block always works), and that the runbook section lists the runbooks haplane ships
(read from the package's `haplane/runbooks/*.yaml`).

Sections: overview, inventory, validation findings, failure tolerance (from `failures.analyse`),
availability estimate (from `availability.estimate`), the diagram, and a DR runbook derived from
the topology: for each failure class, what haplane does automatically today and what an operator
must do, with the commands, and the executable runbooks (`haplane runbook run`) with theirs.
"""

from __future__ import annotations

import html as html_lib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml
from markdown_it import MarkdownIt

from .analyse_report import TABLE_COLUMNS, table_rows
from .availability import ASSUMPTIONS, estimate
from .diagram import DiagramError, render, to_mermaid
from .failures import analyse
from .model import GLOBAL_SCOPE, Topology
from .rules import validate

MAX_TABLE_ROWS = 40
TOP_CONTRIBUTORS = 5

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.45; color: #1d1d1f; }
h1, h2, h3 { line-height: 1.2; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; }
th, td { border: 1px solid #ccc; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
code { background: #f5f5f5; padding: 0 .2rem; border-radius: 3px; }
pre { background: #f5f5f5; padding: .7rem; overflow-x: auto; }
pre code { background: none; padding: 0; }
.diagram svg { max-width: 100%; height: auto; }
""".strip()


# ---- helpers ------------------------------------------------------------------------------


def _cell(value: object) -> str:
    text = str(value).replace("\n", " ").replace("|", "\\|")
    return text if text else "-"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _names(items: Iterable[str]) -> str:
    parts = [f"`{i}`" for i in items]
    if not parts:
        return "none"
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _percent(p: float) -> str:
    return f"{p * 100:.6f}%"


def _tolerates(n: int) -> int:
    return (n - 1) // 2


def _witness_sites(topology: Topology) -> list[str]:
    return [s.name for s in topology.spec.sites if s.region is None]


def _endpoint(topology: Topology, host: str, port: int | None, qualified: str) -> str:
    scheme = "http" if topology.spec.security.insecure else "https"
    return f"{scheme}://{host}:{port if port else f'<{qualified} client port>'}"


def _regional_endpoints(topology: Topology, site: str) -> str:
    for cluster in topology.etcd_clusters():
        if cluster.scope == site:
            return ",".join(
                _endpoint(topology, m.host, m.client_port, f"{site}/{m.name}")
                for m in cluster.members
            )
    return ""


def _control_endpoints(topology: Topology) -> str:
    for cluster in topology.etcd_clusters():
        if cluster.scope == GLOBAL_SCOPE:
            return ",".join(
                _endpoint(topology, m.host, m.client_port, f"{GLOBAL_SCOPE}/{m.name}")
                for m in cluster.members
            )
    return ""


# etcdctl reads these (they keep the commands below short); the state dir's operator
# certificate opens every etcd of the topology, which `haplane up` keeps in `pki/etcd`
ETCDCTL_TLS = (
    "export ETCDCTL_API=3 ETCDCTL_CACERT=$STATE/pki/etcd/ca.crt "
    "ETCDCTL_CERT=$STATE/pki/etcd/client.haplane.crt "
    "ETCDCTL_KEY=$STATE/pki/etcd/client.haplane.key"
)


# ---- sections -----------------------------------------------------------------------------


def _overview(topology: Topology) -> list[str]:
    regions = [s.name for s, _ in topology.regions()]
    witnesses = _witness_sites(topology)
    priority = topology.region_priority()
    g = topology.spec.global_
    active = priority[0] if priority else None
    text = (
        f"Topology `{topology.name}` has {len(regions)} region(s) ({_names(regions)})"
        + (
            f" and witness site(s) {_names(witnesses)}, which hold only a global control etcd "
            "member and a gate instance to break ties"
            + (
                " (and GitOps controllers)"
                if any(x.site in witnesses for x in topology.spec.global_.gitops)
                else ""
            )
            if witnesses
            else " and no witness site"
        )
        + ". "
    )
    if active:
        text += (
            f"Failover mode is {g.failover.mode}: `{active}` is the active region (first in the "
            f"failover priority {' > '.join(f'`{p}`' for p in priority)}) and serves writes; "
            "the others stand by. "
        )
    text += (
        f"A global control etcd of {len(g.control_etcd.members)} member(s) records the active "
        f"region, and {len(g.gates)} gate instance(s) forward clients to it. "
    )
    if g.gitops:
        text += (
            f"{len(g.gitops)} GitOps controller instance(s) (one leads) apply what GitSources "
            "and Syncs declare, through the gate. "
        )
    if g.replication:
        pairs = ", ".join(f"`{r.from_}` <-> `{r.to}` ({r.mode.lower()})" for r in g.replication)
        text += (
            f"Replication: {pairs}; each pair copies the active region's data into the other, "
            "in whichever direction the active region makes it (after a failback too)."
        )
    else:
        text += "No replication is configured: a region taking over serves only its own data."
    return [f"# Topology `{topology.name}`", "", text, ""]


def _inventory(topology: Topology) -> list[str]:
    out = ["## Inventory", ""]
    for site in topology.spec.sites:
        zones = ", ".join(site.zones)
        if site.region is None:
            out += [f"### Site `{site.name}` (witness; zones: {zones})", ""]
            continue
        r = site.region
        settings = topology.etcd_settings(r.etcd)
        out += [f"### Region `{site.name}` (zones: {zones})", ""]
        out += [
            f"etcd: {len(r.etcd.members)} member(s), tolerates "
            f"{_tolerates(len(r.etcd.members))} down; heartbeat "
            f"{settings.heartbeat_interval_ms} ms, election {settings.election_timeout_ms} ms, "
            f"compaction {settings.auto_compaction_retention}.",
            "",
        ]
        rows: list[list[object]] = []
        rows += [
            ["etcd member", m.name, m.zone, topology.host_of(m, site.name)] for m in r.etcd.members
        ]
        rows += [
            ["API replica", a.name, a.zone, topology.host_of(a, site.name)] for a in r.api_servers
        ]
        rows += [["balancer", b.name, b.zone, topology.host_of(b, site.name)] for b in r.balancers]
        out += [*_table(["KIND", "NAME", "ZONE", "HOST"], rows), ""]
    g = topology.spec.global_
    out += ["### Global control etcd", ""]
    out += [
        *_table(
            ["NAME", "SITE", "ZONE", "HOST"],
            [
                [m.name, m.site, m.zone or "(first zone)", topology.host_of(m)]
                for m in g.control_etcd.members
            ],
        ),
        "",
    ]
    out += ["### Gates", ""]
    out += [
        *_table(
            ["NAME", "SITE", "HOST", "PORT"],
            [[x.name, x.site, topology.host_of(x), x.port or "assigned"] for x in g.gates],
        ),
        "",
    ]
    if g.gitops:
        out += ["### GitOps controllers", ""]
        out += [
            "Clients of the platform through the gate (its own site's, else the first), as the "
            "ServiceAccount `kube-system/haplane-gitops`; one leads through the Lease "
            "`kube-system/haplane-gitops-controller`, the others stand by.",
            "",
            *_table(
                ["NAME", "SITE", "HOST", "PORT"],
                [[x.name, x.site, topology.host_of(x), x.port or "assigned"] for x in g.gitops],
            ),
            "",
        ]
    out += ["### Failover priority", ""]
    out += [
        *_table(
            ["RANK", "REGION"], [[i + 1, name] for i, name in enumerate(topology.region_priority())]
        ),
        "",
    ]
    out += ["### Replication", ""]
    if g.replication:
        out += [
            "Each pair copies both ways: the standby's replicators pull the active region's "
            "changes, whole etcd revisions in order; a switch turns the stream around.",
            "",
        ]
        out += _table(
            ["REGIONS", "MODE", "MAX LAG"],
            [
                [
                    f"{r.from_} <-> {r.to}",
                    f"Sync ({r.sync_timeout_ms} ms{', strict' if r.strict else ''})"
                    if r.mode == "Sync"
                    else r.mode,
                    f"{r.max_lag_ms} ms" if r.max_lag_ms is not None else "-",
                ]
                for r in g.replication
            ],
        )
        rows = [
            [site.name, x.name, x.zone]
            for site, region in topology.regions()
            for x in region.replicators
        ]
        if rows:
            out += ["", *_table(["REGION", "REPLICATOR", "ZONE"], rows)]
    else:
        out += ["No replication pairs."]
    return [*out, ""]


def _validation(topology: Topology) -> list[str]:
    findings = validate(topology)
    out = ["## Validation", ""]
    if not findings:
        return [*out, "No findings: the file passes every HA rule (`haplane validate FILE`).", ""]
    errors = sum(f.severity == "error" for f in findings)
    out += [
        f"{errors} error(s) and {len(findings) - errors} warning(s) (`haplane validate FILE`):",
        "",
    ]
    out += _table(
        ["SEVERITY", "RULE", "PATH", "MESSAGE", "FIX"],
        [[f.severity, f.rule, f.path, f.message, f.fix] for f in findings],
    )
    return [*out, ""]


def _tolerance(topology: Topology, max_failures: int) -> list[str]:
    analysis = analyse(topology, max_failures)
    out = ["## Failure tolerance", ""]
    out += [
        f"Every set of up to {max_failures} simultaneous failures, decided from the model "
        f"(`haplane analyse FILE -k {max_failures}`):",
        "",
    ]
    out += [f"- {line}" for line in analysis.summary().splitlines()] + [""]
    out += [f"Counting: {analysis.counting}.", ""]
    rows = table_rows(analysis)
    if not rows:
        return [*out, "Every failure set leaves the topology unaffected.", ""]
    shown = rows[:MAX_TABLE_ROWS]
    out += ["Groups of failure sets that affect the topology (unaffected groups left out):", ""]
    out += _table(TABLE_COLUMNS, [[r[c] for c in TABLE_COLUMNS] for r in shown])
    if len(rows) > len(shown):
        out += [
            "",
            f"... and {len(rows) - len(shown)} more group(s): see `haplane analyse FILE "
            f"-k {max_failures}` or `--json`.",
        ]
    return [*out, ""]


def _availability(topology: Topology) -> list[str]:
    est = estimate(topology, top=TOP_CONTRIBUTORS)
    lo, hi = est.interval
    out = ["## Availability", ""]
    out += [
        *_table(
            ["MEASURE", "VALUE"],
            [
                ["availability of writes", _percent(est.availability)],
                ["interval", f"{_percent(lo)} .. {_percent(hi)}"],
                ["expected downtime", f"{est.downtime_minutes_per_year:.2f} min/year"],
                ["method", f"{est.method} (up to {est.max_failures} simultaneous failures)"],
            ],
        ),
        "",
    ]
    if est.contributors:
        out += ["Failure classes that dominate the downtime:", ""]
        out += [
            *_table(
                ["FAILURE CLASS", "SHARE", "EXAMPLE"],
                [
                    [c.label, f"{c.share * 100:.1f}%", " + ".join(c.example) or "-"]
                    for c in est.contributors[:TOP_CONTRIBUTORS]
                ],
            ),
            "",
        ]
    out += [
        "Assumptions: the default failure and repair rates (MTBF/MTTR per kind of component, "
        "zone, site and network cut) are documented estimates for a typical public-cloud "
        "deployment, not measurements; override them with your own incident data. "
        f"Model: {ASSUMPTIONS}.",
        "",
    ]
    return out


def _diagram(topology: Topology) -> list[str]:
    return [
        "## Diagram",
        "",
        "```mermaid",
        to_mermaid(topology).rstrip("\n"),
        "```",
        "",
        "SVG/PNG: `haplane diagram FILE` (needs Graphviz); `--fail NAME...` shades a failure set.",
        "",
    ]


def _entry(title: str, auto: Sequence[str], operator: Sequence[str]) -> list[str]:
    out = [f"### {title}", "", "**haplane does automatically (today):**", ""]
    out += [f"- {a}" for a in auto] + ["", "**The operator does:**", ""]
    out += [f"{i}. {o}" for i, o in enumerate(operator, 1)]
    return [*out, ""]


@dataclass(frozen=True)
class _Shipped:
    name: str
    description: str
    parameters: list[dict[str, Any]]
    risky: bool

    def command(self, values: Mapping[str, str]) -> str:
        """`haplane runbook run NAME -p ...` with this topology's values where known, else
        each parameter's example (as `haplane runbook show` prints it)."""
        args = [f"haplane runbook run {self.name}"]
        for p in self.parameters:
            if p.get("required") or p.get("default") is None:
                value = values.get(p["name"]) or p.get("example") or str(p["name"]).upper()
                args.append(f"-p {p['name']}={value}")
        return " ".join(args)  # risky steps: asked for and approved through the API


def _shipped_runbooks() -> list[_Shipped]:
    """The runbooks haplane ships (`haplane/runbooks/*.yaml`), as written. (The run layer's
    `haplane.local.runbook` checks and runs them; this one only reads what they say.)"""
    out = []
    for f in sorted(resources.files("haplane.runbooks").iterdir(), key=lambda f: f.name):
        if f.name.endswith(".yaml"):
            doc = yaml.safe_load(f.read_text(encoding="utf-8"))
            out.append(
                _Shipped(
                    doc["metadata"]["name"],
                    " ".join(doc["metadata"].get("description", "").split()),
                    doc["spec"].get("parameters") or [],
                    any(s.get("risky") for s in doc["spec"]["steps"]),
                )
            )
    return out


def _runbook(topology: Topology) -> list[str]:
    regions = topology.regions()
    priority = topology.region_priority()
    active = priority[0] if priority else None
    standby = priority[1] if len(priority) > 1 else None
    witnesses = _witness_sites(topology)
    g = topology.spec.global_
    control = [m.name for m in g.control_etcd.members]
    control_sites = list(dict.fromkeys(m.site for m in g.control_etcd.members))
    status = "`haplane status`"
    analyse_cmd = "`haplane analyse FILE -k 2`"
    f = g.failover
    auto_failover = (
        f"The failover controller (beside every gate; one leads) commits epoch + 1 for the next "
        f"healthy region in priority order once a majority of all {len(g.gates)} gate "
        f"instances have seen the active region down for {f.down_after_ms} ms (not within "
        f"{f.min_interval_ms} ms of the last change), freezes the old region's fence key "
        "(`frozen:`) whenever that region's etcd answers, and unfences the new region "
        f"{f.grant_ms} + {f.safety_margin_ms} ms later, after setting its fence key `active:`; "
        "the old region's replicas stop writing within "
        f"{f.grant_ms - f.safety_margin_ms} ms of losing the global state, and once its key "
        "is frozen a write of theirs that stalled past that is refused by their own etcd (a "
        "region cut off from the controller is frozen only when the cut heals)."
        if f.automatic
        else "Automatic failover is off (`failover.automatic: false`): the controller only "
        "reports; an operator switches."
    )
    failover_to = (
        f'`haplane failover --to {standby} --reason "{active} down"`'
        if standby
        else "(no other region to fail over to: `haplane failover --to REGION` needs two regions)"
    )
    out = [
        "## DR runbook",
        "",
        "Derived from this file. Component names are as `haplane status` prints them "
        "(`REGION/NAME`, `global/NAME`). Ports the file leaves out are assigned by `haplane up` "
        "and recorded in the state directory's `ports.json`"
        + (
            "."
            if topology.spec.security.insecure
            else f". etcd speaks TLS with client certificates: before any `etcdctl` below, "
            f"`{ETCDCTL_TLS}` (`$STATE`: the state directory)."
        )
        + " haplane restarts crashed "
        "processes, keeps routing within a region by health checks, and "
        + (
            "**fails regions over by itself** (a majority of gate vantage points must agree; "
            "API replicas write only under a time-limited grant of the current epoch, and "
            "every write compares its region's fence key)."
            if f.automatic
            else "leaves region failover to an operator (`failover.automatic: false`); writes "
            "are still fenced by epoch."
        ),
        "",
        f"Failover priority: {' > '.join(f'`{p}`' for p in priority) or 'none'}. "
        + (
            f"Witness site(s): {_names(witnesses)} (a global control etcd member and a gate "
            "vantage point; no region)."
            if witnesses
            else "No witness site: losing the site that holds the control etcd majority "
            "leaves nobody able to record a failover."
        ),
        "",
    ]

    # one etcd member down
    examples = []
    for site, region in regions:
        n = len(region.etcd.members)
        members = ", ".join(f"`{site.name}/{m.name}` (zone {m.zone})" for m in region.etcd.members)
        examples.append(f"`{site.name}`: {n} members {members}, tolerates {_tolerates(n)} down")
    first_site, first_region = regions[0] if regions else (None, None)
    member = (
        f"{first_site.name}/{first_region.etcd.members[0].name}"
        if first_site and first_region
        else "REGION/MEMBER"
    )
    site_name = first_site.name if first_site else "REGION"
    shipped = _shipped_runbooks()
    values = {
        "etcd-member-lost": {"member": member},
        "region-lost": {"region": active or ""},
        "regional-etcd-quorum-lost": {"region": standby or ""},
    }
    commands = {b.name: b.command(values.get(b.name, {})) for b in shipped}
    out += _entry(
        "One etcd member down",
        [
            "The supervisor restarts a member that exits on its own, with exponential backoff "
            "(0.5 s doubling to 10 s); a member stopped by `haplane fault kill|term` stays down.",
            "Raft keeps quorum while a majority is up; API replicas keep serving. "
            + "; ".join(examples)
            + ".",
        ],
        [
            f"Check: {status}; `etcdctl --endpoints {_regional_endpoints(topology, site_name)} "
            "endpoint status -w table` (and `endpoint health`).",
            f"Bring it back: `haplane fault restart {member}` (any member by its status name).",
            "If its data directory is lost, replace the member: "
            f"`{commands['etcd-member-lost']}` (checks that every other member is healthy, "
            f"then `haplane member replace {member}`: removed, added back as a learner on a "
            "fresh data dir, promoted once caught up).",
        ],
    )

    # etcd quorum lost in a region
    auto_q = [
        "Nothing restores quorum by itself beyond restarting crashed members; API replicas "
        "refuse `/readyz` without quorum, so balancers and gates stop sending to them.",
    ]
    ops_q = [
        f"Check: {status} and `etcdctl --endpoints ... endpoint status -w table` for the "
        "region's members; restart stopped members with `haplane fault restart REGION/NAME`.",
    ]
    if active:
        ops_q.append(
            f"If the lost region is the active `{active}` and quorum cannot be restored "
            f"quickly: {failover_to}. "
            + (
                "Writes acknowledged by the old region above the cut (what the new region had "
                "applied when it was promoted) are missing there: asynchronous replication "
                "loses up to the replication lag, and `haplane status` shows the cut. A "
                "synchronous pair (`mode: Sync`) loses no acknowledged write as long as the "
                "sync record (`haplane status`: synchronous replication) names the standby "
                "promoted; while it says `none` (degraded), the asynchronous rules apply. "
                "A planned `haplane failover --to` while both regions run loses nothing: it "
                "freezes the old region, waits until the new one applied a cut marker, then "
                "switches. When the old region returns, what it wrote after the cut is saved "
                "(`haplane divergence list`) before it is re-seeded."
                if g.replication
                else "Without replication the new region serves only its own data."
            )
        )
    if standby:
        ops_q.append(
            f"If it is a standby region (e.g. `{standby}`), writes continue in `{active}`; "
            "restore quorum before the next failover needs it. Lost for good (a majority of "
            "its data dirs gone): rebuild it from one of its snapshots (`haplane snapshot "
            f"list`): `{commands['regional-etcd-quorum-lost']}`."
        )
    out += _entry("etcd quorum lost in a region", auto_q, ops_q)

    # API replica down
    apis = "; ".join(f"`{s.name}`: {_names(a.name for a in r.api_servers)}" for s, r in regions)
    api_example = (
        f"{regions[0][0].name}/{regions[0][1].api_servers[0].name}"
        if regions and regions[0][1].api_servers
        else "REGION/API"
    )
    out += _entry(
        "An API replica down",
        [
            "The supervisor restarts it with backoff; the region's balancers health-check "
            "`/readyz` and send new connections to the remaining replicas.",
            f"API replicas: {apis or 'none'}.",
        ],
        [
            f"Check: {status}.",
            f"If it stays down: `haplane fault restart {api_example}`.",
        ],
    )

    # balancer down
    lbs = "; ".join(f"`{s.name}`: {_names(b.name for b in r.balancers)}" for s, r in regions)
    lb_example = (
        f"{regions[0][0].name}/{regions[0][1].balancers[0].name}"
        if regions and regions[0][1].balancers
        else "REGION/BALANCER"
    )
    single_lb = [s.name for s, r in regions if len(r.balancers) < 2]
    out += _entry(
        "A balancer down",
        [
            "The supervisor restarts it; gates health-check each balancer's `/healthz/region` "
            "and use the region's other balancers.",
            f"Balancers: {lbs or 'none'}."
            + (
                f" Single balancer (a single point of failure) in {_names(single_lb)}."
                if single_lb
                else ""
            ),
        ],
        [f"Check: {status}.", f"If it stays down: `haplane fault restart {lb_example}`."],
    )

    # whole zone down
    zone_lines = []
    for site, region in regions:
        for z in site.zones:
            hit = [m.name for m in region.etcd.members if m.zone == z]
            hit += [a.name for a in region.api_servers if a.zone == z]
            hit += [b.name for b in region.balancers if b.zone == z]
            etcd_in = sum(m.zone == z for m in region.etcd.members)
            verdict = (
                "keeps quorum"
                if len(region.etcd.members) - etcd_in > len(region.etcd.members) // 2
                else "LOSES quorum"
            )
            zone_lines.append(f"zone `{site.name}/{z}` takes down {_names(hit)}: etcd {verdict}")
    out += _entry(
        "A whole zone down",
        [
            "Everything in the zone stops; the region keeps serving while its etcd keeps quorum "
            "and a ready API replica and a balancer remain in other zones; routing follows "
            "health checks.",
            *zone_lines,
        ],
        [
            f"Check: {status}; confirm the region's etcd quorum with `etcdctl ... endpoint "
            "status`.",
            "When the zone returns, restart anything still down with `haplane fault restart "
            "REGION/NAME`; if the region lost quorum, follow 'etcd quorum lost in a region'.",
        ],
    )

    # active region down or isolated
    gates_at = ", ".join(f"`{x.name}` ({x.site})" for x in g.gates)
    out += _entry(
        f"The active region (`{active or 'none'}`) down or isolated",
        [
            "Gates health-check every region's balancers; each gate is a vantage point and "
            f"reports what it sees: {gates_at}. A gate never switches on its own view.",
            auto_failover,
        ],
        [
            f"Confirm from more than one vantage point (gates at {_names(x.site for x in g.gates)}"
            + (f"; witness {_names(witnesses)}" if witnesses else "")
            + f") that `{active}` is really down or isolated, not just one link: {status}.",
            f"Check that the global control etcd keeps quorum: `etcdctl --endpoints "
            f"{_control_endpoints(topology)} endpoint status -w table`.",
            f"If the controller did not switch (automatic off, no majority, hysteresis): "
            f"{failover_to} (a fenced switchover: the old region stops writing before the new "
            "one starts). It asks for a Switchover through the API: a second operator "
            "(haplane:dr-operator) runs `haplane approve NAME`; alone in an emergency, a "
            "haplane:platform-admin adds `--break-glass`. Through a standby region's balancer "
            "when the gate cannot serve: `--region REGION`. Gates move new connections and "
            "close old ones.",
            f"Once switched: `{commands['region-lost']}` verifies the new region took over "
            "(a newer epoch, writable) and reports the data loss at the cut.",
            f"When `{active}` comes back it stays a standby (its replicas refuse writes: "
            "another region holds the epoch, and its fence key is set `frozen:` by `haplane "
            "up`, the supervisor or the failover controller before any of its replicas could "
            "write; `haplane status` shows every region's key). Switch back when it is stable "
            f'with `haplane failover --to {active} --reason "planned switchback"`'
            + (" (or let failback do it)." if f.failback else "."),
        ],
    )

    # global control etcd losing quorum
    out += _entry(
        "The global control etcd losing quorum",
        [
            f"Members: {_names(f'{GLOBAL_SCOPE}/{c}' for c in control)} on sites "
            f"{_names(control_sites)}; tolerates {_tolerates(len(control))} down.",
            "Crashed members are restarted by the supervisor. Without quorum nobody can record "
            "or change the active region, or renew its write grant: the active region fences "
            f"itself within {f.grant_ms - f.safety_margin_ms} ms and writes stop everywhere "
            "(safety first: a global write outage, as the failure analysis above counts it); "
            "gates that cannot confirm the active region for 3 s refuse clients.",
        ],
        [
            f"Check: `etcdctl --endpoints {_control_endpoints(topology)} endpoint status -w "
            "table`.",
            f"Restart stopped members: `haplane fault restart {GLOBAL_SCOPE}/{control[0]}` "
            "(and the others as needed).",
            f"`{commands['global-etcd-quorum-lost']}` says which members are down, what to do, "
            "and what haplane refuses to do by itself.",
            f"After quorum returns: {status} and {analyse_cmd} to review what else is exposed.",
        ],
    )

    # gate instance down
    gate_example = f"{GLOBAL_SCOPE}/{g.gates[0].name}" if g.gates else "global/GATE"
    out += _entry(
        "A gate instance down",
        [
            "The supervisor restarts it; the other instances keep serving (on one host they "
            "share one port) and keep their health vantage points.",
        ],
        [f"Check: {status}.", f"If it stays down: `haplane fault restart {gate_example}`."],
    )

    if g.gitops:
        gitops_example = f"{GLOBAL_SCOPE}/{g.gitops[0].name}"
        gitops_sites = {x.site for x in g.gitops}
        out += _entry(
            "A GitOps controller instance down",
            [
                "The supervisor restarts it. When it led, another instance takes the Lease "
                "once it expires and goes on from the Syncs' status (a step it interrupted "
                "is applied again in full); objects already applied stay as they are.",
                f"Instances: {_names(f'{GLOBAL_SCOPE}/{x.name} ({x.site})' for x in g.gitops)}"
                + (
                    "."
                    if len(g.gitops) > 1 and len(gitops_sites) > 1
                    else " - a single point of failure for syncing (`gitops-controllers`)."
                ),
            ],
            [
                f"Check: {status} (the leading instance is starred); `haplane gitops status` "
                "for what was applied.",
                f"If it stays down: `haplane fault restart {gitops_example}`.",
            ],
        )

    # network cut between sites
    sites = [s.name for s in topology.spec.sites]
    links = [f"`{a}`<->`{b}`" for i, a in enumerate(sites) for b in sites[i + 1 :]]
    out += _entry(
        "A network cut between sites",
        [
            f"Links: {', '.join(links) or 'none'}. etcd clusters and gates keep working on the "
            "side that holds a majority; nothing fails over by itself.",
            "A one-way cut (A cannot reach B, B reaches A) can make vantage points disagree.",
        ],
        [
            f"Check from each site: {status}; `etcdctl ... endpoint status` against both the "
            "regional and the control endpoints.",
            f"If the active region `{active}` is cut off from the control etcd majority or the "
            f"gates, treat it as 'active region down or isolated': {failover_to}.",
            f"Review exposure: {analyse_cmd} lists the cut combinations that stop writes.",
        ],
    )

    out += [
        "### Executable runbooks",
        "",
        "Shipped with haplane (`haplane runbook list`, `haplane runbook show NAME`): checks of "
        "the live status, haplane commands, waits and assertions, journaled step by step in "
        "`STATE/runbooks/`; `--dry-run` evaluates the checks and prints the commands. A runbook "
        "with risky steps is asked for through the API and runs once another dr-operator or "
        "platform-admin approved it (`haplane approve NAME`); `--direct --yes` runs it at once "
        "on the supervisor's host (break glass).",
        "",
        *_table(
            ("RUNBOOK", "WHAT IT DOES", "RUN"),
            [(f"`{b.name}`", b.description, f"`{commands[b.name]}`") for b in shipped],
        ),
        "",
    ]
    return out


# ---- public API ---------------------------------------------------------------------------


def markdown(topology: Topology, *, max_failures: int = 2, diagram_svg: bool = False) -> str:
    """The whole document as Markdown (the diagram as a Mermaid block; `diagram_svg` only
    matters for `html`)."""
    del diagram_svg
    lines = [
        *_overview(topology),
        *_inventory(topology),
        *_validation(topology),
        *_tolerance(topology, max_failures),
        *_availability(topology),
        *_diagram(topology),
        *_runbook(topology),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def _svg(topology: Topology) -> str | None:
    try:
        data = render(topology, "svg")
    except DiagramError:
        return None
    text = data.decode("utf-8")
    start = text.find("<svg")
    return text[start:] if start >= 0 else None


def html(topology: Topology, *, max_failures: int = 2, diagram_svg: bool = False) -> str:
    """The same document as a standalone HTML page; with `diagram_svg` and Graphviz available,
    the SVG diagram is embedded inline after the Mermaid block."""
    md = MarkdownIt("commonmark").enable("table")
    body = md.render(markdown(topology, max_failures=max_failures))
    if diagram_svg:
        svg = _svg(topology)
        if svg is not None:
            marker = "<h2>DR runbook</h2>"
            figure = f'<div class="diagram">\n{svg}\n</div>\n'
            body = body.replace(marker, figure + marker, 1) if marker in body else body + figure
    title = html_lib.escape(f"Topology {topology.name}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n"
        f"{body}</body>\n</html>\n"
    )
