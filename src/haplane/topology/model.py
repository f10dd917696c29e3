"""The topology file as a typed model.

Layer: model (the lowest). Pure data: no I/O, no processes, no network. Everything haplane runs or
reasons about is derived from one `Topology`.

Shape (Kubernetes-style, camelCase, unknown fields refused)::

    apiVersion: haplane.dev/v1alpha1
    kind: Topology
    metadata: {name: two-regions}
    spec:
      defaults: {host: 127.0.0.1, etcd: {...}}
      sites:                      # regions and witness sites; a site without `region` is a witness
        - name: eu-west
          zones: [a, b, c]
          region: {etcd: {members: [...]}, apiServers: [...], balancers: [...]}
      global:
        controlEtcd: {members: [{name, site, zone?}]}
        gates: [{name, site}]
        gitops: [{name, site}]    # GitOps controller instances; one leads
        console: {instances: [{name, site}]}   # the web console, each instance on its own port
        failover: {mode: ActivePassive, priority: [eu-west, eu-central]}
        replication: [{from: eu-west, to: eu-central}]

Schema checks (types, unknown fields, ranges) live here; cross-field HA rules live in `rules.py`
so that a schema-valid file with HA errors can still be analysed and drawn.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

API_VERSION = "haplane.dev/v1alpha1"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_QUOTA_BYTES = 2 * 1024**3  # etcd's own default backend quota
GLOBAL_SCOPE = "global"  # the scope of components that belong to no region

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Name = Annotated[str, Field(pattern=_DNS_LABEL, max_length=63)]
Port = Annotated[int, Field(ge=1, le=65535)]
_DURATION = re.compile(r"^(\d+)(s|m|h)$")


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class EtcdSettings(_Model):
    """Tuning of one etcd cluster. Unset fields fall back to `spec.defaults.etcd`, then etcd's."""

    heartbeat_interval_ms: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Raft heartbeat interval (etcd --heartbeat-interval). Default 100."
    )
    election_timeout_ms: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="Raft election timeout (etcd --election-timeout); etcd requires at least "
        "5 x the heartbeat interval and at most 50000. Default 1000.",
    )
    auto_compaction_retention: Annotated[str, Field(pattern=_DURATION.pattern)] | None = Field(
        None,
        description="Periodic auto-compaction window, e.g. 5m or 1h (bounds history: older "
        "resourceVersions become 410 Expired). Default 5m.",
    )
    quota_backend_bytes: Annotated[int, Field(ge=1024**2)] | None = Field(
        None, description="Backend size quota; beyond it etcd raises NOSPACE. Default 2 GiB."
    )
    unsafe_no_fsync: bool | None = Field(
        None, description="Skip fsync (tests and demos only: a host crash can lose data)."
    )


@dataclass(frozen=True)
class ResolvedEtcdSettings:
    heartbeat_interval_ms: int
    election_timeout_ms: int
    auto_compaction_retention: str
    quota_backend_bytes: int
    unsafe_no_fsync: bool


class Placement(_Model):
    """Where a process runs: `host` defaults to `spec.defaults.host`."""

    host: str | None = None


class EtcdMember(Placement):
    name: Name
    zone: Name = Field(description="Zone of the member's site (its failure domain).")
    client_port: Port | None = None
    peer_port: Port | None = None


class ControlEtcdMember(Placement):
    name: Name
    site: Name = Field(description="Site holding this member of the global control etcd.")
    zone: Name | None = Field(None, description="Zone within the site; default its first zone.")
    client_port: Port | None = None
    peer_port: Port | None = None


class RegionalEtcd(EtcdSettings):
    members: list[EtcdMember] = Field(min_length=1)


class ControlEtcd(EtcdSettings):
    members: list[ControlEtcdMember] = Field(min_length=1)


class ApiServer(Placement):
    name: Name
    zone: Name
    port: Port | None = None


class Balancer(Placement):
    name: Name
    zone: Name
    port: Port | None = None


class Replicator(Placement):
    name: Name
    zone: Name
    port: Port | None = Field(None, description="Its /healthz, /metrics and /status listener.")


