"""The platform PKI: one CA per topology (created, or supplied by the user) and the leaf
certificates of every component (etcd serving, peer and client; API replicas; balancer and gate
admin listeners; controllers, replicators and people), kept in one directory.

Layer: auth. Touches only its directory (and, to hand a verified pair to OpenSSL, an anonymous
in-memory file). Imports nothing from haplane.

Layout: `ca.crt`/`ca.key`, and `<name>.crt`/`<name>.key` for each leaf; `.lock` serialises
writers (an advisory `flock`, so two processes ensuring certificates at once cannot interleave
one's key with the other's certificate).

Invariants:
- keys are ECDSA P-256 (fast handshakes; etcd 3.4 and Go accept them). A supplied CA may also
  hold an RSA key: leaves are P-256 whatever signs them;
- a key is never readable by anyone but its owner, not even for an instant: it is written to a
  temporary file created 0600 with O_EXCL (the mode is set by open, then pinned by fchmod
  against the umask), fsynced, then renamed over the old one; the directory is 0700;
  certificates are 0644;
- every write is atomic (temporary file, fsync, rename, fsync of the directory): a crash leaves
  the old file or the new one, never half of either;
- a key and its certificate change together, in a fixed order: both temporary files are written
  first, then the key is renamed into place, then the certificate. So a certificate on disk is
  never newer than its key; the one torn state a reader can see (for microseconds, or for good
  after a crash between the renames) is a new key beside the old certificate. Every loader here
  compares the two public keys and refuses such a pair with `PkiError`, `ensure` reissues it,
  and `reload_server_context` hands OpenSSL only a pair it has checked (OpenSSL itself, given a
  mismatched pair, drops the certificate it was serving and fails every handshake after);
- leaves carry what their use needs: serverAuth with every name clients use as SANs (DNS names
  and IP addresses, IPv4 and IPv6), and/or clientAuth with the identity as Kubernetes reads it
  (CN the user, one O per group); BasicConstraints CA:false; digitalSignature (critical);
  subject and authority key identifiers, so chains build; a random serial; notBefore five
  minutes back (clock skew between hosts); notAfter capped at the CA's.

Not here: revocation (no CRL or OCSP: leaves are short-lived and rotated instead), CA rotation
(a new CA must be distributed to every client before leaves signed by it are served), and
encrypted keys (the components start unattended).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
import re
import secrets
import ssl
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_WITHIN = dt.timedelta(days=30)
BACKDATE = dt.timedelta(minutes=5)  # clock skew between the hosts of a topology
CA_NAME = "ca"
CN_MAX = 64  # X.509's upper bound, which cryptography enforces

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")

CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
ClientAuth = Literal["none", "optional", "required"]


class PkiError(ValueError):
    """A request, file or pair the PKI refuses; the message names the file or field."""


# ---- requests and descriptions -----------------------------------------------------------


@dataclass(frozen=True)
class CertRequest:
    """What a leaf certificate says. Checked when built: an impossible request fails where it
    is written, not when a component starts."""

    name: str  # the file stem: <name>.crt, <name>.key
    common_name: str
    organizations: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    server: bool = False
    client: bool = False
    days: int = LEAF_DAYS

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise PkiError(f"certificate name {self.name!r}: use [a-z0-9][a-z0-9._-]*")
        if self.name == CA_NAME:
            raise PkiError(f"certificate name {CA_NAME!r} is the CA's")
        if not (self.server or self.client):
            raise PkiError(f"certificate {self.name!r}: say server, client or both")
        if self.server and not (self.dns_names or self.ip_addresses):
            raise PkiError(f"server certificate {self.name!r} needs at least one SAN")
        if not 1 <= len(self.common_name) <= CN_MAX:
            raise PkiError(
                f"certificate {self.name!r}: the common name must be 1 to {CN_MAX} characters"
            )
        if any(not o for o in self.organizations):
            raise PkiError(f"certificate {self.name!r}: an empty organization (group)")
        for dns in self.dns_names:
            if not _valid_dns(dns):
                raise PkiError(f"certificate {self.name!r}: {dns!r} is not a DNS name")
        for ip in self.ip_addresses:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise PkiError(f"certificate {self.name!r}: {ip!r} is not an IP address") from None
        if self.days < 1:
            raise PkiError(f"certificate {self.name!r}: days must be at least 1")


def _valid_dns(name: str) -> bool:
    labels = name.split(".")
    if len(name) > 253 or not name.isascii():
        return False
    if labels[0] == "*" and len(labels) > 1:  # a wildcard only as the whole leftmost label
        labels = labels[1:]
    return all(_LABEL.fullmatch(label) for label in labels)


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class CertInfo:
    """One certificate as `haplane status` and the metrics show it."""

    name: str
    common_name: str
    groups: tuple[str, ...]
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    server: bool
    client: bool
    is_ca: bool
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int
    path: Path

    def seconds_to_expiry(self, now: dt.datetime | None = None) -> float:
        return (self.not_after - (now or _now())).total_seconds()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _describe(cert: x509.Certificate, name: str, path: Path) -> CertInfo:
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
        name=name,
        common_name=str(cn[-1].value) if cn else "",
        groups=groups,
        dns_names=dns,
        ip_addresses=ips,
        server=server,
        client=client,
        is_ca=_is_ca(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
        path=path,
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _says(info: CertInfo) -> tuple[object, ...]:
    """What `ensure` compares: names as sets (order and case of DNS names carry no meaning)."""
    return (
        info.common_name,
        frozenset(info.groups),
        frozenset(d.lower() for d in info.dns_names),
        frozenset(ipaddress.ip_address(i) for i in info.ip_addresses),
        info.server,
        info.client,
    )


def _asks(req: CertRequest) -> tuple[object, ...]:
    return (
        req.common_name,
        frozenset(req.organizations),
        frozenset(d.lower() for d in req.dns_names),
        frozenset(ipaddress.ip_address(i) for i in req.ip_addresses),
        req.server,
        req.client,
    )


# ---- files -------------------------------------------------------------------------------


def _write_temp(directory: Path, stem: str, data: bytes, mode: int) -> Path:
    """A fsynced temporary file beside its destination (same filesystem: the rename is atomic),
    created with `mode` and O_EXCL, so it was never anyone else's file nor more open."""
    while True:
        tmp = directory / f".{stem}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue
        break
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits a certificate needs (0644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(files: list[tuple[Path, bytes, int]]) -> None:
    """Write every file to a temporary one, then rename them into place in the order given
    (for a pair: key, then certificate), then make the renames durable."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            staged.append((_write_temp(path.parent, path.name, data, mode), path))
        while staged:
            tmp, path = staged[0]
            os.replace(tmp, path)
            staged.pop(0)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    for directory in {path.parent for path, _, _ in files}:
        _fsync_dir(directory)


def _key_pem(key: CaKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise PkiError(f"{path} is not a PEM certificate: {exc}") from None


def _read_key(path: Path) -> CaKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise PkiError(f"{path} does not exist") from None
    except TypeError:
        raise PkiError(f"{path} is encrypted: supply the key without a passphrase") from None
    except (OSError, ValueError) as exc:
        raise PkiError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"{path}: only ECDSA and RSA keys are supported")
    return key


def _check_pair(cert: x509.Certificate, key: CaKey, cert_path: Path, key_path: Path) -> None:
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise PkiError(
            f"{cert_path} does not belong to {key_path} (their public keys differ: a write was "
            "interrupted, or one of the two files was replaced by hand)"
        )


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# ---- the PKI -----------------------------------------------------------------------------


class Pki:
    """One topology's CA and leaves in `directory`. Safe to share between threads and
    processes: writers take the directory's lock, readers rely on atomic renames and check
    every pair they load."""

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)
        self._mutex = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None

    @property
    def ca_cert(self) -> Path:
        return self.dir / f"{CA_NAME}.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / f"{CA_NAME}.key"

    def paths(self, name: str) -> CertPaths:
        if not _NAME.fullmatch(name) or name == CA_NAME:
            raise PkiError(f"no leaf can be called {name!r}")
        return CertPaths(self.dir / f"{name}.crt", self.dir / f"{name}.key", self.ca_cert)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Re-entrant within this object (ensure calls issue); flock, taken once, excludes other
        # processes and other Pki objects on the same directory.
        with self._mutex:
            if self._depth == 0:
                self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(self.dir, 0o700)  # mkdir's mode is filtered by the umask
                fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None

    # ---- the CA --------------------------------------------------------------------------

    def ensure_ca(self, common_name: str, days: int = CA_DAYS) -> None:
        """Create the CA unless there is one; an existing one is checked (a CA, its key),
        never replaced: replacing it would silently invalidate every certificate it signed."""
        with self._locked():
            have_cert, have_key = self.ca_cert.exists(), self.ca_key.exists()
            if have_cert and have_key:
                self.load_ca()
                return
            if have_cert or have_key:
                present, absent = (
                    (self.ca_cert, self.ca_key) if have_cert else (self.ca_key, self.ca_cert)
                )
                raise PkiError(
                    f"{present} exists but {absent} does not: restore it, or remove both to "
                    "create a new CA (every certificate must then be reissued)"
                )
            key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
            now = _now()
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
                    x509.KeyUsage(
                        digital_signature=False,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=True,
                        crl_sign=True,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .sign(key, hashes.SHA256())
            )
            _install([(self.ca_key, _key_pem(key), 0o600), (self.ca_cert, _cert_pem(cert), 0o644)])

    def adopt_ca(self, cert_path: Path | str, key_path: Path | str) -> None:
        """Use a CA the user supplies, copied in after checks: a CA certificate allowed to sign
        certificates, the key that belongs to it (ECDSA or RSA, unencrypted), valid now.
        Leaves signed by a previous CA are reissued by the next `ensure` (or `rotate`)."""
        cert_path, key_path = Path(cert_path), Path(key_path)
        cert, key = _read_cert(cert_path), _read_key(key_path)
        if not _is_ca(cert):
            raise PkiError(f"{cert_path} is not a CA certificate (no BasicConstraints CA:true)")
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            if not usage.key_cert_sign:
                raise PkiError(f"{cert_path} may not sign certificates (no keyCertSign usage)")
        except x509.ExtensionNotFound:
            pass
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise PkiError(f"{key_path} is not the key of {cert_path}")
        try:
            # a root: OpenSSL-based peers (Python's ssl, HAProxy) accept a trust anchor only
            # when it is self-signed, so an intermediate here would fail every handshake
            cert.verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature):
            raise PkiError(
                f"{cert_path} is an intermediate CA (issued by {cert.issuer.rfc4514_string()}): "
                "give a self-signed root CA (e.g. one made for this platform); clients trust "
                "it as their only anchor"
            ) from None
        now = _now()
        if cert.not_valid_after_utc <= now:
            raise PkiError(f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
        if cert.not_valid_before_utc > now + BACKDATE:
            raise PkiError(
                f"{cert_path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z"
            )
        with self._locked():
            _install([(self.ca_key, _key_pem(key), 0o600), (self.ca_cert, _cert_pem(cert), 0o644)])

    def load_ca(self) -> tuple[x509.Certificate, CaKey]:
        """The CA certificate and key, checked to belong together."""
        cert, key = _read_cert(self.ca_cert), _read_key(self.ca_key)
        _check_pair(cert, key, self.ca_cert, self.ca_key)
        if not _is_ca(cert):
            raise PkiError(f"{self.ca_cert} is not a CA certificate")
        return cert, key

    # ---- leaves --------------------------------------------------------------------------

    def issue(self, req: CertRequest) -> CertPaths:
        """A fresh key and certificate for `req`, signed by the CA (always new: see `ensure`)."""
        with self._locked():
            ca_cert, ca_key = self.load_ca()
            now = _now()
            if ca_cert.not_valid_after_utc <= now:
                raise PkiError(
                    f"the CA {self.ca_cert} expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}: "
                    "replace it (adopt_ca) before issuing"
                )
            key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name(
                [
                    *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in req.organizations),
                    x509.NameAttribute(NameOID.COMMON_NAME, req.common_name),
                ]
            )
            usages = [ExtendedKeyUsageOID.SERVER_AUTH] if req.server else []
            usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if req.client else []
            builder = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(ca_cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                # within the CA's validity: some verifiers insist on nesting
                .not_valid_before(max(now - BACKDATE, ca_cert.not_valid_before_utc))
                .not_valid_after(
                    min(now + dt.timedelta(days=req.days), ca_cert.not_valid_after_utc)
                )
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=False,  # ECDHE with an EC key: nothing is enciphered
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=False,
                        crl_sign=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                    critical=False,
                )
            )
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in req.dns_names]
            names += [x509.IPAddress(ipaddress.ip_address(i)) for i in req.ip_addresses]
            if names:
                builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            cert = builder.sign(ca_key, hashes.SHA256())
            paths = self.paths(req.name)
            _install([(paths.key, _key_pem(key), 0o600), (paths.cert, _cert_pem(cert), 0o644)])
            return paths

    def load_pair(self, name: str) -> x509.Certificate:
        """The certificate of `name`, checked to belong to its key and to the current CA."""
        paths = self.paths(name)
        cert, key = _read_cert(paths.cert), _read_key(paths.key)
        _check_pair(cert, key, paths.cert, paths.key)
        if not _signed_by(cert, _read_cert(self.ca_cert)):
            raise PkiError(f"{paths.cert} is not signed by {self.ca_cert}")
        return cert

    def ensure(self, req: CertRequest, renew_within: dt.timedelta = RENEW_WITHIN) -> CertPaths:
        """The pair of `req`: kept when it belongs together, is signed by the current CA, says
        exactly what `req` asks (CN, groups and SANs compared as sets, usages) and does not
        expire within `renew_within`; issued anew otherwise. A certificate that already ends
        with the CA is kept: a new one could not outlive it. `req.days` is not compared."""
        with self._locked():
            paths = self.paths(req.name)
            try:
                cert = self.load_pair(req.name)
            except PkiError:
                return self.issue(req)
            if _says(_describe(cert, req.name, paths.cert)) != _asks(req):
                return self.issue(req)
            ca_end = _read_cert(self.ca_cert).not_valid_after_utc
            end = cert.not_valid_after_utc
            if end - _now() < renew_within and end < ca_end:
                return self.issue(req)
            return paths

    def request_of(self, name: str) -> CertRequest:
        """The request a leaf's certificate answers (read from the certificate alone, so that a
        leaf signed by a replaced CA can still be rotated)."""
        paths = self.paths(name)
        info = _describe(_read_cert(paths.cert), name, paths.cert)
        days = max(1, round((info.not_after - info.not_before - BACKDATE) / dt.timedelta(days=1)))
        return CertRequest(
            name=name,
            common_name=info.common_name,
            organizations=info.groups,
            dns_names=info.dns_names,
            ip_addresses=info.ip_addresses,
            server=info.server,
            client=info.client,
            days=days,
        )

    def names(self) -> list[str]:
        """Every leaf in the directory."""
        if not self.dir.is_dir():
            return []
        return sorted(
            p.stem for p in self.dir.glob("*.crt") if p.stem != CA_NAME and _NAME.fullmatch(p.stem)
        )

    def rotate(self, names: Iterable[str] | None = None) -> list[str]:
        """Reissue leaves (all when None) saying what they say now, with a new key and serial.
        Every certificate is read before any is replaced: a missing or unreadable one fails
        the call without rotating the others."""
        with self._locked():
            chosen = list(names) if names is not None else self.names()
            requests = [self.request_of(name) for name in chosen]
            for req in requests:
                self.issue(req)
            return chosen

    def inventory(self) -> list[CertInfo]:
        """The CA, then every leaf, by name."""
        out = []
        for name in [CA_NAME, *self.names()]:
            path = self.dir / f"{name}.crt"
            out.append(_describe(_read_cert(path), name, path))
        return out


def seconds_to_expiry(path: Path | str, now: dt.datetime | None = None) -> float:
    """Seconds until the certificate at `path` expires (negative once it has)."""
    cert = _read_cert(Path(path))
    return (cert.not_valid_after_utc - (now or _now())).total_seconds()


# ---- TLS ---------------------------------------------------------------------------------


def _load_checked_chain(ctx: ssl.SSLContext, cert_path: Path, key_path: Path) -> None:
    """Read the pair once, check it, and give OpenSSL exactly those bytes (through an anonymous
    in-memory file): what was checked is what is loaded, even if a rotation renames files in
    between."""
    cert_pem, key_pem = _read_bytes(cert_path), _read_bytes(key_path)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{cert_path} / {key_path}: {exc}") from None
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise PkiError(f"{cert_path} does not belong to {key_path} (their public keys differ)")
    with _private_file(cert_pem.rstrip(b"\n") + b"\n" + key_pem) as combined:
        ctx.load_cert_chain(combined)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PkiError(f"{path}: {exc.strerror}") from None


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("haplane-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, name = tempfile.mkstemp()  # 0600, O_EXCL
    try:
        os.write(fd, data)
        os.close(fd)
        yield name
    finally:
        os.unlink(name)


def server_context(paths: CertPaths, client_auth: ClientAuth = "optional") -> ssl.SSLContext:
    """A TLS >= 1.2 server context serving `paths`' pair. With client_auth "optional" or
    "required", client certificates are verified against `paths.ca` and nothing else (never
    the system's trust store: any public CA could otherwise name a user). Built directly, not
    by `ssl.create_default_context`, which would also honour SSLKEYLOGFILE."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_checked_chain(ctx, paths.cert, paths.key)
    if client_auth != "none":
        try:
            ctx.load_verify_locations(cafile=paths.ca)
        except (OSError, ssl.SSLError) as exc:
            raise PkiError(f"client CA {paths.ca}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if client_auth == "required" else ssl.CERT_OPTIONAL
    return ctx


def reload_server_context(ctx: ssl.SSLContext, paths: CertPaths) -> None:
    """Serve `paths`' pair from the next handshake on (connections already up keep theirs).
    A pair that does not belong together raises `PkiError` and leaves `ctx` serving what it
    served: `ctx.load_cert_chain` on such a pair would leave it with no certificate at all.
    The client CA is not reloaded (OpenSSL can add trust, not remove it: a new CA needs a new
    context)."""
    _load_checked_chain(ctx, paths.cert, paths.key)


def client_context(
    ca: Path | str, cert: Path | str | None = None, key: Path | str | None = None
) -> ssl.SSLContext:
    """A TLS >= 1.2 client context that trusts `ca` only, checks the server's name against its
    SANs (IP addresses against IP SANs only), and presents `cert`/`key` when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise PkiError(f"CA {ca}: {exc}") from None
    if cert is not None:
        _load_checked_chain(ctx, Path(cert), Path(key if key is not None else cert))
    return ctx


def identity_from_peercert(cert: Mapping[str, Any] | bytes) -> tuple[str, tuple[str, ...]]:
    """(user, groups) of a verified client certificate, as kube-apiserver reads it: the
    subject's CN is the user (the last CN, as Go's pkix.Name keeps), each O a group in order.
    Takes the DER of `getpeercert(binary_form=True)` (preferred: parsed by cryptography) or
    the dict of `getpeercert()`. Only call it on a certificate the handshake verified."""
    if isinstance(cert, bytes | bytearray | memoryview):
        try:
            subject = x509.load_der_x509_certificate(bytes(cert)).subject
        except ValueError as exc:
            raise PkiError(f"the client certificate cannot be parsed: {exc}") from None
        cns = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        groups = tuple(
            str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        )
    else:
        if not cert:
            raise PkiError("no verified client certificate (getpeercert() returned nothing)")
        pairs = [(str(k), str(v)) for rdn in cert.get("subject", ()) for k, v in rdn]
        cns = [v for k, v in pairs if k == "commonName"]
        groups = tuple(v for k, v in pairs if k == "organizationName")
    if not cns or not cns[-1]:
        raise PkiError("the client certificate names no user (no subject CN)")
    return cns[-1], groups
