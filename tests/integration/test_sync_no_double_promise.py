"""Proves no unit is promised twice across two sites and the hub through a
partition: the hub holds part of each site's stock as hub share (its demand), one
site goes offline, both sites reserve until refused, the hub grants to the offline
site (units in flight) and recalls from it; per site and SKU the edge never holds
more than its local share, local + hub share + in flight never exceed sellable
stock, and the sum of everything promised never exceeds physical stock, before
and after the partition heals (and across a hub crash in the middle of it)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from pathlib import Path

import grpc

from clients.errors import StockdError
from server.sync.nats_server import NatsServer
from server.sync.tcp_proxy import TcpProxy
from stockd.v1 import common_pb2
from tests.integration.conftest import eventually
from tests.integration.sync_helpers import (
    EdgeProcess,
    HubProcess,
    ProcessGroup,
    wait_in_sync,
)

SKUS = ("A", "B")
RECEIPTS: Mapping[str, Mapping[str, int]] = {"S1": {"A": 100, "B": 50}, "S2": {"A": 60, "B": 30}}
# The hub's demand: what it holds back from each site.
HELD_BY_HUB: Mapping[str, Mapping[str, int]] = {"S1": {"A": 40, "B": 10}, "S2": {"A": 25, "B": 10}}
GRANT_WHILE_OFFLINE = 5
RECALL_WHILE_OFFLINE = 5
RESERVE_QUANTITY_MAX = 4
LINK_TIMEOUT_SECONDS = 15.0


async def try_reserve(edge: EdgeProcess, sku: str, quantity: int, hard: bool) -> StockdError | None:
    """One reservation; the refusal, if it was refused."""
    kind = common_pb2.RESERVATION_KIND_HARD if hard else common_pb2.RESERVATION_KIND_SOFT
    try:
        await edge.client.reserve([(sku, quantity)], kind=kind, ttl_seconds=3600)
    except StockdError as error:
        return error
    return None


async def reserve_until_refused(edge: EdgeProcess, sku: str, rng: random.Random) -> int:
    """Reserves in small random amounts until a single unit is refused; returns the units."""
    total = 0
    wanted = rng.randint(1, RESERVE_QUANTITY_MAX)
    while True:
        error = await try_reserve(edge, sku, wanted, rng.random() < 0.5)
        if error is None:
            total += wanted
            wanted = rng.randint(1, RESERVE_QUANTITY_MAX)
            continue
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION, error
        assert error.reason == "ERROR_REASON_INSUFFICIENT_STOCK", error
        available = int(error.metadata["available"])
        assert available < wanted
        if available == 0:
            return total
        wanted = available


async def check_no_double_promise(
    hub: HubProcess, edges: list[EdgeProcess]
) -> dict[tuple[str, str], int]:
    """Checks the escrow invariants per site and SKU and per SKU across sites;
    returns each site's reserved units."""
    reserved: dict[tuple[str, str], int] = {}
    promised = dict.fromkeys(SKUS, 0)
    physical = dict.fromkeys(SKUS, 0)
    for edge in edges:
        mine = await edge.availability(SKUS)
        theirs = await hub.balances(edge.site_id, SKUS)
        for sku in SKUS:
            local, view = mine[sku], theirs[sku]
            where = (edge.site_id, sku, local, view)
            assert local.reserved <= local.local_share, where
            assert local.local_share + view.hub_share + view.in_flight <= local.sellable, where
            assert view.local_share + view.hub_share + view.in_flight <= view.on_hand_sellable, (
                where
            )
            # The hub's demand is its whole share: edge promises plus hub
            # promises fit in the physical stock.
            assert local.reserved + view.hub_share <= local.sellable, where
            reserved[(edge.site_id, sku)] = local.reserved
            promised[sku] += local.reserved + view.hub_share + view.in_flight
            physical[sku] += local.sellable
    for sku in SKUS:
        assert promised[sku] <= physical[sku], (sku, promised, physical)
    return reserved


