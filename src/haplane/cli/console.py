"""`haplane console token`: a bearer token to sign in to the web console with.

Layer: run (cli). Acts through the API as the operator (their kubeconfig, else the state
dir's haplane-admin, as every platform command does): makes sure the ServiceAccount
`kube-system/haplane-console` exists and is bound to `haplane:auditor`, then asks a
TokenRequest for it. RBAC, admission and audit apply as to kubectl.

Why that role and not cluster-admin: the token goes into a browser's cookie. `haplane:auditor`
reads everything the console shows (Events, the audit log; not Secrets) and can change
nothing, so a token left in a browser cannot be used to write. A person who wants their own
identity in the console asks for a token of their own ServiceAccount (README, "The web
console").

Import-light: typer only at import; the rest inside the command.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .options import KubeconfigOpt, RegionOpt, StateDirOpt

app = typer.Typer(help="The web console.")

NAMESPACE, ACCOUNT, ROLE = "kube-system", "haplane-console", "haplane:auditor"
BINDING = "haplane-console"
MAX_HOURS = 24 * 7


def _hours(text: str) -> int:
    """'8h', '30m', '2d' (or bare seconds) as seconds, between 10 minutes and a week."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip()
    try:
        seconds = int(float(raw[:-1]) * units[raw[-1]]) if raw[-1:] in units else int(raw)
    except (ValueError, KeyError, OverflowError):
        raise typer.BadParameter(f"{text!r}: a duration such as 8h, 30m or 2d") from None
    if not 600 <= seconds <= MAX_HOURS * 3600:
        raise typer.BadParameter(f"{text!r}: between 10m and {MAX_HOURS // 24}d")
    return seconds


def _ensure(client: Any, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
    """Create `body` at `path` unless it exists; the object as the API has it."""
    status, out = client.request("POST", path, body)
    if status in (200, 201):
        return dict(out)
    name = body["metadata"]["name"]
    if status == 409:
        status, out = client.request("GET", f"{path}/{name}")
        if status == 200:
            return dict(out)
    message = out.get("message") if isinstance(out, dict) else out
    typer.echo(f"error: {what} {name}: {status} {message}", err=True)
    raise typer.Exit(1)


def binding_problem(binding: dict[str, Any]) -> str | None:
    """What is wrong with an existing `haplane-console` binding (None: it binds
    haplane:auditor to the ServiceAccount, as this command makes it)."""
    raw_ref = binding.get("roleRef")
    ref: dict[str, Any] = raw_ref if isinstance(raw_ref, dict) else {}
    if (ref.get("kind"), ref.get("name")) != ("ClusterRole", ROLE):
        return f"binds {ref.get('kind')} {ref.get('name')!r}, not ClusterRole {ROLE!r}"
    raw_subjects = binding.get("subjects")
    subjects: list[Any] = raw_subjects if isinstance(raw_subjects, list) else []
    mine = {"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NAMESPACE}
    if not any(isinstance(x, dict) and {k: x.get(k) for k in mine} == mine for x in subjects):
        return f"does not name the ServiceAccount {NAMESPACE}/{ACCOUNT}"
    return None


@app.command("token")
def token_cmd(
    duration: Annotated[
        str, typer.Option("--duration", help="How long the token is valid: 8h, 30m, 2d.")
    ] = "8h",
    kubeconfig: KubeconfigOpt = None,
    region: RegionOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Print a token to sign in to the web console with: the ServiceAccount
    kube-system/haplane-console, bound to haplane:auditor (reads everything the console shows,
    the audit log included, never Secrets; changes nothing). Made through the API as you."""
    from .api_client import ClientError
    from .ops import operator_client

    seconds = _hours(duration)
    client = operator_client(kubeconfig, region, state_dir)
    try:
        _ensure(
            client,
            f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": ACCOUNT, "namespace": NAMESPACE,
                          "labels": {"app.kubernetes.io/managed-by": "haplane"}}},
            "ServiceAccount",
        )  # fmt: skip
        binding = _ensure(
            client,
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": BINDING, "labels": {"app.kubernetes.io/managed-by": "haplane"}},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": ROLE},
             "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT,
                           "namespace": NAMESPACE}]},
            "ClusterRoleBinding",
        )  # fmt: skip
        problem = binding_problem(binding)
        if problem is not None:
            # someone made it otherwise: say so rather than hand out a token that cannot do
            # what this command says, or can do more
            typer.echo(
                f"error: ClusterRoleBinding {BINDING} {problem}: delete it (kubectl delete "
                f"clusterrolebinding {BINDING}) and run this again",
                err=True,
            )
            raise typer.Exit(1)
        status, out = client.request(
            "POST",
            f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{ACCOUNT}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": seconds}},
        )  # fmt: skip
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    token = (out.get("status") or {}).get("token") if isinstance(out, dict) else None
    if status != 201 or not token:
        message = out.get("message") if isinstance(out, dict) else out
        typer.echo(f"error: TokenRequest: {status} {message}", err=True)
        raise typer.Exit(1)
    expires = (out.get("status") or {}).get("expirationTimestamp", "")
    typer.echo(
        f"a token of {NAMESPACE}/{ACCOUNT} ({ROLE}), valid until {expires}; sign in at a "
        "console URL `haplane status` shows",
        err=True,
    )
    typer.echo(token)
