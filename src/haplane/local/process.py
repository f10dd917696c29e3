"""One supervised process: spawn, watch, restart with backoff, and the fault primitives.

Layer: run (local). Starts and signals only the process it spawned itself.

Invariants:
- children die with the supervisor: each is spawned with PR_SET_PDEATHSIG=SIGKILL, in its own
  session (Ctrl-C reaches only the supervisor, which stops children in order);
- a process that exits on its own is restarted with exponential backoff (0.5 s doubling to 10 s,
  reset after 10 s of uptime); one stopped on purpose (`kill`, `term`) stays down until
  `restart`;
- the pid record (pid + start time) exists exactly while the process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from . import pidfile

# the fault vocabulary is the control API's (defined with its light client)
from .control_client import FAULT_ACTIONS as FAULT_ACTIONS
from .control_client import FaultAction as FaultAction

State = Literal["starting", "running", "paused", "backoff", "killed", "stopped", "exited"]

_PR_SET_PDEATHSIG = 1
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 10.0
STABLE_AFTER = 10.0


_SETPRIV = shutil.which("setpriv")  # util-linux, Essential on Debian


def _die_with_parent(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """The command (and preexec hook) that makes a child get SIGKILL when we die.

    Preferred: `setpriv --pdeathsig KILL -- argv`, which sets PR_SET_PDEATHSIG in C and execs.
    Running Python between fork and exec (preexec_fn) is unsafe once gRPC threads exist: a child
    crashed with SIGSEGV there (found by the port-race test). The fallback hook therefore only
    calls a prctl resolved beforehand, in the parent."""
    if _SETPRIV is not None:
        return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill)

    return argv, preexec


@dataclass
class ProcessSpec:
    name: str  # qualified, e.g. eu-west/etcd-1
    kind: str  # etcd, api, balancer, gate
    argv: list[str]
    log_path: Path
    pid_path: Path
    env: dict[str, str] | None = None


@dataclass
class ManagedProcess:
    spec: ProcessSpec
    on_event: Callable[[str, dict[str, Any]], None] = lambda event, fields: None
    # awaited before every start, first or restart (e.g. an API replica's region fence key
    # brought in line with the global record); it must not raise
    before_spawn: Callable[[], Awaitable[None]] | None = None
    state: State = "stopped"
    restarts: int = 0
    exit_code: int | None = None
    started_at: float | None = None
    _proc: asyncio.subprocess.Process | None = None
    _held: bool = False  # stopped on purpose: do not restart
    _shutting_down: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _monitor: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "kind": self.spec.kind,
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "exitCode": self.exit_code,
            "uptimeSeconds": round(time.monotonic() - self.started_at, 1)
            if self.started_at is not None and self.pid is not None
            else None,
        }

    # ---- lifecycle -----------------------------------------------------------------------

    async def spawn(self) -> None:
        """Start the process once (no monitoring; see `supervise`)."""
        if self.before_spawn is not None:
            await self.before_spawn()
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.state = "starting"
        argv, preexec = _die_with_parent(self.spec.argv)
        with open(self.spec.log_path, "ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.spec.env,
                start_new_session=True,
                preexec_fn=preexec,
            )
        # A child that already exited (e.g. its port was taken) has nothing to record.
        with contextlib.suppress(psutil.NoSuchProcess):
            pidfile.write(self.spec.pid_path, pidfile.record_for(self.spec.name, self._proc.pid))
        self.started_at = time.monotonic()
        self.exit_code = None
        self.state = "running"
        self.on_event("started", {"component": self.spec.name, "pid": self._proc.pid})

    async def wait_exit(self) -> int:
        proc = self._proc
        assert proc is not None
        rc = await proc.wait()
        self._forget(proc)
        self.exit_code = rc
        return rc

    def _forget(self, proc: asyncio.subprocess.Process) -> None:
        """Remove the pid record if it still describes `proc` (a restart may have replaced it)."""
        rec = pidfile.read(self.spec.pid_path)
        if rec is not None and rec.pid == proc.pid:
            self.spec.pid_path.unlink(missing_ok=True)

    def supervise(self) -> None:
        """Watch the running process and restart it when it exits on its own."""
        if self._monitor is None:
            self._monitor = asyncio.create_task(
                self._supervise(), name=f"supervise {self.spec.name}"
            )

    async def _supervise(self) -> None:
        backoff = BACKOFF_INITIAL
        while True:
            if self._proc is not None and self._proc.returncode is None:
                rc = await self.wait_exit()
                if self._shutting_down:
                    self.state = "stopped"
                    return
                if not self._held:
                    self.on_event("exited", {"component": self.spec.name, "exitCode": rc})
            if self._shutting_down:
                return
            if self._held:
                self._wake.clear()
                await self._wake.wait()  # `restart` or shutdown
                continue
            uptime = time.monotonic() - (self.started_at or 0.0)
            if uptime >= STABLE_AFTER:
                backoff = BACKOFF_INITIAL
            self.state = "backoff"
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            if self._shutting_down or self._held:
                continue
            backoff = min(backoff * 2, BACKOFF_MAX)
            self.restarts += 1
            try:
                await self.spawn()
            except OSError as exc:
                self.state = "exited"
                self.on_event("spawn-failed", {"component": self.spec.name, "error": str(exc)})

    async def stop(self, grace: float = 5.0) -> None:
        """Orderly stop for shutdown: SIGTERM, then SIGKILL after `grace`; no restart."""
        self._shutting_down = True
        self._wake.set()
        await self._signal_and_wait(signal.SIGTERM, grace)
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        self.state = "stopped"

    async def _signal_and_wait(self, sig: signal.Signals, grace: float) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
            proc.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        self._forget(proc)

    # ---- faults --------------------------------------------------------------------------

    async def fault(self, action: FaultAction) -> None:
        proc = self._proc
        running = proc is not None and proc.returncode is None
        self.on_event("fault", {"component": self.spec.name, "action": action})
        if action in ("kill", "term"):
            self._held = True
            if running and proc is not None:
                sig = signal.SIGKILL if action == "kill" else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                    if sig == signal.SIGTERM:
                        proc.send_signal(signal.SIGCONT)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=10)
            self.state = "killed" if action == "kill" else "stopped"
        elif action in ("pause", "resume"):
            if not running or proc is None:
                raise ProcessNotRunning(f"{self.spec.name} is not running (state {self.state})")
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGSTOP if action == "pause" else signal.SIGCONT)
            self.state = "paused" if action == "pause" else "running"
        elif action == "restart":
            self._held = True  # keep the monitor from racing us with a backoff restart
            await self._signal_and_wait(signal.SIGTERM, grace=5.0)
            if self._proc is not None and self._proc.returncode is not None:
                self.exit_code = self._proc.returncode
            self._held = False
            await self.spawn()
            self._wake.set()
            self.supervise()
        else:  # pragma: no cover - guarded by the Literal type and the control API
            raise ValueError(action)


class ProcessNotRunning(Exception):
    pass
