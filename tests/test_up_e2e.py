"""`haplane up -d` on the two-regions example as real processes: status, faults, supervision,
`down`, a SIGKILLed supervisor taking its children with it, and the GitOps controllers
applying a git repository through the gate."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from haplane.local import pidfile
from haplane.local.state_dir import StateDir
from tests.topology_helpers import (
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
    haplane(state, "down")
    haplane(state, "up", "-d", "--example", "two-regions")
    assert json.loads((state / "ports.json").read_text()) == ports_before
    assert asyncio.run(get()) == b"yes"
    # a restart keeps the region a failover made active
    active = status(state)["global_state"]["active"]
    assert (active["region"], active["epoch"]) == ("eu-central", 2)
    haplane(state, "down")
    # --fresh wipes data (and the ports assigned with it)
    haplane(state, "up", "-d", "--fresh", "--example", "two-regions")
    endpoints = region_endpoints()
    assert asyncio.run(get()) is None


def test_sigkill_of_the_supervisor_takes_every_child_with_it(state: Path):
    haplane(state, "up", "-d", "--example", "two-regions")
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
    # and it can come back up on the same state dir
    haplane(state, "up", "-d", "--example", "two-regions")
    assert status(state)["supervisor"] == "healthy"


def test_up_refuses_a_file_with_errors_unless_forced(state: Path, tmp_path: Path):
    text = (Path(__file__).parent.parent / "examples" / "two-regions.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    # the witness loses its gate: fewer than 3 vantage sites
    bad.write_text(text.replace("      - {name: gate-witness, site: witness}\n", ""))
    r = haplane(state, "up", "-d", str(bad), check=False)
    assert r.returncode == 1 and "gate-vantage-sites" in r.stderr
    assert processes_under(state) == []
    r = haplane(state, "up", "-d", "--force", str(bad))
    assert "despite HA errors" in r.stderr
    assert status(state)["supervisor"] == "healthy"


def test_a_port_lost_to_another_process_is_reassigned_for_a_new_cluster(state: Path):
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        state.mkdir(parents=True)
        # As if the port had been assigned and then taken before etcd could bind it.
        (state / "ports.json").write_text(json.dumps({"eu-west/etcd-2#peer": taken}))
        r = haplane(state, "up", "-d", "--example", "two-regions")
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


def test_gitops_controllers_apply_a_repository_through_the_gate(
    state: Path, tmp_path: Path, start_topology
):
    """Both instances of the example run, one holds the Lease, and a Sync created through the
    gate is applied through the gate, as the controller's ServiceAccount (TLS, its token file,
    RBAC); the leader killed, the other takes over and applies the next commit."""
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

    def applied() -> str | None:
        r = kubectl(admin, "get", "sync", "-n", "default", "tiny", "-o", "json")
        return json.loads(r.stdout).get("status", {}).get("lastAppliedRevision")

    wait_for(lambda: applied() == head)

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

    # the leader killed: the other takes the Lease once it expires, and syncs the next commit
    r = haplane(state, "fault", "kill", leader)
    assert "killed" in r.stdout
    (other,) = {"global/gitops-1", "global/gitops-2"} - {leader}
    wait_for(lambda: leaders() == [other], timeout=40)
    assert f"global/{holder()}" == other
    _commit(repo, "again")
    wait_for(lambda: configmap().get("data") == {"greeting": "again"}, timeout=30)
    haplane(state, "fault", "restart", leader)
    wait_for(
        lambda: (
            (g := {x["name"]: x for x in status(state)["gitops"]}[leader])["ready"]
            and not g["leading"]
        )
    )
