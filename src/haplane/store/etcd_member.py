"""The command line of one etcd member, derived from the topology. Pure: starts nothing.

Layer: store. The `local` layer runs these commands as supervised processes; a multi-host runner
would run the same commands elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `MemberTls` users (the CLI's status) skip the model
    from haplane.topology import EtcdClusterView, EtcdMemberView

    from .etcd_binary import EtcdBinary


@dataclass(frozen=True)
class MemberAddress:
    """Resolved listen addresses of a member (ports assigned when the file left them out)."""

    host: str
    client_port: int
    peer_port: int
    tls: bool = False  # https for clients and peers (the cluster runs with `MemberTls`)

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.peer_port}"

    @property
    def client_endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"


@dataclass(frozen=True)
class MemberTls:
    """A member's TLS: its serving certificate (clients), its peer certificate (serverAuth and
    clientAuth: peers dial each other), and the CA both its clients and its peers must present
    certificates from (etcd's --client-cert-auth and --peer-client-cert-auth: a connection
    without one is refused, so reading or writing etcd needs a certificate of the platform)."""

    ca: Path
    cert: Path
    key: Path
    peer_cert: Path
    peer_key: Path
    # the CN every peer certificate of the cluster carries (etcd's --peer-cert-allowed-cn):
    # then a client certificate from the same CA (an API replica's) cannot speak raft
    peer_cn: str | None = None

    def flags(self) -> list[str]:
        flags = [
            "--cert-file", str(self.cert),
            "--key-file", str(self.key),
            "--client-cert-auth=true",
            "--trusted-ca-file", str(self.ca),
            "--peer-cert-file", str(self.peer_cert),
            "--peer-key-file", str(self.peer_key),
            "--peer-client-cert-auth=true",
            "--peer-trusted-ca-file", str(self.ca),
        ]  # fmt: skip
        if self.peer_cn:
            flags += ["--peer-cert-allowed-cn", self.peer_cn]
        return flags


def etcd_member_name(member: EtcdMemberView) -> str:
    """etcd's own --name: unique in the cluster and stable (it is stored in the data dir)."""
    return f"{member.scope}-{member.name}"


MAX_TXN_OPS = 1024


def cluster_token(topology_name: str, cluster: EtcdClusterView) -> str:
    """Members of different clusters with the same peer URLs must never join each other."""
    return f"haplane-{topology_name}-{cluster.scope}"


def member_command(
    binary: EtcdBinary,
    topology_name: str,
    cluster: EtcdClusterView,
    member: EtcdMemberView,
    addresses: dict[str, MemberAddress],
    data_dir: Path,
    tls: MemberTls | None = None,
) -> list[str]:
    """`addresses` maps each member's qualified name to its resolved address (with `tls`,
    addresses whose `tls` is set: the URLs must say https)."""
    own = addresses[member.qualified_name]
    s = cluster.settings
    initial = ",".join(
        f"{etcd_member_name(m)}={addresses[m.qualified_name].peer_url}" for m in cluster.members
    )
    cmd = [
        str(binary.path),
        "--name", etcd_member_name(member),
        "--data-dir", str(data_dir),
        "--listen-client-urls", own.client_url,
        "--advertise-client-urls", own.client_url,
        "--listen-peer-urls", own.peer_url,
        "--initial-advertise-peer-urls", own.peer_url,
        "--initial-cluster", initial,
        "--initial-cluster-token", cluster_token(topology_name, cluster),
        # Ignored by etcd once the data dir holds a WAL: restarts rejoin with what it remembers.
        "--initial-cluster-state", "new",
        "--heartbeat-interval", str(s.heartbeat_interval_ms),
        "--election-timeout", str(s.election_timeout_ms),
        # A member back from a partition must not depose a healthy leader with the terms it
        # ran up alone (default from etcd 3.5; off in 3.4, which Debian ships).
        "--pre-vote=true",
        "--auto-compaction-mode", "periodic",
        "--auto-compaction-retention", s.auto_compaction_retention,
        "--quota-backend-bytes", str(s.quota_backend_bytes),
        # A replicator applies whole source revisions plus its bookkeeping in one txn, and a
        # resync writes pages of keys: room for both (etcd's default is 128 operations).
        "--max-txn-ops", str(MAX_TXN_OPS),
        *binary.version_flags(),
    ]  # fmt: skip
    if s.unsafe_no_fsync:
        cmd.append("--unsafe-no-fsync")
    if tls is not None:
        if not own.tls:
            raise ValueError(f"{member.qualified_name}: TLS flags with http:// addresses")
        cmd += tls.flags()
    return cmd


def join_command(argv: list[str], initial_cluster: str) -> list[str]:
    """`argv` (a `member_command`) for a member that joins a running cluster with a fresh
    data dir (added by `MemberAdd` first): `--initial-cluster-state existing` and the
    cluster's members as they are now. Ignored, like the originals, once the data dir holds
    a WAL."""
    out = list(argv)
    for flag, value in (
        ("--initial-cluster-state", "existing"),
        ("--initial-cluster", initial_cluster),
    ):
        i = out.index(flag)
        out[i + 1] = value
    return out
