"""The `haplane` command (typer + rich). Data goes to stdout, progress and errors to stderr.

Layer: run (cli). May use every layer; holds no logic of its own beyond parsing and rendering.

Start-up: every invocation (`--help` included) imports this module and registers every
command, so at module level it imports only typer, the standard library, the option
annotations and the sub-commands' modules, which do the same. What a command needs (the
topology model, etcd and grpc, aiohttp, asyncio, the supervisor, rich's tables) it imports
inside its function; the consoles are made on first use. Typer evaluates the parameters'
annotations when it builds the commands: they must stay cheap. tests/test_cli_startup.py
keeps it so; bench/cli_startup.py times it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from haplane.cli import (
    audit,
    backup,
    console,
    divergence,
    drills,
    failback,
    gc,
    gitops,
    maintenance,
    member,
    pki,
    policy,
    runbook,
    secrets,
    snapshot,
)
from haplane.cli.options import KubeconfigOpt, NoWaitOpt, RegionOpt, StateDirOpt
from haplane.local.state_dir import StateDir, default_state_dir

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from haplane.local.status import StatusReport
    from haplane.topology import Finding, Topology

app = typer.Typer(
    name="haplane",
    help="Run a highly available, multi-region control plane on real etcd, and measure it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class _LazyConsole:
    """A rich Console made on first use (importing rich costs tens of milliseconds that
    commands printing no rich output need not pay), with the settings `out` and `err` always
    had. Attributes are the Console's; `get()` is the Console itself (for `Live`, which needs
    its `with` protocol: special methods bypass `__getattr__`)."""

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            stream = sys.stderr if self._stderr else sys.stdout
            # Piped output keeps whole rows (rich would squeeze tables to 80 columns).
            self._console = Console(
                stderr=self._stderr, highlight=False, width=None if stream.isatty() else 200
            )
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


out = _LazyConsole(stderr=False)
err = _LazyConsole(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ExampleOpt = Annotated[
    str | None, typer.Option("--example", help="Use a packaged example, e.g. two-regions.")
]


def _state(path: Path | None) -> StateDir:
    return StateDir(path or default_state_dir())


def _require_started(state: StateDir) -> None:
    """Exit 1 when no topology was started in `state` (what `gather_status` raises as
    NothingRunning, said without importing the status machinery)."""
    if not state.topology_file.exists():
        err.print(f"error: no topology has been started in {state.root} (`haplane up` first)")
        raise typer.Exit(1)


def _started(state: StateDir) -> Topology:
    """The topology `up` recorded in `state`; exit 1 when none was started there."""
    _require_started(state)
    from haplane.topology import load_file

    return load_file(state.topology_file)


def _read_source(file: Path | None, example: str | None) -> tuple[str, str]:
    from haplane.topology import TopologyError, example_names, example_text

    if (file is None) == (example is None):
        err.print(
            "error: give a topology FILE or --example NAME "
            f"(examples: {', '.join(example_names())})"
        )
        raise typer.Exit(2)
    if example is not None:
        return example_text(example), f"example {example!r}"
    assert file is not None
    try:
        return file.read_text(encoding="utf-8"), str(file)
    except OSError as exc:
        raise TopologyError(str(file), []) from exc


def _load(file: Path | None, example: str | None) -> tuple[Topology, str]:
    """Load or exit 2, naming the line and field."""
    from haplane.topology import TopologyError, load_text

    try:
        text, source = _read_source(file, example)
        return load_text(text, source), text
    except TopologyError as exc:
        cause = exc.__cause__
        err.print(
            f"error: {exc.source}: the file does not match the topology schema"
            if exc.problems
            else f"error: cannot read {exc.source}: {cause}"
        )
        for p in exc.problems:
            err.print(f"  {p}")
        raise typer.Exit(2) from None


def _findings_table(findings: list[Finding]) -> Table:
    from rich.table import Table

    table = Table(show_lines=False)
    for col in ("SEVERITY", "RULE", "FIELD", "PROBLEM", "FIX"):
        table.add_column(col, overflow="fold")
    for f in findings:
        sev = "[red]error[/]" if f.severity == "error" else "[yellow]warning[/]"
        table.add_row(sev, f.rule, f.path, f.message, f.fix)
    return table


@app.command("validate")
def validate_cmd(
    file: Annotated[Path | None, typer.Argument(help="Topology file (YAML).")] = None,
    example: ExampleOpt = None,
    as_json: JsonOpt = False,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="Compare with what runs (members, placement, ports, versions, reachability); "
            "default file: the one that is up.",
        ),
    ] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Check a topology file against the HA rules. Exit 0: no errors, 1: errors, 2: unreadable."""
    from haplane.topology import validate

    if live:
        import asyncio

        from haplane.local import live_drift

        state = _state(state_dir)
        if file is None and example is None and state.topology_file.exists():
            file = state.topology_file
        topology, _ = _load(file, example)
        try:
            findings = validate(topology) + asyncio.run(live_drift.live_findings(topology, state))
        except live_drift.NotRunning as exc:
            err.print(f"error: {exc}")
            raise typer.Exit(2) from None
    else:
        topology, _ = _load(file, example)
        findings = validate(topology)
    errors = sum(f.severity == "error" for f in findings)
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "topology": topology.name,
                    "valid": errors == 0,
                    "errors": errors,
                    "warnings": len(findings) - errors,
                    "findings": [f.as_dict() for f in findings],
                }
            )
        )
    elif findings:
        out.print(_findings_table(findings))
        out.print(f"{errors} error(s), {len(findings) - errors} warning(s)")
    else:
        out.print(f"{topology.name}: no findings")
    raise typer.Exit(1 if errors else 0)


ANALYSE_LIMIT = 2_000_000  # failure sets evaluated in a few seconds here (bench/analyse.py)


