"""Identity and access on a real replica process over TLS, on real etcd: anonymous requests,
client certificates (CN the user, O the groups), Kubernetes RBAC with the default roles,
access reviews as `kubectl auth` uses them, escalation prevention, protected namespaces, and
the audit log (no Secret value in it, raw or base64)."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import time
import urllib.error
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from haplane.local.api_replica import ApiReplica

from .pki_helpers import TestCA

MARKER = "hunter2-Zq8v"  # a Secret value that must never reach the audit log


class Setup:
    def __init__(self, root: Path, replica: ApiReplica, ca: TestCA, proxy_ca: TestCA, audit: Path):
        self.root, self.api, self.ca, self.audit = root, replica, ca, audit
        self.proxy_ca = proxy_ca
        self.admin = ca.issue("admin", "admin", ("system:masters",))
        self.alice = ca.issue("alice", "alice", ("dev",))
        self.bob = ca.issue("bob", "bob")
        self.dave = ca.issue("dave", "dave")  # never bound to anything
        self.scraper = ca.issue("scraper", "prometheus", ("system:monitoring",))

    def as_(self, who, method, path, body=None, **kw):
        certs = {"admin": self.admin, "alice": self.alice, "bob": self.bob, "dave": self.dave}
        cert = {**certs, "scraper": self.scraper}.get(who)
        return self.api.request(method, path, body, cert=cert, **kw)

    def wait_allowed(self, who, method, path, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            status = self.as_(who, method, path)[0]
            if status != 403 or time.monotonic() > deadline:
                return status
            time.sleep(0.05)


@pytest_asyncio.fixture(scope="module")
async def secure(etcd_cluster, tmp_path_factory) -> AsyncIterator[Setup]:
    root = tmp_path_factory.mktemp("secure")
    ca = TestCA(root / "pki")
    proxy_ca = TestCA(root / "front-proxy", "front-proxy-ca")
    server_cert, server_key = ca.issue("server", "api", server=True)
    audit = root / "audit" / "api.log"
    # the default policy with Secrets and tokens logged in full on top: the safety net that
    # redacts them must hold even so (the default keeps them at Metadata)
    from haplane.auth.audit import DEFAULT_POLICY

    policy = root / "policy.yaml"
    policy.write_text(
        DEFAULT_POLICY.replace(
            "rules:\n",
            'rules:\n  - level: RequestResponse\n    resources:\n      - group: ""\n'
            '        resources: ["secrets", "serviceaccounts/token"]\n',
            1,
        )
    )
    tokens = root / "tokens.csv"
    tokens.write_text('tok-carol-123,carol,u-9,"ops,dev"\n')
    replica = ApiReplica(
        root,
        "secure-1",
        etcd_cluster.endpoints,
        region="secure",
        ca=ca.path,
        extra_args=[
            "--tls-cert-file",
            str(server_cert),
            "--tls-private-key-file",
            str(server_key),
            "--client-ca-file",
            str(ca.path),
            "--authorization-mode",
            "RBAC",
            "--anonymous",
            "health",
            "--audit-log-path",
            str(audit),
            "--audit-policy-file",
            str(policy),
            "--token-auth-file",
            str(tokens),
            "--service-account-key-file",
            str(root / "pki" / "sa.key"),
            "--requestheader-client-ca-file",
            str(proxy_ca.path),
            "--requestheader-allowed-names",
            "front-proxy",
        ],
    )
    await replica.start()
    setup = Setup(root, replica, ca, proxy_ca, audit)
    for ns in ("team", "other"):
        setup.as_("admin", "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    try:
        yield setup
    finally:
        await replica.stop()


def test_plain_http_is_refused(secure: Setup):
    plain = ApiReplica.__new__(ApiReplica)
    plain.url, plain.ca = secure.api.url.replace("https", "http"), None
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        status, _, _ = plain.request("GET", "/readyz", timeout=2)
        assert status >= 400  # pragma: no cover - a TLS server never answers plain HTTP 200


def test_anonymous_gets_only_health_and_version(secure: Setup):
    for path in ("/readyz", "/livez", "/healthz", "/version"):
        assert secure.as_(None, "GET", path)[0] == 200, path
    for method, path in (
        ("GET", "/api/v1/namespaces"),
        ("GET", "/api"),
        ("GET", "/apis"),
        ("GET", "/metrics"),
        ("POST", "/api/v1/namespaces/team/configmaps"),
    ):
        status, _, body = secure.as_(None, method, path, {"metadata": {"name": "x"}})
        assert status == 401 and body["reason"] == "Unauthorized", (method, path)


def test_bad_credentials_are_401_even_on_health(secure: Setup):
    status, _, _ = secure.as_(None, "GET", "/readyz", token="not-a-token")
    assert status == 401
    status, _, _ = secure.as_(None, "GET", "/api/v1/namespaces", headers={"X-Remote-User": "admin"})
    assert status == 401  # an identity in headers from someone who is no verified front proxy


def test_front_proxies_are_believed_only_with_the_front_proxy_cas_certificate(secure: Setup):
    """kube-aggregator's requestheader scheme: X-Remote-* from a certificate the front-proxy CA
    issued to an allowed name; the same name from the client CA is a user who may not assert
    identities; the front-proxy CA's other names are refused; its certificate is no user."""
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    path = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    as_alice = {"X-Remote-User": "alice", "X-Remote-Group": "dev", "X-Remote-Extra-Scopes": "a"}
    proxy = secure.proxy_ca.issue("proxy", "front-proxy")
    status, _, body = secure.api.request("POST", path, review, cert=proxy, headers=as_alice)
    assert status == 201, body
    assert body["status"]["userInfo"] == {
        "username": "alice",
        "groups": ["dev", "system:authenticated"],
        "extra": {"scopes": ["a"]},
    }
    # the proxy's own certificate is nobody: without X-Remote-User it is anonymous (health
    # only) or whoever its bearer token names
    assert secure.api.request("GET", "/api/v1/namespaces", cert=proxy)[0] == 401
    assert secure.api.request("GET", "/readyz", cert=proxy)[0] == 200
    status, _, body = secure.api.request("POST", path, review, cert=proxy, token="tok-carol-123")
    assert status == 201 and body["status"]["userInfo"]["username"] == "carol", body
    # the allowed name from the client CA: a user, whose X-Remote-* headers count for nothing
    # (as in kube-apiserver, the certificate's identity is the request's)
    impostor = secure.ca.issue("impostor", "front-proxy")
    status, _, body = secure.api.request("POST", path, review, cert=impostor, headers=as_alice)
    assert status == 201 and body["status"]["userInfo"]["username"] == "front-proxy", body
    # another name from the front-proxy CA: neither proxy nor user
    other = secure.proxy_ca.issue("other", "someone-else", ("system:masters",))
    assert secure.api.request("GET", "/api/v1/namespaces", cert=other)[0] == 401
    assert secure.api.request("POST", path, review, cert=other, headers=as_alice)[0] == 401


