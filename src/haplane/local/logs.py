"""`haplane logs`: every component's log and the supervisor's, merged into one timeline.

Layer: run (`haplane.local`). Reads `STATE/supervisor.log` and `STATE/logs/<scope>/<name>.log`
(etcd members, API replicas, balancers, gates, replicators, GitOps controllers); writes
nothing.

Each line is one JSON object (`haplane.telemetry.JsonLogFormatter`, etcd's own zap lines),
timed by its `ts`: the wall clock (CLOCK_REALTIME, UTC) of the process that wrote it. Every
file of a state dir is written by a process on this host (network namespaces share its
clock), so the merged order is one clock's. A line without a time (the supervisor's first
lines, a stray print) takes the time of the next timed line of its file: it was written
before it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import heapq
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .state_dir import StateDir

LEVELS = {"debug": 0, "info": 1, "warn": 2, "warning": 2, "error": 3, "critical": 4, "dpanic": 4,
          "fatal": 4, "panic": 4}  # fmt: skip
CLOCK = "each process's wall clock (CLOCK_REALTIME, UTC), all on this host"
_HIDDEN = ("ts", "level", "component", "msg", "event", "caller")


@dataclass(frozen=True, order=True)
class Entry:
    ts: float
    source: int  # the file's index: lines of one instant keep their files' order
    seq: int  # the line's index in its file
    component: str = field(compare=False)
    level: str = field(compare=False)
    message: str = field(compare=False)
    fields: dict[str, Any] = field(compare=False, default_factory=dict)
    raw: str = field(compare=False, default="")
    timed: bool = field(compare=False, default=True)  # False: the time is a neighbour's

    def as_json(self) -> dict[str, Any]:
        from haplane.telemetry import iso_utc

        doc = {
            "ts": iso_utc(self.ts),
            "component": self.component,
            "level": self.level,
            "msg": self.message,
            "fields": self.fields,
        }
        return doc if self.timed else {**doc, "timed": False}


def sources(state: StateDir) -> list[tuple[str, Path]]:
    """(component, file) of every log of the state dir: the supervisor's, then by name."""
    found = []
    if state.supervisor_log.is_file():
        found.append(("supervisor", state.supervisor_log))
    logs = state.root / "logs"
    if logs.is_dir():
        for path in sorted(logs.glob("*/*.log")):
            found.append((f"{path.parent.name}/{path.stem}", path))
    return found


_TS = re.compile(rb'"ts":\s*"([^"]+)"')  # a line's time, read before its JSON is parsed
_GO_LOG = re.compile(
    r"(?:(INFO|WARNING|ERROR|FATAL): )?(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(?:\.\d+)?) "
)


