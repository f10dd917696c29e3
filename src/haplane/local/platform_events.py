"""Kubernetes Events in `kube-system` for what the platform does on its own or by an
operator's local command: scheduled drills, snapshots and backups that failed, runbooks fired
by events, restores. `kubectl get events -n kube-system` tells the story.

Layer: run (`haplane.local`). Posts through the gate as the state dir's haplane-admin, with
`haplane.kubeclient`. An Event is a record, not a step: a failure to post is logged and never
fails what it reports (the platform may be down: that is when most of them happen).

`EventForwarder` turns the supervisor's own log events (`supervisor.emit`) into Events, from
a queue (the supervisor's loop never waits for the API); `post` posts one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from haplane.topology import Topology

from .state_dir import StateDir

log = logging.getLogger("haplane.local.platform_events")

NAMESPACE = "kube-system"
COMPONENT = "haplane-supervisor"
INVOLVED_API_VERSION = "haplane.dev/v1alpha1"

# supervisor log event -> (Event type, reason, involved kind, the field naming the object)
FORWARDED: dict[str, tuple[str, str, str, str]] = {
    "drill-passed": ("Normal", "DrillPassed", "Drill", "scenario"),
    "drill-failed": ("Warning", "DrillFailed", "Drill", "scenario"),
    "drill-skipped": ("Normal", "DrillSkipped", "Drill", "scenario"),
    "snapshot-failed": ("Warning", "SnapshotFailed", "EtcdCluster", "scope"),
    "backup-failed": ("Warning", "BackupFailed", "Backup", "name"),
    "runbook-fired": ("Warning", "RunbookFired", "Runbook", "runbook"),
    "runbook-proposed": ("Warning", "RunbookProposed", "Runbook", "runbook"),
    "runbook-not-fired": ("Warning", "RunbookNotFired", "Runbook", "runbook"),
    "runbook-run-failed": ("Warning", "RunbookFailed", "Runbook", "runbook"),
}


def event_object(
    *, type_: str, reason: str, kind: str, name: str, message: str, action: str = ""
) -> dict[str, Any]:
    """A core/v1 Event about `kind` `name` (a haplane object: a drill scenario, a cluster, a
    runbook, a region)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    slug = re.sub(r"[^a-z0-9-]+", "-", f"{kind}-{name}".lower()).strip("-")[:200] or "haplane"
    host = socket.gethostname()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{slug}.{uuid.uuid4().hex[:12]}", "namespace": NAMESPACE},
        "involvedObject": {
            "apiVersion": INVOLVED_API_VERSION,
            "kind": kind,
            "name": name,
            "namespace": NAMESPACE,
        },
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "action": action or reason,
        "source": {"component": COMPONENT, "host": host},
        "reportingComponent": f"haplane.dev/{COMPONENT}",
        "reportingInstance": host,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def message_of(event: str, fields: dict[str, object]) -> str:
    """What a supervisor log event says, for people."""
    said = {k: v for k, v in fields.items() if k not in ("component", "time", "ts")}
    why = said.pop("why", None) or said.pop("error", None) or said.pop("said", None)
    rest = ", ".join(f"{k}={v}" for k, v in said.items() if v not in (None, "", [], {}))
    return f"{event}: {why}" + (f" ({rest})" if rest else "") if why else f"{event} ({rest})"


async def post(
    topology: Topology, state: StateDir, obj: dict[str, Any], timeout: float = 5.0
) -> bool:
    """POST `obj` (an Event) through the gate as haplane-admin; False (logged) when it could
    not be."""
    from haplane.auth.kubeconfig import Credentials
    from haplane.kubeclient import KubeClient

    from .gate_plans import plan_of
    from .security import platform_tls

    try:
        plan = plan_of(topology, state)
        tls = platform_tls(state, topology)
        context = tls.client_context() if tls is not None else None
        client = KubeClient(
            Credentials(plan.gates[0].url, context, None, "haplane-admin"),
            timeout=timeout,
            agent=COMPONENT,
        )
    except Exception as exc:  # no PKI, no gate: nothing to post to
        log.info("event not posted (%s): %s", obj.get("reason"), exc)
        return False
    try:
        status, out, _ = await client.exchange(
            "POST", f"/api/v1/namespaces/{NAMESPACE}/events", obj
        )
        if status != 201:
            log.info("event not posted (%s): %s %s", obj.get("reason"), status, out)
        return status == 201
    except Exception as exc:  # unreachable: the record is lost, the work it reports is not
        log.info("event not posted (%s): %s", obj.get("reason"), exc)
        return False
    finally:
        await client.close()


async def post_safely(topology: Topology, state: StateDir, **event: Any) -> bool:
    """`post` of `event_object(**event)`, never raising."""
    with contextlib.suppress(Exception):
        return await post(topology, state, event_object(**event))
    return False


class EventForwarder:
    """The supervisor's log events named in FORWARDED, posted as Events in the background."""

    def __init__(self, topology: Topology, state: StateDir, limit: int = 1000) -> None:
        self.topology, self.state = topology, state
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=limit)
        self.posted = 0

    def wrap(
        self, emit: Callable[[str, dict[str, object]], None]
    ) -> Callable[[str, dict[str, object]], None]:
        """`emit`, which also forwards the events FORWARDED names."""

        def both(event: str, fields: dict[str, object]) -> None:
            emit(event, fields)
            self.forward(event, fields)

        return both

    def forward(self, event: str, fields: dict[str, object]) -> None:
        known = FORWARDED.get(event)
        if known is None:
            return
        type_, reason, kind, field = known
        name = str(fields.get(field) or "unknown")
        obj = event_object(
            type_=type_, reason=reason, kind=kind, name=name, message=message_of(event, fields)
        )
        with contextlib.suppress(asyncio.QueueFull):  # a flood: the log keeps them all
            self.queue.put_nowait(obj)

    async def run(self) -> None:
        """Post what is queued, until cancelled; one that cannot be posted is tried again a
        few times over a minute, then dropped (the supervisor's log has it)."""
        while True:
            obj = await self.queue.get()
            for attempt in range(4):
                if await post(self.topology, self.state, obj):
                    self.posted += 1
                    break
                await asyncio.sleep(2.0 * 2**attempt)
            else:
                log.info("event dropped after retries: %s", obj.get("reason"))
            await asyncio.sleep(0)