def test_a_certificate_from_another_ca_is_refused(secure: Setup, tmp_path: Path):
    other = TestCA(tmp_path / "other", "other-ca")
    cert = other.issue("mallory", "admin", ("system:masters",))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        secure.api.request("GET", "/api/v1/namespaces", cert=cert)


def test_expired_certificate_is_refused(secure: Setup):
    cert = secure.ca.issue("old", "admin", ("system:masters",), days=-1)
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        secure.api.request("GET", "/api/v1/namespaces", cert=cert)


def test_system_masters_may_do_anything(secure: Setup):
    assert secure.as_("admin", "GET", "/api/v1/namespaces")[0] == 200
    assert secure.as_("admin", "GET", "/metrics")[0] == 200


def test_a_user_without_bindings_gets_403_but_discovery(secure: Setup):
    status, _, body = secure.as_("bob", "GET", "/api/v1/namespaces/team/configmaps")
    assert status == 403 and body["reason"] == "Forbidden"
    assert body["message"] == (
        'configmaps is forbidden: User "bob" cannot list resource "configmaps" in API group "" '
        'in the namespace "team"'
    )
    assert secure.as_("bob", "GET", "/api")[0] == 200
    assert secure.as_("bob", "GET", "/apis")[0] == 200
    assert secure.as_("bob", "GET", "/api/v1")[0] == 200
    assert secure.as_("bob", "GET", "/metrics")[0] == 403
    # Kubernetes' system:monitoring group reads metrics and health, nothing else
    assert secure.as_("scraper", "GET", "/metrics")[0] == 200
    assert secure.as_("scraper", "GET", "/api/v1/namespaces")[0] == 403


def test_whoami_and_can_i(secure: Setup):
    status, _, review = secure.as_(
        "alice",
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    assert status == 201
    assert review["status"]["userInfo"] == {
        "username": "alice",
        "groups": ["dev", "system:authenticated"],
    }
    ssar = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": "get", "resource": "secrets", "namespace": "team"}},
    }
    status, _, answer = secure.as_(
        "alice", "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", ssar
    )
    assert status == 201 and answer["status"]["allowed"] is False
    # a SubjectAccessReview about someone else needs its own permission
    sar = {**ssar, "kind": "SubjectAccessReview", "spec": {**ssar["spec"], "user": "x"}}
    path = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
    assert secure.as_("alice", "POST", path, sar)[0] == 403
    status, _, answer = secure.as_("admin", "POST", path, sar)
    assert status == 201 and answer["status"]["allowed"] is False


def test_access_reviews_with_selectors(secure: Setup):
    """Field and label selectors (Kubernetes 1.31+) on a real replica: validated as
    kube-apiserver does (422 with the field), decided by RBAC without them (the same answer
    as without), and one that does not parse named in evaluationError."""
    path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"

    def review(**selectors: object) -> tuple[int, dict]:
        attrs = {"verb": "list", "resource": "pods", "namespace": "team", **selectors}
        body = {"kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": attrs}}
        status, _, answer = secure.as_("admin", "POST", path, body)
        return status, answer

    status, plain = review()
    assert status == 201 and plain["status"]["allowed"] is True
    status, answer = review(
        fieldSelector={"rawSelector": "spec.nodeName=n1"},
        labelSelector={"requirements": [{"key": "app", "operator": "In", "values": ["web"]}]},
    )
    assert status == 201 and answer["status"] == plain["status"]
    assert answer["spec"]["resourceAttributes"]["fieldSelector"]["rawSelector"] == (
        "spec.nodeName=n1"
    )
    status, answer = review(
        fieldSelector={"rawSelector": "spec.nodeName"}, labelSelector={"rawSelector": "&"}
    )
    assert status == 201 and answer["status"]["allowed"] is True
    assert answer["status"]["evaluationError"] == (
        "spec.resourceAttributes.fieldSelector ignored due to parse error; "
        "spec.resourceAttributes.labelSelector ignored due to parse error"
    )
    status, answer = review(
        labelSelector={"rawSelector": "a=b", "requirements": [{"key": "a", "operator": "Exists"}]}
    )
    assert status == 422 and answer["reason"] == "Invalid"
    assert answer["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": 'Invalid value: "a=b": may not specified at the same time as requirements',
            "field": "spec.resourceAttributes.labelSelector.rawSelector",
        }
    ]


def test_a_view_binding_in_one_namespace_gives_exactly_that(secure: Setup):
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "alice-view", "namespace": "team"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "name": "alice"}],
    }
    path = "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings"
    assert secure.as_("admin", "POST", path, binding)[0] == 201
    assert secure.wait_allowed("alice", "GET", "/api/v1/namespaces/team/configmaps") == 200
    assert secure.as_("alice", "GET", "/api/v1/namespaces/other/configmaps")[0] == 403
    assert secure.as_("alice", "GET", "/api/v1/namespaces/team/secrets")[0] == 403
    cm = {"metadata": {"name": "x"}, "data": {"a": "b"}}
    assert secure.as_("alice", "POST", "/api/v1/namespaces/team/configmaps", cm)[0] == 403
    status, _, rules = secure.as_(
        "alice",
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        {"kind": "SelfSubjectRulesReview", "spec": {"namespace": "team"}},
    )
    assert status == 201
    granted = {
        (r, v)
        for rule in rules["status"]["resourceRules"]
        for r in rule.get("resources", [])
        for v in rule["verbs"]
    }
    assert ("configmaps", "list") in granted and ("secrets", "get") not in granted


