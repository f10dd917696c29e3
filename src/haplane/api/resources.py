"""The resource types this API serves, and each kind's strategy (defaults, validation, generation).

Layer: api. Pure: strategies transform and check objects; storage is the generic store's job.

As in k8s.io/apiserver, per-kind behaviour lives in a small strategy; everything common (metadata,
preconditions, storage) is in `registry.py`. Custom resources (a later issue) add `ResourceType`s
at run time with a generic strategy; the `Registry` here is the seam for that.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from .patch import STRATEGIC_SCHEMAS, PatchSchema
from .validation import FieldError

Obj = dict[str, Any]
NameRule = Literal["dns1123-subdomain", "dns1123-label", "path-segment"]

# Kubernetes refuses to delete these namespaces, whoever asks (NamespaceLifecycle admission)
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class Strategy:
    """Per-kind hooks. The defaults suit a plain object with no status."""

    #: top-level fields that are not the object's desired state (changes do not bump generation)
    non_spec_fields: frozenset[str] = frozenset({"apiVersion", "kind", "metadata", "status"})

    def prepare_for_create(self, obj: Obj) -> None:
        """Defaults and normalisation before validation (mutates `obj`)."""

    def prepare_for_update(self, new: Obj, old: Obj) -> None:
        """Carry over what an update may not change (e.g. status without a status endpoint)."""

    def normalised(self, obj: Obj) -> Obj:
        """`obj` as read under the kind's current schema: what a subresource write (status,
        scale) stores and compares with, having not gone through `prepare_for_update`. The
        same object, unless the kind's schema can change (custom resources: a copy, pruned
        and defaulted, as kube-apiserver decodes every object it reads)."""
        return obj

    def validate(self, obj: Obj) -> list[FieldError]:
        return []

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        return self.validate(new)

    def pending_finalizers(self, obj: Obj) -> bool:
        """Whether deletion must wait (beyond metadata.finalizers, which the store checks)."""
        return False

    def prepare_for_delete(self, obj: Obj) -> None:
        """Mark an object whose deletion waits for finalizers (mutates `obj`)."""

    def refuse_delete(self, obj: Obj) -> str | None:
        """Why this object may not be deleted by anyone (403), or None."""
        return None

    def spec_changed(self, new: Obj, old: Obj) -> bool:
        keys = (set(new) | set(old)) - self.non_spec_fields
        return any(new.get(k) != old.get(k) for k in keys)


class NamespaceStrategy(Strategy):
    # Runs before validation: leave malformed input alone for `validate` to report.
    def prepare_for_create(self, obj: Obj) -> None:
        spec = obj.get("spec") or {}
        if isinstance(spec, dict):
            spec.setdefault("finalizers", ["kubernetes"])
            obj["spec"] = spec
        obj["status"] = {"phase": "Active"}
        self._name_label(obj)

    def prepare_for_update(self, new: Obj, old: Obj) -> None:
        new["status"] = old.get("status", {"phase": "Active"})
        new["spec"] = old.get("spec", {})  # finalizers change only through /finalize
        self._name_label(new)

    def pending_finalizers(self, obj: Obj) -> bool:
        spec = obj.get("spec")
        return isinstance(spec, dict) and bool(spec.get("finalizers"))

    def prepare_for_delete(self, obj: Obj) -> None:
        obj["status"] = {**(obj.get("status") or {}), "phase": "Terminating"}

    def refuse_delete(self, obj: Obj) -> str | None:
        # Kubernetes' NamespaceLifecycle admission: whoever asks, these stay
        if obj["metadata"].get("name") in PROTECTED_NAMESPACES:
            return "this namespace may not be deleted"
        return None

    @staticmethod
    def _name_label(obj: Obj) -> None:
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        if isinstance(labels, dict) and isinstance(meta.get("name"), str):
            labels["kubernetes.io/metadata.name"] = meta["name"]
            meta["labels"] = labels

    def validate(self, obj: Obj) -> list[FieldError]:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return [FieldError("spec", "FieldValueInvalid", "must be an object", None)]
        finalizers = spec.get("finalizers", [])
        if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
            return [
                FieldError(
                    "spec.finalizers", "FieldValueInvalid", "must be a list of strings", None
                )
            ]
        return []


def _data_key_errors(obj: Obj, fields: Iterable[str]) -> list[FieldError]:
    errs: list[FieldError] = []
    seen: dict[str, str] = {}
    for f in fields:
        data = obj.get(f)
        if data is None:
            continue
        if not isinstance(data, dict):
            errs.append(FieldError(f, "FieldValueInvalid", "must be a map of strings", None))
            continue
        for k, v in data.items():
            path = f"{f}[{k}]"
            if not _CONFIG_KEY.match(k) or len(k) > 253:
                errs.append(
                    FieldError(
                        path,
                        "FieldValueInvalid",
                        "a valid config key must consist of alphanumeric "
                        "characters, '-', '_' or '.'",
                        k,
                    )
                )
            if not isinstance(v, str):
                errs.append(FieldError(path, "FieldValueInvalid", "must be a string", None))
            if k in seen:
                errs.append(
                    FieldError(path, "FieldValueInvalid", f"duplicate of key in {seen[k]}", k)
                )
            seen[k] = f
    return errs


def _base64_errors(obj: Obj, f: str) -> list[FieldError]:
    errs: list[FieldError] = []
    data = obj.get(f)
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(v, str):
                try:
                    base64.b64decode(v, validate=True)
                except (binascii.Error, ValueError):
                    errs.append(
                        FieldError(f"{f}[{k}]", "FieldValueInvalid", "must be base64-encoded", None)
                    )
    return errs


class ConfigMapStrategy(Strategy):
    non_spec_fields = Strategy.non_spec_fields | {"immutable"}

    def validate(self, obj: Obj) -> list[FieldError]:
        return _data_key_errors(obj, ("data", "binaryData")) + _base64_errors(obj, "binaryData")

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        errs = self.validate(new)
        if old.get("immutable") and (
            new.get("data") != old.get("data") or new.get("binaryData") != old.get("binaryData")
        ):
            errs.append(
                FieldError(
                    "data",
                    "FieldValueForbidden",
                    "field is immutable when `immutable` is set",
                    None,
                )
            )
        if old.get("immutable") and not new.get("immutable"):
            errs.append(
                FieldError(
                    "immutable",
                    "FieldValueForbidden",
                    "field is immutable when `immutable` is set",
                    None,
                )
            )
        return errs


class SecretStrategy(Strategy):
    def prepare_for_create(self, obj: Obj) -> None:
        obj.setdefault("type", "Opaque")
        self._fold_string_data(obj)

    def prepare_for_update(self, new: Obj, old: Obj) -> None:
        new.setdefault("type", old.get("type", "Opaque"))
        self._fold_string_data(new)

    @staticmethod
    def _fold_string_data(obj: Obj) -> None:
        """`stringData` is write-only: it is merged into `data`, as Kubernetes does."""
        if obj.get("stringData", {}) is None:
            obj.pop("stringData")
        string_data = obj.get("stringData")
        data = obj.get("data") or {}
        if isinstance(string_data, dict) and isinstance(data, dict):
            obj.pop("stringData")
            for k, v in string_data.items():
                if isinstance(v, str):
                    data[k] = base64.b64encode(v.encode()).decode()
            obj["data"] = data

    def validate(self, obj: Obj) -> list[FieldError]:
        errs = _data_key_errors(obj, ("data",)) + _base64_errors(obj, "data")
        if "stringData" in obj:  # left in place only when it could not be folded into data
            errs.append(
                FieldError(
                    "stringData",
                    "FieldValueInvalid",
                    "must be a map of strings beside a map `data`",
                    None,
                )
            )
        if not isinstance(obj.get("type"), str):
            errs.append(FieldError("type", "FieldValueInvalid", "must be a string", None))
        return errs

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        errs = self.validate(new)
        if new.get("type") != old.get("type"):
            errs.append(
                FieldError("type", "FieldValueInvalid", "field is immutable", str(new.get("type")))
            )
        return errs


class LeaseStrategy(Strategy):
    def validate(self, obj: Obj) -> list[FieldError]:
        spec = obj.get("spec")
        if spec is not None and not isinstance(spec, dict):
            return [FieldError("spec", "FieldValueInvalid", "must be an object", None)]
        errs = []
        for f in ("leaseDurationSeconds", "leaseTransitions"):
            v = (spec or {}).get(f)
            if v is not None and (not isinstance(v, int) or v < 0):
                errs.append(
                    FieldError(
                        f"spec.{f}", "FieldValueInvalid", "must be a non-negative integer", str(v)
                    )
                )
        return errs


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    name_rule: NameRule = "dns1123-subdomain"
    strategy: Strategy = field(default_factory=Strategy)
    patch_schema: PatchSchema | None = None  # None: strategic merge patch unsupported (415)
    verbs: tuple[str, ...] = ALL_VERBS
    subresources: tuple[str, ...] = ()  # e.g. ("status", "scale")
    storage_prefix: str | None = None  # overrides the derived /registry/... prefix
    custom: bool = False  # served from a CustomResourceDefinition
    printer_columns: tuple[dict[str, Any], ...] = ()  # CRD additionalPrinterColumns
    scale_paths: tuple[str, str, str] | None = None  # spec, status replicas; label selector
    virtual: bool = False  # created and answered, never stored (access and token reviews)
    # False: stored in the global control etcd (ops.haplane.dev), writable in every region,
    # never behind the region's write fence
    fenced: bool = True

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        """`configmaps` or `leases.coordination.k8s.io`, as in Kubernetes' error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def key_prefix(self, namespace: str | None = None) -> str:
        """kube-apiserver's layout: built-ins under /registry/<resource>/, custom resources
        under /registry/<group>/<resource>/ (every served version shares the prefix)."""
        base = self.storage_prefix or (
            f"/registry/{self.group}/{self.plural}/" if self.custom else f"/registry/{self.plural}/"
        )
        return f"{base}{namespace}/" if self.namespaced and namespace else base

    def key(self, namespace: str | None, name: str) -> str:
        return f"{self.key_prefix(namespace)}{name}"


