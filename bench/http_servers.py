"""Benchmark: the HTTP server for the API replica (aiohttp, uvicorn, granian), side by side.

Layer: api (transport only: no haplane code runs; the apps below are bare handlers that serve
identical bytes, so the figures are what each server + framework costs around a handler).

Servers, each its own subprocess with one worker process (an API replica is one process):
- aiohttp.web as haplane ran it when this was measured (`asyncio.run`, the default event
  loop, one catch-all route, `AppRunner(access_log=None, handle_signals=False)`, `TCPSite`),
  and the same app under uvloop (as `python -m haplane.api` runs now, for its etcd client and
  watch fan-out);
- uvicorn `--loop uvloop --http httptools` with a raw ASGI app (no framework);
- granian `--workers 1 --runtime-threads 1 --loop uvloop` (its defaults: one Rust runtime
  thread and one Python thread per worker, plus a supervisor process), ASGI and RSGI interfaces.

Handlers, identical response bodies and `Content-Type: application/json` on every server
(checked before measuring): /one a prebuilt ~1 KiB ConfigMap, /list a prebuilt list of 100 of
them (~100 KiB), /encode the same ConfigMap encoded with orjson per request (so /encode - /one is
the encoding cost), /watch 100 watch events of one ConfigMap each, written as 100 chunks of a
chunked response (watch-like streaming).

Load comes from wrk (`-t2 -c64 --latency`, never a Python client), after a warm-up run against
the same URL; every (handler, server) pair is measured once per round, the server order rotating
between rounds, and the tables show medians over rounds. Reported: requests/s, p50/p99 latency
(wrk's latency distribution), server CPU µs per request (psutil user+system time of the server's
whole process tree over the wrk run / requests wrk completed), the ratio of each figure to
aiohttp as haplane runs it, and the spread of requests/s over rounds. wrk shares the 2 cores
with the server, so requests/s is throughput under contention; CPU per request is the steadier
figure.

    .venv/bin/python bench/http_servers.py [--duration 2] [--warmup 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

import orjson
import psutil
from aiohttp import web
from wrk_report import parse_wrk  # bench/ is the script's directory, so on sys.path

BENCH_DIR = Path(__file__).resolve().parent
JSON = "application/json"


# ---- payloads (identical bytes for every server) --------------------------------------------


def configmap(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"c{i}",
            "namespace": "bench",
            "uid": "0f5b7b6e-9c1b-4b8c-9e1e",
            "resourceVersion": f"{1000 + i}.9f2c41ab.0",
            "generation": 1,
            "creationTimestamp": "2026-11-25T21:00:00Z",
            "labels": {"app": "x"},
        },
        "data": {"p": "x" * 1000},
    }


ONE = configmap(1)
ONE_BYTES = orjson.dumps(ONE)
LIST_BYTES = orjson.dumps(
    {
        "kind": "ConfigMapList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "1"},
        "items": [configmap(i) for i in range(100)],
    }
)
EVENTS = [orjson.dumps({"type": "MODIFIED", "object": configmap(i)}) + b"\n" for i in range(100)]
PREBUILT = {"/one": ONE_BYTES, "/list": LIST_BYTES}
HANDLERS = {
    "/one": "prebuilt ~1 KiB object",
    "/list": "prebuilt list of 100 (~100 KiB)",
    "/encode": "orjson.dumps of the 1 KiB object per request",
    "/watch": "100 events as 100 chunks (chunked)",
}


def expected_body(path: str) -> bytes:
    return b"".join(EVENTS) if path == "/watch" else PREBUILT.get(path, ONE_BYTES)


# ---- the apps -------------------------------------------------------------------------------

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def asgi_app(scope: Message, receive: Receive, send: Send) -> None:
    """Raw ASGI (uvicorn, granian --interface asgi)."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/watch":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", JSON.encode())],
            }
        )
        for event in EVENTS:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    body = orjson.dumps(ONE) if path == "/encode" else PREBUILT.get(path, ONE_BYTES)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def rsgi_app(scope: Any, protocol: Any) -> None:
    """Raw RSGI (granian --interface rsgi)."""
    path = scope.path
    if path == "/watch":
        transport = protocol.response_stream(200, [("content-type", JSON)])
        for event in EVENTS:
            await transport.send_bytes(event)
        return
    body = orjson.dumps(ONE) if path == "/encode" else PREBUILT.get(path, ONE_BYTES)
    protocol.response_bytes(200, [("content-type", JSON)], body)


