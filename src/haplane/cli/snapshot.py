"""`haplane snapshot save|list|describe|verify|prune` and `haplane restore region|global`:
physical snapshots of a running topology's etcd clusters, and rebuilding a standby region or
the global control etcd from one.

Layer: run (cli). Local primitives, as `haplane fault` is: they need the state dir (its
operator certificates and the supervisor's socket), not the API. The work is
`haplane.local.snapshots` over `haplane.store.snapshot`.

Import-light: typer only at import; the rest inside the commands.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from .options import StateDirOpt

if TYPE_CHECKING:
    from haplane.local.state_dir import StateDir
    from haplane.topology import Topology

app = typer.Typer(
    help="Physical snapshots of each region's etcd and of the global control etcd.",
    no_args_is_help=True,
)
restore_app = typer.Typer(
    help="Rebuild a region's etcd, or the global control etcd, from a snapshot.",
    no_args_is_help=True,
)

T = TypeVar("T")
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON instead of text.")]
IdArg = Annotated[str, typer.Argument(help="The snapshot's id (`haplane snapshot list`).")]


def _state(state_dir: Path | None) -> StateDir:
    from haplane.local.state_dir import StateDir, default_state_dir

    return StateDir(state_dir or default_state_dir())


def _started(state: StateDir) -> Topology:
    from haplane.topology import load_file

    if not state.topology_file.exists():
        typer.echo(f"error: no topology has been started in {state.root} (`haplane up` first)")
        raise typer.Exit(1)
    return load_file(state.topology_file)


def _fail(text: str) -> typer.Exit:
    typer.echo(f"error: {text}", err=True)
    return typer.Exit(1)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@app.command("save")
def save_cmd(
    region: Annotated[
        list[str] | None,
        typer.Option("--region", "-r", help="A region's etcd, or `global` (repeatable)."),
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every region's etcd and the global control etcd.")
    ] = False,
    as_json: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Stream a snapshot of each named cluster from one of its followers into
    STATE/snapshots/, check it (etcd's own sha256, etcd reading the file) and describe it."""
    import asyncio

    from haplane.local.snapshots import save
    from haplane.store.snapshot import SnapshotError

    state = _state(state_dir)
    topology = _started(state)
    scopes = [c.scope for c in topology.etcd_clusters()] if every else list(region or [])
    if not scopes:
        raise _fail("name a cluster with --region R (or `global`), or use --all")
    taken = []
    for scope in scopes:
        try:
            meta = asyncio.run(save(topology, state, scope))
        except SnapshotError as exc:
            raise _fail(str(exc)) from None
        taken.append(meta)
        if not as_json:
            typer.echo(
                f"{meta.id}: {_size(meta.size)}, revision {meta.revision}, "
                f"{meta.seconds:.2f} s, from {meta.member}"
            )
    if as_json:
        typer.echo(json.dumps([asdict(m) for m in taken], indent=2))


