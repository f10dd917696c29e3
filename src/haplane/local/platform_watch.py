"""The supervisor's watch on the platform's own state in the global control etcd: what changed
becomes a supervisor event (its log), which `platform_events.EventForwarder` posts as a
Kubernetes Event, so that `kubectl get events -n kube-system` tells the story of a failover.

Layer: run (`haplane.local`). Reads the global control etcd (the active-region record, the
replication reports, the divergence records, the operations of `ops.haplane.dev`) once a
second; writes nothing there.

Events, each at most once per change seen:
- `failover-committed` (an automatic one: the failover controller's) or `switchover-committed`
  (an operator's): a new epoch, with who decided it, why, and the region it left;
- `epoch-unfenced`: the epoch became writable, and how long it was fenced;
- `replication-resynced`: a region's replicator finished a full resync;
- `divergence-saved`: a returning region's writes after the cut were saved aside;
- `operation-approved`: someone approved a Switchover, RoleGrant, Drill or MaintenanceAction
  (`haplane approve`), with who and how many approvals it now has.

The first look is only a baseline: a supervisor that starts does not replay history.
Polling, not a watch: the control etcd can be restored under a new cluster (a watch would
have to notice), and a second's delay is nothing beside a failover's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from haplane.store import DEFAULT_GLOBAL_PREFIX, ActiveRegion, EtcdError, GlobalState
from haplane.store import operations as store_ops
from haplane.topology import Topology

from .state_dir import StateDir

log = logging.getLogger("haplane.local.platform_watch")

Emit = Callable[[str, dict[str, object]], None]


@dataclass
class Seen:
    record: ActiveRegion | None
    resyncs: dict[str, object] = field(default_factory=dict)  # region -> last resync time
    divergences: set[str] = field(default_factory=set)  # divergence record names
    approvals: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, name) -> n


@dataclass
class Looked:
    """One look: what to compare next time, and the details events are made of."""

    seen: Seen
    resyncs: dict[str, Any] = field(default_factory=dict)  # region -> its last resync
    divergences: list[dict[str, Any]] = field(default_factory=list)
    operations: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


OPERATIONS = {  # ops.haplane.dev kinds and where they are stored
    "Switchover": "switchovers",
    "RoleGrant": "rolegrants",
    "Drill": "drills",
    "MaintenanceAction": "maintenanceactions",
}


async def look(state: GlobalState, prefix: bytes = DEFAULT_GLOBAL_PREFIX) -> Looked:
    record = await state.read(timeout=2.0)
    reports = await state.replication_reports(timeout=2.0)
    divergences = await state.divergences(timeout=2.0)
    operations: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, plural in OPERATIONS.items():
        for _, obj in await store_ops.list_objects(state.client, prefix, plural, timeout=2.0):
            name = str((obj.get("metadata") or {}).get("name"))
            operations[(kind, name)] = obj
    resyncs = {
        region: dict(r.last_resync) for region, r in reports.items() if r.last_resync is not None
    }
    seen = Seen(
        record,
        {region: r.get("time") for region, r in resyncs.items()},
        {str(d.get("name") or d.get("epoch")) for d in divergences},
        {key: len(_approvals(obj)) for key, obj in operations.items()},
    )
    return Looked(seen, resyncs, divergences, operations)


def _approvals(obj: dict[str, Any]) -> list[dict[str, Any]]:
    status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    found = status.get("approvals") if isinstance(status, dict) else None
    return [a for a in found or () if isinstance(a, dict)]


def _seconds_between(a: str | None, b: str | None) -> float | None:
    try:
        t0 = datetime.fromisoformat(str(a).replace("Z", "+00:00"))
        t1 = datetime.fromisoformat(str(b).replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((t1 - t0).total_seconds(), 3)


def changes(before: Seen, looked: Looked) -> list[tuple[str, dict[str, object]]]:
    """The events between two looks, in the order they happened."""
    now, resyncs, divergences = looked.seen, looked.resyncs, looked.divergences
    out: list[tuple[str, dict[str, object]]] = []
    old, new = before.record, now.record
    if new is not None and (old is None or new.epoch > old.epoch):
        automatic = new.by.startswith("controller:")
        out.append(
            (
                "failover-committed" if automatic else "switchover-committed",
                {
                    "region": new.region,
                    "epoch": new.epoch,
                    "from": new.previous,
                    "by": new.by,
                    "why": new.reason,
                    "fenced": not new.writable,
                },
            )
        )
    if (
        new is not None
        and new.writable
        and (old is None or new.epoch > old.epoch or not old.writable)
        and new.unfenced is not None
        and new.unfenced != new.since  # written writable at once: never fenced
    ):
        out.append(
            (
                "epoch-unfenced",
                {
                    "region": new.region,
                    "epoch": new.epoch,
                    "fenced_seconds": _seconds_between(new.since, new.unfenced),
                },
            )
        )
    for region, when in sorted(now.resyncs.items()):
        if when is not None and before.resyncs.get(region) != when:
            r = resyncs.get(region, {})
            out.append(
                (
                    "replication-resynced",
                    {
                        "region": region,
                        "source": r.get("source"),
                        "keys": r.get("keys"),
                        "seconds": r.get("seconds"),
                        "why": r.get("reason"),
                    },
                )
            )
    for d in divergences:
        name = str(d.get("name") or d.get("epoch"))
        if name not in before.divergences:
            out.append(
                (
                    "divergence-saved",
                    {
                        "region": d.get("region"),
                        "epoch": d.get("epoch"),
                        "count": d.get("count"),
                        "path": d.get("path"),
                        "why": f"{d.get('count')} keys {d.get('region')} wrote after the cut "
                        f"of epoch {d.get('epoch')} were saved aside (`haplane divergence "
                        "show`)",
                    },
                )
            )
    for (kind, name), count in sorted(now.approvals.items()):
        if count <= before.approvals.get((kind, name), 0):
            continue
        obj = looked.operations[(kind, name)]
        approvals = _approvals(obj)
        status = obj.get("status") or {}
        spec = obj.get("spec") or {}
        new_ones = approvals[before.approvals.get((kind, name), 0) :]
        out.append(
            (
                "operation-approved",
                {
                    "kind": kind,
                    "name": name,
                    "why": f"approved by {', '.join(str(a.get('username')) for a in new_ones)} "
                    f"({count} of {spec.get('approvals', 1)}; asked by "
                    f"{(status.get('requestedBy') or {}).get('username', 'someone')})",
                    "phase": status.get("phase"),
                },
            )
        )
    return out


async def keep_watching(
    topology: Topology, state: StateDir, emit: Emit, every: float = 1.0
) -> None:
    """The supervisor's loop (runs until cancelled)."""
    from .global_control import control_client

    before: Seen | None = None
    async with control_client(topology, state, timeout=2.0) as client:
        gs = GlobalState(client)
        while True:
            try:
                looked = await look(gs)
            except EtcdError as exc:  # the control etcd away: nothing to compare now
                log.debug("platform watch: %s", exc)
            except Exception:  # a bug: logged, and the watch goes on
                log.exception("platform watch: a look failed")
            else:
                if before is not None:
                    for event, fields in changes(before, looked):
                        emit(event, fields)
                before = looked.seen
            await asyncio.sleep(every)
