"""Drill reports: what a failover drill recorded, turned into measurements and rendered.

Layer: dr. Pure: no I/O, no clocks. The inputs are plain records (client operations through the
gate, timeline events, the API replicas' own write journals, what the drill read back afterwards,
what the scenario expected of the global record); the outputs are numbers (`summarize` ->
`DrillResult`, `aggregate`), the verdict (`verdict`: what makes the drill fail) and strings
(`render_table`, `render_json`, `render_html`, `render_aggregate_table`). Writing files and
printing is the caller's job.

The client's operations, by kind: "write" creates a new object, "read" gets the `default`
namespace, "update" writes one of a few long-lived keys with a `resourceVersion` precondition
(or creates it where the serving region has none) and a counter that grows with every update,
"get" reads one of those keys. The counter orders values: a read showing a smaller one is older.

Read-back: a mapping `(place, key) -> counter` (None for an object without a counter) of what
was there after the drill. The drill reads back through the gate, from wherever it now leads
(what a client sees), and files each key under every region (the data follows the active region:
a write acknowledged anywhere must be readable there). Lost writes, lost updates and stale reads
are judged per (region, key) against it. After an unplanned failover, a loss above the cut is
the RPO, reported apart and tolerated (`haplane.dr.rpo`); every other loss fails the drill.

Clocks: `Operation` and `Event` times are seconds since drill start on the drill process's
monotonic clock; `ServerWrite` times are wall-clock (`time.time()`) on the API replicas. The two are
never compared with each other.
"""

from __future__ import annotations

import bisect
import html
import json
import math
import statistics
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FIGURES",
    "FINDINGS",
    "PHASES",
    "DrillResult",
    "Event",
    "Expectation",
    "Operation",
    "ServerWrite",
    "acked_not_journaled",
    "aggregate",
    "epoch_order_violations",
    "errors_by_kind",
    "expected_conflicts",
    "gaps",
    "is_expected_conflict",
    "journaled_not_invoked",
    "longest_gap",
    "lost_updates",
    "lost_writes",
    "phases",
    "render_aggregate_table",
    "render_html",
    "render_json",
    "render_table",
    "stale_reads",
    "summarize",
    "verdict",
]

# The phases of a failover, in order, and the events that bound them.
PHASES: tuple[tuple[str, str, str], ...] = (
    ("detection", "fault", "detected"),
    ("agreement", "detected", "agreed"),
    ("switch", "agreed", "committed"),
    ("fence_wait", "committed", "unfenced"),
)
PHASE_NAMES: tuple[str, ...] = (*(p[0] for p in PHASES), "reconnect")

# Kinds of operation that write (and are journaled when acknowledged).
WRITE_KINDS = frozenset({"write", "update"})

# `DrillResult` fields that list what a check found; the length of each is a figure.
FINDINGS: tuple[str, ...] = (
    "expected_conflicts",
    "lost_writes",
    "lost_updates",
    "lost_above_cut",
    "stale_reads",
    "acked_not_journaled",
    "journaled_not_invoked",
    "epoch_order_violations",
)

# Figures `aggregate` reports, in order; its "worst" is the largest.
FIGURES: tuple[str, ...] = (
    *PHASE_NAMES,
    "longest_write_gap",
    "longest_read_gap",
    "lag_at_cut",
    "errors",
    *FINDINGS,
)

