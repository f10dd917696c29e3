"""Benchmark: what an HTTPS health check costs, on a new connection per check against one kept
for several (`haplane.gate.health.Prober`), side by side.

The checked server is aiohttp on uvloop in its own process, TLS with a platform-CA certificate
(ECDSA P-256, client certificates optional: as a balancer's admin listener or an API replica
serves). The checker is this process, probing `GET /readyz` back to back with:
- `fresh`: `health.probe`, a new TCP connection and TLS handshake per check, as every check
  was made before the prober kept its connection;
- `kept`: one `Prober` (its connection reused for `REUSE_FOR` seconds, then dialled again).

Cases are interleaved round by round; reported are the medians over rounds of CPU time per
check in the checker (this process) and in the server (from /proc), and of wall time per
check, with the ratio kept/fresh per round (neighbours in time share the machine's noise).

    .venv/bin/python bench/health_checks.py [--checks 400] [--rounds 5]

Layer: bench. Makes a throwaway CA in a temporary directory; starts one server process and
stops it by its own PID.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER = """
import asyncio, sys, uvloop
from aiohttp import web
from haplane.auth.pki import server_context, CertPaths
from pathlib import Path
d = Path(sys.argv[1])
ctx = server_context(CertPaths(d / "s.crt", d / "s.key", d / "ca.crt"), "optional")
async def main():
    app = web.Application()
    app.router.add_get("/readyz", lambda r: web.json_response({"ready": True}))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[2]), ssl_context=ctx).start()
    print("ready", flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(port: int, ca: Path, server_pid: int, checks: int, rounds: int) -> None:
    from haplane.gate.health import REUSE_FOR, CheckOutcome, Prober, probe
    from haplane.gate.settings import HealthCheck

    check = HealthCheck(interval=0.2, timeout=2.0, tls_ca=str(ca))
    prober = Prober("127.0.0.1", port)
    results: dict[str, list[tuple[float, float, float]]] = {"fresh": [], "kept": []}
    for rnd in range(rounds + 1):  # the first round warms up, not counted
        for case in ("fresh", "kept"):
            s0, c0, t0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
            for _ in range(checks):
                if case == "fresh":
                    result = await probe("127.0.0.1", port, check)
                else:
                    result = await prober.check(check)
                assert result.outcome is CheckOutcome.OK, result
            wall = time.perf_counter() - t0
            client = time.process_time() - c0
            srv = cpu_seconds(server_pid) - s0
            if rnd:
                results[case].append(
                    (1e6 * client / checks, 1e6 * srv / checks, 1e3 * wall / checks)
                )
    prober.close()
    print(
        f"HTTPS health checks, {checks} back to back per case, {rounds} interleaved rounds "
        f"({os.cpu_count()} cores; kept: reused for {REUSE_FOR:g} s)"
    )
    print(f"  {'case':8} {'checker µs/check':>17} {'server µs/check':>16} {'wall ms/check':>14}")
    for case, rows in results.items():
        c, s, w = (statistics.median(r[i] for r in rows) for i in range(3))
        print(f"  {case:8} {c:17.0f} {s:16.0f} {w:14.2f}")
    ratio = [
        (k[0] + k[1]) / (f[0] + f[1])
        for f, k in zip(results["fresh"], results["kept"], strict=True)
    ]
    print(
        f"  kept / fresh, CPU of both ends per check: median {statistics.median(ratio):.3f} "
        f"(rounds {', '.join(f'{x:.3f}' for x in ratio)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import uvloop

    from haplane.auth.pki import CertRequest, Pki

    with tempfile.TemporaryDirectory(prefix="haplane-bench-checks-") as tmp:
        d = Path(tmp)
        pki = Pki(d / "pki")
        pki.ensure_ca("bench")
        paths = pki.issue(CertRequest("s", "s", ip_addresses=("127.0.0.1",), server=True))
        os.link(paths.cert, d / "s.crt")
        os.link(paths.key, d / "s.key")
        os.link(pki.ca_cert, d / "ca.crt")
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(d), str(port)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            uvloop.run(run(port, pki.ca_cert, server.pid, args.checks, args.rounds))
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
