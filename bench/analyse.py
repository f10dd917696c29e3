"""Benchmark: `analyse` of a 5-region topology with up to 3 simultaneous failures.

Five regions (3 zones each; 5 etcd members, 3 API replicas, 2 balancers per region), a witness
site, one gate instance per site, a 5-member control etcd over 5 sites. Prints the number of
single failures, of failure sets (checked against the count function), of groups, and the time
(goal: under 10 s on the 2-core dev machine).

    .venv/bin/python bench/analyse.py [MAX_FAILURES]
"""

from __future__ import annotations

import sys
import time
from typing import Any

import yaml

from haplane.topology import load_text
from haplane.topology.failures import analyse, count_failure_sets

ZONES = ["a", "b", "c"]


def five_regions() -> dict[str, Any]:
    regions = [f"region-{i}" for i in range(1, 6)]
    sites: list[dict[str, Any]] = []
    for name in regions:
        sites.append(
            {
                "name": name,
                "zones": ZONES,
                "region": {
                    "etcd": {
                        "members": [
                            {"name": f"etcd-{j + 1}", "zone": ZONES[j % 3]} for j in range(5)
                        ]
                    },
                    "apiServers": [{"name": f"api-{j + 1}", "zone": ZONES[j]} for j in range(3)],
                    "balancers": [{"name": f"lb-{j + 1}", "zone": ZONES[j]} for j in range(2)],
                },
            }
        )
    sites.append({"name": "witness", "zones": ["a"]})
    control_sites = [*regions[:4], "witness"]
    return {
        "apiVersion": "haplane.dev/v1alpha1",
        "kind": "Topology",
        "metadata": {"name": "five-regions"},
        "spec": {
            "sites": sites,
            "global": {
                "controlEtcd": {
                    "members": [
                        {"name": f"control-{i + 1}", "site": s} for i, s in enumerate(control_sites)
                    ]
                },
                "gates": [{"name": f"gate-{s['name']}", "site": s["name"]} for s in sites],
                "failover": {"priority": regions},
                "replication": [{"from": regions[0], "to": regions[1]}],
            },
        },
    }


def main() -> None:
    k = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    topo = load_text(yaml.safe_dump(five_regions()))
    expected = count_failure_sets(topo, k)
    start = time.perf_counter()
    result = analyse(topo, k)
    elapsed = time.perf_counter() - start
    assert result.evaluated == expected, (result.evaluated, expected)
    print(f"single failures: {result.single_failures}")
    print(f"failure sets up to {k}: {result.evaluated} ({len(result.groups)} groups)")
    print(f"analyse: {elapsed:.2f} s ({elapsed / result.evaluated * 1e6:.1f} us per set)")
    print(result.summary())


if __name__ == "__main__":
    main()
