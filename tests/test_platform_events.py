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
        pe.post_safely(load_example("two-regions"), StateDir(tmp_path), type_="Normal",
                       reason="X", kind="Region", name="eu-west", message="m")
    )  # fmt: skip
    assert got is False
