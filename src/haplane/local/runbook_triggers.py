"""Runbooks fired by events: the supervisor's watch over the status for the events runbooks
declare (`spec.triggers`: region-down, quorum-lost, snapshot-failed, replication-lag-over).

Layer: run (`haplane.local`). Pure detection (`events_in`, `Watch`) and the supervisor's loop
(`keep_triggers`). An event never changes the platform by itself:
- a runbook with no `action` step (checks, waits, assertions: a diagnosis) runs at once, as
  `haplane runbook run NAME -p ...` would, journaled in `STATE/runbooks/` (without the run
  lock: it changes nothing, and must not keep an approved repair from running);
- a runbook with any action is only *proposed*: the supervisor's log and a Kubernetes Event
  (`RunbookProposed`) name the command, with the parameters the event gives; a person runs
  it, and its risky steps wait for another person's approval as always. (Asking on the
  platform's behalf would make the supervisor's identity the asker: its roles are every
  role, and the approval would be one person's.)

Events, from `haplane status` as gathered every `every` seconds (and the snapshot schedule's
failures, handed over by the supervisor); none while `STATE/operation.lock` is held (a
restore or a member replacement takes members down on purpose):
- `quorum-lost` (scope: the cluster's region, or `global`): its etcd answers no quorum read;
- `region-down` (scope: the region): its etcd has no quorum, or none of its API replicas is
  ready;
- `replication-lag-over` (scope: a standby region, never the active one): its lag in seconds
  is over the trigger's `limitSeconds`, or it is not streaming (no report, or a report older
  than STALE_REPORT: its leading replicator is gone);
- `snapshot-failed` (scope: the cluster): a scheduled snapshot failed.

A trigger's `scope` narrows it: a region's name, `global`, or `region` (any region). An event
fires a runbook once it has held on two looks in a row (no blips; a failed snapshot, an event
of one moment, at once), once per appearance, and not again for the same runbook and scope
within COOL_DOWN (an event that comes back sooner and persists fires once the cool-down is
over). Parameters come from the event: `region` (the scope, when a region), and `snapshot`
(the newest snapshot of that region taken while it was a standby); a runbook whose required
parameter the event cannot fill is not fired, and the log says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from haplane.topology.model import GLOBAL_SCOPE

from .ops_agent import run_primitive
from .runbook import Runbook, RunbookError, Trigger
from .state_dir import StateDir

CHECK_EVERY = 10.0  # seconds between two looks at the status
STALE_REPORT = 10.0  # seconds: an older replication report's replicator is gone
COOL_DOWN = 600.0  # seconds before the same runbook fires again for the same scope
RUN_TIMEOUT = 900.0


@dataclass(frozen=True)
class Event:
    type: str
    scope: str  # a region, or "global"
    lag_seconds: float | None = None  # replication-lag-over: the lag (None: not streaming)
    detail: str = ""


def events_in(status: dict[str, Any]) -> list[Event]:
    """The events a `haplane status --json` document shows (replication lag: every standby
    with its lag, for the triggers to compare with their limits)."""
    out: list[Event] = []
    for c in status.get("clusters") or []:
        scope = str(c.get("name", "")).split("/", 1)[0]
        if not c.get("quorum"):
            out.append(Event("quorum-lost", scope, detail=str(c.get("error") or "no quorum")))
            if scope != GLOBAL_SCOPE:
                out.append(Event("region-down", scope, detail="its etcd has no quorum"))
    ready: dict[str, bool] = {}
    for r in status.get("replicas") or []:
        region = str(r.get("name", "")).split("/", 1)[0]
        ready[region] = ready.get(region, False) or bool(r.get("ready"))
    for region, any_ready in sorted(ready.items()):
        down = any(e.type == "region-down" and e.scope == region for e in out)
        if not any_ready and not down:
            out.append(Event("region-down", region, detail="no API replica is ready"))
    active = ((status.get("global_state") or {}).get("active") or {}).get("region")
    for row in status.get("replication") or []:
        region = str(row.get("region"))
        if active is None or region == active or row.get("state") == "Idle":
            continue  # the active region replicates from nobody; unknown: nothing to say
        lag, age = row.get("lag_seconds"), row.get("report_age")
        fresh = isinstance(age, int | float) and age <= STALE_REPORT
        streaming = row.get("state") == "Streaming" and isinstance(lag, int | float) and fresh
        out.append(
            Event(
                "replication-lag-over",
                region,
                lag_seconds=float(lag) if streaming and lag is not None else None,
                detail=f"{row.get('state')}, lag {lag} s, report {age} s old",
            )
        )
    return out


def matches(trigger: Trigger, event: Event) -> bool:
    if trigger.type != event.type:
        return False
    if trigger.scope not in (None, event.scope) and not (
        trigger.scope == "region" and event.scope != GLOBAL_SCOPE
    ):
        return False
    if event.type == "replication-lag-over":
        limit = trigger.limit_seconds or 0.0
        return event.lag_seconds is None or event.lag_seconds > limit
    return True


@dataclass
class Watch:
    """Which (runbook, event type, scope) hold now, whether each fired in this appearance, and
    when each (runbook, scope) last fired."""

    held: dict[tuple[str, str, str], int] = field(default_factory=dict)  # looks in a row
    fired: set[tuple[str, str, str]] = field(default_factory=set)  # in this appearance
    fired_at: dict[tuple[str, str], float] = field(default_factory=dict)  # (runbook, scope)

    def due(
        self, books: Iterable[Runbook], events: list[Event], now: float
    ) -> list[tuple[Runbook, Event]]:
        """The runbooks to fire now: an event matching one of their triggers that has held
        for two looks (a failed snapshot: one), not fired yet in this appearance, and not
        fired for that scope within COOL_DOWN."""
        seen: dict[tuple[str, str, str], tuple[Runbook, Event]] = {}
        for book in books:
            for trigger in book.triggers:
                for event in events:
                    if trigger.event and matches(trigger, event):
                        seen.setdefault((book.name, event.type, event.scope), (book, event))
        self.held = {key: self.held.get(key, 0) + 1 for key in seen}
        self.fired &= set(seen)  # gone: the next appearance fires again
        out = []
        for key, (book, event) in seen.items():
            if key in self.fired:
                continue
            if self.held[key] < (1 if event.type == "snapshot-failed" else 2):
                continue
            last = self.fired_at.get((book.name, event.scope))
            if last is not None and now - last < COOL_DOWN:
                continue
            # every event of this outage that fires this runbook for this scope (quorum-lost
            # and region-down of one region): fired with it, not again when the first clears
            self.fired |= {k for k in seen if k[0] == book.name and k[2] == event.scope}
            self.fired_at[(book.name, event.scope)] = now
            out.append((book, event))
        return out

    def reset(self) -> None:
        """Nothing holds (looks paused): an event must hold two looks again to fire."""
        self.held = {}


def parameters(book: Runbook, event: Event, state: StateDir) -> dict[str, str] | str:
    """The runbook's parameters from the event, or why it cannot be fired."""
    given: dict[str, str] = {}
    for p in book.parameters:
        if p.name == "region" and event.scope != GLOBAL_SCOPE:
            given["region"] = event.scope
        elif p.name == "snapshot" and event.scope != GLOBAL_SCOPE:
            newest = _newest_standby_snapshot(state, event.scope)
            if newest is not None:
                given["snapshot"] = newest
        if p.required and p.name not in given:
            return f"parameter {p.name} has no value from a {event.type} event of {event.scope}"
    try:
        book.bind(given)
    except RunbookError as exc:
        return "; ".join(str(p.message) for p in exc.problems) or str(exc)
    return given


