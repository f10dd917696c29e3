"""The adapter over the CEL engine (`cel-expr-python`): environments, compiled programs,
errors with their position. Nothing outside this file knows which engine runs.

Layer: cel. Pure: no I/O.
"""

from __future__ import annotations

import operator
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext import ext_bindings, ext_optional

from . import authz, budget, formats
from .ast import Node, parse, walk
from .library import (
    CACHED_MATCHES,
    calls,
    extensions,
    functions,
    note_written_patterns,
    rename_matches,
)
from .typed import DYN, DeclaredType, Schemas

# the engine's messages: "ERROR: <input>:1:17: Syntax error: ..." (one per problem, each
# followed by the source line and a caret line)
_POSITION = re.compile(r"ERROR: <input>:(\d+):(\d+): ([^\n]*)")
_STATUS = re.compile(r"^[A-Z_]+: ")  # "INVALID_ARGUMENT: ...", the engine's status code


class CelError(Exception):
    """A problem with an expression; `message` without the engine's status prefix."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class CompileError(CelError):
    """The expression does not compile: each problem with its line and column (1-based)."""

    def __init__(
        self, message: str, problems: Sequence[tuple[int, int, str]] = (), source: str = ""
    ) -> None:
        super().__init__(message)
        self.problems = list(problems)
        self.source = source

    @property
    def position(self) -> tuple[int, int] | None:
        return self.problems[0][:2] if self.problems else None

    def report(self) -> str:
        """The problems as cel-go prints them (Kubernetes' messages quote them): each as
        `ERROR: <input>:LINE:COLUMN: MESSAGE`, then its line of source and a caret under the
        column."""
        if not self.problems:
            return self.message
        lines = self.source.splitlines() or [""]
        # the engine reports what follows from a problem too ("expression of type '*error*'
        # cannot be ..."): cel-go does not, nor does this report
        problems = [p for p in self.problems if "'*error*'" not in p[2]] or self.problems
        out = []
        for line, column, message in problems:
            text = lines[line - 1] if 0 < line <= len(lines) else ""
            message = message.removesuffix(" (in container '')")
            out.append(f"ERROR: <input>:{line}:{column}: {message}")
            out.append(f" | {text}\n | {'.' * max(column - 1, 0)}^")
        return "\n".join(out)


class EvalError(CelError):
    """The expression failed while evaluating (a missing field, a division by zero, no
    matching function for the values' types...)."""


@dataclass
class Program:
    source: str
    returns: str  # the checked result type: "bool", "string", "dyn", ...
    _expr: Any = field(repr=False)
    _env: Any = field(default=None, repr=False)
    # what is evaluated when not `_expr`: the same expression, its `matches` calls through
    # `library.CACHED_MATCHES`; an evaluation of it that fails is done again with `_expr`, so
    # a failure says what the engine's own functions say
    _run: Any = field(default=None, repr=False)

    @property
    def result(self) -> DeclaredType:
        """The checked result type, to declare a variable with (`Environment(types=...)`)."""
        t = self._expr.return_type()
        return DYN if t == cel.Type.DYN else DeclaredType(t, str(t.name()))

    def tree(self) -> Node:
        """The checked syntax tree (for `haplane.cel.cost.estimate`)."""
        return parse(self._expr.serialize())

    def eval(self, data: Mapping[str, Any] | Bound) -> Any:
        """The result as a plain Python value (dict, list, str, int, float, bool, None,
        bytes); `EvalError` when the evaluation fails. `data`: the variables, or a `Bound`
        of them made once for several evaluations."""
        if isinstance(data, Bound):
            if data.env is not self._env:
                raise ValueError("bound by another environment")
            activation = data.activation
        else:
            # through an Activation: the engine converts a value when the expression reads
            # it (eval(data=...) converts the whole object first: 20x slower on a ConfigMap
            # with managedFields, measured)
            activation = self._env.Activation(data=dict(data))
        if self._run is not None:
            try:
                return self._evaluate(self._run, activation)
            except EvalError as exc:
                if budget.STOPPED in str(exc):
                    raise  # out of time: not once more
                first = exc  # again as written: the engine's own message
            try:
                return self._evaluate(self._expr, activation)
            except EvalError as exc:
                if "too large" in str(exc):  # the engine's own RE2 has less room than ours
                    raise first from None
                raise
        return self._evaluate(self._expr, activation)

    @staticmethod
    def _evaluate(expr: Any, activation: Any) -> Any:
        token = budget.DEADLINE.set(time.monotonic() + budget.TIME_LIMIT)
        try:
            value = expr.eval(activation)
        except RuntimeError as exc:
            raise EvalError(_clean(str(exc))) from None
        finally:
            budget.DEADLINE.reset(token)
        if value.type() == cel.Type.ERROR:
            raise EvalError(_clean(str(value)))
        try:
            return value.plain_value()
        except Exception as exc:  # e.g. an optional inside a list: no Python value for it
            raise EvalError(f"the result has no plain value: {exc}") from None


class Bound:
    """Variables bound once for several evaluations (`Environment.bind`): an Activation costs
    about as much as a simple evaluation (measured: 5 µs; 36 µs per expression with one each,
    13 µs sharing one, on a ConfigMap with managedFields)."""

    __slots__ = ("activation", "env")

    def __init__(self, env: Any, activation: Any) -> None:
        self.env = env
        self.activation = activation


class Environment:
    """Declared variables (each `dyn` unless typed) and Kubernetes' libraries. Compile is the
    costly step (tens of microseconds to milliseconds): keep programs, not sources."""

    def __init__(
        self,
        variables: Sequence[str],
        *,
        authorizer: bool = False,
        types: Mapping[str, DeclaredType] | None = None,
        schemas: Schemas | None = None,
    ) -> None:
        """`authorizer`: with Kubernetes' authorizer library (`haplane.cel.authz`), for
        admission policies. `types`: variables declared with a type (`haplane.cel.typed`,
        the schemas' pool in `schemas`) rather than `dyn`, for checking expressions: such an
        environment also declares the comparisons of an int, a uint and a double with each
        other, as Kubernetes does (cel-go's CrossTypeNumericComparisons; the engine evaluates
        them on dyn values, its checker has no declarations for them)."""
        self.variables = tuple(variables)
        self._schemas = schemas  # the engine reads the pool's messages: kept alive with it
        declared = {name: cel.Type.DYN for name in self.variables}
        declared.update({name: t.engine for name, t in (types or {}).items()})
        self._env = cel.NewEnv(
            descriptor_pool=schemas.pool if schemas is not None else None,
            variables=declared,
            functions=functions() + formats.functions() + (authz.functions() if authorizer else []),
            # optional field selection (`self.?spec.?x.orValue(0)`) and `cel.bind`, which
            # Kubernetes enables too
            extensions=[
                ext_optional.ExtOptional(),
                ext_bindings.ExtBindings(),
                *extensions(),
                *([_cross_numeric()] if types else []),
            ],
        )

    def bind(self, data: Mapping[str, Any]) -> Bound:
        """`data` bound for evaluations of this environment's programs."""
        return Bound(self._env, self._env.Activation(data=dict(data)))

    def compile(self, source: str) -> Program:
        if not isinstance(source, str) or not source.strip():
            raise CompileError("an expression is required")
        try:
            source.encode()
        except UnicodeEncodeError:  # a lone surrogate (JSON allows one): the engine takes UTF-8
            raise CompileError("the expression is not valid UTF-8", [], source) from None
        # Kubernetes' `format` library, rewritten into what the engine can run (formats.py)
        rewritten = formats.rewrite(source)
        text = rewritten.text if rewritten is not None else source
        try:
            expr = self._env.compile(text)
        except RuntimeError as exc:
            err = str(exc)
            problems = [(int(a), int(b), m) for a, b, m in _POSITION.findall(err)]
            if rewritten is not None:  # positions and names as written
                problems = [
                    (
                        *rewritten.position(source, a, b),
                        m.replace(formats.FORMAT_ERRORS, "validate"),
                    )
                    for a, b, m in problems
                ]
            message = "; ".join(f"{a}:{b}: {m}" for a, b, m in problems) or _clean(err)
            raise CompileError(message, problems, source) from None
        run = None
        renamed = rename_matches(text)
        if renamed is not None:
            try:
                run = self._env.compile(renamed)
            except RuntimeError:
                run = None  # evaluated as written
        if "matches" in source or "find" in source:
            note_written_patterns(_string_constants(expr))
        for internal in (CACHED_MATCHES, formats.FORMAT_ERRORS):
            if internal in source and calls(source, internal):
                # an internal function's name written by hand: undeclared, as anywhere else
                raise CompileError(f"undeclared reference to '{internal}'", [], source)
        return Program(source, _type_name(expr.return_type()), expr, self._env, run)


def _string_constants(expr: Any) -> list[str]:
    """The string constants of a compiled expression (its author's text: any may be used as
    a regular expression, directly or through a variable)."""
    try:
        tree = parse(expr.serialize())
    except Exception:  # (a tree that does not decode: nothing noted)
        return []
    return [n.value for n in walk(tree) if n.kind == "const" and isinstance(n.value, str)]


_ORDERINGS = {
    "_<_": ("less", operator.lt),
    "_<=_": ("less_equals", operator.le),
    "_>_": ("greater", operator.gt),
    "_>=_": ("greater_equals", operator.ge),
}


def _cross_numeric() -> Any:
    numbers = (("int64", cel.Type.INT), ("uint64", cel.Type.UINT), ("double", cel.Type.DOUBLE))
    return cel.CelExtension(
        "haplane.cross_numeric_comparisons",
        [
            cel.FunctionDecl(
                op,
                [
                    cel.Overload(f"{name}_{a}_{b}", cel.Type.BOOL, [ta, tb], False, compare)
                    for a, ta in numbers
                    for b, tb in numbers
                    if a != b
                ],
            )
            for op, (name, compare) in _ORDERINGS.items()
        ],
    )


def _type_name(t: Any) -> str:
    name = str(t.name()).lower()
    return {"string": "string", "bool": "bool", "int": "int", "double": "double"}.get(name, name)


def _clean(text: str) -> str:
    first = _STATUS.sub("", text.strip().splitlines()[0] if text.strip() else text)
    return first.replace(formats.FORMAT_ERRORS, "validate")  # (the format library's call)
