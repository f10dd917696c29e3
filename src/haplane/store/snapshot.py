"""Physical snapshots of one etcd cluster: taken, checked, kept, and turned back into member
data dirs.

Layer: store. Streams a member's backend over gRPC (`EtcdClient.snapshot`, etcd's
Maintenance.Snapshot), runs etcd's own `etcdctl` for what only etcd should judge (`snapshot
status`: the bolt file opens, its revision and key count; `snapshot restore`: member data
dirs under a new cluster token), and keeps files in a `SnapshotStore`. Touches nothing else.

What a snapshot file is: the member's bolt database as etcd streams it, followed by the
sha256 of that database (32 bytes), which `etcdctl snapshot restore` checks too. Beside it,
`ID.json` holds `SnapshotMeta`: our own sha256 of the whole file and its size (a flipped
byte or a truncated file is found before etcd is asked anything), the scope (region or
"global"), the topology's identity (a snapshot of another topology is refused), the
revision and key count etcd read from the file, the epoch, times and versions.

Stores: `DirectoryStore` (a directory; written by rename, so a reader never sees half a
file). An object store (S3, GCS, MinIO) would implement `SnapshotStore` with `boto3` (S3's
own SDK, which MinIO and GCS's interoperability endpoint speak); not built: no such server
runs here to test it against.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from .errors import EtcdError
from .etcd_client import EtcdClient

FORMAT = 1  # of SnapshotMeta; a newer one is refused, never half-read
_TRAILER = 32  # etcd appends the sha256 of the database it streamed
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,120}$")


class SnapshotError(Exception):
    """A snapshot that cannot be taken, read or trusted; the message says which and why."""


@dataclass(frozen=True)
class SnapshotMeta:
    id: str
    scope: str  # a region, or "global" (the global control etcd)
    topology: str  # the identity of the topology it was taken from
    cluster_id: str  # hex, of the cluster it was taken from
    member: str  # the endpoint that streamed it
    revision: int  # etcd's, read from the file (`etcdctl snapshot status`)
    keys: int  # bolt keys, as `etcdctl snapshot status` counts them (revisions and meta too)
    epoch: int | None  # the global epoch when it was taken (None: unknown)
    taken_at: str  # ISO 8601, UTC
    seconds: float  # how long the stream took
    size: int
    sha256: str  # of the whole file
    etcd_version: str
    haplane_version: str
    format: int = FORMAT
    scheduled: bool = False  # taken by the schedule (whose retention prunes only those)
    fence: str = ""  # a region's fence key when it was taken (`standby:A@E`...; "" unknown)

    @classmethod
    def from_json(cls, text: str, where: str) -> SnapshotMeta:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise SnapshotError(f"{where}: not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise SnapshotError(f"{where}: not a snapshot description")
        try:
            fmt = int(raw.get("format", 0) or 0)
        except (TypeError, ValueError):
            raise SnapshotError(f"{where}: format {raw.get('format')!r} is not a number") from None
        if fmt > FORMAT:
            raise SnapshotError(
                f"{where}: format {raw['format']} is newer than this haplane reads ({FORMAT}); "
                "use the haplane version that wrote it"
            )
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names - set(raw) if n not in ("format", "scheduled", "fence"))
        if missing:
            raise SnapshotError(f"{where}: missing {', '.join(missing)}")
        try:
            return cls(**{k: v for k, v in raw.items() if k in names})
        except TypeError as exc:
            raise SnapshotError(f"{where}: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @property
    def taken(self) -> datetime:
        return datetime.fromisoformat(self.taken_at)


class SnapshotStore(Protocol):
    def staging(self) -> Path:
        """A fresh local path to write a snapshot to before `put`."""
        ...

    def put(self, meta: SnapshotMeta, file: Path) -> None: ...

    def rewrite(self, meta: SnapshotMeta) -> None: ...

    def list(self, scope: str | None = None) -> list[SnapshotMeta]: ...

    def get(self, snapshot_id: str) -> SnapshotMeta: ...

    def path(self, snapshot_id: str) -> Path:
        """A local path of the snapshot's file (an object store downloads it first)."""
        ...

    def delete(self, snapshot_id: str) -> None: ...


