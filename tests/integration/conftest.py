"""Integration fixtures: a real nats-server per test, and a condition-polling helper."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

import pytest

from server.sync.nats_server import NatsServer

EVENTUALLY_TIMEOUT_SECONDS: Final = 10.0
EVENTUALLY_POLL_SECONDS: Final = 0.01


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout_seconds: float = EVENTUALLY_TIMEOUT_SECONDS,
    what: str = "condition",
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout_seconds``.

    Tests wait on conditions, never on sleeps: the sleep here is only the poll
    interval, and the deadline turns a hang into a clear failure.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            pytest.fail(f"{what} did not hold within {timeout_seconds}s")
        await asyncio.sleep(EVENTUALLY_POLL_SECONDS)


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A started nats-server with JetStream, stopped (or killed) in ``finally``."""
    server = NatsServer(tmp_path / "nats", monitoring=True)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
