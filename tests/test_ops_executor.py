"""The failover controller's executor of operators' Switchovers (`haplane.gate.operations`) on
real etcd: refusals that switch nothing (an epoch that moved on since the request), expiry,
a forced switch followed until writable, requests settled by another leader from what is
stored (a recorded epoch, the history's mark, or nothing at all), and two executors racing
for one request (one claim, one switch)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from haplane.gate import operations as executor
from haplane.gate.failover import Settings
from haplane.store import ActiveRegion, EtcdClient, GlobalState, RegionFences
from haplane.store import operations as ops


class FakeHost:
    """A failover controller as the executor sees it, without fences (no replication: every
    switch is the fenced, forced kind)."""

    def __init__(self, prefix: bytes, gate: str = "g1") -> None:
        self.prefix = prefix
        self._gate = gate
        self.events: list[tuple[str, dict[str, Any]]] = []

    @property
    def gate(self) -> str:
        return self._gate

    @property
    def decision(self) -> Settings:
        return Settings(vantage_points=("g1",), priority=("a", "b"))

    @property
    def regions(self) -> set[str]:
        return {"a", "b"}

    @property
    def fences(self) -> RegionFences | None:
        return None

    def paused(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def freeze_others(self, record: ActiveRegion) -> None:
        pass

    def log(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def note_committed(self, epoch: int, *, writable: bool) -> None:
        pass


async def put(client: EtcdClient, prefix: bytes, phase: str, **status: Any) -> str:
    name = f"so-{uuid.uuid4().hex[:6]}"
    obj = {
        "apiVersion": "ops.haplane.dev/v1",
        "kind": "Switchover",
        "metadata": {"name": name, "uid": str(uuid.uuid4())},
        "spec": {"targetRegion": "b", "reason": "test", "force": True},
        "status": {
            "phase": phase,
            "requestedBy": {"username": "alice"},
            "approvals": [{"username": "bob"}],
            **status,
        },
    }
    await client.put(ops.ops_prefix(prefix, "switchovers") + name.encode(), ops.encode(obj))
    return name


async def status_of(client: EtcdClient, prefix: bytes, name: str) -> dict[str, Any]:
    for _, obj in await ops.list_objects(client, prefix, "switchovers"):
        if obj["metadata"]["name"] == name:
            return dict(obj["status"])
    raise AssertionError(f"{name} is gone")


@contextlib.asynccontextmanager
async def setup(etcd_cluster, key_prefix) -> AsyncIterator[tuple[EtcdClient, GlobalState]]:  # type: ignore[no-untyped-def]
    client = etcd_cluster.client(timeout=2.0)
    state = GlobalState(client, prefix=key_prefix)
    await state.initialize("a", by="t", reason="t", grant_ms=300, margin_ms=100, fresh=True)
    try:
        yield client, state
    finally:
        await client.close()


async def advance(runner: executor.Operations, state: GlobalState, client: EtcdClient) -> None:
    runner._next = 0.0
    await runner.advance(state, client)


async def test_an_epoch_that_moved_on_switches_nothing(etcd_cluster, key_prefix):
    async with setup(etcd_cluster, key_prefix) as (client, state):
        await state.switch("b", expected_epoch=1, by="t", reason="auto", writable=True)
        name = await put(client, key_prefix, ops.APPROVED, epochAtRequest=1)
        await advance(executor.Operations(FakeHost(key_prefix)), state, client)
        st = await status_of(client, key_prefix, name)
        assert st["phase"] == "Failed" and "the epoch changed since" in st["message"], st
        assert (await state.read()).epoch == 2  # type: ignore[union-attr]


async def test_pending_requests_expire(etcd_cluster, key_prefix):
    async with setup(etcd_cluster, key_prefix) as (client, state):
        old = await put(client, key_prefix, ops.PENDING, expiresAt="2020-01-01T00:00:00Z")
        fresh = await put(client, key_prefix, ops.PENDING, expiresAt="2999-01-01T00:00:00Z")
        await advance(executor.Operations(FakeHost(key_prefix)), state, client)
        assert (await status_of(client, key_prefix, old))["phase"] == "Expired"
        assert (await status_of(client, key_prefix, fresh))["phase"] == "Pending"


async def test_a_forced_switch_is_followed_until_writable_by_whoever_leads(
    etcd_cluster, key_prefix
):
    async with setup(etcd_cluster, key_prefix) as (client, state):
        name = await put(client, key_prefix, ops.APPROVED, epochAtRequest=1)
        await advance(executor.Operations(FakeHost(key_prefix, "g1")), state, client)
        st = await status_of(client, key_prefix, name)
        assert st["phase"] == "Running" and st["result"]["epoch"] == 2, st
        record = await state.read()
        assert record is not None and (record.region, record.writable) == ("b", False)
        assert record.by == f"alice (switchover/{name}, approved by bob)"
        # another controller leads now: it settles the request from what is stored
        other = executor.Operations(FakeHost(key_prefix, "g2"))
        await advance(other, state, client)
        assert (await status_of(client, key_prefix, name))["phase"] == "Running"  # fence wait
        await state.unfence(2)
        await advance(other, state, client)
        st = await status_of(client, key_prefix, name)
        assert st["phase"] == "Succeeded", st
        assert [p["name"] for p in st["phases"]] == ["Claimed", "Committed", "Writable"]


async def test_a_runner_that_stopped_is_settled(etcd_cluster, key_prefix, monkeypatch):
    async with setup(etcd_cluster, key_prefix) as (client, state):
        # it committed, but stopped before recording the epoch: the history names it
        committed = await put(client, key_prefix, ops.RUNNING, runBy="controller:gone")
        await state.switch(
            "b", expected_epoch=1, by=f"alice (switchover/{committed})", reason="r", writable=True
        )
        # it stopped before committing anything (another request's mark, a name it begins
        # with, is not its own)
        nothing = await put(client, key_prefix, ops.RUNNING, runBy="controller:gone")
        await state.switch(
            "a", expected_epoch=2, by=f"bob (switchover/{nothing}-2)", reason="r", writable=True
        )
        # the latest: committed, writable, named by the history only
        latest = await put(client, key_prefix, ops.RUNNING, runBy="controller:gone")
        await state.switch(
            "b", expected_epoch=3, by=f"carol (switchover/{latest})", reason="r", writable=True
        )
        runner = executor.Operations(FakeHost(key_prefix))
        await advance(runner, state, client)
        assert (await status_of(client, key_prefix, latest))["phase"] == "Succeeded"
        st = await status_of(client, key_prefix, committed)
        assert st["phase"] == "Failed" and "replaced by epoch 4" in st["message"], st
        assert (await status_of(client, key_prefix, nothing))["phase"] == "Running"
        monkeypatch.setattr(executor, "ABANDONED_AFTER", 0.0)
        await advance(runner, state, client)
        st = await status_of(client, key_prefix, nothing)
        assert st["phase"] == "Failed" and "stopped before it switched" in st["message"], st


async def test_a_request_its_leader_lost_before_switching_goes_back_to_approved(
    etcd_cluster, key_prefix, monkeypatch
):
    """The controller that claimed it loses the lead (its decide loop cancelled) before
    anything switched: the request is Approved again, unclaimed, and the next leader runs it
    at once (not failed ABANDONED_AFTER later)."""
    async with setup(etcd_cluster, key_prefix) as (client, state):
        name = await put(client, key_prefix, ops.APPROVED, epochAtRequest=1)
        runner = executor.Operations(FakeHost(key_prefix, "g1"))
        started = asyncio.Event()

        async def hangs(self: Any) -> None:
            started.set()
            await asyncio.sleep(60)

        monkeypatch.setattr(executor._Run, "carry_out", hangs)
        task = asyncio.create_task(advance(runner, state, client))
        await asyncio.wait_for(started.wait(), 10)
        assert (await status_of(client, key_prefix, name))["phase"] == ops.RUNNING
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        st = await status_of(client, key_prefix, name)
        assert st["phase"] == ops.APPROVED and "runBy" not in st
        assert "lost the lead" in st["message"]
        monkeypatch.undo()
        await advance(executor.Operations(FakeHost(key_prefix, "g2")), state, client)
        st = await status_of(client, key_prefix, name)
        assert st["phase"] == "Running" and st["runBy"] == "controller:g2", st
        assert st["result"]["epoch"] == 2  # carried out by the next leader (forced, fenced)


async def test_two_executors_claim_a_request_once(etcd_cluster, key_prefix):
    async with setup(etcd_cluster, key_prefix) as (client, state):
        name = await put(client, key_prefix, ops.APPROVED, epochAtRequest=1)
        hosts = [FakeHost(key_prefix, g) for g in ("g1", "g2")]
        runners = [executor.Operations(h) for h in hosts]
        await asyncio.gather(*(advance(r, state, client) for r in runners))
        claims = [e for h in hosts for e, _ in h.events if e == "switchover_claimed"]
        assert claims == ["switchover_claimed"]
        assert [r.epoch for r in await state.history()] == [1, 2]
        assert (await status_of(client, key_prefix, name))["result"]["epoch"] == 2


@pytest.mark.parametrize("phase", ["Rejected", "Expired", "Succeeded", "Failed", "Pending"])
async def test_only_approved_requests_run(etcd_cluster, key_prefix, phase):
    async with setup(etcd_cluster, key_prefix) as (client, state):
        await put(client, key_prefix, phase, epochAtRequest=1, expiresAt="2999-01-01T00:00:00Z")
        await advance(executor.Operations(FakeHost(key_prefix)), state, client)
        assert (await state.read()).epoch == 1  # type: ignore[union-attr]


async def failover_to_b(state: GlobalState) -> tuple[ActiveRegion, ActiveRegion]:
    """The controller's commit of a failover from a to b: (the record before, after)."""
    before = await state.read()
    assert before is not None
    return before, await state.switch(
        "b", expected_epoch=1, by="controller:g1", reason="a down",
        detected="2026-12-06T10:00:00.000000Z", agreed="2026-12-06T10:00:01.000000Z",
    )  # fmt: skip


