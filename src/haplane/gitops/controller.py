"""The GitOps controller: one instance of several leads through a coordination.k8s.io Lease on
the platform; the leader fetches GitSources when due (or at once when the webhook pokes them),
renders each Sync, and brings each target to the rendered revision, then keeps checking it for
drift. Everything it knows between runs is in the platform (the Syncs' status, replicated to
every region) and in each target (the inventory), so another instance, or the same one after a
region failover, continues from what it finds.

Layer: sync. The platform is reached only through `KubeClient` (its public API, through the
gate, as the controller's own ServiceAccount); targets through the kubeconfigs their Secrets
hold.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from ..auth.kubeconfig import Credentials, KubeconfigError
from ..auth.kubeconfig import load as load_kubeconfig
from .engine import ObjectError, Outcome, Target
from .kube import KubeClient, KubeError, Resource, Unreachable
from .render import RenderError, render
from .source import GitError, GitRepository, is_local_path
from .types import API_VERSION, CRDS, GROUP, SourceSpec, SyncSpec

Obj = dict[str, Any]
log = logging.getLogger("haplane.gitops")

GIT_SOURCES = Resource(GROUP, "v1", "GitSource", "gitsources", True)
SYNCS = Resource(GROUP, "v1", "Sync", "syncs", True)
LEASES = Resource("coordination.k8s.io", "v1", "Lease", "leases", True)
SECRETS = Resource("", "v1", "Secret", "secrets", True)
CRD_RESOURCE = Resource(
    "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", False
)
PLATFORM = "platform"  # a target without a kubeconfig Secret: the platform itself
MAX_LISTED = 50  # errors, drift and pruned objects listed per target in status
TOKEN_SECONDS = 3600  # ServiceAccount tokens for Syncs that name one


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def emit(level: int, msg: str, /, **fields: Any) -> None:
    log.log(level, msg, extra={"fields": fields})


class LeaseElector:
    """Leader election on a Lease, as client-go's leaderelection does it: take the Lease when
    it is free or expired, renew it while leading, compare-and-swap by resourceVersion.

    Expiry is judged by this instance's own clock: a Lease held by another counts as expired
    once it has not changed for `duration` seconds *as observed here* (never by comparing the
    holder's renewTime with the local wall clock, which clock skew between sites would bend).
    A fresh instance therefore waits a full duration before taking a Lease it finds held."""

    def __init__(
        self, client: KubeClient, namespace: str, name: str, identity: str, duration: float
    ) -> None:
        self.client = client
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration = duration
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    async def attempt(self) -> bool:
        """Take or renew the Lease once: True when this instance holds it now."""
        lease = await self.client.get(LEASES, self.namespace, self.name)
        stamp = now_rfc3339()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, int(self.duration)),
            "renewTime": stamp,
        }
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {**spec, "acquireTime": stamp, "leaseTransitions": 0},
            }
            status, out = await self.client.request("POST", LEASES.path(self.namespace), body)
            return _held(status, out, created=True)
        current = lease.get("spec") or {}
        holder = current.get("holderIdentity")
        if holder and holder != self.identity and not self._expired(lease):
            return False
        if holder != self.identity:
            spec["acquireTime"] = stamp
            spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
            emit(logging.INFO, "taking the lease", previous=holder)
        lease["spec"] = {**current, **spec}
        status, out = await self.client.request(
            "PUT", LEASES.path(self.namespace, self.name), lease
        )
        return _held(status, out)

    def _expired(self, lease: Obj) -> bool:
        spec = lease.get("spec") or {}
        # the holder's own record of its renewals (as client-go watches it), not the object's
        # resourceVersion: that changes with every region switchover here, and would look
        # like a renewal
        seen = (spec.get("holderIdentity"), spec.get("renewTime"))
        now = time.monotonic()
        if seen != self._observed:
            self._observed, self._observed_at = seen, now
            return False
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        return now - self._observed_at > duration


def _held(status: int, out: Any, created: bool = False) -> bool:
    """Whether a write of the Lease made this instance its holder: a conflict (someone else
    wrote it first) is a clear no; any other error says nothing (KubeError: try again)."""
    if status == (201 if created else 200):
        return True
    if status == 409:
        return False
    raise KubeError.of(status, out)


@dataclass
class SourceState:
    commit: str = ""
    fetched: float = 0.0  # monotonic
    requested_at: str = ""
    error: str = ""
    origin: tuple[str, str] = ("", "")  # the (url, ref) fetched: a change fetches at once


@dataclass
class TargetState:
    target: Target
    client: KubeClient
    fingerprint: str  # of the kubeconfig it was made from
    checked: float = 0.0  # monotonic time of the last sync or drift check
    renew_at: float = float("inf")  # a ServiceAccount token is renewed then


@dataclass
class Settings:
    lease_namespace: str = "kube-system"
    lease_name: str = "haplane-gitops-controller"
    lease_duration: float = 15.0  # another instance takes over after this long without renewal
    # this instance stops all work when it could not renew for 2/3 of that (client-go's
    # renewDeadline), so the old leader has stopped before a new one can start
    tick: float = 0.5  # how often the leader lists sources and syncs
    install_crds: bool = True


@dataclass
class Metrics:
    syncs: dict[str, int] = field(default_factory=dict)  # result -> count
    fetches: dict[str, int] = field(default_factory=dict)
    sync_seconds_sum: float = 0.0
    hooks: int = 0


class Controller:
    def __init__(
        self, platform: KubeClient, cache: Path, identity: str, settings: Settings | None = None
    ) -> None:
        self.platform = platform
        self.cache = cache
        self.identity = identity
        self.settings = settings or Settings()
        self.elector = LeaseElector(
            platform,
            self.settings.lease_namespace,
            self.settings.lease_name,
            identity,
            self.settings.lease_duration,
        )
        self.metrics = Metrics()
        self._repos: dict[str, GitRepository] = {}
        self._sources: dict[tuple[str, str], SourceState] = {}
        self._renders: dict[tuple[str, str, str, str | None], list[Obj]] = {}
        self._targets: dict[tuple[str, str], TargetState] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._crds_installed = False
        self._crashed: dict[str, float] = {}
        self._wake = asyncio.Event()
        self.leading = False
        self._renewed = 0.0  # monotonic time of the last renewal
        self._pass: asyncio.Task[None] | None = None
        # the status this leader last wrote per Sync: newer than any list it may get (the
        # leader alone writes it); forgotten when leadership is lost
        self._status: dict[str, Obj] = {}
        self._backoff: dict[tuple[str, str], tuple[int, float]] = {}  # failures, last attempt
        self._uids: dict[str, str] = {}  # Sync id -> the uid of the object remembered
        self._fetching: dict[tuple[str, str], asyncio.Task[None]] = {}

    # -- the loop -----------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        emit(logging.INFO, "started", identity=self.identity)
        lease = asyncio.create_task(self._lease_loop(stop))
        watchdog = asyncio.create_task(self._watchdog(stop))
        try:
            while not stop.is_set():
                self._wake.clear()  # before the pass: a wake during it is not lost
                if self.leading:
                    self._pass = asyncio.create_task(self.reconcile())
                    await asyncio.wait({self._pass})
                    if not self._pass.cancelled() and (exc := self._pass.exception()):
                        if isinstance(exc, Unreachable | KubeError):
                            emit(logging.WARNING, "the platform refused or did not answer",
                                 error=str(exc))  # fmt: skip
                        else:
                            emit(logging.ERROR, "a pass failed", error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.tick)
        finally:
            for task in (lease, watchdog):
                task.cancel()
            await asyncio.gather(lease, watchdog, return_exceptions=True)
            await self._stop_leading()
            for fetch in self._fetching.values():
                fetch.cancel()
            for state in self._targets.values():
                if state.client is not self.platform:
                    await state.client.close()

    @property
    def _deadline(self) -> float:
        """When this leader must have stopped all work unless it renews: 2/3 of the duration
        after the *start* of its last successful renewal (client-go's renewDeadline). Another
        instance takes over only a full duration after it saw that renewal land."""
        return self._renewed + self.settings.lease_duration * 2 / 3

    async def _lease_loop(self, stop: asyncio.Event) -> None:
        """Renew every duration/5; each attempt bounded so that it ends before the deadline."""
        duration = self.settings.lease_duration
        while not stop.is_set():
            started = time.monotonic()
            budget = duration / 3
            if self.leading:
                budget = max(0.1, min(budget, self._deadline - started))
            try:
                held = await asyncio.wait_for(self.elector.attempt(), timeout=budget)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure is "not renewed"
                held = None
                if self.leading:
                    emit(logging.WARNING, "cannot renew the lease",
                         error=str(exc) or type(exc).__name__)  # fmt: skip
            if held:
                self._renewed = started
                if not self.leading:
                    self.leading = True
                    emit(logging.INFO, "leading", identity=self.identity)
                    self.wake()
            elif held is False and self.leading:
                emit(logging.WARNING, "the lease was taken: stopping all work")
                await self._stop_leading()
            await asyncio.sleep(duration / 5)

    async def _watchdog(self, stop: asyncio.Event) -> None:
        """Stops all work the moment the renew deadline passes, whatever the lease loop is
        waiting for."""
        while not stop.is_set():
            if self.leading and time.monotonic() > self._deadline:
                emit(logging.WARNING, "not renewed in time: stopping all work")
                await self._stop_leading()
            await asyncio.sleep(0.1)

    async def _stop_leading(self) -> None:
        self.leading = False
        if self._pass is not None:
            self._pass.cancel()
        for fetch in self._fetching.values():
            fetch.cancel()
        await self._cancel_all()
        # the next leadership starts from what the platform says: the Syncs' status and the
        # GitSources' recorded revisions (another leader may have moved them on meanwhile)
        self._status.clear()
        self._backoff.clear()
        self._sources.clear()

    async def _cancel_all(self) -> None:
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()

    async def install_crds(self) -> None:
        res = await self.platform.resource("apiextensions.k8s.io/v1", "CustomResourceDefinition")
        if res is None:
            raise KubeError(404, "NotFound", "the platform serves no CustomResourceDefinitions")
        for crd in CRDS:
            await self.platform.apply(res, crd)
        self.platform.forget(API_VERSION)

    async def reconcile(self) -> None:
        if self.settings.install_crds and not self._crds_installed:
            await self.install_crds()
            self._crds_installed = True
        sources = await self.platform.list(GIT_SOURCES)
        by_key: dict[tuple[str, str], SourceSpec] = {}
        pairs: list[tuple[SourceSpec, Obj]] = []
        for obj in sources:
            try:
                spec = SourceSpec.of(obj)
            except (ValueError, KeyError, TypeError) as exc:
                emit(logging.WARNING, "a GitSource cannot be read", error=str(exc))
                continue
            by_key[(spec.namespace, spec.name)] = spec
            pairs.append((spec, obj))
        # fetches run in the background, one per source: a slow or unreachable repository
        # holds up only the Syncs that use it (they go on from its last known revision)
        for spec, obj in pairs:
            key = (spec.namespace, spec.name)
            if key not in self._fetching and self._fetch_due(spec, obj):
                task = asyncio.create_task(self._fetch_guarded(spec, obj))
                self._fetching[key] = task
                task.add_done_callback(functools.partial(self._fetched, key))
        syncs = await self.platform.list(SYNCS)
        listed: set[str] = set()
        for obj in syncs:
            try:
                sync = SyncSpec.of(obj)
            except (ValueError, KeyError, TypeError) as exc:
                emit(logging.WARNING, "a Sync cannot be read", error=str(exc))
                continue
            listed.add(sync.id)
            uid = str(obj["metadata"].get("uid") or "")
            if self._uids.get(sync.id, uid) != uid:
                await self._forget_sync(sync.id)  # deleted and made again under its name
            self._uids[sync.id] = uid
            if sync.id in self._running or sync.suspend:
                continue
            if time.monotonic() - self._crashed.get(sync.id, -1e9) < 30.0:
                continue  # a crash is not retried at once
            source = by_key.get((sync.namespace, sync.source))
            task = asyncio.create_task(self._sync_guarded(sync, obj, source))
            self._running[sync.id] = task
            task.add_done_callback(functools.partial(self._done, sync.id))
        await self._forget_deleted(set(by_key), {s.url for s in by_key.values()}, listed)

    async def _forget_deleted(
        self, sources: set[tuple[str, str]], urls: set[str], syncs: set[str]
    ) -> None:
        """Drop what this instance remembers of Syncs and sources that were deleted."""
        for source_key in [k for k in self._sources if k not in sources]:
            del self._sources[source_key]
        for sync_id in {*self._uids, *self._status, *self._running} - syncs:
            await self._forget_sync(sync_id)
        for url in [u for u in self._repos if u not in urls]:
            del self._repos[url]
        for render_key in [k for k in self._renders if k[0] not in urls]:
            del self._renders[render_key]

    async def _forget_sync(self, sync_id: str) -> None:
        """Everything remembered of one Sync, its running sync stopped first (a Sync deleted,
        or deleted and made again: the new one starts from nothing)."""
        task = self._running.pop(sync_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._uids.pop(sync_id, None)
        self._status.pop(sync_id, None)
        self._crashed.pop(sync_id, None)
        for key in [k for k in self._backoff if k[0] == sync_id]:
            del self._backoff[key]
        for key in [k for k in self._targets if k[0] == sync_id]:
            state = self._targets.pop(key)
            if state.client is not self.platform:
                await state.client.close()

    def _done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._running.get(key) is task:
            del self._running[key]

    def _fetched(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._fetching.get(key) is task:
            del self._fetching[key]
        self.wake()  # a new revision is synced at once, not at the next tick

    # -- sources ------------------------------------------------------------------------------

    async def _fetch_guarded(self, spec: SourceSpec, obj: Obj) -> None:
        try:
            await self._fetch_if_due(spec, obj)
        except asyncio.CancelledError:
            raise
        except (Unreachable, KubeError) as exc:
            emit(logging.WARNING, "source status not written", source=spec.name, error=str(exc))
        except Exception as exc:  # one source's problem must not stop the others
            emit(logging.ERROR, "fetch crashed", source=f"{spec.namespace}/{spec.name}",
                 error=repr(exc))  # fmt: skip

    def _fetch_due(self, spec: SourceSpec, obj: Obj) -> bool:
        key = (spec.namespace, spec.name)
        state = self._sources.setdefault(key, SourceState())
        recorded = (obj.get("status") or {}).get("revision", "")
        if not state.fetched and not state.commit and recorded:
            # a new leadership: start from the revision on record (also while suspended)
            state.commit = recorded
        if spec.suspend:
            return False
        poked = spec.requested_at != state.requested_at and bool(spec.requested_at)
        changed_spec = (spec.url, spec.ref) != state.origin
        return (
            not state.fetched
            or poked
            or changed_spec
            or time.monotonic() - state.fetched >= spec.interval
        )

    async def _fetch_if_due(self, spec: SourceSpec, obj: Obj) -> None:
        key = (spec.namespace, spec.name)
        state = self._sources.setdefault(key, SourceState())
        # what this attempt answers (kept only once it is made: a cancelled one is made again)
        asked = (spec.requested_at, (spec.url, spec.ref))
        try:
            if is_local_path(spec.url) and not spec.url.startswith("/"):
                # it would be found relative to wherever this instance runs
                raise GitError(f"{spec.url!r}: a local repository path must be absolute")
            repo = self._repos.get(spec.url)
            if repo is None:
                repo = self._repos[spec.url] = GitRepository(self.cache, spec.url)
            commit = await repo.resolve(spec.ref)
        except GitError as exc:
            state.fetched, state.error = time.monotonic(), str(exc)
            state.requested_at, state.origin = asked
            self.metrics.fetches["error"] = self.metrics.fetches.get("error", 0) + 1
            await self._source_status(obj, state, ready=False, message=str(exc))
            return
        changed = commit != state.commit
        state.commit, state.fetched, state.error = commit, time.monotonic(), ""
        state.requested_at, state.origin = asked
        self.metrics.fetches["ok"] = self.metrics.fetches.get("ok", 0) + 1
        if changed:
            emit(logging.INFO, "new revision", source=f"{key[0]}/{key[1]}", commit=commit)
        await self._source_status(obj, state, ready=True, message=f"fetched {spec.ref}")

    async def _source_status(
        self, obj: Obj, state: SourceState, *, ready: bool, message: str
    ) -> None:
        old = obj.get("status") or {}
        condition = _condition(old, "Ready", ready, "Fetched" if ready else "FetchFailed", message)
        status = {
            "revision": state.commit if ready else old.get("revision", ""),
            "lastFetchTime": now_rfc3339(),
            "observedGeneration": obj["metadata"].get("generation", 0),
            "conditions": [condition],
        }
        await self._patch_status(GIT_SOURCES, obj, status)

    # -- syncs --------------------------------------------------------------------------------

    async def _sync_guarded(self, sync: SyncSpec, obj: Obj, source: SourceSpec | None) -> None:
        try:
            await self._sync(sync, obj, source)
        except asyncio.CancelledError:
            raise
        except (Unreachable, KubeError) as exc:
            emit(logging.WARNING, "sync interrupted", sync=sync.id, error=str(exc))
        except Exception as exc:  # one Sync's bug must not stop the others
            emit(logging.ERROR, "sync crashed", sync=sync.id, error=repr(exc))
            self._crashed[sync.id] = time.monotonic()

    async def _sync(self, sync: SyncSpec, obj: Obj, source: SourceSpec | None) -> None:
        status = dict(self._status.get(sync.id) or obj.get("status") or {})
        state = self._sources.get((sync.namespace, sync.source))
        if source is None or state is None or not state.commit:
            why = (
                f"GitSource {sync.source} does not exist"
                if source is None
                else f"GitSource {sync.source} has no revision yet"
                + (f": {state.error}" if state and state.error else "")
            )
            if _condition_status(status, "Synced") != ("False", "SourceNotReady", why):
                status["conditions"] = _conditions(
                    status, synced=(False, "SourceNotReady", why), healthy=None
                )
                await self._patch_status(SYNCS, obj, status)
            return
        commit = state.commit
        previous = {t.get("name"): t for t in status.get("targets") or () if isinstance(t, dict)}
        entries: list[Obj] = []
        worked = False
        requested = bool(sync.requested_at) and sync.requested_at != status.get("handledRequest")
        new_spec = status.get("observedGeneration") != sync.generation
        # the targets side by side: one slow cluster does not hold up the others
        results = await asyncio.gather(
            *(
                self._target(
                    sync,
                    spec,
                    commit,
                    previous.get(spec.name) or {},
                    again=requested or new_spec,
                    now=requested,
                    source=source,
                )
                for spec in sync.targets
            )
        )
        for entry, did in results:
            worked = worked or did
            entries.append(entry)
        same_targets = [e.get("name") for e in entries] == list(previous)
        if not worked and same_targets and not requested and not new_spec:
            return  # (a new spec is always recorded: it is then no longer new)
        status["targets"] = entries
        status["revision"] = commit
        if requested:
            status["handledRequest"] = sync.requested_at
        status["observedGeneration"] = sync.generation
        all_synced = all(e.get("synced") for e in entries)
        if all_synced:
            status["lastAppliedRevision"] = commit
        status["lastSyncTime"] = max((e.get("lastSyncTime", "") for e in entries), default="")
        status["conditions"] = _conditions(
            status,
            synced=_synced(entries, commit),
            healthy=_healthy(entries),
        )
        await self._patch_status(SYNCS, obj, status)

    async def _target(
        self,
        sync: SyncSpec,
        spec: Any,
        commit: str,
        old: Obj,
        *,
        again: bool,
        now: bool,
        source: SourceSpec,
    ) -> tuple[Obj, bool]:
        """(the target's status entry, whether it changed). A failed attempt is retried
        with backoff (2 s doubling to 5 min); a request (`haplane gitops sync`: `now`) retries
        at once. `again`: sync in full even if nothing seems to have changed."""
        key = (sync.id, spec.name)
        failures, last = self._backoff.get(key, (0, 0.0))
        clock = time.monotonic()
        if failures and not now and clock - last < min(300.0, 2.0 ** min(failures, 8)):
            return old or {"name": spec.name}, False
        try:
            state = await self._target_state(sync, spec)
        except (KubeconfigError, KubeError, Unreachable) as exc:
            self._backoff[key] = (failures + 1, clock)
            entry = _entry_error(old, spec.name, "TargetUnavailable", str(exc))
            return entry, _differs(entry, old)
        # due: a new revision, spec or target, a request, or a failed attempt
        due_sync = (
            again
            or old.get("revision") != commit
            or not old.get("complete", False)
            or old.get("credentials") != state.fingerprint
        )
        if not due_sync and state.checked and clock - state.checked < sync.interval:
            return old, False
        state.checked = clock
        objects = await self._render(source, commit, sync.path, spec.overlay or sync.overlay)
        if isinstance(objects, RenderError):
            self._backoff[key] = (failures + 1, clock)
            entry = _entry_error(old, spec.name, "RenderFailed", str(objects))
            entry["attempted"] = commit
            return entry, _differs(entry, old)
        started = time.monotonic()
        if due_sync:
            outcome = await state.target.sync(
                objects, commit, prune=sync.prune, allow_empty=sync.allow_empty
            )
        else:
            outcome = await state.target.check(objects, commit, self_heal=sync.self_heal)
        took = time.monotonic() - started
        result = "ok" if outcome.complete else "unreachable" if outcome.unreachable else "failed"
        self.metrics.syncs[result] = self.metrics.syncs.get(result, 0) + 1
        self.metrics.sync_seconds_sum += took
        if outcome.complete:
            self._backoff.pop(key, None)
        else:
            self._backoff[key] = (failures + 1, clock)
        if due_sync or outcome.drift or outcome.errors:
            emit(
                logging.INFO if outcome.complete else logging.WARNING,
                "synced" if due_sync else "checked",
                sync=sync.id,
                target=spec.name,
                revision=commit,
                complete=outcome.complete,
                seconds=round(took, 3),
                message=outcome.message,
                drift=len(outcome.drift),
                pruned=len(outcome.pruned),
            )
        entry = _entry(old, spec.name, outcome, due_sync)
        if due_sync and outcome.complete:
            entry["credentials"] = state.fingerprint
        return entry, True

    async def _target_state(self, sync: SyncSpec, spec: Any) -> TargetState:
        """The engine for one target, kept between passes while its credentials stay the
        same. `fingerprint` names what is reached and as whom (recorded in the status: a
        change syncs in full)."""
        key = (sync.id, spec.name)
        state = self._targets.get(key)
        renew_at: float | None = None
        if spec.secret is None and sync.service_account is None:
            fingerprint = PLATFORM

            async def make() -> KubeClient:
                return self.platform

        elif spec.secret is None:
            # the platform as the Sync's ServiceAccount (its RBAC, not the controller's)
            account = str(sync.service_account)
            fingerprint = f"{PLATFORM}:serviceaccount:{sync.namespace}:{account}"

            async def make() -> KubeClient:
                token = await self._token(sync.namespace, account)
                c = self.platform.credentials
                # the platform's CA only: the controller's own client certificate, if its
                # kubeconfig has one, would be believed over the token
                return KubeClient(
                    Credentials(c.server, c.ca_context, token, f"{sync.namespace}/{account}")
                )

            if state is not None and state.fingerprint == fingerprint:
                if time.monotonic() < state.renew_at:
                    return state
                renewed = await make()  # a fresh token, the engine's memory kept
                old_client, state.client = state.client, renewed
                state.target.client = renewed
                state.renew_at = time.monotonic() + TOKEN_SECONDS * 0.8
                await old_client.close()
                return state
            renew_at = time.monotonic() + TOKEN_SECONDS * 0.8
        else:
            name, field_key = spec.secret
            secret = await self.platform.get(SECRETS, sync.namespace, name)
            if secret is None:
                raise KubeconfigError(f"Secret {sync.namespace}/{name} does not exist")
            raw = (secret.get("data") or {}).get(field_key)
            if not raw:
                raise KubeconfigError(f"Secret {sync.namespace}/{name} has no key {field_key!r}")
            fingerprint = "secret:" + hashlib.sha256(raw.encode()).hexdigest()[:16]
            where = f"in Secret {sync.namespace}/{name} key {field_key}"

            async def make() -> KubeClient:
                # what fails is said without quoting the Secret: it may hold anything
                try:
                    text = base64.b64decode(raw, validate=True)
                except ValueError:
                    raise KubeconfigError(f"kubeconfig {where}: not base64") from None
                try:
                    doc = yaml.safe_load(text)
                except yaml.YAMLError as exc:
                    mark = getattr(exc, "problem_mark", None)
                    line = f" (line {mark.line + 1})" if mark is not None else ""
                    raise KubeconfigError(f"kubeconfig {where}: not valid YAML{line}") from None
                # only what the Secret itself holds: never a file of the controller's host
                return KubeClient(load_kubeconfig(doc, where, allow_files=False))

        if state is None or state.fingerprint != fingerprint:
            if state is not None and state.client is not self.platform:
                await state.client.close()
            client = await make()
            # the inventory is written as the controller: a ServiceAccount allowed only its
            # own namespace could not keep it (nor should it touch other Syncs')
            inventory = self.platform if spec.secret is None else None
            state = self._targets[key] = TargetState(
                Target(client, f"{sync.id}/{spec.name}", inventory=inventory), client, fingerprint
            )
            if renew_at is not None:
                state.renew_at = renew_at
        return state

    async def _token(self, namespace: str, account: str) -> str:
        """A TokenRequest for the ServiceAccount (the controller's role may create them)."""
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": TOKEN_SECONDS},
        }
        out = await self.platform.call("POST", path, body)
        token = (out.get("status") or {}).get("token")
        if not isinstance(token, str) or not token:
            raise KubeconfigError(f"no token for ServiceAccount {namespace}/{account}")
        return token

    async def _render(
        self, source: SourceSpec, commit: str, path: str, overlay: str | None
    ) -> list[Obj] | RenderError:
        """The objects of one commit (cached); an error is never cached: a repository that
        was unreachable, or a kustomize that timed out, is tried again next time."""
        key = (source.url, commit, path, overlay)
        if key not in self._renders:
            try:
                repo = self._repos.get(source.url)
                if repo is None:
                    repo = self._repos[source.url] = GitRepository(self.cache, source.url)
                tree = await repo.checkout(commit)
                self._renders[key] = await render(tree, path, overlay)
            except RenderError as exc:
                return exc
            except GitError as exc:
                return RenderError(str(exc))
            while len(self._renders) > 64:
                self._renders.pop(next(iter(self._renders)))
        return [dict(o) for o in self._renders[key]]

    async def _patch_status(self, res: Resource, obj: Obj, status: Obj) -> None:
        meta = obj["metadata"]
        path = res.path(meta.get("namespace"), meta["name"]) + "/status"
        body = {"status": status}
        code, out = await self.platform.request(
            "PATCH", path, body, content_type="application/merge-patch+json"
        )
        if code >= 400:
            emit(
                logging.WARNING,
                "status not written",
                object=path,
                code=code,
                error=str(out.get("message")),
            )
            return
        obj["status"] = out.get("status", status)
        if res is SYNCS:
            self._status[f"{meta.get('namespace')}/{meta['name']}"] = dict(obj["status"])

    # -- diff, for the CLI ----------------------------------------------------------------------


def _condition(old_status: Obj, kind: str, ok: bool, reason: str, message: str) -> Obj:
    status = "True" if ok else "False"
    before = next((c for c in old_status.get("conditions") or () if c.get("type") == kind), None)
    since = (
        before.get("lastTransitionTime")
        if before and before.get("status") == status
        else now_rfc3339()
    )
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message[:1000],
        "lastTransitionTime": since,
    }


def _condition_status(status: Obj, kind: str) -> tuple[str, str, str] | None:
    for c in status.get("conditions") or ():
        if c.get("type") == kind:
            return (c.get("status", ""), c.get("reason", ""), c.get("message", ""))
    return None


def _conditions(
    status: Obj,
    *,
    synced: tuple[bool, str, str],
    healthy: tuple[bool | None, str, str] | None,
) -> list[Obj]:
    out = [_condition(status, "Synced", *synced)]
    if healthy is not None:
        ok, reason, message = healthy
        c = _condition(status, "Healthy", bool(ok), reason, message)
        if ok is None:
            c["status"] = "Unknown"
        out.append(c)
    return out


def _synced(entries: list[Obj], commit: str) -> tuple[bool, str, str]:
    bad = [e for e in entries if not e.get("synced")]
    if not bad:
        return True, "Synced", f"every target is at {commit[:12]}"
    first = bad[0]
    names = ", ".join(str(e.get("name")) for e in bad)
    return False, str(first.get("reason") or "Failed"), f"{names}: {first.get('message', '')}"


def _healthy(entries: list[Obj]) -> tuple[bool | None, str, str]:
    states = [str(e.get("health") or "Unknown") for e in entries]
    for worst in ("Degraded", "Progressing", "Unknown"):
        if worst in states:
            names = ", ".join(str(e["name"]) for e in entries if e.get("health") == worst)
            return (None if worst == "Unknown" else False), worst, f"{names}: {worst}"
    return True, "Healthy", "every applied object is healthy"


def _entry_error(old: Obj, name: str, reason: str, message: str) -> Obj:
    """A failure before anything was sent: the last good state stays, the error is added."""
    return {
        **old,
        "name": name,
        "synced": False,
        "reason": reason,
        "message": message[:2000],
        "lastAttemptTime": now_rfc3339(),
    }


def _differs(entry: Obj, old: Obj) -> bool:
    """Whether a failure's entry says anything the stored one does not (no status write
    per retry for the same error)."""
    ignore = ("lastAttemptTime",)
    return {k: v for k, v in entry.items() if k not in ignore} != {
        k: v for k, v in old.items() if k not in ignore
    }


def _entry(old: Obj, name: str, outcome: Outcome, synced_now: bool) -> Obj:
    stamp = now_rfc3339()
    entry: Obj = {**old, "name": name, "lastAttemptTime": stamp}
    errors = [e.to_json() for e in outcome.errors[:MAX_LISTED]]
    if outcome.unreachable:
        # the last good state stays as it was: only say why nothing changed
        entry.update(synced=False, reason="Unreachable", message=outcome.message, errors=[])
        return entry
    if synced_now:
        entry.update(
            attempted=outcome.revision,
            appliedSteps=outcome.applied_steps,
            complete=outcome.complete,
        )
        if outcome.complete:
            entry.update(
                revision=outcome.revision,
                lastSyncTime=stamp,
                objects=outcome.applied,
                pruned=outcome.pruned[:MAX_LISTED],
                kept=outcome.kept[:MAX_LISTED],
            )
    entry["errors"] = errors
    entry["drift"] = outcome.drift[:MAX_LISTED]
    entry["healed"] = outcome.healed[:MAX_LISTED]
    entry["lastCheckTime"] = stamp
    if outcome.complete:
        entry["health"] = outcome.health
        entry["healthMessages"] = outcome.health_messages[:MAX_LISTED]
    unhealed = len(outcome.drift) - len(outcome.healed)
    if not outcome.complete:
        entry.update(
            synced=False, reason="Failed", message=outcome.message or _first(outcome.errors)
        )
    elif unhealed > 0:
        entry.update(
            synced=False,
            reason="Drifted",
            message=f"{unhealed} objects differ from the source (selfHeal is off)",
        )
    else:
        message = f"applied {outcome.revision[:12]}"
        if outcome.healed:
            message += f"; healed {len(outcome.healed)} drifted objects"
        if outcome.kept:
            message += f"; {len(outcome.kept)} objects the source dropped are kept (prune is off)"
        entry.update(synced=True, reason="Synced", message=message)
    return entry


def _first(errors: list[ObjectError]) -> str:
    return f"{errors[0].object}: {errors[0].message}" if errors else "failed"
