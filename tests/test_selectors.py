"""Label and field selectors: the grammar of k8s.io/apimachinery, matching, and error messages."""

from __future__ import annotations

import pytest

from haplane.api.selectors import (
    FieldRequirement,
    FieldSelector,
    LabelSelector,
    Requirement,
    SelectorError,
    escape_field_value,
    parse_field_selector,
    parse_label_selector,
)

SUPPORTED = {"metadata.name", "metadata.namespace"}


def sel(text: str) -> LabelSelector:
    return parse_label_selector(text)


# ---- label selectors: parsing -----------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", "   ", " \t\r\n "])
def test_empty_label_selector_matches_everything(text: str | None) -> None:
    s = parse_label_selector(text)
    assert s.empty()
    assert s.requirements == ()
    assert s.matches({})
    assert s.matches(None)
    assert s.matches({"a": "b"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=b", Requirement("a", "=", ("b",))),
        ("a==b", Requirement("a", "=", ("b",))),
        ("a!=b", Requirement("a", "!=", ("b",))),
        ("a in (x,y)", Requirement("a", "in", ("x", "y"))),
        ("a notin (x,y)", Requirement("a", "notin", ("x", "y"))),
        ("a", Requirement("a", "exists")),
        ("!a", Requirement("a", "!")),
        ("a=", Requirement("a", "=", ("",))),
        ("a!=", Requirement("a", "!=", ("",))),
        ("example.com/app=web", Requirement("example.com/app", "=", ("web",))),
    ],
)
def test_each_operator_parses(text: str, expected: Requirement) -> None:
    s = sel(text)
    assert s.requirements == (expected,)
    assert not s.empty()


def test_whitespace_around_every_token() -> None:
    s = sel("  a = b ,  c  in  ( x ,  y )  , d != e,\t! f ,g  notin(h)  ,  i== j ")
    assert s.requirements == (
        Requirement("a", "=", ("b",)),
        Requirement("c", "in", ("x", "y")),
        Requirement("d", "!=", ("e",)),
        Requirement("f", "!"),
        Requirement("g", "notin", ("h",)),
        Requirement("i", "=", ("j",)),
    )


def test_no_whitespace_needed_around_symbols() -> None:
    assert sel("a in(x),!b,c!=d") == sel("a in (x), !b, c != d")


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("a in (x,)", ("", "x")),
        ("a in (,x)", ("", "x")),
        ("a in (x,,y)", ("", "x", "y")),
        ("a in ()", ("",)),
        ("a in (,)", ("",)),
        ("a in (y,x,y)", ("x", "y")),  # a set: sorted, no duplicates
        ("a in (in,notin)", ("in", "notin")),  # keywords are plain words among values
    ],
)
def test_value_sets(text: str, values: tuple[str, ...]) -> None:
    assert sel(text).requirements == (Requirement("a", "in", values),)


def test_in_and_notin_are_words_as_values_of_exact_match() -> None:
    assert sel("a=in,b!=notin").requirements == (
        Requirement("a", "=", ("in",)),
        Requirement("b", "!=", ("notin",)),
    )


def test_str_renders_a_parseable_selector() -> None:
    s = sel("a=b, c in (y,x), !d, e, f notin (,g), h!=i")
    assert str(s) == "a=b,c in (x,y),!d,e,f notin (,g),h!=i"
    assert sel(str(s)) == s


