"""Runbooks as code: a YAML file (`kind: Runbook`) of steps that check, act, wait and assert
against the running topology. This module reads and checks one; `runbook_run` runs it.

Layer: run (local). Pure but for reading files: every expression is compiled here (CEL,
`haplane.cel`), every parameter reference and template checked, so a runbook with a mistake
is refused, with the field, its line and the expression's position, before anything runs.

    apiVersion: haplane.dev/v1alpha1
    kind: Runbook
    metadata: {name: etcd-member-lost, description: ...}
    spec:
      parameters: [{name, description, required, default, type, pattern, example}]
      triggers:   [{type: manual | region-down | quorum-lost | snapshot-failed
                          | replication-lag-over, scope, limitSeconds}]
      steps:      [{name, kind: check | action | wait | assert, description, when, ...}]

Step kinds (`when`, a CEL bool, skips a step when false; `capture` names CEL values kept in
`vars` for later steps and in the report):
- `check`: `expr`, a steady-state hypothesis (Chaos Toolkit's term) that must hold before
  the runbook goes on; `message` says what to do when it does not;
- `action`: `run`, a haplane command as an argv list (`[haplane, member, replace,
  "{{member}}"]`; no shell), `timeout`, `risky`, and `undo` (another command), run when a
  later step fails;
- `wait`: `until`, polled against fresh status every `interval` until it holds or `timeout`;
- `assert`: `expr`, which must hold now (after the actions), else the run fails.
Expressions see `status` (`haplane status --json`), `params` (typed) and `vars` (captures).
Templates `{{name}}` (a parameter) go into commands and messages, as whole tokens or inside
them. Event triggers are declared and checked here; the supervisor fires them
(`runbook_triggers`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from haplane.cel import CompileError, Environment, Program
from haplane.topology.loader import (
    SchemaProblem,
    _duplicate_keys,
    _line_of,
    _problem,
    format_path,
)
from haplane.topology.model import duration_seconds

API_VERSION = "haplane.dev/v1alpha1"
VARIABLES = ("status", "params", "vars")
STEP_KINDS = ("check", "action", "wait", "assert")
EVENT_TRIGGERS = ("region-down", "quorum-lost", "snapshot-failed", "replication-lag-over")
DEFAULT_ACTION_TIMEOUT = 600.0
DEFAULT_WAIT_TIMEOUT = 60.0
DEFAULT_INTERVAL = 1.0

_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_REFERENCE = re.compile(r"\b(params|vars)\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")
_DURATION_TEXT = r"^\d+(s|m|h)$"

Seconds = Annotated[float, Field(gt=0)] | Annotated[str, Field(pattern=_DURATION_TEXT)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class _Metadata(_Model):
    name: Annotated[str, Field(pattern=_NAME, max_length=63)]
    description: str = ""


class _Parameter(_Model):
    name: Annotated[str, Field(pattern=_IDENT)]
    description: str = ""
    required: bool = False
    default: str | int | float | bool | None = None
    type: Literal["string", "int", "number", "bool"] = "string"
    pattern: str | None = None
    example: str | int | float | None = None


class _Trigger(_Model):
    type: Literal["manual", "region-down", "quorum-lost", "snapshot-failed", "replication-lag-over"]
    scope: str | None = None  # a region's name, "region" (any), "global"
    limit_seconds: Annotated[float, Field(gt=0)] | None = None
    description: str = ""


class _Command(_Model):
    run: Annotated[list[str], Field(min_length=2)]
    timeout: Seconds = DEFAULT_ACTION_TIMEOUT


class _Step(_Model):
    name: Annotated[str, Field(pattern=_NAME, max_length=63)]
    kind: Literal["check", "action", "wait", "assert"]
    description: str = ""
    when: str | None = None
    expr: str | None = None
    until: str | None = None
    message: str = ""
    run: Annotated[list[str], Field(min_length=2)] | None = None
    undo: _Command | None = None
    risky: bool = False
    timeout: Seconds | None = None
    interval: Annotated[float, Field(gt=0)] | None = None
    capture: dict[Annotated[str, Field(pattern=_IDENT)], str] = Field(default_factory=dict)


class _Spec(_Model):
    parameters: list[_Parameter] = Field(default_factory=list)
    triggers: list[_Trigger] = Field(default_factory=lambda: [_Trigger(type="manual")])
    steps: Annotated[list[_Step], Field(min_length=1)]


class _Document(_Model):
    api_version: Literal["haplane.dev/v1alpha1"]
    kind: Literal["Runbook"]
    metadata: _Metadata
    spec: _Spec


# ---- the checked runbook -----------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    name: str
    description: str
    required: bool
    default: Any
    type: str
    pattern: str | None
    example: str | None

    def convert(self, text: str) -> Any:
        """A value given as text (`-p name=text`) in this parameter's type; ValueError says
        why not."""
        if self.pattern is not None and not re.fullmatch(self.pattern, text):
            raise ValueError(f"{text!r} does not match {self.pattern}")
        if self.type == "int":
            return int(text)
        if self.type == "number":
            return float(text)
        if self.type == "bool":
            if text.lower() in ("true", "yes", "1"):
                return True
            if text.lower() in ("false", "no", "0"):
                return False
            raise ValueError(f"{text!r} is not true or false")
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "required": self.required,
            "default": self.default,
            "type": self.type,
            **({"pattern": self.pattern} if self.pattern else {}),
            **({"example": self.example} if self.example else {}),
        }


@dataclass(frozen=True)
class Trigger:
    type: str
    scope: str | None = None
    limit_seconds: float | None = None
    description: str = ""

    @property
    def event(self) -> bool:
        return self.type != "manual"

    def __str__(self) -> str:
        extra = [f"scope {self.scope}"] if self.scope else []
        if self.limit_seconds is not None:
            extra.append(f"over {self.limit_seconds:g} s")
        return self.type + (f" ({', '.join(extra)})" if extra else "")


# Who may have a runbook's command run for them (any one role; haplane:platform-admin may
# have anything run): the separation of duties of `haplane.auth.rbac`'s operator roles, by
# the haplane command an action runs. Commands not listed need haplane:platform-admin.
_ETCD, _DR, _GATE = "haplane:etcd-operator", "haplane:dr-operator", "haplane:gate-operator"
COMMAND_ROLES: dict[str, tuple[str, ...]] = {
    "status": (),
    "validate": (),
    "analyse": (),
    "member": (_ETCD,),
    "snapshot": (_ETCD, _DR),
    "restore": (_ETCD, _DR),
    "backup": (_DR,),
    "failover": (_DR,),
    "failback": (_DR,),
    "drill": (_DR,),
    "gc": (_DR,),
    "maintenance": (_GATE, _ETCD),
}
ADMIN_ROLE = "haplane:platform-admin"


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]  # as written, starting with "haplane"; templates unexpanded
    timeout: float

    def expand(self, params: Mapping[str, Any]) -> list[str]:
        return [expand(token, params) for token in self.argv]

    @property
    def roles(self) -> tuple[str, ...]:
        """Who may have it run (`COMMAND_ROLES`; empty: anyone who may run the runbook)."""
        word = self.argv[1] if len(self.argv) > 1 else ""
        return COMMAND_ROLES.get(word, (ADMIN_ROLE,))


@dataclass(frozen=True)
class Step:
    name: str
    kind: str
    description: str = ""
    when: Program | None = None
    expr: Program | None = None  # check, assert: the hypothesis; wait: `until`
    message: str = ""
    command: Command | None = None  # action
    undo: Command | None = None
    risky: bool = False
    timeout: float = 0.0  # action, wait
    interval: float = DEFAULT_INTERVAL  # wait
    capture: dict[str, Program] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.description:
            doc["description"] = self.description
        if self.when is not None:
            doc["when"] = self.when.source
        if self.expr is not None:
            doc["until" if self.kind == "wait" else "expr"] = self.expr.source
        if self.command is not None:
            doc["run"] = list(self.command.argv)
            doc["risky"] = self.risky
        if self.undo is not None:
            doc["undo"] = list(self.undo.argv)
        if self.kind in ("action", "wait"):
            doc["timeout"] = self.timeout
        if self.kind == "wait":
            doc["interval"] = self.interval
        if self.capture:
            doc["capture"] = {k: p.source for k, p in self.capture.items()}
        if self.message:
            doc["message"] = self.message
        return doc


@dataclass(frozen=True)
class Runbook:
    name: str
    description: str
    parameters: tuple[Parameter, ...]
    triggers: tuple[Trigger, ...]
    steps: tuple[Step, ...]
    source: str  # "shipped" or the file's path
    digest: str = ""  # sha256 of the file's text: what an approval of a run approved

    @property
    def risky_steps(self) -> list[str]:
        return [s.name for s in self.steps if s.risky]

    @property
    def acts(self) -> bool:
        """Whether any step is an action (without one, a runbook changes nothing: a
        diagnosis, run without the run lock, and at once by an event)."""
        return any(step.kind == "action" for step in self.steps)

    def refusal(self, roles: set[str]) -> str | None:
        """Why someone holding `roles` ("*": every one) may not have this runbook run for
        them: the first action (or undo) whose command needs a role they lack; None: they
        may."""
        if roles & {"*", ADMIN_ROLE}:
            return None
        for step in self.steps:
            for command in (step.command, step.undo):
                if command is None or not command.roles or roles & set(command.roles):
                    continue
                return (
                    f"step {step.name} runs `{' '.join(command.argv[:2])} ...`, which needs "
                    f"{' or '.join(command.roles)} (or {ADMIN_ROLE})"
                )
        return None

    def bind(self, given: Mapping[str, str]) -> dict[str, Any]:
        """The parameters' values: `given` (text, from `-p name=value`) converted, defaults
        for the rest. RunbookError (every problem at once) for an unknown name, a missing
        required one or a value of the wrong shape; also for a value that would be read as
        an option where a command takes it as a whole argument."""
        declared = {p.name: p for p in self.parameters}
        problems = [
            f"unknown parameter {name!r} (parameters: {', '.join(declared) or 'none'})"
            for name in given
            if name not in declared
        ]
        values: dict[str, Any] = {}
        for p in self.parameters:
            if p.name in given:
                try:
                    values[p.name] = p.convert(given[p.name])
                except ValueError as exc:
                    problems.append(f"parameter {p.name} ({p.type}): {exc}")
            elif p.default is not None:
                values[p.name] = p.default
            elif p.required:
                problems.append(f"parameter {p.name} is required: -p {p.name}=VALUE")
        for step in self.steps:
            for command in (step.command, step.undo):
                if command is None:
                    continue
                for token in command.argv:
                    m = TEMPLATE.fullmatch(token)
                    if m and str(values.get(m.group(1), "")).startswith("-"):
                        problems.append(
                            f"parameter {m.group(1)}: {values[m.group(1)]!r} would be read "
                            f"as an option by `{' '.join(command.argv)}`"
                        )
        for name in sorted(_templates(self)):
            optional = name in declared and not declared[name].required
            if optional and name not in values and name not in given:
                problems.append(f"parameter {name} has no value and a command uses it")
        if problems:
            raise RunbookError(
                self.name, [SchemaProblem("params", None, p) for p in dict.fromkeys(problems)]
            )
        return values

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "sha256": self.digest,
            "parameters": [p.as_dict() for p in self.parameters],
            "triggers": [
                {"type": t.type, "scope": t.scope, "limitSeconds": t.limit_seconds}
                for t in self.triggers
            ],
            "steps": [s.as_dict() for s in self.steps],
        }


class RunbookError(Exception):
    """A runbook that cannot be run as written (or with these parameters): each problem with
    its field and line."""

    def __init__(self, source: str, problems: Sequence[SchemaProblem]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(str(p) for p in self.problems))


def expand(text: str, params: Mapping[str, Any]) -> str:
    """`{{name}}` replaced by the parameter's value (a bool as true/false)."""

    def value(m: re.Match[str]) -> str:
        if m.group(1) not in params:  # (a message naming a parameter given no value)
            return m.group(0)
        return _text(params[m.group(1)])

    return TEMPLATE.sub(value, text)


