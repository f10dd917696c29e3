"""The API's self-description: /api, /apis, /apis/GROUP, the resource lists of each
group-version, /version and /openapi.

Layer: api (handlers). Pure functions of the served types.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from haplane import __version__

from .. import errors
from ..request import json_response, subresources
from ..resources import Registry

KUBE_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0+haplane"}


_SUBRESOURCE_VERBS = {"finalize": ["update"], "token": ["create"]}


def version() -> web.Response:
    return json_response({**KUBE_VERSION, "platform": "linux/amd64", "haplaneVersion": __version__})


def discover(registry: Registry, path: str, parts: list[str], address: str) -> web.Response | None:
    """The discovery document at `path` (GET), or None when the path is not one."""
    if path == "/api":
        return json_response(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": address}
                ],
            }
        )
    if path == "/apis":
        return json_response(
            {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [_group(g, vs) for g, vs in registry.groups().items()],
            }
        )
    if parts[:1] == ["apis"] and len(parts) == 2:
        versions = registry.groups().get(parts[1])
        if versions is None:
            raise errors.no_such_resource(path)
        return json_response({"apiVersion": "v1", **_group(parts[1], versions)})
    if path == "/api/v1":
        return json_response(resource_list(registry, "", "v1"))
    if parts[:1] == ["apis"] and len(parts) == 3:
        if not registry.in_group_version(parts[1], parts[2]):
            raise errors.no_such_resource(path)
        return json_response(resource_list(registry, parts[1], parts[2]))
    return None


def _group(group: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "name": group, "versions": gvs, "preferredVersion": gvs[0]}


def resource_list(registry: Registry, group: str, version: str) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for t in registry.in_group_version(group, version):
        entry: dict[str, Any] = {
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": list(t.verbs),
        }
        if t.short_names:
            entry["shortNames"] = list(t.short_names)
        if t.categories:
            entry["categories"] = list(t.categories)
        resources.append(entry)
        for sub in subresources(t):
            entry = {
                "name": f"{t.plural}/{sub}",
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": _SUBRESOURCE_VERBS.get(sub, ["get", "patch", "update"]),
            }
            if sub == "scale":
                entry.update(kind="Scale", group="autoscaling", version="v1")
            if sub == "token":
                entry.update(kind="TokenRequest", group="authentication.k8s.io", version="v1")
            resources.append(entry)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def openapi(request: web.BaseRequest, parts: list[str]) -> web.Response:
    # kubectl fetches /openapi/v2 as protobuf for client-side validation: an empty document
    # (no schemas) lets validation pass. /openapi/v3 lists no paths, so kubectl does not
    # expect server-side field validation.
    if parts[1:2] == ["v2"]:
        if "protobuf" in request.headers.get("Accept", ""):
            return web.Response(
                body=b"",
                headers={
                    "Content-Type": "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
                },
            )
        return json_response(
            {
                "swagger": "2.0",
                "info": {"title": "haplane", "version": __version__},
                "paths": {},
                "definitions": {},
            }
        )
    if parts[1:2] == ["v3"]:
        return json_response({"paths": {}})
    raise errors.no_such_resource(request.path)
