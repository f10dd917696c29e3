"""`haplane secrets status|rotate|rewrite|remove-key`: the keys that seal a running topology's data
at rest.

Layer: run (`haplane.local`). Reads and writes `STATE/encryption` (the key-encryption keys, the
list of them in order, the EncryptionConfiguration every replica follows, the keys removed);
reads every region's etcd, and the copies of stored values kept under the state dir (saved
divergence, backups, snapshots); rewrites values only in the active region's etcd, guarded by
its fence key (replication carries the new ciphertext to the standbys).

- `rotate` makes a new local key-encryption key the writer: the configuration lists it first
  and keeps the older ones after it (they still read). The replicas reload the file within a
  second (`haplane_encryption_config_info` says which one each uses).
- `rewrite` re-seals every stored value that is not under the writer, one compare-and-swap per
  key (`mod_revision` unchanged, the region's fence key still active): a concurrent write wins
  and is left as written (it was sealed by the writer already, or is retried). It resumes after
  the last key done (`STATE/encryption/rewrite.json`).
- `status` counts, per region, what each key still protects, and what is stored plain; and
  per local key, the retained copies outside etcd that hold values sealed under it.
- `remove-key` (`remove_key`) deletes an older local key once nothing needs it (`needs_of`: not
  the writer; no value under it in any region's etcd, a standby having applied the active
  region up to the moment it was found clean; no retained copy outside etcd, saved divergence,
  backups and snapshots under the state dir, holding one). The configuration drops it first;
  the file goes only once every replica has loaded that (resumable: a run that stopped in
  between finishes the removal; `STATE/encryption/removed.json` remembers what went).
"""

from __future__ import annotations

import asyncio
import bz2
import contextlib
import gzip
import io
import json
import lzma
import os
import tarfile
import time
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from haplane.auth.encryption import (
    KMS_V2_PREFIX,
    EncryptedObject,
    EncryptionError,
    Transformers,
    create_local_key,
    local_config,
)
from haplane.store import (
    APPLIED_KEY,
    FENCE_KEY,
    AppliedRecord,
    Compare,
    EtcdClient,
    EtcdError,
    GlobalState,
    Op,
    prefix_end,
)

from .state_dir import StateDir

REGISTRY = b"/registry/"
PAGE = 500


class SecretsError(Exception):
    """Said to the operator as it is; nothing half-done is left unsaid."""


@dataclass(frozen=True)
class LocalKey:
    name: str  # the provider name in the configuration (and in every stored prefix)
    file: str  # under STATE/encryption


def keys_file(state: StateDir) -> Path:
    return state.root / "encryption" / "keys.json"


@contextlib.contextmanager
def keys_lock(state: StateDir) -> Iterator[None]:
    """One key operation at a time (`rotate`, `remove-key`): an exclusive lock on
    `STATE/encryption/keys.lock`, refused at once when another holds it (a removal that read
    the key list before a rotation saved it would otherwise save a list without the new
    writer)."""
    import fcntl

    directory = state.root / "encryption"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / "keys.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SecretsError(
                "another key operation (rotate or remove-key) is running on this state dir: "
                "run this once it has finished"
            ) from None
        yield
    finally:
        os.close(fd)  # (closing releases the lock)


def local_keys(state: StateDir) -> list[LocalKey]:
    """The local key-encryption keys, the writer first (the one `up` made, when none is
    listed yet)."""
    try:
        doc = json.loads(keys_file(state).read_text())
        return [LocalKey(k["name"], k["file"]) for k in doc["keys"]]
    except FileNotFoundError:
        return [LocalKey("local", "kek.key")]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SecretsError(f"{keys_file(state)}: {exc}") from None


def write_config(state: StateDir, keys: list[LocalKey], encrypt: bool) -> Path:
    """`STATE/encryption/config.yaml` from `keys` (written whole, then renamed: a replica
    never reads half a file)."""
    directory = state.root / "encryption"
    listed = keys_file(state).exists()
    if not listed and encrypt and create_local_key(directory / keys[0].file):
        save_keys(state, keys)  # from now on a missing key is an error, never made anew
        listed = True
    missing = [k.file for k in keys if not (directory / k.file).exists()]
    if missing and listed:
        raise SecretsError(
            f"{directory / missing[0]} is missing: values sealed under it cannot be read, and a "
            "new key under its name would not open them; restore the file (from your key "
            "backup)"
        )
    present = [(k.name, directory / k.file) for k in keys if (directory / k.file).exists()]
    config = directory / "config.yaml"
    tmp = config.with_suffix(".tmp")
    tmp.write_text(local_config(present, encrypt=encrypt))
    os.chmod(tmp, 0o600)
    tmp.replace(config)
    return config


