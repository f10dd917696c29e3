"""The ops.haplane.dev API on real replica processes and real etcd: Switchovers and
ApprovalPolicies stored in the global control etcd and served by the replicas of every region
(a fenced standby region's too), RBAC on them, and four-eyes approval through the `approval`
subresource: the requester's own approval, an approver without the role, an expired, decided
or replaced request, two approvers at once, break-glass; every step in the audit log."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from haplane.local.api_replica import ApiReplica
from haplane.store import operations as store_ops
from tests.topology_helpers import fenced_replica_args, make_active

OPS = "/apis/ops.haplane.dev/v1"
RBAC = "rbac.authorization.k8s.io"


def U(who: str) -> str:
    """A test user's name: unique to this module (the shared etcd keeps RBAC objects)."""
    return f"ops-{who}"


TOKENS = {
    "admin": ("tok-admin-0001", "admin", "system:masters"),
    "alice": ("tok-alice-0001", "ops-alice", ""),
    "bob": ("tok-bob-00001", "ops-bob", ""),
    "carol": ("tok-carol-0001", "ops-carol", ""),  # bound to nothing
    "dave": ("tok-dave-00001", "ops-dave", ""),  # haplane:platform-admin
    "erin": ("tok-erin-00001", "ops-erin", ""),  # haplane:dr-operator
    "frank": ("tok-frank-0001", "ops-frank", ""),  # granted cluster-admin by a RoleGrant
}


class Ops:
    def __init__(self, active: ApiReplica, standby: ApiReplica, audit: list[Path]):
        self.active, self.standby, self.audit = active, standby, audit

    def as_(self, who: str, method: str, path: str, body: Any = None, *, via: str = "active"):
        replica = self.active if via == "active" else self.standby
        return replica.request(method, path, body, token=TOKENS[who][0])

    def create(self, who: str, to: str = "b", *, via: str = "active", **spec: Any):
        name = f"so-{uuid.uuid4().hex[:8]}"
        body = {
            "apiVersion": "ops.haplane.dev/v1",
            "kind": "Switchover",
            "metadata": {"name": name},
            "spec": {"targetRegion": to, "reason": "test", **spec},
        }
        return name, self.as_(who, "POST", f"{OPS}/switchovers", body, via=via)

    def get(self, name: str) -> dict[str, Any]:
        status, _, obj = self.as_("admin", "GET", f"{OPS}/switchovers/{name}")
        assert status == 200, obj
        return obj

    def decide(
        self, who: str, name: str, kind: str = "Approved", *, obj=None, rv: bool = True, **kw
    ):
        obj = json.loads(json.dumps(obj or self.get(name)))
        obj["status"].setdefault("conditions", []).append(
            {"type": kind, "status": "True", "reason": "Test", "message": f"{who} says {kind}"}
        )
        if not rv:
            obj["metadata"].pop("resourceVersion")
        return self.as_(who, "PUT", f"{OPS}/switchovers/{name}/approval", obj, **kw)

    def grant_settles(self, name: str, phase: str) -> dict[str, Any]:
        """The RoleGrant `name`'s status once the executor took it to `phase` (only through
        Approved and Running on the way)."""
        deadline = time.monotonic() + 10
        while (st := self.as_("admin", "GET", f"{OPS}/rolegrants/{name}")[2]["status"])[
            "phase"
        ] != phase:
            assert time.monotonic() < deadline and st["phase"] in ("Approved", "Running"), st
            time.sleep(0.1)
        return dict(st)

    def approve_at_once(self, name: str, obj: dict[str, Any]) -> list[int]:
        """bob and erin approve `obj` (as read, no resourceVersion) at the same moment."""
        results: list[int] = []
        barrier = threading.Barrier(2)

        def approve(who: str) -> None:
            barrier.wait()
            results.append(self.decide(who, name, obj=obj, rv=False)[0])

        threads = [threading.Thread(target=approve, args=(w,)) for w in ("bob", "erin")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def audit_events(self) -> list[dict[str, Any]]:
        out = []
        for path in self.audit:
            if path.exists():
                out += [json.loads(line) for line in path.read_text().splitlines() if line]
        return out


def dr_policy(name: str, **spec: Any) -> dict[str, Any]:
    """An ApprovalPolicy for Switchovers whose approvers are the dr-operators."""
    return {
        "apiVersion": "ops.haplane.dev/v1",
        "kind": "ApprovalPolicy",
        "metadata": {"name": name},
        "spec": {
            "operations": ["Switchover"],
            "approvals": 1,
            "approvers": {"clusterRoles": ["haplane:dr-operator"]},
            **spec,
        },
    }


def _break_glass_grant(ops: Ops, user: str, role: str) -> None:
    grant = {
        "apiVersion": "ops.haplane.dev/v1",
        "kind": "RoleGrant",
        "metadata": {"name": f"{user}-{role.replace(':', '-')}"},
        "spec": {
            "reason": "the first platform-admin",
            "breakGlass": True,
            "binding": {
                "kind": "ClusterRoleBinding",
                "metadata": {"name": f"{user}-{role.replace(':', '-')}"},
                "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": RBAC, "kind": "User", "name": U(user)}],
            },
        },
    }
    status, _, body = ops.as_("admin", "POST", f"{OPS}/rolegrants", grant)
    assert status == 201 and body["status"]["phase"] == "Approved", body
    ops.grant_settles(grant["metadata"]["name"], "Succeeded")


