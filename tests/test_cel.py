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


# ---- the typed values of the url, quantity, ip and cidr libraries ------------------------------
# Kubernetes' documented examples (k8s.io/apiserver/pkg/cel/library: urls.go, quantity.go,
# ip.go, cidr.go) and the cases of its tests (quantity_test.go, ip_test.go, cidr_test.go).

TYPED_EXAMPLES: list[tuple[str, Any]] = [
    # url(s): a URL, for an absolute URI or an absolute path
    ("url('https://user:pass@example.com:80/path?query=val#fragment').getHost()", "example.com:80"),
    ("url('/absolute-path').getEscapedPath()", "/absolute-path"),
    ("isURL('https://user:pass@example.com:80/path?query=val#fragment')", True),
    ("isURL('https://a:b:c/')", False),
    ("isURL('../relative-path')", False),
    ("url('/path').getScheme()", ""),
    ("url('https://example.com/').getScheme()", "https"),
    ("url('https://example.com:80/').getHost()", "example.com:80"),
    ("url('https://example.com/').getHost()", "example.com"),
    ("url('https://[::1]:80/').getHost()", "[::1]:80"),
    ("url('https://[::1]/').getHost()", "[::1]"),
    ("url('/path').getHost()", ""),
    ("url('https://example.com:80/').getHostname()", "example.com"),
    ("url('https://127.0.0.1:80/').getHostname()", "127.0.0.1"),
    ("url('https://[::1]:80/').getHostname()", "::1"),
    ("url('/path').getHostname()", ""),
    ("url('https://example.com:80/').getPort()", "80"),
    ("url('https://example.com/').getPort()", ""),
    ("url('/path').getPort()", ""),
    ("url('https://example.com/path').getEscapedPath()", "/path"),
    ("url('https://example.com/path with spaces/').getEscapedPath()", "/path%20with%20spaces/"),
    ("url('https://example.com').getEscapedPath()", ""),
    (
        "url('https://example.com/path?k1=a&k2=b&k2=c').getQuery()",
        {"k1": ["a"], "k2": ["b", "c"]},
    ),
    (
        "url('https://example.com/path?key with spaces=value with spaces').getQuery()",
        {"key with spaces": ["value with spaces"]},
    ),
    ("url('https://example.com/path?').getQuery()", {}),
    ("url('https://example.com/path').getQuery()", {}),
    # Go's url.ParseRequestURI, which isURL and url() call, reads a fragment after the host as
    # part of the host
    ("isURL('https://example.com#top')", False),
    ("isURL('https://example.com/#top')", True),
    # URLs are equal when Go writes them alike (url.URL.String())
    ("url('HTTPS://example.com/a b') == url('https://example.com/a%20b')", True),
    ("url('https://example.com/a') == url('https://example.com/b')", False),
    # quantity(s)
    ("quantity('1.5G') == quantity('1500M')", True),
    ("quantity('200k').asInteger()", 200000),
    ("isQuantity('1.3G')", True),
    ("isQuantity('1.3Gi')", True),
    ("isQuantity('1,3G')", False),
    ("isQuantity('10000k')", True),
    ("isQuantity('200K')", False),
    ("isQuantity('Three')", False),
    ("isQuantity('Mi')", False),
    ("isQuantity('20')", True),
    ("isQuantity('20M')", True),
    ("isQuantity('20Mi')", True),
    ("isQuantity('20Mo')", False),
    ("isQuantity('10Mm')", False),
    ('quantity("50000000G").isInteger()', True),
    ('quantity("50k").isInteger()', True),
    ('quantity("9999999999999999999999999999999999999G").isInteger()', False),
    ('quantity("50").isInteger()', True),
    ('quantity("50k").asInteger() == 50000', True),
    ('quantity("50k").sub(20000).asApproximateFloat() == 30000.0', True),
    ('quantity("50.703k").asApproximateFloat()', 50703.0),
    # the documentation writes add("20k"), which its overloads refuse: a quantity or an int
    ('quantity("50k").add(quantity("20k")) == quantity("70k")', True),
    ('quantity("50k").add(20) == quantity("50020")', True),
    ('quantity("50k").sub(quantity("20k")) == quantity("30k")', True),
    ('quantity("50k").sub(20000) == quantity("30k")', True),
    ('quantity("50k").add(20).sub(quantity("100k")).sub(-50000) == quantity("20")', True),
    ('quantity("50k").add(quantity("20")) == quantity("50.02k")', True),
    ('quantity("50k").add(20).isLessThan(quantity("50020"))', False),
    ('quantity("50k").sub(quantity("20")) == quantity("49.98k")', True),
    ('quantity("50k").sub(20) == quantity("49980")', True),
    ('quantity("50k").add(20).sub(quantity("100k")).asInteger()', -49980),
    ('quantity("50k").add(20).sub(quantity("100k")).sub(-50000).asInteger()', 20),
    (
        '[quantity("9999999999999999999999999999999999999")]'
        '.all(x, x.add(quantity("1")).compareTo(x.add(quantity("2"))) == -1)',
        True,
    ),
    ("quantity('-1.5').sign()", -1),
    ("quantity('0').sign()", 0),
    ("sign(quantity('2m'))", 1),  # Kubernetes declares sign(q); its documentation, q.sign()
    ('quantity("200M").compareTo(quantity("0.2G"))', 0),
    ('quantity("50M").compareTo(quantity("50Mi"))', -1),
    ('quantity("50Mi").compareTo(quantity("50M"))', 1),
    ('quantity("150Mi").isGreaterThan(quantity("100Mi"))', True),
    ('quantity("50Mi").isGreaterThan(quantity("100Mi"))', False),
    ('quantity("50Mi").isGreaterThan(quantity("50M"))', True),
    ('quantity("50M").isGreaterThan(quantity("100M"))', False),
    ('quantity("50M").isLessThan(quantity("100M"))', True),
    ('quantity("100M").isLessThan(quantity("50M"))', False),
    ('quantity("50M").isLessThan(quantity("50Mi"))', True),
    # equality is by value (resource.Quantity.Equal: Cmp == 0)
    ('quantity("200M") == quantity("200M")', True),
    ('quantity("200M") == quantity("0.2G") && quantity("0.2G") == quantity("200M")', True),
    (
        'quantity("2M") == quantity("0.002G") && quantity("2000k") == quantity("2M")'
        ' && quantity("0.002G") == quantity("2000k")',
        True,
    ),
    ('quantity("200M") == quantity("0.3G")', False),
    ("quantity('1k') == quantity('1000')", True),
    ("quantity('1Ki') == quantity('1024')", True),
    ("quantity('0.1n') == quantity('1n')", True),  # below a nano: rounded up, as apimachinery
    ("quantity('1e3') == quantity('1k')", True),
    # ip(s)
    ("ip('127.0.0.1').family()", 4),
    ("ip('::1').family()", 6),
    ("isIP('127.0.0.1')", True),
    ("isIP('::1')", True),
    ("isIP('127.0.0.256')", False),
    ("isIP(':::1')", False),
    ("isIP('::ffff:1.2.3.4')", False),  # IPv4-mapped: refused
    ("isIP('fe80::1%eth0')", False),  # zones: refused
    ("isIP('192.168.0.1.0')", False),
    ("isIP('2001:db8:::68')", False),
    ("ip.isCanonical('127.0.0.1')", True),
    ("ip.isCanonical('2001:db8::abcd')", True),
    ("ip.isCanonical('2001:DB8::ABCD')", False),
    ("ip.isCanonical('2001:db8::0:0:0:abcd')", False),
    ("ip('127.0.0.1').family() == 4", True),
    ("ip('::1').family() == 6", True),
    ("ip('2001:db8::68').family()", 6),
    ("ip('0.0.0.0').isUnspecified()", True),
    ("ip('127.0.0.1').isUnspecified()", False),
    ("ip('::').isUnspecified()", True),
    ("ip('::1').isUnspecified()", False),
    ("ip('127.0.0.1').isLoopback()", True),
    ("ip('192.168.0.1').isLoopback()", False),
    ("ip('1.2.3.4').isLoopback()", False),
    ("ip('::1').isLoopback()", True),
    ("ip('2001:db8::abcd').isLoopback()", False),
    ("ip('224.0.0.1').isLinkLocalMulticast()", True),
    ("ip('224.0.1.1').isLinkLocalMulticast()", False),
    ("ip('ff02::1').isLinkLocalMulticast()", True),
    ("ip('fd00::1').isLinkLocalMulticast()", False),
    ("ip('169.254.169.254').isLinkLocalUnicast()", True),
    ("ip('192.168.0.1').isLinkLocalUnicast()", False),
    ("ip('fe80::1').isLinkLocalUnicast()", True),
    ("ip('fd80::1').isLinkLocalUnicast()", False),
    ("ip('192.168.0.1').isGlobalUnicast()", True),
    ("ip('255.255.255.255').isGlobalUnicast()", False),
    ("ip('2001:db8::abcd').isGlobalUnicast()", True),
    ("ip('ff00::1').isGlobalUnicast()", False),
    ("string(ip('192.168.0.1'))", "192.168.0.1"),
    ("string(ip('2001:DB8:0:0:0:0:0:68'))", "2001:db8::68"),
    # equality is by the address (netip.Addr ==)
    ("ip('::1') == ip('0:0:0:0:0:0:0:1')", True),
    ("ip('127.0.0.1') == ip('127.0.0.2')", False),
    # cidr(s)
    ("cidr('192.168.0.0/16').prefixLength()", 16),
    ("cidr('::1/128').prefixLength()", 128),
    ("isCIDR('192.168.0.0/16')", True),
    ("isCIDR('::1/128')", True),
    ("isCIDR('192.168.0.0/33')", False),
    ("isCIDR('::1/129')", False),
    ("isCIDR('::ffff:1.2.3.4/120')", False),
    ("cidr('192.168.0.0/24').containsIP(ip('192.168.0.1'))", True),
    ("cidr('192.168.0.0/24').containsIP(ip('192.168.1.1'))", False),
    ("cidr('192.168.0.0/24').containsIP('192.168.0.1')", True),
    ("cidr('192.168.0.0/24').containsIP('192.168.1.1')", False),
    ("cidr('192.168.0.0/16').containsCIDR(cidr('192.168.10.0/24'))", True),
    ("cidr('192.168.1.0/24').containsCIDR(cidr('192.168.2.0/24'))", False),
    ("cidr('192.168.0.0/16').containsCIDR('192.168.10.0/24')", True),
    ("cidr('192.168.1.0/24').containsCIDR('192.168.2.0/24')", False),
    ("cidr('192.168.0.0/24').containsCIDR(cidr('192.168.0.0/25'))", True),
    ("cidr('192.168.0.0/24').containsCIDR(cidr('192.168.0.1/32'))", True),
    ("cidr('192.168.0.0/24').containsCIDR(cidr('192.168.0.0/23'))", False),
    ("cidr('192.168.0.0/24').containsCIDR(cidr('192.169.0.1/32'))", False),
    ("cidr('2001:db8::/32').containsIP(ip('2001:db8::1'))", True),
    ("cidr('2001:db8::/32').containsIP(ip('2001:dc8::1'))", False),
    ("cidr('2001:db8::/32').containsIP('2001:db8::1')", True),
    ("cidr('2001:db8::/32').containsIP('2001:dc8::1')", False),
    ("cidr('2001:db8::/32').containsCIDR(cidr('2001:db8::/33'))", True),
    ("cidr('2001:db8::/32').containsCIDR(cidr('2001:db8::/31'))", False),
    ("cidr('2001:db8::/32').containsCIDR('2001:db8::/33')", True),
    ("cidr('2001:db8::/32').containsCIDR('2001:db8::/31')", False),
    ("cidr('10.0.0.0/8').containsIP('::1')", False),  # another family
    ("cidr('192.168.0.1/24').ip() == ip('192.168.0.1')", True),
    ("cidr('192.168.0.1/24').ip().family()", 4),
    ("cidr('::1/128').ip() == ip('::1')", True),
    ("cidr('::1/128').ip().family()", 6),
    ("cidr('2001:db8::/32').ip() == ip('2001:db8::')", True),
    ("cidr('192.168.0.0/24').masked() == cidr('192.168.0.0/24')", True),
    ("cidr('192.168.0.1/24').masked() == cidr('192.168.0.0/24')", True),
    ("cidr('2001:db8:1::/32').masked() == cidr('2001:db8::/32')", True),
    # equality is by address and length, unmasked (netip.Prefix ==)
    ("cidr('192.168.0.0/24') == cidr('192.168.0.0/24').masked()", True),
    ("cidr('192.168.0.1/24') == cidr('192.168.0.1/24').masked()", False),
    ("string(cidr('192.168.0.0/24'))", "192.168.0.0/24"),
    ("string(cidr('2001:DB8::1/64').masked())", "2001:db8::/64"),
    # the engine's: a value is a map holding its canonical text
    ("type(quantity('1')) == map", True),
    ("quantity('1.5k')", {"@kubernetes.Quantity": "1500"}),
    ("ip('0:0:0:0:0:0:0:1')", {"@net.IP": "::1"}),
    ("cidr('10.0.0.1/8')", {"@net.CIDR": "10.0.0.1/8"}),
    ("url('https://example.com/a b')", {"@kubernetes.URL": "https://example.com/a%20b"}),
    ("{'@net.IP': '::1'}.isLoopback()", True),  # written to look like one, and canonical
]