# ---- label selectors: matching ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("a=b", {"a": "b"}, True),
        ("a=b", {"a": "c"}, False),
        ("a=b", {}, False),
        ("a==b", {"a": "b", "x": "y"}, True),
        ("a=", {"a": ""}, True),
        ("a=", {}, False),
        ("a=", {"a": "b"}, False),
        ("a!=b", {"a": "c"}, True),
        ("a!=b", {"a": "b"}, False),
        ("a!=b", {}, True),  # a missing key is "not equal"
        ("a!=", {}, True),
        ("a!=", {"a": ""}, False),
        ("a in (x,y)", {"a": "x"}, True),
        ("a in (x,y)", {"a": "y"}, True),
        ("a in (x,y)", {"a": "z"}, False),
        ("a in (x,y)", {}, False),
        ("a in (x,)", {"a": ""}, True),
        ("a in (x)", {"a": ""}, False),
        ("a notin (x,y)", {"a": "z"}, True),
        ("a notin (x,y)", {"a": "x"}, False),
        ("a notin (x,y)", {}, True),  # a missing key is "not in"
        ("a notin (x,)", {"a": ""}, False),
        ("a", {"a": ""}, True),
        ("a", {"a": "anything"}, True),
        ("a", {"b": "a"}, False),
        ("!a", {}, True),
        ("!a", {"b": "c"}, True),
        ("!a", {"a": ""}, False),
        ("example.com/a=b", {"example.com/a": "b"}, True),
        ("example.com/a=b", {"a": "b"}, False),
    ],
)
def test_matching(text: str, labels: dict[str, str], expected: bool) -> None:
    assert sel(text).matches(labels) is expected


def test_none_labels_are_no_labels() -> None:
    assert sel("!a").matches(None)
    assert sel("a!=b").matches(None)
    assert not sel("a").matches(None)
    assert not sel("a=b").matches(None)


def test_requirements_are_anded() -> None:
    s = sel("app=web,tier in (front,back),!canary,env!=prod")
    assert s.matches({"app": "web", "tier": "front"})
    assert s.matches({"app": "web", "tier": "back", "env": "dev"})
    assert not s.matches({"app": "web", "tier": "middle"})
    assert not s.matches({"app": "db", "tier": "front"})
    assert not s.matches({"app": "web", "tier": "front", "canary": "true"})
    assert not s.matches({"app": "web", "tier": "front", "env": "prod"})
    assert not s.matches({"tier": "front"})


def test_requirement_matches_directly() -> None:
    assert Requirement("a", "in", ("x",)).matches({"a": "x"})
    assert not Requirement("a", "exists").matches({})


@pytest.mark.parametrize(
    ("key", "operator", "values"),
    [
        ("a", ">", ("1",)),
        ("a", "==", ("1",)),
        ("a", "=", ()),
        ("a", "!=", ("x", "y")),
        ("a", "in", ()),
        ("a", "exists", ("x",)),
        ("a", "!", ("x",)),
    ],
)
def test_requirement_rejects_bad_arity_or_operator(
    key: str, operator: str, values: tuple[str, ...]
) -> None:
    with pytest.raises(SelectorError):
        Requirement(key, operator, values)


# ---- label selectors: errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # missing or misplaced operators and values
        ("a b", "unable to parse requirement: found 'b', expected: in, notin, =, ==, !="),
        ("a in", "unable to parse requirement: found end of string, expected: '('"),
        ("a notin", "unable to parse requirement: found end of string, expected: '('"),
        ("a in b", "unable to parse requirement: found 'b', expected: '('"),
        ("a in b,c", "unable to parse requirement: found 'b', expected: '('"),
        ("a=(b)", "unable to parse requirement: found '(', expected: identifier"),
        ("a!=)", "unable to parse requirement: found ')', expected: identifier"),
        ("a=b=c", "found '=', expected: ',' or 'end of string'"),
        ("a=b c", "found 'c', expected: ',' or 'end of string'"),
        ("!a=b", "found '=', expected: ',' or 'end of string'"),
        ("!", "unable to parse requirement: found end of string, expected: identifier"),
        ("!!a", "unable to parse requirement: found '!', expected: identifier"),
        (
            "a>1",
            "unable to parse requirement: found '>': the gt and lt operators are not "
            "supported, expected: in, notin, =, ==, !=",
        ),
        (
            "a<1",
            "unable to parse requirement: found '<': the gt and lt operators are not "
            "supported, expected: in, notin, =, ==, !=",
        ),
        # parentheses
        ("a in (b", "unable to parse requirement: found end of string, expected: ',' or ')'"),
        (
            "a in (b,",
            "unable to parse requirement: found end of string, expected: ',', ')' or identifier",
        ),
        (
            "a in (",
            "unable to parse requirement: found end of string, expected: ',', ')' or identifier",
        ),
        ("a in (b c)", "unable to parse requirement: found 'c', expected: ',' or ')'"),
        ("a in (=)", "unable to parse requirement: found '=', expected: ',', ')' or identifier"),
        ("a in (b))", "found ')', expected: ',' or 'end of string'"),
        # commas and garbage
        ("a,", "found end of string, expected: identifier after ','"),
        ("a,,b", "found ',', expected: identifier after ','"),
        (",a", "found ',', expected: !, identifier, or 'end of string'"),
        ("=a", "found '=', expected: !, identifier, or 'end of string'"),
        ("(((", "found '(', expected: !, identifier, or 'end of string'"),
        ("in=a", "found 'in', expected: !, identifier, or 'end of string'"),
        ("a=b,notin", "found 'notin', expected: identifier after ','"),
    ],
)
def test_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_label_selector(text)
    assert str(info.value) == message


