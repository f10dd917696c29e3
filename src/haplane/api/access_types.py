"""The served types of identity and access: rbac.authorization.k8s.io/v1 Role, ClusterRole,
RoleBinding and ClusterRoleBinding (stored, replicated like any object), and the review
types that are created and answered, never stored: authorization.k8s.io/v1
SubjectAccessReview, SelfSubjectAccessReview, SelfSubjectRulesReview, LocalSubjectAccessReview,
and authentication.k8s.io/v1 SelfSubjectReview and TokenReview.

Layer: api. Validation as Kubernetes' (pkg/apis/rbac/validation): a rule needs verbs; resource
rules need apiGroups and resources; nonResourceURLs only in ClusterRoles and never beside
resources; a binding's roleRef is immutable and names a Role or ClusterRole of the RBAC group;
subjects are Users, Groups or ServiceAccounts (with a namespace, in a ClusterRoleBinding).
"""

from __future__ import annotations

from typing import Any

from haplane.auth.rbac import selector_errors

from .resources import Obj, ResourceType, Strategy
from .validation import FieldError

RBAC_GROUP = "rbac.authorization.k8s.io"
AUTHZ_GROUP = "authorization.k8s.io"
AUTHN_GROUP = "authentication.k8s.io"


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def rule_errors(rules: Any, path: str, namespaced: bool) -> list[FieldError]:
    if rules is None:
        return []
    if not isinstance(rules, list):
        return [FieldError(path, "FieldValueInvalid", "must be a list of rules", None)]
    errs: list[FieldError] = []
    for i, rule in enumerate(rules):
        at = f"{path}[{i}]"
        if not isinstance(rule, dict):
            errs.append(FieldError(at, "FieldValueInvalid", "must be an object", None))
            continue
        for f in ("verbs", "apiGroups", "resources", "resourceNames", "nonResourceURLs"):
            if rule.get(f) is not None and not _strings(rule[f]):
                errs.append(FieldError(f"{at}.{f}", "FieldValueInvalid", "must be strings", None))
        if errs:
            continue
        if not rule.get("verbs"):
            errs.append(
                FieldError(
                    f"{at}.verbs", "FieldValueRequired", "verbs must contain at least one value"
                )
            )
        if rule.get("nonResourceURLs"):
            if namespaced:
                errs.append(
                    FieldError(
                        f"{at}.nonResourceURLs",
                        "FieldValueInvalid",
                        "namespaced rules cannot apply to non-resource URLs",
                        None,
                    )
                )
            if rule.get("apiGroups") or rule.get("resources"):
                errs.append(
                    FieldError(
                        f"{at}.nonResourceURLs",
                        "FieldValueInvalid",
                        "rules cannot apply to both regular resources and non-resource URLs",
                        None,
                    )
                )
            continue
        if not rule.get("apiGroups"):
            errs.append(
                FieldError(
                    f"{at}.apiGroups",
                    "FieldValueRequired",
                    "resource rules must supply at least one api group",
                )
            )
        if not rule.get("resources"):
            errs.append(
                FieldError(
                    f"{at}.resources",
                    "FieldValueRequired",
                    "resource rules must supply at least one resource",
                )
            )
    return errs


class RoleStrategy(Strategy):
    def __init__(self, namespaced: bool):
        self.namespaced = namespaced

    def validate(self, obj: Obj) -> list[FieldError]:
        errs = rule_errors(obj.get("rules"), "rules", self.namespaced)
        aggregation = obj.get("aggregationRule")
        if aggregation is not None:
            if self.namespaced:
                errs.append(
                    FieldError("aggregationRule", "FieldValueForbidden", "roles cannot aggregate")
                )
            elif not isinstance(aggregation, dict) or not isinstance(
                aggregation.get("clusterRoleSelectors", []), list
            ):
                errs.append(
                    FieldError(
                        "aggregationRule.clusterRoleSelectors",
                        "FieldValueInvalid",
                        "must be a list of label selectors",
                        None,
                    )
                )
            else:
                for i, selector in enumerate(aggregation.get("clusterRoleSelectors") or []):
                    errs.extend(
                        FieldError(
                            f"aggregationRule.clusterRoleSelectors[{i}]",
                            "FieldValueInvalid",
                            problem,
                            None,
                        )
                        for problem in selector_errors(selector)
                    )
        return errs


_SUBJECT_KINDS = {"User": RBAC_GROUP, "Group": RBAC_GROUP, "ServiceAccount": ""}


