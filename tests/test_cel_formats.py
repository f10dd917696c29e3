"""Kubernetes' CEL `format` library (haplane.cel.formats): the examples its documentation
gives (k8s.io/apiserver/pkg/cel/library/format.go), failures with Kubernetes' messages, the
rewriting it rests on (positions in errors as written, nothing rewritten inside strings or
fields named `format`), and a CRD rule using it, as OpenShift's MachineOSConfig does."""

from __future__ import annotations

import pytest

from haplane.api.crd_rules import enforce
from haplane.api.crd_schema import check_crd_schema
from haplane.cel import CompileError, Environment
from haplane.cel.cost import estimate

ENV = Environment(("self",))


def validate(expression: str, value: object = None) -> object:
    return ENV.compile(expression).eval({"self": value})


@pytest.mark.parametrize(
    ("fmt", "valid"),
    [
        ("dns1123Label", "my-label-name"),
        ("dns1123Subdomain", "apiextensions.k8s.io"),
        ("dns1035Label", "my-label-name"),
        ("qualifiedName", "apiextensions.k8s.io/v1beta1"),
        ("dns1123LabelPrefix", "my-label-prefix-"),
        ("dns1123SubdomainPrefix", "mysubdomain.prefix.-"),
        ("dns1035LabelPrefix", "my-label-prefix-"),
        ("labelValue", "my_value"),
        ("portName", "http-alt"),
        ("uri", "http://example.com"),
        ("uuid", "123e4567-e89b-12d3-a456-426614174000"),
        ("byte", "aGVsbG8="),
        ("date", "2021-01-01"),
        ("datetime", "2021-01-01T00:00:00Z"),
    ],
)
def test_the_documented_examples_are_valid(fmt: str, valid: str) -> None:
    assert validate(f"format.{fmt}().validate(self).hasValue()", valid) is False
    assert validate(f"format.{fmt}().validate(self) == optional.none()", valid) is True


@pytest.mark.parametrize(
    ("fmt", "value", "messages"),
    [
        ("dns1123Label", "a.b", ["must not contain dots"]),
        (
            "dns1035Label",
            "1abc",
            [
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                "start with an alphabetic character, and end with an alphanumeric character "
                "(e.g. 'my-name',  or 'abc-123', regex used for validation is "
                "'[a-z]([-a-z0-9]*[a-z0-9])?')"
            ],
        ),
        ("dns1123Subdomain", "x" * 254, None),  # too long, and the regex
        ("dns1123LabelPrefix", "-a-", None),  # only a trailing '-' is forgiven
        ("portName", "a--b-", ["must not contain consecutive hyphens",
                               "must not begin or end with a hyphen"]),
        ("portName", "1234", ["must contain at least one letter (a-z)"]),
        ("uri", "example.com", ['parse "example.com": invalid URI for request']),
        ("uuid", "123", ["does not match the UUID format"]),
        ("byte", "not base64!", ["invalid base64"]),
        ("date", "2021-02-30", ["invalid date"]),
        ("datetime", "2021-01-01 noon", ["invalid datetime"]),
    ],
)  # fmt: skip
def test_failures_say_why_as_kubernetes_does(
    fmt: str, value: str, messages: list[str] | None
) -> None:
    got = validate(f"format.{fmt}().validate(self).value()", value)
    assert isinstance(got, list) and got
    if messages is not None:
        assert got == messages
    assert validate(f"format.{fmt}().validate(self).hasValue()", value) is True


def test_the_rewriting_keeps_positions_strings_and_fields() -> None:
    # an error after a rewritten call points where the text as written has it
    text = "format.dns1123Label().validate(self).hasValue() && nosuch"
    with pytest.raises(CompileError) as caught:
        ENV.compile(text)
    assert caught.value.position == (1, text.index("nosuch") + 1)
    # ... on a later line too
    text = "format.uri().validate(self).hasValue() ||\n  nosuch"
    with pytest.raises(CompileError) as caught:
        ENV.compile(text)
    assert caught.value.position == (2, 3)
    # a wrong argument is named as Kubernetes names the call
    with pytest.raises(CompileError) as caught:
        ENV.compile("format.uri().validate(1)")
    assert "'validate'" in str(caught.value) and "__format" not in str(caught.value)
    # inside a string, and as a field's name, `format` is left alone
    assert validate("'format.uri().validate(x)'.size() > 0") is True
    assert validate("self.format.validate", {"format": {"validate": 7}}) == 7
    # nested: the argument is rewritten too
    inner = "format.uuid().validate(format.byte().validate(self).hasValue() ? 'x' : self)"
    assert validate(f"{inner}.hasValue()", "aGVsbG8=") is True
    # an unknown format, and a format chosen at run time, stay compile errors
    for text in ("format.nope().validate(self)", "format.named('uri').value().validate(self)"):
        with pytest.raises(CompileError):
            ENV.compile(text)
    # the internal function cannot be called by name
    with pytest.raises(CompileError):
        ENV.compile("__formatErrors('uri', self)")


def test_a_crd_rule_with_the_format_library_is_accepted_and_enforced() -> None:
    spec = {
        "type": "object",
        "properties": {
            "secret": {
                "type": "string",
                "maxLength": 253,
                "x-kubernetes-validations": [
                    {
                        "rule": "!format.dns1123Subdomain().validate(self).hasValue()",
                        "messageExpression": (
                            "format.dns1123Subdomain().validate(self).value().join(', ')"
                        ),
                    }
                ],
            }
        },
    }
    schema = {"type": "object", "properties": {"spec": spec}}
    assert check_crd_schema(schema, "root") == []
    assert enforce(schema, {"spec": {"secret": "pull-secret.example"}}) == []
    (err,) = enforce(schema, {"spec": {"secret": "Pull_Secret"}})
    assert err.field == "spec.secret"
    assert err.message.startswith("a lowercase RFC 1123 subdomain must consist of")
    # the estimate counts the string's length: an unbounded one costs far more
    rule = "!format.dns1123Subdomain().validate(self).hasValue()"
    tree = ENV.compile(rule).tree()
    bounded = estimate(tree, {"self": {"type": "string", "maxLength": 253}})
    unbounded = estimate(tree, {"self": {"type": "string"}})
    assert bounded < 10_000 < 1_000_000 < unbounded
