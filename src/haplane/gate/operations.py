"""The failover controller's hands for operators' requests: approved `Switchover` objects
(`ops.haplane.dev`, stored in the global control etcd) carried out with #9's semantics, their
phases and timings written into their status.

Layer: gate. Runs in the leading failover controller's decide loop (`haplane.gate.controller`,
through the `Host` protocol below), between its own decisions, so an operator's switch and an
automatic one never run at once; reads and rewrites the objects through
`haplane.store.operations` (compare-and-swap on each).

Each pass (every `OPS_EVERY` seconds):
- a `Pending` request past its `expiresAt` becomes `Expired`;
- the oldest `Approved` one is claimed (`Running`, in one compare-and-swap: a deposed leader
  that has not noticed yet cannot claim it too) and carried out:
  - refused (`Failed`, nothing switched) when the epoch is no longer the one it was asked and
    approved under (`status.epochAtRequest`), when its target is already active or unknown, or
    while a switch is completing;
  - **planned** when the two regions replicate and `force` is not set: freeze, catch up, switch,
    reverse (`planned_switchover`); refused when the old region cannot be frozen or the target
    does not catch up in `catchUpTimeoutSeconds`, with nothing switched;
  - **forced** otherwise: the new epoch committed unwritable and the others frozen (the epoch
    recorded in the request's `status.result` at once); the controller's own unfence follows
    after the fence wait;
  - either way automatic failback is suspended (an operator chose where the platform runs);
- a `Running` request is settled from what is stored, by whichever controller leads now: its
  recorded epoch (or, when the runner stopped before recording it, the history entry naming
  the request) writable -> `Succeeded`; replaced by a later epoch -> `Failed`. One with no
  trace of a commit that stays so for `ABANDONED_AFTER` (counted on this controller's own
  clock from when it first saw it) is closed as `Failed`, saying where the platform stands;
- a controller that loses the lead while it runs one (its decide loop cancelled) before
  anything switched puts it back to `Approved`, unclaimed, for the next leader to run at once;
  a planned one's freeze is undone on the way out (`planned_switchover`), since nothing but a
  switch activates a frozen region.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from haplane.store import (
    ActiveRegion,
    EtcdClient,
    EtcdError,
    GlobalState,
    KeyValue,
    RegionFences,
    StaleEpoch,
)
from haplane.store import operations as ops
from haplane.store.switchover import SwitchoverRefused, planned_switchover

from .api_recorder import ApiRecorder, RecorderError
from .failover import Settings

AUTOMATIC_LABEL = "ops.haplane.dev/automatic"
AUTOMATIC_NAME_PREFIX = "automatic-epoch-"
OPS_EVERY = 0.25  # seconds between passes over the requests
ABANDONED_AFTER = 120.0  # a Running request with no trace of a commit is closed after this
# finished operations of every kind are deleted this long after they finished (the newest
# KEEP_FINISHED of each kind stay whatever their age), by the leading controller
PRUNE_EVERY = 600.0
RETAIN_FINISHED = 30 * 24 * 3600.0
KEEP_FINISHED = 100
TIMEOUT = 1.0
Obj = dict[str, Any]


class Host(Protocol):
    """What the executor needs of the failover controller it runs in."""

    prefix: bytes

    @property
    def gate(self) -> str: ...
    @property
    def decision(self) -> Settings: ...
    @property
    def regions(self) -> set[str]: ...
    @property
    def fences(self) -> RegionFences | None: ...
    def paused(self) -> AbstractAsyncContextManager[None]: ...
    async def freeze_others(self, record: ActiveRegion) -> None: ...
    def log(self, event: str, **fields: Any) -> None: ...
    def note_committed(self, epoch: int, *, writable: bool) -> None: ...


class Operations:
    def __init__(self, host: Host) -> None:
        self.host = host
        self._next = 0.0
        self._running_seen: dict[str, float] = {}  # name -> first seen Running (monotonic)
        self._next_prune = 0.0

    async def advance(self, state: GlobalState, client: EtcdClient) -> None:
        """One pass, at most every OPS_EVERY seconds."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + OPS_EVERY
        items = await ops.list_objects(client, self.host.prefix, "switchovers", timeout=TIMEOUT)
        running = set()
        for kv, obj in items:
            phase = _status(obj).get("phase")
            if phase == ops.PENDING:
                await self._expire(client, kv, _status(obj))
            elif phase == ops.RUNNING:
                running.add(obj["metadata"]["name"])
                await self._settle(state, client, kv, obj)
        self._running_seen = {n: t for n, t in self._running_seen.items() if n in running}
        approved = [(kv, obj) for kv, obj in items if _status(obj).get("phase") == ops.APPROVED]
        if approved:
            await self._run(state, client, *approved[0])
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            await self.prune(client)

    async def prune(self, client: EtcdClient) -> None:
        """Finished operations of every kind, past RETAIN_FINISHED (see the constants)."""
        for plural in ops.PLURALS:
            deleted = await ops.prune_finished(
                client,
                self.host.prefix,
                plural,
                older_than=RETAIN_FINISHED,
                keep=KEEP_FINISHED,
                timeout=TIMEOUT,
            )
            if deleted:
                self.host.log("operations_pruned", kind=plural, names=deleted)

    async def _expire(self, client: EtcdClient, kv: KeyValue, status: Obj) -> None:
        at = ops.parse_time(status.get("expiresAt"))
        if at is None or time.time() < at:
            return

        def change(st: Obj) -> None:
            st["phase"] = ops.EXPIRED
            st["message"] = f"not approved by {st.get('expiresAt')}: ask again"

        with _quiet():
            await ops.update_status(client, kv, change, timeout=TIMEOUT)

    async def _run(self, state: GlobalState, client: EtcdClient, kv: KeyValue, obj: Obj) -> None:
        host = self.host
        name = obj["metadata"]["name"]
        started = time.monotonic()
        phases: list[Obj] = []

        def phase(label: str, **extra: Any) -> None:
            phases.append(
                {
                    "name": label,
                    "at": ops.now_rfc3339(),
                    "seconds": round(time.monotonic() - started, 3),
                    **extra,
                }
            )

        phase("Claimed")

        def claim(st: Obj) -> None:
            st["phase"] = ops.RUNNING
            st["runBy"] = f"controller:{host.gate}"
            st["startedAt"] = ops.now_rfc3339()
            st["phases"] = list(phases)

        try:
            kv, obj = await ops.update_status(client, kv, claim, timeout=TIMEOUT)
        except (ops.Lost, EtcdError):
            return  # someone else acted on it (or will, next pass)
        host.log("switchover_claimed", switchover=name, target=obj["spec"].get("targetRegion"))
        run = _Run(self.host, state, client, kv, obj, phases, phase)
        try:
            await run.carry_out()
        except asyncio.CancelledError:
            # this controller lost the lead (its decide loop is cancelled): a request that
            # switched nothing goes back to Approved for the next leader, at once, rather than
            # wait ABANDONED_AFTER to be failed (a planned one's freeze was undone on the way)
            if not run.committed:
                with contextlib.suppress(Exception):
                    await asyncio.shield(run.release())
            raise
        except Exception as exc:
            host.log("switchover_error", switchover=name, error=repr(exc))
            if not run.committed:  # nothing switched: say why; else `_settle` finishes it
                await run.finish(ops.FAILED, f"stopped by an error before switching: {exc}")

    async def _settle(self, state: GlobalState, client: EtcdClient, kv: KeyValue, obj: Obj) -> None:
        """Finish a Running request from what is stored (see the module's description)."""
        name = obj["metadata"]["name"]
        status = _status(obj)
        result: Obj = status["result"] if isinstance(status.get("result"), dict) else {}
        epoch = result.get("epoch") if isinstance(result.get("epoch"), int) else None
        active = await state.read(timeout=TIMEOUT)
        if active is None:
            return
        if epoch is None:  # the runner may have stopped between the commit and recording it
            marks = (f"(switchover/{name},", f"(switchover/{name})")  # as `_by` writes them
            for record in reversed(await state.history(limit=50)):
                if any(m in record.by for m in marks):
                    epoch = record.epoch
                    break
        if epoch is None:
            first = self._running_seen.setdefault(name, time.monotonic())
            if time.monotonic() - first < ABANDONED_AFTER:
                return
            message = (
                f"the controller running it ({status.get('runBy')}) stopped before it switched "
                f"anything; the platform runs on {active.region} at epoch {active.epoch}"
            )
            outcome = ops.FAILED
        elif active.epoch == epoch and not active.writable:
            return  # the fence wait: the controller unfences it
        elif active.epoch == epoch:
            message = f"{active.region} active and writable at epoch {epoch}"
            outcome = ops.SUCCEEDED
        elif _dict(obj.get("spec")).get("automatic") is True:
            # a record of a switch that happened: replaced since, it happened all the same
            message = f"committed epoch {epoch}; since replaced by epoch {active.epoch}"
            outcome = ops.SUCCEEDED
        else:  # replaced by a later epoch (or, after a restore, an earlier one)
            message = (
                f"epoch {epoch} was replaced by epoch {active.epoch} ({active.region}: "
                f"{active.reason})"
            )
            outcome = ops.FAILED

        def change(st: Obj) -> None:
            if outcome == ops.SUCCEEDED:
                phases = st.setdefault("phases", [])
                if not any(p.get("name") == "Writable" for p in phases):
                    phases.append(_writable_phase(phases))
            st["phase"] = outcome
            st["message"] = message
            st["finishedAt"] = ops.now_rfc3339()

        with _quiet():
            await ops.update_status(client, kv, change, timeout=TIMEOUT)
            self.host.log("switchover_" + outcome.lower(), switchover=name, message=message)