def rotate(
    state: StateDir, user_config: str | None, enabled: bool, *, promote: bool = False
) -> LocalKey:
    """Kubernetes' two-step rotation. First (`promote=False`) a new local key-encryption key
    is added as a *reader* (second in the list): once every replica has loaded that, none can
    meet a value it cannot open. Then (`promote=True`) the newest key becomes the writer, the
    older ones staying for reading."""
    if user_config:
        raise SecretsError(
            "this topology uses its own EncryptionConfiguration (spec.security.encryption."
            "configFile): add the new provider first in that file; the replicas reload it"
        )
    if not enabled:
        raise SecretsError("encryption at rest is off (spec.security.encryption.enabled)")
    with keys_lock(state):
        return _rotate(state, promote)


def _rotate(state: StateDir, promote: bool) -> LocalKey:
    keys = local_keys(state)
    if promote:
        newest = max(keys, key=_number)
        order = [newest, *(k for k in keys if k != newest)]
    elif max(keys, key=_number) != keys[0]:
        # a rotation that stopped between its steps: its new key reads already
        newest, order = max(keys, key=_number), keys
    else:
        # never the name of a removed key: a copy sealed under it that nobody knew of (kept
        # outside the state dir) must say "provider missing", not fail to open under a new key
        gone = [LocalKey(r["name"], r["file"]) for r in _removals(state)]
        n = max(_number(k) for k in [*keys, *gone]) + 1
        newest = LocalKey(f"local-{n}", f"kek-{n}.key")
        create_local_key(state.root / "encryption" / newest.file)
        order = [keys[0], newest, *keys[1:]]
    save_keys(state, order)
    write_config(state, order, encrypt=True)
    return newest


def _number(key: LocalKey) -> int:
    return int(key.name.rpartition("-")[2]) if key.name.startswith("local-") else 1


def save_keys(state: StateDir, keys: list[LocalKey]) -> None:
    path = keys_file(state)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": [vars(k) for k in keys]}, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


# ---- reading what is stored -------------------------------------------------------------


@dataclass
class RegionStatus:
    region: str
    sealed: Counter[tuple[str, str]] = field(default_factory=Counter)  # (provider, key id)
    plain: int = 0  # values of resources the configuration seals, stored plain
    unreadable: int = 0  # sealed by a provider the configuration does not have
    # every value under /registry/ stored with a `k8s:enc:kms:v2:<name>:` prefix, by name,
    # whatever the configuration says of it (what a key's removal must find at zero)
    prefixed: Counter[str] = field(default_factory=Counter)


async def scan(client: EtcdClient, transformers: Transformers, region: str) -> RegionStatus:
    out = RegionStatus(region)
    async for kv_key, value in _values(client):
        if value.startswith(KMS_V2_PREFIX):
            tail = value[len(KMS_V2_PREFIX) : len(KMS_V2_PREFIX) + 256]
            if b":" in tail:
                out.prefixed[tail.split(b":", 1)[0].decode(errors="replace")] += 1
        chain = transformers.chain_for(kv_key)
        if not chain:
            continue
        if value.startswith(KMS_V2_PREFIX):
            name = value[len(KMS_V2_PREFIX) :].split(b":", 1)[0].decode(errors="replace")
            prefix = KMS_V2_PREFIX + name.encode() + b":"
            try:
                obj = EncryptedObject.decode(value[len(prefix) :])
            except EncryptionError:
                out.unreadable += 1
                continue
            if any(p.prefix() == prefix for p in chain):
                out.sealed[(name, obj.key_id)] += 1
            else:  # sealed by a provider the configuration no longer has
                out.unreadable += 1
        elif chain[0].prefix():  # the writer seals this resource, and this value is plain
            out.plain += 1
    return out


