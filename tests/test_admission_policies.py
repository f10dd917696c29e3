"""ValidatingAdmissionPolicy on real replica processes and real etcd, on the cases
Kubernetes' documentation gives ("Validating Admission Policy"): Deny, Warn (kubectl prints
it), Audit; params by name and by selector with parameterNotFoundAction; matchConditions,
variables, failurePolicy, namespaceSelector and objectSelector, resourceRules with
excludeResourceRules and subresources, reasons as HTTP codes; a policy that does not compile
is refused naming the field; the second replica enforces what the first stored.

The replicas are this module's own, on an etcd of their own; every policy here matches only
objects named with this module's prefix, and is deleted at the end of its test.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster

VAP = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
BINDINGS = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"
PREFIX = f"vap{uuid.uuid4().hex[:6]}"
OURS = f"object.metadata.name.startsWith('{PREFIX}')"  # only this module's objects


def policy(
    name: str, rules: list[dict[str, Any]], validations: list[dict[str, Any]], **spec: Any
) -> dict[str, Any]:
    conditions = [
        {
            "name": "ours",
            "expression": "(object != null ? object : oldObject).metadata.name"
            f".startsWith('{PREFIX}')",
        }
    ]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": f"{PREFIX}-{name}"},
        "spec": {
            "matchConstraints": {"resourceRules": rules},
            "matchConditions": conditions + spec.pop("matchConditions", []),
            "validations": validations,
            **spec,
        },
    }


def binding(name: str, actions: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": f"{PREFIX}-{name}-binding"},
        "spec": {"policyName": f"{PREFIX}-{name}", "validationActions": actions, **spec},
    }


def rule(
    resource: str, group: str = "", ops: tuple[str, ...] = ("CREATE", "UPDATE")
) -> dict[str, Any]:
    return {
        "apiGroups": [group],
        "apiVersions": ["v1"],
        "operations": list(ops),
        "resources": [resource],
    }


class Policies:
    def __init__(self, api: ApiReplica) -> None:
        self.api = api
        self.made: list[str] = []

    def add(self, p: dict[str, Any], b: dict[str, Any]) -> None:
        for path, obj in ((VAP, p), (BINDINGS, b)):
            status, _, out = self.api.request("POST", path, obj)
            assert status == 201, out.get("message")
            self.made.append(f"{path}/{obj['metadata']['name']}")

    def clear(self) -> None:
        for path in reversed(self.made):
            self.api.request("DELETE", path)
        self.made.clear()


@pytest_asyncio.fixture(scope="module")
async def api_replicas(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[ApiReplica]]:
    """Two replicas on an etcd of their own: policies are cluster-wide, and the session's
    shared replicas would also take the shared etcd's controller lease from others."""
    root = tmp_path_factory.mktemp("vap")
    cluster = EtcdCluster(root / "etcd", size=1)
    await cluster.start()
    replicas = [ApiReplica(root, f"vap-{i}", cluster.endpoints) for i in (1, 2)]
    try:
        for r in replicas:
            await r.start()
        yield replicas
    finally:
        for r in replicas:
            await r.stop()
        await cluster.stop()


@pytest.fixture
def namespace(api_replicas: list[ApiReplica]) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    api_replicas[0].request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    return name


@pytest.fixture
def policies(api_replicas: list[ApiReplica]) -> Iterator[Policies]:
    p = Policies(api_replicas[0])
    try:
        yield p
    finally:
        p.clear()


def eventually(attempt: Any, within: float = 10.0) -> Any:
    """The second replica sees a new policy through its watch cache within moments."""
    deadline = time.monotonic() + within
    while True:
        result = attempt()
        if result:
            return result
        assert time.monotonic() < deadline, "not seen in time"
        time.sleep(0.05)


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


OWNER = [
    {
        "expression": "has(object.metadata.labels) && 'owner' in object.metadata.labels",
        "message": "namespaces must carry an owner label",
    }
]


