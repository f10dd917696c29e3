"""Drill reports: what a failover drill recorded, turned into measurements and rendered.

Layer: dr. Pure: no I/O, no clocks. The inputs are plain records (client operations through the
gate, timeline events, the API replicas' own write journals, the set of objects present after the
drill); the outputs are numbers (`summarize` -> `DrillResult`, `aggregate`) and strings
(`render_table`, `render_json`, `render_html`, `render_aggregate_table`). Writing files and
printing is the caller's job.

Clocks: `Operation` and `Event` times are seconds since drill start on the drill process's
monotonic clock; `ServerWrite` times are wall-clock (`time.time()`) on the API replicas. The two are
never compared with each other.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FIGURES",
    "PHASES",
    "DrillResult",
    "Event",
    "Operation",
    "ServerWrite",
    "aggregate",
    "epoch_order_violations",
    "errors_by_kind",
    "gaps",
    "longest_gap",
    "lost_writes",
    "phases",
    "render_aggregate_table",
    "render_html",
    "render_json",
    "render_table",
    "summarize",
]

# The phases of a failover, in order, and the events that bound them.
PHASES: tuple[tuple[str, str, str], ...] = (
    ("detection", "fault", "detected"),
    ("agreement", "detected", "agreed"),
    ("switch", "agreed", "committed"),
    ("fence_wait", "committed", "unfenced"),
)
PHASE_NAMES: tuple[str, ...] = (*(p[0] for p in PHASES), "reconnect")

# Figures `aggregate` reports, in order; every one is "larger is worse".
FIGURES: tuple[str, ...] = (
    *PHASE_NAMES,
    "longest_write_gap",
    "longest_read_gap",
    "errors",
    "lost_writes",
    "epoch_order_violations",
)

_LABELS: dict[str, str] = {
    "detection": "detection",
    "agreement": "agreement",
    "switch": "switch",
    "fence_wait": "fence wait",
    "reconnect": "reconnect",
    "longest_write_gap": "longest write gap",
    "longest_read_gap": "longest read gap",
    "errors": "errors",
    "lost_writes": "acknowledged writes lost",
    "epoch_order_violations": "epoch-order violations",
}
_SECONDS_FIGURES = frozenset({*PHASE_NAMES, "longest_write_gap", "longest_read_gap"})


# --------------------------------------------------------------------------------------- inputs


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    return None if v is None else str(v)


def _opt_int(d: Mapping[str, Any], key: str) -> int | None:
    v = d.get(key)
    return None if v is None else int(v)


@dataclass(frozen=True)
class Operation:
    """One client operation through the gate, as the drill's load generator saw it."""

    kind: str  # "write" or "read"
    key: str  # object name written or read
    invoked: float  # seconds since drill start (drill process, monotonic)
    returned: float
    ok: bool
    error: str | None = None  # "connect", "timeout", "reset", "http-503", ... when not ok
    status: int | None = None  # HTTP status, if there was a response
    region: str | None = None  # response header X-Haplane-Region
    epoch: int | None = None  # response header X-Haplane-Epoch
    gate: str | None = None  # the gate address used

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "invoked": self.invoked,
            "returned": self.returned,
            "ok": self.ok,
            "error": self.error,
            "status": self.status,
            "region": self.region,
            "epoch": self.epoch,
            "gate": self.gate,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Operation:
        return cls(
            kind=str(d["kind"]),
            key=str(d["key"]),
            invoked=float(d["invoked"]),
            returned=float(d["returned"]),
            ok=bool(d["ok"]),
            error=_opt_str(d, "error"),
            status=_opt_int(d, "status"),
            region=_opt_str(d, "region"),
            epoch=_opt_int(d, "epoch"),
            gate=_opt_str(d, "gate"),
        )


@dataclass(frozen=True)
class Event:
    """A marker on the drill's timeline ("fault", "detected", "agreed", "committed", ...)."""

    t: float  # seconds since drill start (drill process, monotonic)
    name: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.t, "name": self.name, "detail": self.detail}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        return cls(t=float(d["t"]), name=str(d["name"]), detail=str(d.get("detail") or ""))


@dataclass(frozen=True)
class ServerWrite:
    """One acknowledged write from an API replica's own write journal."""

    region: str
    epoch: int
    key: str
    revision: int
    sent: float  # wall clock when the replica sent the etcd txn
    acked: float  # wall clock when etcd answered success

    def to_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "epoch": self.epoch,
            "key": self.key,
            "revision": self.revision,
            "sent": self.sent,
            "acked": self.acked,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServerWrite:
        return cls(
            region=str(d["region"]),
            epoch=int(d["epoch"]),
            key=str(d["key"]),
            revision=int(d["revision"]),
            sent=float(d["sent"]),
            acked=float(d["acked"]),
        )


