"""Bearer tokens: kube-apiserver's static token file, and ServiceAccount tokens (bound JWTs, as
the TokenRequest API issues them).

Layer: auth. Pure but for reading the token file and reading or creating the signing key.

Static tokens (`--token-auth-file`): CSV lines `token,user,uid[,"group1,group2"]`, at least 3
columns, as kube-apiserver reads them (blank lines skipped; a duplicate token: the last line
wins, as there). Lookup is by the token's SHA-256, then a constant-time comparison: the time a
lookup takes says nothing about how much of a guess was right.

ServiceAccount tokens: ES256 JWTs signed by one platform key shared by every region (so that a
token issued before a failover is valid after it), with Kubernetes' claims: `iss`, `sub`
(`system:serviceaccount:NS:NAME`), `aud`, `exp`, `iat`, `nbf`, `jti` and `kubernetes.io`
(namespace, serviceaccount name and uid, the bound object). `verify` checks signature,
algorithm (ES256 only: `none` and key confusion are refused by construction), issuer, time
(10 s of leeway for clock skew between regions) and audience. It cannot know whether the
ServiceAccount still exists with that uid: that is the API server's check (its cache), which
makes deleting a ServiceAccount revoke its tokens.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .user import AUTHENTICATED, UserInfo

SA_PREFIX = "system:serviceaccount:"
SA_GROUP = "system:serviceaccounts"
DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
MIN_EXPIRATION = 600  # kube-apiserver: "may not specify a duration less than 10 minutes"
MAX_EXPIRATION = 2**32  # kube-apiserver: "may not specify a duration larger than 2^32 seconds"
LEEWAY = 10.0  # seconds of clock skew tolerated between the issuing and the checking region
CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"


class TokenFileError(ValueError):
    pass


class TokenInvalid(Exception):
    """A token of our kind that does not check out; `str()` says why."""


# ---- static tokens -----------------------------------------------------------------------


class StaticTokens:
    def __init__(self, users: dict[bytes, tuple[str, UserInfo]]):
        self._users = users

    @classmethod
    def load(cls, path: Path | str) -> StaticTokens:
        path = Path(path)
        users: dict[bytes, tuple[str, UserInfo]] = {}
        try:
            text = path.read_text()
        except OSError as exc:
            raise TokenFileError(f"token file {path}: {exc.strerror}") from exc
        reader = csv.reader(text.splitlines(), skipinitialspace=True)
        for lineno, record in enumerate(reader, 1):
            if not record or all(not f.strip() for f in record):
                continue
            if len(record) < 3:
                raise TokenFileError(
                    f"token file {path} line {lineno}: must have at least 3 columns "
                    f"(token, user name, user uid), found {len(record)}"
                )
            token, name, uid = (f.strip() for f in record[:3])
            if not token:
                raise TokenFileError(f"token file {path} line {lineno}: empty token")
            if not name:
                raise TokenFileError(f"token file {path} line {lineno}: empty user name")
            extra = record[3] if len(record) > 3 else ""
            groups = tuple(g.strip() for g in extra.split(",") if g.strip())
            users[_digest(token)] = (token, UserInfo(name, uid, groups))
        return cls(users)

    def authenticate(self, token: str) -> UserInfo | None:
        found = self._users.get(_digest(token))
        if found is None or not hmac.compare_digest(found[0].encode(), token.encode()):
            return None
        return found[1]

    def __len__(self) -> int:
        return len(self._users)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# ---- ServiceAccount tokens ---------------------------------------------------------------


def load_or_create_key(path: Path | str) -> ec.EllipticCurvePrivateKey:
    """The signing key (PEM, P-256), created with mode 0600 when absent: never readable by
    others, not even for an instant (O_EXCL with the mode, then a rename)."""
    path = Path(path)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: not an EC private key (ServiceAccount tokens are ES256)")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key


def key_id(public: ec.EllipticCurvePublicKey) -> str:
    """Kubernetes' `kid`: the unpadded base64url SHA-256 of the DER public key."""
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class ServiceAccountClaims:
    namespace: str
    name: str
    uid: str
    audiences: tuple[str, ...]
    expires: float
    token_id: str
    bound: dict[str, Any] | None = None

    def user(self) -> UserInfo:
        return UserInfo(
            f"{SA_PREFIX}{self.namespace}:{self.name}",
            self.uid,
            (SA_GROUP, f"{SA_GROUP}:{self.namespace}", AUTHENTICATED),
            {CREDENTIAL_ID: (f"JTI={self.token_id}",)},
        )


