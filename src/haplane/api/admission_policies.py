"""ValidatingAdmissionPolicy: the central policy layer's admission, as kube-apiserver's
validating admission policy plugin (k8s.io/apiserver/pkg/admission/plugin/policy/validating).

Layer: api. Pure over what it is given: the policies, bindings, namespaces and parameter
objects come from the replica's watch caches (callables the server hands in), never from etcd
per request; the CEL is `haplane.cel`.

For each write (create, update, delete) of any resource, every binding whose policy matches:
1. match: the policy's `matchConstraints` and the binding's `matchResources` (resourceRules and
   excludeResourceRules: operations, apiGroups, apiVersions, resources with subresources and
   wildcards, scope, resourceNames; `matchPolicy` Equivalent lets a rule for one version of a
   resource match its others; `namespaceSelector` on the namespace's labels (a Namespace
   itself is matched on its own labels; other cluster-scoped objects always pass);
   `objectSelector` on the object's or the old object's labels);
2. params: the policy's `paramKind`, found by the binding's `paramRef` (name, or selector;
   namespace, else the request's for namespaced params); none found: `parameterNotFoundAction`
   Allow skips the binding, Deny denies; several: each is evaluated;
3. `variables` (lazily, as Kubernetes': each the first time an expression reads it, once; one
   that fails only fails what uses it), `matchConditions` (all true,
   else the policy does not apply), `validations` (false: a violation with `message`,
   `messageExpression` or "failed expression: EXPR", and `reason`'s HTTP code),
   `auditAnnotations` (`POLICY/KEY: value`);
4. an expression that fails: `failurePolicy` Fail makes it a violation, Ignore skips it;
5. the binding's `validationActions`: Deny refuses the request (the first violation's
   message, Kubernetes' wording), Warn adds a `Warning` header, Audit an audit annotation
   (`validation.policy.admission.k8s.io/validation_failure`).

Variables: `object`, `oldObject` (null on create, `object` null on delete), `request`
(kind, resource, subResource, name, namespace, operation, userInfo, dryRun), `params`,
`namespaceObject`, `variables`, `authorizer` and `authorizer.requestResource` (Kubernetes'
authorizer library, `haplane.cel.authz`: a check asks the replica's RBAC authorizer, memory
only; the user is the request's, or a ServiceAccount the policy names). Expressions are compiled
with every variable `dyn` (checked for syntax and functions; types at evaluation); their
checking against the matched kinds' schemas is `haplane.api.policy_type_checking`, whose
warnings the controllers write to each policy's status.

How it is evaluated: every binding of a request first on one CEL activation (`_fast`: its
parameter objects in variables of their own, each policy's expressions compiled once with
`cel.bind` for its parameters and the variables they read); a binding whose expression errs,
gives no bool, or does not compile so is then evaluated on its own as described above
(`_evaluate`), whose verdict and messages are the reference (`tests/test_admission_fast.py`
compares both on random policies).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from haplane.auth.rbac import selector_matcher, selector_matches
from haplane.auth.user import Attributes as AuthzAttributes
from haplane.auth.user import UserInfo
from haplane.cel import Bound, CompileError, Environment, EvalError, Program, authz

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
AUDIT_FAILURE = "validation.policy.admission.k8s.io/validation_failure"
_CODES = {"Unauthorized": 401, "Forbidden": 403, "Invalid": 422, "RequestEntityTooLarge": 413}


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


class _Slow(Exception):
    """The one-activation evaluation cannot decide alone: evaluate as Kubernetes describes."""


@dataclass
class Notes:
    """What admission had to say besides allowing: `Warning` headers and audit annotations,
    collected for the request being served (`NOTES`)."""

    warnings: list[str] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)


# the notes of the request this task serves (set by the server's admission link)
NOTES: ContextVar[Notes | None] = ContextVar("haplane_admission_notes", default=None)


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


@dataclass(frozen=True)
class Finding:
    policy: str
    binding: str
    actions: tuple[str, ...]
    message: str


def select_params(
    objects: Iterable[Obj], namespaced: bool, namespace: str | None, name: str | None, selector: Any
) -> list[Obj]:
    """A paramRef's objects among `objects` of the paramKind: in `namespace` (a namespaced
    kind), of `name`, matching `selector` (an empty one matches every object). A namespaced
    kind without a namespace (a cluster-scoped request, no paramRef.namespace) is a
    configuration error: ValueError (never params from every namespace)."""
    if namespaced and not namespace:
        raise ValueError(
            "cannot use a namespaced paramKind without paramRef.namespace for a cluster-scoped "
            "resource"
        )
    out = []
    for obj in objects:
        meta = obj.get("metadata") or {}
        if namespaced and namespace and meta.get("namespace") != namespace:
            continue
        if name and meta.get("name") != name:
            continue
        if selector is not None and not selector_matches(
            selector, meta.get("labels") or {}, empty=True
        ):
            continue
        out.append(obj)
    return out


# (apiVersion, kind, namespace or None, name or None, selector or None) -> parameter objects
ParamLookup = Callable[[str, str, str | None, str | None, Any], list[Obj] | None]


# an authorization question (haplane.auth.user.Attributes) -> (allowed, reason, error)
Authorize = Callable[[AuthzAttributes], tuple[bool, str, str]]


# Kubernetes charges 350,000 per check against a runtime budget of 10,000,000 per binding:
# about this many checks; more fail the evaluation (each also costs a lookup in the index)
CHECKS_PER_BINDING = 28


class AuthorizerNotReady(Exception):
    """Raised by an `Authorize` whose view is partial (its caches reload): the request gets
    503, never a decision from a partial view."""


class _Checks:
    """The `authorizer` library's checks for one request: as its user, or as a
    ServiceAccount the expression names; at most CHECKS_PER_BINDING per binding, each
    question asked once per request (never through the replica's shared decision cache,
    which a policy's loop over names would flood)."""

    def __init__(self, authorize: Authorize | None, user: UserInfo | None) -> None:
        self.authorize = authorize
        self.user = user
        self.count = 0  # in the binding being evaluated
        self.unready = False
        self._asked: dict[AuthzAttributes, tuple[bool, str, str]] = {}

    def __call__(self, service_account: str, attrs: Mapping[str, str]) -> tuple[bool, str, str]:
        if self.authorize is None:
            return False, "", "no authorizer is available here (a background audit)"
        self.count += 1
        if self.count > CHECKS_PER_BINDING:
            raise authz.AuthzError(
                f"more than {CHECKS_PER_BINDING} authorization checks in one binding's "
                "evaluation (Kubernetes' runtime cost budget allows about as many)"
            )
        if service_account:
            namespace, _, name = service_account.partition("/")
            # as Kubernetes' ServiceAccountInfo.UserInfo(): no system:authenticated
            who = f"system:serviceaccount:{namespace}:{name}"
            groups: tuple[str, ...] = (
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
            )
        elif self.user is not None:
            who, groups = self.user.name, tuple(self.user.groups)
        else:
            return False, "", "the request has no user to check"
        if "path" in attrs:
            question = AuthzAttributes(
                who, groups, attrs["verb"], path=attrs["path"], resource_request=False
            )
        else:
            question = AuthzAttributes(
                who,
                groups,
                attrs["verb"],
                namespace=attrs["namespace"],
                api_group=attrs["group"],
                resource=attrs["resource"],
                subresource=attrs["subresource"],
                name=attrs["name"],
            )
        answer = self._asked.get(question)
        if answer is None:
            try:
                answer = self.authorize(question)
            except AuthorizerNotReady as exc:
                self.unready = True
                return False, "", str(exc)  # not remembered: the request gets 503
            self._asked[question] = answer
        return answer


class PolicyEngine:
    def __init__(
        self,
        policies: Callable[[], Iterable[Obj]],
        bindings: Callable[[], Iterable[Obj]],
        namespace: Callable[[str], Obj | None],
        params: ParamLookup,
        version: Callable[[], Hashable] | None = None,
        authorize: Authorize | None = None,
    ) -> None:
        """`version`: changes whenever the policies or bindings do (the watch caches'
        revisions): the pairs are then worked out once per change, not per request.
        `authorize`: what the `authorizer` variable's checks ask (none: each check's decision
        is an error)."""
        self.policies = policies
        self.bindings = bindings
        self.namespace = namespace
        self.params = params
        self.version = version
        self.authorize = authorize
        self._cached: tuple[Hashable, list[_Pair]] | None = None
        # the request's bindings as one program (`_decide`), by which bindings and parameter
        # objects it holds; emptied when the pairs are worked out again
        self._combined: dict[tuple[Any, ...], list[_Chunk]] = {}

    def admit(self, a: Attributes) -> None:
        """Raise the first Deny binding's violation as a Status; note warnings and audit
        annotations for the rest."""
        if a.rtype.group == "admissionregistration.k8s.io":
            return  # policies never police themselves (Kubernetes: not intercepted)
        pairs = self._current()
        if not pairs:
            return
        notes = NOTES.get()
        admission = _Admission(a, self.namespace)
        checks = _Checks(self.authorize, a.user)
        token = authz.CHECKER.set(checks)
        try:
            prepared = self._prepare(pairs, admission)
            self._decide(pairs, prepared, admission)
            for pair, ready in zip(pairs, prepared, strict=True):
                self._one(pair, admission, notes, ready)
        except errors.StatusError:
            if checks.unready:  # a denial may rest on a check that had no answer
                raise _unready() from None
            raise
        finally:
            authz.CHECKER.reset(token)
        if checks.unready:
            raise _unready()

    def findings(self, a: Attributes) -> list[Finding]:
        """Every violation of every matching binding, whatever its actions (`haplane policy
        report`: existing objects checked as if created now)."""
        out = []
        admission = _Admission(a, self.namespace)
        token = authz.CHECKER.set(_Checks(self.authorize, a.user))
        try:
            pairs = self._current()
            for pair, prepared in zip(pairs, self._prepare(pairs, admission), strict=True):
                violations, _ = self._violations(pair, admission, prepared)
                for message, _reason in violations:
                    out.append(Finding(pair.pname, pair.bname, pair.actions, message))
        finally:
            authz.CHECKER.reset(token)
        return out

    def _current(self) -> list[_Pair]:
        """The bindings (by name) with their policies, worked out again only when `version`
        says the policies or bindings changed."""
        key = self.version() if self.version is not None else None
        if key is not None and self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        by_name = {
            (p.get("metadata") or {}).get("name"): p for p in self.policies() if isinstance(p, dict)
        }
        pairs: list[_Pair] = []
        for binding in sorted(
            self.bindings(), key=lambda b: str((b.get("metadata") or {}).get("name"))
        ):
            policy = by_name.get((binding.get("spec") or {}).get("policyName"))
            if policy is not None:
                pairs.append(_Pair.of(policy, binding, len(pairs)))
        self._combined = {}  # made of the pairs before
        if key is not None:
            self._cached = (key, pairs)
        return pairs

    # ---- one binding ----------------------------------------------------------------------

    def _prepare(self, pairs: list[_Pair], admission: _Admission) -> list[_Prepared]:
        """Which bindings match, and their parameters, before any is evaluated: the request's
        one activation holds every parameter object (`admission.fast_bound`)."""
        out = []
        a = admission.a
        for pair in pairs:
            found: list[tuple[str, str]] = []
            if not pair.match(a, admission) or (
                pair.narrow is not None and not pair.narrow(a, admission)
            ):
                out.append(_Prepared(False, [], found))
                continue
            try:
                params = self._params(
                    pair.pspec, pair.bspec, a, pair.pname, pair.bname, pair.fail, found
                )
            except errors.StatusError as exc:  # e.g. the parameters' cache reloads: raised
                out.append(_Prepared(True, [], found, exc))  # when this binding's turn comes
                continue
            out.append(_Prepared(True, params, found))
            admission.params(pair.index, params)
        return out

    def _violations(
        self, pair: _Pair, admission: _Admission, prepared: _Prepared
    ) -> tuple[list[tuple[str, str]], dict[str, str]]:
        """(violations as (message, reason), audit annotations) of one binding."""
        checks = authz.CHECKER.get()
        if isinstance(checks, _Checks):
            checks.count = 0  # a budget per binding, as Kubernetes'
        if prepared.error is not None:
            raise prepared.error
        violations: list[tuple[str, str]] = list(prepared.violations)
        annotations: dict[str, str] = {}
        if not prepared.matched:
            return violations, annotations
        for j, params in enumerate(prepared.params):
            self._evaluate(pair, admission, params, j, violations, annotations)
        return violations, annotations

    def _one(
        self, pair: _Pair, admission: _Admission, notes: Notes | None, prepared: _Prepared
    ) -> None:
        pname, bname, actions = pair.pname, pair.bname, pair.actions
        violations, annotations = self._violations(pair, admission, prepared)
        if notes is not None:
            notes.annotations.update(annotations)
        if not violations:
            return
        if "Audit" in actions and notes is not None:
            found = [
                {
                    "message": m,
                    "policy": pname,
                    "binding": bname,
                    "expressionIndex": i,
                    "validationActions": sorted(actions),
                }
                for i, (m, _) in enumerate(violations)
            ]
            earlier = json.loads(notes.annotations.get(AUDIT_FAILURE, "[]"))
            notes.annotations[AUDIT_FAILURE] = json.dumps(earlier + found)
        if "Warn" in actions and notes is not None:
            notes.warnings += [
                f"Validation failed for ValidatingAdmissionPolicy '{pname}' with binding "
                f"'{bname}': {m}"
                for m, _ in violations
            ]
        if "Deny" in actions:
            message, reason = violations[0]
            raise _denied(admission.a, pname, bname, message, reason)

    def _params(
        self,
        pspec: Obj,
        bspec: Obj,
        a: Attributes,
        pname: str,
        bname: str,
        fail: bool,
        violations: list[tuple[str, str]],
    ) -> list[Obj | None]:
        kind = pspec.get("paramKind")
        if not isinstance(kind, dict):
            return [None]
        ref = bspec.get("paramRef")
        if not isinstance(ref, dict):
            if fail:
                violations.append(
                    (
                        f"policy '{pname}' needs parameters but binding '{bname}' has no paramRef",
                        "Invalid",
                    )
                )
            return []
        namespace = ref.get("namespace") or a.namespace
        try:
            found = self.params(
                str(kind.get("apiVersion")),
                str(kind.get("kind")),
                namespace,
                ref.get("name"),
                ref.get("selector"),
            )
        except ValueError as exc:
            if fail:
                violations.append((f"failed to configure binding: {exc}", "Invalid"))
            return []
        if found is None:  # the kind is not served here
            if fail:
                violations.append(
                    (f"failed to configure binding: paramKind {kind} is not served", "Invalid")
                )
            return []
        if not found:
            if ref.get("parameterNotFoundAction") == "Deny":
                violations.append(
                    (
                        "no params found for policy binding with `Deny` parameterNotFoundAction",
                        "Invalid",
                    )
                )
            return []
        return list(found)

    def _evaluate(
        self,
        pair: _Pair,
        admission: _Admission,
        params: Obj | None,
        j: int,
        violations: list[tuple[str, str]],
        annotations: dict[str, str],
    ) -> None:
        """`j`: the index of `params` among the binding's parameter objects."""
        if pair.fast and j < PER_BINDING:
            key = None if params is None else f"{pair.index}/{j}"
            found = admission.decided.pop((pair.index, j), None)
            if found is None:
                found = self._fast(pair, admission.fast_bound(), key)
            if found is not None:
                violations += found[0]
                annotations.update(found[1])
                return
        fail = pair.fail
        failed: dict[str, str] = {}
        # variables are worked out lazily, as Kubernetes does: each the first time an
        # expression that reads it runs (an unused one costs nothing, nor spends the binding's
        # authorizer checks), and once; `binding` is rebound when one is added
        data: dict[str, Any] | None = None
        done: set[str] = set()
        binding: list[Bound] = []
        if params is None and not pair.variables:
            binding.append(admission.shared())  # one binding for every such policy
        else:
            data = admission.data(params)

        def bound_for(check: _Check) -> Bound:
            if data is None:
                return binding[0]
            missing = [(n, c) for n, c in check.uses if n not in done]
            for name, variable in missing:
                done.add(name)
                try:
                    value = variable(data)
                    data["variables"] = {**data["variables"], name: value}
                except (CompileError, EvalError) as exc:
                    failed[name] = str(exc)  # only what uses it fails
            if missing or not binding:
                binding[:] = [_env().bind(data)]
            return binding[0]

        def run(check: _Check) -> Any:
            try:
                return check(bound_for(check))
            except (CompileError, EvalError) as exc:
                bad = [n for n in failed if f"variables.{n}" in check.text]
                why = f"variable '{bad[0]}': {failed[bad[0]]}" if bad else str(exc)
                raise EvalError(why) from None

        # as Kubernetes' matcher: a condition that is false (here also: no bool) makes the
        # policy not apply, even after one that failed; only then does a failure count
        failure = None
        for name, check in pair.conditions:
            try:
                if run(check) is not True:
                    return  # the policy does not apply to this request
            except EvalError as exc:
                failure = failure or f"failed to evaluate matchCondition '{name}': {exc}"
        if failure is not None:
            if fail:
                violations.append((failure, "Invalid"))
            return
        for v in pair.validations:
            try:
                ok = run(v.check)
            except EvalError as exc:
                if fail:
                    violations.append(
                        (f"expression '{v.check.source}' resulted in error: {exc}", "Invalid")
                    )
                continue
            if ok is True:
                continue
            if ok is not False:
                if fail:
                    violations.append(
                        (f"expression '{v.check.source}' did not return a bool", "Invalid")
                    )
                continue
            violations.append((_message(v, run), v.reason))
        for key, check in pair.notes:
            try:
                value = run(check)
            except EvalError:
                continue
            if isinstance(value, str) and value:
                annotations[f"{pair.pname}/{key}"] = value

    def _decide(self, pairs: list[_Pair], prepared: list[_Prepared], admission: _Admission) -> None:
        """The bindings that may be, decided by as few evaluations as can be: programs of up
        to CHUNK bindings each, each a list with one element per binding (each call into the
        engine costs 3-5 µs besides its expression: with ten policies, one list halves the
        engine's time). A binding's element is null when one of its conditions is false, else
        the list of its validations' and audit annotations' values; it is decided when those
        are bools where bools are wanted and its failed validations have no message
        expression. A program that fails decides nothing (each binding is then evaluated on
        its own: `_fast`, then `_evaluate`), and one that keeps failing for this kind of
        request is left out until the policies change."""
        signature = []
        for pair, ready in zip(pairs, prepared, strict=True):
            if pair.fast and ready.matched and ready.error is None and ready.params:
                signature.append(
                    (pair.index, min(len(ready.params), PER_BINDING), ready.params[0] is None)
                )
        if len(signature) < 2:
            return
        key = tuple(signature)
        chunks = self._combined.get(key)
        if chunks is None:
            by_index = {pair.index: pair for pair in pairs}
            units = [
                _Unit(by_index[i], j, None if none else f"{i}/{j}")
                for i, n, none in signature
                for j in range(n)
            ]
            chunks = self._combined[key] = _combine(units)
            if len(self._combined) > 256:  # kinds of requests: bounded all the same
                self._combined = {key: chunks}
        decided = admission.decided
        for chunk in chunks:
            if chunk.failed > 2 * chunk.decided + 8:
                continue  # it fails more often than not: not worth its evaluation
            try:
                values = chunk.program.eval(admission.fast_bound())
            except EvalError:
                chunk.failed += 1
                continue
            chunk.decided += 1
            for u, value in zip(chunk.units, values, strict=True):
                pair = u.pair
                if value is None:
                    decided[(pair.index, u.j)] = ([], {})  # a condition is false
                    continue
                violations = []
                for v, ok in zip(pair.validations, value, strict=False):
                    if ok is False and v.message_check is None:
                        violations.append((v.message or f"failed expression: {v.check.source}",
                                           v.reason))  # fmt: skip
                    elif ok is not True:
                        break  # no bool, or a message to evaluate: on its own
                else:
                    noted = value[len(pair.validations) :]
                    annotations = {
                        f"{pair.pname}/{name}": text
                        for (name, _), text in zip(pair.notes, noted, strict=True)
                        if isinstance(text, str) and text
                    }
                    decided[(pair.index, u.j)] = (violations, annotations)

    @staticmethod
    def _fast(
        pair: _Pair, bound: Bound, key: str | None
    ) -> tuple[list[tuple[str, str]], dict[str, str]] | None:
        """The binding's verdict on the request's one activation (its parameters at
        `__params[key]`, none when None), or None when an expression failed, did not compile
        as bound there, or gave no bool: the caller then evaluates it its own way
        (`_evaluate`), whose messages say which part failed. A variable is evaluated for each
        expression that reads it."""

        def run(check: _Check) -> Any:
            program = check.fast(key)
            if program is None:
                raise _Slow
            return program.eval(bound)

        try:
            for _, check in pair.conditions:
                if run(check) is not True:
                    return [], {}  # the policy does not apply to this request
            violations = []
            for v in pair.validations:
                ok = run(v.check)
                if ok is True:
                    continue
                if ok is not False:
                    raise _Slow
                message = v.message or f"failed expression: {v.check.source}"
                if v.message_check is not None:
                    text = run(v.message_check)
                    if (
                        isinstance(text, str)
                        and text.strip()
                        and not any(c in text for c in "\r\n")
                    ):
                        message = text
                violations.append((message, v.reason))
            annotations = {}
            for key, check in pair.notes:
                value = run(check)
                if isinstance(value, str) and value:
                    annotations[f"{pair.pname}/{key}"] = value
        except (_Slow, EvalError):
            return None
        return violations, annotations


@dataclass(frozen=True)
class _Prepared:
    """One binding for one request: whether it matches, its parameter objects (None: the
    policy has no paramKind), the violations its parameters' lookup made, and the error it
    raised (the request's answer, once the bindings before it have had their say)."""

    matched: bool
    params: list[Obj | None]
    violations: list[tuple[str, str]]
    error: errors.StatusError | None = None


@dataclass(frozen=True)
class _Unit:
    """A binding with one of its parameter objects (its key in `__params`, or none)."""

    pair: _Pair
    j: int
    key: str | None


@dataclass
class _Chunk:
    """A program deciding `units` together, and how often it did and failed to."""

    program: Program
    units: list[_Unit]
    decided: int = 0
    failed: int = 0


# bindings per program: a failing one undecides no more than these, and a program's text
# stays far below the engine's limits (100,000 characters)
CHUNK = 16


def _combine(units: list[_Unit]) -> list[_Chunk]:
    """Programs for `units` (those whose every expression can be evaluated on the one
    activation), each the list of up to CHUNK elements: per binding, null when a condition
    is false (`&&`: a false one wins over one that fails, as in Kubernetes' matcher), else
    the list of its validations' values then its audit annotations'."""
    elements: list[tuple[_Unit, str]] = []
    for u in units:
        pair = u.pair
        conditions = [c for _, c in pair.conditions]
        values = [v.check for v in pair.validations] + [c for _, c in pair.notes]
        if any(c.fast(u.key) is None for c in conditions + values):  # (compiled once, kept)
            continue
        listed = f"dyn([{', '.join(c.fast_text(u.key) for c in values)}])"
        if conditions:
            test = " && ".join(c.fast_text(u.key) for c in conditions)
            listed = f"(({test}) == true ? {listed} : dyn(null))"
        elements.append((u, listed))
    chunks = []
    for at in range(0, len(elements), CHUNK):
        part = elements[at : at + CHUNK]
        program = _fast_compile(f"[{', '.join(text for _, text in part)}]")
        if program is not None and len(part) > 1:
            chunks.append(_Chunk(program, [u for u, _ in part]))
    return chunks


def _unready() -> errors.StatusError:
    return errors.unavailable(
        "an admission policy asked the authorizer while its RBAC caches reload: try again"
    )


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
    """The policy's variables that `text` reads, with those they read, in declaration order:
    all of them when it reads `variables` other than by a field name."""
    if not variables or "variables" not in text:
        return []
    wanted: set[str] = set()
    todo = [text]
    while todo:
        t = todo.pop()
        if _ANY_VARIABLE.search(t):
            return list(variables)
        for name, check in variables:
            if name not in wanted and re.search(
                rf"\bvariables\s*\.\s*\??\s*{re.escape(name)}\b", t
            ):
                wanted.add(name)
                todo.append(check.text)
    return [(n, c) for n, c in variables if n in wanted]


# `variables` not followed by `.name` (indexed, passed whole...)
_ANY_VARIABLE = re.compile(r"\bvariables\b(?!\s*\.\s*\??\s*[A-Za-z_])")


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
        # verdicts of bindings (index, param index) decided together (`PolicyEngine._decide`)
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


def _message(v: _Validation, run: Callable[[_Check], Any]) -> str:
    if v.message_check is not None:
        try:
            text = run(v.message_check)
        except EvalError:
            text = None
        if isinstance(text, str) and text.strip() and not any(c in text for c in "\r\n"):
            return text
    if v.message:
        return v.message
    return f"failed expression: {v.check.source}"


def _denied(
    a: Attributes, policy: str, binding: str, message: str, reason: str
) -> errors.StatusError:
    text = (
        f"ValidatingAdmissionPolicy '{policy}' with binding '{binding}' denied request: {message}"
    )
    code = _CODES.get(reason, 422)
    # Kubernetes' admission.NewForbidden, whatever the reason: "... is forbidden: ...", the
    # code and reason then the policy's, the message also as a cause. The name: the
    # object's (a create named from generateName has its generated one by now)
    name = a.name or str(((a.obj or {}).get("metadata") or {}).get("name") or "")
    details = {
        "name": name,
        "group": a.rtype.group,
        "kind": a.rtype.plural,
        "causes": [{"message": text}],
    }
    status_reason = {
        401: "Unauthorized",
        403: "Forbidden",
        413: "RequestEntityTooLarge",
        422: "Invalid",
    }[code]
    message = f'{a.rtype.qualified} "{name}" is forbidden: {text}'
    return errors.StatusError(code, status_reason, message, details=details)


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