_LABELS: dict[str, str] = {
    "detection": "detection",
    "agreement": "agreement",
    "switch": "switch",
    "fence_wait": "fence wait",
    "reconnect": "reconnect",
    "longest_write_gap": "longest write gap",
    "longest_read_gap": "longest read gap",
    "lag_at_cut": "lag at the cut (unplanned)",
    "errors": "errors",
    "expected_conflicts": "expected 409/404 (epoch changed)",
    "lost_writes": "acknowledged writes lost",
    "lost_updates": "acknowledged updates lost",
    "lost_above_cut": "lost above the cut (RPO)",
    "stale_reads": "stale reads",
    "acked_not_journaled": "acknowledged, not journaled",
    "journaled_not_invoked": "journaled, never invoked",
    "epoch_order_violations": "epoch-order violations",
}
_SECONDS_FIGURES = frozenset({*PHASE_NAMES, "longest_write_gap", "longest_read_gap", "lag_at_cut"})


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

    kind: str  # "write", "read", "update" or "get" (see the module docstring)
    key: str  # object name written or read
    invoked: float  # seconds since drill start (drill process, monotonic)
    returned: float
    ok: bool  # acknowledged; for a "get", answered (404 too: the key is absent there)
    error: str | None = None  # "connect", "timeout", "reset", "http-503", ... when not ok
    status: int | None = None  # HTTP status, if there was a response
    region: str | None = None  # response header X-Haplane-Region
    epoch: int | None = None  # response header X-Haplane-Epoch
    gate: str | None = None  # the gate address used
    value: int | None = None  # update: the counter written; get: the counter read (None: absent)
    revision: int | None = None  # etcd revision of the resourceVersion in the response
    # update: the region and epoch of the version (or of the absence) the update was based on
    basis_region: str | None = None
    basis_epoch: int | None = None
    message: str | None = None  # a refusal's Status message (first 300 characters)
    # the client loop that made it ("write", "read", "update", "get"): the update loop's
    # reads of a key it does not know are kind "get" (None: a report older than the field)
    loop: str | None = None

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
            "value": self.value,
            "revision": self.revision,
            "basis_region": self.basis_region,
            "basis_epoch": self.basis_epoch,
            "message": self.message,
            "loop": self.loop,
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
            value=_opt_int(d, "value"),
            revision=_opt_int(d, "revision"),
            basis_region=_opt_str(d, "basis_region"),
            basis_epoch=_opt_int(d, "basis_epoch"),
            message=_opt_str(d, "message"),
            loop=_opt_str(d, "loop"),
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


@dataclass(frozen=True)
class Expectation:
    """What the scenario expects of the global record, and the record as the drill read it."""

    failover: bool  # the scenario must fail over (else: it must not)
    epoch_before: int
    epoch_after: int | None  # None: the record could not be read after the drill
    writable_after: bool = False
    since_change_at_fault: float | None = None  # seconds from the last change to the fault
    min_interval: float | None = None  # the controller's minIntervalMs, in seconds

    @property
    def failed_over(self) -> bool:
        return self.epoch_after is not None and self.epoch_after > self.epoch_before

    def to_dict(self) -> dict[str, Any]:
        return {
            "failover": self.failover,
            "epoch_before": self.epoch_before,
            "epoch_after": self.epoch_after,
            "writable_after": self.writable_after,
            "since_change_at_fault": self.since_change_at_fault,
            "min_interval": self.min_interval,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Expectation:
        def opt_float(key: str) -> float | None:
            v = d.get(key)
            return None if v is None else float(v)

        return cls(
            failover=bool(d["failover"]),
            epoch_before=int(d["epoch_before"]),
            epoch_after=_opt_int(d, "epoch_after"),
            writable_after=bool(d.get("writable_after")),
            since_change_at_fault=opt_float("since_change_at_fault"),
            min_interval=opt_float("min_interval"),
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


def is_expected_conflict(op: Operation) -> bool:
    """An update refused because the version it was based on came from another region or an
    earlier epoch: 409 Conflict (a version of another region or epoch), or 404 Not Found from
    a region other than the one the version came from (no replication between regions yet).
    The client re-reads and goes on: expected after an epoch change, so no error."""
    return (
        op.kind == "update"
        and op.status in (404, 409)
        and op.basis_epoch is not None
        and op.epoch is not None
        and (op.basis_region, op.basis_epoch) != (op.region, op.epoch)
    )


def expected_conflicts(ops: Iterable[Operation]) -> list[Operation]:
    """The updates `is_expected_conflict` accepts, in order of `invoked`."""
    return sorted((o for o in ops if is_expected_conflict(o)), key=lambda o: o.invoked)


def errors_by_kind(ops: Iterable[Operation]) -> dict[str, int]:
    """Failed operations counted by error kind (sorted by kind); "unknown" when none was given.
    Expected conflicts (`is_expected_conflict`) are no error."""
    counts: dict[str, int] = {}
    for op in ops:
        if not op.ok and not is_expected_conflict(op):
            k = op.error or "unknown"
            counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items()))


