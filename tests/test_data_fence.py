"""The data fence on a real etcd: every API write compares the region's fence key with
`active:<region>@<epoch>`; a frozen, standby, missing or older-epoch key refuses create, update,
patch, delete and the lifecycle controllers' writes with 503, in one transaction, never retried.
The write permission's end is absolute: a pause between the permission check and the send
cannot stretch it. A replica stopped (SIGSTOP) right before its request goes out, across a
switchover, is refused by the fence key when it resumes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio

from haplane.api.controllers import LEASE_NAME, LEASE_NAMESPACE, Controllers
from haplane.api.errors import StatusError
from haplane.api.fencing import WriteFence
from haplane.api.generic_store import GenericStore
from haplane.api.resource_version import VersionContext
from haplane.api.resources import BUILTIN
from haplane.api.server import STALL_HOOK_ENV, SYSTEM_NAMESPACES
from haplane.api.storage import DataFence, EtcdStorage, WriteFenced
from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import (
    CONTROLLER_LEASE_KEY,
    HEARTBEAT_KEY,
    ActiveRegion,
    EtcdClient,
    FenceValue,
    GlobalState,
    Heartbeat,
    RegionFence,
)
from tests.topology_helpers import fenced_replica_args

TYPES = {t.plural: t for t in BUILTIN}
EPOCH = 3


@pytest_asyncio.fixture(scope="module")
async def region_etcd(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EtcdCluster]:
    """A region's etcd of its own: the lifecycle controllers scan every object in it, and the
    system namespaces must not exist in it unless a test makes them."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("fenced-region"))
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


class CountingClient:
    """The etcd client, counting write transactions (a fence mismatch must cost one)."""

    def __init__(self, client: EtcdClient) -> None:
        self.inner = client
        self.writes = 0
        self.timeout = client.timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def txn(self, compare, success, failure=(), **kw):  # type: ignore[no-untyped-def]
        if any(o.kind != "get" for o in (*success, *failure)):
            self.writes += 1
        return await self.inner.txn(compare, success, failure, **kw)


@pytest_asyncio.fixture
async def fenced(region_etcd: EtcdCluster) -> AsyncIterator[tuple[CountingClient, RegionFence]]:
    client = region_etcd.client(timeout=2.0)
    counting = CountingClient(client)
    fence = RegionFence("r1", client)
    now = await fence.read()
    await fence.swap(now, FenceValue.active("r1", EPOCH))
    try:
        yield counting, fence
    finally:
        await client.close()


async def _stores(client: CountingClient | EtcdClient) -> tuple[GenericStore, GenericStore]:
    versions = VersionContext.for_cluster(await client.cluster_id(), epoch=EPOCH)
    storage = EtcdStorage(client, versions, data_fence=DataFence("r1"))  # type: ignore[arg-type]
    return GenericStore(TYPES["namespaces"], storage), GenericStore(TYPES["configmaps"], storage)


async def _set(fence: RegionFence, value: FenceValue | None) -> None:
    now = await fence.read()
    if value is None:
        await fence.client.delete(fence.key)
    else:
        await fence.swap(now, value)


REFUSING = {
    "frozen": FenceValue.frozen("r1", EPOCH),
    "standby": FenceValue.standby("r2", EPOCH + 1),
    "older epoch": FenceValue.active("r1", EPOCH - 1),
    "newer epoch": FenceValue.active("r1", EPOCH + 1),
    "missing": None,
}


@pytest.mark.parametrize("case", list(REFUSING))
async def test_every_write_path_is_refused_once_and_never_retried(fenced, case) -> None:
    client, fence = fenced
    namespaces, configmaps = await _stores(client)
    ns = f"df-{uuid.uuid4().hex[:8]}"
    await namespaces.create(None, {"metadata": {"name": ns}})
    cm = await configmaps.create(ns, {"metadata": {"name": "cm"}, "data": {"v": "1"}})
    await _set(fence, REFUSING[case])

    attempts = {
        "create": lambda: configmaps.create(ns, {"metadata": {"name": "new"}}),
        "update": lambda: configmaps.update(ns, "cm", {**cm, "data": {"v": "2"}}),
        "patch": lambda: configmaps.patch(ns, "cm", lambda o: {**o, "data": {"v": "3"}}),
        "delete": lambda: configmaps.delete(ns, "cm"),
    }
    for verb, attempt in attempts.items():
        before = client.writes
        with pytest.raises(StatusError) as info:
            await attempt()
        assert info.value.code == 503, (verb, info.value.message)
        assert "fence" in info.value.message, (verb, info.value.message)
        assert client.writes - before == 1, f"{verb}: the refusal was retried"
    assert (await configmaps.get(ns, "cm"))["data"] == {"v": "1"}  # nothing written
    with pytest.raises(StatusError) as gone:
        await configmaps.get(ns, "new")
    assert gone.value.code == 404


