"""Availability estimate: closed forms for simple clusters, the example, Monte Carlo vs exact.

Topologies are built from YAML text through the loader, like tests/test_failures.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from typing import Any

import pytest
import yaml

from haplane.topology import Topology, load_example, load_text
from haplane.topology.availability import (
    MINUTES_PER_YEAR,
    NEVER,
    Rate,
    Rates,
    count_distribution,
    estimate,
)

ONE_REGION = """
apiVersion: haplane.dev/v1alpha1
kind: Topology
metadata: {name: one}
spec:
  sites:
    - name: eu-west
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
        - {name: control-2, site: witness}
        - {name: control-3, site: witness}
    gates:
      - {name: gate-eu-west, site: eu-west}
      - {name: gate-witness-1, site: witness}
      - {name: gate-witness-2, site: witness}
    failover: {priority: [eu-west]}
"""


def one_region(members: int = 3) -> Topology:
    data: dict[str, Any] = yaml.safe_load(ONE_REGION)
    etcd = data["spec"]["sites"][0]["region"]["etcd"]["members"]
    for i in range(4, members + 1):
        etcd.append({"name": f"etcd-{i}", "zone": "abc"[i % 3]})
    return load_text(yaml.safe_dump(data))


def only(field_name: str, rate: Rate) -> Rates:
    """Rates where only one kind of failure ever happens."""
    return Rates(**{f.name: NEVER for f in fields(Rates)}).with_overrides({field_name: rate})


def quorum_loss(n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n // 2 + 1, n + 1))


@pytest.mark.parametrize("mtbf", [99.0, 999.0, 4380.0])
def test_three_member_etcd_matches_closed_form(mtbf: float) -> None:
    rate = Rate(mtbf, 1.0)
    p = rate.unavailability
    expected = 3 * p**2 * (1 - p) + p**3
    bounded = estimate(one_region(), only("etcd member", rate))  # tolerance 1e-9 may drop p^3
    assert bounded.unavailability <= expected * (1 + 1e-12)
    assert expected <= (bounded.unavailability + bounded.neglected_probability) * (1 + 1e-12)
    e = estimate(one_region(), only("etcd member", rate), tolerance=0.0)  # every set
    assert e.method == "exact-enumeration" and e.possible_failures == 3
    assert e.max_failures == 3 and e.neglected_probability == 0.0
    assert e.unavailability == pytest.approx(expected, rel=1e-12)
    assert e.availability == pytest.approx(1 - expected, rel=1e-12)
    assert e.downtime_minutes_per_year == pytest.approx(expected * MINUTES_PER_YEAR, rel=1e-12)
    assert e.contributors[0].label == "2 of the 3 eu-west etcd members"
    assert e.contributors[0].share == pytest.approx(3 * p**2 * (1 - p) / expected)
    assert e.kind_contributors[0].label == "2 etcd members"


def test_five_member_etcd_matches_closed_form() -> None:
    rate = Rate(49.0, 1.0)  # p = 0.02
    p = rate.unavailability
    e = estimate(one_region(5), only("etcd_member", rate), tolerance=0.0)
    assert e.unavailability == pytest.approx(quorum_loss(5, p), rel=1e-12)
    assert {c.label for c in e.contributors} == {
        "3 of the 5 eu-west etcd members",
        "4 of the 5 eu-west etcd members",
        "5 of the 5 eu-west etcd members",
    }
    assert sum(c.share for c in e.contributors) == pytest.approx(1.0)


def test_neglected_mass_bounds_the_truncated_enumeration() -> None:
    rate = Rate(9.0, 1.0)  # p = 0.1
    p = rate.unavailability
    e = estimate(one_region(5), only("etcd member", rate), tolerance=1e-3)
    assert e.max_failures == 3 and e.neglected_probability > 0
    tail = sum(math.comb(5, i) * p**i * (1 - p) ** (5 - i) for i in (4, 5))
    assert e.neglected_probability == pytest.approx(tail, rel=1e-12)
    exact = 1 - quorum_loss(5, p)
    low, high = e.interval
    assert low == e.availability <= exact <= high
    assert high - low == pytest.approx(e.neglected_probability)


def test_count_distribution_tail_is_exact_for_tiny_probabilities() -> None:
    dist, over = count_distribution([1e-6] * 4, 2)
    assert dist[0] == pytest.approx((1 - 1e-6) ** 4)
    assert over == pytest.approx(4 * 1e-18, rel=1e-5)  # no cancellation from 1 - sum


def test_two_regions_with_defaults() -> None:
    e = estimate(load_example("two-regions"))
    assert e.method == "exact-enumeration"
    assert 0 < e.availability < 1 and e.neglected_probability < 1e-9
    assert 0 < e.downtime_minutes_per_year < 60
    assert e.contributors and e.kind_contributors
    top = e.kind_contributors[0]
    assert "control etcd member" in top.label and 0 < top.share <= 1
    assert any(c.label == "2 of the 3 global control etcd members" for c in e.contributors)
    assert sum(c.share for c in e.contributors) <= 1 + 1e-12
    data = json.loads(json.dumps(e.to_dict()))
    assert data["method"] == "exact-enumeration"
    assert data["availability"] == e.availability
    assert data["contributors"][0]["label"] == e.contributors[0].label
    assert data["rates"]["etcd_member"]["mtbfHours"] == 4380.0


def test_monte_carlo_agrees_with_exact_within_its_interval() -> None:
    t = one_region()
    rates = Rates(**{f.name: Rate(99.0, 1.0) for f in fields(Rates)})  # p = 0.01 everywhere
    exact = estimate(t, rates, tolerance=1e-4)
    mc = estimate(t, rates, tolerance=1e-4, mode="monte-carlo", samples=8000, seed=7)
    assert exact.method == "exact-enumeration" and mc.method == "monte-carlo"
    assert mc.max_failures == exact.max_failures and mc.seed == 7 and mc.samples >= 7996
    half = mc.availability - mc.interval[0]
    assert 0 < half < 0.01
    assert abs(mc.unavailability - exact.unavailability) <= half
    assert mc.interval[0] <= exact.availability <= mc.interval[1]
    again = estimate(t, rates, tolerance=1e-4, mode="monte-carlo", samples=8000, seed=7)
    assert again.unavailability == mc.unavailability  # seeded


def test_auto_samples_only_the_strata_too_large_to_enumerate() -> None:
    e = estimate(load_example("two-regions"), max_sets=100, samples=3000)
    assert e.method == "monte-carlo"
    assert [s.method for s in e.strata] == [
        "exact-enumeration",
        "exact-enumeration",
        "monte-carlo",
        "monte-carlo",
    ]
    assert e.sets_evaluated == 47 and e.samples == 3000


def test_rates() -> None:
    assert Rate(99.0, 1.0).unavailability == pytest.approx(0.01)
    assert NEVER.unavailability == 0.0 and Rate(0.0, 1.0).unavailability == 1.0
    with pytest.raises(ValueError):
        Rate(-1.0, 1.0)
    with pytest.raises(ValueError):
        Rate(0.0, 0.0)
    with pytest.raises(KeyError):
        Rates().with_overrides({"volcano": NEVER})
    assert Rates().with_overrides({"link": NEVER}).link_cut == NEVER


def test_certain_failure_is_in_every_set() -> None:
    # every site is always down: writes are never available
    rates = only("etcd member", Rate(99.0, 1.0)).with_overrides({"site": Rate(0.0, 1.0)})
    e = estimate(one_region(), rates)
    assert e.availability == pytest.approx(0.0, abs=1e-12)
    assert e.unavailability == pytest.approx(1.0)
