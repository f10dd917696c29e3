"""What every link of the request path shares: who the request is for (`RequestInfo`, resolved
from the path alone, as k8s.io/apiserver's RequestInfoFactory does, so that authorization and
audit see the same verb and resource the handler serves), the resolved `Target`, and request
decoding in one place (bodies in JSON, YAML or protobuf; list, delete, patch and dry-run
options; the field manager).

Layer: api, below both the filter chain (`haplane.api.filters`) and the handlers
(`haplane.api.handlers`): it imports neither, nor the server. Pure functions of the request,
except the body readers, which await its payload.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
import yaml
from aiohttp import HttpVersion11, web

from haplane.auth.user import Attributes, UserInfo

from . import errors, protobuf
from .generic_store import ListOptions
from .resources import Registry, ResourceType
from .selectors import SelectorError, parse_field_selector, parse_label_selector
from .storage import MAX_VALUE_BYTES, finite

JSON = "application/json"
MAX_BODY_BYTES = 3 * 1024 * 1024  # kube-apiserver's limit; etcd's is checked per object

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
Admission = Callable[[str, ResourceType, dict[str, Any]], Awaitable[None]]

# request keys the links share: the audit link puts a callable here, which a handler that
# streams (a watch) calls once its response has begun; decoded bodies are kept under "object"
RESPONSE_STARTED = "response_started"

# The authenticated user of the request this task serves (None: the replica's own work, such as
# its controllers): set by the authentication filter, read where a check deep in the store needs
# it (RBAC's escalation prevention), so that no store method grows a `user` parameter.
REQUEST_USER: ContextVar[UserInfo | None] = ContextVar("haplane_request_user", default=None)

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch"}
# Kubernetes' namespace subresources: /api/v1/namespaces/NAME/status is the namespace's own
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_SEGMENT = re.compile(r"^[^/%]+$")


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=errors.dumps(body), status=status, content_type=JSON, headers=headers)


# ---- who the request is for --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """k8s.io/apiserver's RequestInfo: resource requests carry the verb (get, list, watch,
    create, update, patch, delete, deletecollection), group, version, namespace, resource,
    subresource and name; anything else is a non-resource request whose verb is the HTTP
    method in lower case. `namespaced_path`: the path named the namespace as a prefix
    (`.../namespaces/NS/RESOURCE`), which a cluster-scoped resource may not have."""

    path: str
    verb: str
    resource_request: bool = False
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    parts: tuple[str, ...] = ()  # the path after RESOURCE (name, subresource, more)
    namespaced_path: bool = False
    watch_path: bool = False


def request_info(method: str, path: str, query: Any) -> RequestInfo:
    """The request's attributes from its method, path and query alone (no registry: an
    unknown resource is a resource request all the same, answered 404 by the handler after
    authorization, as Kubernetes orders it)."""
    parts = [p for p in path.split("/") if p]
    non_resource = RequestInfo(path=path, verb=method.lower())
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return non_resource
    watch_path = rest[0] == "watch"
    if watch_path:
        rest = rest[1:]
        if not rest:
            return non_resource
    # only GET is served under /watch/ (Kubernetes registers nothing else there): any other
    # method keeps its own verb, so it is authorized as what it is and then refused (405)
    verb = "watch" if watch_path and method == "GET" else _VERBS.get(method, "")
    if method == "DELETE":
        verb = "delete"
    namespace, namespaced_path = "", False
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
            namespaced_path = True
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if not name and verb == "get":
        verb = "watch" if query.get("watch") in ("true", "1") else "list"
    elif verb == "get" and query.get("watch") in ("true", "1"):
        verb = "watch"
    if not name and verb in ("list", "watch"):
        # a list or watch of one object by field selector is authorized as that object's
        # (a role limited to resourceNames may watch it), as Kubernetes does
        selected = _exact_name(query.get("fieldSelector"))
        if selected:
            name = selected
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(
        path=path,
        verb=verb,
        resource_request=True,
        api_group=group,
        api_version=version,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
        parts=tuple(rest[1:]),
        namespaced_path=namespaced_path,
        watch_path=watch_path,
    )


def attributes(info: RequestInfo, user: UserInfo) -> Attributes:
    """What authorization and audit judge: this user asking this."""
    return Attributes(
        user=user.name,
        groups=user.groups,
        verb=info.verb,
        namespace=info.namespace,
        api_group=info.api_group,
        resource=info.resource,
        subresource=info.subresource,
        name=info.name,
        path=info.path,
        resource_request=info.resource_request,
        api_version=info.api_version,
    )


def _exact_name(selector: str | None) -> str:
    """The name an "=" requirement on metadata.name demands, read by the same parser the list
    applies (so the object authorized is the object listed); "" when there is none, the
    selector does not parse (the handler answers 400), or the name is no path segment."""
    if not selector:
        return ""
    try:
        value = parse_field_selector(selector, {"metadata.name", "metadata.namespace"}).value_of(
            "metadata.name"
        )
    except SelectorError:
        return ""
    if not value or not _SEGMENT.match(value) or value in (".", ".."):
        return ""
    return value


@dataclass(frozen=True, slots=True)
class Target:
    """A resource request resolved against the served types."""

    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    watch_path: bool


def resolve_target(info: RequestInfo, registry: Registry) -> Target:
    """The served type the request names, or 404: an unknown resource, a name with no
    namespace for a namespaced type, a namespace prefix on a cluster-scoped one, a subresource
    the type has not, or a path longer than RESOURCE/NAME/SUBRESOURCE."""
    t = registry.get(info.api_group, info.api_version, info.resource)
    if t is None or len(info.parts) > 2:
        raise errors.no_such_resource(info.path)
    if info.namespaced_path and not t.namespaced:
        raise errors.no_such_resource(info.path)
    name = info.parts[0] if info.parts else None
    sub = info.subresource or None
    if sub is not None and sub not in subresources(t):
        raise errors.no_such_resource(info.path)
    namespace = info.namespace if t.namespaced and info.namespaced_path else None
    if t.namespaced and namespace is None and name is not None:
        raise errors.no_such_resource(info.path)
    return Target(t, namespace, name, sub, info.watch_path)


def subresources(t: ResourceType) -> tuple[str, ...]:
    return ("status", "finalize") if t.kind == "Namespace" and not t.group else t.subresources


# ---- query options -----------------------------------------------------------------------


def list_options(q: Any, t: ResourceType) -> ListOptions:
    supported = {"metadata.name"} | ({"metadata.namespace"} if t.namespaced else set())
    try:
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"), supported)
    except SelectorError as exc:
        raise errors.bad_request(str(exc)) from exc
    limit = bounded_int(q.get("limit") or "0", "limit")
    return ListOptions(
        labels,
        fields,
        limit,
        q.get("continue") or None,
        q.get("resourceVersion") or None,
        q.get("resourceVersionMatch") or None,
    )


def delete_options(body: dict[str, Any]) -> dict[str, str]:
    """The parts of DeleteOptions we honour, type-checked (400 on nonsense)."""
    pre = body.get("preconditions") or {}
    dry = body.get("dryRun") or []
    if not isinstance(pre, dict) or not isinstance(dry, list):
        raise errors.bad_request("DeleteOptions: preconditions must be an object, dryRun a list")
    out: dict[str, str] = {}
    policy = body.get("propagationPolicy")
    if policy is not None:
        if not isinstance(policy, str):
            raise errors.bad_request("DeleteOptions: propagationPolicy must be a string")
        out["propagationPolicy"] = policy
    if body.get("orphanDependents") is True:
        out["propagationPolicy"] = "Orphan"
    for f in ("uid", "resourceVersion"):
        v = pre.get(f)
        if v is not None:
            if not isinstance(v, str):
                raise errors.bad_request(f"DeleteOptions: preconditions.{f} must be a string")
            out[f] = v
    if dry:
        if dry != ["All"]:
            raise errors.bad_request("DeleteOptions: dryRun supports only [All]")
        out["dryRun"] = "All"
    return out


_INT64_MAX = 2**63 - 1


def bounded_int(text: str, what: str) -> int:
    """A non-negative integer that fits etcd's int64 fields, or 400."""
    try:
        value = int(text)
    except ValueError as exc:
        raise errors.bad_request(f"invalid {what} {text!r}: not an integer") from exc
    if not 0 <= value <= _INT64_MAX:
        raise errors.bad_request(f"invalid {what} {text!r}: out of range")
    return value