# --------------------------------------------------------------------------------- measurements


def gaps(ops: Iterable[Operation], kind: str = "write") -> list[tuple[float, float]]:
    """Client-visible gaps for operations of `kind`: maximal intervals during which they failed.

    Operations are taken in order of `invoked`. A gap starts at the `invoked` time of the first
    failed operation after a success (or of the first operation, if it failed) and ends at the
    `returned` time of the next successful operation. A gap still open after the last operation
    ends at the latest `returned` time of any operation of that kind.
    """
    mine = sorted((o for o in ops if o.kind == kind), key=lambda o: (o.invoked, o.returned))
    out: list[tuple[float, float]] = []
    start: float | None = None
    for op in mine:
        if not op.ok:
            if start is None:
                start = op.invoked
        elif start is not None:
            out.append((start, max(start, op.returned)))
            start = None
    if start is not None:
        out.append((start, max(start, max(o.returned for o in mine))))
    return out


def longest_gap(ops: Iterable[Operation], kind: str = "write") -> float:
    """The longest client-visible gap for `kind`, in seconds; 0.0 when there is none."""
    return max((end - start for start, end in gaps(ops, kind)), default=0.0)


def errors_by_kind(ops: Iterable[Operation]) -> dict[str, int]:
    """Failed operations counted by error kind (sorted by kind); "unknown" when none was given."""
    counts: dict[str, int] = {}
    for op in ops:
        if not op.ok:
            k = op.error or "unknown"
            counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items()))


def _first_events(events: Iterable[Event]) -> dict[str, float]:
    """The time of the first occurrence of each event name."""
    first: dict[str, float] = {}
    for e in sorted(events, key=lambda e: e.t):
        first.setdefault(e.name, e.t)
    return first


def phases(events: Iterable[Event], ops: Iterable[Operation]) -> dict[str, float | None]:
    """The failover's phases in seconds, from the first occurrence of each event.

    detection = detected - fault; agreement = agreed - detected; switch = committed - agreed;
    fence_wait = unfenced - committed; reconnect = the `returned` time of the first successful
    write that returned at or after `unfenced`, minus `unfenced`. A phase is None when an event it
    needs is missing (or, for reconnect, when no write succeeded after `unfenced`).
    """
    at = _first_events(events)
    out: dict[str, float | None] = {}
    for name, begin, end in PHASES:
        out[name] = at[end] - at[begin] if begin in at and end in at else None
    reconnect: float | None = None
    if "unfenced" in at:
        unfenced = at["unfenced"]
        first_ok = min(
            (o.returned for o in ops if o.kind == "write" and o.ok and o.returned >= unfenced),
            default=None,
        )
        if first_ok is not None:
            reconnect = first_ok - unfenced
    out["reconnect"] = reconnect
    return out


def lost_writes(ops: Iterable[Operation], present: AbstractSet[tuple[str, str]]) -> list[Operation]:
    """Acknowledged writes whose (region, key) is not in `present`, in order of `invoked`.

    A write acknowledged without a region header is looked up as region "" (so it counts as lost
    unless the caller put ("", key) in `present`): nothing proves it survived.
    """
    lost = [o for o in ops if o.kind == "write" and o.ok and (o.region or "", o.key) not in present]
    return sorted(lost, key=lambda o: (o.invoked, o.returned))


def epoch_order_violations(writes: Iterable[ServerWrite]) -> list[str]:
    """Check that no write of an older epoch commits after the first write of a newer epoch.

    For every epoch e, every write of an epoch below e must be acked before the earliest `sent`
    of the writes of epoch e. One message per offending write (naming the newer epochs whose first
    send it overlaps), then one per epoch written by more than one region. Empty list = holds.
    """
    ws = list(writes)
    first_sent: dict[int, float] = {}
    regions: dict[int, set[str]] = {}
    for w in ws:
        first_sent[w.epoch] = min(first_sent.get(w.epoch, math.inf), w.sent)
        regions.setdefault(w.epoch, set()).add(w.region)
    epochs = sorted(first_sent)
    out: list[str] = []
    for w in sorted(ws, key=lambda w: (w.acked, w.epoch, w.region, w.key)):
        newer = [e for e in epochs if e > w.epoch and w.acked >= first_sent[e]]
        if not newer:
            continue
        e = newer[0]
        by_ms = (w.acked - first_sent[e]) * 1000.0
        others = "" if len(newer) == 1 else f" (also epochs {', '.join(map(str, newer[1:]))})"
        out.append(
            f"epoch {w.epoch} write {w.key!r} by {w.region} (revision {w.revision}) acked "
            f"{by_ms:.3f} ms after the first epoch {e} write was sent{others}"
        )
    for e in epochs:
        if len(regions[e]) > 1:
            out.append(
                f"epoch {e} written by more than one region: {', '.join(sorted(regions[e]))}"
            )
    return out


