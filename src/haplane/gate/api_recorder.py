"""The failover controller's own identity at the API: a ServiceAccount token
(`kube-system/haplane-failover-controller`, bound to the ClusterRole
`haplane:failover-controller`), used to record each automatic failover and failback as a
`Switchover` through the API, so that the decision is authorized and audited at the replica
that takes it like any operator's request.

Layer: gate. Talks HTTPS to the regional balancers' client listeners (the same addresses the
gates forward to), verifying them against the platform CA; reads the token file on each
call (the supervisor renews it: `haplane.local.controller_token`). Never raises into the
controller: `record` answers what happened.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

PATH = "/apis/ops.haplane.dev/v1/switchovers"


class RecorderError(Exception):
    """Not recorded through the API (why, per address tried)."""


@dataclass(frozen=True)
class ApiRecorder:
    token_file: str
    ca_file: str | None  # None: plain HTTP (an insecure topology)
    regions: dict[str, list[str]]  # region -> its balancers' base URLs
    deadline: float = 30.0  # seconds to keep trying before the caller falls back
    attempt_timeout: float = 3.0

    def _urls(self, first: str) -> list[str]:
        """The balancers of `first` (the region just made active), then every other's."""
        order = [first, *sorted(r for r in self.regions if r != first)]
        return [u for r in order for u in self.regions.get(r, [])]

    async def record(self, obj: dict[str, Any], region: str) -> str:
        """POST `obj` through some balancer, `region`'s first; "created" or "exists" (409:
        recorded before). Retries every address until `deadline`; then RecorderError."""
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        stop = time.monotonic() + self.deadline
        errors: dict[str, str] = {}
        timeout = aiohttp.ClientTimeout(total=self.attempt_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    token = _read(self.token_file)
                except OSError as exc:
                    token, errors["token"] = "", f"{self.token_file}: {exc.strerror or exc}"
                for url in self._urls(region) if token else []:
                    outcome = await self._post(session, url, token, obj, context, errors)
                    if outcome is not None:
                        return outcome
                if time.monotonic() >= stop:
                    raise RecorderError("; ".join(f"{k}: {v}" for k, v in errors.items()))
                await asyncio.sleep(1.0)

    async def _post(
        self,
        session: aiohttp.ClientSession,
        url: str,
        token: str,
        obj: dict[str, Any],
        context: ssl.SSLContext | None,
        errors: dict[str, str],
    ) -> str | None:
        try:
            async with session.post(
                url + PATH,
                json=obj,
                headers={"Authorization": f"Bearer {token}"},
                ssl=context if context is not None else True,
            ) as resp:
                if resp.status == 201:
                    return "created"
                if resp.status == 409:
                    return "exists"
                body = await resp.text()
                errors[url] = f"{resp.status} {body[:300]}"
                if resp.status in (400, 401, 403, 422):  # another replica would say the same
                    raise RecorderError(f"{url}: {errors[url]}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            errors[url] = str(exc) or type(exc).__name__
        return None


def _read(path: str) -> str:
    """A token file of a few hundred bytes on local disk: read inline (no thread hop)."""
    with open(path) as f:
        return f.read().strip()
