"""`python -m haplane.replication`: one replicator process of a region.

Layer: replication. Serves `/healthz`, `/readyz`, `/metrics` (Prometheus text) and `/status`
(JSON) on `--listen`; SIGTERM or SIGINT hands leadership over at once (the lease is revoked)
and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from haplane.auth.listener import ListenerAccess
from haplane.store import DEFAULT_GLOBAL_PREFIX, EtcdClient, EtcdTls, GlobalState
from haplane.telemetry import MetricDef, json_logging
from haplane.telemetry import Replicator as M

from .rejoin import Rejoin
from .replicator import Replicator

PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz"})


def _endpoints(text: str) -> list[str]:
    return [e.strip() for e in text.split(",") if e.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="haplane-replicator")
    ap.add_argument("--region", required=True, help="the region this replicator writes into")
    ap.add_argument("--name", required=True, help="this replicator's name in the region")
    ap.add_argument("--listen", required=True, help="host:port of /healthz, /metrics, /status")
    ap.add_argument("--etcd", required=True, help="this region's etcd members, host:port,...")
    ap.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="REGION=HOST:PORT,...",
        help="a region it may copy from and its etcd members (repeat per region)",
    )
    ap.add_argument("--global-etcd", default="", help="the global control etcd (reports)")
    ap.add_argument("--global-prefix", default=DEFAULT_GLOBAL_PREFIX.decode())
    ap.add_argument("--lease-ttl", type=int, default=2, help="leader lease TTL, seconds")
    tls = ap.add_argument_group("TLS")
    tls.add_argument("--etcd-cafile", default=None, help="the etcd members' CA (every etcd)")
    tls.add_argument("--etcd-certfile", default=None, help="this replicator's etcd client cert")
    tls.add_argument("--etcd-keyfile", default=None)
    tls.add_argument("--tls-cert-file", default=None, help="serve --listen over HTTPS")
    tls.add_argument("--tls-private-key-file", default=None)
    tls.add_argument(
        "--client-ca-file",
        default=None,
        help="/metrics and /status then want a client certificate from this CA "
        "(system:masters or system:monitoring); health stays anonymous",
    )
    ap.add_argument(
        "--divergence-dir",
        default=None,
        help="where a returning region's writes after the cut are saved before it is re-seeded",
    )
    args = ap.parse_args(argv)
    sources: dict[str, list[str]] = {}
    for item in args.source:
        region, sep, eps = item.partition("=")
        if not sep or not region or not _endpoints(eps):
            ap.error(f"--source {item!r}: expected REGION=HOST:PORT[,HOST:PORT...]")
        sources[region] = _endpoints(eps)
    args.sources = sources
    try:
        args.etcd_tls = EtcdTls.from_flags(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile)
    except ValueError as exc:
        ap.error(str(exc))
    if bool(args.tls_cert_file) != bool(args.tls_private_key_file):
        ap.error("--tls-cert-file and --tls-private-key-file go together")
    if args.client_ca_file and not args.tls_cert_file:
        ap.error("--client-ca-file needs TLS (--tls-cert-file)")
    return args


class _Collector(Collector):
    def __init__(self, rep: Replicator):
        self.rep = rep

    def collect(self) -> Iterator[Metric]:
        s, val = self.rep.status, [self.rep.region]

        def metric(d: MetricDef, value: float | None) -> Metric:
            family = d.family()
            if value is not None:
                family.add_metric(val, value)
            return family

        yield metric(M.leader, s.leading)
        state = M.state.family()
        for name in ("Streaming", "Resyncing", "Disconnected", "Idle", "Following", "Starting"):
            state.add_metric([self.rep.region, name], 1.0 if s.state == name else 0.0)
        yield state
        yield metric(M.applied, s.applied_revision)
        yield metric(M.source, s.source_revision)
        yield metric(M.lag_seconds, s.lag_seconds())
        lag_revs = s.lag_revisions()
        yield metric(M.lag_revisions, float(lag_revs) if lag_revs is not None else None)
        yield metric(M.txns, s.txns)
        yield metric(M.revisions, s.revisions)
        yield metric(M.resyncs, s.resyncs)
        yield metric(M.errors, s.errors)


async def serve(args: argparse.Namespace) -> None:
    tls = args.etcd_tls
    target = EtcdClient(_endpoints(args.etcd), timeout=1.0, tls=tls)
    sources = {
        region: EtcdClient(eps, timeout=1.0, tls=tls)
        for region, eps in args.sources.items()
        if region != args.region
    }
    control_client = (
        EtcdClient(_endpoints(args.global_etcd), timeout=0.5, tls=tls) if args.global_etcd else None
    )
    control = GlobalState(control_client, args.global_prefix.encode()) if control_client else None
    identity = f"{args.region}/{args.name}"
    rejoin = Rejoin(Path(args.divergence_dir) if args.divergence_dir else None)
    rep = Replicator(args.region, target, sources, identity=identity, control=control,
                     lease_ttl=args.lease_ttl, on_frozen=rejoin)  # fmt: skip
    registry = CollectorRegistry()
    registry.register(_Collector(rep))
    started = time.time()

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        ok = rep.status.state != "Starting"
        return web.Response(status=200 if ok else 503, text="ok" if ok else rep.status.state)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    async def status(_: web.Request) -> web.Response:
        s = rep.status
        body: dict[str, Any] = {
            "identity": identity,
            "leading": s.leading,
            "startedAt": started,
            "detail": s.detail,
            **rep.report().as_dict(),
            "lastDivergence": rejoin.last,
            "counters": {
                "txns": s.txns,
                "revisions": s.revisions,
                "resyncs": s.resyncs,
                "errors": s.errors,
            },
        }
        return web.json_response(body)

    access = ListenerAccess.of(args.tls_cert_file, args.tls_private_key_file, args.client_ca_file)

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        refused = access.refusal(request, PUBLIC_PATHS) if access is not None else None
        if refused is not None:
            return web.Response(status=refused[0], text=refused[1] + "\n")
        return await handler(request)

    app = web.Application(middlewares=[guard])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = args.listen.rpartition(":")
    context = access.context() if access is not None else None
    if access is not None:
        access.expiry_gauge(registry)
    await web.TCPSite(runner, host, int(port), reuse_address=True, ssl_context=context).start()

    async def reload_certificate() -> None:  # `haplane pki rotate`: the next handshake serves it
        while access is not None:
            await asyncio.sleep(1.0)
            access.reload_if_changed()

    reloader = asyncio.create_task(reload_certificate(), name="certificate reload")
    logging.getLogger("haplane.replication").info(
        json.dumps({"msg": "serving", "component": identity, "address": args.listen})
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    work = asyncio.create_task(rep.run(), name="replicator")
    # the replicator stops when asked, or dies with its error
    await asyncio.wait([work, asyncio.ensure_future(stop.wait())], return_when="FIRST_COMPLETED")
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    reloader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reloader
    await rep.resign()
    await runner.cleanup()
    for c in (target, *sources.values(), *([control_client] if control_client else [])):
        await c.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    json_logging(f"{args.region}/{args.name}")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
