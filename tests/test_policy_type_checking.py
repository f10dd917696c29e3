"""ValidatingAdmissionPolicy type checking (haplane.api.policy_type_checking): each expression
checked against the schemas of the kinds the policy matches, on the cases of Kubernetes' own
tests (typechecking_test.go: undefined field, type mismatch, params, messageExpression,
variables, an untyped schema, wildcards); then on a real replica, where the leading
replica's controller writes `status.typeChecking` and `status.observedGeneration`."""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

from haplane.api.crds import resource_types_for
from haplane.api.policy_type_checking import expression_warnings
from haplane.api.resources import Registry
from haplane.local.api_replica import ApiReplica
from tests.test_api_crds import crd

GROUP = "typing.example.com"
WIDGET_CRD = crd(GROUP)  # widgets: spec.color (a string), spec.replicas (an integer), ...


def registry() -> Registry:
    r = Registry()
    for t in resource_types_for(WIDGET_CRD):
        r.add(t)
    return r


def rule(resource: str, group: str = "", version: str = "v1") -> dict[str, Any]:
    return {
        "apiGroups": [group],
        "apiVersions": [version],
        "operations": ["CREATE", "UPDATE"],
        "resources": [resource],
    }


def spec(*expressions: str, rules: list[dict[str, Any]] | None = None, **more: Any) -> dict:
    return {
        "spec": {
            "matchConstraints": {"resourceRules": rules or [rule("widgets", GROUP)]},
            "validations": [{"expression": e} for e in expressions],
            **more,
        }
    }


def warnings(policy: dict[str, Any]) -> list[tuple[str, str]]:
    return [(w["fieldRef"], w["warning"]) for w in expression_warnings(policy, registry())]


def test_a_correct_expression_has_no_warning() -> None:
    assert warnings(spec("object.spec.replicas <= 5 && object.metadata.name != ''")) == []
    assert warnings({"spec": {}}) == []


def test_a_misspelt_field_is_named_with_the_kind_and_a_caret() -> None:
    ((field, text),) = warnings(spec("object.spec.replicsa <= 5"))
    assert field == "spec.validations[0].expression"
    assert text == (
        f"{GROUP}/v1, Kind=Widget: ERROR: <input>:1:12: undefined field 'replicsa' not found "
        "in struct 'Widget.Spec'\n"
        " | object.spec.replicsa <= 5\n"
        " | ...........^"
    )


def test_a_type_mismatch_and_only_the_expressions_that_fail() -> None:
    got = warnings(spec("object.spec.color == 'red'", "object.spec.color == 3"))
    assert [f for f, _ in got] == ["spec.validations[1].expression"]
    assert "found no matching overload for '_==_' applied to '(string, int)'" in got[0][1]


def test_message_expressions_match_conditions_and_audit_annotations() -> None:
    policy = spec(
        "object.spec.replicas < 10",
        matchConditions=[{"name": "colored", "expression": "has(object.spec.colour)"}],
        auditAnnotations=[{"key": "r", "valueExpression": "object.spec.replcas"}],
    )
    policy["spec"]["validations"][0]["messageExpression"] = "'too many: ' + object.spec.replicas"
    got = warnings(policy)
    assert [f for f, _ in got] == [
        "spec.matchConditions[0].expression",
        "spec.validations[0].messageExpression",
        "spec.auditAnnotations[0].valueExpression",
    ]
    assert "applied to '(string, int)'" in got[1][1]


def test_params_are_typed_by_param_kind() -> None:
    with_params = spec(
        "object.spec.color == params.data.colour",
        paramKind={"apiVersion": "v1", "kind": "ConfigMap"},
    )
    assert warnings(with_params) == []
    wrong = spec(
        "object.spec.color == params.dta.colour",
        paramKind={"apiVersion": "v1", "kind": "ConfigMap"},
    )
    ((field, text),) = warnings(wrong)
    assert field == "spec.validations[0].expression"
    assert "undefined field 'dta' not found in struct 'ConfigMap'" in text
    # a param kind with no schema here (RBAC's) is dyn: nothing to say
    untyped = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role"}
    assert warnings(spec("params.anything == object.spec.color", paramKind=untyped)) == []


