"""`haplane member replace REGION/etcd-N`: a lost etcd member (its data dir gone) replaced
by a new one, as a learner first, without a write outage.

Layer: run (cli). A local primitive, as `haplane fault` is (the state dir's certificates and
the supervisor's socket); the work is `haplane.local.member_replace`.

Import-light: typer only at import; the rest inside the command.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from .options import StateDirOpt

app = typer.Typer(help="etcd members: replace a lost one.", no_args_is_help=True)


@app.command("replace")
def replace_cmd(
    member: Annotated[str, typer.Argument(help="The member, as `haplane status` names it.")],
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Remove the member from its cluster, add it back as a learner on a fresh data dir (the
    old one kept aside), start it, promote it once it caught up. Refused while any other
    member of the cluster is down."""
    import asyncio

    from haplane.local.member_replace import ReplaceRefused, replace_member
    from haplane.local.state_dir import StateDir, default_state_dir
    from haplane.store import EtcdError
    from haplane.topology import load_file

    state = StateDir(Path(state_dir) if state_dir else default_state_dir())
    if not state.topology_file.exists():
        typer.echo(f"error: no topology has been started in {state.root}", err=True)
        raise typer.Exit(1)
    try:
        report = asyncio.run(
            replace_member(
                load_file(state.topology_file),
                state,
                member,
                progress=lambda t: typer.echo(t, err=True),
            )
        )
    except ReplaceRefused as exc:
        typer.echo(f"error: refused: {exc}", err=True)
        raise typer.Exit(1) from None
    except EtcdError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(asdict(report), indent=2))
        return
    typer.echo(
        f"{member} replaced in {report.seconds:.1f} s: member {report.old_id or '-'} -> "
        f"{report.new_id}" + (f"; old data kept in {report.kept}" if report.kept else "")
    )
