"""Composition root of the edge agent: settings -> storage -> engine -> gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence

import structlog
import uvloop

from edge_agent import settings as edge_settings
from edge_agent.adapters.grpc_servicer import SERVICE_NAME, EdgeServicer, register
from edge_agent.adapters.nats_sync import EdgeSync, SyncSettings
from edge_agent.adapters.sqlite_queries import LedgerQueries
from edge_agent.service.engine import EdgeEngine, EngineSettings
from server.runtime.auth import Authenticator
from server.runtime.calls import summarise
from server.runtime.config import write_port_file
from server.runtime.grpc_server import BUS_HEALTH_SERVICE, GrpcServer, install_stop_signals
from server.runtime.logging import configure_logging

log = structlog.get_logger("stockd.edge")

SUMMARY_INTERVAL_SECONDS = 10.0


async def serve(config: edge_settings.EdgeSettings, stop: asyncio.Event) -> None:
    engine = EdgeEngine(
        EngineSettings(
            site_id=config.site_id,
            db_path=config.db_path,
            commands_per_batch_max=config.commands_per_batch_max,
            write_queue_max=config.write_queue_max,
            sweep_interval_seconds=config.sweep_interval_seconds,
            request_retention_seconds=config.request_retention_seconds,
            hub_mode=bool(config.nats_url),
        )
    )
    await engine.start()
    queries = LedgerQueries(str(config.db_path))
    await queries.open()
    auth = Authenticator(config.tokens)
    if not auth.enabled:
        log.warning("auth_disabled", hint="set [tokens] in the config file or STOCKD_TOKENS")
    sync: EdgeSync | None = None
    if config.nats_url:
        sync = EdgeSync(
            engine,
            queries,
            SyncSettings(
                nats_url=config.nats_url,
                checksum_interval_seconds=config.checksum_interval_seconds,
                quota_low_water=config.quota_low_water,
                quota_high_water=config.quota_high_water,
                replicas=config.nats_replicas,
            ),
        )
        await sync.start()
        bus_link = sync.bus
        engine.optimistic_segments = config.optimistic_segments
        engine.offline = lambda: not bus_link.connected
    servicer = EdgeServicer(engine, queries, auth, sync.status if sync is not None else None)
    server = GrpcServer(
        config.listen,
        lambda s: register(s, servicer),
        [SERVICE_NAME],
    )
    try:
        port = await server.start()
        if sync is not None:
            bus = sync.bus
            server.watch_dependency(BUS_HEALTH_SERVICE, lambda: bus.connected)
        if config.port_file is not None:
            write_port_file(config.port_file, port)
        log.info("server_started", site_id=config.site_id, port=port, db=str(config.db_path))
        summary = asyncio.create_task(_summarise(servicer, engine, stop))
        await stop.wait()
        summary.cancel()
        log.info("server_stopping")
        servicer.close_streams()
        await server.stop()
    finally:
        if sync is not None:
            await sync.close()
        await engine.close()
        await queries.close()
        log.info("server_stopped")


async def _summarise(servicer: EdgeServicer, engine: EdgeEngine, stop: asyncio.Event) -> None:
    """One info line per interval instead of one per call (see server.runtime.calls)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=SUMMARY_INTERVAL_SECONDS)
        counts = summarise(servicer.rpc_counts)
        if counts:
            log.info(
                "rpc_summary",
                calls=counts,
                last_sequence=engine.ledger.last_sequence,
                batches=engine.stats.batches,
                largest_batch=engine.stats.largest_batch,
                queue_depth=engine.queue_depth,
            )


async def _main(config: edge_settings.EdgeSettings) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    await serve(config, stop)


def main(argv: Sequence[str] | None = None) -> int:
    config = edge_settings.load(argv)
    configure_logging(config.log_level, config.log_json)
    uvloop.run(_main(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
