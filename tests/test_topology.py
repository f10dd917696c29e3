"""The topology file: schema errors with lines and fields, every HA rule on good and bad files,
and `haplane validate` / `schema` exit codes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from haplane.cli.main import app
from haplane.topology import (
    RULES,
    Topology,
    TopologyError,
    load_example,
    load_text,
    validate,
)
from haplane.topology.loader import example_text

runner = CliRunner()


@pytest.fixture
def good() -> dict[str, Any]:
    return yaml.safe_load(
        (Path(__file__).parent.parent / "examples" / "two-regions.yaml").read_text()
    )


def build(data: dict[str, Any]) -> Topology:
    return load_text(yaml.safe_dump(data))


def rules_hit(data: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in validate(build(data)):
        out.setdefault(f.rule, []).append(f.severity)
    return out


def region(data: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return data["spec"]["sites"][i]["region"]


def test_the_example_is_clean(good):
    assert validate(build(good)) == []
    assert load_example("two-regions").name == "two-regions"


# ---- one bad file per rule ---------------------------------------------------------------


def _even_members(d):
    region(d)["etcd"]["members"].append({"name": "etcd-4", "zone": "a"})


def _two_members(d):
    region(d)["etcd"]["members"].pop()


def _zone_majority(d):
    for m in region(d)["etcd"]["members"][:2]:
        m["zone"] = "a"


def _control_two_sites(d):
    d["spec"]["global"]["controlEtcd"]["members"][2]["site"] = "eu-west"


def _gates_two_sites(d):
    d["spec"]["global"]["gates"].pop()


def _one_api(d):
    region(d)["apiServers"].pop()


def _no_balancer(d):
    region(d)["balancers"] = []


def _one_balancer(d):
    region(d)["balancers"].pop()


def _duplicate_name(d):
    region(d)["apiServers"][1]["name"] = "api-1"


def _duplicate_site(d):
    d["spec"]["sites"][1]["name"] = "eu-west"


def _port_conflict(d):
    region(d)["etcd"]["members"][0]["clientPort"] = 23790
    region(d, 1)["apiServers"][0]["port"] = 23790


def _gate_ports_differ(d):
    d["spec"]["global"]["gates"][0]["port"] = 7443
    d["spec"]["global"]["gates"][1]["port"] = 8443


def _timing_ratio(d):
    region(d)["etcd"]["heartbeatIntervalMs"] = 200
    region(d)["etcd"]["electionTimeoutMs"] = 500


def _timing_max(d):
    d["spec"]["defaults"]["etcd"]["electionTimeoutMs"] = 60_000


def _unknown_zone(d):
    region(d)["apiServers"][0]["zone"] = "q"


def _unknown_gate_site(d):
    d["spec"]["global"]["gates"][0]["site"] = "mars"


def _one_region(d):
    d["spec"]["sites"][1].pop("region")
    d["spec"]["global"]["failover"]["priority"] = ["eu-west"]
    d["spec"]["global"]["replication"] = []


def _priority_incomplete(d):
    d["spec"]["global"]["failover"]["priority"] = ["eu-west"]


def _replication_self(d):
    d["spec"]["global"]["replication"] = [{"from": "eu-west", "to": "eu-west"}]


def _one_replicator(d):
    d["spec"]["sites"][1]["region"]["replicators"] = [{"name": "rep-1", "zone": "a"}]


def _unpaired(d):
    d["spec"]["global"]["replication"] = []


def _grant_not_above_margin(d):
    d["spec"]["global"].setdefault("failover", {}).update({"grantMs": 270, "safetyMarginMs": 250})


def _timeout_on_async(d):
    d["spec"]["global"]["replication"][0]["syncTimeoutMs"] = 200


def _insecure(d):
    d["spec"]["security"] = {"insecure": True}


def _insecure_with_ca(d):
    d["spec"]["security"] = {"insecure": True, "ca": {"certFile": "ca.crt", "keyFile": "ca.key"}}


def _wildcard_host(d):
    region(d)["apiServers"][0]["host"] = "0.0.0.0"


def _one_gitops(d):
    d["spec"]["global"]["gitops"].pop()


def _one_console(d):
    d["spec"]["global"]["console"]["instances"].pop()


BAD = {
    "security (insecure)": (_insecure, "security", "warning"),
    "security (wildcard host with TLS)": (_wildcard_host, "security", "error"),
    "security (insecure with a CA)": (_insecure_with_ca, "security", "error"),
    "etcd-member-count (even)": (_even_members, "etcd-member-count", "error"),
    "etcd-member-count (<3)": (_two_members, "etcd-member-count", "error"),
    "etcd-zone-majority": (_zone_majority, "etcd-zone-majority", "error"),
    "control-etcd-sites": (_control_two_sites, "control-etcd-sites", "error"),
    "gate-vantage-sites": (_gates_two_sites, "gate-vantage-sites", "error"),
    "api-replicas": (_one_api, "api-replicas", "error"),
    "balancer-count (none)": (_no_balancer, "balancer-count", "error"),
    "balancer-count (one)": (_one_balancer, "balancer-count", "warning"),
    "duplicate-name (component)": (_duplicate_name, "duplicate-name", "error"),
    "duplicate-name (site)": (_duplicate_site, "duplicate-name", "error"),
    "port-conflict": (_port_conflict, "port-conflict", "error"),
    "gate-shared-port": (_gate_ports_differ, "gate-shared-port", "error"),
    "etcd-timing (ratio)": (_timing_ratio, "etcd-timing", "error"),
    "etcd-timing (max)": (_timing_max, "etcd-timing", "error"),
    "unknown-reference (zone)": (_unknown_zone, "unknown-reference", "error"),
    "unknown-reference (site)": (_unknown_gate_site, "unknown-reference", "error"),
    "region-count": (_one_region, "region-count", "warning"),
    "failover-priority": (_priority_incomplete, "failover-priority", "error"),
    "replication-pair": (_replication_self, "replication-pair", "error"),
    "fence-grant": (_grant_not_above_margin, "fence-grant", "error"),
    "replicators": (_one_replicator, "replicators", "error"),
    "unreplicated": (_unpaired, "unreplicated", "warning"),
    "replication-mode": (_timeout_on_async, "replication-mode", "error"),
    "gitops-controllers": (_one_gitops, "gitops-controllers", "warning"),
    "console-instances": (_one_console, "console-instances", "warning"),
}


def test_a_pair_is_one_pair_both_ways(good):
    data = copy.deepcopy(good)
    data["spec"]["global"]["replication"].append({"from": "eu-central", "to": "eu-west"})
    assert rules_hit(data)["replication-pair"] == ["error"]


def test_replicators_must_sit_in_distinct_zones(good):
    data = copy.deepcopy(good)
    for r in region(data)["replicators"]:
        r["zone"] = "a"
    assert rules_hit(data)["replicators"] == ["error"]


def test_replicators_without_a_pair_idle(good):
    data = copy.deepcopy(good)
    data["spec"]["global"]["replication"] = []
    hit = rules_hit(data)
    assert hit["replicators"] == ["warning", "warning"]  # one per region
    assert hit["unreplicated"] == ["warning", "warning"]


def test_replication_pair_settings_parse(good):
    topo = build(good)
    pair = topo.spec.global_.replication[0]
    assert (pair.mode, pair.max_lag_ms) == ("Async", 2000)
    assert [r.name for r in topo.regions()[0][1].replicators] == ["rep-1", "rep-2"]
    bad = copy.deepcopy(good)
    bad["spec"]["global"]["replication"][0]["mode"] = "Sometimes"
    with pytest.raises(TopologyError, match="mode"):
        build(bad)


def test_sync_pair_settings_parse_and_one_sync_partner_per_region(good):
    data = copy.deepcopy(good)
    data["spec"]["global"]["replication"][0].update({"mode": "Sync"})
    pair = build(data).spec.global_.replication[0]
    assert (pair.mode, pair.sync_timeout_ms, pair.strict) == ("Sync", 500, False)
    assert "replication-mode" not in rules_hit(data)
    data["spec"]["global"]["replication"][0]["strict"] = True
    findings = [f for f in validate(build(data)) if f.rule == "replication-mode"]
    assert [f.severity for f in findings] == ["warning"]
    assert "504" in findings[0].message and findings[0].path.endswith(".strict")
    # a second Sync pair for one region: its one standby's confirmation is trusted alone
    three = copy.deepcopy(data)
    site = copy.deepcopy(three["spec"]["sites"][1])
    site["name"] = "eu-north"
    three["spec"]["sites"].append(site)
    three["spec"]["global"]["failover"]["priority"].append("eu-north")
    three["spec"]["global"]["replication"].append(
        {"from": "eu-west", "to": "eu-north", "mode": "Sync"}
    )
    errors = [
        f for f in validate(build(three)) if f.rule == "replication-mode" and f.severity == "error"
    ]
    assert [f.path for f in errors] == ["spec.global.replication[1].mode"]
    assert "at most one synchronous partner" in errors[0].message
    bad = copy.deepcopy(good)
    bad["spec"]["global"]["replication"][0]["strict"] = True  # on an Async pair
    findings = [f for f in validate(build(bad)) if f.rule == "replication-mode"]
    assert [(f.severity, f.path) for f in findings] == [
        ("error", "spec.global.replication[0].strict")
    ]
    assert "mode: Sync" in findings[0].fix
    bad["spec"]["global"]["replication"][0].update({"mode": "Sync", "syncTimeoutMs": 0})
    with pytest.raises(TopologyError, match="syncTimeoutMs"):
        build(bad)


def test_sync_settings_parse_by_their_camel_case_names_and_are_refused_on_async_pairs(good):
    data = copy.deepcopy(good)
    data["spec"]["global"]["replication"][0].update(
        {"mode": "Sync", "syncTimeoutMs": 200, "strict": True}
    )
    pair = build(data).spec.global_.replication[0]
    assert (pair.mode, pair.sync_timeout_ms, pair.strict) == ("Sync", 200, True)
    assert pair.model_dump(by_alias=True)["syncTimeoutMs"] == 200
    # syncTimeoutMs on an Async pair: an error naming the field, the mode and the fix
    bad = copy.deepcopy(good)
    bad["spec"]["global"]["replication"][0]["syncTimeoutMs"] = 200
    findings = [f for f in validate(build(bad)) if f.rule == "replication-mode"]
    assert [(f.severity, f.path) for f in findings] == [
        ("error", "spec.global.replication[0].syncTimeoutMs")
    ]
    assert "syncTimeoutMs" in findings[0].message and "Async" in findings[0].message
    assert "mode: Sync" in findings[0].fix and "remove syncTimeoutMs" in findings[0].fix
    # `strict: false` is what an Async pair does anyway
    fine = copy.deepcopy(good)
    fine["spec"]["global"]["replication"][0]["strict"] = False
    assert "replication-mode" not in rules_hit(fine)
    # a Sync pair written both ways round is still one pair, paired twice
    twice = copy.deepcopy(data)
    twice["spec"]["global"]["replication"].append(
        {"from": "eu-central", "to": "eu-west", "mode": "Sync"}
    )
    pair_errors = [f for f in validate(build(twice)) if f.rule == "replication-pair"]
    assert [f.path for f in pair_errors] == ["spec.global.replication[1]"]
    assert "paired twice" in pair_errors[0].message
    # ... and only that: not also "already in a Sync pair" for each of its regions
    assert not [
        f for f in validate(build(twice)) if f.rule == "replication-mode" and f.severity == "error"
    ]


def test_a_grant_just_above_margin_plus_window_is_accepted(good):
    data = copy.deepcopy(good)
    data["spec"]["global"].setdefault("failover", {}).update(
        {"grantMs": 271, "safetyMarginMs": 250}
    )
    assert "fence-grant" not in rules_hit(data)


def test_the_rule_and_the_replicas_agree_on_the_write_window():
    from haplane.api.fencing import MIN_WRITE_WINDOW
    from haplane.topology.rules import MIN_WRITE_WINDOW_MS

    assert MIN_WRITE_WINDOW == MIN_WRITE_WINDOW_MS / 1000


@pytest.mark.parametrize("case", list(BAD))
def test_each_rule_fires_on_its_bad_file(good, case):
    mutate, rule, severity = BAD[case]
    data = copy.deepcopy(good)
    mutate(data)
    hit = rules_hit(data)
    assert severity in hit.get(rule, []), hit
    findings = [f for f in validate(build(data)) if f.rule == rule]
    for f in findings:
        assert f.path.startswith("spec"), f
        assert f.fix and f.message


def test_certificate_names(good):
    """With TLS a host is also what certificates name: no wildcard address; certSANs are DNS
    names or addresses. Insecure topologies may listen on 0.0.0.0."""
    good["spec"]["defaults"]["host"] = "::"
    good["spec"]["security"] = {
        "certSANs": ["api.example.com", "*.gates.example.com", "10.0.0.10", "0.0.0.0", "a b"]
    }
    found = {
        (f.path, f.message.split(" ")[0]) for f in validate(build(good)) if f.rule == "security"
    }
    assert found == {
        ("spec.defaults.host", "::"),
        ("spec.security.certSANs[3]", "0.0.0.0"),
        ("spec.security.certSANs[4]", "'a"),
    }
    good["spec"]["security"] = {"insecure": True}
    errors = [f for f in validate(build(good)) if f.severity == "error"]
    assert errors == []


def test_every_rule_has_a_bad_file():
    assert {rule for _, rule, _ in BAD.values()} == set(RULES)


def test_even_member_message_explains(good):
    _even_members(good)
    (f,) = [f for f in validate(build(good)) if f.rule == "etcd-member-count"]
    assert "4 members tolerate no more failures than 3" in f.message
    assert "use 3 or 5" in f.fix
    assert f.path == "spec.sites[0].region.etcd.members"


def test_gates_sharing_a_port_on_one_host_are_fine(good):
    for g in good["spec"]["global"]["gates"]:
        g["port"] = 26443
    assert "port-conflict" not in rules_hit(good)
    region(good)["apiServers"][0]["port"] = 26443  # but not with anything else
    assert "port-conflict" in rules_hit(good)


def test_same_port_on_different_hosts_is_fine(good):
    region(good)["apiServers"][0].update(port=6443, host="10.0.0.1")
    region(good)["apiServers"][1].update(port=6443, host="10.0.0.2")
    assert "port-conflict" not in rules_hit(good)


def test_five_members_over_three_zones_are_fine(good):
    region(good)["etcd"]["members"] += [
        {"name": "etcd-4", "zone": "a"},
        {"name": "etcd-5", "zone": "b"},
    ]
    assert rules_hit(good) == {}


# ---- GitOps controllers ------------------------------------------------------------------


def test_gitops_instances_parse_with_placement_and_default_to_none(good):
    topo = build(good)
    assert [(x.name, x.site, x.host, x.port) for x in topo.spec.global_.gitops] == [
        ("gitops-1", "eu-west", None, None),
        ("gitops-2", "witness", None, None),
    ]
    good["spec"]["global"]["gitops"][1].update(host="10.0.0.9", port=8444)
    x = build(good).spec.global_.gitops[1]
    assert (x.host, x.port) == ("10.0.0.9", 8444)
    assert build(good).host_of(x) == "10.0.0.9"
    del good["spec"]["global"]["gitops"]
    assert build(good).spec.global_.gitops == []
    assert validate(build(good)) == []  # GitOps is optional
    good["spec"]["global"]["gitops"] = [{"name": "g", "site": "eu-west", "zone": "a"}]
    with pytest.raises(TopologyError, match="zone"):
        build(good)


def test_gitops_ha_one_instance_or_one_site(good):
    gitops = good["spec"]["global"]["gitops"]
    gitops[1]["site"] = "eu-west"
    (f,) = [f for f in validate(build(good)) if f.rule == "gitops-controllers"]
    assert (f.severity, f.path) == ("warning", "spec.global.gitops")
    assert "'eu-west'" in f.message and "eu-central" in f.fix
    gitops.pop()
    (f,) = [f for f in validate(build(good)) if f.rule == "gitops-controllers"]
    assert f.severity == "warning" and "single" in f.message
    assert "{name: gitops-2, site: eu-central}" in f.fix
    gitops[0]["site"] = "witness"
    gitops.append({"name": "gitops-2", "site": "eu-central"})
    assert "gitops-controllers" not in rules_hit(good)


def test_gitops_names_sites_ports_and_hosts_are_checked(good):
    gitops = good["spec"]["global"]["gitops"]
    data = copy.deepcopy(good)
    data["spec"]["global"]["gitops"][0]["name"] = "gate-witness"  # a gate's name
    assert rules_hit(data) == {"duplicate-name": ["error"]}
    data = copy.deepcopy(good)
    data["spec"]["global"]["gitops"][1]["site"] = "mars"
    (f,) = [f for f in validate(build(data)) if f.rule == "unknown-reference"]
    assert f.path == "spec.global.gitops[1].site" and "witness" in f.fix
    # its port: not a gate's, nor another component's on the same host
    for g in good["spec"]["global"]["gates"]:
        g["port"] = 26443
    gitops[0]["port"] = 26443
    (f,) = [f for f in validate(build(good)) if f.rule == "port-conflict"]
    assert "spec.global.gitops[0].port" in f.message
    gitops[0]["port"] = 26444
    gitops[1]["port"] = 26444
    (f,) = [f for f in validate(build(good)) if f.rule == "port-conflict"]
    assert "spec.global.gitops[1].port" in f.message
    gitops[1]["host"] = "10.0.0.2"  # the same port elsewhere
    assert "port-conflict" not in rules_hit(good)
    gitops[1]["host"] = "0.0.0.0"
    (f,) = [f for f in validate(build(good)) if f.rule == "security"]
    assert f.path == "spec.global.gitops[1].host"


# ---- schema errors -----------------------------------------------------------------------


def test_unknown_field_names_line_and_path(good):
    text = yaml.safe_dump(good, sort_keys=False).replace("zones:", "zonez:", 1)
    with pytest.raises(TopologyError) as ei:
        load_text(text)
    problems = {p.path: p for p in ei.value.problems}
    assert "spec.sites[0].zonez" in problems
    p = problems["spec.sites[0].zonez"]
    assert "unknown field" in p.message
    assert p.line == text.splitlines().index("    zonez:") + 1


def test_wrong_type_and_missing_field():
    text = (
        "apiVersion: haplane.dev/v1alpha1\nkind: Topology\nmetadata: {name: x}\n"
        "spec:\n  sites:\n    - name: a\n      zones: [a]\n      region:\n"
        "        etcd: {members: [{name: e1, zone: a, clientPort: nope}]}\n"
    )
    with pytest.raises(TopologyError) as ei:
        load_text(text)
    paths = {p.path for p in ei.value.problems}
    assert "spec.sites[0].region.etcd.members[0].clientPort" in paths
    assert "spec.global" in paths
    lines = {p.path: p.line for p in ei.value.problems}
    assert lines["spec.sites[0].region.etcd.members[0].clientPort"] == 9


def test_malformed_yaml_names_the_line():
    with pytest.raises(TopologyError) as ei:
        load_text("apiVersion: x\nkind: [unclosed\nmetadata: {}\n")
    assert ei.value.problems[0].line is not None
    assert "malformed YAML" in ei.value.problems[0].message


def test_wrong_api_version():
    with pytest.raises(TopologyError) as ei:
        load_text("apiVersion: v1\nkind: Topology\nmetadata: {name: x}\nspec: {}\n")
    assert any(p.path == "apiVersion" for p in ei.value.problems)


# ---- the CLI: exit codes, table and --json ------------------------------------------------


def test_validate_exit_codes(tmp_path, good):
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(good))
    r = runner.invoke(app, ["validate", str(ok)])
    assert r.exit_code == 0, r.output

    warn = copy.deepcopy(good)
    _one_balancer(warn)
    (tmp_path / "warn.yaml").write_text(yaml.safe_dump(warn))
    r = runner.invoke(app, ["validate", str(tmp_path / "warn.yaml")])
    assert r.exit_code == 0 and "balancer-count" in r.output

    bad = copy.deepcopy(good)
    _even_members(bad)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = runner.invoke(app, ["validate", str(tmp_path / "bad.yaml"), "--json"])
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["valid"] is False and doc["errors"] == 1
    assert doc["findings"][0]["rule"] == "etcd-member-count"
    assert set(doc["findings"][0]) == {"rule", "severity", "path", "message", "fix"}

    (tmp_path / "broken.yaml").write_text("spec: [\n")
    r = runner.invoke(app, ["validate", str(tmp_path / "broken.yaml")])
    assert r.exit_code == 2 and "line" in r.stderr

    r = runner.invoke(app, ["validate", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "cannot read" in r.stderr

    r = runner.invoke(app, ["validate", "--example", "two-regions"])
    assert r.exit_code == 0


def test_schema_is_json_schema():
    r = runner.invoke(app, ["schema"])
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    assert schema["title"] == "haplane Topology"
    assert "apiVersion" in schema["properties"]


def test_a_key_given_twice_is_refused_with_both_lines() -> None:
    text = example_text("two-regions").replace(
        "    failover:\n", "    gates: []\n    failover:\n", 1
    )
    with pytest.raises(TopologyError) as ei:
        load_text(text)
    problem = ei.value.problems[0]
    assert problem.path == "spec.global.gates" and "given twice (first on line" in problem.message
    # nested in a list too
    text = example_text("two-regions").replace(
        "{name: gitops-1, site: eu-west}", "{name: gitops-1, site: eu-west, site: witness}"
    )
    with pytest.raises(TopologyError, match="given twice"):
        load_text(text)


def test_console_instances_parse_and_default_to_none(good):
    topo = build(good)
    assert [(x.name, x.site, x.port) for x in topo.spec.global_.console.instances] == [
        ("console-1", "eu-west", None),
        ("console-2", "eu-central", None),
    ]
    good["spec"]["global"]["console"]["instances"][1].update(host="10.0.0.9", port=8445)
    x = build(good).spec.global_.console.instances[1]
    assert (x.host, x.port) == ("10.0.0.9", 8445)
    del good["spec"]["global"]["console"]
    assert build(good).spec.global_.console.instances == []


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"zone": "a"}, "spec.global.console.instances[0].zone"),
        ({"port": 0}, "spec.global.console.instances[0].port"),
        ({"name": "Console"}, "spec.global.console.instances[0].name"),
    ],
)
def test_console_schema_errors_name_the_field(good, change, needle):
    good["spec"]["global"]["console"]["instances"][0].update(change)
    with pytest.raises(TopologyError) as exc:
        build(good)
    assert needle in str(exc.value)


def test_console_cross_field_errors_name_the_field(good):
    console = good["spec"]["global"]["console"]["instances"]
    console[0]["site"] = "nowhere"
    console[1].update(name="gate-witness")
    found = {(f.rule, f.path) for f in validate(build(good)) if f.severity == "error"}
    assert ("unknown-reference", "spec.global.console.instances[0].site") in found
    assert ("duplicate-name", "spec.global") in found
    console[0]["site"] = "eu-west"
    console[1].update(name="console-2", port=9000)
    good["spec"]["global"]["gitops"][0]["port"] = 9000
    (f,) = [f for f in validate(build(good)) if f.rule == "port-conflict"]
    assert "spec.global.console.instances[1].port" in f.message


def test_console_ha_one_instance_or_one_site(good):
    console = good["spec"]["global"]["console"]["instances"]
    console[1]["site"] = "eu-west"
    (f,) = [f for f in validate(build(good)) if f.rule == "console-instances"]
    assert (f.severity, f.path) == ("warning", "spec.global.console.instances")
    console.pop()
    (f,) = [f for f in validate(build(good)) if f.rule == "console-instances"]
    assert "console-1 on eu-west" in f.message
