"""A thin asyncio etcd v3 client over the gRPC stubs that the `aetcd` wheel ships (`aetcd.rpc`).

Layer: store. Talks to etcd members over gRPC; nothing else.

Why our own wrapper: FIELD-NOTES compared the Python clients; none has per-call deadlines,
multi-endpoint failover and a safe write-retry rule together. Generated stubs come from a package;
no code generated from etcd's .proto files is committed here.

Invariants:
- every call has a deadline (`timeout`, default 0.5 s);
- reads try the members in turn until the deadline: they change nothing, so any failure is safe
  to retry;
- a write is sent only on a channel that is READY, so "not connected" is provably "not sent" and
  moves on to the next member; once sent, a lost answer (deadline, reset) raises
  `EtcdOutcomeUnknown` and is never retried. The one server answer that provably precedes the
  proposal is "no leader" from the `hasleader` check, which is also moved on from;
- writes and linearizable reads carry `hasleader: true`, so a member cut off from its leader
  refuses at once instead of stalling until etcd's request timeout;
- deadlines are points on `boottime()` (CLOCK_BOOTTIME: keeps counting while the host is
  suspended, unlike CLOCK_MONOTONIC). A write may be given an absolute `deadline` (the end of
  a write permission, see `haplane.api.fencing`): at send time, with less than `min_window`
  left, it is refused as `EtcdWindowClosed` (not sent) instead of going out with a deadline
  that a pause since the permission check has already eaten.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from aetcd.rpc import rpc_pb2, rpc_pb2_grpc

from .clock import boottime
from .errors import (
    EtcdClusterReplaced,
    EtcdCompacted,
    EtcdError,
    EtcdNoQuorum,
    EtcdOutcomeUnknown,
    EtcdRejected,
    EtcdUnavailable,
    EtcdWindowClosed,
)

T = TypeVar("T")


@dataclass(frozen=True)
class EtcdTls:
    """Client TLS towards etcd: the CA that signed the members' serving certificates, and this
    client's own certificate (members run with --client-cert-auth). The member's address is
    checked against its certificate's SANs (IP addresses included)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_flags(cls, ca: str | None, cert: str | None, key: str | None) -> EtcdTls | None:
        """From `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile` (kube-apiserver's names):
        None when none is given; ValueError when only some are."""
        given = (ca, cert, key)
        if not any(given):
            return None
        if not all(given):
            raise ValueError("--etcd-cafile, --etcd-certfile and --etcd-keyfile go together")
        return cls(Path(str(ca)), Path(str(cert)), Path(str(key)))

    def credentials(self) -> grpc.ChannelCredentials:
        try:
            ca, key, cert = self.ca.read_bytes(), self.key.read_bytes(), self.cert.read_bytes()
        except OSError as exc:  # e.g. a topology never started: no certificates yet
            raise EtcdUnavailable(f"etcd TLS: cannot read {exc.filename}: {exc.strerror}") from None
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )


# How long one connection attempt (TCP and the TLS handshake) may take. gRPC core reads
# `grpc.min_reconnect_backoff_ms` as this, not as a backoff (its MIN_CONNECT_TIMEOUT, default
# 20 s): it was set to 100 ms here, and a handshake slower than that on a loaded machine was
# cut short ("Handshake read failed (Endpoint closing)", a call failed in ~0.14 s where it
# had a second: tests/test_etcd_tls.py). A call still ends at its own deadline.
CONNECT_TIMEOUT_MS = 1000
_CHANNEL_OPTIONS = [
    # A restarted member must be noticed in well under a second (FIELD-NOTES): a refused
    # connection is tried again after 100 ms, backing off to 500 ms
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),
    # A member that hangs (SIGSTOP, a silent partition) keeps its TCP connection open: without
    # keepalive a watch on it would wait forever. etcd answers pings more often than every 5 s,
    # or pings without a call in flight, with GOAWAY "too_many_pings"
    # (--grpc-keepalive-min-time): ping every 6 s during calls, give up after 3 s of silence.
    ("grpc.keepalive_time_ms", 6000),
    ("grpc.keepalive_timeout_ms", 3000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # a watch sends no data after its create request: let pings go out anyway
    ("grpc.http2.min_time_between_pings_ms", 6000),
    ("grpc.http2.min_ping_interval_without_data_ms", 6000),
]
_HAS_LEADER = (("hasleader", "true"),)
WATCH_PROGRESS_EVERY = 2.0  # seconds between liveness checks of a quiet watch stream
WATCH_ANSWER_WITHIN = 3.0
_NO_LEADER = "etcdserver: no leader"


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class Compare:
    """One txn guard on a key: `target` of MOD/CREATE/VERSION compared with `value`."""

    key: bytes
    target: str  # "mod", "create", "version", "value"
    op: str  # "=", "!=", "<", ">"
    value: int | bytes


