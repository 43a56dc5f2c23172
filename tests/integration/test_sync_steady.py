"""Proves steady sync is exact: after a few hundred mixed operations at two sites,
the hub's view of each site equals that edge's ledger SKU by SKU, the hub applied
exactly the edge's last sequence, JetStream acknowledged all of it, and the
periodic checksums match with no drift."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from server.sync.nats_server import NatsServer
from tests.integration.conftest import eventually
from tests.integration.sync_helpers import OPERATIONS, ProcessGroup, Workload, wait_in_sync

SITES = ("S1", "S2")
SKUS = ("A", "B", "C", "D")
STEPS_PER_SITE = 180
INITIAL_RECEIPT = 60
CHECKSUM_TIMEOUT_SECONDS = 15.0


async def test_hub_view_equals_each_edge_after_steady_traffic(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with ProcessGroup(tmp_path) as group:
        hub = await group.hub(nats_server.url)
        edges = [await group.edge(site, nats_server.url) for site in SITES]
        workloads = []
        for index, edge in enumerate(edges):
            await edge.setup_items(SKUS)
            workload = Workload(edge, SKUS, random.Random(1000 + index))
            response = await edge.client.receive([(sku, INITIAL_RECEIPT) for sku in SKUS])
            workload.apply_events(response.events)
            workloads.append(workload)

        # Both sites write at once, as two warehouses would.
        await asyncio.gather(*(workload.run(STEPS_PER_SITE) for workload in workloads))

        for edge, workload in zip(edges, workloads, strict=True):
            assert sum(workload.done.values()) > STEPS_PER_SITE // 2, workload.refused
            for operation in OPERATIONS:
                assert workload.done[operation] > 0, (operation, workload.done)
            report = await wait_in_sync(hub, edge, SKUS)
            # The replies the test received agree with both sides too.
            assert report.edge == workload.expected()
            assert report.edge_status is not None
            assert report.edge_status.connected
            assert report.edge_status.backlog_events == 0
            assert report.site is not None
            assert report.site.known_sequence == report.site.applied_sequence
            assert not report.site.repairing

        async def checksums_matched() -> bool:
            sites = await hub.list_sites()
            return all(sites[site].checksums_matched >= 1 for site in SITES)

        await eventually(
            checksums_matched,
            timeout_seconds=CHECKSUM_TIMEOUT_SECONDS,
            what="a matching checksum from every site",
        )
        sites = await hub.list_sites()
        assert sorted(sites) == sorted(SITES)
        for site in SITES:
            assert sites[site].drift_detected == 0, sites[site]
            assert sites[site].sync_lag_ms >= 0
