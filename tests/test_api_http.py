"""The API server over raw HTTP, on real replica processes and a real etcd: discovery, verbs,
selectors, paging, patches, preconditions, dry runs, resourceVersion rules, and bad input."""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from haplane.local.api_replica import ApiReplica


@pytest.fixture
def api(api_replicas: list[ApiReplica]) -> ApiReplica:
    return api_replicas[0]


def cm(name: str, labels: dict[str, str] | None = None, **data: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels or {}},
        "data": data,
    }


def test_discovery(api: ApiReplica):
    status, headers, body = api.request("GET", "/api/v1")
    assert status == 200 and headers["Content-Type"] == "application/json"
    by_name = {r["name"]: r for r in body["resources"]}
    assert by_name["configmaps"]["shortNames"] == ["cm"]
    assert by_name["configmaps"]["singularName"] == "configmap"
    assert by_name["configmaps"]["namespaced"] is True
    assert "watch" in by_name["configmaps"]["verbs"]
    assert by_name["namespaces"]["namespaced"] is False
    assert "namespaces/status" in by_name
    _, _, groups = api.request("GET", "/apis")
    names = [g["name"] for g in groups["groups"]]
    assert names[:2] == ["coordination.k8s.io", "apiextensions.k8s.io"]  # then any CRD groups
    _, _, group = api.request("GET", "/apis/coordination.k8s.io")
    assert group["preferredVersion"]["groupVersion"] == "coordination.k8s.io/v1"
    _, _, leases = api.request("GET", "/apis/coordination.k8s.io/v1")
    assert [r["name"] for r in leases["resources"]] == ["leases"]
    status, _, version = api.request("GET", "/version")
    assert status == 200 and version["major"] == "1"
    assert api.request("GET", "/api")[2]["versions"] == ["v1"]
    assert api.request("GET", "/openapi/v3")[0] == 200
    assert api.request("GET", "/openapi/v2")[0] == 200


def test_headers_name_region_and_replica(api: ApiReplica):
    _, headers, _ = api.request("GET", "/api/v1/namespaces/default")
    assert headers["X-Haplane-Region"] == "test"
    assert headers["X-Haplane-Replica"] == "api-1"
    assert headers["X-Haplane-Epoch"] == "0"


def test_create_get_update_delete_with_metadata(api: ApiReplica, namespace: str):
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    status, _, created = api.request("POST", base, cm("a", {"app": "x"}, k="v"))
    assert status == 201
    meta = created["metadata"]
    assert created["kind"] == "ConfigMap" and created["apiVersion"] == "v1"
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert meta["namespace"] == namespace and meta["resourceVersion"]
    status, _, again = api.request("POST", base, cm("a"))
    assert status == 409 and again["reason"] == "AlreadyExists" and again["kind"] == "Status"

    got = api.request("GET", f"{base}/a")[2]
    assert got == created
    got["data"]["k"] = "v2"
    status, _, updated = api.request("PUT", f"{base}/a", got)
    assert status == 200 and updated["metadata"]["generation"] == 2
    assert updated["metadata"]["uid"] == meta["uid"]
    assert updated["metadata"]["creationTimestamp"] == meta["creationTimestamp"]
    # a stale resourceVersion is a conflict
    status, _, conflict = api.request("PUT", f"{base}/a", got)
    assert status == 409 and conflict["reason"] == "Conflict"
    # labels-only change does not bump generation
    updated["metadata"]["labels"]["more"] = "yes"
    status, _, relabelled = api.request("PUT", f"{base}/a", updated)
    assert status == 200 and relabelled["metadata"]["generation"] == 2

    status, _, deleted = api.request("DELETE", f"{base}/a")
    assert status == 200 and deleted["status"] == "Success"
    assert api.request("GET", f"{base}/a")[0] == 404


