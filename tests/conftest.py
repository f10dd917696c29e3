"""Shared fixtures: one real 3-member etcd cluster for the whole session (a fresh key prefix per
test), a disposable one for tests that kill members, and whole topologies started from a file."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from tests.topology_helpers import down_and_check, haplane, status


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


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A state dir for a whole topology; at the end `haplane down` runs and nothing may be left."""
    root = tmp_path / "state"
    yield root
    down_and_check(root)


@pytest.fixture
def start_topology(state: Path) -> Callable[..., dict[str, Any]]:
    """Start a whole topology from a file (or `example=NAME`) with `haplane up -d`; returns its
    `status --json`. Stopped at the end of the test by the `state` fixture."""

    def start(file: Path | None = None, *, example: str | None = None) -> dict[str, Any]:
        source = ["--example", example] if example else [str(file)]
        haplane(state, "up", "-d", *source)
        return status(state)

    return start


@pytest_asyncio.fixture(scope="session")
async def api_replicas(
    etcd_cluster: EtcdCluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[list[ApiReplica]]:
    """Two API server replica processes on the shared etcd cluster (region "test")."""
    root = tmp_path_factory.mktemp("api")
    replicas = [ApiReplica(root, f"api-{i}", etcd_cluster.endpoints) for i in (1, 2)]
    try:
        for r in replicas:
            await r.start()
        yield replicas
    finally:
        for r in replicas:
            await r.stop()


@pytest_asyncio.fixture(scope="module")
async def lone_replica(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ApiReplica]:
    """One replica on a one-member etcd of its own, for a module whose tests change what is
    cluster-wide (CRDs, policies): it leads, so its controllers run."""
    root = tmp_path_factory.mktemp("lone")
    cluster = EtcdCluster(root / "etcd", size=1)
    await cluster.start()
    replica = ApiReplica(root, "lone-1", cluster.endpoints)
    try:
        await replica.start()
        yield replica
    finally:
        await replica.stop()
        await cluster.stop()


@pytest.fixture
def namespace(api_replicas: list[ApiReplica]) -> Iterator[str]:
    """A fresh namespace per test: tests share the API servers and their etcd."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    api_replicas[0].request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