def test_kubectl_auth_can_i_and_whoami(secure: Setup, tmp_path: Path):
    cert, key = secure.alice
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "h",
                "cluster": {"server": secure.api.url, "certificate-authority": str(secure.ca.path)},
            }
        ],
        "users": [
            {"name": "alice", "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [{"name": "h", "context": {"cluster": "h", "user": "alice"}}],
        "current-context": "h",
    }
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(config))

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
        return subprocess.run(
            ["kubectl", *args], capture_output=True, text=True, env=env, timeout=60
        )

    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "alice-view-2", "namespace": "team"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "name": "alice"}],
    }
    path = "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings"
    secure.as_("admin", "POST", path, binding)
    assert secure.wait_allowed("alice", "GET", "/api/v1/namespaces/team/configmaps") == 200
    out = kubectl("auth", "whoami", "-o", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"]["userInfo"]["username"] == "alice"
    assert kubectl("auth", "can-i", "list", "configmaps", "-n", "team").stdout.strip() == "yes"
    assert kubectl("auth", "can-i", "get", "secrets", "-n", "team").stdout.strip() == "no"
    assert kubectl("auth", "can-i", "list", "configmaps", "-n", "other").stdout.strip() == "no"
    listed = kubectl("auth", "can-i", "--list", "-n", "team")
    assert listed.returncode == 0, listed.stderr
    assert "configmaps" in listed.stdout and "secrets " not in listed.stdout
    got = kubectl("get", "configmaps", "-n", "team")
    assert got.returncode == 0, got.stderr
    denied = kubectl("get", "secrets", "-n", "team")
    assert denied.returncode != 0 and "forbidden" in denied.stderr


def test_escalation_is_refused_and_audited(secure: Setup):
    admin_binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "bob-admin", "namespace": "team"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "admin",
        },
        "subjects": [{"kind": "User", "name": "bob"}],
    }
    rb = "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings"
    assert secure.as_("admin", "POST", rb, admin_binding)[0] == 201
    assert secure.wait_allowed("bob", "GET", f"{rb}/bob-admin") == 200
    # bob administers team: he may bind roles he holds there...
    edit = {
        **admin_binding,
        "metadata": {"name": "carol-edit", "namespace": "team"},
        "roleRef": {**admin_binding["roleRef"], "name": "edit"},
        "subjects": [{"kind": "User", "name": "carol"}],
    }
    assert secure.as_("bob", "POST", rb, edit)[0] == 201
    # ...but not cluster-admin, not even in his namespace
    grab = {
        **edit,
        "metadata": {"name": "bob-root", "namespace": "team"},
        "roleRef": {**edit["roleRef"], "name": "cluster-admin"},
        "subjects": [{"kind": "User", "name": "bob"}],
    }
    status, _, body = secure.as_("bob", "POST", rb, grab)
    assert status == 403 and "not currently held" in body["message"], body
    crb = {**grab, "kind": "ClusterRoleBinding", "metadata": {"name": "bob-root"}}
    path = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    assert secure.as_("bob", "POST", path, crb)[0] == 403
    # nor edit his own permissions upward through a Role
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "mine", "namespace": "team"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    }
    roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles"
    assert secure.as_("bob", "POST", roles, role)[0] == 201
    role["rules"].append({"apiGroups": [""], "resources": ["nodes"], "verbs": ["*"]})
    status, _, body = secure.as_(
        "bob",
        "PATCH",
        f"{roles}/mine",
        {"rules": role["rules"]},
        content_type="application/merge-patch+json",
    )
    assert status == 403 and "not currently held" in body["message"], body
    events = [json.loads(x) for x in secure.audit.read_text().splitlines()]
    refused = [
        e
        for e in events
        if e["stage"] == "ResponseComplete"
        and e["user"]["username"] == "bob"
        and e.get("objectRef", {}).get("resource") in ("rolebindings", "clusterrolebindings")
        and e["responseStatus"]["code"] == 403
    ]
    assert len(refused) >= 2
    # RBAC objects are logged at RequestResponse: the refused binding is in the log
    assert any(
        e.get("requestObject", {}).get("metadata", {}).get("name") == "bob-root" for e in refused
    )


def test_protected_namespaces_even_for_the_administrator(secure: Setup):
    for ns in ("default", "kube-system", "kube-public"):
        status, _, body = secure.as_("admin", "DELETE", f"/api/v1/namespaces/{ns}")
        assert status == 403 and "may not be deleted" in body["message"]


def test_no_secret_value_in_the_audit_log(secure: Setup):
    secret = {"metadata": {"name": "db"}, "stringData": {"password": MARKER}}
    assert secure.as_("admin", "POST", "/api/v1/namespaces/team/secrets", secret)[0] == 201
    got = secure.as_("admin", "GET", "/api/v1/namespaces/team/secrets/db")[2]
    assert base64.b64decode(got["data"]["password"]).decode() == MARKER
    patch = {"stringData": {"password": MARKER + "x"}}
    secure.as_(
        "admin",
        "PATCH",
        "/api/v1/namespaces/team/secrets/db",
        patch,
        content_type="application/merge-patch+json",
    )
    text = secure.audit.read_text()
    encoded = base64.b64encode(MARKER.encode()).decode()
    assert MARKER not in text and encoded not in text and encoded[:-4] not in text
    events = [json.loads(x) for x in text.splitlines()]
    mine = [e for e in events if e.get("objectRef", {}).get("resource") == "secrets"]
    # logged in full by this replica's policy, and redacted all the same
    assert mine and all(e["level"] == "RequestResponse" for e in mine)
    bodies = [e["requestObject"] for e in mine if "requestObject" in e]
    assert {"password": "<redacted>"} in [b.get("stringData") for b in bodies]

    stages = {e["stage"] for e in mine}
    assert {"RequestReceived", "ResponseComplete"} <= stages
    # health endpoints are not logged; each event names its user and decision
    assert not any(e.get("requestURI", "").startswith("/readyz") for e in events)
    complete = [
        e for e in mine if e["stage"] == "ResponseComplete" and e["user"]["username"] == "admin"
    ]
    assert len(complete) >= 3
    assert all(e["annotations"]["authorization.k8s.io/decision"] == "allow" for e in complete)
    assert oct(secure.audit.stat().st_mode & 0o777) == "0o600"


def whoami(secure: Setup, token: str) -> tuple[int, dict]:
    status, _, body = secure.api.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        token=token,
    )
    return status, body


def test_static_tokens(secure: Setup):
    status, body = whoami(secure, "tok-carol-123")
    assert status == 201
    assert body["status"]["userInfo"] == {
        "username": "carol",
        "uid": "u-9",
        "groups": ["ops", "dev", "system:authenticated"],
    }
    assert whoami(secure, "tok-carol-12")[0] == 401


