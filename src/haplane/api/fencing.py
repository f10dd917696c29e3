"""Write fencing: an API replica accepts writes only while its region holds the current epoch.

Layer: api. Reads the global control state (`haplane.store.GlobalState`) through its own etcd
client; the storage layer asks `remaining()` before every write and bounds the write's etcd
deadline by it. Touches nothing else.

The rule (issue 7, "fencing, precisely"):

- every `poll` seconds the replica reads the global record with a linearizable read, noting the
  time it *sent* the read (monotonic clock);
- it may write while the record names its region, is `writable`, and less than
  `grant - margin` has passed since the send time of its last successful read. The read was
  answered after it was sent, so the record was current at some instant after that send time:
  the permission can only end early, never late;
- a read that shows another region or a newer epoch fences at once;
- whoever commits a new epoch unfences its region only `grant + margin` after the commit
  (`ActiveRegion.fence_wait`), by which time every replica of the old region has either read the
  new record or let its permission run out. Two regions never hold permission at once, whatever
  the network does, as long as clocks *rates* agree within the margin (no wall-clock sync is
  needed: only durations on each machine's monotonic clock are compared).

Limit: an etcd deadline bounds when a write is *acknowledged*, not when its raft proposal is
applied; a proposal sent just inside the permission can still commit in the old region's own
etcd shortly after (it is then answered "outcome unknown", never acknowledged). Each region
has its own etcd and nothing is replicated yet, so nothing conflicts; before cross-region
replication, a data-layer fence (a compare on a per-region epoch key in every transaction) is
needed. System namespaces (`default`, `kube-system`...) are created past the fence in a
standby region: they conflict with nothing and are journaled like every other write.

When the global control etcd loses quorum nobody can renew: the active region fences within
`grant - margin` (safety first; `haplane analyse` reports this as a global write outage).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from haplane.store import ActiveRegion, EtcdClient, EtcdError, GlobalState
from haplane.store.global_state import DEFAULT_PREFIX

log = logging.getLogger("haplane.api.fencing")

MIN_WRITE_WINDOW = 0.02  # below this much permission left, a write is refused, not attempted


class Fenced(Exception):
    """This replica may not write now; `active` names the region that may (if known)."""

    def __init__(self, message: str, active: str | None):
        super().__init__(message)
        self.active = active


@dataclass(frozen=True)
class FenceState:
    record: ActiveRegion | None
    last_ok_send: float | None  # monotonic send time of the last successful read
    last_error: str | None


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
        read_timeout: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        on_epoch: Callable[[int], None] | None = None,
        on_permitted: Callable[[], None] | None = None,
    ):
        self.region = region
        self.client = client
        self.state = GlobalState(client, prefix) if client is not None else None
        self.poll = poll
        self.read_timeout = read_timeout
        self.clock = clock
        self.on_epoch = on_epoch
        self.on_permitted = on_permitted
        self.record: ActiveRegion | None = None
        self.last_ok_send: float | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._was_permitted = False
        self.first_read = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self.state is not None

    @property
    def epoch(self) -> int:
        return self.record.epoch if self.record is not None else 0

    # ---- the rule (pure given the fields) --------------------------------------------------

    def remaining(self) -> float:
        """Seconds of write permission left; raises `Fenced` when there is none worth using."""
        if self.state is None:
            return float("inf")
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
        left = self.last_ok_send + (rec.grant_ms - rec.margin_ms) / 1000 - self.clock()
        if left < MIN_WRITE_WINDOW:
            raise Fenced(
                f"region {self.region} cannot confirm it is still active (global control etcd "
                f"not answering: {self.last_error or 'slow reads'}); writes are fenced",
                rec.region,
            )
        return left

    def permitted(self) -> bool:
        try:
            self.remaining()
        except Fenced:
            return False
        return True

    def observe(self, record: ActiveRegion | None, sent: float) -> None:
        """Take the answer of a read sent at `sent`. An older epoch than already seen is
        ignored (answers can arrive out of order)."""
        if record is not None and self.record is not None and record.epoch < self.record.epoch:
            return
        old_epoch = self.epoch
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

    # ---- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        if self.state is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="write fence")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        assert self.state is not None
        while True:
            sent = self.clock()
            try:
                async with asyncio.timeout(self.read_timeout):
                    record = await self.state.read()
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
            "lastError": self.last_error,
        }
