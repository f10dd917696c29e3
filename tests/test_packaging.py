"""The wheel carries the examples, so `haplane up --example two-regions` works when installed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_wheel_contains_examples_and_entry_point(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("haplane-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "haplane/examples/two-regions.yaml" in names
        assert "haplane/py.typed" in names
        # the console serves these itself (no CDN), with their licences
        for static in ("htmx.min.js", "htmx-ext-sse.min.js", "console.css", "htmx.LICENSE",
                       "htmx-ext-sse.LICENSE"):  # fmt: skip
            assert f"haplane/console/static/{static}" in names, static
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "haplane = haplane.cli.entry:main" in z.read(entry).decode()  # quick path first
