"""The typed values of Kubernetes' url, quantity, ip and cidr CEL libraries
(k8s.io/apiserver/pkg/cel/library: urls.go, quantity.go, ip.go, cidr.go), and their validity
checks (`isURL`, `isQuantity`, `isIP`, `isCIDR`), which `haplane.cel.library` declares.

Layer: cel. Pure: no I/O.

    url(s)          .getScheme() .getHost() .getHostname() .getPort() .getEscapedPath()
                    .getQuery()                                  map(string, list(string))
    quantity(s)     .isInteger() .asInteger() .asApproximateFloat() .sign() (and sign(q))
                    .add(q|int) .sub(q|int) .isGreaterThan(q) .isLessThan(q) .compareTo(q)
    ip(s)           .family() .isUnspecified() .isLoopback() .isLinkLocalMulticast()
                    .isLinkLocalUnicast() .isGlobalUnicast(), string(ip), ip.isCanonical(s)
    cidr(s)         .containsIP(ip|s) .containsCIDR(cidr|s) .ip() .masked() .prefixLength(),
                    string(cidr)

How a value is represented: the engine's Python binding cannot return a value of an abstract
type (measured: `cel.Type.AbstractType` compiles, evaluating fails "Unimplemented type: 13"),
so a value is a map with one key, its kind's marker, holding the value's canonical text:

    {"@kubernetes.URL": "https://example.com/a%20b"}    Go's url.URL.String()
    {"@kubernetes.Quantity": "1500"}                      its exact decimal value
    {"@net.IP": "2001:db8::1"}                            netip.Addr.String()
    {"@net.CIDR": "10.0.0.1/8"}                           netip.Prefix.String()

(the markers are Kubernetes' type names). The canonical text makes `==` what Kubernetes'
equality is: a quantity by its value (`quantity('1k') == quantity('1000')`,
`quantity('1Ki') == quantity('1024')`), an address by its bytes (`ip('::1') ==
ip('0:0:0:0:0:0:0:1')`), a prefix by its address and length, unmasked
(`cidr('10.0.0.1/8') != cidr('10.0.0.0/8')`), a URL by Go's re-serialization of it.

The visible differences from Kubernetes (the engine's, not choices):
- `type(quantity('1'))` is `map`, not `kubernetes.Quantity` (nor `net.IP`, `net.CIDR`); a
  value is a map to every map operation (`size`, `in`, indexing by its marker);
- the checker sees every kind as `map(string, dyn)`: a value of the wrong kind
  (`cidr(c).containsCIDR(ip(a))`, `string(quantity('1'))`) is an evaluation error, not a
  compile error; `ip(a) == cidr(b)` compiles (and is false);
- a function given a map that is not of its kind fails, naming the kind it wanted; a map
  written to look like a value (`{'@net.IP': '::1'}`) is one if its text is canonical (it
  gains nothing: `ip('::1')` makes the same value); any other is refused;
- `string(x)` is declared for every map (the standard `string` is extended through an engine
  extension, `extensions()`): it converts an IP or a CIDR, and fails on anything else.

Where Kubernetes' documentation and its code differ, the documentation is followed, except
where its examples follow the code:
- `quantity('Mi')` is an error, as documented (apimachinery's parser accepts a bare suffix as
  zero: kubernetes/apimachinery#165), so is a number without digits (`'.'`);
- `isInteger`/`asInteger` are decided by the value, as documented (Go's depend on how the
  value is stored: `quantity('1.0').isInteger()` is false there);
- `q.sign()` is documented; Kubernetes declares only `sign(q)`: both are here;
- `isLinkLocalMulticast` is Go's (IPv6 ffx2::/16, link-local scope): the documentation's
  prose says ff00::/8, its examples agree with Go;
- `add('20k')` (a string) in the documentation's examples does not compile in Kubernetes
  (its overloads take a quantity or an int): nor here;
- `cidr('192.168.0.1/16')` is a CIDR: the documentation calls it an error, its examples
  (`cidr('192.168.0.1/24').ip()`) and Kubernetes' code accept it.
URLs follow Go's net/url, which Kubernetes calls: `url.ParseRequestURI` decides validity, so
`isURL('https://example.com#top')` is false (the fragment is read as part of the host) while
`isURL('https://example.com/#top')` is true. Quantities are exact (`decimal`, never floats):
parsing rounds below 1n up (away from zero) and caps binary-suffixed values at 2^63-1, as
apimachinery; `add`/`sub` refuse a result the gap between its operands' exponents would
lengthen by more than MAX_DIGITS digits (`quantity('1e2000000000').add(1)`: Kubernetes' big
decimals would allocate them).
"""

