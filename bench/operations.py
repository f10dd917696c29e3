"""Benchmark: what going through the API costs an operator's switchover, side by side.

Starts the two-regions example (`haplane up -d`, on this machine), makes alice and bob
dr-operators, then alternates, `--runs` times each (default 5), two ways of a planned
switchover to the other region, with no client load:
- **direct**: `global_control.switch`, what `haplane failover --direct` runs, timed in process
  (no CLI start-up);
- **API**: alice creates a Switchover through the gate, bob approves it through the gate
  (both in process, kubeconfigs from `haplane kubeconfig --user`); timed from the moment bob's
  approval returns until a 10 ms poll sees the request `Succeeded` (the failover controller's
  pass every 0.25 s, its claim, the same switch, the status writes), and split at the first
  poll that sees it `Running`.
Prints medians and worsts and the API/direct ratio of medians.

    .venv/bin/python bench/operations.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from haplane.cli.api_client import ApiClient, ClientError
from haplane.local import global_control
from haplane.local.global_control import FailoverError
from haplane.local.state_dir import StateDir
from haplane.store import GlobalState
from haplane.topology import load_file

OPS = "/apis/ops.haplane.dev/v1"


def haplane(state: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "haplane.cli", *args, "--state-dir", str(state)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


async def direct(state: StateDir, to: str) -> float:
    topology = load_file(state.topology_file)
    fences = global_control.region_fences(topology, state)
    try:
        async with global_control.control_client(topology, state) as client:
            t0 = time.monotonic()
            await global_control.switch(client, topology, to, reason="bench", fences=fences)
            return time.monotonic() - t0
    finally:
        await fences.close()


def through_api(alice: ApiClient, bob: ApiClient, to: str, n: int) -> tuple[float, float]:
    name = f"bench-{n}-{time.time_ns() % 10**6}"
    body = {
        "apiVersion": "ops.haplane.dev/v1",
        "kind": "Switchover",
        "metadata": {"name": name},
        "spec": {"targetRegion": to, "reason": "bench"},
    }
    status, obj = alice.request("POST", f"{OPS}/switchovers", body)
    assert status == 201, obj
    obj["status"]["conditions"].append({"type": "Approved", "status": "True"})
    status, out = bob.request("PUT", f"{OPS}/switchovers/{name}/approval", obj)
    t0 = time.monotonic()
    assert status == 200, out
    running = None
    while True:
        try:
            code, now = bob.request("GET", f"{OPS}/switchovers/{name}", timeout=2.0)
        except ClientError:  # the gates close their connections as the region moves
            code = 0
        if code != 200:
            time.sleep(0.01)
            continue
        phase = now["status"]["phase"]
        if phase != "Approved" and running is None:
            running = time.monotonic() - t0
        if phase in ("Succeeded", "Failed"):
            assert phase == "Succeeded", now["status"]
            return time.monotonic() - t0, running or 0.0
        time.sleep(0.01)


async def wait_switchable(state: StateDir) -> str:
    """The region that is not active, once a planned switch to it can go (its replicator
    follows the active region again after the last reversal)."""
    topology = load_file(state.topology_file)
    async with global_control.control_client(topology, state) as client:
        record = await GlobalState(client).read()
    assert record is not None
    other = next(r.name for r, _ in topology.regions() if r.name != record.region)
    fences = global_control.region_fences(topology, state)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            read = await fences[other].read()
            raw = (read.raw or b"").decode()
            if raw.startswith(f"standby:{record.region}@"):
                return other
            await asyncio.sleep(0.1)
    finally:
        await fences.close()
    raise TimeoutError(f"{other} does not follow {record.region}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="haplane-bench-ops-") as tmp:
        root = Path(tmp) / "state"
        state = StateDir(root)
        haplane(root, "up", "-d", "--example", "two-regions")
        try:
            admin = root / "admin.kc"
            haplane(root, "kubeconfig", "-o", str(admin))
            clients = {}
            for user in ("alice", "bob"):
                path = root / f"{user}.kc"
                haplane(root, "kubeconfig", "--user", user, "-o", str(path))
                subprocess.run(
                    ["kubectl", "--kubeconfig", str(admin), "create", "clusterrolebinding",
                     f"{user}-dr", "--clusterrole=haplane:dr-operator", f"--user={user}"],
                    check=True, capture_output=True,
                )  # fmt: skip
                clients[user] = ApiClient.from_kubeconfig(path)
            time.sleep(1.0)  # the bindings reach every replica's RBAC view
            results: dict[str, list[float]] = {"direct": [], "api": [], "api_to_claim": []}
            for n in range(args.runs * 2):
                to = asyncio.run(wait_switchable(state))
                if n % 2 == 0:
                    for _ in range(20):
                        try:
                            results["direct"].append(asyncio.run(direct(state, to)))
                            break
                        except FailoverError:
                            time.sleep(0.2)
                else:
                    total, claimed = through_api(clients["alice"], clients["bob"], to, n)
                    results["api"].append(total)
                    results["api_to_claim"].append(claimed)
            report(results)
        finally:
            subprocess.run(
                [sys.executable, "-m", "haplane.cli", "down", "--state-dir", str(root)],
                check=False,
                capture_output=True,
            )


def report(results: dict[str, Any]) -> None:
    print(f"{'planned switchover':<34} {'median':>9} {'worst':>9}  runs")
    for key, label in (
        ("direct", "direct (global_control.switch)"),
        ("api", "API: approval -> Succeeded"),
        ("api_to_claim", "API: approval -> claimed"),
    ):
        xs = results[key]
        print(f"{label:<34} {statistics.median(xs):>8.3f}s {max(xs):>8.3f}s  {len(xs)}")
    ratio = statistics.median(results["api"]) / statistics.median(results["direct"])
    print(f"API / direct (medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
