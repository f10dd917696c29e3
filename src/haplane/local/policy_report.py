"""`haplane policy report`: every ValidatingAdmissionPolicy against the objects that exist
(background audit), and which policies each region has in force.

Layer: run (local). Talks to the platform as a Kubernetes client (anything with
`request(method, path) -> (status, body)`, the CLI's `ApiClient`), evaluates with the
replicas' own engine (`haplane.api.admission_policies`), and asks each region's replicas
directly (the state dir's admin certificate) for the policies they serve.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from haplane.api.admission_policies import Attributes, PolicyEngine, select_params
from haplane.api.resources import ResourceType
from haplane.auth.user import UserInfo

ADMISSION = "/apis/admissionregistration.k8s.io/v1"
REPORTER = UserInfo("haplane:policy-report", groups=("system:authenticated",))


class Api(Protocol):
    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 10.0
    ) -> tuple[int, Any]: ...


class ReportError(Exception):
    pass


@dataclass
class Report:
    violations: list[dict[str, Any]] = field(default_factory=list)
    # region -> {policy name: generation} (None: the region did not answer)
    regions: dict[str, dict[str, int] | None] = field(default_factory=dict)
    active: str | None = None
    region_problems: list[str] = field(default_factory=list)

    @property
    def regions_differ(self) -> bool:
        return bool(self.region_problems)

    def as_dict(self) -> dict[str, Any]:
        return {
            "violations": self.violations,
            "regions": self.regions,
            "activeRegion": self.active,
            "regionFindings": self.region_problems,
        }

    def lines(self) -> list[str]:
        out = []
        if self.violations:
            out.append(f"{len(self.violations)} objects break policies:")
            for v in self.violations:
                where = f"{v['namespace']}/{v['name']}" if v["namespace"] else v["name"]
                out.append(
                    f"  {v['resource']} {where}: {v['policy']} ({v['binding']}, "
                    f"{','.join(v['actions'])}): {v['message']}"
                )
        else:
            out.append("no object breaks a policy")
        for region, policies in sorted(self.regions.items()):
            mark = " (active)" if region == self.active else ""
            if policies is None:
                out.append(f"region {region}{mark}: did not answer")
                continue
            listed = ", ".join(f"{n} (generation {g})" for n, g in sorted(policies.items()))
            out.append(f"region {region}{mark}: {len(policies)} policies in force: {listed or '-'}")
        out += [f"finding: {p}" for p in self.region_problems]
        return out


def _get(api: Api, path: str) -> Any:
    status, body = api.request("GET", path)
    if status != 200:
        raise ReportError(f"GET {path}: {status} {body.get('message', body)}")
    return body


def _resources(api: Api) -> list[ResourceType]:
    """Every listable resource the platform serves (discovery)."""
    out = []
    versions = [("", "v1", "/api/v1")]
    for g in _get(api, "/apis").get("groups") or ():
        preferred = (g.get("preferredVersion") or {}).get("version")
        if preferred:
            versions.append((g["name"], preferred, f"/apis/{g['name']}/{preferred}"))
    for group, version, path in versions:
        for r in _get(api, path).get("resources") or ():
            if "/" in r["name"] or "list" not in (r.get("verbs") or ()):
                continue
            out.append(
                ResourceType(
                    group,
                    version,
                    r["kind"],
                    r["name"],
                    r.get("singularName") or r["name"],
                    namespaced=bool(r.get("namespaced")),
                )
            )
    return out


def _list_path(t: ResourceType, namespace: str | None = None) -> str:
    base = f"/apis/{t.group}/{t.version}" if t.group else "/api/v1"
    if namespace and t.namespaced:
        return f"{base}/namespaces/{namespace}/{t.plural}"
    return f"{base}/{t.plural}"


def _may_match(policies: list[dict[str, Any]], t: ResourceType) -> bool:
    """Whether some policy's rules could take objects of `t` as created or updated now."""
    for p in policies:
        match = (p.get("spec") or {}).get("matchConstraints") or {}
        for rule in match.get("resourceRules") or ():
            ops = rule.get("operations") or ()
            groups, resources = rule.get("apiGroups") or (), rule.get("resources") or ()
            if not ({"*", "CREATE", "UPDATE"} & set(ops)):
                continue
            if ("*" in groups or t.group in groups) and (
                "*" in resources or "*/*" in resources or t.plural in resources
            ):
                return True
    return False


