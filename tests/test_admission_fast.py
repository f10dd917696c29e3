"""The admission engine's one-activation evaluation (`admission_fast.decide`: the request's
bindings as one program; `admission_fast.verdict`: one binding on the request's one CEL
activation; parameters and variables bound with `cel.bind`) against the
evaluation Kubernetes describes (`_evaluate`'s own path, a fresh binding per policy with
parameters or variables): on random policies and objects (expressions that hold, fail, err,
give no bool; variables that read earlier ones or fail; several parameter objects; message
expressions and audit annotations; both failure policies) the warnings, audit annotations and
findings must be the same, and the fast path must have decided most of them."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from haplane.api import admission_fast as af
from haplane.api import admission_policies as ap
from haplane.api.admission_compiled import PER_BINDING
from haplane.api.admission_policies import Attributes, PolicyEngine, select_params
from haplane.api.resources import BUILTIN
from haplane.auth.user import UserInfo
from tests.test_admission_engine import admitted

CONFIGMAPS = next(t for t in BUILTIN if t.plural == "configmaps")
RULES = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["*"], "resources": ["*"]}]

VALIDATIONS = [
    "object.metadata.name.size() < 8",
    "has(object.data) && object.data.size() <= 2",
    "object.data.all(k, k.startsWith('k'))",
    "object.data.k1 == 'v'",  # errs when k1 is missing
    "object.metadata.name",  # no bool
    "1 / (object.data.size() - 1) > 0",  # errs on one key
    "request.operation == 'CREATE' && request.userInfo.username == 'alice'",
    "variables.small",
    "variables.twice > 2 || variables.small",
    "!has(variables.missing)",  # a variable the policy may not have
    "variables['small'] == true",  # reads `variables` other than by a field name
    "params.data.max == '3' || size(object.data) < int(params.data.max)",  # errs on 'x'
    "'team' in params.metadata.labels",
]
VARIABLES = [
    ("small", "object.data.size() < 2"),
    ("count", "object.data.size()"),
    ("twice", "variables.count * 2"),  # reads an earlier one (or fails without it)
    ("broken", "object.data.nope.size()"),
]
MESSAGES = [
    None,
    "'name ' + object.metadata.name",
    "object.data.nope",  # errs: the static message, or the default
    "'two\\nlines'",  # refused: the static message
    "1",  # no string
    "variables.count > 1 ? 'many' : 'few'",
]
NOTES_EXPR = ["object.metadata.name", "object.data.nope", "string(variables.count)", "''"]


# what never errs (with the variables it may read declared): many bindings decided together
CLEAN = {
    "validations": [
        "object.metadata.name.size() < 8",
        "has(object.data) && object.data.size() <= 2",
        "object.data.all(k, k.startsWith('k'))",
        "request.operation == 'CREATE' && request.userInfo.username == 'alice'",
        "variables.small",
        "variables.twice > 2 || variables.small",
        "object.metadata.name.matches('^[a-z]+$')",
    ],
    "messages": [None, "'name ' + object.metadata.name", "'two\\nlines'", "1"],
    "notes": ["object.metadata.name", "''"],
}


def policy(
    rng: random.Random, i: int, clean: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    spec: dict[str, Any] = {
        "matchConstraints": {"resourceRules": RULES},
        "failurePolicy": rng.choice(["Fail", "Ignore"]),
        "validations": [
            {
                "expression": rng.choice(CLEAN["validations"] if clean else VALIDATIONS),
                **({"message": f"m{i}-{j}"} if rng.random() < 0.5 else {}),
                **(
                    {"messageExpression": m}
                    if (m := rng.choice(CLEAN["messages"] if clean else MESSAGES))
                    else {}
                ),
                "reason": rng.choice(["Invalid", "Forbidden"]),
            }
            for j in range(rng.randint(1, 3))
        ],
    }
    if rng.random() < 0.6:
        spec["variables"] = [
            {"name": n, "expression": e}
            for n, e in VARIABLES
            if rng.random() < (1.0 if clean and n != "broken" else 0.0 if clean else 0.7)
        ]
    if rng.random() < 0.3:
        spec["matchConditions"] = [
            {"name": "c", "expression": rng.choice(["true", "object.data.size() > 0", "1"])}
        ]
    if rng.random() < 0.4:
        spec["auditAnnotations"] = [
            {"key": f"a{k}", "valueExpression": rng.choice(CLEAN["notes"] if clean else NOTES_EXPR)}
            for k in range(2)
        ]
    binding: dict[str, Any] = {"policyName": f"p{i}", "validationActions": ["Warn", "Audit"]}
    if rng.random() < 0.5:
        spec["paramKind"] = {"apiVersion": "v1", "kind": "ConfigMap"}
        binding["paramRef"] = rng.choice(
            [
                {"name": "limits", "parameterNotFoundAction": "Deny"},
                {"selector": {"matchLabels": {"role": "param"}}},
                {"name": "absent", "parameterNotFoundAction": rng.choice(["Deny", "Allow"])},
            ]
        )
    return (
        {"metadata": {"name": f"p{i}"}, "spec": spec},
        {"metadata": {"name": f"p{i}-b"}, "spec": binding},
    )


PARAMS = [
    {"metadata": {"name": "limits", "namespace": "ns", "labels": {"role": "param"}},
     "data": {"max": "3"}},
    {"metadata": {"name": "other", "namespace": "ns", "labels": {"role": "param", "team": "x"}},
     "data": {"max": "x"}},
]  # fmt: skip


def engine(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> PolicyEngine:
    ps, bs = [p for p, _ in pairs], [b for _, b in pairs]
    return PolicyEngine(
        lambda: ps,
        lambda: bs,
        lambda _n: {"metadata": {"name": "ns", "labels": {}}},
        lambda _v, _k, ns, name, sel: select_params(PARAMS, True, ns, name, sel),
        version=lambda: 1,
    )


def request(rng: random.Random) -> Attributes:
    data = {f"k{j}": "v" for j in range(rng.randint(0, 3))}
    if rng.random() < 0.2:
        data["x"] = "y"
    name = rng.choice(["c", "a-long-name"])
    obj = {"metadata": {"name": name, "namespace": "ns"}, "data": data}
    user = UserInfo(rng.choice(["alice", "bob"]))
    return Attributes("CREATE", CONFIGMAPS, "ns", name, obj, None, user)


def outcome(e: PolicyEngine, a: Attributes) -> tuple[Any, ...]:
    notes = admitted(e, a)
    found = [(f.policy, f.message) for f in e.findings(a)]
    failures = json.loads(notes.annotations.pop(ap.AUDIT_FAILURE, "[]"))
    return notes.warnings, notes.annotations, failures, found


def test_one_activation_decides_as_the_evaluation_kubernetes_describes(monkeypatch) -> None:
    decided = {"fast": 0, "slow": 0}
    fast = af.verdict

    def counted(pair: Any, bound: Any, slot: int) -> Any:
        found = fast(pair, bound, slot)
        decided["fast" if found is not None else "slow"] += 1
        return found

    monkeypatch.setattr(af, "verdict", counted)
    decide = af.decide

    def counted_together(combined: Any, pairs: Any, prepared: Any, admission: Any) -> None:
        decide(combined, pairs, prepared, admission)
        decided["together"] += len(admission.decided)

    monkeypatch.setattr(af, "decide", counted_together)
    decided["together"] = 0
    rng = random.Random(20261207)
    for case in range(300):
        clean = case % 2 == 1
        pairs = [policy(rng, i, clean) for i in range(rng.randint(1, 5))]
        a = request(rng)
        with_fast = outcome(engine(pairs), a)
        with monkeypatch.context() as m:  # every binding evaluated its own way
            m.setattr(af, "verdict", lambda *_: None)
            m.setattr(af, "decide", lambda *_: None)
            as_described = outcome(engine(pairs), a)
        assert with_fast == as_described, (case, json.dumps([p for p, _ in pairs], indent=1))
    # both ways were taken, often (a test of the fallback alone would pass with the fast
    # path never taken; these expressions err on purpose about half the time)
    assert decided["fast"] > 200 and decided["slow"] > 200, decided
    assert decided["together"] > 100, decided  # and by one program for several bindings


@pytest.mark.parametrize("n", [PER_BINDING - 1, PER_BINDING + 3])
def test_more_parameter_objects_than_slots_are_still_all_evaluated(n: int) -> None:
    """A binding's parameter objects beyond those the one activation holds are evaluated
    their own way."""
    params = [
        {"metadata": {"name": f"p{i}", "namespace": "ns", "labels": {"role": "param"}},
         "data": {"max": str(i)}}
        for i in range(n)
    ]  # fmt: skip
    p = {
        "metadata": {"name": "p"},
        "spec": {
            "matchConstraints": {"resourceRules": RULES},
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "validations": [{"expression": "int(params.data.max) % 2 == 0"}],
            "auditAnnotations": [{"key": "m", "valueExpression": "params.data.max"}],
        },
    }
    b = {
        "metadata": {"name": "p-b"},
        "spec": {
            "policyName": "p",
            "validationActions": ["Warn"],
            "paramRef": {"selector": {"matchLabels": {"role": "param"}}},
        },
    }
    e = PolicyEngine(
        lambda: [p],
        lambda: [b],
        lambda _n: None,
        lambda _v, _k, ns, name, sel: select_params(params, True, ns, name, sel),
        version=lambda: 1,
    )
    a = Attributes("CREATE", CONFIGMAPS, "ns", "c", {"metadata": {"name": "c"}}, None, None)
    warnings, _, _, found = outcome(e, a)
    assert len(warnings) == len(found) == n // 2  # every odd one, each once


def _one_policy(spec: dict[str, Any], actions: list[str], **binding: Any) -> PolicyEngine:
    p = {"metadata": {"name": "p"}, "spec": {"matchConstraints": {"resourceRules": RULES}, **spec}}
    b = {"metadata": {"name": "p-b"},
         "spec": {"policyName": "p", "validationActions": actions, **binding}}  # fmt: skip
    return engine([(p, b)])


def test_a_variable_that_does_not_compile_is_never_pasted_into_a_bind() -> None:
    """`1), "x": (2` compiles once pasted into `{"v": (...)}`: the expression reading it must
    still fail as the variable does, and a variable naming the activation's own `__params`
    is undeclared, as anywhere else."""
    for variable in ['1), "x": (2', "__params['0/0'].data.max"]:
        e = _one_policy(
            {
                "variables": [{"name": "v", "expression": variable}],
                "validations": [{"expression": "variables.v == 1", "message": "m"}],
            },
            ["Warn"],
        )
        (found,) = e.findings(request(random.Random(1)))
        assert "variable 'v'" in found.message, found


def test_a_binding_denies_before_a_later_one_finds_its_parameters_unready() -> None:
    """The parameters of every binding are looked up first; an error there is the request's
    answer only when that binding's turn comes, after a Deny before it."""
    from haplane.api import errors

    def unready(*_: Any) -> list[Any]:
        raise errors.unavailable("the parameters are not loaded yet")

    rules = {"matchConstraints": {"resourceRules": RULES}}
    a = {"metadata": {"name": "a"}, "spec": {**rules, "validations": [{"expression": "false"}]}}
    b = {
        "metadata": {"name": "b"},
        "spec": {**rules, "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
                 "validations": [{"expression": "true"}]},
    }  # fmt: skip
    bindings = [
        {"metadata": {"name": "a-b"}, "spec": {"policyName": "a", "validationActions": ["Deny"]}},
        {"metadata": {"name": "b-b"}, "spec": {"policyName": "b", "validationActions": ["Deny"],
                                               "paramRef": {"name": "x"}}},
    ]  # fmt: skip
    e = PolicyEngine(lambda: [a, b], lambda: bindings, lambda _n: None, unready, version=lambda: 1)
    with pytest.raises(errors.StatusError) as denied:
        e.admit(request(random.Random(2)))
    assert denied.value.code == 422
    e = PolicyEngine(lambda: [b], lambda: bindings[1:], lambda _n: None, unready, version=lambda: 1)
    with pytest.raises(errors.StatusError) as later:
        e.admit(request(random.Random(2)))
    assert later.value.code == 503


