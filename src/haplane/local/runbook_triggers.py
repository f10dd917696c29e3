"""Runbooks fired by events: the supervisor's watch over the status for the events runbooks
declare (`spec.triggers`: region-down, quorum-lost, snapshot-failed, replication-lag-over).

Layer: run (`haplane.local`). Pure detection (`events_in`, `Watch`) and the supervisor's loop
(`keep_triggers`), which fires a runbook the way an operator would: `haplane runbook run NAME
-p ... --no-wait` as a child process (`run_primitive`). So a runbook without risky steps runs
at once, journaled in `STATE/runbooks/` (checks and assertions: a report of what is wrong and
what to do); one with risky steps is only *asked for* through the API, as the state dir's
haplane-admin, and runs once another person approved it (`haplane approve NAME`): an event
never changes the platform by itself.

Events, from `haplane status` as gathered every `every` seconds (and the snapshot
schedule's failures, handed over by the supervisor):
- `quorum-lost` (scope: the cluster's region, or `global`): its etcd answers no quorum read;
- `region-down` (scope: the region): its etcd has no quorum, or none of its API replicas is
  ready;
- `replication-lag-over` (scope: the standby region): its replication lag in seconds is over
  the trigger's `limitSeconds`, or its replication is not streaming at all;
- `snapshot-failed` (scope: the cluster): a scheduled snapshot failed.

A trigger's `scope` narrows it: a region's name, `global`, or `region` (any region). An event
fires a runbook once when it has held on two checks in a row (no blips), and again only after
it was gone and came back, at most once per COOL_DOWN per runbook and scope. Parameters come
from the event: `region` (the scope, when a region), and `snapshot` (the newest snapshot of
that region taken while it was a standby, for the restore runbook); a runbook whose required
parameter the event cannot fill is not fired, and the supervisor log says why.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from haplane.topology.model import GLOBAL_SCOPE

from .ops_agent import run_primitive
from .runbook import Runbook, Trigger
from .state_dir import StateDir

CHECK_EVERY = 10.0  # seconds between two looks at the status
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
    regions: set[str] = set()
    for c in status.get("clusters") or []:
        scope = str(c.get("name", "")).split("/", 1)[0]
        if scope != GLOBAL_SCOPE:
            regions.add(scope)
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
    for row in status.get("replication") or []:
        region = str(row.get("region"))
        if row.get("state") == "Idle":  # the active region: it replicates from nobody
            continue
        lag = row.get("lag_seconds")
        streaming = row.get("state") == "Streaming" and isinstance(lag, int | float)
        out.append(
            Event(
                "replication-lag-over",
                region,
                lag_seconds=float(lag) if streaming else None,
                detail=f"{row.get('state')}, lag {lag}",
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
    """Which (runbook, event type, scope) hold now, and when each last fired."""

    held: dict[tuple[str, str, str], int] = field(default_factory=dict)  # checks in a row
    fired_at: dict[tuple[str, str], float] = field(default_factory=dict)  # (runbook, scope)

    def due(
        self, books: Iterable[Runbook], events: list[Event], now: float
    ) -> list[tuple[Runbook, Event]]:
        """The runbooks to fire now: an event matching one of their triggers that has held
        for exactly two checks (so: once per appearance; a failed snapshot, an event of one
        moment, at once), not fired for that scope within COOL_DOWN."""
        seen: dict[tuple[str, str, str], tuple[Runbook, Event]] = {}
        for book in books:
            for trigger in book.triggers:
                for event in events:
                    if trigger.event and matches(trigger, event):
                        seen.setdefault((book.name, event.type, event.scope), (book, event))
        self.held = {key: self.held.get(key, 0) + 1 for key in seen}
        out = []
        for key, (book, event) in seen.items():
            if self.held[key] != (1 if event.type == "snapshot-failed" else 2):
                continue
            last = self.fired_at.get((book.name, event.scope))
            if last is not None and now - last < COOL_DOWN:
                continue
            self.fired_at[(book.name, event.scope)] = now
            out.append((book, event))
        return out


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
    return given


def _newest_standby_snapshot(state: StateDir, region: str) -> str | None:
    from .snapshots import snapshot_store

    kept = [
        m
        for m in snapshot_store(state).list()
        if m.scope == region and m.fence.startswith("standby:")
    ]
    return max(kept, key=lambda m: m.taken_at).id if kept else None


async def fire(
    book: Runbook, event: Event, state: StateDir, emit: Callable[[str, dict[str, object]], None]
) -> None:
    """The runbook run (no risky step) or asked for (risky), as an operator would."""
    given = parameters(book, event, state)
    facts: dict[str, object] = {
        "runbook": book.name, "event": event.type, "scope": event.scope, "detail": event.detail,
    }  # fmt: skip
    if isinstance(given, str):
        emit("runbook-not-fired", {**facts, "why": given})
        return
    argv = [sys.executable, "-m", "haplane.cli", "runbook", "run", book.name]
    for key, value in sorted(given.items()):
        argv += ["-p", f"{key}={value}"]
    argv += ["--no-wait", "--reason", f"{event.type} of {event.scope}: {event.detail}"[:1000]]
    argv += ["--state-dir", str(state.root)]
    emit("runbook-fired", {**facts, "params": given, "asked": bool(book.risky_steps)})
    code, out, err = await run_primitive(argv, RUN_TIMEOUT)
    said = (err.strip().splitlines() or [""])[-1] if code else (out.strip().splitlines() or [""])[0]
    emit(
        "runbook-run" if code == 0 else "runbook-run-failed", {**facts, "exit": code, "said": said}
    )


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
    while True:
        await asyncio.sleep(every)
        try:
            doc = (await gather_status(state, timeout=2.0)).as_dict()
        except Exception as exc:  # the supervisor's own status: logged, looked at again
            emit("triggers-unreadable", {"error": str(exc)})
            continue
        events = events_in(doc)
        while failures is not None and not failures.empty():
            scope = failures.get_nowait()
            events.append(Event("snapshot-failed", scope, detail="a scheduled snapshot failed"))
        books = [x.book for x in catalog(state.root) if x.book is not None]  # invalid: listed
        for book, event in watch.due(books, events, clock()):
            await fire(book, event, state, emit)
