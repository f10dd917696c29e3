"""`haplane secrets status|rotate|rewrite|remove-key`: the keys that seal Secrets at rest.

Layer: run (cli). Thin: haplane.local.secrets_ops does the work (imported when a command runs,
so `haplane --help` stays quick).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .options import StateDirOpt
from .pki import _topology

if TYPE_CHECKING:
    from haplane.local.state_dir import StateDir
    from haplane.topology import Topology

app = typer.Typer(
    help="Encryption at rest: what each key protects, new keys, re-encryption, old keys removed."
)


def _setup(state: StateDir, topology: Topology) -> tuple[Any, Any, Path]:
    """(transformers, plan, configuration path) of the running topology."""
    from haplane.api.encryption import stored_types, transformers
    from haplane.local.gate_plans import plan_of
    from haplane.local.security import encryption_config_path

    path = encryption_config_path(state, topology)
    if not path.exists():
        typer.echo(f"error: no encryption configuration at {path}: run `haplane up`", err=True)
        raise typer.Exit(1)
    return transformers(path, stored_types()), plan_of(topology, state), path


def _regional_clients(plan: Any) -> dict[str, Any]:
    return {c.view.scope: c.client(timeout=5.0) for c in plan.clusters if c.view.scope != "global"}


@app.command("status")
def status_cmd(state_dir: StateDirOpt = None) -> None:
    """Per region: how many stored values each key (provider, key id) still seals, and how
    many are stored plain though their resource's writer seals; per local key, what still
    needs it (retained copies included)."""
    import asyncio

    from haplane.local.secrets_ops import scan

    state, topology = _topology(state_dir)
    t, plan, path = _setup(state, topology)
    typer.echo(f"configuration: {path}")
    writer = t.providers_for("", "secrets")[0].name
    typer.echo(f"secrets are written by: {writer}")

    async def run() -> Counter[str]:
        stored: Counter[str] = Counter()  # by provider name, every region
        for region, client in _regional_clients(plan).items():
            async with client:
                st = await scan(client, t, region)
            for (name, key_id), n in sorted(st.sealed.items()):
                typer.echo(f"{region:<16} {name:<12} {key_id:<26} {n:>8}")
            typer.echo(f"{region:<16} {'plain':<12} {'-':<26} {st.plain:>8}")
            if st.unreadable:
                typer.echo(f"{region:<16} {'unreadable':<12} {'-':<26} {st.unreadable:>8}")
            stored.update(st.prefixed)
        return stored

    stored = asyncio.run(run())
    if not topology.spec.security.encryption.config_file:
        _local_keys(state, stored)


def _local_keys(state: StateDir, stored: Counter[str]) -> None:
    """Per local key: the values sealed under it in every region, and in retained copies (saved
    divergence, backups, snapshots); which ones nothing needs any more."""
    from haplane.local.secrets_ops import local_keys, scan_retained

    keys = local_keys(state)
    found = scan_retained(state, [k.name for k in keys])
    opaque = [f for f in found if f.error is not None]
    typer.echo(
        f"{'local key':<16} {'stored':>8} {'retained':>8}  (values sealed under it: in every "
        "region's etcd; in saved divergence, backups, snapshots)"
    )
    for i, k in enumerate(keys):
        copies = sum(f.counts[k.name] for f in found)
        if i == 0:
            note = "  the writer"
        elif stored[k.name] or copies or opaque:
            note = ""
        else:
            note = f"  nothing needs it: haplane secrets remove-key {k.name}"
        typer.echo(f"{k.name:<16} {stored[k.name]:>8} {copies:>8}{note}")
    for f in found:
        if f.error is not None:
            typer.echo(f"retained: {f.path}: could not be looked into: {f.error}")
        else:
            counts = ", ".join(f"{n} {c}" for n, c in sorted(f.counts.items()))
            typer.echo(f"retained: {f.path}: {counts}")


@app.command("rotate")
def rotate_cmd(
    wait: Annotated[float, typer.Option(help="Seconds the replicas have to reload.")] = 15.0,
    state_dir: StateDirOpt = None,
) -> None:
    """A new local key-encryption key becomes the writer; older keys stay for reading until
    `rewrite` has moved everything off them."""
    import asyncio

    from haplane.local.secrets_ops import SecretsError, config_digest, rotate, wait_loaded
    from haplane.local.security import http_ssl

    state, topology = _topology(state_dir)
    enc = topology.spec.security.encryption
    _, plan, path = _setup(state, topology)
    urls = [r.url for r in plan.replicas]
    for promote in (False, True):
        # first every replica reads the new key, then it writes: no replica ever meets a
        # value it cannot open
        try:
            new = rotate(state, enc.config_file, enc.enabled, promote=promote)
        except SecretsError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        late = asyncio.run(wait_loaded(urls, http_ssl(plan.tls), config_digest(path), wait))
        if late:
            typer.echo(
                f"error: not reloaded within {wait:g}s: {', '.join(late)} (run `haplane "
                "secrets rotate` again once they are back)",
                err=True,
            )
            raise typer.Exit(1)
        typer.echo(
            f"every replica ({len(urls)}) "
            + (f"writes under {new.name}" if promote else f"reads {new.name}")
        )


@app.command("rewrite")
def rewrite_cmd(
    resource: Annotated[
        str | None, typer.Option(help="Only this resource (e.g. secrets, widgets.example.com).")
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds the replicas have to reload.")] = 15.0,
    state_dir: StateDirOpt = None,
) -> None:
    """Re-seal every stored value under its writer, in the active region (replication carries
    it on): one compare-and-swap per key, so no concurrent write is lost; resumable."""
    import asyncio

    from haplane.local import global_control
    from haplane.local.secrets_ops import SecretsError, config_digest, rewrite, wait_loaded
    from haplane.local.security import http_ssl

    state, topology = _topology(state_dir)
    t, plan, path = _setup(state, topology)
    # first, every replica on this configuration: none may write under an older key after
    late = asyncio.run(
        wait_loaded([r.url for r in plan.replicas], http_ssl(plan.tls), config_digest(path), wait)
    )
    if late:
        typer.echo(f"error: replicas not on {path} yet: {', '.join(late)}", err=True)
        raise typer.Exit(1)

    only = lambda _key: True  # noqa: E731
    if resource:
        plural, _, group = resource.partition(".")
        only = lambda key: t.resource_of(key) == (group, plural)  # noqa: E731

    def say(message: str) -> None:
        typer.echo(message, err=True)

    async def run() -> Any:
        clients = _regional_clients(plan)
        try:
            async with global_control.control_client(topology, state) as control:
                return await rewrite(
                    state,
                    control,
                    clients,
                    t,
                    only=only,
                    progress=lambda m: typer.echo(m, err=True),
                )
        finally:
            for c in clients.values():
                await c.close()

    try:
        r = asyncio.run(run())
    except SecretsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"{r.region}: {r.examined} values examined, {r.rewritten} rewritten, "
        f"{r.raced} raced with a concurrent write (left as written); a last pass found "
        f"nothing else under an older key"
    )
    if r.unreadable:
        for key, why in sorted(r.unreadable.items()):
            typer.echo(f"unreadable: {key.decode(errors='replace')}: {why}", err=True)
        typer.echo(
            f"error: {len(r.unreadable)} value(s) could not be opened and were left as they "
            "are: restore the key they need, or delete or rewrite those objects, then run "
            "`haplane secrets rewrite` again",
            err=True,
        )
        raise typer.Exit(1)


@app.command("remove-key")
def remove_key_cmd(
    name: Annotated[str, typer.Argument(help="The local key's provider name, e.g. local.")],
    wait: Annotated[float, typer.Option(help="Seconds the replicas have to reload.")] = 15.0,
    state_dir: StateDirOpt = None,
) -> None:
    """Remove an older local key-encryption key once nothing needs it: not the writer, no value
    sealed under it in any region (every standby caught up), nor in saved divergence, backups or
    snapshots. The configuration drops it, and once every replica has loaded that, its file is
    deleted. Refused with each reason otherwise; resumable."""
    import asyncio

    from haplane.local import global_control
    from haplane.local.secrets_ops import (
        KeyNeeded,
        SecretsError,
        config_digest,
        remove_key,
        wait_loaded,
    )
    from haplane.local.security import http_ssl

    state, topology = _topology(state_dir)
    enc = topology.spec.security.encryption
    t, plan, _ = _setup(state, topology)
    urls = [r.url for r in plan.replicas]
    ssl = http_ssl(plan.tls)

    async def reloaded(config: Path) -> list[str]:
        return await wait_loaded(urls, ssl, config_digest(config), wait)

    async def run() -> Any:
        clients = _regional_clients(plan)
        try:
            async with global_control.control_client(topology, state) as control:
                return await remove_key(
                    state,
                    name,
                    user_config=enc.config_file,
                    enabled=enc.enabled,
                    control=control,
                    regional=clients,
                    transformers=t,
                    reloaded=reloaded,
                )
        finally:
            for c in clients.values():
                await c.close()

    try:
        r = asyncio.run(run())
    except KeyNeeded as exc:
        for need in exc.needs:
            typer.echo(f"error: {need}", err=True)
        typer.echo(f"error: {name} is still needed ({exc.kept})", err=True)
        raise typer.Exit(1) from None
    except SecretsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if r.already:
        typer.echo(f"{name} was removed already")
        return
    typer.echo(
        f"removed {name}: {r.config} no longer lists it, every replica ({len(urls)}) has "
        f"loaded that, and {state.root / 'encryption' / r.key.file} is deleted"
    )
