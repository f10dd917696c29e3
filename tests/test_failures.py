"""Failure analysis: known answers from the model alone, enumeration counts, grouping, report data.

Topologies are built from YAML text through the loader, starting from a two-region file like the
shipped example and changing only what a test is about.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from haplane.topology import Topology, load_example, load_text
from haplane.topology.analyse_report import report_json, table_rows
from haplane.topology.failures import (
    Failure,
    analyse,
    count_failure_sets,
    enumerate_failures,
    evaluate,
    failure_model,
    failure_named,
    sample,
)

BASE = """
apiVersion: haplane.dev/v1alpha1
kind: Topology
metadata: {name: t}
spec:
  sites:
    - name: eu-west
      zones: [a, b, c]
      region:
        etcd: {members: [{name: etcd-1, zone: a}, {name: etcd-2, zone: b}, {name: etcd-3, zone: c}]}
        apiServers: [{name: api-1, zone: a}, {name: api-2, zone: b}]
        balancers: [{name: lb-1, zone: a}, {name: lb-2, zone: b}]
    - name: eu-central
      zones: [a, b, c]
      region:
        etcd: {members: [{name: etcd-1, zone: a}, {name: etcd-2, zone: b}, {name: etcd-3, zone: c}]}
        apiServers: [{name: api-1, zone: a}, {name: api-2, zone: b}]
        balancers: [{name: lb-1, zone: a}, {name: lb-2, zone: b}]
    - name: witness
      zones: [a]
  global:
    controlEtcd:
      members:
        - {name: control-1, site: eu-west}
        - {name: control-2, site: eu-central}
        - {name: control-3, site: witness}
    gates:
      - {name: gate-eu-west, site: eu-west}
      - {name: gate-eu-central, site: eu-central}
      - {name: gate-witness, site: witness}
    failover: {priority: [eu-west, eu-central]}
    replication: [{from: eu-west, to: eu-central}]