async def test_no_unit_is_promised_twice_across_a_partition(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    proxy = TcpProxy("127.0.0.1", nats_server.port)
    await proxy.start()
    try:
        async with ProcessGroup(tmp_path) as group:
            hub = await group.hub(nats_server.url)
            online = await group.edge("S1", nats_server.url)
            cut = await group.edge("S2", proxy.nats_url)
            edges = [online, cut]
            for edge in edges:
                await edge.setup_items(SKUS)
                await edge.client.receive(list(RECEIPTS[edge.site_id].items()))
            for edge in edges:
                await wait_in_sync(hub, edge, SKUS)
                for sku in SKUS:
                    await hub.recall(edge.site_id, sku, HELD_BY_HUB[edge.site_id][sku])

            async def hub_holds_its_share() -> bool:
                for edge in edges:
                    theirs = await hub.balances(edge.site_id, SKUS)
                    if any(theirs[sku].hub_share != HELD_BY_HUB[edge.site_id][sku] for sku in SKUS):
                        return False
                return True

            await eventually(
                hub_holds_its_share,
                timeout_seconds=LINK_TIMEOUT_SECONDS,
                what="the recalls to reach the hub",
            )
            for edge in edges:
                await wait_in_sync(hub, edge, SKUS)
            await check_no_double_promise(hub, edges)

            await proxy.stop()

            async def offline() -> bool:
                return not (await cut.sync_status()).connected

            await eventually(offline, timeout_seconds=LINK_TIMEOUT_SECONDS, what="S2 to go offline")
            # The hub moves share toward the offline site and asks some back:
            # neither can land, and the granted units belong to nobody meanwhile.
            grant = await hub.grant("S2", "A", GRANT_WHILE_OFFLINE)
            assert grant.balance.in_flight == GRANT_WHILE_OFFLINE
            await hub.recall("S2", "B", RECALL_WHILE_OFFLINE)

            rng = random.Random(8)
            results = await asyncio.gather(
                *(
                    reserve_until_refused(edge, sku, random.Random(rng.random()))
                    for edge in edges
                    for sku in SKUS
                )
            )
            got = dict(zip([(e.site_id, s) for e in edges for s in SKUS], results, strict=True))
            for edge in edges:
                for sku in SKUS:
                    local_share = RECEIPTS[edge.site_id][sku] - HELD_BY_HUB[edge.site_id][sku]
                    assert got[(edge.site_id, sku)] == local_share, (edge.site_id, sku, got)
            assert not (await cut.sync_status()).connected
            reserved = await check_no_double_promise(hub, edges)
            assert reserved == got

            # The hub's own records (its share, the grant in flight) survive a
            # crash. S1 is in sync first: a quiet site's batch caught un-acked by
            # the crash would only come back with JetStream's 30 s redelivery.
            await wait_in_sync(hub, online, SKUS)
            await hub.kill()
            await hub.start()
            await wait_in_sync(hub, online, SKUS)
            pending = (await hub.balances("S2", ["A"]))["A"]
            assert pending.in_flight == GRANT_WHILE_OFFLINE
            assert pending.hub_share == HELD_BY_HUB["S2"]["A"] - GRANT_WHILE_OFFLINE
            await check_no_double_promise(hub, edges)

            await proxy.start()
            for edge in edges:
                await wait_in_sync(hub, edge, SKUS)

            async def grant_landed() -> bool:
                theirs = (await hub.balances("S2", ["A"]))["A"]
                return theirs.in_flight == 0 and theirs.local_share == (
                    RECEIPTS["S2"]["A"] - HELD_BY_HUB["S2"]["A"] + GRANT_WHILE_OFFLINE
                )

            await eventually(
                grant_landed, timeout_seconds=LINK_TIMEOUT_SECONDS, what="the grant to land"
            )
            for edge in edges:
                await wait_in_sync(hub, edge, SKUS)
            await check_no_double_promise(hub, edges)
            theirs = await hub.balances("S2", SKUS)
            # The recall found nothing free at S2 (all of B's local share is
            # reserved), so the hub's share of B did not grow.
            assert theirs["B"].hub_share == HELD_BY_HUB["S2"]["B"]
            assert theirs["A"].hub_share == HELD_BY_HUB["S2"]["A"] - GRANT_WHILE_OFFLINE

            # Only now can S2 use the granted units, and not one more.
            extra = await reserve_until_refused(cut, "A", random.Random(9))
            assert extra == GRANT_WHILE_OFFLINE
            for edge in edges:
                await wait_in_sync(hub, edge, SKUS)
            await check_no_double_promise(hub, edges)
    finally:
        await proxy.stop()
