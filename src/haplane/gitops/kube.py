"""The GitOps controller's Kubernetes client: `haplane.kubeclient`'s, writing as field manager
`haplane-gitops`.

Layer: sync. A client only: it speaks HTTP to a server named by a kubeconfig, never the API
server's internals.
"""

from __future__ import annotations

from ..auth.kubeconfig import Credentials
from ..kubeclient import KubeClient as _KubeClient
from ..kubeclient import KubeError, Obj, Resource, Unreachable, split_api_version

FIELD_MANAGER = "haplane-gitops"

__all__ = [
    "FIELD_MANAGER",
    "KubeClient",
    "KubeError",
    "Obj",
    "Resource",
    "Unreachable",
    "split_api_version",
]


class KubeClient(_KubeClient):
    def __init__(self, credentials: Credentials, timeout: float = 30.0) -> None:
        super().__init__(credentials, timeout, agent=FIELD_MANAGER)