_NAME_PART_RULE = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
    "used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_VALUE_RULE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


def test_bad_key_is_named() -> None:
    with pytest.raises(SelectorError) as info:
        parse_label_selector("-a=b")
    assert str(info.value) == (
        f'unable to parse requirement: key: Invalid value: "-a": {_NAME_PART_RULE}'
    )


@pytest.mark.parametrize(
    "text",
    [
        "-a",
        "a-=b",
        "!_a",
        "a@b in (c)",
        "Example.com/a=b",  # the prefix must be lower case
        "/a=b",
        "a/=b",
        "a/b/c=d",
        "k" * 64 + "=v",
        "a" * 254 + "/b=c",
    ],
)
def test_bad_keys(text: str) -> None:
    with pytest.raises(SelectorError, match=r"^unable to parse requirement: key: Invalid value"):
        parse_label_selector(text)


def test_longest_keys_are_accepted() -> None:
    prefix = ".".join(["a" * 63] * 4)[:253]
    assert len(prefix) == 253
    key = f"{prefix}/{'k' * 63}"
    assert sel(f"{key}=v").requirements == (Requirement(key, "=", ("v",)),)


def test_bad_value_is_named() -> None:
    with pytest.raises(SelectorError) as info:
        parse_label_selector("a in (ok, -bad)")
    assert str(info.value) == (
        f'unable to parse requirement: values[1]: Invalid value: "-bad": {_VALUE_RULE}'
    )


@pytest.mark.parametrize(
    "text",
    ["a=-b", "a!=b-", "a in (x,y z)", "a notin (ok,b@d)", "a=" + "v" * 64, 'a="b"'],
)
def test_bad_values(text: str) -> None:
    with pytest.raises(SelectorError, match=r"^unable to parse requirement: "):
        parse_label_selector(text)


def test_longest_value_is_accepted() -> None:
    assert sel("a=" + "v" * 63).matches({"a": "v" * 63})


def test_selector_error_is_a_value_error() -> None:
    assert issubclass(SelectorError, ValueError)


# ---- field selectors --------------------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", ",", ",,"])
def test_empty_field_selector(text: str | None) -> None:
    s = parse_field_selector(text, SUPPORTED)
    assert s.empty()
    assert s.matches({})
    assert s.matches({"metadata.name": "x"})
    assert s.value_of("metadata.name") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metadata.name=x", FieldRequirement("metadata.name", "=", "x")),
        ("metadata.name==x", FieldRequirement("metadata.name", "=", "x")),
        ("metadata.name!=x", FieldRequirement("metadata.name", "!=", "x")),
        ("metadata.name=", FieldRequirement("metadata.name", "=", "")),
        ("metadata.name!=", FieldRequirement("metadata.name", "!=", "")),
    ],
)
def test_field_operators(text: str, expected: FieldRequirement) -> None:
    assert parse_field_selector(text, SUPPORTED).requirements == (expected,)


