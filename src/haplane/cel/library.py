"""Kubernetes' CEL extension libraries, which no CEL engine ships: lists, strings (with
`format`), regex, and (in `haplane.cel.kinds`) the url, quantity, ip and cidr libraries.

Layer: cel. Pure: no I/O. Written by hand because no library provides them for Python; each
function follows Kubernetes' documentation (k8s.io/apiserver/pkg/cel/library and cel-go's
ext.Strings), cited with its examples in tests/test_cel.py.

- lists: `l.isSorted()`, `l.sum()`, `l.min()`, `l.max()`, `l.indexOf(x)`, `l.lastIndexOf(x)`;
- strings: `charAt`, `indexOf`, `lastIndexOf` (both with an optional offset), `lowerAscii`,
  `upperAscii`, `replace` (optional count), `split` (optional count), `substring`, `trim`,
  `l.join()` / `l.join(sep)`, `reverse`, `'...'.format([args])` (%s %d %f %e %b %o %x %X %%,
  with a precision on %f and %e), `strings.quote(s)`;
- regex: `s.find(re)`, `s.findAll(re)`, `s.findAll(re, n)` (the whole match, never groups);
- url, quantity, ip, cidr (`haplane.cel.kinds`): `isURL(s)`, `url(s).getHost()`...,
  `isQuantity(s)`, `quantity(s).isGreaterThan(...)`..., `isIP(s)`, `ip(s).family()`...,
  `string(ip)`, `ip.isCanonical(s)`, `isCIDR(s)`, `cidr(s).containsIP(...)`...

The typed values (a URL, a Quantity, an IP, a CIDR) are maps with one marker key holding the
value's canonical text, `{"@net.IP": "::1"}`: the engine's Python binding cannot return values
of an abstract type. So `type(ip('::1'))` is `map` (and a value answers `size`, `in` and
indexing as a map does), a value of the wrong kind given to a function is an evaluation error,
not a compile error, and a map literal written like a value is one; `haplane.cel.kinds` lists
the differences. `string(ip)` extends the standard `string` through an engine extension
(`extensions()`), the only way the engine accepts another overload of a standard function.

Regular expressions are RE2 (google-re2), as CEL's `matches` is: linear time, whatever the
pattern. Functions that build strings stop at MAX_RESULT characters (they run outside the
engine's budget).

The engine dispatches on the runtime kinds of the arguments, so a function taking any
element (`indexOf`) has one overload per kind.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import re2
from cel_expr_python import cel

from .budget import overload

T = cel.Type
_KINDS: tuple[tuple[str, Any], ...] = (
    ("int", T.INT),
    ("uint", T.UINT),
    ("double", T.DOUBLE),
    ("string", T.STRING),
    ("bool", T.BOOL),
    ("bytes", T.BYTES),
    ("list", T.List(T.DYN)),
    ("map", T.Map(T.DYN, T.DYN)),
)


class CelFunctionError(ValueError):
    """Raised inside a function: the engine turns it into the expression's error."""


# the longest string a function may build (a request holds 3 MiB): `replace`, `join` and
# `format` are Python callbacks outside any engine budget, so they stop here, not at the
# memory's end
MAX_RESULT = 3 * 1024 * 1024


def _bounded(text: str) -> str:
    if len(text) > MAX_RESULT:
        raise CelFunctionError(f"result of {len(text)} characters exceeds {MAX_RESULT}")
    return text


def _member(name: str, ret: Any, params: Sequence[Any], impl: Callable[..., Any]) -> Any:
    kinds = "_".join(p.name().lower().replace("(", "_").replace(")", "") for p in params)
    return overload(f"{name}_{kinds}_{len(params)}", ret, params, True, impl)


def _global(name: str, ret: Any, params: Sequence[Any], impl: Callable[..., Any]) -> Any:
    return overload(f"{name}_global_{len(params)}", ret, params, False, impl)


# ---- lists ------------------------------------------------------------------------------------


def _is_sorted(items: list[Any]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(items))


