"""What makes `haplane status --json` fast (issue 20), each checked for being right, not for its
speed (bench/status_json.py times it): the status plan kept in the state dir and when it is
not trusted, the certificates' expiry kept beside the PKI and when it is read again, and the
standard-library HTTP the status asks every listener with."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from haplane.auth.pki import Pki
from haplane.cli.quick import _status_json_args
from haplane.local import status_plan
from haplane.local.gate_plans import plan_of
from haplane.local.security import PlatformTls, cached_expiry_rows, expiry_rows, user_certificate
from haplane.local.state_dir import StateDir
from haplane.local.stdlib_http import HttpError, exchange, fetch, get
from haplane.topology import example_text, load_file


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    """A state dir as `up` leaves it, without processes: the example and its every port."""
    st = StateDir(tmp_path / "state")
    st.root.mkdir()
    st.topology_file.write_text(example_text("two-regions"))
    plan_of(load_file(st.topology_file), st, read_only=False)  # assigns and saves the ports
    return st


def test_the_plan_is_kept_and_read_back_as_resolved(state: StateDir, monkeypatch):
    first = status_plan.targets(state)
    assert (state.root / status_plan.CACHE_NAME).is_file()
    assert first == status_plan.resolve(state)
    assert {c.name for c in first.clusters} == {"eu-west/etcd", "eu-central/etcd", "global/etcd"}
    assert first.global_cluster.name == "global/etcd" and len(first.global_cluster.members) == 3
    assert [r.region for r in first.replication] == ["eu-west", "eu-central"]
    assert len(first.edges) == 7 and {e.kind for e in first.edges} == {"balancer", "gate"}
    assert first.pki == str(state.root / "pki") and len(first.console) == 2

    def no_model(_: StateDir) -> None:
        raise AssertionError("resolved again, though nothing changed")

    monkeypatch.setattr(status_plan, "resolve", no_model)
    assert status_plan.targets(state) == first  # from the file, without the model


@pytest.mark.parametrize("change", ["topology", "ports", "garbage", "format", "moved"])
def test_the_plan_is_resolved_again_when_it_may_be_stale(
    state: StateDir, change: str, tmp_path: Path
):
    before = status_plan.targets(state)
    cache = state.root / status_plan.CACHE_NAME
    if change == "topology":  # another file: the gates' ports, say
        text = state.topology_file.read_text()
        state.topology_file.write_text(text.replace("name: two-regions", "name: renamed", 1))
    elif change == "ports":
        ports = json.loads(state.ports_file.read_text())
        key = next(k for k in ports if "api-1" in k)
        ports[key] += 1
        state.ports_file.write_text(json.dumps(ports))
    elif change == "garbage":
        cache.write_text("{not json")
    elif change == "format":
        doc = json.loads(cache.read_text())
        doc["key"]["format"] = status_plan.FORMAT + 1
        cache.write_text(json.dumps(doc))
    else:  # the state dir copied elsewhere: its own root
        other = StateDir(tmp_path / "copy")
        other.root.mkdir()
        for f in (state.topology_file, state.ports_file, cache):
            (other.root / f.name).write_bytes(f.read_bytes())
        state = other
    after = status_plan.targets(state)
    assert after == status_plan.resolve(state)
    if change == "topology":
        assert (before.topology, after.topology) == ("two-regions", "renamed")
    if change == "ports":
        assert after.replicas != before.replicas
    kept = json.loads((state.root / status_plan.CACHE_NAME).read_text())["targets"]
    assert status_plan.StatusTargets.from_dict(kept) == after


def test_expiry_is_read_again_only_when_a_certificate_changes(tmp_path: Path, monkeypatch):
    tls = PlatformTls(tmp_path / "pki")
    Pki(tls.platform_dir).ensure_ca("platform")
    user_certificate(tls, "bob", (), 30)
    now = dt.datetime.now(dt.UTC)
    assert cached_expiry_rows(tls, now) == expiry_rows(tls, now)
    assert (tls.root / "expiry-cache.json").is_file()

    import haplane.local.security as security

    real = security.expiry_rows
    calls: list[int] = []

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(security, "expiry_rows", counted)
    later = now + dt.timedelta(days=3)
    rows = cached_expiry_rows(tls, later)
    assert calls == [] and rows == real(tls, later)  # seconds counted from `later`
    user_certificate(tls, "bob", (), 365)  # reissued: another file
    rows = cached_expiry_rows(tls, later)
    assert calls == [1] and rows == real(tls, later)
    assert max(int(str(r["secondsToExpiry"])) for r in rows) > 300 * 86400
    user_certificate(tls, "carol", (), 30)  # a new one
    assert len(cached_expiry_rows(tls, later)) == len(rows) + 1 and calls == [1, 1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: several requests on one connection

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "port": self.client_address[1]}).encode()
        self.send_response(200 if self.path != "/missing" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> object:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_several_requests_share_one_connection(server):
    base = f"http://127.0.0.1:{server.server_address[1]}"
    ready, status, missing = exchange(
        base, [("GET", "/readyz", None), ("GET", "/status", None), ("GET", "/missing", None)],
        timeout=5,
    )  # fmt: skip
    assert (ready.status, status.status, missing.status) == (200, 200, 404)
    assert ready.json()["path"] == "/readyz" and status.json()["path"] == "/status"
    assert len({a.json()["port"] for a in (ready, status, missing)}) == 1  # one connection
    answer = asyncio.run(get(f"{base}/x?y=1", timeout=5))
    assert answer.json()["path"] == "/x?y=1"


def test_what_does_not_answer_is_an_error_within_the_timeout():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(HttpError):
        exchange(f"http://127.0.0.1:{port}", [("GET", "/", None)], timeout=2)
    with socket.socket() as silent:  # accepts (the backlog does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        loop_started = asyncio.run(_timed(fetch(url, [("GET", "/", None)], timeout=0.3)))
        assert isinstance(loop_started[0], HttpError) and loop_started[1] < 2.0
    with pytest.raises(HttpError, match="not an http"):
        exchange("ftp://127.0.0.1:1", [("GET", "/", None)], timeout=1)


async def _timed(coro) -> tuple[object, float]:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        result: object = await coro
    except HttpError as exc:
        result = exc
    return result, loop.time() - t0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--json"], (None,)),
        (["--json", "--state-dir", "/s"], (Path("/s"),)),
        (["--state-dir", "/s", "--json"], (Path("/s"),)),
        (["--json", "--state-dir=/s"], (Path("/s"),)),
        ([], None),  # the table: typer's
        (["--json", "--help"], None),
        (["--json", "--json"], None),
        (["--json", "--state-dir"], None),
        (["--json", "--state-dir", "--verbose"], None),
        (["--json", "--state-dir="], None),
        (["--json", "extra"], None),
    ],
)
def test_only_a_plain_status_json_is_answered_quickly(argv: list[str], expected: object):
    assert _status_json_args(argv) == expected
