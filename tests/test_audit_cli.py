"""`haplane audit`: every replica's audit log merged into one time-ordered view, filtered."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import typer
from typer.testing import CliRunner

from haplane.auth.audit import AuditLog
from haplane.cli.audit import line, parse_since
from haplane.cli.main import app
from haplane.local.state_dir import StateDir

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def event(t: str, user: str, verb: str, resource: str, name: str, code: int = 200) -> dict:
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": f"{t}-{user}",
        "stage": "ResponseComplete",
        "requestURI": f"/api/v1/namespaces/dev/{resource}/{name}",
        "verb": verb,
        "user": {"username": user, "groups": ["system:authenticated"]},
        "objectRef": {"resource": resource, "namespace": "dev", "name": name, "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": t,
        "stageTimestamp": t,
        "annotations": {"authorization.k8s.io/decision": "allow" if code < 400 else "forbid"},
    }


def test_parse_since():
    assert parse_since("10m", NOW) == datetime(2026, 12, 5, 11, 50, tzinfo=UTC)
    assert parse_since("2h", NOW) == datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    assert parse_since("2026-12-05T11:00:00Z") == datetime(2026, 12, 5, 11, 0, tzinfo=UTC)
    with pytest.raises(typer.BadParameter):
        parse_since("yesterday")


def test_line():
    text = line(event("2026-12-05T11:00:00.000001Z", "alice", "get", "secrets", "db", 403))
    assert "alice" in text and "secrets dev/db" in text and text.endswith("403 forbid")


def test_merges_replicas_of_every_region_in_time_order(tmp_path):
    state = StateDir(tmp_path)
    a = AuditLog(state.audit_log("eu-west/api-1"))
    b = AuditLog(state.audit_log("eu-central/api-1"))
    a.write(event("2026-12-05T11:00:01.000000Z", "alice", "get", "configmaps", "one"))
    b.write(event("2026-12-05T11:00:02.000000Z", "bob", "delete", "configmaps", "two"))
    a.write(event("2026-12-05T11:00:03.000000Z", "alice", "get", "secrets", "three", 403))
    a.rotate()  # a rotated backup is read too, and not listed as a replica of its own
    a.write(event("2026-12-05T11:00:04.000000Z", "bob", "get", "configmaps", "four"))
    a.close()
    b.close()
    assert len(state.audit_logs()) == 2
    runner = CliRunner()
    out = runner.invoke(app, ["audit", "--state-dir", str(tmp_path), "--json"])
    assert out.exit_code == 0, out.output
    names = [json.loads(x)["objectRef"]["name"] for x in out.output.splitlines()]
    assert names == ["one", "two", "three", "four"]
    out = runner.invoke(
        app, ["audit", "--state-dir", str(tmp_path), "--user", "alice", "--resource", "secrets"]
    )
    assert out.exit_code == 0 and len(out.output.splitlines()) == 1
    assert "secrets dev/three" in out.output
    out = runner.invoke(app, ["audit", "--state-dir", str(tmp_path), "--verb", "delete"])
    assert [x.split()[2] for x in out.output.splitlines()] == ["bob"]


def test_no_logs_is_an_error(tmp_path):
    out = CliRunner().invoke(app, ["audit", "--state-dir", str(tmp_path)])
    assert out.exit_code == 1
