"""Snapshots of a running topology's etcd clusters, and the restore of a region from one
(`haplane snapshot ...`, `haplane restore region`).

Layer: run (`haplane.local`). Finds the clusters, their TLS and the state dir's snapshot
directory (`STATE/snapshots/`); the snapshots themselves are `haplane.store.snapshot`. A
restore stops and starts the region's processes through the supervisor's control socket, as
`haplane fault` does, and swaps their data dirs.

The topology's identity (`STATE/identity`, made once) is written into every snapshot: a
snapshot of another topology is refused.

Restoring region R from snapshot S, each step checked before the next; nothing is changed
before every check has passed:
1. S is verified (description, topology, scope R, sha256, etcd's own hash, etcd reads it);
2. R is not the active region (the global record says so, read now; unreadable: refused);
3. every member's new data dir is made by `etcdctl snapshot restore`, beside the old one,
   under a new cluster token: R comes back as a new etcd cluster (a new cluster id, so a new
   region tag in every resourceVersion: versions handed out before are refused with 410 or
   409, never served for other data);
4. R's replicators, API replicas and members are stopped (in that order), the data dirs
   swapped (the old ones kept as `NAME.before-restore-STAMP`), the members started, R's fence
   key set from the global record, then the replicas and replicators started again: the
   replicators carry on from the applied record the snapshot holds, so R catches up.
A failure after step 4 began puts the old data dirs back and starts everything again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import psutil

from haplane import __version__
from haplane.store import (
    FENCE_KEY,
    RESTORED_KEY,
    ActiveRegion,
    EtcdClient,
    EtcdError,
    FenceValue,
    GlobalState,
    ReplicationReport,
    RestoredMarker,
    SyncRecord,
    etcd_member_name,
)
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
from .gate_plans import TopologyPlan, plan_of
from .plans import ClusterPlan, global_plan
from .platform_events import post_safely
from .state_dir import OperationLocked, StateDir
from .supervisor import cluster_ready

log = logging.getLogger("haplane.local.snapshots")


def identity(state: StateDir) -> str:
    """This topology's identity, made on first use and kept in `STATE/identity`."""
    path = state.root / "identity"
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text().strip()
        if text:
            return text
    state.root.mkdir(parents=True, exist_ok=True)
    made = f"haplane-{uuid.uuid4()}"
    tmp = path.with_suffix(".part")
    tmp.write_text(made + "\n")
    os.replace(tmp, path)
    return made


def snapshot_store(state: StateDir) -> DirectoryStore:
    root = state.root / "snapshots"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return DirectoryStore(root)


def cluster_of(plan: TopologyPlan, scope: str) -> ClusterPlan:
    for c in plan.clusters:
        if c.view.scope == scope:
            return c
    known = ", ".join(sorted(c.view.scope for c in plan.clusters))
    raise SnapshotError(f"no etcd cluster {scope!r} in this topology (known: {known})")


async def _epoch(plan: TopologyPlan) -> int | None:
    try:
        async with global_plan(plan.clusters).client(timeout=2.0) as control:
            record = await GlobalState(control).read()
    except EtcdError:
        return None
    return record.epoch if record is not None else None


async def _fence_of(client: EtcdClient) -> str:
    with contextlib.suppress(EtcdError):
        kv = await client.get(FENCE_KEY, timeout=2.0)
        return kv.value.decode("utf-8", "replace") if kv is not None else ""
    return ""


async def save(
    topology: Topology, state: StateDir, scope: str, *, scheduled: bool = False
) -> SnapshotMeta:
    """A snapshot of one cluster (a region, or "global"), kept in `STATE/snapshots/`; a
    region's with its fence key as it was (read before and after the stream: "" if it
    changed meanwhile, or could not be read)."""
    plan = plan_of(topology, state)
    cluster = cluster_of(plan, scope)
    async with cluster.client(timeout=2.0) as client:
        before = await _fence_of(client) if scope != GLOBAL_SCOPE else ""
        meta = await take(
            client,
            snapshot_store(state),
            scope=scope,
            topology=identity(state),
            epoch=await _epoch(plan),
            haplane_version=__version__,
            scheduled=scheduled,
            fence=before,
        )
        if scope != GLOBAL_SCOPE and await _fence_of(client) != before:
            meta = replace(meta, fence="")
            snapshot_store(state).rewrite(meta)
        return meta


