"""`haplane runbook list|show|run`: runbooks as code, the shipped ones (`haplane/runbooks/`),
the operator's own (`STATE/runbooks/NAME.yaml`) and any file given with `--file`.

Layer: run (cli). Thin: `haplane.local.runbook` loads and checks a runbook,
`haplane.local.runbook_run` runs it (both imported inside the commands, so `haplane --help`
stays quick).

A runbook with risky steps is not run here unless `--direct --yes` (break glass): it is
asked for through the API as a MaintenanceAction `run-runbook` (four eyes: by default
another dr-operator or platform-admin approves), and the supervisor's agent runs it.

Exit codes of `run`: 0 passed, 1 failed (or interrupted; through the API: not Succeeded), 2
refused before anything ran (the runbook or a parameter is invalid, a risky step without
--direct --yes or an approval, another run holds the lock).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .options import KubeconfigOpt, NoWaitOpt, RegionOpt, StateDirOpt

if TYPE_CHECKING:
    from haplane.local.runbook import Runbook, RunbookError
    from haplane.local.state_dir import StateDir

app = typer.Typer(
    help="Runbooks as code: checks, actions, waits and assertions against the running "
    "topology, journaled, rolled back on failure.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="JSON instead of text.")]
FileOpt = Annotated[
    list[Path] | None,
    typer.Option("--file", "-f", help="A runbook file (repeatable), beside the others."),
]
NameArg = Annotated[
    str | None,
    typer.Argument(help="The runbook's name (`haplane runbook list`); optional with one --file."),
]


def _state(state_dir: Path | None) -> StateDir:
    from haplane.local.state_dir import StateDir, default_state_dir

    return StateDir(state_dir or default_state_dir())


def _invalid(exc: RunbookError, what: str = "not a valid runbook") -> typer.Exit:
    typer.echo(f"error: {exc.source}: {what}", err=True)
    for p in exc.problems:
        typer.echo(f"  {p}", err=True)
    return typer.Exit(2)


def _find(name: str | None, state: StateDir, files: list[Path] | None) -> Runbook:
    from haplane.local.runbook import RunbookError, find

    try:
        return find(name, state.root, files or ())
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(2) from None
    except RunbookError as exc:
        raise _invalid(exc) from None


def run_command(book: Runbook) -> str:
    """How to run it, with each parameter's example (or a placeholder)."""
    args = [f"haplane runbook run {book.name}"]
    for p in book.parameters:
        if p.required or p.default is None:
            args.append(f"-p {p.name}={p.example or p.name.upper()}")
    return " ".join(args)  # risky steps: asked for, approved by another person


@app.command("list")
def list_cmd(
    files: FileOpt = None,
    as_json: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """The shipped runbooks, `STATE/runbooks/*.yaml` and the --file ones (one of the same
    name as another takes its place). Exit 1 when one of them is not valid."""
    from haplane.local.runbook import catalog

    listed = catalog(_state(state_dir).root, files or ())
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "name": x.name,
                        "source": x.source,
                        "valid": x.book is not None,
                        **(x.book.as_dict() if x.book else {}),
                        **({"problems": [str(p) for p in x.error.problems]} if x.error else {}),
                        **({"run": run_command(x.book)} if x.book else {}),
                    }
                    for x in listed
                ],
                indent=2,
            )
        )
    else:
        width = max((len(x.name) for x in listed), default=4)
        for x in listed:
            if x.book is None:
                assert x.error is not None
                typer.echo(f"{x.name:<{width}}  INVALID ({x.source}): {x.error.problems[0]}")
                continue
            b = x.book
            triggers = ", ".join(str(t) for t in b.triggers)
            typer.echo(
                f"{b.name:<{width}}  {b.description}\n{'':<{width}}  "
                f"source: {b.source}; triggers: {triggers}"
                + ("; risky: " + ", ".join(b.risky_steps) if b.risky_steps else "")
                + f"\n{'':<{width}}  run: {run_command(b)}"
            )
    raise typer.Exit(1 if any(x.book is None for x in listed) else 0)


