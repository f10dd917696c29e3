"""`haplane gitops status|sync|suspend|resume|diff`: GitOps from the operator's side.

Layer: run (cli). A Kubernetes client of the platform (`api_client`), with your kubeconfig
(`--kubeconfig`, `KUBECONFIG`), else the state dir's admin identity. The controller does the
work (`haplane.gitops`); these commands read its status and ask it for things through the API:

- `status [NAME]`: every Sync (or one) with its source revision, Synced and Healthy, and per
  target the revision applied, drift, errors and pruned objects. `--json` for scripts.
- `sync NAME`: apply again now (annotates the Sync and fetches its GitSource at once);
  `--wait` until the controller has handled it, exit 1 unless it synced.
- `suspend NAME` / `resume NAME`: stop and restart syncing and drift checks of one Sync.
- `diff NAME`: what a sync would change in each target, as unified diffs of live objects
  against a server-side apply dry-run of the render. The repository is fetched and rendered
  here (git and kubectl needed); an external target is reached with the kubeconfig its Secret
  holds, so you need read access to that Secret.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .options import KubeconfigOpt, RegionOpt, StateDirOpt

if TYPE_CHECKING:
    from .api_client import ApiClient

app = typer.Typer(help="GitOps: what the controller applied, drift, and asking it to sync.")

BASE = "/apis/gitops.haplane.dev/v1"
REQUESTED_AT = "gitops.haplane.dev/requested-at"
NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="The Sync's namespace.")]
NameArg = Annotated[str, typer.Argument(help="The Sync.")]


def _client(kubeconfig: Path | None, region: str | None, state_dir: Path | None) -> ApiClient:
    from .ops import operator_client

    return operator_client(kubeconfig, region, state_dir)


def _call(client: ApiClient, method: str, path: str, body: Any = None, **kw: Any) -> Any:
    from .api_client import ClientError

    try:
        status, out = client.request(method, path, body, **kw)
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if status >= 400:
        typer.echo(f"error: {status} {out.get('message', '')}", err=True)
        raise typer.Exit(1)
    return out


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or ()
    return next((c for c in conditions if c.get("type") == kind), {})


def _short(revision: str | None) -> str:
    return (revision or "-")[:12]


@app.command("status")
def status_cmd(
    name: Annotated[str | None, typer.Argument(help="One Sync (default: every one).")] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The Syncs as JSON.")] = False,
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Every Sync (or one): Synced and Healthy, and each target's revision, drift and errors."""
    client = _client(kubeconfig, region, state_dir)
    if name is not None:
        items = [_call(client, "GET", f"{BASE}/namespaces/{namespace or 'default'}/syncs/{name}")]
    else:
        path = f"{BASE}/namespaces/{namespace}/syncs" if namespace else f"{BASE}/syncs"
        items = _call(client, "GET", path).get("items") or []
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return
    if not items:
        typer.echo("no Syncs")
        return
    for obj in items:
        meta, st = obj["metadata"], obj.get("status") or {}
        synced, healthy = _condition(obj, "Synced"), _condition(obj, "Healthy")
        suspended = " (suspended)" if (obj.get("spec") or {}).get("suspend") else ""
        typer.echo(
            f"{meta.get('namespace')}/{meta['name']}{suspended}: source "
            f"{(obj.get('spec') or {}).get('sourceRef', {}).get('name')} at "
            f"{_short(st.get('revision'))}, applied {_short(st.get('lastAppliedRevision'))}; "
            f"Synced={synced.get('status', 'Unknown')} ({synced.get('reason', '-')}), "
            f"Healthy={healthy.get('status', 'Unknown')}"
        )
        if synced.get("status") == "False" and synced.get("message"):
            typer.echo(f"  {synced['message']}")
        for t in st.get("targets") or ():
            typer.echo(
                f"  target {t.get('name')}: {_short(t.get('revision'))} "
                f"{'synced' if t.get('synced') else t.get('reason', 'not synced')}, "
                f"{t.get('health', 'Unknown')}, {t.get('objects', 0)} objects, "
                f"last sync {t.get('lastSyncTime', '-')}"
            )
            for line in (
                *(f"drift: {d}" for d in t.get("drift") or ()),
                *(f"healed: {d}" for d in t.get("healed") or ()),
                *(f"error: {e.get('object')}: {e.get('message')}" for e in t.get("errors") or ()),
                *(f"pruned: {p}" for p in t.get("pruned") or ()),
                *(f"kept (prune is off): {k}" for k in t.get("kept") or ()),
            ):
                typer.echo(f"    {line}")
            if not t.get("synced") and t.get("message"):
                typer.echo(f"    {t['message']}")


def _poke(client: ApiClient, path: str, stamp: str) -> None:
    _call(
        client,
        "PATCH",
        path,
        {"metadata": {"annotations": {REQUESTED_AT: stamp}}},
        content_type="application/merge-patch+json",
    )