@dataclass
class RestoreReport:
    region: str
    snapshot: str
    revision: int
    old_cluster_id: str = ""
    new_cluster_id: str = ""
    seconds: float = 0.0  # from the first stop to every process started again
    catch_up_to: int = 0  # the source revision the region must apply before it counts whole
    caught_up: bool = False  # whether it did before its replicas were started
    kept: list[str] = field(default_factory=list)  # the data dirs as they were
    steps: list[tuple[float, str]] = field(default_factory=list)


class RestoreRefused(Exception):
    """Refused before anything was changed; the message says why and what to do."""


CATCH_UP_WAIT = 300.0  # seconds the restored region's replicas wait for its replicators


async def _check_not_needed(
    control: EtcdClient, region: str, meta: SnapshotMeta
) -> tuple[ActiveRegion, SyncRecord | None]:
    """The global facts a restore of `region` needs, re-read at each step: another region is
    active (known), the epoch has not gone back, and `region` is not the synchronous standby
    (it would go back to the snapshot while the sync record says it has every acknowledged
    write)."""
    record = await GlobalState(control).read(timeout=2.0)
    if record is None:
        raise RestoreRefused("no active region is recorded: is the topology up?")
    if record.region == region:
        raise RestoreRefused(
            f"{region} is the active region (epoch {record.epoch}): restoring it would take "
            f"its data away from clients. Switch over first (`haplane failover --to OTHER`), "
            f"then restore {region} as a standby"
        )
    if meta.epoch is not None and meta.epoch > record.epoch:
        raise RestoreRefused(
            f"snapshot {meta.id} is of epoch {meta.epoch}, later than the current {record.epoch}: "
            "it belongs to another incarnation of this state dir"
        )
    sync = await GlobalState(control).sync.read(timeout=2.0)
    if sync is not None and sync.epoch == record.epoch and region in (sync.standby, sync.pending):
        raise RestoreRefused(
            f"{region} is the synchronous standby of {record.region} (epoch {record.epoch}): "
            "it holds writes no other region has. Wait until the sync record no longer names it "
            "(`haplane status`; stopping its replicators makes the active region degrade to "
            "`sync: none` at its next write), then restore"
        )
    return record, sync


async def restore_region(
    topology: Topology,
    state: StateDir,
    region: str,
    snapshot_id: str,
    progress: Callable[[str], None] = lambda _: None,
    ready_timeout: float = 60.0,
    catch_up_wait: float = CATCH_UP_WAIT,
    check_only: bool = False,
) -> RestoreReport:
    """`check_only`: every check, nothing changed (the report's steps say what passed)."""
    if region == GLOBAL_SCOPE:
        raise RestoreRefused("the global control etcd is restored with `haplane restore global`")
    plan = plan_of(topology, state)
    try:
        cluster = cluster_of(plan, region)
        meta = await asyncio.to_thread(
            verify, snapshot_store(state), snapshot_id, topology=identity(state), scope=region
        )
    except SnapshotError as exc:
        raise RestoreRefused(str(exc)) from None
    if not meta.fence.startswith("standby:"):
        raise RestoreRefused(
            f"snapshot {snapshot_id} was taken while {region}'s fence key said "
            f"{meta.fence or 'nothing known'}: only a snapshot of {region} as a standby is "
            "restored (one of its active days would make it a returning region, whose later "
            "writes no longer exist)"
        )
    try:
        with state.operation_lock(f"restore of {region}"):
            report = await _restore(
                state, plan, cluster, region, meta, progress, ready_timeout, catch_up_wait,
                check_only,
            )  # fmt: skip
    except OperationLocked as exc:
        raise RestoreRefused(str(exc)) from None
    if not check_only:
        await post_safely(
            topology, state, type_="Normal", reason="RegionRestored", kind="Region",
            name=region, message=f"{region} restored from snapshot {snapshot_id} in "
            f"{report.seconds} s: cluster {report.new_cluster_id}, "
            f"{'caught up' if report.caught_up else 'still catching up'}",
        )  # fmt: skip
    return report


