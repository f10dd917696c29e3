"""`haplane backup create|list|describe|restore`: logical backups, Velero's idea.

Layer: run (cli). Thin: `haplane.backup` does the work. A Kubernetes client of the platform
with your kubeconfig (`--kubeconfig`, `KUBECONFIG`), else the state dir's admin identity (as
`haplane gitops`), so RBAC decides what you may back up and restore, and audit records it.
Backups live in `STATE/backups/logical/NAME/` unless `--dir` says where. Secrets are sealed
under the platform's key-encryption key, reached through the encryption configuration the
replicas use (the state dir's, or `--encryption-config`).

Import-light: typer only at import; the rest inside the commands.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from .options import KubeconfigOpt, RegionOpt, StateDirOpt

if TYPE_CHECKING:
    from haplane.backup import Sealer
    from haplane.kubeclient import KubeClient

app = typer.Typer(
    help="Logical backups: namespaces and resources as YAML, restored through the API.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="The backup's name.")]
DirOpt = Annotated[
    Path | None,
    typer.Option("--dir", help="Where backups live (default: STATE/backups/logical)."),
]
EncryptionOpt = Annotated[
    Path | None,
    typer.Option(
        "--encryption-config",
        help="The platform's EncryptionConfiguration, to seal and open Secrets (default: the "
        "state dir's).",
    ),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude-resource", help="Leave this resource out (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON instead of text.")]
AGENT = "haplane-backup"
T = TypeVar("T")


def _state_root(state_dir: Path | None) -> Path:
    from haplane.local.state_dir import default_state_dir

    return state_dir or default_state_dir()


def _root(directory: Path | None, state_dir: Path | None) -> Path:
    return directory or _state_root(state_dir) / "backups" / "logical"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _kube(kubeconfig: Path | None, region: str | None, state_dir: Path | None) -> KubeClient:
    from haplane.auth.kubeconfig import Credentials
    from haplane.kubeclient import KubeClient

    from .ops import operator_client

    c = operator_client(kubeconfig, region, state_dir)
    return KubeClient(Credentials(c.server, c.context, c.token, c.user), agent=AGENT)


def _sealer(config: Path | None, state_dir: Path | None) -> tuple[Sealer | None, str]:
    """The platform's KEK as the encryption configuration reaches it, or why there is none.
    An explicit `--encryption-config` that cannot be used is an error."""
    from haplane.backup import Sealer, SealingError

    if config is None:
        from haplane.local.security import encryption_config_path
        from haplane.local.state_dir import StateDir

        state = StateDir(_state_root(state_dir))
        topology = None
        if state.topology_file.exists():
            from haplane.topology import load_file

            topology = load_file(state.topology_file)
        default = encryption_config_path(state, topology)
        if not default.exists():
            return None, f"no encryption configuration at {default}"
        config = default
    elif not config.exists():
        raise _fail(f"--encryption-config {config}: no such file")
    try:
        return Sealer.from_config(config), ""
    except SealingError as exc:
        # the platform's configuration, unusable: what it encrypts at rest (maybe more than
        # Secrets) would be written in the clear; refused rather than guessed
        raise _fail(f"the encryption configuration {config} cannot be used: {exc}") from None


def _progress(text: str) -> None:
    typer.echo(text, err=True)


def _run(
    work: Callable[[KubeClient, Sealer | None, str], Awaitable[T]],
    kubeconfig: Path | None,
    region: str | None,
    state_dir: Path | None,
    encryption_config: Path | None,
) -> T:
    """`work` with a client of the platform and the platform's KEK (or why there is none);
    a BackupError is said and exits 1. The client and the KEK's provider are closed after."""
    import asyncio

    from haplane.backup import BackupError

    sealer, no_sealer = _sealer(encryption_config, state_dir)
    kube = _kube(kubeconfig, region, state_dir)

    async def run() -> T:
        try:
            return await work(kube, sealer, no_sealer)
        finally:
            await kube.close()

    try:
        return asyncio.run(run())
    except BackupError as exc:
        raise _fail(str(exc)) from None
    finally:
        if sealer is not None:
            sealer.close()


@app.command("create")
def create_cmd(
    name: NameArg,
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Only this namespace (repeatable)."),
    ] = None,
    resource: Annotated[
        list[str] | None,
        typer.Option(
            "--resource",
            "-r",
            help="Only this resource: configmaps, cm, widgets.example.com (repeatable).",
        ),
    ] = None,
    exclude: ExcludeOpt = None,
    directory: DirOpt = None,
    encryption_config: EncryptionOpt = None,
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Export namespaces and resources as YAML, with their Namespaces and CRDs.

    Default: every resource but Events, Leases and operations. Secrets are sealed under the
    platform's key-encryption key, or refused when there is none."""
    from haplane.backup import create_backup

    root = _root(directory, state_dir)
    path, manifest = _run(
        lambda kube, sealer, no_sealer: create_backup(
            kube,
            root,
            name,
            namespaces=namespace or [],
            resources=resource or [],
            excluded=exclude or [],
            sealer=sealer,
            no_sealer=no_sealer,
            progress=_progress,
        ),
        kubeconfig,
        region,
        state_dir,
        encryption_config,
    )
    sealed = sum(f.count for f in manifest.files if f.sealed)
    typer.echo(
        f"backup {name}: {manifest.objects} objects of {len(manifest.resources())} resources in "
        f"{len(manifest.namespaces())} namespaces ({sealed} sealed) at {path}"
    )
    for why in manifest.left_out:
        typer.echo(f"  left out: {why}", err=True)


