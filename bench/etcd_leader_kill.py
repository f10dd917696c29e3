"""Benchmark: the longest gap between successful writes when the etcd leader is SIGKILLed.

A client writes a new key every 10 ms to a 3-member cluster with all endpoints and a 0.2 s
per-call deadline; after 1 s the leader gets SIGKILL; writing goes on for 4 s more. The gap is
the longest time between two consecutive acknowledged writes. Every acknowledged key is read back
afterwards (lost acknowledged writes must be 0). Several election timings run side by side in one
invocation, so their ratio is meaningful on a noisy machine.

    .venv/bin/python bench/etcd_leader_kill.py [--runs 5] [--timing 100/1000 --timing 50/500]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import EtcdError, EtcdOutcomeUnknown, find_etcd


async def one_run(root: Path, heartbeat: int, election: int) -> dict[str, object]:
    cluster = EtcdCluster(root, heartbeat_ms=heartbeat, election_ms=election, unsafe_no_fsync=False)
    await cluster.start()
    acked: list[tuple[float, bytes]] = []
    errors: Counter[str] = Counter()
    try:
        leader = await cluster.leader()
        async with cluster.client(timeout=0.2) as c:
            t_end = time.monotonic() + 5.0
            t_kill = time.monotonic() + 1.0
            killed = False
            i = 0
            while time.monotonic() < t_end:
                if not killed and time.monotonic() >= t_kill:
                    await cluster.processes[leader].fault("kill")
                    killed = True
                key = f"/bench/{i:06d}".encode()
                i += 1
                try:
                    await c.put(key, b"x")
                    acked.append((time.monotonic(), key))
                except EtcdOutcomeUnknown:
                    errors["outcome-unknown"] += 1
                except EtcdError as exc:
                    errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)
        async with cluster.client(timeout=2.0) as c:
            kvs, _ = await c.range(b"/bench/", prefix=True)
        present = {kv.key for kv in kvs}
        lost = sum(1 for _, k in acked if k not in present)
        times = [t for t, _ in acked]
        gap = max(b - a for a, b in itertools.pairwise(times))
        return {"gap": gap, "acked": len(acked), "errors": dict(errors), "lost": lost}
    finally:
        await cluster.stop()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--timing", action="append", help="heartbeat/election in ms")
    args = ap.parse_args()
    timings = [tuple(map(int, t.split("/"))) for t in (args.timing or ["100/1000", "50/500"])]
    b = find_etcd()
    print(f"etcd {b.version_text} ({b.path}); {args.runs} runs per timing; data on disk, fsync on")
    results: dict[tuple[int, ...], list[dict[str, object]]] = {t: [] for t in timings}
    with tempfile.TemporaryDirectory(prefix="haplane-bench-") as tmp:
        for run in range(args.runs):  # interleave timings so machine noise hits both alike
            for t in timings:
                r = await one_run(Path(tmp) / f"{t[0]}-{t[1]}-{run}", t[0], t[1])
                results[t].append(r)
                print(
                    f"  run {run + 1} heartbeat/election {t[0]}/{t[1]} ms: gap {r['gap']:.3f}s "
                    f"acked {r['acked']} errors {r['errors']} lost {r['lost']}",
                    flush=True,
                )
    print()
    print(f"{'timing (ms)':>14} {'median gap':>11} {'worst':>7} {'gap/election':>13} {'lost':>5}")
    for t, rs in results.items():
        gaps = [float(str(r["gap"])) for r in rs]
        med = statistics.median(gaps)
        lost = sum(int(str(r["lost"])) for r in rs)
        print(
            f"{t[0]:>6}/{t[1]:<7} {med:>10.3f}s {max(gaps):>6.3f}s {med / (t[1] / 1000):>13.2f}"
            f" {lost:>5}"
        )


if __name__ == "__main__":
    asyncio.run(main())
