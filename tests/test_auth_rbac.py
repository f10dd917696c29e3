"""Kubernetes RBAC (haplane.auth.rbac) against its documented semantics: a matrix of the
default roles x verbs x resources, bindings' scope, subresources, resourceNames, non-resource
URLs, subjects, aggregation, escalation prevention, and the index against a naive evaluator
over random updates."""

from __future__ import annotations

import random
from typing import Any

import pytest

from haplane.auth.rbac import (
    Attributes,
    RbacIndex,
    Rule,
    compile_rules,
    covers,
    default_cluster_role_bindings,
    default_cluster_roles,
    may_bind,
    may_create_role,
    selector_errors,
)

AUTH = "system:authenticated"


def defaults() -> RbacIndex:
    index = RbacIndex()
    for role in default_cluster_roles():
        index.upsert("ClusterRole", role)
    for binding in default_cluster_role_bindings():
        index.upsert("ClusterRoleBinding", binding)
    return index


def binding(kind, name, role_kind, role, subjects, namespace=""):
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": subjects,
    }


def user(name):
    return {"kind": "User", "name": name, "apiGroup": "rbac.authorization.k8s.io"}


def can(index, who, verb, resource, namespace="", group="", name="", sub="", groups=(AUTH,)):
    return index.authorize(
        Attributes(who, tuple(groups), verb, namespace, group, resource, sub, name)
    ).allowed


def can_path(index, who, verb, path, groups=(AUTH,)):
    a = Attributes(who, tuple(groups), verb, path=path, resource_request=False)
    return index.authorize(a).allowed


@pytest.fixture
def index() -> RbacIndex:
    idx = defaults()
    for role, who in (("view", "viewer"), ("edit", "editor"), ("admin", "adminer")):
        idx.upsert(
            "RoleBinding",
            binding(
                "RoleBinding",
                f"{role}-b",
                "ClusterRole",
                role,
                [user(who)],
                namespace="dev",
            ),
        )
    return idx


# role -> (verb, group, resource, allowed) in its namespace; Kubernetes' documented defaults
MATRIX = {
    "viewer": [
        ("get", "", "configmaps", True),
        ("list", "", "pods", True),
        ("watch", "", "events", True),
        ("get", "", "secrets", False),
        ("list", "", "secrets", False),
        ("create", "", "configmaps", False),
        ("delete", "", "pods", False),
        ("get", "rbac.authorization.k8s.io", "roles", False),
        ("get", "apps", "deployments", True),
        ("update", "apps", "deployments", False),
    ],
    "editor": [
        ("get", "", "secrets", True),
        ("create", "", "secrets", True),
        ("delete", "", "configmaps", True),
        ("create", "apps", "deployments", True),
        ("create", "rbac.authorization.k8s.io", "rolebindings", False),
        ("get", "rbac.authorization.k8s.io", "roles", False),
        ("create", "", "serviceaccounts", True),
    ],
    "adminer": [
        ("create", "rbac.authorization.k8s.io", "rolebindings", True),
        ("delete", "rbac.authorization.k8s.io", "roles", True),
        ("get", "", "secrets", True),
        ("create", "", "configmaps", True),
        ("create", "authorization.k8s.io", "localsubjectaccessreviews", True),
    ],
}


@pytest.mark.parametrize(
    ("who", "verb", "group", "resource", "allowed"),
    [(who, *case) for who, cases in MATRIX.items() for case in cases],
)
def test_default_roles_in_their_namespace(index, who, verb, group, resource, allowed):
    assert can(index, who, verb, resource, "dev", group) is allowed
    # a RoleBinding grants nothing in another namespace, nor cluster-wide
    assert not can(index, who, verb, resource, "prod", group)
    assert not can(index, who, verb, resource, "", group)


def test_admin_cannot_touch_cluster_roles(index):
    assert not can(index, "adminer", "create", "clusterroles", "", "rbac.authorization.k8s.io")
    assert not can(index, "adminer", "create", "clusterroles", "dev", "rbac.authorization.k8s.io")


