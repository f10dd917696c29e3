"""Synchronous replication (`haplane.api.sync_ack`), with real processes: an API replica of the
active region "src" acknowledges a write only once the standby "dst"'s replicator (a process:
SIGSTOP pauses it) applied it, or once the global record says `sync: none`.

Every acknowledged write is checked in dst's etcd directly: confirmed means there. A write
acknowledged while the replicator is paused cannot be there: the record must say `none` when
read right after the acknowledgement (that it was written *before* it is what the control-etcd
test proves: with the record unwritable, nothing unconfirmed is acknowledged)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from haplane.api.sync_ack import SyncAck, SyncConfig, Unconfirmed
from haplane.local.api_replica import ApiReplica, free_port
from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import (
    APPLIED_KEY,
    FENCE_KEY,
    AppliedRecord,
    EtcdClient,
    FenceValue,
    GlobalState,
    Op,
    SyncRecord,
    SyncState,
)
from tests.topology_helpers import fenced_replica_args

pytestmark = pytest.mark.timeout(240)

TIMEOUT_MS = 300


@pytest_asyncio.fixture(scope="module")
async def regions(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[EtcdCluster, EtcdCluster]]:
    src = EtcdCluster(tmp_path_factory.mktemp("src"), scope="src", size=1)
    dst = EtcdCluster(tmp_path_factory.mktemp("dst"), scope="dst", size=1)
    try:
        await asyncio.gather(src.start(), dst.start())
        yield src, dst
    finally:
        await asyncio.gather(src.stop(), dst.stop())


@dataclass
class Setup:
    api: ApiReplica
    replicator: subprocess.Popen[bytes]
    src: EtcdClient
    dst: EtcdClient
    sync: SyncState

    def pause(self) -> None:
        os.kill(self.replicator.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.replicator.pid, signal.SIGCONT)

    def create(self, name: str, timeout: float = 10.0) -> int:
        code, _, _ = self.api.request(
            "POST",
            "/api/v1/namespaces/shop/configmaps",
            {"metadata": {"name": name}, "data": {"k": name}},
            timeout=timeout,
        )
        return code

    async def in_standby(self, name: str) -> bool:
        return await self.dst.get(f"/registry/configmaps/shop/{name}".encode()) is not None

    async def wait_record(self, check, timeout: float = 20.0):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            rec = await self.sync.read()
            if check(rec):
                return rec
            if time.monotonic() > deadline:
                raise AssertionError(f"sync record never as expected: {rec}")
            await asyncio.sleep(0.05)


def _popen(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=out)


@contextlib.asynccontextmanager
async def sync_setup(
    tmp_path: Path,
    regions: tuple[EtcdCluster, EtcdCluster],
    control: EtcdCluster,
    prefix: bytes,
    *,
    strict: bool = False,
) -> AsyncIterator[Setup]:
    src_c, dst_c = regions
    src, dst, ctl = src_c.client(2.0), dst_c.client(2.0), control.client(2.0)
    for c in (src, dst):
        await c.txn([], [Op("delete", b"\0", range_end=b"\0")])
    await GlobalState(ctl, prefix=prefix).initialize("src", by="t", reason="t", fresh=True)
    await src.put(FENCE_KEY, FenceValue.active("src", 1).encode())
    await dst.put(FENCE_KEY, FenceValue.standby("src", 1).encode())
    argv = [
        sys.executable, "-m", "haplane.replication",
        "--region", "dst", "--name", "r1", "--listen", f"127.0.0.1:{free_port()}",
        "--etcd", ",".join(dst_c.endpoints), "--source", f"src={','.join(src_c.endpoints)}",
        "--lease-ttl", "1",
    ]  # fmt: skip
    rep = _popen(argv, tmp_path / "replicator.log")
    args = fenced_replica_args(control.endpoints, prefix, FENCE_KEY)
    args += ["--sync-standby", f"dst={','.join(dst_c.endpoints)}"]
    args += ["--sync-timeout-ms", str(TIMEOUT_MS)] + (["--sync-strict"] if strict else [])
    api = ApiReplica(tmp_path, "api-src", src_c.endpoints, region="src", extra_args=args)
    setup = Setup(api, rep, src, dst, SyncState(ctl, prefix))
    try:
        await api.start()
        await setup.wait_record(lambda r: r is not None and r.standby == "dst")
        code, _, _ = api.request("POST", "/api/v1/namespaces", {"metadata": {"name": "shop"}})
        assert code == 201
        yield setup
    finally:
        with contextlib.suppress(ProcessLookupError):
            setup.resume()
        rep.terminate()
        await asyncio.to_thread(rep.wait, 10)
        await api.stop()
        await asyncio.gather(src.close(), dst.close(), ctl.close())


async def test_non_strict_degrades_to_none_before_acknowledging_and_resumes_sync(
    tmp_path: Path,
    regions: tuple[EtcdCluster, EtcdCluster],
    etcd_cluster: EtcdCluster,
    key_prefix: bytes,
) -> None:
    async with sync_setup(tmp_path, regions, etcd_cluster, key_prefix) as s:
        for i in range(5):  # synchronous: each acknowledged write is in the standby already
            assert await asyncio.to_thread(s.create, f"sync-{i}") == 201
            assert await s.in_standby(f"sync-{i}")
        s.pause()
        t0 = time.monotonic()
        assert await asyncio.to_thread(s.create, "first-unconfirmed") == 201
        waited = time.monotonic() - t0
        record = await s.sync.read()  # read right after the acknowledgement
        assert record is not None and record.standby is None and record.pending is None, record
        assert "did not confirm" in record.reason
        assert not await s.in_standby("first-unconfirmed")  # it really was unconfirmed
        assert waited >= TIMEOUT_MS / 1000 * 0.9  # it waited for the standby first
        for i in range(5):  # degraded: writes go on
            assert await asyncio.to_thread(s.create, f"degraded-{i}") == 201
        assert not await s.in_standby("degraded-4")
        # back to synchronous: through `pending: dst` first (the keeper's three steps)
        seen: list[SyncRecord | None] = []

        async def follow() -> None:
            async for batch in s.sync.client.watch(s.sync.key):
                seen.extend(SyncRecord.from_kv(ev.kv) for ev in batch.events)

        watcher = asyncio.create_task(follow())
        await asyncio.sleep(0.2)  # the watch is established
        s.resume()
        await s.wait_record(lambda r: r is not None and r.standby == "dst")
        # the watch delivers that record too, maybe after the read that saw it
        for _ in range(50):
            if any(r is not None and r.standby == "dst" for r in seen):
                break
            await asyncio.sleep(0.1)
        watcher.cancel()
        states = [(r.pending, r.standby) for r in seen if r is not None]
        assert states[-2:] == [("dst", None), (None, "dst")], states
        for i in range(3):
            assert await asyncio.to_thread(s.create, f"again-{i}") == 201
            assert await s.in_standby(f"again-{i}")
        assert await s.in_standby("degraded-4")  # nothing acknowledged under none was skipped
        status, _, body = s.api.request("GET", "/fencez")
        assert status == 200 and body["sync"]["record"]["standby"] == "dst"
        _, _, metrics = s.api.request("GET", "/metrics")
        assert 'haplane_sync_acknowledgements_total{outcome="degraded"}' in metrics
        assert 'haplane_sync_changes_total{to="none"} 1.0' in metrics


async def test_strict_answers_504_while_no_standby_confirms(
    tmp_path: Path,
    regions: tuple[EtcdCluster, EtcdCluster],
    etcd_cluster: EtcdCluster,
    key_prefix: bytes,
) -> None:
    async with sync_setup(tmp_path, regions, etcd_cluster, key_prefix, strict=True) as s:
        assert await asyncio.to_thread(s.create, "before") == 201
        s.pause()
        codes = [await asyncio.to_thread(s.create, f"paused-{i}") for i in range(4)]
        assert codes == [504] * 4
        record = await s.sync.read()
        assert record is not None and record.standby == "dst"  # never degraded
        # the 504'd write retried unchanged (a no-op update): still not confirmed, still 504
        path = "/api/v1/namespaces/shop/configmaps/paused-0"
        code, _, obj = await asyncio.to_thread(s.api.request, "GET", path)
        assert code == 200  # committed locally: visible here, which proves nothing elsewhere
        code, _, _ = await asyncio.to_thread(s.api.request, "PUT", path, obj)
        assert code == 504
        code, _, again = await asyncio.to_thread(s.api.request, "GET", path)
        rv = again["metadata"]["resourceVersion"]
        assert rv == obj["metadata"]["resourceVersion"]  # it was a no-op: nothing written
        # retried as a create: not 409 AlreadyExists (which clients take for success) either
        assert await asyncio.to_thread(s.create, "paused-1") == 504
        s.resume()
        deadline = time.monotonic() + 20
        while await asyncio.to_thread(s.create, f"after-{int(time.monotonic() * 1000)}") != 201:
            assert time.monotonic() < deadline, "writes never resumed"
        for i in range(4):  # committed locally, and replicated once the standby resumed
            assert await s.in_standby(f"paused-{i}")


async def test_control_etcd_quorum_lost_acknowledges_nothing_unconfirmed(
    tmp_path: Path,
    regions: tuple[EtcdCluster, EtcdCluster],
    disposable_cluster: EtcdCluster,
) -> None:
    """The standby paused and the control etcd's quorum killed at once: no write may be
    acknowledged (none confirmed it, and `none` cannot be recorded), whatever the fence does."""
    prefix = b"/haplane/global/"
    async with sync_setup(tmp_path, regions, disposable_cluster, prefix) as s:
        assert await asyncio.to_thread(s.create, "before") == 201
        names = disposable_cluster.names
        s.pause()
        await asyncio.gather(*(disposable_cluster.processes[n].fault("kill") for n in names[:2]))
        codes = {}
        t_end = time.monotonic() + 2.0
        i = 0
        while time.monotonic() < t_end:
            codes[f"dark-{i}"] = await asyncio.to_thread(s.create, f"dark-{i}")
            i += 1
        acked = [n for n, c in codes.items() if c in (200, 201)]
        assert acked == [], codes
        assert set(codes.values()) <= {503, 504}, codes
        assert 504 in codes.values()  # committed locally while permitted: outcome unknown
        s.resume()
        await asyncio.gather(*(disposable_cluster.processes[n].spawn() for n in names[:2]))


# ---- the acknowledgement rules, in process: SyncAck against real etcd, the standby's applied
# record written by the test (what its replicator would write) ---------------------------------


@contextlib.asynccontextmanager
async def sync_ack(
    regions: tuple[EtcdCluster, EtcdCluster], control: EtcdCluster, prefix: bytes, strict: bool
) -> AsyncIterator[tuple[SyncAck, EtcdClient, SyncState]]:
    src_c, dst_c = regions
    src, dst, ctl = src_c.client(2.0), dst_c.client(2.0), control.client(2.0)
    cluster = await src.cluster_id()
    ack = SyncAck(
        "src",
        SyncConfig({"dst": dst_c.endpoints}, timeout=0.2, strict=strict),
        ctl,
        prefix,
        cluster_id=lambda: cluster,
        name="src/test",
    )
    ack.start()
    try:
        yield ack, dst, SyncState(ctl, prefix)
    finally:
        await ack.stop()
        await asyncio.gather(src.close(), dst.close(), ctl.close())


async def applied(dst: EtcdClient, ack: SyncAck, revision: int, epoch: int = 1) -> None:
    """Put the standby's applied record as its replicator would, and wait until `ack` saw it."""
    record = AppliedRecord("src", ack.cluster_id(), epoch, revision)
    await dst.put(APPLIED_KEY, record.to_json())
    for _ in range(100):
        seen = ack.applied.get("dst")
        if seen is not None and seen.revision == revision and seen.epoch == epoch:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the applied record never arrived")


