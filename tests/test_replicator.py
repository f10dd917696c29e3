"""The replicator against real etcd clusters: order, exactly-once resume (in-process and after
SIGKILL of replicator processes), resync after compaction, leader handover, the fence guard,
and etcd leader kills on both sides.

Exactly once is checked through etcd's per-key `version` (modifications since creation): the
target starts empty and gets every source revision by the stream, so a revision applied twice
or skipped leaves a key whose version or value differs from the source's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio

from haplane.local.api_replica import free_port
from haplane.local.etcd_cluster import EtcdCluster
from haplane.replication import Replicator
from haplane.replication.rejoin import Rejoin
from haplane.store import (
    APPLIED_KEY,
    CONTROLLER_LEASE_KEY,
    FENCE_KEY,
    HEARTBEAT_KEY,
    AppliedRecord,
    EtcdClient,
    FenceValue,
    GlobalState,
    Heartbeat,
    Op,
    replicated,
)
from haplane.store.switchover import record_unplanned_cut

pytestmark = pytest.mark.timeout(180)

Space = dict[bytes, tuple[bytes, int]]


@pytest_asyncio.fixture(scope="module")
async def regions(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[EtcdCluster, EtcdCluster]]:
    """A source ("src") and a target ("dst") cluster shared by the tests that kill nothing;
    each test wipes both first."""
    src = EtcdCluster(tmp_path_factory.mktemp("src"), scope="src")
    dst = EtcdCluster(tmp_path_factory.mktemp("dst"), scope="dst")
    try:
        await asyncio.gather(src.start(), dst.start())
        yield src, dst
    finally:
        await asyncio.gather(src.stop(), dst.stop())


async def wipe_and_fence(src: EtcdClient, dst: EtcdClient, epoch: int = 1) -> None:
    for c in (src, dst):
        await c.txn([], [Op("delete", b"\0", range_end=b"\0")])
    await src.put(FENCE_KEY, FenceValue.active("src", epoch).encode())
    await dst.put(FENCE_KEY, FenceValue.standby("src", epoch).encode())


async def keyspace(c: EtcdClient) -> Space:
    kvs, _ = await c.range(b"\0", b"\0", timeout=5.0)
    return {kv.key: (kv.value, kv.version) for kv in kvs if replicated(kv.key)}


async def applied(dst: EtcdClient) -> AppliedRecord | None:
    kv = await dst.get(APPLIED_KEY)
    return AppliedRecord.from_kv(kv) if kv is not None else None


async def resynced(dst: EtcdClient, timeout: float = 20.0) -> None:
    """Wait for the first resync (of the empty source) to finish, so that every later source
    revision reaches the target through the stream."""
    for _ in range(int(timeout / 0.05)):
        rec = await applied(dst)
        if rec is not None and rec.state == "streaming":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no resync finished")


async def caught_up(src: EtcdClient, dst: EtcdClient, timeout: float = 30.0) -> AppliedRecord:
    """Wait until the target applied the source's last replicated revision."""
    kvs, _ = await src.range(b"\0", b"\0", timeout=5.0)
    head = max((kv.mod_revision for kv in kvs if replicated(kv.key)), default=0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        rec = await applied(dst)
        if rec is not None and rec.state == "streaming" and rec.revision >= head:
            return rec
        if loop.time() > deadline:
            raise AssertionError(f"target not caught up with {head} in {timeout}s: {rec}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(rep: Replicator) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(rep.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await rep.resign()


def replicator(dst: EtcdClient, src: EtcdClient, name: str, **kw: object) -> Replicator:
    return Replicator("dst", dst, {"src": src}, identity=f"dst/{name}", **kw)  # type: ignore[arg-type]


async def write_load(src: EtcdClient, n: int, seed: int, keys: int = 40) -> None:
    """`n` source transactions of 1-4 puts or deletes over a small key set."""
    rng = random.Random(seed)
    for i in range(n):
        ops = []
        for k in rng.sample(range(keys), rng.randint(1, 4)):
            key = f"/registry/configmaps/ns/k{k}".encode()
            if rng.random() < 0.2:
                ops.append(Op("delete", key))
            else:
                ops.append(Op("put", key, f"{seed}-{i}-{rng.random()}".encode()))
        await src.txn([], ops, timeout=5.0)


async def test_copies_whole_revisions_in_order_and_keeps_region_local_keys(
    regions: tuple[EtcdCluster, EtcdCluster],
) -> None:
    async with regions[0].client(2.0) as src, regions[1].client(2.0) as dst:
        await wipe_and_fence(src, dst)
        await src.put(b"/registry/namespaces/before", b"{}")  # copied by the first resync
        await dst.put(b"/registry/namespaces/stray", b"{}")  # not in the source: deleted
        async with running(replicator(dst, src, "a")):
            await write_load(src, 200, seed=1)
            await src.put(CONTROLLER_LEASE_KEY, b"src's own lease")
            await src.put(HEARTBEAT_KEY, Heartbeat("src", 1, 1234.5, 7).to_json())
            await src.put(b"/haplane/replication/applied-elsewhere", b"local")
            await write_load(src, 50, seed=2)
            rec = await caught_up(src, dst)
        mine, theirs = await keyspace(dst), await keyspace(src)
        assert {k: v for k, (v, _) in mine.items()} == {k: v for k, (v, _) in theirs.items()}
        assert b"/registry/namespaces/stray" not in mine
        assert CONTROLLER_LEASE_KEY not in mine
        assert (await dst.get(FENCE_KEY)).value == b"standby:src@1"  # type: ignore[union-attr]
        assert rec.heartbeat == 1234.5
        assert rec.source == "src" and rec.epoch == 1
        assert rec.cluster_id == await src.cluster_id()


async def test_resumes_exactly_after_a_crash_with_another_replicator(
    regions: tuple[EtcdCluster, EtcdCluster],
) -> None:
    """Replicators cancelled at random points (no clean hand-over: the next one waits out the
    lease); every key's value and version end equal to the source's."""
    async with regions[0].client(2.0) as src, regions[1].client(2.0) as dst:
        await wipe_and_fence(src, dst)
        rng = random.Random(5)
        writer: asyncio.Task[None] | None = None
        for i in range(4):
            rep = replicator(dst, src, f"r{i}", lease_ttl=1)
            task = asyncio.create_task(rep.run())
            if writer is None:
                await resynced(dst)
                writer = asyncio.create_task(write_load(src, 600, seed=3))
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            task.cancel()  # a crash: the lease is not revoked
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert writer is not None
        await writer
        async with running(replicator(dst, src, "last", lease_ttl=1)):
            await caught_up(src, dst)
        assert await keyspace(dst) == await keyspace(src)


async def test_compaction_past_the_applied_revision_forces_a_full_resync(
    regions: tuple[EtcdCluster, EtcdCluster],
) -> None:
    async with regions[0].client(2.0) as src, regions[1].client(2.0) as dst:
        await wipe_and_fence(src, dst)
        rep = replicator(dst, src, "a")
        async with running(rep):
            await write_load(src, 50, seed=4)
            await caught_up(src, dst)
        before = rep.status.resyncs
        await write_load(src, 80, seed=5)  # deletes among them: the resync must remove keys
        _, head = await src.range(b"\0", b"\0", limit=1)
        await src.compact(head)
        async with running(rep):
            await caught_up(src, dst)
        assert rep.status.resyncs == before + 1
        assert rep.status.last_resync is not None
        assert "compacted" in str(rep.status.last_resync["reason"])
        mine, theirs = await keyspace(dst), await keyspace(src)
        assert {k: v for k, (v, _) in mine.items()} == {k: v for k, (v, _) in theirs.items()}


async def test_never_writes_into_a_region_whose_fence_key_moved_on(
    regions: tuple[EtcdCluster, EtcdCluster],
) -> None:
    async with regions[0].client(2.0) as src, regions[1].client(2.0) as dst:
        await wipe_and_fence(src, dst)
        rep = replicator(dst, src, "a")
        async with running(rep):
            await write_load(src, 20, seed=6)
            await caught_up(src, dst)
            await dst.put(FENCE_KEY, FenceValue.active("dst", 2).encode())  # promoted
            frozen = await keyspace(dst)
            await write_load(src, 40, seed=7)
            await asyncio.sleep(1.5)
            assert await keyspace(dst) == frozen
            assert rep.status.state == "Idle"


async def test_leader_handover_between_two_replicators(
    regions: tuple[EtcdCluster, EtcdCluster],
) -> None:
    async with regions[0].client(2.0) as src, regions[1].client(2.0) as dst:
        await wipe_and_fence(src, dst)
        a, b = replicator(dst, src, "a"), replicator(dst, src, "b")
        task_a = asyncio.create_task(a.run())
        await asyncio.sleep(0.3)
        async with running(b):
            await write_load(src, 30, seed=8)
            await caught_up(src, dst)
            assert a.status.leading and not b.status.leading
            task_a.cancel()  # a clean stop: cancelled, then the lease revoked
            with contextlib.suppress(asyncio.CancelledError):
                await task_a
            await a.resign()
            await write_load(src, 30, seed=9)
            await caught_up(src, dst, timeout=5)  # well under the lease TTL: handed over
            assert b.status.leading
        assert await keyspace(dst) == await keyspace(src)


def _spawn(
    name: str, src: EtcdCluster, dst: EtcdCluster, port: int, log: Path
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "haplane.replication",
        "--region", "dst", "--name", name, "--listen", f"127.0.0.1:{port}",
        "--etcd", ",".join(dst.endpoints), "--source", f"src={','.join(src.endpoints)}",
        "--lease-ttl", "1",
    ]  # fmt: skip
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=out)


async def test_sigkill_of_the_leading_replicator_process_at_random_points(
    regions: tuple[EtcdCluster, EtcdCluster], tmp_path: Path
) -> None:
    """Two replicator processes; the leader is SIGKILLed at random points while a writer runs
    and restarted; in the end the target equals the source key by key, version by version."""
    src_c, dst_c = regions
    async with src_c.client(2.0) as src, dst_c.client(2.0) as dst:
        await wipe_and_fence(src, dst)
        ports = {n: free_port() for n in ("p1", "p2")}
        procs = {n: _spawn(n, src_c, dst_c, ports[n], tmp_path / f"{n}.log") for n in ports}
        rng = random.Random(11)
        try:
            await resynced(dst)
            writer = asyncio.create_task(write_load(src, 700, seed=10))
            for _ in range(4):
                await asyncio.sleep(rng.uniform(0.5, 1.5))
                kv = await dst.get(b"/haplane/replication/leader")
                if kv is None:
                    continue
                name = kv.value.decode().split("/")[-1]
                procs[name].kill()  # SIGKILL: no lease revoked, nothing flushed
                procs[name].wait()
                procs[name] = _spawn(name, src_c, dst_c, ports[name], tmp_path / f"{name}.log")
            await writer
            await caught_up(src, dst, timeout=30)
            assert await keyspace(dst) == await keyspace(src)
        finally:
            for p in procs.values():
                p.terminate()
            for p in procs.values():
                p.wait(timeout=10)


async def test_etcd_leader_kills_in_source_and_target(tmp_path: Path) -> None:
    src_c = EtcdCluster(tmp_path / "src", scope="src")
    dst_c = EtcdCluster(tmp_path / "dst", scope="dst")
    await asyncio.gather(src_c.start(), dst_c.start())
    try:
        async with src_c.client(2.0) as src, dst_c.client(2.0) as dst:
            await wipe_and_fence(src, dst)
            async with running(replicator(dst, src, "a")):
                await resynced(dst)
                writer = asyncio.create_task(_retrying_load(src, 400, seed=12))
                for cluster in (src_c, dst_c, src_c):
                    await asyncio.sleep(0.7)
                    leader = await cluster.leader()
                    await cluster.processes[leader].fault("kill")
                    await asyncio.sleep(0.5)
                    await cluster.processes[leader].fault("restart")
                await writer
                await caught_up(src, dst, timeout=30)
            assert await keyspace(dst) == await keyspace(src)
    finally:
        await asyncio.gather(src_c.stop(), dst_c.stop())


async def test_a_source_that_died_whole_is_disconnected_at_once_then_followed_again(
    regions: tuple[EtcdCluster, EtcdCluster], tmp_path: Path
) -> None:
    """A source whose every member died breaks the watch: the replicator says Disconnected as
    the stream breaks, while the watch still tries the members (not only once its 2 s of
    trying ran out, when the error ends the stream), and Streaming again when the source is
    back, with everything copied."""
    src_c = EtcdCluster(tmp_path / "one", size=1, scope="one")
    await src_c.start()
    try:
        async with src_c.client(1.0) as src, regions[1].client(2.0) as dst:
            await wipe_and_fence(src, dst)
            rep = replicator(dst, src, "a")
            async with running(rep):
                await resynced(dst)
                await write_load(src, 20, seed=7)
                await caught_up(src, dst)
                assert rep.status.state == "Streaming"
                (member,) = src_c.processes.values()
                await member.fault("kill")
                details: list[str] = []
                for _ in range(100):  # the first state after Streaming, and its reason
                    if rep.status.state != "Streaming":
                        details.append(rep.status.detail)
                        break
                    await asyncio.sleep(0.02)
                assert details, f"still Streaming 2 s after its source died: {rep.status}"
                assert rep.status.state == "Disconnected", rep.status
                assert "retrying" in details[0], details  # said by the broken stream itself
                await member.fault("restart")
                await write_load(src, 20, seed=8)
                await caught_up(src, dst)
                for _ in range(100):
                    if rep.status.state == "Streaming":
                        break
                    await asyncio.sleep(0.05)
                assert rep.status.state == "Streaming", rep.status
            assert await keyspace(dst) == await keyspace(src)
    finally:
        await src_c.stop()


async def _retrying_load(src: EtcdClient, n: int, seed: int) -> None:
    """Like `write_load`, but a write refused during an election is tried again (a refused
    txn did not apply: `EtcdUnavailable`); an unknown outcome is fine either way."""
    from haplane.store import EtcdError

    rng = random.Random(seed)
    for i in range(n):
        key = f"/registry/configmaps/ns/k{rng.randrange(30)}".encode()
        while True:
            try:
                await src.put(key, f"{i}".encode(), timeout=2.0)
                break
            except EtcdError:
                await asyncio.sleep(0.05)


# ---- a returning region: divergence kept, then re-seeded ----------------------------------


@pytest.mark.parametrize("history", ["kept", "compacted", "partial"])
async def test_a_returning_region_keeps_what_it_wrote_after_the_cut_then_follows(
    regions: tuple[EtcdCluster, EtcdCluster],
    etcd_cluster: EtcdCluster,
    key_prefix: bytes,
    tmp_path: Path,
    history: str,
) -> None:
    """src was active (epoch 1) and replicated into dst; dst took over unplanned (epoch 2) at
    a cut; src went on writing while cut off; when src's replicator finds its key frozen, it
    saves those writes (from its history, or by comparing keyspaces when the history is
    compacted), then becomes a standby of dst and is re-seeded equal to it."""
    async with regions[0].client(2.0) as src, regions[1].client(2.0) as dst:
        await wipe_and_fence(src, dst)
        control_client = etcd_cluster.client(2.0)
        control = GlobalState(control_client, prefix=key_prefix)
        try:
            await control.initialize("src", by="t", reason="t", fresh=True)
            async with running(replicator(dst, src, "a")):
                await resynced(dst)
                await write_load(src, 40, seed=20)
                await caught_up(src, dst)
            if history == "partial":  # dst was promoted in the middle of a resync
                rec = await applied(dst)
                assert rec is not None
                await dst.put(APPLIED_KEY, replace(rec, state="resyncing").to_json())
            record = await control.switch("dst", expected_epoch=1, by="t", reason="src lost")
            await dst.put(FENCE_KEY, FenceValue.active("dst", 2).encode())
            cut = await record_unplanned_cut(control, dst, record, lag_seconds=0.1)
            await control.unfence(2)
            # src, cut off, still wrote (its own clients), then came back and was frozen
            await src.put(b"/registry/secrets/ns/late", b'{"data":{"p":"aHVudGVyMg=="}}')
            await src.put(b"/registry/configmaps/ns/k1", b"src-after-cut")
            await src.delete(b"/registry/configmaps/ns/k2")
            await src.put(HEARTBEAT_KEY, Heartbeat("src", 1, 1.0, 99).to_json())  # not divergence
            await src.put(FENCE_KEY, FenceValue.frozen("src", 1).encode())
            await dst.put(b"/registry/configmaps/ns/new-in-dst", b"dst")
            if history == "compacted":
                _, head = await src.range(b"\0", b"\0", limit=1)
                await src.compact(head)
            back = Replicator(
                "src",
                src,
                {"dst": dst},
                identity="src/r",
                control=control,
                on_frozen=Rejoin(tmp_path / "divergence", grace=0.3),
            )
            async with running(back):
                await caught_up(dst, src)
            saved = json.loads((tmp_path / "divergence" / "2" / "summary.json").read_text())
            changed = {e["key"]: e for e in saved["entries"]}
            assert saved["region"] == "src" and saved["active"] == "dst"
            assert (
                "/registry/haplane/heartbeat" not in changed and "/haplane/heartbeat" not in changed
            )
            late = changed["/registry/secrets/ns/late"]
            stored = (tmp_path / "divergence" / "2" / late["file"]).read_bytes()
            assert stored == b'{"data":{"p":"aHVudGVyMg=="}}'  # as stored, never decoded
            assert changed["/registry/configmaps/ns/k1"]["file"] is not None
            if history == "kept":
                assert saved["method"] == "history" and saved["cut"] == cut.revision
                assert set(changed) == {
                    "/registry/secrets/ns/late",
                    "/registry/configmaps/ns/k1",
                    "/registry/configmaps/ns/k2",
                }
                assert changed["/registry/configmaps/ns/k2"]["change"] == "delete"
            else:  # compacted history, or a cut from a partial copy: the keyspaces compared
                assert saved["method"] == "keyspace"
                assert changed["/registry/configmaps/ns/new-in-dst"]["change"] == "missing-here"
                assert cut.partial == (history == "partial")
            notes = await control.divergences()
            assert [n["epoch"] for n in notes] == [2]
            assert (await src.get(FENCE_KEY)).value == b"standby:dst@2"  # type: ignore[union-attr]
            mine, theirs = await keyspace(src), await keyspace(dst)
            assert {k: v for k, (v, _) in mine.items()} == {k: v for k, (v, _) in theirs.items()}
        finally:
            await control_client.close()


async def test_a_restored_region_counts_as_partial_until_it_applied_past_its_marker(
    regions: tuple[EtcdCluster, EtcdCluster],
) -> None:
    """`haplane restore region` leaves RESTORED_KEY in the rebuilt region: its replicator
    reports a partial copy (never promoted automatically) until it applied the source up
    to the marker's revision, then removes the marker, resuming from its applied record
    (no resync)."""
    from haplane.store import RESTORED_KEY, RestoredMarker

    async with regions[0].client(2.0) as src, regions[1].client(2.0) as dst:
        await wipe_and_fence(src, dst)
        rep = replicator(dst, src, "m")
        async with running(rep):
            await write_load(src, 30, seed=9)
            await caught_up(src, dst)
        resyncs = rep.status.resyncs
        # as after a restore: the target is behind, the marker names where the source is now
        await write_load(src, 30, seed=10)
        _, head, _ = await src.range_page(b"\0", b"\0", limit=1)
        await dst.put(RESTORED_KEY, RestoredMarker("src", head, "snap").to_json())
        seen_partial = False
        rep = replicator(dst, src, "n")
        async with running(rep):
            for _ in range(400):
                seen_partial = seen_partial or rep.status.partial
                if await dst.get(RESTORED_KEY) is None:
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError("the marker was never removed")
            await caught_up(src, dst)
            assert not rep.status.partial
        assert seen_partial
        assert rep.status.resyncs == 0 and resyncs <= 1  # resumed, not copied again
        mine, theirs = await keyspace(dst), await keyspace(src)
        assert {k: v for k, (v, _) in mine.items()} == {k: v for k, (v, _) in theirs.items()}
