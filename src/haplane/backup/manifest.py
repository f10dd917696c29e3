"""A logical backup on disk: its directory, its manifest, and the checks a restore makes before
it applies anything.

Layer: backup. Reads and writes files only.

A backup is a directory `NAME/` holding `manifest.json` and `resources/<resource>/<namespace or
_cluster>.yaml` (one multi-document YAML file per resource and namespace; `.yaml.sealed` for
the files sealed under the platform's key-encryption key, see `haplane.backup.sealing`). The
manifest names every file with its resource, namespace, object count, sha256 and the original
uid of each object it holds (the files themselves carry no uid: they are manifests a person can
read, and a restore remaps owner references from the manifest's record).

A backup is written into a hidden `.NAME.partial-*` directory beside its final place and renamed
into place once its manifest is written, so `NAME/` is always a whole backup; a crash leaves a
`.partial` directory that `list` reports and that can be deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1  # what this haplane writes, and the newest it reads
MANIFEST = "manifest.json"
API_VERSION = "backup.haplane.dev/v1"
KIND = "LogicalBackup"
PARTIAL = ".partial-"
CHUNK = 1 << 20


class BackupError(Exception):
    """What stops a backup or a restore, said as it is. Raised before anything was written to
    the backup directory (create) or applied to the server (restore)."""


@dataclass
class FileEntry:
    """One file of a backup: the objects of one resource in one namespace (None: cluster-scoped
    objects)."""

    path: str  # relative to the backup directory, with '/'
    group: str
    version: str
    resource: str  # the plural
    kind: str
    namespaced: bool
    namespace: str | None
    count: int
    sha256: str
    sealed: bool
    uids: dict[str, str] = field(default_factory=dict)  # object name -> its uid at backup time

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "apiVersion": self.api_version,
            "resource": self.resource,
            "kind": self.kind,
            "namespaced": self.namespaced,
            "namespace": self.namespace,
            "count": self.count,
            "sha256": self.sha256,
            "sealed": self.sealed,
            "uids": self.uids,
        }

    @classmethod
    def from_json(cls, doc: Any) -> FileEntry:
        group, _, version = str(doc["apiVersion"]).rpartition("/")
        uids = doc.get("uids") or {}
        if not isinstance(uids, dict):
            raise TypeError("uids is not a map")
        return cls(
            path=str(doc["path"]),
            group=group,
            version=version,
            resource=str(doc["resource"]),
            kind=str(doc["kind"]),
            namespaced=bool(doc["namespaced"]),
            namespace=doc.get("namespace"),
            count=int(doc["count"]),
            sha256=str(doc["sha256"]),
            sealed=bool(doc.get("sealed", False)),
            uids={str(k): str(v) for k, v in uids.items()},
        )


@dataclass
class Manifest:
    name: str
    created: str  # RFC 3339, UTC
    haplane_version: str
    source: dict[str, Any]  # server, clusterUID (kube-system's uid), region, epoch, version
    selection: dict[str, Any]  # namespaces, resources, excluded, as asked
    files: list[FileEntry]
    sealing: dict[str, Any] | None = None  # provider and key id of the sealed files
    left_out: list[str] = field(default_factory=list)  # resources not backed up, and why
    format_version: int = FORMAT_VERSION

    def resources(self) -> list[dict[str, Any]]:
        """Per resource: its apiVersion, kind, scope and how many objects the backup holds."""
        out: dict[str, dict[str, Any]] = {}
        for f in self.files:
            entry = out.setdefault(
                f.qualified,
                {
                    "resource": f.qualified,
                    "apiVersion": f.api_version,
                    "kind": f.kind,
                    "namespaced": f.namespaced,
                    "count": 0,
                },
            )
            entry["count"] += f.count
        return list(out.values())

    def namespaces(self) -> list[str]:
        """Every namespace the backup holds objects of, or the Namespace object of."""
        names = {f.namespace for f in self.files if f.namespace}
        for f in self.files:
            if f.resource == "namespaces" and not f.group:
                names.update(f.uids)
        return sorted(names)

    @property
    def objects(self) -> int:
        return sum(f.count for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "formatVersion": self.format_version,
            "name": self.name,
            "created": self.created,
            "haplaneVersion": self.haplane_version,
            "source": self.source,
            "selection": self.selection,
            "resources": self.resources(),
            "leftOut": self.left_out,
            "sealing": self.sealing,
            "files": [f.to_json() for f in self.files],
        }

    @classmethod
    def from_json(cls, doc: Any, where: str) -> Manifest:
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise BackupError(f"{where}: not a haplane logical backup manifest (kind {KIND})")
        version = doc.get("formatVersion")
        if not isinstance(version, int) or version < 1:
            raise BackupError(f"{where}: formatVersion {version!r} is not a format version")
        if version > FORMAT_VERSION:
            raise BackupError(
                f"{where}: written in backup format {version} by haplane "
                f"{doc.get('haplaneVersion', '?')}; this haplane reads format {FORMAT_VERSION} "
                "and older: restore it with a newer haplane"
            )
        try:
            return cls(
                name=str(doc["name"]),
                created=str(doc["created"]),
                haplane_version=str(doc.get("haplaneVersion", "")),
                source=dict(doc.get("source") or {}),
                selection=dict(doc.get("selection") or {}),
                files=[FileEntry.from_json(f) for f in doc["files"]],
                sealing=doc.get("sealing"),
                left_out=[str(x) for x in doc.get("leftOut") or ()],
                format_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackupError(f"{where}: a malformed field ({type(exc).__name__}: {exc})") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: Path) -> Manifest:
    """The manifest of the backup at `directory`; BackupError when there is none, it cannot
    be read, or a newer haplane wrote it."""
    path = directory / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        if not directory.is_dir():
            raise BackupError(f"no backup at {directory}") from None
        raise BackupError(f"{path} is missing: {directory} is not a whole backup") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path}: {exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BackupError(f"{path}: not JSON ({exc})") from None
    return Manifest.from_json(doc, str(path))


def problems(directory: Path, manifest: Manifest) -> list[str]:
    """Every file the manifest names that is missing, unreadable or not what was written
    (its sha256 differs), and every path that would leave the backup directory. Empty: the
    backup is whole."""
    out = []
    root = directory.resolve()
    for f in manifest.files:
        path = (directory / f.path).resolve()
        if not path.is_relative_to(root):
            out.append(f"{f.path}: names a file outside the backup")
            continue
        try:
            digest = sha256_of(path)
        except FileNotFoundError:
            out.append(f"{f.path}: missing")
            continue
        except OSError as exc:
            out.append(f"{f.path}: {exc.strerror or exc}")
            continue
        if digest != f.sha256:
            out.append(
                f"{f.path}: sha256 {digest[:16]}… is not the {f.sha256[:16]}… it was written with "
                "(the file was changed or damaged)"
            )
    return out


def verify(directory: Path, manifest: Manifest) -> None:
    """BackupError naming every problem (`problems`), or nothing: the backup is whole."""
    found = problems(directory, manifest)
    if found:
        raise BackupError(
            f"backup {manifest.name} at {directory} is damaged; nothing was applied: "
            + "; ".join(found)
        )


def write_private(path: Path, data: bytes) -> str:
    """`data` at `path` (mode 0600: a backup holds the platform's data); its sha256."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def list_backups(root: Path) -> list[tuple[str, Manifest | str]]:
    """Every backup under `root`, by name: its manifest, or why it cannot be read (a
    `.partial` directory is a backup that did not finish)."""
    out: list[tuple[str, Manifest | str]] = []
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return out
    for entry in entries:
        if not entry.is_dir():
            continue
        if entry.name.startswith(".") and PARTIAL in entry.name:
            name = entry.name[1:].split(PARTIAL)[0]
            out.append((name, f"did not finish ({entry}): delete it"))
            continue
        try:
            out.append((entry.name, read_manifest(entry)))
        except BackupError as exc:
            out.append((entry.name, str(exc)))
    return out
