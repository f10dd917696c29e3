"""Logical backups on a schedule (topology `spec.global.backups.logical`): the supervisor runs
`haplane backup create scheduled-<UTC time>` (the command an operator types, as the ops agent
runs commands) and deletes the oldest scheduled ones beyond `keep`.

Layer: run (`haplane.local`). Runs the CLI as a subprocess with the state dir (so the backup
is made through the API, as haplane-admin, with the platform's sealing key); reads
`STATE/backups/logical/` to tell what is due. Backups named otherwise (by hand) are never
deleted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from haplane.topology import Topology

from .ops_agent import run_primitive
from .state_dir import StateDir

PREFIX = "scheduled-"
RETRY_AFTER = 300.0
RUN_TIMEOUT = 1800.0

log = logging.getLogger("haplane.local.backup_schedule")


def backups_root(state: StateDir) -> Path:
    return state.root / "backups" / "logical"


def scheduled(root: Path) -> list[tuple[float, Path]]:
    """The scheduled backups (finished ones: a manifest), oldest first, with their times."""
    out = []
    for d in root.glob(f"{PREFIX}*"):
        stamp = d.name.removeprefix(PREFIX)
        if not (d / "manifest.json").exists():
            continue
        try:
            when = datetime.strptime(stamp, "%Y%m%dt%H%M%Sz").replace(tzinfo=UTC)
        except ValueError:
            continue
        out.append((when.timestamp(), d))
    return sorted(out)


async def keep_logical_backups(
    topology: Topology,
    state: StateDir,
    emit: Callable[[str, dict[str, object]], None],
    clock: Callable[[], float] = time.time,
) -> None:
    from .backup_metrics import LOGICAL, clear_failure, record_failure, write_metrics

    def metrics() -> None:  # a failure to write them only makes them late
        try:
            write_metrics(topology, state)
        except OSError as exc:
            log.warning("backup metrics not written: %s", exc)

    schedule = topology.spec.global_.backups.logical
    every = float(schedule.every_seconds)
    started = clock()
    failed_at: float | None = None
    metrics()
    while True:
        root = backups_root(state)
        kept = scheduled(root)
        due = kept[-1][0] + every if kept else max(started + every, clock())
        if failed_at is not None:
            due = max(due, failed_at + min(every, RETRY_AFTER))
        wait = due - clock()
        if wait > 0:
            await asyncio.sleep(min(wait, 60.0))
            continue
        name = f"{PREFIX}{datetime.fromtimestamp(clock(), UTC):%Y%m%dt%H%M%Sz}"
        argv = [sys.executable, "-m", "haplane.cli", "backup", "create", name,
                "--state-dir", str(state.root)]  # fmt: skip
        code, out, err = await run_primitive(argv, RUN_TIMEOUT)
        if code != 0:
            failed_at = clock()
            lines = (err or out).strip().splitlines()
            emit("backup-failed", {"name": name, "error": lines[-1] if lines else "failed"})
            with contextlib.suppress(OSError):
                record_failure(state, LOGICAL, failed_at)
            metrics()
            continue
        failed_at = None
        with contextlib.suppress(OSError):
            clear_failure(state, LOGICAL)
        emit("backup", {"name": name})
        for _, d in scheduled(root)[: -schedule.keep]:
            shutil.rmtree(d, ignore_errors=True)
            emit("backup-pruned", {"name": d.name})
        metrics()