def test_authenticated_users_get_discovery_and_self_reviews(index):
    assert can_path(index, "nobody", "get", "/apis/apps/v1")
    assert can_path(index, "nobody", "get", "/version")
    assert not can_path(index, "nobody", "get", "/metrics")
    assert not can_path(index, "nobody", "get", "/apis/apps/v1", groups=())
    assert can(index, "nobody", "create", "selfsubjectaccessreviews", "", "authorization.k8s.io")
    assert can(index, "nobody", "create", "selfsubjectreviews", "", "authentication.k8s.io")
    assert not can(index, "nobody", "create", "subjectaccessreviews", "", "authorization.k8s.io")
    assert not can(index, "nobody", "get", "configmaps", "dev")


def test_unauthenticated_see_only_public_info(index):
    anon = ("system:unauthenticated",)
    assert can_path(index, "system:anonymous", "get", "/healthz", groups=anon)
    assert not can_path(index, "system:anonymous", "get", "/apis", groups=anon)


def test_system_masters_may_do_anything(index):
    assert can(index, "root", "delete", "secrets", "dev", groups=("system:masters",))
    assert can_path(index, "root", "post", "/anything", groups=("system:masters",))


def test_cluster_role_binding_grants_everywhere_and_non_resource_urls(index):
    index.upsert(
        "ClusterRole",
        {
            "metadata": {"name": "m"},
            "rules": [
                {"nonResourceURLs": ["/metrics", "/logs/*"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
            ],
        },
    )
    index.upsert(
        "RoleBinding", binding("RoleBinding", "rb", "ClusterRole", "m", [user("r")], "dev")
    )
    assert not can_path(index, "r", "get", "/metrics")  # a RoleBinding: never non-resource
    assert not can(index, "r", "get", "nodes")  # nor cluster-scoped resources
    index.upsert(
        "ClusterRoleBinding", binding("ClusterRoleBinding", "crb", "ClusterRole", "m", [user("c")])
    )
    assert can_path(index, "c", "get", "/metrics")
    assert can_path(index, "c", "get", "/logs/a/b")
    assert not can_path(index, "c", "get", "/logsx")
    assert not can_path(index, "c", "post", "/metrics")
    assert can(index, "c", "get", "nodes") and can(index, "c", "get", "nodes", "any")


RULE_CASES = [
    # rule resources, request resource, subresource, allowed
    (["pods"], "pods", "", True),
    (["pods"], "pods", "log", False),
    (["pods/log"], "pods", "log", True),
    (["pods/log"], "pods", "", False),
    (["pods/*"], "pods", "log", False),  # Kubernetes' ResourceMatches has no `resource/*`
    (["pods/*"], "pods", "", False),
    (["*/scale"], "deployments", "scale", True),
    (["*/scale"], "deployments", "", False),
    (["*"], "anything", "status", True),
]


@pytest.mark.parametrize(("resources", "resource", "sub", "allowed"), RULE_CASES)
def test_resource_and_subresource_matching(resources, resource, sub, allowed):
    rule = Rule.of({"verbs": ["get"], "apiGroups": ["*"], "resources": resources})
    a = Attributes("u", (), "get", "ns", "apps", resource, sub, "x")
    assert rule.allows(a) is allowed


def test_resource_names_restrict_gets_not_lists():
    rule = Rule.of(
        {
            "verbs": ["get", "list"],
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["a"],
        }
    )
    assert rule.allows(Attributes("u", (), "get", "ns", "", "configmaps", "", "a"))
    assert not rule.allows(Attributes("u", (), "get", "ns", "", "configmaps", "", "b"))
    assert not rule.allows(Attributes("u", (), "list", "ns", "", "configmaps", "", ""))
    assert not rule.allows(Attributes("u", (), "create", "ns", "", "configmaps", "", ""))


def test_star_verbs_and_groups():
    rule = Rule.of({"verbs": ["*"], "apiGroups": ["*"], "resources": ["secrets"]})
    assert rule.allows(Attributes("u", (), "escalate", "ns", "x.io", "secrets"))
    assert not rule.allows(Attributes("u", (), "get", "ns", "", "configmaps"))


def test_subjects_groups_and_service_accounts(index):
    index.upsert(
        "Role",
        {
            "metadata": {"name": "r", "namespace": "dev"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
    )
    index.upsert(
        "RoleBinding",
        binding(
            "RoleBinding",
            "b",
            "Role",
            "r",
            [
                {"kind": "Group", "name": "team"},
                {"kind": "ServiceAccount", "name": "bot", "namespace": "ci"},
            ],
            "dev",
        ),
    )
    assert can(index, "anyone", "get", "configmaps", "dev", groups=("team",))
    assert can(index, "system:serviceaccount:ci:bot", "get", "configmaps", "dev")
    assert not can(index, "system:serviceaccount:dev:bot", "get", "configmaps", "dev")
    assert not can(index, "bot", "get", "configmaps", "dev")


def test_a_binding_to_a_missing_role_grants_nothing_until_it_exists(index):
    index.upsert("RoleBinding", binding("RoleBinding", "b", "Role", "later", [user("u")], "dev"))
    assert not can(index, "u", "get", "configmaps", "dev")
    index.upsert(
        "Role",
        {
            "metadata": {"name": "later", "namespace": "dev"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
    )
    assert can(index, "u", "get", "configmaps", "dev")
    index.delete("Role", "dev", "later")
    assert not can(index, "u", "get", "configmaps", "dev")


def test_aggregation_follows_labelled_roles(index):
    assert not can(index, "viewer", "get", "widgets", "dev", "example.com")
    extra = {
        "metadata": {
            "name": "widgets-view",
            "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"},
        },
        "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": READ}],
    }
    index.upsert("ClusterRole", extra)
    # view gathers it, and edit and admin gather view
    for who in ("viewer", "editor", "adminer"):
        assert can(index, who, "get", "widgets", "dev", "example.com"), who
    assert index.aggregated_rules("view") is not None
    assert any("widgets" in r.get("resources", []) for r in index.aggregated_rules("view"))
    extra["metadata"]["labels"] = {}
    index.upsert("ClusterRole", extra)
    assert not can(index, "viewer", "get", "widgets", "dev", "example.com")
    index.upsert(
        "ClusterRole",
        {
            **extra,
            "metadata": {
                **extra["metadata"],
                "labels": {"rbac.authorization.k8s.io/aggregate-to-admin": "true"},
            },
        },
    )
    assert can(index, "adminer", "get", "widgets", "dev", "example.com")
    assert not can(index, "editor", "get", "widgets", "dev", "example.com")
    index.delete("ClusterRole", "", "widgets-view")
    assert not can(index, "adminer", "get", "widgets", "dev", "example.com")


READ = ["get", "list", "watch"]


def test_covers():
    owner = compile_rules(
        [
            {"apiGroups": [""], "resources": ["configmaps", "pods/log"], "verbs": ["get", "list"]},
            {"apiGroups": ["apps"], "resources": ["*"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["a"]},
            {"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]},
            {"nonResourceURLs": ["/logs/*"], "verbs": ["get"]},
        ]
    )
    ok = compile_rules(
        [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
            {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["update"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["a"]},
            {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["get"]},
            {"nonResourceURLs": ["/logs/x"], "verbs": ["get"]},
        ]
    )
    assert covers(owner, ok) == (True, [])
    for bad in (
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["delete"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},  # all names: more
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["b"]},
        {"apiGroups": ["*"], "resources": ["configmaps"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        {"nonResourceURLs": ["/logs*"], "verbs": ["get"]},
    ):
        held, missing = covers(owner, compile_rules([bad]))
        assert not held and missing, bad


def role(name, rules, namespace="dev", **extra):
    return {"metadata": {"name": name, "namespace": namespace}, "rules": rules, **extra}


def test_escalation_creating_roles(index):
    secrets = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    configmaps = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
    # the admin of dev may create a role with what they hold, in dev only
    assert may_create_role(index, "adminer", [AUTH], role("r", secrets)).allowed
    assert not may_create_role(index, "adminer", [AUTH], role("r", secrets, "prod")).allowed
    d = may_create_role(index, "viewer", [AUTH], role("r", secrets))
    assert not d.allowed
    assert 'user "viewer"' in d.reason and "not currently held" in d.reason
    assert '{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}' in d.reason
    assert may_create_role(index, "viewer", [AUTH], role("r", configmaps)).allowed
    # the escalate verb lets them anyway
    index.upsert(
        "ClusterRole",
        {
            "metadata": {"name": "esc"},
            "rules": [
                {
                    "apiGroups": ["rbac.authorization.k8s.io"],
                    "resources": ["roles"],
                    "verbs": ["escalate"],
                }
            ],
        },
    )
    index.upsert(
        "RoleBinding", binding("RoleBinding", "e", "ClusterRole", "esc", [user("viewer")], "dev")
    )
    assert may_create_role(index, "viewer", [AUTH], role("r", secrets)).allowed
    # an aggregated role needs escalate (its rules come later)
    agg = {
        "metadata": {"name": "agg"},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]},
        "rules": [],
    }
    assert not may_create_role(index, "adminer", [AUTH], agg).allowed
    assert may_create_role(index, "root", ["system:masters"], agg).allowed


def test_escalation_binding_roles(index):
    bind_admin = binding("RoleBinding", "x", "ClusterRole", "admin", [user("mallory")], "dev")
    bind_cluster_admin = binding(
        "ClusterRoleBinding", "x", "ClusterRole", "cluster-admin", [user("mallory")]
    )
    assert may_bind(index, "adminer", [AUTH], bind_admin).allowed
    assert not may_bind(index, "editor", [AUTH], bind_admin).allowed
    assert not may_bind(index, "adminer", [AUTH], bind_cluster_admin).allowed
    assert not may_bind(
        index, "adminer", [AUTH], {**bind_admin, "metadata": {"name": "x", "namespace": "prod"}}
    ).allowed
    assert may_bind(index, "root", ["system:masters"], bind_cluster_admin).allowed
    missing = binding("RoleBinding", "x", "Role", "nope", [user("m")], "dev")
    assert not may_bind(index, "adminer", [AUTH], missing).allowed
    # the bind verb on that role lets them bind it without holding it
    index.upsert(
        "ClusterRole",
        {
            "metadata": {"name": "binder"},
            "rules": [
                {
                    "apiGroups": ["rbac.authorization.k8s.io"],
                    "resources": ["clusterroles"],
                    "verbs": ["bind"],
                    "resourceNames": ["cluster-admin"],
                }
            ],
        },
    )
    index.upsert(
        "ClusterRoleBinding",
        binding("ClusterRoleBinding", "b", "ClusterRole", "binder", [user("editor")]),
    )
    assert may_bind(index, "editor", [AUTH], bind_cluster_admin).allowed
    assert not may_bind(
        index,
        "editor",
        [AUTH],
        binding("ClusterRoleBinding", "x", "ClusterRole", "admin", [user("m")]),
    ).allowed


def test_rules_for(index):
    resource, non_resource, incomplete, errors = index.rules_for("viewer", [AUTH], "dev")
    assert not incomplete and not errors
    flat = {
        (g, r, v)
        for rule in resource
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert ("", "configmaps", "get") in flat and ("", "secrets", "get") not in flat
    assert ("authorization.k8s.io", "selfsubjectaccessreviews", "create") in flat
    assert any("/version" in r["nonResourceURLs"] for r in non_resource)
    resource, _, _, _ = index.rules_for("viewer", [AUTH], "prod")
    assert not any("configmaps" in r["resources"] for r in resource)
    index.upsert(
        "RoleBinding", binding("RoleBinding", "dangling", "Role", "gone", [user("viewer")], "dev")
    )
    assert index.rules_for("viewer", [AUTH], "dev")[3]


def test_default_roles_keep_secrets_from_operators():
    idx = defaults()
    for name in (
        "haplane:etcd-operator",
        "haplane:gate-operator",
        "haplane:dr-operator",
        "haplane:auditor",
        "view",
    ):
        idx.upsert(
            "ClusterRoleBinding",
            binding("ClusterRoleBinding", name, "ClusterRole", name, [user(name)]),
        )
        for verb in ("get", "list", "watch"):
            assert not can(idx, name, verb, "secrets", "any"), (name, verb)
    assert can(idx, "haplane:auditor", "list", "clusterroles", "", "rbac.authorization.k8s.io")
    assert can(idx, "haplane:dr-operator", "create", "switchovers", "", "ops.haplane.dev")
    assert not can(idx, "haplane:dr-operator", "delete", "switchovers", "", "ops.haplane.dev")
    assert not can(idx, "haplane:dr-operator", "create", "approvalpolicies", "", "ops.haplane.dev")
    assert not can(idx, "haplane:gate-operator", "create", "switchovers", "", "ops.haplane.dev")
    assert idx.cluster_roles_of("haplane:dr-operator", ()) == {"haplane:dr-operator"}
    assert "haplane:dr-operator" not in idx.cluster_roles_of("nobody", (AUTH,))
    assert can(
        idx, "haplane:dr-operator", "update", "switchovers", "", "ops.haplane.dev", sub="approval"
    )
    # what the web console's Drills and Analysis pages ask (list drills; list etcdmembers or
    # gates of platform.haplane.io): auditors and DR operators see drills, every operator
    # role and auditors the analysis, a view binding neither
    plat, ops = "platform.haplane.io", "ops.haplane.dev"
    for name in ("haplane:auditor", "haplane:dr-operator"):
        assert can(idx, name, "list", "drills", "", ops), name
    for name in ("haplane:gate-operator", "haplane:etcd-operator", "view"):
        assert not can(idx, name, "list", "drills", "", ops), name
    for name in ("haplane:auditor", "haplane:dr-operator", "haplane:gate-operator",
                 "haplane:etcd-operator"):  # fmt: skip
        assert can(idx, name, "list", "etcdmembers", "", plat), name
        assert can(idx, name, "list", "gates", "", plat), name
    assert not can(idx, "view", "list", "etcdmembers", "", plat)
    assert not can(idx, "view", "list", "gates", "", plat)
    # the consoles' own identity: impersonation of users and groups, nothing else
    console = "system:haplane:console"
    assert can(idx, console, "impersonate", "users", name="carol")
    assert can(idx, console, "impersonate", "groups", name="devs")
    assert not can(idx, console, "impersonate", "serviceaccounts", "kube-system", name="x")
    assert not can(idx, console, "list", "secrets", "any")


# ---- the index against a naive evaluator --------------------------------------------------


def naive(objects: dict, a: Attributes) -> bool:
    if "system:masters" in a.groups:
        return True
    roles = {
        (o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
        for (k, _, _), o in objects.items()
        if k == "Role"
    }
    cluster = {o["metadata"]["name"]: o for (k, _, _), o in objects.items() if k == "ClusterRole"}
    for (kind, ns, _), b in objects.items():
        if kind not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if kind == "RoleBinding" and (not a.resource_request or ns != a.namespace or not ns):
            continue
        hit = any(
            (s["kind"] == "User" and s["name"] == a.user)
            or (s["kind"] == "Group" and s["name"] in a.groups)
            for s in b["subjects"]
        )
        if not hit:
            continue
        ref = b["roleRef"]
        src = (
            cluster.get(ref["name"])
            if ref["kind"] == "ClusterRole"
            else roles.get((ns, ref["name"]))
        )
        if src and any(Rule.of(r).allows(a) for r in src.get("rules", [])):
            return True
    return False


def test_index_matches_a_naive_evaluator_over_random_updates():
    rnd = random.Random(7)
    users, groups, nss = ["u1", "u2", "u3"], ["g1", "g2"], ["a", "b"]
    resources, verbs = ["configmaps", "pods", "pods/log", "*"], ["get", "list", "create", "*"]
    index, objects = RbacIndex(), {}
    for step in range(600):
        op = rnd.random()
        ns = rnd.choice(nss)
        name = f"x{rnd.randrange(4)}"
        kind = rnd.choice(["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"])
        key = (kind, ns if kind in ("Role", "RoleBinding") else "", name)
        if op < 0.25 and key in objects:
            del objects[key]
            index.delete(kind, key[1], name)
        else:
            meta = {"name": name, **({"namespace": ns} if key[1] else {})}
            if kind in ("Role", "ClusterRole"):
                rules = [
                    {
                        "apiGroups": [""],
                        "resources": [rnd.choice(resources)],
                        "verbs": [rnd.choice(verbs)],
                    }
                    for _ in range(rnd.randrange(3))
                ]
                obj = {"metadata": meta, "rules": rules}
            else:
                ref_kind = (
                    "ClusterRole"
                    if kind == "ClusterRoleBinding"
                    else rnd.choice(["Role", "ClusterRole"])
                )
                subjects = [
                    rnd.choice(
                        [
                            {"kind": "User", "name": rnd.choice(users)},
                            {"kind": "Group", "name": rnd.choice(groups)},
                        ]
                    )
                    for _ in range(rnd.randrange(1, 3))
                ]
                obj = {
                    "metadata": meta,
                    "subjects": subjects,
                    "roleRef": {
                        "kind": ref_kind,
                        "name": f"x{rnd.randrange(4)}",
                        "apiGroup": "rbac.authorization.k8s.io",
                    },
                }
            objects[key] = obj
            index.upsert(kind, obj)
        for _ in range(5):
            res, _, sub = rnd.choice(["configmaps", "pods", "pods/log"]).partition("/")
            a = Attributes(
                rnd.choice(users),
                (rnd.choice(groups),),
                rnd.choice(["get", "list", "create"]),
                rnd.choice([*nss, ""]),
                "",
                res,
                sub,
                "n",
            )
            assert index.authorize(a).allowed == naive(objects, a), (step, a)


def test_a_service_account_subject_defaults_to_the_bindings_namespace(index):
    index.upsert(
        "Role",
        {
            "metadata": {"name": "r", "namespace": "dev"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
    )
    index.upsert(
        "RoleBinding",
        binding(
            "RoleBinding", "b", "Role", "r", [{"kind": "ServiceAccount", "name": "builder"}], "dev"
        ),
    )
    assert can(index, "system:serviceaccount:dev:builder", "get", "configmaps", "dev")
    assert not can(index, "system:serviceaccount:other:builder", "get", "configmaps", "dev")


def test_malformed_selectors_match_nothing_and_break_nothing(index):
    for selectors in (
        [{"matchExpressions": 5}],
        [{"matchExpressions": [{"key": 1, "operator": "Exists"}]}],
        [{"matchLabels": {"a": 1}}],
        ["nope"],
    ):
        index.upsert(
            "ClusterRole",
            {"metadata": {"name": "odd"}, "aggregationRule": {"clusterRoleSelectors": selectors}},
        )
        assert index.aggregated_rules("odd") == []
        assert can(index, "viewer", "get", "configmaps", "dev")


def test_a_relist_aggregates_once(index, monkeypatch):
    calls = []
    original = RbacIndex._aggregate_now
    monkeypatch.setattr(RbacIndex, "_aggregate_now", lambda self: (calls.append(1), original(self)))
    with index.bulk():
        for i in range(50):
            index.upsert(
                "ClusterRole",
                {
                    "metadata": {
                        "name": f"c{i}",
                        "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"},
                    },
                    "rules": [],
                },
            )
    assert len(calls) == 1
    index.upsert("ClusterRole", {"metadata": {"name": "one"}, "rules": []})
    assert len(calls) == 2


def _reference_selector_matches(selector: Any, labels: dict[str, str], empty: bool) -> bool:
    """LabelSelector semantics written out plainly, one requirement at a time (the
    implementation before selectors were made matchers once): the oracle below."""
    if selector_errors(selector):
        return False  # malformed: matches nothing
    match_labels = selector.get("matchLabels") or {}
    exprs = selector.get("matchExpressions") or []
    if not match_labels and not exprs:
        return empty
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for e in exprs:
        key, op = e["key"], e["operator"]
        values = [v for v in e.get("values") or [] if isinstance(v, str)]
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def test_a_selector_made_a_matcher_once_decides_as_the_reference():
    """`selector_matcher` (made once per policy or role change) and `selector_matches`
    decide as the plain reference on every selector, malformed ones included, and label
    set."""
    from haplane.auth.rbac import selector_matcher, selector_matches

    rng = random.Random(7)
    keys, values = ["a", "b", "c"], ["1", "2"]

    def expression() -> object:
        op = rng.choice(["In", "NotIn", "Exists", "DoesNotExist", "Gt", None])
        e: dict[str, object] = {"key": rng.choice([*keys, 3]), "operator": op}
        if rng.random() < 0.7:
            e["values"] = rng.choice([rng.sample(values, rng.randint(0, 2)), "1", [1]])
        return e

    def selector() -> object:
        if rng.random() < 0.05:
            return rng.choice([None, "x", []])
        s: dict[str, object] = {}
        if rng.random() < 0.6:
            s["matchLabels"] = rng.choice(
                [
                    {k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, 2))},
                    {"a": 1},
                    None,
                ]
            )
        if rng.random() < 0.6:
            s["matchExpressions"] = [expression() for _ in range(rng.randint(0, 3))]
        return s

    seen = set()
    for _ in range(3000):
        sel = selector()
        labels = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, 3))}
        for empty in (True, False):
            want = _reference_selector_matches(sel, labels, empty)
            assert selector_matcher(sel, empty=empty)(labels) is want, (sel, labels, empty)
            assert selector_matches(sel, labels, empty=empty) is want, (sel, labels, empty)
            seen.add(want)
    assert seen == {True, False}
