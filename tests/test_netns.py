"""Sites in network namespaces: real reachability, cuts (both ways and one way), heal, cleanup.

Uses its own subnet (10.78.0.0/16, gateway 10.78.0.254) and network names starting "test-netns",
so it never meets a drill network. Needs root, `ip` and `nft`: skipped otherwise, failed under CI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haplane.local import netns
from haplane.local.netns import NetnsError, SiteAddress, SiteNetwork

GATEWAY = "10.78.0.254"
ADDR = {"s1": "10.78.1.1", "s2": "10.78.2.1", "s3": "10.78.3.1", "client": "10.78.9.1"}
TCP_PORT = 18080
UDP_PORT = 18081
TIMEOUT = 0.5

# A tiny server: answers each TCP connection with its site's name, logs each UDP datagram.
SERVER = r"""
import selectors, socket, sys
address, site, tcp_port, udp_port, log = sys.argv[1:]
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((address, int(tcp_port))); tcp.listen()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind((address, int(udp_port)))
sel = selectors.DefaultSelector()
sel.register(tcp, selectors.EVENT_READ); sel.register(udp, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is tcp:
            conn, _ = tcp.accept()
            conn.sendall(site.encode() + b"\n"); conn.close()
        else:
            data, _ = udp.recvfrom(512)
            with open(log, "ab") as f:
                f.write(data + b"\n")
"""

# Connects (from whatever namespace it runs in) and prints "ok <site>", "timeout" or "refused".
PROBE = r"""
import socket, sys
address, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((address, port), timeout=timeout) as s:
        s.settimeout(timeout)
        print("ok", s.recv(64).decode().strip())
except TimeoutError:
    print("timeout")
except OSError as e:
    print(type(e).__name__)
"""

SEND_UDP = r"""
import socket, sys
address, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3]
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(payload.encode(), (address, port))
"""


@pytest.fixture
def need_netns() -> None:
    reason = netns.available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the netns tests: {reason}")
        pytest.skip(reason)


def network(state_dir: Path, name: str = "test-netns") -> SiteNetwork:
    return SiteNetwork(
        name,
        [SiteAddress(site, ADDR[site]) for site in ("s1", "s2", "s3")],
        client_address=ADDR["client"],
        gateway=GATEWAY,
        prefix_len=16,
        state_dir=state_dir,
    )


def namespace_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def link_names() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}


def assert_gone(net: SiteNetwork) -> None:
    assert not set(net.namespaces().values()) & namespace_names()
    assert not set(net.links()) & link_names()
    assert not net.state_path.exists()


@pytest.fixture
def net(need_netns: None, tmp_path: Path) -> Iterator[SiteNetwork]:
    n = network(tmp_path / "state")
    n.create()
    try:
        yield n
    finally:
        n.cleanup()
    assert_gone(n)


@pytest.fixture
def servers(net: SiteNetwork, tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A server in s1 and one in s2, each bound to its site's address; site -> its UDP log."""
    procs: list[subprocess.Popen[bytes]] = []
    logs: dict[str, Path] = {}
    try:
        for site in ("s1", "s2"):
            logs[site] = tmp_path / f"udp-{site}.log"
            argv = [sys.executable, "-I", "-c", SERVER, ADDR[site], site]
            argv += [str(TCP_PORT), str(UDP_PORT), str(logs[site])]
            procs.append(subprocess.Popen([*net.exec_prefix(ADDR[site]), *argv]))
        python = os.path.realpath(sys.executable)
        for proc in procs:  # `ip netns exec` execs: the PID is the server's own
            deadline = time.monotonic() + 5
            while os.readlink(f"/proc/{proc.pid}/exe") != python:
                assert time.monotonic() < deadline, "`ip netns exec` did not exec the server"
                time.sleep(0.01)
        for site in ("s1", "s2"):
            deadline = time.monotonic() + 5
            while from_root(site) != f"ok {site}":
                assert time.monotonic() < deadline, f"server in {site} never came up"
                time.sleep(0.05)
        yield logs
    finally:
        for proc in procs:
            proc.terminate()  # by its own PID
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def from_root(site: str) -> str:
    try:
        with socket.create_connection((ADDR[site], TCP_PORT), timeout=TIMEOUT) as s:
            s.settimeout(TIMEOUT)
            return "ok " + s.recv(64).decode().strip()
    except TimeoutError:
        return "timeout"
    except OSError as e:
        return type(e).__name__


