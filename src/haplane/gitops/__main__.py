"""`python -m haplane.gitops`: one GitOps controller instance. Several run, on different sites;
one leads through a Lease on the platform (see `controller`).

Layer: sync. Reaches the platform with `--kubeconfig` (its own ServiceAccount, through the
gate). Serves, on `--listen`:

- `GET /healthz`, `GET /readyz` (ready once it has reached the platform), `GET /metrics`;
- `POST /hooks/git`: a push notification. The GitSources it names are annotated
  `gitops.haplane.dev/requested-at` through the API, so whichever instance leads fetches them
  at once. It names them by `?source=NAMESPACE/NAME`, or by the repository URLs of a GitHub,
  Gitea or GitLab push payload. With `--webhook-secret-file`, a request must carry GitHub's
  `X-Hub-Signature-256` (HMAC-SHA256 of the body) or GitLab's `X-Gitlab-Token`; else 401.

HTTPS with `--tls-cert-file` and `--tls-private-key-file` (the platform's certificates under
`haplane up`). Logs JSON lines on stderr. SIGTERM or SIGINT: stop syncing (an interrupted
step was dry-run in full and is applied again by the next leader), exit 0. Exit 2: bad
arguments or kubeconfig.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ..auth.kubeconfig import Credentials, KubeconfigError
from ..auth.kubeconfig import load as load_kubeconfig
from ..telemetry import Gitops as M
from ..telemetry import json_logging
from .controller import (
    GIT_SOURCES,
    LEASES,
    Controller,
    Settings,
    emit,
    now_rfc3339,
)
from .kube import KubeClient, KubeError, Unreachable
from .types import REQUESTED_AT


class _Collector(Collector):
    def __init__(self, controller: Controller) -> None:
        self.c = controller

    def collect(self) -> list[Metric]:
        m = self.c.metrics
        leader, syncs, fetches = M.leader.family(), M.syncs.family(), M.fetches.family()
        leader.add_metric([], 1.0 if self.c.leading else 0.0)
        for result, n in sorted(m.syncs.items()):
            syncs.add_metric([result], n)
        for result, n in sorted(m.fetches.items()):
            fetches.add_metric([result], n)
        seconds, hooks = M.sync_seconds.family(), M.webhooks.family()
        seconds.add_metric([], m.sync_seconds_sum)
        hooks.add_metric([], m.hooks)
        return [leader, syncs, fetches, seconds, hooks]


def _urls(payload: Any) -> set[str]:
    """Repository URLs a push payload names (GitHub, Gitea, GitLab), normalized."""
    found: set[str] = set()
    for section in ("repository", "project"):
        repo = payload.get(section) if isinstance(payload, dict) else None
        if isinstance(repo, dict):
            for key in ("clone_url", "git_url", "ssh_url", "html_url", "url", "git_http_url",
                        "git_ssh_url", "http_url"):  # fmt: skip
                value = repo.get(key)
                if isinstance(value, str) and value:
                    found.add(normalize_url(value))
    return found


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if url.endswith(".git"):
        url = url[:-4]
    if url.startswith("file://"):
        url = url[len("file://") :]
    return url.lower()


class Hooks:
    def __init__(self, controller: Controller, secret: bytes | None) -> None:
        self.controller = controller
        self.secret = secret

    def _authentic(self, request: web.Request, body: bytes) -> bool:
        if self.secret is None:
            return True
        signature = request.headers.get("X-Hub-Signature-256", "")
        if signature.startswith("sha256="):
            want = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            return hmac.compare_digest(signature[len("sha256=") :], want)
        token = request.headers.get("X-Gitlab-Token")
        return token is not None and hmac.compare_digest(token.encode(), self.secret)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self._authentic(request, body):
            return web.json_response({"message": "the signature does not match"}, status=401)
        named = request.query.get("source")
        urls: set[str] = set()
        if named is None:
            try:
                urls = _urls(json.loads(body or b"{}"))
            except ValueError:
                return web.json_response({"message": "the body is not JSON"}, status=400)
            if not urls:
                return web.json_response(
                    {
                        "message": "name a source (?source=NAMESPACE/NAME) or send a push payload "
                        "with the repository's URL"
                    },
                    status=400,
                )
        platform = self.controller.platform
        try:
            sources = await platform.list(GIT_SOURCES)
        except (Unreachable, KubeError) as exc:
            return web.json_response({"message": f"the platform: {exc}"}, status=503)
        poked: list[str] = []
        stamp = now_rfc3339()
        for obj in sources:
            meta = obj["metadata"]
            key = f"{meta.get('namespace')}/{meta['name']}"
            url = normalize_url(str((obj.get("spec") or {}).get("url", "")))
            if key != named and url not in urls:
                continue
            patch = {"metadata": {"annotations": {REQUESTED_AT: stamp}}}
            code, out = await platform.request(
                "PATCH",
                GIT_SOURCES.path(meta.get("namespace"), meta["name"]),
                patch,
                content_type="application/merge-patch+json",
            )
            if code >= 400:
                return web.json_response({"message": f"{key}: {out.get('message')}"}, status=code)
            poked.append(key)
        if not poked:
            return web.json_response({"message": "no GitSource matches"}, status=404)
        self.controller.metrics.hooks += 1
        self.controller.wake()
        emit(logging.INFO, "webhook", sources=poked)
        return web.json_response({"sources": poked}, status=202)


def build_app(
    controller: Controller, secret: bytes | None, ready: asyncio.Event
) -> web.Application:
    registry = CollectorRegistry()
    registry.register(_Collector(controller))
    hooks = Hooks(controller, secret)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if ready.is_set():
            return web.Response(text="ok")
        return web.Response(text="the platform has not answered yet", status=503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/hooks/git", hooks.handle)
    return app


async def serve(args: argparse.Namespace, credentials: Credentials, secret: bytes | None) -> int:
    platform = KubeClient(credentials)
    lease_name = Settings().lease_name
    controller = Controller(
        platform,
        Path(args.cache),
        args.identity,
        Settings(lease_duration=args.lease_duration, tick=args.tick),
    )
    stop = asyncio.Event()
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopping() -> None:
        stop.set()
        controller.wake()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping)
    runner = web.AppRunner(build_app(controller, secret, ready), access_log=None)
    await runner.setup()
    host, _, port = args.listen.rpartition(":")
    ssl_context = None
    if args.tls_cert_file:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert_file, args.tls_private_key_file)
    site = web.TCPSite(runner, host or "127.0.0.1", int(port), ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        print(f"haplane.gitops: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        await runner.cleanup()
        return 1

    async def watch_ready() -> None:
        """Ready while an authenticated read of the platform succeeds (the controller's own
        Lease: its token and RBAC work, not only the network), checked every 2 s."""
        while not stop.is_set():
            try:
                status, _ = await platform.request("GET", LEASES.path("kube-system", lease_name))
                ok = status in (200, 404)
            except Unreachable:
                ok = False
            if ok:
                ready.set()
            else:
                ready.clear()
            await asyncio.sleep(0.5 if not ok else 2.0)

    async def reload_certificate() -> None:
        """A rotated certificate (`haplane pki rotate`) is served from the next handshake."""
        assert ssl_context is not None
        paths = [Path(args.tls_cert_file), Path(args.tls_private_key_file)]
        seen = [p.stat().st_mtime_ns for p in paths]
        while not stop.is_set():
            await asyncio.sleep(1.0)
            try:
                now = [p.stat().st_mtime_ns for p in paths]
                if now != seen:
                    ssl_context.load_cert_chain(args.tls_cert_file, args.tls_private_key_file)
                    seen = now
                    emit(logging.INFO, "serving certificate reloaded")
            except (OSError, ssl.SSLError) as exc:
                emit(logging.WARNING, "serving certificate not reloaded", error=str(exc))

    probe = asyncio.create_task(watch_ready())
    reloader = asyncio.create_task(reload_certificate()) if ssl_context is not None else None
    try:
        await controller.run(stop)
    finally:
        probe.cancel()
        if reloader is not None:
            reloader.cancel()
        await runner.cleanup()
        await platform.close()
        emit(logging.INFO, "stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m haplane.gitops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--kubeconfig", required=True, help="the controller's identity on the platform")
    p.add_argument("--server", help="override the kubeconfig's server (e.g. the gate)")
    p.add_argument("--identity", required=True, help="this instance's name in the Lease")
    p.add_argument("--cache", required=True, help="directory for repositories and trees")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT for hooks and metrics")
    p.add_argument("--webhook-secret-file", help="require signed webhooks")
    p.add_argument("--tls-cert-file", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-private-key-file", help="and this key")
    p.add_argument("--lease-duration", type=float, default=15.0)
    p.add_argument("--tick", type=float, default=0.5, help="seconds between the leader's passes")
    args = p.parse_args(argv)
    if bool(args.tls_cert_file) != bool(args.tls_private_key_file):
        p.error("--tls-cert-file and --tls-private-key-file go together")
    try:
        doc = yaml.safe_load(Path(args.kubeconfig).read_text())
        credentials = load_kubeconfig(doc, args.kubeconfig, args.server)
        secret = None
        if args.webhook_secret_file:
            secret = Path(args.webhook_secret_file).read_bytes().strip()
            if not secret:
                print(f"haplane.gitops: {args.webhook_secret_file} is empty", file=sys.stderr)
                return 2
    except (OSError, yaml.YAMLError, KubeconfigError) as exc:
        print(f"haplane.gitops: {exc}", file=sys.stderr)
        return 2
    json_logging(f"global/{args.identity}")
    return asyncio.run(serve(args, credentials, secret))


if __name__ == "__main__":
    sys.exit(main())
