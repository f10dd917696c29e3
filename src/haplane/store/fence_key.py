"""The data fence: one key in each regional etcd that says who may write there, in which epoch.

Layer: store. Knows the key, its values, the pure rule for what each region's key should be
given the global record, and the compare-and-swap primitives that change it. Knows nothing of
HTTP, processes or the CLI.

The key `/haplane/fence` lies outside every served resource (`/registry/...`) and is never
replicated. Its value is one of:

- `active:<region>@<epoch>`: API replicas of `<region>` (the region whose etcd this is) may
  write while they believe they hold epoch `<epoch>`; every API write transaction compares the
  key with exactly this value (`FenceValue.active(region, epoch)`), so a write sent under an
  older epoch, or into a region that has been frozen since, can never commit;
- `frozen:<region>@<epoch>`: the region was active in `<epoch>` and has been fenced since
  (a switchover is draining it, or it lost the epoch); nobody writes;
- `standby:<source>@<epoch>`: the region is a standby of `<source>`, active in `<epoch>`; only
  the replicator (a later issue) may write here.

A missing key means fenced: a replica never creates its own; `haplane up`, the failover
controller and `haplane failover` write it (`RegionFences`).

Transitions (`target`, pure): given the global record (active region R, epoch E, writable):
- R's key becomes `active:R@E` by whoever unfences E (`RegionFence.activate`, just before the
  unfence); a reconcile with `activate` (`haplane up`, the controller's passes) sets it when the
  record is already writable and the key is missing or older (a state dir from before the data
  fence, a lost key), never from `frozen:`; without, an older `active:` key of its is frozen;
- another region whose key says `active:...` (at the record's epoch or older) becomes
  `frozen:<it>@<epoch in its key>` (it lost the epoch; it may have been away meanwhile);
- another region with no key, or a `standby:` key of an older epoch, becomes `standby:R@E`; a
  `frozen:` key is left alone (a returning region: what happens to the data it wrote after
  the switch is the business of replication's rejoin);
- a key at a newer epoch than the record is left alone: the record was read before a change
  that has since reached the key. Right after a switch to epoch E, every other region's key
  below E moves on (`RegionFence.step_down`: `active:` to `frozen:`, the rest to `standby:R@E`),
  so a writer holding an older record can never undo the switch: its compare-and-swap was
  prepared from a read the step-down has since changed, and later reads show epoch E.

Every change is one transaction guarded by the key's mod revision as it was read, so two
writers (an operator and the controller) never undo each other's newer change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from .errors import EtcdError
from .etcd_client import Compare, EtcdClient, KeyValue, Op
from .global_state import ActiveRegion

FENCE_KEY = b"/haplane/fence"

FenceState = Literal["active", "frozen", "standby"]
_STATES: tuple[FenceState, ...] = ("active", "frozen", "standby")


class MalformedFence(ValueError):
    """A fence key whose value is not `<state>:<region>@<epoch>`."""


@dataclass(frozen=True)
class FenceValue:
    state: FenceState
    region: str  # active, frozen: the region itself; standby: the source (the active region)
    epoch: int

    @classmethod
    def active(cls, region: str, epoch: int) -> FenceValue:
        return cls("active", region, epoch)

    @classmethod
    def frozen(cls, region: str, epoch: int) -> FenceValue:
        return cls("frozen", region, epoch)

    @classmethod
    def standby(cls, source: str, epoch: int) -> FenceValue:
        return cls("standby", source, epoch)

    def encode(self) -> bytes:
        return f"{self.state}:{self.region}@{self.epoch}".encode()

    def __str__(self) -> str:
        return self.encode().decode()

    @classmethod
    def parse(cls, raw: bytes) -> FenceValue:
        text = raw.decode("utf-8", "replace")
        state, sep, rest = text.partition(":")
        region, at, epoch = rest.rpartition("@")
        if not sep or not at or state not in _STATES or not region or not epoch.isdigit():
            raise MalformedFence(
                f"fence key {FENCE_KEY.decode()} holds {text!r}, not "
                "'active|frozen|standby:<region>@<epoch>'"
            )
        return cls(state, region, int(epoch))

    @property
    def writer(self) -> str:
        """The region whose writes go where this key is: the active region of its epoch for a
        standby, the region itself otherwise."""
        return self.region


@dataclass(frozen=True)
class FenceRead:
    """A fence key as read: its value (None: missing or malformed) and mod revision (0:
    missing), for a compare-and-swap."""

    value: FenceValue | None
    mod_revision: int
    raw: bytes | None = None

    @classmethod
    def of(cls, kv: KeyValue | None) -> FenceRead:
        if kv is None:
            return cls(None, 0)
        try:
            return cls(FenceValue.parse(kv.value), kv.mod_revision, kv.value)
        except MalformedFence:
            return cls(None, kv.mod_revision, kv.value)


def target(
    region: str,
    record: ActiveRegion | None,
    current: FenceValue | None,
    *,
    activate: bool = False,
) -> FenceValue | None:
    """What `region`'s fence key should become, given the global record and what it holds now;
    None: leave it as it is. Pure (see the module docstring for the rule).

    A key at a newer epoch than the record is never touched (the record was read before a
    change that has since reached the key), and the recorded region's key is made active only
    with `activate` (`haplane up`, before any replica or gate runs, on a state dir from before
    the data fence), never from `frozen:`: a reconcile that read the record just before a
    switch must not undo that switch. Otherwise only `RegionFence.activate`, called by
    whoever unfences an epoch, makes a region writable."""
    if record is None or (current is not None and current.epoch > record.epoch):
        return None
    if region == record.region:
        want = FenceValue.active(region, record.epoch)
        if current == want or (current is not None and current.state == "frozen"):
            return None
        if activate and record.writable:
            return want
        if current is not None and current.state == "active":
            return FenceValue.frozen(region, current.epoch)  # active in an older epoch
        return None
    if current is None:
        return FenceValue.standby(record.region, record.epoch)
    if current.state == "active":  # no other region is active in the record's own epoch
        return FenceValue.frozen(region, current.epoch)
    if current.state == "standby" and current.epoch < record.epoch:
        return FenceValue.standby(record.region, record.epoch)
    return None


class FenceChanged(Exception):
    """The fence key changed between the read and the write; `current` is what it holds."""

    def __init__(self, message: str, current: FenceRead):
        super().__init__(message)
        self.current = current


class RegionFence:
    """The fence key of one regional etcd."""

    def __init__(self, region: str, client: EtcdClient, *, key: bytes = FENCE_KEY):
        self.region = region
        self.client = client
        self.key = key  # another path only for tests that share one etcd between "regions"

    async def read(self, *, timeout: float | None = None) -> FenceRead:
        """A linearizable read of the key."""
        return FenceRead.of(await self.client.get(self.key, timeout=timeout))

    async def swap(
        self, expected: FenceRead, value: FenceValue, *, timeout: float | None = None
    ) -> FenceRead:
        """Set the key to `value` only if it is still as `expected` was read (same mod
        revision; absent when 0); `FenceChanged` otherwise, nothing written."""
        r = await self.client.txn(
            [Compare(self.key, "mod", "=", expected.mod_revision)],
            [Op("put", self.key, value.encode())],
            [Op("get", self.key)],
            timeout=timeout,
        )
        if not r.succeeded:
            now = FenceRead.of(r.results[0][0] if r.results[0] else None)
            raise FenceChanged(
                f"{self.region}: the fence key changed meanwhile (now {now.value})", now
            )
        return FenceRead(value, r.revision, value.encode())

    async def _move(
        self,
        decide: Callable[[FenceRead], FenceValue | None],
        timeout: float | None,
    ) -> FenceRead | None:
        """Read, `decide` what the key becomes (None: leave it; it may raise to refuse), and
        compare-and-swap; another writer moving the key in between means look again, up to 3
        times. What the key holds after; None when it kept changing."""
        for _ in range(3):
            now = await self.read(timeout=timeout)
            want = decide(now)
            if want is None:
                return now
            try:
                return await self.swap(now, want, timeout=timeout)
            except FenceChanged:
                continue  # someone else moved it: look again
        return None

    async def reconcile(
        self, record: ActiveRegion | None, *, activate: bool = False, timeout: float | None = None
    ) -> FenceRead:
        """Bring the key to `target(...)` (at most one compare-and-swap); what it holds after."""
        after = await self._move(
            lambda now: target(self.region, record, now.value, activate=activate), timeout
        )
        return after if after is not None else await self.read(timeout=timeout)

    async def freeze(self, *, timeout: float | None = None) -> FenceRead:
        """`active:<region>@E` -> `frozen:<region>@E` in one transaction; any other value is
        left as it is."""

        def decide(now: FenceRead) -> FenceValue | None:
            v = now.value
            return FenceValue.frozen(self.region, v.epoch) if v and v.state == "active" else None

        after = await self._move(decide, timeout)
        return after if after is not None else await self.read(timeout=timeout)

    async def step_down(self, record: ActiveRegion, *, timeout: float | None = None) -> FenceRead:
        """After `record` took over, for a region other than `record.region`: a key below its
        epoch moves on in one transaction, `active:` to `frozen:`, anything else (missing,
        `standby:`) to `standby:<record.region>@<epoch>`; `frozen:` keys and keys at or above
        the epoch are left alone (a writer holding an older record can never undo a newer
        switch). Moving every key on, not only `active:` ones, makes any compare-and-swap
        prepared from a read before the switch fail."""

        def decide(now: FenceRead) -> FenceValue | None:
            v = now.value
            if v is not None and (v.epoch >= record.epoch or v.state == "frozen"):
                return None
            if v is not None and v.state == "active":
                return FenceValue.frozen(self.region, v.epoch)
            return FenceValue.standby(record.region, record.epoch)

        after = await self._move(decide, timeout)
        return after if after is not None else await self.read(timeout=timeout)

    async def activate(self, epoch: int, *, timeout: float | None = None) -> FenceRead:
        """Make this region writable in `epoch`: only to be called by whoever unfences `epoch`
        in the global record, after the fence wait and before the unfence. Refuses to move
        the key back to an older epoch."""
        want = FenceValue.active(self.region, epoch)

        def decide(now: FenceRead) -> FenceValue | None:
            v = now.value
            if v == want:
                return None
            if v is not None and (v.epoch > epoch or (v.state == "frozen" and v.epoch == epoch)):
                raise FenceChanged(
                    f"{self.region}: the fence key is at epoch {v.epoch} ({v}); "
                    f"epoch {epoch} is over",
                    now,
                )
            return want

        after = await self._move(decide, timeout)
        if after is None:
            raise FenceChanged(f"{self.region}: the fence key keeps changing", await self.read())
        return after


class RegionFences:
    """The fence keys of every region, through one client per regional etcd. Used by `haplane
    up`, `haplane failover` and the failover controller."""

    def __init__(self, clients: Mapping[str, EtcdClient], *, key: bytes = FENCE_KEY):
        self.fences = {region: RegionFence(region, c, key=key) for region, c in clients.items()}

    def __getitem__(self, region: str) -> RegionFence:
        return self.fences[region]

    async def _each(
        self,
        work: Callable[[RegionFence], Awaitable[FenceRead]],
        regions: list[RegionFence] | None = None,
    ) -> dict[str, FenceRead | None]:
        """`work` on every region's key at once (or on `regions`); None for a region whose
        etcd did not answer."""

        async def one(f: RegionFence) -> FenceRead | None:
            try:
                return await work(f)
            except EtcdError:
                return None

        fences = list(self.fences.values()) if regions is None else regions
        reads = await asyncio.gather(*(one(f) for f in fences))
        return {f.region: r for f, r in zip(fences, reads, strict=True)}

    async def read_all(self, *, timeout: float | None = None) -> dict[str, FenceRead | None]:
        """Every region's key; None for a region whose etcd did not answer."""
        return await self._each(lambda f: f.read(timeout=timeout))

    async def reconcile_all(
        self, record: ActiveRegion | None, *, activate: bool = False, timeout: float | None = None
    ) -> dict[str, FenceRead | None]:
        """`RegionFence.reconcile` in every region that answers (None for the others)."""
        return await self._each(lambda f: f.reconcile(record, activate=activate, timeout=timeout))

    async def freeze_others(
        self, record: ActiveRegion, *, timeout: float | None = None
    ) -> dict[str, FenceRead | None]:
        """`RegionFence.step_down` in every region but `record.region` whose etcd answers (a
        region that does not is left to the time-based fence, and frozen when it answers)."""
        others = [f for r, f in self.fences.items() if r != record.region]
        return await self._each(lambda f: f.step_down(record, timeout=timeout), others)

    async def highest_epoch(self, *, timeout: float | None = None) -> int:
        """The highest epoch any region's key names (0: none answered or none has a key): a
        global record rebuilt after the control etcd lost its data must start above it, or
        no key would ever let a region write again."""
        reads = await self.read_all(timeout=timeout)
        return max((r.value.epoch for r in reads.values() if r and r.value), default=0)

    async def close(self) -> None:
        for f in self.fences.values():
            with contextlib.suppress(Exception):
                await f.client.close()
