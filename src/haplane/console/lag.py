"""Replication lag over the last hour, as the console charts it: one series per replicating
pair, sampled each time the console gathers the platform's status.

Layer: console. Samples in (time, `ReplicationRow`s), series out; the only I/O is the
history's own file, when it is given one.

Where the numbers come from: each region's leading replicator reports its lag to the global
control etcd (`haplane status` shows the same row): seconds between the newest revision the
source had and the one the standby applied, measured while the source answered. A sample is
`None` (a gap in the line) while the row has no lag: no report, a replicator that cannot reach
its source, a report older than `STALE_AFTER` (nobody is measuring), or the active region
itself, which copies from no one.

What is kept: the console samples what it already gathers (every second while someone looks,
every 10 s otherwise) and keeps at most `window` seconds. With a file (the console's, under
its data dir) each sample is also appended to it as a JSON line, and a console that restarts
(a region-kill drill takes the one on the killed site) reads the last `window` seconds back:
the chart goes on, with a gap for the time it was down. The file is rewritten with what is
kept once it holds twice `MAX_SAMPLES` lines. A file that cannot be written costs the restart
its history, nothing else (tried again a minute later). One console writes one file: the
topology's global names are unique. Longer history, and an alert on the limit, are Prometheus' job
(`haplane_replication_lag_seconds`, `haplane export prometheus`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from haplane.local.status import ReplicationRow
from haplane.topology import Topology

WINDOW = 3600.0  # seconds the chart shows
STALE_AFTER = 15.0  # seconds: a report older than this measures nothing any more
MAX_SAMPLES = 4000  # at one per second, a little over the window
RETRY_AFTER = 60.0  # seconds before a file that could not be written is tried again
STOPPED = "Stopped"  # a pair whose region copies from elsewhere, or from no one, now

log = logging.getLogger("haplane.console")

Sample = tuple[float, dict[str, tuple[str, str, float | None]]]  # t, region -> source, state, lag


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
    """Samples of every region's lag, the last `window` seconds; with `file`, also kept there
    and read back from it (the samples of the `window` seconds before `now`)."""

    def __init__(
        self,
        topology: Topology,
        window: float = WINDOW,
        *,
        file: Path | None = None,
        now: float | None = None,
    ) -> None:
        self.window = window
        self._limits = limits(topology)
        self._samples: deque[Sample] = deque(maxlen=MAX_SAMPLES)
        self._file = file
        self._lines = 0  # lines in the file
        self._broken_until = 0.0  # a write failed: the file is left alone until then
        if file is not None and now is not None:
            self._load(file, now)

    def add(self, t: float, rows: Iterable[ReplicationRow]) -> None:
        """One sample at unix time `t`: every region's (source, state, lag). A clock that
        stepped back before the last sample: what was kept is dropped (the chart's time
        axis must not run backwards)."""
        sample = (t, {r.region: (r.source or "", r.state, lag_of(r)) for r in rows})
        if self._samples and t < self._samples[-1][0]:
            self._samples.clear()
        self._samples.append(sample)
        while self._samples and self._samples[0][0] < t - self.window:
            self._samples.popleft()
        if self._file is not None and time.monotonic() >= self._broken_until:
            self._keep(self._file, sample)

    def _load(self, file: Path, now: float) -> None:
        lines: list[str] = []
        try:
            with open(file, encoding="utf-8") as f:
                lines = f.readlines()
        except FileNotFoundError:
            pass  # a first start
        except OSError as exc:
            log.warning(json.dumps({"msg": "lag history not read", "error": str(exc)}))
        kept = (_parse(line) for line in lines)
        self._samples.extend(
            sorted(
                (s for s in kept if s is not None and now - self.window <= s[0] <= now),
                key=lambda s: s[0],
            )
        )
        if self._samples:  # the time this console was down: nobody measured (a gap)
            self._samples.append((now, {}))
        try:
            self._rewrite(file)  # only what is kept, and no torn last line
        except OSError as exc:
            self._failed(exc)

    def _keep(self, file: Path, sample: Sample) -> None:
        try:
            if self._lines >= 2 * MAX_SAMPLES:
                self._rewrite(file)
            else:
                with open(file, "a", encoding="utf-8") as f:
                    f.write(_line(sample))
                self._lines += 1
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        """A full disk, say: the chart goes on in memory, and the file is tried again (whole)
        after `RETRY_AFTER` seconds."""
        self._broken_until = time.monotonic() + RETRY_AFTER
        self._lines = 2 * MAX_SAMPLES  # the next try rewrites it with what is kept
        log.warning(json.dumps({"msg": "lag history not kept", "error": str(exc)}))

    def _rewrite(self, file: Path) -> None:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(file.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(_line(s) for s in self._samples)
        os.replace(tmp, file)
        self._lines = len(self._samples)

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


def _line(sample: Sample) -> str:
    t, regions = sample
    return json.dumps([t, {r: list(v) for r, v in regions.items()}], allow_nan=False) + "\n"


def _parse(line: str) -> Sample | None:
    """A line `_line` wrote; None for anything else (a torn last line, an edited file)."""
    try:
        t, regions = json.loads(line)
        out: dict[str, tuple[str, str, float | None]] = {}
        for region, (source, state, lag) in regions.items():
            if not (isinstance(region, str) and isinstance(source, str) and isinstance(state, str)):
                return None
            if lag is not None and (
                isinstance(lag, bool) or not isinstance(lag, int | float) or not math.isfinite(lag)
            ):
                return None  # (json reads NaN and Infinity, which `_line` refuses to write)
            out[region] = (source, state, None if lag is None else float(lag))
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            return None
        return float(t), out
    except (ValueError, TypeError, AttributeError):
        return None


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
