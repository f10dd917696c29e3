"""Encryption at rest, as kube-apiserver's KMS v2 envelope scheme does it: what the API replicas
store in etcd for the resources an `EncryptionConfiguration` names is ciphertext, and only the
key-encryption key (KEK) can open it.

Layer: auth. Crypto and configuration; reads the configuration and key files it is given and
nothing else (a plugin provider, `haplane.auth.kms_client`, talks to its plugin's socket). The
API's storage (`haplane.api.storage.Transformer`) calls `Transformers.to_storage`/`from_storage`
with each value and its etcd key.

The scheme (Kubernetes' KMS v2 with a DEK seed):
- each replica makes a 32-byte **seed** and has the KEK wrap it once (KEK calls are rare: at
  start, and when the KEK's key id changes);
- each write derives its own data key, **DEK = HKDF-Expand-SHA256(seed, info = 32 random
  bytes)** (the seed is the pseudorandom key: no extract step, as Kubernetes does it), and
  encrypts with AES-256-GCM under a random 12-byte nonce, the etcd key as associated data (a
  value copied under another key does not decrypt). A key used for one value only has no
  AES-GCM nonce-reuse limit;
- the stored value is `k8s:enc:kms:v2:<provider name>:` and an `EncryptedObject` (the protobuf
  message of k8s.io/apiserver's kmsv2 API: encryptedData = info || nonce || ciphertext,
  keyID = the KEK's key id, encryptedDEKSource = the wrapped seed, encryptedDEKSourceType =
  HKDF_SHA256_XNONCE_AES_GCM_SEED (1)), byte for byte what kube-apiserver writes. Values that
  haplane wrote before it matched Kubernetes carry type 2 (not a Kubernetes value) and derive
  with HKDF extract-then-expand; they are still read;
- reads unwrap each seed once (remembered by its wrapped bytes, key id and annotations), so a
  read costs one HKDF and one AES-GCM open.

KEKs: `LocalKek`, a 32-byte key in a file (mode 0600) that `haplane up` creates, named in the
configuration as a `kms` v2 provider whose endpoint is `file:///path` (haplane's own: kube-
apiserver knows only plugins); or a KMS v2 plugin, `endpoint: unix:///path/to/socket` with
Kubernetes' `timeout` (3s by default): `haplane.auth.kms_client` speaks Kubernetes' KMS v2
gRPC API to it (Vault's and the cloud KMSes' plugins, or `haplane.auth.kms_plugin`), asking
its Status in the background, and the `EncryptedObject` keeps the key id and annotations its
Encrypt answered, for its Decrypt.

Reading follows the configuration's provider list, as Kubernetes does: a value with a
`k8s:enc:kms:v2:<name>:` prefix goes to the provider of that name; a value without a known
prefix is read as plain text only when `identity` is one of the resource's providers (data
written before encryption was on). Anything else is `EncryptionError`, never garbage.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

API_VERSION = "apiserver.config.k8s.io/v1"
KIND = "EncryptionConfiguration"
KMS_V2_PREFIX = b"k8s:enc:kms:v2:"
SEED_BYTES = 32
INFO_BYTES = 32
NONCE_BYTES = 12
# k8s.io/apiserver kmsv2 EncryptedDEKSourceType: AES_GCM_KEY = 0 (not read here),
# HKDF_SHA256_XNONCE_AES_GCM_SEED = 1 (what is written)
HKDF_SHA256_XNONCE_AES_GCM_SEED = 1
# what haplane wrote before it matched Kubernetes: a seed, the DEK from HKDF extract + expand
HAPLANE_V0_SEED = 2
LOCAL_KEK_AAD = b"haplane local KEK v1"
SEED_CACHE = 1024  # unwrapped seeds remembered (each replica writes under one)


class EncryptionError(Exception):
    """A value cannot be encrypted or decrypted (a missing or wrong KEK, a value written under a
    provider this configuration does not have), or the configuration is wrong."""


# ---- key-encryption keys -----------------------------------------------------------------


Annotations = tuple[tuple[str, bytes], ...]  # sorted by name: hashable, one encoding


@dataclass(frozen=True)
class WrappedSeed:
    """A seed as a KEK wrapped it: what the EncryptedObject keeps beside the data
    (encryptedDEKSource, keyID, annotations) and what the KEK needs back to unwrap it. A KMS
    plugin may return annotations (Kubernetes stores them in plain text) that its Decrypt
    needs."""

    ciphertext: bytes
    key_id: str
    annotations: Annotations = ()


class Kek(Protocol):
    """What wraps and unwraps DEK seeds (Kubernetes' KMS v2 Status/Encrypt/Decrypt): the
    current key id, a seed wrapped under it, a wrapped seed opened."""

    def key_id(self) -> str: ...
    def wrap(self, seed: bytes) -> WrappedSeed: ...
    def unwrap(self, wrapped: WrappedSeed) -> bytes: ...


def create_local_key(path: Path) -> bool:
    """A fresh 32-byte KEK at `path` (base64, mode 0600) unless one is there; True when made."""
    if path.exists():
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    return True


class LocalKek:
    """A KEK in a local file: AES-256-GCM wrapping, the key id a digest of the key."""

    def __init__(self, path: Path):
        self.path = path
        try:
            mode = path.stat().st_mode
            key = base64.b64decode(path.read_text().strip(), validate=True)
        except (OSError, ValueError) as exc:
            raise EncryptionError(f"key-encryption key {path}: {exc}") from None
        if len(key) != 32:
            raise EncryptionError(
                f"key-encryption key {path}: {len(key)} bytes; a 32-byte AES key is needed"
            )
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise EncryptionError(
                f"key-encryption key {path} is readable by others (mode {mode & 0o777:o}): "
                "chmod 600 it"
            )
        self._aead = AESGCM(key)
        self._id = "local:" + hashlib.sha256(key).hexdigest()[:16]

    def key_id(self) -> str:
        return self._id

    def wrap(self, seed: bytes) -> WrappedSeed:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return WrappedSeed(nonce + self._aead.encrypt(nonce, seed, LOCAL_KEK_AAD), self._id)

    def unwrap(self, wrapped: WrappedSeed) -> bytes:
        if wrapped.key_id != self._id:
            raise EncryptionError(
                f"the value was sealed under key-encryption key {wrapped.key_id}, but "
                f"{self.path} is {self._id}: the key it needs is missing (restore it, or add "
                "it back)"
            )
        sealed = wrapped.ciphertext
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], LOCAL_KEK_AAD)
        except InvalidTag:
            raise EncryptionError(
                f"key-encryption key {wrapped.key_id} does not open this value's seed"
            ) from None


# ---- the EncryptedObject message ---------------------------------------------------------
# k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2/api.proto's EncryptedObject,
# encoded by hand: five fields (1 encryptedData, 2 keyID, 3 encryptedDEKSource, 4 annotations
# map<string, bytes>, 5 encryptedDEKSourceType), in field order and map keys sorted as Go's
# marshaller writes them; no generated code for one message that is stored (the KMS plugin's
# messages, which are not, use protobuf's runtime: `haplane.auth.kms_api`).


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise EncryptionError("the stored EncryptedObject is truncated")
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7


def _field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, varint or bytes) in order; other wire types are refused."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(data):
        tag, i = _read_varint(data, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            n, i = _read_varint(data, i)
            out.append((number, n))
        elif wire == 2:
            length, i = _read_varint(data, i)
            if i + length > len(data):
                raise EncryptionError("the stored EncryptedObject is truncated")
            out.append((number, data[i : i + length]))
            i += length
        else:
            raise EncryptionError(f"the stored EncryptedObject has wire type {wire}")
    return out


@dataclass(frozen=True)
class EncryptedObject:
    encrypted_data: bytes
    key_id: str
    encrypted_dek_source: bytes
    source_type: int = HKDF_SHA256_XNONCE_AES_GCM_SEED
    annotations: Annotations = ()  # sorted by name

    @property
    def wrapped(self) -> WrappedSeed:
        return WrappedSeed(self.encrypted_dek_source, self.key_id, self.annotations)

    def encode(self) -> bytes:
        return (
            _field(1, self.encrypted_data)
            + _field(2, self.key_id.encode())
            + _field(3, self.encrypted_dek_source)
            + b"".join(_field(4, _field(1, k.encode()) + _field(2, v))
                       for k, v in sorted(self.annotations))
            + _varint(5 << 3) + _varint(self.source_type)
        )  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> EncryptedObject:
        fields: dict[int, Any] = {}
        annotations: dict[str, bytes] = {}
        try:
            for number, value in _fields(data):
                if number == 4 and isinstance(value, bytes):  # a map entry: key 1, value 2
                    entry = dict(_fields(value))
                    name, item = entry.get(1, b""), entry.get(2, b"")
                    if not isinstance(name, bytes) or not isinstance(item, bytes):
                        raise ValueError
                    annotations[name.decode()] = item
                else:
                    fields.setdefault(number, value)
            sealed, key_id, source = fields.get(1), fields.get(2), fields.get(3)
            if not (isinstance(sealed, bytes) and isinstance(key_id, bytes)
                    and isinstance(source, bytes)):  # fmt: skip
                raise EncryptionError("the stored EncryptedObject lacks a field")
            return cls(
                sealed, key_id.decode(), source, int(fields.get(5, 0)),
                tuple(sorted(annotations.items())),
            )  # fmt: skip
        except (UnicodeDecodeError, TypeError, ValueError):
            raise EncryptionError("the stored EncryptedObject has a malformed field") from None


# ---- providers ---------------------------------------------------------------------------


class Provider(Protocol):
    name: str

    def prefix(self) -> bytes: ...
    def encrypt(self, data: bytes, key: bytes) -> bytes: ...
    def decrypt(self, data: bytes, key: bytes) -> bytes: ...
    def start(self) -> None: ...  # begin any background work (a KMS plugin's Status polls)
    def close(self) -> None: ...  # end it: the configuration no longer uses this provider


class Identity:
    """Plain text: writes unencrypted; reads values that carry no encryption prefix."""

    name = "identity"

    def prefix(self) -> bytes:
        return b""

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def encrypt(self, data: bytes, key: bytes) -> bytes:
        return data

    def decrypt(self, data: bytes, key: bytes) -> bytes:
        return data


@dataclass(frozen=True)
class Seed:
    """A seed and what the KEK made of it."""

    seed: bytes
    wrapped: WrappedSeed


class KmsV2:
    """Envelope encryption under `kek` (see the module's description). Here the writer's
    seed follows `kek.key_id()`, asked at each write: right for a local key, whose answer
    costs nothing (`haplane.auth.kms_client.KmsV2Plugin` asks a plugin in the background)."""

    def __init__(self, name: str, kek: Kek):
        self.name = name
        self.kek = kek
        self._prefix = KMS_V2_PREFIX + name.encode() + b":"
        self._lock = threading.Lock()
        self._writer: Seed | None = None
        self._seeds: OrderedDict[WrappedSeed, bytes] = OrderedDict()  # unwrapped seeds
        self._seeds_lock = threading.Lock()

    def prefix(self) -> bytes:
        return self._prefix

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _writer_seed(self) -> Seed:
        with self._lock:
            key_id = self.kek.key_id()
            if self._writer is None or self._writer.wrapped.key_id != key_id:
                self._writer = self._new_seed()
            return self._writer

    def _new_seed(self) -> Seed:
        """A fresh seed, wrapped by the KEK (and remembered: reads of this replica's own
        writes never unwrap)."""
        seed = secrets.token_bytes(SEED_BYTES)
        wrapped = self.kek.wrap(seed)
        self._remember(wrapped, seed)
        return Seed(seed, wrapped)

    def _remember(self, wrapped: WrappedSeed, seed: bytes) -> None:
        with self._seeds_lock:
            self._seeds[wrapped] = seed
            while len(self._seeds) > SEED_CACHE:
                self._seeds.popitem(last=False)

    def _unwrap(self, wrapped: WrappedSeed) -> bytes:
        return self.kek.unwrap(wrapped)

    def encrypt(self, data: bytes, key: bytes) -> bytes:
        writer = self._writer_seed()
        info = secrets.token_bytes(INFO_BYTES)
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(_dek(writer.seed, info)).encrypt(nonce, data, key)
        w = writer.wrapped
        obj = EncryptedObject(
            info + nonce + sealed, w.key_id, w.ciphertext, annotations=w.annotations
        )
        return self._prefix + obj.encode()

    def decrypt(self, data: bytes, key: bytes) -> bytes:
        obj = EncryptedObject.decode(data[len(self._prefix) :])
        if obj.source_type == HKDF_SHA256_XNONCE_AES_GCM_SEED:
            derive = _dek
        elif obj.source_type == HAPLANE_V0_SEED:
            derive = _dek_v0
        else:
            raise EncryptionError(
                f"{key.decode(errors='replace')}: a DEK source of type {obj.source_type} "
                "(only seeds, type 1, are written here)"
            )
        wrapped = obj.wrapped  # the cache's key: as Kubernetes', the key id and annotations too
        seed = self._seeds.get(wrapped)
        if seed is None:
            seed = self._unwrap(wrapped)
            self._remember(wrapped, seed)
        body = obj.encrypted_data
        if len(body) < INFO_BYTES + NONCE_BYTES + 16:
            raise EncryptionError(f"{key.decode(errors='replace')}: the ciphertext is truncated")
        info, nonce = body[:INFO_BYTES], body[INFO_BYTES : INFO_BYTES + NONCE_BYTES]
        try:
            return AESGCM(derive(seed, info)).decrypt(nonce, body[INFO_BYTES + NONCE_BYTES :], key)
        except InvalidTag:
            raise EncryptionError(
                f"{key.decode(errors='replace')}: the value does not decrypt (altered, or "
                "stored under another key)"
            ) from None


def _dek(seed: bytes, info: bytes) -> bytes:
    """Kubernetes' derivation (aes_extended_nonce.go): HKDF-Expand only, the seed as the
    pseudorandom key."""
    return HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info).derive(seed)


def _dek_v0(seed: bytes, info: bytes) -> bytes:
    """haplane's first derivation (values of type 2): HKDF extract (no salt), then expand."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(seed)


# ---- configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceRule:
    """One `resources` entry: which resources, and their providers (the first writes)."""

    resources: tuple[str, ...]
    providers: tuple[Provider, ...]

    def matches(self, group: str, plural: str) -> bool:
        """Kubernetes' names: `secrets` (core), `deployments.apps`, `*.` (every core
        resource), `*.apps` (every resource of a group), `*.*` (everything)."""
        name = f"{plural}.{group}" if group else plural
        for r in self.resources:
            if r == "*.*" or r == name:
                return True
            if r == "*." and not group:
                return True
            if r.startswith("*.") and r != "*." and group and r[2:] == group:
                return True
        return False


class Transformers:
    """The configuration, applied: `to_storage` and `from_storage` per etcd key (the
    `haplane.api.storage.Transformer` protocol). `resource_of(key)` names the (group, plural)
    an etcd key belongs to, or None for keys no resource owns (stored as they are)."""

    def __init__(
        self,
        rules: Iterable[ResourceRule],
        resource_of: Callable[[bytes], tuple[str, str] | None],
    ):
        self.rules = tuple(rules)
        self.resource_of = resource_of
        self._chains: dict[tuple[str, str], tuple[Provider, ...]] = {}

    def providers(self) -> list[Provider]:
        """Every provider of the configuration, once each."""
        seen: dict[int, Provider] = {}
        for rule in self.rules:
            for p in rule.providers:
                seen.setdefault(id(p), p)
        return list(seen.values())

    def start(self) -> None:
        """Begin the providers' background work (a KMS plugin's first Status and seed), so the
        first write need not wait for it."""
        for p in self.providers():
            p.start()

    def close(self, keeping: Transformers | None = None) -> None:
        """End the providers' background work and connections, except those `keeping` (the
        configuration that replaced this one) still uses."""
        kept = {id(p) for p in keeping.providers()} if keeping is not None else set()
        for p in self.providers():
            if id(p) not in kept:
                p.close()

    def providers_for(self, group: str, plural: str) -> tuple[Provider, ...]:
        found = self._chains.get((group, plural))
        if found is None:
            rule = next((r for r in self.rules if r.matches(group, plural)), None)
            found = rule.providers if rule is not None else (Identity(),)
            self._chains[(group, plural)] = found
        return found

    def chain_for(self, key: bytes) -> tuple[Provider, ...] | None:
        """The providers of the resource `key` belongs to, the writer first (None: no
        resource owns the key)."""
        owner = self.resource_of(key)
        return self.providers_for(*owner) if owner is not None else None

    def to_storage(self, data: bytes, key: bytes) -> bytes:
        chain = self.chain_for(key)
        return chain[0].encrypt(data, key) if chain else data

    def from_storage(self, data: bytes, key: bytes) -> bytes:
        chain = self.chain_for(key)
        if not chain:
            return data
        if data.startswith(b"k8s:enc:"):
            for p in chain:
                prefix = p.prefix()
                if prefix and data.startswith(prefix):
                    return p.decrypt(data, key)
            name = data[: data.find(b":", len(KMS_V2_PREFIX)) + 1 or 40].decode(errors="replace")
            raise EncryptionError(
                f"{key.decode(errors='replace')} was stored by provider {name!r}, which the "
                "encryption configuration does not have for this resource: add it back to its "
                "providers to read it"
            )
        if any(isinstance(p, Identity) for p in chain):
            return data
        raise EncryptionError(
            f"{key.decode(errors='replace')} is stored unencrypted, and `identity` is not among "
            "this resource's providers: add `- identity: {}` last to read data from before "
            "encryption"
        )


def load_config(
    path: Path | str, text: str | None = None, previous: Iterable[ResourceRule] = ()
) -> list[ResourceRule]:
    """Parse an `EncryptionConfiguration` file (`text`: its contents, already read);
    `EncryptionError` names the field and the fix. A KMS plugin provider of the `previous`
    configuration with the same name, endpoint and timeout is kept as it is (its seed, its
    unwrapped seeds and its connection), so a reload that leaves it alone does not make a new
    seed or depend on the plugin answering. Nothing here talks to a plugin: providers start
    when first used, or by `Transformers.start`."""
    path = Path(path)
    reusable = {
        p.reuse_key: p for rule in previous for p in rule.providers if hasattr(p, "reuse_key")
    }
    try:
        doc = yaml.safe_load(path.read_text() if text is None else text)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: not UTF-8
        raise EncryptionError(f"{path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise EncryptionError(f"{path}: kind must be {KIND}")
    if doc.get("apiVersion") != API_VERSION:
        raise EncryptionError(f"{path}: apiVersion must be {API_VERSION}")
    entries = doc.get("resources")
    if not isinstance(entries, list) or not entries:
        raise EncryptionError(f"{path}: resources: a list of {{resources, providers}} entries")
    rules: list[ResourceRule] = []
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{path}: resources[{i}]"
        if not isinstance(entry, dict):
            raise EncryptionError(f"{where}: an object with resources and providers")
        resources = entry.get("resources")
        if (
            not isinstance(resources, list)
            or not resources
            or not all(isinstance(r, str) and r for r in resources)
        ):
            raise EncryptionError(f"{where}.resources: a list of resource names, e.g. [secrets]")
        providers = entry.get("providers")
        if not isinstance(providers, list) or not providers:
            raise EncryptionError(f"{where}.providers: a list, the writer first")
        chain = tuple(
            _provider(p, f"{where}.providers[{j}]", path, names, reusable)
            for j, p in enumerate(providers)
        )
        rules.append(ResourceRule(tuple(resources), chain))
    return rules


KMS_FIELDS = ("apiVersion", "name", "endpoint", "timeout", "cachesize")
DEFAULT_KMS_TIMEOUT = 3.0  # seconds, Kubernetes' default for `timeout`
SUN_PATH_MAX = 107  # bytes of a unix socket's path (sockaddr_un.sun_path, less its NUL)
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration string (what Kubernetes' `metav1.Duration` fields take: `3s`, `500ms`,
    `1m30s`, `1.5s`) in seconds; ValueError for anything else."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(text)
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _kms_timeout(body: dict[str, Any], where: str) -> float:
    value = body.get("timeout")
    if value is None:
        return DEFAULT_KMS_TIMEOUT
    try:
        seconds = parse_duration(value) if isinstance(value, str) else -1.0
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise EncryptionError(
            f"{where}.kms.timeout: {value!r} is not a positive duration: write it as Kubernetes "
            "does, e.g. 3s (the default) or 500ms"
        )
    return seconds


def _socket_path(endpoint: str, where: str) -> str:
    """The absolute socket path of a `unix:///path` endpoint."""
    path = endpoint[len("unix://") :]
    if not path.startswith("/"):
        raise EncryptionError(
            f"{where}.kms.endpoint: {endpoint!r}: a unix socket needs its absolute path after "
            "unix://, e.g. unix:///var/run/kms-plugin/socket.sock (three slashes)"
        )
    if len(path.encode()) > SUN_PATH_MAX:
        raise EncryptionError(
            f"{where}.kms.endpoint: the socket path is {len(path.encode())} bytes; unix sockets "
            f"take at most {SUN_PATH_MAX}: move the socket to a shorter path"
        )
    return path


def _provider(
    spec: Any, where: str, path: Path, names: set[str], reusable: dict[Any, Provider]
) -> Provider:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise EncryptionError(f"{where}: exactly one provider (kms or identity)")
    ((kind, body),) = spec.items()
    if kind == "identity":
        return Identity()
    if kind != "kms":
        raise EncryptionError(
            f"{where}: {kind!r} is not supported: use `kms` (apiVersion v2), whose per-write "
            "keys have no nonce limit, and `identity` to read data from before encryption"
        )
    if not isinstance(body, dict) or body.get("apiVersion") != "v2":
        raise EncryptionError(f"{where}.kms.apiVersion: v2 (KMS v1 is deprecated in Kubernetes)")
    unknown = sorted(str(k) for k in body if k not in KMS_FIELDS)
    if unknown:
        raise EncryptionError(
            f"{where}.kms: unknown field {unknown[0]!r} (a kms provider takes "
            f"{', '.join(KMS_FIELDS[:-1])})"
        )
    if "cachesize" in body:
        raise EncryptionError(
            f"{where}.kms.cachesize: not used by KMS v2 (each replica unwraps a seed once): "
            "remove it"
        )
    name = body.get("name")
    if not isinstance(name, str) or not name or ":" in name:
        raise EncryptionError(f"{where}.kms.name: a name without ':'")
    endpoint = body.get("endpoint")
    if not isinstance(endpoint, str):
        raise EncryptionError(f"{where}.kms.endpoint: file:///path/to/key or unix:///socket")
    timeout = _kms_timeout(body, where)
    url = urlparse(endpoint)
    provider: Provider
    if url.scheme == "file":
        key = Path(url.path)
        if not key.is_absolute():
            key = path.parent / key
        provider = KmsV2(name, LocalKek(key))
    elif url.scheme == "unix":
        # a KMS v2 plugin (Vault's, a cloud KMS's, haplane.auth.kms_plugin): imported here,
        # as kms_client builds on this module
        from .kms_client import KmsPlugin, KmsV2Plugin

        _socket_path(endpoint, where)
        provider = reusable.get((name, endpoint, timeout)) or KmsV2Plugin(
            name, KmsPlugin(endpoint, timeout)
        )
    else:
        raise EncryptionError(f"{where}.kms.endpoint: file:///path/to/key or unix:///socket")
    if name in names:
        # Kubernetes requires KMS provider names to be unique: the name in the stored prefix
        # picks the provider that reads the value
        raise EncryptionError(f"{where}.kms.name: {name!r} is used twice")
    names.add(name)
    return provider


def local_config(keys: Sequence[tuple[str, Path]], encrypt: bool = True) -> str:
    """An EncryptionConfiguration sealing Secrets under local KEKs: `keys` (provider name, key
    file), the writer first, the older ones after it for reading, `identity` last (Secrets
    stored before encryption). `encrypt=False`: `identity` first, so values are written
    plain, and those sealed before still read while their keys are there."""
    kms = "".join(
        "      - kms:\n"
        "          apiVersion: v2\n"
        f"          name: {name}\n"
        f"          endpoint: file://{path}\n"
        for name, path in keys
    )
    identity = "      - identity: {}\n"
    return (
        f"apiVersion: {API_VERSION}\n"
        f"kind: {KIND}\n"
        "resources:\n"
        "  - resources: [secrets]\n"
        "    providers:\n" + (kms + identity if encrypt else identity + kms)
    )


def default_config(key_file: Path, encrypt: bool = True) -> str:
    """What `haplane up` writes first: Secrets sealed under one local KEK."""
    return local_config([("local", key_file)], encrypt)
