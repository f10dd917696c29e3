"""`haplane drills`: the history of drill runs read from STATE/drills (fault drills'
reports as `haplane.dr.report` writes them, restore drills' as `haplane.local.restore_drill`
does), their verdicts (the same `verdict` a drill's exit code follows), RTO and lost
writes, and the per-scenario trend; and the topology's drill schedule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from haplane.dr.report import DrillResult, render_json
from haplane.local.drill_schedule import history, trends
from haplane.local.state_dir import StateDir


def _fault(scenario: str, gap: float, errors: int = 0) -> DrillResult:
    return DrillResult(
        scenario=scenario,
        phases={},
        write_gaps=(),
        read_gaps=(),
        longest_write_gap=gap,
        longest_read_gap=0.0,
        errors_by_kind={},
        lost_writes=(),
        epoch_order_violations=tuple(f"violation {i}" for i in range(errors)),
        ops_total={"write": 10},
        ops_ok={"write": 10},
        regions=("eu-west",),
        epochs=(1,),
        server_writes=10,
    )


def _write(state: StateDir, name: str, text: str, mtime: float) -> None:
    path = state.root / "drills" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def test_history_reads_fault_and_restore_drills_with_verdicts_and_trends(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    base = 1_800_000_000.0
    for i, gap in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 0.5, 0.5, 0.5, 0.5, 0.5]):
        _write(state, f"replica-kill-{i}.json", render_json(_fault("replica-kill", gap)), base + i)
    _write(state, "blip-x.json", render_json(_fault("blip", 0.2, errors=1)), base + 20)
    restore = {
        "scenario": "restore",
        "started": "2027-01-15T08:00:00+00:00",
        "passed": True,
        "problems": [],
        "restore": {"rto_seconds": 3.4},
    }
    _write(state, "restore-x.json", json.dumps(restore), base)
    _write(state, "broken.json", "{not json", base)
    runs = history(state)
    assert [r.scenario for r in runs].count("replica-kill") == 10
    blip = next(r for r in runs if r.scenario == "blip")
    assert not blip.passed and "violation 0" in blip.detail  # the drill's own verdict
    t = trends(runs)
    assert t["replica-kill"]["rto_median_recent"] == 0.5
    assert t["replica-kill"]["rto_median_before"] == 3.0
    assert t["restore"]["last"]["rto_seconds"] == 3.4 and t["restore"]["passed"] == 1
    assert t["blip"]["passed"] == 0


def test_the_cli_lists_them_and_exits_1_when_a_latest_run_failed(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    _write(state, "blip-x.json", render_json(_fault("blip", 0.2, errors=1)), 1_800_000_000.0)
    run = subprocess.run(
        [sys.executable, "-m", "haplane.cli", "drills", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and "FAILED" in run.stdout and "blip" in run.stderr, run


def test_the_schedule_is_off_by_default_and_names_only_known_scenarios() -> None:
    from pydantic import ValidationError

    from haplane.topology.model import DrillSchedule

    assert DrillSchedule().enabled is False
    assert DrillSchedule().scenarios[-1] == "restore"
    with pytest.raises(ValidationError):
        DrillSchedule(scenarios=["partition"])  # needs --netns: not offered
    with pytest.raises(ValidationError):
        DrillSchedule(every="1s")


def test_scheduled_drills_are_metrics_a_collector_reads(tmp_path: Path) -> None:
    """The last result and start time (its age: time() minus it) per scenario, and the
    counts, in Prometheus' text format, written to STATE/metrics/drills.prom on each run;
    `promtool check metrics` accepts them where promtool is installed."""
    import shutil
    import subprocess

    from haplane.local.drill_schedule import _record, metrics_text

    state = StateDir(tmp_path)
    assert "haplane_drill_last_passed{" not in metrics_text(state)  # no run: HELP/TYPE only
    for scenario, passed, t in (("blip", True, 100.0), ("blip", False, 200.0),
                                ('re"store', True, 150.0)):  # fmt: skip
        _record(state, {"scenario": scenario, "time": t, "passed": passed})
    text = (tmp_path / "metrics" / "drills.prom").read_text()
    _record(state, {"scenario": "broken", "time": "not a number"})  # skipped, not fatal
    assert "broken" not in (tmp_path / "metrics" / "drills.prom").read_text()
    assert text == metrics_text(state)
    assert 'haplane_drill_last_passed{scenario="blip"} 0\n' in text
    assert 'haplane_drill_last_passed{scenario="re\\"store"} 1\n' in text
    assert 'haplane_drill_last_run_timestamp_seconds{scenario="blip"} 200\n' in text
    assert 'haplane_drill_scheduled_failures{scenario="blip"} 1\n' in text
    assert "# TYPE haplane_drill_scheduled_runs gauge" in text
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["haplane_drill_last_passed"].type == "gauge"
    samples = {
        (s.name, s.labels["scenario"]): s.value
        for f in families.values()
        for s in f.samples
    }  # fmt: skip
    assert samples[("haplane_drill_last_passed", 're"store')] == 1.0
    assert samples[("haplane_drill_scheduled_runs", "blip")] == 2.0
    promtool = shutil.which("promtool")  # (Debian's prometheus; #20 installs it)
    if promtool:
        r = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                           capture_output=True)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr


async def test_the_schedule_runs_scenarios_in_turn_and_skips_when_it_must(tmp_path: Path):
    """The supervisor's loop on a fake clock, with the drill command, the health look and
    the wait stood in: the first run one period after the start, the scenarios in turn, each
    run recorded (history, metrics, an event); an unhealthy platform or another operation's
    lock skips a run, tried again a minute later, and the turn does not advance."""
    import asyncio

    import yaml

    from haplane.local.drill_schedule import RETRY_AFTER, keep_drills
    from haplane.topology import load_text
    from haplane.topology.loader import example_text

    doc = yaml.safe_load(example_text("two-regions"))
    doc["spec"]["global"]["drills"] = {
        "enabled": True, "every": "10m", "scenarios": ["replica-kill", "switchover"],
    }  # fmt: skip
    topology = load_text(yaml.safe_dump(doc))
    state = StateDir(tmp_path)
    now = [1000.0]
    events: list[tuple[str, dict[str, object]]] = []
    runs: list[tuple[float, list[str]]] = []
    health = iter([None, None, "eu-west/api-1 is down", None])
    done = asyncio.Event()

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        await asyncio.sleep(0)

    async def healthy(_: StateDir) -> str | None:
        return next(health)

    async def run(argv: list[str], timeout: float) -> tuple[int, str, str]:
        runs.append((now[0], argv))
        now[0] += 30  # a drill takes its time
        if len(runs) == 2:  # meanwhile another operation began
            (tmp_path / "operation.lock").write_text("x")
        if len(runs) == 3:
            done.set()
        passed = len(runs) != 2
        said = "ok" if passed else "lost 3"
        return (0 if passed else 1), "", f"reports: /r/{len(runs)}.json\n{said}"

    def emit(event: str, fields: dict[str, object]) -> None:
        events.append((event, fields))
        if event == "drill-skipped" and "operation.lock" in str(fields["why"]):
            (tmp_path / "operation.lock").unlink()

    task = asyncio.create_task(
        keep_drills(topology, state, emit, lambda: now[0], run=run, healthy=healthy, sleep=sleep)
    )
    await asyncio.wait_for(done.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    scenarios = [argv[argv.index("drill") + 1] for _, argv in runs]
    assert scenarios == ["replica-kill", "switchover", "replica-kill"]
    assert all("--direct" in argv and str(tmp_path) in argv for _, argv in runs)
    assert runs[0][0] == 1000.0 + 600  # one period after the start
    assert runs[1][0] == runs[0][0] + 600  # a period after the last run started
    # the third: skipped (the lock), then skipped (unhealthy), each tried a minute later
    skipped = [f for e, f in events if e == "drill-skipped"]
    assert [f["scenario"] for f in skipped] == ["replica-kill", "replica-kill"]
    assert "operation.lock" in str(skipped[0]["why"])
    assert "eu-west/api-1 is down" in str(skipped[1]["why"])
    assert runs[2][0] == runs[1][0] + 600 + 2 * RETRY_AFTER
    assert [e for e, _ in events if e.startswith("drill-") and e != "drill-skipped"] == [
        "drill-passed", "drill-failed", "drill-passed",
    ]  # fmt: skip
    recorded = json.loads((tmp_path / "drills" / "scheduled.json").read_text())
    assert [r["passed"] for r in recorded] == [True, False, True]
    assert recorded[1]["report"] == "/r/2.json" and recorded[1]["said"] == "lost 3"
    text = (tmp_path / "metrics" / "drills.prom").read_text()
    assert 'haplane_drill_last_passed{scenario="switchover"} 0\n' in text
    assert 'haplane_drill_scheduled_runs{scenario="replica-kill"} 2\n' in text