def test_service_account_tokens_are_bound_to_the_account(secure: Setup):
    sas = "/api/v1/namespaces/team/serviceaccounts"
    assert secure.as_("admin", "POST", sas, {"metadata": {"name": "bot"}})[0] == 201
    status, _, answer = secure.as_(
        "admin",
        "POST",
        f"{sas}/bot/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
        },
    )
    assert status == 201, answer
    token = answer["status"]["token"]
    status, body = whoami(secure, token)
    assert status == 201
    info = body["status"]["userInfo"]
    assert info["username"] == "system:serviceaccount:team:bot"
    assert info["groups"] == [
        "system:serviceaccounts",
        "system:serviceaccounts:team",
        "system:authenticated",
    ]
    # authenticated, but nothing bound yet
    cms = "/api/v1/namespaces/team/configmaps"
    assert secure.api.request("GET", cms, token=token)[0] == 403
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "bot-edit", "namespace": "team"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": "team"}],
    }
    rbs = "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings"
    assert secure.as_("admin", "POST", rbs, binding)[0] == 201
    deadline = time.monotonic() + 5
    while secure.api.request("GET", cms, token=token)[0] == 403 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert secure.api.request("GET", cms, token=token)[0] == 200
    # a token for another audience is not for this server
    status, _, other = secure.as_(
        "admin", "POST", f"{sas}/bot/token", {"spec": {"audiences": ["vault"]}}
    )
    assert status == 201 and whoami(secure, other["status"]["token"])[0] == 401
    # too short a lifetime is refused as Kubernetes refuses it
    status, _, body = secure.as_(
        "admin", "POST", f"{sas}/bot/token", {"spec": {"expirationSeconds": 60}}
    )
    assert status == 422 and "10 minutes" in body["message"]
    # deleting the ServiceAccount revokes its tokens; a new one of the same name does not
    # bring them back (another uid)
    assert secure.as_("admin", "DELETE", f"{sas}/bot")[0] == 200
    deadline = time.monotonic() + 5
    while whoami(secure, token)[0] != 401 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert whoami(secure, token)[0] == 401
    assert secure.as_("admin", "POST", sas, {"metadata": {"name": "bot"}})[0] == 201
    time.sleep(0.3)
    assert whoami(secure, token)[0] == 401


def test_expired_and_foreign_service_account_tokens(secure: Setup, tmp_path: Path):
    from cryptography.hazmat.primitives.asymmetric import ec

    from haplane.auth.tokens import ServiceAccountTokens, load_or_create_key

    sas = "/api/v1/namespaces/team/serviceaccounts"
    secure.as_("admin", "POST", sas, {"metadata": {"name": "old"}})
    sa = secure.as_("admin", "GET", f"{sas}/old")[2]
    uid = sa["metadata"]["uid"]
    aud = ["https://kubernetes.default.svc.cluster.local"]
    platform = ServiceAccountTokens([load_or_create_key(secure.root / "pki" / "sa.key")])
    expired, _ = platform.issue("team", "old", uid, aud, 600, now=time.time() - 700)
    assert whoami(secure, expired)[0] == 401
    fine, _ = platform.issue("team", "old", uid, aud, 600)
    assert whoami(secure, fine)[0] == 201
    foreign = ServiceAccountTokens([ec.generate_private_key(ec.SECP256R1())])
    assert whoami(secure, foreign.issue("team", "old", uid, aud)[0])[0] == 401


