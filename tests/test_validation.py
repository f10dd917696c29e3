"""Name and metadata validation: the rules and messages of kube-apiserver."""

from __future__ import annotations

import random
from typing import Any

import pytest

from haplane.api.validation import (
    GENERATED_NAME_ALPHABET,
    FieldError,
    annotations_errors,
    dns1123_label_errors,
    dns1123_subdomain_errors,
    generate_name,
    label_key_errors,
    label_value_errors,
    object_meta_errors,
    path_segment_name_errors,
)

LABEL_RULE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
SUBDOMAIN_RULE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
NAME_PART_RULE = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
VALUE_RULE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
TOO_LONG_63 = "must be no more than 63 characters"
TOO_LONG_253 = "must be no more than 253 characters"

SUBDOMAIN_253 = ".".join(["a" * 63] * 4)[:253]  # four labels, the last one 61 long


def test_subdomain_fixture_is_253_long() -> None:
    assert len(SUBDOMAIN_253) == 253
    assert not SUBDOMAIN_253.endswith(".")


# ---- DNS-1123 labels --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "0", "abc", "my-name", "123-abc", "a--b", "a" * 63])
def test_good_dns1123_labels(value: str) -> None:
    assert dns1123_label_errors(value) == []


@pytest.mark.parametrize(
    "value", ["", "-a", "a-", "-", "A", "aBc", "a_b", "a b", "a/b", "ä", "a\n"]
)
def test_bad_dns1123_labels(value: str) -> None:
    assert dns1123_label_errors(value) == [LABEL_RULE]


def test_dns1123_label_length_boundary() -> None:
    assert dns1123_label_errors("a" * 63) == []
    assert dns1123_label_errors("a" * 64) == [TOO_LONG_63]
    assert dns1123_label_errors("-" * 64) == [TOO_LONG_63, LABEL_RULE]


def test_dns1123_label_with_dots() -> None:
    assert dns1123_label_errors("a.b") == ["must not contain dots"]


# ---- DNS-1123 subdomains ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["a", "example.com", "a.b.c", "1-2.3-4", "a" * 63, "a" * 64, "a" * 253, SUBDOMAIN_253]
)
def test_good_dns1123_subdomains(value: str) -> None:
    assert dns1123_subdomain_errors(value) == []


@pytest.mark.parametrize(
    "value",
    ["", ".", "a.", ".a", "a..b", "a.-b", "a-.b", "Example.com", "a_b.com", "a b", "a/b", "a:1"],
)
def test_bad_dns1123_subdomains(value: str) -> None:
    assert dns1123_subdomain_errors(value) == [SUBDOMAIN_RULE]


def test_dns1123_subdomain_length_boundary() -> None:
    assert dns1123_subdomain_errors("a" * 253) == []
    assert dns1123_subdomain_errors("a" * 254) == [TOO_LONG_253]
    assert dns1123_subdomain_errors(SUBDOMAIN_253) == []
    assert dns1123_subdomain_errors(SUBDOMAIN_253 + "a") == [TOO_LONG_253]
    assert dns1123_subdomain_errors("A" * 254) == [TOO_LONG_253, SUBDOMAIN_RULE]


def test_lengths_count_bytes() -> None:
    # 32 two-byte characters are 64 bytes, as Go counts them.
    assert dns1123_label_errors("é" * 32) == [TOO_LONG_63, LABEL_RULE]
    assert label_value_errors("é" * 31) == [VALUE_RULE]


# ---- path segments ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "system:admin", "Foo_Bar", "a.b", "...", ".a", "a b", ""])
def test_good_path_segment_names(value: str) -> None:
    assert path_segment_name_errors(value) == []


@pytest.mark.parametrize(
    ("value", "errors"),
    [
        (".", ["may not be '.'"]),
        ("..", ["may not be '..'"]),
        ("a/b", ["may not contain '/'"]),
        ("100%", ["may not contain '%'"]),
        ("a/%", ["may not contain '/'", "may not contain '%'"]),
    ],
)
def test_bad_path_segment_names(value: str, errors: list[str]) -> None:
    assert path_segment_name_errors(value) == errors


