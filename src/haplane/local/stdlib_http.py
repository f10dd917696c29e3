"""Small HTTP requests to the platform's own listeners, and to the supervisor's Unix socket,
with the standard library's `http.client`, each in a worker thread.

Layer: run (local). Standard library only; what `haplane status`, `fault` and the supervisor's
control client send.

Why not aiohttp, which the servers run on: importing it costs ~130 ms on this machine (more
than all of `haplane status`'s ~25 requests take), and a command that asks each listener once
or twice gains nothing from its pooling. `http.client` is the standard library's own client;
its threads release the GIL while they wait on sockets and TLS handshakes, so the requests of
one status run side by side. Several requests to one listener share one connection.

`KeptConnections`: a caller that asks the same listeners again and again (the supervisor's
status gathers) keeps each connection open between exchanges. A TLS handshake costs both ends
far more CPU than a small GET on an open connection (here, with the example running: 10-150 ms
for the first `/readyz` of a listener against 1-25 ms for the next on the same connection).
A kept connection is reused for 10 s at most (`KeptConnections.lifetime`): a status may find
a listener ready on a connection it made up to 10 s before, when that listener no longer takes
new ones; a process that died closed its connections, and is seen at once.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
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
    answer, and a listener that drips its answer would keep the thread for long). The lock:
    an abort that comes as the exchange ends either reaches the connection before it is kept
    for another exchange (which then closes it) or finds it gone."""

    def __init__(self) -> None:
        self.conn: http.client.HTTPConnection | None = None
        self.aborted = False
        self._lock = threading.Lock()

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            sock = self.conn.sock if self.conn is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> bool:
        """The connection is no longer this call's; False when it was aborted (close it)."""
        with self._lock:
            self.conn = None
            return not self.aborted


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


# what a connection kept idle may have been closed by its server with (aiohttp closes idle
# keep-alive connections after 75 s): an exchange of GETs that meets one on a kept
# connection's first request sends it again, once, on a new connection
_STALE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ssl.SSLEOFError,
)


@dataclass
class _Kept:
    conn: http.client.HTTPConnection
    prefix: str  # the path prefix of the base URL it was made for
    created: float  # time.monotonic()
    generation: int  # the pool's, when it was made
    used: float = 0.0


class KeptConnections:
    """Connections kept open between exchanges, per listener and TLS context, each reused
    only within `lifetime` seconds of being made: every listener still gets a new connection
    and TLS handshake at least that often, so a listener that stopped taking connections (or
    serves a broken certificate since) is seen within that time, not hidden behind one
    connection kept for ever (and well below aiohttp's 75 s keep-alive, so the server rarely
    closes one first). Thread-safe: the exchanges run in the pool's threads. `close()` closes
    what is idle, and what is given back afterwards."""

    def __init__(self, lifetime: float = 10.0) -> None:
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._free: dict[tuple[Any, ...], list[_Kept]] = {}
        self.generation = 0

    def take(self, key: tuple[Any, ...]) -> _Kept | None:
        """The most recently used connection kept for `key` that is young enough."""
        now, old = time.monotonic(), []
        found = None
        with self._lock:
            free = self._free.get(key, [])
            while free:
                kept = free.pop()
                if now - kept.created <= self.lifetime:
                    found = kept
                    break
                old.append(kept)
            if not free:
                self._free.pop(key, None)
        for kept in old:
            kept.conn.close()
        return found

    def give(self, key: tuple[Any, ...], kept: _Kept) -> None:
        now, old = time.monotonic(), []
        kept.used = now
        with self._lock:
            if kept.generation != self.generation or now - kept.created > self.lifetime:
                old.append(kept)
            else:
                self._free.setdefault(key, []).append(kept)
            old += self._prune(self.lifetime, now)  # every listener's, gone ones' too
        for x in old:
            x.conn.close()

    def _prune(self, older_than: float, now: float) -> list[_Kept]:
        """Take the idle connections made more than `older_than` seconds before `now` out
        of the pool (the lock held), to be closed."""
        old: list[_Kept] = []
        for k in list(self._free):
            young = [x for x in self._free[k] if now - x.created <= older_than]
            old += [x for x in self._free[k] if now - x.created > older_than]
            if young:
                self._free[k] = young
            else:
                del self._free[k]
        return old

    def retire(self, older_than: float) -> int:
        """Close the idle connections made more than `older_than` seconds ago (a caller that
        dials again ahead of time, so that an exchange later finds a young one); how many."""
        with self._lock:
            old = self._prune(older_than, time.monotonic())
        for x in old:
            x.conn.close()
        return len(old)

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, {}
            self.generation += 1
        for kept in free.values():
            for x in kept:
                x.conn.close()


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
    keep: KeptConnections | None = None,
) -> list[Answer]:
    """Send `requests` (method, path, JSON body or None) one after the other over one
    connection to `base` (or to the Unix socket `unix`), blocking; each answer read whole,
    each request (the first with the connection and its handshake) given `timeout` seconds
    for each of its socket operations. HttpError when a connection or an answer fails (a
    status >= 400 is an answer), with the answers received before.

    `keep`: the connection is taken from there when one is kept for this listener and
    context, and given back after answers the server did not close."""
    call = call or _Call()
    key = (base, unix, context)  # the context itself: kept alive while its connections are
    kept = keep.take(key) if keep is not None else None
    if kept is not None:
        try:
            return _exchange(kept, requests, timeout, call, keep, key, reused=True)
        except _Retry:
            pass  # the server had closed it: a new connection, as without one kept
    generation = keep.generation if keep is not None else 0
    conn, prefix = _connection(base, timeout, context, unix)
    kept = _Kept(conn, prefix, time.monotonic(), generation)
    return _exchange(kept, requests, timeout, call, keep, key, reused=False)


class _Retry(Exception):
    """A kept connection turned out closed before its first answer (GETs only)."""


def _exchange(
    kept: _Kept,
    requests: Sequence[tuple[str, str, Any]],
    timeout: float,
    call: _Call,
    keep: KeptConnections | None,
    key: tuple[Any, ...],
    *,
    reused: bool,
) -> list[Answer]:
    conn = kept.conn
    call.conn = conn
    answers: list[Answer] = []
    closes = True
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
            conn.request(method, kept.prefix + path, data, headers)
            resp = conn.getresponse()
            answers.append(Answer(resp.status, resp.read()))
            closes = resp.will_close
    except (OSError, http.client.HTTPException) as exc:
        if (
            reused
            and not answers
            and not call.aborted
            and isinstance(exc, _STALE)
            and all(m in ("GET", "HEAD") for m, _, _ in requests)
        ):
            raise _Retry from exc
        if call.aborted or isinstance(exc, TimeoutError):
            raise HttpError(f"no answer within {timeout:g} s", answers) from None
        raise HttpError(str(exc) or type(exc).__name__, answers) from exc
    finally:
        whole = not closes and len(answers) == len(requests)
        if call.release() and keep is not None and whole:
            keep.give(key, kept)
        else:
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
    keep: KeptConnections | None = None,
) -> list[Answer]:
    """`exchange` in a worker thread, each request given at most `timeout` seconds: when
    they are up (or the caller is cancelled) the connection is shut down, which frees the
    thread at once, and HttpError says so (with the answers received before)."""
    import asyncio  # here: `exchange` alone (`haplane fault`) needs none of it

    loop = asyncio.get_running_loop()
    call = _Call()
    work = loop.run_in_executor(
        _pool(),
        lambda: exchange(
            base, requests, timeout=timeout, context=context, unix=unix, call=call, keep=keep
        ),
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
