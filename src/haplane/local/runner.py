"""Running a supervisor in the foreground or detached, and bringing everything down again.

Layer: run (local). The foreground supervisor lives in the `haplane up` process; the detached one
(`up -d`) is `python -m haplane.local.daemon` in its own session. Either way it records its pid
and start time in the state dir, serves the control socket, and on SIGINT/SIGTERM or a shutdown
request stops every process it started. `down` asks it to stop, and then removes any process its
records still name (a SIGKILLed supervisor's children already died with it through PDEATHSIG).

Start-up: `haplane down` imports this module and needs little more than the pid files, so at
module level it imports only the standard library and the light modules `down` uses (pid
files, the control client, the site network's cleanup); the supervisor, its control server,
asyncio, the topology model, etcd and YAML are imported by the functions that use them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import pidfile, site_network
from .control_client import ControlClient, SupervisorUnreachable
from .netns import NetnsError
from .state_dir import StateDir

if TYPE_CHECKING:
    import asyncio

    from haplane.store import EtcdClient
    from haplane.topology import Topology

    from .supervisor import Supervisor


class PrepareError(Exception):
    """The state dir cannot take this topology; the message says why and what to do."""


class AlreadyRunning(PrepareError):
    pass


def supervisor_record(state: StateDir) -> pidfile.PidRecord | None:
    rec = pidfile.read(state.supervisor_record)
    return rec if rec is not None and rec.alive() else None


def _absolute_security_paths(source_text: str, base: Path) -> str:
    """The text with `spec.security`'s file paths made absolute (relative to the topology
    file's directory): the recorded copy lives in the state dir, and the supervisor may run
    from another working directory."""
    import yaml

    doc: Any = yaml.safe_load(source_text)
    sec = (doc.get("spec") or {}).get("security") or {}
    changed = False
    # the schema takes camelCase and snake_case names alike
    for holder, keys in ((sec.get("ca"), ("certFile", "cert_file", "keyFile", "key_file")),
                         (sec.get("audit"), ("policyFile", "policy_file")),
                         (sec.get("encryption"), ("configFile", "config_file"))):  # fmt: skip
        for key in keys:
            if isinstance(holder, dict) and isinstance(holder.get(key), str):
                path = Path(holder[key]).expanduser()
                absolute = str(path if path.is_absolute() else (base / path).resolve())
                if absolute != holder[key]:  # relative, or `~/...`
                    holder[key] = absolute
                    changed = True
    return yaml.safe_dump(doc, sort_keys=False) if changed else source_text


def prepare_state(
    state: StateDir,
    topology: Topology,
    source_text: str,
    fresh: bool,
    netns: bool = False,
    base: Path | None = None,
) -> Topology:
    """Refuse a state dir in use or holding another topology; record the file for later tools.
    `netns`: every site gets its own network namespace and address (recorded in the file kept
    in the state dir, which is the topology returned). `base`: where the file's relative
    paths start (its directory). A CA the topology supplies is checked and copied in here, so
    that a bad one is refused before anything starts."""
    import yaml

    from haplane.topology import load_file

    from . import security

    if supervisor_record(state) is not None:
        raise AlreadyRunning(
            f"a supervisor is already running for {state.root}; `haplane down` first"
        )
    if state.topology_file.exists() and not fresh:
        previous = yaml.safe_load(state.topology_file.read_text()) or {}
        name = (previous.get("metadata") or {}).get("name")
        if name and name != topology.name:
            raise AlreadyRunning(
                f"{state.root} holds the data of topology {name!r}, not {topology.name!r}: "
                "use --fresh to wipe it, or another --state-dir"
            )
    had_network = state.network_file.exists()
    if state.topology_file.exists() and not fresh and netns != had_network:
        raise AlreadyRunning(
            f"{state.root} holds data started {'with' if had_network else 'without'} --netns "
            "(etcd members keep their addresses): use --fresh, or another --state-dir"
        )
    tls_wanted = not topology.spec.security.insecure
    marker = state.root / "security.json"  # how the data was started (TLS or not)
    has_data = any((state.root / "data").glob("*/*/member"))
    if has_data and not fresh:
        try:
            had_tls = bool(json.loads(marker.read_text()).get("tls"))
        except (OSError, ValueError):
            had_tls = False  # data from before TLS was the default
        if had_tls != tls_wanted:
            raise AlreadyRunning(
                f"{state.root} holds data started {'with' if had_tls else 'without'} TLS "
                "(etcd members keep their peer URLs, http or https): use --fresh, or another "
                "--state-dir, or set `security.insecure` as before"
            )
    site_network.cleanup(state)  # a crashed run's namespaces
    if fresh:
        state.wipe()
        state.network_file.unlink(missing_ok=True)
    state.ensure()
    if netns:
        source_text, addresses = site_network.place_sites(source_text)
        site_network.record(state, topology.name, addresses)
    marker.write_text(json.dumps({"tls": tls_wanted}) + "\n")
    source_text = _absolute_security_paths(source_text, base or Path.cwd())
    state.topology_file.write_text(source_text)
    recorded = load_file(state.topology_file)
    tls = security.platform_tls(state, recorded)
    ca = recorded.spec.security.ca
    if tls is not None and ca is not None:
        from haplane.auth.pki import PkiError

        try:
            security.adopt_ca(tls, Path(ca.cert_file), Path(ca.key_file))
        except (PkiError, OSError) as exc:
            raise PrepareError(f"spec.security.ca: {exc}") from None
    enc_file = recorded.spec.security.encryption.config_file
    if enc_file is not None:
        from haplane.auth.encryption import EncryptionError, load_config

        try:
            load_config(enc_file)
        except EncryptionError as exc:
            raise PrepareError(f"spec.security.encryption.configFile: {exc}") from None
    return recorded


async def serve(
    supervisor: Supervisor,
    *,
    on_healthy: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> int:
    """Start, serve the control socket, and stop on a signal or a shutdown request.

    Returns the exit code: 0 after an orderly stop, 1 when start-up failed."""
    import asyncio

    from .control import ControlServer

    state = supervisor.state
    state.ensure()
    pidfile.write(state.supervisor_record, pidfile.record_for("supervisor", os.getpid()))
    control = ControlServer(supervisor, state.socket)
    await control.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, control.shutdown_requested.set)
    try:
        start = asyncio.create_task(supervisor.start())
        stop_wait = asyncio.create_task(control.shutdown_requested.wait())
        done, _ = await asyncio.wait({start, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if start not in done:  # asked to stop while starting
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await start
            await supervisor.stop()
            return 0
        if start.exception() is not None:
            stop_wait.cancel()
            return 1
        extra = asyncio.create_task(on_healthy()) if on_healthy else None
        agent, agent_client = _ops_agent(supervisor)
        await stop_wait
        for task in (extra, agent):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await agent_client.close()
        await supervisor.stop()
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await control.close()
        state.supervisor_record.unlink(missing_ok=True)


def _ops_agent(supervisor: Supervisor) -> tuple[asyncio.Task[None], EtcdClient]:
    """The supervisor's agent role: approved Drills and MaintenanceActions carried out here
    (`haplane.local.ops_agent`), with the supervisor's own etcd certificate."""
    import asyncio

    from haplane.store import DEFAULT_GLOBAL_PREFIX, EtcdClient

    from .ops_agent import OpsAgent
    from .plans import global_plan

    client = EtcdClient(global_plan(supervisor.clusters).endpoints, tls=supervisor.etcd_tls)

    def kind(name: str) -> str | None:
        proc = supervisor.processes.get(name)
        return proc.spec.kind if proc is not None else None

    agent = OpsAgent(client, DEFAULT_GLOBAL_PREFIX, str(supervisor.state.root), kind)
    return asyncio.create_task(agent.run(), name="ops agent"), client


