"""An asynchronous Kubernetes API client: discovery, list (paged), get, create, server-side
apply (with dry-run), delete. Any conformant API server: the platform through its gate, another
haplane topology, a real Kubernetes cluster.

Layer: client (below the platform's clients, `haplane.gitops` and `haplane.backup`, above
`haplane.auth`, whose kubeconfig reader it uses). It speaks HTTP to a server named by a
kubeconfig, never the API server's internals. Hand-written on aiohttp (already the platform's
HTTP library) rather than the official client, whose synchronous calls would need a thread per
request and whose dynamic client loads every group's discovery on start.

Each user of the client names itself (`agent`): its field manager for server-side apply and its
User-Agent, from which the server names the manager of its other writes, so `managedFields` say
who wrote what (`haplane-gitops`, `haplane-backup`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from ..auth.kubeconfig import Credentials

Obj = dict[str, Any]
PAGE = 500  # objects per list request when paging


class Unreachable(Exception):
    """The server did not answer (connection refused, reset, timed out)."""


class KubeError(Exception):
    """The server answered with an error `Status`."""

    def __init__(self, code: int, reason: str, message: str, body: Any = None) -> None:
        super().__init__(f"{code} {reason}: {message}" if reason else f"{code}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.body = body

    @classmethod
    def of(cls, status: int, out: Any) -> KubeError:
        """From an answer's status and decoded body (a `Status`, or anything else)."""
        body = out if isinstance(out, dict) else {}
        return cls(status, str(body.get("reason") or ""), str(body.get("message") or ""), body)


@dataclass(frozen=True)
class Resource:
    """A resource as discovery describes it. Equality is the identity (group, version, kind,
    plural, scope); what discovery adds does not count."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    verbs: tuple[str, ...] = field(default=(), compare=False)
    short_names: tuple[str, ...] = field(default=(), compare=False)
    singular: str = field(default="", compare=False)
    subresources: tuple[str, ...] = field(default=(), compare=False)  # "status", "scale"...

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """`configmaps` or `widgets.example.com`, as kubectl and RBAC name a resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        return base + (f"/{quote(name, safe='')}" if name else "")


def split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