def _bind(replica: ApiReplica, user: str, role: str) -> None:
    status, _, body = replica.request(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{user}-{role.replace(':', '-')}"},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": RBAC, "kind": "User", "name": U(user)}],
        },
        token=TOKENS["admin"][0],
    )
    assert status in (201, 409), body


OLD_KEY_POLICY = {
    "apiVersion": "ops.haplane.dev/v1",
    "kind": "ApprovalPolicy",
    "metadata": {
        "name": "encryption-key-approval",
        "uid": str(uuid.uuid4()),
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "labels": {"ops.haplane.dev/default": "true"},
    },
    "spec": {
        "operations": ["MaintenanceAction/rotate-encryption-key"],
        "approvals": 1,
        "approvers": {"clusterRoles": ["haplane:platform-admin"]},
        "expireAfterSeconds": 3600,
    },
}


@pytest_asyncio.fixture(scope="module")
async def ops(etcd_cluster, tmp_path_factory) -> AsyncIterator[Ops]:
    """Region a (active) and region b (a standby: its fence key is not active) share one
    etcd here, each under its own paths; both serve the same ops objects."""
    root = tmp_path_factory.mktemp("ops")
    prefix = f"/test/{uuid.uuid4().hex}/".encode()
    client = etcd_cluster.client(timeout=2.0)
    await make_active(client, prefix, "a", prefix + b"fence-a")
    # stored by an older release: the key policy without the removal of keys (a replica
    # completes it: test_a_default_policy_stays_at_least_as_strict)
    await client.put(
        store_ops.ops_prefix(prefix, "approvalpolicies") + b"encryption-key-approval",
        store_ops.encode(OLD_KEY_POLICY),
    )
    tokens = root / "tokens.csv"
    tokens.write_text(
        "".join(f'{tok},{name},uid-{name},"{groups}"\n' for tok, name, groups in TOKENS.values())
    )
    replicas, audits = [], []
    for region in ("a", "b"):
        audit = root / f"audit-{region}.log"
        audits.append(audit)
        replicas.append(
            ApiReplica(
                root,
                f"api-{region}",
                etcd_cluster.endpoints,
                region=region,
                extra_args=[
                    *fenced_replica_args(
                        etcd_cluster.endpoints, prefix, prefix + f"fence-{region}".encode()
                    ),
                    "--regions",
                    "a,b",
                    "--authorization-mode",
                    "RBAC",
                    "--token-auth-file",
                    str(tokens),
                    "--audit-log-path",
                    str(audit),
                    "--service-account-key-file",
                    str(root / "sa.key"),
                ],
            )
        )
    try:
        for r in replicas:
            await r.start()
        for user in ("alice", "bob", "erin"):
            _bind(replicas[0], user, "haplane:dr-operator")
        setup = Ops(replicas[0], replicas[1], audits)
        # a platform-admin is made only by a RoleGrant: the admin breaks glass for the first
        await asyncio.to_thread(_break_glass_grant, setup, "dave", "haplane:platform-admin")
        # the default policy is there, and bindings reached the authorizer
        deadline = time.monotonic() + 10
        while setup.as_("alice", "GET", f"{OPS}/approvalpolicies/switchover-approval")[0] != 200:
            assert time.monotonic() < deadline, "no default policy, or alice has no role"
            await asyncio.sleep(0.1)
        yield setup
    finally:
        for r in replicas:
            await r.stop()
        await client.close()


