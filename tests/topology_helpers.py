"""Helpers for tests that start whole topologies through the real `haplane` command, and the
command line of an API replica fenced by a global control etcd."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from haplane.local.netns import available
from haplane.local.security import SUPERVISOR, PlatformTls
from haplane.local.state_dir import StateDir
from haplane.store import EtcdClient, EtcdTls, FenceValue, GlobalState, RegionFence
from haplane.topology import load_file
from haplane.topology.loader import example_text


def haplane(
    state: Path, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "haplane.cli", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"haplane {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real kubectl with `kubeconfig`; its output captured, never raising."""
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def kubectl_reaching(
    kubeconfig: Path, *args: str, wait: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """`kubectl` as above, run again while it says "Unable to connect to the server" (for up
    to `wait` seconds): for steps whose subject is not availability, where a gate or balancer
    that briefly has no healthy backend on a loaded machine ends the TLS handshake (EOF) before
    any request was sent. Any other answer, success or refusal, is returned as it is."""
    deadline = time.monotonic() + wait
    while True:
        r = kubectl(kubeconfig, *args)
        if "Unable to connect to the server" not in r.stderr or time.monotonic() > deadline:
            return r
        print(f"kubectl {' '.join(args)}: {r.stderr.strip()}; again")
        time.sleep(0.5)


def finished_operation(kubeconfig: Path, kind: str, name: str, timeout: float) -> dict[str, Any]:
    """The status of an ops.haplane.dev operation once it Succeeded or Failed (read with
    kubectl, as an operator would follow it)."""

    def done() -> dict[str, Any] | None:
        r = kubectl(kubeconfig, "get", kind, name, "-o", "json")
        st = json.loads(r.stdout)["status"] if r.returncode == 0 else {}
        return st if st.get("phase") in ("Succeeded", "Failed") else None

    return wait_for(done, timeout=timeout)


def platform_tls(state: Path) -> PlatformTls | None:
    """The certificates of the topology started in `state` (None: `insecure: true`)."""
    from haplane.local.security import platform_tls as of

    return of(StateDir(state), load_file(state / "topology.yaml"))


def etcd_tls(state: Path) -> EtcdTls | None:
    """The operator's etcd client certificate (what the CLI dials etcd with)."""
    tls = platform_tls(state)
    return tls.etcd_client(SUPERVISOR) if tls is not None else None


def admin_ssl(state: Path) -> ssl.SSLContext | None:
    """A client context of haplane-admin (system:masters), for urllib and http.client."""
    tls = platform_tls(state)
    return tls.client_context() if tls is not None else None


def connection(
    url_or_host: str, port: int | None = None, *, state: Path, timeout: float = 5
) -> http.client.HTTPConnection:
    """An HTTP(S) connection to a platform address as haplane-admin."""
    if port is None:
        _, _, rest = url_or_host.partition("://")
        host, _, p = rest.rpartition(":")
        port = int(p)
    else:
        host = url_or_host
    ctx = admin_ssl(state)
    if ctx is None:
        return http.client.HTTPConnection(host, port, timeout=timeout)
    return http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)


def status(state: Path) -> dict[str, Any]:
    r = haplane(state, "status", "--json", check=False)
    assert r.returncode in (0, 3), r.stderr
    return json.loads(r.stdout)


def members(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for c in doc["clusters"] for m in c["members"]}


