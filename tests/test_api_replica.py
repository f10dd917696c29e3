"""One replica as a process: /readyz follows etcd quorum, /metrics counts, SIGTERM drains."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request

from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster


async def test_readyz_fails_without_quorum_and_recovers(tmp_path):
    cluster = EtcdCluster(tmp_path / "etcd")
    await cluster.start()
    replica = ApiReplica(tmp_path, "api-q", cluster.endpoints)
    try:
        await replica.start()
        assert (await asyncio.to_thread(replica.request, "GET", "/readyz"))[0] == 200
        for name in cluster.names[1:]:
            await cluster.processes[name].fault("kill")
        deadline = time.monotonic() + 10
        status = 200
        while time.monotonic() < deadline and status == 200:
            status, _, text = await asyncio.to_thread(replica.request, "GET", "/readyz")
            await asyncio.sleep(0.2)
        assert status == 503 and "etcd" in text
        assert (await asyncio.to_thread(replica.request, "GET", "/livez"))[0] == 200
        for name in cluster.names[1:]:
            await cluster.processes[name].fault("restart")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and status != 200:
            status, _, _ = await asyncio.to_thread(replica.request, "GET", "/readyz")
            await asyncio.sleep(0.2)
        assert status == 200
    finally:
        await replica.stop()
        await cluster.stop()


def test_metrics_count_requests(api_replicas, namespace):
    api = api_replicas[1]
    for _ in range(3):
        api.request("GET", f"/api/v1/namespaces/{namespace}/configmaps")
    status, headers, text = api.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("apiserver_request_total{")
        and 'verb="list"' in ln
        and 'resource="configmaps"' in ln
        and 'code="200"' in ln
    )
    assert float(line.rsplit(" ", 1)[1]) >= 3
    assert "apiserver_request_duration_seconds_bucket" in text
    assert "apiserver_watches" in text
    assert 'etcd_request_duration_seconds_count{operation="list"}' in text


async def test_sigterm_drains_then_exits(etcd_cluster, tmp_path):
    replica = ApiReplica(tmp_path, "api-d", etcd_cluster.endpoints, drain_delay=1.5)
    await replica.start()
    req = replica.request
    watch_lines: list[dict] = []
    watch_done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def watch() -> None:
        try:
            with urllib.request.urlopen(
                f"{replica.url}/api/v1/namespaces?watch=true", timeout=30
            ) as resp:
                for line in resp:  # ends cleanly when the server ends the stream
                    watch_lines.append(json.loads(line))
        finally:
            loop.call_soon_threadsafe(watch_done.set)

    watcher = asyncio.ensure_future(asyncio.to_thread(watch))
    await asyncio.sleep(0.5)
    assert watch_lines, "the watch should have delivered the current namespaces"
    pid = replica.process.pid
    assert pid is not None
    replica.process._proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    await asyncio.sleep(0.3)
    status, _, _ = await asyncio.to_thread(req, "GET", "/readyz")
    assert status == 503  # balancers take it out first...
    status, headers, _ = await asyncio.to_thread(req, "GET", "/api/v1/namespaces/default")
    assert status == 200 and headers.get("Connection") == "close"  # ...while it still serves
    assert not watch_done.is_set()
    await asyncio.wait_for(watch_done.wait(), timeout=10)  # then the watch ends cleanly
    await watcher
    rc = await asyncio.wait_for(replica.process._proc.wait(), timeout=15)  # type: ignore[union-attr]
    assert rc == 0
    await replica.stop()
