"""`haplane audit`: every API replica's audit log, of every region, merged into one
time-ordered view.

Layer: run (cli). Reads the files under the state dir (haplane.auth.audit does the merging
and following); import-light: typer only at import.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from .options import StateDirOpt

_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`10m`, `2h`, `1d`, `30s` ago, or an RFC 3339 time (`2026-12-05T10:00:00Z`)."""
    m = _DURATION.match(text.strip())
    now = now or datetime.now(UTC)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit] * n
        return now - timedelta(seconds=seconds)
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: a duration (30s, 10m, 2h, 1d) or an RFC 3339 time"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def line(event: dict[str, Any]) -> str:
    """One event as a line: time, stage, user, verb, what, code, decision."""
    ref = event.get("objectRef") or {}
    what = event.get("requestURI", "")
    if ref:
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        if ref.get("apiGroup"):
            resource += "." + ref["apiGroup"]
        where = f"{ref['namespace']}/" if ref.get("namespace") else ""
        what = f"{resource} {where}{ref.get('name', '')}".rstrip(" /")
    code = (event.get("responseStatus") or {}).get("code", "")
    decision = (event.get("annotations") or {}).get("authorization.k8s.io/decision", "")
    user = (event.get("user") or {}).get("username", "")
    return (
        f"{event.get('stageTimestamp', '')}  {event.get('stage', ''):<17} {user:<24} "
        f"{event.get('verb', ''):<8} {what}  {code} {decision}".rstrip()
    )


def audit_cmd(
    user: Annotated[str | None, typer.Option("--user", help="Only this user.")] = None,
    verb: Annotated[str | None, typer.Option("--verb", help="Only this verb.")] = None,
    resource: Annotated[
        str | None, typer.Option("--resource", help="Only this resource (pods, pods/log).")
    ] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="30s, 10m, 2h, 1d, or an RFC 3339 time.")
    ] = None,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The events as JSON lines.")] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Every replica's audit log, of every region, merged into one time-ordered view."""
    import asyncio
    import contextlib
    import json

    from haplane.auth import audit
    from haplane.local.state_dir import StateDir, default_state_dir

    state = StateDir(state_dir or default_state_dir())
    paths = state.audit_logs()
    if not paths and not follow_:
        typer.echo(f"error: no audit logs under {state.root / 'audit'}", err=True)
        raise typer.Exit(1)
    start = parse_since(since) if since else None
    stats = audit.ReadStats()

    def show(event: dict[str, Any]) -> None:
        typer.echo(json.dumps(event) if as_json else line(event))

    filters: dict[str, Any] = {
        "since": start,
        "user": user,
        "verb": verb,
        "resource": resource,
        "namespace": namespace,
    }
    if not follow_:
        for event in audit.read_events(paths, stats=stats, **filters):
            show(event)
    else:

        async def tail() -> None:
            async for event in audit.follow(paths, stats=stats, **filters):
                show(event)

        with contextlib.suppress(KeyboardInterrupt):  # ^C ends a follow, quietly
            asyncio.run(tail())
    if stats.malformed:
        typer.echo(f"warning: {stats.malformed} malformed line(s) skipped", err=True)
