"""Strings of OpenAPI's formats as Kubernetes reads them into CEL values (apiserver's
cel/common/values.go, with kube-openapi's strfmt): `date` and `date-time` as timestamps,
`duration` as durations, `byte` as bytes. For CRD validation rules, whose `self` is typed so
(`haplane.cel.typed`, `crd=True`).

Layer: cel. Pure. Written by hand: Go's time.ParseDuration and strfmt's parsers have no
Python library that reads exactly what they read.

    cel_value("1h30m", "duration")     a google.protobuf.Duration (the engine's duration)
    cel_value("nope", "duration")      None: not of its format
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Final

from google.protobuf import duration_pb2, timestamp_pb2  # type: ignore[import-untyped]

FORMATS: Final = frozenset({"date", "date-time", "duration", "byte"})


def cel_value(text: str, fmt: str) -> Any:
    """The CEL value of a string of format `fmt`: a Timestamp, a Duration, bytes; None when
    the string is not of its format."""
    if fmt == "byte":
        return decode_base64(text)
    if fmt == "duration":
        nanos = duration_nanos(text)
        if nanos is None:
            return None
        seconds, rest = divmod(abs(nanos), 10**9)
        sign = -1 if nanos < 0 else 1
        return duration_pb2.Duration(seconds=sign * seconds, nanos=sign * rest)
    moment = date_seconds(text) if fmt == "date" else datetime_seconds(text)
    if moment is None:
        return None
    seconds, nanos = moment
    if not _FIRST <= seconds <= _LAST:
        return None  # outside CEL's timestamps (years 1 to 9999): a string, as unparsed
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


_FIRST: Final = -62135596800  # 0001-01-01T00:00:00Z
_LAST: Final = 253402300799  # 9999-12-31T23:59:59Z


# ---- base64 ---------------------------------------------------------------------------------


def decode_base64(text: str) -> bytes | None:
    """Go's base64.StdEncoding.DecodeString: padded standard alphabet, carriage returns and
    newlines ignored."""
    try:
        return base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        return None


# ---- dates and times -----------------------------------------------------------------------

_DATE: Final = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
# kube-openapi's strfmt.ParseDateTime layouts: RFC 3339 (with or without a fraction, which Go
# also reads after a comma), or ISO 8601 local time (no zone: read as UTC); Go's time.Parse
# is case-sensitive ("T", "Z")
_DATETIME: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:[.,]([0-9]+))?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?"
)
_MAX_NANOS: Final = (1 << 63) - 1  # Go's time.Duration


def date_seconds(text: str) -> tuple[int, int] | None:
    """A `date` (2006-01-02) as (seconds since the epoch at its midnight UTC, 0)."""
    m = _DATE.fullmatch(text)
    if m is None:
        return None
    return _epoch(int(m[1]), int(m[2]), int(m[3]), 0, 0, 0, 0)


def datetime_seconds(text: str) -> tuple[int, int] | None:
    """A `date-time` as (seconds since the epoch, nanoseconds), to the nanosecond."""
    m = _DATETIME.fullmatch(text)
    if m is None:
        return None
    fraction = (m[7] or "")[:9].ljust(9, "0")
    zone = m[8] or "Z"
    offset = 0
    if zone != "Z":
        digits = zone[1:].replace(":", "")
        offset = (int(digits[:2]) * 60 + int(digits[2:])) * 60
        if zone[0] == "-":
            offset = -offset
    at = _epoch(
        int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6] or 0), int(fraction)
    )
    return None if at is None else (at[0] - offset, at[1])


def _epoch(
    year: int, month: int, day: int, hour: int, minute: int, second: int, nanos: int
) -> tuple[int, int] | None:
    if not 1 <= month <= 12 or hour > 23 or minute > 59 or second > 59:
        return None
    # (the days counted by hand: Python's calendar has no year 0, which Go's has)
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= day <= _DAYS[month - 1] + (month == 2 and leap):
        return None
    days = _days_before_year(year) - _days_before_year(1970) + _BEFORE_MONTH[month - 1]
    days += (month > 2 and leap) + day - 1
    return ((days * 24 + hour) * 60 + minute) * 60 + second, nanos


_DAYS: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_BEFORE_MONTH: Final = tuple(sum(_DAYS[:i]) for i in range(12))


def _days_before_year(year: int) -> int:
    """Days from 1 January of year 0 (proleptic Gregorian) to 1 January of `year`."""
    y = year - 1
    return year * 365 + (y // 4 - y // 100 + y // 400 + 1 if year > 0 else 0)


# ---- durations ------------------------------------------------------------------------------

_UNIT_NANOS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5
    "μs": 1_000,  # U+03BC
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_GO_PART: Final = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
# strfmt's fallback: every "<number> <unit>" in the text, units by name or by prefix
_STRFMT_PART: Final = re.compile(r"(([0-9]+)\s*([A-Za-zµ]+))")
_STRFMT_UNITS: Final = (
    (("ns", "nano"), 1),
    (("us", "µs", "micro"), 1_000),
    (("ms", "milli"), 1_000_000),
    (("s", "sec"), 10**9),
    (("m", "min"), 60 * 10**9),
    (("h", "hr", "hour"), 3600 * 10**9),
    (("d", "day"), 86400 * 10**9),
    (("w", "wk", "week"), 7 * 86400 * 10**9),
)


def duration_nanos(text: str) -> int | None:
    """A `duration` in nanoseconds, as strfmt.ParseDuration reads it: Go's time.ParseDuration
    ("1h30m", "-1.5s", "0"), else the sum of every number and unit in it ("3d", "2 weeks",
    "1 hour 30 minutes"); None when neither reads it."""
    go = _go_duration(text)
    return go if go is not None else _strfmt_duration(text)


def _go_duration(text: str) -> int | None:
    s, negative = text, False
    if s[:1] in ("-", "+"):
        negative, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        return None
    total = 0
    while s:
        m = _GO_PART.match(s)
        if m is None or not (m[1] or m[2]) or not m[3]:
            return None  # no number, or no unit
        unit = _UNIT_NANOS.get(m[3])
        if unit is None:
            return None
        if len(m[1].lstrip("0")) > 19:
            return None  # more than an int64 holds (Go: overflow)
        whole = int(m[1] or 0)
        if whole > (1 << 63) // unit:
            return None  # overflow, as Go refuses it
        part = whole * unit
        if m[2]:
            fraction, scale = _leading_fraction(m[2])
            # as Go: the fraction in floating point, truncated, per part
            part += int(float(fraction) * (unit / scale))
        total += part
        if total > _MAX_NANOS + negative:
            return None
        s = s[m.end() :]
    return -total if negative else total


def _leading_fraction(digits: str) -> tuple[int, float]:
    """Go's leadingFraction: the digits as an integer and their scale, taken while they fit
    in an int64 (the rest ignored)."""
    x, scale = 0, 1.0
    for c in digits:
        if x > _MAX_NANOS // 10:
            break
        y = x * 10 + int(c)
        if y > 1 << 63:
            break
        x, scale = y, scale * 10
    return x, scale


def _strfmt_duration(text: str) -> int | None:
    total, found = 0, False
    for _, number, raw_unit in _STRFMT_PART.findall(text):
        if int(number) > _MAX_NANOS:
            return None  # Go's Atoi fails on it
        unit = raw_unit.strip().lower()
        for variants, nanos in _STRFMT_UNITS:
            last = len(variants) - 1
            for i, variant in enumerate(variants):
                if (i == last and unit.startswith(variant)) or unit == variant.lower():
                    total += int(number) * nanos
                    found = True
    if not found or total > _MAX_NANOS:
        return None  # (Go would wrap around: no duration it means)
    return total
