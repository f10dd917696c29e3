"""Benchmark: haplane's forwarding engine (L4 and L7) against HAProxy 2.6, side by side.

Throughput. The backend is first HAProxy itself answering a fixed JSON body from a frontend
(`http-request return`, its own process, nbthread 1): a Python backend would be the bottleneck and
hide the proxies' differences. wrk (-t2 -c64, keep-alive) runs against: the backend directly,
HAProxy `mode tcp`, HAProxy `mode http` (each its own process, nbthread 1, no checks), haplane L4
and haplane L7 (`python -m haplane.gate` on uvloop, one process per mode, health checks of the
backend every 200 ms). Cases are interleaved round by round; reported are medians over rounds of
req/s, p99 latency, and the proxy's CPU per request (psutil: the proxy process's user+system time
over the run / requests). Ratios are medians of per-round ratios (neighbours in time share the
machine's noise): haplane L4 / HAProxy tcp (goal >= 0.8) and haplane L7 / HAProxy http (>= 0.5).
Then the same cases in front of a real API replica (3-member etcd, cached GET of a namespace);
there HAProxy `mode tcp` runs the configuration `haplane export haproxy` writes for a balancer.

Detection. Two Python backends (tests/gate/backend.py) behind: haplane L4 with checks every
200 ms, fall 2, rise 2; HAProxy tcp with default checks (`check`: inter 2s fall 3 rise 2); HAProxy
tcp with `inter 200 fall 2 rise 2`. Every check is `GET /readyz`. Four client loops each send
`GET /whoami` on a new connection, back to back. Faults: SIGKILL of backend a, or its /readyz
turning 503. Reported, medians over runs:
- marked: fault -> the proxy itself reports a not UP (haplane /status, HAProxy `show stat`,
  polled every 10 ms). After this no new connection is sent to a;
- last: fault -> the send time of the last request a answered (503 case: a keeps serving) or
  that failed (SIGKILL case: a request the proxy still sent to the dead a);
- errors: client-visible failed requests after the fault (sum over runs).

    .venv/bin/python bench/proxy.py [--seconds 6] [--rounds 3] [--detect-runs 5]

Layer: bench. Starts haproxy, wrk, gate and backend processes, each stopped by its own PID;
uses haplane only as a process (`python -m haplane.gate`).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from wrk_report import parse_wrk  # bench/ is the script's directory, so on sys.path

from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from haplane.local.gate_plans import BalancerPlan
from haplane.local.haproxy_export import haproxy_config
from haplane.local.plans import ReplicaPlan

REPO = Path(__file__).resolve().parent.parent
BACKEND_SCRIPT = REPO / "tests" / "gate" / "backend.py"
STATIC_BODY = '{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","code":200}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        t = psutil.Process(self.pid).cpu_times()
        return float(t.user + t.system)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, sig)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)


def wait_port(port: int, proc: Proc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"exited: {proc.log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not open")


# ---- HAProxy ---------------------------------------------------------------------------------

HAPROXY_GLOBAL = """global
    nbthread 1
    maxconn 4096
    {stats}
defaults
    timeout client 60s
    timeout server 60s
    timeout connect 2s
"""


def haproxy(root: Path, name: str, body: str, stats: bool = False) -> tuple[Proc, Path | None]:
    sock = root / f"{name}.sock" if stats else None
    stats_line = f"stats socket {sock} level admin" if sock else ""
    cfg = root / f"{name}.cfg"
    cfg.write_text(HAPROXY_GLOBAL.format(stats=stats_line) + body)
    return Proc(["haproxy", "-db", "-f", str(cfg)], root / f"{name}.log"), sock


def haproxy_exported(root: Path, port: int, replica_port: int) -> Proc:
    """HAProxy from `haplane export haproxy`'s generator: one regional balancer (mode tcp,
    /readyz checks at haplane's settings) in front of the API replica."""
    replica = ReplicaPlan("bench", "api", "127.0.0.1", replica_port, ())
    plan = BalancerPlan("bench", "lb", "a", "127.0.0.1", port, free_port(), (replica,), ())
    cfg = root / "haproxy-exported.cfg"
    cfg.write_text(haproxy_config("bench", [plan], [], None))
    return Proc(["haproxy", "-db", "-f", str(cfg)], root / "haproxy-exported.log")


