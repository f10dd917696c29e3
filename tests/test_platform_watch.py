"""The supervisor's watch on the platform's state: each change of the active-region record,
the failover controller's published block, the replication reports, the divergence records and
the operations' approvals is one event,
the first look only a baseline; on a real etcd through `GlobalState`, and as the Events the
forwarder would post."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from haplane.local.platform_events import EventForwarder
from haplane.local.platform_watch import Looked, Seen, changes, look
from haplane.store import ActiveRegion, GlobalState
from haplane.store import operations as store_ops
from haplane.store.global_state import FailoverBlock, HeldKey
from haplane.topology import load_text
from haplane.topology.loader import example_text


def names(events: list[tuple[str, dict[str, object]]]) -> list[str]:
    return [e for e, _ in events]


async def test_each_change_is_one_event(etcd_cluster, key_prefix):
    client = etcd_cluster.client(timeout=2.0)
    gs = GlobalState(client, prefix=key_prefix)
    try:
        first = await look(gs, key_prefix)
        assert first.seen.record is None
        await gs.initialize("eu-west", by="haplane up", reason="first start", fresh=True)
        second = await look(gs, key_prefix)
        # a record written writable at once was never fenced: a commit, no unfence
        assert names(changes(first.seen, second)) == ["switchover-committed"]
        assert changes(second.seen, second) == []  # nothing new, nothing said

        # an automatic failover: committed fenced, unfenced later
        await gs.switch(
            "eu-central", expected_epoch=1, by="controller:gate-a", reason="down",
            detected="2026-01-01T00:00:00.000000Z", agreed="2026-01-01T00:00:01.000000Z",
        )  # fmt: skip
        third = await look(gs, key_prefix)
        events = changes(second.seen, third)
        assert names(events) == ["failover-committed"]
        fields = events[0][1]
        assert fields["region"] == "eu-central" and fields["from"] == "eu-west"
        assert fields["epoch"] == 2 and fields["fenced"] is True
        assert fields["by"] == "controller:gate-a" and fields["why"] == "down"
        # seconds from detection and from agreement to the commit (now, long after 2026-01-01)
        detected, agreed = fields["detected_s_before"], fields["agreed_s_before"]
        assert isinstance(detected, float) and isinstance(agreed, float)
        assert detected == pytest.approx(agreed + 1.0) and agreed > 0
        await gs.unfence(2)
        fourth = await look(gs, key_prefix)
        events = changes(third.seen, fourth)
        assert names(events) == ["epoch-unfenced"]
        assert isinstance(events[0][1]["fenced_seconds"], float)
        # both at once, when one look missed the fenced moment
        assert names(changes(second.seen, fourth)) == ["failover-committed", "epoch-unfenced"]

        # two epochs between two looks: each is told, from the history, in order
        await gs.switch("eu-west", expected_epoch=2, by="operator:carol", reason="back")
        await gs.switch("eu-central", expected_epoch=3, by="controller:gate-b", reason="again")
        jumped = await look(gs, key_prefix, before=fourth.seen)
        events = changes(fourth.seen, jumped)
        assert [(e, f["epoch"]) for e, f in events] == [
            ("switchover-committed", 3), ("failover-committed", 4),
        ]  # fmt: skip
        assert events[0][1]["region"] == "eu-west" and events[1][1]["from"] == "eu-west"

        # an operation approved (through the API in life: here its stored status, as the
        # API writes it: the policy's requirement, the approvals with their time)
        obj: dict[str, Any] = {
            "apiVersion": "ops.haplane.dev/v1", "kind": "Switchover",
            "metadata": {"name": "move", "uid": "u-1"}, "spec": {"targetRegion": "eu-west"},
            "status": {"phase": "Pending", "approvals": [],
                       "requirements": [{"policy": "switchover-approval", "approvals": 2}],
                       "requestedBy": {"username": "alice"}},
        }  # fmt: skip
        await store_ops.create_object(client, key_prefix, "switchovers", obj)
        fifth = await look(gs, key_prefix, before=jumped.seen)
        assert changes(jumped.seen, fifth) == []  # asked, not approved
        ((kv, _),) = await store_ops.list_objects(client, key_prefix, "switchovers")

        def approve(st: dict[str, Any]) -> None:
            st["approvals"] = [{"username": "bob", "at": "2026-12-06T10:00:00Z"}]

        await store_ops.update_status(client, kv, approve)
        sixth = await look(gs, key_prefix, before=fifth.seen)
        events = changes(fifth.seen, sixth)
        assert names(events) == ["operation-approved"]
        assert events[0][1]["kind"] == "Switchover" and events[0][1]["name"] == "move"
        assert events[0][1]["uid"] == "u-1"
        assert "approved by bob (1 of 2; asked by alice; now Pending)" in str(events[0][1]["why"])
        assert changes(sixth.seen, sixth) == []
    finally:
        await client.close()


def test_resyncs_and_divergences():
    before = Seen(None, {"eu-central": 100.0}, {"3"})
    now = Seen(None, {"eu-central": 200.0, "eu-west": 50.0}, {"3", "4"})
    resync = {"source": "eu-west", "keys": 10, "seconds": 0.5, "reason": "compacted"}
    looked = Looked(
        now,
        resyncs={"eu-central": resync, "eu-west": {**resync, "source": "eu-central"}},
        divergences=[
            {"name": "3", "epoch": 3, "region": "eu-west", "count": 1},
            {"name": "4", "epoch": 4, "region": "eu-west", "count": 7, "path": "/x/4"},
        ],
    )
    events = changes(before, looked)
    assert names(events) == ["replication-resynced"] * 2 + ["divergence-saved"]
    assert events[0][1]["region"] == "eu-central" and events[0][1]["why"] == "compacted"
    assert events[2][1]["count"] == 7 and "7 keys eu-west wrote" in str(events[2][1]["why"])
    assert changes(now, looked) == []


async def test_reports_that_vanish_and_come_back_are_no_resync(etcd_cluster, key_prefix):
    """A restored control etcd drops the replication reports until the replicators write them
    again, with the resync they last did: not a new one."""
    from haplane.store import ReplicationReport

    client = etcd_cluster.client(timeout=2.0)
    gs = GlobalState(client, prefix=key_prefix)

    def report(resync_time: float) -> ReplicationReport:
        return ReplicationReport(
            target="eu-central", source="eu-west", state="Streaming", epoch=1,
            applied_revision=5, source_revision=5, lag_seconds=0.1, lag_revisions=0,
            lag_answered=0.1, source_answered_at=1.0, leader="eu-central/rep-1", time=2.0,
            last_resync={"time": resync_time, "source": "eu-west", "keys": 3},
        )  # fmt: skip

    try:
        await gs.report_replication(report(100.0))
        first = await look(gs, key_prefix)
        await client.delete(gs.replication_key("eu-central"))
        gone = await look(gs, key_prefix, before=first.seen)
        assert changes(first.seen, gone) == []
        await gs.report_replication(report(100.0))
        back = await look(gs, key_prefix, before=gone.seen)
        assert changes(gone.seen, back) == []
        await gs.report_replication(report(150.0))  # a real one
        later = await look(gs, key_prefix, before=back.seen)
        assert names(changes(back.seen, later)) == ["replication-resynced"]
    finally:
        await client.close()


def test_an_operation_recreated_under_its_name_is_another():
    approved = frozenset({("bob", "t1")})
    obj = {"kind": "Drill", "metadata": {"name": "d", "uid": "new"}, "status": {}}
    looked = Looked(Seen(None, approvals={"new": approved}), operations={"new": obj})
    before = Seen(None, approvals={"old": approved})  # the same approver, the old object
    assert names(changes(before, looked)) == ["operation-approved"]


def test_the_forwarder_names_the_operation_and_the_region():
    topology = load_text(example_text("two-regions"))
    fwd = EventForwarder(topology, state=None)  # type: ignore[arg-type]
    why = "approved by bob (1 of 1; asked by alice)"
    fwd.forward("operation-approved", {"kind": "MaintenanceAction", "name": "r1", "uid": "u-9",
                                       "why": why})  # fmt: skip
    fwd.forward("failover-committed", {"region": "eu-central", "epoch": 2, "why": "down"})
    op, region = fwd.queue.get_nowait(), fwd.queue.get_nowait()
    assert op["involvedObject"] == {"apiVersion": "ops.haplane.dev/v1",
                                    "kind": "MaintenanceAction", "name": "r1",
                                    "uid": "u-9"}  # fmt: skip
    assert op["metadata"]["namespace"] == "kube-system"
    assert op["reason"] == "OperationApproved" and "approved by bob" in op["message"]
    assert "kind=" not in op["message"] and "uid=" not in op["message"]
    assert region["involvedObject"]["kind"] == "Region" and region["type"] == "Warning"
    assert region["reason"] == "FailoverCommitted" and "down" in region["message"]
    json.dumps(op)


def _block(
    code: str | None, since: str, *, region: str = "a", epoch: int = 3, started: str = ""
) -> FailoverBlock:
    """A published block (or its end) `since` seconds past 2026-01-01T00:00, and `started`
    (the block's beginning: the same as `since` for a block that is new)."""
    why = {"no-healthy-region": "a is down and no other region is seen healthy",
           "standby-lag-over-limit": "a is down and no healthy region may take over: b's lag "
                                     "was 3.000s when a last answered, over its maxLagMs (2000)",
           None: "a is active and not seen down by a majority"}[code]  # fmt: skip
    at = "2026-01-01T00:00:{}Z".format
    since_at = at(since)
    started_at = at(started) if started else (since_at if code is not None else "")
    return FailoverBlock(region, epoch, code, why, since_at, "controller:g1", started_at)


def test_a_failover_block_is_told_when_it_starts_changes_cause_and_ends_not_every_look():
    record = ActiveRegion("a", 3, "", "t", "t")
    nothing = Seen(record)
    blocked = Seen(record, block=_block("no-healthy-region", "00.000000"))
    events = changes(nothing, Looked(blocked))
    assert events == [("failover-blocked", {
        "region": "a", "epoch": 3, "blocked": "no-healthy-region", "by": "controller:g1",
        "since": "2026-01-01T00:00:00.000000Z", "started": "2026-01-01T00:00:00.000000Z",
        "why": "a is down and no other region is seen healthy",
    })]  # fmt: skip
    assert changes(blocked, Looked(blocked)) == []  # every look after: nothing
    # a new cause at :05 of the block begun at :00
    lagging = Seen(record, block=_block("standby-lag-over-limit", "05.000000", started="00.000000"))
    ((event, fields),) = changes(blocked, Looked(lagging))
    assert event == "failover-blocked" and fields["blocked"] == "standby-lag-over-limit"
    assert (fields["since"], fields["started"]) == (
        "2026-01-01T00:00:05.000000Z", "2026-01-01T00:00:00.000000Z"
    )  # fmt: skip
    assert "over its maxLagMs" in str(fields["why"])
    back = Seen(record, block=_block(None, "12.500000", started="00.000000"))
    assert changes(back, Looked(back)) == [] and changes(nothing, Looked(back)) == []
    # the whole block: from :00 (not from its last cause, :05) to :12.5
    assert changes(lagging, Looked(back)) == [("failover-block-cleared", {
        "region": "a", "epoch": 3, "was": "standby-lag-over-limit", "blocked_seconds": 12.5,
        "by": "controller:g1", "why": "a is active and not seen down by a majority",
    })]  # fmt: skip
    # an older leader's record (no `started`): from its `since`
    older = replace(lagging.block, started="") if lagging.block else None
    ((_, fields),) = changes(Seen(record, block=older), Looked(back))
    assert fields["blocked_seconds"] == 7.5
    # blocked for the same cause again, after an end no look saw: a new block, told
    again_x = Seen(record, block=_block("no-healthy-region", "20.000000"))
    ((event, fields),) = changes(blocked, Looked(again_x))
    assert (event, fields["since"]) == ("failover-blocked", "2026-01-01T00:00:20.000000Z")
    # ended by a failover: the new epoch's event tells it, whether the leader has published
    # the new epoch's (unblocked) state yet or not
    moved = ActiveRegion("b", 4, "", "controller:g1", "a is down", previous="a", writable=False)
    for block in (lagging.block, _block(None, "20.000000", region="b", epoch=4)):
        assert names(changes(lagging, Looked(Seen(moved, block=block)))) == ["failover-committed"]
    # blocked again in the new epoch: told
    again = Seen(moved, block=_block("no-healthy-region", "30.000000", region="b", epoch=4))
    assert names(changes(Seen(moved), Looked(again))) == ["failover-blocked"]


async def test_the_published_block_is_read_with_each_look(etcd_cluster, key_prefix):
    client = etcd_cluster.client(timeout=2.0)
    gs = GlobalState(client, prefix=key_prefix)
    try:
        await gs.initialize("a", by="haplane up", reason="first start", fresh=True)
        first = await look(gs, key_prefix)
        assert first.seen.block is None
        leader = key_prefix + b"controller/leader"
        created = await client.put(leader, b"g1")
        block = _block("no-healthy-region", "00.000000", epoch=1)
        assert await gs.publish_failover_block(block, leader=HeldKey(leader, b"g1", created))
        # not the leader key as its holder created it: not written
        cleared = _block(None, "01.000000", epoch=1)
        for held in (HeldKey(leader, b"g2", created), HeldKey(leader, b"g1", created - 1)):
            assert not await gs.publish_failover_block(cleared, leader=held)
        second = await look(gs, key_prefix, before=first.seen)
        assert second.seen.block == block
        assert names(changes(first.seen, second)) == ["failover-blocked"]
        await client.put(gs.failover_block_key, b"{not json")
        assert (await look(gs, key_prefix)).seen.block is None  # unreadable: no word
    finally:
        await client.close()


@pytest.mark.parametrize(
    "raw", [b"null", b"[]", b'"x"', b"5", b'{"region": "a", "epoch": Infinity}']
)
async def test_a_block_record_that_is_no_object_is_no_word_and_stops_no_event(
    etcd_cluster, key_prefix, raw
):
    """Valid JSON that is not a block (parse raised AttributeError on these, and the look
    with it: every platform Event was silenced) reads as no block; the look goes on, and a
    failover in the same look is told."""
    client = etcd_cluster.client(timeout=2.0)
    gs = GlobalState(client, prefix=key_prefix)
    try:
        await gs.initialize("a", by="haplane up", reason="first start", fresh=True)
        await client.put(gs.failover_block_key, raw)
        first = await look(gs, key_prefix)
        assert first.seen.block is None
        await gs.switch("b", expected_epoch=1, by="controller:g1", reason="a is down")
        second = await look(gs, key_prefix, before=first.seen)
        assert names(changes(first.seen, second)) == ["failover-committed"]
    finally:
        await client.close()


def test_records_that_are_json_but_no_object_parse_as_nothing():
    """The same for the replication reports and the cuts (these raised TypeError, caught)."""
    from haplane.store import ReplicationReport
    from haplane.store.global_state import Cut

    for raw in (b"null", b"[]", b'"x"', b"5", b"{}"):
        assert FailoverBlock.parse(raw) is None
        assert ReplicationReport.parse(raw) is None
        assert Cut.parse(raw) is None
    assert FailoverBlock.parse(b'{"region": "a", "epoch": Infinity}') is None


async def test_a_look_survives_a_block_that_cannot_be_read(etcd_cluster, key_prefix, monkeypatch):
    """A bug in reading the block (not the etcd's failure) costs that record alone: the look
    keeps the block it saw before, and tells the rest."""
    client = etcd_cluster.client(timeout=2.0)
    gs = GlobalState(client, prefix=key_prefix)
    try:
        await gs.initialize("a", by="haplane up", reason="first start", fresh=True)
        seen = Seen(None, block=_block("no-healthy-region", "00.000000", epoch=1))

        async def broken(**_: object) -> FailoverBlock | None:
            raise AttributeError("a bug")

        monkeypatch.setattr(gs, "failover_block", broken)
        looked = await look(gs, key_prefix, before=seen)
        assert looked.seen.block == seen.block
        assert names(changes(seen, looked)) == ["switchover-committed"]
    finally:
        await client.close()


def test_the_forwarder_makes_a_block_one_event_that_counts_up_and_its_end_another():
    topology = load_text(example_text("two-regions"))
    fwd = EventForwarder(topology, state=None)  # type: ignore[arg-type]
    start = changes(Seen(ActiveRegion("a", 3, "", "t", "t")),
                    Looked(Seen(ActiveRegion("a", 3, "", "t", "t"),
                                block=_block("no-healthy-region", "00.000000"))))  # fmt: skip
    for event, fields in start:
        fwd.forward(event, fields)
    fwd.forward("failover-blocked", {"region": "a", "blocked": "standby-lag-over-limit",
                                     "why": "b's lag was 3.000s"})  # fmt: skip
    fwd.forward("failover-block-cleared", {"region": "a", "was": "standby-lag-over-limit",
                                           "why": "a is active"})  # fmt: skip
    first, changed, ended = (fwd.queue.get_nowait() for _ in range(3))
    assert (first["type"], first["reason"]) == ("Warning", "FailoverBlocked")
    assert first["involvedObject"]["kind"] == "Region" and first["involvedObject"]["name"] == "a"
    assert first["message"].startswith(
        "failover-blocked: a is down and no other region is seen healthy (region=a, epoch=3, "
        "blocked=no-healthy-region, by=controller:g1, since=2026-01-01T00:00:00.000000Z, "
        "started=2026-01-01T00:00:00.000000Z)"
    )
    # a new cause is the same Event (its count goes up, its message is the new one)
    assert changed["metadata"]["name"] == first["metadata"]["name"]
    assert "b's lag was 3.000s" in changed["message"]
    assert (ended["type"], ended["reason"]) == ("Normal", "FailoverBlockCleared")
    assert ended["metadata"]["name"] != first["metadata"]["name"]