from __future__ import annotations

import decimal
import functools
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

from cel_expr_python import cel

from .budget import overload
from .library import CelFunctionError

T = cel.Type
R = TypeVar("R")
VALUE = T.Map(T.STRING, T.DYN)  # how the checker sees each kind

URL = "@kubernetes.URL"
QUANTITY = "@kubernetes.Quantity"
IP = "@net.IP"
CIDR = "@net.CIDR"
_NAMES = {URL: "a URL", QUANTITY: "a Quantity", IP: "an IP", CIDR: "a CIDR"}


def _text_of(value: Any, marker: str) -> str:
    """The canonical text a value of kind `marker` holds; a clear error for anything else."""
    if isinstance(value, dict) and len(value) == 1:
        key, text = next(iter(value.items()))
        if key == marker:
            if isinstance(text, str):
                return text
            raise _not_canonical(marker)
        if key in _NAMES:
            raise CelFunctionError(f"expected {_NAMES[marker]}, got {_NAMES[key]}")
    raise CelFunctionError(f"expected {_NAMES[marker]}, got {_kind_name(value)}")


def _kind_name(value: Any) -> str:
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, bool):
        return "a bool"
    kind = {int: "int", float: "double", str: "string", bytes: "bytes", list: "list"}.get(
        type(value), type(value).__name__
    )
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _remembered(parse: Callable[[str], R]) -> Callable[[str], R]:
    """`parse`, its results remembered for short texts (a long one is parsed again each
    time: the cache must not hold megabytes)."""
    cached = functools.lru_cache(maxsize=1024)(parse)

    def call(text: str) -> R:
        return cached(text) if len(text) <= 1024 else parse(text)

    return call


def _not_canonical(marker: str) -> CelFunctionError:
    return CelFunctionError(f"expected {_NAMES[marker]}, got a map that only looks like one")


# ---- url: Go's net/url (url.ParseRequestURI to accept, url.Parse to read) --------------------

_PATH, _HOST, _ZONE, _USERINFO, _QUERY, _FRAGMENT = range(6)
_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_HOST_SUBDELIMS = frozenset(b"!$&'()*+,;=:[]<>\"")
_RESERVED = frozenset(b"$&+,/:;=?@")
_ENCODED_OK = frozenset(b"!$&'()*+,;=:@[]%")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


class _URLError(Exception):
    pass


def _should_escape(c: int, mode: int) -> bool:
    """Go's shouldEscape: whether byte `c` is written %XX in that part of a URL."""
    if c in _ALNUM:
        return False
    if mode in (_HOST, _ZONE) and c in _HOST_SUBDELIMS:
        return False
    if c in b"-_.~":
        return False
    if c in _RESERVED:
        if mode == _PATH:
            return c == ord("?")
        if mode == _USERINFO:
            return c in b"@/?:"
        if mode == _QUERY:
            return True
        if mode == _FRAGMENT:
            return False
    return not (mode == _FRAGMENT and c in b"!()*")


def _byte_class(chars: Iterable[int]) -> re.Pattern[bytes]:
    """A regular expression matching one of these bytes."""
    return re.compile(b"[" + b"".join(re.escape(bytes([c])) for c in chars) + b"]")


_MODES = (_PATH, _HOST, _ZONE, _USERINFO, _QUERY, _FRAGMENT)
# per mode: each byte written %XX (for str.translate over latin-1: C speed on megabytes); the
# bytes an escaped text may not hold; in a host, the ASCII bytes that may not appear there
# (only non-ASCII bytes may be %XX)
_ESCAPES = {m: {c: f"%{c:02X}" for c in range(256) if _should_escape(c, m)} for m in _MODES}
_NOT_ENCODED = {m: _byte_class(c for c in _ESCAPES[m] if c not in _ENCODED_OK) for m in _MODES}
_NOT_IN_HOST = {
    m: _byte_class(c for c in _ESCAPES[m] if c < 0x80 and c != 0x25) for m in (_HOST, _ZONE)
}
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_SCHEME = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*):")
_NOT_USERINFO = re.compile(rb"[^A-Za-z0-9\-._:~!$&'()*+,;=%@]")


