"""Prometheus metrics of one forwarding engine, in a registry of its own.

Layer: gate. Reads the engine's plain counters at scrape time (a custom collector), so the data
path only adds integers; the health check histogram and the state-change counter are ordinary
prometheus-client metrics, updated a few times a second at most. Names, labels and meanings
are `haplane.telemetry.Gate`'s.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ..telemetry import Gate as M
from .balancing import Pool
from .health import UpstreamState
from .http_proxy import HttpListener
from .tcp_relay import TcpListener


class Engine(Protocol):
    """What the collector reads of the forwarding engine (`forwarder.Forwarder`), declared
    here so that the engine imports its metrics and not the reverse."""

    @property
    def listeners(self) -> Sequence[TcpListener | HttpListener]: ...

    @property
    def active_pool(self) -> Pool | None: ...

    @property
    def pools(self) -> Mapping[str, Pool]: ...


class GateMetrics:
    def __init__(self, forwarder: Engine, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.check_duration = M.check_duration.histogram(self.registry)
        self.state_changes = M.state_changes.counter(self.registry)
        self.registry.register(_EngineCollector(forwarder))


class _EngineCollector(Collector):
    def __init__(self, forwarder: Engine) -> None:
        self.forwarder = forwarder

    def collect(self) -> Iterator[Metric]:
        fw = self.forwarder
        conns, active = M.connections.family(), M.connections_active.family()
        rejected, requests = M.connections_rejected.family(), M.requests.family()
        retries = M.retries.family()
        for listener in fw.listeners:
            name, mode = listener.spec.name, listener.mode
            conns.add_metric([name, mode], listener.accepted_total)
            active.add_metric([name, mode], listener.active_connections)
            if isinstance(listener, TcpListener):
                rejected.add_metric([name], listener.rejected_total)
            else:
                retries.add_metric([name], listener.retries_total)
                for code, n in sorted(listener.codes.items()):
                    requests.add_metric([name, str(code)], n)
        up_conns, up_active = M.upstream_connections.family(), M.upstream_active.family()
        up_requests, up_state = M.upstream_requests.family(), M.upstream_state.family()
        up_bytes, pool_active = M.upstream_bytes.family(), M.pool_active.family()
        current = fw.active_pool
        for pool in fw.pools.values():
            pool_active.add_metric([pool.name], 1.0 if pool is current else 0.0)
            for u in pool.upstreams.values():
                labels = [pool.name, u.name]
                up_conns.add_metric(labels, u.connections_total)
                up_active.add_metric(labels, u.active)
                up_requests.add_metric(labels, u.requests_total)
                for state in UpstreamState:
                    up_state.add_metric([*labels, state.value], 1.0 if u.state is state else 0.0)
                sent, received = u.bytes_closed
                for link in u.links:
                    sent += link.bytes_up
                    received += link.bytes_down
                up_bytes.add_metric([*labels, "to_upstream"], sent)
                up_bytes.add_metric([*labels, "from_upstream"], received)
        yield from (conns, active, rejected, requests, retries)
        yield from (up_conns, up_active, up_requests, up_state, up_bytes, pool_active)


class Followed(Protocol):
    """What the epoch collector reads of a gate's `roles.ActiveRegionFollower`."""

    @property
    def epoch(self) -> int | None: ...

    @property
    def writable(self) -> bool | None: ...

    @property
    def cut_off(self) -> bool: ...


class FollowerCollector(Collector):
    """A gate's view of the active-region record: its epoch, and whether it is fenced. Nothing
    while the gate is cut off from the control etcd: what it last saw may be stale."""

    def __init__(self, follower: Followed) -> None:
        self.follower = follower

    def collect(self) -> Iterator[Metric]:
        epoch, writable = M.epoch.family(), M.epoch_writable.family()
        if self.follower.cut_off:
            yield from (epoch, writable)
            return
        if self.follower.epoch is not None:
            epoch.add_metric([], float(self.follower.epoch))
        if self.follower.writable is not None:
            writable.add_metric([], 1.0 if self.follower.writable else 0.0)
        yield from (epoch, writable)
