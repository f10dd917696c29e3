"""Benchmark: `haplane status --json` against a running topology, from process start to exit.

Issue 20 asks ≤ 400 ms for the two-regions example, which must ask every component (9 etcd
members, 4 API replicas, 4 balancers, 3 gates, 4 replicators, 2 GitOps controllers and 2
consoles: ~40 requests). Measured side by side in interleaved rounds (one run of each per
round, so the machine's noise falls on all of them):

- `haplane status --json` as a user runs it (the quick path: no typer, the status plan
  cache, stdlib HTTP in threads, every question at once);
- the same command through typer (`haplane.cli.main`);
- with `--baseline SRC`, the same command from another source tree (e.g. a worktree of an
  older commit: `git worktree add /tmp/old <commit>` then `--baseline /tmp/old/src`), run with
  this interpreter and that tree first on PYTHONPATH;
- `python -c pass` and `kubectl version --client` for scale.

Every run must exit 0 (healthy) or 3 (a component answered later than status waits, 1 s,
which a loaded machine causes: counted and printed); the first of each is not measured. Without
`--state-dir` the bench starts the two-regions example in a temporary state dir and stops it
afterwards. The topology itself keeps the two cores of this machine busy (~20 processes with
their health checks and heartbeats), so these are figures under that load.

With `--cold N`, N more rounds (status, `python -c pass` and kubectl), each after more than
the supervisor's kept connections live (`KeptConnections.lifetime`): what a status asked now
and then costs. Since the supervisor keeps its connections warm by itself
(`haplane.local.control.WARM_EVERY`) that is close to the first figures, what a script asking
in a loop gets; against a supervisor without it, every listener is dialled and handshaken again.

    .venv/bin/python bench/status_json.py [--runs 10] [--state-dir DIR] [--baseline SRC]
        [--cold N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

TYPER = "import sys; sys.argv = ['haplane', *{}]; from haplane.cli.main import main; main()"


@contextlib.contextmanager
def running_example(state_dir: Path | None) -> Iterator[Path]:
    if state_dir is not None:
        yield state_dir
        return
    with tempfile.TemporaryDirectory(prefix="haplane-bench-status-") as tmp:
        state = Path(tmp) / "state"
        cli = [sys.executable, "-m", "haplane.cli"]
        at = ["--state-dir", str(state)]
        subprocess.run(
            [*cli, "up", "-d", "--example", "two-regions", *at], check=True, capture_output=True
        )
        try:
            for _ in range(60):  # healthy: every component answered
                r = subprocess.run([*cli, "status", "--json", *at], capture_output=True)
                if r.returncode == 0:
                    break
                time.sleep(1)
            else:
                sys.exit("the example did not become healthy within a minute")
            yield state
        finally:
            subprocess.run([*cli, "down", *at], capture_output=True)


def commands(state: Path, baseline: Path | None) -> dict[str, tuple[list[str], dict[str, str]]]:
    env = dict(os.environ)
    py, cli = [sys.executable], [sys.executable, "-m", "haplane.cli"]
    argv = ["status", "--json", "--state-dir", str(state)]
    cmds = {
        "python -c pass": ([*py, "-c", "pass"], env),
        "haplane status --json": ([*cli, *argv], env),
        "  the same through typer": ([*py, "-c", TYPER.format(argv)], env),
    }
    if baseline is not None:
        old = dict(env, PYTHONPATH=os.pathsep.join([str(baseline), env.get("PYTHONPATH", "")]))
        cmds[f"  baseline ({baseline})"] = ([*cli, *argv], old)
    if shutil.which("kubectl"):
        cmds["kubectl version --client"] = (["kubectl", "version", "--client"], env)
    return cmds


Times = dict[str, list[float]]


def measure(
    cmds: dict[str, tuple[list[str], dict[str, str]]], runs: int, pause: float = 0.0
) -> tuple[Times, dict[str, int]]:
    """Each command `runs` times, interleaved, `pause` seconds before each round; and the
    runs that exited 3 (not healthy), per command."""
    times: Times = {name: [] for name in cmds}
    unhealthy: dict[str, int] = {}
    for argv, env in cmds.values():  # unmeasured: page cache, bytecode, the status plan cache
        subprocess.run(argv, env=env, capture_output=True, check=False)
    for _ in range(runs):
        time.sleep(pause)
        for name, (argv, env) in cmds.items():
            t0 = time.perf_counter()
            r = subprocess.run(argv, env=env, capture_output=True, check=False)
            times[name].append(time.perf_counter() - t0)
            if r.returncode == 3:  # a component answered too late (>1 s) on the loaded machine
                unhealthy[name] = unhealthy.get(name, 0) + 1
            elif r.returncode != 0:
                sys.exit(f"{name}: exit {r.returncode}: {r.stderr.decode()[-500:]}")
    return times, unhealthy


def report(title: str, times: Times, unhealthy: dict[str, int]) -> None:
    quick = statistics.median(times["haplane status --json"])
    print(title)
    print(f"  {'command':<50}{'median ms':>10}{'min ms':>8}{'x quick':>9}")
    for name, ts in times.items():
        med = statistics.median(ts)
        late = f"   ({unhealthy[name]} said unhealthy)" if name in unhealthy else ""
        print(f"  {name:<50}{med * 1000:>10.0f}{min(ts) * 1000:>8.0f}{med / quick:>9.2f}{late}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--state-dir", type=Path, help="a running topology (default: start one)")
    ap.add_argument("--baseline", type=Path, help="another source tree to measure beside")
    cold_help = "also N rounds, each after the supervisor's kept connections expired"
    ap.add_argument("--cold", type=int, default=0, help=cold_help)
    args = ap.parse_args()
    with running_example(args.state_dir) as state:
        cmds = commands(state, args.baseline)
        warm = measure(cmds, args.runs)
        if args.cold:
            # rounds apart by more than a kept connection's lifetime: every listener is dialled
            # and handshaken again (a status asked now and then, not in a loop)
            from haplane.local.stdlib_http import KeptConnections

            pause = KeptConnections().lifetime + 1.0
            quick = {k: v for k, v in cmds.items() if not k.startswith("  ")}
            cold = measure(quick, args.cold, pause)
    cores = os.cpu_count()
    report(f"haplane status --json, {args.runs} interleaved rounds ({cores} cores):", *warm)
    if args.cold:
        report(f"after {pause:g} s idle each, {args.cold} rounds:", *cold)


if __name__ == "__main__":
    main()
