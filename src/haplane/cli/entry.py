"""Layer: run (cli). The `haplane` command's entry point: the quick commands (`quick`) first,
then everything else through typer (`main`), imported only then."""

from __future__ import annotations

import sys


def main() -> None:
    from haplane.cli.quick import run

    code = run(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from haplane.cli.main import main as full

    full()
