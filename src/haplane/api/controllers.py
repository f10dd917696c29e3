"""Lifecycle controllers that run inside the API replicas, one replica active at a time.

Layer: api. Uses the generic stores in-process (no HTTP) and a coordination.k8s.io Lease.

- `LeaderElector`: client-go's algorithm on a Lease (`kube-system/haplane-controllers`): take it
  when it is free or when its record has not changed for `lease_duration` seconds of *our own*
  monotonic clock (so clock skew between replicas cannot hand it over early), renew every
  `renew_interval`; every write is a compare-and-swap on resourceVersion.
- `NamespaceController`: a namespace marked for deletion (phase Terminating) loses all its
  contents, then its `kubernetes` finalizer, and then it goes.
- `GarbageCollector`: ownerReferences. Background: a dependent whose owners are all gone is
  deleted (dangling references next to a live owner are removed). Foreground: an owner marked
  with `foregroundDeletion` goes once its dependents are gone. Orphan: an owner marked with
  `orphan` goes after its dependents lost their reference to it.

Both controllers rescan every `interval` seconds rather than keeping a dependency graph: simple
and correct at the sizes one region's control plane holds here. A scan reads the indexes this
replica's watch caches keep (objects with ownerReferences or a deletionTimestamp, every object by
uid: no etcd traffic, and a round costs what it acts on rather than the number of objects) and
is skipped when no cached resource changed since the last complete round; a step that cannot
be undone (dropping a namespace's or a CRD's cleanup finalizer, deleting a dependent) is first
confirmed with quorum reads, because the cache lags etcd by milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from .crds import CLEANUP_FINALIZER
from .errors import StatusError
from .generic_store import GenericStore, LifecycleScan, ListOptions
from .policy_types import GROUP as POLICY_GROUP

log = logging.getLogger("haplane.api")

# However quiet the caches, a full round at least this often: a step that failed without
# saying so (a swallowed conflict) is retried within this bound.
FULL_ROUND_EVERY = 10.0
LEASE_NAMESPACE = "kube-system"
LEASE_NAME = "haplane-controllers"
Obj = dict[str, Any]


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _all(cached: bool = False) -> ListOptions:
    """Everything; from the watch cache when `cached` (resourceVersion "0"), else a quorum read."""
    return ListOptions.everything("0" if cached else None)


def _one_per_prefix(stores: Iterable[GenericStore]) -> list[GenericStore]:
    """One store per etcd prefix: the served versions of one custom resource share theirs."""
    seen: dict[str, GenericStore] = {}
    for store in stores:
        seen.setdefault(store.t.key_prefix(), store)
    return list(seen.values())


class LeaderElector:
    def __init__(
        self,
        leases: GenericStore,
        identity: str,
        *,
        lease_duration: float = 3.0,
        renew_interval: float = 1.0,
    ):
        self.leases = leases
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_interval = renew_interval
        self.is_leader = False
        self._observed: tuple[str, float] | None = None  # (record, monotonic time seen)

    async def run(
        self, on_change: Callable[[bool], None], *, may_lead: Callable[[], bool] = lambda: True
    ) -> None:
        """Campaign and renew forever; `may_lead` false (a standby region): do not even try,
        and follow (the Lease is region-local: each region elects among its own replicas)."""
        while True:
            try:
                leading = await self._try_acquire_or_renew() if may_lead() else False
            except StatusError as exc:
                log.info(json.dumps({"msg": "lease error", "error": exc.message}))
                leading = False
            if leading != self.is_leader:
                self.is_leader = leading
                log.info(
                    json.dumps(
                        {"msg": "leader" if leading else "follower", "component": self.identity}
                    )
                )
                on_change(leading)
            await asyncio.sleep(self.renew_interval)

    async def release(self) -> None:
        """On a clean shutdown, hand the lease over at once instead of letting it expire."""
        if not self.is_leader:
            return
        with contextlib.suppress(StatusError):
            lease = await self.leases.get(LEASE_NAMESPACE, LEASE_NAME)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                await self.leases.update(LEASE_NAMESPACE, LEASE_NAME, lease)
        self.is_leader = False

    async def _try_acquire_or_renew(self) -> bool:
        now = _micro_now()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "renewTime": now,
        }
        try:
            lease = await self.leases.get(LEASE_NAMESPACE, LEASE_NAME)
        except StatusError as exc:
            if exc.code != 404:
                raise
            await self.leases.create(
                LEASE_NAMESPACE,
                {
                    "metadata": {"name": LEASE_NAME},
                    "spec": {**spec, "acquireTime": now, "leaseTransitions": 0},
                },
            )
            return True
        current = lease.get("spec") or {}
        record = json.dumps(current, sort_keys=True)
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, time.monotonic())
        holder = current.get("holderIdentity")
        expired = time.monotonic() - self._observed[1] > self.lease_duration
        if holder not in (None, "", self.identity) and not expired:
            return False
        new = copy.deepcopy(lease)
        new_spec = {**current, **spec}
        if holder != self.identity:
            new_spec["acquireTime"] = now
            new_spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
        new["spec"] = new_spec
        try:  # resourceVersion in the body: a compare-and-swap
            await self.leases.update(LEASE_NAMESPACE, LEASE_NAME, new)
        except StatusError as exc:
            if exc.code == 409:
                return False  # someone else renewed or took it first
            raise
        return True


class Controllers:
    """Runs the namespace controller and the garbage collector while this replica leads."""

    def __init__(
        self,
        stores: Callable[[], Iterable[GenericStore]],
        interval: float = 0.5,
        storage_store: Callable[[Obj], GenericStore | None] | None = None,
        gc_paused: Callable[[], str | None] = lambda: None,
        type_check: Callable[[Obj], Callable[[], list[Obj]]] | None = None,
    ):
        """`storage_store(crd)`: a store for a CRD's objects even when none of its versions is
        served (its objects must still go when it is deleted). `type_check(policy)`: what
        works out a ValidatingAdmissionPolicy's expression warnings, run in a thread (it
        takes up to seconds), so made of what it needs on the loop (None: no policy
        status)."""
        self.stores = stores  # a function: custom resources come and go
        self.interval = interval
        self.storage_store = storage_store
        self.gc_paused = gc_paused  # why the garbage collector must not run now (None: it may)
        self.type_check = type_check
        self._policies_given_up: set[tuple[Any, int]] = set()  # (uid, generation)
        self._gc_note: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_scan: tuple[tuple[str, str], ...] | None = None
        self._pending = False  # this round waits on something: scan again even if unchanged
        self._last_full_round = 0.0

    def leading(self, leader: bool) -> None:
        if leader and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="controllers")
        elif not leader and self._task is not None:
            self._task.cancel()
            self._task = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except StatusError as exc:  # etcd trouble: try again next round
                log.info(json.dumps({"msg": "controllers: retrying", "error": exc.message}))
            except Exception:  # a bug: log it loudly, keep the loop alive
                log.exception("controllers: unexpected error")
            await asyncio.sleep(self.interval)

    async def reconcile_once(self, *, force: bool = False) -> None:
        stores = list(self.stores())
        scans = [(store, await store.lifecycle_scan()) for store in _one_per_prefix(stores)]
        signature = tuple((store.t.key_prefix(), scan.revision) for store, scan in scans)
        if (
            signature == self._last_scan
            and not force
            and time.monotonic() - self._last_full_round < FULL_ROUND_EVERY
        ):
            return  # nothing changed since a round that completed
        self._last_full_round = time.monotonic()
        self._pending = False
        listed = [(store, obj) for store, scan in scans for obj in scan.objects]
        await self._namespaces(listed, stores)
        paused = self.gc_paused()
        if paused != self._gc_note:
            self._gc_note = paused
            log.info(json.dumps({"msg": "garbage collector", "paused": paused}))
        if paused is None:
            await self._garbage(listed, _UidIndex(scans))
        else:
            self._pending = True  # scan again once it resumes
        await self._crd_cleanup(listed, stores)
        if self.type_check is not None:
            await self._policy_status(scans, self.type_check)
        self._last_scan = None if self._pending else signature

    # ---- namespaces ----------------------------------------------------------------------

    async def _namespaces(
        self, listed: list[tuple[GenericStore, Obj]], stores: list[GenericStore]
    ) -> None:
        terminating = {
            obj["metadata"]["name"]: (store, obj)
            for store, obj in listed
            if store.t.kind == "Namespace" and obj["metadata"].get("deletionTimestamp")
        }
        for ns, (ns_store, ns_obj) in terminating.items():
            contents = [
                (s, o)
                for s in _one_per_prefix(stores)
                if s.t.namespaced
                for o in (await s.list(ns, _all(cached=True)))["items"]
            ]
            for store, obj in contents:
                if not obj["metadata"].get("deletionTimestamp"):
                    await _ignore_gone(store.delete(ns, obj["metadata"]["name"]))
            if contents or await self._namespace_has_contents(ns, stores):
                self._pending = True  # again next round, until the namespace is empty
                continue
            finalizers = (ns_obj.get("spec") or {}).get("finalizers") or []
            if "kubernetes" in finalizers:
                body = copy.deepcopy(ns_obj)
                body["spec"]["finalizers"] = [f for f in finalizers if f != "kubernetes"]
                await _ignore_gone(
                    ns_store.update_subresource(None, ns, "finalize", _constant(body))
                )

    async def _namespace_has_contents(self, namespace: str, stores: list[GenericStore]) -> bool:
        """A quorum read per namespaced resource: the cached scan may not have seen a create of
        the last milliseconds."""
        for store in _one_per_prefix(stores):
            if not store.t.namespaced:
                continue
            if (await store.list(namespace, ListOptions.everything(limit=1)))["items"]:
                return True
        return False

    # ---- custom resource definitions -----------------------------------------------------

    async def _crd_cleanup(
        self, listed: list[tuple[GenericStore, Obj]], stores: list[GenericStore]
    ) -> None:
        """A deleted CRD takes its objects with it, then its cleanup finalizer goes."""
        for store, crd in listed:
            meta = crd["metadata"]
            if store.t.kind != "CustomResourceDefinition" or not meta.get("deletionTimestamp"):
                continue
            if CLEANUP_FINALIZER not in (meta.get("finalizers") or []):
                continue
            spec = crd.get("spec") or {}
            plural = (spec.get("names") or {}).get("plural")
            served = [
                s
                for s in stores
                if s.t.custom and s.t.group == spec.get("group") and s.t.plural == plural
            ]
            store_of_objects = served[0] if served else None
            if store_of_objects is None and self.storage_store is not None:
                store_of_objects = self.storage_store(crd)  # no version served: still clean up
            if store_of_objects is None:
                continue  # cannot see its objects: keep the finalizer rather than orphan them
            items = (await store_of_objects.list(None, _all()))["items"]
            remaining = len(items)
            for item in items:
                m = item["metadata"]
                if not m.get("deletionTimestamp"):
                    await _ignore_gone(store_of_objects.delete(m.get("namespace"), m["name"]))
            if remaining:
                self._pending = True  # again next round, until they are gone
            else:
                await self._drop_finalizer(store, crd, CLEANUP_FINALIZER)

    # ---- admission policies' status ------------------------------------------------------

    async def _policy_status(
        self,
        scans: list[tuple[GenericStore, LifecycleScan]],
        check: Callable[[Obj], Callable[[], list[Obj]]],
    ) -> None:
        for store, scan in scans:
            if (store.t.group, store.t.plural) != (POLICY_GROUP, "validatingadmissionpolicies"):
                continue
            self._policies_given_up = still_given_up(self._policies_given_up, scan.by_uid.values())
            for policy in list(scan.by_uid.values()):
                meta = policy["metadata"]
                generation = policy_generation_to_check(policy)
                if generation is None or (meta.get("uid"), generation) in self._policies_given_up:
                    continue
                status = policy.get("status") if isinstance(policy.get("status"), dict) else {}
                try:
                    warnings = await asyncio.to_thread(check(policy))
                except Exception:  # a bug: said loudly, once per generation; the rest go on
                    log.exception("controllers: type checking policy %s failed", meta["name"])
                    self._policies_given_up.add((meta.get("uid"), generation))
                    continue
                checked = {
                    **(status or {}),
                    "observedGeneration": generation,
                    "typeChecking": {"expressionWarnings": warnings} if warnings else {},
                }
                # the version checked as a precondition: a spec changed meanwhile is a
                # conflict, checked again next round
                rv = meta.get("resourceVersion")
                body = {"metadata": {"resourceVersion": rv} if rv else {}, "status": checked}
                try:
                    await store.update_subresource(None, meta["name"], "status", _constant(body))
                except StatusError as exc:
                    if exc.code >= 500:
                        raise  # etcd trouble: the round is retried
                    if exc.code == 409:
                        self._pending = True  # changed meanwhile: checked again next round
                    elif exc.code != 404:  # refused (a policy stored that is invalid now)
                        self._policies_given_up.add((meta.get("uid"), generation))
                        log.info(
                            json.dumps(
                                {
                                    "msg": "policy status not written",
                                    "policy": meta["name"],
                                    "error": exc.message,
                                }
                            )
                        )

    # ---- garbage collection --------------------------------------------------------------

    async def _garbage(self, listed: list[tuple[GenericStore, Obj]], by_uid: _UidIndex) -> None:
        dependents: dict[str, list[tuple[GenericStore, Obj]]] = {}
        for store, obj in listed:
            for ref in obj["metadata"].get("ownerReferences") or []:
                dependents.setdefault(ref.get("uid"), []).append((store, obj))
        for store, obj in listed:
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or []
            if refs and not meta.get("deletionTimestamp"):
                live = [r for r in refs if not await self._owner_absent(r, meta, by_uid)]
                if not live:
                    await _ignore_gone(
                        store.delete(
                            meta.get("namespace"), meta["name"], precondition_uid=meta.get("uid")
                        )
                    )
                elif len(live) < len(refs):
                    await self._set_owner_refs(store, obj, live)
            finalizers = meta.get("finalizers") or []
            if not meta.get("deletionTimestamp"):
                continue
            mine = dependents.get(meta.get("uid"), [])
            if "foregroundDeletion" in finalizers:
                pending = [(s, o) for s, o in mine if o["metadata"].get("uid") in by_uid]
                for s, o in pending:
                    if not o["metadata"].get("deletionTimestamp"):
                        await _ignore_gone(
                            s.delete(
                                o["metadata"].get("namespace"),
                                o["metadata"]["name"],
                                propagation="Foreground",
                            )
                        )
                if not pending and not await self._has_dependents(store, obj):
                    await self._drop_finalizer(store, obj, "foregroundDeletion")
                else:
                    self._pending = True
            if "orphan" in finalizers:
                for s, o in mine:
                    kept = [
                        r
                        for r in o["metadata"].get("ownerReferences") or []
                        if r.get("uid") != meta.get("uid")
                    ]
                    await self._set_owner_refs(s, o, kept)
                if not await self._has_dependents(store, obj):
                    await self._drop_finalizer(store, obj, "orphan")
                else:
                    self._pending = True

    async def _has_dependents(self, owner_store: GenericStore, owner: Obj) -> bool:
        """A quorum read of everything that could name `owner`: the cached scan may have missed
        a dependent created a moment ago, which would then be deleted instead of orphaned (or
        outlive its foreground-deleted owner). Only runs while an owner waits on a finalizer."""
        uid = owner["metadata"].get("uid")
        namespace = owner["metadata"].get("namespace")
        for store in _one_per_prefix(list(self.stores())):
            if owner_store.t.namespaced and not store.t.namespaced:
                continue
            listed = await store.list(namespace if owner_store.t.namespaced else None, _all())
            for item in listed["items"]:
                if any(r.get("uid") == uid for r in item["metadata"].get("ownerReferences") or []):
                    return True
        return False

    async def _owner_absent(self, ref: Obj, dependent_meta: Obj, by_uid: _UidIndex) -> bool:
        """Whether an owner is certainly gone. The scan's lists are taken one after another, so
        a missing uid is only a hint: confirm with a quorum read of the owner itself, where the
        dependent's namespace says it must live (an owner elsewhere counts as absent, as in
        Kubernetes). An owner of a kind this replica does not serve is never presumed gone."""
        namespace = dependent_meta.get("namespace")
        seen = by_uid.get(ref.get("uid"))
        if seen is not None:
            owner_store, owner = seen
            if not owner_store.t.namespaced or owner["metadata"].get("namespace") == namespace:
                return False
        group, _, version = str(ref.get("apiVersion", "")).rpartition("/")
        stores = [
            s
            for s in self.stores()
            if s.t.group == group and s.t.version == version and s.t.kind == ref.get("kind")
        ]
        if not stores:
            return False
        owner_store = stores[0]
        try:
            owner = await owner_store.get(
                namespace if owner_store.t.namespaced else None, str(ref.get("name"))
            )
        except StatusError as exc:
            if exc.code != 404:
                self._pending = True  # could not tell: look again next round
            return exc.code == 404
        return bool(owner["metadata"].get("uid") != ref.get("uid"))

    async def _set_owner_refs(self, store: GenericStore, obj: Obj, refs: list[Obj]) -> None:
        def change(current: Obj) -> Obj:
            current["metadata"]["ownerReferences"] = refs
            if not refs:
                current["metadata"].pop("ownerReferences")
            current["metadata"].pop("resourceVersion", None)
            return current

        meta = obj["metadata"]
        await _ignore_gone(store.patch(meta.get("namespace"), meta["name"], change))

    async def _drop_finalizer(self, store: GenericStore, obj: Obj, finalizer: str) -> None:
        def change(current: Obj) -> Obj:
            current["metadata"]["finalizers"] = [
                f for f in current["metadata"].get("finalizers") or [] if f != finalizer
            ]
            current["metadata"].pop("resourceVersion", None)
            return current

        meta = obj["metadata"]
        await _ignore_gone(store.patch(meta.get("namespace"), meta["name"], change))


class _UidIndex:
    """Every object of a round's scans by uid, with the store it belongs to."""

    def __init__(self, scans: list[tuple[GenericStore, LifecycleScan]]):
        self._scans = scans

    def get(self, uid: Any) -> tuple[GenericStore, Obj] | None:
        for store, scan in self._scans:
            obj = scan.by_uid.get(uid)
            if obj is not None:
                return store, obj
        return None

    def __contains__(self, uid: Any) -> bool:
        return self.get(uid) is not None


def policy_generation_to_check(policy: Obj) -> int | None:
    """The generation of a ValidatingAdmissionPolicy whose type checking is still to be
    written, or None when its status has observed it. A status the policy's validation would
    refuse now (an observedGeneration that is no integer, stored before it was checked)
    observed nothing: the controller's write replaces it."""
    generation = _whole((policy.get("metadata") or {}).get("generation")) or 1
    status = policy.get("status")
    observed = _whole(status.get("observedGeneration")) if isinstance(status, dict) else None
    return None if observed is not None and observed >= generation else generation


def still_given_up(given_up: set[tuple[Any, int]], policies: Iterable[Obj]) -> set[tuple[Any, int]]:
    """The (uid, generation) given up on that are still some policy's generation to check:
    a policy deleted, changed or checked since is forgotten."""
    current = {(p["metadata"].get("uid"), policy_generation_to_check(p)) for p in policies}
    return given_up & current


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _constant(body: Obj) -> Callable[[Obj], Obj]:
    return lambda _current: body


async def _ignore_gone(aw: Any) -> None:
    """Someone else (a client, another round) got there first: fine."""
    try:
        await aw
    except StatusError as exc:
        if exc.code not in (404, 409):
            raise
