"""Benchmark: what ValidatingAdmissionPolicies cost a create (issue 18; goal: with 10 policies
bound, at least 0.8x the creates/s of none), side by side in one run:
- creates through one API replica (plain HTTP, anonymous, AlwaysAllow: every request has a
  user, so every create is policed) on a 3-member etcd (fsync on), with 0, 10 and 50
  policies bound. Load from wrk (`bench/wrk_create.lua`, 2 threads, keep-alive): ~1 KiB
  ConfigMaps carrying the labels the policies require; every answer must be 201, so every
  policy passes (and every expression runs) on every create. `--rounds` rounds, the three
  configurations interleaved, their order reversed every other round (each case measured once
  the replica holds its policies, enforces them and has type-checked them); ratios are the medians
  of the rounds' (to the round's 0-policy throughput); CPU is the replica's own (user+system
  from /proc) per create; `cached` is how many ConfigMaps the replica holds when the case
  starts (every create adds one; a paramRef by name is looked up in it, one by selector would
  scan it);
- in process, the engine alone: `PolicyEngine.admit` on a ConfigMap create's Attributes
  (p50/p99 µs) with 0, 10 and 50 policies, its parameters looked up as the replica looks
  them up (`select_params` over its ConfigMap cache) with the cache holding only the
  parameter objects and with `--cached` more ConfigMaps (a replica's cache after some
  creates: the benchmark's own replica holds tens of thousands by its end);
- in process, each typical expression alone: compiled once with `haplane.cel` (compile µs),
  evaluated many times on the activation the engine hands it (p50/p99 µs).
In-process timings are per call (time.perf_counter_ns), cases interleaved over `--rounds`
rounds of about `--ms` milliseconds each, percentiles over all the calls.

The policies are ten kinds, as clusters write them (a required label, a size limit over the
data, a name pattern, a limit from a parameter ConfigMap by paramRef, a reserved-prefix rule,
allowed label values, a key pattern, an annotation limit, variables with a matchCondition, a
label value rule), each with a binding (validationActions Deny); 10 is one of each, 50 five
of each (their label keys, limits and parameter objects varied). All match ConfigMap creates.

Why one replica whose policies change between cases, not one replica per count: policies
are cluster-wide objects and a replica has no key prefix of its own (`/registry/...`), so
replicas on one etcd would all enforce the same ones; three etcd clusters (nine members on
2 vCPUs) would compare clusters as much as policies. One replica, one etcd: the policy set
is the only thing that changes. Before each case the set is made (created or deleted
through the API), the replica's cache is seen to hold exactly it (lists at
resourceVersion=0 are served from the caches the engine reads), and a ConfigMap without
labels is refused (the policies are enforced).

`--no-params` writes the parameter-driven policies' limit into their expressions (no
paramKind, no paramRef): the policies' cost without the parameter lookup.

    .venv/bin/python bench/policies.py [--seconds 6] [--rounds 3] [--connections 32]
                                       [--ms 200] [--cached 20000] [--only all|http|engine]
                                       [--no-params]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api_server import WRK_CREATE, load_wrk_create  # bench/ is on sys.path

from haplane.api.admission_compiled import _request
from haplane.api.admission_policies import (
    NOTES,
    VARIABLES,
    Attributes,
    Notes,
    PolicyEngine,
    select_params,
)
from haplane.api.policy_types import BINDING, POLICY
from haplane.api.resources import BUILTIN
from haplane.auth.user import UserInfo
from haplane.cel import Environment
from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import FenceValue, RegionFence

NS = "bench"
COUNTS = (0, 10, 50)
VAP = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
VAPB = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"
# the created ConfigMaps' labels: what the policies require
LABELS = {"team": "payments", "env": "prod", "app": "checkout", "tier": "backend", "owner": "ops"}
LABEL_KEYS = list(LABELS)
CONFIGMAPS = next(t for t in BUILTIN if t.plural == "configmaps")
ANONYMOUS = UserInfo("system:anonymous", groups=("system:unauthenticated",))
NOT_SYSTEM = {  # as most clusters scope their policies
    "matchExpressions": [
        {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["kube-system", "kube-public"],
        }
    ]
}


# ---- the policies ----------------------------------------------------------------------------


def _kind(i: int, c: int, params: bool = True) -> dict[str, Any]:
    """The spec of the i-th kind of policy in its c-th variant (c = 0..4); without `params`,
    the parameter's limit is written into the expression."""
    label = LABEL_KEYS[c % len(LABEL_KEYS)]
    limit = 262144 * (c + 1)
    kinds: list[dict[str, Any]] = [
        {
            "validations": [
                {
                    "expression": f"has(object.metadata.labels) && '{label}' in "
                    "object.metadata.labels",
                    "message": f"ConfigMaps must carry a {label} label",
                }
            ]
        },
        {
            "validations": [
                {
                    "expression": "!has(object.data) || "
                    f"object.data.map(k, size(object.data[k])).sum() <= {limit}",
                    "message": f"at most {limit} bytes of data",
                    "reason": "RequestEntityTooLarge",
                }
            ]
        },
        {
            "validations": [
                {
                    "expression": "object.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
                    "message": "names are DNS labels",
                }
            ]
        },
        {
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "validations": [
                {
                    "expression": "!has(object.data) || "
                    "object.data.size() <= int(params.data.maxKeys)",
                    "messageExpression": "'%d keys, the limit is %s'"
                    ".format([object.data.size(), params.data.maxKeys])",
                    "reason": "Forbidden",
                }
            ],
        }
        if params
        else {
            "validations": [
                {
                    "expression": f"!has(object.data) || object.data.size() <= {16 + c}",
                    "messageExpression": f"'%d keys, the limit is {16 + c}'"
                    ".format([object.data.size()])",
                    "reason": "Forbidden",
                }
            ],
        },
        {
            "validations": [
                {
                    "expression": f"!object.metadata.name.startsWith('kube-{c}') && "
                    "object.metadata.name.size() <= 253",
                    "message": "reserved name",
                }
            ]
        },
        {
            "validations": [
                {
                    "expression": "!has(object.metadata.labels) || !('env' in "
                    "object.metadata.labels) || object.metadata.labels.env in "
                    "['dev', 'staging', 'prod']",
                    "message": "env is dev, staging or prod",
                }
            ]
        },
        {
            "validations": [
                {
                    "expression": "!has(object.data) || "
                    "object.data.all(k, k.matches('^[-._a-zA-Z0-9]+$'))",
                    "message": "data keys are file names",
                }
            ]
        },
        {
            "validations": [
                {
                    "expression": "!has(object.metadata.annotations) || "
                    f"object.metadata.annotations.size() <= {64 + c}",
                    "message": "too many annotations",
                }
            ]
        },
        {
            "matchConditions": [
                {
                    "name": "not-system",
                    "expression": "!(request.namespace in ['kube-system', 'kube-public'])",
                }
            ],
            "variables": [
                {"name": "keys", "expression": "has(object.data) ? object.data.size() : 0"}
            ],
            "validations": [
                {
                    "expression": f"variables.keys <= {100 + c}",
                    "messageExpression": "'%d keys is too many'.format([variables.keys])",
                }
            ],
        },
        {
            "validations": [
                {
                    "expression": f"!has(object.metadata.labels) || !('{label}' in "
                    f"object.metadata.labels) || object.metadata.labels['{label}'].size() <= 63",
                    "message": f"{label} is at most 63 characters",
                }
            ]
        },
    ]
    spec = kinds[i]
    spec["matchConstraints"] = {
        "resourceRules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["configmaps"],
            }
        ]
    }
    if i % 2 == 0:
        spec["matchConstraints"]["namespaceSelector"] = NOT_SYSTEM
    return spec


