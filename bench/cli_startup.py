"""Benchmark: how long a `haplane` command takes to start, beside `kubectl`, in one run.

Every invocation but the quick ones imports haplane.cli.main and registers every command;
since issue 20 the commands import what they need inside their functions, and `version` and
`fault` are answered before typer is imported (`haplane.cli.quick`), measured beside the same
commands through typer. Measured side by side, in interleaved
rounds (one run of each command per round, so the machine's noise falls on all of them):
the interpreter alone, importing haplane.cli.main, the same plus the modules it imported at
module level before issue 20 (what the lazy imports save), a few cheap commands (`status`,
`down` and `fault` with nothing started in a fresh state dir among them), and
`kubectl version --client` when kubectl is on PATH. Prints the median and fastest wall time of
each and the ratio to kubectl.

Bytecode matters here: with PYTHONDONTWRITEBYTECODE set and no __pycache__ beside the sources
(a checkout), every run compiles the haplane modules it imports; an installed wheel has its
bytecode. `--bytecode both` (the default) measures each way: as the environment is, and with a
bytecode cache in a temporary PYTHONPYCACHEPREFIX (the checkout is left untouched).

    .venv/bin/python bench/cli_startup.py [--runs 10] [--bytecode both|env|cached]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What haplane.cli.main imported at module level (and main() on every call) before issue 20.
EAGER_BEFORE = (
    "asyncio",
    "rich.console",
    "rich.live",
    "rich.table",
    "haplane.local.global_control",
    "haplane.local.runner",
    "haplane.local.control",
    "haplane.local.netns",
    "haplane.local.process",
    "haplane.local.status",
    "haplane.local.supervisor",
    "haplane.local.security",
    "haplane.store",
    "haplane.topology",
)


TYPER = "import sys; sys.argv = ['haplane', *{}]; from haplane.cli.main import main; main()"


def commands(state: Path) -> dict[str, list[str]]:
    py, cli = [sys.executable], [sys.executable, "-m", "haplane.cli"]
    at = ["--state-dir", str(state)]
    cmds = {
        "python -c pass": [*py, "-c", "pass"],
        "import haplane.cli.main": [*py, "-c", "import haplane.cli.main"],
        "  + its imports before issue 20": [
            *py,
            "-c",
            "import haplane.cli.main, " + ", ".join(EAGER_BEFORE),
        ],
        "haplane --help": [*cli, "--help"],
        "haplane status --help": [*cli, "status", "--help"],
        "haplane validate --example two-regions": [*cli, "validate", "--example", "two-regions"],
        # what scripts and the tests call hundreds of times: the run layer's modules import the
        # supervisor, etcd and aiohttp only where they are used
        "haplane status (nothing started)": [*cli, "status", *at],
        "haplane status --json (nothing started)": [*cli, "status", "--json", *at],
        "haplane down (nothing started)": [*cli, "down", *at],
        "haplane fault kill x (nothing started)": [*cli, "fault", "kill", "x", *at],
        # answered before typer is imported (haplane.cli.quick); the same through typer
        "haplane version": [*cli, "version"],
        "  the same through typer": [*py, "-c", TYPER.format(["version"])],
        "  fault kill x through typer": [*py, "-c", TYPER.format(["fault", "kill", "x", *at])],
    }
    if shutil.which("kubectl"):
        cmds["kubectl version --client"] = ["kubectl", "version", "--client"]
    return cmds


def measure(cmds: dict[str, list[str]], runs: int, env: dict[str, str]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for argv in cmds.values():  # one unmeasured run each: page cache, bytecode cache
        subprocess.run(argv, env=env, capture_output=True, check=False)
    for _ in range(runs):
        for name, argv in cmds.items():
            t0 = time.perf_counter()
            r = subprocess.run(argv, env=env, capture_output=True, check=False)
            times[name].append(time.perf_counter() - t0)
            if r.returncode not in (0, 1):  # status and fault exit 1 when nothing was started
                sys.exit(f"{name}: exit {r.returncode}: {r.stderr.decode()[-500:]}")
    return times


def report(title: str, times: dict[str, list[float]]) -> None:
    kubectl = times.get("kubectl version --client")
    base = statistics.median(kubectl) if kubectl else None
    print(title)
    print(f"  {'command':<42}{'median ms':>10}{'min ms':>8}" + ("   x kubectl" if base else ""))
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = f"   {med / base:.1f}x" if base else ""
        print(f"  {name:<42}{med * 1000:>10.0f}{min(ts) * 1000:>8.0f}{ratio}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--bytecode", choices=("both", "env", "cached"), default="both")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="haplane-bench-") as tmp:
        cmds = commands(Path(tmp) / "state")
        if args.bytecode in ("both", "env"):
            env = dict(os.environ)
            how = (
                "not written (PYTHONDONTWRITEBYTECODE)"
                if env.get("PYTHONDONTWRITEBYTECODE")
                else "as cached"
            )
            report(
                f"bytecode as the environment has it ({how}); {args.runs} interleaved rounds:",
                measure(cmds, args.runs, env),
            )
        if args.bytecode in ("both", "cached"):
            env = dict(os.environ, PYTHONPYCACHEPREFIX=str(Path(tmp) / "pycache"))
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            report(
                f"bytecode cached (as installed); {args.runs} interleaved rounds:",
                measure(cmds, args.runs, env),
            )


if __name__ == "__main__":
    main()