class DirectoryStore:
    """`ROOT/ID.db` and `ROOT/ID.json`; files written under `ROOT/.staging/` and renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def staging(self) -> Path:
        d = self.root / ".staging"
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return d / f"{uuid.uuid4().hex}.part"

    def put(self, meta: SnapshotMeta, file: Path) -> None:
        _check_id(meta.id)
        db, desc = self.root / f"{meta.id}.db", self.root / f"{meta.id}.json"
        if db.exists() or desc.exists():
            raise SnapshotError(f"snapshot {meta.id} exists already")
        os.chmod(file, 0o600)  # Secrets are ciphertext in etcd, but the rest is not
        os.replace(file, db)
        tmp = desc.with_suffix(".json.part")
        tmp.write_text(meta.to_json())
        os.chmod(tmp, 0o600)
        os.replace(tmp, desc)  # the description last: a listed snapshot has its file
        _fsync_dir(self.root)

    def rewrite(self, meta: SnapshotMeta) -> None:
        """Replace a kept snapshot's description (its file unchanged)."""
        _check_id(meta.id)
        desc = self.root / f"{meta.id}.json"
        tmp = desc.with_suffix(".json.part")
        tmp.write_text(meta.to_json())
        os.chmod(tmp, 0o600)
        os.replace(tmp, desc)

    def list(self, scope: str | None = None) -> list[SnapshotMeta]:
        out = []
        for desc in sorted(self.root.glob("*.json")):
            try:
                meta = SnapshotMeta.from_json(desc.read_text(), str(desc))
            except (OSError, SnapshotError):
                continue  # `get` names what is wrong with one; a listing skips it
            if meta.id != desc.stem:
                continue  # a description under another snapshot's name: `get` refuses it
            if scope is None or meta.scope == scope:
                out.append(meta)
        return sorted(out, key=lambda m: (m.taken, m.id))

    def get(self, snapshot_id: str) -> SnapshotMeta:
        _check_id(snapshot_id)
        desc = self.root / f"{snapshot_id}.json"
        try:
            text = desc.read_text()
        except FileNotFoundError:
            raise SnapshotError(f"no snapshot {snapshot_id} in {self.root}") from None
        meta = SnapshotMeta.from_json(text, str(desc))
        if meta.id != snapshot_id:
            raise SnapshotError(f"{desc} describes snapshot {meta.id}, not {snapshot_id}")
        return meta

    def path(self, snapshot_id: str) -> Path:
        _check_id(snapshot_id)
        return self.root / f"{snapshot_id}.db"

    def delete(self, snapshot_id: str) -> None:
        _check_id(snapshot_id)
        (self.root / f"{snapshot_id}.json").unlink(missing_ok=True)
        (self.root / f"{snapshot_id}.db").unlink(missing_ok=True)


def _check_id(snapshot_id: str) -> None:
    if not _ID.match(snapshot_id) or ".." in snapshot_id:
        raise SnapshotError(f"invalid snapshot id {snapshot_id!r}")


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- etcdctl ----------------------------------------------------------------------------------


def etcdctl(etcd: Path | None = None) -> Path:
    """etcd's `etcdctl`: beside the etcd binary first (the same release), else on PATH."""
    if etcd is not None and (etcd.parent / "etcdctl").exists():
        return etcd.parent / "etcdctl"
    found = shutil.which("etcdctl")
    if found is None:
        raise SnapshotError(
            "etcdctl is needed to read and restore snapshots: install Debian's etcd-client "
            "(`./dev setup` does)"
        )
    return Path(found)


def _run(argv: Sequence[str], timeout: float = 600.0) -> str:
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SnapshotError(f"{argv[0]} {argv[1]} {argv[2]}: {exc}") from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise SnapshotError(f"etcdctl {argv[1]} {argv[2]}: {why[-1] if why else 'failed'}")
    return done.stdout


@dataclass(frozen=True)
class FileStatus:
    revision: int
    keys: int  # bolt keys, as `etcdctl snapshot status` counts them (revisions and meta too)
    hash: int  # etcd's own hash of the file's buckets