"""


def topo(edit: Any = None) -> Topology:
    data = yaml.safe_load(BASE)
    if edit is not None:
        edit(data)
    return load_text(yaml.safe_dump(data))


def fail(t: Topology, *names: str) -> list[Failure]:
    return [failure_named(t, n) for n in names]


def west(data: dict[str, Any]) -> dict[str, Any]:
    region: dict[str, Any] = data["spec"]["sites"][0]["region"]
    return region


def test_three_members_survive_one_failure_not_two() -> None:
    t = topo()
    for name in ("eu-west/etcd-1", "eu-west/etcd-2", "eu-west/etcd-3"):
        o = evaluate(t, fail(t, name))
        assert o.lost_quorum == () and o.writes_region == "eu-west" and not o.failed_over
    o = evaluate(t, fail(t, "eu-west/etcd-1", "eu-west/etcd-3"))
    assert o.lost_quorum == ("eu-west/etcd",)
    assert o.writes_region == "eu-central" and o.data_loss == "replication-lag"

    def one_region(data: dict[str, Any]) -> None:
        del data["spec"]["sites"][1]
        data["spec"]["global"]["controlEtcd"]["members"][1]["site"] = "witness"
        data["spec"]["global"]["gates"][1]["site"] = "witness"
        data["spec"]["global"]["failover"]["priority"] = ["eu-west"]
        data["spec"]["global"]["replication"] = []

    alone = topo(one_region)
    assert evaluate(alone, fail(alone, "eu-west/etcd-1")).writes_available
    o = evaluate(alone, fail(alone, "eu-west/etcd-1", "eu-west/etcd-2"))
    assert o.writes_region is None and o.category == "stops-writes"


def test_five_members_survive_two() -> None:
    def five(data: dict[str, Any]) -> None:
        west(data)["etcd"]["members"] += [
            {"name": "etcd-4", "zone": "a"},
            {"name": "etcd-5", "zone": "b"},
        ]

    t = topo(five)
    members = [f"eu-west/etcd-{i}" for i in range(1, 6)]
    for a in members:
        for b in members:
            if a < b:
                o = evaluate(t, fail(t, a, b))
                assert o.lost_quorum == () and o.writes_region == "eu-west"
    o = evaluate(t, fail(t, *members[:3]))
    assert o.lost_quorum == ("eu-west/etcd",) and o.writes_region == "eu-central"


def test_two_sites_without_witness_cannot_fail_over_when_the_majority_site_fails() -> None:
    def no_witness(data: dict[str, Any]) -> None:
        del data["spec"]["sites"][2]
        g = data["spec"]["global"]
        g["controlEtcd"]["members"][2]["site"] = "eu-west"
        g["gates"] = g["gates"][:2]

    t = topo(no_witness)
    o = evaluate(t, fail(t, "site eu-west"))
    assert not o.control_quorum and not o.controller_can_decide
    assert "global/etcd" in o.lost_quorum
    assert o.writes_region is None and o.category == "stops-writes"
    # the minority site failing is survived: the active region keeps its writes
    assert evaluate(t, fail(t, "site eu-central")).writes_region == "eu-west"
    # with the witness, the same failure fails over
    assert evaluate(topo(), fail(topo(), "site eu-west")).writes_region == "eu-central"


def test_a_zone_holding_a_majority_is_a_single_point_of_failure() -> None:
    def crowded(data: dict[str, Any]) -> None:
        west(data)["etcd"]["members"][1]["zone"] = "a"

    t = topo(crowded)
    o = evaluate(t, fail(t, "zone eu-west/a"))
    assert o.lost_quorum == ("eu-west/etcd",) and o.failed_over
    singles = [g for g in analyse(t, 1).groups if g.outcome.category != "unaffected"]
    assert any(g.label == "eu-west zone" or "eu-west zone" in g.label for g in singles)
    # one member per zone: no zone failure loses quorum
    t = topo()
    for z in "abc":
        assert evaluate(t, fail(t, f"zone eu-west/{z}")).lost_quorum == ()


def test_one_way_cut_of_the_active_region_from_the_control_majority_fails_over() -> None:
    t = topo()
    o = evaluate(t, fail(t, "cut eu-west->eu-central", "cut eu-west->witness"))
    assert o.control_quorum and o.controller_can_decide
    assert o.regions[0].healthy  # eu-west is fine in itself, but cannot renew its lease
    assert o.writes_region == "eu-central" and o.data_loss == "replication-lag"
    assert o.gate_serving

    def unreplicated(data: dict[str, Any]) -> None:
        data["spec"]["global"]["replication"] = []

    t = topo(unreplicated)
    o = evaluate(t, fail(t, "cut eu-west->eu-central", "cut eu-west->witness"))
    assert o.writes_region == "eu-central" and o.data_loss == "unreplicated"

    def synchronous(data: dict[str, Any]) -> None:
        data["spec"]["global"]["replication"][0]["mode"] = "Sync"

    t = topo(synchronous)
    o = evaluate(t, fail(t, "cut eu-west->eu-central", "cut eu-west->witness"))
    assert o.writes_region == "eu-central" and o.data_loss == "none-sync"


def test_analyse_prints_data_loss_by_the_pairs_mode() -> None:
    """The table and summary say "none (sync)" or "replication lag (async)"; JSON keeps the
    machine values."""

    def synchronous(data: dict[str, Any]) -> None:
        data["spec"]["global"]["replication"][0]["mode"] = "Sync"

    for edit, text, value in (
        (None, "replication lag (async)", "replication-lag"),
        (synchronous, "none (sync)", "none-sync"),
    ):
        t = topo(edit)
        analysis = analyse(t, 2)
        over = [r for r in table_rows(analysis) if r["OUTCOME"] == "fails-over"]
        assert over and {r["DATA"] for r in over} == {text}
        assert f"(data: {text})" in analysis.summary()
        doc = report_json(analysis)
        losses = {g["outcome"]["dataLoss"] for g in doc["groups"] if g["outcome"]["failedOver"]}
        assert losses == {value}


def test_a_pairs_mode_holds_both_ways_round() -> None:
    """A pair copies both ways: written from the standby to the active region it is the same
    pair, and a failover across it reports the pair's mode."""

    def reversed_pair(mode: str) -> Any:
        def edit(data: dict[str, Any]) -> None:
            data["spec"]["global"]["replication"] = [
                {"from": "eu-central", "to": "eu-west", "mode": mode}
            ]

        return edit

    for mode, value in (("Sync", "none-sync"), ("Async", "replication-lag")):
        t = topo(reversed_pair(mode))
        o = evaluate(t, fail(t, "site eu-west"))
        assert (o.writes_region, o.data_loss) == ("eu-central", value)


