"""The forwarding engine's settings: plain frozen values, no I/O.

Layer: gate. Imports nothing from haplane. `config.py` validates a JSON file into these; the
lead's in-process code builds them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ListenerMode = Literal["l4", "l7"]


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    """One upstream; `check_port` is where its health check is sent (default: `port`), e.g. a
    regional balancer's admin port serving its aggregate health."""

    name: str
    host: str
    port: int
    check_port: int | None = None

    @property
    def health_port(self) -> int:
        return self.check_port if self.check_port is not None else self.port


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active check of one pool's upstreams: `GET path` every `interval` seconds, on a
    connection kept for a few checks (`health.REUSE_FOR`).
    `fall` consecutive failures take an UP or DRAINING upstream DOWN; `rise`
    consecutive successes bring a DOWN one back. `timeout` defaults to `interval`."""

    path: str = "/readyz"
    interval: float = 0.2
    timeout: float | None = None
    fall: int = 2
    rise: int = 2
    host_header: str | None = None
    # HTTPS: the CA the upstreams' serving certificates are checked against (hostname
    # included: their IP or name as configured), and optionally this checker's own client
    # certificate and key
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def effective_timeout(self) -> float:
        return self.timeout if self.timeout is not None else self.interval


@dataclass(frozen=True, slots=True)
class Timeouts:
    """All in seconds. The L7 ones apply per phase of an exchange (see `http_proxy`)."""

    connect: float = 1.0
    client_header: float = 10.0  # L7: first byte of a request to its last header byte -> 408
    client_idle: float = 60.0  # L7: keep-alive idle, or a request body that stalls
    response_header: float = 60.0  # L7: request sent to response headers -> retry GET, else 504
    response_idle: float = 60.0  # L7: gap in a response body; never for watches and upgrades
    upstream_idle: float = 10.0  # L7: a pooled upstream connection unused this long is closed
    tcp_idle: float | None = None  # L4: no byte either way this long -> close; None = never
    linger: float = 5.0  # a closing connection still holding unsent bytes is aborted after this

    def shortest(self) -> float:
        values = [
            self.connect,
            self.client_header,
            self.client_idle,
            self.response_header,
            self.response_idle,
            self.upstream_idle,
        ]
        if self.tcp_idle is not None:
            values.append(self.tcp_idle)
        return min(values)


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """An L7 listener that terminates TLS: its serving pair, the CA its clients' certificates
    are verified against (their CN and O are passed on as X-Remote-User / X-Remote-Group), and
    how it dials upstreams: over TLS verified against `upstream_ca`, presenting the front-proxy
    certificate the replicas trust to assert those headers."""

    cert: str
    key: str
    client_ca: str
    upstream_ca: str
    upstream_cert: str
    upstream_key: str


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """A listening socket. `reuse_port` lets several gate processes on one host share the port
    (SO_REUSEPORT: the kernel spreads new connections over the live ones)."""

    name: str
    host: str
    port: int
    mode: ListenerMode = "l4"
    reuse_port: bool = False
    backlog: int = 1024
    tls: ListenerTls | None = None  # L7 only (L4 relays the client's own TLS session)
