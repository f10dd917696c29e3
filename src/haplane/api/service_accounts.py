"""ServiceAccount tokens at the API server: the bearer-token authenticator, and TokenRequest
(`POST .../serviceaccounts/NAME/token`).

Layer: api. The token's signature, issuer, time and audience are checked by
haplane.auth.tokens; here, that the objects it is bound to still exist with the uids in it:
its ServiceAccount (so deleting the ServiceAccount, or recreating it under the same name,
revokes every token issued for it) and the Secret, Pod or Node named by the TokenRequest's
`boundObjectRef` (deleting that object revokes the token the same way). An object deleted
with finalizers still counts until `LEEWAY` after its deletionTimestamp, as in kube-apiserver.

Where each check reads (the server wires it; `Lookup`):
- TokenRequest reads the bound object from etcd (a linearizable read, as kube-apiserver's
  registry does): a Secret created a moment ago can be bound at once.
- Each use of a token reads this replica's watch cache (etcd while that cache is not ready,
  as every `resourceVersion="0"` read). When the cache has no object with the token's uid and
  the token was issued less than `RECENT_TOKEN_SECONDS` ago, one etcd read decides instead:
  the cache may not have caught up with the object TokenRequest just read from etcd (on this
  replica or another). Older tokens are judged by the cache alone, so a revoked token does
  not cost an etcd read per use.
- A read that fails (etcd unreachable while the cache reloads, an object that cannot be
  decrypted) refuses the token (401), as kube-apiserver's validator does: a bound object's
  failure reads "service account token has been invalidated", the ServiceAccount's gives the
  error. Not 503: authentication answers who is asking or 401, and TokenReview's callers
  expect `authenticated` true or false; a replica that cannot reach etcd says so on /readyz.

This replica serves no Pods or Nodes, so no Pod or Node can exist: a TokenRequest bound to
one is 404, as Kubernetes answers for a missing object, and a token bound to one (signed
elsewhere with the platform key, or by TokenRequest before bindings were checked) never
authenticates. A Pod-bound token's Node claim is not filled in (Kubernetes adds the pod's
node when it is scheduled).

A verified token is remembered for at most `CACHE_SECONDS` (an ES256 verification costs
~100 us on this machine; the uid checks are never skipped): keyed by the token's SHA-256,
never by the token itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from haplane.auth.tokens import (
    LEEWAY,
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
from .validation import path_segment_name_errors

log = logging.getLogger("haplane.api")

CACHE_SECONDS = 10.0
CACHE_MAX = 10_000
DEFAULT_EXPIRATION = 3600
INVALIDATED = "service account token has been invalidated"  # kube-apiserver's words
# A token issued this recently may be bound to an object this replica's watch cache has not
# seen yet: TokenRequest read it from etcd a moment ago, perhaps on another replica. A healthy
# cache lags etcd by milliseconds; a minute also covers a cache relisting after a reconnect or
# a compaction, and is the LEEWAY a deleted object keeps counting for. kube-apiserver's token
# getter reads live after every cache miss; bounding it by the token's age keeps a revoked
# token from costing an etcd read per use for the rest of its life.
RECENT_TOKEN_SECONDS = 60.0

# (resource, namespace or None, name) -> the object of the core group, or None when there is
# no such object (or the resource is not served); raises StatusError when the read fails.
# Each caller says where it reads from.
Lookup = Callable[[str, str | None, str], Awaitable[Obj | None]]

# the kinds a token may be bound to: their resource, and whether they live in a namespace
BINDABLE: Mapping[str, tuple[str, bool]] = {
    "Pod": ("pods", True),
    "Secret": ("secrets", True),
    "Node": ("nodes", False),
}


@dataclass(frozen=True)
class BoundObjectRef:
    """A TokenRequest's `spec.boundObjectRef`, of a kind a token may be bound to."""

    kind: str
    name: str
    uid: str  # "" when the request leaves it to the server

    @property
    def resource(self) -> str:
        return BINDABLE[self.kind][0]

    def namespace(self, service_account_namespace: str) -> str | None:
        return service_account_namespace if BINDABLE[self.kind][1] else None