def test_a_lone_gate_behind_a_one_sided_cut_does_not_decide_alone() -> None:
    t = topo()
    # the witness cannot reach eu-west: its gate votes eu-west down, the other gate does not
    o = evaluate(t, fail(t, "cut witness->eu-west"))
    assert o.writes_region == "eu-west" and not o.failed_over
    o = evaluate(t, fail(t, "cut witness->eu-west", "global/gate-eu-central"))
    assert o.controller_can_decide and o.writes_region == "eu-west"
    # a majority of vantage points losing eu-west does move writes (the epoch fences eu-west)
    o = evaluate(t, fail(t, "cut witness->eu-west", "cut eu-central->eu-west"))
    assert o.writes_region == "eu-central"


def test_control_etcd_quorum_loss_stops_writes_everywhere() -> None:
    t = topo()
    o = evaluate(t, fail(t, "global/control-1", "global/control-3"))
    assert o.writes_region is None and "global/etcd" in o.lost_quorum
    assert "control etcd" in o.reason and all(r.healthy for r in o.regions)


def test_the_example_survives_every_single_failure() -> None:
    t = load_example("two-regions")
    result = analyse(t, 1)
    assert all(g.outcome.survives for g in result.groups)
    assert result.summary().startswith("survives every single failure (46 sets)")
    over = {str(s[0]) for g in result.groups if g.outcome.failed_over for s in g.examples}
    assert over == {"site eu-west", "isolate eu-west"}


def test_count_matches_the_enumeration() -> None:
    t = load_example("two-regions")
    n = len(failure_model(t).single_failures)
    assert count_failure_sets(t, 1) == n == 46  # 4 replicators since issue 14
    for k in (1, 2, 3):
        assert count_failure_sets(t, k) == sum(1 for _ in enumerate_failures(t, k))
    assert analyse(t, 2).evaluated == count_failure_sets(t, 2) == 46 + 46 * 45 // 2


def test_equivalent_sets_are_grouped() -> None:
    t = load_example("two-regions")
    groups = {(g.size, g.label): g for g in analyse(t, 2).groups}
    single = groups[(1, "any 1 of the 3 eu-west etcd members")]
    assert single.count == 3 and single.outcome.category == "unaffected"
    double = groups[(2, "any 2 of the 3 eu-west etcd members")]
    assert double.count == 3 and double.outcome.writes_region == "eu-central"
    assert len(double.examples) == 3


def test_the_memoised_path_agrees_with_evaluate() -> None:
    t = load_example("two-regions")
    model = failure_model(t)
    for fs in enumerate_failures(t, 2):
        down = cuts = 0
        for f in fs:
            d, c = model._effect(f)
            down |= d
            cuts |= c
        assert model._decide_memo(down, cuts) == evaluate(t, fs)


def test_names_round_trip_and_sampling_is_reproducible() -> None:
    t = load_example("two-regions")
    for f in failure_model(t).single_failures:
        assert failure_named(t, str(f)) == f
    assert failure_named(t, "witness") == Failure("site", "witness")
    assert sample(t, 3, 50, seed=1) == sample(t, 3, 50, seed=1)
    assert all(1 <= len(s) <= 3 for s in sample(t, 3, 50, seed=1))
    result = analyse(t, 3, failure_sets=sample(t, 3, 200, seed=2))
    assert result.sampled and result.evaluated == 200


def test_report_data_is_json_and_table_rows() -> None:
    t = load_example("two-regions")
    doc = report_json(analyse(t, 2))
    text = json.dumps(doc)
    assert doc["counting"] and doc["summary"][0].startswith("survives every single failure")
    assert "any 2 of the 3 eu-west etcd members" in text
    assert doc["bySize"]["2"]["stops-writes"] > 0
    rows = table_rows(analyse(t, 2))
    assert rows and all(r["OUTCOME"] != "unaffected" for r in rows)