def _first_events(events: Iterable[Event]) -> dict[str, float]:
    """The time of the first occurrence of each event name."""
    first: dict[str, float] = {}
    for e in sorted(events, key=lambda e: e.t):
        first.setdefault(e.name, e.t)
    return first


def phases(
    events: Iterable[Event], ops: Iterable[Operation], epoch: int | None = None
) -> dict[str, float | None]:
    """The failover's phases in seconds, from the first occurrence of each event.

    detection = detected - fault; agreement = agreed - detected; switch = committed - agreed;
    fence_wait = unfenced - committed; reconnect = the `returned` time of the first successful
    write (of `epoch` or a later one, when given) that returned at or after `unfenced`, minus
    `unfenced`. A phase is None when an event it needs is missing (or, for reconnect, when no
    such write succeeded after `unfenced`).
    """
    at = _first_events(events)
    out: dict[str, float | None] = {}
    for name, begin, end in PHASES:
        out[name] = at[end] - at[begin] if begin in at and end in at else None
    reconnect: float | None = None
    if "unfenced" in at:
        unfenced = at["unfenced"]
        first_ok = min(
            (
                o.returned
                for o in ops
                if o.kind == "write"
                and o.ok
                and o.returned >= unfenced
                and (epoch is None or (o.epoch is not None and o.epoch >= epoch))
            ),
            default=None,
        )
        if first_ok is not None:
            reconnect = first_ok - unfenced
    out["reconnect"] = reconnect
    return out


def _place(op: Operation) -> tuple[str, str]:
    """Where the read-back looks for what `op` wrote or read: (region that answered, key). A
    write acknowledged without a region header is looked up as region "" (so it counts as lost
    unless the caller read back ("", key)): nothing proves it survived."""
    return (op.region or "", op.key)


def lost_writes(ops: Iterable[Operation], present: Container[tuple[str, str]]) -> list[Operation]:
    """Acknowledged writes whose (region, key) is not in `present` (a read-back, or just the set
    of its keys), in order of `invoked`."""
    lost = [o for o in ops if o.kind == "write" and o.ok and _place(o) not in present]
    return sorted(lost, key=lambda o: (o.invoked, o.returned))


def _acked_updates(ops: Iterable[Operation]) -> list[tuple[Operation, int]]:
    return [(o, o.value) for o in ops if o.kind == "update" and o.ok and o.value is not None]


def lost_updates(
    ops: Iterable[Operation], read_back: Mapping[tuple[str, str], int | None]
) -> list[Operation]:
    """Acknowledged updates whose value is not there afterwards, in order of `invoked`.

    Per (region, key), the acknowledged update with the largest counter is lost when the
    read-back of that key from that region shows a smaller counter, none, or no object. An
    earlier acknowledged update that is not there is explained by that later one (it overwrote
    it), so at most one update per (region, key) counts; a larger counter than any acknowledged
    (an update whose answer was lost, committed after all) is no loss.
    """
    last: dict[tuple[str, str], tuple[Operation, int]] = {}
    for o, value in _acked_updates(ops):
        k = _place(o)
        if k not in last or value > last[k][1]:
            last[k] = (o, value)
    lost = [o for k, (o, value) in last.items() if (read_back.get(k) or 0) < value]
    return sorted(lost, key=lambda o: (o.invoked, o.returned))


