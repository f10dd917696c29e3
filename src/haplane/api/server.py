"""One API server replica: its life cycle (start, drain on SIGTERM, stop), the custom
resources it serves, its write fence and the region's background duties (system namespaces,
heartbeat, garbage-collection pause, divergence Events), and the composition of its request
path. Served by aiohttp's low-level server.

Layer: api. This module only composes: the filter chain lives in `haplane.api.filters`, the
handlers per verb family in `haplane.api.handlers`, request decoding in `haplane.api.request`.
Handlers see the replica through a `HandlerContext`, never this module.

Wire conventions clients rely on (FIELD-NOTES): every JSON response has
`Content-Type: application/json` exactly; lists always carry `items`; objects always carry
`apiVersion` and `kind`; watches are newline-delimited JSON events, flushed per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import logging
import os
import signal
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from prometheus_client import generate_latest

from haplane.auth.audit import AuditLog, Policy, default_policy
from haplane.auth.audit_batch import BatchingAuditLog
from haplane.auth.pki import (
    CertPaths,
    PkiError,
    reload_server_context,
    seconds_to_expiry,
    server_context,
)
from haplane.auth.tokens import ServiceAccountTokens, StaticTokens, load_or_create_key
from haplane.auth.user import Attributes as AuthzAttributes
from haplane.auth.user import UserInfo
from haplane.store import (
    FENCE_KEY,
    HEARTBEAT_KEY,
    EtcdClient,
    EtcdError,
    EtcdTls,
    GlobalState,
    Heartbeat,
)

from . import encryption as at_rest
from . import errors, ops
from .access import Access
from .access_types import ACCESS_TYPES
from .admission_policies import (
    NOTES,
    Attributes,
    AuthorizerNotReady,
    Notes,
    PolicyEngine,
    select_params,
)
from .authenticators import TokenAuthenticator
from .authorizer import RBAC_PREFIXES, AlwaysAllow, RbacAuthorizer, escalation_check
from .controllers import Controllers, LeaderElector
from .crds import CRD_TYPE, resource_types_for
from .errors import StatusError
from .fencing import Fenced, WriteFence
from .filters import Link, chain
from .filters.audit import Audit, FailedAuthenticationAudit
from .filters.authentication import Authenticate, FrontProxies
from .filters.authorization import Authorize
from .filters.impersonation import Impersonate
from .filters.metrics import Metrics
from .filters.request_info import with_request_info
from .filters.status_errors import StatusErrors
from .generic_store import NAMESPACE_KEY, GenericStore, ListOptions
from .grants import GrantExecutor
from .handlers import discovery, resource
from .handlers.context import HandlerContext
from .policy_type_checking import expression_warnings
from .policy_types import BINDING, POLICY, POLICY_TYPES
from .request import (
    JSON,
    MAX_BODY_BYTES,
    REQUEST_USER,
    Admission,
    RequestInfo,
    expect,
    json_response,
)
from .resource_version import VersionContext
from .resources import BUILTIN, Obj, Registry, ResourceType
from .service_accounts import ServiceAccountAuthenticator
from .storage import DataFence, EtcdStorage, StorageError
from .sync_ack import SyncAck, SyncConfig
from .watch_cache import CachedStorage, Cacher

log = logging.getLogger("haplane.api")

READY_TIMEOUT = 1.0
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
HEARTBEAT_EVERY = 0.1  # seconds between the writable region's replication heartbeats
# A test hook (never set in production): the first write of each key containing this text stops
# the replica (SIGSTOP) after every client-side check, right before its request goes out.
# It stands for a stall inside the send that no deadline can see: only the data fence is left.
STALL_HOOK_ENV = "HAPLANE_TEST_STALL_BEFORE_SEND"


@dataclass
class SecurityConfig:
    """Identity and access of one replica. The defaults are a bare replica's (tests,
    benchmarks): plain HTTP, anyone is anonymous, everything allowed, no audit. `haplane up`
    turns everything on unless the topology says `insecure: true`."""

    # TLS serving; with `client_ca`, client certificates are asked for (optionally) and
    # verified against it: a verified one authenticates its CN and O
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    token_file: str | None = None  # kube-apiserver's --token-auth-file CSV
    # ServiceAccount tokens: the signing key (PEM, shared by every region) and the issuer
    sa_key: str | None = None
    sa_issuer: str = "https://kubernetes.default.svc.cluster.local"
    anonymous: Literal["all", "health"] = "all"
    authorization: Literal["AlwaysAllow", "RBAC"] = "AlwaysAllow"
    # front proxies (the gate in L7 mode): certificates issued by `requestheader_ca` (a CA of
    # their own) whose CN is one of `front_proxy_names` (any, when empty) may pass the
    # client's identity on in X-Remote-* headers
    requestheader_ca: str | None = None
    front_proxy_names: tuple[str, ...] = ()
    audit_log: str | None = None
    audit_policy: str | None = None  # None: haplane.auth.audit's default policy
    # kube-apiserver's --encryption-provider-config: an EncryptionConfiguration (None: every
    # value stored as it is)
    encryption_config: str | None = None
    audit_max_bytes: int = 100 * 1024 * 1024
    audit_backups: int = 5
    # kube-apiserver's --audit-log-mode: "blocking" writes each event in the request path,
    # "batch" buffers them for a writer thread (haplane.auth.audit_batch)
    audit_mode: Literal["blocking", "batch"] = "blocking"
    audit_batch_max_wait: float = 0.2  # seconds
    audit_batch_max_size: int = 400  # events waiting that wake the writer
    audit_batch_buffer_size: int = 10_000  # events; a full buffer is written by the request


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
    security: SecurityConfig = field(default_factory=SecurityConfig)
    etcd_tls: EtcdTls | None = None  # client certificate for every etcd (own, global, standby)
    # every region of the topology (a Switchover may name only these; empty: not checked)
    regions: list[str] = field(default_factory=list)


class ApiServer:
    def __init__(self, config: ReplicaConfig, registry: Registry | None = None):
        self.config = config
        self.registry = registry or Registry([*BUILTIN, CRD_TYPE, *ACCESS_TYPES, *POLICY_TYPES])
        self.metrics = Metrics()
        self.client = EtcdClient(
            config.etcd_endpoints, timeout=config.etcd_timeout, tls=config.etcd_tls
        )
        self.versions: VersionContext | None = None
        self.stores: dict[tuple[str, str, str], GenericStore] = {}
        self.draining = False
        self._watch_stop = asyncio.Event()
        self._runner: web.ServerRunner | None = None
        self._ready_cache: tuple[float, bool] = (0.0, False)
        self.controllers: Controllers | None = None
        self._crd_types: dict[str, list[tuple[str, str, str]]] = {}
        self._terminating_crds: set[str] = set()
        self._crd_task: asyncio.Task[None] | None = None
        self._storage: EtcdStorage | None = None
        self._cachers: dict[str, Cacher] = {}
        self._policies: PolicyEngine | None = None
        self.elector: LeaderElector | None = None
        self._elector_task: asyncio.Task[None] | None = None
        self._global_client = (
            EtcdClient(config.global_endpoints, timeout=0.5, tls=config.etcd_tls)
            if config.global_endpoints
            else None
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
        sec = config.security
        self.tls = _server_tls(sec)
        self.encryption = (
            at_rest.ReloadingTransformers(sec.encryption_config, self.registry.all())
            if sec.encryption_config
            else None
        )
        self.authorizer = RbacAuthorizer() if sec.authorization == "RBAC" else None
        # ops.haplane.dev: served from the global control etcd, by every region's replicas
        self._ops_storage: EtcdStorage | None = None
        self.ops: ops.OpsHooks | None = None
        if self._global_client is not None:
            for t in ops.ops_types(config.global_prefix):
                self.registry.add(t)
            self._ops_storage = EtcdStorage(
                self._global_client, ops.versions(config.global_prefix), observe=None
            )
            self.ops = ops.OpsHooks(
                ops.Operations(
                    roles_of=self.authorizer.cluster_roles_of if self.authorizer else None,
                    epoch=lambda: self.fence.epoch,
                    regions=config.regions,
                    active=lambda: self.fence.record.region if self.fence.record else None,
                    record=lambda: self.fence.record,
                ),
                self._approval_policies,
                refresh=self.fence.refresh_now,
            )
        self.sa_tokens = (
            ServiceAccountTokens([load_or_create_key(sec.sa_key)], sec.sa_issuer)
            if sec.sa_key
            else None
        )
        tokens = self._token_authenticators(sec)
        self.access = Access(
            self.authorizer or AlwaysAllow(),
            tokens,
            self.sa_tokens,
            [sec.sa_issuer],
            lookup=functools.partial(self._core_object, resource_version=None),
        )
        self.authenticate = Authenticate(
            tokens,
            anonymous=sec.anonymous,
            front_proxies=FrontProxies(sec.requestheader_ca, frozenset(sec.front_proxy_names))
            if sec.requestheader_ca
            else None,
        )
        self.audit: Audit | None = None
        if sec.audit_log:
            policy = Policy.load(Path(sec.audit_policy)) if sec.audit_policy else default_policy()
            file_log = AuditLog(sec.audit_log, sec.audit_max_bytes, sec.audit_backups)
            sink: AuditLog | BatchingAuditLog = file_log
            if sec.audit_mode == "batch":
                sink = BatchingAuditLog(
                    file_log,
                    buffer_size=sec.audit_batch_buffer_size,
                    max_batch=sec.audit_batch_max_size,
                    max_wait=sec.audit_batch_max_wait,
                )
            self.audit = Audit(policy, sink)
            self.metrics.count_audit(sink)
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
            transformer=self.encryption,
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
            if not t.virtual:
                self.stores[(t.group, t.version, t.plural)] = self._make_store(t)
        if self.ops is not None:
            self._spawn(self._ensure_default_policies(), "default approval policies")
        if self.authorizer is not None:
            for prefix in RBAC_PREFIXES:
                self.authorizer.attach(prefix, self._cacher(prefix))
            for t in self.registry.all():
                if t.group == "rbac.authorization.k8s.io":
                    self.stores[(t.group, t.version, t.plural)].final_check = escalation_check(
                        self.authorizer, t.kind
                    )
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
            lambda: [s for s in self.stores.values() if s.t.fenced],  # not the global ops
            storage_store=self._unserved_crd_store,
            gc_paused=lambda: self._gc_paused,
            # the registry as it is now: the checking runs in a thread
            type_check=lambda policy: functools.partial(
                expression_warnings, policy, Registry(self.registry.all())
            ),
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
        if self._global_client is not None:
            rbac_group = "rbac.authorization.k8s.io"
            grants = GrantExecutor(
                self._global_client,
                self.config.global_prefix.encode(),
                lambda kind: self.stores[(rbac_group, "v1", kind.lower() + "s")],
                may_act=self._may_write,
                name=self.name,
            )
            self._spawn(grants.run(), "role grants")
        if self.encryption is not None:
            self._spawn(self._reload_encryption(), "encryption config reload")
        if self.tls is not None:
            self._spawn(self._reload_certificate(), "certificate reload")
        if self.authorizer is not None:
            self._spawn(self._aggregate_cluster_roles(), "clusterrole aggregation")
        if self.sync is not None:
            self._spawn(
                self.sync.keep(epoch=self._writable_epoch, head_revision=store.current_revision),
                "sync keeper",
            )
        self.handlers = HandlerContext(
            registry=self.registry,
            stores=self.stores,
            check_fence=self._check_fence,
            stamp_headers=self._stamp_headers,
            stopping=self._watch_stop,
            watch_gauge=self.metrics.watches.labels,
            admission=self.config.admission,
            terminating_crds=self._terminating_crds,
            access=self.access,
            ops=self.ops,
        )
        # aiohttp's low-level server: one catch-all handler, the chain composed once
        links: list[Link] = [
            self.metrics,
            StatusErrors(self._epoch, self._stamp_headers),
            with_request_info,
        ]
        if self.audit is not None:
            links.append(FailedAuthenticationAudit(self.audit))
        links.append(self.authenticate)
        if self.audit is not None:
            links.append(self.audit)
        links.append(Impersonate(self.authorizer))
        if self.authorizer is not None:
            links.append(Authorize(self.authorizer))
        links.append(self._admission_notes)
        handler = chain(links, self._dispatch)
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
        site = web.TCPSite(
            self._runner,
            self.config.host,
            self.config.port,
            reuse_address=True,
            ssl_context=self.tls,
        )
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

    def _token_authenticators(self, sec: SecurityConfig) -> list[TokenAuthenticator]:
        """The static token file first, then ServiceAccount tokens (kube-apiserver's order)."""
        found: list[TokenAuthenticator] = []
        if sec.token_file:
            static = StaticTokens.load(sec.token_file)

            async def from_file(token: str) -> UserInfo | None:
                return static.authenticate(token)

            found.append(from_file)
        if self.sa_tokens is not None:
            found.append(
                ServiceAccountAuthenticator(
                    self.sa_tokens,
                    [sec.sa_issuer],
                    cached=functools.partial(self._core_object, resource_version="0"),
                    live=functools.partial(self._core_object, resource_version=None),
                )
            )
        return found

    async def _core_object(
        self, resource: str, namespace: str | None, name: str, *, resource_version: str | None
    ) -> Obj | None:
        """An object of the core group, or None when there is none (or this replica does not
        serve its resource: pods, nodes); StatusError when the read fails. resourceVersion
        "0": from the watch cache when it is ready, else from etcd; None: from etcd,
        linearizable."""
        store = self.stores.get(("", "v1", resource))
        if store is None:
            return None
        try:
            return await store.get(namespace, name, resource_version)
        except StatusError as exc:
            if exc.code == 404:
                return None
            raise

    async def _aggregate_cluster_roles(self, every: float = 0.5) -> None:
        """Kubernetes' clusterrole-aggregation controller: while this replica leads the
        writable region's controllers, write into each aggregated ClusterRole the rules its
        selectors gather (authorization never waits for this: the index computes them
        itself; this keeps `kubectl get clusterrole admin -o yaml` truthful). Rules are
        compared as sets and written sorted, so replicas never flap over their order."""
        assert self.authorizer is not None
        index = self.authorizer.index
        store = self.stores[("rbac.authorization.k8s.io", "v1", "clusterroles")]

        def canonical(rules: list[Any]) -> list[Any]:
            return sorted(rules, key=lambda r: json.dumps(r, sort_keys=True))

        while True:
            await asyncio.sleep(every)
            if not (self.elector and self.elector.is_leader and self._may_write()):
                continue
            if not self.authorizer.ready:
                continue
            for name in index.aggregated_roles():
                wanted = canonical(index.aggregated_rules(name) or [])
                if canonical(index.stored_rules(name)) == wanted:
                    continue

                def write(current: Obj, rules: list[Any] = wanted) -> Obj:
                    return {**current, "rules": rules}

                try:
                    await store.patch(
                        None, name, write, manager="clusterrole-aggregation-controller"
                    )
                except (StatusError, EtcdError) as exc:
                    log.info(
                        json.dumps({"msg": "aggregation retrying", "role": name, "error": str(exc)})
                    )

    async def _reload_certificate(self, every: float = 1.0) -> None:
        """Serve a rotated certificate (`haplane pki rotate` rewrites the files) from the next
        handshake on: open connections keep theirs, nothing restarts. Checked every `every`
        seconds by modification time; a pair caught half-written (the key renamed, the
        certificate not yet) fails to load and is tried again at the next check."""
        sec = self.config.security
        assert self.tls is not None and sec.tls_cert and sec.tls_key
        cert, key = Path(sec.tls_cert), Path(sec.tls_key)
        expiry = self.metrics.certificate_expiry.labels("serving")

        def stamp() -> tuple[float, float]:
            return cert.stat().st_mtime, key.stat().st_mtime

        seen = stamp()
        expiry.set(seconds_to_expiry(cert))
        while True:
            await asyncio.sleep(every)
            try:
                now = stamp()
                if now != seen:
                    # checked first: a pair caught mid-rotation (new key, old certificate)
                    # raises and leaves the served certificate as it was; load_cert_chain on
                    # such a pair would leave the context with none
                    reload_server_context(self.tls, CertPaths(cert, key, cert))
                    seen = now
                    log.info(json.dumps({"msg": "serving certificate reloaded", "file": str(cert)}))
                expiry.set(seconds_to_expiry(cert))
            except (OSError, ssl.SSLError, ValueError) as exc:  # PkiError is a ValueError
                log.info(json.dumps({"msg": "certificate reload deferred", "error": str(exc)}))

    async def _reload_encryption(self, every: float = 1.0) -> None:
        """Follow the EncryptionConfiguration file (checked every `every` seconds): the next
        write uses its first provider. A file that does not load is logged and the one in use
        stays."""
        assert self.encryption is not None
        info = self.metrics.encryption_config
        info.labels(self.encryption.sha256).set(1)
        while True:
            await asyncio.sleep(every)
            before = self.encryption.sha256
            try:
                if self.encryption.reload_if_changed():
                    info.remove(before)
                    info.labels(self.encryption.sha256).set(1)
                    log.info(json.dumps({"msg": "encryption configuration reloaded",
                                         "sha256": self.encryption.sha256}))  # fmt: skip
            except Exception as exc:  # the task must outlive any bad file
                log.warning(json.dumps({"msg": "encryption configuration not reloaded",
                                        "error": f"{type(exc).__name__}: {exc}"}))  # fmt: skip

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
            existing = self.registry.get(t.group, t.version, t.plural)
            if existing is not None and not existing.custom:
                # a built-in type is never shadowed (nor removed with the CRD): its storage,
                # validation and RBAC checks stay what they are
                log.info(json.dumps({"msg": "crd ignored: a built-in type", "crd": name}))
                continue
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
        """A generic store on etcd, behind this replica's watch cache for the resource (the
        ops types: straight on the global control etcd; they are few, and rarely read)."""
        assert self._storage is not None, "start() sets the storage first"
        if not t.fenced:
            assert self._ops_storage is not None
            return GenericStore(t, self._ops_storage)
        if not self.config.watch_cache:
            store = GenericStore(t, self._storage)
        else:
            cacher = self._cacher(t.key_prefix())
            store = GenericStore(t, CachedStorage(self._storage, cacher), self._cached_namespace)
        store.admission = functools.partial(self._admit_by_policies, t)
        store.admission_ready = self._policies_ready
        return store

    # ---- validating admission policies (haplane.api.admission_policies) -----------------

    def _policy_engine(self) -> PolicyEngine:
        if self._policies is None:
            policies, bindings = (
                self._cacher(POLICY.key_prefix()),
                self._cacher(BINDING.key_prefix()),
            )
            self._policies = PolicyEngine(
                lambda: policies.objects.values(),
                lambda: bindings.objects.values(),
                lambda name: self._cached_namespace(name)[0],
                self._policy_params,
                version=lambda: (policies.changes, bindings.changes),
                authorize=self._policy_authorize,
            )
        return self._policies

    def _policy_authorize(self, attrs: AuthzAttributes) -> tuple[bool, str, str]:
        """An admission policy's `authorizer` check: RBAC from memory (an error while the
        RBAC caches reload, never a decision on a partial view)."""
        if self.authorizer is None:
            return True, "AlwaysAllow", ""
        if not self.authorizer.ready:
            raise AuthorizerNotReady("authorization is not ready: the RBAC caches are loading")
        decision = self.authorizer.decide(attrs, remember=False)
        return decision.allowed, decision.reason, ""

    def _admit_by_policies(
        self,
        t: ResourceType,
        operation: str,
        obj: Obj | None,
        old: Obj | None,
        sub: str,
        dry_run: bool = False,
        generated: bool = False,
    ) -> None:
        """The store's last check before a write: every matching policy (the replica's own
        writes, its controllers', have no request user and are not policed). A create named
        from generateName is judged, as in Kubernetes, with the name the request gave: none
        (`request.name`, `authorizer.requestResource`, `resourceNames` rules)."""
        user = REQUEST_USER.get()
        if user is None:
            return
        meta = (obj or old or {}).get("metadata") or {}
        self._policy_engine().admit(
            Attributes(
                operation,
                t,
                meta.get("namespace") if t.namespaced else None,
                "" if generated else str(meta.get("name") or ""),
                obj,
                old,
                user,
                sub,
                dry_run,
            )
        )

    async def _policies_ready(self, wait: float = 1.0) -> None:
        """A write waits (up to `wait`) for the policies and bindings to be loaded: nothing
        is admitted unchecked while the watch caches relist (after an epoch change)."""
        if REQUEST_USER.get() is None:
            return
        self._policy_engine()
        caches = [self._cachers[POLICY.key_prefix()], self._cachers[BINDING.key_prefix()]]
        deadline = time.monotonic() + wait
        while not all(c.ready for c in caches):
            if time.monotonic() >= deadline:
                raise errors.unavailable(
                    "the admission policies are not loaded yet (this replica's watch cache is "
                    "reloading): try again"
                )
            await asyncio.sleep(0.02)

    def _policy_params(
        self, api_version: str, kind: str, namespace: str | None, name: str | None, selector: Any
    ) -> list[Obj] | None:
        group, _, version = api_version.rpartition("/")
        t = next(
            (
                x
                for x in self.registry.all()
                if x.group == group and x.version == version and x.kind == kind and x.fenced
            ),
            None,
        )
        if t is None:
            return None
        cacher = self._cacher(t.key_prefix())
        if not cacher.ready:
            raise errors.unavailable(f"the parameters ({kind}) are not loaded yet: try again")
        if name:  # one object: looked up, not scanned for (a cache may hold thousands)
            key = t.key(namespace if t.namespaced else None, name)
            found = cacher.objects.get(key)
            candidates: Any = [found] if found is not None else []
        else:
            candidates = cacher.objects.values()
        return select_params(candidates, t.namespaced, namespace, name, selector)

    def _cacher(self, prefix: str) -> Cacher:
        """The watch cache of a key prefix, started on first use (the authorizer's RBAC
        caches exist even when serving from etcd: its decisions never read etcd)."""
        assert self._storage is not None, "start() sets the storage first"
        cacher = self._cachers.get(prefix)
        if cacher is None:
            cacher = self._cachers[prefix] = Cacher(self._storage, prefix)
            cacher.start()
        return cacher

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

    # ---- ops.haplane.dev --------------------------------------------------------------------

    async def _approval_policies(self) -> list[Obj]:
        store = self.stores[(ops.GROUP, ops.VERSION, "approvalpolicies")]
        try:
            return (await store.storage.list(store.t.key_prefix())).items
        except StorageError as exc:  # never create an operation without knowing its policies
            raise errors.unavailable(f"approval policies unreadable: {exc}") from None

    async def _ensure_default_policies(self, every: float = 2.0) -> None:
        """Create the default ApprovalPolicy objects that are absent (every replica tries;
        the first create wins), retrying while the global control etcd does not answer."""
        store = self.stores[(ops.GROUP, ops.VERSION, "approvalpolicies")]
        pending = ops.default_policies()
        while pending:
            for policy in list(pending):
                try:
                    await store.create(None, copy.deepcopy(policy))
                except StatusError as exc:
                    if exc.code != 409:
                        continue
                    # stored by an older release: it gets the operations it lacks (stricter
                    # only; a conflicting write is tried again on the next round)
                    try:
                        await self._complete_default_policy(store, policy)
                    except StatusError:
                        continue
                pending.remove(policy)
            if pending:
                await asyncio.sleep(every)

    @staticmethod
    async def _complete_default_policy(store: GenericStore, policy: dict[str, Any]) -> None:
        name = policy["metadata"]["name"]
        current = await store.get(None, name)
        spec = current.get("spec")
        have = list(spec.get("operations") or ()) if isinstance(spec, dict) else []
        missing = [op for op in policy["spec"]["operations"] if op not in have]
        if not missing:
            return
        new = copy.deepcopy(current)
        new["spec"]["operations"] = have + missing
        await store.update(None, name, new)
        log.info(json.dumps({"msg": "default policy completed", "name": name, "added": missing}))

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
        if self.authorizer is not None:
            await self._ensure_default_rbac()
            from haplane.auth import rbac

            # the controllers' own identities (their ClusterRoles and bindings are above)
            for namespace, name in rbac.CONTROLLER_ACCOUNTS.values():
                try:
                    await self.stores[("", "v1", "serviceaccounts")].create(
                        namespace, {"metadata": {"name": name, "namespace": namespace}}
                    )
                except StatusError as exc:
                    if exc.code != 409:
                        raise

    async def _ensure_default_rbac(self) -> None:
        """Kubernetes' bootstrap roles and bindings and haplane's operator roles, created when
        absent (kube-apiserver also reconciles changed ones; here an edited default role is
        left as the administrator made it)."""
        from haplane.auth import rbac

        for kind, objects in (
            ("clusterroles", rbac.default_cluster_roles()),
            ("clusterrolebindings", rbac.default_cluster_role_bindings()),
        ):
            store = self.stores[("rbac.authorization.k8s.io", "v1", kind)]
            for obj in objects:
                name = obj["metadata"]["name"]
                cached = self._cachers.get(store.t.key_prefix())
                if (
                    cached is not None
                    and cached.ready
                    and store.t.key(None, name) in cached.objects
                ):
                    continue
                try:
                    await store.create(None, obj)
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
        connections, end watches cleanly, let in-flight requests finish, then stop. The audit
        log is closed last, whatever failed before (the batch backend writes its buffer)."""
        try:
            await self._drain()
        finally:
            sink = self.audit.sink if self.audit is not None else None
            if isinstance(sink, BatchingAuditLog):  # may wait on the disk: off the loop
                await asyncio.to_thread(sink.close)
            elif sink is not None:
                sink.close()  # (not thread-safe: on the loop, like its writes)
            log.info(json.dumps({"msg": "stopped", "component": self.name}))

    async def _drain(self) -> None:
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
        if self.encryption is not None:  # KMS plugin providers: their poll threads, channels
            await asyncio.to_thread(self.encryption.close)

    # ---- the filter chain (links composed in start()) ----------------------------------

    # ---- the request path (filters and handlers composed in start()) ----------------------

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

    async def _admission_notes(self, request: web.BaseRequest, handler: Any) -> web.StreamResponse:
        """What admission policies said besides allowing: `Warning` headers (kubectl prints
        them) and audit annotations on the request's audit event."""
        notes = Notes()
        token = NOTES.set(notes)
        try:
            response: web.StreamResponse = await handler(request)
        finally:
            NOTES.reset(token)
            audit = request.get("audit")
            if audit is not None:
                for key, value in notes.annotations.items():
                    audit.annotate(key, value)
        if notes.warnings and not response.prepared:
            for header in warning_headers(notes.warnings):
                response.headers.add("Warning", header)
        return response

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        if "Expect" in request.headers:
            await expect(request)
        info: RequestInfo = request["info"]
        # resources first: nearly every request is one
        if info.resource_request:
            return await resource.serve(self.handlers, request, info)
        path = info.path
        parts = [p for p in path.split("/") if p]
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
            return discovery.version()
        if parts[:1] == ["openapi"]:
            return discovery.openapi(request, parts)
        if request.method == "GET":
            address = f"{self.config.host}:{self.config.port}"
            found = discovery.discover(self.registry, path, parts, address)
            if found is not None:
                return found
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


def _server_tls(sec: SecurityConfig) -> ssl.SSLContext | None:
    """TLS 1.2 or later; a client certificate asked for, not required (tokens and anonymous
    health checks come without one), and verified against `client_ca` or the front-proxy CA
    when sent (`Authenticate` tells which issued it)."""
    if not sec.tls_cert or not sec.tls_key:
        return None
    paths = CertPaths(Path(sec.tls_cert), Path(sec.tls_key), Path(sec.client_ca or ""))
    asks = sec.client_ca or sec.requestheader_ca
    ctx = server_context(paths, "optional" if sec.client_ca else "none")
    if sec.requestheader_ca:
        try:
            ctx.load_verify_locations(cafile=sec.requestheader_ca)
        except (OSError, ssl.SSLError) as exc:
            raise PkiError(f"front-proxy CA {sec.requestheader_ca}: {exc}") from None
    if asks:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


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


MAX_WARNINGS_SIZE = 4 * 1024  # bytes of Warning headers in one response (Kubernetes')
MAX_WARNING_LEN = 256  # a warning's text once they do not all fit (Kubernetes')


def warning_headers(texts: Iterable[str]) -> list[str]:
    """The `Warning` headers for a response's warnings as kube-apiserver's warning recorder
    writes them: each text once (a write retried on a conflict says its warnings again), all
    of them while they fit in MAX_WARNINGS_SIZE bytes; else each cut to MAX_WARNING_LEN
    characters, as many as fit. (A client stops at a limit too: Python's http.client refuses
    a response with more than 100 headers, after the write was made.)"""
    unique = [t for t in dict.fromkeys(texts) if t]
    whole = [_warning(t) for t in unique]
    if sum(len(h) for h in whole) <= MAX_WARNINGS_SIZE:
        return whole
    out: list[str] = []
    size = 0
    for text in unique:
        header = _warning(text[:MAX_WARNING_LEN])
        if size + len(header) > MAX_WARNINGS_SIZE:
            break
        out.append(header)
        size += len(header)
    return out


def _warning(text: str) -> str:
    """RFC 7234 warn-code 299 with the text quoted, as kube-apiserver sends admission warnings."""
    escaped = "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 - "{escaped}"'