def _unescape(s: bytes, mode: int) -> bytes:
    """Go's unescape: %XX decoded (and + in a query), malformed escapes refused; a host
    allows %XX only for non-ASCII bytes (and %25 before a zone)."""
    bad = _BAD_ESCAPE.search(s)
    if bad:
        text = s[bad.start() : bad.start() + 3].decode(errors="replace")
        raise _URLError(f'invalid URL escape "{text}"')
    if mode in (_HOST, _ZONE):
        if char := _NOT_IN_HOST[mode].search(s):
            raise _URLError(f'invalid character "{char.group().decode()}" in host name')
        for escape in _ESCAPE.finditer(s):
            pair, v = escape.group(), int(escape.group(1), 16)
            if pair == b"%25" or (mode == _HOST and v >= 0x80):
                continue
            if mode == _HOST or (v != 0x20 and _should_escape(v, _HOST)):
                raise _URLError(f'invalid URL escape "{pair.decode()}"')
    return unquote_to_bytes(s.replace(b"+", b" ") if mode == _QUERY else s)


def _escape(s: bytes, mode: int) -> bytes:
    return s.decode("latin-1").translate(_ESCAPES[mode]).encode("latin-1")


def _valid_encoded(s: bytes, mode: int) -> bool:
    return _NOT_ENCODED[mode].search(s) is None


@dataclass
class _URL:
    scheme: str = ""
    opaque: bytes = b""
    user: bytes | None = None
    password: bytes | None = None
    host: bytes = b""
    path: bytes = b""
    raw_path: bytes = b""
    omit_host: bool = False
    force_query: bool = False
    raw_query: bytes = b""
    fragment: bytes = b""
    raw_fragment: bytes = b""

    def escaped_path(self) -> bytes:
        if self.raw_path and _valid_encoded(self.raw_path, _PATH):
            try:
                if _unescape(self.raw_path, _PATH) == self.path:
                    return self.raw_path
            except _URLError:
                pass
        if self.path == b"*":
            return b"*"
        return _escape(self.path, _PATH)

    def escaped_fragment(self) -> bytes:
        if self.raw_fragment and _valid_encoded(self.raw_fragment, _FRAGMENT):
            try:
                if _unescape(self.raw_fragment, _FRAGMENT) == self.fragment:
                    return self.raw_fragment
            except _URLError:
                pass
        return _escape(self.fragment, _FRAGMENT)

    def text(self) -> str:
        """Go's URL.String()."""
        out = bytearray()
        if self.scheme:
            out += self.scheme.encode() + b":"
        if self.opaque:
            out += self.opaque
        else:
            has_user = self.user is not None
            if (self.scheme or self.host or has_user) and not (
                self.omit_host and not self.host and not has_user
            ):
                if self.host or self.path or has_user:
                    out += b"//"
                if self.user is not None:
                    out += _escape(self.user, _USERINFO)
                    if self.password is not None:
                        out += b":" + _escape(self.password, _USERINFO)
                    out += b"@"
                out += _escape(self.host, _HOST)
            path = self.escaped_path()
            if path and path[:1] != b"/" and self.host:
                out += b"/"
            if not out and b":" in path.split(b"/", 1)[0]:
                out += b"./"
            out += path
        if self.force_query or self.raw_query:
            out += b"?" + self.raw_query
        if self.fragment:
            out += b"#" + self.escaped_fragment()
        return out.decode(errors="replace")

    def hostname_port(self) -> tuple[str, str]:
        host, port = self.host, b""
        colon = host.rfind(b":")
        if colon >= 0 and _valid_port(host[colon:]):
            host, port = host[:colon], host[colon + 1 :]
        if host.startswith(b"[") and host.endswith(b"]"):
            host = host[1:-1]
        return host.decode(errors="replace"), port.decode()


def _valid_port(colon_port: bytes) -> bool:
    """A colon and digits, or nothing."""
    if not colon_port:
        return True
    return colon_port[:1] == b":" and all(0x30 <= c <= 0x39 for c in colon_port[1:])


def _split_scheme(raw: bytes) -> tuple[str, bytes]:
    """Go's getScheme: a letter, then letters, digits, + - or ., then ':'."""
    if raw.startswith(b":"):
        raise _URLError("missing protocol scheme")
    scheme = _SCHEME.match(raw)
    if scheme is None:
        return "", raw
    return scheme.group(1).decode().lower(), raw[scheme.end() :]