def stale_reads(ops: Iterable[Operation]) -> list[Operation]:
    """Answered gets that show an older value than an update of the same key that the same
    region had acknowledged before the get was invoked (a smaller counter, or no object), in
    order of `invoked`. A get invoked before an update's answer returned may show either value.
    """
    op_list = list(ops)
    # per (region, key): acknowledgement times, and the largest counter acknowledged by then
    acked: dict[tuple[str, str], tuple[list[float], list[int]]] = {}
    for o, value in sorted(_acked_updates(op_list), key=lambda p: p[0].returned):
        times, best = acked.setdefault(_place(o), ([], []))
        times.append(o.returned)
        best.append(max(value, best[-1]) if best else value)
    stale = []
    for o in op_list:
        if o.kind != "get" or not o.ok or _place(o) not in acked:
            continue
        times, best = acked[_place(o)]
        i = bisect.bisect_left(times, o.invoked)  # updates acknowledged before the get began
        if i and (o.value if o.value is not None else 0) < best[i - 1]:
            stale.append(o)
    return sorted(stale, key=lambda o: (o.invoked, o.returned))


def _journaled_as(o: Operation, w: ServerWrite) -> bool:
    """Whether `w` can be the journal entry of the acknowledged `o`: the same key, and the same
    region and revision where the answer named them."""
    return (
        w.key == o.key
        and (o.region is None or w.region == o.region)
        and (o.revision is None or w.revision == o.revision)
    )


def acked_not_journaled(ops: Iterable[Operation], writes: Iterable[ServerWrite]) -> list[Operation]:
    """Acknowledged writes and updates with no entry in any replica's write journal, in order
    of `invoked`."""
    journaled: dict[str, list[ServerWrite]] = {}
    for w in writes:
        journaled.setdefault(w.key, []).append(w)
    missing = [
        o
        for o in ops
        if o.kind in WRITE_KINDS
        and o.ok
        and not any(_journaled_as(o, w) for w in journaled.get(o.key, ()))
    ]
    return sorted(missing, key=lambda o: (o.invoked, o.returned))


