"""CRD validation rules (`x-kubernetes-validations`, haplane.api.crd_rules) on plain data, as
Kubernetes documents them ("Validation rules" in the CustomResourceDefinition docs): where
each rule applies, its message, messageExpression, reason and fieldPath, transition rules
(`oldSelf`) only on updates and only where a value pairs with its old self, optionalOldSelf,
and the types CEL sees."""

from __future__ import annotations

import copy
from typing import Any

from haplane.api.crd_rules import enforce
from haplane.api.validation import FieldError


def schema(spec_rules: list[dict[str, Any]] | None = None, **props: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "object", "properties": props}
    if spec_rules:
        spec["x-kubernetes-validations"] = spec_rules
    return {"type": "object", "properties": {"spec": spec}}


INT = {"type": "integer"}
REPLICAS = schema(
    [{"rule": "self.minReplicas <= self.replicas", "message": "replicas should be >= minReplicas"}],
    replicas=INT,
    minReplicas=INT,
)


def test_a_rule_on_an_object_and_its_message() -> None:
    assert enforce(REPLICAS, {"spec": {"replicas": 3, "minReplicas": 1}}) == []
    (err,) = enforce(REPLICAS, {"spec": {"replicas": 1, "minReplicas": 3}})
    assert err == FieldError(
        "spec", "FieldValueInvalid", "replicas should be >= minReplicas", "object"
    )
    assert str(err) == 'spec: Invalid value: "object": replicas should be >= minReplicas'


def test_message_expression_reason_and_field_path() -> None:
    rules = [
        {
            "rule": "self.replicas <= self.max",
            "messageExpression": "'replicas %d is over %d'.format([self.replicas, self.max])",
            "reason": "FieldValueForbidden",
            "fieldPath": ".replicas",
        },
        {"rule": "self.max < 100"},  # no message: Kubernetes' default
        {"rule": "self.max > 0", "messageExpression": "self.nosuchfield", "message": "fallback"},
    ]
    s = schema(rules, replicas=INT, max=INT)
    errs = enforce(s, {"spec": {"replicas": 500, "max": 200}})
    assert [(e.field, e.reason, e.message) for e in errs] == [
        ("spec.replicas", "FieldValueForbidden", "replicas 500 is over 200"),
        ("spec", "FieldValueInvalid", "failed rule: self.max < 100"),
    ]
    # a messageExpression that fails falls back to the message
    (err,) = enforce(s, {"spec": {"replicas": -1, "max": -1}})
    assert err.message == "fallback"


def test_transition_rules_only_on_updates() -> None:
    s = schema(
        [{"rule": "self.name == oldSelf.name", "message": "name is immutable"}],
        name={"type": "string"},
    )
    assert enforce(s, {"spec": {"name": "a"}}) == []  # a create: no oldSelf, not evaluated
    assert enforce(s, {"spec": {"name": "a"}}, {"spec": {"name": "a"}}) == []
    (err,) = enforce(s, {"spec": {"name": "b"}}, {"spec": {"name": "a"}})
    assert err.message == "name is immutable"
    # the field was absent before: nothing to pair with, not evaluated
    assert enforce(s, {"spec": {"name": "b"}}, {"other": 1}) == []


def test_optional_old_self_is_checked_on_create_too() -> None:
    s = schema(
        [
            {
                "rule": "!oldSelf.hasValue() || self.level >= oldSelf.value().level",
                "optionalOldSelf": True,
                "message": "level may only grow",
            },
            {"rule": "oldSelf.orValue(self).level < 10", "optionalOldSelf": True},
        ],
        level=INT,
    )
    assert enforce(s, {"spec": {"level": 3}}) == []
    assert enforce(s, {"spec": {"level": 12}})[0].message.startswith("failed rule")
    (err,) = enforce(s, {"spec": {"level": 2}}, {"spec": {"level": 3}})
    assert err.message == "level may only grow"