async def record_seen(ack: SyncAck, check) -> None:  # type: ignore[no-untyped-def]
    for _ in range(100):
        if check(ack.record):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"record never as expected: {ack.record}")


async def test_strict_acknowledges_only_while_the_standby_is_recorded_synchronous(
    regions: tuple[EtcdCluster, EtcdCluster], etcd_cluster: EtcdCluster, key_prefix: bytes
) -> None:
    async with sync_ack(regions, etcd_cluster, key_prefix, strict=True) as (ack, dst, state):
        await applied(dst, ack, 100)
        # no record, then `none`: the standby has revision 50, yet strict refuses
        with pytest.raises(Unconfirmed, match="no standby is synchronous"):
            await ack.acknowledge(50, 1, time.monotonic())
        ok, none = await state.swap(None, SyncRecord.none(1, "src", by="t", reason="t"))
        assert ok
        await record_seen(ack, lambda r: r is not None and r.degraded)
        with pytest.raises(Unconfirmed, match="no standby is synchronous"):
            await ack.acknowledge(50, 1, time.monotonic())
        ok, _ = await state.swap(none, SyncRecord.synchronous(1, "src", "dst", by="t", reason="t"))
        assert ok
        await record_seen(ack, lambda r: r is not None and r.standby == "dst")
        await ack.acknowledge(50, 1, time.monotonic())  # confirmed
        with pytest.raises(Unconfirmed, match="did not confirm"):
            await ack.acknowledge(150, 1, time.monotonic())
        record = await state.read()
        assert record is not None and record.standby == "dst"  # strict never degrades
        assert ack._waiters == set()  # a timed-out wait leaves nothing behind


