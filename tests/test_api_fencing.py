"""An API replica process under the global state: writes only while its region holds the
current, writable epoch; the epoch in headers, resourceVersions and the write journal; versions
of an older epoch refused; watches ended on an epoch change so clients relist."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path

from haplane.local.api_replica import ApiReplica
from haplane.store import GlobalState, RegionFence
from tests.topology_helpers import fenced_replica_args, make_active


def _wait(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_writes_follow_the_epoch(etcd_cluster, key_prefix, tmp_path: Path) -> None:
    client = etcd_cluster.client(timeout=2.0)
    state, fence = await make_active(client, key_prefix, "test", key_prefix + b"fence")
    journal = tmp_path / "writes.jsonl"
    replica = ApiReplica(
        tmp_path,
        "api-fenced",
        etcd_cluster.endpoints,
        extra_args=fenced_replica_args(
            etcd_cluster.endpoints, key_prefix, key_prefix + b"fence", journal
        ),
    )
    await replica.start()
    try:
        await asyncio.to_thread(
            _scenario, replica, state, fence, asyncio.get_running_loop(), journal
        )
    finally:
        await replica.stop()
        await client.close()


def _scenario(
    replica: ApiReplica, state: GlobalState, fence: RegionFence, loop, journal: Path
) -> None:
    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    ns = f"fence-{time.time_ns()}"
    code, headers, body = replica.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    assert code == 201 and headers["X-Haplane-Epoch"] == "1", body
    old_rv = body["metadata"]["resourceVersion"]
    assert old_rv.endswith(".1")

    # a watch open across the epoch change must end (its versions are of the old epoch)
    ended = threading.Event()

    def watch() -> None:
        url = f"{replica.url}/api/v1/namespaces?watch=1&resourceVersion={old_rv}"
        with urllib.request.urlopen(url, timeout=20) as resp:
            resp.read()
        ended.set()

    threading.Thread(target=watch, daemon=True).start()
    time.sleep(0.3)

    run(state.switch("elsewhere", expected_epoch=1, by="t", reason="test"))
    run(fence.freeze())
    code, headers, body = _wait(
        lambda: (
            (r := replica.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns + "-x"}}))[
                0
            ]
            == 503
            and r
        )
    )
    assert "elsewhere" in body["message"] and body["reason"] == "ServiceUnavailable"
    # the epoch the request began under: 2, or 1 when the data fence refused it before the
    # replica had read the new record (the refusal then read it, to name the active region)
    assert headers["X-Haplane-Epoch"] in ("1", "2")
    assert ended.wait(5), "the watch of the old epoch did not end"
    code, _, body = replica.request("GET", f"/api/v1/namespaces?watch=1&resourceVersion={old_rv}")
    assert code == 410 or '"code":410' in json.dumps(body).replace(" ", ""), body
    code, _, body = replica.request("GET", f"/api/v1/namespaces/{ns}")
    assert code == 200 and body["metadata"]["resourceVersion"].endswith(".2")  # reads go on

    # back to this region: fenced until unfenced, then writable under epoch 3
    run(state.switch("test", expected_epoch=2, by="t", reason="test"))
    code, _, body = _wait(
        lambda: (
            (r := replica.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns + "-y"}}))[
                0
            ]
            == 503
            and "becomes writable" in r[2]["message"]
            and r
        )
    )
    run(fence.activate(3))
    run(state.unfence(3))
    code, headers, body = _wait(
        lambda: (
            (r := replica.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns + "-z"}}))[
                0
            ]
            == 201
            and r
        )
    )
    assert headers["X-Haplane-Epoch"] == "3" and body["metadata"]["resourceVersion"].endswith(".3")

    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    mine = {line["key"].rsplit("/", 1)[-1]: line for line in lines if ns in line["key"]}
    # refused writes are not journaled; "-x" may have been written before the replica's next
    # read of the global state (within one poll), but only under epoch 1
    assert {ns, ns + "-z"} <= set(mine) <= {ns, ns + "-x", ns + "-z"}
    assert mine[ns]["epoch"] == 1 and mine[ns + "-z"]["epoch"] == 3
    assert mine.get(ns + "-x", {"epoch": 1})["epoch"] == 1
    assert all(line["sent"] <= line["acked"] and line["region"] == "test" for line in lines)
