"""Kubernetes RBAC as a pure evaluator: rule matching, an index of roles and bindings by
subject, ClusterRole aggregation, escalation prevention, and the default roles.

Layer: auth. Pure: objects in, decisions out; the API server keeps the index in step with its
watch caches (`haplane.api.authorizer`). Semantics follow Kubernetes (checked against
k8s.io/component-helpers/auth/rbac/validation and pkg/registry/rbac/validation):

- a rule allows a resource request when its verbs, apiGroups, resources and resourceNames all
  match (`*` matches everything; `pods/log` names a subresource, `*/scale` a subresource of
  any resource, and nothing else: `pods/*` matches nothing, as in Kubernetes; resourceNames never
  match a request without a name, such as list or create); a non-resource request when its
  verbs and nonResourceURLs match (`/apis/*` matches by prefix);
- a RoleBinding grants its role's rules in its own namespace only (a ClusterRole referenced by
  a RoleBinding too), never for cluster-scoped resources or non-resource URLs; a
  ClusterRoleBinding grants everywhere;
- subjects: a User by name, a Group by any of the user's groups, a ServiceAccount as the user
  `system:serviceaccount:<namespace>:<name>`;
- a binding to a role that does not exist grants nothing; RBAC never denies, it only fails to
  allow;
- an aggregated ClusterRole's rules are those of every ClusterRole its selectors match (as
  Kubernetes' aggregation controller writes them), followed transitively;
- escalation: a role may hold only rules its writer holds (`covers`), unless the writer may
  `escalate` it; a binding may name only a role whose rules its writer holds in the binding's
  namespace, unless the writer may `bind` it.

Decisions read only in-memory indexes keyed by subject and namespace: the cost is the number
of bindings naming the user or one of their groups, not the number of roles (bench/rbac.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .user import Attributes

Obj = dict[str, Any]

GROUP = "rbac.authorization.k8s.io"
MASTERS = "system:masters"
SA_PREFIX = "system:serviceaccount:"

ROLE_KINDS = ("Role", "ClusterRole")
BINDING_KINDS = ("RoleBinding", "ClusterRoleBinding")


# ---- attributes and decisions ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""


# ---- rules -------------------------------------------------------------------------------


def _strs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


@dataclass(frozen=True, slots=True)
class Rule:
    """One PolicyRule, compiled: sets for membership, the `*` checks precomputed."""

    verbs: frozenset[str]
    api_groups: frozenset[str]
    resources: frozenset[str]
    resource_names: frozenset[str]
    non_resource_urls: tuple[str, ...]
    any_verb: bool
    any_group: bool
    any_resource: bool

    @classmethod
    def of(cls, rule: Any) -> Rule:
        r = rule if isinstance(rule, dict) else {}
        verbs = frozenset(_strs(r.get("verbs")))
        groups = frozenset(_strs(r.get("apiGroups")))
        resources = frozenset(_strs(r.get("resources")))
        return cls(
            verbs,
            groups,
            resources,
            frozenset(_strs(r.get("resourceNames"))),
            _strs(r.get("nonResourceURLs")),
            "*" in verbs,
            "*" in groups,
            "*" in resources,
        )

    def to_dict(self) -> Obj:
        out: Obj = {"verbs": sorted(self.verbs)}
        if self.non_resource_urls:
            out["nonResourceURLs"] = list(self.non_resource_urls)
            return out
        out["apiGroups"] = sorted(self.api_groups)
        out["resources"] = sorted(self.resources)
        if self.resource_names:
            out["resourceNames"] = sorted(self.resource_names)
        return out

    def allows(self, a: Attributes) -> bool:
        if not (self.any_verb or a.verb in self.verbs):
            return False
        if not a.resource_request:
            return any(_url_matches(u, a.path) for u in self.non_resource_urls)
        if not (self.any_group or a.api_group in self.api_groups):
            return False
        if not self.any_resource and not _resource_matches(
            self.resources, a.resource, a.subresource
        ):
            return False
        return not self.resource_names or (bool(a.name) and a.name in self.resource_names)


def _resource_matches(rule_resources: frozenset[str], resource: str, subresource: str) -> bool:
    combined = f"{resource}/{subresource}" if subresource else resource
    if combined in rule_resources:
        return True
    # Kubernetes' ResourceMatches knows `*`, exact names and `*/subresource`, nothing else
    # (a rule naming `pods/*` grants no subresource there, so it grants none here)
    return bool(subresource) and f"*/{subresource}" in rule_resources


def _url_matches(rule_url: str, path: str) -> bool:
    if rule_url == "*" or rule_url == path:
        return True
    return rule_url.endswith("*") and path.startswith(rule_url[:-1])


def compile_rules(rules: Any) -> tuple[Rule, ...]:
    return tuple(Rule.of(r) for r in rules) if isinstance(rules, list) else ()


# ---- escalation: does one set of rules cover another -------------------------------------


def _pieces(rule: Rule) -> Iterable[Rule]:
    """Kubernetes' BreakdownRule: one verb, one group, one resource, one name at a time."""
    if rule.non_resource_urls:
        for verb in sorted(rule.verbs):
            for url in rule.non_resource_urls:
                yield Rule.of({"verbs": [verb], "nonResourceURLs": [url]})
        return
    for group in sorted(rule.api_groups):
        for resource in sorted(rule.resources):
            for verb in sorted(rule.verbs):
                names: list[str | None] = [*sorted(rule.resource_names)] or [None]
                for name in names:
                    piece: Obj = {"verbs": [verb], "apiGroups": [group], "resources": [resource]}
                    if name is not None:
                        piece["resourceNames"] = [name]
                    yield Rule.of(piece)


