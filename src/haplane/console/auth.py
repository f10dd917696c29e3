"""Who is asking, and what the API lets them see: the console's authentication and
authorization, both delegated to the platform.

Layer: console. Speaks HTTP to the API through a gate (`Platform`), never to the server's
internals. Every API request it makes for a user carries that user's bearer token and nothing
else (no client certificate, so the token is what the API judges), or, for a person who
presented a client certificate, the console's impersonating certificate and that person's name
and groups. (The status it gathers for the map is read with the state dir's credentials, as
`haplane status` reads it: `haplane.local.status`, not this module.)

- **Credentials**: a bearer token, from the `Authorization: Bearer` header (scripts, curl) or
  from the `haplane_console` cookie the login form sets (HttpOnly: page scripts cannot read it;
  Secure: HTTPS only; SameSite=Strict: no other site's page can make a browser send it, which
  is the console's CSRF defence; Path=/).
- **Authentication**: `SelfSubjectReview` (authentication.k8s.io/v1) with the token, through the
  gate: the user the API sees is the user the console shows. A token the API refuses (401) or
  takes for `system:anonymous` is no sign-in. An answer is remembered for `ttl` seconds
  (10 s; keyed by the token's SHA-256, never the token) so that a page and its fragments do
  not cost a review each; a revoked token stops working within that time.
- **Authorization**: per page, by asking the API as the user: the data request itself (a 403 is
  shown as "not allowed" with the API's own words), or a `SelfSubjectAccessReview` where the
  console reads the data itself (the audit log).

- **Client certificates**: a browser that presents a certificate of the platform CA (the
  console's listener asks for one, optionally, and the TLS handshake verifies it) is its owner:
  CN the user, each O a group, as kube-apiserver reads one. The console cannot present a
  browser's certificate onwards (it has no key), so it asks the API as that user by
  impersonation: its own client certificate (`system:haplane:console`, bound to
  `haplane:console`: impersonate users and groups, nothing else) with `Impersonate-User` and
  `Impersonate-Group`. The API authorizes the impersonation and then the user, and its audit
  log names both. A bearer token sent beside a certificate wins (an explicit sign-in), and a
  `system:masters` certificate is not taken (haplane-admin's belongs in the CLI, not in a
  browser).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict

COOKIE = "haplane_console"
COOKIE_MAX_AGE = 8 * 3600  # a sign-in lasts at most a working day (the token may expire sooner)
MAX_TOKEN_BYTES = 8192  # a cookie holds ~4 KB anyway; ServiceAccount JWTs are ~1 KB
ANONYMOUS = "system:anonymous"


class ConsoleAuthError(Exception):
    """Base of the console's authentication errors (each carries what the user is told)::

    ConsoleAuthError
    +-- BadToken             the text is no token (empty, too long, spaces): 400
    +-- NotAuthenticated     the API refused the token, or took it for anonymous: 401
    +-- PlatformUnavailable  the API did not answer (through the gate): 503
    """


class BadToken(ConsoleAuthError):
    pass


class NotAuthenticated(ConsoleAuthError):
    pass


class PlatformUnavailable(ConsoleAuthError):
    pass


@dataclass(frozen=True)
class Identity:
    username: str
    groups: tuple[str, ...] = ()
    uid: str = ""


@dataclass(frozen=True)
class CertUser:
    """The owner of a client certificate the TLS handshake verified: CN the user, O the
    groups. A credential like a token, used through impersonation."""

    username: str
    groups: tuple[str, ...] = ()


Credential = str | CertUser  # a bearer token, or a certificate's owner
MASTERS = "system:masters"


def cert_user(peercert: Any) -> CertUser | None:
    """The owner of a verified peer certificate (`SSLObject.getpeercert()`'s dict), None when
    there is none, it names nobody, or it is a system:masters certificate."""
    if not peercert:
        return None
    cn, groups = "", []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and not cn:
                cn = str(value)
            elif key == "organizationName":
                groups.append(str(value))
    if not cn or MASTERS in groups:
        return None
    return CertUser(cn, tuple(groups))


def check_token(text: str) -> str:
    """The token a login form posted, trimmed; BadToken with the reason otherwise. A token is
    visible ASCII without spaces (JWTs, kube-apiserver's static tokens)."""
    token = text.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    if not token:
        raise BadToken("no token given")
    if len(token.encode()) > MAX_TOKEN_BYTES:
        raise BadToken(f"a token is at most {MAX_TOKEN_BYTES} bytes")
    if any(not (33 <= ord(ch) <= 126) for ch in token):
        raise BadToken("a token is visible ASCII without spaces or line breaks")
    return token


def token_from(authorization: str | None, cookie: str | None) -> str | None:
    """The request's bearer token: the Authorization header's, else the cookie's."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None  # another scheme (Basic...): not a credential the platform takes
    return cookie or None


def identity_of(review: Any) -> Identity:
    """The user a SelfSubjectReview answer names; NotAuthenticated when it names none or the
    anonymous user."""
    info = ((review or {}).get("status") or {}).get("userInfo") or {}
    username = str(info.get("username") or "")
    if not username or username == ANONYMOUS:
        raise NotAuthenticated("the platform took this token for an anonymous user")
    groups = tuple(str(g) for g in info.get("groups") or ())
    return Identity(username, groups, str(info.get("uid") or ""))


def _message(body: Any, status: int) -> str:
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"HTTP {status}"


class Platform:
    """The API through the gates, as whichever user's token is given. One per process.
    `server`: the gate to ask first (the console's own site's); `fallbacks`: the others, asked
    in turn when a gate does not take the connection (down, or refusing new clients while it
    cannot confirm the active region)."""

    def __init__(
        self,
        server: str,
        ca_file: str | None,
        timeout: float = 5.0,
        fallbacks: tuple[str, ...] = (),
        client_pair: tuple[str, str] | None = None,
    ) -> None:
        """`client_pair`: the console's own certificate and key, with which it asks as a
        certificate's owner (impersonation); None: client certificates are not taken."""
        self.server = server.rstrip("/")
        self.servers = [self.server, *(f.rstrip("/") for f in fallbacks if f != server)]
        self._ssl: ssl.SSLContext | bool = False
        if ca_file:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_verify_locations(cafile=ca_file)
            self._ssl = ctx  # trust only; no client certificate: the token decides
        self.client_pair = client_pair
        self._ssl_as: ssl.SSLContext | None = None  # the impersonating identity
        if client_pair is not None and ca_file:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_verify_locations(cafile=ca_file)
            ctx.load_cert_chain(*client_pair)
            self._ssl_as = ctx
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 3.0))
        self._session: aiohttp.ClientSession | None = None
        self._session_as: aiohttp.ClientSession | None = None

    @property
    def takes_certificates(self) -> bool:
        return self._ssl_as is not None

    def reload_client_pair(self) -> None:
        """The console's own pair again (rotated by `haplane pki rotate`): new connections
        present it."""
        if self._ssl_as is not None and self.client_pair is not None:
            self._ssl_as.load_cert_chain(*self.client_pair)

    def _client(self, impersonating: bool = False) -> aiohttp.ClientSession:
        def session(ctx: ssl.SSLContext | bool) -> aiohttp.ClientSession:
            return aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(ssl=ctx, limit=32),
                headers={"Accept": "application/json", "User-Agent": "haplane-console/1"},
            )

        if impersonating:
            assert self._ssl_as is not None
            if self._session_as is None:
                self._session_as = session(self._ssl_as)
            return self._session_as
        if self._session is None:
            self._session = session(self._ssl)
        return self._session

    async def close(self) -> None:
        for s in (self._session, self._session_as):
            if s is not None:
                await s.close()
        self._session = self._session_as = None

    async def request(
        self,
        token: Credential,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, decoded JSON body) of one request as the credential's user (a token's; a
        certificate's owner by impersonation); PlatformUnavailable when nothing answered. A
        connection that failed before an answer (a kept-alive connection the gate closed, a
        gate that refused new clients) is tried again, on the same gate and then on each
        other one: everything the console sends is a read or a review, which stores
        nothing."""
        headers: CIMultiDict[str]
        if isinstance(token, CertUser):
            if not self.takes_certificates:
                raise NotAuthenticated("this console takes no client certificates: sign in")
            headers = CIMultiDict([("Impersonate-User", token.username)])
            for group in token.groups:
                headers.add("Impersonate-Group", group)
        else:
            headers = CIMultiDict([("Authorization", f"Bearer {token}")])
        attempts = [self.servers[0], *self.servers]
        for attempt, server in enumerate(attempts, 1):
            try:
                async with self._client(isinstance(token, CertUser)).request(
                    method, server + path, json=body, params=params, headers=headers
                ) as resp:
                    status = resp.status
                    try:
                        out = await resp.json(content_type=None)
                    except ValueError:
                        out = {"message": (await resp.text())[:300]}
                    return status, out
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionError) as exc:
                if attempt == len(attempts):
                    raise PlatformUnavailable(
                        f"the platform did not answer ({', '.join(self.servers)}): "
                        f"{type(exc).__name__}"
                    ) from exc
                await asyncio.sleep(0.2)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise PlatformUnavailable(
                    f"the platform did not answer ({self.server}): {type(exc).__name__}"
                ) from exc
        raise AssertionError("unreachable")

    async def whoami(self, token: Credential) -> Identity:
        status, out = await self.request(
            token,
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        if status == 401:
            raise NotAuthenticated("the platform refused this token")
        if status == 403 and isinstance(token, CertUser):
            # the console may not act as this certificate's owner (RBAC on impersonation)
            raise NotAuthenticated(
                f"the platform does not let the console act as {token.username}: "
                f"{_message(out, status)}"
            )
        if status >= 400:
            raise PlatformUnavailable(f"SelfSubjectReview: {_message(out, status)}")
        return identity_of(out)

    async def can_i(
        self,
        token: Credential,
        verb: str,
        *,
        path: str | None = None,
        resource: str | None = None,
        namespace: str = "",
        group: str = "",
    ) -> tuple[bool, str]:
        """A SelfSubjectAccessReview: (allowed, the API's reason or a refusal in its words)."""
        attrs: dict[str, Any]
        if path is not None:
            spec: dict[str, Any] = {"nonResourceAttributes": {"path": path, "verb": verb}}
            what = f"{verb} {path}"
        else:
            attrs = {"verb": verb, "resource": resource or "", "group": group}
            if namespace:
                attrs["namespace"] = namespace
            spec = {"resourceAttributes": attrs}
            what = f"{verb} {resource}" + (f" in {namespace}" if namespace else "")
        status, out = await self.request(
            token,
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
             "spec": spec},
        )  # fmt: skip
        if status == 401:
            raise NotAuthenticated("the platform refused this token")
        if status >= 400:
            return False, _message(out, status)
        st = out.get("status") or {} if isinstance(out, dict) else {}
        allowed = bool(st.get("allowed"))
        reason = str(st.get("reason") or "")
        return allowed, reason or (f"may {what}" if allowed else f"RBAC does not allow {what}")


