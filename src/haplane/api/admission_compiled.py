"""ValidatingAdmissionPolicy, compiled: what the admission engine
(`haplane.api.admission_policies`) evaluates, worked out once per change of the policies or
bindings, and the request it evaluates them on.

Layer: api. Pure over what it is given (the request's namespace comes from a callable the
engine hands in: the replica's watch cache, never etcd); the CEL is `haplane.cel`. The engine
and its fast paths (`haplane.api.admission_fast`) import it; it imports neither.

- the environments: the public one (`VARIABLES`, every variable `dyn`; `compile_expression`,
  cached by text) and the request's one activation's (`__params` besides; its layout is
  described where `_PARAMS` is defined);
- `_Check`: one expression, compiled once, with the policy's variables it reads (`_uses`) and
  its text for the one activation (`_Check.fast`);
- `_Pair`: a binding and its policy (variables, matchConditions, `_Validation`s, audit
  annotations, failure policy, actions);
- `_Match`: a matchConstraints or matchResources, the rules' verdict memoised per kind of
  request (`_rule`, `_resource`: operations, groups, versions, wildcards and subresources,
  scope, resourceNames), then its namespace and object selectors;
- the request: `Attributes` (what the server gives), `_Admission` (its variables, worked out
  once for every policy, and its one activation), `_Prepared` (one binding's match and
  parameters).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from haplane.auth.rbac import selector_matcher
from haplane.auth.user import UserInfo
from haplane.cel import Bound, CompileError, Environment, Program, authz

from . import errors
from .resources import Obj, ResourceType

VARIABLES = (
    "object",
    "oldObject",
    "request",
    "params",
    "namespaceObject",
    "authorizer",
    "authorizer.requestResource",
    "variables",
)


@functools.cache
def _env() -> Environment:
    return Environment(VARIABLES, authorizer=True)


@functools.lru_cache(maxsize=8192)
def compile_expression(source: str) -> Program:
    """A policy's expression, compiled once (the cache is keyed by its text)."""
    return _env().compile(source)


# One activation per request for every policy (an Activation and the conversion of the
# object it holds cost 15-20 µs, as much as two or three evaluations): the request's
# parameter objects are in one map, `__params`, by "<binding's index>/<param's index>", and a
# policy's expression is evaluated as `cel.bind(params, __params["I/J"], (EXPR))`, the
# variables it reads bound the same way (`cel.bind(variables, {...}, ...)`). `__params` exists
# only in this environment: every expression and variable is first compiled in the public one
# (`_env`), where it is undeclared. A binding with more parameter objects than PER_BINDING, or
# an expression reading more than MAX_VARIABLES variables (each nested bind repeats the ones
# before: the text grows with their square), or one asking the authorizer (whose checks are
# counted per binding), is evaluated its own way.
_PARAMS = "__params"
PER_BINDING = 8
MAX_VARIABLES = 8


@functools.cache
def _fast_env() -> Environment:
    return Environment((*VARIABLES, _PARAMS), authorizer=True)


@functools.lru_cache(maxsize=8192)
def _fast_compile(text: str) -> Program | None:
    try:
        return _fast_env().compile(text)
    except CompileError:
        return None


class _Check:
    """One expression of a policy, compiled once per change of the policies (not looked up
    by its text per request); one that does not compile fails each evaluation, as it would
    compiled then."""

    __slots__ = ("_fast", "_never", "error", "program", "source", "text", "uses")

    def __init__(self, source: Any, variables: Sequence[tuple[str, _Check]] = ()) -> None:
        """`variables`: the policy's, in order (for the one-activation evaluation)."""
        self.source = source  # as the policy gives it (its messages quote it)
        self.text = str(source)
        self.program: Program | None = None
        self.error = ""
        try:
            self.program = compile_expression(self.text)
        except CompileError as exc:
            self.error = str(exc)
        self.uses = _uses(self.text, variables)
        self._fast: dict[str | None, Program | None] = {}
        # never on the one activation: it, or a variable it reads, does not compile on its
        # own (pasted into a bind, a broken text could yet compile), or it reads too many
        self._never = (
            self.program is None
            or any(c.program is None for _, c in self.uses)
            or len(self.uses) > MAX_VARIABLES
        )

    def __call__(self, data: Mapping[str, Any] | Bound) -> Any:
        if self.program is None:
            raise CompileError(self.error)
        return self.program.eval(data)

    def fast(self, key: str | None) -> Program | None:
        """This expression for the request's one activation: with the parameters at
        `__params[key]` (none: None), and the variables it reads bound in order; None when it
        cannot be evaluated so."""
        try:
            return self._fast[key]
        except KeyError:
            pass
        program = None if self._never else _fast_compile(self.fast_text(key))
        if program is None:
            self._never = True  # whatever the key: not compiled once per parameter object
        self._fast[key] = program
        return program

    def fast_text(self, key: str | None) -> str:
        """The text `fast` compiles."""
        body = f"({self.text})"
        names = [name for name, _ in self.uses]
        for i in reversed(range(len(self.uses))):
            name, check = self.uses[i]
            earlier = [f"{json.dumps(n)}: variables[{json.dumps(n)}]" for n in names[:i]]
            entries = ", ".join([*earlier, f"{json.dumps(name)}: ({check.text})"])
            body = f"cel.bind(variables, {{{entries}}}, {body})"
        if key is not None:
            body = f"cel.bind(params, {_PARAMS}[{json.dumps(key)}], {body})"
        return body


