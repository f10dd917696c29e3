"""Bring one target cluster to one rendered revision: dry-run and apply step by step, keep the
inventory in the target, prune what the source dropped (when allowed), detect and heal drift,
and judge the health of what was applied.

Layer: sync. Talks to the target only through `KubeClient` (its public API).

How it stays honest:
- Each step (see `plan`) is dry-run in full on the server before any of it is applied, so a bad
  object stops its step with nothing of it written; the outcome names the steps applied.
- The inventory (a ConfigMap `haplane-gitops/<sync id>` in the target, plus a label on every
  applied object) is written *before* a step is applied, holding everything that may exist, so a
  crash mid-step leaves nothing untracked. Prune deletes only what the inventory lists, the source
  no longer has, and still carries this Sync's label; never by guessing from labels alone.
- An empty render prunes nothing unless `allowEmpty` (a broken overlay must not wipe a cluster).
- Drift: an object whose resourceVersion is still the one our apply returned has not changed;
  any other is compared with a server-side apply dry-run of what the source declares.
"""

from __future__ import annotations

import asyncio
import copy
import difflib
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import yaml

from .kube import KubeClient, KubeError, Resource, Unreachable, split_api_version
from .plan import PlanError, Step, describe, plan, wave_of

Obj = dict[str, Any]
T = TypeVar("T")

INVENTORY_NAMESPACE = "haplane-gitops"
SYNC_LABEL = "gitops.haplane.dev/sync"
SYNC_ANNOTATION = "gitops.haplane.dev/sync-id"
_CONFIGMAP = Resource("", "v1", "ConfigMap", "configmaps", True)
_NAMESPACE = Resource("", "v1", "Namespace", "namespaces", False)
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_GET_AT_MOST = 20  # objects of one kind and namespace looked up one by one, not by a list
_VOLATILE_META = ("resourceVersion", "managedFields", "generation", "creationTimestamp", "uid")


def sync_label(sync_id: str) -> str:
    """The label value naming a Sync (`namespace/name`) on the objects it applied."""
    value = sync_id.replace("/", ".")
    if _LABEL_VALUE.match(value):
        return value
    return "h-" + hashlib.sha256(sync_id.encode()).hexdigest()[:24]


@dataclass(frozen=True, order=True)
class Ref:
    """An object's identity in a target. Equality ignores the version: apps/v1 and
    apps/v1beta1 name the same object."""

    group: str
    kind: str
    namespace: str
    name: str
    version: str = field(default="", compare=False)
    # it existed before this Sync first applied it: never deleted by prune, only released
    adopted: bool = field(default=False, compare=False)

    @classmethod
    def of(cls, obj: Obj) -> Ref:
        group, version = split_api_version(str(obj.get("apiVersion", "")))
        meta = obj.get("metadata") or {}
        return cls(group, str(obj.get("kind")), meta.get("namespace") or "", meta["name"], version)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def __str__(self) -> str:
        kind = f"{self.kind}.{self.group}" if self.group else self.kind
        return f"{kind}/{self.name}" + (f" (namespace {self.namespace})" if self.namespace else "")

    def to_json(self) -> list[str]:
        out = [self.api_version, self.kind, self.namespace, self.name]
        return [*out, "adopted"] if self.adopted else out

    @classmethod
    def from_json(cls, item: Any) -> Ref:
        api_version, kind, namespace, name = (str(x) for x in item[:4])
        group, version = split_api_version(api_version)
        return cls(group, kind, namespace, name, version, adopted="adopted" in item[4:])


@dataclass
class ObjectError:
    object: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"object": self.object, "message": self.message}


@dataclass
class Outcome:
    revision: str
    complete: bool = False
    applied_steps: list[str] = field(default_factory=list)
    errors: list[ObjectError] = field(default_factory=list)
    message: str = ""
    applied: int = 0  # objects the source declares that are in the target
    unchanged: int = 0  # of those, skipped: exactly as last applied
    pruned: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # dropped by the source, prune off
    drift: list[str] = field(default_factory=list)
    healed: list[str] = field(default_factory=list)
    health: str = "Unknown"  # Healthy | Progressing | Degraded | Unknown
    health_messages: list[str] = field(default_factory=list)
    unreachable: bool = False