@dataclass(frozen=True)
class Op:
    """One txn operation: put(value), delete, or get."""

    kind: str  # "put", "delete", "get"
    key: bytes
    value: bytes = b""
    lease: int = 0
    range_end: bytes = b""  # delete or get: every key in [key, range_end)


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # per op of the branch that ran: the KeyValues a get returned, the prev_kv a delete removed
    results: list[list[KeyValue]]


@dataclass(frozen=True)
class WatchEvent:
    type: str  # "PUT" or "DELETE"
    kv: KeyValue  # for DELETE: key and mod_revision (of the delete) only
    prev_kv: KeyValue | None


@dataclass(frozen=True)
class WatchBatch:
    """What one watch response carried: events (possibly none: a progress notification) and the
    store revision the member had reached."""

    events: list[WatchEvent]
    revision: int


@dataclass(frozen=True)
class MemberStatus:
    endpoint: str
    member_id: int
    leader: int
    raft_term: int
    raft_index: int
    revision: int
    db_size: int
    db_size_in_use: int
    version: str
    errors: tuple[str, ...]

    @property
    def is_leader(self) -> bool:
        return self.member_id == self.leader and self.leader != 0


@dataclass(frozen=True)
class Alarm:
    member_id: int
    alarm: str  # NOSPACE, CORRUPT


@dataclass(frozen=True)
class KVHash:
    endpoint: str
    hash: int
    revision: int
    compact_revision: int


@dataclass(frozen=True)
class Member:
    member_id: int
    name: str  # "" until a member added to the cluster has started
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool = False


def _member(m: Any) -> Member:
    return Member(
        int(m.ID), m.name, tuple(m.peerURLs), tuple(m.clientURLs), bool(getattr(m, "isLearner", 0))
    )


def _kv(kv: Any) -> KeyValue:
    return KeyValue(
        key=kv.key,
        value=kv.value,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )


