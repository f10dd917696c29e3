"""State-change events and their one-line JSON log form.

Layer: gate. Writes only through the `haplane.gate` logger (the process entry point sends it to
stderr). Every line carries ts, level, component, event, pool, upstream, from, to, reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import orjson

log = logging.getLogger("haplane.gate")

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass(frozen=True, slots=True)
class GateEvent:
    """`event` is one of: upstream_state, pool_set, pool_removed, pool_activated,
    listener_started, listener_stopped, started, stopping, stopped, task_crashed, drained,
    undrained."""

    event: str
    level: str = "info"
    pool: str | None = None
    upstream: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    reason: str | None = None
    ts: float = field(default_factory=time.time)

    def to_json(self, component: str) -> str:
        return orjson.dumps(
            {
                "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.ts))
                + f".{int(self.ts * 1000) % 1000:03d}Z",
                "level": self.level,
                "component": component,
                "event": self.event,
                "pool": self.pool,
                "upstream": self.upstream,
                "from": self.from_state,
                "to": self.to_state,
                "reason": self.reason,
            }
        ).decode()


def emit(event: GateEvent, component: str) -> None:
    log.log(_LEVELS.get(event.level, logging.INFO), event.to_json(component))
