"""`haplane up -d` on the two-regions example as real processes: status, faults, supervision,
`down`, a SIGKILLed supervisor taking its children with it, and the GitOps controllers
applying git repositories through the gate, across switchovers of the platform's region."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from haplane.local import pidfile
from haplane.local.state_dir import StateDir
from tests.test_cli_startup import through_entry, typer_path
from tests.topology_helpers import (
    connection,
    etcd_tls,
    haplane,
    kubectl,
    members,
    processes_under,
    status,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_up_status_faults_down(state: Path, start_topology):
    doc = start_topology(example="two-regions")
    assert doc["supervisor"] == "healthy"
    assert [c["name"] for c in doc["clusters"]] == [
        "eu-west/etcd",
        "eu-central/etcd",
        "global/etcd",
    ]
    for c in doc["clusters"]:
        assert c["quorum"] and c["leader"]
        assert sum(m["is_leader"] for m in c["members"]) == 1
    for m in members(doc).values():
        assert m["healthy"] and m["pid"] and m["member_id"] and m["raft_term"] >= 1
        assert m["quota"] == 2 * 1024**3 and m["db_size"] > 0 and m["alarms"] == []

    # `status --json` is answered before typer, gathered by the supervisor (its /v1/status):
    # this process imports neither typer, nor the topology model, nor aiohttp, cryptography,
    # asyncio or etcd's gRPC client; the same components and verdict as through typer
    assert (state / "status-plan.json").is_file()
    from haplane.local import status_plan

    assert status_plan.targets(StateDir(state)) == status_plan.resolve(StateDir(state))
    quick, modules = through_entry("status", "--json", "--state-dir", str(state))
    slow = typer_path("status", "--json", "--state-dir", str(state))
    assert quick.returncode == slow.returncode == 0, (quick.stderr, slow.stderr)
    heavy = {"typer", "rich", "pydantic", "aiohttp", "cryptography", "yaml", "asyncio", "grpc"}
    assert not heavy & {m.split(".")[0] for m in modules}
    assert "haplane.topology.model" not in modules
    q, t = json.loads(quick.stdout), json.loads(slow.stdout)
    assert members(q).keys() == members(t).keys() == members(doc).keys()
    for key in ("replicas", "edges", "gitops", "console", "replication"):
        names = {x.get("name") or x.get("region") for x in q[key]}
        assert names == {x.get("name") or x.get("region") for x in t[key]} and names, key
    assert q["certificates"]["count"] == t["certificates"]["count"] > 10
    assert q["global_state"]["active"]["region"] == t["global_state"]["active"]["region"]

    # kill: stays down; its cluster keeps quorum
    victim = "eu-west/etcd-1"
    old_pid = members(doc)[victim]["pid"]
    r = haplane(state, "fault", "kill", victim)
    assert "killed" in r.stdout
    assert (
        not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE
    )
    time.sleep(2.0)  # longer than the first restart backoff
    doc = status(state)
    m = members(doc)[victim]
    assert m["state"] == "killed" and m["pid"] is None and not m["healthy"]
    assert next(c for c in doc["clusters"] if c["name"] == "eu-west/etcd")["quorum"]

    # restart: back, healthy, same member id (its data dir was reused)
    haplane(state, "fault", "restart", victim)
    doc = wait_for(lambda: (d := status(state)) and members(d)[victim]["healthy"] and d)
    assert members(doc)[victim]["pid"] != old_pid

    # pause / resume
    haplane(state, "fault", "pause", "global/control-2")
    pid = members(status(state))["global/control-2"]["pid"]
    assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    haplane(state, "fault", "resume", "global/control-2")
    assert psutil.Process(pid).status() != psutil.STATUS_STOPPED

    # API replicas: ready, reachable with the written kubeconfig, and faultable by name
    replicas = {r["name"]: r for r in status(state)["replicas"]}
    assert sorted(replicas) == [
        "eu-central/api-1",
        "eu-central/api-2",
        "eu-west/api-1",
        "eu-west/api-2",
    ]
    assert all(r["ready"] and r["pid"] for r in replicas.values())
    kubeconfig = state / "kubeconfig"
    haplane(state, "kubeconfig", "-o", str(kubeconfig))
    r = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "get", "ns", "default"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "default" in r.stdout, r.stderr
    haplane(state, "fault", "kill", "eu-west/api-1")
    time.sleep(1.0)
    assert not {x["name"]: x for x in status(state)["replicas"]}["eu-west/api-1"]["ready"]
    haplane(state, "fault", "restart", "eu-west/api-1")
    wait_for(lambda: {x["name"]: x for x in status(state)["replicas"]}["eu-west/api-1"]["ready"])

    # unknown names and actions are clear errors
    r = haplane(state, "fault", "kill", "eu-west/etcd-9", check=False)
    assert r.returncode == 1 and "no component named" in r.stderr
    r = haplane(state, "fault", "explode", victim, check=False)
    assert r.returncode == 2

    # a process that dies on its own (not through haplane) is restarted by the supervisor
    other = "eu-central/etcd-2"
    pid = members(status(state))[other]["pid"]
    os.kill(pid, signal.SIGKILL)
    doc = wait_for(
        lambda: (
            (d := status(state))
            and members(d)[other]["healthy"]
            # the snapshot (pid) is read before etcd is asked (healthy): insist on a new pid
            and members(d)[other]["pid"] not in (None, pid)
            and d
        )
    )
    assert members(doc)[other]["restarts"] == 1

    # a second `up` on the same state dir is refused while running
    r = haplane(state, "up", "-d", "--example", "two-regions", check=False)
    assert r.returncode == 1 and "already running" in r.stderr

    haplane(state, "down")
    assert processes_under(state) == []
    assert not StateDir(state).socket.exists()


def test_data_ports_and_the_active_region_survive_down_and_up(state: Path):
    import asyncio

    from haplane.store import EtcdClient

    haplane(state, "up", "-d", "--example", "two-regions")
    ports_before = json.loads((state / "ports.json").read_text())
    # first start: the region of highest priority, epoch 1
    active = status(state)["global_state"]["active"]
    assert (active["region"], active["epoch"], active["by"]) == ("eu-west", 1, "haplane up")
    # a planned switch raises the epoch and records who and why
    r = haplane(state, "failover", "--direct", "--to", "eu-central", "--reason", "drill")
    assert "eu-west (epoch 1) -> eu-central (epoch 2)" in r.stdout
    g = status(state)["global_state"]
    assert (g["active"]["region"], g["active"]["epoch"]) == ("eu-central", 2)
    assert g["active"]["reason"] == "drill" and g["active"]["by"].startswith("operator")
    assert [(h["region"], h["epoch"]) for h in g["history"]] == [
        ("eu-west", 1),
        ("eu-central", 2),
    ]
    # refusals: a stale epoch, a name that is no region, the region already active
    for args, says in (
        (["--to", "eu-west", "--expected-epoch", "1"], "the epoch is 2, not 1"),
        (["--to", "witness"], "not a region"),
        (["--to", "eu-central"], "already the active region"),
    ):
        r = haplane(state, "failover", "--direct", *args, check=False)
        assert r.returncode == 1 and says in r.stderr, r.stderr
    assert status(state)["global_state"]["active"]["epoch"] == 2

    def region_endpoints() -> list[str]:
        return [
            e
            for n, m in members(status(state)).items()
            if n.startswith("eu-west/")
            for e in [m["endpoint"]]
        ]

    endpoints = region_endpoints()

    async def put() -> None:
        async with EtcdClient(endpoints, tls=etcd_tls(state)) as c:
            await c.put(b"/survives", b"yes")

    async def get() -> bytes | None:
        async with EtcdClient(endpoints, timeout=2.0, tls=etcd_tls(state)) as c:
            kv = await c.get(b"/survives")
            return kv.value if kv else None

    asyncio.run(put())
    _sigkill_of_the_supervisor_takes_every_child_with_it(state)
    # and it comes back up on the same state dir, its ports and data as they were
    haplane(state, "up", "-d", "--example", "two-regions")
    assert status(state)["supervisor"] == "healthy"
    assert json.loads((state / "ports.json").read_text()) == ports_before
    assert asyncio.run(get()) == b"yes"
    # a restart keeps the region a failover made active
    active = status(state)["global_state"]["active"]
    assert (active["region"], active["epoch"]) == ("eu-central", 2)
    # a graceful down and up: the same again
    haplane(state, "down")
    haplane(state, "up", "-d", "--example", "two-regions")
    assert json.loads((state / "ports.json").read_text()) == ports_before
    assert asyncio.run(get()) == b"yes"
    assert status(state)["global_state"]["active"]["epoch"] == 2
    haplane(state, "down")
    # --fresh wipes data (and the ports assigned with it)
    haplane(state, "up", "-d", "--fresh", "--example", "two-regions")
    endpoints = region_endpoints()
    assert asyncio.run(get()) is None


def _sigkill_of_the_supervisor_takes_every_child_with_it(state: Path) -> None:
    """(Part of the test above: one start fewer.) The supervisor SIGKILLed: every child dies
    with it; `down` then finds nothing left."""
    sup = pidfile.read(StateDir(state).supervisor_record)
    assert sup is not None and sup.alive()
    doc = status(state)
    children = (
        [m["pid"] for m in members(doc).values()]
        + [r["pid"] for r in doc["replicas"]]
        + [e["pid"] for e in doc["edges"]]
    )
    assert len(children) == 9 + 4 + 4 + 3 and all(children)  # etcd, API, balancers, gates
    os.kill(sup.pid, signal.SIGKILL)
    wait_for(
        lambda: (
            not any(
                psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                for p in children
            )
        ),
        timeout=10,
    )
    doc = status(state)
    assert doc["supervisor"] == "not running"
    assert not any(c["quorum"] for c in doc["clusters"])
    haplane(state, "down")
    assert processes_under(state) == []


def test_up_refuses_a_file_with_errors_unless_forced_and_takes_a_lost_port_again(
    state: Path, tmp_path: Path
):
    """(One start for both.) A file with HA errors is refused, nothing started, unless
    --force; a port assigned and then taken by another process before etcd could bind it is
    reassigned for the new cluster."""
    import socket

    text = (Path(__file__).parent.parent / "examples" / "two-regions.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    # the witness loses its gate: fewer than 3 vantage sites
    bad.write_text(text.replace("      - {name: gate-witness, site: witness}\n", ""))
    r = haplane(state, "up", "-d", str(bad), check=False)
    assert r.returncode == 1 and "gate-vantage-sites" in r.stderr
    assert processes_under(state) == []

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        state.mkdir(parents=True, exist_ok=True)
        # As if the port had been assigned and then taken before etcd could bind it.
        (state / "ports.json").write_text(json.dumps({"eu-west/etcd-2#peer": taken}))
        r = haplane(state, "up", "-d", "--force", str(bad))
        assert "despite HA errors" in r.stderr
        assert (
            "retrying on new ports" in r.stderr
            or "retrying on new ports" in (state / "supervisor.log").read_text()
        )
        ports = json.loads((state / "ports.json").read_text())
        assert ports["eu-west/etcd-2#peer"] != taken
        assert status(state)["supervisor"] == "healthy"


def test_foreground_up_shows_live_status_and_stops_on_ctrl_c(state: Path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "haplane.cli",
            "up",
            "--example",
            "two-regions",
            "--state-dir",
            str(state),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: (state / "topology.yaml").exists() and status(state)["supervisor"] == "healthy",
            timeout=60,
        )
        children = [m["pid"] for m in members(status(state)).values()]
        time.sleep(1.5)  # let the live view draw at least once
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "eu-west/etcd-1" in out and "quorum" in out
    assert not any(
        psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        for p in children
    )
    assert processes_under(state) == []


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _commit(repo: Path, greeting: str) -> str:
    (repo / "app").mkdir(parents=True, exist_ok=True)
    (repo / "app" / "namespace.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: tiny}\n"
    )
    (repo / "app" / "hello.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hello, namespace: tiny}\n"
        f"data: {{greeting: {greeting}}}\n"
    )
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", greeting)
    return _git(repo, "rev-parse", "HEAD")


def _shop(repo: Path, configmaps: dict[str, str]) -> str:
    """A commit whose `app` holds the namespace `shop` and exactly these ConfigMaps (name ->
    value), one file each: a name left out is a file removed."""
    app = repo / "app"
    shutil.rmtree(app, ignore_errors=True)
    app.mkdir(parents=True)
    (app / "namespace.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")
    for name, value in configmaps.items():
        (app / f"{name}.yaml").write_text(
            f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: shop}}\n"
            f"data: {{value: {value}}}\n"
        )
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", ",".join(f"{k}={v}" for k, v in configmaps.items()))
    return _git(repo, "rev-parse", "HEAD")


def _poke(state: Path, url: str, source: str, sign: bool = True) -> int:
    """POST /hooks/git?source=NAMESPACE/NAME to a GitOps controller instance's listener (HTTPS,
    the platform CA), signed as GitHub signs with the secret `up` made (STATE/gitops)."""
    import hashlib
    import hmac

    ctx = ssl.create_default_context(cafile=str(state / "pki" / "platform" / "ca.crt"))
    body = b"{}"
    headers = {}
    if sign:
        secret = (state / "gitops" / "webhook.secret").read_bytes().strip()
        digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
        headers["X-Hub-Signature-256"] = f"sha256={digest}"
    req = urllib.request.Request(
        f"{url}/hooks/git?source={source}", data=body, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_gitops_controllers_apply_a_repository_through_the_gate(
    state: Path, tmp_path: Path, start_topology
):
    """Both instances of the example run, one holds the Lease, and Syncs created through the
    gate are applied through the gate, as the controller's ServiceAccount (TLS, its token file,
    RBAC). The drill of #18, planned switchovers of the platform's region with the controllers
    running: the leader goes on in the new region, applies the next commit there and prunes
    what it dropped, nothing recreated; then the leader killed and the platform switched back:
    the other instance takes over from the status and inventories it finds, replicated, and
    applies the next commits. Every judgement is the client's: read through the gate."""
    doc = start_topology(example="two-regions")
    gitops = {g["name"]: g for g in doc["gitops"]}
    assert sorted(gitops) == ["global/gitops-1", "global/gitops-2"]
    assert all(g["state"] == "running" and g["pid"] and g["ready"] for g in gitops.values())
    assert all(g["url"].startswith("https://") for g in gitops.values())

    def leaders() -> list[str]:
        return [g["name"] for g in status(state)["gitops"] if g["leading"]]

    (leader,) = wait_for(lambda: len(names := leaders()) == 1 and names)
    admin = state / "admin.kubeconfig"
    haplane(state, "kubeconfig", "-o", str(admin))

    def holder() -> str:
        r = kubectl(admin, "get", "lease", "-n", "kube-system", "haplane-gitops-controller",
                    "-o", "jsonpath={.spec.holderIdentity}")  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert f"global/{holder()}" == leader
    # each instance's own kubeconfig: the gate over TLS, the renewed token file; it is who
    # the platform says (a ServiceAccount, through the gate)
    own = state / "gitops" / "gitops-1.kubeconfig"
    assert stat.S_IMODE(own.stat().st_mode) == 0o600
    r = kubectl(own, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "system:serviceaccount:kube-system:haplane-gitops"

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    head = _commit(repo, "hello")
    # a second repository, with prune: fetched by the webhook only (a poll every hour)
    shop = tmp_path / "shop"
    shop.mkdir()
    _git(shop, "init", "-q", "-b", "main")
    shop_head = _shop(shop, {"a": "one", "b": "one", "c": "one"})
    # the leader installed the CRDs
    wait_for(lambda: kubectl(admin, "get", "--raw", "/apis/gitops.haplane.dev/v1").returncode == 0)
    manifests = tmp_path / "sync.yaml"
    manifests.write_text(
        "apiVersion: gitops.haplane.dev/v1\nkind: GitSource\n"
        "metadata: {name: tiny, namespace: default}\n"
        f"spec: {{url: {repo}, ref: {{branch: main}}, interval: 1s}}\n"
        "---\n"
        "apiVersion: gitops.haplane.dev/v1\nkind: Sync\n"
        "metadata: {name: tiny, namespace: default}\n"
        "spec: {sourceRef: {name: tiny}, path: app, targets: [{name: platform}]}\n"
        "---\n"
        "apiVersion: gitops.haplane.dev/v1\nkind: GitSource\n"
        "metadata: {name: shop, namespace: default}\n"
        f"spec: {{url: {shop}, ref: {{branch: main}}, interval: 1h}}\n"
        "---\n"
        "apiVersion: gitops.haplane.dev/v1\nkind: Sync\n"
        "metadata: {name: shop, namespace: default}\n"
        "spec: {sourceRef: {name: shop}, path: app, prune: true, targets: [{name: platform}]}\n"
    )
    r = kubectl(admin, "apply", "-f", str(manifests))
    assert r.returncode == 0, r.stderr

    def configmap() -> dict:
        r = kubectl(admin, "get", "configmap", "-n", "tiny", "hello", "-o", "json",
                    "--show-managed-fields")  # fmt: skip
        return json.loads(r.stdout) if r.returncode == 0 else {}

    cm = wait_for(lambda: (c := configmap()) and c, timeout=30)
    assert cm["data"] == {"greeting": "hello"}
    assert [f["manager"] for f in cm["metadata"]["managedFields"]] == ["haplane-gitops"]

    def sync_status(name: str) -> dict:
        """A Sync's status through the gate ({} while the gate does not answer)."""
        r = kubectl(admin, "get", "sync", "-n", "default", name, "-o", "json")
        return (json.loads(r.stdout).get("status") or {}) if r.returncode == 0 else {}

    def applied() -> str | None:
        return sync_status("tiny").get("lastAppliedRevision")

    wait_for(lambda: applied() == head)

    def shop_objects() -> dict[str, tuple[str, dict]]:
        """What the platform holds for `shop`, through the gate: kind/name -> (uid, data)."""
        items = []
        for args in (["namespace", "shop"], ["configmaps", "-n", "shop"]):
            r = kubectl(admin, "get", *args, "-o", "json")
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            items += out.get("items", [out])
        return {
            f"{o['kind']}/{o['metadata']['name']}": (o["metadata"]["uid"], o.get("data") or {})
            for o in items
        }

    def shop_synced(revision: str) -> dict | None:
        """The Sync's status once it says `revision` is applied everywhere, Synced=True."""
        s = sync_status("shop")
        synced = next((c for c in s.get("conditions") or () if c["type"] == "Synced"), {})
        return (
            s
            if s.get("lastAppliedRevision") == revision and synced.get("status") == "True"
            else None
        )

    def inventory() -> list[list[str]]:
        """The Sync's inventory in the target (named by the Sync and the target)."""
        r = kubectl(admin, "get", "configmap", "-n", "haplane-gitops", "default.shop.platform",
                    "-o", "json")  # fmt: skip
        assert r.returncode == 0, r.stderr
        return json.loads(json.loads(r.stdout)["data"]["objects"])

    def inventoried(*configmaps: str) -> list[list[str]]:
        return sorted([["v1", "Namespace", "", "shop"]]
                      + [["v1", "ConfigMap", "shop", n] for n in configmaps])  # fmt: skip

    wait_for(lambda: shop_synced(shop_head), timeout=30)
    before = shop_objects()
    assert {k: v[1] for k, v in before.items()} == {
        "Namespace/shop": {},
        "ConfigMap/a": {"value": "one"},
        "ConfigMap/b": {"value": "one"},
        "ConfigMap/c": {"value": "one"},
    }
    assert inventory() == inventoried("a", "b", "c")

    def writers() -> set[str]:
        """Who wrote the ConfigMap, as the replicas' audit logs say."""
        found = set()
        for path in (state / "audit").glob("*.log"):
            for line in path.read_text().splitlines():
                try:
                    e = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if (e.get("objectRef") or {}).get("name") == "hello" and e["verb"] in (
                    "create",
                    "patch",
                    "update",
                ):
                    found.add(e["user"]["username"])
        return found

    # the controller's ServiceAccount, through the gate, and nobody else
    assert wait_for(writers) == {"system:serviceaccount:kube-system:haplane-gitops"}

    # a planned switchover of the platform's region, eu-west -> eu-central, with the
    # controllers running
    gate = next(e["url"] for e in status(state)["edges"] if e["kind"] == "gate")

    def served_by() -> str | None:
        """The region whose replica answers a read through the gate."""
        conn = connection(gate, state=state)
        try:
            conn.request("GET", "/api/v1/namespaces/default")
            resp = conn.getresponse()
            resp.read()
            return resp.getheader("X-Haplane-Region") if resp.status == 200 else None
        except (OSError, http.client.HTTPException):
            return None  # the gate closes its connections to the old region
        finally:
            conn.close()

    assert served_by() == "eu-west"
    wait_for(
        lambda: status(state)["global_state"]["fences"]["eu-central"] == "standby:eu-west@1",
        timeout=30,
    )
    r = haplane(state, "failover", "--direct", "--to", "eu-central", "--reason", "gitops drill")
    assert "eu-west (epoch 1) -> eu-central (epoch 2)" in r.stdout, r.stdout
    g = status(state)["global_state"]["active"]
    assert (g["region"], g["epoch"], g["writable"]) == ("eu-central", 2, True)
    wait_for(lambda: served_by() == "eu-central", timeout=30)
    # what the controller goes on from, replicated: the status, the objects, the inventory
    assert shop_synced(shop_head)
    assert shop_objects() == before
    assert inventory() == inventoried("a", "b", "c")

    # the next commit: a changed, c removed; poked through the instance that does not lead
    # (it annotates the GitSource through its own gate, now in eu-central)
    shop_head = _shop(shop, {"a": "two", "b": "one"})
    leader = wait_for(lambda: len(names := leaders()) == 1 and names[0])
    (idle,) = {"global/gitops-1", "global/gitops-2"} - {leader}
    assert _poke(state, gitops[idle]["url"], "default/shop", sign=False) == 401  # unsigned
    assert _poke(state, gitops[idle]["url"], "default/shop") == 202
    status_after = wait_for(lambda: shop_synced(shop_head), timeout=60)
    after = shop_objects()
    assert sorted(after) == ["ConfigMap/a", "ConfigMap/b", "Namespace/shop"]  # c pruned
    assert after["ConfigMap/a"] == (before["ConfigMap/a"][0], {"value": "two"})  # patched
    assert after["ConfigMap/b"] == before["ConfigMap/b"]  # untouched
    assert after["Namespace/shop"] == before["Namespace/shop"]
    r = kubectl(admin, "get", "configmap", "-n", "shop", "c")
    assert r.returncode != 0 and "NotFound" in r.stderr, r.stderr
    (target,) = status_after["targets"]
    assert target["synced"] and target["revision"] == shop_head and target["objects"] == 3
    assert target["errors"] == [] and target["drift"] == []
    assert target["pruned"] == ["ConfigMap/c (namespace shop)"]
    assert inventory() == inventoried("a", "b")

    # the leader killed, and the platform switched back to eu-west while no instance leads:
    # the other takes the Lease once it expires, with nothing in memory, and goes on from the
    # status and inventories written in eu-central and replicated to eu-west
    r = haplane(state, "fault", "kill", leader)
    assert "killed" in r.stdout
    (other,) = {"global/gitops-1", "global/gitops-2"} - {leader}
    wait_for(
        lambda: status(state)["global_state"]["fences"]["eu-west"] == "standby:eu-central@2",
        timeout=30,
    )
    r = haplane(state, "failover", "--direct", "--to", "eu-west", "--reason", "gitops drill back")
    assert "eu-central (epoch 2) -> eu-west (epoch 3)" in r.stdout, r.stdout
    wait_for(lambda: served_by() == "eu-west", timeout=30)
    assert shop_synced(shop_head) and shop_objects() == after
    assert inventory() == inventoried("a", "b")
    wait_for(lambda: leaders() == [other], timeout=60)
    assert f"global/{holder()}" == other
    _commit(repo, "again")
    shop_head = _shop(shop, {"a": "two", "b": "three", "d": "one"})
    assert _poke(state, gitops[other]["url"], "default/shop") == 202
    wait_for(lambda: configmap().get("data") == {"greeting": "again"}, timeout=30)
    (target,) = wait_for(lambda: shop_synced(shop_head), timeout=60)["targets"]
    last = shop_objects()
    assert sorted(last) == ["ConfigMap/a", "ConfigMap/b", "ConfigMap/d", "Namespace/shop"]
    for name in ("ConfigMap/a", "Namespace/shop"):
        assert last[name] == after[name]
    assert last["ConfigMap/b"] == (before["ConfigMap/b"][0], {"value": "three"})
    assert last["ConfigMap/d"][1] == {"value": "one"}
    assert target["objects"] == 4 and target["pruned"] == [] and target["errors"] == []
    assert inventory() == inventoried("a", "b", "d")
    assert served_by() == "eu-west"
    haplane(state, "fault", "restart", leader)
    wait_for(
        lambda: (
            (g := {x["name"]: x for x in status(state)["gitops"]}[leader])["ready"]
            and not g["leading"]
        )
    )
