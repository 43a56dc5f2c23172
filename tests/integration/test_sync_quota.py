"""Proves the escrow controls end to end: RecallQuota moves free local share to the
hub's share (never reserved units), GrantQuota moves it back through in_flight,
both show up as QUOTA_RETURNED / QUOTA_GRANTED entries in the edge's ledger,
replays of either request_id return the stored answer without a second command,
a grant above the hub's share or a reused request_id is refused with its reason,
and a count that shrinks stock past the free local share is charged to the hub's
share at the hub."""

from __future__ import annotations

from pathlib import Path

import grpc

from server.sync.nats_server import NatsServer
from stockd.v1 import common_pb2
from tests.integration.conftest import eventually
from tests.integration.sync_helpers import (
    Balance,
    EdgeProcess,
    HubProcess,
    ProcessGroup,
    hub_balance,
    new_id,
    rpc_error,
    wait_in_sync,
)

SITE = "S1"
SKUS = ("A", "B")
QUOTA_TYPES = (common_pb2.EVENT_TYPE_QUOTA_GRANTED, common_pb2.EVENT_TYPE_QUOTA_RETURNED)


async def shares(hub: HubProcess, edge: EdgeProcess, sku: str) -> tuple[Balance, Balance, int, int]:
    """(edge balance, hub balance, hub_share, in_flight) of one SKU."""
    mine = (await edge.availability([sku]))[sku]
    theirs = (await hub.balances(SITE, [sku]))[sku]
    return mine, hub_balance(theirs), theirs.hub_share, theirs.in_flight


async def quota_events(edge: EdgeProcess, sku: str) -> list[tuple[int, int, str, str]]:
    """(type, quantity, reason, reference) of the SKU's quota entries, in order."""
    response = await edge.client.list_events(sku=sku, types=QUOTA_TYPES, page_size=100)
    return [(e.type, e.quantity, e.reason, e.reference) for e in response.events]


async def commands_applied(hub: HubProcess, edge: EdgeProcess) -> bool:
    """Every command the hub numbered was applied by the edge."""
    site = await hub.site(SITE)
    status = await edge.sync_status()
    return site is not None and status.applied_command_sequence == (site.next_command_sequence - 1)


async def test_recall_grant_replays_refusals_and_shrink_against_the_hub_share(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with ProcessGroup(tmp_path) as group:
        hub = await group.hub(nats_server.url)
        edge = await group.edge(SITE, nats_server.url)
        await edge.setup_items(SKUS)
        await edge.client.receive([("A", 100), ("B", 40)])
        await edge.client.reserve([("B", 10)], kind=common_pb2.RESERVATION_KIND_HARD)
        await wait_in_sync(hub, edge, SKUS)
        assert await quota_events(edge, "A") == []

        # Recall: free local share moves to the hub's share.
        recall_id = new_id()
        recalled = await hub.recall(SITE, "A", 30, request_id=recall_id)

        async def recall_applied() -> bool:
            mine, _, hub_share, _ = await shares(hub, edge, "A")
            return mine.local_share == 70 and hub_share == 30

        await eventually(recall_applied, what="the recall of 30 A")
        availability = (await edge.client.get_availability(["A"])).availability[0]
        assert availability.local_share == 70
        assert availability.available == 70
        assert availability.on_hand_sellable == 100
        # A recall takes only free share: 10 of B's 40 are reserved.
        await hub.recall(SITE, "B", 100)

        async def partial_recall_applied() -> bool:
            mine, _, hub_share, _ = await shares(hub, edge, "B")
            return mine.local_share == 10 and hub_share == 30

        await eventually(partial_recall_applied, what="the partial recall of B")
        report = await wait_in_sync(hub, edge, SKUS)
        assert report.hub["A"].local_share == 70
        assert report.hub["B"].reserved_hard == 10

        # A replayed recall returns the stored answer and sends nothing new.
        site = await hub.site(SITE)
        assert site is not None
        commands = site.next_command_sequence
        again = await hub.recall(SITE, "A", 30, request_id=recall_id)
        assert again.command_sequence == recalled.command_sequence
        site = await hub.site(SITE)
        assert site is not None
        assert site.next_command_sequence == commands

        # Grant: units leave the hub's share at once and sit in flight until
        # the edge applies the command.
        grant_id = new_id()
        granted = await hub.grant(SITE, "A", 10, request_id=grant_id)
        assert granted.balance.hub_share == 20
        assert granted.balance.in_flight == 10
        assert granted.balance.local_share == 70

        async def grant_applied() -> bool:
            mine, theirs, hub_share, in_flight = await shares(hub, edge, "A")
            return (mine.local_share, theirs.local_share, hub_share, in_flight) == (
                80,
                80,
                20,
                0,
            )

        await eventually(grant_applied, what="the grant of 10 A to land at the edge")

        replayed = await hub.grant(SITE, "A", 10, request_id=grant_id)
        assert replayed.command_sequence == granted.command_sequence
        assert replayed.balance == granted.balance  # the stored reply, not a new grant
        site = await hub.site(SITE)
        assert site is not None
        assert site.next_command_sequence == granted.command_sequence + 1
        await eventually(lambda: commands_applied(hub, edge), what="all commands applied")
        _, _, hub_share, in_flight = await shares(hub, edge, "A")
        assert (hub_share, in_flight) == (20, 0)

        assert await quota_events(edge, "A") == [
            (common_pb2.EVENT_TYPE_QUOTA_RETURNED, 30, "hub_recall",
             f"cmd:{recalled.command_sequence}"),
            (common_pb2.EVENT_TYPE_QUOTA_GRANTED, 10, "hub_grant",
             f"cmd:{granted.command_sequence}"),
        ]  # fmt: skip

        # Refusals, each with its reason.
        error = await rpc_error(hub.grant(SITE, "A", 21))
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION
        assert error.reason == "ERROR_REASON_INSUFFICIENT_STOCK"
        assert error.metadata["available"] == "20"
        error = await rpc_error(hub.grant(SITE, "A", 11, request_id=grant_id))
        assert error.code is grpc.StatusCode.ALREADY_EXISTS
        assert error.reason == "ERROR_REASON_REQUEST_ID_REUSED"
        error = await rpc_error(hub.grant("nowhere", "A", 1))
        assert error.code is grpc.StatusCode.NOT_FOUND
        error = await rpc_error(hub.grant(SITE, "A", 0))
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        error = await rpc_error(hub.recall(SITE, "A", -1))
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        site = await hub.site(SITE)
        assert site is not None
        assert site.next_command_sequence == granted.command_sequence + 1
        _, _, hub_share, in_flight = await shares(hub, edge, "A")
        assert (hub_share, in_flight) == (20, 0)

        # Shrink past the free local share: 75 of the 80 local units are
        # reserved, a count finds 10 fewer; the edge's free 5 absorb half and
        # the hub's share pays the other 5.
        await edge.client.reserve([("A", 75)], kind=common_pb2.RESERVATION_KIND_HARD)
        await edge.client.record_count("A", 90)
        report = await wait_in_sync(hub, edge, SKUS)
        shrunk = report.hub["A"]
        assert shrunk.on_hand_sellable == 90
        assert shrunk.reserved_hard == 75
        assert shrunk.local_share == 75
        assert shrunk.hub_share == 15
        assert shrunk.local_share + shrunk.hub_share + shrunk.in_flight <= shrunk.on_hand_sellable
        assert report.edge["A"].local_share == 75
