"""Upstream health: the states, the pure transition function, and the active probe.

Layer: gate. `judge` and `passive_failure` are pure; `Prober` keeps one TCP connection to the
upstream it is given and touches nothing else; `probe` checks once on a fresh connection.

States: UP (gets new connections), DRAINING (its check answered 503: no new connections, the
existing ones finish), DOWN (no new connections, and the engine closes every existing one).

Transitions (`judge`):
- the first check of a new upstream decides at once: 2xx -> UP, 503 -> DRAINING, failure -> DOWN
  (new upstreams start DOWN, unchecked: traffic never goes to an address nobody has seen answer);
- UP -> DRAINING on one 503 (draining is a deliberate signal and costs no connection);
- DRAINING -> UP on one 2xx (the upstream is alive and says it is ready again);
- UP or DRAINING -> DOWN after `fall` consecutive failed checks (refused, reset, timeout,
  malformed, or a status other than 2xx/503);
- DOWN -> UP after `rise` consecutive 2xx; a 503 while DOWN keeps it DOWN and restarts the count;
- passive: a refused, reset or timed-out connect by the data path -> DOWN at once.

The prober is a tiny raw HTTP/1.1 client on asyncio rather than aiohttp's: it costs a fraction
of a ClientSession request. It keeps its connection for a few checks (`REUSE_FOR`) and then
dials again, so the upstream's accept path is still exercised the way a new client's would be
(a connection kept for ever would hide a listener that stopped accepting).
"""

from __future__ import annotations

import asyncio
import enum
import ssl
import time
from dataclasses import dataclass, replace
from typing import Any

import httptools
import orjson

from .settings import HealthCheck

MAX_CHECK_RESPONSE = 64 * 1024


class UpstreamState(enum.StrEnum):
    UP = "up"
    DRAINING = "draining"
    DOWN = "down"


class CheckOutcome(enum.Enum):
    OK = "ok"
    NOT_READY = "not_ready"  # answered 503
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class HealthCounters:
    state: UpstreamState = UpstreamState.DOWN
    successes: int = 0  # consecutive 2xx while DOWN
    failures: int = 0  # consecutive failed checks
    checked: bool = False


def judge(current: HealthCounters, outcome: CheckOutcome, check: HealthCheck) -> HealthCounters:
    """The counters after one active check (see the module docstring)."""
    up, draining, down = UpstreamState.UP, UpstreamState.DRAINING, UpstreamState.DOWN
    if not current.checked:
        state = {CheckOutcome.OK: up, CheckOutcome.NOT_READY: draining}.get(outcome, down)
        failures = 1 if outcome is CheckOutcome.FAILED else 0
        return HealthCounters(state, 0, failures, True)
    if outcome is CheckOutcome.FAILED:
        failures = current.failures + 1
        state = down if failures >= check.fall else current.state
        return replace(current, state=state, successes=0, failures=failures)
    if outcome is CheckOutcome.NOT_READY:
        state = down if current.state is down else draining
        return replace(current, state=state, successes=0, failures=0)
    if current.state is down:
        successes = current.successes + 1
        if successes >= check.rise:
            return replace(current, state=up, successes=0, failures=0)
        return replace(current, successes=successes, failures=0)
    return replace(current, state=up, successes=0, failures=0)


def passive_failure(current: HealthCounters) -> HealthCounters:
    """The data path could not connect: DOWN now; active checks must then see `rise` 2xx."""
    return HealthCounters(UpstreamState.DOWN, 0, current.failures, True)


@dataclass(frozen=True, slots=True)
class CheckResult:
    outcome: CheckOutcome
    latency: float  # seconds, until the answer or the failure
    reason: str  # "HTTP 200", "connection refused", "timeout after 0.2s", ...
    detail: Any = None  # the decoded JSON body of the answer, if it was JSON


