"""`haplane logs` on a state dir of hand-written logs in every format the platform writes: one
timeline across files, untimed lines placed before the next timed line, the filters, JSON
output, following appended lines and new files, and bad input. The merged logs of a running
topology are in test_platform_tls; the formatter every process logs with is here too."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from haplane.local.logs import Filter, Reader, merged, readers, since_of
from haplane.local.state_dir import StateDir
from haplane.telemetry import JsonLogFormatter
from tests.topology_helpers import haplane


def write(path: Path, *lines: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("".join(line + "\n" for line in lines))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    root = tmp_path / "state"
    write(
        root / "supervisor.log",
        "etcd 3.4.23 (/usr/bin/etcd)",  # untimed: before the next line
        '{"ts": "2026-12-06T10:00:00.000Z", "level": "info", "component": "supervisor", '
        '"msg": "started"}',
        '{"ts": "2026-12-06T10:00:05.000Z", "level": "info", "msg": "down"}',
    )
    write(
        root / "logs/eu-west/etcd-1.log",  # etcd's zap lines
        '{"level":"info","ts":"2026-12-06T10:00:01.500Z","caller":"x.go:1","msg":"ready"}',
        '{"level":"warn","ts":"2026-12-06T10:00:04.000Z","msg":"rejected connection"}',
    )
    write(
        root / "logs/eu-west/api-1.log",
        '{"ts": "2026-12-06T10:00:02.000Z", "level": "info", "component": "eu-west/api-1", '
        '"msg": "serving", "address": "127.0.0.1:1"}',
    )
    write(
        root / "logs/global/gate-a.log",  # the gate's event lines, and a float time
        '{"ts":"2026-12-06T10:00:03.000Z","level":"error","component":"global/gate-a",'
        '"event":"refusing_clients","reason":"no region"}',
        json.dumps({"ts": 1796551205.5, "event": "committed", "epoch": 2}),
    )
    (root / "logs/eu-west_api-1.writes.jsonl").write_text('{"not": "a log"}\n')
    return root


def lines(state: Path, *args: str) -> list[dict[str, object]]:
    r = haplane(state, "logs", "--json", *args)
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_one_timeline_across_files(state: Path):
    got = lines(state)
    assert [(e["component"], e["msg"]) for e in got] == [
        ("supervisor", "etcd 3.4.23 (/usr/bin/etcd)"),
        ("supervisor", "started"),
        ("eu-west/etcd-1", "ready"),
        ("eu-west/api-1", "serving"),
        ("global/gate-a", "refusing_clients"),
        ("eu-west/etcd-1", "rejected connection"),
        ("supervisor", "down"),
        ("global/gate-a", "committed"),
    ]
    assert got[0]["timed"] is False and got[0]["ts"] == got[1]["ts"]
    assert all("timed" not in e for e in got[1:])
    assert got[3]["fields"] == {"address": "127.0.0.1:1"}
    assert got[4]["level"] == "error" and got[4]["fields"] == {"reason": "no region"}
    assert got[-1]["ts"] == "2026-12-06T10:00:05.500Z"  # a float ts, as an ISO time
    # the plain view: one line each, times first, every component named
    r = haplane(state, "logs", "--color", "never")
    assert r.stdout.splitlines()[2].startswith("10:00:01.500 eu-west/etcd-1")
    assert "times: each process's wall clock" in r.stderr
    assert len(r.stdout.splitlines()) == 8


def test_filters(state: Path):
    def components(*args: str) -> list[object]:
        return [e["component"] for e in lines(state, *args)]

    assert set(components("-c", "eu-west")) == {"eu-west/etcd-1", "eu-west/api-1"}
    assert components("-c", "*/etcd-*") == ["eu-west/etcd-1"] * 2
    assert components("-c", "api-1", "-c", "supervisor").count("eu-west/api-1") == 1
    assert [e["msg"] for e in lines(state, "--level", "warning")] == [
        "refusing_clients",
        "rejected connection",
    ]
    assert [e["msg"] for e in lines(state, "--grep", "refus|reject")] == [
        "refusing_clients",
        "rejected connection",
    ]
    assert [e["msg"] for e in lines(state, "--since", "2026-12-06T10:00:04")] == [
        "rejected connection", "down", "committed",
    ]  # fmt: skip
    assert lines(state, "--since", "1s") == []  # all of it is older
    assert since_of("10m", now=1000.0) == 400.0


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--since", "yesterday"], 2, "--since 'yesterday'"),
        (["--grep", "("], 2, "--grep"),
        (["--level", "loud"], 2, "--level"),
        (["-c", "nowhere/*"], 1, "no logs matching"),
    ],
)
def test_bad_input(state: Path, args: list[str], code: int, says: str):
    r = haplane(state, "logs", *args, check=False)
    assert r.returncode == code and says in r.stderr, r.stderr


def test_no_logs_at_all(tmp_path: Path):
    r = haplane(tmp_path / "empty", "logs", check=False)
    assert r.returncode == 1 and "no logs" in r.stderr


def test_follow_prints_appended_lines_and_new_files(state: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "haplane.cli", "logs", "-f", "--json", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        history = [proc.stdout.readline() for _ in range(8)]
        assert json.loads(history[-1])["msg"] == "committed"
        # half a line is not a line: it waits for its end
        with (state / "logs/eu-west/api-1.log").open("a") as f:
            f.write('{"ts": "2026-12-06T10:01:00.000Z", "msg": "appen')
        time.sleep(0.6)
        with (state / "logs/eu-west/api-1.log").open("a") as f:
            f.write('ded"}\n')
        write(state / "logs/eu-central/rep-1.log", '{"ts": "2026-12-06T10:02:00.000Z", '
              '"msg": "new file"}')  # fmt: skip
        got = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert {(e["component"], e["msg"]) for e in got} == {
            ("eu-west/api-1", "appended"),
            ("eu-central/rep-1", "new file"),
        }
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_reader_reads_only_what_is_new_and_restarts_on_a_replaced_file(tmp_path: Path):
    path = tmp_path / "x.log"
    write(path, '{"ts": 1.0, "msg": "a"}')
    r = Reader("c", path, 0)
    assert [e.message for e in r.read()] == ["a"]
    assert r.read() == []
    path.write_text('{"ts": 2, "msg": "b"}\n')  # shorter: a new file
    assert [e.message for e in r.read()] == ["b"]
    flt = Filter()
    assert list(merged(readers(StateDir(tmp_path), flt), flt)) == []  # not a state dir's log


def test_the_formatter_stamps_every_line():
    fmt = JsonLogFormatter("eu-west/api-1")
    record = logging.LogRecord("haplane.api", logging.WARNING, "x", 1, '{"msg": "m", "k": 1}',
                               None, None)  # fmt: skip
    line = json.loads(fmt.format(record))
    assert line["component"] == "eu-west/api-1" and line["level"] == "warning"
    assert line["msg"] == "m" and line["k"] == 1 and line["ts"].endswith("Z")
    # a message's own fields win; a plain message is `msg`; a traceback stays on the line
    record = logging.LogRecord("haplane.gate", logging.INFO, "x", 1, '{"level": "error", '
                               '"component": "g"}', None, None)  # fmt: skip
    assert json.loads(fmt.format(record))["level"] == "error"
    assert json.loads(fmt.format(record))["component"] == "g"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("haplane", logging.ERROR, "x", 1, "plain {text", None,
                                   sys.exc_info())  # fmt: skip
    text = fmt.format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert line["msg"] == "plain {text" and "RuntimeError: boom" in line["exception"]


def test_supervisor_lines_about_a_process_levels_and_the_last_line(tmp_path: Path):
    """A supervisor line about a process keeps its name and is shown with that process; an
    untimed line (a traceback printed by hand) takes the level of the line after it;
    `critical` counts as the worst; a last line without its newline is shown (not with -f);
    an older line skipped by --since takes its untimed lines with it."""
    root = tmp_path / "state"
    write(
        root / "supervisor.log",
        "banner, long ago",
        '{"ts": "2026-12-06T09:00:00.000Z", "component": "supervisor", "msg": "up"}',
        '{"ts": "2026-12-06T10:00:00.000Z", "component": "eu-west/api-1", "msg": "exited", '
        '"exitCode": 1}',
        "Traceback (most recent call last): ...",
        '{"ts": "2026-12-06T10:00:01.000Z", "level": "critical", "msg": "gave up"}',
    )
    write(root / "logs/eu-west/api-1.log", '{"ts": "2026-12-06T09:59:59.000Z", "msg": "bye"}')
    # etcd's grpc-go writes Go's log lines: their own time (UTC: the supervisor sets TZ)
    write(root / "logs/global/control-1.log",
          "WARNING: 2026/12/06 10:00:01.500000 [core] grpc: transport is closing")  # fmt: skip
    with (root / "logs/eu-west/api-1.log").open("a") as f:
        f.write('{"ts": "2026-12-06T10:00:02.000Z", "msg": "cut short')  # no newline
    got = lines(root, "-c", "eu-west/api-1")
    assert [(e["component"], e["msg"]) for e in got] == [
        ("eu-west/api-1", "bye"),
        ("supervisor", "exited"),
        ("eu-west/api-1", '{"ts": "2026-12-06T10:00:02.000Z", "msg": "cut short'),
    ]
    assert got[1]["fields"] == {"component": "eu-west/api-1", "exitCode": 1}
    got = lines(root, "-c", "global/*")
    assert got[0]["ts"] == "2026-12-06T10:00:01.500Z" and got[0]["level"] == "warning"
    assert "timed" not in got[0]
    got = lines(root, "--level", "error")
    assert [(e["msg"], e["level"]) for e in got] == [
        ("Traceback (most recent call last): ...", "critical"),
        ("gave up", "critical"),
    ]
    # by an offset of its own: 05:00 at UTC-5 is 10:00 UTC
    got = lines(root, "-c", "supervisor", "--since", "2026-12-06T04:59:59-05:00")
    assert [e["msg"] for e in got] == ["exited", "Traceback (most recent call last): ...",
                                       "gave up"]  # fmt: skip
    r = haplane(root, "logs", "--color", "never", "-c", "supervisor")
    assert "exited component=eu-west/api-1 exitCode=1" in r.stdout
