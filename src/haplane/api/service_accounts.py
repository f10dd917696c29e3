"""ServiceAccount tokens at the API server: the bearer-token authenticator, and TokenRequest
(`POST .../serviceaccounts/NAME/token`).

Layer: api. The token's signature, issuer, time and audience are checked by
haplane.auth.tokens; here, that its ServiceAccount still exists with the uid the token was
bound to (so deleting the ServiceAccount, or recreating it under the same name, revokes every
token issued for it), read from this replica's watch cache.

A verified token is remembered for at most `CACHE_SECONDS` (an ES256 verification costs
~100 us on this machine; the uid check is never skipped): keyed by the token's SHA-256,
never by the token itself.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from haplane.auth.tokens import (
    MAX_EXPIRATION,
    MIN_EXPIRATION,
    ServiceAccountClaims,
    ServiceAccountTokens,
    TokenInvalid,
)
from haplane.auth.user import UserInfo

from . import errors
from .authenticators import InvalidToken
from .resources import Obj

CACHE_SECONDS = 10.0
CACHE_MAX = 10_000
DEFAULT_EXPIRATION = 3600

# (namespace, name) -> the ServiceAccount, or None
Lookup = Callable[[str, str], Awaitable[Obj | None]]


class ServiceAccountAuthenticator:
    def __init__(self, tokens: ServiceAccountTokens, audiences: Sequence[str], lookup: Lookup):
        self.tokens = tokens
        self.audiences = list(audiences)
        self.lookup = lookup
        self._verified: dict[bytes, tuple[float, ServiceAccountClaims]] = {}

    async def __call__(self, token: str) -> UserInfo | None:
        if not ServiceAccountTokens.looks_like_jwt(token):
            return None
        claims = self._claims(token)
        sa = await self.lookup(claims.namespace, claims.name)
        uid = ((sa or {}).get("metadata") or {}).get("uid")
        if uid != claims.uid:
            raise InvalidToken(
                f"the ServiceAccount {claims.namespace}/{claims.name} with uid {claims.uid} "
                "no longer exists"
            )
        return claims.user()

    def _claims(self, token: str) -> ServiceAccountClaims:
        key = hashlib.sha256(token.encode()).digest()
        now = time.time()
        hit = self._verified.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            claims = self.tokens.verify(token, self.audiences)
        except TokenInvalid as exc:
            raise InvalidToken(str(exc)) from None
        if len(self._verified) >= CACHE_MAX:
            self._verified.clear()
        self._verified[key] = (min(claims.expires, now + CACHE_SECONDS), claims)
        return claims


def token_request(
    tokens: ServiceAccountTokens, default_audiences: Sequence[str], sa: Obj, body: Obj
) -> Obj:
    """The TokenRequest answered: a token for `sa`, for the requested audiences (default: the
    API server's own) and lifetime (default one hour, at least 10 minutes)."""
    spec = body.get("spec") or {}
    if not isinstance(spec, dict):
        raise errors.bad_request("spec must be an object")
    audiences = spec.get("audiences") or list(default_audiences)
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        raise errors.unprocessable("spec.audiences must be a list of non-empty strings")
    seconds = spec.get("expirationSeconds", DEFAULT_EXPIRATION)
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        raise errors.unprocessable("spec.expirationSeconds must be an integer")
    if seconds < MIN_EXPIRATION:
        raise errors.unprocessable(
            "spec.expirationSeconds: may not specify a duration less than 10 minutes"
        )
    if seconds > MAX_EXPIRATION:
        raise errors.unprocessable(
            "spec.expirationSeconds: may not specify a duration larger than 2^32 seconds"
        )
    bound = spec.get("boundObjectRef")
    if bound is not None:
        if not isinstance(bound, dict):
            raise errors.bad_request("spec.boundObjectRef must be an object")
        if bound.get("kind") not in ("Pod", "Secret", "Node"):
            raise errors.unprocessable(
                'spec.boundObjectRef.kind: Unsupported value: supported values: "Pod", '
                '"Secret", "Node"'
            )
    meta = sa["metadata"]
    token, expires = tokens.issue(
        meta["namespace"], meta["name"], meta["uid"], audiences, seconds, bound=bound
    )
    status: dict[str, Any] = {
        "token": token,
        "expirationTimestamp": datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return {
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": {**spec, "audiences": audiences, "expirationSeconds": seconds},
        "status": status,
    }
