"""Platform operations as stored objects: where `ops.haplane.dev` objects live in the global
control etcd, their phases, and the compare-and-swap status updates of whoever carries them out.

Layer: store. The API replicas of every region serve these objects (`haplane.api.ops`: create,
read, approve) from the global control etcd, not from a region's, so operations and approvals
work while the active region is down or fenced; the failover controller (`haplane.gate`)
carries out approved ones by rewriting their status here. Both sides write the same JSON: one
document per object, keys sorted, no `resourceVersion` (the API derives it from the etcd
revision, so a status change here is a new version there, seen by watches).

Keys (under the global prefix, default `/haplane/global/`): `ops/<plural>/<name>` for the
cluster-scoped kinds, e.g. `ops/switchovers/move-to-central`.

Phases of an operation: `Pending` (waiting for approvals) -> `Approved` -> `Running` ->
`Succeeded` | `Failed`; or `Rejected` (an approver said no) or `Expired` (not approved in
time). Only the API moves an object out of `Pending`, and only the executor out of `Approved`
(claiming it with `Running` in one compare-and-swap, so two executors never both run it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .etcd_client import Compare, EtcdClient, KeyValue, Op, prefix_end

GROUP = "ops.haplane.dev"
VERSION = "v1"
OPS_SEGMENT = b"ops/"

PENDING = "Pending"
APPROVED = "Approved"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
REJECTED = "Rejected"
EXPIRED = "Expired"
TERMINAL = frozenset({SUCCEEDED, FAILED, REJECTED, EXPIRED})
# the operation kinds and their plurals; ApprovalPolicies are no operation and never finish
KIND_PLURALS = {
    "Switchover": "switchovers",
    "RoleGrant": "rolegrants",
    "Drill": "drills",
    "MaintenanceAction": "maintenanceactions",
}
PLURALS = tuple(KIND_PLURALS.values())

Obj = dict[str, Any]


def ops_prefix(global_prefix: bytes, plural: str) -> bytes:
    """Where objects of `plural` live (`<global prefix>ops/<plural>/`)."""
    return global_prefix + OPS_SEGMENT + plural.encode() + b"/"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> float | None:
    """Seconds since the epoch of an RFC 3339 UTC time as the API writes it, or None."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def encode(obj: Obj) -> bytes:
    """The stored form (the API's: sorted keys, no resourceVersion)."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("resourceVersion", None)
    return json.dumps({**obj, "metadata": meta}, sort_keys=True, separators=(",", ":")).encode()


def decode(kv: KeyValue) -> Obj | None:
    try:
        obj = json.loads(kv.value)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


async def list_objects(
    client: EtcdClient, global_prefix: bytes, plural: str, *, timeout: float | None = None
) -> list[tuple[KeyValue, Obj]]:
    """Every stored object of `plural`, oldest first (by creation revision)."""
    prefix = ops_prefix(global_prefix, plural)
    kvs, _ = await client.range(prefix, prefix_end(prefix), timeout=timeout)
    out = [(kv, obj) for kv in kvs if (obj := decode(kv)) is not None]
    out.sort(key=lambda pair: pair[0].create_revision)
    return out


async def create_object(
    client: EtcdClient,
    global_prefix: bytes,
    plural: str,
    obj: Obj,
    *,
    timeout: float | None = None,
) -> bool:
    """Store `obj` (with its own metadata: name, uid, creationTimestamp) if no object of that
    name exists; False when one does."""
    key = ops_prefix(global_prefix, plural) + obj["metadata"]["name"].encode()
    result = await client.txn(
        [Compare(key, "mod", "=", 0)], [Op("put", key, encode(obj))], timeout=timeout
    )
    return result.succeeded


async def prune_finished(
    client: EtcdClient,
    global_prefix: bytes,
    plural: str,
    *,
    older_than: float,
    keep: int,
    now: float | None = None,
    timeout: float | None = None,
) -> list[str]:
    """Delete finished objects of `plural` (Succeeded, Failed, Rejected, Expired) whose
    `status.finishedAt` (else their creation) is more than `older_than` seconds ago, keeping
    the `keep` most recently created finished ones whatever their age. Each delete is guarded
    by the object's mod revision: one that changed since it was read stays. Returns the names
    deleted. (The audit log keeps every request and decision; this bounds the live list.)"""
    now = time.time() if now is None else now
    finished = [
        (kv, obj)
        for kv, obj in await list_objects(client, global_prefix, plural, timeout=timeout)
        if _status(obj).get("phase") in TERMINAL
    ]
    deleted = []
    for kv, obj in finished[: max(0, len(finished) - keep)]:  # oldest first
        meta = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
        at = parse_time(_status(obj).get("finishedAt")) or parse_time(meta.get("creationTimestamp"))
        if at is None or now - at < older_than:
            continue
        result = await client.txn(
            [Compare(kv.key, "mod", "=", kv.mod_revision)], [Op("delete", kv.key)], timeout=timeout
        )
        if result.succeeded:
            deleted.append(str(meta.get("name")))
    return deleted


def _status(obj: Obj) -> Obj:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


class Lost(Exception):
    """The object changed (or went) since it was read: someone else acted on it."""


async def update_status(
    client: EtcdClient,
    kv: KeyValue,
    change: Callable[[Obj], None],
    *,
    timeout: float | None = None,
) -> tuple[KeyValue, Obj]:
    """Apply `change` to the status of the object `kv` held, in one transaction guarded by its
    mod revision; `Lost` when it changed since. Returns the new key-value and object."""
    obj = decode(kv)
    if obj is None:
        raise Lost(f"{kv.key.decode(errors='replace')} does not hold an object")
    status = obj.setdefault("status", {})
    if not isinstance(status, dict):
        obj["status"] = status = {}
    change(status)
    value = encode(obj)
    result = await client.txn(
        [Compare(kv.key, "mod", "=", kv.mod_revision)],
        [Op("put", kv.key, value)],
        timeout=timeout,
    )
    if not result.succeeded:
        raise Lost(f"{obj.get('metadata', {}).get('name')} changed while being updated")
    new = KeyValue(kv.key, value, kv.create_revision, result.revision, kv.version + 1, 0)
    return new, obj
