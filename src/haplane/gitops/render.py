"""Rendering: a checked-out tree (a directory) turned into the Kubernetes objects it declares.

Layer: sync (haplane.gitops). Imports the standard library and PyYAML; runs `kubectl kustomize`.
Pure: reads files under the given root only, and never contacts a cluster or the network.

`render(root, path, overlay)` reads `root/path`, or `root/path/overlay` with an overlay (which
may be `../x`, as long as the result stays in the root). Refused, as a RenderError: an absolute
path or overlay, one whose `..` leaves the root, one that resolves (through symlinks) outside
the root, and one that is not a directory.

- A directory with a `kustomization.yaml`, `kustomization.yml` or `Kustomization` is built by
  `kubectl kustomize` (kustomize v5), killed after `timeout`. An overlay must have a
  kustomization. kustomize's own load restrictor keeps files to the kustomization's directory
  and below, but not bases: it reads a directory anywhere (`resources: [../../elsewhere]`) and
  fetches remote ones (`https://...`, `github.com/...`, `git@...`, `file://...`). So before it
  runs, the kustomization graph is walked from the directory to render: every entry naming a
  file or directory (`resources`, `bases`, `components`, `generators`, `transformers`,
  `validators`, `crds`, `configurations`, `patches[].path`, `patchesStrategicMerge` files,
  `patchesJson6902[].path`, `replacements[].path`, `openapi.path`, and `files` (after a `key=`),
  `envs` and `env` of `configMapGenerator` and `secretGenerator`) is resolved from its
  kustomization's directory, `..` as kustomize reads it and symlinks followed, and refused if it
  is absolute, remote, or lands outside the root; referenced directories holding a
  kustomization are walked in turn (a cycle is refused, as is nesting deeper than 100). Field
  names match regardless of case, as kustomize's decoder matches them. Helm charts
  (`helmCharts`, `helmChartInflationGenerator`, `helmGlobals`) are refused; a kustomization
  that does not parse, or has a key twice, is refused with its file and line. Inline YAML (in
  `patchesStrategicMerge`, `generators`, `transformers`, `validators`) is not a path.
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

# A kustomization's fields that name other files or directories (see the module docstring).
_BASE, _PLUGIN, _PATCH, _FILE = "base", "plugin", "patch", "file"
_ENTRY_FIELDS = (
    ("resources", _BASE),  # a file, or a directory holding a kustomization
    ("bases", _BASE),
    ("components", _BASE),
    ("generators", _PLUGIN),  # as resources, or inline YAML (a plugin's configuration)
    ("transformers", _PLUGIN),
    ("validators", _PLUGIN),
    ("patchesStrategicMerge", _PATCH),  # a file, or an inline patch
    ("crds", _FILE),
    ("configurations", _FILE),
)
_PATH_ITEM_FIELDS = ("patches", "patchesJson6902", "replacements")  # items with a `path`
_GENERATOR_FIELDS = ("configMapGenerator", "secretGenerator")
_HELM_FIELDS = ("helmCharts", "helmChartInflationGenerator", "helmGlobals")
_MAX_NESTING = 100
# What kustomize may fetch (a superset of what it does): a URL (`https://`, `ssh://`, `file://`,
# `oci://`...), go-getter's `git::`, scp-like `user@host:path`, `github.com/...`, and the `//`
# between a repository and a path in it.
_REMOTE = re.compile(
    r"://|//|git@|github\.com/|^(?:git::|gh:|https?:|github\.com:|[A-Za-z][A-Za-z0-9-]*@)",
    re.IGNORECASE,
)
# The same, at the start of a string only: inline YAML may hold URLs, but never starts with one.
_REMOTE_START = re.compile(
    r"^(?:git::|gh:|https?:|github\.com[/:]|[A-Za-z][A-Za-z0-9+.-]*://|[A-Za-z][A-Za-z0-9-]*@)",
    re.IGNORECASE,
)


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


class _KustomizationLoader(_KubernetesLoader):
    """The Kubernetes loader refusing a key twice in a mapping: which one wins is a reader's
    choice, and the check must read what kustomize reads."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            with contextlib.suppress(TypeError):  # an unhashable key: the constructor says so
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found the key {key!r} twice",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


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
        await asyncio.to_thread(_Kustomizations(real_root).visit, directory)
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


