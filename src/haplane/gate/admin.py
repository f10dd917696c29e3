"""The admin HTTP listener of a forwarding engine (aiohttp).

Layer: gate. Serves one `Forwarder` on its own socket; the data path never goes through here.

- GET /metrics: Prometheus text format (the engine's own registry);
- GET /status: `Forwarder.status()` as JSON;
- POST /pool: `{"pool": NAME, "upstreams": [{name, host, port, check_port?}]?, "check": {...}?,
  "activate": bool}`: replace a pool's upstreams (and check) and/or make it the active pool;
  answers the new status. Errors are Kubernetes `Status` bodies;
- GET /livez: 200 while the process serves; GET /readyz: 200 when the active pool has an UP
  upstream and the engine is not stopping, else 503 (with the reason);
- GET /healthz/region (balancers): the region's aggregate health (`roles.RegionHealth`), 200
  or 503 with the detail; 404 on an engine that is no regional balancer;
- POST /drain `{"drain": true, "reason": "..."}` / `{"drain": false}`: take the engine out of
  service for maintenance, or back. Drained, it keeps serving every connection it has and
  any it is still sent, but /readyz and /healthz/region answer 503 `drained: REASON`: the
  gates' checks mark a drained balancer DRAINING (no new connections, busy ones finish,
  never aborted as DOWN would). Held in memory: a restart ends it. Answers the new status
  (`drained`, `connections_active`). Whether draining leaves its region without a serving
  balancer is the caller's check (`haplane maintenance drain` refuses that).
GET /status adds `region` (balancers) and `follow` (gates: active region, epoch) when present.

With `ListenerAccess` (what `haplane up` gives every balancer and gate): HTTPS only; the health
endpoints answer anyone (load balancers, keepalived and the gates' checks probe them without
an identity); /metrics and /status want a client certificate from the platform CA in one of
the read groups, POST /pool one in the write groups (else 401 without a certificate, 403 with
one of another group, as Kubernetes `Status` bodies). The serving pair is re-read when its
file changes (`haplane pki rotate`), checked first: a torn pair keeps the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from haplane.auth.listener import ListenerAccess

from .config import PoolUpdate, describe_errors
from .controller import FailoverController
from .forwarder import Forwarder
from .k8s_status import status_body
from .roles import ActiveRegionFollower, RegionHealth

PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/healthz/region"})


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(code: int, message: str) -> web.Response:
    return web.Response(
        body=status_body(code, message), status=code, content_type="application/json"
    )


class AdminServer:
    def __init__(
        self,
        forwarder: Forwarder,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        region: RegionHealth | None = None,
        follower: ActiveRegionFollower | None = None,
        controller: FailoverController | None = None,
        access: ListenerAccess | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.access = access
        self._reload_task: asyncio.Task[None] | None = None
        self.host = host
        self.port = port
        self.region = region
        self.follower = follower
        self.controller = controller
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application(middlewares=[self._guard] if self.access else [])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        app.router.add_post("/pool", self._pool)
        app.router.add_post("/drain", self._drain)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/healthz/region", self._region)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        context = self.access.context() if self.access is not None else None
        if self.access is not None:
            self.access.expiry_gauge(self.forwarder.metrics.registry, "admin")
        site = web.TCPSite(
            self._runner, self.host, self.port, reuse_address=True, ssl_context=context
        )
        await site.start()
        if self.access is not None:
            self._reload_task = asyncio.create_task(self._reload_loop(), name="admin cert")
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        return self.port

    async def _reload_loop(self) -> None:
        assert self.access is not None
        while True:
            await asyncio.sleep(1.0)
            self.access.reload_if_changed()

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        refused = self.access.refusal(request, PUBLIC_PATHS) if self.access is not None else None
        if refused is not None:
            return _error(*refused)
        return await handler(request)

    async def stop(self) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload_task
            self._reload_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.forwarder.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status(self, request: web.Request) -> web.Response:
        status = self.forwarder.status()
        if self.region is not None:
            status["region"] = self.region.report()
        if self.follower is not None:
            status["follow"] = self.follower.report()
        if self.controller is not None:
            status["controller"] = self.controller.report()
        return _json(status)

    async def _region(self, request: web.Request) -> web.Response:
        if self.region is None:
            return _error(404, "this engine is no regional balancer")
        report = self.region.report()
        if self.forwarder.drained:
            report = {**report, "healthy": False, "drained": self.forwarder.drained}
        return _json(report, 200 if report["healthy"] and not self.forwarder.stopping else 503)

    async def _livez(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        fw = self.forwarder
        pool = fw.active_pool
        if fw.stopping:
            return _error(503, "stopping")
        if fw.drained:
            return _error(503, f"drained: {fw.drained}")
        if pool is None:
            return _error(503, "no active pool")
        if not pool.has_up():
            return _error(503, f"no UP upstream in the active pool {pool.name}")
        return _json({"status": "ready", "active_pool": pool.name})

    async def _drain(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return _error(400, f"body: not JSON ({exc})")
        drain = body.get("drain") if isinstance(body, dict) else None
        reason = body.get("reason", "maintenance") if isinstance(body, dict) else None
        if not isinstance(drain, bool):
            return _error(400, 'drain: true or false, e.g. {"drain": true, "reason": "..."}')
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 1024:
            return _error(400, "reason: a non-empty string of at most 1024 characters")
        self.forwarder.drain(reason.strip() if drain else None)
        return _json(self.forwarder.status())

    async def _pool(self, request: web.Request) -> web.Response:
        try:
            update = PoolUpdate.model_validate_json(await request.read())
        except ValidationError as exc:
            return _error(400, describe_errors(exc))
        fw = self.forwarder
        if update.upstreams is not None:
            check = update.check.to_health_check() if update.check is not None else None
            try:
                await fw.set_pool(update.pool, [u.to_address() for u in update.upstreams], check)
            except ValueError as exc:
                return _error(400, str(exc))
        elif update.check is not None:
            return _error(400, "check: only together with upstreams")
        if update.activate:
            if update.pool not in fw.pools:
                return _error(404, f"pool: no pool named {update.pool!r}")
            fw.activate(update.pool, reason="admin API")
        return _json(fw.status())
