"""The global control state of a running topology: the first active region at `haplane up`, a
planned switch with `haplane failover --to`, and what `haplane status` shows.

Layer: run (`haplane.local`). Finds the global control etcd from the topology and the state
directory's port registry; the records themselves are `haplane.store.GlobalState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import time
from dataclasses import dataclass, field

from haplane.store import (
    ActiveRegion,
    Cut,
    EtcdClient,
    EtcdError,
    FenceChanged,
    GlobalState,
    RegionFences,
    StaleEpoch,
)
from haplane.store.switchover import (
    SwitchoverRefused,
    planned_switchover,
    record_unplanned_cut,
)
from haplane.topology import Topology
from haplane.topology.model import GLOBAL_SCOPE

from .plans import member_addresses
from .ports import PortRegistry
from .security import operator_etcd_tls, platform_tls
from .state_dir import StateDir


class FailoverError(Exception):
    """A switch that was refused or could not be made; the message says why and what to do."""


def control_endpoints(topology: Topology, ports: PortRegistry) -> list[str]:
    view = next(c for c in topology.etcd_clusters() if c.scope == GLOBAL_SCOPE)
    return [a.client_endpoint for a in member_addresses(view, ports).values()]


def control_client(topology: Topology, state: StateDir, timeout: float = 2.0) -> EtcdClient:
    """A client of the global control etcd with the operator's certificate; a state dir
    without its PKI raises `MissingCredentials` (the CLI says so) before any dial."""
    tls = platform_tls(state, topology)
    if tls is not None:
        tls.check()
    return EtcdClient(
        control_endpoints(topology, PortRegistry(state.ports_file)),
        timeout=timeout,
        tls=operator_etcd_tls(state, topology),
    )


def region_fences(topology: Topology, state: StateDir, timeout: float = 1.0) -> RegionFences:
    """The fence keys of every region (`haplane.store.fence_key`), one client per region's
    etcd; `close()` them after use."""
    ports = PortRegistry(state.ports_file)
    tls = operator_etcd_tls(state, topology)
    return RegionFences(
        {
            c.scope: EtcdClient(
                [a.client_endpoint for a in member_addresses(c, ports).values()],
                timeout=timeout,
                tls=tls,
            )
            for c in topology.etcd_clusters()
            if c.scope != GLOBAL_SCOPE
        }
    )


def operator() -> str:
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):
        return "operator"


@dataclass
class SwitchResult:
    before: ActiveRegion
    after: ActiveRegion
    planned: bool  # freeze, catch up, switch (no loss); False: a fenced, unplanned switch
    cut: Cut | None = None
    caught_up_seconds: float | None = None
    warnings: list[str] = field(default_factory=list)


def paired(topology: Topology, a: str, b: str) -> bool:
    """Whether the topology replicates between regions `a` and `b` (either way)."""
    return any({r.from_, r.to} == {a, b} for r in topology.spec.global_.replication)


def sync_paired(topology: Topology, a: str, b: str) -> bool:
    """Whether `a` and `b` replicate synchronously (a `Sync` pair, either way)."""
    return any(
        {r.from_, r.to} == {a, b} and r.mode == "Sync" for r in topology.spec.global_.replication
    )


async def switch(
    client: EtcdClient,
    topology: Topology,
    to: str,
    *,
    reason: str,
    fences: RegionFences,
    expected_epoch: int | None = None,
    by: str | None = None,
    unfence: bool = True,
    force: bool = False,
    catch_up_limit: float = 10.0,
) -> SwitchResult:
    """Switch the active region to `to`. Automatic failback is suspended first (`haplane
    failback on` resumes it).

    Planned (the default when the topology replicates between the two regions): freeze the
    old region with a cut marker, wait until `to` applied it, promote `to`, commit the new
    epoch writable, and reverse the stream (`haplane.store.switchover.planned_switchover`):
    nothing acknowledged is lost. If the old region cannot be frozen or `to` does not catch up
    within `catch_up_limit`, nothing is switched and the old region stays writable.

    Unplanned (`force`, or no replication between them): a fenced switch that does not need
    the old region:
    1. one transaction commits epoch + 1 naming `to`, not yet writable: from that moment no
       replica of the old region renews its write permission (it fences at its next read, or
       when its grant runs out if it cannot read);
    2. the old region's fence key goes `active:` -> `frozen:` in one transaction in its etcd
       (when it answers; a dead region is covered by the time fence and frozen when it is back);
    3. wait `grant + margin` (`ActiveRegion.fence_wait`): every old grant has run out, while
       `to`'s replicator keeps copying whatever the old region still serves;
    4. `to`'s fence key becomes `active:<to>@<epoch>` (its replicator stops: what it applied
       is recorded as the cut), then one transaction makes the new epoch writable
       (`unfence=False` leaves 4 to the failover controller, which does it after the same
       wait counted from when it saw the epoch).

    `expected_epoch` guards against a change made since the operator looked (default: the
    epoch read just now)."""
    regions = [s.name for s, _ in topology.regions()]
    if to not in regions:
        raise FailoverError(
            f"{to!r} is not a region of topology {topology.name}; regions: {', '.join(regions)}"
        )
    state = GlobalState(client)
    before = await state.read()
    if before is None:
        raise FailoverError("no active region is recorded: is the topology up (`haplane up`)?")
    if before.region == to:
        raise FailoverError(f"{to} is already the active region (epoch {before.epoch})")
    epoch = before.epoch if expected_epoch is None else expected_epoch
    if epoch != before.epoch:
        raise FailoverError(
            f"refused: the epoch is {before.epoch}, not {epoch}: {before.region} became active "
            f"at {before.since} ({before.reason}); look again with `haplane status`"
        )
    who = by or operator()
    if not force and paired(topology, before.region, to):
        if not before.writable:
            raise FailoverError(
                f"epoch {before.epoch} is not writable yet (a switch is completing): try again "
                "in a moment, or use --force"
            )
        try:
            done = await planned_switchover(
                state,
                fences,
                before,
                to,
                by=who,
                reason=reason,
                catch_up_limit=catch_up_limit,
                sync=sync_paired(topology, before.region, to),
            )
        except SwitchoverRefused as exc:
            raise FailoverError(f"{exc} (--force: an unplanned failover instead)") from exc
        result = SwitchResult(
            before,
            done.record,
            True,
            done.cut,
            done.caught_up_seconds,
            list(done.warnings),
        )
        await fences.freeze_others(done.record, timeout=0.5)  # a third region follows `to`
        await _suspend_failback(state, who, to, result)
        return result
    sync_warning = None
    sync_mode = any(
        r.mode == "Sync" and before.region in (r.from_, r.to)
        for r in topology.spec.global_.replication
    )  # the new epoch's record is written even where none existed yet
    with contextlib.suppress(EtcdError):
        sync = await state.sync.read(timeout=1.0)
        if sync is not None and sync.names(before.epoch, before.region) and sync.standby != to:
            sync_warning = (
                f"{sync.standby} was the synchronous standby of {before.region}, not {to}: "
                f"writes {before.region} acknowledged may be missing in {to}"
                if sync.standby is not None
                else f"no standby was synchronous (sync: none since {sync.since}): writes "
                f"{before.region} acknowledged since may be missing in {to}"
            )
    try:
        after = await state.switch(
            to, expected_epoch=epoch, by=who, reason=reason, sync_mode=sync_mode
        )
    except StaleEpoch as exc:
        raise FailoverError(f"refused: {exc}; look again with `haplane status`") from exc
    committed = time.monotonic()
    result = SwitchResult(before, after, False)
    if sync_warning is not None:
        result.warnings.append(sync_warning)
    # An operator chose where the platform runs: automatic failback waits for `haplane
    # failback on`. Written after the commit (a refused switch suspends nothing); no failback
    # can come first: it waits `failbackAfterMs` from the controller's first sight of the
    # epoch, which is not writable before the fence wait anyway.
    await fences.freeze_others(after, timeout=0.5)
    await _suspend_failback(state, who, to, result)
    if unfence:
        result.after, result.cut = await unfence_after_wait(state, fences, after, committed)
    return result


async def _suspend_failback(state: GlobalState, who: str, to: str, result: SwitchResult) -> None:
    try:
        await state.set_failback(False, by=who, reason=f"operator switchover to {to}")
    except EtcdError:  # the switch stands: say so, and let `haplane failback off` repeat it
        result.warnings.append(
            "automatic failback could not be suspended; run `haplane failback off`"
        )


async def unfence_after_wait(
    state: GlobalState, fences: RegionFences, record: ActiveRegion, committed: float
) -> tuple[ActiveRegion, Cut | None]:
    """Unfence `record`'s epoch once `fence_wait` has passed since `committed` (monotonic):
    make the new region's fence key `active:` (required: without it its replicas could not
    write; its replicator stops there), record the cut, then unfence."""
    await asyncio.sleep(max(0.0, committed + record.fence_wait - time.monotonic()))
    lag: float | None = None
    with contextlib.suppress(EtcdError):
        report = (await state.replication_reports(timeout=1.0)).get(record.region)
        lag = report.lag_answered if report is not None else None
    try:
        # the other regions were stepped down right after the commit (one that did not answer
        # is frozen by the controller's reconcile once it does): not again here, where a
        # partitioned region's timeout would delay the unfence
        await fences[record.region].activate(record.epoch, timeout=2.0)
    except (EtcdError, FenceChanged) as exc:
        raise FailoverError(
            f"epoch {record.epoch} was committed, but region {record.region}'s fence key could "
            f"not be set ({exc}); the failover controller completes the switch once it can"
        ) from exc
    try:
        cut = await record_unplanned_cut(
            state, fences[record.region].client, record, lag_seconds=lag, timeout=2.0
        )
    except EtcdError as exc:  # a partial copy's GC pause must precede any write: not unfenced
        raise FailoverError(
            f"epoch {record.epoch} was committed, but its cut could not be recorded ({exc}); "
            "the failover controller records it and unfences once it can"
        ) from exc
    try:
        return await state.unfence(record.epoch), cut
    except StaleEpoch as exc:
        raise FailoverError(
            f"epoch {record.epoch} was committed but another change followed before it was "
            f"unfenced: {exc}"
        ) from exc
