"""Every `haplane` invocation imports haplane.cli.main and registers every command: that must not
pull in what only some commands use (issue 20: 0.6-1.0 s per command, most of it imports).
Checked in fresh interpreters, by what lands in sys.modules, not by timing (bench/cli_startup.py
times it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from haplane.topology import example_text

# What commands import inside their functions: the topology model (pydantic), etcd (grpc,
# aetcd), the supervisor and its HTTP (aiohttp), processes (psutil), certificates, YAML, and
# rich's tables and live view.
HEAVY = (
    "aiohttp",
    "aetcd",
    "asyncio",
    "cryptography",
    "grpc",
    "psutil",
    "pydantic",
    "yaml",
    "rich.live",
    "rich.table",
    "haplane.api",
    "haplane.auth",
    "haplane.store",
    "haplane.topology",
    "haplane.local.control",
    "haplane.local.global_control",
    "haplane.local.process",
    "haplane.local.runner",
    "haplane.local.security",
    "haplane.local.status",
    "haplane.local.supervisor",
)

PROBE = """
import json, sys
argv = sys.argv[1:]
if argv:
    sys.argv = ["haplane", *argv]
    from haplane.cli.main import main
    try:
        main()
    except SystemExit:
        pass
else:
    import haplane.cli.main
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def loaded(*argv: str) -> set[str]:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stderr.strip().splitlines()[-1]))


def heavy_in(modules: set[str]) -> list[str]:
    return [h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in modules)]


def test_importing_the_command_is_light():
    modules = loaded()
    assert heavy_in(modules) == []
    assert "rich" not in modules  # the consoles are made on first use


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["status", "--help"],
        ["pki", "rotate", "--help"],  # a sub-app's command
    ],
)
def test_help_is_light(argv: list[str]):
    """Help renders from the registered commands alone. Typer itself brings rich for the layout
    and, once it parses a command's parameters, pydantic (it coerces values with TypeAdapters)."""
    typers = ("pydantic", "rich.live", "rich.table")
    assert [h for h in heavy_in(loaded(*argv)) if h not in typers] == []


def nothing_started(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haplane.cli", *argv, "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (["status"], ()),
        (["status", "--json"], ()),
        (["down"], ("haplane.local.runner",)),
        (["fault", "kill", "eu-west/etcd-1"], ("asyncio",)),
    ],
)
def test_commands_with_nothing_started_are_light(
    tmp_path: Path, argv: list[str], allowed: tuple[str, ...]
):
    """What scripts and tests call hundreds of times. With nothing started, `status` says so
    before it imports the status machinery (etcd, grpc, aiohttp, the topology model); `down`
    reads no pid file (runner imports the supervisor, its control server, etcd and YAML only
    where `up` needs them; pidfile imports psutil on first use); `fault` finds no socket with
    the light control client (haplane.local.control_client: aiohttp only for a request)."""
    modules = loaded(*argv, "--state-dir", str(tmp_path))
    assert [h for h in heavy_in(modules) if h not in ("pydantic", *allowed)] == []


def test_commands_with_nothing_started_say_so(tmp_path: Path):
    """The same commands' output and exit codes, as they were before they became light."""
    for argv in (["status"], ["status", "--json"]):
        r = nothing_started(tmp_path, *argv)
        assert (r.returncode, r.stdout) == (1, "")
        assert (
            r.stderr == f"error: no topology has been started in {tmp_path} (`haplane up` first)\n"
        )
    r = nothing_started(tmp_path, "fault", "kill", "eu-west/etcd-1")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == f"error: no supervisor socket at {tmp_path / 'supervisor.sock'}\n"
    r = nothing_started(tmp_path, "fault", "explode", "eu-west/etcd-1")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.startswith("error: unknown action 'explode'; use one of kill, term, pause")
    r = nothing_started(tmp_path, "down")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", f"down ({tmp_path})\n")


def test_control_client_still_says_when_the_supervisor_does_not_answer(tmp_path: Path):
    """A socket path nobody listens on: the light client imports aiohttp for the request and
    reports the refused connection as SupervisorUnreachable, as before."""
    import asyncio

    from haplane.local.control import ControlClient as Reexported
    from haplane.local.control_client import ControlClient, SupervisorUnreachable

    assert Reexported is ControlClient
    sock = tmp_path / "supervisor.sock"
    sock.touch()
    with pytest.raises(SupervisorUnreachable, match="does not answer"):
        asyncio.run(ControlClient(sock, timeout=5.0).snapshot())


def test_missing_credentials_still_exit_1(tmp_path: Path):
    """main() recognises MissingCredentials without importing haplane.local.security up front:
    a state dir with a topology but no PKI still says so and exits 1, without a traceback."""
    (tmp_path / "topology.yaml").write_text(example_text("two-regions"))
    r = subprocess.run(
        [sys.executable, "-m", "haplane.cli", "failback", "status", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(f"error: {tmp_path} has no PKI"), r.stderr
    assert "Traceback" not in r.stderr
