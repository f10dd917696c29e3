"""Region failover end to end: the two-regions example with every site in its own network
namespace (`haplane up --netns`), real processes killed, paused and cut apart by `haplane drill`.

Each drill asserts, from what the client saw and what the servers recorded:
- failover happens when it must (region loss, a partition, paused balancers) and not when it
  must not (a replica loss, a lone gate behind a one-sided cut, a blip under `downAfterMs`);
- no write of an older epoch committed after the first write of a newer epoch (the replicas'
  write journals: region, epoch, send and acknowledgement time of every write);
- every acknowledged write is present afterwards in the region that acknowledged it.

One topology for the module; each drill undoes its fault. When `CI` is set, a machine that cannot
make network namespaces fails these tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haplane.local.gate_plans import resolve_all
from haplane.local.ports import PortRegistry
from haplane.store import APPLIED_KEY, AppliedRecord, EtcdClient, replicated
from haplane.topology import load_file
from tests.topology_helpers import (
    admin_ssl,
    drill,
    etcd_tls,
    finished_operation,
    haplane,
    in_words,
    kubectl,
    netns_example,
    status,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with netns_example(tmp_path_factory.mktemp("failover-e2e")) as root:
        yield root


def assert_safe(result: dict[str, Any]) -> None:
    meta = result["meta"]
    assert result["lost_writes"] == [], result["lost_writes"]
    assert result["epoch_order_violations"] == [], result["epoch_order_violations"]
    assert meta["read_back_problems"] == []
    assert result["server_writes"] > 0  # the journals were read: the check had data
    writes = [o for o in result["operations"] if o["kind"] == "write" and o["ok"]]
    assert writes, "no write succeeded at all"
    assert result["_exit"] == 0, result["_stderr"]


def test_region_loss_fails_over_without_losing_writes(topo: Path) -> None:
    result = drill(topo, "region-kill")
    meta = result["meta"]
    assert meta["failed_over"], result["_stderr"]
    assert meta["after"]["region"] != meta["before"]["region"]
    assert meta["after"]["epoch"] == meta["before"]["epoch"] + 1
    assert meta["after"]["writable"]
    assert_safe(result)
    # writes were acknowledged in both epochs, each by the region that held it
    epochs = {(o["region"], o["epoch"]) for o in result["operations"] if o["ok"]}
    assert (meta["before"]["region"], meta["before"]["epoch"]) in epochs
    assert (meta["after"]["region"], meta["after"]["epoch"]) in epochs
    phases = result["phases"]
    assert phases["fence_wait"] >= (meta["after"]["grantMs"] + meta["after"]["marginMs"]) / 1000
    # what the killed region wrote after the cut was saved, then it was re-seeded and follows
    rejoin = meta["rejoin"]
    assert rejoin is not None and rejoin["region"] == meta["before"]["region"]
    assert meta["replication_problems"] == []
    cut = result["cut"]
    assert (cut["epoch"], cut["source"], cut["planned"]) == (
        meta["after"]["epoch"],
        meta["before"]["region"],
        False,
    )
    # the killed region is back (as a standby) before the next drill
    wait_for(lambda: haplane(topo, "status", check=False).returncode == 0, timeout=60)
    # the automatic failover is recorded for review, as a Switchover the controller asked for
    kc = topo / "admin.kc"
    haplane(topo, "kubeconfig", "-o", str(kc))

    def recorded() -> dict[str, Any] | None:
        r = kubectl(kc, "get", "switchover", f"automatic-epoch-{meta['after']['epoch']}",
                    "-o", "json")  # fmt: skip
        obj = json.loads(r.stdout) if r.returncode == 0 else None
        return obj if obj and obj["status"]["phase"] == "Succeeded" else None

    obj = wait_for(recorded, timeout=30)
    assert obj["spec"]["targetRegion"] == meta["after"]["region"]
    assert obj["spec"]["fromRegion"] == meta["before"]["region"]
    # through the API, as the controller's own ServiceAccount: authorized and audited
    sa = "system:serviceaccount:kube-system:haplane-failover-controller"
    assert obj["status"]["requestedBy"]["username"] == sa, obj["status"]
    r = haplane(topo, "audit", "--resource", "switchovers", "--verb", "create", "--user", sa,
                "--json")  # fmt: skip
    names = [json.loads(line)["objectRef"].get("name") for line in r.stdout.splitlines()]
    assert obj["metadata"]["name"] in names, r.stdout


def test_a_planned_switchover_under_load_loses_nothing(topo: Path) -> None:
    result = drill(topo, "switchover")
    meta = result["meta"]
    assert meta["failed_over"], result["_stderr"]
    assert_safe(result)
    assert result["lost_updates"] == [] and result["lost_above_cut"] == []
    assert result["cut"]["planned"]
    gc = haplane(topo, "gc", "status").stdout  # a planned switch pauses no garbage collector
    assert "eu-west: runs" in gc and "eu-central: runs" in gc
    writes = [o for o in result["operations"] if o["kind"] == "write" and o["ok"]]
    assert {o["region"] for o in writes} == {meta["before"]["region"], meta["after"]["region"]}


def test_a_replicator_loss_is_taken_over(topo: Path) -> None:
    result = drill(topo, "replicator-kill")
    assert not result["meta"]["failed_over"], result["_stderr"]
    assert_safe(result)
    assert result["meta"]["replication_problems"] == []


def test_a_cut_off_standby_lags_then_catches_up(topo: Path) -> None:
    result = drill(topo, "standby-partition")
    meta = result["meta"]
    assert not meta["failed_over"], result["_stderr"]
    assert_safe(result)
    standby = next(r for r in meta["replication"] if r != meta["before"]["region"])
    seen = meta["replication"][standby]
    assert "Disconnected" in seen["states"] or (seen["max_lag_seconds"] or 0) > 1.0, seen
    assert meta["replication_problems"] == []  # caught up after the cut healed


def test_the_standby_keyspace_equals_the_active_one_but_for_region_local_keys(
    topo: Path,
) -> None:
    """The target's keys as of its applied source revision equal the source's at that
    revision, except the keys that never leave a region (listed in the README)."""
    topology = load_file(topo / "topology.yaml")
    plan = resolve_all(topology, PortRegistry(topo / "ports.json", read_only=True))
    active = status(topo)["global_state"]["active"]["region"]
    eps = {c.view.scope: c.endpoints for c in plan.clusters}
    standby = next(r for r in eps if r not in (active, "global"))

    async def compare() -> tuple[set[bytes], int]:
        async with (
            EtcdClient(eps[active], timeout=5, tls=etcd_tls(topo)) as src,
            EtcdClient(eps[standby], timeout=5, tls=etcd_tls(topo)) as dst,
        ):
            kvs, _ = await dst.range(b"\0", b"\0")
            theirs = {kv.key: kv.value for kv in kvs}
            applied = AppliedRecord.from_kv(next(kv for kv in kvs if kv.key == APPLIED_KEY))
            assert applied.source == active
            kvs, _ = await src.range(b"\0", b"\0", revision=applied.revision)
            mine = {kv.key: kv.value for kv in kvs}
            differ = {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}
            return differ, len(mine)

    differ, total = asyncio.run(compare())
    assert total > 50  # drills wrote plenty
    assert differ, "the region-local keys (fence key, bookkeeping) always differ"
    assert all(not replicated(k) for k in differ), sorted(k for k in differ if replicated(k))


def test_a_partition_of_the_active_region_fails_over(topo: Path) -> None:
    result = drill(topo, "partition")
    assert result["meta"]["failed_over"], result["_stderr"]
    assert_safe(result)


def test_a_lone_gate_behind_a_cut_does_not_fail_over(topo: Path) -> None:
    result = drill(topo, "gate-cut", "--observe", "6")  # room to move, on a loaded machine
    assert not result["meta"]["failed_over"], result["_stderr"]
    assert result["phases"]["detection"] is not None  # that gate did see the region down
    assert_safe(result)
    # requests sent to the cut-off gate fail (when the client's gate is that one: it depends on
    # which region is active) until the client moves to another gate, on a refused or reset
    # connection (an l4 gate closes its listener; the test's topology has l4 gates only).
    # Elsewhere only refusals the server answered: when the control etcd's leader was on the
    # cut-off site, the active region's replicas cannot confirm their fence while it elects
    # another, and refuse writes (503, "writes are fenced") for that moment; and the update
    # loop's 409 Conflict when the version it held went stale (a timed-out update that
    # committed: the verdict counts these as expected conflicts). Every loop ends served.
    fault = next(e for e in result["events"] if e["name"] == "fault")
    lone = fault["detail"].split(" cut from ")[0]
    topology = load_file(topo / "topology.yaml")
    plan = resolve_all(topology, PortRegistry(topo / "ports.json", read_only=True))
    assert all(g.mode == "l4" for g in plan.gates)
    cut_gate = {f"{g.host}:{g.port}" for g in plan.gates if g.site == lone}
    assert len(cut_gate) == 1, (lone, fault)

    def on_cut_gate(o: dict[str, Any]) -> bool:
        return o["gate"].split("://")[1] in cut_gate

    failed = [o for o in result["operations"] if not o["ok"]]
    assert all(o["returned"] >= fault["t"] for o in failed), in_words(failed)
    elsewhere = [o for o in failed if not on_cut_gate(o)]
    assert all(
        (o["error"] == "http-503" and "writes are fenced" in (o["message"] or ""))
        or (o["error"] == "http-409" and o["loop"] == "update")
        for o in elsewhere
    ), f"{in_words(failed)}\ncut gate {cut_gate}, fault at {fault['t']:.2f}s"
    for loop in {o["loop"] for o in failed}:
        mine = [o for o in result["operations"] if o["loop"] == loop]
        assert mine[-1]["ok"], (loop, in_words([o for o in mine if not o["ok"]]))
        cut = [i for i, o in enumerate(mine) if not o["ok"] and on_cut_gate(o)]
        if cut:  # one run of failures there, then served by another gate, never back
            moved = next((i for i in range(cut[0], len(mine)) if mine[i]["ok"]), None)
            after = in_words(mine[cut[0] :])
            assert moved is not None and not on_cut_gate(mine[moved]), (loop, after)
            assert all(not on_cut_gate(o) for o in mine[moved:]), (loop, after)


def test_a_blip_shorter_than_down_after_does_not_fail_over(topo: Path) -> None:
    result = drill(topo, "blip")
    assert not result["meta"]["failed_over"], result["_stderr"]
    assert_safe(result)


def test_a_replica_loss_fails_only_requests_in_flight(topo: Path) -> None:
    """One write and one read at a time. What fails is what the dying replica held: the
    request in flight on it, and (the CI's full run showed it) a connection its kernel still
    accepted while the killed process was being torn down, which the L4 relays cannot send
    elsewhere once its first bytes went. So: only at the fault, at most those two per loop,
    and every later request served."""
    result = drill(topo, "replica-kill")
    assert not result["meta"]["failed_over"]
    assert_safe(result)
    fault = next(e["t"] for e in result["events"] if e["name"] == "fault")
    failed = [o for o in result["operations"] if not o["ok"]]
    dying = fault + 1.0  # (measured under a full suite's load: the burst lasted ~0.1 s)
    assert all(o["invoked"] < dying for o in failed), (fault, in_words(failed))
    assert len([o for o in failed if o["kind"] == "write"]) <= 2, in_words(failed)
    assert len([o for o in failed if o["kind"] == "read"]) <= 2, in_words(failed)
    late = [o for o in result["operations"] if o["invoked"] > dying]
    assert late and all(o["ok"] for o in late), in_words([o for o in late if not o["ok"]])


def _write(url: str, name: str, ctx: ssl.SSLContext | None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"{url}/api/v1/namespaces/default/configmaps",
        data=json.dumps({"metadata": {"name": name}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_global_control_quorum_loss_fences_the_active_region(topo: Path) -> None:
    """Safety first: nobody can renew the grant, so the active region stops writing within
    grant - margin; writes come back when the control etcd does."""
    # a replica that is up (an earlier drill of this module may have just restarted one)
    doc = wait_for(
        lambda: (
            (d := status(topo))
            and any(
                r["ready"]
                for r in d["replicas"]
                if r["name"].startswith(f"{d['global_state']['active']['region']}/")
            )
            and d
        ),
        timeout=30,
    )
    active = doc["global_state"]["active"]["region"]
    replica = next(r for r in doc["replicas"] if r["name"].startswith(f"{active}/") and r["ready"])
    controls = [
        m["name"] for c in doc["clusters"] if c["name"] == "global/etcd" for m in c["members"]
    ]
    ctx = admin_ssl(topo)
    assert _write(replica["url"], f"before-{time.time_ns()}", ctx)[0] == 201
    for name in controls[:2]:
        haplane(topo, "fault", "kill", name)
    try:
        _, body = wait_for(
            lambda: (
                (r := _write(replica["url"], f"during-{time.time_ns()}", admin_ssl(topo)))[0] == 503
                and r
            ),
            timeout=10,
        )
        assert "fenced" in body["message"] and body["kind"] == "Status"
    finally:
        for name in controls[:2]:
            haplane(topo, "fault", "restart", name)
    wait_for(
        lambda: _write(replica["url"], f"after-{time.time_ns()}", admin_ssl(topo))[0] == 201,
        timeout=30,
    )


def _read(url: str, name: str, ctx: ssl.SSLContext | None) -> int:
    try:
        path = f"{url}/api/v1/namespaces/default/configmaps/{name}"
        with urllib.request.urlopen(path, context=ctx) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_forced_switchover_is_fenced_and_records_the_cut(topo: Path) -> None:
    """--force: no freeze, no catch-up: the new region writes only after the old region's
    grant has run out, and the cut (what it had applied) is recorded."""
    before = status(topo)["global_state"]["active"]
    other = next(r for r in ("eu-west", "eu-central") if r != before["region"])
    t0 = time.monotonic()
    r = haplane(topo, "failover", "--direct", "--to", other, "--force", "--reason", "forced")
    took = time.monotonic() - t0
    assert took >= (before["grantMs"] + before["marginMs"]) / 1000  # it waited out the grant
    assert "promoted at revision" in r.stdout
    doc = status(topo)
    assert doc["global_state"]["active"]["region"] == other
    cut = doc["cuts"][-1]
    assert (cut["epoch"], cut["region"], cut["planned"]) == (before["epoch"] + 1, other, False)


def test_planned_switchover_carries_the_data_and_reverses_the_stream(topo: Path) -> None:
    doc = status(topo)
    before = doc["global_state"]["active"]
    other = next(r for r in ("eu-west", "eu-central") if r != before["region"])
    old_replica = next(x for x in doc["replicas"] if x["name"].startswith(f"{before['region']}/"))
    standby = f"standby:{before['region']}@{before['epoch']}"
    wait_for(lambda: status(topo)["global_state"]["fences"][other] == standby, timeout=30)
    acked = f"acked-{time.time_ns()}"
    wait_for(lambda: _write(old_replica["url"], acked, admin_ssl(topo))[0] == 201)
    r = haplane(topo, "failover", "--direct", "--to", other, "--reason", "test switchover")
    assert f"(epoch {before['epoch'] + 1})" in r.stdout and "planned" in r.stdout
    after = status(topo)["global_state"]
    assert after["active"]["region"] == other and after["active"]["writable"]
    assert after["active"]["epoch"] == before["epoch"] + 1
    assert after["fences"][before["region"]] == f"standby:{other}@{before['epoch'] + 1}"
    replica = next(x for x in status(topo)["replicas"] if x["name"].startswith(f"{other}/"))
    assert (
        _read(replica["url"], acked, admin_ssl(topo)) == 200
    )  # written before the switch, there after it
    last = after["history"][-1]
    assert last["reason"] == "test switchover" and last["by"].startswith("operator")
    replica = next(x for x in status(topo)["replicas"] if x["name"].startswith(f"{other}/"))
    assert wait_for(
        lambda: _write(replica["url"], f"switched-{time.time_ns()}", admin_ssl(topo))[0] == 201
    )


def test_identities_and_permissions_survive_switchover_and_failover(topo: Path) -> None:
    """Credentials, roles and bindings are API objects and certificates of the one platform
    CA: a user's certificate and a ServiceAccount token minted in one region keep exactly
    their permissions, through the gate, after a planned switchover and after a forced
    (unplanned, fenced) failover back."""
    kc, erin = topo / "admin.kc", topo / "erin.kc"
    haplane(topo, "kubeconfig", "-o", str(kc))
    haplane(topo, "kubeconfig", "--user", "erin", "--group", "qa", "-o", str(erin))
    ns = f"idt-{time.time_ns()}"

    for args in (
        ["create", "namespace", ns],
        ["create", "rolebinding", "erin-view", "--clusterrole=view", "--user=erin", "-n", ns],
        ["create", "serviceaccount", "bot", "-n", ns],
        ["create", "rolebinding", "bot-edit", "--clusterrole=edit",
         f"--serviceaccount={ns}:bot", "-n", ns],
    ):  # fmt: skip
        r = kubectl(kc, *args)
        assert r.returncode == 0, r.stderr
    r = kubectl(kc, "create", "token", "bot", "-n", ns, "--duration=1h")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    ctx = admin_ssl(topo)
    assert ctx is not None
    gate = next(e["url"] for e in status(topo)["edges"] if e["kind"] == "gate")
    anonymous = ssl.create_default_context(cafile=str(topo / "pki/platform/ca.crt"))

    def as_bot(name: str) -> tuple[int, str | None]:
        """Create a ConfigMap in `ns` with the token only; (status, serving region)."""
        req = urllib.request.Request(
            f"{gate}/api/v1/namespaces/{ns}/configmaps",
            data=json.dumps({"metadata": {"name": name}}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=5, context=anonymous) as resp:
                return resp.status, resp.headers.get("X-Haplane-Region")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("X-Haplane-Region")

    def permissions_hold(region: str) -> None:
        _, served_by = wait_for(lambda: (r := as_bot(f"b-{time.time_ns()}"))[0] == 201 and r)
        assert served_by == region
        assert as_bot("../x")[0] in (400, 404, 422)  # its token still authenticates
        r = kubectl(erin, "get", "configmaps", "-n", ns)
        assert r.returncode == 0, r.stderr
        for args in (["get", "configmaps", "-n", "default"], ["get", "secrets", "-n", ns],
                     ["create", "configmap", "x", "-n", ns]):  # fmt: skip
            r = kubectl(erin, *args)
            assert r.returncode != 0 and "forbidden" in r.stderr.lower(), (args, r.stderr)
        r = kubectl(erin, "auth", "whoami", "-o", "json")
        assert json.loads(r.stdout)["status"]["userInfo"]["username"] == "erin"

    before = status(topo)["global_state"]["active"]
    permissions_hold(before["region"])
    other = next(r for r in ("eu-west", "eu-central") if r != before["region"])
    standby = f"standby:{before['region']}@{before['epoch']}"
    wait_for(lambda: status(topo)["global_state"]["fences"][other] == standby, timeout=30)
    haplane(topo, "failover", "--direct", "--to", other, "--reason", "identities: planned")
    permissions_hold(other)
    # back, unplanned: the old region is fenced out, the standby promoted at its cut
    wait_for(
        lambda: status(topo)["global_state"]["fences"][before["region"]].startswith(
            f"standby:{other}@"
        ),
        timeout=30,
    )

    def caught_up() -> bool:  # a forced failover keeps what the standby had applied
        rows = {r["region"]: r for r in status(topo)["replication"]}
        return rows[before["region"]]["lag_revisions"] == 0

    wait_for(caught_up, timeout=30)
    haplane(
        topo, "failover", "--direct", "--to", before["region"], "--force", "--reason", "identities"
    )
    permissions_hold(before["region"])


def test_four_eyes_switchover_through_the_api(topo: Path) -> None:
    """The issue's scenario as a new user would run it: alice (dr-operator) asks for a
    switchover, which waits Pending; her own approval is refused; bob (dr-operator) approves
    through a region's balancer, and the failover controller carries it out, its phases
    printed to alice. carol, bound to nothing, may not ask. dave (platform-admin) fails back by
    breaking glass. Every step is in `haplane audit`."""
    import subprocess
    import sys

    kc = topo / "admin.kc"
    haplane(topo, "kubeconfig", "-o", str(kc))
    users = {u: topo / f"{u}.kc" for u in ("alice", "bob", "carol", "dave")}
    for user, path in users.items():
        haplane(topo, "kubeconfig", "--user", user, "-o", str(path))
    for user in ("alice", "bob"):
        r = kubectl(kc, "create", "clusterrolebinding", f"{user}-ops",
                    "--clusterrole=haplane:dr-operator", f"--user={user}")  # fmt: skip
        assert r.returncode == 0 or "AlreadyExists" in r.stderr, r.stderr
    # a platform-admin is made only by an approved RoleGrant; the first one breaks glass
    r = kubectl(kc, "create", "clusterrolebinding", "dave-admin",
                "--clusterrole=haplane:platform-admin", "--user=dave")  # fmt: skip
    assert r.returncode != 0 and "needs another person's approval" in r.stderr, r.stderr
    r = haplane(topo, "grant", "--clusterrole", "haplane:platform-admin", "--user", "dave",
                "--reason", "the first platform-admin", "--break-glass")  # fmt: skip
    assert "succeeded" in r.stdout, (r.stdout, r.stderr)

    before = status(topo)["global_state"]["active"]
    other = next(r for r in ("eu-west", "eu-central") if r != before["region"])
    standby = f"standby:{before['region']}@{before['epoch']}"
    wait_for(lambda: status(topo)["global_state"]["fences"][other] == standby, timeout=30)

    r = haplane(topo, "failover", "--to", other, "--kubeconfig", str(users["carol"]),
                "--reason", "not mine to ask", check=False)  # fmt: skip
    assert r.returncode == 1 and "403" in r.stderr and "carol" in r.stderr, r.stderr

    alice = subprocess.Popen(
        [sys.executable, "-m", "haplane.cli", "failover", "--to", other, "--reason",
         "four eyes", "--kubeconfig", str(users["alice"]), "--state-dir", str(topo)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def pending() -> str | None:
            r = kubectl(kc, "get", "switchovers", "-o", "json")
            items = json.loads(r.stdout)["items"] if r.returncode == 0 else []
            mine = [
                i["metadata"]["name"]
                for i in items
                if i["status"]["requestedBy"]["username"] == "alice"
                and i["status"]["phase"] == "Pending"
            ]
            return mine[0] if mine else None

        name = wait_for(pending, timeout=30)
        time.sleep(1.0)  # nothing moves while it waits
        assert status(topo)["global_state"]["active"]["epoch"] == before["epoch"]
        r = haplane(topo, "approve", name, "--kubeconfig", str(users["alice"]), check=False)
        assert r.returncode == 1 and "own approval never counts" in r.stderr, r.stderr
        r = haplane(topo, "approve", name, "--kubeconfig", str(users["bob"]),
                    "--region", other, "--message", "looks right")  # fmt: skip
        assert "Approved" in r.stdout, r.stdout
        out, err = alice.communicate(timeout=60)
    finally:
        if alice.poll() is None:
            alice.kill()
            alice.wait()
    assert alice.returncode == 0, err
    # (Approved and Running may pass between two polls: the phases list has every step)
    for phase in ("Pending", "Claimed", "CaughtUp", "Committed", "Writable", "Succeeded"):
        assert phase in err, (phase, err)
    assert "succeeded" in out and "nothing lost" in out, out
    after = status(topo)["global_state"]
    assert after["active"]["region"] == other and after["active"]["writable"]
    assert after["active"]["epoch"] == before["epoch"] + 1
    last = after["history"][-1]
    assert last["by"] == f"alice (switchover/{name}, approved by bob)", last
    assert last["reason"] == "four eyes"

    # back, forced and without approval: only a platform-admin may break glass
    r = haplane(topo, "failover", "--to", before["region"], "--force", "--break-glass",
                "--reason", "drill", "--kubeconfig", str(users["alice"]), check=False)  # fmt: skip
    assert r.returncode == 1 and "haplane:platform-admin" in r.stderr, r.stderr
    wait_for(
        lambda: status(topo)["global_state"]["fences"][before["region"]].startswith(
            f"standby:{other}@"
        ),
        timeout=30,
    )
    r = haplane(topo, "failover", "--to", before["region"], "--force", "--break-glass",
                "--reason", "drill: break glass", "--kubeconfig", str(users["dave"]))  # fmt: skip
    assert "Committed" in r.stderr and "Writable" in r.stderr, r.stderr
    back = status(topo)["global_state"]["active"]
    assert back["region"] == before["region"] and back["writable"]
    assert "break-glass" in status(topo)["global_state"]["history"][-1]["by"]

    r = haplane(topo, "audit", "--resource", "switchovers/approval", "--json")
    steps = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    said = {(e["user"]["username"], e["responseStatus"]["code"]) for e in steps
            if e["objectRef"].get("name") == name and e["stage"] == "ResponseComplete"}  # fmt: skip
    assert {("alice", 403), ("bob", 200)} <= said, said
    r = haplane(topo, "audit", "--resource", "switchovers", "--verb", "create", "--json")
    creators = {json.loads(line)["user"]["username"] for line in r.stdout.splitlines() if line}
    assert {"alice", "carol", "dave"} <= creators, creators


def test_drills_and_maintenance_through_the_api(topo: Path) -> None:
    """A Drill and MaintenanceActions asked for through the API and carried out by the
    supervisor's agent: a dr-operator's drill runs and reports; a gate-operator may not
    restart an etcd member, an etcd-operator may; a new encryption key waits for another
    platform-admin's approval, then becomes the writer."""
    from tests.topology_helpers import members

    kc = topo / "admin.kc"
    haplane(topo, "kubeconfig", "-o", str(kc))
    users = {u: topo / f"{u}.kc" for u in ("hugo", "frank", "gina", "olga")}
    for user, path in users.items():
        haplane(topo, "kubeconfig", "--user", user, "-o", str(path))
    for user, role in (
        ("hugo", "haplane:dr-operator"),
        ("frank", "haplane:etcd-operator"),
        ("gina", "haplane:gate-operator"),
    ):
        r = kubectl(kc, "create", "clusterrolebinding", f"{user}-ops", f"--clusterrole={role}",
                    f"--user={user}")  # fmt: skip
        assert r.returncode == 0 or "AlreadyExists" in r.stderr, r.stderr
    haplane(topo, "grant", "--clusterrole", "haplane:platform-admin", "--user", "olga",
            "--reason", "drills", "--break-glass")  # fmt: skip

    r = haplane(topo, "drill", "blip", "--kubeconfig", str(users["hugo"]), "--warmup", "1",
                "--observe", "2", "--reason", "monthly drill", timeout=300)  # fmt: skip
    assert "succeeded" in r.stdout and "passed: true" in r.stdout, (r.stdout, r.stderr)
    assert "failedOver: false" in r.stdout and "reports: " in r.stdout, r.stdout

    member = sorted(n for n in members(status(topo)) if n.startswith("eu-central/"))[0]
    r = haplane(topo, "maintenance", "restart", member, "--reason", "not mine",
                "--kubeconfig", str(users["gina"]), check=False)  # fmt: skip
    assert r.returncode == 1 and "needs haplane:etcd-operator" in r.stderr, r.stderr
    r = haplane(topo, "maintenance", "restart", member, "--reason", "kernel update",
                "--kubeconfig", str(users["frank"]))  # fmt: skip
    assert "succeeded" in r.stdout, (r.stdout, r.stderr)
    wait_for(lambda: haplane(topo, "status", check=False).returncode == 0, timeout=60)

    # a balancer of the active region drained by a gate-operator: the gates stop sending it
    # connections (DRAINING, not DOWN), the API still answers through them; its twin, now
    # the region's last one in service, is refused; undrained, it is back UP at every gate
    active = status(topo)["global_state"]["active"]["region"]
    drained, twin = f"{active}/lb-1", f"{active}/lb-2"

    def gates_see(state: str) -> bool:
        doc = status(topo)
        seen = [
            u["state"]
            for e in doc["edges"]
            if e["kind"] == "gate"
            for u in e["upstreams"]
            if u["pool"] == active and u["name"] == "lb-1"
        ]
        return bool(seen) and all(s == state for s in seen)

    r = haplane(topo, "maintenance", "drain", drained, "--reason", "kernel update",
                "--timeout", "3", "--kubeconfig", str(users["frank"]), check=False)  # fmt: skip
    assert r.returncode == 1 and "needs haplane:gate-operator" in r.stderr, r.stderr
    r = haplane(topo, "maintenance", "drain", drained, "--reason", "kernel update",
                "--timeout", "3", "--kubeconfig", str(users["gina"]))  # fmt: skip
    assert "succeeded" in r.stdout and f"{drained}: drained" in r.stdout, r.stdout
    wait_for(lambda: gates_see("draining"), timeout=30)  # each look is a full status
    edge = next(e for e in status(topo)["edges"] if e["name"] == drained)
    assert edge["drained"] == "kernel update" and not edge["ready"], edge
    assert kubectl(kc, "get", "namespaces").returncode == 0
    # a drained balancer is out of service on purpose: its certificate still rotates
    r = haplane(topo, "pki", "rotate", "--component", drained)
    assert r.returncode == 0 and f"{drained}: serving its new certificate" in r.stderr, r.stderr
    r = haplane(topo, "maintenance", "drain", twin, "--reason", "both at once",
                "--kubeconfig", str(users["gina"]), check=False)  # fmt: skip
    assert r.returncode == 1 and "no balancer in service" in r.stderr, r.stderr
    assert not next(e for e in status(topo)["edges"] if e["name"] == twin)["drained"]
    haplane(topo, "maintenance", "undrain", drained, "--reason", "done",
            "--kubeconfig", str(users["gina"]))  # fmt: skip
    wait_for(lambda: gates_see("up"), timeout=30)

    r = haplane(topo, "maintenance", "rotate-encryption-key", "--reason", "yearly",
                "--kubeconfig", str(users["olga"]), "--no-wait")  # fmt: skip
    name = r.stdout.split()[0].split("/", 1)[1]
    time.sleep(1.0)  # nothing happens while it waits
    assert "written by: local\n" in haplane(topo, "secrets", "status").stdout
    r = haplane(topo, "approve", name, "--kubeconfig", str(users["olga"]), check=False)
    assert r.returncode == 1 and "own approval never counts" in r.stderr, r.stderr
    haplane(topo, "approve", name, "--kubeconfig", str(kc))

    st = finished_operation(kc, "maintenanceaction", name, timeout=120)
    assert st["phase"] == "Succeeded", st
    assert "written by: local-2" in haplane(topo, "secrets", "status").stdout
