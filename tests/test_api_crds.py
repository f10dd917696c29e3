"""CustomResourceDefinitions on real replicas: discovery, versions, pruning, defaults,
validation, status and scale subresources, patches, CEL validation rules (and Gateway API's
real CRDs with theirs), and deletion."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path

import pytest
import yaml

from haplane.local.api_replica import ApiReplica
from tests.topology_helpers import wait_for as wait_until

DATA = Path(__file__).parent / "data"


def crd(group: str, plural: str = "widgets", kind: str = "Widget") -> dict:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["color"],
                "properties": {
                    "color": {"type": "string", "enum": ["red", "blue"]},
                    "replicas": {"type": "integer", "minimum": 0, "default": 1},
                    "size": {"type": "string", "pattern": "^[0-9]+(Mi|Gi)$"},
                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            },
            "status": {
                "type": "object",
                "properties": {"replicas": {"type": "integer"}, "phase": {"type": "string"}},
            },
        },
    }
    version = {
        "served": True,
        "schema": {"openAPIV3Schema": schema},
        "subresources": {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
            },
        },
        "additionalPrinterColumns": [
            {"name": "Color", "type": "string", "jsonPath": ".spec.color"}
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "shortNames": ["wd"],
            },
            "versions": [
                {**copy.deepcopy(version), "name": "v1beta1", "storage": False},
                {**copy.deepcopy(version), "name": "v1", "storage": True},
            ],
        },
    }


@pytest.fixture
def widgets(api_replicas) -> str:
    """A CRD of a fresh group; returns the group."""
    group = f"w{uuid.uuid4().hex[:8]}.example.com"
    status, _, body = api_replicas[0].request(
        "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd(group)
    )
    assert status == 201, body
    for r in api_replicas:  # both replicas serve it (they follow CRDs in etcd)
        wait_until(lambda r=r: r.request("GET", f"/apis/{group}/v1")[0] == 200)
    return group


def test_crd_is_established_and_discoverable(api_replicas, widgets):
    api = api_replicas[1]
    status, _, got = api.request(
        "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{widgets}"
    )
    assert status == 200
    conditions = {c["type"]: c["status"] for c in got["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    assert got["status"]["acceptedNames"]["kind"] == "Widget"
    assert got["status"]["storedVersions"] == ["v1"]
    group = api.request("GET", f"/apis/{widgets}")[2]
    assert group["preferredVersion"]["version"] == "v1"
    assert [v["version"] for v in group["versions"]] == ["v1", "v1beta1"]
    resources = {r["name"]: r for r in api.request("GET", f"/apis/{widgets}/v1")[2]["resources"]}
    assert resources["widgets"]["shortNames"] == ["wd"]
    assert resources["widgets"]["namespaced"] is True
    assert resources["widgets/scale"]["kind"] == "Scale"
    assert "widgets/status" in resources
    assert widgets in [g["name"] for g in api.request("GET", "/apis")[2]["groups"]]


def test_custom_resources_prune_default_validate(api_replicas, widgets, namespace):
    a, b = api_replicas
    base = f"/apis/{widgets}/v1/namespaces/{namespace}/widgets"
    body = {
        "apiVersion": f"{widgets}/v1",
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"color": "red", "unknown": 1, "extra": {"anything": {"goes": True}}},
    }
    status, _, w = a.request("POST", base, body)
    assert status == 201, w
    assert "unknown" not in w["spec"]  # pruned
    assert w["spec"]["extra"] == {"anything": {"goes": True}}  # preserved
    assert w["spec"]["replicas"] == 1  # defaulted
    assert b.request("GET", f"{base}/w1")[2]["spec"] == w["spec"]  # the other replica too

    for bad, field in [
        ({"color": "green"}, "spec.color"),
        ({"color": "red", "replicas": -1}, "spec.replicas"),
        ({"color": "red", "replicas": "two"}, "spec.replicas"),
        ({"color": "red", "size": "big"}, "spec.size"),
        ({}, "spec.color"),
    ]:
        status, _, out = a.request("POST", base, {**body, "metadata": {"name": "bad"}, "spec": bad})
        assert status == 422, (bad, out)
        assert field in [c["field"] for c in out["details"]["causes"]], out
    assert a.request("GET", f"{base}/bad")[0] == 404

    # the same object through the other served version
    status, _, old = a.request("GET", f"/apis/{widgets}/v1beta1/namespaces/{namespace}/widgets/w1")
    assert status == 200 and old["apiVersion"] == f"{widgets}/v1beta1"


def test_status_and_scale_subresources(api_replicas, widgets, namespace):
    api = api_replicas[0]
    base = f"/apis/{widgets}/v1/namespaces/{namespace}/widgets"
    w = api.request(
        "POST",
        base,
        {
            "metadata": {"name": "s"},
            "spec": {"color": "blue", "replicas": 2},
            "status": {"phase": "ignored on create"},
        },
    )[2]
    assert "status" not in w
    w["status"] = {"phase": "Running", "replicas": 2}
    w["spec"]["replicas"] = 5
    status, _, out = api.request("PUT", f"{base}/s/status", w)
    assert status == 200 and out["status"]["phase"] == "Running"
    assert out["spec"]["replicas"] == 2  # /status changes only status
    out["status"] = {"phase": "Hacked"}
    out["spec"]["color"] = "red"
    status, _, main = api.request("PUT", f"{base}/s", out)
    assert status == 200 and main["status"]["phase"] == "Running"  # main ignores status
    assert main["spec"]["color"] == "red"

    status, _, scale = api.request("GET", f"{base}/s/scale")
    assert status == 200 and scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2
    scale["spec"]["replicas"] = 7
    status, _, scaled = api.request("PUT", f"{base}/s/scale", scale)
    assert status == 200 and scaled["spec"]["replicas"] == 7
    assert api.request("GET", f"{base}/s")[2]["spec"]["replicas"] == 7
    status, _, scaled = api.request(
        "PATCH",
        f"{base}/s/scale",
        {"spec": {"replicas": 3}},
        content_type="application/merge-patch+json",
    )
    assert status == 200 and scaled["spec"]["replicas"] == 3


def test_patches_on_custom_resources(api_replicas, widgets, namespace):
    api = api_replicas[0]
    base = f"/apis/{widgets}/v1/namespaces/{namespace}/widgets"
    api.request("POST", base, {"metadata": {"name": "p"}, "spec": {"color": "blue"}})
    status, _, out = api.request(
        "PATCH",
        f"{base}/p",
        {"spec": {"color": "red"}},
        content_type="application/merge-patch+json",
    )
    assert status == 200 and out["spec"]["color"] == "red"
    status, _, out = api.request(
        "PATCH",
        f"{base}/p",
        [{"op": "replace", "path": "/spec/replicas", "value": 4}],
        content_type="application/json-patch+json",
    )
    assert status == 200 and out["spec"]["replicas"] == 4
    status, _, out = api.request(
        "PATCH",
        f"{base}/p",
        {"spec": {"color": "red"}},
        content_type="application/strategic-merge-patch+json",
    )
    assert status == 415
    status, _, out = api.request(
        "PATCH",
        f"{base}/p",
        {"spec": {"color": "green"}},
        content_type="application/merge-patch+json",
    )
    assert status == 422


def test_crd_cel_rules_are_checked_and_enforced(api_replicas):
    """x-kubernetes-validations: a rule that does not compile refuses the CRD (422 naming the
    rule and the position); served rules refuse objects that break them (422, Kubernetes'
    field errors), transition rules only on updates."""
    api: ApiReplica = api_replicas[0]
    group = f"c{uuid.uuid4().hex[:8]}.example.com"
    body = crd(group)
    spec = body["spec"]["versions"][1]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["x-kubernetes-validations"] = [{"rule": "self.replicas <"}]
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    status, _, out = api.request("POST", path, body)
    assert status == 422 and "x-kubernetes-validations[0].rule" in out["message"], out
    assert "compilation failed: 1:16" in out["message"], out
    # a rule that compiles but does not type-check against the schema is refused too
    spec["x-kubernetes-validations"] = [{"rule": "self.replicsa > 1"}]
    status, _, out = api.request("POST", path, body)
    assert status == 422 and "undefined field 'replicsa'" in out["message"], out
    spec["x-kubernetes-validations"] = [
        {
            "rule": "self.replicas <= 5 || self.color == 'blue'",
            "messageExpression": "'red widgets stop at 5, not %d'.format([self.replicas])",
            "fieldPath": ".replicas",
        },
        {"rule": "self.color == oldSelf.color", "message": "color is immutable"},
    ]
    root = body["spec"]["versions"][1]["schema"]["openAPIV3Schema"]
    root["x-kubernetes-validations"] = [
        {  # Kubernetes' format library, on the object's name
            "rule": "!format.dns1123Label().validate(self.metadata.name).hasValue()",
            "messageExpression": "format.dns1123Label().validate(self.metadata.name).value()[0]",
        }
    ]
    assert api.request("POST", path, body)[0] == 201
    base = f"/apis/{group}/v1/namespaces/default/widgets"
    wait_until(lambda: api.request("GET", base)[0] == 200)
    status, _, out = api.request(
        "POST", base, {"metadata": {"name": "w"}, "spec": {"color": "red", "replicas": 7}}
    )
    assert status == 422 and out["reason"] == "Invalid", out
    (cause,) = out["details"]["causes"]
    assert cause == {
        "reason": "FieldValueInvalid",
        "message": 'Invalid value: "object": red widgets stop at 5, not 7',
        "field": "spec.replicas",
    }
    status, _, out = api.request(
        "POST", base, {"metadata": {"name": "w.x"}, "spec": {"color": "red", "replicas": 3}}
    )
    assert status == 422 and "must not contain dots" in out["message"], out
    obj = {"metadata": {"name": "w"}, "spec": {"color": "red", "replicas": 3}}
    status, _, created = api.request("POST", base, obj)
    assert status == 201, created
    created["spec"]["color"] = "blue"
    status, _, out = api.request("PUT", f"{base}/w", created)
    assert status == 422 and "color is immutable" in out["message"], out
    assert api.request("DELETE", path + f"/widgets.{group}")[0] == 200


CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def _served_widgets(api: ApiReplica, prefix: str) -> tuple[str, str]:
    """The `crd` Widget CRD in a group of its own, once served: (group, the widgets' path in
    the default namespace)."""
    group = f"{prefix}{uuid.uuid4().hex[:8]}.example.com"
    assert api.request("POST", CRDS, crd(group))[0] == 201
    base = f"/apis/{group}/v1/namespaces/default/widgets"
    wait_until(lambda: api.request("GET", base)[0] == 200)
    return group, base


def test_tightened_rules_ratchet_on_unchanged_values(lone_replica):
    """CRDValidationRatcheting: objects stored before a CRD's rules and schema were tightened
    can still be updated where the update leaves the invalid values alone (a label, a status
    write; the rule's error comes back as a warning); changing such a value to another
    invalid one is a 422 naming its field."""
    api: ApiReplica = lone_replica
    group, base = _served_widgets(api, "r")
    w = {"metadata": {"name": "old"}, "spec": {"color": "red", "replicas": 7, "size": "100Mi"}}
    assert api.request("POST", base, w)[0] == 201

    status, _, tightened = api.request("GET", f"{CRDS}/widgets.{group}")
    for version in tightened["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        spec["properties"]["size"]["maxLength"] = 4
        spec["x-kubernetes-validations"] = [
            {"rule": "self.replicas <= 5", "message": "at most 5", "fieldPath": ".replicas"}
        ]
    assert api.request("PUT", f"{CRDS}/widgets.{group}", tightened)[0] == 200
    w2 = {**w, "metadata": {"name": "new"}}
    wait_until(lambda: api.request("POST", base, w2)[0] == 422)  # new objects: the new rules

    _, _, current = api.request("GET", f"{base}/old")
    current["metadata"]["labels"] = {"touched": "yes"}
    status, headers, out = api.request("PUT", f"{base}/old", current)
    assert status == 200, out
    assert "spec.replicas: Invalid value" in headers.get("Warning", ""), headers
    assert "at most 5" in headers.get("Warning", ""), headers
    status, _, out = api.request(
        "PUT", f"{base}/old/status", {**out, "status": {"replicas": 7, "phase": "Running"}}
    )
    assert status == 200, out

    for change, field in (({"replicas": 8}, "spec.replicas"), ({"size": "200Mi"}, "spec.size")):
        _, _, current = api.request("GET", f"{base}/old")
        current["spec"].update(change)
        status, _, out = api.request("PUT", f"{base}/old", current)
        assert status == 422, out
        assert [c["field"] for c in out["details"]["causes"]] == [field], out
    _, _, current = api.request("GET", f"{base}/old")
    current["spec"]["replicas"] = 5  # made valid: fine, and the size still ratchets
    status, headers, out = api.request("PUT", f"{base}/old", current)
    assert status == 200 and "Warning" not in headers, (out, headers)
    assert api.request("DELETE", f"{CRDS}/widgets.{group}")[0] == 200


def test_status_writes_store_the_object_as_read_under_the_current_schema(lone_replica):
    """Review: a /status write stored the object unnormalised, while ratcheting compared it
    with the old one pruned and defaulted, so once a CRD added a default under a node whose
    rule now fails, status writes were 422 (the case ratcheting is for); and unknown fields
    of a status body were stored. Now a subresource write stores the object pruned and
    defaulted, as kube-apiserver decodes it, without counting that as a spec change."""
    api: ApiReplica = lone_replica
    group, base = _served_widgets(api, "s")
    w = {"metadata": {"name": "old"}, "spec": {"color": "red", "replicas": 7}}
    status, _, stored = api.request("POST", base, w)
    assert status == 201, stored

    status, _, tightened = api.request("GET", f"{CRDS}/widgets.{group}")
    for version in tightened["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        spec["properties"]["tier"] = {"type": "string", "default": "gold"}
        spec["x-kubernetes-validations"] = [
            {"rule": "self.replicas <= 5", "message": "at most 5", "fieldPath": ".replicas"}
        ]
    assert api.request("PUT", f"{CRDS}/widgets.{group}", tightened)[0] == 200
    w2 = {**w, "metadata": {"name": "new"}}
    wait_until(lambda: api.request("POST", base, w2)[0] == 422)  # the new rule is in force

    body = {**stored, "status": {"replicas": 7, "phase": "Running", "bogus": 1}}
    body["metadata"] = {"name": "old"}
    status, headers, out = api.request("PUT", f"{base}/old/status", body)
    assert status == 200, out
    assert "at most 5" in headers.get("Warning", ""), headers
    assert out["status"] == {"replicas": 7, "phase": "Running"}  # pruned
    assert out["spec"]["tier"] == "gold"  # defaulted
    assert out["metadata"]["generation"] == stored["metadata"]["generation"]  # no spec change
    _, _, read = api.request("GET", f"{base}/old")
    assert read["status"] == {"replicas": 7, "phase": "Running"}
    assert api.request("DELETE", f"{CRDS}/widgets.{group}")[0] == 200


def gateway_api_crd(name: str) -> dict:
    return yaml.safe_load((DATA / "gateway-api" / f"{name}.yaml").read_text())


def test_gateway_api_crds_and_their_rules(api_replicas):
    """Gateway API's own CRDs (tests/data/gateway-api: 32 CEL rules in the Gateway CRD, 16
    per version) are accepted, and their rules enforced as in Kubernetes."""
    api: ApiReplica = api_replicas[0]
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    for name in ("gatewayclasses", "gateways"):
        status, _, out = api.request("POST", path, gateway_api_crd(name))
        assert status in (201, 409), out
    gw = "/apis/gateway.networking.k8s.io/v1"
    wait_until(lambda: api.request("GET", f"{gw}/namespaces/default/gateways")[0] == 200)
    wait_until(lambda: api.request("GET", f"{gw}/gatewayclasses")[0] == 200)
    name = f"gc-{uuid.uuid4().hex[:6]}"
    gc = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": "example.com/gateway-controller"},
    }
    status, _, created = api.request("POST", f"{gw}/gatewayclasses", gc)
    assert status == 201, created
    created["spec"]["controllerName"] = "example.com/another"
    status, _, out = api.request("PUT", f"{gw}/gatewayclasses/{name}", created)
    assert status == 422, out
    assert out["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": 'Invalid value: "string": field is immutable',
            "field": "spec.controllerName",
        }
    ]
    listeners = [
        {"name": "web", "port": 80, "protocol": "HTTP"},
        {"name": "web", "port": 8080, "protocol": "HTTP"},
    ]
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": f"gw-{uuid.uuid4().hex[:6]}"},
        "spec": {"gatewayClassName": name, "listeners": listeners},
    }
    status, _, out = api.request("POST", f"{gw}/namespaces/default/gateways", gateway)
    assert status == 422, out
    assert "Listener name must be unique within the Gateway" in out["message"], out
    listeners[1]["name"] = "alt"
    status, _, out = api.request("POST", f"{gw}/namespaces/default/gateways", gateway)
    assert status == 201, out


def test_bad_crds_are_refused(api_replicas):
    group = f"b{uuid.uuid4().hex[:8]}.example.com"
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    wrong_name = crd(group)
    wrong_name["metadata"]["name"] = "nope.example.com"
    two_storage = crd(group)
    two_storage["spec"]["versions"][0]["storage"] = True
    no_schema = crd(group)
    del no_schema["spec"]["versions"][1]["schema"]
    for body in (wrong_name, two_storage, no_schema):
        status, _, out = api_replicas[0].request("POST", path, body)
        assert status == 422, out


def test_deleting_a_crd_deletes_its_objects(api_replicas, widgets, namespace):
    api: ApiReplica = api_replicas[0]
    base = f"/apis/{widgets}/v1/namespaces/{namespace}/widgets"
    for n in ("d1", "d2"):
        assert (
            api.request("POST", base, {"metadata": {"name": n}, "spec": {"color": "red"}})[0] == 201
        )
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{widgets}"
    assert api.request("DELETE", path)[0] == 200
    wait_until(lambda: api.request("GET", path)[0] == 404)
    wait_until(lambda: api.request("GET", f"/apis/{widgets}/v1")[0] == 404)
    # recreated, it starts empty: the objects really went
    assert (
        api.request(
            "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd(widgets)
        )[0]
        == 201
    )
    wait_until(lambda: api.request("GET", base)[0] == 200)
    assert api.request("GET", base)[2]["items"] == []


def test_creates_are_refused_while_a_crd_terminates(api_replicas, widgets, namespace):
    api: ApiReplica = api_replicas[0]
    base = f"/apis/{widgets}/v1/namespaces/{namespace}/widgets"
    held = {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}
    assert api.request("POST", base, {**held, "spec": {"color": "red"}})[0] == 201
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{widgets}"
    assert api.request("DELETE", path)[0] == 200
    # the held object keeps the CRD terminating; every replica then refuses creates with 405
    for r in api_replicas:
        wait_until(
            lambda r=r: (
                r.request("POST", base, {"metadata": {"name": "new"}, "spec": {"color": "red"}})[0]
                == 405
            )
        )
    status, _, body = api.request(
        "POST", base, {"metadata": {"name": "new"}, "spec": {"color": "red"}}
    )
    assert status == 405
    assert body["reason"] == "MethodNotAllowed" and "terminating" in body["message"]
    # reads and updates still work; releasing the finalizer lets the CRD go
    assert api.request("GET", f"{base}/held")[0] == 200
    patch = [{"op": "remove", "path": "/metadata/finalizers"}]
    assert api.request("PATCH", f"{base}/held", patch, content_type="application/json-patch+json")[
        0
    ] in (200, 404)
    wait_until(lambda: api.request("GET", path)[0] == 404)


def test_a_crd_with_no_served_version_still_deletes_its_objects(
    api_replicas, widgets, namespace, etcd_cluster
):
    api: ApiReplica = api_replicas[0]
    base = f"/apis/{widgets}/v1/namespaces/{namespace}/widgets"
    assert (
        api.request("POST", base, {"metadata": {"name": "u1"}, "spec": {"color": "red"}})[0] == 201
    )
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{widgets}"
    current = api.request("GET", path)[2]
    for v in current["spec"]["versions"]:
        v["served"] = False
    assert api.request("PUT", path, current)[0] == 200
    wait_until(lambda: api.request("GET", f"/apis/{widgets}/v1")[0] == 404)
    assert api.request("DELETE", path)[0] == 200
    wait_until(lambda: api.request("GET", path)[0] == 404)
    # no object of it is left in etcd
    assert _etcd_keys(etcd_cluster, f"/registry/{widgets}/widgets/") == []


def _etcd_keys(cluster, prefix: str) -> list[bytes]:
    import asyncio

    from haplane.store import EtcdClient

    async def read() -> list[bytes]:
        client = EtcdClient(cluster.endpoints)
        try:
            kvs, _ = await client.range(prefix.encode(), prefix=True)
            return [kv.key for kv in kvs]
        finally:
            await client.close()

    return asyncio.run(read())


def test_python_client_custom_objects_and_kubectl(api_replicas, widgets, namespace, tmp_path):
    import subprocess
    from pathlib import Path

    from kubernetes import client as k8s
    from kubernetes import config as k8s_config
    from kubernetes.client.rest import ApiException

    api = api_replicas[0]
    cfg = k8s.Configuration()
    k8s_config.load_kube_config(str(api.kubeconfig(tmp_path / "kc")), client_configuration=cfg)
    custom = k8s.CustomObjectsApi(k8s.ApiClient(cfg))
    body = {
        "apiVersion": f"{widgets}/v1",
        "kind": "Widget",
        "metadata": {"name": "py"},
        "spec": {"color": "blue", "junk": True},
    }
    created = custom.create_namespaced_custom_object(widgets, "v1", namespace, "widgets", body)
    assert created["spec"] == {"color": "blue", "replicas": 1}
    with pytest.raises(ApiException) as ei:
        custom.create_namespaced_custom_object(
            widgets,
            "v1",
            namespace,
            "widgets",
            {**body, "metadata": {"name": "bad"}, "spec": {"color": "pink"}},
        )
    assert ei.value.status == 422 and "spec.color" in ei.value.body
    listed = custom.list_namespaced_custom_object(widgets, "v1", namespace, "widgets")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["py"]
    status = custom.patch_namespaced_custom_object_status(
        widgets, "v1", namespace, "widgets", "py", {"status": {"phase": "Ready"}}
    )
    assert status["status"] == {"phase": "Ready"}
    # server-side apply through the Python client: the create made the client's User-Agent
    # ("OpenAPI-Generator") own spec.color, so a new color conflicts unless forced
    with pytest.raises(ApiException) as ei:
        custom.patch_namespaced_custom_object(
            widgets,
            "v1",
            namespace,
            "widgets",
            "py",
            {
                "apiVersion": f"{widgets}/v1",
                "kind": "Widget",
                "metadata": {"name": "py"},
                "spec": {"color": "red"},
            },
            field_manager="py-apply",
            _content_type="application/apply-patch+yaml",
        )
    assert ei.value.status == 409 and "OpenAPI-Generator" in ei.value.body
    applied = custom.patch_namespaced_custom_object(
        widgets,
        "v1",
        namespace,
        "widgets",
        "py",
        {
            "apiVersion": f"{widgets}/v1",
            "kind": "Widget",
            "metadata": {"name": "py"},
            "spec": {"color": "red"},
        },
        field_manager="py-apply",
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    assert applied["spec"]["color"] == "red"

    kubectl = Path("/usr/lib/google-cloud-sdk/bin/kubectl.1.32")
    if kubectl.exists():
        r = subprocess.run(
            [
                str(kubectl),
                "--kubeconfig",
                str(tmp_path / "kc"),
                "-n",
                namespace,
                "get",
                f"widgets.{widgets}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert len(r.stdout.splitlines()) >= 2, (r.stdout, r.stderr)
        header, row = r.stdout.splitlines()[:2]
        assert header.split() == ["NAME", "COLOR"] and row.split() == ["py", "red"]
