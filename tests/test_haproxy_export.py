"""`haplane export haproxy`: HAProxy accepts the file (`haproxy -c`), every balancer fronts its
region's replicas with the same checks, and gates point at the active region only."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from haplane.auth.pki import Pki
from haplane.local.ports import PortRegistry
from haplane.local.state_dir import StateDir
from haplane.topology.loader import example_text
from tests.topology_helpers import haplane


def test_export_needs_the_ca_and_issues_nothing(tmp_path: Path):
    """Before `up` there is no platform CA for the checks to trust: a clear error, and no
    certificate is made (that is `up`'s, which keeps the PKI consistent with what runs)."""
    state = tmp_path / "state"
    export = ["export", "haproxy", "--example", "two-regions", "--region", "eu-west"]
    r = haplane(state, *export, check=False)
    assert r.returncode == 1 and "run `haplane up` first" in " ".join(r.stderr.split())
    assert not (state / "pki").exists()
    # a state dir holding another topology is not exported over
    StateDir(state).ensure()
    other = yaml.safe_load(example_text("two-regions"))
    other["metadata"]["name"] = "another"
    StateDir(state).topology_file.write_text(yaml.safe_dump(other))
    r = haplane(state, *export, check=False)
    assert r.returncode == 2 and "holds topology 'another'" in " ".join(r.stderr.split())


def test_export_haproxy_is_valid_and_mirrors_the_topology(tmp_path: Path):
    state = tmp_path / "state"
    out = tmp_path / "haproxy.cfg"
    # the topology's own CA (a relative path, from the file's directory): what `up` adopts
    Pki(tmp_path / "conf" / "ca").ensure_ca("my CA")
    doc = yaml.safe_load(example_text("two-regions"))
    doc["spec"]["security"] = {"ca": {"certFile": "ca/ca.crt", "keyFile": "ca/ca.key"}}
    topology = tmp_path / "conf" / "topology.yaml"
    topology.write_text(yaml.safe_dump(doc))
    # nothing is up: the active region is unknown, so it must be named
    r = haplane(state, "export", "haproxy", str(topology), "-o", str(out), check=False)
    assert r.returncode == 1 and "--region" in r.stderr and not out.exists()
    r = haplane(state, "export", "haproxy", str(topology), "--region", "x", check=False)
    assert r.returncode == 2
    export = ["export", "haproxy", str(topology), "--region", "eu-west"]
    haplane(state, *export, "-o", str(out))
    text = out.read_text()
    assert f"check-ssl verify required ca-file {tmp_path / 'conf/ca/ca.crt'}" in text
    assert not (state / "pki").exists()
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
