"""haplane.local.secrets_ops without a topology: the local key list, `rotate` (the new key
writes, the older ones read), and `up`'s configuration keeping rotated keys."""

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
