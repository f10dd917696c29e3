"""Replacing a lost etcd member (`haplane member replace REGION/etcd-N`): a member whose data
dir is gone (a dead disk, a deleted directory) comes back as a new member of the same cluster,
one step at a time, without a write outage.

Layer: run (`haplane.local`). Talks to the cluster's etcd (membership through its Cluster API)
and to the supervisor's control socket (stopping and starting the member's process); the new
member joins with the cluster it is told of in `STATE/data/<member>.join`, which the
supervisor reads before it starts the process (`--initial-cluster-state existing`).

The steps, as etcd's runtime reconfiguration guide orders them, each checked first:
1. every other member answers and the cluster has a leader: removing one member of N leaves
   N-1 voters, whose quorum must still hold with one more failure budget spent; refused
   otherwise, with nothing changed;
2. the member's process is stopped (it may be running on an empty data dir, or crash-looping);
3. it is removed from the cluster (etcd refuses a second member with its peer URL), and its
   old data dir, if any, is kept aside as `NAME.replaced-STAMP`;
4. it is added back as a **learner** (no vote: the quorum stays the N-1 voters while it
   catches up), the join file written, and the process started;
5. it is promoted once etcd says it is in sync with the leader (etcd refuses before), and the
   cluster is awaited with every member healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from haplane.store import EtcdClient, EtcdError, EtcdRejected, etcd_member_name
from haplane.topology import Topology

from .control_client import ControlClient, ControlError
from .gate_plans import plan_of
from .state_dir import OperationLocked, StateDir
from .supervisor import cluster_ready


class ReplaceRefused(Exception):
    """Refused before anything changed; the message says why."""


@dataclass
class ReplaceReport:
    member: str
    old_id: str = ""
    new_id: str = ""
    seconds: float = 0.0
    kept: str = ""
    steps: list[tuple[float, str]] = field(default_factory=list)


async def replace_member(
    topology: Topology,
    state: StateDir,
    qualified: str,
    progress: Callable[[str], None] = lambda _: None,
    promote_timeout: float = 120.0,
) -> ReplaceReport:
    try:
        with state.operation_lock(f"replacement of {qualified}"):
            return await _replace(topology, state, qualified, progress, promote_timeout)
    except OperationLocked as exc:
        raise ReplaceRefused(str(exc)) from None


async def _replace(
    topology: Topology,
    state: StateDir,
    qualified: str,
    progress: Callable[[str], None],
    promote_timeout: float,
) -> ReplaceReport:
    plan = plan_of(topology, state)
    cluster = next(
        (c for c in plan.clusters if qualified in c.addresses),
        None,
    )
    if cluster is None:
        known = ", ".join(sorted(n for c in plan.clusters for n in c.addresses))
        raise ReplaceRefused(f"no etcd member {qualified!r} (known: {known})")
    view = next(m for m in cluster.view.members if m.qualified_name == qualified)
    address = cluster.addresses[qualified]
    name = etcd_member_name(view)
    others = [a.client_endpoint for q, a in cluster.addresses.items() if q != qualified]
    report = ReplaceReport(qualified)
    started = time.monotonic()

    def step(text: str) -> None:
        report.steps.append((round(time.monotonic() - started, 3), text))
        progress(text)

    ctl = ControlClient(state.socket, timeout=30.0)
    async with EtcdClient(others, timeout=2.0, tls=cluster.tls) as client:
        # 1. the rest of the cluster must carry it
        healthy = []
        for ep in others:
            with contextlib.suppress(EtcdError):
                await client.status(ep, timeout=2.0)
                healthy.append(ep)
        if len(healthy) < len(others) or not await cluster_ready(client, others):
            down = sorted(set(others) - set(healthy))
            raise ReplaceRefused(
                f"the other members must all be healthy first ({', '.join(down) or 'no leader'} "
                "not answering): replacing a member while another is down would lose quorum. "
                "Bring them back (or restore the region from a snapshot)"
            )
        try:
            await ctl.snapshot()
        except ControlError as exc:
            raise ReplaceRefused(f"the supervisor does not answer ({exc})") from None
        members = await client.members()
        current = next((m for m in members if address.peer_url in m.peer_urls), None)
        step(
            f"{len(healthy)} other members healthy; {qualified} is "
            f"{'member ' + format(current.member_id, 'x') if current else 'not a member'}"
        )
        # 2. its process stopped
        await ctl.fault("term", qualified)
        step(f"stopped {qualified}")
        # 3. removed, its old data kept aside
        if current is not None:
            report.old_id = f"{current.member_id:x}"
            await client.member_remove(current.member_id, timeout=5.0)
            step(f"removed member {report.old_id}")
        data = state.data_dir(qualified)
        if data.exists():
            aside = data.with_name(f"{data.name}.replaced-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
            os.replace(data, aside)
            report.kept = str(aside)
            step(f"old data dir kept as {aside.name}")
        # 4. added back as a learner, started with the cluster as it is now
        new, after = await client.member_add([address.peer_url], learner=True, timeout=5.0)
        report.new_id = f"{new.member_id:x}"
        initial = ",".join(f"{m.name or name}={m.peer_urls[0]}" for m in after if m.peer_urls)
        join = state.join_file(qualified)
        join.write_text(initial + "\n")
        step(f"added learner {report.new_id}; joining {initial}")
        await ctl.fault("restart", qualified)
        step(f"started {qualified} on a fresh data dir")
        # 5. promoted once in sync
        deadline = time.monotonic() + promote_timeout
        while True:
            try:
                await client.member_promote(new.member_id, timeout=5.0)
                break
            except EtcdRejected as exc:
                if time.monotonic() > deadline:
                    raise EtcdError(
                        f"the learner {report.new_id} did not catch up within "
                        f"{promote_timeout:g} s ({exc}); it stays a learner: run again later"
                    ) from None
                await asyncio.sleep(0.5)
        step(f"promoted {report.new_id} to a voting member")
    everyone = [a.client_endpoint for a in cluster.addresses.values()]
    async with EtcdClient(everyone, timeout=2.0, tls=cluster.tls) as client:
        deadline = time.monotonic() + 60.0
        while not await cluster_ready(client, everyone):
            if time.monotonic() > deadline:
                raise EtcdError("the cluster did not report every member healthy within 60 s")
            await asyncio.sleep(0.2)
    step(f"all {len(everyone)} members healthy")
    report.seconds = round(time.monotonic() - started, 3)
    return report
