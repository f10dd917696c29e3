"""Pid files that record a process's start time, so a recycled PID is never signalled.

Layer: run (local). Reads and writes files under the state dir and signals only processes whose
PID *and* start time match what haplane recorded when it started them. psutil is imported on
first use: `haplane down` with nothing recorded reads no process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil


@dataclass(frozen=True)
class PidRecord:
    name: str
    pid: int
    create_time: float  # psutil's process start time (seconds since the epoch)

    def process(self) -> psutil.Process | None:
        """The live process this record describes, or None if it is gone or the PID was reused."""
        import psutil

        try:
            p = psutil.Process(self.pid)
            if abs(p.create_time() - self.create_time) > 0.05:
                return None  # the PID now belongs to someone else
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def alive(self) -> bool:
        return self.process() is not None

    def signal(self, sig: signal.Signals) -> bool:
        p = self.process()
        if p is None:
            return False
        import psutil

        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)
            return True
        return False


def record_for(name: str, pid: int) -> PidRecord:
    import psutil

    return PidRecord(name=name, pid=pid, create_time=psutil.Process(pid).create_time())


def write(path: Path, rec: PidRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(rec)))
    os.replace(tmp, path)


def read(path: Path) -> PidRecord | None:
    try:
        data = json.loads(path.read_text())
        return PidRecord(
            name=str(data["name"]), pid=int(data["pid"]), create_time=float(data["create_time"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def terminate(records: list[PidRecord], grace: float = 5.0) -> list[str]:
    """SIGTERM each live process, SIGKILL what is left after `grace`; returns names signalled."""
    live = [r for r in records if r.signal(signal.SIGTERM)]
    for r in live:
        r.signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(r.alive() for r in live):
        time.sleep(0.05)
    for r in live:
        r.signal(signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(r.alive() for r in live):
        time.sleep(0.02)
    return [r.name for r in live]