async def test_the_refusal_names_the_active_region_of_a_standby(fenced) -> None:
    client, fence = fenced
    namespaces, _ = await _stores(client)
    await _set(fence, FenceValue.standby("eu-central", EPOCH + 1))
    with pytest.raises(StatusError) as info:
        await namespaces.create(None, {"metadata": {"name": f"df-{uuid.uuid4().hex[:8]}"}})
    assert info.value.code == 503 and "standby of eu-central" in info.value.message


async def test_a_lost_compare_and_swap_is_still_retried_under_an_active_key(fenced) -> None:
    """The fence key's read in the failure branch tells a lost race from a fence: a race is
    retried on fresh state as before."""
    client, _ = fenced
    namespaces, configmaps = await _stores(client)
    ns = f"df-{uuid.uuid4().hex[:8]}"
    await namespaces.create(None, {"metadata": {"name": ns}})
    await configmaps.create(ns, {"metadata": {"name": "cm"}, "data": {"n": "0"}})
    key = configmaps._key(ns, "cm")
    raced = False

    async def bump(current: dict[str, Any]) -> dict[str, Any]:
        nonlocal raced
        if not raced:
            raced = True
            await configmaps.patch(ns, "cm", lambda o: {**o, "data": {**o["data"], "other": "1"}})
        return {**current, "data": {**current["data"], "n": "1"}}

    await configmaps.storage.guaranteed_update(key, bump)
    assert (await configmaps.get(ns, "cm"))["data"] == {"n": "1", "other": "1"}


async def test_lifecycle_controller_writes_are_fenced(fenced) -> None:
    client, fence = fenced
    namespaces, configmaps = await _stores(client)
    ns = f"df-{uuid.uuid4().hex[:8]}"
    await namespaces.create(None, {"metadata": {"name": ns}})
    orphan = {
        "metadata": {
            "name": "orphan",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "gone", "uid": str(uuid.uuid4())}
            ],
        }
    }
    await configmaps.create(ns, orphan)
    controllers = Controllers(lambda: [namespaces, configmaps])

    await _set(fence, FenceValue.frozen("r1", EPOCH))
    before = client.writes
    with pytest.raises(StatusError) as info:
        await controllers.reconcile_once(force=True)
    assert info.value.code == 503 and client.writes - before == 1
    assert (await configmaps.get(ns, "orphan"))["metadata"]["name"] == "orphan"

    # the same round under an active key collects it: the refusal above was the fence's
    await _set(fence, FenceValue.active("r1", EPOCH))
    await controllers.reconcile_once(force=True)
    with pytest.raises(StatusError) as gone:
        await configmaps.get(ns, "orphan")
    assert gone.value.code == 404


async def test_a_paused_garbage_collector_deletes_no_dependent(fenced) -> None:
    """A region promoted from a partial copy: owners not yet copied must not cost their
    dependents; the collector runs again once resumed."""
    client, fence = fenced
    namespaces, configmaps = await _stores(client)
    ns = f"gc-{uuid.uuid4().hex[:8]}"
    await namespaces.create(None, {"metadata": {"name": ns}})
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "later", "uid": str(uuid.uuid4())}
    await configmaps.create(ns, {"metadata": {"name": "dep", "ownerReferences": [owner]}})
    paused: list[str | None] = ["promoted during a resync"]
    controllers = Controllers(lambda: [namespaces, configmaps], gc_paused=lambda: paused[0])
    await _set(fence, FenceValue.active("r1", EPOCH))
    await controllers.reconcile_once(force=True)
    assert (await configmaps.get(ns, "dep"))["metadata"]["name"] == "dep"
    paused[0] = None
    await controllers.reconcile_once(force=True)
    with pytest.raises(StatusError) as gone:
        await configmaps.get(ns, "dep")
    assert gone.value.code == 404