def journaled_not_invoked(
    ops: Iterable[Operation], writes: Iterable[ServerWrite], key_prefix: str | None = None
) -> list[ServerWrite]:
    """Journal entries of the drill's keys that no client operation explains, oldest first.

    The drill's keys: those starting with `key_prefix` (None: the keys the client wrote). Per
    key, a write or update acknowledged with a revision explains its own entry; every other
    invoked write or update of the key (failed or timed out: it may have committed all the
    same; acknowledged without a revision) explains any one entry. The entries left beyond
    those are reported, the latest ones.
    """
    by_key: dict[str, list[Operation]] = {}
    for o in ops:
        if o.kind in WRITE_KINDS:
            by_key.setdefault(o.key, []).append(o)
    entries: dict[str, list[ServerWrite]] = {}
    for w in writes:
        if w.key.startswith(key_prefix) if key_prefix is not None else w.key in by_key:
            entries.setdefault(w.key, []).append(w)
    out: list[ServerWrite] = []
    for key, ws in entries.items():
        left = sorted(ws, key=lambda w: (w.sent, w.revision))
        spare = 0
        for o in by_key.get(key, ()):
            if o.ok and o.revision is not None:
                hit = next((w for w in left if _journaled_as(o, w)), None)
                if hit is not None:
                    left.remove(hit)
            else:
                spare += 1
        out += left[spare:]
    return sorted(out, key=lambda w: (w.sent, w.key, w.revision))


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
    expectation: Expectation | None = None  # None: no failover rule is checked
    new_epoch_writes: int = 0  # acknowledged writes in the epoch after a failover
    expected_conflicts: tuple[Operation, ...] = ()
    lost_updates: tuple[Operation, ...] = ()
    stale_reads: tuple[Operation, ...] = ()
    acked_not_journaled: tuple[Operation, ...] = ()
    journaled_not_invoked: tuple[ServerWrite, ...] = ()
    final_values: dict[str, dict[str, int]] = field(default_factory=dict)  # region -> key -> n
    # an unplanned failover's cut, and the acknowledged writes and updates lost above it (the
    # RPO: tolerated; see `haplane.dr.rpo`)
    cut: dict[str, Any] | None = None
    lost_above_cut: tuple[Operation, ...] = ()

    @property
    def errors(self) -> int:
        return sum(self.errors_by_kind.values())

    def figures(self) -> dict[str, float | None]:
        """The headline figures, by name (see `FIGURES`)."""
        out: dict[str, float | None] = {n: self.phases.get(n) for n in PHASE_NAMES}
        out["longest_write_gap"] = self.longest_write_gap
        out["longest_read_gap"] = self.longest_read_gap
        lag = (self.cut or {}).get("lagSeconds")
        planned = bool((self.cut or {}).get("planned"))
        out["lag_at_cut"] = float(lag) if isinstance(lag, int | float) and not planned else None
        out["errors"] = float(self.errors)
        for name in FINDINGS:
            out[name] = float(len(getattr(self, name)))
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
            "expectation": self.expectation.to_dict() if self.expectation else None,
            "new_epoch_writes": self.new_epoch_writes,
            "expected_conflicts": [o.to_dict() for o in self.expected_conflicts],
            "lost_updates": [o.to_dict() for o in self.lost_updates],
            "stale_reads": [o.to_dict() for o in self.stale_reads],
            "acked_not_journaled": [o.to_dict() for o in self.acked_not_journaled],
            "journaled_not_invoked": [w.to_dict() for w in self.journaled_not_invoked],
            "final_values": {r: dict(kv) for r, kv in self.final_values.items()},
            "cut": self.cut,
            "lost_above_cut": [o.to_dict() for o in self.lost_above_cut],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DrillResult:
        def opt_float(v: Any) -> float | None:
            return None if v is None else float(v)

        def gap_list(v: Iterable[Sequence[Any]]) -> tuple[tuple[float, float], ...]:
            return tuple((float(a), float(b)) for a, b in v)

        def op_list(name: str) -> tuple[Operation, ...]:  # absent from older reports
            return tuple(Operation.from_dict(o) for o in d.get(name) or ())

        expectation = d.get("expectation")

        return cls(
            scenario=str(d["scenario"]),
            phases={str(k): opt_float(v) for k, v in d["phases"].items()},
            write_gaps=gap_list(d["write_gaps"]),
            read_gaps=gap_list(d["read_gaps"]),
            longest_write_gap=float(d["longest_write_gap"]),
            longest_read_gap=float(d["longest_read_gap"]),
            errors_by_kind={str(k): int(v) for k, v in d["errors_by_kind"].items()},
            lost_writes=op_list("lost_writes"),
            epoch_order_violations=tuple(str(s) for s in d["epoch_order_violations"]),
            ops_total={str(k): int(v) for k, v in d["ops_total"].items()},
            ops_ok={str(k): int(v) for k, v in d["ops_ok"].items()},
            regions=tuple(str(r) for r in d["regions"]),
            epochs=tuple(int(e) for e in d["epochs"]),
            server_writes=int(d["server_writes"]),
            meta=dict(d.get("meta") or {}),
            operations=op_list("operations"),
            events=tuple(Event.from_dict(e) for e in d.get("events") or ()),
            expectation=Expectation.from_dict(expectation) if expectation else None,
            new_epoch_writes=int(d.get("new_epoch_writes") or 0),
            expected_conflicts=op_list("expected_conflicts"),
            lost_updates=op_list("lost_updates"),
            stale_reads=op_list("stale_reads"),
            acked_not_journaled=op_list("acked_not_journaled"),
            journaled_not_invoked=tuple(
                ServerWrite.from_dict(w) for w in d.get("journaled_not_invoked") or ()
            ),
            final_values={
                str(r): {str(k): int(v) for k, v in kv.items()}
                for r, kv in (d.get("final_values") or {}).items()
            },
            cut=d.get("cut"),
            lost_above_cut=op_list("lost_above_cut"),
        )


