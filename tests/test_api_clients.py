"""Real Kubernetes clients against real replicas: the official Python client and kubectl (1.27,
1.32 and 1.33), two replicas sharing one etcd, and an etcd leader killed under a write loop."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException

from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster

KUBECTL_DIR = Path("/usr/lib/google-cloud-sdk/bin")


def core(replica: ApiReplica, tmp_path: Path) -> k8s.CoreV1Api:
    cfg = k8s.Configuration()
    k8s_config.load_kube_config(
        str(replica.kubeconfig(tmp_path / "kubeconfig")), client_configuration=cfg
    )
    return k8s.CoreV1Api(k8s.ApiClient(cfg))


def test_official_python_client(api_replicas, namespace, tmp_path):
    v1 = core(api_replicas[0], tmp_path)
    body = k8s.V1ConfigMap(
        metadata=k8s.V1ObjectMeta(name="py", labels={"app": "a"}), data={"k": "v"}
    )
    created = v1.create_namespaced_config_map(namespace, body)
    assert created.metadata.uid and created.data == {"k": "v"}
    got = v1.read_namespaced_config_map("py", namespace)
    assert got.metadata.resource_version == created.metadata.resource_version
    listed = v1.list_namespaced_config_map(namespace, label_selector="app=a")
    assert [i.metadata.name for i in listed.items] == ["py"]
    patched = v1.patch_namespaced_config_map("py", namespace, {"data": {"k2": "v2"}})
    assert patched.data == {"k": "v", "k2": "v2"}  # the client sends strategic merge patch
    # a stale resourceVersion raises 409
    got.data = {"stale": "yes"}
    with pytest.raises(ApiException) as ei:
        v1.replace_namespaced_config_map("py", namespace, got)
    assert ei.value.status == 409
    status = v1.delete_namespaced_config_map("py", namespace)
    # client 37 returns the Status as a dict; older ones as a V1Status
    assert (status["status"] if isinstance(status, dict) else status.status) == "Success"
    with pytest.raises(ApiException) as ei:
        v1.read_namespaced_config_map("py", namespace)
    assert ei.value.status == 404
    namespaces = [n.metadata.name for n in v1.list_namespace().items]
    assert "default" in namespaces and namespace in namespaces


def test_python_client_watch_sees_changes_and_resumes(api_replicas, namespace, tmp_path):
    v1 = core(api_replicas[0], tmp_path)
    writer = core(api_replicas[1], tmp_path)
    seen: list[tuple[str, str]] = []
    last_rv: list[str] = []

    def watch_until(n: int, resource_version: str | None) -> None:
        w = k8s_watch.Watch()
        kwargs = {"timeout_seconds": 10}
        if resource_version:
            kwargs["resource_version"] = resource_version
        for ev in w.stream(v1.list_namespaced_config_map, namespace, **kwargs):
            seen.append((ev["type"], ev["object"].metadata.name))
            last_rv.append(ev["object"].metadata.resource_version)
            if len(seen) >= n:
                w.stop()

    t = threading.Thread(target=watch_until, args=(3, None))
    t.start()
    time.sleep(0.7)
    writer.create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="w"))
    )
    writer.patch_namespaced_config_map("w", namespace, {"data": {"a": "1"}})
    writer.delete_namespaced_config_map("w", namespace)
    t.join(timeout=15)
    assert seen == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
    # resume from the last resourceVersion: only what happened after it
    resume_from = last_rv[1]  # after the MODIFIED
    seen.clear()
    watch_until(1, resume_from)
    assert seen == [("DELETED", "w")]


def kubectl_versions() -> list[Path]:
    found = [KUBECTL_DIR / f"kubectl.{v}" for v in ("1.27", "1.32", "1.33")]
    return [p for p in found if p.exists()]


@pytest.mark.parametrize("kubectl", kubectl_versions(), ids=lambda p: p.name)
def test_kubectl(api_replicas, namespace, tmp_path, kubectl: Path):
    kubeconfig = api_replicas[0].kubeconfig(tmp_path / "kubeconfig")

    def run(*args: str, stdin: str | None = None, check: bool = True):
        r = subprocess.run(
            [str(kubectl), "--kubeconfig", str(kubeconfig), "-n", namespace, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
        return r

    resources = run("api-resources").stdout
    assert "configmaps" in resources and "leases" in resources and " cm " in resources
    manifest = tmp_path / "cm.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kc\ndata:\n  a: '1'\n")
    assert "created" in run("create", "-f", str(manifest)).stdout
    run("delete", "cm", "kc")
    assert "created" in run("apply", "-f", str(manifest)).stdout
    assert "unchanged" in run("apply", "-f", str(manifest)).stdout
    manifest.write_text(manifest.read_text().replace("a: '1'", "a: '2'\n  b: '3'"))
    assert "configured" in run("apply", "-f", str(manifest)).stdout
    out = run("get", "cm", "kc", "-o", "json").stdout
    assert json.loads(out)["data"] == {"a": "2", "b": "3"}
    assert "name: kc" in run("get", "configmap", "kc", "-o", "yaml").stdout
    assert "kc" in run("get", "cm").stdout
    # typed creates are sent as protobuf (application/vnd.kubernetes.protobuf)
    run("create", "configmap", "typed", "--from-literal=k=v")
    assert json.loads(run("get", "cm", "typed", "-o", "json").stdout)["data"] == {"k": "v"}
    run("create", "secret", "generic", "typed", "--from-literal=password=s3cret")
    secret = json.loads(run("get", "secret", "typed", "-o", "json").stdout)
    assert secret["data"] == {"password": "czNjcmV0"} and secret["type"] == "Opaque"
    run("create", "serviceaccount", "typed")
    ns = f"{namespace}-typed"
    run("create", "namespace", ns)
    assert json.loads(run("get", "ns", ns, "-o", "json").stdout)["status"]["phase"] == "Active"
    run("delete", "namespace", ns)
    run("label", "cm", "kc", "tier=web")
    assert "kc" in run("get", "cm", "-l", "tier=web").stdout

    watcher = subprocess.Popen(
        [
            str(kubectl),
            "--kubeconfig",
            str(kubeconfig),
            "-n",
            namespace,
            "get",
            "cm",
            "-w",
            "--request-timeout=20s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)
        manifest.write_text(manifest.read_text().replace("name: kc", "name: kc2"))
        run("apply", "-f", str(manifest))
        time.sleep(1.5)
    finally:
        watcher.terminate()
        out, _ = watcher.communicate(timeout=10)
    assert "kc2" in out and "kc" in out
    assert "deleted" in run("delete", "cm", "kc").stdout
    assert run("get", "cm", "kc", check=False).returncode != 0


def test_two_replicas_share_one_etcd(api_replicas, namespace):
    a, b = api_replicas
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    created = a.request("POST", base, {"metadata": {"name": "shared"}, "data": {"x": "1"}})[2]
    status, headers, got = b.request("GET", f"{base}/shared")
    assert status == 200 and headers["X-Haplane-Replica"] == "api-2"
    assert got["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    got["data"] = {"x": "2"}
    assert b.request("PUT", f"{base}/shared", got)[0] == 200
    assert a.request("GET", f"{base}/shared")[2]["data"] == {"x": "2"}


async def test_etcd_leader_kill_under_writes_loses_no_acknowledged_write(tmp_path):
    """Through one replica on its own 3-member etcd: every write is a success, a 504 (outcome
    unknown) or an error for a write that certainly did not happen; every acknowledged write is
    there afterwards; every write that got a definite error is absent."""
    cluster = EtcdCluster(tmp_path / "etcd", heartbeat_ms=50, election_ms=500)
    await cluster.start()
    replica = ApiReplica(tmp_path, "api-k", cluster.endpoints, region="kill")
    try:
        await replica.start()
        req = replica.request
        await asyncio.to_thread(req, "POST", "/api/v1/namespaces", {"metadata": {"name": "loop"}})
        leader = await cluster.leader()
        outcomes: dict[str, int] = {}

        def write_loop() -> None:
            for i in range(150):
                if i == 40:
                    asyncio.run_coroutine_threadsafe(
                        cluster.processes[leader].fault("kill"), loop
                    ).result()
                name = f"o{i:03d}"
                try:
                    status, _, _ = req(
                        "POST",
                        "/api/v1/namespaces/loop/configmaps",
                        {"metadata": {"name": name}},
                        timeout=10,
                    )
                except OSError:
                    status = -1
                outcomes[name] = status
                time.sleep(0.01)

        loop = asyncio.get_running_loop()
        await asyncio.to_thread(write_loop)
        assert set(outcomes.values()) <= {201, 503, 504, -1}, outcomes
        assert list(outcomes.values()).count(201) >= 100
        listed = (await asyncio.to_thread(req, "GET", "/api/v1/namespaces/loop/configmaps"))[2]
        present = {i["metadata"]["name"] for i in listed["items"]}
        acked = {n for n, s in outcomes.items() if s == 201}
        certainly_failed = {n for n, s in outcomes.items() if s == 503}
        assert acked <= present, acked - present
        assert not (certainly_failed & present), certainly_failed & present
    finally:
        await replica.stop()
        await cluster.stop()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl on PATH is optional")
def test_kubectl_on_path_works_too(api_replicas, tmp_path):
    kubeconfig = api_replicas[0].kubeconfig(tmp_path / "kubeconfig")
    r = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "get", "ns", "default"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "default" in r.stdout
