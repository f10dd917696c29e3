"""Tokens bound to objects (haplane.api.service_accounts): what TokenRequest binds and refuses,
and which bound tokens stop authenticating, as decisions on data. The same paths on a real
replica: tests/test_api_access.py::test_tokens_bound_to_a_secret."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from haplane.api.authenticators import InvalidToken
from haplane.api.errors import StatusError
from haplane.api.resources import Obj
from haplane.api.service_accounts import (
    INVALIDATED,
    BoundObjectRef,
    ServiceAccountAuthenticator,
    bind,
    bindings_to_check,
    bound_object_ref,
    bound_object_refusal,
    deleted_before,
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
    """What a replica's watch cache would answer: (resource, namespace, name) -> object."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], Obj] = {}
        self.asked: list[tuple[str, str | None, str]] = []

    async def __call__(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        self.asked.append((resource, namespace, name))
        return self.objects.get((resource, namespace, name))


async def test_issued_bound_then_refused_once_the_object_is_gone():
    tokens = ServiceAccountTokens([ec.generate_private_key(ec.SECP256R1())])
    objects = Objects()
    objects.objects[("serviceaccounts", "ci", "bot")] = SA
    objects.objects[("secrets", "ci", "s")] = obj("u-1")
    body = {"spec": {"boundObjectRef": {"kind": "Secret", "name": "s"}}}
    answer = await token_request(tokens, AUD, SA, body, objects)
    assert answer["spec"]["boundObjectRef"] == {"kind": "Secret", "name": "s"}  # as asked
    token = answer["status"]["token"]
    assert tokens.verify(token, AUD).bound == {"secret": {"name": "s", "uid": "u-1"}}

    authenticate = ServiceAccountAuthenticator(tokens, AUD, objects)
    user = await authenticate(token)
    assert user is not None and user.name == "system:serviceaccount:ci:bot"
    assert ("secrets", "ci", "s") in objects.asked
    objects.objects[("secrets", "ci", "s")] = obj("u-2")  # recreated
    with pytest.raises(InvalidToken, match="secret UID"):
        await authenticate(token)
    del objects.objects[("secrets", "ci", "s")]
    with pytest.raises(InvalidToken, match=INVALIDATED):
        await authenticate(token)

    # nothing to bind to: a missing Secret; a Pod or Node (not served, so never found)
    for kind, message in (
        ("Secret", 'secrets "s" not found'),
        ("Pod", 'pods "s" not found'),
        ("Node", 'nodes "s" not found'),
    ):
        body = {"spec": {"boundObjectRef": {"kind": kind, "name": "s"}}}
        error = await _refused(token_request(tokens, AUD, SA, body, objects))
        assert (error.code, error.message) == (404, message)


async def test_a_service_account_being_deleted_stops_its_tokens_after_the_leeway():
    tokens = ServiceAccountTokens([ec.generate_private_key(ec.SECP256R1())])
    objects = Objects()
    token, _ = tokens.issue("ci", "bot", "sa-uid", AUD)
    authenticate = ServiceAccountAuthenticator(tokens, AUD, objects)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 120))
    objects.objects[("serviceaccounts", "ci", "bot")] = obj("sa-uid", deletionTimestamp=stamp)
    with pytest.raises(InvalidToken, match="service account ci/bot has been deleted"):
        await authenticate(token)


async def _refused(call) -> StatusError:
    with pytest.raises(StatusError) as caught:
        await call
    return caught.value
