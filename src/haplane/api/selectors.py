"""Layer: api. Kubernetes label selectors and field selectors: parsing and matching.

Pure: no I/O. The grammars are those of k8s.io/apimachinery's `labels` and `fields` packages, so
the `labelSelector` and `fieldSelector` query parameters mean here what they mean to
kube-apiserver; errors are `SelectorError`s whose message is fit for a 400 BadRequest Status.

Written by hand: no maintained Python library parses Kubernetes selectors.

Label selectors: comma-separated requirements, all of which must hold.
    key=value  key==value  key!=value  key in (a,b)  key notin (a,b)  key  !key
`!=` and `notin` also match objects without the key. An empty value is allowed (`key=`,
`key in (a,)`). The set-based `gt`/`lt` operators (`key>1`) are not supported.

Field selectors: comma-separated `field=value`, `field==value`, `field!=value`; in a value `\\,`,
`\\=` and `\\\\` stand for ',', '=' and '\\'. A field that is absent reads as "".
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum, auto

from .validation import label_key_errors, label_value_errors


class SelectorError(ValueError):
    """A selector that does not parse, or names something invalid or unsupported."""


# ---- label selectors --------------------------------------------------------------------------

EQUALS = "="
NOT_EQUALS = "!="
IN = "in"
NOT_IN = "notin"
EXISTS = "exists"
DOES_NOT_EXIST = "!"
OPERATORS = frozenset({EQUALS, NOT_EQUALS, IN, NOT_IN, EXISTS, DOES_NOT_EXIST})


@dataclass(frozen=True)
class Requirement:
    """One condition on one label key. `values` holds one value for "=" and "!=", one or more
    (sorted, without duplicates when parsed) for "in" and "notin", and none otherwise."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise SelectorError(f"{self.operator!r} is not a valid label selector operator")
        if self.operator in (EQUALS, NOT_EQUALS) and len(self.values) != 1:
            raise SelectorError("exact-match compatibility requires one single value")
        if self.operator in (IN, NOT_IN) and not self.values:
            raise SelectorError("for 'in', 'notin' operators, values set can't be empty")
        if self.operator in (EXISTS, DOES_NOT_EXIST) and self.values:
            raise SelectorError("values set must be empty for exists and does not exist")

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == EXISTS:
            return present
        if self.operator == DOES_NOT_EXIST:
            return not present
        if self.operator in (EQUALS, IN):
            return present and labels[self.key] in self.values
        # "!=" and "notin": an object without the key matches.
        return not present or labels[self.key] not in self.values

    def __str__(self) -> str:
        if self.operator == EXISTS:
            return self.key
        if self.operator == DOES_NOT_EXIST:
            return f"!{self.key}"
        if self.operator in (IN, NOT_IN):
            return f"{self.key} {self.operator} ({','.join(self.values)})"
        return f"{self.key}{self.operator}{self.values[0]}"


