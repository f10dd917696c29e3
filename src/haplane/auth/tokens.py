"""Bearer tokens: kube-apiserver's static token file, and ServiceAccount tokens (bound JWTs, as
the TokenRequest API issues them).

Layer: auth. Pure but for reading the token file and reading or creating the signing key.
Imports nothing from haplane outside this package.

Static tokens (`--token-auth-file`): CSV records `token,user,uid[,"group1,group2"]`, read as
kube-apiserver reads them (k8s.io/apiserver tokenfile.NewCSV): at least 3 columns, a fourth
optional; blank lines skipped; no comment syntax (a `#` line is a record like any other); a
record with an empty token skipped with a warning; a duplicate token: the last record wins,
with a warning. Deliberate differences, all for files kube-apiserver would take but nobody
means: surrounding spaces are trimmed from every field and group (no client can send a token
with spaces around it: HTTP trims header values), empty groups are dropped, and an empty user
name is an error, not a user nobody can bind. Errors name the file and the line.

Lookup is by the token's SHA-256, then `hmac.compare_digest` with the stored token: the
dictionary probe's timing depends only on the digest, which an attacker cannot steer toward a
valid token without already knowing it, and the final comparison is constant-time. (Current
kube-apiserver scans every token with a constant-time compare; a digest index gives the same
guarantee at O(1).)

ServiceAccount tokens: ES256 JWTs signed by one platform key shared by every region (a token
issued before a failover stays valid after it), with Kubernetes' claims: `iss`, `sub`
(`system:serviceaccount:NS:NAME`), `aud` (a list), `exp`, `iat`, `nbf`, `jti` and
`kubernetes.io` (namespace, serviceaccount name and uid, and the pod, secret or node the token
is bound to). The `kid` header is Kubernetes': the unpadded base64url SHA-256 of the DER public
key. `verify` checks, in order: the algorithm (ES256 only, given to PyJWT explicitly: `none`,
HS256 with the public key as secret and every other algorithm are refused), the signature
against the key the `kid` names (or every key when it names none of ours), the issuer, the
times (`LEEWAY` of 60 s each way, go-jose's default that kube-apiserver uses: regions' clocks
drift), the audience (at least one shared with the accepted ones), then the `kubernetes.io`
claim. Every failure raises `TokenInvalid`; `verify` never returns a token that failed.

Not checked here: that the ServiceAccount, and the Secret, Pod or Node the token is bound to,
still exist with the uids in the token. That is the API server's check, against its watch cache
(haplane.api.service_accounts); it is what makes deleting a ServiceAccount, or the object a
token is bound to, revoke its tokens.

Key rotation: `ServiceAccountTokens([new_private, old_public, ...])` signs with the first key
and verifies with any, so tokens signed by the old key stay valid until they expire.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import hmac
import io
import itertools
import json
import logging
import math
import os
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .user import UserInfo

__all__ = [
    "CREDENTIAL_ID",
    "DEFAULT_ISSUER",
    "LEEWAY",
    "MAX_EXPIRATION",
    "MIN_EXPIRATION",
    "SA_GROUP",
    "SA_PREFIX",
    "ServiceAccountClaims",
    "ServiceAccountTokens",
    "StaticTokens",
    "TokenFileError",
    "TokenInvalid",
    "UserInfo",
    "VerifiedTokenCache",
    "key_id",
    "load_or_create_key",
]

log = logging.getLogger(__name__)

SA_PREFIX = "system:serviceaccount:"
SA_GROUP = "system:serviceaccounts"
DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
MIN_EXPIRATION = 600  # kube-apiserver: "may not specify a duration less than 10 minutes"
MAX_EXPIRATION = 2**32  # kube-apiserver: "may not specify a duration larger than 2^32 seconds"
LEEWAY = 60.0  # go-jose's DefaultLeeway, which kube-apiserver's ServiceAccount validator uses
MAX_TOKEN_BYTES = 16 * 1024  # far above any token issued here; bounds the work a guess costs
CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
NODE_NAME = "authentication.kubernetes.io/node-name"
NODE_UID = "authentication.kubernetes.io/node-uid"
BOUND_KINDS = ("Pod", "Secret", "Node")

_JWS = jwt.PyJWS()


class TokenFileError(ValueError):
    """The static token file cannot be used; the message names the file (and line)."""


class TokenInvalid(Exception):
    """A token of our kind that does not check out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---- static tokens -----------------------------------------------------------------------


