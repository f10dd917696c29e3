"""Small HTTP requests to the platform's own listeners, and to the supervisor's Unix socket,
with the standard library's `http.client`, each in a worker thread.

Layer: run (local). Standard library only; what `haplane status`, `fault` and the supervisor's
control client send.

Why not aiohttp, which the servers run on: importing it costs ~130 ms on this machine (more
than all of `haplane status`'s ~25 requests take), and a command that asks each listener once
or twice gains nothing from its pooling. `http.client` is the standard library's own client;
its threads release the GIL while they wait on sockets and TLS handshakes, so the requests of
one status run side by side. Several requests to one listener share one connection.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

# asyncio and the pool are imported when first used: the quick `haplane fault` blocks.
# A status asks ~25 listeners at once; the default executor has min(32, cores + 4) threads,
# 6 on this machine. Threads start on demand and idle ones cost nothing.
_WORKERS = 32
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


class HttpError(Exception):
    """The listener could not be reached, or did not answer in time, or not in HTTP;
    `answers`: those it gave before (several requests on one connection)."""

    def __init__(self, message: str, answers: list[Answer] | None = None) -> None:
        super().__init__(message)
        self.answers: list[Answer] = answers or []


class _Call:
    """One exchange's connection, for whoever waits on it to abort: shutting the socket down
    wakes the thread blocked on it at once (a socket timeout bounds each read, not a whole
    answer, and a listener that drips its answer would keep the thread for long)."""

    def __init__(self) -> None:
        self.conn: http.client.HTTPConnection | None = None
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True
        sock = self.conn.sock if self.conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON (ValueError when it is not)."""
        return json.loads(self.body)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _connection(
    base: str, timeout: float, context: ssl.SSLContext | None, unix: str | None
) -> tuple[http.client.HTTPConnection, str]:
    """A connection to `base` (`http(s)://host:port[/prefix]`), and its path prefix."""
    if unix is not None:
        return _UnixConnection(unix, timeout), ""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"{base}: not an http(s) URL")
    prefix = parts.path.rstrip("/")
    if parts.scheme == "https":
        ctx = context if context is not None else ssl.create_default_context()
        return http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ctx
        ), prefix
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout), prefix


def exchange(
    base: str,
    requests: Sequence[tuple[str, str, Any]],
    *,
    timeout: float,
    context: ssl.SSLContext | None = None,
    unix: str | None = None,
    call: _Call | None = None,
) -> list[Answer]:
    """Send `requests` (method, path, JSON body or None) one after the other over one
    connection to `base` (or to the Unix socket `unix`), blocking; each answer read whole,
    each request (the first with the connection and its handshake) given `timeout` seconds
    for each of its socket operations. HttpError when a connection or an answer fails (a
    status >= 400 is an answer), with the answers received before."""
    conn, prefix = _connection(base, timeout, context, unix)
    call = call or _Call()
    call.conn = conn
    answers: list[Answer] = []
    try:
        for method, path, body in requests:
            if call.aborted:
                raise HttpError(f"no answer within {timeout:g} s", answers)
            headers = {"Accept": "application/json, */*"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            conn.request(method, prefix + path, data, headers)
            resp = conn.getresponse()
            answers.append(Answer(resp.status, resp.read()))
    except (OSError, http.client.HTTPException) as exc:
        if call.aborted or isinstance(exc, TimeoutError):
            raise HttpError(f"no answer within {timeout:g} s", answers) from None
        raise HttpError(str(exc) or type(exc).__name__, answers) from exc
    finally:
        conn.close()
    return answers


def _pool() -> ThreadPoolExecutor:
    from concurrent.futures import ThreadPoolExecutor

    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(_WORKERS, thread_name_prefix="haplane-http")
        return _executor


async def fetch(
    base: str,
    requests: Sequence[tuple[str, str, Any]],
    *,
    timeout: float,
    context: ssl.SSLContext | None = None,
    unix: str | None = None,
) -> list[Answer]:
    """`exchange` in a worker thread, each request given at most `timeout` seconds: when
    they are up (or the caller is cancelled) the connection is shut down, which frees the
    thread at once, and HttpError says so (with the answers received before)."""
    import asyncio  # here: `exchange` alone (`haplane fault`) needs none of it

    loop = asyncio.get_running_loop()
    call = _Call()
    work = loop.run_in_executor(
        _pool(),
        lambda: exchange(base, requests, timeout=timeout, context=context, unix=unix, call=call),
    )
    # what the thread ends with is read here even when nobody waits for it any more
    work.add_done_callback(lambda f: f.cancelled() or f.exception())
    try:
        answers: list[Answer] = await asyncio.wait_for(
            asyncio.shield(work), timeout * max(1, len(requests))
        )
    except TimeoutError:
        call.abort()  # the thread returns at once now, with what it had received before
        done, _ = await asyncio.wait([work], timeout=1.0)
        err = work.exception() if done else None
        got = err.answers if isinstance(err, HttpError) else []
        raise HttpError(f"no answer within {timeout:g} s", got) from None
    except asyncio.CancelledError:
        call.abort()
        raise
    return answers


async def get(url: str, *, timeout: float, context: ssl.SSLContext | None = None) -> Answer:
    """One GET of `url`."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return (await fetch(base, [("GET", path, None)], timeout=timeout, context=context))[0]
