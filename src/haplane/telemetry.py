"""Every metric haplane's processes export, in one catalogue: name, type, labels and meaning;
and the JSON line every process logs (`JsonLogFormatter`), which `haplane logs` merges.

Layer: telemetry, the lowest beside topology. Plain data: it imports nothing of haplane, and
prometheus_client only inside the functions that build metrics (the CLI reads the catalogue
without it). Each component builds its metrics from these definitions, and the README's
catalogue, the naming test, the alert rules and the dashboard (`local.prometheus_export`) read
the same definitions: a metric cannot be exported under a name the catalogue does not have.

Names follow Prometheus' conventions (`promtool check metrics` lints them in the tests): base
units as suffixes (`_seconds`, `_bytes`), counters end in `_total` (as exposed; the client
library adds it to a family's samples), and `haplane_` prefixes everything but the
kube-apiserver names that kubectl-era dashboards already know (`apiserver_*`, `etcd_*`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricDef:
    name: str  # as exposed: a counter's ends in _total
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None  # histograms; None: the library's defaults

    # ---- building (prometheus_client imported here only) -----------------------------------

    def counter(self, registry: Any) -> Any:
        assert self.kind == "counter", self.name
        from prometheus_client import Counter

        _no_created_series()
        return Counter(self.name, self.help, self.labels, registry=registry)

    def gauge(self, registry: Any) -> Any:
        assert self.kind == "gauge", self.name
        from prometheus_client import Gauge

        return Gauge(self.name, self.help, self.labels, registry=registry)

    def histogram(self, registry: Any) -> Any:
        assert self.kind == "histogram", self.name
        from prometheus_client import Histogram

        _no_created_series()
        kw: dict[str, Any] = {"buckets": self.buckets} if self.buckets else {}
        return Histogram(self.name, self.help, self.labels, registry=registry, **kw)

    def family(self) -> CounterMetricFamily | GaugeMetricFamily:
        """An empty family for a custom collector to fill (`add_metric(labels, value)` in
        the order of `labels`)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=self.labels)
        assert self.kind == "gauge", self.name
        return GaugeMetricFamily(self.name, self.help, labels=self.labels)

    @property
    def family_name(self) -> str:
        """The name in `# TYPE` lines and in parsers' families (a counter's without _total)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name

    def series(self) -> tuple[str, ...]:
        """The sample names a scrape holds for it."""
        if self.kind == "histogram":
            return tuple(f"{self.name}{s}" for s in ("_bucket", "_sum", "_count"))
        return (self.name,)


def _no_created_series() -> None:
    # the library adds a `<name>_created` gauge per counter and histogram child by default: a
    # second series per child that no rule or dashboard here reads
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # type: ignore[no-untyped-call]


def _c(name: str, help_: str, *labels: str) -> MetricDef:
    return MetricDef(name, "counter", help_, labels)


def _g(name: str, help_: str, *labels: str) -> MetricDef:
    return MetricDef(name, "gauge", help_, labels)


def _h(name: str, help_: str, *labels: str, buckets: tuple[float, ...] | None = None) -> MetricDef:
    return MetricDef(name, "histogram", help_, labels, buckets)


FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

CERTIFICATE_EXPIRY = _g(
    "haplane_certificate_expiry_seconds",
    "Seconds until a certificate this process serves with expires (negative once it has; -Inf "
    "when unreadable)",
    "certificate",
)


class Api:
    """An API replica (`https://REPLICA/metrics`; RBAC: system:monitoring may get /metrics)."""

    requests = _c(
        "apiserver_request_total", "API requests answered, by verb, resource and HTTP code",
        "verb", "resource", "code",
    )  # fmt: skip
    duration = _h(
        "apiserver_request_duration_seconds", "API request latency, until the response was "
        "sent (watches: until they ended)", "verb", "resource",
    )  # fmt: skip
    watches = _g("apiserver_watches", "Open watches, by resource", "resource")
    etcd_duration = _h(
        "etcd_request_duration_seconds", "Latency of the replica's etcd calls", "operation"
    )
    certificate_expiry = CERTIFICATE_EXPIRY
    audit_events = _c(
        "apiserver_audit_event_total", "Audit events written to this replica's audit log"
    )
    audit_errors = _c(
        "apiserver_audit_error_total",
        "Audit events lost to a failed write (a full disk): the requests went on",
        "plugin",
    )
    audit_buffered = _g(
        "haplane_audit_buffered_events",
        "Audit events waiting in the batch backend's buffer (audit mode batch)",
    )
    audit_blocked = _c(
        "haplane_audit_blocked_total",
        "Times a request found the batch backend's buffer full and wrote it out itself",
    )
    encryption_config = _g(
        "haplane_encryption_config_info",
        "1 for the EncryptionConfiguration in use (sha256 of the file as loaded): replicas "
        "that disagree encrypt with different keys",
        "sha256",
    )
    sync_acks = _c(
        "haplane_sync_acknowledgements_total",
        "Writes answered in sync mode, by how: confirmed by a standby, degraded (sync: none "
        "recorded), unconfirmed (504)",
        "outcome",
    )
    sync_wait = _h(
        "haplane_sync_wait_seconds",
        "Time from a write's commit to its acknowledgement in sync mode",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    )
    sync_changes = _c(
        "haplane_sync_changes_total", "Sync record changes this replica made, by what it "
        "recorded", "to",
    )  # fmt: skip
    sync_standby = _g(
        "haplane_sync_standby",
        "1 while the sync record names this standby synchronous for the replica's region",
        "standby",
    )
    sync_applied = _g(
        "haplane_sync_standby_applied_revision",
        "The revision of this region each synchronous standby last applied",
        "standby",
    )


class Gate:
    """A gate or a regional balancer: the same forwarding engine (`https://ADMIN/metrics`;
    system:masters or system:monitoring)."""

    check_duration = _h(
        "haplane_gate_health_check_duration_seconds",
        "Active health check latency, until the answer or the failure (most checks reuse "
        "a kept connection: a connect and TLS handshake is in one check of each 2 s)",
        "pool",
        buckets=FAST_BUCKETS,
    )
    state_changes = _c(
        "haplane_gate_upstream_state_changes_total",
        "Upstream state changes, by the state entered",
        "pool", "upstream", "to",
    )  # fmt: skip
    connections = _c(
        "haplane_gate_connections_total", "Client connections accepted", "listener", "mode"
    )
    connections_active = _g(
        "haplane_gate_connections_active", "Open client connections", "listener", "mode"
    )
    connections_rejected = _c(
        "haplane_gate_connections_rejected_total",
        "L4 client connections closed at once: no UP upstream in the active pool",
        "listener",
    )
    requests = _c(
        "haplane_gate_requests_total",
        "L7 responses sent to clients, by status code (including the gate's own errors)",
        "listener", "code",
    )  # fmt: skip
    retries = _c(
        "haplane_gate_request_retries_total", "L7 requests re-sent to another upstream",
        "listener",
    )  # fmt: skip
    upstream_connections = _c(
        "haplane_gate_upstream_connections_total", "Connections opened to an upstream",
        "pool", "upstream",
    )  # fmt: skip
    upstream_active = _g(
        "haplane_gate_upstream_active",
        "Relayed connections (L4) plus outstanding requests (L7) of an upstream",
        "pool", "upstream",
    )  # fmt: skip
    upstream_requests = _c(
        "haplane_gate_upstream_requests_total", "L7 requests an upstream answered completely",
        "pool", "upstream",
    )  # fmt: skip
    upstream_state = _g(
        "haplane_gate_upstream_state",
        "1 for the upstream's current state (up, draining, down); a gate's upstreams are its "
        "regions' balancers, a balancer's its region's API replicas",
        "pool", "upstream", "state",
    )  # fmt: skip
    upstream_bytes = _c(
        "haplane_gate_upstream_bytes_total", "Bytes relayed, by direction",
        "pool", "upstream", "direction",
    )  # fmt: skip
    pool_active = _g(
        "haplane_gate_pool_active",
        "1 for the pool clients are sent to (a gate: the active region); none while refusing",
        "pool",
    )
    epoch = _g(
        "haplane_gate_epoch",
        "The epoch of the active-region record this gate follows (gates only; absent until "
        "one was read): it changes with every failover and switchover",
    )
    epoch_writable = _g(
        "haplane_gate_epoch_writable",
        "1 when the followed epoch is writable, 0 while it is fenced (from a switch until "
        "the old region's write grant has run out and the new region's fence key is set)",
    )
    certificate_expiry = CERTIFICATE_EXPIRY


class Replicator:
    """A replicator of a standby region (`https://LISTEN/metrics`; system:masters or
    system:monitoring). `region` is the region it writes into."""

    leader = _g("haplane_replication_leader", "1 while this replicator leads", "region")
    state = _g(
        "haplane_replication_state",
        "1 for the current state (Streaming, Resyncing, Disconnected, Idle, Following, "
        "Starting)",
        "region", "state",
    )  # fmt: skip
    applied = _g("haplane_replication_applied_revision", "Last source revision applied", "region")
    source = _g("haplane_replication_source_revision", "Newest source revision seen", "region")
    lag_seconds = _g(
        "haplane_replication_lag_seconds",
        "Now minus the newest heartbeat applied (wall clocks): the data a failover to this "
        "region would lose, in time",
        "region",
    )
    lag_revisions = _g(
        "haplane_replication_lag_revisions", "Source head minus applied revision", "region"
    )
    txns = _c("haplane_replication_txns_total", "Target transactions written", "region")
    revisions = _c(
        "haplane_replication_revisions_total", "Source revisions applied (with data)", "region"
    )
    resyncs = _c("haplane_replication_resyncs_total", "Full resyncs completed", "region")
    errors = _c("haplane_replication_errors_total", "Errors met (and retried)", "region")
    certificate_expiry = CERTIFICATE_EXPIRY


class Gitops:
    """A GitOps controller instance (`https://LISTEN/metrics`, anonymous: nothing secret)."""

    leader = _g("haplane_gitops_leader", "1 while this instance holds the controller Lease")
    syncs = _c(
        "haplane_gitops_target_syncs_total",
        "Syncs and drift checks of one target, by result (ok, failed, unreachable)",
        "result",
    )
    fetches = _c("haplane_gitops_fetches_total", "Fetches of a GitSource, by result", "result")
    sync_seconds = _c(
        "haplane_gitops_target_sync_seconds_total", "Time spent syncing and checking targets"
    )
    webhooks = _c("haplane_gitops_webhooks_total", "Webhook requests accepted")


class Drills:
    """Scheduled drills (STATE/metrics/drills.prom, for node_exporter's textfile collector;
    gauges: the history is bounded, so its counts are not counters)."""

    last_passed = _g(
        "haplane_drill_last_passed",
        "Whether the last scheduled run of the scenario passed (1) or failed (0)",
        "scenario",
    )
    last_run = _g(
        "haplane_drill_last_run_timestamp_seconds",
        "When the last scheduled run of the scenario started, in seconds since the Unix epoch "
        "(its age: time() minus this)",
        "scenario",
    )
    runs = _g(
        "haplane_drill_scheduled_runs", "Scheduled runs of the scenario kept in the history",
        "scenario",
    )  # fmt: skip
    failures = _g(
        "haplane_drill_scheduled_failures",
        "Failed scheduled runs of the scenario kept in the history",
        "scenario",
    )


class Backups:
    """Snapshots and logical backups (STATE/metrics/backups.prom, for node_exporter's textfile
    collector, written by the supervisor's schedules after each attempt; timestamps in
    seconds since the Unix epoch)."""

    snapshot_success = _g(
        "haplane_snapshot_last_success_timestamp_seconds",
        "When the newest snapshot of the cluster (a region, or global) was taken, scheduled "
        "or by hand",
        "scope",
    )
    snapshot_failure = _g(
        "haplane_snapshot_last_failure_timestamp_seconds",
        "When the schedule last failed to take the cluster's snapshot (0: never)",
        "scope",
    )
    snapshot_size = _g("haplane_snapshot_size_bytes", "Size of the newest snapshot", "scope")
    logical_success = _g(
        "haplane_logical_backup_last_success_timestamp_seconds",
        "When the newest scheduled logical backup was taken",
    )
    logical_failure = _g(
        "haplane_logical_backup_last_failure_timestamp_seconds",
        "When the schedule last failed to take a logical backup (0: never)",
    )


@dataclass(frozen=True)
class Component:
    job: str  # the Prometheus job `haplane export prometheus` scrapes it under
    title: str
    source: type

    @property
    def metrics(self) -> tuple[MetricDef, ...]:
        return tuple(v for v in vars(self.source).values() if isinstance(v, MetricDef))

    @property
    def about(self) -> str:
        return " ".join((self.source.__doc__ or "").split())


COMPONENTS = (
    Component("haplane-api", "API replicas", Api),
    Component("haplane-gate", "Gates and regional balancers", Gate),
    Component("haplane-replicator", "Replicators", Replicator),
    Component("haplane-gitops", "GitOps controllers", Gitops),
    Component("haplane-textfile", "Scheduled drills", Drills),
    Component("haplane-textfile", "Snapshots and logical backups", Backups),
)


def every_metric() -> Iterator[MetricDef]:
    """Each definition once (the certificate gauge is shared by three components)."""
    seen: set[str] = set()
    for component in COMPONENTS:
        for m in component.metrics:
            if m.name not in seen:
                seen.add(m.name)
                yield m


def by_name() -> dict[str, MetricDef]:
    """Every definition by every sample name it exposes (a histogram's three)."""
    return {s: m for m in every_metric() for s in m.series()}


def textfile(values: dict[MetricDef, dict[tuple[str, ...], float]]) -> str:
    """Gauges in Prometheus' text exposition format (node_exporter's textfile collector reads
    it): each metric's HELP and TYPE, then a sample per label values (in `labels` order)."""

    def quoted(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    lines = []
    for m, samples in values.items():
        lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.kind}"]
        for labels, value in sorted(samples.items()):
            inner = ",".join(f'{k}="{quoted(v)}"' for k, v in zip(m.labels, labels, strict=True))
            lines.append(f"{m.name}{{{inner}}} {value:.17g}" if inner else f"{m.name} {value:.17g}")
    return "\n".join(lines) + "\n"


def markdown() -> str:
    """The catalogue as the README shows it: one table per component."""
    out: list[str] = []
    for component in COMPONENTS:
        out += [f"**{component.title}** (job `{component.job}`). {component.about}", ""]
        out += ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
        for m in component.metrics:
            labels = ", ".join(f"`{label}`" for label in m.labels) or "none"
            meaning = m.help.replace("|", "\\|")
            out.append(f"| `{m.name}` | {m.kind} | {labels} | {meaning} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# ---- logs ---------------------------------------------------------------------------------


def iso_utc(ts: float) -> str:
    """`2026-12-06T11:43:29.321Z`: the `ts` of every log line (etcd's own format too)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: `ts` (this process's wall clock, UTC, milliseconds),
    `level`, `component`, then the message's fields. Most of haplane's messages are JSON
    objects already: they are merged in, and their own `ts`, `level` or `component` win;
    any other message is `msg`. A traceback goes in `exception`, so a line stays a line."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "ts": iso_utc(record.created),
            "level": record.levelname.lower(),
            "component": self.component,
        }
        fields = None
        if message.startswith("{"):
            with contextlib.suppress(ValueError):
                fields = json.loads(message)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["msg"] = message
        extra = getattr(record, "fields", None)  # `log.info(msg, extra={"fields": {...}})`
        if isinstance(extra, dict):
            line.update(extra)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def json_logging(component: str, handler: logging.Handler | None = None) -> None:
    """This process's logs as JSON lines (`JsonLogFormatter`) to `handler` (default: stderr):
    haplane's loggers from INFO, every other library's (asyncio, aiohttp) from WARNING."""
    import sys

    handler = handler or logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter(component))
    ours = logging.getLogger("haplane")
    for old in list(ours.handlers):
        ours.removeHandler(old)
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
