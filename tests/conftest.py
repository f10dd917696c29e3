"""Shared fixtures: one real 3-member etcd cluster for the whole session (a fresh key prefix per
test), and a disposable one for tests that kill members."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from haplane.local.etcd_cluster import EtcdCluster


@pytest_asyncio.fixture(scope="session")
async def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-shared"))
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
def key_prefix() -> bytes:
    """Isolates tests sharing `etcd_cluster`."""
    return f"/test/{uuid.uuid4().hex}/".encode()


@pytest_asyncio.fixture
async def disposable_cluster(tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    """A cluster of its own, for tests that kill or pause members."""
    cluster = EtcdCluster(tmp_path)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()