class KubeClient:
    """One server. Not thread-safe; one per event loop."""

    def __init__(self, credentials: Credentials, timeout: float = 30.0, *, agent: str) -> None:
        self.credentials = credentials
        self.server = credentials.server
        self.field_manager = agent
        self._agent = agent
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 5.0))
        self._session: aiohttp.ClientSession | None = None
        self._discovery: dict[str, dict[str, Resource]] = {}  # apiVersion -> kind -> resource
        self._token_read: tuple[float, str | None] | None = None

    def _token(self) -> str | None:
        """The bearer token; a `tokenFile` is read again at most every 10 s (the supervisor
        renews ServiceAccount tokens hourly, well before they expire)."""
        if self.credentials.token_file is None:
            return self.credentials.token
        now = time.monotonic()
        if self._token_read is None or now - self._token_read[0] > 10.0:
            self._token_read = (now, self.credentials.current_token())
        return self._token_read[1]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Accept": "application/json", "User-Agent": f"{self._agent}/1"}
            connector = aiohttp.TCPConnector(
                ssl=self.credentials.context if self.credentials.context else False,
                limit=32,
            )
            self._session = aiohttp.ClientSession(
                headers=headers, connector=connector, timeout=self._timeout
            )
        return self._session

    async def exchange(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any, dict[str, str]]:
        """(status, decoded body, response headers). Unreachable when nothing answered."""
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (0, 1):
            headers = {"Content-Type": content_type} if data is not None else {}
            token = self._token()
            if token:
                headers["Authorization"] = f"Bearer {token}"
            try:
                async with self._client().request(
                    method, self.server + path, data=data, params=params, headers=headers
                ) as resp:
                    raw = await resp.read()
                    status, answered = resp.status, dict(resp.headers)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise Unreachable(f"{self.server}: {type(exc).__name__}: {exc}") from None
            if status != 401 or attempt or self.credentials.token_file is None:
                break
            self._token_read = None  # a renewed token file: read it again at once
        try:
            return status, json.loads(raw) if raw else {}, answered
        except ValueError:
            return status, {"message": raw.decode(errors="replace")[:500]}, answered

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """(status, decoded body). Unreachable when nothing answered."""
        status, out, _ = await self.exchange(
            method, path, body, params=params, content_type=content_type
        )
        return status, out

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        status, out = await self.request(
            method, path, body, params=params, content_type=content_type
        )
        if status >= 400:
            raise KubeError.of(status, out)
        return out

    # -- discovery ----------------------------------------------------------------------------

    def forget(self, api_version: str | None = None) -> None:
        """Drop cached discovery (all, or one group version): a CRD was just applied."""
        if api_version is None:
            self._discovery.clear()
        else:
            self._discovery.pop(api_version, None)

    async def resource(self, api_version: str, kind: str) -> Resource | None:
        """The resource serving `kind` in `api_version`, or None when the server has no such
        kind (discovery is asked again once before answering None)."""
        known = self._discovery.get(api_version)
        if known is None or kind not in known:
            known = await self._discover(api_version)
        return known.get(kind)

    async def resource_of(self, group: str, kind: str) -> Resource | None:
        """`kind` of `group` in the group's preferred version (an object stored under a
        version the target no longer serves)."""
        if not group:
            return await self.resource("v1", kind)
        status, out = await self.request("GET", f"/apis/{group}")
        if status != 200 or not isinstance(out, dict):
            return None
        preferred = (out.get("preferredVersion") or {}).get("groupVersion")
        versions = [v.get("groupVersion") for v in out.get("versions") or ()]
        for api_version in dict.fromkeys([preferred, *versions]):
            if api_version:
                found = await self.resource(str(api_version), kind)
                if found is not None:
                    return found
        return None

    async def preferred_resources(self) -> list[Resource]:
        """Every resource the server serves, each group in its preferred version (as kubectl
        api-resources lists them): the core group first, then the groups in discovery order."""
        versions = (await self.call("GET", "/api")).get("versions") or ["v1"]
        groups = (await self.call("GET", "/apis")).get("groups") or ()
        api_versions = [str(v) for v in versions[:1]]
        for g in groups:
            preferred = (g.get("preferredVersion") or {}).get("groupVersion")
            if preferred:
                api_versions.append(str(preferred))
        out: list[Resource] = []
        for api_version in api_versions:
            out.extend((await self._discover(api_version)).values())
        return out

    async def _discover(self, api_version: str) -> dict[str, Resource]:
        group, version = split_api_version(api_version)
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        status, out = await self.request("GET", path)
        found: dict[str, Resource] = {}
        if status == 200 and isinstance(out, dict):
            entries = [r for r in out.get("resources") or () if r.get("name")]
            subs: dict[str, list[str]] = {}
            for r in entries:
                parent, _, sub = r["name"].partition("/")
                if sub:
                    subs.setdefault(parent, []).append(sub)
            for r in entries:
                name = r["name"]
                if "/" in name or not r.get("kind"):
                    continue
                found[r["kind"]] = Resource(
                    group,
                    version,
                    r["kind"],
                    name,
                    bool(r["namespaced"]),
                    verbs=tuple(r.get("verbs") or ()),
                    short_names=tuple(r.get("shortNames") or ()),
                    singular=str(r.get("singularName") or ""),
                    subresources=tuple(subs.get(name, ())),
                )
        elif status not in (404,):
            raise KubeError.of(status, out)
        self._discovery[api_version] = found
        return found

    # -- verbs --------------------------------------------------------------------------------

    async def apply(self, res: Resource, obj: Obj, *, dry_run: bool = False) -> Obj:
        """Server-side apply of `obj` as this client's field manager, taking over conflicting
        fields (its callers are the authority on what they declare: a GitOps source, a
        backup being restored over what is there)."""
        meta = obj.get("metadata") or {}
        params = {"fieldManager": self.field_manager, "force": "true"}
        if dry_run:
            params["dryRun"] = "All"
        out: Obj = await self.call(
            "PATCH",
            res.path(meta.get("namespace"), meta["name"]),
            obj,
            params=params,
            content_type="application/apply-patch+yaml",
        )
        return out

    async def create(self, res: Resource, obj: Obj, *, dry_run: bool = False) -> Obj:
        """POST: created, or KubeError (409 AlreadyExists when the name is taken)."""
        meta = obj.get("metadata") or {}
        params = {"dryRun": "All"} if dry_run else None
        out: Obj = await self.call("POST", res.path(meta.get("namespace")), obj, params=params)
        return out

    async def get(self, res: Resource, namespace: str | None, name: str) -> Obj | None:
        status, out = await self.request("GET", res.path(namespace, name))
        if status == 404:
            return None
        if status >= 400:
            raise KubeError.of(status, out)
        result: Obj = out
        return result

    async def list(
        self,
        res: Resource,
        label_selector: str | None = None,
        namespace: str | None = None,
        *,
        page: int = 0,
    ) -> list[Obj]:
        """Every object of `res` (in `namespace` only, when given and namespaced); with `page`,
        in requests of that many objects, following `continue` (a server that does not page
        answers everything at once)."""
        params = {"labelSelector": label_selector} if label_selector else {}
        if page:
            params["limit"] = str(page)
        items: list[Obj] = []
        while True:
            out = await self.call("GET", res.path(namespace), params=params or None)
            items.extend(out.get("items") or ())
            token = (out.get("metadata") or {}).get("continue")
            if not page or not token:
                return items
            params["continue"] = str(token)

    async def delete(
        self, res: Resource, namespace: str | None, name: str, uid: str | None = None
    ) -> bool:
        """True when deleted (or being deleted), False when it was already gone. `uid`: only
        that object (409 if it was replaced by another of the same name meanwhile)."""
        options: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        options["propagationPolicy"] = "Background"
        if uid:
            options["preconditions"] = {"uid": uid}
        status, out = await self.request("DELETE", res.path(namespace, name), options)
        if status == 404:
            return False
        if status >= 400:
            raise KubeError.of(status, out)
        return True