def _resources_cover(owner: frozenset[str], wanted: frozenset[str]) -> bool:
    if "*" in owner or wanted <= owner:
        return True
    for path in wanted:
        if path in owner:
            continue
        if "/" not in path:
            return False
        if "*/" + path.split("/", 1)[1] not in owner:
            return False
    return True


def _urls_cover(owner: Sequence[str], wanted: Sequence[str]) -> bool:
    def covers(o: str, w: str) -> bool:
        return o == w or (o.endswith("*") and w.startswith(o.rstrip("*")))

    return all(any(covers(o, w) for o in owner) for w in wanted)


def _rule_covers(owner: Rule, piece: Rule) -> bool:
    if not (owner.any_verb or piece.verbs <= owner.verbs):
        return False
    if not (owner.any_group or piece.api_groups <= owner.api_groups):
        return False
    if not _resources_cover(owner.resources, piece.resources):
        return False
    if not _urls_cover(owner.non_resource_urls, piece.non_resource_urls):
        return False
    if not piece.resource_names:
        return not owner.resource_names
    return not owner.resource_names or piece.resource_names <= owner.resource_names


def covers(owner: Sequence[Rule], requested: Sequence[Rule]) -> tuple[bool, list[Rule]]:
    """Whether `owner` holds every permission in `requested` (Kubernetes' Covers), and the
    pieces it does not."""
    missing = [
        piece
        for rule in requested
        for piece in _pieces(rule)
        if not any(_rule_covers(o, piece) for o in owner)
    ]
    return not missing, missing


def compact(rule: Rule) -> str:
    """Kubernetes' CompactString: `{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}`."""

    def q(values: Iterable[str]) -> str:
        return "[" + " ".join(f'"{v}"' for v in values) + "]"

    parts = []
    if rule.non_resource_urls:
        parts.append(f"NonResourceURLs:{q(rule.non_resource_urls)}")
    else:
        parts.append(f"APIGroups:{q(sorted(rule.api_groups))}")
        parts.append(f"Resources:{q(sorted(rule.resources))}")
        if rule.resource_names:
            parts.append(f"ResourceNames:{q(sorted(rule.resource_names))}")
    parts.append(f"Verbs:{q(sorted(rule.verbs))}")
    return "{" + ", ".join(parts) + "}"


# ---- label selectors (aggregation) -------------------------------------------------------