# ---- label keys and values --------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "app",
        "MyName",
        "my.name",
        "123-abc",
        "a_b-c.d",
        "k" * 63,
        "example.com/app",
        "app.kubernetes.io/name",
        "a/b",
        f"{SUBDOMAIN_253}/{'k' * 63}",
    ],
)
def test_good_label_keys(key: str) -> None:
    assert label_key_errors(key) == []


@pytest.mark.parametrize(
    ("key", "errors"),
    [
        ("", ["name part must be non-empty", f"name part {NAME_PART_RULE}"]),
        ("-a", [f"name part {NAME_PART_RULE}"]),
        ("a_", [f"name part {NAME_PART_RULE}"]),
        ("a b", [f"name part {NAME_PART_RULE}"]),
        ("k" * 64, [f"name part {TOO_LONG_63}"]),
        ("_" * 64, [f"name part {TOO_LONG_63}", f"name part {NAME_PART_RULE}"]),
        ("/a", ["prefix part must be non-empty"]),
        ("a/", ["name part must be non-empty", f"name part {NAME_PART_RULE}"]),
        ("Example.com/a", [f"prefix part {SUBDOMAIN_RULE}"]),
        ("ex_ample.com/a", [f"prefix part {SUBDOMAIN_RULE}"]),
        ("a" * 254 + "/a", [f"prefix part {TOO_LONG_253}"]),
        (f"{SUBDOMAIN_253}/{'k' * 64}", [f"name part {TOO_LONG_63}"]),
        (
            "a/b/c",
            [
                f"a qualified name {NAME_PART_RULE} with an optional DNS subdomain prefix and '/' "
                "(e.g. 'example.com/MyName')"
            ],
        ),
    ],
)
def test_bad_label_keys(key: str, errors: list[str]) -> None:
    assert label_key_errors(key) == errors


@pytest.mark.parametrize("value", ["", "a", "MyValue", "my_value", "12345", "a.b-c_d", "v" * 63])
def test_good_label_values(value: str) -> None:
    assert label_value_errors(value) == []


@pytest.mark.parametrize("value", ["-a", "a-", "_", ".", "a b", "a/b", "a:b", "ä"])
def test_bad_label_values(value: str) -> None:
    assert label_value_errors(value) == [VALUE_RULE]


def test_label_value_length_boundary() -> None:
    assert label_value_errors("v" * 63) == []
    assert label_value_errors("v" * 64) == [TOO_LONG_63]
    assert label_value_errors("-" * 64) == [TOO_LONG_63, VALUE_RULE]


# ---- annotations ------------------------------------------------------------------------------


def test_good_annotations() -> None:
    assert annotations_errors({}) == []
    assert annotations_errors({"a": "", "example.com/note": "any text at all: ünïcode, / %"}) == []


def test_annotation_keys_are_case_insensitive() -> None:
    assert annotations_errors({"Example.COM/Key": "v"}) == []
    assert label_key_errors("Example.COM/Key") == [f"prefix part {SUBDOMAIN_RULE}"]


def test_bad_annotation_keys_are_named() -> None:
    assert annotations_errors({"ok": "v", "bad key": "v", "/x": ""}) == [
        f'Invalid value: "bad key": name part {NAME_PART_RULE}',
        'Invalid value: "/x": prefix part must be non-empty',
    ]


