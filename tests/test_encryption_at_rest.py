"""Secrets encrypted at rest by real API replicas on real etcd: what reaches etcd's files (its
WAL and its database) holds neither the value nor its base64 form; the same scan finds both
when encryption is off (so it can fail); reads through the API return the value; a replica
with the wrong key-encryption key answers a clear 500, never garbage; Secrets written before
encryption stay readable (the `identity` provider)."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

from haplane.auth.encryption import create_local_key, default_config
from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import EtcdClient
from tests.topology_helpers import files_holding


def marker() -> tuple[bytes, bytes]:
    raw = f"hunter2-{secrets.token_hex(8)}".encode()
    return raw, base64.b64encode(raw)


def secret(name: str, raw: bytes) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {"password": base64.b64encode(raw).decode()},
    }


async def stored(cluster: EtcdCluster, key: bytes) -> bytes:
    async with EtcdClient(cluster.endpoints, timeout=5.0) as client:
        kv = await client.get(key)
    assert kv is not None
    return kv.value


def encryption_config(root: Path, key_name: str = "kek.key") -> Path:
    key = root / key_name
    create_local_key(key)
    config = root / f"{key_name}.yaml"
    config.write_text(default_config(key))
    return config


async def test_secrets_are_encrypted_at_rest(etcd_cluster: EtcdCluster, tmp_path: Path):
    raw, b64 = marker()
    before_raw, before_b64 = marker()
    config = encryption_config(tmp_path)
    plain = ApiReplica(tmp_path, "plain", etcd_cluster.endpoints)
    await plain.start()
    try:
        # written with encryption off: the scan finds it, in both forms (it can fail)
        path = "/api/v1/namespaces/default/secrets"
        assert plain.request("POST", path, secret("before", before_raw))[0] == 201
        old_key = b"/registry/secrets/default/before"
        assert before_b64 in await stored(etcd_cluster, old_key)
    finally:
        await plain.stop()
    enc = ApiReplica(
        tmp_path,
        "enc",
        etcd_cluster.endpoints,
        extra_args=["--encryption-provider-config", str(config)],
    )
    await enc.start()
    try:
        assert enc.request("POST", path, secret("db", raw))[0] == 201
        status, _, body = enc.request("GET", f"{path}/db")
        assert status == 200 and base64.b64decode(body["data"]["password"]) == raw
        value = await stored(etcd_cluster, b"/registry/secrets/default/db")
        assert value.startswith(b"k8s:enc:kms:v2:local:")
        assert raw not in value and b64 not in value
        # written before encryption: still readable (identity is the last provider)
        status, _, body = enc.request("GET", f"{path}/before")
        assert status == 200 and base64.b64decode(body["data"]["password"]) == before_raw
        # an update re-encrypts it
        body["metadata"]["labels"] = {"touched": "yes"}
        assert enc.request("PUT", f"{path}/before", body)[0] == 200
        assert (await stored(etcd_cluster, old_key)).startswith(b"k8s:enc:kms:v2:local:")
        # ConfigMaps are not named by the default configuration: stored as they are
        cm_raw, _ = marker()
        cm = {"metadata": {"name": "cm"}, "data": {"k": cm_raw.decode()}}
        assert enc.request("POST", "/api/v1/namespaces/default/configmaps", cm)[0] == 201
        cm_value = await stored(etcd_cluster, b"/registry/configmaps/default/cm")
        assert cm_raw in cm_value
        enc.request("DELETE", "/api/v1/namespaces/default/configmaps/cm")
    finally:
        await enc.stop()
    # the disk: the encrypted Secret's value in neither form; the plain one's in both (the
    # WAL keeps what was written before the update)
    assert files_holding(etcd_cluster.root / "data", (raw, b64)) == []
    assert len(files_holding(etcd_cluster.root / "data", (before_raw, before_b64))) >= 2

    # a replica with no encryption configuration: a clear 500, not a JSON error
    bare = ApiReplica(tmp_path, "bare", etcd_cluster.endpoints)
    await bare.start()
    try:
        status, _, body = bare.request("GET", f"{path}/db")
        assert status == 500 and "no encryption configuration" in body["message"], body
    finally:
        await bare.stop()
    # a replica holding another key-encryption key: a clear 500 naming the cause
    wrong = ApiReplica(
        tmp_path, "wrong", etcd_cluster.endpoints,
        extra_args=["--encryption-provider-config", str(encryption_config(tmp_path, "b.key"))],
    )  # fmt: skip
    await wrong.start()
    try:
        status, _, body = wrong.request("GET", f"{path}/db")
        assert status == 500, body
        assert "unable to decrypt /registry/secrets/default/db" in body["message"], body
        assert "the key it needs is missing" in body["message"]
        # and a write under it is readable by it, never plain text
        raw2, _ = marker()
        assert wrong.request("POST", path, secret("db2", raw2))[0] == 201
        value = await stored(etcd_cluster, b"/registry/secrets/default/db2")
        assert value.startswith(b"k8s:enc:kms:v2:local:") and raw2 not in value
    finally:
        for name in ("db", "db2", "before"):
            async with EtcdClient(etcd_cluster.endpoints, timeout=5.0) as client:
                await client.delete(f"/registry/secrets/default/{name}".encode())
        await wrong.stop()


def test_every_stored_resource_is_found_by_its_key(tmp_path: Path):
    """The replica's key-to-resource map covers every stored type (RBAC objects included), and
    custom resources by their group; keys no resource owns stay as they are."""
    from haplane.api.encryption import stored_types, transformers

    key = tmp_path / "kek.key"
    create_local_key(key)
    config = tmp_path / "all.yaml"
    config.write_text(default_config(key).replace("[secrets]", '["*.*"]'))
    t = transformers(config, stored_types())
    for k, owner in (
        (b"/registry/secrets/default/x", ("", "secrets")),
        (b"/registry/clusterroles/admin", ("rbac.authorization.k8s.io", "clusterroles")),
        (b"/registry/rolebindings/default/b", ("rbac.authorization.k8s.io", "rolebindings")),
        (b"/registry/leases/kube-system/l", ("coordination.k8s.io", "leases")),
        (b"/registry/apiextensions.k8s.io/customresourcedefinitions/w.example.com",
         ("apiextensions.k8s.io", "customresourcedefinitions")),
        (b"/registry/example.com/widgets/default/w", ("example.com", "widgets")),
    ):  # fmt: skip
        assert t.resource_of(k) == owner, k
        assert t.to_storage(b"{}", k).startswith(b"k8s:enc:kms:v2:local:"), k
    for k in (b"/registry/health", b"/haplane/fence"):
        assert t.resource_of(k) is None and t.to_storage(b"{}", k) == b"{}"
