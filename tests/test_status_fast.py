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
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from haplane.auth.pki import Pki
from haplane.cli.quick import _status_json_args
from haplane.local import status_plan
from haplane.local.gate_plans import plan_of
from haplane.local.security import PlatformTls, cached_expiry_rows, expiry_rows, user_certificate
from haplane.local.state_dir import StateDir
from haplane.local.stdlib_http import HttpError, KeptConnections, exchange, fetch, get
from haplane.topology import example_text, load_file


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    """A state dir as `up` leaves it, without processes: the example and its every port."""
    st = StateDir(tmp_path / "state")
    st.root.mkdir()
    st.topology_file.write_text(example_text("two-regions"))
    plan_of(load_file(st.topology_file), st, read_only=False)  # assigns and saves the ports
    return st


@pytest.fixture(autouse=True)
def another_process(monkeypatch) -> None:
    """Each test starts as a new process would: nothing of the plan known in memory."""
    monkeypatch.setattr(status_plan, "_KNOWN", {})


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
    status_plan._KNOWN.clear()  # as another process
    assert status_plan.targets(state) == first  # from the file, without the model


def test_a_process_keeps_its_plan_and_leaves_the_file_to_other_code(state: StateDir, monkeypatch):
    """A long-lived process (the supervisor gathers every few seconds) answers from what it
    resolved while the files are the same: it neither reads the kept plan again nor, when
    another version of haplane kept its own there (an upgrade in place), writes it back."""
    resolved: list[Path] = []
    resolve = status_plan.resolve

    def counted(st: StateDir) -> status_plan.StatusTargets:
        resolved.append(st.root)
        return resolve(st)

    monkeypatch.setattr(status_plan, "resolve", counted)
    first = status_plan.targets(state)
    cache = state.root / status_plan.CACHE_NAME
    doc = json.loads(cache.read_text())
    doc["key"]["code"][0][1] += 1  # kept by another version since
    cache.write_text(json.dumps(doc))
    before = cache.read_bytes()
    assert status_plan.targets(state) is first and len(resolved) == 1  # not resolved again
    assert cache.read_bytes() == before  # left as the other version wrote it
    state.ports_file.write_text(state.ports_file.read_text() + "\n")  # the files changed
    again = status_plan.targets(state)
    assert again is not first and len(resolved) == 2  # resolved, and kept, again
    assert json.loads(cache.read_text())["key"] == status_plan._key(state)


def test_the_plan_holds_absolute_paths_whatever_the_working_directory(
    state: StateDir, tmp_path: Path, monkeypatch
):
    """A state dir given relative to one directory, then absolute from another: the kept plan
    names the same certificates, never `state/pki` of wherever status runs."""
    monkeypatch.chdir(state.root.parent)
    relative = status_plan.targets(StateDir(Path(state.root.name)))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / state.root.name / "pki").mkdir(parents=True)  # a decoy beside the new cwd
    monkeypatch.chdir(elsewhere)
    again = status_plan.targets(StateDir(state.root))
    assert relative == again and again.pki == str(state.root / "pki")
    for c in again.clusters:
        assert c.etcd_tls is not None and all(Path(p).is_absolute() for p in c.etcd_tls)