def test_variables_carry_their_types() -> None:
    variables = [
        {"name": "size", "expression": "object.spec.replicas"},
        {"name": "name", "expression": "'something'"},
        {"name": "broken", "expression": "object.spec.colr"},
    ]
    got = warnings(
        spec(
            "variables.size < 10",
            "variables.nonExisting",
            "variables.name == variables.size",
            "variables.broken.anything == 1",  # a variable that does not check is dyn
            variables=variables,
        )
    )
    assert [f for f, _ in got] == [
        "spec.variables[2].expression",
        "spec.validations[1].expression",
        "spec.validations[2].expression",
    ]
    assert "undeclared reference to 'variables.nonExisting'" in got[1][1]
    assert "applied to '(string, int)'" in got[2][1]


def test_request_and_namespace_object_are_typed() -> None:
    got = warnings(
        spec("request.operaton == 'CREATE'", "namespaceObject.metadata.lables.size() > 0")
    )
    assert [f for f, _ in got] == [
        "spec.validations[0].expression",
        "spec.validations[1].expression",
    ]
    assert "undefined field 'operaton' not found in struct 'AdmissionRequest'" in got[0][1]
    assert "undefined field 'lables'" in got[1][1]


def test_no_warning_without_a_schema_or_with_wildcards() -> None:
    roles = rule("roles", "rbac.authorization.k8s.io")
    assert warnings(spec("object.whatever == 1", rules=[roles])) == []
    wildcard = rule("widgets", GROUP)
    wildcard["apiVersions"] = ["*"]
    assert warnings(spec("object.whatever == 1", rules=[wildcard])) == []
    everything = rule("*", GROUP)
    assert warnings(spec("object.whatever == 1", rules=[everything])) == []


def test_each_kind_matched_is_a_line_of_the_warning() -> None:
    rules = [rule("widgets", GROUP), rule("configmaps")]
    ((field, text),) = warnings(spec("object.spec.replicas > 0", rules=rules))
    # a ConfigMap has no spec: one line, for it; sorted by group, version and kind
    assert field == "spec.validations[0].expression"
    assert text.startswith("/v1, Kind=ConfigMap: ERROR: <input>:1:7: undefined field 'spec'")
    ((_, text),) = warnings(spec("object.metadata.nme == ''", rules=rules))
    lines = [line for line in text.splitlines() if "Kind=" in line]
    assert [line.split(":")[0] for line in lines] == [
        "/v1, Kind=ConfigMap",
        f"{GROUP}/v1, Kind=Widget",
    ]


# ---- on a real replica -------------------------------------------------------------------

VAP = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"


def checked_status(api: ApiReplica, name: str, generation: int, within: float = 30.0) -> dict:
    deadline = time.monotonic() + within
    while True:
        status, _, body = api.request("GET", f"{VAP}/{name}")
        assert status == 200, body
        if (body.get("status") or {}).get("observedGeneration") == generation:
            return dict(body["status"])
        assert time.monotonic() < deadline, f"status not written: {body.get('status')}"
        time.sleep(0.1)


def test_the_status_through_the_api(lone_replica: ApiReplica) -> None:
    replica = lone_replica
    status, _, body = replica.request(
        "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", WIDGET_CRD
    )
    assert status == 201, body
    name = f"typed-{uuid.uuid4().hex[:6]}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        **copy.deepcopy(spec("object.spec.replicsa <= 5")),
    }
    status, _, body = replica.request("POST", VAP, policy)
    assert status == 201, body  # a warning never refuses the policy
    got = checked_status(replica, name, 1)
    (warning,) = got["typeChecking"]["expressionWarnings"]
    assert warning["fieldRef"] == "spec.validations[0].expression"
    assert "undefined field 'replicsa' not found in struct 'Widget.Spec'" in warning["warning"]
    # fixed: the next generation is checked again, and has nothing to say
    _, _, body = replica.request("GET", f"{VAP}/{name}")
    body["spec"]["validations"][0]["expression"] = "object.spec.replicas <= 5"
    status, _, body = replica.request("PUT", f"{VAP}/{name}", body)
    assert status == 200, body
    assert checked_status(replica, name, 2)["typeChecking"] == {}
    # a kind with no schema: checked, nothing to say
    untyped = {
        **policy,
        "metadata": {"name": f"{name}-roles"},
        **spec("object.whatever == 1", rules=[rule("roles", "rbac.authorization.k8s.io")]),
    }
    status, _, body = replica.request("POST", VAP, untyped)
    assert status == 201, body
    assert checked_status(replica, f"{name}-roles", 1)["typeChecking"] == {}


