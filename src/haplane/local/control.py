"""The supervisor's control API: HTTP over a unix socket in the state dir (aiohttp both ends).

Layer: run (local). The server wraps a `Supervisor`; the client is what `haplane status`, `fault`
and `down` use, and what drills use from Python (`FaultInjector`). The client lives in
`haplane.local.control_client` (light: no supervisor, aiohttp on first request) and is
re-exported here.

    GET  /v1/supervisor          phase, etcd binary, components (pid, state, restarts)
    GET  /v1/status              {"healthy", "report"}: `haplane status --json`, gathered now
                                 by the supervisor (its modules loaded, its etcd channels up)
    POST /v1/faults              {"action": kill|term|pause|resume|restart, "component": NAME}
    POST /v1/shutdown            stop everything and exit
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from aiohttp import web

from .control_client import (
    FAULT_ACTIONS,
    ControlClient,
    ControlError,
    FaultAction,
    FaultInjector,
    SupervisorUnreachable,
)
from .process import ProcessNotRunning
from .status import KeptClients, NothingRunning, gather_status
from .supervisor import Supervisor, UnknownComponent

# how long `GET /v1/status` waits for its gather before answering 503 (the CLI, which waits
# 8 s, then gathers itself): a gather whose every phase waits out its timeouts takes ~7 s
STATUS_DEADLINE = 6.5
# While the topology is healthy the supervisor gathers the status by itself every WARM_EVERY
# seconds (from the start of one to the start of the next), first closing the kept HTTPS
# connections made more than RENEW_AFTER seconds ago, so that they are dialled again ahead of
# time: a `haplane status` asked now and then finds every etcd channel up and every
# listener's connection younger than its lifetime (10 s), as one asked in a loop does, instead
# of waiting for ~20 TLS handshakes and etcd asked first (here, beside the running two-regions
# example: cold 0.5-0.9 s before, against 0.2-0.4 s in a loop). RENEW_AFTER + WARM_EVERY stays
# under that lifetime, and every listener still gets a new connection and handshake every ~8 s.
# Such a gather is never handed to an asker (it began before the question): an asker arriving
# meanwhile gathers at once beside it. It leaves out the certificates and the history, which
# need no connection. Cost, measured with that example: ~34 ms of the supervisor's CPU per full
# gather; over 60 s idle it used 3.5% of a core (3.6% without), beside the example's ~110-145%.
WARM_EVERY = 4.0
RENEW_AFTER = 5.0
log = logging.getLogger(__name__)


class ControlServer:
    def __init__(self, supervisor: Supervisor, socket_path: Path):
        self.supervisor = supervisor
        self.socket_path = socket_path
        self.shutdown_requested = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._etcd: KeptClients | None = None
        self._gathering: dict[int, asyncio.Task[dict[str, object]]] = {}
        self._warm: asyncio.Task[None] | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/supervisor", self._get)
        app.router.add_get("/v1/status", self._status)
        app.router.add_post("/v1/faults", self._fault)
        app.router.add_post("/v1/shutdown", self._shutdown)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.socket_path.unlink(missing_ok=True)
        site = web.UnixSite(self._runner, str(self.socket_path))
        await site.start()
        os.chmod(self.socket_path, 0o600)  # control of processes: the owner only
        self._warm = asyncio.create_task(self._keep_warm(), name="status kept warm")

    async def close(self) -> None:
        if self._warm is not None:
            self._warm.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._warm
        if self._runner is not None:
            await self._runner.cleanup()
        for task in list(self._gathering.values()):
            task.cancel()
        await asyncio.gather(*self._gathering.values(), return_exceptions=True)
        if self._etcd is not None:
            await self._etcd.close()
        self.socket_path.unlink(missing_ok=True)

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self.supervisor.snapshot())

    async def _status(self, request: web.Request) -> web.Response:
        """Every component asked now, as `haplane status` would from here: the CLI's
        `status --json` asks this first (it then imports nothing of etcd or the model)."""
        try:
            history = int(request.query.get("history", "5"))
        except ValueError:
            return web.json_response({"error": "history: expected an integer"}, status=400)
        task = self._shared_gather(max(0, min(history, 100)))
        try:
            doc = await asyncio.wait_for(asyncio.shield(task), STATUS_DEADLINE)
        except TimeoutError:  # the CLI then asks for itself
            return web.json_response(
                {"error": f"no status within {STATUS_DEADLINE:g} s"}, status=503
            )
        except NothingRunning as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except Exception as exc:  # e.g. a certificate pair torn mid-rotation
            return web.json_response({"error": f"status failed: {exc!r}"}, status=503)
        return web.json_response(doc)

    def _shared_gather(self, key: int) -> asyncio.Task[dict[str, object]]:
        """The gather of `key` epochs of history under way for askers, or a new one: one at a
        time, concurrent askers share it."""
        task = self._gathering.get(key)
        if task is None:
            task = asyncio.create_task(self._gather(key), name="status gather")
            self._gathering[key] = task
            task.add_done_callback(lambda t: self._gathering.pop(key, None) and None)
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # read: no warning
        return task

    async def _keep_warm(self) -> None:
        """Gather every WARM_EVERY seconds while the topology is healthy (see WARM_EVERY).
        Never raises but CancelledError: a failed gather is what an asker would be told."""
        loop = asyncio.get_running_loop()
        next_at = loop.time() + WARM_EVERY
        while True:
            await asyncio.sleep(max(WARM_EVERY / 4, next_at - loop.time()))
            next_at = loop.time() + WARM_EVERY
            try:
                if self.supervisor.phase != "healthy":
                    continue
                await asyncio.wait_for(
                    self._gather(0, certificates=False, renew_after=RENEW_AFTER), STATUS_DEADLINE
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("status kept warm: %r", exc)

    async def _gather(
        self, history: int, *, certificates: bool = True, renew_after: float | None = None
    ) -> dict[str, object]:
        """`renew_after`: first close the kept connections made longer ago than that."""
        if self._etcd is None:
            self._etcd = KeptClients()
        if renew_after is not None:
            self._etcd.http.retire(renew_after)
        report = await gather_status(
            self.supervisor.state,
            history=history,
            certificates=certificates,
            supervisor=self.supervisor.snapshot(),
            clients=self._etcd,
        )
        return {"healthy": report.healthy, "report": report.as_dict()}

    async def _fault(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            action, name = body["action"], body["component"]
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                {"error": 'expected JSON {"action": ..., "component": ...}'}, status=400
            )
        if action not in FAULT_ACTIONS:
            return web.json_response(
                {"error": f"unknown action {action!r}; use one of {', '.join(FAULT_ACTIONS)}"},
                status=400,
            )
        if self.supervisor.phase != "healthy":
            return web.json_response(
                {"error": f"supervisor is {self.supervisor.phase}"}, status=409
            )
        try:
            snap = await self.supervisor.fault(action, str(name))
        except UnknownComponent as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except ProcessNotRunning as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response(snap)

    async def _shutdown(self, request: web.Request) -> web.Response:
        self.shutdown_requested.set()
        return web.json_response({"phase": "stopping"})


__all__ = [
    "FAULT_ACTIONS",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "FaultAction",
    "FaultInjector",
    "SupervisorUnreachable",
]
