"""The RBAC authorizer of one replica: Kubernetes RBAC (haplane.auth.rbac) over an index the
watch caches of Roles, ClusterRoles and their bindings keep in step, event by event. A
decision reads memory only, never etcd.

Layer: api. Never wrong by default: while any of the four caches is not ready (at start, and
while they relist after an epoch change) a request waits up to `ready_wait` seconds, then
gets 503; it is never allowed, and never denied, on a partial view.

Besides RBAC, as kube-apiserver: the `system:masters` group may do anything (its own
authorizer there, before RBAC; here too, so that the administrator is never locked out by
missing or broken bindings), and the health and version endpoints are open to anyone
(Kubernetes grants them through `system:public-info-viewer`; answering them without the
caches keeps a relisting replica's /readyz from failing for an authorization reason).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from haplane.auth import rbac
from haplane.auth.user import MASTERS, Attributes, UserInfo

from . import errors
from .request import REQUEST_USER, RequestInfo, attributes
from .resources import Obj

log = logging.getLogger("haplane.api")

PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/version"})

# the RBAC kinds by storage prefix (kube-apiserver's layout)
RBAC_PREFIXES = {
    "/registry/clusterroles/": "ClusterRole",
    "/registry/clusterrolebindings/": "ClusterRoleBinding",
    "/registry/roles/": "Role",
    "/registry/rolebindings/": "RoleBinding",
}


class Authorizer(Protocol):
    async def authorize(self, user: UserInfo, info: RequestInfo) -> rbac.Decision: ...


class AlwaysAllow:
    """`authorization: AlwaysAllow` (an insecure topology, a bare replica in tests)."""

    async def authorize(self, user: UserInfo, info: RequestInfo) -> rbac.Decision:
        return rbac.Decision(True, "AlwaysAllow")


class _Feed:
    """One cache's subscriber: forwards its objects into the shared index."""

    def __init__(self, owner: RbacAuthorizer, kind: str):
        self.owner = owner
        self.kind = kind
        self.keys: set[tuple[str, str]] = set()

    def reset(self, objects: dict[str, Obj]) -> None:
        with self.owner.index.bulk():
            for namespace, name in list(self.keys):
                self.owner.index.delete(self.kind, namespace, name)
            self.keys.clear()
            for obj in objects.values():
                self.put("", obj)
        self.owner.changes += 1  # a reset to nothing changed the index too

    def put(self, key: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        self.keys.add((meta.get("namespace", ""), meta.get("name", "")))
        try:
            self.owner.index.upsert(self.kind, obj)
        except Exception:  # one odd object must not take the cache (and authorization) down
            log.exception("RBAC index: %s %s skipped", self.kind, meta.get("name"))
        self.owner.changes += 1

    def delete(self, key: str, old: Obj) -> None:
        meta = old.get("metadata") or {}
        ident = (meta.get("namespace", ""), meta.get("name", ""))
        self.keys.discard(ident)
        try:
            self.owner.index.delete(self.kind, *ident)
        except Exception:
            log.exception("RBAC index: deleting %s %s failed", self.kind, ident)
        self.owner.changes += 1


# Decisions remembered per (user, groups, request attributes) until any RBAC object changes:
# the same few clients ask the same few things, and evaluating a request against the index
# costs ~10 us (measured: a tenth of a cached GET's whole budget). Bounded: cleared when full.
DECISION_CACHE_SIZE = 16_384
# Only questions this short are remembered: an access review's attributes come from its body
# (megabytes, one entry each), and 16,384 entries of at most this much stay under ~10 MB.
DECISION_CACHE_KEY_CHARS = 512


class RbacAuthorizer:
    def __init__(self, ready_wait: float = 1.0):
        self.index = rbac.RbacIndex()
        self.ready_wait = ready_wait
        self.changes = 0  # bumped by every change the feeds bring into the index
        self._decisions: dict[Attributes, rbac.Decision] = {}
        self._decided_at = 0  # `changes` when `_decisions` was started
        self._caches: list[object] = []
        self.feeds = {prefix: _Feed(self, kind) for prefix, kind in RBAC_PREFIXES.items()}

    def attach(self, prefix: str, cacher: object) -> None:
        """Subscribe to one RBAC resource's cache (`watch_cache.Cacher`)."""
        self._caches.append(cacher)
        cacher.subscribers.append(self.feeds[prefix])  # type: ignore[attr-defined]

    @property
    def ready(self) -> bool:
        return len(self._caches) == len(RBAC_PREFIXES) and all(
            c.ready  # type: ignore[attr-defined]
            for c in self._caches
        )

    async def wait_ready(self) -> None:
        """Up to `ready_wait`; then 503 (never a decision on a partial view)."""
        deadline = time.monotonic() + self.ready_wait
        while not self.ready:
            if time.monotonic() >= deadline:
                raise errors.unavailable(
                    "authorization is not ready: the RBAC caches are loading; retry"
                )
            await asyncio.sleep(0.02)

    def cluster_roles_of(self, user: str, groups: Sequence[str]) -> set[str]:
        return self.index.cluster_roles_of(user, groups)

    async def authorize(self, user: UserInfo, info: RequestInfo) -> rbac.Decision:
        if MASTERS in user.groups:
            return rbac.Decision(True, f'allowed: the group "{MASTERS}" may do anything')
        if not info.resource_request and info.path in PUBLIC_PATHS:
            return rbac.Decision(True, "allowed: a public health or version endpoint")
        if not self.ready:
            await self.wait_ready()
        return self.decide(attributes(info, user))

    def decide(self, attrs: Attributes, *, remember: bool = True) -> rbac.Decision:
        """A decision from memory, now (call it once the caches are ready). `remember`:
        through the decision cache (requests' own questions; not admission policies', whose
        loops could flood it)."""
        if MASTERS in attrs.groups:
            return rbac.Decision(True, f'allowed: the group "{MASTERS}" may do anything')
        if not remember:
            return self.index.authorize(attrs)
        if self._decided_at != self.changes or len(self._decisions) >= DECISION_CACHE_SIZE:
            self._decisions.clear()
            self._decided_at = self.changes
        decision = self._decisions.get(attrs)
        if decision is None:
            decision = self.index.authorize(attrs)
            size = len(attrs.user) + sum(map(len, attrs.groups)) + len(attrs.path)
            size += len(attrs.namespace) + len(attrs.name) + len(attrs.resource)
            size += len(attrs.subresource) + len(attrs.api_group) + len(attrs.api_version)
            if size <= DECISION_CACHE_KEY_CHARS:
                self._decisions[attrs] = decision
        return decision


# what an update may change without a new escalation check (Kubernetes'
# IsOnlyMutatingGCFields): the garbage collector's fields and the store's own bookkeeping
_GC_FIELDS = ("ownerReferences", "finalizers", "managedFields", "resourceVersion", "generation")


def _only_gc_fields_changed(new: Obj, old: Obj) -> bool:
    def strip(obj: Obj) -> Obj:
        meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _GC_FIELDS}
        return {**obj, "metadata": meta}

    return strip(new) == strip(old)


