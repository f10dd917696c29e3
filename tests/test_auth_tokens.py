"""Static tokens (kube-apiserver's token file) and ServiceAccount tokens (haplane.auth.tokens):
each way a token must be refused is refused."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from haplane.auth.tokens import (
    ServiceAccountTokens,
    StaticTokens,
    TokenFileError,
    TokenInvalid,
    key_id,
    load_or_create_key,
)

AUD = ["https://kubernetes.default.svc.cluster.local"]


def test_token_file(tmp_path):
    f = tmp_path / "tokens.csv"
    f.write_text(
        'abc123,alice,u-1,"dev,ops"\n\n def456 , bob , u-2\nabc123,alice2,u-3\nxyz,carol,u-4,\n'
    )
    tokens = StaticTokens.load(f)
    alice = tokens.authenticate("abc123")
    assert alice is not None and (alice.name, alice.uid, alice.groups) == ("alice2", "u-3", ())
    bob = tokens.authenticate("def456")
    assert bob is not None and bob.name == "bob" and bob.groups == ()
    assert tokens.authenticate("abc12") is None and tokens.authenticate("") is None
    assert tokens.authenticate("xyz").groups == ()  # type: ignore[union-attr]
    f.write_text('t,dave,u,"a, b"\n')
    assert StaticTokens.load(f).authenticate("t").groups == ("a", "b")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("tok,alice\n", "line 1: must have at least 3 columns"),
        ("ok,a,1\n,bob,2\n", "line 2: empty token"),
    ],
)
def test_token_file_errors(tmp_path, text, words):
    f = tmp_path / "tokens.csv"
    f.write_text(text)
    with pytest.raises(TokenFileError, match=words):
        StaticTokens.load(f)
    with pytest.raises(TokenFileError, match="No such file"):
        StaticTokens.load(tmp_path / "missing.csv")


@pytest.fixture
def signer(tmp_path) -> ServiceAccountTokens:
    return ServiceAccountTokens([load_or_create_key(tmp_path / "sa.key")])


def test_key_file_is_private_and_reused(tmp_path):
    key = load_or_create_key(tmp_path / "k" / "sa.key")
    assert oct((tmp_path / "k" / "sa.key").stat().st_mode & 0o777) == "0o600"
    again = load_or_create_key(tmp_path / "k" / "sa.key")
    assert key_id(key.public_key()) == key_id(again.public_key())


def test_issue_and_verify(signer):
    token, expires = signer.issue("ci", "bot", "uid-1", AUD, 3600)
    claims = signer.verify(token, AUD)
    assert (claims.namespace, claims.name, claims.uid) == ("ci", "bot", "uid-1")
    assert abs(expires - time.time() - 3600) < 5
    user = claims.user()
    assert user.name == "system:serviceaccount:ci:bot" and user.uid == "uid-1"
    assert user.groups == (
        "system:serviceaccounts",
        "system:serviceaccounts:ci",
        "system:authenticated",
    )
    assert jwt.get_unverified_header(token)["kid"] == key_id(signer._signer.public_key())  # type: ignore[union-attr]


def test_refusals(signer, tmp_path):
    now = time.time()
    token, _ = signer.issue("ci", "bot", "u", AUD, 600, now=now)
    with pytest.raises(TokenInvalid, match="expired"):
        signer.verify(token, AUD, now=now + 700)
    with pytest.raises(TokenInvalid, match="not valid yet"):
        signer.verify(signer.issue("ci", "bot", "u", AUD, 600, now=now + 100)[0], AUD, now=now)
    with pytest.raises(TokenInvalid, match="audience"):
        signer.verify(token, ["vault"])
    other = ServiceAccountTokens([ec.generate_private_key(ec.SECP256R1())])
    with pytest.raises(TokenInvalid, match="signature"):
        signer.verify(other.issue("ci", "bot", "u", AUD)[0], AUD)
    stranger = ServiceAccountTokens([load_or_create_key(tmp_path / "x.key")], issuer="https://x")
    with pytest.raises(TokenInvalid):
        signer.verify(stranger.issue("ci", "bot", "u", AUD)[0], AUD)
    unsigned = jwt.encode(
        {"sub": "system:serviceaccount:ci:bot", "aud": AUD}, None, algorithm="none"
    )
    with pytest.raises(TokenInvalid, match="algorithm"):
        signer.verify(unsigned, AUD)
    hs = jwt.encode(
        {"sub": "x", "aud": AUD}, "secret-that-is-long-enough-for-hs256-ok", algorithm="HS256"
    )
    with pytest.raises(TokenInvalid, match="algorithm"):
        signer.verify(hs, AUD)
    with pytest.raises(TokenInvalid, match="malformed"):
        signer.verify("not.a.jwt", AUD)
    key = signer._signer
    plain = jwt.encode(
        {"iss": signer.issuer, "sub": "x", "aud": AUD, "exp": now + 600, "iat": now},
        key,
        algorithm="ES256",
    )
    with pytest.raises(TokenInvalid, match=r"kubernetes\.io"):
        signer.verify(plain, AUD)


def test_expiration_limits(signer):
    with pytest.raises(ValueError, match="less than 10 minutes"):
        signer.issue("ci", "bot", "u", AUD, 599)
    with pytest.raises(ValueError, match="2\\^32"):
        signer.issue("ci", "bot", "u", AUD, 2**32 + 1)


def test_rotated_keys_keep_verifying(tmp_path):
    old = load_or_create_key(tmp_path / "old.key")
    new = load_or_create_key(tmp_path / "new.key")
    token, _ = ServiceAccountTokens([old]).issue("ci", "bot", "u", AUD)
    rotated = ServiceAccountTokens([new, old.public_key()])
    assert rotated.verify(token, AUD).name == "bot"
    fresh, _ = rotated.issue("ci", "bot", "u", AUD)
    assert jwt.get_unverified_header(fresh)["kid"] == key_id(new.public_key())
    with pytest.raises(TokenInvalid):
        ServiceAccountTokens([old]).verify(fresh, AUD)
