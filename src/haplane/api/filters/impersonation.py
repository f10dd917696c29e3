"""Impersonation: act as another user, as kube-apiserver's `WithImpersonation` filter does
(`kubectl --as alice --as-group devs`, client-go's `Impersonate` config, an authenticating
proxy such as the web console).

Layer: api (filters). Runs after authentication and audit (the audit event records who asked,
and whom they acted as: `impersonatedUser`) and before authorization, which then judges the
impersonated user. Touches nothing but the request's user.

Headers: `Impersonate-User`, `Impersonate-Group` (repeatable), `Impersonate-Uid`,
`Impersonate-Extra-<key>` (repeatable; the key is percent-decoded and lower-cased). Each is
authorized for the requester, with Kubernetes' attributes, before anything else happens:

- the user: verb `impersonate` on `users` named so, or, for `system:serviceaccount:NS:NAME`,
  on `serviceaccounts` NAME in namespace NS (whose groups, when none are asked for, are
  `system:serviceaccounts` and `system:serviceaccounts:NS`);
- each group: `impersonate` on `groups`; the uid: on `uids` in API group
  `authentication.k8s.io`; each extra value: on `userextras/<key>` in that group.

One refusal refuses the request (403, naming what may not be impersonated); the impersonated
user gets `system:authenticated` (or `system:unauthenticated` for `system:anonymous`) unless
either was asked for, as in Kubernetes. Groups, a uid or extras without `Impersonate-User` are
400 (kube-apiserver answers 500 there: the request is the client's mistake, not the server's);
an empty `Impersonate-User` is no impersonation, as in Kubernetes. (Kubernetes removes the
headers once used, for what it proxies on; a replica proxies no request, and aiohttp's
request headers are read-only, so they stay.)

Where haplane is stricter than Kubernetes: `system:masters` is haplane-admin's alone (no
certificate is issued with it but the admin's, and cluster-admin goes through an approved
RoleGrant), so nobody outside that group may take it by impersonation, whatever RBAC says
(403).
"""

from __future__ import annotations

from urllib.parse import unquote

from aiohttp import web

from haplane.auth.user import ANONYMOUS, MASTERS, UserInfo

from .. import errors
from ..authorizer import Authorizer
from ..request import REQUEST_USER, Handler, RequestInfo

USER = "Impersonate-User"
GROUP = "Impersonate-Group"
UID = "Impersonate-Uid"
EXTRA = "impersonate-extra-"
AUTHENTICATION_GROUP = "authentication.k8s.io"
SA_PREFIX = "system:serviceaccount:"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"


def _service_account(name: str) -> tuple[str, str] | None:
    """(namespace, name) of `system:serviceaccount:NS:NAME`, else None."""
    if not name.startswith(SA_PREFIX):
        return None
    namespace, sep, account = name[len(SA_PREFIX) :].partition(":")
    if not sep or not namespace or not account or ":" in account:
        return None
    return namespace, account


def requested(request: web.BaseRequest) -> UserInfo | None:
    """Whom the request asks to act as (None: no impersonation header); 400 when groups, a
    uid or extras come without a user."""
    headers = request.headers
    name = headers.get(USER) or None  # empty: no impersonation, as in Kubernetes
    groups = tuple(headers.getall(GROUP, ()))
    uid = headers.get(UID) or None
    extra: dict[str, list[str]] = {}
    for key, value in headers.items():
        if key.lower().startswith(EXTRA):
            # Kubernetes lower-cases the key, then percent-decodes it (the raw key if that
            # fails): an encoded capital stays a capital
            raw = key[len(EXTRA) :].lower()
            try:
                decoded = unquote(raw, errors="strict")
            except UnicodeDecodeError:
                decoded = raw
            extra.setdefault(decoded, []).append(value)
    if name is None and not groups and uid is None and not extra:
        return None
    if not name:
        asked = [h for h, v in ((GROUP, groups), (UID, uid), ("Impersonate-Extra-*", extra)) if v]
        raise errors.bad_request(
            f"requested {', '.join(asked)} without impersonating a user: add {USER}"
        )
    if any(not k for k in extra):
        raise errors.bad_request("Impersonate-Extra- needs a key after the prefix")
    return UserInfo(name, uid=uid or "", groups=groups, extra=extra)


def checks(asked: UserInfo, path: str = "") -> list[RequestInfo]:
    """What the requester must be allowed, in Kubernetes' order: the user (or service
    account), each group, each extra value, the uid. No path (as in Kubernetes): the decision
    does not depend on it, and the authorizer's decision cache stays small."""
    out = []
    sa = _service_account(asked.name)
    if sa is not None:
        out.append(
            RequestInfo(path, "impersonate", True, "", "v1", sa[0], "serviceaccounts", name=sa[1])
        )
    else:
        out.append(RequestInfo(path, "impersonate", True, "", "v1", "", "users", name=asked.name))
    out += [
        RequestInfo(path, "impersonate", True, "", "v1", "", "groups", name=g) for g in asked.groups
    ]
    for key, values in asked.extra.items():
        out += [
            RequestInfo(
                path,
                "impersonate",
                True,
                AUTHENTICATION_GROUP,
                "v1",
                "",
                "userextras",
                subresource=key,
                name=v,
            )
            for v in values
        ]
    if asked.uid:
        out.append(
            RequestInfo(
                path, "impersonate", True, AUTHENTICATION_GROUP, "v1", "", "uids", name=asked.uid
            )
        )
    return out


def acting_as(asked: UserInfo) -> UserInfo:
    """The impersonated user as the rest of the chain sees it: a service account's groups when
    none were asked for, and the group every such user has."""
    groups = list(asked.groups)
    sa = _service_account(asked.name)
    if sa is not None and not groups:
        groups = ["system:serviceaccounts", f"system:serviceaccounts:{sa[0]}"]
    implied = UNAUTHENTICATED if asked.name == ANONYMOUS.name else AUTHENTICATED
    if AUTHENTICATED not in groups and UNAUTHENTICATED not in groups:
        groups.append(implied)
    return UserInfo(asked.name, uid=asked.uid, groups=tuple(groups), extra=asked.extra)


class Impersonate:
    def __init__(self, authorizer: Authorizer | None):
        """`authorizer` None: everything is allowed (an insecure topology), impersonation too."""
        self.authorizer = authorizer

    async def __call__(self, request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
        asked = requested(request)
        if asked is None:
            return await handler(request)
        requester: UserInfo = request["user"]
        if MASTERS in asked.groups and MASTERS not in requester.groups:
            raise errors.StatusError(
                403,
                "Forbidden",
                f'groups "{MASTERS}" is forbidden: User "{requester.name}" cannot impersonate '
                f"{MASTERS}: it is haplane-admin's alone (grant cluster-admin through an "
                "approved RoleGrant instead)",
                details={"name": MASTERS, "kind": "groups"},
            )
        if self.authorizer is not None:
            for check in checks(asked):
                decision = await self.authorizer.authorize(requester, check)
                if not decision.allowed:
                    raise errors.forbidden(
                        requester.name,
                        "impersonate",
                        resource=check.resource,
                        subresource=check.subresource,
                        group=check.api_group,
                        namespace=check.namespace,
                        name=check.name,
                    )
        user = acting_as(asked)
        ev = request.get("audit")
        if ev is not None:
            ev.impersonated_user = user
        request["user"] = user
        request["impersonated_by"] = requester
        token = REQUEST_USER.set(user)
        try:
            return await handler(request)
        finally:
            REQUEST_USER.reset(token)
