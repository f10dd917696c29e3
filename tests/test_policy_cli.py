"""`haplane policy install baseline` and `haplane policy report`, as a new user would, on a
replica of its own (the baseline refuses namespaces without an owner: the session's shared
replicas must not get it) and kubectl: the pack installs, a namespace without the owner
label is refused with the policy's message, a Secret of another type and an oversized
ConfigMap too; objects that existed before the pack are listed by the report (exit 1), and
a fixed one no longer is. Region findings: plain data."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from haplane.local.policy_report import Report, region_findings


def haplane(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haplane.cli", *args], capture_output=True, text=True, timeout=120
    )


def kubectl(
    api: ApiReplica, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--server", api.url, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_baseline_as_a_new_user(disposable_cluster: EtcdCluster, tmp_path: Path) -> None:
    api = ApiReplica(tmp_path, "api-policy", disposable_cluster.endpoints)
    await api.start()
    try:
        kc = api.kubeconfig(tmp_path / "kc")
        # before the pack: a namespace without an owner, a Secret of a custom type
        assert kubectl(api, "create", "namespace", "before").returncode == 0
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "odd", "namespace": "before"},
            "type": "example.com/odd",
        }
        assert kubectl(api, "create", "-f", "-", stdin=json.dumps(secret)).returncode == 0

        r = haplane("policy", "install", "baseline", "--kubeconfig", str(kc))
        assert r.returncode == 0, r.stderr
        assert "validatingadmissionpolicy/haplane-baseline-namespace-owner created" in r.stdout
        assert "configmap/haplane-baseline created" in r.stdout
        again = haplane("policy", "install", "baseline", "--kubeconfig", str(kc))
        assert again.returncode == 0, again.stderr
        assert (
            "validatingadmissionpolicy/haplane-baseline-namespace-owner unchanged" in again.stdout
        ), again.stdout
        assert "configured" not in again.stdout, again.stdout
        assert "configmap/haplane-baseline kept (your parameters)" in again.stdout

        r = kubectl(api, "create", "namespace", "x")
        assert r.returncode != 0
        assert "denied request: namespaces must carry an owner label (owner)" in r.stderr, r.stderr
        ok = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "x", "labels": {"owner": "alice"}},
        }
        assert kubectl(api, "create", "-f", "-", stdin=json.dumps(ok)).returncode == 0
        secret["metadata"] = {"name": "odd2", "namespace": "x"}
        r = kubectl(api, "create", "-f", "-", stdin=json.dumps(secret))
        assert (
            r.returncode != 0 and "Secrets of type example.com/odd are not allowed" in r.stderr
        ), r.stderr
        big = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "big", "namespace": "x"},
            "data": {"a": "x" * 300_000},
        }
        r = kubectl(api, "create", "-f", "-", stdin=json.dumps(big))
        assert r.returncode != 0 and "over the limit of 262144" in r.stderr, r.stderr

        # GitOps: a Sync outside the trusted namespaces must name a ServiceAccount
        from haplane.gitops.types import SYNC_CRD

        assert kubectl(api, "apply", "-f", "-", stdin=json.dumps(SYNC_CRD)).returncode == 0
        sync = {
            "apiVersion": "gitops.haplane.dev/v1",
            "kind": "Sync",
            "metadata": {"name": "s", "namespace": "x"},
            "spec": {"sourceRef": {"name": "src"}, "targets": [{"name": "platform"}]},
        }
        r = kubectl(api, "create", "-f", "-", stdin=json.dumps(sync))
        for _ in range(50):  # the CRD's resource is served within moments
            if (
                "the server doesn't have a resource type" not in r.stderr
                and "no matches" not in r.stderr
            ):
                break
            await asyncio.sleep(0.1)
            r = kubectl(api, "create", "-f", "-", stdin=json.dumps(sync))
        assert r.returncode != 0 and "must name spec.serviceAccountName" in r.stderr, r.stderr
        sync["spec"]["serviceAccountName"] = "deployer"
        r = kubectl(api, "create", "-f", "-", stdin=json.dumps(sync))
        assert r.returncode == 0, r.stderr

        # the report finds what was there before the pack
        r = haplane("policy", "report", "--kubeconfig", str(kc), "--json")
        assert r.returncode == 1, r.stderr
        found = {
            (v["resource"], v["name"], v["policy"]) for v in json.loads(r.stdout)["violations"]
        }
        assert found == {
            ("namespaces", "before", "haplane-baseline-namespace-owner"),
            ("secrets", "odd", "haplane-baseline-secret-types"),
        }, found
        kubectl(api, "label", "namespace", "before", "owner=bob")
        kubectl(api, "delete", "secret", "odd", "-n", "before")
        r = haplane("policy", "report", "--kubeconfig", str(kc))
        assert r.returncode == 0 and "no object breaks a policy" in r.stdout, (r.stdout, r.stderr)
    finally:
        await api.stop()


def test_a_standby_without_the_active_regions_policies_is_a_finding() -> None:
    served = {
        "http://a": {
            "items": [{"metadata": {"name": "p", "generation": 2}}, {"metadata": {"name": "q"}}]
        },
        "http://b": {"items": [{"metadata": {"name": "p", "generation": 1}}]},
    }

    def fetch(url: str, _context: object) -> object:
        for base, doc in served.items():
            if url.startswith(base):
                return doc
        raise OSError("no answer")

    report = Report()
    region_findings(
        {"a": ["http://a"], "b": ["http://b"], "c": ["http://c"]}, "a", None, report, fetch
    )
    assert report.regions == {"a": {"p": 2, "q": 1}, "b": {"p": 1}, "c": None}
    assert report.region_problems == [
        "region b has policy p at generation 1, a at 2: replication lag or divergence",
        "region b lacks policy q (generation 1 in a): replication lag or divergence",
        "region c did not answer: its policies are unknown",
    ]
    assert report.regions_differ