@app.command("show")
def show_cmd(
    name: NameArg = None,
    files: FileOpt = None,
    as_json: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """A runbook's parameters, triggers and steps, with every expression and command."""
    book = _find(name, _state(state_dir), files)
    if as_json:
        typer.echo(json.dumps({**book.as_dict(), "run": run_command(book)}, indent=2))
        return
    typer.echo(f"{book.name} ({book.source}, sha256 {book.digest})\n  {book.description}")
    typer.echo("parameters:" + ("" if book.parameters else " none"))
    for p in book.parameters:
        facts = [p.type, "required" if p.required else f"default {p.default!r}"]
        if p.pattern:
            facts.append(f"matching {p.pattern}")
        if p.example:
            facts.append(f"e.g. {p.example}")
        typer.echo(f"  {p.name} ({', '.join(facts)}): {p.description}")
    typer.echo("triggers: " + ", ".join(str(t) for t in book.triggers))
    typer.echo("steps:")
    for i, s in enumerate(book.steps, 1):
        typer.echo(f"  {i}. {s.kind} {s.name}" + (" [risky]" if s.risky else ""))
        if s.description:
            typer.echo(f"       {s.description}")
        if s.when is not None:
            typer.echo(f"       when: {s.when.source}")
        if s.expr is not None:
            what = (
                f"until (every {s.interval:g} s, up to {s.timeout:g} s)"
                if s.kind == "wait"
                else "expr"
            )
            typer.echo(f"       {what}: {s.expr.source}")
        if s.command is not None:
            typer.echo(f"       run: {' '.join(s.command.argv)} (up to {s.timeout:g} s)")
        if s.undo is not None:
            typer.echo(f"       undo: {' '.join(s.undo.argv)}")
        for key, program in s.capture.items():
            typer.echo(f"       capture {key}: {program.source}")
        if s.message:
            typer.echo(f"       when it fails: {s.message}")
    typer.echo(f"run: {run_command(book)}")


@app.command("run")
def run_cmd(
    name: NameArg = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="A parameter, NAME=VALUE (repeatable)."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Evaluate checks and asserts against the live status; print actions and waits "
            "without running them.",
        ),
    ] = False,
    direct: Annotated[
        bool,
        typer.Option(
            "--direct",
            help="Run it here and now as the local root-only primitive, risky steps only with "
            "--yes (break glass: no API, approval or audit).",
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", help="With --direct: run risky steps (see `show`).")
    ] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (asked through the API): recorded.")
    ] = None,
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    no_wait: NoWaitOpt = False,
    sha256: Annotated[
        str | None,
        typer.Option("--sha256", hidden=True, help="Refuse unless the runbook has this digest."),
    ] = None,
    files: FileOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Run a runbook against the topology that is up: each step journaled (STATE/runbooks/
    NAME-STAMP.jsonl) with its timing and outcome; on a failure, the undo commands of the
    actions done run newest first; a report at the end. Progress goes to stderr.

    A runbook with risky steps is asked for through the API (a MaintenanceAction
    `run-runbook`, by default approved by another dr-operator or platform-admin: `haplane
    approve NAME`) and run by the supervisor's agent; `--direct --yes` runs it here instead."""
    import asyncio

    from haplane.local.runbook import RunbookError
    from haplane.local.runbook_run import RunRefused, run_live

    state = _state(state_dir)
    if not state.topology_file.exists():
        typer.echo(
            f"error: no topology has been started in {state.root} (`haplane up` first)", err=True
        )
        raise typer.Exit(1)
    book = _find(name, state, files)
    given: dict[str, str] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            typer.echo(f"error: -p {item!r}: write NAME=VALUE", err=True)
            raise typer.Exit(2)
        given[key.strip()] = value
    try:
        params = book.bind(given)
    except RunbookError as exc:
        raise _invalid(exc, "cannot run with these parameters") from None
    if sha256 is not None and sha256 != book.digest:
        typer.echo(
            f"error: refused: {book.name} is not the runbook that was approved (sha256 "
            f"{book.digest}, the request named {sha256}): ask again",
            err=True,
        )
        raise typer.Exit(2)
    if book.risky_steps and not dry_run and not direct:
        if yes:
            typer.echo(
                f"error: refused: {book.name}'s risky steps ({', '.join(book.risky_steps)}) "
                "need another person's approval: run without --yes to ask for it through the "
                "API, or with --direct --yes to run it here (break glass)",
                err=True,
            )
            raise typer.Exit(2)
        _ask(book, given, reason, kubeconfig, region, no_wait, files, state)
        return

    def progress(text: str) -> None:
        typer.echo(text, err=True)

    try:
        report = asyncio.run(
            run_live(book, params, state, dry_run=dry_run, approved=yes, progress=progress)
        )
    except RunRefused as exc:
        typer.echo(f"error: refused: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        typer.echo(report.text())
    raise typer.Exit(0 if report.outcome == "passed" else 1)


WAIT = 3600.0  # seconds a request is followed (an approval, then the run)


def _ask(
    book: Runbook,
    given: dict[str, str],
    reason: str | None,
    kubeconfig: Path | None,
    region: str | None,
    no_wait: bool,
    files: list[Path] | None,
    state: StateDir,
) -> None:
    """The run asked for through the API, as the kubeconfig's user; the agent finds the
    runbook by name (shipped, or STATE/runbooks/), so one given only with --file cannot be."""
    from haplane.local.runbook import RunbookError, find
    from haplane.topology import load_file

    from . import ops

    if files:
        try:
            found = find(book.name, state.root)
        except (KeyError, RunbookError):
            found = None
        if found is None or found.digest != book.digest:
            typer.echo(
                f"error: {book.name} from --file is not what the agent would run: put it in "
                f"{state.root / 'runbooks' / (book.name + '.yaml')} (or run it with --direct "
                "--yes)",
                err=True,
            )
            raise typer.Exit(2)
    spec: dict[str, object] = {
        "action": "run-runbook",
        "runbook": book.name,
        "parameters": given,
        "runbookSha256": book.digest,
        "reason": reason or f"runbook {book.name}",
    }
    ops.ask(
        state, load_file(state.topology_file), "MaintenanceAction", f"runbook-{book.name}",
        spec, kubeconfig, region, None if no_wait else WAIT,
    )  # fmt: skip