def summarize(
    scenario: str,
    ops: Iterable[Operation],
    events: Iterable[Event],
    writes: Iterable[ServerWrite],
    read_back: Mapping[tuple[str, str], int | None],
    meta: Mapping[str, Any] | None = None,
    *,
    expectation: Expectation | None = None,
    key_prefix: str | None = None,
    cut: Mapping[str, Any] | None = None,
) -> DrillResult:
    """Measure one drill run: phases, gaps, errors, lost writes and updates, stale reads, the
    journals against the client (both ways), epoch order, counts. `read_back`: what each region
    held afterwards (see the module docstring); `key_prefix`: what names the drill's keys in the
    journals (see `journaled_not_invoked`); `cut`: an unplanned failover's cut, above which a
    loss is the RPO, not a failure (`haplane.dr.rpo`)."""
    from .rpo import split_by_cut

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
    new_epoch = expectation.epoch_after if expectation and expectation.failed_over else None
    lost_w, above_w = split_by_cut(lost_writes(op_list, read_back), w_list, cut)
    lost_u, above_u = split_by_cut(lost_updates(op_list, read_back), w_list, cut)
    final: dict[str, dict[str, int]] = {}
    for (region, key), value in sorted(read_back.items()):
        if value is not None:
            final.setdefault(region, {})[key] = value
    return DrillResult(
        scenario=scenario,
        phases=phases(ev_list, op_list, new_epoch),
        write_gaps=tuple(gaps(op_list, "write")),
        read_gaps=tuple(gaps(op_list, "read")),
        longest_write_gap=longest_gap(op_list, "write"),
        longest_read_gap=longest_gap(op_list, "read"),
        errors_by_kind=errors_by_kind(op_list),
        lost_writes=lost_w,
        epoch_order_violations=tuple(epoch_order_violations(w_list)),
        ops_total=total,
        ops_ok=ok,
        regions=tuple(sorted(regions)),
        epochs=tuple(sorted(epochs)),
        server_writes=len(w_list),
        meta=dict(meta or {}),
        operations=tuple(op_list),
        events=tuple(ev_list),
        expectation=expectation,
        new_epoch_writes=sum(
            1
            for o in op_list
            if o.kind == "write" and o.ok and new_epoch is not None and o.epoch == new_epoch
        ),
        expected_conflicts=tuple(expected_conflicts(op_list)),
        lost_updates=lost_u,
        stale_reads=tuple(stale_reads(op_list)),
        acked_not_journaled=tuple(acked_not_journaled(op_list, w_list)),
        journaled_not_invoked=tuple(journaled_not_invoked(op_list, w_list, key_prefix)),
        final_values=final,
        cut=dict(cut) if cut is not None else None,
        lost_above_cut=above_w + above_u,
    )


def verdict(result: DrillResult) -> list[str]:
    """What makes the drill fail, one sentence each; empty: it passed.

    - the global record: a scenario that must fail over passes only when the epoch rose, the
      new epoch became writable (unfenced) and a client write was acknowledged in it; one that
      must not fail over fails when the epoch rose, and when its fault came within
      `minIntervalMs` of the last change (the hysteresis alone could have hidden a wrong vote);
    - data: an acknowledged write or update lost, a stale read, an acknowledged write or update
      missing from every journal, a journaled write of the drill's keys that no client
      operation explains, writes of two epochs interleaved, a read-back that failed.
    """
    problems: list[str] = []
    x = result.expectation
    if x is not None:
        if x.epoch_after is None:
            problems.append("the global record could not be read after the drill")
        elif x.failover and not x.failed_over:
            problems.append(f"did not fail over (epoch {x.epoch_before} still current)")
        elif x.failover:
            if not x.writable_after:
                problems.append(
                    f"epoch {x.epoch_after} was committed but never became writable (not unfenced)"
                )
            if result.new_epoch_writes == 0:
                problems.append(f"no client write succeeded in epoch {x.epoch_after}")
        elif x.failed_over:
            problems.append(
                f"failed over although it must not (epoch {x.epoch_before} -> {x.epoch_after})"
            )
        quiet, need = x.since_change_at_fault, x.min_interval
        if not x.failover and quiet is not None and need is not None and quiet < need:
            problems.append(
                f"the fault came {quiet:.1f}s after the last change, within minIntervalMs "
                f"({need:.1f}s): the hysteresis alone could have held back a failover"
            )
    for name, what in (
        ("lost_writes", "acknowledged write(s) lost"),
        ("lost_updates", "acknowledged update(s) lost"),
        ("stale_reads", "stale read(s)"),
        ("acked_not_journaled", "acknowledged write(s) in no server's journal"),
        ("journaled_not_invoked", "journaled write(s) that no client operation explains"),
    ):
        found = getattr(result, name)
        if found:
            problems.append(f"{len(found)} {what}, e.g. {_example(found[0], result.final_values)}")
    problems += result.epoch_order_violations
    problems += [f"read-back: {p}" for p in result.meta.get("read_back_problems", [])]
    problems += [f"replication: {p}" for p in result.meta.get("replication_problems") or []]
    return problems


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


