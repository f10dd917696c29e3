"""What of a regional etcd travels between regions, and the keys replication keeps there.

Layer: store. Pure key layout and the small records stored under it; knows nothing of processes,
HTTP or the CLI. Used by the API server (heartbeat, controller lease), the replicators
(`haplane.replication`) and the CLI (switchover's cut marker, status).

Everything in a regional etcd is replicated from the active region to its standbys, as stored
bytes, except the **region-local keys** (`REGION_LOCAL`):
- `/haplane/fence`: the region's own data fence (`fence_key`);
- `/haplane/replication/...`: the replicators' own bookkeeping in this region (the applied
  record, the leader key);
- `/registry/leases/kube-system/haplane-controllers`: the Lease of the lifecycle controllers'
  leader election, which each region runs among its own replicas.

Replicated keys that replication itself writes in the active region:
- `/haplane/heartbeat`: the lifecycle-controller leader of the active region puts
  `{"region", "epoch", "time", "seq"}` every 100 ms (`time`: the writer's wall clock,
  CLOCK_REALTIME); a target's lag in seconds is its replicator's wall clock minus the newest
  heartbeat it applied;
- `/haplane/cut`: a planned switchover's cut marker, `{"region", "epoch", "time", "by"}`,
  written in the same transaction that freezes the old region: every write committed there
  before it is before the cut.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from .errors import EtcdError
from .etcd_client import KeyValue
from .fence_key import FENCE_KEY

HEARTBEAT_KEY = b"/haplane/heartbeat"
CUT_KEY = b"/haplane/cut"
REPLICATION_PREFIX = b"/haplane/replication/"
APPLIED_KEY = REPLICATION_PREFIX + b"applied"
LEADER_KEY = REPLICATION_PREFIX + b"leader"
# set by `haplane restore region` in the restored region: its copy counts as partial (never
# promoted automatically) until its replicator applied the source up to `revision`
RESTORED_KEY = REPLICATION_PREFIX + b"restored"
CONTROLLER_LEASE_KEY = b"/registry/leases/kube-system/haplane-controllers"

# (key, whether it is a prefix): what never leaves its region
REGION_LOCAL: tuple[tuple[bytes, bool], ...] = (
    (FENCE_KEY, False),
    (REPLICATION_PREFIX, True),
    (CONTROLLER_LEASE_KEY, False),
)

# the whole keyspace, for ranges and watches (etcd: key "\0" with range end "\0")
ALL_KEYS = (b"\0", b"\0")


def replicated(key: bytes) -> bool:
    """Whether a key of a regional etcd travels to the other regions."""
    for local, is_prefix in REGION_LOCAL:
        if key == local or (is_prefix and key.startswith(local)):
            return False
    return True


AppliedState = Literal["streaming", "resyncing"]


@dataclass(frozen=True)
class AppliedRecord:
    """What a region applied from which source, kept in the target's own etcd at `APPLIED_KEY`
    and written in the same transaction as the data it describes.

    `revision`: the last source revision applied (while `resyncing`: the revision the resync
    reads at, not yet complete). `cluster_id` names the source etcd cluster: a record of another
    cluster (a different source, or the same region rebuilt) means a full resync.
    `heartbeat`: the source wall-clock time in the newest heartbeat applied (lag in seconds)."""

    source: str
    cluster_id: int
    epoch: int
    revision: int
    state: AppliedState = "streaming"
    heartbeat: float | None = None
    mod_revision: int = 0  # of the key as read (0: absent / not read)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "source": self.source,
                "clusterId": self.cluster_id,
                "epoch": self.epoch,
                "revision": self.revision,
                "state": self.state,
                "heartbeat": self.heartbeat,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_kv(cls, kv: KeyValue) -> AppliedRecord:
        try:
            d = json.loads(kv.value)
            state = d.get("state", "streaming")
            if state not in ("streaming", "resyncing"):
                raise ValueError(f"unknown state {state!r}")
            hb = d.get("heartbeat")
            return cls(
                source=str(d["source"]),
                cluster_id=int(d["clusterId"]),
                epoch=int(d["epoch"]),
                revision=int(d["revision"]),
                state=state,
                heartbeat=float(hb) if hb is not None else None,
                mod_revision=kv.mod_revision,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise EtcdError(f"malformed applied record at {kv.key!r}: {exc}") from exc


@dataclass(frozen=True)
class Heartbeat:
    region: str
    epoch: int
    time: float
    seq: int

    def to_json(self) -> bytes:
        return json.dumps(
            {"region": self.region, "epoch": self.epoch, "time": self.time, "seq": self.seq}
        ).encode()

    @classmethod
    def parse(cls, raw: bytes) -> Heartbeat | None:
        try:
            d = json.loads(raw)
            return cls(str(d["region"]), int(d["epoch"]), float(d["time"]), int(d["seq"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class RestoredMarker:
    """`RESTORED_KEY`: the region was rebuilt from a snapshot while `source` stood at
    `revision`; until its replicator has applied that far, what it holds is older than what
    it held before the restore (and what clients may have been acknowledged)."""

    source: str
    revision: int
    snapshot: str

    def to_json(self) -> bytes:
        return json.dumps(
            {"source": self.source, "revision": self.revision, "snapshot": self.snapshot},
            sort_keys=True,
        ).encode()

    @classmethod
    def parse(cls, raw: bytes) -> RestoredMarker | None:
        try:
            d = json.loads(raw)
            return cls(str(d["source"]), int(d["revision"]), str(d.get("snapshot", "")))
        except (ValueError, KeyError, TypeError):
            return None