def test_generate_name_and_owner_references(api: ApiReplica, namespace: str):
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "1234"}
    body = {
        "metadata": {"generateName": "gen-", "ownerReferences": [owner], "annotations": {"a": "b"}}
    }
    status, _, created = api.request("POST", base, body)
    assert status == 201
    assert created["metadata"]["name"].startswith("gen-")
    assert len(created["metadata"]["name"]) == len("gen-") + 5
    assert created["metadata"]["ownerReferences"] == [owner]
    assert created["metadata"]["annotations"] == {"a": "b"}


def test_missing_namespace_is_not_found(api: ApiReplica):
    status, _, body = api.request("POST", "/api/v1/namespaces/nope-x/configmaps", cm("a"))
    assert status == 404 and body["reason"] == "NotFound" and "nope-x" in body["message"]


def test_list_with_selectors_and_paging(api: ApiReplica, namespace: str):
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    for i in range(5):
        labels = {"tier": "web" if i % 2 == 0 else "db", "idx": str(i)}
        if i == 4:
            labels.pop("tier")
        api.request("POST", base, cm(f"c{i}", labels))

    def names(query: str) -> list[str]:
        status, _, body = api.request("GET", f"{base}?{query}")
        assert status == 200, body
        assert body["kind"] == "ConfigMapList" and "items" in body
        return [i["metadata"]["name"] for i in body["items"]]

    assert names("labelSelector=tier%3Dweb") == ["c0", "c2"]
    assert names("labelSelector=tier%3D%3Dweb") == ["c0", "c2"]
    assert names("labelSelector=tier!%3Dweb") == ["c1", "c3", "c4"]
    assert names("labelSelector=tier%20in%20(db,web),idx%20notin%20(0)") == ["c1", "c2", "c3"]
    assert names("labelSelector=tier") == ["c0", "c1", "c2", "c3"]
    assert names("labelSelector=!tier") == ["c4"]
    assert names("fieldSelector=metadata.name%3Dc3") == ["c3"]
    assert names("fieldSelector=metadata.name!%3Dc3") == ["c0", "c1", "c2", "c4"]
    assert names(f"fieldSelector=metadata.namespace%3D{namespace}") == [f"c{i}" for i in range(5)]
    assert api.request("GET", f"{base}?labelSelector=a%20in%20(")[0] == 400
    assert api.request("GET", f"{base}?fieldSelector=spec.x%3D1")[0] == 400

    # limit / continue
    seen, token, pages = [], "", 0
    while True:
        q = "limit=2" + (f"&continue={token}" if token else "")
        body = api.request("GET", f"{base}?{q}")[2]
        seen += [i["metadata"]["name"] for i in body["items"]]
        pages += 1
        token = body["metadata"].get("continue", "")
        if not token:
            break
        assert body["metadata"]["remainingItemCount"] == 5 - len(seen)
    assert seen == [f"c{i}" for i in range(5)] and pages == 3
    assert api.request("GET", f"{base}?limit=2&continue=garbage")[0] == 400

    # all namespaces
    status, _, everything = api.request("GET", "/api/v1/configmaps?labelSelector=idx%3D3")
    assert status == 200
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everything["items"]] == [
        (namespace, "c3")
    ]


