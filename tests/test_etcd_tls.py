"""etcd over TLS with client-certificate authentication, clients and peers
(haplane.store.MemberTls, EtcdTls): a client with a certificate of the platform CA reads,
writes and watches, also across a leader's death (peers re-elect over TLS); plain text, no
client certificate, a certificate of another CA, or a server checked against another CA are
all refused."""

from __future__ import annotations

import asyncio
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from haplane.auth.pki import CertRequest, Pki
from haplane.local.etcd_cluster import EtcdCluster
from haplane.store import EtcdClient, EtcdError, EtcdTls


@pytest_asyncio.fixture(scope="module")
async def tls_cluster(tmp_path_factory) -> AsyncIterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-tls"), tls=True, scope="tls")
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


class _NoClientCert:
    """TLS that trusts the CA but presents no certificate of its own."""

    def __init__(self, ca: Path):
        self.ca = ca

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())


async def test_a_platform_certificate_reads_writes_and_watches(tls_cluster: EtcdCluster):
    assert all(a.client_url.startswith("https://") for a in tls_cluster.addresses.values())
    async with tls_cluster.client(timeout=2.0) as client:
        await client.put(b"/tls/a", b"1")
        got = await client.get(b"/tls/a")
        assert got is not None and got.value == b"1"

        async def first_event() -> bytes:
            async for batch in client.watch(b"/tls/w", start_revision=got.mod_revision):
                for ev in batch.events:
                    return ev.kv.value
            return b""

        watching = asyncio.create_task(first_event())
        await client.put(b"/tls/w", b"seen")
        assert await asyncio.wait_for(watching, 10) == b"seen"
        for name in tls_cluster.names:  # every member answers over TLS
            await client.status(tls_cluster.endpoint(name))


async def test_peers_reelect_over_tls(tls_cluster: EtcdCluster):
    leader = await tls_cluster.leader()
    await tls_cluster.processes[leader].fault("kill")
    try:
        async with tls_cluster.client(timeout=2.0) as client:
            deadline = asyncio.get_running_loop().time() + 15
            while True:
                try:
                    await client.put(b"/tls/after", b"2")
                    break
                except EtcdError:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.1)
            assert await tls_cluster.leader() != leader
    finally:
        await tls_cluster.processes[leader].fault("restart")
        await tls_cluster.wait_ready()


def _fetch(url: str, ctx: ssl.SSLContext | None) -> bytes:
    with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
        return bytes(resp.read())


async def _refused(client: EtcdClient) -> None:
    async with client:
        with pytest.raises(EtcdError):
            await client.put(b"/tls/nope", b"x", timeout=1.0)


async def test_plain_text_is_refused(tls_cluster: EtcdCluster):
    await _refused(EtcdClient(tls_cluster.endpoints, timeout=1.0))
    port = tls_cluster.addresses[tls_cluster.names[0]].client_port
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        await asyncio.to_thread(_fetch, f"http://127.0.0.1:{port}/version", None)


async def test_https_without_a_client_certificate_is_refused(tls_cluster: EtcdCluster):
    assert tls_cluster.pki is not None
    await _refused(
        EtcdClient(tls_cluster.endpoints, timeout=1.0, tls=_NoClientCert(tls_cluster.pki.ca_cert))
    )  # type: ignore[arg-type]
    port = tls_cluster.addresses[tls_cluster.names[0]].client_port
    ctx = ssl.create_default_context(cafile=str(tls_cluster.pki.ca_cert))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        await asyncio.to_thread(_fetch, f"https://127.0.0.1:{port}/version", ctx)


async def test_other_cas_are_refused(tls_cluster: EtcdCluster, tmp_path: Path):
    assert tls_cluster.pki is not None and tls_cluster.client_tls is not None
    other = Pki(tmp_path / "other")
    other.ensure_ca("other")
    stranger = other.issue(CertRequest("root", "root", client=True))
    # a client certificate of another CA
    await _refused(
        EtcdClient(
            tls_cluster.endpoints,
            timeout=1.0,
            tls=EtcdTls(tls_cluster.pki.ca_cert, stranger.cert, stranger.key),
        )
    )
    # the members checked against another CA: their certificates do not verify
    mine = tls_cluster.client_tls
    await _refused(
        EtcdClient(
            tls_cluster.endpoints, timeout=1.0, tls=EtcdTls(other.ca_cert, mine.cert, mine.key)
        )
    )


async def test_a_slow_handshake_is_not_cut_short_before_the_calls_deadline():
    """A member whose TLS handshake is slow (a loaded machine: here one that never answers)
    keeps the call waiting until its own deadline, or the connect timeout: the channel does
    not give up on the attempt after 100 ms (gRPC reads `grpc.min_reconnect_backoff_ms` as the
    minimum connect timeout; it was 100 ms, and such calls failed in ~0.14 s)."""
    import socket
    import time

    from haplane.store.etcd_client import CONNECT_TIMEOUT_MS

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    held: list[socket.socket] = []

    async def accept() -> None:  # accept, never speak
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            held.append(conn)

    task = asyncio.create_task(accept())
    port = listener.getsockname()[1]

    class SystemRoots:
        def credentials(self) -> grpc.ChannelCredentials:
            return grpc.ssl_channel_credentials()

    client = EtcdClient([f"127.0.0.1:{port}"], timeout=0.8, tls=SystemRoots())  # type: ignore[arg-type]
    try:
        t0 = time.monotonic()
        with pytest.raises(EtcdError):
            await client.status(f"127.0.0.1:{port}")
        took = time.monotonic() - t0
        assert took >= min(0.7, CONNECT_TIMEOUT_MS / 1000 * 0.9), took
        assert held, "the client never connected"
    finally:
        await client.close()
        task.cancel()
        for c in held:
            c.close()
        listener.close()