async def _values(client: EtcdClient) -> AsyncIterator[tuple[bytes, bytes]]:
    """Every (key, value) under /registry/, a page at a time."""
    start, end = REGISTRY, prefix_end(REGISTRY)
    while True:
        kvs, _ = await client.range(start, end, limit=PAGE)
        for kv in kvs:
            yield kv.key, kv.value
        if len(kvs) < PAGE:
            return
        start = kvs[-1].key + b"\0"


# ---- rewriting ----------------------------------------------------------------------------


@dataclass
class RewriteResult:
    region: str
    examined: int = 0
    rewritten: int = 0
    raced: int = 0  # a concurrent write changed the key first (it was left as written)
    passes: int = 0  # the last found nothing left to re-seal
    # values the configuration cannot open (altered, or under a key no longer listed): left
    # as they are, each with why, so one bad value does not hold up the migration of the rest
    unreadable: dict[bytes, str] = field(default_factory=dict)


def progress_file(state: StateDir) -> Path:
    return state.root / "encryption" / "rewrite.json"


async def rewrite(
    state: StateDir,
    control: EtcdClient,
    regional: dict[str, EtcdClient],
    transformers: Transformers,
    *,
    config: str = "",
    only: Callable[[bytes], bool] = lambda _: True,
    only_name: str = "",
    progress: Callable[[str], None] = lambda _: None,
    settle: float = 2.0,
) -> RewriteResult:
    """Re-seal, in the active region, every value not under its resource's writer; then look
    again (after `settle` seconds, longer than a replica's etcd write timeout: a write sealed
    under the previous writer just before the replicas reloaded may land late) and re-seal
    what it finds, until a pass finds nothing. `config` (the configuration's digest) and
    `only_name` (the filter) decide, with the fence value, whether a saved position resumes."""
    record = await GlobalState(control).read()
    if record is None or record.region not in regional:
        raise SecretsError("no active region is recorded in the global control etcd")
    region, client = record.region, regional[record.region]
    fence = await client.get(FENCE_KEY)
    if fence is None or not fence.value.startswith(b"active"):
        raise SecretsError(f"{region}'s fence key is not active: retry after the switchover")
    done = progress_file(state)
    mark = {"region": region, "fence": fence.value.hex(), "config": config, "only": only_name}
    after = b""
    if done.exists():
        try:
            saved = json.loads(done.read_text())
            if {k: saved.get(k) for k in mark} == mark:
                after = bytes.fromhex(saved["after"])
                progress(f"resuming after {after.decode(errors='replace')}")
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: start over (a full pass is always correct)
    out = RewriteResult(region)
    for attempt in range(1, 4):
        stragglers = 0
        writers = _Writers()  # each pass asks the writers' current key ids again
        async for key, value in _values(client):
            if key <= after or not only(key):
                continue
            chain = transformers.chain_for(key)
            if not chain:
                continue
            if attempt == 1:
                out.examined += 1
            wanted = await writers.key_id(chain[0])
            if not _under_writer(value, chain[0].prefix(), wanted) and key not in out.unreadable:
                stragglers += 1
                await _reseal(client, key, transformers, fence.value, out, wanted)
            if attempt == 1 and out.examined % 100 == 0:
                done.write_text(json.dumps({**mark, "after": key.hex()}) + "\n")
                progress(f"{out.examined} examined, {out.rewritten} rewritten")
        now = await GlobalState(control).read()
        if now is None or (now.region, now.epoch) != (record.region, record.epoch):
            raise SecretsError(
                "the active region changed during the rewrite: run `haplane secrets rewrite` "
                "again (it starts over in the new active region)"
            )
        if attempt > 1 and stragglers == 0:
            break
        after = b""  # the next passes look at everything
        await asyncio.sleep(settle)
    else:
        raise SecretsError(
            f"{region}: values under an older key keep appearing (three passes): are all "
            "replicas on the current configuration?"
        )
    out.passes = attempt
    done.unlink(missing_ok=True)
    return out


class _Writers:
    """The current key id of each writing provider, asked once per pass (a KMS plugin's
    Status: a rotation in the plugin shows in the next pass; a local key's id is fixed)."""

    def __init__(self) -> None:
        self._ids: dict[int, str | None] = {}

    async def key_id(self, provider: object) -> str | None:
        if id(provider) not in self._ids:
            current = getattr(provider, "current_key_id", None)
            try:
                self._ids[id(provider)] = (
                    await asyncio.to_thread(current) if current is not None else None
                )
            except EncryptionError as exc:
                raise SecretsError(f"the writer's current key: {exc}") from None
        return self._ids[id(provider)]


