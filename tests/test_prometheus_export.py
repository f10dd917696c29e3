"""The metric catalogue and `haplane export prometheus`, without a running topology: names that
follow Prometheus' conventions (`promtool check metrics`), the README's catalogue generated
from the code, rules and dashboard queries that parse (`promtool check rules`) and name only
metrics that exist, and the alerts' behaviour on synthetic series (`promtool test rules`).
Scraping a running topology with the exported configuration is in test_platform_tls."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from haplane import telemetry
from haplane.local.gate_plans import resolve_all
from haplane.local.ports import PortRegistry
from haplane.local.prometheus_export import (
    ETCD_METRICS,
    Options,
    alert_rules,
    dashboard,
    dashboard_exprs,
    scrape_config,
    targets,
    write,
)
from haplane.topology import Topology, load_text
from haplane.topology.loader import example_text
from tests.topology_helpers import haplane

ROOT = Path(__file__).resolve().parents[1]


def promtool(*args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    r = subprocess.run(
        ["promtool", *args], capture_output=True, text=True, cwd=cwd, input=stdin, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def example(**global_: Any) -> Topology:
    doc = yaml.safe_load(example_text("two-regions"))
    doc["spec"]["global"].update(global_)
    return load_text(yaml.safe_dump(doc))


# ---- the catalogue ------------------------------------------------------------------------------


def test_every_metric_follows_prometheus_naming():
    """promtool's linter on an exposition with one sample of every metric, built with the same
    definitions the components use; plus what the linter does not check."""
    registry = CollectorRegistry()
    for m in telemetry.every_metric():
        labels = [f"x{i}" for i, _ in enumerate(m.labels)]
        if m.kind == "counter":
            metric = m.counter(registry)
            (metric.labels(*labels) if labels else metric).inc()
        elif m.kind == "gauge":
            metric = m.gauge(registry)
            (metric.labels(*labels) if labels else metric).set(1)
        else:
            metric = m.histogram(registry)
            (metric.labels(*labels) if labels else metric).observe(0.1)
    text = generate_latest(registry).decode()
    assert "_created" not in text  # no second series per child
    assert promtool("check", "metrics", stdin=text).strip() == ""
    names = [m.name for m in telemetry.every_metric()]
    assert len(names) == len(set(names)) and len(names) >= 45
    for m in telemetry.every_metric():
        assert re.fullmatch(r"(haplane|apiserver|etcd)_[a-z0-9_]+", m.name), m.name
        assert m.help and not m.help[0].islower() and not m.help.endswith("."), m.name
        assert (m.kind == "counter") == m.name.endswith("_total"), m.name
        assert all(re.fullmatch(r"[a-z][a-z0-9_]*", label) for label in m.labels), m.name
        if "second" in m.name:
            assert m.name.endswith(("_seconds", "_seconds_total")), m.name
    # a shared definition is one object: the components cannot drift apart on it
    assert telemetry.Api.certificate_expiry is telemetry.Gate.certificate_expiry


def test_linter_catches_a_bad_name():
    """The check above can fail: promtool flags a counter without _total, and a unit that is
    not a base unit."""
    bad = "# HELP x_ms latency\n# TYPE x_ms gauge\nx_ms 1\n# HELP y things\n# TYPE y counter\ny 1\n"
    r = subprocess.run(["promtool", "check", "metrics"], input=bad, capture_output=True, text=True)
    assert r.returncode != 0 and '"_total"' in r.stdout + r.stderr


def test_the_readme_catalogue_is_generated_from_the_code():
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- metric-catalogue:begin -->\n", "<!-- metric-catalogue:end -->"
    assert begin in readme and end in readme
    section = readme.split(begin, 1)[1].split(end, 1)[0]
    assert section == telemetry.markdown(), (
        "README's metric catalogue is stale: replace it with `haplane export metrics`"
    )
    for m in telemetry.every_metric():
        assert f"`{m.name}`" in section


def test_export_metrics_cli():
    def run(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "haplane.cli", "export", "metrics", *args],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout

    doc = json.loads(run("--json"))
    assert {d["name"] for d in doc} == {m.name for m in telemetry.every_metric()}
    assert all(d["help"] and d["type"] in ("counter", "gauge", "histogram") for d in doc)
    assert run() == telemetry.markdown()


# ---- the export ----------------------------------------------------------------------------------


def test_export_needs_the_scraper_certificates(tmp_path: Path):
    """They are `up`'s to issue; before it, a clear error and nothing written."""
    state, out = tmp_path / "state", tmp_path / "prom"
    r = haplane(state, "export", "prometheus", "--example", "two-regions", "-o", str(out),
                check=False)  # fmt: skip
    assert r.returncode == 1 and "haplane up" in r.stderr and not out.exists()


