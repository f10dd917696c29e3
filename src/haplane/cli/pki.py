"""`haplane pki status` and `haplane pki rotate`: a running topology's certificates.

Layer: run (cli). Thin: haplane.local.pki_rotate does the work (imported when a command runs,
so `haplane --help` stays quick).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .options import StateDirOpt

if TYPE_CHECKING:
    from haplane.local.state_dir import StateDir
    from haplane.topology import Topology

app = typer.Typer(help="The topology's certificates: expiry, and rotation without downtime.")


def _topology(state_dir: Path | None) -> tuple[StateDir, Topology]:
    from haplane.local.state_dir import StateDir, default_state_dir
    from haplane.topology import load_file

    state = StateDir(state_dir or default_state_dir())
    if not state.topology_file.exists():
        typer.echo(f"error: no topology has been started in {state.root}", err=True)
        raise typer.Exit(1)
    return state, load_file(state.topology_file)


def _days(seconds: int) -> str:
    if seconds < 0:
        return "EXPIRED"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.0f}d"


@app.command("status")
def status_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="As JSON.")] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Every certificate of the topology, soonest expiry first."""
    import json

    from haplane.local.security import expiry_rows, platform_tls

    state, topology = _topology(state_dir)
    tls = platform_tls(state, topology)
    if tls is None:
        typer.echo("this topology runs with `security.insecure: true`: no certificates")
        return
    tls.check()
    rows = expiry_rows(tls)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        groups = ",".join(str(g) for g in r["groups"]) if r["groups"] else ""  # type: ignore[attr-defined]
        typer.echo(
            f"{r['name']:<48} {_days(int(str(r['secondsToExpiry']))):>8}  {r['notAfter']}  "
            f"{r['subject']}{' [' + groups + ']' if groups else ''}"
        )


@app.command("rotate")
def rotate_cmd(
    component: Annotated[
        list[str] | None,
        typer.Option(
            "--component",
            "-c",
            help="Only this component, as `haplane status` names it (repeat); default: all, "
            "and the operator's own certificates.",
        ),
    ] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds each component has to serve its new certificate.")
    ] = 15.0,
    state_dir: StateDirOpt = None,
) -> None:
    """New key and certificate for each component, one at a time: each must be healthy
    before, serve its new certificate (checked by serial) and still be healthy after, before
    the next is taken. Nothing restarts; open connections keep theirs."""
    import asyncio

    from haplane.local.pki_rotate import Rotation, RotationError
    from haplane.local.platform_events import post_safely

    state, topology = _topology(state_dir)
    scope = ", ".join(component) if component else "every component"

    def event(type_: str, reason: str, message: str) -> None:
        # a record, not a step: the rotation stands whether or not it lands
        # once, briefly: a platform that cannot take it must not hold the command up
        asyncio.run(post_safely(topology, state, attempts=1, timeout=3.0, type_=type_,
                                reason=reason, kind="Topology", name=topology.name,
                                message=message))  # fmt: skip

    rotation = None
    try:
        rotation = Rotation(topology, state, wait=wait, progress=lambda m: typer.echo(m, err=True))
        rotated = asyncio.run(rotation.rotate(component or None))
    except RotationError as exc:
        typer.echo(f"error: {exc}", err=True)
        if rotation is not None and rotation.started:  # not a refusal before any work
            event("Warning", "CertificateRotationStopped", f"rotation of {scope} stopped: {exc}")
        raise typer.Exit(1) from None
    event("Normal", "CertificatesRotated", f"{len(rotated)} certificates of {scope} rotated")
    typer.echo(f"rotated {len(rotated)} certificates")
