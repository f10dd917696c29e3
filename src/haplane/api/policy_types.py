"""The served types of the policy layer: admissionregistration.k8s.io/v1
ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding (stored in the region's etcd,
replicated like any object, so every region enforces the same policies), validated as
Kubernetes validates them (pkg/apis/admissionregistration/validation), every CEL expression
compiled at the write: one that does not compile is a 422 naming the field and position.

Layer: api. The admission itself is `haplane.api.admission_policies`.
"""

from __future__ import annotations

import re
from typing import Any

from haplane.auth.rbac import selector_errors
from haplane.cel import CompileError

from .resources import Obj, ResourceType, Strategy
from .validation import FieldError

GROUP = "admissionregistration.k8s.io"
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT", "*")
SCOPES = ("*", "Cluster", "Namespaced")
ACTIONS = ("Deny", "Warn", "Audit")
REASONS = ("Unauthorized", "Forbidden", "Invalid", "RequestEntityTooLarge")
NAME_CHARS = "a CEL identifier: letters, digits and _, not starting with a digit"


def _err(path: str, reason: str, message: str, value: Any = None) -> FieldError:
    return FieldError(path, reason, message, None if value is None else str(value))


def _compile_errors(expression: Any, path: str) -> list[FieldError]:
    from .admission_policies import compile_expression

    if not isinstance(expression, str) or not expression.strip():
        return [_err(path, "FieldValueRequired", "a CEL expression is required")]
    try:
        compile_expression(expression)
    except CompileError as exc:
        return [_err(path, "FieldValueInvalid", f"compilation failed: {exc}", expression)]
    return []


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _rules_errors(rules: Any, path: str, *, required: bool) -> list[FieldError]:
    if rules is None:
        return [_err(path, "FieldValueRequired", "at least one rule")] if required else []
    if not isinstance(rules, list) or (required and not rules):
        return [_err(path, "FieldValueRequired", "a list of at least one rule")]
    errs = []
    for i, rule in enumerate(rules):
        at = f"{path}[{i}]"
        if not isinstance(rule, dict):
            errs.append(_err(at, "FieldValueInvalid", "must be an object"))
            continue
        for f in ("apiGroups", "apiVersions", "resources", "operations"):
            if not _strings(rule.get(f)) or not rule.get(f):
                errs.append(_err(f"{at}.{f}", "FieldValueRequired", "a list of strings"))
        for op in rule.get("operations") or ():
            if op not in OPERATIONS:
                errs.append(
                    _err(f"{at}.operations", "FieldValueNotSupported", ", ".join(OPERATIONS), op)
                )
        if rule.get("scope", "*") not in SCOPES:
            errs.append(
                _err(f"{at}.scope", "FieldValueNotSupported", ", ".join(SCOPES), rule["scope"])
            )
        if rule.get("resourceNames") is not None and not _strings(rule["resourceNames"]):
            errs.append(_err(f"{at}.resourceNames", "FieldValueInvalid", "a list of strings"))
    return errs


def match_resources_errors(match: Any, path: str, *, required: bool) -> list[FieldError]:
    if match is None:
        return [_err(path, "FieldValueRequired", "resourceRules")] if required else []
    if not isinstance(match, dict):
        return [_err(path, "FieldValueInvalid", "must be an object")]
    errs = _rules_errors(match.get("resourceRules"), f"{path}.resourceRules", required=required)
    errs += _rules_errors(
        match.get("excludeResourceRules"), f"{path}.excludeResourceRules", required=False
    )
    for f in ("namespaceSelector", "objectSelector"):
        if match.get(f) is not None:
            errs += [_err(f"{path}.{f}", "FieldValueInvalid", m) for m in selector_errors(match[f])]
    if match.get("matchPolicy", "Equivalent") not in ("Exact", "Equivalent"):
        errs.append(
            _err(
                f"{path}.matchPolicy",
                "FieldValueNotSupported",
                "Exact, Equivalent",
                match["matchPolicy"],
            )
        )
    return errs


_QUALIFIED = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)


def _named_expressions(
    items: Any, path: str, key: str, *, limit: int, needs_name: bool = True, qualified: bool = False
) -> list[FieldError]:
    """`qualified`: names are Kubernetes qualified names (matchConditions: `exclude-leases`),
    else CEL identifiers (variables: `variables.NAME`)."""
    if items is None:
        return []
    if not isinstance(items, list):
        return [_err(path, "FieldValueInvalid", "must be a list")]
    errs: list[FieldError] = []
    if len(items) > limit:
        errs.append(_err(path, "FieldValueTooMany", f"must have at most {limit} items"))
    seen: set[str] = set()
    for i, item in enumerate(items):
        at = f"{path}[{i}]"
        if not isinstance(item, dict):
            errs.append(_err(at, "FieldValueInvalid", "must be an object"))
            continue
        if needs_name:
            name = item.get("name")
            good = (
                isinstance(name, str) and bool(_QUALIFIED.fullmatch(name))
                if qualified
                else isinstance(name, str) and name.isidentifier() and name.isascii()
            )
            if not good:
                rule = "a qualified name, e.g. exclude-leases" if qualified else NAME_CHARS
                errs.append(_err(f"{at}.name", "FieldValueInvalid", rule, name))
            elif name in seen:
                errs.append(_err(f"{at}.name", "FieldValueDuplicate", "", name))
            else:
                seen.add(str(name))
        errs += _compile_errors(item.get(key), f"{at}.{key}")
    return errs


