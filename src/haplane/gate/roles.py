"""What makes a forwarding engine a regional balancer or a gate instance.

Layer: gate. Uses a `Forwarder` in-process and etcd through `haplane.store`.

- `RegionHealth` (balancers): the region's aggregate health for the gates, served on the admin
  listener at `/healthz/region`: how many API replicas are ready (from this balancer's own
  checks) and whether the region's etcd answers a linearizable read (probed here every
  `interval`). 200 when at least one replica is UP and etcd has quorum; 503 otherwise, with the
  detail as JSON. With fencing, also 503 when every ready replica's `/readyz` says it has been
  unable to confirm the write permission its region holds for longer than `interval` (a slow
  control etcd: the replicas are up, but no write can be made). Replicas already refuse
  `/readyz` without quorum, so etcd's verdict here is for operators and for the gate's reason,
  not a second vote.
- `ActiveRegionFollower` (gates): follows the active region in the global control etcd and
  activates the pool of that name, which aborts the connections of the previous one. A gate
  never picks a region itself: when the global control etcd is unreachable it keeps routing to
  the last region it was told (the region-failover issue adds fencing for that case); without
  a record, or when the record names a region it has no pool for, it refuses clients; a record
  with an older epoch than one already seen is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from haplane.store import EtcdClient, EtcdError, EtcdTls, GlobalState

from .events import GateEvent
from .forwarder import Forwarder
from .health import UpstreamState

log = logging.getLogger("haplane.gate")

PROBE_KEY = b"/haplane/health/probe"  # read, never written: a linearizable read needs quorum


class RegionHealth:
    def __init__(
        self,
        forwarder: Forwarder,
        region: str,
        etcd_endpoints: list[str],
        interval: float = 0.5,
        timeout: float = 1.0,
        *,
        global_endpoints: list[str] | None = None,
        unhealthy_grace: float = 0.0,
        tls: EtcdTls | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.tls = tls
        self.region = region
        self.endpoints = etcd_endpoints
        self.global_endpoints = global_endpoints or []
        self.control_reachable: bool | None = None  # None: not probed (yet)
        self.unhealthy_grace = unhealthy_grace
        self._unhealthy_since: float | None = None
        self._was_healthy = False
        self.control_error: str | None = None
        self._control_task: asyncio.Task[None] | None = None
        self.interval = interval
        self.timeout = timeout
        self.etcd_quorum: bool | None = None  # None: not probed yet
        self.etcd_error: str | None = None
        self.etcd_latency: float | None = None
        self.etcd_checked_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(
            self._probe(self.endpoints, "region etcd", self._etcd_probed), name="region etcd probe"
        )
        if self.global_endpoints:
            # Can this region read the global control state? If not, its replicas cannot hold
            # a write grant: the region is unhealthy for the gates' votes.
            self._control_task = asyncio.create_task(
                self._probe(self.global_endpoints, "control etcd", self._control_probed),
                name="control probe",
            )

    async def stop(self) -> None:
        for task in (self._task, self._control_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _probe(
        self,
        endpoints: list[str],
        what: str,
        probed: Callable[[bool, str | None, float], None],
    ) -> None:
        """A linearizable read (it needs quorum) every `interval`; `probed(ok, error,
        latency)` after each."""
        async with EtcdClient(endpoints, timeout=self.timeout, tls=self.tls) as client:
            while True:
                t0 = time.monotonic()
                try:
                    await client.get(PROBE_KEY)
                    ok, error = True, None
                except EtcdError as exc:
                    ok, error = False, str(exc)
                except Exception as exc:  # a bug or a gRPC surprise: unhealthy, keep probing
                    log.exception("%s probe failed", what)
                    ok, error = False, f"probe failed: {exc!r}"
                probed(ok, error, time.monotonic() - t0)
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - t0)))

    def _etcd_probed(self, quorum: bool, error: str | None, latency: float) -> None:
        self.etcd_latency = latency
        self.etcd_checked_at = time.time()
        if quorum != self.etcd_quorum:
            self.forwarder.emit(
                GateEvent(
                    "region_etcd",
                    level="info" if quorum else "warning",
                    pool=self.region,
                    from_state=_quorum_word(self.etcd_quorum),
                    to_state=_quorum_word(quorum),
                    reason=error or "a linearizable read answered",
                )
            )
        self.etcd_quorum, self.etcd_error = quorum, error

    def _control_probed(self, ok: bool, error: str | None, latency: float) -> None:
        if ok != self.control_reachable:
            self.forwarder.emit(
                GateEvent(
                    "region_control",
                    level="info" if ok else "warning",
                    pool=self.region,
                    to_state="reachable" if ok else "unreachable",
                    reason=error or "a linearizable read of the global state answered",
                )
            )
        self.control_reachable, self.control_error = ok, error

    def report(self) -> dict[str, Any]:
        pool = self.forwarder.pools.get(self.region)
        upstreams = list(pool.upstreams.values()) if pool is not None else []
        ready = [u.name for u in upstreams if u.state is UpstreamState.UP]
        reasons = []
        if not ready:
            reasons.append("no API replica is ready")
        if self.etcd_quorum is False:
            reasons.append(f"etcd has no quorum: {self.etcd_error}")
        elif self.etcd_quorum is None:
            reasons.append("etcd not probed yet")
        if self.global_endpoints and not self.control_reachable:
            reasons.append(
                "the global control etcd does not answer: this region cannot hold a write grant"
                + (f" ({self.control_error})" if self.control_error else "")
            )
        lapsed = _lapsed_for(upstreams, ready) if self.global_endpoints else None
        if lapsed is not None and lapsed > self.interval:
            # the probe above can pass while the replicas' own reads of the record are too
            # slow (geo latency, an overloaded control etcd): a silent write outage otherwise
            reasons.append(
                "every ready API replica has been unable to confirm its write permission for "
                f"{lapsed:.1f}s (their reads of the global control state fail or come too late)"
            )
        now = time.monotonic()
        if not reasons:
            self._unhealthy_since = None
            self._was_healthy = True
        elif self._unhealthy_since is None:
            self._unhealthy_since = now
        grace_left = (
            self.unhealthy_grace - (now - self._unhealthy_since)
            if self._unhealthy_since is not None and self._was_healthy
            else 0.0
        )
        return {
            "region": self.region,
            # A region that was healthy stays reported healthy for `unhealthy_grace` (its etcd
            # electing a new leader fails every read and /readyz for about an election
            # timeout: that is no reason to fail the region over).
            "healthy": not reasons or grace_left > 0,
            "reasons": reasons,
            "grace_left_s": round(max(grace_left, 0.0), 3) if reasons else None,
            "replicas_ready": len(ready),
            "replicas": len(upstreams),
            "replicas_detail": {u.name: u.state.value for u in upstreams},
            "etcd_quorum": self.etcd_quorum,
            "etcd_latency_ms": round(self.etcd_latency * 1000, 1)
            if self.etcd_latency is not None
            else None,
            "etcd_error": self.etcd_error,
            "control_reachable": self.control_reachable,
        }


def _lapsed_for(upstreams: list[Any], ready: list[str]) -> float | None:
    """How long the ready replica that lapsed last has been unable to confirm the write
    permission its region holds, from the `fence.lapsedSeconds` their `/readyz` JSON
    carries; None when some ready replica did not say (an older replica) or none is ready."""
    seen = []
    for u in upstreams:
        if u.name not in ready:
            continue
        fence = u.detail.get("fence") if isinstance(u.detail, dict) else None
        if not isinstance(fence, dict) or not isinstance(fence.get("lapsedSeconds"), int | float):
            return None
        seen.append(float(fence["lapsedSeconds"]))
    return min(seen) if seen else None


def _quorum_word(quorum: bool | None) -> str:
    return {True: "quorum", False: "no-quorum", None: "unknown"}[quorum]


class ActiveRegionFollower:
    def __init__(
        self,
        forwarder: Forwarder,
        etcd_endpoints: list[str],
        prefix: bytes,
        retry: float = 0.5,
        timeout: float = 1.0,
        refuse_after: float | None = 3.0,
        tls: EtcdTls | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.tls = tls
        self.endpoints = etcd_endpoints
        self.prefix = prefix
        self.retry = retry
        self.timeout = timeout
        # A gate that cannot confirm the active region (no linearizable read of the global
        # state for this long: cut off from the control etcd's majority) refuses clients, so
        # that they move to a gate that can; None keeps serving the last region told.
        self.refuse_after = refuse_after
        self._last_confirmed = time.monotonic()
        self.cut_off = False
        self._confirm_task: asyncio.Task[None] | None = None
        self.region: str | None = None
        self.epoch: int | None = None
        self.writable: bool | None = None  # the followed epoch's; None until one was read
        self.connected = False
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="follow active region")
        self._confirm_task = asyncio.create_task(self._confirm(), name="confirm active region")

    async def stop(self) -> None:
        for task in (self._task, self._confirm_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _confirm(self) -> None:
        """Confirm the record with a linearizable read every `retry` seconds: a watch on a
        member cut off from its cluster's majority can stay open and silent."""
        async with EtcdClient(self.endpoints, timeout=self.timeout, tls=self.tls) as client:
            state = GlobalState(client, prefix=self.prefix)
            while True:
                sent = time.monotonic()
                try:
                    record = await state.read()
                except Exception as exc:
                    if not isinstance(exc, EtcdError):
                        log.exception("confirming the active region failed")
                    if (
                        self.refuse_after is not None
                        and not self.cut_off
                        and time.monotonic() - self._last_confirmed > self.refuse_after
                    ):
                        self.cut_off = True
                        self.region = None  # re-activate on the next record seen
                        self._refuse(
                            "cannot confirm the active region with the global control etcd "
                            f"for {self.refuse_after:.1f}s: refusing clients so they use "
                            "another gate"
                        )
                else:
                    self._last_confirmed = sent
                    if self.cut_off:
                        self.cut_off = False
                    if record is not None:
                        self._apply(record.region, record.epoch, record.writable)
                await asyncio.sleep(max(0.0, sent + self.retry - time.monotonic()))

    async def _follow(self) -> None:
        async with EtcdClient(self.endpoints, timeout=self.timeout, tls=self.tls) as client:
            state = GlobalState(client, prefix=self.prefix)
            while True:
                try:
                    async for record in state.watch():
                        self.connected, self.error = True, None
                        if record is None:
                            self._refuse("no active region is recorded")
                            continue
                        self._apply(record.region, record.epoch, record.writable)
                except Exception as exc:  # etcd trouble (or a bug, logged below): retry
                    # Keep routing where we were told: choosing on our own is split brain.
                    if not isinstance(exc, EtcdError):
                        log.exception("following the active region failed")
                    if self.connected or self.error is None:
                        log.warning(
                            json.dumps(
                                {
                                    "component": self.forwarder.name,
                                    "event": "global_state_unreachable",
                                    "reason": str(exc),
                                    "keeping": self.region,
                                }
                            )
                        )
                    self.connected, self.error = False, str(exc)
                    await asyncio.sleep(self.retry)

    def _apply(self, region: str, epoch: int, writable: bool = True) -> None:
        if self.cut_off:
            return
        # under one epoch, writes are only ever allowed, never taken back (a new fence is a
        # new epoch): a confirming read sent before the unfence and answered after the watch
        # told it says fenced, and is older. (Not by mod revision: a restored control etcd
        # starts its revisions again lower.)
        if epoch == self.epoch:
            self.writable = bool(self.writable) or writable
        if (region, epoch) == (self.region, self.epoch):
            return
        if self.epoch is not None and epoch < self.epoch:
            self.forwarder.emit(
                GateEvent(
                    "stale_epoch_ignored",
                    level="warning",
                    pool=region,
                    reason=f"epoch {epoch} is older than {self.epoch}",
                )
            )
            return
        self.region, self.epoch, self.writable = region, epoch, writable
        if region not in self.forwarder.pools:
            # The authority moved away from our region to one we cannot reach: refuse rather
            # than keep serving a region that is no longer active.
            self._refuse(f"epoch {epoch} names region {region}, for which this gate has no pool")
            return
        self.forwarder.activate(region, reason=f"global state: epoch {epoch}")

    def _refuse(self, why: str) -> None:
        if self.forwarder.active_pool is not None:
            self.forwarder.emit(GateEvent("refusing_clients", level="error", reason=why))
        self.forwarder.activate(None, reason=why)

    def report(self) -> dict[str, Any]:
        return {
            "active_region": self.region,
            "epoch": self.epoch,
            "writable": self.writable,
            "global_state_connected": self.connected,
            "cut_off": self.cut_off,
            "error": self.error,
        }