def test_tokens_bound_to_a_secret(secure: Setup):
    """A token bound to a Secret carries its uid and dies with it, as in Kubernetes; a
    TokenRequest for an object that is not there, or is there with another uid, is refused."""
    import jwt

    sas = "/api/v1/namespaces/team/serviceaccounts"
    secrets = "/api/v1/namespaces/team/secrets"
    assert secure.as_("admin", "POST", sas, {"metadata": {"name": "holder"}})[0] == 201
    status, _, secret = secure.as_("admin", "POST", secrets, {"metadata": {"name": "pass"}})
    assert status == 201, secret
    uid = secret["metadata"]["uid"]

    def request(ref: dict[str, str]) -> tuple[int, dict]:
        body = {"spec": {"boundObjectRef": {"apiVersion": "v1", **ref}}}
        status, _, answer = secure.as_("admin", "POST", f"{sas}/holder/token", body)
        return status, answer

    status, answer = request({"kind": "Secret", "name": "pass"})
    assert status == 201, answer
    token = answer["status"]["token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["kubernetes.io"]["secret"] == {"name": "pass", "uid": uid}
    assert whoami(secure, token)[0] == 201
    assert request({"kind": "Secret", "name": "pass", "uid": uid})[0] == 201

    # refused: another uid (409), a missing object (404), a Pod (none is served), a kind
    # no token binds to (400); Kubernetes' codes and messages
    status, answer = request({"kind": "Secret", "name": "pass", "uid": "not-" + uid})
    assert status == 409 and answer["reason"] == "Conflict"
    assert answer["message"] == (
        f'Operation cannot be fulfilled on Secret "pass": the UID in the bound object '
        f"reference (not-{uid}) does not match the UID in record. The object might have been "
        "deleted and then recreated"
    )
    status, answer = request({"kind": "Secret", "name": "nope"})
    assert (status, answer["message"]) == (404, 'secrets "nope" not found')
    status, answer = request({"kind": "Pod", "name": "web"})
    assert (status, answer["message"]) == (404, 'pods "web" not found')
    status, answer = request({"kind": "ConfigMap", "name": "pass"})
    assert status == 400
    assert answer["message"] == "cannot bind token to object of type /v1, Kind=ConfigMap"

    # deleting the Secret revokes the token; a new Secret of the same name (another uid) does
    # not bring it back, and cannot be bound to under the old uid
    assert secure.as_("admin", "DELETE", f"{secrets}/pass")[0] == 200
    deadline = time.monotonic() + 5
    while whoami(secure, token)[0] != 401 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert whoami(secure, token)[0] == 401
    assert refused_review(secure, token) == "service account token has been invalidated"
    status, _, again = secure.as_("admin", "POST", secrets, {"metadata": {"name": "pass"}})
    assert status == 201 and again["metadata"]["uid"] != uid
    wait_cached(secure, f"{secrets}/pass", again["metadata"]["uid"])
    assert whoami(secure, token)[0] == 401
    assert refused_review(secure, token) == (
        f"secret UID ({again['metadata']['uid']}) does not match service account secret ref "
        f"claim ({uid})"
    )
    assert request({"kind": "Secret", "name": "pass", "uid": uid})[0] == 409
    # a name Kubernetes cannot store is refused before anything is read
    status, answer = request({"kind": "Secret", "name": ".."})
    assert (status, answer["message"]) == (400, "Name parameter invalid: \"..\": may not be '..'")


def refused_review(secure: Setup, token: str) -> str:
    """The error of a TokenReview that does not authenticate `token`."""
    status, _, review = secure.as_(
        "admin",
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
    )
    assert status == 201 and review["status"]["authenticated"] is False, review
    return str(review["status"]["error"])


def wait_cached(secure: Setup, path: str, uid: str, timeout: float = 5.0) -> None:
    """Until the replica's watch cache (resourceVersion=0) holds the object at `path` with
    `uid`."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, found = secure.as_("admin", "GET", f"{path}?resourceVersion=0")
        if status == 200 and found["metadata"]["uid"] == uid:
            return
        assert time.monotonic() < deadline, (status, found)
        time.sleep(0.05)


def etcd_gets(secure: Setup) -> float:
    """How many single-key reads the replica has sent etcd (its etcd latency histogram; the
    watch caches' revision probes count too, about one a second: compare with margins)."""
    status, _, text = secure.as_("admin", "GET", "/metrics")
    assert status == 200
    prefix = 'etcd_request_duration_seconds_count{operation="get"} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def test_token_request_reads_etcd_and_each_use_the_watch_cache(secure: Setup):
    """TokenRequest reads the object it binds to from etcd: one read more per request than an
    unbound one. Using the token reads the watch cache once it holds the objects: far fewer
    etcd reads than uses (each use would read two if it went to etcd; the tokens here are
    recent, so the fallback would read etcd if the cache did not bear them out)."""
    sas = "/api/v1/namespaces/team/serviceaccounts"
    secrets = "/api/v1/namespaces/team/secrets"
    status, _, sa = secure.as_("admin", "POST", sas, {"metadata": {"name": "reader"}})
    assert status == 201, sa
    status, _, secret = secure.as_("admin", "POST", secrets, {"metadata": {"name": "ticket"}})
    assert status == 201, secret
    wait_cached(secure, f"{sas}/reader", sa["metadata"]["uid"])
    wait_cached(secure, f"{secrets}/ticket", secret["metadata"]["uid"])

    def issue(spec: dict) -> str:
        status, _, answer = secure.as_("admin", "POST", f"{sas}/reader/token", {"spec": spec})
        assert status == 201, answer
        return answer["status"]["token"]

    times = 20
    before = etcd_gets(secure)
    for _ in range(times):
        issue({})
    unbound = etcd_gets(secure) - before
    before = etcd_gets(secure)
    for _ in range(times):
        token = issue({"boundObjectRef": {"kind": "Secret", "name": "ticket"}})
    bound = etcd_gets(secure) - before
    assert bound - unbound > times // 2, (unbound, bound)

    before = etcd_gets(secure)
    for _ in range(times):
        assert whoami(secure, token)[0] == 201
    used = etcd_gets(secure) - before
    assert used < times // 2, used


def served_serial(secure: Setup) -> int:
    from cryptography import x509

    port = int(secure.api.url.rsplit(":", 1)[1])
    ctx = ssl.create_default_context(cafile=str(secure.ca.path))
    import socket

    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_certificate_rotation_under_load_fails_no_request(secure: Setup):
    import threading

    before = served_serial(secure)
    failures: list[str] = []
    done = threading.Event()
    count = 0

    def load() -> None:
        nonlocal count
        while not done.is_set():
            try:
                status = secure.as_("admin", "GET", "/api/v1/namespaces/team")[0]
                if status != 200:
                    failures.append(str(status))
            except Exception as exc:  # any failed request fails the test
                failures.append(repr(exc))
            count += 1

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        secure.ca.issue("server", "api", server=True)  # new key and serial, same names
        deadline = time.monotonic() + 10
        while served_serial(secure) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert served_serial(secure) != before
    assert count > 20 and failures == []
    status, _, metrics = secure.as_("admin", "GET", "/metrics")
    assert status == 200 and 'haplane_certificate_expiry_seconds{certificate="serving"}' in metrics


VERBS = {  # HTTP method -> (needs a name, body)
    "GET": (False, None),
    "POST": (False, {"metadata": {"name": "sweep"}}),
    "PUT": (True, {"metadata": {"name": "sweep"}}),
    "PATCH": (True, {"metadata": {"labels": {"a": "b"}}}),
    "DELETE": (True, None),
}


def discovered_paths(secure: Setup) -> list[str]:
    """Every resource path discovery lists, namespaced ones in `team`."""
    out = []
    groups = secure.as_("admin", "GET", "/apis")[2]["groups"]
    versions = ["/api/v1"] + [f"/apis/{v['groupVersion']}" for g in groups for v in g["versions"]]
    for base in versions:
        for r in secure.as_("admin", "GET", base)[2]["resources"]:
            name, _, sub = r["name"].partition("/")
            ns = "/namespaces/team" if r["namespaced"] else ""
            out.append(f"{base}{ns}/{name}" + (f"/x/{sub}" if sub else ""))
    return out


def test_sweep_every_discovered_path_and_verb(secure: Setup, tmp_path: Path):
    """Without credentials: 401. With a user who has no bindings (bob): 403, except the
    self-reviews every authenticated user may create. Expired, foreign-audience and
    foreign-CA credentials: refused. Never a 5xx."""
    from haplane.auth.tokens import ServiceAccountTokens, load_or_create_key

    platform = ServiceAccountTokens([load_or_create_key(secure.root / "pki" / "sa.key")])
    aud = ["https://kubernetes.default.svc.cluster.local"]
    expired, _ = platform.issue("team", "ghost", "u", aud, 600, now=time.time() - 700)
    foreign, _ = platform.issue("team", "ghost", "u", ["vault"], 600)
    self_reviews = {"selfsubjectaccessreviews", "selfsubjectrulesreviews", "selfsubjectreviews"}
    paths = discovered_paths(secure)
    assert len(paths) >= 15
    checked = 0
    for path in paths:
        resource = path.split("/")[-1] if "/x/" not in path else path.split("/")[-3]
        for method, (named, body) in VERBS.items():
            target = f"{path}/sweep" if named and "/x/" not in path else path
            anon = secure.as_(None, method, target, body)
            assert anon[0] == 401, (method, target, anon)
            for token in (expired, foreign):
                assert secure.as_(None, method, target, body, token=token)[0] == 401
            status, _, answer = secure.as_("dave", method, target, body)
            assert status < 500, (method, target, answer)
            if resource in self_reviews and method == "POST":
                assert status in (201, 400, 422), (method, target, answer)
            else:
                assert status in (403, 405), (method, target, answer)
                if status == 403:
                    assert answer["reason"] == "Forbidden"
            checked += 1
    assert checked == len(paths) * len(VERBS)
    # discovery itself is open to every authenticated user
    for path in ("/api", "/apis", "/api/v1", "/apis/rbac.authorization.k8s.io/v1", "/version"):
        assert secure.as_("dave", "GET", path)[0] == 200, path


def test_aggregated_roles_carry_the_rules_they_gather(secure: Setup):
    """As Kubernetes' aggregation controller: `admin` shows the rules of `edit`, `view` and
    their labelled helpers; a newly labelled role joins within a moment."""
    path = "/apis/rbac.authorization.k8s.io/v1/clusterroles"

    def resources(name: str) -> set[str]:
        rules = secure.as_("admin", "GET", f"{path}/{name}")[2].get("rules") or []
        return {r for rule in rules for r in rule.get("resources", [])}

    deadline = time.monotonic() + 10
    while not {"rolebindings", "configmaps", "secrets"} <= resources("admin"):
        assert time.monotonic() < deadline, resources("admin")
        time.sleep(0.1)
    assert "secrets" not in resources("view") and "configmaps" in resources("view")
    widget = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": "widgets-view",
            "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"},
        },
        "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}],
    }
    assert secure.as_("admin", "POST", path, widget)[0] == 201
    # the controller rewrites the aggregated roles one after another (admin first): wait for
    # all three, each of which must gather the new rule
    deadline = time.monotonic() + 10
    while not all("widgets" in resources(r) for r in ("admin", "edit", "view")):
        assert time.monotonic() < deadline, {r: resources(r) for r in ("admin", "edit", "view")}
        time.sleep(0.1)


