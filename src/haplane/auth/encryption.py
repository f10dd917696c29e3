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

The envelope itself (keys, the EncryptedObject message, the providers) is
`haplane.auth.envelope`; its names are re-exported here, where callers have always found
them. This module builds providers from the configuration, plugin ones through
`haplane.auth.kms_client` (which builds on the envelope, not on this module: no cycle).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from .envelope import (
    HAPLANE_V0_SEED,
    HKDF_SHA256_XNONCE_AES_GCM_SEED,
    KMS_V2_PREFIX,
    SEED_BYTES,
    EncryptedObject,
    EncryptionError,
    Identity,
    Kek,
    KmsV2,
    LocalKek,
    Provider,
    Seed,
    WrappedSeed,
    create_local_key,
)
from .kms_client import KmsPlugin, KmsV2Plugin

API_VERSION = "apiserver.config.k8s.io/v1"
KIND = "EncryptionConfiguration"

__all__ = [
    "API_VERSION",
    "HAPLANE_V0_SEED",
    "HKDF_SHA256_XNONCE_AES_GCM_SEED",
    "KIND",
    "KMS_V2_PREFIX",
    "SEED_BYTES",
    "EncryptedObject",
    "EncryptionError",
    "Identity",
    "Kek",
    "KmsV2",
    "LocalKek",
    "Provider",
    "ResourceRule",
    "Seed",
    "Transformers",
    "WrappedSeed",
    "create_local_key",
    "default_config",
    "load_config",
    "local_config",
    "parse_duration",
]

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
        # a KMS v2 plugin (Vault's, a cloud KMS's, haplane.auth.kms_plugin)
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
