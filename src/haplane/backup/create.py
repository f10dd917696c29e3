"""`create`: export selected namespaces and resources through the API into a backup directory.

Layer: backup. A client of the platform: lists through the public API (so RBAC decides what
the caller may back up), writes only below the backup directory.

What is taken (`haplane.backup.selection.choose`): every resource the caller names, or every
one that can be listed but Events, Leases and operations; when namespaces are named, only their
objects (cluster-scoped ones only when named with a resource); the Namespace objects of every
namespace whose objects are taken; and the CRDs the custom objects taken need (all CRDs, when
everything is taken). A resource the caller may
not list stops the backup (a backup that is silently missing a kind is worse than none):
exclude it, or back up less. Lists are paged and taken one after another, so a backup is not
one point in time (as Velero's): objects written during it may or may not be in it.

Nothing readable is written for what must stay secret: Secrets, and every resource the
platform's encryption configuration seals at rest, are written sealed (`sealing`), and refused
(nothing written at all) when no key-encryption key can be reached.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from haplane import __version__

from ..kubeclient import PAGE, KubeClient, KubeError, Resource, Unreachable
from .manifest import (
    MANIFEST,
    PARTIAL,
    BackupError,
    FileEntry,
    Manifest,
    write_private,
)
from .sealing import Sealer, SealingError, key_id_of, provider_of
from .selection import choose, status_is_subresource, strip

Obj = dict[str, Any]
Progress = Callable[[str], None]
CRDS = Resource(
    "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", False
)
NAMESPACES = Resource("", "v1", "Namespace", "namespaces", False, subresources=("status",))
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when it is there


def sealed_context(backup: str, path: str) -> bytes:
    """The associated data a sealed file is bound to: its backup and its path there."""
    return f"haplane logical backup {backup}/{path}".encode()


def to_yaml(objects: Sequence[Obj]) -> bytes:
    return yaml.dump_all(
        objects, Dumper=_DUMPER, sort_keys=False, allow_unicode=True, default_flow_style=False
    ).encode()


@dataclass
class _Taken:
    resource: Resource
    namespace: str | None
    objects: list[Obj]  # stripped
    uids: dict[str, str]  # name -> uid
    sealed: bool


Taken = dict[tuple[Resource, str | None], _Taken]


def _file_path(r: Resource, namespace: str | None, sealed: bool) -> str:
    return f"resources/{r.qualified}/{namespace or '_cluster'}.yaml" + (".sealed" if sealed else "")


async def create_backup(
    kube: KubeClient,
    root: Path,
    name: str,
    *,
    namespaces: Sequence[str] = (),
    resources: Sequence[str] = (),
    excluded: Sequence[str] = (),
    sealer: Sealer | None = None,
    no_sealer: str = "no encryption configuration was given",
    progress: Progress | None = None,
) -> tuple[Path, Manifest]:
    """The backup `root/name`, written whole or not at all (BackupError says why). `sealer`:
    the platform's KEK (None: `no_sealer` says why there is none)."""
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise BackupError(f"{name!r} is not a backup name (no '/', no leading '.')")
    _check_free(root / name)
    try:
        source = await _source(kube)
        taken, left_out = await _collect(
            kube, namespaces, resources, excluded, sealer, progress or (lambda _: None)
        )
    except (KubeError, Unreachable) as exc:
        raise BackupError(f"{exc}; nothing was written") from None
    sealed = [t for t in taken.values() if t.sealed]
    if sealed and sealer is None:
        count = sum(len(t.objects) for t in sealed)
        kinds = ", ".join(sorted({t.resource.qualified for t in sealed}))
        raise BackupError(
            f"{count} objects of {kinds} would be backed up, and they are never written in "
            f"plain text, but there is no key-encryption key to seal them with ({no_sealer}): "
            "give the platform's encryption configuration (--encryption-config), or leave "
            "them out (--exclude-resource); nothing was written"
        )
    manifest = Manifest(
        name=name,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        haplane_version=__version__,
        source=source,
        selection={
            "namespaces": list(namespaces),
            "resources": list(resources),
            "excluded": list(excluded),
        },
        files=[],
        left_out=left_out,
    )
    return _write_all(root, manifest, taken, sealer), manifest


