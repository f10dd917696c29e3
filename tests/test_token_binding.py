"""Tokens bound to objects (haplane.api.service_accounts): what TokenRequest binds and refuses,
and which bound tokens stop authenticating, as decisions on data. The same paths on a real
replica: tests/test_api_access.py::test_tokens_bound_to_a_secret."""

from __future__ import annotations

import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from haplane.api import errors
from haplane.api.authenticators import InvalidToken
from haplane.api.errors import StatusError
from haplane.api.resources import Obj
from haplane.api.service_accounts import (
    INVALIDATED,
    RECENT_TOKEN_SECONDS,
    BoundObjectRef,
    ServiceAccountAuthenticator,
    bind,
    bindings_to_check,
    bound_object_ref,
    bound_object_refusal,
    deleted_before,
    service_account_refusal,
    token_request,
)
from haplane.auth.tokens import ServiceAccountClaims, ServiceAccountTokens

AUD = ["https://kubernetes.default.svc.cluster.local"]
SA = {"metadata": {"namespace": "ci", "name": "bot", "uid": "sa-uid"}}


def obj(uid: str, **meta: str) -> Obj:
    return {"metadata": {"uid": uid, **meta}}


def refused(call, code: int) -> StatusError:
    with pytest.raises(StatusError) as caught:
        call()
    assert caught.value.code == code, caught.value
    return caught.value


def test_bound_object_ref_takes_only_what_kubernetes_binds():
    assert bound_object_ref({}) is None
    assert bound_object_ref({"boundObjectRef": {"kind": "Secret", "name": "s"}}) == (
        BoundObjectRef("Secret", "s", "")
    )
    ref = bound_object_ref({"boundObjectRef": {"apiVersion": "v1", "kind": "Node", "name": "n"}})
    assert ref is not None and ref.resource == "nodes" and ref.namespace("ci") is None
    for bad, message in (
        (
            {"kind": "ConfigMap", "name": "c"},
            "cannot bind token to object of type /, Kind=ConfigMap",
        ),
        (
            {"apiVersion": "apps/v1", "kind": "Pod", "name": "p"},
            "cannot bind token to object of type apps/v1, Kind=Pod",
        ),
        ({"apiVersion": "v1", "kind": "Secret"}, "Name parameter required."),
        ({"kind": "Secret", "name": 3}, "spec.boundObjectRef.name must be a string"),
    ):
        error = refused(lambda bad=bad: bound_object_ref({"boundObjectRef": bad}), 400)
        assert error.message == message


def test_bind_fills_the_uid_and_refuses_a_missing_or_replaced_object():
    ref = BoundObjectRef("Secret", "s", "")
    assert bind("bot", ref, obj("u-1")) == {"kind": "Secret", "name": "s", "uid": "u-1"}
    assert bind("bot", BoundObjectRef("Secret", "s", "u-1"), obj("u-1"))["uid"] == "u-1"
    missing = refused(lambda: bind("bot", ref, None), 404)
    assert missing.message == 'secrets "s" not found'
    other = refused(lambda: bind("bot", BoundObjectRef("Secret", "s", "u-0"), obj("u-1")), 409)
    assert other.reason == "Conflict"
    assert other.message == (
        'Operation cannot be fulfilled on Secret "s": the UID in the bound object reference '
        "(u-0) does not match the UID in record. The object might have been deleted and then "
        "recreated"
    )
    # a Pod must run as the ServiceAccount whose token is asked for
    pod = {**obj("p-1"), "spec": {"serviceAccountName": "other"}}
    wrong = refused(lambda: bind("bot", BoundObjectRef("Pod", "p", ""), pod), 400)
    assert wrong.message == (
        'cannot bind token for serviceaccount "bot" to pod running with different '
        "serviceaccount name."
    )
    pod["spec"]["serviceAccountName"] = "bot"
    assert bind("bot", BoundObjectRef("Pod", "p", ""), pod)["uid"] == "p-1"


