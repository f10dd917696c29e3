"""The steps of a switch between regions that touch regional etcds' fence keys and replication
records: the cut marker of a planned switchover, the promotion of a standby, the reversal of the
stream, and reading where a promoted region's copy ended (the cut).

Layer: store. Each step is one transaction in one regional etcd, guarded by the exact fence-key
value it expects; the orchestration (which step when, the global commit between them) is the
caller's: `haplane.local.global_control` for `haplane failover`, the gate's failover controller
for an unplanned failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass

from .errors import EtcdError
from .etcd_client import Compare, EtcdClient, KeyValue, Op
from .fence_key import FenceChanged, FenceRead, FenceValue, RegionFence, RegionFences
from .global_state import ActiveRegion, Cut, GlobalState, StaleEpoch
from .replication_keys import APPLIED_KEY, CUT_KEY, AppliedRecord
from .sync_state import SyncRecord


async def read_applied(client: EtcdClient, *, timeout: float | None = None) -> AppliedRecord | None:
    """A region's applied record (None: absent or unreadable as a record)."""
    kv = await client.get(APPLIED_KEY, timeout=timeout)
    if kv is None:
        return None
    try:
        return AppliedRecord.from_kv(kv)
    except EtcdError:
        return None


async def _expect(
    fence: RegionFence,
    expected: FenceValue,
    ops: list[Op],
    *,
    timeout: float | None,
    gets: list[Op] | None = None,
) -> tuple[int, list[list[KeyValue]]]:
    """One transaction: `ops` only if the fence key holds exactly `expected`; (revision, the
    results of `gets`). `FenceChanged` otherwise."""
    extra = gets or []
    r = await fence.client.txn(
        [Compare(fence.key, "value", "=", expected.encode())],
        [*ops, *extra],
        [Op("get", fence.key)],
        timeout=timeout,
    )
    if not r.succeeded:
        now = FenceRead.of(r.results[0][0] if r.results[0] else None)
        raise FenceChanged(
            f"{fence.region}: the fence key is {now.value}, not {expected}: nothing written", now
        )
    return r.revision, list(r.results[len(ops) :])


async def freeze_with_cut_marker(
    fence: RegionFence, epoch: int, *, by: str, timeout: float | None = None
) -> int:
    """Step 1 of a planned switchover, in the old region: `active:<old>@E` -> `frozen:<old>@E`
    and the replicated cut marker, in one transaction; returns its revision. From here no API
    write can commit there, and every write committed before is below the marker."""
    marker = json.dumps({"region": fence.region, "epoch": epoch, "time": time.time(), "by": by})
    revision, _ = await _expect(
        fence,
        FenceValue.active(fence.region, epoch),
        [
            Op("put", fence.key, FenceValue.frozen(fence.region, epoch).encode()),
            Op("put", CUT_KEY, marker.encode()),
        ],
        timeout=timeout,
    )
    return revision


async def thaw(fence: RegionFence, epoch: int, *, timeout: float | None = None) -> None:
    """Undo step 1 of a refused switchover (the global epoch never moved): `frozen:<old>@E`
    back to `active:<old>@E`, only if the key is still exactly that."""
    await _expect(
        fence,
        FenceValue.frozen(fence.region, epoch),
        [Op("put", fence.key, FenceValue.active(fence.region, epoch).encode())],
        timeout=timeout,
    )


async def wait_applied(
    client: EtcdClient,
    source_cluster: int,
    revision: int,
    *,
    limit: float,
    poll: float = 0.02,
) -> AppliedRecord:
    """Wait until a standby's applied record says it applied `source_cluster`'s `revision`;
    `TimeoutError` after `limit` seconds (with the last record seen in its message)."""
    deadline = time.monotonic() + limit
    seen: AppliedRecord | None = None
    while True:
        with contextlib.suppress(EtcdError):
            seen = await read_applied(client, timeout=min(1.0, max(0.1, limit)))
        if (
            seen is not None
            and seen.cluster_id == source_cluster
            and seen.state == "streaming"
            and seen.revision >= revision
        ):
            return seen
        if time.monotonic() >= deadline:
            where = (
                f"it had applied revision {seen.revision} of {seen.source} ({seen.state})"
                if seen is not None
                else "it has no applied record"
            )
            raise TimeoutError(f"not applied within {limit:g}s: {where}")
        await asyncio.sleep(poll)


