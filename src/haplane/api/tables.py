"""Layer: api. Server-side printing: the `meta.k8s.io` `Table` that `kubectl get` asks for.

Pure: no I/O and no clock of its own (every function that renders an age takes "now"), and
the inputs are never mutated. Rows share the caller's objects (the full object for
includeObject=Object, its `metadata` for Metadata) rather than copying them.

    table_request(accept)             the Table version ("v1" / "v1beta1") the client prefers,
                                      or None for plain JSON
    builtin_columns(kind)             the columns of kube-apiserver's printers for a kind
    crd_columns(additionalPrinterColumns)
                                      the columns of a CRD version, as apiextensions serves them
    to_table(objects, columns, ...)   a `Table` for a list (or, with one object, for a GET)
    table_for_watch_event(obj, ...)   the one-row `Table` a watch event carries
    human_age(created, now) / human_duration(delta)
                                      k8s.io/apimachinery/pkg/util/duration.HumanDuration

What Kubernetes does, and so what this does:
- Accept negotiation (kube's `NegotiateOutputMediaTypeOptions`): the media ranges are ordered by
  q-value (stable; a wildcard type or subtype sorts after a concrete one of the same q; q=0 is
  "not acceptable"), and the first one the server can serve wins. A Table is served for
  `as=Table;g=meta.k8s.io;v=v1|v1beta1` on application/json (or a wildcard), since haplane
  answers JSON only. Plain application/json (or a wildcard) without `as` is plain JSON. A range
  haplane cannot serve (PartialObjectMetadata[List], another `as`, another group or version,
  protobuf, YAML) is skipped, as kube skips the ranges it cannot serve; nothing acceptable at
  all also means None (plain JSON, where kube would answer 406).
- Built-in printers (pkg/printers/internalversion): the server always prints "wide" and kubectl
  hides the columns of priority > 0 unless `-o wide`, so Event has its five wide columns too.
  Cells are what the Go printers produce: Go zero values ("" for an absent string, 0 for an
  absent map), counts as integers in "string"-typed columns, ages as HumanDuration strings and
  "<unknown>" for an absent timestamp. An unknown kind gets kube's default table with its
  "Created At" date column replaced by a Name + Age pair.
- CRD columns (apiextensions' tableconvertor): Name first, then the additionalPrinterColumns in
  order; no Age is appended (a CRD shows one only if it declares one). A version that declares
  no columns gets the single default `Age` column (type date, `.metadata.creationTimestamp`).
  A cell is None when the JSONPath finds nothing, or when the value does not fit the column's
  type (a string in an integer column); "integer" truncates floats, "number" widens ints,
  "string" prints scalars as Go's fmt does and maps/lists as compact JSON, "date" renders
  an RFC 3339 string as an age ("<invalid>" if it does not parse). Only the first match of a
  path counts. If any jsonPath does not parse, kube falls back to its default table for the
  whole CRD; so does this (Name + Age).
- includeObject: Metadata (the default; "" too) gives `PartialObjectMetadata` of the Table's
  version, Object the full object, None no object: the row then has no `object` key, where kube
  writes `"object": null`. Any other value is a ValueError (kube: 400 BadRequest).
- Watch (`kubectl get -w`): every event's object is a one-row Table whose metadata carries the
  object's resourceVersion; kube sends the column definitions with the first event only
  (`no_headers=True` for the later ones gives an empty `columnDefinitions`). ERROR and BOOKMARK
  events are the caller's to pass through.

JSONPath: kubectl's syntax (leading ".", no "$", `\\.` escapes a dot in a key, `['k']`,
`[0]`, `[*]`, `[?(@.type=="Ready")]`) is translated for the jsonpath-ng library (its `ext`
parser, for filters): every plain key is quoted, brackets are passed as they are.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from jsonpath_ng.ext.parser import parse as parse_jsonpath
from jsonpath_ng.jsonpath import JSONPath

TABLE_GROUP = "meta.k8s.io"
TABLE_VERSIONS = ("v1", "v1beta1")
INCLUDE_OBJECT_VALUES = ("None", "Metadata", "Object")

Obj = dict[str, Any]
Extract = Callable[[Obj, datetime], Any]

NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the name to be generated automatically. "
    "Name is primarily intended for creation idempotence and configuration definition. "
    "Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
CREATION_TIMESTAMP_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was "
    "created. It is not guaranteed to be set in happens-before order across separate "
    "operations. Clients may not set this value. It is represented in RFC3339 form and is in "
    "UTC.\n\nPopulated by the system. Read-only. Null for lists."
)


@dataclass(frozen=True)
class Column:
    """One column: its `TableColumnDefinition` fields and how to compute its cell."""

    name: str
    type: str  # "string" | "integer" | "number" | "boolean" | "date"
    format: str = ""
    description: str = ""
    priority: int = 0
    extract: Extract = field(kw_only=True)  # (object, now) -> the cell value

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }


# --- Accept negotiation -----------------------------------------------------------------------


def _split_unquoted(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


@dataclass(frozen=True)
class _MediaRange:
    type: str
    subtype: str
    params: dict[str, str]
    q: float


def _parse_accept(accept: str) -> list[_MediaRange]:
    ranges: list[_MediaRange] = []
    for clause in _split_unquoted(accept, ","):
        pieces = _split_unquoted(clause, ";")
        media = pieces[0].strip().lower()
        if media == "*":
            media = "*/*"
        typ, slash, sub = media.partition("/")
        if not slash or not typ or not sub:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            key, eq, value = piece.partition("=")
            key = key.strip().lower()
            if not key or not eq:
                continue
            if key == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not math.isfinite(q):
                    q = 0.0
            else:
                params[key] = _unquote(value)
        if q > 0:
            ranges.append(_MediaRange(typ.strip(), sub.strip(), params, q))
    # sorted() is stable: equal preference keeps the client's order.
    return sorted(ranges, key=lambda r: (-r.q, r.type == "*", r.subtype == "*"))


def _serves_json(r: _MediaRange) -> bool:
    return (r.type, r.subtype) in {("application", "json"), ("application", "*"), ("*", "*")}


def table_request(accept: str | None) -> str | None:
    """The Table version ("v1" or "v1beta1") if the client's first choice haplane can serve is a
    Table; None when it is plain JSON (or nothing is acceptable: plain JSON too)."""
    if not accept:
        return None
    for r in _parse_accept(accept):
        if not _serves_json(r):
            continue
        kind = r.params.get("as", "")
        if not kind:
            return None
        if (
            kind == "Table"
            and r.params.get("g") == TABLE_GROUP
            and r.params.get("v") in TABLE_VERSIONS
        ):
            return r.params["v"]
        # PartialObjectMetadata[List] and anything else: not served here, try the next range.
    return None


# --- Ages ---------------------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$",
)
_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)


def _parse_time(text: str) -> datetime | None:
    """An RFC 3339 timestamp (as metav1.Time and MicroTime are written), or None."""
    if not _RFC3339.match(text):
        return None
    try:
        parsed = datetime.fromisoformat(text.upper())
    except ValueError:
        return None
    return parsed


def human_duration(delta: timedelta) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration, exactly:

    below -1s "<invalid>"; -1s..0 "0s"; < 2 minutes "Ns"; < 10 minutes "NmSs" ("Nm" when S is
    0); < 3 hours "Nm"; < 8 hours "NhMm" ("Nh" when M is 0); < 48 hours "Nh"; < 8 days "NdHh"
    ("Nd" when H is 0); < 2 years "Nd"; < 8 years "NyDd" ("Ny" when D is 0, a year being 365
    days); beyond "Ny". Every division truncates.
    """
    micros = delta // timedelta(microseconds=1)
    seconds = math.trunc(micros / 1_000_000) if micros < 0 else micros // 1_000_000
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        years = hours // 24 // 365
        return f"{years}y" if dy == 0 else f"{years}y{dy}d"
    return f"{hours // 24 // 365}y"


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _age_of(when: datetime | None, now: datetime) -> str:
    if when is None or when == _ZERO_TIME:
        return "<unknown>"
    return human_duration(_utc(now) - when)


