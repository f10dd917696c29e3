"""Opening a listener for either forwarding mode.

Layer: gate. One asyncio server on the spec's address (SO_REUSEPORT when asked, so instances on
one host can share a port).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from .settings import ListenerSpec


async def open_server(
    spec: ListenerSpec,
    factory: Callable[[], asyncio.BaseProtocol],
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[asyncio.Server, int]:
    """The server and the port it listens on (the assigned one for port 0)."""
    server = await asyncio.get_running_loop().create_server(
        factory,
        spec.host,
        spec.port,
        reuse_address=True,
        reuse_port=spec.reuse_port or None,
        backlog=spec.backlog,
        ssl=ssl_context,
    )
    return server, int(server.sockets[0].getsockname()[1])