def _uses(text: str, variables: Sequence[tuple[str, _Check]]) -> list[tuple[str, _Check]]:
    """The policy's variables that `text` reads, with those they read (each variable's own
    `uses`, made when only the variables declared before it existed: a variable never reads
    a later one), in declaration order. All of them when `text` reads `variables` other than
    as `variables.NAME` of a declared name: indexed, passed whole, a macro or a method on it
    (`variables.exists(...)`, `variables.size()`)."""
    if not variables or "variables" not in text:
        return []
    names = {n for n, _ in variables}
    wanted: set[str] = set()
    for m in _VARIABLES.finditer(text):
        field = _FIELD.match(text, m.end())
        if field is None or field.group(2) or field.group(1) not in names:
            return list(variables)
        wanted.add(field.group(1))
    for name, check in variables:
        if name in wanted:
            wanted.update(n for n, _ in check.uses)
    return [(n, c) for n, c in variables if n in wanted]


_VARIABLES = re.compile(r"\bvariables\b")
# `.name` or `.?name` after it, and whether a call follows (a method, not a field)
_FIELD = re.compile(r"\s*\.\s*\??\s*([A-Za-z_]\w*)\b(\s*\()?")


@dataclass(frozen=True)
class _Validation:
    check: _Check
    message: str  # "" when none
    message_check: _Check | None
    reason: str


@dataclass(frozen=True)
class _Pair:
    """A binding and its policy, with what every admission reads of them, worked out (and
    compiled) once per change of the policies or bindings."""

    policy: Obj
    binding: Obj
    pname: str
    bname: str
    actions: tuple[str, ...]
    pspec: Obj
    bspec: Obj
    match: _Match  # the policy's matchConstraints
    narrow: _Match | None  # the binding's matchResources, if any
    fail: bool  # failurePolicy Fail (the default), not Ignore
    variables: tuple[tuple[str, _Check], ...]
    conditions: tuple[tuple[Any, _Check], ...]  # (name, expression)
    validations: tuple[_Validation, ...]
    notes: tuple[tuple[Any, _Check], ...]  # auditAnnotations: (key, valueExpression)
    index: int  # among the bindings, at this change of them (its parameters' key)
    fast: bool  # evaluated on the request's one activation first

    @classmethod
    def of(cls, policy: Obj, binding: Obj, index: int = 0) -> _Pair:
        bspec = binding.get("spec") or {}
        pspec = policy.get("spec") or {}
        resources = bspec.get("matchResources")
        variables: list[tuple[str, _Check]] = []
        for v in pspec.get("variables") or ():
            variables.append((str(v.get("name")), _Check(v.get("expression"), variables[:])))
        texts = [str(x.get("expression")) for x in pspec.get("variables") or ()]
        texts += [str(x.get(k)) for k in ("expression", "messageExpression")
                  for x in pspec.get("validations") or ()]  # fmt: skip
        texts += [str(x.get("expression")) for x in pspec.get("matchConditions") or ()]
        texts += [str(x.get("valueExpression")) for x in pspec.get("auditAnnotations") or ()]
        return cls(
            policy,
            binding,
            str((policy.get("metadata") or {}).get("name")),
            str((binding.get("metadata") or {}).get("name")),
            tuple(bspec.get("validationActions") or ()),
            pspec,
            bspec,
            _Match.of(pspec.get("matchConstraints")),
            None if resources is None else _Match.of(resources, narrowing=True),
            pspec.get("failurePolicy", "Fail") != "Ignore",
            tuple(variables),
            tuple(
                (c.get("name"), _Check(c.get("expression"), variables))
                for c in pspec.get("matchConditions") or ()
            ),
            tuple(
                _Validation(
                    _Check(v.get("expression"), variables),
                    str(v.get("message") or ""),
                    _Check(v["messageExpression"], variables)
                    if v.get("messageExpression")
                    else None,
                    str(v.get("reason") or "Invalid"),
                )
                for v in pspec.get("validations") or ()
            ),
            tuple(
                (n.get("key"), _Check(n.get("valueExpression"), variables))
                for n in pspec.get("auditAnnotations") or ()
            ),
            index,
            # the authorizer's checks are counted per binding: a variable read by two
            # expressions would be checked twice here
            not any("authorizer" in t for t in texts),
        )


