"""Benchmark: the API server against raw etcd, and with its watch cache against without.

Everything runs side by side in one invocation on this machine:
- a 3-member etcd (data on disk, fsync on) and two API replicas on it: one with the watch cache,
  one started with --no-watch-cache;
- load from several worker processes (never one Python client process), each an asyncio loop
  with aiohttp, `--concurrency` requests in flight per process;
- objects: ConfigMaps of ~1 KiB; lists: a namespace holding 100 of them.

Reported: requests/s, p50/p99 latency, and µs of the replica's CPU per request (psutil, the
replica's own user+system time over the run); ratios: creates through the API vs raw etcd txns
(create-if-absent, same client library and concurrency), cached vs uncached gets and lists.
Then watch fan-out: `--watchers` watches on the cached replica while one writer updates an object
10 times a second; delivery latency = receive time - write time (same host clock).

    .venv/bin/python bench/api_server.py [--seconds 8] [--workers 3] [--watchers 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import Compare, EtcdClient, Op

PAYLOAD = "x" * 1000


# ---- load workers (separate processes) ---------------------------------------------------


def _worker(kind: str, target: str, seconds: float, concurrency: int, wid: int, out: Any) -> None:
    async def run() -> list[float]:
        latencies: list[float] = []
        deadline = time.monotonic() + seconds
        counter = 0

        async def loop(session: aiohttp.ClientSession | None, client: EtcdClient | None) -> None:
            nonlocal counter
            while time.monotonic() < deadline:
                counter += 1
                n = f"w{wid}-{counter}"
                t0 = time.perf_counter()
                if kind == "etcd-create":
                    assert client is not None
                    key = f"/bench/raw/{n}".encode()
                    await client.txn(
                        [Compare(key, "mod", "=", 0)],
                        [Op("put", key, json.dumps({"data": PAYLOAD}).encode())],
                        [Op("get", key)],
                    )
                else:
                    assert session is not None
                    if kind == "create":
                        url = f"{target}/api/v1/namespaces/bench/configmaps"
                        async with session.post(
                            url, json={"metadata": {"name": n}, "data": {"p": PAYLOAD}}
                        ) as r:
                            await r.read()
                            assert r.status == 201, r.status
                    else:
                        url = (
                            f"{target}/api/v1/namespaces/list100/configmaps/c0?resourceVersion=0"
                            if kind == "get"
                            else f"{target}/api/v1/namespaces/list100/configmaps?resourceVersion=0"
                        )
                        async with session.get(url) as r:
                            await r.read()
                            assert r.status == 200, r.status
                latencies.append(time.perf_counter() - t0)

        if kind == "etcd-create":
            async with EtcdClient(target.split(","), timeout=5.0) as client:
                await asyncio.gather(*(loop(None, client) for _ in range(concurrency)))
        else:
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                await asyncio.gather(*(loop(session, None) for _ in range(concurrency)))
        return latencies

    out.put(asyncio.run(run()))


def load(
    kind: str, target: str, seconds: float, workers: int, concurrency: int, server_pid: int | None
) -> dict[str, float]:
    q: Any = mp.Queue()
    cpu0 = _cpu(server_pid)
    t0 = time.monotonic()
    procs = [
        mp.Process(target=_worker, args=(kind, target, seconds, concurrency, i, q))
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    lat: list[float] = []
    for _ in procs:
        lat += q.get()
    for p in procs:
        p.join()
    wall = time.monotonic() - t0
    cpu = _cpu(server_pid) - cpu0
    lat.sort()
    n = len(lat)
    return {
        "rps": n / seconds,
        "p50_ms": lat[n // 2] * 1000,
        "p99_ms": lat[int(n * 0.99)] * 1000,
        "cpu_us": (cpu / n * 1e6) if server_pid else float("nan"),
        "n": n,
        "wall": wall,
    }


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


# ---- watch fan-out ---------------------------------------------------------------------------


def _watchers(target: str, count: int, seconds: float, out: Any) -> None:
    async def run() -> list[float]:
        delays: list[float] = []
        url = f"{target}/api/v1/namespaces/fanout/configmaps?watch=true&resourceVersion=0"
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=seconds + 30)

        async def one(session: aiohttp.ClientSession) -> None:
            async with session.get(url) as resp:
                async for line in resp.content:
                    ev = json.loads(line)
                    sent = (ev["object"].get("data") or {}).get("t")
                    if ev["type"] == "MODIFIED" and sent:
                        delays.append(time.time() - float(sent))
                        if float(sent) < 0:
                            return

        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks = [asyncio.create_task(one(session)) for _ in range(count)]
            await asyncio.sleep(seconds + 3)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return delays

    out.put(asyncio.run(run()))


def fanout(replica: ApiReplica, watchers: int, seconds: float, procs_n: int) -> dict[str, float]:
    replica.request("POST", "/api/v1/namespaces", {"metadata": {"name": "fanout"}})
    replica.request(
        "POST",
        "/api/v1/namespaces/fanout/configmaps",
        {"metadata": {"name": "tick"}, "data": {"t": "0"}},
    )
    q: Any = mp.Queue()
    per = watchers // procs_n
    procs = [
        mp.Process(target=_watchers, args=(replica.url, per, seconds + 2, q))
        for _ in range(procs_n)
    ]
    for p in procs:
        p.start()
    time.sleep(2.0)  # let the watches connect
    pid = replica.process.pid
    cpu0 = _cpu(pid)
    writes = 0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        replica.request(
            "PATCH",
            "/api/v1/namespaces/fanout/configmaps/tick",
            {"data": {"t": repr(time.time())}},
            content_type="application/merge-patch+json",
        )
        writes += 1
        time.sleep(0.1)
    cpu = _cpu(pid) - cpu0
    delays: list[float] = []
    for _ in procs:
        delays += q.get()
    for p in procs:
        p.join()
    delays.sort()
    n = len(delays)
    return {
        "watchers": per * procs_n,
        "writes": writes,
        "deliveries": n,
        "expected": writes * per * procs_n,
        "p50_ms": delays[n // 2] * 1000 if n else float("nan"),
        "p99_ms": delays[int(n * 0.99)] * 1000 if n else float("nan"),
        "cpu_percent": cpu / seconds * 100,
    }


# ---- main --------------------------------------------------------------------------------


async def setup(root: Path) -> tuple[EtcdCluster, ApiReplica, ApiReplica]:
    cluster = EtcdCluster(root / "etcd", heartbeat_ms=50, election_ms=500, unsafe_no_fsync=False)
    await cluster.start()
    cached = ApiReplica(root, "cached", cluster.endpoints, region="bench")
    uncached = ApiReplica(root, "uncached", cluster.endpoints, region="bench")
    uncached.process.spec.argv.append("--no-watch-cache")
    await cached.start()
    await uncached.start()
    return cluster, cached, uncached


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--watchers", type=int, default=1000)
    ap.add_argument("--only", choices=("all", "requests", "fanout"), default="all")
    args = ap.parse_args()
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="haplane-bench-") as tmp:
        cluster, cached, uncached = loop.run_until_complete(setup(Path(tmp)))
        try:
            for ns in ("bench", "list100"):
                cached.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
            for i in range(100):
                cached.request(
                    "POST",
                    "/api/v1/namespaces/list100/configmaps",
                    {"metadata": {"name": f"c{i}"}, "data": {"p": PAYLOAD}},
                )
            time.sleep(1.0)
            w, c, s = args.workers, args.concurrency, args.seconds
            if args.only != "fanout":
                requests(cluster, cached, uncached, w, c, s)
            if args.only != "requests":
                f = fanout(cached, args.watchers, 10.0, 4)
                print(
                    f"watch fan-out: {f['watchers']} watchers, {f['writes']} writes at 10/s -> "
                    f"{f['deliveries']}/{f['expected']} deliveries, p50 {f['p50_ms']:.0f} ms, "
                    f"p99 {f['p99_ms']:.0f} ms, replica CPU {f['cpu_percent']:.0f}% of a core"
                )
        finally:
            loop.run_until_complete(cached.stop())
            loop.run_until_complete(uncached.stop())
            loop.run_until_complete(cluster.stop())


def requests(
    cluster: EtcdCluster, cached: ApiReplica, uncached: ApiReplica, w: int, c: int, s: float
) -> None:
    print(
        f"{w} worker processes x {c} in flight, {s:.0f}s per case, 2 vCPUs shared by "
        "etcd, replicas and load"
    )
    rows = {
        "etcd txn create (raw)": load("etcd-create", ",".join(cluster.endpoints), s, w, c, None),
        "API create": load("create", cached.url, s, w, c, cached.process.pid),
        "get rv=0, cache on": load("get", cached.url, s, w, c, cached.process.pid),
        "get rv=0, cache off": load("get", uncached.url, s, w, c, uncached.process.pid),
        "list 100 rv=0, cache on": load("list", cached.url, s, w, c, cached.process.pid),
        "list 100 rv=0, cache off": load("list", uncached.url, s, w, c, uncached.process.pid),
    }
    print(f"{'case':<28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}")
    for name, r in rows.items():
        print(
            f"{name:<28}{r['rps']:>9.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['cpu_us']:>12.0f}"
        )
    print(
        f"creates: API / raw etcd = "
        f"{rows['API create']['rps'] / rows['etcd txn create (raw)']['rps']:.2f}x"
    )
    for what in ("get", "list 100"):
        on, off = rows[f"{what} rv=0, cache on"], rows[f"{what} rv=0, cache off"]
        print(
            f"{what}: cache on / off = {on['rps'] / off['rps']:.2f}x throughput, "
            f"{off['cpu_us'] / on['cpu_us']:.2f}x less server CPU per request"
        )


if __name__ == "__main__":
    main()
