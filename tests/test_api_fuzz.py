"""Fuzzing the request path of a real replica process (hypothesis): create, update and patch
bodies of every kind and media type, query parameters and headers. Whatever comes in, the
answer is never a 5xx, every refusal is a Kubernetes `Status` carrying its own code, and the
process stays up and ready."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haplane.local.api_replica import ApiReplica

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = ["metadata", "data", "spec", "status", "kind", "apiVersion", "stringData", "type"]
META = ["name", "namespace", "labels", "annotations", "resourceVersion", "uid", "finalizers",
        "ownerReferences", "generateName", "managedFields", "deletionTimestamp"]  # fmt: skip
objects = st.fixed_dictionaries(
    {},
    optional={
        **{f: json_values for f in FIELDS},
        "metadata": st.fixed_dictionaries({}, optional={m: json_values for m in META}),
    },
)
bodies = st.one_of(
    objects.map(lambda o: json.dumps(o).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.sampled_from([b"", b"{", b"[]", b"null", b'{"a": NaN}', b"1e999", b"\xff\xfe", b"- a"]),
)
MEDIA = [
    "application/json",
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
    "text/plain",
    "",
]
RESOURCES = [
    "configmaps",
    "secrets",
    "serviceaccounts",
    "events",
    "namespaces",
    "leases",
    "roles",
    "rolebindings",
    "nothings",
]
QUERY_KEYS = ["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion",
              "resourceVersionMatch", "dryRun", "fieldManager", "force", "propagationPolicy",
              "includeObject", "sendInitialEvents", "allowWatchBookmarks", "timeoutSeconds",
              "orphanDependents", "pretty"]  # fmt: skip
queries = st.dictionaries(st.sampled_from(QUERY_KEYS), st.text(max_size=30), max_size=4)
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
headers = st.dictionaries(
    st.sampled_from(["Accept", "X-Anything", "User-Agent", "Accept-Encoding", "X-Remote-User"]),
    header_text,
    max_size=3,
)


def _path(namespace: str, resource: str, name: str | None, sub: str | None) -> str:
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    groups = {"leases": "/apis/coordination.k8s.io/v1", "roles": rbac, "rolebindings": rbac}
    group = groups.get(resource, "/api/v1")
    base = (
        f"{group}/namespaces/{namespace}/{resource}"
        if resource != "namespaces"
        else f"{group}/namespaces"
    )
    if name is not None:
        base += "/" + urllib.parse.quote(name, safe="")
    if sub is not None:
        base += "/" + sub
    return base


def _send(api: ApiReplica, method: str, path: str, body: bytes, ctype: str, hdrs: dict) -> tuple:
    host, _, port = api.url.removeprefix("http://").rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        h = dict(hdrs)
        if ctype:
            h["Content-Type"] = ctype
        conn.request(method, path, body=body if method != "GET" else None, headers=h)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read()
    finally:
        conn.close()


def _check(status: int, ctype: str | None, payload: bytes, what: str) -> None:
    assert status < 500, f"{what}: {status} {payload[:300]!r}"
    if status >= 400:
        assert ctype == "application/json", f"{what}: {status} {ctype} {payload[:200]!r}"
        doc = json.loads(payload)
        assert doc["kind"] == "Status" and doc["code"] == status, f"{what}: {doc}"


FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same cases every run: a failure reproduces
)


@pytest.fixture(scope="module")
def fuzz_namespace(api_replicas: list[ApiReplica]) -> str:
    api_replicas[0].request("POST", "/api/v1/namespaces", {"metadata": {"name": "fuzz"}})
    api_replicas[0].request(
        "POST",
        "/api/v1/namespaces/fuzz/configmaps",
        {"metadata": {"name": "target"}, "data": {"k": "v"}},
    )
    return "fuzz"


@FUZZ
@given(
    method=st.sampled_from(["POST", "PUT", "PATCH"]),
    resource=st.sampled_from(RESOURCES),
    name=st.one_of(st.none(), st.just("target"), st.text(min_size=1, max_size=12)),
    sub=st.one_of(st.none(), st.sampled_from(["status", "scale", "finalize", "token", "x"])),
    body=bodies,
    ctype=st.sampled_from(MEDIA),
    query=queries,
    hdrs=headers,
)
def test_writes_never_answer_5xx(
    api_replicas, fuzz_namespace, method, resource, name, sub, body, ctype, query, hdrs
):
    api = api_replicas[0]
    path = _path(fuzz_namespace, resource, name, sub if name is not None else None)
    if query:
        path += "?" + urllib.parse.urlencode(query)
    status, rctype, payload = _send(api, method, path, body, ctype, hdrs)
    _check(status, rctype, payload, f"{method} {path} {ctype} {body[:80]!r}")


@FUZZ
@given(
    resource=st.sampled_from(RESOURCES),
    name=st.one_of(st.none(), st.just("target"), st.text(min_size=1, max_size=12)),
    query=queries,
    hdrs=headers,
    method=st.sampled_from(["GET", "DELETE", "HEAD", "OPTIONS"]),
)
def test_reads_and_deletes_never_answer_5xx(
    api_replicas, fuzz_namespace, resource, name, query, hdrs, method
):
    api = api_replicas[0]
    query = {k: v for k, v in query.items() if k != "watch"}
    path = _path(fuzz_namespace, resource, name, None)
    if query:
        path += "?" + urllib.parse.urlencode(query)
    status, rctype, payload = _send(api, method, path, b"", "", hdrs)
    if method == "HEAD":
        assert status < 500
        return
    _check(status, rctype, payload, f"{method} {path}")


def test_the_replica_is_still_up_after_fuzzing(api_replicas, fuzz_namespace):
    api = api_replicas[0]
    assert api.process.pid is not None
    assert api.request("GET", "/readyz")[0] == 200
    created = api.request(
        "POST", "/api/v1/namespaces/fuzz/configmaps", {"metadata": {"generateName": "after-"}}
    )
    assert created[0] == 201
    name = created[2]["metadata"]["name"]
    assert api.request("GET", f"/api/v1/namespaces/fuzz/configmaps/{name}")[0] == 200


ADMIN_TOKEN = "fuzz-admin-token"


@pytest_asyncio.fixture(scope="module")
async def audited(etcd_cluster, tmp_path_factory) -> AsyncIterator[ApiReplica]:
    """A replica with authentication, RBAC and the audit log on (every fuzzed request is
    authenticated as an administrator, audited, and must still never be a 5xx)."""
    root = tmp_path_factory.mktemp("fuzz-audited")
    (root / "tokens.csv").write_text(f'{ADMIN_TOKEN},root,u-0,"system:masters"\n')
    replica = ApiReplica(
        root,
        "audited",
        etcd_cluster.endpoints,
        region="fuzz",
        extra_args=[
            "--authorization-mode",
            "RBAC",
            "--anonymous",
            "health",
            "--token-auth-file",
            str(root / "tokens.csv"),
            "--audit-log-path",
            str(root / "audit.log"),
        ],
    )
    await replica.start()
    try:
        yield replica
    finally:
        await replica.stop()


@FUZZ
@given(
    method=st.sampled_from(["POST", "PUT", "PATCH"]),
    resource=st.sampled_from(RESOURCES),
    name=st.one_of(st.none(), st.just("target"), st.text(min_size=1, max_size=12)),
    body=bodies,
    ctype=st.sampled_from(MEDIA),
    hdrs=headers,
)
def test_audited_writes_never_answer_5xx(audited, method, resource, name, body, ctype, hdrs):
    path = _path("fuzz", resource, name, None)
    hdrs = {**hdrs, "Authorization": f"Bearer {ADMIN_TOKEN}"}
    hdrs.pop("X-Remote-User", None)  # refused (401) by design: not what this fuzzes
    status, rctype, payload = _send(audited, method, path, body, ctype, hdrs)
    _check(status, rctype, payload, f"{method} {path} {ctype} {body[:80]!r}")


def test_the_audited_replica_logged_and_stays_up(audited):
    assert audited.request("GET", "/readyz")[0] == 200
    log = audited.root / "audit.log"
    lines = log.read_text().split("\n")[:-1]  # JSON may hold U+2028: not a line break here
    assert len(lines) > 300
    for line in lines:
        json.loads(line)  # every line is one complete JSON event
