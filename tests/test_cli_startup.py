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
    the light control client (haplane.local.control_client: the standard library's HTTP)."""
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
    """A socket path nobody listens on: the light client (the standard library's HTTP in a
    thread) reports the refused connection as SupervisorUnreachable, as before."""
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


ENTRY_PROBE = """
import json, sys
sys.argv = ["haplane", *sys.argv[1:]]
from haplane.cli.entry import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
sys.exit(code)
"""


def through_entry(*argv: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    r = subprocess.run(
        [sys.executable, "-c", ENTRY_PROBE, *argv], capture_output=True, text=True, timeout=60
    )
    *_, modules = r.stderr.strip().splitlines()
    return r, set(json.loads(modules))


def typer_path(*argv: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; sys.argv = ['haplane', *sys.argv[1:]]; from haplane.cli.main import main; main()"  # noqa: E501
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60
    )


QUICK_HEAVY = ("typer", "click", "rich", "pydantic", "aiohttp", "asyncio", "grpc", "yaml")


def test_quick_commands_skip_typer_and_say_the_same(tmp_path: Path):
    """`version` and `fault` are answered before typer is imported, with the typer command's
    own output and exit code."""
    from http.server import BaseHTTPRequestHandler

    from tests.fake_supervisor import serving

    r, modules = through_entry("version")
    assert r.returncode == 0 and r.stdout.startswith("haplane ")
    assert [m for m in modules if m.split(".")[0] in QUICK_HEAVY] == []
    assert r.stdout == typer_path("version").stdout

    args = ["fault", "kill", "eu-west/etcd-1", "--state-dir", str(tmp_path)]
    r, modules = through_entry(*args)
    assert [m for m in modules if m.split(".")[0] in QUICK_HEAVY] == []
    t = typer_path(*args)
    assert (r.returncode, r.stdout) == (t.returncode, t.stdout) == (1, "")
    assert r.stderr.splitlines()[0] == t.stderr.strip()  # no socket

    # a supervisor that answers: the same line, and the same refusal
    ok = (200, {"name": "eu-west/etcd-1", "state": "killed", "pid": None})
    known = ", ".join(f"[eu-west/etcd-{i}]" for i in range(30))  # long, with brackets
    refused = (404, {"error": f"no component named eu-west/x; known: {known}"})
    answers = [ok, ok, refused, refused]  # quick, typer; quick, typer
    asked: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            asked.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            status, body = answers[len(asked) - 1]
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    with serving(tmp_path / "supervisor.sock", Handler):
        quick_ok, _ = through_entry(*args)
        typer_ok = typer_path(*args)
        wrong = ["fault", "term", "eu-west/x", f"--state-dir={tmp_path}"]
        quick_no, _ = through_entry(*wrong)
        typer_no = typer_path(*wrong)
    assert quick_ok.stdout == "eu-west/etcd-1: killed (pid -)\n", quick_ok.stderr
    assert typer_ok.stdout == quick_ok.stdout, typer_ok.stderr
    assert quick_ok.returncode == typer_ok.returncode == 0
    assert (quick_no.returncode, typer_no.returncode) == (1, 1)
    # to the byte: no wrapping of a long line, no markup taken from brackets
    assert quick_no.stderr.splitlines()[:-1] == typer_no.stderr.splitlines(), typer_no.stderr
    assert "[eu-west/etcd-29]" in typer_no.stderr
    assert "no component named eu-west/x" in typer_no.stderr
    assert [a["action"] for a in asked] == ["kill", "kill", "term", "term"]


def test_the_stored_help_is_typers():
    """`haplane --help` answered from `help_text` is typer's rendering, to the byte."""
    from haplane.cli import help_text

    assert help_text.text() == help_text.render(), (
        "haplane --help changed: write it again with "
        "`.venv/bin/python -m haplane.cli.help_text --write`"
    )


def test_help_is_answered_before_typer_into_a_pipe():
    import os

    r, modules = through_entry("--help")
    assert r.returncode == 0 and "Usage: haplane [OPTIONS] COMMAND" in r.stdout
    assert [m for m in modules if m.split(".")[0] in QUICK_HEAVY] == []
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    code = "import sys; sys.argv = ['haplane', '--help']; from haplane.cli.main import main; main()"
    t = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)  # fmt: skip
    assert (r.returncode, r.stdout) == (t.returncode, t.stdout)
    # another width asked for: typer's own
    wide = subprocess.run([sys.executable, "-c", ENTRY_PROBE, "--help"], capture_output=True,
                          text=True, env={**env, "COLUMNS": "120"}, timeout=60)  # fmt: skip
    *_, loaded_modules = wide.stderr.strip().splitlines()
    assert "typer" in json.loads(loaded_modules)
    assert max(len(line) for line in wide.stdout.splitlines()) == 120


@pytest.mark.parametrize(
    "argv", [["fault", "--help"], ["fault", "explode", "x"], ["fault", "kill"], ["versio"]]
)
def test_anything_else_goes_to_typer(argv: list[str]):
    """Help, a wrong action, a missing argument: typer's help and errors, not the quick
    path's (it imports typer)."""
    r, modules = through_entry(*argv)
    assert "typer" in modules
    t = typer_path(*argv)
    assert (r.returncode, r.stdout) == (t.returncode, t.stdout)