def haproxy_static(root: Path, port: int) -> Proc:
    body = f"""frontend static
    mode http
    bind 127.0.0.1:{port}
    http-request return status 200 content-type application/json string '{STATIC_BODY}'
"""
    return haproxy(root, "backend", body)[0]


def haproxy_proxy(
    root: Path, name: str, port: int, mode: str, servers: list[tuple[str, int]], check: str = ""
) -> tuple[Proc, Path | None]:
    lines = [
        f"frontend f\n    mode {mode}\n    bind 127.0.0.1:{port}\n    default_backend b",
        f"backend b\n    mode {mode}\n    balance leastconn",
    ]
    if check:
        lines.append("    option httpchk GET /readyz")
    for sname, sport in servers:
        lines.append(f"    server {sname} 127.0.0.1:{sport} {check}".rstrip())
    return haproxy(root, name, "\n".join(lines) + "\n", stats=bool(check))


def haproxy_state(sock: Path, server: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    text = data.decode().lstrip("# ")
    for row in csv.DictReader(io.StringIO(text)):
        if row["pxname"] == "b" and row["svname"] == server:
            return row["status"]
    raise KeyError(server)


# ---- haplane ---------------------------------------------------------------------------------


def haplane_gate(
    root: Path,
    name: str,
    port: int,
    mode: str,
    servers: list[tuple[str, int]],
    admin_port: int,
    check: dict[str, object] | None = None,
) -> Proc:
    config = {
        "name": name,
        "listeners": [{"port": port, "mode": mode}],
        "pools": {
            "p": {
                "upstreams": [{"name": n, "host": "127.0.0.1", "port": p} for n, p in servers],
                "check": check or {"path": "/", "interval": 0.2, "fall": 2, "rise": 2},
            }
        },
        "active_pool": "p",
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "shutdown_grace": 1.0,
    }
    path = root / f"{name}.json"
    path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "haplane.gate", "--config", str(path)]
    return Proc(argv, root / f"{name}.log")


def http_get(port: int, path: str, timeout: float = 2.0, method: str = "GET") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def haplane_state(admin_port: int, upstream: str) -> str:
    _, body = http_get(admin_port, "/status")
    for u in json.loads(body)["pools"]["p"]["upstreams"]:
        if u["name"] == upstream:
            return str(u["state"])
    raise KeyError(upstream)


# ---- throughput ------------------------------------------------------------------------------


def run_wrk(port: int, seconds: float, proxy: Proc | None, path: str = "/") -> dict[str, float]:
    cpu0 = proxy.cpu() if proxy else 0.0
    out = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{seconds:g}s", "--latency", f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = (proxy.cpu() - cpu0) if proxy else float("nan")
    r = parse_wrk(out)
    return {
        "rps": r["n"] / r["seconds"],
        "p99_ms": r["p99"],
        "cpu_us": cpu / r["n"] * 1e6 if proxy else float("nan"),
        "bad": r["non2xx"],
        "sock_err": 1.0 if r["socket_errors"] else 0.0,
    }