def test_a_request_waits_for_someone_else(ops: Ops):
    name, (status, _, obj) = ops.create("alice")
    assert status == 201, obj
    st = obj["status"]
    assert st["phase"] == "Pending"
    assert st["requestedBy"]["username"] == U("alice")
    assert st["epochAtRequest"] == 1
    assert [r["policy"] for r in st["requirements"]] == ["switchover-approval"]

    status, _, body = ops.decide("alice", name)
    assert status == 403 and "own approval" in body["message"], body
    status, _, body = ops.decide("carol", name)  # RBAC: no update on switchovers/approval
    assert status == 403 and "switchovers/approval" in body["message"], body
    assert ops.get(name)["status"]["phase"] == "Pending"

    stale = ops.get(name)
    status, _, body = ops.decide("bob", name)
    assert status == 200, body
    assert body["status"]["phase"] == "Approved"
    assert [a["username"] for a in body["status"]["approvals"]] == [U("bob")]
    # a replay of an approval made on what the request was before: 409, nothing changes
    status, _, body = ops.decide("erin", name, obj=stale)
    assert status == 409, body
    status, _, body = ops.decide("erin", name)  # decided already
    assert status == 409 and "no longer Pending" in body["message"], body
    assert len(ops.get(name)["status"]["approvals"]) == 1

    reasons = {
        (e["user"]["username"], e["responseStatus"]["code"])
        for e in ops.audit_events()
        if e["stage"] == "ResponseComplete" and e["objectRef"].get("name") == name
    }
    assert {(U("alice"), 201), (U("alice"), 403), (U("carol"), 403), (U("bob"), 200)} <= reasons
    approved = [
        e
        for e in ops.audit_events()
        if e["stage"] == "ResponseComplete"
        and e["objectRef"].get("name") == name
        and e["responseStatus"]["code"] == 200
        and e["objectRef"].get("subresource") == "approval"
    ]
    assert (
        approved
        and approved[0]["annotations"]["ops.haplane.dev/approval"] == f"approved by {U('bob')}"
    )


def test_who_may_ask(ops: Ops):
    _, (status, _, body) = ops.create("carol")
    assert status == 403 and "switchovers" in body["message"], body
    _, (status, _, body) = ops.create("alice", to="mars")
    assert status == 422 and "spec.targetRegion" in body["message"], body
    _, (status, _, body) = ops.create("alice", to="")
    assert status == 422, body
    reserved = {
        "apiVersion": "ops.haplane.dev/v1",
        "kind": "Switchover",
        "metadata": {"name": "automatic-epoch-99"},
        "spec": {"targetRegion": "b", "reason": "impersonating the controller"},
    }
    status, _, body = ops.as_("alice", "POST", f"{OPS}/switchovers", reserved)
    assert status == 422 and "metadata.name" in body["message"], body
    _, (status, _, body) = ops.create("alice", to="a")
    assert status == 422 and "already the active region (epoch 1)" in body["message"], body
    name, (status, _, body) = ops.create("alice")
    assert status == 201
    # the spec is immutable and the status the platform's: no update or patch at all
    body["status"]["phase"] = "Approved"
    status, _, _ = ops.as_("admin", "PUT", f"{OPS}/switchovers/{name}", body)
    assert status == 405
    status, _, _ = ops.as_("dave", "DELETE", f"{OPS}/switchovers/{name}")
    assert status == 200
    status, _, body = ops.as_("dave", "DELETE", f"{OPS}/approvalpolicies/switchover-approval")
    assert status == 403 and "stricter, not removed" in body["message"], body


CONTROLLER_SA = "system:serviceaccount:kube-system:haplane-failover-controller"


def test_only_the_failover_controller_records_automatic_switches(ops: Ops):
    """The controller's ServiceAccount (bound to haplane:failover-controller by default)
    records an automatic switch through the API, checked against the global record; nobody
    else may, a platform-admin included; the record is audited under its name."""
    path = "/api/v1/namespaces/kube-system/serviceaccounts/haplane-failover-controller/token"
    ask = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    deadline = time.monotonic() + 10
    while (answer := ops.as_("admin", "POST", path, ask))[0] != 201:  # the replica made it
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)
    token = answer[2]["status"]["token"]

    def record(
        epoch: int,
        to: str = "a",
        *,
        token: str | None = token,
        who: str = "admin",
        came_from: str = "b",
    ):
        body = {
            "apiVersion": "ops.haplane.dev/v1",
            "kind": "Switchover",
            "metadata": {"name": f"automatic-epoch-{epoch}"},
            "spec": {
                "targetRegion": to,
                "reason": "b down",
                "automatic": True,
                "epoch": epoch,
                "fromRegion": came_from,
                "action": "failover",
            },
        }
        if token is None:
            return ops.as_(who, "POST", f"{OPS}/switchovers", body)
        return ops.active.request("POST", f"{OPS}/switchovers", body, token=token)

    status, _, body = record(1, token=None, who="dave")  # a platform-admin: not the controller
    assert status == 403 and "failover controller" in body["message"], body
    status, _, body = record(7)  # no such epoch yet
    assert status == 422 and "no epoch 7 yet" in body["message"], body
    status, _, body = record(1, to="b")  # epoch 1 made a active
    assert status == 422 and "made a active, not b" in body["message"], body
    status, _, body = record(1, came_from="mars")
    assert status == 422 and "spec.fromRegion" in body["message"], body
    status, _, body = record(1)
    assert status == 201, body
    st = body["status"]
    assert st["requestedBy"]["username"] == CONTROLLER_SA and st["recorded"] is True
    assert st["phase"] == "Succeeded" and st["result"]["epoch"] == 1, st  # writable: done
    assert st["requirements"] == [] and st["approvalCount"] == 0
    assert record(1)[0] == 409  # recorded once
    status, _, body = ops.decide("bob", "automatic-epoch-1")  # nothing to approve
    assert status == 409, body
    created = [
        e
        for e in ops.audit_events()
        if e["verb"] == "create"
        and e["objectRef"].get("name") == "automatic-epoch-1"
        and e["responseStatus"]["code"] == 201
    ]
    assert [e["user"]["username"] for e in created] == [CONTROLLER_SA], created
    # its ClusterRole allows exactly this: no other operation, nothing else to read
    body = {"apiVersion": "ops.haplane.dev/v1", "kind": "Drill", "metadata": {"name": "d"},
            "spec": {"scenario": "blip", "reason": "x"}}  # fmt: skip
    assert ops.active.request("POST", f"{OPS}/drills", body, token=token)[0] == 403
    assert ops.active.request("GET", "/api/v1/secrets", token=token)[0] == 403


