"""The supervisor's watch on the platform's own state in the global control etcd: what changed
becomes a supervisor event (its log), which `platform_events.EventForwarder` posts as a
Kubernetes Event, so that `kubectl get events -n kube-system` tells the story of a failover.

Layer: run (`haplane.local`). Reads the global control etcd (the active-region record, the
failover controller's published block, the replication reports, the divergence records, the
operations of `ops.haplane.dev`) once a second; writes nothing there.

Events, each at most once per change seen:
- `failover-committed` (an automatic one: the failover controller's) or `switchover-committed`
  (an operator's): a new epoch, with who decided it, why, the region it left, and for an
  automatic one how long before the commit the region was first seen down and agreed down;
- `epoch-unfenced`: the epoch became writable, and how long it was fenced;
- `failover-blocked`: the active region is down (or seen down by too few to agree) and the
  failover controller cannot move it: why (the leader publishes it once per start or change of
  cause, `controller/blocked`; a block ended and begun again between two looks is told too:
  its `since` is new); `failover-block-cleared`: that block ended without a failover (the
  region came back), and how long the whole block lasted (from its `started`). A block that
  ends in a new epoch is told by that epoch's event alone. A record that cannot be read is no
  block, and never costs the look its other events;
- `replication-resynced`: a region's replicator finished a full resync;
- `divergence-saved`: a returning region's writes after the cut were saved aside;
- `operation-approved`: someone approved a Switchover, RoleGrant, Drill or MaintenanceAction
  (`haplane approve`), with who and how many approvals it now has.

The first look is only a baseline: a supervisor that starts does not replay history. Epochs
committed and replaced between two looks are read from the history, each told.
Polling, not a watch: the control etcd can be restored under a new cluster (a watch would
have to notice), and a second's delay is nothing beside a failover's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from haplane.store import DEFAULT_GLOBAL_PREFIX, ActiveRegion, EtcdError, GlobalState
from haplane.store import operations as store_ops
from haplane.store.global_state import FailoverBlock
from haplane.topology import Topology

from .logs import parse_ts
from .state_dir import StateDir

log = logging.getLogger("haplane.local.platform_watch")

Emit = Callable[[str, dict[str, object]], None]


Approval = tuple[str, str]  # (username, at): one approval of an operation


@dataclass
class Seen:
    record: ActiveRegion | None
    resyncs: dict[str, float] = field(default_factory=dict)  # region -> last resync's time
    divergences: set[str] = field(default_factory=set)  # divergence record names
    approvals: dict[str, frozenset[Approval]] = field(default_factory=dict)  # by object uid
    block: FailoverBlock | None = None  # the failover controller's, as published


@dataclass
class Looked:
    """One look: what to compare next time, and the details events are made of."""

    seen: Seen
    resyncs: dict[str, Any] = field(default_factory=dict)  # region -> its last resync
    divergences: list[dict[str, Any]] = field(default_factory=list)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)  # by uid
    between: list[ActiveRegion] = field(default_factory=list)  # epochs a look jumped over


async def look(
    state: GlobalState, prefix: bytes = DEFAULT_GLOBAL_PREFIX, before: Seen | None = None
) -> Looked:
    """The state now. With `before`: what a report missing now last said is kept (a restored
    control etcd drops the reports until the replicators write them again: not a resync),
    and the epochs between `before`'s and now's are read from the history."""
    record = await state.read(timeout=2.0)
    try:
        block = await state.failover_block(timeout=2.0)
    except EtcdError:
        raise
    except Exception:  # a bug: the other events must not go with it
        log.exception("platform watch: the failover controller's block could not be read")
        block = before.block if before is not None else None
    reports = await state.replication_reports(timeout=2.0)
    divergences = await state.divergences(timeout=2.0)
    operations: dict[str, dict[str, Any]] = {}
    for kind, plural in store_ops.KIND_PLURALS.items():
        for _, obj in await store_ops.list_objects(state.client, prefix, plural, timeout=2.0):
            meta = obj.get("metadata") or {}
            uid = str(meta.get("uid") or f"{kind}/{meta.get('name')}")
            operations[uid] = {**obj, "kind": kind}
    resyncs = {
        region: dict(r.last_resync) for region, r in reports.items() if r.last_resync is not None
    }
    times = dict(before.resyncs) if before is not None else {}
    for region, r in resyncs.items():
        t = r.get("time")
        if isinstance(t, int | float):
            times[region] = max(float(t), times.get(region, 0.0))
    seen = Seen(
        record,
        times,
        {str(d.get("name") or d.get("epoch")) for d in divergences},
        {uid: frozenset(_approvals(obj)) for uid, obj in operations.items()},
        block,
    )
    between: list[ActiveRegion] = []
    old = before.record if before is not None else None
    if old is not None and record is not None and record.epoch - old.epoch > 1:
        history = await state.history(limit=record.epoch - old.epoch + 1)
        between = sorted(
            (h for h in history if old.epoch < h.epoch < record.epoch), key=lambda h: h.epoch
        )
    return Looked(seen, resyncs, divergences, operations, between)


def _approvals(obj: dict[str, Any]) -> list[Approval]:
    status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    found = status.get("approvals") if isinstance(status, dict) else None
    return [(str(a.get("username")), str(a.get("at"))) for a in found or () if isinstance(a, dict)]


def _seconds_between(a: str | None, b: str | None) -> float | None:
    t0, t1 = parse_ts(a), parse_ts(b)
    return round(t1 - t0, 3) if t0 is not None and t1 is not None else None


def _epoch_events(
    new: ActiveRegion, old_writable: bool | None, first: bool
) -> list[tuple[str, dict[str, object]]]:
    """A new epoch (`first`) and its unfence, or only the unfence of one seen fenced."""
    out: list[tuple[str, dict[str, object]]] = []
    if first:
        # the gates' controller decides failovers (a failback of its own is planned)
        automatic = new.by.startswith("controller:") and "failback" not in new.reason
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
                    # an automatic failover's detection and agreement, before the commit
                    "detected_s_before": _seconds_between(new.detected, new.since)
                    if new.detected
                    else None,
                    "agreed_s_before": _seconds_between(new.agreed, new.since)
                    if new.agreed
                    else None,
                },
            )
        )
    if (
        new.writable
        and (first or old_writable is False)
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
    return out


def _block_events(
    old: FailoverBlock | None, new: FailoverBlock | None, record: ActiveRegion | None
) -> list[tuple[str, dict[str, object]]]:
    """A failover block that started or changed cause, or that ended in the same epoch. A
    block of an epoch no longer current ended in a switch, which its own event tells. Its
    `since` tells one block from the next: blocked, cleared and blocked again for the same
    cause between two looks is told (the end between them is not)."""

    def key(b: FailoverBlock | None) -> tuple[int, str, str, str] | None:
        if b is None or b.blocked is None:
            return None
        return (b.epoch, b.region, b.blocked, b.since)

    if new is None or (record is not None and new.epoch != record.epoch):
        return []
    if new.blocked is not None and key(new) != key(old):
        return [
            (
                "failover-blocked",
                {
                    "region": new.region,
                    "epoch": new.epoch,
                    "blocked": new.blocked,
                    "by": new.by,
                    "since": new.since,
                    "started": new.started or new.since,
                    "why": new.reason,
                },
            )
        ]
    if (
        new.blocked is None
        and old is not None
        and old.blocked is not None
        and (old.epoch, old.region) == (new.epoch, new.region)
    ):
        return [
            (
                "failover-block-cleared",
                {
                    "region": new.region,
                    "epoch": new.epoch,
                    "was": old.blocked,
                    # the whole block, from when it began (kept across its causes)
                    "blocked_seconds": _seconds_between(old.started or old.since, new.since),
                    "by": new.by,
                    "why": new.reason,
                },
            )
        ]
    return []


def changes(before: Seen, looked: Looked) -> list[tuple[str, dict[str, object]]]:
    """The events between two looks: epochs in their order, then a failover block, resyncs,
    divergences and approvals (each kind in its order; a look cannot tell which of two kinds
    came first)."""
    now, resyncs, divergences = looked.seen, looked.resyncs, looked.divergences
    out: list[tuple[str, dict[str, object]]] = []
    old, new = before.record, now.record
    for skipped in looked.between:  # epochs committed and replaced between two looks
        out += _epoch_events(skipped, None, True)
    if new is not None:
        if old is None or new.epoch > old.epoch:
            out += _epoch_events(new, None, True)
        elif new.epoch == old.epoch:
            out += _epoch_events(new, old.writable, False)
    out += _block_events(before.block, now.block, new)
    for region, when in sorted(now.resyncs.items()):
        if when > before.resyncs.get(region, 0.0):
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
    for uid, approvals in now.approvals.items():
        fresh = approvals - before.approvals.get(uid, frozenset())
        if not fresh:
            continue
        obj = looked.operations[uid]
        status = obj.get("status") or {}
        meta = obj.get("metadata") or {}
        needed = sum(int(r.get("approvals", 1)) for r in status.get("requirements") or ())
        who = ", ".join(sorted(name for name, _ in fresh))
        out.append(
            (
                "operation-approved",
                {
                    "kind": obj.get("kind"),
                    "name": meta.get("name"),
                    "uid": meta.get("uid"),
                    "why": f"approved by {who} ({len(approvals)} of {needed or 1}; asked by "
                    f"{(status.get('requestedBy') or {}).get('username', 'someone')}; now "
                    f"{status.get('phase')})",
                },
            )
        )
    return out


async def keep_watching(
    topology: Topology, state: StateDir, emit: Emit, every: float = 1.0
) -> None:
    """The supervisor's loop (runs until cancelled). A client that keeps failing is made
    again (a rotated certificate, a restored control etcd)."""
    from .global_control import control_client

    before: Seen | None = None
    while True:
        failures = 0
        async with control_client(topology, state, timeout=2.0) as client:
            gs = GlobalState(client)
            while failures < 10:
                try:
                    looked = await look(gs, before=before)
                except EtcdError as exc:  # the control etcd away: nothing to compare now
                    failures += 1
                    log.debug("platform watch: %s", exc)
                except Exception:  # a bug: logged, and the watch goes on
                    failures += 1
                    log.exception("platform watch: a look failed")
                else:
                    failures = 0
                    if before is not None:
                        for event, fields in changes(before, looked):
                            try:
                                emit(event, fields)
                            except Exception:  # never the watch's end
                                log.exception("platform watch: %s not emitted", event)
                    before = looked.seen
                await asyncio.sleep(every)
        log.info("platform watch: the control etcd kept failing; connecting again")
