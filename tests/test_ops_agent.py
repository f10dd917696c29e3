"""The supervisor's agent role (`haplane.local.ops_agent`) on real etcd, with the primitives it
would run recorded instead of run: what it runs for a Drill and a MaintenanceAction, who may
ask for what (the requester's roles against the component's kind), one claim per request
across two agents, expiry, and a request its previous incarnation left Running."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from haplane.local.ops_agent import OpsAgent
from haplane.store import EtcdClient
from haplane.store import operations as ops


@pytest_asyncio.fixture
async def client(etcd_cluster) -> AsyncIterator[EtcdClient]:  # type: ignore[no-untyped-def]
    c = etcd_cluster.client(timeout=2.0)
    try:
        yield c
    finally:
        await c.close()


KINDS = {"eu-west/etcd-1": "etcd", "eu-west/lb-1": "balancer", "eu-west/api-1": "api"}
REPORT = {"meta": {"failed_over": False}, "phases": {"detection": None}, "lost_writes": []}


class Recorder:
    def __init__(self, code: int = 0, out: str = "", err: str = "") -> None:
        self.calls: list[list[str]] = []
        self.answer = (code, out, err)

    async def __call__(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        self.calls.append(argv)
        await asyncio.sleep(0.05)
        return self.answer


def agent(client, prefix: bytes, run: Recorder, host: str = "h1") -> OpsAgent:  # type: ignore[no-untyped-def]
    return OpsAgent(client, prefix, "/state", KINDS.get, host=host, run=run)


async def put(client, prefix: bytes, kind: str, spec: dict[str, Any], **status: Any) -> str:  # type: ignore[no-untyped-def]
    name = f"op-{uuid.uuid4().hex[:6]}"
    plural = {"Drill": "drills", "MaintenanceAction": "maintenanceactions"}[kind]
    obj = {
        "apiVersion": "ops.haplane.dev/v1",
        "kind": kind,
        "metadata": {"name": name, "uid": str(uuid.uuid4())},
        "spec": {"reason": "test", **spec},
        "status": {"phase": "Approved", "requestedBy": {"username": "u"}, **status},
    }
    await client.put(ops.ops_prefix(prefix, plural) + name.encode(), ops.encode(obj))
    return name


async def status_of(client, prefix: bytes, kind: str, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    plural = {"Drill": "drills", "MaintenanceAction": "maintenanceactions"}[kind]
    for _, obj in await ops.list_objects(client, prefix, plural):
        if obj["metadata"]["name"] == name:
            return dict(obj["status"])
    raise AssertionError(name)


async def test_a_drill_runs_the_local_primitive_and_keeps_its_summary(client, key_prefix):
    run = Recorder(0, json.dumps(REPORT), "reports: /state/drills/a.json /state/drills/a.html")
    name = await put(client, key_prefix, "Drill", {"scenario": "blip", "warmupSeconds": 1})
    await agent(client, key_prefix, run).one_pass()
    (argv,) = run.calls
    assert argv[3:] == [
        "drill",
        "blip",
        "--direct",
        "--json",
        "--warmup",
        "1",
        "--state-dir",
        "/state",
    ]
    st = await status_of(client, key_prefix, "Drill", name)
    assert st["phase"] == "Succeeded" and st["result"]["passed"] is True, st
    assert st["result"]["failedOver"] is False and st["result"]["lostWrites"] == 0
    assert st["result"]["reports"] == ["/state/drills/a.json", "/state/drills/a.html"]
    run.answer = (1, "", "drill FAILED: a write was lost")
    failed = await put(client, key_prefix, "Drill", {"scenario": "blip"})
    await agent(client, key_prefix, run).one_pass()
    st = await status_of(client, key_prefix, "Drill", failed)
    assert st["phase"] == "Failed" and "a write was lost" in st["message"], st


async def test_who_may_restart_what(client, key_prefix):
    run = Recorder()
    cases = [
        ("eu-west/etcd-1", ["haplane:etcd-operator"], "Succeeded"),
        ("eu-west/etcd-1", ["haplane:gate-operator"], "Failed"),
        ("eu-west/lb-1", ["haplane:gate-operator"], "Succeeded"),
        ("eu-west/api-1", ["haplane:etcd-operator"], "Failed"),
        ("eu-west/api-1", ["haplane:platform-admin"], "Succeeded"),
        ("eu-west/api-1", ["*"], "Succeeded"),  # system:masters
    ]
    names = [
        await put(
            client,
            key_prefix,
            "MaintenanceAction",
            {"action": "restart", "component": component},
            requesterRoles=roles,
        )
        for component, roles, _ in cases
    ]
    other_host = await put(
        client,
        key_prefix,
        "MaintenanceAction",
        {"action": "restart", "component": "us-east/etcd-1"},
        requesterRoles=["*"],
    )
    await agent(client, key_prefix, run).one_pass()
    for name, (component, roles, outcome) in zip(names, cases, strict=True):
        st = await status_of(client, key_prefix, "MaintenanceAction", name)
        assert st["phase"] == outcome, (component, roles, st)
        if outcome == "Failed":
            assert "nothing done" in st["message"]
    assert sorted(c[-3] for c in run.calls) == sorted(c for c, _, o in cases if o == "Succeeded")
    # a component no process here runs: refused, not left waiting
    st = await status_of(client, key_prefix, "MaintenanceAction", other_host)
    assert st["phase"] == "Failed" and "no component named" in st["message"], st
    rotate = await put(
        client,
        key_prefix,
        "MaintenanceAction",
        {"action": "rotate-encryption-key"},
        requesterRoles=["haplane:etcd-operator"],
    )
    await agent(client, key_prefix, run).one_pass()
    st = await status_of(client, key_prefix, "MaintenanceAction", rotate)
    assert st["phase"] == "Failed" and "haplane:platform-admin" in st["message"], st


async def test_drains_and_certificate_rotation_run_their_primitives(client, key_prefix):
    run = Recorder()
    lb = {"component": "eu-west/lb-1"}
    gate_op, admin = ["haplane:gate-operator"], ["haplane:platform-admin"]
    asked = [
        ({"action": "drain", "timeoutSeconds": 12, **lb}, gate_op),
        ({"action": "undrain", **lb}, gate_op),
        ({"action": "drain", "component": "eu-west/etcd-1"}, ["*"]),
        ({"action": "drain", **lb}, ["haplane:etcd-operator"]),
        ({"action": "rotate-certificates"}, admin),
        ({"action": "rotate-certificates"}, gate_op),
        ({"action": "remove-encryption-key", "key": "local"}, admin),
    ]
    drain, undrain, not_a_balancer, wrong_role, certs, certs_refused, remove = [
        await put(client, key_prefix, "MaintenanceAction", spec, requesterRoles=roles)
        for spec, roles in asked
    ]
    await agent(client, key_prefix, run).one_pass()
    tails = sorted(c[3:] for c in run.calls)
    assert tails == sorted(
        [
            ["maintenance", "drain", "eu-west/lb-1", "--direct", "--reason", "test",
             "--timeout", "12.0", "--state-dir", "/state"],
            ["maintenance", "undrain", "eu-west/lb-1", "--direct", "--reason", "test",
             "--state-dir", "/state"],
            ["pki", "rotate", "--state-dir", "/state"],
            ["secrets", "remove-key", "local", "--state-dir", "/state"],
        ]
    ), tails  # fmt: skip
    for name in (drain, undrain, certs, remove):
        st = await status_of(client, key_prefix, "MaintenanceAction", name)
        assert st["phase"] == "Succeeded", st
    for name, said in (
        (not_a_balancer, "only balancers are drained"),
        (wrong_role, "needs haplane:gate-operator"),
        (certs_refused, "needs haplane:platform-admin"),
    ):
        st = await status_of(client, key_prefix, "MaintenanceAction", name)
        assert st["phase"] == "Failed" and said in st["message"], st


async def test_one_claim_expiry_and_a_run_left_behind(client, key_prefix):
    run = Recorder(0, json.dumps(REPORT))
    name = await put(client, key_prefix, "Drill", {"scenario": "blip"})
    await asyncio.gather(
        agent(client, key_prefix, run, "h1").one_pass(),
        agent(client, key_prefix, run, "h2").one_pass(),
    )
    assert len(run.calls) == 1
    assert (await status_of(client, key_prefix, "Drill", name))["phase"] == "Succeeded"
    old = await put(
        client, key_prefix, "Drill", {"scenario": "blip"},
        phase="Pending", expiresAt="2020-01-01T00:00:00Z",
    )  # fmt: skip
    left = await put(
        client, key_prefix, "Drill", {"scenario": "blip"}, phase="Running", runBy="agent:h3"
    )
    await agent(client, key_prefix, run, "h3").one_pass()
    assert (await status_of(client, key_prefix, "Drill", old))["phase"] == "Expired"
    st = await status_of(client, key_prefix, "Drill", left)
    assert st["phase"] == "Failed" and "stopped before it finished" in st["message"]


async def test_a_stopped_primitive_is_interrupted_then_killed():
    """A timeout (or the supervisor stopping) interrupts the primitive (SIGINT: a drill's
    `finally` undoes its fault) and never leaves it running."""
    import sys
    import time

    from haplane.local import ops_agent

    t0 = time.monotonic()
    code, _, err = await ops_agent.run_primitive(
        [sys.executable, "-c", "import time; time.sleep(60)"], 0.5
    )
    assert code == 124 and "timed out" in err
    assert time.monotonic() - t0 < 5.0  # SIGINT ended it: no 30 s wait for SIGKILL
    # one that ignores SIGINT is killed after the grace
    ops_agent.UNDO_GRACE, grace = 0.5, ops_agent.UNDO_GRACE
    try:
        script = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
        t0 = time.monotonic()
        code, _, _ = await ops_agent.run_primitive([sys.executable, "-c", script], 0.5)
        assert code == 124 and time.monotonic() - t0 < 5.0
    finally:
        ops_agent.UNDO_GRACE = grace


async def test_an_approved_runbook_run_is_the_runbook_with_its_digest(client, key_prefix):
    """`run-runbook`: the runbook run here with risky steps allowed (the approval was the
    API's), its parameters and the digest the request named; refused (nothing run) when the
    runbook is not the one approved, or runs a command the asker's roles do not cover (the
    member runbook's `member replace` is an etcd-operator's); the outcome lands in the
    status."""
    from haplane.local.runbook import load_shipped

    digest = load_shipped("etcd-member-lost").digest
    report = {
        "runbook": "etcd-member-lost", "outcome": "failed", "failedStep": "replace",
        "journal": "/state/runbooks/x.jsonl",
        "steps": [{"name": "replace", "outcome": "failed", "seconds": 1.5, "stdoutTail": "x"}],
    }  # fmt: skip
    run = Recorder(1, json.dumps(report), "member replace failed")
    spec = {
        "action": "run-runbook", "runbook": "etcd-member-lost", "runbookSha256": digest,
        "parameters": {"member": "eu-west/etcd-3", "extra": "a b"},
    }  # fmt: skip
    asked = await put(client, key_prefix, "MaintenanceAction", spec,
                      requesterRoles=["haplane:etcd-operator"])  # fmt: skip
    refused = {
        "a dr-operator": await put(client, key_prefix, "MaintenanceAction", spec,
                                   requesterRoles=["haplane:dr-operator"]),
        "another digest": await put(client, key_prefix, "MaintenanceAction",
                                    {**spec, "runbookSha256": "0" * 64}, requesterRoles=["*"]),
        "no such runbook": await put(client, key_prefix, "MaintenanceAction",
                                     {**spec, "runbook": "nope"}, requesterRoles=["*"]),
    }  # fmt: skip
    await agent(client, key_prefix, run).one_pass()
    (argv,) = run.calls
    assert argv[3:] == [
        "runbook", "run", "etcd-member-lost", "--direct", "--yes", "--json",
        "-p", "extra=a b", "-p", "member=eu-west/etcd-3", "--sha256", digest,
        "--state-dir", "/state",
    ]  # fmt: skip
    st = await status_of(client, key_prefix, "MaintenanceAction", asked)
    assert st["phase"] == "Failed" and st["result"]["failedStep"] == "replace", st
    assert st["message"].endswith("runbook failed at step replace"), st["message"]
    assert st["result"]["steps"] == [{"name": "replace", "outcome": "failed", "seconds": 1.5}]
    assert st["result"]["journal"] == "/state/runbooks/x.jsonl"
    said = {
        "a dr-operator": "step replace runs `haplane member ...`, which needs "
        "haplane:etcd-operator",
        "another digest": "is not the one approved",
        "no such runbook": "no runbook 'nope'",
    }
    for why, name in refused.items():
        st = await status_of(client, key_prefix, "MaintenanceAction", name)
        assert st["phase"] == "Failed" and said[why] in st["message"], (why, st)
        assert "nothing done" in st["message"]
