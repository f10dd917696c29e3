"""What every writer of Kubernetes objects needs to know about them: how to name one in a
message, which ones are the foundation others live in, and in what order kinds are written.

Layer: client. Pure: objects in, names and ranks out. Shared by the GitOps engine and the
backup restore, which both write many objects through the API in an order that lets each one
find what it refers to.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]

# kinds others refer to go first (Helm's install order, for the kinds it names)
KIND_ORDER = (
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
)
_RANK = {kind: i for i, kind in enumerate(KIND_ORDER)}


def kind_rank(kind: str) -> int:
    """Where `kind` goes among the others: those in `KIND_ORDER` by their place, every other
    kind after them (and among themselves in the order they came)."""
    return _RANK.get(kind, len(KIND_ORDER))


def is_crd(obj: Obj) -> bool:
    return obj.get("kind") == "CustomResourceDefinition" and str(
        obj.get("apiVersion", "")
    ).startswith("apiextensions.k8s.io/")


def is_foundation(obj: Obj) -> bool:
    """CustomResourceDefinitions and Namespaces: a custom object cannot be written before its
    CRD, nor a namespaced object before its namespace."""
    return (obj.get("kind") == "Namespace" and obj.get("apiVersion") == "v1") or is_crd(obj)


def established(crd: Obj) -> bool:
    """Whether a CRD's kinds are served (its `Established` condition is True)."""
    conditions = (crd.get("status") or {}).get("conditions") or ()
    return any(
        isinstance(c, dict) and c.get("type") == "Established" and c.get("status") == "True"
        for c in conditions
    )


def describe(obj: Obj) -> str:
    """kubectl's way of naming an object: `kind/name` with its namespace."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{meta.get('name')}" + (f" (namespace {ns})" if ns else "")
