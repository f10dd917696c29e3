"""Layer: store. etcd: which binary to run, the command line of each member, the async client.

May use the model layer (`haplane.topology`); knows nothing of processes, HTTP or the CLI.

Lazy (PEP 562): importing this package imports none of its modules; each name is imported on
first use, so a command that needs only `etcd_binary` (say) does not load grpc with the
client. The imports below are for type checkers; `_EXPORTS` says where each name lives.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from .etcd_binary import EtcdBinary, EtcdBinaryError, find_etcd
    from .etcd_client import (
        Alarm,
        Compare,
        EtcdClient,
        EtcdTls,
        KeyValue,
        KVHash,
        Member,
        MemberStatus,
        Op,
        TxnResult,
        WatchBatch,
        WatchEvent,
        prefix_end,
    )
    from .etcd_member import (
        MemberAddress,
        MemberTls,
        cluster_token,
        etcd_member_name,
        join_command,
        member_command,
    )
    from .fence_key import (
        FENCE_KEY,
        FenceChanged,
        FenceRead,
        FenceValue,
        RegionFence,
        RegionFences,
    )
    from .global_state import DEFAULT_PREFIX as DEFAULT_GLOBAL_PREFIX
    from .global_state import ActiveRegion, Cut, GlobalState, ReplicationReport, StaleEpoch
    from .replication_keys import (
        APPLIED_KEY,
        CONTROLLER_LEASE_KEY,
        CUT_KEY,
        HEARTBEAT_KEY,
        LEADER_KEY,
        REGION_LOCAL,
        RESTORED_KEY,
        AppliedRecord,
        Heartbeat,
        RestoredMarker,
        replicated,
    )
    from .sync_state import SyncRecord, SyncState

_EXPORTS: dict[str, tuple[str, str]] = {
    "boottime": (".clock", "boottime"),
    "EtcdClusterReplaced": (".errors", "EtcdClusterReplaced"),
    "EtcdCompacted": (".errors", "EtcdCompacted"),
    "EtcdError": (".errors", "EtcdError"),
    "EtcdNoQuorum": (".errors", "EtcdNoQuorum"),
    "EtcdOutcomeUnknown": (".errors", "EtcdOutcomeUnknown"),
    "EtcdRejected": (".errors", "EtcdRejected"),
    "EtcdUnavailable": (".errors", "EtcdUnavailable"),
    "EtcdWindowClosed": (".errors", "EtcdWindowClosed"),
    "EtcdBinary": (".etcd_binary", "EtcdBinary"),
    "EtcdBinaryError": (".etcd_binary", "EtcdBinaryError"),
    "find_etcd": (".etcd_binary", "find_etcd"),
    "Alarm": (".etcd_client", "Alarm"),
    "Compare": (".etcd_client", "Compare"),
    "EtcdClient": (".etcd_client", "EtcdClient"),
    "EtcdTls": (".etcd_client", "EtcdTls"),
    "KeyValue": (".etcd_client", "KeyValue"),
    "KVHash": (".etcd_client", "KVHash"),
    "Member": (".etcd_client", "Member"),
    "MemberStatus": (".etcd_client", "MemberStatus"),
    "Op": (".etcd_client", "Op"),
    "TxnResult": (".etcd_client", "TxnResult"),
    "WatchBatch": (".etcd_client", "WatchBatch"),
    "WatchEvent": (".etcd_client", "WatchEvent"),
    "prefix_end": (".etcd_client", "prefix_end"),
    "MemberAddress": (".etcd_member", "MemberAddress"),
    "MemberTls": (".etcd_member", "MemberTls"),
    "cluster_token": (".etcd_member", "cluster_token"),
    "etcd_member_name": (".etcd_member", "etcd_member_name"),
    "join_command": (".etcd_member", "join_command"),
    "member_command": (".etcd_member", "member_command"),
    "FENCE_KEY": (".fence_key", "FENCE_KEY"),
    "FenceChanged": (".fence_key", "FenceChanged"),
    "FenceRead": (".fence_key", "FenceRead"),
    "FenceValue": (".fence_key", "FenceValue"),
    "RegionFence": (".fence_key", "RegionFence"),
    "RegionFences": (".fence_key", "RegionFences"),
    "DEFAULT_GLOBAL_PREFIX": (".global_state", "DEFAULT_PREFIX"),
    "ActiveRegion": (".global_state", "ActiveRegion"),
    "Cut": (".global_state", "Cut"),
    "GlobalState": (".global_state", "GlobalState"),
    "ReplicationReport": (".global_state", "ReplicationReport"),
    "StaleEpoch": (".global_state", "StaleEpoch"),
    "APPLIED_KEY": (".replication_keys", "APPLIED_KEY"),
    "CONTROLLER_LEASE_KEY": (".replication_keys", "CONTROLLER_LEASE_KEY"),
    "CUT_KEY": (".replication_keys", "CUT_KEY"),
    "HEARTBEAT_KEY": (".replication_keys", "HEARTBEAT_KEY"),
    "LEADER_KEY": (".replication_keys", "LEADER_KEY"),
    "REGION_LOCAL": (".replication_keys", "REGION_LOCAL"),
    "RESTORED_KEY": (".replication_keys", "RESTORED_KEY"),
    "AppliedRecord": (".replication_keys", "AppliedRecord"),
    "Heartbeat": (".replication_keys", "Heartbeat"),
    "RestoredMarker": (".replication_keys", "RestoredMarker"),
    "replicated": (".replication_keys", "replicated"),
    "SyncRecord": (".sync_state", "SyncRecord"),
    "SyncState": (".sync_state", "SyncState"),
}


if not TYPE_CHECKING:  # (to a type checker the names above are the module's: typos stay errors)

    def __getattr__(name: str) -> Any:
        try:
            module, attribute = _EXPORTS[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module, __name__), attribute)
        globals()[name] = value  # once
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "APPLIED_KEY",
    "CONTROLLER_LEASE_KEY",
    "CUT_KEY",
    "DEFAULT_GLOBAL_PREFIX",
    "FENCE_KEY",
    "HEARTBEAT_KEY",
    "LEADER_KEY",
    "REGION_LOCAL",
    "RESTORED_KEY",
    "ActiveRegion",
    "Alarm",
    "AppliedRecord",
    "Compare",
    "Cut",
    "EtcdBinary",
    "EtcdBinaryError",
    "EtcdClient",
    "EtcdClusterReplaced",
    "EtcdCompacted",
    "EtcdError",
    "EtcdNoQuorum",
    "EtcdOutcomeUnknown",
    "EtcdRejected",
    "EtcdTls",
    "EtcdUnavailable",
    "EtcdWindowClosed",
    "FenceChanged",
    "FenceRead",
    "FenceValue",
    "GlobalState",
    "Heartbeat",
    "KVHash",
    "KeyValue",
    "Member",
    "MemberAddress",
    "MemberStatus",
    "MemberTls",
    "Op",
    "RegionFence",
    "RegionFences",
    "ReplicationReport",
    "RestoredMarker",
    "StaleEpoch",
    "SyncRecord",
    "SyncState",
    "TxnResult",
    "WatchBatch",
    "WatchEvent",
    "boottime",
    "cluster_token",
    "etcd_member_name",
    "find_etcd",
    "join_command",
    "member_command",
    "prefix_end",
    "replicated",
]
