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
