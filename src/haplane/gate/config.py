"""The gate process's JSON config: pydantic models, loading, and conversion to engine settings.

Layer: gate. Reads the one file it is given. Field names are the JSON keys (snake_case); the
schema is documented in `haplane.gate.__main__`. Every validation error names its field path,
e.g. `pools.eu-west.upstreams.0.port: Input should be less than or equal to 65535`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from haplane.store import EtcdTls

from .settings import HealthCheck, ListenerSpec, ListenerTls, Timeouts, UpstreamAddress

Port = int
_STRICT = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """The config file is unreadable or invalid; the message names the field."""


class UpstreamConfig(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1)
    host: str = Field(min_length=1)
    port: Port = Field(ge=1, le=65535)
    check_port: Port | None = Field(default=None, ge=1, le=65535)

    def to_address(self) -> UpstreamAddress:
        return UpstreamAddress(self.name, self.host, self.port, self.check_port)


class CheckConfig(BaseModel):
    model_config = _STRICT
    path: str = Field(default="/readyz", pattern=r"^/\S*$")
    interval: float = Field(default=0.2, gt=0)
    timeout: float | None = Field(default=None, gt=0)
    fall: int = Field(default=2, ge=1)
    rise: int = Field(default=2, ge=1)
    host_header: str | None = None
    tls_ca: str | None = None  # check over HTTPS, verifying the upstream against this CA
    tls_cert: str | None = None
    tls_key: str | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> CheckConfig:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_cert and not self.tls_ca:
            raise ValueError("a client certificate (tls_cert) needs tls_ca: checks are HTTPS")
        return self

    def to_health_check(self) -> HealthCheck:
        return HealthCheck(
            self.path,
            self.interval,
            self.timeout,
            self.fall,
            self.rise,
            self.host_header,
            self.tls_ca,
            self.tls_cert,
            self.tls_key,
        )


class PoolConfig(BaseModel):
    model_config = _STRICT
    upstreams: list[UpstreamConfig]
    check: CheckConfig = CheckConfig()

    @field_validator("upstreams")
    @classmethod
    def _unique_names(cls, value: list[UpstreamConfig]) -> list[UpstreamConfig]:
        names = [u.name for u in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"upstream names must be unique in a pool; repeated: {dupes}")
        return value


class ListenerTlsConfig(BaseModel):
    """TLS termination of an L7 listener (see `settings.ListenerTls`)."""

    model_config = _STRICT
    cert: str = Field(min_length=1)
    key: str = Field(min_length=1)
    client_ca: str = Field(min_length=1)
    upstream_ca: str = Field(min_length=1)
    upstream_cert: str = Field(min_length=1)
    upstream_key: str = Field(min_length=1)


class ListenerConfig(BaseModel):
    model_config = _STRICT
    name: str | None = None
    host: str = "127.0.0.1"
    port: Port = Field(ge=0, le=65535)
    mode: Literal["l4", "l7"] = "l4"
    reuse_port: bool = False
    backlog: int = Field(default=1024, ge=1)
    tls: ListenerTlsConfig | None = None

    @model_validator(mode="after")
    def _tls_is_l7(self) -> ListenerConfig:
        if self.tls is not None and self.mode != "l7":
            raise ValueError(
                "tls: only an l7 listener terminates TLS (l4 relays the client's own session)"
            )
        return self

    def to_spec(self) -> ListenerSpec:
        name = self.name or f"{self.mode}-{self.port}"
        tls = ListenerTls(**self.tls.model_dump()) if self.tls is not None else None
        return ListenerSpec(
            name, self.host, self.port, self.mode, self.reuse_port, self.backlog, tls
        )


class AdminConfig(BaseModel):
    """The admin listener. With `tls_cert`, it serves HTTPS only; with `client_ca` too, only
    the health endpoints (/livez, /readyz, /healthz/region) answer without a client
    certificate: /metrics and /status want one verified against `client_ca` whose subject
    holds one of `read_groups` (O), POST /pool one of `write_groups`."""

    model_config = _STRICT
    host: str = "127.0.0.1"
    port: Port = Field(ge=0, le=65535)
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    read_groups: list[str] = Field(default_factory=lambda: ["system:masters", "system:monitoring"])
    write_groups: list[str] = Field(default_factory=lambda: ["system:masters"])

    @model_validator(mode="after")
    def _tls(self) -> AdminConfig:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.client_ca and not self.tls_cert:
            raise ValueError("client_ca needs TLS (tls_cert and tls_key)")
        return self


class EtcdTlsConfig(BaseModel):
    """Client TLS towards every etcd this process opens (region probes, the global control
    etcd, the fence keys): the CA of the members, and this process's certificate."""

    model_config = _STRICT
    ca: str = Field(min_length=1)
    cert: str = Field(min_length=1)
    key: str = Field(min_length=1)

    def to_tls(self) -> EtcdTls:
        return EtcdTls(Path(self.ca), Path(self.cert), Path(self.key))


