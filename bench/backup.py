"""Benchmark: logical backup and restore time (issue 19, `haplane.backup`).

One API replica (plain HTTP) on a 3-member etcd (fsync on), sealing Secrets at rest under a
local KEK as `haplane up` does; a namespace of `--objects` objects: ConfigMaps (~200 B each)
and one Secret in ten, a tenth of the ConfigMaps owned by another ConfigMap (so the restore
runs two ownership rounds). Per round, measured from the caller's side:

- `backup`: `create_backup` of the namespace (list, strip, seal the Secrets, write, fsync);
- `restore`: after `DELETE` of the namespace and waiting until it is gone, `restore_backup`
  of it (every object created through the API, owners first, references remapped).

`--rounds` rounds (a fresh namespace each), medians and the spread quoted.

    .venv/bin/python bench/backup.py [--objects 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from haplane.auth.encryption import create_local_key, default_config
from haplane.auth.kubeconfig import load
from haplane.backup import Sealer, create_backup, restore_backup
from haplane.kubeclient import KubeClient, Resource
from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster

CONFIGMAPS = Resource("", "v1", "ConfigMap", "configmaps", True)
SECRETS = Resource("", "v1", "Secret", "secrets", True)
NAMESPACES = Resource("", "v1", "Namespace", "namespaces", False)


async def fill(kube: KubeClient, ns: str, n: int) -> None:
    await kube.create(NAMESPACES, {"metadata": {"name": ns}})
    owner = await kube.create(
        CONFIGMAPS, {"metadata": {"name": "owner", "namespace": ns}, "data": {"v": "x" * 150}}
    )
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner"}
    ref["uid"] = owner["metadata"]["uid"]
    limit = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        meta: dict[str, object] = {"name": f"o-{i:06d}", "namespace": ns}
        async with limit:
            if i % 10 == 0:
                await kube.create(SECRETS, {"metadata": meta, "stringData": {"v": "s" * 150}})
                return
            if i % 10 == 1:
                meta["ownerReferences"] = [ref]
            await kube.create(CONFIGMAPS, {"metadata": meta, "data": {"v": "x" * 150}})

    await asyncio.gather(*(one(i) for i in range(n - 1)))


async def gone(kube: KubeClient, ns: str) -> None:
    await kube.delete(NAMESPACES, None, ns)
    while True:
        if await kube.get(NAMESPACES, None, ns) is None:
            return
        await asyncio.sleep(0.1)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="haplane-bench-backup-") as tmp:
        root = Path(tmp)
        key = root / "encryption" / "kek.key"
        create_local_key(key)
        config = root / "encryption" / "config.yaml"
        config.write_text(default_config(key))
        cluster = EtcdCluster(root / "etcd", size=3)
        await cluster.start()
        api = ApiReplica(
            root,
            "bench",
            cluster.endpoints,
            extra_args=["--encryption-provider-config", str(config)],
        )
        await api.start()
        path = api.kubeconfig(root / "kubeconfig")
        kube = KubeClient(
            load(json.loads(path.read_text()), str(path)), timeout=120.0, agent="haplane-backup"
        )
        sealer = Sealer.from_config(config)
        backups: list[float] = []
        restores: list[float] = []
        try:
            for r in range(args.rounds):
                ns = f"bench-{r}"
                await fill(kube, ns, args.objects)
                t0 = time.perf_counter()
                where, manifest = await create_backup(
                    kube, root / "backups", ns, namespaces=[ns], sealer=sealer
                )
                backups.append(time.perf_counter() - t0)
                size = sum(f.stat().st_size for f in where.rglob("*") if f.is_file())
                await gone(kube, ns)
                t0 = time.perf_counter()
                report = await restore_backup(kube, where, sealer=sealer)
                restores.append(time.perf_counter() - t0)
                assert report.ok and report.counts() == {"created": manifest.objects}, (
                    report.counts()
                )
                print(
                    f"round {r + 1}: {manifest.objects} objects, {size / 1e6:.1f} MB: backup "
                    f"{backups[-1]:.2f} s, restore {restores[-1]:.2f} s",
                    flush=True,
                )
                await gone(kube, ns)
        finally:
            sealer.close()
            await kube.close()
            await api.stop()
            await cluster.stop()

    def quote(xs: list[float]) -> str:
        return f"{statistics.median(xs):.2f} s ({min(xs):.2f}-{max(xs):.2f})"

    print(f"{args.objects} objects: backup {quote(backups)}, restore {quote(restores)}")


if __name__ == "__main__":
    asyncio.run(main())
