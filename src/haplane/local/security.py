"""A running topology's certificates and keys: which component holds which, where they live in
the state dir, and the TLS settings every process and every CLI command is given.

Layer: run (`haplane.local`). Reads the topology and the resolved plans; writes only under
`STATE/pki` (through `haplane.auth.pki`, imported when certificates are issued: the CLI only
reads paths here and stays quick to start).

Three CAs, as kubeadm keeps them:

- **the etcd CA** (`pki/etcd`) signs the members' certificates (one pair serves clients and
  peers) and the client certificate of every process that may open etcd: the API replicas,
  replicators, balancers, gates with their failover controllers, and the supervisor and CLI
  (`client.haplane`). etcd runs with client-certificate authentication, and trusts this CA
  only: a certificate the platform CA gave a person never opens etcd, which would bypass
  RBAC, audit and (later) encryption;
- **the platform CA** (`pki/platform`, created, or the user's `spec.security.ca`) signs the
  API replicas' serving certificates, the balancers', gates' and replicators' admin
  listeners, the GitOps controllers' listeners (webhooks, metrics; they hold no etcd
  certificate: they reach the platform through the gate with a ServiceAccount token), the
  web consoles' HTTPS listeners (kind `console`; no etcd certificate either), and
  people's client certificates (`admin` is `system:masters`, the default
  kubeconfig's identity);
- **the front-proxy CA** (`pki/front-proxy`, always haplane's own) signs one certificate, the
  one l7 gates present to the regions to pass clients' identities on in X-Remote-* headers
  (kube-apiserver's `--requestheader-client-ca-file`). Replicas believe those headers only
  from a certificate this CA issued: nothing the platform CA issues, to a person or from a
  CA the user supplied, can act as a front proxy, and the front-proxy certificate is never a
  user.

API replicas' serving certificates carry every address a client may use to reach them: the
replica's own, every balancer's and every gate's (in L4 mode the TLS session runs end to end
from the client to a replica, whichever address it dialled), the `--netns` site addresses
(they are the hosts of the recorded topology), loopback, and `spec.security.certSANs` (also
on the gates' certificates: an l7 gate serves API clients with it).

`pki/service-account.key` is the ES256 key every region signs and verifies ServiceAccount
tokens with (one key: a token minted before a failover is valid after it).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haplane.store import EtcdTls, MemberTls

from .state_dir import StateDir

if TYPE_CHECKING:
    from datetime import datetime

    from haplane.auth.pki import CertInfo
    from haplane.topology import Topology

    from .gate_plans import TopologyPlan

ADMIN_USER = "haplane-admin"
FRONT_PROXY = "haplane-front-proxy"  # the CN replicas believe X-Remote-* headers from
ADMIN_GROUPS = ("system:masters",)
SUPERVISOR = "haplane"
SCRAPER, SCRAPER_USER = "metrics-scraper", "haplane-metrics-scraper"  # file stem, CN
# the web consoles' identity when they act for a certificate's owner (rbac.CONSOLE_USER; not
# imported from there: this module stays light for the CLI's quick paths)
CONSOLE_USER = "system:haplane:console"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class MissingCredentials(RuntimeError):
    """The state dir has no PKI (or lost part of it): nothing to dial the platform with. The
    CLI prints the message and exits 1."""


def peer_cn(scope: str) -> str:
    """The CN of every peer certificate of one etcd cluster (`eu-west`, `global`)."""
    return f"etcd-peer {scope}"


def cert_name(*parts: str) -> str:
    """A file stem for a component: `eu-west/api-1` -> `eu-west.api-1`."""
    return ".".join(p.replace("/", ".") for p in parts).lower()


@dataclass(frozen=True)
class Pair:
    """A certificate, its key, and the CA that verifies its peers. (`auth.pki.CertPaths` says
    the same, but importing `auth.pki` loads `cryptography`: ~60 ms on every CLI call.)"""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class PlatformTls:
    """Where every certificate of a running topology is (paths only; nothing is read here)."""

    root: Path  # STATE/pki

    @property
    def platform_dir(self) -> Path:
        return self.root / "platform"

    @property
    def etcd_dir(self) -> Path:
        return self.root / "etcd"

    @property
    def front_proxy_dir(self) -> Path:
        return self.root / "front-proxy"

    @property
    def front_proxy_ca(self) -> Path:
        """What replicas verify front proxies (l7 gates) against, and nothing else."""
        return self.front_proxy_dir / "ca.crt"

    @property
    def ca(self) -> Path:
        """The platform CA: what clients of the API and of admin listeners trust."""
        return self.platform_dir / "ca.crt"

    @property
    def etcd_ca(self) -> Path:
        return self.etcd_dir / "ca.crt"

    @property
    def service_account_key(self) -> Path:
        return self.root / "service-account.key"

    @property
    def controller_token(self) -> Path:
        """The failover controller's ServiceAccount token (`controller_token`), renewed by
        the supervisor, read by every gate's controller."""
        return self.root / "tokens" / "failover-controller.token"

    @property
    def gitops_token(self) -> Path:
        """The GitOps controller's ServiceAccount token (`controller_token`), renewed by the
        supervisor, read (kubeconfig `tokenFile`) by every GitOps controller instance."""
        return self.root / "tokens" / "gitops-controller.token"

    def platform(self, name: str) -> Pair:
        return Pair(self.platform_dir / f"{name}.crt", self.platform_dir / f"{name}.key", self.ca)

    def _etcd(self, name: str) -> Pair:
        return Pair(self.etcd_dir / f"{name}.crt", self.etcd_dir / f"{name}.key", self.etcd_ca)

    # ---- who holds what --------------------------------------------------------------------

    def member(self, qualified: str) -> MemberTls:
        """An etcd member: a serving pair for clients, and a peer pair (serverAuth and
        clientAuth) whose CN names the cluster, the only CN its peer port accepts: a client
        certificate of the etcd CA, or another cluster's member, cannot speak raft to it."""
        serving = self._etcd(cert_name("member", qualified))
        peer = self._etcd(cert_name("peer", qualified))
        scope = qualified.rpartition("/")[0]
        return MemberTls(
            self.etcd_ca, serving.cert, serving.key, peer.cert, peer.key, peer_cn(scope)
        )

    def etcd_client(self, who: str) -> EtcdTls:
        """The etcd client certificate of `who` (`SUPERVISOR`, or a component's qualified name
        prefixed by its kind, e.g. `apiserver/eu-west/api-1`)."""
        p = self._etcd(cert_name("client", who))
        return EtcdTls(self.etcd_ca, p.cert, p.key)

    def serving(self, kind: str, qualified: str) -> Pair:
        """The serving pair of an API replica (`apiserver`) or of an admin listener
        (`balancer`, `gate`, `replicator`, `gitops`, `console`)."""
        return self.platform(cert_name(kind, qualified))

    @property
    def front_proxy(self) -> Pair:
        """What l7 gates present to the regions to pass clients' identities on (from the
        front-proxy CA; `ca` is the platform CA, which verifies the replicas they dial)."""
        d = self.front_proxy_dir
        return Pair(d / "front-proxy.crt", d / "front-proxy.key", self.ca)

    @property
    def admin(self) -> Pair:
        """`haplane-admin` in `system:masters`: the CLI's and the default kubeconfig's."""
        return self.platform("admin")

    @property
    def console_client(self) -> Pair:
        """What the web console instances dial the API with to act as a person who signed in
        with a client certificate (`system:haplane:console`, bound to haplane:console: it may
        impersonate users and groups, nothing else)."""
        return self.platform("console-client")

    @property
    def scraper(self) -> Pair:
        """A metrics scraper's (Prometheus'): `haplane-metrics-scraper` in system:monitoring,
        which may get /metrics of every API replica and admin listener, and nothing else."""
        return self.platform(SCRAPER)

    @property
    def etcd_scraper(self) -> EtcdTls:
        """What a scraper gets etcd's /metrics with: etcd 3.4 asks every client of its client
        port for a certificate of the etcd CA, and without etcd's own auth (off here) any
        such certificate may also read and write the keyspace. kube-prometheus scrapes etcd
        the same way: keep it on the Prometheus host as carefully as etcd's data."""
        return self.etcd_client(SCRAPER)

    def check(self) -> None:
        """Raise `MissingCredentials` unless the etcd and platform CAs and the admin's pair
        are here: what every CLI command that dials the platform needs."""
        missing = [
            p for p in (self.ca, self.etcd_ca, self.admin.cert, self.admin.key) if not p.is_file()
        ]
        if missing:
            state = self.root.parent
            raise MissingCredentials(
                f"{state} has no {'PKI' if not self.root.is_dir() else missing[0]}: the "
                "topology has not run here with TLS (`haplane up` creates its certificates), "
                "or its state dir lost them (`haplane up` issues them again)"
            )

    def client_context(self, identity: bool = True) -> ssl.SSLContext:
        """What the CLI, drills and benches dial the platform with: the platform CA, and the
        admin certificate (`identity=False`: none, as an anonymous client)."""
        self.check()
        return _client_context(self.ca, self.admin if identity else None)

    def etcd_client_context(self, who: str = SUPERVISOR) -> ssl.SSLContext:
        """A raw TLS client of etcd's listeners (handshakes, not gRPC): the etcd CA and
        `who`'s etcd client certificate."""
        self.check()
        client = self.etcd_client(who)
        return _client_context(self.etcd_ca, Pair(client.cert, client.key, self.etcd_ca))