def test_patches(api: ApiReplica, namespace: str):
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    api.request(
        "POST",
        base,
        {
            "metadata": {
                "name": "p",
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "a", "uid": "u1"}],
            },
            "data": {"a": "1"},
        },
    )

    def patch(ctype: str, body) -> tuple[int, dict]:
        status, _, out = api.request("PATCH", f"{base}/p", body, content_type=ctype)
        return status, out

    status, out = patch("application/merge-patch+json", {"data": {"b": "2", "a": None}})
    assert status == 200 and out["data"] == {"b": "2"}
    status, out = patch(
        "application/json-patch+json",
        [
            {"op": "test", "path": "/data/b", "value": "2"},
            {"op": "add", "path": "/data/c", "value": "3"},
        ],
    )
    assert status == 200 and out["data"] == {"b": "2", "c": "3"}
    status, out = patch(
        "application/json-patch+json", [{"op": "test", "path": "/data/b", "value": "nope"}]
    )
    assert status == 422 and out["kind"] == "Status"
    assert api.request("GET", f"{base}/p")[2]["data"] == {"b": "2", "c": "3"}  # unchanged
    status, out = patch(
        "application/strategic-merge-patch+json",
        {
            "metadata": {
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "b", "uid": "u2"}]
            }
        },
    )
    assert status == 200
    # merged by uid; as in Kubernetes, a new item with no $setElementOrder comes first
    assert [o["uid"] for o in out["metadata"]["ownerReferences"]] == ["u2", "u1"]
    status, out = patch("application/apply-patch+yaml", {"data": {}})
    assert status == 422 and "fieldManager" in out["message"]  # apply needs a manager
    status, out = patch("text/plain", {"data": {}})
    assert status == 415
    status, out = patch("application/merge-patch+json", {"metadata": {"name": "other"}})
    assert status == 400


def test_delete_preconditions_dry_run_and_collection(api: ApiReplica, namespace: str):
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    created = api.request("POST", base, cm("d", {"x": "1"}))[2]
    status, _, body = api.request("DELETE", f"{base}/d", {"preconditions": {"uid": "wrong"}})
    assert status == 409
    status, _, body = api.request("DELETE", f"{base}/d?dryRun=All")
    assert status == 200 and api.request("GET", f"{base}/d")[0] == 200
    status, _, body = api.request(
        "DELETE",
        f"{base}/d",
        {
            "preconditions": {
                "uid": created["metadata"]["uid"],
                "resourceVersion": created["metadata"]["resourceVersion"],
            }
        },
    )
    assert status == 200
    # dry-run create and update write nothing
    status, _, body = api.request("POST", f"{base}?dryRun=All", cm("dry"))
    assert status == 201 and api.request("GET", f"{base}/dry")[0] == 404
    for n in ("e1", "e2", "f1"):
        api.request("POST", base, cm(n, {"grp": n[0]}))
    status, _, body = api.request("DELETE", f"{base}?labelSelector=grp%3De")
    assert status == 200 and sorted(i["metadata"]["name"] for i in body["items"]) == ["e1", "e2"]
    left = api.request("GET", base)[2]["items"]
    assert [i["metadata"]["name"] for i in left] == ["f1"]


def test_secrets_string_data_and_validation(api: ApiReplica, namespace: str):
    base = f"/api/v1/namespaces/{namespace}/secrets"
    status, _, s = api.request(
        "POST", base, {"metadata": {"name": "s"}, "stringData": {"pw": "hunter2"}}
    )
    assert status == 201 and s["data"] == {"pw": "aHVudGVyMg=="} and "stringData" not in s
    assert s["type"] == "Opaque"
    status, _, body = api.request(
        "POST", base, {"metadata": {"name": "bad"}, "data": {"k": "not base64!"}}
    )
    assert status == 422 and body["reason"] == "Invalid"


def test_bad_input_is_a_clear_status(api: ApiReplica, namespace: str):
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    status, headers, body = api.request("POST", base, raw=b"{not json")
    assert (
        status == 400 and body["kind"] == "Status" and headers["Content-Type"] == "application/json"
    )
    status, _, body = api.request(
        "POST", base, {"apiVersion": "v2", "kind": "ConfigMap", "metadata": {"name": "x"}}
    )
    assert status == 400
    status, _, body = api.request("POST", base, {"kind": "Secret", "metadata": {"name": "x"}})
    assert status == 400
    status, _, body = api.request("POST", base, cm("Not_A_Name"))
    assert status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    status, _, body = api.request("POST", base, cm("big", big="x" * (2 * 1024 * 1024)))
    assert status == 413 and body["reason"] == "RequestEntityTooLarge"
    assert api.request("GET", f"/api/v1/namespaces/{namespace}/widgets")[0] == 404
    assert api.request("GET", "/apis/nope.example.com/v1")[0] == 404
    status, _, body = api.request(
        "POST", base, raw=b"metadata: {name: y}\n", content_type="application/yaml"
    )
    assert status == 201 and body["metadata"]["name"] == "y"
    assert api.request("GET", f"{base}/x")[0] == 404  # nothing half-written


