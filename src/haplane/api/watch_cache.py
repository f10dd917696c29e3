"""The watch cache: one etcd watch per resource per replica feeds an in-memory copy and a window
of recent events, from which client watches and cached reads are served.

Layer: api. Wraps `EtcdStorage` behind the same `Storage` interface (k8s.io/apiserver's Cacher
does the same).

What it serves, and what it does not:
- watches: from the event window; a version older than the window is 410 Expired (the client
  relists); many client watches cost one etcd watch;
- lists and gets with resourceVersion "0", or "not older than N" when the cache has reached N:
  from memory (`limit` is ignored there, as kube-apiserver did for cached lists);
- reads without a resourceVersion stay linearizable: they go to etcd as quorum reads. Proving
  the cache fresh through etcd progress notifications is unsafe on the etcd versions here
  (etcd#15220, fixed only in 3.4.25 / 3.5.8), so "not older than N" for an N the cache has not
  seen goes to etcd too instead of waiting;
- until the first list completes, and after etcd failures, everything falls back to etcd.
The etcd watch resumes on another member from the last revision (see `EtcdClient.watch`); only
compaction forces a relist, which also ends the client watches (with 410) that the window can no
longer serve consistently.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from . import storage
from .storage import EtcdStorage, ListResult, Obj, StorageEvent

log = logging.getLogger("haplane.api")

HISTORY_EVENTS = 5000  # the event window, per resource
WATCHER_QUEUE = 20000  # a client watch further behind than this is ended (it relists)


class _Expired:
    """Put on a watcher's queue: the cache relisted or the watcher fell too far behind."""


_EXPIRED = _Expired()


class Subscriber(Protocol):
    """Kept in step with a cache, synchronously, inside the cache's own task (so it must be
    quick): the authorizer's RBAC index is one. `reset` after every (re)list, with every
    object; then `put` and `delete` per event, in revision order."""

    def reset(self, objects: dict[str, Obj]) -> None: ...

    def put(self, key: str, obj: Obj) -> None: ...

    def delete(self, key: str, old: Obj) -> None: ...


