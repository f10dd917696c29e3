"""`haplane failback on|off|status`: may the failover controller fail back by itself?

Layer: run (cli). The operators' setting lives in the global control etcd
(`GlobalState.failback_setting`, key `failback` under the global prefix). An operator's
switchover (`haplane failover --to`) suspends automatic failback, since the operator chose
where writes go; `on` resumes it, `off` suspends it by hand. Neither changes the topology's
`failback` (off by default): the controller fails back only when the file enables it and
operators have not suspended it.

Import-light: `haplane` builds every command at start-up, so this module imports typer only;
the rest is imported inside the commands.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from .options import StateDirOpt

if TYPE_CHECKING:
    from haplane.store import GlobalState
    from haplane.topology import Topology

T = TypeVar("T")

app = typer.Typer(
    help="Automatic failback: resume it (on), suspend it (off), or show it (status).",
    no_args_is_help=True,
)

ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Recorded with your name.")]


@app.command("on")
def on_cmd(reason: ReasonOpt = None, state_dir: StateDirOpt = None) -> None:
    """Let the failover controller fail back to the preferred region again (when the topology
    enables failback)."""
    _set(True, reason or "failback resumed by an operator", state_dir)


@app.command("off")
def off_cmd(reason: ReasonOpt = None, state_dir: StateDirOpt = None) -> None:
    """Suspend automatic failback until `haplane failback on` (a failover when the active
    region goes down still happens)."""
    _set(False, reason or "failback suspended by an operator", state_dir)


@app.command("status")
def status_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Whether the topology enables automatic failback, and whether operators suspended it
    (by whom, since when, why)."""
    topology, setting = _with_global_state(state_dir, lambda s: s.failback_setting())
    f = topology.spec.global_.failover
    effective = f.failback and setting.enabled
    if as_json:
        import json

        doc = {
            "configured": f.failback,
            "failbackAfterMs": f.failback_after_ms,
            "suspended": not setting.enabled,
            **setting.as_dict(),
            "effective": effective,
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    if f.failback:
        typer.echo(
            "topology:  failback on (after the preferred region has been healthy for "
            f"{f.failback_after_ms / 1000:g}s)"
        )
    else:
        typer.echo("topology:  failback off (spec.global.failover.failback: false)")
    if setting.by is None:
        typer.echo("operators: not suspended (never set)")
    else:
        state = "resumed" if setting.enabled else "SUSPENDED"
        typer.echo(f"operators: {state} by {setting.by} since {setting.since}: {setting.reason}")
    typer.echo(
        "automatic failback: "
        + ("yes" if effective else "no")
        + ("" if effective or not f.failback else " (`haplane failback on` resumes it)")
    )


def _set(enabled: bool, reason: str, state_dir: Path | None) -> None:
    from haplane.local.global_control import operator

    by = operator()
    topology, setting = _with_global_state(
        state_dir, lambda s: s.set_failback(enabled, by=by, reason=reason)
    )
    word = "resumed" if setting.enabled else "suspended"
    typer.echo(f"automatic failback {word} by {setting.by}: {setting.reason}")
    if enabled and not topology.spec.global_.failover.failback:
        typer.echo(
            "note: the topology does not enable failback (spec.global.failover.failback: "
            "false): the controller still never fails back on its own",
            err=True,
        )


def _with_global_state(
    state_dir: Path | None, work: Callable[[GlobalState], Awaitable[T]]
) -> tuple[Topology, T]:
    """The running topology, and `work` done on its global control state; exit 1 (with the
    reason on stderr) when nothing runs there or the global control etcd does not answer."""
    import asyncio

    from haplane.local import global_control
    from haplane.local.state_dir import StateDir, default_state_dir
    from haplane.store import EtcdError, EtcdOutcomeUnknown, GlobalState
    from haplane.topology import load_file

    state = StateDir(state_dir or default_state_dir())
    if not state.topology_file.exists():
        typer.echo(
            f"error: no topology has been started in {state.root} (`haplane up` first)", err=True
        )
        raise typer.Exit(1)
    topology = load_file(state.topology_file)

    async def run() -> T:
        async with global_control.control_client(topology, state) as client:
            return await work(GlobalState(client))

    try:
        return topology, asyncio.run(run())
    except EtcdOutcomeUnknown as exc:
        typer.echo(
            f"error: the change was sent but its outcome is unknown ({exc}); "
            "`haplane failback status` shows the setting",
            err=True,
        )
    except EtcdError as exc:
        typer.echo(f"error: the global control etcd did not answer: {exc}", err=True)
    raise typer.Exit(1)
