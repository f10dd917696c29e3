"""The drill client: writes and reads through the gate at a fixed rate and records every
operation (invoke time, return time, outcome, serving region and epoch from the headers).

Layer: dr. A plain HTTP client of the Kubernetes API (aiohttp); knows nothing of processes.
It sits where a user would: it knows every gate address and, like a client resolving one name
to several addresses, moves to the next one on a connection failure. It never retries an
operation: each attempt is one recorded operation, so the report shows what a user saw.

Four loops, one operation at a time each, every `interval` (kinds as in `haplane.dr.report`):
- "write": creates a new ConfigMap `drill-<run>-<n>`;
- "read": gets the `default` namespace;
- "update": updates a few long-lived ConfigMaps `drill-<run>-u<i>` in turn, each from the
  `resourceVersion` it last read or wrote (a precondition), with a counter that grows with every
  update (from 1) in its data. It creates a key where the serving region has none (at the
  start, and in a region that never had it: there is no replication between regions), and
  after any failed update (a 409: someone else wrote or the epoch changed; a timeout: it may
  have committed) it reads the key again first (a "get" operation) instead of guessing;
- "get": gets those keys in turn (404 is an answer: the key is absent there).

Every object is labelled with the run, and every name starts with `key_prefix(run)`, so the
read-back (`read_back`) and the journal check find exactly the drill's objects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from ssl import SSLContext
from typing import IO, Any

import aiohttp

from .report import Operation

NAMESPACE = "default"
DRILL_LABEL = "haplane.dev/drill"
UPDATED_KEYS = 6  # long-lived keys the update loop updates in turn
_CONFIGMAPS = f"/api/v1/namespaces/{NAMESPACE}/configmaps"


def key_prefix(run_id: str) -> str:
    """How every object name of the run begins (for the journal check)."""
    return f"drill-{run_id}-"


def _counter(doc: Any) -> int | None:
    """The update counter in a ConfigMap's data (None: none, or not an object)."""
    data = doc.get("data") if isinstance(doc, dict) else None
    text = data.get("counter") if isinstance(data, dict) else None
    return int(text) if isinstance(text, str) and text.isdigit() else None


def _version(doc: Any) -> str | None:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return rv if isinstance(rv, str) else None


def _version_field(rv: str | None, i: int) -> int | None:
    """Field `i` of `<revision>.<region tag>.<epoch>` as a number (0: revision, 2: epoch)."""
    parts = rv.split(".") if rv else []
    return int(parts[i]) if len(parts) == 3 and parts[i].isdigit() else None


@dataclass
class _Known:
    """What the update loop last learned of one of its keys: the basis of its next update."""

    version: str | None = None  # the resourceVersion to update from; None: read or create
    absent: bool = True  # without a version: the key is absent (create it), else read it
    region: str | None = None  # where and in which epoch the version (or absence) came from
    epoch: int | None = None


@dataclass(frozen=True)
class _Request:
    kind: str
    key: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    value: int | None = None  # the counter an update writes
    basis: _Known | None = None  # an update loop's key: learns from the answer


