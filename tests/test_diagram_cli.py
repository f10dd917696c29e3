"""`haplane diagram` through the real command: SVG, PNG to a file, Mermaid, --fail, bad input."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "haplane.cli", "diagram", "--example", "two-regions", *args],
        capture_output=True,
        timeout=120,
    )


def test_svg_png_and_mermaid(tmp_path: Path):
    r = run("--fail", "site eu-west")
    assert r.returncode == 0, r.stderr
    root = ET.fromstring(r.stdout)  # valid XML
    text = " ".join(t for t in root.itertext())  # Graphviz escapes "-" as &#45;
    assert "eu-central/api-1" in text and "DOWN" in text and "gate-witness" in text
    png = tmp_path / "t.png"
    assert run("--format", "png", "-o", str(png)).returncode == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    mermaid = run("--format", "mermaid").stdout.decode()
    assert mermaid.startswith("flowchart") and "control-3" in mermaid


def test_bad_input_is_a_clear_error():
    r = run("--fail", "eu-west/etcd-9")
    assert r.returncode == 2 and b"valid examples" in r.stderr
    r = run("--format", "gif")
    assert r.returncode == 2 and b"svg, png or mermaid" in r.stderr
