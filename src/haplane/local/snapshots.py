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
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from haplane import __version__
from haplane.store import EtcdClient, EtcdError, GlobalState, RegionFences, etcd_member_name
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
from .state_dir import StateDir
from .supervisor import cluster_ready


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


def _cluster(plan: TopologyPlan, scope: str) -> ClusterPlan:
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


async def save(
    topology: Topology, state: StateDir, scope: str, *, scheduled: bool = False
) -> SnapshotMeta:
    """A snapshot of one cluster (a region, or "global"), kept in `STATE/snapshots/`."""
    plan = plan_of(topology, state)
    cluster = _cluster(plan, scope)
    async with cluster.client(timeout=2.0) as client:
        return await take(
            client,
            snapshot_store(state),
            scope=scope,
            topology=identity(state),
            epoch=await _epoch(plan),
            haplane_version=__version__,
            scheduled=scheduled,
        )


@dataclass
class RestoreReport:
    region: str
    snapshot: str
    revision: int
    old_cluster_id: str = ""
    new_cluster_id: str = ""
    seconds: float = 0.0  # from the first stop to every process started again
    kept: list[str] = field(default_factory=list)  # the data dirs as they were
    steps: list[tuple[float, str]] = field(default_factory=list)


class RestoreRefused(Exception):
    """Refused before anything was changed; the message says why and what to do."""


async def restore_region(
    topology: Topology,
    state: StateDir,
    region: str,
    snapshot_id: str,
    progress: Callable[[str], None] = lambda _: None,
    ready_timeout: float = 60.0,
) -> RestoreReport:
    if region == GLOBAL_SCOPE:
        raise RestoreRefused("the global control etcd is restored with `haplane restore global`")
    plan = plan_of(topology, state)
    try:
        cluster = _cluster(plan, region)
        meta = await asyncio.to_thread(
            verify, snapshot_store(state), snapshot_id, topology=identity(state), scope=region
        )
    except SnapshotError as exc:
        raise RestoreRefused(str(exc)) from None
    try:
        async with global_plan(plan.clusters).client(timeout=2.0) as control:
            record = await GlobalState(control).read()
    except EtcdError as exc:
        raise RestoreRefused(
            f"cannot tell which region is active (the global control etcd: {exc}): a region is "
            "restored only when it is known not to be the active one"
        ) from None
    if record is not None and record.region == region:
        raise RestoreRefused(
            f"{region} is the active region (epoch {record.epoch}): restoring it would take "
            f"its data away from clients. Switch over first (`haplane failover --to OTHER`), "
            f"then restore {region} as a standby"
        )
    ctl = ControlClient(state.socket, timeout=30.0)
    try:
        await ctl.snapshot()
    except ControlError as exc:
        raise RestoreRefused(
            f"the supervisor does not answer ({exc}): is the topology up?"
        ) from None

    report = RestoreReport(region, snapshot_id, meta.revision)
    started = time.monotonic()

    def step(text: str) -> None:
        report.steps.append((round(time.monotonic() - started, 3), text))
        progress(text)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    members = [(m, state.data_dir(m.qualified_name)) for m in cluster.view.members]
    staged = {m.qualified_name: d.with_name(f"{d.name}.restore-{stamp}") for m, d in members}
    kept = {m.qualified_name: d.with_name(f"{d.name}.before-restore-{stamp}") for m, d in members}
    token = f"haplane-{topology.name}-{region}-restore-{stamp}"
    try:
        await asyncio.to_thread(
            restore_data_dirs,
            snapshot_store(state).path(snapshot_id),
            [
                RestoreMember(
                    etcd_member_name(m),
                    cluster.addresses[m.qualified_name].peer_url,
                    staged[m.qualified_name],
                )
                for m, _ in members
            ],
            token,
        )
    except SnapshotError as exc:
        raise RestoreRefused(f"etcdctl could not restore {snapshot_id}: {exc}") from None
    step(f"restored {snapshot_id} into {len(members)} new data dirs (token {token})")
    async with cluster.client(timeout=2.0) as client:
        with contextlib.suppress(EtcdError):
            report.old_cluster_id = f"{await client.cluster_id():016x}"

    writers = [r.qualified_name for r in plan.replicators if r.region == region]
    replicas = [r.qualified_name for r in plan.replicas if r.region == region]
    etcd = [m.qualified_name for m, _ in members]
    stopped: list[str] = []
    swapped: list[str] = []
    try:
        for name in writers + replicas + etcd:
            await _fault(ctl, "term", name)
            stopped.append(name)
        step(f"stopped {', '.join(stopped)}")
        for m, d in members:
            q = m.qualified_name
            if d.exists():
                os.replace(d, kept[q])
            os.replace(staged[q], d)
            swapped.append(q)
        step("swapped the data dirs")
        for name in etcd:
            await _fault(ctl, "restart", name)
        async with cluster.client(timeout=2.0) as client:
            await _await_ready(client, cluster.endpoints, ready_timeout)
            report.new_cluster_id = f"{await client.cluster_id():016x}"
        step(f"{region}'s etcd is up as cluster {report.new_cluster_id}")
        await _reconcile_fence(plan, cluster, region)
        step(f"{region}'s fence key set from the global record")
        for name in replicas + writers:
            await _fault(ctl, "restart", name)
        step(f"started {', '.join(replicas + writers)}")
    except BaseException:
        # put back what was there, and run it again
        for name in etcd:
            with contextlib.suppress(ControlError):
                await _fault(ctl, "term", name)
        for q in swapped:
            d = state.data_dir(q)
            shutil.rmtree(d, ignore_errors=True)
            if kept[q].exists():
                os.replace(kept[q], d)
        for name in etcd + replicas + writers:
            if name in stopped:
                with contextlib.suppress(ControlError):
                    await _fault(ctl, "restart", name)
        raise
    finally:
        for d in staged.values():
            shutil.rmtree(d, ignore_errors=True)
    report.seconds = round(time.monotonic() - started, 3)
    report.kept = [str(kept[q]) for q in swapped if kept[q].exists()]
    return report


