"""Kubernetes' CEL authorizer library (k8s.io/apiserver/pkg/cel/library/authz.go): the
`authorizer` variable of admission policies, so that a policy can ask whether the requesting
user (or a ServiceAccount) may do something else.

Layer: cel. Pure: a check calls the function the caller put in `CHECKER` for the evaluation
(the admission engine puts the replica's RBAC authorizer there, reading memory only).

    authorizer.group('apps').resource('deployments').namespace('x').name('y').check('update')
        .allowed()                                  bool
    authorizer.path('/healthz').check('get').reason()
    authorizer.serviceAccount('ns', 'sa').group('')....   the ServiceAccount's permissions
    authorizer.requestResource.check('update')   the request's own resource (a variable)
    authorizer.group('').resource('pods').fieldSelector('spec.nodeName=n').labelSelector('a=b')
        .check('list')                              Kubernetes 1.32+ (AuthorizeWithSelectors)
    decision.allowed() .reason() .errored() .error()

Selectors: kept on the ResourceCheck as written and handed to nobody. RBAC, the only
authorizer here, decides without them, as Kubernetes' RBAC does (only webhook authorizers
read them, and a selector can only narrow what is asked); Kubernetes parses them at the check
and ignores one that does not parse, so neither is an error here.

How the values are represented: the engine's Python binding cannot return values of an
abstract type (measured: "Unimplemented type"), so each value (Authorizer, PathCheck,
GroupCheck, ResourceCheck, Decision) is a map with a marker key naming its kind; a function
given a map of another kind fails with a clear message. The visible difference from
Kubernetes: `type(authorizer)` is a map. A map literal written to look like an Authorizer
gains nothing: the user a check is made for is the request's (held by `CHECKER`), or the
ServiceAccount named through `serviceAccount`, which any policy may name in Kubernetes too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from cel_expr_python import cel

from .budget import overload

# (serviceaccount "ns/name" or "" for the request's user, attributes) -> (allowed, reason,
# error); attributes: verb, and either path, or group, resource, subresource, namespace, name
Checker = Callable[[str, Mapping[str, str]], tuple[bool, str, str]]
CHECKER: ContextVar[Checker | None] = ContextVar("haplane_cel_authorizer", default=None)

_KIND = "@kubernetes.authz"  # the marker key: its value names the kind
T = cel.Type
_MAP = T.Map(T.STRING, T.DYN)


class AuthzError(ValueError):
    """A value of the wrong kind, or a check with nothing to ask (the engine's error)."""


def authorizer(service_account: str = "") -> dict[str, Any]:
    """The `authorizer` variable's value (the request's user, or a ServiceAccount
    "namespace/name")."""
    return {_KIND: "Authorizer", "serviceAccount": service_account}


def request_resource(
    group: str, resource: str, subresource: str, namespace: str, name: str
) -> dict[str, Any]:
    """The `authorizer.requestResource` variable's value: a ResourceCheck of the request."""
    return {
        _KIND: "ResourceCheck",
        "serviceAccount": "",
        "group": group,
        "resource": resource,
        "subresource": subresource,
        "namespace": namespace,
        "name": name,
    }


def _of(value: Any, kind: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or value.get(_KIND) != kind:
        got = value.get(_KIND, "map") if isinstance(value, Mapping) else type(value).__name__
        raise AuthzError(f"expected a {kind}, got a {got}")
    return dict(value)


def _nonempty(what: str, value: str) -> str:
    if not value.strip():
        raise AuthzError(f"{what} must not be empty")
    return value


def _path(a: Any, path: str) -> dict[str, Any]:
    base = _of(a, "Authorizer")
    return {
        _KIND: "PathCheck",
        "serviceAccount": base["serviceAccount"],
        "path": _nonempty("path", path),
    }


def _group(a: Any, group: str) -> dict[str, Any]:
    base = _of(a, "Authorizer")
    return {_KIND: "GroupCheck", "serviceAccount": base["serviceAccount"], "group": group}


# Kubernetes' names: a namespace is a DNS-1123 label, a ServiceAccount's name a subdomain
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _service_account(a: Any, namespace: str, name: str) -> dict[str, Any]:
    _of(a, "Authorizer")
    if len(namespace) > 63 or not _LABEL.fullmatch(namespace):
        raise AuthzError(f"invalid service account namespace {namespace!r}")
    if len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
        raise AuthzError(f"invalid service account name {name!r}")
    return authorizer(f"{namespace}/{name}")


def _resource(g: Any, resource: str) -> dict[str, Any]:
    base = _of(g, "GroupCheck")
    return request_resource(base["group"], _nonempty("resource", resource), "", "", "") | {
        "serviceAccount": base["serviceAccount"]
    }


def _setter(key: str) -> Callable[[Any, str], dict[str, Any]]:
    def set_(r: Any, value: str) -> dict[str, Any]:
        return {**_of(r, "ResourceCheck"), key: value}

    return set_


def _check(c: Any, verb: str) -> dict[str, Any]:
    kind = c.get(_KIND) if isinstance(c, Mapping) else None
    if kind not in ("PathCheck", "ResourceCheck"):
        raise AuthzError(f"expected a PathCheck or a ResourceCheck, got a {kind or 'map'}")
    base = dict(c)
    checker = CHECKER.get()
    if kind == "PathCheck":
        attrs = {"verb": verb, "path": base["path"]}
    else:
        attrs = {k: str(base[k]) for k in ("group", "resource", "subresource", "namespace", "name")}
        attrs["verb"] = verb
    if checker is None:
        allowed, reason, error = False, "", "no authorizer is available to this evaluation"
    else:
        allowed, reason, error = checker(str(base["serviceAccount"]), attrs)
    return {_KIND: "Decision", "allowed": allowed, "reason": reason, "error": error}


def _decision(key: str) -> Callable[[Any], Any]:
    def get(d: Any) -> Any:
        value = _of(d, "Decision")
        return bool(value["error"]) if key == "errored" else value[key]

    return get


def functions() -> list[Any]:
    """The library's declarations, for an environment that has the `authorizer` variable."""
    s, b = T.STRING, T.BOOL

    def member(name: str, ret: Any, params: list[Any], impl: Callable[..., Any]) -> Any:
        return cel.FunctionDecl(
            name, [overload(f"authz_{name}_{len(params)}", ret, params, True, impl)]
        )

    return [
        member("path", _MAP, [_MAP, s], _path),
        member("group", _MAP, [_MAP, s], _group),
        member("serviceAccount", _MAP, [_MAP, s, s], _service_account),
        member("resource", _MAP, [_MAP, s], _resource),
        member("subresource", _MAP, [_MAP, s], _setter("subresource")),
        member("namespace", _MAP, [_MAP, s], _setter("namespace")),
        member("name", _MAP, [_MAP, s], _setter("name")),
        member("fieldSelector", _MAP, [_MAP, s], _setter("fieldSelector")),
        member("labelSelector", _MAP, [_MAP, s], _setter("labelSelector")),
        member("check", _MAP, [_MAP, s], _check),
        member("allowed", b, [_MAP], _decision("allowed")),
        member("reason", s, [_MAP], _decision("reason")),
        member("errored", b, [_MAP], _decision("errored")),
        member("error", s, [_MAP], _decision("error")),
    ]
