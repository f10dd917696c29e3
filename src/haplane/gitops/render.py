"""Rendering: a checked-out tree (a directory) turned into the Kubernetes objects it declares.

Layer: sync (haplane.gitops). Imports the standard library and PyYAML; runs `kubectl kustomize`.
Pure: reads files under the given root and never contacts a cluster (a kustomization's remote
bases, `resources: - https://...`, are fetched by kustomize itself).

`render(root, path, overlay)` reads `root/path`, or `root/path/overlay` with an overlay (which
may be `../x`, as long as the result stays in the root). Refused, as a RenderError: an absolute
path or overlay, one whose `..` leaves the root, one that resolves (through symlinks) outside
the root, and one that is not a directory.

- A directory with a `kustomization.yaml`, `kustomization.yml` or `Kustomization` is built by
  `kubectl kustomize` (kustomize v5, its own load restrictions: files only from the
  kustomization's directory and below, bases as directories), killed after `timeout`. An
  overlay must have a kustomization.
- Any other directory: every `*.yaml`, `*.yml` and `*.json` below it, in the order `kubectl
  apply -R` reads them (by path components, as Go's filepath.Walk), leaving out hidden files
  and directories (a name starting with `.`) and not following symlinked directories; a
  symlinked file must resolve inside the root. YAML may hold several documents; empty ones are
  skipped. Timestamps stay strings, as Kubernetes reads YAML (`2024-01-01` is not a date).
- Either way a `kind: List` (or `...List`) object with `items` stands for its items.

Every object must be a mapping with a string `apiVersion` and `kind`, a non-empty string
`metadata.name`, and a string `metadata.namespace` if it has one (null counts as none). Two
objects with the same `object_key` (API group, kind, namespace, name: the version is not part
of an object's identity) are refused, naming both places. An object without a namespace and one
in `default` are different keys here: which namespace an object lands in is the applier's
business. The objects are returned in source order, as read (not defaulted, not mutated).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import posixpath
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

try:
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # PyYAML built without libyaml: 5-10x slower, same results
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

Obj = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
_MESSAGE_LINES = 3
_MESSAGE_MAX = 600
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_KLOG_HEADER = re.compile(r'[EWIF]\d{4} [\d:.]+\s+\d+ [^\]]+\] (?:"command failed" err=)?')
_ERROR_PREFIX = re.compile(r"^(?:error|Error): ")


class RenderError(Exception):
    """A tree does not render: `file` is the file (or, for kustomize, the directory) relative
    to the repository root, `line` the 1-based line of a YAML or JSON syntax error."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None):
        super().__init__(message)
        self.file = file
        self.line = line


class _KubernetesLoader(_SafeLoader):
    """The safe loader without YAML 1.1 timestamps: Kubernetes keeps `2024-01-01` a string."""


_KubernetesLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
    for first, resolvers in _SafeLoader.yaml_implicit_resolvers.items()
}


def object_key(obj: Obj) -> tuple[str, str, str, str]:
    """(API group, kind, namespace or "", name): what names one object in a cluster. The group
    is apiVersion's part before "/", "" for the core group (`v1`)."""
    group, _, _ = str(obj["apiVersion"]).rpartition("/")
    metadata = obj["metadata"]
    return group, str(obj["kind"]), metadata.get("namespace") or "", str(metadata["name"])


async def render(
    root: Path, path: str, overlay: str | None = None, timeout: float = 60.0
) -> list[Obj]:
    """The objects `root/path` (or `root/path/overlay`) declares, in source order; see the
    module docstring. Raises RenderError naming the file (and line) at fault."""
    real_root, directory = _directory(Path(root), path, overlay)
    shown = directory.relative_to(real_root).as_posix()
    kustomization = any((directory / name).is_file() for name in KUSTOMIZATION_FILES)
    if overlay is not None and not kustomization:
        raise RenderError(f"overlay {overlay!r} has no kustomization.yaml ({shown})", file=shown)
    if kustomization:
        built = await _kustomize(real_root, directory, timeout)
        documents = await asyncio.to_thread(_kustomize_documents, built, shown)
    else:
        documents = await asyncio.to_thread(_plain_documents, real_root, directory)
    return _checked(documents)


