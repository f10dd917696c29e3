"""CustomResourceDefinitions (apiextensions.k8s.io/v1): the CRD kind itself, and the resource
types a CRD brings (one per served version) with their strategy (prune, default, validate
against `openAPIV3Schema`; `status` and `scale` subresources).

Layer: api. Pure: the server registers and unregisters what `resource_types_for` returns as CRDs
come and go (it watches them, so every replica serves what any replica created).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from haplane.store.operations import GROUP as OPS_GROUP

from . import ratcheting
from .admission_policies import NOTES
from .crd_rules import enforce
from .crd_schema import Preexisting, apply_defaults, check_crd_schema, prune
from .crd_schema import validate as validate_against_schema
from .patch import OBJECT_META_STRATEGIES
from .resources import ResourceType, Strategy
from .validation import FieldError, dns1123_label_errors, dns1123_subdomain_errors

Obj = dict[str, Any]
CRD_GROUP = "apiextensions.k8s.io"
CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes' version order: GA before beta before alpha, higher numbers first; other
    names last, alphabetically. Smaller sorts first."""
    m = _VERSION.match(version)
    if m is None:
        return (3, 0, 0, version)
    major, stage, minor = int(m.group(1)), m.group(2), int(m.group(3) or 0)
    rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (rank, -major, -minor, version)


def _names(crd: Obj) -> Obj:
    names = dict((crd.get("spec") or {}).get("names") or {})
    kind = str(names.get("kind") or "")
    names.setdefault("singular", kind.lower())
    names.setdefault("listKind", f"{kind}List")
    return names


API_APPROVED = "api-approved.kubernetes.io"


def _protected_group(group: str) -> bool:
    """Kubernetes' protected API groups: k8s.io and kubernetes.io and their subdomains."""
    return any(group == g or group.endswith("." + g) for g in ("k8s.io", "kubernetes.io"))