def _client_context(ca: Path, pair: Pair | None) -> ssl.SSLContext:
    # stdlib only (auth.pki.client_context checks the pair with `cryptography`, which the CLI
    # does not import on its quick paths)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca))
    if pair is not None:
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
    return ctx


def platform_tls(state: StateDir, topology: Topology) -> PlatformTls | None:
    """The topology's TLS, or None when it runs with `security.insecure: true`."""
    if topology.spec.security.insecure:
        return None
    return PlatformTls(state.root / "pki")


def operator_etcd_tls(state: StateDir, topology: Topology) -> EtcdTls | None:
    """The etcd client certificate the supervisor and the CLI use (None: insecure)."""
    tls = platform_tls(state, topology)
    return tls.etcd_client(SUPERVISOR) if tls is not None else None


def http_ssl(tls: PlatformTls | None, identity: bool = True) -> ssl.SSLContext | bool:
    """aiohttp's `ssl=` for the CLI's requests: the platform CA (and the admin certificate),
    or True (plain HTTP needs nothing)."""
    return tls.client_context(identity) if tls is not None else True


# ---- issuing ---------------------------------------------------------------------------------

_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._:-]{0,62}")


def user_certificate(tls: PlatformTls, user: str, groups: tuple[str, ...], days: int) -> Pair:
    """A person's (or a tool's) client certificate from the platform CA: CN the user, one O
    per group, kept as `pki/platform/user.<name>`; reissued when the groups change or its
    lifetime is not `days` (to within a day)."""
    import datetime as dt
    import hashlib

    from haplane.auth.pki import CertRequest, Pki, PkiError

    if not _USER_NAME.fullmatch(user):
        raise PkiError(f"--user {user!r}: use letters, digits and @._:- (at most 63)")
    if user in (ADMIN_USER, FRONT_PROXY, SCRAPER_USER) or user.startswith("system:"):
        raise PkiError(
            f"--user {user!r} is reserved (haplane's own identities, and Kubernetes' system: "
            "names): choose another name"
        )
    for g in groups:
        if not _USER_NAME.fullmatch(g):
            raise PkiError(f"--group {g!r}: use letters, digits and @._:- (at most 63)")
    if "system:masters" in groups:
        raise PkiError(
            "system:masters is haplane-admin's alone (the default kubeconfig): grant "
            "cluster-admin to a user instead (`haplane grant`, approved by a second person), "
            "which RBAC can take back"
        )
    reserved = [g for g in groups if g.startswith("system:") and g != "system:monitoring"]
    if reserved:
        raise PkiError(
            f"--group {reserved[0]}: system: groups are Kubernetes' own (only "
            "system:monitoring, for metrics scrapers, may be given): use a group of yours and "
            "bind it"
        )
    stem = re.sub(r"[^a-z0-9._-]", "-", user.lower())
    if stem != user:  # `Bob` and `bob` are two users: two files
        stem += "-" + hashlib.sha256(user.encode()).hexdigest()[:8]
    name = cert_name("user", stem)
    pki = Pki(tls.platform_dir)
    req = CertRequest(name, user, organizations=groups, client=True, days=days)
    pki.ensure(req)
    # `ensure` keeps any lifetime that still suits; a user asked for `days`. Compared as
    # issued (not as left), and a certificate the CA's own end cut short is kept.
    cert, ca_end = pki.load_pair(name), pki.load_ca()[0].not_valid_after_utc
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    capped = cert.not_valid_after_utc >= ca_end - dt.timedelta(minutes=1)
    if not capped and abs(lifetime - dt.timedelta(days=days)) > dt.timedelta(days=1):
        pki.issue(req)
    return tls.platform(name)