class PolicyStrategy(Strategy):
    """A ValidatingAdmissionPolicy: its spec validated, every expression compiled."""

    def prepare_for_create(self, obj: Obj) -> None:
        obj.pop("status", None)
        obj.setdefault("metadata", {})["generation"] = 1
        self._defaults(obj)

    def prepare_for_update(self, new: Obj, old: Obj) -> None:
        new.pop("status", None)
        if "status" in old:
            new["status"] = old["status"]
        self._defaults(new)
        meta = new.setdefault("metadata", {})
        generation = int((old.get("metadata") or {}).get("generation") or 1)
        meta["generation"] = generation + (1 if new.get("spec") != old.get("spec") else 0)

    @staticmethod
    def _defaults(obj: Obj) -> None:
        spec = obj.get("spec")
        if isinstance(spec, dict):
            spec.setdefault("failurePolicy", "Fail")
            match = spec.get("matchConstraints")
            if isinstance(match, dict):
                match.setdefault("matchPolicy", "Equivalent")
                match.setdefault("namespaceSelector", {})
                match.setdefault("objectSelector", {})
                for rule in match.get("resourceRules") or ():
                    if isinstance(rule, dict):
                        rule.setdefault("scope", "*")

    def validate(self, obj: Obj) -> list[FieldError]:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return [_err("spec", "FieldValueRequired", "matchConstraints and validations")]
        errs: list[FieldError] = []
        if spec.get("failurePolicy", "Fail") not in ("Fail", "Ignore"):
            errs.append(
                _err(
                    "spec.failurePolicy",
                    "FieldValueNotSupported",
                    "Fail, Ignore",
                    spec["failurePolicy"],
                )
            )
        param = spec.get("paramKind")
        if param is not None and (
            not isinstance(param, dict)
            or not isinstance(param.get("apiVersion"), str)
            or not isinstance(param.get("kind"), str)
        ):
            errs.append(_err("spec.paramKind", "FieldValueInvalid", "apiVersion and kind"))
        errs += match_resources_errors(
            spec.get("matchConstraints"), "spec.matchConstraints", required=True
        )
        errs += _named_expressions(
            spec.get("matchConditions"),
            "spec.matchConditions",
            "expression",
            limit=64,
            qualified=True,
        )
        errs += _named_expressions(spec.get("variables"), "spec.variables", "expression", limit=64)
        validations = spec.get("validations")
        annotations = spec.get("auditAnnotations")
        if not validations and not annotations:
            errs.append(
                _err(
                    "spec.validations",
                    "FieldValueRequired",
                    "validations or auditAnnotations must contain at least one item",
                )
            )
        if validations is not None:
            if not isinstance(validations, list):
                errs.append(_err("spec.validations", "FieldValueInvalid", "must be a list"))
            else:
                for i, v in enumerate(validations):
                    at = f"spec.validations[{i}]"
                    if not isinstance(v, dict):
                        errs.append(_err(at, "FieldValueInvalid", "must be an object"))
                        continue
                    errs += _compile_errors(v.get("expression"), f"{at}.expression")
                    if v.get("messageExpression") is not None:
                        errs += _compile_errors(v["messageExpression"], f"{at}.messageExpression")
                    message = v.get("message")
                    if message is not None and (
                        not isinstance(message, str) or "\n" in message or "\r" in message
                    ):
                        errs.append(_err(f"{at}.message", "FieldValueInvalid", "one line of text"))
                    if v.get("reason") is not None and v["reason"] not in REASONS:
                        errs.append(
                            _err(
                                f"{at}.reason",
                                "FieldValueNotSupported",
                                ", ".join(REASONS),
                                v["reason"],
                            )
                        )
        errs += _named_expressions(
            annotations, "spec.auditAnnotations", "valueExpression", limit=20, needs_name=False
        )
        for i, a in enumerate(annotations if isinstance(annotations, list) else []):
            key = a.get("key") if isinstance(a, dict) else None
            if not isinstance(key, str) or not key or len(key) > 63:
                errs.append(
                    _err(
                        f"spec.auditAnnotations[{i}].key",
                        "FieldValueRequired",
                        "a key of at most 63 characters",
                    )
                )
        return errs + _status_errors(obj.get("status"))