def test_a_false_condition_after_a_failing_one_skips_the_policy() -> None:
    """As Kubernetes' matcher: any false condition means the policy does not apply, whatever
    failed before it; a failure counts only when none is false."""
    spec = {"validations": [{"expression": "false", "message": "applied"}]}
    failing = {"name": "bad", "expression": "object.data.nope == 1"}
    false = {"name": "no", "expression": "false"}
    skipped = _one_policy({**spec, "matchConditions": [failing, false]}, ["Warn"])
    assert skipped.findings(request(random.Random(3))) == []
    true = {"name": "yes", "expression": "true"}
    failed = _one_policy({**spec, "matchConditions": [failing, true]}, ["Warn"])
    (found,) = failed.findings(request(random.Random(3)))
    assert "failed to evaluate matchCondition 'bad'" in found.message


def test_policies_asking_the_authorizer_are_evaluated_their_own_way(monkeypatch) -> None:
    """Their checks are counted per binding: a variable read by two expressions would be
    asked twice on the one activation."""
    calls: list[Any] = []
    monkeypatch.setattr(af, "verdict", lambda *a: calls.append(a))
    e = _one_policy(
        {"validations": [{"expression": "authorizer.group('').resource('pods').check('get')"
                          ".allowed() || true"}]},
        ["Warn"],
    )  # fmt: skip
    assert e.findings(request(random.Random(4))) == [] and calls == []
    plain = _one_policy({"validations": [{"expression": "true"}]}, ["Warn"])
    assert plain.findings(request(random.Random(4))) == [] and len(calls) == 1