def _newest_standby_snapshot(state: StateDir, region: str) -> str | None:
    from .snapshots import snapshot_store

    kept = [
        m
        for m in snapshot_store(state).list()
        if m.scope == region and m.fence.startswith("standby:")
    ]
    return max(kept, key=lambda m: (m.taken_at, m.id)).id if kept else None


def command_line(book: Runbook, given: dict[str, str]) -> str:
    return " ".join(
        ["haplane runbook run", book.name, *(f"-p {k}={v}" for k, v in sorted(given.items()))]
    )


async def fire(
    book: Runbook, event: Event, state: StateDir, emit: Callable[[str, dict[str, object]], None]
) -> None:
    """The runbook run (no action step) or proposed (any action), never asked for."""
    given = parameters(book, event, state)
    facts: dict[str, object] = {
        "runbook": book.name, "event": event.type, "scope": event.scope, "detail": event.detail,
    }  # fmt: skip
    if isinstance(given, str):
        emit("runbook-not-fired", {**facts, "why": given})
        return
    if book.acts:
        emit("runbook-proposed", {**facts, "params": given, "run": command_line(book, given)})
        return
    argv = [sys.executable, "-m", "haplane.cli", "runbook", "run", book.name]
    for key, value in sorted(given.items()):
        argv += ["-p", f"{key}={value}"]
    # the runbook as judged here (no action): one edited since is refused, never run
    argv += ["--sha256", book.digest, "--json", "--state-dir", str(state.root)]
    emit("runbook-fired", {**facts, "params": given})
    code, out, err = await run_primitive(argv, RUN_TIMEOUT)
    said, reported = (err.strip().splitlines() or [""])[-1], False
    with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
        report = json.loads(out)
        said = f"{report['outcome']}" + (
            f" at step {report['failedStep']}" if report.get("failedStep") else ""
        )
        facts["journal"] = report.get("journal")
        reported = True
    # a diagnosis whose check fails during an outage did its job (exit 1 with its report);
    # a run that did not report (refused, crashed) is what failed
    outcome = "runbook-run" if code == 0 or (code == 1 and reported) else "runbook-run-failed"
    emit(outcome, {**facts, "exit": code, "said": said})


async def keep_triggers(
    state: StateDir,
    emit: Callable[[str, dict[str, object]], None],
    failures: asyncio.Queue[str] | None = None,
    every: float = CHECK_EVERY,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """The supervisor's loop (topology `spec.global.runbookTriggers`): every `every` seconds
    the status and the snapshot failures handed over since, then each runbook due, one at a
    time. Runs until cancelled."""
    from .runbook import catalog
    from .status import gather_status

    watch = Watch()
    paused = False
    while True:
        await asyncio.sleep(every)
        try:
            lock = state.root / "operation.lock"
            if lock.exists():  # a restore or replacement takes members down on purpose
                watch.reset()
                if not paused:
                    holder = lock.read_text(errors="replace").strip()
                    emit("triggers-paused", {"why": f"{lock} is held: {holder}"})
                paused = True
                continue
            if paused:
                emit("triggers-resumed", {})
            paused = False
            doc = (await gather_status(state, timeout=2.0)).as_dict()
            events = events_in(doc)
            while failures is not None and not failures.empty():
                scope = failures.get_nowait()
                events.append(Event("snapshot-failed", scope, detail="a scheduled snapshot failed"))
            listed = await asyncio.to_thread(catalog, state.root)  # (compiles CEL: off the loop)
            books = [x.book for x in listed if x.book is not None]  # invalid ones: listed
            for book, event in watch.due(books, events, clock()):
                await fire(book, event, state, emit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # logged; the next look tries again
            emit("triggers-error", {"error": f"{type(exc).__name__}: {exc}"})
