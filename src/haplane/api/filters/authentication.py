"""Who is asking, as kube-apiserver's union of authenticators decides it: a verified client
certificate (CN the user, O the groups), else a bearer token (the static token file, then
ServiceAccount tokens), else anonymous.

Layer: api (filters). Sets `request["user"]` (haplane.auth.user.UserInfo); every
authenticated user also gets `system:authenticated`.

Rules:
- A client certificate counts only when the TLS handshake verified it against the platform CA
  (the server's context asks for one, optionally); nothing in a header is believed on its own.
- A front proxy (the gate in L7 mode) may pass the client's identity on in `X-Remote-User`,
  `X-Remote-Group` and `X-Remote-Extra-*`, as kube-aggregator's requestheader authenticator
  allows: only when the proxy's own verified certificate names one of `front_proxy_names`.
  From anyone else those headers are ignored (and an identity asserted in them is refused).
- Credentials that do not check out are 401, whatever the path: a token that failed is never
  downgraded to anonymous.
- Anonymous requests are 401 except on `ANONYMOUS_PATHS` (/livez, /readyz, /healthz,
  /version), as Kubernetes' anonymous-endpoint configuration allows; `anonymous="all"` (an
  insecure topology) lets anonymous reach everything, for authorization to judge.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Literal

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID

from haplane.auth.user import ANONYMOUS, UserInfo

from .. import errors
from ..authenticators import InvalidToken, TokenAuthenticator
from ..request import REQUEST_USER, Handler, RequestInfo

ANONYMOUS_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/version"})
REMOTE_USER = "X-Remote-User"
REMOTE_GROUP = "X-Remote-Group"
REMOTE_EXTRA = "X-Remote-Extra-"


def certificate_identity(der: bytes) -> UserInfo:
    """CN the user, each O a group (kube-apiserver's x509 authenticator)."""
    subject = x509.load_der_x509_certificate(der).subject
    cn = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    groups = tuple(str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    return UserInfo(cn[0] if cn else "", groups=groups)


def peer_certificate(request: web.BaseRequest) -> bytes | None:
    """The client's certificate, verified by the handshake (DER), or None."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    return ssl_object.getpeercert(binary_form=True)


class Authenticate:
    def __init__(
        self,
        tokens: Sequence[TokenAuthenticator] = (),
        *,
        anonymous: Literal["all", "health"] = "health",
        front_proxy_names: frozenset[str] = frozenset(),
    ):
        self.tokens = tuple(tokens)
        self.anonymous = anonymous
        self.front_proxy_names = front_proxy_names

    async def __call__(self, request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
        user = await self.user(request)
        request["user"] = user
        token = REQUEST_USER.set(user)
        try:
            return await handler(request)
        finally:
            REQUEST_USER.reset(token)

    async def user(self, request: web.BaseRequest) -> UserInfo:
        headers = request.headers
        der = peer_certificate(request)
        if der is not None:
            user = certificate_identity(der)
            if self.front_proxy_names and user.name in self.front_proxy_names:
                # A front proxy's certificate names the proxy, never a user: without
                # X-Remote-User the request is judged by its own credentials (a bearer token
                # the proxy passed on), or as anonymous, as kube-apiserver does (there the
                # proxy's certificate comes from another CA than users').
                proxied = self._from_front_proxy(request)
                if proxied is not None:
                    return proxied.authenticated()
            elif user.name:
                return user.authenticated()
        if REMOTE_USER in headers:
            # an identity asserted by someone who is not a verified front proxy
            raise errors.unauthorized()
        auth = headers.get("Authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise errors.unauthorized()
            for authenticate in self.tokens:
                try:
                    found = await authenticate(token)
                except InvalidToken:
                    raise errors.unauthorized() from None
                if found is not None:
                    return found.authenticated()
            raise errors.unauthorized()
        info: RequestInfo = request["info"]
        if self.anonymous == "all" or info.path in ANONYMOUS_PATHS:
            return ANONYMOUS
        raise errors.unauthorized()

    @staticmethod
    def _from_front_proxy(request: web.BaseRequest) -> UserInfo | None:
        headers = request.headers
        name = headers.get(REMOTE_USER, "")
        if not name:
            return None
        groups = tuple(headers.getall(REMOTE_GROUP, ()))
        extra: dict[str, list[str]] = {}
        for key, value in headers.items():
            if key.lower().startswith(REMOTE_EXTRA.lower()):
                extra.setdefault(key[len(REMOTE_EXTRA) :].lower(), []).append(value)
        forwarded = headers.get("X-Forwarded-For", "")
        request["forwarded_for"] = tuple(a.strip() for a in forwarded.split(",") if a.strip())
        return UserInfo(name, groups=groups, extra=extra)
