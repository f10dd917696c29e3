"""What a logical backup takes, and how each object is written down: pure decisions on
discovery data and objects.

Layer: backup. Pure: no I/O.

- `choose`: every resource the server can list, minus what must not or need not be restored:
  Events (they describe the past; a restored one tells a lie), Leases (leader election state:
  a restored holder may be long gone), and every `ops.haplane.dev` kind (Switchovers, RoleGrants,
  Drills, MaintenanceActions, ApprovalPolicies: operations and their approvals, kept in the
  global control etcd rather than a region's, and a restore must never replay an approved
  operation). Events and Leases are taken when named with `--resource`; operations never.
- `strip`: what the server keeps for itself goes (uid, resourceVersion, creationTimestamp,
  generation, managedFields, selfLink, deletion marks, status where it is a subresource, which
  a create cannot set); what a user wrote stays, `ownerReferences` with their uids included (a
  restore remaps them, see `haplane.backup.restore`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from ..kubeclient import Resource
from .manifest import BackupError

Obj = dict[str, Any]

VOLATILE = {
    ("", "events"): "events describe the past",
    ("events.k8s.io", "events"): "events describe the past",
    ("coordination.k8s.io", "leases"): "leader election state",
}
NEVER_GROUPS = {
    "ops.haplane.dev": "platform operations and approvals (global control etcd) are never "
    "backed up: a restore must not replay one"
}
SERVER_FIELDS = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generateName",
)
# kinds whose status the server derives although haplane's discovery lists no status
# subresource for them (Kubernetes serves customresourcedefinitions/status)
DERIVED_STATUS = {("apiextensions.k8s.io", "customresourcedefinitions")}


def names_of(r: Resource) -> set[str]:
    """Every name a user may call `r` by (lower case): plural, singular, kind, short names,
    each also qualified by the group (`widgets.example.com`, `widget.example.com`)."""
    short = {r.plural, r.singular, r.kind.lower(), *r.short_names} - {""}
    return short | ({f"{n}.{r.group}" for n in short} if r.group else set())


def match(resources: Sequence[Resource], asked: Iterable[str]) -> list[Resource]:
    """The resources `asked` names, in the order asked; BackupError for a name the server does
    not serve or that names resources of several groups (qualify it: `widgets.example.com`)."""
    out: list[Resource] = []
    for name in asked:
        key = name.strip().lower()
        found = [r for r in resources if key in names_of(r)]
        if not found:
            raise BackupError(f"the server has no resource {name!r} (kubectl api-resources)")
        if len(found) > 1:
            raise BackupError(
                f"{name!r} names several resources: "
                + ", ".join(r.qualified for r in found)
                + ": qualify it by its group"
            )
        if found[0] not in out:
            out.append(found[0])
    return out


def choose(
    resources: Sequence[Resource], asked: Sequence[str] = (), excluded: Sequence[str] = ()
) -> tuple[list[Resource], list[str]]:
    """(resources to back up, what was left out and why). Nothing `asked`: every resource that
    can be listed, but the volatile ones. Anything asked is taken even when volatile;
    operations never. `excluded` wins over both."""
    listable = [r for r in resources if "list" in r.verbs]
    left_out: list[str] = []
    if asked:
        chosen = match(listable, asked)
        for r in chosen:
            if r.group in NEVER_GROUPS:
                raise BackupError(f"{r.qualified}: {NEVER_GROUPS[r.group]}")
    else:
        chosen = []
        for r in listable:
            why = NEVER_GROUPS.get(r.group) or VOLATILE.get((r.group, r.plural))
            if why:
                left_out.append(f"{r.qualified}: {why}")
            else:
                chosen.append(r)
    for r in match(listable, excluded):
        if r in chosen:
            chosen.remove(r)
            left_out.append(f"{r.qualified}: excluded (--exclude-resource)")
    return chosen, left_out


def status_is_subresource(r: Resource) -> bool:
    return "status" in r.subresources or (r.group, r.plural) in DERIVED_STATUS


def strip(obj: Obj, *, drop_status: bool) -> Obj:
    """`obj` as a backup writes it (and a restore sends it): no field the server sets."""
    out = copy.deepcopy(obj)
    meta = out.setdefault("metadata", {})
    for key in SERVER_FIELDS:
        meta.pop(key, None)
    if drop_status:
        out.pop("status", None)
    return out