def throughput(root: Path, seconds: float, rounds: int, api: bool = False) -> None:
    """Against HAProxy's static answer, or (`api`) an API replica on a 3-member etcd serving a
    cached GET of a namespace (resourceVersion=0), the request a watch-heavy client repeats."""
    backend_port = free_port()
    ports = {k: free_port() for k in ("tcp", "http", "l4", "l7")}
    loop = asyncio.new_event_loop()
    cluster: EtcdCluster | None = None
    replica: ApiReplica | None = None
    path, direct = "/", "direct (HAProxy static backend)"
    if api:
        cluster = EtcdCluster(root / "etcd", heartbeat_ms=50, election_ms=500)
        loop.run_until_complete(cluster.start())
        replica = ApiReplica(root, "api", cluster.endpoints, region="bench")
        loop.run_until_complete(replica.start())
        backend_port = replica.port
        path, direct = "/api/v1/namespaces/default?resourceVersion=0", "direct (API replica)"
        started: list[Proc] = []
    else:
        backend = haproxy_static(root, backend_port)
        started = [backend]
    procs: dict[str, Proc | None] = {direct: None}
    try:
        if not api:
            wait_port(backend_port, backend)
        server = [("s1", backend_port)]
        tcp = (
            haproxy_exported(root, ports["tcp"], backend_port)
            if api
            else haproxy_proxy(root, "haproxy-tcp", ports["tcp"], "tcp", server)[0]
        )
        http = haproxy_proxy(root, "haproxy-http", ports["http"], "http", server)[0]
        check = {"path": "/readyz" if api else "/", "interval": 0.2, "fall": 2, "rise": 2}
        l4 = haplane_gate(root, "haplane-l4", ports["l4"], "l4", server, free_port(), check)
        l7 = haplane_gate(root, "haplane-l7", ports["l7"], "l7", server, free_port(), check)
        started += [tcp, http, l4, l7]
        cases = {
            direct: (backend_port, None),
            "HAProxy mode tcp": (ports["tcp"], tcp),
            "HAProxy mode http": (ports["http"], http),
            "haplane L4": (ports["l4"], l4),
            "haplane L7": (ports["l7"], l7),
        }
        for port, proc in cases.values():
            if proc is not None:
                wait_port(port, proc)
                procs[str(port)] = proc
        time.sleep(1.0)  # haplane: first health checks done
        for port, proc in cases.values():  # warm-up
            run_wrk(port, 1, proc, path)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for r in range(rounds):
            for name, (port, proc) in cases.items():
                results[name].append(run_wrk(port, seconds, proc, path))
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
        print(
            f"\nThroughput to {direct.removeprefix('direct ')}: wrk -t2 -c64 GET {path} "
            f"{seconds:g}s x {rounds} interleaved rounds (medians); all on 2 shared vCPUs"
        )
        print(f"{'case':<34}{'req/s':>10}{'p99 ms':>9}{'proxy CPU us/req':>18}{'non-2xx':>9}")
        for name, rows in results.items():
            med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
            cpu = "-" if name.startswith("direct") else f"{med['cpu_us']:.1f}"
            bad = sum(row["bad"] for row in rows)
            print(f"{name:<34}{med['rps']:>10.0f}{med['p99_ms']:>9.2f}{cpu:>18}{bad:>9.0f}")

        def ratio(a: str, b: str, key: str = "rps") -> float:
            return statistics.median(
                x[key] / y[key] for x, y in zip(results[a], results[b], strict=True)
            )

        r4 = ratio("haplane L4", "HAProxy mode tcp")
        r7 = ratio("haplane L7", "HAProxy mode http")
        c4 = ratio("haplane L4", "HAProxy mode tcp", "cpu_us")
        c7 = ratio("haplane L7", "HAProxy mode http", "cpu_us")
        print(
            f"haplane L4 / HAProxy tcp : {r4:.2f}x req/s (goal >= 0.8: "
            f"{'met' if r4 >= 0.8 else 'NOT met'}), {c4:.2f}x CPU per request"
        )
        print(
            f"haplane L7 / HAProxy http: {r7:.2f}x req/s (goal >= 0.5: "
            f"{'met' if r7 >= 0.5 else 'NOT met'}), {c7:.2f}x CPU per request"
        )
    finally:
        for p in started:
            p.stop()
        if replica is not None:
            loop.run_until_complete(replica.stop())
        if cluster is not None:
            loop.run_until_complete(cluster.stop())
        loop.close()


# ---- detection -------------------------------------------------------------------------------


@dataclass
class Outcome:
    marked: float = float("nan")
    last: float = 0.0
    errors: int = 0
    served: dict[str, int] = field(default_factory=dict)


async def _load(
    port: int,
    stop: asyncio.Event,
    log: list[tuple[float, str]],
) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        try:
            async with asyncio.timeout(3.0):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /whoami HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                data = await reader.read()
                writer.close()
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(head[:40])
            log.append((started, json.loads(body)["name"]))
        except (OSError, TimeoutError, ValueError):
            log.append((started, "error"))
            await asyncio.sleep(0.001)


