"""The first link: request count and latency by verb, resource and code, and the number in
flight (the drain waits for it). Also the replica's Prometheus registry and its metrics.

Layer: api (filters).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..request import Handler


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "apiserver_request_total",
            "API requests",
            ["verb", "resource", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "apiserver_request_duration_seconds",
            "API request latency",
            ["verb", "resource"],
            registry=self.registry,
        )
        self.watches = Gauge(
            "apiserver_watches", "open watches", ["resource"], registry=self.registry
        )
        self.etcd_latency = Histogram(
            "etcd_request_duration_seconds",
            "etcd call latency",
            ["operation"],
            registry=self.registry,
        )
        self.certificate_expiry = Gauge(
            "haplane_certificate_expiry_seconds",
            "Seconds until a certificate this process serves with expires",
            ["certificate"],
            registry=self.registry,
        )
        self.encryption_config = Gauge(
            "haplane_encryption_config_info",
            "1 for the EncryptionConfiguration in use (sha256 of the file as loaded)",
            ["sha256"],
            registry=self.registry,
        )
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
