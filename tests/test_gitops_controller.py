"""The GitOps controller as real processes, as a new user would run it: a local git repository
with a base and two overlays, synced to the platform (one set of replicas on its own etcd) and
to a second cluster (other replicas on another etcd) given by a kubeconfig in a Secret. Two
controller instances share the work through a Lease; the leader is killed and the other goes
on. Covered: a commit arriving by polling and by the webhook, drift reported and healed, prune
only where it is on, a broken manifest stopping its Sync with nothing of that revision applied,
and an unreachable repository keeping the last good state.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from haplane.local.api_replica import ApiReplica, free_port
from haplane.local.etcd_cluster import EtcdCluster
from haplane.local.process import ManagedProcess, ProcessSpec

NS = "apps"
SYNCS = f"/apis/gitops.haplane.dev/v1/namespaces/{NS}/syncs"
SOURCES = f"/apis/gitops.haplane.dev/v1/namespaces/{NS}/gitsources"


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def commit(repo: Path, files: dict[str, str | None], message: str) -> str:
    for name, text in files.items():
        path = repo / name
        if text is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def configmap(name: str, **data: str) -> str:
    return json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
    )


BASE = {
    "base/kustomization.yaml": "resources: [namespace.yaml, settings.yaml, extra.yaml]\n"
    "namespace: shop\n",
    "base/namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    "base/settings.yaml": configmap("settings", color="blue"),
    "base/extra.yaml": configmap("extra", keep="me"),
    "overlays/eu/kustomization.yaml": "resources: [../../base]\ncommonLabels: {region: eu}\n",
    "overlays/us/kustomization.yaml": "resources: [../../base]\ncommonLabels: {region: us}\n",
}


@dataclass
class World:
    platform: list[ApiReplica]
    other: ApiReplica
    repo: Path
    controllers: list[ManagedProcess]
    hook_ports: list[int]

    def get(self, api: ApiReplica, path: str) -> tuple[int, Any]:
        status, _, out = api.request("GET", path)
        return status, out

    def sync_status(self, name: str) -> dict[str, Any]:
        status, out = self.get(self.platform[0], f"{SYNCS}/{name}")
        assert status == 200, out
        return dict(out.get("status") or {})

    def leader(self) -> int:
        _, lease = self.get(
            self.platform[0],
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/haplane-gitops-controller",
        )
        return int(lease["spec"]["holderIdentity"].rsplit("-", 1)[1])


def eventually(check: Any, within: float = 20.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"not within {within}s (last: {last!r})")


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or () if c["type"] == kind), {})


@pytest_asyncio.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("gitops")
    etcd_a = EtcdCluster(root / "etcd-a", size=1)
    etcd_b = EtcdCluster(root / "etcd-b", size=1)
    await asyncio.gather(etcd_a.start(), etcd_b.start())
    platform = [ApiReplica(root, f"p-{i}", etcd_a.endpoints) for i in (1, 2)]
    other = ApiReplica(root, "other", etcd_b.endpoints, region="other")
    controllers: list[ManagedProcess] = []
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, BASE, "base and two overlays")
    try:
        for r in [*platform, other]:
            await r.start()
        kubeconfig = platform[0].kubeconfig(root / "platform.kubeconfig")
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            p = ManagedProcess(
                ProcessSpec(
                    name=f"gitops-{i}",
                    kind="gitops",
                    argv=[
                        sys.executable,
                        "-m",
                        "haplane.gitops",
                        "--kubeconfig",
                        str(kubeconfig),
                        "--identity",
                        f"gitops-{i}",
                        "--cache",
                        str(root / f"cache-{i}"),
                        "--listen",
                        f"127.0.0.1:{port}",
                        "--lease-duration",
                        "3",
                        "--tick",
                        "0.2",
                    ],
                    log_path=root / f"gitops-{i}.log",
                    pid_path=root / f"gitops-{i}.pid.json",
                )
            )
            await p.spawn()
            controllers.append(p)
        a = platform[0]
        a.request("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
        # the second cluster's kubeconfig, in a Secret the Sync names
        other_config = other.kubeconfig(root / "other.kubeconfig").read_bytes()
        status, _, out = a.request(
            "POST",
            f"/api/v1/namespaces/{NS}/secrets",
            {
                "metadata": {"name": "other-cluster"},
                "data": {"kubeconfig": base64.b64encode(other_config).decode()},
            },
        )
        assert status == 201, out
        world = World(platform, other, repo, controllers, ports)
        # the leader installs the CRDs
        eventually(lambda: world.get(a, "/apis/gitops.haplane.dev/v1")[0] == 200, within=30)
        yield world
    finally:
        for p in controllers:
            await p.stop()
        for r in [*platform, other]:
            await r.stop()
        await asyncio.gather(etcd_a.stop(), etcd_b.stop())


def create(world: World, path: str, obj: dict[str, Any]) -> None:
    status, _, out = world.platform[0].request("POST", path, obj)
    assert status == 201, out


def test_sync_to_platform_and_another_cluster(world: World) -> None:
    a, other = world.platform[0], world.other
    head = git(world.repo, "rev-parse", "HEAD")
    create(
        world,
        SOURCES,
        {
            "apiVersion": "gitops.haplane.dev/v1",
            "kind": "GitSource",
            "metadata": {"name": "shop"},
            "spec": {"url": str(world.repo), "ref": {"branch": "main"}, "interval": "1s"},
        },
    )
    create(
        world,
        SYNCS,
        {
            "apiVersion": "gitops.haplane.dev/v1",
            "kind": "Sync",
            "metadata": {"name": "shop"},
            "spec": {
                "sourceRef": {"name": "shop"},
                "path": "overlays",
                "targets": [
                    {"name": "platform", "overlay": "eu"},
                    {
                        "name": "other",
                        "overlay": "us",
                        "kubeconfigSecretRef": {"name": "other-cluster"},
                    },
                ],
                "prune": True,
            },
        },
    )
    status = eventually(
        lambda: (s := world.sync_status("shop")).get("lastAppliedRevision") == head and s
    )
    assert condition(status, "Synced")["status"] == "True", status
    assert condition(status, "Healthy")["status"] == "True", status
    by_name = {t["name"]: t for t in status["targets"]}
    assert by_name["platform"]["appliedSteps"] == ["wave 0 (CRDs and namespaces)", "wave 0"]
    # each target got its own overlay
    _, cm = world.get(a, "/api/v1/namespaces/shop/configmaps/settings")
    assert cm["metadata"]["labels"]["region"] == "eu" and cm["data"] == {"color": "blue"}
    _, cm = world.get(other, "/api/v1/namespaces/shop/configmaps/settings")
    assert cm["metadata"]["labels"]["region"] == "us"
    # the GitSource reports the revision it fetched
    _, src = world.get(a, f"{SOURCES}/shop")
    assert src["status"]["revision"] == head
    assert condition(src["status"], "Ready")["status"] == "True"

    # a new commit arrives by polling (interval 1s)
    head = commit(world.repo, {"base/settings.yaml": configmap("settings", color="green")}, "g")
    eventually(
        lambda: (
            world.get(other, "/api/v1/namespaces/shop/configmaps/settings")[1]["data"]
            == {"color": "green"}
        )
    )
    eventually(lambda: world.sync_status("shop").get("lastAppliedRevision") == head)


def hook(port: int, body: dict[str, Any], query: str = "") -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/hooks/git{query}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_webhook_drift_and_prune(world: World) -> None:
    a, other = world.platform[0], world.other
    # a slow poll, so only the webhook can bring the next commit quickly
    a.request(
        "PATCH",
        f"{SOURCES}/shop",
        {"spec": {"interval": "1h"}},
        content_type="application/merge-patch+json",
    )
    time.sleep(1.5)  # any fetch already due has happened
    head = commit(world.repo, {"base/settings.yaml": configmap("settings", color="red")}, "r")
    # the webhook may reach either instance, leader or not
    follower = 1 - world.leader()
    status, out = hook(world.hook_ports[follower], {"repository": {"clone_url": str(world.repo)}})
    assert status == 202 and out["sources"] == [f"{NS}/shop"], out
    started = time.monotonic()
    eventually(
        lambda: (
            world.get(a, "/api/v1/namespaces/shop/configmaps/settings")[1]["data"]
            == {"color": "red"}
        ),
        within=10,
    )
    assert time.monotonic() - started < 10
    assert hook(world.hook_ports[0], {"repository": {"clone_url": "/nowhere"}})[0] == 404
    assert hook(world.hook_ports[0], {})[0] == 400
    eventually(lambda: world.sync_status("shop").get("lastAppliedRevision") == head)

    # a manual edit in the second cluster is drift; selfHeal is off: reported, not healed
    other.request(
        "PATCH",
        "/api/v1/namespaces/shop/configmaps/settings",
        {"data": {"color": "hacked"}},
        content_type="application/merge-patch+json",
    )
    a.request(
        "PATCH",
        f"{SYNCS}/shop",
        {"spec": {"interval": "1s"}},
        content_type="application/merge-patch+json",
    )
    status = eventually(
        lambda: condition(s := world.sync_status("shop"), "Synced").get("reason") == "Drifted" and s
    )
    target = {t["name"]: t for t in status["targets"]}["other"]
    assert target["drift"] == ["ConfigMap/settings (namespace shop): changed in the target"]
    assert world.get(other, "/api/v1/namespaces/shop/configmaps/settings")[1]["data"] == {
        "color": "hacked"
    }
    # self-heal on: put back
    a.request(
        "PATCH",
        f"{SYNCS}/shop",
        {"spec": {"selfHeal": True}},
        content_type="application/merge-patch+json",
    )
    eventually(
        lambda: (
            world.get(other, "/api/v1/namespaces/shop/configmaps/settings")[1]["data"]
            == {"color": "red"}
        )
    )
    eventually(lambda: condition(world.sync_status("shop"), "Synced").get("status") == "True")

    # a file removed from git: pruned (prune is on for this Sync)
    base = BASE["base/kustomization.yaml"].replace(", extra.yaml", "")
    head = commit(
        world.repo, {"base/extra.yaml": None, "base/kustomization.yaml": base}, "drop extra"
    )
    hook(world.hook_ports[0], {}, f"?source={NS}/shop")
    eventually(lambda: world.get(other, "/api/v1/namespaces/shop/configmaps/extra")[0] == 404)
    eventually(lambda: world.get(a, "/api/v1/namespaces/shop/configmaps/extra")[0] == 404)
    status = eventually(
        lambda: (s := world.sync_status("shop")).get("lastAppliedRevision") == head and s
    )
    assert {t["name"]: t for t in status["targets"]}["platform"]["pruned"] == [
        "ConfigMap/extra (namespace shop)"
    ]


def test_broken_manifest_stops_the_sync_and_nothing_of_it_applies(world: World) -> None:
    a = world.platform[0]
    good = world.sync_status("shop")["lastAppliedRevision"]
    bad = commit(
        world.repo,
        {
            "base/settings.yaml": configmap("settings", color="purple"),
            # a ConfigMap whose data is not a map of strings: the server refuses it
            "base/broken.yaml": json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "broken"},
                    "data": {"n": ["not", "a", "string"]},
                }
            ),
            "base/kustomization.yaml": BASE["base/kustomization.yaml"].replace(
                ", extra.yaml", ", broken.yaml"
            ),
        },
        "broken",
    )
    hook(world.hook_ports[0], {}, f"?source={NS}/shop")
    status = eventually(
        lambda: (
            condition(s := world.sync_status("shop"), "Synced").get("reason") == "Failed"
            and s.get("revision") == bad
            and s
        )
    )
    assert status["lastAppliedRevision"] == good
    target = {t["name"]: t for t in status["targets"]}["platform"]
    assert target["attempted"] == bad and target["revision"] == good
    assert target["errors"][0]["object"] == "ConfigMap/broken (namespace shop)"
    assert "nothing of it was applied" in condition(status, "Synced")["message"]
    # the good ConfigMap of the same step was not applied either
    assert world.get(a, "/api/v1/namespaces/shop/configmaps/settings")[1]["data"] == {
        "color": "red"
    }
    # fixed in the next commit
    head = commit(
        world.repo,
        {
            "base/broken.yaml": None,
            "base/kustomization.yaml": BASE["base/kustomization.yaml"].replace(", extra.yaml", ""),
        },
        "fixed",
    )
    hook(world.hook_ports[0], {}, f"?source={NS}/shop")
    eventually(lambda: world.sync_status("shop").get("lastAppliedRevision") == head)
    assert world.get(a, "/api/v1/namespaces/shop/configmaps/settings")[1]["data"] == {
        "color": "purple"
    }


def haplane(*args: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haplane.cli", *args, "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli(world: World, tmp_path: Path) -> None:
    a, other = world.platform[0], world.other
    kubeconfig = a.kubeconfig(tmp_path / "k")
    out = haplane("gitops", "status", "--json", kubeconfig=kubeconfig)
    assert out.returncode == 0, out.stderr
    assert [s["metadata"]["name"] for s in json.loads(out.stdout)] == ["shop"]
    out = haplane("gitops", "status", kubeconfig=kubeconfig)
    assert "apps/shop: source shop" in out.stdout and "target other:" in out.stdout, out.stdout

    # an edit in the second cluster shows in diff (selfHeal is off again for this)
    a.request(
        "PATCH", f"{SYNCS}/shop", {"spec": {"selfHeal": False, "interval": "1h"}},
        content_type="application/merge-patch+json",
    )  # fmt: skip
    out = haplane("gitops", "suspend", "shop", "-n", NS, kubeconfig=kubeconfig)
    assert out.returncode == 0 and "suspended" in out.stdout
    other.request(
        "PATCH", "/api/v1/namespaces/shop/configmaps/settings", {"data": {"color": "x"}},
        content_type="application/merge-patch+json",
    )  # fmt: skip
    out = haplane("gitops", "diff", "shop", "-n", NS, kubeconfig=kubeconfig)
    assert out.returncode == 1, out.stderr
    assert "# target platform: 0 of 2 objects differ" in out.stdout, out.stdout
    assert "# target other: 1 of 2 objects differ" in out.stdout
    assert "-  color: x" in out.stdout and "+  color: purple" in out.stdout
    # suspended: nothing heals it, even on request
    time.sleep(1.0)
    assert world.get(other, "/api/v1/namespaces/shop/configmaps/settings")[1]["data"] == {
        "color": "x"
    }
    out = haplane("gitops", "resume", "shop", "-n", NS, kubeconfig=kubeconfig)
    assert out.returncode == 0
    # sync --wait: applied again at once, whatever the interval says
    out = haplane("gitops", "sync", "shop", "-n", NS, "--wait", kubeconfig=kubeconfig)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("synced ")
    assert world.get(other, "/api/v1/namespaces/shop/configmaps/settings")[1]["data"] == {
        "color": "purple"
    }
    out = haplane("gitops", "status", "nope", "-n", NS, kubeconfig=kubeconfig)
    assert out.returncode == 1 and "error:" in out.stderr


def test_bad_sources_and_targets_keep_the_last_good_state(world: World) -> None:
    a = world.platform[0]
    good = world.sync_status("shop")["lastAppliedRevision"]
    # an unreachable repository: the source says why, the Sync keeps what it applied
    a.request(
        "PATCH", f"{SOURCES}/shop", {"spec": {"url": "/nowhere/at/all", "interval": "1s"}},
        content_type="application/merge-patch+json",
    )  # fmt: skip
    src = eventually(
        lambda: (
            condition((s := world.get(a, f"{SOURCES}/shop")[1]).get("status") or {}, "Ready").get(
                "status"
            )
            == "False"
            and s
        )
    )
    assert "/nowhere/at/all" in condition(src["status"], "Ready")["message"]
    assert src["status"]["revision"] == good
    # a URL git could read as an option (or a relative path): refused for that source only
    create(world, SOURCES, {
        "apiVersion": "gitops.haplane.dev/v1", "kind": "GitSource",
        "metadata": {"name": "evil"}, "spec": {"url": "-oProxyCommand=touch /tmp/x"},
    })  # fmt: skip
    src = eventually(
        lambda: (world.get(a, f"{SOURCES}/evil")[1].get("status") or {}).get("conditions")
    )
    assert src[0]["status"] == "False" and "must be absolute" in src[0]["message"], src
    assert all(p.pid is not None for p in world.controllers)
    # a kubeconfig Secret that names a file of the controller's host is refused
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"tokenFile": "/etc/hostname"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    }  # fmt: skip
    a.request("POST", f"/api/v1/namespaces/{NS}/secrets", {
        "metadata": {"name": "sneaky"},
        "data": {"kubeconfig": base64.b64encode(json.dumps(kubeconfig).encode()).decode()},
    })  # fmt: skip
    create(world, SYNCS, {
        "apiVersion": "gitops.haplane.dev/v1", "kind": "Sync", "metadata": {"name": "sneaky"},
        "spec": {"sourceRef": {"name": "shop"}, "path": "overlays/eu",
                 "targets": [{"name": "x", "kubeconfigSecretRef": {"name": "sneaky"}}]},
    })  # fmt: skip
    status = eventually(lambda: (s := world.sync_status("sneaky")).get("targets") and s)
    assert "tokenFile" in status["targets"][0]["message"], status
    # the repository back: fetched again, nothing lost meanwhile
    a.request(
        "PATCH", f"{SOURCES}/shop", {"spec": {"url": str(world.repo), "interval": "1h"}},
        content_type="application/merge-patch+json",
    )  # fmt: skip
    eventually(
        lambda: (
            condition(world.get(a, f"{SOURCES}/shop")[1].get("status") or {}, "Ready").get("status")
            == "True"
        )
    )
    assert world.sync_status("shop")["lastAppliedRevision"] == good
    for path in (f"{SYNCS}/sneaky", f"{SOURCES}/evil"):
        a.request("DELETE", path)


def test_a_sync_made_again_and_a_failing_one_edited(world: World) -> None:
    a = world.platform[0]
    head = commit(world.repo, {
        "more/one/cm.yaml": json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                                        "metadata": {"name": "one", "namespace": NS}}),
        "more/two/cm.yaml": json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                                        "metadata": {"name": "two", "namespace": NS}}),
    }, "more")  # fmt: skip
    hook(world.hook_ports[0], {}, f"?source={NS}/shop")

    def sync(path: str) -> dict[str, Any]:
        return {
            "apiVersion": "gitops.haplane.dev/v1", "kind": "Sync", "metadata": {"name": "again"},
            "spec": {"sourceRef": {"name": "shop"}, "path": path,
                     "targets": [{"name": "platform"}]},
        }  # fmt: skip

    create(world, SYNCS, sync("more/one"))
    eventually(lambda: world.sync_status("again").get("lastAppliedRevision") == head)
    # deleted and made again at once under its name, with another path: synced anew
    assert a.request("DELETE", f"{SYNCS}/again")[0] == 200
    create(world, SYNCS, sync("more/two"))
    eventually(lambda: world.get(a, f"/api/v1/namespaces/{NS}/configmaps/two")[0] == 200)
    status = eventually(lambda: (s := world.sync_status("again")).get("targets") and s)
    assert status["targets"][0]["objects"] == 1, status
    a.request("DELETE", f"{SYNCS}/again")

    # a Sync failing for a missing Secret, then edited: its new generation is recorded
    failing = sync("more/one")
    failing["spec"]["targets"] = [{"name": "x", "kubeconfigSecretRef": {"name": "absent"}}]
    create(world, SYNCS, failing)
    eventually(lambda: "does not exist" in str(world.sync_status("again").get("targets")))
    a.request(
        "PATCH", f"{SYNCS}/again", {"spec": {"prune": True}},
        content_type="application/merge-patch+json",
    )  # fmt: skip
    generation = world.get(a, f"{SYNCS}/again")[1]["metadata"]["generation"]
    eventually(lambda: world.sync_status("again").get("observedGeneration") == generation)
    a.request("DELETE", f"{SYNCS}/again")


def test_webhook_signatures() -> None:
    import hashlib
    import hmac

    from haplane.gitops.__main__ import Hooks

    class Request:
        def __init__(self, headers: dict[str, str]) -> None:
            self.headers = headers

    hooks = Hooks(None, b"s3cret")  # type: ignore[arg-type]
    body = b'{"repository": {}}'
    good = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert hooks._authentic(Request({"X-Hub-Signature-256": good}), body)  # type: ignore[arg-type]
    assert not hooks._authentic(Request({"X-Hub-Signature-256": good}), body + b" ")  # type: ignore[arg-type]
    assert not hooks._authentic(Request({}), body)  # type: ignore[arg-type]
    assert hooks._authentic(Request({"X-Gitlab-Token": "s3cret"}), body)  # type: ignore[arg-type]
    assert not hooks._authentic(Request({"X-Gitlab-Token": ""}), body)  # type: ignore[arg-type]


def test_an_empty_webhook_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("\n")
    (tmp_path / "k").write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "haplane.gitops", "--kubeconfig", str(tmp_path / "k"),
         "--identity", "x", "--cache", str(tmp_path / "c"),
         "--webhook-secret-file", str(tmp_path / "secret")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "is empty" in out.stderr


async def test_the_other_instance_takes_over(world: World) -> None:
    a = world.platform[0]
    leader = world.leader()
    before = world.sync_status("shop")
    await world.controllers[leader].stop()
    try:
        eventually(lambda: world.leader() == 1 - leader, within=20)
        head = commit(world.repo, {"base/settings.yaml": configmap("settings", color="teal")}, "t")
        hook(world.hook_ports[1 - leader], {}, f"?source={NS}/shop")
        eventually(
            lambda: (
                world.get(a, "/api/v1/namespaces/shop/configmaps/settings")[1]["data"]
                == {"color": "teal"}
            ),
            within=20,
        )
        after = eventually(
            lambda: (s := world.sync_status("shop")).get("lastAppliedRevision") == head and s
        )
        # it continued from the inventory it found: nothing pruned wrongly, nothing duplicated
        platform = {t["name"]: t for t in after["targets"]}["platform"]
        assert platform["pruned"] == [] and platform["objects"] == 2
        assert len(before["targets"]) == len(after["targets"]) == 2
    finally:
        await world.controllers[leader].spawn()