class TargetUnreachable(Exception):
    pass


def health_of(obj: Obj) -> tuple[str, str]:
    """(Healthy | Progressing | Degraded, why) for one live object: CRDs by Established,
    namespaces by phase, everything else by its `status.conditions` (Ready, Available), as
    kstatus reads them."""
    kind = obj.get("kind")
    status = obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or () if isinstance(c, dict)}
    name = describe(obj)
    if kind == "CustomResourceDefinition":
        names = conditions.get("NamesAccepted")
        if names and names.get("status") == "False":
            return "Degraded", f"{name}: names not accepted: {names.get('message', '')}"
        if (conditions.get("Established") or {}).get("status") == "True":
            return "Healthy", ""
        return "Progressing", f"{name}: not established yet"
    if kind == "Namespace" and obj.get("apiVersion") == "v1":
        phase = status.get("phase", "Active")
        if phase == "Active":
            return "Healthy", ""
        return "Degraded", f"{name}: {phase}"
    if (meta := obj.get("metadata") or {}).get("deletionTimestamp"):
        return "Progressing", f"{name}: being deleted"
    for bad in ("Stalled", "Failed"):
        if (conditions.get(bad) or {}).get("status") == "True":
            return "Degraded", f"{name}: {bad}: {conditions[bad].get('message', '')}"
    for ready in ("Ready", "Available"):
        c = conditions.get(ready)
        if c is None:
            continue
        if c.get("status") == "True":
            return "Healthy", ""
        generation = meta.get("generation")
        observed = status.get("observedGeneration")
        if c.get("status") == "Unknown" or (generation and observed and observed < generation):
            return "Progressing", f"{name}: {ready} {c.get('status')}: {c.get('message', '')}"
        return "Degraded", f"{name}: {ready} False: {c.get('reason', '')} {c.get('message', '')}"
    if (conditions.get("Reconciling") or {}).get("status") == "True":
        return "Progressing", f"{name}: reconciling"
    return "Healthy", ""


def overall_health(states: Iterable[tuple[str, str]]) -> tuple[str, list[str]]:
    worst, messages = "Healthy", []
    rank = {"Healthy": 0, "Progressing": 1, "Degraded": 2}
    for state, message in states:
        if rank[state] > rank[worst]:
            worst = state
        if message:
            messages.append(message)
    return worst, messages[:20]


def normalized(obj: Obj) -> Obj:
    """What a diff compares: no status, no server-kept metadata."""
    out = copy.deepcopy(obj)
    out.pop("status", None)
    meta = out.get("metadata") or {}
    for key in _VOLATILE_META:
        meta.pop(key, None)
    return out


