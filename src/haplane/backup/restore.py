"""`restore`: put a logical backup (or one namespace of it) back through the API.

Layer: backup. A client of the platform: every object is written through the public API as the
caller, so RBAC, admission policies and audit apply to a restore as to any write.

Before anything is written, the whole backup is checked: its manifest (a newer format is
refused), every file's presence and sha256, every file parsed, every sealed file opened with the
platform's KEK; and no namespace to restore may be terminating. Any problem refuses the restore
with nothing applied.

Order (`plan`): CRDs first, then waited for until Established; Namespaces; then every other
object, owners before their dependents (an object waits for the round after its last owner
that the restore also writes), and within a round the kinds others refer to first
(ServiceAccounts, Secrets, ConfigMaps, RBAC: `haplane.kubeclient.KIND_ORDER`). Objects of one
step are written side by side (16 at a time).

An object is created (POST). One that exists is skipped (`existing="skip"`), or overwritten by
a forced server-side apply as field manager `haplane-backup` (`existing="overwrite"`): the
fields the backup holds take the backup's values, fields only others set stay.

Owner references. Restored objects get new uids, and Kubernetes' garbage collector deletes a
dependent whose owner's uid no longer exists; so each reference is pointed at its owner as the
server has it now: the owner this restore wrote (or found existing), else an object of the
owner's kind and name already there. A reference to an owner that is neither restored nor
present is dropped and the object kept (an orphan), and the report says so. Velero drops every
owner reference at restore and lets controllers adopt again; we keep the ones that can be kept
(nothing here adopts by labels), and for the others do as Velero: skipping the object would
lose data the restore was asked for, and keeping the reference would have the collector delete
it seconds later, silently.

With `dry_run`, every object is sent as a server-side dry-run (`dryRun=All`): nothing is
stored, admission and validation answer. An object in a namespace, or of a kind, that only the
restore itself would create cannot be checked that way; the report says which.

A failure of one object is reported and the others go on (its dependents lose their reference
to it, see above); a server that stops answering stops the restore, and the report says what
was done until then.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..kubeclient import (
    KubeClient,
    KubeError,
    Unreachable,
    describe,
    established,
    is_crd,
    kind_rank,
)
from .create import NAMESPACES, sealed_context
from .manifest import BackupError, FileEntry, Manifest, read_manifest, verify
from .sealing import Sealer, SealingError
from .selection import SERVER_FIELDS

Obj = dict[str, Any]
Existing = Literal["skip", "overwrite"]
Progress = Callable[[str], None]
CONCURRENCY = 16
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when it is there


@dataclass
class Item:
    """One object of the backup, as it will be sent, with its uid at backup time."""

    obj: Obj
    uid: str
    qualified: str  # its resource (`configmaps`, `widgets.example.com`)

    @property
    def namespace(self) -> str | None:
        ns = self.obj["metadata"].get("namespace")
        return str(ns) if ns else None

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    def owner_uids(self) -> list[str]:
        return [str(r.get("uid")) for r in self.obj["metadata"].get("ownerReferences") or ()]


@dataclass
class Outcome:
    action: str  # created | skipped | overwritten | failed (with dry-run: would create, ...)
    object: str
    message: str = ""

    def __str__(self) -> str:
        return f"{self.action}: {self.object}" + (f": {self.message}" if self.message else "")


@dataclass
class RestoreReport:
    backup: str
    dry_run: bool
    existing: Existing
    outcomes: list[Outcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # owner references dropped, CRDs late
    stopped: str | None = None  # why the restore stopped before the end
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        return dict(Counter(o.action for o in self.outcomes))

    @property
    def ok(self) -> bool:
        return self.stopped is None and not any(o.action == "failed" for o in self.outcomes)

    def to_json(self) -> dict[str, Any]:
        return {
            "backup": self.backup,
            "dryRun": self.dry_run,
            "existing": self.existing,
            "counts": self.counts(),
            "outcomes": [vars(o) for o in self.outcomes],
            "notes": self.notes,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
        }


# ---- reading and checking the backup ------------------------------------------------------


def load_items(
    directory: Path,
    manifest: Manifest,
    *,
    namespaces: Sequence[str] = (),
    excluded: Sequence[str] = (),
    sealer: Sealer | None = None,
    no_sealer: str = "no encryption configuration was given",
) -> list[Item]:
    """Every object to restore, checked (BackupError before anything is applied): the files
    whole, the namespaces and exclusions named known, sealed files opened."""
    verify(directory, manifest)
    known_ns = set(manifest.namespaces())
    unknown = [n for n in namespaces if n not in known_ns]
    if unknown:
        raise BackupError(
            f"backup {manifest.name} holds no namespace {', '.join(unknown)} "
            f"(it holds: {', '.join(sorted(known_ns)) or 'none'})"
        )
    skip = _excluded_files(manifest, excluded)
    files = [f for f in manifest.files if f.path not in skip and _wanted(f, namespaces)]
    items: list[Item] = []
    for f in files:
        items.extend(_read(directory, manifest, f, sealer, no_sealer))
    if namespaces:
        # (one file holds every Namespace object)
        items = [i for i in items if not _is_namespace(i.obj) or i.name in namespaces]
        items = _with_needed_crds(items, directory, manifest, skip, sealer, no_sealer)
    return items


def _excluded_files(manifest: Manifest, excluded: Sequence[str]) -> set[str]:
    out: set[str] = set()
    for name in excluded:
        key = name.strip().lower()
        hits = [
            f
            for f in manifest.files
            if key in {f.resource, f.qualified, f.kind.lower(), f"{f.kind.lower()}.{f.group}"}
        ]
        if not hits:
            raise BackupError(f"backup {manifest.name} holds no resource {name!r}")
        out.update(f.path for f in hits)
    return out


def _wanted(f: FileEntry, namespaces: Sequence[str]) -> bool:
    """In a restore of some namespaces: their objects and their Namespace objects (CRDs as
    their custom objects need them, `_with_needed_crds`); otherwise everything."""
    if not namespaces:
        return True
    if f.namespaced:
        return f.namespace in namespaces
    return f.resource == "namespaces" and not f.group


def _read(
    directory: Path, manifest: Manifest, f: FileEntry, sealer: Sealer | None, no_sealer: str
) -> list[Item]:
    data = (directory / f.path).read_bytes()
    if f.sealed:
        if sealer is None:
            raise BackupError(
                f"{f.path} holds {f.count} sealed {f.qualified} and there is no key-encryption "
                f"key to open it ({no_sealer}): give the platform's encryption configuration "
                f"(--encryption-config), or leave them out (--exclude-resource {f.qualified})"
            )
        try:
            data = sealer.open(data, sealed_context(manifest.name, f.path))
        except SealingError as exc:
            raise BackupError(f"{f.path}: {exc}; nothing was applied") from None
    try:
        docs = [d for d in yaml.load_all(data, Loader=_LOADER) if d is not None]
    except yaml.YAMLError as exc:
        raise BackupError(f"{f.path}: not YAML ({exc})") from None
    out = []
    for obj in docs:
        if not isinstance(obj, dict) or not (obj.get("metadata") or {}).get("name"):
            raise BackupError(f"{f.path}: an entry without metadata.name")
        meta = obj["metadata"]
        for key in SERVER_FIELDS:  # (a file edited by hand may have them back)
            meta.pop(key, None)
        if f.namespaced:
            meta["namespace"] = f.namespace
        out.append(Item(obj, f.uids.get(meta["name"], ""), f.qualified))
    if len(out) != f.count:
        raise BackupError(f"{f.path}: {len(out)} objects, the manifest says {f.count}")
    return out


def _with_needed_crds(
    items: list[Item],
    directory: Path,
    manifest: Manifest,
    skip: set[str],
    sealer: Sealer | None,
    no_sealer: str,
) -> list[Item]:
    needed = {i.qualified for i in items if "." in i.qualified}
    for f in manifest.files:
        if f.resource == "customresourcedefinitions" and f.path not in skip:
            crds = _read(directory, manifest, f, sealer, no_sealer)
            items = [i for i in crds if i.name in needed] + items
    return items


# ---- the order ----------------------------------------------------------------------------


def plan(items: Sequence[Item]) -> list[list[Item]]:
    """Steps, in the order they are written: CRDs; Namespaces; then rounds by ownership (an
    object goes one round after the last of its owners the restore writes too), each round's
    objects by kind rank, one step per rank. Objects of one step never own each other. An
    ownership cycle (which Kubernetes forbids, but a file can hold) is cut where it closes."""
    by_uid = {i.uid: i for i in items if i.uid}
    depth: dict[int, int] = {}

    def depth_of(item: Item, visiting: frozenset[int]) -> int:
        if id(item) in depth:
            return depth[id(item)]
        owners = [by_uid[u] for u in item.owner_uids() if u in by_uid]
        d = 0
        for owner in owners:
            if id(owner) not in visiting:
                d = max(d, depth_of(owner, visiting | {id(item)}) + 1)
        depth[id(item)] = d
        return d

    crds = [i for i in items if is_crd(i.obj)]
    namespaces = [i for i in items if _is_namespace(i.obj)]
    rest: dict[tuple[int, int], list[Item]] = {}
    for i in items:
        if not is_crd(i.obj) and not _is_namespace(i.obj):
            key = (depth_of(i, frozenset()), kind_rank(str(i.obj.get("kind"))))
            rest.setdefault(key, []).append(i)
    steps = [s for s in (crds, namespaces) if s]
    return steps + [rest[k] for k in sorted(rest)]


def _is_namespace(obj: Obj) -> bool:
    return obj.get("kind") == "Namespace" and obj.get("apiVersion") == "v1"


# ---- writing ------------------------------------------------------------------------------


class _Stop(Exception):
    """The server stopped answering: the restore stops where it is."""


class _Restore:
    def __init__(
        self,
        kube: KubeClient,
        report: RestoreReport,
        existing: Existing,
        dry_run: bool,
        new_namespaces: set[str],
        new_crds: set[str],
    ) -> None:
        self.kube = kube
        self.report = report
        self.existing = existing
        self.dry_run = dry_run
        self.uids: dict[str, str] = {}  # uid at backup time -> uid on the server now
        self.new_namespaces = new_namespaces  # (dry-run: what only the restore would create)
        self.new_crds = new_crds
        self._present: dict[tuple[str, str, str | None, str], str | None] = {}
        self._limit = asyncio.Semaphore(CONCURRENCY)

    async def step(self, items: list[Item]) -> None:
        async def one(item: Item) -> None:
            async with self._limit:
                try:
                    outcome = await self.write(item)
                except KubeError as exc:
                    outcome = Outcome("failed", describe(item.obj), exc.message or str(exc))
                except Unreachable as exc:
                    raise _Stop(str(exc)) from None
                self.report.outcomes.append(outcome)

        try:
            async with asyncio.TaskGroup() as group:
                for i in items:
                    group.create_task(one(i))
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None

    async def write(self, item: Item) -> Outcome:
        obj, name = item.obj, describe(item.obj)
        would = "would " if self.dry_run else ""
        res = await self.kube.resource(str(obj.get("apiVersion")), str(obj.get("kind")))
        if res is None:
            if self.dry_run and item.qualified in self.new_crds:
                self.uids[item.uid] = item.uid
                return Outcome(f"{would}create", name, "not checked: its CRD is restored first")
            return Outcome(
                "failed", name, f"the server serves no {obj.get('kind')} in {obj.get('apiVersion')}"
            )
        body = await self.remap_owners(item)
        try:
            out = await self.kube.create(res, body, dry_run=self.dry_run)
            action, message = f"{would}create", ""
        except KubeError as exc:
            if exc.code == 404 and self.dry_run and item.namespace in self.new_namespaces:
                self.uids[item.uid] = item.uid
                why = "not checked: its namespace is restored first"
                return Outcome(f"{would}create", name, why)
            if exc.code != 409 or exc.reason != "AlreadyExists":
                raise
            live = await self.kube.get(res, item.namespace, item.name)
            if live is not None and (live.get("metadata") or {}).get("deletionTimestamp"):
                # its dependents must not be pointed at it: the collector would take them
                return Outcome(
                    "failed", name, "exists but is being deleted: restore it once it is gone"
                )
            if self.existing == "skip":
                out, action, message = live or {}, f"{would}skip", "exists"
            else:
                out = await self.kube.apply(res, body, dry_run=self.dry_run)
                action, message = f"{would}overwrite", ""
        uid = item.uid if self.dry_run else (out.get("metadata") or {}).get("uid")
        if item.uid and uid:
            self.uids[item.uid] = str(uid)
        return Outcome(_past(action), name, message)

    async def remap_owners(self, item: Item) -> Obj:
        """The object with each owner reference pointing at its owner as the server has it
        now; references to owners neither restored nor present dropped (and noted)."""
        body = copy.deepcopy(item.obj)
        refs = body["metadata"].get("ownerReferences") or []
        kept = []
        for ref in refs:
            uid = self.uids.get(str(ref.get("uid")))
            if uid is None:
                uid = await self.present(ref, item.namespace)
            if uid is None:
                self.report.notes.append(
                    f"{describe(item.obj)}: its owner {ref.get('kind')}/{ref.get('name')} was "
                    "not restored and does not exist: the reference is dropped (the object is "
                    "kept, without that owner)"
                )
                continue
            kept.append({**ref, "uid": uid})
        if refs:
            body["metadata"]["ownerReferences"] = kept
            if not kept:
                del body["metadata"]["ownerReferences"]
        return body

    async def present(self, ref: Obj, namespace: str | None) -> str | None:
        """The uid of the object a reference names, as it exists now (None: it does not, or
        its kind is not served)."""
        key = (str(ref.get("apiVersion")), str(ref.get("kind")), namespace, str(ref.get("name")))
        if key not in self._present:
            res = await self.kube.resource(key[0], key[1])
            live = None
            if res is not None:
                live = await self.kube.get(res, namespace if res.namespaced else None, key[3])
            meta = (live or {}).get("metadata", {})
            # an owner being deleted is no owner: dependents pointed at it would be collected
            self._present[key] = None if meta.get("deletionTimestamp") else meta.get("uid")
        return self._present[key]

    async def wait_established(self, crds: list[Item], timeout: float) -> None:
        """Until every CRD written is Established (its kinds served), then forget discovery."""
        res = await self.kube.resource("apiextensions.k8s.io/v1", "CustomResourceDefinition")
        if res is None or not crds:
            return
        deadline = time.monotonic() + timeout
        for crd in crds:
            while True:
                live = await self.kube.get(res, None, crd.name)
                if live is not None and established(live):
                    break
                if time.monotonic() > deadline:
                    self.report.notes.append(
                        f"CustomResourceDefinition {crd.name} was not Established within "
                        f"{timeout:.0f}s: its objects may fail"
                    )
                    break
                await asyncio.sleep(0.1)
            spec = crd.obj.get("spec") or {}
            for v in spec.get("versions") or ():
                self.kube.forget(f"{spec.get('group')}/{v.get('name')}")


def _past(action: str) -> str:
    """`create` -> `created`, `would skip` -> `would skip` (a dry-run speaks of the future)."""
    if action.startswith("would "):
        return action
    return {"create": "created", "skip": "skipped", "overwrite": "overwritten"}[action]


async def restore_backup(
    kube: KubeClient,
    directory: Path,
    *,
    namespaces: Sequence[str] = (),
    excluded: Sequence[str] = (),
    existing: Existing = "skip",
    dry_run: bool = False,
    sealer: Sealer | None = None,
    no_sealer: str = "no encryption configuration was given",
    progress: Progress | None = None,
    crd_timeout: float = 30.0,
) -> RestoreReport:
    """Restore the backup at `directory` (see the module's description). BackupError: refused,
    nothing applied. Otherwise the report says what became of every object."""
    say = progress or (lambda _: None)
    if existing not in ("skip", "overwrite"):
        raise BackupError(f"existing: skip or overwrite, not {existing!r}")
    started = time.monotonic()
    manifest = read_manifest(directory)
    items = load_items(
        directory,
        manifest,
        namespaces=namespaces,
        excluded=excluded,
        sealer=sealer,
        no_sealer=no_sealer,
    )
    report = RestoreReport(manifest.name, dry_run, existing)
    new_namespaces = await _check_namespaces(kube, items)
    new_crds = {i.name for i in items if is_crd(i.obj)} if dry_run else set()
    restore = _Restore(kube, report, existing, dry_run, new_namespaces, new_crds)
    steps = plan(items)
    done = 0
    try:
        for step in steps:
            await restore.step(step)
            done += len(step)
            say(f"{done}/{len(items)} objects")
            if not dry_run and is_crd(step[0].obj):
                await restore.wait_established(step, crd_timeout)
    except _Stop as exc:
        report.stopped = (
            f"the server stopped answering after {len(report.outcomes)} of {len(items)} "
            f"objects ({exc}): run the restore again (what exists is skipped or overwritten)"
        )
    except Unreachable as exc:  # (outside a step: waiting for a CRD)
        report.stopped = f"the server stopped answering ({exc}): run the restore again"
    except KubeError as exc:  # waiting for a CRD: a refusal is a stop, with the report
        report.stopped = f"the server refused a read while waiting for CRDs ({exc})"
    report.seconds = time.monotonic() - started
    return report


async def _check_namespaces(kube: KubeClient, items: list[Item]) -> set[str]:
    """The namespaces to restore that do not exist yet; BackupError when one is terminating
    (objects cannot be created in it, and it would take them with it)."""
    names = {i.namespace for i in items if i.namespace} | {
        i.name for i in items if _is_namespace(i.obj)
    }
    missing: set[str] = set()
    for ns in sorted(names):
        try:
            live = await kube.get(NAMESPACES, None, ns)
        except Unreachable as exc:
            raise BackupError(f"the server does not answer: {exc}") from None
        except KubeError as exc:
            raise BackupError(f"reading namespace {ns}: {exc}; nothing was applied") from None
        if live is None:
            missing.add(ns)
        elif (live.get("metadata") or {}).get("deletionTimestamp"):
            raise BackupError(
                f"namespace {ns} is being deleted (Terminating): restore once it is gone "
                "(nothing was applied)"
            )
    return missing