@pytest.mark.parametrize("change", ["topology", "ports", "garbage", "format", "code", "moved"])
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
    elif change == "code":  # kept by another version of haplane
        doc = json.loads(cache.read_text())
        doc["key"]["code"][0][1] += 1
        doc["targets"]["topology"] = "from-another-version"
        cache.write_text(json.dumps(doc))
    else:  # the state dir copied elsewhere: its own root
        other = StateDir(tmp_path / "copy")
        other.root.mkdir()
        for f in (state.topology_file, state.ports_file, cache):
            (other.root / f.name).write_bytes(f.read_bytes())
        state = other
    status_plan._KNOWN.clear()  # as another process
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
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/drip":  # an answer that never ends, a byte at a time
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
            return
        body = json.dumps({"path": self.path, "port": self.client_address[1]}).encode()
        self.send_response(200 if self.path != "/missing" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.path.startswith("/hang-up"):  # as a server whose keep-alive ran out: no word
            self.close_connection = True

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> object:
    class Server(ThreadingHTTPServer):
        def handle_error(self, *_: object) -> None:  # a client that hung up: expected here
            pass

    srv = Server(("127.0.0.1", 0), _Handler)
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


def test_a_late_second_answer_keeps_the_first(server):
    """/readyz answered, /status late: the error carries the /readyz answer (status reports
    the listener ready, and why its detail is missing)."""
    base = f"http://127.0.0.1:{server.server_address[1]}"
    result, took = asyncio.run(
        _timed(fetch(base, [("GET", "/readyz", None), ("GET", "/slow", None)], timeout=0.5))
    )
    assert isinstance(result, HttpError) and "no answer within" in str(result)
    assert [a.status for a in result.answers] == [200] and took < 2.5


def test_a_dripping_answer_is_cut_at_the_deadline_and_frees_its_thread(server):
    """Each read gets a byte in time, so a socket timeout alone would wait for all of them
    (50 s): the deadline shuts the connection down and the worker thread is free again."""
    base = f"http://127.0.0.1:{server.server_address[1]}"

    async def go() -> tuple[object, float, int]:
        result, took = await _timed(fetch(base, [("GET", "/drip", None)], timeout=0.5))
        await asyncio.sleep(0.3)
        busy = sum(t.name.startswith("haplane-http") and _in_exchange(t) for t in
                   threading.enumerate())  # fmt: skip
        return result, took, busy

    result, took, busy = asyncio.run(go())
    assert isinstance(result, HttpError) and took < 2.0 and busy == 0


def test_kept_connections_carry_the_next_exchanges(server):
    base = f"http://127.0.0.1:{server.server_address[1]}"
    keep = KeptConnections()

    def port(keep: KeptConnections | None) -> int:
        (answer,) = exchange(base, [("GET", "/readyz", None)], timeout=5, keep=keep)
        return int(answer.json()["port"])

    assert port(keep) == port(keep) == port(keep)  # one connection, kept between them
    assert port(None) != port(None)  # without: one each
    stale = KeptConnections(lifetime=0.0)
    first = port(stale)
    time.sleep(0.01)
    assert port(stale) != first  # older than its lifetime: closed, and a new one made
    stale.close()
    (kept,) = keep._free[(base, None, None)]
    keep.close()
    assert kept.conn.sock is None  # closed
    assert keep.take((base, None, None)) is None


def test_retire_closes_only_the_idle_connections_made_before(server):
    base = f"http://127.0.0.1:{server.server_address[1]}"
    keep = KeptConnections()
    key = (base, None, None)
    exchange(base, [("GET", "/readyz", None)], timeout=5, keep=keep)
    time.sleep(0.3)
    old = keep.take(key)
    exchange(base, [("GET", "/readyz", None)], timeout=5, keep=keep)  # a second, younger one
    assert old is not None
    keep.give(key, old)
    assert keep.retire(older_than=0.2) == 1
    assert old.conn.sock is None  # closed
    young = keep.take(key)
    assert young is not None and young is not old and young.conn.sock is not None
    assert keep.take(key) is None
    keep.give(key, young)
    assert keep.retire(older_than=60) == 0 and keep.take(key) is young
    keep.give(key, young)
    keep.close()


def test_a_kept_connection_the_server_closed_is_replaced_for_gets_only(server):
    """A server that closed a kept connection (its keep-alive ran out) without a word: GETs go
    again on a new connection; a POST is not sent twice, its error is the caller's."""
    base = f"http://127.0.0.1:{server.server_address[1]}"
    keep = KeptConnections()
    (first,) = exchange(base, [("GET", "/hang-up", None)], timeout=5, keep=keep)
    time.sleep(0.2)  # the server has closed it by now
    (again,) = exchange(base, [("GET", "/readyz", None)], timeout=5, keep=keep)
    assert again.status == 200 and again.json()["port"] != first.json()["port"]
    exchange(base, [("GET", "/hang-up", None)], timeout=5, keep=keep)
    time.sleep(0.2)
    with pytest.raises(HttpError):
        exchange(base, [("POST", "/x", {"a": 1})], timeout=5, keep=keep)
    (after,) = exchange(base, [("POST", "/x", {"a": 1})], timeout=5, keep=keep)
    assert after.status == 200
    keep.close()


def test_a_connection_given_back_after_close_is_closed(server):
    """An exchange under way when the pool is closed (the context changed: the connections
    were made with old certificates) gives its connection back to be closed, not kept."""
    base = f"http://127.0.0.1:{server.server_address[1]}"
    keep = KeptConnections()
    exchange(base, [("GET", "/readyz", None)], timeout=5, keep=keep)
    kept = keep.take((base, None, None))
    assert kept is not None and kept.conn.sock is not None
    keep.close()
    keep.give((base, None, None), kept)
    assert kept.conn.sock is None and keep.take((base, None, None)) is None


def test_kept_clients_make_the_context_again_only_when_its_files_change(tmp_path, monkeypatch):
    from haplane.local.status import KeptClients

    tls = PlatformTls(tmp_path / "pki")
    for p in (tls.ca, tls.admin.cert, tls.admin.key):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    made: list[object] = []

    def context(self, identity=True):  # type: ignore[no-untyped-def]
        made.append(object())
        return made[-1]

    monkeypatch.setattr(PlatformTls, "client_context", context)
    kept = KeptClients()
    first = kept.context(tls)
    assert kept.context(tls) is first and len(made) == 1
    tls.admin.cert.write_text("rotated")  # `pki rotate` rewrites the files in place
    assert kept.context(tls) is not first and len(made) == 2
    assert kept.http.generation == 1  # the connections made with the old files: closed


def test_an_abort_as_the_exchange_ends_never_reaches_a_kept_connection(server):
    """fetch's deadline may pass as the worker thread finishes: an abort before the release
    means the connection is closed, not kept; one after it finds no connection to shut."""
    from haplane.local.stdlib_http import _Call

    base = f"http://127.0.0.1:{server.server_address[1]}"
    keep = KeptConnections()
    exchange(base, [("GET", "/readyz", None)], timeout=5, keep=keep)
    kept = keep.take((base, None, None))
    assert kept is not None
    late = _Call()
    late.conn = kept.conn
    assert late.release() is True
    late.abort()  # after the release: nothing to shut down
    kept.conn.request("GET", "/readyz")  # the kept connection still works
    assert kept.conn.getresponse().status == 200
    early = _Call()
    early.conn = kept.conn
    early.abort()
    assert early.release() is False  # the caller closes it
    kept.conn.close()
    keep.close()


def test_a_connection_cut_at_its_deadline_is_not_kept(server):
    base = f"http://127.0.0.1:{server.server_address[1]}"
    keep = KeptConnections()
    result, _ = asyncio.run(_timed(fetch(base, [("GET", "/drip", None)], timeout=0.3, keep=keep)))
    assert isinstance(result, HttpError)
    assert keep.take((base, None, None)) is None
    (answer,) = exchange(base, [("GET", "/readyz", None)], timeout=5, keep=keep)
    assert answer.status == 200
    keep.close()


def _in_exchange(thread: threading.Thread) -> bool:
    import sys
    import traceback

    frame = sys._current_frames().get(thread.ident or -1)
    return frame is not None and any(f.name == "exchange" for f in traceback.extract_stack(frame))


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


def test_the_supervisors_status_is_taken_only_when_it_is_one(tmp_path: Path):
    """`status --json` asks the supervisor's /v1/status first; a supervisor that answers
    anything else (an older one: 404; garbage) leaves it to this process."""
    from haplane.cli.quick import _supervisor_status
    from tests.fake_supervisor import serving

    state = StateDir(tmp_path)
    assert _supervisor_status(state) is None  # no socket
    answers = [
        (200, {"healthy": False, "report": {"topology": "t"}}),
        (404, {"error": "not found"}),
        (200, {"healthy": True}),  # no report
        (200, "not json"),
    ]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert self.path == "/v1/status"
            status, body = answers.pop(0)
            data = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    with serving(state.socket, Handler):
        # the state dir as this command was given it, whatever the supervisor's spelling
        assert _supervisor_status(state) == ({"topology": "t", "state_dir": str(tmp_path)}, False)
        assert [_supervisor_status(state) for _ in range(3)] == [None, None, None]


def test_the_supervisor_gathers_once_for_concurrent_askers_and_bounds_the_wait(
    tmp_path: Path, monkeypatch
):
    """`GET /v1/status`: askers at the same time share one gather; a gather longer than the
    deadline is a 503 (the CLI then asks for itself), a failing one too, with its reason."""
    from aiohttp.test_utils import TestClient, TestServer

    from haplane.local import control
    from haplane.local.status import NothingRunning

    gathers: list[int] = []
    behaviour = {"sleep": 0.2, "raise": None}

    class Report:
        healthy = True

        def as_dict(self) -> dict[str, object]:
            return {"topology": "t", "n": len(gathers)}

    async def fake_gather(state, **kwargs):  # type: ignore[no-untyped-def]
        gathers.append(1)
        await asyncio.sleep(behaviour["sleep"])  # type: ignore[arg-type]
        if behaviour["raise"] is not None:
            raise behaviour["raise"]  # type: ignore[misc]
        return Report()

    class Supervisor:
        state = StateDir(tmp_path)

        def snapshot(self) -> dict[str, object]:
            return {"phase": "healthy", "etcd": {"version": "x"}, "components": []}

    monkeypatch.setattr(control, "gather_status", fake_gather)
    monkeypatch.setattr(control, "STATUS_DEADLINE", 1.0)

    async def go() -> None:
        server = control.ControlServer(Supervisor(), tmp_path / "unused.sock")  # type: ignore[arg-type]
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/v1/status", server._status)
        async with TestClient(TestServer(app)) as client:
            answers = await asyncio.gather(*(client.get("/v1/status") for _ in range(5)))
            docs = [await a.json() for a in answers]
            assert len(gathers) == 1 and all(d == docs[0] for d in docs)
            assert docs[0] == {"healthy": True, "report": {"topology": "t", "n": 1}}
            behaviour["sleep"] = 3.0
            slow = await client.get("/v1/status")
            assert slow.status == 503 and "no status within" in (await slow.json())["error"]
            behaviour["sleep"] = 0.0
            await asyncio.sleep(2.5)  # the slow one ends; the next asker starts another
            behaviour["raise"] = RuntimeError("torn pair")
            failed = await client.get("/v1/status")
            assert failed.status == 503 and "torn pair" in (await failed.json())["error"]
            behaviour["raise"] = NothingRunning("nothing here")
            gone = await client.get("/v1/status")
            assert gone.status == 404
            bad = await client.get("/v1/status?history=x")
            assert bad.status == 400
        await server.close()

    asyncio.run(go())


def test_the_supervisor_keeps_its_status_connections_warm_while_healthy(
    tmp_path: Path, monkeypatch, server
):
    """Between askers the supervisor gathers by itself, only while healthy, and dials again
    ahead of time what is older than RENEW_AFTER: an asker never finds its connections out of
    their lifetime, yet every listener still gets a new connection every few gathers. An
    asker arriving during such a gather is never handed it: its answer is gathered after it
    asked."""
    import aiohttp

    from haplane.local import control

    base = f"http://127.0.0.1:{server.server_address[1]}"
    seen: list[tuple[str, int]] = []  # (phase as it began, port) per warm gather
    found: list[float] = []  # the age of the connection an asker would find, between gathers
    phase = {"now": "starting"}
    warm = {"in_flight": 0, "slow": 0, "sleep": 0.0}

    class Report:
        healthy = True

        def __init__(self, started: float) -> None:
            self.started = started

        def as_dict(self) -> dict[str, object]:
            return {"started": self.started}

    async def fake_gather(state, *, clients, history, certificates, **kwargs):  # type: ignore[no-untyped-def]
        started, at_start, pause = time.monotonic(), phase["now"], warm["sleep"]
        mine = not certificates  # the warm gathers leave the certificates out
        warm["in_flight"] += mine
        warm["slow"] += mine and pause > 0
        if mine and pause > 0:
            slow_began.set()
        try:
            (answer,) = await asyncio.to_thread(
                exchange, base, [("GET", "/readyz", None)], timeout=5, keep=clients.http
            )
            if mine:
                seen.append((at_start, int(answer.json()["port"])))
                await asyncio.sleep(pause)
        finally:
            warm["in_flight"] -= mine
            warm["slow"] -= mine and pause > 0
        return Report(started)

    class Supervisor:
        state = StateDir(tmp_path)

        @property
        def phase(self) -> str:
            return phase["now"]

        def snapshot(self) -> dict[str, object]:
            return {"phase": phase["now"], "etcd": {"version": "x"}, "components": []}

    monkeypatch.setattr(control, "gather_status", fake_gather)
    monkeypatch.setattr(control, "WARM_EVERY", 0.1)
    monkeypatch.setattr(control, "RENEW_AFTER", 0.25)
    sock = tmp_path / "s.sock"
    slow_began = asyncio.Event()

    async def go() -> None:
        server_ = control.ControlServer(Supervisor(), sock)  # type: ignore[arg-type]
        await server_.start()
        try:
            await asyncio.sleep(0.5)
            assert seen == []  # not while starting
            phase["now"] = "healthy"
            until = time.monotonic() + 2.0
            while time.monotonic() < until:
                await asyncio.sleep(0.03)
                # as an asker arriving now, between warm gathers, would find the pool
                if seen and not warm["in_flight"]:
                    assert server_._etcd is not None
                    kept = server_._etcd.http.take((base, None, None))
                    assert kept is not None  # never a pool left empty between gathers
                    found.append(time.monotonic() - kept.created)
                    server_._etcd.http.give((base, None, None), kept)
            warm["sleep"] = 1.0
            await slow_began.wait()
            asked = time.monotonic()
            async with (
                aiohttp.ClientSession(connector=aiohttp.UnixConnector(str(sock))) as s,
                s.get("http://supervisor/v1/status") as r,
            ):
                doc = await r.json()
            assert r.status == 200 and doc["report"]["started"] >= asked  # gathered for it
            assert warm["slow"]  # beside the warm one, not after it
            warm["sleep"] = 0.0
            phase["now"] = "stopping"
            await asyncio.sleep(1.3)
            n = len(seen)
            await asyncio.sleep(0.4)
            assert len(seen) == n  # not while stopping
        finally:
            await server_.close()
        assert server_._warm is not None and server_._warm.done()

    asyncio.run(go())
    assert len(seen) >= 8 and {p for p, _ in seen} == {"healthy"}
    # what an asker finds is never older than RENEW_AFTER plus a pause (and a gather's time)
    assert len(found) >= 20 and max(found) < 0.25 + 0.1 + 0.4, found
    ports = [port for _, port in seen]
    assert 2 <= len(set(ports)) < len(ports)  # kept between gathers, and dialled again


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


def test_kept_etcd_clients_are_asked_beside_the_listeners_once_warm(tmp_path: Path, monkeypatch):
    """The first gather with kept clients asks etcd before any listener (their channels'
    handshakes would compete); the next ones, every member having answered, ask all at once;
    a cluster that lost a member's answer makes the next gather careful again."""
    from haplane.local import status
    from haplane.local.status import ClusterReport, KeptClients, MemberReport

    state = StateDir(tmp_path / "state")
    state.root.mkdir()
    text = example_text("two-regions").replace(
        "  defaults:\n", "  security:\n    insecure: true\n  defaults:\n", 1
    )
    state.topology_file.write_text(text)
    plan_of(load_file(state.topology_file), state, read_only=False)

    events: list[str] = []
    member_ok = {"value": True}

    async def cluster(plan, client, processes, timeout):  # type: ignore[no-untyped-def]
        events.append("etcd start")
        await asyncio.sleep(0.05)
        events.append("etcd end")
        members = [
            MemberReport(
                name=n,
                kind="etcd",
                endpoint=e,
                quota=plan.quota,
                state="running",
                pid=1,
                restarts=0,
            )
            for n, e in plan.members.items()
        ]
        for m in members:
            m.member_id = "1" if member_ok["value"] else None
        return ClusterReport(plan.name, True, None, members)

    async def replica(r, *asks):  # type: ignore[no-untyped-def]
        events.append("listener")
        return status.ReplicaReport(r.name, "api", r.url, "running", 1, 0, True, "")

    async def failing(r, *asks):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug in a report")

    async def global_report(*args):  # type: ignore[no-untyped-def]
        return None, [], [], [], None

    async def nothing(x, *asks):  # type: ignore[no-untyped-def]
        return None

    monkeypatch.setattr(status, "_cluster_report", cluster)
    monkeypatch.setattr(status, "_replica_report", replica)
    monkeypatch.setattr(status, "_global_report", global_report)
    for name in ("_edge_report", "_gitops_report", "_console_report"):
        monkeypatch.setattr(status, name, nothing)
    snap = {"phase": "healthy", "etcd": {"version": "x"}, "components": []}

    async def gather(kept: KeptClients) -> list[str]:
        events.clear()
        await status.gather_status(state, supervisor=snap, clients=kept, certificates=False)
        return list(events)

    async def go() -> None:
        kept = KeptClients()
        try:
            first = await gather(kept)
            assert first.index("listener") > max(i for i, e in enumerate(first) if e == "etcd end")
            second = await gather(kept)
            assert second.index("listener") < second.index("etcd end"), second
            member_ok["value"] = False  # a member did not answer: its channel may reconnect
            await gather(kept)
            third = await gather(kept)
            assert third.index("listener") > third.index("etcd end"), third
            member_ok["value"] = True
            await gather(kept)
            again = await gather(kept)
            assert again.index("listener") < again.index("etcd end"), again
            # warm only for a while: gRPC lets idle channels go
            monkeypatch.setattr(status, "WARM_FOR", 0.0)
            late = await gather(kept)
            assert late.index("listener") > late.index("etcd end"), late
            monkeypatch.setattr(status, "WARM_FOR", 15.0)
            await gather(kept)
            # a gather that fails leaves nothing warm
            monkeypatch.setattr(status, "_replica_report", failing)
            with pytest.raises(RuntimeError):
                await gather(kept)
            monkeypatch.setattr(status, "_replica_report", replica)
            after = await gather(kept)
            assert after.index("listener") > after.index("etcd end"), after
        finally:
            await kept.close()

    asyncio.run(go())


async def test_a_member_whose_connection_failed_once_is_asked_again_within_the_timeout():
    """One failed connection is no verdict on a member (a handshake torn right after a member
    replacement): asked again once while half the time is left; a member that keeps failing
    is reported down, and one that failed late is not asked again."""
    from haplane.local import status
    from haplane.local.status_plan import ClusterTargets
    from haplane.store import EtcdUnavailable, MemberStatus

    class Client:
        def __init__(self, fails: dict[str, int], slow: float = 0.0) -> None:
            self.fails = fails  # endpoint -> how many first calls fail
            self.slow = slow
            self.calls: dict[str, int] = {}

        async def range(self, *_: object, **__: object) -> tuple[list[object], int]:
            return [], 1

        async def alarms(self, **_: object) -> list[object]:
            return []

        async def status(self, ep: str, *, timeout: float) -> MemberStatus:
            n = self.calls[ep] = self.calls.get(ep, 0) + 1
            if n <= self.fails.get(ep, 0):
                await asyncio.sleep(self.slow)
                raise EtcdUnavailable(f"{ep}: Handshake read failed (Endpoint closing)")
            return MemberStatus(ep, int(ep[-1]), 1, 2, 10, 10, 1, 1, "3.4.23", ())

    plan = ClusterTargets(
        "eu-west/etcd", False, 2**31, {f"eu-west/etcd-{i}": f"h:{i}" for i in (1, 2, 3)}
    )
    client = Client({"h:2": 1, "h:3": 5})
    report = await status._cluster_report(plan, client, {}, 1.0)  # type: ignore[arg-type]
    healthy = {m.name: m.healthy for m in report.members}
    assert healthy == {"eu-west/etcd-1": True, "eu-west/etcd-2": True, "eu-west/etcd-3": False}
    assert client.calls == {"h:1": 1, "h:2": 2, "h:3": 2}  # one retry, never more
    late = Client({"h:2": 1}, slow=0.6)  # failed after more than half its time
    report = await status._cluster_report(plan, late, {}, 1.0)  # type: ignore[arg-type]
    assert [m.healthy for m in report.members] == [True, False, True] and late.calls["h:2"] == 1
