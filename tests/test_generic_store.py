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
