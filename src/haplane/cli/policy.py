"""`haplane policy install NAME` and `haplane policy report`: the central policy layer from
the operator's side.

Layer: run (cli). A Kubernetes client of the platform (`api_client`): your kubeconfig
(`--kubeconfig`, `KUBECONFIG`), else the state dir's admin identity; imports what it needs
when a command runs.

- `install NAME`: a policy pack (`haplane.policies`, e.g. `baseline`) created or replaced
  object by object (its ValidatingAdmissionPolicies and bindings; its parameters ConfigMap is
  created when absent and never overwritten: your edits stay);
  `--action Warn` (or Audit) installs the bindings with that action instead of Deny, to see
  what would be refused before refusing it.
- `report`: every policy against the objects that exist (background audit: a policy added
  after the objects still finds them), evaluated here with the replicas' own engine
  (`haplane.api.admission_policies`) on what the API lists; and, for a running topology, which
  policies (name, generation) each region's replicas have in force: a region that lacks one
  the active region has, or has another generation of it, is a finding (replication lag or
  divergence made visible). Exit 1 when there is any finding.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .options import KubeconfigOpt, RegionOpt, StateDirOpt

if TYPE_CHECKING:
    from .api_client import ApiClient

app = typer.Typer(help="The central policy layer: policy packs, and what breaks them.")

ADMISSION = "/apis/admissionregistration.k8s.io/v1"
PLURALS = {
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): (
        f"{ADMISSION}/validatingadmissionpolicies",
        False,
    ),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"): (
        f"{ADMISSION}/validatingadmissionpolicybindings",
        False,
    ),
    ("v1", "ConfigMap"): ("/api/v1/namespaces/{ns}/configmaps", True),
}
JsonOpt = Annotated[bool, typer.Option("--json", help="The findings as JSON.")]


def _client(kubeconfig: Path | None, region: str | None, state_dir: Path | None) -> ApiClient:
    from .ops import operator_client

    return operator_client(kubeconfig, region, state_dir)


@app.command("install")
def install_cmd(
    name: Annotated[str, typer.Argument(help="The pack: baseline.")],
    action: Annotated[
        str, typer.Option("--action", help="Deny (default), Warn or Audit, for every binding.")
    ] = "Deny",
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Install a policy pack shipped with haplane (created, or replaced where it exists)."""
    import yaml

    from haplane import policies

    from .api_client import ClientError

    if action not in ("Deny", "Warn", "Audit"):
        typer.echo("error: --action: Deny, Warn or Audit", err=True)
        raise typer.Exit(2)
    try:
        docs = [d for d in yaml.safe_load_all(policies.text(name)) if d]
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(1) from None
    api = _client(kubeconfig, region, state_dir)
    try:
        for doc in docs:
            if doc["kind"] == "ValidatingAdmissionPolicyBinding":
                doc["spec"]["validationActions"] = [action]
            typer.echo(_put(api, doc))
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _put(api: ApiClient, doc: dict[str, Any]) -> str:
    """Create `doc`, or replace the object of its name: what happened, kubectl's words."""
    from .api_client import ClientError

    path, namespaced = PLURALS[(doc["apiVersion"], doc["kind"])]
    meta = doc["metadata"]
    if namespaced:
        path = path.format(ns=meta["namespace"])
    what = f"{doc['kind'].lower()}/{meta['name']}"
    status, out = api.request("POST", path, doc)
    if status == 201:
        return f"{what} created"
    if status != 409:
        raise ClientError(f"{what}: {status} {out.get('message', out)}")
    if doc["kind"] == "ConfigMap":  # the pack's parameters: yours once they exist
        return f"{what} kept (your parameters)"
    status, current = api.request("GET", f"{path}/{meta['name']}")
    if status != 200:
        raise ClientError(f"{what}: {status} {current.get('message', current)}")
    if _within(doc.get("spec"), current.get("spec")):  # (the server adds its defaults)
        return f"{what} unchanged"
    doc = {**doc, "metadata": {**meta, "resourceVersion": current["metadata"]["resourceVersion"]}}
    status, out = api.request("PUT", f"{path}/{meta['name']}", doc)
    if status != 200:
        raise ClientError(f"{what}: {status} {out.get('message', out)}")
    return f"{what} configured"


def _regions(state_dir: Path | None, report: Any, region_findings: Any) -> None:
    import asyncio

    from haplane.local import global_control
    from haplane.local.gate_plans import plan_of
    from haplane.store import EtcdError, GlobalState

    from .pki import _topology

    state, topology = _topology(state_dir)
    plan = plan_of(topology, state)
    urls: dict[str, list[str]] = {}
    for r in plan.replicas:
        urls.setdefault(r.region, []).append(r.url)

    async def active() -> str | None:
        try:
            async with global_control.control_client(topology, state) as client:
                record = await GlobalState(client).read()
        except EtcdError:
            return None
        return record.region if record is not None else None

    context = plan.tls.client_context() if plan.tls is not None else None
    region_findings(urls, asyncio.run(active()), context, report)


def _within(wanted: Any, stored: Any) -> bool:
    """Whether `stored` says everything `wanted` says (and maybe defaults besides)."""
    if isinstance(wanted, dict):
        return isinstance(stored, dict) and all(
            _within(v, stored.get(k)) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(stored, list)
            and len(wanted) == len(stored)
            and all(_within(w, x) for w, x in zip(wanted, stored, strict=True))
        )
    return bool(wanted == stored)


@app.command("report")
def report_cmd(
    as_json: JsonOpt = False,
    kubeconfig: KubeconfigOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Every policy against the objects that exist; and, for a running topology, the policies
    each region has in force. Exit 1 when anything is found."""
    import json

    from haplane.local.policy_report import Report, ReportError, region_findings, violations

    from .api_client import ClientError

    api = _client(kubeconfig, None, state_dir)
    report = Report()
    try:
        violations(api, report)
        if kubeconfig is None:  # a running topology: its regions, asked one by one
            _regions(state_dir, report, region_findings)
    except (ClientError, ReportError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for line in report.lines():
            typer.echo(line)
    if report.violations or report.regions_differ:
        raise typer.Exit(1)