@app.command("analyse")
def analyse_cmd(
    file: Annotated[Path | None, typer.Argument(help="Topology file (YAML).")] = None,
    example: ExampleOpt = None,
    max_failures: Annotated[
        int, typer.Option("--max-failures", "-k", min=1, help="Simultaneous failures, up to.")
    ] = 2,
    sample_n: Annotated[
        int | None,
        typer.Option("--sample", min=1, help="Evaluate N random sets of k failures instead."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed for --sample.")] = 0,
    wide: Annotated[
        bool, typer.Option("--all", help="Also list the failure groups nothing notices.")
    ] = False,
    availability: Annotated[
        bool,
        typer.Option(
            "--availability", help="Also estimate write availability and downtime per year."
        ),
    ] = False,
    rate: Annotated[
        list[str] | None,
        typer.Option(
            "--rate",
            help='Override a failure rate: "KIND=MTBF/MTTR" in hours, e.g. "etcd member=8760/1" '
            "(kinds: see --json's rates).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Which failures the topology survives, decided from the model alone: every set of up to
    k simultaneous failures (components, zones, sites, network cuts), grouped by outcome.

    Runs on any schema-valid file, including ones `validate` finds errors in."""
    from haplane.topology import availability as avail
    from haplane.topology import failures
    from haplane.topology.analyse_report import TABLE_COLUMNS, report_json, table_rows

    topology, _ = _load(file, example)
    rates = avail.Rates()
    for spec in rate or []:
        kind, _, value = spec.partition("=")
        mtbf, _, mttr = value.partition("/")
        try:
            rates = rates.with_overrides({kind.strip(): avail.Rate(float(mtbf), float(mttr))})
        except (KeyError, ValueError) as exc:
            err.print(f'error: --rate {spec!r}: {exc}; write "KIND=MTBF/MTTR" in hours')
            raise typer.Exit(2) from None
    sets = None
    if sample_n is not None:
        sets = failures.sample(topology, max_failures, sample_n, seed)
    else:
        count = failures.count_failure_sets(topology, max_failures)
        if count > ANALYSE_LIMIT:
            err.print(
                f"error: up to {max_failures} simultaneous failures make {count:,} failure sets "
                f"(more than {ANALYSE_LIMIT:,}); lower --max-failures, or evaluate a random "
                f"sample: --sample 100000"
            )
            raise typer.Exit(2)
    analysis = failures.analyse(topology, max_failures, sets)
    estimate = avail.estimate(topology, rates) if availability or rate else None
    if as_json:
        doc = report_json(analysis)
        if estimate is not None:
            doc["availability"] = estimate.to_dict()
        out.print_json(json.dumps(doc))
        return
    out.print(analysis.summary())
    if estimate is not None:
        low, high = estimate.interval
        out.print(
            f"write availability {estimate.availability:.7f} ({estimate.method}, "
            f"{low:.9f}..{high:.9f}): {estimate.downtime_minutes_per_year:.2f} minutes of write "
            "downtime a year expected, mostly from: "
            + "; ".join(f"{c.label} ({c.share:.0%})" for c in estimate.contributors[:3])
        )
    err.print(f"[dim]{analysis.counting}[/]")
    rows = table_rows(analysis, include_unaffected=wide)
    if rows:
        from rich.table import Table

        table = Table()
        for col in TABLE_COLUMNS:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*(row[c] for c in TABLE_COLUMNS))
        out.print(table)


@app.command("diagram")
def diagram_cmd(
    file: Annotated[Path | None, typer.Argument(help="Topology file (YAML).")] = None,
    example: ExampleOpt = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="svg, png (Graphviz) or mermaid.")
    ] = "svg",
    fail: Annotated[
        list[str] | None,
        typer.Option(
            "--fail",
            help='Shade what this failure takes down (as `analyse` names it: "eu-west/etcd-1", '
            '"zone eu-west/a", "site witness", "cut A<->B", ...). Repeatable.',
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Draw the topology: sites, zones, etcd members, API replicas, balancers, gates, the
    witness, replication; with --fail, what a failure set takes down."""
    from haplane.topology import diagram

    topology, _ = _load(file, example)
    if fmt not in ("svg", "png", "mermaid"):
        err.print(f"error: --format {fmt!r}: use svg, png or mermaid")
        raise typer.Exit(2)
    try:
        if fmt == "mermaid":
            data = diagram.to_mermaid(topology, fail or ()).encode()
        else:
            data = diagram.render(topology, fmt, fail or ())  # type: ignore[arg-type]
    except ValueError as exc:
        err.print(f"error: --fail: {exc}")
        raise typer.Exit(2) from None
    except diagram.DiagramError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from None
    if output is None:
        if fmt == "png" and sys.stdout.isatty():
            err.print("error: PNG is binary: write it with -o FILE")
            raise typer.Exit(2)
        sys.stdout.buffer.write(data)
    else:
        output.write_bytes(data)
        err.print(f"wrote {output}")


@app.command("docs")
def docs_cmd(
    file: Annotated[Path | None, typer.Argument(help="Topology file (YAML).")] = None,
    example: ExampleOpt = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the Markdown here.")
    ] = None,
    html_out: Annotated[
        Path | None,
        typer.Option("--html", help="Also write a standalone HTML page (diagram as SVG inline)."),
    ] = None,
    max_failures: Annotated[
        int, typer.Option("--max-failures", "-k", min=1, help="For the failure table.")
    ] = 2,
) -> None:
    """One document for the topology: inventory, validation findings, failure tolerance,
    availability estimate, diagram, and a DR runbook derived from the file."""
    from haplane.topology import docs

    topology, _ = _load(file, example)
    text = docs.markdown(topology, max_failures=max_failures)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        err.print(f"wrote {output}")
    if html_out is not None:
        html_out.write_text(docs.html(topology, max_failures=max_failures, diagram_svg=True))
        err.print(f"wrote {html_out}")


@app.command("schema")
def schema_cmd() -> None:
    """Print the topology file's JSON Schema (for editors)."""
    from haplane.topology import json_schema

    out.print_json(json.dumps(json_schema()))


@app.command("up")
def up_cmd(
    file: Annotated[Path | None, typer.Argument(help="Topology file (YAML).")] = None,
    example: ExampleOpt = None,
    detach: Annotated[bool, typer.Option("-d", "--detach", help="Return once healthy.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start despite HA errors.")] = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Wipe data, ports and logs first.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for health.")] = 90.0,
    netns: Annotated[
        bool,
        typer.Option(
            "--netns",
            help="Place each site in its own network namespace and address (10.77.N.1; root "
            "and the iproute2 and nftables tools needed), so that drills can partition sites.",
        ),
    ] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Start a topology on this machine and supervise it (Ctrl-C or `haplane down` stops it)."""
    import asyncio

    from haplane.local import runner
    from haplane.local.netns import available as netns_available
    from haplane.local.status import gather_status
    from haplane.local.supervisor import Supervisor
    from haplane.store import EtcdBinaryError
    from haplane.topology import has_errors, validate

    topology, text = _load(file, example)
    findings = validate(topology)
    if has_errors(findings):
        err.print(_findings_table([f for f in findings if f.severity == "error"]))
        if not force:
            err.print("error: the topology has HA errors; fix them or pass --force")
            raise typer.Exit(1)
        err.print("warning: starting despite HA errors (--force)")
    state = _state(state_dir)
    try:
        if netns and (why := netns_available()) is not None:
            err.print(f"error: --netns: {why}")
            raise typer.Exit(1)
        topology = runner.prepare_state(
            state, topology, text, fresh, netns=netns, base=file.parent if file else None
        )
    except runner.PrepareError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from None
    if detach:
        child = runner.start_detached(state)
        try:
            snap = asyncio.run(runner.wait_healthy(state, child, timeout, _progress))
        except (RuntimeError, TimeoutError) as exc:
            err.print(f"error: {exc}")
            runner.down(state)
            raise typer.Exit(1) from None
        err.print(
            f"{topology.name} is up in {snap.get('startedInSeconds', 0):.1f}s; "
            f"supervisor pid {child.pid}; state dir {state.root}"
        )
        _print_status(asyncio.run(gather_status(state)))
        return
    try:
        supervisor = Supervisor(topology, state, progress=_progress)
    except EtcdBinaryError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from None
    configure_logging_to_file(state)
    code = asyncio.run(runner.serve(supervisor, on_healthy=lambda: _live_status(state)))
    if code:
        err.print(f"error: {supervisor.error}")
    raise typer.Exit(code)


def configure_logging_to_file(state: StateDir) -> None:
    """In the foreground the terminal shows the live view; JSON logs go to the state dir."""
    import logging

    from haplane.local.supervisor import configure_logging

    configure_logging(logging.FileHandler(state.supervisor_log))


async def _live_status(state: StateDir) -> None:
    import asyncio

    from rich.live import Live

    from haplane.local.status import gather_status

    with Live(console=out.get(), refresh_per_second=2, transient=False) as live:
        while True:
            report = await gather_status(state)
            live.update(_status_table(report))
            await asyncio.sleep(1.0)


def _progress(message: str) -> None:
    err.print(f"[dim]{message}[/]")


@app.command("down")
def down_cmd(state_dir: StateDirOpt = None) -> None:
    """Stop the supervisor and every process it started; leaves data in place."""
    from haplane.local import runner

    state = _state(state_dir)
    killed = runner.down(state)
    if killed:
        err.print(f"stopped leftover processes: {', '.join(killed)}")
    err.print(f"down ({state.root})")


@app.command("status")
def status_cmd(state_dir: StateDirOpt = None, as_json: JsonOpt = False) -> None:
    """Each component: process state, and for etcd: member id, leader, term, revision, db size."""
    state = _state(state_dir)
    _require_started(state)  # nothing started: no need of etcd, aiohttp or asyncio to say so
    if as_json:  # as the quick path answers it (the supervisor gathers, else this process)
        from haplane.cli.quick import status_json

        code = status_json(state_dir)
        if code is not None:
            raise typer.Exit(code)
    import asyncio

    from haplane.local.status import NothingRunning, gather_status

    try:
        report = asyncio.run(gather_status(state))
    except NothingRunning as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from None
    if as_json:
        from haplane.cli.quick import print_status_json

        print_status_json(report.as_dict())
    else:
        _print_status(report)
    raise typer.Exit(0 if report.healthy else 3)


def _print_status(report: StatusReport) -> None:
    certs = report.certificates
    if certs and certs.get("soonest"):
        soonest = certs["soonest"]
        days = soonest["secondsToExpiry"] / 86400
        color = "red" if days < 30 else "green"
        out.print(
            f"certificates: {certs['count']}, soonest to expire {soonest['name']} in "
            f"[{color}]{days:.0f} days[/] ({soonest['notAfter']})"
            + (
                f"; [red]{len(certs['within30Days'])} within 30 days[/] (`haplane up` or "
                "`haplane pki rotate` renews them)"
                if certs["within30Days"]
                else ""
            )
        )
    g = report.global_state
    if g is not None and g.error:
        out.print(f"[red]active region unknown[/]: {g.error}")
    elif g is not None and g.active:
        a = g.active
        fence = (
            "writable"
            if a.get("writable", True)
            else "[yellow]fenced until the previous region's grant runs out[/]"
        )
        out.print(
            f"active region: [bold]{a['region']}[/] (epoch {a['epoch']}, {fence}, since "
            f"{a['since']}, by {a['by']}: {a['reason']})"
        )
        if g.fences:
            out.print(
                "fence keys: "
                + ", ".join(
                    f"{region} {value or '[red](no answer)[/]'}"
                    for region, value in g.fences.items()
                )
            )
        for h in g.history[:-1][-3:]:
            out.print(
                f"  before: {h['region']} (epoch {h['epoch']}, {h['since']}, {h['by']}: "
                f"{h['reason']})"
            )
        leading = [e for e in report.edges if (e.controller or {}).get("leading")]
        if leading and leading[0].controller:
            d = leading[0].controller.get("decision") or {}
            out.print(
                f"failover controller: led by {leading[0].name}; "
                f"{d.get('reason', 'no decision yet')}"
            )
    out.print(_status_table(report))
    if report.edges:
        out.print(_edge_table(report))
    if report.replication:
        out.print(_replication_table(report))
    if report.sync is not None:
        style = "" if report.sync.get("standby") else "[yellow]"
        out.print(f"synchronous replication: {style}{report.sync['says']}{'[/]' if style else ''}")
    for c in report.cuts[-2:]:
        how = "planned" if c.get("planned") else "unplanned"
        how += ", synchronous standby" if c.get("synchronous") else ""
        lag = c.get("lagSeconds")
        out.print(
            f"cut of epoch {c['epoch']} ({how}): {c['region']} took over at revision "
            f"{c['revision']} of {c.get('source')}"
            + (f", lag at the cut {lag:.3f}s" if isinstance(lag, int | float) else "")
        )
    for d in report.divergences:
        if d.get("count"):
            out.print(
                f"[yellow]divergence {d['name']}[/]: {d['region']} had written {d['count']} "
                f"object(s) after the cut of epoch {d['epoch']}, saved before it was re-seeded: "
                f"`haplane divergence show {d['name']}`"
            )


def _table(title: str, *columns: str) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    return table


def _replication_table(report: StatusReport) -> Table:
    table = _table(
        "replication (into each region, from the active one)",
        *("REGION", "STATE", "SOURCE", "APPLIED", "LAG", "LEADER", "LAST RESYNC", "REPLICATORS"),
    )
    colors = {"Streaming": "green", "Idle": "dim", "Resyncing": "yellow"}
    for row in report.replication:
        lag = (
            f"{row.lag_seconds:.3f}s / {row.lag_revisions} rev"
            if row.lag_seconds is not None
            else "-"
        )
        resync = row.last_resync or {}
        table.add_row(
            row.region,
            f"[{colors.get(row.state, 'red')}]{row.state}[/]",
            row.source or "-",
            f"{row.applied_revision}/{row.source_revision}" if row.applied_revision else "-",
            lag,
            row.leader or "-",
            f"{resync.get('keys')} keys in {resync.get('seconds')}s" if resync else "-",
            ", ".join(f"{r['name']} {r['state']}" for r in row.replicators),
        )
    return table


_STATE_COLOR = {"up": "green", "draining": "yellow", "down": "red"}


def _edge_table(report: StatusReport) -> Table:
    from rich.table import Table

    table = Table(title="balancers and gates")
    for col in (
        "COMPONENT",
        "STATE",
        "PID",
        "RESTARTS",
        "ADDRESS",
        "FORWARDS TO",
        "UPSTREAMS",
        "CONNS NOW/TOTAL",
        "HEALTH",
    ):
        table.add_column(col)
    for e in report.edges:
        target = e.active_pool or "-"
        if e.kind == "gate":
            target = f"{target} (epoch {e.epoch})" if e.epoch is not None else target
        upstreams = " ".join(
            f"[{_STATE_COLOR.get(str(u['state']), 'white')}]{u['name']}[/]"
            for u in e.upstreams
            if u["pool"] == e.active_pool
        )
        health = "[green]ready[/]" if e.ready else f"[red]{e.error or 'not ready'}[/]"
        if e.drained:
            health = f"[yellow]drained: {e.drained}[/]"
        elif e.region_health is not None and not e.region_health.get("healthy"):
            health += " [red]region: " + "; ".join(e.region_health.get("reasons") or []) + "[/]"
        table.add_row(
            e.name,
            e.state,
            str(e.pid or "-"),
            str(e.restarts),
            e.url,
            target,
            upstreams or "-",
            f"{e.connections_active}/{e.connections_total}",
            health,
        )
    return table


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n //= 1024
    return str(n)


def _short(error: str | None) -> str:
    """The table shows a word; `status --json` keeps the whole message."""
    if not error:
        return "unhealthy"
    if "answered within" in error or "unavailable" in error:
        return "unreachable"
    return error[:40]


def _status_table(report: StatusReport) -> Table:
    from rich.table import Table

    table = Table(
        title=f"{report.topology} - supervisor {report.supervisor} - "
        f"etcd {report.etcd_version or '?'}"
    )
    for col in (
        "COMPONENT",
        "STATE",
        "PID",
        "RESTARTS",
        "MEMBER",
        "LEADER",
        "TERM",
        "REVISION",
        "DB / QUOTA",
        "ALARMS",
        "HEALTH",
    ):
        table.add_column(col)
    for r in report.replicas:
        health = "[green]ready[/]" if r.ready else f"[red]{r.detail}[/]"
        table.add_row(
            f"  {r.name}",
            r.state,
            str(r.pid or "-"),
            str(r.restarts),
            r.url,
            "",
            "",
            "",
            "",
            "",
            health,
        )
    for c in report.clusters:
        quorum = "[green]quorum[/]" if c.quorum else "[red]NO QUORUM[/]"
        table.add_row(f"[bold]{c.name}[/]", "", "", "", "", c.leader or "-", "", "", "", "", quorum)
        for m in c.members:
            table.add_row(
                f"  {m.name}",
                m.state,
                str(m.pid or "-"),
                str(m.restarts),
                m.member_id or "-",
                "*" if m.is_leader else "",
                str(m.raft_term or "-"),
                str(m.revision or "-"),
                f"{_size(m.db_size)} / {_size(m.quota)}",
                ",".join(m.alarms) or "-",
                "[green]healthy[/]" if m.healthy else f"[red]{_short(m.error)}[/]",
            )
    if report.gitops:
        table.add_row("[bold]gitops[/]", "", "", "", "", _gitops_leader(report), "", "", "", "", "")
    for g in report.gitops:
        table.add_row(
            f"  {g.name}",
            g.state,
            str(g.pid or "-"),
            str(g.restarts),
            g.url,
            "*" if g.leading else "",
            "",
            "",
            "",
            "",
            "[green]ready[/]" if g.ready else f"[red]{_short(g.error)}[/]",
        )
    if report.console:
        # what a person opens, and how they sign in
        table.add_row(
            "[bold]console[/]", "", "", "", "sign in: haplane console token", "", "", "", "", "",
            "",
        )  # fmt: skip
    for con in report.console:
        table.add_row(
            f"  {con.name}",
            con.state,
            str(con.pid or "-"),
            str(con.restarts),
            con.url,  # what a browser opens
            "",
            "",
            "",
            "",
            "",
            "[green]ready[/]" if con.ready else f"[red]{_short(con.error)}[/]",
        )
    return table


def _gitops_leader(report: StatusReport) -> str:
    """The GitOps instance holding the Lease, as the instances' own metrics say."""
    leading = [g.name for g in report.gitops if g.leading]
    return ", ".join(leading) if leading else "-"


@app.command("fault")
def fault_cmd(
    action: Annotated[str, typer.Argument(help="kill | term | pause | resume | restart")],
    name: Annotated[str, typer.Argument(help="Component as `haplane status` names it.")],
    state_dir: StateDirOpt = None,
) -> None:
    """Inject a fault: kill (SIGKILL), term (SIGTERM), pause/resume (SIGSTOP/CONT), restart.

    kill and term stay down (the supervisor does not restart them) until `restart`."""
    from haplane.cli.quick import fault
    from haplane.local.control_client import FAULT_ACTIONS

    if action not in FAULT_ACTIONS:
        err.print(f"error: unknown action {action!r}; use one of {', '.join(FAULT_ACTIONS)}")
        raise typer.Exit(2)
    raise typer.Exit(fault(action, name, state_dir))


@app.command("drill")
def drill_cmd(
    scenario: Annotated[
        str,
        typer.Argument(
            help="replica-kill | etcd-leader-kill | region-kill | balancers-pause | partition | "
            "gate-cut | blip | switchover | replicator-kill | standby-partition | restore"
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Directory for the JSON and HTML reports."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report.")] = False,
    warmup: Annotated[float, typer.Option(help="Seconds of load before the fault.")] = 2.0,
    observe: Annotated[
        float, typer.Option(help="Seconds to watch after a fault that must not fail over.")
    ] = 6.0,
    interval: Annotated[
        float, typer.Option(help="Seconds between two writes (and between two reads).")
    ] = 0.02,
    reason: Annotated[
        str, typer.Option("--reason", help="Recorded with your name (through the API).")
    ] = "DR drill",
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    no_wait: NoWaitOpt = False,
    direct: Annotated[
        bool,
        typer.Option(
            "--direct",
            help="Run it here and now, as the local root-only primitive (like `haplane "
            "fault`): no API, approval or audit; prints the report.",
        ),
    ] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Run a DR drill against the running topology: a client writes and reads through the gate
    while the fault is injected; reports detection, agreement, fence wait, switch and
    reconnect times, the longest client-visible gap, errors by kind, acknowledged writes lost
    and epoch-order violations. Exit 1 when the drill fails (see the verdict).

    Through the API (the default): asks for a Drill (ops.haplane.dev) as you, which the
    supervisor's agent runs (after approval, if an ApprovalPolicy names Drill), and follows
    it; the verdict and summary land in its status, the reports in STATE/drills. --direct
    runs it in this process."""
    import asyncio

    from haplane.dr.report import render_json, render_table
    from haplane.local import drill
    from haplane.local.control_client import ControlError
    from haplane.store import EtcdError

    state = _state(state_dir)
    if not direct:
        if output is not None or as_json:
            err.print(
                "error: -o and --json go with --direct: through the API the agent writes the "
                "reports to STATE/drills and the Drill's status says where (`kubectl get drill "
                "NAME -o yaml`)"
            )
            raise typer.Exit(2)
        spec: dict[str, Any] = {
            "scenario": scenario,
            "reason": reason,
            "warmupSeconds": warmup,
            "observeSeconds": observe,
            "intervalSeconds": interval,
        }
        from . import ops

        ops.ask(
            state, _started(state), "Drill", scenario, spec, kubeconfig, region,
            None if no_wait else 3600.0,
        )  # fmt: skip
        return
    if kubeconfig or region or no_wait:
        err.print("error: --direct runs the drill here: no --kubeconfig, --region or --no-wait")
        raise typer.Exit(2)
    if scenario == "restore":
        _restore_drill(state, output, as_json)
        return
    try:
        result = asyncio.run(
            drill.run_drill(
                state,
                scenario,
                warmup=warmup,
                observe=observe,
                interval=interval,
                progress=lambda m: err.print(m),
            )
        )
    except (drill.DrillError, ControlError, EtcdError) as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from None
    j, h = drill.write_reports(result, output or state.root / "drills")
    if as_json:
        sys.stdout.write(render_json(result) + "\n")
    else:
        out.print(render_table(result), markup=False, highlight=False)
    err.print(f"reports: {j} {h}", soft_wrap=True, markup=False)  # one line: the agent reads it
    problems = drill.verdict(result)
    if problems:
        err.print("drill FAILED: " + "; ".join(problems))
        raise typer.Exit(1)
    err.print("drill passed")


def _restore_drill(state: StateDir, output: Path | None, as_json: bool) -> None:
    """`haplane drill restore --direct`: the active region's snapshot restored into a fresh
    cluster beside the running one and compared (`haplane.local.restore_drill`)."""
    import asyncio
    import json

    from haplane.local import restore_drill
    from haplane.store import EtcdError
    from haplane.store.snapshot import SnapshotError

    try:
        report = asyncio.run(
            restore_drill.run_restore_drill(_started(state), state, progress=lambda m: err.print(m))
        )
    except (restore_drill.RestoreDrillError, SnapshotError, EtcdError) as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from None
    path = restore_drill.write_report(report, output or state.root / "drills")
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        out.print(restore_drill.render(report), markup=False, highlight=False)
    err.print(f"reports: {path}", soft_wrap=True, markup=False)  # one line: the agent reads it
    if not report["passed"]:
        err.print("drill FAILED: " + "; ".join(report["problems"]))
        raise typer.Exit(1)
    err.print("drill passed")


@app.command("failover")
def failover_cmd(
    to: Annotated[str, typer.Option("--to", help="The region to make active.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Recorded in the history with your name.")
    ] = "planned switchover",
    expected_epoch: Annotated[
        int | None,
        typer.Option(
            "--expected-epoch",
            help="Refuse if the epoch is no longer this one (default: the current one).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="An unplanned failover: no freeze and catch-up (the old region may be "
            "unreachable); writes the new region had not applied are lost (the cut is "
            "reported).",
        ),
    ] = False,
    catch_up_timeout: Annotated[
        float,
        typer.Option(
            "--catch-up-timeout", help="Seconds the new region may take to apply the cut."
        ),
    ] = 10.0,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(
            "--kubeconfig",
            help="Act as this kubeconfig's user (default: $KUBECONFIG, else haplane-admin "
            "from the state dir).",
        ),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option("--region", help="Through this region's balancer (the gate cannot serve)."),
    ] = None,
    break_glass: Annotated[
        bool,
        typer.Option(
            "--break-glass",
            help="Skip approval (haplane:platform-admin only, with a --reason): loudly audited.",
        ),
    ] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Ask, print the request's name, and return.")
    ] = False,
    wait_timeout: Annotated[
        float, typer.Option("--wait-timeout", help="Seconds to follow the request.")
    ] = 3600.0,
    direct: Annotated[
        bool,
        typer.Option(
            "--direct",
            help="The local drill primitive (like `haplane fault`): switch straight in the global "
            "control etcd with the state dir's certificates; no API, approval or audit.",
        ),
    ] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Make REGION the active region.

    Through the API (the default): asks for a Switchover (ops.haplane.dev) as you (--kubeconfig)
    and follows it. When an ApprovalPolicy applies (by default one approver from
    haplane:dr-operator or haplane:platform-admin), it waits Pending until someone else runs
    `haplane approve NAME`; then the failover controller carries it out and its phases are
    printed. Exit 0 when it succeeded.

    With replication between the two regions, a planned switchover that loses nothing: one
    transaction freezes the old region and writes a cut marker, REGION's replicator applies
    it, REGION is promoted and the new epoch committed writable, and the old region follows
    REGION from the cut. If the old region cannot be frozen or REGION does not catch up in
    time, nothing is switched.

    With --force (or without replication): a fenced switchover that does not need the old
    region: the epoch is raised at once, and REGION writes after the grant plus the safety
    margin. Gates move new connections to REGION and close the old ones."""
    import asyncio

    from haplane.local import global_control
    from haplane.store import EtcdError, EtcdOutcomeUnknown

    state = _state(state_dir)
    topology = _started(state)
    if not direct:
        if expected_epoch is not None:
            err.print(
                "error: --expected-epoch goes with --direct (through the API the request "
                "records the epoch it was made at, and is refused if the epoch moves on)"
            )
            raise typer.Exit(2)
        if break_glass and reason == "planned switchover":
            err.print("error: --break-glass needs a --reason, recorded and audited with it")
            raise typer.Exit(2)
        from . import ops

        spec = ops.switchover_spec(
            to,
            reason=reason,
            force=force,
            break_glass=break_glass,
            catch_up_timeout=catch_up_timeout,
        )
        ops.ask(
            state, topology, "Switchover", f"to-{to}", spec, kubeconfig, region,
            None if no_wait else wait_timeout,
        )  # fmt: skip
        return
    if break_glass or kubeconfig or region or no_wait:
        err.print("error: --direct takes no --break-glass, --kubeconfig, --region or --no-wait")
        raise typer.Exit(2)

    async def run() -> global_control.SwitchResult:
        fences = global_control.region_fences(topology, state)
        try:
            async with global_control.control_client(topology, state) as client:
                return await global_control.switch(
                    client,
                    topology,
                    to,
                    reason=reason,
                    expected_epoch=expected_epoch,
                    fences=fences,
                    force=force,
                    catch_up_limit=catch_up_timeout,
                )
        finally:
            await fences.close()

    try:
        result = asyncio.run(run())
    except global_control.FailoverError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from None
    except EtcdOutcomeUnknown as exc:
        err.print(
            f"error: the switch was sent but its outcome is unknown ({exc}); "
            "`haplane status` shows the active region and epoch"
        )
        raise typer.Exit(1) from None
    except EtcdError as exc:
        err.print(f"error: the global control etcd did not answer: {exc}")
        raise typer.Exit(1) from None
    before, after, cut = result.before, result.after, result.cut
    for warning in result.warnings:
        err.print(f"warning: {warning}")
    head = (
        f"active region: {before.region} (epoch {before.epoch}) -> "
        f"[bold]{after.region}[/] (epoch {after.epoch})"
    )
    if result.planned:
        out.print(
            f"{head}: planned, {after.region} applied the cut (revision "
            f"{cut.revision if cut else '?'} of {before.region}) in "
            f"{result.caught_up_seconds or 0:.2f}s, nothing lost; {before.region} now follows "
            f"{after.region}"
        )
    else:
        lag = f", lag at the cut {cut.lag_seconds:.3f}s" if cut and cut.lag_seconds else ""
        where = (
            f"; promoted at revision {cut.revision} of {cut.source}{lag}: writes {cut.source} "
            "committed above it are not in the new region"
            if cut is not None and cut.source
            else ""
        )
        out.print(f"{head}: writable after a fence wait of {after.fence_wait:.2f}s{where}")


def _decide_cmd(
    name: str,
    kind: str,
    message: str,
    kubeconfig: Path | None,
    region: str | None,
    state_dir: Path | None,
) -> None:
    from . import ops

    state = _state(state_dir)
    topology = _started(state)
    try:
        api = ops.client(state, topology, kubeconfig, region, admin_fallback=False)
        obj = ops.decide(api, name, kind, message)
    except ops.ClientError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from None
    st = obj.get("status") or {}
    out.print(f"{str(obj.get('kind', '')).lower()}/{name}: {st.get('phase')}")


@app.command("grant")
def grant_cmd(
    clusterrole: Annotated[str, typer.Option("--clusterrole", help="The ClusterRole to bind.")],
    reason: Annotated[str, typer.Option("--reason", help="Why: recorded with your name.")],
    user: Annotated[
        list[str] | None, typer.Option("--user", help="Grant it to this user (repeat).")
    ] = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", help="Grant it to this group (repeat).")
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option("-n", "--namespace", help="A RoleBinding in this namespace only."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="The binding's name.")] = None,
    break_glass: Annotated[
        bool,
        typer.Option("--break-glass", help="Skip approval (haplane:platform-admin only)."),
    ] = False,
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    no_wait: NoWaitOpt = False,
    wait_timeout: Annotated[
        float, typer.Option("--wait-timeout", help="Seconds to follow the request.")
    ] = 3600.0,
    state_dir: StateDirOpt = None,
) -> None:
    """Ask for a RoleGrant: a binding of CLUSTERROLE, made by the platform once another person
    approved it (`haplane approve NAME`). Bindings to cluster-admin and haplane:platform-admin
    are made no other way."""
    from . import ops

    if not user and not group:
        err.print("error: whom? --user or --group (repeat for several)")
        raise typer.Exit(2)
    hint, spec = ops.grant_spec(
        role=clusterrole,
        users=list(user or ()),
        groups=list(group or ()),
        namespace=namespace,
        binding_name=name,
        reason=reason,
        break_glass=break_glass,
    )
    state = _state(state_dir)
    ops.ask(
        state, _started(state), "RoleGrant", hint, spec, kubeconfig, region,
        None if no_wait else wait_timeout,
    )  # fmt: skip


@app.command("approve")
def approve_cmd(
    name: Annotated[str, typer.Argument(help="The request to approve.")],
    message: Annotated[str, typer.Option("--message", help="Recorded with your name.")] = "",
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Approve someone else's request (a Switchover, RoleGrant, Drill or MaintenanceAction;
    your own never counts).
    Refused when you are not one of its approvers, or it expired or was decided already."""
    _decide_cmd(name, "Approved", message or "approved", kubeconfig, region, state_dir)


@app.command("reject")
def reject_cmd(
    name: Annotated[str, typer.Argument(help="The request to reject.")],
    reason: Annotated[str, typer.Option("--reason", help="Why: recorded with your name.")],
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Reject a request (an approver, or the requester withdrawing it): it never runs."""
    _decide_cmd(name, "Denied", reason, kubeconfig, region, state_dir)


app.add_typer(failback.app, name="failback")
app.add_typer(divergence.app, name="divergence")
app.add_typer(gc.app, name="gc")
app.add_typer(pki.app, name="pki")
app.add_typer(secrets.app, name="secrets")
app.add_typer(maintenance.app, name="maintenance")
app.add_typer(policy.app, name="policy")
app.add_typer(gitops.app, name="gitops")
app.add_typer(backup.app, name="backup")
app.add_typer(snapshot.app, name="snapshot")
app.add_typer(member.app, name="member")
app.add_typer(snapshot.restore_app, name="restore")
app.add_typer(runbook.app, name="runbook")
app.add_typer(console.app, name="console")
app.command("audit")(audit.audit_cmd)
app.command("drills")(drills.drills_cmd)


export_app = typer.Typer(help="Write configurations for other tools from a topology.")
app.add_typer(export_app, name="export")


def _export_ca(topology: Topology, state: StateDir, file: Path | None) -> str | None:
    """The CA HAProxy's health checks trust: the platform CA in the state dir (`up` made or
    adopted it), else the topology's own `spec.security.ca` (what `up` will adopt); None for
    an insecure topology. Exporting never issues certificates: that is `up`'s, which keeps
    the state dir's PKI consistent with what runs."""
    from haplane.local.security import platform_tls

    tls = platform_tls(state, topology)
    if tls is None:
        return None
    if tls.ca.is_file():
        return str(tls.ca)
    supplied = topology.spec.security.ca
    if supplied is not None:
        path = Path(supplied.cert_file).expanduser()
        if not path.is_absolute():
            path = (file.parent if file is not None else Path.cwd()) / path
        if path.is_file():
            return str(path.resolve())
        err.print(f"error: spec.security.ca.certFile: no file {path}")
        raise typer.Exit(2)
    err.print(
        f"error: {state.root} has no platform CA yet, and HAProxy's health checks must trust "
        "the CA the replicas' certificates come from: run `haplane up` first, or give the "
        "topology its CA (`spec.security.ca`)"
    )
    raise typer.Exit(1)


def _export_topology(state: StateDir, file: Path | None, example: str | None) -> Topology:
    """The topology to export: the one the state dir holds, or the one named (which must be
    the same topology when the state dir holds one: its ports and CA are that one's)."""
    from haplane.topology import load_file

    recorded = load_file(state.topology_file) if state.topology_file.exists() else None
    if file is None and example is None:
        if recorded is None:
            err.print(f"error: no topology in {state.root}; name a file or --example")
            raise typer.Exit(2)
        return recorded
    topology, _ = _load(file, example)
    if recorded is not None and recorded.name != topology.name:
        err.print(
            f"error: {state.root} holds topology {recorded.name!r}, not {topology.name!r}: "
            "export it without a file, or use another --state-dir (its ports and CA "
            "belong to the topology it holds)"
        )
        raise typer.Exit(2)
    return topology


@export_app.command("haproxy")
def export_haproxy_cmd(
    file: Annotated[
        Path | None, typer.Argument(help="Topology file (default: the one that is up).")
    ] = None,
    example: ExampleOpt = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(
            "--region",
            help="Point the gates at this region (needed when the global control etcd does "
            "not answer).",
        ),
    ] = None,
    state_dir: StateDirOpt = None,
) -> None:
    """The HAProxy configuration equivalent to the balancers and gates (same ports and checks).

    Ports the file leaves out come from the state dir (assigned now if new, as `up` would). The
    gate section points at the region active in the global control etcd; when it does not
    answer, name the region with --region (guessing could route to a demoted region). Export
    again after a failover."""
    import asyncio

    from haplane.local import gate_plans, global_control
    from haplane.local.haproxy_export import haproxy_config
    from haplane.store import EtcdError

    state = _state(state_dir)
    topology = _export_topology(state, file, example)
    ca = _export_ca(topology, state, file)
    state.ensure()
    plan = gate_plans.plan_of(topology, state, read_only=False)

    async def active() -> str | None:
        from haplane.local.security import MissingCredentials
        from haplane.store import GlobalState

        try:
            async with global_control.control_client(topology, state, timeout=1.0) as client:
                record = await GlobalState(client).read()
        except (EtcdError, MissingCredentials):  # not up here: the region must be named
            return None
        return record.region if record else None

    regions = [site.name for site, _ in topology.regions()]
    if region is not None and region not in regions:
        err.print(f"error: {region!r} is not a region; regions: {', '.join(regions)}")
        raise typer.Exit(2)
    target = region or asyncio.run(active())
    if target is None:
        err.print(
            "error: the global control etcd did not answer (is the topology up?), so the active "
            f"region is unknown; name it with --region ({', '.join(regions)})"
        )
        raise typer.Exit(1)
    text = haproxy_config(topology.name, plan.balancers, plan.gates, target, ca)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        err.print(f"wrote {output}")


@export_app.command("prometheus")
def export_prometheus_cmd(
    file: Annotated[
        Path | None, typer.Argument(help="Topology file (default: the one that is up).")
    ] = None,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Directory to write into (created).")
    ] = Path("prometheus"),
    example: ExampleOpt = None,
    scrape_interval: Annotated[
        int, typer.Option("--scrape-interval", min=1, max=300, help="Seconds.")
    ] = 15,
    node_exporter: Annotated[
        str,
        typer.Option(
            "--node-exporter",
            help="HOST:PORT of the node_exporter whose textfile collector reads STATE/metrics "
            "(the scheduled drills' results).",
        ),
    ] = "localhost:9100",
    state_dir: StateDirOpt = None,
) -> None:
    """Prometheus' scrape configuration (file_sd targets of every component), alerting rules
    with the topology's thresholds, and a Grafana dashboard.

    Certificates: Prometheus presents STATE/pki/platform/metrics-scraper.crt (group
    system:monitoring: /metrics and health) to haplane's processes, and an etcd-CA client
    certificate to etcd (which etcd 3.4 requires; it also opens the keyspace, as in any
    etcd scraped over TLS). Both are issued by `haplane up`. Export again after a topology
    change."""
    from haplane.local import gate_plans
    from haplane.local.prometheus_export import Options, write
    from haplane.local.security import platform_tls

    state = _state(state_dir)
    topology = _export_topology(state, file, example)
    tls = platform_tls(state, topology)
    if tls is not None:
        needed = (tls.ca, tls.scraper.cert, tls.etcd_scraper.cert, tls.etcd_scraper.ca)
        missing = [p for p in needed if not p.is_file()]
        if missing:
            err.print(
                f"error: no {missing[0]}: Prometheus' certificates are issued by `haplane up` "
                "(run it, or run it again on a topology that is up: it adds what is missing)"
            )
            raise typer.Exit(1)
    state.ensure()
    plan = gate_plans.plan_of(topology, state, read_only=False)
    options = Options(scrape_interval, node_exporter, output)
    for path in write(topology, plan, tls, options):
        out.print(str(path))
    err.print(
        f"check: promtool check config {output / 'prometheus.yml'}; run: prometheus "
        f"--config.file={output / 'prometheus.yml'}"
    )


@export_app.command("metrics")
def export_metrics_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of Markdown.")] = False,
) -> None:
    """The metric catalogue: every metric of every component, with type, labels and meaning
    (the README's section is this output)."""
    from haplane import telemetry

    if as_json:
        doc = [
            {"job": c.job, "name": m.name, "type": m.kind, "labels": list(m.labels),
             "help": m.help}
            for c in telemetry.COMPONENTS
            for m in c.metrics
        ]  # fmt: skip
        out.print_json(json.dumps(doc))
    else:
        sys.stdout.write(telemetry.markdown())


@app.command("logs")
def logs_cmd(
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing lines as they are written.")
    ] = False,
    component: Annotated[
        list[str] | None,
        typer.Option(
            "--component",
            "-c",
            help="Only these (repeatable): a glob on scope/name (`eu-west/*`, `*/etcd-*`), a "
            "scope (`global`), a name (`api-1`), or `supervisor`.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="From this long ago (30s, 10m, 2h, 1d) or this UTC time."),
    ] = None,
    grep: Annotated[
        str | None, typer.Option("--grep", help="Only lines matching this regular expression.")
    ] = None,
    level: Annotated[
        str, typer.Option("--level", help="At least this level: debug, info, warning, error.")
    ] = "debug",
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line, for other tools.")
    ] = False,
    color: Annotated[
        str, typer.Option("--color", help="auto (a terminal), always or never.")
    ] = "auto",
    state_dir: StateDirOpt = None,
) -> None:
    """Every component's log and the supervisor's, merged into one time-ordered view.

    Times are each process's wall clock (UTC) as it wrote the line; every file of the state
    dir comes from a process on this host, so they are one clock's. Exit 1 when the state dir
    has no logs."""
    import re
    import time

    from haplane.local import logs

    state = _state(state_dir)
    if level.lower() not in logs.LEVELS:
        err.print(f"error: --level {level!r}: use debug, info, warning or error")
        raise typer.Exit(2)
    if color not in ("auto", "always", "never"):
        err.print(f"error: --color {color!r}: use auto, always or never")
        raise typer.Exit(2)
    try:
        flt = logs.Filter(
            components=tuple(component or ()),
            since=logs.since_of(since) if since else None,
            grep=re.compile(grep) if grep else None,
            level=logs.LEVELS[level.lower()],
        )
    except (ValueError, re.error) as exc:
        err.print(f"error: {exc}" if isinstance(exc, ValueError) else f"error: --grep: {exc}")
        raise typer.Exit(2) from None
    if not [c for c, _ in logs.sources(state) if flt.wants_component(c)]:
        what = "matching --component " if component else ""
        err.print(f"error: no logs {what}in {state.root}")
        raise typer.Exit(1)
    readers = logs.readers(state, flt)
    if not as_json:
        err.print(f"{len(readers)} logs; times: {logs.CLOCK}")
    colour = color == "always" or (color == "auto" and sys.stdout.isatty())
    width = max(len(r.component) for r in readers)

    def emit(entries: Any) -> None:
        for e in entries:
            if as_json:
                sys.stdout.write(json.dumps(e.as_json(), default=str) + "\n")
            else:
                sys.stdout.write(logs.render(e, width, colour) + "\n")
        sys.stdout.flush()

    try:
        emit(logs.merged(readers, flt, final=not follow))
        while follow:
            time.sleep(0.25)
            started = logs.readers(state, flt, readers)  # components started since
            readers += started
            width = max([width, *(len(r.component) for r in started)])
            emit(logs.merged(readers, flt, final=False))
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `| head`
        sys.stderr.close()


@app.command("kubeconfig")
def kubeconfig_cmd(
    replica: Annotated[
        str | None,
        typer.Option("--replica", help="Straight to one API replica, e.g. eu-west/api-1."),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option("--region", help="Through this region's first balancer, bypassing the gate."),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            help="Issue a client certificate for this user (signed by the platform CA) instead "
            "of using haplane-admin (system:masters); bind it roles with kubectl.",
        ),
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option("--group", help="A group of --user (repeat for several)."),
    ] = None,
    days: Annotated[int, typer.Option("--days", help="Lifetime of --user's certificate.")] = 365,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")
    ] = None,
    state_dir: StateDirOpt = None,
) -> None:
    """A kubeconfig for kubectl and Kubernetes clients. By default it points at the global gate
    (the address its instances on this host share), which forwards to the active region, as
    haplane-admin (system:masters: every permission); `--user` issues a certificate for
    someone else. The kubeconfig embeds the key: it is written mode 0600."""
    import yaml

    from haplane.local.gate_plans import plan_of
    from haplane.local.security import user_certificate
    from haplane.topology import load_file

    state = _state(state_dir)
    if not state.topology_file.exists():
        err.print(f"error: no topology has been started in {state.root} (`haplane up` first)")
        raise typer.Exit(1)
    if replica and region:
        err.print("error: --replica and --region exclude each other")
        raise typer.Exit(2)
    if group and not user:
        err.print("error: --group goes with --user")
        raise typer.Exit(2)
    topology = load_file(state.topology_file)
    plan = plan_of(topology, state)
    if user and plan.tls is None:
        err.print(
            "error: --user: this topology runs with `security.insecure: true` (no identities)"
        )
        raise typer.Exit(2)
    replicas, balancers = plan.replicas, plan.balancers
    if replica is not None:
        found = [r for r in replicas if r.qualified_name == replica]
        if not found:
            err.print(
                f"error: no API replica {replica!r}; known: "
                f"{', '.join(r.qualified_name for r in replicas)}"
            )
            raise typer.Exit(1)
        name, server = f"{topology.name}-{found[0].region}-{found[0].name}", found[0].url
    elif region is not None:
        lbs = [b for b in balancers if b.region == region]
        if not lbs:
            known = sorted({b.region for b in balancers})
            err.print(f"error: no balancer in region {region!r}; regions: {', '.join(known)}")
            raise typer.Exit(1)
        name, server = f"{topology.name}-{region}", lbs[0].url
    else:
        name, server = topology.name, plan.gates[0].url
    from .api_client import kubeconfig as make_kubeconfig

    user_name, ca, pair = "haplane-anonymous", None, None
    if plan.tls is not None:
        plan.tls.check()
        ca = plan.tls.ca.read_bytes()
        if user:
            from haplane.auth.pki import PkiError

            try:
                pair = user_certificate(plan.tls, user, tuple(group or ()), days)
            except PkiError as exc:
                err.print(f"error: {exc}")
                raise typer.Exit(2) from None
            user_name = user
        else:
            pair, user_name = plan.tls.admin, "haplane-admin"
    doc = make_kubeconfig(
        name,
        server,
        user_name,
        ca=ca,
        cert=pair.cert.read_bytes() if pair is not None else None,
        key=pair.key.read_bytes() if pair is not None else None,
    )
    text = yaml.safe_dump(doc, sort_keys=False)
    if output is None:
        sys.stdout.write(text)
    else:
        import os

        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(text)
        err.print(f"wrote {output} (server {server}, user {user_name})")


@app.command("version")
def version_cmd() -> None:
    """Print haplane's version and the etcd binary it would run."""
    from haplane.cli.quick import version

    raise typer.Exit(version())


def _missing_credentials(exc: Exception) -> bool:
    """Whether `exc` is a `haplane.local.security.MissingCredentials`, without importing that
    module (heavy) for commands that never did: only a command that imported it can raise it."""
    security = sys.modules.get("haplane.local.security")
    return security is not None and isinstance(exc, security.MissingCredentials)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
    except Exception as exc:
        if not _missing_credentials(exc):
            raise
        err.print(f"error: {exc}")
        sys.exit(1)


__all__ = ["app", "main"]
