"""Key-encryption keys held by a KMS v2 plugin: the client side of Kubernetes' KMS v2 gRPC API
(`haplane.auth.kms_api`) on a unix socket, so any plugin written for kube-apiserver (Vault's
transit engine, the cloud KMSes, `haplane.auth.kms_plugin`) seals haplane's Secrets unmodified.

Layer: auth. Talks to the plugin's socket only.

    - kms:
        apiVersion: v2
        name: vault
        endpoint: unix:///var/run/kms-plugin/socket.sock
        timeout: 3s          # each call to the plugin; Kubernetes' default

What follows kube-apiserver (k8s.io/apiserver .../encryptionconfig/config.go and
kmsv2/envelope.go):
- `Status` is polled in the background, every minute while the plugin is healthy and every
  10 s while it is not; healthz must be "ok", version "v2" or "v2beta1" (and not change), the
  key id non-empty. A key id other than the one the current seed is wrapped under makes a new
  seed, wrapped by `Encrypt`, whose key id must be the one Status gave; otherwise the old seed
  stays.
- Writes use the current seed for up to 3 minutes after a Status last confirmed its key id
  (so a plugin outage shorter than that does not stop writes, and a key rotated in the plugin
  is in use everywhere within 3 + 1 minutes); past that, or before the first seed, a write fails
  with `EncryptionError` and nothing is stored: the API answers 500 "unable to encrypt ...".
- Reads unwrap each seed they meet once with `Decrypt` (its key id and annotations from the
  stored `EncryptedObject`) and remember it, whatever the plugin's health.

Blocking, and why it is bounded. Replicas call the transformer synchronously on their event
loop, so a call to the plugin made there stalls the replica while it lasts. Only two are:
- `Decrypt` of a seed not yet unwrapped (a value another replica or process wrote): at most
  `timeout`. After a Decrypt that found the plugin unreachable or hung, the next ones fail at
  once until the background poll (woken to retry within a second) has seen a Decrypt answer
  again (it unwraps the writer's own seed, off the loop), so an outage costs one `timeout`,
  not one per value, even when only Decrypt hangs;
- writes in the first moment after the provider started, before the background thread's
  first Status and Encrypt are done: they wait for them, until `timeout` after the start at
  most (replicas start their providers when they load the configuration, so this is rare).
Status and Encrypt themselves run on the background thread, and a rotation never holds up a
write: the old seed serves until the new one is ready. A reload that drops a plugin provider
joins its thread (up to `timeout` + 1 s) where the configuration is reloaded.

Stricter than kube-apiserver in one respect: a Status whose healthz is not "ok" confirms
nothing here (Kubernetes keeps using, and may even rotate to, the key id of an unhealthy
plugin), so an unhealthy plugin stops writes after the 3 minutes, while reads go on.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import grpc

from . import kms_api
from .envelope import SEED_BYTES, EncryptionError, KmsV2, Seed, WrappedSeed

WRITE_TTL = 180.0  # Kubernetes' kmsv2PluginWriteDEKSourceMaxTTL
HEALTHY_EVERY = 60.0  # kmsv2PluginHealthzPositiveInterval
UNHEALTHY_EVERY = 10.0  # kmsv2PluginHealthzNegativeInterval
RETRY_AT_MOST_EVERY = 1.0  # a failing request wakes the poll, no more often than this
MAX_KEY_ID = 1024  # bytes (Kubernetes' KeyIDMaxSize)
MAX_WRAPPED = 1024  # bytes of a wrapped seed (encryptedDEKSourceMaxSize)
MAX_ANNOTATIONS = 32 * 1024  # bytes of annotation names and values (annotationsMaxSize)
_FQDN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$"
)
_CHANNEL_OPTIONS = [
    # reconnect soon after the plugin comes back (gRPC's default backoff grows to 2 minutes)
    ("grpc.initial_reconnect_backoff_ms", 100),
    # gRPC reads this as the minimum time one connection attempt may take, not a backoff
    # (haplane.store.etcd_client.CONNECT_TIMEOUT_MS): 100 ms cut slow connects short
    ("grpc.min_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class PluginUnreachable(EncryptionError):
    """The plugin did not answer: its socket refuses, or the call outlived its timeout."""


@dataclass(frozen=True)
class PluginStatus:
    version: str
    healthz: str
    key_id: str


class KmsPlugin:
    """A `Kek` whose key lives in a KMS v2 plugin at `endpoint` (`unix:///path`): each call
    bounded by `timeout` seconds, every failure an `EncryptionError` naming the socket."""

    def __init__(self, endpoint: str, timeout: float):
        self.endpoint = endpoint
        self.timeout = timeout
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._calls: dict[str, Any] = {}
        self._closed = False

    def _call(self, method: str, request: Any) -> Any:
        with self._lock:
            if self._closed:
                raise EncryptionError(f"KMS plugin {self.endpoint}: its provider was closed")
            if self._channel is None:  # made on first use: loading a configuration connects
                self._channel = grpc.insecure_channel(self.endpoint, options=_CHANNEL_OPTIONS)
                self._calls = {
                    path: self._channel.unary_unary(
                        path,
                        request_serializer=req.SerializeToString,
                        response_deserializer=resp.FromString,
                    )
                    for path, (req, resp) in kms_api.METHODS.items()
                }
            call = self._calls[method]
        name = method.rsplit("/", 1)[1]
        try:
            return call(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            where = f"KMS plugin {self.endpoint}: {name}"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise PluginUnreachable(
                    f"{where} did not answer within {self.timeout:g}s (the kms provider's "
                    "timeout): the plugin is hung or overloaded"
                ) from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise PluginUnreachable(
                    f"{where}: not reachable ({details}): is the plugin running, and is this "
                    "its socket?"
                ) from None
            raise EncryptionError(f"{where} failed: {code.name}: {details}") from None
        except ValueError:  # the channel was closed meanwhile
            raise EncryptionError(f"KMS plugin {self.endpoint}: its provider was closed") from None

    def status(self) -> PluginStatus:
        """The plugin's Status, checked as kube-apiserver checks it."""
        r = self._call(kms_api.STATUS, kms_api.StatusRequest())
        where = f"KMS plugin {self.endpoint}: Status"
        if r.healthz != kms_api.HEALTHY:
            raise EncryptionError(f"{where} says the plugin is not healthy: {r.healthz!r}")
        if r.version not in kms_api.VERSIONS:
            raise EncryptionError(
                f"{where} answers API version {r.version!r}: a KMS v2 plugin answers "
                f"{' or '.join(kms_api.VERSIONS)}"
            )
        _check_key_id(r.key_id, where)
        return PluginStatus(r.version, r.healthz, r.key_id)

    def key_id(self) -> str:
        return self.status().key_id

    def wrap(self, seed: bytes) -> WrappedSeed:
        """Encrypt: the seed under the plugin's current key."""
        r = self._call(kms_api.ENCRYPT, kms_api.EncryptRequest(plaintext=seed, uid=_uid()))
        where = f"KMS plugin {self.endpoint}: Encrypt"
        _check_key_id(r.key_id, where)
        if not r.ciphertext or len(r.ciphertext) > MAX_WRAPPED:
            raise EncryptionError(
                f"{where} answered a ciphertext of {len(r.ciphertext)} bytes (1 to "
                f"{MAX_WRAPPED} are allowed)"
            )
        annotations = tuple(sorted(r.annotations.items()))
        size = sum(len(k.encode()) + len(v) for k, v in annotations)
        bad = [k for k, _ in annotations if not _FQDN.match(k)]
        if bad or size > MAX_ANNOTATIONS:
            raise EncryptionError(
                f"{where} answered annotations Kubernetes refuses: "
                + (f"{bad[0]!r} is not a fully qualified domain name" if bad
                   else f"{size} bytes (at most {MAX_ANNOTATIONS})")
            )  # fmt: skip
        return WrappedSeed(bytes(r.ciphertext), r.key_id, annotations)

    def unwrap(self, wrapped: WrappedSeed) -> bytes:
        """Decrypt: the seed back, given the key id and annotations Encrypt answered."""
        request = kms_api.DecryptRequest(
            ciphertext=wrapped.ciphertext,
            uid=_uid(),
            key_id=wrapped.key_id,
            annotations=dict(wrapped.annotations),
        )
        seed = bytes(self._call(kms_api.DECRYPT, request).plaintext)
        if len(seed) != SEED_BYTES:
            raise EncryptionError(
                f"KMS plugin {self.endpoint}: Decrypt answered {len(seed)} bytes for a "
                f"{SEED_BYTES}-byte seed (key id {wrapped.key_id})"
            )
        return seed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()  # ends calls in flight (the poll thread's among them)


