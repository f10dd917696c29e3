"""Logical backups, Velero's idea: selected namespaces and resources exported as YAML through
the API, with their CRDs and Namespaces, and restored through the API in dependency order.

Layer: backup. A client of the platform like `haplane.gitops`: its public API only (a
`lint-imports` contract), plus the platform's encryption configuration to seal what must not be
written in plain text.

- `create`: `create_backup`, what is taken and how it is written;
- `restore`: `restore_backup`, the order, the existing-object policy, owner references;
- `manifest`: the backup on disk, its manifest and the checks made before a restore;
- `sealing`: Secrets sealed under the platform's key-encryption key;
- `selection`: pure decisions (which resources, which fields).
"""

from .create import create_backup
from .manifest import (
    FORMAT_VERSION,
    BackupError,
    FileEntry,
    Manifest,
    list_backups,
    problems,
    read_manifest,
)
from .restore import Outcome, RestoreReport, plan, restore_backup
from .sealing import Sealer, SealingError

__all__ = [
    "FORMAT_VERSION",
    "BackupError",
    "FileEntry",
    "Manifest",
    "Outcome",
    "RestoreReport",
    "Sealer",
    "SealingError",
    "create_backup",
    "list_backups",
    "plan",
    "problems",
    "read_manifest",
    "restore_backup",
]