async def _restore(
    state: StateDir,
    plan: TopologyPlan,
    cluster: ClusterPlan,
    region: str,
    meta: SnapshotMeta,
    progress: Callable[[str], None],
    ready_timeout: float,
    catch_up_wait: float,
    check_only: bool,
) -> RestoreReport:
    snapshot_id = meta.id
    control = global_plan(plan.clusters).client(timeout=2.0)
    try:
        try:
            record, _ = await _check_not_needed(control, region, meta)
        except EtcdError as exc:
            raise RestoreRefused(
                f"cannot tell which region is active (the global control etcd: {exc}): a "
                "region is restored only when it is known not to be the active one"
            ) from None
        old_id = ""
        async with cluster.client(timeout=2.0) as client:
            now = await _fence_of(client)
            with contextlib.suppress(EtcdError):
                old_id = f"{await client.cluster_id():016x}"
        if now.startswith(("active:", "frozen:")):
            raise RestoreRefused(
                f"{region}'s fence key says {now}: it is a returning region whose writes after "
                "the cut are not saved yet; let it rejoin (its divergence saved) first"
            )
        ctl = ControlClient(state.socket, timeout=30.0)
        try:
            await ctl.snapshot()
        except ControlError as exc:
            raise RestoreRefused(
                f"the supervisor does not answer ({exc}): is the topology up?"
            ) from None
        report = RestoreReport(region, snapshot_id, meta.revision, old_cluster_id=old_id)
        if check_only:
            report.steps.append((0.0, f"every check passed: {region} may be restored"))
            return report
        await _swap(
            state, plan, cluster, meta, record, control, ctl, report, progress, ready_timeout,
            catch_up_wait,
        )  # fmt: skip
        return report
    finally:
        await control.close()


class DataDirSwap:
    """A cluster's data dirs replaced by ones restored from a snapshot file: made beside the
    old ones (`stage`), swapped in (`swap`: the old ones kept as `NAME.before-restore-STAMP`),
    and put back on a failure (`undo`), each rename undone as it was made."""

    def __init__(self, state: StateDir, cluster: ClusterPlan, stamp: str) -> None:
        self.cluster = cluster
        self.members = [(m, state.data_dir(m.qualified_name)) for m in cluster.view.members]
        self.staged = {
            m.qualified_name: d.with_name(f"{d.name}.restore-{stamp}") for m, d in self.members
        }
        self.kept = {
            m.qualified_name: d.with_name(f"{d.name}.before-restore-{stamp}")
            for m, d in self.members
        }
        self.moved_old: list[str] = []  # data dirs moved to `kept`
        self.moved_new: list[str] = []  # staged dirs moved into place

    @property
    def names(self) -> list[str]:
        """The members' qualified names (their processes')."""
        return [m.qualified_name for m, _ in self.members]

    def stage(self, file: Path, token: str) -> None:
        """`etcdctl snapshot restore` of `file` beside every member's data dir, under the
        cluster token `token` (SnapshotError: none is left made)."""
        restore_data_dirs(
            file,
            [
                RestoreMember(
                    etcd_member_name(m),
                    self.cluster.addresses[m.qualified_name].peer_url,
                    self.staged[m.qualified_name],
                )
                for m, _ in self.members
            ],
            token,
        )

    def swap(self) -> None:
        for m, d in self.members:
            q = m.qualified_name
            if d.exists():
                os.replace(d, self.kept[q])
                self.moved_old.append(q)
            os.replace(self.staged[q], d)
            self.moved_new.append(q)

    def undo(self, step: Callable[[str], None]) -> None:
        """What `swap` did, undone; what could not be is said, never hidden."""
        dirs = {m.qualified_name: d for m, d in self.members}
        for q in self.moved_new:
            with contextlib.suppress(OSError):
                os.replace(dirs[q], self.staged[q])
        for q in self.moved_old:
            try:
                os.replace(self.kept[q], dirs[q])
            except OSError as exc:
                step(f"could NOT put back {self.kept[q]}: {exc}")

    def clean(self) -> None:
        for d in self.staged.values():
            shutil.rmtree(d, ignore_errors=True)

    @property
    def kept_dirs(self) -> list[str]:
        return [str(self.kept[q]) for q in self.moved_old]


async def stop_for_sure(ctl: ControlClient, name: str) -> None:
    """Stopped for sure: SIGTERM, then SIGKILL when it still runs (a data dir is swapped
    next: nothing may still write into it)."""
    answer = await ctl.fault("term", name)
    if answer.get("pid") is None and answer.get("state") in ("stopped", "killed"):
        return
    answer = await ctl.fault("kill", name)
    pid = answer.get("pid")
    if pid is not None and psutil.pid_exists(int(pid)):
        raise SnapshotError(f"{name} (pid {pid}) does not stop: nothing was swapped")


