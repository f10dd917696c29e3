"""An asynchronous Kubernetes API client for the GitOps controller: discovery, server-side
apply (with dry-run), get, list by label, delete. Any conformant API server: the platform through
its gate, another haplane topology, a real Kubernetes cluster.

Layer: sync. A client only: it speaks HTTP to a server named by a kubeconfig, never the API
server's internals. Hand-written on aiohttp (already the platform's HTTP library) rather than
the official client, whose synchronous calls would need a thread per request and whose dynamic
client loads every group's discovery on start.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from ..auth.kubeconfig import Credentials

Obj = dict[str, Any]
FIELD_MANAGER = "haplane-gitops"


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
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

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

    def __init__(self, credentials: Credentials, timeout: float = 30.0) -> None:
        self.credentials = credentials
        self.server = credentials.server
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
            headers = {"Accept": "application/json", "User-Agent": "haplane-gitops/1"}
            connector = aiohttp.TCPConnector(
                ssl=self.credentials.context if self.credentials.context else False,
                limit=32,
            )
            self._session = aiohttp.ClientSession(
                headers=headers, connector=connector, timeout=self._timeout
            )
        return self._session

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
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise Unreachable(f"{self.server}: {type(exc).__name__}: {exc}") from None
            if status != 401 or attempt or self.credentials.token_file is None:
                break
            self._token_read = None  # a renewed token file: read it again at once
        try:
            return status, json.loads(raw) if raw else {}
        except ValueError:
            return status, {"message": raw.decode(errors="replace")[:500]}

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

    async def _discover(self, api_version: str) -> dict[str, Resource]:
        group, version = split_api_version(api_version)
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        status, out = await self.request("GET", path)
        found: dict[str, Resource] = {}
        if status == 200 and isinstance(out, dict):
            for r in out.get("resources") or ():
                name = r.get("name", "")
                if not name or "/" in name or not r.get("kind"):
                    continue
                found[r["kind"]] = Resource(group, version, r["kind"], name, bool(r["namespaced"]))
        elif status not in (404,):
            raise KubeError.of(status, out)
        self._discovery[api_version] = found
        return found

    # -- verbs --------------------------------------------------------------------------------

    async def apply(self, res: Resource, obj: Obj, *, dry_run: bool = False) -> Obj:
        """Server-side apply of `obj` as field manager haplane-gitops, taking over conflicting
        fields (a GitOps source is the authority on what it declares)."""
        meta = obj.get("metadata") or {}
        params = {"fieldManager": FIELD_MANAGER, "force": "true"}
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

    async def get(self, res: Resource, namespace: str | None, name: str) -> Obj | None:
        status, out = await self.request("GET", res.path(namespace, name))
        if status == 404:
            return None
        if status >= 400:
            raise KubeError.of(status, out)
        result: Obj = out
        return result

    async def list(
        self, res: Resource, label_selector: str | None = None, namespace: str | None = None
    ) -> list[Obj]:
        """Every object of `res` (in `namespace` only, when given and namespaced)."""
        params = {"labelSelector": label_selector} if label_selector else None
        out = await self.call("GET", res.path(namespace), params=params)
        items: list[Obj] = out.get("items") or []
        return items

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
