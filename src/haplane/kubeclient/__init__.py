"""A Kubernetes API client for the platform's own clients (`haplane.gitops`,
`haplane.backup`): discovery, paged lists, create, server-side apply, delete (`client`), and
what writers of many objects share about them (`objects`).

Layer: client. Above `haplane.auth` (the kubeconfig reader), below every client of the
platform; never imports the server's internals (a `lint-imports` contract).
"""

from .client import (
    PAGE,
    KubeClient,
    KubeError,
    Obj,
    Resource,
    Unreachable,
    split_api_version,
)
from .objects import (
    KIND_ORDER,
    describe,
    established,
    is_crd,
    is_foundation,
    kind_rank,
)

__all__ = [
    "KIND_ORDER",
    "PAGE",
    "KubeClient",
    "KubeError",
    "Obj",
    "Resource",
    "Unreachable",
    "describe",
    "established",
    "is_crd",
    "is_foundation",
    "kind_rank",
    "split_api_version",
]