def automatic_record(
    host: Host, *, action: str, record: ActiveRegion, previous: ActiveRegion, reason: str
) -> tuple[Obj, Obj]:
    """An automatic failover or failback as a Switchover for review (`kubectl get
    switchovers`): (what the API is asked to create, the object as stored). The API fills the
    status itself (`haplane.api.ops`: requester, phase, result) from the spec; the stored form
    is what the controller writes straight to the global control etcd when the API cannot
    take it."""
    name = f"{AUTOMATIC_NAME_PREFIX}{record.epoch}"
    spec: Obj = {
        "targetRegion": record.region,
        "reason": reason[:1024],
        "automatic": True,
        "epoch": record.epoch,
        "fromRegion": previous.region,
        "action": action,
    }
    asked: Obj = {
        "apiVersion": f"{ops.GROUP}/{ops.VERSION}",
        "kind": "Switchover",
        "metadata": {"name": name, "labels": {AUTOMATIC_LABEL: "true"}},
        "spec": spec,
    }
    phases = [{"name": "Committed", "at": ops.now_rfc3339(), "seconds": 0.0}]
    if record.writable:
        phases.append({"name": "Writable", "at": ops.now_rfc3339(), "seconds": 0.0})
    stored: Obj = {
        **asked,
        "metadata": {
            **asked["metadata"],
            "uid": str(uuid.uuid4()),
            "creationTimestamp": ops.now_rfc3339(),
        },
        "status": {
            "recorded": True,
            "phase": ops.SUCCEEDED if record.writable else ops.RUNNING,
            "requestedBy": {"username": f"controller:{host.gate}"},
            "requestedAt": ops.now_rfc3339(),
            "startedAt": ops.now_rfc3339(),
            "runBy": f"controller:{host.gate}",
            "epochAtRequest": previous.epoch,
            "approvalCount": 0,
            "phases": phases,
            "result": {
                "fromRegion": previous.region,
                "toRegion": record.region,
                "epoch": record.epoch,
                "action": action,
                "planned": record.writable,
                # when the old region was first seen down and agreed down (a failover's)
                **({"detectedAt": record.detected} if record.detected else {}),
                **({"agreedAt": record.agreed} if record.agreed else {}),
            },
            "message": f"automatic {action}: {reason}",
        },
    }
    return asked, stored


