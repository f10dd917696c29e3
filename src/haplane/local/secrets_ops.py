"""`haplane secrets status|rotate|rewrite`: the keys that seal a running topology's data at rest.

Layer: run (`haplane.local`). Reads and writes `STATE/encryption` (the key-encryption keys, the
list of them in order, the EncryptionConfiguration every replica follows); reads every region's
etcd; rewrites values only in the active region's etcd, guarded by its fence key (replication
carries the new ciphertext to the standbys).

- `rotate` makes a new local key-encryption key the writer: the configuration lists it first
  and keeps the older ones after it (they still read). The replicas reload the file within a
  second (`haplane_encryption_config_info` says which one each uses).
- `rewrite` re-seals every stored value that is not under the writer, one compare-and-swap per
  key (`mod_revision` unchanged, the region's fence key still active): a concurrent write wins
  and is left as written (it was sealed by the writer already, or is retried). It resumes after
  the last key done (`STATE/encryption/rewrite.json`).
- `status` counts, per region, what each key still protects, and what is stored plain.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from haplane.auth.encryption import (
    KMS_V2_PREFIX,
    EncryptedObject,
    EncryptionError,
    Transformers,
    create_local_key,
    local_config,
)
from haplane.store import FENCE_KEY, Compare, EtcdClient, EtcdError, GlobalState, Op, prefix_end

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
    keys = local_keys(state)
    if promote:
        newest = max(keys, key=_number)
        order = [newest, *(k for k in keys if k != newest)]
    elif max(keys, key=_number) != keys[0]:
        # a rotation that stopped between its steps: its new key reads already
        newest, order = max(keys, key=_number), keys
    else:
        n = max(_number(k) for k in keys) + 1
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


async def scan(client: EtcdClient, transformers: Transformers, region: str) -> RegionStatus:
    out = RegionStatus(region)
    async for kv_key, value in _values(client):
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
        async for key, value in _values(client):
            if key <= after or not only(key):
                continue
            chain = transformers.chain_for(key)
            if not chain:
                continue
            if attempt == 1:
                out.examined += 1
            if not _under_writer(value, chain[0].prefix()) and key not in out.unreadable:
                stragglers += 1
                await _reseal(client, key, transformers, fence.value, out)
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


def _under_writer(value: bytes, writer: bytes) -> bool:
    """Stored as the writer would store it (its prefix; plain when the writer is identity)."""
    return value.startswith(writer) if writer else not value.startswith(b"k8s:enc:")


async def _reseal(
    client: EtcdClient, key: bytes, transformers: Transformers, fence: bytes, out: RewriteResult
) -> None:
    chain = transformers.chain_for(key)
    assert chain
    for _ in range(10):
        kv = await client.get(key)
        if kv is None or _under_writer(kv.value, chain[0].prefix()):
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
