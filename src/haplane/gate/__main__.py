"""`python -m haplane.gate --config FILE.json`: one forwarding engine process (on uvloop).

Layer: gate. Reads the config file, opens the listeners and the admin listener it names, logs
JSON lines on stderr. SIGTERM or SIGINT: stop accepting, let connections finish for
`shutdown_grace` seconds, abort the rest, exit 0. Exit 2: invalid config (the message names the
field); exit 1: a listener could not be opened.

The config file (JSON; unknown keys are errors; defaults shown):

    {
      "name": "gate",                         # the "component" of every log line
      "listeners": [                          # at least one
        {"name": "l4-6443",                   # default "<mode>-<port>"; unique
         "host": "127.0.0.1", "port": 6443,   # port 0 = any free port
         "mode": "l4",                        # "l4" (TCP relay) or "l7" (HTTP/1.1 proxy)
         "reuse_port": false,                 # SO_REUSEPORT: several processes, one port
         "backlog": 1024}
      ],
      "pools": {                              # pool name -> pool
        "eu-west": {
          "upstreams": [                      # names unique within the pool
            {"name": "api-1", "host": "127.0.0.1", "port": 7001,
             "check_port": null}              # where the check goes; default: port
          ],
          "check": {"path": "/readyz", "interval": 0.2, "timeout": null,   # null = interval
                    "fall": 2, "rise": 2, "host_header": null}
        }
      },
      "active_pool": "eu-west",               # null: refuse every client until activated
      "admin": {"host": "127.0.0.1", "port": 9100,    # null: no admin listener
                "tls_cert": null, "tls_key": null,    # HTTPS only
                "client_ca": null,                    # then only health is anonymous
                "read_groups": ["system:masters", "system:monitoring"],  # /metrics, /status
                "write_groups": ["system:masters"]},  # POST /pool
      "timeouts": {"connect": 1.0, "client_header": 10.0, "client_idle": 60.0,
                   "response_header": 60.0, "response_idle": 60.0, "upstream_idle": 10.0,
                   "tcp_idle": null, "linger": 5.0},       # seconds; see settings.Timeouts
      "retries": 2,                           # L7: re-sends of an idempotent request
      "shutdown_grace": 10.0,
      "region": null,                         # a regional balancer: {"name": POOL, "etcd":
                                              #   [endpoints], "probe_interval": 0.5} adds
                                              #   /healthz/region on the admin listener
      "follow": null,                         # a gate: {"etcd": [global control endpoints],
                                              #   "prefix": "/haplane/global/"} activates the
                                              #   pool named by the active region
      "etcd_tls": null,                       # {"ca", "cert", "key"}: TLS towards every etcd
      "controller": null                      # a gate's failover controller: {"gate", "etcd",
                                              #   "vantage_points", "priority", "down_after",
                                              #   "region_etcd": {region: [endpoints]} (for
                                              #   the fence keys), ...}: see
                                              #   config.ControllerConfig
    }
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import uvloop

from haplane.auth.listener import ListenerAccess
from haplane.telemetry import json_logging

from .admin import AdminServer
from .api_recorder import ApiRecorder
from .config import ConfigError, GateConfig, load_config
from .controller import ControllerSettings, FailoverController
from .events import GateEvent, emit
from .failover import Settings
from .forwarder import Forwarder
from .metrics import FollowerCollector
from .roles import ActiveRegionFollower, RegionHealth


async def serve(config: GateConfig) -> int:
    forwarder = Forwarder(
        name=config.name, timeouts=config.timeouts.to_timeouts(), retries=config.retries
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.gather(
        *(
            forwarder.set_pool(
                name, [u.to_address() for u in pool.upstreams], pool.check.to_health_check()
            )
            for name, pool in config.pools.items()
        )
    )
    if config.active_pool is not None:
        forwarder.activate(config.active_pool, reason="config")
    etcd_tls = config.etcd_tls.to_tls() if config.etcd_tls is not None else None
    region = follower = None
    if config.region is not None:
        region = RegionHealth(
            forwarder,
            config.region.name,
            config.region.etcd,
            config.region.probe_interval,
            global_endpoints=config.region.global_etcd,
            unhealthy_grace=config.region.unhealthy_grace,
            tls=etcd_tls,
        )
        region.start()
    if config.follow is not None:
        follower = ActiveRegionFollower(
            forwarder, config.follow.etcd, config.follow.prefix.encode(), tls=etcd_tls
        )
        forwarder.metrics.registry.register(FollowerCollector(follower))
        follower.start()
    controller = None
    if config.controller is not None:
        c = config.controller
        controller = FailoverController(
            forwarder,
            ControllerSettings(
                gate=c.gate,
                site=c.site,
                vantage_sites=c.vantage_sites,
                etcd=c.etcd,
                prefix=c.prefix,
                decision=Settings(
                    vantage_points=tuple(c.vantage_points),
                    priority=tuple(c.priority),
                    down_after=c.down_after,
                    stale_after=c.stale_after,
                    min_interval=c.min_interval,
                    failback=c.failback,
                    failback_after=c.failback_after,
                    automatic=c.automatic,
                    pairs=tuple((p.regions[0], p.regions[1], p.max_lag) for p in c.pairs),
                    sync_pairs=tuple(
                        (p.regions[0], p.regions[1]) for p in c.pairs if p.mode == "Sync"
                    ),
                ),
                report_interval=c.report_interval,
                tick=c.tick,
                lease_ttl=c.lease_ttl,
                region_etcd=c.region_etcd,
                fence_interval=c.fence_interval,
                fence_timeout=c.fence_timeout,
                tls=etcd_tls,
                recorder=ApiRecorder(c.api.token_file, c.api.ca, c.api.regions)
                if c.api is not None
                else None,
            ),
        )
        controller.start()
    roles = [r for r in (region, follower, controller) if r is not None]
    admin: AdminServer | None = None
    try:
        for listener in config.listeners:
            await forwarder.start_listener(listener.to_spec())
        if config.admin is not None:
            admin = AdminServer(
                forwarder,
                config.admin.host,
                config.admin.port,
                region=region,
                follower=follower,
                controller=controller,
                access=ListenerAccess.of(
                    config.admin.tls_cert,
                    config.admin.tls_key,
                    config.admin.client_ca,
                    config.admin.read_groups,
                    config.admin.write_groups,
                ),
            )
            port = await admin.start()
            emit(
                GateEvent("listener_started", reason=f"admin {config.admin.host}:{port}"),
                config.name,
            )
    except OSError as exc:
        emit(GateEvent("stopped", level="error", reason=f"cannot listen: {exc}"), config.name)
        for role in roles:
            await role.stop()
        await forwarder.stop(grace=0)
        if admin is not None:
            await admin.stop()
        return 1
    emit(GateEvent("started", pool=config.active_pool), config.name)
    await stop.wait()
    for role in roles:
        await role.stop()
    await forwarder.stop(grace=config.shutdown_grace)
    if admin is not None:
        await admin.stop()
    return 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m haplane.gate", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, type=Path, help="the JSON config file")
    args = ap.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"haplane gate: config error: {exc}", file=sys.stderr)
        sys.exit(2)
    json_logging(config.name)
    sys.exit(uvloop.run(serve(config)))


if __name__ == "__main__":
    main()