# ---- the request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Attributes:
    operation: str  # CREATE | UPDATE | DELETE
    rtype: ResourceType
    namespace: str | None
    name: str
    obj: Obj | None
    old: Obj | None
    user: UserInfo | None
    subresource: str = ""
    dry_run: bool = False


_UNSET: Any = object()
_AUTHORIZER = authz.authorizer()


class _Admission:
    """One request's variables, worked out once for every policy: the namespace, `request`,
    and one binding of them for the policies without parameters or variables."""

    def __init__(self, a: Attributes, lookup: Callable[[str], Obj | None]) -> None:
        self.a = a
        self._lookup = lookup
        self._namespace: Obj | None = _UNSET
        self._request: Obj | None = None
        self._shared: Bound | None = None
        self._params: dict[str, Obj] = {}  # "<binding's index>/<param's index>" -> object
        # verdicts of bindings (index, param index) decided together (`admission_fast.decide`)
        self.decided: dict[tuple[int, int], tuple[list[tuple[str, str]], dict[str, str]]] = {}
        self._fast: Bound | None = None

    def params(self, index: int, params: list[Obj | None]) -> None:
        """The parameter objects of the binding at `index`, for the one activation."""
        for j, p in enumerate(params[:PER_BINDING]):
            if p is not None:
                self._params[f"{index}/{j}"] = p

    def fast_bound(self) -> Bound:
        if self._fast is None:
            data = self.data(None)
            data[_PARAMS] = self._params
            self._fast = _fast_env().bind(data)
        return self._fast

    @property
    def namespace_obj(self) -> Obj | None:
        if self._namespace is _UNSET:
            self._namespace = self._lookup(self.a.namespace) if self.a.namespace else None
        return self._namespace

    def data(self, params: Obj | None) -> dict[str, Any]:
        if self._request is None:
            self._request = _request(self.a)
        return {
            "object": self.a.obj,
            "oldObject": self.a.old,
            "request": self._request,
            "params": params,
            "namespaceObject": self.namespace_obj,
            "authorizer": _AUTHORIZER,
            "authorizer.requestResource": self._request_resource(),
            "variables": {},
        }

    def _request_resource(self) -> Obj:
        a = self.a
        return authz.request_resource(
            a.rtype.group, a.rtype.plural, a.subresource, a.namespace or "", a.name
        )

    def shared(self) -> Bound:
        if self._shared is None:
            self._shared = _env().bind(self.data(None))
        return self._shared


def _request(a: Attributes) -> Obj:
    t = a.rtype
    user = a.user
    return {
        "kind": {"group": t.group, "version": t.version, "kind": t.kind},
        "resource": {"group": t.group, "version": t.version, "resource": t.plural},
        "subResource": a.subresource,
        "requestKind": {"group": t.group, "version": t.version, "kind": t.kind},
        "requestResource": {"group": t.group, "version": t.version, "resource": t.plural},
        "name": a.name,
        "namespace": a.namespace or "",
        "operation": a.operation,
        "userInfo": {
            "username": user.name if user else "",
            "uid": getattr(user, "uid", "") or "" if user else "",
            "groups": list(user.groups) if user else [],
            "extra": {},
        },
        "dryRun": a.dry_run,
    }


@dataclass(frozen=True)
class _Prepared:
    """One binding for one request: whether it matches, its parameter objects (None: the
    policy has no paramKind), the violations its parameters' lookup made, and the error it
    raised (the request's answer, once the bindings before it have had their say)."""

    matched: bool
    params: list[Obj | None]
    violations: list[tuple[str, str]]
    error: errors.StatusError | None = None


