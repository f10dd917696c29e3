"""The `ops.haplane.dev/v1` API: platform operations as objects, and four-eyes approvals.

Layer: api. Served by the replicas of every region from the **global control etcd** (the
server gives these types a storage over its global client, unfenced), so an operation can be
asked for, approved and followed while the active region is down, fenced or mid-switchover,
through any region's balancer. RBAC and audit apply at the replica that serves the request.
The failover controller carries approved operations out (`haplane.gate.controller`), writing
phases into their status (`haplane.store.operations` holds the key layout and phases).

Kinds (cluster-scoped; `RoleGrant` is described at `RoleGrantStrategy` and in `haplane.api.grants`):
- `Switchover`: `spec.targetRegion`, `spec.reason`, optional `force` (an unplanned failover),
  `catchUpTimeoutSeconds` (default 10) and `breakGlass`. The spec is immutable; the status is
  the platform's alone (no `status` subresource: nobody may write a phase).
- `ApprovalPolicy`: which operations (`spec.operations`, kinds) need how many approvals
  (`spec.approvals`) from whom (`spec.approvers`: `groups`, `clusterRoles` bound cluster-wide,
  `users`), and how long a request waits (`spec.expireAfterSeconds`, default 3600). Every
  policy that names an operation's kind must be satisfied. The default policy
  (`switchover-approval`: one approver from `haplane:dr-operator` or `haplane:platform-admin`)
  is created by the replicas when absent and may not be deleted or weakened to nothing.

The approval subresource follows Kubernetes' CertificateSigningRequest (`kubectl certificate
approve`): PUT `.../switchovers/NAME/approval` with the object as read, `status.conditions`
ending in one new `{type: Approved | Denied, reason, message}`. The replica checks, under the
object's version (a compare-and-swap; a stale `resourceVersion` or another `uid` is 409), that
the request is still `Pending` and not expired, that the approver is not the requester and
qualifies under a policy, and records `{user, groups, time}`; enough distinct approvers make it
`Approved`. Refusals: own request 403, not an approver 403, expired or already decided 409.
`spec.breakGlass` (with a reason) skips approval for `haplane:platform-admin` (or
`system:masters`) only; it is logged loudly and annotated in the audit event.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from haplane.auth.user import ANONYMOUS, UserInfo
from haplane.store import ActiveRegion
from haplane.store.operations import (
    APPROVED,
    EXPIRED,
    GROUP,
    KIND_PLURALS,
    PENDING,
    REJECTED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    VERSION,
    now_rfc3339,
    ops_prefix,
    parse_time,
)

from . import errors
from .generic_store import GenericStore
from .resource_version import VersionContext
from .resources import ResourceType, Strategy
from .validation import FieldError

log = logging.getLogger("haplane.api.ops")

Obj = dict[str, Any]
DEFAULT_EXPIRY = 3600
# a Running Drill or MaintenanceAction may not be deleted for this long after its start:
# longer than the agent's longest timeout (a drill's 900 s)
AGENT_PROTECTED = 1000.0
AUTOMATIC_PREFIX = "automatic-"  # Switchovers the failover controller records (gate.operations)
# who may record them through the API: the failover controller's ServiceAccount holds this
# ClusterRole (haplane.auth.rbac); a record names the epoch its switch committed
RECORDER_ROLE = "haplane:failover-controller"
AUTOMATIC_FIELDS = frozenset(
    {"targetRegion", "reason", "automatic", "epoch", "fromRegion", "action"}
)
AUTOMATIC_ACTIONS = ("failover", "failback")
# the failover controller makes no decision of its own while a planned switchover catches up
MAX_CATCH_UP = 60
MAX_EXPIRY = 7 * 24 * 3600
BREAK_GLASS_ROLE = "haplane:platform-admin"
MASTERS = "system:masters"
DEFAULT_POLICY = "switchover-approval"
DEFAULT_LABEL = "ops.haplane.dev/default"
BREAK_GLASS_ANNOTATION = "ops.haplane.dev/break-glass"
APPROVAL_ANNOTATION = "ops.haplane.dev/approval"
_INVALID = "FieldValueInvalid"
_REQUIRED = "FieldValueRequired"
_FORBIDDEN = "FieldValueForbidden"


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _err(path: str, reason: str, message: str, value: Any = None) -> FieldError:
    return FieldError(path, reason, message, None if value is None else json.dumps(value))


# ---- Switchover --------------------------------------------------------------------------


class OperationStrategy(Strategy):
    """What every operation kind shares: its spec never changes once asked for (ask again
    instead), and while it runs it may not be deleted for `protected_while_running` seconds
    from its start (None: until it ends)."""

    kind = ""
    protected_while_running: float | None = None

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        if new.get("spec") != old.get("spec"):
            return [_err("spec", _FORBIDDEN, f"a {self.kind}'s spec is immutable: ask anew")]
        return []

    def refuse_delete(self, obj: Obj) -> str | None:
        status = _dict(obj.get("status"))
        if status.get("phase") != RUNNING:
            return None
        started = parse_time(status.get("startedAt"))
        limit = self.protected_while_running
        if limit is None or started is None or time.time() - started < limit:
            return f"the {self.kind} is being carried out: delete it once it has finished"
        return None


class SwitchoverStrategy(OperationStrategy):
    kind = "Switchover"

    def validate(self, obj: Obj) -> list[FieldError]:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return [_err("spec", _REQUIRED, "targetRegion and reason")]
        errs: list[FieldError] = []
        to = spec.get("targetRegion")
        if not isinstance(to, str) or not to:
            errs.append(_err("spec.targetRegion", _REQUIRED, "the region to make active"))
        errs += _reason_errors(spec)
        if "force" in spec and not isinstance(spec["force"], bool):
            errs.append(_err("spec.force", _INVALID, "true or false", spec["force"]))
        limit = spec.get("catchUpTimeoutSeconds", 10)
        if not _number_within(limit, 0.1, MAX_CATCH_UP):
            errs.append(
                _err(
                    "spec.catchUpTimeoutSeconds", _INVALID, f"seconds, 0.1 to {MAX_CATCH_UP}", limit
                )
            )
        name = str(_dict(obj.get("metadata")).get("name") or "")
        if _dict(obj.get("status")).get("recorded") is True:  # set only by prepare_create
            return errs + _automatic_errors(spec, name)
        if name.startswith(AUTOMATIC_PREFIX):
            errs.append(
                _err(
                    "metadata.name",
                    _INVALID,
                    f"{AUTOMATIC_PREFIX}* names the failover controller's own records",
                    name,
                )
            )
        if "automatic" in spec:
            errs.append(
                _err(
                    "spec.automatic",
                    _FORBIDDEN,
                    "only the failover controller records automatic switchovers",
                )
            )
        errs += _unknown({k: v for k, v in spec.items() if k != "automatic"}, SWITCHOVER_FIELDS)
        return errs


SWITCHOVER_FIELDS = frozenset(
    {"targetRegion", "reason", "force", "catchUpTimeoutSeconds", "breakGlass"}
)


def _automatic_errors(spec: Obj, name: str) -> list[FieldError]:
    """A record of an automatic switch: `automatic-epoch-N`, naming epoch N, the action and
    the region it left."""
    errs: list[FieldError] = []
    epoch = spec.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        errs.append(_err("spec.epoch", _INVALID, "the epoch the switch committed", epoch))
    elif name != f"{AUTOMATIC_PREFIX}epoch-{epoch}":
        errs.append(_err("metadata.name", _INVALID, f"{AUTOMATIC_PREFIX}epoch-{epoch}", name))
    if spec.get("action") not in AUTOMATIC_ACTIONS:
        errs.append(
            _err(
                "spec.action",
                "FieldValueNotSupported",
                f"one of {', '.join(AUTOMATIC_ACTIONS)}",
                spec.get("action"),
            )
        )
    if not isinstance(spec.get("fromRegion"), str) or not spec.get("fromRegion"):
        errs.append(_err("spec.fromRegion", _REQUIRED, "the region active before"))
    return errs + _unknown(spec, AUTOMATIC_FIELDS)


# ---- ApprovalPolicy ----------------------------------------------------------------------


OPERATION_KINDS = frozenset({"Switchover", "RoleGrant", "Drill", "MaintenanceAction"})
PLURALS = KIND_PLURALS  # where each kind is stored (the store's map)
# what a MaintenanceAction may do, and the roles (any one) that may ask for it: the seed's
# separation of duties, checked again by the agent against the component's kind
MAINTENANCE_ACTIONS = (
    "restart",
    "drain",
    "undrain",
    "rotate-certificates",
    "rotate-encryption-key",
    "remove-encryption-key",
    "run-runbook",
)
ON_A_COMPONENT = ("restart", "drain", "undrain")  # the actions that name a component
PLATFORM_ACTIONS = (  # platform-admins only
    "rotate-certificates",
    "rotate-encryption-key",
    "remove-encryption-key",
)
# who may ask for each action (any one role; the agent checks a component's kind again): the
# RBAC verb `create` on maintenanceactions is shared by the operator roles
ACTION_ROLES: dict[str, tuple[str, ...]] = {
    **{a: ("haplane:platform-admin",) for a in PLATFORM_ACTIONS},
    **{
        a: ("haplane:etcd-operator", "haplane:gate-operator", "haplane:platform-admin")
        for a in ON_A_COMPONENT
    },
    # any operator: the agent checks each command the runbook runs against the asker's roles
    "run-runbook": (
        "haplane:dr-operator",
        "haplane:etcd-operator",
        "haplane:gate-operator",
        "haplane:platform-admin",
    ),
}
DRILL_SCENARIOS = (
    "replica-kill",
    "etcd-leader-kill",
    "region-kill",
    "balancers-pause",
    "partition",
    "gate-cut",
    "blip",
    "switchover",
    "replicator-kill",
    "standby-partition",
    "restore",
)
# an operation a policy names: a kind, or a kind and its action ("MaintenanceAction/restart")
OPERATION_NAMES = frozenset(
    {
        *OPERATION_KINDS,
        *(f"MaintenanceAction/{a}" for a in MAINTENANCE_ACTIONS),
        *(f"Drill/{d}" for d in DRILL_SCENARIOS),
    }
)
# drills that move the active region, or may: as much an operation as a switchover
DISRUPTIVE_DRILLS = ("switchover", "region-kill", "partition", "balancers-pause")
DEFAULT_GRANT_POLICY = "rolegrant-approval"
DEFAULT_KEY_POLICY = "encryption-key-approval"
DEFAULT_DRILL_POLICY = "disruptive-drill-approval"
DEFAULT_RUNBOOK_POLICY = "runbook-approval"
RUN_RUNBOOK = "MaintenanceAction/run-runbook"
KEY_ROTATION = "MaintenanceAction/rotate-encryption-key"
KEY_REMOVAL = "MaintenanceAction/remove-encryption-key"
# name -> the operations it must keep naming: every one its default names (see
# `default_policies`; a replica adds those an older default lacks, which only makes it
# stricter)
DEFAULTS: dict[str, tuple[str, ...]] = {
    DEFAULT_POLICY: ("Switchover",),
    DEFAULT_GRANT_POLICY: ("RoleGrant",),
    DEFAULT_KEY_POLICY: (KEY_ROTATION, KEY_REMOVAL),
    DEFAULT_DRILL_POLICY: tuple(f"Drill/{d}" for d in DISRUPTIVE_DRILLS),
    DEFAULT_RUNBOOK_POLICY: (RUN_RUNBOOK,),
}


def operation_names(kind: str, spec: Obj) -> tuple[str, ...]:
    """The names a policy may use for an operation: its kind, and kind/action (a
    MaintenanceAction's action, a Drill's scenario)."""
    action = spec.get("action") if kind == "MaintenanceAction" else spec.get("scenario")
    return (kind, f"{kind}/{action}") if isinstance(action, str) else (kind,)


class ApprovalPolicyStrategy(Strategy):
    def validate(self, obj: Obj) -> list[FieldError]:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return [_err("spec", _REQUIRED, "operations, approvals and approvers")]
        errs: list[FieldError] = []
        ops = spec.get("operations")
        if not isinstance(ops, list) or not ops or not all(isinstance(o, str) for o in ops):
            errs.append(_err("spec.operations", _REQUIRED, "a list of kinds, e.g. [Switchover]"))
        else:
            for i, kind in enumerate(ops):
                if kind not in OPERATION_NAMES:
                    errs.append(
                        _err(
                            f"spec.operations[{i}]",
                            "FieldValueNotSupported",
                            f"supported: {', '.join(sorted(OPERATION_NAMES))}",
                            kind,
                        )
                    )
        n = spec.get("approvals")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
            errs.append(_err("spec.approvals", _INVALID, "how many approvers, 1 to 10", n))
        approvers = spec.get("approvers")
        if not isinstance(approvers, dict):
            errs.append(_err("spec.approvers", _REQUIRED, "groups, clusterRoles and/or users"))
        else:
            named = 0
            for field in ("groups", "clusterRoles", "users"):
                values = approvers.get(field, [])
                if not isinstance(values, list) or not all(
                    isinstance(v, str) and v for v in values
                ):
                    errs.append(_err(f"spec.approvers.{field}", _INVALID, "a list of names"))
                else:
                    named += len(values)
            if named == 0:
                errs.append(
                    _err("spec.approvers", _REQUIRED, "at least one group, clusterRole or user")
                )
        expiry = spec.get("expireAfterSeconds", DEFAULT_EXPIRY)
        if not isinstance(expiry, int) or isinstance(expiry, bool) or not 1 <= expiry <= MAX_EXPIRY:
            errs.append(
                _err("spec.expireAfterSeconds", _INVALID, f"1 to {MAX_EXPIRY} seconds", expiry)
            )
        return errs

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        errs = self.validate(new)
        kinds = DEFAULTS.get(_dict(old.get("metadata")).get("name", ""))
        if errs or kinds is None:
            return errs
        return _weakened(Requirement.of(new), Requirement.of(old), _dict(new.get("spec")), kinds)

    def refuse_delete(self, obj: Obj) -> str | None:
        name = (obj.get("metadata") or {}).get("name")
        if name in DEFAULTS:
            return (
                f"{name} is a default approval policy of the platform: it may be made "
                "stricter, not removed"
            )
        return None


def _weakened(
    new: Requirement, old: Requirement, spec: Obj, kinds: tuple[str, ...]
) -> list[FieldError]:
    """A default policy may only get stricter: at least as many approvals, no approver who
    was not one before, no longer a wait, still naming every operation its default names."""
    errs: list[FieldError] = []
    why = "a default policy may be made stricter, not weaker"
    missing = [k for k in kinds if k not in (spec.get("operations") or ())]
    if missing:
        named = ", ".join(missing)
        errs.append(_err("spec.operations", _FORBIDDEN, f"{why}: it must name {named}"))
    if new.approvals < old.approvals:
        errs.append(_err("spec.approvals", _FORBIDDEN, f"{why}: at least {old.approvals}"))
    for field, was, now in (
        ("groups", old.groups, new.groups),
        ("clusterRoles", old.cluster_roles, new.cluster_roles),
        ("users", old.users, new.users),
    ):
        added = sorted(set(now) - set(was))
        if added:
            errs.append(
                _err(f"spec.approvers.{field}", _FORBIDDEN, f"{why}: {', '.join(added)} added")
            )
    if new.expire_after > old.expire_after:
        errs.append(
            _err("spec.expireAfterSeconds", _FORBIDDEN, f"{why}: at most {old.expire_after}")
        )
    return errs


SWITCHOVER = ResourceType(
    GROUP,
    VERSION,
    "Switchover",
    "switchovers",
    "switchover",
    namespaced=False,
    categories=("haplane",),
    strategy=SwitchoverStrategy(),
    # no update or patch (the spec is immutable, the status the platform's), so nothing but
    # a create fills a request's status, and no apply can create one around it
    verbs=("create", "delete", "get", "list", "watch"),
    subresources=("approval",),
    printer_columns=(
        {"name": "Target", "type": "string", "jsonPath": ".spec.targetRegion"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Requested-By", "type": "string", "jsonPath": ".status.requestedBy.username"},
        {"name": "Approvals", "type": "integer", "jsonPath": ".status.approvalCount"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
)


class RoleGrantStrategy(OperationStrategy):
    """A RoleGrant carries the binding it asks for; the replica of the writable region creates
    it once approved (`haplane.api.grants`). Bindings to the guarded roles are made no other way."""

    kind = "RoleGrant"
    protected_while_running = 120.0  # a grant takes a second; then another replica may

    def validate(self, obj: Obj) -> list[FieldError]:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return [_err("spec", _REQUIRED, "binding and reason")]
        errs = _reason_errors(spec) + _unknown(spec, ROLE_GRANT_FIELDS)
        b = spec.get("binding")
        if not isinstance(b, dict):
            return [*errs, _err("spec.binding", _REQUIRED, "a RoleBinding or ClusterRoleBinding")]
        if b.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            errs.append(
                _err(
                    "spec.binding.kind",
                    _INVALID,
                    "RoleBinding or ClusterRoleBinding",
                    b.get("kind"),
                )
            )
        if not isinstance(b.get("metadata"), dict):
            return [*errs, _err("spec.binding.metadata", _REQUIRED, "name (and namespace)")]
        meta = b["metadata"]
        if not isinstance(meta.get("name"), str) or not meta.get("name"):
            errs.append(_err("spec.binding.metadata.name", _REQUIRED, "the binding's name"))
        if b.get("kind") == "RoleBinding" and not meta.get("namespace"):
            errs.append(_err("spec.binding.metadata.namespace", _REQUIRED, "its namespace"))
        if b.get("kind") == "ClusterRoleBinding" and "namespace" in meta:
            errs.append(_err("spec.binding.metadata.namespace", _FORBIDDEN, "cluster-scoped"))
        for field in ("labels", "annotations"):
            value = meta.get(field, {})
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                errs.append(_err(f"spec.binding.metadata.{field}", _INVALID, "a string map"))
        ref = _dict(b.get("roleRef"))
        if ref.get("kind") not in ("Role", "ClusterRole") or not ref.get("name"):
            errs.append(_err("spec.binding.roleRef", _INVALID, "kind Role or ClusterRole, a name"))
        subjects = b.get("subjects")
        if not isinstance(subjects, list) or not subjects:
            errs.append(_err("spec.binding.subjects", _REQUIRED, "who is granted the role"))
        return errs


ROLE_GRANT = ResourceType(
    GROUP,
    VERSION,
    "RoleGrant",
    "rolegrants",
    "rolegrant",
    namespaced=False,
    categories=("haplane",),
    strategy=RoleGrantStrategy(),
    verbs=("create", "delete", "get", "list", "watch"),
    subresources=("approval",),
    printer_columns=(
        {"name": "Role", "type": "string", "jsonPath": ".spec.binding.roleRef.name"},
        {"name": "Binding", "type": "string", "jsonPath": ".spec.binding.metadata.name"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Requested-By", "type": "string", "jsonPath": ".status.requestedBy.username"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
)


class DrillStrategy(OperationStrategy):
    """A DR drill run by the per-host agent of the supervisor (`haplane.local.ops_agent`)."""

    kind = "Drill"
    protected_while_running = AGENT_PROTECTED

    def validate(self, obj: Obj) -> list[FieldError]:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return [_err("spec", _REQUIRED, "scenario and reason")]
        errs = _reason_errors(spec)
        if spec.get("scenario") not in DRILL_SCENARIOS:
            errs.append(
                _err(
                    "spec.scenario",
                    "FieldValueNotSupported",
                    f"one of {', '.join(DRILL_SCENARIOS)}",
                    spec.get("scenario"),
                )
            )
        for field, low, high in (
            ("warmupSeconds", 0.0, 60.0),
            ("observeSeconds", 0.0, 120.0),
            ("intervalSeconds", 0.005, 5.0),
        ):
            if field in spec and not _number_within(spec[field], low, high):
                errs.append(_err(f"spec.{field}", _INVALID, f"{low} to {high}", spec[field]))
        errs += _unknown(spec, DRILL_FIELDS)
        return errs


class MaintenanceStrategy(OperationStrategy):
    """A component operation, carried out by the per-host agent of the supervisor."""

    kind = "MaintenanceAction"
    protected_while_running = AGENT_PROTECTED

    def validate(self, obj: Obj) -> list[FieldError]:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return [_err("spec", _REQUIRED, "action and reason")]
        errs = _reason_errors(spec)
        action = spec.get("action")
        if action not in MAINTENANCE_ACTIONS:
            errs.append(
                _err(
                    "spec.action",
                    "FieldValueNotSupported",
                    f"one of {', '.join(MAINTENANCE_ACTIONS)}",
                    action,
                )
            )
        component = spec.get("component")
        if action in ON_A_COMPONENT and (not isinstance(component, str) or not component):
            errs.append(
                _err("spec.component", _REQUIRED, "the component, as `haplane status` names it")
            )
        if action not in ON_A_COMPONENT and "component" in spec:
            errs.append(_err("spec.component", _FORBIDDEN, f"{action} is the platform's"))
        if "timeoutSeconds" in spec and (
            action != "drain" or not _number_within(spec["timeoutSeconds"], 1.0, 600.0)
        ):
            errs.append(
                _err(
                    "spec.timeoutSeconds", _INVALID, "drain only: 1 to 600", spec["timeoutSeconds"]
                )
            )
        key = spec.get("key")
        if action == "remove-encryption-key" and (
            not isinstance(key, str) or not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", key)
        ):
            errs.append(
                _err("spec.key", _INVALID, "the local key's name, as `secrets status` shows", key)
            )
        elif action != "remove-encryption-key" and "key" in spec:
            errs.append(_err("spec.key", _FORBIDDEN, "remove-encryption-key only"))
        errs += _runbook_errors(spec, action == "run-runbook")
        errs += _unknown(spec, MAINTENANCE_FIELDS)
        return errs


RUNBOOK_FIELDS = ("runbook", "parameters", "runbookSha256")
MAX_RUNBOOK_PARAMETERS = 32


def _runbook_errors(spec: Obj, wanted: bool) -> list[FieldError]:
    """run-runbook's fields: `runbook` (a shipped runbook's name or one of STATE/runbooks/,
    resolved by the agent), `parameters` (NAME: text, as `-p NAME=VALUE`; the runbook checks
    them when it runs) and `runbookSha256` (the runbook as the requester read it: the agent
    refuses to run one that changed since, so what was approved is what runs)."""
    if not wanted:
        return [
            _err(f"spec.{f}", _FORBIDDEN, "run-runbook only") for f in RUNBOOK_FIELDS if f in spec
        ]
    errs = []
    name = spec.get("runbook")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        errs.append(_err("spec.runbook", _REQUIRED, "the runbook's name (`runbook list`)"))
    params = spec.get("parameters", {})
    if not isinstance(params, dict) or len(params) > MAX_RUNBOOK_PARAMETERS:
        errs.append(
            _err("spec.parameters", _INVALID, f"NAME: text, at most {MAX_RUNBOOK_PARAMETERS}")
        )
    else:
        for key, value in params.items():
            if (
                not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", key)
                or not isinstance(value, str)
                or len(value) > 1024
            ):
                errs.append(
                    _err(f"spec.parameters.{key}", _INVALID, "text of at most 1024 characters")
                )
    digest = spec.get("runbookSha256")
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        errs.append(
            _err(
                "spec.runbookSha256",
                _REQUIRED,
                "the runbook's sha256 (`runbook show`), 64 hexadecimal digits: what is approved "
                "is what runs",
            )
        )
    return errs


ROLE_GRANT_FIELDS = frozenset({"binding", "reason", "breakGlass"})
DRILL_FIELDS = frozenset(
    {"scenario", "reason", "warmupSeconds", "observeSeconds", "intervalSeconds", "breakGlass"}
)
MAINTENANCE_FIELDS = frozenset(
    {
        "action", "component", "key", "reason", "timeoutSeconds", "breakGlass", "runbook",
        "parameters", "runbookSha256",
    }
)  # fmt: skip


def _reason_errors(spec: Obj) -> list[FieldError]:
    """`reason` (required, at most 1024 characters) and `breakGlass` (a boolean)."""
    errs = []
    reason = spec.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        errs.append(_err("spec.reason", _REQUIRED, "why: recorded with your name"))
    elif len(reason) > 1024:
        errs.append(_err("spec.reason", "FieldValueTooLong", "at most 1024 characters"))
    if "breakGlass" in spec and not isinstance(spec["breakGlass"], bool):
        errs.append(_err("spec.breakGlass", _INVALID, "true or false", spec["breakGlass"]))
    return errs


def _number_within(value: Any, low: float, high: float) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


def _unknown(spec: Obj, known: frozenset[str]) -> list[FieldError]:
    extra = sorted(set(spec) - known)
    if not extra:
        return []
    return [
        _err(
            f"spec.{extra[0]}",
            "FieldValueNotSupported",
            f"unknown field; known: {', '.join(sorted(known))}",
        )
    ]


def _ops_type(kind: str, strategy: Strategy, columns: tuple[Obj, ...]) -> ResourceType:
    plural = PLURALS[kind]
    return ResourceType(
        GROUP,
        VERSION,
        kind,
        plural,
        kind.lower(),
        namespaced=False,
        categories=("haplane",),
        strategy=strategy,
        verbs=("create", "delete", "get", "list", "watch"),
        subresources=("approval",),
        printer_columns=(
            *columns,
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Requested-By", "type": "string", "jsonPath": ".status.requestedBy.username"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    )


DRILL = _ops_type(
    "Drill",
    DrillStrategy(),
    (
        {"name": "Scenario", "type": "string", "jsonPath": ".spec.scenario"},
        {"name": "Passed", "type": "boolean", "jsonPath": ".status.result.passed"},
    ),
)
MAINTENANCE_ACTION = _ops_type(
    "MaintenanceAction",
    MaintenanceStrategy(),
    (
        {"name": "Action", "type": "string", "jsonPath": ".spec.action"},
        {"name": "Component", "type": "string", "jsonPath": ".spec.component"},
    ),
)
APPROVAL_POLICY = ResourceType(
    GROUP,
    VERSION,
    "ApprovalPolicy",
    "approvalpolicies",
    "approvalpolicy",
    namespaced=False,
    categories=("haplane",),
    strategy=ApprovalPolicyStrategy(),
    printer_columns=(
        {"name": "Operations", "type": "string", "jsonPath": ".spec.operations"},
        {"name": "Approvals", "type": "integer", "jsonPath": ".spec.approvals"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
)


def ops_types(global_prefix: str) -> tuple[ResourceType, ...]:
    """The ops types, stored under `global_prefix` in the global control etcd."""
    prefix = global_prefix.encode()
    return tuple(
        replace(t, storage_prefix=ops_prefix(prefix, t.plural).decode(), fenced=False)
        for t in (SWITCHOVER, ROLE_GRANT, DRILL, MAINTENANCE_ACTION, APPROVAL_POLICY)
    )


def versions(global_prefix: str) -> VersionContext:
    """The ops objects' resourceVersions: the same in every region (all serve one store), so
    the tag is derived from the global prefix, not from a region's etcd; the epoch stays 0
    (a failover changes nothing of these objects)."""
    return VersionContext(f"{zlib.crc32(b'ops:' + global_prefix.encode()):08x}", 0)


def default_policies() -> list[Obj]:
    return [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ApprovalPolicy",
            "metadata": {"name": DEFAULT_POLICY, "labels": {DEFAULT_LABEL: "true"}},
            "spec": {
                "operations": ["Switchover"],
                "approvals": 1,
                "approvers": {"clusterRoles": ["haplane:dr-operator", BREAK_GLASS_ROLE]},
                "expireAfterSeconds": DEFAULT_EXPIRY,
            },
        },
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ApprovalPolicy",
            "metadata": {"name": DEFAULT_DRILL_POLICY, "labels": {DEFAULT_LABEL: "true"}},
            "spec": {
                "operations": [f"Drill/{d}" for d in DISRUPTIVE_DRILLS],
                "approvals": 1,
                "approvers": {"clusterRoles": ["haplane:dr-operator", BREAK_GLASS_ROLE]},
                "expireAfterSeconds": DEFAULT_EXPIRY,
            },
        },
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ApprovalPolicy",
            "metadata": {"name": DEFAULT_KEY_POLICY, "labels": {DEFAULT_LABEL: "true"}},
            "spec": {
                "operations": [KEY_ROTATION, KEY_REMOVAL],
                "approvals": 1,
                "approvers": {"clusterRoles": [BREAK_GLASS_ROLE]},
                "expireAfterSeconds": DEFAULT_EXPIRY,
            },
        },
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ApprovalPolicy",
            "metadata": {"name": DEFAULT_RUNBOOK_POLICY, "labels": {DEFAULT_LABEL: "true"}},
            "spec": {
                "operations": [RUN_RUNBOOK],
                "approvals": 1,
                "approvers": {"clusterRoles": ["haplane:dr-operator", BREAK_GLASS_ROLE]},
                "expireAfterSeconds": DEFAULT_EXPIRY,
            },
        },
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ApprovalPolicy",
            "metadata": {"name": DEFAULT_GRANT_POLICY, "labels": {DEFAULT_LABEL: "true"}},
            "spec": {
                "operations": ["RoleGrant"],
                "approvals": 1,
                "approvers": {"clusterRoles": [BREAK_GLASS_ROLE]},
                "expireAfterSeconds": DEFAULT_EXPIRY,
            },
        },
    ]


# ---- the decisions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    policy: str
    approvals: int
    groups: tuple[str, ...]
    cluster_roles: tuple[str, ...]
    users: tuple[str, ...]
    expire_after: int

    @classmethod
    def of(cls, policy: Obj) -> Requirement:
        spec = policy.get("spec") or {}
        who = spec.get("approvers") or {}
        return cls(
            (policy.get("metadata") or {}).get("name", ""),
            int(spec.get("approvals", 1)),
            tuple(who.get("groups") or ()),
            tuple(who.get("clusterRoles") or ()),
            tuple(who.get("users") or ()),
            int(spec.get("expireAfterSeconds", DEFAULT_EXPIRY)),
        )

    def as_dict(self) -> Obj:
        return {
            "policy": self.policy,
            "approvals": self.approvals,
            "approvers": {
                "groups": list(self.groups),
                "clusterRoles": list(self.cluster_roles),
                "users": list(self.users),
            },
        }

    @classmethod
    def from_dict(cls, d: Obj) -> Requirement:
        who = d.get("approvers") or {}
        return cls(
            str(d.get("policy", "")),
            int(d.get("approvals", 1)),
            tuple(who.get("groups") or ()),
            tuple(who.get("clusterRoles") or ()),
            tuple(who.get("users") or ()),
            DEFAULT_EXPIRY,
        )

    def admits(self, user: str, groups: Sequence[str], roles: Iterable[str]) -> bool:
        return (
            user in self.users
            or any(g in self.groups for g in groups)
            or any(r in self.cluster_roles for r in roles)
        )


# cluster roles bound cluster-wide to (user, groups); system:masters holds every role
RolesOf = Callable[[str, Sequence[str]], set[str]]


def _roles(roles_of: RolesOf | None, user: UserInfo) -> set[str]:
    """The ClusterRoles bound to `user`; "*" for system:masters, and for everyone when the
    replica authorizes nothing (`AlwaysAllow`: an insecure topology has no roles to hold)."""
    if MASTERS in user.groups or roles_of is None:
        return {"*"}
    return roles_of(user.name, user.groups)


def _has_role(roles: set[str], role: str) -> bool:
    return "*" in roles or role in roles


def _admits(req: Requirement, user: UserInfo, roles: set[str]) -> bool:
    if "*" in roles:  # system:masters: every role, so every policy naming a role
        return bool(req.cluster_roles) or req.admits(user.name, user.groups, ())
    return req.admits(user.name, user.groups, roles)


def satisfied(requirements: Sequence[Requirement], approvals: Sequence[Obj]) -> bool:
    """Every requirement met by distinct approvers who qualified for it when they approved."""
    for req in requirements:
        count = sum(1 for a in approvals if req.policy in (a.get("counts") or ()))
        if count < req.approvals:
            return False
    return True


class Operations:
    """What the handlers ask of the ops API: a create's status, an approval's outcome. Needs the
    replica's policies (`policies`: the ApprovalPolicy objects as stored), the cluster roles
    bound to a user (RBAC; None without RBAC: groups and users only), the current epoch and
    the regions that exist."""

    def __init__(
        self,
        *,
        roles_of: RolesOf | None,
        epoch: Callable[[], int],
        regions: Sequence[str] = (),
        active: Callable[[], str | None] = lambda: None,
        record: Callable[[], ActiveRegion | None] = lambda: None,
    ) -> None:
        self.roles_of = roles_of
        self.epoch = epoch
        self.regions = tuple(regions)
        self.active = active  # the active region as this replica last read it
        self.record = record  # the global record as this replica last read it

    def prepare_create(
        self,
        rtype: ResourceType,
        obj: Obj,
        user: UserInfo,
        policies: Sequence[Obj],
        dry_run: bool = False,
    ) -> str | None:
        """Fill a new operation's status (phase, requester, requirements, expiry), whatever
        the body said; returns an audit annotation value for a break-glass request. A
        malformed body gets an empty status here and its errors from validation."""
        if rtype.kind not in OPERATION_KINDS:
            return None
        obj["status"] = {}
        spec, meta = obj.get("spec"), obj.get("metadata")
        if not isinstance(spec, dict) or not isinstance(meta, dict):
            return None
        to = spec.get("targetRegion") if rtype.kind == "Switchover" else None
        name = str(meta.get("name") or meta.get("generateName") or "")
        if rtype.kind == "Switchover" and spec.get("automatic") is True:
            obj["status"] = self._automatic_status(spec, name, user)
            return None
        if self.regions and isinstance(to, str) and to not in self.regions:
            raise errors.invalid(
                "Switchover",
                name,
                [
                    _err(
                        "spec.targetRegion",
                        "FieldValueNotSupported",
                        f"no such region; regions: {', '.join(self.regions)}",
                        to,
                    ).cause()
                ],
                GROUP,
            )
        if isinstance(to, str) and to and to == self.active():
            raise errors.invalid(
                "Switchover",
                name,
                [
                    _err(
                        "spec.targetRegion",
                        _INVALID,
                        f"already the active region (epoch {self.epoch()})",
                        to,
                    ).cause()
                ],
                GROUP,
            )
        stored = {_dict(p.get("metadata")).get("name") for p in policies}
        # not created yet (a fresh global etcd): the built-in defaults apply all the same
        policies = [
            *policies,
            *(p for p in default_policies() if p["metadata"]["name"] not in stored),
        ]
        requirements = [
            Requirement.of(p)
            for p in policies
            if set(operation_names(rtype.kind, spec))
            & set(_dict(p.get("spec")).get("operations") or ())
        ]
        wanted = (
            ACTION_ROLES.get(str(spec.get("action"))) if rtype.kind == "MaintenanceAction" else None
        )
        if wanted and not any(_has_role(_roles(self.roles_of, user), r) for r in wanted):
            raise errors.StatusError(
                403,
                "Forbidden",
                f'maintenanceactions.{GROUP} "{name}" is forbidden: User "{user.name}" may not '
                f"ask for {spec.get('action')}: it needs the {' or '.join(wanted)} role",
            )
        now = time.time()
        expire_after = min((r.expire_after for r in requirements), default=DEFAULT_EXPIRY)
        status: Obj = {
            "requestedBy": user.to_dict(),
            # the ClusterRoles bound to the requester now ("*": system:masters), for whoever
            # carries the operation out to check what the requester may ask of it
            "requesterRoles": sorted(_roles(self.roles_of, user)),
            "requestedAt": now_rfc3339(),
            # rounded up: a request never expires before its time
            "expiresAt": _rfc3339(math.ceil(now + expire_after)),
            "epochAtRequest": self.epoch(),
            "requirements": [r.as_dict() for r in requirements],
            "approvals": [],
            "approvalCount": 0,
            "conditions": [],
        }
        annotation = None
        if spec.get("breakGlass") is True:
            if rtype.kind == "RoleGrant" and MASTERS not in user.groups:
                # one platform-admin alone must not mint others: a grant breaks glass only
                # as the state dir's admin (the first platform-admin, an emergency)
                raise errors.StatusError(
                    403,
                    "Forbidden",
                    f'rolegrants.{GROUP} "{name}" is forbidden: User "{user.name}" may not '
                    f"break glass on a RoleGrant: only {MASTERS} (the state dir's admin) may; "
                    "ask for approval instead (leave breakGlass out)",
                )
            roles = _roles(self.roles_of, user)
            if not _has_role(roles, BREAK_GLASS_ROLE):
                raise errors.StatusError(
                    403,
                    "Forbidden",
                    f'{rtype.plural}.{GROUP} "{name}" is forbidden: User "{user.name}" may not '
                    f"break glass: it needs the {BREAK_GLASS_ROLE} role (or ask for approval: "
                    "leave breakGlass out)",
                )
            status["phase"] = APPROVED
            status["breakGlass"] = True
            status["conditions"].append(
                _condition("BreakGlass", "BreakGlass", f"approval skipped by {user.name}")
            )
            if not dry_run:  # (a create refused after this point is logged as attempted)
                annotation = f"{user.name}: {spec.get('reason', '')}"
                log.warning(
                    json.dumps(
                        {
                            "msg": f"BREAK GLASS: a {rtype.kind} skips approval",
                            "user": user.name,
                            "name": name,
                            "targetRegion": to,
                            "reason": spec.get("reason"),
                        }
                    )
                )
        elif requirements:
            status["phase"] = PENDING
        else:
            status["phase"] = APPROVED
            status["conditions"].append(
                _condition("Approved", "NoPolicy", f"no ApprovalPolicy names {rtype.kind}")
            )
        obj["status"] = status
        return annotation

    def _automatic_status(self, spec: Obj, name: str, user: UserInfo) -> Obj:
        """A record of an automatic failover or failback, made by the failover controller
        (RECORDER_ROLE; 403 for anyone else): checked against the global record (an epoch
        not reached yet, or the current one in another region, is 422), Succeeded when its
        region is writable already, else Running (the controller's leader settles it)."""
        if not _has_role(_roles(self.roles_of, user), RECORDER_ROLE):
            raise errors.StatusError(
                403,
                "Forbidden",
                f'switchovers.{GROUP} "{name}" is forbidden: User "{user.name}" may not record '
                f"an automatic switchover: only the failover controller ({RECORDER_ROLE}) does",
            )
        record, epoch = self.record(), spec.get("epoch")
        if record is None:
            raise errors.unavailable(
                "this replica has not read the global record yet: an automatic switchover "
                "cannot be checked against it; try again"
            )
        wrong = []
        for field in ("targetRegion", "fromRegion"):
            region = spec.get(field)
            if self.regions and isinstance(region, str) and region not in self.regions:
                wrong.append(
                    _err(f"spec.{field}", "FieldValueNotSupported", "no such region", region)
                )
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            if epoch > record.epoch:
                why = f"no epoch {epoch} yet (the platform is at epoch {record.epoch})"
                wrong.append(_err("spec.epoch", _INVALID, why, epoch))
            elif epoch == record.epoch and record.region != spec.get("targetRegion"):
                why = f"epoch {epoch} made {record.region} active, not {spec.get('targetRegion')}"
                wrong.append(_err("spec.epoch", _INVALID, why, epoch))
        if wrong:
            raise errors.invalid("Switchover", name, [e.cause() for e in wrong], GROUP)
        # its epoch writable now, or replaced already (a later switch within the record's
        # way here): done either way; else the controller's leader settles it once writable
        current = record.epoch == epoch
        done = not current or record.writable
        now = now_rfc3339()
        phases = [{"name": "Committed", "at": now, "seconds": 0.0}]
        if current and record.writable:
            phases.append({"name": "Writable", "at": now, "seconds": 0.0})
        note = "" if current else f" (since replaced by epoch {record.epoch}, {record.region})"
        return {
            "recorded": True,
            "phase": SUCCEEDED if done else RUNNING,
            "requestedBy": user.to_dict(),
            "requestedAt": now,
            "startedAt": now,
            "runBy": user.name,
            "epochAtRequest": epoch - 1 if isinstance(epoch, int) else None,
            "approvalCount": 0,
            "requirements": [],
            "approvals": [],
            "conditions": [],
            "phases": phases,
            "result": {
                "fromRegion": spec.get("fromRegion"),
                "toRegion": spec.get("targetRegion"),
                "epoch": epoch,
                "action": spec.get("action"),
            },
            "message": f"automatic {spec.get('action')}: {spec.get('reason', '')}{note}",
        }

    def approve(self, current: Obj, body: Obj, user: UserInfo) -> tuple[Obj, str]:
        """The object after `user`'s decision in `body` (an Approved or Denied condition
        appended to the conditions as read); raises a StatusError for every refusal. Returns
        the new object and a line for the audit event."""
        name = (current.get("metadata") or {}).get("name", "")
        status = current.get("status") or {}
        plural = PLURALS.get(str(current.get("kind")), "switchovers")

        def refuse(code: int, why: str) -> errors.StatusError:
            reason = {403: "Forbidden", 409: "Conflict"}.get(code, "BadRequest")
            return errors.StatusError(
                code,
                reason,
                f'{plural}.{GROUP} "{name}": {why}',
                details={"name": name, "group": GROUP, "kind": plural},
            )

        meta = _dict(body.get("metadata"))
        uid = (current.get("metadata") or {}).get("uid")
        if not meta.get("uid"):
            raise errors.bad_request(
                "an approval names the request it approves: metadata.uid as read"
            )
        if meta.get("uid") != uid:
            raise refuse(409, "the request was replaced since you read it (its uid changed)")
        seen = meta.get("resourceVersion")
        if seen and seen != (current.get("metadata") or {}).get("resourceVersion"):
            raise refuse(
                409,
                "the object has been modified since you read it (another approval?); read it "
                "again and decide on what it is now",
            )
        phase = status.get("phase")
        if phase != PENDING:
            raise refuse(409, f"the request is {phase}, no longer Pending")
        expires = parse_time(status.get("expiresAt"))
        if expires is not None and time.time() >= expires:
            raise refuse(409, f"the request expired at {status.get('expiresAt')}")
        body_status = _dict(body.get("status"))
        said = body_status.get("conditions")
        had = status.get("conditions") or []
        # the decision is the last condition, one the request does not hold yet (CSR-style: the
        # conditions as read plus one; what came before it is not compared, so an approval
        # re-applied after another one's compare-and-swap still reads as the same decision)
        if not isinstance(said, list) or not said or said[-1] in had:
            raise errors.bad_request(
                "an approval appends one condition to status.conditions as read "
                "({type: Approved | Denied, reason, message})"
            )
        new = said[-1] if isinstance(said[-1], dict) else {}
        kind = new.get("type")
        if kind not in ("Approved", "Denied"):
            raise errors.bad_request("the new condition's type must be Approved or Denied")
        requester = (status.get("requestedBy") or {}).get("username")
        message = str(new.get("message") or "")[:1024]
        out = json.loads(json.dumps(current))
        st = out["status"]
        if kind == "Denied":
            if user.name != requester and not self._qualifies(status, user):
                raise refuse(403, f'User "{user.name}" is not an approver of this request')
            st["phase"] = REJECTED
            st["rejectedBy"] = {"username": user.name, "at": now_rfc3339(), "reason": message}
            st["conditions"].append(_condition("Denied", str(new.get("reason") or ""), message))
            return out, f"rejected by {user.name}"
        if user.name == requester:
            raise refuse(403, "the requester's own approval never counts: ask someone else")
        if any(a.get("username") == user.name for a in st.get("approvals") or ()):
            raise refuse(409, f'User "{user.name}" approved this request already')
        requirements = [Requirement.from_dict(r) for r in st.get("requirements") or ()]
        roles = _roles(self.roles_of, user)
        counts = [r.policy for r in requirements if _admits(r, user, roles)]
        if not counts:
            wanted = "; ".join(
                f"{r.policy}: groups {list(r.groups)}, clusterRoles {list(r.cluster_roles)}, "
                f"users {list(r.users)}"
                for r in requirements
            )
            raise refuse(403, f'User "{user.name}" is not an approver of this request ({wanted})')
        st.setdefault("approvals", []).append(
            {
                "username": user.name,
                "groups": list(user.groups),
                "at": now_rfc3339(),
                "counts": counts,
                "message": message,
            }
        )
        st["approvalCount"] = len(st["approvals"])
        st["conditions"].append(
            _condition("Approved", str(new.get("reason") or "Approved"), message)
            | {"approver": user.name}
        )
        if satisfied(requirements, st["approvals"]):
            st["phase"] = APPROVED
        return out, f"approved by {user.name}"

    def _qualifies(self, status: Obj, user: UserInfo) -> bool:
        roles = _roles(self.roles_of, user)
        return any(
            _admits(Requirement.from_dict(r), user, roles) for r in status.get("requirements") or ()
        )


def expired(obj: Obj, now: float | None = None) -> bool:
    status = obj.get("status") or {}
    at = parse_time(status.get("expiresAt"))
    return status.get("phase") == PENDING and at is not None and (now or time.time()) >= at


def _condition(kind: str, reason: str, message: str) -> Obj:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastUpdateTime": now_rfc3339(),
    }


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