async def _fault(ctl: ControlClient, action: str, name: str) -> None:
    try:
        await ctl.fault(action, name)  # type: ignore[arg-type]
    except ControlError as exc:
        if action == "term" and "not running" in str(exc):
            return  # already down
        raise


async def _await_ready(client: EtcdClient, endpoints: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await cluster_ready(client, endpoints):
        if time.monotonic() > deadline:
            raise SnapshotError(f"the restored cluster was not ready within {timeout:g} s")
        await asyncio.sleep(0.1)


async def _reconcile_fence(plan: TopologyPlan, cluster: ClusterPlan, region: str) -> None:
    fences = RegionFences({region: cluster.client(timeout=2.0)})
    try:
        async with global_plan(plan.clusters).client(timeout=2.0) as control:
            record = await GlobalState(control).read()
        await fences.reconcile_all(record)
    finally:
        await fences.close()


# ---- the schedule ----------------------------------------------------------------------------

RETRY_AFTER = 300.0  # seconds after a failed scheduled snapshot


def next_due(
    newest: dict[str, float | None], every: float, now: float, started: float
) -> dict[str, float]:
    """When each cluster's next snapshot is due (epoch seconds): its newest snapshot's time
    plus `every`; a cluster with none, `every` after the schedule started (a topology just
    made holds nothing worth keeping), or at once when it started longer ago."""
    return {
        scope: (taken + every) if taken is not None else max(started + min(every, 60.0), now)
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

    schedule = topology.spec.global_.backups.snapshots
    every = float(schedule.every_seconds)
    scopes = [c.scope for c in topology.etcd_clusters()]
    started = clock()
    failed: dict[str, float] = {}
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
            await asyncio.sleep(min(wait, 60.0))  # woken often: snapshots taken by hand count
            continue
        try:
            meta = await save(topology, state, scope, scheduled=True)
        except (SnapshotError, EtcdError, OSError) as exc:
            failed[scope] = clock()
            emit("snapshot-failed", {"scope": scope, "error": str(exc)})
            continue
        failed.pop(scope, None)
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
