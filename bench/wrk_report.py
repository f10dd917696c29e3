"""wrk's text report, parsed: shared by the benchmarks that load with wrk (`http_servers.py`,
`proxy.py`, `api_server.py`).

Layer: bench. Pure: parses the text a wrk run printed; running wrk is the caller's job.
"""

from __future__ import annotations

import re

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    assert m, text
    return float(m[1]) * _UNITS[m[2]]


def parse_wrk(out: str) -> dict[str, float]:
    """n (requests completed), seconds (as printed), rps (wrk's Requests/sec), p50 and p99 in
    ms (needs --latency), non2xx, socket_errors (connect + read + write + timeout) and errors
    (their sum)."""
    n = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert n and p50 and p99 and rps, out
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = int(bad[1]) if bad else 0
    socket_errors = sum(int(x) for x in sock.groups()) if sock else 0
    return {
        "n": float(n[1]),
        "seconds": _ms(n[2] + n[3]) / 1e3,
        "rps": float(rps[1]),
        "p50": _ms(p50[1]),
        "p99": _ms(p99[1]),
        "non2xx": float(non2xx),
        "socket_errors": float(socket_errors),
        "errors": float(non2xx + socket_errors),
    }