async def record_automatic(
    host: Host,
    client: EtcdClient,
    *,
    action: str,
    record: ActiveRegion,
    previous: ActiveRegion,
    reason: str,
    recorder: ApiRecorder | None = None,
) -> None:
    """Record an automatic switch: through the API as the controller's ServiceAccount when it
    has one (authorized and audited at the replica that takes it), else, or when no replica
    takes it within the recorder's deadline, straight into the global control etcd (said in
    the log: that record is in no audit log). Best effort: the switch stands either way."""
    asked, stored = automatic_record(
        host, action=action, record=record, previous=previous, reason=reason
    )
    why = "no ServiceAccount token configured"
    if recorder is not None:
        try:
            outcome = await recorder.record(asked, record.region)
            host.log("automatic_switchover_recorded", epoch=record.epoch, via="api", said=outcome)
            return
        except RecorderError as exc:
            why = f"the API did not take it: {exc}"
    try:
        if not await ops.create_object(client, host.prefix, "switchovers", stored, timeout=TIMEOUT):
            host.log("automatic_switchover_exists", epoch=record.epoch)  # recorded before
        else:
            host.log("automatic_switchover_recorded", epoch=record.epoch, via="etcd", why=why)
    except Exception as exc:
        host.log("automatic_switchover_unrecorded", epoch=record.epoch, error=repr(exc))