def parse_ts(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def parse_line(line: str) -> tuple[float | None, str, str, dict[str, Any]]:
    """(time, level, message, other fields) of one log line; a line that is not a JSON object
    is its own message, without a time."""
    text = line.rstrip("\n")
    record: Any = None
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
    if not isinstance(record, dict):
        m = _TS.search(text.encode(), 0, 80)  # a half line may still say when it was written
        if m:
            return parse_ts(m.group(1).decode()), "info", text, {}
        g = _GO_LOG.match(text)  # Go's log package (grpc-go inside etcd): UTC, as TZ says
        if g:
            level = (g.group(1) or "INFO").lower()
            with contextlib.suppress(ValueError):
                at = datetime.strptime(
                    g.group(2).replace("/", "-"),
                    "%Y-%m-%d %H:%M:%S.%f" if "." in g.group(2) else "%Y-%m-%d %H:%M:%S",
                )
                return at.replace(tzinfo=UTC).timestamp(), level, text, {}
        return None, "info", text, {}
    message = record.get("msg") or record.get("event") or ""
    level = str(record.get("level") or "info").lower()
    about = record.get("component")  # dropped by the reader when it is the file's own
    rest = {"component": about} if isinstance(about, str) and about else {}
    rest.update((k, v) for k, v in record.items() if k not in _HIDDEN and v is not None)
    return parse_ts(record.get("ts")), level, str(message), rest


class Reader:
    """One file, read from where the last call stopped: `follow` calls it again and again,
    and a half-written last line waits for its end (`final`: it is shown as it is). A file
    that shrank was replaced: read again from its start. Lines older than `since` are
    skipped unparsed (by their `ts`), so a long history costs its reading, not its memory."""

    def __init__(self, component: str, path: Path, index: int, since: float | None = None) -> None:
        self.component, self.path, self.index, self.since = component, path, index, since
        self.offset = 0
        self.seq = 0
        self.last_ts: float | None = None
        self._partial = b""

    def read(self, final: bool = False) -> list[Entry]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:
            self.offset, self._partial = 0, b""
        lines: list[bytes] = []
        kept = 0  # lines[:kept] end with a timed line kept; untimed ones after it wait
        if size > self.offset:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                for line in f:
                    if not final and self.offset + len(line) > size:  # written since
                        break
                    self.offset += len(line)
                    if not line.endswith(b"\n"):
                        self._partial += line
                        continue
                    line, self._partial = self._partial + line, b""
                    m = _TS.search(line, 0, 80) if self.since is not None else None
                    if m is not None:
                        ts = parse_ts(m.group(1).decode("ascii", "replace"))
                        if ts is not None and self.since is not None and ts < self.since:
                            del lines[kept:]  # the untimed lines before it are as old
                            continue
                    lines.append(line)
                    if m is not None:
                        kept = len(lines)
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        return self._entries(line.decode("utf-8", "replace") for line in lines)

    def _entries(self, lines: Iterable[str]) -> list[Entry]:
        out: list[Entry] = []
        pending: list[tuple[int, str, str, dict[str, Any], str]] = []

        def entry(ts: float, seq: int, level: str, msg: str, fields: dict[str, Any], raw: str,
                  timed: bool) -> Entry:  # fmt: skip
            if fields.get("component") == self.component:
                fields = {k: v for k, v in fields.items() if k != "component"}
            return Entry(ts, self.index, seq, self.component, level, msg, fields, raw, timed)

        for line in lines:
            if not line.strip():
                continue
            ts, level, message, rest = parse_line(line)
            self.seq += 1
            if ts is None:
                pending.append((self.seq, level, message, rest, line))
                continue
            for seq, _, msg, fields, raw in pending:  # written before it: its time, its level
                out.append(entry(ts, seq, level, msg, fields, raw, False))
            pending.clear()
            self.last_ts = ts
            out.append(entry(ts, self.seq, level, message, rest, line, True))
        if pending:  # nothing timed after them (yet): the last time seen, else the file's
            ts = self.last_ts
            if ts is None:
                try:
                    ts = self.path.stat().st_mtime
                except FileNotFoundError:
                    ts = time.time()
            for seq, level, msg, fields, raw in pending:
                out.append(entry(ts, seq, level, msg, fields, raw, False))
        return sorted(out)


@dataclass(frozen=True)
class Filter:
    components: tuple[str, ...] = ()  # globs on `scope/name`, or a scope, or a name
    since: float | None = None
    grep: re.Pattern[str] | None = None
    level: int = 0

    def wants_component(self, component: str) -> bool:
        if not self.components:
            return True
        scope, _, name = component.rpartition("/")
        return any(
            fnmatch.fnmatchcase(component, p) or p == scope or fnmatch.fnmatchcase(name, p)
            for p in self.components
        )

    def wants(self, e: Entry) -> bool:
        about = e.fields.get("component")  # a supervisor line about a process
        if self.components and not (
            self.wants_component(e.component)
            or (isinstance(about, str) and self.wants_component(about))
        ):
            return False
        if self.since is not None and e.ts < self.since:
            return False
        if LEVELS.get(e.level, 1) < self.level:
            return False
        return self.grep is None or self.grep.search(e.raw) is not None


def since_of(text: str, now: float | None = None) -> float:
    """`--since`: a duration back from now (`90s`, `10m`, `2h`, `1d`) or an ISO time (UTC
    unless it names its offset)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return (now if now is not None else time.time()) - seconds
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: use a duration (30s, 10m, 2h, 1d) or a time (2026-12-06T11:43:00Z)"
        ) from None
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()


def readers(state: StateDir, flt: Filter, known: Iterable[Reader] = ()) -> list[Reader]:
    """A reader per log of the state dir not among `known` (those a follow already has),
    numbered after them. A file is read when its component is wanted, or (the supervisor's)
    when its lines may be about one."""
    have = {r.path for r in known}
    start = max((r.index for r in known), default=-1) + 1
    found = [(c, p) for c, p in sources(state) if p not in have]
    return [
        Reader(component, path, start + i, flt.since)
        for i, (component, path) in enumerate(found)
        if flt.wants_component(component) or component == "supervisor"
    ]


def merged(all_readers: list[Reader], flt: Filter, final: bool = True) -> Iterator[Entry]:
    """Everything the readers have not read yet, in time order (`final`: a last line without
    its newline too)."""
    batches = [[e for e in r.read(final) if flt.wants(e)] for r in all_readers]
    return heapq.merge(*batches)


# ---- display ---------------------------------------------------------------------------------

_PALETTE = (33, 36, 32, 35, 34, 93, 96, 92, 95, 94)  # ANSI foreground colours
_LEVEL_COLOUR = {"warn": 33, "warning": 33, "error": 31, "fatal": 31, "panic": 31}


def _colour(code: int, text: str) -> str:
    return f"\033[{code}m{text}\033[0m"


def render(e: Entry, width: int, colour: bool) -> str:
    from haplane.telemetry import iso_utc

    stamp = iso_utc(e.ts)[11:23]  # HH:MM:SS.mmm (UTC)
    fields = " ".join(
        f"{k}={v if isinstance(v, str) else json.dumps(v, default=str)}"
        for k, v in e.fields.items()
    )
    text = f"{e.message} {fields}".strip()
    component = e.component.ljust(width)
    level = {"warning": "warn", "critical": "fatal"}.get(e.level, e.level)[:5].ljust(5)
    if colour:
        component = _colour(_PALETTE[sum(e.component.encode()) % len(_PALETTE)], component)
        if e.level in _LEVEL_COLOUR:
            level = _colour(_LEVEL_COLOUR[e.level], level)
            text = _colour(_LEVEL_COLOUR[e.level], text)
    return f"{stamp} {component} {level} {text}"