class IdentityCache:
    """Identities the API confirmed, for `ttl` seconds, by the token's SHA-256."""

    def __init__(self, ttl: float = 10.0, size: int = 1024) -> None:
        self.ttl = ttl
        self.size = size
        self._seen: dict[str, tuple[float, Identity]] = {}

    @staticmethod
    def key(token: Credential) -> str:
        if isinstance(token, CertUser):
            return "cert:" + hashlib.sha256(repr(token).encode()).hexdigest()
        return hashlib.sha256(token.encode()).hexdigest()

    def get(self, token: Credential, now: float | None = None) -> Identity | None:
        now = time.monotonic() if now is None else now
        hit = self._seen.get(self.key(token))
        if hit is None or now - hit[0] > self.ttl:
            return None
        return hit[1]

    def put(self, token: Credential, identity: Identity, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._seen) >= self.size:
            # drop the expired, then the oldest: a bounded memory whatever arrives
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] <= self.ttl}
            while len(self._seen) >= self.size:
                self._seen.pop(next(iter(self._seen)))
        self._seen[self.key(token)] = (now, identity)

    def forget(self, token: Credential) -> None:
        self._seen.pop(self.key(token), None)

    async def identify(self, platform: Platform, token: Credential) -> Identity:
        known = self.get(token)
        if known is not None:
            return known
        identity = await platform.whoami(token)
        self.put(token, identity)
        return identity
