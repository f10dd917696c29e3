"""Who a request is for (haplane.api.request.request_info), from its path alone, as
k8s.io/apiserver's RequestInfoFactory resolves it: the attributes authorization and audit
judge must be the ones the handler serves; and the resolution of a request against the
served types (404s)."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from haplane.api.crds import CRD_TYPE
from haplane.api.errors import StatusError
from haplane.api.request import request_info, resolve_target
from haplane.api.resources import BUILTIN, Registry

REGISTRY = Registry([*BUILTIN, CRD_TYPE])


def info(method: str, path: str, **query: str):
    return request_info(method, path, MultiDict(query))


# METHOD PATH[?QUERY]  ->  verb namespace resource name subresource ("-" for empty)
RESOURCE_CASES = """
GET /api/v1/namespaces                                  list - namespaces - -
GET /api/v1/namespaces/foo                              get foo namespaces foo -
PUT /api/v1/namespaces/foo/status                       update foo namespaces foo status
PUT /api/v1/namespaces/foo/finalize                     update foo namespaces foo finalize
GET /api/v1/namespaces/foo/configmaps                   list foo configmaps - -
GET /api/v1/configmaps                                  list - configmaps - -
GET /api/v1/namespaces/foo/configmaps?watch=true        watch foo configmaps - -
GET /api/v1/watch/namespaces/foo/configmaps             watch foo configmaps - -
GET /api/v1/watch/namespaces/foo/configmaps/a           watch foo configmaps a -
GET /api/v1/namespaces/foo/configmaps/a?watch=1         watch foo configmaps a -
POST /api/v1/namespaces/foo/configmaps                  create foo configmaps - -
PATCH /api/v1/namespaces/foo/configmaps/a               patch foo configmaps a -
DELETE /api/v1/namespaces/foo/configmaps/a              delete foo configmaps a -
DELETE /api/v1/namespaces/foo/configmaps                deletecollection foo configmaps - -
GET /api/v1/namespaces/foo/configmaps?fieldSelector=metadata.name=a     list foo configmaps a -
GET /api/v1/namespaces/foo/configmaps?fieldSelector=metadata.name==a    list foo configmaps a -
GET /api/v1/namespaces/foo/configmaps?fieldSelector=metadata.name!=a    list foo configmaps - -
GET /api/v1/namespaces/foo/configmaps?fieldSelector=metadata.name=a/b   list foo configmaps - -
GET /apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x        get kube-system leases x -
GET /apis/apps/v1/namespaces/foo/deployments/web/scale  get foo deployments web scale
"""


@pytest.mark.parametrize("case", [c for c in RESOURCE_CASES.strip().splitlines() if c])
def test_resource_requests(case: str):
    """A list or watch of one object by field selector is authorized as that object, as in
    Kubernetes (a role limited to resourceNames may watch it)."""
    method, target, *want = case.split()
    path, _, query = target.partition("?")
    key, _, value = query.partition("=")
    got = info(method, path, **({key: value} if key else {}))
    assert got.resource_request
    fields = (got.verb, got.namespace, got.resource, got.name, got.subresource)
    assert fields == tuple("" if w == "-" else w for w in want)


@pytest.mark.parametrize(
    ("method", "path", "verb"),
    [
        ("GET", "/api", "get"),
        ("GET", "/api/v1", "get"),
        ("GET", "/apis", "get"),
        ("GET", "/apis/apps", "get"),
        ("GET", "/apis/apps/v1", "get"),
        ("GET", "/version", "get"),
        ("GET", "/healthz", "get"),
        ("POST", "/metrics", "post"),
        ("GET", "/api/v1/watch", "get"),
    ],
)
def test_non_resource_requests(method, path, verb):
    got = info(method, path)
    assert not got.resource_request and got.verb == verb and got.path == path


def test_group_and_version():
    got = info("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x")
    assert (got.api_group, got.api_version, got.resource, got.name) == (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "x",
    )
    assert info("GET", "/api/v1/configmaps").api_group == ""


def resolve(method: str, path: str):
    return resolve_target(info(method, path), REGISTRY)


def test_resolution():
    t = resolve("GET", "/api/v1/namespaces/foo/configmaps/a")
    assert (t.rtype.plural, t.namespace, t.name, t.subresource) == ("configmaps", "foo", "a", None)
    t = resolve("GET", "/api/v1/namespaces/foo")
    assert (t.rtype.plural, t.namespace, t.name) == ("namespaces", None, "foo")
    t = resolve("PUT", "/api/v1/namespaces/foo/status")
    assert (t.rtype.plural, t.name, t.subresource) == ("namespaces", "foo", "status")
    t = resolve("GET", "/api/v1/configmaps")
    assert t.namespace is None and t.name is None
    assert resolve("GET", "/api/v1/watch/namespaces/foo/configmaps").watch_path


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nothings",
        "/api/v2/configmaps",
        "/api/v1/configmaps/a",  # a name needs a namespace for a namespaced type
        "/api/v1/namespaces/foo/namespaces/bar",  # a cluster-scoped type under a namespace
        "/api/v1/namespaces/foo/configmaps/a/b/c",  # longer than RESOURCE/NAME/SUBRESOURCE
        "/api/v1/namespaces/foo/configmaps/a/status",  # configmaps have no status
        "/api/v1/namespaces/foo/spec",
    ],
)
def test_unknown_targets_are_404(path):
    with pytest.raises(StatusError) as err:
        resolve("GET", path)
    assert err.value.code == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_only_get_is_a_watch_on_a_watch_path(method):
    """Anything else under /watch/ is authorized as what it is (and answered 405): a user
    who may only watch must not create, update or patch through a watch path."""
    got = info(method, "/api/v1/watch/namespaces/ns/configmaps/a")
    assert (
        got.verb
        == {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    )


def test_field_selector_name_is_read_by_the_lists_own_parser():
    assert info("GET", "/api/v1/configmaps", fieldSelector="metadata.name= foo").name == " foo"
    got = info("GET", "/api/v1/configmaps", fieldSelector="metadata.name=a\\,b")
    assert got.name == "a,b"
    assert info("GET", "/api/v1/configmaps", fieldSelector="metadata.name=a,x=y").name == ""
