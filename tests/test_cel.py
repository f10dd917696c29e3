"""haplane.cel: the adapter (compile errors with their position, evaluation errors) and
Kubernetes' extension libraries, on the examples Kubernetes' documentation gives
(kubernetes.io "Common Expression Language in Kubernetes", its libraries section, and cel-go's
ext.Strings examples for the strings Kubernetes enables)."""

from __future__ import annotations

from typing import Any

import pytest

from haplane.cel import CompileError, Environment, EvalError

ENV = Environment(("self",))
SELF = {
    "names": ["a", "should-be-first", "c"],
    "items": [{"weight": 0.25}, {"weight": 0.75}],
    "low": [{"priority": 1}, {"priority": 3}],
    "high": [{"priority": 5}, {"priority": 9}],
}

EXAMPLES: list[tuple[str, Any]] = [
    # lists
    ("[1, 2, 3].isSorted()", True),
    ("['b', 'a'].isSorted()", False),
    ("self.items.map(x, x.weight).sum() == 1.0", True),
    ("self.low.map(x, x.priority).max() < self.high.map(x, x.priority).min()", True),
    ("self.names.indexOf('should-be-first') == 1", True),
    ("[1, 2, 2, 3].lastIndexOf(2)", 2),
    ("[].sum()", 0),
    ("[true, false].indexOf(1 == 2)", 1),
    # regex
    ("'abc 123'.find('[0-9]+')", "123"),
    ("'abc 123'.find('xyz')", ""),
    ("'123 abc 456'.findAll('[0-9]+')", ["123", "456"]),
    ("'123 abc 456'.findAll('[0-9]+', 1)", ["123"]),
    ("'a1b2'.findAll('([a-z])([0-9])')", ["a1", "b2"]),  # whole matches, never groups
    # strings
    ("'hello'.charAt(4)", "o"),
    ("'hello'.charAt(5)", ""),
    ("'hello mellow'.indexOf('')", 0),
    ("'hello mellow'.indexOf('ello', 2)", 7),
    ("'hello mellow'.lastIndexOf('')", 12),
    ("'hello mellow'.lastIndexOf('ello', 6)", 1),
    ("'TacoCat'.lowerAscii()", "tacocat"),
    ("'TacoCÆt Xii'.upperAscii()", "TACOCÆT XII"),
    ("'hello hello'.replace('he', 'we', -1)", "wello wello"),
    ("'hello hello'.replace('he', 'we', 1)", "wello hello"),
    ("'hello hello hello'.split(' ', 0)", []),
    ("'hello hello hello'.split(' ', 2)", ["hello", "hello hello"]),
    ("'hello hello hello'.split(' ', -1)", ["hello", "hello", "hello"]),
    ("'tacocat'.substring(4)", "cat"),
    ("'tacocat'.substring(4, 4)", ""),
    ("'  \\ttrim\\n    '.trim()", "trim"),
    ("['hello', 'mellow'].join(' ')", "hello mellow"),
    ("[].join()", ""),
    ("'gums'.reverse()", "smug"),
    (
        "strings.quote('single-quote with \"double quote\"')",
        '"single-quote with \\"double quote\\""',
    ),
    ("'this is a string: %s'.format(['hello'])", "this is a string: hello"),
    ("'%d apples'.format([5])", "5 apples"),
    ("'%.2f'.format([3.14159])", "3.14"),
    ("'%e'.format([1000.0])", "1.000000e+03"),
    ("'%x and %X'.format([255, 'hello'])", "ff and 68656C6C6F"),
    ("'%b %o %%'.format([5, 11])", "101 13 %"),
    ("'%s'.format([[1, 'a', true, null]])", "[1, a, true, null]"),
    # validity checks of the url, quantity and ip/cidr libraries
    ("isURL('https://example.com:80/')", True),
    ("isURL('/absolute-path')", True),
    ("isURL('example.com')", False),
    ("isQuantity('1.3G')", True),
    ("isQuantity('500Mi')", True),
    ("isQuantity('1.3Gb')", False),
    ("isIP('fe80::1')", True),
    ("isIP('1.2.3')", False),
    ("isCIDR('192.168.0.0/16')", True),
    ("isCIDR('192.168.0.0')", False),
    # what Kubernetes enables beside them: optionals and cel.bind
    ("self.?missing.orValue(7)", 7),
    ("cel.bind(n, self.names.size(), n * n)", 9),
]


@pytest.mark.parametrize(("source", "expected"), EXAMPLES)
def test_kubernetes_examples(source: str, expected: Any) -> None:
    assert ENV.compile(source).eval({"self": SELF}) == expected


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("[].min()", "min called on empty list"),
        ("'abc'.charAt(9)", "index out of range: 9"),
        ("self.missing > 1", 'Key not found in map : "missing"'),
        ("'%d'.format(['x'])", "decimal clause can only be used on integers"),
        ("'%s %s'.format(['x'])", "index 1 out of range"),
        ("'a'.find('(')", "invalid regular expression"),
        ("1 / 0 == 1", "divide by zero"),
    ],
)
def test_evaluation_errors_say_what_failed(source: str, why: str) -> None:
    with pytest.raises(EvalError) as caught:
        ENV.compile(source).eval({"self": {}})
    assert why in caught.value.message


def test_compile_errors_name_the_position() -> None:
    with pytest.raises(CompileError) as caught:
        ENV.compile("self.a >")
    assert caught.value.position == (1, 9)
    assert caught.value.message.startswith("1:9: Syntax error")
    with pytest.raises(CompileError) as caught:
        ENV.compile("self.a.nosuchfunction(1)")
    assert "nosuchfunction" in caught.value.message
    with pytest.raises(CompileError, match="undeclared reference to 'other'"):
        ENV.compile("other == 1")
    with pytest.raises(CompileError, match="required"):
        ENV.compile("  ")


def test_results_carry_their_checked_type() -> None:
    assert ENV.compile("self.a > 1").returns == "bool"
    assert ENV.compile("'x' + 'y'").returns == "string"
    assert ENV.compile("self.a").returns == "dyn"