def escalation_check(authorizer: RbacAuthorizer, kind: str) -> Callable[[Obj, Obj | None], None]:
    """The store's last check before a Role, ClusterRole or binding is written (created,
    updated, patched or applied, dry runs too), as Kubernetes' RBAC storage does it: a role
    may hold only permissions its writer holds, unless the writer may `escalate` it; a
    binding may grant only a role whose permissions its writer holds, unless the writer may
    `bind` it. `system:masters` passes those. Beyond Kubernetes, a binding to one of
    `rbac.GUARDED_ROLES` (cluster-admin, haplane:platform-admin), or to any role whose rules
    grant as much (`rbac.guarded`), is refused to every request, masters included: it is made
    only by carrying out an approved RoleGrant (four-eyes). The replica's own writes (no
    request user: its defaults, an approved grant) pass."""

    def check(obj: Obj, old: Obj | None) -> None:
        user = REQUEST_USER.get()
        if user is None:
            return
        if old is not None and _only_gc_fields_changed(obj, old):
            return
        if MASTERS in user.groups:
            decision = rbac.Decision(True, f'allowed by group "{MASTERS}"')
        elif kind in ("Role", "ClusterRole"):
            # the request path's name: none on a create, as Kubernetes checks `escalate`
            name = "" if old is None else str((obj.get("metadata") or {}).get("name") or "")
            decision = rbac.may_create_role(
                authorizer.index, user.name, user.groups, obj, name=name
            )
        else:
            decision = rbac.may_bind(authorizer.index, user.name, user.groups, obj)
        if decision.allowed and kind in ("RoleBinding", "ClusterRoleBinding"):
            why = rbac.guarded(authorizer.index, obj)
            if why is not None:
                decision = rbac.Decision(
                    False,
                    f"{why}: ask for it with a RoleGrant (`haplane grant`), which the platform "
                    "carries out once approved",
                )
        if not decision.allowed:
            meta = obj.get("metadata") or {}
            plural = f"{kind.lower()}s.rbac.authorization.k8s.io"
            raise errors.StatusError(
                403,
                "Forbidden",
                f'{plural} "{meta.get("name", "")}" is forbidden: {decision.reason}',
                details={
                    "name": meta.get("name", ""),
                    "group": "rbac.authorization.k8s.io",
                    "kind": f"{kind.lower()}s",
                },
            )

    return check