def test_a_standby_region_serves_operations(ops: Ops):
    """Region b's regional writes are fenced; operations and approvals still go through it."""
    status, _, body = ops.as_(
        "admin", "POST", "/api/v1/namespaces", {"metadata": {"name": "x"}}, via="standby"
    )
    assert status == 503, body
    name, (status, _, body) = ops.create("alice", via="standby")
    assert status == 201, body
    status, _, body = ops.decide("bob", name, via="standby")
    assert status == 200 and body["status"]["phase"] == "Approved", body
    assert ops.get(name)["status"]["phase"] == "Approved"  # the same object in region a


def test_denied_and_expired_requests_stay_undone(ops: Ops):
    name, _ = ops.create("alice")
    status, _, body = ops.decide("carol", name, "Denied")
    assert status == 403
    status, _, body = ops.decide("bob", name, "Denied")
    assert status == 200 and body["status"]["phase"] == "Rejected", body
    status, _, body = ops.decide("erin", name)
    assert status == 409 and "Rejected" in body["message"], body

    short = dr_policy("short-expiry", expireAfterSeconds=1)
    status, _, body = ops.as_("alice", "POST", f"{OPS}/approvalpolicies", short)
    assert status == 403, body  # a dr-operator may not make policies
    status, _, body = ops.as_("dave", "POST", f"{OPS}/approvalpolicies", short)
    assert status == 201, body
    try:
        name, (_, _, obj) = ops.create("alice")
        assert len(obj["status"]["requirements"]) == 2  # both policies must be satisfied
        time.sleep(2.1)  # expiresAt is rounded up to the whole second
        status, _, body = ops.decide("bob", name)
        assert status == 409 and "expired" in body["message"], body
        assert ops.get(name)["status"]["phase"] == "Pending"
    finally:
        ops.as_("dave", "DELETE", f"{OPS}/approvalpolicies/short-expiry")


def test_two_approvers_at_once_count_once(ops: Ops):
    for _ in range(3):
        name, _ = ops.create("alice")
        obj = ops.get(name)
        results = ops.approve_at_once(name, obj)
        assert sorted(results) == [200, 409], results
        final = ops.get(name)["status"]
        assert final["phase"] == "Approved" and len(final["approvals"]) == 1


def test_break_glass(ops: Ops):
    _, (status, _, body) = ops.create("alice", breakGlass=True)
    assert status == 403 and "haplane:platform-admin" in body["message"], body
    name, (status, _, body) = ops.create("dave", breakGlass=True, reason="region on fire")
    assert status == 201, body
    assert body["status"]["phase"] == "Approved" and body["status"]["breakGlass"] is True
    events = [
        e
        for e in ops.audit_events()
        if e["objectRef"].get("name") == name and e["stage"] == "ResponseComplete"
    ]
    assert events[0]["annotations"]["ops.haplane.dev/break-glass"] == f"{U('dave')}: region on fire"


def test_kubectl_lists_switchovers(ops: Ops):
    status, _, table = ops.as_(
        "alice",
        "GET",
        f"{OPS}/switchovers",
    )
    assert status == 200 and table["kind"] == "SwitchoverList"
    assert all(item["status"]["phase"] for item in table["items"])


@pytest.mark.parametrize("bad", [{"force": "yes"}, {"catchUpTimeoutSeconds": 0}, {"typo": 1}])
def test_bad_specs_are_422(ops: Ops, bad: dict[str, Any]):
    _, (status, _, body) = ops.create("alice", **bad)
    assert status == 422 and body["details"]["causes"][0]["field"].startswith("spec."), body


