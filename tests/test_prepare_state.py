"""`runner.prepare_state`: the topology recorded in the state dir names its security files by
absolute paths (the supervisor may run from another directory), whatever spelling the user
chose: relative to the file, `~/...`, camelCase or snake_case keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from haplane.auth.pki import Pki
from haplane.local import runner
from haplane.local.security import Pair, PlatformTls
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
        ["failback", "status"],
        ["gc", "status"],
    ):
        r = haplane(state.root, *command, check=False)
        said = " ".join(r.stderr.split())
        assert r.returncode == 1, (command, r.stderr)
        assert "has no PKI" in said and "Traceback" not in said, (command, r.stderr)
    assert not (tmp_path / "kc").exists() and not (state.root / "pki").exists()


def test_certificates_name_every_address_and_come_from_the_right_ca(tmp_path: Path):
    """What `up` issues, read back: certSANs on the replicas' and gates' serving
    certificates; etcd peer certificates named after their cluster; the front-proxy
    certificate from the front-proxy CA, not the platform CA."""
    import ipaddress

    from cryptography import x509

    from haplane.local import security
    from haplane.local.gate_plans import plan_of

    doc = yaml.safe_load(example_text("two-regions"))
    doc["spec"]["security"] = {"certSANs": ["api.example.com", "10.0.0.10"]}
    topology = load_text(yaml.safe_dump(doc))
    state = StateDir(tmp_path / "state")
    state.ensure()
    plan = plan_of(topology, state, read_only=False)
    assert plan.tls is not None
    tls = plan.tls
    issued = security.ensure(tls, topology, plan)
    assert "front-proxy/front-proxy" in issued and security.ensure(tls, topology, plan) == []

    def load(path: Path) -> x509.Certificate:
        return x509.load_pem_x509_certificate(path.read_bytes())

    def sans(path: Path) -> set[str]:
        ext = load(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = {str(a) for a in ext.get_values_for_type(x509.IPAddress)}
        return set(ext.get_values_for_type(x509.DNSName)) | ips

    for cert in (
        tls.serving("apiserver", plan.replicas[0].qualified_name).cert,
        tls.serving("gate", plan.gates[0].name).cert,
    ):
        assert {"api.example.com", "10.0.0.10"} <= sans(cert), cert
    assert "api.example.com" not in sans(
        tls.serving("balancer", plan.balancers[0].qualified_name).cert
    )
    member = plan.clusters[0].view.members[0]
    peer = load(tls.member(member.qualified_name).peer_cert)
    assert peer.subject.rfc4514_string() == f"CN=etcd-peer {member.scope}"
    assert ipaddress.ip_address(member.host) in {
        ipaddress.ip_address(a)
        for a in sans(tls.member(member.qualified_name).peer_cert)
        if a[0].isdigit() or ":" in a
    }
    proxy = load(tls.front_proxy.cert)
    assert proxy.issuer == load(tls.front_proxy_ca).subject != load(tls.ca).subject
    assert not (tls.platform_dir / "front-proxy.crt").exists()


def test_user_certificates(tmp_path: Path):
    """`kubeconfig --user`: one file per exact name, the lifetime asked for, and Kubernetes'
    system: groups refused except system:monitoring (metrics scrapers)."""
    import datetime as dt

    from cryptography import x509

    from haplane.auth.pki import PkiError
    from haplane.local.security import user_certificate

    tls = PlatformTls(tmp_path / "pki")
    Pki(tls.platform_dir).ensure_ca("platform")

    def load(pair: Pair) -> x509.Certificate:
        return x509.load_pem_x509_certificate(pair.cert.read_bytes())

    bob, big_bob = user_certificate(tls, "bob", (), 30), user_certificate(tls, "Bob", (), 30)
    assert bob.cert != big_bob.cert and bob.cert.name == "user.bob.crt"
    assert load(bob).subject != load(big_bob).subject
    days_left = (load(bob).not_valid_after_utc - dt.datetime.now(dt.UTC)).days
    assert 29 <= days_left <= 30
    longer = user_certificate(tls, "bob", (), 365)
    assert (load(longer).not_valid_after_utc - dt.datetime.now(dt.UTC)).days >= 364
    serial = load(longer).serial_number
    assert load(user_certificate(tls, "bob", (), 365)).serial_number == serial  # kept
    scraper = user_certificate(tls, "prometheus", ("system:monitoring",), 30)
    assert "system:monitoring" in load(scraper).subject.rfc4514_string()
    # a CA that ends before the lifetime asked for: the certificate ends with it, and is kept
    short = PlatformTls(tmp_path / "short")
    Pki(short.platform_dir).ensure_ca("short-lived", days=10)
    serials = {load(user_certificate(short, "carol", (), 30)).serial_number for _ in range(3)}
    assert len(serials) == 1
    for groups in (("system:masters",), ("system:nodes",), ("ops", "system:serviceaccounts")):
        with pytest.raises(PkiError, match="system"):
            user_certificate(tls, "eve", groups, 30)