class Region(_Model):
    etcd: RegionalEtcd
    api_servers: list[ApiServer] = Field(default_factory=list)
    balancers: list[Balancer] = Field(default_factory=list)
    replicators: list[Replicator] = Field(
        default_factory=list,
        description="Replicators run in this region and copy the active region's data into it "
        "while it is a standby; one leads through a lease in this region's etcd.",
    )


class Site(_Model):
    name: Name
    zones: list[Name] = Field(min_length=1, description="Failure domains within the site.")
    host: str | None = Field(
        None,
        description="Default host of the components on this site (its own address, e.g. when "
        "drills place each site in a network namespace); default `spec.defaults.host`.",
    )
    region: Region | None = Field(
        None, description="The site's regional control plane; a site without one is a witness."
    )


class Gate(Placement):
    name: Name
    site: Name = Field(description="Site of this gate instance; it is also a health vantage point.")
    port: Port | None = Field(
        None, description="Gate instances on one host share one port (SO_REUSEPORT)."
    )
    mode: Literal["l4", "l7"] = Field(
        "l4",
        description="l4: relay each client connection (its TLS session runs end to end to a "
        "replica); l7: terminate TLS here, route and retry per request, re-encrypt to the "
        "regions and pass the client's identity on with the front-proxy certificate.",
    )


class GitopsController(Placement):
    """One instance of the GitOps controller (`python -m haplane.gitops`): a client of the
    platform through the gate, as its own ServiceAccount; one instance leads through a Lease."""

    name: Name
    site: Name = Field(
        description="Site of this instance; it dials the gate instance of its own site (else "
        "the first gate)."
    )
    port: Port | None = Field(
        None, description="Its listener: git push webhooks, /readyz and /metrics."
    )


class ConsoleInstance(Placement):
    """One instance of the web console (`python -m haplane.console`): HTTPS on its own port
    (the gates forward the Kubernetes API only); every instance serves the whole platform."""

    name: Name
    site: Name = Field(
        description="Site of this instance; it reaches the API through the gate of its own "
        "site (else the first gate)."
    )
    port: Port | None = Field(None, description="Its HTTPS listener (pages, /livez, /readyz).")


class Console(_Model):
    """The web console: a live topology map, failover history, Events and audit, for the
    platform's own identities (a bearer token), authorized by the API's RBAC."""

    instances: list[ConsoleInstance] = Field(
        default_factory=list,
        description="Console instances; two or more on different sites survive a site failure.",
    )


class Failover(_Model):
    mode: Literal["ActivePassive"] = "ActivePassive"
    priority: list[Name] | None = Field(
        None,
        description="Regions in order of preference; default: the order of sites in the file.",
    )
    automatic: bool = Field(
        True, description="Whether the failover controller beside the gates switches regions."
    )
    down_after_ms: int = Field(
        600,
        ge=0,
        le=600_000,
        description="A region is down only when a majority of all gate instances have seen it "
        "down for this long (shorter blips never fail over).",
    )
    grant_ms: int = Field(
        1000,
        ge=100,
        le=60_000,
        description="T: each successful read of the global state grants the active region's API "
        "replicas write permission for T minus the safety margin.",
    )
    safety_margin_ms: int = Field(
        250,
        ge=10,
        le=60_000,
        description="Taken off T by replicas and added to T before a new region is unfenced "
        "(covers clock-rate drift and the last write's commit).",
    )
    min_interval_ms: int = Field(
        10_000,
        ge=0,
        description="Hysteresis: no automatic failover sooner than this after the last change.",
    )
    failback: bool = Field(
        False,
        description="Switch back to the preferred region once it has been healthy for "
        "`failbackAfterMs` (a planned, fenced switchover). Off by default.",
    )
    failback_after_ms: int = Field(
        60_000, ge=0, description="How long the preferred region must be stable before failback."
    )