def _status_errors(status: Any) -> list[FieldError]:
    """A policy's status, as Kubernetes' ValidateValidatingAdmissionPolicyStatus and its
    types hold it (what Go's decoder refuses is a 422 here): observedGeneration an integer
    of at least 0, each typeChecking.expressionWarnings item a fieldRef and a warning,
    conditions a list of objects."""
    if status is None:
        return []
    if not isinstance(status, dict):
        return [_err("status", "FieldValueInvalid", "must be an object")]
    errs: list[FieldError] = []
    observed = status.get("observedGeneration")
    if observed is not None and (
        not isinstance(observed, int) or isinstance(observed, bool) or observed < 0
    ):
        errs.append(
            _err(
                "status.observedGeneration",
                "FieldValueInvalid",
                "must be an integer of at least 0",
                observed,
            )
        )
    conditions = status.get("conditions")
    if conditions is not None and (
        not isinstance(conditions, list) or not all(isinstance(c, dict) for c in conditions)
    ):
        errs.append(_err("status.conditions", "FieldValueInvalid", "must be a list of objects"))
    checking = status.get("typeChecking")
    if checking is None:
        return errs
    if not isinstance(checking, dict):
        return [*errs, _err("status.typeChecking", "FieldValueInvalid", "must be an object")]
    warnings = checking.get("expressionWarnings")
    if warnings is None:
        return errs
    if not isinstance(warnings, list):
        at = "status.typeChecking.expressionWarnings"
        return [*errs, _err(at, "FieldValueInvalid", "must be a list")]
    for i, w in enumerate(warnings):
        at = f"status.typeChecking.expressionWarnings[{i}]"
        if not isinstance(w, dict):
            errs.append(_err(at, "FieldValueInvalid", "must be an object"))
            continue
        for field in ("fieldRef", "warning"):
            if not isinstance(w.get(field), str) or not w[field]:
                errs.append(_err(f"{at}.{field}", "FieldValueRequired", ""))
    return errs


class BindingStrategy(Strategy):
    def validate(self, obj: Obj) -> list[FieldError]:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return [_err("spec", "FieldValueRequired", "policyName and validationActions")]
        errs: list[FieldError] = []
        if not isinstance(spec.get("policyName"), str) or not spec.get("policyName"):
            errs.append(_err("spec.policyName", "FieldValueRequired", "the policy to bind"))
        actions = spec.get("validationActions")
        if not _strings(actions) or not actions:
            errs.append(
                _err(
                    "spec.validationActions",
                    "FieldValueRequired",
                    "at least one of Deny, Warn, Audit",
                )
            )
        else:
            for a in actions:
                if a not in ACTIONS:
                    errs.append(
                        _err(
                            "spec.validationActions",
                            "FieldValueNotSupported",
                            ", ".join(ACTIONS),
                            a,
                        )
                    )
            if len(set(actions)) != len(actions):
                errs.append(
                    _err("spec.validationActions", "FieldValueDuplicate", "each at most once")
                )
            if "Deny" in actions and "Warn" in actions:
                errs.append(
                    _err(
                        "spec.validationActions",
                        "FieldValueInvalid",
                        "Deny and Warn may not be used together",
                    )
                )
        ref = spec.get("paramRef")
        if ref is not None:
            if not isinstance(ref, dict):
                errs.append(_err("spec.paramRef", "FieldValueInvalid", "must be an object"))
            else:
                if ref.get("name") and ref.get("selector") is not None:
                    errs.append(
                        _err(
                            "spec.paramRef",
                            "FieldValueForbidden",
                            "name and selector are exclusive",
                        )
                    )
                if not ref.get("name") and ref.get("selector") is None:
                    errs.append(_err("spec.paramRef", "FieldValueRequired", "name or selector"))
                if ref.get("selector") is not None:
                    errs += [
                        _err("spec.paramRef.selector", "FieldValueInvalid", m)
                        for m in selector_errors(ref["selector"])
                    ]
                if ref.get("parameterNotFoundAction") not in ("Allow", "Deny"):
                    errs.append(
                        _err(
                            "spec.paramRef.parameterNotFoundAction",
                            "FieldValueRequired",
                            "Allow or Deny",
                        )
                    )
        errs += match_resources_errors(
            spec.get("matchResources"), "spec.matchResources", required=False
        )
        return errs


POLICY = ResourceType(
    GROUP, "v1", "ValidatingAdmissionPolicy", "validatingadmissionpolicies",
    "validatingadmissionpolicy", namespaced=False, categories=("api-extensions",),
    strategy=PolicyStrategy(), subresources=("status",),
)  # fmt: skip
BINDING = ResourceType(
    GROUP, "v1", "ValidatingAdmissionPolicyBinding", "validatingadmissionpolicybindings",
    "validatingadmissionpolicybinding", namespaced=False, categories=("api-extensions",),
    strategy=BindingStrategy(),
)  # fmt: skip
POLICY_TYPES = (POLICY, BINDING)
