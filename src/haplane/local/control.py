"""The supervisor's control API: HTTP over a unix socket in the state dir (aiohttp both ends).

Layer: run (local). The server wraps a `Supervisor`; the client is what `haplane status`, `fault`
and `down` use, and what drills use from Python (`FaultInjector`).

    GET  /v1/supervisor          phase, etcd binary, components (pid, state, restarts)
    POST /v1/faults              {"action": kill|term|pause|resume|restart, "component": NAME}
    POST /v1/shutdown            stop everything and exit
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from .process import FAULT_ACTIONS, FaultAction, ProcessNotRunning
from .supervisor import Supervisor, UnknownComponent


class ControlServer:
    def __init__(self, supervisor: Supervisor, socket_path: Path):
        self.supervisor = supervisor
        self.socket_path = socket_path
        self.shutdown_requested = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/supervisor", self._get)
        app.router.add_post("/v1/faults", self._fault)
        app.router.add_post("/v1/shutdown", self._shutdown)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.socket_path.unlink(missing_ok=True)
        site = web.UnixSite(self._runner, str(self.socket_path))
        await site.start()
        os.chmod(self.socket_path, 0o600)  # control of processes: the owner only

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self.socket_path.unlink(missing_ok=True)

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self.supervisor.snapshot())

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


class ControlError(Exception):
    pass


class SupervisorUnreachable(ControlError):
    pass


class ControlClient:
    """Talks to a running supervisor through its socket."""

    def __init__(self, socket_path: Path, timeout: float = 30.0):
        self.socket_path = socket_path
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        if not self.socket_path.exists():
            raise SupervisorUnreachable(f"no supervisor socket at {self.socket_path}")
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=str(self.socket_path)),
                    timeout=self.timeout,
                ) as session,
                session.request(method, f"http://supervisor{path}", json=body) as resp,
            ):
                data = await resp.json()
                if resp.status >= 400:
                    raise ControlError(str(data.get("error", data)))
                return data
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise SupervisorUnreachable(
                f"supervisor at {self.socket_path} does not answer: {exc}"
            ) from exc

    async def snapshot(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/v1/supervisor")
        return result

    async def fault(self, action: FaultAction, component: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "POST", "/v1/faults", {"action": action, "component": component}
        )
        return result

    async def shutdown(self) -> None:
        with contextlib.suppress(SupervisorUnreachable):
            await self._request("POST", "/v1/shutdown")


class FaultInjector:
    """Fault primitives for drills, by the names `haplane status` shows (e.g. eu-west/etcd-1)."""

    def __init__(self, socket_path: Path):
        self._client = ControlClient(socket_path)

    async def kill(self, component: str) -> dict[str, Any]:
        return await self._client.fault("kill", component)

    async def term(self, component: str) -> dict[str, Any]:
        return await self._client.fault("term", component)

    async def pause(self, component: str) -> dict[str, Any]:
        return await self._client.fault("pause", component)

    async def resume(self, component: str) -> dict[str, Any]:
        return await self._client.fault("resume", component)

    async def restart(self, component: str) -> dict[str, Any]:
        return await self._client.fault("restart", component)