class Replication(_Model):
    """A replication pair: the two regions copy each other, in whichever direction the active
    region makes it (`from` is only the first source)."""

    from_: Name = Field(alias="from")
    to: Name
    mode: Literal["Async", "Sync"] = Field(
        "Async",
        description="Async: a write is acknowledged once its own region's etcd committed it. "
        "Sync: only once the standby's replicator applied it too (or `sync: none` is "
        "recorded, see `strict`); only the synchronous standby is promoted.",
    )
    sync_timeout_ms: int = Field(
        500,
        ge=1,
        description="Sync: how long an acknowledgement waits for the synchronous standby "
        "before degrading to `sync: none` (or, strict, answering 504).",
    )
    strict: bool = Field(
        False,
        description="Sync: never acknowledge a write no standby confirmed; writes get 504 "
        "while no standby is synchronous (with two regions: while the other is down).",
    )
    max_lag_ms: int | None = Field(
        None,
        ge=1,
        description="A standby whose lag, last measured while its source still answered, "
        "exceeded this is not chosen by automatic failover.",
    )


def duration_seconds(text: str) -> int:
    """`30s`, `5m`, `1h` in seconds."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h)")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


class _Periodic(_Model):
    """Something done every `every` (a duration, at least 5 s)."""

    every: str

    @field_validator("every")
    @classmethod
    def _at_least_5s(cls, v: str) -> str:
        if duration_seconds(v) < 5:
            raise ValueError("at most every 5s (each run costs the platform work)")
        return v

    @property
    def every_seconds(self) -> int:
        return duration_seconds(self.every)


class SnapshotSchedule(_Periodic):
    """Physical snapshots of every etcd cluster (each region's and the global control etcd)
    taken by the supervisor on a schedule into STATE/snapshots, then pruned."""

    enabled: bool = Field(True, description="Take snapshots on the schedule.")
    every: Annotated[str, Field(pattern=_DURATION.pattern)] = Field(
        "1h", description="How often each cluster is snapshotted, e.g. 30m, 1h, 6h (at least 5s)."
    )
    keep_hourly: int = Field(
        24, ge=0, le=10_000, description="Keep the newest snapshot of each of this many hours."
    )
    keep_daily: int = Field(
        7, ge=0, le=10_000, description="Keep the newest snapshot of each of this many days."
    )


class LogicalSchedule(_Periodic):
    """Logical backups (`haplane backup create`) of the whole platform taken by the
    supervisor through the API as haplane-admin into STATE/backups/logical, named
    `scheduled-<UTC time>`; the oldest beyond `keep` are deleted."""

    enabled: bool = Field(True, description="Take logical backups on the schedule.")
    every: Annotated[str, Field(pattern=_DURATION.pattern)] = Field(
        "1h", description="How often, e.g. 30m, 1h (at least 5s)."
    )
    keep: int = Field(24, ge=1, le=10_000, description="How many scheduled backups to keep.")


DrillScenario = Literal[
    "replica-kill",
    "etcd-leader-kill",
    "region-kill",
    "balancers-pause",
    "blip",
    "switchover",
    "replicator-kill",
    "restore",
]


DEFAULT_DRILLS: tuple[DrillScenario, ...] = (
    "replica-kill",
    "etcd-leader-kill",
    "switchover",
    "restore",
)


class DrillSchedule(_Periodic):
    """DR drills run by the supervisor (`haplane drill SCENARIO --direct`), one scenario
    after the other, never while the platform is unhealthy or another operation runs. Off by
    default: a drill injects real faults."""

    enabled: bool = Field(False, description="Run drills on the schedule.")
    every: Annotated[str, Field(pattern=_DURATION.pattern)] = Field(
        "24h", description="How often a drill runs (the next scenario each time), at least 5s."
    )
    scenarios: list[DrillScenario] = Field(
        default_factory=lambda: list(DEFAULT_DRILLS),
        min_length=1,
        description="In turn. The defaults fail nothing over (a planned switchover moves "
        "the active region, and its next run moves it back); scenarios that need `--netns` "
        "are not offered.",
    )


class Backups(_Model):
    snapshots: SnapshotSchedule = Field(default_factory=SnapshotSchedule)
    logical: LogicalSchedule = Field(default_factory=LogicalSchedule)


class RunbookTriggers(_Periodic):
    """Runbooks fired by the events their triggers declare (region-down, quorum-lost,
    snapshot-failed, replication-lag-over), watched by the supervisor: one without actions (a
    diagnosis) runs at once, journaled; one with actions is only proposed (the command, in
    the log and an Event): an event never changes the platform by itself."""

    enabled: bool = Field(True, description="Watch for the events runbooks declare.")
    every: Annotated[str, Field(pattern=_DURATION.pattern)] = Field(
        "10s", description="How often the status is looked at (an event must hold on two looks)."
    )


class Global(_Model):
    control_etcd: ControlEtcd
    gates: list[Gate] = Field(min_length=1)
    gitops: list[GitopsController] = Field(
        default_factory=list,
        description="GitOps controller instances: they apply GitSources and Syncs to the "
        "platform through the gate; one leads through a Lease, the others stand by. Two or "
        "more, on different sites, survive a site failure.",
    )
    console: Console = Field(
        default_factory=Console,
        description="The web console's instances (none by default).",
    )
    failover: Failover = Field(default_factory=Failover)
    replication: list[Replication] = Field(default_factory=list)
    backups: Backups = Field(
        default_factory=Backups,
        description="Snapshots of every etcd cluster on a schedule, with retention.",
    )
    drills: DrillSchedule = Field(
        default_factory=DrillSchedule, description="DR drills on a schedule (off by default)."
    )
    runbook_triggers: RunbookTriggers = Field(
        default_factory=RunbookTriggers,
        description="Runbooks fired by the events they declare (on by default).",
    )


class Defaults(_Model):
    host: str = DEFAULT_HOST
    etcd: EtcdSettings = Field(default_factory=EtcdSettings)


class CertificateAuthority(_Model):
    """A CA the user supplies (PEM files); without one, `haplane up` creates the topology's."""

    cert_file: str = Field(description="The CA certificate (PEM).")
    key_file: str = Field(description="Its private key (PEM, mode 0600).")


class Audit(_Model):
    policy_file: str | None = Field(
        None,
        description="An audit.k8s.io/v1 Policy; default: haplane's (Secrets and tokens at "
        "Metadata, RBAC objects at RequestResponse, health endpoints not logged).",
    )
    max_size_mb: int = Field(100, ge=1, description="Rotate each replica's log at this size.")
    max_backups: int = Field(5, ge=0, description="Rotated logs kept (0: all).")
    mode: Literal["blocking", "batch"] = Field(
        "blocking",
        description="kube-apiserver's --audit-log-mode. blocking: each event written as its "
        "request goes (a crash loses none). batch: buffered and written by a thread of the "
        "replica every batchMaxWaitMs (the event loop never waits on the disk; no CPU saved; "
        "a crash of the replica loses what was buffered, normally that much).",
    )
    batch_max_wait_ms: int = Field(
        200, ge=10, le=60_000, description="batch mode: the longest an event waits to be written."
    )


class Encryption(_Model):
    """Encryption at rest of what the API replicas store (Kubernetes' EncryptionConfiguration)."""

    enabled: bool = Field(
        True,
        description="Secrets stored encrypted under a local key-encryption key that `up` "
        "creates (STATE/encryption/kek.key, mode 0600). false: stored as they are (values "
        "encrypted before stay readable while the key is there).",
    )
    config_file: str | None = Field(
        None,
        description="Your own EncryptionConfiguration (apiserver.config.k8s.io/v1), used as "
        "given instead of the default; every region reads the same file.",
    )


class Security(_Model):
    """Identity and access. On by default: TLS on every link, authentication, RBAC, audit."""

    insecure: bool = Field(
        False,
        description="Plain HTTP on every link, no authentication, every request allowed. For "
        "throwaway experiments only; `validate` warns.",
    )
    ca: CertificateAuthority | None = None
    certificate_days: int = Field(
        365, ge=1, le=3650, description="Lifetime of the leaf certificates `up` issues."
    )
    cert_sans: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list,
        alias="certSANs",
        description="More names and addresses clients reach the API by (a virtual IP, a DNS "
        "name in front of the gates), as kubeadm's apiServer.certSANs: added to the API "
        "replicas' and gates' serving certificates, beside every component address. DNS "
        "names (`*.` allowed first) or IP addresses; `validate` checks them.",
    )
    audit: Audit = Field(default_factory=Audit)
    encryption: Encryption = Field(default_factory=Encryption)


