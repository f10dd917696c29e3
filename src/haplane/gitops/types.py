"""The `gitops.haplane.dev/v1` API: `GitSource` (a repository and a ref, polled) and `Sync`
(a path of a source, an optional kustomize overlay, and targets), as CustomResourceDefinitions
the controller installs on the platform, and their specs read into dataclasses.

Layer: sync. CRDs rather than built-in types: the API server needs to know nothing of GitOps
(the controller is a client like Argo CD's or Flux's), and the schemas, defaults, status
subresource and CEL rules are the platform's own CRD machinery, replicated across regions like
any other object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
GROUP = "gitops.haplane.dev"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
REQUESTED_AT = "gitops.haplane.dev/requested-at"  # set by the webhook: fetch at once
DEFAULT_INTERVAL = 10.0

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go's duration subset: `10s`, `1m30s`, `500ms`."""
    if not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration (write e.g. 10s, 1m, 1m30s)")
    return sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))


_STRING = {"type": "string"}
_CONDITIONS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "type": _STRING,
            "status": _STRING,
            "reason": _STRING,
            "message": _STRING,
            "lastTransitionTime": _STRING,
            "observedGeneration": {"type": "integer"},
        },
    },
}
_ANY_OBJECT = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _crd(kind: str, plural: str, spec: Obj, status: Obj, columns: list[Obj]) -> Obj:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "haplane"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "listKind": f"{kind}List",
                "categories": ["gitops"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "apiVersion": _STRING,
                                "kind": _STRING,
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                            "required": ["spec"],
                        }
                    },
                }
            ],
        },
    }


_PATH = {"type": "string", "maxLength": 1024}
_INTERVAL = {
    "type": "string",
    "default": "10s",
    "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$",
}

