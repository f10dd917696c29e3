"""Benchmark: what writing one audit event costs, the direct line (`AuditEvent.line`, for
Metadata-level events: most of an API server's traffic) against the full path (`event`, then
the writer's redaction and serialisation) it replaces, side by side: the same events (a
cached GET's: a user with groups, an objectRef, the authorization annotations), written
through `AuditLog.record` to a file in a temporary directory, rounds interleaved; process
CPU time per event, medians, and their ratio. Then the batch backend (`BatchingAuditLog`,
`--audit-log-mode batch`) on the direct line: the CPU of the whole process (the writer thread
included, its last flush too) and of the calling thread alone (what a request pays), against
the blocking backend's.

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
from haplane.auth.audit_batch import BatchingAuditLog
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


def run_batch(log: BatchingAuditLog, batch: list[AuditEvent]) -> tuple[float, float]:
    """(process CPU µs, calling thread's CPU µs) per event, the buffer written out."""
    start, own = time.process_time(), time.thread_time()
    for ev in batch:
        log.record(ev, Stage.RESPONSE_COMPLETE)
    caller = time.thread_time() - own
    log.flush()
    return (time.process_time() - start) / len(batch) * 1e6, caller / len(batch) * 1e6


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
        blocking, batched, callers = [], [], []
        buffered = BatchingAuditLog(AuditLog(Path(tmp) / "batch.log", max_bytes=64 << 20,
                                             backups=1))  # fmt: skip
        for _ in range(args.rounds):
            start = time.thread_time()
            blocking.append(run(log, batch, direct=True))
            callers.append((time.thread_time() - start) / len(batch) * 1e6)
            both, caller = run_batch(buffered, batch)
            batched.append(both)
            callers.append(caller)
        log.close()
        buffered.close()
    d, f = statistics.median(direct), statistics.median(full)
    print(f"{args.events} events x {args.rounds} interleaved rounds, CPU µs per event (median)")
    print(
        f"full path (event, then write): {f:.1f} µs  rounds {', '.join(f'{x:.1f}' for x in full)}"
    )
    print(
        f"direct line:                   {d:.1f} µs  rounds {', '.join(f'{x:.1f}' for x in direct)}"
    )
    print(f"direct / full = {d / f:.2f}x")
    b, k = statistics.median(blocking), statistics.median(batched)
    own = statistics.median(callers[1::2])
    print(f"blocking backend (direct line):  {b:.1f} µs of CPU per event, all in the request")
    print(
        f"batch backend:                   {k:.1f} µs of process CPU per event "
        f"(rounds {', '.join(f'{x:.1f}' for x in batched)}), {own:.1f} µs in the caller"
    )
    print(f"batch / blocking = {k / b:.2f}x process CPU, {own / b:.2f}x in the request's path")


if __name__ == "__main__":
    main()