def test_optional_results_and_guarded_reads_are_decided_as_described(monkeypatch) -> None:
    """An audit annotation giving an optional, a matchCondition guarding a field the
    validation reads: the same as each binding evaluated on its own; the guard makes the
    binding "does not apply" in the one program, not a failure of it."""
    guarded = {
        "matchConditions": [{"name": "has", "expression": "has(object.spec)"}],
        "validations": [{"expression": "object.spec.replicas < 3"}],
    }
    optional = {
        "validations": [{"expression": "true"}],
        "auditAnnotations": [{"key": "o", "valueExpression": "object.?metadata.name"}],
    }
    pairs = [
        ({"metadata": {"name": f"p{i}"}, "spec": {"matchConstraints": {"resourceRules": RULES},
                                                  **spec}},
         {"metadata": {"name": f"p{i}-b"},
          "spec": {"policyName": f"p{i}", "validationActions": ["Warn", "Audit"]}})
        for i, spec in enumerate([guarded, guarded, optional, {"validations": [
            {"expression": "object.metadata.name.matches('^c$')"}]}])
    ]  # fmt: skip
    a = request(random.Random(5))  # no spec: the guards are false
    decided: list[int] = []
    decide = af.decide

    def counted(combined: Any, pairs_: Any, prepared: Any, admission: Any) -> None:
        decide(combined, pairs_, prepared, admission)
        decided.append(len(admission.decided))

    monkeypatch.setattr(af, "decide", counted)
    for chosen in (pairs, [pairs[0], pairs[1], pairs[3]]):
        decided.clear()
        with_fast = outcome(engine(chosen), a)
        with monkeypatch.context() as m:
            m.setattr(af, "verdict", lambda *_: None)
            m.setattr(af, "decide", lambda *_: None)
            assert outcome(engine(chosen), a) == with_fast
    assert decided and decided[0] == 3  # without the optional one: all together


def test_a_changed_policy_is_evaluated_anew_without_a_version() -> None:
    """An engine without `version` works its pairs out per request: what it combined from
    the old ones must not decide for the new ones."""
    p = {
        "metadata": {"name": "p"},
        "spec": {
            "matchConstraints": {"resourceRules": RULES},
            "validations": [{"expression": "object.metadata.name == 'c'"}],
        },
    }
    q = {
        "metadata": {"name": "q"},
        "spec": {
            "matchConstraints": {"resourceRules": RULES},
            "validations": [{"expression": "true"}],
        },
    }
    bindings = [
        {"metadata": {"name": f"{n}-b"}, "spec": {"policyName": n, "validationActions": ["Warn"]}}
        for n in "pq"
    ]
    policies = [p, q]
    e = PolicyEngine(lambda: policies, lambda: bindings, lambda _n: None, lambda *_: [])
    a = Attributes("CREATE", CONFIGMAPS, "ns", "c", {"metadata": {"name": "c"}}, None, None)
    assert outcome(e, a)[0] == []
    p["spec"]["validations"] = [{"expression": "object.metadata.name == 'nope'"}]
    warnings = outcome(e, a)[0]
    assert len(warnings) == 1 and "nope" in warnings[0]
