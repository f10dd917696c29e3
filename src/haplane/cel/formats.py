"""Kubernetes' CEL `format` library (k8s.io/apiserver/pkg/cel/library/format.go, Kubernetes
1.31+): named string formats that say why a string is not one of them.

Layer: cel. Pure. Uses `haplane.names` for Kubernetes' name rules and their messages.

    format.dns1123Label().validate(self)            optional.none() when valid, else
                                                     optional.of([messages...])
    !format.dns1123Subdomain().validate(self).hasValue()
    format.labelValue().validate(self).value().join(', ')

The formats: dns1123Label, dns1123Subdomain, dns1035Label, qualifiedName, portName,
dns1123LabelPrefix, dns1123SubdomainPrefix, dns1035LabelPrefix (a trailing '-' allowed, as a
generateName has it), labelValue, uri (Go's url.ParseRequestURI), uuid, byte (base64), date,
datetime (RFC 3339).

How, and why by rewriting: `validate` returns an optional, and the engine's Python binding can
neither return optional values from a Python function nor declare a function returning one.
So each `format.NAME().validate(ARG)` is rewritten, before compiling, to

    cel.bind(__formatErrs, __formatErrors("NAME", ARG),
             __formatErrs.size() == 0 ? optional.none() : optional.of(__formatErrs))

which types, evaluates and is cost-estimated as Kubernetes' call does; `__formatErrors` is a
plain function returning the list. Positions in compile errors are mapped back to the text as
written (`Rewrite.position`: exactly inside the argument, the call's start elsewhere in it).
Not supported: `format.named(NAME)` (a format chosen at run time), and a Format value kept in
a variable (`cel.bind(f, format.uri(), f.validate(x))`): both stay compile errors
("undeclared reference to 'format'").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from cel_expr_python import cel

from haplane.names import (
    dns1035_label_errors,
    dns1123_label_errors,
    dns1123_subdomain_errors,
    label_key_errors,
    label_value_errors,
    mask_trailing_dash,
    port_name_errors,
)

from . import formatted
from .budget import overload
from .library import scan

FORMAT_ERRORS: Final = "__formatErrors"  # the internal function (a name no one else declares)
_ERRS: Final = "__formatErrs"
INTERNAL: Final = (FORMAT_ERRORS, _ERRS)

_UUID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", re.I)
# strfmt's IsDateTime: a date, "t" (either case), then its DateTimePattern (seconds and a zone
# required; its fraction's "." matches any character, as there)
_TIME = re.compile(r"([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))")


def _uri(s: str) -> list[str]:
    from . import kinds  # (it imports this package's library: on first use)

    problem = kinds.request_uri_problem(s)
    return [f'parse "{s}": {problem}'] if problem else []


def _uuid(s: str) -> list[str]:
    return [] if _UUID.fullmatch(s) else ["does not match the UUID format"]


def _byte(s: str) -> list[str]:
    return [] if formatted.decode_base64(s) is not None else ["invalid base64"]


def _date(s: str) -> list[str]:
    return [] if formatted.date_seconds(s) is not None else ["invalid date"]


def _datetime(s: str) -> list[str]:
    parts = s.lower().split("t")
    if len(parts) >= 2 and formatted.date_seconds(parts[0]) is not None:
        m = _TIME.fullmatch(parts[1])
        if m is not None and int(m[1]) < 24 and int(m[2]) < 60 and int(m[3]) < 60:
            return []
    return ["invalid datetime"]


def _prefix(check: Callable[[str], list[str]]) -> Callable[[str], list[str]]:
    return lambda s: check(mask_trailing_dash(s))


FORMATS: Final[dict[str, Callable[[str], list[str]]]] = {
    "dns1123Label": dns1123_label_errors,
    "dns1123Subdomain": dns1123_subdomain_errors,
    "dns1035Label": dns1035_label_errors,
    "qualifiedName": label_key_errors,
    "portName": port_name_errors,
    "dns1123LabelPrefix": _prefix(dns1123_label_errors),
    "dns1123SubdomainPrefix": _prefix(dns1123_subdomain_errors),
    "dns1035LabelPrefix": _prefix(dns1035_label_errors),
    "labelValue": label_value_errors,
    "uri": _uri,
    "uuid": _uuid,
    "byte": _byte,
    "date": _date,
    "datetime": _datetime,
}


def format_errors(name: str, value: str) -> list[str]:
    """Why `value` is not of the format `name` (empty: it is)."""
    return FORMATS[name](value)


def functions() -> list[Any]:
    t = cel.Type
    return [
        cel.FunctionDecl(
            FORMAT_ERRORS,
            [
                overload(
                    f"{FORMAT_ERRORS}_string_string",
                    t.List(t.STRING),
                    [t.STRING, t.STRING],
                    False,
                    format_errors,
                )
            ],
        )
    ]


# ---- the rewriting ----------------------------------------------------------------------------


@dataclass
class _Span:
    """A replaced piece: where it is in the new text and was in the old, and where its
    argument is in each (rewritten itself when `inner` is not None)."""

    new: tuple[int, int]
    old: tuple[int, int]
    arg_new: tuple[int, int]
    arg_old: int
    inner: Rewrite | None


@dataclass
class Rewrite:
    """A text rewritten, and where its pieces came from."""

    text: str
    spans: list[_Span] = field(default_factory=list)

    def offset(self, new: int) -> int:
        """The offset in the text as written that `new` (an offset in `text`) stands for: a
        point in a call's argument is that point as written; elsewhere in a replaced call,
        the call's start."""
        shift = 0
        for span in self.spans:
            if new < span.new[0]:
                break
            if new < span.new[1]:
                a, b = span.arg_new
                if a <= new < b:
                    inside = new - a
                    return span.arg_old + (span.inner.offset(inside) if span.inner else inside)
                return span.old[0]
            shift = span.old[1] - span.new[1]
        return new + shift

    def position(self, source: str, line: int, column: int) -> tuple[int, int]:
        """A (line, column) of `text`, both 1-based, as a (line, column) of `source`."""
        lines = self.text.split("\n")
        new = sum(len(x) + 1 for x in lines[: line - 1]) + column - 1
        old = min(self.offset(new), len(source))
        before = source[:old]
        return before.count("\n") + 1, old - (before.rfind("\n") + 1) + 1