class ServiceAccountTokens:
    """Signs with the first key, verifies with any (a rotated key keeps verifying the tokens
    it signed until they expire)."""

    def __init__(
        self,
        keys: Sequence[ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey],
        issuer: str = DEFAULT_ISSUER,
    ):
        if not keys:
            raise ValueError("at least one key")
        self.issuer = issuer
        first = keys[0]
        self._signer = first if isinstance(first, ec.EllipticCurvePrivateKey) else None
        self._public = {
            key_id(k.public_key() if isinstance(k, ec.EllipticCurvePrivateKey) else k): (
                k.public_key() if isinstance(k, ec.EllipticCurvePrivateKey) else k
            )
            for k in keys
        }

    def issue(
        self,
        namespace: str,
        name: str,
        uid: str,
        audiences: Sequence[str],
        expiration_seconds: int = 3600,
        *,
        now: float | None = None,
        bound: dict[str, Any] | None = None,
    ) -> tuple[str, float]:
        if self._signer is None:
            raise ValueError("no signing key: this replica only verifies")
        if expiration_seconds < MIN_EXPIRATION:
            raise ValueError("may not specify a duration less than 10 minutes")
        if expiration_seconds > MAX_EXPIRATION:
            raise ValueError("may not specify a duration larger than 2^32 seconds")
        if not audiences:
            raise ValueError("at least one audience")
        issued = int(now if now is not None else time.time())
        expires = issued + int(expiration_seconds)
        private: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": uid},
        }
        if bound:
            private[str(bound.get("kind", "object")).lower()] = {
                "name": bound.get("name", ""),
                "uid": bound.get("uid", ""),
            }
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
            claims,
            self._signer,
            algorithm="ES256",
            headers={"kid": key_id(self._signer.public_key())},
        )
        return token, float(expires)

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        return token.count(".") == 2 and token.startswith("eyJ")

    def verify(
        self, token: str, audiences: Iterable[str], *, now: float | None = None
    ) -> ServiceAccountClaims:
        accepted = list(audiences)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenInvalid(f"malformed token: {exc}") from None
        if header.get("alg") != "ES256":
            raise TokenInvalid(f"unexpected signing algorithm {header.get('alg')!r}")
        keys = (
            [self._public[header["kid"]]]
            if header.get("kid") in self._public
            else list(self._public.values())
        )
        claims: dict[str, Any] | None = None
        error: Exception | None = None
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=["ES256"],
                    audience=accepted,
                    issuer=self.issuer,
                    leeway=LEEWAY,
                    options={
                        "require": ["exp", "iat", "iss", "aud", "sub"],
                        # a given `now` (tests, replays) is checked below instead of the clock
                        "verify_exp": now is None,
                        "verify_nbf": now is None,
                        "verify_iat": False,
                    },
                )
                break
            except jwt.InvalidSignatureError as exc:
                error = exc
            except jwt.ExpiredSignatureError:
                raise TokenInvalid("the token has expired") from None
            except jwt.InvalidAudienceError:
                raise TokenInvalid(
                    f"the token's audience is not one of {', '.join(accepted)}"
                ) from None
            except jwt.PyJWTError as exc:
                raise TokenInvalid(str(exc)) from None
        if claims is None:
            raise TokenInvalid(f"invalid signature ({error})")
        if now is not None:
            if float(claims["exp"]) + LEEWAY < now:
                raise TokenInvalid("the token has expired")
            if float(claims.get("nbf", claims["iat"])) - LEEWAY > now:
                raise TokenInvalid("the token is not valid yet")
        private = claims.get("kubernetes.io")
        if not isinstance(private, dict) or not isinstance(private.get("serviceaccount"), dict):
            raise TokenInvalid("not a ServiceAccount token (no kubernetes.io claim)")
        sa = private["serviceaccount"]
        namespace, name = str(private.get("namespace", "")), str(sa.get("name", ""))
        if claims["sub"] != f"{SA_PREFIX}{namespace}:{name}":
            raise TokenInvalid("the token's subject does not match its ServiceAccount")
        aud = claims["aud"]
        bound = next(
            (dict(v) for k, v in private.items() if k not in ("namespace", "serviceaccount")),
            None,
        )
        return ServiceAccountClaims(
            namespace,
            name,
            str(sa.get("uid", "")),
            tuple(aud) if isinstance(aud, list) else (str(aud),),
            float(claims["exp"]),
            str(claims.get("jti", "")),
            bound,
        )
