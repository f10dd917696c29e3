"""Benchmark: every drill scenario repeated, median and worst of what the client saw.

Starts the two-regions example with each site in its own network namespace (`haplane up
--netns`, as root), then runs each scenario `--runs` times (default 10) through the same code
as `haplane drill`, and prints per scenario the median and worst of: detection, agreement,
switch, fence wait, reconnect (first write acknowledged in the new epoch after the unfence),
the longest client-visible write and read gaps, errors, expected 409/404s after an epoch change
(no error), acknowledged writes and updates lost, stale reads, the journal mismatches both ways
(acknowledged but journaled nowhere; journaled but never invoked) and epoch-order violations.
Every run must also pass the drill's verdict (`haplane.dr.report.verdict`: failover exactly when
it must, into a writable epoch with a write acknowledged in it; nothing lost, nothing stale,
the journals and the client agreeing, no interleaved epochs); failures are counted.

`--sync` puts every replication pair in `Sync` mode (non-strict unless `--strict`): the
synchronous region-kill goal (0 acknowledged writes lost) is stated there.

`--etcd-defaults` runs the regional etcd clusters at etcd's default timing (heartbeat 100 ms,
election 1000 ms) instead of the example's 50/500: the etcd-leader-kill goal is stated there.

    .venv/bin/python bench/drills.py [--runs 10] [--scenario region-kill ...] [--etcd-defaults]
        [--sync [--strict]] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from haplane.dr.report import FINDINGS, DrillResult, aggregate, render_aggregate_table
from haplane.local.drill import SCENARIOS, DrillError, run_drill, verdict
from haplane.local.state_dir import StateDir
from haplane.topology.loader import example_text

DEFAULT = [
    "replica-kill",
    "etcd-leader-kill",
    "region-kill",
    "balancers-pause",
    "partition",
    "switchover",
    "replicator-kill",
    "standby-partition",
]


def haplane(state: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "haplane.cli", *args, "--state-dir", str(state)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def healthy(state: Path) -> bool:
    r = subprocess.run(
        [sys.executable, "-m", "haplane.cli", "status", "--state-dir", str(state)],
        capture_output=True,
    )
    return r.returncode == 0


def run_line(result: DrillResult, problems: list[str]) -> str:
    """One run in one line: the figures a reader checks first, then the verdict."""
    f = result.figures()
    reconnect = "-" if f["reconnect"] is None else f"{f['reconnect']:.3f}s"
    lag = "" if f["lag_at_cut"] is None else f", lag at the cut {f['lag_at_cut']:.3f}s"
    counts = ", ".join(f"{name.replace('_', ' ')} {f[name]:g}" for name in FINDINGS)
    return (
        f"write gap {result.longest_write_gap:.3f}s, reconnect {reconnect}{lag}, {counts}; "
        f"problems {problems or 'none'}"
    )


def example_doc(
    *,
    min_interval_ms: int = 1000,
    etcd_defaults: bool = False,
    mode: str = "Async",
    strict: bool = False,
) -> Any:
    """The two-regions example as run here: `mode` on every replication pair (`Sync`, with
    `strict` if asked), the controller's hysteresis and, with `etcd_defaults`, etcd's timing."""
    doc: Any = yaml.safe_load(example_text("two-regions"))
    doc["spec"]["global"]["failover"]["minIntervalMs"] = min_interval_ms
    for pair in doc["spec"]["global"].get("replication", []):
        pair["mode"] = mode
        if mode == "Sync" and strict:
            pair["strict"] = True
        if mode == "Sync":
            pair.pop("maxLagMs", None)  # only the synchronous standby is promoted anyway
    if etcd_defaults:
        for site in doc["spec"]["sites"]:
            if site.get("region"):
                site["region"]["etcd"]["heartbeatIntervalMs"] = 100
                site["region"]["etcd"]["electionTimeoutMs"] = 1000
    return doc


def run_scenarios(doc: Any, scenarios: list[str], runs: int, *, label: str = "") -> dict[str, Any]:
    """Start `doc` (every site in its own network namespace), run each scenario `runs` times,
    print each run and each scenario's aggregate; stop it. Per scenario: the aggregate and the
    runs that failed their verdict."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="haplane-drills-") as tmp:
        path = Path(tmp) / "topology.yaml"
        path.write_text(yaml.safe_dump(doc))
        root = Path(tmp) / "state"
        haplane(root, "up", "-d", "--netns", str(path))
        try:
            for scenario in scenarios:
                results, failed = [], []
                for i in range(runs):
                    deadline = time.monotonic() + 60
                    while not healthy(root) and time.monotonic() < deadline:
                        time.sleep(0.5)
                    try:
                        result = asyncio.run(run_drill(StateDir(root), scenario))
                    except DrillError as exc:  # could not run (e.g. the epoch moved): counted
                        failed.append([f"did not run: {exc}"])
                        print(f"{label}{scenario} run {i + 1}: did not run: {exc}", file=sys.stderr)
                        continue
                    problems = verdict(result)
                    results.append(result)
                    if problems:
                        failed.append(problems)
                    print(
                        f"{label}{scenario} run {i + 1}: {run_line(result, problems)}",
                        file=sys.stderr,
                    )
                agg = aggregate(results)
                print(f"\n== {label}{scenario}: {SCENARIOS[scenario].description}")
                print(render_aggregate_table(agg))
                print(f"runs failing the verdict: {len(failed)} of {len(results)}")
                out[scenario] = {"aggregate": agg, "failed": failed}
        finally:
            haplane(root, "down")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    ap.add_argument("--etcd-defaults", action="store_true")
    ap.add_argument("--min-interval-ms", type=int, default=1000)
    ap.add_argument(
        "--sync", action="store_true", help="every replication pair in Sync mode (non-strict)"
    )
    ap.add_argument("--strict", action="store_true", help="with --sync: strict")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    scenarios = args.scenario or DEFAULT
    doc = example_doc(
        min_interval_ms=args.min_interval_ms,
        etcd_defaults=args.etcd_defaults,
        mode="Sync" if args.sync else "Async",
        strict=args.strict,
    )
    machine = {"cpus": os.cpu_count(), "uname": " ".join(os.uname())}
    out: dict[str, Any] = {"runs": args.runs, "machine": machine, "mode": "Sync" if args.sync
                           else "Async"}  # fmt: skip
    out["scenarios"] = run_scenarios(doc, scenarios, args.runs)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