def _parse_host(host: bytes) -> bytes:
    if host.startswith(b"["):
        end = host.rfind(b"]")
        if end < 0:
            raise _URLError("missing ']' in host")
        if not _valid_port(host[end + 1 :]):
            raise _URLError(f'invalid port "{host[end + 1 :].decode(errors="replace")}" after host')
        zone = host[:end].find(b"%25")
        if zone >= 0:
            return (
                _unescape(host[:zone], _HOST)
                + _unescape(host[zone:end], _ZONE)
                + _unescape(host[end:], _HOST)
            )
    else:
        colon = host.rfind(b":")
        if colon >= 0 and not _valid_port(host[colon:]):
            raise _URLError(f'invalid port "{host[colon:].decode(errors="replace")}" after host')
    return _unescape(host, _HOST)


def _parse(raw: bytes, via_request: bool) -> _URL:
    """Go's url.parse (without the fragment)."""
    if _CONTROL.search(raw):
        raise _URLError("net/url: invalid control character in URL")
    if not raw and via_request:
        raise _URLError("empty url")
    u = _URL()
    if raw == b"*":
        u.path = b"*"
        return u
    u.scheme, rest = _split_scheme(raw)
    if rest.endswith(b"?") and rest.count(b"?") == 1:
        u.force_query, rest = True, rest[:-1]
    else:
        rest, _, u.raw_query = rest.partition(b"?")
    if not rest.startswith(b"/"):
        if u.scheme:
            u.opaque = rest  # a rootless path (mailto:x): opaque
            return u
        if via_request:
            raise _URLError("invalid URI for request")
        if b":" in rest.partition(b"/")[0]:
            raise _URLError("first path segment in URL cannot contain colon")
    if (u.scheme or (not via_request and not rest.startswith(b"///"))) and rest.startswith(b"//"):
        authority, slash, tail = rest[2:].partition(b"/")
        rest = slash + tail
        at = authority.rfind(b"@")
        u.host = _parse_host(authority[at + 1 :])
        if at >= 0:
            info = authority[:at]
            if _NOT_USERINFO.search(info):
                raise _URLError("net/url: invalid userinfo")
            user, colon, password = info.partition(b":")
            u.user = _unescape(user, _USERINFO)
            u.password = _unescape(password, _USERINFO) if colon else None
    elif u.scheme and rest.startswith(b"/"):
        u.omit_host = True
    u.path = _unescape(rest, _PATH)
    u.raw_path = b"" if _escape(u.path, _PATH) == rest else rest
    return u


def _parse_url(raw: str) -> _URL:
    """Go's url.Parse: the fragment cut off first."""
    data = raw.encode()
    head, hash_sign, frag = data.partition(b"#")
    u = _parse(head, False)
    if hash_sign and frag:
        u.fragment = _unescape(frag, _FRAGMENT)
        u.raw_fragment = b"" if _escape(u.fragment, _FRAGMENT) == frag else frag
    return u


def _is_url(s: str) -> bool:
    """Go's url.ParseRequestURI succeeding: an absolute URL or an absolute path."""
    return request_uri_problem(s) is None


def request_uri_problem(s: str) -> str | None:
    """Why Go's url.ParseRequestURI refuses `s` (its error, after `parse "s": `); None when it
    accepts it (the `format` library's `uri`)."""
    try:
        _parse(s.encode(), True)
    except _URLError as exc:
        return str(exc)
    return None


def _url(s: str) -> dict[str, str]:
    try:
        _parse(s.encode(), True)
        u = _parse_url(s)
    except _URLError as exc:
        raise CelFunctionError(
            f'URL parse error during conversion from string: parse "{s}": {exc}'
        ) from None
    return {URL: u.text()}


@_remembered
def _url_from(text: str) -> _URL:
    try:
        u = _parse_url(text)
    except _URLError:
        raise _not_canonical(URL) from None
    if u.text() != text:
        raise _not_canonical(URL)
    return u


def _url_of(value: Any) -> _URL:
    return _url_from(_text_of(value, URL))


