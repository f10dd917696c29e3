"""CRD openAPIV3Schema: pruning, defaulting, validation and schema checks, as kube-apiserver does
them (messages and cause types of kube-openapi and apiextensions-apiserver)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from haplane.api.crd_schema import (
    SchemaUnsupported,
    apply_defaults,
    check_crd_schema,
    process,
    prune,
    validate,
)
from haplane.api.validation import FieldError

ROOT = "spec.versions[0].schema.openAPIV3Schema"


def spec_schema(**properties: Any) -> dict[str, Any]:
    """A CRD root schema whose `spec` has these properties."""
    return {
        "type": "object",
        "properties": {"spec": {"type": "object", "properties": properties}},
    }


def errors_of(value: Any, prop: dict[str, Any]) -> list[FieldError]:
    """The errors for `spec.x` holding `value` under schema `prop`."""
    return validate({"spec": {"x": value}}, spec_schema(x=prop))


def one(value: Any, prop: dict[str, Any]) -> FieldError:
    errs = errors_of(value, prop)
    assert len(errs) == 1, errs
    return errs[0]


def ok(value: Any, prop: dict[str, Any]) -> bool:
    return errors_of(value, prop) == []


# ---- types ------------------------------------------------------------------------------------


def test_type_error_message_reason_and_value_are_kubernetes() -> None:
    err = one("string", {"type": "integer"})
    assert err == FieldError(
        "spec.x",
        "FieldValueTypeInvalid",
        'spec.x in body must be of type integer: "string"',
        "string",
    )


@pytest.mark.parametrize(
    ("schema_type", "good", "bad"),
    [
        ("string", ["", "a"], [1, True, None, [], {}]),
        ("integer", [0, -3, 2**40], ["1", 1.5, True, None]),
        ("number", [0, 1.5, -2], ["1", True, None]),
        ("boolean", [True, False], [0, "true", None]),
        ("array", [[], [1, "a"]], [{}, "a", None]),
        ("object", [{}, {"a": 1}], [[], "a", None]),
    ],
)
def test_types(schema_type: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        assert ok(value, {"type": schema_type}), value
    for value in bad:
        assert one(value, {"type": schema_type}).reason == "FieldValueTypeInvalid", value


def test_type_error_names_the_json_type_of_the_value() -> None:
    assert one(1.5, {"type": "integer"}).message.endswith(': "number"')
    assert one(True, {"type": "integer"}).message.endswith(': "boolean"')
    assert one(None, {"type": "integer"}).message.endswith(': "null"')
    assert one([1], {"type": "string"}).message.endswith(': "array"')
    assert one({"a": 1}, {"type": "string"}).message.endswith(': "object"')
    assert one(3, {"type": "string"}).message.endswith(': "integer"')


def test_whole_float_is_an_integer_as_in_kube_openapi_but_a_fraction_is_not() -> None:
    # JSON 1.0 decodes as a float64; kube-openapi's type validator takes a whole float64 for an
    # integer (swag.IsFloat64AJSONInteger, up to 2^53), and rejects 1.5.
    assert ok(1.0, {"type": "integer"})
    assert not ok(1.5, {"type": "integer"})
    assert not ok(2.0**60, {"type": "integer"})
    assert ok(1, {"type": "number"})


def test_nullable() -> None:
    assert ok(None, {"type": "string", "nullable": True})
    assert ok("a", {"type": "string", "nullable": True})
    err = one(None, {"type": "string"})
    assert err.message == 'spec.x in body must be of type string: "null"'
    # nullable does not widen an enum: null must be listed, as JSON Schema reads it
    assert not ok(None, {"type": "string", "nullable": True, "enum": ["a"]})
    assert ok(None, {"type": "string", "nullable": True, "enum": ["a", None]})


def test_int_or_string() -> None:
    prop = {"x-kubernetes-int-or-string": True}
    assert ok(3, prop)
    assert ok("50%", prop)
    err = one(1.5, prop)
    assert err.message == 'spec.x in body must be of type integer,string: "number"'
    assert not ok(True, prop)
    assert not ok(None, prop)
    assert ok(None, {**prop, "nullable": True})


# ---- object keywords --------------------------------------------------------------------------


def test_required_lists_each_missing_field_once() -> None:
    schema = spec_schema()
    schema["properties"]["spec"]["required"] = ["a", "b", "c"]
    errs = validate({"spec": {"b": 1}}, schema)
    assert errs == [
        FieldError("spec.a", "FieldValueRequired", ""),
        FieldError("spec.c", "FieldValueRequired", ""),
    ]
    assert str(errs[0]) == "spec.a: Required value"


def test_required_at_the_root_and_nested_in_arrays() -> None:
    schema = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "items": {
                        "type": "array",
                        "items": {"type": "object", "required": ["name"]},
                    }
                },
            }
        },
    }
    assert validate({}, schema) == [FieldError("spec", "FieldValueRequired", "")]
    errs = validate({"spec": {"items": [{"name": "a"}, {"name": "b"}, {}]}}, schema)
    assert errs == [FieldError("spec.items[2].name", "FieldValueRequired", "")]


def test_additional_properties_schema_paths_use_keys() -> None:
    prop = {"type": "object", "additionalProperties": {"type": "string"}}
    assert ok({"a": "1", "b": "2"}, prop)
    err = one({"a": "1", "b": 2}, prop)
    assert err.field == "spec.x[b]"
    assert err.message == 'spec.x[b] in body must be of type string: "integer"'


def test_min_and_max_properties() -> None:
    prop = {"type": "object", "minProperties": 1, "maxProperties": 2}
    assert ok({"a": 1}, prop)
    assert one({}, prop) == FieldError(
        "spec.x", "FieldValueInvalid", "spec.x in body should have at least 1 properties", "{}"
    )
    assert one({"a": 1, "b": 2, "c": 3}, prop) == FieldError(
        "spec.x", "FieldValueTooMany", "must have at most 2 items", "3"
    )


def test_nested_field_paths() -> None:
    schema = spec_schema(
        template=1,  # replaced below
    )
    schema["properties"]["spec"]["properties"]["template"] = {
        "type": "object",
        "properties": {
            "containers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"ports": {"type": "array", "items": {"type": "integer"}}},
                },
            }
        },
    }
    obj = {"spec": {"template": {"containers": [{"ports": [80]}, {"ports": [1, "x"]}]}}}
    (err,) = validate(obj, schema)
    assert err.field == "spec.template.containers[1].ports[1]"


# ---- scalar keywords --------------------------------------------------------------------------


def test_enum_is_not_supported_with_the_supported_values() -> None:
    err = one("c", {"type": "string", "enum": ["a", "b"]})
    assert err == FieldError("spec.x", "FieldValueNotSupported", 'supported values: "a", "b"', "c")
    assert ok("a", {"type": "string", "enum": ["a", "b"]})
    err = one(3, {"type": "integer", "enum": [1, 2.0]})
    assert err.message == 'supported values: "1", "2"'
    assert ok(2, {"type": "integer", "enum": [1, 2.0]})


def test_minimum_and_maximum_inclusive() -> None:
    prop = {"type": "integer", "minimum": 1, "maximum": 10}
    assert ok(1, prop)
    assert ok(10, prop)
    assert one(0, prop) == FieldError(
        "spec.x", "FieldValueInvalid", "spec.x in body should be greater than or equal to 1", "0"
    )
    assert one(11, prop).message == "spec.x in body should be less than or equal to 10"


def test_exclusive_bounds_are_openapi_v3_0_booleans() -> None:
    prop = {
        "type": "number",
        "minimum": 1,
        "exclusiveMinimum": True,
        "maximum": 2.5,
        "exclusiveMaximum": True,
    }
    assert ok(1.5, prop)
    assert one(1, prop).message == "spec.x in body should be greater than 1"
    assert one(2.5, prop).message == "spec.x in body should be less than 2.5"
    # false is the same as absent
    assert ok(1, {"type": "integer", "minimum": 1, "exclusiveMinimum": False})


def test_bounds_print_as_go_prints_them() -> None:
    assert one(1.5, {"type": "number", "minimum": 2}).message.endswith("equal to 2")
    big = one(1, {"type": "number", "minimum": 1e6 + 0.5})
    assert big.message.endswith("equal to 1.0000005e+06")


def test_multiple_of() -> None:
    assert ok(6, {"type": "integer", "multipleOf": 3})
    assert one(7, {"type": "integer", "multipleOf": 3}).message == (
        "spec.x in body should be a multiple of 3"
    )


def test_lengths_count_characters() -> None:
    prop = {"type": "string", "minLength": 2, "maxLength": 3}
    assert ok("ab", prop)
    assert ok("äöü", prop)
    assert one("a", prop) == FieldError(
        "spec.x", "FieldValueInvalid", "spec.x in body should be at least 2 chars long", "a"
    )
    assert one("abcd", prop) == FieldError(
        "spec.x", "FieldValueTooLong", "may not be longer than 3", "abcd"
    )


def test_pattern_is_unanchored_like_go() -> None:
    prop = {"type": "string", "pattern": "[0-9]+"}
    assert ok("abc1", prop)
    err = one("abc", prop)
    assert err == FieldError(
        "spec.x", "FieldValueInvalid", "spec.x in body should match '[0-9]+'", "abc"
    )
    assert not ok("abc1", {"type": "string", "pattern": "^[0-9]+$"})


# ---- arrays -----------------------------------------------------------------------------------


def test_items_and_item_counts() -> None:
    prop = {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "string"}}
    assert ok(["a"], prop)
    assert one([], prop).message == "spec.x in body should have at least 1 items"
    assert one(["a", "b", "c"], prop) == FieldError(
        "spec.x", "FieldValueTooMany", "must have at most 2 items", "3"
    )
    assert one(["a", 1], prop).field == "spec.x[1]"
    assert one(["a", "b"], {**prop, "maxItems": 1}).message == "must have at most 1 item"


def test_unique_items() -> None:
    prop = {"type": "array", "uniqueItems": True}
    assert ok([1, 2, {"a": 1}, {"a": 2}], prop)
    assert one([1, 2, 1], prop).message == "spec.x in body shouldn't contain duplicates"
    assert not ok([{"a": 1}, {"a": 1}], prop)


# ---- junctors ---------------------------------------------------------------------------------


def test_all_of_reports_the_members_errors_then_its_own() -> None:
    prop = {"type": "integer", "allOf": [{"minimum": 1}, {"maximum": 5}]}
    assert ok(3, prop)
    errs = errors_of(7, prop)
    assert [e.message for e in errs] == [
        "spec.x in body should be less than or equal to 5",
        '"spec.x" must validate all the schemas (allOf)',
    ]
    errs = errors_of(7, {"type": "integer", "allOf": [{"maximum": 5}, {"maximum": 6}]})
    assert errs[-1].message == '"spec.x" must validate all the schemas (allOf). None validated'


def test_all_of_properties_keep_their_paths() -> None:
    prop = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "allOf": [{"properties": {"a": {"minimum": 3}}}],
    }
    errs = errors_of({"a": 1}, prop)
    assert errs[0] == FieldError(
        "spec.x.a",
        "FieldValueInvalid",
        "spec.x.a in body should be greater than or equal to 3",
        "1",
    )


def test_any_of() -> None:
    prop = {"type": "integer", "anyOf": [{"maximum": 1}, {"minimum": 5}]}
    assert ok(0, prop)
    assert ok(6, prop)
    assert one(3, prop) == FieldError(
        "spec.x", "FieldValueInvalid", '"spec.x" must validate at least one schema (anyOf)', ""
    )


def test_one_of() -> None:
    prop = {"type": "integer", "oneOf": [{"maximum": 5}, {"minimum": 3}]}
    assert ok(1, prop)
    assert ok(9, prop)
    assert one(4, prop).message == (
        '"spec.x" must validate one and only one schema (oneOf). Found 2 valid alternatives'
    )
    none = {"type": "integer", "oneOf": [{"maximum": 1}, {"minimum": 9}]}
    assert one(4, none).message.endswith("(oneOf). Found none valid")


def test_not() -> None:
    prop = {"type": "string", "not": {"enum": ["forbidden"]}}
    assert ok("fine", prop)
    assert one("forbidden", prop).message == '"spec.x" must not validate the schema (not)'


# ---- formats ----------------------------------------------------------------------------------

FORMATS: list[tuple[str, str, list[Any], list[Any]]] = [
    ("integer", "int32", [0, 2**31 - 1, -(2**31)], [2**31, -(2**31) - 1]),
    ("integer", "int64", [2**63 - 1, -(2**63)], [2**63]),
    ("number", "float", [1.5, 3.4e38, 7], [3.5e38, float("inf")]),
    ("number", "double", [1.5, 1e300], [float("inf"), float("nan")]),
    ("string", "byte", ["aGVsbG8=", ""], ["aGVsbG8", "not base64!"]),
    (
        "string",
        "date",
        ["2024-02-29"],
        ["2023-02-29", "2024-1-5", "20240105", "2024-01-05T00:00:00Z"],
    ),
    (
        "string",
        "date-time",
        ["2024-01-05T10:20:30Z", "2024-01-05t10:20:30.123+01:00"],
        ["2024-01-05", "2024-01-05T25:00:00Z", "2024-01-05T10:20:30", "2024-01-05 10:20:30Z"],
    ),
    (
        "string",
        "uuid",
        ["123e4567-e89b-12d3-a456-426614174000", "123E4567E89B12D3A456426614174000"],
        ["123e4567-e89b-12d3-a456", "g23e4567-e89b-12d3-a456-426614174000"],
    ),
    (
        "string",
        "email",
        ["a.b+c@example.com", "x@localhost"],
        ["a@", "@b.com", "a b@c.d", "a@b..c"],
    ),
    (
        "string",
        "hostname",
        ["localhost", "my-host.example.com", "a1.io"],
        ["-bad", "bad-.com", "under_score.com", "1.2.3.4", "a" * 64],
    ),
    ("string", "ipv4", ["10.0.0.1", "255.255.255.255"], ["10.0.0", "256.0.0.1", "01.2.3.4", "::1"]),
    (
        "string",
        "ipv6",
        ["::1", "2001:db8::1", "::ffff:1.2.3.4"],
        ["1.2.3.4", "fe80::1%eth0", ":::"],
    ),
    (
        "string",
        "uri",
        ["https://example.com/a?b=c", "urn:isbn:123", "/absolute/path"],
        ["relative/path", "", "http://a b", "http://x/%zz"],
    ),
]


@pytest.mark.parametrize(("schema_type", "fmt", "good", "bad"), FORMATS)
def test_formats(schema_type: str, fmt: str, good: list[Any], bad: list[Any]) -> None:
    prop = {"type": schema_type, "format": fmt}
    for value in good:
        assert ok(value, prop), (fmt, value)
    for value in bad:
        err = one(value, prop)
        assert err.reason == "FieldValueTypeInvalid", (fmt, value)
        assert err.message.startswith(f"spec.x in body must be of type {fmt}: "), err


def test_format_message_quotes_the_value() -> None:
    assert one("1.2.3", {"type": "string", "format": "ipv4"}) == FieldError(
        "spec.x",
        "FieldValueTypeInvalid",
        'spec.x in body must be of type ipv4: "1.2.3"',
        "1.2.3",
    )


def test_unknown_formats_and_the_datetime_alias() -> None:
    assert ok("anything", {"type": "string", "format": "no-such-format"})
    assert ok("anything", {"type": "string", "format": "password"})
    assert not ok("yesterday", {"type": "string", "format": "datetime"})


# ---- the root and embedded resources ----------------------------------------------------------


def test_root_type_meta_and_metadata_are_not_validated_here() -> None:
    schema = {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": {"type": "string"}, "spec": {"type": "object"}},
    }
    obj = {"apiVersion": 1, "kind": ["x"], "metadata": {"name": "a"}, "spec": {}}
    assert validate(obj, schema) == []
    assert validate({}, schema) == [FieldError("spec", "FieldValueRequired", "")]


def test_root_prefix() -> None:
    errs = validate({"spec": {"x": "a"}}, spec_schema(x={"type": "integer"}), root="body")
    assert errs[0].field == "body.spec.x"


def test_embedded_resource_needs_api_version_and_kind() -> None:
    prop = {
        "type": "object",
        "x-kubernetes-embedded-resource": True,
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert ok({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}, prop)
    assert errors_of({}, prop) == [
        FieldError("spec.x.apiVersion", "FieldValueRequired", "must not be empty"),
        FieldError("spec.x.kind", "FieldValueRequired", "must not be empty"),
    ]
    assert errors_of({"apiVersion": "a/b/c", "kind": 3}, prop) == [
        FieldError(
            "spec.x.apiVersion",
            "FieldValueInvalid",
            "unexpected GroupVersion string: a/b/c",
            "a/b/c",
        ),
        FieldError("spec.x.kind", "FieldValueInvalid", "must be a string", "3"),
    ]


def test_validate_refuses_schemas_it_cannot_enforce() -> None:
    schema = spec_schema(x={"type": "integer", "$ref": "#/definitions/x"})
    with pytest.raises(SchemaUnsupported) as caught:
        validate({"spec": {"x": 1}}, schema)
    assert caught.value.errors == [
        FieldError(
            "openAPIV3Schema.properties[spec].properties[x].$ref",
            "FieldValueForbidden",
            "$ref is not supported",
        )
    ]


def test_inputs_are_not_mutated() -> None:
    schema = spec_schema(x={"type": "integer", "default": 1}, y={"type": "string"})
    obj = {"spec": {"y": None, "z": 1}}
    before_schema, before_obj = copy.deepcopy(schema), copy.deepcopy(obj)
    process(obj, schema)
    prune(obj, schema)
    apply_defaults(obj, schema)
    validate(obj, schema)
    check_crd_schema(schema, ROOT)
    assert schema == before_schema
    assert obj == before_obj


# ---- pruning ----------------------------------------------------------------------------------


def test_prune_removes_unknown_fields_at_every_level() -> None:
    schema = spec_schema(
        a={"type": "object", "properties": {"b": {"type": "string"}}},
        list={
            "type": "array",
            "items": {"type": "object", "properties": {"n": {"type": "string"}}},
        },
    )
    obj = {
        "spec": {
            "a": {"b": "keep", "c": "drop"},
            "list": [{"n": "1", "junk": 1}, {"junk": 2}],
            "unknown": {"deep": 1},
        },
        "status": {"x": 1},
    }
    assert prune(obj, schema) == {"spec": {"a": {"b": "keep"}, "list": [{"n": "1"}, {}]}}


def test_prune_keeps_type_meta_and_metadata_at_the_root() -> None:
    obj = {
        "apiVersion": "g/v1",
        "kind": "K",
        "metadata": {"name": "a", "labels": {"x": "y"}},
        "spec": {"gone": 1},
    }
    assert prune(obj, spec_schema()) == {
        "apiVersion": "g/v1",
        "kind": "K",
        "metadata": {"name": "a", "labels": {"x": "y"}},
        "spec": {},
    }


def test_prune_below_the_root_drops_type_meta_like_any_field() -> None:
    obj = {"spec": {"apiVersion": "v1", "kind": "K", "metadata": {}}}
    assert prune(obj, spec_schema()) == {"spec": {}}


def test_preserve_unknown_fields_keeps_them_at_that_level_only() -> None:
    schema = spec_schema(
        open={
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {"known": {"type": "object", "properties": {"a": {"type": "string"}}}},
        }
    )
    obj = {
        "spec": {
            "open": {
                "free": {"anything": [1, {"goes": True}]},
                "known": {"a": "x", "b": "pruned"},
            }
        }
    }
    assert prune(obj, schema) == {
        "spec": {"open": {"free": {"anything": [1, {"goes": True}]}, "known": {"a": "x"}}}
    }


def test_preserve_unknown_fields_at_the_root() -> None:
    schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    obj = {"metadata": {"name": "a"}, "spec": {"anything": 1}, "extra": [1]}
    assert prune(obj, schema) == obj


def test_additional_properties_keep_every_key_pruned_by_their_schema() -> None:
    schema = spec_schema(
        m={
            "type": "object",
            "additionalProperties": {"type": "object", "properties": {"v": {"type": "integer"}}},
        }
    )
    obj = {"spec": {"m": {"a": {"v": 1, "w": 2}, "b": {"w": 3}}}}
    assert prune(obj, schema) == {"spec": {"m": {"a": {"v": 1}, "b": {}}}}


def test_embedded_resource_keeps_its_type_meta_and_metadata() -> None:
    schema = spec_schema(
        template={
            "type": "object",
            "x-kubernetes-embedded-resource": True,
            "properties": {"spec": {"type": "object", "properties": {"n": {"type": "integer"}}}},
        }
    )
    obj = {
        "spec": {
            "template": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", "whatever": 1},
                "spec": {"n": 1, "junk": 2},
                "junk": 3,
            }
        }
    }
    assert prune(obj, schema) == {
        "spec": {
            "template": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", "whatever": 1},
                "spec": {"n": 1},
            }
        }
    }


def test_prune_uses_properties_named_in_junctors() -> None:
    schema = spec_schema(
        x={
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "anyOf": [{"properties": {"b": {"type": "object", "properties": {}}}}],
            "allOf": [{"properties": {"c": {"type": "string"}}}],
            "oneOf": [{"properties": {"d": {"type": "string"}}}],
        }
    )
    obj = {"spec": {"x": {"a": "1", "b": {"drop": 1}, "c": "3", "d": "4", "e": "5"}}}
    assert prune(obj, schema) == {"spec": {"x": {"a": "1", "b": {}, "c": "3", "d": "4"}}}


def test_prune_empties_objects_with_no_schema() -> None:
    # As Kubernetes: an array without `items` (not structural) keeps scalars, empties objects.
    schema = spec_schema(list={"type": "array"})
    assert prune({"spec": {"list": [1, {"a": 1}]}}, schema) == {"spec": {"list": [1, {}]}}


def test_prune_drops_nulls_of_non_nullable_fields_without_defaults() -> None:
    schema = spec_schema(
        plain={"type": "string"},
        nullable={"type": "string", "nullable": True},
        defaulted={"type": "string", "default": "d"},
    )
    obj = {"spec": {"plain": None, "nullable": None, "defaulted": None}}
    assert prune(obj, schema) == {"spec": {"nullable": None, "defaulted": None}}


def test_prune_returns_a_copy() -> None:
    schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    obj = {"spec": {"list": [1]}}
    out = prune(obj, schema)
    out["spec"]["list"].append(2)
    assert obj == {"spec": {"list": [1]}}


# ---- defaulting -------------------------------------------------------------------------------


def test_defaults_fill_absent_fields_where_the_parent_exists() -> None:
    schema = spec_schema(
        replicas={"type": "integer", "default": 1},
        nested={
            "type": "object",
            "properties": {"mode": {"type": "string", "default": "fast"}},
        },
    )
    assert apply_defaults({"spec": {}}, schema) == {"spec": {"replicas": 1}}
    assert apply_defaults({"spec": {"nested": {}}}, schema) == {
        "spec": {"replicas": 1, "nested": {"mode": "fast"}}
    }
    assert apply_defaults({"spec": {"replicas": 3}}, schema) == {"spec": {"replicas": 3}}
    assert apply_defaults({}, schema) == {}


def test_defaults_are_defaulted_themselves() -> None:
    schema = spec_schema(
        nested={
            "type": "object",
            "default": {},
            "properties": {"mode": {"type": "string", "default": "fast"}},
        }
    )
    assert apply_defaults({"spec": {}}, schema) == {"spec": {"nested": {"mode": "fast"}}}


def test_defaults_in_array_items() -> None:
    schema = spec_schema(
        ports={
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"protocol": {"type": "string", "default": "TCP"}},
            },
        },
        names={"type": "array", "items": {"type": "string", "default": "unnamed"}},
    )
    obj = {"spec": {"ports": [{"protocol": "UDP"}, {}], "names": ["a", None]}}
    assert apply_defaults(obj, schema) == {
        "spec": {"ports": [{"protocol": "UDP"}, {"protocol": "TCP"}], "names": ["a", "unnamed"]}
    }


def test_defaults_in_additional_properties() -> None:
    schema = spec_schema(
        m={
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {"weight": {"type": "integer", "default": 1}},
            },
        },
        s={"type": "object", "additionalProperties": {"type": "string", "default": "x"}},
    )
    obj = {"spec": {"m": {"a": {}, "b": {"weight": 5}}, "s": {"k": None, "l": "y"}}}
    assert apply_defaults(obj, schema) == {
        "spec": {"m": {"a": {"weight": 1}, "b": {"weight": 5}}, "s": {"k": "x", "l": "y"}}
    }


def test_null_gets_the_default_unless_nullable() -> None:
    schema = spec_schema(
        a={"type": "string", "default": "d"},
        b={"type": "string", "default": "d", "nullable": True},
    )
    assert apply_defaults({"spec": {"a": None, "b": None}}, schema) == {
        "spec": {"a": "d", "b": None}
    }


def test_defaults_are_copies() -> None:
    schema = spec_schema(a={"type": "array", "items": {"type": "string"}, "default": ["x"]})
    first = apply_defaults({"spec": {}}, schema)
    first["spec"]["a"].append("y")
    assert apply_defaults({"spec": {}}, schema) == {"spec": {"a": ["x"]}}
    assert schema["properties"]["spec"]["properties"]["a"]["default"] == ["x"]


# ---- process: prune, then default, then validate ----------------------------------------------


def test_process_prunes_then_defaults_then_validates() -> None:
    schema = spec_schema(
        replicas={"type": "integer", "default": 1, "minimum": 1},
        mode={"type": "string", "enum": ["a", "b"]},
    )
    schema["properties"]["spec"]["required"] = ["replicas"]
    obj = {"apiVersion": "g/v1", "kind": "K", "metadata": {"name": "n"}, "spec": {"junk": "x"}}
    out, errs = process(obj, schema)
    # the unknown field was pruned (so it is no error), the required field was defaulted
    assert out == {
        "apiVersion": "g/v1",
        "kind": "K",
        "metadata": {"name": "n"},
        "spec": {"replicas": 1},
    }
    assert errs == []
    out, errs = process({"spec": {"replicas": 0, "mode": "c"}}, schema)
    assert [e.field for e in errs] == ["spec.replicas", "spec.mode"]


def test_process_null_is_pruned_then_defaulted() -> None:
    schema = spec_schema(a={"type": "string", "default": "d"}, b={"type": "string"})
    out, errs = process({"spec": {"a": None, "b": None}}, schema)
    assert (out, errs) == ({"spec": {"a": "d"}}, [])


def test_process_does_not_prune_defaults() -> None:
    # Kubernetes does not prune after defaulting; check_crd_schema refuses such defaults.
    schema = spec_schema(
        x={"type": "object", "properties": {"a": {"type": "string"}}, "default": {"zzz": 1}}
    )
    out, errs = process({"spec": {}}, schema)
    assert (out, errs) == ({"spec": {"x": {"zzz": 1}}}, [])
    assert check_crd_schema(schema, ROOT) == [
        FieldError(
            f"{ROOT}.properties[spec].properties[x].default",
            "FieldValueInvalid",
            "must not have unknown fields",
            '{"zzz":1}',
        )
    ]


def test_process_stores_whole_floats_of_integer_fields_as_ints() -> None:
    schema = spec_schema(
        n={"type": "integer"},
        f={"type": "number"},
        ios={"x-kubernetes-int-or-string": True},
        list={"type": "array", "items": {"type": "integer"}},
    )
    out, errs = process({"spec": {"n": 2.0, "f": 2.0, "ios": 3.0, "list": [1.0]}}, schema)
    assert errs == []
    assert out == {"spec": {"n": 2, "f": 2.0, "ios": 3, "list": [1]}}
    assert type(out["spec"]["n"]) is int
    assert type(out["spec"]["f"]) is float


# ---- check_crd_schema -------------------------------------------------------------------------


def good_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["replicas"],
                "properties": {
                    "replicas": {"type": "integer", "minimum": 0, "default": 1},
                    "port": {"x-kubernetes-int-or-string": True, "default": "http"},
                    "selector": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                    },
                    "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    "items": {
                        "type": "array",
                        "items": {"type": "string", "pattern": "^[a-z]+$"},
                        "default": ["abc"],
                    },
                    "template": {
                        "type": "object",
                        "x-kubernetes-embedded-resource": True,
                        "x-kubernetes-preserve-unknown-fields": True,
                    },
                    "choice": {
                        "type": "string",
                        "anyOf": [{"enum": ["a"]}, {"pattern": "^b"}],
                        "default": "a",
                    },
                },
            },
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }


def test_a_good_schema_passes() -> None:
    assert check_crd_schema(good_schema(), ROOT) == []


def test_cel_rules_are_compiled_at_create() -> None:
    """Rules that compile are served (tests/test_crd_rules.py has their enforcement); one
    that does not is refused naming the rule and the position; rules inside a junctor are
    refused."""
    schema = good_schema()
    schema["x-kubernetes-validations"] = [{"rule": "self.spec.replicas >= 0"}]
    items = schema["properties"]["spec"]["properties"]["items"]["items"]
    items["x-kubernetes-validations"] = [{"rule": "self.size() <", "message": "m"}]
    schema["properties"]["spec"]["anyOf"] = [{"x-kubernetes-validations": [{"rule": "true"}]}]
    errs = check_crd_schema(schema, ROOT)
    where = f"{ROOT}.properties[spec].properties[items].items.x-kubernetes-validations[0].rule"
    by_field = {e.field: e for e in errs}
    assert sorted(by_field) == sorted(
        [f"{ROOT}.properties[spec].anyOf[0].x-kubernetes-validations", where]
    ), errs
    assert by_field[where].reason == "FieldValueInvalid"
    assert "compilation failed: 1:14:" in by_field[where].message
    junctor = by_field[f"{ROOT}.properties[spec].anyOf[0].x-kubernetes-validations"]
    assert junctor.reason == "FieldValueForbidden"


def test_ref_is_refused() -> None:
    schema = good_schema()
    schema["properties"]["spec"]["properties"]["other"] = {"$ref": "#/definitions/x"}
    errs = check_crd_schema(schema, ROOT)
    assert (
        FieldError(
            f"{ROOT}.properties[spec].properties[other].$ref",
            "FieldValueForbidden",
            "$ref is not supported",
        )
        in errs
    )


def test_root_must_be_an_object_schema() -> None:
    assert check_crd_schema({"type": "string"}, ROOT) == [
        FieldError(f"{ROOT}.type", "FieldValueInvalid", "must be object at the root", "string")
    ]
    assert check_crd_schema({"properties": {}}, ROOT) == [
        FieldError(f"{ROOT}.type", "FieldValueRequired", "must not be empty at the root")
    ]


def test_unknown_and_null_types() -> None:
    errs = check_crd_schema(spec_schema(a={"type": "int"}, b={"type": "null"}), ROOT)
    assert errs == [
        FieldError(
            f"{ROOT}.properties[spec].properties[a].type",
            "FieldValueNotSupported",
            'supported values: "array", "boolean", "integer", "number", "object", "string"',
            "int",
        ),
        FieldError(
            f"{ROOT}.properties[spec].properties[b].type",
            "FieldValueForbidden",
            "type cannot be set to null, use nullable as an alternative",
        ),
    ]


def test_bad_pattern() -> None:
    errs = check_crd_schema(spec_schema(a={"type": "string", "pattern": "(unclosed"}), ROOT)
    assert len(errs) == 1
    assert errs[0].field == f"{ROOT}.properties[spec].properties[a].pattern"
    assert errs[0].reason == "FieldValueInvalid"
    assert errs[0].message.startswith("must be a valid regular expression, but isn't: ")
    assert errs[0].value == "(unclosed"


def test_patterns_are_go_regexps() -> None:
    """RE2, whose syntax is Go's regexp, as Kubernetes reads `pattern`: Unicode classes
    (`\\pZ`, `\\p{Greek}`) compile and apply; lookarounds and backreferences, which Python's
    `re` would take, are refused as Kubernetes refuses them."""
    prop = {"type": "string", "pattern": r"^[^\pZ\pC\pS]+$"}  # (a real CRD's, pgadmins)
    assert check_crd_schema(spec_schema(a=prop), ROOT) == []
    assert ok("name_1", prop)
    assert not ok("two words", prop)  # a space is \pZ
    assert not ok("tab\there", prop)  # a control character is \pC
    greek = {"type": "string", "pattern": r"^\p{Greek}+$"}
    assert ok("αβγ", greek) and not ok("abc", greek)
    for go_refuses in (r"^(?=a)a$", r"(a)\1", r"a(?!b)"):
        (err,) = check_crd_schema(spec_schema(a={"type": "string", "pattern": go_refuses}), ROOT)
        assert err.message.startswith("must be a valid regular expression"), go_refuses


def test_specified_fields_and_items_need_a_type() -> None:
    schema = spec_schema(
        untyped={"properties": {"a": {"type": "string"}}},
        list={"type": "array", "items": {"properties": {}}},
        noitems={"type": "array"},
        ios={"x-kubernetes-int-or-string": True},
        free={"x-kubernetes-preserve-unknown-fields": True},
        junctor={"type": "string", "anyOf": [{"pattern": "a"}]},
    )
    assert check_crd_schema(schema, ROOT) == [
        FieldError(
            f"{ROOT}.properties[spec].properties[untyped].type",
            "FieldValueRequired",
            "must not be empty for specified object fields",
        ),
        FieldError(
            f"{ROOT}.properties[spec].properties[list].items.type",
            "FieldValueRequired",
            "must not be empty for specified array items",
        ),
        FieldError(
            f"{ROOT}.properties[spec].properties[noitems].items",
            "FieldValueRequired",
            "must be specified",
        ),
    ]


def test_invalid_defaults() -> None:
    schema = spec_schema(
        n={"type": "integer", "minimum": 1, "default": 0},
        s={"type": "string", "enum": ["a"], "default": 1},
        o={
            "type": "object",
            "properties": {"inner": {"type": "integer", "default": "x"}},
            "default": {},
        },
    )
    errs = check_crd_schema(schema, ROOT)
    at = f"{ROOT}.properties[spec].properties"
    assert errs == [
        FieldError(
            f"{at}[n].default",
            "FieldValueInvalid",
            f"{at}[n].default in body should be greater than or equal to 1",
            "0",
        ),
        FieldError(
            f"{at}[s].default",
            "FieldValueTypeInvalid",
            f'{at}[s].default in body must be of type string: "integer"',
            "integer",
        ),
        FieldError(f"{at}[s].default", "FieldValueNotSupported", 'supported values: "a"', "1"),
        # the object default is defaulted before it is validated, as at run time
        FieldError(
            f"{at}[o].default.inner",
            "FieldValueTypeInvalid",
            f'{at}[o].default.inner in body must be of type integer: "string"',
            "string",
        ),
        FieldError(
            f"{at}[o].properties[inner].default",
            "FieldValueTypeInvalid",
            f'{at}[o].properties[inner].default in body must be of type integer: "string"',
            "string",
        ),
    ]


def test_additional_properties_rules() -> None:
    schema = spec_schema(
        closed={"type": "object", "additionalProperties": False},
        both={
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "additionalProperties": {"type": "string"},
        },
    )
    assert check_crd_schema(schema, ROOT) == [
        FieldError(
            f"{ROOT}.properties[spec].properties[closed].additionalProperties",
            "FieldValueForbidden",
            "additionalProperties cannot be set to false",
        ),
        FieldError(
            f"{ROOT}.properties[spec].properties[both].additionalProperties",
            "FieldValueForbidden",
            "additionalProperties and properties are mutual exclusive",
        ),
    ]


def test_preserve_unknown_fields_false_and_embedded_non_objects() -> None:
    schema = spec_schema(
        a={"type": "object", "x-kubernetes-preserve-unknown-fields": False},
        b={"type": "string", "x-kubernetes-embedded-resource": True},
    )
    assert check_crd_schema(schema, ROOT) == [
        FieldError(
            f"{ROOT}.properties[spec].properties[a].x-kubernetes-preserve-unknown-fields",
            "FieldValueInvalid",
            "must be true or undefined",
            "false",
        ),
        FieldError(
            f"{ROOT}.properties[spec].properties[b].type",
            "FieldValueInvalid",
            "must be object if x-kubernetes-embedded-resource is true",
            "string",
        ),
    ]


def test_malformed_schemas_are_errors_not_exceptions() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"a": "not a schema", "b": {"type": ["string"]}, "c": {"items": [{}]}},
    }
    errs = check_crd_schema(schema, ROOT)
    assert [(e.field, e.reason) for e in errs] == [
        (f"{ROOT}.properties[a]", "FieldValueInvalid"),
        (f"{ROOT}.properties[b].type", "FieldValueInvalid"),
        (f"{ROOT}.properties[c].type", "FieldValueRequired"),
        (f"{ROOT}.properties[c].items", "FieldValueForbidden"),
    ]
    assert check_crd_schema([], ROOT)[0].reason == "FieldValueInvalid"  # type: ignore[arg-type]


# ---- ratcheting (Kubernetes' CRDValidationRatcheting) -------------------------------------


def test_errors_about_unchanged_values_are_ratcheted() -> None:
    """The schema tightened after the object was stored: an update that leaves the value
    alone passes, one that changes it to another invalid value does not."""
    schema = spec_schema(
        size={"type": "string", "maxLength": 3},
        port={"type": "integer", "minimum": 1},
        note={"type": "string"},
    )
    old = {"spec": {"size": "large", "port": 0, "note": "a"}}
    assert validate({"spec": {"size": "large", "port": 0, "note": "b"}}, schema, old=old) == []
    errs = validate({"spec": {"size": "huge!", "port": 0}}, schema, old=old)
    assert [(e.field, e.reason) for e in errs] == [("spec.size", "FieldValueTooLong")]
    # without an old object (a create) nothing is ratcheted
    assert len(validate(old, schema)) == 2


def test_required_additional_properties_and_junctors_are_never_ratcheted() -> None:
    schema = spec_schema(
        owner={"type": "string"},
        tags={"type": "object", "additionalProperties": False, "properties": {}},
        mode={"type": "string", "anyOf": [{"pattern": "^a"}, {"pattern": "^b"}]},
        note={"type": "string"},
    )
    schema["properties"]["spec"]["required"] = ["owner"]  # added since the object was stored
    stored = {"spec": {"tags": {"x": "1"}, "mode": "c", "note": "a"}}
    update = copy.deepcopy(stored)
    update["spec"]["note"] = "b"
    fields = sorted(e.field for e in validate(update, schema, old=stored))
    assert fields == ["spec.mode", "spec.owner", "spec.tags"]


def test_list_items_ratchet_by_index_by_keys_or_as_a_whole() -> None:
    port = {"type": "integer", "minimum": 1}
    item = {"type": "object", "properties": {"name": {"type": "string"}, "port": port}}
    old = {"spec": {"ports": [{"name": "a", "port": 0}, {"name": "b", "port": 1}]}}
    moved = {"spec": {"ports": [{"name": "b", "port": 1}, {"name": "a", "port": 0}]}}

    def fields(list_schema: dict[str, Any], new: dict[str, Any]) -> list[str]:
        return [e.field for e in validate(new, spec_schema(ports=list_schema), old=old)]

    plain = {"type": "array", "items": item}
    assert fields(plain, copy.deepcopy(old)) == []
    assert fields(plain, moved) == ["spec.ports[1].port"]
    keyed = {**plain, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
    assert fields(keyed, moved) == []
    atomic = {**plain, "x-kubernetes-list-type": "atomic"}
    grown = {"spec": {"ports": [*old["spec"]["ports"], {"name": "c", "port": 2}]}}
    assert fields(atomic, grown) == ["spec.ports[0].port"]  # the list changed as a whole


def test_many_errors_under_one_unchanged_list_compare_it_once(monkeypatch) -> None:
    """Review: every error under an unchanged atomic list compared the whole list again, so
    an update of an object with 4,000 items an older schema allowed took 203 s (inside the
    store's update, stalling the replica). Both passes share one `Comparison`: each pair is
    compared once, counted here rather than timed."""
    from haplane.api import crd_rules, ratcheting

    n = 2000
    calls = 0
    real_same = ratcheting.same

    def counted(a: Any, b: Any) -> bool:
        nonlocal calls
        calls += 1
        return real_same(a, b)

    monkeypatch.setattr(ratcheting, "same", counted)
    tag = {
        "type": "string",
        "maxLength": 2,
        "x-kubernetes-validations": [{"rule": "size(self) < 3"}],
    }
    schema = spec_schema(
        tags={"type": "array", "x-kubernetes-list-type": "atomic", "items": tag},
        note={"type": "string"},
    )
    old = {"spec": {"tags": [f"t{i:04}" for i in range(n)], "note": "a"}}
    new = copy.deepcopy(old)
    new["spec"]["note"] = "b"
    comparison = ratcheting.Comparison()
    assert validate(new, schema, old=old, comparison=comparison) == []
    ratcheted: list[FieldError] = []
    errs = crd_rules.enforce(schema, new, old, ratcheted=ratcheted, comparison=comparison)
    assert errs == [] and len(ratcheted) == n
    assert calls < 10 * n  # about n for the one comparison of the list (n * n before)


def test_set_items_and_map_list_keys_are_unique_and_never_ratcheted() -> None:
    """Review: haplane never checked x-kubernetes-list-type uniqueness, and ratcheting paired
    every new item with the first old one with its keys, so `[bad]` -> `[bad, bad]` passed.
    Now a repeated set item or map key is a FieldValueDuplicate at its second appearance
    (Kubernetes' words), whatever the old object, and map items pair one to one."""
    tag = {"type": "string", "maxLength": 2}
    port = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 2}, "port": {"type": "integer"}},
    }
    schema = spec_schema(
        tags={"type": "array", "x-kubernetes-list-type": "set", "items": tag},
        ports={
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "items": port,
        },
        nums={"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "number"}},
    )
    old = {"spec": {"tags": ["bad"], "ports": [{"name": "bad", "port": 1}]}}
    assert validate(copy.deepcopy(old), schema, old=old) == []  # ratcheted: unchanged
    twice = {
        "spec": {
            "tags": ["bad", "bad", "bad"],
            "ports": [{"name": "bad", "port": 1}, {"name": "bad", "port": 1}],
            "nums": [1, 1.0, 2, 2],
        }
    }
    errs = validate(twice, schema, old=old)
    assert [str(e) for e in errs if e.reason == "FieldValueDuplicate"] == [
        'spec.tags[1]: Duplicate value: "bad"',
        'spec.ports[1]: Duplicate value: map[string]interface {}{"name":"bad"}',
        "spec.nums[3]: Duplicate value: 2",
    ]
    # the second "bad" port pairs with no old item: its own name is held against it
    assert "spec.ports[1].name" in [e.field for e in errs]
    assert "spec.ports[0].name" not in [e.field for e in errs]


def test_map_list_items_pair_one_to_one() -> None:
    from haplane.api.ratcheting import ABSENT, pair_by_keys

    a1, a2, b = {"k": "a", "v": 1}, {"k": "a", "v": 2}, {"k": "b"}
    assert pair_by_keys(["k"], [b, a1, a1, a1], [a1, a2, b]) == [b, a1, a2, ABSENT]
    # a key's value is typed, and an absent key is no null one
    assert pair_by_keys(["k"], [{"k": 1}, {}], [{"k": True}, {"k": None}]) == [ABSENT, ABSENT]


def test_map_list_keys_must_be_scalar() -> None:
    """Review: an object as a map list's key reached the key index as a dict (TypeError, a
    500); Kubernetes refuses such a CRD."""
    keyed = {
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name", "ref"],
        "items": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "ref": {"type": "object"}},
        },
    }
    errs = check_crd_schema(spec_schema(ports=keyed), ROOT)
    assert [str(e) for e in errs] == [
        f"{ROOT}.properties[spec].properties[ports].items.properties[ref].type: Invalid value: "
        '"object": must be a scalar type if parent array\'s x-kubernetes-list-type is map'
    ]