# ---- the permission's end is absolute --------------------------------------------------


def _fence_ending_in(seconds: float) -> WriteFence:
    """An enabled fence whose permission ends `seconds` from now (grant - margin)."""
    f = WriteFence("r1", client=None)
    f.state = object()  # type: ignore[assignment]  # enabled, without a loop
    grant_ms = int(seconds * 1000) + 100
    f.observe(
        ActiveRegion("r1", EPOCH, "", "t", "t", grant_ms=grant_ms, margin_ms=100), sent=f.clock()
    )
    return f


async def _fenced_storage(client: Any, fence: WriteFence) -> GenericStore:
    versions = VersionContext.for_cluster(await client.cluster_id(), epoch=EPOCH)
    storage = EtcdStorage(client, versions, fence=fence, data_fence=DataFence("r1"))
    return GenericStore(TYPES["namespaces"], storage)


async def test_a_pause_after_the_permission_check_cannot_stretch_the_permission(fenced) -> None:
    """A pause (a full GC, CPU throttling, SIGSTOP) between the permission check and the etcd
    call: with the permission's end handed down as an absolute time, the client refuses at
    send time. (When the end was handed down as seconds left, the client counted them from
    after the pause and the write went out: acknowledged after its permission had ended.)"""
    client, _ = fenced

    class Pausing(CountingClient):
        async def txn(self, compare, success, failure=(), **kw):  # type: ignore[no-untyped-def]
            time.sleep(0.3)  # noqa: ASYNC251  # the whole process stops, as in a GC pause
            return await super().txn(compare, success, failure, **kw)

    namespaces = await _fenced_storage(Pausing(client.inner), _fence_ending_in(0.2))
    name = f"df-{uuid.uuid4().hex[:8]}"
    with pytest.raises(StatusError) as info:
        await namespaces.create(None, {"metadata": {"name": name}})
    assert info.value.code == 503 and "ran out before the request could be sent" in (
        info.value.message
    )
    assert await client.inner.get(f"/registry/namespaces/{name}".encode()) is None


async def test_a_channel_wait_longer_than_the_permission_is_refused_not_sent(fenced) -> None:
    """No connected member until after the permission ended: refused as fenced (it used to
    go out with a 1 ms deadline, an outcome unknown)."""
    client, _ = fenced
    inner: EtcdClient = client.inner
    ready = inner._ready_endpoint

    async def slow_ready(remaining: float, exclude: set[str]) -> str | None:
        await asyncio.sleep(0.3)
        return await ready(remaining, exclude)

    namespaces = await _fenced_storage(inner, _fence_ending_in(0.2))
    name = f"df-{uuid.uuid4().hex[:8]}"
    inner._ready_endpoint = slow_ready  # type: ignore[method-assign]
    try:
        with pytest.raises(StatusError) as info:
            await namespaces.create(None, {"metadata": {"name": name}})
    finally:
        del inner._ready_endpoint
    assert info.value.code == 503 and "fenced" in info.value.message
    assert await inner.get(f"/registry/namespaces/{name}".encode()) is None


async def test_write_fenced_is_unavailable_not_outcome_unknown() -> None:
    # a refusal is certain (nothing was sent): clients may retry it elsewhere at once
    assert issubclass(WriteFenced, Exception)
    from haplane.api.storage import OutcomeUnknown, Unavailable

    assert issubclass(WriteFenced, Unavailable) and not issubclass(WriteFenced, OutcomeUnknown)


# ---- a replica process stopped right before its send, across a switchover ----------------


def _stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


