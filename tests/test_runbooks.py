"""Runbooks as code (`haplane.local.runbook`, `haplane.local.runbook_run`, `haplane runbook`):
a runbook with a mistake is refused, with the field, line and position, before anything runs;
the engine, against a fake status and a fake command runner, checks, acts, waits, asserts,
skips, captures, rolls back newest first and journals each step; a dry run runs no command.
End to end (slow): a lost etcd member (killed, its data dir deleted) replaced by the shipped
runbook, and the cluster back to 3 healthy members."""

from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from haplane.local.runbook import (
    Runbook,
    RunbookError,
    catalog,
    find,
    load_shipped,
    load_text,
    shipped_names,
)
from haplane.local.runbook_run import (
    ActionResult,
    Engine,
    Journal,
    RunRefused,
    cli_runner,
    journal_path,
)
from haplane.local.state_dir import StateDir
from haplane.topology import example_text, load_example
from haplane.topology.docs import markdown
from tests.topology_helpers import haplane

SHIPPED = [
    "certificate-expiry",
    "etcd-member-lost",
    "global-etcd-quorum-lost",
    "region-lost",
    "regional-etcd-quorum-lost",
]


def book(steps: str, parameters: str = "[]", name: str = "test") -> str:
    return textwrap.dedent(f"""\
        apiVersion: haplane.dev/v1alpha1
        kind: Runbook
        metadata:
          name: {name}
          description: a test
        spec:
          parameters: {parameters}
          steps:
        """) + textwrap.indent(textwrap.dedent(steps), "    ")


def problems(text: str) -> list[str]:
    with pytest.raises(RunbookError) as info:
        load_text(text, "t.yaml")
    return [str(p) for p in info.value.problems]


# ---- loading and checking -------------------------------------------------------------------


def test_every_shipped_runbook_loads() -> None:
    assert shipped_names() == SHIPPED
    for name in SHIPPED:
        b = load_shipped(name)
        assert b.name == name and b.description and b.steps
    assert load_shipped("etcd-member-lost").risky_steps == ["replace"]
    assert [t.type for t in load_shipped("region-lost").triggers] == ["manual", "region-down"]


def test_an_unknown_step_kind_is_refused_with_its_line() -> None:
    text = book("""\
        - name: one
          kind: check
          expr: "true"
        - name: two
          kind: reboot
          expr: "true"
        """)
    (p,) = problems(text)
    assert p.startswith("line 13: spec.steps[1].kind: Input should be 'check', 'action', 'wait'")
    assert '(got "reboot")' in p


def test_an_expression_that_does_not_compile_is_refused_with_its_position() -> None:
    text = book("""\
        - name: quorum
          kind: assert
          expr: status.clusters.exists(c, c.quorum
        - name: later
          kind: wait
          until: nothing.here
        """)
    got = problems(text)
    assert got[0] == (
        "line 11: spec.steps[0].expr: does not compile: 1:35: Syntax error: missing ')' at '<EOF>'"
    )
    assert got[1].startswith("line 14: spec.steps[1].until: does not compile: 1:")
    assert got[1].endswith("undeclared reference to 'nothing.here' (in container '')")


def test_what_the_schema_cannot_say_is_refused_too() -> None:
    text = book(
        """\
        - name: a
          kind: check
          expr: params.membr == "x" && vars.later
          run: [haplane, status]
        - name: b
          kind: wait
          until: "1 + 2"
          risky: true
        - name: c
          kind: action
          run: [bash, -c, "rm -rf /"]
        - name: d
          kind: action
          run: [haplane, member, replace, "{{nobody}}", --state-dir, /tmp]
        - name: d
          kind: assert
        """,
        parameters="[{name: member, required: true, default: x}]",
    )
    got = problems(text)
    assert any("spec.parameters[0].default: a required parameter has no default" in p for p in got)
    assert any("spec.steps[0].expr: params.membr: no parameter 'membr'" in p for p in got)
    assert any("vars.later: no value captured by an earlier step 'later'" in p for p in got)
    assert any("spec.steps[0].run: `run` does not belong to a check step" in p for p in got)
    assert any("spec.steps[1].until: must be true or false, and is of type int" in p for p in got)
    assert any("spec.steps[1].risky: `risky` does not belong to a wait step" in p for p in got)
    assert any("a haplane command ([haplane, ...]; no shell), not 'bash'" in p for p in got)
    assert any("{{nobody}}: no parameter 'nobody'" in p for p in got)
    assert any("--state-dir is the run's own" in p for p in got)
    assert any("step 'd' given twice" in p for p in got)
    assert any("spec.steps[4]: a assert step needs `expr`" in p for p in got)


