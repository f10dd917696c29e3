"""haplane.local.secrets_ops without a topology: the local key list, `rotate` (the new key
writes, the older ones read), `up`'s configuration keeping rotated keys, `rewrite` on a
real etcd of its own, skipping and reporting a value it cannot open, and `remove_key` on two
single-member etcds standing for an active region `a` and its standby `b` (the test plays the
replicator: it copies values and writes b's applied record), refusing while anything needs the
key (the writer, a value in either region, a standby behind, a retained file) and removing it,
file last, once nothing does."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import tarfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from haplane.auth.encryption import load_config
from haplane.local import secrets_ops
from haplane.local.etcd_cluster import EtcdCluster
from haplane.local.security import encryption_config
from haplane.local.state_dir import StateDir
from haplane.store import APPLIED_KEY, FENCE_KEY, AppliedRecord, EtcdClient, GlobalState, Op
from haplane.topology import load_text
from haplane.topology.loader import example_text


def topology(**encryption: object):  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(example_text("two-regions"))
    doc["spec"]["security"] = {"encryption": encryption} if encryption else {}
    return load_text(yaml.safe_dump(doc))


def providers(config: Path) -> list[str]:
    (rule,) = load_config(config)
    return [p.name for p in rule.providers]


def test_rotate_keeps_older_keys_for_reading(tmp_path: Path):
    state = StateDir(tmp_path / "state")
    state.ensure()
    config = encryption_config(state, topology())
    assert providers(config) == ["local", "identity"]
    # two steps: the new key reads first, then writes
    assert secrets_ops.rotate(state, None, True).name == "local-2"
    assert providers(config) == ["local", "local-2", "identity"]
    assert secrets_ops.rotate(state, None, True).name == "local-2"  # stopped between: no new key
    assert secrets_ops.rotate(state, None, True, promote=True).name == "local-2"
    assert providers(config) == ["local-2", "local", "identity"]
    assert secrets_ops.rotate(state, None, True).name == "local-3"
    assert secrets_ops.rotate(state, None, True, promote=True).name == "local-3"
    assert providers(config) == ["local-3", "local-2", "local", "identity"]
    for name in ("kek.key", "kek-2.key", "kek-3.key"):
        assert (state.root / "encryption" / name).stat().st_mode & 0o777 == 0o600
    # `up` again: the rotated keys stay, in order
    encryption_config(state, topology())
    assert providers(config) == ["local-3", "local-2", "local", "identity"]
    # encryption switched off: written plain, every key still reads
    encryption_config(state, topology(enabled=False))
    assert providers(config) == ["identity", "local-3", "local-2", "local"]
    # a key file lost: refused, never silently replaced
    (state.root / "encryption" / "kek-2.key").unlink()
    with pytest.raises(secrets_ops.SecretsError, match=r"kek-2\.key is missing"):
        encryption_config(state, topology())


def test_rotate_refusals(tmp_path: Path):
    state = StateDir(tmp_path / "state")
    state.ensure()
    with pytest.raises(secrets_ops.SecretsError, match="its own EncryptionConfiguration"):
        secrets_ops.rotate(state, "/etc/enc.yaml", True)
    with pytest.raises(secrets_ops.SecretsError, match="is off"):
        secrets_ops.rotate(state, None, False)
    secrets_ops.keys_file(state).parent.mkdir(parents=True)
    secrets_ops.keys_file(state).write_text("{not json")
    with pytest.raises(secrets_ops.SecretsError, match=r"keys\.json"):
        secrets_ops.local_keys(state)


async def test_rewrite_skips_and_reports_what_it_cannot_open(disposable_cluster, tmp_path: Path):
    """One altered value does not hold up the others: they are re-sealed under the new writer,
    it is left as it is and reported, and a later pass does not count it as a straggler."""
    from haplane.api.encryption import stored_types, transformers
    from haplane.auth.encryption import create_local_key, local_config
    from haplane.store import FENCE_KEY, GlobalState

    k1, k2 = tmp_path / "k1.key", tmp_path / "k2.key"
    create_local_key(k1)
    create_local_key(k2)
    old_cfg, new_cfg = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old_cfg.write_text(local_config([("local", k1)]))
    new_cfg.write_text(local_config([("local-2", k2), ("local", k1)]))
    old, new = transformers(old_cfg, stored_types()), transformers(new_cfg, stored_types())
    client = disposable_cluster.client(timeout=2.0)
    try:
        await GlobalState(client).initialize("r", by="t", reason="t", fresh=True)
        await client.put(FENCE_KEY, b"active:r@1")
        keys = [f"/registry/secrets/default/s{i}".encode() for i in range(3)]
        for key in keys:
            await client.put(key, old.to_storage(b'{"kind":"Secret"}', key))
        bad = b"/registry/secrets/default/altered"
        sealed = bytearray(old.to_storage(b'{"kind":"Secret"}', bad))
        sealed[-3] ^= 0xFF  # altered (here its wrapped seed): it no longer opens
        await client.put(bad, bytes(sealed))
        out = await secrets_ops.rewrite(
            StateDir(tmp_path / "state"), client, {"r": client}, new, settle=0.05
        )
        assert (out.examined, out.rewritten) == (4, 3)
        assert list(out.unreadable) == [bad] and "open" in out.unreadable[bad]
        for key in keys:
            kv = await client.get(key)
            assert kv is not None and kv.value.startswith(b"k8s:enc:kms:v2:local-2:")
        kv = await client.get(bad)
        assert kv is not None and kv.value == bytes(sealed)
    finally:
        await client.close()


# ---- remove-key ---------------------------------------------------------------------------

SECRET = b'{"kind":"Secret","data":{"k":"dg=="}}'


@pytest_asyncio.fixture(scope="module")
async def region_etcds(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[str]]:
    """Two single-member etcds, region `a` (active; it also holds the global record) and `b`;
    their client endpoints. Shared by the remove-key tests, each starting from an empty
    /registry/ (`regions`)."""
    clusters = [
        EtcdCluster(tmp_path_factory.mktemp(f"etcd-{r}"), size=1, scope=r) for r in ("a", "b")
    ]
    try:
        await asyncio.gather(*(c.start() for c in clusters))
        yield [c.endpoints[0] for c in clusters]
    finally:
        await asyncio.gather(*(c.stop() for c in clusters))


@pytest_asyncio.fixture
async def regions(region_etcds: list[str]) -> AsyncIterator[dict[str, EtcdClient]]:
    clients = {r: EtcdClient([e], timeout=2.0) for r, e in zip("ab", region_etcds, strict=True)}
    try:
        for c in clients.values():
            await c.txn([], [Op("delete", b"/registry/", range_end=b"/registry0")], [])
            await c.delete(APPLIED_KEY)
        await GlobalState(clients["a"]).initialize("a", by="t", reason="t", fresh=True)
        await clients["a"].put(FENCE_KEY, b"active:a@1")
        yield clients
    finally:
        for c in clients.values():
            await c.close()


def rotated_state(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A state dir whose Secrets were sealed under `local`, then `local-2` became the writer:
    (state, transformers of the first configuration, of the second)."""
    from haplane.api.encryption import stored_types, transformers

    state = StateDir(tmp_path / "state")
    state.ensure()
    config = encryption_config(state, topology())
    old = transformers(config, stored_types())
    secrets_ops.rotate(state, None, True)
    secrets_ops.rotate(state, None, True, promote=True)
    return state, old, transformers(config, stored_types())


