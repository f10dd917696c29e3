"""`haplane maintenance ...`: component and key operations, asked for through the API and
carried out by the supervisor's agent (`haplane.local.ops_agent`), or run here with `--direct`.

Layer: run (cli). Thin: the API request and its following are `cli.ops`; the local primitives
are `haplane.local.balancer_drain` (drain, undrain), `haplane pki rotate`, `haplane secrets
rotate|remove-key` and `haplane fault restart`; imported when a command runs, so `haplane
--help` stays quick.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .options import KubeconfigOpt, NoWaitOpt, ReasonOpt, RegionOpt, StateDirOpt
from .pki import _topology

app = typer.Typer(
    help="Component operations through the API (carried out by the supervisor's agent)."
)

WAIT = 3600.0  # seconds a request is followed (it may wait for an approval)
DirectOpt = Annotated[
    bool,
    typer.Option(
        "--direct",
        help="Do it here and now, as the local root-only primitive (like `haplane fault`): "
        "no API, approval or audit.",
    ),
]
DrainTimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", min=1.0, max=600.0, help="Seconds to wait for connections to end."),
]


def _through_api(
    kind_hint: str,
    spec: dict[str, Any],
    kubeconfig: Any,
    region: str | None,
    no_wait: bool,
    state_dir: Any,
) -> None:
    from . import ops

    state, topology = _topology(state_dir)
    ops.ask(
        state, topology, "MaintenanceAction", kind_hint, spec, kubeconfig, region,
        None if no_wait else WAIT,
    )  # fmt: skip


@app.command("restart")
def restart_cmd(
    component: Annotated[str, typer.Argument(help="As `haplane status` names it.")],
    reason: ReasonOpt,
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    no_wait: NoWaitOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Restart a component: etcd members need haplane:etcd-operator, balancers and gates
    haplane:gate-operator, the rest haplane:platform-admin."""
    spec = {"action": "restart", "component": component, "reason": reason}
    _through_api(f"restart-{component}", spec, kubeconfig, region, no_wait, state_dir)


@app.command("rotate-encryption-key")
def rotate_key_cmd(
    reason: ReasonOpt,
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    no_wait: NoWaitOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """A new key-encryption key becomes the writer (`haplane secrets rotate`), once another
    platform-admin approved it (the default policy encryption-key-approval)."""
    spec = {"action": "rotate-encryption-key", "reason": reason}
    _through_api("rotate-encryption-key", spec, kubeconfig, region, no_wait, state_dir)


@app.command("remove-encryption-key")
def remove_key_cmd(
    key: Annotated[str, typer.Argument(help="The local key's name (`haplane secrets status`).")],
    reason: ReasonOpt,
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    no_wait: NoWaitOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Remove an older key-encryption key (`haplane secrets remove-key`), refused while anything
    still needs it, once another platform-admin approved (encryption-key-approval)."""
    spec = {"action": "remove-encryption-key", "key": key, "reason": reason}
    _through_api(f"remove-key-{key}", spec, kubeconfig, region, no_wait, state_dir)


@app.command("rotate-certificates")
def rotate_certificates_cmd(
    reason: ReasonOpt,
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    no_wait: NoWaitOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Reissue every leaf certificate, one component at a time, health-gated (`haplane pki
    rotate`); needs haplane:platform-admin."""
    spec = {"action": "rotate-certificates", "reason": reason}
    _through_api("rotate-certificates", spec, kubeconfig, region, no_wait, state_dir)


@app.command("drain")
def drain_cmd(
    balancer: Annotated[str, typer.Argument(help="REGION/NAME, as `haplane status` names it.")],
    reason: ReasonOpt,
    timeout: DrainTimeoutOpt = 30.0,
    direct: DirectOpt = False,
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    no_wait: NoWaitOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Take a regional balancer out of service (haplane:gate-operator): the gates send it no
    new connection, and the drain waits for the open ones to end. Refused when it would leave
    its region with no balancer in service. Lasts until `undrain` or a restart."""
    if direct:
        _direct(balancer, undo=False, reason=reason, timeout=timeout, state_dir=state_dir,
                through=(kubeconfig, region, no_wait))  # fmt: skip
        return
    balancer = _qualified(balancer, state_dir)
    spec = {"action": "drain", "component": balancer, "reason": reason, "timeoutSeconds": timeout}
    _through_api(f"drain-{balancer}", spec, kubeconfig, region, no_wait, state_dir)


@app.command("undrain")
def undrain_cmd(
    balancer: Annotated[str, typer.Argument(help="REGION/NAME, as `haplane status` names it.")],
    reason: ReasonOpt,
    direct: DirectOpt = False,
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    no_wait: NoWaitOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Put a drained balancer back in service (haplane:gate-operator)."""
    if direct:
        _direct(balancer, undo=True, reason=reason, timeout=0.0, state_dir=state_dir,
                through=(kubeconfig, region, no_wait))  # fmt: skip
        return
    balancer = _qualified(balancer, state_dir)
    spec = {"action": "undrain", "component": balancer, "reason": reason}
    _through_api(f"undrain-{balancer}", spec, kubeconfig, region, no_wait, state_dir)


def _qualified(balancer: str, state_dir: Any) -> str:
    """REGION/NAME for a balancer named either way (the agent knows components by that)."""
    from haplane.local.balancer_drain import DrainError, find
    from haplane.local.gate_plans import plan_of

    state, topology = _topology(state_dir)
    try:
        return find(plan_of(topology, state).balancers, balancer).qualified_name
    except DrainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _direct(
    balancer: str,
    *,
    undo: bool,
    reason: str,
    timeout: float,
    state_dir: Any,
    through: tuple[Any, ...],
) -> None:
    import asyncio

    from haplane.local.balancer_drain import DrainError, drain
    from haplane.local.gate_plans import plan_of
    from haplane.local.security import http_ssl

    if any(through):
        typer.echo("error: --direct acts here: no --kubeconfig, --region or --no-wait", err=True)
        raise typer.Exit(2)
    state, topology = _topology(state_dir)
    plan = plan_of(topology, state)
    try:
        result = asyncio.run(
            drain(
                plan.balancers,
                balancer,
                http_ssl(plan.tls),
                undo=undo,
                reason=reason,
                timeout=timeout,
            )
        )
    except DrainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(result.message())