__all__ = [
    "APPROVAL_POLICY",
    "EXPIRED",
    "GROUP",
    "SWITCHOVER",
    "TERMINAL",
    "VERSION",
    "Operations",
    "default_policies",
    "ops_types",
]


class OpsHooks:
    """The handlers' entry points: a create's status and the approval subresource, with the
    request's user, the stored policies and the audit event."""

    def __init__(
        self,
        operations: Operations,
        policies: Callable[[], Awaitable[list[Obj]]],
        refresh: Callable[[], Awaitable[object]] | None = None,
    ):
        self.operations = operations
        self.policies = policies
        # a fresh read of the global record before a Switchover is asked for: its target and
        # `epochAtRequest` are checked against it (a view a poll old, right after another
        # switch, would refuse a good request, or record an epoch that already moved on)
        self.refresh = refresh

    async def prepare_create(
        self, request: web.BaseRequest, rtype: ResourceType, obj: Obj, dry_run: bool
    ) -> None:
        if rtype.kind not in OPERATION_KINDS or not isinstance(obj, dict):
            return
        user: UserInfo = request.get("user", ANONYMOUS)
        _not_impersonated(request, f"asking for a {rtype.kind}")
        if rtype.kind == "Switchover" and self.refresh is not None:
            await self.refresh()
        note = self.operations.prepare_create(rtype, obj, user, await self.policies(), dry_run)
        audit = request.get("audit")
        if note is not None and audit is not None:
            audit.annotate(BREAK_GLASS_ANNOTATION, note)

    async def approval(
        self, store: GenericStore, request: web.BaseRequest, name: str, body: Obj, dry_run: bool
    ) -> Obj:
        user: UserInfo = request.get("user", ANONYMOUS)
        _not_impersonated(request, "an approval")
        said: list[str] = []

        meta = _dict(body.get("metadata"))

        def decide(current: Obj) -> Obj:
            new, line = self.operations.approve(current, body, user)
            said[:] = [line]
            if meta.get("resourceVersion"):  # as read: a stale one is 409, never re-applied
                new["metadata"]["resourceVersion"] = meta["resourceVersion"]
            return new

        out = await store.update_subresource(None, name, "approval", decide, dry_run=dry_run)
        audit = request.get("audit")
        if said and audit is not None and not dry_run:
            audit.annotate(APPROVAL_ANNOTATION, said[0])
        return out


def _not_impersonated(request: web.BaseRequest, what: str) -> None:
    """Four eyes are two people: who asks for an operation and who approves it are the
    persons who authenticated, never someone acting as another (impersonation would let one
    person be both). 403 through impersonation."""
    by: UserInfo | None = request.get("impersonated_by")
    if by is None:
        return
    acting = request.get("user", ANONYMOUS)
    raise errors.StatusError(
        403,
        "Forbidden",
        f'{what} is a person\'s own: User "{by.name}" may not make it as '
        f'"{acting.name}" (impersonation); send it with your own credentials',
    )
