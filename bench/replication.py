"""Benchmark: cross-region replication, side by side in one run.

Two real 3-member etcd clusters on this machine (fsync on, the example's 50/500 ms timing), the
target's fence key `standby:src@1`, and a replicator process (`python -m haplane.replication`)
copying src into dst, as `haplane up` runs it. Measured:

1. **Lag p50/p99** of writes paced at a fixed rate: creates through an API replica on src
   (~1 KiB ConfigMaps at 100 and 300/s) and raw etcd puts to src (~1 KiB at 1,000 and 3,000/s).
   Each write's source revision is known from its answer (the put's header revision; for an API
   create, the etcd revision in its `resourceVersion`). A watch on the target's applied record
   notes when each applied revision arrived; a write's lag is the first time the applied
   revision reached its own, minus the time its answer came back (one monotonic clock: the
   bench's). Goal: p99 <= 250 ms at the API's rates.
2. **Replicated writes/s against raw txn writes/s**: 16 writers put N keys into src as fast as
   they can (that is the raw rate); the replicator streams meanwhile; the replicated rate is N
   over the time until the target applied the last write.
3. **Full resync** of `--resync-objects` (100,000) objects of 1 KiB: src filled in txns of 500
   puts, a new replicator on an empty target; the time until its applied record says
   `streaming`, and the keys compared. Goal <= 30 s.

4. **Synchronous against asynchronous acknowledgement**, side by side: two API replicas on
   src, both fenced by a global control etcd (3 members, same timing) and comparing the fence
   key; one acknowledges asynchronously, the other only once dst's replicator applied the
   write (`--sync-standby dst`). Alternating rounds of each: create throughput with 16
   concurrent clients, and create latency p50/p99 paced at 100/s. Goal: sync p99 <= 2x async.
5. **Region-kill failover in each mode** (`--only failover`, as root: it starts the two-regions
   example with every site in its own network namespace, as `bench/drills.py` does, once with
   Async pairs and once with Sync pairs): `--failover-runs` region-kill drills each, the
   client's write gap, failover figures and acknowledged writes lost, read back through the
   gate.

The planned switchover's duration and client write gap are measured by `bench/drills.py
--scenario switchover` (a whole topology, a client through the gate).

    .venv/bin/python bench/replication.py [--only lag|throughput|resync|sync|failover]
        [--seconds 10] [--throughput-keys 20000] [--resync-objects 100000]
        [--failover-runs 5] [--sync-rounds 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from haplane.local.api_replica import ApiReplica, free_port
from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import (
    APPLIED_KEY,
    FENCE_KEY,
    AppliedRecord,
    EtcdClient,
    FenceValue,
    GlobalState,
    Op,
    SyncState,
)

VALUE = b"x" * 1024


class Applied:
    """The target's applied revision over time (monotonic), from a watch on its record."""

    def __init__(self, dst: EtcdClient):
        self.dst = dst
        self.times: list[float] = []
        self.revisions: list[int] = []
        self.state = ""

    async def run(self) -> None:
        async for wb in self.dst.watch(APPLIED_KEY):
            now = time.monotonic()
            for ev in wb.events:
                if ev.type != "PUT":
                    continue
                rec = AppliedRecord.from_kv(ev.kv)
                self.state = rec.state
                if rec.state == "streaming":
                    self.times.append(now)
                    self.revisions.append(rec.revision)

    def reached(self, revision: int) -> float | None:
        """When the applied revision first reached `revision`."""
        for t, r in zip(self.times, self.revisions, strict=True):
            if r >= revision:
                return t
        return None


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "n": 0}
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "n": len(ordered),
    }


def spawn_replicator(src: EtcdCluster, dst: EtcdCluster, log: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "haplane.replication", "--region", "dst", "--name", "rep-1",
        "--listen", f"127.0.0.1:{free_port()}", "--etcd", ",".join(dst.endpoints),
        "--source", f"src={','.join(src.endpoints)}",
    ]  # fmt: skip
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=out)