class ServiceAccountAuthenticator:
    """`cached` reads the watch cache: it runs on every request a token authenticates.
    `live` reads etcd: only for a token issued less than `RECENT_TOKEN_SECONDS` ago that the
    cache does not bear out."""

    def __init__(
        self,
        tokens: ServiceAccountTokens,
        audiences: Sequence[str],
        cached: Lookup,
        live: Lookup,
    ):
        self.tokens = tokens
        self.audiences = list(audiences)
        self.cached = cached
        self.live = live
        self._verified: dict[bytes, tuple[float, ServiceAccountClaims]] = {}

    async def __call__(self, token: str) -> UserInfo | None:
        if not ServiceAccountTokens.looks_like_jwt(token):
            return None
        claims = self._claims(token)
        now = time.time()
        recent = now - claims.issued < RECENT_TOKEN_SECONDS
        try:
            sa = await self._read(
                "serviceaccounts", claims.namespace, claims.name, claims.uid, recent
            )
        except errors.StatusError as exc:
            log.debug("service account %s/%s: %s", claims.namespace, claims.name, exc.message)
            raise InvalidToken(exc.message) from None
        refusal = service_account_refusal(claims, sa, now)
        if refusal is not None:
            raise InvalidToken(refusal)
        for kind, ref in bindings_to_check(claims):
            resource, namespaced = BINDABLE[kind]
            namespace = claims.namespace if namespaced else None
            try:
                found = await self._read(
                    resource, namespace, ref.get("name", ""), ref.get("uid", ""), recent
                )
            except errors.StatusError as exc:
                log.debug("bound %s %s: %s", kind, ref.get("name", ""), exc.message)
                raise InvalidToken(INVALIDATED) from None
            refusal = bound_object_refusal(kind, ref, found, now)
            if refusal is not None:
                raise InvalidToken(refusal)
        return claims.user()

    async def _read(
        self, resource: str, namespace: str | None, name: str, uid: str, recent: bool
    ) -> Obj | None:
        """The object from the watch cache; from etcd when the cache has none with `uid` and
        the token is `recent` (the cache may not have caught up with it yet)."""
        found = await self.cached(resource, namespace, name)
        if recent and _uid(found) != uid:
            found = await self.live(resource, namespace, name)
        return found

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


def _uid(obj: Obj | None) -> str | None:
    uid = ((obj or {}).get("metadata") or {}).get("uid")
    return uid if isinstance(uid, str) else None


def deleted_before(obj: Obj | None, moment: float) -> bool:
    """Whether `obj` is being deleted (finalizers hold it) since before `moment` (Unix time)."""
    stamp = ((obj or {}).get("metadata") or {}).get("deletionTimestamp")
    if not isinstance(stamp, str):
        return False
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return True  # not a time we wrote: judge the object as gone, never as alive
    return when < moment


def service_account_refusal(
    claims: ServiceAccountClaims, found: Obj | None, now: float
) -> str | None:
    """Why the token no longer authenticates, given its ServiceAccount now (`found`, None
    when there is none); None when it still does. kube-apiserver's messages and order
    (pkg/serviceaccount/claims.go)."""
    if found is None:
        return f'serviceaccounts "{claims.name}" not found'
    uid = _uid(found) or ""
    if uid != claims.uid:
        return f"service account UID ({uid}) does not match claim ({claims.uid})"
    if deleted_before(found, now - LEEWAY):
        return f"service account {claims.namespace}/{claims.name} has been deleted"
    return None


def bindings_to_check(claims: ServiceAccountClaims) -> list[tuple[str, Mapping[str, str]]]:
    """The token's bound objects, capitalised kind first, in kube-apiserver's order (Secret,
    Pod, Node). A Pod-bound token's Node is information about the pod, not a binding: only a
    token bound to a Node itself is checked against it."""
    order = [("Secret", "secret"), ("Pod", "pod")]
    if "pod" not in claims.bound:
        order.append(("Node", "node"))
    return [(kind, claims.bound[claim]) for kind, claim in order if claim in claims.bound]