@app.command("list")
def list_cmd(
    region: Annotated[str | None, typer.Option("--region", "-r", help="Only this cluster.")] = None,
    as_json: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """The snapshots kept in STATE/snapshots/, oldest first."""
    from haplane.local.snapshots import snapshot_store

    metas = snapshot_store(_state(state_dir)).list(region)
    if as_json:
        typer.echo(json.dumps([asdict(m) for m in metas], indent=2))
        return
    if not metas:
        typer.echo("no snapshots")
        return
    typer.echo(f"{'ID':<44} {'SCOPE':<12} {'REVISION':>9} {'EPOCH':>5} {'SIZE':>10}  TAKEN")
    for m in metas:
        epoch = "-" if m.epoch is None else str(m.epoch)
        typer.echo(
            f"{m.id:<44} {m.scope:<12} {m.revision:>9} {epoch:>5} {_size(m.size):>10}  {m.taken_at}"
        )


@app.command("describe")
def describe_cmd(snapshot: IdArg, state_dir: StateDirOpt = None) -> None:
    """A snapshot's description (as JSON)."""
    from haplane.local.snapshots import snapshot_store
    from haplane.store.snapshot import SnapshotError

    try:
        meta = snapshot_store(_state(state_dir)).get(snapshot)
    except SnapshotError as exc:
        raise _fail(str(exc)) from None
    typer.echo(meta.to_json().rstrip())


@app.command("verify")
def verify_cmd(snapshot: IdArg, state_dir: StateDirOpt = None) -> None:
    """Every check a restore makes: the topology, size, sha256, etcd's own hash, and etcd
    reading the file. Exit 1 with the first that fails."""
    from haplane.local.snapshots import identity, snapshot_store
    from haplane.store.snapshot import SnapshotError, verify

    state = _state(state_dir)
    try:
        meta = verify(snapshot_store(state), snapshot, topology=identity(state))
    except SnapshotError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{meta.id}: intact (revision {meta.revision}, sha256 {meta.sha256[:16]}...)")


@app.command("prune")
def prune_cmd(
    hourly: Annotated[int, typer.Option(help="Keep the newest of this many hours.")] = 24,
    daily: Annotated[int, typer.Option(help="Keep the newest of this many days.")] = 7,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would go.")] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Delete the snapshots a retention of HOURLY hours and DAILY days does not keep, per
    cluster (the newest of each cluster is always kept)."""
    from haplane.local.snapshots import snapshot_store
    from haplane.store.snapshot import retained

    store = snapshot_store(_state(state_dir))
    metas = store.list()
    gone = []
    for scope in sorted({m.scope for m in metas}):
        mine = [m for m in metas if m.scope == scope]
        keep = retained(mine, hourly, daily)
        gone += [m.id for m in mine if m.id not in keep]
    for sid in gone:
        if not dry_run:
            store.delete(sid)
        typer.echo(f"{'would delete' if dry_run else 'deleted'} {sid}")
    typer.echo(f"{len(metas) - len(gone)} kept")


YesOpt = Annotated[bool, typer.Option("--yes", help="Do it: without, only the checks run.")]


def _restore(
    run: Callable[[StateDir, Topology], Coroutine[object, object, T]], state_dir: Path | None
) -> T:
    """A restore's report; refused (nothing changed) or failed (its steps, printed, say what
    was put back): said, exit 1."""
    import asyncio

    from haplane.local.snapshots import RestoreRefused

    state = _state(state_dir)
    topology = _started(state)
    try:
        return asyncio.run(run(state, topology))
    except RestoreRefused as exc:
        raise _fail(f"refused: {exc}") from None
    except Exception as exc:
        raise _fail(f"restore failed: {exc}") from None


def _progress(text: str) -> None:
    typer.echo(text, err=True)


@restore_app.command("region")
def restore_region_cmd(
    region: Annotated[str, typer.Argument(help="The region to rebuild (a standby).")],
    snapshot: Annotated[str, typer.Option("--snapshot", help="The snapshot's id.")],
    yes: YesOpt = False,
    as_json: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Rebuild a standby region's etcd from one of its snapshots: every member restored from
    the same file under a new cluster token (a new cluster identity: versions clients saw
    before get 410/409), the region's processes restarted, and its replicators catching up
    from where the snapshot left them. The active region is refused."""
    from haplane.local.snapshots import restore_region

    report = _restore(
        lambda state, topology: restore_region(
            topology, state, region, snapshot, progress=_progress, check_only=not yes
        ),
        state_dir,
    )
    if not yes:
        typer.echo(
            f"{snapshot}: every check passed; run again with --yes to stop {region}'s "
            "processes and rebuild its etcd from it"
        )
    elif as_json:
        typer.echo(json.dumps(asdict(report), indent=2))
    else:
        typer.echo(
            f"{region} restored from {report.snapshot} (revision {report.revision}) in "
            f"{report.seconds:.1f} s: cluster {report.old_cluster_id or '?'} -> "
            f"{report.new_cluster_id}; old data dirs kept in {', '.join(report.kept) or '-'}"
        )


@restore_app.command("global")
def restore_global_cmd(
    snapshot: Annotated[str, typer.Option("--snapshot", help="The snapshot's id.")],
    yes: YesOpt = False,
    as_json: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Rebuild the global control etcd from one of its snapshots, under a new epoch above
    every epoch the snapshot, the fence keys and the live record know (gates and replicas
    never see an epoch go back), fenced until the fence wait has passed. Every region's etcd
    must answer. Operations unfinished in the snapshot are marked Failed."""
    from haplane.local.restore_global import restore_global

    report = _restore(
        lambda state, topology: restore_global(
            topology, state, snapshot, progress=_progress, check_only=not yes
        ),
        state_dir,
    )
    if not yes:
        typer.echo(
            f"{snapshot}: every check passed; it would come back with {report.region} active "
            f"under epoch {report.epoch}. Run again with --yes to stop the global control "
            "etcd's members and rebuild it"
        )
    elif as_json:
        typer.echo(json.dumps(asdict(report), indent=2))
    else:
        typer.echo(
            f"the global control etcd restored from {report.snapshot} in {report.seconds:.1f} s "
            f"(unanswered for {report.outage_seconds:.1f} s): {report.region} active under "
            f"epoch {report.epoch}{'' if report.unfenced else ' (still fenced)'}; old data dirs "
            f"kept in {', '.join(report.kept) or '-'}"
        )
    for w in report.warnings:
        typer.echo(f"warning: {w}", err=True)
