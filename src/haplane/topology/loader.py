"""Reading a topology file: YAML -> `Topology`, with errors that name the line and the field.

Layer: model. Reads only the file it is given (or a packaged example).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .model import API_VERSION, Topology


@dataclass(frozen=True)
class SchemaProblem:
    path: str  # e.g. spec.sites[0].zones
    line: int | None  # 1-based line in the file, when known
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '<document>'}: {self.message}"


class TopologyError(Exception):
    """The file cannot be read or does not match the schema (`haplane validate` exit code 2)."""

    def __init__(self, source: str, problems: list[SchemaProblem]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(str(p) for p in problems))


def example_names() -> list[str]:
    files = resources.files("haplane.examples")
    return sorted(p.name.removesuffix(".yaml") for p in files.iterdir() if p.name.endswith(".yaml"))


def example_text(name: str) -> str:
    target = resources.files("haplane.examples").joinpath(f"{name}.yaml")
    if not target.is_file():
        raise TopologyError(
            f"example {name!r}",
            [SchemaProblem("", None, f"no such example; known: {', '.join(example_names())}")],
        )
    return target.read_text(encoding="utf-8")


def load_file(path: str | Path) -> Topology:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(
            str(p), [SchemaProblem("", None, f"cannot read: {exc.strerror}")]
        ) from exc
    return load_text(text, source=str(p))


def load_example(name: str) -> Topology:
    return load_text(example_text(name), source=f"example {name!r}")


def load_text(text: str, source: str = "<text>") -> Topology:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise TopologyError(
            source, [SchemaProblem("", line, f"malformed YAML: {exc.problem or exc}")]
        ) from exc
    except yaml.YAMLError as exc:
        raise TopologyError(source, [SchemaProblem("", None, f"malformed YAML: {exc}")]) from exc
    if not isinstance(data, dict):
        raise TopologyError(
            source,
            [
                SchemaProblem(
                    "", 1, f"expected a mapping with apiVersion: {API_VERSION}, kind: Topology"
                )
            ],
        )
    duplicates = _duplicate_keys(node)
    if duplicates:
        raise TopologyError(source, duplicates)
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        raise TopologyError(source, [_problem(node, err) for err in exc.errors()]) from exc


def _duplicate_keys(node: yaml.Node | None, path: str = "") -> list[SchemaProblem]:
    """A key given twice in one mapping (YAML loaders keep the last one silently: half of
    what was written would be ignored)."""
    out: list[SchemaProblem] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            here = f"{path}.{name}" if path else name
            if name in seen:
                out.append(
                    SchemaProblem(
                        here,
                        key.start_mark.line + 1,
                        f"given twice (first on line {seen[name]}): keep one",
                    )
                )
            else:
                seen[name] = key.start_mark.line + 1
            out += _duplicate_keys(value, here)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _duplicate_keys(item, f"{path}[{i}]")
    return out


def _problem(root: yaml.Node | None, err: Any) -> SchemaProblem:
    loc: tuple[str | int, ...] = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        message = "unknown field; remove it or check its spelling against `haplane schema`"
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "literal_error":
        message = f"{err['msg']} (got {json.dumps(err.get('input'))})"
    else:
        message = f"{err['msg']} (got {json.dumps(err.get('input'), default=str)[:60]})"
    # For a missing field, point at the mapping that should hold it.
    node_loc = loc[:-1] if kind == "missing" else loc
    return SchemaProblem(format_path(loc), _line_of(root, node_loc), message)


def format_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _line_of(node: yaml.Node | None, loc: tuple[str | int, ...]) -> int | None:
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if node is None:
            break
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    # Point at the key: for an unknown field that is the offending line.
                    line = key.start_mark.line + 1
                    child = value
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def json_schema() -> dict[str, Any]:
    schema = Topology.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "haplane Topology"
    return schema