def test_list_items_each_and_pairing_by_map_keys() -> None:
    item = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "port": INT},
        "x-kubernetes-validations": [
            {"rule": "self.port > 0", "message": "port must be positive"},
            {"rule": "self.port == oldSelf.port", "message": "port is immutable"},
        ],
    }
    as_map = {
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
    }
    s = schema(ports=as_map)
    old = {"spec": {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}}
    new = {
        "spec": {
            "ports": [
                {"name": "b", "port": 82},
                {"name": "a", "port": 80},
                {"name": "c", "port": 0},
            ]
        }
    }
    errs = enforce(s, new, old)
    assert [(e.field, e.message) for e in errs] == [
        ("spec.ports[0]", "port is immutable"),  # b, paired with b's old self by its key
        ("spec.ports[2]", "port must be positive"),  # c: new, no old self
    ]
    # an atomic list: items never pair with old ones, so no transition rule runs
    s = schema(ports={"type": "array", "items": item})
    assert enforce(s, new, old) == [
        FieldError("spec.ports[2]", "FieldValueInvalid", "port must be positive", "object")
    ]


def test_map_values_are_paired_by_key() -> None:
    value = {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf"}]}
    s = schema(labels={"type": "object", "additionalProperties": value})
    errs = enforce(s, {"spec": {"labels": {"a": "1", "b": "2"}}}, {"spec": {"labels": {"a": "0"}}})
    assert [e.field for e in errs] == ["spec.labels[a]"]


def test_types_as_the_schema_says() -> None:
    """A `number` field is a double to CEL even when the JSON says 1; at the root, metadata
    shows only name and generateName."""
    s = schema([{"rule": "self.ratio < 1.5"}], ratio={"type": "number"})
    assert enforce(s, {"spec": {"ratio": 1}}) == []
    root = {
        "type": "object",
        "x-kubernetes-validations": [
            {"rule": "self.metadata.name.startsWith('web-')"},
            {"rule": "!has(self.metadata.labels)", "message": "labels are not shown"},
        ],
        "properties": {"spec": {"type": "object"}},
    }
    obj = {"metadata": {"name": "web-1", "labels": {"a": "b"}}, "spec": {}}
    assert enforce(root, obj) == []
    (err,) = enforce(root, {**obj, "metadata": {"name": "db-1"}})
    assert err.field == "" and "startsWith" in err.message


def test_an_evaluation_error_is_a_field_error() -> None:
    s = schema([{"rule": "self.missing > 1"}], replicas=INT)
    (err,) = enforce(s, {"spec": {"replicas": 1}})
    assert err.reason == "FieldValueInvalid" and "could not be evaluated" in err.message
    assert 'Key not found in map : "missing"' in err.message


def test_no_rules_no_work() -> None:
    assert enforce(schema(replicas=INT), {"spec": {"replicas": "not checked here"}}) == []


def test_escaped_property_names() -> None:
    """Kubernetes' escaping: a property named after a CEL keyword is `__name__`, `-` is
    `__dash__`, `.` is `__dot__`."""
    s = schema(
        [{"rule": "self.__namespace__ == 'a' && self.x__dash__y == 1 && self.a__dot__b"}],
        namespace={"type": "string"},
        **{"x-y": INT, "a.b": {"type": "boolean"}},
    )
    assert enforce(s, {"spec": {"namespace": "a", "x-y": 1, "a.b": True}}) == []
    assert len(enforce(s, {"spec": {"namespace": "b", "x-y": 1, "a.b": True}})) == 1


# ---- the static cost limit -------------------------------------------------------------------


def costly(items: dict[str, Any], rule: str) -> dict[str, Any]:
    return schema(
        None, list={"type": "array", "items": items, "x-kubernetes-validations": [{"rule": rule}]}
    )


def test_a_rule_over_its_budget_is_refused_until_bounded() -> None:
    """Kubernetes' estimate from the schema's bounds: a pairwise rule over a list of
    unbounded size (as many items as 3 MiB of JSON holds) is refused, naming the rule and
    the fix; with maxItems it is accepted."""
    from haplane.api.crd_rules import cost_errors

    items = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 63}}}
    rule = "self.all(a, self.exists_one(b, a.name == b.name))"
    err, *_total = cost_errors(costly(items, rule), "root")  # (over the total too)
    assert err.field == "root.properties[spec].properties[list].x-kubernetes-validations[0].rule"
    assert err.reason == "FieldValueForbidden"
    assert "estimated rule cost exceeds budget by factor of" in err.message
    assert "maxItems" in err.message
    bounded = costly(items, rule)
    bounded["properties"]["spec"]["properties"]["list"]["maxItems"] = 64
    assert cost_errors(bounded, "root") == []
    # a regular expression over strings of unbounded length, for every item of a long list
    long = {"type": "array", "maxItems": 100, "items": {"type": "string"}}
    s = schema([{"rule": "self.l.all(x, x.matches('^[a-z]+([.-][a-z0-9]+)*$'))"}], l=long)
    err, *_total = cost_errors(s, "root")
    assert "estimated rule cost exceeds budget" in err.message
    long["items"]["maxLength"] = 253
    assert cost_errors(s, "root") == []


