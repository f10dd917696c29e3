"""One real etcd cluster on this machine, outside any topology: N members on free loopback ports.

Layer: run (local). For test fixtures and benchmarks: built from the same pieces `haplane up`
uses (member command line, supervised process, port registry, quorum check), so they are
exercised too. Election timing defaults to the fast 25/250 ms that suits one cluster alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from haplane.auth.pki import CertRequest, Pki
from haplane.store import (
    EtcdBinary,
    EtcdClient,
    EtcdError,
    EtcdTls,
    MemberAddress,
    MemberTls,
    find_etcd,
    member_command,
)
from haplane.topology import EtcdClusterView, EtcdMemberView, ResolvedEtcdSettings

from .ports import PortRegistry
from .process import ManagedProcess, ProcessSpec
from .supervisor import cluster_ready, stop_leader_last


class EtcdCluster:
    def __init__(
        self,
        root: Path,
        *,
        size: int = 3,
        heartbeat_ms: int = 25,
        election_ms: int = 250,
        binary: EtcdBinary | None = None,
        scope: str = "test",
        unsafe_no_fsync: bool = True,
        tls: bool = False,
    ):
        """`tls`: members serve clients and peers over TLS with client-certificate
        authentication, from a CA of the cluster's own under `root/pki` (`client_tls` is a
        client certificate it accepts)."""
        self.root = root
        self.binary = binary or find_etcd()
        settings = ResolvedEtcdSettings(
            heartbeat_interval_ms=heartbeat_ms,
            election_timeout_ms=election_ms,
            auto_compaction_retention="1h",
            quota_backend_bytes=2 * 1024**3,
            unsafe_no_fsync=unsafe_no_fsync,
        )
        members = [
            EtcdMemberView(scope, f"etcd-{i}", "site", f"z{i}", "127.0.0.1", None, None)
            for i in range(1, size + 1)
        ]
        self.view = EtcdClusterView(scope=scope, settings=settings, members=members)
        ports = PortRegistry(root / "ports.json")
        self.addresses = {
            m.qualified_name: MemberAddress(
                "127.0.0.1",
                ports.resolve(f"{m.qualified_name}#client", "127.0.0.1", None),
                ports.resolve(f"{m.qualified_name}#peer", "127.0.0.1", None),
                tls=tls,
            )
            for m in members
        }
        self.pki: Pki | None = None
        self.client_tls: EtcdTls | None = None
        member_tls: dict[str, MemberTls] = {}
        if tls:
            self.pki = Pki(root / "pki")
            self.pki.ensure_ca(f"etcd {scope} CA")
            for m in members:
                serving = self.pki.ensure(
                    CertRequest(
                        f"{m.name}-server",
                        m.name,
                        ip_addresses=("127.0.0.1",),
                        dns_names=("localhost",),
                        server=True,
                    )
                )
                peer = self.pki.ensure(
                    CertRequest(
                        f"{m.name}-peer",
                        m.name,
                        ip_addresses=("127.0.0.1",),
                        server=True,
                        client=True,
                    )
                )
                member_tls[m.qualified_name] = MemberTls(
                    self.pki.ca_cert, serving.cert, serving.key, peer.cert, peer.key
                )
            client = self.pki.ensure(CertRequest("root", "root", client=True))
            self.client_tls = EtcdTls(client.ca, client.cert, client.key)
        self.processes = {
            m.qualified_name: ManagedProcess(
                ProcessSpec(
                    name=m.qualified_name,
                    kind="etcd",
                    argv=member_command(
                        self.binary,
                        "tests",
                        self.view,
                        m,
                        self.addresses,
                        root / "data" / m.name,
                        member_tls.get(m.qualified_name),
                    ),
                    log_path=root / "logs" / f"{m.name}.log",
                    pid_path=root / "run" / f"{m.name}.json",
                )
            )
            for m in members
        }

    @property
    def names(self) -> list[str]:
        return list(self.processes)

    @property
    def endpoints(self) -> list[str]:
        return [a.client_endpoint for a in self.addresses.values()]

    def endpoint(self, name: str) -> str:
        return self.addresses[name].client_endpoint

    def client(self, timeout: float = 0.5) -> EtcdClient:
        return EtcdClient(self.endpoints, timeout=timeout, tls=self.client_tls)

    async def start(self, timeout: float = 30.0) -> None:
        for p in self.processes.values():
            await p.spawn()
            p.supervise()
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 30.0, names: list[str] | None = None) -> None:
        eps = [self.endpoint(n) for n in names] if names else self.endpoints
        async with self.client() as c:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                if await cluster_ready(c, eps):
                    return
                await asyncio.sleep(0.05)
        raise TimeoutError(f"etcd cluster not ready in {timeout}s; logs in {self.root / 'logs'}")

    async def leader(self) -> str:
        async with self.client() as c:
            for name in self.names:
                try:
                    st = await c.status(self.endpoint(name))
                except EtcdError:
                    continue
                if st.is_leader:
                    return name
        raise RuntimeError("no leader")

    async def stop(self) -> None:
        """Every member, the leader last (`stop_leader_last`: seconds faster)."""

        async def stop(name: str) -> None:
            await self.processes[name].stop(grace=2.0)

        async with self.client(timeout=0.5) as c:
            await stop_leader_last(c, {n: self.endpoint(n) for n in self.names}, stop)
        await asyncio.gather(*(p.stop(grace=2.0) for p in self.processes.values()))
