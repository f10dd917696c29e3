"""One API server replica as a process, for tests and benchmarks (the supervisor runs the replicas
of a topology itself), with small raw-HTTP and kubeconfig helpers.

Layer: run (`haplane.local`). Starts `python -m haplane.api` through `ManagedProcess`; talks to it
only over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .process import ManagedProcess, ProcessSpec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiReplica:
    def __init__(
        self,
        root: Path,
        name: str,
        etcd: list[str],
        region: str = "test",
        drain_delay: float = 1.0,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        ca: Path | None = None,
    ):
        """`ca`: the replica serves HTTPS (its `extra_args` name the certificate); requests
        verify it against this CA."""
        self.name = name
        self.port = free_port()
        self.ca = ca
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            ProcessSpec(
                name=f"{region}/{name}",
                kind="api",
                argv=[
                    sys.executable,
                    "-m",
                    "haplane.api",
                    "--region",
                    region,
                    "--replica",
                    name,
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--etcd",
                    ",".join(etcd),
                    "--drain-delay",
                    str(drain_delay),
                    *(extra_args or []),
                ],
                log_path=root / f"{name}.log",
                pid_path=root / f"{name}.pid.json",
                env={**os.environ, **env} if env else None,
            )
        )
        self.root = root

    async def start(self, timeout: float = 30.0) -> None:
        await self.process.spawn()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.process.pid is None:
                raise RuntimeError(
                    f"{self.name} exited: {(self.root / f'{self.name}.log').read_text()[-2000:]}"
                )
            try:
                status, _, _ = await asyncio.to_thread(self.request, "GET", "/readyz", None, 1.0)
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready")

    async def stop(self) -> None:
        await self.process.stop()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "t", "cluster": {"server": self.url}}],
                    "users": [{"name": "u", "user": {}}],
                    "contexts": [{"name": "t", "context": {"cluster": "t", "user": "u"}}],
                    "current-context": "t",
                }
            )
        )
        return path

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 10.0,
        content_type: str = "application/json",
        raw: bytes | None = None,
        *,
        cert: tuple[Path, Path] | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """Raw HTTP: (status, headers, decoded JSON or text). Over HTTPS, with a client
        certificate (`cert`: certificate and key files) or a bearer `token` if given."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        context = None
        if self.ca is not None:
            context = ssl.create_default_context(cafile=str(self.ca))
            if cert is not None:
                context.load_cert_chain(str(cert[0]), str(cert[1]))
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
                status, headers, payload = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            status, headers, payload = exc.code, dict(exc.headers), exc.read()
        try:
            return status, headers, json.loads(payload)
        except ValueError:
            return status, headers, payload.decode(errors="replace")