# ---------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class DrillResult:
    """Everything measured from one drill run, plus what was measured (for the timeline)."""

    scenario: str
    phases: dict[str, float | None]
    write_gaps: tuple[tuple[float, float], ...]
    read_gaps: tuple[tuple[float, float], ...]
    longest_write_gap: float
    longest_read_gap: float
    errors_by_kind: dict[str, int]
    lost_writes: tuple[Operation, ...]
    epoch_order_violations: tuple[str, ...]
    ops_total: dict[str, int]  # per kind
    ops_ok: dict[str, int]  # per kind
    regions: tuple[str, ...]  # seen in responses and server journals
    epochs: tuple[int, ...]  # seen in responses and server journals
    server_writes: int  # journal entries checked for epoch order
    meta: dict[str, Any] = field(default_factory=dict)  # settings, machine, ...
    operations: tuple[Operation, ...] = ()
    events: tuple[Event, ...] = ()

    @property
    def errors(self) -> int:
        return sum(self.errors_by_kind.values())

    def figures(self) -> dict[str, float | None]:
        """The headline figures, by name (see `FIGURES`)."""
        out: dict[str, float | None] = {n: self.phases.get(n) for n in PHASE_NAMES}
        out["longest_write_gap"] = self.longest_write_gap
        out["longest_read_gap"] = self.longest_read_gap
        out["errors"] = float(self.errors)
        out["lost_writes"] = float(len(self.lost_writes))
        out["epoch_order_violations"] = float(len(self.epoch_order_violations))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "phases": dict(self.phases),
            "write_gaps": [list(g) for g in self.write_gaps],
            "read_gaps": [list(g) for g in self.read_gaps],
            "longest_write_gap": self.longest_write_gap,
            "longest_read_gap": self.longest_read_gap,
            "errors_by_kind": dict(self.errors_by_kind),
            "lost_writes": [o.to_dict() for o in self.lost_writes],
            "epoch_order_violations": list(self.epoch_order_violations),
            "ops_total": dict(self.ops_total),
            "ops_ok": dict(self.ops_ok),
            "regions": list(self.regions),
            "epochs": list(self.epochs),
            "server_writes": self.server_writes,
            "meta": dict(self.meta),
            "operations": [o.to_dict() for o in self.operations],
            "events": [e.to_dict() for e in self.events],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DrillResult:
        def opt_float(v: Any) -> float | None:
            return None if v is None else float(v)

        def gap_list(v: Iterable[Sequence[Any]]) -> tuple[tuple[float, float], ...]:
            return tuple((float(a), float(b)) for a, b in v)

        return cls(
            scenario=str(d["scenario"]),
            phases={str(k): opt_float(v) for k, v in d["phases"].items()},
            write_gaps=gap_list(d["write_gaps"]),
            read_gaps=gap_list(d["read_gaps"]),
            longest_write_gap=float(d["longest_write_gap"]),
            longest_read_gap=float(d["longest_read_gap"]),
            errors_by_kind={str(k): int(v) for k, v in d["errors_by_kind"].items()},
            lost_writes=tuple(Operation.from_dict(o) for o in d["lost_writes"]),
            epoch_order_violations=tuple(str(s) for s in d["epoch_order_violations"]),
            ops_total={str(k): int(v) for k, v in d["ops_total"].items()},
            ops_ok={str(k): int(v) for k, v in d["ops_ok"].items()},
            regions=tuple(str(r) for r in d["regions"]),
            epochs=tuple(int(e) for e in d["epochs"]),
            server_writes=int(d["server_writes"]),
            meta=dict(d.get("meta") or {}),
            operations=tuple(Operation.from_dict(o) for o in d.get("operations") or ()),
            events=tuple(Event.from_dict(e) for e in d.get("events") or ()),
        )