@pytest.mark.parametrize(("source", "expected"), TYPED_EXAMPLES)
def test_typed_values_follow_kubernetes_examples(source: str, expected: Any) -> None:
    assert ENV.compile(source).eval({"self": SELF}) == expected


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("url('https://a:b:c/')", 'invalid port ":c" after host'),
        ("url('../relative-path')", "invalid URI for request"),
        ("url('https://example.com/%zz')", "invalid URL escape"),
        ("quantity('200K')", "unable to parse quantity's suffix"),
        ("quantity('Three')", "quantities must match the regular expression"),
        ("quantity('Mi')", "quantities must match the regular expression"),
        ("quantity('10Mo')", "quantities must match the regular expression"),
        ("quantity('10Mm')", "unable to parse quantity's suffix"),
        (
            'quantity("9999999999999999999999999999999999999G").asInteger()',
            "cannot convert value to integer",
        ),
        ("ip('127.0.0.256')", 'IP Address "127.0.0.256" parse error during conversion'),
        ("ip(':::1')", "parse error during conversion from string"),
        ("ip('::ffff:1.2.3.4')", 'IPv4-mapped IPv6 address "::ffff:1.2.3.4" is not allowed'),
        ("ip('fe80::1%eth0')", "with zone value is not allowed"),
        ("ip('127.0.0.01')", "parse error during conversion from string"),  # leading zeros
        ("ip.isCanonical('127.0.0.1.0')", 'IP Address "127.0.0.1.0" parse error'),
        ("cidr('192.168.0.0/33')", "prefix length out of range"),
        ("cidr('::1/129')", "prefix length out of range"),
        ("cidr('192.168.0.0/')", 'bad bits after slash: ""'),
        ("cidr('2001:db8::/')", 'bad bits after slash: ""'),
        ("cidr('10.0.0.0/08')", 'bad bits after slash: "08"'),
        ("cidr('192.168.0.0')", "no '/'"),
        ("cidr('::ffff:1.2.3.4/120')", "IPv4-mapped IPv6 address"),
        ("cidr('10.0.0.0/8').containsIP('10.0.0.256')", "parse error during conversion"),
        # a function given a map of another kind, or no value at all, says what it wanted
        ("quantity('1').getHost()", "expected a URL, got a Quantity"),
        ("ip('::1').prefixLength()", "expected a CIDR, got an IP"),
        ("cidr('10.0.0.0/8').containsIP(cidr('10.0.0.0/8'))", "expected an IP, got a CIDR"),
        ("url('/a').isInteger()", "expected a Quantity, got a URL"),
        ("self.family()", "expected an IP, got a map"),
        ("{'@net.IP': '0::1'}.family()", "expected an IP, got a map that only looks like one"),
        ("{'@kubernetes.Quantity': '1k'}.sign()", "got a map that only looks like one"),
        ("string(quantity('1'))", "string: expected an IP or a CIDR, got a Quantity"),
        ("string(self)", "string: expected an IP or a CIDR, got a map"),
    ],
)
def test_typed_values_errors_say_what_failed(source: str, why: str) -> None:
    with pytest.raises(EvalError) as caught:
        ENV.compile(source).eval({"self": {"a": 1}})
    assert why in caught.value.message