def _directory(root: Path, path: str, overlay: str | None) -> tuple[Path, Path]:
    """(the real root, the real directory to render), or a RenderError saying why not."""
    try:
        real_root = root.resolve(strict=True)
    except OSError as exc:
        raise RenderError(f"repository root {str(root)!r} does not exist: {exc}") from exc
    relative = "."
    for label, value in (("path", path), ("overlay", overlay)):
        if value is None:
            continue
        if posixpath.isabs(value):
            raise RenderError(f"{label} {value!r} must be relative to the repository root")
        relative = posixpath.normpath(posixpath.join(relative, value))
        if relative == ".." or relative.startswith("../"):
            raise RenderError(f"{label} {value!r} leaves the repository (through '..')")
        directory = (real_root / relative).resolve()
        if not directory.is_relative_to(real_root):
            raise RenderError(
                f"{label} {value!r} resolves outside the repository (through a symlink)"
            )
        if not directory.is_dir():
            where = f" under path {path!r}" if label == "overlay" else ""
            raise RenderError(
                f"{label} {value!r}{where} does not exist or is not a directory", file=relative
            )
    return real_root, (real_root / relative).resolve()


async def _kustomize(real_root: Path, directory: Path, timeout: float) -> bytes:
    shown = directory.relative_to(real_root).as_posix()
    kubectl = shutil.which("kubectl") or "/usr/bin/kubectl"
    try:
        proc = await asyncio.create_subprocess_exec(
            kubectl,
            "kustomize",
            str(directory),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "LC_ALL": "C"},
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise RenderError(
            f"{shown}: kubectl (for kustomize) is not installed ({kubectl})", file=shown
        ) from exc
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        raise RenderError(
            f"{shown}: kustomize did not finish in {timeout:g} s (stopped)", file=shown
        ) from None
    finally:
        if proc.returncode is None:
            await asyncio.shield(_kill(proc))
    if proc.returncode != 0:
        said = _trimmed(err.decode(errors="replace").replace(f"{real_root}/", ""))
        raise RenderError(f"{shown}: kustomize failed: {said}", file=shown)
    return out


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


def _trimmed(message: str) -> str:
    """kubectl's message, its first lines: without klog's header (`E1206 02:38:34.66 2797
    run.go:72] "command failed" err="..."`) or an `error: ` prefix."""
    lines = []
    for raw in message.splitlines():
        line = raw.strip()
        header = _KLOG_HEADER.match(line)
        if header:
            line = line[header.end() :]
            if line.startswith('"') and line.endswith('"'):
                with contextlib.suppress(ValueError):  # a Go-quoted string: JSON's escapes
                    line = str(json.loads(line))
        line = _ERROR_PREFIX.sub("", line).strip()
        if line:
            lines.append(line)
    text = " / ".join(lines[:_MESSAGE_LINES]) or "(no message)"
    return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 3] + "..."


def _kustomize_documents(built: bytes, shown: str) -> list[tuple[str, str, Any]]:
    """(file, where, document) for each document kustomize built."""
    where = f"{shown} (kustomize output"
    try:
        loaded = list(yaml.load_all(built, Loader=_KubernetesLoader))
    except yaml.YAMLError as exc:  # kustomize writes what it parsed: not expected
        raise RenderError(f"{where}): {_yaml_problem(exc)}", file=shown) from exc
    return [(shown, f"{where}, document {n})", doc) for n, doc in enumerate(loaded, 1)]


