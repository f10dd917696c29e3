"""Who a request is from (authentication.k8s.io/v1 UserInfo, as every authenticator returns
it) and what it asks (`Attributes`, k8s.io/apiserver's authorizer attributes): the two things
authorization, audit and the access reviews judge.

Layer: auth. Pure data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
MASTERS = "system:masters"


@dataclass(frozen=True, slots=True)
class UserInfo:
    """`name` is Kubernetes' `username`. Groups as the authenticator found them; the
    authentication filter adds `system:authenticated` to every authenticated user, as
    kube-apiserver does."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, Sequence[str]] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"username": self.name}
        if self.uid:
            out["uid"] = self.uid
        if self.groups:
            out["groups"] = list(self.groups)
        if self.extra:
            out["extra"] = {k: list(v) for k, v in self.extra.items()}
        return out

    def authenticated(self) -> UserInfo:
        """This user with `system:authenticated` among the groups (once)."""
        if AUTHENTICATED in self.groups:
            return self
        return UserInfo(self.name, self.uid, (*self.groups, AUTHENTICATED), self.extra)


ANONYMOUS = UserInfo("system:anonymous", groups=(UNAUTHENTICATED,))


@dataclass(frozen=True, slots=True)
class Attributes:
    """k8s.io/apiserver's authorizer.Attributes: the authenticated user and groups, and the
    request's verb and target. Non-resource requests (`resource_request=False`) carry `path`
    and the lower-case HTTP method as `verb`; `namespace` is "" for cluster-scoped resources.
    `api_version` is recorded (audit's objectRef), never matched."""

    user: str
    groups: tuple[str, ...] = ()
    verb: str = ""
    namespace: str = ""
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    path: str = ""
    resource_request: bool = True
    api_version: str = ""