def _query(value: Any) -> dict[str, list[str]]:
    """Go's url.Values of the raw query: & separated, a pair with a ';' or a bad escape
    skipped, keys and values unescaped (+ is a space)."""
    result: dict[str, list[str]] = {}
    for pair in _url_of(value).raw_query.split(b"&"):
        if not pair or b";" in pair:
            continue
        key, _, val = pair.partition(b"=")
        try:
            k, v = _unescape(key, _QUERY), _unescape(val, _QUERY)
        except _URLError:
            continue
        result.setdefault(k.decode(errors="replace"), []).append(v.decode(errors="replace"))
    return result


# ---- quantity: apimachinery's resource.Quantity ----------------------------------------------

# how apimachinery splits a quantity (its error message quotes this expression)
_QUANTITY_SPLIT = re.compile(r"([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)")
_NUMBER = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?")
_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_INT = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = 2**63 - 1
_NANO = Decimal("1e-9")
# exact arithmetic (no operation here needs more digits than its operands hold, but for add
# and sub, which MAX_DIGITS bounds)
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
MAX_DIGITS = 10_000  # the most digits an add or sub may add to its operands'


def _parse_quantity(s: str) -> Decimal:
    """A quantity's exact value, or CelFunctionError (apimachinery's messages)."""
    split = _QUANTITY_SPLIT.fullmatch(s)
    number = _NUMBER.fullmatch(split.group(1)) if split else None
    if split is None or number is None or not (number.group(2) or number.group(3)):
        raise CelFunctionError(
            f"quantities must match the regular expression '^{_QUANTITY_SPLIT.pattern}$'"
        )
    suffix = split.group(2)
    exponent, binary = 0, 0
    if suffix in _DECIMAL_SI:
        exponent = _DECIMAL_SI[suffix]
    elif suffix in _BINARY_SI:
        binary = _BINARY_SI[suffix]
    elif (parsed := _int64(suffix[1:])) is not None and suffix[:1] in ("e", "E"):
        exponent = (parsed + 2**31) % 2**32 - 2**31  # Go: int32(the int64 parsed)
    else:
        raise CelFunctionError("unable to parse quantity's suffix")
    frac = number.group(3) or ""
    digits = (number.group(2) + frac).lstrip("0") or "0"
    value = Decimal(f"{number.group(1)}{digits}E{exponent - len(frac)}")  # exact
    if binary:
        value = _EXACT.multiply(value, Decimal(2**binary))
    if value and _exponent(value) < -9:
        # apimachinery rounds up (away from zero) to a nano
        value = value.quantize(_NANO, rounding=decimal.ROUND_UP, context=_EXACT)
    if binary and value.copy_abs() > _INT64_MAX:
        value = Decimal(-_INT64_MAX if value < 0 else _INT64_MAX)
    return value


def _int64(text: str) -> int | None:
    """Go's strconv.ParseInt(text, 10, 64), None when it fails."""
    if not _INT.fullmatch(text) or len(text.lstrip("+-").lstrip("0")) > 19:
        return None
    value = int(text)
    return value if -(2**63) <= value <= _INT64_MAX else None


