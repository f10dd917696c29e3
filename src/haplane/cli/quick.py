"""Layer: run (cli). The commands scripts call in loops, answered before typer is imported:
`haplane version`, `haplane fault ACTION NAME [--state-dir DIR]` and `haplane --help`.

Typer, with click, pydantic and rich behind it, costs ~80 ms to import on this machine, more
than the rest of such a command; kubectl answers in ~50 ms. So `entry.main` offers argv here
first. Only a plain, valid invocation is answered here; anything else (a subcommand's
`--help`, an unknown option or action, a missing argument) returns None and goes to typer,
whose errors and help stay the only ones. The output is the typer command's, to the byte
(tests compare them). `haplane --help` itself is answered from a stored rendering of typer's
(`help_text`, kept equal to it by a test): the same bytes into a pipe, the same text
uncoloured at 80 columns in a terminal.

The fault request is one HTTP POST over the supervisor's Unix socket with the standard
library: `ControlClient` (aiohttp, asyncio) costs more to import than the request takes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def run(argv: list[str]) -> int | None:
    """The exit code when `argv` is a quick command it answered; None: let typer have it."""
    if argv == ["version"]:
        return version()
    if argv == ["--help"] and _stored_help_fits():
        from haplane.cli.help_text import text

        sys.stdout.write(text())
        return 0
    if argv[:1] == ["fault"]:
        parsed = _fault_args(argv[1:])
        if parsed is not None:
            return fault(*parsed)
    return None


def _stored_help_fits() -> bool:
    """Whether `haplane --help` may be answered with the stored rendering (`help_text`): into
    a pipe exactly when typer would print the same bytes (80 columns, no colour asked for); in
    a terminal at least 80 columns wide it is that same text, uncoloured (typer would colour
    it and stretch it to the terminal's width). Anything else is typer's."""
    import os

    forced = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "_TYPER_FORCE_DISABLE_TERMINAL")
    if any(os.environ.get(name) for name in forced):
        return False
    if not sys.stdout.isatty():
        return os.environ.get("COLUMNS", "80") == "80"
    import shutil

    return shutil.get_terminal_size((0, 0)).columns >= 80


def version() -> int:
    """`haplane version` (the typer command calls it too: one output)."""
    from haplane import __version__
    from haplane.store.etcd_binary import EtcdBinaryError, find_etcd

    print(f"haplane {__version__}")
    try:
        b = find_etcd()
    except EtcdBinaryError as exc:
        print(f"etcd: {exc}", file=sys.stderr)
        return 0
    print(f"etcd {b.version_text} ({b.path}, from {b.source})")
    if b.warning:
        print(f"warning: {b.warning}", file=sys.stderr)
    return 0


def _fault_args(args: list[str]) -> tuple[str, str, Path | None] | None:
    from haplane.local.control_client import FAULT_ACTIONS

    positional: list[str] = []
    state_dir: Path | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--state-dir" and i + 1 < len(args):
            state_dir, i = Path(args[i + 1]), i + 2
            continue
        if arg.startswith("--state-dir="):
            state_dir, i = Path(arg.split("=", 1)[1]), i + 1
            continue
        if arg.startswith("-"):
            return None  # --help, or an option typer should judge
        positional.append(arg)
        i += 1
    if len(positional) != 2 or positional[0] not in FAULT_ACTIONS:
        return None
    return positional[0], positional[1], state_dir


def fault(action: str, name: str, state_dir: Path | None) -> int:
    """`haplane fault ACTION NAME`, its action known (the typer command calls it too)."""
    import http.client  # here: every command passes through this module before typer
    import json
    import socket

    from haplane.local.state_dir import StateDir, default_state_dir

    class UnixConnection(http.client.HTTPConnection):
        def __init__(self, path: str, timeout: float) -> None:
            super().__init__("supervisor", timeout=timeout)
            self.path = path

        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self.sock = sock

    state = StateDir(state_dir or default_state_dir())
    path = state.socket
    if not path.exists():
        print(f"error: no supervisor socket at {path}", file=sys.stderr)
        return 1
    conn = UnixConnection(str(path), timeout=30.0)
    try:
        body = json.dumps({"action": action, "component": name})
        conn.request("POST", "/v1/faults", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data: Any = json.loads(resp.read() or b"null")
    except (OSError, http.client.HTTPException) as exc:
        print(f"error: supervisor at {path} does not answer: {exc}", file=sys.stderr)
        return 1
    except ValueError:  # it answered, but not JSON
        print(f"error: unexpected answer from the supervisor ({resp.status})", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if resp.status >= 400:
        said = data.get("error", data) if isinstance(data, dict) else data
        print(f"error: {said}", file=sys.stderr)
        return 1
    if not (isinstance(data, dict) and {"name", "state", "pid"} <= set(data)):
        print(f"error: unexpected answer from the supervisor: {data!r}", file=sys.stderr)
        return 1
    print(f"{data['name']}: {data['state']} (pid {data['pid'] or '-'})")
    return 0
