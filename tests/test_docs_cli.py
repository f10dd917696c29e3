"""`haplane docs` through the real command: Markdown to stdout or a file, and the HTML page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_docs_markdown_and_html(tmp_path: Path):
    md, page = tmp_path / "t.md", tmp_path / "t.html"
    args = ["docs", "--example", "two-regions", "-o", str(md), "--html", str(page)]
    r = subprocess.run(
        [sys.executable, "-m", "haplane.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    text = md.read_text()
    for section in ("## Inventory", "## Validation", "## Failure tolerance", "## Availability"):
        assert section in text
    assert "```mermaid" in text and "haplane failover --to eu-central" in text
    html = page.read_text()
    assert "<table>" in html and "<svg" in html  # the diagram inline (Graphviz installed)