class TimeoutsConfig(BaseModel):
    model_config = _STRICT
    connect: float = Field(default=1.0, gt=0)
    client_header: float = Field(default=10.0, gt=0)
    client_idle: float = Field(default=60.0, gt=0)
    response_header: float = Field(default=60.0, gt=0)
    response_idle: float = Field(default=60.0, gt=0)
    upstream_idle: float = Field(default=10.0, gt=0)
    tcp_idle: float | None = Field(default=None, gt=0)
    linger: float = Field(default=5.0, gt=0)

    def to_timeouts(self) -> Timeouts:
        return Timeouts(**self.model_dump())


class RegionConfig(BaseModel):
    """A regional balancer: its region's pool and etcd, for `/healthz/region`."""

    model_config = _STRICT
    name: str = Field(min_length=1)
    etcd: list[str] = Field(min_length=1)
    # the global control etcd: a region that cannot read it cannot hold a write grant, so it
    # is reported unhealthy (and a failover away from it, or to it, is decided accordingly)
    global_etcd: list[str] = Field(default_factory=list)
    probe_interval: float = Field(default=0.5, gt=0)
    # how long a region that was healthy is still reported healthy while unhealthy (an etcd
    # leader election must not look like a dead region to the failover controller)
    unhealthy_grace: float = Field(default=0.0, ge=0)


class FollowConfig(BaseModel):
    """A gate instance: activate the pool named by the active region in the global etcd."""

    model_config = _STRICT
    etcd: list[str] = Field(min_length=1)
    prefix: str = "/haplane/global/"


class PairConfig(BaseModel):
    """Two regions that replicate each other; `max_lag`: seconds (None: no limit); `mode`:
    `Sync` when acknowledgements wait for the standby (only the synchronous one is promoted)."""

    model_config = _STRICT
    regions: list[str] = Field(min_length=2, max_length=2)
    max_lag: float | None = Field(default=None, gt=0)
    mode: Literal["Async", "Sync"] = "Async"


class RecorderConfig(BaseModel):
    """How the failover controller records automatic switches through the API: its
    ServiceAccount token's file, the CA the balancers' certificates chain to (None: plain
    HTTP), and each region's balancer URLs."""

    model_config = _STRICT
    token_file: str = Field(min_length=1)
    ca: str | None = None
    regions: dict[str, list[str]] = Field(min_length=1)


