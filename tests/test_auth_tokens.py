"""Static tokens (kube-apiserver's token file) and ServiceAccount tokens (haplane.auth.tokens):
the file format as kube-apiserver reads it, the lookup, the signing key on disk, the claims
Kubernetes puts in a bound token, every way a token must be refused, key rotation and the
verified-token cache."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from haplane.auth import tokens as tokens_module
from haplane.auth.tokens import (
    CREDENTIAL_ID,
    LEEWAY,
    ServiceAccountTokens,
    StaticTokens,
    TokenFileError,
    TokenInvalid,
    UserInfo,
    VerifiedTokenCache,
    key_id,
    load_or_create_key,
)

AUD = ["https://kubernetes.default.svc.cluster.local"]
ISSUER = "https://kubernetes.default.svc.cluster.local"


# ---- the token file ----------------------------------------------------------------------


def load_text(tmp_path: Path, text: str | bytes) -> StaticTokens:
    f = tmp_path / "tokens.csv"
    f.write_bytes(text.encode() if isinstance(text, str) else text)
    return StaticTokens.load(f)


def test_token_file_format(tmp_path: Path):
    tokens = load_text(
        tmp_path,
        'abc123,alice,u-1,"dev,ops"\n'
        "\n"  # blank lines are skipped
        " def456 , bob , u-2\n"  # surrounding spaces are not part of any field
        "xyz,carol,u-4,\n"  # an empty groups column: no groups
        'multi,dave,u-5,"a, b,,c"\n'  # spaces and empty entries in the groups are dropped
        "noid,erin,\n",  # an empty uid is allowed, as there
    )
    assert len(tokens) == 5
    assert tokens.authenticate("abc123") == UserInfo("alice", "u-1", ("dev", "ops"))
    assert tokens.authenticate("def456") == UserInfo("bob", "u-2", ())
    assert tokens.authenticate("xyz") == UserInfo("carol", "u-4", ())
    assert tokens.authenticate("multi") == UserInfo("dave", "u-5", ("a", "b", "c"))
    assert tokens.authenticate("noid") == UserInfo("erin", "", ())
    for wrong in ("abc12", "abc1234", "ABC123", " abc123", "", "u-1", "alice"):
        assert tokens.authenticate(wrong) is None


def test_duplicates_and_empty_tokens_as_kube_apiserver(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.WARNING, logger="haplane.auth.tokens"):
        tokens = load_text(tmp_path, "t,first,1\n,nobody,2\nt,second,3\n")
    user = tokens.authenticate("t")
    assert user is not None and (user.name, user.uid) == ("second", "3")  # the last one wins
    assert len(tokens) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("line 2: empty token" in m for m in messages)
    assert any("line 3: duplicate token" in m for m in messages)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("tok,alice\n", "line 1: must have at least 3 columns .* found 2"),
        ("ok,a,1\n\n\nshort\n", "line 4: must have at least 3 columns .* found 1"),
        ('ok,a,1,"x\ny"\nshort,b\n', "line 3: must have at least 3 columns"),  # a 2-line record
        ("# a comment\n", "line 1: must have at least 3 columns"),  # no comment syntax, as there
        ("ok,a,1\ntok, ,2\n", "line 2: empty user name"),
        ('ok,a,1\nt,"un"closed,1\n', "line 2: .*"),  # strict quoting
        ('ok,a,1\nt,b,1,"never closed\n', "line 2: unexpected end of data"),
        (b"ok,\xff,1\n", "not UTF-8"),
    ],
)
def test_token_file_errors(tmp_path: Path, text: str | bytes, words: str):
    with pytest.raises(TokenFileError, match=f"token file {tmp_path / 'tokens.csv'}.*{words}"):
        load_text(tmp_path, text)


def test_missing_token_file(tmp_path: Path):
    with pytest.raises(TokenFileError, match=r"missing\.csv: No such file"):
        StaticTokens.load(tmp_path / "missing.csv")


def test_lookup_is_by_digest_then_constant_time(monkeypatch: pytest.MonkeyPatch):
    users = {f"token-{i:04d}-{uuid.uuid4()}": UserInfo(f"user-{i}") for i in range(200)}
    tokens = StaticTokens(users)
    compared: list[tuple[bytes, bytes]] = []
    real = tokens_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens_module.hmac, "compare_digest", spy)
    for token, user in users.items():
        assert tokens.authenticate(token) == user
        assert tokens.authenticate(token[:-1]) is None
    assert len(compared) == len(users)  # one constant-time comparison per hit, none per miss
    assert all(a == b for a, b in compared)


# ---- the signing key ---------------------------------------------------------------------


def test_key_file_is_private_and_reused(tmp_path: Path):
    old = os.umask(0)
    try:
        key = load_or_create_key(tmp_path / "k" / "sa.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k" / "sa.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    again = load_or_create_key(tmp_path / "k" / "sa.key")
    assert key_id(key.public_key()) == key_id(again.public_key())
    assert [p.name for p in (tmp_path / "k").iterdir()] == ["sa.key"]


def test_two_creators_end_with_one_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "sa.key"
    theirs = ec.generate_private_key(ec.SECP256R1())
    real = os.link

    def another_process_was_faster(src: Any, dst: Any) -> None:
        Path(dst).write_bytes(
            theirs.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        real(src, dst)

    monkeypatch.setattr(os, "link", another_process_was_faster)
    mine = load_or_create_key(path)
    assert key_id(mine.public_key()) == key_id(theirs.public_key())
    assert [p.name for p in tmp_path.iterdir()] == ["sa.key"]


def test_key_must_be_p256(tmp_path: Path):
    path = tmp_path / "p384.key"
    path.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="P-256"):
        load_or_create_key(path)
    with pytest.raises(ValueError, match="P-256"):
        ServiceAccountTokens([ec.generate_private_key(ec.SECP384R1())])
    path.write_text("not a key")
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        load_or_create_key(path)


def test_key_id_is_kubernetes(tmp_path: Path):
    key = load_or_create_key(tmp_path / "sa.key")
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    assert key_id(key.public_key()) == expected and len(expected) == 43


# ---- ServiceAccount tokens ---------------------------------------------------------------


@pytest.fixture
def key(tmp_path: Path) -> ec.EllipticCurvePrivateKey:
    return load_or_create_key(tmp_path / "sa.key")


@pytest.fixture
def signer(key: ec.EllipticCurvePrivateKey) -> ServiceAccountTokens:
    return ServiceAccountTokens([key])


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def test_issue_claims(signer: ServiceAccountTokens, key: ec.EllipticCurvePrivateKey):
    t = 1_700_000_000
    pod = {"kind": "Pod", "apiVersion": "v1", "name": "web-1", "uid": "pod-uid"}
    token, expires = signer.issue("ci", "bot", "sa-uid", AUD, 3600, now=t, bound=pod)
    assert expires == t + 3600
    claims = claims_of(token)
    assert {k: v for k, v in claims.items() if k != "jti"} == {
        "iss": ISSUER,
        "sub": "system:serviceaccount:ci:bot",
        "aud": AUD,
        "exp": t + 3600,
        "iat": t,
        "nbf": t,
        "kubernetes.io": {
            "namespace": "ci",
            "serviceaccount": {"name": "bot", "uid": "sa-uid"},
            "pod": {"name": "web-1", "uid": "pod-uid"},
        },
    }
    assert uuid.UUID(claims["jti"])
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == key_id(key.public_key())
    assert signer.signing_key_id == header["kid"]
    assert claims_of(signer.issue("ci", "bot", "sa-uid", AUD)[0])["jti"] != claims["jti"]


def test_verify_and_the_user(signer: ServiceAccountTokens):
    pod = {"kind": "Pod", "name": "web-1", "uid": "pod-uid"}
    token, expires = signer.issue("ci", "bot", "uid-1", [*AUD, "vault"], 3600, bound=pod)
    claims = signer.verify(token, ["vault"])
    assert (claims.namespace, claims.name, claims.uid) == ("ci", "bot", "uid-1")
    assert claims.audiences == (*AUD, "vault") and claims.expires == expires
    assert claims.bound == {"pod": {"name": "web-1", "uid": "pod-uid"}}
    assert abs(expires - time.time() - 3600) < 5
    user = claims.user()
    assert user.name == "system:serviceaccount:ci:bot" and user.uid == "uid-1"
    assert user.groups == ("system:serviceaccounts", "system:serviceaccounts:ci")
    assert user.extra == {
        CREDENTIAL_ID: (f"JTI={claims_of(token)['jti']}",),
        "authentication.kubernetes.io/pod-name": ("web-1",),
        "authentication.kubernetes.io/pod-uid": ("pod-uid",),
    }
    assert user.authenticated().groups[-1] == "system:authenticated"  # the caller's to add


def test_expiration_limits(signer: ServiceAccountTokens):
    with pytest.raises(ValueError, match="may not specify a duration less than 10 minutes"):
        signer.issue("ci", "bot", "u", AUD, 599)
    with pytest.raises(ValueError, match=r"may not specify a duration larger than 2\^32 seconds"):
        signer.issue("ci", "bot", "u", AUD, 2**32 + 1)
    signer.issue("ci", "bot", "u", AUD, 600)
    _, expires = signer.issue("ci", "bot", "u", AUD, 2**32, now=0)
    assert expires == 2**32


@pytest.mark.parametrize(
    ("args", "kwargs", "words"),
    [
        (("ci", "bot", "u", []), {}, "at least one audience"),
        (("ci", "bot", "u", "aud"), {}, "not a string"),
        (("ci", "bot", "u", [""]), {}, "non-empty"),
        (("", "bot", "u", AUD), {}, "namespace, a name and a uid"),
        (("ci", "bot", "", AUD), {}, "namespace, a name and a uid"),
        (("ci", "bot", "u", AUD), {"bound": {"kind": "ConfigMap", "name": "x"}}, "Pod, Secret"),
        (("ci", "bot", "u", AUD, 3600.5), {}, "integer"),
    ],
)
def test_issue_refusals(signer: ServiceAccountTokens, args: Any, kwargs: Any, words: str):
    with pytest.raises(ValueError, match=words):
        signer.issue(*args, **kwargs)


def test_a_verifier_cannot_issue(key: ec.EllipticCurvePrivateKey):
    verifier = ServiceAccountTokens([key.public_key()])
    with pytest.raises(ValueError, match="only verifies"):
        verifier.issue("ci", "bot", "u", AUD)
    token, _ = ServiceAccountTokens([key]).issue("ci", "bot", "u", AUD)
    assert verifier.verify(token, AUD).name == "bot"


# ---- refusals ----------------------------------------------------------------------------


def forge(key: Any, claims: dict[str, Any], alg: str = "ES256", **headers: Any) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers=headers or None)


def good_claims(t: float, **changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "system:serviceaccount:ci:bot",
        "aud": AUD,
        "exp": int(t) + 3600,
        "iat": int(t),
        "nbf": int(t),
        "jti": "j",
        "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "bot", "uid": "u"}},
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def test_forged_claims_with_our_key_are_accepted_as_a_baseline(
    signer: ServiceAccountTokens, key: ec.EllipticCurvePrivateKey
):
    assert signer.verify(forge(key, good_claims(time.time())), AUD).name == "bot"


def test_time_refusals_and_leeway(signer: ServiceAccountTokens, key: ec.EllipticCurvePrivateKey):
    now = time.time()
    token, expires = signer.issue("ci", "bot", "u", AUD, 600, now=now)
    # kube-apiserver's leeway (go-jose's default): a minute each way
    signer.verify(token, AUD, now=expires + 59)
    with pytest.raises(TokenInvalid, match=r"^service account token has expired$"):
        signer.verify(token, AUD, now=expires + 61)
    later, _ = signer.issue("ci", "bot", "u", AUD, 600, now=now + 300)
    signer.verify(later, AUD, now=now + 300 - 59)
    with pytest.raises(TokenInvalid, match=r"^service account token is not valid yet$"):
        signer.verify(later, AUD, now=now + 300 - 61)
    with pytest.raises(TokenInvalid, match=r"^service account token is not valid yet$"):
        signer.verify(later, AUD, now=now)
    future_iat = forge(key, good_claims(now, iat=int(now) + 600, nbf=None))
    with pytest.raises(TokenInvalid, match=r"^service account token is issued in the future$"):
        signer.verify(future_iat, AUD, now=now)
    with pytest.raises(TokenInvalid, match="has expired"):  # the clock, when no `now` is given
        signer.verify(signer.issue("ci", "bot", "u", AUD, 600, now=now - 700)[0], AUD)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"iss": "https://elsewhere"}, "token issuer 'https://elsewhere' is not"),
        ({"iss": None}, "token issuer None"),
        ({"aud": ["vault"]}, r'token audiences \["vault"\] is invalid for the target audiences'),
        ({"aud": []}, "'aud' claim"),
        ({"aud": None}, "'aud' claim"),
        ({"exp": None}, "'exp' claim is missing"),
        ({"exp": "soon"}, "'exp' claim is missing or not a number"),
        ({"exp": True}, "'exp' claim is missing or not a number"),
        ({"iat": None}, "'iat' claim is missing"),
        ({"kubernetes.io": None}, r"no kubernetes\.io claim"),
        ({"kubernetes.io": {"namespace": "ci"}}, r"no kubernetes\.io claim"),
        (
            {"kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "bot"}}},
            "lacks a namespace, name or uid",
        ),
        ({"sub": "system:serviceaccount:ci:admin"}, "subject does not match"),
    ],
)
def test_claim_refusals(
    signer: ServiceAccountTokens, key: ec.EllipticCurvePrivateKey, changes: Any, words: str
):
    with pytest.raises(TokenInvalid, match=words):
        signer.verify(forge(key, good_claims(time.time(), **changes)), AUD)


def test_a_single_string_audience_is_read_as_a_list(
    signer: ServiceAccountTokens, key: ec.EllipticCurvePrivateKey
):
    claims = signer.verify(forge(key, good_claims(time.time(), aud=AUD[0])), AUD)
    assert claims.audiences == tuple(AUD)


def test_signature_and_algorithm_refusals(
    signer: ServiceAccountTokens, key: ec.EllipticCurvePrivateKey
):
    now = time.time()
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(TokenInvalid, match="invalid signature"):
        signer.verify(ServiceAccountTokens([other]).issue("ci", "bot", "u", AUD)[0], AUD)
    # another key claiming to be ours by its kid
    with pytest.raises(TokenInvalid, match="invalid signature"):
        signer.verify(forge(other, good_claims(now), kid=key_id(key.public_key())), AUD)
    # a real token with its payload changed
    token, _ = signer.issue("ci", "bot", "u", AUD)
    head, _, sig = token.split(".")
    payload = claims_of(token)
    payload["kubernetes.io"]["serviceaccount"]["name"] = "admin"
    payload["sub"] = "system:serviceaccount:ci:admin"
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    with pytest.raises(TokenInvalid, match="invalid signature"):
        signer.verify(f"{head}.{body}.{sig}", AUD)

    unsigned = jwt.encode(good_claims(now), None, algorithm="none")
    with pytest.raises(TokenInvalid, match="unexpected signing algorithm 'none'"):
        signer.verify(unsigned, AUD)
    # key confusion: HMAC keyed with our public key, which anyone may have
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs = forge_hmac(good_claims(now), public_pem)
    with pytest.raises(TokenInvalid, match="unexpected signing algorithm 'HS256'"):
        signer.verify(hs, AUD)
    es384 = forge(ec.generate_private_key(ec.SECP384R1()), good_claims(now), alg="ES384")
    with pytest.raises(TokenInvalid, match="unexpected signing algorithm 'ES384'"):
        signer.verify(es384, AUD)
    # a header that lies about the algorithm of a real ES256 signature
    relabelled = header_segment({"alg": "ES384", "kid": signer.signing_key_id})
    with pytest.raises(TokenInvalid, match="algorithm"):
        signer.verify(f"{relabelled}.{token.split('.', 1)[1]}", AUD)


def header_segment(header: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(header).encode()).decode().rstrip("=")


def forge_hmac(claims: dict[str, Any], secret: bytes) -> str:
    import hmac as hmac_module

    head = header_segment({"alg": "HS256", "typ": "JWT"})
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    mac = hmac_module.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not.a.jwt",
        "a.b",
        "a.b.c.d",
        "eyJ.eyJ.x",
        header_segment({"alg": "ES256"}) + ".!!!.AAAA",
        header_segment(["alg", "ES256"]) + ".e30.AAAA",  # type: ignore[arg-type]
        "eyJhbGciOiJFUzI1NiJ9." + "A" * 20_000 + ".AAAA",
    ],
)
def test_malformed_tokens(signer: ServiceAccountTokens, token: str):
    with pytest.raises(TokenInvalid, match=r"malformed|invalid signature|algorithm"):
        signer.verify(token, AUD)


def test_verify_needs_an_audience(signer: ServiceAccountTokens):
    with pytest.raises(ValueError, match="audience"):
        signer.verify(signer.issue("ci", "bot", "u", AUD)[0], [])


# ---- rotation ----------------------------------------------------------------------------


def test_rotated_keys_keep_verifying(tmp_path: Path):
    old = load_or_create_key(tmp_path / "old.key")
    token, _ = ServiceAccountTokens([old]).issue("ci", "bot", "u", AUD)
    rotated = ServiceAccountTokens.load_or_create(
        tmp_path / "new.key", also_verify=[old.public_key()]
    )
    new = load_or_create_key(tmp_path / "new.key")
    assert rotated.key_ids == (key_id(new.public_key()), key_id(old.public_key()))
    assert rotated.verify(token, AUD).name == "bot"  # signed by the old key
    fresh, _ = rotated.issue("ci", "bot", "u", AUD)
    assert jwt.get_unverified_header(fresh)["kid"] == key_id(new.public_key())
    assert rotated.verify(fresh, AUD).name == "bot"
    with pytest.raises(TokenInvalid, match="invalid signature"):
        ServiceAccountTokens([old]).verify(fresh, AUD)  # the old set knows no new key
    # a token without a kid (or naming a key we lack) is tried against every key
    bare = forge(old, good_claims(time.time()))
    assert "kid" not in jwt.get_unverified_header(bare)
    assert rotated.verify(bare, AUD).name == "bot"
    assert rotated.verify(forge(old, good_claims(time.time()), kid="unknown"), AUD).name == "bot"


# ---- the verified-token cache ------------------------------------------------------------


class Counting(ServiceAccountTokens):
    calls = 0

    def verify(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().verify(*args, **kwargs)


def test_cache_hits_expire_and_never_outlive_the_token(key: ec.EllipticCurvePrivateKey):
    tokens = Counting([key])
    cache = VerifiedTokenCache(tokens, AUD, ttl=10.0)
    t = float(int(time.time()))  # tokens carry whole seconds
    token, _ = tokens.issue("ci", "bot", "u", AUD, 3600, now=t)
    first = cache.verify(token, now=t)
    assert cache.verify(token, now=t + 9.9) is first and tokens.calls == 1
    assert cache.verify(token, now=t + 10.1).name == "bot" and tokens.calls == 2  # ttl over
    # a token 5 s from expiry is remembered 5 s, not 10
    short, short_exp = tokens.issue("ci", "bot", "u", AUD, 600, now=t - 595)
    cache.verify(short, now=t)
    cache.verify(short, now=t + 4.9)
    assert tokens.calls == 3
    cache.verify(short, now=t + 5.1)  # verified again (and still inside the leeway)
    assert tokens.calls == 4
    with pytest.raises(TokenInvalid, match="expired"):
        cache.verify(short, now=short_exp + LEEWAY + 1)


def test_cache_never_remembers_a_failure_and_stays_bounded(key: ec.EllipticCurvePrivateKey):
    tokens = Counting([key])
    cache = VerifiedTokenCache(tokens, ["vault"], max_entries=20)
    wrong_audience, _ = tokens.issue("ci", "bot", "u", AUD)
    for _ in range(2):
        with pytest.raises(TokenInvalid, match="audiences"):
            cache.verify(wrong_audience)
    assert tokens.calls == 2 and len(cache) == 0
    for i in range(50):
        cache.verify(tokens.issue("ci", f"bot-{i}", "u", ["vault"])[0])
        assert len(cache) <= 20
    assert len(cache) > 10
    cache.clear()
    assert len(cache) == 0