def test_parameters_are_checked_before_anything_runs() -> None:
    b = load_shipped("etcd-member-lost")
    for given, said in (
        ({}, "parameter member is required: -p member=VALUE"),
        ({"member": "eu-west/etcd-1", "x": "1"}, "unknown parameter 'x' (parameters: member)"),
        ({"member": "etcd 1"}, "'etcd 1' does not match"),
    ):
        with pytest.raises(RunbookError) as info:
            b.bind(given)
        assert any(said in str(p) for p in info.value.problems), info.value
    assert b.bind({"member": "eu-west/etcd-1"}) == {"member": "eu-west/etcd-1"}
    typed = load_text(
        book(
            """\
            - name: a
              kind: action
              run: [haplane, fault, kill, "{{who}}", "--note=x{{n}}"]
            """,
            parameters="[{name: who, required: true}, {name: n, type: int, default: 3}]",
        ),
        "t",
    )
    with pytest.raises(RunbookError, match="would be read as an option"):
        typed.bind({"who": "--all"})
    with pytest.raises(RunbookError, match="parameter n \\(int\\)"):
        typed.bind({"who": "a", "n": "three"})
    assert typed.bind({"who": "a/b"}) == {"who": "a/b", "n": 3}


# ---- the engine ---------------------------------------------------------------------------


class Fakes:
    """A status that changes as the test says, and a command runner that records."""

    def __init__(self, docs: list[dict[str, Any]], codes: dict[str, int] | None = None):
        self.docs = docs
        self.reads = 0
        self.ran: list[list[str]] = []
        self.codes = codes or {}
        self.now = 0.0

    async def status(self) -> dict[str, Any]:
        doc = self.docs[min(self.reads, len(self.docs) - 1)]
        self.reads += 1
        if isinstance(doc, Exception):
            raise doc
        return doc

    async def act(self, argv: list[str], timeout: float) -> ActionResult:
        self.ran.append(argv)
        code = self.codes.get(argv[2] if len(argv) > 2 else "", 0)
        return ActionResult(code, f"did {argv[2]}\n", "" if code == 0 else "it broke\n")

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds

    def engine(self, b: Runbook, params: dict[str, Any], **kw: Any) -> Engine:
        return Engine(
            b,
            params,
            status=self.status,
            act=self.act,
            clock=self.clock,
            sleep=self.sleep,
            approved=kw.pop("approved", True),
            **kw,
        )


FLOW = book(
    """\
    - name: healthy-before
      kind: check
      expr: status.ok && params.member != ""
      capture:
        before: status.n
    - name: first
      kind: action
      run: [haplane, fault, first, "{{member}}", "--tag=x-{{member}}"]
      undo:
        run: [haplane, fault, undo-first, "{{member}}"]
    - name: second
      kind: action
      risky: true
      run: [haplane, fault, second]
      undo:
        run: [haplane, fault, undo-second]
      timeout: 30s
    - name: settled
      kind: wait
      until: status.n > vars.before
      timeout: 10
      interval: 2
    - name: optional
      kind: action
      when: status.n > 100
      run: [haplane, fault, never]
    - name: after
      kind: assert
      expr: status.ok
      message: "{{member}} is not ok"
    """,
    parameters="[{name: member, required: true}]",
)


def run(engine: Engine) -> Any:
    return asyncio.run(engine.run())