def test_a_watch_path_serves_only_watches(secure: Setup):
    """Review finding: a user who may only watch configmaps (view) could create and patch
    them through /watch/ paths. Only GET is served there."""
    base = "/api/v1/watch/namespaces/team/configmaps"
    secure.as_("admin", "POST", "/api/v1/namespaces/team/configmaps", {"metadata": {"name": "w"}})
    for method, path, body in (
        ("POST", base, {"metadata": {"name": "via-watch"}}),
        ("PUT", f"{base}/w", {"metadata": {"name": "w"}, "data": {"x": "y"}}),
        ("PATCH", f"{base}/w", {"data": {"x": "y"}}),
    ):
        status, _, answer = secure.as_("alice", method, path, body)  # alice: view in team
        assert status in (403, 405), (method, answer)
        status, _, answer = secure.as_("admin", method, path, body)
        assert status == 405, (method, answer)
    assert secure.as_("admin", "GET", "/api/v1/namespaces/team/configmaps/via-watch")[0] == 404


def test_odd_input_is_audited_not_a_500(secure: Setup):
    """Review finding: a lone surrogate (which the API's JSON fallback accepts) made the
    audit write raise after the write committed: a 500 and no ResponseComplete event."""
    raw = b'{"metadata": {"name": "odd"}, "data": {"k": "\\ud800"}}'
    status, _, body = secure.as_("admin", "POST", "/api/v1/namespaces/team/configmaps", raw=raw)
    assert status == 201, body
    events = [json.loads(x) for x in secure.audit.read_text().splitlines()]
    done = [
        e
        for e in events
        if e["stage"] == "ResponseComplete" and e.get("objectRef", {}).get("name") == "odd"
    ]
    assert done and done[-1]["responseStatus"]["code"] == 201


def test_a_malformed_aggregation_rule_is_refused(secure: Setup):
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "odd-aggregate"},
        "aggregationRule": {"clusterRoleSelectors": [{"matchExpressions": 5}]},
    }
    path = "/apis/rbac.authorization.k8s.io/v1/clusterroles"
    status, _, body = secure.as_("admin", "POST", path, role)
    assert status == 422 and "clusterRoleSelectors[0]" in body["message"], body
    # and authorization still works for everyone
    assert secure.wait_allowed("alice", "GET", "/api/v1/namespaces/team/configmaps") == 200


def test_failed_authentication_is_audited(secure: Setup):
    assert secure.as_(None, "GET", "/api/v1/namespaces/team/secrets", token="guess-1")[0] == 401
    events = [json.loads(x) for x in secure.audit.read_text().splitlines()]
    failed = [
        e
        for e in events
        if e.get("annotations", {}).get("authentication.k8s.io/failed") == "true"
        and e["requestURI"] == "/api/v1/namespaces/team/secrets"
    ]
    assert failed and failed[-1]["responseStatus"]["code"] == 401
    assert failed[-1]["stage"] == "ResponseStarted"
    # health probes with a bad token are refused but not logged (the policy says None)
    assert secure.as_(None, "GET", "/readyz", token="guess-2")[0] == 401
    text = secure.audit.read_text()
    assert '"/readyz"' not in text


def test_minted_tokens_never_reach_the_audit_log(secure: Setup):
    """The policy here logs serviceaccounts/token in full: the token is redacted anyway."""
    sas = "/api/v1/namespaces/team/serviceaccounts"
    secure.as_("admin", "POST", sas, {"metadata": {"name": "minter"}})
    status, _, answer = secure.as_("admin", "POST", f"{sas}/minter/token", {"spec": {}})
    assert status == 201
    token = answer["status"]["token"]
    text = secure.audit.read_text()
    assert token not in text and token.split(".")[2] not in text
    events = [json.loads(x) for x in text.splitlines()]
    minted = [
        e
        for e in events
        if e.get("objectRef", {}).get("subresource") == "token" and e["stage"] == "ResponseComplete"
    ]
    assert minted and minted[-1]["level"] == "RequestResponse"
    assert minted[-1]["responseObject"]["status"]["token"] == "<redacted>"


