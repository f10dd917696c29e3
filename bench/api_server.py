"""Benchmark: the API server against raw etcd, and with its watch cache against without.

Everything runs side by side in one invocation on this machine:
- a 3-member etcd (data on disk, fsync on) and three API replicas on it: one with the watch
  cache, one started with --no-watch-cache, and one with the data fence on (`--data-fence`:
  every write also compares the region's fence key, as replicas under `haplane up` do);
- load from wrk (creates: `bench/wrk_create.lua`, 2 threads) or from several worker processes
  (never one Python client process), each an asyncio loop with aiohttp or haplane's etcd client,
  `--concurrency` requests in flight per process; wrk holds workers x concurrency connections,
  so both see the same number of requests in flight;
- objects: ConfigMaps of ~1 KiB; lists: a namespace holding 100 of them.

Reported: requests/s, p50/p99 latency, and µs of the replica's CPU per request (psutil, the
replica's own user+system time over the run); ratios: creates through the API vs raw etcd txns
(create-if-absent, same client library and concurrency), cached vs uncached gets and lists,
creates with the fence key's compare against without.
Creates run `--rounds` times, raw and API interleaved, and the ratio is the median of the
rounds': the box is shared and noisy, and etcd's own rate moves by a third between runs.

Why wrk for the API's creates: everything shares 2 vCPUs, and an aiohttp client spends about as
much CPU per request as the replica's HTTP layer does (~250 µs, measured with psutil), which
would be taken from the replica and etcd. The raw etcd load must use haplane's etcd client (the
comparison is "through the API" against "that client straight to etcd"), so it stays Python.
The API create with Python workers is printed too, for comparison.
Then watch fan-out: `--watchers` watches on the cached replica while one writer updates an object
10 times a second; delivery latency = receive time - write time (same host clock).

    .venv/bin/python bench/api_server.py [--seconds 8] [--workers 3] [--watchers 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from wrk_report import parse_wrk  # bench/ is the script's directory, so on sys.path

from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import Compare, EtcdClient, FenceValue, Op, RegionFence

PAYLOAD = "x" * 1000


# ---- load workers (separate processes) ---------------------------------------------------


def _worker(kind: str, target: str, seconds: float, concurrency: int, wid: str, out: Any) -> None:
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
                    r = await client.txn(
                        [Compare(key, "mod", "=", 0)],
                        [Op("put", key, json.dumps({"data": PAYLOAD}).encode())],
                        [Op("get", key)],
                    )
                    assert r.succeeded, key  # a create, not a read of an existing key
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

    try:
        out.put(asyncio.run(run()))
    except BaseException as exc:  # the parent must hear of it, not wait forever
        out.put(exc)
        raise


def load(
    kind: str, target: str, seconds: float, workers: int, concurrency: int, server_pid: int | None
) -> dict[str, float]:
    q: Any = mp.Queue()
    cpu0 = _cpu(server_pid)
    t0 = time.monotonic()
    run = time.time_ns()  # names unique across calls: a repeated one would be a conflict
    procs = [
        mp.Process(target=_worker, args=(kind, target, seconds, concurrency, f"{run}-{i}", q))
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    lat: list[float] = []
    for _ in procs:
        got = q.get()
        if isinstance(got, BaseException):
            for p in procs:
                p.kill()
            raise RuntimeError(f"a {kind} load worker failed: {got!r}")
        lat += got
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


WRK_CREATE = Path(__file__).with_name("wrk_create.lua")


def load_wrk_create(
    url: str,
    seconds: float,
    connections: int,
    server_pid: int,
    path: str = "/api/v1/namespaces/bench/configmaps",
) -> dict[str, float]:
    """Creates from wrk (~1 KiB ConfigMaps, or Secrets at a secrets `path`: the payload is
    valid base64); every answer must be 201 (wrk counts the others)."""
    env = {**os.environ, "BENCH_RUN": f"wrk{time.time_ns()}", "BENCH_PATH": path}
    cpu0 = _cpu(server_pid)
    out = subprocess.run(
        [
            *("wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "30s"),
            *("-s", str(WRK_CREATE), url),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = _cpu(server_pid) - cpu0
    r = parse_wrk(out)
    assert not r["non2xx"], f"creates answered with errors:\n{out}"
    assert not r["socket_errors"], f"connections failed:\n{out}"
    return {
        "rps": r["n"] / r["seconds"],
        "p50_ms": r["p50"],
        "p99_ms": r["p99"],
        "cpu_us": cpu / r["n"] * 1e6,
        "n": r["n"],
        "wall": r["seconds"],
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
    t_start = time.monotonic()
    t_end = t_start + seconds
    while time.monotonic() < t_end:
        replica.request(
            "PATCH",
            "/api/v1/namespaces/fanout/configmaps/tick",
            {"data": {"t": repr(time.time())}},
            content_type="application/merge-patch+json",
        )
        writes += 1
        # 10 a second on the clock, whatever each write took
        time.sleep(max(0.0, t_start + writes * 0.1 - time.monotonic()))
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


async def setup(root: Path) -> tuple[EtcdCluster, ApiReplica, ApiReplica, ApiReplica]:
    cluster = EtcdCluster(root / "etcd", heartbeat_ms=50, election_ms=500, unsafe_no_fsync=False)
    await cluster.start()
    async with cluster.client(timeout=2.0) as client:  # a bare replica writes under epoch 0
        fence = RegionFence("bench", client)
        await fence.swap(await fence.read(), FenceValue.active("bench", 0))
    cached = ApiReplica(root, "cached", cluster.endpoints, region="bench")
    uncached = ApiReplica(root, "uncached", cluster.endpoints, region="bench")
    uncached.process.spec.argv.append("--no-watch-cache")
    fenced = ApiReplica(root, "fenced", cluster.endpoints, region="bench")
    fenced.process.spec.argv.append("--data-fence")
    for replica in (cached, uncached, fenced):
        await replica.start()
    return cluster, cached, uncached, fenced


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--watchers", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the creates")
    ap.add_argument("--only", choices=("all", "requests", "fanout", "fence"), default="all")
    args = ap.parse_args()
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="haplane-bench-") as tmp:
        cluster, cached, uncached, fenced = loop.run_until_complete(setup(Path(tmp)))
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
            if args.only in ("all", "requests"):
                creates(cluster, cached, w, c, s, args.rounds)
                requests(cached, uncached, w, c, s)
            if args.only in ("all", "fence"):
                fence_cost(cached, fenced, w * c, s, args.rounds)
            if args.only in ("all", "fanout"):
                f = fanout(cached, args.watchers, 10.0, 4)
                print(
                    f"watch fan-out: {f['watchers']} watchers, {f['writes']} writes at 10/s -> "
                    f"{f['deliveries']}/{f['expected']} deliveries, p50 {f['p50_ms']:.0f} ms, "
                    f"p99 {f['p99_ms']:.0f} ms, replica CPU {f['cpu_percent']:.0f}% of a core"
                )
        finally:
            loop.run_until_complete(cached.stop())
            loop.run_until_complete(uncached.stop())
            loop.run_until_complete(fenced.stop())
            loop.run_until_complete(cluster.stop())


def _row(name: str, r: dict[str, float]) -> None:
    print(f"{name:<34}{r['rps']:>9.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['cpu_us']:>12.0f}")


def _header() -> None:
    print(f"{'case':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}")


def creates(
    cluster: EtcdCluster, cached: ApiReplica, w: int, c: int, s: float, rounds: int
) -> None:
    print(
        f"creates: {rounds} interleaved rounds of {s:.0f}s, {w * c} in flight (raw etcd: {w} "
        f"worker processes x {c}; API: wrk -t2 -c{w * c}, and {w} aiohttp workers x {c}); "
        "2 vCPUs shared by etcd, replicas and load"
    )
    _header()
    pid = cached.process.pid
    ratios, ratios_py = [], []
    for i in range(rounds):
        raw = load("etcd-create", ",".join(cluster.endpoints), s, w, c, None)
        api = load_wrk_create(cached.url, s, w * c, pid)
        api_py = load("create", cached.url, s, w, c, pid)
        _row(f"{i + 1}: etcd txn create (raw)", raw)
        _row(f"{i + 1}: API create (wrk)", api)
        _row(f"{i + 1}: API create (aiohttp workers)", api_py)
        ratios.append(api["rps"] / raw["rps"])
        ratios_py.append(api_py["rps"] / raw["rps"])
    print(
        f"creates: API / raw etcd = {statistics.median(ratios):.2f}x median "
        f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}); with aiohttp workers as load "
        f"{statistics.median(ratios_py):.2f}x ({', '.join(f'{r:.2f}' for r in ratios_py)})"
    )


def fence_cost(plain: ApiReplica, fenced: ApiReplica, inflight: int, s: float, rounds: int) -> None:
    """Creates with the data fence's compare (one more compare and, on failure only, one more
    read in each write's transaction) against without: both replicas have the watch cache,
    rounds interleaved, ratio the median of the rounds'."""
    print(
        f"\ndata fence: {rounds} interleaved rounds of {s:.0f}s, wrk -t2 -c{inflight} creates, "
        "replica without the fence key compare vs with it"
    )
    _header()
    ratios, cpu = [], []
    for i in range(rounds):
        off = load_wrk_create(plain.url, s, inflight, plain.process.pid)
        on = load_wrk_create(fenced.url, s, inflight, fenced.process.pid)
        _row(f"{i + 1}: API create, no fence key", off)
        _row(f"{i + 1}: API create, fence key compared", on)
        ratios.append(on["rps"] / off["rps"])
        cpu.append(on["cpu_us"] / off["cpu_us"])
    print(
        f"data fence: creates with / without = {statistics.median(ratios):.2f}x throughput "
        f"median (rounds: {', '.join(f'{r:.2f}' for r in ratios)}), "
        f"{statistics.median(cpu):.2f}x replica CPU per create"
    )


def requests(cached: ApiReplica, uncached: ApiReplica, w: int, c: int, s: float) -> None:
    print(
        f"\nreads: {w} worker processes x {c} in flight, {s:.0f}s per case, 2 vCPUs shared by "
        "etcd, replicas and load"
    )
    rows = {
        "get rv=0, cache on": load("get", cached.url, s, w, c, cached.process.pid),
        "get rv=0, cache off": load("get", uncached.url, s, w, c, uncached.process.pid),
        "list 100 rv=0, cache on": load("list", cached.url, s, w, c, cached.process.pid),
        "list 100 rv=0, cache off": load("list", uncached.url, s, w, c, uncached.process.pid),
    }
    _header()
    for name, r in rows.items():
        _row(name, r)
    for what in ("get", "list 100"):
        on, off = rows[f"{what} rv=0, cache on"], rows[f"{what} rv=0, cache off"]
        print(
            f"{what}: cache on / off = {on['rps'] / off['rps']:.2f}x throughput, "
            f"{off['cpu_us'] / on['cpu_us']:.2f}x less server CPU per request"
        )


if __name__ == "__main__":
    main()