def human_age(created: str | None, now: datetime) -> str:
    """The age kubectl shows for a timestamp (kube's translateTimestampSince): HumanDuration of
    now - created, "<unknown>" when the timestamp is missing, zero or not RFC 3339."""
    if not isinstance(created, str) or not created:
        return "<unknown>"
    return _age_of(_parse_time(created), now)


# --- Built-in printers ------------------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _len(value: Any) -> int:
    return len(value) if isinstance(value, dict | list) else 0


def _name(obj: Obj, _now: datetime) -> Any:
    return _str(_dict(obj.get("metadata")).get("name"))


def _age(obj: Obj, now: datetime) -> Any:
    return human_age(_dict(obj.get("metadata")).get("creationTimestamp"), now)


def _name_column(priority: int = 0) -> Column:
    return Column("Name", "string", "name", NAME_DESCRIPTION, priority=priority, extract=_name)


_AGE = Column("Age", "string", description=CREATION_TIMESTAMP_DESCRIPTION, extract=_age)


def _first_of(obj: Obj, *keys: str) -> Any:
    """The first non-empty of several fields: core/v1 Event names first, events.k8s.io/v1 next."""
    for key in keys:
        value = obj.get(key)
        if value not in (None, "", 0, {}):
            return value
    return None


def _event_first_seen(obj: Obj, now: datetime) -> str:
    first = _first_of(obj, "firstTimestamp", "deprecatedFirstTimestamp")
    if isinstance(first, str) and first:
        return human_age(first, now)
    return human_age(obj.get("eventTime"), now)