class CRDStrategy(Strategy):
    """The CustomResourceDefinition kind."""

    def prepare_for_create(self, obj: Obj) -> None:
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if CLEANUP_FINALIZER not in finalizers:
            finalizers.append(CLEANUP_FINALIZER)
        meta["finalizers"] = finalizers
        obj["status"] = self._status(obj, stored=[])

    def prepare_for_update(self, new: Obj, old: Obj) -> None:
        stored = list((old.get("status") or {}).get("storedVersions") or [])
        new["status"] = self._status(new, stored=stored)

    @staticmethod
    def _status(crd: Obj, stored: list[str]) -> Obj:
        versions = (crd.get("spec") or {}).get("versions") or []
        storage = [str(v.get("name")) for v in versions if isinstance(v, dict) and v.get("storage")]
        for v in storage:
            if v not in stored:
                stored.append(v)
        return {
            "acceptedNames": _names(crd),
            "storedVersions": stored,
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                },
            ],
        }

    def validate(self, obj: Obj) -> list[FieldError]:
        return self._validate(obj, before={})

    def _validate(self, obj: Obj, *, before: Mapping[str, Preexisting]) -> list[FieldError]:
        """`before`: what each version (by name) held before an update, not checked again
        (`crd_schema.Preexisting`)."""
        errs: list[FieldError] = []
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return [FieldError("spec", "FieldValueRequired", "Required value", None)]
        group = spec.get("group")
        if not isinstance(group, str) or "." not in group or dns1123_subdomain_errors(group):
            errs.append(
                FieldError(
                    "spec.group",
                    "FieldValueInvalid",
                    "should be a domain with at least one dot",
                    str(group),
                )
            )
        if group == OPS_GROUP:
            errs.append(
                FieldError(
                    "spec.group",
                    "FieldValueForbidden",
                    f"{OPS_GROUP} is haplane's own API group (platform operations)",
                    str(group),
                )
            )
        if isinstance(group, str) and _protected_group(group):
            annotations = (obj.get("metadata") or {}).get("annotations") or {}
            if not isinstance(annotations, dict) or not annotations.get(API_APPROVED):
                errs.append(
                    FieldError(
                        f"metadata.annotations[{API_APPROVED}]",
                        "FieldValueRequired",
                        f'protected groups must have approval annotation "{API_APPROVED}", see '
                        "https://github.com/kubernetes/enhancements/pull/1111",
                        None,
                    )
                )
        names = _names(obj)
        for f in ("plural", "singular", "kind"):
            v = names.get(f)
            if not isinstance(v, str) or not v:
                errs.append(
                    FieldError(f"spec.names.{f}", "FieldValueRequired", "Required value", None)
                )
            elif f != "kind" and dns1123_label_errors(v):
                errs.append(
                    FieldError(
                        f"spec.names.{f}",
                        "FieldValueInvalid",
                        "; ".join(dns1123_label_errors(v)),
                        v,
                    )
                )
        expected = f"{names.get('plural')}.{group}"
        if obj["metadata"].get("name") != expected:
            errs.append(
                FieldError(
                    "metadata.name",
                    "FieldValueInvalid",
                    f'must be spec.names.plural+"."+spec.group ({expected})',
                    str(obj["metadata"].get("name")),
                )
            )
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            errs.append(
                FieldError(
                    "spec.scope",
                    "FieldValueNotSupported",
                    'supported values: "Cluster", "Namespaced"',
                    str(spec.get("scope")),
                )
            )
        versions = spec.get("versions")
        if not isinstance(versions, list) or not versions:
            errs.append(
                FieldError(
                    "spec.versions", "FieldValueRequired", "must have at least one version", None
                )
            )
            return errs
        seen: set[str] = set()
        storage = 0
        for i, v in enumerate(versions):
            path = f"spec.versions[{i}]"
            if not isinstance(v, dict):
                errs.append(FieldError(path, "FieldValueInvalid", "must be an object", None))
                continue
            name = v.get("name")
            if not isinstance(name, str) or dns1123_label_errors(name):
                errs.append(
                    FieldError(
                        f"{path}.name",
                        "FieldValueInvalid",
                        "must be a DNS-1123 label, e.g. v1",
                        str(name),
                    )
                )
            elif name in seen:
                errs.append(
                    FieldError(f"{path}.name", "FieldValueDuplicate", "Duplicate value", name)
                )
            seen.add(str(name))
            storage += bool(v.get("storage"))
            schema = (v.get("schema") or {}).get("openAPIV3Schema")
            if not isinstance(schema, dict):
                errs.append(
                    FieldError(
                        f"{path}.schema.openAPIV3Schema",
                        "FieldValueRequired",
                        "schemas are required",
                        None,
                    )
                )
            else:
                errs += check_crd_schema(
                    schema, f"{path}.schema.openAPIV3Schema", preexisting=before.get(str(name))
                )
            scale = (v.get("subresources") or {}).get("scale")
            if scale is not None and not (
                isinstance(scale, dict)
                and str(scale.get("specReplicasPath", "")).startswith(".spec.")
                and str(scale.get("statusReplicasPath", "")).startswith(".status.")
            ):
                errs.append(
                    FieldError(
                        f"{path}.subresources.scale",
                        "FieldValueInvalid",
                        "specReplicasPath must start with .spec. and "
                        "statusReplicasPath with .status.",
                        None,
                    )
                )
        if storage != 1:
            errs.append(
                FieldError(
                    "spec.versions",
                    "FieldValueInvalid",
                    "must have exactly one version marked as storage version",
                    None,
                )
            )
        return errs

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        versions = (old.get("spec") or {}).get("versions")
        before = {
            str(v.get("name")): Preexisting.of((v.get("schema") or {}).get("openAPIV3Schema"))
            for v in (versions if isinstance(versions, list) else ())
            if isinstance(v, dict) and isinstance(v.get("schema"), dict)
        }
        errs = self._validate(new, before=before)
        for path in (("group",), ("scope",), ("names", "plural")):
            a, b = _dig(new.get("spec"), path), _dig(old.get("spec"), path)
            if a != b:
                errs.append(
                    FieldError(
                        "spec." + ".".join(path), "FieldValueInvalid", "field is immutable", str(a)
                    )
                )
        return errs


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(p)
    return obj