def test_a_crd_cannot_shadow_a_built_in_type(secure: Setup):
    """Kubernetes' protected groups need api-approved.kubernetes.io; even approved, a CRD
    naming a built-in type never replaces it (its escalation checks would go with it)."""
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "roles.rbac.authorization.k8s.io"},
        "spec": {
            "group": "rbac.authorization.k8s.io",
            "scope": "Namespaced",
            "names": {"plural": "roles", "singular": "role", "kind": "Role"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    status, _, body = secure.as_("admin", "POST", path, crd)
    assert status == 422 and "api-approved.kubernetes.io" in body["message"]
    crd["metadata"]["annotations"] = {"api-approved.kubernetes.io": "unapproved, testing"}
    assert secure.as_("admin", "POST", path, crd)[0] == 201
    time.sleep(0.5)
    # still the built-in Role: its validation answers, and escalation is still refused
    roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles"
    status, _, body = secure.as_(
        "admin", "POST", roles, {"metadata": {"name": "bad"}, "rules": [{"verbs": []}]}
    )
    assert status == 422, body
    assert secure.as_("admin", "DELETE", f"{path}/roles.rbac.authorization.k8s.io")[0] == 200
    time.sleep(0.5)
    assert secure.as_("admin", "GET", roles)[0] == 200


def test_a_policy_asks_the_authorizer(secure: Setup):
    """An admission policy's `authorizer` (Kubernetes' authorizer library) asks this
    replica's RBAC, as the requesting user or a ServiceAccount: a ConfigMap labelled critical
    needs `get secrets` in its namespace; `requestResource` is the request's own resource
    (its creator may create it); a path check; the decision follows a new binding."""
    ns = f"authz-{uuid.uuid4().hex[:8]}"
    assert secure.as_("admin", "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})[0] == 201
    erin = secure.ca.issue("erin", "erin")
    rbac = "/apis/rbac.authorization.k8s.io/v1"

    def grant(name: str, rules: list[dict], subject: dict) -> None:
        role = {"metadata": {"name": name}, "rules": rules}
        bind = {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [subject],
        }
        assert secure.as_("admin", "POST", f"{rbac}/namespaces/{ns}/roles", role)[0] == 201
        assert secure.as_("admin", "POST", f"{rbac}/namespaces/{ns}/rolebindings", bind)[0] == 201

    cms = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get", "list"]}]
    grant("writer", cms, {"kind": "User", "name": "erin"})
    grant(
        "builder",
        [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
        {"kind": "ServiceAccount", "name": "builder", "namespace": ns},
    )
    secrets = "authorizer.group('').resource('secrets').namespace(object.metadata.namespace)"
    builder = (
        "authorizer.serviceAccount(object.metadata.namespace, 'builder').group('')"
        ".resource('configmaps').namespace(object.metadata.namespace)"
    )
    validations = [
        {
            "expression": "!('critical' in object.metadata.?labels.orValue({})) || "
            f"{secrets}.check('get').allowed()",
            "messageExpression": "'critical ConfigMaps need get secrets: ' + "
            f"{secrets}.check('get').reason()",
        },
        {"expression": "authorizer.requestResource.check('create').allowed()"},
        {
            "expression": f"object.metadata.name != 'sa-list' || {builder}.check('list').allowed()",
            "message": "the builder may not list",
        },
        {
            "expression": "object.metadata.name != 'sa-delete' || "
            f"{builder}.check('delete').allowed()",
            "message": "the builder may not delete",
        },
        {
            "expression": "object.metadata.name != 'metrics' || "
            "authorizer.path('/metrics').check('get').allowed()",
            "message": "only metrics readers",
        },
    ]
    vap = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": ns},
        "spec": {
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["configmaps"],
                    }
                ]
            },
            "matchConditions": [
                {"name": "ours", "expression": f"object.metadata.namespace == '{ns}'"}
            ],
            "validations": validations,
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": ns},
        "spec": {"policyName": ns, "validationActions": ["Deny"]},
    }
    admission = "/apis/admissionregistration.k8s.io/v1"
    assert secure.as_("admin", "POST", f"{admission}/validatingadmissionpolicies", vap)[0] == 201
    path = f"{admission}/validatingadmissionpolicybindings"
    assert secure.as_("admin", "POST", path, binding)[0] == 201
    cms_path = f"/api/v1/namespaces/{ns}/configmaps"

    def create(cert, name: str, **labels: str):
        body = {"metadata": {"name": name, "labels": labels}, "data": {}}
        return secure.api.request("POST", cms_path, body, cert=cert)

    try:
        # the policy is seen through the watch cache within moments
        deadline = time.monotonic() + 10
        while (out := create(erin, "critical-1", critical="yes"))[0] == 201:
            assert time.monotonic() < deadline, "the policy never applied"
            secure.as_("admin", "DELETE", f"{cms_path}/critical-1")
        status, _, body = out
        assert status == 422, body
        assert "critical ConfigMaps need get secrets" in body["message"], body
        assert create(erin, "plain")[0] == 201  # requestResource: erin may create it
        assert create(secure.admin, "critical-2", critical="yes")[0] == 201
        assert create(erin, "sa-list")[0] == 201
        status, _, body = create(erin, "sa-delete")
        assert status == 422 and "the builder may not delete" in body["message"], body
        status, _, body = create(erin, "metrics")
        assert status == 422 and "only metrics readers" in body["message"], body
        assert create(secure.admin, "metrics")[0] == 201
        grant(
            "secret-reader",
            [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
            {"kind": "User", "name": "erin"},
        )
        deadline = time.monotonic() + 10
        while (status := create(erin, "critical-3", critical="yes")[0]) == 422:
            assert time.monotonic() < deadline, "the new binding never counted"
            time.sleep(0.05)
        assert status == 201
    finally:
        secure.as_("admin", "DELETE", f"{path}/{ns}")
        secure.as_("admin", "DELETE", f"{admission}/validatingadmissionpolicies/{ns}")
        secure.as_("admin", "DELETE", f"/api/v1/namespaces/{ns}")


def test_impersonation_is_authorized_for_each_part_and_audited(secure: Setup, tmp_path: Path):
    """Impersonate-User/-Group/-Uid/-Extra-*, as kube-apiserver judges them: each part needs
    `impersonate` for the requester; the impersonated user is then who is authorized."""
    ssr = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    whoami_path = "/apis/authentication.k8s.io/v1/selfsubjectreviews"

    def whoami_as(who: str, **headers: str) -> tuple[int, dict]:
        status, _, body = secure.as_(who, "POST", whoami_path, ssr, headers=headers)
        return status, body

    # nobody may by default
    status, body = whoami_as("dave", **{"Impersonate-User": "erin"})
    assert status == 403 and body["message"] == (
        'users "erin" is forbidden: User "dave" cannot impersonate resource "users" in API '
        'group "" at the cluster scope'
    )
    # groups, a uid or extras need a user to act as
    status, body = whoami_as("admin", **{"Impersonate-Group": "devs"})
    assert status == 400 and "without impersonating a user" in body["message"]
    # system:masters may; the impersonated user is who answers, with only the groups asked for
    status, body = whoami_as("admin", **{"Impersonate-User": "erin"})
    assert status == 201
    assert body["status"]["userInfo"] == {"username": "erin", "groups": ["system:authenticated"]}
    assert secure.as_("admin", "GET", "/api/v1/namespaces/team/secrets",
                      headers={"Impersonate-User": "erin"})[0] == 403  # fmt: skip
    # a service account gets its groups when none are asked for
    status, body = whoami_as("admin", **{"Impersonate-User": "system:serviceaccount:team:robot"})
    assert status == 201 and body["status"]["userInfo"]["groups"] == [
        "system:serviceaccounts",
        "system:serviceaccounts:team",
        "system:authenticated",
    ]
    # bob may act as erin in the group devs, nothing more
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "impersonate-erin"},
        "rules": [
            {"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"],
             "resourceNames": ["erin"]},
            {"apiGroups": [""], "resources": ["groups"], "verbs": ["impersonate"],
             "resourceNames": ["devs"]},
        ],
    }  # fmt: skip
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "bob-impersonates-erin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "impersonate-erin"},
        "subjects": [{"kind": "User", "name": "bob"}],
    }  # fmt: skip
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    assert secure.as_("admin", "POST", f"{rbac}/clusterroles", role)[0] == 201
    assert secure.as_("admin", "POST", f"{rbac}/clusterrolebindings", binding)[0] == 201
    deadline = time.monotonic() + 5
    while whoami_as("bob", **{"Impersonate-User": "erin"})[0] == 403:
        assert time.monotonic() < deadline, "bob never allowed"
        time.sleep(0.05)
    assert whoami_as("bob", **{"Impersonate-User": "frank"})[0] == 403
    status, body = whoami_as("bob", **{"Impersonate-User": "erin", "Impersonate-Group": "ops"})
    assert status == 403 and 'groups "ops" is forbidden' in body["message"]
    status, body = whoami_as("bob", **{"Impersonate-User": "erin", "Impersonate-Uid": "u-1"})
    assert status == 403 and 'uids.authentication.k8s.io "u-1" is forbidden' in body["message"]
    status, body = whoami_as("bob", **{"Impersonate-User": "erin", "Impersonate-Extra-Scopes": "x"})
    assert status == 403 and 'cannot impersonate resource "userextras/scopes"' in body["message"]
    # kubectl --as and --as-group (several groups: several headers), through bob's kubeconfig
    cert, key = secure.bob
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "h",
        "clusters": [{"name": "h", "cluster": {"server": secure.api.url,
                                               "certificate-authority": str(secure.ca.path)}}],
        "users": [{"name": "bob", "user": {"client-certificate": str(cert),
                                           "client-key": str(key)}}],
        "contexts": [{"name": "h", "context": {"cluster": "h", "user": "bob"}}],
    }  # fmt: skip
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env,
                              timeout=60)  # fmt: skip

    out = kubectl("auth", "whoami", "-o", "json", "--as", "erin", "--as-group", "devs")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"]["userInfo"] == {
        "username": "erin",
        "groups": ["devs", "system:authenticated"],
    }
    # the impersonated user is who is authorized (this also fills kubectl's discovery cache:
    # without it, a refused impersonation fails discovery first, which kubectl words badly)
    out = kubectl("get", "configmaps", "-n", "team", "--as", "erin", "--as-group", "devs")
    assert out.returncode != 0 and 'User "erin" cannot list' in out.stderr, out.stderr
    out = kubectl("get", "configmaps", "-n", "team", "--as", "erin", "--as-group", "devs",
                  "--as-group", "ops")  # fmt: skip
    assert out.returncode != 0 and 'groups "ops" is forbidden' in out.stderr, out.stderr
    # the audit log names who asked and whom they acted as
    events = [json.loads(x) for x in secure.audit.read_text().splitlines()]
    acted = [
        e for e in events
        if e.get("impersonatedUser", {}).get("username") == "erin"
        and e["user"]["username"] == "bob" and e["stage"] == "ResponseComplete"
    ]  # fmt: skip
    assert acted and acted[-1]["impersonatedUser"]["groups"] == ["devs", "system:authenticated"]