@dataclass(frozen=True)
class LabelSelector:
    """Requirements, in the order written, that must all hold. No requirements: everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        present: Mapping[str, str] = labels if labels is not None else {}
        return all(r.matches(present) for r in self.requirements)

    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


class _Tok(Enum):
    IDENT = auto()
    IN = auto()
    NOT_IN = auto()
    BANG = auto()  # "!" (does not exist)
    EQ = auto()
    DOUBLE_EQ = auto()
    NOT_EQ = auto()
    GT = auto()
    LT = auto()
    OPEN = auto()
    CLOSE = auto()
    COMMA = auto()
    END = auto()


_SYMBOLS = {
    "!=": _Tok.NOT_EQ,
    "==": _Tok.DOUBLE_EQ,
    "!": _Tok.BANG,
    "=": _Tok.EQ,
    ">": _Tok.GT,
    "<": _Tok.LT,
    "(": _Tok.OPEN,
    ")": _Tok.CLOSE,
    ",": _Tok.COMMA,
}
_SYMBOL_CHARS = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")  # the whitespace apimachinery's lexer skips
_KEYWORDS = {"in": _Tok.IN, "notin": _Tok.NOT_IN}
_OPERATOR_TOKENS = {
    _Tok.EQ: EQUALS,
    _Tok.DOUBLE_EQ: EQUALS,
    _Tok.NOT_EQ: NOT_EQUALS,
    _Tok.IN: IN,
    _Tok.NOT_IN: NOT_IN,
}
_EXPECTED_OPERATORS = "in, notin, =, ==, !="


def _lex(text: str) -> Iterator[tuple[_Tok, str]]:
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _WHITESPACE:
            i += 1
        if i == n:
            yield _Tok.END, ""
            return
        if text[i] in _SYMBOL_CHARS:
            two = text[i : i + 2]
            lit = two if two in _SYMBOLS else text[i]
            i += len(lit)
            yield _SYMBOLS[lit], lit
            continue
        start = i
        while i < n and text[i] not in _WHITESPACE and text[i] not in _SYMBOL_CHARS:
            i += 1
        lit = text[start:i]
        yield _KEYWORDS.get(lit, _Tok.IDENT), lit


def _found(tok: _Tok, lit: str) -> str:
    return "found end of string" if tok is _Tok.END else f"found '{lit}'"


class _LabelParser:
    def __init__(self, text: str):
        self.tokens = list(_lex(text))
        self.pos = 0

    def peek(self, *, values: bool = False) -> tuple[_Tok, str]:
        tok, lit = self.tokens[self.pos]
        if values and tok in (_Tok.IN, _Tok.NOT_IN):
            tok = _Tok.IDENT  # "in" and "notin" are ordinary words where values are expected
        return tok, lit

    def take(self, *, values: bool = False) -> tuple[_Tok, str]:
        tok, lit = self.peek(values=values)
        if tok is not _Tok.END:
            self.pos += 1
        return tok, lit

    def parse(self) -> LabelSelector:
        requirements: list[Requirement] = []
        tok, lit = self.peek()
        if tok is _Tok.END:
            return LabelSelector()
        if tok not in (_Tok.IDENT, _Tok.BANG):
            raise SelectorError(f"{_found(tok, lit)}, expected: !, identifier, or 'end of string'")
        while True:
            try:
                requirements.append(self.requirement())
            except SelectorError as exc:
                raise SelectorError(f"unable to parse requirement: {exc}") from None
            tok, lit = self.take()
            if tok is _Tok.END:
                return LabelSelector(tuple(requirements))
            if tok is not _Tok.COMMA:
                raise SelectorError(f"{_found(tok, lit)}, expected: ',' or 'end of string'")
            tok, lit = self.peek()
            if tok not in (_Tok.IDENT, _Tok.BANG):
                raise SelectorError(f"{_found(tok, lit)}, expected: identifier after ','")

    def requirement(self) -> Requirement:
        negated = self.peek()[0] is _Tok.BANG
        if negated:
            self.take()
        tok, key = self.take()
        if tok is not _Tok.IDENT:
            raise SelectorError(f"{_found(tok, key)}, expected: identifier")
        key_errors = label_key_errors(key)
        if key_errors:
            raise SelectorError(f"key: Invalid value: {_quote(key)}: {'; '.join(key_errors)}")
        if negated:
            return Requirement(key, DOES_NOT_EXIST)
        tok, lit = self.peek()
        if tok in (_Tok.END, _Tok.COMMA):
            return Requirement(key, EXISTS)
        self.take()
        if tok in (_Tok.GT, _Tok.LT):
            raise SelectorError(
                f"found '{lit}': the gt and lt operators are not supported, "
                f"expected: {_EXPECTED_OPERATORS}"
            )
        operator = _OPERATOR_TOKENS.get(tok)
        if operator is None:
            raise SelectorError(f"{_found(tok, lit)}, expected: {_EXPECTED_OPERATORS}")
        values = self.value_set() if operator in (IN, NOT_IN) else [self.exact_value()]
        for i, value in enumerate(values):
            value_errors = label_value_errors(value)
            if value_errors:
                raise SelectorError(
                    f"values[{i}]: Invalid value: {_quote(value)}: {'; '.join(value_errors)}"
                )
        if operator in (IN, NOT_IN):
            values = sorted(set(values))
        return Requirement(key, operator, tuple(values))

    def exact_value(self) -> str:
        tok, lit = self.peek(values=True)
        if tok in (_Tok.END, _Tok.COMMA):
            return ""  # `key=` requires the empty value, as in Kubernetes
        self.take(values=True)
        if tok is not _Tok.IDENT:
            raise SelectorError(f"{_found(tok, lit)}, expected: identifier")
        return lit

    def value_set(self) -> list[str]:
        """`( value, ... )`, where any value may be empty: `()`, `(a,)`, `(,a)`, `(a,,b)`."""
        tok, lit = self.take(values=True)
        if tok is not _Tok.OPEN:
            raise SelectorError(f"{_found(tok, lit)}, expected: '('")
        values: list[str] = []
        expect_value = True  # after '(' or ','
        while True:
            tok, lit = self.take(values=True)
            if tok is _Tok.IDENT and expect_value:
                values.append(lit)
                expect_value = False
            elif tok is _Tok.COMMA:
                if expect_value:
                    values.append("")
                expect_value = True
            elif tok is _Tok.CLOSE:
                if expect_value:
                    values.append("")
                return values
            elif expect_value:
                raise SelectorError(f"{_found(tok, lit)}, expected: ',', ')' or identifier")
            else:
                raise SelectorError(f"{_found(tok, lit)}, expected: ',' or ')'")


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse a `labelSelector`; None, "" or only whitespace select everything."""
    if text is None:
        return LabelSelector()
    return _LabelParser(text).parse()