def _fmt_expectation(result: DrillResult) -> list[tuple[str, str]]:
    x = result.expectation
    if x is None:
        return []
    after = "unreadable" if x.epoch_after is None else str(x.epoch_after)
    text = f"{'expected' if x.failover else 'must not'}; epoch {x.epoch_before} -> {after}"
    if x.failed_over:
        text += f" ({'writable' if x.writable_after else 'never unfenced'}, "
        text += f"{result.new_epoch_writes} writes acknowledged in it)"
    rows = [("failover", text)]
    if x.since_change_at_fault is not None:
        rows.append(
            (
                "fault after last change",
                f"{_fmt_seconds(x.since_change_at_fault)} (minIntervalMs "
                f"{_fmt_seconds(x.min_interval)})",
            )
        )
    return rows


def figure_rows(result: DrillResult) -> list[tuple[str, str]]:
    f = result.figures()
    rows = _fmt_expectation(result)
    rows += [(_LABELS[n], _fmt_seconds(f[n])) for n in (*PHASE_NAMES, "longest_write_gap")]
    rows.append((_LABELS["longest_read_gap"], _fmt_seconds(f["longest_read_gap"])))
    rows.append(("errors by kind", _fmt_errors(result.errors_by_kind)))
    rows += [(_LABELS[n], str(len(getattr(result, n)))) for n in FINDINGS]
    return rows


def _example(record: Operation | ServerWrite, final: Mapping[str, Mapping[str, int]]) -> str:
    """One line on a record a finding names (with what was read back, for an update)."""
    if isinstance(record, ServerWrite):
        return (
            f"{record.key} revision {record.revision} journaled by {record.region} in epoch "
            f"{record.epoch}"
        )
    value = "" if record.value is None else f" value {record.value}"
    text = (
        f"{record.kind} {record.key}{value} at {record.invoked:.3f}s, answered by "
        f"{record.region or '?'} in epoch {record.epoch if record.epoch is not None else '?'} "
        f"through {record.gate or '?'}"
    )
    if record.kind == "update":
        back = final.get(record.region or "", {}).get(record.key)
        text += f"; read back: {'no value' if back is None else back}"
    return text


_EXAMPLES = 3  # findings shown under the text table, per kind


def findings(result: DrillResult) -> list[tuple[str, list[str]]]:
    """Each kind of finding with one line per record: (label, lines)."""
    out = []
    for name in FINDINGS:
        found: Sequence[Operation | ServerWrite | str] = getattr(result, name)
        if name != "expected_conflicts" and found:
            lines = [r if isinstance(r, str) else _example(r, result.final_values) for r in found]
            out.append((_LABELS[name], lines))
    return out


def _ops_line(result: DrillResult) -> str:
    parts = [f"{k} {result.ops_ok.get(k, 0)}/{n} ok" for k, n in sorted(result.ops_total.items())]
    return ", ".join(parts)


def cut_line(cut: Mapping[str, Any]) -> str:
    """One line for a failover's cut (`haplane.store.Cut.as_dict`)."""
    how = "planned" if cut.get("planned") else "unplanned"
    if cut.get("synchronous"):
        how += ", the synchronous standby: nothing acknowledged above it"
    lag = cut.get("lagSeconds")
    lag_text = f", lag at the cut {lag:.3f} s" if isinstance(lag, int | float) else ""
    return (
        f"epoch {cut.get('epoch')} took over at revision {cut.get('revision')} of "
        f"{cut.get('source')} ({how}{lag_text})"
    )


