"""Layer: store. etcd: which binary to run, the command line of each member, the async client.

May use the model layer (`haplane.topology`); knows nothing of processes, HTTP or the CLI.
"""

from .clock import boottime
from .errors import (
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
    AppliedRecord,
    Heartbeat,
    replicated,
)
from .sync_state import SyncRecord, SyncState

__all__ = [
    "APPLIED_KEY",
    "CONTROLLER_LEASE_KEY",
    "CUT_KEY",
    "DEFAULT_GLOBAL_PREFIX",
    "FENCE_KEY",
    "HEARTBEAT_KEY",
    "LEADER_KEY",
    "REGION_LOCAL",
    "ActiveRegion",
    "Alarm",
    "AppliedRecord",
    "Compare",
    "Cut",
    "EtcdBinary",
    "EtcdBinaryError",
    "EtcdClient",
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
