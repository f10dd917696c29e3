"""The KMS v2 envelope itself: key-encryption keys (the local key file), the EncryptedObject
message, and the providers that seal and open one value (`Identity`, `KmsV2`).

Layer: auth. Pure crypto; reads only the key files it is given. `haplane.auth.encryption`
(the EncryptionConfiguration and the Transformers built from it) and
`haplane.auth.kms_client` (a KEK behind a KMS v2 plugin) build on this module; see
`haplane.auth.encryption` for the scheme.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

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

    def current_key_id(self) -> str:
        """The key id new values are sealed under now (what a rewrite moves values to)."""
        return self.kek.key_id()

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
        else:  # least recently used goes first: the seeds in use stay unwrapped
            with self._lock, contextlib.suppress(KeyError):
                self._seeds.move_to_end(wrapped)
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