def test_a_stored_pattern_only_pythons_re_reads_is_kept_and_still_applies() -> None:
    """An earlier haplane accepted patterns with lookarounds; a CRD stored then stays
    updatable (the pattern is not checked again where it was) and its objects are still
    checked against it. A new such pattern is refused, the reason in words."""
    from haplane.api.crd_schema import Preexisting

    schema = spec_schema(name={"type": "string", "pattern": "^(?!admin)[a-z]+$"})
    (err,) = check_crd_schema(schema, ROOT)
    assert "invalid perl operator" in err.message and "b'" not in err.message
    assert check_crd_schema(schema, ROOT, preexisting=Preexisting.of(schema)) == []
    moved = spec_schema(other={"type": "string", "pattern": "^(?!admin)[a-z]+$"})
    assert check_crd_schema(moved, ROOT, preexisting=Preexisting.of(schema)) != []
    prop = {"type": "string", "pattern": "^(?!admin)[a-z]+$"}
    assert ok("alice", prop)
    assert not ok("admin", prop)


def test_patterns_survive_lone_surrogates_and_large_repeats() -> None:
    """A lone surrogate (JSON allows one) is read as U+FFFD, as Go reads it; a pattern Go
    compiles compiles here too (RE2's default memory would refuse a 1000-fold class)."""
    assert not ok("\ud800", {"type": "string", "pattern": "^[a-z]*$"})
    assert ok("\ud800", {"type": "string", "pattern": "^.$"})
    big = {"type": "string", "pattern": r"^\pL{1,1000}$"}
    assert check_crd_schema(spec_schema(a=big), ROOT) == []
    assert ok("abc", big)
