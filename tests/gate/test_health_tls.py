"""Active health checks over HTTPS (haplane.gate.health.probe with a CA): a replica serving
TLS is checked with its certificate verified; another CA's server, or plain HTTP against TLS,
fails the check with the reason; a client certificate is presented when configured."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from haplane.auth.pki import CertRequest, Pki, server_context
from haplane.gate.health import CheckOutcome, probe
from haplane.gate.settings import HealthCheck

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


@pytest_asyncio.fixture
async def tls_server(tmp_path) -> AsyncIterator[tuple[int, Pki, list[bytes | None]]]:
    pki = Pki(tmp_path / "pki")
    pki.ensure_ca("test")
    paths = pki.issue(CertRequest("replica", "replica", ip_addresses=("127.0.0.1",), server=True))
    seen: list[bytes | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obj = writer.get_extra_info("ssl_object")
        seen.append(obj.getpeercert(binary_form=True) if obj else None)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ANSWER)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(
        handle, "127.0.0.1", 0, ssl=server_context(paths, "optional")
    )
    try:
        yield server.sockets[0].getsockname()[1], pki, seen
    finally:
        server.close()
        await server.wait_closed()


async def test_https_check_verifies_the_upstream(tls_server, tmp_path):
    port, pki, seen = tls_server
    ok = await probe("127.0.0.1", port, HealthCheck(interval=2, tls_ca=str(pki.ca_cert)))
    assert ok.outcome is CheckOutcome.OK, ok
    assert seen[-1] is None  # no client certificate asked for, none sent
    checker = pki.issue(CertRequest("checker", "lb-1", client=True))
    check = HealthCheck(
        interval=2, tls_ca=str(pki.ca_cert), tls_cert=str(checker.cert), tls_key=str(checker.key)
    )
    assert (await probe("127.0.0.1", port, check)).outcome is CheckOutcome.OK
    assert seen[-1] is not None
    other = Pki(tmp_path / "other")
    other.ensure_ca("other")
    wrong = await probe("127.0.0.1", port, HealthCheck(interval=2, tls_ca=str(other.ca_cert)))
    assert wrong.outcome is not CheckOutcome.OK and wrong.reason.startswith("TLS"), wrong
    plain = await probe("127.0.0.1", port, HealthCheck(interval=2))
    assert plain.outcome is not CheckOutcome.OK, plain


def test_check_config_tls_fields():
    import pytest
    from pydantic import ValidationError

    from haplane.gate.config import CheckConfig

    c = CheckConfig(tls_ca="/ca.crt", tls_cert="/c.crt", tls_key="/c.key").to_health_check()
    assert (c.tls_ca, c.tls_cert, c.tls_key) == ("/ca.crt", "/c.crt", "/c.key")
    with pytest.raises(ValidationError, match="go together"):
        CheckConfig(tls_ca="/ca.crt", tls_cert="/c.crt")
    with pytest.raises(ValidationError, match="needs tls_ca"):
        CheckConfig(tls_cert="/c.crt", tls_key="/c.key")
