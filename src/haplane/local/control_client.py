"""The supervisor's control API, client side: what `haplane status`, `fault` and `down` use, and
what drills use from Python (`FaultInjector`). The server is `haplane.local.control`, which
re-exports all of this.

Layer: run (local). Light on purpose (commands that only talk to the supervisor import this,
not the server and the supervisor behind it): the standard library at module level, aiohttp
only once a request finds a socket to send to, so a command with no supervisor running never
imports it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

FaultAction = Literal["kill", "term", "pause", "resume", "restart"]
FAULT_ACTIONS: tuple[FaultAction, ...] = ("kill", "term", "pause", "resume", "restart")


class ControlError(Exception):
    pass


class SupervisorUnreachable(ControlError):
    pass


class ControlClient:
    """Talks to a running supervisor through its socket."""

    def __init__(self, socket_path: Path, timeout: float = 30.0):
        self.socket_path = socket_path
        self.timeout = timeout  # seconds, for a whole request

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        if not self.socket_path.exists():
            raise SupervisorUnreachable(f"no supervisor socket at {self.socket_path}")
        import aiohttp

        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=str(self.socket_path)),
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
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
