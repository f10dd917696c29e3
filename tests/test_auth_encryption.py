"""haplane.auth.encryption: the KMS v2 envelope scheme with a local key-encryption key, and
the EncryptionConfiguration that says which resources it applies to."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from haplane.auth.encryption import (
    KMS_V2_PREFIX,
    EncryptedObject,
    EncryptionError,
    Identity,
    KmsV2,
    LocalKek,
    ResourceRule,
    Transformers,
    create_local_key,
    default_config,
    load_config,
)

KEY = b"/registry/secrets/default/db"
MARKER = b'{"data":{"password":"aHVudGVyMg=="}}'


def kek(tmp_path: Path, name: str = "kek.key") -> LocalKek:
    path = tmp_path / name
    create_local_key(path)
    return LocalKek(path)


def secrets_only(provider_chain: tuple) -> Transformers:
    def resource_of(key: bytes) -> tuple[str, str] | None:
        parts = key.split(b"/")
        return ("", parts[2].decode()) if key.startswith(b"/registry/") else None

    return Transformers([ResourceRule(("secrets",), provider_chain)], resource_of)


def test_round_trip_and_what_is_stored(tmp_path: Path):
    k = kek(tmp_path)
    p = KmsV2("local", k)
    stored = p.encrypt(MARKER, KEY)
    assert stored.startswith(KMS_V2_PREFIX + b"local:")
    assert b"aHVudGVy" not in stored and b"hunter2" not in stored
    obj = EncryptedObject.decode(stored[len(p.prefix()) :])
    assert obj.key_id == k.key_id() and obj.source_type == 1  # Kubernetes' seed type
    assert p.decrypt(stored, KEY) == MARKER
    # every write its own data key and nonce: the same plaintext never encrypts the same
    again = p.encrypt(MARKER, KEY)
    assert again != stored
    first, second = EncryptedObject.decode(stored[15 + 6 :]), EncryptedObject.decode(again[21:])
    assert first.encrypted_data[:44] != second.encrypted_data[:44]  # info and nonce
    assert first.encrypted_dek_source == second.encrypted_dek_source  # one seed per process
    # another process (replica) reads it: it unwraps the seed with the same KEK
    assert KmsV2("local", LocalKek(k.path)).decrypt(stored, KEY) == MARKER


def hkdf_expand_sha256(prk: bytes, info: bytes) -> bytes:
    """RFC 5869's expand step, 32 bytes (one block), written out: what Kubernetes' seed mode
    derives each value's key with (hkdf.Expand(sha256.New, seed, info))."""
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_the_format_is_kubernetes_own(tmp_path: Path):
    """kube-apiserver's seed mode, from its sources: DEK = HKDF-Expand(seed, info), data =
    info || nonce || AES-GCM(DEK, nonce, value, aad = etcd key), type 1. A value built that
    way by hand reads, and what haplane writes opens that way."""
    k = kek(tmp_path)
    p = KmsV2("local", k)
    ours = EncryptedObject.decode(p.encrypt(MARKER, KEY)[len(p.prefix()) :])
    seed = k.unwrap(ours.wrapped)
    body = ours.encrypted_data
    info, nonce, sealed = body[:32], body[32:44], body[44:]
    assert AESGCM(hkdf_expand_sha256(seed, info)).decrypt(nonce, sealed, KEY) == MARKER
    info, nonce = secrets.token_bytes(32), secrets.token_bytes(12)
    theirs = EncryptedObject(
        info + nonce + AESGCM(hkdf_expand_sha256(seed, info)).encrypt(nonce, MARKER, KEY),
        ours.key_id,
        ours.encrypted_dek_source,
        1,
    )
    assert theirs.encode()[-2:] == b"\x28\x01"  # field 5 (varint) = 1, last
    assert KmsV2("local", LocalKek(k.path)).decrypt(p.prefix() + theirs.encode(), KEY) == MARKER


