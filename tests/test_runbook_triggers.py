"""Runbooks fired by events (`haplane.local.runbook_triggers`): which events a status shows,
which triggers they match, once per appearance (two looks in a row, a cool-down), the
parameters an event fills, and the command a firing runs, recorded instead of run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from haplane.local import runbook_triggers as rt
from haplane.local.runbook import Trigger, load_shipped, load_text
from haplane.local.state_dir import StateDir


def status(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "clusters": [
            {"name": "global/etcd", "quorum": True},
            {"name": "eu-west/etcd", "quorum": True},
            {"name": "eu-central/etcd", "quorum": True},
        ],
        "replicas": [
            {"name": "eu-west/api-1", "ready": True},
            {"name": "eu-west/api-2", "ready": False},
            {"name": "eu-central/api-1", "ready": True},
        ],
        "replication": [
            {"region": "eu-west", "state": "Idle", "lag_seconds": None, "report_age": 0.1},
            {"region": "eu-central", "state": "Streaming", "lag_seconds": 0.2, "report_age": 0.1},
        ],
        "global_state": {"active": {"region": "eu-west"}},
    }
    doc.update(over)
    return doc


def test_events_a_status_shows() -> None:
    assert [e.type for e in rt.events_in(status())] == ["replication-lag-over"]  # (0.2 s)
    doc = status()
    doc["clusters"][1]["quorum"] = False
    doc["replicas"][2]["ready"] = False
    doc["replication"][1] = {"region": "eu-central", "state": "Disconnected", "lag_seconds": 3}
    got = {(e.type, e.scope, e.lag_seconds) for e in rt.events_in(doc)}
    assert got == {
        ("quorum-lost", "eu-west", None),
        ("region-down", "eu-west", None),  # its etcd: once, not again for its replicas
        ("region-down", "eu-central", None),  # no ready replica
        ("replication-lag-over", "eu-central", None),  # not streaming: no lag to trust
    }
    doc["clusters"][0]["quorum"] = False
    assert ("quorum-lost", "global") in {(e.type, e.scope) for e in rt.events_in(doc)}
    assert "region-down" not in {e.type for e in rt.events_in(doc) if e.scope == "global"}
    # a report gone stale (its replicator died) is no lag to trust; the active region, or
    # an unknown one, has no replication to judge
    doc = status()
    doc["replication"][1]["report_age"] = 30.0
    lag = [e for e in rt.events_in(doc) if e.type == "replication-lag-over"]
    assert [(e.scope, e.lag_seconds) for e in lag] == [("eu-central", None)]
    doc["replication"][0]["state"] = "no report"
    assert [e.scope for e in rt.events_in(doc) if e.type == "replication-lag-over"] == [
        "eu-central"
    ]
    doc["global_state"] = {"active": None}
    assert [e for e in rt.events_in(doc) if e.type == "replication-lag-over"] == []


@pytest.mark.parametrize(
    ("trigger", "event", "fires"),
    [
        (Trigger("quorum-lost", "global"), rt.Event("quorum-lost", "global"), True),
        (Trigger("quorum-lost", "global"), rt.Event("quorum-lost", "eu-west"), False),
        (Trigger("quorum-lost", "region"), rt.Event("quorum-lost", "eu-west"), True),
        (Trigger("quorum-lost", "region"), rt.Event("quorum-lost", "global"), False),
        (Trigger("quorum-lost", "eu-west"), rt.Event("quorum-lost", "eu-central"), False),
        (Trigger("region-down"), rt.Event("region-down", "eu-west"), True),
        (Trigger("region-down"), rt.Event("quorum-lost", "eu-west"), False),
        (Trigger("replication-lag-over", None, 5), rt.Event("replication-lag-over", "b", 6), True),
        (Trigger("replication-lag-over", None, 5), rt.Event("replication-lag-over", "b", 4), False),
        (Trigger("replication-lag-over", None, 5), rt.Event("replication-lag-over", "b"), True),
    ],
)
def test_which_triggers_an_event_matches(trigger: Trigger, event: rt.Event, fires: bool) -> None:
    assert rt.matches(trigger, event) is fires


def test_once_per_appearance_after_two_looks_and_a_cool_down() -> None:
    book = load_shipped("region-lost")
    down = [rt.Event("region-down", "eu-west")]
    w = rt.Watch()
    assert w.due([book], down, 0.0) == []  # a blip: one look
    assert w.due([book], [], 10.0) == []  # gone
    assert w.due([book], down, 20.0) == []
    assert [(b.name, e.scope) for b, e in w.due([book], down, 30.0)] == [("region-lost", "eu-west")]
    assert w.due([book], down, 40.0) == []  # still down: not again
    assert w.due([book], [], 50.0) == []
    assert w.due([book], down, 60.0) == []
    assert w.due([book], down, 70.0) == []  # back within the cool-down...
    assert w.due([book], down, 600.0) == []
    assert len(w.due([book], down, 640.0)) == 1  # ...and still there after it: fired once
    assert w.due([book], down, 650.0) == []
    # another scope is another event; a runbook without that trigger never fires
    other = [rt.Event("region-down", "eu-central")]
    assert w.due([book, load_shipped("etcd-member-lost")], other, 1030.0) == []
    assert [b.name for b, _ in w.due([book], other, 1040.0)] == ["region-lost"]
    # a failed snapshot, an event of one moment: at once, and again only after the cool-down
    snap = load_text(
        "apiVersion: haplane.dev/v1alpha1\nkind: Runbook\nmetadata: {name: snap}\nspec:\n"
        "  triggers: [{type: snapshot-failed}]\n"
        "  steps: [{name: a, kind: check, expr: 'true'}]\n",
        "test",
    )
    failing = [rt.Event("snapshot-failed", "eu-west")]
    assert w.due([book], failing, 0.0) == []  # region-lost declares no snapshot-failed
    assert len(w.due([snap], failing, 0.0)) == 1
    assert w.due([snap], [], 5.0) == []
    assert w.due([snap], failing, 10.0) == []  # within the cool-down
    assert w.due([snap], [], 700.0) == []
    assert len(w.due([snap], failing, 710.0)) == 1


def test_one_outage_fires_a_runbook_once_whichever_events_show_it() -> None:
    """quorum-lost and region-down of one region, both declared: one firing, not a second
    when the first event clears and the cool-down is over."""
    both = load_text(
        "apiVersion: haplane.dev/v1alpha1\nkind: Runbook\nmetadata: {name: both}\nspec:\n"
        "  triggers: [{type: quorum-lost, scope: region}, {type: region-down}]\n"
        "  steps: [{name: a, kind: check, expr: 'true'}]\n",
        "test",
    )
    outage = [rt.Event("quorum-lost", "eu-west"), rt.Event("region-down", "eu-west")]
    w = rt.Watch()
    w.due([both], outage, 0.0)
    assert len(w.due([both], outage, 10.0)) == 1
    assert w.due([both], outage[1:], 700.0) == []  # the same outage, one event left


def test_a_pause_needs_two_looks_again() -> None:
    book = load_shipped("region-lost")
    down = [rt.Event("region-down", "eu-west")]
    w = rt.Watch()
    w.due([book], down, 0.0)
    w.reset()  # an operation held the lock meanwhile
    assert w.due([book], down, 10.0) == []
    assert len(w.due([book], down, 20.0)) == 1


def test_parameters_from_the_event(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    event = rt.Event("quorum-lost", "eu-central")
    restore = load_shipped("regional-etcd-quorum-lost")
    why = rt.parameters(restore, event, state)
    assert why == "parameter snapshot has no value from a quorum-lost event of eu-central"
    assert rt.parameters(load_shipped("region-lost"), rt.Event("region-down", "eu-west"),
                         state) == {"region": "eu-west"}  # fmt: skip
    assert rt.parameters(load_shipped("global-etcd-quorum-lost"),
                         rt.Event("quorum-lost", "global"), state) == {}  # fmt: skip


def test_a_diagnosis_runs_a_repair_is_only_proposed(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """region-lost has no action: it runs (journaled, the report's outcome said); the restore
    runbook acts: the command is proposed, nothing runs and nothing is asked for."""
    calls: list[list[str]] = []

    async def run(argv: list[str], timeout: float) -> tuple[int, str, str]:
        calls.append(argv)
        return 1, '{"outcome": "failed", "failedStep": "promoted", "journal": "/j"}', ""

    monkeypatch.setattr(rt, "run_primitive", run)
    events: list[tuple[str, dict[str, object]]] = []
    state = StateDir(tmp_path)
    book = load_shipped("region-lost")
    assert not book.acts and load_shipped("regional-etcd-quorum-lost").acts
    asyncio.run(rt.fire(book, rt.Event("region-down", "eu-west", detail="no quorum"), state,
                        lambda e, f: events.append((e, f))))  # fmt: skip
    (argv,) = calls
    assert argv[3:] == [
        "runbook", "run", "region-lost", "-p", "region=eu-west", "--sha256", book.digest,
        "--json", "--state-dir", str(tmp_path),
    ]  # fmt: skip
    assert [e for e, _ in events] == ["runbook-fired", "runbook-run"]  # (it did its job)
    assert events[1][1]["said"] == "failed at step promoted" and events[1][1]["journal"] == "/j"
    events.clear()

    class Meta:  # a kept snapshot of eu-west taken as a standby
        def __init__(self, id_: str, fence: str, at: str) -> None:
            self.id, self.scope, self.fence, self.taken_at = id_, "eu-west", fence, at

    class Store:
        def list(self) -> list[Meta]:
            return [Meta("old", "standby:x@1", "2026-01-01"), Meta("act", "active:eu-west@2",
                    "2026-01-03"), Meta("new", "standby:x@2", "2026-01-02")]  # fmt: skip

    monkeypatch.setattr("haplane.local.snapshots.snapshot_store", lambda state: Store())
    restore = load_shipped("regional-etcd-quorum-lost")
    asyncio.run(rt.fire(restore, rt.Event("quorum-lost", "eu-west"), state,
                        lambda e, f: events.append((e, f))))  # fmt: skip
    assert [e for e, _ in events] == ["runbook-proposed"] and len(calls) == 1
    assert events[0][1]["run"] == (
        "haplane runbook run regional-etcd-quorum-lost -p region=eu-west -p snapshot=new"
    )
