"""Physical snapshots (haplane.store.snapshot) with real etcd: taken from a follower of a
live three-member cluster, checked, restored with etcdctl into a fresh three-member cluster
under a new cluster token, and compared with the source at the snapshot's revision (etcd's
HashKV of the keyspace, and every key and value); every bad input a restore must refuse
before it changes anything; retention."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import etcd_member_name
from haplane.store.snapshot import (
    DirectoryStore,
    RestoreMember,
    SnapshotError,
    SnapshotMeta,
    restore_data_dirs,
    retained,
    take,
    verify,
)

TOPOLOGY = "topo-test-1"


@pytest_asyncio.fixture(scope="module")
async def source(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("snap-src"), size=3, scope="eu-west")
    await cluster.start()
    try:
        async with cluster.client(timeout=2.0) as c:
            for i in range(300):
                await c.put(f"/registry/configmaps/ns/cm-{i:04d}".encode(), b"v" * 100)
        yield cluster
    finally:
        await cluster.stop()


@pytest_asyncio.fixture(scope="module")
async def snapshot(
    source: EtcdCluster, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DirectoryStore, SnapshotMeta]:
    store = DirectoryStore(tmp_path_factory.mktemp("snaps"))
    async with source.client(timeout=2.0) as c:
        meta = await take(c, store, scope="eu-west", topology=TOPOLOGY, epoch=3)
    return store, meta


async def test_a_snapshot_is_taken_from_a_follower_and_described(
    source: EtcdCluster, snapshot: tuple[DirectoryStore, SnapshotMeta]
) -> None:
    store, meta = snapshot
    async with source.client(timeout=2.0) as c:
        statuses = {ep: await c.status(ep) for ep in source.endpoints}
        cluster = await c.cluster_id()
    assert not statuses[meta.member].is_leader
    # bolt keys: every revision of every key, and etcd's own bookkeeping
    assert meta.keys >= 300 and meta.revision >= 301
    assert meta.cluster_id == f"{cluster:016x}" and meta.epoch == 3
    assert meta.etcd_version.startswith("3.") and meta.size == store.path(meta.id).stat().st_size
    assert store.list() == [meta] and store.list("global") == []
    assert (store.path(meta.id).stat().st_mode & 0o777) == 0o600
    assert verify(store, meta.id, topology=TOPOLOGY, scope="eu-west") == meta


async def test_restore_into_a_fresh_cluster_matches_the_source_at_the_snapshot_revision(
    source: EtcdCluster, snapshot: tuple[DirectoryStore, SnapshotMeta], tmp_path: Path
) -> None:
    """The restore drill's comparison: written after the snapshot is absent, everything
    before it present, etcd's hash of the keyspace at that revision equal; the restored
    cluster is a new cluster (another id)."""
    store, meta = snapshot
    async with source.client(timeout=2.0) as c:
        await c.put(b"/registry/configmaps/ns/after", b"later")
        src_hash = await c.hash_kv(source.endpoints[0], meta.revision)
        src_id = await c.cluster_id()
        src_keys, _ = await c.range(b"/registry/", b"/registry0", revision=meta.revision)
    target = EtcdCluster(tmp_path / "restored", size=3, scope="eu-west")
    restore_data_dirs(
        store.path(meta.id),
        [
            RestoreMember(
                etcd_member_name(m),
                target.addresses[m.qualified_name].peer_url,
                target.root / "data" / m.name,
            )
            for m in target.view.members
        ],
        token="haplane-test-restored-1",
    )
    await target.start()
    try:
        async with target.client(timeout=2.0) as c:
            assert await c.cluster_id() != src_id
            keys, _ = await c.range(b"/registry/", b"/registry0")
            assert [(k.key, k.value) for k in keys] == [(k.key, k.value) for k in src_keys]
            assert await c.get(b"/registry/configmaps/ns/after") is None
            for ep in target.endpoints:
                restored = await c.hash_kv(ep, meta.revision)
                assert restored.hash == src_hash.hash, ep
            await c.put(b"/registry/configmaps/ns/new", b"writable")  # a working cluster
    finally:
        await target.stop()


def _copy(store: DirectoryStore, meta: SnapshotMeta, root: Path) -> DirectoryStore:
    other = DirectoryStore(root)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(store.path(meta.id), other.path(meta.id))
    (root / f"{meta.id}.json").write_text(meta.to_json())
    return other


def test_a_flipped_byte_is_refused(
    snapshot: tuple[DirectoryStore, SnapshotMeta], tmp_path: Path
) -> None:
    store, meta = snapshot
    bad = _copy(store, meta, tmp_path)
    data = bytearray(bad.path(meta.id).read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.path(meta.id).write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="corrupted"):
        verify(bad, meta.id)


def test_a_truncated_file_is_refused_even_with_a_matching_description(
    snapshot: tuple[DirectoryStore, SnapshotMeta], tmp_path: Path
) -> None:
    """Truncated, and described to match (size and sha256 of what is left): etcd's own
    trailing hash still finds it."""
    import hashlib

    store, meta = snapshot
    bad = _copy(store, meta, tmp_path)
    cut = bad.path(meta.id).read_bytes()[: meta.size // 2]
    bad.path(meta.id).write_bytes(cut)
    with pytest.raises(SnapshotError, match="truncated"):
        verify(bad, meta.id)
    forged = SnapshotMeta(
        **{
            **json.loads(meta.to_json()),
            "size": len(cut),
            "sha256": hashlib.sha256(cut).hexdigest(),
        }
    )
    (tmp_path / f"{meta.id}.json").write_text(forged.to_json())
    with pytest.raises(SnapshotError, match="etcd's own sha256"):
        verify(bad, meta.id)


def test_another_topology_another_scope_a_newer_format_and_a_missing_file_are_refused(
    snapshot: tuple[DirectoryStore, SnapshotMeta], tmp_path: Path
) -> None:
    store, meta = snapshot
    with pytest.raises(SnapshotError, match="another topology"):
        verify(store, meta.id, topology="someone-else")
    with pytest.raises(SnapshotError, match="only from its own snapshots"):
        verify(store, meta.id, scope="eu-central")
    newer = _copy(store, meta, tmp_path / "newer")
    raw = json.loads(meta.to_json())
    (tmp_path / "newer" / f"{meta.id}.json").write_text(json.dumps({**raw, "format": 99}))
    with pytest.raises(SnapshotError, match="newer than this haplane reads"):
        verify(newer, meta.id)
    gone = _copy(store, meta, tmp_path / "gone")
    gone.path(meta.id).unlink()
    with pytest.raises(SnapshotError, match="is missing"):
        verify(gone, meta.id)
    with pytest.raises(SnapshotError, match="no snapshot"):
        verify(store, "eu-west-nothing")
    with pytest.raises(SnapshotError, match="invalid snapshot id"):
        verify(store, "../etc/passwd")


def test_restore_leaves_nothing_behind_when_a_member_fails(
    snapshot: tuple[DirectoryStore, SnapshotMeta], tmp_path: Path
) -> None:
    store, meta = snapshot
    taken = tmp_path / "b"
    taken.mkdir()  # the second member's dir exists: refused after the first was made
    members = [
        RestoreMember("a", "http://127.0.0.1:1", tmp_path / "a"),
        RestoreMember("b", "http://127.0.0.1:2", taken),
    ]
    with pytest.raises(SnapshotError, match="fresh data dir"):
        restore_data_dirs(store.path(meta.id), members, "t")
    assert not (tmp_path / "a").exists()


def _meta(at: datetime, n: int) -> SnapshotMeta:
    return SnapshotMeta(
        id=f"s{n}",
        scope="r",
        topology="t",
        cluster_id="0",
        member="m",
        revision=n,
        keys=0,
        epoch=None,
        taken_at=at.isoformat(),
        seconds=0.0,
        size=0,
        sha256="",
        etcd_version="",
        haplane_version="",
    )


def test_retention_keeps_the_newest_of_each_hour_and_day() -> None:
    now = datetime(2026, 12, 6, 12, 30, tzinfo=UTC)
    metas = [_meta(now - timedelta(minutes=20 * i), i) for i in range(9 * 24)]  # 3 days
    kept = retained(metas, hourly=4, daily=3)
    by_id = {m.id: m for m in metas}
    hours = sorted({by_id[i].taken.strftime("%d %H") for i in kept})
    assert "s0" in kept
    # the newest of the last 4 hours, and of 3 days (today's newest is s0 already)
    assert len(kept) == 4 + 2, sorted(kept)
    assert hours[-4:] == ["06 09", "06 10", "06 11", "06 12"]
    assert retained([], 3, 3) == set()


def test_the_schedule_is_due_a_period_after_the_newest_snapshot() -> None:
    from haplane.local.snapshots import next_due

    due = next_due({"a": 1000.0, "b": None}, every=3600.0, now=5000.0, started=4990.0)
    assert due == {"a": 4600.0, "b": 8590.0}  # b: a period after the start, not at once
    assert next_due({"b": None}, every=10.0, now=9000.0, started=1000.0) == {"b": 9000.0}


async def test_a_restore_is_refused_for_the_active_region_a_later_epoch_and_the_sync_standby(
    tmp_path: Path, snapshot: tuple[DirectoryStore, SnapshotMeta]
) -> None:
    """What `haplane restore region` checks in the global control etcd before it changes
    anything, and again once the region's replicators are stopped."""
    from dataclasses import replace

    from haplane.local.snapshots import RestoreRefused, _check_not_needed
    from haplane.store import GlobalState, SyncRecord

    _, meta = snapshot
    control = EtcdCluster(tmp_path / "control", size=1, scope="global")
    await control.start()
    try:
        async with control.client(timeout=2.0) as c:
            state = GlobalState(c)
            await state.initialize("eu-west", by="t", reason="t", fresh=True)
            record, _ = await _check_not_needed(c, "eu-central", replace(meta, epoch=1))
            assert record.region == "eu-west"
            with pytest.raises(RestoreRefused, match="is the active region"):
                await _check_not_needed(c, "eu-west", meta)
            with pytest.raises(RestoreRefused, match="another incarnation"):
                await _check_not_needed(c, "eu-central", replace(meta, epoch=record.epoch + 1))
            sync = SyncRecord.synchronous(record.epoch, "eu-west", "eu-central", by="t", reason="t")
            assert (await state.sync.swap(None, sync))[0]
            with pytest.raises(RestoreRefused, match="synchronous standby"):
                await _check_not_needed(c, "eu-central", replace(meta, epoch=1))
    finally:
        await control.stop()


def test_the_restored_global_record_names_the_region_the_fence_keys_show_active_last():
    from haplane.local.restore_global import choose_region
    from haplane.store.fence_key import FenceValue

    a, f, s = FenceValue.active, FenceValue.frozen, FenceValue.standby
    # a failover after the snapshot: the keys, not the snapshot's record, say where data is
    assert choose_region({"west": f("west", 3), "central": a("central", 4)}, "west") == (
        "central",
        4,
    )
    # mid-switchover: the old region frozen at the top epoch wrote nothing since
    assert choose_region({"west": f("west", 4), "central": s("west", 4)}, "central") == (
        "west",
        4,
    )
    # only standbys answer at the top epoch (the active one's key lost): their source
    assert choose_region({"west": None, "central": s("west", 5), "x": s("west", 2)}, "x") == (
        "west",
        5,
    )
    # an older active key loses to a newer epoch
    assert choose_region({"west": a("west", 2), "central": s("central", 3)}, "west") == (
        "central",
        3,
    )
    assert choose_region({"west": None}, "west") == ("west", 0)
