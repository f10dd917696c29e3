"""Benchmark: GitOps from commit to applied (issue 18; goal: 1,000 objects in <= 10 s here;
a commit reaches both targets in <= 2 s median with the webhook, <= interval + 2 s without).

The platform: one API replica (plain HTTP) on a 3-member etcd (fsync on); another cluster
(`--external`, default on): one replica on its own 1-member etcd, reached through a
kubeconfig in a Secret as any external cluster is; one GitOps controller process
(`python -m haplane.gitops`, the same code `haplane up` runs), a local git repository of
`--objects` ConfigMaps (~200 B each, one file per 100), one Sync with both targets. Cases,
measured from the commit (the time `git commit` returned) to the moment the Sync's status
names that commit as applied (to every target) AND the changed objects read back with the new
content through the API of every target (the client's view):

- `first`: every object new (the first sync of a fresh namespace), pushed by the webhook;
- `all`: every object changed, by the webhook;
- `one`: one object changed among them all, by the webhook;
- `poll`: one object changed, no webhook: the GitSource's `interval` (`--interval`) finds it.

`--rounds` rounds, medians and the spread quoted; each round uses its own namespace (a fresh
Sync), so `first` really creates. Time inside the controller (fetch+render+dry-run+apply, from
its `synced` log line) is quoted beside the end-to-end figure.

    .venv/bin/python bench/gitops_sync.py [--objects 1000] [--rounds 3] [--interval 2s]
                                          [--no-external]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from haplane.local.api_replica import ApiReplica, free_port
from haplane.local.etcd_cluster import EtcdCluster
from haplane.local.process import ManagedProcess, ProcessSpec

GITOPS = "/apis/gitops.haplane.dev/v1/namespaces/default"


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@example.com", *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def write_objects(repo: Path, ns: str, n: int, version: str, only: int | None = None) -> None:
    """`n` ConfigMaps in files of 100; `only`: rewrite just the file holding that object."""
    d = repo / ns
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "namespace.yaml").exists():
        (d / "namespace.yaml").write_text(
            json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        )
    for start in range(0, n, 100):
        if only is not None and not start <= only < start + 100:
            continue
        docs = []
        for i in range(start, min(n, start + 100)):
            v = version if only is None or i == only else "0"
            docs.append(json.dumps({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": f"cm-{i:05d}", "namespace": ns, "labels": {"app": "bench"}},
                "data": {"version": v, "payload": "x" * 120},
            }))  # fmt: skip
        (d / f"objects-{start:05d}.yaml").write_text("\n---\n".join(docs) + "\n")


def commit(repo: Path, message: str) -> tuple[str, float]:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD"), time.monotonic()


def hook(port: int, source: str) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/hooks/git?source=default/{source}", data=b"{}", method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202


def wait_applied(api: ApiReplica, targets: list[ApiReplica], sync: str, head: str,
                 check: list[tuple[str, str]], timeout: float = 120.0) -> float:  # fmt: skip
    """Seconds (monotonic) when the Sync names `head` applied and each (path, version) reads
    in every target."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, out = api.request("GET", f"{GITOPS}/syncs/{sync}")
        if (out.get("status") or {}).get("lastAppliedRevision") == head and all(
            t.request("GET", p)[2].get("data", {}).get("version") == v
            for t in targets
            for p, v in check
        ):
            return time.monotonic()
        time.sleep(0.02)
    raise TimeoutError(f"{sync} did not apply {head[:12]} in {timeout}s")


