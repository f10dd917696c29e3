"""The operators' failback setting: `GlobalState.failback_setting`/`set_failback` on a real etcd,
and `haplane failback on|off|status` against it (the CLI's one seam to the global control etcd,
`global_control.control_client`, points at the shared test cluster)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from haplane.cli.main import app
from haplane.local import global_control
from haplane.store import EtcdClient, EtcdError, GlobalState
from haplane.store.global_state import DEFAULT_PREFIX
from haplane.topology.loader import example_text


async def test_absent_means_enabled_and_the_last_word_wins(etcd_cluster, key_prefix):
    client = etcd_cluster.client(timeout=2.0)
    state = GlobalState(client, prefix=key_prefix)
    try:
        assert state.failback_key == key_prefix + b"failback"
        absent = await state.failback_setting()
        assert absent.enabled and absent.by is None and absent.revision == 0
        off = await state.set_failback(False, by="operator:alice", reason="switchover to b")
        read = await state.failback_setting()
        assert read == off and not read.enabled and read.since and read.revision > 0
        await state.set_failback(True, by="operator:bob", reason="b is fine")
        assert (await state.failback_setting()).by == "operator:bob"
        for bad in (b"{", b'{"enabled": "no"}', b"{}"):
            await client.put(state.failback_key, bad)
            with pytest.raises(EtcdError, match="malformed failback setting"):
                await state.failback_setting()
    finally:
        await client.close()


@pytest.fixture
def state_dir(tmp_path: Path, etcd_cluster, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state dir whose topology enables failback, its global control etcd the shared test
    cluster (default prefix: no other test uses it there), the setting deleted first."""
    doc = yaml.safe_load(example_text("two-regions"))
    doc["spec"]["global"]["failover"]["failback"] = True
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(doc))

    def client(topology, state, timeout=2.0):
        return EtcdClient(etcd_cluster.endpoints, timeout=timeout)

    monkeypatch.setattr(global_control, "control_client", client)

    async def forget() -> None:
        async with EtcdClient(etcd_cluster.endpoints, timeout=2.0) as c:
            await c.delete(DEFAULT_PREFIX + b"failback")

    asyncio.run(forget())
    return tmp_path


def failback(state_dir: Path, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["failback", *args, "--state-dir", str(state_dir)])
    return r.exit_code, r.output


def test_off_status_on(state_dir):
    code, out = failback(state_dir, "status")
    assert code == 0 and "not suspended (never set)" in out and "automatic failback: yes" in out
    code, out = failback(state_dir, "off", "--reason", "maintenance in eu-west")
    assert code == 0 and "suspended by operator" in out and "maintenance in eu-west" in out
    code, out = failback(state_dir, "status")
    assert code == 0 and "SUSPENDED by operator" in out and "automatic failback: no" in out
    code, out = failback(state_dir, "status", "--json")
    doc = json.loads(out)
    assert doc["configured"] and doc["suspended"] and not doc["effective"]
    assert doc["reason"] == "maintenance in eu-west" and doc["since"]
    code, out = failback(state_dir, "on")
    assert code == 0 and "resumed" in out
    assert json.loads(failback(state_dir, "status", "--json")[1])["effective"]


def test_status_says_when_the_topology_leaves_failback_off(state_dir):
    doc = yaml.safe_load((state_dir / "topology.yaml").read_text())
    doc["spec"]["global"]["failover"]["failback"] = False
    (state_dir / "topology.yaml").write_text(yaml.safe_dump(doc))
    code, out = failback(state_dir, "status")
    assert code == 0 and "failback off" in out and "automatic failback: no" in out
    r = CliRunner().invoke(app, ["failback", "on", "--state-dir", str(state_dir)])
    assert r.exit_code == 0 and "does not enable failback" in r.output


def test_errors_exit_1(tmp_path, monkeypatch):
    code, out = failback(tmp_path, "status")
    assert code == 1 and "no topology has been started" in out
    (tmp_path / "topology.yaml").write_text(example_text("two-regions"))
    monkeypatch.setattr(
        global_control,
        "control_client",
        lambda topology, state, timeout=2.0: EtcdClient(["127.0.0.1:9"], timeout=0.2),
    )
    code, out = failback(tmp_path, "off")
    assert code == 1 and "did not answer" in out


def test_the_command_module_imports_light():
    """`haplane` builds every command at start-up: this one must not pull in etcd or grpc."""
    probe = (
        "import sys, haplane.cli.failback; "
        "print([m for m in ('grpc', 'haplane.store', 'haplane.topology', 'haplane.local') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