# ---- matching ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Match:
    """A matchConstraints or matchResources, its selectors made matchers once (per change of
    the policies or bindings, not per request)."""

    valid: bool  # an object at all (else it matches nothing)
    narrowing: bool
    equivalent: bool
    rules: tuple[Any, ...]
    excludes: tuple[Any, ...]
    namespace: Callable[[Mapping[str, str]], bool] | None
    objects: Callable[[Mapping[str, str]], bool] | None
    # the rules' verdict by the request's operation and resource (a rule naming resources by
    # name is judged per request): worked out once per kind of request, not per request
    by_name: bool = False
    memo: dict[tuple[Any, ...], bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, match: Any, *, narrowing: bool = False) -> _Match:
        """`narrowing`: a binding's matchResources, whose absent resourceRules mean
        everything its policy matches (only its selectors and excludes narrow it), as in
        Kubernetes."""
        if not isinstance(match, dict):
            return cls(False, narrowing, True, (), (), None, None)
        namespace, objects = match.get("namespaceSelector"), match.get("objectSelector")
        rules = tuple(match.get("resourceRules") or ())
        excludes = tuple(match.get("excludeResourceRules") or ())
        return cls(
            True,
            narrowing,
            match.get("matchPolicy", "Equivalent") != "Exact",
            rules,
            excludes,
            None if namespace is None else selector_matcher(namespace, empty=True),
            None if objects is None else selector_matcher(objects, empty=True),
            any(isinstance(r, dict) and r.get("resourceNames") for r in rules + excludes),
        )

    def _rules(self, a: Attributes) -> bool:
        equivalent = self.equivalent
        if (self.rules or not self.narrowing) and not any(
            _rule(r, a, equivalent) for r in self.rules
        ):
            return False
        return not any(_rule(r, a, equivalent) for r in self.excludes)

    def __call__(self, a: Attributes, admission: _Admission) -> bool:
        if not self.valid:
            return False
        if self.by_name:
            ruled = self._rules(a)
        else:
            t = a.rtype
            key = (a.operation, t.group, t.version, t.plural, t.namespaced, a.subresource)
            ruled = self.memo.get(key)  # type: ignore[assignment]
            if ruled is None:
                if len(self.memo) >= 1024:  # bounded: kinds of requests, not requests
                    self.memo.clear()
                ruled = self.memo[key] = self._rules(a)
        if not ruled:
            return False
        if self.namespace is not None:
            if a.rtype.namespaced:
                scoped = _labels(admission.namespace_obj)  # the namespace the object lives in
            elif a.rtype.group == "" and a.rtype.plural == "namespaces":
                scoped = _labels(a.obj or a.old)  # a Namespace is matched on its own labels
            else:
                scoped = None  # other cluster-scoped objects: no namespace to select
            if scoped is not None and not self.namespace(scoped):
                return False
        if self.objects is None:
            return True
        # a missing object (the new one on delete, the old one on create) matches nothing
        return (a.obj is not None and self.objects(_labels(a.obj))) or (
            a.old is not None and self.objects(_labels(a.old))
        )


def _labels(obj: Obj | None) -> dict[str, str]:
    labels = ((obj or {}).get("metadata") or {}).get("labels")
    return labels if isinstance(labels, dict) else {}


def _rule(rule: Any, a: Attributes, equivalent: bool) -> bool:
    if not isinstance(rule, dict):
        return False
    t = a.rtype
    ops = rule.get("operations") or ()
    if "*" not in ops and a.operation not in ops:
        return False
    if not _any(rule.get("apiGroups"), t.group):
        return False
    if not equivalent and not _any(rule.get("apiVersions"), t.version):
        return False
    if not _resource(rule.get("resources") or (), t.plural, a.subresource):
        return False
    scope = rule.get("scope", "*")
    if (scope == "Cluster" and t.namespaced) or (scope == "Namespaced" and not t.namespaced):
        return False
    names = rule.get("resourceNames") or ()
    return not names or a.name in names


def _any(values: Any, value: str) -> bool:
    return isinstance(values, list) and ("*" in values or value in values)


def _resource(patterns: Iterable[str], plural: str, subresource: str) -> bool:
    want = f"{plural}/{subresource}" if subresource else plural
    for p in patterns:
        if p in ("*/*", want):
            return True
        if p == "*" and not subresource:
            return True
        head, _, tail = p.partition("/")
        if tail == "*" and head == plural and subresource:
            return True
        if head == "*" and tail == subresource and subresource:
            return True
    return False