async def detect_once(
    root: Path, setup: str, fault: str, index: int, seconds_max: float
) -> Outcome:
    run = root / f"{index}-{re.sub(r'[^a-zA-Z0-9]+', '_', setup + fault)[:40]}"
    run.mkdir(parents=True)
    backends = {}
    started: list[Proc] = []
    try:
        for name in ("a", "b"):
            port = free_port()
            argv = [sys.executable, str(BACKEND_SCRIPT), "--port", str(port), "--name", name]
            proc = Proc([*argv, "--log", str(run / f"{name}.requests")], run / f"{name}.log")
            started.append(proc)
            backends[name] = (port, proc)
        for port, proc in backends.values():
            wait_port(port, proc)
        servers = [(n, p) for n, (p, _) in backends.items()]
        front = free_port()
        state: Callable[[], str]
        if setup.startswith("haplane"):
            admin = free_port()
            check = {"path": "/readyz", "interval": 0.2, "fall": 2, "rise": 2}
            gate = haplane_gate(run, "gate", front, "l4", servers, admin, check)
            started.append(gate)
            wait_port(admin, gate)

            def state() -> str:
                return haplane_state(admin, "a")
        else:
            check = "check" if "default" in setup else "check inter 200 fall 2 rise 2"
            hap, sock = haproxy_proxy(run, "haproxy", front, "tcp", servers, check)
            started.append(hap)
            assert sock is not None
            wait_port(front, hap)

            def state() -> str:
                return haproxy_state(sock, "a")

        await asyncio.sleep(0.5)
        stop = asyncio.Event()
        log: list[tuple[float, str]] = []
        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(_load(front, stop, log)) for _ in range(4)]
        await asyncio.sleep(1.0)
        outcome = Outcome()
        t0 = loop.time()
        if fault == "SIGKILL":
            backends["a"][1].stop(signal.SIGKILL)
        else:
            http_get(backends["a"][0], "/control/ready?value=0", method="POST")
        while loop.time() - t0 < seconds_max:
            current = await asyncio.to_thread(state)
            # HAProxy says "UP 1/3" while going down: still UP, still gets traffic
            if not current.upper().startswith("UP"):
                outcome.marked = loop.time() - t0
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # anything still reaching a would show up here
        stop.set()
        await asyncio.gather(*tasks)
        after = [(t - t0, who) for t, who in log if t >= t0]
        victim = [t for t, who in after if who in ("a", "error")]
        outcome.last = max(victim, default=0.0)
        outcome.errors = sum(1 for _, who in after if who == "error")
        outcome.served = {w: sum(1 for _, x in after if x == w) for w in ("a", "b", "error")}
        return outcome
    finally:
        for p in reversed(started):
            p.stop()


async def detection(root: Path, runs: int) -> None:
    setups = ["haplane L4 200ms/2/2", "HAProxy defaults (inter 2s fall 3)", "HAProxy 200ms/2/2"]
    faults = ["SIGKILL", "readyz 503"]
    results: dict[tuple[str, str], list[Outcome]] = {(s, f): [] for s in setups for f in faults}
    for i in range(runs):
        for setup in setups:
            for fault in faults:
                o = await detect_once(root, setup, fault, i, 12.0)
                results[(setup, fault)].append(o)
                print(
                    f"  run {i + 1} {setup} / {fault}: marked {o.marked:.3f}s last "
                    f"{o.last:.3f}s served {o.served}",
                    file=sys.stderr,
                )
    print(f"\nDetection: {runs} runs each; 4 clients, a new connection per request; median seconds")
    print(f"{'proxy and checks':<36}{'fault':<12}{'marked':>8}{'last':>8}{'errors':>8}")
    for (setup, fault), outs in results.items():
        marked = statistics.median(o.marked for o in outs)
        last = statistics.median(o.last for o in outs)
        errors = sum(o.errors for o in outs)
        print(f"{setup:<36}{fault:<12}{marked:>8.3f}{last:>8.3f}{errors:>8}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--detect-runs", type=int, default=5)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-api", action="store_true", help="skip the API replica backend")
    ap.add_argument("--skip-detection", action="store_true")
    args = ap.parse_args()
    version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout
    print(f"{version.splitlines()[0]}; {sys.version.split()[0]}; {os.cpu_count()} vCPUs")
    with tempfile.TemporaryDirectory(prefix="haplane-bench-proxy-") as tmp:
        if not args.skip_throughput:
            throughput(Path(tmp), args.seconds, args.rounds)
            if not args.skip_api:
                throughput(Path(tmp), args.seconds, args.rounds, api=True)
        if not args.skip_detection:
            asyncio.run(detection(Path(tmp), args.detect_runs))


if __name__ == "__main__":
    main()