def selector_errors(selector: Any) -> list[str]:
    """What makes `selector` no LabelSelector (empty: it is one)."""
    if not isinstance(selector, dict):
        return ["must be a label selector (an object)"]
    errors = []
    labels = selector.get("matchLabels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        errors.append("matchLabels must map strings to strings")
    exprs = selector.get("matchExpressions", [])
    if not isinstance(exprs, list):
        return [*errors, "matchExpressions must be a list"]
    for i, e in enumerate(exprs):
        if not isinstance(e, dict) or not isinstance(e.get("key"), str):
            errors.append(f"matchExpressions[{i}].key must be a string")
        elif e.get("operator") not in ("In", "NotIn", "Exists", "DoesNotExist"):
            errors.append(f"matchExpressions[{i}].operator: In, NotIn, Exists or DoesNotExist")
        elif e.get("values") is not None and not (
            isinstance(e["values"], list) and all(isinstance(v, str) for v in e["values"])
        ):
            errors.append(f"matchExpressions[{i}].values must be a list of strings")
    return errors


def selector_matches(selector: Any, labels: Mapping[str, str], *, empty: bool = False) -> bool:
    """Whether `labels` match the LabelSelector `selector`; an empty selector matches
    everything when `empty` (admission's namespace and object selectors), nothing otherwise
    (a role aggregation's)."""
    return selector_matcher(selector, empty=empty)(labels)


def selector_matcher(selector: Any, *, empty: bool = False) -> Callable[[Mapping[str, str]], bool]:
    """`selector_matches(selector, labels, empty=empty)` as a function of `labels`, the
    selector validated and read once (for selectors asked on every request)."""
    if not isinstance(selector, dict) or selector_errors(selector):
        return lambda labels: False  # a malformed selector (validation refuses them)
    match_labels = tuple((selector.get("matchLabels") or {}).items())
    exprs = tuple(
        (str(e["key"]), e["operator"], frozenset(_strs(e.get("values"))))
        for e in selector.get("matchExpressions") or ()
    )
    if not match_labels and not exprs:
        return lambda labels: empty

    def matches(labels: Mapping[str, str]) -> bool:
        for k, v in match_labels:
            if labels.get(k) != v:
                return False
        for key, op, values in exprs:
            if op == "In":
                if labels.get(key) not in values:
                    return False
            elif op == "NotIn":
                if key in labels and labels[key] in values:
                    return False
            elif op == "Exists":
                if key not in labels:
                    return False
            elif key in labels:  # DoesNotExist (selector_errors allows no other operator)
                return False
        return True

    return matches


# ---- the index ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Binding:
    kind: str
    namespace: str  # "" for a ClusterRoleBinding
    name: str
    role_kind: str
    role_name: str
    subjects: tuple[tuple[str, str], ...]  # ("User", name) or ("Group", name)

    def describe(self) -> str:
        where = f"{self.name}/{self.namespace}" if self.namespace else self.name
        return f'{self.kind} "{where}" of {self.role_kind} "{self.role_name}"'


def _subjects(obj: Obj, namespace: str) -> tuple[tuple[str, str], ...]:
    """`namespace`: the binding's ("" for a ClusterRoleBinding), which a ServiceAccount
    subject without one of its own defaults to, as Kubernetes' appliesToUser does."""
    out: list[tuple[str, str]] = []
    for s in obj.get("subjects") or []:
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            continue
        kind = s.get("kind")
        if kind in ("User", "Group"):
            out.append((str(kind), s["name"]))
        elif kind == "ServiceAccount":
            sa_namespace = s.get("namespace") or namespace
            if sa_namespace:
                out.append(("User", f"{SA_PREFIX}{sa_namespace}:{s['name']}"))
    return tuple(out)


def _binding(kind: str, obj: Obj) -> _Binding | None:
    meta = obj.get("metadata") or {}
    ref = obj.get("roleRef") or {}
    if not isinstance(ref, dict) or ref.get("kind") not in ROLE_KINDS:
        return None
    if kind == "ClusterRoleBinding" and ref.get("kind") != "ClusterRole":
        return None
    namespace = str(meta.get("namespace") or "") if kind == "RoleBinding" else ""
    return _Binding(
        kind,
        namespace,
        str(meta.get("name") or ""),
        str(ref["kind"]),
        str(ref.get("name") or ""),
        _subjects(obj, namespace),
    )


@dataclass
class _ClusterRole:
    rules: tuple[Rule, ...]
    raw_rules: list[Any]
    labels: dict[str, str]
    selectors: list[Any] | None  # None: not aggregated


@dataclass
class RbacIndex:
    """Roles and bindings by what a decision looks up: bindings by subject (and namespace),
    roles by name. Keep it in step with `upsert` and `delete`."""

    _roles: dict[tuple[str, str], tuple[Rule, ...]] = field(default_factory=dict)
    _cluster_roles: dict[str, _ClusterRole] = field(default_factory=dict)
    _effective: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    _bindings: dict[tuple[str, str, str], _Binding] = field(default_factory=dict)
    # (namespace, subject) -> bindings; namespace "" holds the ClusterRoleBindings
    _by_subject: dict[tuple[str, tuple[str, str]], dict[tuple[str, str, str], _Binding]] = field(
        default_factory=dict
    )

    _deferred: int = 0  # > 0: inside `bulk()`, aggregate once at its end

    # ---- updates ---------------------------------------------------------------------

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """Many updates (a cache's relist) with one aggregation at the end, instead of one
        per ClusterRole: a relist of N ClusterRoles costs O(N), not O(N^2)."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
            if not self._deferred:
                self._aggregate()

    def upsert(self, kind: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        namespace = str(meta.get("namespace") or "")
        if kind == "Role":
            self._roles[(namespace, name)] = compile_rules(obj.get("rules"))
        elif kind == "ClusterRole":
            aggregation = obj.get("aggregationRule")
            selectors = None
            if isinstance(aggregation, dict):
                found = aggregation.get("clusterRoleSelectors")
                selectors = list(found) if isinstance(found, list) else []
            labels = meta.get("labels") or {}
            raw = obj.get("rules") if isinstance(obj.get("rules"), list) else []
            self._cluster_roles[name] = _ClusterRole(
                compile_rules(raw),
                list(raw or []),
                {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
                selectors,
            )
            self._aggregate()
        elif kind in BINDING_KINDS:
            self.delete(kind, namespace, name)
            binding = _binding(kind, obj)
            if binding is not None:
                key = (kind, binding.namespace, name)
                self._bindings[key] = binding
                for subject in binding.subjects:
                    self._by_subject.setdefault((binding.namespace, subject), {})[key] = binding

    def delete(self, kind: str, namespace: str, name: str) -> None:
        if kind == "Role":
            self._roles.pop((namespace, name), None)
        elif kind == "ClusterRole":
            if self._cluster_roles.pop(name, None) is not None:
                self._aggregate()
        elif kind in BINDING_KINDS:
            key = (kind, namespace if kind == "RoleBinding" else "", name)
            old = self._bindings.pop(key, None)
            if old is not None:
                for subject in old.subjects:
                    slot = self._by_subject.get((old.namespace, subject))
                    if slot is not None:
                        slot.pop(key, None)
                        if not slot:
                            del self._by_subject[(old.namespace, subject)]

    def _aggregate(self) -> None:
        if self._deferred:
            return
        self._aggregate_now()

    def _aggregate_now(self) -> None:
        """Every ClusterRole's effective rules: its own, or for an aggregated one the union
        of those of every ClusterRole a selector matches, transitively (Kubernetes'
        controller reaches the same fixpoint by rewriting the aggregated roles in turn)."""
        effective = {n: cr.rules for n, cr in self._cluster_roles.items() if cr.selectors is None}
        pending = {n for n, cr in self._cluster_roles.items() if cr.selectors is not None}
        for n in pending:
            effective[n] = ()
        matchers = {
            n: [selector_matcher(s) for s in self._cluster_roles[n].selectors or []]
            for n in pending
        }
        for _ in range(len(pending) + 1):
            changed = False
            for n in pending:
                rules: list[Rule] = []
                seen: set[Rule] = set()
                for other, cr in self._cluster_roles.items():
                    if other == n or not any(m(cr.labels) for m in matchers[n]):
                        continue
                    for r in effective.get(other, ()):
                        if r not in seen:
                            seen.add(r)
                            rules.append(r)
                if tuple(rules) != effective[n]:
                    effective[n] = tuple(rules)
                    changed = True
            if not changed:
                break
        self._effective = effective

    def aggregated_roles(self) -> list[str]:
        return sorted(n for n, cr in self._cluster_roles.items() if cr.selectors is not None)

    def stored_rules(self, name: str) -> list[Any]:
        """The rules a ClusterRole carries as stored (for an aggregated one, what the
        aggregation controller last wrote)."""
        cr = self._cluster_roles.get(name)
        return list(cr.raw_rules) if cr is not None else []

    def aggregated_rules(self, name: str) -> list[Obj] | None:
        """The rules an aggregated ClusterRole should carry (what Kubernetes' controller
        writes into it), or None when it is not aggregated."""
        cr = self._cluster_roles.get(name)
        if cr is None or cr.selectors is None:
            return None
        return [r.to_dict() for r in self._effective.get(name, ())]

    # ---- decisions -------------------------------------------------------------------

    def _role_rules(self, binding: _Binding) -> tuple[Rule, ...] | None:
        return self.role_rules(binding.role_kind, binding.namespace, binding.role_name)

    def role_rules(self, kind: str, namespace: str, name: str) -> tuple[Rule, ...] | None:
        """A ClusterRole's rules (aggregated ones included) or a Role's in `namespace`; None
        when there is no such role."""
        if kind == "ClusterRole":
            return self._effective.get(name)
        return self._roles.get((namespace, name))

    def _applicable(
        self, user: str, groups: Sequence[str], namespace: str
    ) -> Iterable[tuple[_Binding, tuple[str, str]]]:
        subjects = [("User", user), *(("Group", g) for g in groups)]
        spaces = ("", namespace) if namespace else ("",)
        for space in spaces:
            for subject in subjects:
                slot = self._by_subject.get((space, subject))
                if slot:
                    for binding in slot.values():
                        yield binding, subject

    def authorize(self, a: Attributes) -> Decision:
        if MASTERS in a.groups:
            return Decision(True, f'allowed by group "{MASTERS}"')
        namespace = a.namespace if a.resource_request else ""
        for binding, subject in self._applicable(a.user, a.groups, namespace):
            rules = self._role_rules(binding)
            if not rules:
                continue
            for rule in rules:
                if rule.allows(a):
                    return Decision(
                        True,
                        f'RBAC: allowed by {binding.describe()} to {subject[0]} "{subject[1]}"',
                    )
        return Decision(False, "")

    def cluster_roles_of(self, user: str, groups: Sequence[str]) -> set[str]:
        """The ClusterRoles bound to the user cluster-wide (ClusterRoleBindings to the user or
        one of the groups): who counts as, say, a `haplane:dr-operator` approver."""
        return {
            b.role_name
            for b, _ in self._applicable(user, groups, "")
            if b.role_kind == "ClusterRole" and not b.namespace
        }

    def rules_of(self, user: str, groups: Sequence[str], namespace: str) -> list[Rule]:
        """Every rule granted to the user in `namespace` ("" for cluster-wide only)."""
        if MASTERS in groups:
            return [
                Rule.of({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
                Rule.of({"verbs": ["*"], "nonResourceURLs": ["*"]}),
            ]
        out: list[Rule] = []
        seen: set[Rule] = set()
        for binding, _ in self._applicable(user, groups, namespace):
            for rule in self._role_rules(binding) or ():
                if binding.namespace and rule.non_resource_urls:
                    continue  # a RoleBinding never grants non-resource URLs
                if rule not in seen:
                    seen.add(rule)
                    out.append(rule)
        return out

    def rules_for(
        self, user: str, groups: Sequence[str], namespace: str
    ) -> tuple[list[Obj], list[Obj], bool, list[str]]:
        """SelfSubjectRulesReview's status parts: resource rules, non-resource rules,
        incomplete, evaluation errors."""
        resource: list[Obj] = []
        non_resource: list[Obj] = []
        for rule in self.rules_of(user, groups, namespace):
            d = rule.to_dict()
            (non_resource if rule.non_resource_urls else resource).append(d)
        errors = [
            f"{b.describe()} names a role that does not exist"
            for b, _ in self._applicable(user, groups, namespace)
            if self._role_rules(b) is None
        ]
        return resource, non_resource, False, errors

    # ---- escalation --------------------------------------------------------------------

    def confirm_no_escalation(
        self, user: str, groups: Sequence[str], namespace: str, rules: Sequence[Rule]
    ) -> Decision:
        if MASTERS in groups:
            return Decision(True, f'allowed by group "{MASTERS}"')
        ok, missing = covers(self.rules_of(user, groups, namespace), rules)
        if ok:
            return Decision(True, "the writer holds every permission it grants")
        listed = "\n".join(compact(r) for r in missing)
        return Decision(
            False,
            f'user "{user}" (groups={_go_list(groups)}) is attempting to grant RBAC '
            f"permissions not currently held:\n{listed}",
        )


def _go_list(values: Sequence[str]) -> str:
    return "[" + " ".join(f'"{v}"' for v in values) + "]"


def may_create_role(
    index: RbacIndex, user: str, groups: Sequence[str], role: Obj, *, name: str = ""
) -> Decision:
    """A Role or ClusterRole may be written when it grants nothing its writer lacks (in its
    namespace; cluster-wide for a ClusterRole), or when the writer may `escalate` it.
    `name`: the role's name as the request path gave it (Kubernetes checks `escalate` with
    the request's name, so a create, whose path has none, matches no resourceNames)."""
    meta = role.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    resource = "roles" if namespace else "clusterroles"
    escalate = index.authorize(
        Attributes(user, tuple(groups), "escalate", namespace, GROUP, resource, "", name)
    )
    if escalate.allowed:
        return escalate
    if isinstance(role.get("aggregationRule"), dict):
        # its rules are whatever its selectors gather, now and later: Kubernetes lets only
        # those who may escalate write one
        return Decision(False, "must have cluster-admin privileges to use the aggregationRule")
    rules = compile_rules(role.get("rules"))
    return index.confirm_no_escalation(user, groups, namespace, rules)


def may_bind(index: RbacIndex, user: str, groups: Sequence[str], binding: Obj) -> Decision:
    """A RoleBinding or ClusterRoleBinding may be written when its writer holds every rule of
    the role it names (in the binding's namespace), or may `bind` that role."""
    meta = binding.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    ref = binding.get("roleRef") or {}
    role_kind = str(ref.get("kind") or "")
    role_name = str(ref.get("name") or "")
    resource = "roles" if role_kind == "Role" else "clusterroles"
    bind = index.authorize(
        Attributes(user, tuple(groups), "bind", namespace, GROUP, resource, "", role_name)
    )
    if bind.allowed:
        return bind
    rules = index.role_rules(role_kind, namespace, role_name)
    if rules is None:
        return Decision(
            False,
            f'{role_kind.lower()}s.{GROUP} "{role_name}" not found: a binding to a role '
            f"that does not exist needs the bind verb on it",
        )
    return index.confirm_no_escalation(user, groups, namespace, rules)


# ---- the default roles -------------------------------------------------------------------

READ = ["get", "list", "watch"]
WRITE = ["create", "delete", "deletecollection", "patch", "update"]
BOOTSTRAP_LABELS = {"kubernetes.io/bootstrapping": "rbac-defaults"}
AUTOUPDATE = {"rbac.authorization.kubernetes.io/autoupdate": "true"}
PLATFORM_GROUP = "platform.haplane.io"
OPS_GROUP = "ops.haplane.dev"  # platform operations and approvals (haplane.api.ops)
GITOPS_GROUP = "gitops.haplane.dev"
# ClusterRoles that no request binds directly: a binding to one is made only by carrying out
# an approved RoleGrant (haplane.api.ops, four-eyes); the replica's own defaults aside
GUARDED_ROLES = frozenset({"cluster-admin", "haplane:platform-admin"})


def guarded(index: RbacIndex, binding: Obj) -> str | None:
    """Why a binding needs another person's approval (a RoleGrant), or None: it names one of
    GUARDED_ROLES, or a role that grants as much as they do (a rule allowing every verb on
    every resource of every group, as `cluster-admin`'s: a copy of it under another name, or
    an aggregated role gathering one), judged by the role's rules as they stand now."""
    meta = binding.get("metadata") or {}
    ref = binding.get("roleRef") or {}
    kind, name = str(ref.get("kind") or ""), str(ref.get("name") or "")
    if kind == "ClusterRole" and name in GUARDED_ROLES:
        return f"a binding to {name} needs another person's approval"
    rules = index.role_rules(kind, str(meta.get("namespace") or ""), name)
    if rules and any(
        r.any_verb and r.any_group and r.any_resource and not r.resource_names for r in rules
    ):
        return (
            f"{kind} {name} allows every verb on every resource, as cluster-admin does: a "
            "binding to it needs another person's approval"
        )
    if rules and any(_impersonates_anyone(r) for r in rules):
        return (
            f"{kind} {name} allows impersonating any user or group, which is acting as anyone "
            "(an administrator included): a binding to it needs another person's approval"
        )
    return None


def _impersonates_anyone(r: Rule) -> bool:
    """A rule that lets its holder act as any user or any group: `impersonate` (or every verb)
    on core `users` or `groups` (or every resource) without resourceNames."""
    if r.resource_names or not (r.any_verb or "impersonate" in r.verbs):
        return False
    if not (r.any_group or "" in r.api_groups):
        return False
    return r.any_resource or bool({"users", "groups"} & r.resources)


HAPLANE_LABELS = {"app.kubernetes.io/part-of": "haplane"}


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> Obj:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def _cluster_role(
    name: str,
    rules: list[Obj],
    labels: Mapping[str, str] | None = None,
    aggregate_from: list[str] | None = None,
    defaults: bool = True,
) -> Obj:
    meta: Obj = {
        "name": name,
        "labels": {**(BOOTSTRAP_LABELS if defaults else HAPLANE_LABELS), **(labels or {})},
    }
    if defaults:
        meta["annotations"] = dict(AUTOUPDATE)
    role: Obj = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "ClusterRole",
        "metadata": meta,
        "rules": rules,
    }
    if aggregate_from is not None:
        role["aggregationRule"] = {
            "clusterRoleSelectors": [{"matchLabels": {k: "true"}} for k in aggregate_from]
        }
        role["rules"] = []
    return role