def test_check_action_wait_assert_pass_in_order_and_are_journaled() -> None:
    fakes = Fakes([{"ok": True, "n": 1}] * 3 + [{"ok": True, "n": 2}])
    journal = Journal()
    report = run(fakes.engine(load_text(FLOW, "t"), {"member": "a/b"}, journal=journal))
    assert report.outcome == "passed", report.text()
    assert [(s.name, s.outcome) for s in report.steps] == [
        ("healthy-before", "passed"),
        ("first", "passed"),
        ("second", "passed"),
        ("settled", "passed"),
        ("optional", "skipped"),
        ("after", "passed"),
    ]
    # parameters in place, whole tokens and inside them; no undo ran
    assert fakes.ran == [
        ["haplane", "fault", "first", "a/b", "--tag=x-a/b"],
        ["haplane", "fault", "second"],
    ]
    assert report.steps[3].seconds == 4.0  # polled at 0, 2, 4 (the fake clock)
    assert report.captured == {"before": 1}
    events = journal.events
    assert [e["event"] for e in events] == [
        "run-start",
        *["step-start", "step-end"] * 6,
        "run-end",
    ]
    ts = [e["t"] for e in events]
    assert ts == sorted(ts)
    first_end = events[4]
    assert first_end["step"] == "first" and first_end["exitCode"] == 0
    assert first_end["stdoutTail"] == "did first\n"
    assert events[-1]["report"]["outcome"] == "passed"
    assert "runbook test (member=a/b): PASSED" in report.text()


def test_a_failure_rolls_back_the_completed_actions_newest_first() -> None:
    # the assert fails: both actions' undos run, the second's first
    fakes = Fakes([{"ok": True, "n": 1}] * 4 + [{"ok": False, "n": 2}])
    journal = Journal()
    report = run(fakes.engine(load_text(FLOW, "t"), {"member": "a/b"}, journal=journal))
    assert report.outcome == "failed"
    assert (report.failed_step, report.reason) == ("after", "a/b is not ok")
    assert fakes.ran[2:] == [
        ["haplane", "fault", "undo-second"],
        ["haplane", "fault", "undo-first", "a/b"],
    ]
    assert [(r["step"], r["outcome"]) for r in report.rollback] == [
        ("second", "passed"),
        ("first", "passed"),
    ]
    undo_events = [e for e in journal.events if e["event"].startswith("undo-")]
    assert [(e["event"], e["step"]) for e in undo_events] == [
        ("undo-start", "second"),
        ("undo-end", "second"),
        ("undo-start", "first"),
        ("undo-end", "first"),
    ]
    assert "failed at after: a/b is not ok" in report.text()


def test_a_failed_command_stops_the_run_and_only_what_succeeded_is_undone() -> None:
    fakes = Fakes([{"ok": True, "n": 1}], codes={"second": 3, "undo-first": 1})
    report = run(fakes.engine(load_text(FLOW, "t"), {"member": "a/b"}))
    assert report.failed_step == "second"
    assert report.reason == "`haplane fault second` exited 3: it broke"
    assert report.steps[2].stderr_tail == "it broke\n"
    assert [s.outcome for s in report.steps[3:]] == ["not run"] * 3
    # the second never succeeded: only the first's undo, which fails (and is said so)
    assert fakes.ran[-1] == ["haplane", "fault", "undo-first", "a/b"]
    assert report.rollback[0]["outcome"] == "failed" and report.rollback[0]["exitCode"] == 1


def test_a_wait_times_out_with_the_last_value_and_the_message() -> None:
    fakes = Fakes([{"ok": True, "n": 1}])
    report = run(fakes.engine(load_text(FLOW, "t"), {"member": "a/b"}))
    assert report.failed_step == "settled"
    assert report.reason == "not true within 10 s (last: false)"
    assert fakes.now == 10.0  # polled every 2 s until the deadline
    assert len(fakes.ran) == 4  # two actions and their undos