@pytest.mark.parametrize(
    "source",
    [
        "isQuantity([1, 2, 3])",
        "isIP(cidr('192.168.0.0/24'))",  # the checker does tell a string from a value
        "quantity('50k').add('20k')",  # as the documentation writes it: no such overload
        "quantity('1') == 1",
    ],
)
def test_typed_values_refused_by_the_checker(source: str) -> None:
    with pytest.raises(CompileError, match="found no matching overload"):
        ENV.compile(source)


def test_quantities_are_exact() -> None:
    """Decimal arithmetic, never floats: 0.1 + 0.2 is 0.3; huge values stay exact."""
    big = "quantity('9223372036854775807')"
    cases = {
        "quantity('0.1').add(quantity('0.2')) == quantity('0.3')": True,
        f"{big}.add(1).sub(1) == {big}": True,
        f"{big}.add(1).isInteger()": False,  # beyond int64
        f"{big}.isInteger()": True,
        "quantity('16Ei') == quantity('9223372036854775807')": True,  # binary: capped at 2^63-1
        "quantity('1e2147483647').isGreaterThan(quantity('9999999999999999999999E'))": True,
        "quantity('1e2147483647').asApproximateFloat() > 1.0e308": True,
        "quantity('-0.1n') == quantity('-1n')": True,  # rounded away from zero
    }
    for source, expected in cases.items():
        assert ENV.compile(source).eval({}) == expected, source
    with pytest.raises(EvalError, match="digits"):
        ENV.compile("quantity('1e2147483647').add(1)").eval({})


