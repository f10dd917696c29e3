"""The storage interface under the API server, and its etcd implementation.

Layer: api. Talks to etcd only through `haplane.store.EtcdClient`.

Like k8s.io/apiserver's storage.Interface, it is narrow on purpose: a caching implementation
(the watch cache of a later issue) wraps it behind the same methods. Objects are JSON documents
(dicts); the storage sets `metadata.resourceVersion` from the etcd revision (see
`resource_version.py`) and never stores it.

Method contracts (revisions are etcd revisions):
- create: one txn guarded by `mod_revision == 0`; KeyExists if present.
- get: a linearizable read; KeyNotFound if absent.
- list: a linearizable range read at `revision` (None: latest), keys after `start_after`,
  at most `limit` (0: all); Expired if `revision` was compacted.
- guaranteed_update: read, apply `update`, write in a txn guarded by the read revision; a lost
  compare re-reads and re-applies (never visible to the caller) unless the caller pinned
  `expected_revision`, which then fails with Conflict. An unchanged object is not written;
  `DELETE_OBJECT` from `update` deletes it under the same guard (finalizers done).
- watch: events after `revision` (None: from now) under a prefix; Expired if compacted.
Every etcd outcome maps to: Unavailable (certainly not applied), OutcomeUnknown (maybe applied).

With synchronous replication (`acknowledge`), a committed write of a replicated key returns
only once a synchronous standby confirmed it or `sync: none` is recorded
(`haplane.api.sync_ack`); otherwise OutcomeUnknown (504: committed here, unknown elsewhere).

Every write (create, update, delete; the lifecycle controllers and leader election write
through the same methods) is one transaction that, with a `DataFence`, also compares the
region's fence key with `active:<region>@<epoch of the permit>`. Its failure branch reads the
fence key last, so a fence mismatch is told apart from a lost compare-and-swap: it is
`WriteFenced` (503), never retried, and `guaranteed_update` does not spin on it.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from haplane.auth.encryption import EncryptionError
from haplane.store import (
    FENCE_KEY,
    Compare,
    EtcdClient,
    EtcdCompacted,
    EtcdError,
    EtcdOutcomeUnknown,
    EtcdRejected,
    EtcdWindowClosed,
    FenceRead,
    FenceValue,
    KeyValue,
    Op,
    TxnResult,
    boottime,
    prefix_end,
    replicated,
)

from .fencing import MIN_WRITE_WINDOW, Fenced, WriteFence
from .resource_version import VersionContext
from .sync_ack import Unconfirmed

Obj = dict[str, Any]
# etcd's default --max-request-bytes is 1.5 MiB; leave room for the key and txn framing.
MAX_VALUE_BYTES = 1536 * 1024 - 4096


# Sorted keys; what is not a JSON type (datetimes, dataclasses, str subclasses) is refused
# as the standard library refuses it, not written in orjson's own way.
_ORJSON_STORED = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a JSON document (JSON cannot carry them)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return True


def _reencoded(stored: bytes) -> bytes | None:
    """Stored JSON as `EtcdStorage._encode` writes it today: what an earlier encoder wrote (the
    standard library escaped non-ASCII text) still compares equal when nothing changed. Only
    asked when the bytes differ, i.e. on writes that change something."""
    try:
        return orjson.dumps(orjson.loads(stored), option=_ORJSON_STORED)
    except (orjson.JSONDecodeError, TypeError):
        return None


def _loads(data: bytes) -> Any:
    """Stored JSON: orjson, or the standard library for what only it reads (an escaped lone
    surrogate, written by the fallback in `EtcdStorage._encode`). orjson reads an integer
    beyond 64 bits as a float, as Kubernetes' own JSON decoding does beyond int64 (request
    bodies too: see `request.json_loads`)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def acted_on_by_lifecycle(obj: Obj) -> bool:
    """What the lifecycle controllers look at: objects with owners, and objects being deleted."""
    meta = obj.get("metadata") or {}
    return bool(meta.get("ownerReferences") or meta.get("deletionTimestamp"))


