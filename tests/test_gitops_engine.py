"""The GitOps engine against real API replicas on real etcd: steps dry-run before they are
applied (a bad object leaves its step unapplied and names the steps that were), the inventory in
the target, prune only when allowed and only of what the inventory lists, the allowEmpty guard,
drift found and healed, health, and a diff.

The engine is a client only: it reaches the replicas over HTTP with a kubeconfig.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from haplane.auth.kubeconfig import load
from haplane.gitops.engine import INVENTORY_NAMESPACE, SYNC_LABEL, Target
from haplane.gitops.kube import KubeClient
from haplane.local.api_replica import ApiReplica


@pytest_asyncio.fixture
async def client(api_replicas: list[ApiReplica]) -> AsyncIterator[KubeClient]:
    doc = {
        "clusters": [{"name": "c", "cluster": {"server": api_replicas[0].url}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    c = KubeClient(load(doc, "test"))
    yield c
    await c.close()


def cm(name: str, ns: str, wave: int | None = None, **data: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if wave is not None:
        meta["annotations"] = {"gitops.haplane.dev/sync-wave": str(wave)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def ns_obj(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def crd(group: str, kind: str, wave: int = 0) -> dict[str, Any]:
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{group}",
            "annotations": {"gitops.haplane.dev/sync-wave": str(wave)},
        },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "maximum": 10}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def uid() -> str:
    return uuid.uuid4().hex[:8]


def get(api: ApiReplica, path: str) -> tuple[int, Any]:
    status, _, out = api.request("GET", path)
    return status, out


async def test_apply_inventory_and_prune(
    client: KubeClient, api_replicas: list[ApiReplica]
) -> None:
    api = api_replicas[0]
    ns = f"g-{uid()}"
    target = Target(client, f"gitops/{ns}")
    objects = [cm("a", ns, x="1"), cm("b", ns, x="2"), ns_obj(ns)]
    out = await target.sync(objects, "rev1", prune=True, allow_empty=False)
    assert out.complete, (out.message, out.errors)
    # the namespace went first, in its own step
    assert out.applied_steps == ["wave 0 (CRDs and namespaces)", "wave 0"]
    assert out.health == "Healthy"
    status, live = get(api, f"/api/v1/namespaces/{ns}/configmaps/a")
    assert status == 200 and live["data"] == {"x": "1"}
    assert live["metadata"]["labels"][SYNC_LABEL] == target.label
    assert any(m["manager"] == "haplane-gitops" for m in live["metadata"]["managedFields"])
    status, inv = get(
        api, f"/api/v1/namespaces/{INVENTORY_NAMESPACE}/configmaps/{target.inventory_name}"
    )
    assert status == 200 and f'"{ns}", "b"' in inv["data"]["objects"]
    assert inv["data"]["revision"] == "rev1"

    # b dropped from the source, prune off: kept, and still in the inventory
    out = await target.sync(
        [cm("a", ns, x="1"), ns_obj(ns)], "rev2", prune=False, allow_empty=False
    )
    assert out.complete and out.kept == [f"ConfigMap/b (namespace {ns})"] and not out.pruned
    assert get(api, f"/api/v1/namespaces/{ns}/configmaps/b")[0] == 200

    # a fresh engine (another controller instance) finds the inventory in the target: prune on
    other = Target(client, f"gitops/{ns}")
    # an object the source never declared, with the same label, is never pruned
    api.request(
        "POST",
        f"/api/v1/namespaces/{ns}/configmaps",
        {"metadata": {"name": "stranger", "labels": {SYNC_LABEL: target.label}}},
    )
    out = await other.sync([cm("a", ns, x="1"), ns_obj(ns)], "rev3", prune=True, allow_empty=False)
    assert out.complete and out.pruned == [f"ConfigMap/b (namespace {ns})"], out
    assert get(api, f"/api/v1/namespaces/{ns}/configmaps/b")[0] == 404
    assert get(api, f"/api/v1/namespaces/{ns}/configmaps/stranger")[0] == 200

    # an empty render prunes nothing unless allowed
    out = await other.sync([], "rev4", prune=True, allow_empty=False)
    assert not out.complete and "render is empty" in out.message
    assert get(api, f"/api/v1/namespaces/{ns}/configmaps/a")[0] == 200
    out = await other.sync([], "rev5", prune=True, allow_empty=True)
    assert out.complete and f"ConfigMap/a (namespace {ns})" in out.pruned
    assert get(api, f"/api/v1/namespaces/{ns}/configmaps/a")[0] == 404


async def test_bad_wave_is_not_half_applied(
    client: KubeClient, api_replicas: list[ApiReplica], namespace: str
) -> None:
    api = api_replicas[0]
    group = f"g{uid()}.example.com"
    good = {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": namespace},
        "spec": {"size": 3},
    }
    bad = {**good, "metadata": {"name": "w2", "namespace": namespace}, "spec": {"size": 99}}
    objects = [
        cm("first", namespace, wave=0),
        crd(group, "Widget", wave=1),
        {
            **good,
            "metadata": {**good["metadata"], "annotations": {"gitops.haplane.dev/sync-wave": "2"}},
        },
        {
            **bad,
            "metadata": {**bad["metadata"], "annotations": {"gitops.haplane.dev/sync-wave": "2"}},
        },
        cm("late", namespace, wave=2),
    ]
    target = Target(client, f"gitops/{namespace}")
    out = await target.sync(objects, "rev1", prune=False, allow_empty=False)
    assert not out.complete
    assert out.applied_steps == ["wave 0", "wave 1 (CRDs and namespaces)"]
    assert "wave 2" in out.message and "nothing of it was applied" in out.message
    assert [e.object for e in out.errors] == [f"Widget/w2 (namespace {namespace})"]
    assert "size" in out.errors[0].message
    # wave 0 and the CRD are there; nothing of wave 2 is
    assert get(api, f"/api/v1/namespaces/{namespace}/configmaps/first")[0] == 200
    assert get(api, f"/apis/{group}/v1/namespaces/{namespace}/widgets/w1")[0] == 404
    assert get(api, f"/api/v1/namespaces/{namespace}/configmaps/late")[0] == 404

    # a custom object in the same wave as its CRD applies after it
    target2 = Target(client, f"gitops/{namespace}-2")
    group2 = f"g{uid()}.example.com"
    w = {
        "apiVersion": f"{group2}/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": namespace},
        "spec": {"size": 1},
    }
    out = await target2.sync([w, crd(group2, "Widget")], "r", prune=False, allow_empty=False)
    assert out.complete, (out.message, out.errors)
    # ...but one placed in a wave before its CRD is refused, saying so
    target3 = Target(client, f"gitops/{namespace}-3")
    group3 = f"g{uid()}.example.com"
    w3 = {**w, "apiVersion": f"{group3}/v1"}
    out = await target3.sync(
        [w3, crd(group3, "Widget", wave=5)], "r", prune=False, allow_empty=False
    )
    assert not out.complete and out.applied_steps == []
    assert "its CRD is applied in wave 5" in out.errors[0].message


async def test_drift_detected_and_healed(
    client: KubeClient, api_replicas: list[ApiReplica], namespace: str
) -> None:
    api = api_replicas[0]
    target = Target(client, f"gitops/{namespace}")
    objects = [cm("d", namespace, x="1")]
    assert (await target.sync(objects, "r", prune=False, allow_empty=False)).complete
    out = await target.check(objects, "r", self_heal=False)
    assert out.complete and out.drift == [] and out.health == "Healthy"

    # someone else adds a key the source does not own: not drift
    api.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/configmaps/d",
        {"data": {"extra": "yes"}},
        content_type="application/merge-patch+json",
    )
    out = await target.check(objects, "r", self_heal=False)
    assert out.drift == [], out.drift

    # a manual edit of a field the source declares is drift; healed only when asked
    api.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/configmaps/d",
        {"data": {"x": "edited"}},
        content_type="application/merge-patch+json",
    )
    fresh = Target(client, f"gitops/{namespace}")  # no remembered versions: compares everything
    out = await fresh.check(objects, "r", self_heal=False)
    assert out.drift == [f"ConfigMap/d (namespace {namespace}): changed in the target"]
    assert get(api, f"/api/v1/namespaces/{namespace}/configmaps/d")[1]["data"]["x"] == "edited"
    diffs = await fresh.diff(objects)
    assert len(diffs) == 1 and "-  x: edited" in diffs[0][1] and "+  x: '1'" in diffs[0][1]
    out = await fresh.check(objects, "r", self_heal=True)
    assert out.healed == [f"ConfigMap/d (namespace {namespace})"]
    assert get(api, f"/api/v1/namespaces/{namespace}/configmaps/d")[1]["data"]["x"] == "1"

    # a deleted object is drift too ("missing"), and healing recreates it
    api.request("DELETE", f"/api/v1/namespaces/{namespace}/configmaps/d")
    out = await fresh.check(objects, "r", self_heal=True)
    assert out.drift == [f"ConfigMap/d (namespace {namespace}): missing"] and out.healed
    assert get(api, f"/api/v1/namespaces/{namespace}/configmaps/d")[0] == 200


async def test_unchanged_objects_are_not_sent_again(
    client: KubeClient, api_replicas: list[ApiReplica], namespace: str
) -> None:
    api = api_replicas[0]
    target = Target(client, f"gitops/{namespace}-skip")
    objects = [cm(f"c{i}", namespace, x=str(i)) for i in range(5)]
    out = await target.sync(objects, "r1", prune=False, allow_empty=False)
    assert out.complete and out.unchanged == 0
    rv = get(api, f"/api/v1/namespaces/{namespace}/configmaps/c0")[1]["metadata"]["resourceVersion"]
    # the same render again: nothing is sent
    out = await target.sync(objects, "r2", prune=False, allow_empty=False)
    assert out.complete and out.unchanged == 5 and out.applied == 5
    # one changed in git, one edited in the target: those two are applied, the rest skipped
    objects[1] = cm("c1", namespace, x="new")
    api.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/configmaps/c2",
        {"data": {"x": "edited"}},
        content_type="application/merge-patch+json",
    )
    out = await target.sync(objects, "r3", prune=False, allow_empty=False)
    assert out.complete and out.unchanged == 3
    assert get(api, f"/api/v1/namespaces/{namespace}/configmaps/c1")[1]["data"] == {"x": "new"}
    assert get(api, f"/api/v1/namespaces/{namespace}/configmaps/c2")[1]["data"] == {"x": "2"}
    assert (
        get(api, f"/api/v1/namespaces/{namespace}/configmaps/c0")[1]["metadata"]["resourceVersion"]
        == rv
    )
    # a fresh engine (a restarted controller) knows nothing: applies all once
    out = await Target(client, f"gitops/{namespace}-skip").sync(
        objects, "r4", prune=False, allow_empty=False
    )
    assert out.complete and out.unchanged == 0


async def test_ownership_adoption_and_versions(
    client: KubeClient, api_replicas: list[ApiReplica], namespace: str
) -> None:
    api = api_replicas[0]
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    # an object that was there before: adopted, and on prune released, never deleted
    api.request("POST", path, {"metadata": {"name": "mine-before"}, "data": {"x": "old"}})
    one = Target(client, f"gitops/{namespace}-one")
    out = await one.sync(
        [cm("mine-before", namespace, x="new"), cm("made", namespace)],
        "r1",
        prune=True,
        allow_empty=False,
    )
    assert out.complete, out
    # a second Sync declaring the first one's object is refused, naming the owner
    two = Target(client, f"gitops/{namespace}-two")
    out = await two.sync([cm("made", namespace, x="2")], "r1", prune=True, allow_empty=False)
    assert not out.complete and out.applied_steps == []
    assert f"already applied by Sync gitops/{namespace}-one" in out.errors[0].message
    assert get(api, f"{path}/made")[1].get("data") in (None, {})
    # dropped from the source: the made one is deleted, the adopted one released
    out = await one.sync([cm("other", namespace)], "r2", prune=True, allow_empty=False)
    assert out.complete and out.pruned == [f"ConfigMap/made (namespace {namespace})"], out
    assert out.kept == [
        f"ConfigMap/mine-before (namespace {namespace}) (there before the Sync: released, "
        "not deleted)"
    ]
    status, before = get(api, f"{path}/mine-before")
    assert status == 200 and SYNC_LABEL not in (before["metadata"].get("labels") or {})
    assert get(api, f"{path}/made")[0] == 404
    # now free: the second Sync may declare what the first released
    out = await two.sync([cm("mine-before", namespace)], "r1", prune=False, allow_empty=False)
    assert out.complete, out

    # the same object without a namespace and in `default` is one object declared twice
    three = Target(client, f"gitops/{namespace}-three")
    plain = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"d-{namespace}"}}
    out = await three.sync([plain, cm(f"d-{namespace}", "default")], "r", prune=False,
                           allow_empty=False)  # fmt: skip
    assert not out.complete and "declared twice" in out.errors[0].message


async def test_an_apiversion_change_is_recorded_and_pruned(
    client: KubeClient, api_replicas: list[ApiReplica], namespace: str
) -> None:
    api = api_replicas[0]
    group = f"g{uid()}.example.com"
    two_versions = crd(group, "Gadget")
    v1 = two_versions["spec"]["versions"][0]
    two_versions["spec"]["versions"] = [
        {**v1, "name": "v1alpha1", "storage": False},
        {**v1, "name": "v1"},
    ]
    target = Target(client, f"gitops/{namespace}-v")

    def gadget(version: str) -> dict[str, Any]:
        return {"apiVersion": f"{group}/{version}", "kind": "Gadget",
                "metadata": {"name": "g", "namespace": namespace}, "spec": {"size": 1}}  # fmt: skip

    out = await target.sync([two_versions, gadget("v1alpha1")], "r1", prune=True, allow_empty=False)
    assert out.complete, out
    out = await target.sync([two_versions, gadget("v1")], "r2", prune=True, allow_empty=False)
    assert out.complete, out
    _, inv = get(
        api, f"/api/v1/namespaces/{INVENTORY_NAMESPACE}/configmaps/{target.inventory_name}"
    )
    assert f'"{group}/v1", "Gadget"' in inv["data"]["objects"], inv["data"]["objects"]
    assert "v1alpha1" not in inv["data"]["objects"]
    # dropped from the source: pruned under the version it was last applied with
    out = await target.sync([two_versions], "r3", prune=True, allow_empty=False)
    assert out.complete and out.pruned == [f"Gadget.{group}/g (namespace {namespace})"], out
    assert get(api, f"/apis/{group}/v1/namespaces/{namespace}/gadgets/g")[0] == 404