class Cacher:
    def __init__(self, inner: EtcdStorage, prefix: str, history: int = HISTORY_EVENTS):
        self.inner = inner
        self.prefix = prefix
        self.objects: dict[str, Obj] = {}
        self._buckets: dict[str, dict[str, Obj]] = {}  # first key segment (namespace) -> objects
        # For the lifecycle controllers, kept up to date event by event so that a controller
        # round costs what it acts on, not the size of the resource (see `lifecycle_view`):
        self.by_uid: dict[str, Obj] = {}
        self.lifecycle: dict[str, Obj] = {}  # key -> objects with ownerReferences or deleting
        self.revision = 0
        self.oldest = 0  # the window holds every event with revision > oldest
        self.ready = False
        self._history: deque[StorageEvent] = deque(maxlen=history)
        self._watchers: set[asyncio.Queue[StorageEvent | _Expired]] = set()
        self._task: asyncio.Task[None] | None = None
        self.relists = 0
        self.changes = 0  # counts every change to `objects` (readers cache what they derive)
        self.stopped = False
        self.subscribers: list[Subscriber] = []

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"watch cache {self.prefix}")

    async def stop(self) -> None:
        self.ready = False  # readers fall back to etcd from now on
        self.stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._expire_watchers()

    async def restart(self) -> None:
        """Relist from etcd and end every watcher (they re-watch): after an epoch change, so
        that cached objects carry versions of the new epoch."""
        await self.stop()
        self.stopped = False
        self.start()

    async def _run(self) -> None:
        backoff = 0.2  # doubles while relists meet a value that cannot be decrypted (each
        # one would), up to 5 s; etcd trouble keeps 0.2 s (recovery must stay quick)
        while True:
            try:
                listed = await self.inner.list(self.prefix)
                backoff = 0.2
                self.objects = {}
                self.changes += 1
                self._buckets = {}
                self.by_uid = {}
                self.lifecycle = {}
                for o in listed.items:
                    self._put(_key(self.prefix, o), o)
                self.revision = self.oldest = listed.revision
                self._history.clear()
                self._expire_watchers()  # they cannot be resumed across a relist
                for sub in self.subscribers:
                    sub.reset(dict(self.objects))
                self.ready = True
                self.relists += 1
                async for ev in self.inner.watch(self.prefix, revision=self.revision):
                    self._apply(ev)
            except asyncio.CancelledError:
                raise
            except storage.StorageError as exc:  # compaction or etcd trouble: relist
                self.ready = False
                log.info(
                    json.dumps(
                        {"msg": "watch cache relisting", "prefix": self.prefix, "error": str(exc)}
                    )
                )
                if isinstance(exc, storage.Untransformable):
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                else:
                    await asyncio.sleep(0.2)
            except Exception:  # a bug: keep the cache alive, but not trusted
                self.ready = False
                log.exception("watch cache %s failed", self.prefix)
                await asyncio.sleep(1.0)

    def _apply(self, ev: StorageEvent) -> None:
        if ev.type != "BOOKMARK":
            assert ev.object is not None
            key = ev.key or _key(self.prefix, ev.object)
            if ev.type == "DELETED":
                old = self.objects.pop(key, None)
                self.changes += 1
                if old is not None:
                    self._unindex(key, old)
                    for sub in self.subscribers:
                        sub.delete(key, old)
                name = self._bucket_of(key)
                bucket = self._buckets.get(name)
                if bucket is not None:
                    bucket.pop(key, None)
                    if not bucket:
                        del self._buckets[name]
            else:
                self._put(key, ev.object)
                for sub in self.subscribers:
                    sub.put(key, ev.object)
            if len(self._history) == self._history.maxlen and self._history:
                self.oldest = self._history[0].revision
            self._history.append(ev)
        self.revision = max(self.revision, ev.revision)
        for q in list(self._watchers):
            if q.qsize() >= WATCHER_QUEUE:  # too far behind: end it with 410, it relists
                self._watchers.discard(q)
                q.put_nowait(_EXPIRED)
            else:
                q.put_nowait(ev)

    def _expire_watchers(self) -> None:
        for q in self._watchers:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(_EXPIRED)
        self._watchers.clear()

    # ---- serving -------------------------------------------------------------------------

    def _bucket_of(self, key: str) -> str:
        return key[len(self.prefix) :].partition("/")[0]

    def _put(self, key: str, obj: Obj) -> None:
        old = self.objects.get(key)
        if old is not None:
            self._unindex(key, old)
        self.objects[key] = obj
        self.changes += 1
        self._buckets.setdefault(self._bucket_of(key), {})[key] = obj
        uid = (obj.get("metadata") or {}).get("uid")
        if uid:
            self.by_uid[uid] = obj
        if storage.acted_on_by_lifecycle(obj):
            self.lifecycle[key] = obj

    def _unindex(self, key: str, old: Obj) -> None:
        uid = (old.get("metadata") or {}).get("uid")
        if uid and self.by_uid.get(uid) is old:
            del self.by_uid[uid]
        self.lifecycle.pop(key, None)

    def snapshot(self, sub_prefix: str) -> tuple[list[Obj], int]:
        """Sorted by key. A namespace's objects come from its bucket: listing one namespace
        costs its size, not the size of the whole resource."""
        rest = sub_prefix[len(self.prefix) :]
        if sub_prefix.startswith(self.prefix) and rest.endswith("/") and rest.count("/") == 1:
            source = self._buckets.get(rest[:-1], {})
        else:
            source = self.objects
        keys = sorted(k for k in source if k.startswith(sub_prefix))
        return [source[k] for k in keys], self.revision

    async def watch(
        self, sub_prefix: str, revision: int | None, tick: float | None = None
    ) -> AsyncIterator[StorageEvent]:
        """Changes under `sub_prefix` after `revision`; `tick`: a `tick_event` after that many
        seconds without yielding (a timeout on this watcher's own queue: no task per event).
        Events of other namespaces do not count: a quiet watch on a busy resource still ticks."""
        start = self.revision if revision is None else revision
        if self.stopped:
            raise storage.Expired("this watch cache was replaced; watch again")
        if start < self.oldest:
            raise storage.Expired(
                f"revision {start} is older than this replica's watch cache window "
                f"(from {self.oldest + 1})"
            )
        # one slot more than the limit, so the _EXPIRED marker always fits
        q: asyncio.Queue[StorageEvent | _Expired] = asyncio.Queue(maxsize=WATCHER_QUEUE + 1)
        # No await between the snapshot of the window and the registration: nothing is missed.
        revisions = [e.revision for e in self._history]
        replay = list(self._history)[bisect.bisect_right(revisions, start) :]
        self._watchers.add(q)
        try:
            last = start
            for ev in replay:
                if (ev.key or "").startswith(sub_prefix):
                    yield ev
                last = ev.revision
            loop = asyncio.get_running_loop()
            yielded_at = loop.time()
            while True:
                if tick is None:
                    item = await q.get()
                else:
                    wake = yielded_at + tick
                    try:
                        if loop.time() >= wake:
                            raise TimeoutError
                        async with asyncio.timeout_at(wake):
                            item = await q.get()
                    except TimeoutError:
                        yield storage.tick_event(last)
                        yielded_at = loop.time()
                        continue
                if isinstance(item, _Expired):
                    raise storage.Expired("the watch cache relisted or this watch fell behind")
                # only what the caller has seen is skipped: one etcd revision may carry several
                # events (a replicated transaction of several source revisions), and each one
                # must reach the watcher, not only the first
                if item.revision <= start and item.type != "BOOKMARK":
                    continue
                if item.type == "BOOKMARK" or (item.key or "").startswith(sub_prefix):
                    yield item
                    yielded_at = loop.time()
                last = max(last, item.revision)
        finally:
            self._watchers.discard(q)


