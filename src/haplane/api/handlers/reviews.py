"""The review types, created and answered at once, never stored: SelfSubjectReview (`kubectl
auth whoami`), SelfSubjectAccessReview, SubjectAccessReview and LocalSubjectAccessReview
(`kubectl auth can-i`), SelfSubjectRulesReview (`kubectl auth can-i --list`) and TokenReview.

Layer: api (handlers). Each answers through the replica's own authorizer and authenticators
(`HandlerContext.access`), so a review says exactly what a request would meet. Who may create
a review is the authorization filter's business, as for any create (the self reviews are
granted to every authenticated user by `system:basic-user`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from haplane.auth.user import ANONYMOUS, UserInfo

from .. import errors, selector_attributes
from ..access_types import AUTHN_GROUP, AUTHZ_GROUP
from ..request import RequestInfo, Target, body, json_response
from .context import HandlerContext


async def review(ctx: HandlerContext, request: web.BaseRequest, target: Target) -> web.Response:
    if request.method != "POST" or target.name is not None:
        raise errors.method_not_allowed(f"{target.rtype.plural} may only be created")
    if ctx.access is None:
        raise errors.no_such_resource(request.path)
    obj = await body(request)
    if not isinstance(obj.get("metadata") or {}, dict):
        raise errors.bad_request("metadata must be an object")
    user: UserInfo = request.get("user", ANONYMOUS)
    kind = target.rtype.kind
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        raise errors.bad_request("spec must be an object")
    if kind == "SelfSubjectReview":
        status: dict[str, Any] = {"userInfo": user.to_dict()}
    elif kind == "TokenReview":
        status = await ctx.access.token_review(spec)
    elif kind == "SelfSubjectRulesReview":
        namespace = spec.get("namespace") or ""
        if not isinstance(namespace, str):
            raise errors.bad_request("spec.namespace must be a string")
        status = await ctx.access.rules_review(user, namespace)
    else:
        subject = user if kind == "SelfSubjectAccessReview" else _subject(spec)
        attrs = _attributes(spec, kind, target.namespace)
        decision = await ctx.access.authorize(subject, attrs)
        status = {"allowed": decision.allowed}
        if decision.reason:
            status["reason"] = decision.reason
        unparsed = selector_attributes.evaluation_error(spec.get("resourceAttributes") or {})
        if unparsed:  # the selectors RBAC decides without anyway: said, as Kubernetes says it
            status["evaluationError"] = unparsed
    group = AUTHN_GROUP if kind in ("SelfSubjectReview", "TokenReview") else AUTHZ_GROUP
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    metadata = {**(obj.get("metadata") or {}), "creationTimestamp": now}
    answer = {
        "kind": kind,
        "apiVersion": f"{group}/v1",
        "metadata": metadata,
        "spec": spec,
        "status": status,
    }
    if kind == "SelfSubjectReview":
        answer.pop("spec")
    return json_response(answer, 201)


def _subject(spec: dict[str, Any]) -> UserInfo:
    user = spec.get("user") or ""
    groups = spec.get("groups") or []
    extra = spec.get("extra") or {}
    if not isinstance(user, str) or not isinstance(groups, list) or not isinstance(extra, dict):
        raise errors.bad_request("spec.user must be a string, spec.groups a list")
    if not user and not groups:
        raise errors.unprocessable("spec.user or spec.groups: at least one is required")
    return UserInfo(user, str(spec.get("uid") or ""), tuple(str(g) for g in groups), extra)


def _attributes(spec: dict[str, Any], kind: str, path_namespace: str | None) -> RequestInfo:
    resource = spec.get("resourceAttributes")
    non_resource = spec.get("nonResourceAttributes")
    if (resource is None) == (non_resource is None):
        raise errors.unprocessable(
            "exactly one of spec.resourceAttributes and spec.nonResourceAttributes is required"
        )
    if kind == "LocalSubjectAccessReview":
        if not path_namespace:
            raise errors.no_such_resource("localsubjectaccessreviews are namespaced")
        if non_resource is not None:
            raise errors.unprocessable(
                "spec.nonResourceAttributes: disallowed on a LocalSubjectAccessReview"
            )
    if non_resource is not None:
        if not isinstance(non_resource, dict):
            raise errors.bad_request("spec.nonResourceAttributes must be an object")
        return RequestInfo(
            path=str(non_resource.get("path") or ""), verb=str(non_resource.get("verb") or "")
        )
    if not isinstance(resource, dict):
        raise errors.bad_request("spec.resourceAttributes must be an object")
    invalid = selector_attributes.causes(resource)
    if invalid:
        raise errors.invalid(kind, "", [e.cause() for e in invalid], AUTHZ_GROUP)
    namespace = str(resource.get("namespace") or "")
    if kind == "LocalSubjectAccessReview" and namespace != (path_namespace or ""):
        raise errors.bad_request(
            f"spec.resourceAttributes.namespace must match the namespace of the request "
            f"({path_namespace!r})"
        )
    return RequestInfo(
        path="",
        verb=str(resource.get("verb") or ""),
        resource_request=True,
        api_group=str(resource.get("group") or ""),
        api_version=str(resource.get("version") or ""),
        namespace=namespace,
        resource=str(resource.get("resource") or ""),
        subresource=str(resource.get("subresource") or ""),
        name=str(resource.get("name") or ""),
    )