def _aggregate_label(to: str) -> dict[str, str]:
    return {f"rbac.authorization.k8s.io/aggregate-to-{to}": "true"}


_VIEW_CORE = ["configmaps", "endpoints", "persistentvolumeclaims",
              "persistentvolumeclaims/status", "pods", "replicationcontrollers",
              "replicationcontrollers/scale", "serviceaccounts", "services", "services/status",
              "bindings", "events", "limitranges", "namespaces/status", "pods/log",
              "pods/status", "replicationcontrollers/status", "resourcequotas",
              "resourcequotas/status"]  # fmt: skip
_APPS = ["controllerrevisions", "daemonsets", "daemonsets/status", "deployments",
         "deployments/scale", "deployments/status", "replicasets", "replicasets/scale",
         "replicasets/status", "statefulsets", "statefulsets/scale",
         "statefulsets/status"]  # fmt: skip
_VIEW_RULES = [
    _rule([""], _VIEW_CORE, READ),
    _rule([""], ["namespaces"], READ),
    _rule(["discovery.k8s.io"], ["endpointslices"], READ),
    _rule(["apps"], _APPS, READ),
    _rule(["autoscaling"], ["horizontalpodautoscalers", "horizontalpodautoscalers/status"], READ),
    _rule(["batch"], ["cronjobs", "cronjobs/status", "jobs", "jobs/status"], READ),
    _rule(["policy"], ["poddisruptionbudgets", "poddisruptionbudgets/status"], READ),
    _rule(["networking.k8s.io"], ["ingresses", "ingresses/status", "networkpolicies"], READ),
]
_EDIT_RULES = [
    _rule(
        [""],
        ["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"],
        READ,
    ),
    _rule([""], ["serviceaccounts"], ["impersonate"]),
    _rule([""], ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"], WRITE),
    _rule([""], ["pods/eviction"], ["create"]),
    _rule(
        [""],
        [
            "configmaps",
            "events",
            "persistentvolumeclaims",
            "replicationcontrollers",
            "replicationcontrollers/scale",
            "secrets",
            "serviceaccounts",
            "services",
            "services/proxy",
        ],
        WRITE,
    ),
    _rule([""], ["serviceaccounts/token"], ["create"]),
    _rule(
        ["apps"],
        [
            "daemonsets",
            "deployments",
            "deployments/rollback",
            "deployments/scale",
            "replicasets",
            "replicasets/scale",
            "statefulsets",
            "statefulsets/scale",
        ],
        WRITE,
    ),
    _rule(["autoscaling"], ["horizontalpodautoscalers"], WRITE),
    _rule(["batch"], ["cronjobs", "jobs"], WRITE),
    _rule(["policy"], ["poddisruptionbudgets"], WRITE),
    _rule(["networking.k8s.io"], ["ingresses", "networkpolicies"], WRITE),
    _rule(["coordination.k8s.io"], ["leases"], [*READ, *WRITE]),
]
_ADMIN_RULES = [
    _rule(["authorization.k8s.io"], ["localsubjectaccessreviews"], ["create"]),
    _rule([GROUP], ["rolebindings", "roles"], [*READ, *WRITE]),
]
_DISCOVERY_URLS = ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi",
                   "/openapi/*", "/readyz", "/version", "/version/"]  # fmt: skip
