"""`python -m haplane.local.daemon --state-dir DIR`: the detached supervisor of `haplane up -d`.

Layer: run (local).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .runner import run_daemon
from .state_dir import StateDir


def main() -> int:
    parser = argparse.ArgumentParser(prog="haplane-supervisor")
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args()
    return run_daemon(StateDir(args.state_dir))


if __name__ == "__main__":
    sys.exit(main())
