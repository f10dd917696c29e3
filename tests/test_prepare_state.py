"""`runner.prepare_state`: the topology recorded in the state dir names its security files by
absolute paths (the supervisor may run from another directory), whatever spelling the user
chose: relative to the file, `~/...`, camelCase or snake_case keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from haplane.auth.pki import Pki
from haplane.local import runner
from haplane.local.security import PlatformTls
from haplane.local.state_dir import StateDir
from haplane.topology import load_text
from haplane.topology.loader import example_text


def test_security_paths_are_recorded_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home, conf = tmp_path / "home", tmp_path / "conf"
    monkeypatch.setenv("HOME", str(home))
    ca = Pki(home / "ca")
    ca.ensure_ca("my CA")
    (conf / "policies").mkdir(parents=True)
    (conf / "policies" / "audit.yaml").write_text("apiVersion: audit.k8s.io/v1\nkind: Policy\n")
    doc = yaml.safe_load(example_text("two-regions"))
    doc["spec"]["security"] = {
        "ca": {"cert_file": "~/ca/ca.crt", "keyFile": "../home/ca/ca.key"},
        "audit": {"policy_file": "policies/audit.yaml"},
    }
    text = yaml.safe_dump(doc)
    state = StateDir(tmp_path / "state")
    recorded = runner.prepare_state(state, load_text(text), text, fresh=True, base=conf)
    sec = recorded.spec.security
    assert sec.ca is not None and sec.audit.policy_file is not None
    assert sec.ca.cert_file == str(ca.ca_cert)
    assert sec.ca.key_file == str(ca.ca_key)
    assert sec.audit.policy_file == str(conf / "policies" / "audit.yaml")
    # and the CA was adopted from there
    assert PlatformTls(state.root / "pki").ca.read_bytes() == ca.ca_cert.read_bytes()


def test_commands_say_when_the_state_dir_has_no_pki(tmp_path: Path):
    """A recorded topology that never ran with TLS (or lost its PKI): each command that dials
    the platform says what is missing and what to do, instead of a traceback."""
    from tests.topology_helpers import haplane

    state = StateDir(tmp_path / "state")
    state.ensure()
    state.topology_file.write_text(example_text("two-regions"))
    for command in (
        ["status"],
        ["kubeconfig", "-o", str(tmp_path / "kc")],
        ["kubeconfig", "--user", "bob", "-o", str(tmp_path / "kc")],
        ["pki", "status"],
        ["pki", "rotate"],
        ["drill", "replica-kill"],
    ):
        r = haplane(state.root, *command, check=False)
        said = " ".join(r.stderr.split())
        assert r.returncode == 1, (command, r.stderr)
        assert "has no PKI" in said and "Traceback" not in said, (command, r.stderr)
    assert not (tmp_path / "kc").exists() and not (state.root / "pki").exists()
