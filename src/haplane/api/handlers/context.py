"""What a handler may use of the replica serving it: the served types and their stores, the
write fence, admission, the response headers and the watch gauge. A small object the server
builds once, so that handlers never reach into the server (and the server, which composes
them, stays the only module that knows them all).

Layer: api (handlers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..access import Access
from ..generic_store import GenericStore
from ..ops import OpsHooks
from ..request import Admission, Target
from ..resources import Registry


@dataclass
class HandlerContext:
    registry: Registry
    # (group, version, plural) -> store; the server adds and removes custom resources' in place
    stores: dict[tuple[str, str, str], GenericStore]
    # refuse a write up front (503) when this region may not write
    check_fence: Callable[[], None]
    # region, replica and epoch headers on a response a handler prepares itself (a watch)
    stamp_headers: Callable[[web.StreamResponse], None]
    # set while draining: open watches end cleanly, clients re-watch elsewhere
    stopping: asyncio.Event
    # the open-watches gauge's child for a resource
    watch_gauge: Callable[[str], Any]
    admission: list[Admission] = field(default_factory=list)
    # names of CRDs being deleted: no new custom resources of theirs
    terminating_crds: set[str] = field(default_factory=set)
    # the replica's authorizer and authenticators, for the review types (None: not served)
    access: Access | None = None
    # the ops.haplane.dev hooks (None: not served: a replica without a global control etcd)
    ops: OpsHooks | None = None

    def store(self, target: Target) -> GenericStore:
        t = target.rtype
        return self.stores[(t.group, t.version, t.plural)]

    async def admit(self, operation: str, target: Target, obj: dict[str, Any]) -> None:
        for admit in self.admission:
            await admit(operation, target.rtype, obj)
