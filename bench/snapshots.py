"""Benchmark: physical snapshots and restores (issue 19): snapshot time and size, restore RTO
for 10,000 and 100,000 objects, and what a snapshot costs concurrent writes.

For each size: a fresh 3-member etcd (fsync on, the fast election settings of tests) filled
with that many ConfigMap-shaped JSON values (~1 KB each, stored as the API stores them, under
/registry/configmaps/), then `--rounds` rounds of:

- snapshot: `haplane.store.snapshot.take` from a follower (stream, etcd's trailing sha256,
  `etcdctl snapshot status`), seconds and bytes;
- restore: `etcdctl snapshot restore` into three new data dirs under a new token, the three
  members started, until a linearizable read answers (the RTO of the data), and the keyspace
  compared with the source (sha256 of every key and value; must be equal);

and on the largest size, side by side in one run: a writer with `--concurrency` puts in
flight (1 KB values) measured over windows without a snapshot and windows while a snapshot
streams from a follower, interleaved (`--rounds` of each); writes per second and p99 latency,
and the ratio.

    .venv/bin/python bench/snapshots.py [--sizes 10000,100000] [--rounds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from haplane.local.etcd_cluster import EtcdCluster
from haplane.local.restore_drill import keyspace_digest
from haplane.store import EtcdClient, Op, etcd_member_name
from haplane.store.snapshot import DirectoryStore, RestoreMember, restore_data_dirs, take

BATCH = 500


def value(i: int) -> bytes:
    obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"cm-{i:06d}",
            "namespace": "bench",
            "uid": f"{i:08x}-0000-4000-8000-000000000000",
            "labels": {"app": "bench", "shard": str(i % 16)},
        },
        "data": {"payload": "x" * 800},
    }
    return json.dumps(obj).encode()


async def fill(client: EtcdClient, n: int) -> None:
    for start in range(0, n, BATCH):
        ops = [
            Op("put", f"/registry/configmaps/bench/cm-{i:06d}".encode(), value(i))
            for i in range(start, min(n, start + BATCH))
        ]
        await client.txn([], ops, timeout=30.0)


async def restore_once(store: DirectoryStore, sid: str, root: Path) -> tuple[float, float, str]:
    target = EtcdCluster(root, size=3, scope="restored", unsafe_no_fsync=False)
    members = [
        RestoreMember(
            etcd_member_name(m), target.addresses[m.qualified_name].peer_url, root / "data" / m.name
        )
        for m in target.view.members
    ]
    t0 = time.monotonic()
    await asyncio.to_thread(restore_data_dirs, store.path(sid), members, f"bench-{time.time_ns()}")
    restored = time.monotonic() - t0
    await target.start(timeout=120.0)
    try:
        async with target.client(timeout=10.0) as c:
            await c.get(b"/registry/health")
            ready = time.monotonic() - t0
            _, digest = await keyspace_digest(c)
    finally:
        await target.stop()
        shutil.rmtree(root, ignore_errors=True)
    return restored, ready, digest


async def writer_window(
    client: EtcdClient, seconds: float | None, concurrency: int, until: asyncio.Event | None
) -> tuple[float, float]:
    """(writes per second, p99 seconds) over `seconds`, or until `until` is set."""
    latencies: list[float] = []
    stop = asyncio.Event()
    payload = b"w" * 1000

    async def one(w: int) -> None:
        i = 0
        while not stop.is_set():
            t = time.monotonic()
            await client.put(f"/registry/configmaps/load/w{w}-{i % 1000}".encode(), payload,
                             timeout=10.0)  # fmt: skip
            latencies.append(time.monotonic() - t)
            i += 1

    t0 = time.monotonic()
    tasks = [asyncio.create_task(one(w)) for w in range(concurrency)]
    if until is not None:
        await until.wait()
    else:
        await asyncio.sleep(seconds or 1.0)
    stop.set()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    return len(latencies) / elapsed, p99


async def main(sizes: list[int], rounds: int, concurrency: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-snap-"))
    try:
        for n in sizes:
            source = EtcdCluster(tmp / f"src-{n}", size=3, scope="src", unsafe_no_fsync=False)
            await source.start()
            try:
                async with source.client(timeout=10.0) as c:
                    t = time.monotonic()
                    await fill(c, n)
                    print(f"{n} objects written in {time.monotonic() - t:.1f} s", flush=True)
                    store = DirectoryStore(tmp / f"snaps-{n}")
                    snaps, sizes_b, etcdctl, rto = [], [], [], []
                    for r in range(rounds):
                        meta = await take(c, store, scope="src", topology="bench")
                        snaps.append(meta.seconds)
                        sizes_b.append(meta.size)
                        _, want = await keyspace_digest(c, meta.revision)
                        restored, ready, got = await restore_once(store, meta.id, tmp / f"r{n}-{r}")
                        assert got == want, "the restored keyspace differs"
                        etcdctl.append(restored)
                        rto.append(ready)
                        store.delete(meta.id)
                    print(
                        f"{n:>7} objects: snapshot {statistics.median(snaps):.2f} s "
                        f"(rounds {', '.join(f'{x:.2f}' for x in snaps)}), "
                        f"{statistics.median(sizes_b) / 2**20:.1f} MiB; restore RTO "
                        f"{statistics.median(rto):.2f} s (rounds "
                        f"{', '.join(f'{x:.2f}' for x in rto)}; etcdctl "
                        f"{statistics.median(etcdctl):.2f} s of it); keyspace equal",
                        flush=True,
                    )
                    if n == max(sizes):
                        await write_cost(c, store, rounds, concurrency)
            finally:
                await source.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def write_cost(c: EtcdClient, store: DirectoryStore, rounds: int, concurrency: int) -> None:
    base, during = [], []

    async def snapshot(done: asyncio.Event) -> float:
        meta = await take(c, store, scope="src", topology="bench")
        store.delete(meta.id)
        done.set()
        return meta.seconds

    for _ in range(rounds):
        done = asyncio.Event()
        snap = asyncio.create_task(snapshot(done))
        during.append(await writer_window(c, None, concurrency, done))
        seconds = await snap
        base.append(await writer_window(c, seconds, concurrency, None))
    b = statistics.median(x for x, _ in base)
    d = statistics.median(x for x, _ in during)
    bp = statistics.median(p for _, p in base)
    dp = statistics.median(p for _, p in during)
    print(
        f"writes ({concurrency} in flight, 1 KB): {b:.0f}/s without a snapshot, {d:.0f}/s "
        f"while one streams: {d / b:.2f}x (rounds {', '.join(f'{x:.0f}' for x, _ in during)} "
        f"vs {', '.join(f'{x:.0f}' for x, _ in base)}); p99 {bp * 1000:.1f} ms vs "
        f"{dp * 1000:.1f} ms",
        flush=True,
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16)
    a = p.parse_args()
    asyncio.run(main([int(x) for x in a.sizes.split(",")], a.rounds, a.concurrency))