def field_manager(request: web.BaseRequest) -> str:
    """The `fieldManager` parameter, else (as Kubernetes) the User-Agent up to its first '/'."""
    manager = request.query.get("fieldManager")
    if not manager:
        manager = request.headers.get("User-Agent", "unknown").split("/")[0] or "unknown"
    return manager[:128]


def include_object(q: Any) -> str:
    value = q.get("includeObject") or "Metadata"
    if value not in ("None", "Metadata", "Object"):
        raise errors.bad_request(f"invalid includeObject {value!r}: None, Metadata or Object")
    return str(value)


def dry_run(q: Any) -> bool:
    values = q.getall("dryRun", [])
    for v in values:
        if v != "All":
            raise errors.bad_request(f"unsupported dryRun value {v!r}: only All is supported")
    return bool(values)


def content_type(request: web.BaseRequest) -> str:
    return request.headers.get("Content-Type", "").split(";")[0].strip()


# ---- bodies ------------------------------------------------------------------------------


class _JsonishLoader(yaml.SafeLoader):
    """YAML that maps onto JSON: no aliases (an alias bomb would expand on the event loop) and
    no timestamps or sets (not JSON types)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases are not accepted")
        return super().compose_node(parent, index)


_JsonishLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def json_loads(raw: bytes) -> tuple[Any, bool]:
    """(document, whether it is known to be finite). orjson (6x faster on a create's body,
    bench/json_codecs.py) refuses NaN and infinities itself; what it refuses goes to the
    standard library, which words the error as before or reads what only it accepts (a lone
    surrogate; an infinity, for the caller's `finite` check to refuse). An integer beyond 64
    bits becomes a float, as in Kubernetes' own decoding of unstructured JSON (float64 beyond
    int64)."""
    try:
        return orjson.loads(raw), True
    except orjson.JSONDecodeError:
        return json.loads(raw, parse_constant=_reject_constant), False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def expect(request: web.BaseRequest) -> None:
    """`Expect: 100-continue` (curl sends it with bodies over 1 KiB): let the body come. An
    Application did this itself; the low-level server leaves it to us. Other expectations
    are refused with 417, as Go's server (and so kube-apiserver) refuses them."""
    expectation = request.headers.get("Expect", "")
    if request.version != HttpVersion11:
        return
    if expectation.lower() != "100-continue":
        raise errors.StatusError(417, "ExpectationFailed", f"unsupported Expect: {expectation!r}")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the response proper has not begun