async def paced(rate: float, seconds: float, write: Any) -> tuple[list[tuple[float, int]], float]:
    """Call `write()` at `rate` per second for `seconds`; [(answer time, revision)], and the
    rate achieved."""
    n = int(rate * seconds)
    done: list[tuple[float, int]] = []
    sem = asyncio.Semaphore(256)
    t0 = time.monotonic()

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        async with sem:
            revision = await write(i)
        done.append((time.monotonic(), revision))

    await asyncio.gather(*(one(i) for i in range(n)))
    return done, len(done) / (time.monotonic() - t0)


async def lags(
    applied: Applied, writes: list[tuple[float, int]], wait: float = 30.0
) -> list[float]:
    last = max(r for _, r in writes)
    deadline = time.monotonic() + wait
    while applied.reached(last) is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    out = []
    for acked, revision in writes:
        at = applied.reached(revision)
        if at is not None:
            out.append(max(0.0, at - acked) * 1000)
    return out


async def bench_lag(src_c: EtcdCluster, applied: Applied, root: Path, seconds: float) -> dict:
    results: dict[str, Any] = {}
    api = ApiReplica(root, "api-src", src_c.endpoints, region="src")
    await api.start()
    async with src_c.client(5.0) as src, aiohttp.ClientSession() as http:
        ns = f"bench-{os.getpid()}"
        api.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
        url = f"{api.url}/api/v1/namespaces/{ns}/configmaps"

        async def create(i: int) -> int:
            body = {"metadata": {"name": f"c{time.monotonic_ns()}-{i}"}, "data": {"v": "x" * 1000}}
            async with http.post(url, json=body) as r:
                obj = await r.json()
                return int(obj["metadata"]["resourceVersion"].split(".")[0])

        async def put(i: int) -> int:
            return await src.put(f"/bench/raw/{i % 5000}".encode(), VALUE)

        for name, rate, write in (
            ("api creates", 100, create),
            ("api creates", 300, create),
            ("raw etcd puts", 1000, put),
            ("raw etcd puts", 3000, put),
        ):
            writes, achieved = await paced(rate, seconds, write)
            stats = percentiles(await lags(applied, writes))
            results[f"{name} @ {rate}/s"] = {"achieved_per_s": round(achieved, 1), **stats}
            print(
                f"lag, {name} at {rate}/s (achieved {achieved:.0f}/s): p50 {stats['p50']:.1f} ms"
                f", p99 {stats['p99']:.1f} ms ({stats['n']} writes)",
                file=sys.stderr,
            )
    await api.stop()
    return results


async def bench_throughput(src_c: EtcdCluster, applied: Applied, keys: int) -> dict:
    async with src_c.client(5.0) as src:
        queue = iter(range(keys))
        last = 0

        async def writer() -> None:
            nonlocal last
            for i in queue:
                last = max(last, await src.put(f"/bench/tp/{i}".encode(), VALUE))

        t0 = time.monotonic()
        await asyncio.gather(*(writer() for _ in range(16)))
        t_written = time.monotonic()
        while applied.reached(last) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        t_applied = applied.reached(last) or time.monotonic()
    raw = keys / (t_written - t0)
    replicated = keys / (t_applied - t0)
    out = {
        "keys": keys,
        "raw_writes_per_s": round(raw),
        "replicated_writes_per_s": round(replicated),
        "ratio": round(replicated / raw, 3),
        "catch_up_after_writers_s": round(t_applied - t_written, 3),
    }
    print(f"throughput: {out}", file=sys.stderr)
    return out


