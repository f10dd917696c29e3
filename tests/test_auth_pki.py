"""The platform PKI (haplane.auth.pki): file modes and atomic writes, what the certificates say,
reuse and reissue, rotation, a supplied CA, refused requests and torn pairs, and real TLS
handshakes over loopback (client certificates from the CA accepted and mapped to an identity,
from another CA or absent refused; hostname checks against IP SANs; a reloaded context serving
the rotated certificate, and refusing a torn pair without dropping the one it serves)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from haplane.auth.pki import (
    CertPaths,
    CertRequest,
    Pki,
    PkiError,
    client_context,
    identity_from_peercert,
    reload_server_context,
    seconds_to_expiry,
    server_context,
)

SERVER = CertRequest(
    "api-1",
    "api-1",
    dns_names=("api.local", "localhost"),
    ip_addresses=("127.0.0.1", "::1", "10.77.1.5"),
    server=True,
)
ALICE = CertRequest("alice", "alice", ("dev", "ops"), client=True)
PEER = CertRequest("etcd-0-peer", "etcd-0", ip_addresses=("127.0.0.1",), server=True, client=True)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    p = Pki(tmp_path / "pki")
    p.ensure_ca("haplane test CA")
    return p


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def ext(cert: x509.Certificate, kind: Any) -> Any:
    return cert.extensions.get_extension_for_class(kind)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca(
    directory: Path,
    *,
    ca: bool = True,
    key: Any = None,
    not_after: dt.datetime | None = None,
    encrypt: bytes | None = None,
) -> tuple[Path, Path]:
    """A CA (or not) built outside the Pki, as a user would supply it."""
    directory.mkdir(parents=True, exist_ok=True)
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "supplied")])
    end = not_after or now() + dt.timedelta(days=30)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(end - dt.timedelta(days=60))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "supplied.crt", directory / "supplied.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(encrypt) if encrypt else serialization.NoEncryption()
    )
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return cert_path, key_path


# ---- files -------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_modes_whatever_the_umask(tmp_path: Path, umask: int):
    old = os.umask(umask)
    try:
        p = Pki(tmp_path / "pki")
        p.ensure_ca("ca")
        leaf = p.issue(ALICE)
    finally:
        os.umask(old)
    assert mode(p.dir) == 0o700
    assert mode(p.ca_key) == mode(leaf.key) == 0o600
    assert mode(p.ca_cert) == mode(leaf.cert) == 0o644
    assert sorted(f.name for f in p.dir.iterdir()) == [
        ".lock",
        "alice.crt",
        "alice.key",
        "ca.crt",
        "ca.key",
    ]  # no temporary file left behind


def test_keys_are_private_before_the_rename_and_replace_their_certificate_first(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
):
    real = os.replace
    renames: list[tuple[str, int]] = []

    def spy(src: Any, dst: Any) -> None:
        renames.append((Path(dst).name, mode(Path(src))))
        real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    pki.issue(SERVER)
    pki.rotate(["api-1"])
    assert renames == [("api-1.key", 0o600), ("api-1.crt", 0o644)] * 2


def test_a_crash_between_the_renames_is_detected_and_healed(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
):
    first = pki.issue(ALICE)
    old_cert = first.cert.read_bytes()
    real = os.replace

    def crash_on_cert(src: Any, dst: Any) -> None:
        if str(dst).endswith(".crt"):
            raise OSError("power cut")
        real(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_cert)
    with pytest.raises(OSError, match="power cut"):
        pki.issue(ALICE)
    monkeypatch.setattr(os, "replace", real)
    assert first.cert.read_bytes() == old_cert  # the new key is in place, the old certificate
    with pytest.raises(PkiError, match="does not belong"):
        pki.load_pair("alice")
    assert not [f for f in pki.dir.iterdir() if f.name.endswith(".tmp")]
    healed = load(pki.ensure(ALICE).cert)
    assert healed.serial_number != load_serial(old_cert)
    pki.load_pair("alice")


def load_serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def test_concurrent_writers_never_tear_a_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    Pki(tmp_path / "pki").ensure_ca("ca")
    errors: list[BaseException] = []
    real = os.replace

    torn: list[str] = []

    def slow_between_renames(src: Any, dst: Any) -> None:
        real(src, dst)
        if str(dst).endswith(".key"):
            time.sleep(0.005)  # widen the window in which another writer could interleave
        else:  # the pair as a reader sees it the instant the certificate lands
            key = serialization.load_pem_private_key(
                Path(dst).with_suffix(".key").read_bytes(), None
            )
            if spki(load(Path(dst))) != key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ):
                torn.append(str(dst))

    monkeypatch.setattr(os, "replace", slow_between_renames)

    def churn() -> None:
        try:
            mine = Pki(tmp_path / "pki")  # its own lock file descriptor, like another process
            for _ in range(5):
                mine.issue(ALICE)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not torn
    Pki(tmp_path / "pki").load_pair("alice")


# ---- what certificates say ---------------------------------------------------------------


def test_ca(pki: Pki):
    ca = load(pki.ca_cert)
    basic = ext(ca, x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = ext(ca, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = ext(ca, x509.SubjectKeyIdentifier).value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(ca.public_key()).digest
    ca.verify_directly_issued_by(ca)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"
    life = ca.not_valid_after_utc - now()
    assert dt.timedelta(days=3649) < life <= dt.timedelta(days=3650)
    serial = ca.serial_number
    pki.ensure_ca("another name")  # an existing CA is kept, never replaced
    assert load(pki.ca_cert).serial_number == serial


def test_half_a_ca_is_refused(pki: Pki):
    pki.ca_key.unlink()
    with pytest.raises(PkiError, match=r"ca\.crt exists but .*ca\.key does not"):
        pki.ensure_ca("ca")
    with pytest.raises(PkiError, match=r"ca\.key does not exist"):
        pki.issue(ALICE)


def test_leaves(pki: Pki):
    before = now()
    server = load(pki.issue(SERVER).cert)
    ca = load(pki.ca_cert)
    server.verify_directly_issued_by(ca)
    san = ext(server, x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"api.local", "localhost"}
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "::1",
        "10.77.1.5",
    }
    assert list(ext(server, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    basic = ext(server, x509.BasicConstraints)
    assert basic.critical and not basic.value.ca
    usage = ext(server, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    aki = ext(server, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    ext(server, x509.SubjectKeyIdentifier)
    assert server.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    # a few minutes back for clock skew; a year by default
    assert before - dt.timedelta(minutes=6) < server.not_valid_before_utc < before
    life = server.not_valid_after_utc - before
    assert dt.timedelta(days=364) < life < dt.timedelta(days=366)

    alice = load(pki.issue(ALICE).cert)
    assert list(ext(alice, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert [a.value for a in alice.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "dev",
        "ops",
    ]
    assert [a.value for a in alice.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["alice"]
    with pytest.raises(x509.ExtensionNotFound):
        ext(alice, x509.SubjectAlternativeName)
    peer = load(pki.issue(PEER).cert)
    assert set(ext(peer, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    again = load(pki.issue(ALICE).cert)
    assert again.serial_number != alice.serial_number and spki(again) != spki(alice)
    assert again.serial_number.bit_length() > 64  # random, not a counter


def test_identity_from_peercert(pki: Pki):
    der = load(pki.issue(ALICE).cert).public_bytes(serialization.Encoding.DER)
    assert identity_from_peercert(der) == ("alice", ("dev", "ops"))
    as_dict = {
        "subject": (
            (("organizationName", "dev"),),
            (("organizationName", "ops"),),
            (("commonName", "alice"),),
        )
    }
    assert identity_from_peercert(as_dict) == ("alice", ("dev", "ops"))
    with pytest.raises(PkiError, match="no verified client certificate"):
        identity_from_peercert({})
    with pytest.raises(PkiError, match="no subject CN"):
        identity_from_peercert({"subject": ((("organizationName", "dev"),),)})
    with pytest.raises(PkiError, match="cannot be parsed"):
        identity_from_peercert(b"not DER")


def test_identity_takes_the_last_common_name_as_go_does(pki: Pki):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "first"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "g"),
            x509.NameAttribute(NameOID.COMMON_NAME, "last"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now())
        .not_valid_after(now() + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    assert identity_from_peercert(cert.public_bytes(serialization.Encoding.DER)) == (
        "last",
        ("g",),
    )
    as_dict = {"subject": ((("commonName", "first"),), (("commonName", "last"),))}
    assert identity_from_peercert(as_dict) == ("last", ())


# ---- ensure, rotate, inventory -----------------------------------------------------------


def serial(paths: CertPaths) -> int:
    return load(paths.cert).serial_number


def test_ensure_reuses_what_still_fits(pki: Pki):
    first = serial(pki.ensure(SERVER))
    assert serial(pki.ensure(SERVER)) == first
    reordered = CertRequest(
        "api-1",
        "api-1",
        dns_names=("LOCALHOST", "api.local"),
        ip_addresses=("10.77.1.5", "0:0::1", "127.0.0.1"),
        server=True,
        days=90,  # not compared
    )
    assert serial(pki.ensure(reordered)) == first
    alice = serial(pki.ensure(ALICE))
    assert serial(pki.ensure(CertRequest("alice", "alice", ("ops", "dev"), client=True))) == alice


@pytest.mark.parametrize(
    "changed",
    [
        CertRequest("alice", "alice", ("dev", "ops"), dns_names=("a.local",), client=True),
        CertRequest("alice", "alice", ("dev", "ops"), ip_addresses=("10.0.0.1",), client=True),
        CertRequest("alice", "alice2", ("dev", "ops"), client=True),
        CertRequest("alice", "alice", ("dev",), client=True),
        CertRequest("alice", "alice", ("dev", "ops", "admins"), client=True),
        CertRequest("alice", "alice", ("dev", "ops"), client=True, server=True, dns_names=("a",)),
    ],
)
def test_ensure_reissues_what_changed(pki: Pki, changed: CertRequest):
    first = serial(pki.ensure(ALICE))
    reissued = serial(pki.ensure(changed))
    assert reissued != first
    assert serial(pki.ensure(changed)) == reissued  # and then keeps it


def test_ensure_renews_before_expiry(pki: Pki):
    short = CertRequest("short", "x", client=True, days=10)
    s1 = serial(pki.ensure(short))
    s2 = serial(pki.ensure(short))  # 10 days left, inside the default 30-day window
    assert s2 != s1
    assert serial(pki.ensure(short, renew_within=dt.timedelta(days=5))) == s2


def test_ensure_keeps_a_certificate_that_ends_with_its_ca(tmp_path: Path):
    p = Pki(tmp_path / "pki")
    p.ensure_ca("short-lived CA", days=20)
    first = p.ensure(ALICE)
    assert load(first.cert).not_valid_after_utc == load(p.ca_cert).not_valid_after_utc
    kept = serial(first)
    assert serial(p.ensure(ALICE)) == kept  # a new one could not outlive the CA


def test_ensure_reissues_after_the_ca_changed(pki: Pki, tmp_path: Path):
    first = serial(pki.ensure(ALICE))
    pki.adopt_ca(*make_ca(tmp_path / "new-ca"))
    paths = pki.ensure(ALICE)
    assert serial(paths) != first
    load(paths.cert).verify_directly_issued_by(load(pki.ca_cert))


def test_ensure_reissues_a_torn_pair(pki: Pki):
    alice = pki.issue(ALICE)
    other = pki.issue(CertRequest("other", "o", client=True))
    alice.key.write_bytes(other.key.read_bytes())
    with pytest.raises(PkiError, match=r"alice\.crt does not belong to .*alice\.key"):
        pki.load_pair("alice")
    with pytest.raises(PkiError, match="does not belong"):
        server_context(CertPaths(alice.cert, alice.key, pki.ca_cert))
    before = serial(alice)
    assert serial(pki.ensure(ALICE)) != before
    pki.load_pair("alice")


def test_rotate_keeps_what_certificates_say(pki: Pki):
    pki.issue(SERVER)
    pki.issue(ALICE)
    pki.issue(CertRequest("short", "s", client=True, days=7))
    keys = {n: pki.paths(n).key.read_bytes() for n in pki.names()}
    before = {c.name: c for c in pki.inventory()}
    assert pki.rotate() == ["alice", "api-1", "short"]
    after = {c.name: c for c in pki.inventory()}
    assert after["ca"] == before["ca"]
    for name in ("alice", "api-1", "short"):
        old, new = before[name], after[name]
        assert new.serial != old.serial
        assert pki.paths(name).key.read_bytes() != keys[name]
        same = ("common_name", "groups", "server", "client")
        assert [getattr(new, f) for f in same] == [getattr(old, f) for f in same]
        assert set(new.dns_names) == set(old.dns_names)
        assert set(new.ip_addresses) == set(old.ip_addresses)
        life = new.not_after - new.not_before
        assert abs(life - (old.not_after - old.not_before)) < dt.timedelta(minutes=1)
        pki.load_pair(name)
    assert (after["short"].not_after - now()).days in (6, 7)


def test_rotate_some_and_refuse_unknown(pki: Pki, tmp_path: Path):
    pki.issue(SERVER)
    pki.issue(ALICE)
    before = {c.name: c.serial for c in pki.inventory()}
    assert pki.rotate(["alice"]) == ["alice"]
    after = {c.name: c.serial for c in pki.inventory()}
    assert after["alice"] != before["alice"] and after["api-1"] == before["api-1"]
    with pytest.raises(PkiError, match=r"nope\.crt does not exist"):
        pki.rotate(["api-1", "nope"])
    assert {c.name: c.serial for c in pki.inventory()} == after  # nothing rotated
    with pytest.raises(PkiError):
        pki.rotate(["ca"])
    # rotation after a CA change moves every leaf to the new CA
    pki.adopt_ca(*make_ca(tmp_path / "new-ca"))
    pki.rotate()
    for name in ("alice", "api-1"):
        pki.load_pair(name)


def test_inventory_and_expiry(pki: Pki):
    pki.issue(CertRequest("soon", "x", ("g",), client=True, days=2))
    pki.issue(SERVER)
    inventory = pki.inventory()
    assert [c.name for c in inventory] == ["ca", "api-1", "soon"]
    ca, server, soon = inventory
    assert ca.is_ca and not server.is_ca and ca.common_name == "haplane test CA"
    assert (soon.common_name, soon.groups, soon.client, soon.server) == ("x", ("g",), True, False)
    assert server.ip_addresses == ("127.0.0.1", "::1", "10.77.1.5") and server.server
    assert soon.path == pki.paths("soon").cert
    assert soon.serial == serial(pki.paths("soon"))
    t = now()
    assert 86400 < soon.seconds_to_expiry(t) <= 2 * 86400
    assert abs(seconds_to_expiry(soon.path, t) - soon.seconds_to_expiry(t)) < 1e-6
    assert seconds_to_expiry(soon.path, t + dt.timedelta(days=3)) < 0
    assert Pki(pki.dir.parent / "empty").names() == []


# ---- a supplied CA -----------------------------------------------------------------------


def test_adopt_ca(tmp_path: Path):
    cert, key = make_ca(tmp_path / "in")
    os.chmod(key, 0o644)  # however the user kept it, the copy is private
    p = Pki(tmp_path / "pki")
    p.adopt_ca(cert, key)
    assert p.ca_cert.read_bytes() == cert.read_bytes()
    assert mode(p.ca_key) == 0o600 and mode(p.dir) == 0o700
    load(p.issue(SERVER).cert).verify_directly_issued_by(load(cert))


def test_adopt_an_rsa_ca(tmp_path: Path):
    p = Pki(tmp_path / "pki")
    p.adopt_ca(*make_ca(tmp_path / "in", key=rsa.generate_private_key(65537, 2048)))
    leaf = load(p.issue(ALICE).cert)
    leaf.verify_directly_issued_by(load(p.ca_cert))
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)  # leaves stay P-256


def test_adopt_ca_refusals(pki: Pki, tmp_path: Path):
    target = Pki(tmp_path / "target")
    leaf = pki.issue(ALICE)
    with pytest.raises(PkiError, match="is not a CA certificate"):
        target.adopt_ca(leaf.cert, leaf.key)
    with pytest.raises(PkiError, match="is not a CA certificate"):
        target.adopt_ca(*make_ca(tmp_path / "not-ca", ca=False))
    other = Pki(tmp_path / "other")
    other.ensure_ca("other")
    with pytest.raises(PkiError, match="is not the key of"):
        target.adopt_ca(pki.ca_cert, other.ca_key)
    with pytest.raises(PkiError, match="expired on"):
        target.adopt_ca(*make_ca(tmp_path / "old", not_after=now() - dt.timedelta(days=1)))
    with pytest.raises(PkiError, match="is encrypted"):
        target.adopt_ca(*make_ca(tmp_path / "locked", encrypt=b"passphrase"))
    # an intermediate (a CA certificate another CA signed) is no trust anchor for OpenSSL
    ca_cert, ca_key = pki.load_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - dt.timedelta(days=1))
        .not_valid_after(now() + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "inter.crt").write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "inter.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(PkiError, match="is an intermediate CA"):
        target.adopt_ca(tmp_path / "inter.crt", tmp_path / "inter.key")
    with pytest.raises(PkiError, match="does not exist"):
        target.adopt_ca(tmp_path / "missing.crt", pki.ca_key)
    with pytest.raises(PkiError, match="is not a PEM certificate"):
        target.adopt_ca(pki.ca_key, pki.ca_key)
    assert not target.ca_cert.exists() and not target.ca_key.exists()


# ---- refused requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"name": "Bad Name", "client": True}, "certificate name"),
        ({"name": "../etc", "client": True}, "certificate name"),
        ({"name": "ca", "client": True}, "is the CA's"),
        ({"name": "x"}, "say server, client or both"),
        ({"name": "x", "server": True}, "needs at least one SAN"),
        ({"name": "x", "server": True, "ip_addresses": ("nope",)}, "not an IP address"),
        ({"name": "x", "server": True, "dns_names": ("bad name",)}, "not a DNS name"),
        ({"name": "x", "server": True, "dns_names": ("a..b",)}, "not a DNS name"),
        ({"name": "x", "server": True, "dns_names": ("-a.b",)}, "not a DNS name"),
        ({"name": "x", "server": True, "dns_names": ("héllo.local",)}, "not a DNS name"),
        ({"name": "x", "client": True, "common_name": ""}, "common name"),
        ({"name": "x", "client": True, "common_name": "u" * 65}, "1 to 64"),
        ({"name": "x", "client": True, "organizations": ("",)}, "empty organization"),
        ({"name": "x", "client": True, "days": 0}, "days"),
    ],
)
def test_bad_requests(kwargs: dict[str, Any], words: str):
    kwargs.setdefault("common_name", "x")
    with pytest.raises(PkiError, match=words):
        CertRequest(**kwargs)


def test_wildcards_and_odd_but_valid_names(pki: Pki):
    req = CertRequest("w", "w", dns_names=("*.svc.local", "_etcd._tcp.x"), server=True)
    san = ext(load(pki.issue(req).cert), x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"*.svc.local", "_etcd._tcp.x"}


# ---- TLS ---------------------------------------------------------------------------------


async def _serve(ctx: ssl.SSLContext) -> tuple[asyncio.Server, int, list[Any]]:
    seen: list[Any] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obj = writer.get_extra_info("ssl_object")
        seen.append((obj.getpeercert(binary_form=True), obj.getpeercert()))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1], seen


async def _call(port: int, ctx: ssl.SSLContext, hostname: str = "127.0.0.1") -> tuple[bytes, int]:
    """The server's answer and the serial of the certificate it served."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=hostname
    )
    served = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data, x509.load_der_x509_certificate(served).serial_number