def file_status(file: Path, tool: Path | None = None) -> FileStatus:
    """`etcdctl snapshot status`: etcd opens the file read-only and says what it holds."""
    out = _run([str(tool or etcdctl()), "snapshot", "status", str(file), "-w", "json"], 120)
    try:
        raw = json.loads(out)
        return FileStatus(int(raw["revision"]), int(raw["totalKey"]), int(raw["hash"]))
    except (ValueError, KeyError, TypeError):
        raise SnapshotError(f"etcdctl snapshot status: unexpected answer {out[:200]!r}") from None


# ---- taking -----------------------------------------------------------------------------------


async def _pick_member(client: EtcdClient) -> str:
    """A follower when one answers (the leader keeps its disk for the writes), else any."""
    answered = []
    for ep in client.endpoints:
        with contextlib.suppress(EtcdError):
            answered.append(await client.status(ep, timeout=2.0))
    if not answered:
        raise SnapshotError(f"no member of {', '.join(client.endpoints)} answers")
    followers = [s for s in answered if not s.is_leader]
    return (followers or answered)[0].endpoint


async def take(
    client: EtcdClient,
    store: SnapshotStore,
    *,
    scope: str,
    topology: str,
    epoch: int | None = None,
    endpoint: str | None = None,
    haplane_version: str = "",
    tool: Path | None = None,
    scheduled: bool = False,
    fence: str = "",
) -> SnapshotMeta:
    """Stream one member's backend into `store`, check it, describe it. Nothing is stored
    unless every check passed: etcd's trailing sha256, and etcd reading the file."""
    try:
        ep = endpoint or await _pick_member(client)
        status = await client.status(ep, timeout=2.0)
        cluster = await client.cluster_id(timeout=2.0)
    except EtcdError as exc:
        raise SnapshotError(f"snapshot of {scope}: {exc}") from None
    part = store.staging()
    whole, inner = hashlib.sha256(), hashlib.sha256()
    pending, size = b"", 0
    started = time.monotonic()
    try:
        with part.open("wb") as out:
            stream = client.snapshot(ep)
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    out.write(chunk)
                    whole.update(chunk)
                    size += len(chunk)
                    # everything but the last 32 bytes seen so far is database
                    buf = pending + chunk
                    inner.update(buf[:-_TRAILER])
                    pending = buf[-_TRAILER:]
            out.flush()
            await asyncio.to_thread(os.fsync, out.fileno())
        seconds = time.monotonic() - started
        if len(pending) != _TRAILER or inner.digest() != pending:
            raise SnapshotError(
                f"the snapshot from {ep} does not end with its database's sha256: incomplete"
            )
        held = await asyncio.to_thread(file_status, part, tool)
        taken_at = datetime.now(UTC)
        meta = SnapshotMeta(
            # unique even for two snapshots of one revision in one second (by hand and the
            # schedule's)
            id=f"{scope}-{taken_at:%Y%m%dT%H%M%SZ}-r{held.revision}-{secrets.token_hex(2)}",
            scope=scope,
            topology=topology,
            cluster_id=f"{cluster:016x}",
            member=ep,
            revision=held.revision,
            keys=held.keys,
            epoch=epoch,
            taken_at=taken_at.isoformat(timespec="seconds"),
            seconds=round(seconds, 3),
            size=size,
            sha256=whole.hexdigest(),
            etcd_version=status.version,
            haplane_version=haplane_version,
            scheduled=scheduled,
            fence=fence,
        )
        store.put(meta, part)
        return meta
    except EtcdError as exc:
        raise SnapshotError(f"snapshot of {scope} from {ep}: {exc}") from None
    except OSError as exc:  # a full disk, a permission: said, not a traceback
        raise SnapshotError(f"snapshot of {scope}: writing it failed: {exc}") from None
    finally:
        part.unlink(missing_ok=True)


# ---- checking ---------------------------------------------------------------------------------


