"""Replication lag over the last hour, as the console charts it: one series per replicating
pair, sampled each time the console gathers the platform's status.

Layer: console. Pure: samples in (time, `ReplicationRow`s), series out; no I/O.

Where the numbers come from: each region's leading replicator reports its lag to the global
control etcd (`haplane status` shows the same row): seconds between the newest revision the
source had and the one the standby applied, measured while the source answered. A sample is
`None` (a gap in the line) while the row has no lag: no report, a replicator that cannot reach
its source, a report older than `STALE_AFTER` (nobody is measuring), or the active region
itself, which copies from no one.

Why in memory: the console samples what it already gathers (every second while someone looks,
every 10 s otherwise) and keeps at most `window` seconds; a console that restarts starts an
empty chart. Longer history, and an alert on the limit, are Prometheus' job
(`haplane_replication_lag_seconds`, `haplane export prometheus`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from haplane.local.status import ReplicationRow
from haplane.topology import Topology

WINDOW = 3600.0  # seconds the chart shows
STALE_AFTER = 15.0  # seconds: a report older than this measures nothing any more
MAX_SAMPLES = 4000  # at one per second, a little over the window
STOPPED = "Stopped"  # a pair whose region copies from elsewhere, or from no one, now


@dataclass(frozen=True)
class Series:
    """One pair's lag: `region` (the standby that applies) copying from `source`."""

    region: str
    source: str
    points: list[tuple[float, float | None]]  # (unix time, lag seconds or None), oldest first
    # the stream's state: the row's at the pair's last sample (Streaming, Resyncing,
    # Disconnected, ...), or STOPPED once the region copies from another source or from none
    # (a failover reversed or moved the stream)
    state: str
    limit: float | None  # the pair's maxLagMs, in seconds (None: no limit set)

    @property
    def last(self) -> float | None:
        return self.points[-1][1] if self.points else None

    @property
    def peak(self) -> float | None:
        values = [v for _, v in self.points if v is not None]
        return max(values) if values else None


def lag_of(row: ReplicationRow) -> float | None:
    """The row's lag in seconds, None when nobody measured it (or it is not a finite number:
    the report is read from etcd as written)."""
    if row.source is None or row.lag_seconds is None:
        return None
    if row.report_age is not None and row.report_age > STALE_AFTER:
        return None
    value = row.lag_seconds
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return max(0.0, float(value))


def limits(topology: Topology) -> dict[frozenset[str], float]:
    """Each pair's maxLagMs in seconds, by its two regions (pairs copy either way)."""
    return {
        frozenset((p.from_, p.to)): p.max_lag_ms / 1000.0
        for p in topology.spec.global_.replication
        if p.max_lag_ms is not None
    }


class LagHistory:
    """Samples of every region's lag, the last `window` seconds."""

    def __init__(self, topology: Topology, window: float = WINDOW) -> None:
        self.window = window
        self._limits = limits(topology)
        self._samples: deque[tuple[float, dict[str, tuple[str, str, float | None]]]] = deque(
            maxlen=MAX_SAMPLES
        )

    def add(self, t: float, rows: Iterable[ReplicationRow]) -> None:
        """One sample at unix time `t`: every region's (source, state, lag)."""
        self._samples.append((t, {r.region: (r.source or "", r.state, lag_of(r)) for r in rows}))
        while self._samples and self._samples[0][0] < t - self.window:
            self._samples.popleft()

    def __len__(self) -> int:
        return len(self._samples)

    def series(self) -> list[Series]:
        """A series per (region, source) pair that copied at least once in the window, by
        region then source: after a failover that reversed a stream, or moved a third
        region's source, each pair keeps its own samples, peak and limit. A sample where the
        region copied from another source, or from none, is a gap in the pair's line; a pair
        that is not the region's stream at its last sample is STOPPED (not the state it was
        last seen in: a stream that broke when its source died and was then reversed by the
        failover is no longer Disconnected). A sample without the region (a failed gather)
        changes no state: nobody knows."""
        pairs: dict[tuple[str, str], str] = {}  # -> the state at its last sample
        for _, sample in self._samples:
            for region, (source, state, _) in sample.items():
                if source:
                    pairs[(region, source)] = state
        out = []
        for region, source in sorted(pairs):
            points: list[tuple[float, float | None]] = []
            state = pairs[(region, source)]
            now = None  # the region's (source, state, lag) at its last sample
            for t, s in self._samples:
                entry = s.get(region)
                now = entry if entry is not None else now
                if entry is not None and entry[0] == source:
                    points.append((t, entry[2]))
                    state = entry[1]
                else:
                    points.append((t, None))
            if now is not None and now[0] != source:
                state = STOPPED
            limit = self._limits.get(frozenset((region, source)))
            out.append(Series(region, source, points, state, limit))
        return out


def downsample(
    points: list[tuple[float, float | None]], buckets: int
) -> list[tuple[float, float | None]]:
    """At most `buckets` points: each bucket of consecutive samples becomes its highest lag
    (a spike must not vanish from the chart), None when none of it had a lag."""
    if len(points) <= buckets:
        return points
    out: list[tuple[float, float | None]] = []
    size = len(points) / buckets
    for i in range(buckets):
        chunk = points[int(i * size) : int((i + 1) * size)] or [points[-1]]
        values = [v for _, v in chunk if v is not None]
        out.append((chunk[-1][0], max(values) if values else None))
    return out
