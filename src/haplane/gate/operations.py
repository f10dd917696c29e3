"""The failover controller's hands for operators' requests: approved `Switchover` objects
(`ops.haplane.dev`, stored in the global control etcd) carried out with #9's semantics, their
phases and timings written into their status.

Layer: gate. Runs in the leading failover controller's decide loop (`haplane.gate.controller`),
between its own decisions, so an operator's switch and an automatic one never run at once;
reads and rewrites the objects through `haplane.store.operations` (compare-and-swap on each).

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
  - **forced** otherwise: the new epoch committed unwritable and the others frozen; the
    controller's own unfence follows after the fence wait, and a later pass marks the request
    `Succeeded` once its epoch is writable;
  - either way automatic failback is suspended (an operator chose where the platform runs);
- a `Running` request this controller committed is followed until its epoch is writable; one
  whose runner is gone (a leader change mid-run) is closed as `Failed` after `ABANDONED_AFTER`
  with where the platform stands, so nobody waits on it forever.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from haplane.store import EtcdClient, EtcdError, GlobalState, KeyValue, StaleEpoch
from haplane.store import operations as ops
from haplane.store.switchover import SwitchoverRefused, planned_switchover

if TYPE_CHECKING:
    from .controller import FailoverController

OPS_EVERY = 0.25  # seconds between passes over the requests
ABANDONED_AFTER = 120.0  # a Running request nobody follows is closed after this long
TIMEOUT = 1.0


class Operations:
    def __init__(self, controller: FailoverController) -> None:
        self.ctl = controller
        self._next = 0.0
        self._committed: dict[str, tuple[int, float]] = {}  # name -> (epoch, monotonic commit)

    async def advance(self, state: GlobalState, client: EtcdClient) -> None:
        """One pass, at most every OPS_EVERY seconds."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + OPS_EVERY
        items = await ops.list_objects(client, self.ctl.prefix, "switchovers", timeout=TIMEOUT)
        for kv, obj in items:
            status = obj.get("status") or {}
            phase = status.get("phase")
            if phase == ops.PENDING:
                await self._expire(client, kv, status)
            elif phase == ops.RUNNING:
                await self._follow(state, client, kv, obj)
        approved = [(kv, obj) for kv, obj in items if _phase(obj) == ops.APPROVED]
        if approved:
            await self._run(state, client, *approved[0])

    async def _expire(self, client: EtcdClient, kv: KeyValue, status: dict[str, Any]) -> None:
        at = ops.parse_time(status.get("expiresAt"))
        if at is None or time.time() < at:
            return

        def change(st: dict[str, Any]) -> None:
            st["phase"] = ops.EXPIRED
            st["message"] = f"not approved by {st.get('expiresAt')}: ask again"

        with _quiet():
            await ops.update_status(client, kv, change, timeout=TIMEOUT)

    async def _run(
        self, state: GlobalState, client: EtcdClient, kv: KeyValue, obj: dict[str, Any]
    ) -> None:
        ctl = self.ctl
        name = obj["metadata"]["name"]
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        started = time.monotonic()
        phases: list[dict[str, Any]] = []

        def phase(label: str, **extra: Any) -> dict[str, Any]:
            entry = {
                "name": label,
                "at": ops.now_rfc3339(),
                "seconds": round(time.monotonic() - started, 3),
                **extra,
            }
            phases.append(entry)
            return entry

        phase("Claimed")

        def claim(st: dict[str, Any]) -> None:
            st["phase"] = ops.RUNNING
            st["runBy"] = f"controller:{ctl.settings.gate}"
            st["startedAt"] = ops.now_rfc3339()
            st["phases"] = list(phases)

        try:
            kv, obj = await ops.update_status(client, kv, claim, timeout=TIMEOUT)
        except (ops.Lost, EtcdError):
            return  # someone else acted on it (or will, next pass)
        ctl._log("switchover_claimed", switchover=name, target=spec.get("targetRegion"))

        async def finish(outcome: str, message: str, **fields: Any) -> None:
            def change(st: dict[str, Any]) -> None:
                st["phase"] = outcome
                st["message"] = message
                st["phases"] = list(phases)
                st["finishedAt"] = ops.now_rfc3339()
                st.update(fields)

            nonlocal kv
            try:
                kv, _ = await ops.update_status(client, kv, change, timeout=TIMEOUT)
            except ops.Lost:  # deleted meanwhile (it may not be while Running): say so
                ctl._log("switchover_status_lost", switchover=name)
            ctl._log("switchover_" + outcome.lower(), switchover=name, message=message)

        to = str(spec.get("targetRegion") or "")
        active = await state.read(timeout=TIMEOUT)
        asked = status.get("epochAtRequest")
        regions = set(ctl.settings.region_etcd) or set(ctl.settings.decision.priority)
        if active is None:
            return await finish(ops.FAILED, "no active region is recorded")
        if isinstance(asked, int) and asked != active.epoch:
            return await finish(
                ops.FAILED,
                f"the epoch changed since the request was made and approved (epoch {asked}, now "
                f"{active.epoch}: {active.region}, {active.reason}): nothing switched; look "
                "again and ask again",
            )
        if to == active.region:
            return await finish(ops.FAILED, f"{to} is already the active region")
        if regions and to not in regions:
            return await finish(ops.FAILED, f"{to!r} is not a region of this topology")
        if not active.writable:
            return await finish(
                ops.FAILED, f"epoch {active.epoch} is not writable yet (a switch is completing)"
            )
        by = _by(status, name)
        reason = str(spec.get("reason") or "switchover")
        decision = ctl.settings.decision
        planned = not spec.get("force") and decision.pair(active.region, to)[0]
        if planned and ctl._fences is None:
            return await finish(ops.FAILED, "no regional etcd is configured: cannot freeze")
        async with ctl._fence_writes_paused():
            if planned:
                assert ctl._fences is not None
                try:
                    done = await planned_switchover(
                        state,
                        ctl._fences,
                        active,
                        to,
                        by=by,
                        reason=reason,
                        catch_up_limit=float(spec.get("catchUpTimeoutSeconds", 10)),
                        sync=decision.is_sync_pair(active.region, to),
                    )
                except SwitchoverRefused as exc:
                    phase("Refused")
                    return await finish(ops.FAILED, f"{exc}: nothing switched")
                record = done.record
                ctl._epoch_seen = {record.epoch: time.monotonic()}
                await ctl._freeze_others(record)
                phase("CaughtUp", caughtUpSeconds=round(done.caught_up_seconds, 3))
                phase("Committed", epoch=record.epoch)
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
                    return await finish(ops.FAILED, f"the epoch changed: {exc}; nothing switched")
                committed = time.monotonic()
                ctl._fenced_seen[record.epoch] = committed
                ctl._epoch_seen = {record.epoch: committed}
                phase("Committed", epoch=record.epoch)
                await ctl._freeze_others(record)
        ctl._log(
            "committed",
            action="switchover",
            switchover=name,
            region=record.region,
            epoch=record.epoch,
            previous=active.region,
            reason=reason,
            planned=planned,
        )
        with _quiet():
            await state.set_failback(
                False, by=by, reason=f"switchover {name} to {to}", timeout=TIMEOUT
            )
        result: dict[str, Any] = {
            "fromRegion": active.region,
            "toRegion": to,
            "epoch": record.epoch,
            "planned": bool(planned),
        }
        if planned:
            result["cutRevision"] = done.cut.revision
            result["caughtUpSeconds"] = round(done.caught_up_seconds, 3)
            result["warnings"] = list(done.warnings)
            phase("Writable")
            return await finish(
                ops.SUCCEEDED,
                f"{to} active at epoch {record.epoch}; {active.region} follows it from the "
                f"cut: nothing lost",
                result=result,
            )
        self._committed[name] = (record.epoch, time.monotonic())

        def note(st: dict[str, Any]) -> None:
            st["phases"] = list(phases)
            st["result"] = result
            st["message"] = (
                f"epoch {record.epoch} committed; writable after the fence wait "
                f"({record.fence_wait:.2f}s)"
            )

        with _quiet():
            await ops.update_status(client, kv, note, timeout=TIMEOUT)

    async def _follow(
        self, state: GlobalState, client: EtcdClient, kv: KeyValue, obj: dict[str, Any]
    ) -> None:
        """A forced switchover this controller committed: Succeeded once its epoch is writable
        (Failed when another epoch replaced it first). One nobody follows: closed after a while."""
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        mine = self._committed.get(name)
        if mine is None:
            started = ops.parse_time(status.get("startedAt")) or 0.0
            if time.time() - started < ABANDONED_AFTER:
                return
            active = await state.read(timeout=TIMEOUT)
            where = f"{active.region} at epoch {active.epoch}" if active else "unknown"
            message = (
                f"the controller running it ({status.get('runBy')}) stopped before it finished; "
                f"the platform now runs on {where}"
            )

            def abandon(st: dict[str, Any]) -> None:
                st["phase"] = ops.FAILED
                st["message"] = message
                st["finishedAt"] = ops.now_rfc3339()

            with _quiet():
                await ops.update_status(client, kv, abandon, timeout=TIMEOUT)
            return
        epoch, committed = mine
        active = await state.read(timeout=TIMEOUT)
        if active is None or (active.epoch == epoch and not active.writable):
            return
        del self._committed[name]
        ok = active.epoch == epoch
        seconds = round(time.monotonic() - committed, 3)

        def change(st: dict[str, Any]) -> None:
            phases = st.setdefault("phases", [])
            at_commit = next((p["seconds"] for p in phases if p.get("name") == "Committed"), 0)
            if ok:
                phases.append(
                    {
                        "name": "Writable",
                        "at": ops.now_rfc3339(),
                        "seconds": round(at_commit + seconds, 3),
                        "fenceWaitSeconds": seconds,
                    }
                )
            st["phase"] = ops.SUCCEEDED if ok else ops.FAILED
            st["finishedAt"] = ops.now_rfc3339()
            st["message"] = (
                f"{active.region} writable at epoch {epoch} after a fence wait of {seconds}s"
                if ok
                else f"epoch {epoch} was replaced by {active.epoch} ({active.reason}) before "
                "it became writable"
            )

        with _quiet():
            await ops.update_status(client, kv, change, timeout=TIMEOUT)
        self.ctl._log("switchover_" + ("succeeded" if ok else "failed"), switchover=name)


def _phase(obj: dict[str, Any]) -> Any:
    return (obj.get("status") or {}).get("phase")


def _by(status: dict[str, Any], name: str) -> str:
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
