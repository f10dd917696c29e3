"""Upstream health: the states, the pure transition function, and the active probe.

Layer: gate. `judge` and `passive_failure` are pure; `probe` opens one TCP connection to the
upstream it is given and nothing else.

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

The probe is a tiny raw HTTP/1.1 client on asyncio rather than aiohttp's: one fresh connection
per check exercises the upstream's accept path like a new client would (a pooled keep-alive
connection would hide a dead listener), and it costs a fraction of a ClientSession request.
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

    def on_body(self, data: bytes) -> None:
        if len(self.body) < MAX_CHECK_RESPONSE:
            self.body += data

    def on_message_complete(self) -> None:
        self.complete = True


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
    """One active check: `GET check.path` on a fresh connection (TLS when the check names a
    CA: the upstream's certificate must verify, or the check fails), closed afterwards."""
    clock = time.perf_counter  # uvloop's loop.time() moves in whole milliseconds
    started = clock()
    timeout = check.effective_timeout
    host_header = check.host_header or f"{host}:{port}"
    request = (
        f"GET {check.path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: haplane-gate\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    ).encode()
    writer: asyncio.StreamWriter | None = None
    response = _Response()
    parser = httptools.HttpResponseParser(response)
    try:
        async with asyncio.timeout(timeout):
            tls = _tls(check)
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=host if tls else None
            )
            writer.write(request)
            while not response.complete:
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed_data(data)
    except TimeoutError:
        return _failed(clock() - started, f"timeout after {timeout:g}s")
    except ConnectionRefusedError:
        return _failed(clock() - started, "connection refused")
    except ConnectionResetError:
        return _failed(clock() - started, "connection reset")
    except httptools.HttpParserError as exc:
        return _failed(clock() - started, f"malformed answer: {exc}")
    except ssl.SSLError as exc:
        return _failed(clock() - started, f"TLS: {exc.reason or exc}")
    except OSError as exc:
        return _failed(clock() - started, f"{type(exc).__name__}: {exc}")
    finally:
        if writer is not None:
            writer.transport.abort()  # no TIME_WAIT pile-up at 5 checks/s per upstream
    latency = clock() - started
    if not response.complete:
        return _failed(latency, "connection closed before a complete answer")
    code = parser.get_status_code()
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


def _failed(latency: float, reason: str) -> CheckResult:
    return CheckResult(CheckOutcome.FAILED, latency, reason)
