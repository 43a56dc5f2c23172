"""Composition root of the hub: settings -> storage -> engine -> bus -> gRPC."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

import structlog
import uvloop

from hub import settings as hub_settings
from hub.adapters import wire
from hub.adapters.grpc_servicer import HubServicer
from hub.adapters.nats_bus import HubBus
from hub.service.engine import HubEngine
from server.runtime.auth import Authenticator
from server.runtime.grpc_server import GrpcServer, install_stop_signals
from server.runtime.logging import configure_logging
from stockd.v1 import hub_pb2_grpc

log = structlog.get_logger("stockd.hub")

SERVICE_NAME = "stockd.v1.HubInventoryService"


async def serve(config: hub_settings.HubSettings, stop: asyncio.Event) -> None:
    engine = HubEngine(config.db_path, wire.encode)
    await engine.start()
    bus = HubBus(engine, config.nats_url, replicas=config.nats_replicas)
    await bus.start()
    servicer = HubServicer(engine, Authenticator(config.tokens))
    server = GrpcServer(
        config.listen,
        lambda s: hub_pb2_grpc.add_HubInventoryServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
    )
    try:
        port = await server.start()
        if config.port_file is not None:
            temporary = config.port_file.with_suffix(".tmp")
            temporary.write_text(str(port))
            os.replace(temporary, config.port_file)
        log.info("server_started", port=port, db=str(config.db_path), nats=config.nats_url)
        await stop.wait()
        log.info("server_stopping")
        await server.stop()
    finally:
        await bus.close()
        await engine.close()
        log.info("server_stopped")


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