GIT_SOURCE_CRD = _crd(
    "GitSource",
    "gitsources",
    {
        "type": "object",
        "required": ["url"],
        "properties": {
            "url": {"type": "string", "minLength": 1, "maxLength": 2048},
            "ref": {
                "type": "object",
                "properties": {
                    "branch": {"type": "string", "maxLength": 255},
                    "tag": {"type": "string", "maxLength": 255},
                    "commit": {"type": "string", "pattern": "^[0-9a-f]{7,40}$"},
                },
                "x-kubernetes-validations": [
                    {
                        "rule": "(has(self.branch) ? 1 : 0) + (has(self.tag) ? 1 : 0)"
                        " + (has(self.commit) ? 1 : 0) <= 1",
                        "message": "give one of branch, tag or commit",
                    }
                ],
            },
            "interval": _INTERVAL,
            "suspend": {"type": "boolean", "default": False},
        },
    },
    {
        "type": "object",
        "properties": {
            "revision": _STRING,
            "lastFetchTime": _STRING,
            "conditions": _CONDITIONS,
            "observedGeneration": {"type": "integer"},
        },
    },
    [
        {"name": "URL", "type": "string", "jsonPath": ".spec.url"},
        {"name": "Revision", "type": "string", "jsonPath": ".status.revision"},
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
)

SYNC_CRD = _crd(
    "Sync",
    "syncs",
    {
        "type": "object",
        "required": ["sourceRef", "targets"],
        "properties": {
            "sourceRef": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "minLength": 1}},
            },
            "path": {**_PATH, "default": "."},
            "overlay": _PATH,
            "targets": {
                "type": "array",
                "minItems": 1,
                "maxItems": 32,
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {
                            "type": "string",
                            "maxLength": 63,
                            "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                        },
                        "kubeconfigSecretRef": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1, "maxLength": 253},
                                "key": {
                                    "type": "string",
                                    "default": "kubeconfig",
                                    "maxLength": 253,
                                },
                            },
                        },
                        "overlay": _PATH,
                    },
                },
                "x-kubernetes-validations": [
                    {
                        "rule": "self.all(t, self.exists_one(u, u.name == t.name))",
                        "message": "target names must be unique",
                    }
                ],
            },
            "serviceAccountName": {
                "type": "string",
                "maxLength": 253,
                "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
            },
            "prune": {"type": "boolean", "default": False},
            "selfHeal": {"type": "boolean", "default": False},
            "allowEmpty": {"type": "boolean", "default": False},
            "suspend": {"type": "boolean", "default": False},
            "interval": _INTERVAL,
        },
    },
    {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer"},
            "revision": _STRING,
            "lastAppliedRevision": _STRING,
            "lastSyncTime": _STRING,
            "handledRequest": _STRING,
            "conditions": _CONDITIONS,
            "targets": {"type": "array", "items": _ANY_OBJECT},
        },
    },
    [
        {"name": "Source", "type": "string", "jsonPath": ".spec.sourceRef.name"},
        {"name": "Revision", "type": "string", "jsonPath": ".status.lastAppliedRevision"},
        {
            "name": "Synced",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Synced")].status',
        },
        {
            "name": "Healthy",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Healthy")].status',
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
)

CRDS = [GIT_SOURCE_CRD, SYNC_CRD]


@dataclass(frozen=True)
class SourceSpec:
    namespace: str
    name: str
    url: str
    ref: str  # a branch, tag or commit, as `git` resolves it
    interval: float
    suspend: bool
    requested_at: str  # the webhook's last poke

    @classmethod
    def of(cls, obj: Obj) -> SourceSpec:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        ref = spec.get("ref") or {}
        return cls(
            meta.get("namespace", ""),
            meta["name"],
            str(spec.get("url", "")),
            _ref(ref),
            parse_duration(str(spec.get("interval") or "10s")),
            bool(spec.get("suspend")),
            str((meta.get("annotations") or {}).get(REQUESTED_AT, "")),
        )


def _ref(ref: Obj) -> str:
    """What `git` resolves: a tag or branch by its full name (a tag `v1` never finds a
    branch `v1`, a deleted branch never falls back to a commit of the same name)."""
    if ref.get("commit"):
        return str(ref["commit"])
    if ref.get("tag"):
        return f"refs/tags/{ref['tag']}"
    return f"refs/heads/{ref.get('branch') or 'main'}"


@dataclass(frozen=True)
class TargetSpec:
    name: str
    secret: tuple[str, str] | None  # (secret name, key); None: the platform itself
    overlay: str | None


@dataclass(frozen=True)
class SyncSpec:
    namespace: str
    name: str
    generation: int
    source: str
    path: str
    overlay: str | None
    targets: tuple[TargetSpec, ...] = field(default=())
    prune: bool = False
    self_heal: bool = False
    allow_empty: bool = False
    suspend: bool = False
    interval: float = DEFAULT_INTERVAL
    requested_at: str = ""  # `haplane gitops sync`: apply again now
    service_account: str | None = None  # the platform target is written as this account

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def of(cls, obj: Obj) -> SyncSpec:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        targets = []
        for t in spec.get("targets") or ():
            ref = t.get("kubeconfigSecretRef")
            secret = (str(ref["name"]), str(ref.get("key") or "kubeconfig")) if ref else None
            targets.append(TargetSpec(str(t["name"]), secret, t.get("overlay") or None))
        return cls(
            meta.get("namespace", ""),
            meta["name"],
            int(meta.get("generation") or 0),
            str((spec.get("sourceRef") or {}).get("name", "")),
            str(spec.get("path") or "."),
            spec.get("overlay") or None,
            tuple(targets),
            bool(spec.get("prune")),
            bool(spec.get("selfHeal")),
            bool(spec.get("allowEmpty")),
            bool(spec.get("suspend")),
            parse_duration(str(spec.get("interval") or "10s")),
            str((meta.get("annotations") or {}).get(REQUESTED_AT, "")),
            spec.get("serviceAccountName") or None,
        )