async def _collect(
    kube: KubeClient,
    namespaces: Sequence[str],
    resources: Sequence[str],
    excluded: Sequence[str],
    sealer: Sealer | None,
    say: Progress,
) -> tuple[Taken, list[str]]:
    """Everything the selection takes, stripped, by resource and namespace; what was left
    out, and why."""
    chosen, left_out = choose(await kube.preferred_resources(), resources, excluded)
    for asked in namespaces:
        live = await kube.get(NAMESPACES, None, asked)
        if live is None:
            raise BackupError(f"namespace {asked} does not exist; nothing was written")
        if (live.get("metadata") or {}).get("deletionTimestamp"):
            raise BackupError(
                f"namespace {asked} is being deleted: what is left of it is no backup; "
                "nothing was written"
            )
    taken: Taken = {}
    forbidden: list[str] = []
    for r in chosen:
        if not r.namespaced and namespaces and not resources:
            continue  # a namespace backup: cluster-scoped objects only as they are needed
        if r == NAMESPACES and namespaces:
            continue  # the namespaces named are taken below
        scopes: list[str | None] = list(namespaces) if (r.namespaced and namespaces) else [None]
        for ns in scopes:
            try:
                items = await kube.list(r, namespace=ns, page=PAGE)
            except KubeError as exc:
                if exc.code not in (401, 403):
                    raise
                forbidden.append(f"{r.qualified}{f' in {ns}' if ns else ''}: {exc.message}")
                continue
            going = [o for o in items if (o.get("metadata") or {}).get("deletionTimestamp")]
            if going:  # a restore must not bring back what was being deleted
                left_out.append(
                    f"{r.qualified}: {len(going)} being deleted"
                    + (f" in {ns}" if ns else "")
                    + " (not backed up)"
                )
                items = [o for o in items if o not in going]
            _take(taken, r, items, _sealed(r, sealer))
        count = sum(len(t.objects) for t in taken.values() if t.resource == r)
        if count:
            say(f"{r.qualified}: {count}")
    if forbidden:
        raise BackupError(
            "not allowed to list: "
            + "; ".join(forbidden)
            + ": back up less (--namespace, --resource) or leave these out "
            "(--exclude-resource); nothing was written"
        )
    left_out += await _foundation(kube, taken, namespaces, sealer, say)
    return taken, left_out


def _write_all(root: Path, manifest: Manifest, taken: Taken, sealer: Sealer | None) -> Path:
    """Every file, then the manifest, into a partial directory renamed into place at the end:
    the backup is there whole, or not at all."""
    final = root / manifest.name
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = root / f".{manifest.name}{PARTIAL}{secrets.token_hex(4)}"
    partial.mkdir(mode=0o700)
    try:
        for t in sorted(taken.values(), key=lambda t: (t.resource.qualified, t.namespace or "")):
            manifest.files.append(_write(partial, manifest.name, t, sealer, manifest))
        write_private(partial / MANIFEST, _manifest_bytes(manifest))
        os.rename(partial, final)  # (refused if a backup of that name appeared meanwhile)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def _check_free(final: Path) -> None:
    if final.exists():
        raise BackupError(f"backup {final.name} exists already ({final}): choose another name")


def _sealed(r: Resource, sealer: Sealer | None) -> bool:
    if (r.group, r.plural) == ("", "secrets"):
        return True
    return sealer is not None and sealer.seals_at_rest(r.group, r.plural)


def _take(taken: Taken, r: Resource, items: list[Obj], sealed: bool) -> None:
    """`items` added to what is taken, by namespace, stripped as a backup keeps them."""
    drop_status = status_is_subresource(r)
    for obj in items:
        obj.setdefault("apiVersion", r.api_version)
        obj.setdefault("kind", r.kind)
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") if r.namespaced else None
        t = taken.get((r, ns))
        if t is None:
            t = taken[(r, ns)] = _Taken(r, ns, [], {}, sealed)
        t.objects.append(strip(obj, drop_status=drop_status))
        t.uids[meta["name"]] = str(meta.get("uid") or "")


