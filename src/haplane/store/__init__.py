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
from .etcd_member import MemberAddress, cluster_token, etcd_member_name, member_command
from .fence_key import (
    FENCE_KEY,
    FenceChanged,
    FenceRead,
    FenceValue,
    RegionFence,
    RegionFences,
)
from .global_state import DEFAULT_PREFIX as DEFAULT_GLOBAL_PREFIX
from .global_state import ActiveRegion, GlobalState, StaleEpoch

__all__ = [
    "DEFAULT_GLOBAL_PREFIX",
    "FENCE_KEY",
    "ActiveRegion",
    "Alarm",
    "Compare",
    "EtcdBinary",
    "EtcdBinaryError",
    "EtcdClient",
    "EtcdCompacted",
    "EtcdError",
    "EtcdNoQuorum",
    "EtcdOutcomeUnknown",
    "EtcdRejected",
    "EtcdUnavailable",
    "EtcdWindowClosed",
    "FenceChanged",
    "FenceRead",
    "FenceValue",
    "GlobalState",
    "KVHash",
    "KeyValue",
    "Member",
    "MemberAddress",
    "MemberStatus",
    "Op",
    "RegionFence",
    "RegionFences",
    "StaleEpoch",
    "TxnResult",
    "WatchBatch",
    "WatchEvent",
    "boottime",
    "cluster_token",
    "etcd_member_name",
    "find_etcd",
    "member_command",
    "prefix_end",
]
