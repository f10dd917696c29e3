"""A real 3-member etcd cluster through haplane's client: quorum, leader loss, quorum loss,
restart."""

from __future__ import annotations

import asyncio

import pytest

from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import (
    EtcdClient,
    EtcdNoQuorum,
    EtcdOutcomeUnknown,
    EtcdUnavailable,
)


async def test_quorum_write_and_read_everywhere(etcd_cluster: EtcdCluster, key_prefix: bytes):
    async with etcd_cluster.client() as c:
        rev = await c.put(key_prefix + b"a", b"1")
        assert rev > 0
        for name in etcd_cluster.names:  # each member serves the linearizable read itself
            kv = await c.get(key_prefix + b"a", endpoint=etcd_cluster.endpoint(name))
            assert kv is not None and kv.value == b"1" and kv.mod_revision == rev
        await c.put(key_prefix + b"b", b"2")
        kvs, _ = await c.range(key_prefix, prefix=True)
        assert [kv.key for kv in kvs] == [key_prefix + b"a", key_prefix + b"b"]
        assert await c.delete(key_prefix + b"a") == 1
        assert await c.get(key_prefix + b"a") is None


async def test_status_members_and_alarms(etcd_cluster: EtcdCluster):
    async with etcd_cluster.client() as c:
        statuses = [await c.status(ep) for ep in etcd_cluster.endpoints]
        leaders = {s.leader for s in statuses}
        assert len(leaders) == 1 and 0 not in leaders
        assert sum(s.is_leader for s in statuses) == 1
        assert len({s.raft_term for s in statuses}) == 1
        members = await c.members()
        assert sorted(m.name for m in members) == ["test-etcd-1", "test-etcd-2", "test-etcd-3"]
        assert await c.alarms() == []


async def test_kill_leader_elects_new_leader_and_writes_continue(
    disposable_cluster: EtcdCluster,
):
    cluster = disposable_cluster
    old = await cluster.leader()
    async with cluster.client() as c:
        await c.put(b"/k", b"before")
        await cluster.processes[old].fault("kill")
        # Writes keep being attempted; each either succeeds or fails cleanly until a leader is
        # elected, then they succeed.
        succeeded_after_kill = 0
        for _ in range(200):
            try:
                await c.put(b"/k", b"after")
                succeeded_after_kill += 1
                if succeeded_after_kill >= 5:
                    break
            except (EtcdUnavailable, EtcdOutcomeUnknown):
                await asyncio.sleep(0.02)
        assert succeeded_after_kill >= 5
        new = await cluster.leader()
        assert new != old
        kv = await c.get(b"/k")
        assert kv is not None and kv.value == b"after"


async def test_losing_quorum_fails_writes_and_linearizable_reads_clearly(
    disposable_cluster: EtcdCluster,
):
    cluster = disposable_cluster
    async with cluster.client() as c:
        await c.put(b"/q", b"kept")
    _survivor, *doomed = cluster.names
    for name in doomed:
        await cluster.processes[name].fault("kill")
    await asyncio.sleep(0.6)  # > election timeout: the survivor notices it has no leader

    async with cluster.client() as c:
        with pytest.raises(EtcdNoQuorum, match="lost quorum"):
            await c.put(b"/q", b"lost")
        with pytest.raises(EtcdUnavailable):
            await c.get(b"/q")  # linearizable: needs quorum
        kv = await c.get(b"/q", serializable=True)  # the survivor's local state
        assert kv is not None and kv.value == b"kept"

    # Restart both: data intact, members agree on revision and hash.
    for name in doomed:
        await cluster.processes[name].fault("restart")
    await cluster.wait_ready()
    async with cluster.client() as c:
        kv = await c.get(b"/q")
        assert kv is not None and kv.value == b"kept"
        await c.put(b"/q2", b"x")
        statuses = [await c.status(ep) for ep in cluster.endpoints]
        revision = min(s.revision for s in statuses)
        hashes = [await c.hash_kv(ep, revision) for ep in cluster.endpoints]
        assert len({h.hash for h in hashes}) == 1, hashes
        assert len({s.revision for s in statuses}) == 1


