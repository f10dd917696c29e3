"""Drills on a schedule (topology `spec.global.drills`) and the history of every drill run
(`haplane drills`).

Layer: run (`haplane.local`). The schedule runs `haplane drill SCENARIO --direct --json` (the
command an operator types, as the ops agent runs it) from the supervisor, one scenario after
the other in the order the topology gives, each `every` after the last scheduled run; never
while another data-changing operation holds `STATE/operation.lock` or while `haplane status`
says anything is unhealthy (the run is skipped and tried again a minute later, said as an
event). The history reads the reports drills write into `STATE/drills/`: fault drills
(`haplane.dr.report`) and restore drills (`haplane.local.restore_drill`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from haplane.telemetry import Drills as M
from haplane.telemetry import MetricDef, textfile
from haplane.topology import Topology

from .ops_agent import run_primitive
from .state_dir import StateDir

log = logging.getLogger("haplane.local.drill_schedule")
RETRY_AFTER = 60.0  # seconds, after a skipped run (unhealthy, or another operation)
RUN_TIMEOUT = 1800.0
SCHEDULED = "scheduled.json"  # in STATE/drills: the schedule's own record of its runs


@dataclass(frozen=True)
class DrillRun:
    scenario: str
    started: str  # ISO 8601
    passed: bool
    rto_seconds: float | None  # fault drills: the longest write gap a client saw; restore: RTO
    lost_writes: int | None  # acknowledged writes lost (above a cut: the RPO), None: n/a
    detail: str
    path: str


def _fault_drill(raw: dict[str, Any], path: Path) -> DrillRun:
    from haplane.dr.report import DrillResult, verdict

    result = DrillResult.from_dict(raw)
    problems = verdict(result)
    # the report's own time: written when the drill ended
    started = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    return DrillRun(
        result.scenario,
        started,
        not problems,
        round(result.longest_write_gap, 3),
        len(result.lost_writes) + len(result.lost_above_cut),
        "; ".join(problems) or "passed",
        str(path),
    )


def _restore_drill(raw: dict[str, Any], path: Path) -> DrillRun:
    # a restore that failed early has `error` and no `restore` section: still a run, failed
    section = raw.get("restore")
    rto = section.get("rto_seconds") if isinstance(section, dict) else None
    problems = raw.get("problems")
    if not isinstance(problems, list):
        problems = [str(raw["error"])] if raw.get("error") else []
    return DrillRun(
        "restore",
        str(raw.get("started", "")),
        bool(raw.get("passed")) and not raw.get("error"),
        float(rto) if isinstance(rto, int | float) and not isinstance(rto, bool) else None,
        None,
        "; ".join(str(p) for p in problems) or "passed",
        str(path),
    )


def is_restore_report(raw: dict[str, Any]) -> bool:
    return raw.get("scenario") == "restore" or "restore" in raw


def run_of(path: Path) -> DrillRun | None:
    """The run a report file records (a fault drill's or a restore drill's), None when it is
    not a readable drill report."""
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            return None
        return _restore_drill(raw, path) if is_restore_report(raw) else _fault_drill(raw, path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def report_paths(state: StateDir) -> list[Path]:
    """Every drill report file under STATE/drills (not the schedule's own record)."""
    return [p for p in (state.root / "drills").rglob("*.json") if p.name != SCHEDULED]


def history(state: StateDir) -> list[DrillRun]:
    """Every drill report under STATE/drills, oldest first; unreadable ones skipped."""
    out = [run for path in report_paths(state) if (run := run_of(path)) is not None]
    return sorted(out, key=lambda r: (r.started, r.path))


def trends(runs: list[DrillRun], window: int = 5) -> dict[str, dict[str, Any]]:
    """Per scenario: runs, passed, the last verdict, and the median RTO of the last `window`
    runs against the `window` before (None where there are none)."""
    out: dict[str, dict[str, Any]] = {}
    for scenario in sorted({r.scenario for r in runs}):
        mine = [r for r in runs if r.scenario == scenario]
        rtos = [r.rto_seconds for r in mine if r.rto_seconds is not None]
        recent, before = rtos[-window:], rtos[-2 * window : -window]
        out[scenario] = {
            "runs": len(mine),
            "passed": sum(r.passed for r in mine),
            "last": asdict(mine[-1]),
            "rto_median_recent": round(statistics.median(recent), 3) if recent else None,
            "rto_median_before": round(statistics.median(before), 3) if before else None,
        }
    return out


def _scheduled_runs(state: StateDir) -> list[dict[str, Any]]:
    try:
        raw = json.loads((state.root / "drills" / SCHEDULED).read_text())
    except (OSError, ValueError):
        return []
    return raw if isinstance(raw, list) else []


def _record(state: StateDir, entry: dict[str, Any]) -> None:
    runs = [*_scheduled_runs(state), entry][-1000:]
    path = state.root / "drills" / SCHEDULED
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(runs, indent=1) + "\n")
    tmp.replace(path)
    try:
        write_metrics(state)
    except OSError as exc:  # the run is recorded; only its metrics are late
        log.warning("drill metrics not written: %s", exc)


