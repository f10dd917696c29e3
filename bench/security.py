"""Benchmark: what identity and access cost. One etcd (3 members, fsync on) and two replicas on
it, side by side in one run:
- plain: HTTP, anonymous, AlwaysAllow, no audit (a bare replica);
- secure: TLS (P-256 certificate), a bearer token from the token file, RBAC (the user is
  allowed by a RoleBinding to `edit` for its group, so every request is evaluated, not
  short-circuited as system:masters would be), and the audit log under the default policy
  (ConfigMaps: Metadata for gets, one event each; Request for creates, two events each).
Load from wrk (2 threads, keep-alive connections: TLS handshakes are amortised as clients
amortise them), `--rounds` interleaved rounds of cached GETs (resourceVersion=0) and creates
(~1 KiB ConfigMaps); ratios secure / plain are the medians of the rounds'.
Then where a cached GET's cost goes, one feature at a time, on three more replicas: TLS alone;
TLS with authentication and RBAC (no audit); the same with an audit policy that logs nothing;
and one more replica as `secure` with the audit log in batch mode (`--audit-log-mode batch`),
in the head-to-head rounds too.

    .venv/bin/python bench/security.py [--seconds 6] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from api_server import WRK_CREATE, _cpu, load_wrk_create  # bench/ is on sys.path
from proxy import free_port, haplane_gate, wait_port
from wrk_report import parse_wrk

from haplane.auth.pki import CertRequest, Pki
from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import FenceValue, RegionFence

TOKEN = "bench-token-0123456789"
STEPS: dict[str, ApiReplica] = {}  # the breakdown's replicas, by what they have on


def wrk_get(
    url: str,
    seconds: float,
    connections: int,
    pid: int,
    token: str | None,
    path: str = "/api/v1/namespaces/bench/configmaps/c1?resourceVersion=0",
) -> dict:
    """GETs of `path` from wrk (keep-alive); every answer must be 2xx."""
    headers = ["-H", f"Authorization: Bearer {token}"] if token else []
    cpu0 = _cpu(pid)
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            *headers,
            f"{url}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = _cpu(pid) - cpu0
    r = parse_wrk(out)
    assert not r["non2xx"] and not r["socket_errors"], out
    return {
        "rps": r["n"] / r["seconds"],
        "p50_ms": r["p50"],
        "p99_ms": r["p99"],
        "cpu_us": cpu / r["n"] * 1e6,
    }


async def setup(root: Path) -> tuple[EtcdCluster, ApiReplica, ApiReplica, Path]:
    cluster = EtcdCluster(root / "etcd", heartbeat_ms=50, election_ms=500, unsafe_no_fsync=False)
    await cluster.start()
    async with cluster.client(timeout=2.0) as client:
        fence = RegionFence("bench", client)
        await fence.swap(await fence.read(), FenceValue.active("bench", 0))
    pki = Pki(root / "pki")
    pki.ensure_ca("bench CA")
    server = pki.issue(CertRequest("api", "api", ip_addresses=("127.0.0.1",), server=True))
    admin = pki.issue(CertRequest("admin", "admin", ("system:masters",), client=True))
    (root / "tokens.csv").write_text(f'{TOKEN},bench-user,u-1,"bench-team"\n')
    plain = ApiReplica(root, "plain", cluster.endpoints, region="bench")
    secure = ApiReplica(
        root,
        "secure",
        cluster.endpoints,
        region="bench",
        ca=pki.ca_cert,
        extra_args=[
            "--tls-cert-file",
            str(server.cert),
            "--tls-private-key-file",
            str(server.key),
            "--client-ca-file",
            str(pki.ca_cert),
            "--authorization-mode",
            "RBAC",
            "--anonymous",
            "health",
            "--token-auth-file",
            str(root / "tokens.csv"),
            "--audit-log-path",
            str(root / "audit" / "secure.log"),
        ],
    )
    await plain.start()
    await secure.start()
    tls_args = ["--tls-cert-file", str(server.cert), "--tls-private-key-file", str(server.key)]
    access_args = [
        *tls_args,
        "--client-ca-file", str(pki.ca_cert),
        "--authorization-mode", "RBAC",
        "--anonymous", "health",
        "--token-auth-file", str(root / "tokens.csv"),
    ]  # fmt: skip
    (root / "audit-none.yaml").write_text(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: None\n"
    )
    STEPS.clear()
    for name, args in (
        ("tls", tls_args),
        ("tls-access", access_args),
        ("tls-access-audit-none", [*access_args, "--audit-log-path",
                                   str(root / "audit" / "none.log"), "--audit-policy-file",
                                   str(root / "audit-none.yaml")]),
        ("batch", [*access_args, "--audit-log-path", str(root / "audit" / "batch.log"),
                   "--audit-log-mode", "batch"]),
    ):  # fmt: skip
        replica = ApiReplica(root, name, cluster.endpoints, region="bench", ca=pki.ca_cert,
                             extra_args=args)  # fmt: skip
        await replica.start()
        STEPS[name] = replica
    cert = (admin.cert, admin.key)
    secure.request("POST", "/api/v1/namespaces", {"metadata": {"name": "bench"}}, cert=cert)
    secure.request(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/bench/rolebindings",
        {
            "metadata": {"name": "team-edit"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "edit",
            },
            "subjects": [{"kind": "Group", "name": "bench-team"}],
        },
        cert=cert,
    )
    secure.request(
        "POST",
        "/api/v1/namespaces/bench/configmaps",
        {"metadata": {"name": "c1"}, "data": {"p": "x" * 1000}},
        cert=cert,
    )
    deadline = time.monotonic() + 5
    while secure.request("GET", "/api/v1/namespaces/bench/configmaps/c1", token=TOKEN)[0] != 200:
        assert time.monotonic() < deadline, "the binding never took effect"
        await asyncio.sleep(0.1)
    return cluster, plain, secure, root / "audit" / "secure.log"


def row(name: str, r: dict) -> None:
    print(f"{name:<34}{r['rps']:>9.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['cpu_us']:>12.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="haplane-bench-") as tmp:
        cluster, plain, secure, audit = loop.run_until_complete(setup(Path(tmp)))
        try:
            s, c = args.seconds, args.connections
            print(
                f"wrk -t2 -c{c}, {s:g}s per case, {args.rounds} interleaved rounds; "
                "2 vCPUs shared by etcd, both replicas and wrk"
            )
            print(f"{'case':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}")
            batch = STEPS["batch"]
            gets, creates, batch_gets, batch_creates = [], [], [], []
            for i in range(args.rounds):
                p = wrk_get(plain.url, s, c, plain.process.pid, None)
                q = wrk_get(secure.url, s, c, secure.process.pid, TOKEN)
                b = wrk_get(batch.url, s, c, batch.process.pid, TOKEN)
                row(f"{i + 1}: get, all off", p)
                row(f"{i + 1}: get, TLS+token+RBAC+audit", q)
                row(f"{i + 1}: get, ... audit in batch mode", b)
                gets.append((q["rps"] / p["rps"], q["cpu_us"] / p["cpu_us"]))
                batch_gets.append((b["rps"] / p["rps"], b["cpu_us"] / p["cpu_us"]))
                os.environ["BENCH_TOKEN"] = ""
                p = load_wrk_create(plain.url, s, c, plain.process.pid)
                os.environ["BENCH_TOKEN"] = TOKEN
                q = load_wrk_create(secure.url, s, c, secure.process.pid)
                b = load_wrk_create(batch.url, s, c, batch.process.pid)
                row(f"{i + 1}: create, all off", p)
                row(f"{i + 1}: create, TLS+token+RBAC+audit", q)
                row(f"{i + 1}: create, ... audit in batch mode", b)
                creates.append((q["rps"] / p["rps"], q["cpu_us"] / p["cpu_us"]))
                batch_creates.append((b["rps"] / p["rps"], b["cpu_us"] / p["cpu_us"]))
            for what, xs in (
                ("cached GETs", gets),
                ("creates", creates),
                ("cached GETs, audit in batch mode", batch_gets),
                ("creates, audit in batch mode", batch_creates),
            ):
                print(
                    f"{what}: secure / plain = {statistics.median(x[0] for x in xs):.2f}x "
                    f"throughput (rounds {', '.join(f'{x[0]:.2f}' for x in xs)}), "
                    f"{statistics.median(x[1] for x in xs):.2f}x replica CPU per request"
                )
            print(f"audit log written: {audit.stat().st_size / 1e6:.1f} MB")
            breakdown(plain, secure, s, c, args.rounds)
            through_the_gate(Path(tmp), secure, s, c, args.rounds)
        finally:
            for replica in (plain, secure, *STEPS.values()):
                loop.run_until_complete(replica.stop())
            loop.run_until_complete(cluster.stop())


def breakdown(plain: ApiReplica, secure: ApiReplica, s: float, c: int, rounds: int) -> None:
    """Cached GETs, each feature added in turn: replica CPU per request (user + system, from
    /proc) and throughput, medians of interleaved rounds."""
    cases = [
        ("all off", plain, None),
        ("TLS", STEPS["tls"], None),
        ("TLS + token + RBAC", STEPS["tls-access"], TOKEN),
        ("... + audit policy logging nothing", STEPS["tls-access-audit-none"], TOKEN),
        ("... + audit (default policy)", secure, TOKEN),
        ("... the same audit in batch mode", STEPS["batch"], TOKEN),
    ]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in cases}
    for _ in range(rounds):
        for name, replica, token in cases:
            results[name].append(wrk_get(replica.url, s, c, replica.process.pid, token))
    print(f"\ncached GETs, one feature at a time ({rounds} rounds, medians)")
    print(f"{'case':<38}{'req/s':>9}{'CPU us/req':>12}{'added us':>10}{'x plain':>9}")
    base = statistics.median(r["rps"] for r in results["all off"])
    before = None
    for name, _, _ in cases:
        rps = statistics.median(r["rps"] for r in results[name])
        cpu = statistics.median(r["cpu_us"] for r in results[name])
        added = "" if before is None else f"{cpu - before:+.0f}"
        print(f"{name:<38}{rps:>9.0f}{cpu:>12.0f}{added:>10}{rps / base:>9.2f}")
        before = cpu


def through_the_gate(root: Path, secure: ApiReplica, s: float, c: int, rounds: int) -> None:
    """TLS end to end through a haplane gate in L4 mode (it relays bytes; its checks are
    HTTPS, verifying the replica against the platform CA) against TLS straight to the
    replica: cached GETs with the bearer token, rounds interleaved."""
    assert secure.ca is not None
    port = int(secure.url.rsplit(":", 1)[1])
    front, admin = free_port(), free_port()
    check = {"path": "/readyz", "interval": 0.5, "fall": 2, "rise": 1, "tls_ca": str(secure.ca)}
    gate = haplane_gate(root, "gate-l4", front, "l4", [("secure", port)], admin, check)
    try:
        wait_port(front, gate)
        time.sleep(1.5)  # its first checks
        url = f"https://127.0.0.1:{front}"
        print(f"\nTLS through a haplane gate (L4, HTTPS checks) against direct, wrk -t2 -c{c}")
        ratios = []
        for i in range(rounds):
            d = wrk_get(secure.url, s, c, secure.process.pid, TOKEN)
            g = wrk_get(url, s, c, secure.process.pid, TOKEN)
            row(f"{i + 1}: get, TLS direct", d)
            row(f"{i + 1}: get, TLS through the gate", g)
            ratios.append((g["rps"] / d["rps"], g["p99_ms"] / d["p99_ms"]))
        print(
            f"through the gate / direct = {statistics.median(r[0] for r in ratios):.2f}x "
            f"throughput (rounds {', '.join(f'{r[0]:.2f}' for r in ratios)}), "
            f"{statistics.median(r[1] for r in ratios):.2f}x p99 latency"
        )
    finally:
        gate.stop()


if __name__ == "__main__":
    assert WRK_CREATE.exists()
    main()
