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
  allows: only when the proxy's own verified certificate was issued by the front-proxy CA
  (`--requestheader-client-ca-file`, a CA of its own that signs nothing else) and names one of
  `--requestheader-allowed-names` (any name when that list is empty, as in Kubernetes). A
  certificate from that CA is never a user; a certificate from the client CA is never a proxy,
  whatever its name. A user's verified certificate is the request's identity (any X-Remote-*
  headers beside it count for nothing, as in kube-apiserver); without one, X-Remote-* headers
  are refused (401).
- Credentials that do not check out are 401, whatever the path: a token that failed is never
  downgraded to anonymous.
- Anonymous requests are 401 except on `ANONYMOUS_PATHS` (/livez, /readyz, /healthz,
  /version), as Kubernetes' anonymous-endpoint configuration allows; `anonymous="all"` (an
  insecure topology) lets anonymous reach everything, for authorization to judge.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from haplane.auth.user import ANONYMOUS, UserInfo

from .. import errors
from ..authenticators import InvalidToken, TokenAuthenticator
from ..request import REQUEST_USER, Handler, RequestInfo

ANONYMOUS_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/version"})
REMOTE_USER = "X-Remote-User"
REMOTE_GROUP = "X-Remote-Group"
REMOTE_EXTRA = "X-Remote-Extra-"


def _identity(cert: x509.Certificate) -> UserInfo:
    """CN the user, each O a group (kube-apiserver's x509 authenticator)."""
    subject = cert.subject
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


class FrontProxies:
    """Which verified client certificates are front proxies: those issued by a CA in
    `ca_file` (the front-proxy CA) whose CN is in `names` (any CN when `names` is empty).

    The TLS handshake verified the certificate against the client CA and the front-proxy CA
    together (one listener serves both); which of them issued it is decided here, by
    checking the issuer's signature on the certificate (Python 3.11's ssl module does not
    return the verified chain). Certificates chained through an intermediate of the
    front-proxy CA are not proxies: haplane's front-proxy CA signs its leaf directly."""

    def __init__(self, ca_file: str | Path, names: frozenset[str] = frozenset()):
        try:
            self.cas = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"--requestheader-client-ca-file {ca_file}: {exc}") from None
        self.names = names

    def issued(self, cert: x509.Certificate) -> bool:
        for ca in self.cas:
            if cert.issuer != ca.subject:
                continue
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
        return False


class Authenticate:
    def __init__(
        self,
        tokens: Sequence[TokenAuthenticator] = (),
        *,
        anonymous: Literal["all", "health"] = "health",
        front_proxies: FrontProxies | None = None,
    ):
        self.tokens = tuple(tokens)
        self.anonymous = anonymous
        self.front_proxies = front_proxies
        # what a verified certificate is, by its DER: a signature check and a parse per
        # request would cost ~100 us; the set of distinct client certificates is small
        self.classify = lru_cache(maxsize=4096)(self._classify)

    def _classify(self, der: bytes) -> UserInfo | Literal["proxy", "refused"]:
        """A user (the client CA issued it), a front proxy, or a front-proxy CA certificate
        whose name is not allowed (refused: kube-apiserver's requestheader authenticator
        fails it, and the x509 one cannot verify it)."""
        cert = x509.load_der_x509_certificate(der)
        proxies = self.front_proxies
        if proxies is not None and proxies.issued(cert):
            user = _identity(cert)
            return "proxy" if not proxies.names or user.name in proxies.names else "refused"
        return _identity(cert)

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
            who = self.classify(der)
            if who == "refused":
                raise errors.unauthorized()
            if who == "proxy":
                # A front proxy's certificate names the proxy, never a user: without
                # X-Remote-User the request is judged by its own credentials (a bearer token
                # the proxy passed on), or as anonymous, as kube-apiserver does.
                proxied = self._from_front_proxy(request)
                if proxied is not None:
                    return proxied.authenticated()
            elif who.name:
                return who.authenticated()
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