_PUBLIC_URLS = ["/healthz", "/livez", "/readyz", "/version", "/version/"]
_MONITORING_URLS = ["/healthz", "/healthz/*", "/livez", "/livez/*", "/readyz", "/readyz/*",
                    "/metrics", "/metrics/slis"]  # fmt: skip
_OPERATOR_READ = [
    _rule([""], ["namespaces", "events", "configmaps", "serviceaccounts"], READ),
    _rule(["coordination.k8s.io"], ["leases"], READ),
    # the platform's own parts (what the console's Analysis page needs): no secret in them
    _rule([PLATFORM_GROUP], ["etcdmembers", "gates", "balancers"], READ),
    {
        "nonResourceURLs": ["/metrics", "/healthz", "/livez", "/readyz", "/version"],
        "verbs": ["get"],
    },
]

# haplane's operator roles (the seed's separation of duties). None of the three operator
# roles reads Secrets; the auditor reads everything but Secrets, and the audit log.
#
# | role                     | may                                                          |
# |--------------------------|--------------------------------------------------------------|
# | haplane:platform-admin   | everything (as cluster-admin)                                |
# | haplane:etcd-operator    | etcd members and snapshots (platform.haplane.io); read core  |
# | haplane:gate-operator    | gates, balancers: drain, weights; read core                  |
# | haplane:dr-operator      | ask for and approve switchovers, drills and runbook runs;    |
# |                          | restores; read approval policies and snapshots               |
# | haplane:auditor          | read everything except Secrets; read the audit log           |
OPERATOR_ROLES: dict[str, list[Obj]] = {
    "haplane:platform-admin": [
        _rule(["*"], ["*"], ["*"]),
        {"nonResourceURLs": ["*"], "verbs": ["*"]},
    ],
    "haplane:etcd-operator": [
        _rule(
            [PLATFORM_GROUP],
            ["etcdmembers", "etcdmembers/*", "snapshots"],
            [*READ, "create", "update", "patch", "delete"],
        ),
        # restarts of etcd members (the agent checks the component's kind)
        _rule([OPS_GROUP], ["maintenanceactions"], [*READ, "create"]),
        _rule([OPS_GROUP], ["maintenanceactions/approval"], ["update"]),
        *_OPERATOR_READ,
    ],
    "haplane:gate-operator": [
        _rule(
            [PLATFORM_GROUP],
            ["gates", "balancers", "balancers/drain", "balancers/weights"],
            [*READ, "update", "patch"],
        ),
        # restarts of balancers and gates (the agent checks the component's kind)
        _rule([OPS_GROUP], ["maintenanceactions"], [*READ, "create"]),
        _rule([OPS_GROUP], ["maintenanceactions/approval"], ["update"]),
        *_OPERATOR_READ,
    ],
    "haplane:dr-operator": [
        # asks for operations and approves others' (the ApprovalPolicy decides whose count)
        _rule([OPS_GROUP], ["switchovers", "drills", "maintenanceactions"], [*READ, "create"]),
        _rule(
            [OPS_GROUP],
            ["switchovers/approval", "drills/approval", "maintenanceactions/approval"],
            ["update"],
        ),
        _rule([OPS_GROUP], ["approvalpolicies"], READ),
        _rule([PLATFORM_GROUP], ["restores"], [*READ, "create"]),
        _rule([PLATFORM_GROUP], ["snapshots"], READ),
        *_OPERATOR_READ,
    ],
    "haplane:auditor": [
        *_VIEW_RULES,
        _rule([GROUP], ["roles", "rolebindings", "clusterroles", "clusterrolebindings"], READ),
        _rule(["apiextensions.k8s.io"], ["customresourcedefinitions"], READ),
        _rule(["coordination.k8s.io"], ["leases"], READ),
        # every platform object, operation and approval, and what GitOps applies: an audit
        # reads who asked for what and who approved it
        _rule([PLATFORM_GROUP, OPS_GROUP, GITOPS_GROUP], ["*"], READ),
        {"nonResourceURLs": ["/audit", "/audit/*", "/metrics"], "verbs": ["get"]},
    ],
}