async def _aiohttp_dispatch(request: web.Request) -> web.StreamResponse:
    path = request.path
    if path == "/watch":  # as haplane's watch handler writes events
        response = web.StreamResponse(headers={"Content-Type": JSON})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for event in EVENTS:
            await response.write(event)
        await response.write_eof()
        return response
    body = orjson.dumps(ONE) if path == "/encode" else PREBUILT.get(path, ONE_BYTES)
    return web.Response(body=body, content_type=JSON)


async def _aiohttp_serve(port: int) -> None:
    """Mirrors `haplane.api.__main__.serve` and `ApiServer.start` (minus haplane's middlewares)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _aiohttp_dispatch)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def serve(kind: str, port: int) -> None:
    if kind == "aiohttp":
        asyncio.run(_aiohttp_serve(port))
    elif kind == "aiohttp-uvloop":
        import uvloop

        uvloop.run(_aiohttp_serve(port))
    else:
        raise SystemExit(f"unknown --serve {kind}")


# ---- servers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    argv: Callable[[int], list[str]]


PY = sys.executable


def _granian(interface: str, app: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [
            *(PY, "-m", "granian", "--interface", interface),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            *("--runtime-threads", "1", "--loop", "uvloop", "--no-access-log"),
            *("--log-level", "warning", "--working-dir", str(BENCH_DIR), f"http_servers:{app}"),
        ]

    return argv


SERVERS = [
    Server(
        "aiohttp",
        "aiohttp (asyncio)",
        lambda p: [PY, __file__, "--serve", "aiohttp", "--port", str(p)],
    ),
    Server(
        "aiohttp-uvloop",
        "aiohttp + uvloop",
        lambda p: [PY, __file__, "--serve", "aiohttp-uvloop", "--port", str(p)],
    ),
    Server(
        "uvicorn",
        "uvicorn uvloop+httptools",
        lambda p: [
            *(PY, "-m", "uvicorn", "--app-dir", str(BENCH_DIR), "--host", "127.0.0.1"),
            *("--port", str(p), "--loop", "uvloop", "--http", "httptools", "--workers", "1"),
            *("--no-access-log", "--log-level", "warning", "--lifespan", "on"),
            "http_servers:asgi_app",
        ],
    ),
    Server("granian-asgi", "granian ASGI", _granian("asgi", "asgi_app")),
    Server("granian-rsgi", "granian RSGI", _granian("rsgi", "rsgi_app")),
]


class Running:
    """One started server; stopped by its own PID (and its children's), whatever happens."""

    def __init__(self, server: Server, logdir: Path) -> None:
        self.server = server
        self.port = free_port()
        self.log: IO[bytes] = open(logdir / f"{server.key}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            server.argv(self.port),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches only us; we stop it below
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.tree: list[psutil.Process] = []

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server.label} exited: {self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/one", timeout=1.0) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.server.label} not ready: {self.output()}")
            time.sleep(0.1)
        root = psutil.Process(self.proc.pid)
        self.tree = [root, *root.children(recursive=True)]

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-2000:]

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def stop(self) -> None:
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        tree = [*self.tree[1:], *tree]
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for child in tree:  # workers the supervisor did not reap
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.is_running():
                    child.kill()
        self.log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- load -----------------------------------------------------------------------------------

_WRK: list[subprocess.Popen[str]] = []