@app.command("list")
def list_cmd(
    as_json: JsonOpt = False, directory: DirOpt = None, state_dir: StateDirOpt = None
) -> None:
    """Every backup: when, of which cluster, how many objects, which namespaces."""
    from haplane.backup import Manifest, list_backups

    root = _root(directory, state_dir)
    found = list_backups(root)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    m.to_json() if isinstance(m, Manifest) else {"name": n, "error": m}
                    for n, m in found
                ],
                indent=2,
            )
        )
        return
    if not found:
        typer.echo(f"no backups in {root}")
        return
    typer.echo(f"{'NAME':<24} {'CREATED':<21} {'OBJECTS':>8} {'SEALED':>7}  NAMESPACES / SOURCE")
    for name, m in found:
        if not isinstance(m, Manifest):
            typer.echo(f"{name:<24} {'-':<21} {'-':>8} {'-':>7}  unreadable: {m}")
            continue
        sealed = sum(f.count for f in m.files if f.sealed)
        spaces = ",".join(m.namespaces()) or "-"
        typer.echo(
            f"{name:<24} {m.created:<21} {m.objects:>8} {sealed:>7}  {spaces} / {_source(m.source)}"
        )


def _source(source: dict[str, Any]) -> str:
    where = str(source.get("server", "?"))
    if source.get("region"):
        where += f" region {source['region']} epoch {source.get('epoch', '?')}"
    return where


@app.command("describe")
def describe_cmd(
    name: NameArg,
    as_json: JsonOpt = False,
    directory: DirOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """One backup: source, selection, counts, sealing, and a sha256 check of every file.

    Exit 1 when it is damaged."""
    from haplane.backup import BackupError, problems, read_manifest

    path = _root(directory, state_dir) / name
    try:
        m = read_manifest(path)
    except BackupError as exc:
        raise _fail(str(exc)) from None
    found = problems(path, m)
    if as_json:
        typer.echo(json.dumps({**m.to_json(), "path": str(path), "problems": found}, indent=2))
    else:
        typer.echo(f"backup {m.name} at {path}")
        typer.echo(
            f"  created {m.created} by haplane {m.haplane_version} (format {m.format_version})"
        )
        typer.echo(f"  source {_source(m.source)}, cluster uid {m.source.get('clusterUID', '?')}")
        sel = m.selection
        typer.echo(
            f"  selection: namespaces {', '.join(sel.get('namespaces') or ()) or 'all'}; "
            f"resources {', '.join(sel.get('resources') or ()) or 'all'}"
            + (f"; excluded {', '.join(sel['excluded'])}" if sel.get("excluded") else "")
        )
        if m.sealing:
            typer.echo(
                f"  sealed under provider {m.sealing.get('provider')}, key {m.sealing.get('keyId')}"
            )
        typer.echo(f"  {m.objects} objects in namespaces: {', '.join(m.namespaces()) or '-'}")
        for r in m.resources():
            typer.echo(f"    {r['resource']:<40} {r['count']:>7}")
        for why in m.left_out:
            typer.echo(f"  left out: {why}")
        typer.echo("  files: " + ("whole (sha256 checked)" if not found else "DAMAGED"))
        for p in found:
            typer.echo(f"    {p}")
    if found:
        raise typer.Exit(1)


@app.command("restore")
def restore_cmd(
    name: NameArg,
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Restore only this namespace (repeatable)."),
    ] = None,
    existing: Annotated[
        str,
        typer.Option(
            "--existing",
            help="What to do with an object that exists: skip it, or overwrite it "
            "(server-side apply, field manager haplane-backup).",
        ),
    ] = "skip",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Send every object as a server-side dry-run.")
    ] = False,
    exclude: ExcludeOpt = None,
    as_json: JsonOpt = False,
    directory: DirOpt = None,
    encryption_config: EncryptionOpt = None,
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Restore through the API, in dependency order, owner references remapped.

    CRDs, Namespaces, then owners before their dependents. Exit 1 when anything failed; a
    damaged backup is refused with nothing applied."""
    from haplane.backup import restore_backup

    if existing not in ("skip", "overwrite"):
        raise _fail("--existing: skip or overwrite")
    path = _root(directory, state_dir) / name
    report = _run(
        lambda kube, sealer, no_sealer: restore_backup(
            kube,
            path,
            namespaces=namespace or [],
            excluded=exclude or [],
            existing="overwrite" if existing == "overwrite" else "skip",
            dry_run=dry_run,
            sealer=sealer,
            no_sealer=no_sealer,
            progress=_progress,
        ),
        kubeconfig,
        region,
        state_dir,
        encryption_config,
    )
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        for o in report.outcomes:
            typer.echo(str(o))
        for note in report.notes:
            typer.echo(f"note: {note}")
        counts = ", ".join(f"{k} {v}" for k, v in sorted(report.counts().items())) or "nothing"
        typer.echo(
            f"{'dry-run of ' if dry_run else ''}restore of {name}: {counts} "
            f"in {report.seconds:.1f}s"
        )
    if report.stopped:
        typer.echo(f"error: {report.stopped}", err=True)
    if not report.ok:
        raise typer.Exit(1)
