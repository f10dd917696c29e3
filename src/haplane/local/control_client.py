"""The supervisor's control API, client side: what `haplane status`, `fault` and `down` use, and
what drills use from Python (`FaultInjector`). The server is `haplane.local.control`, which
re-exports all of this.

Layer: run (local). Light on purpose (commands that only talk to the supervisor import this,
not the server and the supervisor behind it): the standard library only (`stdlib_http`, once a
request finds a socket to send to).
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
        from .stdlib_http import HttpError, fetch

        try:
            (answer,) = await fetch(
                "http://supervisor",
                [(method, path, body)],
                timeout=self.timeout,
                unix=str(self.socket_path),
            )
        except HttpError as exc:
            raise SupervisorUnreachable(
                f"supervisor at {self.socket_path} does not answer: {exc}"
            ) from exc
        try:
            data = answer.json()
        except ValueError:
            raise ControlError(
                f"unexpected answer from the supervisor (HTTP {answer.status})"
            ) from None
        if answer.status >= 400:
            raise ControlError(str(data.get("error", data) if isinstance(data, dict) else data))
        return data

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
