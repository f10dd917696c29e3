"""`haplane drills`: every DR drill run of this state dir (by hand, through the API, or on the
topology's schedule), with its verdict, RTO and lost writes, and per scenario the trend.

Layer: run (cli). Reads `STATE/drills/` (`haplane.local.drill_schedule`).

Import-light: typer only at import; the rest inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .options import StateDirOpt


def drills_cmd(
    scenario: Annotated[
        str | None, typer.Option("--scenario", "-s", help="Only this scenario.")
    ] = None,
    last: Annotated[int, typer.Option("--last", help="How many runs to list.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,
    prometheus: Annotated[
        bool,
        typer.Option(
            "--prometheus",
            help="The scheduled drills' metrics (STATE/metrics/drills.prom) in Prometheus' "
            "text format.",
        ),
    ] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """DR drill history: each run's verdict, RTO (the longest write gap a client saw; for a
    restore drill, the restore time) and acknowledged writes lost; per scenario, runs, passes
    and the median RTO of the last 5 runs against the 5 before. Exit 1 when the latest run of
    any scenario failed."""
    from dataclasses import asdict

    from haplane.local.drill_schedule import age_of_last, history, trends
    from haplane.local.state_dir import StateDir, default_state_dir

    state = StateDir(Path(state_dir) if state_dir else default_state_dir())
    if prometheus:
        from haplane.local.drill_schedule import metrics_text

        typer.echo(metrics_text(state), nl=False)
        return
    runs = [r for r in history(state) if scenario is None or r.scenario == scenario]
    summary = trends(runs)
    failing = sorted(s for s, t in summary.items() if not t["last"]["passed"])
    if as_json:
        doc = {
            "runs": [asdict(r) for r in runs[-last:]],
            "scenarios": summary,
            "lastScheduled": age_of_last(state),
        }
        typer.echo(json.dumps(doc, indent=2))
        raise typer.Exit(1 if failing else 0)
    if not runs:
        typer.echo("no drill has run (`haplane drill SCENARIO`, or spec.global.drills)")
        return
    typer.echo(f"{'STARTED':<26} {'SCENARIO':<18} {'VERDICT':<7} {'RTO':>8} {'LOST':>5}")
    for r in runs[-last:]:
        rto = f"{r.rto_seconds:.2f}s" if r.rto_seconds is not None else "-"
        lost = str(r.lost_writes) if r.lost_writes is not None else "-"
        verdict = "passed" if r.passed else "FAILED"
        typer.echo(f"{r.started:<26} {r.scenario:<18} {verdict:<7} {rto:>8} {lost:>5}")
    typer.echo("")
    for name, t in summary.items():
        now, before = t["rto_median_recent"], t["rto_median_before"]
        trend = f"RTO median {now}s" if now is not None else "no RTO"
        if now is not None and before is not None:
            trend += f" (the 5 before: {before}s)"
        typer.echo(f"{name}: {t['passed']}/{t['runs']} passed; {trend}")
    sched = age_of_last(state)
    if sched is not None:
        typer.echo(
            f"last scheduled: {sched['scenario']} {'passed' if sched['passed'] else 'FAILED'}, "
            f"{sched['ageSeconds']:.0f} s ago"
        )
    if failing:
        typer.echo(f"latest run failed: {', '.join(failing)}", err=True)
        raise typer.Exit(1)