async def test_automatic_failovers_are_recorded_for_review(etcd_cluster, key_prefix):
    async with setup(etcd_cluster, key_prefix) as (client, state):
        host = FakeHost(key_prefix)
        before, record = await failover_to_b(state)
        await executor.record_automatic(
            host, client, action="failover", record=record, previous=before, reason="a down"
        )
        st = await status_of(client, key_prefix, "automatic-epoch-2")
        assert st["phase"] == "Running" and st["requestedBy"]["username"] == "controller:g1"
        assert st["result"]["detectedAt"] == "2026-12-06T10:00:00.000000Z"
        assert st["result"]["agreedAt"] == "2026-12-06T10:00:01.000000Z"
        await state.unfence(2)
        await advance(executor.Operations(host), state, client)
        st = await status_of(client, key_prefix, "automatic-epoch-2")
        assert st["phase"] == "Succeeded" and st["result"]["fromRegion"] == "a", st
        # recorded once: a second call (a deposed leader) changes nothing
        await executor.record_automatic(
            host, client, action="failover", record=record, previous=before, reason="again"
        )
        assert (await status_of(client, key_prefix, "automatic-epoch-2"))["phase"] == "Succeeded"


async def test_an_automatic_record_replaced_by_a_later_switch_still_succeeded(
    etcd_cluster, key_prefix
):
    """The switch it records happened: a later epoch replacing it does not make it Failed
    (an operator's request replaced before it became writable is)."""
    async with setup(etcd_cluster, key_prefix) as (client, state):
        host = FakeHost(key_prefix)
        before, record = await failover_to_b(state)
        await executor.record_automatic(
            host, client, action="failover", record=record, previous=before, reason="a down"
        )
        await state.switch("a", expected_epoch=2, by="controller:g1", reason="b down")
        await advance(executor.Operations(host), state, client)
        st = await status_of(client, key_prefix, "automatic-epoch-2")
        assert st["phase"] == "Succeeded" and "since replaced by epoch 3" in st["message"], st


