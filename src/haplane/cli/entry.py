"""Layer: run (cli). The `haplane` command's entry point: the quick commands (`quick`) first,
then everything else through typer (`main`), imported only then."""

from __future__ import annotations

import sys


def main() -> None:
    code: int | None = None
    try:
        from haplane.cli.quick import run
    except ImportError:  # never worse than the full command
        pass
    else:
        try:
            code = run(sys.argv[1:])
        except KeyboardInterrupt:
            sys.exit(130)  # as the full command does
    if code is not None:
        sys.exit(code)
    from haplane.cli.main import main as full

    full()
