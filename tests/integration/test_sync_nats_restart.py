"""Proves a NATS crash never reaches the shop floor and loses nothing: while
nats-server is SIGKILLed the edge keeps acknowledging writes without blocking and
reports itself disconnected; after a restart on the same port and store the hub's
view equals the edge's ledger and the test's own tally of acknowledged replies
exactly (no loss, no double effect)."""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path

from server.sync.nats_server import NatsServer
from tests.integration.conftest import eventually
from tests.integration.sync_helpers import EdgeProcess, ProcessGroup, Workload, wait_in_sync

SITE = "S1"
SKUS = ("A", "B", "C")
INITIAL_RECEIPT = 80
STEPS_BEFORE = 60
STEPS_DURING_OUTAGE = 150
STEPS_AFTER = 60
# Local serving never waits on the bus: one write (a local fsync) well under this.
WRITE_SECONDS_MAX = 1.0
DISCONNECT_TIMEOUT_SECONDS = 15.0
# Longer than the edge's and hub's reconnect and retry backoffs (at most 5 s).
EMPTY_STORE_RESYNC_TIMEOUT_SECONDS = 8.0


async def edge_disconnected(edge: EdgeProcess) -> bool:
    return not (await edge.sync_status()).connected


async def test_edge_serves_through_nats_kill_and_hub_catches_up_exactly(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with ProcessGroup(tmp_path) as group:
        hub = await group.hub(nats_server.url)
        edge = await group.edge(SITE, nats_server.url)
        await edge.setup_items(SKUS)
        # Receipts, reserves, releases and picks only, so the tally is exact by
        # construction and covers every acknowledged write.
        workload = Workload(
            edge,
            SKUS,
            random.Random(7),
            weights={"receive": 20, "reserve": 45, "release": 15, "pick": 20},
        )
        workload.apply_events(
            (await edge.client.receive([(sku, INITIAL_RECEIPT) for sku in SKUS])).events
        )
        await workload.run(STEPS_BEFORE)
        await wait_in_sync(hub, edge, SKUS)

        # The edge writes back to back throughout: the bus dies mid-stream,
        # with entries being published, and comes back mid-stream.
        stop = asyncio.Event()
        writer = asyncio.create_task(workload.run_until(stop))
        try:
            await workload.reach(workload.steps + 10)
            await nats_server.kill()
            await eventually(
                lambda: edge_disconnected(edge),
                timeout_seconds=DISCONNECT_TIMEOUT_SECONDS,
                what="the edge to report connected=false",
            )
            workload.call_seconds_max = 0.0
            during = workload.steps
            await workload.reach(during + STEPS_DURING_OUTAGE)
            outage_status = await edge.sync_status()
            assert not outage_status.connected
            assert outage_status.backlog_events > 0
            assert outage_status.last_sequence > outage_status.acknowledged_sequence
            assert workload.call_seconds_max < WRITE_SECONDS_MAX, workload.call_seconds_max
            await nats_server.start()  # same port, same store
            await workload.reach(workload.steps + STEPS_AFTER)
        finally:
            stop.set()
            await writer  # re-raises any write that was not acknowledged
        assert workload.done["reserve"] > 0
        assert workload.refused.total() < workload.steps // 2, workload.refused

        report = await wait_in_sync(hub, edge, SKUS)
        assert report.edge_status is not None
        assert report.edge_status.connected
        expected = workload.expected()
        assert report.edge == expected
        # Reserved totals at the hub equal the acknowledged reservations exactly.
        for sku in SKUS:
            assert report.hub[sku].reserved_soft == expected[sku].reserved_soft
            assert report.hub[sku].reserved_hard == expected[sku].reserved_hard
            assert report.hub[sku].on_hand_sellable == expected[sku].sellable


async def test_sync_resumes_after_nats_returns_with_an_empty_store(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with ProcessGroup(tmp_path) as group:
        hub, edge, _report = await group.synced_site(nats_server.url, SITE, SKUS, [("A", 10)])

        await nats_server.kill()
        shutil.rmtree(nats_server.store_dir)
        await nats_server.start()
        await edge.client.receive([("A", 5)])
        report = await wait_in_sync(
            hub, edge, SKUS, timeout_seconds=EMPTY_STORE_RESYNC_TIMEOUT_SECONDS
        )
        assert report.hub["A"].on_hand_sellable == 15