def rewrite(text: str) -> Rewrite | None:
    """`text` with each `format.NAME().validate(ARG)` made the expression above; None when
    it has none."""
    if "format" not in text or "validate" not in text:
        return None
    tokens = list(scan(text))
    out: list[str] = []
    spans: list[_Span] = []
    at = size = 0
    i = 0
    while i < len(tokens):
        call = _format_call(text, tokens, i)
        if call is None:
            i += 1
            continue
        name, arg_start, arg_end, end, last = call
        inner = rewrite(text[arg_start:arg_end])
        arg = inner.text if inner is not None else text[arg_start:arg_end]
        head = f"cel.bind({_ERRS}, {FORMAT_ERRORS}({name!r}, "
        replacement = f"{head}{arg}), {_ERRS}.size() == 0 ? optional.none() : optional.of({_ERRS}))"
        start = tokens[i][0]
        out += [text[at:start], replacement]
        size += start - at
        arg_at = size + len(head)
        spans.append(
            _Span(
                (size, size + len(replacement)),
                (start, end),
                (arg_at, arg_at + len(arg)),
                arg_start,
                inner,
            )
        )
        size += len(replacement)
        at = end
        i = last + 1
    if not out:
        return None
    return Rewrite("".join([*out, text[at:]]), spans)


def _format_call(
    text: str, tokens: list[tuple[int, int, str]], i: int
) -> tuple[str, int, int, int, int] | None:
    """At token `i`: `format . NAME ( ) . validate ( ARG )`, not itself selected from
    something (`self.format...`): (NAME, ARG's span, the end of the call, the index of its
    last token); else None."""
    words = [t[2] for t in tokens[i : i + 8]]
    if words[:2] != ["format", "."] or words[3:8] != ["(", ")", ".", "validate", "("]:
        return None
    if words[2] not in FORMATS or (i > 0 and tokens[i - 1][2] == "."):
        return None
    depth = 0
    for k in range(i + 7, len(tokens)):
        token = tokens[k][2]
        if token in "([{":
            depth += 1
        elif token in ")]}":
            depth -= 1
            if depth == 0:
                return words[2], tokens[i + 7][1], tokens[k][0], tokens[k][1], k
    return None  # unbalanced: left as written, to fail as it is