class EtcdClient:
    """Client for one etcd cluster, given its members' client endpoints (`host:port`)."""

    def __init__(
        self, endpoints: Sequence[str], *, timeout: float = 0.5, tls: EtcdTls | None = None
    ):
        if not endpoints:
            raise ValueError("an etcd client needs at least one endpoint")
        self.endpoints = [e.removeprefix("http://").removeprefix("https://") for e in endpoints]
        self.timeout = timeout
        self.tls = tls
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._kv_stubs: dict[int, rpc_pb2_grpc.KVStub] = {}  # by id() of a live channel
        self._preferred = 0  # index of the member that answered last

    # ---- channels ------------------------------------------------------------------------

    def _kv_stub(self, ch: grpc.aio.Channel) -> rpc_pb2_grpc.KVStub:
        """One KV stub per channel: building one binds every KV method anew (~5% of a create's
        CPU when done per call)."""
        stub = self._kv_stubs.get(id(ch))
        if stub is None:
            stub = self._kv_stubs[id(ch)] = rpc_pb2_grpc.KVStub(ch)
        return stub

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        ch = self._channels.get(endpoint)
        if ch is None:
            if self.tls is None:
                ch = grpc.aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
            else:  # files read per channel: a rotated certificate serves new channels
                ch = grpc.aio.secure_channel(
                    endpoint, self.tls.credentials(), options=_CHANNEL_OPTIONS
                )
            self._channels[endpoint] = ch
        return ch

    def _order(self) -> list[str]:
        n = len(self.endpoints)
        return [self.endpoints[(self._preferred + i) % n] for i in range(n)]

    def _prefer(self, endpoint: str) -> None:
        self._preferred = self.endpoints.index(endpoint)

    def _demote(self, endpoint: str) -> None:
        if self.endpoints[self._preferred] == endpoint:
            self._preferred = (self._preferred + 1) % len(self.endpoints)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        self._kv_stubs.clear()
        for ch in channels:
            await ch.close()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- call helpers --------------------------------------------------------------------

    async def _read(
        self,
        call: Callable[[grpc.aio.Channel, float], Awaitable[T]],
        timeout: float | None,
        endpoints: Sequence[str] | None = None,
    ) -> T:
        """Try members in turn until one answers or the deadline passes. Reads are side-effect
        free, so any failure may be retried elsewhere."""
        deadline = boottime() + (timeout or self.timeout)
        order = list(endpoints) if endpoints is not None else self._order()
        last: Exception | None = None
        no_leader = 0
        for i, ep in enumerate(order):
            remaining = deadline - boottime()
            if remaining <= 0:
                break
            # Leave time for the members not tried yet: a hung member must not eat the budget.
            attempt = remaining / (len(order) - i) if i < len(order) - 1 else remaining
            try:
                result = await call(self._channel(ep), attempt)
            except grpc.aio.AioRpcError as exc:
                translated = _translate(exc, ep)
                if not isinstance(translated, EtcdUnavailable | EtcdOutcomeUnknown):
                    raise translated from exc
                no_leader += isinstance(translated, EtcdNoQuorum)
                last = translated
                continue
            self._prefer(ep)
            return result
        if no_leader and no_leader == len(order):
            raise EtcdNoQuorum(
                f"no etcd member has a leader ({', '.join(order)}): the cluster has lost quorum"
            )
        raise EtcdUnavailable(
            f"no etcd member answered within {timeout or self.timeout:.2f}s "
            f"({', '.join(order)}): {last}"
        )

    async def _write(
        self,
        call: Callable[[grpc.aio.Channel, float], Awaitable[T]],
        timeout: float | None,
        *,
        deadline: float | None = None,
        min_window: float = 0.0,
        before_send: Callable[[], None] | None = None,
    ) -> T:
        """Send once, on a connected member; see the module docstring for the retry rule.
        `deadline` (on `boottime()`) overrides `timeout`; `before_send` is a test hook called
        after every client-side check, right before the request goes out."""
        if deadline is None:
            deadline = boottime() + (timeout or self.timeout)
        tried_no_leader: set[str] = set()
        while True:
            remaining = deadline - boottime()
            if remaining <= min_window:
                break
            ep = await self._ready_endpoint(remaining, exclude=tried_no_leader)
            if ep is None:
                break
            left = deadline - boottime()  # the wait for a channel, or a pause, may have eaten it
            if left <= min_window:
                break
            if before_send is not None:
                before_send()
            try:
                result = await call(self._channel(ep), left)
            except grpc.aio.AioRpcError as exc:
                translated = _translate(exc, ep)
                if isinstance(translated, EtcdNoQuorum):
                    tried_no_leader.add(ep)  # refused before proposal: try another member
                    continue
                if isinstance(translated, EtcdUnavailable | EtcdOutcomeUnknown):
                    # The request was on the wire on a READY channel: we cannot prove it was not
                    # received, so its outcome is unknown. The member may hang with its
                    # connection open (SIGSTOP, a silent cut): try another one next time.
                    self._demote(ep)
                    raise EtcdOutcomeUnknown(
                        f"write sent to etcd member {ep} got no answer ({exc.code().name}: "
                        f"{exc.details()}); "
                        "it may or may not have been applied"
                    ) from exc
                raise translated from exc
            self._prefer(ep)
            return result
        if min_window and deadline - boottime() <= min_window:
            raise EtcdWindowClosed(
                f"less than {min_window * 1000:.0f} ms of the write's window was left at send "
                "time; the write was not sent"
            )
        if tried_no_leader:
            unreachable = len(self.endpoints) - len(tried_no_leader)
            raise EtcdNoQuorum(
                f"{len(tried_no_leader)} etcd member(s) answered without a leader and "
                f"{unreachable} were unreachable: the cluster has lost quorum; "
                "the write was not applied"
            )
        raise EtcdUnavailable(
            f"no etcd member reachable within {timeout or self.timeout:.2f}s "
            f"({', '.join(self.endpoints)}); the write was not sent"
        )

    async def _ready_endpoint(self, remaining: float, exclude: set[str]) -> str | None:
        preferred = self.endpoints[self._preferred]
        if preferred not in exclude and (
            self._channel(preferred).get_state(try_to_connect=True)
            == grpc.ChannelConnectivity.READY
        ):
            return preferred  # the common case, without building the candidate list
        candidates = [ep for ep in self._order() if ep not in exclude]
        if not candidates:
            return None
        for ep in candidates:
            if self._channel(ep).get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
                return ep
        # None connected yet (first use, or members restarting): wait for the first that is.
        waiters = {
            asyncio.ensure_future(self._channel(ep).channel_ready()): ep for ep in candidates
        }
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for fut in waiters:
                fut.cancel()
        for fut in done:
            if not fut.cancelled() and fut.exception() is None:
                return waiters[fut]
        return None

    # ---- KV ------------------------------------------------------------------------------

    async def put(
        self, key: bytes, value: bytes, *, lease: int = 0, timeout: float | None = None
    ) -> int:
        """Write a key; returns the revision of the write."""
        req = rpc_pb2.PutRequest(key=key, value=value, lease=lease)

        async def call(ch: grpc.aio.Channel, t: float) -> int:
            resp = await self._kv_stub(ch).Put(req, timeout=t, metadata=_HAS_LEADER)
            return int(resp.header.revision)

        return await self._write(call, timeout)

    async def delete(self, key: bytes, *, timeout: float | None = None) -> int:
        """Delete a key; returns the number of keys deleted."""
        req = rpc_pb2.DeleteRangeRequest(key=key)

        async def call(ch: grpc.aio.Channel, t: float) -> int:
            resp = await self._kv_stub(ch).DeleteRange(req, timeout=t, metadata=_HAS_LEADER)
            return int(resp.deleted)

        return await self._write(call, timeout)

    async def get(
        self,
        key: bytes,
        *,
        serializable: bool = False,
        timeout: float | None = None,
        endpoint: str | None = None,
    ) -> KeyValue | None:
        kvs, _ = await self.range(
            key, serializable=serializable, timeout=timeout, endpoint=endpoint
        )
        return kvs[0] if kvs else None

    async def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        prefix: bool = False,
        revision: int = 0,
        limit: int = 0,
        serializable: bool = False,
        timeout: float | None = None,
        endpoint: str | None = None,
    ) -> tuple[list[KeyValue], int]:
        """Read keys; returns them and the store revision the read saw.

        Linearizable by default (needs quorum); `serializable=True` answers from one member's
        local state, even without quorum, and may be stale."""
        if prefix:
            range_end = prefix_end(key)
        req = rpc_pb2.RangeRequest(
            key=key, range_end=range_end, revision=revision, limit=limit, serializable=serializable
        )
        md = () if serializable else _HAS_LEADER

        async def call(ch: grpc.aio.Channel, t: float) -> tuple[list[KeyValue], int]:
            resp = await self._kv_stub(ch).Range(req, timeout=t, metadata=md)
            return [_kv(kv) for kv in resp.kvs], int(resp.header.revision)

        return await self._read(call, timeout, [endpoint] if endpoint else None)

    # ---- transactions --------------------------------------------------------------------

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        min_window: float = 0.0,
        before_send: Callable[[], None] | None = None,
    ) -> TxnResult:
        """One atomic etcd transaction. A txn with only `get` ops is a read; otherwise a write
        (see the retry rule in the module docstring; `deadline`, `min_window` and
        `before_send` apply to writes)."""
        # Filled in place: building each message and copying it into the request took three
        # times as long (a few % of a create through the API).
        req = rpc_pb2.TxnRequest()
        for c in compare:
            _fill_compare(req.compare.add(), c)
        for o in success:
            _fill_op(req.success.add(), o)
        for o in failure:
            _fill_op(req.failure.add(), o)

        async def call(ch: grpc.aio.Channel, t: float) -> TxnResult:
            r = await self._kv_stub(ch).Txn(req, timeout=t, metadata=_HAS_LEADER)
            results: list[list[KeyValue]] = []
            for resp in r.responses:
                which = resp.WhichOneof("response")
                if which == "response_range":
                    results.append([_kv(kv) for kv in resp.response_range.kvs])
                elif which == "response_delete_range":
                    results.append([_kv(kv) for kv in resp.response_delete_range.prev_kvs])
                else:
                    results.append([])
            return TxnResult(bool(r.succeeded), int(r.header.revision), results)

        if all(o.kind == "get" for o in (*success, *failure)):
            return await self._read(call, timeout)
        return await self._write(
            call, timeout, deadline=deadline, min_window=min_window, before_send=before_send
        )

    async def cluster_id(self, *, timeout: float | None = None) -> int:
        async def call(ch: grpc.aio.Channel, t: float) -> int:
            r = await rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=t)
            return int(r.header.cluster_id)

        return await self._read(call, timeout)

    # ---- leases --------------------------------------------------------------------------

    async def lease_grant(self, ttl: int, *, timeout: float | None = None) -> int:
        """A new lease of `ttl` whole seconds (etcd raises it to its minimum, 1.5 x the
        election timeout); returns its id. Keys put with it vanish when it expires."""
        req = rpc_pb2.LeaseGrantRequest(TTL=ttl)

        async def call(ch: grpc.aio.Channel, t: float) -> int:
            r = await rpc_pb2_grpc.LeaseStub(ch).LeaseGrant(req, timeout=t, metadata=_HAS_LEADER)
            return int(r.ID)

        return await self._write(call, timeout)

    async def lease_keepalive(self, lease: int, *, timeout: float | None = None) -> int:
        """Renew a lease once; returns its TTL now (0: it had expired). Renewing is idempotent,
        so it is retried on another member like a read."""

        async def call(ch: grpc.aio.Channel, t: float) -> int:
            stream = rpc_pb2_grpc.LeaseStub(ch).LeaseKeepAlive(timeout=t, metadata=_HAS_LEADER)
            try:
                await stream.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease))
                r = await stream.read()
            finally:
                stream.cancel()
            if r is grpc.aio.EOF:
                raise EtcdUnavailable(f"lease keepalive stream on {ch} ended without an answer")
            return int(r.TTL)

        return await self._read(call, timeout)

    async def lease_revoke(self, lease: int, *, timeout: float | None = None) -> None:
        """End a lease now, deleting its keys (an expired or unknown lease is not an error)."""
        req = rpc_pb2.LeaseRevokeRequest(ID=lease)

        async def call(ch: grpc.aio.Channel, t: float) -> None:
            try:
                await rpc_pb2_grpc.LeaseStub(ch).LeaseRevoke(req, timeout=t, metadata=_HAS_LEADER)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        await self._write(call, timeout)

    # ---- watch ---------------------------------------------------------------------------

    async def watch(
        self,
        key: bytes,
        *,
        prefix: bool = False,
        range_end: bytes | None = None,
        start_revision: int = 0,
        progress_notify: bool = True,
        connect_timeout: float | None = None,
        on_interrupted: Callable[[str], None] | None = None,
    ) -> AsyncIterator[WatchBatch]:
        """Watch a key or prefix from `start_revision` (0: from now), forever.

        When the member serving the watch fails or loses its leader, the watch resumes on
        another member from the revision after the last one delivered, so no event is lost or
        repeated. A start revision that was compacted raises `EtcdCompacted` (relist, then watch
        from the list's revision); so does resuming on a member of another cluster than the
        watch began on (`EtcdClusterReplaced`: restored from a snapshot, its revisions are
        another history's). If no member accepts the watch within `connect_timeout`
        (default: the client timeout x 4), raises `EtcdUnavailable`. `range_end` (instead of
        `prefix`) watches `[key, range_end)`; `b"\\0"` with key `b"\\0"`: every key.
        `on_interrupted(why)` is called each time a member's stream ended or could not be
        opened, before the watch tries the next member: a caller can say at once that it is
        not being answered, without waiting for `connect_timeout`."""
        if range_end is None:
            range_end = prefix_end(key) if prefix else b""
        next_rev = start_revision
        budget = connect_timeout or self.timeout * 4
        failed_since: float | None = None
        cluster: list[int] = []  # the cluster id the watch began on
        while True:
            for ep in self._order():
                try:
                    async for batch in self._watch_once(
                        ep, key, range_end, next_rev, progress_notify, cluster
                    ):
                        failed_since = None
                        # Resume only after delivered events, never from a progress
                        # notification's revision: etcd < 3.4.25/3.5.8 can send one ahead of
                        # events still queued on the stream (etcd#15220), and resuming from it
                        # would lose them.
                        if batch.events:
                            next_rev = batch.events[-1].kv.mod_revision + 1
                        elif next_rev == 0:
                            next_rev = batch.revision + 1
                        yield batch
                    why = f"the watch on {ep} ended"
                except grpc.aio.AioRpcError as exc:
                    translated = _translate(exc, ep)
                    if isinstance(translated, EtcdCompacted):
                        raise translated from exc
                    why = str(translated)
                if on_interrupted is not None:
                    on_interrupted(why)
                now = time.monotonic()
                failed_since = failed_since or now
                if now - failed_since > budget:
                    raise EtcdUnavailable(
                        f"no etcd member would serve a watch for {budget:.1f}s "
                        f"({', '.join(self.endpoints)})"
                    )
                await asyncio.sleep(0.05)

    async def _watch_once(
        self,
        endpoint: str,
        key: bytes,
        range_end: bytes,
        start_revision: int,
        progress_notify: bool,
        cluster: list[int],
    ) -> AsyncIterator[WatchBatch]:
        """`cluster`: the id of the cluster the watch began on (empty: not known yet, set from
        the first answer)."""
        create = rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=key,
                range_end=range_end,
                start_revision=start_revision,
                progress_notify=progress_notify,
                prev_kv=True,
            )
        )
        stop = asyncio.Event()
        progress = rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())

        async def requests() -> AsyncIterator[Any]:
            yield create
            # Liveness: a member that hangs with its connection open never ends the stream.
            # Ask for progress now and then; no answer in time moves the watch elsewhere. The
            # answers only prove the member alive: their revision is never resumed from.
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), WATCH_PROGRESS_EVERY)
                if not stop.is_set():
                    yield progress

        call = rpc_pb2_grpc.WatchStub(self._channel(endpoint)).Watch(
            requests(), metadata=_HAS_LEADER
        )
        try:
            while True:
                try:  # (a timeout context, not wait_for: no task per read)
                    async with asyncio.timeout(WATCH_PROGRESS_EVERY + WATCH_ANSWER_WITHIN):
                        resp = await call.read()
                except TimeoutError:
                    return  # hung member: resume on another one
                if resp is grpc.aio.EOF:
                    return
                if resp.canceled:
                    if resp.compact_revision:
                        raise EtcdCompacted(
                            f"watch from revision {start_revision} on {endpoint}: compacted up "
                            f"to {resp.compact_revision}",
                            compact_revision=int(resp.compact_revision),
                        )
                    return  # e.g. the member lost its leader: resume elsewhere
                answered = int(resp.header.cluster_id)
                if answered:
                    if not cluster:
                        cluster.append(answered)
                    elif answered != cluster[0]:
                        raise EtcdClusterReplaced(
                            f"watch from revision {start_revision} resumed on {endpoint}, a "
                            f"member of cluster {answered:016x}, not {cluster[0]:016x} (restored "
                            "from a snapshot?): relist"
                        )
                if resp.created and not resp.events:
                    continue
                events = [
                    WatchEvent(
                        type="PUT" if ev.type == 0 else "DELETE",
                        kv=_kv(ev.kv),
                        prev_kv=_kv(ev.prev_kv) if ev.HasField("prev_kv") else None,
                    )
                    for ev in resp.events
                ]
                yield WatchBatch(events, int(resp.header.revision))
        finally:
            stop.set()
            call.cancel()

    async def range_page(
        self,
        key: bytes,
        range_end: bytes,
        *,
        revision: int = 0,
        limit: int = 0,
        timeout: float | None = None,
    ) -> tuple[list[KeyValue], int, int]:
        """A linearizable page of a range: (kvs, revision read at, total keys in the range)."""
        req = rpc_pb2.RangeRequest(key=key, range_end=range_end, revision=revision, limit=limit)

        async def call(ch: grpc.aio.Channel, t: float) -> tuple[list[KeyValue], int, int]:
            resp = await self._kv_stub(ch).Range(req, timeout=t, metadata=_HAS_LEADER)
            return [_kv(kv) for kv in resp.kvs], int(resp.header.revision), int(resp.count)

        return await self._read(call, timeout)

    # ---- maintenance and cluster ---------------------------------------------------------

    async def status(self, endpoint: str, *, timeout: float | None = None) -> MemberStatus:
        """One member's own view (answered without quorum)."""
        ep = endpoint.removeprefix("http://")

        async def call(ch: grpc.aio.Channel, t: float) -> MemberStatus:
            r = await rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=t)
            return MemberStatus(
                endpoint=ep,
                member_id=int(r.header.member_id),
                leader=int(r.leader),
                raft_term=int(r.raftTerm),
                raft_index=int(r.raftIndex),
                revision=int(r.header.revision),
                db_size=int(r.dbSize),
                db_size_in_use=int(getattr(r, "dbSizeInUse", 0)),
                version=str(r.version),
                errors=tuple(getattr(r, "errors", ())),
            )

        return await self._read(call, timeout, [ep])

    async def snapshot(self, endpoint: str, *, idle: float = 10.0) -> AsyncGenerator[bytes]:
        """One member's whole backend, streamed (Maintenance.Snapshot): the bolt database
        followed by its sha256 (32 bytes), as etcd sends it. Each chunk must come within
        `idle` seconds; a member that stops sending raises `EtcdUnavailable`."""
        ep = endpoint.removeprefix("http://").removeprefix("https://")
        stream = rpc_pb2_grpc.MaintenanceStub(self._channel(ep)).Snapshot(rpc_pb2.SnapshotRequest())
        try:
            while True:
                try:
                    r = await asyncio.wait_for(stream.read(), idle)
                except TimeoutError:
                    raise EtcdUnavailable(
                        f"etcd member {ep} sent no snapshot data for {idle:g} s"
                    ) from None
                except grpc.aio.AioRpcError as exc:
                    raise _translate(exc, ep) from None
                if r is grpc.aio.EOF:
                    return
                yield bytes(r.blob)
        finally:
            stream.cancel()

    async def alarms(self, *, timeout: float | None = None) -> list[Alarm]:
        req = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET, memberID=0, alarm=0)

        async def call(ch: grpc.aio.Channel, t: float) -> list[Alarm]:
            r = await rpc_pb2_grpc.MaintenanceStub(ch).Alarm(req, timeout=t)
            return [Alarm(int(a.memberID), rpc_pb2.AlarmType.Name(a.alarm)) for a in r.alarms]

        return await self._read(call, timeout)

    async def hash_kv(
        self, endpoint: str, revision: int = 0, *, timeout: float | None = None
    ) -> KVHash:
        """Hash of one member's MVCC keyspace up to `revision` (0: its latest)."""
        ep = endpoint.removeprefix("http://")
        req = rpc_pb2.HashKVRequest(revision=revision)

        async def call(ch: grpc.aio.Channel, t: float) -> KVHash:
            r = await rpc_pb2_grpc.MaintenanceStub(ch).HashKV(req, timeout=t)
            return KVHash(ep, int(r.hash), int(r.header.revision), int(r.compact_revision))

        return await self._read(call, timeout or 5.0, [ep])

    async def members(self, *, timeout: float | None = None) -> list[Member]:
        async def call(ch: grpc.aio.Channel, t: float) -> list[Member]:
            r = await rpc_pb2_grpc.ClusterStub(ch).MemberList(
                rpc_pb2.MemberListRequest(), timeout=t
            )
            return [_member(m) for m in r.members]

        return await self._read(call, timeout)

    # Membership changes are writes (raft configuration changes): sent once, never retried
    # after they went out (`_write`); the caller reads the member list to learn the outcome.

    async def member_add(
        self, peer_urls: Sequence[str], *, learner: bool = False, timeout: float | None = None
    ) -> tuple[Member, list[Member]]:
        """Add a member (a learner: it receives the log but does not vote until promoted);
        (the new member, every member after the change)."""
        req = rpc_pb2.MemberAddRequest(peerURLs=list(peer_urls), isLearner=learner)

        async def call(ch: grpc.aio.Channel, t: float) -> tuple[Member, list[Member]]:
            r = await rpc_pb2_grpc.ClusterStub(ch).MemberAdd(req, timeout=t)
            return _member(r.member), [_member(m) for m in r.members]

        return await self._write(call, timeout)

    async def member_remove(self, member_id: int, *, timeout: float | None = None) -> None:
        req = rpc_pb2.MemberRemoveRequest(ID=member_id)

        async def call(ch: grpc.aio.Channel, t: float) -> None:
            await rpc_pb2_grpc.ClusterStub(ch).MemberRemove(req, timeout=t)

        await self._write(call, timeout)

    async def member_promote(self, member_id: int, *, timeout: float | None = None) -> None:
        """Make a learner a voting member; etcd refuses (EtcdRejected, "learner ... not in
        sync with leader") until it has caught up."""
        req = rpc_pb2.MemberPromoteRequest(ID=member_id)

        async def call(ch: grpc.aio.Channel, t: float) -> None:
            await rpc_pb2_grpc.ClusterStub(ch).MemberPromote(req, timeout=t)

        await self._write(call, timeout)

    async def compact(self, revision: int, *, timeout: float | None = None) -> None:
        req = rpc_pb2.CompactionRequest(revision=revision, physical=True)

        async def call(ch: grpc.aio.Channel, t: float) -> None:
            await self._kv_stub(ch).Compact(req, timeout=t, metadata=_HAS_LEADER)

        await self._write(call, timeout)