def test_resource_versions_from_elsewhere(api: ApiReplica, namespace: str):
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    created = api.request("POST", base, cm("rv"))[2]
    rev, tag, epoch = created["metadata"]["resourceVersion"].split(".")
    foreign = f"{rev}.{'0' * 8 if tag != '0' * 8 else '1' * 8}.{epoch}"
    older_epoch = f"{rev}.{tag}.{int(epoch) + 7}"
    for bad in (foreign, older_epoch):
        body = dict(created, metadata={**created["metadata"], "resourceVersion": bad})
        status, _, out = api.request("PUT", f"{base}/rv", body)
        assert status == 409, out
        status, _, out = api.request("GET", f"{base}?resourceVersion={bad}")
        assert status == 410 and out["reason"] == "Expired"
    assert api.request("GET", f"{base}?resourceVersion=garbage")[0] == 400


def test_watch_events_and_too_old(api: ApiReplica, namespace: str):
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    first = api.request("POST", base, cm("w1"))[2]
    events: list[dict] = []

    def reader() -> None:
        rv = first["metadata"]["resourceVersion"]
        url = f"{api.url}{base}?watch=true&resourceVersion={rv}&timeoutSeconds=5"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            for line in resp:
                events.append(json.loads(line))
                if len(events) == 3:
                    return

    t = threading.Thread(target=reader)
    t.start()
    import time

    time.sleep(0.5)
    api.request("POST", base, cm("w2"))
    got = api.request("GET", f"{base}/w2")[2]
    got["data"] = {"x": "1"}
    api.request("PUT", f"{base}/w2", got)
    api.request("DELETE", f"{base}/w2")
    t.join(timeout=10)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "w2"),
        ("MODIFIED", "w2"),
        ("DELETED", "w2"),
    ]
    assert all(e["object"]["kind"] == "ConfigMap" for e in events)

    status, _, _ = api.request("GET", f"{base}?watch=true&sendInitialEvents=true")
    assert 400 <= status < 500


async def test_compaction_expires_old_versions_and_continue_tokens(
    api: ApiReplica, namespace: str, etcd_cluster, tmp_path
):
    import asyncio

    # a replica without the watch cache watches etcd itself: compaction shows through
    uncached = ApiReplica(tmp_path, "api-nocache", etcd_cluster.endpoints)
    uncached.process.spec.argv.append("--no-watch-cache")
    await uncached.start()
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    old = (await asyncio.to_thread(api.request, "POST", base, cm("old")))[2]
    for n in ("p1", "p2", "p3"):
        await asyncio.to_thread(api.request, "POST", base, cm(n))
    page = (await asyncio.to_thread(api.request, "GET", f"{base}?limit=2"))[2]
    token = page["metadata"]["continue"]
    latest = (await asyncio.to_thread(api.request, "POST", base, cm("new")))[2]
    async with etcd_cluster.client() as c:
        await c.compact(int(latest["metadata"]["resourceVersion"].split(".")[0]))

    def watch_first_line(rv: str) -> dict:
        url = f"{uncached.url}{base}?watch=true&resourceVersion={rv}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.readline())

    try:
        line = await asyncio.to_thread(watch_first_line, old["metadata"]["resourceVersion"])
    finally:
        await uncached.stop()
    assert line["type"] == "ERROR" and line["object"]["code"] == 410
    # (a replica with the watch cache serves its own window instead: test_watch_cache)
    status, _, body = await asyncio.to_thread(
        api.request, "GET", f"{base}?limit=2&continue={token}"
    )
    assert status == 410 and body["reason"] == "Expired"
    old_rv = old["metadata"]["resourceVersion"]
    # "not older than" an old version: the latest state is fine
    status, _, body = await asyncio.to_thread(
        api.request, "GET", f"{base}?resourceVersion={old_rv}"
    )
    assert status == 200 and len(body["items"]) == 5
    # exactly at a compacted version: gone
    status, _, body = await asyncio.to_thread(
        api.request, "GET", f"{base}?resourceVersion={old_rv}&resourceVersionMatch=Exact"
    )
    assert status == 410