async def _swap(
    state: StateDir,
    plan: TopologyPlan,
    cluster: ClusterPlan,
    meta: SnapshotMeta,
    record: ActiveRegion,
    control: EtcdClient,
    ctl: ControlClient,
    report: RestoreReport,
    progress: Callable[[str], None],
    ready_timeout: float,
    catch_up_wait: float,
) -> None:
    region = report.region
    started = time.monotonic()

    def step(text: str) -> None:
        report.steps.append((round(time.monotonic() - started, 3), text))
        progress(text)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dirs = DataDirSwap(state, cluster, stamp)
    token = f"haplane-{state.root.name}-{region}-restore-{stamp}"
    try:
        await asyncio.to_thread(dirs.stage, snapshot_store(state).path(meta.id), token)
    except SnapshotError as exc:
        raise RestoreRefused(f"etcdctl could not restore {meta.id}: {exc}") from None
    step(f"restored {meta.id} into {len(dirs.members)} new data dirs (token {token})")

    writers = [r.qualified_name for r in plan.replicators if r.region == region]
    replicas = [r.qualified_name for r in plan.replicas if r.region == region]
    etcd = dirs.names
    stopped: list[str] = []
    try:
        for name in writers:
            await stop_for_sure(ctl, name)
            stopped.append(name)
        # until its replicators say otherwise, the region counts as a partial copy: never
        # chosen by automatic failover while it goes back to the snapshot and catches up
        await GlobalState(control).report_replication(
            ReplicationReport(
                target=region, source=record.region, state="Resyncing", epoch=record.epoch,
                applied_revision=0, source_revision=0, lag_seconds=None, lag_revisions=None,
                lag_answered=None, source_answered_at=None, leader="haplane restore",
                time=time.time(), partial=True,
            ),
            timeout=2.0,
        )  # fmt: skip
        record, _ = await _check_not_needed(control, region, meta)  # again: it may have moved
        source = cluster_of(plan, record.region)
        async with source.client(timeout=2.0) as src:
            _, report.catch_up_to, _ = await src.range_page(b"\0", b"\0", limit=1)
        step(f"stopped {', '.join(writers)}; {region} reported partial until it applied "
             f"{record.region} up to revision {report.catch_up_to}")  # fmt: skip
        for name in replicas + etcd:
            await stop_for_sure(ctl, name)
            stopped.append(name)
        step(f"stopped {', '.join(replicas + etcd)}")
        dirs.swap()
        step("swapped the data dirs")
        for name in etcd:
            await ctl.fault("restart", name)
        async with cluster.client(timeout=2.0) as client:
            await await_ready(client, cluster.endpoints, ready_timeout)
            report.new_cluster_id = f"{await client.cluster_id():016x}"
            # a standby of the active region, and partial until caught up
            await client.put(
                FENCE_KEY, FenceValue.standby(record.region, record.epoch).encode(), timeout=2.0
            )
            marker = RestoredMarker(record.region, report.catch_up_to, meta.id)
            await client.put(RESTORED_KEY, marker.to_json(), timeout=2.0)
        step(f"{region}'s etcd is up as cluster {report.new_cluster_id}, "
             f"standby:{record.region}@{record.epoch}")  # fmt: skip
        for name in writers:
            await ctl.fault("restart", name)
        report.caught_up = await _await_caught_up(cluster, catch_up_wait)
        step(
            f"{region} caught up with {record.region}"
            if report.caught_up
            else f"{region} still catching up after {catch_up_wait:g} s (it stays partial)"
        )
        for name in replicas:
            await ctl.fault("restart", name)
        step(f"started {', '.join(writers + replicas)}")
    except BaseException:
        step("failed: putting the old data dirs back")
        await roll_back(ctl, dirs, stopped, step)
        raise
    finally:
        dirs.clean()
    report.seconds = round(time.monotonic() - started, 3)
    report.kept = dirs.kept_dirs


