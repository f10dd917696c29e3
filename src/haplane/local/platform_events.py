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
import hashlib
import logging
import re
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from haplane.topology import Topology

from .state_dir import StateDir

if TYPE_CHECKING:
    from haplane.kubeclient import KubeClient

log = logging.getLogger("haplane.local.platform_events")

NAMESPACE = "kube-system"
COMPONENT = "haplane-supervisor"
INVOLVED_API_VERSION = "haplane.dev/v1alpha1"

# supervisor log event -> (Event type, reason, involved kind, the field naming the object)
FORWARDED: dict[str, tuple[str, str, str, str]] = {
    "drill-passed": ("Normal", "DrillPassed", "Drill", "scenario"),
    "drill-failed": ("Warning", "DrillFailed", "Drill", "scenario"),
    "snapshot-failed": ("Warning", "SnapshotFailed", "EtcdCluster", "scope"),
    "backup-failed": ("Warning", "BackupFailed", "Backup", "name"),
    "runbook-fired": ("Warning", "RunbookFired", "Runbook", "runbook"),
    "runbook-proposed": ("Warning", "RunbookProposed", "Runbook", "runbook"),
    "runbook-not-fired": ("Warning", "RunbookNotFired", "Runbook", "runbook"),
    "runbook-run-failed": ("Warning", "RunbookFailed", "Runbook", "runbook"),
    # the platform's own state (`platform_watch`)
    "failover-committed": ("Warning", "FailoverCommitted", "Region", "region"),
    "switchover-committed": ("Normal", "SwitchoverCommitted", "Region", "region"),
    "epoch-unfenced": ("Normal", "EpochUnfenced", "Region", "region"),
    "failover-blocked": ("Warning", "FailoverBlocked", "Region", "region"),
    "failover-block-cleared": ("Normal", "FailoverBlockCleared", "Region", "region"),
    "replication-resynced": ("Warning", "ReplicationResynced", "Region", "region"),
    "divergence-saved": ("Warning", "DivergenceSaved", "Region", "region"),
    # an operation of ops.haplane.dev (its kind in the event's `kind` field)
    "operation-approved": ("Normal", "OperationApproved", "", "name"),
}
OPS_API_VERSION = "ops.haplane.dev/v1"


