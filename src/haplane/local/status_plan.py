"""What `haplane status` asks, and where: every etcd member and listener of a running topology,
as plain data kept beside it in the state dir.

Layer: run (local). Standard library only at import (and `haplane.store`'s light names).

Resolving a topology's plan (`plan_of`) loads the topology model (pydantic and the model's
rules: ~150 ms to import on this machine, several times that while the topology itself keeps
the two cores busy) and the port registry: longer than all of status's requests together. A
plan depends only on the state dir, the topology file and the port registry, so `targets` keeps
what status needs of it in `STATE/status-plan.json`, with both files' SHA-256 (their contents,
not their times: a file rewritten within one clock tick still counts), a format number, and
the size and time of the resolving code's files (an upgrade resolves again). A
status whose files still match reads that file; anything else (a file changed or missing, a
cache unreadable, of another format or another state dir) resolves the plan again and rewrites
the cache, atomically. A cache that
cannot be written (a read-only state dir) is only a slower status.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from haplane.store import EtcdClient

    from .gate_plans import TopologyPlan
    from .security import PlatformTls
    from .state_dir import StateDir

FORMAT = 1  # bump whenever what is kept, or what it means, changes
CACHE_NAME = "status-plan.json"


@dataclass(frozen=True)
class Listener:
    name: str  # as status names it, e.g. eu-west/api-1
    url: str


@dataclass(frozen=True)
class EdgeListener:
    name: str
    kind: str  # balancer | gate
    url: str
    admin_url: str


@dataclass(frozen=True)
class SiteListener:
    """A global instance on a site (GitOps controller, console) and the gate it dials."""

    name: str
    site: str
    url: str
    server: str


@dataclass(frozen=True)
class ClusterTargets:
    name: str  # e.g. eu-west/etcd
    is_global: bool
    quota: int  # the members' --quota-backend-bytes
    members: dict[str, str]  # qualified member name -> client endpoint
    etcd_tls: tuple[str, str, str] | None = None  # CA, certificate, key

    def client(self, timeout: float) -> EtcdClient:
        """A client of this cluster as the supervisor and the CLI dial it."""
        from haplane.store import EtcdClient, EtcdTls

        tls = EtcdTls(*(Path(p) for p in self.etcd_tls)) if self.etcd_tls else None
        return EtcdClient(list(self.members.values()), timeout=timeout, tls=tls)


@dataclass(frozen=True)
class RegionReplicators:
    region: str
    replicators: list[Listener]


@dataclass
class StatusTargets:
    topology: str  # its name
    pki: str | None  # the PlatformTls root; None: `security.insecure: true`
    clusters: list[ClusterTargets]
    replicas: list[Listener]
    edges: list[EdgeListener]  # balancers, then gates
    gitops: list[SiteListener] = field(default_factory=list)
    console: list[SiteListener] = field(default_factory=list)
    replication: list[RegionReplicators] = field(default_factory=list)  # in the file's order
    has_sync: bool = False  # some replication pair is `Sync`

    @property
    def tls(self) -> PlatformTls | None:
        from .security import PlatformTls

        return PlatformTls(Path(self.pki)) if self.pki is not None else None

    @property
    def global_cluster(self) -> ClusterTargets:
        return next(c for c in self.clusters if c.is_global)

    @property
    def regional_clusters(self) -> list[ClusterTargets]:
        return [c for c in self.clusters if not c.is_global]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> StatusTargets:
        """What `as_dict` wrote (KeyError, TypeError or ValueError when it is not that)."""

        def listeners(key: str) -> list[Listener]:
            return [Listener(**x) for x in doc[key]]

        return cls(
            topology=str(doc["topology"]),
            pki=None if doc["pki"] is None else str(doc["pki"]),
            clusters=[
                ClusterTargets(
                    name=c["name"],
                    is_global=bool(c["is_global"]),
                    quota=int(c["quota"]),
                    members={str(k): str(v) for k, v in c["members"].items()},
                    etcd_tls=tuple(c["etcd_tls"]) if c["etcd_tls"] else None,
                )
                for c in doc["clusters"]
            ],
            replicas=listeners("replicas"),
            edges=[EdgeListener(**x) for x in doc["edges"]],
            gitops=[SiteListener(**x) for x in doc["gitops"]],
            console=[SiteListener(**x) for x in doc["console"]],
            replication=[
                RegionReplicators(r["region"], [Listener(**x) for x in r["replicators"]])
                for r in doc["replication"]
            ],
            has_sync=bool(doc["has_sync"]),
        )


def resolve(state: StateDir) -> StatusTargets:
    """From the topology file and the port registry, through the model (the slow way)."""
    from haplane.topology import load_file
    from haplane.topology.model import GLOBAL_SCOPE

    from .gate_plans import plan_of

    topology = load_file(state.topology_file)
    plan: TopologyPlan = plan_of(topology, state)
    regions = [site.name for site, _ in topology.regions()]
    return StatusTargets(
        topology=topology.name,
        pki=str(plan.tls.root) if plan.tls is not None else None,
        clusters=[
            ClusterTargets(
                name=c.view.name,
                is_global=c.view.scope == GLOBAL_SCOPE,
                quota=c.view.settings.quota_backend_bytes,
                members={n: a.client_endpoint for n, a in c.addresses.items()},
                etcd_tls=(str(c.tls.ca), str(c.tls.cert), str(c.tls.key)) if c.tls else None,
            )
            for c in plan.clusters
        ],
        replicas=[Listener(r.qualified_name, r.url) for r in plan.replicas],
        edges=[
            EdgeListener(e.qualified_name, kind, e.url, e.admin_url)
            for kind, group in (("balancer", plan.balancers), ("gate", plan.gates))
            for e in group
        ],
        gitops=[SiteListener(g.qualified_name, g.site, g.url, g.server) for g in plan.gitops],
        console=[SiteListener(c.qualified_name, c.site, c.url, c.server) for c in plan.console],
        replication=[
            RegionReplicators(
                region,
                [Listener(r.qualified_name, r.url) for r in plan.replicators if r.region == region],
            )
            for region in regions
            if any(r.region == region for r in plan.replicators)
        ],
        has_sync=any(r.mode == "Sync" for r in topology.spec.global_.replication),
    )


def _digest(path: Path) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


# The code that resolves a plan, beside the two files: an upgraded haplane resolves again.
_RESOLVERS = ("local/status_plan.py", "local/gate_plans.py", "local/plans.py", "topology/model.py",
              "topology/loader.py", "local/security.py", "local/ports.py")  # fmt: skip


def _code() -> list[list[Any]]:
    base = Path(__file__).resolve().parent.parent
    out: list[list[Any]] = []
    for name in _RESOLVERS:
        try:
            st = (base / name).stat()
        except OSError:
            continue
        out.append([name, st.st_size, st.st_mtime_ns])
    return out


# the code this process runs (read once: a supervisor upgraded in place keeps running the old
# code, and must not cache what it resolves under the new code's key)
_CODE = _code()


def _key(state: StateDir) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "code": _CODE,
        "root": str(state.root),
        "topology": _digest(state.topology_file),
        "ports": _digest(state.ports_file),
    }


def targets(state: StateDir) -> StatusTargets:
    """The running topology's targets: from the cache when it is still true, else resolved
    (FileNotFoundError and the model's errors as `load_file` raises them) and cached. Every
    path in them is absolute (a status run from another directory reads the same cache)."""
    from .state_dir import StateDir

    state = StateDir(state.root.absolute())
    cache = state.root / CACHE_NAME
    key = _key(state)
    mine = _KNOWN.get(str(state.root))
    if mine is not None and mine[0] == key:
        # what this process resolved or read for the same files: a long-lived caller (the
        # supervisor gathers every few seconds) neither reads the file again nor, running older
        # code than the file's writer after an upgrade in place, writes it back and forth
        return mine[1]
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        doc = json.loads(cache.read_text())
        if doc["key"] == key:
            found = StatusTargets.from_dict(doc["targets"])
            _KNOWN[str(state.root)] = (key, found)
            return found
    found = resolve(state)
    if key["topology"] is not None and key == _key(state):  # unchanged while it was read
        _KNOWN[str(state.root)] = (key, found)
        # one temporary file per writer: two gathers of one process may write at once
        tmp = cache.with_name(f".{CACHE_NAME}.{os.getpid()}.{threading.get_ident()}")
        try:
            tmp.write_text(json.dumps({"key": key, "targets": found.as_dict()}))
            tmp.replace(cache)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return found


# the targets this process last resolved or read, by state dir: (key, targets)
_KNOWN: dict[str, tuple[dict[str, Any], StatusTargets]] = {}
