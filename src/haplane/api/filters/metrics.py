"""The first link: request count and latency by verb, resource and code, and the number in
flight (the drain waits for it). Also the replica's Prometheus registry and its metrics.

Layer: api (filters). Names, labels and meanings are `haplane.telemetry.Api`'s.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ...telemetry import Api as M
from ..request import Handler


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = M.requests.counter(self.registry)
        self.latency = M.duration.histogram(self.registry)
        self.watches = M.watches.gauge(self.registry)
        self.etcd_latency = M.etcd_duration.histogram(self.registry)
        self.certificate_expiry = M.certificate_expiry.gauge(self.registry)
        self.encryption_config = M.encryption_config.gauge(self.registry)
        self.inflight = 0
        # `labels()` validates and hashes its arguments on every call: keep the children
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._etcd_children: dict[str, Any] = {}

    def observe(self, verb: str, resource: str, code: int, seconds: float) -> None:
        key = (verb, resource, code)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(verb, resource, str(code)),
                self.latency.labels(verb, resource),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_etcd(self, operation: str, seconds: float) -> None:
        child = self._etcd_children.get(operation)
        if child is None:
            child = self._etcd_children[operation] = self.etcd_latency.labels(operation)
        child.observe(seconds)

    def count_audit(self, sink: Any) -> None:
        """The audit log's counters (`AuditLog` or `BatchingAuditLog`), read at each scrape:
        nothing is added to a request's path."""
        self.registry.register(_AuditCollector(sink))

    async def __call__(self, request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
        """The metrics link. The resource label is set only once a served type was resolved
        (never the client's text: an unbounded label would grow the registry forever)."""
        t0 = time.monotonic()
        self.inflight += 1
        try:
            response = await handler(request)
        finally:
            self.inflight -= 1
        verb = request.get("verb", request.method.lower())
        resource = request.get("resource", "")
        self.observe(verb, resource, response.status, time.monotonic() - t0)
        return response


class _AuditCollector(Collector):
    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def collect(self) -> list[Metric]:
        events, errors = M.audit_events.family(), M.audit_errors.family()
        events.add_metric([], self.sink.events)
        errors.add_metric(["log"], self.sink.errors)
        out: list[Metric] = [events, errors]
        if hasattr(self.sink, "pending"):  # the batch backend
            buffered, blocked = M.audit_buffered.family(), M.audit_blocked.family()
            buffered.add_metric([], self.sink.pending)
            blocked.add_metric([], self.sink.blocked)
            out += [buffered, blocked]
        return out
