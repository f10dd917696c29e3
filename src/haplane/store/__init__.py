"""Layer: store. etcd: which binary to run, the command line of each member, the async client.

May use the model layer (`haplane.topology`); knows nothing of processes, HTTP or the CLI.
"""

from .errors import (
    EtcdCompacted,
    EtcdError,
    EtcdNoQuorum,
    EtcdOutcomeUnknown,
    EtcdRejected,
    EtcdUnavailable,
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
from .global_state import DEFAULT_PREFIX as DEFAULT_GLOBAL_PREFIX
from .global_state import ActiveRegion, GlobalState, StaleEpoch

__all__ = [
    "DEFAULT_GLOBAL_PREFIX",
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
    "GlobalState",
    "KVHash",
    "KeyValue",
    "Member",
    "MemberAddress",
    "MemberStatus",
    "Op",
    "StaleEpoch",
    "TxnResult",
    "WatchBatch",
    "WatchEvent",
    "cluster_token",
    "etcd_member_name",
    "find_etcd",
    "member_command",
    "prefix_end",
]
