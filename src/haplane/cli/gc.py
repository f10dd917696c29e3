"""`haplane gc status|resume`: the garbage collector of a region promoted from a partial copy.

Layer: run (cli). A region promoted while its copy was still resyncing (only `haplane failover
--force` does that: automatic failover never picks a resyncing region) may lack owners whose
dependents it holds; its garbage collector would delete those dependents. It is paused in the
global control etcd (`GlobalState.pause_gc`) at the promotion, until an operator resumes it.

Import-light: typer only at import; the rest inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .options import StateDirOpt

app = typer.Typer(
    help="Garbage collection paused after a promotion from a partial copy: status, resume.",
    no_args_is_help=True,
)

RegionOpt = Annotated[
    str | None, typer.Option("--region", help="Default: every region (status) or the active one.")
]


def _run(state_dir: Path | None, work: Any) -> Any:
    import asyncio

    from haplane.local import global_control
    from haplane.local.state_dir import StateDir, default_state_dir
    from haplane.store import EtcdError, GlobalState
    from haplane.topology import load_file

    state = StateDir(state_dir or default_state_dir())
    if not state.topology_file.exists():
        typer.echo(f"error: no topology has been started in {state.root}", err=True)
        raise typer.Exit(1)
    topology = load_file(state.topology_file)

    async def run() -> Any:
        async with global_control.control_client(topology, state) as client:
            return await work(GlobalState(client), [s.name for s, _ in topology.regions()])

    try:
        return asyncio.run(run())
    except EtcdError as exc:
        typer.echo(f"error: the global control etcd did not answer: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("status")
def status_cmd(region: RegionOpt = None, state_dir: StateDirOpt = None) -> None:
    """Whether each region's garbage collector runs or is paused, and why."""

    async def work(g: Any, regions: list[str]) -> list[tuple[str, Any]]:
        return [(r, await g.gc_paused(r)) for r in regions if region in (None, r)]

    for r, note in _run(state_dir, work):
        typer.echo(
            f"{r}: runs"
            if note is None
            else f"{r}: PAUSED since {note.get('since')} (epoch {note.get('epoch')}): "
            f"{note.get('reason')}"
        )


@app.command("resume")
def resume_cmd(region: RegionOpt = None, state_dir: StateDirOpt = None) -> None:
    """Let a region's garbage collector run again (once its copy is complete: `haplane
    status` shows its last resync, or its owners were restored)."""

    async def work(g: Any, regions: list[str]) -> str:
        target = region
        if target is None:
            record = await g.read()
            target = record.region if record is not None else None
        if target not in regions:
            raise typer.BadParameter(f"unknown region {target!r}; regions: {', '.join(regions)}")
        await g.resume_gc(target)
        return str(target)

    typer.echo(f"{_run(state_dir, work)}: garbage collector resumed")