# the failover controller (haplane.gate.controller) records each automatic failover and
# failback as a Switchover through the API, as this ServiceAccount: its ClusterRole allows
# exactly that (and reading them back); the ops API lets only this role record one
FAILOVER_CONTROLLER_SA = ("kube-system", "haplane-failover-controller")
FAILOVER_CONTROLLER_ROLE = "haplane:failover-controller"
# the GitOps controller (haplane.gitops) applies whatever its sources declare to the platform,
# as Argo CD's and Flux's controllers do: every resource (narrow it with RBAC on who may write
# GitSources and Syncs, and with admission policies on what may be applied)
GITOPS_CONTROLLER_SA = ("kube-system", "haplane-gitops")
GITOPS_CONTROLLER_ROLE = "haplane:gitops-controller"
# the web console (haplane.console) acts as a person who signed in with a client certificate
# of the platform CA, through impersonation (kube-apiserver's Impersonate-User and
# Impersonate-Group): its own client certificate names this user, bound to this role
CONSOLE_USER = "system:haplane:console"
CONSOLE_ROLE = "haplane:console"
CONTROLLER_ROLES: dict[str, list[Obj]] = {
    FAILOVER_CONTROLLER_ROLE: [_rule([OPS_GROUP], ["switchovers"], ["get", "create"])],
    GITOPS_CONTROLLER_ROLE: [_rule(["*"], ["*"], ["*"])],
    CONSOLE_ROLE: [_rule([""], ["users", "groups"], ["impersonate"])],
}
CONTROLLER_ACCOUNTS = {
    FAILOVER_CONTROLLER_ROLE: FAILOVER_CONTROLLER_SA,
    GITOPS_CONTROLLER_ROLE: GITOPS_CONTROLLER_SA,
}
# who may read GitSources and Syncs (aggregated into view) and write them: not aggregated into
# edit or admin, since a Sync without serviceAccountName writes with the controller's rights;
# bind haplane:gitops-edit to whom you trust with that
_GITOPS_RESOURCES = ["gitsources", "syncs", "gitsources/status", "syncs/status"]