def _under_writer(value: bytes, writer: bytes, key_id: str | None = None) -> bool:
    """Stored as the writer would store it now: its prefix (plain when the writer is
    identity) and, for a KMS v2 writer, its current key id (a plugin's key rotates under one
    provider name: values sealed under an older key id of it are moved too)."""
    if not writer:
        return not value.startswith(b"k8s:enc:")
    if not value.startswith(writer):
        return False
    if key_id is None:
        return True
    try:
        return EncryptedObject.decode(value[len(writer) :]).key_id == key_id
    except EncryptionError:
        return False  # not a value the writer made: re-sealing says what is wrong with it


async def _reseal(
    client: EtcdClient,
    key: bytes,
    transformers: Transformers,
    fence: bytes,
    out: RewriteResult,
    key_id: str | None = None,
) -> None:
    chain = transformers.chain_for(key)
    assert chain
    for _ in range(10):
        kv = await client.get(key)
        if kv is None or _under_writer(kv.value, chain[0].prefix(), key_id):
            return  # deleted meanwhile, or a concurrent write sealed it under the writer
        try:
            plain = transformers.from_storage(kv.value, key)
        except EncryptionError as exc:
            out.unreadable[key] = str(exc)
            return
        sealed = transformers.to_storage(plain, key)
        try:
            r = await client.txn(
                [
                    Compare(key, "mod", "=", kv.mod_revision),
                    Compare(FENCE_KEY, "value", "=", fence),
                ],
                [Op("put", key, sealed)],
                [Op("get", FENCE_KEY)],
            )
        except EtcdError as exc:
            raise SecretsError(f"{key.decode(errors='replace')}: etcd: {exc}") from None
        if r.succeeded:
            out.rewritten += 1
            return
        found = r.results[0][0] if r.results and r.results[0] else None
        if found is None or found.value != fence:
            raise SecretsError(
                "the region's fence key changed (a switchover?): run `haplane secrets rewrite` "
                "again once it is over; it resumes where it stopped"
            )
        out.raced += 1  # the key changed: read it again
    raise SecretsError(f"{key.decode(errors='replace')}: changed ten times while rewriting it")


# ---- the replicas follow ----------------------------------------------------------------


async def wait_loaded(
    urls: list[str], ssl: object, sha256: str, timeout: float = 15.0
) -> list[str]:
    """Wait until every replica at `urls` uses the configuration with this digest (its
    `haplane_encryption_config_info`); returns those that did not in time."""
    import asyncio
    import time

    import aiohttp

    needle = f'haplane_encryption_config_info{{sha256="{sha256}"}} 1.0'
    waiting = set(urls)
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        while waiting and time.monotonic() < deadline:
            for url in sorted(waiting):
                try:
                    async with session.get(f"{url}/metrics", ssl=ssl) as resp:  # type: ignore[arg-type]
                        if resp.status == 200 and needle in await resp.text():
                            waiting.discard(url)
                except (aiohttp.ClientError, TimeoutError):
                    pass
            if waiting:
                await asyncio.sleep(0.3)
    return sorted(waiting)


def config_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- removing a key ---------------------------------------------------------------------

CHUNK = 1 << 20  # bytes read at a time from a retained file


def stored_prefix(name: str) -> bytes:
    """What every value sealed under the provider `name` starts with: in etcd, and so in any
    copy of its stored bytes (etcd's bbolt file keeps values as they were put; saved
    divergence keeps them as they were read)."""
    return KMS_V2_PREFIX + name.encode() + b":"


def retained_dirs(state: StateDir) -> list[Path]:
    """Where copies of stored values live outside etcd: the divergence a returning region saved
    before it was re-seeded (`haplane.local.divergence`, `STATE/divergence/<epoch>/`), and
    backups and snapshots (#19: `STATE/backups/`, `STATE/snapshots/`). Every file below them
    counts, whatever its name."""
    return [state.root / name for name in ("divergence", "backups", "snapshots")]


