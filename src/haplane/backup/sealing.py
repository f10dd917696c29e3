"""Sealing what a backup must not hold in plain text (Secrets, and whatever else the platform
encrypts at rest) under the platform's key-encryption key, through the platform's own envelope.

Layer: backup. Reads the EncryptionConfiguration the API replicas use (`STATE/encryption/
config.yaml`, or the topology's own file) and talks to what it names: a local key file, or a KMS
v2 plugin's socket (`haplane.auth.encryption`, `haplane.auth.kms_client`).

How a file is sealed: the configuration's provider for Secrets (its writer, else the first
`kms` provider it lists) seals the whole file as one value, exactly as a replica seals a Secret
in etcd (`haplane.auth.envelope.KmsV2`): a provider made for this backup makes a fresh 32-byte
seed and has the KEK wrap it (the local key, or the plugin's `Encrypt`); the file's data key is
HKDF-SHA256(seed, 32 random bytes); AES-256-GCM seals the file, its backup name and path as
associated data, so a sealed file moved to another backup or path does not open. The file holds
`k8s:enc:kms:v2:<provider>:` and Kubernetes' `EncryptedObject` (the ciphertext, the KEK's key
id, the wrapped seed), so `haplane secrets remove-key` finds the backups that still need a key
by the same prefix it looks for in etcd. Opening needs the same KEK, through a configuration
that lists the provider (an older key stays listed as a reader after a rotation).

Why not a data key of our own: the envelope is the platform's, tested against kube-apiserver's
format, and it already speaks to both kinds of KEK; writing a second one would be a second
thing to get right.
"""

from __future__ import annotations

from pathlib import Path

from ..auth.encryption import (
    KMS_V2_PREFIX,
    EncryptedObject,
    EncryptionError,
    Identity,
    KmsV2,
    Provider,
    Transformers,
    load_config,
)
from .manifest import BackupError

# what a backup always seals, whatever the configuration says of it
ALWAYS_SEALED = (("", "secrets"),)


class SealingError(BackupError):
    """No key-encryption key to seal or open with: said with the configuration and the cause."""


class Sealer:
    """The platform's KEK, as one configuration reaches it. Close it when done (a KMS plugin
    provider runs a thread that asks the plugin's Status)."""

    def __init__(self, transformers: Transformers, where: str) -> None:
        self.transformers = transformers
        self.where = where
        self._started = False

    @classmethod
    def from_config(cls, path: Path) -> Sealer:
        try:
            rules = load_config(path)
        except EncryptionError as exc:
            raise SealingError(f"encryption configuration {path}: {exc}") from None
        return cls(Transformers(rules, lambda key: None), str(path))

    def close(self) -> None:
        self.transformers.close()

    def seals_at_rest(self, group: str, plural: str) -> bool:
        """Whether the platform stores this resource encrypted (its writer is not identity)."""
        if (group, plural) in ALWAYS_SEALED:
            return True
        return not isinstance(self.transformers.providers_for(group, plural)[0], Identity)

    def writer(self) -> KmsV2:
        """The provider a backup seals with: the Secrets' writer when it is a KMS provider,
        else the first KMS provider listed for Secrets (encryption at rest is off but the key
        is there), else the first one anywhere."""
        chains = [self.transformers.providers_for("", "secrets"), self.transformers.providers()]
        for chain in chains:
            for p in chain:
                if isinstance(p, KmsV2):
                    return p
        raise SealingError(
            f"encryption configuration {self.where} names no kms provider: there is no "
            "key-encryption key to seal with"
        )

    def _start(self) -> None:
        if not self._started:
            self.transformers.start()  # a plugin's first Status and seed, off the caller
            self._started = True

    def seal(self, data: bytes, context: bytes) -> bytes:
        """`data` sealed under the KEK, bound to `context` (associated data)."""
        provider = self.writer()
        self._start()
        try:
            return provider.encrypt(data, context)
        except EncryptionError as exc:
            raise SealingError(
                f"sealing with provider {provider.name} of {self.where}: {exc}"
            ) from None

    def open(self, sealed: bytes, context: bytes) -> bytes:
        """What `seal` sealed; SealingError when no listed provider can open it."""
        provider = self._reader(sealed)
        self._start()
        try:
            return provider.decrypt(sealed, context)
        except EncryptionError as exc:
            raise SealingError(f"opening with provider {provider.name}: {exc}") from None

    def _reader(self, sealed: bytes) -> Provider:
        for p in self.transformers.providers():
            prefix = p.prefix()
            if prefix and sealed.startswith(prefix):
                return p
        raise SealingError(
            f"sealed by provider {provider_of(sealed)!r}, which encryption configuration "
            f"{self.where} does not list: add it back (as a reader) to open this backup"
        )


def provider_of(sealed: bytes) -> str:
    """The provider name in a sealed value's prefix (`k8s:enc:kms:v2:<name>:`)."""
    if not sealed.startswith(KMS_V2_PREFIX):
        return "?"
    end = sealed.find(b":", len(KMS_V2_PREFIX))
    return sealed[len(KMS_V2_PREFIX) : end].decode(errors="replace") if end > 0 else "?"


def key_id_of(sealed: bytes) -> str:
    """The KEK's key id a sealed value records (for the manifest and `describe`)."""
    name = provider_of(sealed)
    body = sealed[len(KMS_V2_PREFIX) + len(name) + 1 :]
    try:
        return EncryptedObject.decode(body).key_id
    except EncryptionError:
        return "?"