async def seal(client, transformers, names):  # type: ignore[no-untyped-def]
    """Store a Secret per name, sealed by `transformers`' writer; {key: stored bytes}."""
    out = {}
    for n in names:
        key = f"/registry/secrets/default/{n}".encode()
        out[key] = transformers.to_storage(SECRET, key)
        await client.put(key, out[key])
    return out


async def replicated(active, standby, region: str = "a", behind: int = 0) -> int:  # type: ignore[no-untyped-def]
    """Play b's replicator: every /registry/ value of `active` copied to `standby`, and the
    applied record naming `active`'s revision (less `behind`)."""
    kvs, revision = await active.range(b"/registry/", prefix=True)
    for kv in kvs:
        await standby.put(kv.key, kv.value)
    record = AppliedRecord(region, 1, 1, revision - behind)
    await standby.put(APPLIED_KEY, record.to_json())
    return revision


async def no_replica_late(config: Path) -> list[str]:
    return []


async def remove(state: StateDir, regions, t, name: str, **kw):  # type: ignore[no-untyped-def]
    args = dict(
        user_config=None,
        enabled=True,
        control=regions["a"],
        regional=regions,
        transformers=t,
        reloaded=no_replica_late,
        catch_up=0.3,
    )
    return await secrets_ops.remove_key(state, name, **{**args, **kw})


