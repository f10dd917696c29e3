"""The replica's RBAC authorizer (haplane.api.authorizer): never a decision on a partial
view (a request waits for the caches, then 503), the index kept in step with a cache's
relists and events, system:masters and the public endpoints without the caches."""

from __future__ import annotations

import asyncio

import pytest

from haplane.api.authorizer import RBAC_PREFIXES, RbacAuthorizer
from haplane.api.errors import StatusError
from haplane.api.request import RequestInfo
from haplane.auth.user import UserInfo

ALICE = UserInfo("alice", groups=("system:authenticated",))
GET_CM = RequestInfo(
    path="/api/v1/namespaces/dev/configmaps/x",
    verb="get",
    resource_request=True,
    namespace="dev",
    resource="configmaps",
    name="x",
)


class FakeCache:
    def __init__(self) -> None:
        self.ready = False
        self.subscribers: list = []


def authorizer(wait: float = 0.2) -> tuple[RbacAuthorizer, dict[str, FakeCache]]:
    a = RbacAuthorizer(ready_wait=wait)
    caches = {p: FakeCache() for p in RBAC_PREFIXES}
    for prefix, cache in caches.items():
        a.attach(prefix, cache)
    return a, caches


ROLE = {
    "metadata": {"name": "r", "namespace": "dev"},
    "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
}
BINDING = {
    "metadata": {"name": "b", "namespace": "dev"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
    "subjects": [{"kind": "User", "name": "alice"}],
}


def feed(caches: dict[str, FakeCache], prefix: str):
    return caches[prefix].subscribers[0]


async def test_not_ready_waits_then_503():
    a, caches = authorizer(wait=0.2)
    with pytest.raises(StatusError) as err:
        await a.authorize(ALICE, GET_CM)
    assert err.value.code == 503
    # ready within the wait: decided, and on the full view
    feed(caches, "/registry/roles/").reset({"/registry/roles/dev/r": ROLE})
    feed(caches, "/registry/rolebindings/").reset({"/registry/rolebindings/dev/b": BINDING})

    async def become_ready() -> None:
        await asyncio.sleep(0.05)
        for c in caches.values():
            c.ready = True

    task = asyncio.create_task(become_ready())
    assert (await a.authorize(ALICE, GET_CM)).allowed
    await task
    # one cache relisting again: 503 again, never a denial
    caches["/registry/clusterroles/"].ready = False
    with pytest.raises(StatusError):
        await a.authorize(ALICE, GET_CM)


async def test_masters_and_public_paths_need_no_cache():
    a, _ = authorizer(wait=0.05)
    root = UserInfo("root", groups=("system:masters",))
    assert (await a.authorize(root, GET_CM)).allowed
    anon = UserInfo("system:anonymous", groups=("system:unauthenticated",))
    assert (await a.authorize(anon, RequestInfo(path="/readyz", verb="get"))).allowed
    with pytest.raises(StatusError):
        await a.authorize(anon, RequestInfo(path="/metrics", verb="get"))


def alice_may_get():  # type: ignore[no-untyped-def]
    """A ready authorizer whose caches hold ROLE and BINDING, and those two caches' feeds."""
    a, caches = authorizer()
    for c in caches.values():
        c.ready = True
    roles, bindings = feed(caches, "/registry/roles/"), feed(caches, "/registry/rolebindings/")
    roles.reset({"k": ROLE})
    bindings.reset({"k": BINDING})
    return a, roles, bindings


async def test_relist_drops_what_is_gone():
    a, _, bindings = alice_may_get()
    assert (await a.authorize(ALICE, GET_CM)).allowed
    bindings.reset({})  # the binding was deleted while the cache relisted
    assert not (await a.authorize(ALICE, GET_CM)).allowed
    bindings.put("k", BINDING)
    assert (await a.authorize(ALICE, GET_CM)).allowed
    bindings.delete("k", BINDING)
    assert not (await a.authorize(ALICE, GET_CM)).allowed


async def test_decisions_are_remembered_until_any_rbac_object_changes(
    monkeypatch: pytest.MonkeyPatch,
):
    a, roles, _ = alice_may_get()
    evaluated = []
    index_authorize = a.index.authorize
    monkeypatch.setattr(
        a.index, "authorize", lambda at: evaluated.append(at) or index_authorize(at)
    )
    for _ in range(3):
        assert (await a.authorize(ALICE, GET_CM)).allowed
    assert len(evaluated) == 1  # asked again: remembered
    other = RequestInfo(path=GET_CM.path, verb="delete", resource_request=True,
                        namespace="dev", resource="configmaps", name="x")  # fmt: skip
    assert not (await a.authorize(ALICE, other)).allowed
    assert len(evaluated) == 2
    # the role loses the verb: the next decision is made anew
    roles.put("k", {**ROLE, "rules": [{**ROLE["rules"][0], "verbs": ["list"]}]})
    assert not (await a.authorize(ALICE, GET_CM)).allowed
    # another user with the same name but other groups is another question
    assert len(evaluated) == 3
    bob_groups = UserInfo("alice", groups=("system:authenticated", "ops"))
    await a.authorize(bob_groups, GET_CM)
    assert len(evaluated) == 4


async def test_long_questions_are_not_remembered():
    """An access review's attributes come from its body: a megabyte path must not stay in
    the decision cache."""
    a, caches = authorizer()
    for c in caches.values():
        c.ready = True
    long_path = RequestInfo(path="/x" * 500_000, verb="get", resource_request=False)
    assert not (await a.authorize(ALICE, long_path)).allowed
    assert a._decisions == {}
    assert not (await a.authorize(ALICE, GET_CM)).allowed
    assert len(a._decisions) == 1
