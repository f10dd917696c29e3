"""Platform operations through the API: `haplane failover --to` asks for a Switchover and
follows it; `haplane approve` and `haplane reject` decide on someone else's request.

Layer: run (cli). Talks to the platform as a Kubernetes client (`api_client`), with the
operator's kubeconfig (`--kubeconfig`, `KUBECONFIG`), else the state dir's admin identity;
`--region` goes through that region's balancer when the gate cannot serve.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from .api_client import ApiClient, ClientError

if TYPE_CHECKING:
    from haplane.local.state_dir import StateDir
    from haplane.topology import Topology

OPS = "/apis/ops.haplane.dev/v1"
DONE = {"Succeeded", "Failed", "Rejected", "Expired"}
KIND_PLURALS = {
    "Switchover": "switchovers",
    "RoleGrant": "rolegrants",
    "Drill": "drills",
    "MaintenanceAction": "maintenanceactions",
}
PLURALS = tuple(KIND_PLURALS.values())

__all__ = [
    "ClientError",
    "ask",
    "client",
    "decide",
    "follow",
    "follow_request",
    "grant_spec",
    "request_operation",
    "switchover_spec",
]


def operator_client(
    kubeconfig: Path | None, region: str | None, state_dir: Path | None
) -> ApiClient:
    """`client` for a command's --kubeconfig, --region and --state-dir options: a kubeconfig
    alone needs no state dir; an error is said and exits 1."""
    try:
        if kubeconfig is not None and region is None:
            return ApiClient.from_kubeconfig(kubeconfig)
        from .pki import _topology

        state, topology = _topology(state_dir)
        return client(state, topology, kubeconfig, region)
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def client(
    state: StateDir,
    topology: Topology,
    kubeconfig: Path | None,
    region: str | None,
    *,
    admin_fallback: bool = True,
) -> ApiClient:
    """The operator's client: their kubeconfig, else haplane-admin from the state dir (said on
    stderr: that identity belongs to whoever holds the state dir). Without `admin_fallback`
    (approving: a decision is a person's) a kubeconfig is required."""
    from haplane.local.gate_plans import plan_of

    plan = plan_of(topology, state)
    server = None
    if region is not None:
        lbs = [b for b in plan.balancers if b.region == region]
        if not lbs:
            known = sorted({b.region for b in plan.balancers})
            raise ClientError(f"no balancer in region {region!r}; regions: {', '.join(known)}")
        server = lbs[0].url
    path = kubeconfig or _env_kubeconfig()
    if path is not None:
        return ApiClient.from_kubeconfig(path, server)
    if not admin_fallback:
        raise ClientError(
            "whose decision? pass --kubeconfig (or set KUBECONFIG) with your own credentials: "
            "the state dir's haplane-admin is nobody's second pair of eyes"
        )
    from .api_client import kubeconfig as make_kubeconfig

    tls = plan.tls
    if tls is not None:
        tls.check()
    typer.echo(
        f"as haplane-admin (system:masters) from {state.root}: pass --kubeconfig to act as "
        "yourself",
        err=True,
    )
    doc = make_kubeconfig(
        "c",
        server or plan.gates[0].url,
        "haplane-admin",
        ca=tls.ca.read_bytes() if tls is not None else None,
        cert=tls.admin.cert.read_bytes() if tls is not None else None,
        key=tls.admin.key.read_bytes() if tls is not None else None,
    )
    return ApiClient.from_config(doc, str(state.root), server)


def _env_kubeconfig() -> Path | None:
    value = os.environ.get("KUBECONFIG", "")
    first = next((p for p in value.split(os.pathsep) if p), None)
    return Path(first).expanduser() if first else None


def switchover_spec(
    to: str, *, reason: str, force: bool, break_glass: bool, catch_up_timeout: float
) -> dict[str, Any]:
    return {
        "targetRegion": to,
        "reason": reason,
        "force": force,
        "breakGlass": break_glass,
        "catchUpTimeoutSeconds": catch_up_timeout,
    }


def grant_spec(
    *,
    role: str,
    users: list[str],
    groups: list[str],
    namespace: str | None,
    binding_name: str | None,
    reason: str,
    break_glass: bool,
) -> tuple[str, dict[str, Any]]:
    """A RoleGrant's name hint and spec: a ClusterRoleBinding (a RoleBinding with
    `namespace`) of the ClusterRole `role` to the users and groups."""
    rbac = "rbac.authorization.k8s.io"
    subjects = [{"apiGroup": rbac, "kind": "User", "name": u} for u in users]
    subjects += [{"apiGroup": rbac, "kind": "Group", "name": g} for g in groups]
    name = binding_name or _dns_name(f"{role}-{'-'.join([*users, *groups])}", 200)
    meta: dict[str, str] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    binding = {
        "kind": "RoleBinding" if namespace else "ClusterRoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    }
    return name, {"reason": reason, "breakGlass": break_glass, "binding": binding}


def request_operation(
    api: ApiClient, kind: str, name_hint: str, spec: dict[str, Any]
) -> dict[str, Any]:
    """Ask for an operation of `kind` (KIND_PLURALS), named after `name_hint`."""
    body = {
        "apiVersion": "ops.haplane.dev/v1",
        "kind": kind,
        "metadata": {"name": f"{_dns_name(name_hint, 50)}-{uuid.uuid4().hex[:6]}"},
        "spec": spec,
    }
    status, obj = api.request("POST", f"{OPS}/{KIND_PLURALS[kind]}", body)
    if status != 201:
        raise ClientError(_message(status, obj))
    return dict(obj)


def ask(
    state: StateDir,
    topology: Topology,
    kind: str,
    hint: str,
    spec: dict[str, Any],
    kubeconfig: Path | None,
    region: str | None,
    wait: float | None,
) -> None:
    """Ask for an operation as the kubeconfig's user, then follow it (`wait`: None returns
    once it is created). Exit 1 when it cannot be asked for or does not succeed."""
    try:
        api = client(state, topology, kubeconfig, region)
        obj = request_operation(api, kind, hint, spec)
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    follow_request(api, obj, KIND_PLURALS[kind], wait)


def follow_request(api: ApiClient, obj: dict[str, Any], plural: str, wait: float | None) -> None:
    """Say what was created, then (unless `wait` is None) follow it to its end: exit 1
    unless it succeeded."""
    name = obj["metadata"]["name"]
    what = f"{plural[:-1]}/{name}"
    typer.echo(f"{what} created")
    if wait is None:
        return
    try:
        final = follow(api, name, wait, plural=plural)
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    st = final.get("status") or {}
    if st.get("phase") != "Succeeded":
        typer.echo(f"error: {what} {st.get('phase')}: {st.get('message', '')}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{what} succeeded: {st.get('message', '')}")
    result = st.get("result") or {}
    if plural == "drills":  # the report's figures, as the drill printed them
        for field in ("passed", "failedOver", "lostWrites", "epochOrderViolations", "phases"):
            if field in result:
                typer.echo(f"  {field}: {json.dumps(result[field])}")
        if result.get("reports"):
            typer.echo(f"  reports: {' '.join(result['reports'])}")


def _dns_name(text: str, limit: int) -> str:
    """`text` as a DNS-1123 name: lowercase letters, digits and '-' (users may be
    `alice@example.com`, groups `system:x`), at most `limit` characters."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-") or "grant"


def follow(
    api: ApiClient, name: str, timeout: float, plural: str = "switchovers"
) -> dict[str, Any]:
    """Print the request's phases as they come, until it is done (or `timeout`)."""
    deadline = time.monotonic() + timeout
    said_phase, said_steps = None, 0
    while True:
        try:
            status, obj = api.request("GET", f"{OPS}/{plural}/{name}", timeout=5.0)
        except ClientError:  # the gate moving connections, a region going: ask again
            status, obj = 0, {}
        if status in (0, 429) or status >= 500:
            if time.monotonic() >= deadline:
                raise ClientError(f"{plural[:-1]}/{name}: no answer for the last poll")
            time.sleep(0.5)
            continue
        if status != 200:
            raise ClientError(_message(status, obj))
        st = obj.get("status") or {}
        if st.get("phase") != said_phase:
            said_phase = st.get("phase")
            typer.echo(f"{plural[:-1]}/{name}: {said_phase}", err=True)
            if said_phase == "Pending":
                typer.echo(f"  waiting for approval: {_wanted(st)}", err=True)
                typer.echo(f"  another operator runs: haplane approve {name}", err=True)
        steps = st.get("phases") or []
        for step in steps[said_steps:]:
            extra = ", ".join(
                f"{k} {v}" for k, v in step.items() if k not in ("name", "at", "seconds")
            )
            typer.echo(
                f"  {step.get('name'):<10} {step.get('seconds', 0):>7.3f}s"
                + (f"  ({extra})" if extra else ""),
                err=True,
            )
        said_steps = len(steps)
        if st.get("phase") in DONE:
            return dict(obj)
        if time.monotonic() >= deadline:
            raise ClientError(
                f"{plural[:-1]}/{name} is still {st.get('phase')} after {timeout:.0f}s; "
                f"`kubectl get {plural[:-1]} {name} -o yaml` shows it"
            )
        time.sleep(0.2)


def _lookup(api: ApiClient, name: str) -> tuple[str, int, Any]:
    """(plural, status, object) of the request `name` among the kinds this user may read (a
    kind they may not read is passed over: an etcd-operator approves maintenance, and may not
    see switchovers); when none has it, the first refusal (it may be where they cannot
    look), else not found."""
    answers = []
    for plural in PLURALS:
        status, obj = api.request("GET", f"{OPS}/{plural}/{name}")
        if status not in (403, 404):
            return plural, status, obj
        answers.append((plural, status, obj))
    return next((a for a in answers if a[1] == 403), answers[0])


def decide(api: ApiClient, name: str, kind: str, message: str) -> dict[str, Any]:
    """Approve or deny `name` as read now, after saying what it asks (another approval landing
    meanwhile: read again and retry once, the same request only: same uid)."""
    uid = None
    plural = None
    for attempt in range(2):
        if plural is None:  # whichever kind has a request of that name
            plural, status, obj = _lookup(api, name)
        else:
            status, obj = api.request("GET", f"{OPS}/{plural}/{name}")
        if status != 200:
            raise ClientError(_message(status, obj))
        if uid is None:
            uid = obj["metadata"].get("uid")
            typer.echo(_describe(obj), err=True)
        elif obj["metadata"].get("uid") != uid:
            raise ClientError(f"{name} was replaced meanwhile: look at it again")
        obj.setdefault("status", {}).setdefault("conditions", []).append(
            {"type": kind, "status": "True", "reason": "ByCLI", "message": message}
        )
        status, out = api.request("PUT", f"{OPS}/{plural}/{name}/approval", obj)
        if status == 200:
            return dict(out)
        if status != 409 or attempt or "modified" not in str(out.get("message", "")):
            raise ClientError(_message(status, out))
    raise AssertionError("unreachable")


def _describe(obj: dict[str, Any]) -> str:
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    if obj.get("kind") == "RoleGrant":
        b = spec.get("binding") or {}
        who = ", ".join(
            f"{x.get('kind')} {x.get('name')}"
            for x in b.get("subjects") or ()
            if isinstance(x, dict)
        )
        where = (
            f" in namespace {b['metadata']['namespace']}"
            if b.get("metadata", {}).get("namespace")
            else ""
        )
        return (
            f"rolegrant/{obj['metadata']['name']}: "
            f"{(st.get('requestedBy') or {}).get('username', '?')} asks to bind "
            f"{(b.get('roleRef') or {}).get('kind')} {(b.get('roleRef') or {}).get('name')} to "
            f"{who}{where}: {spec.get('reason')!r}; "
            f"{st.get('phase')}"
        )
    who = (st.get("requestedBy") or {}).get("username", "?")
    if obj.get("kind") != "Switchover":
        asked = ", ".join(f"{k} {v}" for k, v in spec.items() if k != "reason")
        return (
            f"{str(obj.get('kind')).lower()}/{obj['metadata']['name']}: {who} asks: {asked}: "
            f"{spec.get('reason')!r}; {st.get('phase')}"
        )
    how = "forced (unplanned)" if spec.get("force") else "planned"
    return (
        f"switchover/{obj['metadata']['name']}: {who} asks to make {spec.get('targetRegion')} "
        f"active ({how}), asked at epoch {st.get('epochAtRequest')}: {spec.get('reason')!r}; "
        f"{st.get('phase')}"
    )


def _wanted(status: dict[str, Any]) -> str:
    parts = []
    for req in status.get("requirements") or ():
        who = req.get("approvers") or {}
        names = [*who.get("clusterRoles", []), *who.get("groups", []), *who.get("users", [])]
        parts.append(f"{req.get('approvals')} of {', '.join(names)} ({req.get('policy')})")
    expires = status.get("expiresAt")
    return "; ".join(parts) + (f"; expires {expires}" if expires else "")


def _message(status: int, obj: Any) -> str:
    text = obj.get("message") if isinstance(obj, dict) else None
    return f"{status}: {text or obj}"