def _event_last_seen(obj: Obj, now: datetime) -> Any:
    series = obj.get("series")
    if isinstance(series, dict):
        return human_age(series.get("lastObservedTime"), now)
    last = _first_of(obj, "lastTimestamp", "deprecatedLastTimestamp")
    if isinstance(last, str) and last:
        return human_age(last, now)
    return _event_first_seen(obj, now)


def _event_object(obj: Obj, _now: datetime) -> Any:
    involved = _dict(_first_of(obj, "involvedObject", "regarding"))
    kind = _str(involved.get("kind")).lower()
    name = _str(involved.get("name"))
    return f"{kind}/{name}" if name else kind


def _event_subobject(obj: Obj, _now: datetime) -> Any:
    return _str(_dict(_first_of(obj, "involvedObject", "regarding")).get("fieldPath"))


def _event_source(obj: Obj, _now: datetime) -> Any:
    source = _dict(_first_of(obj, "source", "deprecatedSource"))
    component = _str(source.get("component")) or _str(obj.get("reportingController"))
    instance = _str(source.get("host")) or _str(obj.get("reportingInstance"))
    return f"{component}, {instance}" if instance else component


def _event_message(obj: Obj, _now: datetime) -> Any:
    return _str(_first_of(obj, "message", "note")).strip()


def _event_count(obj: Obj, _now: datetime) -> Any:
    series = obj.get("series")
    if isinstance(series, dict):
        count = series.get("count")
        return count if isinstance(count, int) and not isinstance(count, bool) else 0
    count = _first_of(obj, "count", "deprecatedCount")
    if not isinstance(count, int) or isinstance(count, bool) or count == 0:
        return 1  # singleton events have no count in the new API
    return count


def _field(*path: str) -> Extract:
    def extract(obj: Obj, _now: datetime) -> Any:
        value: Any = obj
        for key in path[:-1]:
            value = _dict(value.get(key))
        return _str(value.get(path[-1]))

    return extract


def _count(*path: str) -> Extract:
    def extract(obj: Obj, _now: datetime) -> Any:
        return sum(_len(obj.get(key)) for key in path)

    return extract