async def _refused(port: int, ctx: ssl.SSLContext) -> bool:
    """Whether the server refused the client (with TLS 1.3 the client learns it on its first
    read, as an alert, a reset or an empty answer)."""
    try:
        answer, _ = await _call(port, ctx)
    except (ssl.SSLError, ConnectionError):
        return True
    return answer != b"ok"


async def test_client_certificates(pki: Pki, tmp_path: Path):
    ctx = server_context(pki.issue(SERVER), client_auth="required")
    alice = pki.issue(ALICE)
    server, port, seen = await _serve(ctx)
    try:
        answer, _ = await _call(port, client_context(pki.ca_cert, alice.cert, alice.key))
        assert answer == b"ok"
        der, as_dict = seen[-1]
        assert identity_from_peercert(der) == ("alice", ("dev", "ops"))
        assert identity_from_peercert(as_dict) == ("alice", ("dev", "ops"))

        assert await _refused(port, client_context(pki.ca_cert))  # no client certificate
        stranger = Pki(tmp_path / "stranger")
        stranger.ensure_ca("stranger")
        mallory = stranger.issue(ALICE)  # the same name, from another CA
        assert await _refused(port, client_context(pki.ca_cert, mallory.cert, mallory.key))
        assert len(seen) == 1  # neither reached the handler
    finally:
        server.close()
        await server.wait_closed()