def listed(state: StateDir) -> list[str]:
    return [k.name for k in secrets_ops.local_keys(state)]


async def test_remove_key_refuses_the_writer_unknown_names_and_own_configs(regions, tmp_path: Path):
    state, _, new = rotated_state(tmp_path)
    with pytest.raises(secrets_ops.KeyNeeded) as refused:
        await remove(state, regions, new, "local-2")
    (need,) = refused.value.needs
    assert "is the writer" in need.fix and "haplane secrets rotate" in need.fix
    with pytest.raises(secrets_ops.SecretsError, match=r"no local key named 'local-9'.*local-2"):
        await remove(state, regions, new, "local-9")
    with pytest.raises(secrets_ops.SecretsError, match="its own EncryptionConfiguration"):
        await remove(state, regions, new, "local", user_config="/etc/enc.yaml")
    assert listed(state) == ["local-2", "local"]
    assert (state.root / "encryption" / "kek-2.key").exists()
    assert (state.root / "encryption" / "kek.key").exists()
    # a rotation stopped between its steps: its new key only reads, nothing is sealed under it,
    # so it can go; the next rotation never takes its name again
    assert secrets_ops.rotate(state, None, True).name == "local-3"
    done = await remove(state, regions, new, "local-3")
    assert done.key.file == "kek-3.key" and not done.resumed
    assert not (state.root / "encryption" / "kek-3.key").exists()
    assert listed(state) == ["local-2", "local"]
    assert secrets_ops.rotate(state, None, True).name == "local-4"


async def test_remove_key_refused_while_a_standby_holds_or_may_receive_values_under_it(
    regions, tmp_path: Path
):
    """The active region is rewritten, the standby is not (yet): refused, naming b, with
    every value it holds under the key; then b holds none but has not applied a far enough."""
    state, old, new = rotated_state(tmp_path)
    a, b = regions["a"], regions["b"]
    sealed = await seal(a, old, ["s1", "s2", "s3"])
    await replicated(a, b)
    await seal(a, new, ["s1", "s2", "s3"])  # `rewrite` in a; replication has not carried it
    # an applied record saying b caught up: what b holds is what refuses
    await b.put(APPLIED_KEY, AppliedRecord("a", 1, 1, 10**6).to_json())
    with pytest.raises(secrets_ops.KeyNeeded) as refused:
        await remove(state, regions, new, "local")
    (need,) = refused.value.needs
    assert (need.where, need.count) == ("region b", 3)
    assert "wait for replication" in need.fix
    assert "nothing was changed" in str(refused.value)
    # b holds nothing under it now, but has applied a only up to before a was found free of it
    await replicated(a, b, behind=1)
    for key in sealed:
        kv = await b.get(key)
        assert kv is not None and kv.value.startswith(b"k8s:enc:kms:v2:local-2:")
    with pytest.raises(secrets_ops.KeyNeeded) as refused:
        await remove(state, regions, new, "local")
    (need,) = refused.value.needs
    assert need.where == "region b" and "has applied a up to revision" in need.fix
    assert listed(state) == ["local-2", "local"]
    assert (state.root / "encryption" / "kek.key").exists()