def _key(prefix: str, obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{prefix}{ns}/{meta.get('name')}" if ns else f"{prefix}{meta.get('name')}"


class CachedStorage:
    """`Storage` for one resource type: writes and linearizable reads go to etcd; watches and
    cached reads come from its `Cacher`."""

    def __init__(self, inner: EtcdStorage, cacher: Cacher):
        self.inner = inner
        self.cacher = cacher
        self.versions = inner.versions

    # writes and linearizable reads: etcd
    async def create(self, key: str, obj: Obj, *, guard: tuple[str, int] | None = None) -> Obj:
        return await self.inner.create(key, obj, guard=guard)

    async def get(self, key: str) -> Obj:
        return await self.inner.get(key)

    async def get_at(self, key: str, *, revision: int | None = None) -> tuple[Obj | None, int]:
        return await self.inner.get_at(key, revision=revision)

    async def list(
        self,
        prefix: str,
        *,
        revision: int | None = None,
        start_after: str | None = None,
        limit: int = 0,
    ) -> ListResult:
        return await self.inner.list(
            prefix, revision=revision, start_after=start_after, limit=limit
        )

    async def guaranteed_update(
        self,
        key: str,
        update: Callable[[Obj], Awaitable[storage.UpdateResult]],
        *,
        expected_revision: int | None = None,
        confirm: bool = True,
    ) -> Obj:
        return await self.inner.guaranteed_update(
            key, update, expected_revision=expected_revision, confirm=confirm
        )

    async def current_revision(self) -> int:
        return await self.inner.current_revision()

    # the cache
    def cached_get(self, key: str, min_revision: int) -> tuple[Obj | None, bool]:
        """(object or None, usable): usable when the cache is ready and at `min_revision`."""
        if not self.cacher.ready or self.cacher.revision < min_revision:
            return None, False
        return self.cacher.objects.get(key), True

    def cached_list(self, prefix: str, min_revision: int) -> ListResult | None:
        """From memory, if the cache is ready and at least at `min_revision`; else None."""
        if not self.cacher.ready or self.cacher.revision < min_revision:
            return None
        items, revision = self.cacher.snapshot(prefix)
        return ListResult(items=items, revision=revision, last_key=None, remaining=0)

    def lifecycle_view(self) -> storage.LifecycleView | None:
        """What the lifecycle controllers act on, from the cache's indexes (None: not ready):
        the objects with ownerReferences or a deletionTimestamp, sorted by key, and every
        object by uid (the live index: it may be fresher than the revision, never older)."""
        if not self.cacher.ready:
            return None
        c = self.cacher
        objects = [c.lifecycle[k] for k in sorted(c.lifecycle)]
        return storage.LifecycleView(c.revision, objects, c.by_uid)

    def watch(
        self, prefix: str, *, revision: int | None, tick: float | None = None
    ) -> AsyncIterator[StorageEvent]:
        if not self.cacher.ready:
            return self.inner.watch(prefix, revision=revision, tick=tick)
        return self.cacher.watch(prefix, revision, tick)


def cache_stats(cachers: dict[str, Cacher]) -> dict[str, Any]:
    return {
        p: {
            "ready": c.ready,
            "objects": len(c.objects),
            "revision": c.revision,
            "relists": c.relists,
        }
        for p, c in cachers.items()
    }
