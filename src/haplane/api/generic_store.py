"""The generic store: create, get, list, update, patch, delete and watch for every resource type.

Layer: api. Uses a `Storage` (etcd, or a cache wrapping it) and each kind's `Strategy`; speaks
in objects and `StatusError`s, not HTTP.

What it guarantees (as kube-apiserver's generic registry):
- create is one txn on `mod_revision == 0` (409 AlreadyExists); metadata.uid,
  creationTimestamp and generation are set here; generateName is resolved (retried on a clash);
- update/patch read, transform and write in one guarded txn; a stale explicit resourceVersion or
  a failed uid precondition is 409 Conflict, a version from another region/epoch too;
- namespaced objects need their namespace to exist (404), as in Kubernetes;
- dryRun=All runs every step but the write;
- a storage outcome that may or may not have happened is 504 Timeout, never reported as failed.
"""

from __future__ import annotations

import base64
import builtins
import copy
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import errors, storage
from . import server_side_apply as ssa
from .crds import set_path
from .errors import StatusError
from .patch import OBJECT_META_STRATEGIES, PatchError
from .resource_version import VersionContext, parse, revision_for_read
from .resources import ResourceType
from .selectors import (
    FieldSelector,
    LabelSelector,
    parse_field_selector,
    parse_label_selector,
)
from .storage import Obj, Storage
from .validation import FieldError, generate_name, object_meta_errors

# the subresource an update writes through (status, scale...), for admission's attributes
_SUBRESOURCE: ContextVar[str] = ContextVar("haplane_store_subresource", default="")
# whether the write being served is a dry run (admission policies read it as request.dryRun);
# set by each write's entry point, so it holds for the task's current write
_DRY_RUN: ContextVar[bool] = ContextVar("haplane_store_dry_run", default=False)

NAMESPACE_KEY = "/registry/namespaces/"
GENERATE_NAME_ATTEMPTS = 5
BOOKMARK_INTERVAL = 5.0  # seconds between watch bookmarks when a client asks for them
TICK = 1.0  # a silent watch wakes its reader this often


_now_text: tuple[int, str] = (-1, "")


def now_rfc3339() -> str:
    """The time in Kubernetes' second-precision form; formatted once per second (a write asks
    for it up to twice, and strftime showed at 2% of a create under load)."""
    global _now_text
    second = int(time.time())
    if _now_text[0] != second:
        _now_text = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return _now_text[1]


@dataclass(frozen=True)
class ListOptions:
    label_selector: LabelSelector
    field_selector: FieldSelector
    limit: int = 0
    continue_token: str | None = None
    resource_version: str | None = None
    resource_version_match: str | None = None  # None/NotOlderThan, or Exact

    @classmethod
    def everything(cls, resource_version: str | None = None, limit: int = 0) -> ListOptions:
        """No selector: every object ("0": from the watch cache when it is ready)."""
        return cls(
            parse_label_selector(None),
            parse_field_selector(None, ()),
            limit=limit,
            resource_version=resource_version,
        )


@dataclass(frozen=True)
class LifecycleScan:
    """One resource as the lifecycle controllers see it (`GenericStore.lifecycle_scan`)."""

    revision: str  # changes whenever anything in the resource changed
    objects: list[Obj]  # those with ownerReferences or a deletionTimestamp, stamped copies
    by_uid: Mapping[str, Obj]  # every object (shared: read only)


@dataclass(frozen=True)
class DeleteResult:
    object: Obj
    deleted: bool  # False: marked for deletion, waiting for finalizers


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
    object: Obj
    source: storage.StorageEvent | None = None  # shared by all watchers of the change

    def encoded(self) -> bytes:
        """The event as a JSON line; one encoding per change and version, whatever the number
        of watchers (the fan-out cost that dominates many watches)."""
        if self.source is None:
            return errors.dumps({"type": self.type, "object": self.object}) + b"\n"
        key = (self.type, self.object.get("apiVersion"))
        line = self.source.memo.get(key)
        if line is None:
            line = errors.dumps({"type": self.type, "object": self.object}) + b"\n"
            self.source.memo[key] = line
        return line


TICK_EVENT = WatchEvent("TICK", {})  # internal: "nothing happened", for the server's checks


def ssa_meta_schema() -> dict[str, Any]:
    return dict(OBJECT_META_STRATEGIES)


def _causes(errs: list[FieldError]) -> list[dict[str, Any]]:
    return [e.cause() for e in errs]


NamespaceLookup = Callable[[str], tuple[Obj | None, bool]]


