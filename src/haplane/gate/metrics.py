"""Prometheus metrics of one forwarding engine, in a registry of its own.

Layer: gate. Reads the engine's plain counters at scrape time (a custom collector), so the data
path only adds integers; the health check histogram and the state-change counter are ordinary
prometheus-client metrics, updated a few times a second at most.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .balancing import Pool
from .health import UpstreamState
from .http_proxy import HttpListener
from .tcp_relay import TcpListener

CHECK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


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
        self.check_duration = Histogram(
            "haplane_gate_health_check_duration_seconds",
            "Active health check latency, until the answer or the failure",
            ["pool"],
            buckets=CHECK_BUCKETS,
            registry=self.registry,
        )
        self.state_changes = Counter(
            "haplane_gate_upstream_state_changes",
            "Upstream state changes, by the state entered",
            ["pool", "upstream", "to"],
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(forwarder))


class _EngineCollector(Collector):
    def __init__(self, forwarder: Engine) -> None:
        self.forwarder = forwarder

    def collect(self) -> Iterator[Metric]:
        fw = self.forwarder
        conns = CounterMetricFamily(
            "haplane_gate_connections", "Client connections accepted", labels=["listener", "mode"]
        )
        active = GaugeMetricFamily(
            "haplane_gate_connections_active",
            "Open client connections",
            labels=["listener", "mode"],
        )
        rejected = CounterMetricFamily(
            "haplane_gate_connections_rejected",
            "L4 client connections closed at once: no UP upstream in the active pool",
            labels=["listener"],
        )
        requests = CounterMetricFamily(
            "haplane_gate_requests",
            "L7 responses sent to clients, by status code (including the gate's own errors)",
            labels=["listener", "code"],
        )
        retries = CounterMetricFamily(
            "haplane_gate_request_retries",
            "L7 requests re-sent to another upstream",
            labels=["listener"],
        )
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
        up_conns = CounterMetricFamily(
            "haplane_gate_upstream_connections",
            "Connections opened to an upstream",
            labels=["pool", "upstream"],
        )
        up_active = GaugeMetricFamily(
            "haplane_gate_upstream_active",
            "Relayed connections (L4) plus outstanding requests (L7) of an upstream",
            labels=["pool", "upstream"],
        )
        up_requests = CounterMetricFamily(
            "haplane_gate_upstream_requests",
            "L7 requests an upstream answered completely",
            labels=["pool", "upstream"],
        )
        up_state = GaugeMetricFamily(
            "haplane_gate_upstream_state",
            "1 for the upstream's current state",
            labels=["pool", "upstream", "state"],
        )
        up_bytes = CounterMetricFamily(
            "haplane_gate_upstream_bytes",
            "Bytes relayed, by direction",
            labels=["pool", "upstream", "direction"],
        )
        pool_active = GaugeMetricFamily(
            "haplane_gate_pool_active", "1 for the active pool", labels=["pool"]
        )
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
