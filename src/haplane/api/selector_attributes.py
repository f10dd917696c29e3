"""The field and label selectors of an access review's `spec.resourceAttributes` (Kubernetes
1.32+, AuthorizeWithSelectors): validated as kube-apiserver validates them, and parsed as it
parses them for the status' `evaluationError`.

Layer: api. Pure: a review's resourceAttributes in, field errors or a message out.

What they change here: no decision. RBAC, the only authorizer here, decides without selectors,
as Kubernetes' RBAC does (only webhook authorizers read them, and a selector can only narrow a
request, so deciding without it is deciding the broader question). kube-apiserver, with RBAC
alone, answers these reviews exactly so: the same `allowed`, and an `evaluationError` naming a
selector it could not parse ("... ignored due to parse error", or "partially ignored" when some
of its requirements were understood).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .selectors import SelectorError, parse_field_selector, parse_label_selector
from .validation import FieldError, label_key_errors, label_value_errors

PATH = "spec.resourceAttributes"
KINDS = ("fieldSelector", "labelSelector")
_IN, _NOT_IN, _EXISTS, _DOES_NOT_EXIST = "In", "NotIn", "Exists", "DoesNotExist"


def causes(resource: Mapping[str, Any]) -> list[FieldError]:
    """What kube-apiserver's validation refuses (422) in both selectors: rawSelector and
    requirements together or neither, a requirement without a key (a label key must be a
    qualified name), In/NotIn without values, Exists/DoesNotExist with values. An operator
    it does not know is allowed (a newer client's), as there."""
    errs: list[FieldError] = []
    for which in KINDS:
        selector = resource.get(which)
        if selector is None:
            continue
        at = f"{PATH}.{which}"
        if not isinstance(selector, Mapping):
            errs.append(FieldError(at, "FieldValueInvalid", "must be an object"))
            continue
        raw = selector.get("rawSelector") or ""
        requirements = selector.get("requirements") or []
        if not isinstance(raw, str):
            errs.append(FieldError(f"{at}.rawSelector", "FieldValueInvalid", "must be a string"))
            continue
        if not isinstance(requirements, list):
            errs.append(FieldError(f"{at}.requirements", "FieldValueInvalid", "must be a list"))
            continue
        if raw and requirements:
            errs.append(
                FieldError(
                    f"{at}.rawSelector",
                    "FieldValueInvalid",
                    "may not specified at the same time as requirements",  # (sic) Kubernetes'
                    raw,
                )
            )
        if not raw and not requirements:
            errs.append(
                FieldError(
                    f"{at}.requirements",
                    "FieldValueRequired",
                    f"when {at} is specified, requirements or rawSelector is required",
                )
            )
        for i, requirement in enumerate(requirements):
            errs += _requirement_causes(requirement, f"{at}.requirements[{i}]", which)
    return errs


def _requirement_causes(requirement: Any, at: str, which: str) -> list[FieldError]:
    if not isinstance(requirement, Mapping):
        return [FieldError(at, "FieldValueInvalid", "must be an object")]
    key, operator = requirement.get("key") or "", requirement.get("operator") or ""
    values = requirement.get("values") or []
    if not isinstance(key, str) or not isinstance(operator, str):
        return [FieldError(at, "FieldValueInvalid", "key and operator must be strings")]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        return [FieldError(f"{at}.values", "FieldValueInvalid", "must be a list of strings")]
    # (in Kubernetes' order: the values against the operator, the key, each label value)
    errs: list[FieldError] = []
    if operator in (_IN, _NOT_IN) and not values:
        errs.append(
            FieldError(
                f"{at}.values",
                "FieldValueRequired",
                "must be specified when `operator` is 'In' or 'NotIn'",
            )
        )
    if operator in (_EXISTS, _DOES_NOT_EXIST) and values:
        errs.append(
            FieldError(
                f"{at}.values",
                "FieldValueForbidden",
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )
        )
    if which == "fieldSelector":
        if not key:
            errs.append(FieldError(f"{at}.key", "FieldValueRequired", "must be specified"))
        return errs
    bad_key = label_key_errors(key)
    errs += [FieldError(f"{at}.key", "FieldValueInvalid", m, key) for m in bad_key]
    for j, value in enumerate(values):
        at_value = f"{at}.values[{j}]"
        errs += [
            FieldError(at_value, "FieldValueInvalid", m, value) for m in label_value_errors(value)
        ]
    return errs


def evaluation_error(resource: Mapping[str, Any]) -> str:
    """kube-apiserver's words for the selectors it could not use (valid ones, `causes` empty):
    "" when both were understood or absent."""
    out = []
    for which in KINDS:
        selector = resource.get(which)
        if not isinstance(selector, Mapping):
            continue
        understood, failed = _parse(selector, which)
        if failed:
            how = "partially ignored" if understood else "ignored"
            out.append(f"{PATH}.{which} {how} due to parse error")
    return "; ".join(out)


def _parse(selector: Mapping[str, Any], which: str) -> tuple[int, bool]:
    """(requirements understood, whether any was not), as kube-apiserver's helpers count
    them: a raw selector is all or nothing; listed requirements one by one."""
    raw = selector.get("rawSelector") or ""
    requirements = selector.get("requirements") or []
    if raw:
        try:
            if which == "fieldSelector":
                parsed = len(parse_field_selector(raw, None).requirements)
            else:
                parsed = len(parse_label_selector(raw).requirements)
        except SelectorError:
            return 0, True
        return parsed, False
    understood = failed = 0
    for r in requirements:
        ok = _field_ok(r) if which == "fieldSelector" else _label_ok(r)
        understood, failed = understood + ok, failed + (not ok)
    return understood, failed > 0


def _field_ok(r: Mapping[str, Any]) -> bool:
    # fields.Requirement: "=" or "!=" of one value; Exists/DoesNotExist not supported yet
    return r.get("operator") in (_IN, _NOT_IN) and len(r.get("values") or []) == 1


def _label_ok(r: Mapping[str, Any]) -> bool:
    operator, values = r.get("operator"), list(r.get("values") or [])
    if operator not in (_IN, _NOT_IN, _EXISTS, _DOES_NOT_EXIST):
        return False
    if label_key_errors(str(r.get("key") or "")):
        return False
    if operator in (_IN, _NOT_IN):
        return bool(values) and not any(label_value_errors(v) for v in values)
    return not values