BUILTIN: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", "namespace", namespaced=False,
                 short_names=("ns",), name_rule="dns1123-label", strategy=NamespaceStrategy(),
                 verbs=tuple(v for v in ALL_VERBS if v != "deletecollection"),  # as Kubernetes
                 patch_schema=STRATEGIC_SCHEMAS["Namespace"]),
    ResourceType("", "v1", "ConfigMap", "configmaps", "configmap", namespaced=True,
                 short_names=("cm",), strategy=ConfigMapStrategy(),
                 patch_schema=STRATEGIC_SCHEMAS["ConfigMap"]),
    ResourceType("", "v1", "Secret", "secrets", "secret", namespaced=True,
                 strategy=SecretStrategy(), patch_schema=STRATEGIC_SCHEMAS["Secret"]),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount",
                 namespaced=True, short_names=("sa",), subresources=("token",),
                 patch_schema=STRATEGIC_SCHEMAS["ServiceAccount"]),
    ResourceType("", "v1", "Event", "events", "event", namespaced=True, short_names=("ev",),
                 patch_schema=STRATEGIC_SCHEMAS["Event"]),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", "lease", namespaced=True,
                 strategy=LeaseStrategy(), patch_schema=STRATEGIC_SCHEMAS["Lease"]),
)  # fmt: skip


class Registry:
    """Which resource types are served; looked up by group, version and plural."""

    def __init__(self, types: Iterable[ResourceType] = BUILTIN):
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for t in types:
            self.add(t)

    def add(self, t: ResourceType) -> None:
        self._types[(t.group, t.version, t.plural)] = t

    def remove(self, group: str, version: str, plural: str) -> None:
        self._types.pop((group, version, plural), None)

    def custom(self) -> list[ResourceType]:
        return [t for t in self._types.values() if t.custom]

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def groups(self) -> dict[str, list[str]]:
        """Non-core groups and their versions, in registration order."""
        out: dict[str, list[str]] = {}
        for g, v, _ in self._types:
            if g and v not in out.setdefault(g, []):
                out[g].append(v)
        return out

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [t for (g, v, _), t in self._types.items() if g == group and v == version]