def test_a_failing_check_acts_on_nothing_and_evaluation_errors_say_why() -> None:
    fakes = Fakes([{"ok": False, "n": 1}])
    report = run(fakes.engine(load_text(FLOW, "t"), {"member": "a/b"}))
    assert report.failed_step == "healthy-before" and fakes.ran == []
    assert report.reason == '`status.ok && params.member != ""` is false'
    assert report.rollback == []

    fakes = Fakes([{"n": 1}])  # no `ok`
    report = run(fakes.engine(load_text(FLOW, "t"), {"member": "a/b"}))
    assert report.reason == (
        '''expr `status.ok && params.member != ""`: Key not found in map : "ok"'''
    )
    fakes = Fakes([ConnectionError("etcd said no")])
    report = run(fakes.engine(load_text(FLOW, "t"), {"member": "a/b"}))
    assert report.reason == "status unavailable: etcd said no"


def test_a_dry_run_runs_no_command_and_evaluates_the_checks() -> None:
    fakes = Fakes([{"ok": True, "n": 1}])
    journal = Journal()
    report = run(
        fakes.engine(
            load_text(FLOW, "t"), {"member": "a/b"}, dry_run=True, approved=False, journal=journal
        )
    )
    assert fakes.ran == []
    assert report.outcome == "passed" and report.dry_run
    outcomes = {s.name: (s.outcome, s.detail) for s in report.steps}
    assert outcomes["healthy-before"] == ("passed", "")
    assert outcomes["first"] == (
        "dry-run",
        "would run: haplane fault first a/b --tag=x-a/b; undo: haplane fault undo-first a/b",
    )
    assert outcomes["second"][1].startswith("would run: haplane fault second (risky)")
    assert outcomes["settled"] == ("dry-run", "would wait up to 10 s for: status.n > vars.before")
    assert fakes.now == 0.0  # nothing waited
    assert "(dry run)" in report.text()
    # after an action that did not run, a false assert is pending, not a failure
    fakes = Fakes([{"ok": True, "n": 1}, {"ok": True, "n": 1}, {"ok": False, "n": 1}])
    report = run(fakes.engine(load_text(FLOW, "t"), {"member": "a/b"}, dry_run=True))
    assert report.outcome == "passed"
    assert report.steps[-1].outcome == "pending"
    assert report.steps[-1].detail.startswith("false now, before the actions above ran")


def test_risky_steps_are_refused_without_approval_before_anything_runs() -> None:
    fakes = Fakes([{"ok": True, "n": 1}])
    journal = Journal()
    with pytest.raises(RunRefused, match=r"step\(s\) second are risky"):
        run(fakes.engine(load_text(FLOW, "t"), {"member": "a/b"}, approved=False, journal=journal))
    assert (fakes.reads, fakes.ran, journal.events) == (0, [], [])


