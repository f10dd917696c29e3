"""The generic store on a real etcd, with interleavings forced where HTTP cannot force them."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from haplane.api.errors import StatusError
from haplane.api.generic_store import GenericStore
from haplane.api.resource_version import VersionContext, parse
from haplane.api.resources import BUILTIN
from haplane.api.storage import EtcdStorage
from haplane.api.watch_cache import CachedStorage, Cacher

TYPES = {t.plural: t for t in BUILTIN}


async def test_a_stale_update_still_conflicts_after_an_internal_retry(etcd_cluster):
    async with etcd_cluster.client() as client:
        versions = VersionContext.for_cluster(await client.cluster_id())
        storage = EtcdStorage(client, versions)
        namespaces = GenericStore(TYPES["namespaces"], storage)
        ns = f"gs-{uuid.uuid4().hex[:8]}"
        await namespaces.create(None, {"metadata": {"name": ns}})
        plain = GenericStore(TYPES["configmaps"], storage)
        created = await plain.create(ns, {"metadata": {"name": "race"}, "data": {"x": "0"}})

        class Interfering:
            """Another writer commits between our read and our write, once."""

            def __init__(self) -> None:
                self.versions = versions
                self.interfered = False

            def __getattr__(self, name):
                return getattr(storage, name)

            async def guaranteed_update(self, key, update, **kw):
                async def interleaved(current):
                    if not self.interfered:
                        self.interfered = True
                        await plain.update(ns, "race", dict(created, data={"x": "other"}))
                    return await update(current)

                return await storage.guaranteed_update(key, interleaved, **kw)

        racing = GenericStore(TYPES["configmaps"], Interfering())  # type: ignore[arg-type]
        with pytest.raises(StatusError) as ei:
            await racing.update(ns, "race", dict(created, data={"x": "mine"}))
        assert ei.value.code == 409
        assert (await plain.get(ns, "race"))["data"] == {"x": "other"}


async def test_a_create_checked_against_a_stale_cached_namespace_is_refused(etcd_cluster):
    """The cached namespace may lag etcd (a stalled watch): the create's transaction compares
    the namespace's revision, so a namespace terminating or deleted meanwhile is noticed."""
    client = etcd_cluster.client(timeout=2.0)
    try:
        storage = EtcdStorage(client, VersionContext.for_cluster(await client.cluster_id()))
        namespaces = GenericStore(TYPES["namespaces"], storage)
        ns = f"stale-{uuid.uuid4().hex[:8]}"
        stale = await namespaces.create(None, {"metadata": {"name": ns}})
        cache = {"ns": stale}
        store = GenericStore(TYPES["configmaps"], storage, lambda name: (cache["ns"], True))
        assert (await store.create(ns, {"metadata": {"name": "fresh"}}))["metadata"]["uid"]
        await namespaces.delete(None, ns)  # marks it Terminating (its finalizer holds it)
        with pytest.raises(StatusError) as info:
            await store.create(ns, {"metadata": {"name": "late"}})
        assert info.value.code == 403 and "terminated" in info.value.message
        with pytest.raises(StatusError):
            await store.get(ns, "late")
    finally:
        await client.close()


async def test_lifecycle_scan_is_the_same_from_the_cache_and_from_etcd(etcd_cluster):
    """The controllers' view of a resource: from the watch cache's indexes on a cached replica,
    from one list on a replica without a cache. Both must name the same objects."""
    client = etcd_cluster.client(timeout=2.0)
    cacher = None
    try:
        storage = EtcdStorage(client, VersionContext.for_cluster(await client.cluster_id()))
        ns = f"scan-{uuid.uuid4().hex[:8]}"
        await GenericStore(TYPES["namespaces"], storage).create(None, {"metadata": {"name": ns}})
        plain = GenericStore(TYPES["configmaps"], storage)
        owner = await plain.create(ns, {"metadata": {"name": "owner"}})
        ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner"}
        ref["uid"] = owner["metadata"]["uid"]
        await plain.create(ns, {"metadata": {"name": "dep", "ownerReferences": [ref]}})
        await plain.create(ns, {"metadata": {"name": "held", "finalizers": ["test/hold"]}})
        await plain.delete(ns, "held")  # marked, held by its finalizer
        last = await plain.create(ns, {"metadata": {"name": "bystander"}})
        cacher = Cacher(storage, TYPES["configmaps"].key_prefix())
        cacher.start()
        cached = GenericStore(TYPES["configmaps"], CachedStorage(storage, cacher))
        written = parse(storage.versions, last["metadata"]["resourceVersion"]).revision
        for _ in range(500):
            if cacher.ready and cacher.revision >= written:
                break
            await asyncio.sleep(0.02)

        def mine(scan) -> tuple[list[str], set[str]]:
            names = [
                o["metadata"]["name"] for o in scan.objects if o["metadata"]["namespace"] == ns
            ]
            uids = {o["metadata"]["name"] for o in scan.by_uid.values()}
            return names, uids & {"owner", "dep", "held", "bystander"}

        from_cache, from_etcd = await cached.lifecycle_scan(), await plain.lifecycle_scan()
        assert (
            mine(from_cache)
            == mine(from_etcd)
            == (
                ["dep", "held"],
                {"owner", "dep", "held", "bystander"},
            )
        )
        assert all(o["kind"] == "ConfigMap" for o in from_cache.objects)  # stamped copies
    finally:
        if cacher is not None:
            await cacher.stop()
        await client.close()


async def test_an_unchanged_update_of_an_object_an_older_encoder_wrote_is_no_write(etcd_cluster):
    """Stored bytes from the standard library's encoder (non-ASCII escaped) differ from
    orjson's for the same object: an update that changes nothing must still not write."""
    import json

    client = etcd_cluster.client(timeout=2.0)
    try:
        storage = EtcdStorage(client, VersionContext.for_cluster(await client.cluster_id()))
        key = f"/registry/configmaps/enc/{uuid.uuid4().hex[:8]}"
        obj = {"metadata": {"name": "n", "namespace": "enc"}, "data": {"t": "é\u2028", "f": 1.5e-7}}
        old_bytes = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
        revision = await client.put(key.encode(), old_bytes)

        async def same(current: dict) -> dict:
            return current

        async def changed(current: dict) -> dict:
            current["data"]["t"] = "è"
            return current

        result = await storage.guaranteed_update(key, same)
        assert parse(storage.versions, result["metadata"]["resourceVersion"]).revision == revision
        result = await storage.guaranteed_update(key, changed)
        assert parse(storage.versions, result["metadata"]["resourceVersion"]).revision > revision
        assert (await storage.get(key))["data"] == {"t": "è", "f": 1.5e-7}
    finally:
        await client.close()
