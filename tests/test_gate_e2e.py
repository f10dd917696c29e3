"""Balancers and gates of the two-regions example as real processes (`haplane up -d`): replica
SIGKILL and SIGTERM behind them, a region without etcd quorum, a watch that survives the loss of
its replica, a gate instance killed under a client, and a failover moving connections.

One topology for the module (each test puts back what it breaks); the client side is raw
`http.client` with no retries of its own, so every failure a test counts is one a client saw.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.topology_helpers import admin_ssl, connection, down_and_check, haplane, status, wait_for

pytestmark = pytest.mark.slow


_state: list[Path] = []  # the module's topology: connections are made as haplane-admin


def open_conn(host: str, port: int, timeout: float = 5) -> http.client.HTTPConnection:
    """A connection like a client's (HTTPS with the platform CA and the admin certificate)."""
    return connection(host, port, state=_state[0], timeout=timeout)


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("gate-e2e") / "state"
    haplane(root, "up", "-d", "--example", "two-regions")
    _state[:] = [root]
    try:
        doc = status(root)
        yield {"state": root, "doc": doc}
    finally:
        down_and_check(root)


def edges(state: Path) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in status(state)["edges"]}


def address(url: str) -> tuple[str, int]:
    host, _, port = url.partition("://")[2].rpartition(":")
    return host, int(port)


def gate(topo: dict[str, Any]) -> tuple[str, int]:
    return address(next(e["url"] for e in topo["doc"]["edges"] if e["kind"] == "gate"))


def get(conn: http.client.HTTPConnection, path: str = "/api/v1/namespaces/default") -> Any:
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    return (
        resp.status,
        resp.getheader("X-Haplane-Region"),
        resp.getheader("X-Haplane-Replica"),
        body,
    )


def once(target: tuple[str, int]) -> Any:
    """One request on a new connection (closed after)."""
    conn = open_conn(*target, timeout=5)
    try:
        return get(conn)
    finally:
        conn.close()


def once_raw(target: tuple[str, int], path: str) -> bytes:
    return bytes(once_path(target, path)[3])


def once_path(target: tuple[str, int], path: str) -> Any:
    conn = open_conn(*target, timeout=5)
    try:
        return get(conn, path)
    finally:
        conn.close()


def upstream_state(state: Path, edge: str, upstream: str) -> str | None:
    e = edges(state)[edge]
    return next((u["state"] for u in e["upstreams"] if u["name"] == upstream), None)


def test_status_shows_balancers_and_gates_forwarding_to_the_active_region(topo):
    by_name = {e["name"]: e for e in topo["doc"]["edges"]}
    assert sorted(by_name) == [
        "eu-central/lb-1",
        "eu-central/lb-2",
        "eu-west/lb-1",
        "eu-west/lb-2",
        "global/gate-eu-central",
        "global/gate-eu-west",
        "global/gate-witness",
    ]
    assert all(e["ready"] and e["pid"] for e in by_name.values())
    gates = [e for e in by_name.values() if e["kind"] == "gate"]
    assert len({g["url"] for g in gates}) == 1  # one shared address (SO_REUSEPORT)
    assert all((g["active_pool"], g["epoch"]) == ("eu-west", 1) for g in gates)
    lb = by_name["eu-west/lb-1"]
    assert lb["region_health"]["healthy"] and lb["region_health"]["etcd_quorum"]
    assert lb["region_health"]["replicas_ready"] == 2
    # every instance serves Prometheus metrics on its admin listener
    assert b"haplane_gate_" in once_raw(address(lb["admin_url"]), "/metrics")
    # and the gate answers like the API server behind it
    status_code, region, _, body = once(gate(topo))
    assert status_code == 200 and region == "eu-west" and json.loads(body)["kind"] == "Namespace"


def test_sigkill_of_a_replica_closes_its_connections_and_it_comes_back(topo):
    state = topo["state"]
    # find a connection through gate and balancer that landed on eu-west/api-1: the balancers
    # pick the least loaded replica, and long-lived clients (the GitOps controllers) may hold
    # connections to api-1, so the others are kept open until one lands there
    pinned, held = None, []
    for _ in range(40):
        conn = open_conn(*gate(topo), timeout=5)
        if get(conn)[2] == "api-1":
            pinned = conn
            break
        held.append(conn)
    for conn in held:
        conn.close()
    assert pinned is not None, "no connection reached api-1"
    haplane(state, "fault", "kill", "eu-west/api-1")
    # the pinned connection is closed (not left hanging): the next request on it fails fast
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        get(pinned)
    pinned.close()
    # new connections go to the other replica
    for _ in range(10):
        status_code, region, replica, _ = once(gate(topo))
        assert (status_code, region, replica) == (200, "eu-west", "api-2")
    assert wait_for(lambda: upstream_state(state, "eu-west/lb-1", "api-1") == "down")
    haplane(state, "fault", "restart", "eu-west/api-1")
    assert wait_for(lambda: upstream_state(state, "eu-west/lb-1", "api-1") == "up", 30)
    # both serve again: connections held open spread over both (least loaded first)
    held = [open_conn(*gate(topo), timeout=5) for _ in range(12)]
    seen = {get(conn)[2] for conn in held}
    for conn in held:
        conn.close()
    assert seen == {"api-1", "api-2"}


