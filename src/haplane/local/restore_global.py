"""The restore of the global control etcd from a snapshot (`haplane restore global`).

Layer: run (`haplane.local`). Like a region's restore (`snapshots.restore_region`), through
the supervisor's control socket and the members' data dirs; the records it rewrites are
`haplane.store` (`GlobalState`, the fence keys, the ops objects).

The global control etcd holds who is active under which epoch. A snapshot of it is older
than the platform: epochs have been committed since, and every region's fence key names one.
Served as it is, it would hand gates and API replicas an epoch that went back. So the
snapshot is never served as it is:

1. the snapshot is verified (topology, scope `global`, sha256, etcd reads it), and every
   region's fence key is read: each must answer (one that does not may hold the highest
   epoch); a control etcd that still answers gives its epoch and grant too (a switch in
   progress there is refused);
2. the control etcd's members are stopped: from then on no epoch can be committed. After the
   fence wait (no grant of an older epoch can still run), the fence keys are read again:
   whoever committed an epoch before the stop stepped the other regions' keys down to it at
   once, so they name it;
3. the snapshot is restored into a one-member etcd of its own beside the topology (TLS, a
   temporary directory), where the record is rewritten: epoch = max(every epoch in the
   snapshot's history and records, every fence key's, the live record's) + 1, fenced,
   naming the region the fence keys show active last (`active:` at the highest epoch, else
   `frozen:` there, else the source the standbys follow); the sync record of the new epoch
   is `none`; replication reports (stale) are dropped; operations not finished in the
   snapshot are marked Failed (whether they ran since is unknown: an approved switchover must
   not run twice). That cluster's snapshot is the one restored;
4. the members' data dirs are swapped for ones restored from the rewritten snapshot under a
   new cluster token (a new cluster id: watches from before get `EtcdClusterReplaced` and
   relist), and the members started: the first record anyone reads is the new epoch's;
5. the region's fence key moves to the new epoch and the epoch is unfenced, the other regions
   stepped down to it (a region promoted from standby gets its cut recorded, as `haplane
   failover` does; the failover controller would do the same).

A failure before step 4 starts the old members again as they were. From step 4 on nothing
is rolled back (a member may have served the new epoch, which the old data would take back):
the error names the old data dirs, kept beside the new ones.

Left as they were in the snapshot (said in the report's warnings): approval policies, the
failback setting, GC pauses, cuts and divergence records, and operations created since.
A committer that died between committing an epoch and stepping the other regions down leaves
an epoch only the lost control etcd knew; the restored one may reuse its number.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from haplane import __version__
from haplane.store import (
    ActiveRegion,
    EtcdClient,
    EtcdError,
    GlobalState,
    RegionFences,
    SyncRecord,
    etcd_member_name,
)
from haplane.store.etcd_client import Op, prefix_end
from haplane.store.fence_key import FenceValue
from haplane.store.global_state import DEFAULT_PREFIX
from haplane.store.operations import PLURALS, TERMINAL, Lost, list_objects, now_rfc3339
from haplane.store.operations import update_status as update_op_status
from haplane.store.snapshot import (
    DirectoryStore,
    RestoreMember,
    SnapshotError,
    SnapshotMeta,
    restore_data_dirs,
    take,
    verify,
)
from haplane.topology import Topology
from haplane.topology.model import GLOBAL_SCOPE

from .control_client import ControlClient, ControlError
from .etcd_cluster import EtcdCluster
from .gate_plans import TopologyPlan, plan_of
from .global_control import operator, region_fences, unfence_after_wait
from .plans import ClusterPlan
from .platform_events import post_safely
from .snapshots import (
    DataDirSwap,
    RestoreRefused,
    await_ready,
    cluster_of,
    identity,
    roll_back,
    snapshot_store,
    stop_for_sure,
)
from .state_dir import OperationLocked, StateDir


@dataclass
class GlobalRestoreReport:
    snapshot: str
    revision: int
    region: str = ""  # the region the restored record names active
    epoch: int = 0  # the restored record's epoch
    snapshot_epoch: int = 0  # the highest epoch the snapshot knew
    fence_epochs: dict[str, str] = field(default_factory=dict)  # region -> fence key as read
    failed_operations: list[str] = field(default_factory=list)
    new_cluster_id: str = ""
    unfenced: bool = False
    seconds: float = 0.0  # the whole restore, from its first check to the epoch unfenced
    outage_seconds: float = 0.0  # from the members stopped to the restored ones answering
    kept: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    steps: list[tuple[float, str]] = field(default_factory=list)


def choose_region(fences: dict[str, FenceValue | None], fallback: str) -> tuple[str, int]:
    """(the region to name active, the highest epoch any key names) from every region's fence
    key: the region whose key says `active:` at the highest epoch, else `frozen:` there (it
    was active in that epoch and wrote nothing since it froze), else the region the standbys
    of that epoch follow; `fallback` when no key names anything."""
    values = [v for v in fences.values() if v is not None]
    if not values:
        return fallback, 0
    top = max(v.epoch for v in values)
    at_top = [v for v in values if v.epoch == top]
    for state in ("active", "frozen", "standby"):
        named = sorted({v.region for v in at_top if v.state == state})
        if named:
            return named[0], top
    return fallback, top  # pragma: no cover (every state is one of the three)


async def snapshot_epochs(client: EtcdClient, prefix: bytes = DEFAULT_PREFIX) -> int:
    """The highest epoch a control etcd's records name: the active record, the history, the
    sync record, the cuts (0: none)."""
    state = GlobalState(client, prefix)
    epochs = [0]
    record = await state.read(timeout=5.0)
    if record is not None:
        epochs.append(record.epoch)
    epochs += [r.epoch for r in await state.history(1)]  # keys sort by epoch
    sync = await state.sync.read(timeout=5.0)
    if sync is not None:
        epochs.append(sync.epoch)
    epochs += list((await state.cuts(timeout=5.0)).keys())
    return max(epochs)


async def restore_global(
    topology: Topology,
    state: StateDir,
    snapshot_id: str,
    progress: Callable[[str], None] = lambda _: None,
    ready_timeout: float = 60.0,
    check_only: bool = False,
) -> GlobalRestoreReport:
    """`check_only`: every check (including the rewrite in a cluster of its own), nothing of
    the topology changed."""
    plan = plan_of(topology, state)
    try:
        cluster = cluster_of(plan, GLOBAL_SCOPE)
        meta = await asyncio.to_thread(
            verify, snapshot_store(state), snapshot_id, topology=identity(state),
            scope=GLOBAL_SCOPE,
        )  # fmt: skip
    except SnapshotError as exc:
        raise RestoreRefused(str(exc)) from None
    ctl = ControlClient(state.socket, timeout=30.0)
    try:
        await ctl.snapshot()
    except ControlError as exc:
        raise RestoreRefused(
            f"the supervisor does not answer ({exc}): is the topology up?"
        ) from None
    try:
        with state.operation_lock("restore of the global control etcd"):
            report = await _restore(
                topology, state, plan, cluster, meta, ctl, progress, ready_timeout, check_only
            )
    except OperationLocked as exc:
        raise RestoreRefused(str(exc)) from None
    if not check_only:  # (3 tries: while the epoch is still fenced, the API refuses it)
        await post_safely(
            topology, state, type_="Normal" if report.unfenced else "Warning",
            reason="ControlEtcdRestored", kind="EtcdCluster", name="global",
            message=f"the global control etcd restored from snapshot {meta.id} in "
            f"{report.seconds} s: {report.region} active under epoch {report.epoch}"
            + ("" if report.unfenced else " (still fenced)"),
        )  # fmt: skip
    return report


async def _read_fences(fences: RegionFences) -> dict[str, FenceValue | None]:
    """Every region's key; RestoreRefused naming the regions whose etcd does not answer."""
    reads = await fences.read_all(timeout=2.0)
    silent = sorted(r for r, read in reads.items() if read is None)
    if silent:
        raise RestoreRefused(
            f"the etcd of {', '.join(silent)} does not answer: its fence key may name a later "
            "epoch than any other, and a restored record must start above every one. Bring "
            f"{'it' if len(silent) == 1 else 'them'} back first (`haplane status`)"
        )
    return {r: read.value for r, read in reads.items() if read is not None}