_BUILTIN: dict[str, list[Column]] = {
    "Namespace": [
        _name_column(),
        Column(
            "Status",
            "string",
            description="The status of the namespace",
            extract=_field("status", "phase"),
        ),
        _AGE,
    ],
    "ConfigMap": [
        _name_column(),
        Column(
            "Data",
            "string",
            description="Data contains the configuration data.",
            extract=_count("data", "binaryData"),
        ),
        _AGE,
    ],
    "Secret": [
        _name_column(),
        Column(
            "Type",
            "string",
            description="Used to facilitate programmatic handling of secret data.",
            extract=_field("type"),
        ),
        Column(
            "Data",
            "string",
            description="Data contains the secret data.",
            extract=_count("data"),
        ),
        _AGE,
    ],
    "ServiceAccount": [
        _name_column(),
        Column(
            "Secrets",
            "string",
            description="Secrets is a list of the secrets in the same namespace that pods "
            "running using this ServiceAccount are allowed to use.",
            extract=_count("secrets"),
        ),
        _AGE,
    ],
    "Event": [
        Column(
            "Last Seen",
            "string",
            description="The time at which the most recent occurrence of this event was recorded.",
            extract=_event_last_seen,
        ),
        Column(
            "Type",
            "string",
            description="Type of this event (Normal, Warning), new types could be added in the "
            "future",
            extract=_field("type"),
        ),
        Column(
            "Reason",
            "string",
            description="This should be a short, machine understandable string that gives the "
            "reason for the transition into the object's current status.",
            extract=_field("reason"),
        ),
        Column(
            "Object",
            "string",
            description="The object that this event is about.",
            extract=_event_object,
        ),
        Column(
            "Subobject",
            "string",
            description="If referring to a piece of an object instead of an entire object, "
            "this string should contain a valid JSON/Go field access statement.",
            priority=1,
            extract=_event_subobject,
        ),
        Column(
            "Source",
            "string",
            description="The component reporting this event.",
            priority=1,
            extract=_event_source,
        ),
        Column(
            "Message",
            "string",
            description="A human-readable description of the status of this operation.",
            extract=_event_message,
        ),
        Column(
            "First Seen",
            "string",
            description="The time at which the event was first recorded.",
            priority=1,
            extract=_event_first_seen,
        ),
        Column(
            "Count",
            "string",
            description="The number of times this event has occurred.",
            priority=1,
            extract=_event_count,
        ),
        _name_column(priority=1),
    ],
    "Lease": [
        _name_column(),
        Column(
            "Holder",
            "string",
            description="holderIdentity contains the identity of the holder of a current lease.",
            extract=_field("spec", "holderIdentity"),
        ),
        _AGE,
    ],
}


def builtin_columns(kind: str) -> list[Column]:
    """The columns kube-apiserver prints for `kind`; Name + Age for a kind it has no printer
    for here."""
    return list(_BUILTIN.get(kind, [_name_column(), _AGE]))


# --- CRD columns ------------------------------------------------------------------------------


