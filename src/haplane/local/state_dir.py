"""The state dir: where one running topology keeps its data, ports, logs and pid files.

Layer: run (local). Layout::

    topology.yaml        the file `haplane up` was given (status, fault, down read it from here)
    ports.json           ports assigned to components whose port the file left out
    supervisor.json      the supervisor's pid record
    supervisor.sock      the supervisor's control socket (HTTP over a unix socket)
    supervisor.log       its log when detached (`up -d`)
    run/<scope>_<name>.json   pid records of supervised processes
    data/<scope>/<name>/      etcd data dirs (kept across restarts; `--fresh` wipes them)
    data/<scope>/<name>.join  a replaced member's cluster to join (`haplane member replace`)
    logs/<scope>/<name>.log   each process's output
    gitops/<name>.kubeconfig  a GitOps controller instance's kubeconfig (mode 0600)
    gitops/<name>/            its cache of repositories and rendered trees
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ENV_STATE_DIR = "HAPLANE_STATE_DIR"


class OperationLocked(Exception):
    """Another data-changing operation runs on this state dir."""


def default_state_dir() -> Path:
    env = os.environ.get(ENV_STATE_DIR)
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "haplane"


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def topology_file(self) -> Path:
        return self.root / "topology.yaml"

    @property
    def ports_file(self) -> Path:
        return self.root / "ports.json"

    @property
    def supervisor_record(self) -> Path:
        return self.root / "supervisor.json"

    @property
    def socket(self) -> Path:
        return self.root / "supervisor.sock"

    @property
    def supervisor_log(self) -> Path:
        return self.root / "supervisor.log"

    def write_metrics_file(self, name: str, text: str) -> Path:
        """STATE/metrics/NAME (node_exporter's textfile collector reads the `*.prom` there),
        replaced by rename: a reader never sees half a file."""
        path = self.root / "metrics" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(text)
        tmp.replace(path)
        return path

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def pid_file(self, component: str) -> Path:
        return self.run_dir / (component.replace("/", "_") + ".json")

    def data_dir(self, component: str) -> Path:
        return self.root / "data" / component

    @contextlib.contextmanager
    def operation_lock(self, what: str) -> Iterator[None]:
        """One data-changing operation at a time (a region restore, a member replacement):
        OperationLocked, naming the holder, when another holds it."""
        path = self.root / "operation.lock"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            try:
                held = path.read_text().strip()
            except OSError:
                held = "?"
            raise OperationLocked(
                f"another operation holds {path} ({held}); remove the file if none runs"
            ) from None
        try:
            os.write(fd, f"{what} (pid {os.getpid()})\n".encode())
        finally:
            os.close(fd)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    def join_file(self, component: str) -> Path:
        """An etcd member's `--initial-cluster` for joining a running cluster with a fresh
        data dir (written by `haplane member replace`, read by the supervisor's next start)."""
        return self.root / "data" / f"{component}.join"

    def config_file(self, component: str) -> Path:
        """The config a balancer or gate process is started with (written by the supervisor)."""
        return self.root / "config" / (component.replace("/", "_") + ".json")

    def log_file(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"

    @property
    def gitops_dir(self) -> Path:
        """The GitOps controller instances' kubeconfigs and caches (written by the supervisor)."""
        return self.root / "gitops"

    @property
    def gitops_webhook_secret(self) -> Path:
        """The secret git servers sign `POST /hooks/git` with (GitHub's X-Hub-Signature-256,
        GitLab's X-Gitlab-Token): made once by `up` (0600), shared by every instance."""
        return self.gitops_dir / "webhook.secret"

    @property
    def network_file(self) -> Path:
        """Present when the topology runs with each site in its own network namespace
        (`haplane up --netns`): the sites' addresses (haplane.local.site_network)."""
        return self.root / "network.json"

    def write_log(self, replica: str) -> Path:
        """An API replica's journal of acknowledged writes (JSON lines), checked by drills."""
        return self.root / "logs" / (replica.replace("/", "_") + ".writes.jsonl")

    def audit_log(self, replica: str) -> Path:
        """An API replica's audit log (audit.k8s.io/v1 Event JSON lines, mode 0600); its
        rotated backups sit beside it."""
        return self.root / "audit" / (replica.replace("/", "_") + ".log")

    def audit_logs(self) -> list[Path]:
        """Every replica's current audit log (the reader finds each one's backups)."""
        audit = self.root / "audit"
        if not audit.is_dir():
            return []
        rotated = re.compile(r"-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.\d{3}\.log$")
        return sorted(p for p in audit.glob("*.log") if not rotated.search(p.name))

    def ensure(self) -> None:
        for d in (self.root, self.run_dir, self.root / "data", self.root / "logs"):
            d.mkdir(parents=True, exist_ok=True)

    def wipe(self) -> None:
        """`--fresh`: forget data, ports and logs (only call with nothing running)."""
        for d in (self.root / "data", self.root / "logs", self.run_dir, self.gitops_dir):
            shutil.rmtree(d, ignore_errors=True)
        # a new incarnation: snapshots kept from before are of another topology now (their
        # epochs and cluster ids mean nothing to the fresh one)
        for f in (self.ports_file, self.supervisor_log, self.root / "identity"):
            f.unlink(missing_ok=True)
