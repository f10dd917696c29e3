"""Write fencing: an API replica accepts writes only while its region holds the current epoch.

Layer: api. Reads the global control state (`haplane.store.GlobalState`) through its own etcd
client; the storage layer asks `permit()` before every write, hands its absolute end time
down to the etcd call (refused at send time with less than `MIN_WRITE_WINDOW` left) and
compares the region's fence key in the same transaction. Touches nothing else.

Two fences, each enough on its own in the cases the other cannot see:

**The time fence** (issue 7, "fencing, precisely"):
- every `poll` seconds the replica reads the global record with a linearizable read, noting the
  time it *sent* the read (CLOCK_BOOTTIME: `haplane.store.boottime`, which keeps counting
  through a suspend);
- it may write while the record names its region, is `writable`, and less than
  `grant - margin` has passed since the send time of its last successful read. The read was
  answered after it was sent, so the record was current at some instant after that send time:
  the permission can only end early, never late;
- a read that shows another region or a newer epoch fences at once;
- whoever commits a new epoch unfences its region only `grant + margin` after the commit
  (`ActiveRegion.fence_wait`), by which time every replica of the old region has either read the
  new record or let its permission run out. Two regions never hold permission at once, whatever
  the network does, as long as clocks *rates* agree within the margin (no wall-clock sync is
  needed: only durations on each machine's own clock are compared).
- a record whose epoch went *back* (answered to a read sent after the one that saw the higher
  epoch: the control etcd was wiped or restored) is taken as it is: `GlobalState.initialize`
  makes such a record writable only after the fence wait.

Its limit: an etcd deadline bounds when a write is *acknowledged*, not when its raft proposal
is applied. A request that stalls after every client-side check (a pause inside the send, a
frame queued in a socket) can still commit in the old region after the new one took over.

**The data fence** (`haplane.store.fence_key`): every write transaction also compares the
region's fence key with `active:<region>@<epoch this replica holds>`. Whoever moves the epoch
freezes the old region's key before unfencing the new one (whenever that region's etcd
answers), so such a late write finds `frozen:` and is refused by etcd itself. Its limit:
the freeze needs the old region's etcd to answer whoever moves the epoch. A region cut off
from them (a partition, not a death) keeps its `active:` key until the cut heals, and a write
of its own replicas that stalled past the time fence can still commit there meanwhile: only
the time fence covers that gap, as before (the replication issue must not copy such writes:
they are above the cut). It is frozen as soon as its etcd answers again.

When the global control etcd loses quorum nobody can renew: the active region fences within
`grant - margin` (safety first; `haplane analyse` reports this as a global write outage).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from haplane.store import ActiveRegion, EtcdClient, EtcdError, GlobalState, boottime
from haplane.store.global_state import DEFAULT_GRANT_MS, DEFAULT_MARGIN_MS, DEFAULT_PREFIX

log = logging.getLogger("haplane.api.fencing")

MIN_WRITE_WINDOW = 0.02  # below this much permission left, a write is refused, not attempted


class Fenced(Exception):
    """This replica may not write now; `active` names the region that may (if known)."""

    def __init__(self, message: str, active: str | None):
        super().__init__(message)
        self.active = active


@dataclass(frozen=True)
class Permit:
    """Permission for one write: until `deadline` (on `boottime()`), in `epoch`."""

    deadline: float
    epoch: int


class WriteFence:
    """Permission to write for one replica of `region`, renewed by polling the global state.

    `client` is None for a replica run without a global control etcd (a bare API server in
    tests and benchmarks): it is then always permitted, under epoch 0."""

    def __init__(
        self,
        region: str,
        client: EtcdClient | None,
        *,
        prefix: bytes = DEFAULT_PREFIX,
        poll: float = 0.1,
        read_timeout: float | None = None,
        clock: Callable[[], float] = boottime,
        on_epoch: Callable[[int], None] | None = None,
        on_permitted: Callable[[], None] | None = None,
    ):
        self.region = region
        self.client = client
        self.state = GlobalState(client, prefix) if client is not None else None
        self.poll = poll
        self.read_timeout = read_timeout  # None: follows the grant (see `_read_budget`)
        self.clock = clock
        self.on_epoch = on_epoch
        self.on_permitted = on_permitted
        self.record: ActiveRegion | None = None
        self.last_ok_send: float | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._was_permitted = False
        self._last_refresh: float | None = None
        self._higher_answered: float | None = None  # when the highest epoch's answer came
        self.first_read = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self.state is not None

    @property
    def epoch(self) -> int:
        return self.record.epoch if self.record is not None else 0

    # ---- the rule (pure given the fields) --------------------------------------------------

    def permit(self) -> Permit:
        """The permission for a write starting now: its absolute end on `boottime()` and its
        epoch; raises `Fenced` when there is none worth using."""
        if self.state is None:
            return Permit(float("inf"), 0)
        rec = self.record
        if rec is None or self.last_ok_send is None:
            raise Fenced("this replica has not read the global control state yet", None)
        if rec.region != self.region:
            raise Fenced(
                f"region {self.region} is not active: writes go to region {rec.region} "
                f"(epoch {rec.epoch})",
                rec.region,
            )
        if not rec.writable:
            raise Fenced(
                f"region {self.region} becomes writable in epoch {rec.epoch} once the previous "
                f"region's write permission has run out (at most {rec.fence_wait:.2f}s)",
                rec.region,
            )
        deadline = self.last_ok_send + (rec.grant_ms - rec.margin_ms) / 1000
        if deadline - self.clock() < MIN_WRITE_WINDOW:
            raise Fenced(
                f"region {self.region} cannot confirm it is still active (global control etcd "
                f"not answering: {self.last_error or 'slow reads'}); writes are fenced",
                rec.region,
            )
        return Permit(deadline, rec.epoch)

    def remaining(self) -> float:
        """Seconds of write permission left; raises `Fenced` when there is none worth using."""
        deadline = self.permit().deadline
        return deadline if deadline == float("inf") else deadline - self.clock()

    def permitted(self) -> bool:
        try:
            self.remaining()
        except Fenced:
            return False
        return True

    def observe(self, record: ActiveRegion | None, sent: float) -> None:
        """Take the answer of a read sent at `sent`, arriving now. A lower epoch than already
        seen is ignored when the read was sent before the higher epoch's answer arrived (it
        may be older: reads can overlap); sent after it, the record really went back."""
        if record is not None and self.record is not None and record.epoch < self.record.epoch:
            if self._higher_answered is None or sent <= self._higher_answered:
                return  # an older answer arriving late, or a read overlapping the higher one
            # sent after the higher epoch's answer arrived: the record went back
            log.warning(
                json.dumps(
                    {
                        "msg": "epoch went back: the global record was recreated",
                        "region": self.region,
                        "from": self.record.epoch,
                        "to": record.epoch,
                    }
                )
            )
        old_epoch = self.epoch
        if record is not None and (self.record is None or record.epoch != old_epoch):
            self._higher_answered = self.clock()
        self.record = record
        self.last_ok_send = max(sent, self.last_ok_send or sent) if record is not None else None
        self.last_error = None
        if self.epoch != old_epoch:
            log.info(
                json.dumps(
                    {
                        "msg": "epoch",
                        "region": self.region,
                        "epoch": self.epoch,
                        "active": record.region if record else None,
                        "writable": record.writable if record else False,
                    }
                )
            )
            if self.on_epoch is not None:
                self.on_epoch(self.epoch)
        self._note_permission()

    def _note_permission(self) -> None:
        now = self.permitted()
        if now and not self._was_permitted and self.on_permitted is not None:
            self.on_permitted()
        self._was_permitted = now

    def lapsed_for(self) -> float:
        """Seconds this replica has been unable to confirm a permission its region should
        hold: the record names this region and is writable, yet reads failed or came too late
        (a slow or unreachable control etcd). 0 when permitted, or fenced for a reason that
        is no fault (another region is active, or the epoch waits to be unfenced)."""
        rec = self.record
        if (
            self.state is None
            or rec is None
            or self.last_ok_send is None
            or rec.region != self.region
            or not rec.writable
        ):
            return 0.0
        ended = self.last_ok_send + (rec.grant_ms - rec.margin_ms) / 1000 - MIN_WRITE_WINDOW
        return max(0.0, self.clock() - ended)

    def _read_budget(self) -> float:
        """How long one read of the record may take: as long as its answer can still give
        permission (grant - margin), not a fixed split of the client's default, so that a
        control etcd far away (geo latency) keeps the region writable."""
        if self.read_timeout is not None:
            return self.read_timeout
        rec = self.record
        grant, margin = (
            (rec.grant_ms, rec.margin_ms) if rec else (DEFAULT_GRANT_MS, DEFAULT_MARGIN_MS)
        )
        return max(self.poll, (grant - margin) / 1000)

    # ---- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        if self.state is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="write fence")

    async def refresh_now(self, timeout: float = 0.3) -> ActiveRegion | None:
        """Read the record now (when the data fence refused a write, to name the region that
        is active): the record known afterwards. At most one such read per `poll` (the loop's
        own reads come as often): refusals in a burst, or a misconfigured key refusing every
        write, cost the control etcd nothing more. Errors leave the state as it was."""
        if self.state is None:
            return None
        sent = self.clock()
        if self._last_refresh is not None and sent - self._last_refresh < self.poll:
            return self.record
        self._last_refresh = sent
        try:
            async with asyncio.timeout(timeout):
                record = await self.state.read(timeout=timeout)
        except (EtcdError, TimeoutError):
            return self.record
        self.observe(record, sent)
        return self.record

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        assert self.state is not None
        while True:
            sent = self.clock()
            budget = self._read_budget()
            try:
                async with asyncio.timeout(budget):
                    record = await self.state.read(timeout=budget)
            except (EtcdError, TimeoutError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                self._note_permission()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep fencing decisions alive whatever happens
                self.last_error = repr(exc)
                log.exception("write fence: reading the global state failed")
            else:
                self.observe(record, sent)
                self.first_read.set()
            await asyncio.sleep(max(0.0, sent + self.poll - self.clock()))

    def status(self) -> dict[str, object]:
        rec = self.record
        try:
            left: float | None = self.remaining()
        except Fenced:
            left = None
        return {
            "enabled": self.enabled,
            "region": self.region,
            "epoch": self.epoch,
            "active": rec.region if rec else None,
            "writable": rec.writable if rec else None,
            "permitted": left is not None,
            "permissionSeconds": None if left in (None, float("inf")) else round(left or 0, 3),
            "lapsedSeconds": round(self.lapsed_for(), 3),
            "lastError": self.last_error,
        }
