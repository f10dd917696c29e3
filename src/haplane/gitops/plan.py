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

from ..kubeclient import describe, is_foundation, kind_rank

__all__ = ["PlanError", "Step", "describe", "is_foundation", "plan", "wave_of"]

Obj = dict[str, Any]

# Argo CD's annotation is honoured too, so repositories written for it keep their order
WAVE_ANNOTATIONS = ("gitops.haplane.dev/sync-wave", "argocd.argoproj.io/sync-wave")


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
                else kind_rank(str(o.get("kind")))
            )
        )
    return ordered