async def _live_record(cluster: ClusterPlan) -> ActiveRegion | None:
    """The record the control etcd serves now, if it answers (it may have lost quorum: that
    is what a restore is for)."""
    with contextlib.suppress(EtcdError, TimeoutError):
        async with cluster.client(timeout=1.0) as client:
            return await GlobalState(client).read(timeout=1.0)
    return None


async def _restore(
    topology: Topology,
    state: StateDir,
    plan: TopologyPlan,
    cluster: ClusterPlan,
    meta: SnapshotMeta,
    ctl: ControlClient,
    progress: Callable[[str], None],
    ready_timeout: float,
    check_only: bool,
) -> GlobalRestoreReport:
    report = GlobalRestoreReport(meta.id, meta.revision)
    t0 = time.monotonic()

    def step(text: str) -> None:
        report.steps.append((round(time.monotonic() - t0, 3), text))
        progress(text)

    fences = region_fences(topology, state, timeout=2.0)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = state.root / "restore" / f"global-{stamp}"
    try:
        live = await _live_record(cluster)
        if live is not None and not live.writable:
            raise RestoreRefused(
                f"epoch {live.epoch} ({live.region}) is being switched to (not writable yet): "
                "wait until the switch completes (`haplane status`), then restore"
            )
        keys = await _read_fences(fences)
        step(
            "fence keys: "
            + ", ".join(f"{r} {v or '(none)'}" for r, v in sorted(keys.items()))
            + (f"; the control etcd serves epoch {live.epoch}" if live else
               "; the control etcd does not answer")
        )  # fmt: skip
        if check_only:
            await _rewrite(topology, state, meta, keys, live, work, report, step)
            step("every check passed: the global control etcd may be restored")
            return report
        dirs = DataDirSwap(state, cluster, stamp)
        stopped = await _stop_members(ctl, dirs, step)
        stopped_at = time.monotonic()
        try:
            # Nothing commits an epoch any more. Whatever was committed before the stop has
            # stepped the regions' keys down by now (committers do at once, before their fence
            # wait): they are read again, and the record written from what they say. And no
            # grant of an older epoch outlives the wait.
            await asyncio.sleep(_fence_wait(topology, live))
            keys = await _read_fences(fences)
            rewritten = await _rewrite(topology, state, meta, keys, live, work, report, step)
            token = f"haplane-{state.root.name}-global-restore-{stamp}"
            await asyncio.to_thread(
                dirs.stage, DirectoryStore(work / "rewritten").path(rewritten.id), token
            )
            step(f"restored it into {len(dirs.members)} new data dirs (token {token})")
        except BaseException as exc:
            # no member has served the new record: the old ones come back as they were
            step(f"failed ({exc}): starting the old members again")
            await roll_back(ctl, dirs, stopped, step)
            dirs.clean()
            if isinstance(exc, SnapshotError):
                raise RestoreRefused(f"{meta.id} could not be restored: {exc}") from None
            raise
        try:
            await _swap(cluster, dirs, ctl, report, step, ready_timeout)
        except Exception as exc:
            if not report.kept:  # not swapped (put back as they were)
                raise
            raise SnapshotError(
                f"{exc}; the old data dirs are kept in {', '.join(report.kept)}"
            ) from exc
        report.outage_seconds = round(time.monotonic() - stopped_at, 3)
        await _complete(cluster, fences, keys, report, step, stopped_at)
        report.seconds = round(time.monotonic() - t0, 3)
        return report
    finally:
        await fences.close()
        shutil.rmtree(work, ignore_errors=True)


