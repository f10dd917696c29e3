"""What the console's Drills and Analysis pages show, read from the state dir and the running
topology.

Layer: console. Reads `STATE/drills/` through `haplane.local.drill_schedule` (the history
`haplane drills` shows), drill reports through `haplane.dr.report`, and checks the running
topology as `haplane validate --live` and `haplane analyse --availability` do. Read-only: it
changes nothing and runs no drill.

Costs: the drill history is read from files at most every `DRILLS_TTL` seconds; the analysis
of the file's failure sets is computed once (the running file does not change while the
console runs), in a thread; the live comparison asks every component, so it runs at most
every `LIVE_TTL` seconds, however many pages ask.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from haplane.local.state_dir import StateDir
from haplane.topology import Topology

from . import render_reports

DRILLS_TTL = 2.0
LIVE_TTL = 15.0
LIVE_TIMEOUT = 20.0  # the live comparison, at most
MAX_REPORT_BYTES = 64 * 1024 * 1024  # a drill report larger than this is not rendered


class ReportNotFound(Exception):
    pass


@dataclass
class _Model:
    summary: str
    rows: list[dict[str, str]]
    columns: tuple[str, ...]
    estimate: Any


class Reports:
    def __init__(self, state: StateDir, topology: Topology) -> None:
        self.state = state
        self.topology = topology
        self._drills: tuple[float, str] | None = None
        self._drills_lock = asyncio.Lock()
        # each report's run by its path, kept while the file's (mtime, size) stays: a drill
        # report holds thousands of operations, parsed once, not on every refresh
        self._runs_seen: dict[Path, tuple[tuple[int, int], Any]] = {}
        self._model: _Model | str | None = None
        self._model_lock = asyncio.Lock()
        self._live: tuple[float, str, list[Any], str | None] | None = None
        self._live_lock = asyncio.Lock()

    @property
    def drills_dir(self) -> Path:
        return self.state.root / "drills"

    # ---- drills ---------------------------------------------------------------------------

    def _runs(self) -> list[tuple[Any, str]]:
        """Every run with its report's path under STATE/drills, oldest first; a report is
        parsed again only when its file changed."""
        from haplane.local.drill_schedule import report_paths, run_of

        root = self.drills_dir.resolve()
        seen: dict[Path, tuple[tuple[int, int], Any]] = {}
        out = []
        for path in report_paths(self.state):
            try:
                resolved = path.resolve()
                relative = str(resolved.relative_to(root))
                st = resolved.stat()
            except (OSError, ValueError):  # gone, or outside STATE/drills (a link)
                continue
            key = (st.st_mtime_ns, st.st_size)
            cached = self._runs_seen.get(resolved)
            run = cached[1] if cached is not None and cached[0] == key else None
            if run is None and st.st_size <= MAX_REPORT_BYTES:
                run = run_of(resolved)
            seen[resolved] = (key, run)
            if run is not None:
                out.append((run, relative))
        self._runs_seen = seen
        return sorted(out, key=lambda x: (x[0].started, x[1]))

    def _drills_html(self) -> str:
        from haplane.local.drill_schedule import age_of_last, trends

        runs = self._runs()
        schedule = self.topology.spec.global_.drills
        return render_reports.drills(
            runs,
            trends([r for r, _ in runs]),
            {
                "enabled": schedule.enabled,
                "every": schedule.every,
                "scenarios": [str(s) for s in schedule.scenarios],
            },
            age_of_last(self.state),
        )

    async def drills_html(self) -> str:
        """The history, built at most once per `DRILLS_TTL` however many pages ask (one
        build at a time, in a thread)."""
        async with self._drills_lock:
            now = time.monotonic()
            if self._drills is None or now - self._drills[0] >= DRILLS_TTL:
                self._drills = (now, await asyncio.to_thread(self._drills_html))
            return self._drills[1]

    def drill_report_html(self, relative: str) -> str:
        """One report, by its path under STATE/drills: a `.json` file that stays inside that
        directory once links are resolved, not the schedule's own record, not larger than
        `MAX_REPORT_BYTES`; nothing else is ever read."""
        from haplane.local.drill_schedule import SCHEDULED, is_restore_report

        root = self.drills_dir.resolve()
        wrong = ReportNotFound(f"no drill report {relative!r} in the history")
        if not relative or not relative.endswith(".json") or "\0" in relative:
            raise wrong
        try:
            path = (root / relative).resolve()
            path.relative_to(root)
            st = path.stat()
        except (OSError, ValueError):
            raise wrong from None
        if path.name == SCHEDULED or not path.is_file():
            raise wrong
        if st.st_size > MAX_REPORT_BYTES:
            raise ReportNotFound(f"{relative}: larger than {MAX_REPORT_BYTES} bytes")
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ReportNotFound(f"{relative}: not a readable drill report") from None
        if not isinstance(raw, dict):
            raise ReportNotFound(f"{relative}: not a drill report")
        if is_restore_report(raw):
            return render_reports.restore_drill(raw)
        from haplane.dr.report import DrillResult, verdict

        try:
            result = DrillResult.from_dict(raw)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ReportNotFound(f"{relative}: not a drill report") from None
        problems = verdict(result)
        return render_reports.fault_drill(result, not problems, problems)

    # ---- analysis -------------------------------------------------------------------------

    def _analyse(self) -> _Model:
        from haplane.topology import availability, failures
        from haplane.topology.analyse_report import TABLE_COLUMNS, table_rows

        analysis = failures.analyse(self.topology, 2)
        return _Model(
            analysis.summary(),
            table_rows(analysis),
            TABLE_COLUMNS,
            availability.estimate(self.topology, availability.Rates()),
        )

    async def _live_findings(self) -> tuple[str, list[Any], str | None]:
        from haplane.local import live_drift
        from haplane.topology import validate

        findings: list[Any] = list(await asyncio.to_thread(validate, self.topology))
        error = None
        try:
            findings += await asyncio.wait_for(
                live_drift.live_findings(self.topology, self.state), LIVE_TIMEOUT
            )
        except live_drift.NotRunning as exc:
            error = str(exc)
        except TimeoutError:
            error = f"the running components did not all answer within {LIVE_TIMEOUT:.0f}s"
        except Exception as exc:  # a file mid-rotation, etcd away...: said, kept LIVE_TTL
            error = f"{type(exc).__name__}: {exc}"
        checked = datetime.now(UTC).isoformat(timespec="seconds")
        return checked, findings, error

    async def analysis_html(self) -> str:
        async with self._model_lock:
            if self._model is None:
                try:
                    self._model = await asyncio.to_thread(self._analyse)
                except Exception as exc:  # the file's model cannot change: said once, kept
                    self._model = f"{type(exc).__name__}: {exc}"
        async with self._live_lock:
            now = time.monotonic()
            if self._live is None or now - self._live[0] >= LIVE_TTL:
                self._live = (now, *await self._live_findings())
            _, checked, findings, error = self._live
        m = self._model
        if isinstance(m, str):
            return render_reports.analysis(findings, error, checked, None, model_error=m)
        return render_reports.analysis(
            findings, error, checked, (m.summary, m.rows, m.columns, m.estimate)
        )