def controller_seconds(log: Path, sync: str, head: str) -> float | None:
    for line in reversed(log.read_text().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if (
            doc.get("msg") == "synced"
            and doc.get("sync") == f"default/{sync}"
            and doc.get("revision") == head
        ):
            return float(doc["seconds"])
    return None


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--objects", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--interval", default="2s")
    p.add_argument("--external", action=argparse.BooleanOptionalAction, default=True,
                   help="a second target: another cluster through a kubeconfig Secret")  # fmt: skip
    args = p.parse_args()
    n = args.objects
    results: dict[str, list[float]] = {}
    inside: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gitops-") as tmp:
        root = Path(tmp)
        cluster = EtcdCluster(root / "etcd", size=3)
        await cluster.start()
        api = ApiReplica(root, "api", cluster.endpoints)
        # the second target: another cluster (its own replica on its own etcd), reached
        # through a kubeconfig in a Secret, as an external cluster is
        other_etcd = EtcdCluster(root / "etcd-other", size=1)
        await other_etcd.start()
        other = ApiReplica(root, "other", other_etcd.endpoints, region="other")
        targets = [api, other] if args.external else [api]
        port = free_port()
        controller = ManagedProcess(
            ProcessSpec(
                name="gitops", kind="gitops",
                argv=[sys.executable, "-m", "haplane.gitops",
                      "--kubeconfig", str(root / "k"), "--identity", "bench",
                      "--cache", str(root / "cache"), "--listen", f"127.0.0.1:{port}",
                      "--lease-duration", "5", "--tick", "0.2"],
                log_path=root / "gitops.log", pid_path=root / "gitops.pid.json",
            )
        )  # fmt: skip
        try:
            await api.start()
            api.kubeconfig(root / "k")
            await other.start()
            api.request("POST", "/api/v1/namespaces/default/secrets", {
                "metadata": {"name": "other"},
                "data": {"kubeconfig": base64.b64encode(
                    other.kubeconfig(root / "other.k").read_bytes()).decode()},
            })  # fmt: skip
            await controller.spawn()
            deadline = time.monotonic() + 30
            while api.request("GET", "/apis/gitops.haplane.dev/v1")[0] != 200:
                assert time.monotonic() < deadline, "the controller installed no CRDs"
                await asyncio.sleep(0.2)
            repo = root / "repo"
            repo.mkdir()
            git(repo, "init", "-q", "-b", "main")
            (repo / "README").write_text("bench\n")
            commit(repo, "init")
            for r in range(args.rounds):
                ns = f"bench-{r}"
                name = f"s{r}"
                api.request("POST", f"{GITOPS}/gitsources", {
                    "apiVersion": "gitops.haplane.dev/v1", "kind": "GitSource",
                    "metadata": {"name": name},
                    "spec": {"url": str(repo), "interval": "1h"},
                })  # fmt: skip
                api.request("POST", f"{GITOPS}/syncs", {
                    "apiVersion": "gitops.haplane.dev/v1", "kind": "Sync",
                    "metadata": {"name": name},
                    "spec": {"sourceRef": {"name": name}, "path": ns,
                             "targets": [{"name": "platform"}, *(
                                 [{"name": "other", "kubeconfigSecretRef": {"name": "other"}}]
                                 if args.external else [])],
                             "interval": "1h"},
                })  # fmt: skip
                await asyncio.sleep(1.0)  # the source is fetched once (no path yet: fails)

                def obj(i: int, ns: str = ns) -> str:
                    return f"/api/v1/namespaces/{ns}/configmaps/cm-{i:05d}"

                async def case(label: str, version: str, only: int | None, poke: bool,
                               name: str = name, ns: str = ns, r: int = r) -> None:  # fmt: skip
                    write_objects(repo, ns, n, version, only)
                    head, t0 = commit(repo, f"{label} {version}")
                    if poke:
                        hook(port, name)
                    sample = [only] if only is not None else [0, n // 2, n - 1]
                    t1 = await asyncio.to_thread(
                        wait_applied,
                        api,
                        targets,
                        name,
                        head,
                        [(obj(i), version) for i in sample],
                    )
                    results.setdefault(label, []).append(t1 - t0)
                    took = controller_seconds(root / "gitops.log", name, head)
                    if took is not None:
                        inside.setdefault(label, []).append(took)
                    print(f"round {r} {label:6s} {t1 - t0:6.2f} s", file=sys.stderr)

                await case("first", "1", None, True)
                await case("all", "2", None, True)
                await case("one", "3", n // 3, True)
                api.request(
                    "PATCH", f"{GITOPS}/gitsources/{name}", {"spec": {"interval": args.interval}},
                    content_type="application/merge-patch+json",
                )  # fmt: skip
                await asyncio.sleep(0.5)
                await case("poll", "4", n // 4, False)
                api.request(
                    "PATCH", f"{GITOPS}/gitsources/{name}", {"spec": {"interval": "1h"}},
                    content_type="application/merge-patch+json",
                )  # fmt: skip
        finally:
            await controller.stop()
            await api.stop()
            await other.stop()
            await cluster.stop()
            await other_etcd.stop()

    def fmt(xs: list[float]) -> str:
        return f"{statistics.median(xs):6.2f} s (min {min(xs):.2f}, max {max(xs):.2f})"

    where = "the platform (1 replica on a 3-member etcd)" + (
        " and another cluster (1 replica on its own etcd)" if args.external else ""
    )
    print(f"GitOps commit -> applied and read back in {where}, {n} ConfigMaps, "
          f"{args.rounds} rounds, poll interval {args.interval}")  # fmt: skip
    for label in ("first", "all", "one", "poll"):
        extra = (
            f"   controller: {statistics.median(inside[label]):.2f} s" if label in inside else ""
        )
        print(f"  {label:6s} {fmt(results[label])}{extra}")


if __name__ == "__main__":
    asyncio.run(main())