def test_values_haplane_wrote_before_still_read(tmp_path: Path):
    """Type 2 (not a Kubernetes value): what haplane wrote before its format matched
    Kubernetes, the DEK from HKDF extract (no salt) and expand."""
    k = kek(tmp_path)
    p = KmsV2("local", k)
    ours = EncryptedObject.decode(p.encrypt(MARKER, KEY)[len(p.prefix()) :])
    seed = k.unwrap(ours.wrapped)
    info, nonce = secrets.token_bytes(32), secrets.token_bytes(12)
    dek = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(seed)
    old = EncryptedObject(
        info + nonce + AESGCM(dek).encrypt(nonce, MARKER, KEY), ours.key_id,
        ours.encrypted_dek_source, 2,
    )  # fmt: skip
    assert p.decrypt(p.prefix() + old.encode(), KEY) == MARKER
    # and the two derivations differ: a type confusion would not decrypt
    swapped = EncryptedObject(old.encrypted_data, old.key_id, old.encrypted_dek_source, 1)
    with pytest.raises(EncryptionError, match="does not decrypt"):
        p.decrypt(p.prefix() + swapped.encode(), KEY)


def test_the_etcd_key_is_bound_and_tampering_is_caught(tmp_path: Path):
    p = KmsV2("local", kek(tmp_path))
    stored = p.encrypt(MARKER, KEY)
    with pytest.raises(EncryptionError, match="does not decrypt"):
        p.decrypt(stored, b"/registry/secrets/default/other")
    obj = EncryptedObject.decode(stored[len(p.prefix()) :])
    data = bytearray(obj.encrypted_data)
    data[-1] ^= 1
    tampered = EncryptedObject(bytes(data), obj.key_id, obj.encrypted_dek_source)
    with pytest.raises(EncryptionError, match="does not decrypt"):
        p.decrypt(p.prefix() + tampered.encode(), KEY)
    with pytest.raises(EncryptionError, match="type 0"):  # AES_GCM_KEY: never written here
        p.decrypt(p.prefix() + EncryptedObject(bytes(data), obj.key_id, b"x", 0).encode(), KEY)
    with pytest.raises(EncryptionError, match="truncated"):
        p.decrypt(stored[:40], KEY)


def test_a_missing_or_wrong_kek_is_a_clear_error(tmp_path: Path):
    stored = KmsV2("local", kek(tmp_path, "a.key")).encrypt(MARKER, KEY)
    other = KmsV2("local", kek(tmp_path, "b.key"))
    with pytest.raises(EncryptionError, match="the key it needs is missing"):
        other.decrypt(stored, KEY)
    (tmp_path / "c.key").write_text(base64.b64encode(secrets.token_bytes(16)).decode())
    (tmp_path / "c.key").chmod(0o600)
    with pytest.raises(EncryptionError, match="32-byte"):
        LocalKek(tmp_path / "c.key")
    (tmp_path / "a.key").chmod(0o644)
    with pytest.raises(EncryptionError, match="readable by others"):
        LocalKek(tmp_path / "a.key")
    with pytest.raises(EncryptionError, match="No such file"):
        LocalKek(tmp_path / "absent.key")


def test_providers_in_order(tmp_path: Path):
    p = KmsV2("local", kek(tmp_path))
    encrypting = secrets_only((p, Identity()))
    plain_first = secrets_only((Identity(), p))
    only_kms = secrets_only((p,))
    # the first provider writes; every provider reads
    stored = encrypting.to_storage(MARKER, KEY)
    assert stored.startswith(p.prefix())
    assert plain_first.to_storage(MARKER, KEY) == MARKER
    assert plain_first.from_storage(stored, KEY) == MARKER
    # data from before encryption: readable only with identity among the providers
    assert encrypting.from_storage(MARKER, KEY) == MARKER
    with pytest.raises(EncryptionError, match="identity"):
        only_kms.from_storage(MARKER, KEY)
    # a provider the configuration lost
    renamed = secrets_only((KmsV2("other", p.kek), Identity()))
    with pytest.raises(EncryptionError, match="k8s:enc:kms:v2:local:"):
        renamed.from_storage(stored, KEY)
    # keys no rule names pass through
    cm = b"/registry/configmaps/default/x"
    assert encrypting.to_storage(MARKER, cm) == MARKER
    assert encrypting.to_storage(MARKER, b"/haplane/fence") == MARKER