def default_cluster_roles() -> list[Obj]:
    """Kubernetes' bootstrap ClusterRoles (the subset for what haplane serves, with the same
    aggregation: admin gathers edit, edit gathers view) and haplane's operator roles."""
    return [
        _cluster_role(
            "cluster-admin",
            [_rule(["*"], ["*"], ["*"]), {"nonResourceURLs": ["*"], "verbs": ["*"]}],
        ),
        _cluster_role("admin", [], aggregate_from=["rbac.authorization.k8s.io/aggregate-to-admin"]),
        _cluster_role(
            "edit",
            [],
            labels=_aggregate_label("admin"),
            aggregate_from=["rbac.authorization.k8s.io/aggregate-to-edit"],
        ),
        _cluster_role(
            "view",
            [],
            labels=_aggregate_label("edit"),
            aggregate_from=["rbac.authorization.k8s.io/aggregate-to-view"],
        ),
        _cluster_role("system:aggregate-to-admin", _ADMIN_RULES, _aggregate_label("admin")),
        _cluster_role("system:aggregate-to-edit", _EDIT_RULES, _aggregate_label("edit")),
        _cluster_role("system:aggregate-to-view", _VIEW_RULES, _aggregate_label("view")),
        _cluster_role("system:discovery", [{"nonResourceURLs": _DISCOVERY_URLS, "verbs": ["get"]}]),
        _cluster_role(
            "system:basic-user",
            [
                _rule(
                    ["authorization.k8s.io"],
                    ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    ["create"],
                ),
                _rule(["authentication.k8s.io"], ["selfsubjectreviews"], ["create"]),
            ],
        ),
        _cluster_role(
            "system:public-info-viewer", [{"nonResourceURLs": _PUBLIC_URLS, "verbs": ["get"]}]
        ),
        # Kubernetes' own: what a metrics scraper (a certificate with O=system:monitoring)
        # reads, the same group haplane's admin listeners let read /metrics and /status
        _cluster_role(
            "system:monitoring",
            [{"nonResourceURLs": _MONITORING_URLS, "verbs": ["get"]}],
        ),
        *(_cluster_role(name, rules, defaults=False) for name, rules in OPERATOR_ROLES.items()),
        *(_cluster_role(name, rules, defaults=False) for name, rules in CONTROLLER_ROLES.items()),
        _cluster_role(
            "haplane:gitops-view",
            [_rule([GITOPS_GROUP], _GITOPS_RESOURCES, READ)],
            _aggregate_label("view"),
            defaults=False,
        ),
        _cluster_role(
            "haplane:gitops-edit",
            [_rule([GITOPS_GROUP], ["gitsources", "syncs"], WRITE)],
            defaults=False,
        ),
    ]


