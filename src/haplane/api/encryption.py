"""Encryption at rest in the API's storage: the `EncryptionConfiguration` (`haplane.auth.
encryption`) applied to etcd keys, by the resource each key belongs to.

Layer: api. Reads the configuration at start (kube-apiserver's `--encryption-provider-config`)
and again whenever the file changes (as `--encryption-provider-config-automatic-reload`):
`haplane secrets rotate` rewrites it. A file that does not load keeps the one in use. KMS
plugin providers start polling their plugin when loaded; a reload keeps those it leaves
unchanged (their seeds and connections) and closes those it drops.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from haplane.auth.encryption import EncryptionError, ResourceRule, Transformers, load_config

from .resources import ResourceType

REGISTRY = b"/registry/"


class ReloadingTransformers:
    """The storage's transformer, following the configuration file."""

    def __init__(self, path: Path | str, builtins: Iterable[ResourceType]):
        self.path = Path(path)
        self.builtins = tuple(builtins)
        self.current, self.sha256, self._stamp = self._load(())
        self.current.start()

    def _load(self, previous: Iterable[ResourceRule]) -> tuple[Transformers, str, tuple[int, int]]:
        """Parsed and hashed from one read: the digest reported is of the file in use."""
        stat = self.path.stat()
        data = self.path.read_bytes()
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise EncryptionError(f"{self.path}: {exc}") from None
        return (
            transformers(self.path, self.builtins, text, previous),
            hashlib.sha256(data).hexdigest(),
            (stat.st_mtime_ns, stat.st_size),
        )

    def reload_if_changed(self) -> bool:
        """True when a changed file was loaded; raises `EncryptionError` or `OSError` when it
        changed but does not load (the configuration in use stays)."""
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return False
        old = self.current
        try:
            self.current, self.sha256, self._stamp = self._load(old.rules)
        except BaseException:
            self._stamp = stamp  # said once; tried again when the file changes again
            raise
        self.current.start()
        # transformers run synchronously on the event loop, as this does: nothing is using
        # the old providers now
        old.close(keeping=self.current)
        return True

    def close(self) -> None:
        self.current.close()

    def to_storage(self, data: bytes, key: bytes) -> bytes:
        return self.current.to_storage(data, key)

    def from_storage(self, data: bytes, key: bytes) -> bytes:
        return self.current.from_storage(data, key)


def stored_types() -> list[ResourceType]:
    """Every type a replica stores under its own key prefix (custom resources are found by
    their group): what the CLI needs to open values as the replicas do."""
    from .access_types import ACCESS_TYPES
    from .crds import CRD_TYPE
    from .policy_types import POLICY_TYPES
    from .resources import BUILTIN

    return [*BUILTIN, CRD_TYPE, *ACCESS_TYPES, *POLICY_TYPES]


def transformers(
    config: Path | str,
    builtins: Iterable[ResourceType],
    text: str | None = None,
    previous: Iterable[ResourceRule] = (),
) -> Transformers:
    """Built-ins live under /registry/<resource>/, custom resources (and CRDs) under
    /registry/<group>/<resource>/: a first segment with a dot is a group."""
    builtin = {
        t.key_prefix()[len("/registry/") :].split("/")[0].encode(): (t.group, t.plural)
        for t in builtins
        if not t.custom and not t.virtual and t.key_prefix().startswith("/registry/")
    }

    def resource_of(key: bytes) -> tuple[str, str] | None:
        if not key.startswith(REGISTRY):
            return None
        parts = key[len(REGISTRY) :].split(b"/", 2)
        if b"." in parts[0]:
            if len(parts) < 2:
                return None
            return parts[0].decode(), parts[1].decode()
        return builtin.get(parts[0])

    return Transformers(load_config(config, text, previous), resource_of)