@dataclass(frozen=True)
class LifecycleView:
    """What a watch cache offers the lifecycle controllers (`CachedStorage.lifecycle_view`):
    objects with ownerReferences or a deletionTimestamp (shared: read, never change), every
    object by uid, and the cache's revision."""

    revision: int
    objects: list[Obj]
    by_uid: Mapping[str, Obj]


class StorageError(Exception):
    pass


class KeyNotFound(StorageError):
    pass


class GuardChanged(StorageError):
    """A create's guard key (e.g. its namespace) changed since it was read: nothing written."""


class KeyExists(StorageError):
    def __init__(self, message: str, existing: Obj):
        super().__init__(message)
        self.existing = existing


class Conflict(StorageError):
    pass


class Expired(StorageError):
    pass


class TooLarge(StorageError):
    pass


class Invalid(StorageError):
    """The object cannot be stored as JSON."""


class Untransformable(StorageError):
    """A value that cannot be encrypted or decrypted at rest (a missing or wrong key-encryption
    key, a provider the configuration lost): answered 500, as kube-apiserver's "unable to
    transform key", never with garbage or plain text."""


class Unavailable(StorageError):
    """The request certainly did not take effect."""


class OutcomeUnknown(StorageError):
    """A write may or may not have been applied."""


class Unreplicated(OutcomeUnknown):
    """Committed in this region, not confirmed by its synchronous standby (sync mode)."""


class _WindowClosed(Unavailable):
    """A write's permission ended before it could be sent (turned into `WriteFenced`)."""


class WriteFenced(Unavailable):
    """This replica's region may not write now (see `haplane.api.fencing`)."""

    def __init__(self, message: str, active: str | None):
        super().__init__(message)
        self.active = active


@dataclass(frozen=True)
class DataFence:
    """The fence key every write compares (see `haplane.store.fence_key`): `key` in this
    region's etcd must hold `active:<region>@<epoch>`."""

    region: str
    key: bytes = FENCE_KEY
    # pinned: compare the key's mod revision with this instead (the key as read just before:
    # a standby's own system namespaces, written only while the key stays as it was seen)
    pinned_revision: int | None = None

    def compare(self, epoch: int) -> Compare:
        if self.pinned_revision is not None:
            return Compare(self.key, "mod", "=", self.pinned_revision)
        return Compare(self.key, "value", "=", FenceValue.active(self.region, epoch).encode())

    def holds(self, epoch: int, found: KeyValue | None) -> bool:
        """Does the key as found (None: absent) pass `compare(epoch)`?"""
        if self.pinned_revision is not None:
            return (found.mod_revision if found else 0) == self.pinned_revision
        return found is not None and found.value == FenceValue.active(self.region, epoch).encode()


# (key, etcd revision, epoch it was permitted under, wall time the txn was sent, wall time etcd
# acknowledged it)
WriteJournal = Callable[[str, int, int, float, float], None]


class Transformer(Protocol):
    """Where encryption at rest plugs in: bytes to etcd and back, per key."""

    def to_storage(self, data: bytes, key: bytes) -> bytes: ...
    def from_storage(self, data: bytes, key: bytes) -> bytes: ...


class IdentityTransformer:
    def to_storage(self, data: bytes, key: bytes) -> bytes:
        return data

    def from_storage(self, data: bytes, key: bytes) -> bytes:
        if data.startswith(b"k8s:enc:"):
            raise EncryptionError(
                "it is stored encrypted, and this replica has no encryption configuration "
                "(every replica of every region needs the same one)"
            )
        return data


class _DeleteObject:
    """Returned by a `guaranteed_update` callback: delete the object (guarded like a write)."""

    def __repr__(self) -> str:
        return "DELETE_OBJECT"