def test_an_approval_names_its_request(ops: Ops):
    name, (_, _, first) = ops.create("alice")
    status, _, body = ops.decide("bob", name, obj={**first, "metadata": {"name": name}})
    assert status == 400 and "metadata.uid" in body["message"], body
    # the request is replaced under the same name: an approval of the old one is refused
    assert ops.as_("dave", "DELETE", f"{OPS}/switchovers/{name}")[0] == 200
    body = {
        "apiVersion": "ops.haplane.dev/v1",
        "kind": "Switchover",
        "metadata": {"name": name},
        "spec": {"targetRegion": "b", "reason": "same name, other request", "force": True},
    }
    assert ops.as_("alice", "POST", f"{OPS}/switchovers", body)[0] == 201
    stale = {**first, "metadata": {**first["metadata"], "resourceVersion": None}}
    stale["metadata"].pop("resourceVersion")
    status, _, body = ops.decide("bob", name, obj=stale)
    assert status == 409 and "replaced" in body["message"], body
    assert ops.get(name)["status"]["phase"] == "Pending"


def test_nobody_writes_a_status(ops: Ops):
    body = {
        "apiVersion": "ops.haplane.dev/v1",
        "kind": "Switchover",
        "metadata": {"name": f"forged-{uuid.uuid4().hex[:6]}"},
        "spec": {"targetRegion": "b", "reason": "forged"},
        "status": {"phase": "Approved", "requestedBy": {"username": "bob"}, "approvals": []},
    }
    status, _, obj = ops.as_("alice", "POST", f"{OPS}/switchovers", body)
    assert status == 201 and obj["status"]["phase"] == "Pending", obj
    assert obj["status"]["requestedBy"]["username"] == U("alice")
    name = obj["metadata"]["name"]
    patch = {"status": {"phase": "Approved"}}
    for method, path in (
        ("PATCH", f"{OPS}/switchovers/{name}"),
        ("PATCH", f"{OPS}/switchovers/{name}/status"),
        ("PUT", f"{OPS}/switchovers/{name}/status"),
    ):
        status = ops.as_("admin", method, path, patch)[0]
        assert status in (404, 405, 415), (method, path, status)
    assert ops.get(name)["status"]["phase"] == "Pending"


def test_the_default_policy_only_gets_stricter(ops: Ops):
    path = f"{OPS}/approvalpolicies/switchover-approval"
    current = ops.as_("dave", "GET", path)[2]
    for change, field in (
        ({"users": ["alice"]}, "spec.approvers.users"),
        ({"groups": ["system:authenticated"]}, "spec.approvers.groups"),
    ):
        weaker = json.loads(json.dumps(current))
        weaker["spec"]["approvers"].update(change)
        status, _, body = ops.as_("dave", "PUT", path, weaker)
        assert status == 422 and field in body["message"], body
    longer = json.loads(json.dumps(current))
    longer["spec"]["expireAfterSeconds"] = 7200
    assert ops.as_("dave", "PUT", path, longer)[0] == 422
    assert ops.as_("dave", "GET", path)[2]["spec"] == current["spec"]


def test_no_crd_claims_the_ops_group(ops: Ops):
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "drills.ops.haplane.dev"},
        "spec": {
            "group": "ops.haplane.dev",
            "scope": "Cluster",
            "names": {"plural": "drills", "singular": "drill", "kind": "Drill"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        },
    }
    status, _, body = ops.as_(
        "admin", "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd
    )
    assert status == 422 and "spec.group" in body["message"], body


def test_two_approvers_at_once_both_count_when_two_are_needed(ops: Ops):
    two = dr_policy("two-approvers", approvals=2)
    assert ops.as_("dave", "POST", f"{OPS}/approvalpolicies", two)[0] == 201
    try:
        name, _ = ops.create("alice")
        obj = ops.get(name)
        results = ops.approve_at_once(name, obj)
        assert results == [200, 200], results
        final = ops.get(name)["status"]
        assert final["phase"] == "Approved"
        assert sorted(a["username"] for a in final["approvals"]) == [U("bob"), U("erin")]
    finally:
        ops.as_("dave", "DELETE", f"{OPS}/approvalpolicies/two-approvers")