def bound_object_refusal(
    kind: str, ref: Mapping[str, str], found: Obj | None, now: float
) -> str | None:
    """Why a token bound to `ref` ({name, uid}) of `kind` no longer authenticates, given the
    object of that name now (`found`, None when there is none); None when it still does.
    kube-apiserver's messages (pkg/serviceaccount/claims.go)."""
    if found is None:
        return INVALIDATED
    uid = _uid(found) or ""
    if uid != ref.get("uid", ""):
        claim = kind.lower()
        return (
            f"{claim} UID ({uid}) does not match service account {claim} ref claim "
            f"({ref.get('uid', '')})"
        )
    if deleted_before(found, now - LEEWAY):
        return INVALIDATED
    return None


def bound_object_ref(spec: Mapping[str, Any]) -> BoundObjectRef | None:
    """The request's boundObjectRef, refused as kube-apiserver refuses what it cannot bind to
    (400: a kind of another group, or none of Pod, Secret, Node; an empty name, or one that
    is not a valid path segment)."""
    ref = spec.get("boundObjectRef")
    if ref is None:
        return None
    if not isinstance(ref, dict):
        raise errors.bad_request("spec.boundObjectRef must be an object")
    fields = {k: ref.get(k) or "" for k in ("apiVersion", "kind", "name", "uid")}
    for key, value in fields.items():
        if not isinstance(value, str):
            raise errors.bad_request(f"spec.boundObjectRef.{key} must be a string")
    group, version = _group_version(fields["apiVersion"])
    if group or fields["kind"] not in BINDABLE:
        raise errors.bad_request(
            f"cannot bind token to object of type {group}/{version}, Kind={fields['kind']}"
        )
    if not fields["name"]:
        raise errors.bad_request("Name parameter required.")
    invalid = path_segment_name_errors(fields["name"])
    if invalid:  # as kube-apiserver's registry key functions refuse such a name
        raise errors.bad_request(
            f"Name parameter invalid: {json.dumps(fields['name'], ensure_ascii=False)}: "
            + ";".join(invalid)
        )
    return BoundObjectRef(fields["kind"], fields["name"], fields["uid"])


def _group_version(api_version: str) -> tuple[str, str]:
    """apimachinery's ParseGroupVersion, where a value it refuses counts as the core group
    (schema.FromAPIVersionAndKind)."""
    if api_version in ("", "/"):
        return "", ""
    parts = api_version.split("/")
    if len(parts) == 1:
        return "", parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    return "", ""


def bind(service_account: str, ref: BoundObjectRef, found: Obj | None) -> dict[str, str]:
    """The token's binding to `ref`, given the object of that name (`found`, None when there
    is none): its kind, name and uid (the object's, when the request gave none). Refused as
    kube-apiserver refuses (pkg/registry/core/serviceaccount/storage/token.go): 404 for a
    missing object, 400 for a Pod that runs as another ServiceAccount, 409 for another uid."""
    if found is None:
        raise errors.not_found(ref.resource, ref.name)
    if ref.kind == "Pod" and (found.get("spec") or {}).get("serviceAccountName") != service_account:
        raise errors.bad_request(
            f'cannot bind token for serviceaccount "{service_account}" to pod running with '
            "different serviceaccount name."
        )
    uid = _uid(found) or ""
    if ref.uid and ref.uid != uid:
        raise errors.conflict(
            ref.kind,
            ref.name,
            f"the UID in the bound object reference ({ref.uid}) does not match the UID in "
            "record. The object might have been deleted and then recreated",
        )
    return {"kind": ref.kind, "name": ref.name, "uid": uid}


async def token_request(
    tokens: ServiceAccountTokens,
    default_audiences: Sequence[str],
    sa: Obj,
    body: Obj,
    lookup: Lookup,
) -> Obj:
    """The TokenRequest answered: a token for `sa`, for the requested audiences (default: the
    API server's own) and lifetime (default one hour, at least 10 minutes), bound to the
    object `spec.boundObjectRef` names when there is one (read through `lookup`)."""
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
    meta = sa["metadata"]
    ref = bound_object_ref(spec)
    bound = None
    if ref is not None:
        found = await lookup(ref.resource, ref.namespace(meta["namespace"]), ref.name)
        bound = bind(meta["name"], ref, found)
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