def summarize(
    scenario: str,
    ops: Iterable[Operation],
    events: Iterable[Event],
    writes: Iterable[ServerWrite],
    present: AbstractSet[tuple[str, str]],
    meta: Mapping[str, Any] | None = None,
) -> DrillResult:
    """Measure one drill run: phases, gaps, errors, lost writes, epoch order, counts."""
    op_list = sorted(ops, key=lambda o: (o.invoked, o.returned))
    ev_list = sorted(events, key=lambda e: e.t)
    w_list = list(writes)
    total: dict[str, int] = {"write": 0, "read": 0}
    ok: dict[str, int] = {"write": 0, "read": 0}
    for o in op_list:
        total[o.kind] = total.get(o.kind, 0) + 1
        ok[o.kind] = ok.get(o.kind, 0) + (1 if o.ok else 0)
    regions = {o.region for o in op_list if o.region is not None} | {w.region for w in w_list}
    epochs = {o.epoch for o in op_list if o.epoch is not None} | {w.epoch for w in w_list}
    return DrillResult(
        scenario=scenario,
        phases=phases(ev_list, op_list),
        write_gaps=tuple(gaps(op_list, "write")),
        read_gaps=tuple(gaps(op_list, "read")),
        longest_write_gap=longest_gap(op_list, "write"),
        longest_read_gap=longest_gap(op_list, "read"),
        errors_by_kind=errors_by_kind(op_list),
        lost_writes=tuple(lost_writes(op_list, present)),
        epoch_order_violations=tuple(epoch_order_violations(w_list)),
        ops_total=total,
        ops_ok=ok,
        regions=tuple(sorted(regions)),
        epochs=tuple(sorted(epochs)),
        server_writes=len(w_list),
        meta=dict(meta or {}),
        operations=tuple(op_list),
        events=tuple(ev_list),
    )


# ------------------------------------------------------------------------------------ rendering


def _fmt_seconds(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) < 1.0:
        return f"{v * 1000.0:.1f} ms"
    return f"{v:.3f} s"


def _fmt_figure(name: str, v: float | None) -> str:
    if name in _SECONDS_FIGURES:
        return _fmt_seconds(v)
    if v is None:
        return "-"
    return f"{v:g}"


def _fmt_errors(counts: Mapping[str, int]) -> str:
    return " ".join(f"{k}={n}" for k, n in counts.items()) or "none"


def _align(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def _table_rows(result: DrillResult) -> list[tuple[str, str]]:
    f = result.figures()
    rows = [(_LABELS[n], _fmt_seconds(f[n])) for n in (*PHASE_NAMES, "longest_write_gap")]
    rows.append((_LABELS["longest_read_gap"], _fmt_seconds(f["longest_read_gap"])))
    rows.append(("errors by kind", _fmt_errors(result.errors_by_kind)))
    rows.append((_LABELS["lost_writes"], str(len(result.lost_writes))))
    rows.append((_LABELS["epoch_order_violations"], str(len(result.epoch_order_violations))))
    return rows


def _ops_line(result: DrillResult) -> str:
    parts = [f"{k} {result.ops_ok.get(k, 0)}/{n} ok" for k, n in sorted(result.ops_total.items())]
    return ", ".join(parts)


def render_table(result: DrillResult) -> str:
    """The headline figures as a plain-text table with aligned columns."""
    head = [
        f"scenario: {result.scenario}",
        f"operations: {_ops_line(result)}",
        f"regions: {', '.join(result.regions) or '-'}   "
        f"epochs: {', '.join(map(str, result.epochs)) or '-'}",
        "",
    ]
    table = _align([("FIGURE", "VALUE"), *_table_rows(result)])
    tail = [f"  {m}" for m in result.epoch_order_violations]
    return "\n".join(head) + table + ("\n".join(tail) + "\n" if tail else "")


def render_json(result: DrillResult) -> str:
    """The whole result as JSON (`DrillResult.from_dict(json.loads(...))` reads it back)."""
    return json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str) + "\n"


# Distinct, colour-blind-friendly region colours; red is reserved for errors.
_REGION_COLOURS = (
    "#1f77b4",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
)
_ERROR_COLOUR = "#d62728"
_UNKNOWN_COLOUR = "#7f7f7f"