def violations(api: Api, report: Report) -> None:
    """Every existing object checked against every binding, as if created now."""
    policies = _get(api, f"{ADMISSION}/validatingadmissionpolicies").get("items") or []
    bindings = _get(api, f"{ADMISSION}/validatingadmissionpolicybindings").get("items") or []
    if not policies or not bindings:
        return
    resources = _resources(api)
    namespaces = {
        n["metadata"]["name"]: n for n in _get(api, "/api/v1/namespaces").get("items") or ()
    }
    lists: dict[str, list[dict[str, Any]]] = {}

    def listed(t: ResourceType) -> list[dict[str, Any]]:
        path = _list_path(t)
        if path not in lists:
            lists[path] = _get(api, path).get("items") or []
        return lists[path]

    def params(
        api_version: str, kind: str, namespace: str | None, name: str | None, selector: Any
    ) -> list[dict[str, Any]] | None:
        group, _, version = api_version.rpartition("/")
        t = next(
            (r for r in resources if (r.group, r.version, r.kind) == (group, version, kind)),
            None,
        )
        if t is None:
            return None
        return select_params(listed(t), t.namespaced, namespace, name, selector)

    # version: the policies are fixed for the report (the pairs made, and compiled, once)
    engine = PolicyEngine(
        lambda: policies, lambda: bindings, namespaces.get, params, version=lambda: 0
    )
    for t in resources:
        if t.group == "admissionregistration.k8s.io" or not _may_match(policies, t):
            continue
        for obj in listed(t):
            meta = obj.get("metadata") or {}
            namespace = meta.get("namespace") if t.namespaced else None
            a = Attributes("CREATE", t, namespace, str(meta.get("name")), obj, None, REPORTER)
            for f in engine.findings(a):
                report.violations.append(
                    {
                        "resource": t.qualified,
                        "namespace": namespace or "",
                        "name": str(meta.get("name")),
                        "policy": f.policy,
                        "binding": f.binding,
                        "actions": list(f.actions),
                        "message": f.message,
                    }
                )


def region_findings(
    urls: dict[str, list[str]],
    active: str | None,
    context: ssl.SSLContext | None,
    report: Report,
    fetch: Callable[[str, ssl.SSLContext | None], Any] | None = None,
) -> None:
    """Each region's policies in force (its replicas, asked directly), against the active
    region's: a policy missing from a region, or at another generation, is a finding."""
    fetch = fetch or _fetch
    report.active = active
    for region, replicas in urls.items():
        found = None
        for url in replicas:
            try:
                doc = fetch(f"{url}{ADMISSION}/validatingadmissionpolicies", context)
            except OSError:
                continue
            found = {
                p["metadata"]["name"]: int(p["metadata"].get("generation") or 1)
                for p in doc.get("items") or ()
            }
            break
        report.regions[region] = found
    reference = report.regions.get(active) if active else None
    if reference is None:
        return
    for region, policies in sorted(report.regions.items()):
        if region == active:
            continue
        if policies is None:
            report.region_problems.append(
                f"region {region} did not answer: its policies are unknown"
            )
            continue
        for name, generation in sorted(reference.items()):
            if name not in policies:
                report.region_problems.append(
                    f"region {region} lacks policy {name} (generation {generation} in "
                    f"{active}): replication lag or divergence"
                )
            elif policies[name] != generation:
                report.region_problems.append(
                    f"region {region} has policy {name} at generation {policies[name]}, "
                    f"{active} at {generation}: replication lag or divergence"
                )
        for name in sorted(set(policies) - set(reference)):
            report.region_problems.append(
                f"region {region} has policy {name}, which {active} does not: divergence"
            )


def _fetch(url: str, context: ssl.SSLContext | None) -> Any:
    import json

    with urllib.request.urlopen(url, timeout=5.0, context=context) as resp:
        return json.loads(resp.read())
