"""Proves an edge cut off from NATS keeps serving inside its escrow and nothing
more: after the hub recalled part of its share, a long offline run of receipts and
reservations never reserves beyond the local share (a reserve above it is refused
with INSUFFICIENT_STOCK although sellable stock is higher), and after the link
heals the hub's view equals the edge's ledger exactly."""

from __future__ import annotations

import random
from pathlib import Path

import grpc

from server.sync.nats_server import NatsServer
from server.sync.tcp_proxy import TcpProxy
from stockd.v1 import common_pb2
from tests.integration.conftest import eventually
from tests.integration.sync_helpers import (
    EdgeProcess,
    HubProcess,
    ProcessGroup,
    Workload,
    rpc_error,
    wait_in_sync,
)

SITE = "S1"
SKUS = ("A", "B")
RECEIPT = {"A": 200, "B": 100}
RECALL = {"A": 80, "B": 30}
OFFLINE_STEPS = 500
CHECK_EVERY_STEPS = 50
LINK_TIMEOUT_SECONDS = 15.0


async def shares_moved(hub: HubProcess, edge: EdgeProcess) -> bool:
    """The recall was applied at the edge and its return applied at the hub."""
    mine = await edge.availability(SKUS)
    theirs = await hub.balances(SITE, SKUS)
    return all(
        mine[sku].local_share == RECEIPT[sku] - RECALL[sku]
        and theirs[sku].hub_share == RECALL[sku]
        and theirs[sku].local_share == RECEIPT[sku] - RECALL[sku]
        for sku in SKUS
    )


async def test_offline_edge_stays_inside_its_share_and_heals_exactly(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    proxy = TcpProxy("127.0.0.1", nats_server.port)
    await proxy.start()
    try:
        async with ProcessGroup(tmp_path) as group:
            hub = await group.hub(nats_server.url)
            edge = await group.edge(SITE, proxy.nats_url)
            await edge.setup_items(SKUS)
            await edge.client.receive([(sku, RECEIPT[sku]) for sku in SKUS])
            await wait_in_sync(hub, edge, SKUS)

            # The hub takes part of the share BEFORE the partition.
            for sku in SKUS:
                await hub.recall(SITE, sku, RECALL[sku])
            await eventually(
                lambda: shares_moved(hub, edge),
                timeout_seconds=LINK_TIMEOUT_SECONDS,
                what="the recalled share to move to the hub",
            )
            await wait_in_sync(hub, edge, SKUS)

            await proxy.stop()

            async def offline() -> bool:
                return not (await edge.sync_status()).connected

            await eventually(
                offline, timeout_seconds=LINK_TIMEOUT_SECONDS, what="the edge to go offline"
            )

            workload = Workload(
                edge,
                SKUS,
                random.Random(3),
                weights={"receive": 15, "reserve": 60, "release": 10, "pick": 15},
                reserve_quantity_max=6,
                receive_quantity_max=5,
            )
            start = await edge.availability(SKUS)
            for sku in SKUS:
                tally = workload.tally(sku)
                tally.sellable, tally.total = start[sku].sellable, start[sku].total
                tally.local_share = start[sku].local_share
            for done in range(0, OFFLINE_STEPS, CHECK_EVERY_STEPS):
                await workload.run(min(CHECK_EVERY_STEPS, OFFLINE_STEPS - done))
                balances = await edge.availability(SKUS)
                assert balances == workload.expected()
                for sku in SKUS:
                    balance = balances[sku]
                    assert balance.reserved <= balance.local_share, (sku, balance)
                    # The hub's units are still on the shelf, never promised here.
                    assert balance.sellable - balance.local_share == RECALL[sku], balance
            assert not (await edge.sync_status()).connected
            assert workload.done["reserve"] > 50, workload.done
            assert workload.refused["reserve"] > 0, "the run never reached the local share"

            # A reserve above the free local share is refused although the shelf
            # holds more than asked: the rest is the hub's.
            balances = await edge.availability(SKUS)
            for sku in SKUS:
                free = balances[sku].local_share - balances[sku].reserved
                wanted = free + 1
                assert balances[sku].sellable - balances[sku].reserved >= wanted + RECALL[sku] - 1
                error = await rpc_error(
                    edge.client.reserve([(sku, wanted)], kind=common_pb2.RESERVATION_KIND_HARD)
                )
                assert error.code is grpc.StatusCode.FAILED_PRECONDITION
                assert error.reason == "ERROR_REASON_INSUFFICIENT_STOCK"
                assert error.metadata["available"] == str(free)

            await proxy.start()
            report = await wait_in_sync(hub, edge, SKUS)
            assert report.edge == workload.expected()
            for sku in SKUS:
                hub_view = report.hub[sku]
                assert hub_view.hub_share == RECALL[sku]
                assert hub_view.in_flight == 0
                assert hub_view.local_share + hub_view.hub_share <= hub_view.on_hand_sellable
                assert hub_view.reserved_soft + hub_view.reserved_hard <= hub_view.local_share
    finally:
        await proxy.stop()