def test_cluster_admin_is_granted_only_with_approval(ops: Ops):
    crb = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "frank-root"},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": RBAC, "kind": "User", "name": U("frank")}],
    }
    path = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    for who in ("admin", "dave"):  # system:masters and platform-admin alike
        status, _, body = ops.as_(who, "POST", path, crb)
        assert status == 403 and "needs another person's approval" in body["message"], body
    # a RoleBinding to cluster-admin in one namespace is guarded too
    rb = {**crb, "kind": "RoleBinding", "metadata": {"name": "f", "namespace": "default"}}
    rbs = "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings"
    status, _, body = ops.as_("admin", "POST", rbs, rb)
    assert status == 403, body
    assert ops.as_("frank", "GET", "/api/v1/namespaces/default/secrets")[0] == 403

    grant = {
        "apiVersion": "ops.haplane.dev/v1",
        "kind": "RoleGrant",
        "metadata": {"name": "frank-root"},
        "spec": {"binding": crb, "reason": "on call this week"},
    }
    status, _, body = ops.as_("alice", "POST", f"{OPS}/rolegrants", grant)
    assert status == 403, body  # a dr-operator may not ask for grants
    status, _, body = ops.as_("dave", "POST", f"{OPS}/rolegrants", grant)
    assert status == 201 and body["status"]["phase"] == "Pending", body
    assert [r["policy"] for r in body["status"]["requirements"]] == ["rolegrant-approval"]

    def decide(who: str) -> tuple[int, Any]:
        obj = ops.as_("admin", "GET", f"{OPS}/rolegrants/frank-root")[2]
        obj["status"]["conditions"].append({"type": "Approved", "status": "True"})
        status, _, body = ops.as_(who, "PUT", f"{OPS}/rolegrants/frank-root/approval", obj)
        return status, body

    status, body = decide("dave")
    assert status == 403 and "own approval" in body["message"], body
    status, body = decide("bob")  # a dr-operator: no RBAC on rolegrants/approval
    assert status == 403, body
    status, body = decide("admin")
    assert status == 200 and body["status"]["phase"] == "Approved", body

    ops.grant_settles("frank-root", "Succeeded")
    deadline = time.monotonic() + 10
    made = ops.as_("admin", "GET", f"{path}/frank-root")[2]
    assert made["roleRef"]["name"] == "cluster-admin"
    assert made["metadata"]["annotations"]["ops.haplane.dev/rolegrant"].startswith("frank-root/")
    while ops.as_("frank", "GET", "/api/v1/namespaces/default/secrets")[0] != 200:
        assert time.monotonic() < deadline, "frank has no access after the grant"
        time.sleep(0.1)
    # the grant made it; changing it is guarded as creating one is
    made["subjects"].append({"apiGroup": RBAC, "kind": "User", "name": "mallory"})
    status, _, body = ops.as_("admin", "PUT", f"{path}/frank-root", made)
    assert status == 403, body


def test_a_default_policy_stays_at_least_as_strict(ops: Ops):
    """A default stored by an older release gets the operations it lacks; none of a
    default's operations may be dropped, a platform-admin's update included."""
    path = f"{OPS}/approvalpolicies/encryption-key-approval"
    deadline = time.monotonic() + 10
    while (
        "MaintenanceAction/remove-encryption-key"
        not in (policy := ops.as_("dave", "GET", path)[2])["spec"]["operations"]
    ):
        assert time.monotonic() < deadline, policy
        time.sleep(0.1)
    assert policy["metadata"]["uid"] == OLD_KEY_POLICY["metadata"]["uid"]  # completed, not new
    weaker = json.loads(json.dumps(policy))
    weaker["spec"]["operations"] = ["MaintenanceAction/rotate-encryption-key"]
    status, _, body = ops.as_("dave", "PUT", path, weaker)
    assert status == 422 and "remove-encryption-key" in body["message"], body
    drills = ops.as_("dave", "GET", f"{OPS}/approvalpolicies/disruptive-drill-approval")[2]
    drills["spec"]["operations"].remove("Drill/region-kill")
    status, _, body = ops.as_(
        "dave", "PUT", f"{OPS}/approvalpolicies/{drills['metadata']['name']}", drills
    )
    assert status == 422 and "Drill/region-kill" in body["message"], body


def test_a_copy_of_cluster_admin_is_guarded_as_it_is(ops: Ops):
    """Guarded by what a role grants, not only by its name: an admin may make a ClusterRole
    with cluster-admin's wildcard rule (they may escalate), but a binding to it needs a
    RoleGrant like one to cluster-admin; a role that grants less binds as before."""
    roles = "/apis/rbac.authorization.k8s.io/v1/clusterroles"
    copy = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "root-by-another-name"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
    }
    narrow = {**copy, "metadata": {"name": "reads-secrets"}}
    narrow["rules"] = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    for role in (copy, narrow):
        status, _, body = ops.as_("admin", "POST", roles, role)
        assert status in (201, 409), body

    def bind(role: str) -> tuple[int, Any]:
        crb = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"carol-{role}"},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": RBAC, "kind": "User", "name": U("carol")}],
        }
        status, _, body = ops.as_("admin", "POST", f"{roles[:-1]}bindings", crb)
        return status, body

    status, body = bind("root-by-another-name")
    assert status == 403 and "allows every verb on every resource" in body["message"], body
    assert "RoleGrant" in body["message"]
    status, body = bind("reads-secrets")
    assert status in (201, 409), body
    # acting as anyone is as much as cluster-admin: impersonating every user or group is
    # guarded the same way; impersonating named ones is not
    anyone = {**copy, "metadata": {"name": "acts-as-anyone"}}
    anyone["rules"] = [{"apiGroups": [""], "resources": ["groups"], "verbs": ["impersonate"]}]
    named = {**copy, "metadata": {"name": "acts-as-erin"}}
    named["rules"] = [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"],
                       "resourceNames": ["erin"]}]  # fmt: skip
    for role in (anyone, named):
        status, _, body = ops.as_("admin", "POST", roles, role)
        assert status in (201, 409), body
    status, body = bind("acts-as-anyone")
    assert status == 403 and "impersonating any user or group" in body["message"], body
    status, body = bind("acts-as-erin")
    assert status in (201, 409), body