async def bench_resync(root: Path, objects: int) -> dict:
    src_c = EtcdCluster(root / "rs-src", scope="rs-src", unsafe_no_fsync=False,
                        heartbeat_ms=50, election_ms=500)  # fmt: skip
    dst_c = EtcdCluster(root / "rs-dst", scope="rs-dst", unsafe_no_fsync=False,
                        heartbeat_ms=50, election_ms=500)  # fmt: skip
    await asyncio.gather(src_c.start(), dst_c.start())
    proc = None
    try:
        async with src_c.client(10.0) as src, dst_c.client(10.0) as dst:
            t0 = time.monotonic()
            for start in range(0, objects, 500):
                ops = [
                    Op("put", f"/registry/configmaps/ns/o{i:07d}".encode(), VALUE)
                    for i in range(start, min(objects, start + 500))
                ]
                await src.txn([], ops, timeout=30.0)
            fill = time.monotonic() - t0
            await dst.put(FENCE_KEY, FenceValue.standby("rs-src", 1).encode())
            t0 = time.monotonic()
            argv = [
                sys.executable, "-m", "haplane.replication", "--region", "rs-dst",
                "--name", "rep-1", "--listen", f"127.0.0.1:{free_port()}",
                "--etcd", ",".join(dst_c.endpoints),
                "--source", f"rs-src={','.join(src_c.endpoints)}",
            ]  # fmt: skip
            with open(root / "resync.log", "ab") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=log)  # noqa: ASYNC220
            while True:
                kv = await dst.get(APPLIED_KEY)
                if kv is not None and AppliedRecord.from_kv(kv).state == "streaming":
                    break
                await asyncio.sleep(0.05)
            seconds = time.monotonic() - t0
            _, _, count = await dst.range_page(
                b"/registry/configmaps/ns/", b"/registry/configmaps/ns0", limit=1
            )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        await asyncio.gather(src_c.stop(), dst_c.stop())
    out = {
        "objects": objects,
        "fill_s": round(fill, 2),
        "resync_s": round(seconds, 2),
        "copied": count,
        "objects_per_s": round(objects / seconds),
    }
    print(f"resync: {out}", file=sys.stderr)
    return out


async def bench_sync(
    src_c: EtcdCluster, dst_c: EtcdCluster, root: Path, seconds: float, rounds: int = 2
) -> dict:
    """Sync against async acknowledgement, alternating rounds in one run (see the docstring)."""
    ctl_c = EtcdCluster(root / "ctl", scope="ctl", unsafe_no_fsync=False,
                        heartbeat_ms=50, election_ms=500)  # fmt: skip
    await ctl_c.start()
    apis: dict[str, ApiReplica] = {}
    try:
        async with ctl_c.client(5.0) as ctl, src_c.client(5.0) as src:
            await GlobalState(ctl).initialize("src", by="bench", reason="bench", fresh=True)
            await src.put(FENCE_KEY, FenceValue.active("src", 1).encode())
            fenced = ["--global-etcd", ",".join(ctl_c.endpoints)]
            apis["async"] = ApiReplica(root, "api-async", src_c.endpoints, region="src",
                                       extra_args=fenced)  # fmt: skip
            apis["sync"] = ApiReplica(
                root, "api-sync", src_c.endpoints, region="src",
                extra_args=[*fenced, "--sync-standby", f"dst={','.join(dst_c.endpoints)}"],
            )  # fmt: skip
            # the sync replica first: it must lead the region's controllers, whose leader keeps
            # the sync record (the async one has no standby to make synchronous)
            await apis["sync"].start()
            sync_state = SyncState(ctl, b"/haplane/global/")
            while True:
                rec = await sync_state.read()
                if rec is not None and rec.standby == "dst":
                    break
                await asyncio.sleep(0.1)
            await apis["async"].start()
            ns = f"sync-{os.getpid()}"
            apis["async"].request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
            runs: dict[str, dict[str, list[float]]] = {
                m: {"creates_per_s": [], "p50_ms": [], "p99_ms": []} for m in apis
            }
            async with aiohttp.ClientSession() as http:
                for r in range(rounds):
                    for mode in ("async", "sync") if r % 2 == 0 else ("sync", "async"):
                        url = f"{apis[mode].url}/api/v1/namespaces/{ns}/configmaps"
                        tput = await _closed_loop(http, url, seconds, 16)
                        lat = await _paced_latency(http, url, 100, seconds)
                        runs[mode]["creates_per_s"].append(tput)
                        runs[mode]["p50_ms"].append(lat["p50"])
                        runs[mode]["p99_ms"].append(lat["p99"])
                        print(
                            f"sync bench round {r + 1}, {mode}: {tput:.0f} creates/s (16 "
                            f"clients), at 100/s p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms",
                            file=sys.stderr,
                        )
            acks = apis["sync"].request("GET", "/metrics")[2]
            degraded = [
                line for line in str(acks).splitlines()
                if line.startswith("haplane_sync_acknowledgements_total")
            ]  # fmt: skip
    finally:
        await asyncio.gather(*(a.stop() for a in apis.values()))
        await ctl_c.stop()
    med = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in runs.items()}
    out = {
        "rounds": rounds,
        "median": med,
        "ratio_sync_over_async": {
            k: round(med["sync"][k] / med["async"][k], 2) for k in med["sync"]
        },
        "sync_acknowledgements": degraded,
    }
    print(f"sync vs async: {json.dumps(out)}", file=sys.stderr)
    return out