async def _wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_a_replica_stopped_before_its_send_is_refused_by_the_data_fence(
    etcd_cluster, key_prefix: bytes, tmp_path: Path
) -> None:
    """The stall hook stops the replica after every client-side check, right before its
    request goes out: the stand-in for a stall no deadline can see. Across a switchover that
    lasts longer than grant + margin:
    - without freezing the old region's key, the resumed write commits (and is acknowledged)
      in a region that lost the epoch: the hole the time fence leaves;
    - with the freeze that every region change now makes, it is refused by etcd itself."""
    client = etcd_cluster.client(timeout=2.0)
    state = GlobalState(client, prefix=key_prefix)
    await state.initialize("r", by="t", reason="t", grant_ms=600, margin_ms=100, fresh=True)
    fence = RegionFence("r", client, key=key_prefix + b"fence")
    await fence.swap(await fence.read(), FenceValue.active("r", 1))
    needle = f"stall-{uuid.uuid4().hex[:8]}"
    journal = tmp_path / "writes.jsonl"
    replica = ApiReplica(
        tmp_path,
        "api-stall",
        etcd_cluster.endpoints,
        region="r",
        extra_args=fenced_replica_args(
            etcd_cluster.endpoints, key_prefix, key_prefix + b"fence", journal
        ),
        env={STALL_HOOK_ENV: needle},
    )
    await replica.start()
    pid = replica.process.pid
    assert pid is not None

    async def stalled_write(name: str, away: bool, freeze: bool) -> tuple[int, Any]:
        """POST namespace `name`; once the replica has stopped before the send, move the
        epoch away (freezing the key or not), wait out grant + margin, resume it."""
        call = asyncio.create_task(
            asyncio.to_thread(
                replica.request, "POST", "/api/v1/namespaces", {"metadata": {"name": name}}, 20
            )
        )

        async def stopped() -> bool:
            return _stopped(pid)

        await _wait_for(stopped)
        if away:
            record = await state.read()
            assert record is not None
            moved = await state.switch("elsewhere", expected_epoch=record.epoch, by="t", reason="t")
            if freeze:
                await fence.freeze()
            await asyncio.sleep(moved.fence_wait + 0.3)
        os.kill(pid, signal.SIGCONT)
        code, _, body = await call
        return code, body

    try:
        # 1. control: the epoch moved, the key was not frozen: the late write commits
        code, body = await stalled_write(f"{needle}-unfrozen", away=True, freeze=False)
        assert code == 201, body
        # back to this region, writable in epoch 3
        record = await state.switch("r", expected_epoch=2, by="t", reason="t")
        await fence.activate(record.epoch)
        await state.unfence(record.epoch)

        async def writable() -> bool:
            probe = {"metadata": {"name": f"w-{uuid.uuid4().hex[:12]}"}}
            code, _, _ = await asyncio.to_thread(
                replica.request, "POST", "/api/v1/namespaces", probe
            )
            return code == 201

        await _wait_for(writable)

        # 2. the same stall, with the freeze every region change makes: refused
        code, body = await stalled_write(f"{needle}-frozen", away=True, freeze=True)
        assert code == 503, body
        assert "frozen since epoch 3" in body["message"] and "data fence" in body["message"]
        assert await client.get(f"/registry/namespaces/{needle}-frozen".encode()) is None
        journaled = [json.loads(line)["key"] for line in journal.read_text().splitlines()]
        assert f"/registry/namespaces/{needle}-unfrozen" in journaled
        assert f"/registry/namespaces/{needle}-frozen" not in journaled
    finally:
        if _stopped(pid):
            os.kill(pid, signal.SIGCONT)
        await replica.stop()
        await client.close()


# ---- a standby writes nothing of its own ---------------------------------------------------


async def test_a_standby_or_frozen_region_writes_nothing_of_its_own(
    region_etcd: EtcdCluster, etcd_cluster, key_prefix: bytes, tmp_path: Path
) -> None:
    """Neither system namespaces (they arrive by replication), nor the controllers' Lease,
    nor a heartbeat: the lifecycle controllers do not even campaign there."""
    control = etcd_cluster.client(timeout=2.0)
    state = GlobalState(control, prefix=key_prefix)
    await state.initialize("r1", by="t", reason="t", fresh=True)
    regional = region_etcd.client(timeout=2.0)
    fence = RegionFence("r2", regional, key=key_prefix + b"fence-r2")
    watched = [
        *(f"/registry/namespaces/{ns}".encode() for ns in SYSTEM_NAMESPACES),
        CONTROLLER_LEASE_KEY,
        HEARTBEAT_KEY,
    ]
    for key in watched:
        await regional.delete(key)

    try:
        for value in (FenceValue.frozen("r2", 1), FenceValue.standby("r1", 1)):
            await fence.swap(await fence.read(), value)
            replica = ApiReplica(
                tmp_path,
                f"api-{value.state}",
                region_etcd.endpoints,
                region="r2",
                extra_args=fenced_replica_args(etcd_cluster.endpoints, key_prefix, fence.key),
            )
            await replica.start()
            await asyncio.sleep(1.5)  # past a renew interval of the controllers' election
            await replica.stop()
            for key in watched:
                assert await regional.get(key) is None, (value, key)
    finally:
        await regional.close()
        await control.close()