@dataclass
class DrillClient:
    gates: list[str]  # base URLs, e.g. http://127.0.0.1:6443
    run_id: str
    interval: float = 0.02  # seconds between the starts of two operations of one kind
    timeout: float = 2.0
    start: float = field(default_factory=time.monotonic)
    operations: list[Operation] = field(default_factory=list)
    sink: IO[str] | None = None  # each operation also as a JSON line, as it completes
    updated_keys: int = UPDATED_KEYS  # 0: no update and get loops
    ssl: SSLContext | bool = True  # the platform CA and the client's certificate (https gates)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _seq: int = 0
    _counter: int = 0  # the last update's counter
    _known: dict[str, _Known] = field(init=False)  # the update loop's keys
    _turn: dict[str, int] = field(init=False, default_factory=dict)  # loop -> next key's index

    def __post_init__(self) -> None:
        prefix = key_prefix(self.run_id)
        self._known = {f"{prefix}u{i}": _Known() for i in range(self.updated_keys)}

    def stop(self) -> None:
        self._stop.set()

    def now(self) -> float:
        return time.monotonic() - self.start

    async def run(self) -> None:
        loops = ("write", "read", "update", "get") if self._known else ("write", "read")
        await asyncio.gather(*(self._loop(k) for k in loops))

    async def _loop(self, kind: str) -> None:
        gate = 0
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        connector = aiohttp.TCPConnector(limit=1, ssl=self.ssl)
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

    def _next_key(self, loop: str) -> str:
        keys = list(self._known)
        turn = self._turn.get(loop, 0)
        self._turn[loop] = turn + 1
        return keys[turn % len(keys)]

    def _request(self, loop: str) -> _Request:
        if loop == "write":
            self._seq += 1
            key = f"{key_prefix(self.run_id)}{self._seq}"
            body = self._object(key, {"seq": str(self._seq)})
            return _Request("write", key, "POST", _CONFIGMAPS, body)
        if loop == "read":
            return _Request("read", NAMESPACE, "GET", f"/api/v1/namespaces/{NAMESPACE}")
        key = self._next_key(loop)
        if loop == "get":
            return _Request("get", key, "GET", f"{_CONFIGMAPS}/{key}")
        known = self._known[key]
        basis = replace(known)
        if known.version is None and not known.absent:
            return _Request("get", key, "GET", f"{_CONFIGMAPS}/{key}", basis=basis)
        self._counter += 1
        body = self._object(key, {"counter": str(self._counter)})
        if known.version is None:
            return _Request("update", key, "POST", _CONFIGMAPS, body, self._counter, basis)
        body["metadata"]["resourceVersion"] = known.version
        path = f"{_CONFIGMAPS}/{key}"
        return _Request("update", key, "PUT", path, body, self._counter, basis)

    def _object(self, name: str, data: dict[str, str]) -> dict[str, Any]:
        meta = {"name": name, "labels": {DRILL_LABEL: self.run_id}}
        return {"metadata": meta, "data": data}

    async def _one(self, session: aiohttp.ClientSession, loop: str, url: str) -> Operation:
        req = self._request(loop)
        body = None if req.body is None else json.dumps(req.body).encode()
        invoked = self.now()
        status = region = epoch = error = doc = message = None
        try:
            async with session.request(
                req.method, url + req.path, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                raw = await resp.read()
                status = resp.status
                region = resp.headers.get("X-Haplane-Region")
                epoch_h = resp.headers.get("X-Haplane-Epoch")
                epoch = int(epoch_h) if epoch_h and epoch_h.isdigit() else None
                if status >= 300 and not (req.kind == "get" and status == 404):
                    error = f"http-{status}"  # (a get's 404 is an answer: absent there)
                    message = _status_message(raw)
                elif status < 300 and req.kind != "read":
                    doc = json.loads(raw)
        except aiohttp.ClientConnectorError:
            error = "connect"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            error = "reset"
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as exc:
            error = type(exc).__name__
        except ValueError:
            error = "bad-body"  # a success whose body is no JSON
        basis = req.basis
        op = Operation(
            kind=req.kind,
            key=req.key,
            invoked=invoked,
            returned=self.now(),
            ok=error is None,
            error=error,
            status=status,
            region=region,
            epoch=epoch,
            gate=url,
            value=req.value if req.kind == "update" else _counter(doc),
            revision=_version_field(_version(doc), 0),
            basis_region=basis.region if basis is not None and req.kind == "update" else None,
            basis_epoch=basis.epoch if basis is not None and req.kind == "update" else None,
            message=message,
            loop=loop,
        )
        if basis is not None:
            self._learn(req.key, op, _version(doc))
        return op

    def _learn(self, key: str, op: Operation, version: str | None) -> None:
        """The update loop's next step for `key` after `op` (an update, or a get it made)."""
        if op.error == "connect":
            return  # nothing was sent: what it knew still holds
        if op.ok and version is not None:
            # the epoch the version carries: an update from it is refused once that changes
            epoch = _version_field(version, 2)
            self._known[key] = _Known(version, False, op.region, epoch)
        elif op.status == 404:  # the serving region has no such key: create it there
            self._known[key] = _Known(None, True, op.region, op.epoch)
        else:  # refused, or it may have committed (a timeout): read it again first
            self._known[key] = _Known(None, False)


async def read_back(
    endpoint: Sequence[str], run_id: str, timeout: float = 5.0, ssl: SSLContext | bool = True
) -> dict[str, int | None]:
    """Every object of the run that `endpoint` holds now, name -> the update counter it carries
    (None: a plain write). `endpoint`: the base URLs of one place to read from, tried in order
    until one answers a quorum list (no resourceVersion): a region's replicas for what that
    region holds; the gate's addresses would give what a client sees through the gate."""
    params = {"labelSelector": f"{DRILL_LABEL}={run_id}"}
    last: Exception | None = None
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout), connector=aiohttp.TCPConnector(ssl=ssl)
    ) as session:
        for url in endpoint:
            try:
                async with session.get(f"{url}{_CONFIGMAPS}", params=params) as resp:
                    if resp.status != 200:
                        last = RuntimeError(f"{url}: HTTP {resp.status}")
                        continue
                    data = await resp.json()
                    return {item["metadata"]["name"]: _counter(item) for item in data["items"]}
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                last = exc
    raise RuntimeError(f"no address of {', '.join(endpoint)} answered the read-back ({last})")


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
    ap.add_argument("--ca", default=None, help="https gates: the platform CA")
    ap.add_argument("--cert", default=None, help="the client certificate (and --key)")
    ap.add_argument("--key", default=None)
    args = ap.parse_args(argv)

    from haplane.auth.pki import client_context

    async def run() -> None:
        client = DrillClient(
            args.gate,
            args.run_id,
            interval=args.interval,
            start=args.start,
            sink=sys.stdout,
            ssl=client_context(args.ca, args.cert, args.key) if args.ca else True,
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, client.stop)
        loop.add_signal_handler(signal.SIGINT, client.stop)
        await client.run()

    asyncio.run(run())


def _status_message(raw: bytes) -> str:
    """A refusal's Kubernetes Status message (or the start of whatever else came back)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw[:300].decode(errors="replace")
    text = doc.get("message") if isinstance(doc, dict) else None
    return str(text if text is not None else doc)[:300]


if __name__ == "__main__":
    main()
