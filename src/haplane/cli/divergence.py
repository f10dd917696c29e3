"""`haplane divergence list|show|apply NAME`: what a returning region wrote after the cut.

Layer: run (cli). A region that lost the active role while cut off may have committed writes
after the cut; before it is re-seeded its replicator saves them under `STATE/divergence/<epoch>/`
(`haplane.replication.rejoin`). These commands let an operator review them and re-apply chosen
objects through the API (`haplane.local.divergence`).

Import-light: typer only at import; the rest inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .options import StateDirOpt

if TYPE_CHECKING:
    from haplane.local.state_dir import StateDir

app = typer.Typer(
    help="Writes a returning region made after the cut: list, show, re-apply.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="JSON instead of a table.")]


def _state(state_dir: Path | None) -> StateDir:
    from haplane.local.state_dir import StateDir, default_state_dir

    return StateDir(state_dir or default_state_dir())


def _root(state_dir: Path | None) -> Path:
    return _state(state_dir).root


def _out(text: str) -> None:
    typer.echo(text)


@app.command("list")
def list_cmd(as_json: JsonOpt = False, state_dir: StateDirOpt = None) -> None:
    """Every saved divergence: its name (the epoch), region, active region, cut, method, count."""
    from haplane.local.divergence import list_saved

    saved = list_saved(_root(state_dir))
    if as_json:
        _out(json.dumps(saved, indent=2))
        return
    if not saved:
        _out("no divergence saved")
        return
    _out(f"{'NAME':<6} {'REGION':<14} {'ACTIVE':<14} {'CUT':>8} {'METHOD':<9} {'OBJECTS':>7}")
    for d in saved:
        _out(
            f"{d['name']:<6} {d['region']:<14} {d['active']:<14} {d.get('cut') or '-':>8} "
            f"{d['method']:<9} {d['count']:>7}"
        )


@app.command("show")
def show_cmd(name: str, as_json: JsonOpt = False, state_dir: StateDirOpt = None) -> None:
    """One divergence's keys: what the old region changed after the cut."""
    from haplane.local.divergence import DivergenceError, load

    try:
        doc = load(_root(state_dir), name)
    except DivergenceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        _out(json.dumps(doc, indent=2))
        return
    _out(
        f"{doc['region']} wrote these after the cut (revision {doc.get('cut')}) of epoch "
        f"{doc['epoch']}, when {doc['active']} took over ({doc['method']}); saved in {doc['path']}"
    )
    for e in doc["entries"]:
        size = f"{e['bytes']} B" if e.get("bytes") is not None else "-"
        _out(f"  {e['change']:<12} {e['key']}  (revision {e['revision'] or '-'}, {size})")


@app.command("apply")
def apply_cmd(
    name: str,
    key: Annotated[
        list[str] | None, typer.Option("--key", help="Only this etcd key (repeat).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be done.")] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Re-apply a divergence's objects through the gate: created where absent, else replaced
    over the current version. Deletions are listed, never replayed."""
    import asyncio

    from haplane.local.divergence import DivergenceError, reapply, reapply_plan
    from haplane.local.gate_plans import plan_of
    from haplane.local.security import encryption_config_path, http_ssl
    from haplane.topology import load_file

    state = _state(state_dir)
    topology = load_file(state.topology_file) if state.topology_file.exists() else None
    config = encryption_config_path(state, topology)
    decrypt = None
    if config.exists():  # sealed values are opened in memory to be applied through the API
        from haplane.api.encryption import stored_types, transformers

        decrypt = transformers(config, stored_types()).from_storage
    try:
        steps = reapply_plan(state.root, name, key, decrypt)
    except DivergenceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if dry_run:
        for s in steps:
            what = "apply" if s["action"] == "apply" else f"skip ({s['why']})"
            _out(f"{what}: {s['key']}")
        return
    if topology is None:
        typer.echo(f"error: no topology has been started in {state.root}", err=True)
        raise typer.Exit(1)
    plan = plan_of(topology, state)
    results = asyncio.run(reapply(plan.gates[0].url, steps, http_ssl(plan.tls)))
    failed = 0
    for r in results:
        failed += r["result"] == "failed"
        why = f" ({r['why']})" if r.get("why") else ""
        _out(f"{r['result']}: {r['key']}{why}")
    if failed:
        raise typer.Exit(1)