def _fence_wait(topology: Topology, live: ActiveRegion | None) -> float:
    """The longest a grant of the epoch before can last (grant + margin, seconds)."""
    f = topology.spec.global_.failover
    grant = max(f.grant_ms, live.grant_ms if live else 0)
    margin = max(f.safety_margin_ms, live.margin_ms if live else 0)
    return (grant + margin) / 1000


async def _stop_members(
    ctl: ControlClient, dirs: DataDirSwap, step: Callable[[str], None]
) -> list[str]:
    stopped: list[str] = []
    try:
        for name in dirs.names:
            await stop_for_sure(ctl, name)
            stopped.append(name)
    except BaseException:
        await roll_back(ctl, dirs, stopped, step)
        raise
    step(f"stopped {', '.join(dirs.names)}: no epoch can be committed")
    return stopped


async def _rewrite(
    topology: Topology,
    state: StateDir,
    meta: SnapshotMeta,
    keys: dict[str, FenceValue | None],
    live: ActiveRegion | None,
    work: Path,
    report: GlobalRestoreReport,
    step: Callable[[str], None],
) -> SnapshotMeta:
    """The snapshot restored into a one-member cluster of its own, its records rewritten for
    a new epoch above every one known, and snapshotted again (the snapshot that is
    restored: no member of the topology ever serves the old record)."""
    aside = EtcdCluster(work / "cluster", size=1, scope="global-restore", tls=True)
    member = aside.view.members[0]
    try:
        await asyncio.to_thread(
            restore_data_dirs,
            snapshot_store(state).path(meta.id),
            [
                RestoreMember(
                    etcd_member_name(member),
                    aside.addresses[member.qualified_name].peer_url,
                    work / "cluster" / "data" / member.name,
                )
            ],
            f"haplane-global-restore-{work.name}",
        )
        await aside.start(timeout=60.0)
        async with aside.client(timeout=5.0) as client:
            g = GlobalState(client)
            old = await g.read(timeout=5.0)
            report.snapshot_epoch = await snapshot_epochs(client)
            report.fence_epochs = {r: str(v) if v else "" for r, v in sorted(keys.items())}
            fallback = old.region if old is not None else topology.region_priority()[0]
            region, fence_top = choose_region(keys, fallback)
            epoch = max(report.snapshot_epoch, fence_top, live.epoch if live else 0) + 1
            report.region, report.epoch = region, epoch
            failover = topology.spec.global_.failover
            record = ActiveRegion(
                region,
                epoch,
                now_rfc3339(),
                operator(),
                f"the global control etcd restored from snapshot {meta.id} (taken "
                f"{meta.taken_at}, epoch {report.snapshot_epoch}); above every epoch known",
                previous=live.region if live else old.region if old else None,
                writable=False,
                grant_ms=max(
                    failover.grant_ms, old.grant_ms if old else 0, live.grant_ms if live else 0
                ),
                margin_ms=max(
                    failover.safety_margin_ms,
                    old.margin_ms if old else 0,
                    live.margin_ms if live else 0,
                ),
            )
            sync = SyncRecord.none(
                epoch, region, by=record.by, reason="restored from a snapshot: none synchronous yet"
            )
            reports = DEFAULT_PREFIX + b"replication/"
            await client.txn(
                [],
                [
                    Op("put", g.active_key, record.to_json()),
                    Op("put", g.history_prefix + f"{epoch:012d}".encode(), record.to_json()),
                    Op("put", g.sync.key, sync.to_json()),
                    Op("delete", reports, range_end=prefix_end(reports)),
                ],
                timeout=5.0,
            )
            report.failed_operations = await _fail_unfinished(client, meta)
            report.warnings.append(
                f"as of {meta.taken_at} (the snapshot): approval policies, the failback "
                "setting, GC pauses, cuts and divergence records; operations created since "
                "are gone"
            )
            step(
                f"rewritten beside the topology: {region} active under epoch {epoch} (fenced; "
                f"the snapshot knew epoch {report.snapshot_epoch}, the fence keys {fence_top}"
                + (f", the live record {live.epoch}" if live else "")
                + ")"
                + (
                    f"; unfinished operations marked Failed: {', '.join(report.failed_operations)}"
                    if report.failed_operations
                    else ""
                )
            )
            return await take(
                client,
                DirectoryStore(work / "rewritten"),
                scope=GLOBAL_SCOPE,
                topology=meta.topology,
                epoch=epoch,
                haplane_version=__version__,
            )
    except (SnapshotError, EtcdError, TimeoutError) as exc:
        raise RestoreRefused(f"{meta.id} could not be rewritten for a new epoch: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await aside.stop()


async def _fail_unfinished(client: EtcdClient, meta: SnapshotMeta) -> list[str]:
    """Operations the snapshot holds unfinished are marked Failed: whether they ran after it
    was taken is unknown (an approved switchover run twice would move the platform)."""
    failed = []
    for plural in PLURALS:
        for kv, obj in await list_objects(client, DEFAULT_PREFIX, plural, timeout=5.0):
            status = obj.get("status")
            if isinstance(status, dict) and status.get("phase") in TERMINAL:
                continue

            def change(s: dict[str, object]) -> None:
                s["phase"] = "Failed"
                s["finishedAt"] = now_rfc3339()
                s["message"] = (
                    f"the global control etcd was restored from snapshot {meta.id}, taken "
                    f"{meta.taken_at} while this operation was unfinished: what became of it "
                    "since is unknown. Create it again if it is still wanted"
                )

            with contextlib.suppress(Lost):
                await update_op_status(client, kv, change, timeout=5.0)
                failed.append(f"{plural}/{obj.get('metadata', {}).get('name')}")
    return failed


async def _swap(
    cluster: ClusterPlan,
    dirs: DataDirSwap,
    ctl: ControlClient,
    report: GlobalRestoreReport,
    step: Callable[[str], None],
    ready_timeout: float,
) -> None:
    """The restored data dirs in place and the members started on them. From the first start
    on, nothing is rolled back: a member may have served the new epoch, and the old data
    would take it back. A failure says where the old dirs are."""
    try:
        dirs.swap()
    except OSError as exc:
        step(f"failed ({exc}): putting the old data dirs back")
        await roll_back(ctl, dirs, dirs.names, step)
        dirs.clean()
        raise
    dirs.clean()
    report.kept = dirs.kept_dirs
    for name in dirs.names:
        await ctl.fault("restart", name)
    async with cluster.client(timeout=2.0) as client:
        await await_ready(client, cluster.endpoints, ready_timeout)
        report.new_cluster_id = f"{await client.cluster_id():016x}"
        served = await GlobalState(client).read(timeout=5.0)
    if served is None or served.epoch != report.epoch:
        raise SnapshotError(
            f"the restored control etcd serves epoch {served.epoch if served else None}, not "
            f"{report.epoch}"
        )
    step(f"the control etcd is up as cluster {report.new_cluster_id}, epoch {report.epoch}")


async def _complete(
    cluster: ClusterPlan,
    fences: RegionFences,
    keys: dict[str, FenceValue | None],
    report: GlobalRestoreReport,
    step: Callable[[str], None],
    stopped_at: float,
) -> None:
    """The new epoch's region made writable once the record's fence wait has passed since the
    old members stopped (its grant may be the snapshot's, longer than the one waited before
    the rewrite), the other regions stepped down to it. A region that was already the active one
    carries on its own history: no cut. One promoted from standby (the fence keys said a switch
    had begun) gets its cut recorded, as `haplane failover` does. A failure leaves the epoch
    fenced for the failover controller to complete, and says so."""
    async with cluster.client(timeout=2.0) as client:
        g = GlobalState(client)
        try:
            record = await g.read(timeout=2.0)
            if record is None or record.epoch != report.epoch:
                report.warnings.append(
                    f"the record changed after the restore (now epoch "
                    f"{record.epoch if record else None}): not unfenced here"
                )
                return
            await fences.freeze_others(record, timeout=1.0)
            await asyncio.sleep(max(0.0, stopped_at + record.fence_wait - time.monotonic()))
            own = keys.get(record.region)
            if own is not None and own.region == record.region and own.state != "standby":
                await fences[record.region].activate(record.epoch, timeout=2.0)
                after = await g.unfence(record.epoch)
            else:
                after, _ = await unfence_after_wait(g, fences, record, stopped_at)
            report.unfenced = after.writable
            step(f"epoch {after.epoch} unfenced: {after.region} takes writes")
        except Exception as exc:  # the restore stands; the controller completes the epoch
            report.warnings.append(f"not unfenced here: {exc}")
            step(f"not unfenced here ({exc}); the failover controller does it once it can")
