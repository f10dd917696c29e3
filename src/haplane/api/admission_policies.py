"""ValidatingAdmissionPolicy: the central policy layer's admission, as kube-apiserver's
validating admission policy plugin (k8s.io/apiserver/pkg/admission/plugin/policy/validating).

Layer: api. Pure over what it is given: the policies, bindings, namespaces and parameter
objects come from the replica's watch caches (callables the server hands in), never from etcd
per request; the CEL is `haplane.cel`. Here: the public API (`PolicyEngine`, `Attributes`,
`Notes` and `NOTES`, `Finding`, `select_params`) and the engine: the bindings with their
policies, worked out once per change of them, then per request their matching, parameters,
evaluation as Kubernetes describes it, the authorizer's checks, and the answer. What a policy
compiles to, its matching and the request's variables are `haplane.api.admission_compiled`;
the fast paths are `haplane.api.admission_fast`; both are below this module, never importing
it.

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

How it is evaluated: every binding of a request first on one CEL activation
(`haplane.api.admission_fast`: its parameter objects in variables of their own, each policy's
expressions compiled once with `cel.bind` for its parameters and the variables they read); a
binding whose expression errs, gives no bool, or does not compile so is then evaluated on its
own as described above (`_evaluate`), whose verdict and messages are the reference
(`tests/test_admission_fast.py` compares both on random policies).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from haplane.auth.rbac import selector_matches
from haplane.auth.user import Attributes as AuthzAttributes
from haplane.auth.user import UserInfo
from haplane.cel import Bound, CompileError, EvalError, authz

from . import admission_fast, errors
from .admission_compiled import (
    PER_BINDING,
    _Admission,
    _Check,
    _env,
    _Pair,
    _Prepared,
    _Validation,
)

# the public API defined with the compiled policies, re-exported
from .admission_compiled import VARIABLES as VARIABLES
from .admission_compiled import Attributes as Attributes
from .admission_compiled import compile_expression as compile_expression
from .resources import Obj

AUDIT_FAILURE = "validation.policy.admission.k8s.io/validation_failure"
_CODES = {"Unauthorized": 401, "Forbidden": 403, "Invalid": 422, "RequestEntityTooLarge": 413}


@dataclass
class Notes:
    """What admission had to say besides allowing: `Warning` headers and audit annotations,
    collected for the request being served (`NOTES`)."""

    warnings: list[str] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)


# the notes of the request this task serves (set by the server's admission link)
NOTES: ContextVar[Notes | None] = ContextVar("haplane_admission_notes", default=None)


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
        # the request's bindings as one program (`admission_fast.decide`), by which bindings
        # and parameter objects it holds; emptied when the pairs are worked out again
        self._combined: admission_fast.Combined = {}

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
            admission_fast.decide(self._combined, pairs, prepared, admission)
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
                found = admission_fast.verdict(pair, admission.fast_bound(), key)
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

        order = {name: i for i, (name, _) in enumerate(pair.variables)}

        def prime(checks: Iterable[_Check | None]) -> Bound:
            """The binding with every variable these checks read worked out (rebound once
            when any was added)."""
            if data is None:
                return binding[0]
            added = False
            for check in checks:
                for name, variable in check.uses if check is not None else ():
                    if name in done:
                        continue
                    done.add(name)
                    added = True
                    # it sees only the variables declared before it, as in Kubernetes
                    seen = {k: v for k, v in data["variables"].items() if order[k] < order[name]}
                    try:
                        value = variable({**data, "variables": seen})
                        data["variables"] = {**data["variables"], name: value}
                    except (CompileError, EvalError) as exc:
                        failed[name] = str(exc)  # only what uses it fails
            if added or not binding:
                binding[:] = [_env().bind(data)]
            return binding[0]

        def run(check: _Check) -> Any:
            try:
                return check(prime((check,)))
            except (CompileError, EvalError) as exc:
                # a variable that failed, when the error is its absence from `variables`
                said = str(exc)
                bad = [n for n in failed if f"Key not found in map : {json.dumps(n)}" in said]
                why = f"variable '{bad[0]}': {failed[bad[0]]}" if bad else str(exc)
                raise EvalError(why) from None

        # as Kubernetes' matcher: a condition that is false (here also: no bool) makes the
        # policy not apply, even after one that failed; only then does a failure count
        failure = None
        prime(check for _, check in pair.conditions)  # (one binding for all of them)
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
        # what every validation and annotation reads, bound once (a message's variables
        # only if it is needed: `run` adds them)
        prime([*(v.check for v in pair.validations), *(check for _, check in pair.notes)])
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


def _unready() -> errors.StatusError:
    return errors.unavailable(
        "an admission policy asked the authorizer while its RBAC caches reload: try again"
    )


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