def test_rules_times_how_often_they_run_have_a_total_budget() -> None:
    from haplane.api.crd_rules import cost_errors

    item = {
        "type": "object",
        "properties": {"s": {"type": "string", "maxLength": 1000}},
        "x-kubernetes-validations": [{"rule": f"self.s.matches('^{'a' * 60}$')"}] * 3,
    }
    s = schema(items={"type": "array", "items": item})  # unbounded: 3 MiB of `{}` items
    errs = cost_errors(s, "root")
    # each rule runs once per item: over its own budget too, as Kubernetes counts it
    assert [e.field for e in errs][-1] == "root", errs
    assert (
        "estimated rule cost total for entire OpenAPIv3 schema exceeds budget" in errs[-1].message
    )
    assert all("estimated rule cost exceeds budget" in e.message for e in errs[:-1])
    s["properties"]["spec"]["properties"]["items"]["maxItems"] = 100
    assert cost_errors(s, "root") == []


def test_the_estimate_follows_kubernetes_where_real_crds_rely_on_it() -> None:
    """Each case a real CRD depends on (tests/test_crd_corpus.py), small: comparing two
    objects costs what comparing scalars does (an object has no size in Kubernetes'
    estimate); a filter's `accu + [x]` is O(1), not string work; `has()` costs only its
    operand; and a rule under unbounded lists runs at most as often as a request holds
    values of its node's smallest size, not the product of the lists' sizes."""
    from haplane.api.crd_rules import cost_errors

    thing = {"type": "object", "properties": {"name": {"type": "string"}}}
    pairwise = "self.all(x, self.exists_one(y, x == y))"  # cluster-api's MachineDrainRule
    s = costly({**thing}, pairwise)
    s["properties"]["spec"]["properties"]["list"]["maxItems"] = 32
    assert cost_errors(s, "root") == []
    # ... but comparing strings of unbounded length still counts their length
    s = costly({"type": "string"}, pairwise)
    s["properties"]["spec"]["properties"]["list"]["maxItems"] = 32
    assert any("exceeds budget" in e.message for e in cost_errors(s, "root"))
    # a filter over an unbounded list (OpenShift's etcds nodeStatuses)
    s = costly(thing, "size(self.filter(i, i.?name.orValue('') != '')) <= 1")
    assert cost_errors(s, "root") == []
    # presence tests under two unbounded lists (Envoy Gateway's SecurityPolicy)
    leaf = {
        "type": "object",
        "properties": {k: {"type": "string", "maxLength": 8} for k in "abcdef"},
        "x-kubernetes-validations": [
            {"rule": " || ".join(f"has(self.{k})" for k in "abcdef")},
        ],
    }
    s = schema(
        outer={
            "type": "array",
            "items": {"type": "object", "properties": {"inner": {"type": "array", "items": leaf}}},
        }
    )
    assert cost_errors(s, "root") == []
    # the same rule charged per presence test, or at the product of both lists' sizes,
    # would be over: 12 per run against a budget of 10 M over ~1 M values
    leaf["x-kubernetes-validations"] = [
        {"rule": " || ".join(f"self.{k} == ''" for k in "abcdef") + " || self.a == 'b'"}
    ]
    assert any("exceeds budget" in e.message for e in cost_errors(s, "root"))