class _Run:
    """One claimed request, carried out."""

    def __init__(
        self,
        host: Host,
        state: GlobalState,
        client: EtcdClient,
        kv: KeyValue,
        obj: Obj,
        phases: list[Obj],
        phase: Any,
    ) -> None:
        self.host, self.state, self.client, self.kv, self.obj = host, state, client, kv, obj
        self.name = obj["metadata"]["name"]
        self.phases, self.phase = phases, phase
        self.committed = False

    async def finish(self, outcome: str, message: str, **fields: Any) -> None:
        def change(st: Obj) -> None:
            st["phase"] = outcome
            st["message"] = message
            st["phases"] = list(self.phases)
            if outcome != ops.RUNNING:
                st["finishedAt"] = ops.now_rfc3339()
            st.update(fields)

        try:  # a status not written now is settled by the next pass (`Operations._settle`)
            self.kv, _ = await ops.update_status(self.client, self.kv, change, timeout=TIMEOUT)
        except (ops.Lost, EtcdError) as exc:
            self.host.log("switchover_status_unwritten", switchover=self.name, error=str(exc))
            return
        if outcome != ops.RUNNING:
            self.host.log("switchover_" + outcome.lower(), switchover=self.name, message=message)

    async def release(self) -> None:
        """Back to Approved, unclaimed, for whichever controller leads next."""

        def change(st: Obj) -> None:
            st["phase"] = ops.APPROVED
            for key in ("runBy", "startedAt", "phases"):
                st.pop(key, None)
            st["message"] = (
                f"controller:{self.host.gate} lost the lead before switching anything; the "
                "next leader runs it"
            )

        self.kv, _ = await ops.update_status(self.client, self.kv, change, timeout=TIMEOUT)
        self.host.log("switchover_released", switchover=self.name)

    async def carry_out(self) -> None:
        host, state = self.host, self.state
        spec, status = self.obj.get("spec") or {}, _status(self.obj)
        to = str(spec.get("targetRegion") or "")
        active = await state.read(timeout=TIMEOUT)
        asked = status.get("epochAtRequest")
        if active is None:
            return await self.finish(ops.FAILED, "no active region is recorded")
        if isinstance(asked, int) and asked != active.epoch:
            return await self.finish(
                ops.FAILED,
                f"the epoch changed since the request was made and approved (epoch {asked}, now "
                f"{active.epoch}: {active.region}, {active.reason}): nothing switched; look "
                "again and ask again",
            )
        if to == active.region:
            return await self.finish(ops.FAILED, f"{to} is already the active region")
        if host.regions and to not in host.regions:
            return await self.finish(ops.FAILED, f"{to!r} is not a region of this topology")
        if not active.writable:
            return await self.finish(
                ops.FAILED, f"epoch {active.epoch} is not writable yet (a switch is completing)"
            )
        by = _by(status, self.name)
        reason = str(spec.get("reason") or "switchover")
        decision = host.decision
        planned = not spec.get("force") and decision.pair(active.region, to)[0]
        fences = host.fences
        if planned and fences is None:
            return await self.finish(ops.FAILED, "no regional etcd is configured: cannot freeze")
        result: Obj = {"fromRegion": active.region, "toRegion": to, "planned": bool(planned)}
        async with host.paused():
            if planned:
                assert fences is not None
                try:
                    done = await planned_switchover(
                        state,
                        fences,
                        active,
                        to,
                        by=by,
                        reason=reason,
                        catch_up_limit=float(spec.get("catchUpTimeoutSeconds", 10)),
                        sync=decision.is_sync_pair(active.region, to),
                    )
                except SwitchoverRefused as exc:
                    self.phase("Refused")
                    return await self.finish(ops.FAILED, f"{exc}: nothing switched")
                record = done.record
                self.committed = True
                host.note_committed(record.epoch, writable=True)
                await host.freeze_others(record)
                self.phase("CaughtUp", caughtUpSeconds=round(done.caught_up_seconds, 3))
                self.phase("Committed", epoch=record.epoch)
                result.update(
                    epoch=record.epoch,
                    cutRevision=done.cut.revision,
                    caughtUpSeconds=round(done.caught_up_seconds, 3),
                    warnings=list(done.warnings),
                )
            else:
                try:
                    record = await state.switch(
                        to,
                        expected_epoch=active.epoch,
                        by=by,
                        reason=reason,
                        sync_mode=decision.synchronous(active.region),
                    )
                except StaleEpoch as exc:
                    return await self.finish(
                        ops.FAILED, f"the epoch changed: {exc}; nothing switched"
                    )
                self.committed = True
                host.note_committed(record.epoch, writable=False)
                self.phase("Committed", epoch=record.epoch)
                result["epoch"] = record.epoch
                await host.freeze_others(record)
        host.log(
            "committed",
            action="switchover",
            switchover=self.name,
            region=record.region,
            epoch=record.epoch,
            previous=active.region,
            reason=reason,
            planned=bool(planned),
        )
        try:
            await state.set_failback(
                False, by=by, reason=f"switchover {self.name} to {to}", timeout=TIMEOUT
            )
        except EtcdError:
            result.setdefault("warnings", []).append(
                "automatic failback could not be suspended; run `haplane failback off`"
            )
        if planned:
            self.phase("Writable")
            return await self.finish(
                ops.SUCCEEDED,
                f"{to} active at epoch {record.epoch}; {active.region} follows it from the "
                "cut: nothing lost",
                result=result,
            )
        # forced: writable after the fence wait, when the controller unfences it; settled by
        # a later pass (whoever leads then) from the epoch recorded here
        await self.finish(
            ops.RUNNING,
            f"epoch {record.epoch} committed; writable after the fence wait "
            f"({record.fence_wait:.2f}s)",
            result=result,
        )