async def test_optional_client_certificates(pki: Pki):
    server, port, seen = await _serve(server_context(pki.issue(SERVER), "optional"))
    try:
        answer, _ = await _call(port, client_context(pki.ca_cert))
        assert answer == b"ok" and seen[-1] == (None, None)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("san", "accepted"),
    [
        ({"ip_addresses": ("127.0.0.1",)}, True),
        ({"ip_addresses": ("10.9.9.9",), "dns_names": ("localhost",)}, False),
        ({"dns_names": ("127.0.0.1",)}, False),  # an address in a DNS SAN matches nothing
    ],
)
async def test_hostname_checked_against_ip_sans(pki: Pki, san: dict[str, Any], accepted: bool):
    paths = pki.issue(CertRequest("api-2", "api-2", server=True, **san))
    server, port, _ = await _serve(server_context(paths, "none"))
    try:
        if accepted:
            assert (await _call(port, client_context(pki.ca_cert)))[0] == b"ok"
        else:
            with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
                await _call(port, client_context(pki.ca_cert))
    finally:
        server.close()
        await server.wait_closed()


async def test_reloaded_context_serves_the_rotated_certificate(pki: Pki):
    paths = pki.issue(SERVER)
    ctx = server_context(paths, "none")
    client = client_context(pki.ca_cert)
    server, port, _ = await _serve(ctx)
    try:
        old = serial(paths)
        assert (await _call(port, client))[1] == old
        pki.rotate(["api-1"])
        new = serial(paths)
        assert new != old
        assert (await _call(port, client))[1] == old  # not reloaded yet
        reload_server_context(ctx, paths)
        assert (await _call(port, client))[1] == new

        # a torn pair on disk is refused, and the context keeps serving what it served
        paths.key.write_bytes(pki.issue(CertRequest("x", "x", client=True)).key.read_bytes())
        with pytest.raises(PkiError, match="does not belong"):
            reload_server_context(ctx, paths)
        assert await _call(port, client) == (b"ok", new)
    finally:
        server.close()
        await server.wait_closed()


def test_contexts(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "keys.log"))  # never honoured here
    paths = pki.issue(SERVER)
    for auth, verify in (
        ("none", ssl.CERT_NONE),
        ("optional", ssl.CERT_OPTIONAL),
        ("required", ssl.CERT_REQUIRED),
    ):
        ctx = server_context(paths, auth)  # type: ignore[arg-type]
        assert ctx.verify_mode == verify
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.keylog_filename is None
        # the platform CA and nothing else: the system's trust store never names users
        assert [c["subject"] for c in ctx.get_ca_certs()] == (
            [] if auth == "none" else [((("commonName", "haplane test CA"),),)]
        )
    client = client_context(pki.ca_cert)
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.keylog_filename is None
    assert len(client.get_ca_certs()) == 1
    with pytest.raises(PkiError, match="CA"):
        client_context(pki.dir / "missing.crt")