def test_rolling_restart_fails_no_request(topo):
    """SIGTERM drains a replica: /readyz turns 503 (no new connections), responses say
    `Connection: close` (clients reconnect elsewhere), then it stops. A keep-alive client with no
    retries of its own loops through gate and balancer and sees no failure."""
    state = topo["state"]
    failures: list[str] = []
    served: dict[str, int] = {}
    stop = threading.Event()

    def client() -> None:
        conn = open_conn(*gate(topo), timeout=5)
        while not stop.is_set():
            try:
                status_code, _, replica, _ = get(conn)
                served[replica] = served.get(replica, 0) + 1
                if status_code != 200:
                    failures.append(f"status {status_code}")
            except (http.client.HTTPException, OSError) as exc:
                failures.append(repr(exc))
                conn.close()
                conn = open_conn(*gate(topo), timeout=5)
        conn.close()

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(1.0)
        for replica in ("eu-west/api-1", "eu-west/api-2"):
            haplane(state, "fault", "term", replica)
            time.sleep(3.0)  # drain delay, then stopped
            haplane(state, "fault", "restart", replica)
            wait_for(
                lambda r=replica: (
                    upstream_state(state, "eu-west/lb-1", r.split("/")[1]) == "up"
                    and upstream_state(state, "eu-west/lb-2", r.split("/")[1]) == "up"
                ),
                30,
            )
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(30)
    assert sum(served.values()) > 50
    assert failures == []