def test_a_grant_never_overwrites_a_binding(ops: Ops):
    crb = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"taken-{uuid.uuid4().hex[:6]}"},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": RBAC, "kind": "User", "name": U("carol")}],
    }
    path = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    assert ops.as_("admin", "POST", path, crb)[0] == 201
    grant = {
        "apiVersion": "ops.haplane.dev/v1",
        "kind": "RoleGrant",
        "metadata": {"name": f"g-{uuid.uuid4().hex[:6]}"},
        "spec": {
            "reason": "same name as a binding that exists",
            "breakGlass": True,
            "binding": {**crb, "roleRef": {**crb["roleRef"], "name": "cluster-admin"}},
        },
    }
    # a platform-admin alone may not mint others: break-glass grants are the admin's only
    status, _, body = ops.as_("dave", "POST", f"{OPS}/rolegrants", grant)
    assert status == 403 and "only system:masters" in body["message"], body
    bad = json.loads(json.dumps(grant))
    bad["spec"]["binding"]["metadata"]["annotations"] = "x"
    status, _, body = ops.as_("admin", "POST", f"{OPS}/rolegrants", bad)
    assert status == 422 and "spec.binding.metadata.annotations" in body["message"], body
    status, _, body = ops.as_("admin", "POST", f"{OPS}/rolegrants", grant)
    assert status == 201 and body["status"]["phase"] == "Approved", body
    st = ops.grant_settles(grant["metadata"]["name"], "Failed")
    assert "exists already" in st["message"], st
    kept = ops.as_("admin", "GET", f"{path}/{crb['metadata']['name']}")[2]
    assert kept["roleRef"]["name"] == "view"


