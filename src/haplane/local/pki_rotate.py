"""`haplane pki rotate` and `haplane pki status`: new leaf certificates for a running topology,
one component at a time, each taken only once the one before serves its new certificate and
is healthy; and every certificate with its expiry.

Layer: run (`haplane.local`). Writes only under `STATE/pki` (through `haplane.auth.pki`);
reads the components over the network (TLS handshakes, health endpoints, etcd status).

No component restarts. Each one picks a rotated pair up by itself, from the next handshake on:
etcd re-reads its files at every handshake; API replicas and the admin listeners of balancers,
gates and replicators look at theirs every second; etcd clients read theirs for every new
connection. Connections already open keep the certificate they began with, so nothing is
dropped, and the old certificate stays valid until it expires (no revocation: the CA is kept).

Health gate, per component: before, it must be healthy (a member of a cluster with quorum, a
replica or engine whose `/readyz` answers 200 (or, for a balancer drained for maintenance,
503 `drained: ...`), a replicator whose `/healthz` does); after, its
listener must serve the new certificate (its serial) within `wait` seconds, and it must still
be healthy. A component that is not is reported and the rotation stops there: the ones before
it are rotated, the rest keep their certificates (run it again once fixed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from haplane.auth.pki import Pki, PkiError
from haplane.store import EtcdError
from haplane.topology import Topology

from .gate_plans import TopologyPlan, plan_of
from .security import SCRAPER, SUPERVISOR, PlatformTls, cert_name
from .state_dir import StateDir
from .supervisor import cluster_ready

SETTLE = 10.0  # seconds a component may look unhealthy before the rotation stops at it


class RotationError(Exception):
    """The rotation stopped; the message names the component and why."""


@dataclass
class Component:
    """One process of the topology and the leaves it holds."""

    name: str  # as `haplane status` names it
    kind: str  # etcd, api, balancer, gate, replicator, gitops, console
    host: str
    port: int  # the listener that serves its certificate
    platform: list[str] = field(default_factory=list)  # leaves in pki/platform
    etcd: list[str] = field(default_factory=list)  # leaves in pki/etcd
    health: str | None = None  # URL answering 200 when healthy (None: etcd, by quorum)
    cluster: int | None = None  # index into plan.clusters (etcd members)


def components(plan: TopologyPlan) -> list[Component]:
    """Every component, in rotation order: etcd members (one cluster after another), API
    replicas, replicators, balancers, gates, GitOps controllers."""
    out: list[Component] = []
    for i, cluster in enumerate(plan.clusters):
        for m in cluster.view.members:
            a = cluster.addresses[m.qualified_name]
            out.append(
                Component(
                    m.qualified_name,
                    "etcd",
                    a.host,
                    a.client_port,
                    etcd=[cert_name(k, m.qualified_name) for k in ("member", "peer")],
                    cluster=i,
                )
            )
    # (status name, certificate kind and name, where it serves, its health URL)
    processes = [
        *((r.qualified_name, "api", "apiserver", r.qualified_name, r.host, r.port,
           f"{r.url}/readyz") for r in plan.replicas),
        *((r.qualified_name, "replicator", "replicator", r.qualified_name, r.host, r.port,
           f"{r.url}/healthz") for r in plan.replicators),
        *((b.qualified_name, "balancer", "balancer", b.qualified_name, b.host, b.admin_port,
           f"{b.admin_url}/readyz") for b in plan.balancers),
        *((g.qualified_name, "gate", "gate", g.name, g.host, g.admin_port,
           f"{g.admin_url}/readyz") for g in plan.gates),
    ]  # fmt: skip
    for name, kind, cert_kind, cert_of, host, port, health in processes:
        q = f"{cert_kind}/{cert_of}"
        out.append(
            Component(name, kind, host, port, [cert_name(q)], [cert_name("client", q)], health)
        )
    # GitOps controllers: their listener's certificate only (they reload it when it changes)
    for x in plan.gitops:
        q = f"gitops/{x.name}"
        out.append(
            Component(
                x.qualified_name, "gitops", x.host, x.port, [cert_name(q)], [], f"{x.url}/healthz"
            )
        )
    # consoles: the same (their HTTPS listener's pair, reloaded when the files change)
    for c in plan.console:
        q = f"console/{c.name}"
        out.append(
            Component(
                c.qualified_name, "console", c.host, c.port, [cert_name(q)], [], f"{c.url}/livez"
            )
        )
    return out


def _serial_on_disk(pki_dir: Path, name: str) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate((pki_dir / f"{name}.crt").read_bytes()).serial_number


async def served_serial(host: str, port: int, context: ssl.SSLContext, timeout: float) -> int:
    """The serial number of the certificate a listener serves to a new connection."""
    from cryptography import x509

    _, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=context, server_hostname=host), timeout
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(writer.wait_closed(), timeout)
    return int(x509.load_der_x509_certificate(der).serial_number)


class Rotation:
    def __init__(
        self,
        topology: Topology,
        state: StateDir,
        *,
        wait: float = 15.0,
        progress: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.started = False  # a component was taken (a stop is then worth an Event)
        self.plan = plan_of(topology, state)
        if self.plan.tls is None:
            raise RotationError("this topology runs with `security.insecure: true`: no PKI")
        self.tls: PlatformTls = self.plan.tls
        self.tls.check()  # MissingCredentials: nothing to rotate, nothing ran here
        older = [
            str(p)
            for p in (
                self.tls.front_proxy_ca,
                *(self.tls.member(m.qualified_name).peer_cert
                  for c in self.plan.clusters for m in c.view.members),
            )
            if not p.is_file()
        ]  # fmt: skip
        if older:
            raise RotationError(
                f"{state.root} predates this haplane's certificate layout ({older[0]} is "
                "missing): run `haplane down` and `haplane up` once, which issues what is new"
            )
        self.wait = wait
        self.progress = progress

    def _contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """(towards the platform's listeners, towards etcd), each with a client certificate."""
        return self.tls.client_context(), self.tls.etcd_client_context()

    async def _healthy(self, c: Component) -> str | None:
        """None when healthy, else why not."""
        if c.kind == "etcd":
            assert c.cluster is not None
            cluster = self.plan.clusters[c.cluster]
            try:
                async with cluster.client(1.0) as client:
                    if not await cluster_ready(client, cluster.endpoints):
                        return f"{cluster.view.name} has no quorum, or a member sees no leader"
                    await client.status(f"{c.host}:{c.port}", timeout=1.0)
            except EtcdError as exc:
                return str(exc)
            return None
        assert c.health is not None
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=2.0),
                    connector=aiohttp.TCPConnector(ssl=self.tls.client_context(identity=False)),
                ) as session,
                session.get(c.health) as resp,
            ):
                if resp.status == 200:
                    return None
                said = await resp.text()
                if c.kind == "balancer" and resp.status == 503 and '"drained: ' in said:
                    return None  # out of service on purpose (`maintenance drain`), and alive
                return f"{c.health} answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{c.health}: {exc or type(exc).__name__}"

    async def rotate(self, only: list[str] | None = None) -> list[str]:
        """Rotate every component (or those named in `only`), then the operator's own
        certificates; returns the leaves rotated."""
        chosen = components(self.plan)
        if only:
            known = {c.name for c in chosen}
            unknown = [n for n in only if n not in known]
            if unknown:
                raise RotationError(
                    f"no component named {', '.join(unknown)}; known: {', '.join(sorted(known))}"
                )
            chosen = [c for c in chosen if c.name in only]
        platform_pki, etcd_pki = Pki(self.tls.platform_dir), Pki(self.tls.etcd_dir)
        rotated: list[str] = []
        for c in chosen:
            why = await self._healthy(c)
            # the previous component's restart may have started an election a moment ago:
            # unhealthy for SETTLE seconds in a row stops the rotation, a blip does not
            settle = time.monotonic() + SETTLE
            while why is not None and time.monotonic() < settle:
                await asyncio.sleep(0.5)
                why = await self._healthy(c)
            if why is not None:
                raise RotationError(
                    f"{c.name} is not healthy ({why}): rotation stopped before it "
                    f"({len(rotated)} certificates rotated so far); fix it and run again"
                )
            t0 = time.monotonic()
            self.started = True  # a component is taken: a stop from here on is worth telling
            try:
                await asyncio.to_thread(etcd_pki.rotate, c.etcd)
                await asyncio.to_thread(platform_pki.rotate, c.platform)
            except (PkiError, OSError) as exc:
                raise RotationError(f"{c.name}: {exc}") from None
            rotated += [f"etcd/{n}" for n in c.etcd] + [f"platform/{n}" for n in c.platform]
            await self._await_served(c)
            why = await self._healthy(c)
            if why is not None:
                raise RotationError(f"{c.name} is unhealthy after its rotation: {why}")
            self.progress(f"{c.name}: serving its new certificate ({time.monotonic() - t0:.1f}s)")
        if not only:
            # the supervisor's and the CLI's: their next connections use the new pair
            # (and the l7 gates' front-proxy certificate: read for each new upstream connection)
            names = [cert_name("client", SUPERVISOR)]
            users = ["admin"]
            # Prometheus' (`haplane export prometheus`), where `up` issued them: its next
            # scrapes present the new pair
            if (self.tls.etcd_dir / f"{cert_name('client', SCRAPER)}.crt").is_file():
                names.append(cert_name("client", SCRAPER))
            if self.tls.scraper.cert.is_file():
                users.append(SCRAPER)
            # the consoles' own identity (they act for certificate users with it): each
            # console loads the new pair when the files change, for its next connections
            if self.tls.console_client.cert.is_file():
                users.append("console-client")
            await asyncio.to_thread(etcd_pki.rotate, names)
            await asyncio.to_thread(platform_pki.rotate, users)
            await asyncio.to_thread(Pki(self.tls.front_proxy_dir).rotate, ["front-proxy"])
            rotated += [f"etcd/{n}" for n in names] + [f"platform/{n}" for n in users]
            rotated.append("front-proxy/front-proxy")
            self.progress(
                "operator certificates (supervisor, CLI, admin kubeconfig, the consoles' "
                "client pair) and the front proxy's rotated"
            )
        return rotated

    async def _await_served(self, c: Component) -> None:
        directory, name = (
            (self.tls.etcd_dir, c.etcd[0]) if c.kind == "etcd" else (self.tls.platform_dir,
                                                                      c.platform[0])
        )  # fmt: skip
        want = _serial_on_disk(directory, name)
        platform_ctx, etcd_ctx = self._contexts()
        ctx = etcd_ctx if c.kind == "etcd" else platform_ctx
        deadline = time.monotonic() + self.wait
        last: object = None
        while time.monotonic() < deadline:
            try:
                if await served_serial(c.host, c.port, ctx, 2.0) == want:
                    return
                last = "still serving its previous certificate"
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                last = exc
            await asyncio.sleep(0.2)
        raise RotationError(
            f"{c.name} did not serve its new certificate within {self.wait:.0f}s ({last})"
        )
