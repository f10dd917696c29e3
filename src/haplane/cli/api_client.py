"""A small Kubernetes API client for the CLI's platform operations: a kubeconfig's current
context (server, CA, client certificate or bearer token), JSON in and out.

Layer: run (cli). The CLI acts through the API with the operator's own credentials, so RBAC,
approvals and audit apply to it as to kubectl. Hand-written on urllib rather than the official
client (a dev dependency only): a handful of calls, and `haplane` must start quickly.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ClientError(Exception):
    """The kubeconfig cannot be used (named in the message), or the server did not answer."""


@dataclass
class ApiClient:
    server: str
    context: ssl.SSLContext | None
    token: str | None
    user: str  # the kubeconfig's user entry (for messages)

    @classmethod
    def from_kubeconfig(cls, path: Path, server: str | None = None) -> ApiClient:
        """The current context of the kubeconfig at `path`; `server` overrides its address
        (a region's balancer when the gate cannot serve)."""
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ClientError(f"kubeconfig {path}: {exc}") from None
        return cls.from_config(doc, str(path), server)

    @classmethod
    def from_config(cls, doc: Any, where: str, server: str | None = None) -> ApiClient:
        from ..auth.kubeconfig import KubeconfigError, load

        try:
            c = load(doc, where, server)
        except KubeconfigError as exc:
            raise ClientError(str(exc)) from None
        return cls(c.server, c.context, c.current_token(), c.user)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 10.0,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body); ClientError when nothing answered."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.context) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise ClientError(f"{self.server} did not answer: {exc}") from None
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, {"message": payload.decode(errors="replace")}


def kubeconfig(
    name: str,
    server: str,
    user_name: str,
    *,
    ca: bytes | None = None,
    cert: bytes | None = None,
    key: bytes | None = None,
) -> dict[str, Any]:
    """A kubeconfig with one context `name`: `server` (trusting the PEM `ca`), as
    `user_name` with the PEM client certificate and key, data embedded."""
    cluster: dict[str, str] = {"server": server}
    if ca is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    credentials: dict[str, str] = {}
    if cert is not None and key is not None:
        credentials = {
            "client-certificate-data": base64.b64encode(cert).decode(),
            "client-key-data": base64.b64encode(key).decode(),
        }
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": user_name, "user": credentials}],
        "contexts": [
            {
                "name": name,
                "context": {"cluster": name, "user": user_name, "namespace": "default"},
            }
        ],
        "current-context": name,
        "preferences": {},
    }