def processes_under(state: Path) -> list[psutil.Process]:
    """Every live process of this state dir: named in its command line or its environment."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(str(state) in part for part in (p.info["cmdline"] or [])) or (
                p.environ().get("HAPLANE_STATE_DIR") == str(state)
            ):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def down_and_check(state: Path) -> None:
    """`haplane down`, then fail if any process of this state dir is left (killing it first,
    by its own PID: only processes naming our temp state dir)."""
    haplane(state, "down", check=False)
    leftovers = processes_under(state)
    for p in leftovers:
        p.kill()
    assert not leftovers, f"processes left behind: {leftovers}"


async def make_active(
    client: EtcdClient, prefix: bytes, region: str, fence_key: bytes
) -> tuple[GlobalState, RegionFence]:
    """A fresh global state under `prefix` with `region` active and writable at epoch 1, and
    its fence key at `fence_key` saying so (tests share one etcd between "regions")."""
    state = GlobalState(client, prefix=prefix)
    await state.initialize(region, by="t", reason="t", grant_ms=600, margin_ms=100, fresh=True)
    fence = RegionFence(region, client, key=fence_key)
    await fence.swap(await fence.read(), FenceValue.active(region, 1))
    return state, fence


def fenced_replica_args(
    global_etcd: list[str], prefix: bytes, fence_key: bytes, write_log: Path | None = None
) -> list[str]:
    """An API replica's flags for a global state under `prefix` and its fence key at
    `fence_key` (tests share one etcd between "regions": each gets its own paths)."""
    args = ["--global-etcd", ",".join(global_etcd), "--global-prefix", prefix.decode()]
    args += ["--fence-key", fence_key.decode()]
    return args + (["--write-log", str(write_log)] if write_log is not None else [])


@contextlib.contextmanager
def netns_example(
    tmp: Path, edit: Callable[[dict[str, Any]], None] | None = None
) -> Iterator[Path]:
    """The two-regions example with every site in its own network namespace (`up --netns`),
    drills' short hysteresis, `edit` applied to the document; stopped and checked at the end.
    Skipped where namespaces cannot be made (failed under CI)."""
    why = available()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"partition drills cannot run here: {why}")
        pytest.skip(why)
    doc = yaml.safe_load(example_text("two-regions"))
    # drills follow each other closely: a short hysteresis (the default is 10 s)
    doc["spec"]["global"]["failover"]["minIntervalMs"] = 1000
    if edit is not None:
        edit(doc)
    path = tmp / "topology.yaml"
    path.write_text(yaml.safe_dump(doc))
    root = tmp / "state"
    haplane(root, "up", "-d", "--netns", str(path))
    try:
        yield root
    finally:
        down_and_check(root)
        assert not (root / "netns.json").exists(), "site network left behind"


_NO_FAILOVER = ("replica-kill", "etcd-leader-kill", "gate-cut", "blip", "replicator-kill",
                "standby-partition")  # fmt: skip


def drill(root: Path, scenario: str, *extra: str) -> dict[str, Any]:
    """`haplane drill SCENARIO --direct --json` (run here, not through the API): the result,
    with `_exit` and `_stderr`. Shorter than the defaults unless `extra` says otherwise: 1 s
    of load before the fault, and 3 s watched after one that must not fail over (5x the
    examples' 600 ms down-after: a failover would show)."""
    if "--warmup" not in extra:
        extra = ("--warmup", "1", *extra)
    if "--observe" not in extra and scenario in _NO_FAILOVER:
        extra = ("--observe", "3", *extra)
    r = haplane(root, "drill", scenario, "--direct", "--json", *extra, check=False, timeout=180)
    assert r.stdout, r.stderr
    result: dict[str, Any] = json.loads(r.stdout)
    result["_exit"], result["_stderr"] = r.returncode, r.stderr
    return result


def in_words(ops: list[dict[str, Any]]) -> str:
    """Drill operations one per line, with what a failure needs to be understood (the loop, the
    gate, the error and the server's message): pytest's repr of the dicts cuts the message.
    The first line counts them by error, gate and message (a test summary shows that line)."""
    counts = Counter(
        f"{o['error'] or 'ok'} via {o['gate']}: {(o['message'] or '')[:60]}" for o in ops
    )
    return (
        "; ".join(f"{n}x {what}" for what, n in counts.most_common())
        + "\n"
        + "\n".join(
            f"{o['invoked']:7.2f}-{o['returned']:7.2f}s {o['loop'] or o['kind']:<6} {o['gate']} "
            f"{o['error'] or 'ok'} region={o['region']} epoch={o['epoch']} "
            f"basis={o['basis_region']}@{o['basis_epoch']}: {(o['message'] or '')[:160]}"
            for o in ops
        )
    )


def files_holding(root: Path, needles: tuple[bytes, ...]) -> list[str]:
    """Every file under `root` (etcd members' WAL, snapshots and databases of every region,
    logs, audit logs, divergence files, drill reports, configuration) holding a needle."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{path.relative_to(root)}: {n.decode()}" for n in needles if n in data]
    return found
