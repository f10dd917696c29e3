"""The store layer's exceptions. Every gRPC error is translated into one of these at the client.

EtcdError
 ├── EtcdUnavailable        the request certainly did not take effect (never sent, refused
 │    │                     before proposal, or a read): safe to retry or to report as failed
 │    ├── EtcdNoQuorum      no member reached a leader: the cluster has lost quorum
 │    └── EtcdWindowClosed  a write's absolute deadline left less than its minimum window at
 │                          send time: not sent
 ├── EtcdOutcomeUnknown     a write was sent and no answer came (deadline, connection lost):
 │                          it may have been applied; never retry it blindly
 ├── EtcdCompacted          the requested revision was compacted away
 │    └── EtcdClusterReplaced  a watch resumed on another cluster (a restore from a
 │                          snapshot): its revisions mean nothing there; relist
 └── EtcdRejected           etcd refused the request (too large, no space, bad request)
"""

from __future__ import annotations


class EtcdError(Exception):
    """Base of every error from the etcd client."""


class EtcdUnavailable(EtcdError):
    """The request did not take effect: no member could serve it."""


class EtcdNoQuorum(EtcdUnavailable):
    """Members answered but none has a leader: the cluster has no quorum."""


class EtcdWindowClosed(EtcdUnavailable):
    """A write was not sent: its absolute deadline (e.g. the end of a write permission) left
    less than the caller's minimum window when it was about to go out."""


class EtcdOutcomeUnknown(EtcdError):
    """A write reached a member but its outcome is unknown; it may have been applied."""


class EtcdCompacted(EtcdError):
    def __init__(self, message: str, compact_revision: int):
        super().__init__(message)
        self.compact_revision = compact_revision


class EtcdClusterReplaced(EtcdCompacted):
    """A watch resumed on a member of another cluster than it began on (a new cluster id: the
    cluster was restored from a snapshot). Its revisions are another history's: a watch from
    one may wait for revisions that never come, or skip the new cluster's. Like a compaction,
    the caller relists and watches again."""

    def __init__(self, message: str):
        super().__init__(message, compact_revision=0)


class EtcdRejected(EtcdError):
    """etcd answered with a definite refusal (e.g. request too large, NOSPACE alarm)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code