@pytest.mark.parametrize(
    ("text", "fields", "expected"),
    [
        ("metadata.name=x", {"metadata.name": "x"}, True),
        ("metadata.name=x", {"metadata.name": "y"}, False),
        ("metadata.name=x", {}, False),
        ("metadata.name==x", {"metadata.name": "x"}, True),
        ("metadata.name!=x", {"metadata.name": "y"}, True),
        ("metadata.name!=x", {"metadata.name": "x"}, False),
        ("metadata.name!=x", {}, True),
        ("metadata.name=", {}, True),  # an absent field reads as ""
        ("metadata.name!=", {}, False),
        ("metadata.name=x,metadata.namespace=ns", {"metadata.name": "x"}, False),
        (
            "metadata.name=x,metadata.namespace=ns",
            {"metadata.name": "x", "metadata.namespace": "ns"},
            True,
        ),
        (
            "metadata.name=x,metadata.namespace!=ns",
            {"metadata.name": "x", "metadata.namespace": "ns"},
            False,
        ),
    ],
)
def test_field_matching(text: str, fields: dict[str, str], expected: bool) -> None:
    assert parse_field_selector(text, SUPPORTED).matches(fields) is expected


def test_field_escapes() -> None:
    s = parse_field_selector(r"metadata.name=a\,b\=c\\d,metadata.namespace=ns", SUPPORTED)
    assert s.requirements == (
        FieldRequirement("metadata.name", "=", "a,b=c\\d"),
        FieldRequirement("metadata.namespace", "=", "ns"),
    )
    assert s.matches({"metadata.name": "a,b=c\\d", "metadata.namespace": "ns"})
    assert str(s) == r"metadata.name=a\,b\=c\\d,metadata.namespace=ns"
    assert parse_field_selector(str(s), SUPPORTED) == s


def test_escaped_backslash_before_comma_ends_the_value() -> None:
    s = parse_field_selector(r"metadata.name=a\\,metadata.namespace=b", SUPPORTED)
    assert s.requirements == (
        FieldRequirement("metadata.name", "=", "a\\"),
        FieldRequirement("metadata.namespace", "=", "b"),
    )


def test_escape_field_value() -> None:
    assert escape_field_value("a,b=c\\") == r"a\,b\=c\\"
    assert escape_field_value("plain") == "plain"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("spec.nodeName=x", "field label not supported: spec.nodeName"),
        ("metadata.name=x,status.phase!=Running", "field label not supported: status.phase"),
        ("metadata.name = x", "field label not supported: metadata.name "),  # no trimming
        ("metadata.name", "invalid selector: 'metadata.name'; can't understand 'metadata.name'"),
        ("metadata.name=x,bad", "invalid selector: 'metadata.name=x,bad'; can't understand 'bad'"),
        ("=x", "invalid selector: '=x'; can't understand '=x'"),
        (r"metadata.name=a\x", "invalid field selector: invalid escape sequence: \\x"),
        ("metadata.name=a\\", "invalid field selector: invalid escape sequence: \\"),
        ("metadata.name=a=b", "invalid field selector: unescaped character in value: '='"),
        ("metadata.name==a=b", "invalid field selector: unescaped character in value: '='"),
    ],
)
def test_field_selector_errors(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_field_selector(text, SUPPORTED)
    assert str(info.value) == message


def test_only_supported_fields_are_accepted() -> None:
    assert not parse_field_selector("metadata.name=x", {"metadata.name"}).empty()
    with pytest.raises(SelectorError) as info:
        parse_field_selector("metadata.namespace=ns", {"metadata.name"})
    assert str(info.value) == "field label not supported: metadata.namespace"
    with pytest.raises(SelectorError) as info:
        parse_field_selector("metadata.name=x", ())
    assert str(info.value) == "field label not supported: metadata.name"


def test_value_of() -> None:
    s = parse_field_selector(
        "metadata.namespace!=kube-system,metadata.name==web,metadata.name=other", SUPPORTED
    )
    assert s.value_of("metadata.name") == "web"  # the first "=" requirement
    assert s.value_of("metadata.namespace") is None  # only "!=" on that field
    assert s.value_of("spec.nodeName") is None
    assert parse_field_selector("metadata.name=", SUPPORTED).value_of("metadata.name") == ""
    assert parse_field_selector(r"metadata.name=a\,b", SUPPORTED).value_of("metadata.name") == (
        "a,b"
    )


def test_field_selector_constructed_directly() -> None:
    s = FieldSelector((FieldRequirement("metadata.name", "!=", "x"),))
    assert s.matches({"metadata.name": "y"})
    assert not s.empty()
    with pytest.raises(SelectorError):
        FieldRequirement("metadata.name", "in", "x")
