"""Benchmark: seconds from `haplane up -d --example two-regions` to healthy (median of N).

Each run starts from a fresh state dir (new clusters, new ports) and measures the wall time of
the `up -d` command, which returns once every etcd cluster has a quorum and every member sees a
leader; the supervisor's own start-up time is printed beside it. Then `haplane down`.

    .venv/bin/python bench/up_time.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def haplane(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haplane.cli", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        check=True,
        timeout=180,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    walls, internal = [], []
    with tempfile.TemporaryDirectory(prefix="haplane-bench-") as tmp:
        for run in range(args.runs):
            state = Path(tmp) / f"state-{run}"
            t0 = time.monotonic()
            haplane(state, "up", "-d", "--example", "two-regions")
            walls.append(time.monotonic() - t0)
            doc = json.loads(haplane(state, "status", "--json").stdout)
            assert all(c["quorum"] for c in doc["clusters"]), doc
            log = (state / "supervisor.log").read_text().splitlines()
            healthy = [json.loads(x) for x in log if x.startswith("{") and '"healthy"' in x]
            internal.append(float(healthy[-1]["seconds"]) if healthy else float("nan"))
            haplane(state, "down")
            print(
                f"  run {run + 1}: up -d returned after {walls[-1]:.2f}s "
                f"(supervisor start-up {internal[-1]:.2f}s)",
                flush=True,
            )
    print(
        f"median: {statistics.median(walls):.2f}s to healthy (wall, `up -d`), "
        f"{statistics.median(internal):.2f}s inside the supervisor; "
        f"9 etcd members in 3 clusters"
    )


if __name__ == "__main__":
    main()
