"""The generic store on a real etcd, with interleavings forced where HTTP cannot force them."""

from __future__ import annotations

import uuid

import pytest

from haplane.api.errors import StatusError
from haplane.api.generic_store import GenericStore
from haplane.api.resource_version import VersionContext
from haplane.api.resources import BUILTIN
from haplane.api.storage import EtcdStorage

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
