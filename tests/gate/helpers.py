"""Processes and clients for the gate's tests: backend and gate processes (each stopped by its
own PID), a raw HTTP/1.1 client that shows exactly what came over the wire, a streaming reader,
and one async polling helper.

Layer: tests. Starts processes and stops each by its own PID; imports nothing from haplane."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httptools

BACKEND = Path(__file__).with_name("backend.py")
REPO = Path(__file__).resolve().parents[2]
_SETPRIV = shutil.which("setpriv")

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(
    predicate: Callable[[], Awaitable[T] | T], timeout: float = 10.0, what: str = "condition"
) -> T:
    """Poll until `predicate` returns something truthy; fail after a generous `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            value = predicate()
            if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            last = value
        except (OSError, NoResponse, TimeoutError) as exc:
            last = exc
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not met within {timeout}s (last: {last!r})")
        await asyncio.sleep(0.05)


class Process:
    """A child process we started; signalled only through its own PID."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *self.argv] if _SETPRIV else self.argv
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, cwd=REPO
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Backend(Process):
    def __init__(
        self, root: Path, name: str, *, drop_gets: bool = False, hang: bool = False
    ) -> None:
        self.name = name
        self.port = free_port()
        self.requests_path = root / f"{name}.requests"
        argv = [sys.executable, str(BACKEND), "--port", str(self.port), "--name", name]
        argv += ["--log", str(self.requests_path)]
        argv += ["--drop-gets"] if drop_gets else []
        argv += ["--hang"] if hang else []
        super().__init__(argv, root / f"{name}.log")

    async def start(self) -> Backend:
        self.spawn()
        await eventually(self.is_ready, 15.0, f"backend {self.name} ready")
        return self

    async def is_ready(self) -> bool:
        if not self.running():
            raise AssertionError(f"backend {self.name} exited: {self.log()[-2000:]}")
        return (await request(self.port, "GET", "/readyz", timeout=1.0)).status == 200

    async def restart(self) -> None:
        """Start again on the same port."""
        self.kill()
        await self.start()

    async def set_ready(self, ready: bool) -> None:
        r = await request(self.port, "POST", f"/control/ready?value={int(ready)}")
        assert r.status == 200

    def requests(self, path: str | None = None) -> list[str]:
        if not self.requests_path.exists():
            return []
        lines = self.requests_path.read_text().splitlines()
        return [x for x in lines if path is None or x.split(" ", 1)[1] == path]


class Gate(Process):
    """A `python -m haplane.gate` process; `config` gets an admin listener if it has none."""

    def __init__(self, root: Path, config: dict[str, Any], name: str = "gate") -> None:
        self.name = name
        self.config = dict(config)
        self.config.setdefault("name", name)
        if "admin" not in self.config:
            self.config["admin"] = {"host": "127.0.0.1", "port": free_port()}
        self.admin_port = int(self.config["admin"]["port"])
        self.config_path = root / f"{name}.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        argv = [sys.executable, "-m", "haplane.gate", "--config", str(self.config_path)]
        super().__init__(argv, root / f"{name}.log")

    async def start(self) -> Gate:
        self.spawn()
        await eventually(self._started, 15.0, f"gate {self.name} started")
        return self

    async def _started(self) -> bool:
        if not self.running():
            raise AssertionError(f"gate {self.name} exited: {self.log()[-3000:]}")
        status = await self.status()
        return all(
            u["checked"] for pool in status["pools"].values() for u in pool["upstreams"]
        ) and len(status["listeners"]) == len(self.config["listeners"])

    async def status(self) -> dict[str, Any]:
        r = await request(self.admin_port, "GET", "/status", timeout=2.0)
        assert r.status == 200, r
        return dict(r.json())

    async def state(self, upstream: str, pool: str | None = None) -> str:
        status = await self.status()
        pool = pool or next(iter(status["pools"]))
        for u in status["pools"][pool]["upstreams"]:
            if u["name"] == upstream:
                return str(u["state"])
        raise KeyError(upstream)

    async def active(self, pool: str | None = None) -> dict[str, int]:
        """Each upstream's relayed connections (L4) or outstanding requests (L7)."""
        status = await self.status()
        pool = pool or next(iter(status["pools"]))
        return {u["name"]: u["active"] for u in status["pools"][pool]["upstreams"]}

    async def wait_state(self, upstream: str, state: str, pool: str | None = None) -> None:
        async def reached() -> bool:
            return await self.state(upstream, pool) == state

        await eventually(reached, 10.0, f"{upstream} {state}")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    async def terminate(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        assert self.popen is not None
        return await asyncio.to_thread(self.popen.wait, timeout)


def gate_config(
    pools: dict[str, list[Backend]],
    listeners: list[dict[str, Any]],
    *,
    active: str | None = None,
    check: dict[str, Any] | None = None,
    timeouts: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A config with fast checks (50 ms, fall 2, rise 2) unless told otherwise."""
    check = {"interval": 0.05, "timeout": 0.5, "fall": 2, "rise": 2, **(check or {})}
    return {
        "listeners": listeners,
        "pools": {
            name: {
                "upstreams": [{"name": b.name, "host": "127.0.0.1", "port": b.port} for b in bs],
                "check": check,
            }
            for name, bs in pools.items()
        },
        "active_pool": active if active is not None else next(iter(pools)),
        "timeouts": {"connect": 1.0, **(timeouts or {})},
        "shutdown_grace": 2.0,
        **extra,
    }


# ---- a raw HTTP/1.1 client ---------------------------------------------------------------------


class NoResponse(Exception):
    """The connection ended before a complete response."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    chunks: list[bytes] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


class _Collector:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.complete = False
        self.headers_done = False
        self.event = asyncio.Event()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.event.set()

    def on_body(self, data: bytes) -> None:
        self.chunks.append(data)
        self.event.set()

    def on_message_complete(self) -> None:
        self.complete = True
        self.event.set()


def _request_bytes(
    method: str, path: str, body: bytes | None, headers: dict[str, str] | None, close: bool
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None and "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def request(
    port: int,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 5.0,
) -> Response:
    """One request on a fresh connection (Connection: close); NoResponse if it ends early."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                raw if raw is not None else _request_bytes(method, path, body, headers, True)
            )
            collector = _Collector()
            parser = httptools.HttpResponseParser(collector)
            head_only = method == "HEAD"  # a HEAD answer has headers only, whatever they say
            while not (collector.complete or (head_only and collector.headers_done)):
                data = await reader.read(65536)
                if not data:
                    raise NoResponse(f"{method} {path}: connection closed without a full response")
                parser.feed_data(data)
            return Response(
                parser.get_status_code(),
                collector.headers,
                b"".join(collector.chunks),
                collector.chunks,
            )
        finally:
            writer.transport.abort()


class Stream:
    """A long response read as it arrives, one JSON line at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.collector = _Collector()
        self.parser = httptools.HttpResponseParser(self.collector)
        self.buffer = b""
        self.ended = False

    @classmethod
    async def open(cls, port: int, path: str) -> Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request_bytes("GET", path, None, None, False))
        stream = cls(reader, writer)
        try:
            async with asyncio.timeout(5.0):
                while not stream.collector.headers_done:
                    await stream._read()
        except BaseException:
            stream.close()
            raise
        return stream

    async def _read(self) -> None:
        try:
            data = await self.reader.read(65536)
        except ConnectionError:
            data = b""
        if not data:
            self.ended = True
            raise NoResponse("stream ended")
        self.parser.feed_data(data)

    async def next_event(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while b"\n" not in self.buffer:
                if self.collector.chunks:
                    self.buffer += b"".join(self.collector.chunks)
                    self.collector.chunks.clear()
                    continue
                await self._read()
        line, _, self.buffer = self.buffer.partition(b"\n")
        return dict(json.loads(line))

    async def wait_closed(self, timeout: float = 10.0) -> None:
        """Until the connection ends (EOF or reset); fails if it stays open."""
        try:
            async with asyncio.timeout(timeout):
                while not self.ended:
                    await self._read()
        except (NoResponse, httptools.HttpParserError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        self.writer.transport.abort()


class _Responses:
    """httptools callbacks collecting successive responses on one connection."""

    def __init__(self) -> None:
        self.done: list[Response] = []
        self.parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, data: bytes) -> None:
        self.chunks.append(data)

    def on_message_complete(self) -> None:
        self.done.append(Response(self.status, self.headers, b"".join(self.chunks), self.chunks))
        self._reset()


class Conn:
    """One keep-alive client connection: sequential or pipelined requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.responses = _Responses()

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def pipeline(
        self, requests: list[tuple[str, str, bytes | None]], timeout: float = 5.0
    ) -> list[Response]:
        self.writer.write(b"".join(_request_bytes(m, p, b, None, False) for m, p, b in requests))
        out: list[Response] = []
        async with asyncio.timeout(timeout):
            while len(out) < len(requests):
                if self.responses.done:
                    response = self.responses.done.pop(0)
                    out.append(response)
                    continue
                data = await self.reader.read(65536)
                if not data:
                    raise NoResponse(f"connection closed after {len(out)} responses")
                self.responses.parser.feed_data(data)
        return out

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        return (await self.pipeline([(method, path, body)]))[0]

    def close(self) -> None:
        self.writer.transport.abort()