class Target:
    """One Sync's view of one target cluster. Remembers, in memory, the resourceVersions its
    applies returned (a restarted controller starts without them and compares everything once)."""

    def __init__(
        self,
        client: KubeClient,
        sync_id: str,
        concurrency: int = 16,
        inventory: KubeClient | None = None,
    ) -> None:
        """`inventory`: who keeps the inventory (default `client`; the controller's own
        identity when `client` acts as a ServiceAccount limited to some namespaces)."""
        self.client = client
        self.inventory_client = inventory
        self.sync_id = sync_id
        self.label = sync_label(sync_id)
        self.inventory_name = self.label.lower().replace("_", "-")
        self._limit = asyncio.Semaphore(concurrency)
        self.versions: dict[Ref, str] = {}
        self.digests: dict[Ref, str] = {}  # of the manifest last applied
        self._namespace_ready = False

    # -- helpers ------------------------------------------------------------------------------

    async def _bounded(self, items: list[T], work: Callable[[T], Awaitable[Any]]) -> list[Any]:
        """`work` on each item, `concurrency` at a time: results, a KubeError standing for an
        item the server refused. Anything else (the target does not answer) cancels the rest
        and is raised: nothing goes on writing after the engine has returned."""

        async def one(item: T) -> Any:
            async with self._limit:
                try:
                    return await work(item)
                except KubeError as exc:
                    return exc

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(i)) for i in items]
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None
        return [t.result() for t in tasks]

    async def _prepare(self, obj: Obj) -> tuple[Resource, Obj] | str:
        """The resource and the object as it is applied (label, namespace defaulted), or why
        it cannot be."""
        res = await self.client.resource(str(obj["apiVersion"]), str(obj["kind"]))
        if res is None:
            return f"the target serves no kind {obj['kind']} in {obj['apiVersion']}"
        out = copy.deepcopy(obj)
        meta = out.setdefault("metadata", {})
        if res.namespaced:
            meta["namespace"] = meta.get("namespace") or "default"
        else:
            # kustomize's `namespace:` sets it on cluster-scoped custom kinds too; the API
            # server ignores it there, and so does kubectl
            meta.pop("namespace", None)
        meta.setdefault("labels", {})[SYNC_LABEL] = self.label
        meta.setdefault("annotations", {})[SYNC_ANNOTATION] = self.sync_id
        for key in _VOLATILE_META:
            meta.pop(key, None)
        out.pop("status", None)
        return res, out

    async def read_inventory(self) -> dict[Ref, Ref]:
        try:
            cm = await (self.inventory_client or self.client).get(
                _CONFIGMAP, INVENTORY_NAMESPACE, self.inventory_name
            )
        except Unreachable as exc:
            raise TargetUnreachable(str(exc)) from None
        if cm is None:
            return {}
        try:
            refs = [Ref.from_json(i) for i in json.loads((cm.get("data") or {})["objects"])]
            return {r: r for r in refs}
        except (KeyError, ValueError, TypeError):
            raise TargetUnreachable(
                f"the inventory {INVENTORY_NAMESPACE}/{self.inventory_name} cannot be read; "
                "fix or delete it"
            ) from None

    async def write_inventory(self, refs: dict[Ref, Ref], revision: str) -> None:
        try:
            await self._write_inventory(refs, revision)
        except KubeError as exc:
            if exc.code != 404 or not self._namespace_ready:
                raise
            self._namespace_ready = False  # someone deleted the namespace: make it again
            await self._write_inventory(refs, revision)

    async def _write_inventory(self, refs: dict[Ref, Ref], revision: str) -> None:
        client = self.inventory_client or self.client
        if not self._namespace_ready:
            await client.apply(
                _NAMESPACE,
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": INVENTORY_NAMESPACE},
                },
            )
            self._namespace_ready = True
        await client.apply(
            _CONFIGMAP,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": self.inventory_name,
                    "namespace": INVENTORY_NAMESPACE,
                    "labels": {SYNC_LABEL: self.label},
                    "annotations": {SYNC_ANNOTATION: self.sync_id},
                },
                "data": {
                    "sync": self.sync_id,
                    "revision": revision,
                    "objects": json.dumps(_listing(refs)),
                },
            },
        )

    # -- sync ---------------------------------------------------------------------------------

    async def sync(
        self, objects: list[Obj], revision: str, *, prune: bool, allow_empty: bool
    ) -> Outcome:
        """Apply `objects` (the render of `revision`) step by step; prune if allowed."""
        out = Outcome(revision)
        try:
            return await self._sync(objects, out, prune=prune, allow_empty=allow_empty)
        except (Unreachable, TargetUnreachable) as exc:
            out.unreachable = True
            out.message = f"target unreachable: {exc}"
            return out
        except KubeError as exc:
            out.message = f"the target refused: {exc}"
            return out

    async def _sync(
        self, objects: list[Obj], out: Outcome, *, prune: bool, allow_empty: bool
    ) -> Outcome:
        previous = await self.read_inventory()
        if not objects and previous and not allow_empty:
            out.message = (
                f"the render is empty: {len(previous)} objects would be pruned; nothing was "
                "changed (set allowEmpty to allow an empty source)"
            )
            return out
        try:
            steps = plan(objects)
        except PlanError as exc:
            out.message = str(exc)
            return out
        later_crds = _crd_kinds(objects)
        tracked = dict(previous)
        desired: dict[Ref, Ref] = {}
        live: list[Obj] = []
        for step in steps:
            prepared, errors, unchanged, existing = await self._dry_run(step, later_crds, desired)
            if errors:
                out.errors = errors
                out.message = _stopped(step, out.applied_steps, "the dry-run refused it")
                return out
            refs: dict[Ref, Ref] = {}
            for _, obj in prepared:
                ref = Ref.of(obj)
                before = tracked.get(ref)
                # adopted: it was there, without this Sync's label, before it first applied it
                # (one this Sync recreated after it was deleted is its own from then on)
                adopted = ref in existing and (
                    before.adopted
                    if before is not None
                    else _labels(existing[ref]).get(SYNC_LABEL) != self.label
                )
                refs[ref] = replace(ref, adopted=adopted)
            grown = {**tracked, **refs}
            if _listing(grown) != _listing(tracked):
                tracked = grown
                await self.write_inventory(tracked, out.revision)
            changed = [p for p in prepared if Ref.of(p[1]) not in unchanged]
            results = await self._bounded(changed, lambda p: self.client.apply(p[0], p[1]))
            applied_any = False
            for (_, obj), result in zip(changed, results, strict=True):
                if isinstance(result, KubeError):
                    out.errors.append(ObjectError(describe(obj), result.message or str(result)))
                else:
                    applied_any = True
                    ref = Ref.of(obj)
                    self.versions[ref] = result["metadata"].get("resourceVersion", "")
                    self.digests[ref] = _digest(obj)
                    live.append(result)
            live.extend(unchanged.values())
            out.unchanged += len(unchanged)
            if out.errors:
                done = ", ".join(out.applied_steps) or "none"
                part = "part of it was applied" if applied_any else "nothing of it was applied"
                out.message = (
                    f"stopped at {step.label}: applying it failed after its dry-run passed; "
                    f"{part}. Steps applied before it: {done}"
                )
                return out
            out.applied_steps.append(step.label)
            desired.update(refs)
            if step.foundation:
                await self._established(step, live)
        stale = {r: tracked[r] for r in tracked if r not in desired}
        if prune and stale:
            gone, released, failed = await self._prune(stale)
            out.pruned = [str(r) for r in sorted(gone)]
            out.kept = [
                f"{r} (there before the Sync: released, not deleted)" for r in sorted(released)
            ]
            tracked = {**desired, **{r: stale[r] for r in failed}}
        else:
            out.kept = [str(r) for r in sorted(stale)]
            tracked = {**desired, **stale}
        if _listing(tracked) != _listing(previous) or not previous:
            await self.write_inventory(tracked, out.revision)
        out.applied = len(desired)
        out.complete = not out.errors
        out.health, out.health_messages = overall_health(health_of(o) for o in live)
        return out

    async def _dry_run(
        self,
        step: Step,
        later_crds: dict[tuple[str, str], int],
        earlier: dict[Ref, Ref],
    ) -> tuple[list[tuple[Resource, Obj]], list[ObjectError], dict[Ref, Obj], dict[Ref, Obj]]:
        """(the step's objects as applied, why any cannot be, the live objects that are
        exactly what this engine last applied and the source still declares: skipped, and
        every live object of the step's kinds and namespaces)."""
        prepared: list[tuple[Resource, Obj]] = []
        errors: list[ObjectError] = []
        seen: set[Ref] = set(earlier)
        for obj in step.objects:
            p = await self._prepare(obj)
            if isinstance(p, str):
                group, _ = split_api_version(str(obj["apiVersion"]))
                wave = later_crds.get((group, str(obj["kind"])))
                if wave is not None and wave > step.wave:
                    p += f" (its CRD is applied in wave {wave}: give it wave {wave} or later)"
                errors.append(ObjectError(describe(obj), p))
                continue
            ref = Ref.of(p[1])
            if ref in seen:  # e.g. one without a namespace and one in `default`
                errors.append(ObjectError(describe(p[1]), "declared twice in the source"))
                continue
            seen.add(ref)
            prepared.append(p)
        if errors:
            return prepared, errors, {}, {}
        existing = await self._existing(prepared)
        for _, obj in prepared:
            live = existing.get(Ref.of(obj))
            owner = _labels(live).get(SYNC_LABEL) if live is not None else None
            if owner is not None and owner != self.label:
                other = ((live or {}).get("metadata") or {}).get("annotations") or {}
                errors.append(
                    ObjectError(
                        describe(obj),
                        f"already applied by Sync {other.get(SYNC_ANNOTATION, owner)}: two "
                        "Syncs must not declare one object (remove it from one of them)",
                    )
                )
        if errors:
            return prepared, errors, {}, existing
        unchanged = self._unchanged(prepared, existing)
        changed = [p for p in prepared if Ref.of(p[1]) not in unchanged]
        results = await self._bounded(
            changed, lambda p: self.client.apply(p[0], p[1], dry_run=True)
        )
        for (_, obj), result in zip(changed, results, strict=True):
            if isinstance(result, KubeError):
                errors.append(ObjectError(describe(obj), result.message or str(result)))
        return prepared, errors, unchanged, existing

    async def _existing(self, prepared: list[tuple[Resource, Obj]]) -> dict[Ref, Obj]:
        """The live objects among `prepared`: per kind and namespace one list of this Sync's
        own (by its label; an identity allowed only some namespaces can list those), then the
        others looked up one by one (new to this Sync, or taken by another), or, when there
        are many, with one list of everything of that kind and namespace."""
        scopes: dict[tuple[Resource, str | None], list[Ref]] = {}
        for res, o in prepared:
            namespace = o["metadata"].get("namespace") if res.namespaced else None
            scopes.setdefault((res, namespace), []).append(Ref.of(o))
        out: dict[Ref, Obj] = {}
        lookups: list[tuple[Resource, Ref]] = []
        for (res, namespace), refs in scopes.items():
            found = await self._list(res, namespace, f"{SYNC_LABEL}={self.label}")
            unknown = [r for r in refs if r not in found]
            if len(unknown) > _GET_AT_MOST:
                found.update(await self._list(res, namespace, None))
            else:
                lookups += [(res, r) for r in unknown]
            out.update(found)

        async def one(item: tuple[Resource, Ref]) -> Obj | None:
            res, ref = item
            return await self.client.get(res, ref.namespace or None, ref.name)

        for (res, ref), live in zip(lookups, await self._bounded(lookups, one), strict=True):
            if isinstance(live, KubeError):
                raise live
            if live is not None:
                live.setdefault("apiVersion", res.api_version)
                live.setdefault("kind", res.kind)
                out[ref] = live
        return out

    async def _list(
        self, res: Resource, namespace: str | None, selector: str | None
    ) -> dict[Ref, Obj]:
        found: dict[Ref, Obj] = {}
        for item in await self.client.list(res, selector, namespace=namespace):
            item.setdefault("apiVersion", res.api_version)
            item.setdefault("kind", res.kind)
            found[Ref.of(item)] = item
        return found

    def _unchanged(
        self, prepared: list[tuple[Resource, Obj]], existing: dict[Ref, Obj]
    ) -> dict[Ref, Obj]:
        """Objects whose manifest is the one this engine last applied and whose live
        resourceVersion is still the one that apply returned: nobody changed them since, so
        applying them again would change nothing (a restarted engine knows none: it applies
        everything once)."""
        out: dict[Ref, Obj] = {}
        for _, obj in prepared:
            ref = Ref.of(obj)
            current = existing.get(ref)
            if (
                current is not None
                and self.digests.get(ref) == _digest(obj)
                and current["metadata"].get("resourceVersion") == self.versions.get(ref)
            ):
                out[ref] = current
        return out

    async def _established(self, step: Step, live: list[Obj], timeout: float = 30.0) -> None:
        """Wait until the step's CRDs are established, then forget their discovery."""
        crds = [o for o in step.objects if o.get("kind") == "CustomResourceDefinition"]
        res = await self.client.resource("apiextensions.k8s.io/v1", "CustomResourceDefinition")
        if not crds or res is None:
            return
        deadline = time.monotonic() + timeout
        for crd in crds:
            name = crd["metadata"]["name"]
            while True:
                current = await self.client.get(res, None, name)
                if current is not None and health_of(current)[0] == "Healthy":
                    live.append(current)
                    break
                if time.monotonic() > deadline:
                    raise KubeError(
                        504, "Timeout", f"CRD {name} was not established in {timeout:.0f}s"
                    )
                await asyncio.sleep(0.1)
            spec = crd.get("spec") or {}
            for v in spec.get("versions") or ():
                self.client.forget(f"{spec.get('group')}/{v.get('name')}")

    async def _prune(self, stale: dict[Ref, Ref]) -> tuple[set[Ref], set[Ref], set[Ref]]:
        """(deleted or already gone, released (adopted: label removed, not deleted), kept
        because it could not be deleted). Dependents before what they live in: other kinds,
        then namespaces, then CRDs. The inventory's own namespace is never deleted."""

        def order(r: Ref) -> int:
            return {"CustomResourceDefinition": 2, "Namespace": 1}.get(r.kind, 0)

        gone: set[Ref] = set()
        released: set[Ref] = set()
        failed: set[Ref] = set()
        for rank in (0, 1, 2):
            batch = sorted(stale[r] for r in stale if order(r) == rank)
            results = await self._bounded(batch, self._prune_one)
            for ref, result in zip(batch, results, strict=True):
                if isinstance(result, KubeError) or result == "failed":
                    failed.add(ref)
                elif result == "released":
                    released.add(ref)
                else:
                    gone.add(ref)
        return gone, released, failed

    async def _prune_one(self, ref: Ref) -> str:
        """ "gone", "released" or "failed"."""
        if ref.kind == "Namespace" and ref.group == "" and ref.name == INVENTORY_NAMESPACE:
            return "released"
        res = await self.client.resource(ref.api_version, ref.kind)
        if res is None:
            res = await self.client.resource_of(ref.group, ref.kind)
        if res is None:
            # only a kind whose group the target no longer serves at all is surely gone
            # (its CRD pruned); anything else stays listed until it can be checked
            served = await self.client.request("GET", f"/apis/{ref.group}" if ref.group else "/api")
            return "gone" if served[0] == 404 else "failed"
        live = await self.client.get(res, ref.namespace or None, ref.name)
        if live is None:
            self._forget(ref)
            return "gone"
        if _labels(live).get(SYNC_LABEL) != self.label:
            self._forget(ref)
            return "gone"  # taken over by someone else: no longer ours to delete
        if ref.adopted:
            # it was there before this Sync: give it back as it is, without our label
            await self.client.call(
                "PATCH",
                res.path(ref.namespace or None, ref.name),
                {
                    "metadata": {
                        "labels": {SYNC_LABEL: None},
                        "annotations": {SYNC_ANNOTATION: None},
                    }
                },
                content_type="application/merge-patch+json",
            )
            self._forget(ref)
            return "released"
        uid = (live.get("metadata") or {}).get("uid")
        await self.client.delete(res, ref.namespace or None, ref.name, uid=uid)
        self._forget(ref)
        return "gone"

    def _forget(self, ref: Ref) -> None:
        self.versions.pop(ref, None)
        self.digests.pop(ref, None)

    # -- drift --------------------------------------------------------------------------------

    async def check(self, objects: list[Obj], revision: str, *, self_heal: bool) -> Outcome:
        """Compare the target with an applied revision: drift (healed when asked) and health."""
        out = Outcome(revision, complete=True)
        try:
            await self._check(objects, out, self_heal=self_heal)
        except (Unreachable, TargetUnreachable) as exc:
            out.complete, out.unreachable = False, True
            out.message = f"target unreachable: {exc}"
        except KubeError as exc:
            out.complete = False
            out.message = f"the target refused: {exc}"
        return out

    async def _check(self, objects: list[Obj], out: Outcome, *, self_heal: bool) -> None:
        prepared: list[tuple[Resource, Obj]] = []
        for obj in objects:
            p = await self._prepare(obj)
            if isinstance(p, str):
                out.errors.append(ObjectError(describe(obj), p))
            else:
                prepared.append(p)
        existing = await self._existing(prepared)
        live = {r: o for r, o in existing.items() if _labels(o).get(SYNC_LABEL) == self.label}
        ours = []
        for p in prepared:
            owner = _labels(existing.get(Ref.of(p[1]))).get(SYNC_LABEL)
            if owner is not None and owner != self.label:
                out.errors.append(ObjectError(describe(p[1]), f"taken over by Sync {owner}"))
            else:
                ours.append(p)
        prepared = ours
        suspect = [
            p
            for p in prepared
            if (ref := Ref.of(p[1])) not in live
            or live[ref]["metadata"].get("resourceVersion") != self.versions.get(ref)
        ]
        dry = await self._bounded(suspect, lambda p: self.client.apply(p[0], p[1], dry_run=True))
        drifted: list[tuple[Resource, Obj]] = []
        for p, result in zip(suspect, dry, strict=True):
            ref = Ref.of(p[1])
            if isinstance(result, KubeError):
                out.errors.append(ObjectError(describe(p[1]), result.message or str(result)))
            elif ref not in live:
                drifted.append(p)
                out.drift.append(f"{ref}: missing")
            elif normalized(result) != normalized(live[ref]):
                drifted.append(p)
                out.drift.append(f"{ref}: changed in the target")
            else:
                self.versions[ref] = live[ref]["metadata"].get("resourceVersion", "")
                self.digests[ref] = _digest(p[1])
        if self_heal and drifted:
            results = await self._bounded(drifted, lambda p: self.client.apply(p[0], p[1]))
            for p, result in zip(drifted, results, strict=True):
                if isinstance(result, KubeError):
                    out.errors.append(ObjectError(describe(p[1]), result.message or str(result)))
                else:
                    ref = Ref.of(p[1])
                    self.versions[ref] = result["metadata"].get("resourceVersion", "")
                    self.digests[ref] = _digest(p[1])
                    live[ref] = result
                    out.healed.append(str(ref))
        out.applied = len(prepared) - len(out.drift) + len(out.healed)
        out.complete = not out.errors
        out.health, out.health_messages = overall_health(
            health_of(live[Ref.of(p[1])]) for p in prepared if Ref.of(p[1]) in live
        )

    async def diff(self, objects: list[Obj]) -> list[tuple[str, str]]:
        """(object, unified diff of live against what the source declares) for each object
        that differs; a new object diffs against nothing."""
        out: list[tuple[str, str]] = []
        for obj in objects:
            p = await self._prepare(obj)
            if isinstance(p, str):
                out.append((describe(obj), f"# {p}\n"))
                continue
            res, want = p
            meta = want["metadata"]
            current = await self.client.get(res, meta.get("namespace"), meta["name"])
            try:
                after = await self.client.apply(res, want, dry_run=True)
            except KubeError as exc:
                out.append((describe(obj), f"# the dry-run refused it: {exc.message}\n"))
                continue
            before_text = _yaml(normalized(current)) if current else []
            after_text = _yaml(normalized(after))
            if before_text != after_text:
                text = "".join(
                    difflib.unified_diff(
                        before_text, after_text, f"live/{describe(obj)}", f"source/{describe(obj)}"
                    )
                )
                out.append((describe(obj), text))
        return out


def _labels(obj: Obj | None) -> dict[str, str]:
    labels = ((obj or {}).get("metadata") or {}).get("labels")
    return labels if isinstance(labels, dict) else {}


def _listing(refs: dict[Ref, Ref]) -> list[list[str]]:
    """The inventory as stored: every entry with its version and adoption."""
    return sorted(r.to_json() for r in refs.values())


def _digest(obj: Obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _yaml(obj: Obj) -> list[str]:
    text: str = yaml.safe_dump(obj, sort_keys=True, default_flow_style=False)
    return text.splitlines(keepends=True)


def _crd_kinds(objects: list[Obj]) -> dict[tuple[str, str], int]:
    """(group, kind) -> the wave of the CRD in this render that defines it."""
    found: dict[tuple[str, str], int] = {}
    for o in objects:
        if o.get("kind") == "CustomResourceDefinition":
            spec = o.get("spec") or {}
            kind = (spec.get("names") or {}).get("kind")
            if spec.get("group") and kind:
                found[(spec["group"], kind)] = wave_of(o)
    return found


def _stopped(step: Step, applied: list[str], why: str) -> str:
    done = ", ".join(applied) if applied else "none"
    return f"stopped at {step.label}: {why}; nothing of it was applied. Steps applied: {done}"