# ---- field selectors --------------------------------------------------------------------------

FIELD_OPERATORS = ("!=", "==", "=")  # "==" before "=", so that no '=' is left on the value


@dataclass(frozen=True)
class FieldRequirement:
    """`field` must equal ("=") or differ from ("!=") `value`; an absent field reads as ""."""

    field: str
    operator: str
    value: str

    def __post_init__(self) -> None:
        if self.operator not in (EQUALS, NOT_EQUALS):
            raise SelectorError(f"{self.operator!r} is not a valid field selector operator")

    def matches(self, fields: Mapping[str, str]) -> bool:
        equal = fields.get(self.field, "") == self.value
        return equal if self.operator == EQUALS else not equal

    def __str__(self) -> str:
        return f"{self.field}{self.operator}{escape_field_value(self.value)}"


@dataclass(frozen=True)
class FieldSelector:
    """Requirements, in the order written, that must all hold. No requirements: everything."""

    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, fields: Mapping[str, str]) -> bool:
        return all(r.matches(fields) for r in self.requirements)

    def empty(self) -> bool:
        return not self.requirements

    def value_of(self, field: str) -> str | None:
        """The value an "=" requirement demands of `field` (the first, if several), else None.
        Lets a server read one key instead of a range; the selector must still be applied."""
        for r in self.requirements:
            if r.field == field and r.operator == EQUALS:
                return r.value
        return None

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def escape_field_value(value: str) -> str:
    """The inverse of the unescaping `parse_field_selector` applies to values."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not escaped; escapes are kept for the value to undo."""
    terms: list[str] = []
    start = 0
    escaped = False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == ",":
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    # No escapes in a field name: the first operator anywhere in the term splits it.
    for i in range(len(term)):
        for op in FIELD_OPERATORS:
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op) :]
    return None


def _unescape_value(raw: str) -> str:
    out: list[str] = []
    escaped = False
    for c in raw:
        if escaped:
            if c not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{c}")
            out.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c in ",=":
            raise SelectorError(f"invalid field selector: unescaped character in value: '{c}'")
        else:
            out.append(c)
    if escaped:
        raise SelectorError("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


def parse_field_selector(text: str | None, supported: Collection[str] | None) -> FieldSelector:
    """Parse a `fieldSelector` whose fields must be among `supported` (None: any field, as
    Kubernetes' fields.ParseSelector, which a SubjectAccessReview's uses). None or "" select
    everything; empty terms are skipped. Whitespace is not trimmed, as in Kubernetes."""
    if not text:
        return FieldSelector()
    requirements: list[FieldRequirement] = []
    for term in _split_terms(text):
        if not term:
            continue
        split = _split_term(term)
        if split is None or not split[0]:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        field, op, raw = split
        value = _unescape_value(raw)
        if supported is not None and field not in supported:
            raise SelectorError(f"field label not supported: {field}")
        requirements.append(FieldRequirement(field, NOT_EQUALS if op == "!=" else EQUALS, value))
    return FieldSelector(tuple(requirements))