def test_watch_with_selector_sees_objects_enter_and_leave(api: ApiReplica, namespace: str):
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    start = api.request("POST", base, cm("sel", {"tier": "db"}))[2]
    events: list[tuple[str, str]] = []

    def reader() -> None:
        rv = start["metadata"]["resourceVersion"]
        url = (
            f"{api.url}{base}?watch=true&labelSelector=tier%3Dweb&resourceVersion={rv}"
            "&allowWatchBookmarks=true&timeoutSeconds=12"
        )
        with urllib.request.urlopen(url, timeout=20) as resp:
            for line in resp:
                ev = json.loads(line)
                events.append((ev["type"], ev["object"]["metadata"].get("name", "")))
                if ev["type"] == "BOOKMARK":
                    assert ev["object"]["metadata"]["resourceVersion"]
                    return

    t = threading.Thread(target=reader)
    t.start()
    import time

    time.sleep(0.5)
    obj = api.request("GET", f"{base}/sel")[2]
    obj["metadata"]["labels"] = {"tier": "web"}  # enters the selection
    obj = api.request("PUT", f"{base}/sel", obj)[2]
    obj["data"] = {"x": "1"}  # changes within it
    obj = api.request("PUT", f"{base}/sel", obj)[2]
    obj["metadata"]["labels"] = {"tier": "db"}  # leaves it
    api.request("PUT", f"{base}/sel", obj)
    api.request("POST", base, cm("other", {"tier": "db"}))  # never in it
    t.join(timeout=20)
    assert events == [("ADDED", "sel"), ("MODIFIED", "sel"), ("DELETED", "sel"), ("BOOKMARK", "")]