def _cluster_role_binding(name: str, role: str, groups: list[str]) -> Obj:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name,
            "labels": dict(BOOTSTRAP_LABELS),
            "annotations": dict(AUTOUPDATE),
        },
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": GROUP, "kind": "Group", "name": g} for g in groups],
    }


def default_cluster_role_bindings() -> list[Obj]:
    return [
        _cluster_role_binding("cluster-admin", "cluster-admin", [MASTERS]),
        _cluster_role_binding("system:discovery", "system:discovery", ["system:authenticated"]),
        _cluster_role_binding("system:basic-user", "system:basic-user", ["system:authenticated"]),
        _cluster_role_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            ["system:authenticated", "system:unauthenticated"],
        ),
        _cluster_role_binding("system:monitoring", "system:monitoring", ["system:monitoring"]),
        *(
            {
                **_cluster_role_binding(role, role, []),
                "subjects": [{"kind": "ServiceAccount", "namespace": sa[0], "name": sa[1]}],
            }
            for role, sa in CONTROLLER_ACCOUNTS.items()
        ),
        {
            **_cluster_role_binding(CONSOLE_ROLE, CONSOLE_ROLE, []),
            "subjects": [{"apiGroup": GROUP, "kind": "User", "name": CONSOLE_USER}],
        },
    ]