def _uid() -> str:
    return str(uuid.uuid4())


def _check_key_id(key_id: str, where: str) -> None:
    if not key_id:
        raise EncryptionError(f"{where} answered an empty key id")
    if len(key_id.encode()) > MAX_KEY_ID:
        raise EncryptionError(f"{where} answered a key id of more than {MAX_KEY_ID} bytes")


FIRST_POLL_MARGIN = 0.25  # seconds a first write waits beyond the first poll's deadline


class KmsV2Plugin(KmsV2):
    """The KMS v2 envelope (`haplane.auth.encryption.KmsV2`) under a plugin's key, with the
    writer's seed kept by a background thread that polls Status (see the module's
    description)."""

    kek: KmsPlugin

    def __init__(self, name: str, plugin: KmsPlugin):
        super().__init__(name, plugin)
        self.reuse_key = (name, plugin.endpoint, plugin.timeout)  # load_config's reuse test
        self.write_ttl = WRITE_TTL
        self.healthy_every = HEALTHY_EVERY
        self.unhealthy_every = UNHEALTHY_EVERY
        self._confirmed = 0.0  # monotonic time the writer's key id was last confirmed
        self._error: str | None = None  # the last poll's failure
        self._down: str | None = None  # the plugin did not answer: Decrypts fail at once
        self._version: str | None = None
        self._refresh_lock = threading.Lock()
        self._last_try = 0.0
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._first = threading.Event()  # the first poll has ended, well or not
        self._wake = threading.Event()
        self._stop = threading.Event()

    # ---- the background poll ---------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name=f"kms-{self.name}", daemon=True
                )
                self._started = time.monotonic()
                self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self.kek.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.kek.timeout + 1.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
                wait = self.healthy_every
            except EncryptionError:
                wait = self.unhealthy_every
            finally:
                self._first.set()
            self._wake.wait(wait)
            self._wake.clear()
            # woken by failing requests: not more than once a second
            self._stop.wait(max(0.0, self._last_try + RETRY_AT_MOST_EVERY - time.monotonic()))

    def _poke(self) -> None:
        self._wake.set()

    def refresh(self) -> None:
        """One poll: Status, and a new seed (Encrypt) when its key id changed. Raises
        `EncryptionError` with what failed; the seed in use stays until it expires."""
        with self._refresh_lock:
            now = self._last_try = time.monotonic()  # as Kubernetes: the TTL counts from here
            try:
                status = self.kek.status()
                if self._version is not None and status.version != self._version:
                    raise EncryptionError(
                        f"KMS plugin {self.kek.endpoint}: Status changed its API version from "
                        f"{self._version} to {status.version}"
                    )
                self._version = status.version
                writer = self._writer
                if writer is None or writer.wrapped.key_id != status.key_id:
                    writer = self._new_seed()
                    if writer.wrapped.key_id != status.key_id:
                        raise EncryptionError(
                            f"KMS plugin {self.kek.endpoint}: Encrypt wrapped the seed under "
                            f"key id {writer.wrapped.key_id!r}, but Status says the current "
                            f"key id is {status.key_id!r}: not used (the plugin must encrypt "
                            "under the key its Status names)"
                        )
                    self._writer = writer
                self._confirmed = now
                self._error = None
                if self._down is not None:
                    # Decrypts fail at once while the plugin is down; Status answering is not
                    # enough to ask again on the event loop (a plugin may hang in Decrypt
                    # alone): a Decrypt of the writer's own seed, here off the loop, is
                    try:
                        self.kek.unwrap(writer.wrapped)
                    except PluginUnreachable as exc:
                        self._down = str(exc)
                    else:
                        self._down = None
            except EncryptionError as exc:
                if isinstance(exc, PluginUnreachable):
                    self._down = str(exc)
                self._error = str(exc)
                raise

    def current_key_id(self) -> str:
        """The key id new values are sealed under, from a Status asked now (a seed under it
        made if the plugin rotated): blocks for up to the timeout; `EncryptionError` when
        the plugin does not answer."""
        self.refresh()
        writer = self._writer
        assert writer is not None  # refresh made one, or raised
        return writer.wrapped.key_id

    # ---- what the envelope asks ------------------------------------------------------------

    def _writer_seed(self) -> Seed:
        if not self._first.is_set():
            # the first poll is under way: wait for it, until `timeout` after it began at most
            # (all writes together, not each)
            self.start()
            # (a little past it: the poll's own deadline ends then, and its error says why)
            deadline = self._started + self.kek.timeout + FIRST_POLL_MARGIN
            self._first.wait(max(0.0, deadline - time.monotonic()))
        writer = self._writer
        age = time.monotonic() - self._confirmed
        if writer is not None and age <= self.write_ttl:
            return writer
        self._poke()
        if writer is None:
            raise EncryptionError(
                "no data key yet: "
                + (self._error or f"KMS plugin {self.kek.endpoint} has not answered Status and "
                   f"Encrypt within {self.kek.timeout:g}s")
            )  # fmt: skip
        raise EncryptionError(
            f"the data key's key id {writer.wrapped.key_id!r} was last confirmed by KMS plugin "
            f"{self.kek.endpoint} {age:.0f}s ago (writes stop after {self.write_ttl:g}s "
            f"without, as in Kubernetes): {self._error or 'no Status since'}"
        )

    def _unwrap(self, wrapped: WrappedSeed) -> bytes:
        self.start()  # the poll is what clears `_down`
        down = self._down
        if down is not None:
            self._poke()
            raise PluginUnreachable(f"{down} (not asked again until it answers)")
        try:
            return self.kek.unwrap(wrapped)
        except PluginUnreachable as exc:
            self._down = str(exc)
            self._poke()
            raise