async def test_write_with_no_member_reachable_is_known_not_sent(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with EtcdClient([f"127.0.0.1:{port}"], timeout=0.3) as c:
        with pytest.raises(EtcdUnavailable, match="not sent"):
            await c.put(b"/x", b"1")


async def test_write_sent_to_a_hung_cluster_has_unknown_outcome(
    disposable_cluster: EtcdCluster,
):
    cluster = disposable_cluster
    async with cluster.client(timeout=0.3) as c:
        await c.put(b"/warm", b"1")  # channels connected
        for name in cluster.names:
            await cluster.processes[name].fault("pause")
        try:
            with pytest.raises(EtcdOutcomeUnknown, match="may or may not"):
                await c.put(b"/h", b"1")
        finally:
            for name in cluster.names:
                await cluster.processes[name].fault("resume")


async def test_txn_create_if_absent_and_compare_and_swap(etcd_cluster: EtcdCluster, key_prefix):
    from haplane.store import Compare, Op

    key = key_prefix + b"obj"
    async with etcd_cluster.client() as c:
        created = await c.txn(
            [Compare(key, "mod", "=", 0)], [Op("put", key, b"v1")], [Op("get", key)]
        )
        assert created.succeeded
        again = await c.txn(
            [Compare(key, "mod", "=", 0)], [Op("put", key, b"v2")], [Op("get", key)]
        )
        assert not again.succeeded and again.results[0][0].value == b"v1"
        current = again.results[0][0]
        swapped = await c.txn(
            [Compare(key, "mod", "=", current.mod_revision)],
            [Op("put", key, b"v3")],
            [Op("get", key)],
        )
        assert swapped.succeeded
        stale = await c.txn(
            [Compare(key, "mod", "=", current.mod_revision)],
            [Op("put", key, b"v4")],
            [Op("get", key)],
        )
        assert not stale.succeeded and stale.results[0][0].value == b"v3"
        deleted = await c.txn(
            [Compare(key, "mod", "=", stale.results[0][0].mod_revision)],
            [Op("delete", key)],
            [Op("get", key)],
        )
        assert deleted.succeeded and deleted.results[0][0].value == b"v3"


async def test_watch_sees_puts_and_deletes_in_order(etcd_cluster: EtcdCluster, key_prefix):
    async with etcd_cluster.client() as c:
        start = await c.put(key_prefix + b"a", b"1")
        await c.put(key_prefix + b"b", b"2")
        await c.delete(key_prefix + b"a")
        seen = []
        async for batch in c.watch(key_prefix, prefix=True, start_revision=start):
            seen += [(e.type, e.kv.key, e.kv.value) for e in batch.events]
            if len(seen) >= 3:
                break
        assert seen == [
            ("PUT", key_prefix + b"a", b"1"),
            ("PUT", key_prefix + b"b", b"2"),
            ("DELETE", key_prefix + b"a", b""),
        ]


async def test_watch_from_a_compacted_revision_raises(disposable_cluster: EtcdCluster):
    from haplane.store import EtcdCompacted

    async with disposable_cluster.client() as c:
        first = await c.put(b"/w", b"1")
        last = await c.put(b"/w", b"2")
        await c.compact(last)
        with pytest.raises(EtcdCompacted):
            async for _ in c.watch(b"/w", start_revision=first):
                pass


async def test_watch_resumes_on_another_member_without_loss_or_duplicates(
    disposable_cluster: EtcdCluster,
):
    cluster = disposable_cluster
    async with cluster.client(timeout=0.5) as c, cluster.client(timeout=0.5) as writer:
        start = await writer.put(b"/r/0", b"0")
        received: list[bytes] = []

        acked: list[bytes] = [b"/r/0"]
        done_writing = asyncio.Event()

        async def consume() -> None:
            async for batch in c.watch(b"/r/", prefix=True, start_revision=start):
                received.extend(e.kv.key for e in batch.events)
                if done_writing.is_set() and set(acked) <= set(received):
                    return

        task = asyncio.create_task(consume())
        for i in range(1, 40):
            if i == 15:  # kill whichever member the watch (and writes) prefer
                await cluster.processes[cluster.names[0]].fault("kill")
            while True:
                try:
                    await writer.put(f"/r/{i}".encode(), b"x")
                    acked.append(f"/r/{i}".encode())
                    break
                except (EtcdUnavailable, EtcdOutcomeUnknown):
                    await asyncio.sleep(0.05)  # an unknown outcome retried may write twice
        await writer.put(b"/r/end", b"")
        acked.append(b"/r/end")
        done_writing.set()
        await asyncio.wait_for(task, timeout=20)
        # What the resumed watch delivered is exactly etcd's history, read afresh.
        history: list[bytes] = []
        kvs, _ = await writer.range(b"/r/", prefix=True)
        async for batch in writer.watch(b"/r/", prefix=True, start_revision=start):
            history.extend(e.kv.key for e in batch.events)
            if len(history) >= len(received):
                break
        assert received == history
        assert set(acked) <= set(received) and {kv.key for kv in kvs} == set(acked)


async def test_watch_on_a_hung_member_moves_to_another(disposable_cluster: EtcdCluster):
    """SIGSTOP keeps the TCP connection open: only keepalive can tell the watch it is dead."""
    cluster = disposable_cluster
    async with cluster.client(timeout=0.5) as c, cluster.client(timeout=0.5) as writer:
        start = await writer.put(b"/hang/0", b"0")
        received: list[bytes] = []

        async def consume() -> None:
            async for batch in c.watch(b"/hang/", prefix=True, start_revision=start):
                received.extend(e.kv.key for e in batch.events)
                if b"/hang/after" in received:
                    return

        task = asyncio.create_task(consume())  # a new client watches on its first endpoint
        await asyncio.sleep(0.5)
        assert received == [b"/hang/0"]
        await cluster.processes[cluster.names[0]].fault("pause")
        try:
            while True:
                try:
                    await writer.put(b"/hang/after", b"x")
                    break
                except (EtcdUnavailable, EtcdOutcomeUnknown):
                    await asyncio.sleep(0.1)
            await asyncio.wait_for(task, timeout=30)  # keepalive: 6 s + 3 s, then resume
        finally:
            await cluster.processes[cluster.names[0]].fault("resume")
        assert received[-1] == b"/hang/after"


async def test_a_watch_resumed_on_another_cluster_raises_cluster_replaced(tmp_path):
    """A watch whose member went away and whose next endpoint is another cluster (as a
    control etcd restored from a snapshot is: same addresses, a new cluster id) must not go
    on from its revision there: the caller is told to relist."""
    from haplane.store import EtcdClusterReplaced, EtcdCompacted

    first = EtcdCluster(tmp_path / "a", size=1, scope="a")
    second = EtcdCluster(tmp_path / "b", size=1, scope="b")
    await first.start()
    await second.start()
    try:
        async with (
            EtcdClient(first.endpoints + second.endpoints, timeout=0.5) as c,
            first.client() as a,
        ):
            rev = await a.put(b"/k", b"1")
            seen: list[bytes] = []
            began = asyncio.Event()

            async def follow() -> None:
                async for batch in c.watch(b"/k", start_revision=rev):
                    seen.extend(e.kv.value for e in batch.events)
                    began.set()

            task = asyncio.create_task(follow())
            await asyncio.wait_for(began.wait(), 10)
            await first.stop()
            with pytest.raises(EtcdClusterReplaced) as caught:
                await asyncio.wait_for(task, 30)
            assert isinstance(caught.value, EtcdCompacted)  # callers that relist on it do here
            assert seen == [b"1"] and "relist" in str(caught.value)
    finally:
        await first.stop()
        await second.stop()


async def test_members_stop_followers_first_the_leader_last(tmp_path):
    """`stop_leader_last` (the supervisor's `down`, `EtcdCluster.stop`): the leader, stopped
    with its followers, would spend its grace handing leadership over; alone, it stops at
    once. Nobody answering: all at once."""
    from haplane.local.supervisor import stop_leader_last

    cluster = EtcdCluster(tmp_path / "c", size=3)
    await cluster.start()
    order: list[str] = []
    try:
        leader = await cluster.leader()

        async def stop(name: str) -> None:
            order.append(name)
            await cluster.processes[name].stop(grace=5.0)

        async with cluster.client() as c:
            eps = {n: cluster.endpoint(n) for n in cluster.names}
            await stop_leader_last(c, eps, stop)
            assert order[-1] == leader and sorted(order) == sorted(cluster.names)
            order.clear()
            await stop_leader_last(c, eps, stop)  # none answers now
            assert sorted(order) == sorted(cluster.names)
    finally:
        await cluster.stop()