async def promote(
    fence: RegionFence, source: str, old_epoch: int, new_epoch: int, *, timeout: float | None = None
) -> tuple[int, AppliedRecord | None]:
    """A planned switchover's step 3, in the new region: `standby:<source>@E` ->
    `active:<new>@E+1`, reading the applied record in the same transaction (its replicator can
    write nothing after this). Returns (the revision of the change, the applied record)."""
    revision, gets = await _expect(
        fence,
        FenceValue.standby(source, old_epoch),
        [Op("put", fence.key, FenceValue.active(fence.region, new_epoch).encode())],
        gets=[Op("get", APPLIED_KEY)],
        timeout=timeout,
    )
    kvs = gets[0] if gets else []
    applied = None
    if kvs:
        try:
            applied = AppliedRecord.from_kv(kvs[0])
        except EtcdError:
            applied = None
    return revision, applied


async def follow(
    fence: RegionFence,
    old_epoch: int,
    record: AppliedRecord,
    *,
    timeout: float | None = None,
) -> None:
    """A planned switchover's step 5, in the old region: `frozen:<old>@E` ->
    `standby:<record.source>@<record.epoch>`, and its applied record set to `record` (the new
    region's state at its promotion, which equals this region's at the cut), in one
    transaction: its replicators stream from there, no full copy."""
    await _expect(
        fence,
        FenceValue.frozen(fence.region, old_epoch),
        [
            Op("put", fence.key, FenceValue.standby(record.source, record.epoch).encode()),
            Op("put", APPLIED_KEY, record.to_json()),
        ],
        timeout=timeout,
    )


class SwitchoverRefused(Exception):
    """A planned switchover that switched nothing; the message says why. `thawed`: whether
    the old region was frozen and has been made writable again (False: it never was frozen,
    or thawing failed and the message says so)."""

    def __init__(self, message: str, *, thawed: bool = False):
        super().__init__(message)
        self.thawed = thawed


@dataclass(frozen=True)
class PlannedResult:
    record: ActiveRegion  # the new epoch, writable
    cut: Cut
    marker_revision: int
    caught_up_seconds: float
    reversed: bool  # the old region follows the new one from the cut
    warnings: tuple[str, ...] = ()


