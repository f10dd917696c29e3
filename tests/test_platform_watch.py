"""The supervisor's watch on the platform's state: each change of the active-region record,
the replication reports, the divergence records and the operations' approvals is one event,
the first look only a baseline; on a real etcd through `GlobalState`, and as the Events the
forwarder would post."""

from __future__ import annotations

import json
from typing import Any

from haplane.local.platform_events import EventForwarder
from haplane.local.platform_watch import Looked, Seen, changes, look
from haplane.store import GlobalState
from haplane.store import operations as store_ops
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
        await gs.switch("eu-central", expected_epoch=1, by="controller:gate-a", reason="down")
        third = await look(gs, key_prefix)
        events = changes(second.seen, third)
        assert names(events) == ["failover-committed"]
        fields = events[0][1]
        assert fields["region"] == "eu-central" and fields["from"] == "eu-west"
        assert fields["epoch"] == 2 and fields["fenced"] is True
        assert fields["by"] == "controller:gate-a" and fields["why"] == "down"
        await gs.unfence(2)
        fourth = await look(gs, key_prefix)
        events = changes(third.seen, fourth)
        assert names(events) == ["epoch-unfenced"]
        assert isinstance(events[0][1]["fenced_seconds"], float)
        # both at once, when one look missed the fenced moment
        assert names(changes(second.seen, fourth)) == ["failover-committed", "epoch-unfenced"]

        # an operation approved (through the API in life: here its stored status)
        obj: dict[str, Any] = {
            "apiVersion": "ops.haplane.dev/v1", "kind": "Switchover",
            "metadata": {"name": "move"}, "spec": {"targetRegion": "eu-west", "approvals": 2},
            "status": {"phase": "Pending", "approvals": [],
                       "requestedBy": {"username": "alice"}},
        }  # fmt: skip
        await store_ops.create_object(client, key_prefix, "switchovers", obj)
        fifth = await look(gs, key_prefix)
        assert changes(fourth.seen, fifth) == []  # asked, not approved
        ((kv, _),) = await store_ops.list_objects(client, key_prefix, "switchovers")

        def approve(st: dict[str, Any]) -> None:
            st["approvals"] = [{"username": "bob"}]

        await store_ops.update_status(client, kv, approve)
        sixth = await look(gs, key_prefix)
        events = changes(fifth.seen, sixth)
        assert names(events) == ["operation-approved"]
        assert events[0][1]["kind"] == "Switchover" and events[0][1]["name"] == "move"
        assert "approved by bob (1 of 2; asked by alice)" in str(events[0][1]["why"])
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


def test_the_forwarder_names_the_operation_and_the_region():
    topology = load_text(example_text("two-regions"))
    fwd = EventForwarder(topology, state=None)  # type: ignore[arg-type]
    why = "approved by bob (1 of 1; asked by alice)"
    fwd.forward("operation-approved", {"kind": "MaintenanceAction", "name": "r1", "why": why})
    fwd.forward("failover-committed", {"region": "eu-central", "epoch": 2, "why": "down"})
    op, region = fwd.queue.get_nowait(), fwd.queue.get_nowait()
    assert op["involvedObject"] == {"apiVersion": "ops.haplane.dev/v1",
                                    "kind": "MaintenanceAction", "name": "r1",
                                    "namespace": "kube-system"}  # fmt: skip
    assert op["reason"] == "OperationApproved" and "approved by bob" in op["message"]
    assert "kind=" not in op["message"]
    assert region["involvedObject"]["kind"] == "Region" and region["type"] == "Warning"
    assert region["reason"] == "FailoverCommitted" and "down" in region["message"]
    json.dumps(op)
