"""`haplane maintenance drain|undrain BALANCER --direct`: a regional balancer out of service
for maintenance, and back.

Layer: run (local). Talks only to the balancers' admin listeners (GET /status, POST /drain,
with the CLI's client certificate from the platform CA); never to etcd.

Draining a balancer makes its `/healthz/region` and `/readyz` answer 503, so the gates mark it
DRAINING: no new connections go to it, and the ones it has finish (an L7 balancer closes idle
keep-alive connections at once and busy ones after their response; an L4 relay cannot tell
requests apart, so its clients end their connections themselves). The drain then waits for its
open connections to end, up to a timeout, and says how many are left.

It refuses to drain the last balancer of a region that serves: the gates would see the region
down, and fail over if it is the active one. Another balancer of the region must answer, be
in service, not be stopping, and report its region healthy (what the gates check: a twin
whose `/healthz/region` says 503 gets no connection either). What it cannot see: a twin this
CLI reaches but the gates do not. (Two drains started at once could each see the other
balancer in service; the supervisor's agent runs operations one at a time.)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from .gate_plans import BalancerPlan

SETTLE = 1.0  # seconds the gates' checks (0.2 s apart) get to see the drain before counting


class DrainError(Exception):
    """Said to the operator as it is; nothing was changed."""


@dataclass(frozen=True)
class DrainResult:
    balancer: str
    drained: bool
    connections_left: int
    seconds: float

    def message(self) -> str:
        if not self.drained:
            return f"{self.balancer}: back in service"
        if self.connections_left:
            return (
                f"{self.balancer}: drained (no new connections); {self.connections_left} "
                f"still open after {self.seconds:g}s: they end when their clients close them "
                "or the balancer restarts"
            )
        return f"{self.balancer}: drained, no connection left ({self.seconds:g}s)"


def find(balancers: list[BalancerPlan], name: str) -> BalancerPlan:
    """`REGION/NAME` as `haplane status` names it (or NAME alone, where only one has it)."""
    found = [b for b in balancers if name in (b.qualified_name, b.name)]
    if len(found) == 1:
        return found[0]
    names = ", ".join(b.qualified_name for b in balancers)
    if not found:
        raise DrainError(f"no balancer named {name!r}: one of {names}")
    raise DrainError(f"{name!r} names several balancers: say which, one of {names}")


async def drain(
    balancers: list[BalancerPlan],
    name: str,
    ssl: object,
    *,
    undo: bool = False,
    reason: str = "maintenance",
    timeout: float = 30.0,
) -> DrainResult:
    target = find(balancers, name)
    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        if not undo:
            await _refuse_last(session, ssl, target, balancers)
        status = await _post(session, ssl, target, {"drain": not undo, "reason": reason})
        if undo:
            return DrainResult(target.qualified_name, False, 0, 0.0)
        await asyncio.sleep(SETTLE)
        deadline = t0 + max(timeout, SETTLE)
        while True:
            status = await _get(session, ssl, target)
            left = int(status.get("connections_active") or 0)
            if left == 0 or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
    return DrainResult(target.qualified_name, True, left, round(time.monotonic() - t0, 1))


async def _refuse_last(
    session: aiohttp.ClientSession, ssl: object, target: BalancerPlan, all_: list[BalancerPlan]
) -> None:
    others = [b for b in all_ if b.region == target.region and b is not target]
    why = []
    for b in others:
        try:
            st = await _get(session, ssl, b)
        except DrainError as exc:
            why.append(str(exc))
            continue
        region: dict[str, Any] = st["region"] if isinstance(st.get("region"), dict) else {}
        if st.get("drained"):
            why.append(f"{b.qualified_name} is drained ({st['drained']})")
        elif st.get("stopping"):
            why.append(f"{b.qualified_name} is stopping")
        elif not region.get("healthy"):
            # the gates send nothing to it either: its region health answers 503
            reasons = "; ".join(region.get("reasons") or ()) or "no region health reported"
            why.append(f"{b.qualified_name} reports its region unhealthy ({reasons})")
        else:
            return
    raise DrainError(
        f"draining {target.qualified_name} would leave {target.region} with no balancer in "
        "service, and the gates would see the region down (and fail over, were it active)"
        + (f": {'; '.join(why)}" if why else ": it is the region's only balancer")
        + ". Undrain another first, or switch the region's traffic away (`haplane failover`)"
    )


async def _get(session: aiohttp.ClientSession, ssl: object, b: BalancerPlan) -> dict[str, Any]:
    return await _call(session, ssl, b, "GET", None)


async def _post(
    session: aiohttp.ClientSession, ssl: object, b: BalancerPlan, body: dict[str, Any]
) -> dict[str, Any]:
    return await _call(session, ssl, b, "POST", body)


async def _call(
    session: aiohttp.ClientSession,
    ssl: object,
    b: BalancerPlan,
    method: str,
    body: dict[str, Any] | None,
) -> dict[str, Any]:
    path = "/status" if method == "GET" else "/drain"
    try:
        async with session.request(
            method,
            f"{b.admin_url}{path}",
            json=body,
            ssl=ssl,  # type: ignore[arg-type]
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200:
                message = data.get("message") if isinstance(data, dict) else None
                raise DrainError(f"{b.qualified_name}: {resp.status} {message or data}")
            return dict(data)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise DrainError(f"{b.qualified_name} does not answer at {b.admin_url}: {exc}") from None