async def planned_switchover(
    state: GlobalState,
    fences: RegionFences,
    before: ActiveRegion,
    to: str,
    *,
    by: str,
    reason: str,
    catch_up_limit: float = 10.0,
    timeout: float = 1.0,
    sync: bool = False,
) -> PlannedResult:
    """Freeze, catch up, switch, reverse: a switchover that loses no acknowledged write.

    1. one transaction in the old region: its fence key `frozen:<old>@E` and the cut marker;
    2. wait until `to`'s replicator applied the marker (`catch_up_limit`);
    3. one transaction in `to`: its key `active:<to>@E+1`, comparing `standby:<old>@E`;
    4. commit epoch E+1 naming `to`, writable at once (the old region's data fence is frozen:
       its remaining time-based permission cannot commit anything);
    5. the old region's key `standby:<to>@E+1` and its applied record set to `to`'s state at
       step 3 (equal to its own at the cut): it replicates back from there, no full copy;
       the cut is recorded in the global history.

    A failure in 1-3 switches nothing: the old region's key goes back to `active:<old>@E`
    and `SwitchoverRefused` says why.

    `sync` (the pair replicates synchronously): step 4 commits E+1 fenced, with the sync
    record naming the old region synchronous (it has every write of E+1: none yet); step 5
    runs; then E+1 is unfenced (no wait: the old region is frozen). The reverse stream is set
    up, and the new pair's sync state recorded, before this unfences; were step 5 to take
    longer than the fence wait, the failover controller may unfence first, which is safe
    (writes wait for the old region's confirmation, or degrade). If step 5 fails (the old
    region will be re-seeded), the record is set to `none` before the unfence: a non-strict
    pair then acknowledges without waiting for a region that cannot confirm (a strict one
    answers 504 either way until the re-seeded region is synchronous again). An unfence that
    gets no answer is left to the failover controller and reported in `warnings`."""
    old, epoch = before.region, before.epoch
    old_fence, new_fence = fences[old], fences[to]
    want = FenceValue.standby(old, epoch)
    try:
        now = await new_fence.read(timeout=timeout)
    except EtcdError as exc:
        raise SwitchoverRefused(f"{to}'s etcd does not answer ({exc}): nothing switched") from exc
    if now.value != want:
        raise SwitchoverRefused(
            f"{to} is not a standby of {old} in epoch {epoch} (its fence key is "
            f"{now.value}): it cannot catch up, nothing switched"
        )
    try:
        source_cluster = await old_fence.client.cluster_id(timeout=timeout)
    except EtcdError as exc:
        raise SwitchoverRefused(
            f"the old region {old} does not answer ({exc}): nothing switched"
        ) from exc
    t0 = time.monotonic()

    async def refuse(why: str) -> SwitchoverRefused:
        """Undo the freeze (an exact-value swap back; a key that never froze is fine)."""
        try:
            await thaw(old_fence, epoch, timeout=timeout)
        except FenceChanged as exc:
            if exc.current.value == FenceValue.active(old, epoch):
                return SwitchoverRefused(f"{why}; nothing switched", thawed=True)
            return SwitchoverRefused(
                f"{why}; nothing switched, but {old}'s fence key is {exc.current.value}, not "
                f"frozen:{old}@{epoch}: left as it is"
            )
        except EtcdError as exc:
            return SwitchoverRefused(
                f"{why}; nothing switched, but {old} could not be made writable again ({exc}): "
                f"its fence key stays frozen:{old}@{epoch} until an operator switches "
                "(`haplane failover --to ... --force`)"
            )
        return SwitchoverRefused(f"{why}; nothing switched, {old} is writable again", thawed=True)

    async def unpromote() -> str | None:
        """Undo the promotion: `active:<to>@E+1` back to `standby:<old>@E` (exact value);
        None when done or never promoted, else why not."""
        try:
            await _expect(
                new_fence,
                FenceValue.active(to, epoch + 1),
                [Op("put", new_fence.key, want.encode())],
                timeout=timeout,
            )
        except FenceChanged as exc:
            if exc.current.value != want:
                return f"{to}'s fence key is {exc.current.value}"
        except EtcdError as exc:
            return str(exc)
        return None

    try:
        try:
            marker = await freeze_with_cut_marker(old_fence, epoch, by=by, timeout=timeout)
        except FenceChanged as exc:
            raise SwitchoverRefused(
                f"the old region {old} could not be frozen ({exc}): nothing switched"
            ) from exc
        except EtcdError as exc:  # maybe frozen after all (an answer lost): undo it
            raise await refuse(f"the old region {old}'s freeze got no answer ({exc})") from exc
        try:
            await wait_applied(new_fence.client, source_cluster, marker, limit=catch_up_limit)
        except TimeoutError as exc:
            late = f"{to} did not apply the cut marker (revision {marker}): {exc}"
            raise await refuse(late) from exc
    except asyncio.CancelledError:
        # the caller is going (a controller that lost the lead): the old region must not stay
        # frozen with no switch coming, for nothing activates a frozen key but a switch
        await asyncio.shield(refuse("cancelled while freezing or catching up"))
        raise
    caught_up = time.monotonic() - t0
    try:
        promoted_at, applied = await promote(new_fence, old, epoch, epoch + 1, timeout=timeout)
    except FenceChanged as exc:
        raise await refuse(f"{to} could not be promoted ({exc})") from exc
    except EtcdError as exc:  # maybe promoted: undo that first, or the old region stays frozen
        why = await unpromote()
        if why is not None:
            raise SwitchoverRefused(
                f"{to}'s promotion got no answer ({exc}) and could not be undone ({why}); "
                f"{old} stays frozen: finish with `haplane failover --to {to} --force`"
            ) from exc
        raise await refuse(f"{to}'s promotion got no answer ({exc})") from exc
    reports = {}
    with contextlib.suppress(EtcdError):
        reports = await state.replication_reports(timeout=timeout)
    try:
        record = await state.switch(
            to,
            expected_epoch=epoch,
            by=by,
            reason=reason,
            writable=not sync,
            replication={to: reports[to].as_dict()} if to in reports else None,
            sync_standby=old if sync else None,
            sync_reason=f"planned switchover: {old} follows {to} from the cut",
            sync_mode=sync,
        )
    except (StaleEpoch, EtcdError) as exc:
        lost_answer = await _committed(state, to, epoch + 1, timeout)
        if lost_answer is not None:
            record = lost_answer
        else:  # not committed (or unknowable): undo, the old region writes on
            why = await unpromote()
            if why is not None:
                raise SwitchoverRefused(
                    f"{to} was promoted but epoch {epoch + 1} could not be committed ({exc}), "
                    f"and the promotion could not be undone ({why}); {old} stays frozen: finish "
                    f"with `haplane failover --to {to} --force`"
                ) from exc
            raise await refuse(f"epoch {epoch + 1} could not be committed ({exc})") from exc
    warnings: list[str] = []
    # the cut before the old region follows: a returning region's rejoin must find it (a
    # frozen key under a newer record is its trigger)
    cut = Cut(
        epoch + 1,
        to,
        old,
        applied.revision if applied is not None else marker,
        planned=True,
        lag_seconds=0.0,
    )
    try:
        await state.record_cut(cut, timeout=timeout)
    except EtcdError as exc:
        warnings.append(f"the cut could not be recorded: {exc}")
    reversed_ = False
    try:
        to_cluster = await new_fence.client.cluster_id(timeout=timeout)
        heartbeat = applied.heartbeat if applied is not None else None
        await follow(
            old_fence,
            epoch,
            AppliedRecord(to, to_cluster, epoch + 1, promoted_at, "streaming", heartbeat),
            timeout=timeout,
        )
        reversed_ = True
    except (EtcdError, FenceChanged) as exc:
        warnings.append(
            f"{old} could not be set to follow {to} from the cut ({exc}); it is re-seeded "
            "when it rejoins"
        )
    if sync and not reversed_:
        try:
            named = await state.sync.read(timeout=timeout)
            if named is not None and named.names(record.epoch, to) and named.standby == old:
                done, _ = await state.sync.swap(
                    named,
                    SyncRecord.none(record.epoch, to, by=by, reason=f"{old} could not follow {to}"),
                    timeout=timeout,
                )
                if not done:
                    warnings.append(f"the sync record changed before it could say none: {old}")
        except EtcdError as exc:
            warnings.append(f"the sync record still names {old} synchronous ({exc})")
    if sync and not record.writable:
        try:
            record = await state.unfence(record.epoch)
        except (StaleEpoch, EtcdError) as exc:
            warnings.append(
                f"epoch {record.epoch} could not be unfenced ({exc}): the failover controller "
                "unfences it after its fence wait"
            )
    return PlannedResult(record, cut, marker, caught_up, reversed_, tuple(warnings))