async def raw_body(request: web.BaseRequest) -> bytes:
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise errors.too_large(f"the request body of {length} bytes exceeds {MAX_BODY_BYTES}")
    data = await request.read()
    if len(data) > MAX_VALUE_BYTES:
        raise errors.too_large(
            f"the request body of {len(data)} bytes exceeds etcd's limit ({MAX_VALUE_BYTES})"
        )
    return data


async def body(
    request: web.BaseRequest, optional: bool = False, content_type: str | None = None
) -> Any:
    """The request's object: JSON, YAML (no aliases, JSON types only) or, for the kinds
    kubectl sends typed, protobuf; 400 when it is not an object, 415 for other media."""
    raw = await raw_body(request)
    if not raw.strip():
        if optional:
            return None
        raise errors.bad_request("the request needs a body")
    ctype = content_type or request.headers.get("Content-Type", JSON).split(";")[0].strip()
    if ctype == protobuf.PROTOBUF:
        # kubectl sends typed creates (`kubectl create configmap ...`) as protobuf
        try:
            decoded = protobuf.decode(raw)
            request["object"] = decoded
            return decoded
        except protobuf.UnsupportedKind as exc:
            raise errors.unsupported_media(str(exc)) from exc
        except protobuf.ProtobufError as exc:
            raise errors.bad_request(f"the request body is not valid {ctype}: {exc}") from exc
    try:
        if ctype in ("application/yaml", "application/x-yaml", "text/yaml"):
            decoded = yaml.load(raw, Loader=_JsonishLoader)  # a SafeLoader subclass
            json.dumps(decoded)  # sets, dates and other non-JSON YAML types end here
            checked = False
        elif ctype in (JSON, ""):
            decoded, checked = json_loads(raw)
        else:
            raise errors.unsupported_media(
                f"unsupported media type {ctype!r}: send application/json or application/yaml"
            )
    except (ValueError, TypeError, yaml.YAMLError) as exc:
        raise errors.bad_request(f"the request body is not valid {ctype}: {exc}") from exc
    if not checked and not finite(decoded):
        raise errors.bad_request("the request body holds a number too large for JSON")
    if not isinstance(decoded, dict):
        raise errors.bad_request("the request body must be an object")
    request["object"] = decoded  # for the audit log
    return decoded
