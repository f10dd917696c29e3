"""Benchmark: what writing one audit event costs, the direct line (`AuditEvent.line`, for
Metadata-level events: most of an API server's traffic) against the full path (`event`, then
the writer's redaction and serialisation) it replaces, side by side: the same events (a
cached GET's: a user with groups, an objectRef, the authorization annotations), written
through `AuditLog.record` to a file in a temporary directory, rounds interleaved; process
CPU time per event, medians, and their ratio.

    .venv/bin/python bench/audit_events.py [--events 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from haplane.api.request import attributes, request_info
from haplane.auth.audit import AuditEvent, AuditLog, Stage, default_policy
from haplane.auth.user import UserInfo


def events(n: int) -> list[AuditEvent]:
    policy = default_policy()
    user = UserInfo("bench-user", "u-1", ("bench-team", "system:authenticated"))
    out = []
    for i in range(n):
        path = f"/api/v1/namespaces/bench/configmaps/c{i % 100}"
        attrs = attributes(request_info("GET", path, {"resourceVersion": "0"}), user)
        ev = AuditEvent(
            attrs,
            policy.decide(attrs),
            request_uri=f"{path}?resourceVersion=0",
            user=user,
            source_ips=("127.0.0.1",),
            user_agent="wrk",
        )
        ev.set_authorization(True, 'RBAC: allowed by RoleBinding "team-edit/bench"')
        ev.set_response(200)
        out.append(ev)
    return out


def run(log: AuditLog, batch: list[AuditEvent], direct: bool) -> float:
    """CPU µs per event."""
    real = AuditEvent.line
    if not direct:
        AuditEvent.line = lambda *_: None  # type: ignore[method-assign,assignment]
    try:
        start = time.process_time()
        for ev in batch:
            log.record(ev, Stage.RESPONSE_COMPLETE)
        return (time.process_time() - start) / len(batch) * 1e6
    finally:
        AuditEvent.line = real  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    batch = events(args.events)
    with tempfile.TemporaryDirectory(prefix="haplane-bench-") as tmp:
        log = AuditLog(Path(tmp) / "audit.log", max_bytes=64 << 20, backups=1)
        direct, full = [], []
        for _ in range(args.rounds):
            full.append(run(log, batch, direct=False))
            direct.append(run(log, batch, direct=True))
        log.close()
    d, f = statistics.median(direct), statistics.median(full)
    print(f"{args.events} events x {args.rounds} interleaved rounds, CPU µs per event (median)")
    print(
        f"full path (event, then write): {f:.1f} µs  rounds {', '.join(f'{x:.1f}' for x in full)}"
    )
    print(
        f"direct line:                   {d:.1f} µs  rounds {', '.join(f'{x:.1f}' for x in direct)}"
    )
    print(f"direct / full = {d / f:.2f}x")


if __name__ == "__main__":
    main()