async def test_non_strict_degrades_before_acknowledging_and_epochs_do_not_mix(
    regions: tuple[EtcdCluster, EtcdCluster], etcd_cluster: EtcdCluster, key_prefix: bytes
) -> None:
    async with sync_ack(regions, etcd_cluster, key_prefix, strict=False) as (ack, dst, state):
        await applied(dst, ack, 100)
        ok, sync = await state.swap(
            None, SyncRecord.synchronous(1, "src", "dst", by="t", reason="t")
        )
        assert ok and sync is not None
        await record_seen(ack, lambda r: r is not None and r.standby == "dst")
        await ack.acknowledge(100, 1, time.monotonic())
        assert (await state.read()) == sync  # confirmed: nothing written
        # the standby now follows epoch 2 (of this same cluster): that confirms nothing of
        # epoch 1, so the write is degraded, `none` recorded first
        await applied(dst, ack, 200, epoch=2)
        await ack.acknowledge(101, 1, time.monotonic())
        after = await state.read()
        assert after is not None and after.names(1, "src") and after.degraded
        assert "did not confirm revision 101" in after.reason
        assert ack._waiters == set()
        # made synchronous again, then a write the standby does not confirm: degraded anew
        # (the `none` found before this write committed does not serve it)
        ok, again = await state.swap(
            after, SyncRecord.synchronous(1, "src", "dst", by="t", reason="t")
        )
        assert ok and again is not None
        await record_seen(ack, lambda r: r is not None and r.standby == "dst")
        await ack.acknowledge(104, 1, time.monotonic())
        after = await state.read()
        assert after is not None and after.degraded and "revision 104" in after.reason
        # a newer epoch recorded (the controller promoted elsewhere): this epoch's write that
        # no standby confirmed is never acknowledged, and the new record is left as it is
        ok, newer = await state.swap(after, SyncRecord.none(2, "dst", by="t", reason="t"))
        assert ok
        with pytest.raises(Unconfirmed, match="epoch 2"):
            await ack.acknowledge(102, 1, time.monotonic())
        assert await state.read() == newer
        # the same when the replica's view of the record is stale (it learns in _degrade)
        ack.record = after
        with pytest.raises(Unconfirmed, match="epoch 2"):
            await ack.acknowledge(103, 1, time.monotonic())
        assert await state.read() == newer
