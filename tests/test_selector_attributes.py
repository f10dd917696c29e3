"""Access reviews' field and label selectors (api.selector_attributes): kube-apiserver's
validation messages (from Kubernetes' own validation tests) and its evaluationError."""

from __future__ import annotations

import pytest

from haplane.api.selector_attributes import causes, evaluation_error

F, L = "spec.resourceAttributes.fieldSelector", "spec.resourceAttributes.labelSelector"


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        (
            {"fieldSelector": {"rawSelector": "foo", "requirements": [{}]}},
            f'{F}.rawSelector: Invalid value: "foo": may not specified at the same time as '
            "requirements",
        ),
        (
            {"fieldSelector": {}},
            f"{F}.requirements: Required value: when {F} is specified, requirements or "
            "rawSelector is required",
        ),
        (
            {"fieldSelector": {"requirements": [{"key": ""}]}},
            f"{F}.requirements[0].key: Required value: must be specified",
        ),
        (
            {"fieldSelector": {"requirements": [{"key": "k", "operator": "NotIn", "values": []}]}},
            f"{F}.requirements[0].values: Required value: must be specified when `operator` is "
            "'In' or 'NotIn'",
        ),
        (
            {
                "fieldSelector": {
                    "requirements": [{"key": "k", "operator": "Exists", "values": ["val"]}]
                }
            },
            f"{F}.requirements[0].values: Forbidden: may not be specified when `operator` is "
            "'Exists' or 'DoesNotExist'",
        ),
        (
            {"labelSelector": {"requirements": [{"key": ""}]}},
            f'{L}.requirements[0].key: Invalid value: "": name part must be non-empty',
        ),
        (
            {"labelSelector": {"requirements": [{"key": "()foo"}]}},
            f'{L}.requirements[0].key: Invalid value: "()foo": name part must consist of '
            "alphanumeric characters",
        ),
        (
            {"labelSelector": {"requirements": [{"key": "k", "operator": "In"}]}},
            f"{L}.requirements[0].values: Required value: must be specified when `operator` is "
            "'In' or 'NotIn'",
        ),
    ],
)
def test_validation_as_kube_apiserver(attrs: dict, expected: str) -> None:
    errs = causes(attrs)
    assert errs and str(errs[0]).startswith(expected), [str(e) for e in errs]


def test_every_cause_in_kube_apiservers_order() -> None:
    """The values against the operator first, then the key, then each label value (so the
    first cause, which the message leads with, is Kubernetes')."""
    wrong = {"labelSelector": {"requirements": [{"key": "()k", "operator": "In"}]}}
    assert [e.field for e in causes(wrong)] == [
        f"{L}.requirements[0].values",
        f"{L}.requirements[0].key",
    ]
    values = {"labelSelector": {"requirements": [
        {"key": "app", "operator": "In", "values": ["web", "bad value!"]}]}}  # fmt: skip
    (only,) = causes(values)
    assert str(only).startswith(
        f'{L}.requirements[0].values[1]: Invalid value: "bad value!": a valid label must be '
        "an empty string or consist of alphanumeric characters"
    ), str(only)
    # field selector values are not label values
    field = {"fieldSelector": {"requirements": [
        {"key": "spec.x", "operator": "In", "values": ["any value!"]}]}}  # fmt: skip
    assert causes(field) == []


def test_valid_selectors_and_unknown_operators_pass_validation() -> None:
    assert causes({}) == []
    assert causes({"fieldSelector": {"rawSelector": "spec.nodeName=n1"}}) == []
    assert causes({"labelSelector": {"requirements": [{"key": "a", "operator": "Exists"}]}}) == []
    # a newer client's operator: allowed by validation, then ignored by the parse
    newer = {"labelSelector": {"requirements": [{"key": "a", "operator": "Gt", "values": ["1"]}]}}
    assert causes(newer) == []
    assert evaluation_error(newer) == f"{L} ignored due to parse error"


def test_evaluation_error_names_what_was_not_understood() -> None:
    assert evaluation_error({"fieldSelector": {"rawSelector": "a=b,c!=d"}}) == ""
    assert evaluation_error({"labelSelector": {"rawSelector": "app in (a,b),!x"}}) == ""
    # Kubernetes' own case ("resource denied, invalid selectors")
    both_bad = {
        "fieldSelector": {"rawSelector": "key in value"},
        "labelSelector": {"rawSelector": "&"},
    }
    assert evaluation_error(both_bad) == (
        f"{F} ignored due to parse error; {L} ignored due to parse error"
    )
    partly = {
        "fieldSelector": {
            "requirements": [
                {"key": "spec.nodeName", "operator": "In", "values": ["n1"]},
                {"key": "x", "operator": "In", "values": ["a", "b"]},  # one value at most
                {"key": "y", "operator": "Exists"},  # not supported by fields
            ]
        }
    }
    assert evaluation_error(partly) == f"{F} partially ignored due to parse error"
    label_partly = {
        "labelSelector": {
            "requirements": [
                {"key": "app", "operator": "NotIn", "values": ["web"]},
                {"key": "bad key", "operator": "Exists"},
            ]
        }
    }
    assert evaluation_error(label_partly) == f"{L} partially ignored due to parse error"
