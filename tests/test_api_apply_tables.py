"""Server-side apply and Table output on real replicas, with kubectl."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from haplane.local.api_replica import ApiReplica

KUBECTL = Path("/usr/lib/google-cloud-sdk/bin/kubectl.1.32")


def apply(api: ApiReplica, path: str, body: dict, manager: str, force: bool = False):
    q = f"?fieldManager={manager}" + ("&force=true" if force else "")
    return api.request(
        "PATCH",
        path + q,
        raw=yaml.safe_dump(body).encode(),
        content_type="application/apply-patch+yaml",
    )


def test_server_side_apply_ownership_and_conflicts(api_replicas, namespace):
    api = api_replicas[0]
    path = f"/api/v1/namespaces/{namespace}/configmaps/ssa"
    cfg = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ssa"},
        "data": {"x": "1", "y": "1"},
    }
    status, _, first = apply(api, path, cfg, "alice")
    assert status == 201 and first["data"] == {"x": "1", "y": "1"}
    owners = {e["manager"]: e for e in first["metadata"]["managedFields"]}
    assert owners["alice"]["operation"] == "Apply"
    assert owners["alice"]["fieldsV1"]["f:data"] == {"f:x": {}, "f:y": {}}
    status, _, again = apply(api, path, cfg, "alice")  # the same config: a no-op
    assert status == 200
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]

    status, _, out = apply(api, path, {**cfg, "data": {"x": "2"}}, "bob")  # conflicts on x
    assert status == 409 and out["reason"] == "Conflict"
    assert ".data.x" in out["message"] and "alice" in out["message"]
    status, _, out = apply(api, path, {**cfg, "data": {"x": "1", "z": "1"}}, "bob")
    assert status == 200 and out["data"] == {"x": "1", "y": "1", "z": "1"}  # same value: shared
    status, _, out = apply(api, path, {**cfg, "data": {"x": "3"}}, "bob", force=True)
    assert status == 200 and out["data"]["x"] == "3"
    owners = {e["manager"]: e for e in out["metadata"]["managedFields"]}
    assert "f:x" not in owners["alice"]["fieldsV1"]["f:data"]

    # alice stops applying y: she alone owned it, so it goes; x is no longer hers to remove
    status, _, out = apply(api, path, {**cfg, "data": {}}, "alice")
    assert (status == 200 and out["data"] == {"x": "3"}) or out["data"] == {"x": "3", "z": "1"}
    assert "y" not in out["data"]


def test_ordinary_writes_record_an_update_manager(api_replicas, namespace):
    api = api_replicas[0]
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    status, _, created = api.request(
        "POST", f"{base}?fieldManager=writer", {"metadata": {"name": "u"}, "data": {"a": "1"}}
    )
    assert status == 201
    (entry,) = created["metadata"]["managedFields"]
    assert entry["manager"] == "writer" and entry["operation"] == "Update"
    assert "f:a" in entry["fieldsV1"]["f:data"]


@pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl 1.32 not installed")
def test_kubectl_server_side_apply_and_tables(api_replicas, namespace, tmp_path):
    kubeconfig = api_replicas[0].kubeconfig(tmp_path / "kubeconfig")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(kubeconfig), "-n", namespace, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
        return r

    manifest = tmp_path / "cm.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kss\ndata:\n  a: '1'\n  b: '2'\n"
    )
    assert "serverside-applied" in run("apply", "--server-side", "-f", str(manifest)).stdout
    rv1 = run("get", "cm", "kss", "-o", "jsonpath={.metadata.resourceVersion}").stdout
    assert "serverside-applied" in run("apply", "--server-side", "-f", str(manifest)).stdout
    rv2 = run("get", "cm", "kss", "-o", "jsonpath={.metadata.resourceVersion}").stdout
    assert rv1 == rv2  # twice is a no-op
    other = run("apply", "--server-side", "--field-manager", "other", "-f", "-", check=False)
    del other
    conflicting = tmp_path / "conflict.yaml"
    conflicting.write_text(manifest.read_text().replace("a: '1'", "a: '9'"))
    r = run(
        "apply", "--server-side", "--field-manager", "other", "-f", str(conflicting), check=False
    )
    assert r.returncode != 0 and "conflict" in r.stderr.lower()
    # tables: kubectl prints the server's columns
    table = run("get", "cm", "kss").stdout
    assert table.split("\n")[0].split() == ["NAME", "DATA", "AGE"]
    assert table.split("\n")[1].split()[:2] == ["kss", "2"]
    wide = run("get", "ns", namespace).stdout
    assert "Active" in wide and "STATUS" in wide
