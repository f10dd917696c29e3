"""A standby region serves what replication brings, as it arrives: a client watching a standby's
API replica directly sees replicated creates, updates and deletes in order, and a replicated CRD
starts being served there with its objects. The standby's replica writes nothing itself.

Two etcd clusters ("src" active, "dst" a standby of it), a writable API replica on src, a
fenced standby replica on dst, and a replicator copying src into dst."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from haplane.replication import Replicator
from haplane.store import FENCE_KEY, FenceValue, GlobalState
from tests.test_api_crds import crd
from tests.topology_helpers import fenced_replica_args

pytestmark = pytest.mark.timeout(180)


def _wait(check, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


async def test_a_standby_serves_replicated_changes_in_order_and_new_crds(
    tmp_path: Path, etcd_cluster: EtcdCluster, key_prefix: bytes
) -> None:
    src_c = EtcdCluster(tmp_path / "src", scope="src")
    dst_c = EtcdCluster(tmp_path / "dst", scope="dst")
    await asyncio.gather(src_c.start(), dst_c.start())
    control = etcd_cluster.client(2.0)
    src, dst = src_c.client(2.0), dst_c.client(2.0)
    active = ApiReplica(tmp_path, "api-src", src_c.endpoints, region="src")
    standby = ApiReplica(
        tmp_path,
        "api-dst",
        dst_c.endpoints,
        region="dst",
        extra_args=fenced_replica_args(etcd_cluster.endpoints, key_prefix, FENCE_KEY),
    )
    rep = Replicator("dst", dst, {"src": src}, identity="dst/r")
    task: asyncio.Task[None] | None = None
    try:
        await GlobalState(control, prefix=key_prefix).initialize(
            "src", by="t", reason="t", fresh=True
        )
        await dst.put(FENCE_KEY, FenceValue.standby("src", 1).encode())
        await active.start()
        task = asyncio.create_task(rep.run())
        await standby.start()
        base = "/api/v1/namespaces/shop/configmaps"
        # the write must have happened (a loaded machine can time a first request out)
        shop = {"metadata": {"name": "shop"}}
        await asyncio.to_thread(
            _wait, lambda: active.request("POST", "/api/v1/namespaces", shop)[0] in (201, 409)
        )
        await asyncio.to_thread(
            _wait, lambda: standby.request("GET", "/api/v1/namespaces/shop")[0] == 200
        )
        events: list[dict] = []

        def watch() -> None:
            url = f"{standby.url}{base}?watch=true&timeoutSeconds=20"
            with urllib.request.urlopen(url, timeout=30) as resp:
                for line in resp:
                    events.append(json.loads(line))
                    if len(events) == 4:
                        return

        watcher = threading.Thread(target=watch)
        watcher.start()
        await asyncio.sleep(0.5)
        for method, path, body, want in (
            ("POST", base, {"metadata": {"name": "a"}, "data": {"v": "1"}}, 201),
            ("PUT", f"{base}/a", {"metadata": {"name": "a"}, "data": {"v": "2"}}, 200),
            ("POST", base, {"metadata": {"name": "b"}}, 201),
            ("DELETE", f"{base}/a", None, 200),
        ):
            assert active.request(method, path, body)[0] == want, (method, path)
        await asyncio.to_thread(watcher.join, 20)
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "a"),
            ("MODIFIED", "a"),
            ("ADDED", "b"),
            ("DELETED", "a"),
        ]
        assert events[1]["object"]["data"] == {"v": "2"}
        revisions = [int(e["object"]["metadata"]["resourceVersion"].split(".")[0]) for e in events]
        assert revisions == sorted(revisions)

        # a CRD created in the active region is served by the standby as it arrives
        active.request(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            crd("repl.example.com"),
        )
        widgets = "/apis/repl.example.com/v1/namespaces/shop/widgets"
        await asyncio.to_thread(_wait, lambda: active.request("GET", widgets)[0] == 200)
        status, _, body = active.request(
            "POST", widgets, {"apiVersion": "repl.example.com/v1", "kind": "Widget",
                              "metadata": {"name": "w1"}, "spec": {"color": "red"}}
        )  # fmt: skip
        assert status == 201, body
        got = await asyncio.to_thread(
            _wait, lambda: (r := standby.request("GET", f"{widgets}/w1"))[0] == 200 and r
        )
        assert got[2]["spec"] == {"color": "red", "replicas": 1}
        # and it takes no write of its own: the region is not active
        status, _, body = standby.request("POST", base, {"metadata": {"name": "mine"}})
        assert status == 503 and "writes go to region src" in body["message"]
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await rep.resign()
        await standby.stop()
        await active.stop()
        for c in (control, src, dst):
            await c.close()
        await asyncio.gather(src_c.stop(), dst_c.stop())
