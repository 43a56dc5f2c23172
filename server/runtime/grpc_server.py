"""grpc.aio server bootstrap shared by the edge agent and the hub."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence

import grpc
import structlog
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.domain import limits

log = structlog.get_logger("stockd.server")

DEPENDENCY_POLL_SECONDS = 1.0
# Health service name that reports the NATS link of an edge agent or the hub.
BUS_HEALTH_SERVICE = "stockd.v1.Sync"

SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_receive_message_length", limits.MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", limits.MESSAGE_BYTES_MAX),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.max_pings_without_data", 0),
)


class GrpcServer:
    """A grpc.aio server with health and reflection, and a draining stop."""

    def __init__(
        self,
        listen: str,
        register: Callable[[grpc.aio.Server], None],
        service_names: Sequence[str],
    ) -> None:
        self._listen = listen
        self._register = register
        self._service_names = tuple(service_names)
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        self.health = health_aio.HealthServicer()
        self.port = 0
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        register = self._register
        register(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = self.server.add_insecure_port(self._listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self._listen}")
        await self.server.start()
        for name in ("", *self._service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def watch_dependency(self, name: str, is_up: Callable[[], bool]) -> None:
        """Publishes a dependency's state (e.g. the NATS link) as health of `name`.

        The process keeps SERVING its own service either way (a site serves
        offline); this lets an operator or orchestrator see the link is down.
        """

        async def report() -> None:
            last: bool | None = None
            while True:
                up = is_up()
                if up != last:
                    status = (
                        health_pb2.HealthCheckResponse.SERVING
                        if up
                        else health_pb2.HealthCheckResponse.NOT_SERVING
                    )
                    await self.health.set(name, status)
                    last = up
                await asyncio.sleep(DEPENDENCY_POLL_SECONDS)

        self._watchers.append(asyncio.create_task(report(), name=f"health-{name}"))

    async def stop(self, grace_seconds: float = limits.SHUTDOWN_GRACE_SECONDS) -> None:
        """Reports NOT_SERVING, refuses new calls, lets in-flight calls finish."""
        for watcher in self._watchers:
            watcher.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
