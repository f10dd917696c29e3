"""haplane.local.secrets_ops without a topology: the local key list, `rotate` (the new key
writes, the older ones read), `up`'s configuration keeping rotated keys, and `rewrite` on a
real etcd of its own, skipping and reporting a value it cannot open."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from haplane.auth.encryption import load_config
from haplane.local import secrets_ops
from haplane.local.security import encryption_config
from haplane.local.state_dir import StateDir
from haplane.topology import load_text
from haplane.topology.loader import example_text


def topology(**encryption: object):  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(example_text("two-regions"))
    doc["spec"]["security"] = {"encryption": encryption} if encryption else {}
    return load_text(yaml.safe_dump(doc))


def providers(config: Path) -> list[str]:
    (rule,) = load_config(config)
    return [p.name for p in rule.providers]


def test_rotate_keeps_older_keys_for_reading(tmp_path: Path):
    state = StateDir(tmp_path / "state")
    state.ensure()
    config = encryption_config(state, topology())
    assert providers(config) == ["local", "identity"]
    # two steps: the new key reads first, then writes
    assert secrets_ops.rotate(state, None, True).name == "local-2"
    assert providers(config) == ["local", "local-2", "identity"]
    assert secrets_ops.rotate(state, None, True).name == "local-2"  # stopped between: no new key
    assert secrets_ops.rotate(state, None, True, promote=True).name == "local-2"
    assert providers(config) == ["local-2", "local", "identity"]
    assert secrets_ops.rotate(state, None, True).name == "local-3"
    assert secrets_ops.rotate(state, None, True, promote=True).name == "local-3"
    assert providers(config) == ["local-3", "local-2", "local", "identity"]
    for name in ("kek.key", "kek-2.key", "kek-3.key"):
        assert (state.root / "encryption" / name).stat().st_mode & 0o777 == 0o600
    # `up` again: the rotated keys stay, in order
    encryption_config(state, topology())
    assert providers(config) == ["local-3", "local-2", "local", "identity"]
    # encryption switched off: written plain, every key still reads
    encryption_config(state, topology(enabled=False))
    assert providers(config) == ["identity", "local-3", "local-2", "local"]
    # a key file lost: refused, never silently replaced
    (state.root / "encryption" / "kek-2.key").unlink()
    with pytest.raises(secrets_ops.SecretsError, match=r"kek-2\.key is missing"):
        encryption_config(state, topology())


def test_rotate_refusals(tmp_path: Path):
    state = StateDir(tmp_path / "state")
    state.ensure()
    with pytest.raises(secrets_ops.SecretsError, match="its own EncryptionConfiguration"):
        secrets_ops.rotate(state, "/etc/enc.yaml", True)
    with pytest.raises(secrets_ops.SecretsError, match="is off"):
        secrets_ops.rotate(state, None, False)
    secrets_ops.keys_file(state).parent.mkdir(parents=True)
    secrets_ops.keys_file(state).write_text("{not json")
    with pytest.raises(secrets_ops.SecretsError, match=r"keys\.json"):
        secrets_ops.local_keys(state)


async def test_rewrite_skips_and_reports_what_it_cannot_open(disposable_cluster, tmp_path: Path):
    """One altered value does not hold up the others: they are re-sealed under the new writer,
    it is left as it is and reported, and a later pass does not count it as a straggler."""
    from haplane.api.encryption import stored_types, transformers
    from haplane.auth.encryption import create_local_key, local_config
    from haplane.store import FENCE_KEY, GlobalState

    k1, k2 = tmp_path / "k1.key", tmp_path / "k2.key"
    create_local_key(k1)
    create_local_key(k2)
    old_cfg, new_cfg = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old_cfg.write_text(local_config([("local", k1)]))
    new_cfg.write_text(local_config([("local-2", k2), ("local", k1)]))
    old, new = transformers(old_cfg, stored_types()), transformers(new_cfg, stored_types())
    client = disposable_cluster.client(timeout=2.0)
    try:
        await GlobalState(client).initialize("r", by="t", reason="t", fresh=True)
        await client.put(FENCE_KEY, b"active:r@1")
        keys = [f"/registry/secrets/default/s{i}".encode() for i in range(3)]
        for key in keys:
            await client.put(key, old.to_storage(b'{"kind":"Secret"}', key))
        bad = b"/registry/secrets/default/altered"
        sealed = bytearray(old.to_storage(b'{"kind":"Secret"}', bad))
        sealed[-3] ^= 0xFF  # altered (here its wrapped seed): it no longer opens
        await client.put(bad, bytes(sealed))
        out = await secrets_ops.rewrite(
            StateDir(tmp_path / "state"), client, {"r": client}, new, settle=0.05
        )
        assert (out.examined, out.rewritten) == (4, 3)
        assert list(out.unreadable) == [bad] and "open" in out.unreadable[bad]
        for key in keys:
            kv = await client.get(key)
            assert kv is not None and kv.value.startswith(b"k8s:enc:kms:v2:local-2:")
        kv = await client.get(bad)
        assert kv is not None and kv.value == bytes(sealed)
    finally:
        await client.close()