def test_a_watch_through_gate_and_balancer_resumes_after_its_replica_dies(topo):
    state = topo["state"]
    host, port = gate(topo)
    writer = open_conn(host, port, timeout=5)
    ns = f"w{int(time.time() * 1000) % 10**8}"
    body = json.dumps({"metadata": {"name": ns}})
    writer.request("POST", "/api/v1/namespaces", body, {"Content-Type": "application/json"})
    resp = writer.getresponse()
    resp.read()
    assert resp.status == 201

    def create(name: str) -> None:
        """On a new connection each time: a kept one may have been on the replica killed."""
        doc = json.dumps({"metadata": {"name": name}, "data": {"n": name}})
        conn = open_conn(host, port, timeout=5)
        try:
            conn.request(
                "POST",
                f"/api/v1/namespaces/{ns}/configmaps",
                doc,
                {"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            resp.read()
        finally:
            conn.close()
        assert resp.status == 201, resp.status

    create("c0")
    # list, then watch from the list's resourceVersion, on a raw socket through the gate
    writer.request("GET", f"/api/v1/namespaces/{ns}/configmaps")
    rv = json.loads(writer.getresponse().read())["metadata"]["resourceVersion"]

    def watch(from_rv: str) -> socket.socket:
        sock = socket.create_connection((host, port), timeout=10)
        ctx = admin_ssl(state)
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_hostname=host)
        sock.sendall(
            f"GET /api/v1/namespaces/{ns}/configmaps?watch=1&resourceVersion={from_rv} "
            f"HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        return sock

    def events(buf: bytes) -> list[dict[str, Any]]:
        """Complete event lines (one event per chunk: chunk-size lines are skipped)."""
        return [json.loads(line) for line in buf.split(b"\n")[:-1] if line.startswith(b"{")]

    def read_until(sock: socket.socket, count: int) -> tuple[bytes, list[dict[str, Any]]]:
        buf = b""
        deadline = time.monotonic() + 10
        while len(events(buf)) < count and time.monotonic() < deadline:
            buf += sock.recv(65536)
        return buf, events(buf)

    sock = watch(rv)
    create("c1")
    buf, got = read_until(sock, 1)
    assert [e["object"]["metadata"]["name"] for e in got] == ["c1"]
    last_rv = got[-1]["object"]["metadata"]["resourceVersion"]
    head = buf.partition(b"\r\n\r\n")[0].decode().lower()
    replica = next(
        line.split(":", 1)[1].strip() for line in head.split("\r\n") if "x-haplane-replica" in line
    )
    victim = f"eu-west/{replica}"
    haplane(state, "fault", "kill", victim)
    # the stream ends (its connection closed) rather than hanging
    sock.settimeout(5)
    with pytest.raises((ConnectionError, EOFError, ssl.SSLError)):
        while True:
            if not sock.recv(65536):
                raise EOFError
    sock.close()
    create("c2")  # written while no watch is open
    # re-watch from the last resourceVersion: another replica, nothing lost, nothing repeated
    sock = watch(last_rv)
    create("c3")
    _, got = read_until(sock, 2)
    sock.close()
    assert [e["object"]["metadata"]["name"] for e in got] == ["c2", "c3"]
    assert [e["type"] for e in got] == ["ADDED", "ADDED"]
    writer.close()
    haplane(state, "fault", "restart", victim)
    wait_for(lambda: upstream_state(state, "eu-west/lb-1", replica) == "up", 30)


def test_a_region_without_etcd_quorum_is_reported_unhealthy(topo):
    state = topo["state"]
    for m in ("eu-central/etcd-1", "eu-central/etcd-2"):
        haplane(state, "fault", "kill", m)
    try:

        def unhealthy() -> dict[str, Any] | None:
            """Both verdicts: the replicas' /readyz and the balancer's own etcd probe may
            turn at different moments; the region is reported unhealthy once they have lasted
            longer than the grace for an etcd election (two election timeouts)."""
            rh = edges(state)["eu-central/lb-1"]["region_health"]
            if rh and rh["etcd_quorum"] is False and rh["replicas_ready"] == 0:
                return rh
            return None

        report = wait_for(unhealthy, 20)
        assert len(report["reasons"]) == 2
        report = wait_for(
            lambda: (
                (r := edges(state)["eu-central/lb-1"]["region_health"]) and not r["healthy"] and r
            ),
            10,
        )
        assert report["grace_left_s"] == 0

        # the gates see it too (the standby region's pool is checked all the time); each
        # balancer judges its region on its own clock and the gate probes each balancer on its
        # own interval, so the second balancer may turn a few checks after the first
        def central_down_at_gate() -> bool:
            ups = edges(state)["global/gate-witness"]["upstreams"]
            return all(u["state"] != "up" for u in ups if u["pool"] == "eu-central")

        wait_for(central_down_at_gate, 15)
    finally:
        for m in ("eu-central/etcd-1", "eu-central/etcd-2"):
            haplane(state, "fault", "restart", m)
    wait_for(lambda: (edges(state)["eu-central/lb-1"]["region_health"] or {}).get("healthy"), 30)


def test_sigkill_of_one_gate_instance_fails_only_connections_in_flight(topo):
    state = topo["state"]
    failures: list[str] = []
    served = {"before": 0, "after": 0}
    killed = threading.Event()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            conn = open_conn(*gate(topo), timeout=5)
            try:
                if get(conn)[0] == 200:
                    served["after" if killed.is_set() else "before"] += 1
            except (http.client.HTTPException, OSError) as exc:
                failures.append(repr(exc))
            finally:
                conn.close()

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for(lambda: served["before"] >= 5, 20)
        haplane(state, "fault", "kill", "global/gate-eu-west")
        killed.set()
        # served on through the other instances (their shared port), however slowly the
        # loaded machine answers
        wait_for(lambda: served["after"] >= 10, 30)
    finally:
        stop.set()
        thread.join(30)
        # back in every case: the tests after this one share the topology
        haplane(state, "fault", "restart", "global/gate-eu-west")
    # one sequential client has at most one connection in flight when the instance dies
    assert len(failures) <= 1, failures
    wait_for(lambda: edges(state)["global/gate-eu-west"]["ready"], 30)


def test_failover_moves_new_connections_and_closes_old_ones(topo):
    state = topo["state"]
    conn = open_conn(*gate(topo), timeout=5)
    assert get(conn)[1] == "eu-west"
    haplane(state, "failover", "--direct", "--to", "eu-central", "--reason", "test")
    try:
        # the old connection is closed by the gate (within about one check interval)
        t0 = time.monotonic()
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # an answer from eu-west would be a failure
                assert get(conn)[1] == "eu-west"
                time.sleep(0.05)
        assert time.monotonic() - t0 < 5
        conn.close()
        for _ in range(5):
            assert once(gate(topo))[1] == "eu-central"
        assert all(e["epoch"] == 2 for e in edges(state).values() if e["kind"] == "gate")
    finally:
        conn.close()
        haplane(state, "failover", "--direct", "--to", "eu-west", "--reason", "back")


def test_validate_live_reports_drift_between_file_and_running_topology(topo, tmp_path):
    state = topo["state"]
    r = haplane(state, "validate", "--live", "--json")
    assert json.loads(r.stdout)["findings"] == []  # the running file against itself
    from haplane.topology import example_text

    text = example_text("two-regions")
    text = text.replace("- {name: api-2, zone: b}", "- {name: api-2, zone: c}", 1)
    text = text.replace("- {name: etcd-3, zone: c}", "- {name: etcd-3, zone: c, clientPort: 1}", 1)
    text = text.replace(
        "          - {name: lb-2, zone: b}\n",
        "          - {name: lb-2, zone: b}\n          - {name: lb-3, zone: c}\n",
        1,
    )
    changed = tmp_path / "changed.yaml"
    changed.write_text(text)
    haplane(state, "fault", "kill", "eu-central/api-1")
    try:
        r = haplane(state, "validate", "--live", str(changed), "--json", check=False)
        assert r.returncode == 1, r.stderr
        found = {(f["rule"], f["path"]) for f in json.loads(r.stdout)["findings"]}
        assert ("live-placement", "eu-west/api-2") in found
        assert ("live-port", "eu-west/etcd-3") in found
        assert ("live-missing-member", "eu-west/lb-3") in found
        assert ("live-unreachable", "eu-central/api-1") in found
    finally:
        haplane(state, "fault", "restart", "eu-central/api-1")
        wait_for(lambda: upstream_state(state, "eu-central/lb-1", "api-1") == "up", 30)