METRICS_FILE = "drills.prom"  # in STATE/metrics: node_exporter's textfile collector format


def metrics_text(state: StateDir) -> str:
    """The scheduled drills' last result, start time and counts per scenario, in Prometheus'
    text exposition format (gauges: the history is bounded, so the counts are not counters)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for run in _scheduled_runs(state):
        if isinstance(run, dict) and isinstance(run.get("time"), int | float):
            by.setdefault(str(run.get("scenario")), []).append(run)
    values: dict[MetricDef, dict[tuple[str, ...], float]] = {
        M.last_passed: {(s,): float(bool(r[-1].get("passed"))) for s, r in by.items()},
        M.last_run: {(s,): float(r[-1].get("time") or 0.0) for s, r in by.items()},
        M.runs: {(s,): float(len(r)) for s, r in by.items()},
        M.failures: {(s,): float(sum(not x.get("passed") for x in r)) for s, r in by.items()},
    }
    return textfile(values)


def write_metrics(state: StateDir) -> Path:
    """`metrics_text` into STATE/metrics/drills.prom, by rename (a collector never reads half
    a file); point node_exporter's `--collector.textfile.directory` at STATE/metrics."""
    return state.write_metrics_file(METRICS_FILE, metrics_text(state))


async def _healthy(state: StateDir) -> str | None:
    """Why the platform is not fit for a drill now (None: it is)."""
    from .status import gather_status

    try:
        report = await gather_status(state, timeout=2.0)
    except Exception as exc:  # unreadable status: not fit
        return f"status unreadable: {exc}"
    doc = report.as_dict()
    if doc.get("supervisor") != "healthy":
        return f"supervisor {doc.get('supervisor')}"
    sick = [m["name"] for c in doc.get("clusters", []) for m in c["members"] if not m["healthy"]]
    sick += [r["name"] for r in doc.get("replicas", []) if not r["ready"]]
    if sick:
        return "not healthy: " + ", ".join(sick)
    return None


async def keep_drills(
    topology: Topology,
    state: StateDir,
    emit: Callable[[str, dict[str, object]], None],
    clock: Callable[[], float] = time.time,
    *,
    run: Callable[[list[str], float], Awaitable[tuple[int, str, str]]] = run_primitive,
    healthy: Callable[[StateDir], Awaitable[str | None]] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """The supervisor's loop (until cancelled). `run`, `healthy` and `sleep` are the
    primitive runner, the health look and the wait; a test passes its own."""
    healthy = healthy or _healthy
    schedule = topology.spec.global_.drills
    every = float(schedule.every_seconds)
    started = clock()
    write_metrics(state)  # the file is there from the start (empty: no run yet)
    skipped_at: float | None = None
    while True:
        runs = _scheduled_runs(state)
        last = float(runs[-1]["time"]) if runs else None
        due = last + every if last is not None else started + every
        if skipped_at is not None:
            due = max(due, skipped_at + min(every, RETRY_AFTER))
        wait = due - clock()
        if wait > 0:
            await sleep(min(wait, 60.0))
            continue
        scenario = schedule.scenarios[len(runs) % len(schedule.scenarios)]
        why = (
            f"another operation holds {state.root / 'operation.lock'}"
            if (state.root / "operation.lock").exists()
            else await healthy(state)
        )
        if why is not None:
            skipped_at = clock()
            emit("drill-skipped", {"scenario": scenario, "why": why})
            continue
        skipped_at = None
        argv = [sys.executable, "-m", "haplane.cli", "drill", scenario, "--direct", "--json",
                "--state-dir", str(state.root)]  # fmt: skip
        t0 = clock()
        code, _, err = await run(argv, RUN_TIMEOUT)
        lines = err.strip().splitlines()
        report = next(
            (ln[len("reports: ") :].split()[0] for ln in lines if ln.startswith("reports: ")), ""
        )
        entry: dict[str, object] = {
            "scenario": scenario,
            "time": t0,
            "started": datetime.fromtimestamp(t0, UTC).isoformat(timespec="seconds"),
            "passed": code == 0,
            "report": report,
            "said": lines[-1] if lines else "",
        }
        _record(state, entry)
        emit("drill-passed" if entry["passed"] else "drill-failed", entry)


def age_of_last(state: StateDir, now: float | None = None) -> dict[str, Any] | None:
    """The last scheduled run with its age in seconds (None: none yet)."""
    runs = _scheduled_runs(state)
    if not runs:
        return None
    last = dict(runs[-1]) if isinstance(runs[-1], dict) else {}
    when = last.get("time")
    if not isinstance(when, int | float) or isinstance(when, bool):
        return None  # a record without its time (written by hand?): no age to tell
    last["ageSeconds"] = round((now or time.time()) - float(when), 1)
    return last