@app.command("sync")
def sync_cmd(
    name: NameArg,
    namespace: NamespaceOpt = "default",
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Until the controller has handled it; exit 1 unless synced."),
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds --wait waits.")] = 120.0,
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Fetch the Sync's source and apply it to every target now."""
    client = _client(kubeconfig, region, state_dir)
    path = f"{BASE}/namespaces/{namespace}/syncs/{name}"
    obj = _call(client, "GET", path)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    source = (obj.get("spec") or {}).get("sourceRef", {}).get("name")
    if source:
        _poke(client, f"{BASE}/namespaces/{namespace}/gitsources/{source}", stamp)
    _poke(client, path, stamp)
    typer.echo(f"asked the controller to sync {namespace}/{name}", err=True)
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = _call(client, "GET", path)
        if (obj.get("status") or {}).get("handledRequest") == stamp:
            synced = _condition(obj, "Synced")
            revision = _short((obj.get("status") or {}).get("revision"))
            if synced.get("status") == "True":
                typer.echo(f"synced {revision}")
                return
            typer.echo(f"not synced at {revision}: {synced.get('message', '')}", err=True)
            raise typer.Exit(1)
        time.sleep(0.2)
    typer.echo(f"error: the controller did not handle it within {timeout:.0f}s", err=True)
    raise typer.Exit(1)


def _suspend(name: str, namespace: str, value: bool, client: ApiClient) -> None:
    _call(
        client,
        "PATCH",
        f"{BASE}/namespaces/{namespace}/syncs/{name}",
        {"spec": {"suspend": value}},
        content_type="application/merge-patch+json",
    )
    typer.echo(f"{namespace}/{name} {'suspended' if value else 'resumed'}")


@app.command("suspend")
def suspend_cmd(
    name: NameArg,
    namespace: NamespaceOpt = "default",
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Stop syncing and checking one Sync (what it applied stays)."""
    _suspend(name, namespace, True, _client(kubeconfig, region, state_dir))


@app.command("resume")
def resume_cmd(
    name: NameArg,
    namespace: NamespaceOpt = "default",
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Sync a suspended Sync again."""
    _suspend(name, namespace, False, _client(kubeconfig, region, state_dir))


@app.command("diff")
def diff_cmd(
    name: NameArg,
    namespace: NamespaceOpt = "default",
    cache: Annotated[
        Path | None,
        typer.Option(
            "--cache", help="Where to keep the repository (default: a temporary directory)."
        ),
    ] = None,
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """What syncing now would change in each target (exit 1 when anything would)."""
    import asyncio
    import tempfile

    client = _client(kubeconfig, region, state_dir)
    sync = _call(client, "GET", f"{BASE}/namespaces/{namespace}/syncs/{name}")
    source_name = (sync.get("spec") or {}).get("sourceRef", {}).get("name")
    source = _call(client, "GET", f"{BASE}/namespaces/{namespace}/gitsources/{source_name}")
    with tempfile.TemporaryDirectory(prefix="haplane-gitops-") as tmp:
        changed = asyncio.run(_diff(client, sync, source, cache or Path(tmp)))
    if changed:
        raise typer.Exit(1)


async def _diff(
    client: ApiClient, sync: dict[str, Any], source: dict[str, Any], cache: Path
) -> bool:
    import base64

    import yaml

    from haplane.auth.kubeconfig import Credentials, KubeconfigError
    from haplane.auth.kubeconfig import load as load_kubeconfig
    from haplane.gitops.engine import Target
    from haplane.gitops.kube import KubeClient, KubeError, Unreachable
    from haplane.gitops.render import RenderError, render
    from haplane.gitops.source import GitError, GitRepository
    from haplane.gitops.types import SourceSpec, SyncSpec

    spec, src = SyncSpec.of(sync), SourceSpec.of(source)
    try:
        repo = GitRepository(cache, src.url)
        commit = await repo.resolve(src.ref)
        tree = await repo.checkout(commit)
    except GitError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"# {src.url} {src.ref} at {commit[:12]}", err=True)
    changed = False
    for target in spec.targets:
        try:
            objects = await render(tree, spec.path, target.overlay or spec.overlay)
        except RenderError as exc:
            typer.echo(f"error: target {target.name}: {exc}", err=True)
            raise typer.Exit(1) from None
        if target.secret is None:
            credentials = Credentials(client.server, client.context, client.token, client.user)
        else:
            secret_name, key = target.secret
            secret = _call(
                client, "GET", f"/api/v1/namespaces/{spec.namespace}/secrets/{secret_name}"
            )
            try:
                doc = yaml.safe_load(base64.b64decode((secret.get("data") or {}).get(key, "")))
                credentials = load_kubeconfig(doc, f"Secret {spec.namespace}/{secret_name}")
            except (ValueError, yaml.YAMLError, KubeconfigError) as exc:
                typer.echo(f"error: target {target.name}: {exc}", err=True)
                raise typer.Exit(1) from None
        kube = KubeClient(credentials)
        try:
            diffs = await Target(kube, f"{spec.id}/{target.name}").diff(objects)
        except (Unreachable, KubeError) as exc:
            typer.echo(f"error: target {target.name}: {exc}", err=True)
            raise typer.Exit(1) from None
        finally:
            await kube.close()
        typer.echo(f"# target {target.name}: {len(diffs)} of {len(objects)} objects differ")
        for _, text in diffs:
            typer.echo(text, nl=False)
        changed = changed or bool(diffs)
    return changed