def policies(n: int, params: bool = True) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The first n of the 50 (policy, binding) pairs: 10 is one of each kind."""
    out = []
    for j in range(n):
        c, i = divmod(j, 10)
        name = f"bench-{j:02d}"
        binding: dict[str, Any] = {"policyName": name, "validationActions": ["Deny"]}
        spec = _kind(i, c, params)
        if "paramKind" in spec:
            binding["paramRef"] = {
                "name": f"limits-{c}",
                "namespace": NS,
                "parameterNotFoundAction": "Deny",
            }
        out.append(
            (
                {
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "ValidatingAdmissionPolicy",
                    "metadata": {"name": name},
                    "spec": spec,
                },
                {
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "ValidatingAdmissionPolicyBinding",
                    "metadata": {"name": f"{name}-binding"},
                    "spec": binding,
                },
            )
        )
    return out


def params_objects() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"limits-{c}", "namespace": NS, "labels": {"params": "yes"}},
            "data": {"maxKeys": str(16 + c)},
        }
        for c in range(5)
    ]


def stored(obj: dict[str, Any], strategy: Any) -> dict[str, Any]:
    """As the replica stores it: defaulted and validated (every expression compiles)."""
    obj = copy.deepcopy(obj)
    strategy.prepare_for_create(obj)
    errs = strategy.validate(obj)
    assert not errs, errs
    return obj


# ---- in process: the engine and the expressions -----------------------------------------------


def created(i: int) -> dict[str, Any]:
    """A ConfigMap as admission sees it on a create from wrk (stamped, defaulted, its field
    manager recorded: wrk sends no User-Agent)."""
    labels = {".": {}, **{f"f:{k}": {} for k in LABELS}}
    managed = {
        "manager": "unknown",
        "operation": "Update",
        "apiVersion": "v1",
        "time": "2026-12-05T10:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:data": {".": {}, "f:p": {}}, "f:metadata": {"f:labels": labels}},
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"wrk1700000000-1-{i}",
            "namespace": NS,
            "uid": "5a0f6e62-3c4e-4c9e-9d4b-0e6c2d1f8a11",
            "creationTimestamp": "2026-12-05T10:00:00Z",
            "generation": 1,
            "labels": dict(LABELS),
            "managedFields": [managed],
        },
        "data": {"p": "x" * 1000},
    }


NAMESPACE = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {"name": NS, "labels": {"kubernetes.io/metadata.name": NS}},
}


def attributes(i: int) -> Attributes:
    return Attributes("CREATE", CONFIGMAPS, NS, f"wrk1700000000-1-{i}", created(i), None, ANONYMOUS)


def timed(call: Callable[[], Any], ms: float) -> list[int]:
    """Nanoseconds of each call, for about `ms` milliseconds."""
    out = []
    clock = time.perf_counter_ns
    end = clock() + int(ms * 1e6)
    while True:
        t0 = clock()
        call()
        t1 = clock()
        out.append(t1 - t0)
        if t1 > end:
            return out


def pct(xs: list[int], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] / 1e3


def engine_bench(rounds: int, ms: float, cached: int, with_params: bool) -> None:
    pairs = policies(50, with_params)
    pol = [stored(p, POLICY.strategy) for p, _ in pairs]
    bnd = [stored(b, BINDING.strategy) for _, b in pairs]
    params = params_objects()
    filler = [created(10_000_000 + i) for i in range(cached)]

    def engine(n: int, cache: list[dict[str, Any]]) -> PolicyEngine:
        ps, bs = pol[:n], bnd[:n]
        by_name = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in cache}

        def lookup(_v: str, _k: str, ns: str | None, name: str | None, sel: Any) -> list[Any]:
            # as the replica's `_policy_params`: a paramRef by name is looked up in its cache,
            # one by selector scans it
            if name:
                found = by_name.get((ns, name))
                return select_params([found] if found else [], True, ns, name, sel)
            return select_params(cache, True, ns, name, sel)

        return PolicyEngine(
            lambda: ps,
            lambda: bs,
            lambda name: NAMESPACE if name == NS else None,
            lookup,
            # as the replica's watch caches give it: the pairs worked out once, not per call
            version=lambda: n,
        )

    cases = {}
    for n in COUNTS:
        cases[f"{n} policies"] = engine(n, params)
    for n in COUNTS[1:] if with_params else ():
        cases[f"{n} policies, {cached} ConfigMaps cached"] = engine(n, params + filler)
    a = attributes(1)
    notes = Notes()
    NOTES.set(notes)  # as the server's admission link does
    for e in cases.values():
        e.admit(a)  # every policy passes (and compiled: the cache is warm, as in a replica)
    assert not notes.warnings, notes.warnings
    samples: dict[str, list[int]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, e in cases.items():
            samples[name] += timed(lambda e=e: e.admit(a), ms)
    print(
        f"\nengine alone: PolicyEngine.admit on a ConfigMap create, {rounds} rounds of "
        f"~{ms:g} ms per case, interleaved"
    )
    print(f"{'case':<44}{'calls':>9}{'p50 us':>9}{'p99 us':>9}{'per policy':>12}")
    for name, xs in samples.items():
        n = int(name.split()[0])
        per = f"{pct(xs, 0.5) / n:.1f}" if n else ""
        print(f"{name:<44}{len(xs):>9}{pct(xs, 0.5):>9.1f}{pct(xs, 0.99):>9.1f}{per:>12}")


def expressions_bench(rounds: int, ms: float) -> None:
    """Each kind's expressions (validations, variables, matchConditions) alone: compile once,
    evaluate many on the engine's activation."""
    env = Environment(VARIABLES)
    a = attributes(1)
    data = {
        "object": a.obj,
        "oldObject": None,
        "request": _request(a),
        "params": params_objects()[0],
        "namespaceObject": NAMESPACE,
        "authorizer": None,
        "variables": {"keys": 1},
    }
    rows: list[tuple[str, str]] = []
    for i in range(10):
        spec = _kind(i, 0)
        for v in spec.get("matchConditions", []):
            rows.append((f"{i}: matchCondition", v["expression"]))
        for v in spec.get("variables", []):
            rows.append((f"{i}: variable", v["expression"]))
        for v in spec["validations"]:
            rows.append((f"{i}: validation", v["expression"]))
    compile_us, programs = {}, {}
    for label, src in rows:
        times = []
        for _ in range(5):
            t0 = time.perf_counter_ns()
            programs[label] = env.compile(src)
            times.append(time.perf_counter_ns() - t0)
        compile_us[label] = statistics.median(times) / 1e3
        result = programs[label].eval(data)
        assert result is True or label.endswith("variable"), (src, result)
    samples: dict[str, list[int]] = {label: [] for label, _ in rows}
    for _ in range(rounds):
        for label, _ in rows:
            samples[label] += timed(lambda p=programs[label]: p.eval(data), ms / 4)
    print(
        f"\nexpressions alone: haplane.cel, compiled once, evaluated on the engine's activation "
        f"(a ~1 KiB ConfigMap), {rounds} rounds of ~{ms / 4:g} ms each"
    )
    print(f"{'kind: expression':<96}{'compile us':>11}{'p50 us':>9}{'p99 us':>9}")
    for label, src in rows:
        xs = samples[label]
        text = f"{label} {src}"
        text = text if len(text) <= 94 else text[:91] + "..."
        print(f"{text:<96}{compile_us[label]:>11.0f}{pct(xs, 0.5):>9.1f}{pct(xs, 0.99):>9.1f}")