def _plain_documents(real_root: Path, directory: Path) -> list[tuple[str, str, Any]]:
    """(file, where, document) for each document of each manifest file below `directory`."""
    documents: list[tuple[str, str, Any]] = []
    for file in _manifest_files(directory):
        shown = file.relative_to(real_root).as_posix()
        if file.is_symlink() and not file.resolve().is_relative_to(real_root):
            raise RenderError(f"{shown} is a symlink to outside the repository", file=shown)
        try:
            content = file.read_bytes()
        except OSError as exc:
            raise RenderError(f"{shown}: cannot be read: {exc.strerror}", file=shown) from exc
        if file.suffix == ".json":
            if not content.strip():
                continue
            try:
                loaded = [json.loads(content)]
            except json.JSONDecodeError as exc:
                raise RenderError(
                    f"{shown}: line {exc.lineno}: {exc.msg}", file=shown, line=exc.lineno
                ) from exc
            except UnicodeDecodeError as exc:
                raise RenderError(f"{shown}: not UTF-8 text: {exc.reason}", file=shown) from exc
        else:
            try:
                loaded = list(yaml.load_all(content, Loader=_KubernetesLoader))
            except yaml.YAMLError as exc:
                line = _yaml_line(exc)
                at = f"line {line}: " if line else ""
                raise RenderError(
                    f"{shown}: {at}{_yaml_problem(exc)}", file=shown, line=line
                ) from exc
        several = len(loaded) > 1
        for n, doc in enumerate(loaded, 1):
            documents.append((shown, f"{shown} (document {n})" if several else shown, doc))
    return documents


def _manifest_files(directory: Path) -> list[Path]:
    found: list[Path] = []
    for parent, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += (
            Path(parent, name)
            for name in filenames
            if not name.startswith(".") and name.endswith(MANIFEST_SUFFIXES)
        )
    # filepath.Walk's order: by path components, so `a/x.yaml` comes before `a.yaml`
    return sorted(found, key=lambda file: file.relative_to(directory).parts)


def _yaml_line(exc: yaml.YAMLError) -> int | None:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [exc.problem or "invalid YAML"]
        if exc.context:
            parts.append(f"({exc.context})")
        return " ".join(parts)
    return str(exc).splitlines()[0] if str(exc) else "invalid YAML"


def _checked(documents: list[tuple[str, str, Any]]) -> list[Obj]:
    """The objects of the documents (Lists expanded), each checked, no two with one key."""
    objects: list[Obj] = []
    seen: dict[tuple[str, str, str, str], str] = {}
    for file, where, document in documents:
        if document is None:
            continue
        for place, obj in _expanded(where, document):
            problem = _problem(obj)
            if problem:
                raise RenderError(f"{place}: {problem}", file=file)
            key = object_key(obj)
            if key in seen:
                raise RenderError(
                    f"{_describe(key)} is declared twice: in {seen[key]} and in {place}",
                    file=file,
                )
            seen[key] = place
            objects.append(obj)
    return objects


def _expanded(where: str, document: Any) -> Iterator[tuple[str, Any]]:
    if _is_list(document):
        for n, item in enumerate(document["items"], 1):
            yield from _expanded(f"{where}, item {n}", item)
    else:
        yield where, document


def _is_list(document: Any) -> bool:
    return (
        isinstance(document, dict)
        and isinstance(document.get("kind"), str)
        and document["kind"].endswith("List")
        and isinstance(document.get("items"), list)
    )


def _problem(obj: Any) -> str | None:
    """What makes `obj` not a Kubernetes object, or None."""
    if not isinstance(obj, dict):
        return f"not a Kubernetes object (a mapping), but {type(obj).__name__} {obj!r:.60}"
    for field in ("apiVersion", "kind"):
        if not isinstance(obj.get(field), str) or not obj[field]:
            return f"{field} is missing (or not a string)"
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return f"{obj['kind']}: metadata is missing (or not a mapping)"
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        return f"{obj['kind']}: metadata.name is missing (or not a non-empty string)"
    namespace = metadata.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        return f"{obj['kind']} {name}: metadata.namespace must be a string, not {namespace!r}"
    return None


def _describe(key: tuple[str, str, str, str]) -> str:
    group, kind, namespace, name = key
    kind = f"{kind}.{group}" if group else kind
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