def test_typed_values_have_a_finite_estimate() -> None:
    """Kubernetes' costs (apiserver library/cost.go): parsing is linear in the string, a
    method one step, comparing two values one step."""
    from haplane.cel.cost import RULE_LIMIT, estimate

    schema = {
        "type": "object",
        "properties": {
            "q": {"type": "string", "maxLength": 64},
            "u": {"type": "string", "maxLength": 256},
            "c": {"type": "string", "maxLength": 43},
            "ips": {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 45}},
        },
    }

    def cost(source: str) -> float:
        return estimate(ENV.compile(source).tree(), {"self": schema})

    # self.q: 2; quantity(): ceil(64 * 4 * 0.1) = 26; quantity('1Gi'): 1; the method: 1
    assert cost("quantity(self.q).isGreaterThan(quantity('1Gi'))") == 30
    # self.c: 2; cidr(): 18; ip('1.2.3.4'): 1; containsIP: 4 (two 16-byte addresses)
    assert cost("cidr(self.c).containsIP(ip('1.2.3.4'))") == 25
    # a string argument is parsed too: ceil(10 * 0.1)
    assert cost("cidr(self.c).containsCIDR('10.0.0.0/8')") == 20 + 7 + 1
    assert cost("ip.isCanonical('::1')") == 1  # twice the string: ceil(3 * 0.2)
    everything = (
        "url(self.u).getHost() == 'example.com' && url(self.u).getQuery().size() > 0"
        " && self.ips.all(x, cidr(self.c).containsIP(x) && ip(x).isGlobalUnicast())"
        " && cidr(self.c).masked() == cidr(self.c) && string(cidr(self.c).ip()) != ''"
        " && quantity(self.q).add(1).sub(quantity('1')).compareTo(quantity('2')) >= sign("
        "quantity(self.q))"
    )
    total = cost(everything)
    assert 0 < total < RULE_LIMIT
    assert ENV.compile(everything).returns == "bool"


def test_an_evaluation_past_its_time_limit_stops_at_its_next_library_call(monkeypatch) -> None:
    """haplane.cel.budget: each call of a Python-written function checks the evaluation's
    deadline; past it the call fails with a message naming the limit, and the deadline is
    gone once the evaluation returns."""
    import math

    from haplane.cel import budget

    env = Environment(("self",))
    program = env.compile("self.all(s, s.lowerAscii() == s)")
    assert program.eval({"self": ["a", "b"]}) is True
    monkeypatch.setattr(budget, "TIME_LIMIT", -1.0)  # every deadline already past
    with pytest.raises(EvalError, match="ran longer than -1 s"):
        program.eval({"self": ["a", "b"]})
    assert env.compile("self.size() == 2").eval({"self": ["a", "b"]}) is True  # no call: no check
    assert budget.DEADLINE.get() == math.inf