def test_estimator_holes_reviewers_found_are_closed() -> None:
    """cel.bind keeps its value's size; indexing gives the element's; an optional's value is
    what it was; an unknown function's result is unbounded; a messageExpression counts."""
    from haplane.api.crd_rules import cost_errors

    unbounded = {"type": "array", "items": {"type": "integer"}}
    for rule in (
        "cel.bind(x, self.l, x.all(a, x.all(b, a != b || a == b)))",
        "self.ll[0].all(a, self.ll[0].all(b, a != b || a == b))",
        "self.?l.orValue([]).all(a, self.l.all(b, a != b || a == b))",
    ):
        s = schema(
            [{"rule": rule}],
            l=unbounded,
            ll={"type": "array", "maxItems": 3, "items": unbounded},
        )
        assert any("exceeds budget" in e.message for e in cost_errors(s, "root")), rule
    s = schema(
        [
            {
                "rule": "false",
                "messageExpression": "string(self.l.map(a, self.l.filter(b, b > a).size()).sum())",
            }
        ],
        l=unbounded,
    )
    assert any(".messageExpression" in e.field for e in cost_errors(s, "root"))
    # a filter's result keeps its items' bounds: no false refusal
    items = {
        "type": "array",
        "maxItems": 100,
        "items": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 63}}},
    }
    s = schema(
        [{"rule": "self.items.filter(i, has(i.name)).all(i, i.name.matches('^[a-z]+$'))"}],
        items=items,
    )
    assert cost_errors(s, "root") == []


def test_gateway_api_crds_fit_the_budget() -> None:
    """Gateway API's CRDs are written to pass Kubernetes' estimate: they pass this one (its
    pairwise listener rule costs about 0.9 M of the 10 M a rule may)."""
    from pathlib import Path

    import yaml

    from haplane.api.crd_schema import check_crd_schema

    for name in ("gatewayclasses", "gateways"):
        doc = yaml.safe_load(
            (Path(__file__).parent / "data" / "gateway-api" / f"{name}.yaml").read_text()
        )
        for v in doc["spec"]["versions"]:
            assert check_crd_schema(v["schema"]["openAPIV3Schema"], "root") == [], name


def test_optional_old_self_misuse_is_refused_at_create_and_null_is_no_old_value() -> None:
    from haplane.api.crd_rules import rules_errors

    node = {
        "type": "object",
        "x-kubernetes-validations": [
            {"rule": "self.level >= oldSelf.level", "optionalOldSelf": True}
        ],
    }
    (err,) = rules_errors(node, "root", in_junctor=False)
    assert "compilation failed with optionalOldSelf" in err.message
    s = schema(
        name={
            "type": "string",
            "nullable": True,
            "x-kubernetes-validations": [{"rule": "self == oldSelf"}],
        }
    )
    assert enforce(s, {"spec": {"name": "v"}}, {"spec": {"name": None}}) == []


# ---- ratcheting (Kubernetes' CRDValidationRatcheting) ---------------------------------------

TIGHTENED = schema(
    replicas={**INT, "x-kubernetes-validations": [{"rule": "self <= 5", "message": "at most 5"}]},
    name={"type": "string"},
)


def test_an_unchanged_value_is_not_held_against_an_update() -> None:
    """Stored under an older rule (replicas 10), updated elsewhere: the error is ratcheted
    (Kubernetes returns it as a warning); a change to another invalid value is an error."""
    old = {"spec": {"replicas": 10, "name": "a"}}
    ratcheted: list[FieldError] = []
    assert (
        enforce(TIGHTENED, {"spec": {"replicas": 10, "name": "b"}}, old, ratcheted=ratcheted) == []
    )
    assert ratcheted == [FieldError("spec.replicas", "FieldValueInvalid", "at most 5", "integer")]
    (err,) = enforce(TIGHTENED, {"spec": {"replicas": 11, "name": "a"}}, old)
    assert (err.field, err.message) == ("spec.replicas", "at most 5")
    # a create is never ratcheted
    assert [e.field for e in enforce(TIGHTENED, {"spec": {"replicas": 10}})] == ["spec.replicas"]