def render_table(result: DrillResult) -> str:
    """The headline figures as a plain-text table with aligned columns."""
    head = [
        f"scenario: {result.scenario}",
        f"operations: {_ops_line(result)}",
        f"regions: {', '.join(result.regions) or '-'}   "
        f"epochs: {', '.join(map(str, result.epochs)) or '-'}",
        *([f"cut: {cut_line(result.cut)}"] if result.cut else []),
        "",
    ]
    table = _align([("FIGURE", "VALUE"), *figure_rows(result)])
    tail = []
    for label, lines in findings(result):
        tail.append(f"{label}:")
        tail += [f"  {line}" for line in lines[:_EXAMPLES]]
        if len(lines) > _EXAMPLES:
            tail.append(f"  ... and {len(lines) - _EXAMPLES} more")
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
_EXPECTED_COLOUR = "#e6ab02"
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


def timeline_svg(result: DrillResult) -> str:
    ops, events = result.operations, result.events
    times = [0.0, *(o.invoked for o in ops), *(o.returned for o in ops), *(e.t for e in events)]
    t0, t1 = min(times), max(times)
    if t1 <= t0:
        t1 = t0 + 1.0
    width, left, right = 1100.0, 70.0, 20.0
    top = 30.0 + 14.0 * 3  # room for staggered event labels
    row_h, row_gap = 28.0, 14.0
    kinds = ["write", "read", *(k for k in ("update", "get") if any(o.kind == k for o in ops))]
    rows = {k: top + i * (row_h + row_gap) for i, k in enumerate(kinds)}
    bottom = top + len(kinds) * row_h + (len(kinds) - 1) * row_gap
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
        expected = is_expected_conflict(o)
        fill = (
            colour.get(o.region or "", _UNKNOWN_COLOUR)
            if o.ok
            else _EXPECTED_COLOUR
            if expected
            else _ERROR_COLOUR
        )
        y = rows[o.kind] + (4.0 if o.ok else row_h / 2)
        what = "ok" if o.ok else f"{'expected' if expected else 'error'} {o.error or 'unknown'}"
        value = "" if o.value is None else f" value={o.value}"
        tip = (
            f"{o.kind} {o.key} {what} status={o.status}{value} region={o.region} "
            f"epoch={o.epoch} gate={o.gate} {o.invoked:.3f}-{o.returned:.3f} s"
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


def _swatch(fill: str, stroke: str | None = None) -> str:
    edge = f' stroke="{stroke}"' if stroke else ""
    return (
        '<svg class="swatch" width="12" height="12" viewBox="0 0 12 12" aria-hidden="true">'
        f'<rect x="0.5" y="0.5" width="11" height="11" fill="{fill}"{edge}/></svg>'
    )


def legend(result: DrillResult) -> str:
    items = [
        (_REGION_COLOURS[i % len(_REGION_COLOURS)], f"ok, served by {r}")
        for i, r in enumerate(result.regions)
    ]
    items += [
        (_UNKNOWN_COLOUR, "ok, region unknown"),
        (_ERROR_COLOUR, "error"),
        (_EXPECTED_COLOUR, "expected conflict (epoch changed)"),
    ]
    spans = [
        # an SVG swatch, not a style attribute: the console's Content-Security-Policy allows
        # no inline styles, and the report's page shows the same legend
        f'<span class="key">{_swatch(c)}{_e(label)}</span>'
        for c, label in items
    ]
    gap = _swatch("rgba(214, 39, 40, 0.15)", stroke="#d62728")
    spans.append(f'<span class="key">{gap}client-visible gap</span>')
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
.swatch { margin-right: 0.3em; vertical-align: middle; }
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
        _html_table(("figure", "value"), figure_rows(result)),
        "<h2>Timeline</h2>",
        legend(result),
        timeline_svg(result),
        "<h2>Events</h2>",
        _html_table(
            ("t (s)", "event", "detail"), ((f"{e.t:.3f}", e.name, e.detail) for e in result.events)
        ),
    ]
    for label, lines in findings(result):
        sections.append(f"<h2>{_e(label[:1].upper() + label[1:])}</h2><ul>")
        sections += [f"<li>{_e(line)}</li>" for line in lines]
        sections.append("</ul>")
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
