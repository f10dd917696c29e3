"""The platform PKI (haplane.auth.pki): file modes, what the certificates say, reuse and
reissue, rotation, a supplied CA, and real TLS handshakes over loopback (client certificates
from the CA accepted and from another CA refused; hostname checks against IP SANs; a reloaded
context serving the rotated certificate)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from haplane.api.filters.authentication import certificate_identity
from haplane.auth.pki import (
    CertRequest,
    Pki,
    PkiError,
    client_context,
    seconds_to_expiry,
    server_context,
)

SERVER = CertRequest(
    "api-1", "api-1", ip_addresses=("127.0.0.1",), dns_names=("api.local",), server=True
)
ALICE = CertRequest("alice", "alice", ("dev", "ops"), client=True)


@pytest.fixture
def pki(tmp_path) -> Pki:
    p = Pki(tmp_path / "pki")
    p.ensure_ca("haplane test CA")
    return p


def load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_modes_and_contents(pki: Pki):
    paths = pki.issue(SERVER)
    client = pki.issue(ALICE)
    assert oct(pki.dir.stat().st_mode & 0o777) == "0o700"
    for key in (pki.ca_key, paths.key, client.key):
        assert oct(key.stat().st_mode & 0o777) == "0o600", key
    cert = load(paths.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["api.local"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca = load(pki.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca)
    user = certificate_identity(load(client.cert).public_bytes(serialization.Encoding.DER))
    assert (user.name, user.groups) == ("alice", ("dev", "ops"))
    assert 364 * 86400 < seconds_to_expiry(paths.cert) <= 365 * 86400


def test_ensure_reuses_and_reissues(pki: Pki):
    first = load(pki.ensure(SERVER).cert).serial_number
    assert load(pki.ensure(SERVER).cert).serial_number == first
    wider = CertRequest("api-1", "api-1", ip_addresses=("127.0.0.1", "10.77.1.5"), server=True)
    assert load(pki.ensure(wider).cert).serial_number != first
    short = CertRequest("short", "x", client=True, days=10)
    s1 = load(pki.ensure(short).cert).serial_number
    assert load(pki.ensure(short).cert).serial_number != s1  # within the renewal window
    # a certificate that does not belong to its key is reissued
    other = pki.issue(CertRequest("other", "o", client=True))
    pki.paths("alice").cert.write_bytes(other.cert.read_bytes())
    pki.paths("alice").key.write_bytes(pki.issue(ALICE).key.read_bytes())
    pki.paths("alice").cert.write_bytes(other.cert.read_bytes())
    with pytest.raises(PkiError, match="does not belong"):
        pki.load_pair("alice")
    assert load(pki.ensure(ALICE).cert).subject.rfc4514_string().startswith("CN=alice")


def test_rotate_keeps_what_certificates_say(pki: Pki):
    pki.issue(SERVER)
    pki.issue(ALICE)
    before = {c.name: c for c in pki.inventory()}
    assert pki.rotate() == ["alice", "api-1"]
    after = {c.name: c for c in pki.inventory()}
    for name in ("alice", "api-1"):
        assert after[name].serial != before[name].serial
        assert (after[name].common_name, after[name].groups, after[name].ip_addresses) == (
            before[name].common_name,
            before[name].groups,
            before[name].ip_addresses,
        )
    assert after["ca"].serial == before["ca"].serial


def test_adopt_ca_checks(pki: Pki, tmp_path):
    mine = Pki(tmp_path / "mine")
    mine.adopt_ca(pki.ca_cert, pki.ca_key)
    assert mine.ca_cert.read_bytes() == pki.ca_cert.read_bytes()
    leaf = pki.issue(ALICE)
    with pytest.raises(PkiError, match="not a CA"):
        Pki(tmp_path / "x").adopt_ca(leaf.cert, leaf.key)
    other = Pki(tmp_path / "other")
    other.ensure_ca("other")
    with pytest.raises(PkiError, match="is not the key"):
        Pki(tmp_path / "y").adopt_ca(pki.ca_cert, other.ca_key)


@pytest.mark.parametrize(
    "bad",
    [
        CertRequest("Bad Name", "x", client=True),
        CertRequest("x", "x"),
        CertRequest("x", "x", server=True),
        CertRequest("x", "x", ip_addresses=("nope",), server=True),
    ],
)
def test_bad_requests(pki: Pki, bad):
    with pytest.raises(PkiError):
        pki.issue(bad)


async def _serve(ctx: ssl.SSLContext):
    seen: list[bytes | None] = []

    async def handle(reader, writer):
        obj = writer.get_extra_info("ssl_object")
        seen.append(obj.getpeercert(binary_form=True) if obj else None)
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1], seen


async def _refused(port: int, ctx: ssl.SSLContext) -> bool:
    """Whether the server refused the handshake (with TLS 1.3 the client learns it on its
    first read, as an error or an empty answer)."""
    try:
        return await _call(port, ctx) != b"ok"
    except (ssl.SSLError, ConnectionError):
        return True


async def _call(port: int, ctx: ssl.SSLContext, hostname: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=hostname
    )
    data = await reader.read()
    writer.close()
    return data


async def test_handshakes(pki: Pki, tmp_path):
    paths = pki.issue(SERVER)
    alice = pki.issue(ALICE)
    ctx = server_context(paths, client_auth="required")
    server, port, seen = await _serve(ctx)
    try:
        assert await _call(port, client_context(pki.ca_cert, alice.cert, alice.key)) == b"ok"
        user = certificate_identity(seen[-1] or b"")
        assert (user.name, user.groups) == ("alice", ("dev", "ops"))
        assert await _refused(port, client_context(pki.ca_cert))  # no client certificate
        stranger = Pki(tmp_path / "stranger")
        stranger.ensure_ca("stranger")
        mallory = stranger.issue(ALICE)
        assert await _refused(port, client_context(pki.ca_cert, mallory.cert, mallory.key))
        assert len(seen) == 1  # neither reached the handler
        with pytest.raises(ssl.SSLCertVerificationError):  # the SAN names no such host
            await _call(port, client_context(pki.ca_cert, alice.cert, alice.key), "10.9.9.9")
        # rotation: the same context, reloaded, serves the new certificate
        old_serial = load(paths.cert).serial_number
        pki.rotate(["api-1"])
        ctx.load_cert_chain(paths.cert, paths.key)
        client = client_context(pki.ca_cert, alice.cert, alice.key)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="127.0.0.1"
        )
        served = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        await reader.read()
        writer.close()
        new = x509.load_der_x509_certificate(served)
        assert (
            new.serial_number != old_serial and new.serial_number == load(paths.cert).serial_number
        )
    finally:
        server.close()
        await server.wait_closed()


def test_inventory_expiry(pki: Pki):
    pki.issue(CertRequest("soon", "x", client=True, days=2))
    soon = {c.name: c for c in pki.inventory()}["soon"]
    now = dt.datetime.now(dt.UTC)
    assert 86400 < soon.seconds_to_expiry(now) <= 2 * 86400
