"""`haplane export haproxy`: HAProxy accepts the file (`haproxy -c`), every balancer fronts its
region's replicas with the same checks, and gates point at the active region only."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from haplane.local.ports import PortRegistry
from tests.topology_helpers import haplane


def test_export_haproxy_is_valid_and_mirrors_the_topology(tmp_path: Path):
    state = tmp_path / "state"
    out = tmp_path / "haproxy.cfg"
    # nothing is up: the active region is unknown, so it must be named
    r = haplane(state, "export", "haproxy", "--example", "two-regions", "-o", str(out), check=False)
    assert r.returncode == 1 and "--region" in r.stderr and not out.exists()
    r = haplane(
        state, "export", "haproxy", "--example", "two-regions", "--region", "x", check=False
    )
    assert r.returncode == 2
    export = ["export", "haproxy", "--example", "two-regions", "--region", "eu-west"]
    haplane(state, *export, "-o", str(out))
    text = out.read_text()
    check = subprocess.run(["haproxy", "-c", "-f", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # and it really starts and keeps running (`-c` does not try the file limits, for one;
    # with nothing behind it, HAProxy reports every server down, which is fine here)
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.5)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode()
    assert "Proxy eu-west_lb-1 started" in output or "eu-west_lb-1" in output, output

    ports = PortRegistry(state / "ports.json")
    # four balancers, each in front of its own region's two replicas, checked on /readyz
    frontends = re.findall(r"^frontend (\S+)", text, re.M)
    assert sorted(f for f in frontends if "_lb-" in f) == [
        "eu-central_lb-1",
        "eu-central_lb-2",
        "eu-west_lb-1",
        "eu-west_lb-2",
    ]
    west_api1 = ports.resolve("eu-west/api-1#http", "127.0.0.1", None)
    assert f"server api-1 127.0.0.1:{west_api1} check inter 200 fall 2 rise 2" in text
    # the three gates share one address: one frontend, to eu-west's balancers only
    gate_sections = text.split("# gate ")[1:]
    assert len(re.findall(r"^frontend global_gate", text, re.M)) == 1
    gate_backend = next(s for s in gate_sections if "backend" in s)
    assert "eu-west_lb-1" in gate_backend and "eu-central" not in gate_backend
    assert "option httpchk GET /healthz/region" in gate_backend
    # the same ports as `haplane up` would use: exporting twice changes nothing
    again = tmp_path / "again.cfg"
    haplane(state, *export, "-o", str(again))
    assert again.read_text() == text
