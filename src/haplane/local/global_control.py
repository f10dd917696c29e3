"""The global control state of a running topology: the first active region at `haplane up`, a
planned switch with `haplane failover --to`, and what `haplane status` shows.

Layer: run (`haplane.local`). Finds the global control etcd from the topology and the state
directory's port registry; the records themselves are `haplane.store.GlobalState`.
"""

from __future__ import annotations

import asyncio
import getpass
import time

from haplane.store import (
    ActiveRegion,
    EtcdClient,
    EtcdError,
    FenceChanged,
    GlobalState,
    RegionFences,
    StaleEpoch,
)
from haplane.topology import Topology
from haplane.topology.model import GLOBAL_SCOPE

from .plans import member_addresses
from .ports import PortRegistry
from .state_dir import StateDir


class FailoverError(Exception):
    """A switch that was refused or could not be made; the message says why and what to do."""


def control_endpoints(topology: Topology, ports: PortRegistry) -> list[str]:
    view = next(c for c in topology.etcd_clusters() if c.scope == GLOBAL_SCOPE)
    return [a.client_endpoint for a in member_addresses(view, ports).values()]


def control_client(topology: Topology, state: StateDir, timeout: float = 2.0) -> EtcdClient:
    return EtcdClient(control_endpoints(topology, PortRegistry(state.ports_file)), timeout=timeout)


def region_fences(topology: Topology, state: StateDir, timeout: float = 1.0) -> RegionFences:
    """The fence keys of every region (`haplane.store.fence_key`), one client per region's
    etcd; `close()` them after use."""
    ports = PortRegistry(state.ports_file)
    return RegionFences(
        {
            c.scope: EtcdClient(
                [a.client_endpoint for a in member_addresses(c, ports).values()], timeout=timeout
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
) -> tuple[ActiveRegion, ActiveRegion]:
    """A fenced, planned switchover to region `to`: (before, after). Automatic failback is
    suspended first (`haplane failback on` resumes it).

    1. one transaction commits epoch + 1 naming `to`, not yet writable: from that moment no
       replica of the old region renews its write permission (it fences at its next read, or
       when its grant runs out if it cannot read);
    2. the old region's fence key goes `active:` -> `frozen:` in one transaction in its etcd
       (when it answers; a dead region is covered by the time fence and frozen when it is back);
    3. wait `grant + margin` (`ActiveRegion.fence_wait`): every old grant has run out;
    4. `to`'s fence key becomes `active:<to>@<epoch>`, then one transaction makes the new epoch
       writable (`unfence=False` leaves 4 to the failover controller, which does it after the
       same wait counted from when it saw the epoch).

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
    who = by or operator()
    try:
        after = await state.switch(to, expected_epoch=epoch, by=who, reason=reason)
    except StaleEpoch as exc:
        raise FailoverError(f"refused: {exc}; look again with `haplane status`") from exc
    committed = time.monotonic()
    # An operator chose where the platform runs: automatic failback waits for `haplane
    # failback on`. Written after the commit (a refused switch suspends nothing); no failback
    # can come first: it waits `failbackAfterMs` from the controller's first sight of the
    # epoch, which is not writable before the fence wait anyway.
    await fences.freeze_others(after, timeout=0.5)
    try:
        await state.set_failback(False, by=who, reason=f"operator switchover to {to}")
    except EtcdError:  # the switch stands: say so, and let `haplane failback off` repeat it
        import sys

        print(
            "warning: automatic failback could not be suspended; run `haplane failback off`",
            file=sys.stderr,
        )
    if unfence:
        after = await unfence_after_wait(state, fences, after, committed)
    return before, after


async def unfence_after_wait(
    state: GlobalState, fences: RegionFences, record: ActiveRegion, committed: float
) -> ActiveRegion:
    """Unfence `record`'s epoch once `fence_wait` has passed since `committed` (monotonic):
    make the new region's fence key `active:` (required: without it its replicas could not
    write), then unfence."""
    await asyncio.sleep(max(0.0, committed + record.fence_wait - time.monotonic()))
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
        return await state.unfence(record.epoch)
    except StaleEpoch as exc:
        raise FailoverError(
            f"epoch {record.epoch} was committed but another change followed before it was "
            f"unfenced: {exc}"
        ) from exc