def _quote_key(key: str) -> str:
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bracket_end(path: str, start: int) -> int:
    """The index of the "]" closing the "[" at `start`, skipping quoted strings and parens."""
    depth = 0
    quote = ""
    i = start
    while i < len(path):
        ch = path[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth == 0:
                if ch != "]":
                    raise ValueError(f"unbalanced brackets in {path!r}")
                return i
        i += 1
    raise ValueError(f"unterminated [ in {path!r}")


def kubectl_to_jsonpath_ng(path: str) -> str:
    """Translate kubectl/CRD JSONPath (".spec.replicas", optionally wrapped in {}) into
    jsonpath-ng syntax ("$."spec"."replicas"")."""
    p = path.strip()
    if p.startswith("{") and p.endswith("}"):
        p = p[1:-1].strip()
    if p.startswith("$"):
        p = p[1:]
    if p and p[0] not in ".[":
        p = "." + p
    out = ["$"]
    i = 0
    while i < len(p):
        ch = p[i]
        if ch == "[":
            end = _bracket_end(p, i)
            out.append(p[i : end + 1])
            i = end + 1
            continue
        if ch != ".":
            raise ValueError(f"unexpected {ch!r} at {i} in {path!r}")
        recursive = p.startswith("..", i)
        out.append(".." if recursive else ".")
        i += 2 if recursive else 1
        key: list[str] = []
        while i < len(p) and p[i] not in ".[":
            if p[i] == "\\" and i + 1 < len(p):
                i += 1
            key.append(p[i])
            i += 1
        name = "".join(key)
        if name == "*":
            out.append("*")
        elif name:
            out.append(_quote_key(name))
        elif not recursive or i >= len(p) or p[i] != "[":
            raise ValueError(f"empty field name at {i} in {path!r}")
    return "".join(out)


@lru_cache(maxsize=512)
def _compile(path: str) -> JSONPath:
    return parse_jsonpath(kubectl_to_jsonpath_ng(path))


def _go_float_digits(value: float) -> tuple[str, int]:
    """The shortest round-tripping decimal digits of a finite, non-zero |value|, and the
    position of the decimal point relative to them (Go's `decimalSlice` digits and dp)."""
    sign_digits_exp = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(str(d) for d in sign_digits_exp.digits)
    exponent = int(sign_digits_exp.exponent)
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped.lstrip("0")
    return digits, len(digits) + exponent


def _format_e(digits: str, dp: int, neg: bool, trim_exp: bool) -> str:
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    exp = dp - 1
    exp_text = f"{abs(exp):d}" if trim_exp else f"{abs(exp):02d}"
    return f"{'-' if neg else ''}{mantissa}e{'-' if exp < 0 else '+'}{exp_text}"


def _format_f(digits: str, dp: int, neg: bool) -> str:
    if dp <= 0:
        text = "0." + "0" * -dp + digits
    elif dp >= len(digits):
        text = digits + "0" * (dp - len(digits))
    else:
        text = digits[:dp] + "." + digits[dp:]
    return ("-" if neg else "") + text


def go_format_float(value: float) -> str:
    """Go's fmt "%v" of a float64 (strconv 'g' with the shortest precision): exponent form
    when the decimal exponent is < -4 or >= 6 ("1e+06", "1.5e-05"), plain otherwise."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    digits, dp = _go_float_digits(value)
    if dp - 1 < -4 or dp - 1 >= 6:
        return _format_e(digits, dp, value < 0, trim_exp=False)
    return _format_f(digits, dp, value < 0)


def _go_json_float(value: float) -> str:
    """encoding/json's float64: plain unless |v| < 1e-6 or >= 1e21, exponent without padding."""
    if not math.isfinite(value):
        raise ValueError("unsupported float value")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    digits, dp = _go_float_digits(value)
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        return _format_e(digits, dp, value < 0, trim_exp=True)
    return _format_f(digits, dp, value < 0)


def _go_json_string(text: str) -> str:
    encoded = json.dumps(text, ensure_ascii=False)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        encoded = encoded.replace(raw, escaped)
    return encoded


def go_json(value: Any) -> str:
    """encoding/json.Marshal of JSON-like data: compact, map keys sorted, HTML-escaped."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_json_float(value)
    if isinstance(value, str):
        return _go_json_string(value)
    if isinstance(value, dict):
        items = sorted((str(k), v) for k, v in value.items())
        return "{" + ",".join(f"{_go_json_string(k)}:{go_json(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise TypeError(f"not JSON data: {type(value).__name__}")


def _string_cell(value: Any) -> Any:
    """kube's jsonpath PrintResults of one value: strings as they are, maps and lists as JSON,
    other scalars as Go's fmt prints them."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_format_float(value)
    try:
        return go_json(value)
    except (TypeError, ValueError):
        return None


def _typed_cell(column_type: str, value: Any, now: datetime) -> Any:
    """apiextensions' cellForJSONValue."""
    if value is None:
        return None
    if column_type == "string":
        return _string_cell(value)
    if isinstance(value, bool):
        return value if column_type == "boolean" else None
    if column_type == "integer" and isinstance(value, int | float):
        return int(value) if math.isfinite(value) else None
    if column_type == "number" and isinstance(value, int | float):
        return float(value)
    if column_type == "date" and isinstance(value, str):
        if value in ("", "null"):
            return "<unknown>"
        parsed = _parse_time(value)
        return "<invalid>" if parsed is None else _age_of(parsed, now)
    return None


def _jsonpath_extract(expr: JSONPath, column_type: str) -> Extract:
    def extract(obj: Obj, now: datetime) -> Any:
        try:
            matches = expr.find(obj)
        except Exception:  # kube: an evaluation error is an empty cell, never a failed request
            return None
        if not matches:
            return None
        return _typed_cell(column_type, matches[0].value, now)

    return extract


DEFAULT_CRD_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Age",
        "type": "date",
        "description": CREATION_TIMESTAMP_DESCRIPTION,
        "jsonPath": ".metadata.creationTimestamp",
    }
]