DELETE_OBJECT = _DeleteObject()
UpdateResult = Obj | None | _DeleteObject


@dataclass(frozen=True)
class ListResult:
    items: list[Obj]
    revision: int  # the store revision the list was read at
    last_key: str | None  # set when more items remain after the ones returned
    remaining: int  # how many items remain after `last_key` (0 when none)


@dataclass(frozen=True)
class StorageEvent:
    type: str  # ADDED, MODIFIED, DELETED, or BOOKMARK (object None, revision only)
    object: Obj | None
    revision: int
    prev_object: Obj | None = None
    key: str = ""  # the etcd key (empty for BOOKMARK)
    memo: dict[Any, bytes] = field(default_factory=dict, compare=False)  # encodings, shared


class Storage(Protocol):
    versions: VersionContext

    async def create(self, key: str, obj: Obj, *, guard: tuple[str, int] | None = None) -> Obj: ...
    async def get(self, key: str) -> Obj: ...
    async def get_at(self, key: str, *, revision: int | None = None) -> tuple[Obj | None, int]: ...
    async def list(
        self,
        prefix: str,
        *,
        revision: int | None = None,
        start_after: str | None = None,
        limit: int = 0,
    ) -> ListResult: ...
    async def guaranteed_update(
        self,
        key: str,
        update: Callable[[Obj], Awaitable[UpdateResult]],
        *,
        expected_revision: int | None = None,
        confirm: bool = True,
    ) -> Obj: ...
    def watch(
        self, prefix: str, *, revision: int | None, tick: float | None = None
    ) -> AsyncIterator[StorageEvent]: ...
    async def current_revision(self) -> int: ...


def tick_event(revision: int) -> StorageEvent:
    """What a watch yields after `tick` seconds of silence: a BOOKMARK at the last revision it
    delivered (true by construction), so its reader can look at the clock and its client."""
    return StorageEvent("BOOKMARK", None, revision)


async def with_ticks(
    events: AsyncIterator[StorageEvent], tick: float
) -> AsyncIterator[StorageEvent]:
    """`events`, plus `tick_event` after every `tick` seconds of silence. One pump task per
    watch: a timeout on `anext` itself would close the generator it cancels."""
    q: asyncio.Queue[StorageEvent | BaseException | None] = asyncio.Queue(maxsize=1)

    async def pump() -> None:
        try:
            async for ev in events:
                await q.put(ev)
            await q.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the reader, which raises it
            await q.put(exc)

    task = asyncio.create_task(pump())
    last = 0
    try:
        while True:
            try:
                async with asyncio.timeout(tick):
                    item = await q.get()
            except TimeoutError:
                yield tick_event(last)
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            last = max(last, item.revision)
            yield item
    finally:
        task.cancel()
        # wait() does not raise the task's own CancelledError, and leaves one aimed at us alone
        await asyncio.wait({task})
        await events.aclose()  # type: ignore[attr-defined]