def test_scrape_config_targets_every_component(tmp_path: Path):
    topology = example()
    plan = resolve_all(topology, PortRegistry(tmp_path / "ports.json"))
    options = Options(scrape_interval=5, out=tmp_path)
    jobs = targets(topology, plan, options)
    count = {job: sum(len(g["targets"]) for g in groups) for job, groups in jobs.items()}
    assert count == {
        "haplane-api": 4, "haplane-gate": 7, "haplane-replicator": 4, "haplane-gitops": 2,
        "etcd": 9, "haplane-textfile": 1,
    }  # fmt: skip
    roles = [g["labels"]["role"] for g in jobs["haplane-gate"]]
    assert roles.count("gate") == 3 and roles.count("balancer") == 4
    assert {g["labels"]["region"] for g in jobs["haplane-api"]} == {"eu-west", "eu-central"}
    config = scrape_config(topology, plan, None, options)  # insecure: plain http
    assert config["global"]["scrape_interval"] == "5s"
    (textfile,) = [j for j in config["scrape_configs"] if j["job_name"] == "haplane-textfile"]
    keep = re.compile(textfile["metric_relabel_configs"][0]["regex"])
    for m in (*telemetry.Drills.__dict__.values(), *telemetry.Backups.__dict__.values()):
        if isinstance(m, telemetry.MetricDef):  # every textfile metric is kept
            assert keep.fullmatch(m.name), m.name
    assert not keep.fullmatch("node_cpu_seconds_total")
    assert all("tls_config" not in j for j in config["scrape_configs"])
    written = write(topology, plan, None, options)
    assert {p.relative_to(tmp_path).as_posix() for p in written} >= {
        "prometheus.yml", "rules/haplane-alerts.yml", "grafana/haplane-dashboard.json",
        "targets/haplane-api.json", "targets/etcd.json",
    }  # fmt: skip
    assert "SUCCESS" in promtool("check", "config", str(tmp_path / "prometheus.yml"))


def _names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:haplane|apiserver|etcd)_[a-z0-9_]+)\b", expr))


def test_rules_and_dashboard_parse_and_name_only_known_metrics(tmp_path: Path):
    topology = example(drills={"enabled": True, "every": "10m"})
    rules = alert_rules(topology, Options())
    board = dashboard(topology)
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]] + dashboard_exprs(board)
    known = {*telemetry.by_name(), *ETCD_METRICS}
    unknown = {n for e in exprs for n in _names_in(e)} - known
    assert unknown == set()
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    assert "SUCCESS" in promtool("check", "rules", str(tmp_path / "rules.yml"))
    # the dashboard's queries, as recording rules: promtool parses each
    recording = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(dashboard_exprs(board))
    ]}]}  # fmt: skip
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(recording))
    assert "SUCCESS" in promtool("check", "rules", str(tmp_path / "dashboard.yml"))
    names = {r["alert"] for r in rules["groups"][0]["rules"]}
    assert names == {
        "HaplaneRegionDown", "HaplaneFailover", "HaplaneFenceActiveTooLong",
        "HaplaneReplicationLagHigh", "HaplaneEtcdNoLeader", "HaplaneEtcdDatabaseNearQuota",
        "HaplaneCertificateExpiring", "HaplaneDrillFailed", "HaplaneDrillsOverdue",
        "HaplaneTargetDown", "HaplaneSnapshotFailed", "HaplaneSnapshotStale",
        "HaplaneBackupMetricsMissing", "HaplaneLogicalBackupFailed", "HaplaneLogicalBackupStale",
    }  # fmt: skip
    assert len(board["panels"]) >= 10 and json.dumps(board)


