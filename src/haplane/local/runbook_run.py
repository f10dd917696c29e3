"""Running a runbook (`haplane runbook run NAME`): its steps in order against the live
status, a journal of every step, rollback of what was done when a step fails, a report.

Layer: run (local). The engine (`Engine`) is given where status comes from and how a command
runs, so tests drive it with fakes; `run_live` gives it `haplane status` (`gather_status`)
and haplane's own CLI as child processes (`python -m haplane.cli ARGS --state-dir STATE`,
as the ops agent runs its primitives: no shell).

- A step whose `when` is false is skipped. A `check` or `assert` that does not hold fails the
  run; a `wait` polls fresh status until its expression holds or its timeout passes; an
  `action` fails when its command exits non-zero (or times out: SIGINT, then SIGKILL).
- Once a step failed, the `undo` commands of the actions that had succeeded run, newest
  first, each journaled; a failed undo does not stop the others. The run ends `failed`,
  naming the step and why.
- `dry_run`: checks and asserts are evaluated against the live status, actions and waits are
  only described (their commands with the parameters in place); a check or assert after an
  action that did not run is reported `pending` when false (the action would have changed
  what it sees), not failed.
- Risky actions run only when the run is `approved` (`--direct --yes`: the CLI asks for
  another person's approval through the API otherwise, and the agent that runs the approved
  request passes it): refused before anything runs.
- The journal: `STATE/runbooks/NAME-STAMP.jsonl`, one JSON line per event (`run-start`,
  `step-start`, `step-end`, `undo-start`, `undo-end`, `run-end` with the report), each with
  `t`, seconds since the run began (monotonic clock), written as it happens.
- One run at a time per state dir (`STATE/runbooks/.lock`, a lock the kernel drops with the
  process); dry runs, and runbooks without actions, take none.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from haplane.cel import EvalError, Program

from .runbook import Runbook, Step, expand
from .state_dir import StateDir

PASSED, FAILED, SKIPPED, DRY_RUN, PENDING, NOT_RUN = (
    "passed",
    "failed",
    "skipped",
    "dry-run",
    "pending",
    "not run",
)
TAIL = 2000  # characters of a command's stdout and stderr kept in the journal

StatusSource = Callable[[], Awaitable[dict[str, Any]]]


@dataclass
class ActionResult:
    exit_code: int
    stdout: str
    stderr: str


ActionRunner = Callable[[list[str], float], Awaitable[ActionResult]]


class RunRefused(Exception):
    """Not started: nothing ran (a risky step without approval, another run holding the
    lock)."""


class _StepFailed(Exception):
    pass


def check_approval(book: Runbook, *, dry_run: bool, approved: bool) -> None:
    """RunRefused when `book` has risky steps and the run is neither approved nor dry."""
    risky = book.risky_steps
    if risky and not approved and not dry_run:
        raise RunRefused(
            f"{book.name}: step(s) {', '.join(risky)} are risky: read `haplane runbook show "
            f"{book.name}`, try --dry-run, then ask for it (without --direct: another person "
            "approves) or run it here with --direct --yes"
        )


@dataclass
class StepResult:
    name: str
    kind: str
    outcome: str
    t: float = 0.0  # seconds after the run began
    seconds: float = 0.0
    detail: str = ""
    command: list[str] | None = None
    exit_code: int | None = None
    stdout_tail: str = ""  # an action's output, its last TAIL characters
    stderr_tail: str = ""
    captured: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunReport:
    runbook: str
    source: str
    params: dict[str, Any]
    dry_run: bool
    outcome: str = PASSED  # passed | failed | interrupted
    failed_step: str | None = None
    reason: str | None = None
    started: str = ""  # UTC, RFC 3339
    seconds: float = 0.0
    steps: list[StepResult] = field(default_factory=list)
    rollback: list[dict[str, Any]] = field(default_factory=list)
    captured: dict[str, Any] = field(default_factory=dict)
    journal: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """As JSON (camelCase keys; captured values as they are)."""
        doc = {_camel(k): v for k, v in asdict(self).items() if k not in ("steps", "captured")}
        doc["steps"] = [{_camel(k): v for k, v in asdict(s).items()} for s in self.steps]
        doc["captured"] = self.captured
        return doc

    def text(self) -> str:
        """The readable summary."""
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        head = f"runbook {self.runbook}" + (f" ({params})" if params else "")
        verdict = self.outcome.upper() + (" (dry run)" if self.dry_run else "")
        lines = [f"{head}: {verdict} in {self.seconds:.1f} s"]
        width = max((len(s.name) for s in self.steps), default=0)
        for s in self.steps:
            row = f"  {s.outcome:<8} {s.kind:<7} {s.name:<{width}}  {s.seconds:6.2f} s"
            detail = s.detail if len(s.detail) <= 100 else s.detail[:99] + "…"
            lines.append(row + (f"  {detail}" if detail else ""))
        if self.failed_step:
            lines.append(f"failed at {self.failed_step}: {self.reason}")
        for r in self.rollback:
            lines.append(
                f"rollback: undo of {r['step']} {r['outcome']}: {' '.join(r['command'])}"
                + (f" ({r['detail']})" if r.get("detail") else "")
            )
        for key, value in self.captured.items():
            lines.append(f"  {key}: {json.dumps(value, default=str)}")
        if self.journal:
            lines.append(f"journal: {self.journal}")
        return "\n".join(lines)


class Journal:
    """JSON lines, flushed as written; kept in memory too (`events`)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("x", encoding="utf-8")

    def write(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if self._file is not None:
            self._file.write(json.dumps(event, default=str) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class Engine:
    def __init__(
        self,
        book: Runbook,
        params: Mapping[str, Any],
        *,
        status: StatusSource,
        act: ActionRunner,
        journal: Journal | None = None,
        dry_run: bool = False,
        approved: bool = False,
        progress: Callable[[str], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.book = book
        self.params = dict(params)
        self.status_source = status
        self.act = act
        self.journal = journal or Journal()
        self.dry_run = dry_run
        self.approved = approved
        self.progress = progress
        self.clock = clock
        self.sleep = sleep
        self.vars: dict[str, Any] = {}
        self.undos: list[tuple[Step, list[str], float]] = []
        self.acted = False  # a dry run passed an action it did not run
        self.t0 = 0.0

    def _t(self) -> float:
        return round(self.clock() - self.t0, 3)

    def _log(self, event: str, **fields: Any) -> None:
        self.journal.write({"event": event, "t": self._t(), **fields})

    async def run(self) -> RunReport:
        check_approval(self.book, dry_run=self.dry_run, approved=self.approved)
        self.t0 = self.clock()
        report = RunReport(
            self.book.name,
            self.book.source,
            self.params,
            self.dry_run,
            started=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            journal=str(self.journal.path) if self.journal.path else None,
        )
        self._log(
            "run-start",
            runbook=self.book.name,
            source=self.book.source,
            params=self.params,
            dryRun=self.dry_run,
            time=report.started,
        )
        try:
            for step in self.book.steps:
                if report.failed_step is not None:
                    report.steps.append(StepResult(step.name, step.kind, NOT_RUN))
                    continue
                result = await self._step(step)
                report.steps.append(result)
                report.captured.update(result.captured)
                if result.outcome == FAILED:
                    report.outcome, report.failed_step = FAILED, step.name
                    report.reason = result.detail
            if report.failed_step is not None and not self.dry_run:
                report.rollback = await self._rollback()
        except asyncio.CancelledError:
            report.outcome, report.reason = "interrupted", "interrupted (nothing rolled back)"
            raise
        except Exception as exc:  # a defect or an odd answer: failed, rolled back, never passed
            report.outcome, report.reason = FAILED, f"the runbook engine failed: {exc!r}"
            if not self.dry_run:
                report.rollback = await self._rollback()
            raise
        finally:
            report.seconds = self._t()
            self._log("run-end", report=report.as_dict())
            self.journal.close()
        return report

    # ---- steps --------------------------------------------------------------------------

    async def _step(self, step: Step) -> StepResult:
        result = StepResult(step.name, step.kind, PASSED, t=self._t())
        start = self.clock()
        command = step.command.expand(self.params) if step.command else None
        self._log(
            "step-start",
            step=step.name,
            kind=step.kind,
            **({"command": command} if command else {}),
        )
        self.progress(f"{step.kind} {step.name}" + (f": {' '.join(command)}" if command else ""))
        try:
            doc = None
            if step.when is not None:
                doc = await self._status()
                if self._eval(step.when, doc, "when") is not True:
                    result.outcome = SKIPPED
                    result.detail = f"`when` is false: {step.when.source}"
            if result.outcome != SKIPPED:
                if step.kind in ("check", "assert"):
                    await self._hypothesis(step, result, doc)
                elif step.kind == "wait":
                    await self._wait(step, result)
                else:
                    await self._action(step, result, command or [])
        except _StepFailed as exc:
            result.outcome, result.detail = FAILED, str(exc)
        result.seconds = round(self.clock() - start, 3)
        self._log(
            "step-end",
            step=step.name,
            kind=step.kind,
            outcome=result.outcome,
            seconds=result.seconds,
            detail=result.detail,
            **({"exitCode": result.exit_code} if result.exit_code is not None else {}),
            **({"captured": result.captured} if result.captured else {}),
            **(
                {"stdoutTail": result.stdout_tail, "stderrTail": result.stderr_tail}
                if result.command is not None and not self.dry_run
                else {}
            ),
        )
        self.progress(
            f"  {result.outcome} ({result.seconds:.2f} s)"
            + (f": {result.detail}" if result.detail else "")
        )
        return result

    async def _hypothesis(self, step: Step, result: StepResult, doc: dict[str, Any] | None) -> None:
        assert step.expr is not None
        doc = doc if doc is not None else await self._status()
        try:
            value = self._eval(step.expr, doc, "expr")
        except _StepFailed:
            self._capture(step, doc, result, passing=False)
            raise
        holds = value is True
        self._capture(step, doc, result, passing=holds)
        if holds:
            return
        said = (
            f"gave {value!r}, not true or false"
            if not isinstance(value, bool)
            else (self._message(step) or f"`{step.expr.source}` is false")
        )
        if self.dry_run and self.acted:
            result.outcome = PENDING
            result.detail = f"false now, before the actions above ran ({said})"
            return
        raise _StepFailed(said)

    async def _wait(self, step: Step, result: StepResult) -> None:
        assert step.expr is not None
        if self.dry_run:
            result.outcome = DRY_RUN
            result.detail = f"would wait up to {step.timeout:g} s for: {step.expr.source}"
            return
        deadline = self.clock() + step.timeout
        last = "never evaluated"
        while True:
            try:
                doc = await self._status()
                value = self._eval(step.expr, doc, "until")
            except _StepFailed as exc:
                value, last = None, f"last: {exc}"
            else:
                last = f"last: {json.dumps(value, default=str)}"
            if value is True:
                self._capture(step, doc, result, passing=True)  # its failure is the step's
                return
            if self.clock() >= deadline:
                said = self._message(step)
                raise _StepFailed(
                    f"not true within {step.timeout:g} s ({last})" + (f": {said}" if said else "")
                )
            await self.sleep(min(step.interval, max(0.0, deadline - self.clock())))

    async def _action(self, step: Step, result: StepResult, command: list[str]) -> None:
        assert step.command is not None
        result.command = command
        undo = step.undo.expand(self.params) if step.undo else None
        if self.dry_run:
            self.acted = True
            result.outcome = DRY_RUN
            result.detail = (
                f"would run: {' '.join(command)}"
                + (" (risky)" if step.risky else "")
                + (f"; undo: {' '.join(undo)}" if undo else "")
            )
            return
        done = await self._run(command, step.command.timeout)
        result.exit_code = done.exit_code
        result.stdout_tail, result.stderr_tail = done.stdout[-TAIL:], done.stderr[-TAIL:]
        if done.exit_code != 0:
            raise _StepFailed(
                f"`{' '.join(command)}` exited {done.exit_code}"
                + (f": {_last_line(done.stderr) or _last_line(done.stdout)}")
            )
        if undo is not None:
            assert step.undo is not None
            self.undos.append((step, undo, step.undo.timeout))

    async def _run(self, argv: list[str], timeout: float) -> ActionResult:
        try:
            return await self.act(argv, timeout)
        except OSError as exc:
            return ActionResult(127, "", f"could not start: {exc}")

    async def _rollback(self) -> list[dict[str, Any]]:
        done = []
        for step, argv, timeout in reversed(self.undos):
            self._log("undo-start", step=step.name, command=argv)
            self.progress(f"undo {step.name}: {' '.join(argv)}")
            start = self.clock()
            r = await self._run(argv, timeout)
            outcome = PASSED if r.exit_code == 0 else FAILED
            entry = {
                "step": step.name,
                "command": argv,
                "outcome": outcome,
                "exitCode": r.exit_code,
                "seconds": round(self.clock() - start, 3),
                "detail": "" if r.exit_code == 0 else _last_line(r.stderr or r.stdout),
            }
            self._log("undo-end", **entry, stdoutTail=r.stdout[-TAIL:], stderrTail=r.stderr[-TAIL:])
            self.progress(f"  undo {outcome}")
            done.append(entry)
        return done

    # ---- expressions --------------------------------------------------------------------

    async def _status(self) -> dict[str, Any]:
        try:
            return await self.status_source()
        except Exception as exc:  # whatever it is, the step cannot judge without it
            raise _StepFailed(f"status unavailable: {exc}") from None

    def _eval(self, program: Program, doc: dict[str, Any], what: str) -> Any:
        try:
            return program.eval({"status": doc, "params": self.params, "vars": self.vars})
        except EvalError as exc:
            raise _StepFailed(f"{what} `{program.source}`: {exc.message}") from None

    def _capture(
        self, step: Step, doc: dict[str, Any], result: StepResult, *, passing: bool
    ) -> None:
        """A step's captures, into `vars` and the report. A capture that fails to evaluate
        fails a passing step (the runbook needs it later); on a failing step it is recorded
        as its error (the step has failed already)."""
        for key, program in step.capture.items():
            try:
                value = self._eval(program, doc, f"capture {key}")
            except _StepFailed as exc:
                if passing:
                    raise
                value = {"error": str(exc)}
            self.vars[key] = value
            result.captured[key] = value

    def _message(self, step: Step) -> str:
        return expand(step.message, self.params)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


# ---- the live topology --------------------------------------------------------------------


def live_status(state: StateDir) -> StatusSource:
    """`haplane status --json` of the topology in `state`, as plain JSON values."""

    async def read() -> dict[str, Any]:
        from .status import gather_status

        report = await gather_status(state)
        doc: dict[str, Any] = json.loads(json.dumps(report.as_dict(), default=str))
        return doc

    return read


def cli_runner(state: StateDir, progress: Callable[[str], None] = lambda _: None) -> ActionRunner:
    """A `[haplane, ...]` command run as `python -m haplane.cli ... --state-dir STATE`, in its
    own session; each line it prints passed to `progress` as it comes. Stopped (its timeout,
    or the run interrupted) as the ops agent stops its primitives: SIGINT, then SIGKILL."""
    from .ops_agent import stop_primitive

    async def run(argv: list[str], timeout: float) -> ActionResult:
        full = [sys.executable, "-m", "haplane.cli", *argv[1:], "--state-dir", str(state.root)]
        proc = await asyncio.create_subprocess_exec(
            *full,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        out: list[str] = []
        err: list[str] = []

        async def pump(stream: asyncio.StreamReader | None, into: list[str]) -> None:
            """Chunks, not lines: a line longer than the reader's limit (compact JSON) must
            not end the pump and leave the command unsupervised."""
            assert stream is not None
            pending = ""
            while chunk := await stream.read(65536):
                text = pending + chunk.decode(errors="replace")
                *lines, pending = text.split("\n")
                for line in lines:
                    into.append(line + "\n")
                    progress(f"    | {line.rstrip()}")
            if pending:
                into.append(pending)
                progress(f"    | {pending.rstrip()}")

        try:
            await asyncio.wait_for(
                asyncio.gather(pump(proc.stdout, out), pump(proc.stderr, err), proc.wait()),
                timeout,
            )
        except TimeoutError:
            await stop_primitive(proc)
            return ActionResult(124, "".join(out), "".join(err) + f"timed out after {timeout:g} s")
        except BaseException:  # cancelled, or anything else: the command never outlives us
            await asyncio.shield(stop_primitive(proc))
            raise
        return ActionResult(proc.returncode or 0, "".join(out), "".join(err))

    return run


def journal_path(state: StateDir, name: str) -> Path:
    """`STATE/runbooks/NAME-STAMP.jsonl` (UTC), not yet taken."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = state.root / "runbooks"
    path, n = base / f"{name}-{stamp}.jsonl", 1
    while path.exists():
        n += 1
        path = base / f"{name}-{stamp}-{n}.jsonl"
    return path


@contextlib.contextmanager
def run_lock(state: StateDir, name: str) -> Iterator[None]:
    """One runbook run at a time in `state`: RunRefused naming the other run."""
    path = state.root / "runbooks" / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = path.read_text().strip() or "?"
            raise RunRefused(f"another runbook runs in {state.root} ({held})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{name} (pid {os.getpid()})\n".encode())
        yield
    finally:
        os.close(fd)


async def run_live(
    book: Runbook,
    params: Mapping[str, Any],
    state: StateDir,
    *,
    dry_run: bool = False,
    approved: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> RunReport:
    """Run `book` against the topology in `state`, journaled under `STATE/runbooks/`."""
    check_approval(book, dry_run=dry_run, approved=approved)  # before any file is made
    # a runbook without actions changes nothing: it takes no lock (and never keeps a repair
    # from running), as a dry run does
    lock = run_lock(state, book.name) if book.acts and not dry_run else contextlib.nullcontext()
    with lock:
        engine = Engine(
            book,
            params,
            status=live_status(state),
            act=cli_runner(state, progress),
            journal=Journal(journal_path(state, book.name)),
            dry_run=dry_run,
            approved=approved,
            progress=progress,
        )
        return await engine.run()