class ControllerConfig(BaseModel):
    """A gate instance's failover controller (haplane.gate.controller): it reports this gate's
    view of every region and, when it leads, fails over by `haplane.gate.failover.decide`."""

    model_config = _STRICT
    gate: str = Field(min_length=1)
    site: str | None = None
    vantage_sites: dict[str, str] = Field(default_factory=dict)  # gate -> its site
    etcd: list[str] = Field(min_length=1)
    prefix: str = "/haplane/global/"
    vantage_points: list[str] = Field(min_length=1)
    priority: list[str] = Field(min_length=1)
    automatic: bool = True
    down_after: float = Field(default=0.6, ge=0)
    stale_after: float = Field(default=1.0, gt=0)
    min_interval: float = Field(default=10.0, ge=0)
    failback: bool = False
    failback_after: float = Field(default=60.0, ge=0)
    report_interval: float = Field(default=0.2, gt=0)
    tick: float = Field(default=0.1, gt=0)
    lease_ttl: int = Field(default=1, ge=1)
    # every region's etcd client endpoints, for the fence key `/haplane/fence` in each: API
    # replicas under a global control etcd compare it in every write, so a controller that
    # could not set it would leave a promoted region unwritable (every region in `priority`)
    region_etcd: dict[str, list[str]] = Field(min_length=1)
    fence_interval: float = Field(default=0.5, gt=0)
    fence_timeout: float = Field(default=0.5, gt=0)
    # replication pairs (either way): which standby may be promoted, and planned failbacks
    pairs: list[PairConfig] = Field(default_factory=list)
    api: RecorderConfig | None = None  # None: automatic switches recorded in etcd directly

    @field_validator("vantage_points")
    @classmethod
    def _gate_is_a_vantage_point(cls, value: list[str], info: ValidationInfo) -> list[str]:
        gate = info.data.get("gate")
        if gate is not None and gate not in value:
            raise ValueError(f"the gate {gate!r} must be one of the vantage points")
        return value

    @field_validator("region_etcd")
    @classmethod
    def _every_region_has_its_etcd(
        cls, value: dict[str, list[str]], info: ValidationInfo
    ) -> dict[str, list[str]]:
        priority = info.data.get("priority")
        if priority is None:
            return value
        missing = [r for r in priority if not value.get(r)]
        unknown = sorted(set(value) - set(priority))
        if missing or unknown:
            raise ValueError(
                "one entry with endpoints for every region in priority; "
                f"missing: {missing or '-'}, not a region: {unknown or '-'}"
            )
        return value


class GateConfig(BaseModel):
    model_config = _STRICT
    name: str = "gate"
    listeners: list[ListenerConfig] = Field(min_length=1)
    pools: dict[str, PoolConfig]
    active_pool: str | None = None
    admin: AdminConfig | None = None
    timeouts: TimeoutsConfig = TimeoutsConfig()
    retries: int = Field(default=2, ge=0)
    shutdown_grace: float = Field(default=10.0, ge=0)
    region: RegionConfig | None = None
    follow: FollowConfig | None = None
    controller: ControllerConfig | None = None
    etcd_tls: EtcdTlsConfig | None = None

    @field_validator("region")
    @classmethod
    def _region_is_a_pool(cls, value: RegionConfig | None, info: ValidationInfo) -> Any:
        pools = info.data.get("pools")
        if value is not None and pools is not None and value.name not in pools:
            raise ValueError(f"name: no pool named {value.name!r} holds this region's replicas")
        return value

    @field_validator("active_pool")
    @classmethod
    def _known_pool(cls, value: str | None, info: ValidationInfo) -> str | None:
        pools = info.data.get("pools")
        if value is not None and pools is not None and value not in pools:
            raise ValueError(f"no pool named {value!r} (pools: {', '.join(sorted(pools)) or '-'})")
        return value

    @field_validator("listeners")
    @classmethod
    def _unique_listener_names(cls, value: list[ListenerConfig]) -> list[ListenerConfig]:
        names = [lst.to_spec().name for lst in value]
        if len(set(names)) != len(names):
            raise ValueError(f"listener names must be unique: {names}")
        return value


class PoolUpdate(BaseModel):
    """Body of the admin API's POST /pool: replace a pool's upstreams and/or activate it."""

    model_config = _STRICT
    pool: str = Field(min_length=1)
    upstreams: list[UpstreamConfig] | None = None
    check: CheckConfig | None = None
    activate: bool = False


def describe_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)


def parse_config(data: Any) -> GateConfig:
    try:
        return GateConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from exc


def load_config(path: Path) -> GateConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    return parse_config(data)