def crd_columns(additional_printer_columns: list[dict[str, Any]]) -> list[Column]:
    """The columns of a CRD version: Name, then its additionalPrinterColumns (or the default Age
    column when it declares none). A jsonPath that does not parse gives Name + Age for the whole
    CRD, as kube falls back to its default table."""
    specs = additional_printer_columns or DEFAULT_CRD_COLUMNS
    columns = [_name_column()]
    for spec in specs:
        json_path = str(spec.get("jsonPath", ""))
        column_type = str(spec.get("type") or "string")
        try:
            expr = _compile(json_path)
        except Exception:  # jsonpath-ng raises several error types (lexer, parser, ours)
            return builtin_columns("")
        description = str(spec.get("description") or "")
        if not description:
            description = f"Custom resource definition column (in JSONPath format): {json_path}"
        priority = spec.get("priority") or 0
        columns.append(
            Column(
                str(spec.get("name", "")),
                column_type,
                str(spec.get("format") or ""),
                description,
                priority=priority if isinstance(priority, int) else 0,
                extract=_jsonpath_extract(expr, column_type),
            )
        )
    return columns


# --- Tables -----------------------------------------------------------------------------------


def _check(include_object: str, version: str) -> str:
    if version not in TABLE_VERSIONS:
        raise ValueError(f"no Table exists in group version {TABLE_GROUP}/{version}")
    policy = include_object or "Metadata"
    if policy not in INCLUDE_OBJECT_VALUES:
        raise ValueError(f"unrecognized includeObject value: {include_object!r}")
    return policy


def _row(obj: Obj, columns: list[Column], policy: str, now: datetime, version: str) -> Obj:
    row: Obj = {"cells": [column.extract(obj, now) for column in columns]}
    if policy == "Object":
        row["object"] = obj
    elif policy == "Metadata":
        row["object"] = {
            "kind": "PartialObjectMetadata",
            "apiVersion": f"{TABLE_GROUP}/{version}",
            "metadata": _dict(obj.get("metadata")),
        }
    return row


def _table(
    rows: list[Obj], columns: list[Column], metadata: Obj, version: str, headers: bool
) -> Obj:
    return {
        "kind": "Table",
        "apiVersion": f"{TABLE_GROUP}/{version}",
        "metadata": metadata,
        "columnDefinitions": [c.definition() for c in columns] if headers else [],
        "rows": rows,
    }


def to_table(
    objects: list[Obj],
    columns: list[Column],
    *,
    list_meta: Obj,
    include_object: str = "Metadata",
    now: datetime | None = None,
    version: str = "v1",
) -> Obj:
    """A `Table` of `objects`, one row each in order. `list_meta` is the list's metadata:
    resourceVersion, continue and remainingItemCount are carried over (empty ones dropped).
    ValueError for an unknown include_object or version (kube: 400 / 406)."""
    policy = _check(include_object, version)
    at = _utc(now)
    metadata: Obj = {}
    for key in ("resourceVersion", "continue", "remainingItemCount"):
        value = list_meta.get(key)
        if value is not None and value != "":
            metadata[key] = value
    rows = [_row(obj, columns, policy, at, version) for obj in objects]
    return _table(rows, columns, metadata, version, headers=True)


def table_for_watch_event(
    obj: Obj,
    columns: list[Column],
    *,
    include_object: str = "Metadata",
    now: datetime | None = None,
    version: str = "v1",
    no_headers: bool = False,
) -> Obj:
    """The one-row `Table` that replaces a watch event's object; its metadata.resourceVersion is
    the object's. Kube sends column definitions on the first event of a watch only: pass
    `no_headers=True` for the later ones."""
    policy = _check(include_object, version)
    rv = _dict(obj.get("metadata")).get("resourceVersion")
    metadata: Obj = {"resourceVersion": rv} if rv else {}
    row = _row(obj, columns, policy, _utc(now), version)
    return _table([row], columns, metadata, version, headers=not no_headers)
