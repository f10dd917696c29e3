"""`haplane export prometheus`: what a Prometheus needs to watch a topology, from the topology.

Layer: run (`haplane.local`). Pure: builds documents from a topology, its plan (where
everything listens) and the state dir's certificate paths; the CLI writes them. The metric
names come from `haplane.telemetry` (and etcd's own), so a rule or a panel cannot name a metric
no component exports; the tests run `promtool check config`, `check rules` and `test rules`
on the output, and a real Prometheus scrapes a running topology with it.

    prometheus.yml                 scrape jobs (file_sd) and the rule file
    targets/<job>.json             one file per job: every instance, labelled
    rules/haplane-alerts.yml       alerting rules, thresholds from the topology
    grafana/haplane-dashboard.json a Grafana dashboard (datasource chosen on import)
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from haplane.telemetry import Api, Backups, Drills, Gate, Gitops, Replicator
from haplane.topology import Topology
from haplane.topology.model import duration_seconds

from .gate_plans import TopologyPlan
from .security import PlatformTls

ETCD_HAS_LEADER = "etcd_server_has_leader"  # etcd's own metrics the rules read (3.4 has them)
ETCD_DB_SIZE = "etcd_mvcc_db_total_size_in_bytes"
ETCD_QUOTA = "etcd_server_quota_backend_bytes"
ETCD_LEADER_CHANGES = "etcd_server_leader_changes_seen_total"
ETCD_METRICS = (ETCD_HAS_LEADER, ETCD_DB_SIZE, ETCD_QUOTA, ETCD_LEADER_CHANGES)

DEFAULT_LAG_LIMIT = 10.0  # seconds, for a pair without `maxLagMs`
CERT_WARNING_DAYS, CERT_CRITICAL_DAYS = 14, 2


@dataclass(frozen=True)
class Options:
    scrape_interval: int = 15  # seconds; also the rules' evaluation interval
    node_exporter: str = "localhost:9100"  # where node_exporter serves STATE/metrics/*.prom
    out: Path = Path(".")  # where the files go: the config names them relative to it


def _hostport(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def _abs(path: Path) -> str:
    return str(path.resolve())


def _seconds(value: float) -> str:
    """A Prometheus duration, whole seconds rounded up (at least 1s)."""
    return f"{max(1, math.ceil(value))}s"


# ---- targets -----------------------------------------------------------------------------------


def targets(topology: Topology, plan: TopologyPlan, options: Options) -> dict[str, list[Any]]:
    """file_sd groups per job: one group per instance, labelled with where it runs."""
    jobs: dict[str, list[Any]] = {
        "haplane-api": [
            {"targets": [_hostport(r.host, r.port)],
             "labels": {"region": r.region, "name": r.qualified_name}}
            for r in plan.replicas
        ],
        "haplane-gate": [
            *({"targets": [_hostport(b.host, b.admin_port)],
               "labels": {"role": "balancer", "region": b.region, "name": b.qualified_name}}
              for b in plan.balancers),
            *({"targets": [_hostport(g.host, g.admin_port)],
               "labels": {"role": "gate", "site": g.site, "name": g.qualified_name}}
              for g in plan.gates),
        ],
        "haplane-replicator": [
            {"targets": [_hostport(r.host, r.port)],
             "labels": {"region": r.region, "name": r.qualified_name}}
            for r in plan.replicators
        ],
        "haplane-gitops": [
            {"targets": [_hostport(x.host, x.port)],
             "labels": {"site": x.site, "name": x.qualified_name}}
            for x in plan.gitops
        ],
        "etcd": [
            {"targets": [_hostport(a.host, a.client_port)],
             "labels": {"cluster": c.view.scope, "name": name}}
            for c in plan.clusters
            for name, a in c.addresses.items()
        ],
        "haplane-textfile": [
            {"targets": [options.node_exporter], "labels": {"topology": topology.name}}
        ],
    }  # fmt: skip
    return {job: groups for job, groups in jobs.items() if groups}


# ---- scrape configuration -------------------------------------------------------------------


def scrape_config(
    topology: Topology, plan: TopologyPlan, tls: PlatformTls | None, options: Options
) -> dict[str, Any]:
    interval = f"{options.scrape_interval}s"
    jobs = targets(topology, plan, options)

    def job(name: str, tls_config: dict[str, str] | None, **extra: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {"job_name": name, **extra}
        if tls_config is not None:
            doc["scheme"] = "https"
            doc["tls_config"] = tls_config
        doc["file_sd_configs"] = [{"files": [f"targets/{name}.json"]}]
        return doc

    platform = etcd = None
    if tls is not None:
        # absolute: Prometheus resolves a relative path from the config file's directory
        s, e = tls.scraper, tls.etcd_scraper
        platform = {"ca_file": _abs(tls.ca), "cert_file": _abs(s.cert), "key_file": _abs(s.key)}
        etcd = {"ca_file": _abs(e.ca), "cert_file": _abs(e.cert), "key_file": _abs(e.key)}
    scrape = []
    for name in jobs:
        if name == "etcd":
            scrape.append(job(name, etcd))
        elif name == "haplane-textfile":
            # node_exporter's textfile collector (`--collector.textfile.directory=STATE/metrics`):
            # only the drills', snapshots' and backups' series; the rest of a node's are not ours
            scrape.append(
                job(
                    name,
                    None,
                    metric_relabel_configs=[
                        {
                            "source_labels": ["__name__"],
                            "regex": "haplane_(drill|snapshot|logical_backup)_.*",
                            "action": "keep",
                        }
                    ],
                )
            )
        elif name == "haplane-replicator":
            # its metrics carry `region` themselves (the region it writes into, as the
            # target's): theirs, not an `exported_region` beside the target's
            scrape.append(job(name, platform, honor_labels=True))
        else:
            scrape.append(job(name, platform))
    return {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "external_labels": {"topology": topology.name},
        },
        "rule_files": ["rules/haplane-alerts.yml"],
        "scrape_configs": scrape,
    }


# ---- alerting rules ---------------------------------------------------------------------------


def _alert(
    name: str,
    expr: str,
    for_: str,
    severity: str,
    summary: str,
    description: str,
    **labels: str,
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, **labels},
        "annotations": {"summary": summary, "description": description},
    }


def _lag_limits(topology: Topology) -> dict[str, float]:
    """Per region: the lag (seconds) over which it is no longer a standby to fail over to. A
    pair's `maxLagMs` holds in both directions (the active region decides which way data
    flows); a region in several pairs takes the tightest."""
    limits: dict[str, float] = {}
    for pair in topology.spec.global_.replication:
        if pair.max_lag_ms is None:
            continue
        for region in (pair.from_, pair.to):
            limits[region] = min(limits.get(region, math.inf), pair.max_lag_ms / 1000)
    return {r: limits.get(r, DEFAULT_LAG_LIMIT) for r, _ in _regions(topology)}


def _regions(topology: Topology) -> list[tuple[str, Any]]:
    return [(site.name, site) for site, _ in topology.regions()]


def alert_rules(topology: Topology, options: Options) -> dict[str, Any]:
    failover = topology.spec.global_.failover
    down_for = _seconds(max(failover.down_after_ms / 1000, options.scrape_interval))
    # a normal fence lasts the grant and margin, plus a controller pass and the fence-key
    # write; two scrapes of slack keep one late scrape from calling it stuck
    fence_for = _seconds(
        (failover.grant_ms + failover.safety_margin_ms) / 1000 + 5 + 2 * options.scrape_interval
    )
    rules: list[dict[str, Any]] = []
    up = f'{Gate.upstream_state.name}{{job="haplane-gate",role="gate",state="up"}}'
    rules.append(_alert(
        "HaplaneRegionDown",
        # the gates' view (what the failover controller decides on): no gate sees a healthy
        # balancer of the region; or no API replica of the region answers a scrape
        f'max by (region) (label_replace(max by (pool) ({up}), "region", "$1", "pool", "(.+)"))'
        ' == 0 or sum by (region) (up{job="haplane-api"}) == 0',
        down_for, "critical",
        "Region {{ $labels.region }} is down",
        "No gate sees a healthy regional balancer of {{ $labels.region }}, or none of its API "
        "replicas answers. If it was the active region, the gates fail over to a standby "
        "(`haplane status`, `haplane failover --help`).",
    ))  # fmt: skip
    epoch = f'{Gate.epoch.name}{{job="haplane-gate"}}'
    rules.append(_alert(
        "HaplaneFailover",
        f"max({epoch}) and on() max(changes({epoch}[10m])) > 0",
        "0s", "warning",
        "The active region changed (epoch {{ $value }})",
        "A failover or switchover committed a new epoch in the last 10 minutes. What "
        "happened and what data it cost: `kubectl get events -n kube-system`, "
        "`haplane status`, `haplane divergence list`.",
    ))  # fmt: skip
    writable = f'{Gate.epoch_writable.name}{{job="haplane-gate"}}'
    rules.append(_alert(
        "HaplaneFenceActiveTooLong",
        # the gates on the newest epoch only: one that is behind (or was cut off before
        # the switch) still calls its older epoch writable
        f"max({writable} and on(instance) ({epoch} == on() group_left() max({epoch}))) == 0",
        fence_for, "critical",
        "The active region's epoch has been fenced longer than a write grant",
        "Writes are refused from a switch until the old region's grant "
        f"({failover.grant_ms} ms + {failover.safety_margin_ms} ms margin) has run out and "
        "the new region's fence key is set. Fenced longer means the unfence did not happen: "
        "usually the new region's etcd does not answer. The gates' failover controller "
        "retries; see its log (`haplane logs --component gate`).",
    ))  # fmt: skip
    leading = f'{Replicator.leader.name}{{job="haplane-replicator"}} == 1'
    for region, limit in _lag_limits(topology).items():
        lag = f'{Replicator.lag_seconds.name}{{job="haplane-replicator",region="{region}"}}'
        rules.append(_alert(
            "HaplaneReplicationLagHigh",
            f"max by (region) ({lag} and on(instance) ({leading})) > {limit:g}",
            _seconds(max(30, 2 * options.scrape_interval)), "warning",
            "Replication into {{ $labels.region }} is {{ $value | humanizeDuration }} behind",
            f"Over the limit of {limit:g} s: a failover to {region} now would lose that much "
            "acknowledged data (async pairs), and automatic failover passes it over when "
            "`maxLagMs` is set. Check the replicator (`haplane status`) and the link between "
            "the regions.",
            region=region,
        ))  # fmt: skip
    rules.append(_alert(
        "HaplaneEtcdNoLeader",
        f'{ETCD_HAS_LEADER}{{job="etcd"}} == 0',
        _seconds(max(10, options.scrape_interval)), "critical",
        "etcd member {{ $labels.name }} has no leader",
        "The member's cluster ({{ $labels.cluster }}) cannot commit writes: quorum is lost or "
        "an election is stuck. Runbook: `haplane runbook show regional-etcd-quorum-lost` "
        "(`global-etcd-quorum-lost` for the global cluster).",
    ))  # fmt: skip
    ratio = f'{ETCD_DB_SIZE}{{job="etcd"}} / {ETCD_QUOTA}{{job="etcd"}}'
    rules.append(_alert(
        "HaplaneEtcdDatabaseNearQuota",
        f"{ratio} > 0.8",
        "5m", "warning",
        "etcd member {{ $labels.name }} uses {{ $value | humanizePercentage }} of its quota",
        "At the quota etcd raises NOSPACE and refuses every write. Compact and defragment "
        "(`etcdctl compact`, `etcdctl defrag`, one member at a time), or raise "
        "`quotaBackendBytes` in the topology.",
    ))  # fmt: skip
    expiry = f"{Api.certificate_expiry.name}"
    for severity, days in (("warning", CERT_WARNING_DAYS), ("critical", CERT_CRITICAL_DAYS)):
        rules.append(_alert(
            "HaplaneCertificateExpiring",
            f"{expiry} < {days * 86400}",
            "10m", severity,
            "A certificate of {{ $labels.name }} expires in {{ $value | humanizeDuration }}",
            f"Under {days} days left ({{{{ $labels.certificate }}}}). `haplane pki rotate` "
            "issues new leaves without a restart; `haplane pki status` lists every expiry.",
        ))  # fmt: skip
    rules.append(_alert(
        "HaplaneDrillFailed",
        f"{Drills.last_passed.name} == 0",
        "0s", "warning",
        "The last scheduled {{ $labels.scenario }} drill failed",
        "The platform did not recover as the drill expected. `haplane drills` shows the "
        "verdict, RTO and RPO of each run, and the report of the failed one.",
    ))  # fmt: skip
    schedule = topology.spec.global_.drills
    if schedule.enabled:
        # each scenario runs once per `every x scenarios`; the newest run of any scenario
        # once per `every`: overdue at three times that, or never recorded at all
        overdue = 3 * duration_seconds(schedule.every)
        newest = f"max({Drills.last_run.name})"
        rules.append(_alert(
            "HaplaneDrillsOverdue",
            f"time() - {newest} > {overdue} or absent({Drills.last_run.name})",
            # short: the expression already waits three periods (absent: a first scrape)
            _seconds(max(60, 2 * options.scrape_interval)), "warning",
            "No scheduled drill has run for a while",
            f"Drills are scheduled every {schedule.every}, but none has been recorded for "
            f"{overdue} s (or node_exporter does not serve STATE/metrics/drills.prom). "
            "A drill waits while the platform is unhealthy or another operation runs.",
        ))  # fmt: skip
    success, failure = Backups.snapshot_success.name, Backups.snapshot_failure.name
    rules.append(_alert(
        "HaplaneSnapshotFailed",
        # one-to-one on every label (a second topology's "global" is another series)
        f"{failure} > 0 and {failure} > ({success} or {failure} * 0)",
        "0s", "warning",
        "The last scheduled snapshot of {{ $labels.scope }} failed",
        "Newer than its newest snapshot: the supervisor's log and the SnapshotFailed Event say "
        "why (`haplane logs -c supervisor --grep snapshot`). It is tried again within five "
        "minutes; `haplane snapshot save --region {{ $labels.scope }}` takes one by hand.",
    ))  # fmt: skip
    snapshots = topology.spec.global_.backups.snapshots
    if snapshots.enabled:
        stale = 3 * snapshots.every_seconds
        rules.append(_alert(
            "HaplaneSnapshotStale",
            f"time() - {success} > {stale}",
            _seconds(max(60, 2 * options.scrape_interval)), "warning",
            "No snapshot of {{ $labels.scope }} for three periods",
            f"Snapshots are scheduled every {snapshots.every}: none of this cluster is newer "
            f"than {stale} s. A failing schedule also fires HaplaneSnapshotFailed.",
        ))  # fmt: skip
    logical = topology.spec.global_.backups.logical
    if logical.enabled:
        ok, bad = Backups.logical_success.name, Backups.logical_failure.name
        rules.append(_alert(
            "HaplaneLogicalBackupFailed",
            f"{bad} > 0 and {bad} > ({ok} or {bad} * 0)",
            "0s", "warning",
            "The last scheduled logical backup failed",
            "The supervisor's log and the BackupFailed Event say why; it is tried again "
            "within five minutes (a backup taken by hand is not a scheduled one: it does not "
            "clear this).",
        ))  # fmt: skip
        stale = 3 * logical.every_seconds
        rules.append(_alert(
            "HaplaneLogicalBackupStale",
            f"time() - {ok} > {stale}",
            _seconds(max(60, 2 * options.scrape_interval)), "warning",
            "No logical backup for three periods",
            f"Logical backups are scheduled every {logical.every}: none is newer than "
            f"{stale} s.",
        ))  # fmt: skip
    if snapshots.enabled or logical.enabled:
        # the schedules write their series from their start (a failure time of 0: none):
        # without them, the backup alerts could never fire
        present = failure if snapshots.enabled else Backups.logical_failure.name
        rules.append(_alert(
            "HaplaneBackupMetricsMissing",
            f"absent({present})",
            "10m", "warning",
            "The backup schedules' metrics are not scraped",
            "STATE/metrics/backups.prom is written by the supervisor's schedules; point "
            "node_exporter's --collector.textfile.directory at STATE/metrics (job "
            "haplane-textfile).",
        ))  # fmt: skip
    rules.append(_alert(
        "HaplaneTargetDown",
        'up{job=~"haplane-(api|gate|replicator|gitops)|etcd"} == 0',
        "2m", "warning",
        "{{ $labels.job }} {{ $labels.name }} does not answer scrapes",
        "The process is down, or its metrics listener refuses the scraper's certificate "
        "(haplane's processes: STATE/pki/platform/metrics-scraper.crt, group "
        "system:monitoring; etcd: STATE/pki/etcd/client.metrics-scraper.crt).",
    ))  # fmt: skip
    return {"groups": [{"name": f"haplane-{topology.name}", "rules": rules}]}


# ---- dashboard -----------------------------------------------------------------------------------


def _panel(title: str, exprs: list[tuple[str, str]], unit: str, x: int, y: int, w: int = 12,
           kind: str = "timeseries") -> dict[str, Any]:  # fmt: skip
    return {
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


def dashboard(topology: Topology) -> dict[str, Any]:
    rate = "[$__rate_interval]"
    panels = [
        _panel("Active region (gates)", [
            (f'max by (pool) ({Gate.pool_active.name}{{job="haplane-gate",role="gate"}}) == 1',
             "{{pool}}"),
        ], "none", 0, 0, 6, "stat"),
        _panel("Epoch", [(f'max({Gate.epoch.name}{{job="haplane-gate"}})', "epoch")],
               "none", 6, 0, 6, "stat"),
        _panel("Regional balancers up, as the gates see them", [
            (f'sum by (pool) ({Gate.upstream_state.name}{{job="haplane-gate",role="gate",'
             'state="up"})', "{{pool}}"),
        ], "none", 12, 0),
        _panel("API requests by code", [
            (f"sum by (code) (rate({Api.requests.name}{rate}))", "{{code}}"),
        ], "reqps", 0, 8),
        _panel("API latency, 99th percentile", [
            (f"histogram_quantile(0.99, sum by (le, verb) (rate({Api.duration.name}_bucket"
             f"{rate})))", "{{verb}}"),
        ], "s", 12, 8),
        _panel("Gate responses by code (L7) and refused connections (L4)", [
            (f"sum by (code) (rate({Gate.requests.name}{{role=\"gate\"}}{rate}))", "{{code}}"),
            (f"sum(rate({Gate.connections_rejected.name}{{role=\"gate\"}}{rate}))", "refused"),
        ], "reqps", 0, 16),
        _panel("Replication lag", [
            (f"max by (region) ({Replicator.lag_seconds.name} and on(instance) "
             f"({Replicator.leader.name} == 1))", "{{region}}"),
        ], "s", 12, 16),
        _panel("etcd: members with a leader, per cluster", [
            (f"sum by (cluster) ({ETCD_HAS_LEADER})", "{{cluster}}"),
        ], "none", 0, 24),
        _panel("etcd: database size against quota", [
            (f"max by (cluster) ({ETCD_DB_SIZE} / {ETCD_QUOTA})", "{{cluster}}"),
        ], "percentunit", 12, 24),
        _panel("Sync acknowledgements", [
            (f"sum by (outcome) (rate({Api.sync_acks.name}{rate}))", "{{outcome}}"),
        ], "ops", 0, 32),
        _panel("GitOps syncs", [
            (f"sum by (result) (rate({Gitops.syncs.name}{rate}))", "{{result}}"),
        ], "ops", 12, 32),
        _panel("Scheduled drills: last result", [
            (Drills.last_passed.name, "{{scenario}}"),
        ], "bool_yes_no", 0, 40, 12, "stat"),
        _panel("Certificates: days left", [
            (f"min by (name) ({Api.certificate_expiry.name}) / 86400", "{{name}}"),
        ], "d", 12, 40),
    ]  # fmt: skip
    return {
        "title": f"haplane: {topology.name}",
        "uid": f"haplane-{topology.name}"[:40],
        "tags": ["haplane"],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": [{**p, "id": i + 1} for i, p in enumerate(panels)],
    }


def dashboard_exprs(doc: dict[str, Any]) -> list[str]:
    """Every query of a dashboard, Grafana's `$__rate_interval` replaced by a duration (so
    that promtool can parse them)."""
    return [
        t["expr"].replace("$__rate_interval", "1m") for p in doc["panels"] for t in p["targets"]
    ]


# ---- writing ---------------------------------------------------------------------------------


def write(
    topology: Topology, plan: TopologyPlan, tls: PlatformTls | None, options: Options
) -> list[Path]:
    """Every file into `options.out` (created), each replaced whole by rename."""
    out = options.out
    files: dict[Path, str] = {
        out / "prometheus.yml": _yaml(scrape_config(topology, plan, tls, options)),
        out / "rules" / "haplane-alerts.yml": _yaml(alert_rules(topology, options)),
        out / "grafana" / "haplane-dashboard.json": json.dumps(dashboard(topology), indent=1),
    }
    for job, groups in targets(topology, plan, options).items():
        files[out / "targets" / f"{job}.json"] = json.dumps(groups, indent=1)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(text if text.endswith("\n") else text + "\n")
        tmp.replace(path)
    return list(files)


def _yaml(doc: dict[str, Any]) -> str:
    head = "# written by `haplane export prometheus`: export again after changing the topology\n"
    return head + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)
