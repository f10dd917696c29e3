"""Reading a kubeconfig: the current context's server, the CA it trusts, and the user's client
certificate or bearer token, as an `ssl.SSLContext` and a token.

Layer: auth. Shared by the CLI's synchronous client and the GitOps controller's asynchronous
one (a target cluster's kubeconfig arrives in a Secret). Hand-written rather than taken from the
official client: it reads a handful of fields, and the CLI must start quickly.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class KubeconfigError(Exception):
    """The kubeconfig cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Credentials:
    server: str  # no trailing slash
    context: ssl.SSLContext | None  # None for plain http://
    token: str | None
    user: str  # the kubeconfig's user entry (for messages)
    token_file: str | None = None  # kubectl's `tokenFile`: read again as it is renewed
    # the same server trust without this user's client certificate: for acting as another
    # identity by bearer token (a verified certificate would be taken over the token)
    ca_context: ssl.SSLContext | None = None

    def current_token(self) -> str | None:
        """The bearer token now: `tokenFile`'s content when given (a renewed ServiceAccount
        token replaces it in place), else `token`."""
        if self.token_file is not None:
            try:
                return Path(self.token_file).read_text().strip() or None
            except OSError:
                return self.token
        return self.token


def load(
    doc: Any, where: str, server: str | None = None, *, allow_files: bool = True
) -> Credentials:
    """The current context of the parsed kubeconfig `doc` (read from `where`, for messages);
    `server` overrides its address. `allow_files=False` for a kubeconfig someone else wrote
    (a Secret): only what it holds itself is used, never a file of this host (a token file
    or key named there would be sent to whatever server it names); `exec` and
    `auth-provider` plugins are refused either way (nothing here runs them)."""
    if not isinstance(doc, dict):
        raise KubeconfigError(f"kubeconfig {where}: not a kubeconfig")
    current = doc.get("current-context")
    context = _named(doc, "contexts", current, where).get("context") or {}
    cluster = _named(doc, "clusters", context.get("cluster"), where).get("cluster") or {}
    user_name = str(context.get("user") or "")
    user = _named(doc, "users", user_name, where).get("user") or {}
    for field in ("exec", "auth-provider"):
        if user.get(field):
            raise KubeconfigError(f"kubeconfig {where}: user {field} plugins are not supported")
    if not allow_files:
        named = [
            f
            for entry, fields in (
                (cluster, ("certificate-authority",)),
                (user, ("client-certificate", "client-key", "tokenFile")),
            )
            for f in fields
            if entry.get(f)
        ]
        if named:
            raise KubeconfigError(
                f"kubeconfig {where}: {', '.join(named)} name files; give the data itself "
                "(certificate-authority-data, client-certificate-data, client-key-data, token)"
            )
    url = server or cluster.get("server")
    if not isinstance(url, str) or not url:
        raise KubeconfigError(f"kubeconfig {where}: the cluster has no server")
    if not url.startswith(("https://", "http://")):
        raise KubeconfigError(f"kubeconfig {where}: server {url!r} is not an http(s) URL")
    ssl_context = ca_context = None
    if url.startswith("https://"):
        ssl_context = ssl.create_default_context()
        ca_context = ssl.create_default_context()
        ca = _material(cluster, "certificate-authority", where)
        if ca is not None:
            try:
                ssl_context.load_verify_locations(cadata=ca.decode())
                ca_context.load_verify_locations(cadata=ca.decode())
            except (ssl.SSLError, ValueError) as exc:
                raise KubeconfigError(
                    f"kubeconfig {where}: certificate-authority does not load: {exc}"
                ) from None
        cert = _material(user, "client-certificate", where)
        key = _material(user, "client-key", where)
        if cert is not None and key is not None:
            _load_pair(ssl_context, cert, key)
    token = user.get("token")
    token_file = user.get("tokenFile")
    if token_file is not None and not isinstance(token_file, str):
        raise KubeconfigError(f"kubeconfig {where}: tokenFile must be a path")
    return Credentials(
        url.rstrip("/"),
        ssl_context,
        token if isinstance(token, str) else None,
        user_name,
        token_file,
        ca_context,
    )


def _named(doc: dict[str, Any], section: str, name: Any, where: str) -> dict[str, Any]:
    for entry in doc.get(section) or ():
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    raise KubeconfigError(f"kubeconfig {where}: no {section[:-1]} named {name!r}")


def _material(entry: dict[str, Any], field: str, where: str) -> bytes | None:
    """PEM bytes from `<field>-data` (base64) or `<field>` (a file)."""
    data = entry.get(f"{field}-data")
    if isinstance(data, str):
        try:
            return base64.b64decode(data, validate=True)
        except ValueError:
            raise KubeconfigError(f"kubeconfig {where}: {field}-data is not base64") from None
    path = entry.get(field)
    if isinstance(path, str):
        try:
            return Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise KubeconfigError(f"kubeconfig {where}: {field}: {exc}") from None
    return None


def _load_pair(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # ssl loads a certificate and key from files only: a private directory, removed at once
    with tempfile.TemporaryDirectory(prefix="haplane-") as tmp:
        os.chmod(tmp, 0o700)
        paths = []
        for name, data in (("cert.pem", cert), ("key.pem", key)):
            p = Path(tmp) / name
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            paths.append(p)
        try:
            context.load_cert_chain(str(paths[0]), str(paths[1]))
        except ssl.SSLError as exc:
            raise KubeconfigError(f"the client certificate and key do not load: {exc}") from None