class StaticTokens:
    """kube-apiserver's `--token-auth-file`, loaded once (a changed file needs a new object)."""

    def __init__(self, users: Mapping[str, UserInfo]) -> None:
        self._users = {_digest(token): (token.encode(), user) for token, user in users.items()}

    @classmethod
    def load(cls, path: Path | str) -> StaticTokens:
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise TokenFileError(f"token file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise TokenFileError(f"token file {path}: not UTF-8 ({exc.reason})") from None
        users: dict[str, UserInfo] = {}
        reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
        line = 1
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise TokenFileError(f"token file {path} line {line}: {exc}") from None
            start, line = line, reader.line_num + 1
            if not record:
                continue
            if len(record) < 3:
                raise TokenFileError(
                    f"token file {path} line {start}: must have at least 3 columns "
                    f"(token, user name, user uid), found {len(record)}"
                )
            token, name, uid = (f.strip() for f in record[:3])
            if not token:
                log.warning("token file %s line %d: empty token, record skipped", path, start)
                continue
            if not name:
                raise TokenFileError(f"token file {path} line {start}: empty user name")
            if token in users:
                log.warning("token file %s line %d: duplicate token, this one wins", path, start)
            groups = record[3].split(",") if len(record) > 3 else []
            users[token] = UserInfo(name, uid, tuple(g.strip() for g in groups if g.strip()))
        return cls(users)

    def authenticate(self, token: str) -> UserInfo | None:
        found = self._users.get(_digest(token))
        if found is None or not hmac.compare_digest(found[0], token.encode()):
            return None
        return found[1]

    def __len__(self) -> int:
        return len(self._users)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# ---- keys --------------------------------------------------------------------------------


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path}: ServiceAccount tokens are ES256: the key must be EC P-256")
    return key


def load_or_create_key(path: Path | str) -> ec.EllipticCurvePrivateKey:
    """The signing key (PEM, P-256) at `path`, created when absent: written to a temporary
    file made 0600 with O_EXCL, fsynced, then hard-linked into place, which fails if another
    process created the key meanwhile, whose key is then loaded: every process ends up with
    the one key on disk, and it was never readable by anyone else."""
    path = Path(path)
    try:
        return _load_key(path)
    except FileNotFoundError:
        pass
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return _load_key(path)
    finally:
        tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key


def key_id(public: ec.EllipticCurvePublicKey) -> str:
    """Kubernetes' `kid`: the unpadded base64url SHA-256 of the DER (SubjectPublicKeyInfo)."""
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


# ---- ServiceAccount tokens ---------------------------------------------------------------


@dataclass(frozen=True)
class ServiceAccountClaims:
    """A verified ServiceAccount token. `bound` maps "pod", "secret" or "node" to its
    {"name", "uid"}; `expires` and `issued` are Unix times."""

    namespace: str
    name: str
    uid: str
    audiences: tuple[str, ...]
    expires: float
    token_id: str = ""
    issued: float = 0.0
    bound: Mapping[str, Mapping[str, str]] = field(default_factory=dict, compare=False)

    @property
    def username(self) -> str:
        return f"{SA_PREFIX}{self.namespace}:{self.name}"

    def user(self) -> UserInfo:
        """The user as Kubernetes' ServiceAccountInfo.UserInfo builds it: the two
        ServiceAccount groups, the credential id and the bound pod and node as extra.
        `system:authenticated` is the caller's to add (`UserInfo.authenticated()`), as
        kube-apiserver's authentication filter adds it to every authenticated user."""
        extra: dict[str, tuple[str, ...]] = {}
        pod, node = self.bound.get("pod"), self.bound.get("node")
        if pod and pod.get("name") and pod.get("uid"):
            extra[POD_NAME], extra[POD_UID] = (pod["name"],), (pod["uid"],)
        if node and node.get("name"):
            extra[NODE_NAME] = (node["name"],)
            if node.get("uid"):
                extra[NODE_UID] = (node["uid"],)
        if self.token_id:
            extra[CREDENTIAL_ID] = (f"JTI={self.token_id}",)
        return UserInfo(self.username, self.uid, (SA_GROUP, f"{SA_GROUP}:{self.namespace}"), extra)


AnyKey = ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey


