"""STATE/metrics/backups.prom: when each cluster's newest snapshot was taken (and its size),
when the newest scheduled logical backup was, and when their schedules last failed, for
node_exporter's textfile collector (as `drill_schedule` writes drills.prom). The alerts of
`haplane export prometheus` compare them: a failure newer than the newest success, or a
success older than three periods.

Layer: run (`haplane.local`). Reads the snapshot store and the backups directory; writes
STATE/metrics/backups.prom and STATE/metrics/backup-failures.json (the failure times, kept
across supervisor restarts), each by rename.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from haplane.telemetry import Backups as M
from haplane.telemetry import MetricDef, textfile
from haplane.topology import Topology

from .state_dir import StateDir

METRICS_FILE = "backups.prom"
FAILURES_FILE = "backup-failures.json"
LOGICAL = "logical"  # the failure key of the logical backups' schedule


def failures(state: StateDir) -> dict[str, float]:
    """Last failure time by what failed (`snapshot/<scope>`, `logical`); {} when unreadable."""
    with contextlib.suppress(OSError, ValueError):
        raw = json.loads((state.root / "metrics" / FAILURES_FILE).read_text())
        if isinstance(raw, dict):
            return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)}
    return {}


def record_failure(state: StateDir, what: str, when: float) -> None:
    known = failures(state)
    known[what] = when
    state.write_metrics_file(FAILURES_FILE, json.dumps(known, sort_keys=True) + "\n")


def clear_failure(state: StateDir, what: str) -> None:
    """A success: what failed before is behind it (and a cluster since removed from the
    topology, or a schedule turned off, leaves nothing behind to alert on)."""
    known = failures(state)
    if known.pop(what, None) is not None:
        state.write_metrics_file(FAILURES_FILE, json.dumps(known, sort_keys=True) + "\n")


def metrics_text(topology: Topology, state: StateDir) -> str:
    from .backup_schedule import backups_root, scheduled
    from .snapshots import snapshot_store

    failed = failures(state)
    values: dict[MetricDef, dict[tuple[str, ...], float]] = {
        M.snapshot_success: {},
        M.snapshot_failure: {},
        M.snapshot_size: {},
    }
    metas = snapshot_store(state).list()
    for cluster in topology.etcd_clusters():
        scope = cluster.scope
        mine = [m for m in metas if m.scope == scope]
        if mine:
            newest = max(mine, key=lambda m: m.taken.timestamp())
            values[M.snapshot_success][(scope,)] = newest.taken.timestamp()
            values[M.snapshot_size][(scope,)] = float(newest.size)
        values[M.snapshot_failure][(scope,)] = failed.get(f"snapshot/{scope}", 0.0)
    if topology.spec.global_.backups.logical.enabled:
        kept = scheduled(backups_root(state))
        values[M.logical_success] = {(): kept[-1][0]} if kept else {}
        values[M.logical_failure] = {(): failed.get(LOGICAL, 0.0)}
    return textfile(values)


def write_metrics(topology: Topology, state: StateDir) -> Path:
    return state.write_metrics_file(METRICS_FILE, metrics_text(topology, state))