@pytest.mark.parametrize(
    ("names", "group", "plural", "expected"),
    [
        (["secrets"], "", "secrets", True),
        (["secrets"], "", "configmaps", False),
        (["*."], "", "configmaps", True),
        (["*."], "apps", "deployments", False),
        (["*.apps"], "apps", "deployments", True),
        (["widgets.example.com"], "example.com", "widgets", True),
        (["*.*"], "example.com", "widgets", True),
    ],
)
def test_resource_names(names: list[str], group: str, plural: str, expected: bool):
    assert ResourceRule(tuple(names), (Identity(),)).matches(group, plural) is expected


def test_configuration_files(tmp_path: Path):
    key = tmp_path / "kek.key"
    assert create_local_key(key) and not create_local_key(key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    good = tmp_path / "enc.yaml"
    good.write_text(default_config(key))
    (rule,) = load_config(good)
    assert rule.resources == ("secrets",)
    assert [type(p).__name__ for p in rule.providers] == ["KmsV2", "Identity"]
    for body, message in (
        ("kind: Nope\n", "kind must be EncryptionConfiguration"),
        (default_config(key).replace("v2\n", "v1\n"), "apiVersion: v2"),
        (default_config(key).replace("kms:", "aescbc:"), "'aescbc' is not supported"),
        (default_config(key).replace("file://", "unix://x"), "absolute path after unix://"),
        (default_config(key).replace("file://", "http://"), "file:///path"),
        (default_config(key).replace("resources: [secrets]", "resources: []"), "resource names"),
        (default_config(key).replace(str(key), str(tmp_path / "none")), "No such file"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(body if body.startswith("apiVersion") else f"apiVersion: x\n{body}")
        with pytest.raises(EncryptionError, match=message):
            load_config(bad)


def plugin_config(tmp_path: Path, lines: str) -> Path:
    config = tmp_path / "plugin.yaml"
    config.write_text(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
        "  - resources: [secrets]\n    providers:\n      - kms:\n          apiVersion: v2\n"
        "          name: vault\n" + "".join(f"          {line}\n" for line in lines.splitlines())
    )
    return config


def test_kms_plugin_configuration(tmp_path: Path):
    """`unix:///socket` endpoints and Kubernetes' `timeout` (a duration, 3s by default);
    loading the configuration does not connect (the socket need not exist yet)."""
    from haplane.auth.kms_client import KmsV2Plugin

    (rule,) = load_config(plugin_config(tmp_path, "endpoint: unix:///run/kms/vault.sock"))
    (p,) = rule.providers
    assert isinstance(p, KmsV2Plugin) and p._thread is None
    assert (p.kek.endpoint, p.kek.timeout) == ("unix:///run/kms/vault.sock", 3.0)
    sock = "endpoint: unix:///run/kms/vault.sock\n"
    for timeout, seconds in (("500ms", 0.5), ("1m30s", 90.0), ("1.5s", 1.5)):
        (rule,) = load_config(plugin_config(tmp_path, sock + f"timeout: {timeout}"))
        assert rule.providers[0].kek.timeout == seconds  # type: ignore[attr-defined]
    long = "/tmp/" + "s" * 110
    for lines, message in (
        ("endpoint: unix://run/kms.sock", r"kms.endpoint: 'unix://run/kms.sock': .*absolute"),
        (f"endpoint: unix://{long}", "kms.endpoint: .* 115 bytes; unix sockets take at most 107"),
        (sock + "timeout: 3", r"kms.timeout: 3 is not a positive duration: .* 3s"),
        (sock + "timeout: 0s", "kms.timeout: '0s' is not a positive duration"),
        (sock + "timeout: 3 s", "kms.timeout: .3 s. is not a positive duration"),
        (sock + "timout: 3s", "kms: unknown field 'timout'"),
        (sock + "cachesize: 100", "kms.cachesize: not used by KMS v2"),
    ):
        with pytest.raises(EncryptionError, match=rf"resources\[0\].providers\[0\].{message}"):
            load_config(plugin_config(tmp_path, lines))
