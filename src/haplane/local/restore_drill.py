"""The restore drill (`haplane drill restore`): prove that a region's snapshot restores, and
how long it takes, without touching the running topology.

Layer: run (`haplane.local`). Takes a snapshot of a region's etcd (kept in STATE/snapshots,
a real backup too), restores it with etcdctl into a fresh etcd cluster of as many members,
started beside the running one on free loopback ports with TLS of its own (it holds the
region's data: nothing listens in plain text), compares the restored keyspace with the source
at the snapshot's revision, then stops it and removes its files.

What is compared: every key and value, as sha256 over the sorted pairs read at the snapshot's
revision from the source (a read of history: the platform kept writing meanwhile, its
heartbeat alone every 100 ms) and from the restored cluster at its own latest revision, which
must be exactly the snapshot's; and etcd's own HashKV at that revision on every restored
member against the source's (its MVCC history too). The figure is the restore time: from
`etcdctl snapshot restore` of the first member to the restored cluster answering a
linearizable read (the RTO of a region rebuilt from a snapshot, data part).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from haplane.store import EtcdClient, EtcdCompacted, EtcdError, GlobalState, etcd_member_name
from haplane.store.snapshot import RestoreMember, SnapshotError, restore_data_dirs
from haplane.topology import Topology

from .etcd_cluster import EtcdCluster
from .gate_plans import plan_of
from .plans import global_plan
from .snapshots import save, snapshot_store
from .state_dir import StateDir

PAGE = 2000


class RestoreDrillError(Exception):
    pass


async def keyspace_digest(client: EtcdClient, revision: int = 0) -> tuple[int, str]:
    """(keys, sha256 over every key and value in key order) at `revision` (0: latest)."""
    digest = hashlib.sha256()
    count, start = 0, b"\0"
    while True:
        kvs, _, _ = await client.range_page(
            start, b"\0", revision=revision, limit=PAGE, timeout=30.0
        )
        for kv in kvs:
            for part in (kv.key, kv.value):
                digest.update(len(part).to_bytes(8, "big"))
                digest.update(part)
        count += len(kvs)
        if len(kvs) < PAGE:
            return count, digest.hexdigest()
        start = kvs[-1].key + b"\0"


async def run_restore_drill(
    topology: Topology,
    state: StateDir,
    region: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    plan = plan_of(topology, state)
    if region is None:
        async with global_plan(plan.clusters).client(timeout=2.0) as control:
            record = await GlobalState(control).read()
        if record is None:
            raise RestoreDrillError("no active region is recorded: name one with --region")
        region = record.region
    source_plan = next((c for c in plan.clusters if c.view.scope == region), None)
    if source_plan is None:
        raise RestoreDrillError(f"no etcd cluster {region!r} in this topology")
    started_at = datetime.now(UTC)
    progress(f"snapshot of {region}")
    meta = await save(topology, state, region)
    progress(f"{meta.id}: {meta.size} bytes in {meta.seconds:.2f} s, revision {meta.revision}")

    root = state.root / "drills" / f"restore-{started_at:%Y%m%dT%H%M%SZ}"
    target = EtcdCluster(
        root, size=len(source_plan.view.members), scope=f"{region}-drill", tls=True,
        unsafe_no_fsync=False,
    )  # fmt: skip
    members = [
        RestoreMember(
            etcd_member_name(m), target.addresses[m.qualified_name].peer_url, root / "data" / m.name
        )
        for m in target.view.members
    ]
    report: dict[str, Any] = {
        "scenario": "restore",
        "region": region,
        "started": started_at.isoformat(timespec="seconds"),
        "snapshot": {
            "id": meta.id,
            "size": meta.size,
            "seconds": meta.seconds,
            "revision": meta.revision,
            "member": meta.member,
        },
    }
    try:
        t0 = time.monotonic()
        await asyncio.to_thread(
            restore_data_dirs,
            snapshot_store(state).path(meta.id),
            members,
            f"haplane-drill-{region}-{started_at:%Y%m%dT%H%M%SZ}",
        )
        restored = time.monotonic() - t0
        progress(f"restored into {len(members)} data dirs in {restored:.2f} s")
        await target.start(timeout=120.0)
        async with target.client(timeout=5.0) as c:
            await c.get(b"/haplane/health")  # linearizable: the cluster answers
        ready = time.monotonic() - t0
        progress(f"restored cluster serving after {ready:.2f} s")
        report["restore"] = {
            "etcdctl_seconds": round(restored, 3),
            "rto_seconds": round(ready, 3),
            "members": len(members),
        }
        report["compare"] = await _compare(source_plan.client(5.0), target, meta.revision)
    except (SnapshotError, EtcdError, TimeoutError) as exc:
        report["error"] = str(exc)
    finally:
        with contextlib.suppress(Exception):
            await target.stop()
        shutil.rmtree(root / "data", ignore_errors=True)
        shutil.rmtree(root / "pki", ignore_errors=True)
    report["problems"] = problems(report)
    report["passed"] = not report["problems"]
    return report


async def _compare(source: EtcdClient, target: EtcdCluster, revision: int) -> dict[str, Any]:
    out: dict[str, Any] = {"revision": revision}
    async with source, target.client(timeout=30.0) as restored:
        keys, digest = await keyspace_digest(source, revision)
        out["source_keys"], out["source_sha256"] = keys, digest
        keys, digest = await keyspace_digest(restored)
        out["restored_keys"], out["restored_sha256"] = keys, digest
        _, out["restored_revision"] = await restored.range(b"/haplane/health")
        _, now = await source.range(b"/haplane/health")
        out["source_revisions_since"] = now - revision
        try:
            want = (await source.hash_kv(source.endpoints[0], revision)).hash
            got = [(await restored.hash_kv(ep, revision)).hash for ep in target.endpoints]
            out["hashkv_equal"] = all(h == want for h in got)
        except EtcdCompacted:
            out["hashkv_equal"] = None  # the source compacted past it meanwhile
    return out


def problems(report: dict[str, Any]) -> list[str]:
    if "error" in report:
        return [str(report["error"])]
    c = report.get("compare") or {}
    found = []
    if c.get("restored_revision") != c.get("revision"):
        found.append(
            f"the restored cluster is at revision {c.get('restored_revision')}, the snapshot "
            f"at {c.get('revision')}"
        )
    if c.get("source_sha256") != c.get("restored_sha256"):
        found.append(
            f"the restored keyspace differs from the source's at the snapshot revision "
            f"({c.get('restored_keys')} keys against {c.get('source_keys')})"
        )
    if c.get("hashkv_equal") is False:
        found.append("etcd's HashKV of a restored member differs from the source's")
    return found


def render(report: dict[str, Any]) -> str:
    s, r, c = report["snapshot"], report.get("restore") or {}, report.get("compare") or {}
    lines = [
        f"restore drill of {report['region']}: {'PASSED' if report['passed'] else 'FAILED'}",
        f"  snapshot   {s['id']}: {s['size']} bytes, {s['seconds']:.2f} s, from {s['member']}",
    ]
    if r:
        lines.append(
            f"  restore    {r['members']} members: etcdctl {r['etcdctl_seconds']:.2f} s, "
            f"serving after {r['rto_seconds']:.2f} s (RTO)"
        )
    if c:
        lines.append(
            f"  compare    {c['restored_keys']} keys at revision {c['revision']}: sha256 "
            f"{'equal' if c['source_sha256'] == c['restored_sha256'] else 'DIFFERENT'}, "
            f"HashKV {c['hashkv_equal']}; {c['source_revisions_since']} later revisions absent"
        )
    lines += [f"  problem    {p}" for p in report["problems"]]
    return "\n".join(lines)


def write_report(report: dict[str, Any], directory: Path) -> Path:
    import json

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"restore-{report['started'].replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