async def test_an_automatic_record_the_api_cannot_take_lands_in_etcd_saying_why(
    etcd_cluster, key_prefix, tmp_path
):
    """The recorder's API (here: an address nothing listens on) does not answer within its
    deadline: the controller writes the record itself, and logs that it went around the API."""
    from haplane.gate.api_recorder import ApiRecorder

    token = tmp_path / "token"
    token.write_text("not-a-real-token\n")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    recorder = ApiRecorder(str(token), None, {"b": [url]}, deadline=1.5, attempt_timeout=0.5)
    async with setup(etcd_cluster, key_prefix) as (client, state):
        host = FakeHost(key_prefix)
        before, record = await failover_to_b(state)
        await executor.record_automatic(
            host, client, action="failover", record=record, previous=before, reason="a down",
            recorder=recorder,
        )  # fmt: skip
        st = await status_of(client, key_prefix, "automatic-epoch-2")
        assert st["requestedBy"]["username"] == "controller:g1" and st["recorded"] is True
        (event,) = [f for e, f in host.events if e == "automatic_switchover_recorded"]
        assert event["via"] == "etcd" and "the API did not take it" in event["why"], event
        assert url in event["why"]


async def test_finished_operations_are_pruned_after_their_time(etcd_cluster, key_prefix):
    """Finished past the retention: deleted, but the newest `keep` finished stay; Pending and
    Running ones stay whatever their age."""
    async with setup(etcd_cluster, key_prefix) as (client, _):
        old, recent = "2020-01-01T00:00:00Z", ops.now_rfc3339()
        names = {
            "old-done": await put(client, key_prefix, "Succeeded", finishedAt=old),
            "old-failed": await put(client, key_prefix, "Failed", finishedAt=old),
            "old-rejected": await put(client, key_prefix, "Rejected", finishedAt=old),
            "old-pending": await put(client, key_prefix, "Pending", requestedAt=old),
            "old-running": await put(client, key_prefix, "Running", startedAt=old),
            "recent-done": await put(client, key_prefix, "Succeeded", finishedAt=recent),
            "newest-old": await put(client, key_prefix, "Expired", finishedAt=old),
        }
        deleted = await ops.prune_finished(
            client, key_prefix, "switchovers", older_than=3600, keep=2
        )
        # the two newest finished (recent-done, newest-old) are kept whatever their age
        assert sorted(deleted) == sorted(
            names[n] for n in ("old-done", "old-failed", "old-rejected")
        )
        left = {
            obj["metadata"]["name"]
            for _, obj in await ops.list_objects(client, key_prefix, "switchovers")
        }
        assert left == {
            names[n] for n in ("old-pending", "old-running", "recent-done", "newest-old")
        }
        assert (
            await ops.prune_finished(client, key_prefix, "switchovers", older_than=3600, keep=2)
            == []
        )
