"""Encryption at rest in the API's storage: the `EncryptionConfiguration` (`haplane.auth.
encryption`) applied to etcd keys, by the resource each key belongs to.

Layer: api. Reads the configuration once at start (kube-apiserver's
`--encryption-provider-config`); the storage calls the transformer on every value.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from haplane.auth.encryption import Transformers, load_config

from .resources import ResourceType

REGISTRY = b"/registry/"


def transformers(config: Path | str, builtins: Iterable[ResourceType]) -> Transformers:
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

    return Transformers(load_config(config), resource_of)