async def test_the_writable_regions_controller_leader_puts_the_heartbeat_and_raises_events(
    region_etcd: EtcdCluster, etcd_cluster, key_prefix: bytes, tmp_path: Path
) -> None:
    control = etcd_cluster.client(timeout=2.0)
    record, _ = await GlobalState(control, prefix=key_prefix).initialize(
        "r1", by="t", reason="t", fresh=True
    )
    regional = region_etcd.client(timeout=2.0)
    fence = RegionFence("r1", regional, key=key_prefix + b"fence-r1")
    await fence.swap(await fence.read(), FenceValue.active("r1", record.epoch))
    await regional.delete(HEARTBEAT_KEY)
    epoch = 1000 + uuid.uuid4().int % 100000  # a divergence note of its own
    await GlobalState(control, prefix=key_prefix).record_divergence(
        {"name": str(epoch), "epoch": epoch, "region": "r2", "count": 3, "cut": 41}
    )
    replica = ApiReplica(
        tmp_path,
        "api-hb",
        region_etcd.endpoints,
        region="r1",
        extra_args=fenced_replica_args(etcd_cluster.endpoints, key_prefix, fence.key),
    )
    await replica.start()
    try:
        beats: list[Heartbeat] = []
        for _ in range(100):
            kv = await regional.get(HEARTBEAT_KEY)
            beat = Heartbeat.parse(kv.value) if kv is not None else None
            if beat is not None and (not beats or beat.seq != beats[-1].seq):
                beats.append(beat)
            if len(beats) >= 3:
                break
            await asyncio.sleep(0.1)
        assert len(beats) >= 3, beats
        assert all(b.region == "r1" and b.epoch == record.epoch for b in beats)
        assert beats[0].seq < beats[1].seq < beats[2].seq
        assert abs(beats[-1].time - time.time()) < 5
        # the same leader raised a Kubernetes Event for the divergence a region saved
        path = f"/api/v1/namespaces/kube-system/events/haplane-divergence-{epoch}"
        for _ in range(100):
            status, _, event = replica.request("GET", path)
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200, event
        assert event["reason"] == "DivergenceSaved" and "3 object(s)" in event["message"]
    finally:
        await replica.stop()
        await regional.close()
        await control.close()


def test_the_replication_exclusion_names_the_controllers_lease() -> None:
    assert f"/registry/leases/{LEASE_NAMESPACE}/{LEASE_NAME}".encode() == CONTROLLER_LEASE_KEY


async def test_an_etcd_that_does_not_connect_within_its_timeout_is_no_fence(fenced) -> None:
    """The client's own timeout, not the permission, ended the wait for a member: the refusal
    says etcd, not "permission ran out" (both are 503: nothing was sent)."""
    client, _ = fenced
    inner = EtcdClient(client.inner.endpoints, timeout=0.2)
    ready = inner._ready_endpoint

    async def slow_ready(remaining: float, exclude: set[str]) -> str | None:
        await asyncio.sleep(0.3)
        return await ready(remaining, exclude)

    inner._ready_endpoint = slow_ready  # type: ignore[method-assign]
    namespaces = await _fenced_storage(inner, _fence_ending_in(5.0))
    try:
        with pytest.raises(StatusError) as info:
            await namespaces.create(None, {"metadata": {"name": f"df-{uuid.uuid4().hex[:8]}"}})
    finally:
        await inner.close()
    assert info.value.code == 503 and "etcd" in info.value.message
    assert "permission" not in info.value.message