async def test_remove_key_refused_by_retained_copies(regions, tmp_path: Path):
    """etcd is free of the key everywhere, but a backup, a compressed snapshot and a saved
    divergence hold values sealed under it (and a file that cannot be looked into counts)."""
    state, old, new = rotated_state(tmp_path)
    a, b = regions["a"], regions["b"]
    sealed = await seal(a, new, ["s1"])
    await replicated(a, b)
    assert await secrets_ops.needs_of(state, "local", a, regions, new) == []
    value = old.to_storage(SECRET, next(iter(sealed)))  # as etcd stored it before `rewrite`
    backups = state.root / "backups"
    backups.mkdir()
    # a value across the 1 MiB chunk boundary of the search still counts
    edge = secrets_ops.CHUNK - 5
    (backups / "region-a.db").write_bytes(b"\0" * edge + value + b"\0" * 100 + value)
    snapshots = state.root / "snapshots" / "a"
    snapshots.mkdir(parents=True)
    page = b"bbolt page " * 1000 + value + b"\0" * 10000  # compressible: not stored verbatim
    for name, packed in (("2025.db.gz", gzip.compress(page)), ("2025.tar.bz2", bz2.compress(page))):
        assert secrets_ops.stored_prefix("local") not in packed
        (snapshots / name).write_bytes(packed)
    (snapshots / "2026.db.zst").write_bytes(b"(\xb5/\xfd" + b"\x01" * 64)
    # a tar.gz holding a gzipped snapshot: opened member by member, each decompressed
    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w:gz") as archive:
        data = gzip.compress(page)
        info = tarfile.TarInfo("etcd.db.gz")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    assert secrets_ops.stored_prefix("local") not in gzip.decompress(tarred.getvalue())
    (snapshots / "2027.tar.gz").write_bytes(tarred.getvalue())
    # a directory linked from elsewhere (an offsite mount, say) is followed
    offsite = tmp_path / "offsite"
    offsite.mkdir()
    (offsite / "copy.db").write_bytes(value)
    (backups / "offsite").symlink_to(offsite, target_is_directory=True)
    (snapshots / "clean.db").write_bytes(new.to_storage(SECRET, b"/registry/secrets/default/x"))
    diverged = state.root / "divergence" / "7" / "objects"
    diverged.mkdir(parents=True)
    (diverged / "000000.stored").write_bytes(value)
    with pytest.raises(secrets_ops.KeyNeeded) as refused:
        await remove(state, regions, new, "local")
    found = {Path(n.where).relative_to(state.root).as_posix(): n for n in refused.value.needs}
    assert sorted(found) == [
        "backups/offsite/copy.db",
        "backups/region-a.db",
        "divergence/7/objects/000000.stored",
        "snapshots/a/2025.db.gz",
        "snapshots/a/2025.tar.bz2",
        "snapshots/a/2026.db.zst",
        "snapshots/a/2027.tar.gz",
    ]
    assert found["snapshots/a/2027.tar.gz"].count == 1
    assert found["backups/region-a.db"].count == 2
    assert found["snapshots/a/2025.db.gz"].count == 1
    assert found["snapshots/a/2025.tar.bz2"].count == 1
    assert found["snapshots/a/2026.db.zst"].count is None
    assert "zstd" in found["snapshots/a/2026.db.zst"].fix
    assert "haplane divergence apply 7" in found["divergence/7/objects/000000.stored"].fix
    assert listed(state) == ["local-2", "local"]
    assert (state.root / "encryption" / "kek.key").exists()


