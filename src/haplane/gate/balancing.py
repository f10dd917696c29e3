"""Pools of upstreams, the upstream's live bookkeeping, and the choice of an upstream.

Layer: gate. No I/O: `Upstream.close_links` only asks the registered connections to abort.

Invariants:
- `Upstream.active` counts what the balancer weighs: relayed connections (L4) plus outstanding
  requests (L7); it is raised when an upstream is picked, before the connect, so concurrent picks
  already see it;
- `Upstream.links` holds every open connection that belongs to the upstream (L4 relays, L7
  pooled or busy upstream connections): taking the upstream DOWN, retiring it, or switching the
  active pool away aborts them all;
- only UP upstreams are picked; DRAINING and DOWN ones keep what they have until it ends (DOWN:
  until the engine aborts it).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol

from .health import HealthCounters, UpstreamState
from .settings import HealthCheck, Timeouts, UpstreamAddress


class PooledConnection(Protocol):
    """An L7 keep-alive connection to an upstream, idle in its pool (`http_proxy` makes them;
    declared here so that this module needs not import it)."""

    alive: bool
    idle_since: float

    def abort(self) -> None:
        """Close at once."""


class Link(Protocol):
    bytes_up: int  # relayed towards the upstream
    bytes_down: int  # relayed from the upstream

    def abort(self) -> None:
        """Close at once, both sides."""


class Upstream:
    __slots__ = (
        "_pool_name",
        "active",
        "address",
        "bytes_closed",
        "connections_total",
        "counters",
        "detail",
        "idle",
        "last_check_latency",
        "last_check_reason",
        "links",
        "requests_total",
        "retired",
        "state_since",
    )

    def __init__(self, pool_name: str, address: UpstreamAddress, now: float = 0.0) -> None:
        self._pool_name = pool_name
        self.address = address
        self.counters = HealthCounters()
        self.state_since = now
        self.active = 0
        self.links: set[Link] = set()
        self.idle: list[PooledConnection] = []  # L7 keep-alive connections, most recent last
        self.connections_total = 0
        self.requests_total = 0
        self.bytes_closed = [0, 0]  # [to upstream, from upstream] of connections already closed
        self.last_check_latency: float | None = None
        self.last_check_reason: str | None = None
        self.detail: Any = None
        self.retired = False

    @property
    def name(self) -> str:
        return self.address.name

    @property
    def pool_name(self) -> str:
        return self._pool_name

    @property
    def state(self) -> UpstreamState:
        return self.counters.state

    def close_links(self) -> int:
        """Abort every connection of this upstream; returns how many."""
        links = list(self.links)
        self.links.clear()
        self.idle.clear()
        for link in links:
            link.abort()
        return len(links)

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.abort()

    def __repr__(self) -> str:
        return f"Upstream({self._pool_name}/{self.name} {self.state} active={self.active})"


def pick_least_loaded(
    upstreams: Sequence[Upstream], start: int, exclude: Collection[Upstream] | None = None
) -> int:
    """The index of the UP upstream with the fewest active connections or requests, -1 if none;
    ties go to the first in rotation order from `start`."""
    best = -1
    best_load = 1 << 62
    n = len(upstreams)
    for i in range(n):
        j = (start + i) % n
        u = upstreams[j]
        if u.counters.state is UpstreamState.UP and u.active < best_load:
            if exclude is not None and u in exclude:
                continue
            best, best_load = j, u.active
    return best


class Pool:
    """A named set of upstreams with one health check. The engine forwards to one active pool."""

    __slots__ = ("_next", "_order", "check", "name", "upstreams")

    def __init__(self, name: str, check: HealthCheck) -> None:
        self.name = name
        self.check = check
        self.upstreams: dict[str, Upstream] = {}
        self._order: list[Upstream] = []
        self._next = 0

    def replace_upstreams(self, upstreams: Sequence[Upstream]) -> None:
        self.upstreams = {u.name: u for u in upstreams}
        self._order = list(upstreams)
        self._next = 0

    def pick(self, exclude: Collection[Upstream] | None = None) -> Upstream | None:
        """Least loaded; equal loads in turn (the rotation resumes after the one picked)."""
        order = self._order
        i = pick_least_loaded(order, self._next, exclude)
        if i < 0:
            return None
        self._next = i + 1 if i + 1 < len(order) else 0
        return order[i]

    def has_up(self) -> bool:
        return any(u.state is UpstreamState.UP for u in self._order)


class Routing(Protocol):
    """What the data path needs from the engine (implemented by `Forwarder`)."""

    @property
    def active_pool(self) -> Pool | None: ...

    @property
    def timeouts(self) -> Timeouts: ...

    @property
    def retries(self) -> int: ...

    def upstream_failed(self, upstream: Upstream, reason: str) -> None:
        """Passive check: a connect to `upstream` failed."""
