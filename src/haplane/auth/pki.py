"""The platform PKI: one CA per topology (created, or supplied by the user) and the leaf
certificates of every component, in one directory.

Layer: auth. Touches only its directory.

Invariants:
- keys are ECDSA P-256 (fast handshakes; etcd and Go accept them) and are never readable by
  anyone but their owner, not even for an instant: written to a temporary file created 0600,
  fsynced, then renamed; the directory is 0700;
- a key and its certificate change together: the new key is renamed into place first, then
  the certificate, and `load_pair` refuses a certificate whose public key is not its key's
  (a crash between the two renames leaves a pair `ensure` reissues);
- leaves carry what their use needs: serverAuth with every name clients use as SANs, or
  clientAuth with the identity as Kubernetes reads it (CN the user, one O per group), or both
  (etcd peers); BasicConstraints CA:false; AuthorityKeyIdentifier so chains build.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_WITHIN = dt.timedelta(days=30)
BACKDATE = dt.timedelta(minutes=5)  # clock skew between the hosts of a topology
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class PkiError(ValueError):
    pass


@dataclass(frozen=True)
class CertRequest:
    name: str  # the file stem: <name>.crt, <name>.key
    common_name: str
    organizations: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    server: bool = False
    client: bool = False
    days: int = LEAF_DAYS

    def check(self) -> None:
        if not _NAME.match(self.name):
            raise PkiError(f"certificate name {self.name!r}: use [a-z0-9][a-z0-9._-]*")
        if not (self.server or self.client):
            raise PkiError(f"certificate {self.name!r}: say server, client or both")
        if self.server and not (self.dns_names or self.ip_addresses):
            raise PkiError(f"server certificate {self.name!r} needs at least one SAN")
        for ip in self.ip_addresses:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise PkiError(f"certificate {self.name!r}: {ip!r} is not an IP address") from None
        if not self.common_name:
            raise PkiError(f"certificate {self.name!r} needs a common name")


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class CertInfo:
    name: str
    common_name: str
    groups: tuple[str, ...]
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    server: bool
    client: bool
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int
    path: Path

    def seconds_to_expiry(self, now: dt.datetime | None = None) -> float:
        return (self.not_after - (now or dt.datetime.now(dt.UTC))).total_seconds()


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_der(key: ec.EllipticCurvePublicKey | object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def describe(cert: x509.Certificate, name: str, path: Path) -> CertInfo:
    subject = cert.subject
    cn = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    groups = tuple(str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(i) for i in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        server = ExtendedKeyUsageOID.SERVER_AUTH in eku
        client = ExtendedKeyUsageOID.CLIENT_AUTH in eku
    except x509.ExtensionNotFound:
        server = client = False
    return CertInfo(
        name,
        str(cn[0].value) if cn else "",
        groups,
        dns,
        ips,
        server,
        client,
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        cert.serial_number,
        path,
    )


class Pki:
    def __init__(self, directory: Path | str):
        self.dir = Path(directory)

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    def _prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    # ---- the CA --------------------------------------------------------------------------

    def ensure_ca(self, common_name: str, days: int = CA_DAYS) -> None:
        """Create the CA unless there is one."""
        if self.ca_cert.exists() and self.ca_key.exists():
            self._load_ca()
            return
        self._prepare()
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_private(self.ca_key, _key_pem(key), 0o600)
        _write_private(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def adopt_ca(self, cert_path: Path | str, key_path: Path | str) -> None:
        """Use a CA the user supplies (copied in, checked: a CA, its key, not expired)."""
        try:
            cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
            key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise PkiError(f"the supplied CA cannot be read: {exc}") from exc
        try:
            basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            basic = None
        if basic is None or not basic.ca:
            raise PkiError(f"{cert_path} is not a CA certificate (BasicConstraints CA:true)")
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            raise PkiError(f"{key_path} is not the key of {cert_path}")
        if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
            raise PkiError(f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{key_path}: haplane signs with ECDSA keys (P-256)")
        self._prepare()
        _write_private(self.ca_key, _key_pem(key), 0o600)
        _write_private(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def _load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self.ca_key}: not an ECDSA key")
        return cert, key

    # ---- leaves --------------------------------------------------------------------------

    def paths(self, name: str) -> CertPaths:
        return CertPaths(self.dir / f"{name}.crt", self.dir / f"{name}.key", self.ca_cert)

    def issue(self, req: CertRequest) -> CertPaths:
        """A fresh key and certificate for `req`, signed by the CA."""
        req.check()
        ca_cert, ca_key = self._load_ca()
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in req.organizations]
        subject = x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, req.common_name)])
        now = dt.datetime.now(dt.UTC)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if req.server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if req.client else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + dt.timedelta(days=req.days), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in req.dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in req.ip_addresses]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        paths = self.paths(req.name)
        self._prepare()
        _write_private(paths.key, _key_pem(key), 0o600)
        _write_private(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return paths

    def load_pair(self, name: str) -> x509.Certificate:
        """The certificate of `name`, checked to belong to its key and to the current CA."""
        paths = self.paths(name)
        try:
            cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
            key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise PkiError(f"{name}: {exc}") from exc
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            raise PkiError(f"{paths.cert} does not belong to {paths.key}")
        ca_cert, _ = self._load_ca()
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise PkiError(f"{paths.cert} is not signed by {self.ca_cert}: {exc}") from exc
        return cert

    def ensure(self, req: CertRequest, renew_within: dt.timedelta = RENEW_WITHIN) -> CertPaths:
        """The pair of `req`: kept when it exists, belongs together, is signed by the current
        CA, says exactly what `req` asks and is not about to expire; else issued anew."""
        req.check()
        try:
            info = describe(self.load_pair(req.name), req.name, self.paths(req.name).cert)
        except PkiError:
            return self.issue(req)
        wanted = (
            req.common_name,
            tuple(req.organizations),
            set(req.dns_names),
            {str(ipaddress.ip_address(i)) for i in req.ip_addresses},
            req.server,
            req.client,
        )
        have = (
            info.common_name,
            info.groups,
            set(info.dns_names),
            set(info.ip_addresses),
            info.server,
            info.client,
        )
        if have != wanted or info.not_after - dt.datetime.now(dt.UTC) < renew_within:
            return self.issue(req)
        return self.paths(req.name)

    def request_of(self, name: str) -> CertRequest:
        info = describe(self.load_pair(name), name, self.paths(name).cert)
        days = max(1, round((info.not_after - info.not_before).total_seconds() / 86400))
        return CertRequest(
            name,
            info.common_name,
            info.groups,
            info.dns_names,
            info.ip_addresses,
            info.server,
            info.client,
            days,
        )

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.crt") if p.stem != "ca")

    def rotate(self, names: Iterable[str] | None = None) -> list[str]:
        """Reissue leaves (all when None) with what they say now, a new key and serial."""
        chosen = list(names) if names is not None else self.names()
        for name in chosen:
            self.issue(self.request_of(name))
        return chosen

    def inventory(self) -> list[CertInfo]:
        out = []
        for name in ["ca", *self.names()]:
            path = self.dir / f"{name}.crt"
            out.append(describe(x509.load_pem_x509_certificate(path.read_bytes()), name, path))
        return out


def seconds_to_expiry(path: Path | str, now: dt.datetime | None = None) -> float:
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    return (cert.not_valid_after_utc - (now or dt.datetime.now(dt.UTC))).total_seconds()


def server_context(
    paths: CertPaths, client_auth: Literal["none", "optional", "required"] = "optional"
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(paths.cert, paths.key)
    if client_auth != "none":
        ctx.load_verify_locations(paths.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if client_auth == "required" else ssl.CERT_OPTIONAL
    return ctx


def client_context(
    ca: Path | str, cert: Path | str | None = None, key: Path | str | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx
