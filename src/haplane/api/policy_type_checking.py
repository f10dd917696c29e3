"""Type checking of a ValidatingAdmissionPolicy's expressions against the schemas of the
kinds it matches, for its `status.typeChecking.expressionWarnings`, as Kubernetes'
(k8s.io/apiserver/pkg/admission/plugin/policy/validating/typechecking.go). Warnings never
change what the policy does: they tell its author that an expression does not check against a
kind's schema (a misspelt field, a string compared with an int), so it most likely fails on
objects of that kind; not always (a branch no object takes, values the schema leaves out).

Layer: api. Pure: the served kinds and their schemas are the `Registry` given; the types and
the checker are `haplane.cel`'s (`haplane.cel.typed`). A policy's checking takes up to
seconds (thousands of expressions, each per kind): the controllers run it in a thread, on a
snapshot of the registry. The warnings are capped (MAX_WARNING_CHARS, MAX_TOTAL_CHARS) so
that the status always fits in etcd's request.

What is checked against what, as in Kubernetes:
- the kinds: each resource of `matchConstraints.resourceRules` named without wildcards (no
  `*` in its group, version or resource, no subresource), at most 10, in group, version,
  kind order; a kind haplane has no schema for (`haplane.api.openapi_schemas`), or none at
  all, leaves the policy unchecked;
- `object` and `oldObject` are of that kind, `params` of `paramKind` (when it has a schema;
  `dyn` otherwise), `request` and `namespaceObject` of Kubernetes' request and Namespace
  types, `authorizer` `dyn`; `variables.NAME` of the type its expression checks to, in order
  (`dyn` when it does not check);
- each problem becomes a warning for the expression's field, one line per kind that fails:
  `apps/v1, Kind=Deployment: ERROR: <input>:1:8: undefined field ...` and the source with a
  caret under the column, as cel-go prints it.
Kubernetes checks `spec.validations[i].expression` and `.messageExpression`; haplane also
checks `spec.variables[i].expression`, `spec.matchConditions[i].expression` and
`spec.auditAnnotations[i].valueExpression` (a misspelt field there fails just the same).
Not checked: `authorizer` calls (the library's values are maps to the checker).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from haplane.cel import DYN, CompileError, DeclaredType, Environment, Schemas

from .admission_policies import VARIABLES
from .openapi_schemas import NAMESPACE, REQUEST, schema_of
from .resources import Obj, Registry, ResourceType

MAX_TYPES: Final = 10  # kinds checked per policy (Kubernetes' maxTypesToCheck)
# The status must fit in etcd's request (1.5 MiB) with the policy: a warning is cut at
# MAX_WARNING_CHARS, and the warnings after MAX_TOTAL_CHARS are left out, which a last
# warning says (Kubernetes sets no limit; its objects have the same ceiling).
MAX_WARNING_CHARS: Final = 4096
MAX_TOTAL_CHARS: Final = 256 * 1024
_FIXED: Final = tuple(v for v in VARIABLES if v != "variables")


@dataclass(frozen=True)
class _Kind:
    group: str
    version: str
    kind: str

    def __str__(self) -> str:  # Go's schema.GroupVersionKind.String()
        return f"{self.group}/{self.version}, Kind={self.kind}"


def expression_warnings(policy: Obj, registry: Registry) -> list[Obj]:
    """The policy's `status.typeChecking.expressionWarnings`: [{fieldRef, warning}], in the
    order of the spec's fields (empty: nothing to say, or nothing typed to check against)."""
    spec = policy.get("spec")
    if not isinstance(spec, Mapping):
        return []
    kinds = _kinds_to_check(spec.get("matchConstraints"), registry)
    if not kinds:
        return []
    schemas = Schemas()
    params = _params_type(spec.get("paramKind"), registry, schemas)
    fixed = {
        "params": params,
        "request": schemas.declare(REQUEST, "AdmissionRequest"),
        "namespaceObject": schemas.declare(NAMESPACE, "Namespace"),
    }
    found: dict[str, list[str]] = {}
    for kind, t in kinds:
        declared = schemas.declare(schema_of(t), kind.kind)
        if declared is DYN:
            continue
        types = {**fixed, "object": declared, "oldObject": declared}
        for field, problem in _check(spec, types, schemas):
            found.setdefault(field, []).append(f"{kind}: {problem}")
    return _capped(
        [
            {"fieldRef": field, "warning": "\n".join(problems)}
            for field in _fields(spec)
            if (problems := found.get(field))
        ]
    )


def _capped(warnings: list[Obj]) -> list[Obj]:
    """At most MAX_WARNING_CHARS a warning and MAX_TOTAL_CHARS in all; what is left out is
    said in a last warning, on `spec`."""
    kept: list[Obj] = []
    total = 0
    for i, w in enumerate(warnings):
        text = w["warning"]
        if len(text) > MAX_WARNING_CHARS:
            cut = f"\n... ({len(text) - MAX_WARNING_CHARS} more characters left out)"
            text = text[:MAX_WARNING_CHARS] + cut
        if total + len(text) > MAX_TOTAL_CHARS:
            left = len(warnings) - i
            kept.append(
                {
                    "fieldRef": "spec",
                    "warning": f"{left} more expressions with warnings not shown "
                    f"(status.typeChecking holds at most {MAX_TOTAL_CHARS} characters)",
                }
            )
            break
        total += len(text)
        kept.append({**w, "warning": text})
    return kept


def _check(
    spec: Mapping[str, Any], types: dict[str, DeclaredType], schemas: Schemas
) -> Iterator[tuple[str, str]]:
    """(field, problem) for each expression of the spec that does not check against
    `types`; each variable is declared with the type its expression checks to."""
    declared: dict[str, DeclaredType] = {}

    def env() -> Environment:
        names = (*_FIXED, *(f"variables.{n}" for n in declared))
        variables = {f"variables.{n}": t for n, t in declared.items()}
        return Environment(names, authorizer=True, types={**types, **variables}, schemas=schemas)

    for i, v in enumerate(_items(spec.get("variables"))):
        name, expression = v.get("name"), v.get("expression")
        if not isinstance(name, str) or not isinstance(expression, str):
            continue
        try:
            declared[name] = env().compile(expression).result
        except CompileError as exc:
            declared[name] = DYN
            yield f"spec.variables[{i}].expression", exc.report()
    checking = env()
    for field, expression in _expressions(spec):
        if field.startswith("spec.variables[") or not isinstance(expression, str):
            continue
        try:
            checking.compile(expression)
        except CompileError as exc:
            yield field, exc.report()


def _expressions(spec: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """(field, expression) of every expression of the spec, in the order of its fields (an
    expression that is no string is the spec's validation's problem: never compiled here)."""
    for i, v in enumerate(_items(spec.get("variables"))):
        yield f"spec.variables[{i}].expression", v.get("expression")
    for i, c in enumerate(_items(spec.get("matchConditions"))):
        yield f"spec.matchConditions[{i}].expression", c.get("expression")
    for i, v in enumerate(_items(spec.get("validations"))):
        yield f"spec.validations[{i}].expression", v.get("expression")
        if v.get("messageExpression"):
            yield f"spec.validations[{i}].messageExpression", v.get("messageExpression")
    for i, a in enumerate(_items(spec.get("auditAnnotations"))):
        yield f"spec.auditAnnotations[{i}].valueExpression", a.get("valueExpression")


def _fields(spec: Mapping[str, Any]) -> list[str]:
    return [field for field, _ in _expressions(spec)]


def _items(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _kinds_to_check(match: Any, registry: Registry) -> list[tuple[_Kind, ResourceType]]:
    """Kubernetes' typesToCheck: the kinds the rules name without wildcards, sorted by
    group, version and kind; at most MAX_TYPES (the first found)."""
    rules = match.get("resourceRules") if isinstance(match, Mapping) else None
    found: dict[_Kind, ResourceType] = {}
    for rule in _items(rules):
        groups, versions = _names(rule.get("apiGroups")), _names(rule.get("apiVersions"))
        resources = [
            r for r in rule.get("resources") or () if isinstance(r, str) and not set(r) & {"*", "/"}
        ]
        for group in sorted(groups):
            for version in sorted(versions):
                for plural in sorted(resources):
                    t = registry.get(group, version, plural)
                    if t is None:
                        continue
                    found.setdefault(_Kind(t.group, t.version, t.kind), t)
                    if len(found) == MAX_TYPES:
                        return _sorted(found)
    return _sorted(found)


def _names(values: Any) -> list[str]:
    """The names of a rule's list; none at all if any is a wildcard (Kubernetes gives up)."""
    if not isinstance(values, list) or any(not isinstance(v, str) or "*" in v for v in values):
        return []
    return list(values)


def _sorted(found: dict[_Kind, ResourceType]) -> list[tuple[_Kind, ResourceType]]:
    return sorted(found.items(), key=lambda kv: (kv[0].group, kv[0].version, kv[0].kind))


def _params_type(param_kind: Any, registry: Registry, schemas: Schemas) -> DeclaredType:
    if not isinstance(param_kind, Mapping):
        return DYN
    group, _, version = str(param_kind.get("apiVersion") or "").rpartition("/")
    kind = param_kind.get("kind")
    t = next(
        (x for x in registry.all() if (x.group, x.version, x.kind) == (group, version, kind)),
        None,
    )
    return schemas.declare(schema_of(t), str(kind)) if t is not None else DYN
