"""RBAC decision time (haplane.auth.rbac) with 1,000 Roles and 1,000 RoleBindings over 50
namespaces and 200 users, beside the default roles: p50/p99 of allowed and denied decisions
(goal p99 <= 50 us), the time to build the index and to apply one update.

    .venv/bin/python bench/rbac.py [--decisions 200000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from haplane.auth.rbac import (
    Attributes,
    RbacIndex,
    default_cluster_role_bindings,
    default_cluster_roles,
)

RESOURCES = ["configmaps", "pods", "services", "secrets", "deployments", "jobs", "leases"]


def build(rnd: random.Random) -> tuple[RbacIndex, list, float]:
    objects = [("ClusterRole", r) for r in default_cluster_roles()]
    objects += [("ClusterRoleBinding", b) for b in default_cluster_role_bindings()]
    for i in range(1000):
        ns = f"ns-{i % 50}"
        rules = [
            {
                "apiGroups": ["", "apps"],
                "resources": rnd.sample(RESOURCES, 3),
                "verbs": rnd.sample(["get", "list", "watch", "create", "update"], 3),
            }
            for _ in range(3)
        ]
        objects.append(
            ("Role", {"metadata": {"name": f"role-{i}", "namespace": ns}, "rules": rules})
        )
        objects.append(
            (
                "RoleBinding",
                {
                    "metadata": {"name": f"rb-{i}", "namespace": ns},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": f"role-{i}",
                    },
                    "subjects": [
                        {"kind": "User", "name": f"user-{rnd.randrange(200)}"},
                        {"kind": "Group", "name": f"team-{rnd.randrange(20)}"},
                    ],
                },
            )
        )
    t0 = time.perf_counter()
    index = RbacIndex()
    for kind, obj in objects:
        index.upsert(kind, obj)
    return index, objects, time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=200_000)
    args = ap.parse_args()
    rnd = random.Random(1)
    index, _, built = build(rnd)
    allowed: list[float] = []
    denied: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(args.decisions):
        a = Attributes(
            f"user-{rnd.randrange(200)}",
            (f"team-{rnd.randrange(20)}", "system:authenticated"),
            rnd.choice(["get", "list", "create", "delete"]),
            f"ns-{rnd.randrange(50)}",
            rnd.choice(["", "apps"]),
            rnd.choice(RESOURCES),
            "",
            "x",
        )
        t0 = clock()
        d = index.authorize(a)
        t = (clock() - t0) / 1000
        (allowed if d.allowed else denied).append(t)
    t0 = time.perf_counter()
    index.upsert(
        "RoleBinding",
        {
            "metadata": {"name": "rb-new", "namespace": "ns-1"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "role-1"},
            "subjects": [{"kind": "User", "name": "user-1"}],
        },
    )
    binding_update = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.upsert(
        "ClusterRole",
        {
            "metadata": {
                "name": "extra",
                "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"},
            },
            "rules": [],
        },
    )
    role_update = time.perf_counter() - t0
    print(f"index built from 2,000 objects (+ defaults) in {built * 1000:.1f} ms")
    for what, xs in (("allowed", allowed), ("denied", denied)):
        print(
            f"{what:8} n={len(xs):7}  p50 {statistics.median(xs):6.2f} us  "
            f"p99 {percentile(xs, 0.99):6.2f} us  max {max(xs):8.1f} us"
        )
    print(
        f"one binding update {binding_update * 1e6:.1f} us; "
        f"one labelled ClusterRole update (re-aggregates) {role_update * 1e6:.1f} us"
    )


if __name__ == "__main__":
    main()