def _templates(book: Runbook) -> set[str]:
    names = set()
    for step in book.steps:
        for command in (step.command, step.undo):
            for token in command.argv if command else ():
                names.update(TEMPLATE.findall(token))
    return names


# ---- loading ------------------------------------------------------------------------------


_ENV: Environment | None = None


def environment() -> Environment:
    """The CEL environment of runbook expressions (made once: it costs milliseconds)."""
    global _ENV
    if _ENV is None:
        _ENV = Environment(VARIABLES)
    return _ENV


def load_text(text: str, source: str) -> Runbook:
    """Parse and check a runbook: RunbookError lists every problem found."""
    loader = yaml.SafeLoader(text)
    try:  # parsed once: the nodes (for lines) and the data made from them
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        said = getattr(exc, "problem", None) or exc
        problem = SchemaProblem("", mark.line + 1 if mark else None, f"malformed YAML: {said}")
        raise RunbookError(source, [problem]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        shape = f"expected a mapping with apiVersion: {API_VERSION}, kind: Runbook"
        raise RunbookError(source, [SchemaProblem("", 1, shape)])
    problems = _duplicate_keys(node)
    try:
        doc = _Document.model_validate(data)
    except ValidationError as exc:
        problems += [_problem(node, err) for err in exc.errors()]
    if problems:
        raise RunbookError(source, problems)
    book = _Checker(doc, node, source).runbook()
    return replace(book, digest=hashlib.sha256(text.encode()).hexdigest())


def load_file(path: str | Path) -> Runbook:
    try:
        return load_text(Path(path).read_text(encoding="utf-8"), str(path))
    except OSError as exc:
        problem = SchemaProblem("", None, f"cannot read: {exc.strerror}")
        raise RunbookError(str(path), [problem]) from None


def shipped_names() -> list[str]:
    """The runbooks haplane ships (`haplane/runbooks/NAME.yaml`)."""
    return sorted(
        p.name.removesuffix(".yaml")
        for p in resources.files("haplane.runbooks").iterdir()
        if p.name.endswith(".yaml")
    )


def load_shipped(name: str) -> Runbook:
    target = resources.files("haplane.runbooks").joinpath(f"{name}.yaml")
    if not target.is_file():
        raise KeyError(f"no runbook {name!r}")
    return load_text(target.read_text(encoding="utf-8"), "shipped")


def user_files(state_root: Path) -> list[Path]:
    """The operator's own runbooks: `STATE/runbooks/*.yaml`."""
    return sorted((state_root / "runbooks").glob("*.yaml"))


@dataclass(frozen=True)
class Listed:
    """One runbook found: loaded, or why it could not be."""

    name: str
    source: str
    book: Runbook | None = None
    error: RunbookError | None = None


def catalog(state_root: Path, files: Sequence[Path] = ()) -> list[Listed]:
    """Every runbook: the shipped ones, then `STATE/runbooks/*.yaml`, then `files`; a later
    one of the same name takes the place of an earlier one (`find` picks the same)."""
    found: dict[str, Listed] = {}
    for name in shipped_names():
        try:
            found[name] = Listed(name, "shipped", load_shipped(name))
        except RunbookError as exc:  # (a shipped runbook is tested: never here)
            found[name] = Listed(name, "shipped", error=exc)
    own = user_files(state_root)
    for path in [*own, *files]:
        try:
            book = _load_own(path) if path in own else load_file(path)
            found[book.name] = Listed(book.name, str(path), book)
        except RunbookError as exc:
            found[f"{path.stem} ({path})"] = Listed(path.stem, str(path), error=exc)
    return list(found.values())


def _load_own(path: Path) -> Runbook:
    """A runbook of `STATE/runbooks/`, whose file is named after it (found by that name)."""
    book = load_file(path)
    if book.name != path.stem:
        problem = f"is {book.name!r}: name the file {book.name}.yaml (found by its file name)"
        raise RunbookError(str(path), [SchemaProblem("metadata.name", None, problem)])
    return book


def find(name: str | None, state_root: Path, files: Sequence[Path] = ()) -> Runbook:
    """The runbook `name` names: among `files` (any one when `name` is None and there is one
    file), else `STATE/runbooks/NAME.yaml`, else the shipped one. KeyError when none is;
    RunbookError when the one found is not valid."""
    books = [load_file(f) for f in files]
    if name is None:
        if len(books) == 1:
            return books[0]
        raise KeyError("name a runbook (or give one --file)")
    for book in reversed(books):
        if book.name == name:
            return book
    own = state_root / "runbooks" / f"{name}.yaml"
    if own.is_file():
        return _load_own(own)
    if name in shipped_names():
        return load_shipped(name)
    known = sorted({*shipped_names(), *(p.stem for p in user_files(state_root))})
    raise KeyError(f"no runbook {name!r}; known: {', '.join(known)}")


class _Checker:
    """What the schema cannot say: fields that belong to another kind of step, expressions
    that do not compile, references to parameters or captures that do not exist."""

    def __init__(self, doc: _Document, node: yaml.Node | None, source: str) -> None:
        self.doc, self.node, self.source = doc, node, source
        self.problems: list[SchemaProblem] = []

    def problem(self, loc: tuple[str | int, ...], message: str) -> None:
        self.problems.append(SchemaProblem(format_path(loc), _line_of(self.node, loc), message))

    def runbook(self) -> Runbook:
        spec = self.doc.spec
        params = self._parameters(spec.parameters)
        triggers = self._triggers(spec.triggers)
        steps = self._steps(spec.steps, {p.name for p in params})
        if self.problems:
            raise RunbookError(self.source, self.problems)
        return Runbook(
            self.doc.metadata.name,
            " ".join(self.doc.metadata.description.split()),
            tuple(params),
            tuple(triggers),
            tuple(steps),
            self.source,
        )

    def _parameters(self, specs: list[_Parameter]) -> list[Parameter]:
        out, seen = [], set()
        for i, p in enumerate(specs):
            loc: tuple[str | int, ...] = ("spec", "parameters", i)
            if p.name in seen:
                self.problem((*loc, "name"), f"parameter {p.name!r} declared twice")
            seen.add(p.name)
            if p.pattern is not None:
                try:
                    re.compile(p.pattern)
                except re.error as exc:
                    self.problem((*loc, "pattern"), f"not a regular expression: {exc}")
                    continue
            example = None if p.example is None else str(p.example)
            param = Parameter(
                p.name, p.description, p.required, p.default, p.type, p.pattern, example
            )
            if p.default is not None:
                try:
                    param = replace(param, default=param.convert(_text(p.default)))
                except ValueError as exc:
                    self.problem((*loc, "default"), f"not a valid {p.type}: {exc}")
            if p.required and p.default is not None:
                self.problem((*loc, "default"), "a required parameter has no default")
            out.append(param)
        return out

    def _triggers(self, specs: list[_Trigger]) -> list[Trigger]:
        for i, t in enumerate(specs):
            if (t.type == "replication-lag-over") != (t.limit_seconds is not None):
                self.problem(
                    ("spec", "triggers", i, "limitSeconds"),
                    "replication-lag-over needs limitSeconds (and no other trigger takes it)",
                )
        return [Trigger(t.type, t.scope, t.limit_seconds, t.description) for t in specs]

    def _steps(self, specs: list[_Step], params: set[str]) -> list[Step]:
        out: list[Step] = []
        seen: set[str] = set()
        captured: set[str] = set()
        for i, s in enumerate(specs):
            loc: tuple[str | int, ...] = ("spec", "steps", i)
            if s.name in seen:
                self.problem((*loc, "name"), f"step {s.name!r} given twice: names are unique")
            seen.add(s.name)
            wanted = {"check": "expr", "assert": "expr", "wait": "until", "action": "run"}[s.kind]
            allowed = {
                "check": {"expr", "capture"},
                "assert": {"expr", "capture"},
                "wait": {"until", "timeout", "interval", "capture"},
                "action": {"run", "undo", "risky", "timeout"},
            }[s.kind]
            given = s.model_fields_set - {"name", "kind", "description", "when", "message"}
            if wanted not in given:
                self.problem(loc, f"a {s.kind} step needs `{wanted}`")
            for extra in sorted(given - allowed):
                self.problem(
                    (*loc, to_camel(extra)),
                    f"`{to_camel(extra)}` does not belong to a {s.kind} step",
                )
            known = {"params": params, "vars": set(captured)}
            when = self._expr(s.when, (*loc, "when"), known) if s.when else None
            expr_source = s.until if s.kind == "wait" else s.expr
            field_name = "until" if s.kind == "wait" else "expr"
            expr = (
                self._expr(expr_source, (*loc, field_name), known, boolean=True)
                if expr_source is not None and s.kind != "action"
                else None
            )
            capture = {}
            for key, source in s.capture.items():
                program = self._expr(source, (*loc, "capture", key), known, boolean=False)
                if program is not None:
                    capture[key] = program
            captured.update(s.capture)
            command = undo = None
            if s.run is not None and s.kind == "action":
                command = self._command(s.run, s.timeout, (*loc, "run"), params)
            if s.undo is not None and s.kind == "action":
                undo = self._command(s.undo.run, s.undo.timeout, (*loc, "undo", "run"), params)
            for name in TEMPLATE.findall(s.message) + TEMPLATE.findall(s.description):
                if name not in params:
                    self.problem((*loc, "message"), f"{{{{{name}}}}}: no parameter {name!r}")
            default_timeout = DEFAULT_ACTION_TIMEOUT if s.kind == "action" else DEFAULT_WAIT_TIMEOUT
            out.append(
                Step(
                    name=s.name,
                    kind=s.kind,
                    description=" ".join(s.description.split()),
                    when=when,
                    expr=expr,
                    message=" ".join(s.message.split()),
                    command=command,
                    undo=undo,
                    risky=s.risky,
                    timeout=_seconds(s.timeout) if s.timeout is not None else default_timeout,
                    interval=s.interval or DEFAULT_INTERVAL,
                    capture=capture,
                )
            )
        return out

    def _expr(
        self,
        source: str,
        loc: tuple[str | int, ...],
        known: dict[str, set[str]],
        *,
        boolean: bool = True,
    ) -> Program | None:
        try:
            program = environment().compile(source)
        except CompileError as exc:
            self.problem(loc, f"does not compile: {exc.message}")
            return None
        if boolean and program.returns not in ("bool", "dyn"):
            self.problem(loc, f"must be true or false, and is of type {program.returns}")
        for var, name in _REFERENCE.findall(source):
            if name not in known[var]:
                what = "parameter" if var == "params" else "value captured by an earlier step"
                self.problem(loc, f"{var}.{name}: no {what} {name!r}")
        return program

    def _command(
        self,
        argv: list[str],
        timeout: float | str | None,
        loc: tuple[str | int, ...],
        params: set[str],
    ) -> Command:
        if argv[0] != "haplane":
            self.problem(
                loc, f"a command is a haplane command ([haplane, ...]; no shell), not {argv[0]!r}"
            )
        if any(t == "--state-dir" or t.startswith("--state-dir=") for t in argv):
            self.problem(loc, "--state-dir is the run's own: leave it out")
        if argv[1:2] == ["runbook"]:
            self.problem(loc, "a runbook does not run runbooks")
        for token in argv:
            for name in TEMPLATE.findall(token):
                if name not in params:
                    self.problem(loc, f"{{{{{name}}}}}: no parameter {name!r}")
            rest = TEMPLATE.sub("", token)
            if "{{" in rest or "}}" in rest:
                self.problem(loc, f"{token!r}: a template is {{{{name}}}}")
        seconds = _seconds(timeout) if timeout is not None else DEFAULT_ACTION_TIMEOUT
        return Command(tuple(argv), seconds)


def _seconds(value: float | str) -> float:
    return float(duration_seconds(value)) if isinstance(value, str) else float(value)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
