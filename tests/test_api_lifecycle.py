"""Finalizers, namespace deletion, garbage collection by ownerReferences, and the controllers'
leader election through a Lease — on real replicas and a real etcd."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request

from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from tests.topology_helpers import wait_for as wait_until


def test_finalizers_hold_deletion_until_removed(api_replicas, namespace):
    api = api_replicas[0]
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    created = api.request(
        "POST", base, {"metadata": {"name": "f", "finalizers": ["example.com/hold"]}}
    )[2]
    events: list[tuple[str, bool]] = []

    def watch() -> None:
        rv = created["metadata"]["resourceVersion"]
        url = f"{api.url}{base}?watch=true&resourceVersion={rv}&timeoutSeconds=8"
        with urllib.request.urlopen(url, timeout=15) as resp:
            for line in resp:
                ev = json.loads(line)
                events.append((ev["type"], bool(ev["object"]["metadata"].get("deletionTimestamp"))))
                if ev["type"] == "DELETED":
                    return

    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.3)
    status, _, marked = api.request("DELETE", f"{base}/f")
    assert status == 200 and marked["kind"] == "ConfigMap"
    assert marked["metadata"]["deletionTimestamp"]
    assert api.request("GET", f"{base}/f")[0] == 200  # still there, marked
    status, _, _ = api.request(
        "PATCH",
        f"{base}/f",
        {"metadata": {"finalizers": None}},
        content_type="application/merge-patch+json",
    )
    assert status == 200
    assert api.request("GET", f"{base}/f")[0] == 404
    t.join(timeout=15)
    assert events == [("MODIFIED", True), ("DELETED", True)]


def test_namespace_deletion_removes_contents_then_itself(api_replicas, namespace):
    api = api_replicas[1]
    api.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "a"}})
    api.request("POST", f"/api/v1/namespaces/{namespace}/secrets", {"metadata": {"name": "s"}})
    status, _, ns = api.request("DELETE", f"/api/v1/namespaces/{namespace}")
    assert status == 200 and ns["status"]["phase"] == "Terminating"
    status, _, body = api.request(
        "POST", f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "late"}}
    )
    assert status == 403 and "being terminated" in body["message"]
    wait_until(lambda: api.request("GET", f"/api/v1/namespaces/{namespace}")[0] == 404)
    assert api.request("GET", f"/api/v1/namespaces/{namespace}/configmaps")[2]["items"] == []


def _owner_and_dependent(api: ApiReplica, namespace: str) -> tuple[dict, str]:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    owner = api.request("POST", base, {"metadata": {"name": "owner"}})[2]
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    api.request("POST", base, {"metadata": {"name": "dep", "ownerReferences": [ref]}})
    return owner, base


def test_background_deletion_collects_dependents(api_replicas, namespace):
    api = api_replicas[0]
    _, base = _owner_and_dependent(api, namespace)
    assert api.request("DELETE", f"{base}/owner")[0] == 200
    wait_until(lambda: api.request("GET", f"{base}/dep")[0] == 404)


def test_foreground_deletion_waits_for_dependents(api_replicas, namespace):
    api = api_replicas[0]
    _, base = _owner_and_dependent(api, namespace)
    status, _, marked = api.request("DELETE", f"{base}/owner?propagationPolicy=Foreground")
    assert status == 200 and "foregroundDeletion" in marked["metadata"]["finalizers"]
    wait_until(lambda: api.request("GET", f"{base}/owner")[0] == 404)
    assert api.request("GET", f"{base}/dep")[0] == 404


def test_orphan_deletion_keeps_dependents(api_replicas, namespace):
    api = api_replicas[0]
    _, base = _owner_and_dependent(api, namespace)
    status, _, _ = api.request("DELETE", f"{base}/owner", {"propagationPolicy": "Orphan"})
    assert status == 200
    wait_until(lambda: api.request("GET", f"{base}/owner")[0] == 404)
    time.sleep(1.5)  # the collector had rounds to (wrongly) delete it
    status, _, dep = api.request("GET", f"{base}/dep")
    assert status == 200 and not dep["metadata"].get("ownerReferences")
    assert api.request("DELETE", f"{base}/x?propagationPolicy=Sideways")[0] in (400, 404)


async def test_controllers_move_to_another_replica_when_the_leader_dies(tmp_path):
    cluster = EtcdCluster(tmp_path / "etcd")
    await cluster.start()
    replicas = [ApiReplica(tmp_path, f"api-{i}", cluster.endpoints, region="ha") for i in (1, 2)]
    try:
        for r in replicas:
            await r.start()
        lease_path = (
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/haplane-controllers"
        )

        def holder() -> str:
            status, _, lease = (
                replicas[0].request("GET", lease_path)
                if replicas[0].process.pid
                else replicas[1].request("GET", lease_path)
            )
            return lease["spec"]["holderIdentity"] if status == 200 else ""

        first = await asyncio.to_thread(wait_until, holder)
        leader = next(r for r in replicas if first.startswith(f"ha/{r.name}_"))
        survivor = next(r for r in replicas if r is not leader)
        await leader.process.fault("kill")
        t0 = time.monotonic()

        def taken_over() -> bool:
            status, _, lease = survivor.request("GET", lease_path)
            return status == 200 and lease["spec"]["holderIdentity"].startswith(
                f"ha/{survivor.name}_"
            )

        await asyncio.to_thread(wait_until, taken_over, 15.0)
        assert time.monotonic() - t0 < 8.0  # lease 3 s + renew 1 s, with room for a busy box
        # and the controllers work there: a namespace deletion completes
        req = survivor.request
        await asyncio.to_thread(req, "POST", "/api/v1/namespaces", {"metadata": {"name": "bye"}})
        await asyncio.to_thread(req, "DELETE", "/api/v1/namespaces/bye")
        await asyncio.to_thread(wait_until, lambda: req("GET", "/api/v1/namespaces/bye")[0] == 404)
    finally:
        for r in replicas:
            await r.stop()
        await cluster.stop()


def test_collector_owner_rules(api_replicas, namespace):
    """An owner of a kind nobody serves is never presumed gone; an owner in another namespace
    counts as absent (as in Kubernetes)."""
    api = api_replicas[0]
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    unknown = {
        "apiVersion": "nowhere.example.com/v1",
        "kind": "Ghost",
        "name": "g",
        "uid": "00000000-0000-0000-0000-000000000001",
    }
    api.request("POST", base, {"metadata": {"name": "kept", "ownerReferences": [unknown]}})
    other_ns = f"{namespace}-o"
    api.request("POST", "/api/v1/namespaces", {"metadata": {"name": other_ns}})
    owner = api.request(
        "POST", f"/api/v1/namespaces/{other_ns}/configmaps", {"metadata": {"name": "owner"}}
    )[2]
    elsewhere = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    api.request("POST", base, {"metadata": {"name": "stray", "ownerReferences": [elsewhere]}})
    wait_until(lambda: api.request("GET", f"{base}/stray")[0] == 404)
    assert api.request("GET", f"{base}/kept")[0] == 200