def _split(names: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DNS names, IP addresses) of a set of hosts, each once, in a stable order."""
    dns: list[str] = []
    ips: list[str] = []
    for name in dict.fromkeys(names):
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name)
    return tuple(dns), tuple(dict.fromkeys(ips))


def _private_dir(path: Path) -> None:
    """`path` as a directory only its owner may enter (it holds keys)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode passes through the umask, and an old one may be 0755


def adopt_ca(tls: PlatformTls, cert_file: Path, key_file: Path) -> None:
    """Copy the user's CA in (checked) unless it is already the platform CA."""
    from haplane.auth.pki import Pki

    _private_dir(tls.root)

    pki = Pki(tls.platform_dir)
    if tls.ca.exists() and tls.ca.read_bytes().strip() == cert_file.read_bytes().strip():
        return
    pki.adopt_ca(cert_file, key_file)


def ensure(tls: PlatformTls, topology: Topology, plan: TopologyPlan) -> list[str]:
    """Create the CAs (the platform CA unless the user's was adopted) and every leaf the
    plan's components need; keep those that still say the right thing and are not near
    expiry. Returns the leaves (re)issued. Idempotent: `up` calls it every time."""
    from haplane.auth.pki import CertRequest, Pki
    from haplane.auth.tokens import load_or_create_key

    days = topology.spec.security.certificate_days
    _private_dir(tls.root)
    platform, etcd, proxy = Pki(tls.platform_dir), Pki(tls.etcd_dir), Pki(tls.front_proxy_dir)
    etcd.ensure_ca(f"{topology.name} etcd CA")
    if not tls.ca.exists():
        platform.ensure_ca(f"{topology.name} platform CA")
    proxy.ensure_ca(f"{topology.name} front-proxy CA")
    for old in ("front-proxy.crt", "front-proxy.key"):
        # before the front-proxy CA, the platform CA issued it: that one must not linger
        (tls.platform_dir / old).unlink(missing_ok=True)
    dirs = (tls.platform_dir, tls.etcd_dir, tls.front_proxy_dir)
    before = {p: p.stat().st_mtime_ns for d in dirs for p in d.glob("*.crt")}

    def leaf(pki: Pki, name: str, cn: str, hosts: Iterable[str] = (), **kw: Any) -> None:
        dns, ips = _split(hosts)
        pki.ensure(
            CertRequest(
                name=name, common_name=cn[:64], dns_names=dns, ip_addresses=ips, days=days, **kw
            )
        )

    for cluster in plan.clusters:
        for m in cluster.view.members:
            hosts = [m.host, *LOOPBACK]
            q = m.qualified_name
            # clientAuth too: etcd 3.4's gRPC gateway dials its own client port with it
            leaf(etcd, cert_name("member", q), f"etcd {q}", hosts, server=True, client=True)
            leaf(etcd, cert_name("peer", q), peer_cn(m.scope), hosts, server=True, client=True)
    leaf(etcd, cert_name("client", SUPERVISOR), "haplane supervisor", client=True)
    extra = topology.spec.security.cert_sans  # a VIP, a DNS name in front of the gates
    every_host = [
        *(r.host for r in plan.replicas),
        *(b.host for b in plan.balancers),
        *(g.host for g in plan.gates),
        *extra,
        *LOOPBACK,
    ]
    for r in plan.replicas:
        q = f"apiserver/{r.qualified_name}"
        leaf(etcd, cert_name("client", q), q, client=True)
        leaf(platform, cert_name(q), q, [r.host, *every_host], server=True)
    for b in plan.balancers:
        q = f"balancer/{b.qualified_name}"
        leaf(etcd, cert_name("client", q), q, client=True)
        leaf(platform, cert_name(q), q, [b.host, *LOOPBACK], server=True, client=True)
    for g in plan.gates:
        q = f"gate/{g.name}"
        leaf(etcd, cert_name("client", q), q, client=True)
        # an l7 gate serves API clients with it (by its address, or one of `extra`)
        leaf(platform, cert_name(q), q, [g.host, *extra, *LOOPBACK], server=True, client=True)
    for rep in plan.replicators:
        q = f"replicator/{rep.qualified_name}"
        leaf(etcd, cert_name("client", q), q, client=True)
        leaf(platform, cert_name(q), q, [rep.host, *LOOPBACK], server=True)
    for x in plan.gitops:
        # its listener only (webhooks from git servers, metrics, health): no etcd certificate
        q = f"gitops/{x.name}"
        leaf(platform, cert_name(q), q, [x.host, *LOOPBACK], server=True)
    for c in plan.console:
        # browsers dial it by its address (and by a name in certSANs, e.g. a DNS name)
        q = f"console/{c.name}"
        leaf(platform, cert_name(q), q, [c.host, *extra, *LOOPBACK], server=True)
    if plan.console:
        leaf(platform, "console-client", CONSOLE_USER, client=True)
    platform.ensure(
        CertRequest("admin", ADMIN_USER, organizations=ADMIN_GROUPS, client=True, days=days)
    )
    # `haplane export prometheus` points Prometheus at these two
    monitoring = ("system:monitoring",)
    platform.ensure(CertRequest(SCRAPER, SCRAPER_USER, monitoring, client=True, days=days))
    leaf(etcd, cert_name("client", SCRAPER), SCRAPER_USER, client=True)
    proxy.ensure(CertRequest("front-proxy", FRONT_PROXY, client=True, days=days))
    load_or_create_key(tls.service_account_key)
    after = [p for d in dirs for p in d.glob("*.crt")]
    return sorted(
        f"{p.parent.name}/{p.stem}"
        for p in after
        if p.stem != "ca" and before.get(p) != p.stat().st_mtime_ns
    )