def test_drills_and_maintenance_actions(ops: Ops):
    def ask(who: str, kind: str, spec: dict[str, Any]) -> tuple[int, Any]:
        plural = {"Drill": "drills", "MaintenanceAction": "maintenanceactions"}[kind]
        body = {
            "apiVersion": "ops.haplane.dev/v1",
            "kind": kind,
            "metadata": {"name": f"op-{uuid.uuid4().hex[:6]}"},
            "spec": {"reason": "test", **spec},
        }
        status, _, out = ops.as_(who, "POST", f"{OPS}/{plural}", body)
        return status, out

    # a drill needs no approval by default: it is Approved at once, for the agent to run
    status, body = ask("alice", "Drill", {"scenario": "blip", "warmupSeconds": 1})
    assert status == 201 and body["status"]["phase"] == "Approved", body
    assert "haplane:dr-operator" in body["status"]["requesterRoles"]
    for spec, field in (
        ({"scenario": "meteor"}, "spec.scenario"),
        ({"scenario": "blip", "warmupSeconds": -1}, "spec.warmupSeconds"),
    ):
        status, body = ask("alice", "Drill", spec)
        assert status == 422 and field in body["message"], body
    status, body = ask("carol", "Drill", {"scenario": "blip"})
    assert status == 403, body
    # maintenance: the operator roles may ask (the agent checks the component's kind); a
    # dr-operator may not
    status, body = ask("alice", "MaintenanceAction", {"action": "restart", "component": "x"})
    assert status == 403 and "haplane:etcd-operator or" in body["message"], body
    status, body = ask("dave", "MaintenanceAction", {"action": "restart"})
    assert status == 422 and "spec.component" in body["message"], body
    status, body = ask("dave", "MaintenanceAction", {"action": "restart", "component": "a/etcd-1"})
    assert status == 201 and body["status"]["phase"] == "Approved", body
    for spec, field in (
        ({"action": "drain"}, "spec.component"),
        ({"action": "drain", "component": "a/lb-1", "timeoutSeconds": 0}, "spec.timeoutSeconds"),
        ({"action": "undrain", "component": "a/lb-1", "timeoutSeconds": 5}, "spec.timeoutSeconds"),
        ({"action": "rotate-certificates", "component": "a/lb-1"}, "spec.component"),
        ({"action": "reboot-the-world"}, "spec.action"),
        ({"action": "remove-encryption-key"}, "spec.key"),
        ({"action": "remove-encryption-key", "key": "../kek"}, "spec.key"),
        ({"action": "rotate-encryption-key", "key": "local"}, "spec.key"),
        ({"action": "run-runbook"}, "spec.runbook"),
        ({"action": "run-runbook", "runbook": "../etc"}, "spec.runbook"),
        ({"action": "run-runbook", "runbook": "a", "parameters": {"m": 1}}, "spec.parameters.m"),
        ({"action": "run-runbook", "runbook": "a", "parameters": []}, "spec.parameters"),
        ({"action": "run-runbook", "runbook": "a", "runbookSha256": "x"}, "spec.runbookSha256"),
        ({"action": "run-runbook", "runbook": "a"}, "spec.runbookSha256"),
        ({"action": "restart", "component": "a/etcd-1", "runbook": "a"}, "spec.runbook"),
    ):
        status, body = ask("dave", "MaintenanceAction", spec)
        assert status == 422 and field in body["message"], (spec, body)
    # a runbook run: a dr-operator asks; another approves (runbook-approval)
    run = {"action": "run-runbook", "runbook": "etcd-member-lost",
           "parameters": {"member": "a/etcd-1"}, "runbookSha256": "0" * 64}  # fmt: skip
    status, body = ask("alice", "MaintenanceAction", run)
    assert status == 201 and body["status"]["phase"] == "Pending", body
    assert [r["policy"] for r in body["status"]["requirements"]] == ["runbook-approval"]
    spec = {"action": "drain", "component": "a/lb-1", "timeoutSeconds": 5}
    status, body = ask("dave", "MaintenanceAction", spec)
    assert status == 201 and body["status"]["phase"] == "Approved", body
    # a drill that moves the active region is as much an operation as a switchover
    status, body = ask("alice", "Drill", {"scenario": "switchover"})
    assert status == 201 and body["status"]["phase"] == "Pending", body
    assert [r["policy"] for r in body["status"]["requirements"]] == ["disruptive-drill-approval"]
    # a new encryption key: platform-admins only, and another one's approval by default
    _bind(ops.active, "erin", "haplane:etcd-operator")
    deadline = time.monotonic() + 10
    while ops.as_("erin", "GET", f"{OPS}/maintenanceactions")[0] != 200:  # the binding is seen
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for spec in (
        {"action": "rotate-encryption-key"},
        {"action": "rotate-certificates"},
        {"action": "remove-encryption-key", "key": "local"},
    ):
        status, body = ask("erin", "MaintenanceAction", spec)
        assert status == 403 and "haplane:platform-admin" in body["message"], body
    status, body = ask("erin", "MaintenanceAction", {**run, "runbook": "a"})
    assert status == 201, body  # any operator asks: the agent checks the runbook's commands
    status, body = ask(
        "dave", "MaintenanceAction", {"action": "remove-encryption-key", "key": "local"}
    )
    assert status == 201 and body["status"]["phase"] == "Pending", body
    assert [r["policy"] for r in body["status"]["requirements"]] == ["encryption-key-approval"]
    status, body = ask("dave", "MaintenanceAction", {"action": "rotate-encryption-key"})
    assert status == 201 and body["status"]["phase"] == "Pending", body
    assert [r["policy"] for r in body["status"]["requirements"]] == ["encryption-key-approval"]


def test_four_eyes_are_two_people_never_one_impersonating(ops: Ops):
    """An administrator who may impersonate anyone still cannot be both who asks and who
    approves: neither the request nor the approval is taken through impersonation."""

    def as_alice(method: str, path: str, body: Any) -> tuple[int, Any]:
        status, _, out = ops.active.request(
            method, path, body, token=TOKENS["admin"][0],
            headers={"Impersonate-User": U("alice")},
        )  # fmt: skip
        return status, out

    body = {"apiVersion": "ops.haplane.dev/v1", "kind": "Switchover",
            "metadata": {"name": f"so-{uuid.uuid4().hex[:8]}"},
            "spec": {"targetRegion": "b", "reason": "test"}}  # fmt: skip
    status, out = as_alice("POST", f"{OPS}/switchovers", body)
    assert status == 403 and "asking for a Switchover is a person's own" in out["message"], out
    assert 'User "admin" may not make it as "ops-alice"' in out["message"]
    name, (status, _, obj) = ops.create("bob")
    assert status == 201, obj
    approval = json.loads(json.dumps(obj))
    approval["status"].setdefault("conditions", []).append(
        {"type": "Approved", "status": "True", "reason": "Test", "message": "as alice"}
    )
    status, out = as_alice("PUT", f"{OPS}/switchovers/{name}/approval", approval)
    assert status == 403 and "an approval is a person's own" in out["message"], out
    assert ops.get(name)["status"]["phase"] == "Pending"
    # reading through impersonation is fine: only decisions are a person's own
    status, out = as_alice("GET", f"{OPS}/switchovers/{name}", None)
    assert status == 200, out