def _exponent(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    return exponent


def _quantity_text(value: Decimal) -> str:
    """The canonical text of a value: its shortest exact decimal; scientific (`1e100`) when
    that would be longer than 40 digits."""
    exponent = _exponent(value)
    coefficient = str(value.copy_abs().scaleb(-exponent, context=_EXACT)).lstrip("0")
    if not coefficient:
        return "0"
    stripped = coefficient.rstrip("0")
    exponent += len(coefficient) - len(stripped)
    coefficient = stripped
    minus = "-" if value.is_signed() else ""
    if exponent >= 0 and len(coefficient) + exponent <= 40:
        return minus + coefficient + "0" * exponent
    if -40 <= exponent < 0:
        point = len(coefficient) + exponent
        if point > 0:
            return f"{minus}{coefficient[:point]}.{coefficient[point:]}"
        return f"{minus}0.{'0' * -point}{coefficient}"
    return f"{minus}{coefficient}e{exponent}"


def _quantity(s: str) -> dict[str, str]:
    return {QUANTITY: _quantity_text(_parse_quantity(s))}


def _is_quantity(s: str) -> bool:
    try:
        _parse_quantity(s)
    except CelFunctionError:
        return False
    return True


@_remembered
def _quantity_from(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except decimal.InvalidOperation:
        raise _not_canonical(QUANTITY) from None
    if not value.is_finite() or _quantity_text(value) != text:
        raise _not_canonical(QUANTITY)
    return value


def _q(value: Any) -> Decimal:
    return _quantity_from(_text_of(value, QUANTITY))


def _operand(value: Any) -> Decimal:
    return Decimal(value) if isinstance(value, int) else _q(value)


def _exact(a: Decimal, b: Decimal, subtract: bool) -> dict[str, str]:
    if subtract:
        b = b.copy_negate()  # (unary minus would round to the default context's 28 digits)
    if not a or not b:
        return {QUANTITY: _quantity_text(a or b)}
    # the exact sum holds the digits from the highest to the lowest of either: refused when
    # the gap between their exponents would add more than MAX_DIGITS of them
    size_a, size_b = a.adjusted() - _exponent(a) + 1, b.adjusted() - _exponent(b) + 1
    span = max(a.adjusted(), b.adjusted()) - min(_exponent(a), _exponent(b)) + 1
    if span > size_a + size_b + MAX_DIGITS:
        raise CelFunctionError(f"quantity arithmetic would need {span} digits")
    return {QUANTITY: _quantity_text(_EXACT.add(a, b))}


def _as_integer(value: Any) -> int:
    q = _q(value)
    if not _fits_int64(q):
        raise CelFunctionError("cannot convert value to integer")
    return int(q)


def _fits_int64(q: Decimal) -> bool:
    return _exponent(q) >= 0 and -(2**63) <= q <= _INT64_MAX  # canonical: no trailing zeros


def _compare(a: Any, b: Any) -> int:
    x, y = _q(a), _q(b)
    return (x > y) - (x < y)


def _sign(value: Any) -> int:
    q = _q(value)
    return (q > 0) - (q < 0)


# ---- ip and cidr: Go's net/netip --------------------------------------------------------------

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_ip(s: str) -> Address:
    try:
        addr = ipaddress.ip_address(s)
    except ValueError as exc:
        raise CelFunctionError(
            f'IP Address "{s}" parse error during conversion from string: {exc}'
        ) from None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            raise CelFunctionError(f'IP address "{s}" with zone value is not allowed')
        if addr.ipv4_mapped is not None:
            raise CelFunctionError(f'IPv4-mapped IPv6 address "{s}" is not allowed')
    return addr


def _ip(s: str) -> dict[str, str]:
    return {IP: str(_parse_ip(s))}


def _is_ip(s: str) -> bool:
    try:
        _parse_ip(s)
    except CelFunctionError:
        return False
    return True


def _is_canonical(s: str) -> bool:
    return str(_parse_ip(s)) == s


@_remembered
def _ip_from(text: str) -> Address:
    try:
        addr = _parse_ip(text)
    except CelFunctionError:
        raise _not_canonical(IP) from None
    if str(addr) != text:
        raise _not_canonical(IP)
    return addr


def _addr(value: Any) -> Address:
    return _ip_from(_text_of(value, IP))


def _top(addr: Address, bits: int) -> int:
    return int(addr) >> (addr.max_prefixlen - bits)


def _is_loopback(a: Address) -> bool:
    return _top(a, 8) == 127 if a.version == 4 else int(a) == 1


def _is_multicast(a: Address) -> bool:
    return _top(a, 4) == 0xE if a.version == 4 else _top(a, 8) == 0xFF


def _is_link_local_unicast(a: Address) -> bool:
    return _top(a, 16) == 0xA9FE if a.version == 4 else _top(a, 10) == 0xFE80 >> 6


def _is_link_local_multicast(a: Address) -> bool:
    return _top(a, 24) == 0xE00000 if a.version == 4 else _top(a, 16) & 0xFF0F == 0xFF02


def _is_global_unicast(a: Address) -> bool:
    """Go's: anything but unspecified, broadcast, loopback, multicast, link-local unicast
    (private and unique-local addresses are global unicast)."""
    if int(a) == 0 or (a.version == 4 and int(a) == 0xFFFFFFFF):
        return False
    return not (_is_loopback(a) or _is_multicast(a) or _is_link_local_unicast(a))


Prefix = tuple[Address, int]


def _parse_cidr(s: str) -> Prefix:
    def fail(why: str) -> CelFunctionError:
        return CelFunctionError(
            "network address parse error during conversion from string: "
            f'netip.ParsePrefix("{s}"): {why}'
        )

    slash = s.rfind("/")
    if slash < 0:
        raise fail("no '/'")
    try:
        addr = ipaddress.ip_address(s[:slash])
    except ValueError as exc:
        raise fail(str(exc)) from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        raise fail("IPv6 zones cannot be present in a prefix")
    bits = s[slash + 1 :]
    if not (bits.isascii() and bits.isdigit()) or (len(bits) > 1 and bits[0] == "0"):
        raise fail(f'bad bits after slash: "{bits}"')
    if len(bits) > 18:  # Go's Atoi overflows
        raise fail(f'bad bits after slash: "{bits}"')
    if int(bits) > addr.max_prefixlen:
        raise fail("prefix length out of range")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise CelFunctionError(f'IPv4-mapped IPv6 address "{s}" is not allowed')
    return addr, int(bits)


def _cidr_text(prefix: Prefix) -> dict[str, str]:
    return {CIDR: f"{prefix[0]}/{prefix[1]}"}


def _cidr(s: str) -> dict[str, str]:
    return _cidr_text(_parse_cidr(s))


def _is_cidr(s: str) -> bool:
    try:
        _parse_cidr(s)
    except CelFunctionError:
        return False
    return True


@_remembered
def _cidr_from(text: str) -> Prefix:
    try:
        prefix = _parse_cidr(text)
    except CelFunctionError:
        raise _not_canonical(CIDR) from None
    if _cidr_text(prefix)[CIDR] != text:
        raise _not_canonical(CIDR)
    return prefix


def _prefix(value: Any) -> Prefix:
    return _cidr_from(_text_of(value, CIDR))


def _masked(prefix: Prefix) -> Address:
    addr, bits = prefix
    host_bits = addr.max_prefixlen - bits
    return type(addr)(int(addr) >> host_bits << host_bits)


def _masked_cidr(cidr: Any) -> dict[str, str]:
    prefix = _prefix(cidr)
    return _cidr_text((_masked(prefix), prefix[1]))


def _contains_ip(cidr: Any, other: Any) -> bool:
    prefix = _prefix(cidr)
    addr = _parse_ip(other) if isinstance(other, str) else _addr(other)
    return addr.version == prefix[0].version and _masked((addr, prefix[1])) == _masked(prefix)


def _contains_cidr(cidr: Any, other: Any) -> bool:
    outer = _prefix(cidr)
    inner = _parse_cidr(other) if isinstance(other, str) else _prefix(other)
    return (
        inner[0].version == outer[0].version
        and outer[1] <= inner[1]
        and _masked((inner[0], outer[1])) == _masked(outer)
    )


def _to_string(value: Any) -> str:
    """`string(ip)`, `string(cidr)`."""
    if isinstance(value, dict) and CIDR in value:
        return _cidr_text(_prefix(value))[CIDR]
    if isinstance(value, dict) and IP in value:
        return str(_addr(value))
    got = next(iter(value)) if isinstance(value, dict) and len(value) == 1 else None
    kind = _NAMES.get(got, _kind_name(value)) if isinstance(got, str) else _kind_name(value)
    raise CelFunctionError(f"string: expected an IP or a CIDR, got {kind}")


# ---- declarations -----------------------------------------------------------------------------


@functools.cache
def functions() -> list[Any]:
    """The declarations (Kubernetes' overload ids), for `library.functions()`."""
    s, b, i, d, v = T.STRING, T.BOOL, T.INT, T.DOUBLE, VALUE

    def member(oid: str, ret: Any, params: Sequence[Any], impl: Callable[..., Any]) -> Any:
        return overload(oid, ret, params, True, impl)

    def glob(oid: str, ret: Any, params: Sequence[Any], impl: Callable[..., Any]) -> Any:
        return overload(oid, ret, params, False, impl)

    def url_part(part: Callable[[_URL], str]) -> Callable[[Any], str]:
        return lambda value: part(_url_of(value))

    def ip_test(test: Callable[[Address], bool]) -> Callable[[Any], bool]:
        return lambda value: test(_addr(value))

    decls: dict[str, list[Any]] = {
        # url
        "url": [glob("string_to_url", v, [s], _url)],
        "isURL": [glob("is_url_string", b, [s], _is_url)],
        "getScheme": [member("url_get_scheme", s, [v], url_part(lambda u: u.scheme))],
        "getHost": [
            member("url_get_host", s, [v], url_part(lambda u: u.host.decode(errors="replace")))
        ],
        "getHostname": [
            member("url_get_hostname", s, [v], url_part(lambda u: u.hostname_port()[0]))
        ],
        "getPort": [member("url_get_port", s, [v], url_part(lambda u: u.hostname_port()[1]))],
        "getEscapedPath": [
            member("url_get_escaped_path", s, [v], url_part(lambda u: u.escaped_path().decode()))
        ],
        "getQuery": [member("url_get_query", T.Map(s, T.List(s)), [v], _query)],
        # quantity
        "quantity": [glob("string_to_quantity", v, [s], _quantity)],
        "isQuantity": [glob("is_quantity_string", b, [s], _is_quantity)],
        "sign": [
            glob("quantity_sign", i, [v], _sign),
            member("quantity_sign_member", i, [v], _sign),  # as documented: q.sign()
        ],
        "isGreaterThan": [
            member("quantity_is_greater_than", b, [v, v], lambda x, y: _compare(x, y) == 1)
        ],
        "isLessThan": [
            member("quantity_is_less_than", b, [v, v], lambda x, y: _compare(x, y) == -1)
        ],
        "compareTo": [member("quantity_compare_to", i, [v, v], _compare)],
        "asApproximateFloat": [
            member("quantity_get_float", d, [v], lambda x: float(_q(x))),
        ],
        "asInteger": [member("quantity_get_int", i, [v], _as_integer)],
        "isInteger": [member("quantity_is_integer", b, [v], lambda x: _fits_int64(_q(x)))],
        "add": [
            member("quantity_add", v, [v, v], lambda x, y: _exact(_q(x), _operand(y), False)),
            member("quantity_add_int", v, [v, i], lambda x, y: _exact(_q(x), _operand(y), False)),
        ],
        "sub": [
            member("quantity_sub", v, [v, v], lambda x, y: _exact(_q(x), _operand(y), True)),
            member("quantity_sub_int", v, [v, i], lambda x, y: _exact(_q(x), _operand(y), True)),
        ],
        # ip
        "ip": [
            glob("string_to_ip", v, [s], _ip),
            member("cidr_ip", v, [v], lambda c: {IP: str(_prefix(c)[0])}),
        ],
        "isIP": [glob("is_ip", b, [s], _is_ip)],
        "ip.isCanonical": [glob("ip_is_canonical", b, [s], _is_canonical)],
        "family": [member("ip_family", i, [v], lambda x: _addr(x).version)],
        "isUnspecified": [member("ip_is_unspecified", b, [v], ip_test(lambda a: int(a) == 0))],
        "isLoopback": [member("ip_is_loopback", b, [v], ip_test(_is_loopback))],
        "isLinkLocalMulticast": [
            member("ip_is_link_local_multicast", b, [v], ip_test(_is_link_local_multicast))
        ],
        "isLinkLocalUnicast": [
            member("ip_is_link_local_unicast", b, [v], ip_test(_is_link_local_unicast))
        ],
        "isGlobalUnicast": [member("ip_is_global_unicast", b, [v], ip_test(_is_global_unicast))],
        # cidr
        "cidr": [glob("string_to_cidr", v, [s], _cidr)],
        "isCIDR": [glob("is_cidr", b, [s], _is_cidr)],
        "containsIP": [
            member("cidr_contains_ip_string", b, [v, s], _contains_ip),
            member("cidr_contains_ip_ip", b, [v, v], _contains_ip),
        ],
        "containsCIDR": [
            member("cidr_contains_cidr_string", b, [v, s], _contains_cidr),
            member("cidr_contains_cidr", b, [v, v], _contains_cidr),
        ],
        "prefixLength": [member("cidr_prefix_length", i, [v], lambda c: _prefix(c)[1])],
        "masked": [member("cidr_masked", v, [v], _masked_cidr)],
    }
    return [cel.FunctionDecl(name, overloads) for name, overloads in decls.items()]


def extensions() -> list[Any]:
    """`string(ip)` and `string(cidr)`: an overload of the standard `string`, which the
    engine accepts only through an extension (declared beside the others it is "declared
    multiple times")."""
    to_string = overload("ip_cidr_to_string", T.STRING, [VALUE], False, _to_string)
    return [cel.CelExtension("kubernetes.net", [cel.FunctionDecl("string", [to_string])])]
