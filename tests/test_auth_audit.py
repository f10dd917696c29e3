"""haplane.auth.audit: the policy (parsing, matching), events, the rotating writer, the reader."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from haplane.auth.audit import (
    DEFAULT_POLICY,
    REDACTED,
    AuditEvent,
    AuditLog,
    AuditPolicyError,
    Level,
    Policy,
    ReadStats,
    RequestAttributes,
    Stage,
    UserInfo,
    backup_files,
    default_policy,
    follow,
    format_timestamp,
    new_event,
    read_events,
    redact_secrets,
)

T0 = datetime(2026, 12, 5, 10, 0, 0, 123456, tzinfo=UTC)
SECRET_VALUE = "hunter2-very-secret-value"
SECRET_B64 = base64.b64encode(SECRET_VALUE.encode()).decode()


def res(
    verb: str,
    resource: str,
    *,
    user: str = "alice",
    groups: tuple[str, ...] = ("system:authenticated",),
    namespace: str = "default",
    group: str = "",
    sub: str = "",
    name: str = "",
) -> RequestAttributes:
    return RequestAttributes(
        user=user,
        groups=groups,
        verb=verb,
        namespace=namespace,
        api_group=group,
        resource=resource,
        subresource=sub,
        name=name,
        resource_request=True,
        api_version="v1",
    )


def nonres(path: str, verb: str = "get", user: str = "alice") -> RequestAttributes:
    return RequestAttributes(
        user=user, groups=("system:authenticated",), verb=verb, path=path, resource_request=False
    )


def policy(rules: str, head: str = "") -> Policy:
    return Policy.load(f"apiVersion: audit.k8s.io/v1\nkind: Policy\n{head}rules:\n{rules}")


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


# --- policy parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rules:\n- level: Metadata\n- level: None\n- level: Verbose\n",
            "rules[2].level: 'Verbose' is not one of None, Metadata, Request, RequestResponse",
        ),
        ("rules:\n- users: [a]\n", "rules[0].level: required"),
        (
            "rules:\n- level: None\n  verb: [get]\n",
            "rules[0].verb: unknown field (did you mean 'verbs'?)",
        ),
        ("rules:\n- level: None\n  users: alice\n", "rules[0].users: must be a list of strings"),
        ("rules:\n- level: None\n  verbs: [get, 3]\n", "rules[0].verbs[1]: must be a string"),
        ("rules:\n- level: None\n  verbs: [GET]\n", "rules[0].verbs[0]: 'GET' never matches"),
        (
            "rules:\n- level: None\n  omitStages: [Done]\n",
            "rules[0].omitStages[0]: 'Done' is not one of",
        ),
        ("omitStages: [Nope]\nrules:\n- level: None\n", "omitStages[0]: 'Nope' is not one of"),
        (
            "omitManagedFields: yes please\nrules:\n- level: None\n",
            "omitManagedFields: must be true or false",
        ),
        (
            "rules:\n- level: None\n  omitManagedFields: 1\n",
            "rules[0].omitManagedFields: must be true or false",
        ),
        (
            "rules:\n- level: None\n  nonResourceURLs: [healthz]\n",
            "rules[0].nonResourceURLs[0]: 'healthz' must begin with '/'",
        ),
        (
            "rules:\n- level: None\n  nonResourceURLs: ['/he*z']\n",
            "rules[0].nonResourceURLs[0]: '/he*z': '*' may only be the last",
        ),
        (
            "rules:\n- level: None\n  nonResourceURLs: [/x]\n  namespaces: [a]\n",
            "rules[0].nonResourceURLs: a rule cannot apply to both",
        ),
        (
            "rules:\n- level: None\n  resources:\n  - group: rbac.authorization.k8s.io/v1\n",
            "rules[0].resources[0].group: 'rbac.authorization.k8s.io/v1' is not a valid API group",
        ),
        (
            "rules:\n- level: None\n  resources:\n  - group: ''\n    resourceNames: [x]\n",
            "rules[0].resources[0].resourceNames: using resourceNames requires at least one",
        ),
        (
            "rules:\n- level: None\n  resources:\n  - resources: ['pods/log/x']\n",
            "rules[0].resources[0].resources[0]: 'pods/log/x' must be",
        ),
        ("rules:\n- level: None\n  resources:\n  - resources: ['*/*']\n", "'*/*' matches nothing"),
        (
            "rules:\n- level: None\n  resources:\n  - resources: ['pod*']\n",
            "rules[0].resources[0].resources[0]: 'pod*'",
        ),
        (
            "rules:\n- level: None\n  resources:\n  - groups: ['']\n",
            "rules[0].resources[0].groups: unknown field",
        ),
        ("rules:\n- level: None\n  resources: pods\n", "rules[0].resources: must be a list"),
        ("rules:\n- Metadata\n", "rules[0]: must be a mapping"),
        ("rules: []\n", "rules: a policy needs at least one rule"),
        ("rules:\n- level: None\nextra: 1\n", "extra: unknown field"),
        ("rules:\n- level: None\n  level: Metadata\n", "duplicate key 'level'"),
    ],
)
def test_policy_errors_name_their_field(text: str, message: str) -> None:
    with pytest.raises(AuditPolicyError) as e:
        Policy.load("apiVersion: audit.k8s.io/v1\nkind: Policy\n" + text)
    assert message in str(e.value)


def test_policy_header_and_shape_errors(tmp_path: Path) -> None:
    with pytest.raises(
        AuditPolicyError, match=r"apiVersion: 'audit.k8s.io/v1beta1' is not supported"
    ):
        Policy.load("apiVersion: audit.k8s.io/v1beta1\nkind: Policy\nrules:\n- level: None\n")
    with pytest.raises(AuditPolicyError, match=r"kind: 'Pol' must be 'Policy'"):
        Policy.load("apiVersion: audit.k8s.io/v1\nkind: Pol\nrules:\n- level: None\n")
    with pytest.raises(AuditPolicyError, match="not valid YAML"):
        Policy.load("apiVersion: audit.k8s.io/v1\nrules: [\n")
    with pytest.raises(AuditPolicyError, match="cannot read"):
        Policy.load(str(tmp_path / "missing.yaml"))


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(AuditPolicyError) as e:
        policy("- level: Loud\n- level: None\n  users: x\n")
    assert [m.split(":")[0] for m in e.value.errors] == ["rules[0].level", "rules[1].users"]


def test_policy_loads_from_a_file_and_from_json(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(DEFAULT_POLICY)
    assert Policy.load(f) == Policy.load(str(f)) == default_policy()
    as_json = orjson.dumps(
        {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [{"level": "Metadata"}]}
    ).decode()
    assert Policy.load(as_json).level_for(nonres("/api"))[0] is Level.METADATA


# --- rule matching --------------------------------------------------------------------------


def test_first_matching_rule_wins_and_no_match_is_none() -> None:
    p = policy(
        "- level: RequestResponse\n  users: [bob]\n"
        "- level: Request\n  userGroups: [admins]\n"
        "- level: Metadata\n  verbs: [delete]\n"
    )
    assert p.level_for(res("delete", "pods", user="bob"))[0] is Level.REQUEST_RESPONSE
    assert p.level_for(res("delete", "pods", groups=("x", "admins")))[0] is Level.REQUEST
    assert p.level_for(res("delete", "pods"))[0] is Level.METADATA
    assert p.level_for(res("get", "pods"))[0] is Level.NONE
    assert p.level_for(nonres("/api", verb="delete"))[0] is Level.METADATA  # no resource fields


def test_resources_subresources_and_wildcards() -> None:
    p = policy(
        "- level: RequestResponse\n  resources:\n  - group: ''\n    resources: [pods]\n"
        "- level: Request\n  resources:\n  - group: ''\n    resources: [pods/log]\n"
        "- level: Metadata\n  resources:\n  - group: ''\n    resources: ['*/status']\n"
        "- level: None\n  resources:\n  - group: apps\n    resources: ['deployments/*']\n"
        "- level: Request\n  resources:\n  - group: batch\n    resources: ['*']\n"
        "- level: Metadata\n  resources:\n  - group: policy\n"
    )

    def level(a: RequestAttributes) -> Level:
        return p.level_for(a)[0]

    assert level(res("get", "pods")) is Level.REQUEST_RESPONSE
    assert level(res("get", "pods", sub="log")) is Level.REQUEST  # `pods` is not its subresources
    assert level(res("get", "pods", sub="exec")) is Level.NONE
    assert level(res("update", "pods", sub="status")) is Level.METADATA
    assert level(res("update", "nodes", sub="status", namespace="")) is Level.METADATA
    assert level(res("update", "deployments", sub="status", group="apps")) is Level.NONE
    assert level(res("update", "deployments", sub="scale", group="apps")) is Level.NONE
    assert level(res("get", "deployments", group="apps")) is Level.NONE  # as Kubernetes: x/* ⊇ x
    assert level(res("get", "jobs", group="batch", sub="status")) is Level.REQUEST
    assert level(res("get", "poddisruptionbudgets", group="policy")) is Level.METADATA
    assert level(res("get", "pods", group="example.com")) is Level.NONE  # group must match


def test_resource_names_and_namespaces() -> None:
    p = policy(
        "- level: None\n  resources:\n  - group: ''\n    resources: [configmaps]\n"
        "    resourceNames: [controller-leader]\n"
        "- level: Request\n  namespaces: ['']\n"
        "- level: RequestResponse\n  namespaces: [kube-system]\n"
        "- level: Metadata\n"
    )

    def level(a: RequestAttributes) -> Level:
        return p.level_for(a)[0]

    assert level(res("update", "configmaps", name="controller-leader")) is Level.NONE
    assert level(res("update", "configmaps", name="other")) is Level.METADATA
    assert level(res("list", "configmaps")) is Level.METADATA  # a list has no name
    assert level(res("get", "nodes", namespace="", name="n1")) is Level.REQUEST  # cluster-scoped
    assert level(res("get", "pods", namespace="kube-system")) is Level.REQUEST_RESPONSE
    assert level(res("get", "pods")) is Level.METADATA
    assert level(nonres("/api")) is Level.METADATA  # namespaces: only resource requests


def test_non_resource_urls() -> None:
    p = policy(
        "- level: None\n  nonResourceURLs: [/healthz, '/logs/*']\n"
        "- level: Request\n  nonResourceURLs: ['/api*']\n"
        "- level: Metadata\n  nonResourceURLs: ['*']\n"
        "- level: RequestResponse\n"
    )

    def level(a: RequestAttributes) -> Level:
        return p.level_for(a)[0]

    assert level(nonres("/healthz")) is Level.NONE
    assert level(nonres("/healthz/etcd")) is Level.METADATA  # exact only
    assert level(nonres("/logs/kubelet.log")) is Level.NONE
    assert level(nonres("/logs")) is Level.METADATA  # `/logs/*` wants the slash
    assert level(nonres("/apis/apps")) is Level.REQUEST  # a trailing * is a plain prefix
    assert level(nonres("/openapi/v2")) is Level.METADATA
    assert level(res("get", "pods")) is Level.REQUEST_RESPONSE  # URL rules skip resources


def test_omit_stages_are_unioned_and_managed_fields_overridden() -> None:
    p = policy(
        "- level: Metadata\n  users: [a]\n  omitStages: [ResponseStarted]\n"
        "  omitManagedFields: false\n"
        "- level: Metadata\n",
        head="omitStages: [RequestReceived]\nomitManagedFields: true\n",
    )
    d = p.decide(res("get", "pods", user="a"))
    assert d.omit_stages == {Stage.REQUEST_RECEIVED, Stage.RESPONSE_STARTED}
    assert d.omit_managed_fields is False
    d = p.decide(res("get", "pods", user="b"))
    assert d.omit_stages == {Stage.REQUEST_RECEIVED}
    assert d.omit_managed_fields is True


# --- the default policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "level"),
    [
        (nonres("/livez"), Level.NONE),
        (nonres("/readyz/etcd"), Level.NONE),
        (nonres("/healthz"), Level.NONE),
        (nonres("/version"), Level.NONE),
        (nonres("/metrics"), Level.NONE),
        (nonres("/metrics/slis"), Level.NONE),
        (res("create", "secrets"), Level.METADATA),
        (res("list", "secrets"), Level.METADATA),
        (res("create", "serviceaccounts", sub="token", name="default"), Level.METADATA),
        (
            res("create", "tokenreviews", group="authentication.k8s.io", namespace=""),
            Level.METADATA,
        ),
        (res("create", "roles", group="rbac.authorization.k8s.io"), Level.REQUEST_RESPONSE),
        (
            res("list", "clusterrolebindings", group="rbac.authorization.k8s.io"),
            Level.REQUEST_RESPONSE,
        ),
        (res("watch", "pods"), Level.METADATA),
        (res("get", "configmaps", name="x"), Level.METADATA),
        (nonres("/apis"), Level.METADATA),
        (res("create", "configmaps"), Level.REQUEST),
        (res("patch", "deployments", group="apps", name="web"), Level.REQUEST),
        (res("get", "serviceaccounts", name="default"), Level.METADATA),
    ],
)
def test_default_policy_levels(attrs: RequestAttributes, level: Level) -> None:
    p = default_policy()
    # RequestReceived is kept, except for gets and lists of anything but credentials
    quiet = (
        attrs.verb in ("get", "list")
        and level is Level.METADATA
        and attrs.resource not in ("secrets", "tokenreviews")
        and attrs.api_group != "rbac.authorization.k8s.io"
    )
    omitted = frozenset({Stage.REQUEST_RECEIVED}) if quiet else frozenset()
    assert p.level_for(attrs) == (level, omitted)
    assert p.decide(attrs).omit_managed_fields is True


def run_request(
    log: AuditLog,
    p: Policy,
    attrs: RequestAttributes,
    body: Any,
    code: int,
    response: Any,
    *,
    uri: str = "/api/v1/namespaces/default/secrets",
) -> AuditEvent:
    ev = AuditEvent.for_request(p, attrs, request_uri=uri, received=T0)
    log.record(ev, Stage.REQUEST_RECEIVED)
    ev.set_authorization(True, 'RBAC: allowed by RoleBinding "edit/default"')
    ev.set_request_object(body)
    ev.set_response(code, response)
    log.record(ev, Stage.RESPONSE_COMPLETE, T0 + timedelta(milliseconds=5))
    return ev


def secret(name: str = "db") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": "default",
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": orjson.dumps(
                    {"data": {"password": SECRET_B64}}
                ).decode()
            },
        },
        "data": {"password": SECRET_B64},
        "stringData": {"plain": SECRET_VALUE},
    }


def test_default_policy_never_writes_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, redact_secrets=False) as log:  # the policy alone keeps it out
        run_request(log, default_policy(), res("create", "secrets"), secret(), 201, secret())
    raw = path.read_text()
    assert SECRET_VALUE not in raw and SECRET_B64 not in raw
    received, complete = lines(path)
    assert received["stage"] == "RequestReceived" and complete["stage"] == "ResponseComplete"
    for e in (received, complete):
        assert e["level"] == "Metadata"
        assert "requestObject" not in e and "responseObject" not in e
    assert complete["objectRef"] == {
        "resource": "secrets",
        "namespace": "default",
        "name": "db",  # filled from the body, as Kubernetes does at Metadata
        "apiVersion": "v1",
    }


def test_default_policy_logs_rbac_objects_in_full(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {
            "name": "reader",
            "namespace": "default",
            "managedFields": [{"manager": "kubectl"}],
        },
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
    }
    with AuditLog(path) as log:
        run_request(
            log,
            default_policy(),
            res("create", "roles", group="rbac.authorization.k8s.io"),
            role,
            201,
            {**role, "metadata": {**role["metadata"], "uid": "u1", "resourceVersion": "7"}},
        )
    complete = lines(path)[1]
    assert complete["level"] == "RequestResponse"
    assert complete["requestObject"]["rules"] == role["rules"]
    assert complete["responseObject"]["metadata"]["uid"] == "u1"
    # omitManagedFields: true in the default policy; the caller's object is untouched
    assert "managedFields" not in complete["requestObject"]["metadata"]
    assert "managedFields" not in complete["responseObject"]["metadata"]
    assert role["metadata"]["managedFields"] == [{"manager": "kubectl"}]


def test_default_policy_does_not_log_health_endpoints(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        for url in ("/livez", "/readyz", "/healthz/etcd", "/version", "/metrics"):
            ev = AuditEvent.for_request(default_policy(), nonres(url), request_uri=url)
            assert not ev.enabled
            ev.set_response(200, "ok")
            for stage in Stage:
                assert not log.record(ev, stage)
    assert path.read_bytes() == b""


# --- events ---------------------------------------------------------------------------------


def test_event_shape() -> None:
    p = policy("- level: Request\n")
    attrs = res("get", "pods", name="web-0", sub="log", user="alice", groups=("dev",))
    ev = AuditEvent(
        attrs,
        p.decide(attrs),
        request_uri="/api/v1/namespaces/default/pods/web-0/log?container=c",
        user=UserInfo("admin", uid="u-1", groups=("system:masters",), extra={"scope": ["a"]}),
        impersonated_user=UserInfo("alice", groups=("dev",)),
        source_ips=["10.0.0.9", "127.0.0.1"],
        user_agent="kubectl/v1.30.0" + "x" * 2000,
        received=T0,
    )
    ev.set_authorization(False, "no RBAC policy matched")
    ev.annotate("example.com/note", "n")
    first = ev.event(Stage.REQUEST_RECEIVED)
    ev.set_response(
        403,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": 'pods "web-0" is forbidden',
            "reason": "Forbidden",
            "details": {"name": "web-0", "kind": "pods"},
            "code": 403,
        },
    )
    done = ev.event(Stage.RESPONSE_COMPLETE, T0 + timedelta(seconds=1, microseconds=1))
    assert first is not None and done is not None
    assert list(done) == [
        "kind",
        "apiVersion",
        "level",
        "auditID",
        "stage",
        "requestURI",
        "verb",
        "user",
        "impersonatedUser",
        "sourceIPs",
        "userAgent",
        "objectRef",
        "responseStatus",
        "requestReceivedTimestamp",
        "stageTimestamp",
        "annotations",
    ]
    assert done["kind"] == "Event" and done["apiVersion"] == "audit.k8s.io/v1"
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", done["auditID"]
    )
    assert first["auditID"] == done["auditID"]
    assert done["user"] == {
        "username": "admin",
        "uid": "u-1",
        "groups": ["system:masters"],
        "extra": {"scope": ["a"]},
    }
    assert done["impersonatedUser"] == {"username": "alice", "groups": ["dev"]}
    assert done["userAgent"].endswith("...TRUNCATED") and len(done["userAgent"]) == 1024 + 12
    assert done["objectRef"] == {
        "resource": "pods",
        "namespace": "default",
        "name": "web-0",
        "apiVersion": "v1",
        "subresource": "log",
    }
    assert done["responseStatus"] == {
        "metadata": {},
        "status": "Failure",
        "message": 'pods "web-0" is forbidden',
        "reason": "Forbidden",
        "details": {"name": "web-0", "kind": "pods"},
        "code": 403,
    }
    assert (
        first["requestReceivedTimestamp"]
        == first["stageTimestamp"]
        == "2026-12-05T10:00:00.123456Z"
    )
    assert done["stageTimestamp"] == "2026-12-05T10:00:01.123457Z"
    assert done["annotations"] == {
        "authorization.k8s.io/decision": "forbid",
        "authorization.k8s.io/reason": "no RBAC policy matched",
        "example.com/note": "n",
    }
    assert "responseStatus" not in first  # not known yet at RequestReceived


def test_success_status_and_timestamps() -> None:
    assert (
        format_timestamp(datetime(2026, 12, 5, 10, 0, 0, tzinfo=UTC))
        == "2026-12-05T10:00:00.000000Z"
    )
    plus_two = datetime(2026, 12, 5, 12, 0, 0, 5, tzinfo=UTC) + timedelta(0)
    assert format_timestamp(plus_two.astimezone(UTC)) == "2026-12-05T12:00:00.000005Z"
    attrs = res("get", "pods", name="p")
    ev = AuditEvent(attrs, policy("- level: Metadata\n").decide(attrs), request_uri="/x")
    ev.set_response(200, {"kind": "Pod"})
    done = ev.event(Stage.RESPONSE_COMPLETE)
    assert done is not None and done["responseStatus"] == {"metadata": {}, "code": 200}
    ev.set_response(502, "upstream gone")
    done = ev.event(Stage.RESPONSE_COMPLETE)
    assert done is not None
    assert done["responseStatus"] == {
        "metadata": {},
        "status": "Failure",
        "message": "upstream gone",
        "code": 502,
    }
    assert "annotations" not in done
    ev.set_panic("boom")
    panic = ev.event(Stage.PANIC)
    assert panic is not None and panic["stage"] == "Panic"
    assert (
        panic["responseStatus"]["code"] == 500
        and panic["responseStatus"]["reason"] == "InternalError"
    )


def test_levels_decide_which_objects_are_kept() -> None:
    body = {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}
    kept = {}
    for level in ("Metadata", "Request", "RequestResponse"):
        attrs = res("create", "configmaps")
        ev = AuditEvent(attrs, policy(f"- level: {level}\n").decide(attrs), request_uri="/x")
        ev.set_request_object(body)
        ev.set_response(201, body)
        e = ev.event(Stage.RESPONSE_COMPLETE)
        assert e is not None
        kept[level] = ("requestObject" in e, "responseObject" in e)
    assert kept == {
        "Metadata": (False, False),
        "Request": (True, False),
        "RequestResponse": (True, True),
    }
    # at RequestResponse a Status body is the responseObject too, as Kubernetes logs it
    attrs = res("delete", "configmaps", name="c")
    ev = AuditEvent(attrs, policy("- level: RequestResponse\n").decide(attrs), request_uri="/x")
    gone = {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}
    ev.set_response(200, gone)
    e = ev.event(Stage.RESPONSE_COMPLETE)
    assert e is not None and e["responseObject"] == gone
    assert e["responseStatus"] == {"metadata": {}, "status": "Success", "code": 200}
    # non-resource requests never carry objects
    attrs = nonres("/api", verb="post")
    ev = AuditEvent(attrs, policy("- level: RequestResponse\n").decide(attrs), request_uri="/api")
    ev.set_request_object(body)
    ev.set_response(200, body)
    e = ev.event(Stage.RESPONSE_COMPLETE)
    assert e is not None and "requestObject" not in e and "responseObject" not in e
    assert "objectRef" not in e
    with pytest.raises(ValueError, match="level None"):
        new_event(
            stage=Stage.PANIC,
            level=Level.NONE,
            request_uri="/",
            verb="get",
            user=UserInfo("a"),
            received=T0,
        )


def test_omit_stages_emit_nothing_for_those_stages(tmp_path: Path) -> None:
    p = policy(
        "- level: Metadata\n  verbs: [watch]\n  omitStages: [ResponseStarted]\n- level: Metadata\n",
        head="omitStages: [RequestReceived]\n",
    )
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        for verb in ("watch", "get"):
            ev = AuditEvent.for_request(p, res(verb, "pods"), request_uri="/x")
            ev.set_response(200)
            for stage in (Stage.REQUEST_RECEIVED, Stage.RESPONSE_STARTED, Stage.RESPONSE_COMPLETE):
                log.record(ev, stage)
    assert [(e["verb"], e["stage"]) for e in lines(path)] == [
        ("watch", "ResponseComplete"),
        ("get", "ResponseStarted"),
        ("get", "ResponseComplete"),
    ]


# --- the redaction safety net ---------------------------------------------------------------


def test_redaction_under_a_user_policy_logging_secrets_in_full(tmp_path: Path) -> None:
    p = policy("- level: RequestResponse\n")
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        run_request(log, p, res("create", "secrets"), secret(), 201, secret())
        run_request(  # a merge patch has no kind: redacted because it goes to `secrets`
            log,
            p,
            res("patch", "secrets", name="db"),
            {"data": {"password": SECRET_B64}},
            200,
            secret(),
        )
        run_request(  # a JSON patch: every operation's value
            log,
            p,
            res("patch", "secrets", name="db"),
            [{"op": "replace", "path": "/data/password", "value": SECRET_B64}],
            200,
            secret(),
        )
        run_request(  # a list: items have no kind in a SecretList
            log,
            p,
            res("list", "secrets"),
            None,
            200,
            {"kind": "SecretList", "items": [{k: v for k, v in secret().items() if k != "kind"}]},
        )
        run_request(  # a Secret inside a generic List, from any resource
            log,
            p,
            res("get", "things", group="example.com"),
            None,
            200,
            {"kind": "List", "items": [secret()]},
        )
    raw = path.read_text()
    assert SECRET_VALUE not in raw and SECRET_B64 not in raw
    events = [e for e in lines(path) if e["stage"] == "ResponseComplete"]
    create = events[0]
    assert create["level"] == "RequestResponse"
    assert create["requestObject"]["data"] == {"password": REDACTED}  # keys kept
    assert create["requestObject"]["stringData"] == {"plain": REDACTED}
    annotations = create["responseObject"]["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/last-applied-configuration"] == REDACTED
    assert events[1]["requestObject"] == {"data": {"password": REDACTED}}
    assert events[2]["requestObject"][0]["value"] == REDACTED
    assert events[3]["responseObject"]["items"][0]["data"] == {"password": REDACTED}
    assert events[4]["responseObject"]["items"][0]["data"] == {"password": REDACTED}


def test_redaction_can_be_turned_off_and_covers_tokens() -> None:
    attrs = res("create", "secrets")
    ev = AuditEvent(
        attrs, policy("- level: Request\n").decide(attrs), request_uri="/x", redact_secrets=False
    )
    ev.set_request_object(secret())
    e = ev.event(Stage.RESPONSE_COMPLETE)
    assert e is not None and e["requestObject"]["data"]["password"] == SECRET_B64  # as Kubernetes
    token = {"kind": "TokenRequest", "status": {"token": "eyJhbGciOi", "expirationTimestamp": "x"}}
    assert redact_secrets(token)["status"] == {"token": REDACTED, "expirationTimestamp": "x"}
    review = {"kind": "TokenReview", "spec": {"token": "eyJhbGciOi"}}
    assert redact_secrets(review)["spec"]["token"] == REDACTED
    assert token["status"]["token"] == "eyJhbGciOi"  # never mutated
    table = {"kind": "Table", "rows": [{"cells": ["db"], "object": secret()}]}
    assert redact_secrets(table)["rows"][0]["object"]["data"] == {"password": REDACTED}


def test_the_writer_redacts_events_built_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    event = new_event(
        stage=Stage.RESPONSE_COMPLETE,
        level=Level.REQUEST,
        request_uri="/api/v1/namespaces/default/secrets",
        verb="create",
        user=UserInfo("alice"),
        received=T0,
        object_ref={"resource": "secrets", "namespace": "default", "apiVersion": "v1"},
        request_object=secret(),
        redact=False,
    )
    assert event["requestObject"]["data"]["password"] == SECRET_B64
    with AuditLog(path) as log:
        log.write(event)
    assert SECRET_B64 not in path.read_text()
    assert event["requestObject"]["data"]["password"] == SECRET_B64  # the caller's dict is intact


# --- the writer -----------------------------------------------------------------------------


def small_event(i: int, t: datetime = T0) -> dict[str, Any]:
    return new_event(
        stage=Stage.RESPONSE_COMPLETE,
        level=Level.METADATA,
        request_uri=f"/api/v1/namespaces/default/pods/p{i}",
        verb="get",
        user=UserInfo("alice"),
        received=t,
        stage_time=t,
        object_ref={"resource": "pods", "namespace": "default", "name": f"p{i}"},
    )


def test_rotation_by_size_limits_backups_and_keeps_modes(tmp_path: Path) -> None:
    d = tmp_path / "logs" / "r1"
    path = d / "audit.log"
    line = len(orjson.dumps(small_event(0))) + 1
    with AuditLog(path, max_bytes=3 * line, backups=2) as log:
        for i in range(20):
            log.write(small_event(i % 10))  # same length whatever i
        assert log.rotations == 6
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d.parent).st_mode) == 0o700
    backups = backup_files(path)
    assert len(backups) == 2
    for b in backups:
        assert re.fullmatch(r"audit-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}\.log", b.name)
        assert stat.S_IMODE(os.stat(b).st_mode) == 0o600
        assert len(lines(b)) == 3  # never split a line, never more than max_bytes
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(lines(path)) == 2  # 20 = 6 full files + 2
    assert sorted(os.listdir(d)) == sorted([b.name for b in backups] + ["audit.log"])
    # the kept backups are the newest: the last 8 events, in order
    kept = [e["objectRef"]["name"] for b in [*backups, path] for e in lines(b)]
    assert kept == [f"p{i % 10}" for i in range(12, 20)]


def test_zero_backups_keeps_all_and_zero_size_never_rotates(tmp_path: Path) -> None:
    line = len(orjson.dumps(small_event(0))) + 1
    with AuditLog(tmp_path / "a" / "audit.log", max_bytes=line, backups=0) as log:
        for i in range(6):
            log.write(small_event(i))
    assert len(backup_files(tmp_path / "a" / "audit.log")) == 5
    with AuditLog(tmp_path / "b" / "audit.log", max_bytes=0) as log:
        for i in range(6):
            log.write(small_event(i))
        assert log.rotations == 0


def test_restart_continues_the_size_count(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    line = len(orjson.dumps(small_event(0))) + 1
    with AuditLog(path, max_bytes=4 * line) as log:
        for i in range(3):
            log.write(small_event(i))
    with AuditLog(path, max_bytes=4 * line) as log:  # a restarted process
        assert log.size == 3 * line
        log.write(small_event(3))
        assert log.rotations == 0
        log.write(small_event(4))
        assert log.rotations == 1
    (backup,) = backup_files(path)
    assert [e["objectRef"]["name"] for e in lines(backup)] == ["p0", "p1", "p2", "p3"]
    assert [e["objectRef"]["name"] for e in lines(path)] == ["p4"]


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"")
    os.chmod(path, 0o640)
    with AuditLog(path) as log:
        log.write(small_event(1))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


# --- reading back ---------------------------------------------------------------------------


def write_replica(
    path: Path, offsets_ms: list[int], *, user: str = "alice", verb: str = "get"
) -> None:
    with AuditLog(path) as log:
        for ms in offsets_ms:
            e = small_event(ms, T0 + timedelta(milliseconds=ms))
            e["user"] = {"username": user}
            e["verb"] = verb
            log.write(e)


def test_merged_reading_orders_replicas_by_time(tmp_path: Path) -> None:
    a, b = tmp_path / "r1" / "audit.log", tmp_path / "r2" / "audit.log"
    write_replica(a, [0, 20, 40, 60], user="alice")
    write_replica(b, [10, 30, 50], user="bob", verb="list")
    events = list(read_events([a, b]))
    assert [e["objectRef"]["name"] for e in events] == [f"p{i}" for i in range(0, 70, 10)]
    assert [e["objectRef"]["name"] for e in read_events([a, b, a])] == [
        e["objectRef"]["name"] for e in events
    ]  # a log named twice is read once


def test_reading_includes_rotated_backups_in_order(tmp_path: Path) -> None:
    a, b = tmp_path / "r1" / "audit.log", tmp_path / "r2" / "audit.log"
    line = len(orjson.dumps(small_event(10, T0))) + 1  # every name here has two digits
    with AuditLog(a, max_bytes=2 * line, backups=0) as log:
        for ms in (10, 30, 50, 70, 90):
            log.write(small_event(ms, T0 + timedelta(milliseconds=ms)))
    write_replica(b, [20, 40, 60, 80])
    assert len(backup_files(a)) == 2
    names = [e["objectRef"]["name"] for e in read_events([a, b])]
    assert names == [f"p{i}" for i in range(10, 100, 10)]


def test_filters(tmp_path: Path) -> None:
    a, b = tmp_path / "r1" / "audit.log", tmp_path / "r2" / "audit.log"
    write_replica(a, [0, 20, 40, 60], user="alice")
    write_replica(b, [10, 30, 50], user="bob", verb="list")
    with AuditLog(b) as log:
        e = small_event(70, T0 + timedelta(milliseconds=70))
        e["objectRef"] = {
            "resource": "pods",
            "subresource": "log",
            "namespace": "prod",
            "name": "x",
        }
        log.write(e)
        e = small_event(80, T0 + timedelta(milliseconds=80))
        e["objectRef"] = {"resource": "nodes", "name": "n1"}
        log.write(e)

    def names(**kw: Any) -> list[str]:
        return [e["objectRef"]["name"] for e in read_events([a, b], **kw)]

    assert names(user="bob") == ["p10", "p30", "p50"]
    assert names(verb="get", since=T0 + timedelta(milliseconds=20)) == [
        "p20",
        "p40",
        "p60",
        "x",
        "n1",
    ]
    assert names(since=(T0 + timedelta(milliseconds=55)).replace(tzinfo=None)) == ["p60", "x", "n1"]
    assert names(resource="pods/log") == ["x"]
    assert names(resource="pods", namespace="prod") == ["x"]
    assert names(namespace="") == ["n1"]  # cluster-scoped
    assert names(resource="nodes") == ["n1"]
    assert names(user="nobody") == []


def test_malformed_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    a = tmp_path / "audit.log"
    write_replica(a, [0, 10])
    with open(a, "ab") as f:
        f.write(b"not json\n")
        f.write(b"[1, 2]\n")
        f.write(b'{"stageTimestamp": "yesterday"}\n')
        f.write(b"\n")
    write_replica(a, [20])
    with open(a, "ab") as f:
        f.write(b'{"kind": "Event", "stageTi')  # torn by a crash
    stats = ReadStats()
    names = [e["objectRef"]["name"] for e in read_events([a], stats=stats)]
    assert names == ["p0", "p10", "p20"]
    assert stats.malformed == 4 and stats.events == 3
    assert stats.examples[0] == f"{a}:3"


# --- follow ---------------------------------------------------------------------------------


async def collect(gen: AsyncIterator[dict[str, Any]], out: list[str]) -> None:
    async for e in gen:
        out.append(e["objectRef"]["name"])


async def wait_for(out: list[str], n: int) -> None:
    for _ in range(500):
        if len(out) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {out}")


async def test_follow_picks_up_new_lines_and_survives_rotation(tmp_path: Path) -> None:
    a, b = tmp_path / "r1" / "audit.log", tmp_path / "r2" / "audit.log"
    write_replica(a, [0, 20])
    # r2 does not exist yet: followed from when it appears
    out: list[str] = []
    stats = ReadStats()
    gen = follow([a, b], poll_interval=0.01, stats=stats)
    task = asyncio.create_task(collect(gen, out))
    try:
        await wait_for(out, 2)
        assert out == ["p0", "p20"]
        line = len(orjson.dumps(small_event(0, T0))) + 1
        log_a = AuditLog(a, max_bytes=3 * line, backups=5)
        log_b = AuditLog(b)
        log_b.write(small_event(30, T0 + timedelta(milliseconds=30)))
        log_a.write(small_event(40, T0 + timedelta(milliseconds=40)))
        await wait_for(out, 4)
        assert out[2:] == ["p30", "p40"]  # one round, merged by time
        # a partial line waits for its end
        with open(b, "ab") as f:
            half = orjson.dumps(small_event(45, T0 + timedelta(milliseconds=45))) + b"\n"
            f.write(half[:20])
            await asyncio.sleep(0.05)
            f.write(half[20:])
        await wait_for(out, 5)
        assert out[4] == "p45"
        log_b.close()
        log_b = AuditLog(b)
        # rotations: several, while the follower sleeps between polls
        for ms in range(50, 120, 10):
            log_a.write(small_event(ms, T0 + timedelta(milliseconds=ms)))
        assert log_a.rotations >= 2
        await wait_for(out, 12)
        assert out[5:] == [f"p{ms}" for ms in range(50, 120, 10)]
        for ms in (120, 130):
            log_a.write(small_event(ms, T0 + timedelta(milliseconds=ms)))
        log_b.write(small_event(125, T0 + timedelta(milliseconds=125)))
        await wait_for(out, 15)
        assert sorted(out[12:]) == ["p120", "p125", "p130"]
        log_a.close()
        log_b.close()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await gen.aclose()
    assert stats.malformed == 0
    assert len(out) == len(set(out)) == 15  # nothing lost, nothing twice


async def test_follow_applies_filters_and_can_stop(tmp_path: Path) -> None:
    a = tmp_path / "audit.log"
    write_replica(a, [0, 10], user="alice")
    write_replica(a, [20], user="bob")
    seen: list[str] = []
    async for e in follow([a], user="bob", poll_interval=0.01):
        seen.append(e["objectRef"]["name"])
        if len(seen) == 1:
            write_replica(a, [30], user="alice")
            write_replica(a, [40], user="bob")
        if len(seen) == 2:
            break
    assert seen == ["p20", "p40"]


def test_tokens_are_redacted_by_where_they_were_sent_not_by_kind():
    from haplane.auth.audit import redact_event

    review = {
        "objectRef": {"resource": "tokenreviews", "apiGroup": "authentication.k8s.io"},
        "requestObject": {"spec": {"token": "eyJsecret"}},  # no kind: still a TokenReview
    }
    assert "eyJsecret" not in str(redact_event(review))
    minted = {
        "objectRef": {"resource": "serviceaccounts", "subresource": "token"},
        "responseObject": {"status": {"token": "eyJminted"}},
    }
    assert "eyJminted" not in str(redact_event(minted))


def test_lines_written_directly_are_the_events_written_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`AuditEvent.line` (Metadata-level events serialised straight to their line) writes,
    through `AuditLog.record`, exactly the bytes the full path (`event`, then the writer's
    redaction and serialisation) writes: random requests whose every field varies on its
    own (the same user name with another uid, groups or extra; the same URI with another
    verb; bodies that fill the objectRef; every stage; failures; long and undecodable user
    agents)."""
    import random

    from haplane.api.request import attributes, request_info

    rnd = random.Random(7)
    everything = Policy.from_text(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Metadata\n"
    )
    default = default_policy()
    direct = AuditLog(tmp_path / "direct.log", max_bytes=0)
    full = AuditLog(tmp_path / "full.log", max_bytes=0)
    served = 0
    real_line = AuditEvent.line

    def counting(ev: AuditEvent, stage: Stage, at: datetime | None = None) -> bytes | None:
        nonlocal served
        out = real_line(ev, stage, at)
        served += out is not None
        return out

    for i in range(800):
        method = rnd.choice(["GET", "GET", "DELETE", "POST", "PUT"])
        path = rnd.choice(
            [
                "/api/v1/namespaces/a/configmaps/c",
                "/api/v1/namespaces/a/configmaps",
                "/apis/apps/v1/deployments",
                "/api/v1/namespaces/a/secrets/s",
                "/api",
            ]
        )
        user = UserInfo(
            rnd.choice(["u", 'w\u00e9"q']),
            rnd.choice(["", "1", "2"]),
            tuple(rnd.sample(["g", "h", "system:authenticated"], rnd.randint(0, 3))),
            rnd.choice([{}, {"scopes": ["a", "b"]}, {"scopes": ["b"]}]),
        )
        attrs = attributes(request_info(method, path, {}), user)
        policy = everything if rnd.random() < 0.5 else default
        agent = rnd.choice(["", "kubectl/1.32", "x" * 1100, "bad \udc80 agent"])
        query = rnd.choice(["", "?watch=1", "?x=\u2603"])
        ips = rnd.choice([(), ("127.0.0.1",), ("10.0.0.1", "::1")])
        at = datetime(2026, 1, 1, 0, 0, i % 60, i, tzinfo=UTC)
        fixed = {"audit_id": f"id-{i}", "received": at}
        args = {"request_uri": path + query, "user": user, "source_ips": ips, "user_agent": agent}
        events = [
            AuditEvent(attrs, policy.decide(attrs), **args, **fixed),  # type: ignore[arg-type]
            AuditEvent(attrs, policy.decide(attrs), **args, **fixed),  # type: ignore[arg-type]
        ]
        if rnd.random() < 0.3:
            body = {"metadata": {"name": "n", "uid": "u-9", "resourceVersion": "7"}}
            for ev in events:
                ev.set_request_object(body)
        if rnd.random() < 0.7:
            allowed, reason = rnd.random() < 0.8, rnd.choice(["", "RBAC: by x", 'q"uote'])
            for ev in events:
                ev.set_authorization(allowed, reason)
        code = rnd.choice([200, 200, 201, 301, 404, 403])
        failure = {"kind": "Status", "code": code, "message": "no", "status": "Failure"}
        body = failure if code >= 300 and rnd.random() < 0.5 else None
        for ev in events:
            ev.set_response(code, body)
        for stage in (Stage.REQUEST_RECEIVED, Stage.RESPONSE_STARTED, Stage.RESPONSE_COMPLETE):
            when = at if rnd.random() < 0.5 else datetime(2026, 1, 2, tzinfo=UTC)
            monkeypatch.setattr(AuditEvent, "line", counting)
            direct.record(events[0], stage, when)
            monkeypatch.setattr(AuditEvent, "line", lambda *_: None)
            full.record(events[1], stage, when)
    monkeypatch.undo()
    written = (tmp_path / "direct.log").read_bytes().splitlines()
    expected = (tmp_path / "full.log").read_bytes().splitlines()
    assert len(written) == len(expected) > 1000
    for a, b in zip(written, expected, strict=True):
        assert a == b
    assert served > 500, served