def test_concurrent_puts_with_one_resource_version_let_exactly_one_win(
    api_replicas, namespace: str
):
    # HTTP rarely hits the internal retry; test_generic_store forces that interleaving.
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    a, _b = api_replicas
    created = a.request("POST", base, cm("race", x="0"))[2]
    results: list[int] = []

    def put(replica: ApiReplica, i: int) -> None:
        body = dict(created, data={"x": str(i + 1)})  # every PUT changes something
        results.append(replica.request("PUT", f"{base}/race", body)[0])

    threads = [threading.Thread(target=put, args=(api_replicas[i % 2], i)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [409] * 11, results


# ---- regressions found in review: each failed before its fix -----------------------------


def test_watch_that_times_out_ends_cleanly(api: ApiReplica, namespace: str):
    url = f"{api.url}/api/v1/namespaces/{namespace}/configmaps?watch=true&timeoutSeconds=1"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = resp.read()  # raises IncompleteRead if the chunked stream is broken
    assert body == b""


def test_a_client_that_leaves_a_quiet_watch_frees_it(api: ApiReplica, namespace: str):
    import socket
    import time

    def open_watches() -> float:
        text = api.request("GET", "/metrics")[2]
        return sum(
            float(ln.rsplit(" ", 1)[1])
            for ln in text.splitlines()
            if ln.startswith('apiserver_watches{resource="configmaps"}')
        )

    before = open_watches()
    sock = socket.create_connection(("127.0.0.1", api.port))
    sock.sendall(
        f"GET /api/v1/namespaces/{namespace}/configmaps?watch=true&resourceVersion=0 HTTP/1.1\r\n"
        f"Host: x\r\n\r\n".encode()
    )
    time.sleep(0.5)
    assert open_watches() == before + 1
    sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and open_watches() != before:
        time.sleep(0.2)
    assert open_watches() == before


def test_quiet_watches_on_a_busy_resource_still_time_out_and_notice_a_client_leaving(
    api: ApiReplica, namespace: str, api_replicas: list[ApiReplica]
):
    """Changes in another namespace (and ones a selector filters out) stream past these
    watches; timeoutSeconds must still end one, and a departed client must still be noticed."""
    import socket
    import threading
    import time

    busy = f"{namespace}-busy"
    assert api.request("POST", "/api/v1/namespaces", {"metadata": {"name": busy}})[0] == 201
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            api.request("POST", f"/api/v1/namespaces/{busy}/configmaps", cm(f"c{i}"))
            api.request(
                "POST", f"/api/v1/namespaces/{namespace}/configmaps", cm(f"f{i}", {"x": "y"})
            )

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        for query in ("", "&labelSelector=x%3Dz"):  # other namespace; filtered by a selector
            t0 = time.monotonic()
            url = (
                f"{api.url}/api/v1/namespaces/{namespace}/configmaps?watch=true"
                f"&resourceVersion=0&timeoutSeconds=2{query}"
            )
            with urllib.request.urlopen(url, timeout=15) as resp:
                body = resp.read()
            assert time.monotonic() - t0 < 5, query
            if query:
                assert body == b""
        sock = socket.create_connection(("127.0.0.1", api.port))
        sock.sendall(
            f"GET /api/v1/namespaces/{namespace}/configmaps?watch=true&resourceVersion=0"
            f"&labelSelector=x%3Dz HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        time.sleep(0.5)
        metric = 'apiserver_watches{resource="configmaps"}'

        def open_watches() -> float:
            text = api.request("GET", "/metrics")[2]
            return sum(
                float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(metric)
            )

        before = open_watches()
        sock.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and open_watches() != before - 1:
            time.sleep(0.2)
        assert open_watches() == before - 1
    finally:
        stop.set()
        writer.join(10)


def test_namespace_status_subresource(api: ApiReplica, namespace: str):
    path = f"/api/v1/namespaces/{namespace}"
    ns = api.request("GET", f"{path}/status")[2]
    assert ns["status"]["phase"] == "Active"
    ns["status"]["conditions"] = [{"type": "Test", "status": "True"}]
    ns["metadata"]["labels"]["ignored"] = "yes"  # only .status changes through /status
    status, _, out = api.request("PUT", f"{path}/status", ns)
    assert status == 200 and out["status"]["conditions"][0]["type"] == "Test"
    assert "ignored" not in out["metadata"]["labels"]
    assert api.request("DELETE", f"{path}/status")[0] == 405
    assert api.request("GET", path)[0] == 200  # still there


@pytest.mark.parametrize(
    ("method", "path", "raw", "ctype", "code"),
    [
        ("POST", "/configmaps", b'{"metadata": {"name": "n"}, "x": NaN}', "application/json", 400),
        (
            "POST",
            "/configmaps",
            b'{"metadata": {"name": "n"}, "x": 1e400}',
            "application/json",
            400,
        ),
        (
            "POST",
            "/configmaps",
            b"a: &x [1]\nb: *x\nmetadata: {name: n}\n",
            "application/yaml",
            400,
        ),
        ("GET", "/configmaps?limit=9223372036854775808", None, "", 400),
        ("GET", "/configmaps?resourceVersion=99999999999999999999.00000000.0", None, "", 400),
        ("GET", "/configmaps?watch=true&timeoutSeconds=nan", None, "", 400),
        ("DELETE", "/configmaps/missing", b'{"preconditions": "x"}', "application/json", 400),
        (
            "POST",
            "/secrets",
            b'{"metadata": {"name": "s"}, "data": "x", "stringData": {"a": "b"}}',
            "application/json",
            422,
        ),
    ],
)
def test_bad_input_regressions(api: ApiReplica, namespace, method, path, raw, ctype, code):
    status, headers, body = api.request(
        method, f"/api/v1/namespaces/{namespace}{path}", raw=raw, content_type=ctype
    )
    assert status == code, body
    assert body["kind"] == "Status" and headers["Content-Type"] == "application/json"


def test_more_bad_input_regressions(api: ApiReplica, namespace: str):
    assert api.request("GET", "/")[0] == 404
    status, _, body = api.request("POST", "/api/v1/namespaces", {"metadata": {}})
    assert status == 422 and body["reason"] == "Invalid"
    # a YAML date stays a string (JSON has no dates)
    status, _, body = api.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        raw=b"metadata: {name: dated}\ndata: {when: 2020-01-01}\n",
        content_type="application/yaml",
    )
    assert status == 201 and body["data"] == {"when": "2020-01-01"}


def test_a_patch_cannot_store_an_infinity_and_null_stays_null(api: ApiReplica, namespace: str):
    """orjson writes non-finite floats as null: storage must refuse them, not store null; a
    real null in an object must still be stored."""
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    created = {"metadata": {"name": "inf"}, "data": {"a": "1"}}
    assert api.request("POST", path, created)[0] == 201
    status, _, body = api.request(
        "PATCH",
        f"{path}/inf",
        raw=b'{"metadata": {"annotations": null}, "x": 1e400}',
        content_type="application/merge-patch+json",
    )
    assert status in (400, 422) and body["kind"] == "Status", body
    assert "x" not in api.request("GET", f"{path}/inf")[2]
    with_null = {"metadata": {"name": "nulls", "labels": None}, "data": {"a": "1"}}
    status, _, body = api.request("POST", path, with_null)
    assert status == 201 and body["data"] == {"a": "1"}, body


def test_expect_100_continue_lets_the_body_come(api: ApiReplica, namespace: str):
    """curl sends `Expect: 100-continue` with bodies over 1 KiB and waits for the 100 before
    sending them; another expectation is refused with 417."""
    import socket

    body = json.dumps({"metadata": {"name": "expect"}, "data": {"p": "x" * 2000}}).encode()
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    host, port = api.url.removeprefix("http://").rsplit(":", 1)

    def send(expect: str) -> socket.socket:
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: {expect}\r\n\r\n".encode()
        )
        return sock

    with send("100-continue") as sock:
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim  # before the body
        sock.sendall(body)
        answer = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 201"), answer
    with send("something-else") as sock:
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 417"), answer
        assert b'"kind":"Status"' in answer.replace(b" ", b"")


@pytest.mark.parametrize("name", ["default", "kube-system", "kube-public"])
def test_system_namespaces_may_not_be_deleted(api: ApiReplica, name: str):
    """As Kubernetes' NamespaceLifecycle admission: 403 whoever asks, dry run included; the
    namespace stays Active."""
    for query in ("", "?dryRun=All"):
        status, _, body = api.request("DELETE", f"/api/v1/namespaces/{name}{query}")
        assert status == 403 and body["reason"] == "Forbidden"
        assert "this namespace may not be deleted" in body["message"]
    status, _, ns = api.request("GET", f"/api/v1/namespaces/{name}")
    assert status == 200 and ns["status"]["phase"] == "Active"
    assert "deletionTimestamp" not in ns["metadata"]


def test_namespaces_have_no_deletecollection(api: ApiReplica):
    status, _, body = api.request("DELETE", "/api/v1/namespaces")
    assert status == 405 and body["reason"] == "MethodNotAllowed"
    _, _, resources = api.request("GET", "/api/v1")
    verbs = {r["name"]: r["verbs"] for r in resources["resources"]}
    assert "deletecollection" not in verbs["namespaces"]
    assert "deletecollection" in verbs["configmaps"]
    assert api.request("GET", "/api/v1/namespaces/kube-system")[0] == 200