def probe(net: SiteNetwork, src: str, dst: str) -> str:
    """Connects from namespace `src` (a site or "client") to `dst`'s server."""
    argv = [sys.executable, "-I", "-c", PROBE, ADDR[dst], str(TCP_PORT), str(TIMEOUT)]
    done = subprocess.run(
        [*net.exec_prefix(ADDR[src]), *argv], capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def send_udp(net: SiteNetwork, src: str, dst: str, payload: str) -> None:
    argv = [sys.executable, "-I", "-c", SEND_UDP, ADDR[dst], str(UDP_PORT), payload]
    subprocess.run([*net.exec_prefix(ADDR[src]), *argv], check=True, timeout=10)


def udp_received(log: Path, payload: str, wait: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if log.exists() and payload in log.read_text().split():
            return True
        time.sleep(0.02)
    return False


def test_reachable_then_cut_then_healed(net: SiteNetwork, servers: dict[str, Path]) -> None:
    assert probe(net, "s2", "s1") == "ok s1"
    assert probe(net, "s3", "s1") == "ok s1"
    assert probe(net, "client", "s1") == "ok s1"
    assert from_root("s1") == "ok s1"

    net.cut(["s1"], ["s2"])
    assert probe(net, "s2", "s1") == "timeout"  # silently dropped, not refused
    assert probe(net, "s1", "s2") == "timeout"  # both directions
    assert probe(net, "s3", "s1") == "ok s1"
    assert probe(net, "client", "s2") == "ok s2"
    assert from_root("s1") == "ok s1"  # the root namespace stays reachable

    net.heal()
    assert probe(net, "s2", "s1") == "ok s1"
    assert probe(net, "s1", "s2") == "ok s2"
    assert json.loads(net.state_path.read_text())["tables"] == []


def test_cut_from_the_client(net: SiteNetwork, servers: dict[str, Path]) -> None:
    net.cut(["client"], ["s1", "s2"])
    assert probe(net, "client", "s1") == "timeout"
    assert probe(net, "s3", "s2") == "ok s2"
    net.heal()
    assert probe(net, "client", "s1") == "ok s1"


def test_cut_one_way_drops_only_one_direction(net: SiteNetwork, servers: dict[str, Path]) -> None:
    net.cut_one_way(["s1"], ["s2"])
    send_udp(net, "s2", "s1", "from-s2")
    send_udp(net, "s1", "s2", "from-s1")
    assert udp_received(servers["s1"], "from-s2")  # s2 -> s1 still flows
    assert not udp_received(servers["s2"], "from-s1")  # s1 -> s2 dropped
    # a TCP handshake needs both directions, so it fails either way; others are unaffected
    assert probe(net, "s1", "s2") == "timeout"
    assert probe(net, "s3", "s2") == "ok s2"
    net.heal()
    send_udp(net, "s1", "s2", "healed")
    assert udp_received(servers["s2"], "healed", wait=2)


def test_cut_rejects_unknown_or_overlapping_sites(net: SiteNetwork) -> None:
    with pytest.raises(ValueError, match="unknown site"):
        net.cut(["s1"], ["nowhere"])
    with pytest.raises(ValueError, match="both sides"):
        net.cut(["s1", "s2"], ["s2"])


@pytest.mark.usefixtures("need_netns")
def test_cleanup_removes_everything_and_tolerates_missing_objects(tmp_path: Path) -> None:
    with network(tmp_path) as n:
        n.cut(["s1"], ["s2", "client"])
        assert set(n.namespaces().values()) <= namespace_names()
        assert set(n.links()) <= link_names()
        # something else removed a namespace and the bridge already: cleanup does not mind
        subprocess.run(["ip", "link", "delete", n.bridge], check=True)
        subprocess.run(["ip", "netns", "delete", n.namespaces()["s3"]], check=True)
    assert_gone(n)
    n.cleanup()  # a second time: nothing left, no error
    assert not SiteNetwork.cleanup_stale(tmp_path)


@pytest.mark.usefixtures("need_netns")
def test_cleanup_stale_after_a_crash(tmp_path: Path) -> None:
    n = network(tmp_path)
    n.create()
    n.cut(["s1"], ["s2"])
    del n  # the run "crashed": no cleanup
    assert (tmp_path / "netns.json").exists()
    again = network(tmp_path)
    assert SiteNetwork.cleanup_stale(tmp_path)
    assert_gone(again)
    assert not SiteNetwork.cleanup_stale(tmp_path)


@pytest.mark.usefixtures("need_netns")
def test_crash_half_way_through_create_is_cleaned_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = netns._run
    calls = {"veths": 0}

    def crash_on_second_veth(argv: list[str], *, stdin: str | None = None) -> str:
        if argv[:3] == ["ip", "link", "add"] and "veth" in argv:
            calls["veths"] += 1
            if calls["veths"] == 2:
                raise NetnsError("simulated crash")
        return real_run(argv, stdin=stdin)

    monkeypatch.setattr(netns, "_run", crash_on_second_veth)
    n = network(tmp_path)
    with pytest.raises(NetnsError, match="simulated crash"):
        n.create()
    monkeypatch.undo()
    record = json.loads((tmp_path / "netns.json").read_text())
    assert n.namespaces()["s2"] in record["namespaces"]  # recorded before it was created
    assert SiteNetwork.cleanup_stale(tmp_path)
    assert_gone(n)


@pytest.mark.usefixtures("need_netns")
def test_create_replaces_leftovers_without_a_state_file(tmp_path: Path) -> None:
    first = network(tmp_path / "a")
    first.create()
    # same topology name, another state dir: the old objects are found by their names
    with network(tmp_path / "b") as second:
        assert probe_ns_has_address(second, "s1")
    assert_gone(second)
    assert SiteNetwork.cleanup_stale(tmp_path / "a")  # the record is stale; its objects are gone
    assert not (tmp_path / "a" / "netns.json").exists()


def probe_ns_has_address(net: SiteNetwork, site: str) -> bool:
    out = subprocess.run(
        [*net.exec_prefix(ADDR[site]), "ip", "-o", "-4", "address", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return f"{ADDR[site]}/16" in out


@pytest.mark.usefixtures("need_netns")
def test_refuses_a_subnet_already_in_use(tmp_path: Path) -> None:
    with network(tmp_path / "a"):
        other = network(tmp_path / "b", name="test-netns-other")
        with pytest.raises(NetnsError, match="overlaps"):
            other.create()
        other.cleanup()


def test_names_fit_the_kernel_and_are_deterministic(tmp_path: Path) -> None:
    n = network(tmp_path, name="a-rather-long-topology-name-for-the-eu-and-us-regions")
    assert all(len(link) <= 15 for link in n.links())
    assert n.links() == network(tmp_path, n.name).links()
    assert n.namespaces()["s1"] == f"hp-{n.tag}-s1"
    assert n.namespaces()["client"] == f"hp-{n.tag}-client"
    assert n.exec_prefix(ADDR["s2"]) == ["ip", "netns", "exec", f"hp-{n.tag}-s2"]
    assert n.client_prefix() == ["ip", "netns", "exec", f"hp-{n.tag}-client"]
    assert n.exec_prefix(GATEWAY) == []
    assert n.namespace_of("192.0.2.1") is None


def test_rejects_bad_addresses_and_names(tmp_path: Path) -> None:
    def make(sites: list[SiteAddress], client: str | None = None) -> SiteNetwork:
        return SiteNetwork(
            "t", sites, client_address=client, gateway=GATEWAY, prefix_len=16, state_dir=tmp_path
        )

    with pytest.raises(ValueError, match="outside"):
        make([SiteAddress("s1", "10.79.0.1")])
    with pytest.raises(ValueError, match="already"):
        make([SiteAddress("s1", "10.78.1.1")], client="10.78.1.1")
    with pytest.raises(ValueError, match="already"):
        make([SiteAddress("s1", GATEWAY)])
    with pytest.raises(ValueError, match="reserved"):
        make([SiteAddress("client", "10.78.1.1")])
    with pytest.raises(ValueError, match="cannot name"):
        make([SiteAddress("../etc", "10.78.1.1")])
    with pytest.raises(ValueError, match="no client"):
        make([SiteAddress("s1", "10.78.1.1")]).client_prefix()