# ---- the alerts, on synthetic series ---------------------------------------------------------


def _without_annotations(rules: dict[str, Any]) -> dict[str, Any]:
    """promtool compares annotations exactly; these tests are about expressions, durations and
    labels (`check rules` above parses the annotation templates)."""
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return rules


def _alerts(name: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": e} for e in expected]}


def run_rule_tests(tmp_path: Path, topology: Topology, tests: list[dict[str, Any]]) -> None:
    rules = _without_annotations(alert_rules(topology, Options(scrape_interval=15)))
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    doc = {"rule_files": ["rules.yml"], "evaluation_interval": "15s", "tests": tests}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert "SUCCESS" in promtool("test", "rules", "tests.yml", cwd=tmp_path)


GATE = 'haplane_gate_upstream_state{{job="haplane-gate",role="gate",instance="{g}",pool="{pool}",upstream="{lb}",state="up"}}'  # noqa: E501
API_UP = 'up{{job="haplane-api",region="{region}",instance="{i}"}}'


def test_region_down(tmp_path: Path):
    """Down when no gate sees a healthy balancer of the region (one gate seeing one is enough
    to keep it up), or when none of its API replicas answers a scrape."""
    series = [
        # eu-west: both balancers go down in both gates' view at 2m30s
        *({"series": GATE.format(g=g, pool="eu-west", lb=lb), "values": "1x9 0x30"}
          for g in ("g1", "g2") for lb in ("lb-1", "lb-2")),
        # eu-central: only one gate sees one balancer: up
        {"series": GATE.format(g="g1", pool="eu-central", lb="lb-1"), "values": "1x40"},
        {"series": GATE.format(g="g2", pool="eu-central", lb="lb-1"), "values": "0x40"},
        *({"series": API_UP.format(region=r, i=i), "values": "1x40"}
          for r in ("eu-west", "eu-central") for i in ("a", "b")),
    ]  # fmt: skip
    down = {"severity": "critical", "region": "eu-west"}
    first = {
        "interval": "15s",
        "input_series": series,
        "alert_rule_test": [
            _alerts("HaplaneRegionDown", "2m"),
            _alerts("HaplaneRegionDown", "2m30s"),  # pending: not yet for the `for`
            _alerts("HaplaneRegionDown", "5m", down),
        ],
    }
    # the replicas' side: every API replica of eu-central stops answering scrapes
    replicas = {
        "interval": "15s",
        "input_series": [
            {"series": GATE.format(g="g1", pool="eu-central", lb="lb-1"), "values": "1x40"},
            {"series": API_UP.format(region="eu-central", i="a"), "values": "1x10 0x30"},
            {"series": API_UP.format(region="eu-central", i="b"), "values": "1x20 0x20"},
        ],
        "alert_rule_test": [
            _alerts("HaplaneRegionDown", "4m"),  # one still answers
            _alerts("HaplaneRegionDown", "7m", {"severity": "critical", "region": "eu-central"}),
        ],
    }
    run_rule_tests(tmp_path, example(), [first, replicas])


def test_replication_lag(tmp_path: Path):
    """Over the pair's limit (`maxLagMs`, or 10 s) for 30 s, on the leading replicator only."""
    rep = 'haplane_replication_{m}{{job="haplane-replicator",region="{r}",instance="{i}"}}'
    series = [
        {"series": rep.format(m="leader", r="eu-central", i="c1"), "values": "1x40"},
        {"series": rep.format(m="lag_seconds", r="eu-central", i="c1"), "values": "0.05x10 4x30"},
        # a replicator that does not lead keeps a stale figure: not a lag
        {"series": rep.format(m="leader", r="eu-west", i="w1"), "values": "0x40"},
        {"series": rep.format(m="lag_seconds", r="eu-west", i="w1"), "values": "99x40"},
    ]
    lag = {"severity": "warning", "region": "eu-central"}
    test = {
        "interval": "15s",
        "input_series": series,
        "alert_rule_test": [
            _alerts("HaplaneReplicationLagHigh", "2m"),
            _alerts("HaplaneReplicationLagHigh", "8m", lag),
        ],
    }
    # with the pair's own limit of 3 s, 4 s is over it; with the default of 10 s it is not
    pair = {"from": "eu-west", "to": "eu-central", "maxLagMs": 3000}
    run_rule_tests(tmp_path, example(replication=[pair]), [test])
    test["alert_rule_test"] = [_alerts("HaplaneReplicationLagHigh", "8m")]
    del pair["maxLagMs"]
    run_rule_tests(tmp_path, example(replication=[pair]), [test])


def test_failover_and_fence(tmp_path: Path):
    epoch = 'haplane_gate_epoch{{job="haplane-gate",instance="{g}"}}'
    writable = 'haplane_gate_epoch_writable{{job="haplane-gate",instance="{g}"}}'
    switch = {
        "interval": "15s",
        "input_series": [
            *({"series": epoch.format(g=g), "values": "1x10 2x60"} for g in ("g1", "g2")),
            # a normal fence: one scrape saw it
            *({"series": writable.format(g=g), "values": "1x10 0 1x59"} for g in ("g1", "g2")),
        ],
        "alert_rule_test": [
            _alerts("HaplaneFailover", "2m"),
            _alerts("HaplaneFailover", "3m", {"severity": "warning"}),
            _alerts("HaplaneFailover", "14m"),  # ten minutes on
            _alerts("HaplaneFenceActiveTooLong", "2m45s"),  # seen once: pending only
            _alerts("HaplaneFenceActiveTooLong", "3m"),
        ],
    }
    # epoch 2 from 1m15s; g4 is behind (still on epoch 1, which it calls writable): it must
    # not hide the fence the others see
    stuck = {
        "interval": "15s",
        "input_series": [
            *({"series": epoch.format(g=g), "values": "1x4 2x35"} for g in ("g1", "g2", "g3")),
            {"series": epoch.format(g="g4"), "values": "1x40"},
            {"series": writable.format(g="g4"), "values": "1x40"},
            {"series": writable.format(g="g1"), "values": "1x4 0x10 1x25"},
            {"series": writable.format(g="g2"), "values": "1x4 0x20 1x15"},
            # one gate on the newest epoch that saw the unfence is enough: the region writes
            {"series": writable.format(g="g3"), "values": "1x4 0x8 1x27"},
        ],
        # fenced in the view of every gate on epoch 2 from 1m15s to 3m15s (over the `for` of
        # grant + margin + 5 s + two scrapes = 37 s); g3 sees the unfence at 3m30s
        "alert_rule_test": [
            _alerts("HaplaneFenceActiveTooLong", "1m45s"),  # pending
            _alerts("HaplaneFenceActiveTooLong", "2m", {"severity": "critical"}),
            _alerts("HaplaneFenceActiveTooLong", "3m30s"),
        ],
    }
    run_rule_tests(tmp_path, example(), [switch, stuck])


def test_etcd_certificates_drills_and_targets(tmp_path: Path):
    member = '{{job="etcd",cluster="eu-west",name="eu-west/etcd-{n}",instance="e{n}"}}'
    cert = (
        'haplane_certificate_expiry_seconds{{job="haplane-api",name="{n}",certificate="serving"}}'
    )
    drill = 'haplane_drill_last_passed{{job="haplane-textfile",scenario="{s}"}}'
    series = [
        {"series": "etcd_server_has_leader" + member.format(n=1), "values": "1x10 0x30"},
        {"series": "etcd_server_has_leader" + member.format(n=2), "values": "1x40"},
        {"series": "etcd_mvcc_db_total_size_in_bytes" + member.format(n=1), "values": "90x60"},
        {"series": "etcd_server_quota_backend_bytes" + member.format(n=1), "values": "100x60"},
        {"series": "etcd_mvcc_db_total_size_in_bytes" + member.format(n=2), "values": "50x60"},
        {"series": "etcd_server_quota_backend_bytes" + member.format(n=2), "values": "100x60"},
        {"series": cert.format(n="ten-days"), "values": f"{10 * 86400}x60"},
        {"series": cert.format(n="one-day"), "values": f"{86400}x60"},
        {"series": cert.format(n="a-year"), "values": f"{365 * 86400}x60"},
        {"series": drill.format(s="replica-kill"), "values": "1x10 0x10"},
        {"series": drill.format(s="leader-kill"), "values": "1x20"},
        {"series": 'up{job="haplane-gitops",name="global/gitops-1",instance="x1"}',
         "values": "1x10 0x30"},
        {"series": 'up{job="haplane-gitops",name="global/gitops-2",instance="x2"}',
         "values": "1x40"},
    ]  # fmt: skip

    def labels(s: str, **extra: str) -> dict[str, str]:
        inner = s[s.index("{") + 1 : -1]
        found = dict(re.findall(r'(\w+)="([^"]*)"', inner))
        return {**found, **extra}

    e1 = labels(member.format(n=1).replace("{{", "{").replace("}}", "}"))
    test = {
        "interval": "15s",
        "input_series": series,
        "alert_rule_test": [
            _alerts("HaplaneEtcdNoLeader", "2m"),
            _alerts("HaplaneEtcdNoLeader", "5m", {**e1, "severity": "critical"}),
            _alerts("HaplaneEtcdDatabaseNearQuota", "6m", {**e1, "severity": "warning"}),
            _alerts("HaplaneCertificateExpiring", "12m",
                    labels(cert.format(n="ten-days"), severity="warning"),
                    labels(cert.format(n="one-day"), severity="warning"),
                    labels(cert.format(n="one-day"), severity="critical")),
            _alerts("HaplaneDrillFailed", "2m"),
            _alerts("HaplaneDrillFailed", "3m",
                    labels(drill.format(s="replica-kill"), severity="warning")),
            _alerts("HaplaneTargetDown", "5m",
                    labels('up{job="haplane-gitops",name="global/gitops-1",instance="x1"}',
                           severity="warning")),
        ],
    }  # fmt: skip
    run_rule_tests(tmp_path, example(), [test])


def test_snapshots_and_logical_backups(tmp_path: Path):
    """Failed: a failure newer than the newest success (or with none); not an older one, nor
    0 (never). Stale: the newest success older than three periods (hourly: 3 h)."""
    ok = 'haplane_snapshot_last_success_timestamp_seconds{{job="haplane-textfile",scope="{s}"}}'
    bad = 'haplane_snapshot_last_failure_timestamp_seconds{{job="haplane-textfile",scope="{s}"}}'
    ok2 = ok.replace('scope="{s}"', 'scope="{s}",instance="b"')
    bad2 = bad.replace('scope="{s}"', 'scope="{s}",instance="b"')
    lok = 'haplane_logical_backup_last_success_timestamp_seconds{job="haplane-textfile"}'
    lbad = 'haplane_logical_backup_last_failure_timestamp_seconds{job="haplane-textfile"}'
    series = [
        # eu-west: a snapshot at 100 s, then a failure at 200 s
        {"series": ok.format(s="eu-west"), "values": "100x40"},
        {"series": bad.format(s="eu-west"), "values": "0x10 200x30"},
        # eu-central: failed once, long ago, then fine
        {"series": ok.format(s="eu-central"), "values": "300x40"},
        {"series": bad.format(s="eu-central"), "values": "50x40"},
        # global: never a snapshot, and a failure
        {"series": bad.format(s="global"), "values": "0x10 250x30"},
        # another topology's global in the same Prometheus (another instance): fine
        {"series": ok2.format(s="global"), "values": "100x40"},
        {"series": bad2.format(s="global"), "values": "0x40"},
        {"series": lok, "values": "10x40"},
        {"series": lbad, "values": "0x40"},
    ]
    labels = {"job": "haplane-textfile", "severity": "warning"}
    recent = {
        "interval": "15s",
        "input_series": series,
        "alert_rule_test": [
            _alerts("HaplaneSnapshotFailed", "2m"),
            _alerts("HaplaneSnapshotFailed", "4m", {**labels, "scope": "eu-west"},
                    {**labels, "scope": "global"}),
            _alerts("HaplaneLogicalBackupFailed", "4m"),
            _alerts("HaplaneSnapshotStale", "9m"),  # within three hours
            _alerts("HaplaneBackupMetricsMissing", "9m"),
        ],
    }  # fmt: skip
    later = {
        "interval": "1m",
        "input_series": [
            {"series": ok.format(s="eu-west"), "values": "0x300"},
            {"series": bad.format(s="eu-west"), "values": "0x300"},
            {"series": lok, "values": "0x300"},
            {"series": lbad, "values": "0+60x300"},  # failing ever since
        ],
        "alert_rule_test": [
            _alerts("HaplaneSnapshotStale", "2h"),
            _alerts("HaplaneSnapshotStale", "4h", {**labels, "scope": "eu-west"}),
            _alerts("HaplaneLogicalBackupStale", "4h", {**labels}),
            _alerts("HaplaneLogicalBackupFailed", "4h", {**labels}),
        ],
    }
    missing = {
        "interval": "1m",
        "input_series": [{"series": 'up{job="other"}', "values": "1x20"}],
        "alert_rule_test": [
            _alerts("HaplaneBackupMetricsMissing", "5m"),
            _alerts("HaplaneBackupMetricsMissing", "15m", {"severity": "warning"}),
        ],
    }
    run_rule_tests(tmp_path, example(), [recent, later, missing])


def test_drills_overdue_only_when_scheduled(tmp_path: Path):
    """Every 5m: overdue once no run is newer than 15m (then a minute's `for`), or when the
    series is missing altogether (node_exporter not set up: the alerts could never fire
    otherwise)."""
    last = 'haplane_drill_last_run_timestamp_seconds{job="haplane-textfile",scenario="x"}'
    fresh = {
        "interval": "1m",
        "input_series": [{"series": last, "values": "0+60x40"}],  # a run every minute
        "alert_rule_test": [_alerts("HaplaneDrillsOverdue", "35m")],
    }
    stale = {
        "interval": "1m",
        "input_series": [{"series": last, "values": "0x40"}],  # one run, at the start
        "alert_rule_test": [
            _alerts("HaplaneDrillsOverdue", "15m"),
            _alerts("HaplaneDrillsOverdue", "16m"),  # pending
            _alerts("HaplaneDrillsOverdue", "17m", {"severity": "warning"}),
        ],
    }
    missing = {
        "interval": "1m",
        "input_series": [{"series": 'up{job="other"}', "values": "1x40"}],
        "alert_rule_test": [
            _alerts("HaplaneDrillsOverdue", "30s"),
            _alerts("HaplaneDrillsOverdue", "2m", {"severity": "warning"}),
        ],
    }
    scheduled = example(drills={"enabled": True, "every": "5m"})
    run_rule_tests(tmp_path, scheduled, [fresh, stale, missing])
    rules = alert_rules(example(), Options())
    assert "HaplaneDrillsOverdue" not in {r["alert"] for r in rules["groups"][0]["rules"]}


@pytest.mark.parametrize("bad", ["0x40", "1x40"])
def test_rule_tests_can_fail(tmp_path: Path, bad: str):
    """The harness itself: an alert expected where none fires (or the reverse) fails."""
    drill = 'haplane_drill_last_passed{job="haplane-textfile",scenario="s"}'
    expected = [] if bad == "0x40" else [{"severity": "warning", "job": "haplane-textfile",
                                          "scenario": "s"}]  # fmt: skip
    test = {
        "interval": "15s",
        "input_series": [{"series": drill, "values": bad}],
        "alert_rule_test": [_alerts("HaplaneDrillFailed", "1m", *expected)],
    }
    with pytest.raises(AssertionError, match="FAILED"):
        run_rule_tests(tmp_path, example(), [test])