def _nice_step(span: float, target: int = 10) -> float:
    if span <= 0:
        return 1.0
    raw = span / target
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 5.0, 10.0):
        if raw <= m * mag:
            return m * mag
    return 10.0 * mag


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _timeline_svg(result: DrillResult) -> str:
    ops, events = result.operations, result.events
    times = [0.0, *(o.invoked for o in ops), *(o.returned for o in ops), *(e.t for e in events)]
    t0, t1 = min(times), max(times)
    if t1 <= t0:
        t1 = t0 + 1.0
    width, left, right = 1100.0, 70.0, 20.0
    top = 30.0 + 14.0 * 3  # room for staggered event labels
    row_h, row_gap = 28.0, 14.0
    rows = {"write": top, "read": top + row_h + row_gap}
    bottom = top + 2 * row_h + row_gap
    height = bottom + 40.0
    plot_w = width - left - right

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * plot_w

    colour = {r: _REGION_COLOURS[i % len(_REGION_COLOURS)] for i, r in enumerate(result.regions)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="11">',
        f'<rect x="{left}" y="{top - 4}" width="{plot_w}" height="{bottom - top + 8}" '
        'fill="#fafafa" stroke="#ccc"/>',
    ]
    # Gaps, shaded behind the marks of their row.
    for kind, gs in (("write", result.write_gaps), ("read", result.read_gaps)):
        y = rows[kind]
        for a, b in gs:
            parts.append(
                f'<rect class="gap" x="{x(a):.2f}" y="{y:.2f}" width="{max(x(b) - x(a), 1.0):.2f}" '
                f'height="{row_h:.2f}" fill="{_ERROR_COLOUR}" fill-opacity="0.15">'
                f"<title>{_e(kind)} gap {_e(_fmt_seconds(b - a))} ({a:.3f}-{b:.3f} s)</title>"
                "</rect>"
            )
    # Row labels.
    for kind, y in rows.items():
        parts.append(
            f'<text x="{left - 8}" y="{y + row_h / 2 + 4:.2f}" text-anchor="end">{kind}s</text>'
        )
    # Axis with ticks.
    step = _nice_step(t1 - t0)
    tick = math.ceil(t0 / step) * step
    while tick <= t1 + 1e-9:
        tx = x(tick)
        parts.append(
            f'<line x1="{tx:.2f}" y1="{bottom + 4:.2f}" x2="{tx:.2f}" y2="{bottom + 9:.2f}" '
            'stroke="#666"/>'
            f'<text x="{tx:.2f}" y="{bottom + 21:.2f}" text-anchor="middle">{tick:g}</text>'
        )
        tick += step
    parts.append(
        f'<text x="{left + plot_w / 2:.2f}" y="{bottom + 36:.2f}" text-anchor="middle">'
        "time since drill start (s)</text>"
    )
    # Operations: a short bar from invoked to returned, coloured by outcome.
    for o in ops:
        if o.kind not in rows:
            continue
        fill = _ERROR_COLOUR if not o.ok else colour.get(o.region or "", _UNKNOWN_COLOUR)
        y = rows[o.kind] + (4.0 if o.ok else row_h / 2)
        what = "ok" if o.ok else f"error {o.error or 'unknown'}"
        tip = (
            f"{o.kind} {o.key} {what} status={o.status} region={o.region} epoch={o.epoch} "
            f"gate={o.gate} {o.invoked:.3f}-{o.returned:.3f} s"
        )
        parts.append(
            f'<rect class="op" x="{x(o.invoked):.2f}" y="{y:.2f}" '
            f'width="{max(x(o.returned) - x(o.invoked), 1.5):.2f}" height="{row_h / 2 - 4:.2f}" '
            f'fill="{fill}"><title>{_e(tip)}</title></rect>'
        )
    # Events: labelled vertical lines, labels staggered over three lines.
    for i, ev in enumerate(events):
        ex = x(ev.t)
        ly = 14.0 + 14.0 * (i % 3)
        tip = f"{ev.name} at {ev.t:.3f} s" + (f": {ev.detail}" if ev.detail else "")
        parts.append(
            f'<g class="event"><title>{_e(tip)}</title>'
            f'<line x1="{ex:.2f}" y1="{ly + 3:.2f}" x2="{ex:.2f}" y2="{bottom + 4:.2f}" '
            'stroke="#333" stroke-dasharray="3,2"/>'
            f'<text x="{ex + 2:.2f}" y="{ly:.2f}">{_e(ev.name)}</text></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _legend(result: DrillResult) -> str:
    items = [
        (_REGION_COLOURS[i % len(_REGION_COLOURS)], f"ok, served by {r}")
        for i, r in enumerate(result.regions)
    ]
    items += [(_UNKNOWN_COLOUR, "ok, region unknown"), (_ERROR_COLOUR, "error")]
    spans = [
        f'<span class="key"><span class="swatch" style="background:{c}"></span>{_e(label)}</span>'
        for c, label in items
    ]
    spans.append('<span class="key"><span class="swatch gapkey"></span>client-visible gap</span>')
    return '<p class="legend">' + " ".join(spans) + "</p>"


def _html_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
th { background: #f0f0f0; }
.legend .key { margin-right: 1.2em; white-space: nowrap; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em;
  vertical-align: middle; }
.gapkey { background: rgba(214, 39, 40, 0.15); border: 1px solid #d62728; }
"""


def render_html(result: DrillResult) -> str:
    """A self-contained HTML page: the figures, a timeline (inline SVG), events and findings."""
    title = f"haplane drill: {result.scenario}"
    sections = [
        f"<h1>{_e(title)}</h1>",
        f"<p>Operations: {_e(_ops_line(result))}. Regions: {_e(', '.join(result.regions) or '-')}."
        f" Epochs: {_e(', '.join(map(str, result.epochs)) or '-')}."
        f" Server journal entries: {result.server_writes}.</p>",
        "<h2>Figures</h2>",
        _html_table(("figure", "value"), _table_rows(result)),
        "<h2>Timeline</h2>",
        _legend(result),
        _timeline_svg(result),
        "<h2>Events</h2>",
        _html_table(
            ("t (s)", "event", "detail"), ((f"{e.t:.3f}", e.name, e.detail) for e in result.events)
        ),
    ]
    if result.epoch_order_violations:
        sections.append("<h2>Epoch-order violations</h2><ul>")
        sections += [f"<li>{_e(m)}</li>" for m in result.epoch_order_violations]
        sections.append("</ul>")
    if result.lost_writes:
        sections.append("<h2>Acknowledged writes lost</h2>")
        sections.append(
            _html_table(
                ("key", "region", "epoch", "invoked (s)", "returned (s)", "gate"),
                (
                    (
                        o.key,
                        o.region or "-",
                        o.epoch,
                        f"{o.invoked:.3f}",
                        f"{o.returned:.3f}",
                        o.gate,
                    )
                    for o in result.lost_writes
                ),
            )
        )
    if result.meta:
        sections.append("<h2>Settings and machine</h2>")
        sections.append(
            _html_table(
                ("key", "value"),
                (
                    (k, json.dumps(v, sort_keys=True, default=str))
                    for k, v in sorted(result.meta.items())
                ),
            )
        )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


# ------------------------------------------------------------------------------------ aggregate


def _median_worst(values: Sequence[float | None]) -> dict[str, float | int | None]:
    present = [v for v in values if v is not None]
    return {
        "median": statistics.median(present) if present else None,
        "worst": max(present) if present else None,
        "runs": len(present),
    }


def aggregate(results: Sequence[DrillResult]) -> dict[str, Any]:
    """Median and worst (max) of each headline figure over repeated runs of a scenario.

    Returns {"runs", "scenarios", "figures": {name: {"median", "worst", "runs"}},
    "errors_by_kind": {kind: {...}}}; "runs" inside a figure counts the runs that had it (a phase
    is missing from a run whose events were incomplete). Error kinds absent from a run count 0.
    """
    figs = [r.figures() for r in results]
    kinds = sorted({k for r in results for k in r.errors_by_kind})
    return {
        "runs": len(results),
        "scenarios": sorted({r.scenario for r in results}),
        "figures": {n: _median_worst([f[n] for f in figs]) for n in FIGURES},
        "errors_by_kind": {
            k: _median_worst([float(r.errors_by_kind.get(k, 0)) for r in results]) for k in kinds
        },
    }


def render_aggregate_table(agg: Mapping[str, Any]) -> str:
    """`aggregate`'s figures as a plain-text table: figure, median, worst, runs that had it."""
    scenarios = ", ".join(agg.get("scenarios", [])) or "-"
    rows: list[tuple[str, str, str, str]] = [("FIGURE", "MEDIAN", "WORST", "RUNS")]
    for name, s in agg["figures"].items():
        rows.append(
            (
                _LABELS.get(name, name),
                _fmt_figure(name, s["median"]),
                _fmt_figure(name, s["worst"]),
                str(s["runs"]),
            )
        )
    for kind, s in agg.get("errors_by_kind", {}).items():
        rows.append(
            (
                f"  errors {kind}",
                _fmt_figure("errors", s["median"]),
                _fmt_figure("errors", s["worst"]),
                str(s["runs"]),
            )
        )
    return f"scenario: {scenarios}   runs: {agg['runs']}\n\n" + _align(rows)
