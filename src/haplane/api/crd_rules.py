"""Layer: api. CRD validation rules: `x-kubernetes-validations` on a CustomResourceDefinition's
schema, checked at the CRD's create and enforced on every create and update of its objects,
as apiextensions-apiserver does (k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel).

Pure: no I/O. The expressions are CEL (`haplane.cel`), compiled once per rule text (cached).

    rules_errors(schema, path)        the CRD's rules that cannot be served (422 on the CRD)
    type_errors(schema, path)         ... and those that do not type-check against it
    enforce(schema, obj, old)         the rules an object breaks (422 on the object)

Each rule: `rule` (CEL, true when the value is valid; `self` is the value at the rule's node,
`oldSelf` its previous value), `message` or `messageExpression` (CEL giving the message),
`reason` (FieldValueInvalid, FieldValueForbidden, FieldValueRequired, FieldValueDuplicate:
the cause's type), `fieldPath` (where the error points, relative to the node: `.a.b`,
`['key']`, `.list[0]`...), `optionalOldSelf`. A rule that mentions `oldSelf` is a transition
rule: checked only on an update, and only where the value can be paired with its old one
(object fields and map values by key; list items of `x-kubernetes-list-type: map` by their
keys; other list items never). `optionalOldSelf: true` checks it on create too, with
`oldSelf` as an optional value (`oldSelf.hasValue()`, `oldSelf.orValue(...)`).

Values are given to CEL as the schema types them: `number` fields as doubles (1 becomes
1.0), `integer` fields as ints; declared properties under Kubernetes' escaped names (`namespace`
is `self.__namespace__`, and `self.namespace` as Kubernetes 1.32+ reads it, `a-b` is
`self.a__dash__b`); at the root, `metadata` shows only
`name` and `generateName` (as in Kubernetes).

`cost_errors` is the static cost limit (`haplane.cel.cost`), each rule's and
messageExpression's estimate times how often it runs. On an update the errors are ratcheted
(`haplane.api.ratcheting`): a rule without `oldSelf` that is false where the update changed
nothing is left out (`enforce(..., ratcheted=...)` collects it, for a warning).

`type_errors` type-checks each rule and messageExpression against its node's schema
(`haplane.cel.typed`, `crd=True`), as Kubernetes refuses a CRD whose rules do not check;
evaluation runs the untyped programs on the values `_to_cel` makes, shaped to match those
types (escaped names, formatted strings as timestamps, durations and bytes). It also
refuses a transition rule where values cannot be paired (under the items of a list that is
not `x-kubernetes-list-type: map`), which would never run, as Kubernetes refuses it.
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass
from typing import Any, Final

from haplane.cel import CompileError, Environment, EvalError, Program, Schemas, formatted
from haplane.cel.ast import Node
from haplane.cel.cost import MAX_REQUEST_BYTES, RULE_LIMIT, TOTAL_LIMIT, estimate, min_size
from haplane.cel.library import KEYWORD_FIELDS, escape

from . import ratcheting
from .validation import FieldError

CEL: Final = "x-kubernetes-validations"
REASONS: Final = (
    "FieldValueInvalid",
    "FieldValueForbidden",
    "FieldValueRequired",
    "FieldValueDuplicate",
)
RULE_FIELDS: Final = frozenset(
    {"rule", "message", "messageExpression", "reason", "fieldPath", "optionalOldSelf"}
)
MAX_MESSAGE: Final = 5000  # characters of a message kept (Kubernetes bounds it too)
_OLD_SELF = re.compile(r"\boldSelf\b")  # a first look: `_uses_old_self` decides


@functools.lru_cache(maxsize=4096)
def _uses_old_self(source: str) -> bool:
    """Whether the expression reads the variable `oldSelf` (not a string or a field of that
    name, nor a comprehension's own variable so named), as Kubernetes decides it from the
    checked expression's references; by the text when the expression does not compile."""
    if not _OLD_SELF.search(source):
        return False
    try:
        tree = _compiled(source).tree()
    except Exception:  # (CompileError, or a tree that does not decode)
        return True
    return _reads(tree, "oldSelf", frozenset())


def _reads(node: Node | None, name: str, bound: frozenset[str]) -> bool:
    if node is None:
        return False
    if node.kind == "ident":
        return node.name == name and name not in bound
    if node.kind == "comprehension":
        inner = bound | {node.iter_var, node.accu_var}
        return (
            _reads(node.iter_range, name, bound)
            or _reads(node.accu_init, name, bound)
            or any(
                _reads(n, name, inner) for n in (node.loop_condition, node.loop_step, node.result)
            )
        )
    return _reads(node.target, name, bound) or any(_reads(a, name, bound) for a in node.args)


_FIELD_PATH = re.compile(r"(?:\.([A-Za-z_$][\w$-]*)|\['((?:[^'\\]|\\.)*)'\]|\[(\d+)\])")


@functools.cache
def _env() -> Environment:
    return Environment(("self", "oldSelf", _OLD, _PRESENT))


@functools.lru_cache(maxsize=4096)
def _compiled(source: str) -> Program:
    return _env().compile(source)


def _optional_form(source: str) -> str:
    """An expression under `optionalOldSelf`: `oldSelf` an optional value, made inside CEL
    (the engine's Python binding hands in no optional values)."""
    return f"cel.bind(oldSelf, {_PRESENT} ? optional.of({_OLD}) : optional.none(), ({source}))"


_OLD: Final = "__haplane_old_self"
_PRESENT: Final = "__haplane_old_self_present"


@dataclass(frozen=True)
class _Rule:
    rule: str
    message: str | None
    message_expression: str | None
    reason: str
    field_path: str | None
    transition: bool
    optional_old_self: bool

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> _Rule:
        rule = str(raw.get("rule") or "")
        return cls(
            rule,
            raw.get("message") if isinstance(raw.get("message"), str) else None,
            raw.get("messageExpression") if isinstance(raw.get("messageExpression"), str) else None,
            str(raw.get("reason") or "FieldValueInvalid"),
            raw.get("fieldPath") if isinstance(raw.get("fieldPath"), str) else None,
            _uses_old_self(rule),
            raw.get("optionalOldSelf") is True,
        )


# ---- the CRD: what cannot be served --------------------------------------------------------


def rules_errors(node: Mapping[str, Any], path: str, *, in_junctor: bool) -> list[FieldError]:
    """The problems of this schema node's own `x-kubernetes-validations` (not its children's),
    named by field (`path` is the node's place in the CRD)."""
    raw = node.get(CEL)
    if raw is None:
        return []
    where = f"{path}.{CEL}"
    if in_junctor:
        return [
            FieldError(
                where, "FieldValueForbidden", "must not be used in allOf, anyOf, oneOf or not"
            )
        ]
    if not isinstance(raw, list):
        return [FieldError(where, "FieldValueInvalid", "must be a list of rules", None)]
    errs: list[FieldError] = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            errs.append(FieldError(at, "FieldValueInvalid", "must be an object", None))
            continue
        errs += _rule_errors(item, at, node)
    return errs


def _rule_errors(item: Mapping[str, Any], at: str, node: Mapping[str, Any]) -> list[FieldError]:
    errs: list[FieldError] = []
    for unknown in sorted(set(item) - RULE_FIELDS):
        errs.append(FieldError(f"{at}.{unknown}", "FieldValueForbidden", "unknown field"))
    rule = item.get("rule")
    if not isinstance(rule, str) or not rule.strip():
        errs.append(FieldError(f"{at}.rule", "FieldValueRequired", "a CEL expression is required"))
    else:
        try:
            program = _compiled(rule)
        except CompileError as exc:
            errs.append(
                FieldError(f"{at}.rule", "FieldValueInvalid", f"compilation failed: {exc}", rule)
            )
        else:
            if item.get("optionalOldSelf") is True and _uses_old_self(rule):
                try:
                    _compiled(_optional_form(rule))
                except CompileError as exc:  # (oldSelf used as a value, not an optional)
                    errs.append(
                        FieldError(
                            f"{at}.rule",
                            "FieldValueInvalid",
                            f"compilation failed with optionalOldSelf (oldSelf is an optional: "
                            f"oldSelf.hasValue(), oldSelf.value(), oldSelf.orValue(...)): {exc}",
                            rule,
                        )
                    )
            if program.returns not in ("bool", "dyn"):
                errs.append(
                    FieldError(
                        f"{at}.rule",
                        "FieldValueInvalid",
                        f"must evaluate to a bool, not {program.returns}",
                        rule,
                    )
                )
    message = item.get("message")
    if message is not None and (
        not isinstance(message, str) or not message.strip() or "\n" in message
    ):
        errs.append(
            FieldError(
                f"{at}.message",
                "FieldValueInvalid",
                "must be a non-empty string on one line",
                str(message),
            )
        )
    expression = item.get("messageExpression")
    if expression is not None:
        if not isinstance(expression, str) or not expression.strip():
            errs.append(
                FieldError(f"{at}.messageExpression", "FieldValueRequired", "a CEL expression")
            )
        else:
            try:
                returns = _compiled(expression).returns
            except CompileError as exc:
                errs.append(
                    FieldError(
                        f"{at}.messageExpression",
                        "FieldValueInvalid",
                        f"messageExpression compilation failed: {exc}",
                        expression,
                    )
                )
            else:
                if returns not in ("string", "dyn"):
                    errs.append(
                        FieldError(
                            f"{at}.messageExpression",
                            "FieldValueInvalid",
                            f"must evaluate to a string, not {returns}",
                            expression,
                        )
                    )
    reason = item.get("reason")
    if reason is not None and reason not in REASONS:
        errs.append(
            FieldError(
                f"{at}.reason",
                "FieldValueNotSupported",
                "supported values: " + ", ".join(f'"{r}"' for r in REASONS),
                str(reason),
            )
        )
    field_path = item.get("fieldPath")
    if field_path is not None:
        why = _field_path_problem(field_path, node)
        if why is not None:
            errs.append(FieldError(f"{at}.fieldPath", "FieldValueInvalid", why, str(field_path)))
    optional = item.get("optionalOldSelf")
    if optional is not None:
        if not isinstance(optional, bool):
            errs.append(
                FieldError(f"{at}.optionalOldSelf", "FieldValueInvalid", "true or false", None)
            )
        elif optional and isinstance(rule, str) and not _uses_old_self(rule):
            errs.append(
                FieldError(
                    f"{at}.optionalOldSelf",
                    "FieldValueForbidden",
                    "may not be set if the rule does not use oldSelf",
                )
            )
    return errs


def _field_path_problem(field_path: Any, node: Mapping[str, Any]) -> str | None:
    """Why `fieldPath` is no path into the node's schema (None: it is one)."""
    if not isinstance(field_path, str) or not field_path:
        return "must be a non-empty path, e.g. .spec.replicas"
    steps = []
    pos = 0
    for m in _FIELD_PATH.finditer(field_path):
        if m.start() != pos:
            break
        steps.append(m)
        pos = m.end()
    if pos != len(field_path) or not steps:
        return "must be a valid path, such as .a.b, .a['b.c'] or .list[0]"
    schema: Any = node
    for m in steps:
        name = m.group(1) if m.group(1) is not None else m.group(2)
        if name is not None:
            props = schema.get("properties") if isinstance(schema, Mapping) else None
            additional = schema.get("additionalProperties") if isinstance(schema, Mapping) else None
            if isinstance(props, Mapping) and name in props:
                schema = props[name]
            elif isinstance(additional, Mapping):
                schema = additional
            else:
                return f"does not refer to a field of the schema: {name!r} is not one"
        else:
            if not isinstance(schema, Mapping) or not isinstance(schema.get("items"), Mapping):
                return "indexes a field that is not a list"
            schema = schema["items"]
    return None


class Programs:
    """The CRD's expressions compiled against their nodes' types (`haplane.cel.typed`),
    once for both checks (`type_errors`, `cost_errors`: Kubernetes estimates costs on the
    typed tree, where `a + b` of two lists is known to be a list append)."""

    def __init__(self) -> None:
        self._envs: dict[int, tuple[Mapping[str, Any], Environment | None]] = {}
        self._done: dict[tuple[int, str], Program | CompileError] = {}

    def typed(self, node: Mapping[str, Any], root: bool, text: str) -> Program | CompileError:
        """`text` compiled with `self` (and `oldSelf`) of the node's type: the program, or
        why it does not compile (a CompileError, returned)."""
        key = (id(node), text)
        if key not in self._done:
            env = self._env(node, root)
            try:
                self._done[key] = (env or _env()).compile(text)
            except CompileError as exc:
                self._done[key] = exc
        return self._done[key]

    def _env(self, node: Mapping[str, Any], root: bool) -> Environment | None:
        if id(node) not in self._envs:  # (the node is kept: its id stays its own)
            try:
                env: Environment | None = _typed_env(node, root=root)
            except (TypeError, ValueError, AttributeError):  # a malformed schema: untyped
                env = None
            self._envs[id(node)] = (node, env)
        return self._envs[id(node)][1]


Expression = tuple[str, str, str]  # (the node's path below the schema's root, field, text)
_Place = tuple[Mapping[str, Any], str, int, str | None, int, str, str, bool]


def _expressions(schema: Mapping[str, Any], path: str) -> Iterator[_Place]:
    """(node, its path, how often it runs, the unpairable list above it, the rule's index,
    field, text, whether the rule has optionalOldSelf) for each rule and messageExpression
    text of the schema."""
    for node, at, times, within in _rule_nodes(schema, path, 1):
        for i, item in enumerate(node.get(CEL) or ()):
            if not isinstance(item, Mapping):
                continue
            optional = item.get("optionalOldSelf") is True
            for field in ("rule", "messageExpression"):
                source = item.get(field)
                if isinstance(source, str):
                    yield node, at, times, within, i, field, source, optional


def expressions_at(schema: Any) -> frozenset[Expression]:
    """Every rule and messageExpression of a version's schema, by place (for `preexisting`:
    what a CRD held before an update)."""
    if not isinstance(schema, Mapping):
        return frozenset()
    return frozenset((at, f, text) for _, at, _, _, _, f, text, _ in _expressions(schema, ""))


def _typed_text(source: str, field: str, rule: str, optional: bool) -> str:
    """What is compiled for an expression: with optionalOldSelf, `oldSelf` is an optional
    in the rule and its messageExpression alike (Kubernetes compiles both in one
    environment)."""
    if optional and _uses_old_self(rule) and (field == "rule" or _OLD_SELF.search(source)):
        return _optional_form(source)
    return source


def _compiles(source: str) -> bool:
    try:
        _compiled(source)
    except CompileError:
        return False
    return True


def _rule_of(node: Mapping[str, Any], i: int) -> str:
    rule = node[CEL][i].get("rule")
    return rule if isinstance(rule, str) else ""


def cost_errors(
    schema: Mapping[str, Any],
    path: str,
    *,
    preexisting: Set[Expression] = frozenset(),
    programs: Programs | None = None,
) -> list[FieldError]:
    """Rules that may cost too much, estimated from the schema's bounds as Kubernetes does:
    one rule over RULE_LIMIT (not one the CRD held at that place before an update:
    `preexisting`, as Kubernetes exempts stored expressions), or every rule times how often
    it runs over TOTAL_LIMIT. Each is estimated on its typed tree where it type-checks, else
    on its untyped one; only rules that compile are counted (the others are
    `rules_errors`')."""
    programs = programs or Programs()
    errs: list[FieldError] = []
    total = 0.0
    fix = "(try simplifying the rule, or adding maxItems, maxProperties, and maxLength where "
    fix += "arrays, maps, and strings are declared)"
    for node, at, times, _, i, field, source, optional in _expressions(schema, path):
        text = _typed_text(source, field, _rule_of(node, i), optional)
        typed = programs.typed(node, at == path, text)
        try:
            tree = (typed if isinstance(typed, Program) else _compiled(source)).tree()
        except Exception:
            continue  # does not compile, or an unreadable tree: nothing to estimate
        # each run costs this; it runs once per value its node stands for
        cost = estimate(tree, {"self": node, "oldSelf": node, _OLD: node}) * times
        if cost > RULE_LIMIT and (at[len(path) :], field, source) not in preexisting:
            errs.append(
                FieldError(
                    f"{at}.{CEL}[{i}].{field}",
                    "FieldValueForbidden",
                    f"estimated {field} cost exceeds budget by factor of "
                    f"{_factor(cost, RULE_LIMIT)} {fix}",
                )
            )
        total += cost
    if total > TOTAL_LIMIT:
        errs.append(
            FieldError(
                path,
                "FieldValueForbidden",
                f"x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 "
                f"schema exceeds budget by factor of {_factor(total, TOTAL_LIMIT)} (try "
                "reducing the number of rules, or adding maxItems, maxProperties, and "
                "maxLength where arrays, maps, and strings are declared)",
            )
        )
    return errs


def type_errors(
    schema: Mapping[str, Any],
    path: str,
    *,
    preexisting: Set[Expression] = frozenset(),
    programs: Programs | None = None,
) -> list[FieldError]:
    """Rules and messageExpressions that do not type-check against the schema, as
    Kubernetes refuses them: `self` (and `oldSelf`) of the type of the rule's node
    (`haplane.cel.typed`, `crd=True`), so a misspelt field, a field of another node, or a
    string compared with an int is refused here rather than failing on every object; and a
    transition rule where values cannot be paired with their old selves (it would never
    run; Kubernetes' "uncorrelatable portion of the schema"). Only expressions that compile
    untyped are checked (`rules_errors` reports the others), and not those in
    `preexisting`: what the CRD held at that place before an update (a CRD stored before
    haplane checked types stays updatable, and deletable, as it is; the same text put
    elsewhere is checked)."""
    programs = programs or Programs()
    errs: list[FieldError] = []
    for node, at, _, within, i, field, source, optional in _expressions(schema, path):
        if (at[len(path) :], field, source) in preexisting:
            continue
        where = f"{at}.{CEL}[{i}].{field}"
        if field == "rule" and within is not None and _uses_old_self(source):
            errs.append(
                FieldError(
                    where,
                    "FieldValueInvalid",
                    "oldSelf cannot be used on the uncorrelatable portion of the "
                    f"schema within {within}",
                    source,
                )
            )
            continue
        text = _typed_text(source, field, _rule_of(node, i), optional)
        try:
            _compiled(text)
        except CompileError as exc:
            depth = any(line < 1 for line, _, _ in exc.problems)  # (not the wrapper's)
            if field == "messageExpression" and text != source and _compiles(source) and not depth:
                # as written it compiles (rules_errors took it): with optionalOldSelf,
                # oldSelf is an optional here too, and that is what fails
                shown = _shifted(exc, text, source)
                message = (
                    f"compilation failed with optionalOldSelf (oldSelf is an optional): {shown}"
                )
                errs.append(FieldError(where, "FieldValueInvalid", message, source))
            continue  # (otherwise reported by rules_errors)
        typed = programs.typed(node, at == path, text)
        if isinstance(typed, CompileError):
            message = f"compilation failed: {_shifted(typed, text, source)}"
            errs.append(FieldError(where, "FieldValueInvalid", message, source))
            continue
        wanted = "bool" if field == "rule" else "string"
        if typed.returns not in (wanted, "dyn"):
            message = f"must evaluate to a {wanted}, not {typed.returns}"
            errs.append(FieldError(where, "FieldValueInvalid", message, source))
    return errs


def _typed_env(node: Mapping[str, Any], *, root: bool, string_formats: bool = False) -> Environment:
    """`self`, `oldSelf` (and the optional form's inner name) of the node's type."""
    schemas = Schemas()
    declared = schemas.declare(node, "Self", crd=True, root=root, string_formats=string_formats)
    return Environment(
        ("self", "oldSelf", _OLD, _PRESENT),
        types={"self": declared, "oldSelf": declared, _OLD: declared},
        schemas=schemas,
    )


def _shifted(exc: CompileError, text: str, source: str) -> str:
    """The error's message with positions in `source`, where `text` wraps it (the optional
    form): columns on the first line move back by the prefix's length."""
    if text == source or not exc.problems:
        return str(exc)
    prefix = text.index(f"({source})") + 1
    parts = []
    for line, column, message in exc.problems:
        if line == 1:
            column = max(1, column - prefix)
        parts.append(f"{line}:{column}: {message}")
    return "; ".join(parts)


def _factor(cost: float, limit: int) -> str:
    factor = cost / limit
    return "more than 100x" if factor > 100 else f"{factor:.1f}x"


def _rule_nodes(
    node: Any, path: str, times: int | None, within: str | None = None
) -> Iterator[tuple[Mapping[str, Any], str, int, str | None]]:
    """Each schema node with rules, its path, how many values it can stand for, and the
    path of the list whose items hold it where they cannot be paired with their old selves
    (a list that is not `x-kubernetes-list-type: map`; None where values pair).

    How many values, as apiextensions-apiserver counts them: the product of the bounds
    (`maxItems`, `maxProperties`) of the lists and maps above the node; `times` None when one
    of them is unbounded, and then as many as a request can hold values of the node's
    smallest serialized size (not the product of the unbounded sizes: a request holds only
    so many values, however nested)."""
    if not isinstance(node, Mapping):
        return
    if isinstance(node.get(CEL), list):
        count = times if times is not None else MAX_REQUEST_BYTES // (min_size(node) + 1)
        yield node, path, count, within
    props = node.get("properties")
    if isinstance(props, Mapping):
        for key, sub in props.items():
            yield from _rule_nodes(sub, f"{path}.properties[{key}]", times, within)
    bound = _bound(node)
    below = None if times is None or bound is None else times * bound
    additional = node.get("additionalProperties")
    if isinstance(additional, Mapping):
        yield from _rule_nodes(additional, f"{path}.additionalProperties", below, within)
    items = node.get("items")
    if isinstance(items, Mapping):
        paired = node.get("x-kubernetes-list-type") == "map"
        unpaired = within if within is not None or paired else path
        yield from _rule_nodes(items, f"{path}.items", below, unpaired)


def _bound(node: Mapping[str, Any]) -> int | None:
    """A list's `maxItems`, a map's `maxProperties` (None: unbounded)."""
    for key in ("maxItems", "maxProperties"):
        value = node.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return max(0, value)
    return None


def has_rules(schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return False
    if CEL in schema:
        return True
    return any(has_rules(sub) for sub in _children(schema))


def _children(schema: Mapping[str, Any]) -> Iterator[Any]:
    props = schema.get("properties")
    if isinstance(props, Mapping):
        yield from props.values()
    for key in ("additionalProperties", "items"):
        if isinstance(schema.get(key), Mapping):
            yield schema[key]


# ---- an object: the rules it breaks ---------------------------------------------------------

_ABSENT: Final = object()


def enforce(
    schema: Mapping[str, Any],
    obj: Any,
    old: Any = _ABSENT,
    *,
    ratcheted: list[FieldError] | None = None,
    comparison: ratcheting.Comparison | None = None,
) -> list[FieldError]:
    """Every rule of `schema` that `obj` breaks; `old` is the object before an update (absent
    on a create: transition rules are then skipped, unless optionalOldSelf). On an update,
    `ratcheted` collects the errors left out by ratcheting (`haplane.api.ratcheting`): a rule
    without `oldSelf` that is false where the update changed nothing (Kubernetes returns
    them as warnings); an evaluation error, and a transition rule, are never ratcheted.
    `comparison`: the update's, shared with the schema's pass (`crd_schema.validate`)."""
    if not has_rules(schema):
        return []
    errs: list[FieldError] = []
    nearest: ratcheting.Nearest = None if old is _ABSENT else (obj, old)
    sink = _Sink(
        errs,
        ratcheted if ratcheted is not None else [],
        comparison if comparison is not None else ratcheting.Comparison(),
    )
    _walk(schema, obj, old, "", sink, nearest, root=True)
    return errs


@dataclass(frozen=True)
class _Sink:
    errs: list[FieldError]
    ratcheted: list[FieldError]
    comparison: ratcheting.Comparison


def _walk(
    schema: Mapping[str, Any],
    value: Any,
    old: Any,
    path: str,
    sink: _Sink,
    nearest: ratcheting.Nearest,
    *,
    root: bool,
) -> None:
    """`old`: the value `oldSelf` is (transition rules); `nearest`: the nearest value paired
    with its old self for ratcheting (pairs more: list items by index too)."""
    if value is None:
        return
    raw = schema.get(CEL)
    if isinstance(raw, list) and raw:
        _check(schema, raw, value, old, path, sink, nearest, root=root)
    if isinstance(value, dict):
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, additional if isinstance(additional, Mapping) else None)
            if not isinstance(sub, Mapping) or (root and key in ("apiVersion", "kind", "metadata")):
                continue
            before = old.get(key, _ABSENT) if isinstance(old, dict) else _ABSENT
            at = _join(path, key, bool(props.get(key)))
            below = sink.comparison.child(schema, nearest, value, key)
            _walk(sub, item, before, at, sink, below, root=False)
    elif isinstance(value, list):
        items = schema.get("items")
        if not isinstance(items, Mapping):
            return
        olds = _pairing(schema, value, old, sink.comparison)
        for i, item in enumerate(value):
            below = sink.comparison.child(schema, nearest, value, i)
            _walk(items, item, olds[i], f"{path}[{i}]", sink, below, root=False)


def _pairing(
    schema: Mapping[str, Any], new: list[Any], old: Any, comparison: ratcheting.Comparison
) -> list[Any]:
    """Each list item's old self (its `oldSelf`): by its keys in a `map` list, one to one as
    ratcheting pairs them (`ratcheting.pair_by_keys`), else none."""
    keys = schema.get("x-kubernetes-list-map-keys")
    if (
        schema.get("x-kubernetes-list-type") != "map"
        or not isinstance(keys, list)
        or not all(isinstance(k, str) for k in keys)
        or not isinstance(old, list)
    ):
        return [_ABSENT] * len(new)
    return [_ABSENT if o is ratcheting.ABSENT else o for o in comparison.by_keys(keys, new, old)]


def _join(path: str, key: str, declared: bool) -> str:
    if declared and re.fullmatch(r"[A-Za-z_][\w-]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key}]"


def _check(
    schema: Mapping[str, Any],
    raw: list[Any],
    value: Any,
    old: Any,
    path: str,
    sink: _Sink,
    nearest: ratcheting.Nearest,
    *,
    root: bool,
) -> None:
    errs = sink.errs
    if old is None:
        old = _ABSENT  # a null old value pairs with nothing, as in Kubernetes
    this = _to_cel(value, schema, root=root)
    before = _to_cel(old, schema, root=root) if old is not _ABSENT else None
    shown = _type_text(schema, value)
    for item in raw:
        if not isinstance(item, Mapping):
            continue
        r = _Rule.of(item)
        if r.transition and old is _ABSENT and not r.optional_old_self:
            continue
        data = {"self": this, "oldSelf": before, _OLD: before, _PRESENT: old is not _ABSENT}
        where = _at(path, r.field_path)
        if _strings_rule(schema, r.rule, root):  # (stored before formats were typed)
            plain = _to_cel(value, schema, root=root, formats=False)
            earlier = _to_cel(old, schema, root=root, formats=False) if old is not _ABSENT else None
            data = {**data, "self": plain, "oldSelf": earlier, _OLD: earlier}
        try:
            ok = _compiled(_typed_text(r.rule, "rule", r.rule, r.optional_old_self)).eval(data)
        except (CompileError, EvalError) as exc:
            errs.append(FieldError(where, "FieldValueInvalid", f"{_summary(r)}: {exc}", shown))
            continue
        if ok is True:
            continue
        if ok is not False:
            errs.append(
                FieldError(
                    where, "FieldValueInvalid", f"{_summary(r)}: did not evaluate to a bool", shown
                )
            )
            continue
        error = FieldError(where, r.reason, _message(r, data), shown)
        if not r.transition and sink.comparison.unchanged(nearest):
            sink.ratcheted.append(error)
        else:
            errs.append(error)


def _strings_rule(schema: Mapping[str, Any], rule: str, root: bool) -> bool:
    """Whether `rule` reads the node's formatted fields as strings: it does not type-check
    with them as timestamps, durations and bytes, and does with them as strings. Only a rule
    stored before haplane gave those fields their types can be one (a CRD with it is refused
    now, and an update does not check it again); it keeps running on the strings it was
    written for. Decided once per node and rule (the node kept, so its id stays its own)."""
    entry = _LEGACY.get(id(schema))
    if entry is None:
        if len(_LEGACY) >= 4096:
            _LEGACY.popitem(last=False)  # the least recently used
        entry = _LEGACY[id(schema)] = (schema, {}, _has_formats(schema))
    else:
        _LEGACY.move_to_end(id(schema))
    _, known, formats = entry
    if not formats:
        return False
    if rule not in known:

        def checks(string_formats: bool) -> bool:
            try:
                _typed_env(schema, root=root, string_formats=string_formats).compile(rule)
            except CompileError:
                return False
            return True

        known[rule] = not checks(False) and checks(True)
    return known[rule]


_LEGACY: OrderedDict[int, tuple[Mapping[str, Any], dict[str, bool], bool]] = OrderedDict()


def _has_formats(schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return False
    if schema.get("type") == "string" and schema.get("format") in formatted.FORMATS:
        return True
    return any(_has_formats(sub) for sub in _children(schema))


def _at(path: str, field_path: str | None) -> str:
    if not field_path:
        return path
    tail = field_path[1:] if field_path.startswith(".") and not path else field_path
    return f"{path}{tail}" if path else tail


def _message(r: _Rule, data: dict[str, Any]) -> str:
    if r.message_expression:
        # with optionalOldSelf, oldSelf is an optional in the message too (as in the rule)
        source = _typed_text(r.message_expression, "messageExpression", r.rule, r.optional_old_self)
        try:
            text = _compiled(source).eval(data)
        except (CompileError, EvalError):
            text = None
        if isinstance(text, str) and text.strip() and "\n" not in text:
            return text[:MAX_MESSAGE]
    if r.message:
        return r.message
    return f"failed rule: {r.rule.strip()}"


def _summary(r: _Rule) -> str:
    return f"rule {r.rule!r} could not be evaluated"


def _type_text(schema: Mapping[str, Any], value: Any) -> str:
    declared = schema.get("type")
    if isinstance(declared, str) and declared:
        return declared
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(value), "value")


def _to_cel(
    value: Any, schema: Mapping[str, Any] | None, *, root: bool = False, formats: bool = True
) -> Any:
    """The value as CEL sees it, as Kubernetes gives it (UnstructuredToVal): `number` fields
    as doubles; `date` and `date-time` strings as timestamps, `duration` strings as
    durations, `byte` strings as bytes (a string that does not parse stays a string, and a
    rule using it as what its format says then fails on it; `formats` False: all strings);
    declared properties under their escaped names; at the root, metadata with only name and
    generateName."""
    if schema is None:
        return value
    if isinstance(value, str):
        fmt = schema.get("format")
        if formats and isinstance(fmt, str) and fmt in formatted.FORMATS:
            return _formatted(value, fmt)
        return value
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        additional = schema.get("additionalProperties")
        out = {}
        for k, v in value.items():
            if root and k == "metadata" and isinstance(v, dict):
                out[k] = {m: v[m] for m in ("name", "generateName") if m in v}
                continue
            declared = props.get(k)
            if isinstance(declared, Mapping):
                # a declared property, named as expressions spell it (`__namespace__`, and
                # a reserved word as written too, as Kubernetes 1.32+ reads it)
                spelt = escape(k)
                if spelt is not None:
                    out[spelt] = _to_cel(v, declared, formats=formats)
                    if k in KEYWORD_FIELDS:
                        out[k] = out[spelt]
                continue
            sub = additional if isinstance(additional, Mapping) else None
            out[k] = _to_cel(v, sub, formats=formats)
        return out
    if isinstance(value, list):
        items = schema.get("items")
        sub = items if isinstance(items, Mapping) else None
        return [_to_cel(v, sub, formats=formats) for v in value]
    return value


def _formatted(value: str, fmt: str) -> Any:
    """A formatted string as the CEL value Kubernetes makes of it (`haplane.cel.formatted`);
    the string itself when it does not parse."""
    try:
        converted = formatted.cel_value(value, fmt)
    except (ValueError, OverflowError, TypeError):  # out of the engine's range: as written
        converted = None
    return value if converted is None else converted
