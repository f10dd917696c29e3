"""The drill client: writes and reads through the gate at a fixed rate and records every
operation (invoke time, return time, outcome, serving region and epoch from the headers).

Layer: dr. A plain HTTP client of the Kubernetes API (aiohttp); knows nothing of processes.
It sits where a user would: it knows every gate address and, like a client resolving one name
to several addresses, moves to the next one on a connection failure. It never retries an
operation: each attempt is one recorded operation, so the report shows what a user saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import IO

import aiohttp

from .report import Operation

NAMESPACE = "default"
DRILL_LABEL = "haplane.dev/drill"


@dataclass
class DrillClient:
    gates: list[str]  # base URLs, e.g. http://127.0.0.1:6443
    run_id: str
    interval: float = 0.02  # seconds between the starts of two operations of one kind
    timeout: float = 2.0
    start: float = field(default_factory=time.monotonic)
    operations: list[Operation] = field(default_factory=list)
    sink: IO[str] | None = None  # each operation also as a JSON line, as it completes
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _seq: int = 0

    def stop(self) -> None:
        self._stop.set()

    def now(self) -> float:
        return time.monotonic() - self.start

    async def run(self) -> None:
        await asyncio.gather(self._loop("write"), self._loop("read"))

    async def _loop(self, kind: str) -> None:
        gate = 0
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while not self._stop.is_set():
                started = time.monotonic()
                url = self.gates[gate % len(self.gates)]
                op = await self._one(session, kind, url)
                self.operations.append(op)
                if self.sink is not None:
                    self.sink.write(json.dumps(op.to_dict()) + "\n")
                    self.sink.flush()
                if op.error in ("connect", "reset"):
                    gate += 1  # the next address, as a client of a multi-address name
                await asyncio.sleep(max(0.0, started + self.interval - time.monotonic()))

    async def _one(self, session: aiohttp.ClientSession, kind: str, url: str) -> Operation:
        if kind == "write":
            self._seq += 1
            key = f"drill-{self.run_id}-{self._seq}"
            method, path = "POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps"
            body: bytes | None = json.dumps(
                {
                    "metadata": {"name": key, "labels": {DRILL_LABEL: self.run_id}},
                    "data": {"seq": str(self._seq)},
                }
            ).encode()
        else:
            key = NAMESPACE
            method, path, body = "GET", f"/api/v1/namespaces/{NAMESPACE}", None
        invoked = self.now()
        status = region = epoch = error = None
        try:
            async with session.request(
                method, url + path, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                await resp.read()
                status = resp.status
                region = resp.headers.get("X-Haplane-Region")
                epoch_h = resp.headers.get("X-Haplane-Epoch")
                epoch = int(epoch_h) if epoch_h and epoch_h.isdigit() else None
                if status >= 300:
                    error = f"http-{status}"
        except aiohttp.ClientConnectorError:
            error = "connect"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            error = "reset"
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as exc:
            error = type(exc).__name__
        return Operation(
            kind=kind,
            key=key,
            invoked=invoked,
            returned=self.now(),
            ok=error is None,
            error=error,
            status=status,
            region=region,
            epoch=epoch,
            gate=url,
        )


async def present_keys(replica_urls: list[str], run_id: str, timeout: float = 5.0) -> set[str]:
    """The drill's objects one region holds now: a quorum list (no resourceVersion) through
    the first of the region's replicas that answers."""
    params = {"labelSelector": f"{DRILL_LABEL}={run_id}"}
    last: Exception | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        for url in replica_urls:
            try:
                async with session.get(
                    f"{url}/api/v1/namespaces/{NAMESPACE}/configmaps", params=params
                ) as resp:
                    if resp.status != 200:
                        last = RuntimeError(f"{url}: HTTP {resp.status}")
                        continue
                    data = await resp.json()
                    return {item["metadata"]["name"] for item in data.get("items", [])}
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = exc
    raise RuntimeError(f"no replica answered the read-back ({last})")


def main(argv: list[str] | None = None) -> None:
    """`python -m haplane.dr.client`: the drill client as its own process, so that it can sit in
    a network namespace of its own (started with `ip netns exec`). Runs until SIGTERM; times
    are seconds since `--start`, a CLOCK_MONOTONIC reading of the drill (the clock is the
    machine's, shared by every namespace)."""
    ap = argparse.ArgumentParser(prog="python -m haplane.dr.client")
    ap.add_argument("--gate", action="append", required=True, help="gate base URL (repeat)")
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--start", type=float, required=True)
    args = ap.parse_args(argv)

    async def run() -> None:
        client = DrillClient(
            args.gate, args.run_id, interval=args.interval, start=args.start, sink=sys.stdout
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, client.stop)
        loop.add_signal_handler(signal.SIGINT, client.stop)
        await client.run()

    asyncio.run(run())


if __name__ == "__main__":
    main()