def wrk(url: str, seconds: int, threads: int, connections: int) -> str:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    _WRK.append(proc)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _WRK.remove(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {out}")
    return out


def measure(srv: Running, path: str, args: argparse.Namespace) -> dict[str, float]:
    url = srv.url + path
    wrk(url, args.warmup, args.threads, args.connections)
    cpu0 = srv.cpu_seconds()
    out = wrk(url, args.duration, args.threads, args.connections)
    cpu = srv.cpu_seconds() - cpu0
    r = parse_wrk(out)
    r["cpu_us"] = cpu / r["n"] * 1e6 if r["n"] else float("nan")
    return r


def verify(srv: Running) -> None:
    for path in HANDLERS:
        with urllib.request.urlopen(srv.url + path, timeout=5.0) as r:
            body = r.read()
            ctype = r.headers.get("Content-Type")
        if body != expected_body(path) or ctype != JSON:
            raise AssertionError(f"{srv.server.label} {path}: {ctype!r}, {len(body)} bytes")


# ---- main -----------------------------------------------------------------------------------


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def started(servers: list[Server], logdir: Path) -> Iterator[list[Running]]:
    running: list[Running] = []
    try:
        for s in servers:
            running.append(Running(s, logdir))
        for r in running:
            r.wait_ready()
        yield running
    finally:
        for proc in list(_WRK):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for r in running:
            r.stop()


def report(results: dict[str, dict[str, list[dict[str, float]]]], servers: list[Server]) -> None:
    base_key = servers[0].key
    print(
        f"medians over rounds; 'x' columns = this server / {servers[0].label} "
        "(req/s: higher is better; CPU: lower is better); spread = (max-min)/median req/s"
    )
    for path, what in HANDLERS.items():
        print(f"\nGET {path}: {what}")
        print(
            f"{'server':<26}{'req/s':>9}{'x':>7}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'CPU us/req':>12}{'x':>7}{'spread':>8}"
        )

        def med(key: str, field: str, path: str = path) -> float:
            return statistics.median(r[field] for r in results[key][path])

        for s in servers:
            rps, cpu = med(s.key, "rps"), med(s.key, "cpu_us")
            runs = [r["rps"] for r in results[s.key][path]]
            spread = (max(runs) - min(runs)) / rps if rps else float("nan")
            errors = sum(r["errors"] for r in results[s.key][path])
            print(
                f"{s.label:<26}{rps:>9.0f}{rps / med(base_key, 'rps'):>6.2f}x"
                f"{med(s.key, 'p50'):>9.2f}{med(s.key, 'p99'):>9.2f}"
                f"{cpu:>12.0f}{cpu / med(base_key, 'cpu_us'):>6.2f}x{spread:>7.0%}"
                + (f"  ({errors:.0f} errors)" if errors else "")
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--serve", help=argparse.SUPPRESS)  # internal: run one aiohttp server
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--duration", type=int, default=2, help="seconds of each measured wrk run")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument(
        "--servers",
        default=",".join(s.key for s in SERVERS),
        help="comma-separated subset; the first is the baseline of the ratios",
    )
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    by_key = {s.key: s for s in SERVERS}
    servers = [by_key[k] for k in args.servers.split(",")]
    signal.signal(signal.SIGTERM, _sigterm)
    t0 = time.monotonic()
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        s.key: {p: [] for p in HANDLERS} for s in servers
    }
    with (
        tempfile.TemporaryDirectory(prefix="haplane-http-bench-") as tmp,
        started(servers, Path(tmp)) as running,
    ):
        for r in running:
            verify(r)
        print(
            f"{len(servers)} servers, bodies verified identical; wrk -t{args.threads} "
            f"-c{args.connections} -d{args.duration}s --latency after a {args.warmup}s warm-up, "
            f"{args.rounds} rounds; {os.cpu_count()} CPUs shared by wrk and the server",
            flush=True,
        )
        for rnd in range(args.rounds):
            order = running[rnd % len(running) :] + running[: rnd % len(running)]
            for path in HANDLERS:
                for srv in order:
                    results[srv.server.key][path].append(measure(srv, path, args))
            print(f"round {rnd + 1}/{args.rounds} done ({time.monotonic() - t0:.0f}s)", flush=True)
    report(results, servers)
    print(f"\ntotal {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()