class EtcdStorage:
    def __init__(
        self,
        client: EtcdClient,
        versions: VersionContext,
        transformer: Transformer | None = None,
        observe: Callable[[str, float], None] | None = None,
        fence: WriteFence | None = None,
        journal: WriteJournal | None = None,
        data_fence: DataFence | None = None,
        before_send: Callable[[str], Callable[[], None] | None] | None = None,
        acknowledge: Callable[[int, int, float], Awaitable[None]] | None = None,
    ):
        self.client = client
        self.versions = versions
        self.transformer: Transformer = transformer or IdentityTransformer()
        self.observe = observe
        self.fence = fence
        self.journal = journal
        self.data_fence = data_fence
        # a test hook: for a key, something to call right before its request goes out
        self.before_send = before_send
        # synchronous replication (`haplane.api.sync_ack.SyncAck.acknowledge`): awaited after
        # each committed write of a replicated key, before it is acknowledged
        self.acknowledge = acknowledge

    async def put_raw(self, key: bytes, value: bytes) -> None:
        """Put a raw key (not an object: the replication heartbeat) under the same permission
        and fence as every write; not journaled (it is no client's write)."""
        await self._write(key.decode(), [], [Op("put", key, value)], [], "put", journal=False)

    async def _write(
        self,
        key: str,
        compares: list[Compare],
        success: list[Op],
        failure: list[Op],
        op: str,
        *,
        journal: bool = True,
    ) -> TxnResult:
        """Every write goes through here: refused unless this region may write, sent only if
        its permission has `MIN_WRITE_WINDOW` left at send time (an absolute end: a pause
        after the check cannot stretch it), guarded by the fence key; acknowledged ones are
        journaled. The caller's failure ops come back as they were asked."""
        deadline: float | None = None
        fence_bound = False  # the permission, not the client's timeout, ends the window
        epoch = self.versions.epoch
        if self.fence is not None:
            try:
                permit = self.fence.permit()
            except Fenced as exc:
                raise WriteFenced(str(exc), exc.active) from None
            epoch = permit.epoch
            if permit.deadline != float("inf"):
                # the permission's end is on the boot clock, as the client's deadlines are
                timeout_end = boottime() + self.client.timeout
                deadline = min(permit.deadline, timeout_end)
                fence_bound = permit.deadline <= timeout_end
        if self.data_fence is not None:
            compares = [*compares, self.data_fence.compare(epoch)]
            failure = [*failure, Op("get", self.data_fence.key)]
        sent = time.time()
        try:
            r = await _call(
                self.client.txn(
                    compares,
                    success,
                    failure,
                    deadline=deadline,
                    min_window=MIN_WRITE_WINDOW if deadline is not None else 0.0,
                    before_send=self.before_send(key) if self.before_send else None,
                ),
                self._observer(op),
            )
        except _WindowClosed as exc:
            if not fence_bound:  # etcd did not answer in the client's own timeout
                raise Unavailable(f"no etcd member could take the write: {exc}") from None
            active = self.fence.record.region if self.fence and self.fence.record else None
            raise WriteFenced(
                f"the write permission ran out before the request could be sent ({exc})", active
            ) from None
        if self.data_fence is not None and not r.succeeded:
            fence_kv = r.results[-1]
            r = TxnResult(r.succeeded, r.revision, r.results[:-1])
            found = fence_kv[0] if fence_kv else None
            if not self.data_fence.holds(epoch, found):
                raise await self._fence_mismatch(epoch, FenceRead.of(found))
        if r.succeeded and journal and self.acknowledge is not None and replicated(key.encode()):
            try:
                await self.acknowledge(r.revision, epoch, time.monotonic())
            except Unconfirmed as exc:
                raise Unreplicated(str(exc)) from None
        if r.succeeded and journal and self.journal is not None:
            self.journal(key, r.revision, epoch, sent, time.time())
        return r

    async def _confirm(self, key: str, revision: int) -> None:
        """Sync mode: a write answered from what is stored rather than by a new revision (an
        update that changes nothing, a create that finds the object, a delete or update that
        finds none) answers only once the standby applied `revision`, the state it reports:
        a write answered 504 and retried must not get a success (or a 409 or 404 a client
        takes for one) its standby lacks. Refused (503) where this region may not write."""
        if self.acknowledge is None or not replicated(key.encode()):
            return
        epoch = self.versions.epoch
        if self.fence is not None:
            try:
                epoch = self.fence.permit().epoch
            except Fenced as exc:
                raise WriteFenced(str(exc), exc.active) from None
        try:
            await self.acknowledge(revision, epoch, time.monotonic())
        except Unconfirmed as exc:
            raise Unreplicated(str(exc)) from None

    async def _fence_mismatch(self, epoch: int, found: FenceRead) -> WriteFenced:
        """The refusal for a write the fence key stopped, naming the active region: read
        from the global record now (a refusal is rare, and the key says who is active only
        for a standby)."""
        assert self.data_fence is not None
        region = self.data_fence.region
        v = found.value
        if self.data_fence.pinned_revision is not None:
            return WriteFenced(
                f"region {region}'s fence key changed since it was read (now {v}): nothing written",
                v.region if v is not None and v.state == "standby" else None,
            )
        record = await self.fence.refresh_now() if self.fence is not None else None
        elsewhere = record.region if record is not None and record.region != region else None
        where = (
            f"; writes go to region {elsewhere} (epoch {record.epoch})"
            if record is not None and elsewhere
            else ""
        )
        if v is None:
            what = (
                "has no fence key (fenced until `haplane up`, an unfence or the failover "
                "controller's reconcile sets it)"
                if found.raw is None
                else f"has a malformed fence key {found.raw!r}"
            )
            return WriteFenced(f"region {region} {what}{where}", elsewhere)
        if v.state == "standby":
            return WriteFenced(
                f"region {region} is a standby of {v.region} (epoch {v.epoch}): the data fence "
                "refused the write",
                v.region,
            )
        if v.state == "frozen":
            return WriteFenced(
                f"region {region} has been frozen since epoch {v.epoch}: the data fence refused "
                f"the write{where}",
                elsewhere,
            )
        return WriteFenced(
            f"region {region} is active in epoch {v.epoch}, this replica wrote under epoch "
            f"{epoch}: the data fence refused the write{where}",
            region if v.epoch > epoch else elsewhere,
        )

    def _observer(self, operation: str) -> Callable[[float], None] | None:
        observe = self.observe
        return None if observe is None else (lambda seconds: observe(operation, seconds))

    # ---- codec ---------------------------------------------------------------------------

    def _encode(self, key: str, obj: Obj) -> tuple[bytes, bytes, bool]:
        """(plain JSON, bytes for etcd, exact): compact, keys sorted, so that an unchanged
        object encodes to the bytes stored (`guaranteed_update` skips such writes). `exact`:
        decoding the plain JSON gives `obj` back (orjson wrote it; the standard library's
        fallback writes integers beyond 64 bits, which come back as floats). `obj` holds JSON
        types only, as everything the API builds does."""
        meta = obj.get("metadata") or {}
        stored = {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}
        try:
            # orjson: ~15x faster than the standard library here (bench/json_codecs.py)
            plain: bytes | None = orjson.dumps(stored, option=_ORJSON_STORED)
        except TypeError:  # an integer beyond 64 bits or a lone surrogate: only the standard
            plain = None  # library writes those (the surrogate escaped: valid UTF-8)
        # orjson writes NaN and infinities as null: only an object with a null is walked
        if (plain is None or b"null" in plain) and not finite(stored):
            raise Invalid("the object holds a number that JSON cannot carry (NaN or Infinity)")
        exact = plain is not None
        if plain is None:
            plain = json.dumps(stored, separators=(",", ":"), sort_keys=True).encode()
        data = self._to_storage(plain, key.encode())
        if len(data) > MAX_VALUE_BYTES:
            raise TooLarge(f"object is {len(data)} bytes; etcd accepts at most {MAX_VALUE_BYTES}")
        return plain, data, exact

    def _to_storage(self, plain: bytes, key: bytes) -> bytes:
        try:
            return self.transformer.to_storage(plain, key)
        except EncryptionError as exc:
            what = key.decode(errors="replace")
            raise Untransformable(f"unable to encrypt {what}: {exc}") from None

    def _from_storage(self, data: bytes, key: bytes) -> bytes:
        try:
            return self.transformer.from_storage(data, key)
        except EncryptionError as exc:
            what = key.decode(errors="replace")
            raise Untransformable(f"unable to decrypt {what}: {exc}") from None

    def _with_version(self, plain: bytes, revision: int) -> Obj:
        out: Obj = _loads(plain)
        out["metadata"]["resourceVersion"] = self.versions.encode(revision)
        return out

    def _decode(self, kv: KeyValue, revision: int | None = None) -> Obj:
        obj: Obj = _loads(self._from_storage(kv.value, kv.key))
        obj.setdefault("metadata", {})["resourceVersion"] = self.versions.encode(
            revision if revision is not None else kv.mod_revision
        )
        return obj

    # ---- operations ----------------------------------------------------------------------

    async def create(self, key: str, obj: Obj, *, guard: tuple[str, int] | None = None) -> Obj:
        """Create-if-absent; `guard` (key, mod revision): only if that key is still unchanged
        (`GuardChanged` otherwise), in the same transaction."""
        k = key.encode()
        plain, data, exact = self._encode(key, obj)
        compares = [Compare(k, "mod", "=", 0)]
        if guard is not None:
            compares.append(Compare(guard[0].encode(), "mod", "=", guard[1]))
        r = await self._write(key, compares, [Op("put", k, data)], [Op("get", k)], "create")
        if not r.succeeded:
            if not r.results[0]:
                raise GuardChanged(f"{guard[0] if guard else '?'} changed since it was read")
            await self._confirm(key, r.results[0][0].mod_revision)
            raise KeyExists(f"{key} exists", self._decode(r.results[0][0]))
        if exact and isinstance(obj.get("metadata"), dict):
            # what decoding `plain` would give, without decoding it (the caller hands `obj`
            # over: nested values are shared with the result)
            created = {**obj, "metadata": dict(obj["metadata"])}
            created["metadata"]["resourceVersion"] = self.versions.encode(r.revision)
            return created
        return self._with_version(plain, r.revision)

    async def get(self, key: str) -> Obj:
        kv = await _call(self.client.get(key.encode()), self._observer("get"))
        if kv is None:
            raise KeyNotFound(key)
        return self._decode(kv)

    async def get_at(self, key: str, *, revision: int | None = None) -> tuple[Obj | None, int]:
        """One key and the store revision of the same read (None: absent)."""
        kvs, read_rev = await _call(
            self.client.range(key.encode(), revision=revision or 0), self._observer("get")
        )
        return (self._decode(kvs[0]) if kvs else None), revision or read_rev

    async def list(
        self,
        prefix: str,
        *,
        revision: int | None = None,
        start_after: str | None = None,
        limit: int = 0,
    ) -> ListResult:
        p = prefix.encode()
        start = (start_after.encode() + b"\0") if start_after else p
        kvs, read_rev, count = await _call(
            self.client.range_page(start, prefix_end(p), revision=revision or 0, limit=limit),
            self._observer("list"),
        )
        more = bool(limit) and count > len(kvs)
        return ListResult(
            items=[self._decode(kv) for kv in kvs],
            revision=revision or read_rev,
            last_key=kvs[-1].key.decode() if more and kvs else None,
            remaining=count - len(kvs) if more else 0,
        )

    async def guaranteed_update(
        self,
        key: str,
        update: Callable[[Obj], Awaitable[UpdateResult]],
        *,
        expected_revision: int | None = None,
        confirm: bool = True,
    ) -> Obj:
        """`confirm=False` (dry runs): answers from what is stored without the sync-mode
        confirmation (nothing is written, nothing acknowledged)."""
        k = key.encode()
        kvs, read_rev = await _call(self.client.range(k), self._observer("get"))
        kv = kvs[0] if kvs else None
        while True:
            if kv is None:
                if confirm:
                    await self._confirm(key, read_rev)
                raise KeyNotFound(key)
            if expected_revision is not None and kv.mod_revision != expected_revision:
                raise Conflict(
                    "the object has been modified; please apply your changes to "
                    "the latest version and try again"
                )
            current = self._decode(kv)
            new = await update(current)
            if new is None:
                if confirm:
                    await self._confirm(key, kv.mod_revision)
                return current
            if isinstance(new, _DeleteObject):
                r = await self._write(
                    key,
                    [Compare(k, "mod", "=", kv.mod_revision)],
                    [Op("delete", k)],
                    [Op("get", k)],
                    "delete",
                )
                if r.succeeded:
                    return self._decode(kv, revision=r.revision)
                kv = r.results[0][0] if r.results[0] else None
                read_rev = r.revision
                continue
            plain, data, _ = self._encode(key, new)
            stored = self._from_storage(kv.value, k)
            if plain == stored or plain == _reencoded(stored):
                if confirm:
                    await self._confirm(key, kv.mod_revision)
                return current  # no change: no write, no new revision (as Kubernetes)
            r = await self._write(
                key,
                [Compare(k, "mod", "=", kv.mod_revision)],
                [Op("put", k, data)],
                [Op("get", k)],
                "update",
            )
            if r.succeeded:
                return self._with_version(plain, r.revision)
            kv = r.results[0][0] if r.results[0] else None  # lost the race: retry on fresh state
            read_rev = r.revision

    def watch(
        self, prefix: str, *, revision: int | None, tick: float | None = None
    ) -> AsyncIterator[StorageEvent]:
        """Events strictly after `revision` (None: from now on); `tick`: see `with_ticks`."""
        events = self._watch(prefix, revision)
        return with_ticks(events, tick) if tick else events

    async def _watch(self, prefix: str, revision: int | None) -> AsyncIterator[StorageEvent]:
        start = (revision + 1) if revision is not None else 0
        try:
            async for batch in self.client.watch(
                prefix.encode(), prefix=True, start_revision=start
            ):
                if not batch.events:
                    # A progress answer proves the member alive; its revision can run ahead of
                    # events still queued (etcd#15220), so it is not passed on as a bookmark.
                    continue
                for ev in batch.events:
                    if ev.type == "PUT":
                        kind = (
                            "ADDED" if ev.kv.create_revision == ev.kv.mod_revision else "MODIFIED"
                        )
                        prev = self._decode(ev.prev_kv) if ev.prev_kv else None
                        yield StorageEvent(
                            kind,
                            self._decode(ev.kv),
                            ev.kv.mod_revision,
                            prev,
                            key=ev.kv.key.decode(),
                        )
                    else:
                        if ev.prev_kv is None:
                            # the deleted object's last state was compacted away: the client
                            # must relist rather than keep a ghost
                            raise Expired(f"deleted object {ev.kv.key!r} no longer in history")
                        gone = self._decode(ev.prev_kv, revision=ev.kv.mod_revision)
                        yield StorageEvent(
                            "DELETED", gone, ev.kv.mod_revision, gone, key=ev.kv.key.decode()
                        )
        except EtcdCompacted as exc:
            raise Expired(str(exc)) from exc
        except EtcdError as exc:
            raise Unavailable(str(exc)) from exc

    async def current_revision(self) -> int:
        _, rev = await _call(
            self.client.range(b"/registry/", prefix_end(b"/registry/"), limit=1),
            self._observer("get"),
        )
        return rev


T = TypeVar("T")


async def _call(aw: Awaitable[T], observe: Callable[[float], None] | None = None) -> T:
    """Translate store errors into storage errors; report the call's latency to `observe`."""
    t0 = time.monotonic()
    try:
        return await aw
    except EtcdWindowClosed as exc:
        raise _WindowClosed(str(exc)) from exc
    except EtcdOutcomeUnknown as exc:
        raise OutcomeUnknown(str(exc)) from exc
    except EtcdCompacted as exc:
        raise Expired(str(exc)) from exc
    except EtcdRejected as exc:
        if exc.code == "RequestTooLarge":
            raise TooLarge(str(exc)) from exc
        raise Unavailable(str(exc)) from exc
    except EtcdError as exc:
        raise Unavailable(str(exc)) from exc
    finally:
        if observe is not None:
            observe(time.monotonic() - t0)