def event_object(
    *,
    type_: str,
    reason: str,
    kind: str,
    name: str,
    message: str,
    action: str = "",
    api_version: str = INVOLVED_API_VERSION,
    cluster_scoped: bool = False,
    uid: str | None = None,
) -> dict[str, Any]:
    """A core/v1 Event about `kind` `name` (a haplane object: a drill scenario, a cluster, a
    runbook, a region; or an operation of `ops.haplane.dev`)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    slug = re.sub(r"[^a-z0-9-]+", "-", f"{kind}-{name}".lower())[:200].strip("-") or "haplane"
    # one object per (type, reason, object): a repeat counts up in it (`post`), as client-go's
    # event correlator does; the set of such objects is bounded, not one per occurrence
    same = hashlib.sha256(f"{type_}/{reason}/{kind}/{name}".encode()).hexdigest()[:16]
    host = socket.gethostname()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{slug}.{same}", "namespace": NAMESPACE},
        "involvedObject": {
            "apiVersion": api_version,
            "kind": kind,
            "name": name,
            # an operation is cluster-scoped: no namespace, and its uid, as `kubectl describe`
            # finds the Events of an object by
            **({"uid": uid} if uid else {}),
            **({} if cluster_scoped else {"namespace": NAMESPACE}),
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
    """`send` `obj` (an Event) through the gate as haplane-admin; False (logged) when it could
    not be now (Undeliverable: never)."""
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
        return await send(client, obj)
    except Undeliverable:
        raise
    except Exception as exc:  # unreachable: worth another try
        log.info("event not posted (%s): %s", obj.get("reason"), exc)
        return False
    finally:
        await client.close()


class Undeliverable(Exception):
    """The API refused the Event for good (403, 422...): retrying changes nothing."""


async def send(client: KubeClient, obj: dict[str, Any]) -> bool:
    """POST `obj`; when its object exists (a repeat, or a POST whose answer was lost), count
    up in it: `count` + 1, the new `lastTimestamp` and message. True when recorded; False
    when worth trying again (5xx, 429); Undeliverable for any other refusal."""
    base = f"/api/v1/namespaces/{NAMESPACE}/events"
    status, out, _ = await client.exchange("POST", base, obj)
    if status == 409:
        name = obj["metadata"]["name"]
        status, old, _ = await client.exchange("GET", f"{base}/{name}")
        if status == 200 and isinstance(old, dict):
            new = {**old, "message": obj["message"], "lastTimestamp": obj["lastTimestamp"]}
            new["count"] = int(old.get("count") or 1) + 1
            status, out, _ = await client.exchange("PUT", f"{base}/{name}", new)
            if status == 200:
                return True
    if status == 201:
        return True
    if status in (409, 429) or status >= 500:  # (409: changed meanwhile) worth another try
        return False
    raise Undeliverable(f"{status}: {out.get('message') if isinstance(out, dict) else out}")


async def post_safely(
    topology: Topology, state: StateDir, attempts: int = 3, timeout: float = 5.0, **event: Any
) -> bool:
    """`post` of `event_object(**event)` by a command (a restore), tried `attempts` times a
    second apart, each for at most `timeout` seconds; never raising."""
    obj = event_object(**event)
    for attempt in range(attempts):
        try:
            if await post(topology, state, obj, timeout):
                return True
        except Exception as exc:  # Undeliverable, or a bug: logged, the command stands
            log.info("event not posted (%s): %s", obj.get("reason"), exc)
            return False
        if attempt + 1 < attempts:
            await asyncio.sleep(1.0)
    return False


class EventForwarder:
    """The supervisor's log events named in FORWARDED, posted as Events in the background."""

    def __init__(self, topology: Topology, state: StateDir, limit: int = 1000) -> None:
        self.topology, self.state = topology, state
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=limit)
        self.posted = 0
        self.dropped = 0

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
        version, operation = INVOLVED_API_VERSION, not kind
        if operation:  # an operation: its own kind, in its own group
            kind, version = str(fields.get("kind") or "Operation"), OPS_API_VERSION
        said = {k: v for k, v in fields.items() if k not in ("kind", "uid")}
        obj = event_object(
            type_=type_, reason=reason, kind=kind, name=name, api_version=version,
            message=message_of(event, said), cluster_scoped=operation,
            uid=str(fields["uid"]) if operation and fields.get("uid") else None,
        )  # fmt: skip
        try:
            self.queue.put_nowait(obj)
        except asyncio.QueueFull:  # a flood while the API is away: the log keeps them all
            self.dropped += 1
            log.info("event dropped (queue full, %d so far): %s", self.dropped, reason)

    async def run(self) -> None:
        """Post what is queued, until cancelled: one the API cannot take now is tried again
        (2, 4, 8 s later), then dropped; one it refuses (Undeliverable) at once. Dropped ones
        are in the supervisor's log."""
        while True:
            obj = await self.queue.get()
            try:
                for attempt in range(4):
                    if await post(self.topology, self.state, obj):
                        self.posted += 1
                        break
                    if attempt < 3:
                        await asyncio.sleep(2.0 * 2**attempt)
                else:
                    self.dropped += 1
                    log.info("event dropped after retries: %s", obj.get("reason"))
            except Undeliverable as exc:
                self.dropped += 1
                log.info("event refused (%s): %s", obj.get("reason"), exc)
            finally:
                self.queue.task_done()

    async def drain(self, seconds: float) -> None:
        """Until what is queued is posted, at most `seconds` (at `down`, before the gates
        stop)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), seconds)
        if not self.queue.empty():
            log.info("events not posted at stop: %d", self.queue.qsize())