class ServiceAccountTokens:
    """Issues and verifies ServiceAccount tokens. Signs with the first key (which must then be
    private; a replica given only public keys verifies and cannot issue), verifies with any."""

    def __init__(self, keys: Sequence[AnyKey], issuer: str = DEFAULT_ISSUER) -> None:
        if not keys:
            raise ValueError("at least one key")
        if not issuer:
            raise ValueError("an issuer")
        self.issuer = issuer
        first = keys[0]
        self._signer = first if isinstance(first, ec.EllipticCurvePrivateKey) else None
        self._public: dict[str, ec.EllipticCurvePublicKey] = {}
        for key in keys:
            public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
            if public.curve.name != "secp256r1":
                raise ValueError("ServiceAccount tokens are ES256: every key must be EC P-256")
            self._public.setdefault(key_id(public), public)
        self._signer_kid = key_id(self._signer.public_key()) if self._signer else None

    @classmethod
    def load_or_create(
        cls,
        path: Path | str,
        issuer: str = DEFAULT_ISSUER,
        also_verify: Sequence[ec.EllipticCurvePublicKey] = (),
    ) -> ServiceAccountTokens:
        """Sign with the key at `path` (created 0600 when absent); also accept tokens signed
        by `also_verify` (the keys being rotated out)."""
        return cls([load_or_create_key(path), *also_verify], issuer)

    @property
    def signing_key_id(self) -> str | None:
        return self._signer_kid

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._public)

    def issue(
        self,
        namespace: str,
        name: str,
        uid: str,
        audiences: Sequence[str],
        expiration_seconds: int = 3600,
        *,
        now: float | None = None,
        bound: Mapping[str, Any] | None = None,
    ) -> tuple[str, float]:
        """A token for ServiceAccount `namespace/name` (`uid`) and its expiry (Unix time).
        `bound` is a TokenRequest's boundObjectRef ({kind: Pod|Secret|Node, name, uid}); the
        API server checks that the object exists, and fills in its uid, before asking."""
        if self._signer is None or self._signer_kid is None:
            raise ValueError("no signing key: this replica only verifies")
        if not (namespace and name and uid):
            raise ValueError("a ServiceAccount token needs a namespace, a name and a uid")
        if isinstance(expiration_seconds, bool) or not isinstance(expiration_seconds, int):
            raise ValueError("expirationSeconds must be an integer")
        if expiration_seconds < MIN_EXPIRATION:
            raise ValueError("may not specify a duration less than 10 minutes")
        if expiration_seconds > MAX_EXPIRATION:
            raise ValueError("may not specify a duration larger than 2^32 seconds")
        if isinstance(audiences, str):
            raise ValueError("audiences must be a list of strings, not a string")
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise ValueError("at least one audience, each a non-empty string")
        issued = int(now if now is not None else time.time())
        expires = issued + expiration_seconds
        private: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": uid},
        }
        if bound is not None:
            kind, ref_name, ref_uid = (bound.get(k) for k in ("kind", "name", "uid"))
            if kind not in BOUND_KINDS:
                raise ValueError(f"a token can be bound to a {', '.join(BOUND_KINDS)}, not {kind}")
            if not isinstance(ref_name, str | None) or not isinstance(ref_uid, str | None):
                raise ValueError(f"the bound {kind}'s name and uid must be strings")
            private[str(kind).lower()] = {"name": ref_name or "", "uid": ref_uid or ""}
        claims = {
            "iss": self.issuer,
            "sub": f"{SA_PREFIX}{namespace}:{name}",
            "aud": list(audiences),
            "exp": expires,
            "iat": issued,
            "nbf": issued,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": private,
        }
        token = jwt.encode(
            claims, self._signer, algorithm="ES256", headers={"kid": self._signer_kid}
        )
        return token, float(expires)

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        """Cheap: whether `token` should be given to `verify` rather than another
        authenticator (a JWT's header is base64url JSON, so it starts with `eyJ`)."""
        return token.count(".") == 2 and token.startswith("eyJ")

    def verify(
        self, token: str, audiences: Iterable[str], *, now: float | None = None
    ) -> ServiceAccountClaims:
        """The claims of a valid token, accepted for any of `audiences`; `TokenInvalid`
        (with the reason) otherwise. `now` (Unix time) replaces the clock."""
        accepted = [a for a in audiences if a]
        if not accepted:
            raise ValueError("verify needs at least one accepted audience")
        clock = time.time() if now is None else now
        claims = self._signed_claims(token)

        if claims.get("iss") != self.issuer:
            raise TokenInvalid(f"token issuer {claims.get('iss')!r} is not {self.issuer!r}")
        expires, issued = _time(claims, "exp"), _time(claims, "iat")
        # kube-apiserver's messages, and its order of checks
        if clock > expires + LEEWAY:
            raise TokenInvalid("service account token has expired")
        if "nbf" in claims and clock + LEEWAY < _time(claims, "nbf"):
            raise TokenInvalid("service account token is not valid yet")
        if clock + LEEWAY < issued:
            raise TokenInvalid("service account token is issued in the future")
        token_audiences = _audiences(claims)
        if not set(token_audiences) & set(accepted):
            raise TokenInvalid(
                f"token audiences {json.dumps(token_audiences)} is invalid for the target "
                f"audiences {json.dumps(accepted)}"
            )

        private = claims.get("kubernetes.io")
        sa = private.get("serviceaccount") if isinstance(private, dict) else None
        if not isinstance(private, dict) or not isinstance(sa, dict):
            raise TokenInvalid("not a ServiceAccount token (no kubernetes.io claim)")
        namespace, name, uid = private.get("namespace"), sa.get("name"), sa.get("uid")
        if not (
            isinstance(namespace, str)
            and isinstance(name, str)
            and isinstance(uid, str)
            and namespace
            and name
            and uid
        ):
            raise TokenInvalid("the kubernetes.io claim lacks a namespace, name or uid")
        if claims.get("sub") != f"{SA_PREFIX}{namespace}:{name}":
            raise TokenInvalid("the token's subject does not match its ServiceAccount")
        jti = claims.get("jti", "")
        bound = {
            kind: {"name": str(ref.get("name", "")), "uid": str(ref.get("uid", ""))}
            for kind in ("pod", "secret", "node")
            if isinstance(ref := private.get(kind), dict)
        }
        return ServiceAccountClaims(
            namespace=namespace,
            name=name,
            uid=uid,
            audiences=tuple(token_audiences),
            expires=expires,
            token_id=jti if isinstance(jti, str) else "",
            issued=issued,
            bound=bound,
        )

    def _signed_claims(self, token: str) -> dict[str, Any]:
        """The payload of a token whose ES256 signature one of our keys verifies."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise TokenInvalid("malformed token")
        header = _header(token)
        alg = header.get("alg")
        if alg != "ES256":
            raise TokenInvalid(f"unexpected signing algorithm {alg!r} (only ES256)")
        kid = header.get("kid")
        named = self._public.get(kid) if isinstance(kid, str) else None
        # a kid names the key; a token without one (or naming a key we lack) tries them all
        candidates = [named] if named is not None else list(self._public.values())
        for key in candidates:
            try:
                signed = _JWS.decode_complete(token, key, algorithms=["ES256"])
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise TokenInvalid(f"malformed token: {exc}") from None
            try:
                claims = json.loads(signed["payload"])
            except ValueError:
                raise TokenInvalid("malformed token: the payload is not JSON") from None
            if not isinstance(claims, dict):
                raise TokenInvalid("malformed token: the payload is not a JSON object")
            return claims
        raise TokenInvalid("invalid signature: not signed by any of this platform's keys")


def _header(token: str) -> dict[str, Any]:
    # Read only to choose a key; PyJWT checks the header again, signed, in decode_complete.
    segment = token.split(".", 1)[0]
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (ValueError, binascii.Error):
        raise TokenInvalid("malformed token: the header is not base64url JSON") from None
    if not isinstance(header, dict):
        raise TokenInvalid("malformed token: the header is not a JSON object")
    return header


def _time(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenInvalid(f"the token's {name!r} claim is missing or not a number")
    return float(value)


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        aud = [aud]  # RFC 7519 allows a single string
    if not isinstance(aud, list) or not aud or not all(isinstance(a, str) for a in aud):
        raise TokenInvalid("the token's 'aud' claim is missing or not a list of strings")
    return aud


class VerifiedTokenCache:
    """Opt-in memory of successful verifications, for the API server's hot path (an ES256
    verification costs ~0.1-0.2 ms; a hit costs a SHA-256 and a dictionary lookup).

    Keyed by the token's SHA-256, never the token. An entry lives until the token's `exp` or
    `ttl` seconds, whichever comes first, so the cache never accepts a token `verify` would
    refuse for its age, and a key removed from the verifier stops being honoured within `ttl`.
    Failures are not remembered (a flood of garbage must not evict good entries). Bounded:
    when full, the oldest tenth is dropped. One cache serves one set of accepted audiences.
    Not locked: the API server calls it from its event loop; from threads the worst a race
    does is verify a token twice."""

    def __init__(
        self,
        tokens: ServiceAccountTokens,
        audiences: Iterable[str],
        ttl: float = 10.0,
        max_entries: int = 10_000,
    ) -> None:
        self.tokens = tokens
        self.audiences = tuple(audiences)
        self.ttl = ttl
        self.max_entries = max(1, max_entries)
        self._entries: dict[bytes, tuple[float, ServiceAccountClaims]] = {}

    def verify(self, token: str, *, now: float | None = None) -> ServiceAccountClaims:
        clock = time.time() if now is None else now
        digest = _digest(token)
        hit = self._entries.get(digest)
        if hit is not None:
            if clock < hit[0]:
                return hit[1]
            del self._entries[digest]
        claims = self.tokens.verify(token, self.audiences, now=clock)
        if len(self._entries) >= self.max_entries:
            for old in list(itertools.islice(self._entries, max(1, self.max_entries // 10))):
                del self._entries[old]
        self._entries[digest] = (min(claims.expires, clock + self.ttl), claims)
        return claims

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