async def _closed_loop(http: aiohttp.ClientSession, url: str, seconds: float, n: int) -> float:
    done = 0
    end = time.monotonic() + seconds

    async def client(c: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < end:
            body = {
                "metadata": {"name": f"t{c}-{i}-{time.monotonic_ns()}"},
                "data": {"v": "x" * 1000},
            }
            async with http.post(url, json=body) as r:
                await r.read()
                if r.status == 201:
                    done += 1
            i += 1

    t0 = time.monotonic()
    await asyncio.gather(*(client(c) for c in range(n)))
    return done / (time.monotonic() - t0)


async def _paced_latency(
    http: aiohttp.ClientSession, url: str, rate: float, seconds: float
) -> dict[str, float]:
    latencies: list[float] = []

    async def create(i: int) -> int:
        body = {"metadata": {"name": f"l{i}-{time.monotonic_ns()}"}, "data": {"v": "x" * 1000}}
        t0 = time.monotonic()
        async with http.post(url, json=body) as r:
            await r.read()
        latencies.append((time.monotonic() - t0) * 1000)
        return 0

    await paced(rate, seconds, create)
    return percentiles(latencies)


def bench_failover(runs: int) -> dict:
    """Region-kill drills on the two-regions example, Async pairs then Sync pairs (root: every
    site in its own network namespace), through `bench/drills.py`'s code."""
    import drills  # bench/drills.py, beside this file

    out: dict[str, Any] = {}
    for mode in ("Async", "Sync"):
        doc = drills.example_doc(mode=mode)
        res = drills.run_scenarios(doc, ["region-kill"], runs, label=f"[{mode}] ")
        out[mode] = res["region-kill"]
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        }
    }
    with tempfile.TemporaryDirectory(prefix="haplane-bench-repl-") as tmp:
        root = Path(tmp)
        if args.only in (None, "lag", "throughput", "sync"):
            src_c = EtcdCluster(root / "src", scope="src", unsafe_no_fsync=False,
                                heartbeat_ms=50, election_ms=500)  # fmt: skip
            dst_c = EtcdCluster(root / "dst", scope="dst", unsafe_no_fsync=False,
                                heartbeat_ms=50, election_ms=500)  # fmt: skip
            await asyncio.gather(src_c.start(), dst_c.start())
            proc = None
            try:
                async with dst_c.client(5.0) as dst:
                    await dst.put(FENCE_KEY, FenceValue.standby("src", 1).encode())
                    applied = Applied(dst)
                    watching = asyncio.create_task(applied.run())
                    proc = spawn_replicator(src_c, dst_c, root / "replicator.log")
                    while not applied.times:  # noqa: ASYNC110 (the first resync ends)
                        await asyncio.sleep(0.05)
                    if args.only in (None, "lag"):
                        out["lag_ms"] = await bench_lag(src_c, applied, root, args.seconds)
                    if args.only in (None, "throughput"):
                        out["throughput"] = await bench_throughput(
                            src_c, applied, args.throughput_keys
                        )
                    if args.only in (None, "sync"):
                        out["sync"] = await bench_sync(
                            src_c, dst_c, root, args.seconds, args.sync_rounds
                        )
                    watching.cancel()
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=10)
                await asyncio.gather(src_c.stop(), dst_c.stop())
        if args.only in (None, "resync"):
            out["resync"] = await bench_resync(root, args.resync_objects)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["lag", "throughput", "resync", "sync", "failover"])
    ap.add_argument("--failover-runs", type=int, default=5)
    ap.add_argument(
        "--sync-rounds", type=int, default=4, help="alternating rounds of each mode (sync bench)"
    )
    ap.add_argument("--seconds", type=float, default=10.0, help="per paced rate")
    ap.add_argument("--throughput-keys", type=int, default=20000)
    ap.add_argument("--resync-objects", type=int, default=100_000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = asyncio.run(main_async(args)) if args.only != "failover" else {}
    if args.only in (None, "failover"):
        out["failover"] = bench_failover(args.failover_runs)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