class CustomResourceStrategy(Strategy):
    def __init__(self, schema: Mapping[str, Any], has_status: bool):
        self.schema = schema
        self.has_status = has_status

    def _normalise(self, obj: Obj) -> None:
        result = self.normalised(obj)
        obj.clear()
        obj.update(result)

    def normalised(self, obj: Obj) -> Obj:
        result: Obj = apply_defaults(prune(obj, self.schema), self.schema)
        return result

    def prepare_for_create(self, obj: Obj) -> None:
        if self.has_status:
            obj.pop("status", None)  # only the /status endpoint sets it
        self._normalise(obj)

    def prepare_for_update(self, new: Obj, old: Obj) -> None:
        if self.has_status:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        self._normalise(new)

    def validate(self, obj: Obj) -> list[FieldError]:
        errs = validate_against_schema(obj, self.schema)
        return errs if _blocking(errs) else errs + enforce(self.schema, obj)

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        """Ratcheted (`haplane.api.ratcheting`): what the update did not change is not held
        against it; the rules' errors so left out are the response's warnings, as in
        Kubernetes. Both objects are compared as read under the CRD's current schema
        (pruned, defaulted: kube-apiserver does so on every read), so a default the CRD
        added since is no change: `new` was normalised by `prepare_for_update`, or by
        `normalised` on a subresource write (the store's), `old` is here."""
        before = apply_defaults(prune(old, self.schema), self.schema)
        comparison = ratcheting.Comparison()  # one for both passes: each pair compared once
        errs = validate_against_schema(new, self.schema, old=before, comparison=comparison)
        if _blocking(errs):
            return errs
        ratcheted: list[FieldError] = []
        errs += enforce(self.schema, new, before, ratcheted=ratcheted, comparison=comparison)
        notes = NOTES.get()
        if notes is not None:
            notes.warnings += [str(e) for e in ratcheted]
        return errs


def _blocking(errs: list[FieldError]) -> bool:
    """Whether schema errors keep the rules from running: any but a list's duplicates (those
    are apiextensions-apiserver's listtype errors, after which the rules still run)."""
    return any(e.reason != "FieldValueDuplicate" for e in errs)


def resource_types_for(crd: Obj, *, served_only: bool = True) -> list[ResourceType]:
    """One ResourceType per served version (every version: `served_only=False`), in
    Kubernetes' version priority order."""
    spec = crd.get("spec") or {}
    names = _names(crd)
    group = str(spec.get("group"))
    out = []
    versions = [
        v
        for v in spec.get("versions") or []
        if isinstance(v, dict) and (v.get("served") or not served_only)
    ]
    for v in sorted(versions, key=lambda v: version_priority(str(v.get("name")))):
        subresources = v.get("subresources") or {}
        has_status = "status" in subresources
        schema = (v.get("schema") or {}).get("openAPIV3Schema") or {"type": "object"}
        out.append(
            ResourceType(
                group=group,
                version=str(v["name"]),
                kind=str(names["kind"]),
                plural=str(names["plural"]),
                singular=str(names["singular"]),
                namespaced=spec.get("scope") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                strategy=CustomResourceStrategy(schema, has_status),
                patch_schema=None,  # strategic merge patch is 415 on custom resources
                subresources=tuple(s for s in ("status", "scale") if s in subresources),
                custom=True,
                printer_columns=tuple(v.get("additionalPrinterColumns") or ()),
                scale_paths=_scale_paths(subresources.get("scale")),
            )
        )
    return out


def _scale_paths(scale: Any) -> tuple[str, str, str] | None:
    if not isinstance(scale, dict):
        return None
    return (
        str(scale.get("specReplicasPath", ".spec.replicas")),
        str(scale.get("statusReplicasPath", ".status.replicas")),
        str(scale.get("labelSelectorPath", "")),
    )


def get_path(obj: Any, dotted: str) -> Any:
    for part in [p for p in dotted.split(".") if p]:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def set_path(obj: Obj, dotted: str, value: Any) -> None:
    parts = [p for p in dotted.split(".") if p]
    for part in parts[:-1]:
        nxt = obj.get(part)
        if not isinstance(nxt, dict):
            nxt = obj[part] = {}
        obj = nxt
    obj[parts[-1]] = value


def to_scale(obj: Obj, paths: tuple[str, str, str]) -> Obj:
    spec_path, status_path, selector_path = paths
    meta = obj.get("metadata") or {}
    status: Obj = {"replicas": get_path(obj, status_path) or 0}
    if selector_path and get_path(obj, selector_path) is not None:
        status["selector"] = get_path(obj, selector_path)
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": get_path(obj, spec_path) or 0},
        "status": status,
    }


CRD_TYPE = ResourceType(
    CRD_GROUP, "v1", "CustomResourceDefinition", "customresourcedefinitions",
    "customresourcedefinition", namespaced=False, short_names=("crd", "crds"),
    categories=("api-extensions",), strategy=CRDStrategy(),
    patch_schema=dict(OBJECT_META_STRATEGIES),
    storage_prefix=f"/registry/{CRD_GROUP}/customresourcedefinitions/",
)  # fmt: skip