class Spec(_Model):
    defaults: Defaults = Field(default_factory=Defaults)
    security: Security = Field(default_factory=Security)
    sites: list[Site] = Field(min_length=1)
    global_: Global = Field(alias="global")


class Metadata(_Model):
    name: Name


class Topology(_Model):
    api_version: Literal["haplane.dev/v1alpha1"]
    kind: Literal["Topology"]
    metadata: Metadata
    spec: Spec

    # ---- derived views (pure) -------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.metadata.name

    def site(self, name: str) -> Site | None:
        return next((s for s in self.spec.sites if s.name == name), None)

    def regions(self) -> list[tuple[Site, Region]]:
        return [(s, s.region) for s in self.spec.sites if s.region is not None]

    def region_priority(self) -> list[str]:
        explicit = self.spec.global_.failover.priority
        return list(explicit) if explicit else [s.name for s, _ in self.regions()]

    def etcd_settings(self, cluster: EtcdSettings) -> ResolvedEtcdSettings:
        d = self.spec.defaults.etcd

        def pick(field: str, fallback: object) -> object:
            own = getattr(cluster, field)
            if own is not None:
                return own
            default = getattr(d, field)
            return default if default is not None else fallback

        return ResolvedEtcdSettings(
            heartbeat_interval_ms=int(str(pick("heartbeat_interval_ms", 100))),
            election_timeout_ms=int(str(pick("election_timeout_ms", 1000))),
            auto_compaction_retention=str(pick("auto_compaction_retention", "5m")),
            quota_backend_bytes=int(str(pick("quota_backend_bytes", DEFAULT_QUOTA_BYTES))),
            unsafe_no_fsync=bool(pick("unsafe_no_fsync", False)),
        )

    def host_of(self, placed: Placement, site: str | None = None) -> str:
        """The component's own host, else its site's (`site`, or the component's `site` field
        for control etcd members, gates, GitOps controllers and consoles), else
        `spec.defaults.host`."""
        if placed.host:
            return placed.host
        site_obj = self.site(site or getattr(placed, "site", None) or "")
        if site_obj is not None and site_obj.host:
            return site_obj.host
        return self.spec.defaults.host

    def etcd_clusters(self) -> Iterator[EtcdClusterView]:
        """Every etcd cluster: one per region, then the global control etcd."""
        for site, region in self.regions():
            yield EtcdClusterView(
                scope=site.name,
                settings=self.etcd_settings(region.etcd),
                members=[
                    EtcdMemberView(
                        scope=site.name,
                        name=m.name,
                        site=site.name,
                        zone=m.zone,
                        host=self.host_of(m, site.name),
                        client_port=m.client_port,
                        peer_port=m.peer_port,
                    )
                    for m in region.etcd.members
                ],
            )
        control = self.spec.global_.control_etcd
        members = []
        for m in control.members:
            site_obj = self.site(m.site)
            zone = m.zone or (site_obj.zones[0] if site_obj else "")
            members.append(
                EtcdMemberView(
                    scope=GLOBAL_SCOPE,
                    name=m.name,
                    site=m.site,
                    zone=zone,
                    host=self.host_of(m),
                    client_port=m.client_port,
                    peer_port=m.peer_port,
                )
            )
        yield EtcdClusterView(
            scope=GLOBAL_SCOPE, settings=self.etcd_settings(control), members=members
        )


@dataclass(frozen=True)
class EtcdMemberView:
    """A member with its placement resolved; `qualified_name` is how every tool names it."""

    scope: str  # region name, or "global"
    name: str
    site: str
    zone: str
    host: str
    client_port: int | None
    peer_port: int | None

    @property
    def qualified_name(self) -> str:
        return f"{self.scope}/{self.name}"


@dataclass(frozen=True)
class EtcdClusterView:
    scope: str
    settings: ResolvedEtcdSettings
    members: list[EtcdMemberView]

    @property
    def name(self) -> str:
        return f"{self.scope}/etcd"
