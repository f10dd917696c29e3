"""Benchmark: what encryption at rest costs Secrets. Three replicas side by side in one run,
each on its own etcd (3 members, fsync on):
- identity: Secrets stored as they are (no `--encryption-provider-config`);
- encrypted: haplane's default configuration (KMS v2 envelope under a local key-encryption
  key: a key derived per write with HKDF-SHA256, AES-256-GCM);
- plugin: the same envelope, its seed wrapped by a KMS v2 plugin over a unix socket
  (haplane's reference plugin, `python -m haplane.auth.kms_plugin`, as a process of its own).
Load from wrk (2 threads, keep-alive), `--rounds` interleaved rounds of creates (~1 KiB
Secrets), quorum GETs (read from etcd and decrypted each time) and cached GETs
(resourceVersion=0: the watch cache holds decrypted objects); ratios encrypted / identity,
plugin / identity and plugin / encrypted are the medians of the rounds'. Then cold reads in
one process: `--seeds` values each under a seed of its own (as `--seeds` replica starts would
leave them), read by a provider that has unwrapped none, so each read unwraps (the local key
in-process, the plugin by a Decrypt over its socket), then read again (all unwrapped). Then
`haplane secrets rewrite`'s speed: `--objects` Secrets sealed under one key, re-sealed under a
new one (objects/s, the verification pass included).

    .venv/bin/python bench/encryption.py [--seconds 6] [--rounds 3] [--connections 32]
                                         [--seeds 500] [--objects 2000]
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
from haplane.auth.kms_plugin import PluginProcess
from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import FenceValue, RegionFence

SECRETS = "/api/v1/namespaces/bench/secrets"
REPLICAS = ("identity", "encrypted", "plugin")  # each replica's GET reads the Secret of its name


def plugin_config(endpoint: str) -> str:
    return (
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
        "  - resources: [secrets]\n    providers:\n      - kms:\n          apiVersion: v2\n"
        f"          name: plugin\n          endpoint: {endpoint}\n      - identity: {{}}\n"
    )


async def setup(
    root: Path, plugin: PluginProcess
) -> tuple[list[EtcdCluster], dict[str, ApiReplica]]:
    # one etcd cluster each: a replica without the configuration cannot read the other's
    # sealed Secrets (its watch cache would refuse them)
    clusters = [
        EtcdCluster(root / f"etcd-{name}", heartbeat_ms=50, election_ms=500, unsafe_no_fsync=False)
        for name in REPLICAS
    ]
    for cluster in clusters:
        await cluster.start()
        async with cluster.client(timeout=2.0) as client:
            fence = RegionFence("bench", client)
            await fence.swap(await fence.read(), FenceValue.active("bench", 0))
    key = root / "kek.key"
    create_local_key(key)
    (root / "enc.yaml").write_text(default_config(key))
    (root / "plugin.yaml").write_text(plugin_config(plugin.endpoint))
    flag = "--encryption-provider-config"
    args = {"identity": [], "encrypted": [flag, str(root / "enc.yaml")],
            "plugin": [flag, str(root / "plugin.yaml")]}  # fmt: skip
    replicas = {
        name: ApiReplica(root, name, cluster.endpoints, region="bench", extra_args=args[name])
        for name, cluster in zip(REPLICAS, clusters, strict=True)
    }
    for name, replica in replicas.items():
        await replica.start()
        replica.request("POST", "/api/v1/namespaces", {"metadata": {"name": "bench"}})
        body = {"metadata": {"name": name}, "data": {"p": base64.b64encode(b"x" * 750).decode()}}
        assert replica.request("POST", SECRETS, body)[0] == 201
    return clusters, replicas


def cold_reads(root: Path, plugin: PluginProcess, seeds: int) -> None:
    """`seeds` values, each under its own seed, read by a provider that has unwrapped none of
    them (one unwrap per read: what a replica meets reading what many others wrote), then read
    again; the local key against the plugin, in this process."""
    from haplane.auth.encryption import KmsV2, LocalKek
    from haplane.auth.kms_client import KmsPlugin, KmsV2Plugin

    def local() -> KmsV2:
        return KmsV2("local", LocalKek(root / "kek.key"))

    def via_plugin() -> KmsV2:
        return KmsV2Plugin("plugin", KmsPlugin(plugin.endpoint, 3.0))

    key = b"/registry/secrets/bench/cold"
    value = b'{"data":{"p":"' + base64.b64encode(b"x" * 750) + b'"}}'
    print(f"\ncold reads: {seeds} values, each under a seed of its own")
    results = {}
    for name, make in (("local key", local), ("plugin", via_plugin)):
        t0 = time.monotonic()
        stored = []
        for _ in range(seeds):  # a provider per value: a seed per value
            writer = make()
            stored.append(writer.encrypt(value, key))
            writer.close()
        made = (time.monotonic() - t0) / seeds
        reader = make()
        reader.encrypt(value, key)  # its own seed made (its first Status poll over): not timed
        runs = []
        for _ in range(2):  # unwrapping each seed, then all of them unwrapped
            t0 = time.monotonic()
            for v in stored:
                assert reader.decrypt(v, key) == value
            runs.append((time.monotonic() - t0) / seeds)
        reader.close()
        results[name] = runs
        print(
            f"  {name:<10} read, unwrapping: {runs[0] * 1e6:7.0f} us/value; unwrapped: "
            f"{runs[1] * 1e6:5.0f} us/value; a new provider's first seed: {made * 1e6:.0f} us "
            "(for the plugin: connect, Status, Encrypt)"
        )
    cold, warm = (results["plugin"][i] / results["local key"][i] for i in (0, 1))
    print(f"  plugin / local key: {cold:.2f}x per read unwrapping, {warm:.2f}x unwrapped")


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
    ap.add_argument("--seeds", type=int, default=500)
    ap.add_argument("--objects", type=int, default=2000)
    args = ap.parse_args()
    loop = asyncio.new_event_loop()
    with (
        tempfile.TemporaryDirectory(prefix="haplane-bench-") as tmp,
        tempfile.TemporaryDirectory(prefix="kms-", dir="/tmp") as sockets,  # a short path
    ):
        create_local_key(Path(tmp) / "plugin.key")
        plugin = PluginProcess(Path(sockets) / "kms.sock", [Path(tmp) / "plugin.key"])
        plugin.start()
        clusters, replicas = loop.run_until_complete(setup(Path(tmp), plugin))
        try:
            s, c = args.seconds, args.connections
            print(f"wrk -t2 -c{c}, {s:g}s per case, {args.rounds} interleaved rounds")
            print(f"{'case':<34}{'req/s':>9}{'p99 ms':>9}{'CPU us/req':>12}")
            ratios: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
            pairs = (("encrypted", "identity"), ("plugin", "identity"), ("plugin", "encrypted"))
            for i in range(args.rounds):
                cases = {
                    "create": lambda name, r: load_wrk_create(
                        r.url, s, c, r.process.pid, path=SECRETS
                    ),
                    "quorum get": lambda name, r: wrk_get(
                        r.url, s, c, r.process.pid, None, path=f"{SECRETS}/{name}"
                    ),
                    "cached get": lambda name, r: wrk_get(
                        r.url, s, c, r.process.pid, None,
                        path=f"{SECRETS}/{name}?resourceVersion=0",
                    ),
                }  # fmt: skip
                for what, run in cases.items():
                    got = {name: run(name, r) for name, r in replicas.items()}
                    for name, r in got.items():
                        label = f"{i + 1}: {what}, {name}"
                        print(f"{label:<34}{r['rps']:>9.0f}{r['p99_ms']:>9.1f}{r['cpu_us']:>12.0f}")
                    for a, b in pairs:
                        ratios.setdefault((what, a, b), []).append(
                            (got[a]["rps"] / got[b]["rps"], got[a]["cpu_us"] / got[b]["cpu_us"])
                        )
            for (what, a, b), xs in ratios.items():
                print(
                    f"{what}: {a} / {b} = {statistics.median(x[0] for x in xs):.2f}x "
                    f"throughput (rounds {', '.join(f'{x[0]:.2f}' for x in xs)}), "
                    f"{statistics.median(x[1] for x in xs):.2f}x replica CPU per request"
                )
            cold_reads(Path(tmp), plugin, args.seeds)
            loop.run_until_complete(
                rewrite_speed(Path(tmp), clusters[1], replicas["encrypted"], args.objects)
            )
        finally:
            for replica in replicas.values():
                loop.run_until_complete(replica.stop())
            for cluster in clusters:
                loop.run_until_complete(cluster.stop())
            plugin.stop()


if __name__ == "__main__":
    main()
