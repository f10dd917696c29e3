"""Benchmark: what encryption at rest costs Secrets. Two replicas side by side in one run, each
on its own etcd (3 members, fsync on):
- identity: Secrets stored as they are (no `--encryption-provider-config`);
- encrypted: haplane's default configuration (KMS v2 envelope under a local key-encryption
  key: a key derived per write with HKDF-SHA256, AES-256-GCM).
Load from wrk (2 threads, keep-alive), `--rounds` interleaved rounds of creates (~1 KiB
Secrets), quorum GETs (read from etcd and decrypted each time) and cached GETs
(resourceVersion=0: the watch cache holds decrypted objects); ratios encrypted / identity are
the medians of the rounds'. Then `haplane secrets rewrite`'s speed: `--objects` Secrets sealed
under one key, re-sealed under a new one (objects/s, the verification pass included).

    .venv/bin/python bench/encryption.py [--seconds 6] [--rounds 3] [--connections 32]
                                         [--objects 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import tempfile
import time
from pathlib import Path

from api_server import load_wrk_create  # bench/ is on sys.path
from security import wrk_get

from haplane.auth.encryption import create_local_key, default_config
from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import FenceValue, RegionFence

SECRETS = "/api/v1/namespaces/bench/secrets"


async def setup(root: Path) -> tuple[list[EtcdCluster], ApiReplica, ApiReplica]:
    # one etcd cluster each: a replica without the configuration cannot read the other's
    # sealed Secrets (its watch cache would refuse them)
    clusters = [
        EtcdCluster(root / name, heartbeat_ms=50, election_ms=500, unsafe_no_fsync=False)
        for name in ("etcd-identity", "etcd-encrypted")
    ]
    for cluster in clusters:
        await cluster.start()
        async with cluster.client(timeout=2.0) as client:
            fence = RegionFence("bench", client)
            await fence.swap(await fence.read(), FenceValue.active("bench", 0))
    key = root / "kek.key"
    create_local_key(key)
    (root / "enc.yaml").write_text(default_config(key))
    identity = ApiReplica(root, "identity", clusters[0].endpoints, region="bench")
    encrypted = ApiReplica(
        root,
        "encrypted",
        clusters[1].endpoints,
        region="bench",
        extra_args=["--encryption-provider-config", str(root / "enc.yaml")],
    )
    await identity.start()
    await encrypted.start()
    for replica, name in ((identity, "plain"), (encrypted, "sealed")):
        replica.request("POST", "/api/v1/namespaces", {"metadata": {"name": "bench"}})
        body = {"metadata": {"name": name}, "data": {"p": base64.b64encode(b"x" * 750).decode()}}
        assert replica.request("POST", SECRETS, body)[0] == 201
    return clusters, identity, encrypted


async def rewrite_speed(root: Path, cluster: EtcdCluster, replica: ApiReplica, n: int) -> None:
    """`secrets_ops.rewrite` (what `haplane secrets rewrite` runs) over `n` Secrets sealed
    under `local`, after `local-2` became the writer."""
    from haplane.api.encryption import transformers
    from haplane.api.resources import BUILTIN
    from haplane.auth.encryption import local_config
    from haplane.local.secrets_ops import rewrite
    from haplane.local.state_dir import StateDir
    from haplane.store import GlobalState

    body = {"data": {"p": base64.b64encode(b"x" * 750).decode()}}
    t0 = time.monotonic()
    for i in range(n):
        status = replica.request("POST", SECRETS, {**body, "metadata": {"name": f"rw-{i}"}})[0]
        assert status == 201
    made = time.monotonic() - t0
    new_key = root / "kek-2.key"
    create_local_key(new_key)
    config = root / "rotated.yaml"
    config.write_text(local_config([("local-2", new_key), ("local", root / "kek.key")]))
    state = StateDir(root / "state")
    (state.root / "encryption").mkdir(parents=True)
    async with cluster.client(timeout=5.0) as client:
        await GlobalState(client).initialize("bench", by="bench", reason="bench", fresh=True)
        t0 = time.monotonic()
        r = await rewrite(
            state, client, {"bench": client}, transformers(config, BUILTIN), settle=0.0
        )
        took = time.monotonic() - t0
    print(
        f"\nrewrite: {r.rewritten} of {r.examined} values re-sealed in {took:.1f}s "
        f"= {r.rewritten / took:.0f} objects/s ({r.passes} passes; creating them through the "
        f"API took {made:.1f}s = {n / made:.0f}/s, one client)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--objects", type=int, default=2000)
    args = ap.parse_args()
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="haplane-bench-") as tmp:
        clusters, identity, encrypted = loop.run_until_complete(setup(Path(tmp)))
        try:
            s, c = args.seconds, args.connections
            print(f"wrk -t2 -c{c}, {s:g}s per case, {args.rounds} interleaved rounds")
            print(f"{'case':<34}{'req/s':>9}{'p99 ms':>9}{'CPU us/req':>12}")
            ratios: dict[str, list[tuple[float, float]]] = {}
            for i in range(args.rounds):
                cases = {
                    "create": lambda r: load_wrk_create(
                        r.url, s, c, r.process.pid, path=SECRETS
                    ),
                    "quorum get": lambda r: wrk_get(
                        r.url, s, c, r.process.pid, None,
                        path=f"{SECRETS}/{'sealed' if r is encrypted else 'plain'}",
                    ),
                    "cached get": lambda r: wrk_get(
                        r.url, s, c, r.process.pid, None,
                        path=f"{SECRETS}/{'sealed' if r is encrypted else 'plain'}"
                        "?resourceVersion=0",
                    ),
                }  # fmt: skip
                for what, run in cases.items():
                    p, q = run(identity), run(encrypted)
                    for name, r in (("identity", p), ("encrypted", q)):
                        label = f"{i + 1}: {what}, {name}"
                        print(f"{label:<34}{r['rps']:>9.0f}{r['p99_ms']:>9.1f}{r['cpu_us']:>12.0f}")
                    ratios.setdefault(what, []).append(
                        (q["rps"] / p["rps"], q["cpu_us"] / p["cpu_us"])
                    )
            for what, xs in ratios.items():
                print(
                    f"{what}: encrypted / identity = {statistics.median(x[0] for x in xs):.2f}x "
                    f"throughput (rounds {', '.join(f'{x[0]:.2f}' for x in xs)}), "
                    f"{statistics.median(x[1] for x in xs):.2f}x replica CPU per request"
                )
            loop.run_until_complete(rewrite_speed(Path(tmp), clusters[1], encrypted, args.objects))
        finally:
            for replica in (identity, encrypted):
                loop.run_until_complete(replica.stop())
            for cluster in clusters:
                loop.run_until_complete(cluster.stop())


if __name__ == "__main__":
    main()