async def test_remove_key_after_rewrite_removes_it_file_last_and_reads_still_work(
    regions, tmp_path: Path
):
    """After `rewrite` and replication nothing needs `local`: the configuration drops it, the
    replicas are waited for (a late one leaves the file, and the next run finishes), then the
    file goes; every value still reads, and one sealed under the removed key no longer does."""
    from haplane.api.encryption import stored_types, transformers
    from haplane.auth.encryption import EncryptionError

    state, old, new = rotated_state(tmp_path)
    a, b = regions["a"], regions["b"]
    sealed = await seal(a, old, [f"s{i}" for i in range(5)])
    await replicated(a, b)
    with pytest.raises(secrets_ops.KeyNeeded) as refused:
        await remove(state, regions, new, "local")
    assert [(n.where, n.count) for n in refused.value.needs] == [("region a", 5), ("region b", 5)]
    active, standby = (n.fix for n in refused.value.needs)
    assert active.endswith("run `haplane secrets rewrite`")
    assert "wait for replication" in standby
    out = await secrets_ops.rewrite(state, a, {"a": a}, new, settle=0.05)
    assert out.rewritten == 5
    await replicated(a, b)
    key_file = state.root / "encryption" / "kek.key"
    config = state.root / "encryption" / "config.yaml"

    seen: list[Path] = []

    async def late(path: Path) -> list[str]:
        seen.append(path)  # late only for the configuration without `local`
        return [] if "local" in providers(path) else ["https://a-1:6443"]

    async def behind(path: Path) -> list[str]:
        return ["https://a-1:6443"]

    # a replica not on the current configuration yet (it may still write under `local`)
    with pytest.raises(secrets_ops.SecretsError, match="nothing was changed"):
        await remove(state, regions, new, "local", reloaded=behind)
    assert listed(state) == ["local-2", "local"]
    with pytest.raises(secrets_ops.SecretsError, match=r"a-1:6443.*kek\.key stays"):
        await remove(state, regions, new, "local", reloaded=late)
    assert seen == [config, config]
    assert providers(config) == ["local-2", "identity"] and listed(state) == ["local-2"]
    assert key_file.exists()  # a replica may still hold the old configuration

    async def loaded(path: Path) -> list[str]:
        assert providers(path) == ["local-2", "identity"]
        assert key_file.exists()  # deleted only once every replica has loaded the new config
        seen.append(path)
        return []

    done = await remove(state, regions, new, "local", reloaded=loaded)
    assert done.resumed and not done.already and done.key.name == "local"
    assert len(seen) == 3 and not key_file.exists()
    assert providers(config) == ["local-2", "identity"] and listed(state) == ["local-2"]
    again = await remove(state, regions, new, "local")
    assert again.already
    now = transformers(config, stored_types())
    for client in (a, b):
        for key in sealed:
            kv = await client.get(key)
            assert kv is not None and now.from_storage(kv.value, key) == SECRET
    stale = old.to_storage(SECRET, b"/registry/secrets/default/stale")
    with pytest.raises(EncryptionError, match="does not have"):
        now.from_storage(stale, b"/registry/secrets/default/stale")


async def test_remove_key_puts_it_back_when_values_appear_meanwhile(regions, tmp_path: Path):
    """A value sealed under the key while the replicas reload (a writer that had not moved
    on): found by the look after the reload; the key is listed again as a reader, its file
    stays, and the value reads. And one key operation at a time."""
    from haplane.api.encryption import stored_types, transformers

    state, old, new = rotated_state(tmp_path)
    a, b = regions["a"], regions["b"]
    await replicated(a, b)

    async def sealing_meanwhile(path: Path) -> list[str]:
        if "local" not in providers(path):
            await seal(a, old, ["late"])
            await replicated(a, b)
        return []

    with pytest.raises(secrets_ops.KeyNeeded, match="listed again as a reader") as refused:
        await remove(state, regions, new, "local", reloaded=sealing_meanwhile)
    assert [n.where for n in refused.value.needs] == ["region a", "region b"]
    assert listed(state) == ["local-2", "local"]
    config = state.root / "encryption" / "config.yaml"
    assert providers(config) == ["local-2", "local", "identity"]
    assert (state.root / "encryption" / "kek.key").exists()
    kv = await a.get(b"/registry/secrets/default/late")
    assert kv is not None
    now = transformers(config, stored_types())
    assert now.from_storage(kv.value, b"/registry/secrets/default/late") == SECRET
    with secrets_ops.keys_lock(state):
        with pytest.raises(secrets_ops.SecretsError, match="another key operation"):
            await remove(state, regions, new, "local")
        with pytest.raises(secrets_ops.SecretsError, match="another key operation"):
            secrets_ops.rotate(state, None, True)


def test_status_marks_keys_nothing_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from haplane.cli.secrets import _local_keys

    state, old, _ = rotated_state(tmp_path)
    (state.root / "backups").mkdir()
    backup = state.root / "backups" / "b.db"
    # its prefix ends where the search's first chunk does (kept for the next): counted once
    prefix_end = secrets_ops.CHUNK - len(secrets_ops.stored_prefix("local"))
    value = old.to_storage(SECRET, b"/registry/secrets/default/s")
    backup.write_bytes(b"\0" * prefix_end + value)
    _local_keys(state, Counter({"local-2": 4}))
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["local-2", "4", "0", "the", "writer"]
    assert lines[2].split() == ["local", "0", "1"]
    assert lines[3] == f"retained: {backup}: local 1"
    backup.unlink()
    _local_keys(state, Counter({"local-2": 4}))
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith("nothing needs it: haplane secrets remove-key local")