def start_detached(state: StateDir) -> subprocess.Popen[bytes]:
    """Start `python -m haplane.local.daemon` in its own session, logging to the state dir."""
    state.ensure()
    log = open(state.supervisor_log, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "haplane.local.daemon", "--state-dir", str(state.root)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        log.close()


async def wait_healthy(
    state: StateDir,
    child: subprocess.Popen[bytes],
    timeout: float,
    progress: Callable[[str], None],
) -> dict[str, object]:
    import asyncio

    client = ControlClient(state.socket, timeout=2.0)
    deadline = time.monotonic() + timeout
    last_phase = ""
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(
                f"supervisor exited with code {child.returncode}; its log ({state.supervisor_log}):"
                f"\n{_tail_text(state.supervisor_log)}"
            )
        with contextlib.suppress(SupervisorUnreachable):
            snap = await client.snapshot()
            phase = str(snap.get("phase"))
            if phase != last_phase:
                progress(f"supervisor: {phase}")
                last_phase = phase
            if phase == "healthy":
                return snap
            if phase == "failed":
                raise RuntimeError(f"start-up failed: {snap.get('error')}")
        await asyncio.sleep(0.1)
    raise TimeoutError(f"not healthy within {timeout:.0f}s; see {state.supervisor_log}")


def down(state: StateDir, timeout: float = 30.0) -> list[str]:
    """Stop the supervisor and everything it started. Returns what had to be killed by record."""
    rec = supervisor_record(state)
    if rec is not None:
        import asyncio

        with contextlib.suppress(Exception):
            asyncio.run(ControlClient(state.socket, timeout=5.0).shutdown())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and rec.alive():
            time.sleep(0.05)
        if rec.alive():
            pidfile.terminate([rec], grace=5.0)
    leftovers = [r for r in map(pidfile.read, sorted(state.run_dir.glob("*.json"))) if r]
    killed = pidfile.terminate(leftovers)
    for path in state.run_dir.glob("*.json"):
        path.unlink(missing_ok=True)
    state.socket.unlink(missing_ok=True)
    state.supervisor_record.unlink(missing_ok=True)
    try:
        site_network.cleanup(state)  # after the processes: nothing holds the namespaces now
    except NetnsError as exc:
        print(f"warning: {exc}", file=sys.stderr)
    return killed


def _tail_text(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_daemon(state: StateDir) -> int:
    """Entry of the detached supervisor."""
    import asyncio

    from haplane.topology import load_file

    from .supervisor import Supervisor, configure_logging

    configure_logging()
    topology = load_file(state.topology_file)
    return asyncio.run(serve(Supervisor(topology, state, progress=_print_progress)))


def _print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