class GenericStore:
    def __init__(
        self, rtype: ResourceType, store: Storage, namespaces: NamespaceLookup | None = None
    ):
        """`namespaces`: this replica's cached view of namespaces, as `(object, usable)`; a
        create consults it before paying a quorum read (below)."""
        self.t = rtype
        self.storage = store
        self.namespaces = namespaces
        # a last check of the object about to be written, after validation, with the old one
        # (None on create): RBAC's escalation prevention (haplane.api.authorizer). Raises a
        # StatusError to refuse. Dry runs are checked too.
        self.final_check: Callable[[Obj, Obj | None], None] | None = None
        # validating admission (policies), and what a write awaits first (the policies
        # loaded); set by the server: (operation, object, old object, subresource, dry run,
        # whether the server made the object's name from generateName)
        self.admission: Callable[[str, Obj | None, Obj | None, str, bool, bool], None] | None = None
        self.admission_ready: Callable[[], Awaitable[None]] | None = None

    @property
    def versions(self) -> VersionContext:
        return self.storage.versions

    # ---- helpers -------------------------------------------------------------------------

    def _not_found(self, name: str) -> StatusError:
        return errors.not_found(self.t.plural, name, self.t.group)

    def _translate(self, exc: storage.StorageError, name: str) -> StatusError:
        if isinstance(exc, storage.KeyNotFound):
            return self._not_found(name)
        if isinstance(exc, storage.KeyExists):
            return errors.already_exists(self.t.plural, name, self.t.group)
        if isinstance(exc, storage.Conflict):
            return errors.conflict(self.t.plural, name, str(exc), self.t.group)
        if isinstance(exc, storage.Expired):
            return errors.gone(f"too old resource version: {exc}")
        if isinstance(exc, storage.Invalid):
            return errors.bad_request(str(exc))
        if isinstance(exc, storage.TooLarge):
            return errors.too_large(f"request entity too large: {exc}")
        if isinstance(exc, storage.WriteFenced):
            return errors.unavailable(f"writes are fenced here: {exc}")
        if isinstance(exc, storage.Unreplicated):
            return errors.timeout(
                f"the write of {self.t.qualified} {name!r} committed in this region but its "
                f"synchronous standby has not confirmed it: its durability is unknown, and "
                f"reading it back here does not prove it ({exc})"
            )
        if isinstance(exc, storage.Untransformable):
            return errors.internal(str(exc))
        if isinstance(exc, storage.OutcomeUnknown):
            return errors.timeout(
                f"the write of {self.t.qualified} {name!r} timed out in etcd and may or may not "
                f"have been applied; read it back before retrying ({exc})"
            )
        return errors.unavailable(f"etcd unavailable: {exc}")

    def _key(self, namespace: str | None, name: str) -> str:
        return self.t.key(namespace if self.t.namespaced else None, name)

    def _stamp(self, obj: Obj) -> Obj:
        obj["apiVersion"] = self.t.group_version
        obj["kind"] = self.t.kind
        return obj

    def _stamped(self, shared: Obj) -> Obj:
        """A stamped shallow copy: cached objects and watch events are shared by every reader
        (and several served versions), so they are never stamped in place."""
        return {**shared, "apiVersion": self.t.group_version, "kind": self.t.kind}

    async def _require_namespace(
        self, namespace: str | None, *, quorum: bool = False
    ) -> tuple[str, int] | None:
        """Refuses a missing or terminating namespace. Returns a guard (key, mod revision) for
        the create's transaction when the namespace came from the cache."""
        if not self.t.namespaced:
            return None
        if not namespace:
            raise errors.bad_request("a namespaced object needs a namespace")
        # As Kubernetes' NamespaceLifecycle admission does with its informer: a namespace the
        # watch cache holds is trusted (it saves one etcd round trip per create, ~15% of a
        # create's CPU); one the cache lacks (created a moment ago, or a cache not ready) is
        # looked up with a quorum read. The cache may lag (a stalled watch): so the create's
        # transaction also compares the namespace's mod revision with the cached one, and a
        # namespace changed meanwhile (marked for deletion, or deleted) means a quorum read
        # and another try.
        guard = None
        cached, usable = self.namespaces(namespace) if self.namespaces else (None, False)
        if usable and cached is not None and not quorum:
            ns = cached
            rv = (cached.get("metadata") or {}).get("resourceVersion")
            if rv:
                guard = (NAMESPACE_KEY + namespace, parse(self.versions, str(rv)).revision)
        else:
            try:
                ns = await self.storage.get(NAMESPACE_KEY + namespace)
            except storage.KeyNotFound:
                raise errors.not_found("namespaces", namespace) from None
            except storage.StorageError as exc:
                raise self._translate(exc, namespace) from exc
        if ns.get("metadata", {}).get("deletionTimestamp"):
            raise errors.StatusError(
                403,
                "Forbidden",
                f"unable to create new content in namespace {namespace} because it is being "
                "terminated",
                details={"name": namespace, "kind": "namespaces"},
            )
        return guard

    def _check_body(self, obj: Any, namespace: str | None, name: str | None) -> Obj:
        if not isinstance(obj, dict):
            raise errors.bad_request("the request body must be a JSON or YAML object")
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version is not None and api_version != self.t.group_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({self.t.group_version})"
            )
        if kind is not None and kind != self.t.kind:
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({self.t.kind})"
            )
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if self.t.namespaced:
            body_ns = meta.get("namespace")
            if body_ns not in (None, "", namespace):
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if name is not None and meta.get("name") not in (None, name):
            raise errors.bad_request(
                "the name of the object does not match the name on the URL "
                f"({meta.get('name')!r} != {name!r})"
            )
        if name is not None:
            meta["name"] = name
        return obj

    @functools.cached_property
    def list_types(self) -> dict[str, ssa.ListType]:
        """How server-side apply merges this kind's lists."""
        if self.t.patch_schema is not None:
            return ssa.list_types_from_patch_schema(self.t.patch_schema)
        schema = getattr(self.t.strategy, "schema", None)
        if isinstance(schema, dict):
            return ssa.list_types_from_openapi(schema)
        return ssa.list_types_from_patch_schema(ssa_meta_schema())

    def _record_owner(self, old: Obj | None, new: Obj, manager: str) -> None:
        entries = ssa.update_managed_fields(
            old,
            new,
            manager=manager,
            api_version=self.t.group_version,
            list_types=self.list_types,
            now=now_rfc3339(),
        )
        if entries:
            new["metadata"]["managedFields"] = entries
        else:
            new["metadata"].pop("managedFields", None)

    def _validate(self, obj: Obj, old: Obj | None, generated: bool = False) -> None:
        """`generated`: a create whose name the server made from generateName (admission is
        told the name the request gave: none, as Kubernetes tells it)."""
        errs = object_meta_errors(
            obj.get("metadata", {}), namespaced=self.t.namespaced, name_rule=self.t.name_rule
        )
        errs += (
            self.t.strategy.validate(obj)
            if old is None
            else self.t.strategy.validate_update(obj, old)
        )
        if errs:
            name = str(
                obj.get("metadata", {}).get("name")
                or obj.get("metadata", {}).get("generateName")
                or ""
            )
            raise errors.invalid(self.t.kind, name, _causes(errs), self.t.group)
        if self.final_check is not None:
            self.final_check(obj, old)
        if self.admission is not None:
            operation = "CREATE" if old is None else "UPDATE"
            self.admission(operation, obj, old, _SUBRESOURCE.get(), _DRY_RUN.get(), generated)

    # ---- create --------------------------------------------------------------------------

    async def create(
        self,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
        manager: str | None = None,
        managed_fields: builtins.list[Obj] | None = None,
        handed_over: bool = False,
    ) -> Obj:
        """`manager` records field ownership (an Update entry); `managed_fields` instead sets
        them as computed by server-side apply. `handed_over`: the caller gives `body` up (a
        request's freshly decoded body), so it is used as it is instead of a copy."""
        _DRY_RUN.set(dry_run)
        if self.admission_ready is not None:
            await self.admission_ready()
        body = body if handed_over else copy.deepcopy(body)
        obj = self._stamp(self._check_body(body, namespace, None))
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        for f in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ):
            meta.pop(f, None)
        generated = not meta.get("name") and bool(meta.get("generateName"))
        if generated:
            meta["name"] = generate_name(str(meta["generateName"]))
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        self.t.strategy.prepare_for_create(obj)
        self._validate(obj, None, generated)
        if managed_fields is not None:
            meta["managedFields"] = managed_fields
        elif manager:
            self._record_owner(None, obj, manager)
        guard = await self._require_namespace(namespace)
        for attempt in range(GENERATE_NAME_ATTEMPTS):
            name = str(meta["name"])
            key = self._key(namespace, name)
            try:
                if dry_run:
                    try:
                        await self.storage.get(key)
                    except storage.KeyNotFound:
                        return obj
                    raise storage.KeyExists(key, {})
                try:
                    return await self.storage.create(key, obj, guard=guard)
                except storage.GuardChanged:
                    # the cached namespace was stale: decide on a quorum read, unguarded
                    guard = await self._require_namespace(namespace, quorum=True)
                    return await self.storage.create(key, obj, guard=guard)
            except storage.KeyExists as exc:
                if generated and attempt + 1 < GENERATE_NAME_ATTEMPTS:
                    meta["name"] = generate_name(str(meta["generateName"]))
                    # judged again under its new name, as Kubernetes' retry runs the whole
                    # create (the policies saw the name that clashed)
                    self._validate(obj, None, generated)
                    continue
                raise self._translate(exc, name) from exc
            except storage.StorageError as exc:
                raise self._translate(exc, name) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- read ----------------------------------------------------------------------------

    async def get(
        self, namespace: str | None, name: str, resource_version: str | None = None
    ) -> Obj:
        """resourceVersion "0" (or an N the watch cache has reached): from the cache; else a
        linearizable read from etcd."""
        revision = revision_for_read(self.versions, resource_version)
        cached_get = getattr(self.storage, "cached_get", None)
        if cached_get is not None and resource_version:
            found, usable = cached_get(self._key(namespace, name), revision or 0)
            if usable:
                if found is None:
                    raise self._not_found(name)
                return self._stamped(found)
        try:
            return self._stamp(await self.storage.get(self._key(namespace, name)))
        except storage.StorageError as exc:
            raise self._translate(exc, name) from exc

    def _cached(
        self, prefix: str, resource_version: str | None, revision: int | None
    ) -> storage.ListResult | None:
        """A cached snapshot for reads that allow one (rv "0", or "not older than" N)."""
        cached_list = getattr(self.storage, "cached_list", None)
        if cached_list is None or not resource_version:
            return None
        result: storage.ListResult | None = cached_list(prefix, revision or 0)
        return result

    async def lifecycle_scan(self) -> LifecycleScan:
        """For the lifecycle controllers: from the watch cache's indexes when it is ready (a
        round then costs what it acts on, not the size of the resource); else one list."""
        view_of = getattr(self.storage, "lifecycle_view", None)
        view: storage.LifecycleView | None = view_of() if view_of is not None else None
        if view is not None:
            return LifecycleScan(
                str(view.revision), [self._stamped(o) for o in view.objects], view.by_uid
            )
        listed = await self.list(None, ListOptions.everything("0"))
        items = listed["items"]
        return LifecycleScan(
            str(listed["metadata"].get("resourceVersion")),
            [o for o in items if storage.acted_on_by_lifecycle(o)],
            {o["metadata"]["uid"]: o for o in items if o["metadata"].get("uid")},
        )

    async def list(self, namespace: str | None, opts: ListOptions) -> Obj:
        """resourceVersion unset, "0" or N (not older than N): the latest state, read through
        quorum (never older than anything this region issued); resourceVersionMatch=Exact: the
        state at N (410 once compacted); a continue token: the state its first page saw."""
        revision = revision_for_read(self.versions, opts.resource_version)
        if opts.resource_version_match not in (None, "", "NotOlderThan", "Exact"):
            raise errors.bad_request(
                f"unsupported resourceVersionMatch {opts.resource_version_match!r}"
            )
        if opts.resource_version_match == "Exact" and revision is None:
            raise errors.bad_request("resourceVersionMatch=Exact needs a resourceVersion")
        if opts.resource_version_match != "Exact" and not opts.continue_token:
            cached = self._cached(self.t.key_prefix(namespace), opts.resource_version, revision)
            if cached is not None:  # the whole matching set; `limit` does not apply here
                return self._list_body(
                    [self._stamped(i) for i in cached.items if self._matches(i, opts)],
                    {"resourceVersion": self.versions.encode(cached.revision)},
                )
        if opts.resource_version_match != "Exact":
            revision = None
        start_after = None
        prefix = self.t.key_prefix(namespace)
        if opts.continue_token:
            start_after, revision = self._decode_continue(opts.continue_token, prefix)
        name = opts.field_selector.value_of("metadata.name")
        items: list[Obj] = []
        try:
            if name is not None and (namespace or not self.t.namespaced):
                # a single key: no need to range over everything
                found, result_rev = await self.storage.get_at(
                    self.t.key(namespace, name), revision=revision
                )
                items = [found] if found is not None else []
                more_key, remaining = None, 0
            else:
                filtered = not (opts.label_selector.empty() and opts.field_selector.empty())
                # With a selector, keep reading pages until `limit` matches (or the end).
                more_key, remaining = None, 0
                result_rev = revision or 0
                cursor = start_after
                while True:
                    page = await self.storage.list(
                        prefix,
                        revision=result_rev or None,
                        start_after=cursor,
                        limit=opts.limit,
                    )
                    result_rev = page.revision
                    for obj in page.items:
                        if self._matches(obj, opts):
                            items.append(obj)
                    cursor = page.last_key
                    if cursor is None or not opts.limit or len(items) >= opts.limit:
                        more_key, remaining = cursor, page.remaining
                        break
                if filtered:
                    remaining = 0  # unknown after filtering; Kubernetes omits it too
        except storage.Expired as exc:
            raise errors.gone(
                "The provided continue parameter is too old to display a consistent list "
                "result. You can start a new list without the continue parameter."
                if opts.continue_token
                else f"too old resource version: {exc}"
            ) from exc
        except storage.StorageError as exc:
            raise self._translate(exc, "") from exc
        items = [self._stamp(i) for i in items if self._matches(i, opts)]
        meta: Obj = {"resourceVersion": self.versions.encode(result_rev)}
        if more_key is not None:
            meta["continue"] = self._encode_continue(more_key, result_rev)
            if remaining:
                meta["remainingItemCount"] = remaining
        return self._list_body(items, meta)

    def _list_body(self, items: builtins.list[Obj], meta: Obj) -> Obj:
        return {
            "kind": self.t.list_kind,
            "apiVersion": self.t.group_version,
            "metadata": meta,
            "items": items,
        }

    def _matches(self, obj: Obj, opts: ListOptions) -> bool:
        meta = obj.get("metadata", {})
        if not opts.label_selector.matches(meta.get("labels") or {}):
            return False
        fields = {"metadata.name": str(meta.get("name", ""))}
        if self.t.namespaced:
            fields["metadata.namespace"] = str(meta.get("namespace", ""))
        return opts.field_selector.matches(fields)

    def _encode_continue(self, last_key: str, revision: int) -> str:
        raw = json.dumps(
            {
                "v": "haplane/1",
                "rv": revision,
                "start": last_key,
                "region": self.versions.region_tag,
                "epoch": self.versions.epoch,
            }
        )
        return base64.urlsafe_b64encode(raw.encode()).decode()

    def _decode_continue(self, token: str, prefix: str) -> tuple[str, int]:
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
            start, rev = str(data["start"]), int(data["rv"])
            if not 0 < rev < 2**63:
                raise ValueError("revision out of range")
            region, epoch = data["region"], int(data["epoch"])
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.bad_request(f"invalid continue token: {exc}") from exc
        if region != self.versions.region_tag or epoch != self.versions.epoch:
            raise errors.gone(
                "the continue token was issued by another region or epoch; start a new list"
            )
        if not start.startswith(prefix):
            raise errors.bad_request("the continue token does not belong to this list")
        return start, rev

    # ---- update and patch ----------------------------------------------------------------

    async def update(
        self,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        dry_run: bool = False,
        manager: str | None = None,
    ) -> Obj:
        new_body = self._stamp(self._check_body(copy.deepcopy(body), namespace, name))
        return await self._update(
            namespace,
            name,
            lambda current: copy.deepcopy(new_body),
            dry_run=dry_run,
            precondition_from_body=True,
            manager=manager,
        )

    async def apply(
        self,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        manager: str,
        force: bool,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Server-side apply: create when absent, else merge with field ownership (409 on a
        conflict with another manager unless `force`). Returns (object, created)."""
        applied = self._check_body(copy.deepcopy(body), namespace, name)
        applied.setdefault("apiVersion", self.t.group_version)
        applied.setdefault("kind", self.t.kind)

        def merge(live: Obj | None) -> Obj:
            try:
                return ssa.apply(
                    live,
                    applied,
                    manager=manager,
                    api_version=self.t.group_version,
                    force=force,
                    list_types=self.list_types,
                    now=now_rfc3339(),
                )
            except ssa.ApplyConflict as exc:
                raise errors.StatusError(
                    409,
                    "Conflict",
                    exc.message,
                    details={
                        "name": name,
                        "kind": self.t.plural,
                        "group": self.t.group,
                        "causes": exc.causes,
                    },
                ) from exc
            except PatchError as exc:
                raise errors.StatusError(
                    exc.code, "BadRequest" if exc.code == 400 else "Invalid", exc.message
                ) from exc

        for _ in range(3):  # a create racing with another creator turns into an update
            try:
                await self.get(namespace, name)
            except StatusError as exc:
                if exc.code != 404:
                    raise
                created = merge(None)
                managed = created["metadata"].pop("managedFields", [])
                try:
                    return await self.create(
                        namespace, created, dry_run=dry_run, managed_fields=managed
                    ), True
                except StatusError as exc2:
                    if exc2.code != 409 or exc2.reason != "AlreadyExists":
                        raise
                    continue
            return await self._update(
                namespace,
                name,
                merge,
                dry_run=dry_run,
                precondition_from_body=False,
                keep_managed_fields=True,
            ), False
        raise errors.conflict(self.t.plural, name, "apply raced with creation", self.t.group)

    async def patch(
        self,
        namespace: str | None,
        name: str,
        apply_patch: Callable[[Obj], Obj],
        *,
        dry_run: bool = False,
        manager: str | None = None,
    ) -> Obj:
        def patched(current: Obj) -> Obj:
            result = apply_patch(copy.deepcopy(current))
            return self._stamp(self._check_body(result, namespace, name))

        return await self._update(
            namespace,
            name,
            patched,
            dry_run=dry_run,
            precondition_from_body=True,
            manager=manager,
        )

    async def update_subresource(
        self,
        namespace: str | None,
        name: str,
        subresource: str,
        make_new: Callable[[Obj], Obj],
        *,
        dry_run: bool = False,
    ) -> Obj:
        """`status` (and `approval`) changes only .status; `scale` only the replicas field its
        CRD names; `finalize` only .spec.finalizers (namespaces)."""

        def only_subresource(current: Obj) -> Obj:
            desired = make_new(copy.deepcopy(current))
            if not isinstance(desired, dict):
                raise errors.bad_request("the request body must be an object")
            result = copy.deepcopy(current)
            if subresource in ("status", "approval"):  # approval: ops.Operations.approve's
                result["status"] = desired.get("status") or {}
            elif subresource == "scale":
                replicas = (desired.get("spec") or {}).get("replicas")
                if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                    raise errors.invalid(
                        "Scale",
                        name,
                        [
                            {
                                "reason": "FieldValueInvalid",
                                "field": "spec.replicas",
                                "message": "must be a non-negative integer",
                            }
                        ],
                        "autoscaling",
                    )
                assert self.t.scale_paths is not None
                set_path(result, self.t.scale_paths[0], replicas)
            else:
                spec = desired.get("spec") if isinstance(desired.get("spec"), dict) else {}
                result.setdefault("spec", {})["finalizers"] = (spec or {}).get("finalizers", [])
            meta = desired.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            for f in ("resourceVersion", "uid"):  # preconditions, as on the main resource
                if meta.get(f):
                    result["metadata"][f] = meta[f]
            return result

        token = _SUBRESOURCE.set(subresource)
        try:
            return await self._update(
                namespace,
                name,
                only_subresource,
                dry_run=dry_run,
                precondition_from_body=True,
                prepare=False,
            )
        finally:
            _SUBRESOURCE.reset(token)

    async def _update(
        self,
        namespace: str | None,
        name: str,
        make_new: Callable[[Obj], Obj],
        *,
        dry_run: bool,
        precondition_from_body: bool,
        prepare: bool = True,
        manager: str | None = None,
        keep_managed_fields: bool = False,
    ) -> Obj:
        _DRY_RUN.set(dry_run)
        if self.admission_ready is not None:
            await self.admission_ready()
        key = self._key(namespace, name)
        preview: list[Obj] = []

        async def update(current: Obj) -> storage.UpdateResult:
            new = make_new(current)
            meta = new["metadata"]
            rv = meta.get("resourceVersion")
            if precondition_from_body and rv and rv != current["metadata"]["resourceVersion"]:
                parsed = parse(self.versions, str(rv))
                reason = (
                    (
                        "the object has been modified; please apply your changes to the "
                        "latest version and try again"
                    )
                    if parsed.ours
                    else (f"resourceVersion {rv} was issued by another region or failover epoch")
                )
                raise errors.conflict(self.t.plural, name, reason, self.t.group)
            uid = meta.get("uid")
            if uid and uid != current["metadata"].get("uid"):
                raise errors.conflict(
                    self.t.plural,
                    name,
                    f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                    f"{current['metadata'].get('uid')}",
                    self.t.group,
                )
            old_meta = current["metadata"]
            for f in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
                if f in old_meta:
                    meta[f] = old_meta[f]
                else:
                    meta.pop(f, None)
            meta.pop("resourceVersion", None)
            before = current
            if prepare:
                self.t.strategy.prepare_for_update(new, current)
            else:  # a subresource's write: the rest as read under the current schema
                new, before = self.t.strategy.normalised(new), self.t.strategy.normalised(current)
                meta = new["metadata"]
            if self.t.strategy.spec_changed(new, before):
                meta["generation"] = int(old_meta.get("generation") or 1) + 1
            self._validate(new, current)
            if manager and not keep_managed_fields:
                self._record_owner(current, new, manager)
            elif (
                not keep_managed_fields
                and "managedFields" not in meta
                and current["metadata"].get("managedFields")
            ):  # a write without a manager keeps the ownership record as it was
                meta["managedFields"] = current["metadata"]["managedFields"]
            if dry_run:
                preview.append(new)
                return None
            if meta.get("deletionTimestamp") and self._finalized(new):
                return storage.DELETE_OBJECT  # the last finalizer is gone: now it goes
            return new

        try:
            result = await self.storage.guaranteed_update(key, update, confirm=not dry_run)
        except storage.StorageError as exc:
            raise self._translate(exc, name) from exc
        if dry_run and preview:
            preview[-1]["metadata"]["resourceVersion"] = result["metadata"]["resourceVersion"]
            return preview[-1]
        return self._stamp(result)

    # ---- delete --------------------------------------------------------------------------

    def _finalized(self, obj: Obj) -> bool:
        return not obj["metadata"].get("finalizers") and not self.t.strategy.pending_finalizers(obj)

    async def delete(
        self,
        namespace: str | None,
        name: str,
        *,
        precondition_uid: str | None = None,
        precondition_rv: str | None = None,
        dry_run: bool = False,
        propagation: str | None = None,
    ) -> DeleteResult:
        """Delete now, or (finalizers pending, or Foreground/Orphan propagation) mark the object
        with deletionTimestamp; it goes when its last finalizer is removed."""
        _DRY_RUN.set(dry_run)

        def check(current: Obj) -> None:
            meta = current["metadata"]
            if self.admission is not None:
                self.admission("DELETE", None, current, "", _DRY_RUN.get(), False)
            refused = self.t.strategy.refuse_delete(current)
            if refused is not None:
                raise errors.StatusError(
                    403,
                    "Forbidden",
                    f'{self.t.plural} "{name}" is forbidden: {refused}',
                    details={"name": name, "group": self.t.group, "kind": self.t.plural},
                )
            if precondition_uid and precondition_uid != meta.get("uid"):
                raise errors.conflict(
                    self.t.plural,
                    name,
                    f"Precondition failed: UID in precondition: {precondition_uid}, UID in "
                    f"object meta: {meta.get('uid')}",
                    self.t.group,
                )
            if precondition_rv and precondition_rv != meta.get("resourceVersion"):
                raise errors.conflict(
                    self.t.plural,
                    name,
                    f"Precondition failed: ResourceVersion in precondition: {precondition_rv}, "
                    f"ResourceVersion in object meta: {meta.get('resourceVersion')}",
                    self.t.group,
                )

        if self.admission_ready is not None:
            await self.admission_ready()
        if propagation not in (None, "Background", "Foreground", "Orphan"):
            raise errors.bad_request(
                f"unsupported propagationPolicy {propagation!r}: use Background, Foreground "
                "or Orphan"
            )
        outcome: list[bool] = [False]  # whether the last attempt deleted (vs marked)

        async def decide(current: Obj) -> storage.UpdateResult:
            check(current)
            marked = copy.deepcopy(current)
            meta = marked["metadata"]
            finalizers = list(meta.get("finalizers") or [])
            # Foreground and Orphan are carried out by the garbage collector via finalizers.
            extra = {"Foreground": "foregroundDeletion", "Orphan": "orphan"}.get(propagation or "")
            if extra and extra not in finalizers:
                finalizers.append(extra)
            if not finalizers and not self.t.strategy.pending_finalizers(current):
                outcome[0] = True
                return None if dry_run else storage.DELETE_OBJECT
            outcome[0] = False
            if finalizers:
                meta["finalizers"] = finalizers
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = now_rfc3339()
                meta["deletionGracePeriodSeconds"] = 0
                self.t.strategy.prepare_for_delete(marked)
            if dry_run or marked == current:
                return None
            return marked

        try:
            result = await self.storage.guaranteed_update(
                self._key(namespace, name), decide, confirm=not dry_run
            )
        except storage.StorageError as exc:
            raise self._translate(exc, name) from exc
        return DeleteResult(self._stamp(result), deleted=outcome[0])

    async def delete_collection(
        self, namespace: str | None, opts: ListOptions, *, dry_run: bool = False
    ) -> Obj:
        listed = await self.list(namespace, ListOptions(opts.label_selector, opts.field_selector))
        deleted = []
        for item in listed["items"]:
            meta = item["metadata"]
            try:
                result = await self.delete(meta.get("namespace"), meta["name"], dry_run=dry_run)
                deleted.append(result.object)
            except StatusError as exc:
                if exc.code != 404:  # deleted meanwhile by someone else: fine
                    raise
        listed["items"] = deleted
        return listed

    # ---- watch ---------------------------------------------------------------------------

    async def watch(
        self,
        namespace: str | None,
        opts: ListOptions,
        *,
        bookmarks: bool = False,
        timeout_seconds: float | None = None,
        send_initial_events: bool = False,
        ticks: bool = False,
    ) -> AsyncIterator[WatchEvent]:
        """Unset or "0" resourceVersion: ADDED for the current state, then changes; N: the
        changes after N. A too-old N ends the stream with an ERROR event carrying 410.
        `send_initial_events` (streaming list): ADDED for the state not older than N (or the
        current one), then a BOOKMARK annotated `k8s.io/initial-events-end`, then changes.
        `ticks`: also yield `TICK_EVENT` (never sent to clients) when the stream is silent."""
        deadline = time.monotonic() + timeout_seconds if timeout_seconds else None
        try:
            revision = revision_for_read(self.versions, opts.resource_version)
        except StatusError as exc:
            yield WatchEvent("ERROR", exc.status())
            return
        last_rev = revision or 0
        if revision is None or send_initial_events:
            listed = await self.list(
                namespace,
                ListOptions(
                    opts.label_selector, opts.field_selector, resource_version=opts.resource_version
                ),
            )
            for item in listed["items"]:
                yield WatchEvent("ADDED", item)
            last_rev = parse(self.versions, listed["metadata"]["resourceVersion"]).revision
            if send_initial_events:
                end = self._bookmark(last_rev)
                end["metadata"]["annotations"] = {"k8s.io/initial-events-end": "true"}
                yield WatchEvent("BOOKMARK", end)
        # The storage watch wakes us after TICK seconds of silence (a BOOKMARK at the last
        # revision): enough to send bookmarks, end at timeoutSeconds and let the server notice a
        # client that left, without a task and a wait per event per watcher (the fan-out cost).
        tick = min(TICK, timeout_seconds) if timeout_seconds else TICK
        events = self.storage.watch(self.t.key_prefix(namespace), revision=last_rev, tick=tick)
        last_bookmark = last_yield = time.monotonic()
        try:
            async for ev in events:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return
                last_rev = max(last_rev, ev.revision)
                yielded = False
                if ev.type != "BOOKMARK":
                    translated = self._translate_event(ev, opts)
                    if translated is not None:
                        yield translated
                        yielded = True
                if bookmarks and now - last_bookmark >= BOOKMARK_INTERVAL:
                    last_bookmark = now
                    yield WatchEvent("BOOKMARK", self._bookmark(last_rev))
                    yielded = True
                elif ticks and not yielded and (ev.type == "BOOKMARK" or now - last_yield >= tick):
                    # also when changes stream past that the selectors filter out
                    yield TICK_EVENT
                    yielded = True
                if yielded:
                    last_yield = time.monotonic()
        except storage.Expired as exc:
            yield WatchEvent("ERROR", errors.gone(f"too old resource version: {exc}").status())
        except storage.StorageError as exc:
            yield WatchEvent("ERROR", self._translate(exc, "").status())
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    def _bookmark(self, revision: int) -> Obj:
        return {
            "kind": self.t.kind,
            "apiVersion": self.t.group_version,
            "metadata": {"resourceVersion": self.versions.encode(revision)},
        }

    def _translate_event(self, ev: storage.StorageEvent, opts: ListOptions) -> WatchEvent | None:
        """Selectors turn a change into ADDED/DELETED when the object enters/leaves the set."""
        assert ev.object is not None
        now_matches = self._matches(ev.object, opts)
        if ev.type == "DELETED":
            return WatchEvent("DELETED", self._stamped(ev.object), ev) if now_matches else None
        before = ev.prev_object is not None and self._matches(ev.prev_object, opts)
        if ev.type == "ADDED" or not before:
            return WatchEvent("ADDED", self._stamped(ev.object), ev) if now_matches else None
        if now_matches:
            return WatchEvent("MODIFIED", self._stamped(ev.object), ev)
        gone = self._stamped(ev.object)
        return WatchEvent("DELETED", gone)
