"""Fixtures for the gate's tests: factories for backend and gate processes, every one of them
SIGKILLed by its own PID when the test ends. No etcd here.

Layer: tests (gate)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio

from tests.gate.helpers import Backend, Gate, Process


@pytest_asyncio.fixture
async def processes() -> AsyncIterator[list[Process]]:
    started: list[Process] = []
    try:
        yield started
    finally:
        for p in started:
            p.kill()  # SIGKILL also ends a SIGSTOPped process


@pytest_asyncio.fixture
async def backends(
    tmp_path: Path, processes: list[Process]
) -> Callable[..., Awaitable[list[Backend]]]:
    """`await backends("a", "b", drop_gets=...)`: started concurrently, ready on return."""

    async def start(*names: str, **options: Any) -> list[Backend]:
        made = [Backend(tmp_path, name, **options) for name in names]
        processes.extend(made)
        await asyncio.gather(*(b.start() for b in made))
        return made

    return start


@pytest_asyncio.fixture
async def gate(tmp_path: Path, processes: list[Process]) -> Callable[..., Awaitable[Gate]]:
    """`await gate(config, name=...)`: a gate process, started with all its first checks done."""

    async def start(config: dict[str, Any], name: str = "gate") -> Gate:
        g = Gate(tmp_path, config, name)
        processes.append(g)
        return await g.start()

    return start
