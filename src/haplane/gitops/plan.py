"""The order a render is applied in: waves by annotation, and inside each wave the
foundation (CustomResourceDefinitions and Namespaces) before everything else.

Layer: sync. Pure: objects in, steps out. A step is dry-run as a whole before any of it is
applied, so a step is never half-applied; a foundation step comes first because a dry-run of a
custom object cannot succeed before its CRD exists, nor of a namespaced object before its
namespace does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

# Argo CD's annotation is honoured too, so repositories written for it keep their order
WAVE_ANNOTATIONS = ("gitops.haplane.dev/sync-wave", "argocd.argoproj.io/sync-wave")

# within a step, kinds others refer to go first (Helm's install order, for the kinds it names)
_KIND_ORDER = [
    "PriorityClass",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
]
_RANK = {kind: i for i, kind in enumerate(_KIND_ORDER)}


class PlanError(Exception):
    """An annotation the planner cannot read; the message names the object."""


@dataclass
class Step:
    wave: int
    foundation: bool  # CRDs and namespaces
    objects: list[Obj] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"wave {self.wave}" + (" (CRDs and namespaces)" if self.foundation else "")


def is_foundation(obj: Obj) -> bool:
    kind, api_version = obj.get("kind"), obj.get("apiVersion", "")
    return (kind == "Namespace" and api_version == "v1") or (
        kind == "CustomResourceDefinition" and api_version.startswith("apiextensions.k8s.io/")
    )


def wave_of(obj: Obj) -> int:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    for key in WAVE_ANNOTATIONS:
        if key in annotations:
            value = annotations[key]
            try:
                return int(str(value).strip())
            except ValueError:
                raise PlanError(
                    f"{describe(obj)}: annotation {key}={value!r} is not an integer"
                ) from None
    return 0


def describe(obj: Obj) -> str:
    """kubectl's way of naming an object: `kind/name` with its namespace."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{meta.get('name')}" + (f" (namespace {ns})" if ns else "")


def plan(objects: list[Obj]) -> list[Step]:
    """Steps in the order they are applied: waves ascending, the foundation of each wave first."""
    steps: dict[tuple[int, int], Step] = {}
    for obj in objects:
        wave, foundation = wave_of(obj), is_foundation(obj)
        key = (wave, 0 if foundation else 1)
        steps.setdefault(key, Step(wave, foundation)).objects.append(obj)
    ordered = [steps[k] for k in sorted(steps)]
    for step in ordered:
        # stable: CRDs before namespaces, then kinds by rank, source order otherwise
        step.objects.sort(
            key=lambda o: (
                (0 if o.get("kind") == "CustomResourceDefinition" else 1)
                if step.foundation
                else _RANK.get(str(o.get("kind")), len(_KIND_ORDER))
            )
        )
    return ordered
