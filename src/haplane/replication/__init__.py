"""Layer: replication. The ordered cross-region stream: each standby region's replicators copy
the active region's etcd into their own, revision by revision (resume, resync, lag, heartbeat).

May use the store and model layers; knows nothing of the API server, the gate or the CLI.
"""

from .replicator import Replicator, ReplicatorStatus
from .stream import Revision, batches, revisions

__all__ = ["Replicator", "ReplicatorStatus", "Revision", "batches", "revisions"]