async def _committed(
    state: GlobalState, region: str, epoch: int, timeout: float
) -> ActiveRegion | None:
    """The record, if it says `region` in `epoch` (a commit whose answer was lost); None when
    it does not, or cannot be read in a few tries."""
    for _ in range(3):
        try:
            now = await state.read(timeout=timeout)
        except EtcdError:
            await asyncio.sleep(0.2)
            continue
        if now is not None and now.epoch == epoch and now.region == region:
            return now
        return None
    return None


async def record_unplanned_cut(
    state: GlobalState,
    client: EtcdClient,
    record: ActiveRegion,
    *,
    lag_seconds: float | None,
    timeout: float | None = None,
) -> Cut:
    """After an unplanned promotion made `record.region`'s key active (its replicator can
    apply nothing more): record how far its copy of the old region reached. A region promoted
    in the middle of a resync (only an operator's `--force` does that) has a partial copy: its
    garbage collector is paused until an operator resumes it (`haplane gc resume`)."""
    applied = await read_applied(client, timeout=timeout)
    cut = Cut(
        record.epoch,
        record.region,
        applied.source if applied is not None else record.previous,
        applied.revision if applied is not None else 0,
        planned=False,
        lag_seconds=lag_seconds,
        partial=applied is not None and applied.state == "resyncing",
        synchronous=bool(record.synchronous),
    )
    await state.record_cut(cut, timeout=timeout)
    if applied is not None and applied.state == "resyncing":
        await state.pause_gc(
            record.region,
            epoch=record.epoch,
            reason=f"promoted during a resync from {applied.source}: its copy is incomplete",
            timeout=timeout,
        )
    return cut