def test_bound_object_refusal():
    now = 1_700_000_000.0
    ref = {"name": "s", "uid": "u-1"}
    assert bound_object_refusal("Secret", ref, obj("u-1"), now) is None
    assert bound_object_refusal("Secret", ref, None, now) == INVALIDATED
    assert bound_object_refusal("Secret", ref, obj("u-2"), now) == (
        "secret UID (u-2) does not match service account secret ref claim (u-1)"
    )
    # held by a finalizer: still counts for the leeway after its deletion, as in Kubernetes
    just = obj("u-1", deletionTimestamp="2023-11-14T22:13:00Z")  # 20 s before now
    long_ago = obj("u-1", deletionTimestamp="2023-11-14T22:10:00Z")
    assert bound_object_refusal("Secret", ref, just, now) is None
    assert bound_object_refusal("Secret", ref, long_ago, now) == INVALIDATED
    assert deleted_before(obj("u", deletionTimestamp="garbage"), now)
    assert not deleted_before(None, now) and not deleted_before(obj("u"), now)


def test_a_pod_bound_tokens_node_is_not_a_binding():
    def claims(**bound: dict[str, str]) -> ServiceAccountClaims:
        return ServiceAccountClaims("ci", "bot", "sa-uid", tuple(AUD), 0.0, bound=bound)

    ref = {"name": "x", "uid": "u"}
    assert bindings_to_check(claims()) == []
    assert bindings_to_check(claims(pod=ref, node=ref)) == [("Pod", ref)]
    assert bindings_to_check(claims(node=ref)) == [("Node", ref)]
    assert bindings_to_check(claims(pod=ref, secret=ref)) == [("Secret", ref), ("Pod", ref)]


