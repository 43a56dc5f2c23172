"""Optimistic segments: offline, an edge overbooks at most its bound, strict SKUs
never; after healing the hub reconciles by granting the overbooked units from
its own share (and re-sourcing any promise that relied on them)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from clients.errors import StockdError
from server.sync.nats_server import NatsServer
from server.sync.tcp_proxy import TcpProxy
from tests.integration.conftest import eventually
from tests.integration.sync_helpers import ProcessGroup

FRESH, DRY = "FRESH-MILK", "DRY-RICE"
BOUND = 5
OPTIMISTIC = f'[[sync.optimistic]]\nsku_prefix = "FRESH-"\noverbook_max = {BOUND}\n'
WAIT_TIMEOUT_SECONDS = 30.0


@pytest.mark.timeout(180)
async def test_offline_overbooking_is_bounded_and_reconciled(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with TcpProxy("127.0.0.1", nats_server.port) as proxy, ProcessGroup(tmp_path) as group:
        hub = await group.hub(nats_server.url)
        site = await group.edge("S1", proxy.nats_url, extra_config=OPTIMISTIC)
        edge = site.client
        await site.setup_items([FRESH, DRY])
        await edge.receive([(FRESH, 30), (DRY, 30)])

        async def hub_knows_site() -> bool:
            status = await hub.site("S1")
            return status is not None and status.applied_sequence >= 2

        await eventually(hub_knows_site, timeout_seconds=WAIT_TIMEOUT_SECONDS, what="the site")
        for sku in (FRESH, DRY):
            await hub.recall("S1", sku, 20)

        async def recalled() -> bool:
            shares = await edge.get_availability([FRESH, DRY])
            return all(a.local_share == 10 for a in shares.availability)

        await eventually(recalled, timeout_seconds=WAIT_TIMEOUT_SECONDS, what="the recalls")

        await proxy.stop()  # the site is cut off from the bus

        async def offline() -> bool:
            return not (await site.sync_status()).connected

        await eventually(offline, timeout_seconds=WAIT_TIMEOUT_SECONDS, what="the outage")

        # Strict SKU: never beyond the local share.
        await edge.reserve([(DRY, 10)], kind="hard")
        with pytest.raises(StockdError) as refused:
            await edge.reserve([(DRY, 1)], kind="hard")
        assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.reason == "ERROR_REASON_INSUFFICIENT_STOCK"

        # Optimistic SKU: the local share plus at most the bound.
        await edge.reserve([(FRESH, 10 + BOUND)], kind="hard")
        with pytest.raises(StockdError) as over:
            await edge.reserve([(FRESH, 1)], kind="hard")
        assert over.value.metadata["available"] == "0"
        fresh = (await edge.get_availability([FRESH])).availability[0]
        assert fresh.reserved_hard == 10 + BOUND
        assert fresh.local_share == 10, "overbooking does not invent local share"

        await proxy.start()  # heal

        async def reconciled() -> bool:
            mine = (await edge.get_availability([FRESH])).availability[0]
            view = (await hub.balances("S1", [FRESH]))[FRESH]
            return (
                mine.local_share >= mine.reserved_hard
                and view.in_flight == 0
                and view.hub_share == 20 - BOUND
            )

        await eventually(
            reconciled, timeout_seconds=WAIT_TIMEOUT_SECONDS, what="the reconciliation"
        )
        mine = (await edge.get_availability([FRESH])).availability[0]
        view = (await hub.balances("S1", [FRESH]))[FRESH]
        assert mine.local_share == 10 + BOUND
        # Every unit is owned by exactly one side again, and none twice.
        assert view.local_share + view.hub_share + view.in_flight <= view.on_hand_sellable
        dry = (await hub.balances("S1", [DRY]))[DRY]
        assert dry.hub_share == 20, "strict SKUs are untouched by reconciliation"
