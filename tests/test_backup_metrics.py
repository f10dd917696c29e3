"""STATE/metrics/backups.prom: the newest snapshot per cluster (scheduled or by hand) and its
size, the newest scheduled logical backup, and the schedules' last failures (kept across a
supervisor's restart), in a format promtool and Prometheus' parser accept."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from haplane.local.backup_metrics import metrics_text, record_failure, write_metrics
from haplane.local.snapshots import snapshot_store
from haplane.local.state_dir import StateDir
from haplane.store.snapshot import SnapshotMeta
from haplane.topology import load_text
from haplane.topology.loader import example_text


def meta(scope: str, taken: str, size: int, sid: str) -> SnapshotMeta:
    return SnapshotMeta(
        id=sid, scope=scope, topology="t", cluster_id="1", member="m", revision=1, keys=1,
        epoch=1, taken_at=taken, seconds=0.1, size=size, sha256="0" * 64,
        etcd_version="3.4.23", haplane_version="0.1.0",
    )  # fmt: skip


def samples(text: str) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("scope", "")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_newest_success_and_last_failure(tmp_path: Path):
    state = StateDir(tmp_path)
    topology = load_text(example_text("two-regions"))
    store = snapshot_store(state)
    for scope, taken, size, sid in (
        ("eu-west", "2026-12-06T10:00:00+00:00", 100, "eu-west-a"),
        ("eu-west", "2026-12-06T11:00:00+00:00", 250, "eu-west-b"),  # the newest
        ("global", "2026-12-06T09:00:00+00:00", 10, "global-a"),
    ):
        (store.root / f"{sid}.json").write_text(meta(scope, taken, size, sid).to_json())
    record_failure(state, "snapshot/eu-central", 1796555000.0)
    text = metrics_text(topology, state)
    got = samples(text)
    newest = 1796554800.0  # 2026-12-06T11:00:00Z
    assert got[("haplane_snapshot_last_success_timestamp_seconds", "eu-west")] == newest
    assert got[("haplane_snapshot_size_bytes", "eu-west")] == 250
    assert ("haplane_snapshot_last_success_timestamp_seconds", "eu-central") not in got
    assert got[("haplane_snapshot_last_failure_timestamp_seconds", "eu-central")] == 1796555000
    assert got[("haplane_snapshot_last_failure_timestamp_seconds", "eu-west")] == 0  # never
    # a success clears it (and a cluster gone from the topology leaves nothing behind)
    from haplane.local.backup_metrics import clear_failure

    clear_failure(state, "snapshot/eu-central")
    got = samples(metrics_text(topology, state))
    assert got[("haplane_snapshot_last_failure_timestamp_seconds", "eu-central")] == 0
    # the logical backups' (on by default): a failure, no backup yet
    record_failure(state, "logical", 5.0)
    got = samples(metrics_text(topology, state))
    assert got[("haplane_logical_backup_last_failure_timestamp_seconds", "")] == 5.0
    assert ("haplane_logical_backup_last_success_timestamp_seconds", "") not in got
    # kept across restarts (a file), written by rename, and lint-clean
    path = write_metrics(topology, state)
    assert path == tmp_path / "metrics" / "backups.prom"
    lint = subprocess.run(["promtool", "check", "metrics"], input=path.read_text(),
                          capture_output=True, text=True)  # fmt: skip
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
    # without logical backups in the topology, none of their series
    doc = yaml.safe_load(example_text("two-regions"))
    doc["spec"]["global"]["backups"] = {"logical": {"enabled": False}}
    off = metrics_text(load_text(yaml.safe_dump(doc)), state)
    assert "haplane_logical_backup_last_failure_timestamp_seconds " not in off
