"""Who may use a component's own HTTPS listener (a balancer's or gate's admin listener, a
replicator's status listener): TLS from the platform's certificates, and client-certificate
groups per method.

Layer: auth. Reads the pair and CA files it is given; knows nothing of what the listener
serves. Imports nothing from haplane outside `auth`.

- Health paths (the caller names them) answer anyone: load balancers, keepalived and the
  gates' checks probe them without an identity.
- Everything else wants a client certificate verified against the platform CA whose subject
  holds one of `read_groups` (O) for GET and HEAD, one of `write_groups` otherwise: 401
  without a certificate, 403 with one of another group.
- The serving pair is re-read when its files change (`haplane pki rotate`), checked before
  OpenSSL sees it: a pair caught half-way through a rotation keeps the old one served.
"""

from __future__ import annotations

import ssl
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .pki import CertPaths, PkiError, identity_from_peercert, reload_server_context, server_context

READ_GROUPS = ("system:masters", "system:monitoring")
WRITE_GROUPS = ("system:masters",)


class _Request(Protocol):
    """What is read of a request (aiohttp's `web.Request` has it)."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def transport(self) -> Any: ...


@dataclass
class ListenerAccess:
    cert: Path
    key: Path
    client_ca: Path | None
    read_groups: frozenset[str] = frozenset(READ_GROUPS)
    write_groups: frozenset[str] = frozenset(WRITE_GROUPS)
    _context: ssl.SSLContext | None = field(default=None, repr=False)
    _loaded: tuple[int, int] | None = field(default=None, repr=False)

    @classmethod
    def of(
        cls,
        cert: str | None,
        key: str | None,
        client_ca: str | None,
        read_groups: Collection[str] = READ_GROUPS,
        write_groups: Collection[str] = WRITE_GROUPS,
    ) -> ListenerAccess | None:
        """None without a serving pair (plain HTTP)."""
        if not cert or not key:
            return None
        return cls(
            Path(cert),
            Path(key),
            Path(client_ca) if client_ca else None,
            frozenset(read_groups),
            frozenset(write_groups),
        )

    def _stamp(self) -> tuple[int, int]:
        return (self.cert.stat().st_mtime_ns, self.key.stat().st_mtime_ns)

    def context(self) -> ssl.SSLContext:
        """The server context (built once; `reload_if_changed` updates it in place)."""
        if self._context is None:
            paths = CertPaths(self.cert, self.key, self.client_ca or self.cert)
            self._context = server_context(
                paths, client_auth="optional" if self.client_ca is not None else "none"
            )
            self._loaded = self._stamp()
        return self._context

    def reload_if_changed(self) -> bool:
        """Serve the pair on disk from the next handshake on, when it changed and is whole."""
        if self._context is None:
            return False
        try:
            stamp = self._stamp()
            if stamp == self._loaded:
                return False
            reload_server_context(self._context, CertPaths(self.cert, self.key, self.cert))
        except (OSError, PkiError):
            return False  # half-rotated: keep serving the pair we have, look again later
        self._loaded = stamp
        return True

    def seconds_to_expiry(self) -> float:
        """Of the pair on disk (what the next handshake serves); -inf when unreadable."""
        from .pki import seconds_to_expiry

        try:
            return seconds_to_expiry(self.cert)
        except (OSError, PkiError):
            return float("-inf")

    def expiry_gauge(self, registry: Any, certificate: str = "serving") -> None:
        """`haplane_certificate_expiry_seconds{certificate=...}` in `registry` (read at each
        scrape), as the API replicas export it."""
        from haplane.telemetry import CERTIFICATE_EXPIRY

        gauge = CERTIFICATE_EXPIRY.gauge(registry)
        gauge.labels(certificate).set_function(self.seconds_to_expiry)

    def refusal(self, request: _Request, public: Collection[str]) -> tuple[int, str] | None:
        """(HTTP code, message) when `request` may not be served; None when it may."""
        if self.client_ca is None or request.path in public:
            return None
        groups = _verified_groups(request)
        if groups is None:
            return 401, "a client certificate from the platform CA is required"
        wanted = self.read_groups if request.method in ("GET", "HEAD") else self.write_groups
        if not wanted.intersection(groups):
            return (
                403,
                f"{request.method} {request.path} needs a client certificate in one of the "
                f"groups {', '.join(sorted(wanted))}",
            )
        return None


def _verified_groups(request: _Request) -> tuple[str, ...] | None:
    transport = request.transport
    tls = transport.get_extra_info("ssl_object") if transport is not None else None
    der = tls.getpeercert(binary_form=True) if tls is not None else None
    if not der:
        return None
    try:
        return identity_from_peercert(der)[1]
    except PkiError:
        return None
