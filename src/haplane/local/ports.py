"""Ports for components whose port the topology file leaves out: assigned once, then persisted.

Layer: run (local). Reads and writes `ports.json` in the state dir; opens sockets only to find a
free port. Persisting matters: etcd stores its peer URLs in its data dir, so a member must come
back on the same ports. A free port found now can be taken by someone else before our process
binds it; the supervisor then calls `reassign` (only for a member with no data yet) and retries.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path


class PortRegistry:
    def __init__(self, path: Path, *, read_only: bool = False):
        """`read_only` (status, kubeconfig): never writes the file, so a command that only
        looks cannot save a stale copy over ports `up` is assigning at the same moment."""
        self.path = path
        self.read_only = read_only
        self._ports: dict[str, int] = {}
        if path.exists():
            self._ports = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}

    def resolve(self, key: str, host: str, explicit: int | None) -> int:
        """The port for `key`: the explicit one, else the persisted one, else a new free one."""
        if explicit is not None:
            return explicit
        if key not in self._ports:
            self._ports[key] = self._free_port(host)
            self.save()
        return self._ports[key]

    def reassign(self, key: str, host: str) -> int:
        self._ports[key] = self._free_port(host)
        self.save()
        return self._ports[key]

    def save(self) -> None:
        if self.read_only:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._ports, indent=2, sort_keys=True))
        os.replace(tmp, self.path)

    def _free_port(self, host: str) -> int:
        taken = set(self._ports.values())
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, 0))
                except OSError:
                    # not an address of this namespace (a site's own namespace, created at
                    # start): any port is free there; take one the kernel would hand out
                    s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in taken:
                return port
        raise RuntimeError(f"no free port found on {host}")
