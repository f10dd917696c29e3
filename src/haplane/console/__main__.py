"""`python -m haplane.console`: one web console instance (see `haplane.console`).

Layer: console. Started and supervised by `haplane up` for each `spec.global.console`
instance; gathers the status from `--state-dir`, asks the API through `--server` (a gate) as
the signed-in user, trusting `--ca-file` (a person who presented a client certificate of
`--client-ca-file` through impersonation, with `--client-cert-file`). HTTPS with
`--tls-cert-file` and `--tls-private-key-file` (the platform CA's `console.<name>` pair under
`haplane up`), reloaded
when the files change (`haplane pki rotate`). Without TLS (an insecure topology: no
authentication anywhere) it serves plain HTTP and everyone is anonymous, as on the platform.
Logs JSON lines on stderr. SIGTERM or SIGINT: open streams end, exit 0. Exit 2: bad arguments,
no topology in the state dir; exit 1: cannot listen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
import sys
import time
from pathlib import Path

from aiohttp import web

from haplane.local.state_dir import StateDir
from haplane.telemetry import json_logging
from haplane.topology import TopologyError

from .auth import Platform
from .lag import LagHistory
from .reports import Reports
from .server import (
    Console,
    LiveStatus,
    StatusGatherer,
    audit_reader,
    diagram_drawer,
    emit,
    load_topology,
    watch_active_region,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m haplane.console", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--state-dir", required=True, help="the running topology's state dir")
    p.add_argument("--name", default="console", help="this instance's name (logs)")
    p.add_argument("--listen", required=True, help="HOST:PORT of the console's listener")
    p.add_argument("--server", required=True, help="the API's URL (a gate) users are asked at")
    p.add_argument("--fallback-server", action="append", default=[],
                   help="another gate, asked when --server takes no connection")  # fmt: skip
    p.add_argument("--ca-file", help="the CA the server's certificate is checked against")
    p.add_argument("--tls-cert-file", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-private-key-file", help="and this key")
    p.add_argument("--client-ca-file",
                   help="take browsers' client certificates issued by this CA (PEM)")  # fmt: skip
    p.add_argument("--client-cert-file",
                   help="the console's own client certificate, to act as a certificate's owner "
                   "(impersonation)")  # fmt: skip
    p.add_argument("--client-key-file", help="and its key")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between status gathers while someone looks")  # fmt: skip
    p.add_argument("--interval-idle", type=float, default=10.0,
                   help="seconds between status gathers while nobody does")  # fmt: skip
    args = p.parse_args(argv)
    if bool(args.tls_cert_file) != bool(args.tls_private_key_file):
        p.error("--tls-cert-file and --tls-private-key-file go together")
    if args.tls_cert_file and not args.ca_file:
        p.error("--tls-cert-file needs --ca-file: users' tokens go only to a verified API")
    host, sep, port = args.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        p.error(f"--listen {args.listen!r}: HOST:PORT expected")
    if not args.server.startswith(("https://", "http://")):
        p.error(f"--server {args.server!r}: an http(s):// URL expected")
    for url in args.fallback_server:
        if not url.startswith(("https://", "http://")):
            p.error(f"--fallback-server {url!r}: an http(s):// URL expected")
    if args.tls_cert_file and not args.server.startswith("https://"):
        p.error("--server must be https:// when the console serves HTTPS (tokens travel there)")
    if bool(args.client_cert_file) != bool(args.client_key_file):
        p.error("--client-cert-file and --client-key-file go together")
    if bool(args.client_ca_file) != bool(args.client_cert_file):
        p.error("--client-ca-file and --client-cert-file go together: a certificate's owner "
                "is asked for through the console's own certificate")  # fmt: skip
    if args.client_ca_file and not args.tls_cert_file:
        p.error("--client-ca-file needs --tls-cert-file: client certificates come over TLS")
    if not 0.2 <= args.interval <= 60:
        p.error("--interval: between 0.2 and 60 seconds")
    if not args.interval <= args.interval_idle <= 300:
        p.error("--interval-idle: between --interval and 300 seconds")
    return args


async def serve(args: argparse.Namespace) -> int:
    state = StateDir(Path(args.state_dir))
    topology = load_topology(state)
    gatherer = StatusGatherer(state, topology)
    live = LiveStatus(
        gatherer,
        interval=args.interval,
        interval_idle=args.interval_idle,
        lag=LagHistory(
            topology, file=state.data_dir(f"global/{args.name}") / "lag.jsonl", now=time.time()
        ),
        draw=diagram_drawer(topology),
    )
    secure = bool(args.tls_cert_file)
    client_pair = (args.client_cert_file, args.client_key_file) if args.client_cert_file else None
    platform = (
        Platform(
            args.server,
            args.ca_file,
            fallbacks=tuple(args.fallback_server),
            client_pair=client_pair,
        )
        if secure
        else None
    )
    console = Console(live, platform, audit_reader(state), reports=Reports(state, topology))
    ssl_context = None
    if secure:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        ssl_context.load_cert_chain(args.tls_cert_file, args.tls_private_key_file)
        if args.client_ca_file:
            # asked for, not required: a browser without one signs in with a token
            ssl_context.verify_mode = ssl.CERT_OPTIONAL
            ssl_context.load_verify_locations(cafile=args.client_ca_file)
    runner = web.AppRunner(console.app(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    host, _, port = args.listen.rpartition(":")
    site = web.TCPSite(runner, host, int(port), ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        print(f"haplane.console: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        await runner.cleanup()
        return 1
    emit("listening", url=f"{'https' if secure else 'http'}://{args.listen}", server=args.server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def reload_certificate() -> None:
        """A rotated certificate (`haplane pki rotate`) is served from the next handshake."""
        assert ssl_context is not None
        paths = [Path(args.tls_cert_file), Path(args.tls_private_key_file)]
        if client_pair is not None:
            paths += [Path(client_pair[0]), Path(client_pair[1])]
        seen = [p.stat().st_mtime_ns for p in paths]
        while True:
            await asyncio.sleep(1.0)
            try:
                now = [p.stat().st_mtime_ns for p in paths]
                if now != seen:
                    ssl_context.load_cert_chain(args.tls_cert_file, args.tls_private_key_file)
                    if platform is not None:
                        platform.reload_client_pair()
                    seen = now
                    emit("serving certificate reloaded")
            except (OSError, ssl.SSLError) as exc:
                emit("serving certificate not reloaded", error=str(exc))

    tasks = [
        asyncio.create_task(live.run(), name="status"),
        asyncio.create_task(watch_active_region(state, topology, live), name="active watch"),
    ]
    if ssl_context is not None:
        tasks.append(asyncio.create_task(reload_certificate(), name="certificate reload"))
    try:
        await stop.wait()
    finally:
        await live.stop()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        try:
            await runner.cleanup()
        finally:
            await gatherer.close()
            if platform is not None:
                await platform.close()
        emit("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_logging(f"global/{args.name}")
    logging.getLogger("haplane.console").setLevel(logging.INFO)
    try:
        return asyncio.run(serve(args))
    except (OSError, TopologyError) as exc:
        print(f"haplane.console: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