def test_a_rule_over_several_fields_ratchets_while_its_object_is_unchanged() -> None:
    old = {"spec": {"replicas": 1, "minReplicas": 3}, "status": {"ready": 0}}
    status_write = {"spec": {"replicas": 1, "minReplicas": 3}, "status": {"ready": 1}}
    s = {**REPLICAS, "properties": {**REPLICAS["properties"], "status": {"type": "object"}}}
    assert enforce(s, status_write, old) == []
    assert [e.field for e in enforce(s, {"spec": {"replicas": 2, "minReplicas": 3}}, old)] == [
        "spec"
    ]


def test_transition_rules_and_evaluation_errors_are_never_ratcheted() -> None:
    s = schema(
        [
            {"rule": "self.name == oldSelf.name", "message": "name is immutable"},
            {"rule": "self.name.size() < 3 || oldSelf.name == 'legacy'"},
        ],
        name={"type": "string"},
    )
    longer = {"spec": {"name": "abcd"}}
    # unchanged, but a transition rule: reported
    assert [e.message for e in enforce(s, longer, longer)] == [
        "failed rule: self.name.size() < 3 || oldSelf.name == 'legacy'"
    ]
    s = schema([{"rule": "self.missing > 0"}], name={"type": "string"})
    (err,) = enforce(s, {"spec": {"name": "a"}}, {"spec": {"name": "a"}})
    assert "could not be evaluated" in err.message


def test_list_items_pair_by_index_by_keys_or_not_at_all() -> None:
    """Ratcheting pairs more than oldSelf does: items of a list with no list type by index;
    `map` lists by their keys; `set` and `atomic` lists not at all (the list as a whole)."""
    item = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "port": INT},
        "x-kubernetes-validations": [{"rule": "self.port > 0", "message": "port must be positive"}],
    }
    old = {"spec": {"ports": [{"name": "a", "port": 0}, {"name": "b", "port": 1}]}}
    moved = {"spec": {"ports": [{"name": "b", "port": 1}, {"name": "a", "port": 0}]}}
    grown = {
        "spec": {
            "ports": [{"name": "a", "port": 0}, {"name": "b", "port": 1}, {"name": "c", "port": 2}]
        }
    }

    def fields(list_schema: dict[str, Any], new: dict[str, Any]) -> list[str]:
        return [e.field for e in enforce(schema(ports=list_schema), new, old)]

    plain = {"type": "array", "items": item}
    assert fields(plain, grown) == []  # item 0 unchanged at its index
    assert fields(plain, moved) == ["spec.ports[1]"]  # index 1 was b: a changed value
    keyed = {**plain, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
    assert fields(keyed, moved) == []  # a is a's old self, wherever it moved
    atomic = {**plain, "x-kubernetes-list-type": "atomic"}
    assert fields(atomic, grown) == ["spec.ports[0]"]  # the list changed as a whole
    assert fields(atomic, copy.deepcopy(old)) == []  # unchanged as a whole


def test_old_self_of_a_map_list_item_pairs_as_ratcheting_does() -> None:
    """Review: oldSelf took the last old item with an item's keys, ratcheting the first; an
    old list stored before keys were unique (two "a") then judged "a" against the second.
    Both pair one to one now: the n-th item with a key with the n-th old one."""
    item = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "port": INT},
        "x-kubernetes-validations": [{"rule": "self.port == oldSelf.port", "message": "fixed"}],
    }
    keyed = {
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
    }
    old = {"spec": {"ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]}}
    assert enforce(schema(ports=keyed), {"spec": {"ports": [{"name": "a", "port": 1}]}}, old) == []
    swapped = {"spec": {"ports": [{"name": "a", "port": 2}, {"name": "a", "port": 1}]}}
    errs = enforce(schema(ports=keyed), swapped, old)
    assert [e.field for e in errs] == ["spec.ports[0]", "spec.ports[1]"]