def test_the_journal_is_json_lines_under_the_state_dir(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    path = journal_path(state, "test")
    assert path.parent == tmp_path / "runbooks" and path.name.startswith("test-")
    fakes = Fakes([{"ok": True, "n": 1}] * 4 + [{"ok": True, "n": 2}])
    report = run(fakes.engine(load_text(FLOW, "t"), {"member": "a/b"}, journal=Journal(path)))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 14 and lines[-1]["report"]["journal"] == str(path)
    assert report.as_dict()["failedStep"] is None
    assert journal_path(state, "test") != path  # a second run the same second: its own file


def test_commands_run_as_haplane_itself_with_the_state_dir(tmp_path: Path) -> None:
    """The live runner: `python -m haplane.cli ARGS --state-dir STATE`, no shell; each line
    it prints passed on as it comes; the exit code and both outputs kept."""
    lines: list[str] = []
    act = cli_runner(StateDir(tmp_path), lines.append)
    done = asyncio.run(act(["haplane", "runbook", "show", "region-lost"], 60))
    assert done.exit_code == 0, done.stderr
    assert done.stdout.startswith("region-lost (shipped, sha256 ")
    assert any(x.startswith("    | region-lost (shipped, sha256 ") for x in lines), lines
    done = asyncio.run(act(["haplane", "runbook", "show", "nothing; rm -rf /"], 60))
    assert done.exit_code == 2 and "no runbook 'nothing; rm -rf /'" in done.stderr


# ---- the catalog, the CLI and the docs -----------------------------------------------------


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`haplane runbook ARGS` in this process (as a subprocess would see it)."""
    from typer.testing import CliRunner

    from haplane.cli.main import app

    r = CliRunner().invoke(app, ["runbook", *args, "--state-dir", str(state)])
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def test_list_show_and_refusals_from_the_cli(tmp_path: Path) -> None:
    own = tmp_path / "runbooks"
    own.mkdir()
    (own / "mine.yaml").write_text(book('- {name: a, kind: check, expr: "true"}\n', name="mine"))
    (own / "broken.yaml").write_text(book("- {name: a, kind: check, expr: 'a +'}\n", name="broken"))
    r = cli(tmp_path, "list", "--json")
    assert r.returncode == 1  # one is invalid
    listed = {x["name"]: x for x in json.loads(r.stdout)}
    assert set(SHIPPED) <= set(listed) and listed["mine"]["source"] == str(own / "mine.yaml")
    assert listed["etcd-member-lost"]["run"] == (
        "haplane runbook run etcd-member-lost -p member=eu-west/etcd-2"
    )
    (bad,) = [x for x in listed.values() if not x["valid"]]
    assert "does not compile: 1:4" in bad["problems"][0]
    assert [x.name for x in catalog(tmp_path) if x.book] == [*SHIPPED, "mine"]
    assert find("mine", tmp_path).source == str(own / "mine.yaml")

    r = cli(tmp_path, "show", "etcd-member-lost")
    assert r.returncode == 0
    assert "4. action replace [risky]" in r.stdout
    assert "run: haplane member replace {{member}} (up to 300 s)" in r.stdout
    shown = json.loads(cli(tmp_path, "show", "region-lost", "--json").stdout)
    assert [s["kind"] for s in shown["steps"]] == ["check", "wait", "assert", "assert"]

    # run: nothing started; then (a topology recorded, nothing running) refusals exit 2
    r = cli(tmp_path, "run", "etcd-member-lost", "-p", "member=eu-west/etcd-1")
    assert r.returncode == 1 and "no topology has been started" in r.stderr
    (tmp_path / "topology.yaml").write_text(example_text("two-regions"))
    r = cli(tmp_path, "run", "etcd-member-lost", "-p", "member=eu-west/etcd-1", "--direct")
    assert r.returncode == 2 and "step(s) replace are risky" in r.stderr
    r = cli(tmp_path, "run", "etcd-member-lost", "-p", "member=eu-west/etcd-1", "--yes")
    assert r.returncode == 2 and "need another person's approval" in r.stderr
    r = cli(
        tmp_path, "run", "etcd-member-lost", "-p", "member=eu-west/etcd-1", "--sha256", "0" * 64
    )
    assert r.returncode == 2 and "not the runbook that was approved" in r.stderr
    # risky, without --direct: asked for through the API (none answers here: said, exit 1)
    r = haplane(tmp_path, "runbook", "run", "etcd-member-lost", "-p", "member=eu-west/etcd-1",
                check=False)  # fmt: skip
    assert r.returncode == 1 and "has no PKI" in r.stderr, r.stderr
    r = cli(tmp_path, "run", "etcd-member-lost")
    assert r.returncode == 2 and "parameter member is required" in r.stderr
    r = cli(tmp_path, "run", "broken")
    assert r.returncode == 2
    assert "spec.steps[0].expr: does not compile: 1:4: Syntax error" in r.stderr
    assert not list(own.glob("*.jsonl"))  # nothing ran, nothing journaled


def test_docs_list_the_shipped_runbooks_with_the_command_to_run_each() -> None:
    md = markdown(load_example("two-regions"))
    runbooks = md[md.index("### Executable runbooks") :]
    for name in SHIPPED:
        assert f"| `{name}` |" in runbooks
    assert "`haplane runbook run etcd-member-lost -p member=eu-west/etcd-1`" in md
    assert "`haplane runbook run region-lost -p region=eu-west`" in md
    assert "-p region=eu-central -p snapshot=" in md


# ---- the shipped runbooks against status documents of the real shape --------------------------


def _real_status(clusters, active=None, history=(), cuts=(), repl=()):  # type: ignore[no-untyped-def]
    """A `haplane status --json` document built from the real report types (a field renamed
    in haplane.local.status breaks these tests, not only a live run)."""
    from haplane.local.status import GlobalReport, StatusReport

    r = StatusReport(
        "t", "/s", "healthy", "3.4", clusters,
        global_state=GlobalReport(active, list(history), None, {}),
        replication=list(repl), cuts=list(cuts),
    )  # fmt: skip
    return json.loads(json.dumps(r.as_dict(), default=str))


def _cluster(scope: str, down: tuple[int, ...] = (), quorum: bool = True, prefix: str = "etcd"):  # type: ignore[no-untyped-def]
    from haplane.local.status import ClusterReport, MemberReport

    members = [
        MemberReport(
            f"{scope}/{prefix}-{i}",
            "etcd",
            "http://x",
            "running",
            1,
            0,
            member_id=f"{i:x}",
            healthy=i not in down and quorum,
        )
        for i in (1, 2, 3)
    ]
    return ClusterReport(f"{scope}/etcd", quorum, None, members)


def _active(region: str, epoch: int) -> dict[str, Any]:
    fields = {"since": "t", "by": "x", "reason": "r", "from": None, "writable": True}
    return {"region": region, "epoch": epoch, **fields, "grantMs": 1, "marginMs": 1}


async def _run_shipped(name: str, params: dict[str, str], docs: list[dict]) -> Any:
    from haplane.local.runbook import load_shipped
    from haplane.local.runbook_run import ActionResult, Engine

    seen = {"n": 0}
    now = {"t": 0.0}

    async def status() -> dict:
        doc = docs[min(seen["n"], len(docs) - 1)]
        seen["n"] += 1
        return doc

    async def act(argv, timeout):  # type: ignore[no-untyped-def]
        return ActionResult(0, "", "")

    async def sleep(s: float) -> None:
        now["t"] += s

    engine = Engine(
        load_shipped(name), params, status=status, act=act, approved=True,
        clock=lambda: now["t"], sleep=sleep,
    )  # fmt: skip
    return await engine.run()


async def test_shipped_runbooks_judge_real_status_documents(tmp_path: Path) -> None:
    from haplane.local.status import ReplicationRow

    whole = [_cluster("eu-west"), _cluster("eu-central"), _cluster("global", prefix="control")]
    lost = [_cluster("eu-west", down=(3,)), whole[1], whole[2]]
    report = await _run_shipped(
        "etcd-member-lost",
        {"member": "eu-west/etcd-3"},
        [_real_status(lost)] * 4 + [_real_status(whole)],
    )
    assert report.outcome == "passed", report.reason
    # a restored region still partial never passes the quorum-lost runbook's last wait
    a1 = _active("eu-west", 1)
    gone = [whole[0], _cluster("eu-central", quorum=False), whole[2]]
    partial = ReplicationRow(
        "eu-central", "Streaming", source="eu-west", report_age=1.0, partial=True
    )
    fine = ReplicationRow("eu-central", "Streaming", source="eu-west", report_age=1.0)
    params = {"region": "eu-central", "snapshot": "s1"}
    before = [_real_status(gone, a1, [a1])] * 3
    report = await _run_shipped(
        "regional-etcd-quorum-lost", params, [*before, _real_status(whole, a1, [a1], [], [partial])]
    )
    assert report.outcome == "failed" and report.failed_step == "streaming", report.reason
    report = await _run_shipped(
        "regional-etcd-quorum-lost", params, [*before, _real_status(whole, a1, [a1], [], [fine])]
    )
    assert report.outcome == "passed", report.reason
