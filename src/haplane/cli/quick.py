"""Layer: run (cli). The commands scripts call in loops, answered before typer is imported:
`haplane version`, `haplane fault ACTION NAME [--state-dir DIR]`, `haplane status --json
[--state-dir DIR]` and `haplane --help`.

Typer, with click, pydantic and rich behind it, costs ~80 ms to import on this machine, more
than the rest of such a command; kubectl answers in ~50 ms. So `entry.main` offers argv here
first. Only a plain, valid invocation is answered here; anything else (a subcommand's
`--help`, an unknown option or action, a missing argument) returns None and goes to typer,
whose errors and help stay the only ones. The output is the typer command's, to the byte
(tests compare them). `haplane --help` itself is answered from a stored rendering of typer's
(`help_text`, kept equal to it by a test): the same bytes into a pipe, the same text
uncoloured at 80 columns in a terminal.

The fault request is one HTTP POST over the supervisor's Unix socket on a bare socket
(`local.unix_http`, blocking: asyncio costs more to import than the request takes, and
`http.client` with the `ssl` it imports ~35 ms more), as is the status's GET.
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
    if argv[:1] == ["status"]:
        parsed_status = _status_json_args(argv[1:])
        if parsed_status is not None:
            return status_json(parsed_status[0])
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


def _status_json_args(args: list[str]) -> tuple[Path | None] | None:
    """`status --json [--state-dir DIR]`: its state dir (None: the default one); None for
    anything else (the table, `--help`, an unknown option: typer's)."""
    rest = [a for a in args if a != "--json"]
    if len(rest) != len(args) - 1:
        return None
    if not rest:
        return (None,)
    if len(rest) == 2 and rest[0] == "--state-dir" and not rest[1].startswith("-"):
        return (Path(rest[1]),)
    if len(rest) == 1 and rest[0].startswith("--state-dir=") and len(rest[0]) > 12:
        return (Path(rest[0].split("=", 1)[1]),)
    return None


def status_json(state_dir: Path | None) -> int | None:
    """`haplane status --json` of a started topology, its exit code (0 healthy, 3 not); None
    when no topology was started there or anything goes wrong, for typer to say it its way.

    The running supervisor gathers it (`_supervisor_status`); without one, this process does.
    Typer, click and rich are not imported (their ~80 ms would be a quarter of the command),
    nor the topology model when the status plan cache holds (`local.status_plan`)."""
    from haplane.local.state_dir import StateDir, default_state_dir

    state = StateDir(state_dir or default_state_dir())
    if not state.topology_file.exists():
        return None
    asked = _supervisor_status(state)
    if asked is not None:
        doc, healthy = asked
    else:  # no supervisor (or it did not answer): everything from here
        import asyncio

        from haplane.local.status import gather_status

        try:
            report = asyncio.run(gather_status(state))
        except Exception:  # typer's command asks again, and reports it as it does
            return None
        doc, healthy = report.as_dict(), report.healthy
    print_status_json(doc)
    return 0 if healthy else 3


# how long the supervisor may take before this command asks everything itself (it answers
# 503 after 6.5 s: a gather whose every phase waits out its timeouts takes ~7 s)
SUPERVISOR_STATUS_TIMEOUT = 8.0


def _supervisor_status(state: Any) -> tuple[dict[str, Any], bool] | None:
    """The status the running supervisor gathers now (`GET /v1/status` on its socket): its
    modules are loaded and its etcd channels open, so this command imports neither asyncio
    nor etcd's client; None when there is no supervisor or it does not answer with one."""
    if not state.socket.exists():
        return None
    import json

    from haplane.local.unix_http import UnixHttpError, request

    try:
        code, body = request(
            str(state.socket), "GET", "/v1/status", timeout=SUPERVISOR_STATUS_TIMEOUT
        )
        doc = json.loads(body) if code == 200 else None
    except (UnixHttpError, ValueError):
        return None
    if not (isinstance(doc, dict) and isinstance(doc.get("report"), dict)):
        return None  # an older supervisor (404), or not a status
    report: dict[str, Any] = doc["report"]
    report["state_dir"] = str(state.root)  # as this command was given it, not the supervisor
    return report, bool(doc.get("healthy"))


def print_status_json(doc: dict[str, Any]) -> None:
    """What `status --json` prints, on either path."""
    import json

    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


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
    import json

    from haplane.local.state_dir import StateDir, default_state_dir
    from haplane.local.unix_http import MalformedAnswer, UnixHttpError, request

    state = StateDir(state_dir or default_state_dir())
    path = state.socket
    if not path.exists():
        print(f"error: no supervisor socket at {path}", file=sys.stderr)
        return 1
    try:
        status, body = request(
            str(path),
            "POST",
            "/v1/faults",
            {"action": action, "component": name},
            timeout=30.0,
        )
    except MalformedAnswer as exc:
        print(f"error: unexpected answer from the supervisor: {exc}", file=sys.stderr)
        return 1
    except UnixHttpError as exc:
        print(f"error: supervisor at {path} does not answer: {exc}", file=sys.stderr)
        return 1
    try:
        data: Any = json.loads(body) if body else None
    except ValueError:  # it answered, but not JSON
        print(f"error: unexpected answer from the supervisor ({status})", file=sys.stderr)
        return 1
    if status >= 400:
        said = data.get("error", data) if isinstance(data, dict) else data
        print(f"error: {said}", file=sys.stderr)
        return 1
    if not (isinstance(data, dict) and {"name", "state", "pid"} <= set(data)):
        print(f"error: unexpected answer from the supervisor: {data!r}", file=sys.stderr)
        return 1
    print(f"{data['name']}: {data['state']} (pid {data['pid'] or '-'})")
    return 0