async def _foundation(
    kube: KubeClient,
    taken: Taken,
    namespaces: Sequence[str],
    sealer: Sealer | None,
    say: Progress,
) -> list[str]:
    """The Namespace objects of every namespace taken, and the CRDs of every custom resource
    taken, where the selection did not take them already; what could not be taken, and why."""
    have = {(t.resource, n) for t in taken.values() for n in t.uids}
    wanted_ns = set(namespaces) | {t.namespace for t in taken.values() if t.namespace}
    missing_ns = sorted(n for n in wanted_ns if (NAMESPACES, n) not in have)
    got = [await kube.get(NAMESPACES, None, n) for n in missing_ns]
    _take(taken, NAMESPACES, [o for o in got if o is not None], _sealed(NAMESPACES, sealer))
    custom = {t.resource.qualified for t in taken.values() if t.resource.group}
    if not custom - {n for r, n in have if r == CRDS}:
        return []
    try:
        # one list rather than a get per group resource: discovery does not say which
        # resources a CRD serves
        listed = await kube.list(CRDS, page=PAGE)
    except KubeError as exc:
        if exc.code not in (401, 403):
            raise BackupError(f"listing {CRDS.qualified}: {exc}") from None
        return [
            f"{CRDS.qualified}: not allowed to read them ({exc.message}): the CRDs of the "
            "custom objects backed up are not in the backup; a restore needs them installed"
        ]
    crds = [
        c
        for c in listed
        if c["metadata"]["name"] in custom and (CRDS, c["metadata"]["name"]) not in have
    ]
    _take(taken, CRDS, crds, _sealed(CRDS, sealer))
    if missing_ns or crds:
        say(f"with {len(missing_ns)} namespaces and {len(crds)} CRDs they need")
    return []


def _write(
    directory: Path, name: str, t: _Taken, sealer: Sealer | None, manifest: Manifest
) -> FileEntry:
    path = _file_path(t.resource, t.namespace, t.sealed)
    data = to_yaml(t.objects)
    if t.sealed:
        assert sealer is not None  # (refused before anything was written)
        try:
            data = sealer.seal(data, sealed_context(name, path))
        except SealingError as exc:
            raise BackupError(f"{t.resource.qualified}: {exc}; nothing was written") from None
        manifest.sealing = {"provider": provider_of(data), "keyId": key_id_of(data)}
    digest = write_private(directory / path, data)
    r = t.resource
    return FileEntry(
        path, r.group, r.version, r.plural, r.kind, r.namespaced, t.namespace, len(t.objects),
        digest, t.sealed, t.uids,
    )  # fmt: skip


def _manifest_bytes(manifest: Manifest) -> bytes:
    return (json.dumps(manifest.to_json(), indent=2) + "\n").encode()


async def _source(kube: KubeClient) -> dict[str, Any]:
    """Which cluster this is: its server, kube-system's uid (the usual cluster id), and what
    haplane replicas say of themselves (region, epoch, versions)."""
    source: dict[str, Any] = {"server": kube.server}
    status, ns, headers = await kube.exchange("GET", NAMESPACES.path(None, "kube-system"))
    if status == 200 and isinstance(ns, dict):
        source["clusterUID"] = (ns.get("metadata") or {}).get("uid")
    for header, key in (("X-Haplane-Region", "region"), ("X-Haplane-Epoch", "epoch")):
        if headers.get(header):
            source[key] = headers[header]
    status, version = await kube.request("GET", "/version")
    if status == 200 and isinstance(version, dict):
        source["kubernetesVersion"] = version.get("gitVersion")
        if version.get("haplaneVersion"):
            source["haplaneVersion"] = version["haplaneVersion"]
    return source