@dataclass(frozen=True)
class Need:
    """One thing that still needs a key: where (a region, a file), how many stored values are
    sealed under it there (None: it could not be looked at, which counts as needing it), and
    what to do about it."""

    where: str
    count: int | None
    fix: str

    def __str__(self) -> str:
        return f"{self.where}: {self.fix}"


class KeyNeeded(SecretsError):
    """The key cannot go yet; `needs` says each reason."""

    def __init__(self, name: str, needs: list[Need], kept: str = "nothing was changed"):
        super().__init__(f"{name} is still needed ({kept}): " + "; ".join(map(str, needs)))
        self.name = name
        self.needs = needs
        self.kept = kept  # what the refusal left as it was


@dataclass
class RetainedFile:
    path: Path
    counts: Counter[str] = field(default_factory=Counter)  # values found, by key name
    error: str | None = None  # it could not be looked into: it may hold any key's values


def scan_retained(state: StateDir, names: Iterable[str]) -> list[RetainedFile]:
    """Every file under `retained_dirs` that holds values sealed under any of `names` (by
    their stored prefix, `stored_prefix`), or that could not be looked into. gzip, bzip2 and xz
    files are read decompressed; zip and tar archives member by member (each member
    decompressed too); symbolic links are followed. A zstd file, an age or armored PGP one,
    an unreadable one, or a directory that cannot be listed is reported with why.
    Anything else is searched as raw bytes: a file encrypted by other means looks empty."""
    needles = {n: stored_prefix(n) for n in names}
    out: list[RetainedFile] = []
    for root in retained_dirs(state):
        for path in _files(root, out):
            try:
                counts = _count_in_file(path, needles)
            except _UNREADABLE as e:
                out.append(RetainedFile(path, error=str(e) or type(e).__name__))
                continue
            if counts:
                out.append(RetainedFile(path, counts))
    return out


class _Opaque(Exception):
    """A file whose contents cannot be searched (said why)."""


# what reading a retained file may raise (a truncated or corrupt compressed file among them)
_UNREADABLE = (
    _Opaque,
    OSError,
    EOFError,
    ValueError,
    zipfile.BadZipFile,
    lzma.LZMAError,
    tarfile.TarError,
)
TAR_MAGIC_END = 262  # "ustar" at bytes 257-261 of a tar archive's first header


