"""KMS v2 plugins on unix sockets (`haplane.auth.kms_client`), against haplane's reference plugin
(`python -m haplane.auth.kms_plugin`) as a real process speaking Kubernetes' KMS v2 gRPC API:
round trip with the plugin's annotations, a key rotated in the plugin, the plugin stopped,
hung, unhealthy, or encrypting under another key id than its Status names; then real API
replicas on real etcd writing Secrets through it, the plugin stopped and hung under them."""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from haplane.auth.encryption import (
    EncryptedObject,
    EncryptionError,
    LocalKek,
    create_local_key,
)
from haplane.auth.kms_client import KmsPlugin, KmsV2Plugin
from haplane.auth.kms_plugin import ANNOTATION, FORMAT, PluginProcess
from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import EtcdClient
from tests.test_encryption_at_rest import marker, secret, stored
from tests.topology_helpers import files_holding

KEY = b"/registry/secrets/default/db"
MARKER = b'{"data":{"password":"aHVudGVyMg=="}}'
SECRETS = "/api/v1/namespaces/default/secrets"


@pytest.fixture
def kms_dir() -> Iterator[Path]:
    """A short directory for sockets (a unix socket's path takes at most 107 bytes; pytest's
    tmp_path can be longer)."""
    root = Path(tempfile.mkdtemp(prefix="kms-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def plugin(kms_dir: Path) -> Iterator[PluginProcess]:
    """The reference plugin serving `kms_dir/kms.sock`, keys `current.key` (it wraps) and
    `previous.key`; stopped at the end."""
    keys = [kms_dir / "current.key", kms_dir / "previous.key"]
    for k in keys:
        create_local_key(k)
    p = PluginProcess(kms_dir / "kms.sock", keys)
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def provider(plugin: PluginProcess) -> Iterator[Callable[..., KmsV2Plugin]]:
    """New providers on the plugin ("replicas" that have unwrapped nothing yet), closed at
    the end."""
    made: list[KmsV2Plugin] = []

    def make(timeout: float = 2.0) -> KmsV2Plugin:
        made.append(KmsV2Plugin("vault", KmsPlugin(plugin.endpoint, timeout)))
        return made[-1]

    yield make
    for p in made:
        p.close()


def rotate(plugin: PluginProcess) -> str:
    """Kubernetes-style rotation in the plugin: the current key becomes the previous one, a new
    one is current, SIGHUP; returns the new key id once Status names it."""
    current, previous = plugin.keys
    current.replace(previous)
    create_local_key(current)
    new_id = LocalKek(current).key_id()
    plugin.signal(signal.SIGHUP)
    probe = KmsPlugin(plugin.endpoint, 2.0)
    try:
        deadline = time.monotonic() + 10
        while probe.status().key_id != new_id:
            assert time.monotonic() < deadline, "the plugin did not read its keys again"
            time.sleep(0.05)
    finally:
        probe.close()
    return new_id


def decoded(p: KmsV2Plugin, value: bytes) -> EncryptedObject:
    return EncryptedObject.decode(value[len(p.prefix()) :])


def eventually(attempt: Callable[[], bytes], within: float = 10.0) -> bytes:
    deadline = time.monotonic() + within
    while True:
        try:
            return attempt()
        except EncryptionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_round_trip_keeps_the_plugins_key_id_and_annotations(
    plugin: PluginProcess, provider: Callable[..., KmsV2Plugin]
):
    writer = provider()
    value = writer.encrypt(MARKER, KEY)
    assert value.startswith(b"k8s:enc:kms:v2:vault:") and b"aHVudGVy" not in value
    obj = decoded(writer, value)
    assert obj.key_id == LocalKek(plugin.keys[0]).key_id()
    assert obj.annotations == ((ANNOTATION, FORMAT),)  # stored for Decrypt, as Kubernetes does
    assert obj.source_type == 1
    assert writer.decrypt(value, KEY) == MARKER
    # another replica: it has to ask the plugin's Decrypt, with the key id and annotations
    assert provider().decrypt(value, KEY) == MARKER
    bare = EncryptedObject(obj.encrypted_data, obj.key_id, obj.encrypted_dek_source)
    with pytest.raises(EncryptionError, match=f"{plugin.endpoint}: Decrypt failed.*{ANNOTATION}"):
        provider().decrypt(writer.prefix() + bare.encode(), KEY)
    # one seed per provider: a second write wraps nothing new
    assert decoded(writer, writer.encrypt(MARKER, KEY)).encrypted_dek_source == (
        obj.encrypted_dek_source
    )


def test_a_key_rotated_in_the_plugin_makes_a_new_seed(
    plugin: PluginProcess, provider: Callable[..., KmsV2Plugin]
):
    writer = provider()
    old = writer.encrypt(MARKER, KEY)
    new_id = rotate(plugin)
    assert decoded(writer, writer.encrypt(MARKER, KEY)).key_id != new_id  # until the next poll
    writer.refresh()  # what the background poll does every minute
    new = writer.encrypt(MARKER, KEY)
    assert decoded(writer, new).key_id == new_id
    assert decoded(writer, new).encrypted_dek_source != decoded(writer, old).encrypted_dek_source
    reader = provider()  # values under the old key still open (the plugin keeps it)
    assert reader.decrypt(old, KEY) == MARKER and reader.decrypt(new, KEY) == MARKER
    assert writer.decrypt(old, KEY) == MARKER


def test_the_plugin_stopped(plugin: PluginProcess, provider: Callable[..., KmsV2Plugin]):
    writer = provider()
    value = writer.encrypt(MARKER, KEY)
    plugin.stop()
    # a seed already unwrapped needs no plugin; the writer's seed serves on for a while
    assert writer.decrypt(value, KEY) == MARKER
    assert writer.decrypt(writer.encrypt(MARKER, KEY), KEY) == MARKER
    # a new provider has no seed: the write fails at once, naming the socket
    fresh = provider()
    t0 = time.monotonic()
    with pytest.raises(EncryptionError, match=f"no data key yet: KMS plugin {plugin.endpoint}"):
        fresh.encrypt(MARKER, KEY)
    assert time.monotonic() - t0 < 1.0  # at once: no poll to wait for
    with pytest.raises(EncryptionError, match=f"{plugin.endpoint}.*not reachable"):
        fresh.decrypt(value, KEY)
    # Kubernetes' limit: no writes on a seed whose key id went unconfirmed for 3 minutes
    writer.write_ttl = 0.0
    with pytest.raises(EncryptionError, match=f"last confirmed by KMS plugin {plugin.endpoint}"):
        writer.encrypt(MARKER, KEY)
    # back: the failures woke the polls, which find it again (well before their 10 s)
    plugin.start()
    assert fresh.decrypt(eventually(lambda: fresh.encrypt(MARKER, KEY), 4.0), KEY) == MARKER
    assert eventually(lambda: fresh.decrypt(value, KEY)) == MARKER
    writer.write_ttl = 180.0
    assert writer.decrypt(eventually(lambda: writer.encrypt(MARKER, KEY)), KEY) == MARKER


def test_a_hung_plugin_fails_within_the_timeout(
    plugin: PluginProcess, provider: Callable[..., KmsV2Plugin]
):
    value = provider().encrypt(MARKER, KEY)
    plugin.fault(hang=["Status", "Encrypt", "Decrypt"])
    fresh = provider(timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(EncryptionError, match=f"{plugin.endpoint}.*0.5s"):
        fresh.encrypt(MARKER, KEY)
    assert 0.4 < time.monotonic() - t0 < 3.0
    reader = provider(timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(EncryptionError, match=f"{plugin.endpoint}: Decrypt did not answer"):
        reader.decrypt(value, KEY)
    assert 0.4 < time.monotonic() - t0 < 3.0
    # the next reads of unknown seeds do not wait again: one timeout per outage
    t0 = time.monotonic()
    with pytest.raises(EncryptionError, match="not asked again until it answers"):
        reader.decrypt(value, KEY)
    assert time.monotonic() - t0 < 0.3
    plugin.fault()
    assert eventually(lambda: reader.decrypt(value, KEY)) == MARKER
    assert fresh.decrypt(eventually(lambda: fresh.encrypt(MARKER, KEY)), KEY) == MARKER


def test_a_plugin_hung_in_decrypt_alone_costs_one_timeout(
    plugin: PluginProcess, provider: Callable[..., KmsV2Plugin]
):
    """Status and Encrypt answer, Decrypt hangs: the reader waits once, then fails at once
    while the poll's own Decrypt probe (off the loop) keeps failing; back when it answers."""
    value = provider().encrypt(MARKER, KEY)
    reader = provider(timeout=0.5)
    reader.encrypt(MARKER, KEY)  # its own seed: what the poll's probe unwraps
    plugin.fault(hang=["Decrypt"])
    slow = 0
    deadline = time.monotonic() + 4.0  # several poke-driven polls (at most one a second)
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        with pytest.raises(EncryptionError, match=f"{plugin.endpoint}"):
            reader.decrypt(value, KEY)
        slow += time.monotonic() - t0 > 0.3
        time.sleep(0.05)
    assert slow == 1, slow
    plugin.fault()
    assert eventually(lambda: reader.decrypt(value, KEY)) == MARKER


def test_an_unhealthy_plugin_takes_no_writes_but_reads(
    plugin: PluginProcess, provider: Callable[..., KmsV2Plugin]
):
    value = provider().encrypt(MARKER, KEY)
    plugin.fault(healthz="vault is sealed")
    fresh = provider()
    with pytest.raises(EncryptionError, match="not healthy: 'vault is sealed'"):
        fresh.encrypt(MARKER, KEY)
    assert fresh.decrypt(value, KEY) == MARKER  # Decrypt works: Kubernetes reads regardless
    plugin.fault(version="v1")
    with pytest.raises(EncryptionError, match="API version 'v1'"):
        fresh.refresh()


def test_encrypt_must_use_the_key_status_names(
    plugin: PluginProcess, provider: Callable[..., KmsV2Plugin]
):
    writer = provider()
    old_id = decoded(writer, writer.encrypt(MARKER, KEY)).key_id
    plugin.fault(encrypt_key_id="another-key")
    with pytest.raises(EncryptionError, match="under key id 'another-key', but Status says"):
        provider().encrypt(MARKER, KEY)
    # a rotation whose Encrypt answers another key id is not taken: the old seed serves on
    rotate(plugin)
    with pytest.raises(EncryptionError, match="another-key"):
        writer.refresh()
    assert decoded(writer, writer.encrypt(MARKER, KEY)).key_id == old_id
    plugin.fault()
    writer.refresh()
    assert decoded(writer, writer.encrypt(MARKER, KEY)).key_id != old_id


def plugin_config(endpoint: str, timeout: str = "3s", name: str = "vault") -> str:
    return f"""apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - kms:
          apiVersion: v2
          name: {name}
          endpoint: {endpoint}
          timeout: {timeout}
      - identity: {{}}
"""


async def test_rewrite_moves_values_to_the_plugins_current_key(
    disposable_cluster: EtcdCluster, plugin: PluginProcess, tmp_path: Path
):
    """A key rotated inside the plugin keeps the provider's name: `haplane secrets rewrite`
    re-seals the values under the older key id too (found by their key id, not their
    prefix), and a second run finds nothing left."""
    from haplane.api.encryption import stored_types, transformers
    from haplane.local import secrets_ops
    from haplane.local.state_dir import StateDir
    from haplane.store import FENCE_KEY, GlobalState

    config = tmp_path / "kms.yaml"
    config.write_text(plugin_config(plugin.endpoint))
    before = after = transformers(config, stored_types())
    client = disposable_cluster.client(timeout=2.0)
    keys = [f"/registry/secrets/default/r{i}".encode() for i in range(4)]
    try:
        await GlobalState(client).initialize("r", by="t", reason="t", fresh=True)
        await client.put(FENCE_KEY, b"active:r@1")
        for key in keys:
            await client.put(key, before.to_storage(MARKER, key))
        old_id = LocalKek(plugin.keys[0]).key_id()
        new_id = rotate(plugin)
        after = transformers(config, stored_types())  # (a CLI run after the rotation)
        state = StateDir(tmp_path / "state")
        out = await secrets_ops.rewrite(state, client, {"r": client}, after, settle=0.05)
        assert (out.examined, out.rewritten) == (4, 4), out
        for key in keys:
            kv = await client.get(key)
            assert kv is not None
            assert (
                EncryptedObject.decode(kv.value[len(b"k8s:enc:kms:v2:vault:") :]).key_id == new_id
            )
            assert after.from_storage(kv.value, key) == MARKER
        out = await secrets_ops.rewrite(state, client, {"r": client}, after, settle=0.05)
        assert out.rewritten == 0 and old_id != new_id
    finally:
        for t in {id(before): before, id(after): after}.values():
            t.close()
        await client.close()


def test_a_reload_keeps_an_unchanged_plugin_provider(plugin: PluginProcess, tmp_path: Path):
    from haplane.api.encryption import ReloadingTransformers, stored_types

    config = tmp_path / "enc.yaml"
    config.write_text(plugin_config(plugin.endpoint))
    t = ReloadingTransformers(config, stored_types())
    try:
        (first,) = [p for p in t.current.providers() if isinstance(p, KmsV2Plugin)]
        value = t.to_storage(MARKER, KEY)
        # another file, the same provider: the same seed, no new Encrypt
        config.write_text(plugin_config(plugin.endpoint) + "  - resources: [configmaps]\n"
                          "    providers: [{identity: {}}]\n")  # fmt: skip
        assert t.reload_if_changed()
        assert first in t.current.providers() and not first._stop.is_set()
        assert decoded(first, t.to_storage(MARKER, KEY)).encrypted_dek_source == (
            decoded(first, value).encrypted_dek_source
        )
        # its timeout changed: a new provider, the old one closed
        config.write_text(plugin_config(plugin.endpoint, timeout="2500ms"))
        assert t.reload_if_changed()
        (second,) = [p for p in t.current.providers() if isinstance(p, KmsV2Plugin)]
        assert second is not first and second.kek.timeout == 2.5 and first._stop.is_set()
        assert t.from_storage(value, KEY) == MARKER
    finally:
        t.close()


# ---- real replicas on real etcd ----------------------------------------------------------


async def test_replicas_seal_secrets_through_the_plugin(
    etcd_cluster: EtcdCluster, tmp_path: Path, plugin: PluginProcess
):
    config = tmp_path / "kms.yaml"
    config.write_text(plugin_config(plugin.endpoint, timeout="1s"))

    def replica(name: str) -> ApiReplica:
        args = ["--encryption-provider-config", str(config)]
        return ApiReplica(tmp_path, name, etcd_cluster.endpoints, extra_args=args)

    raws = {name: marker() for name in ("kms-1", "kms-2", "kms-3", "kms-4")}
    a, b, c = replica("kms-a"), replica("kms-b"), replica("kms-c")
    try:
        await a.start()
        assert a.request("POST", SECRETS, secret("kms-1", raws["kms-1"][0]))[0] == 201
        value = await stored(etcd_cluster, b"/registry/secrets/default/kms-1")
        assert value.startswith(b"k8s:enc:kms:v2:vault:")
        assert raws["kms-1"][0] not in value and raws["kms-1"][1] not in value
        obj = EncryptedObject.decode(value[len(b"k8s:enc:kms:v2:vault:") :])
        assert obj.key_id == LocalKek(plugin.keys[0]).key_id()
        assert obj.annotations == ((ANNOTATION, FORMAT),)

        plugin.stop()
        # a replica whose seed is unwrapped reads on, and writes on (for up to 3 minutes)
        status, _, body = a.request("GET", f"{SECRETS}/kms-1")
        assert status == 200 and body["data"]["password"] == raws["kms-1"][1].decode()
        assert a.request("POST", SECRETS, secret("kms-2", raws["kms-2"][0]))[0] == 201
        # a replica started now has no seed: a clear 500, and nothing reaches etcd
        await b.start()
        status, _, body = b.request("POST", SECRETS, secret("kms-3", raws["kms-3"][0]))
        assert status == 500, body
        assert "unable to encrypt /registry/secrets/default/kms-3" in body["message"]
        assert f"KMS plugin {plugin.endpoint}" in body["message"], body
        status, _, body = b.request("GET", f"{SECRETS}/kms-1")
        assert status == 500 and "unable to decrypt" in body["message"], body
        assert plugin.endpoint in body["message"]
        async with EtcdClient(etcd_cluster.endpoints, timeout=5.0) as client:
            assert await client.get(b"/registry/secrets/default/kms-3") is None
        assert files_holding(etcd_cluster.root / "data", raws["kms-3"]) == []

        # the plugin back: the replica finds it (its failed requests woke the poll)
        plugin.start()
        for _ in range(100):
            status, _, body = b.request("POST", SECRETS, secret("kms-3", raws["kms-3"][0]))
            if status == 201:
                break
            await asyncio.sleep(0.1)
        assert status == 201, body
        assert b.request("GET", f"{SECRETS}/kms-2")[0] == 200

        # hung: a replica with no seed answers 500 within the timeout (its first Status poll
        # timed out while it started: the create, and a read of a seed it lacks, fail at once)
        plugin.fault(hang=["Status", "Encrypt", "Decrypt"])
        await c.start()
        t0 = time.monotonic()
        status, _, body = c.request("POST", SECRETS, secret("kms-4", raws["kms-4"][0]))
        assert status == 500 and "did not answer within 1s" in body["message"], body
        status, _, body = c.request("GET", f"{SECRETS}/kms-1")
        assert status == 500 and "did not answer within 1s" in body["message"], body
        assert time.monotonic() - t0 < 4.0
        async with EtcdClient(etcd_cluster.endpoints, timeout=5.0) as client:
            assert await client.get(b"/registry/secrets/default/kms-4") is None
        assert files_holding(etcd_cluster.root / "data", raws["kms-4"]) == []
        plugin.fault()
    finally:
        async with EtcdClient(etcd_cluster.endpoints, timeout=5.0) as client:
            for name in raws:
                await client.delete(f"/registry/secrets/default/{name}".encode())
        for r in (a, b, c):
            await r.stop()