def test_the_console_acts_for_people_never_as_system_masters(secure: Setup):
    """The consoles' identity (bound by default to haplane:console: impersonate users and
    groups) acts for a certificate's owner, but system:masters is haplane-admin's alone:
    nobody outside it takes it by impersonation, whatever RBAC says."""
    console = secure.ca.issue("console", "system:haplane:console")
    path = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    ssr = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}

    def review(cert, **headers: str) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
        status, _, body = secure.api.request("POST", path, ssr, cert=cert, headers=headers)
        return status, body

    deadline = time.monotonic() + 5  # the default binding is made by the writable replica
    while (found := review(console, **{"Impersonate-User": "carol"}))[0] == 403:
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    status, body = found
    assert status == 201 and body["status"]["userInfo"]["username"] == "carol", body
    status, body = review(console, **{"Impersonate-User": "carol", "Impersonate-Group": "devs"})
    assert status == 201 and body["status"]["userInfo"]["groups"] == [
        "devs",
        "system:authenticated",
    ]
    status, body = review(
        console, **{"Impersonate-User": "x", "Impersonate-Group": "system:masters"}
    )
    assert status == 403 and "haplane-admin's alone" in body["message"], body
    status, _, body = secure.api.request(
        "GET", "/api/v1/namespaces/team/secrets", cert=console,
        headers={"Impersonate-User": "x", "Impersonate-Group": "system:masters"},
    )  # fmt: skip
    assert status == 403, body
    # the console's identity alone may do nothing else
    assert secure.api.request("GET", "/api/v1/namespaces/team/secrets", cert=console)[0] == 403
    # haplane-admin is in system:masters already: taking it again changes nothing
    status, body = review(
        secure.admin, **{"Impersonate-User": "y", "Impersonate-Group": "system:masters"}
    )
    assert status == 201 and "system:masters" in body["status"]["userInfo"]["groups"]
    # an empty Impersonate-User is no impersonation (as in Kubernetes)
    status, body = review(secure.bob, **{"Impersonate-User": ""})
    assert status == 201 and body["status"]["userInfo"]["username"] == "bob"