async def roll_back(
    ctl: ControlClient, dirs: DataDirSwap, stopped: list[str], step: Callable[[str], None]
) -> None:
    """The members stopped, the data dirs put back, everything stopped started again."""
    for name in dirs.names:
        with contextlib.suppress(ControlError, SnapshotError):
            await stop_for_sure(ctl, name)
    dirs.undo(step)
    for name in stopped:
        try:
            await ctl.fault("restart", name)
        except ControlError as exc:
            step(f"could NOT start {name} again: {exc}")


async def await_ready(client: EtcdClient, endpoints: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await cluster_ready(client, endpoints):
        if time.monotonic() > deadline:
            raise SnapshotError(f"the restored cluster was not ready within {timeout:g} s")
        await asyncio.sleep(0.1)


async def _await_caught_up(cluster: ClusterPlan, wait: float) -> bool:
    """Until the replicators removed the restore marker (applied far enough)."""
    deadline = time.monotonic() + wait
    async with cluster.client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(EtcdError):
                if await client.get(RESTORED_KEY) is None:
                    return True
            await asyncio.sleep(0.2)
    return False


# ---- the schedule ----------------------------------------------------------------------------

RETRY_AFTER = 300.0  # seconds after a failed scheduled snapshot


def next_due(
    newest: dict[str, float | None], every: float, now: float, started: float
) -> dict[str, float]:
    """When each cluster's next snapshot is due (epoch seconds): its newest snapshot's time
    plus `every`; a cluster with none, `every` after the schedule started (a topology just
    started holds nothing the period does not), or at once when it started longer ago."""
    return {
        scope: (taken + every) if taken is not None else max(started + every, now)
        for scope, taken in newest.items()
    }


async def keep_snapshots(
    topology: Topology,
    state: StateDir,
    emit: Callable[[str, dict[str, object]], None],
    clock: Callable[[], float] = time.time,
) -> None:
    """The supervisor's schedule (topology `spec.global.backups.snapshots`): each cluster's
    snapshot when due, then the retention applied to that cluster; a failure is logged as
    an event and tried again RETRY_AFTER later (or a period, if shorter). Runs until
    cancelled."""
    from haplane.store.snapshot import retained

    from .backup_metrics import clear_failure, record_failure

    schedule = topology.spec.global_.backups.snapshots
    every = float(schedule.every_seconds)
    scopes = [c.scope for c in topology.etcd_clusters()]
    started = clock()
    failed: dict[str, float] = {}
    _metrics(topology, state)  # there from the start: what the store already holds
    while True:
        store = snapshot_store(state)
        metas = store.list()
        newest: dict[str, float | None] = {}
        for scope in scopes:
            times = [m.taken.timestamp() for m in metas if m.scope == scope]
            newest[scope] = max(times) if times else None
        due = next_due(newest, every, clock(), started)
        for scope, when in failed.items():  # tried again sooner than a whole period
            due[scope] = max(due[scope], when + min(every, RETRY_AFTER))
        scope = min(due, key=lambda s: due[s])
        wait = due[scope] - clock()
        if wait > 0:
            _metrics(topology, state)  # a snapshot taken by hand counts at once
            await asyncio.sleep(min(wait, 60.0))  # woken often: snapshots taken by hand count
            continue
        try:
            meta = await save(topology, state, scope, scheduled=True)
        except (SnapshotError, EtcdError, OSError) as exc:
            failed[scope] = clock()
            emit("snapshot-failed", {"scope": scope, "error": str(exc)})
            with contextlib.suppress(OSError):
                record_failure(state, f"snapshot/{scope}", failed[scope])
            _metrics(topology, state)
            continue
        failed.pop(scope, None)
        with contextlib.suppress(OSError):
            clear_failure(state, f"snapshot/{scope}")
        emit(
            "snapshot",
            {"scope": scope, "id": meta.id, "bytes": meta.size, "seconds": meta.seconds},
        )
        kept = [m for m in store.list(scope) if m.scheduled]  # never one taken by hand
        keep = retained(kept, schedule.keep_hourly, schedule.keep_daily)
        for m in kept:
            if m.id not in keep:
                store.delete(m.id)
                emit("snapshot-pruned", {"scope": scope, "id": m.id})
        _metrics(topology, state)


def _metrics(topology: Topology, state: StateDir) -> None:
    """STATE/metrics/backups.prom again; a failure to write it only makes it late."""
    from .backup_metrics import write_metrics

    try:
        write_metrics(topology, state)
    except (OSError, SnapshotError) as exc:
        log.warning("backup metrics not written: %s", exc)