def test_annotations_size_limit_is_256_kib_of_keys_and_values() -> None:
    limit = 262144
    at_limit = {"a": "x" * (limit - 1 - 2 - 10), "bb": "y" * 10}
    assert annotations_errors(at_limit) == []
    over = {"a": "x" * (limit - 1 - 2 - 10), "bb": "y" * 11}
    assert annotations_errors(over) == [
        "Too long: may not be more than 262144 bytes "
        "(the keys and values of the annotations total 262145 bytes)"
    ]
    # bytes, not characters: 'é' is two bytes
    assert annotations_errors({"a": "é" * (limit // 2)}) != []
    assert annotations_errors({"a": "é" * ((limit - 1) // 2)}) == []


# ---- object metadata --------------------------------------------------------------------------


def meta_errors(
    meta: Any, *, namespaced: bool = True, rule: str = "dns1123-subdomain"
) -> list[FieldError]:
    return object_meta_errors(meta, namespaced=namespaced, name_rule=rule)  # type: ignore[arg-type]


def test_valid_metadata() -> None:
    meta = {
        "name": "web-1",
        "namespace": "default",
        "labels": {"app": "web", "example.com/tier": ""},
        "annotations": {"Example.com/Note": "anything"},
        "uid": "ignored here",
    }
    assert meta_errors(meta) == []
    assert meta_errors({"name": "n", "labels": None, "annotations": None, "namespace": "x"}) == []


def test_missing_name() -> None:
    expected = [
        FieldError("metadata.name", "FieldValueRequired", "name or generateName is required")
    ]
    assert meta_errors({"namespace": "ns"}) == expected
    assert meta_errors({"name": "", "namespace": "ns"}) == expected
    assert meta_errors({"name": None, "generateName": "", "namespace": "ns"}) == expected
    assert expected[0].body() == "Required value: name or generateName is required"


@pytest.mark.parametrize(
    ("rule", "good", "bad", "message"),
    [
        ("dns1123-subdomain", "a.b-c", "A", SUBDOMAIN_RULE),
        ("dns1123-label", "a-b", "a_b", LABEL_RULE),
        ("dns1123-label", "a-b", "a.b", "must not contain dots"),
        ("path-segment", "system:Admin_1", "a/b", "may not contain '/'"),
        ("path-segment", "system:Admin_1", "..", "may not be '..'"),
    ],
)
def test_name_rules(rule: str, good: str, bad: str, message: str) -> None:
    assert meta_errors({"name": good, "namespace": "ns"}, rule=rule) == []
    assert meta_errors({"name": bad, "namespace": "ns"}, rule=rule) == [
        FieldError("metadata.name", "FieldValueInvalid", message, bad)
    ]


def test_name_length_boundaries() -> None:
    assert meta_errors({"name": "a" * 253, "namespace": "n"}) == []
    assert meta_errors({"name": "a" * 254, "namespace": "n"}) == [
        FieldError("metadata.name", "FieldValueInvalid", TOO_LONG_253, "a" * 254)
    ]
    assert meta_errors({"name": "a" * 63}, namespaced=False, rule="dns1123-label") == []
    assert meta_errors({"name": "a" * 64}, namespaced=False, rule="dns1123-label") == [
        FieldError("metadata.name", "FieldValueInvalid", TOO_LONG_63, "a" * 64)
    ]


def test_generate_name_instead_of_name() -> None:
    assert meta_errors({"generateName": "web-", "namespace": "ns"}) == []
    assert meta_errors({"generateName": "web", "namespace": "ns"}) == []
    assert meta_errors({"generateName": "x" * 100, "namespace": "ns"}) == []  # cut to 58
    assert meta_errors({"generateName": "ns-"}, namespaced=False, rule="dns1123-label") == []
    assert meta_errors({"generateName": "a.b-"}, namespaced=False, rule="path-segment") == []


def test_bad_generate_name() -> None:
    assert meta_errors({"generateName": "Web-", "namespace": "ns"}) == [
        FieldError("metadata.generateName", "FieldValueInvalid", SUBDOMAIN_RULE, "Web-")
    ]
    assert meta_errors({"generateName": "-", "namespace": "ns"}) == [
        FieldError("metadata.generateName", "FieldValueInvalid", SUBDOMAIN_RULE, "-")
    ]
    assert meta_errors({"generateName": "a/"}, namespaced=False, rule="path-segment") == [
        FieldError("metadata.generateName", "FieldValueInvalid", "may not contain '/'", "a/")
    ]
    # Like Kubernetes, a label-rule prefix itself may not exceed 63 characters.
    long = "x" * 64
    assert meta_errors({"generateName": long}, namespaced=False, rule="dns1123-label") == [
        FieldError("metadata.generateName", "FieldValueInvalid", TOO_LONG_63, long)
    ]


def test_name_and_generate_name_are_both_checked() -> None:
    assert meta_errors({"name": "web-x7k2p", "generateName": "web-", "namespace": "ns"}) == []
    assert meta_errors({"name": "Web", "generateName": "Web-", "namespace": "ns"}) == [
        FieldError("metadata.generateName", "FieldValueInvalid", SUBDOMAIN_RULE, "Web-"),
        FieldError("metadata.name", "FieldValueInvalid", SUBDOMAIN_RULE, "Web"),
    ]


def test_namespace() -> None:
    assert meta_errors({"name": "n", "namespace": "kube-system"}) == []
    assert meta_errors({"name": "n", "namespace": "a" * 63}) == []
    assert meta_errors({"name": "n", "namespace": "a" * 64}) == [
        FieldError("metadata.namespace", "FieldValueInvalid", TOO_LONG_63, "a" * 64)
    ]
    assert meta_errors({"name": "n", "namespace": "Bad_NS"}) == [
        FieldError("metadata.namespace", "FieldValueInvalid", LABEL_RULE, "Bad_NS")
    ]
    assert meta_errors({"name": "n", "namespace": "a.b"}) == [
        FieldError("metadata.namespace", "FieldValueInvalid", "must not contain dots", "a.b")
    ]
    required = [
        FieldError(
            "metadata.namespace", "FieldValueRequired", "namespace is required for this kind"
        )
    ]
    assert meta_errors({"name": "n"}) == required
    assert meta_errors({"name": "n", "namespace": ""}) == required


def test_namespace_of_cluster_scoped_kind_is_not_checked() -> None:
    assert meta_errors({"name": "n"}, namespaced=False) == []
    assert meta_errors({"name": "n", "namespace": "Bad_NS"}, namespaced=False) == []


def test_labels() -> None:
    meta = {"name": "n", "namespace": "ns", "labels": {"-bad": "ok", "good": "-bad-", "k": ""}}
    assert meta_errors(meta) == [
        FieldError("metadata.labels", "FieldValueInvalid", f"name part {NAME_PART_RULE}", "-bad"),
        FieldError("metadata.labels", "FieldValueInvalid", VALUE_RULE, "-bad-"),
    ]


def test_annotations() -> None:
    meta = {"name": "n", "namespace": "ns", "annotations": {"a/b/c": "v", "ok": "x" * 262143}}
    errs = meta_errors(meta)
    assert [(e.field, e.reason, e.value) for e in errs] == [
        ("metadata.annotations", "FieldValueInvalid", "a/b/c"),
        ("metadata.annotations", "FieldValueTooLong", None),
    ]
    assert errs[1].message == (
        "may not be more than 262144 bytes (the keys and values of the annotations total "
        "262151 bytes)"  # 5 + 1 + 2 + 262143
    )


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        (
            {"name": 5, "namespace": "ns"},
            [FieldError("metadata.name", "FieldValueInvalid", "must be a string, not number")],
        ),
        (
            {"name": ["a"], "generateName": "a-", "namespace": "ns"},
            [FieldError("metadata.name", "FieldValueInvalid", "must be a string, not array")],
        ),
        (
            {"generateName": True, "namespace": "ns"},
            [
                FieldError(
                    "metadata.generateName", "FieldValueInvalid", "must be a string, not boolean"
                )
            ],
        ),
        (
            {"name": "n", "namespace": {"a": 1}},
            [FieldError("metadata.namespace", "FieldValueInvalid", "must be a string, not object")],
        ),
        (
            {"name": "n", "namespace": "ns", "labels": ["a=b"]},
            [
                FieldError(
                    "metadata.labels",
                    "FieldValueInvalid",
                    "must be an object of strings to strings, not array",
                )
            ],
        ),
        (
            {"name": "n", "namespace": "ns", "labels": {"version": 1, "ok": "v"}},
            [
                FieldError(
                    "metadata.labels[version]", "FieldValueInvalid", "must be a string, not number"
                )
            ],
        ),
        (
            {"name": "n", "namespace": "ns", "labels": {1: "v"}},
            [
                FieldError(
                    "metadata.labels", "FieldValueInvalid", "keys must be strings, not number"
                )
            ],
        ),
        (
            {"name": "n", "namespace": "ns", "annotations": "note"},
            [
                FieldError(
                    "metadata.annotations",
                    "FieldValueInvalid",
                    "must be an object of strings to strings, not string",
                )
            ],
        ),
        (
            {"name": "n", "namespace": "ns", "annotations": {"a": None}},
            [
                FieldError(
                    "metadata.annotations[a]", "FieldValueInvalid", "must be a string, not null"
                )
            ],
        ),
        (
            ["not", "a", "map"],
            [FieldError("metadata", "FieldValueInvalid", "must be an object, not array")],
        ),
    ],
)
def test_wrong_types_are_invalid_not_exceptions(meta: Any, expected: list[FieldError]) -> None:
    assert meta_errors(meta) == expected


def test_wrong_type_namespace_of_cluster_scoped_kind() -> None:
    assert meta_errors({"name": "n", "namespace": 3}, namespaced=False) == [
        FieldError("metadata.namespace", "FieldValueInvalid", "must be a string, not number")
    ]


def test_field_error_renders_like_a_status_cause() -> None:
    err = FieldError("metadata.name", "FieldValueInvalid", "must not contain dots", "a.b")
    assert err.body() == 'Invalid value: "a.b": must not contain dots'
    assert err.cause() == {
        "reason": "FieldValueInvalid",
        "message": 'Invalid value: "a.b": must not contain dots',
        "field": "metadata.name",
    }
    assert str(err) == 'metadata.name: Invalid value: "a.b": must not contain dots'
    too_long = FieldError("metadata.annotations", "FieldValueTooLong", "may not be more than 1")
    assert too_long.body() == "Too long: may not be more than 1"
    assert FieldError("metadata.namespace", "FieldValueRequired", "").body() == "Required value"


# ---- generated names --------------------------------------------------------------------------


def test_generated_name_shape() -> None:
    rng = random.Random(7)
    for _ in range(200):
        name = generate_name("web-", rng)
        assert name.startswith("web-")
        assert len(name) == 9
        assert all(c in GENERATED_NAME_ALPHABET for c in name[4:])


def test_generated_name_alphabet() -> None:
    assert GENERATED_NAME_ALPHABET == "bcdfghjklmnpqrstvwxz2456789"
    seen: set[str] = set()
    rng = random.Random(1)
    for _ in range(500):
        seen.update(generate_name("", rng))
    assert seen == set(GENERATED_NAME_ALPHABET)


def test_generated_name_prefix_is_cut_to_58() -> None:
    prefix = "p" * 100
    name = generate_name(prefix, random.Random(0))
    assert len(name) == 63
    assert name[:58] == "p" * 58
    assert name[58] != "p"
    assert len(generate_name("p" * 58)) == 63
    assert generate_name("p" * 57).startswith("p" * 57)
    assert len(generate_name("p" * 57)) == 62


def test_generated_names_are_reproducible_with_a_seed_and_valid() -> None:
    assert generate_name("a-", random.Random(3)) == generate_name("a-", random.Random(3))
    names = {generate_name("a-") for _ in range(50)}
    assert len(names) > 1
    assert all(dns1123_label_errors(n) == [] for n in names)


def test_invalid_is_worded_as_apimachinery_new_invalid():
    """`Kind.group "name" is invalid: ...`: the group qualifies the kind; several errors are
    one aggregate in brackets, each text once; none, no colon."""
    from haplane.api import errors

    one = {"field": "spec.x", "message": "Required value"}
    two = {"field": "spec.y", "message": "Invalid value: 3: must be even"}
    e = errors.invalid("Widget", "w", [one], group="example.com")
    assert e.message == 'Widget.example.com "w" is invalid: spec.x: Required value'
    assert (e.status()["details"]["group"], e.status()["details"]["kind"]) == (
        "example.com",
        "Widget",
    )
    e = errors.invalid("ConfigMap", "c", [one, two, one])
    assert e.message == (
        'ConfigMap "c" is invalid: [spec.x: Required value, spec.y: Invalid value: 3: must be even]'
    )
    assert len(e.status()["details"]["causes"]) == 3  # the causes stay as they were
    assert errors.invalid("ConfigMap", "c", []).message == 'ConfigMap "c" is invalid'
