"""CRD validation rules type-checked against their schema when the CRD is created or updated
(haplane.api.crd_rules.type_errors, through check_crd_schema and the CRD strategy), as
Kubernetes refuses a CRD whose rules do not check; and the values of formatted strings
(`date-time`, `date`, `duration`, `byte`) given to the rules as the types they check to."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from haplane.api.crd_rules import enforce, type_errors
from haplane.api.crd_schema import check_crd_schema
from haplane.api.crds import CRDStrategy

INT = {"type": "integer"}
STRING = {"type": "string"}


def spec_with(rules: list[dict[str, Any]], **props: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "object", "properties": props}
    spec["x-kubernetes-validations"] = rules
    return {
        "type": "object",
        "properties": {
            "apiVersion": STRING,
            "kind": STRING,
            "metadata": {"type": "object"},
            "spec": spec,
        },
    }


def problems(schema: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e.field, e.message) for e in check_crd_schema(schema, "root")]


def test_a_misspelt_field_is_refused_naming_the_rule_and_the_position() -> None:
    s = spec_with([{"rule": "self.replicsa > 1"}], replicas=INT)
    ((field, message),) = problems(s)
    assert field == "root.properties[spec].x-kubernetes-validations[0].rule"
    assert message.startswith("compilation failed: 1:5: undefined field 'replicsa'"), message
    assert problems(spec_with([{"rule": "self.replicas > 1"}], replicas=INT)) == []


def test_wrong_operands_and_results_are_refused() -> None:
    cases = {
        "self.replicas == 'three'": "no matching overload for '_==_'",
        "self.name.startsWith(1)": "no matching overload",
        "self.replicas": "must evaluate to a bool, not int",
    }
    for rule, said in cases.items():
        ((_, message),) = problems(spec_with([{"rule": rule}], replicas=INT, name=STRING))
        assert said in message, (rule, message)
    s = spec_with(
        [{"rule": "self.replicas > 0", "messageExpression": "self.replicas"}], replicas=INT
    )
    ((field, message),) = problems(s)
    assert field.endswith("[0].messageExpression")
    assert "must evaluate to a string, not int" in message


def test_numbers_compare_across_int_and_double_as_in_kubernetes() -> None:
    s = spec_with(
        [{"rule": "self.ratio < 1 && self.count < 2.5 && self.ratio <= self.count"}],
        ratio={"type": "number"},
        count=INT,
    )
    assert problems(s) == []


def test_rules_on_scalars_lists_and_maps_are_typed_too() -> None:
    tags = {
        "type": "array",
        "items": STRING,
        "x-kubernetes-validations": [{"rule": "self.all(t, t.size() < 10)"}],
    }
    labels = {
        "type": "object",
        "additionalProperties": INT,
        "x-kubernetes-validations": [{"rule": "self.all(k, self[k] >= 0)"}],
    }
    name = {**STRING, "x-kubernetes-validations": [{"rule": "self.startsWith('a')"}]}
    assert problems(spec_with([], tags=tags, labels=labels, name=name)) == []
    tags["x-kubernetes-validations"] = [{"rule": "self.all(t, t > 1)"}]
    labels["x-kubernetes-validations"] = [{"rule": "self.all(k, self[k].size() > 0)"}]
    name["x-kubernetes-validations"] = [{"rule": "self > 3"}]
    fields = [f for f, _ in problems(spec_with([], tags=tags, labels=labels, name=name))]
    assert fields == [
        "root.properties[spec].properties[tags].x-kubernetes-validations[0].rule",
        "root.properties[spec].properties[labels].x-kubernetes-validations[0].rule",
        "root.properties[spec].properties[name].x-kubernetes-validations[0].rule",
    ]


def test_escaped_property_names_and_the_roots_metadata() -> None:
    s = spec_with(
        [{"rule": "self.__namespace__ != '' && self.max__dash__surge > 0"}],
        namespace=STRING,
        **{"max-surge": INT, "odd@name": INT},
    )
    assert problems(s) == []
    # no expression can name `odd@name`: left out of the type, and of the values
    s["properties"]["spec"]["x-kubernetes-validations"] = [{"rule": "self.size() == 0"}]
    assert problems(s) != []  # (an object of declared fields has no size())
    root = copy.deepcopy(spec_with([], replicas=INT))
    root["x-kubernetes-validations"] = [
        {"rule": "self.metadata.name.size() < 20 && self.kind == 'Widget'"}
    ]
    assert problems(root) == []
    # at the root, metadata holds only name and generateName (as the values do)
    root["x-kubernetes-validations"] = [{"rule": "self.metadata.labels.size() < 5"}]
    ((_, message),) = problems(root)
    assert "undefined field 'labels'" in message


def test_int_or_string_and_unknown_fields_stay_dynamic() -> None:
    s = spec_with(
        [{"rule": "self.port == 80 || self.port == 'http'"}, {"rule": "self.extra.anything > 1"}],
        port={"x-kubernetes-int-or-string": True},
        extra={"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    )
    assert problems(s) == []


def test_transition_rules_and_optional_old_self_are_typed() -> None:
    s = spec_with([{"rule": "self.level >= oldSelf.level"}], level=INT)
    assert problems(s) == []
    s = spec_with([{"rule": "self.level >= oldSelf.levle"}], level=INT)
    assert "undefined field 'levle'" in problems(s)[0][1]
    rule = "!oldSelf.hasValue() || self.level >= oldSelf.value().levle"
    s = spec_with([{"rule": rule, "optionalOldSelf": True}], level=INT)
    ((_, message),) = problems(s)
    # the position is in the rule as written, not in haplane's wrapping of it
    column = rule.index("oldSelf.value().levle") + len("oldSelf.value()") + 1
    assert message.startswith(f"compilation failed: 1:{column}: undefined field 'levle'"), message


def test_formatted_strings_are_timestamps_durations_and_bytes() -> None:
    s = spec_with(
        [
            {"rule": "self.expires > self.created", "message": "expires before created"},
            {"rule": "self.grace <= duration('1h')", "message": "grace over an hour"},
            {"rule": "self.day.getDayOfWeek() != 0", "message": "not on a Sunday"},
            {"rule": "size(self.blob) <= 4", "message": "blob over 4 bytes"},
        ],
        created={"type": "string", "format": "date-time"},
        expires={"type": "string", "format": "date-time"},
        grace={"type": "string", "format": "duration"},
        day={"type": "string", "format": "date"},
        blob={"type": "string", "format": "byte"},
    )
    assert problems(s) == []
    good = {
        "created": "2026-01-01T00:00:00Z",
        "expires": "2026-01-01T00:00:01.5+00:00",
        "grace": "59m30s",
        "day": "2026-12-07",  # a Monday
        "blob": base64.b64encode(b"abcd").decode(),
    }
    assert enforce(s, {"spec": good}) == []
    bad = {
        "created": "2026-01-02T00:00:00Z",
        "expires": "2026-01-01T23:00:00-02:00",  # 01:00 on the 2nd, UTC: before created
        "grace": "2h",
        "day": "2026-12-06",
        "blob": base64.b64encode(b"abcde").decode(),
    }
    # all but the first: 23:00 at -02:00 is 01:00 UTC on the 2nd, after created
    assert [e.message for e in enforce(s, {"spec": bad})] == [
        "grace over an hour",
        "not on a Sunday",
        "blob over 4 bytes",
    ]
    bad["expires"] = "2026-01-01T21:00:00-02:00"
    assert "expires before created" in [e.message for e in enforce(s, {"spec": bad})]
    # a string that does not parse as its format fails the rule that uses it as such
    (err,) = enforce(s, {"spec": {**good, "grace": "soon"}})
    assert "could not be evaluated" in err.message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h30m", 5400), ("-1.5s", -1.5), ("300ms", 0.3), ("3d", 259200), ("2 weeks", 1209600)],
)
def test_durations_read_as_go_and_openapi_read_them(text: str, seconds: float) -> None:
    s = spec_with(
        [{"rule": f"self.d == duration('{int(seconds * 1000)}ms')"}],
        d={"type": "string", "format": "duration"},
    )
    assert enforce(s, {"spec": {"d": text}}) == []


def test_an_update_keeps_rules_the_crd_already_had_but_checks_new_ones() -> None:
    """A CRD stored before rules were type-checked stays updatable (and deletable: its
    finalizer is removed by an update) with the rule it has; a new rule is checked."""

    def crd(rules: list[dict[str, Any]]) -> dict[str, Any]:
        return widget_crd(spec_with(rules, replicas=INT))

    strategy = CRDStrategy()
    old = crd([{"rule": "self.replicsa > 1"}])
    assert [e.field for e in strategy.validate(old)] == [
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule"
    ]
    relabelled = copy.deepcopy(old)
    relabelled["metadata"]["labels"] = {"team": "a"}
    assert strategy.validate_update(relabelled, old) == []
    added = crd([{"rule": "self.replicsa > 1"}, {"rule": "self.replcas > 2"}])
    (err,) = strategy.validate_update(added, old)
    assert err.field.endswith("x-kubernetes-validations[1].rule")


def test_type_errors_leave_rules_that_do_not_compile_to_rules_errors() -> None:
    s = spec_with([{"rule": "self.replicas >"}], replicas=INT)
    assert type_errors(s, "root") == []
    assert len(problems(s)) == 1


def test_transition_rules_where_values_cannot_pair_are_refused() -> None:
    """Under the items of a list that is not a `map` list, an item has no old self: a rule
    with oldSelf there would never run, and Kubernetes refuses it."""
    item = {
        "type": "object",
        "properties": {"name": STRING, "size": INT},
        "x-kubernetes-validations": [{"rule": "self.size >= oldSelf.size"}],
    }
    atomic = {"type": "array", "items": copy.deepcopy(item)}
    keyed = {
        "type": "array",
        "items": {**copy.deepcopy(item), "required": ["name"]},
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
    }
    s = spec_with([], atomic=atomic, keyed=keyed)
    ((field, message),) = problems(s)
    assert (
        field == "root.properties[spec].properties[atomic].items.x-kubernetes-validations[0].rule"
    )
    assert message == (
        "oldSelf cannot be used on the uncorrelatable portion of the schema within "
        "root.properties[spec].properties[atomic]"
    )
    # a rule without oldSelf there is fine
    atomic["items"]["x-kubernetes-validations"] = [{"rule": "self.size >= 0"}]
    assert problems(s) == []


def test_reserved_words_may_be_selected_as_written_too() -> None:
    """Kubernetes 1.32+ reads `self.namespace` as `self.__namespace__` (a real CRD, JobSet's,
    relies on it); both compile and both see the value. `in`, `true`, `false` and `null`
    cannot be selected as written (the grammar's own words)."""
    s = spec_with(
        [{"rule": "self.namespace == self.__namespace__ && self.package.size() > 0"}],
        namespace=STRING,
        package=STRING,
    )
    assert problems(s) == []
    assert enforce(s, {"spec": {"namespace": "a", "package": "p"}}) == []
    (err,) = enforce(s, {"spec": {"namespace": "a", "package": ""}})
    assert err.field == "spec"


def widget_crd(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com", "finalizers": ["x"]},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def test_what_an_update_keeps_is_kept_by_place_not_by_text() -> None:
    """A rule kept at its node is not checked again; the same text put on another node, where
    it does not type-check, or under an unpairable list as a transition rule, is."""
    other = {"type": "object", "properties": {"name": STRING}}
    old = widget_crd(spec_with([{"rule": "self.replicas > 1"}], replicas=INT, other=other))
    moved = copy.deepcopy(old)
    spec = moved["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["other"]["x-kubernetes-validations"] = [{"rule": "self.replicas > 1"}]
    (err,) = CRDStrategy().validate_update(moved, old)
    assert "properties[other]" in err.field and "undefined field 'replicas'" in err.message
    item = {
        "type": "object",
        "properties": {"size": INT},
        "x-kubernetes-validations": [{"rule": "self.size >= oldSelf.size"}],
    }
    listed = copy.deepcopy(moved)
    lspec = listed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    lspec["properties"]["other"].pop("x-kubernetes-validations")
    lspec["properties"]["items"] = {"type": "array", "items": item}
    (err,) = CRDStrategy().validate_update(listed, old)
    assert "uncorrelatable" in err.message


def test_an_optional_old_self_is_optional_in_the_message_too() -> None:
    rule = {
        "rule": "!oldSelf.hasValue() || self.level >= oldSelf.value().level",
        "optionalOldSelf": True,
        "messageExpression": "oldSelf.hasValue() ? 'level may not drop below ' + "
        "string(oldSelf.value().level) : 'bad level'",
    }
    s = spec_with([rule], level=INT)
    assert problems(s) == []
    (err,) = enforce(s, {"spec": {"level": 1}}, {"spec": {"level": 3}})
    assert err.message == "level may not drop below 3"


def test_old_self_is_the_variable_not_the_word() -> None:
    """Only a rule that reads the variable `oldSelf` is a transition rule (Kubernetes decides
    from the checked expression): a string, a field or a comprehension's variable of that
    name do not make one, so such rules run on creates and under any list."""
    item = {
        "type": "object",
        "properties": {"m": STRING, "oldSelf": STRING},
        "x-kubernetes-validations": [
            {"rule": "self.m != 'oldSelf'"},
            {"rule": "self.oldSelf != 'x'"},
            {"rule": "[1].all(oldSelf, oldSelf > 0)"},
        ],
    }
    s = spec_with([], items={"type": "array", "items": item})
    assert problems(s) == []
    (err,) = enforce(s, {"spec": {"items": [{"m": "oldSelf", "oldSelf": "y"}]}})
    assert err.field == "spec.items[0]"  # it ran, on a create


def test_rules_stored_with_formatted_fields_as_strings_still_run() -> None:
    """Before haplane gave `date-time`, `duration` and `byte` values their types, a rule
    could treat them as strings; a CRD stored then keeps that rule (an update does not check
    it again), and the rule keeps running on the strings it was written for (one that
    type-checks only with them as strings). A rule that type-checks with the typed values
    gets the typed values."""
    fields = {
        "grace": {"type": "string", "format": "duration"},
        "created": {"type": "string", "format": "date-time"},
    }
    good = {"grace": "30s", "created": "2026-01-01T00:00:00Z"}
    s = spec_with(
        [{"rule": "self.grace.endsWith('s') && self.created.startsWith('2026')"}], **fields
    )
    assert problems(s) != []  # (a new CRD with it is refused, as in Kubernetes)
    assert enforce(s, {"spec": good}) == []
    (err,) = enforce(s, {"spec": {**good, "grace": "30m"}})
    assert err.message.startswith("failed rule")
    s = spec_with([{"rule": "self.grace == '30s'"}], **fields)  # false, not an error, typed
    assert enforce(s, {"spec": good}) == []
    s = spec_with([{"rule": "self.grace == duration('30s')"}], **fields)
    assert problems(s) == [] and enforce(s, {"spec": good}) == []


def test_an_optional_old_self_misused_in_the_message_is_refused() -> None:
    rule = {
        "rule": "!oldSelf.hasValue() || self.level >= oldSelf.value().level",
        "optionalOldSelf": True,
        "messageExpression": "'was ' + string(oldSelf.level)",
    }
    ((field, message),) = problems(spec_with([rule], level=INT))
    assert field.endswith("messageExpression") and "optionalOldSelf" in message


def test_values_out_of_range_and_odd_schemas_are_422s_not_crashes() -> None:
    s = spec_with(
        [
            {"rule": "self.d > duration('1s')"},
            {"rule": "self.day < timestamp('2000-01-01T00:00:00Z')"},
        ],
        d={"type": "string", "format": "duration"},
        day={"type": "string", "format": "date"},
    )
    errs = enforce(s, {"spec": {"d": "9999999999999999h", "day": "0000-01-01"}})
    # (a duration beyond Go's, and a year before CEL's first: each fails its rule)
    assert len(errs) == 2 and all("could not be evaluated" in e.message for e in errs)
    for bad in ({"format": []}, {"enum": 1}, {"required": 1}):
        odd = spec_with(
            [], x={"type": "object", **bad, "x-kubernetes-validations": [{"rule": "self == self"}]}
        )
        errs = CRDStrategy().validate(widget_crd(odd))
        assert errs and all("must be" in e.message for e in errs), (bad, errs)
    surrogate = spec_with([{"rule": "self.s == '\ud800'"}], s=STRING)
    assert any("UTF-8" in e.message for e in CRDStrategy().validate(widget_crd(surrogate)))


def test_an_optional_old_self_keeps_its_bounds_in_the_estimate() -> None:
    from haplane.api.crd_rules import cost_errors

    tags = {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 10}}
    rule = {
        "rule": "!oldSelf.hasValue() || oldSelf.value().tags.all(t, t in self.tags)",
        "optionalOldSelf": True,
    }
    s = spec_with([rule], tags=tags)
    assert problems(s) == []
    assert cost_errors(s, "root") == []


def test_a_malformed_schema_is_reported_not_typed() -> None:
    s = spec_with([{"rule": "self.x == 'a'"}], x={"type": ["string", "null"]})
    errs = CRDStrategy().validate(widget_crd(s))
    assert any("must be a string" in e.message for e in errs), errs


def test_the_cost_of_typed_trees_formats_and_format_validation() -> None:
    """As Kubernetes estimates: `a + b` of two typed lists is an append (O(1)); a date-time
    is at least 21 bytes, so fewer fit in a request; `format.X().validate(s)` costs the
    string's length times 32."""
    from haplane.api.crd_rules import cost_errors

    short = {"type": "array", "maxItems": 100, "items": {"type": "string", "maxLength": 10}}
    item = {
        "type": "object",
        "properties": {"a": short, "b": short},
        "x-kubernetes-validations": [{"rule": "(self.a + self.b).size() <= 150"}],
    }
    assert cost_errors(spec_with([], items={"type": "array", "items": item}), "root") == []
    stamp = {
        "type": "string",
        "format": "date-time",
        "x-kubernetes-validations": [
            {"rule": " && ".join(["self.getFullYear() != 2000"] * 4)},
        ],
    }
    assert cost_errors(spec_with([], stamps={"type": "array", "items": stamp}), "root") == []
    names = {
        "type": "array",
        "maxItems": 5000,
        "items": {"type": "string", "maxLength": 253},
        "x-kubernetes-validations": [
            {"rule": "self.all(x, !format.dns1123Subdomain().validate(x).hasValue())"}
        ],
    }
    (err, *_) = cost_errors(spec_with([], names=names), "root")
    assert "exceeds budget" in err.message
    names["maxItems"] = 2000
    assert cost_errors(spec_with([], names=names), "root") == []


def test_timestamps_keep_nanoseconds_and_durations_read_as_strfmt_does() -> None:
    s = spec_with(
        [{"rule": "self.a < self.b"}],
        a={"type": "string", "format": "date-time"},
        b={"type": "string", "format": "date-time"},
    )
    assert (
        enforce(
            s,
            {"spec": {"a": "2026-01-01T00:00:00.1234567Z", "b": "2026-01-01T00:00:00.123456789Z"}},
        )
        == []
    )
    d = spec_with(
        [{"rule": "self.d >= duration('5400s') && self.d <= duration('5400s')"}],
        d={"type": "string", "format": "duration"},
    )
    for same in ("1h30m", "1h 30m", "1 hour 30 minutes", "90m", "1.5h"):
        assert enforce(d, {"spec": {"d": same}}) == [], same
    (err,) = enforce(d, {"spec": {"d": "2 hrs"}})  # strfmt does not read it: a string
    assert "could not be evaluated" in err.message


def test_third_review_round() -> None:
    """A conditional's value is sized from both branches (not the larger one's schema); a
    regular expression written in a rule gets Go's room; a timestamp beyond CEL's years is
    left a string, failing only rules that read it; Go's long fractions; a broken
    messageExpression under optionalOldSelf is reported once."""
    from haplane.api.crd_rules import cost_errors

    wide = {"type": "array", "maxItems": 100000, "items": {"type": "string", "maxLength": 1000}}
    narrow = {"type": "array", "maxItems": 1, "items": {"type": "string", "maxLength": 1}}
    s = spec_with(
        [{"rule": "(self.c ? self.a : self.b).all(x, x.all(y, y.matches('^a.*b$')))"}],
        c={"type": "boolean"},
        a={"type": "array", "maxItems": 10, "items": wide},
        b={"type": "array", "maxItems": 20, "items": narrow},
    )
    assert any("exceeds budget" in e.message for e in cost_errors(s, "root"))
    letters = spec_with([{"rule": "self.n.matches('^\\\\pL{1,1000}$')"}], n=STRING)
    assert problems(letters) == []
    assert enforce(letters, {"spec": {"n": "abc"}}) == []
    assert len(enforce(letters, {"spec": {"n": "ab1"}})) == 1
    stamps = spec_with(
        [
            {"rule": "self.d < timestamp('9999-01-01T00:00:00Z')"},
            {"rule": "!has(self.u) || self.u > duration('1s')"},
        ],
        d={"type": "string", "format": "date-time"},
        u={"type": "string", "format": "duration"},
    )
    errs = enforce(stamps, {"spec": {"d": "9999-12-31T23:59:59-01:00", "u": "2s"}})
    assert len(errs) == 1 and "self.d" in errs[0].message
    durations = spec_with(
        [{"rule": "self.u >= duration('1s')"}], u={"type": "string", "format": "duration"}
    )
    assert enforce(durations, {"spec": {"u": "1." + "1" * 400 + "s"}}) == []
    optional = {
        "rule": "oldSelf.hasValue() ? self.x >= oldSelf.value().x : true",
        "optionalOldSelf": True,
        "messageExpression": "'was ' + string(oldSelf.value().x",
    }
    assert len(problems(spec_with([optional], x=INT))) == 1


def test_patterns_written_anywhere_in_an_expression_get_gos_room() -> None:
    """Any string constant of an expression is its author's text: used as a pattern
    directly, through a variable or a list, it gets Go's room, however many there are; an
    error elsewhere in the expression is still the error reported."""
    from haplane.cel import Environment
    from haplane.cel.formatted import duration_nanos

    env = Environment(("self",))
    for n in range(980, 997):  # more than the 16 slots an earlier version had
        assert env.compile(f"self.matches('^\\\\pL{{1,{n}}}$')").eval({"self": "abc"}) is True
    bound = env.compile("cel.bind(p, '^\\\\pL{1,997}$', self.matches(p))")
    assert bound.eval({"self": "abc"}) is True
    listed = env.compile("['^\\\\pL{1,996}$', '^[0-9]+$'].exists(p, self.matches(p))")
    assert listed.eval({"self": "abc"}) is True
    both = env.compile("self.matches('^\\\\pL{1,995}$') && self.size() == 1")
    assert both.eval({"self": "abc"}) is False
    env2 = Environment(("self", "o"))
    with pytest.raises(Exception) as caught:
        env2.compile("self.matches('^\\\\pL{1,994}$') && o.missing == 1").eval(
            {"self": "a", "o": {}}
        )
    assert "missing" in str(caught.value) and "too large" not in str(caught.value)
    # Go's durations: leading zeros, a long fraction, the smallest duration
    assert duration_nanos("000000000000000000001.5s") == 1_500_000_000
    assert duration_nanos("0.1000000000000000079m") == 6_000_000_000
    assert duration_nanos("-9223372036854775808ns") == -(1 << 63)