# ---- through a replica ------------------------------------------------------------------------


class PolicySet:
    """The policies a replica has, made to be the first n of the 50 through its API."""

    def __init__(self, replica: ApiReplica, with_params: bool) -> None:
        self.replica = replica
        self.with_params = with_params
        self.n = 0
        self.probes = 0

    def _call(self, method: str, path: str, body: Any = None, want: int = 201) -> dict:
        status, _, out = self.replica.request(method, path, body)
        assert status == want, (method, path, status, out)
        return out

    def make(self, n: int) -> None:
        pairs = policies(50, self.with_params)
        for p, b in reversed(pairs[n : self.n]):
            self._call("DELETE", f"{VAPB}/{b['metadata']['name']}", want=200)
            self._call("DELETE", f"{VAP}/{p['metadata']['name']}", want=200)
        for p, b in pairs[self.n : n]:
            self._call("POST", VAP, p)
            self._call("POST", VAPB, b)
        self.n = n
        want_p = sorted(p["metadata"]["name"] for p, _ in pairs[:n])
        want_b = sorted(b["metadata"]["name"] for _, b in pairs[:n])
        deadline = time.monotonic() + 10
        while True:  # the caches the engine reads hold exactly these
            got_p = self._call("GET", f"{VAP}?resourceVersion=0", want=200)["items"]
            got_b = self._call("GET", f"{VAPB}?resourceVersion=0", want=200)["items"]
            if (
                sorted(x["metadata"]["name"] for x in got_p) == want_p
                and sorted(x["metadata"]["name"] for x in got_b) == want_b
            ):
                break
            assert time.monotonic() < deadline, "the replica never saw the policies"
            time.sleep(0.05)
        # type-checked (the leader's controller writes each generation's warnings once, in a
        # thread): a case measured while that runs would charge the policies a one-off cost
        # (~1 s of CPU for 10 new ones, seen by py-spy inside the measured window)
        deadline = time.monotonic() + 120
        while True:
            got_p = self._call("GET", VAP, want=200)["items"]
            if all(
                (x.get("status") or {}).get("observedGeneration") == x["metadata"]["generation"]
                for x in got_p
            ):
                break
            assert time.monotonic() < deadline, "the policies were never type-checked"
            time.sleep(0.2)
        if n:  # enforced: a ConfigMap without labels is refused
            self.probes += 1
            bad = {"metadata": {"name": f"probe-{self.probes}"}, "data": {"p": "x"}}
            out = self._call("POST", f"/api/v1/namespaces/{NS}/configmaps", bad, want=422)
            assert "ValidatingAdmissionPolicy" in out["message"], out
        time.sleep(0.5)  # let the deletes' and creates' watch events settle


