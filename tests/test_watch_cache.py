"""The watch cache on a real etcd: it mirrors etcd, replays its window, survives a member
failure without relisting, relists only on compaction, and serves streaming lists."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
import uuid

import pytest

from haplane.api.resource_version import VersionContext
from haplane.api.storage import DELETE_OBJECT, EtcdStorage, Expired
from haplane.api.watch_cache import Cacher
from haplane.local.etcd_cluster import EtcdCluster


async def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met")


async def _storage(cluster: EtcdCluster) -> tuple[EtcdStorage, object]:
    client = cluster.client(timeout=1.0)
    versions = VersionContext.for_cluster(await client.cluster_id())
    return EtcdStorage(client, versions), client


def _obj(name: str, v: str = "1") -> dict:
    return {"metadata": {"name": name, "namespace": "ns"}, "data": {"v": v}}


async def test_cache_mirrors_etcd_and_replays_its_window(etcd_cluster):
    storage, client = await _storage(etcd_cluster)
    prefix = f"/registry/cachetest-{uuid.uuid4().hex[:6]}/"
    await storage.create(f"{prefix}ns/a", _obj("a"))
    cacher = Cacher(storage, prefix, history=3)
    cacher.start()
    try:
        await _wait(lambda: cacher.ready)
        assert set(cacher.objects) == {f"{prefix}ns/a"}
        start = cacher.revision
        for i in range(5):
            await storage.guaranteed_update(
                f"{prefix}ns/a", lambda cur, i=i: _async({**cur, "data": {"v": str(i)}})
            )
        await _wait(lambda: cacher.objects[f"{prefix}ns/a"]["data"]["v"] == "4")
        # the window holds the last 3 events: older starts are 410, newer ones replay
        with pytest.raises(Expired):
            async for _ in cacher.watch(prefix, start):
                pass
        recent = cacher.revision - 2
        got = []
        async for ev in cacher.watch(prefix, recent):
            got.append(ev.object["data"]["v"])
            if len(got) == 2:
                break
        assert got == ["3", "4"]
        items, rev = cacher.snapshot(prefix)
        assert [i["data"]["v"] for i in items] == ["4"] and rev == cacher.revision
    finally:
        await cacher.stop()
        await client.close()


async def _async(value):
    return value


async def test_member_failure_resumes_without_relisting(tmp_path):
    cluster = EtcdCluster(tmp_path)
    await cluster.start()
    storage, client = await _storage(cluster)
    prefix = "/registry/things/"
    cacher = Cacher(storage, prefix)
    cacher.start()
    try:
        await _wait(lambda: cacher.ready)
        assert cacher.relists == 1
        seen: list[str] = []

        async def follow() -> None:
            async for ev in cacher.watch(prefix, cacher.revision):
                seen.append(ev.object["metadata"]["name"])

        follower = asyncio.create_task(follow())
        await storage.create(f"{prefix}ns/before", _obj("before"))
        await cluster.processes[cluster.names[0]].fault("kill")
        for i in range(5):
            while True:
                try:
                    await storage.create(f"{prefix}ns/after-{i}", _obj(f"after-{i}"))
                    break
                except Exception:
                    await asyncio.sleep(0.1)
        await _wait(lambda: len(seen) >= 6, timeout=15)
        assert seen[:1] == ["before"] and sorted(seen[1:]) == [f"after-{i}" for i in range(5)]
        assert cacher.relists == 1  # resumed from its revision, no relist

        follower.cancel()
    finally:
        await cacher.stop()
        await client.close()  # type: ignore[attr-defined]
        await cluster.stop()


async def test_a_compacted_revision_makes_the_cache_relist(etcd_cluster):
    storage, client = await _storage(etcd_cluster)
    prefix = f"/registry/compact-{uuid.uuid4().hex[:6]}/"
    first = await storage.create(f"{prefix}ns/a", _obj("a"))
    # a watch from stale_revision + 1 starts below the compaction point
    stale_revision = int(first["metadata"]["resourceVersion"].split(".")[0]) - 1
    latest = await storage.create(f"{prefix}ns/b", _obj("b"))
    await client.compact(int(latest["metadata"]["resourceVersion"].split(".")[0]))

    class StaleOnce:
        """The first list reports a revision that etcd has compacted away since."""

        def __init__(self) -> None:
            self.calls = 0

        def __getattr__(self, name):
            return getattr(storage, name)

        async def list(self, prefix, **kw):
            self.calls += 1
            result = await storage.list(prefix, **kw)
            if self.calls == 1:
                from dataclasses import replace

                return replace(result, revision=stale_revision)
            return result

    cacher = Cacher(StaleOnce(), prefix)  # type: ignore[arg-type]
    cacher.start()
    try:
        await _wait(lambda: cacher.relists >= 2 and cacher.ready)
        assert set(cacher.objects) == {f"{prefix}ns/a", f"{prefix}ns/b"}
        await storage.create(f"{prefix}ns/c", _obj("c"))
        await _wait(lambda: f"{prefix}ns/c" in cacher.objects)
    finally:
        await cacher.stop()
        await client.close()


def test_cached_list_and_get_match_etcd(api_replicas, namespace):
    api = api_replicas[0]
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    for i in range(3):
        api.request("POST", base, {"metadata": {"name": f"c{i}", "labels": {"i": str(i)}}})
    fresh = api.request("GET", base)[2]

    def cached() -> dict:
        return api.request("GET", f"{base}?resourceVersion=0")[2]

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(cached()["items"]) < 3:
        time.sleep(0.05)
    assert [i["metadata"] for i in cached()["items"]] == [i["metadata"] for i in fresh["items"]]
    assert [
        i["metadata"]["name"]
        for i in api.request("GET", f"{base}?resourceVersion=0&labelSelector=i%3D1")[2]["items"]
    ] == ["c1"]
    status, _, one = api.request("GET", f"{base}/c2?resourceVersion=0")
    assert status == 200 and one["metadata"]["name"] == "c2"
    assert api.request("GET", f"{base}/nope?resourceVersion=0")[0] == 404


def test_streaming_list_sends_initial_events_then_a_bookmark(api_replicas, namespace):
    api = api_replicas[1]
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    for n in ("s1", "s2"):
        api.request("POST", base, {"metadata": {"name": n}})
    events: list[dict] = []

    def stream() -> None:
        url = (
            f"{api.url}{base}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true"
            "&resourceVersionMatch=NotOlderThan&timeoutSeconds=5"
        )
        with urllib.request.urlopen(url, timeout=10) as resp:
            for line in resp:
                events.append(json.loads(line))
                if len(events) == 4:
                    return

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.8)
    api.request("POST", base, {"metadata": {"name": "s3"}})
    t.join(timeout=10)
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "BOOKMARK", "ADDED"]
    assert {e["object"]["metadata"]["name"] for e in events[:2]} == {"s1", "s2"}
    assert events[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert events[3]["object"]["metadata"]["name"] == "s3"
    status, _, _ = api.request("GET", f"{base}?watch=true&sendInitialEvents=true")
    assert status == 422


async def test_a_watcher_that_falls_behind_is_ended_with_410(etcd_cluster, monkeypatch):
    from haplane.api import watch_cache

    monkeypatch.setattr(watch_cache, "WATCHER_QUEUE", 3)
    storage, client = await _storage(etcd_cluster)
    prefix = f"/registry/slow-{uuid.uuid4().hex[:6]}/"
    cacher = Cacher(storage, prefix)
    cacher.start()
    try:
        await _wait(lambda: cacher.ready)
        stream = cacher.watch(prefix, cacher.revision)
        first = asyncio.ensure_future(anext(stream))  # registered, then not reading
        await asyncio.sleep(0.1)
        for i in range(8):
            await storage.create(f"{prefix}ns/o{i}", _obj(f"o{i}"))
        await _wait(lambda: len(cacher.objects) == 8)
        got = [(await first).object["metadata"]["name"]]
        with pytest.raises(Expired):
            while True:
                got.append((await anext(stream)).object["metadata"]["name"])
        # the pending read took o0, three more were queued, then 410 (not a silent hang)
        assert got == ["o0", "o1", "o2", "o3"]
    finally:
        await cacher.stop()
        await client.close()


async def test_snapshots_of_one_namespace_follow_creates_and_deletes(etcd_cluster):
    storage, client = await _storage(etcd_cluster)
    prefix = f"/registry/bucket-{uuid.uuid4().hex[:6]}/"
    for ns, name in (("a", "x"), ("ab", "y"), ("a", "z"), ("b", "w")):
        await storage.create(f"{prefix}{ns}/{name}", _in(ns, name))
    cacher = Cacher(storage, prefix)
    cacher.start()
    try:
        await _wait(lambda: cacher.ready)

        def names(sub: str) -> list[str]:
            return [o["metadata"]["name"] for o in cacher.snapshot(prefix + sub)[0]]

        assert names("a/") == ["x", "z"]  # not the objects of namespace "ab"
        assert names("") == ["x", "z", "y", "w"]  # sorted by key: a/x a/z ab/y b/w
        await storage.create(f"{prefix}a/m", _in("a", "m"))
        key = f"{prefix}a/x"
        await storage.guaranteed_update(key, lambda cur: _async(DELETE_OBJECT))
        await _wait(lambda: names("a/") == ["m", "z"])
        assert names("missing/") == []
    finally:
        await cacher.stop()
        await client.close()


def _in(namespace: str, name: str) -> dict:
    return {"metadata": {"name": name, "namespace": namespace}}


async def test_lifecycle_indexes_follow_owner_references_deletion_and_recreation(etcd_cluster):
    """The controllers read these indexes instead of scanning the resource: they must follow
    every change, including a key deleted and created again with a new uid."""
    storage, client = await _storage(etcd_cluster)
    prefix = f"/registry/index-{uuid.uuid4().hex[:6]}/"

    def obj(name: str, uid: str, **meta: object) -> dict:
        return {"metadata": {"name": name, "namespace": "a", "uid": uid, **meta}}

    owner_ref = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u-owner"}]
    await storage.create(f"{prefix}a/owner", obj("owner", "u-owner"))
    await storage.create(f"{prefix}a/dep", obj("dep", "u-dep", ownerReferences=owner_ref))
    cacher = Cacher(storage, prefix)
    cacher.start()
    try:
        await _wait(lambda: cacher.ready)
        assert set(cacher.by_uid) == {"u-owner", "u-dep"}
        assert list(cacher.lifecycle) == [f"{prefix}a/dep"]  # only the one with an owner

        # a plain object marked for deletion joins; losing its owners, the dependent leaves
        def mark(cur: dict) -> dict:
            cur["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            cur["metadata"]["finalizers"] = ["x"]
            return cur

        def orphan(cur: dict) -> dict:
            del cur["metadata"]["ownerReferences"]
            return cur

        await storage.guaranteed_update(f"{prefix}a/owner", lambda cur: _async(mark(cur)))
        await storage.guaranteed_update(f"{prefix}a/dep", lambda cur: _async(orphan(cur)))
        await _wait(lambda: list(cacher.lifecycle) == [f"{prefix}a/owner"])

        # deleted, then created again under the same key with another uid
        await storage.guaranteed_update(f"{prefix}a/dep", lambda cur: _async(DELETE_OBJECT))
        await _wait(lambda: "u-dep" not in cacher.by_uid)
        await storage.create(f"{prefix}a/dep", obj("dep", "u-dep2", ownerReferences=owner_ref))
        await _wait(lambda: "u-dep2" in cacher.by_uid)
        assert set(cacher.by_uid) == {"u-owner", "u-dep2"}
        assert sorted(cacher.lifecycle) == [f"{prefix}a/dep", f"{prefix}a/owner"]
        assert cacher.by_uid["u-dep2"] is cacher.objects[f"{prefix}a/dep"]
    finally:
        await cacher.stop()
        await client.close()


async def test_every_event_of_a_revision_with_several_reaches_a_watcher(etcd_cluster):
    """A replicated transaction puts several objects at one etcd revision: a watcher of the
    cache gets each of them, not only the first."""
    from haplane.store import Op

    storage, client = await _storage(etcd_cluster)
    prefix = f"/registry/cachetest-{uuid.uuid4().hex[:6]}/"
    cacher = Cacher(storage, prefix)
    cacher.start()
    try:
        await _wait(lambda: cacher.ready)
        got: list[tuple[str, str]] = []

        async def watch() -> None:
            async for ev in cacher.watch(prefix, None):
                got.append((ev.type, ev.object["metadata"]["name"]))
                if len(got) == 3:
                    return

        task = asyncio.create_task(watch())
        await asyncio.sleep(0.2)
        await client.txn(
            [],
            [
                Op("put", f"{prefix}ns/a".encode(), json.dumps(_obj("a")).encode()),
                Op("put", f"{prefix}ns/b".encode(), json.dumps(_obj("b")).encode()),
                Op("put", f"{prefix}ns/c".encode(), json.dumps(_obj("c")).encode()),
            ],
        )
        await asyncio.wait_for(task, 5)
        assert got == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]
    finally:
        await cacher.stop()
        await client.close()