def verify(
    store: SnapshotStore,
    snapshot_id: str,
    *,
    topology: str | None = None,
    scope: str | None = None,
    tool: Path | None = None,
) -> SnapshotMeta:
    """Every check a restore makes before it changes anything, in order of cost: the
    description, the topology and scope (when given), the file's size and sha256, etcd's
    trailing sha256, and etcd reading the file (its revision as described). SnapshotError
    names the first that fails."""
    meta = store.get(snapshot_id)
    if topology is not None and meta.topology != topology:
        raise SnapshotError(
            f"snapshot {snapshot_id} was taken from another topology ({meta.topology}, this is "
            f"{topology}): refused"
        )
    if scope is not None and meta.scope != scope:
        raise SnapshotError(
            f"snapshot {snapshot_id} is of {meta.scope}, not {scope}: a region is restored "
            "only from its own snapshots"
        )
    file = store.path(snapshot_id)
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        raise SnapshotError(f"snapshot {snapshot_id}: its file {file} is missing") from None
    if size != meta.size:
        raise SnapshotError(
            f"snapshot {snapshot_id}: {file} holds {size} bytes, {meta.size} were written "
            "(truncated or appended to)"
        )
    whole, inner = hashlib.sha256(), hashlib.sha256()
    with file.open("rb") as f:
        body = size - _TRAILER
        left = body
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            whole.update(chunk)
            inner.update(chunk)
            left -= len(chunk)
        trailer = f.read()
        whole.update(trailer)
    if whole.hexdigest() != meta.sha256:
        raise SnapshotError(
            f"snapshot {snapshot_id}: sha256 of {file} is {whole.hexdigest()[:16]}..., "
            f"{meta.sha256[:16]}... was written: the file changed (corrupted)"
        )
    if inner.digest() != trailer:
        raise SnapshotError(f"snapshot {snapshot_id}: etcd's own sha256 at its end does not match")
    held = file_status(file, tool)
    if held.revision != meta.revision:
        raise SnapshotError(
            f"snapshot {snapshot_id}: etcd reads revision {held.revision}, "
            f"{meta.revision} was described"
        )
    return meta


# ---- restoring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreMember:
    name: str  # etcd's --name
    peer_url: str
    data_dir: Path  # must not exist yet


def restore_data_dirs(
    file: Path, members: Sequence[RestoreMember], token: str, tool: Path | None = None
) -> None:
    """`etcdctl snapshot restore` of `file` into each member's new data dir, all under the
    cluster token `token` (a new cluster: new member ids, so a new cluster id). On a failure
    the dirs made so far are removed and SnapshotError raised: nothing is left half made."""
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    made: list[Path] = []
    try:
        for m in members:
            if m.data_dir.exists():
                raise SnapshotError(f"{m.data_dir} exists: restore wants a fresh data dir")
            m.data_dir.parent.mkdir(parents=True, exist_ok=True)
            made.append(m.data_dir)
            _run(
                [
                    str(tool or etcdctl()),
                    "snapshot",
                    "restore",
                    str(file),
                    "--name",
                    m.name,
                    "--initial-cluster",
                    initial,
                    "--initial-cluster-token",
                    token,
                    "--initial-advertise-peer-urls",
                    m.peer_url,
                    "--data-dir",
                    str(m.data_dir),
                ]
            )
            os.chmod(m.data_dir, 0o700)
    except BaseException:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        raise


# ---- keeping ----------------------------------------------------------------------------------


def retained(snapshots: Iterable[SnapshotMeta], hourly: int, daily: int) -> set[str]:
    """Which snapshots a retention of `hourly` hours and `daily` days keeps: the newest of
    each of the last `hourly` hours that have one, and of the last `daily` days (the newest
    snapshot is always kept)."""
    metas = sorted(snapshots, key=lambda m: (m.taken, m.id), reverse=True)
    keep: set[str] = {metas[0].id} if metas else set()
    for count, bucket in ((hourly, "%Y%m%d%H"), (daily, "%Y%m%d")):
        seen: set[str] = set()
        for m in metas:
            b = m.taken.strftime(bucket)
            if b in seen:
                continue
            if len(seen) >= count:
                break
            seen.add(b)
            keep.add(m.id)
    return keep