def _writable_phase(phases: list[Obj]) -> Obj:
    """The Writable step of a forced switch, its time counted from the claim (wall clocks of
    whoever committed and whoever saw it writable: approximate when they differ)."""
    committed = next((p for p in phases if p.get("name") == "Committed"), None)
    seconds = None
    if committed is not None:
        at = ops.parse_time(committed.get("at"))
        if at is not None:
            wait = max(0.0, time.time() - at)
            seconds = round(float(committed.get("seconds", 0)) + wait, 3)
    return {"name": "Writable", "at": ops.now_rfc3339(), "seconds": seconds}


def _status(obj: Obj) -> Obj:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def _by(status: Obj, name: str) -> str:
    """Who the history records: the requester, and who approved (or broke glass)."""
    requester = (status.get("requestedBy") or {}).get("username", "?")
    approvers = [a.get("username", "?") for a in status.get("approvals") or ()]
    if status.get("breakGlass"):
        return f"{requester} (switchover/{name}, break-glass)"
    if approvers:
        return f"{requester} (switchover/{name}, approved by {', '.join(approvers)})"
    return f"{requester} (switchover/{name})"


class _quiet:
    """Status writes that may be lost to a concurrent change or a slow etcd: the next pass
    sees the object as it is."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, ops.Lost | EtcdError)


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}
