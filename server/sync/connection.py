"""A NATS connection that never gives up, and says whether it is up.

Local serving must never wait on the bus: processes start, serve and keep
serving while NATS is away. This wrapper keeps (re)connecting in the
background with capped backoff; users ask `connected` or wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

log = structlog.get_logger("stockd.bus")

CONNECT_TIMEOUT_SECONDS = 2.0
RECONNECT_WAIT_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 5.0
CLOSE_TIMEOUT_SECONDS = 1.0


class BusConnection:
    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.client: NatsClient | None = None
        self.last_error = ""
        self.connected_since: float | None = None
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.is_connected

    @property
    def js(self) -> JetStreamContext:
        assert self.client is not None, "not connected yet"
        return self.client.jetstream(timeout=5.0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"bus-{self.name}")

    async def wait_connected(self, timeout_seconds: float) -> bool:
        if self.connected:
            return True
        self._up.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), timeout=timeout_seconds)
        return self.connected

    async def _on_disconnected(self) -> None:
        self._up.clear()
        self.connected_since = None
        log.warning("bus_disconnected", name=self.name, url=self.url)

    async def _on_reconnected(self) -> None:
        self.connected_since = time.monotonic()
        self._up.set()
        log.info("bus_reconnected", name=self.name, url=self.url)

    async def _on_error(self, error: Exception) -> None:
        self.last_error = repr(error)

    async def _run(self) -> None:
        delay = RECONNECT_WAIT_SECONDS
        while not self._closing:
            try:
                self.client = await nats.connect(
                    self.url,
                    name=self.name,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=RECONNECT_WAIT_SECONDS,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    error_cb=self._on_error,
                )
            except Exception as error:
                self.last_error = repr(error)
                log.warning("bus_connect_failed", name=self.name, url=self.url, error=repr(error))
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_SECONDS)
                continue
            self.connected_since = time.monotonic()
            self._up.set()
            log.info("bus_connected", name=self.name, url=self.url)
            return

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.client is not None:
            # Bounded: a drain can wait on a subscription whose server went away.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.drain(), CLOSE_TIMEOUT_SECONDS)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), CLOSE_TIMEOUT_SECONDS)
