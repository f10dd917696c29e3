"""`python -m haplane.api`: one API server replica process.

Layer: api. SIGTERM drains (see `ApiServer.drain_and_stop`); SIGINT does the same.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import signal

import uvloop

from haplane.auth.audit_batch import MIN_WAIT
from haplane.auth.encryption import parse_duration
from haplane.store import EtcdTls
from haplane.telemetry import json_logging

from .server import ApiServer, ReplicaConfig, SecurityConfig
from .sync_ack import SyncConfig


def _duration(text: str) -> float:
    """The audit batch wait: a Go duration as kube-apiserver's flag takes it (`200ms`, `1s`,
    `1m30s`; a bare number: seconds), at least 10 ms (less would have the writer spin)."""
    try:
        seconds = float(text) if _BARE.fullmatch(text) else parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (say 200ms or 1s)") from None
    if not MIN_WAIT <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be at least 10ms: {text!r}")
    return seconds


_BARE = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return n


def parse_args(argv: list[str] | None = None) -> ReplicaConfig:
    ap = argparse.ArgumentParser(prog="haplane-apiserver")
    ap.add_argument("--region", required=True)
    ap.add_argument("--replica", required=True)
    ap.add_argument("--listen", required=True, help="host:port")
    ap.add_argument("--etcd", required=True, help="comma-separated host:port of etcd members")
    ap.add_argument(
        "--drain-delay",
        type=float,
        default=1.0,
        help="seconds /readyz fails before the listener closes on SIGTERM",
    )
    ap.add_argument(
        "--no-watch-cache",
        action="store_true",
        help="serve every read and watch from etcd (for comparisons)",
    )
    ap.add_argument(
        "--global-etcd",
        default="",
        help="comma-separated host:port of the global control etcd: writes are then fenced by "
        "the global state (no flag: always writable under epoch 0)",
    )
    ap.add_argument(
        "--global-prefix",
        default="/haplane/global/",
        help="key prefix of the global state in the global control etcd",
    )
    ap.add_argument(
        "--regions",
        default="",
        help="comma-separated regions of the topology: a Switchover may name only these",
    )
    ap.add_argument(
        "--write-log", default=None, help="append one JSON line per acknowledged write here"
    )
    ap.add_argument(
        "--data-fence",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compare the region's fence key in every write (default: when --global-etcd is "
        "given; a bare replica then compares `active:REGION@0`)",
    )
    ap.add_argument(
        "--fence-key",
        default="/haplane/fence",
        help="the fence key's path in the region's etcd (another path only for tests)",
    )
    ap.add_argument(
        "--sync-standby",
        action="append",
        default=[],
        metavar="REGION=HOST:PORT,...",
        help="the synchronous standby region of this one and its etcd members (at most one): "
        "writes are acknowledged once it applied them (needs --global-etcd, which holds the "
        "sync record)",
    )
    ap.add_argument(
        "--sync-timeout-ms",
        type=int,
        default=500,
        help="how long an acknowledgement waits for the synchronous standby",
    )
    ap.add_argument(
        "--sync-strict",
        action="store_true",
        help="never acknowledge a write no standby confirmed: 504 instead of degrading",
    )
    sec = ap.add_argument_group("identity and access (kube-apiserver's flag names)")
    sec.add_argument("--etcd-cafile", default=None, help="TLS towards etcd: the members' CA")
    sec.add_argument("--etcd-certfile", default=None, help="this replica's etcd client cert")
    sec.add_argument("--etcd-keyfile", default=None)
    sec.add_argument("--tls-cert-file", default=None, help="serve HTTPS with this certificate")
    sec.add_argument("--tls-private-key-file", default=None)
    sec.add_argument(
        "--client-ca-file",
        default=None,
        help="verify client certificates against this CA: CN is the user, O the groups",
    )
    sec.add_argument("--token-auth-file", default=None, help="static tokens (CSV)")
    sec.add_argument(
        "--service-account-key-file",
        default=None,
        help="the ServiceAccount token signing key (PEM), shared by every region",
    )
    sec.add_argument("--service-account-issuer", default=SecurityConfig.sa_issuer)
    sec.add_argument(
        "--anonymous",
        choices=("all", "health"),
        default="all",
        help="health: anonymous requests only to /livez, /readyz, /healthz, /version (else 401)",
    )
    sec.add_argument("--authorization-mode", choices=("AlwaysAllow", "RBAC"), default="AlwaysAllow")
    sec.add_argument(
        "--requestheader-client-ca-file",
        default=None,
        help="the front-proxy CA: a certificate it issued may pass the client's identity on in "
        "X-Remote-User/-Group/-Extra-* (never a user itself)",
    )
    sec.add_argument(
        "--requestheader-allowed-names",
        default="",
        help="comma-separated CNs of front proxies trusted to pass X-Remote-* (empty: any CN "
        "the front-proxy CA issued)",
    )
    sec.add_argument(
        "--encryption-provider-config",
        default=None,
        help="an EncryptionConfiguration (apiserver.config.k8s.io/v1): which resources are "
        "stored encrypted, under which keys",
    )
    sec.add_argument("--audit-log-path", default=None)
    sec.add_argument("--audit-policy-file", default=None)
    sec.add_argument("--audit-log-maxsize", type=int, default=100, help="megabytes")
    sec.add_argument("--audit-log-maxbackup", type=int, default=5)
    sec.add_argument(
        "--audit-log-mode",
        choices=("blocking", "batch"),
        default="blocking",
        help="blocking: each event written in its request's path; batch: buffered, written by "
        "a thread (normally at most --audit-log-batch-max-wait late; lost on a crash)",
    )
    sec.add_argument("--audit-log-batch-max-wait", type=_duration, default=0.2,
                     help="a duration (200ms, 1s)")  # fmt: skip
    sec.add_argument("--audit-log-batch-max-size", type=_positive, default=400,
                     help="events waiting that wake the writer before max-wait")  # fmt: skip
    sec.add_argument("--audit-log-batch-buffer-size", type=_positive, default=10_000,
                     help="events buffered (a request finding it full writes it)")  # fmt: skip
    args = ap.parse_args(argv)
    if bool(args.tls_cert_file) != bool(args.tls_private_key_file):
        ap.error("--tls-cert-file and --tls-private-key-file go together")
    if args.client_ca_file and not args.tls_cert_file:
        ap.error("--client-ca-file needs TLS (--tls-cert-file)")
    if args.requestheader_client_ca_file and not args.tls_cert_file:
        ap.error("--requestheader-client-ca-file needs TLS (--tls-cert-file)")
    if args.requestheader_allowed_names and not args.requestheader_client_ca_file:
        ap.error(
            "--requestheader-allowed-names needs --requestheader-client-ca-file: front proxies "
            "are believed only with a certificate from a CA of their own"
        )
    try:
        etcd_tls = EtcdTls.from_flags(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile)
    except ValueError as exc:
        ap.error(str(exc))
    standbys: dict[str, list[str]] = {}
    for item in args.sync_standby:
        region, sep, eps = item.partition("=")
        endpoints = [e.strip() for e in eps.split(",") if e.strip()]
        if not sep or not region or not endpoints:
            ap.error(f"--sync-standby {item!r}: expected REGION=HOST:PORT[,HOST:PORT...]")
        standbys[region] = endpoints
    if len(standbys) > 1:
        ap.error(
            "--sync-standby: at most one synchronous standby region (its confirmation is "
            "trusted without asking the control etcd who is synchronous)"
        )
    if standbys and not args.global_etcd:
        ap.error("--sync-standby needs --global-etcd: the sync record lives there")
    if args.sync_timeout_ms < 1:
        ap.error("--sync-timeout-ms must be at least 1")
    host, _, port = args.listen.rpartition(":")
    return ReplicaConfig(
        region=args.region,
        replica=args.replica,
        host=host,
        port=int(port),
        etcd_endpoints=args.etcd.split(","),
        drain_delay=args.drain_delay,
        watch_cache=not args.no_watch_cache,
        global_endpoints=[e for e in args.global_etcd.split(",") if e],
        global_prefix=args.global_prefix,
        regions=[r for r in args.regions.split(",") if r],
        write_log=args.write_log,
        data_fence=args.data_fence,
        fence_key=args.fence_key,
        etcd_tls=etcd_tls,
        sync=SyncConfig(standbys, args.sync_timeout_ms / 1000, args.sync_strict, etcd_tls)
        if standbys
        else None,
        security=SecurityConfig(
            tls_cert=args.tls_cert_file,
            tls_key=args.tls_private_key_file,
            client_ca=args.client_ca_file,
            token_file=args.token_auth_file,
            sa_key=args.service_account_key_file,
            sa_issuer=args.service_account_issuer,
            anonymous=args.anonymous,
            authorization=args.authorization_mode,
            requestheader_ca=args.requestheader_client_ca_file,
            front_proxy_names=tuple(
                n.strip() for n in args.requestheader_allowed_names.split(",") if n.strip()
            ),
            encryption_config=args.encryption_provider_config,
            audit_log=args.audit_log_path,
            audit_policy=args.audit_policy_file,
            audit_max_bytes=args.audit_log_maxsize * 1024 * 1024,
            audit_backups=args.audit_log_maxbackup,
            audit_mode=args.audit_log_mode,
            audit_batch_max_wait=args.audit_log_batch_max_wait,
            audit_batch_max_size=args.audit_log_batch_max_size,
            audit_batch_buffer_size=args.audit_log_batch_buffer_size,
        ),
    )


async def serve(config: ReplicaConfig) -> None:
    server = ApiServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gc.freeze()  # what imports made (modules, code, schemas) is never scanned again
    await server.start()
    await stop.wait()
    await server.drain_and_stop()


# The collector's defaults (700, 10, 10) scan the whole heap again and again as the watch
# caches grow: measured at ~15% of the replica's CPU under a stream of creates (gc.callbacks
# timing, 30k cached objects). With a young generation of 50,000, a request's garbage mostly
# dies young instead of being promoted, so full scans become rare; the older generations keep
# the default ratios, so cyclic garbage (ended watches, tasks) still goes within a few million
# allocations. (50,000, 20, 100) measured no better.
GC_THRESHOLDS = (50_000, 10, 10)


def main() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    config = parse_args()
    json_logging(f"{config.region}/{config.replica}")
    uvloop.run(serve(config))


if __name__ == "__main__":
    main()
