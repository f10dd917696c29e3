"""The HTTP face of one API server replica: Kubernetes REST paths, discovery, OpenAPI, health,
metrics, and draining on SIGTERM. Served by aiohttp.

Layer: api. Uses the generic store for resources and the etcd client for health only.

Request path (the filter chain, in order): response headers and metrics -> Status errors ->
authentication -> authorization -> (handler) admission -> storage. Authentication and
authorization pass everything for now (security is a later issue: bind to loopback until then);
each is one function so the real ones replace them without touching handlers.

Wire conventions clients rely on (FIELD-NOTES): every JSON response has
`Content-Type: application/json` exactly; lists always carry `items`; objects always carry
`apiVersion` and `kind`; watches are newline-delimited JSON events, flushed per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import yaml
from aiohttp import HttpVersion11, web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from haplane import __version__
from haplane.store import (
    FENCE_KEY,
    HEARTBEAT_KEY,
    EtcdClient,
    EtcdError,
    GlobalState,
    Heartbeat,
)

from . import errors, protobuf, tables
from .controllers import Controllers, LeaderElector
from .crds import CRD_TYPE, resource_types_for, to_scale
from .errors import StatusError
from .fencing import Fenced, WriteFence
from .generic_store import NAMESPACE_KEY, GenericStore, ListOptions
from .patch import PatchError, apply_json_patch, apply_merge_patch, apply_strategic_merge_patch
from .resource_version import VersionContext
from .resources import BUILTIN, Obj, Registry, ResourceType
from .selectors import SelectorError, parse_field_selector, parse_label_selector
from .storage import MAX_VALUE_BYTES, DataFence, EtcdStorage, StorageError, finite
from .sync_ack import SyncAck, SyncConfig
from .watch_cache import CachedStorage, Cacher

log = logging.getLogger("haplane.api")

JSON = "application/json"
KUBE_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0+haplane"}
MAX_BODY_BYTES = 3 * 1024 * 1024  # kube-apiserver's limit; etcd's is checked per object
READY_TIMEOUT = 1.0
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
HEARTBEAT_EVERY = 0.1  # seconds between the writable region's replication heartbeats
# A test hook (never set in production): the first write of each key containing this text stops
# the replica (SIGSTOP) after every client-side check, right before its request goes out.
# It stands for a stall inside the send that no deadline can see: only the data fence is left.
STALL_HOOK_ENV = "HAPLANE_TEST_STALL_BEFORE_SEND"

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
Admission = Callable[[str, ResourceType, dict[str, Any]], Awaitable[None]]


_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class ReplicaConfig:
    region: str
    replica: str
    host: str
    port: int
    etcd_endpoints: list[str]
    drain_delay: float = 1.0  # /readyz fails this long before the listener closes
    etcd_timeout: float = 2.0
    lease_duration: float = 3.0  # controllers move to another replica this soon after a death
    watch_cache: bool = True
    admission: list[Admission] = field(default_factory=list)
    # The global control etcd: writes are fenced by the global state (haplane.api.fencing).
    # Empty: a bare replica, always writable under epoch 0 (tests, benchmarks).
    global_endpoints: list[str] = field(default_factory=list)
    global_prefix: str = "/haplane/global/"
    fence_poll: float = 0.1
    # The data fence (haplane.store.fence_key): every write compares this key in the region's
    # etcd with `active:<region>@<epoch>`. None: on when the global fence is (a bare replica
    # compares under epoch 0 only when asked, for benchmarks).
    data_fence: bool | None = None
    fence_key: str = FENCE_KEY.decode()
    # JSON lines, one per acknowledged write (region, epoch, key, revision, sent, acked): the
    # servers' own record that drills check for writes of two epochs interleaving.
    write_log: str | None = None
    # synchronous replication (haplane.api.sync_ack): this region's synchronous standbys, or
    # None (asynchronous: a write is acknowledged once this region's etcd committed it)
    sync: SyncConfig | None = None


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=errors.dumps(body), status=status, content_type=JSON, headers=headers)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "apiserver_request_total",
            "API requests",
            ["verb", "resource", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "apiserver_request_duration_seconds",
            "API request latency",
            ["verb", "resource"],
            registry=self.registry,
        )
        self.watches = Gauge(
            "apiserver_watches", "open watches", ["resource"], registry=self.registry
        )
        self.etcd_latency = Histogram(
            "etcd_request_duration_seconds",
            "etcd call latency",
            ["operation"],
            registry=self.registry,
        )
        # `labels()` validates and hashes its arguments on every call: keep the children
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._etcd_children: dict[str, Any] = {}

    def observe(self, verb: str, resource: str, code: int, seconds: float) -> None:
        key = (verb, resource, code)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(verb, resource, str(code)),
                self.latency.labels(verb, resource),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_etcd(self, operation: str, seconds: float) -> None:
        child = self._etcd_children.get(operation)
        if child is None:
            child = self._etcd_children[operation] = self.etcd_latency.labels(operation)
        child.observe(seconds)


@dataclass
class _Target:
    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    watch_path: bool


class ApiServer:
    def __init__(self, config: ReplicaConfig, registry: Registry | None = None):
        self.config = config
        self.registry = registry or Registry([*BUILTIN, CRD_TYPE])
        self.metrics = Metrics()
        self.client = EtcdClient(config.etcd_endpoints, timeout=config.etcd_timeout)
        self.versions: VersionContext | None = None
        self.stores: dict[tuple[str, str, str], GenericStore] = {}
        self.draining = False
        self._watch_stop = asyncio.Event()
        self._inflight = 0
        self._runner: web.ServerRunner | None = None
        self._ready_cache: tuple[float, bool] = (0.0, False)
        self.controllers: Controllers | None = None
        self._crd_types: dict[str, list[tuple[str, str, str]]] = {}
        self._terminating_crds: set[str] = set()
        self._crd_task: asyncio.Task[None] | None = None
        self._storage: EtcdStorage | None = None
        self._cachers: dict[str, Cacher] = {}
        self.elector: LeaderElector | None = None
        self._elector_task: asyncio.Task[None] | None = None
        self._global_client = (
            EtcdClient(config.global_endpoints, timeout=0.5) if config.global_endpoints else None
        )
        self.fence = WriteFence(
            config.region,
            self._global_client,
            prefix=config.global_prefix.encode(),
            poll=config.fence_poll,
            on_epoch=self._epoch_changed,
            on_permitted=self._became_writable,
        )
        self._write_log = open(config.write_log, "a", buffering=1) if config.write_log else None  # noqa: SIM115
        self._background: set[asyncio.Task[None]] = set()
        self._gc_paused: str | None = None  # why this region's garbage collector is paused
        self._events_raised: set[str] = set()  # divergence Events already created
        self._cluster_id = 0
        self.sync: SyncAck | None = None
        if config.sync is not None and config.sync.standbys and self._global_client is not None:
            self.sync = SyncAck(
                config.region,
                config.sync,
                self._global_client,
                config.global_prefix.encode(),
                cluster_id=lambda: self._cluster_id,
                name=f"{config.region}/{config.replica}",
                registry=self.metrics.registry,
            )

    # ---- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        cluster_id = await self.client.cluster_id(timeout=10.0)
        self._cluster_id = cluster_id
        self.versions = VersionContext.for_cluster(cluster_id, epoch=0)
        self.fence.start()
        if self.fence.enabled:
            # the first answer sets the epoch before anything is cached or handed out
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self.fence.first_read.wait()
            self.versions.epoch = self.fence.epoch
        data_fence = (
            self.config.data_fence if self.config.data_fence is not None else self.fence.enabled
        )
        store = EtcdStorage(
            self.client,
            self.versions,
            observe=self.metrics.observe_etcd,
            fence=self.fence if self.fence.enabled else None,
            journal=self._journal if self._write_log is not None else None,
            data_fence=DataFence(self.config.region, self.config.fence_key.encode())
            if data_fence
            else None,
            before_send=_stall_hook(os.environ.get(STALL_HOOK_ENV)),
            acknowledge=self.sync.acknowledge if self.sync is not None else None,
        )
        if self.sync is not None:
            self.sync.start()
        self._storage = store
        for t in self.registry.all():
            self.stores[(t.group, t.version, t.plural)] = self._make_store(t)
        try:
            await self._ensure_system_namespaces()
        except (StatusError, EtcdError) as exc:
            if not self.fence.enabled or (
                isinstance(exc, StatusError) and exc.code not in (503, 504)
            ):
                raise
            # fenced (the region's key not active yet, or no permission), the fence key
            # unreadable, or (504) not yet confirmed by a synchronous standby: not fatal; tried
            # again while this replica is permitted, and each time it becomes writable
            log.info(json.dumps({"msg": "system namespaces not ensured", "error": str(exc)}))
            self._spawn(self._ensure_system_namespaces_later(), "system namespaces")
        crd_rv = await self._sync_all_crds()
        self._crd_task = asyncio.create_task(self._watch_crds(crd_rv), name="crd sync")
        self.controllers = Controllers(
            lambda: list(self.stores.values()),
            storage_store=self._unserved_crd_store,
            gc_paused=lambda: self._gc_paused,
        )
        if self._global_client is not None:
            self._spawn(self._watch_gc_pause(), "gc pause")
        self.elector = LeaderElector(
            self.stores[("coordination.k8s.io", "v1", "leases")],
            identity=f"{self.name}_{uuid.uuid4().hex[:8]}",
            lease_duration=self.config.lease_duration,
        )
        self._elector_task = asyncio.create_task(
            self.elector.run(self.controllers.leading, may_lead=self._may_write),
            name="leader election",
        )
        self._spawn(self._heartbeat(), "heartbeat")
        if self.sync is not None:
            self._spawn(
                self.sync.keep(epoch=self._writable_epoch, head_revision=store.current_revision),
                "sync keeper",
            )
        # aiohttp's low-level server with the filter chain composed once: an Application's
        # router and per-request middleware wrapping showed at ~6% of a create's CPU, for one
        # catch-all route. Each link keeps the middleware signature (request, handler).
        handler: Handler = self._dispatch
        for link in reversed(
            (self._headers_and_metrics, self._status_errors, self._authenticate, self._authorize)
        ):
            handler = functools.partial(link, handler=handler)
        loop = asyncio.get_running_loop()

        def make_request(
            message: Any, payload: Any, protocol: Any, writer: Any, task: Any
        ) -> web.BaseRequest:
            return web.BaseRequest(
                message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY_BYTES
            )

        server = web.Server(handler, request_factory=make_request, access_log=None)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=10.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        await site.start()
        log.info(
            json.dumps(
                {
                    "msg": "serving",
                    "component": self.name,
                    "address": f"{self.config.host}:{self.config.port}",
                }
            )
        )

    # ---- custom resources ----------------------------------------------------------------

    def _crd_store(self) -> GenericStore:
        return self.stores[(CRD_TYPE.group, CRD_TYPE.version, CRD_TYPE.plural)]

    def _register_crd(self, crd: dict[str, Any]) -> None:
        """(Re)serve a CRD's versions. Its watch cache survives an update (same key prefix):
        restarting it on every CRD change would end every watch on the custom resources."""
        name = crd["metadata"]["name"]
        old = {key: self.stores.get(key) for key in self._crd_types.pop(name, [])}
        for key in old:
            self.registry.remove(*key)
            self.stores.pop(key, None)
        keys = []
        for t in resource_types_for(crd):
            self.registry.add(t)
            key = (t.group, t.version, t.plural)
            self.stores[key] = self._make_store(t)
            keys.append(key)
        self._crd_types[name] = keys
        if crd["metadata"].get("deletionTimestamp"):
            self._terminating_crds.add(name)
        else:
            self._terminating_crds.discard(name)
        for store in old.values():
            if store is not None:
                self._release_cacher(store.t.key_prefix())

    def _unregister_crd(self, name: str) -> None:
        self._terminating_crds.discard(name)
        for key in self._crd_types.pop(name, []):
            self.registry.remove(*key)
            gone = self.stores.pop(key, None)
            if gone is not None:
                self._release_cacher(gone.t.key_prefix())

    def _make_store(self, t: ResourceType) -> GenericStore:
        """A generic store on etcd, behind this replica's watch cache for the resource."""
        assert self._storage is not None, "start() sets the storage first"
        if not self.config.watch_cache:
            return GenericStore(t, self._storage)
        prefix = t.key_prefix()
        cacher = self._cachers.get(prefix)
        if cacher is None:
            cacher = self._cachers[prefix] = Cacher(self._storage, prefix)
            cacher.start()
        return GenericStore(t, CachedStorage(self._storage, cacher), self._cached_namespace)

    def _cached_namespace(self, name: str) -> tuple[Obj | None, bool]:
        cacher = self._cachers.get(NAMESPACE_KEY)
        if cacher is None or not cacher.ready:
            return None, False
        return cacher.objects.get(NAMESPACE_KEY + name), True

    def _unserved_crd_store(self, crd: Obj) -> GenericStore | None:
        """A store straight on etcd for the objects of a CRD none of whose versions is served."""
        types = resource_types_for(crd, served_only=False)
        if not types or self._storage is None:
            return None
        return GenericStore(types[0], self._storage)

    def _release_cacher(self, prefix: str) -> None:
        if any(s.t.key_prefix() == prefix for s in self.stores.values()):
            return  # another served version still uses it
        cacher = self._cachers.pop(prefix, None)
        if cacher is not None:
            asyncio.get_running_loop().create_task(cacher.stop())

    async def _sync_all_crds(self) -> str:
        listed = await self._crd_store().list(None, ListOptions.everything())
        for name in list(self._crd_types):
            self._unregister_crd(name)
        for crd in listed["items"]:
            self._register_crd(crd)
        return str(listed["metadata"]["resourceVersion"])

    async def _watch_crds(self, resource_version: str) -> None:
        """Serve what any replica's CRDs define: follow them in etcd."""
        rv = resource_version
        while True:
            try:
                opts = ListOptions.everything(rv)
                async for ev in self._crd_store().watch(None, opts):
                    if ev.type == "ERROR":
                        raise StatusError(410, "Expired", "crd watch expired")
                    if ev.type in ("ADDED", "MODIFIED"):
                        self._register_crd(ev.object)
                    elif ev.type == "DELETED":
                        self._unregister_crd(ev.object["metadata"]["name"])
                    rv = ev.object["metadata"].get("resourceVersion", rv)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd trouble or compaction: relist, then watch again
                log.info(json.dumps({"msg": "crd sync: relisting", "error": str(exc)}))
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    rv = await self._sync_all_crds()

    # ---- fencing ---------------------------------------------------------------------------

    def _check_fence(self) -> None:
        """Refuse a write up front when this region may not write (the storage layer checks
        again, and bounds the etcd deadline, right before the transaction)."""
        try:
            self.fence.remaining()
        except Fenced as exc:
            raise errors.unavailable(f"writes are fenced here: {exc}") from None

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _epoch_changed(self, epoch: int) -> None:
        """A new global epoch: versions from now on carry it, and the watch caches relist so
        that no cached object or open watch keeps handing out versions of the old epoch."""
        if self.versions is None or self.versions.epoch == epoch:
            return
        self.versions.epoch = epoch
        for cacher in list(self._cachers.values()):
            self._spawn(cacher.restart(), f"relist {cacher.prefix}")

    def _may_write(self) -> bool:
        """Whether this replica's region is writable now (always, without a fence): a standby
        writes nothing by itself, lifecycle controllers and their election included."""
        return not self.fence.enabled or self.fence.permitted()

    def _became_writable(self) -> None:
        if self._storage is not None:
            self._spawn(self._ensure_system_namespaces_quietly(), "system namespaces")

    async def _ensure_system_namespaces_later(self, every: float = 2.0) -> None:
        """Retry while this replica is permitted to write; a fenced replica is covered by
        `_became_writable`."""
        while True:
            await asyncio.sleep(every)
            if not self.fence.permitted():
                return
            try:
                await self._ensure_system_namespaces()
                return
            except (StatusError, EtcdError):
                continue

    async def _ensure_system_namespaces_quietly(self) -> None:
        """At start and when this replica becomes writable: a refusal (the fence key not set
        yet, etcd trouble) is tried again the next time it becomes writable."""
        try:
            await self._ensure_system_namespaces()
        except (StatusError, EtcdError) as exc:
            log.info(json.dumps({"msg": "system namespaces not ensured", "error": str(exc)}))
            await self._ensure_system_namespaces_later()

    def _journal(self, key: str, revision: int, epoch: int, sent: float, acked: float) -> None:
        assert self._write_log is not None
        self._write_log.write(
            json.dumps(
                {
                    "region": self.config.region,
                    "replica": self.config.replica,
                    "epoch": epoch,
                    "key": key,
                    "revision": revision,
                    "sent": sent,
                    "acked": acked,
                }
            )
            + "\n"
        )

    async def _ensure_system_namespaces(self) -> None:
        """Kubernetes always has these; every replica of the writable region makes sure
        (create-if-absent is a txn). A standby writes nothing of its own: its namespaces,
        system ones included, arrive by replication from the active region."""
        namespaces = self.stores[("", "v1", "namespaces")]
        storage = self._storage
        if storage is not None and storage.fence is not None and not self.fence.permitted():
            log.info(json.dumps({"msg": "system namespaces left to the writable region"}))
            return
        for ns in SYSTEM_NAMESPACES:
            try:
                await namespaces.create(None, {"metadata": {"name": ns}})
            except StatusError as exc:
                if exc.code != 409:
                    raise

    async def _watch_gc_pause(self, every: float = 1.0) -> None:
        """Follow the global record of whether this region's garbage collector is paused (a
        region promoted from a partial copy): read every `every` seconds; unreadable keeps
        the last answer."""
        assert self._global_client is not None
        state = GlobalState(self._global_client, prefix=self.config.global_prefix.encode())
        while True:
            with contextlib.suppress(EtcdError):
                note = await state.gc_paused(self.config.region, timeout=0.5)
                self._gc_paused = str(note.get("reason")) if note is not None else None
            if self.elector is not None and self.elector.is_leader and self._may_write():
                with contextlib.suppress(EtcdError, StatusError):
                    await self._divergence_events(await state.divergences(timeout=0.5))
            await asyncio.sleep(every)

    async def _divergence_events(self, notes: list[dict[str, Any]]) -> None:
        """A Kubernetes Event in `kube-system` for each divergence a returning region saved
        (`haplane.replication.rejoin`), raised once by the writable region's controller
        leader: `kubectl get events -n kube-system` shows it (create-if-absent: a 409 means
        already raised)."""
        events = self.stores[("", "v1", "events")]
        for note in notes:
            name = f"haplane-divergence-{note.get('epoch')}"
            if not note.get("count") or name in self._events_raised:
                continue
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            event = {
                "metadata": {"name": name, "namespace": "kube-system"},
                "involvedObject": {"apiVersion": "v1", "kind": "Namespace", "name": "kube-system"},
                "reason": "DivergenceSaved",
                "type": "Warning",
                "message": (
                    f"region {note.get('region')} had written {note.get('count')} object(s) "
                    f"after the cut of epoch {note.get('epoch')} (revision {note.get('cut')}); "
                    f"saved before it was re-seeded: `haplane divergence show {note.get('name')}`"
                ),
                "source": {"component": "haplane-replicator"},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
            try:
                await events.create("kube-system", event)
            except StatusError as exc:
                if exc.code != 409:
                    raise
            self._events_raised.add(name)

    async def _heartbeat(self, every: float = HEARTBEAT_EVERY) -> None:
        """While this replica leads the lifecycle controllers of the writable region, put the
        replicated heartbeat (`haplane.store.HEARTBEAT_KEY`) every `every` seconds: a
        standby's lag in seconds is its replicator's clock minus the newest one it applied."""
        seq = 0
        while True:
            await asyncio.sleep(every)
            storage = self._storage
            if storage is None or self.elector is None or not self.elector.is_leader:
                continue
            if storage.fence is not None and not self.fence.permitted():
                continue
            seq += 1
            beat = Heartbeat(self.config.region, self.fence.epoch, time.time(), seq)
            with contextlib.suppress(StatusError, StorageError):
                await storage.put_raw(HEARTBEAT_KEY, beat.to_json())

    def _writable_epoch(self) -> int | None:
        """The epoch this replica keeps the sync record for: while its region is writable;
        None otherwise. Every replica of the region does (each step is a compare-and-swap):
        not only the controllers' leader, whose election needs `kube-system`, whose creation
        a strict pair acknowledges only once a standby is synchronous."""
        if not self._may_write():
            return None
        return self.fence.epoch

    @property
    def name(self) -> str:
        return f"{self.config.region}/{self.config.replica}"

    async def drain_and_stop(self) -> None:
        """SIGTERM: fail /readyz for `drain_delay` (balancers take us out), close keep-alive
        connections, end watches cleanly, let in-flight requests finish, then stop."""
        self.draining = True
        log.info(json.dumps({"msg": "draining", "component": self.name}))
        await asyncio.sleep(self.config.drain_delay)
        await self.fence.stop()  # before the caches: an epoch change would restart them
        if self.sync is not None:
            await self.sync.stop()
        self._watch_stop.set()
        if self._crd_task is not None:
            self._crd_task.cancel()
        for cacher in list(self._cachers.values()):
            await cacher.stop()
        if self._elector_task is not None:
            self._elector_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._elector_task
        if self.controllers is not None:
            await self.controllers.stop()
        if self.elector is not None:
            await self.elector.release()
        # cleanup() stops accepting, then waits (shutdown_timeout) for in-flight requests.
        if self._runner is not None:
            await self._runner.cleanup()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.client.close()
        if self._global_client is not None:
            await self._global_client.close()
        if self._write_log is not None:
            self._write_log.close()
        log.info(json.dumps({"msg": "stopped", "component": self.name}))

    # ---- the filter chain (links composed in start()) ----------------------------------

    async def _headers_and_metrics(
        self, request: web.BaseRequest, handler: Handler
    ) -> web.StreamResponse:
        t0 = time.monotonic()
        self._inflight += 1
        try:
            response = await handler(request)
        finally:
            self._inflight -= 1
        verb = request.get("verb", request.method.lower())
        resource = request.get("resource", "")
        self.metrics.observe(verb, resource, response.status, time.monotonic() - t0)
        return response

    def _epoch(self) -> int:
        return self.versions.epoch if self.versions else 0

    def _stamp_headers(self, response: web.StreamResponse, epoch: int | None = None) -> None:
        """`epoch`: the one the request began under (a write is fenced and runs under it;
        the replica may learn a newer epoch while the write is in flight)."""
        response.headers["X-Haplane-Region"] = self.config.region
        response.headers["X-Haplane-Replica"] = self.config.replica
        response.headers["X-Haplane-Epoch"] = str(self._epoch() if epoch is None else epoch)
        if self.draining:
            response.headers["Connection"] = "close"  # clients reconnect through the balancer

    async def _status_errors(
        self, request: web.BaseRequest, handler: Handler
    ) -> web.StreamResponse:
        epoch = self._epoch()
        try:
            response = await handler(request)
        except StatusError as exc:
            response = json_response(exc.status(), exc.code)
        except web.HTTPRequestEntityTooLarge:
            response = json_response(
                errors.too_large(f"the request body exceeds {MAX_BODY_BYTES} bytes").status(), 413
            )
        except web.HTTPException:
            raise
        except Exception as exc:  # a bug: answer 500 as a Status and log it loudly
            log.exception("unhandled error serving %s %s", request.method, request.path)
            err = errors.internal(f"internal error: {type(exc).__name__}: {exc}")
            response = json_response(err.status(), 500)
        if not response.prepared:
            self._stamp_headers(response, epoch)
        return response

    async def _authenticate(self, request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
        # Pass-through until the security issue: every caller is the anonymous user.
        request["user"] = {"username": "system:anonymous", "groups": ["system:unauthenticated"]}
        return await handler(request)

    async def _authorize(self, request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
        # Pass-through until RBAC arrives: everything is allowed.
        return await handler(request)

    # ---- dispatch ------------------------------------------------------------------------

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        if "Expect" in request.headers:
            await _expect(request)
        path = request.path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        # resources first: nearly every request is one (discovery paths are shorter)
        if len(parts) > 2 and parts[0] == "api" and parts[1] == "v1":
            return await self._resource(request, "", "v1", parts[2:])
        if len(parts) > 3 and parts[0] == "apis":
            return await self._resource(request, parts[1], parts[2], parts[3:])
        if path in ("/livez", "/healthz"):
            return web.Response(text="ok")
        if path == "/readyz":
            return await self._readyz(request)
        if path == "/fencez":  # this replica's write permission (haplane.api.fencing)
            return json_response(
                {**self.fence.status(), **({"sync": self.sync.status()} if self.sync else {})}
            )
        if path == "/metrics":
            return web.Response(
                body=generate_latest(self.metrics.registry),
                headers={"Content-Type": "text/plain; version=0.0.4"},
            )
        if path == "/version":
            return json_response(
                {**KUBE_VERSION, "platform": "linux/amd64", "haplaneVersion": __version__}
            )
        if parts[:1] == ["openapi"]:
            return self._openapi(request, parts)
        if request.method == "GET":
            if path == "/api":
                return json_response(
                    {
                        "kind": "APIVersions",
                        "versions": ["v1"],
                        "serverAddressByClientCIDRs": [
                            {
                                "clientCIDR": "0.0.0.0/0",
                                "serverAddress": f"{self.config.host}:{self.config.port}",
                            }
                        ],
                    }
                )
            if path == "/apis":
                return json_response(
                    {
                        "kind": "APIGroupList",
                        "apiVersion": "v1",
                        "groups": [self._group(g, vs) for g, vs in self.registry.groups().items()],
                    }
                )
            if parts[:1] == ["apis"] and len(parts) == 2:
                versions = self.registry.groups().get(parts[1])
                if versions is None:
                    raise errors.no_such_resource(path)
                return json_response({"apiVersion": "v1", **self._group(parts[1], versions)})
            if path == "/api/v1":
                return json_response(self._resource_list("", "v1"))
            if parts[:1] == ["apis"] and len(parts) == 3:
                if not self.registry.in_group_version(parts[1], parts[2]):
                    raise errors.no_such_resource(path)
                return json_response(self._resource_list(parts[1], parts[2]))
        if parts[:2] == ["api", "v1"]:
            return await self._resource(request, "", "v1", parts[2:])
        if parts[:1] == ["apis"] and len(parts) >= 3:
            return await self._resource(request, parts[1], parts[2], parts[3:])
        raise errors.no_such_resource(path)

    async def _readyz(self, request: web.BaseRequest) -> web.Response:
        """200 "ok" when etcd answers a linearizable read; 503 when not, or draining. Asked
        for JSON (the balancers' checks are), it also carries the fence's `lapsedSeconds`, so
        that a balancer can report a region whose replicas cannot confirm their permission."""
        response = await self._readiness()
        if JSON in request.headers.get("Accept", "") and self.fence.enabled:
            return json_response(
                {
                    "ready": response.status == 200,
                    "reason": response.text,
                    "fence": {
                        "permitted": self.fence.permitted(),
                        "lapsedSeconds": round(self.fence.lapsed_for(), 3),
                    },
                },
                status=response.status,
            )
        return response

    async def _readiness(self) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="draining: shutting down")
        t, ok = self._ready_cache
        if time.monotonic() - t > 0.1:
            try:
                t0 = time.monotonic()
                await self.client.range(b"/registry/health", timeout=READY_TIMEOUT)
                self.metrics.observe_etcd("readyz", time.monotonic() - t0)
                ok = True
            except EtcdError:
                ok = False
            self._ready_cache = (time.monotonic(), ok)
        if not ok:
            return web.Response(status=503, text="etcd: no linearizable answer within 1s")
        return web.Response(text="ok")

    def _group(self, group: str, versions: list[str]) -> dict[str, Any]:
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "name": group, "versions": gvs, "preferredVersion": gvs[0]}

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        resources: list[dict[str, Any]] = []
        for t in self.registry.in_group_version(group, version):
            entry: dict[str, Any] = {
                "name": t.plural,
                "singularName": t.singular,
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": list(t.verbs),
            }
            if t.short_names:
                entry["shortNames"] = list(t.short_names)
            if t.categories:
                entry["categories"] = list(t.categories)
            resources.append(entry)
            for sub in _subresources(t):
                entry = {
                    "name": f"{t.plural}/{sub}",
                    "singularName": "",
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": ["update"] if sub == "finalize" else ["get", "patch", "update"],
                }
                if sub == "scale":
                    entry.update(kind="Scale", group="autoscaling", version="v1")
                resources.append(entry)
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    def _openapi(self, request: web.BaseRequest, parts: list[str]) -> web.Response:
        # kubectl fetches /openapi/v2 as protobuf for client-side validation: an empty document
        # (no schemas) lets validation pass. /openapi/v3 lists no paths, so kubectl does not
        # expect server-side field validation. Real schemas come with the API depth issue.
        if parts[1:2] == ["v2"]:
            if "protobuf" in request.headers.get("Accept", ""):
                return web.Response(
                    body=b"",
                    headers={
                        "Content-Type": "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
                    },
                )
            return json_response(
                {
                    "swagger": "2.0",
                    "info": {"title": "haplane", "version": __version__},
                    "paths": {},
                    "definitions": {},
                }
            )
        if parts[1:2] == ["v3"]:
            return json_response({"paths": {}})
        raise errors.no_such_resource(request.path)

    # ---- resources -----------------------------------------------------------------------

    def _target(self, group: str, version: str, rest: list[str], path: str) -> _Target:
        watch_path = bool(rest) and rest[0] == "watch"
        if watch_path:
            rest = rest[1:]
        if not rest:
            raise errors.no_such_resource(path)
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            t = self.registry.get(group, version, rest[2])
            if t is not None and t.namespaced:
                namespace, rest = rest[1], rest[2:]
        t = self.registry.get(group, version, rest[0])
        if t is None or len(rest) > 3:
            raise errors.no_such_resource(path)
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in _subresources(t):
            raise errors.no_such_resource(path)
        if t.namespaced and namespace is None and name is not None:
            raise errors.no_such_resource(path)
        return _Target(t, namespace, name, sub, watch_path)

    async def _resource(
        self, request: web.BaseRequest, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        target = self._target(group, version, rest, request.path)
        t = target.rtype
        store = self.stores[(t.group, t.version, t.plural)]
        request["resource"] = t.plural
        q = request.query
        dry_run = _dry_run(q)
        m = request.method
        if m in _WRITES and not dry_run:
            self._check_fence()
        watch = target.watch_path or q.get("watch") in ("true", "1")
        if target.subresource is not None:
            return await self._subresource(request, store, target, dry_run)
        if m == "GET" and watch:
            request["verb"] = "watch"
            return await self._watch(request, store, target)
        if q.get("sendInitialEvents") in ("true", "1") and not (m == "GET" and watch):
            raise errors.unprocessable("sendInitialEvents is only for watch requests")
        if m == "GET" and target.name is None:
            request["verb"] = "list"
            listed = await store.list(target.namespace, self._list_options(q, t))
            return json_response(self._maybe_table(request, t, listed["items"], listed))
        if m == "GET":
            request["verb"] = "get"
            got = await store.get(target.namespace, target.name or "", q.get("resourceVersion"))
            table = self._maybe_table(request, t, [got], got)
            return json_response(table)
        if m == "POST" and target.name is None:
            request["verb"] = "create"
            if t.custom and t.qualified in self._terminating_crds:
                raise errors.StatusError(
                    405,
                    "MethodNotAllowed",
                    f"create not allowed while custom resource definition {t.qualified} is "
                    "terminating",
                )
            body = await _body(request)
            await self._admit("create", t, body)
            created = await store.create(
                target.namespace,
                body,
                dry_run=dry_run,
                manager=_field_manager(request),
                handed_over=True,
            )
            return json_response(created, 201)
        if m == "PUT" and target.name is not None:
            request["verb"] = "update"
            body = await _body(request)
            await self._admit("update", t, body)
            return json_response(
                await store.update(
                    target.namespace,
                    target.name,
                    body,
                    dry_run=dry_run,
                    manager=_field_manager(request),
                )
            )
        if m == "PATCH" and target.name is not None:
            request["verb"] = "patch"
            patched = await self._patch(request, store, target, dry_run)
            return json_response(patched, request.get("status_code", 200))
        if m == "DELETE" and target.name is not None:
            request["verb"] = "delete"
            options = _delete_options(await _body(request, optional=True) or {})
            result = await store.delete(
                target.namespace,
                target.name,
                precondition_uid=options.get("uid"),
                precondition_rv=options.get("resourceVersion"),
                dry_run=dry_run or options.get("dryRun") == "All",
                propagation=q.get("propagationPolicy") or options.get("propagationPolicy"),
            )
            if not result.deleted:  # waiting for finalizers: the object, as Kubernetes answers
                return json_response(result.object)
            meta = result.object["metadata"]
            return json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {
                        "name": meta.get("name"),
                        "group": t.group,
                        "kind": t.plural,
                        "uid": meta.get("uid"),
                    },
                }
            )
        if m == "DELETE":
            request["verb"] = "deletecollection"
            return json_response(
                await store.delete_collection(
                    target.namespace, self._list_options(q, t), dry_run=dry_run
                )
            )
        raise errors.method_not_allowed(f"{m} is not supported on {request.path}")

    async def _subresource(
        self, request: web.BaseRequest, store: GenericStore, target: _Target, dry_run: bool
    ) -> web.Response:
        """namespaces/{name}/status (get, update, patch) and /finalize (update)."""
        sub, m, name = target.subresource or "", request.method, target.name or ""
        request["verb"] = {"GET": "get", "PUT": "update", "PATCH": "patch"}.get(m, m.lower())
        scale = target.rtype.scale_paths if sub == "scale" else None
        view = (lambda obj: to_scale(obj, scale)) if scale else (lambda obj: obj)
        if m == "GET" and sub in ("status", "scale"):
            return json_response(view(await store.get(target.namespace, name)))
        if m == "PUT":
            body = await _body(request)
            return json_response(
                view(
                    await store.update_subresource(
                        target.namespace, name, sub, lambda current: body, dry_run=dry_run
                    )
                )
            )
        if m == "PATCH" and sub in ("status", "scale"):
            apply = await self._patch_function(request, target)

            def patched(current: dict[str, Any]) -> dict[str, Any]:
                return apply(view(current))  # a scale patch applies to the Scale view

            return json_response(
                view(
                    await store.update_subresource(
                        target.namespace, name, sub, patched, dry_run=dry_run
                    )
                )
            )
        raise errors.method_not_allowed(f"{m} is not supported on {request.path}")

    def _maybe_table(
        self,
        request: web.BaseRequest,
        t: ResourceType,
        objects: list[dict[str, Any]],
        plain: dict[str, Any],
    ) -> dict[str, Any]:
        """`kubectl get` asks for a Table (Accept: ...;as=Table;g=meta.k8s.io); others get the
        plain object or list."""
        version = tables.table_request(request.headers.get("Accept"))
        if version is None:
            return plain
        meta = (
            plain.get("metadata", {})
            if plain.get("kind", "").endswith("List")
            else {"resourceVersion": plain.get("metadata", {}).get("resourceVersion")}
        )
        try:
            return tables.to_table(
                objects,
                _columns(t),
                list_meta=meta,
                include_object=_include_object(request.query),
                version=version,
            )
        except ValueError as exc:
            raise errors.bad_request(str(exc)) from exc

    async def _admit(self, operation: str, t: ResourceType, obj: dict[str, Any]) -> None:
        for admit in self.config.admission:
            await admit(operation, t, obj)

    def _list_options(self, q: Any, t: ResourceType) -> ListOptions:
        supported = {"metadata.name"} | ({"metadata.namespace"} if t.namespaced else set())
        try:
            labels = parse_label_selector(q.get("labelSelector"))
            fields = parse_field_selector(q.get("fieldSelector"), supported)
        except SelectorError as exc:
            raise errors.bad_request(str(exc)) from exc
        limit = _bounded_int(q.get("limit") or "0", "limit")
        return ListOptions(
            labels,
            fields,
            limit,
            q.get("continue") or None,
            q.get("resourceVersion") or None,
            q.get("resourceVersionMatch") or None,
        )

    async def _patch(
        self, request: web.BaseRequest, store: GenericStore, target: _Target, dry_run: bool
    ) -> dict[str, Any]:
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype == "application/apply-patch+yaml":
            manager = request.query.get("fieldManager")
            if not manager:
                raise errors.unprocessable(
                    'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                    "is required for apply patch"
                )
            force = request.query.get("force") in ("true", "1")
            body = await _body(request, content_type="application/yaml")
            obj, created = await store.apply(
                target.namespace,
                target.name or "",
                body,
                manager=manager[:128],
                force=force,
                dry_run=dry_run,
            )
            request["status_code"] = 201 if created else 200
            return obj
        guarded = await self._patch_function(request, target)
        return await store.patch(
            target.namespace,
            target.name or "",
            guarded,
            dry_run=dry_run,
            manager=_field_manager(request),
        )

    async def _patch_function(
        self, request: web.BaseRequest, target: _Target
    ) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """The request's patch as a function of the current object (errors become Statuses)."""
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        raw = await _raw(request)
        try:
            patch = _json_loads(raw)[0] if raw else None
        except ValueError as exc:
            raise errors.bad_request(f"the patch is not valid JSON: {exc}") from exc
        t = target.rtype
        schema = t.patch_schema
        if ctype == "application/merge-patch+json":

            def apply(obj: dict[str, Any]) -> dict[str, Any]:
                result = apply_merge_patch(obj, patch)
                if not isinstance(result, dict):
                    raise errors.bad_request("a merge patch must be a JSON object")
                return result
        elif ctype == "application/json-patch+json":

            def apply(obj: dict[str, Any]) -> dict[str, Any]:
                result = apply_json_patch(obj, patch)
                if not isinstance(result, dict):
                    raise errors.unprocessable("the JSON patch replaced the whole object")
                return result
        elif ctype == "application/strategic-merge-patch+json" and schema is not None:

            def apply(obj: dict[str, Any]) -> dict[str, Any]:
                return apply_strategic_merge_patch(obj, patch, schema)
        else:
            raise errors.unsupported_media(
                f"the body of the request was in an unknown format - accepted media types "
                f"include: application/json-patch+json, application/merge-patch+json"
                f"{', application/strategic-merge-patch+json' if schema else ''} "
                f"(got {ctype!r})"
            )

        def guarded(obj: dict[str, Any]) -> dict[str, Any]:
            try:
                return apply(obj)
            except PatchError as exc:
                raise errors.StatusError(
                    exc.code, "BadRequest" if exc.code == 400 else "Invalid", exc.message
                ) from exc

        return guarded

    async def _watch(
        self, request: web.BaseRequest, store: GenericStore, target: _Target
    ) -> web.StreamResponse:
        q = request.query
        opts = self._list_options(q, target.rtype)
        if target.name is not None:  # /watch/.../NAME: a field selector on the name
            opts = ListOptions(
                parse_label_selector(q.get("labelSelector")),
                parse_field_selector(
                    ",".join(
                        filter(None, [q.get("fieldSelector"), f"metadata.name={target.name}"])
                    ),
                    {"metadata.name", "metadata.namespace"},
                ),
                0,
                None,
                q.get("resourceVersion") or None,
            )
        send_initial = q.get("sendInitialEvents") in ("true", "1")
        if send_initial and (
            q.get("resourceVersionMatch") != "NotOlderThan"
            or q.get("allowWatchBookmarks") not in ("true", "1")
        ):
            raise errors.unprocessable(
                "sendInitialEvents requires resourceVersionMatch=NotOlderThan and "
                "allowWatchBookmarks=true"
            )
        timeout = None
        if q.get("timeoutSeconds"):
            timeout = float(_bounded_int(q["timeoutSeconds"], "timeoutSeconds"))
        table_version = tables.table_request(request.headers.get("Accept"))
        include = _include_object(q)
        columns = _columns(target.rtype)
        sent_headers = False
        response = web.StreamResponse(headers={"Content-Type": JSON})
        response.enable_chunked_encoding()
        self._stamp_headers(response)
        await response.prepare(request)
        gauge = self.metrics.watches.labels(target.rtype.plural)
        gauge.inc()
        events = store.watch(
            target.namespace,
            opts,
            bookmarks=q.get("allowWatchBookmarks") in ("true", "1"),
            timeout_seconds=timeout,
            send_initial_events=send_initial,
            ticks=True,
        )
        try:
            async for ev in events:
                # Checked at every event and, on a silent stream, every tick (about a second):
                # aiohttp does not cancel a handler whose client left, and a quiet watch would
                # otherwise hold its etcd watch forever.
                if request.transport is None or request.transport.is_closing():
                    break  # the client went away
                if self._watch_stop.is_set():
                    break  # draining: end the stream cleanly, the client re-watches elsewhere
                if ev.type == "TICK":
                    continue
                if not table_version or ev.type not in ("ADDED", "MODIFIED", "DELETED"):
                    await response.write(ev.encoded())
                    continue
                obj = tables.table_for_watch_event(
                    ev.object,
                    columns,
                    include_object=include,
                    version=table_version,
                    no_headers=sent_headers,
                )
                sent_headers = True
                await response.write(json.dumps({"type": ev.type, "object": obj}).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        except StatusError as exc:  # e.g. the initial list failed: say so inside the stream
            with contextlib.suppress(ConnectionResetError):
                await response.write(
                    json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n"
                )
        except Exception as exc:  # a bug: the stream is open, so report it as an ERROR event
            log.exception("watch on %s failed", request.path)
            status = errors.internal(f"watch failed: {type(exc).__name__}: {exc}").status()
            with contextlib.suppress(ConnectionResetError):
                await response.write(
                    json.dumps({"type": "ERROR", "object": status}).encode() + b"\n"
                )
        finally:
            gauge.dec()
            await events.aclose()  # type: ignore[attr-defined]
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response


def _delete_options(body: dict[str, Any]) -> dict[str, str]:
    """The parts of DeleteOptions we honour, type-checked (400 on nonsense)."""
    pre = body.get("preconditions") or {}
    dry = body.get("dryRun") or []
    if not isinstance(pre, dict) or not isinstance(dry, list):
        raise errors.bad_request("DeleteOptions: preconditions must be an object, dryRun a list")
    out: dict[str, str] = {}
    policy = body.get("propagationPolicy")
    if policy is not None:
        if not isinstance(policy, str):
            raise errors.bad_request("DeleteOptions: propagationPolicy must be a string")
        out["propagationPolicy"] = policy
    if body.get("orphanDependents") is True:
        out["propagationPolicy"] = "Orphan"
    for f in ("uid", "resourceVersion"):
        v = pre.get(f)
        if v is not None:
            if not isinstance(v, str):
                raise errors.bad_request(f"DeleteOptions: preconditions.{f} must be a string")
            out[f] = v
    if dry:
        if dry != ["All"]:
            raise errors.bad_request("DeleteOptions: dryRun supports only [All]")
        out["dryRun"] = "All"
    return out


_INT64_MAX = 2**63 - 1


def _bounded_int(text: str, what: str) -> int:
    """A non-negative integer that fits etcd's int64 fields, or 400."""
    try:
        value = int(text)
    except ValueError as exc:
        raise errors.bad_request(f"invalid {what} {text!r}: not an integer") from exc
    if not 0 <= value <= _INT64_MAX:
        raise errors.bad_request(f"invalid {what} {text!r}: out of range")
    return value


class _JsonishLoader(yaml.SafeLoader):
    """YAML that maps onto JSON: no aliases (an alias bomb would expand on the event loop) and
    no timestamps or sets (not JSON types)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases are not accepted")
        return super().compose_node(parent, index)


_JsonishLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _json_loads(raw: bytes) -> tuple[Any, bool]:
    """(document, whether it is known to be finite). orjson (6x faster on a create's body,
    bench/json_codecs.py) refuses NaN and infinities itself; what it refuses goes to the
    standard library, which words the error as before or reads what only it accepts (a lone
    surrogate; an infinity, for the caller's `finite` check to refuse). An integer beyond 64
    bits becomes a float, as in Kubernetes' own decoding of unstructured JSON (float64 beyond
    int64)."""
    try:
        return orjson.loads(raw), True
    except orjson.JSONDecodeError:
        return json.loads(raw, parse_constant=_reject_constant), False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _field_manager(request: web.BaseRequest) -> str:
    """The `fieldManager` parameter, else (as Kubernetes) the User-Agent up to its first '/'."""
    manager = request.query.get("fieldManager")
    if not manager:
        manager = request.headers.get("User-Agent", "unknown").split("/")[0] or "unknown"
    return manager[:128]


def _columns(t: ResourceType) -> list[tables.Column]:
    return (
        tables.crd_columns(list(t.printer_columns)) if t.custom else tables.builtin_columns(t.kind)
    )


def _include_object(q: Any) -> str:
    value = q.get("includeObject") or "Metadata"
    if value not in ("None", "Metadata", "Object"):
        raise errors.bad_request(f"invalid includeObject {value!r}: None, Metadata or Object")
    return str(value)


def _subresources(t: ResourceType) -> tuple[str, ...]:
    return ("status", "finalize") if t.kind == "Namespace" and not t.group else t.subresources


def _dry_run(q: Any) -> bool:
    values = q.getall("dryRun", [])
    for v in values:
        if v != "All":
            raise errors.bad_request(f"unsupported dryRun value {v!r}: only All is supported")
    return bool(values)


async def _expect(request: web.BaseRequest) -> None:
    """`Expect: 100-continue` (curl sends it with bodies over 1 KiB): let the body come. An
    Application did this itself; the low-level server leaves it to us. Other expectations
    are refused with 417, as Go's server (and so kube-apiserver) refuses them."""
    expect = request.headers.get("Expect", "")
    if request.version != HttpVersion11:
        return
    if expect.lower() != "100-continue":
        raise errors.StatusError(417, "ExpectationFailed", f"unsupported Expect: {expect!r}")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the response proper has not begun


async def _raw(request: web.BaseRequest) -> bytes:
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise errors.too_large(f"the request body of {length} bytes exceeds {MAX_BODY_BYTES}")
    data = await request.read()
    if len(data) > MAX_VALUE_BYTES:
        raise errors.too_large(
            f"the request body of {len(data)} bytes exceeds etcd's limit ({MAX_VALUE_BYTES})"
        )
    return data


async def _body(
    request: web.BaseRequest, optional: bool = False, content_type: str | None = None
) -> Any:
    raw = await _raw(request)
    if not raw.strip():
        if optional:
            return None
        raise errors.bad_request("the request needs a body")
    ctype = content_type or request.headers.get("Content-Type", JSON).split(";")[0].strip()
    if ctype == protobuf.PROTOBUF:
        # kubectl sends typed creates (`kubectl create configmap ...`) as protobuf
        try:
            return protobuf.decode(raw)
        except protobuf.UnsupportedKind as exc:
            raise errors.unsupported_media(str(exc)) from exc
        except protobuf.ProtobufError as exc:
            raise errors.bad_request(f"the request body is not valid {ctype}: {exc}") from exc
    try:
        if ctype in ("application/yaml", "application/x-yaml", "text/yaml"):
            body = yaml.load(raw, Loader=_JsonishLoader)  # a SafeLoader subclass
            json.dumps(body)  # sets, dates and other non-JSON YAML types end here
            checked = False
        elif ctype in (JSON, ""):
            body, checked = _json_loads(raw)
        else:
            raise errors.unsupported_media(
                f"unsupported media type {ctype!r}: send application/json or application/yaml"
            )
    except (ValueError, TypeError, yaml.YAMLError) as exc:
        raise errors.bad_request(f"the request body is not valid {ctype}: {exc}") from exc
    if not checked and not finite(body):
        raise errors.bad_request("the request body holds a number too large for JSON")
    if not isinstance(body, dict):
        raise errors.bad_request("the request body must be an object")
    return body


def _stall_hook(needle: str | None) -> Callable[[str], Callable[[], None] | None] | None:
    """`STALL_HOOK_ENV`'s hook: on the first write of each key containing `needle`, stop this
    process."""
    if not needle:
        return None
    fired: set[str] = set()

    def hook(key: str) -> Callable[[], None] | None:
        if key in fired or needle not in key:
            return None
        fired.add(key)

        def stall() -> None:
            log.warning(json.dumps({"msg": "test hook: stopping before send", "key": key}))
            os.kill(os.getpid(), signal.SIGSTOP)

        return stall

    return hook
