"""The forwarding engine: pools of health-checked upstreams, one active pool, listeners.

Layer: gate. Owns the asyncio tasks of the health checks and of the deadline sweep, and the
listening sockets it is asked to open; talks to upstreams only through `health.Prober`,
`tcp_relay` and `http_proxy`.

    forwarder = Forwarder(name="gate", timeouts=Timeouts(), retries=2)
    await forwarder.set_pool("eu-west", [UpstreamAddress("lb-1", "10.0.0.1", 6443)],
                             HealthCheck(path="/healthz/region"))
    forwarder.activate("eu-west")
    await forwarder.start_listener(ListenerSpec("api", "0.0.0.0", 6443, mode="l4"))
    ...
    await forwarder.stop(grace=10.0)

Invariants:
- every pool is health-checked all the time, active or not (the gate's failover logic needs the
  standby region's health too); only the active pool receives traffic;
- switching the active pool aborts every connection belonging to the old pool (L4 relays, L7
  pooled and in-flight upstream connections): clients reconnect, or a not-yet-answered
  idempotent request is retried, and land on the new pool;
- an upstream entering DOWN has all its connections aborted; entering DRAINING, only its idle
  pooled ones (busy ones finish);
- every state change is one JSON log line (`events`) and is passed to `subscribe`rs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from .balancing import Pool, Upstream
from .events import GateEvent, emit
from .health import CheckResult, Prober, UpstreamState, judge, passive_failure
from .http_proxy import HttpListener
from .metrics import GateMetrics
from .settings import HealthCheck, ListenerSpec, Timeouts, UpstreamAddress
from .tcp_relay import TcpListener

Listener = TcpListener | HttpListener


class PoolNotFound(KeyError):
    pass


class Forwarder:
    """Implements `balancing.Routing` for its listeners."""

    def __init__(
        self,
        *,
        name: str = "gate",
        timeouts: Timeouts | None = None,
        retries: int = 2,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self._timeouts = timeouts or Timeouts()
        self._retries = retries
        self.pools: dict[str, Pool] = {}
        self._active: Pool | None = None
        self.listeners: list[Listener] = []
        self._checks: dict[Upstream, asyncio.Task[None]] = {}
        self._first_check: dict[Upstream, asyncio.Event] = {}
        self._subscribers: list[Callable[[GateEvent], None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.stopping = False
        # drained for maintenance (POST /drain): the engine still serves what it has and
        # what it is sent, but its readiness and region health say 503, so whoever balances
        # across it (the gates, for a balancer) stops sending new connections
        self.drained: str | None = None
        self.started_at = time.time()
        self.metrics = GateMetrics(self, registry)

    # ---- Routing ------------------------------------------------------------------------------

    @property
    def active_pool(self) -> Pool | None:
        return self._active

    @property
    def timeouts(self) -> Timeouts:
        return self._timeouts

    @property
    def retries(self) -> int:
        return self._retries

    def upstream_failed(self, upstream: Upstream, reason: str) -> None:
        """Passive check: the data path could not connect to `upstream`."""
        old = upstream.counters
        if upstream.retired or old.state is UpstreamState.DOWN:
            return
        upstream.counters = passive_failure(old)
        self._transition(upstream, old.state.value, UpstreamState.DOWN, f"passive: {reason}")

    # ---- pools --------------------------------------------------------------------------------

    async def set_pool(
        self,
        name: str,
        upstreams: Sequence[UpstreamAddress],
        check: HealthCheck | None = None,
        *,
        wait: bool = True,
    ) -> None:
        """Create or replace a pool. Upstreams kept (same name and address) keep their state and
        connections; removed or changed ones are closed. New upstreams start DOWN and unchecked;
        with `wait`, this returns once each has had its first check (or that check timed out)."""
        names = [u.name for u in upstreams]
        if len(set(names)) != len(names):
            raise ValueError(f"pool {name}: upstream names must be unique: {names}")
        pool = self.pools.get(name)
        check_changed = False
        if pool is None:
            pool = Pool(name, check or HealthCheck())
            self.pools[name] = pool
        elif check is not None and check != pool.check:
            pool.check = check
            check_changed = True
        old = pool.upstreams
        now = time.time()
        chosen: list[Upstream] = []
        fresh: list[Upstream] = []
        for address in upstreams:
            existing = old.get(address.name)
            if existing is not None and existing.address == address:
                chosen.append(existing)
            else:
                upstream = Upstream(name, address, now)
                chosen.append(upstream)
                fresh.append(upstream)
        kept = set(chosen)
        for upstream in old.values():
            if upstream not in kept:
                self._retire(upstream)
        pool.replace_upstreams(chosen)
        for upstream in chosen:
            if upstream in fresh or check_changed:
                self._start_check(pool, upstream)
        self._emit(GateEvent("pool_set", pool=name, reason=f"upstreams: {', '.join(names) or '-'}"))
        if wait and fresh:
            timeout = pool.check.effective_timeout + 1.0
            events = [self._first_check[u].wait() for u in fresh if u in self._first_check]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*events)

    def remove_pool(self, name: str) -> None:
        pool = self._pool(name)
        if pool is self._active:
            self.activate(None, reason="active pool removed")
        for upstream in pool.upstreams.values():
            self._retire(upstream)
        del self.pools[name]
        self._emit(GateEvent("pool_removed", pool=name))

    def activate(self, name: str | None, *, reason: str = "requested") -> None:
        """Forward new connections to pool `name` (None: to nothing, every client is refused)
        and abort every connection belonging to the pool active before."""
        new = self._pool(name) if name is not None else None
        old = self._active
        if new is old:
            return
        self._active = new
        closed = 0
        if old is not None:
            for upstream in old.upstreams.values():
                closed += upstream.close_links()
        self._emit(
            GateEvent(
                "pool_activated",
                pool=name,
                from_state=old.name if old is not None else None,
                to_state=name,
                reason=f"{reason}; closed {closed} connections of the previous pool",
            )
        )

    def subscribe(self, callback: Callable[[GateEvent], None]) -> None:
        """Call `callback` with every event (state changes, pool switches), synchronously."""
        self._subscribers.append(callback)

    # ---- listeners and lifecycle --------------------------------------------------------------

    async def start_listener(self, spec: ListenerSpec) -> int:
        """Open a listener; returns its port (useful with port 0)."""
        listener: Listener = (
            HttpListener(spec, self) if spec.mode == "l7" else TcpListener(spec, self)
        )
        port = await listener.start()
        self.listeners.append(listener)
        if self._sweeper is None:
            self._sweeper = self._guard(self._sweep(), "deadline sweep")
        self._emit(
            GateEvent("listener_started", reason=f"{spec.name} {spec.mode} {spec.host}:{port}")
        )
        return port

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let connections finish for up to `grace` seconds, abort the rest,
        stop the health checks."""
        self.stopping = True
        self._emit(GateEvent("stopping", reason=f"grace {grace:g}s"))
        for listener in self.listeners:
            listener.stop_accepting()
            listener.begin_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # polled: shutdown happens once, and connection_lost stays free of shutdown bookkeeping
        while loop.time() < deadline and any(lst.active_connections for lst in self.listeners):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        left = sum(lst.active_connections for lst in self.listeners)
        for listener in self.listeners:
            listener.abort_all()
        tasks = [*self._checks.values(), *([self._sweeper] if self._sweeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pending = [t for lst in self.listeners for t in lst.pending]
        await asyncio.gather(*pending, return_exceptions=True)
        self._checks.clear()
        self._sweeper = None
        for pool in self.pools.values():
            for upstream in pool.upstreams.values():
                upstream.close_links()
        self._emit(GateEvent("stopped", reason=f"aborted {left} connections at the deadline"))

    def drain(self, reason: str | None) -> None:
        """Drained (`reason`) or back in service (None); one event either way."""
        if reason == self.drained:
            return
        self.drained = reason
        for listener in self.listeners:
            if isinstance(listener, HttpListener):
                # L7: idle keep-alive connections close now, busy ones after their response
                # (an L4 relay cannot tell requests apart: its clients end their connections)
                if reason:
                    listener.begin_shutdown()
                elif not self.stopping:  # (shutdown's own draining stays)
                    listener.draining = False
        self._emit(GateEvent("drained" if reason else "undrained", reason=reason or "admin API"))

    # ---- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """JSON-ready: listeners, pools and their upstreams (what GET /status serves)."""
        listeners = []
        for lst in self.listeners:
            item: dict[str, Any] = {
                "name": lst.spec.name,
                "mode": lst.mode,
                "host": lst.spec.host,
                "port": lst.port,
                "reuse_port": lst.spec.reuse_port,
                "connections_active": lst.active_connections,
                "connections_total": lst.accepted_total,
            }
            if isinstance(lst, HttpListener):
                item["requests"] = {str(k): v for k, v in sorted(lst.codes.items())}
                item["retries"] = lst.retries_total
            else:
                item["rejected"] = lst.rejected_total
            listeners.append(item)
        pools: dict[str, Any] = {}
        for pool in self.pools.values():
            check = pool.check
            pools[pool.name] = {
                "active": pool is self._active,
                "check": {
                    "path": check.path,
                    "interval": check.interval,
                    "timeout": check.effective_timeout,
                    "fall": check.fall,
                    "rise": check.rise,
                },
                "upstreams": [self._upstream_status(u) for u in pool.upstreams.values()],
            }
        return {
            "name": self.name,
            "stopping": self.stopping,
            "drained": self.drained,
            "connections_active": sum(lst.active_connections for lst in self.listeners),
            "active_pool": self._active.name if self._active is not None else None,
            "listeners": listeners,
            "pools": pools,
        }

    @staticmethod
    def _upstream_status(u: Upstream) -> dict[str, Any]:
        latency = u.last_check_latency
        return {
            "name": u.name,
            "host": u.address.host,
            "port": u.address.port,
            "check_port": u.address.health_port,
            "state": u.state.value,
            "checked": u.counters.checked,
            "since": u.state_since,
            "active": u.active,
            "connections_total": u.connections_total,
            "requests_total": u.requests_total,
            "idle_pooled": len(u.idle),
            "last_check_latency_ms": round(latency * 1000, 3) if latency is not None else None,
            "last_check": u.last_check_reason,
            "detail": u.detail,
        }

    # ---- internals ----------------------------------------------------------------------------

    def _pool(self, name: str) -> Pool:
        try:
            return self.pools[name]
        except KeyError:
            raise PoolNotFound(name) from None

    def _retire(self, upstream: Upstream) -> None:
        upstream.retired = True
        task = self._checks.pop(upstream, None)
        if task is not None:
            task.cancel()
        self._first_check.pop(upstream, None)
        upstream.close_links()

    def _start_check(self, pool: Pool, upstream: Upstream) -> None:
        task = self._checks.pop(upstream, None)
        if task is not None:
            task.cancel()
        self._first_check.setdefault(upstream, asyncio.Event())
        self._checks[upstream] = self._guard(
            self._check_loop(pool, upstream), f"health check {pool.name}/{upstream.name}"
        )

    async def _check_loop(self, pool: Pool, upstream: Upstream) -> None:
        address = upstream.address
        prober = Prober(address.host, address.health_port)  # its connection kept a few checks
        try:
            await self._checking(pool, upstream, prober)
        finally:  # retired, stopped or restarted (`_start_check`): the connection goes too
            prober.close()

    async def _checking(self, pool: Pool, upstream: Upstream, prober: Prober) -> None:
        while not upstream.retired:
            check = pool.check
            try:
                result = await prober.check(check)
                if upstream.retired:
                    return
                self._apply_check(pool, upstream, result)
            except Exception as exc:  # a bug: log it loudly, keep checking
                self._emit(
                    GateEvent(
                        "task_crashed",
                        level="error",
                        pool=pool.name,
                        upstream=upstream.name,
                        reason=f"health check: {type(exc).__name__}: {exc}",
                    )
                )
                result = None
            spent = result.latency if result is not None else 0.0
            await asyncio.sleep(max(0.0, check.interval - spent))

    def _apply_check(self, pool: Pool, upstream: Upstream, result: CheckResult) -> None:
        upstream.last_check_latency = result.latency
        upstream.last_check_reason = result.reason
        upstream.detail = result.detail
        self.metrics.check_duration.labels(pool.name).observe(result.latency)
        old = upstream.counters
        new = judge(old, result.outcome, pool.check)
        upstream.counters = new
        if not old.checked:
            self._transition(upstream, "unknown", new.state, f"first check: {result.reason}")
            event = self._first_check.get(upstream)
            if event is not None:
                event.set()
        elif new.state is not old.state:
            if new.state is UpstreamState.DOWN:
                reason = f"{new.failures} consecutive failed checks, last: {result.reason}"
            elif old.state is UpstreamState.DOWN:
                reason = f"{pool.check.rise} consecutive passed checks: {result.reason}"
            else:
                reason = f"check: {result.reason}"
            self._transition(upstream, old.state.value, new.state, reason)

    def _transition(
        self, upstream: Upstream, from_state: str, to: UpstreamState, reason: str
    ) -> None:
        upstream.state_since = time.time()
        if to is UpstreamState.DOWN:
            closed = upstream.close_links()
            if closed:
                reason += f"; closed {closed} connections"
        elif to is UpstreamState.DRAINING:
            upstream.close_idle()
        self.metrics.state_changes.labels(upstream.pool_name, upstream.name, to.value).inc()
        self._emit(
            GateEvent(
                "upstream_state",
                level="warning" if to is UpstreamState.DOWN else "info",
                pool=upstream.pool_name,
                upstream=upstream.name,
                from_state=from_state,
                to_state=to.value,
                reason=reason,
            )
        )

    async def _sweep(self) -> None:
        """Enforce the deadlines the data path only writes down (see `http_proxy`)."""
        loop = asyncio.get_running_loop()
        period = min(1.0, max(0.02, self._timeouts.shortest() / 4))
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for listener in self.listeners:
                listener.tick(now)
            idle_limit = now - self._timeouts.upstream_idle
            for pool in self.pools.values():
                for upstream in pool.upstreams.values():
                    idle = upstream.idle
                    # oldest first; stop at the first recent one
                    while idle and idle[0].idle_since < idle_limit:
                        idle.pop(0).abort()

    def _guard(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """Every long-lived task goes through here, so a crash is logged, not lost."""
        task = asyncio.get_running_loop().create_task(coro, name=what)

        def done(t: asyncio.Task[None]) -> None:
            exc = None if t.cancelled() else t.exception()
            if exc is not None:
                reason = f"{what}: {type(exc).__name__}: {exc}"
                self._emit(GateEvent("task_crashed", level="error", reason=reason))

        task.add_done_callback(done)
        return task

    def emit(self, event: GateEvent) -> None:
        """Log and publish an event of a role around the engine (region health, following)."""
        self._emit(event)

    def _emit(self, event: GateEvent) -> None:
        emit(event, self.name)
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception as exc:
                emit(
                    GateEvent("task_crashed", level="error", reason=f"subscriber: {exc!r}"),
                    self.name,
                )