async def setup(root: Path) -> tuple[EtcdCluster, ApiReplica]:
    cluster = EtcdCluster(root / "etcd", heartbeat_ms=50, election_ms=500, unsafe_no_fsync=False)
    await cluster.start()
    async with cluster.client(timeout=2.0) as client:  # a bare replica writes under epoch 0
        fence = RegionFence("bench", client)
        await fence.swap(await fence.read(), FenceValue.active("bench", 0))
    replica = ApiReplica(root, "vap", cluster.endpoints, region="bench")
    await replica.start()
    replica.request("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
    for obj in params_objects():
        status, _, out = replica.request("POST", f"/api/v1/namespaces/{NS}/configmaps", obj)
        assert status == 201, out
    return cluster, replica


def row(name: str, r: dict, cached: int) -> None:
    print(
        f"{name:<22}{r['rps']:>9.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['cpu_us']:>12.0f}"
        f"{cached:>10}"
    )


def http_bench(seconds: float, rounds: int, connections: int, with_params: bool) -> None:
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="haplane-bench-") as tmp:
        cluster, replica = loop.run_until_complete(setup(Path(tmp)))
        try:
            made = PolicySet(replica, with_params)
            os.environ["BENCH_LABELS"] = json.dumps(LABELS, separators=(",", ":"))
            os.environ["BENCH_TOKEN"] = ""
            print(
                f"creates: wrk -t2 -c{connections}, {seconds:g}s per case, {rounds} rounds "
                "(0, 10, 50 policies; reversed every other round); 2 vCPUs shared by etcd, "
                "the replica and wrk"
                + ("" if with_params else "; --no-params: limits written into the expressions")
            )
            print(
                f"{'case':<22}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}"
                f"{'cached':>10}  (ConfigMaps in the replica's cache at the start)"
            )
            results: dict[int, list[dict]] = {n: [] for n in COUNTS}
            total = 0
            for i in range(rounds):
                for n in COUNTS if i % 2 == 0 else COUNTS[::-1]:
                    made.make(n)
                    cached = len(params_objects()) + total
                    r = load_wrk_create(replica.url, seconds, connections, replica.process.pid)
                    total += int(r["n"])
                    results[n].append(r)
                    row(f"{i + 1}: {n} policies", r, cached)
            base = results[0]
            for n in COUNTS[1:]:
                ratios = [r["rps"] / b["rps"] for r, b in zip(results[n], base, strict=True)]
                added = [r["cpu_us"] - b["cpu_us"] for r, b in zip(results[n], base, strict=True)]
                print(
                    f"{n} policies / none = {statistics.median(ratios):.2f}x throughput (rounds "
                    f"{', '.join(f'{x:.2f}' for x in ratios)}), "
                    f"{statistics.median(added):+.0f} us replica CPU per create"
                    + (" (goal >= 0.80x)" if n == 10 else "")
                )
        finally:
            loop.run_until_complete(replica.stop())
            loop.run_until_complete(cluster.stop())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--ms", type=float, default=200.0, help="in-process: per case and round")
    ap.add_argument("--cached", type=int, default=20000, help="ConfigMaps in the params cache")
    ap.add_argument("--only", choices=("all", "http", "engine"), default="all")
    ap.add_argument(
        "--no-params",
        dest="params",
        action="store_false",
        help="the parameter-driven policies' limit written into their expressions instead",
    )
    args = ap.parse_args()
    if args.only in ("all", "http"):
        http_bench(args.seconds, args.rounds, args.connections, args.params)
    if args.only in ("all", "engine"):
        engine_bench(args.rounds, args.ms, args.cached, args.params)
        expressions_bench(args.rounds, args.ms)


if __name__ == "__main__":
    assert WRK_CREATE.exists()
    main()