# ---- a status the controller did not write ---------------------------------------------------


def test_a_status_of_the_wrong_shape_is_refused_and_observes_nothing() -> None:
    """Review: a /status write of observedGeneration "x" or [] was accepted (the policy's
    validation did not look at its status) and the controller's int() of it raised every
    round. Now such a status is a 422, and one stored before observes no generation."""
    from haplane.api.controllers import policy_generation_to_check
    from haplane.api.policy_types import PolicyStrategy

    policy: dict[str, Any] = {"metadata": {"name": "p", "generation": 3}, **spec("true")}
    assert PolicyStrategy().validate(policy) == []
    for bad in ("x", [], -1, True, 1.5):
        policy["status"] = {"observedGeneration": bad}
        (err,) = PolicyStrategy().validate(policy)
        assert err.field == "status.observedGeneration", err
        assert policy_generation_to_check(policy) == 3
    policy["status"] = {"typeChecking": {"expressionWarnings": [{"fieldRef": "x"}, "w"]}}
    fields = [e.field for e in PolicyStrategy().validate(policy)]
    assert fields == [
        "status.typeChecking.expressionWarnings[0].warning",
        "status.typeChecking.expressionWarnings[1]",
    ]
    policy["status"] = {"typeChecking": [], "observedGeneration": 3}
    assert [e.field for e in PolicyStrategy().validate(policy)] == ["status.typeChecking"]
    assert policy_generation_to_check(policy) is None
    policy["status"] = "x"
    assert policy_generation_to_check(policy) == 3
    assert policy_generation_to_check({"metadata": {"generation": "2"}}) == 1


def test_warnings_are_capped_to_fit_in_etcd(monkeypatch) -> None:
    """Review: 2,000 failing expressions made a status of 1.59 MB, over etcd's request
    limit. A warning is cut at MAX_WARNING_CHARS and the warnings stop at MAX_TOTAL_CHARS,
    which a last warning on `spec` says."""
    from haplane.api import policy_type_checking

    monkeypatch.setattr(policy_type_checking, "MAX_WARNING_CHARS", 300)
    monkeypatch.setattr(policy_type_checking, "MAX_TOTAL_CHARS", 1000)
    long = "object.spec.replicsa <= 1" + " " * 400 + "+ 1"
    got = expression_warnings(
        {"spec": spec(long, *["object.spec.colour == 'red'"] * 20)["spec"]}, registry()
    )
    assert got[0]["fieldRef"] == "spec.validations[0].expression"
    assert got[0]["warning"].endswith("more characters left out)")
    assert len(got[0]["warning"]) < 360
    *shown, last = got
    assert sum(len(w["warning"]) for w in shown) <= 1000
    assert last["fieldRef"] == "spec"
    assert last["warning"].startswith(f"{21 - len(shown)} more expressions with warnings")


def test_policies_given_up_on_are_forgotten_once_gone_or_changed() -> None:
    """Review: the controller's set of policies it gave up on (a status write refused, a
    checking that raised) only grew."""
    from haplane.api.controllers import still_given_up

    def policy(uid: str, generation: int, observed: int = 0) -> dict[str, Any]:
        status = {"observedGeneration": observed}
        return {"metadata": {"uid": uid, "generation": generation}, "status": status}

    given_up = {("a", 1), ("b", 1), ("c", 2), ("d", 1)}
    now = [policy("a", 1), policy("b", 2), policy("c", 2, observed=2)]  # d deleted
    assert still_given_up(given_up, now) == {("a", 1)}