class _Response:
    """httptools callbacks for one small response."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False
        self.keep_alive = False
        self.headers_complete = self.framed = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_body(self, data: bytes) -> None:
        if len(self.body) < MAX_CHECK_RESPONSE:
            self.body += data

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (
            name == b"transfer-encoding" and value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        ):
            self.framed = True  # (any other transfer coding: the body ends with the connection)

    def on_headers_complete(self) -> None:
        self.headers_complete = True

    def ended(self) -> None:
        """The connection ended: an answer framed by neither a length nor chunks is whole
        (httptools has no way to tell its parser so)."""
        if self.headers_complete and not self.framed and not self.complete:
            code = self.parser.get_status_code() if self.parser is not None else 0
            self.complete = code >= 200
            self.keep_alive = False

    def on_message_begin(self) -> None:
        self.headers_complete = self.framed = False
        if self.complete:  # bytes after the answer: the connection is out of step
            self.keep_alive = False

    def on_message_complete(self) -> None:
        if self.complete:
            return
        if self.parser is not None and self.parser.get_status_code() < 200:
            self.body.clear()  # an interim answer (1xx): the final one follows
            return
        self.complete = True
        # asked now: once the message is complete the parser has reset and says False
        self.keep_alive = self.parser is not None and self.parser.should_keep_alive()


_contexts: dict[tuple[str, str | None, str | None], ssl.SSLContext] = {}


def _tls(check: HealthCheck) -> ssl.SSLContext | None:
    """The check's TLS context, built once per (CA, certificate, key): a handshake per check
    is the cost of HTTPS checks, building a context per check would be a second one."""
    if not check.tls_ca:
        return None
    key = (check.tls_ca, check.tls_cert, check.tls_key)
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = ssl.create_default_context(cafile=check.tls_ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if check.tls_cert:
            ctx.load_cert_chain(check.tls_cert, check.tls_key)
        _contexts[key] = ctx
    return ctx


async def probe(host: str, port: int, check: HealthCheck) -> CheckResult:
    """One active check on a fresh connection, closed afterwards (`Prober` keeps one)."""
    prober = Prober(host, port, reuse_for=0.0)
    try:
        return await prober.check(check)
    finally:
        prober.close()


# How long a check connection is kept for the next checks. A TLS connection costs ~2 ms of CPU
# on each side here (OpenSSL 3 handshake plus the servers' connection set-up; measured by
# `bench/health_checks.py`), and a gate checks 4 balancers and a balancer its replicas 5 times
# a second: keeping the connection took the idle two-regions example from 160-172% to
# 136-143% of a core.
# Envoy's HTTP health checker also reuses its connection; unlike Envoy, a new one is dialled at
# least this often, so a listener that stopped accepting while old connections are still
# served is found within this time (the data path's connect failure finds it sooner).
REUSE_FOR = 2.0


class Prober:
    """Active checks of one upstream address: `GET check.path` over HTTP/1.1, over HTTPS when
    the check names a CA (the upstream's certificate must verify, or the check fails).

    The connection is kept between checks for at most `reuse_for` seconds, then dialled again.
    A kept connection the upstream closed while idle (its keep-alive timeout, a restart: the
    request then gets no byte back) is replaced at once by a fresh one within the same check;
    any other failure (a timeout, an error, a malformed answer) fails the check and drops the
    connection. One check at a time per prober (the owner's check loop)."""

    def __init__(self, host: str, port: int, *, reuse_for: float = REUSE_FOR) -> None:
        self.host, self.port = host, port
        self.reuse_for = reuse_for
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._conn_tls: ssl.SSLContext | None = None
        self._opened = 0.0
        self.connections_opened = 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn[1].transport.abort()  # no TIME_WAIT pile-up at 5 checks/s per upstream
            self._conn = None

    async def check(self, check: HealthCheck) -> CheckResult:
        clock = time.perf_counter  # uvloop's loop.time() moves in whole milliseconds
        started = clock()
        timeout = check.effective_timeout
        keep = self.reuse_for > 0
        host_header = check.host_header or f"{self.host}:{self.port}"
        request = (
            f"GET {check.path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: haplane-gate\r\n"
            "Accept: application/json\r\n" + ("\r\n" if keep else "Connection: close\r\n\r\n")
        ).encode()
        try:
            async with asyncio.timeout(timeout):
                tls = _tls(check)  # a CA or key file that cannot be read fails the check
                if self._conn is not None and (
                    self._conn_tls is not tls
                    or clock() - self._opened >= self.reuse_for
                    or self._conn[1].transport.is_closing()  # reset while idle (uvloop)
                    or self._conn[0].at_eof()  # closed while idle
                ):
                    self.close()
                answer = None
                if self._conn is not None:
                    answer = await self._exchange(self._conn, request, kept=True)
                if answer is None:  # no kept connection, or the upstream had closed it
                    self.close()
                    self._conn = await asyncio.open_connection(
                        self.host, self.port, ssl=tls, server_hostname=self.host if tls else None
                    )
                    self._conn_tls, self._opened = tls, clock()
                    self.connections_opened += 1
                    answer = await self._exchange(self._conn, request, kept=False)
                    assert answer is not None
        except TimeoutError:
            return self._failed(clock() - started, f"timeout after {timeout:g}s")
        except ConnectionRefusedError:
            return self._failed(clock() - started, "connection refused")
        except ConnectionResetError:
            return self._failed(clock() - started, "connection reset")
        except httptools.HttpParserError as exc:
            return self._failed(clock() - started, f"malformed answer: {exc}")
        except ssl.SSLError as exc:
            return self._failed(clock() - started, f"TLS: {exc.reason or exc}")
        except OSError as exc:
            return self._failed(clock() - started, f"{type(exc).__name__}: {exc}")
        except BaseException:  # cancelled mid-check: the connection is in an unknown state
            self.close()
            raise
        latency = clock() - started
        response, parser = answer
        if not response.complete:
            return self._failed(latency, "connection closed before a complete answer")
        code = parser.get_status_code()
        if not keep or not response.keep_alive or not (200 <= code < 300 or code == 503):
            self.close()  # a failed check never leaves its connection for the next one
        detail: Any = None
        if response.body:
            try:
                detail = orjson.loads(bytes(response.body))
            except orjson.JSONDecodeError:
                detail = None
        if 200 <= code < 300:
            return CheckResult(CheckOutcome.OK, latency, f"HTTP {code}", detail)
        if code == 503:
            return CheckResult(CheckOutcome.NOT_READY, latency, "HTTP 503", detail)
        return CheckResult(CheckOutcome.FAILED, latency, f"HTTP {code}", detail)

    @staticmethod
    async def _exchange(
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes, *, kept: bool
    ) -> tuple[_Response, httptools.HttpResponseParser] | None:
        """The answer to `request` on `conn` (complete or cut short); None when a kept
        connection ends or is reset before any byte of an answer (closed by the upstream
        while idle: the caller dials again)."""
        reader, writer = conn
        response = _Response()
        parser = response.parser = httptools.HttpResponseParser(response)
        got = False
        try:
            writer.write(request)
            while not response.complete:
                data = await reader.read(65536)
                if not data:
                    response.ended()
                    break
                got = True
                parser.feed_data(data)
        except RuntimeError:
            if not writer.transport.is_closing():
                raise  # not uvloop's write on a transport a reset closed: a bug, said so
            if kept and not got:
                return None
            raise ConnectionResetError("the connection was closed") from None
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            if kept and not got:
                return None
            raise
        finally:
            response.parser = None  # no cycle left for the collector
        if kept and not got:
            return None
        return response, parser

    def _failed(self, latency: float, reason: str) -> CheckResult:
        self.close()
        return _failed(latency, reason)


def _failed(latency: float, reason: str) -> CheckResult:
    return CheckResult(CheckOutcome.FAILED, latency, reason)
