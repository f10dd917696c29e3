"""The bare-socket client of the supervisor's Unix socket (haplane.local.unix_http): against
aiohttp's server (what the supervisor runs) a JSON answer and a POST body arrive whole, a
large answer included; chunked answers are decoded; a socket nobody listens on, a server that
never answers and answers that are not HTTP or end early are errors, never a guessed body."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from haplane.local import unix_http
from haplane.local.unix_http import MalformedAnswer, UnixHttpError, parse, request


@pytest.fixture
def aiohttp_socket(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "s.sock")
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def status(req: web.Request) -> web.Response:
        return web.json_response({"report": {"x": "y" * 300_000}, "healthy": True})

    async def echo(req: web.Request) -> web.Response:
        return web.json_response({"got": await req.json()}, status=201)

    async def stream(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(req)
        for part in (b'{"a": ', b"1", b"}"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/v1/status", status)
        app.router.add_post("/v1/faults", echo)
        app.router.add_get("/chunked", stream)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, path).start()
        return runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        yield path
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


def test_answers_from_aiohttp_arrive_whole(aiohttp_socket: str):
    code, body = request(aiohttp_socket, "GET", "/v1/status", timeout=5)
    assert code == 200 and json.loads(body)["report"]["x"] == "y" * 300_000
    code, body = request(aiohttp_socket, "POST", "/v1/faults", {"action": "kill"}, timeout=5)
    assert (code, json.loads(body)) == (201, {"got": {"action": "kill"}})
    code, body = request(aiohttp_socket, "GET", "/chunked", timeout=5)
    assert (code, json.loads(body)) == (200, {"a": 1})
    code, _ = request(aiohttp_socket, "GET", "/nothing", timeout=5)
    assert code == 404


def test_a_socket_nobody_listens_on_is_an_error(tmp_path: Path):
    with pytest.raises(UnixHttpError, match=r"\[Errno 2\] No such file"):
        request(str(tmp_path / "absent.sock"), "GET", "/", timeout=1)
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens: as after a supervisor crashed
    with pytest.raises(UnixHttpError, match=r"\[Errno 111\] Connection refused"):
        request(str(stale), "GET", "/", timeout=1)


def test_a_server_that_never_answers_times_out(tmp_path: Path):
    path = str(tmp_path / "mute.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    try:
        with pytest.raises(UnixHttpError, match=r"no answer within 0\.3 s"):
            request(path, "GET", "/", timeout=0.3)
    finally:
        server.close()


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", "ended before its headers"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "ended before its body"),
        (b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "inside a chunk"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n0\r\n\r\n", "longer"),
    ],
)
def test_answers_that_are_not_whole_http_are_errors(answer: bytes, error: str):
    with pytest.raises(MalformedAnswer, match=error):
        parse(answer)


def test_bodies_by_length_by_chunks_and_until_close():
    assert parse(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\nnoEXTRA") == (
        503,
        b"no",
    )
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n1\r\nd\r\n0\r\n\r\n"
    )
    assert parse(chunked) == (200, b"abcd")
    assert parse(b"HTTP/1.1 200 OK\r\n\r\nuntil close") == (200, b"until close")


def _serve_once(path: str, answer: list[bytes], pause: float) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()

    def run() -> None:
        conn, _ = server.accept()
        with conn, server:
            conn.recv(65536)
            for part in answer:
                try:
                    conn.sendall(part)
                except OSError:
                    return
                time.sleep(pause)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_dripping_answer_is_cut_at_the_deadline(tmp_path: Path):
    path = str(tmp_path / "drip.sock")
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    t = _serve_once(path, [head, *[b"x"] * 100], 0.05)
    started = time.monotonic()
    with pytest.raises(UnixHttpError, match=r"no answer within 0\.5 s"):
        request(path, "GET", "/", timeout=0.5)
    assert time.monotonic() - started < 1.5
    t.join(10)


def test_an_answer_over_the_limit_is_refused_not_cut(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(unix_http, "MAX_ANSWER", 1000)
    path = str(tmp_path / "big.sock")
    t = _serve_once(path, [b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 5000], 0)
    with pytest.raises(MalformedAnswer, match="larger than 1000 bytes"):
        request(path, "GET", "/", timeout=5)
    t.join(10)


def test_a_server_that_closes_without_an_answer_does_not_answer(tmp_path: Path):
    """Not a malformed answer: no answer at all, said as the standard library's client says
    it (`haplane fault` prints "does not answer: ...")."""
    path = str(tmp_path / "closes.sock")
    t = _serve_once(path, [], 0)
    with pytest.raises(UnixHttpError, match="without response") as caught:
        request(path, "GET", "/", timeout=5)
    assert not isinstance(caught.value, MalformedAnswer)
    t.join(10)
