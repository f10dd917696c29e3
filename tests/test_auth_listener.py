"""`haplane.auth.listener.ListenerAccess` on a real HTTPS listener: health to anyone, reads
to system:masters and system:monitoring, writes to system:masters only, nothing without a
certificate of the platform CA; the serving pair reloaded when its files change, and kept
when they are caught half-written."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import ClientSession, TCPConnector, web
from cryptography import x509

from haplane.auth.listener import ListenerAccess

from .pki_helpers import TestCA

HEALTH = ("/readyz",)


class Listener:
    def __init__(self, access: ListenerAccess, port: int, ca: TestCA):
        self.access, self.port, self.ca = access, port, ca

    async def call(self, method: str, path: str, pair: tuple[Path, Path] | None = None) -> int:
        ctx = ssl.create_default_context(cafile=str(self.ca.path))
        if pair is not None:
            ctx.load_cert_chain(str(pair[0]), str(pair[1]))
        async with (
            ClientSession(connector=TCPConnector(ssl=ctx, force_close=True)) as session,
            session.request(method, f"https://127.0.0.1:{self.port}{path}") as resp,
        ):
            return resp.status

    def served_serial(self) -> int:
        ctx = ssl.create_default_context(cafile=str(self.ca.path))
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
        ):
            der = s.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


@pytest_asyncio.fixture
async def listener(tmp_path: Path) -> AsyncIterator[Listener]:
    ca = TestCA(tmp_path / "pki")
    cert, key = ca.issue("serving", "lb", server=True)
    access = ListenerAccess(cert, key, ca.path)

    @web.middleware
    async def guard(request: web.Request, handler):  # type: ignore[no-untyped-def]
        refused = access.refusal(request, HEALTH)
        if refused is not None:
            return web.Response(status=refused[0], text=refused[1])
        return await handler(request)

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[guard])
    app.router.add_route("*", "/{tail:.*}", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=access.context())
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Listener(access, port, ca)
    finally:
        await runner.cleanup()


async def test_reads_writes_and_health(listener: Listener):
    ca = listener.ca
    masters = ca.issue("admin", "admin", ("system:masters",))
    scraper = ca.issue("scraper", "prometheus", ("system:monitoring",))
    dev = ca.issue("dev", "alice", ("dev",))
    call = listener.call
    assert await call("GET", "/readyz") == 200
    assert await call("GET", "/status") == 401
    assert await call("POST", "/pool") == 401
    assert await call("GET", "/status", dev) == 403
    assert await call("GET", "/metrics", scraper) == 200
    assert await call("HEAD", "/metrics", scraper) == 200
    assert await call("POST", "/pool", scraper) == 403
    assert await call("DELETE", "/pool", scraper) == 403
    assert await call("GET", "/status", masters) == 200
    assert await call("POST", "/pool", masters) == 200
    # a certificate from another CA never reaches the handler
    other = TestCA(ca.root.parent / "other", "other-ca").issue("x", "admin", ("system:masters",))
    with pytest.raises(Exception):  # noqa: B017 (aiohttp wraps the TLS alert variously)
        await call("GET", "/status", other)


async def test_the_serving_pair_is_reloaded_whole_or_not_at_all(listener: Listener):
    access, ca = listener.access, listener.ca
    first = await asyncio.to_thread(listener.served_serial)
    assert not access.reload_if_changed()  # nothing changed
    cert, key = ca.issue("next", "lb", server=True)
    shutil.copy(cert, access.cert)
    shutil.copy(key, access.key)
    assert access.reload_if_changed()
    second = await asyncio.to_thread(listener.served_serial)
    assert second != first
    # half-way through a rotation: a new certificate beside the old key
    cert, _ = ca.issue("third", "lb", server=True)
    shutil.copy(cert, access.cert)
    assert not access.reload_if_changed()
    assert await asyncio.to_thread(listener.served_serial) == second