def test_deny_as_kubectl_sees_it(api_replicas: list[ApiReplica], policies: Policies) -> None:
    a, b = api_replicas
    policies.add(policy("owner", [rule("namespaces")], OWNER), binding("owner", ["Deny"]))
    name = f"{PREFIX}-x"
    r = eventually(
        lambda: (
            (
                out := subprocess.run(
                    ["kubectl", "--server", b.url, "create", "namespace", name],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
            ).returncode
            != 0
            and out
        )
    )
    assert (
        f"ValidatingAdmissionPolicy '{PREFIX}-owner' with binding '{PREFIX}-owner-binding' "
        "denied request: namespaces must carry an owner label"
    ) in r.stderr, r.stderr
    status, _, out = a.request("POST", "/api/v1/namespaces", ns(name))
    assert status == 422 and out["reason"] == "Invalid", out
    assert out["message"].startswith(f'namespaces "{name}" is forbidden: ValidatingAdmission')
    assert out["details"]["causes"] == [{"message": out["message"].split("is forbidden: ")[1]}]
    status, _, out = a.request("POST", "/api/v1/namespaces", ns(name, owner="alice"))
    assert status == 201, out
    # an update that drops the label is an UPDATE the rule matches too
    out["metadata"]["labels"] = {}
    assert a.request("PUT", f"/api/v1/namespaces/{name}", out)[0] == 422
    a.request("DELETE", f"/api/v1/namespaces/{name}")


def test_warn_and_audit(api_replicas: list[ApiReplica], policies: Policies, namespace: str) -> None:
    a = api_replicas[0]
    small = [
        {
            "expression": "object.data.size() <= 2",
            "messageExpression": "'%d keys is more than 2'.format([object.data.size()])",
        }
    ]
    policies.add(policy("small", [rule("configmaps")], small), binding("small", ["Warn", "Audit"]))
    cm = {"metadata": {"name": f"{PREFIX}-big"}, "data": {"a": "1", "b": "2", "c": "3"}}
    r = eventually(
        lambda: (
            (
                out := subprocess.run(
                    ["kubectl", "--server", a.url, "create", "-n", namespace, "-f", "-"],
                    input=json.dumps({"apiVersion": "v1", "kind": "ConfigMap", **cm}),
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
            ).returncode
            == 0
            and "Warning:" in out.stderr
            and out
        )
    )
    assert (
        f"Warning: Validation failed for ValidatingAdmissionPolicy '{PREFIX}-small' with binding "
        f"'{PREFIX}-small-binding': 3 keys is more than 2"
    ) in r.stderr, r.stderr
    assert (
        a.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{cm['metadata']['name']}")[0]
        == 200
    )


def test_params_variables_and_match_conditions(
    api_replicas: list[ApiReplica], policies: Policies, namespace: str
) -> None:
    """A param-driven limit: the ConfigMap named by the binding holds the maximum; with none
    found, parameterNotFoundAction decides."""
    a = api_replicas[0]
    limit = [
        {
            "expression": "variables.keys <= int(params.data.maxKeys)",
            "messageExpression": "'%d keys, the limit is %s'"
            ".format([variables.keys, params.data.maxKeys])",
            "reason": "Forbidden",
        }
    ]
    p = policy(
        "limit",
        [rule("configmaps")],
        limit,
        paramKind={"apiVersion": "v1", "kind": "ConfigMap"},
        variables=[{"name": "keys", "expression": "object.data.size()"}],
    )
    # the parameters themselves are no object the policy checks (labelled apart)
    apart = {"matchExpressions": [{"key": "params", "operator": "DoesNotExist"}]}
    p["spec"]["matchConstraints"]["objectSelector"] = apart
    ref = {"name": f"{PREFIX}-params", "namespace": namespace, "parameterNotFoundAction": "Deny"}
    policies.add(p, binding("limit", ["Deny"], paramRef=ref))
    big = {"metadata": {"name": f"{PREFIX}-c1"}, "data": {"a": "1", "b": "2"}}
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    out = eventually(lambda: (r := a.request("POST", base, big))[0] == 422 and r[2])
    assert (
        "no params found for policy binding with `Deny` parameterNotFoundAction" in out["message"]
    ), out
    params = {
        "metadata": {"name": f"{PREFIX}-params", "labels": {"params": "yes"}},
        "data": {"maxKeys": "1"},
    }
    assert a.request("POST", base, params)[0] == 201
    _, _, out = eventually(lambda: (r := a.request("POST", base, big))[0] == 403 and r)
    assert "2 keys, the limit is 1" in out["message"] and out["reason"] == "Forbidden", out
    big["data"].pop("b")
    assert a.request("POST", base, big)[0] == 201


def test_selectors_failure_policy_and_compile_errors(
    api_replicas: list[ApiReplica], policies: Policies
) -> None:
    a = api_replicas[0]
    # an expression that fails: Fail denies, Ignore lets it through
    broken = [{"expression": "object.data.missing == 'x'"}]
    p = policy("broken", [rule("configmaps")], broken, failurePolicy="Ignore")
    p["spec"]["matchConstraints"]["namespaceSelector"] = {"matchLabels": {"env": PREFIX}}
    policies.add(p, binding("broken", ["Deny"]))
    strict = policy("strict", [rule("configmaps")], broken, failurePolicy="Fail")
    strict["spec"]["matchConstraints"]["objectSelector"] = {"matchLabels": {"strict": "yes"}}
    policies.add(strict, binding("strict", ["Deny"]))
    for name, labels in ((f"{PREFIX}-sel", {"env": PREFIX}), (f"{PREFIX}-other", {})):
        assert a.request("POST", "/api/v1/namespaces", ns(name, **labels))[0] == 201
    try:
        cm = {"metadata": {"name": f"{PREFIX}-cm", "labels": {"strict": "yes"}}, "data": {}}
        out = eventually(
            lambda: (
                (r := a.request("POST", f"/api/v1/namespaces/{PREFIX}-other/configmaps", cm))[0]
                == 422
                and r[2]
            )
        )
        assert "expression 'object.data.missing == 'x'' resulted in error" in out["message"], out
        cm["metadata"]["labels"] = {}  # the strict policy's objectSelector no longer matches
        assert (
            a.request("POST", f"/api/v1/namespaces/{PREFIX}-sel/configmaps", cm)[0] == 201
        )  # Ignore
    finally:
        for name in (f"{PREFIX}-sel", f"{PREFIX}-other"):
            a.request("DELETE", f"/api/v1/namespaces/{name}")
    # a policy whose expression does not compile is refused, naming the field and position
    bad = policy("bad", [rule("configmaps")], [{"expression": "object.data.size( <"}])
    status, _, out = a.request("POST", VAP, bad)
    assert status == 422 and "spec.validations[0].expression" in out["message"], out
    assert "compilation failed: 1:" in out["message"]
    bad = binding("bad", ["Deny", "Warn"])
    status, _, out = a.request("POST", BINDINGS, bad)
    assert status == 422 and "Deny and Warn" in out["message"], out


def test_rules_exclude_and_delete(
    api_replicas: list[ApiReplica], policies: Policies, namespace: str
) -> None:
    """DELETE matched by its own rule (object null, oldObject the deleted one);
    excludeResourceRules take a resource back out."""
    a = api_replicas[0]
    keep = [
        {
            "expression": "!has(oldObject.metadata.labels)"
            " || !('keep' in oldObject.metadata.labels)",
            "message": "labelled keep",
        }
    ]
    p = policy(
        "keep", [rule("configmaps", ops=("DELETE",)), rule("secrets", ops=("DELETE",))], keep
    )
    p["spec"]["matchConstraints"]["excludeResourceRules"] = [rule("secrets", ops=("*",))]
    policies.add(p, binding("keep", ["Deny"]))
    base = f"/api/v1/namespaces/{namespace}"
    for kind in ("configmaps", "secrets"):
        body = {"metadata": {"name": f"{PREFIX}-k", "labels": {"keep": "1"}}}
        assert a.request("POST", f"{base}/{kind}", body)[0] == 201
    out = eventually(
        lambda: (r := a.request("DELETE", f"{base}/configmaps/{PREFIX}-k"))[0] == 422 and r[2]
    )
    assert "labelled keep" in out["message"], out
    assert a.request("DELETE", f"{base}/secrets/{PREFIX}-k")[0] == 200  # excluded


def test_request_dry_run_is_what_the_client_asked(
    api_replicas: list[ApiReplica], policies: Policies, namespace: str
) -> None:
    """`request.dryRun` is true for ?dryRun=All (create, apply, delete), false otherwise."""
    a = api_replicas[0]
    only_dry = [{"expression": "!request.dryRun", "message": "a dry run"}]
    policies.add(
        policy("dry", [rule("configmaps", ops=("CREATE", "UPDATE", "DELETE"))], only_dry),
        binding("dry", ["Deny"]),
    )
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    cm = {"metadata": {"name": f"{PREFIX}-dry"}, "data": {"a": "1"}}
    out = eventually(lambda: (r := a.request("POST", path + "?dryRun=All", cm))[0] == 422 and r[2])
    assert "a dry run" in out["message"]
    assert a.request("POST", path, cm)[0] == 201
    status, _, out = a.request(
        "PATCH",
        f"{path}/{PREFIX}-dry?dryRun=All&fieldManager=t",
        {"apiVersion": "v1", "kind": "ConfigMap", **cm},
        content_type="application/apply-patch+yaml",
    )
    assert status == 422, out
    assert a.request("DELETE", f"{path}/{PREFIX}-dry?dryRun=All")[0] == 422
    assert a.request("DELETE", f"{path}/{PREFIX}-dry")[0] == 200


def test_a_generated_name_is_not_the_requests(
    api_replicas: list[ApiReplica], policies: Policies, namespace: str
) -> None:
    """A create named from generateName: `request.name` and the requestResource check's
    name are empty, as Kubernetes gives them (the name is made after the request's); the
    object has its generated name. A name the request gave is the request's."""
    a = api_replicas[0]
    empty = [
        {
            "expression": "request.name == '' && authorizer.requestResource.name == '' "
            "&& object.metadata.name.startsWith(object.metadata.generateName) "
            "&& object.metadata.name != object.metadata.generateName",
            "messageExpression": "'asked for ' + request.name",
        }
    ]
    policies.add(policy("gen", [rule("configmaps")], empty), binding("gen", ["Deny"]))
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    named = {"metadata": {"name": f"{PREFIX}-named"}, "data": {"a": "1"}}
    out = eventually(lambda: (r := a.request("POST", path, named))[0] == 422 and r[2])
    assert f'"{PREFIX}-named" is forbidden' in out["message"]
    assert f"asked for {PREFIX}-named" in out["message"]  # a name given is the request's
    generated = {"metadata": {"generateName": f"{PREFIX}-gen-"}, "data": {"a": "1"}}
    status, _, made = a.request("POST", path, generated)
    assert status == 201, made
    assert made["metadata"]["name"].startswith(f"{PREFIX}-gen-")
    a.request("DELETE", f"{path}/{made['metadata']['name']}")