class _Kustomizations:
    """The walk of a kustomization graph before kustomize runs: a RenderError for any entry
    that is remote or reaches outside the root (see the module docstring)."""

    def __init__(self, real_root: Path) -> None:
        self.root = real_root
        self.done: set[Path] = set()
        self.stack: list[Path] = []  # the directories being walked, outermost first

    def shown(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def visit(self, directory: Path, via: tuple[str, str] | None = None) -> None:
        """Checks the kustomization(s) in `directory` (a real path in the root) and every
        directory they reach; `via` is (the referring kustomization file, what refers)."""
        if directory in self.done:
            return
        if via is not None and directory in self.stack:
            file, where = via
            cycle = [*self.stack[self.stack.index(directory) :], directory]
            raise RenderError(
                f"{where} makes a cycle of kustomizations: "
                + " -> ".join(self.shown(d) for d in cycle),
                file=file,
            )
        if via is not None and len(self.stack) >= _MAX_NESTING:
            file, where = via
            raise RenderError(
                f"{where}: kustomizations nest more than {_MAX_NESTING} deep", file=file
            )
        self.stack.append(directory)
        for name in KUSTOMIZATION_FILES:  # kustomize refuses more than one: check them all
            if (directory / name).is_file():
                self.kustomization(directory, directory / name)
        self.stack.pop()
        self.done.add(directory)

    def kustomization(self, directory: Path, file: Path) -> None:
        shown = self.shown(file)
        if not Path(os.path.realpath(file)).is_relative_to(self.root):
            raise RenderError(f"{shown} is a symlink to outside the repository", file=shown)
        try:
            content = file.read_bytes()
        except OSError as exc:
            raise RenderError(f"{shown}: cannot be read: {exc.strerror}", file=shown) from exc
        try:
            document = yaml.load(content, Loader=_KustomizationLoader)
        except yaml.YAMLError as exc:
            line = _yaml_line(exc)
            at = f"line {line}: " if line else ""
            raise RenderError(f"{shown}: {at}{_yaml_problem(exc)}", file=shown, line=line) from exc
        if document is None:
            return
        if not isinstance(document, dict):
            raise RenderError(
                f"{shown}: not a kustomization (a mapping), but {type(document).__name__}",
                file=shown,
            )
        for label, entry, path, kind in _references(document, shown):
            self.reference(directory, shown, f"{shown}: {label} entry {entry!r}", path, kind)

    def reference(self, directory: Path, shown: str, where: str, path: str, kind: str) -> None:
        """Checks one entry, `path` from the kustomization `shown` in `directory`."""
        if not path:  # nothing to read (kustomize ignores or refuses it)
            return
        if kind in (_PLUGIN, _PATCH) and _inline_yaml(path):
            if _REMOTE_START.match(path):
                raise RenderError(f"{where} is remote: {_NO_REMOTE}", file=shown)
            # kustomize takes it for YAML unless a file has that name
            joined = os.path.join(directory, path)
            if not (os.path.lexists(joined) or os.path.lexists(os.path.normpath(joined))):
                return
        if _REMOTE.search(path):
            raise RenderError(f"{where} is remote: {_NO_REMOTE}", file=shown)
        if posixpath.isabs(path):
            raise RenderError(
                f"{where} is an absolute path (entries are relative to their kustomization)",
                file=shown,
            )
        joined = os.path.join(directory, path)
        lexical = os.path.normpath(joined)  # kustomize's reading: `..` before symlinks
        if not Path(lexical).is_relative_to(self.root):
            raise RenderError(f"{where} leaves the repository (through '..')", file=shown)
        real = Path(os.path.realpath(lexical))
        if not (
            real.is_relative_to(self.root)
            and Path(os.path.realpath(joined)).is_relative_to(self.root)  # the system's reading
        ):
            raise RenderError(
                f"{where} resolves outside the repository (through a symlink)", file=shown
            )
        if kind in (_BASE, _PLUGIN) and any(
            (real / name).is_file() for name in KUSTOMIZATION_FILES
        ):
            self.visit(real, (shown, where))


_NO_REMOTE = "remote bases are not supported (the repository must hold what it renders)"


def _references(document: dict[Any, Any], shown: str) -> Iterator[tuple[str, Any, str, str]]:
    """(field, entry, path, kind) for each entry of a kustomization naming a file or a
    directory; `path` is the entry without a generator's `key=`."""
    for field in _HELM_FIELDS:
        if any(_values(document, field)):
            raise RenderError(
                f"{shown}: {field}: helm charts are not supported (render them into the"
                " repository)",
                file=shown,
            )
    for field, kind in _ENTRY_FIELDS:
        for entry in _entries(document, field, shown):
            yield field, entry, _path(shown, field, entry), kind
    for field in _PATH_ITEM_FIELDS:
        for n, item in enumerate(_items(document, field, shown)):
            for entry in _values(item, "path"):
                label = f"{field}[{n}].path"
                yield label, entry, _path(shown, label, entry), _FILE
    for field in _GENERATOR_FIELDS:
        for n, item in enumerate(_items(document, field, shown)):
            label = f"{field}[{n}]"
            for entry in _entries(item, "files", shown, f"{label}.files"):
                path = _path(shown, f"{label}.files", entry)
                key, equals, value = path.partition("=")
                yield f"{label}.files", entry, value if equals else key, _FILE
            for entry in _entries(item, "envs", shown, f"{label}.envs"):
                yield f"{label}.envs", entry, _path(shown, f"{label}.envs", entry), _FILE
            for entry in _values(item, "env"):
                yield f"{label}.env", entry, _path(shown, f"{label}.env", entry), _FILE
    for openapi in _values(document, "openapi"):
        if not isinstance(openapi, dict):
            raise RenderError(f"{shown}: openapi must be a mapping", file=shown)
        for entry in _values(openapi, "path"):
            yield "openapi.path", entry, _path(shown, "openapi.path", entry), _FILE


def _values(mapping: dict[Any, Any], field: str) -> list[Any]:
    """The values of `field` in `mapping`, but null: kustomize's decoder matches a field
    whatever its case (`Resources`, `PATH`), so every spelling counts."""
    folded = field.casefold()
    return [
        value
        for key, value in mapping.items()
        if isinstance(key, str) and key.casefold() == folded and value is not None
    ]


def _entries(mapping: dict[Any, Any], field: str, shown: str, label: str = "") -> list[Any]:
    """The entries of the list `field` (under any spelling)."""
    entries: list[Any] = []
    for value in _values(mapping, field):
        if not isinstance(value, list):
            raise RenderError(f"{shown}: {label or field} must be a list", file=shown)
        entries += value
    return entries


def _items(mapping: dict[Any, Any], field: str, shown: str) -> list[dict[Any, Any]]:
    """The entries of the list of mappings `field`."""
    items = _entries(mapping, field, shown)
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise RenderError(f"{shown}: {field}[{n}] must be a mapping", file=shown)
    return items


def _path(shown: str, label: str, entry: Any) -> str:
    if not isinstance(entry, str) or "\0" in entry:
        raise RenderError(f"{shown}: {label} entry {entry!r:.80} is not a path", file=shown)
    return entry


def _inline_yaml(entry: str) -> bool:
    """Whether kustomize may read `entry` as inline YAML rather than as a path."""
    if "\n" in entry:
        return True
    try:
        return isinstance(yaml.load(entry, Loader=_SafeLoader), (dict, list))
    except yaml.YAMLError:
        return False


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