# ---- expiry ----------------------------------------------------------------------------------


def inventory(tls: PlatformTls) -> list[CertInfo]:
    """Every certificate of the three CAs (CAs first), read from the state dir."""
    from haplane.auth.pki import Pki

    out: list[CertInfo] = []
    for directory in (tls.etcd_dir, tls.platform_dir, tls.front_proxy_dir):
        if directory.is_dir():
            for info in Pki(directory).inventory():
                out.append(info)
    return out


def expiry_rows(tls: PlatformTls, now: datetime | None = None) -> list[dict[str, object]]:
    """Certificates by expiry, soonest first: what `haplane status` and `pki status` show."""
    import datetime as dt

    now = now or dt.datetime.now(dt.UTC)
    rows = []
    for info in inventory(tls):
        rows.append(
            {
                "name": f"{info.path.parent.name}/{info.name}",
                "subject": info.common_name,
                "groups": list(info.groups),
                "ca": info.is_ca,
                "notAfter": info.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "secondsToExpiry": round(info.seconds_to_expiry(now)),
            }
        )
    return sorted(rows, key=lambda r: int(str(r["secondsToExpiry"])))


EXPIRY_CACHE = "expiry-cache.json"
_EXPIRY_FORMAT = 1


def cached_expiry_rows(tls: PlatformTls, now: datetime | None = None) -> list[dict[str, object]]:
    """`expiry_rows`, from `STATE/pki/expiry-cache.json` while no certificate file changed.

    Parsing the certificates needs `cryptography`, whose import costs more than the rest of a
    `haplane status` on this machine; what status shows of them changes only when a file does.
    The cache is keyed by every `*.crt` file of the three CA directories with its SHA-256 (a
    rotation that rewrites a file within one clock tick still counts); any other key, or a
    cache that cannot be read, reads the certificates again and rewrites the cache."""
    import datetime as dt
    import hashlib
    import json

    key: list[list[str]] = []
    for directory in (tls.etcd_dir, tls.platform_dir, tls.front_proxy_dir):
        if directory.is_dir():
            for path in sorted(directory.glob("*.crt")):
                try:
                    key.append([str(path), hashlib.sha256(path.read_bytes()).hexdigest()])
                except OSError:
                    return expiry_rows(tls, now)  # as it is: the slow path says what is wrong
    cache = tls.root / EXPIRY_CACHE
    now = now or dt.datetime.now(dt.UTC)
    try:
        doc = json.loads(cache.read_text())
        if doc["format"] == _EXPIRY_FORMAT and doc["key"] == key:
            rows: list[dict[str, object]] = doc["rows"]
            for row in rows:
                after = dt.datetime.strptime(str(row["notAfter"]), "%Y-%m-%dT%H:%M:%SZ")
                row["secondsToExpiry"] = round((after.replace(tzinfo=dt.UTC) - now).total_seconds())
            return sorted(rows, key=lambda r: int(str(r["secondsToExpiry"])))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    rows = expiry_rows(tls, now)
    tmp = cache.with_name(f".{EXPIRY_CACHE}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps({"format": _EXPIRY_FORMAT, "key": key, "rows": rows}))
        tmp.replace(cache)
    except OSError:  # a read-only state dir: only slower
        with contextlib.suppress(OSError):
            tmp.unlink()
    return rows


def expiry_summary(tls: PlatformTls) -> dict[str, object]:
    """For `haplane status`: how many certificates, the soonest to expire, and those that
    expire within 30 days (`up` renews those) or have expired."""
    rows = cached_expiry_rows(tls)
    soon = [r for r in rows if int(str(r["secondsToExpiry"])) < 30 * 86400]
    return {
        "count": len(rows),
        "soonest": rows[0] if rows else None,
        "within30Days": [r["name"] for r in soon],
    }


# ---- encryption at rest ----------------------------------------------------------------------


def encryption_config_path(state: StateDir, topology: Topology | None) -> Path:
    """Where the replicas' EncryptionConfiguration is: the topology's own file, else the one
    `up` writes (`STATE/encryption/config.yaml`; also without a recorded topology). Nothing
    is read or written here."""
    own = topology.spec.security.encryption.config_file if topology is not None else None
    return Path(own) if own else state.root / "encryption" / "config.yaml"


def encryption_config(state: StateDir, topology: Topology) -> Path:
    """The EncryptionConfiguration every API replica is given (`--encryption-provider-config`),
    made ready: the topology's own file as given, else `STATE/encryption/config.yaml`, written
    at each `up` around the local key-encryption key (created once, mode 0600). With
    `encryption.enabled: false`, values are written plain but those sealed before stay readable
    while the key is there (identity first, the key after it, as Kubernetes decrypts back)."""
    from haplane.auth.encryption import load_config

    from .secrets_ops import local_keys, write_config

    enc = topology.spec.security.encryption
    path = encryption_config_path(state, topology)
    if not enc.config_file:
        _private_dir(state.root / "encryption")
        write_config(state, local_keys(state), encrypt=enc.enabled)
    load_config(path)  # refused here, with the field, rather than by replicas
    return path