# target name -> (enum value, the Compare field its operand goes in); op -> enum value
_COMPARE_TARGET = {
    name: (rpc_pb2.Compare.CompareTarget.Value(enum), field)
    for name, enum, field in (
        ("mod", "MOD", "mod_revision"),
        ("create", "CREATE", "create_revision"),
        ("version", "VERSION", "version"),
        ("value", "VALUE", "value"),
    )
}
_COMPARE_RESULT = {
    op: rpc_pb2.Compare.CompareResult.Value(enum)
    for op, enum in (("=", "EQUAL"), ("!=", "NOT_EQUAL"), ("<", "LESS"), (">", "GREATER"))
}


def _fill_compare(m: Any, c: Compare) -> None:
    target, field = _COMPARE_TARGET[c.target]
    m.key = c.key
    m.target = target
    m.result = _COMPARE_RESULT[c.op]
    setattr(m, field, c.value)


def _fill_op(m: Any, o: Op) -> None:
    if o.kind == "put":
        put = m.request_put
        put.SetInParent()
        put.key = o.key
        put.value = o.value
        put.lease = o.lease
    elif o.kind == "delete":
        delete = m.request_delete_range
        delete.SetInParent()
        delete.key = o.key
        delete.range_end = o.range_end
        delete.prev_kv = not o.range_end
    elif o.kind == "get":
        get = m.request_range
        get.SetInParent()
        get.key = o.key
        get.range_end = o.range_end
    else:
        raise ValueError(f"unknown txn op {o.kind!r}")


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with `prefix` (etcd's convention)."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"  # every key


def _translate(exc: grpc.aio.AioRpcError, endpoint: str) -> EtcdError:
    code = exc.code()
    details = exc.details() or ""
    where = f"etcd member {endpoint}"
    if code == grpc.StatusCode.UNAVAILABLE and _NO_LEADER in details:
        return EtcdNoQuorum(f"{where} has no leader: the cluster may have lost quorum")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return EtcdUnavailable(f"{where} unavailable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        # For a read this is simply "unavailable"; `_write` re-classifies it as unknown.
        return EtcdOutcomeUnknown(f"{where} did not answer before the deadline")
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return EtcdCompacted(f"{where}: {details}", compact_revision=0)
    if code == grpc.StatusCode.INVALID_ARGUMENT and "too large" in details:
        return EtcdRejected(f"{where}: {details}", "RequestTooLarge")
    return EtcdRejected(f"{where} refused the request: {details}", code.name)
