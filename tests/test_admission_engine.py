"""The validating admission policy engine (haplane.api.admission_policies) on plain data: the
Audit action's annotation and auditAnnotations, rule matching with wildcards and
subresources, a binding's own matchResources narrowing its policy, a binding to a policy
that does not exist, variables that fail only what uses them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from haplane.api import errors
from haplane.api.admission_compiled import _resource
from haplane.api.admission_policies import NOTES, Attributes, Notes, PolicyEngine
from haplane.api.resources import BUILTIN
from haplane.auth.user import UserInfo

CONFIGMAPS = next(t for t in BUILTIN if t.plural == "configmaps")
ALICE = UserInfo("alice", groups=("dev",))


def engine(policies: list[dict[str, Any]], bindings: list[dict[str, Any]]) -> PolicyEngine:
    return PolicyEngine(lambda: policies, lambda: bindings, lambda _n: None, lambda *_: [])


def vap(name: str, validations: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    rules = [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["*"], "resources": ["configmaps"]}
    ]
    return {
        "metadata": {"name": name},
        "spec": {"matchConstraints": {"resourceRules": rules}, "validations": validations, **spec},
    }


def vapb(policy: str, actions: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{policy}-b"},
        "spec": {"policyName": policy, "validationActions": actions, **spec},
    }


def cm(name: str = "c", **data: str) -> Attributes:
    obj = {"metadata": {"name": name, "namespace": "ns", "labels": {"team": "a"}}, "data": data}
    return Attributes("CREATE", CONFIGMAPS, "ns", name, obj, None, ALICE)


def admitted(e: PolicyEngine, a: Attributes) -> Notes:
    notes = Notes()
    token = NOTES.set(notes)
    try:
        e.admit(a)
    finally:
        NOTES.reset(token)
    return notes


def test_audit_action_and_audit_annotations() -> None:
    p = vap(
        "p",
        [{"expression": "object.data.size() < 1", "message": "too many"}],
        auditAnnotations=[
            {
                "key": "who",
                "valueExpression": "request.userInfo.username + ' made ' + object.metadata.name",
            }
        ],
    )
    notes = admitted(engine([p], [vapb("p", ["Audit"])]), cm(a="1"))
    assert notes.warnings == []
    assert notes.annotations["p/who"] == "alice made c"
    (failure,) = json.loads(
        notes.annotations["validation.policy.admission.k8s.io/validation_failure"]
    )
    assert failure == {
        "message": "too many",
        "policy": "p",
        "binding": "p-b",
        "expressionIndex": 0,
        "validationActions": ["Audit"],
    }


def test_binding_match_resources_narrow_and_missing_policy_is_skipped() -> None:
    p = vap("p", [{"expression": "false"}])
    only_b = {
        "resourceRules": p["spec"]["matchConstraints"]["resourceRules"],
        "objectSelector": {"matchLabels": {"team": "b"}},
    }
    e = engine([p], [vapb("p", ["Deny"], matchResources=only_b), vapb("nothere", ["Deny"])])
    admitted(e, cm())  # team a: the binding does not match
    with pytest.raises(errors.StatusError):
        admitted(engine([p], [vapb("p", ["Deny"])]), cm())


def test_a_failing_variable_fails_only_what_uses_it() -> None:
    p = vap(
        "p",
        [{"expression": "object.data.size() == 0"}, {"expression": "variables.bad == 1"}],
        variables=[{"name": "bad", "expression": "object.nosuchfield"}],
        failurePolicy="Fail",
    )
    with pytest.raises(errors.StatusError) as caught:
        admitted(engine([p], [vapb("p", ["Deny"])]), cm())
    assert "variable 'bad'" in caught.value.message, caught.value.message
    p["spec"]["validations"].pop()
    admitted(engine([p], [vapb("p", ["Deny"])]), cm())  # unused: nothing fails


@pytest.mark.parametrize(
    ("patterns", "sub", "expected"),
    [
        (["configmaps"], "", True),
        (["configmaps"], "status", False),
        (["configmaps/status"], "status", True),
        (["*"], "", True),
        (["*"], "status", False),
        (["*/*"], "status", True),
        (["configmaps/*"], "status", True),
        (["*/status"], "status", True),
        (["secrets"], "", False),
    ],
)
def test_resource_patterns(patterns: list[str], sub: str, expected: bool) -> None:
    assert _resource(patterns, "configmaps", sub) is expected


def test_review_cases_selector_only_bindings_cluster_params_and_deletes() -> None:
    """A binding's matchResources with selectors only narrows its policy (empty rules: all
    the policy matches); a namespaced paramKind for a cluster-scoped object without
    paramRef.namespace is a configuration error, never params from every namespace; on a
    delete the missing new object matches no objectSelector."""
    from haplane.api.admission_policies import select_params

    p = vap("p", [{"expression": "false", "message": "no"}])
    selected = {"objectSelector": {"matchLabels": {"team": "a"}}}
    with pytest.raises(errors.StatusError):
        admitted(engine([p], [vapb("p", ["Deny"], matchResources=selected)]), cm())
    with pytest.raises(ValueError, match="namespaced paramKind"):
        select_params([{"metadata": {"name": "x", "namespace": "t2"}}], True, None, "x", None)
    deny = {
        "objectSelector": {"matchExpressions": [{"key": "protected", "operator": "DoesNotExist"}]}
    }
    p = vap("d", [{"expression": "false", "message": "no"}])
    p["spec"]["matchConstraints"].update(deny)
    old = {"metadata": {"name": "c", "namespace": "ns", "labels": {"protected": "yes"}}}
    admitted(
        engine([p], [vapb("d", ["Deny"])]),
        Attributes("DELETE", CONFIGMAPS, "ns", "c", None, old, ALICE),
    )


def test_the_authorizer_variable_asks_as_the_request_or_a_service_account() -> None:
    """Kubernetes' authorizer library: each check becomes one authorization question, for
    the request's user or the ServiceAccount named; `requestResource` is the request's own
    resource; a decision carries allowed, reason, errored and error."""
    from haplane.auth.user import Attributes as Question

    asked: list[Question] = []

    def authorize(q: Question) -> tuple[bool, str, str]:
        asked.append(q)
        return q.verb in ("get", "create"), f"because {q.verb}", ""

    checks = [
        "authorizer.group('apps').resource('deployments').subresource('scale')"
        ".namespace('ns').name('web').check('get').allowed()",
        "authorizer.group('').resource('secrets').check('delete').allowed() == false",
        "authorizer.group('').resource('secrets').check('delete').reason() == 'because delete'",
        "!authorizer.path('/metrics').check('get').errored()",
        "authorizer.serviceAccount('ns', 'builder').group('').resource('pods').check('get')"
        ".allowed()",
        "authorizer.requestResource.check('create').allowed()",
    ]
    e = PolicyEngine(
        lambda: [vap("p", [{"expression": c} for c in checks])],
        lambda: [vapb("p", ["Deny"])],
        lambda _n: None,
        lambda *_: [],
        authorize=authorize,
    )
    admitted(e, cm("web"))
    deployments, secrets, path, sa, request = asked  # the same question asked once
    assert (deployments.user, deployments.groups) == ("alice", ("dev",))
    assert (deployments.api_group, deployments.resource, deployments.subresource) == (
        "apps",
        "deployments",
        "scale",
    )
    assert (deployments.namespace, deployments.name, deployments.verb) == ("ns", "web", "get")
    assert (secrets.namespace, secrets.name, secrets.verb) == ("", "", "delete")
    assert not path.resource_request and (path.path, path.verb) == ("/metrics", "get")
    assert sa.user == "system:serviceaccount:ns:builder"
    # as Kubernetes' ServiceAccountInfo.UserInfo(): no system:authenticated
    assert sa.groups == ("system:serviceaccounts", "system:serviceaccounts:ns")
    assert (request.resource, request.namespace, request.name, request.user) == (
        "configmaps",
        "ns",
        "web",
        "alice",
    )
    assert (request.api_group, request.subresource, request.resource_request) == ("", "", True)


def _authz_engine(checks: list[str], authorize: Any, **spec: Any) -> PolicyEngine:
    return PolicyEngine(
        lambda: [vap("p", [{"expression": c} for c in checks], **spec)],
        lambda: [vapb("p", ["Deny"])],
        lambda _n: None,
        lambda *_: [],
        authorize=authorize,
    )


def test_authorizer_checks_are_bounded_validated_and_asked_once() -> None:
    """At most CHECKS_PER_BINDING checks per binding (Kubernetes' cost budget), each
    question asked once per request; a ServiceAccount's names and an empty path or resource
    are evaluation errors, as in Kubernetes."""
    from haplane.api.admission_policies import CHECKS_PER_BINDING

    asked: list[Any] = []

    def authorize(q: Any) -> tuple[bool, str, str]:
        asked.append(q)
        return True, "", ""

    same = "authorizer.group('').resource('pods').check('get').allowed()"
    admitted(_authz_engine([same, same, same], authorize), cm())
    assert len(asked) == 1
    many = (
        f"[{','.join(str(i) for i in range(CHECKS_PER_BINDING + 1))}].all(i, "
        "authorizer.group('').resource('pods').name(string(i)).check('get').allowed())"
    )
    with pytest.raises(errors.StatusError) as caught:
        admitted(_authz_engine([many], authorize, failurePolicy="Fail"), cm())
    assert "authorization checks in one binding" in caught.value.message
    for bad, why in (
        ("authorizer.serviceAccount('a/b', 'c')", "invalid service account namespace"),
        ("authorizer.serviceAccount('ns', 'Not@Valid')", "invalid service account name"),
        ("authorizer.path(' ')", "path must not be empty"),
        ("authorizer.group('').resource('')", "resource must not be empty"),
    ):
        expression = f"{bad} == {{}}"
        with pytest.raises(errors.StatusError) as caught:
            admitted(_authz_engine([expression], authorize, failurePolicy="Fail"), cm())
        assert why in caught.value.message, (bad, caught.value.message)


def test_variables_are_worked_out_only_when_read_and_once() -> None:
    """As Kubernetes' lazy variables: a variable no expression reads is never evaluated (its
    authorization question is not asked, nor charged to the binding's budget); one read by
    several expressions, or through another variable, is evaluated once."""
    asked: list[str] = []

    def authorize(q: Any) -> tuple[bool, str, str]:
        asked.append(q.resource)
        return True, "", ""

    def check(resource: str) -> str:
        return f"authorizer.group('').resource('{resource}').check('get').allowed()"

    variables = [
        {"name": "unused", "expression": check("secrets")},
        {"name": "pods", "expression": check("pods")},
        {"name": "both", "expression": f"variables.pods && {check('services')}"},
        {"name": "failing", "expression": "object.data.nosuch == 'x'"},
    ]
    e = _authz_engine(
        ["variables.pods", "variables.both", "variables.pods == variables.both"],
        authorize,
        variables=variables,
    )
    admitted(e, cm())
    assert asked == ["pods", "services"]
    # a variable that fails fails only what reads it, and names itself
    e = _authz_engine(
        ["variables.pods", "variables.failing"],
        authorize,
        variables=variables,
        failurePolicy="Fail",
    )
    with pytest.raises(errors.StatusError) as caught:
        admitted(e, cm())
    assert "variable 'failing'" in caught.value.message


def test_selectors_on_a_check_compile_and_leave_the_rbac_question_unchanged() -> None:
    """fieldSelector()/labelSelector() (Kubernetes 1.31+): a policy using them compiles and
    runs; RBAC decides without them (as Kubernetes' does), so the question asked is the one
    without selectors, and a selector that does not parse is ignored, not an error."""
    asked: list[Any] = []

    def authorize(q: Any) -> tuple[bool, str, str]:
        asked.append(q)
        return q.verb == "list", "", ""

    for selectors in (
        ".fieldSelector('spec.nodeName=n1')",
        ".labelSelector('app in (web,db)')",
        ".fieldSelector('not a selector ((').labelSelector('&')",
    ):
        asked.clear()
        allowed = f"authorizer.group('').resource('pods'){selectors}.check('list').allowed()"
        admitted(_authz_engine([allowed], authorize, failurePolicy="Fail"), cm())
        (question,) = asked
        assert (question.verb, question.resource, question.name) == ("list", "pods", "")
        denied = f"authorizer.group('').resource('pods'){selectors}.check('get').allowed()"
        with pytest.raises(errors.StatusError) as caught:
            admitted(_authz_engine([denied], authorize), cm())
        assert "denied request" in caught.value.message
    grouped = "authorizer.group('').fieldSelector('a=b') == {}"
    with pytest.raises(errors.StatusError) as caught:  # a GroupCheck has no selectors
        admitted(_authz_engine([grouped], authorize, failurePolicy="Fail"), cm())
    assert "expected a ResourceCheck" in caught.value.message


def test_a_check_while_the_authorizer_reloads_is_a_503() -> None:
    """Never a decision from a partial view: whether the policy would deny or allow, the
    request gets 503 and is retried."""
    from haplane.api.admission_policies import AuthorizerNotReady

    def authorize(q: Any) -> tuple[bool, str, str]:
        raise AuthorizerNotReady("the RBAC caches are loading")

    for expression in (
        "authorizer.group('').resource('pods').check('get').allowed()",  # would deny
        "!authorizer.group('').resource('pods').check('get').allowed()",  # would allow
    ):
        with pytest.raises(errors.StatusError) as caught:
            admitted(_authz_engine([expression], authorize), cm())
        assert caught.value.code == 503, caught.value.message


def test_an_authorizer_check_without_an_authorizer_is_an_error_decision() -> None:
    """No authorizer (a background audit): the decision is errored, never allowed; a value
    of the wrong kind is an evaluation error, which failurePolicy Fail turns into a denial."""
    p = vap(
        "p",
        [
            {
                "expression": "authorizer.group('').resource('x').check('get').errored() && "
                "!authorizer.group('').resource('x').check('get').allowed()",
                "message": "allowed without an authorizer",
            }
        ],
    )
    admitted(engine([p], [vapb("p", ["Deny"])]), cm())
    forged = vap("f", [{"expression": "{'a': 1}.check('get').allowed()"}], failurePolicy="Fail")
    with pytest.raises(errors.StatusError) as caught:
        admitted(engine([forged], [vapb("f", ["Deny"])]), cm())
    assert "expected a PathCheck or a ResourceCheck" in caught.value.message, caught.value.message


def test_variables_read_through_macros_and_only_earlier_ones() -> None:
    """A macro or method on `variables` (`variables.exists(...)`, `variables.size()`) reads
    them all; a variable sees only those declared before it (Kubernetes refuses a forward
    reference), whatever order the expressions run in; a failure is blamed on a variable
    the expression reads, not on one whose name is a prefix."""

    def engine_with(validations: list[str], variables: list[dict[str, str]]) -> PolicyEngine:
        return _authz_engine(
            [*validations, "authorizer.group('').resource('pods').check('get').allowed()"],
            lambda _q: (True, "", ""),
            variables=variables,
            failurePolicy="Fail",
        )

    two = [{"name": "x", "expression": "1"}, {"name": "y", "expression": "2"}]
    for reads_all in ("variables.exists(k, k == 'x')", "variables.size() == 2"):
        admitted(engine_with([reads_all], two), cm())
    forward = [{"name": "a", "expression": "variables.b + 1"}, {"name": "b", "expression": "1"}]
    for order in (["variables.a == 2"], ["variables.b == 1", "variables.a == 2"]):
        with pytest.raises(errors.StatusError) as caught:
            admitted(engine_with(order, forward), cm())
        assert "variable 'a'" in caught.value.message, order
    prefix = [
        {"name": "a", "expression": "object.data.nosuch"},
        {"name": "ab", "expression": "1"},
    ]
    with pytest.raises(errors.StatusError) as caught:
        admitted(engine_with(["variables.ab == 1 && object.data.zzz == '1'"], prefix), cm())
    assert "variable 'a'" not in caught.value.message


def test_an_expressions_own_error_is_not_blamed_on_a_variable() -> None:
    variables = [
        {"name": "a", "expression": "object.data.nosuch"},
        {"name": "b", "expression": "false && variables.a == 'x'"},
    ]
    e = _authz_engine(
        [
            "variables.b || object.data.zzz == '1'",
            "authorizer.group('').resource('pods').check('get').allowed()",
        ],
        lambda _q: (True, "", ""),
        variables=variables,
        failurePolicy="Fail",
    )
    with pytest.raises(errors.StatusError) as caught:
        admitted(e, cm())
    assert "variable 'a'" not in caught.value.message and "zzz" in caught.value.message