class Objects:
    """Objects by (resource, namespace, name), as a replica's watch cache or etcd would answer
    them; counts the reads, and fails them with `failing` when it is set."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], Obj] = {}
        self.asked: list[tuple[str, str | None, str]] = []
        self.failing: StatusError | None = None

    async def __call__(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        self.asked.append((resource, namespace, name))
        if self.failing is not None:
            raise self.failing
        return self.objects.get((resource, namespace, name))


def authenticator(tokens: ServiceAccountTokens) -> tuple[Objects, Objects, Any]:
    """A ServiceAccountAuthenticator on two stores: its watch cache and etcd, both holding
    the ServiceAccount ci/bot."""
    cache, etcd = Objects(), Objects()
    for store in (cache, etcd):
        store.objects[("serviceaccounts", "ci", "bot")] = SA
    return cache, etcd, ServiceAccountAuthenticator(tokens, AUD, cache, etcd)


def new_tokens() -> ServiceAccountTokens:
    return ServiceAccountTokens([ec.generate_private_key(ec.SECP256R1())])


async def test_issued_bound_then_refused_once_the_object_is_gone():
    tokens = new_tokens()
    cache, etcd, authenticate = authenticator(tokens)
    etcd.objects[("secrets", "ci", "s")] = cache.objects[("secrets", "ci", "s")] = obj("u-1")
    body = {"spec": {"boundObjectRef": {"kind": "Secret", "name": "s"}}}
    answer = await token_request(tokens, AUD, SA, body, etcd)
    assert answer["spec"]["boundObjectRef"] == {"kind": "Secret", "name": "s"}  # as asked
    token = answer["status"]["token"]
    assert tokens.verify(token, AUD).bound == {"secret": {"name": "s", "uid": "u-1"}}
    assert etcd.asked == [("secrets", "ci", "s")] and cache.asked == []
    etcd.asked.clear()

    user = await authenticate(token)
    assert user is not None and user.name == "system:serviceaccount:ci:bot"
    assert cache.asked == [("serviceaccounts", "ci", "bot"), ("secrets", "ci", "s")]
    assert etcd.asked == []  # the cache bears the token out: no etcd read
    # recreated (another uid), then deleted: in etcd and in the cache alike
    etcd.objects[("secrets", "ci", "s")] = cache.objects[("secrets", "ci", "s")] = obj("u-2")
    with pytest.raises(InvalidToken) as caught:
        await authenticate(token)
    assert str(caught.value) == (
        "secret UID (u-2) does not match service account secret ref claim (u-1)"
    )
    del etcd.objects[("secrets", "ci", "s")], cache.objects[("secrets", "ci", "s")]
    with pytest.raises(InvalidToken, match=INVALIDATED):
        await authenticate(token)

    # nothing to bind to: a missing Secret; a Pod or Node (not served, so never found)
    for kind, message in (
        ("Secret", 'secrets "s" not found'),
        ("Pod", 'pods "s" not found'),
        ("Node", 'nodes "s" not found'),
    ):
        body = {"spec": {"boundObjectRef": {"kind": kind, "name": "s"}}}
        error = await _refused(token_request(tokens, AUD, SA, body, etcd))
        assert (error.code, error.message) == (404, message)


async def test_a_recent_token_the_cache_has_not_caught_up_with_reads_etcd_once():
    """TokenRequest read the Secret from etcd; this replica's cache may not have it yet. A
    token issued less than RECENT_TOKEN_SECONDS ago gets one etcd read; an older one is
    judged by the cache alone (a revoked token costs no etcd read per use)."""
    tokens = new_tokens()
    cache, etcd, authenticate = authenticator(tokens)
    etcd.objects[("secrets", "ci", "s")] = obj("u-1")  # not in the cache yet
    bound = {"kind": "Secret", "name": "s", "uid": "u-1"}
    recent, _ = tokens.issue("ci", "bot", "sa-uid", AUD, bound=bound)
    assert await authenticate(recent) is not None
    assert etcd.asked == [("secrets", "ci", "s")]

    # the cache still holds the Secret this one replaced (another uid): etcd decides too
    cache.objects[("secrets", "ci", "s")] = obj("u-0")
    etcd.asked.clear()
    assert await authenticate(recent) is not None
    assert etcd.asked == [("secrets", "ci", "s")]

    issued = time.time() - RECENT_TOKEN_SECONDS - 5
    old, _ = tokens.issue("ci", "bot", "sa-uid", AUD, now=issued, bound=bound)
    etcd.asked.clear()
    with pytest.raises(InvalidToken, match="secret UID"):
        await authenticate(old)
    del cache.objects[("secrets", "ci", "s")]
    with pytest.raises(InvalidToken, match=INVALIDATED):
        await authenticate(old)
    assert etcd.asked == []

    # the ServiceAccount likewise: created a moment ago, not in this cache yet
    del cache.objects[("serviceaccounts", "ci", "bot")]
    etcd.asked.clear()
    plain, _ = tokens.issue("ci", "bot", "sa-uid", AUD)
    assert await authenticate(plain) is not None
    assert etcd.asked == [("serviceaccounts", "ci", "bot")]
    old_plain, _ = tokens.issue("ci", "bot", "sa-uid", AUD, now=issued)
    etcd.asked.clear()
    with pytest.raises(InvalidToken) as caught:
        await authenticate(old_plain)
    assert str(caught.value) == 'serviceaccounts "bot" not found'
    assert etcd.asked == []
    # gone from etcd too: a recent token is refused after its one read
    del etcd.objects[("serviceaccounts", "ci", "bot")]
    with pytest.raises(InvalidToken, match='serviceaccounts "bot" not found'):
        await authenticate(plain)
    assert etcd.asked == [("serviceaccounts", "ci", "bot")]


def test_service_account_refusal():
    now = 1_700_000_000.0
    claims = ServiceAccountClaims("ci", "bot", "sa-uid", tuple(AUD), now + 600)
    assert service_account_refusal(claims, SA, now) is None
    # kube-apiserver's messages (pkg/serviceaccount/claims.go), one case each
    assert service_account_refusal(claims, None, now) == 'serviceaccounts "bot" not found'
    assert service_account_refusal(claims, obj("other"), now) == (
        "service account UID (other) does not match claim (sa-uid)"
    )
    just = obj("sa-uid", deletionTimestamp="2023-11-14T22:13:00Z")  # 20 s before now
    long_ago = obj("sa-uid", deletionTimestamp="2023-11-14T22:10:00Z")
    assert service_account_refusal(claims, just, now) is None
    assert service_account_refusal(claims, long_ago, now) == (
        "service account ci/bot has been deleted"
    )


async def test_a_service_account_being_deleted_stops_its_tokens_after_the_leeway():
    tokens = new_tokens()
    cache, _, authenticate = authenticator(tokens)
    token, _ = tokens.issue("ci", "bot", "sa-uid", AUD)

    def deleted(seconds_ago: float) -> Obj:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))
        return obj("sa-uid", namespace="ci", name="bot", deletionTimestamp=stamp)

    cache.objects[("serviceaccounts", "ci", "bot")] = deleted(20)  # finalizers hold it
    assert await authenticate(token) is not None
    cache.objects[("serviceaccounts", "ci", "bot")] = deleted(120)
    with pytest.raises(InvalidToken, match="service account ci/bot has been deleted"):
        await authenticate(token)


async def test_a_failed_read_refuses_the_token_as_kubernetes_does():
    """Not a 5xx: an error reading the bound object is "invalidated"; one reading the
    ServiceAccount is the error (kube-apiserver returns it as it is)."""
    tokens = new_tokens()
    cache, etcd, authenticate = authenticator(tokens)
    etcd.objects[("secrets", "ci", "s")] = cache.objects[("secrets", "ci", "s")] = obj("u-1")
    token, _ = tokens.issue(
        "ci", "bot", "sa-uid", AUD, bound={"kind": "Secret", "name": "s", "uid": "u-1"}
    )
    assert await authenticate(token) is not None
    failure = errors.StatusError(500, "InternalError", "cannot decrypt the stored object")
    cache.failing = failure
    with pytest.raises(InvalidToken) as caught:
        await authenticate(token)
    assert str(caught.value) == "cannot decrypt the stored object"  # the ServiceAccount's read
    cache.failing = None

    class SecretsFail(Objects):
        async def __call__(self, resource: str, namespace: str | None, name: str) -> Obj | None:
            if resource == "secrets":
                raise errors.StatusError(503, "ServiceUnavailable", "etcd is unreachable")
            return await super().__call__(resource, namespace, name)

    failing = SecretsFail()
    failing.objects = cache.objects
    authenticate = ServiceAccountAuthenticator(tokens, AUD, failing, failing)
    with pytest.raises(InvalidToken) as caught:
        await authenticate(token)
    assert str(caught.value) == INVALIDATED


async def test_a_token_bound_to_a_pod_or_node_never_authenticates():
    """No Pod or Node is served, so none exists: tokens naming one (TokenRequest took the
    caller's word for them before bindings were checked) are refused, whatever extras their
    claims would give (pod-name, pod-uid, node-name)."""
    tokens = new_tokens()
    _, etcd, authenticate = authenticator(tokens)
    for kind in ("Pod", "Node"):
        token, _ = tokens.issue(
            "ci", "bot", "sa-uid", AUD, bound={"kind": kind, "name": "x", "uid": "u"}
        )
        with pytest.raises(InvalidToken, match=INVALIDATED):
            await authenticate(token)
    resources = {asked[0] for asked in etcd.asked}
    assert resources <= {"pods", "nodes"}  # each asked, found in neither


def test_a_bound_name_that_is_no_path_segment_is_refused():
    for name, why in (
        ("a/b", "may not contain '/'"),
        ("..", "may not be '..'"),
        (".", "may not be '.'"),
        ("50%", "may not contain '%'"),
        ("a/%", "may not contain '/';may not contain '%'"),
    ):
        spec = {"boundObjectRef": {"kind": "Secret", "name": name}}
        error = refused(lambda spec=spec: bound_object_ref(spec), 400)
        assert error.message == f'Name parameter invalid: "{name}": {why}'


async def _refused(call) -> StatusError:
    with pytest.raises(StatusError) as caught:
        await call
    return caught.value