class BindingStrategy(Strategy):
    def __init__(self, namespaced: bool):
        self.namespaced = namespaced

    def prepare_for_create(self, obj: Obj) -> None:
        # as Kubernetes' defaulting: User and Group subjects are of the RBAC group
        for s in obj.get("subjects") or []:
            if isinstance(s, dict) and s.get("kind") in ("User", "Group"):
                s.setdefault("apiGroup", RBAC_GROUP)

    def prepare_for_update(self, new: Obj, old: Obj) -> None:
        self.prepare_for_create(new)

    def validate(self, obj: Obj) -> list[FieldError]:
        errs: list[FieldError] = []
        ref = obj.get("roleRef")
        kinds = ("Role", "ClusterRole") if self.namespaced else ("ClusterRole",)
        if not isinstance(ref, dict):
            errs.append(FieldError("roleRef", "FieldValueRequired", "Required value"))
        else:
            if ref.get("apiGroup") != RBAC_GROUP:
                errs.append(
                    FieldError(
                        "roleRef.apiGroup",
                        "FieldValueNotSupported",
                        f'supported values: "{RBAC_GROUP}"',
                        str(ref.get("apiGroup")),
                    )
                )
            if ref.get("kind") not in kinds:
                errs.append(
                    FieldError(
                        "roleRef.kind",
                        "FieldValueNotSupported",
                        "supported values: " + ", ".join(f'"{k}"' for k in kinds),
                        str(ref.get("kind")),
                    )
                )
            if not isinstance(ref.get("name"), str) or not ref.get("name"):
                errs.append(FieldError("roleRef.name", "FieldValueRequired", "Required value"))
        subjects = obj.get("subjects")
        if subjects is not None and not isinstance(subjects, list):
            return [*errs, FieldError("subjects", "FieldValueInvalid", "must be a list", None)]
        for i, s in enumerate(subjects or []):
            at = f"subjects[{i}]"
            if not isinstance(s, dict):
                errs.append(FieldError(at, "FieldValueInvalid", "must be an object", None))
                continue
            kind = s.get("kind")
            if kind not in _SUBJECT_KINDS:
                errs.append(
                    FieldError(
                        f"{at}.kind",
                        "FieldValueNotSupported",
                        'supported values: "ServiceAccount", "User", "Group"',
                        str(kind),
                    )
                )
                continue
            if not isinstance(s.get("name"), str) or not s.get("name"):
                errs.append(FieldError(f"{at}.name", "FieldValueRequired", "Required value"))
            if s.get("apiGroup", _SUBJECT_KINDS[kind]) != _SUBJECT_KINDS[kind]:
                errs.append(
                    FieldError(
                        f"{at}.apiGroup",
                        "FieldValueNotSupported",
                        f'supported values: "{_SUBJECT_KINDS[kind]}"',
                        str(s.get("apiGroup")),
                    )
                )
            if kind == "ServiceAccount" and not self.namespaced and not s.get("namespace"):
                errs.append(FieldError(f"{at}.namespace", "FieldValueRequired", "Required value"))
        return errs

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        errs = self.validate(new)
        if new.get("roleRef") != old.get("roleRef"):
            errs.append(FieldError("roleRef", "FieldValueInvalid", "cannot change roleRef", None))
        return errs


RBAC_TYPES: tuple[ResourceType, ...] = (
    ResourceType(RBAC_GROUP, "v1", "ClusterRole", "clusterroles", "clusterrole",
                 namespaced=False, name_rule="path-segment",
                 strategy=RoleStrategy(namespaced=False)),
    ResourceType(RBAC_GROUP, "v1", "ClusterRoleBinding", "clusterrolebindings",
                 "clusterrolebinding", namespaced=False, name_rule="path-segment",
                 strategy=BindingStrategy(namespaced=False)),
    ResourceType(RBAC_GROUP, "v1", "Role", "roles", "role", namespaced=True,
                 name_rule="path-segment", strategy=RoleStrategy(namespaced=True)),
    ResourceType(RBAC_GROUP, "v1", "RoleBinding", "rolebindings", "rolebinding",
                 namespaced=True, name_rule="path-segment",
                 strategy=BindingStrategy(namespaced=True)),
)  # fmt: skip

# created and answered at once, never stored (`ResourceType.virtual`)
REVIEW_TYPES: tuple[ResourceType, ...] = (
    ResourceType(AUTHZ_GROUP, "v1", "SubjectAccessReview", "subjectaccessreviews",
                 "subjectaccessreview", namespaced=False, verbs=("create",), virtual=True),
    ResourceType(AUTHZ_GROUP, "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews",
                 "selfsubjectaccessreview", namespaced=False, verbs=("create",), virtual=True),
    ResourceType(AUTHZ_GROUP, "v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews",
                 "selfsubjectrulesreview", namespaced=False, verbs=("create",), virtual=True),
    ResourceType(AUTHZ_GROUP, "v1", "LocalSubjectAccessReview", "localsubjectaccessreviews",
                 "localsubjectaccessreview", namespaced=True, verbs=("create",), virtual=True),
    ResourceType(AUTHN_GROUP, "v1", "SelfSubjectReview", "selfsubjectreviews",
                 "selfsubjectreview", namespaced=False, verbs=("create",), virtual=True),
    ResourceType(AUTHN_GROUP, "v1", "TokenReview", "tokenreviews", "tokenreview",
                 namespaced=False, verbs=("create",), virtual=True),
)  # fmt: skip

ACCESS_TYPES = (*RBAC_TYPES, *REVIEW_TYPES)
