"""Hub commands reaching an edge out of order in one fetch are all applied, in
sequence order and at once (a real nats-server; found by chaos seed 20261123,
where the edge stopped at the first out-of-order command and waited for
JetStream's 30 s redelivery)."""

from __future__ import annotations

from pathlib import Path

import nats

from edge_agent.adapters.nats_sync import EdgeSync, SyncSettings
from edge_agent.adapters.sqlite_queries import EventFilter, LedgerQueries
from edge_agent.domain import commands as c
from edge_agent.service.engine import EdgeEngine, EngineSettings
from server.domain.model import Item, Sku
from server.sync import streams
from server.sync.nats_server import NatsServer
from stockd.v1 import sync_pb2
from tests.integration.conftest import eventually

SITE = "S1"
# Far below JetStream's ack wait (30 s): the commands must not wait for redelivery.
APPLY_TIMEOUT_SECONDS = 10.0


def grant(sequence: int, quantity: int) -> bytes:
    return sync_pb2.HubCommand(
        site_id=SITE,
        command_sequence=sequence,
        quota_grant=sync_pb2.QuotaGrant(sku="A", quantity=quantity),
    ).SerializeToString()


async def test_commands_stored_out_of_order_are_all_applied(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    # The stream holds command 2 before command 1, so the edge's first fetch
    # hands it both, newest first.
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        await streams.ensure_streams(js)
        for sequence, quantity in ((2, 7), (1, 5)):
            await js.publish(streams.commands_subject(SITE), grant(sequence, quantity))
    finally:
        await client.close()

    db_path = tmp_path / "edge.db"
    engine = EdgeEngine(EngineSettings(site_id=SITE, db_path=db_path, hub_mode=True))
    await engine.start()
    queries = LedgerQueries(str(db_path))
    await queries.open()
    sync = EdgeSync(engine, queries, SyncSettings(nats_url=nats_server.url))
    try:
        await engine.execute_internal(c.UpsertItem(Item(Sku("A"))))
        await sync.start()

        async def both_applied() -> bool:
            return sync.applied_command_sequence == 2

        await eventually(
            both_applied, timeout_seconds=APPLY_TIMEOUT_SECONDS, what="commands 1 and 2"
        )
        share = await engine.consistent_read(lambda ledger: ledger.local_share("A"))
        assert share == 12
        grants = [event.reference for event in await queries.list_events(EventFilter(), 100)]
        assert grants == ["cmd:1", "cmd:2"], "applied in command order"
    finally:
        await sync.close()
        await engine.close()
        await queries.close()