def _sum(items: list[Any]) -> Any:
    if not items:
        return 0
    start: Any = datetime.timedelta(0) if isinstance(items[0], datetime.timedelta) else 0
    return sum(items, start)


def _least(name: str, pick: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    def call(items: list[Any]) -> Any:
        if not items:
            raise CelFunctionError(f"{name} called on empty list")
        return pick(items)

    return call


def _index_of(items: list[Any], value: Any) -> int:
    for i, item in enumerate(items):
        if _same(item, value):
            return i
    return -1


def _last_index_of(items: list[Any], value: Any) -> int:
    for i in range(len(items) - 1, -1, -1):
        if _same(items[i], value):
            return i
    return -1


def _same(a: Any, b: Any) -> bool:
    # CEL: 1 != true (Python: 1 == True)
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


# ---- strings ----------------------------------------------------------------------------------


def _char_at(s: str, i: int) -> str:
    if i < 0 or i > len(s):
        raise CelFunctionError(f"index out of range: {i}")
    return s[i : i + 1]


def _index_in(s: str, sub: str, offset: int = 0) -> int:
    if offset < 0 or offset > len(s):
        raise CelFunctionError(f"index out of range: {offset}")
    return s.find(sub, offset)


def _last_index_in(s: str, sub: str, offset: int | None = None) -> int:
    if offset is None:
        return s.rfind(sub)
    if offset < 0 or offset > len(s):
        raise CelFunctionError(f"index out of range: {offset}")
    return s.rfind(sub, 0, offset + len(sub))


def _ascii(convert: Callable[[str], str]) -> Callable[[str], str]:
    return lambda s: "".join(convert(c) if c.isascii() else c for c in s)


def _replace(s: str, old: str, new: str, n: int = -1) -> str:
    # the result's size before building it: an empty `old` matches len(s) + 1 times
    times = (len(s) + 1 if old == "" else s.count(old)) if n < 0 else n
    if len(s) + times * max(0, len(new) - len(old)) > MAX_RESULT:
        raise CelFunctionError(f"replace would build more than {MAX_RESULT} characters")
    return s.replace(old, new, n if n >= 0 else -1)


def _split(s: str, sep: str, n: int = -1) -> list[str]:
    if n == 0:
        return []
    if n == 1:
        return [s]
    if sep == "":
        chars = list(s)
        return chars if n < 0 or n >= len(chars) else [*chars[: n - 1], "".join(chars[n - 1 :])]
    return s.split(sep, n - 1 if n > 0 else -1)


def _substring(s: str, start: int, end: int | None = None) -> str:
    end = len(s) if end is None else end
    if start < 0 or start > len(s):
        raise CelFunctionError(f"index out of range: {start}")
    if end < start or end > len(s):
        raise CelFunctionError(f"index out of range: {end}")
    return s[start:end]


def _join(items: list[Any], sep: str = "") -> str:
    if not all(isinstance(x, str) for x in items):
        raise CelFunctionError("join: every element must be a string")
    if sum(len(x) for x in items) + len(sep) * len(items) > MAX_RESULT:
        raise CelFunctionError(f"join would build more than {MAX_RESULT} characters")
    return sep.join(items)


def _quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


_VERB = re.compile(r"%(?:\.(\d+))?([sdfeboxX%])")


def _format(template: str, args: list[Any]) -> str:
    """cel-go's `format`: the verbs below, one argument each, in order; a mismatch is an error."""
    out, pos, used = [], 0, 0
    for m in _VERB.finditer(template):
        out.append(template[pos : m.start()])
        pos = m.end()
        precision, verb = m.group(1), m.group(2)
        if verb == "%":
            out.append("%")
            continue
        if used >= len(args):
            raise CelFunctionError(f"index {used} out of range")
        out.append(_formatted(verb, precision, args[used]))
        used += 1
    out.append(template[pos:])
    if "%" in _VERB.sub("", template):
        raise CelFunctionError(f"could not parse formatting clause in {template!r}")
    return _bounded("".join(out))


def _formatted(verb: str, precision: str | None, value: Any) -> str:
    if verb == "s":
        return _as_string(value)
    if isinstance(value, bool) and verb != "s":
        raise CelFunctionError(f"error during formatting: {verb} does not take a bool")
    if verb == "d":
        if not isinstance(value, int):
            raise CelFunctionError(
                "error during formatting: decimal clause can only be used on integers"
            )
        return str(value)
    if verb in ("f", "e"):
        if not isinstance(value, int | float):
            raise CelFunctionError(f"error during formatting: {verb} clause needs a number")
        digits = int(precision) if precision is not None else 6
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return f"{float(value):.{digits}{verb}}"
    if verb in ("b", "o"):
        if not isinstance(value, int):
            raise CelFunctionError(f"error during formatting: {verb} clause needs an integer")
        return format(value, verb)
    # x, X: integers, and strings and bytes as hex digits
    if isinstance(value, int):
        return format(value, verb)
    if isinstance(value, str | bytes):
        data = value.encode() if isinstance(value, str) else value
        text = data.hex()
        return text.upper() if verb == "X" else text
    raise CelFunctionError(f"error during formatting: {verb} clause needs an integer or string")


def _as_string(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else str(int(value))
    if isinstance(value, list):
        return "[" + ", ".join(_as_string(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_as_string(k)}: {_as_string(v)}" for k, v in value.items()) + "}"
    return str(value)


# ---- regex ------------------------------------------------------------------------------------


def re2_options(max_mem: int = 8 << 20) -> Any:
    """RE2's options for patterns haplane compiles: no log line per refused pattern (a
    pattern from a request must not write to the replica's stderr); `max_mem` the room a
    compiled pattern may take (RE2's default 8 MiB: a pattern in an object, where a larger
    one would cost seconds to compile, is refused as too large)."""
    options = re2.Options()
    options.log_errors = False
    options.max_mem = max_mem
    return options


RE2_OPTIONS = re2_options()
# the room Go's regexp gives: it compiles `^\pL{1,1000}$`, RE2's default does not
ROOMY_RE2_OPTIONS = re2_options(64 << 20)
# the string constants of compiled expressions: their authors' text, never an object's. A
# pattern among them gets Go's room (as Kubernetes compiles it); one from an object keeps
# the default, where a larger one would cost seconds to compile on the event loop
_WRITTEN: set[str] = set()
_MAX_WRITTEN = 100_000


def note_written_patterns(strings: Iterable[str]) -> None:
    """String constants an expression holds (any may be used as a pattern)."""
    for text in strings:
        if len(_WRITTEN) < _MAX_WRITTEN:
            _WRITTEN.add(text)


def _regex(pattern: str) -> Any:
    """RE2, as CEL specifies (linear time: no pattern from an object can make a replica
    backtrack for ever; Python's `re` would)."""
    compiled = _compiled_regex(pattern, pattern in _WRITTEN)
    if isinstance(compiled, str):
        raise CelFunctionError(compiled)
    return compiled


@functools.lru_cache(maxsize=512)
def _compiled_regex(pattern: str, roomy: bool) -> Any:
    """The compiled pattern, or why it does not compile (kept too: a refused pattern is not
    compiled again at every evaluation)."""
    try:
        return re2.compile(pattern, options=ROOMY_RE2_OPTIONS if roomy else RE2_OPTIONS)
    except re2.error as exc:
        return f"invalid regular expression {pattern!r}: {exc}"
    except UnicodeEncodeError:
        return f"invalid regular expression {pattern!r}: not valid UTF-8"


def _find(s: str, pattern: str) -> str:
    m = _regex(pattern).search(s)
    return str(m.group(0)) if m else ""


def _find_all(s: str, pattern: str, n: int = -1) -> list[str]:
    if n == 0:
        return []
    found = [str(m.group(0)) for m in _regex(pattern).finditer(s)]
    return found if n < 0 else found[:n]


def _matches(s: str, pattern: str) -> bool:
    # the compiled RE2 itself, on UTF-8 bytes: google-re2's `search` spends ~6 µs in Python
    # mapping byte offsets back to characters, which a yes-or-no answer does not need (1.3 µs
    # so). `_regexp` is that wrapper's own RE2 object (tests/test_cel_matches.py holds it).
    compiled = _regex(pattern)
    regexp = getattr(compiled, "_regexp", None)
    if regexp is None or _UNANCHORED is None:  # another google-re2: its public search
        return compiled.search(s) is not None
    b = s.encode()
    return bool(regexp.Match(_UNANCHORED, b, 0, len(b))[0][0] != -1)


_UNANCHORED = getattr(getattr(getattr(re2, "_re2", None), "RE2", None), "Anchor", None)
_UNANCHORED = getattr(_UNANCHORED, "UNANCHORED", None)


# cel-cpp's own `matches` compiles its pattern at every call (~20 µs here, five times a
# simple evaluation: the binding exposes no option to compile constant patterns once, as
# cel-go does). `Environment.compile` evaluates an expression's `matches` calls through this
# function instead: the same RE2 partial match, its compiled patterns kept (`_regex`).
CACHED_MATCHES = "__re2Matches"


def rename_matches(text: str) -> str | None:
    """`text` with every call of `matches` (member or global) calling CACHED_MATCHES instead;
    None when it has none."""
    out: list[str] = []
    at = 0
    for start, end in _calls(text, "matches"):
        out += [text[at:start], CACHED_MATCHES]
        at = end
    return "".join([*out, text[at:]]) if out else None


def calls(text: str, name: str) -> bool:
    """Whether `text` calls the function `name` (not in a string literal, a backquoted field
    name or a comment)."""
    return any(_calls(text, name))


def _calls(text: str, name: str) -> Iterator[tuple[int, int]]:
    """The spans of `name` where `text` calls it."""
    for (start, end), word in _words(text):
        if word == name and text[end:].lstrip().startswith("("):
            yield start, end


def _words(text: str) -> Iterator[tuple[tuple[int, int], str]]:
    """The identifiers of a CEL expression with their spans, skipping string literals
    (quoted, triple-quoted, raw, bytes), backquoted field names and `//` comments."""
    for start, end, word in scan(text):
        if word[:1].isalpha() or word[:1] == "_":
            yield (start, end), word


def scan(text: str) -> Iterator[tuple[int, int, str]]:
    """The tokens of a CEL expression that matter to rewriting it: identifiers and single
    punctuation characters, with their spans; string literals (quoted, triple-quoted, raw,
    bytes), backquoted field names, `//` comments and white space are skipped. Written by
    hand: CEL's lexical grammar needs no more than this, and no library exposes a CEL
    tokenizer."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        raw = False
        if c.isalpha() or c == "_":
            k = i
            while k < n and (text[k].isalnum() or text[k] == "_"):
                k += 1
            word = text[i:k]
            if not (k < n and text[k] in "'\"" and word.lower() in ("r", "b", "br", "rb")):
                yield i, k, word
                i = k
                continue
            i, raw = k, "r" in word.lower()  # a string literal's prefix
            c = text[i]
        if c in "'\"":
            quote = text[i : i + 3] if text[i : i + 3] in ("'''", '"""') else c
            k = i + len(quote)
            while k < n and not text.startswith(quote, k):
                k += 2 if text[k] == "\\" and not raw else 1
            i = min(n, k + len(quote))
        elif c == "`":
            k = text.find("`", i + 1)
            i = n if k < 0 else k + 1
        elif text.startswith("//", i):  # a comment, to the end of its line
            k = text.find("\n", i)
            i = n if k < 0 else k + 1
        elif c.isspace():
            i += 1
        else:
            yield i, i + 1, c
            i += 1


@functools.cache
def functions() -> list[Any]:
    """Every declaration, for `cel.NewEnv(functions=...)` (built once: they hold no state),
    the typed values' (`haplane.cel.kinds`) included."""
    lst, s, i, b = T.List(T.DYN), T.STRING, T.INT, T.BOOL
    index_of = [_member("indexOf", i, [T.List(t), t], _index_of) for _, t in _KINDS]
    last_index_of = [_member("lastIndexOf", i, [T.List(t), t], _last_index_of) for _, t in _KINDS]
    decls = {
        "isSorted": [_member("isSorted", b, [lst], _is_sorted)],
        "sum": [_member("sum", T.DYN, [lst], _sum)],
        "min": [_member("min", T.DYN, [lst], _least("min", min))],
        "max": [_member("max", T.DYN, [lst], _least("max", max))],
        "indexOf": [
            *index_of,
            _member("indexOf", i, [s, s], _index_in),
            _member("indexOf", i, [s, s, i], _index_in),
        ],
        "lastIndexOf": [
            *last_index_of,
            _member("lastIndexOf", i, [s, s], _last_index_in),
            _member("lastIndexOf", i, [s, s, i], _last_index_in),
        ],
        "charAt": [_member("charAt", s, [s, i], _char_at)],
        "lowerAscii": [_member("lowerAscii", s, [s], _ascii(str.lower))],
        "upperAscii": [_member("upperAscii", s, [s], _ascii(str.upper))],
        "replace": [
            _member("replace", s, [s, s, s], _replace),
            _member("replace", s, [s, s, s, i], _replace),
        ],
        "split": [
            _member("split", T.List(s), [s, s], _split),
            _member("split", T.List(s), [s, s, i], _split),
        ],
        "substring": [
            _member("substring", s, [s, i], _substring),
            _member("substring", s, [s, i, i], _substring),
        ],
        "trim": [_member("trim", s, [s], str.strip)],
        "join": [
            _member("join", s, [T.List(s)], _join),
            _member("join", s, [T.List(s), s], _join),
        ],
        "reverse": [_member("reverse", s, [s], lambda v: v[::-1])],
        "format": [_member("format", s, [s, lst], _format)],
        "strings.quote": [_global("strings.quote", s, [s], _quote)],
        "find": [_member("find", s, [s, s], _find)],
        CACHED_MATCHES: [
            _member(CACHED_MATCHES, b, [s, s], _matches),
            _global(CACHED_MATCHES, b, [s, s], _matches),
        ],
        "findAll": [
            _member("findAll", T.List(s), [s, s], _find_all),
            _member("findAll", T.List(s), [s, s, i], _find_all),
        ],
    }
    from . import kinds  # it builds on this module's CelFunctionError: imported on first use

    return [cel.FunctionDecl(name, overloads) for name, overloads in decls.items()] + (
        kinds.functions()
    )


def extensions() -> list[Any]:
    """What must reach the engine as extensions (`cel.NewEnv(extensions=...)`): the overload
    of the standard `string` for IPs and CIDRs (`haplane.cel.kinds`)."""
    from . import kinds

    return kinds.extensions()


# ---- property names -----------------------------------------------------------------------

# CEL's reserved words: a schema property of that name is `__name__` in expressions
_RESERVED = frozenset(
    [
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ]
)
# ... of which these may also be selected as written (`self.namespace`), as Kubernetes 1.32+
# allows (apiserver's escaping.go: keywords recognised as field names); the language's own
# literals and `in` cannot be
KEYWORD_FIELDS = _RESERVED - {"true", "false", "null", "in"}
_ESCAPES = (("__", "__underscores__"), (".", "__dot__"), ("-", "__dash__"), ("/", "__slash__"))
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def escape(name: str) -> str | None:
    """A schema property's name as CEL expressions spell it (Kubernetes' escaping:
    `namespace` -> `__namespace__`, `a.b` -> `a__dot__b`, `x-y` -> `x__dash__y`); None when
    no expression can name it (other characters). A name in KEYWORD_FIELDS may be spelt as
    written too."""
    if name in _RESERVED:
        return f"__{name}__"
    out = name
    for raw, spelt in _ESCAPES:
        out = out.replace(raw, spelt)
    return out if _IDENT.fullmatch(out) else None
