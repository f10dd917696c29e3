"""`haplane analyse` through the real command: summary, JSON, the refusal of a huge enumeration
(with the sampling it suggests), and a topology that validate rejects still analysed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haplane.cli", "analyse", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_analyse_example_in_the_seeds_terms_and_as_json():
    r = run("--example", "two-regions")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("survives every single failure (46 sets)")
    assert "double failures stop writes" in r.stdout and "unordered combinations" in r.stderr
    doc = json.loads(run("--example", "two-regions", "--json").stdout)
    assert doc["singleFailures"] == 46 and doc["evaluatedSets"] == 46 + 1035
    assert doc["bySize"]["1"].get("stops-writes", 0) == 0
    lost = {tuple(g["outcome"]["lostQuorum"]) for g in doc["groups"] if g["size"] == 2}
    assert ("global/etcd",) in lost


def test_a_sync_pair_is_printed_as_losing_nothing(tmp_path: Path):
    from haplane.topology import example_text

    text = example_text("two-regions")
    assert "mode: Async, maxLagMs: 2000}" in text
    path = tmp_path / "sync.yaml"
    path.write_text(text.replace("mode: Async, maxLagMs: 2000}", "mode: Sync}", 1))
    r = run(str(path))
    assert r.returncode == 0, r.stderr
    assert "(data: none (sync))" in r.stdout and "replication lag" not in r.stdout
    doc = json.loads(run(str(path), "--json").stdout)
    losses = {g["outcome"]["dataLoss"] for g in doc["groups"] if g["outcome"]["failedOver"]}
    assert losses == {"none-sync"}
    r = run("--example", "two-regions")
    assert "(data: replication lag (async))" in r.stdout


def test_a_huge_enumeration_is_refused_with_a_way_out():
    r = run("--example", "two-regions", "--max-failures", "8")
    assert r.returncode == 2 and "--sample" in r.stderr and "failure sets" in r.stderr
    r = run("--example", "two-regions", "--max-failures", "8", "--sample", "200", "--json")
    doc = json.loads(r.stdout)
    assert doc["sampled"] is True and doc["evaluatedSets"] == 200


def test_a_file_with_ha_errors_is_still_analysed(tmp_path: Path):
    from haplane.topology import example_text

    text = example_text("two-regions").replace(
        "            - {name: etcd-3, zone: c}\n", "", 1
    )  # eu-west etcd: 2 members, an error for validate
    path = tmp_path / "two-members.yaml"
    path.write_text(text)
    r = run(str(path), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    singles = [g for g in doc["groups"] if g["size"] == 1 and "eu-west/etcd" in str(g)]
    assert any("eu-west/etcd" in g["outcome"]["lostQuorum"] for g in singles)


def test_availability_estimate_and_rate_overrides():
    doc = json.loads(run("--example", "two-regions", "--availability", "--json").stdout)
    est = doc["availability"]
    assert 0.999 < est["availability"] < 1 and est["downtimeMinutesPerYear"] > 0
    assert est["contributors"] and est["method"].startswith("exact")
    # control etcd members that never fail: less downtime
    better = json.loads(
        run("--example", "two-regions", "--rate", "control etcd member=inf/1", "--json").stdout
    )["availability"]
    assert better["downtimeMinutesPerYear"] < est["downtimeMinutesPerYear"]
    r = run("--example", "two-regions", "--rate", "teapot=1/1")
    assert r.returncode == 2 and "KIND=MTBF/MTTR" in r.stderr
