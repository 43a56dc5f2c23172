"""Composition root of the hub: settings -> storage -> engine -> bus -> gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence

import grpc
import structlog
import uvloop

from hub import settings as hub_settings
from hub.adapters import wire
from hub.adapters.atp_servicer import AdminServicer, AtpServicer
from hub.adapters.grpc_servicer import HubServicer
from hub.adapters.nats_bus import HubBus
from hub.service.engine import HubEngine
from server.runtime.auth import Authenticator
from server.runtime.config import write_port_file
from server.runtime.grpc_server import BUS_HEALTH_SERVICE, GrpcServer, install_stop_signals
from server.runtime.logging import configure_logging
from stockd.v1 import atp_pb2_grpc, hub_pb2_grpc

log = structlog.get_logger("stockd.hub")

SERVICE_NAMES = (
    "stockd.v1.HubInventoryService",
    "stockd.v1.HubAtpService",
    "stockd.v1.HubAdminService",
)
EXPIRY_INTERVAL_SECONDS = 1.0


async def serve(config: hub_settings.HubSettings, stop: asyncio.Event) -> None:
    engine = HubEngine(config.db_path, wire.encode, stale_after_ms=config.stale_after_ms)
    await engine.start()
    bus = HubBus(engine, config.nats_url, replicas=config.nats_replicas)
    await bus.start()
    auth = Authenticator(config.tokens)
    servicer = HubServicer(engine, auth)
    atp_servicer = AtpServicer(
        engine, auth, budget_ms=config.atp_budget_ms, cache_entries=config.atp_cache_entries
    )
    admin_servicer = AdminServicer(engine, auth)

    def register(server: grpc.aio.Server) -> None:
        hub_pb2_grpc.add_HubInventoryServiceServicer_to_server(servicer, server)
        atp_pb2_grpc.add_HubAtpServiceServicer_to_server(atp_servicer, server)
        atp_pb2_grpc.add_HubAdminServiceServicer_to_server(admin_servicer, server)

    server = GrpcServer(config.listen, register, SERVICE_NAMES)
    expiry = asyncio.create_task(_expire_loop(engine, stop))
    try:
        port = await server.start()
        server.watch_dependency(BUS_HEALTH_SERVICE, lambda: bus.bus.connected)
        if config.port_file is not None:
            write_port_file(config.port_file, port)
        log.info("server_started", port=port, db=str(config.db_path), nats=config.nats_url)
        await stop.wait()
        log.info("server_stopping")
        atp_servicer.close_streams()
        await server.stop()
        answers = atp_servicer.answers
        log.info(
            "atp_answer_cache", hits=answers.hits, misses=answers.misses, entries=len(answers)
        )
    finally:
        expiry.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await expiry
        await bus.close()
        await engine.close()
        log.info("server_stopped")


async def _expire_loop(engine: HubEngine, stop: asyncio.Event) -> None:
    """Expires held promises whose TTL passed (and fills backorders they free)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=EXPIRY_INTERVAL_SECONDS)
        try:
            await engine.expire_promises()
        except Exception:
            log.exception("promise_expiry_failed")


async def _main(config: hub_settings.HubSettings) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    await serve(config, stop)


def main(argv: Sequence[str] | None = None) -> int:
    config = hub_settings.load(argv)
    configure_logging(config.log_level, config.log_json)
    uvloop.run(_main(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