def _files(root: Path, unreadable: list[RetainedFile]) -> list[Path]:
    """The regular files below `root`, symbolic links followed (to directories too, each
    real directory once: a link cycle ends); a directory that cannot be listed goes to
    `unreadable` (it may hold anything)."""
    import stat

    out = []
    seen: set[str] = set()

    def failed(exc: OSError) -> None:
        if not isinstance(exc, FileNotFoundError):  # (absent, or gone meanwhile: nothing)
            unreadable.append(RetainedFile(Path(exc.filename or root), error=str(exc)))

    for dirpath, dirnames, names in os.walk(root, onerror=failed, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        for n in sorted(names):
            path = Path(dirpath) / n
            try:
                if stat.S_ISREG(path.stat().st_mode):  # not a FIFO: reading one would block
                    out.append(path)
            except FileNotFoundError:
                continue  # gone meanwhile, or a dangling link: it holds nothing
    return sorted(out)


def _count_in_file(path: Path, needles: dict[str, bytes]) -> Counter[str]:
    with open(path, "rb") as f:
        if f.peek(4)[:4] == b"PK\x03\x04":
            total: Counter[str] = Counter()
            with zipfile.ZipFile(f) as archive:
                for info in archive.infolist():
                    if not info.is_dir():
                        with archive.open(info) as member:
                            total += _count_any(member, needles, 1)
            return total
        return _count_any(f, needles, 0)


def _count_any(f: Any, needles: dict[str, bytes], depth: int) -> Counter[str]:
    """`f` decompressed; a tar archive (compressed or not) member by member, each opened
    the same way (a snapshot `.db.gz` inside a `.tar` is read decompressed)."""
    opened = _opened(f, depth)
    head = bytes(opened.peek(TAR_MAGIC_END)[:TAR_MAGIC_END]) if hasattr(opened, "peek") else b""
    if head[257:TAR_MAGIC_END] != b"ustar":
        return _count_stream(opened, needles)
    if depth >= 3:
        raise _Opaque("archives nested more than three deep")
    total: Counter[str] = Counter()
    with tarfile.open(fileobj=opened, mode="r|") as archive:
        for member in archive:
            if member.isfile():
                inner = archive.extractfile(member)
                if inner is not None:
                    total += _count_any(io.BufferedReader(inner), needles, depth + 1)
    return total


def _opened(f: Any, depth: int) -> BinaryIO:
    """`f` decompressed as its first bytes say (a gzip of a gzip too), else `f` as it is."""
    head = bytes(f.peek(32)[:32])
    # the decompressors read `f` and never close it; the outer `with` closes the file
    if head.startswith(b"\x1f\x8b"):
        inner: Any = gzip.GzipFile(fileobj=f)
    elif head.startswith(b"BZh"):
        inner = bz2.BZ2File(f)
    elif head.startswith(b"\xfd7zXZ\x00"):
        inner = lzma.LZMAFile(f)  # noqa: SIM115
    elif head.startswith(b"(\xb5/\xfd"):
        raise _Opaque("zstd-compressed, which haplane cannot read: decompress it (zstd -d)")
    elif head.startswith((b"age-encryption.org/", b"-----BEGIN AGE", b"-----BEGIN PGP MESSAGE")):
        raise _Opaque("encrypted: what it holds cannot be seen")
    elif head.startswith(b"PK\x03\x04"):
        raise _Opaque("a zip archive inside an archive: unpack it")
    else:
        return f  # type: ignore[no-any-return]
    if depth >= 3:
        raise _Opaque("compressed more than three times over")
    return _opened(inner, depth + 1)


def _count_stream(f: BinaryIO, needles: dict[str, bytes]) -> Counter[str]:
    """How often each needle occurs in `f`, read a chunk at a time (the last bytes of a chunk
    are kept, so a needle across two chunks counts once)."""
    counts: Counter[str] = Counter()
    if not needles:
        return counts
    keep = max(len(n) for n in needles.values()) - 1
    tail = b""
    while chunk := f.read(CHUNK):
        buf = tail + chunk
        for name, needle in needles.items():
            # only occurrences that reach into the new chunk: those within `tail` were counted
            found = buf.count(needle, max(0, len(tail) - len(needle) + 1))
            if found:
                counts[name] += found
        tail = buf[-keep:] if keep else b""
    return counts


def _retained_needs(state: StateDir, name: str) -> list[Need]:
    needs = []
    for found in scan_retained(state, [name]):
        where = str(found.path)
        if found.error is not None:
            needs.append(
                Need(
                    where,
                    None,
                    f"could not be looked into ({found.error}); it may hold values sealed under "
                    f"{name}: make it readable, or move it out of {found.path.parent}",
                )
            )
        elif found.path.is_relative_to(state.root / "divergence"):
            epoch = found.path.relative_to(state.root / "divergence").parts[0]
            needs.append(
                Need(
                    where,
                    found.counts[name],
                    f"saved divergence {epoch} holds {found.counts[name]} value(s) sealed under "
                    f"{name}: re-apply what you need (`haplane divergence apply {epoch}`: the "
                    f"new writes are sealed under the writer), then delete "
                    f"{state.root / 'divergence' / epoch}",
                )
            )
        else:
            needs.append(
                Need(
                    where,
                    found.counts[name],
                    f"holds {found.counts[name]} value(s) sealed under {name}: a restore would "
                    f"need the key; delete it once a newer backup replaces it (or keep the key)",
                )
            )
    return needs


async def needs_of(
    state: StateDir,
    name: str,
    control: EtcdClient,
    regional: dict[str, EtcdClient],
    transformers: Transformers,
    *,
    catch_up: float = 10.0,
) -> list[Need]:
    """What still needs the local key `name` (empty: nothing), each with what to do:
    - it is the writer (first in keys.json);
    - a stored value sealed under it in any region's etcd, the active one and every standby
      (by its stored prefix, whatever the configuration says);
    - a standby that has not applied the active region up to the revision at which the active
      region was found free of it (waiting up to `catch_up` seconds: the active region's
      heartbeat moves the applied record on), or that follows another region: what it has yet
      to apply may be sealed under it;
    - a file under the retained dirs (saved divergence, backups, snapshots) holding such a
      value, or one that could not be looked into.
    A region, or the global control etcd, that does not answer counts: nothing says it is
    free of the key."""
    needs: list[Need] = []
    keys = local_keys(state)
    if keys[0].name == name:
        needs.append(
            Need(
                str(keys_file(state)),
                None,
                f"{name} is the writer (it seals every new value): run `haplane secrets rotate` "
                "first, then `haplane secrets rewrite`",
            )
        )
    active: str | None = None
    try:
        record = await GlobalState(control).read()
        if record is None:
            needs.append(Need("global control etcd", None, "no active region is recorded"))
        elif record.region not in regional:
            needs.append(Need("global control etcd", None, f"{record.region}: an unknown region"))
        else:
            active = record.region
    except EtcdError as exc:
        needs.append(
            Need(
                "global control etcd",
                None,
                f"did not answer ({exc}): which region is active decides what every standby "
                "must have applied",
            )
        )
    floor = 0  # the active region's revision once found free of the key
    for region in sorted(regional, key=lambda r: (r != active, r)):
        client = regional[region]
        try:
            if region != active and floor:
                behind = await _behind(client, name, active or "", floor, catch_up)
                if behind:
                    needs.append(Need(f"region {region}", None, behind))
            n = (await scan(client, transformers, region)).prefixed[name]
            if n and region == active:
                needs.append(
                    Need(
                        f"region {region}",
                        n,
                        f"{n} stored value(s) sealed under {name}: run `haplane secrets rewrite`",
                    )
                )
            elif n:
                needs.append(
                    Need(
                        f"region {region}",
                        n,
                        f"{n} stored value(s) sealed under {name}: run `haplane secrets "
                        "rewrite` (in the active region) if it has not run, and wait for "
                        "replication to carry it here (`haplane status`)",
                    )
                )
            elif region == active:
                _, floor = await client.range(FENCE_KEY)
        except EtcdError as exc:
            needs.append(
                Need(
                    f"region {region}",
                    None,
                    f"its etcd could not be read ({exc}): whether it holds values sealed under "
                    f"{name} is unknown",
                )
            )
    # files may be large (snapshots): read off the event loop
    return needs + await asyncio.to_thread(_retained_needs, state, name)


async def _behind(
    client: EtcdClient, name: str, active: str, floor: int, catch_up: float
) -> str | None:
    """Why a standby may still receive values sealed under `name` (None: it will not)."""
    deadline = time.monotonic() + catch_up
    while True:
        kv = await client.get(APPLIED_KEY)
        if kv is None:
            # it replicates from nowhere, or is about to copy the active region whole (a
            # resync reads it as it is now, free of the key): what it holds was scanned
            return None
        record = AppliedRecord.from_kv(kv)
        if record.source == active and record.revision >= floor:
            return None
        if time.monotonic() >= deadline:
            if record.source != active:
                return (
                    f"replicates from {record.source}, not from the active region {active}: "
                    f"what it has yet to apply may be sealed under {name}; wait until it "
                    f"follows {active} (`haplane status`)"
                )
            return (
                f"has applied {active} up to revision {record.revision}, not yet {floor} "
                f"(where {active} was found free of {name}): wait for replication "
                "(`haplane status`) and try again"
            )
        await asyncio.sleep(0.2)


def removals_file(state: StateDir) -> Path:
    return state.root / "encryption" / "removed.json"


def _removals(state: StateDir) -> list[dict[str, Any]]:
    """The keys removed, or being removed (`state`: "removing" until the file is gone)."""
    path = removals_file(state)
    try:
        rows = json.loads(path.read_text())["keys"]
        return [dict(r) for r in rows if isinstance(r["name"], str) and isinstance(r["file"], str)]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SecretsError(f"{path}: {exc}") from None


def _record_removal(state: StateDir, key: LocalKey, what: str) -> None:
    rows = [r for r in _removals(state) if r["name"] != key.name]
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows.append({"name": key.name, "file": key.file, "state": what, "time": when})
    path = removals_file(state)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": rows}, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


@dataclass(frozen=True)
class Removed:
    key: LocalKey
    config: Path
    already: bool = False  # an earlier run removed it: nothing was left to do
    resumed: bool = False  # an earlier run had taken it out of the configuration


async def remove_key(
    state: StateDir,
    name: str,
    *,
    user_config: str | None,
    enabled: bool,
    control: EtcdClient,
    regional: dict[str, EtcdClient],
    transformers: Transformers,
    reloaded: Callable[[Path], Awaitable[list[str]]],
    catch_up: float = 10.0,
) -> Removed:
    """Remove the local key `name` once nothing needs it (`needs_of`; else `KeyNeeded`, with
    every reason): keys.json and the configuration drop it, `reloaded(config)` waits until
    every replica uses that configuration (it returns those that do not), and only then is the
    key file deleted. A run that stopped after the configuration dropped it finishes the
    removal (looking again first: the file is the last copy of the key); one after the file went
    answers `already`.

    The file is deleted, not moved aside: a key kept in the state dir beside the others is not
    removed (whoever can read the dir could still open old copies sealed under it, wherever
    they went), and nothing the state dir knows of needs it any more. A copy for safekeeping
    belongs with the key backups, taken before."""
    if user_config:
        raise SecretsError(
            "this topology uses its own EncryptionConfiguration (spec.security.encryption."
            "configFile): remove the provider from that file once nothing needs it; the "
            "replicas reload it"
        )
    with keys_lock(state):
        return await _remove_key(
            state, name, enabled, control, regional, transformers, reloaded, catch_up
        )


async def _remove_key(
    state: StateDir,
    name: str,
    enabled: bool,
    control: EtcdClient,
    regional: dict[str, EtcdClient],
    transformers: Transformers,
    reloaded: Callable[[Path], Awaitable[list[str]]],
    catch_up: float,
) -> Removed:
    keys = local_keys(state)
    key = next((k for k in keys if k.name == name), None)
    directory = state.root / "encryption"

    async def needs() -> list[Need]:
        return await needs_of(state, name, control, regional, transformers, catch_up=catch_up)

    def listed_again(found: list[Need], why: str) -> KeyNeeded:
        """`key` back in the list, as a reader after the writer: nothing it seals is lost."""
        assert key is not None
        now = [k for k in local_keys(state) if k.name != name]
        save_keys(state, [*now[:1], key, *now[1:]])
        write_config(state, [*now[:1], key, *now[1:]], encrypt=enabled)
        _record_removal(state, key, "kept")
        return KeyNeeded(name, found, f"{why}; it is listed again as a reader")

    resumed = False
    if key is None:
        earlier = next((r for r in _removals(state) if r["name"] == name), None)
        if earlier is None or earlier.get("state") == "kept":
            raise SecretsError(
                f"no local key named {name!r} (the local keys, the writer first: "
                f"{', '.join(k.name for k in keys)})"
            )
        key = LocalKey(earlier["name"], earlier["file"])
        if earlier.get("state") == "removed":
            return Removed(key, directory / "config.yaml", already=True)
        resumed = True
        # a stop after the configuration dropped it: look again before going on (something
        # may need it since, a backup put back say)
        found = await needs()
        if found:
            raise listed_again(found, "a removal that stopped halfway found it needed")
    else:
        # every replica on the current configuration first: one still writing under the key
        # (a rotation that stopped between its steps) could seal values after the scan
        late = await reloaded(directory / "config.yaml")
        if late:
            raise SecretsError(
                f"these replicas are not on {directory / 'config.yaml'} yet: {', '.join(late)}; "
                f"nothing was changed: run `haplane secrets remove-key {name}` once they are"
            )
        found = await needs()
        if found:
            raise KeyNeeded(name, found)
        _record_removal(state, key, "removing")  # first: a stop after keys.json knows the file
        keys = [k for k in keys if k.name != name]
        save_keys(state, keys)
    config = write_config(state, keys, encrypt=enabled)  # again when resuming: it may have stopped
    late = await reloaded(config)
    if late:
        raise SecretsError(
            f"{config} no longer lists {name}, but these replicas have not loaded it: "
            f"{', '.join(late)}; {directory / key.file} stays until they have: run `haplane "
            f"secrets remove-key {name}` again once they answer"
        )
    # look again, now that no replica can seal under it: a value written between the scan and
    # a replica's reload would otherwise outlive its key
    found = await needs()
    if found:
        raise listed_again(found, "values under it appeared while the replicas reloaded")
    (directory / key.file).unlink(missing_ok=True)
    _record_removal(state, key, "removed")
    return Removed(key, config, resumed=resumed)
