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
        self._model: _Model | None = None
        self._model_lock = asyncio.Lock()
        self._live: tuple[float, str, list[Any], str | None] | None = None
        self._live_lock = asyncio.Lock()

    @property
    def drills_dir(self) -> Path:
        return self.state.root / "drills"

    # ---- drills ---------------------------------------------------------------------------

    def _runs(self) -> list[tuple[Any, str]]:
        from haplane.local.drill_schedule import history

        root = self.drills_dir.resolve()
        out = []
        for run in history(self.state):
            try:
                out.append((run, str(Path(run.path).resolve().relative_to(root))))
            except ValueError:  # outside STATE/drills (a link): not offered
                continue
        return out

    def drills_html(self) -> str:
        now = time.monotonic()
        if self._drills is not None and now - self._drills[0] < DRILLS_TTL:
            return self._drills[1]
        from haplane.local.drill_schedule import age_of_last, trends

        runs = self._runs()
        schedule = self.topology.spec.global_.drills
        html = render_reports.drills(
            runs,
            trends([r for r, _ in runs]),
            {
                "enabled": schedule.enabled,
                "every": schedule.every,
                "scenarios": [str(s) for s in schedule.scenarios],
            },
            age_of_last(self.state),
        )
        self._drills = (now, html)
        return html

    def drill_report_html(self, relative: str) -> str:
        """One report, by its path under STATE/drills as the history lists it: nothing else
        (no other file, no path outside) is ever read."""
        runs = {rel: run for run, rel in self._runs()}
        run = runs.get(relative)
        if run is None:
            raise ReportNotFound(f"no drill report {relative!r} in the history")
        path = Path(run.path)
        try:
            if path.stat().st_size > MAX_REPORT_BYTES:
                raise ReportNotFound(f"{relative}: larger than {MAX_REPORT_BYTES} bytes")
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ReportNotFound(f"{relative}: {exc}") from None
        if not isinstance(raw, dict):
            raise ReportNotFound(f"{relative}: not a drill report")
        if "restore" in raw:
            return render_reports.restore_drill(raw)
        from haplane.dr.report import DrillResult, verdict

        result = DrillResult.from_dict(raw)
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

        findings: list[Any] = list(validate(self.topology))
        error = None
        try:
            findings += await asyncio.wait_for(
                live_drift.live_findings(self.topology, self.state), LIVE_TIMEOUT
            )
        except live_drift.NotRunning as exc:
            error = str(exc)
        except TimeoutError:
            error = f"the running components did not all answer within {LIVE_TIMEOUT:.0f}s"
        checked = datetime.now(UTC).isoformat(timespec="seconds")
        return checked, findings, error

    async def analysis_html(self) -> str:
        async with self._model_lock:
            if self._model is None:
                self._model = await asyncio.to_thread(self._analyse)
        async with self._live_lock:
            now = time.monotonic()
            if self._live is None or now - self._live[0] >= LIVE_TTL:
                self._live = (now, *await self._live_findings())
            _, checked, findings, error = self._live
        m = self._model
        return render_reports.analysis(
            findings, error, checked, m.summary, m.rows, m.columns, m.estimate
        )
