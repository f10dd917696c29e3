"""Kubernetes Events for the platform's own doings (`haplane.local.platform_events`): the
object's shape (as kube-apiserver and `kubectl get events` expect it), what a supervisor log
event says, which ones are forwarded, and that a failure to post never raises."""

from __future__ import annotations

import asyncio
from pathlib import Path

from haplane.local import platform_events as pe
from haplane.local.state_dir import StateDir
from haplane.topology import load_example


def test_an_event_object_is_a_core_v1_event_about_a_haplane_object() -> None:
    obj = pe.event_object(
        type_="Warning", reason="DrillFailed", kind="Drill", name="Region-Kill/x",
        message="m" * 2000,
    )  # fmt: skip
    assert obj["apiVersion"] == "v1" and obj["kind"] == "Event"
    meta = obj["metadata"]
    assert meta["namespace"] == "kube-system" and meta["name"].startswith("drill-region-kill-x.")
    assert obj["involvedObject"] == {
        "apiVersion": "haplane.dev/v1alpha1", "kind": "Drill", "name": "Region-Kill/x",
        "namespace": "kube-system",
    }  # fmt: skip
    assert obj["type"] == "Warning" and obj["count"] == 1 and len(obj["message"]) == 1024
    assert obj["firstTimestamp"] == obj["lastTimestamp"] and obj["source"]["component"]
    # a name the API takes, also when the object's name is long or ends oddly; the same
    # (type, reason, object) is the same Event (a repeat counts up in it)
    from haplane.api.validation import object_meta_errors

    for name in ("x" * 300, "a-" * 120, "Ünïcode!", "eu-west/etcd-1"):
        o = pe.event_object(type_="Normal", reason="R", kind="K", name=name, message="m")
        assert (
            object_meta_errors(o["metadata"], namespaced=True, name_rule="dns1123-subdomain") == []
        )
    again = pe.event_object(type_="Warning", reason="DrillFailed", kind="Drill",
                            name="Region-Kill/x", message="other")  # fmt: skip
    assert again["metadata"]["name"] == obj["metadata"]["name"]


def test_what_is_forwarded_and_what_it_says(tmp_path: Path) -> None:
    fwd = pe.EventForwarder(load_example("two-regions"), StateDir(tmp_path))
    logged: list[str] = []
    emit = fwd.wrap(lambda e, f: logged.append(e))
    emit("drill-failed", {"scenario": "blip", "passed": False, "said": "a write was lost"})
    emit("healthy", {"seconds": 3})  # logged, not an Event
    emit("runbook-not-fired", {"runbook": "r", "why": "parameter snapshot has no value"})
    assert logged == ["drill-failed", "healthy", "runbook-not-fired"]
    queued = [fwd.queue.get_nowait() for _ in range(fwd.queue.qsize())]
    assert [(o["reason"], o["involvedObject"]["name"]) for o in queued] == [
        ("DrillFailed", "blip"), ("RunbookNotFired", "r"),
    ]  # fmt: skip
    assert queued[0]["message"] == "drill-failed: a write was lost (scenario=blip, passed=False)"
    assert queued[1]["message"] == "runbook-not-fired: parameter snapshot has no value (runbook=r)"


def test_posting_without_a_platform_is_false_never_an_exception(tmp_path: Path) -> None:
    got = asyncio.run(
        pe.post_safely(load_example("two-regions"), StateDir(tmp_path), attempts=1,
                       type_="Normal", reason="X", kind="Region", name="eu-west", message="m")
    )  # fmt: skip
    assert got is False


def test_send_creates_counts_up_retries_or_gives_up() -> None:
    """Against a stand-in API: 201 recorded; 409 (the same Event again) read and counted
    up; 503 worth another try; 422 never."""
    from aiohttp import web

    from haplane.auth.kubeconfig import Credentials
    from haplane.kubeclient import KubeClient

    stored: dict[str, dict] = {}
    answers: list[int] = []

    async def create(request: web.Request) -> web.Response:
        if answers:
            return web.json_response({"message": "no"}, status=answers.pop(0))
        obj = await request.json()
        name = obj["metadata"]["name"]
        if name in stored:
            return web.json_response({"message": "exists"}, status=409)
        stored[name] = obj
        return web.json_response(obj, status=201)

    async def get(request: web.Request) -> web.Response:
        return web.json_response(stored[request.match_info["name"]])

    async def put(request: web.Request) -> web.Response:
        stored[request.match_info["name"]] = await request.json()
        return web.json_response(stored[request.match_info["name"]])

    async def main() -> None:
        app = web.Application()
        base = "/api/v1/namespaces/kube-system/events"
        app.router.add_post(base, create)
        app.router.add_get(base + "/{name}", get)
        app.router.add_put(base + "/{name}", put)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        client = KubeClient(Credentials(f"http://127.0.0.1:{port}", None, None, "t"), agent="t")
        try:
            first = pe.event_object(type_="Warning", reason="DrillFailed", kind="Drill",
                                    name="blip", message="one")  # fmt: skip
            assert await pe.send(client, first) is True
            second = {**pe.event_object(type_="Warning", reason="DrillFailed", kind="Drill",
                                        name="blip", message="two")}  # fmt: skip
            assert await pe.send(client, second) is True
            (only,) = stored.values()
            assert only["count"] == 2 and only["message"] == "two"
            answers.append(503)
            assert await pe.send(client, first) is False
            answers.append(422)
            try:
                await pe.send(client, first)
                raise AssertionError("422 must be Undeliverable")
            except pe.Undeliverable as exc:
                assert "422" in str(exc)
        finally:
            await client.close()
            await runner.cleanup()

    asyncio.run(main())
