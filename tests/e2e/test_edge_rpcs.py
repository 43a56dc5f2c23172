"""Every EdgeInventoryService RPC works over real gRPC, plus health, reflection and auth."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edge_agent.adapters.sqlite_ledger import SiteMismatchError
from server.domain import limits
from stockd.v1 import common_pb2, edge_pb2
from tests.e2e.helpers import (
    ALICE,
    BOB,
    DAMAGED,
    HARD,
    QUARANTINE,
    SELLABLE,
    SERVICE_NAME,
    SITE_ID,
    SOFT,
    TOKENS,
    Agent,
    AgentProcess,
    Stub,
    agent_process,
    all_events,
    all_reservations,
    availability,
    channel_options,
    expect_error,
    item,
    make_stub,
    new_id,
    receive,
    reserve,
    running_agent,
    snapshot,
    stocked_item,
    upsert_item,
    upsert_location,
    wait_for,
)

UNAUTHENTICATED = "ERROR_REASON_UNAUTHENTICATED"


def buckets(balance: common_pb2.SkuAvailability) -> dict[tuple[str, int], int]:
    return {(b.location_id, b.status): b.quantity for b in balance.on_hand}


def lines_of(reservation: common_pb2.Reservation) -> dict[str, tuple[int, int, int, int]]:
    """sku -> (reserved, held, picked, released)."""
    return {
        line.sku: (
            line.quantity_reserved,
            line.quantity_held,
            line.quantity_picked,
            line.quantity_released,
        )
        for line in reservation.lines
    }


def event_summary(events: list[common_pb2.LedgerEvent]) -> list[tuple[int, str, int]]:
    return [(event.type, event.sku, event.quantity) for event in events]


async def get_reservation(stub: Stub, reservation_id: str) -> common_pb2.Reservation:
    response = await stub.GetReservation(
        edge_pb2.GetReservationRequest(reservation_id=reservation_id)
    )
    found: common_pb2.Reservation = response.reservation
    return found


# ----- master data -------------------------------------------------------------


async def test_upsert_item_stores_units_rules_and_get_item_returns_it(agent: Agent) -> None:
    before_ms = time.time_ns() // 1_000_000
    stored = await upsert_item(
        agent.stub,
        item(
            "SKU-1",
            units={"case": 12, "pallet": 480},
            order_minimum=6,
            order_multiple=3,
            safety_stock=5,
        ),
    )
    assert stored.sku == "SKU-1"
    assert stored.base_unit == "each"
    assert [(u.unit, u.base_units_per_unit) for u in stored.units] == [
        ("case", 12),
        ("pallet", 480),
    ]
    assert (stored.order_minimum, stored.order_multiple, stored.safety_stock) == (6, 3, 5)
    assert stored.updated_at.ToMilliseconds() >= before_ms

    got = await agent.stub.GetItem(edge_pb2.GetItemRequest(sku="SKU-1"))
    assert got.item == stored

    # Unit conversions replace the previous set.
    replaced = await upsert_item(agent.stub, item("SKU-1", units={"inner": 6}, safety_stock=5))
    assert [(u.unit, u.base_units_per_unit) for u in replaced.units] == [("inner", 6)]
    got = await agent.stub.GetItem(edge_pb2.GetItemRequest(sku="SKU-1"))
    assert [u.unit for u in got.item.units] == ["inner"]
    assert got.item.order_minimum == 0

    # Units convert on receipt; safety stock is never promised.
    response = await receive(agent.stub, "SKU-1", 3, unit="inner")
    assert response.events[0].quantity == 18
    balance = await availability(agent.stub, "SKU-1")
    assert (balance.on_hand_sellable, balance.safety_stock) == (18, 5)
    assert (balance.local_share, balance.available) == (13, 13)


async def test_list_items_pages_in_sku_order(agent: Agent) -> None:
    skus = ["E", "A", "D", "B", "C"]
    for sku in skus:
        await upsert_item(agent.stub, item(sku))
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await agent.stub.ListItems(edge_pb2.ListItemsRequest(page_size=2, page_token=token))
        pages.append([i.sku for i in page.items])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["A", "B"], ["C", "D"], ["E"]]


async def test_list_items_page_size_defaults_to_100_and_is_capped(agent: Agent) -> None:
    skus = [f"SKU-{index:03d}" for index in range(limits.PAGE_SIZE_DEFAULT + 5)]
    await asyncio.gather(*(upsert_item(agent.stub, item(sku)) for sku in skus))
    first = await agent.stub.ListItems(edge_pb2.ListItemsRequest())
    assert [i.sku for i in first.items] == skus[: limits.PAGE_SIZE_DEFAULT]
    rest = await agent.stub.ListItems(edge_pb2.ListItemsRequest(page_token=first.next_page_token))
    assert [i.sku for i in rest.items] == skus[limits.PAGE_SIZE_DEFAULT :]
    assert rest.next_page_token == ""
    everything = await agent.stub.ListItems(
        edge_pb2.ListItemsRequest(page_size=limits.PAGE_SIZE_MAX * 10)
    )
    assert [i.sku for i in everything.items] == skus


async def test_upsert_location_and_list_locations_page_in_id_order(agent: Agent) -> None:
    response = await agent.stub.UpsertLocation(
        edge_pb2.UpsertLocationRequest(
            request_id=new_id(),
            location=common_pb2.Location(location_id="aisle-2", description="second aisle"),
        )
    )
    assert response.location.location_id == "aisle-2"
    assert response.location.description == "second aisle"
    for location_id in ("bin-9", "aisle-1"):
        await upsert_location(agent.stub, location_id)

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await agent.stub.ListLocations(
            edge_pb2.ListLocationsRequest(page_size=2, page_token=token)
        )
        pages.append([loc.location_id for loc in page.locations])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["aisle-1", "aisle-2"], ["bin-9", "default"]]

    everything = await agent.stub.ListLocations(edge_pb2.ListLocationsRequest())
    descriptions = {loc.location_id: loc.description for loc in everything.locations}
    assert descriptions["aisle-2"] == "second aisle"
    assert everything.next_page_token == ""


# ----- stock movements -----------------------------------------------------------


async def test_receive_many_lines_with_units_atomically(agent: Agent) -> None:
    await upsert_item(agent.stub, item("A", units={"case": 12}))
    await upsert_item(agent.stub, item("B"))
    await upsert_location(agent.stub, "aisle-1")

    response = await agent.stub.Receive(
        edge_pb2.ReceiveRequest(
            request_id=new_id(),
            lines=[
                edge_pb2.ReceiptLine(sku="A", quantity=2, unit="case"),
                edge_pb2.ReceiptLine(sku="A", quantity=5, location_id="aisle-1"),
                edge_pb2.ReceiptLine(sku="B", quantity=7, status=QUARANTINE),
            ],
            reference="PO-77",
            reason="dock 3",
        )
    )
    assert [(e.type, e.sku, e.quantity, e.location_id, e.status) for e in response.events] == [
        (common_pb2.EVENT_TYPE_RECEIVED, "A", 24, "default", SELLABLE),
        (common_pb2.EVENT_TYPE_RECEIVED, "A", 5, "aisle-1", SELLABLE),
        (common_pb2.EVENT_TYPE_RECEIVED, "B", 7, "default", QUARANTINE),
    ]
    sequences = [e.sequence for e in response.events]
    assert sequences == list(range(sequences[0], sequences[0] + 3))
    hlcs = [e.hlc for e in response.events]
    assert hlcs == sorted(set(hlcs))  # one call, one instant: the logical part orders them
    assert {e.reference for e in response.events} == {"PO-77"}
    assert {e.actor for e in response.events} == {"anonymous"}
    assert {e.site_id for e in response.events} == {agent.site_id}

    by_sku = {a.sku: a for a in response.availability}
    assert list(by_sku) == ["A", "B"]
    assert buckets(by_sku["A"]) == {("aisle-1", SELLABLE): 5, ("default", SELLABLE): 24}
    assert (by_sku["A"].on_hand_sellable, by_sku["A"].available) == (29, 29)
    assert (by_sku["B"].on_hand_total, by_sku["B"].on_hand_sellable) == (7, 0)
    assert by_sku["B"].available == 0
    assert by_sku["A"].as_of_sequence == sequences[-1]


async def test_adjust_changes_on_hand_by_a_signed_quantity(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10, units={"case": 12})
    down = await agent.stub.Adjust(
        edge_pb2.AdjustRequest(
            request_id=new_id(),
            sku="A",
            quantity_delta=-3,
            reason_code=common_pb2.ADJUSTMENT_REASON_SHRINK,
            reason="stolen",
        )
    )
    assert [(e.type, e.quantity, e.reason_code, e.reason) for e in down.events] == [
        (common_pb2.EVENT_TYPE_ADJUSTED, -3, common_pb2.ADJUSTMENT_REASON_SHRINK, "stolen")
    ]
    assert down.availability.on_hand_sellable == 7

    up = await agent.stub.Adjust(
        edge_pb2.AdjustRequest(
            request_id=new_id(),
            sku="A",
            quantity_delta=1,
            unit="case",
            reason_code=common_pb2.ADJUSTMENT_REASON_FOUND,
        )
    )
    assert up.events[0].quantity == 12
    assert up.availability.on_hand_sellable == 19
    assert up.availability.available == 19


async def test_adjust_down_releases_reservations_when_allowed(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10)
    older = await reserve(agent.stub, {"A": 4}, kind=SOFT)
    hard = await reserve(agent.stub, {"A": 4}, kind=HARD)
    response = await agent.stub.Adjust(
        edge_pb2.AdjustRequest(
            request_id=new_id(),
            sku="A",
            quantity_delta=-5,
            reason_code=common_pb2.ADJUSTMENT_REASON_DAMAGE,
            release_reservations=True,
        )
    )
    # 5 sellable left, 8 reserved: the soft reservation gives way first.
    assert event_summary(list(response.events)) == [
        (common_pb2.EVENT_TYPE_ADJUSTED, "A", -5),
        (common_pb2.EVENT_TYPE_RELEASED, "A", 3),
    ]
    assert response.events[1].reservation_id == older.reservation.reservation_id
    assert response.availability.reserved_soft == 1
    assert response.availability.reserved_hard == 4
    assert response.availability.available == 0
    untouched = await get_reservation(agent.stub, hard.reservation.reservation_id)
    assert lines_of(untouched)["A"] == (4, 4, 0, 0)


async def test_record_count_sets_on_hand_and_reports_variance(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10, units={"case": 12})
    response = await agent.stub.RecordCount(
        edge_pb2.RecordCountRequest(
            request_id=new_id(), sku="A", counted_quantity=7, reason="cycle count"
        )
    )
    assert response.variance == -3
    assert [(e.type, e.quantity, e.variance) for e in response.events] == [
        (common_pb2.EVENT_TYPE_COUNTED, -3, -3)
    ]
    assert response.availability.on_hand_sellable == 7

    in_cases = await agent.stub.RecordCount(
        edge_pb2.RecordCountRequest(request_id=new_id(), sku="A", counted_quantity=2, unit="case")
    )
    assert in_cases.variance == 17
    assert in_cases.availability.on_hand_sellable == 24

    # A count is physical truth: reservations give way, newest soft first.
    first = await reserve(agent.stub, {"A": 10})
    second = await reserve(agent.stub, {"A": 10})
    short = await agent.stub.RecordCount(
        edge_pb2.RecordCountRequest(request_id=new_id(), sku="A", counted_quantity=15)
    )
    assert short.variance == -9
    assert event_summary(list(short.events)) == [
        (common_pb2.EVENT_TYPE_COUNTED, "A", -9),
        (common_pb2.EVENT_TYPE_RELEASED, "A", 5),
    ]
    assert short.events[1].reservation_id == second.reservation.reservation_id
    assert short.availability.reserved_soft == 15
    kept = await get_reservation(agent.stub, first.reservation.reservation_id)
    assert lines_of(kept)["A"] == (10, 10, 0, 0)


async def test_change_status_moves_units_between_statuses(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10)
    response = await agent.stub.ChangeStatus(
        edge_pb2.ChangeStatusRequest(
            request_id=new_id(),
            sku="A",
            quantity=4,
            from_status=SELLABLE,
            to_status=DAMAGED,
            reason="forklift",
        )
    )
    assert [(e.type, e.quantity, e.status, e.to_status) for e in response.events] == [
        (common_pb2.EVENT_TYPE_STATUS_CHANGED, 4, SELLABLE, DAMAGED)
    ]
    balance = response.availability
    assert buckets(balance) == {("default", SELLABLE): 6, ("default", DAMAGED): 4}
    assert (balance.on_hand_sellable, balance.on_hand_total, balance.available) == (6, 10, 6)

    back = await agent.stub.ChangeStatus(
        edge_pb2.ChangeStatusRequest(
            request_id=new_id(), sku="A", quantity=1, from_status=DAMAGED, to_status=SELLABLE
        )
    )
    assert back.availability.on_hand_sellable == 7


async def test_transfer_inside_the_site_and_to_another_site(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10)
    await upsert_location(agent.stub, "aisle-1")

    inside = await agent.stub.Transfer(
        edge_pb2.TransferRequest(
            request_id=new_id(), sku="A", quantity=4, to_location_id="aisle-1", reference="TO-1"
        )
    )
    assert [(e.type, e.location_id, e.quantity) for e in inside.events] == [
        (common_pb2.EVENT_TYPE_TRANSFERRED_OUT, "default", 4),
        (common_pb2.EVENT_TYPE_TRANSFERRED_IN, "aisle-1", 4),
    ]
    assert inside.events[0].to_location_id == "aisle-1"
    assert buckets(inside.availability) == {("aisle-1", SELLABLE): 4, ("default", SELLABLE): 6}
    assert inside.availability.on_hand_total == 10

    out = await agent.stub.Transfer(
        edge_pb2.TransferRequest(
            request_id=new_id(),
            sku="A",
            quantity=3,
            from_location_id="aisle-1",
            to_site_id="site-b",
            reference="TO-2",
        )
    )
    assert [(e.type, e.location_id, e.quantity, e.counterparty_site_id) for e in out.events] == [
        (common_pb2.EVENT_TYPE_TRANSFERRED_OUT, "aisle-1", 3, "site-b")
    ]
    assert buckets(out.availability) == {("aisle-1", SELLABLE): 1, ("default", SELLABLE): 6}
    assert out.availability.on_hand_total == 7


# ----- reservations --------------------------------------------------------------


async def test_reserve_soft_and_hard_many_lines(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 30, units={"case": 12})
    await stocked_item(agent.stub, "B", 10)
    before_ms = time.time_ns() // 1_000_000

    soft = await agent.stub.Reserve(
        edge_pb2.ReserveRequest(
            request_id=new_id(),
            lines=[
                edge_pb2.ReserveLine(sku="A", quantity=1, unit="case"),
                edge_pb2.ReserveLine(sku="B", quantity=2),
            ],
            ttl_seconds=600,
            channel="web",
            customer_tier="gold",
            reference="SO-1",
        )
    )
    reservation = soft.reservation
    assert reservation.kind == SOFT
    assert reservation.state == common_pb2.RESERVATION_STATE_OPEN
    assert lines_of(reservation) == {"A": (12, 12, 0, 0), "B": (2, 2, 0, 0)}
    assert (reservation.channel, reservation.customer_tier, reservation.reference) == (
        "web",
        "gold",
        "SO-1",
    )
    assert reservation.actor == "anonymous"
    created_ms = reservation.created_at.ToMilliseconds()
    assert created_ms >= before_ms
    assert reservation.expires_at.ToMilliseconds() == created_ms + 600_000
    assert soft.as_of_sequence == reservation.created_sequence + 1

    hard = await reserve(agent.stub, {"A": 8}, kind=HARD)
    assert hard.reservation.kind == HARD
    assert not hard.reservation.HasField("expires_at")

    default_ttl = await reserve(agent.stub, {"B": 1})  # ttl_seconds 0: the site default
    made = default_ttl.reservation
    assert made.expires_at.ToMilliseconds() - made.created_at.ToMilliseconds() == (
        limits.TTL_SECONDS_DEFAULT * 1000
    )
    await agent.stub.Release(
        edge_pb2.ReleaseRequest(request_id=new_id(), reservation_id=made.reservation_id)
    )

    a = await availability(agent.stub, "A")
    b = await availability(agent.stub, "B")
    assert (a.reserved_soft, a.reserved_hard, a.available) == (12, 8, 10)
    assert (b.reserved_soft, b.reserved_hard, b.available) == (2, 0, 8)
    assert a.on_hand_sellable == 30  # a reservation holds; it does not move stock

    fetched = await get_reservation(agent.stub, reservation.reservation_id)
    assert fetched == reservation


async def test_reserve_allow_partial_reports_shortfalls(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 5)
    await stocked_item(agent.stub, "B", 0)
    await stocked_item(agent.stub, "C", 10)
    await stocked_item(agent.stub, "D", 10, order_multiple=4)

    response = await agent.stub.Reserve(
        edge_pb2.ReserveRequest(
            request_id=new_id(),
            lines=[
                edge_pb2.ReserveLine(sku="A", quantity=8),
                edge_pb2.ReserveLine(sku="B", quantity=2),
                edge_pb2.ReserveLine(sku="C", quantity=4),
                edge_pb2.ReserveLine(sku="D", quantity=12),
            ],
            allow_partial=True,
        )
    )
    assert lines_of(response.reservation) == {
        "A": (5, 5, 0, 0),
        "C": (4, 4, 0, 0),
        "D": (8, 8, 0, 0),  # what is available, rounded down to the order multiple
    }
    assert [(s.sku, s.requested, s.available) for s in response.shortfalls] == [
        ("A", 8, 5),
        ("B", 2, 0),
        ("D", 12, 10),
    ]

    # Nothing available at all: no reservation, only shortfalls, nothing written.
    before = await snapshot(agent.stub)
    empty = await agent.stub.Reserve(
        edge_pb2.ReserveRequest(
            request_id=new_id(),
            lines=[edge_pb2.ReserveLine(sku="A", quantity=1)],
            allow_partial=True,
        )
    )
    assert not empty.HasField("reservation")
    assert [(s.sku, s.requested, s.available) for s in empty.shortfalls] == [("A", 1, 0)]
    assert await snapshot(agent.stub) == before


async def test_release_part_then_the_rest(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10, units={"pair": 2})
    await stocked_item(agent.stub, "B", 10)
    made = await reserve(agent.stub, {"A": 6, "B": 3})
    reservation_id = made.reservation.reservation_id

    part = await agent.stub.Release(
        edge_pb2.ReleaseRequest(
            request_id=new_id(),
            reservation_id=reservation_id,
            lines=[edge_pb2.QuantityLine(sku="A", quantity=1, unit="pair")],
            reason="customer changed order",
        )
    )
    assert part.reservation.state == common_pb2.RESERVATION_STATE_OPEN
    assert lines_of(part.reservation) == {"A": (6, 4, 0, 2), "B": (3, 3, 0, 0)}
    assert [(e.type, e.sku, e.quantity, e.reason) for e in part.events] == [
        (common_pb2.EVENT_TYPE_RELEASED, "A", 2, "customer changed order")
    ]
    assert (await availability(agent.stub, "A")).available == 6

    whole = await agent.stub.Release(
        edge_pb2.ReleaseRequest(request_id=new_id(), reservation_id=reservation_id)
    )
    assert whole.reservation.state == common_pb2.RESERVATION_STATE_RELEASED
    assert lines_of(whole.reservation) == {"A": (6, 0, 0, 6), "B": (3, 0, 0, 3)}
    assert sorted(event_summary(list(whole.events))) == [
        (common_pb2.EVENT_TYPE_RELEASED, "A", 4),
        (common_pb2.EVENT_TYPE_RELEASED, "B", 3),
    ]
    for sku in ("A", "B"):
        balance = await availability(agent.stub, sku)
        assert (balance.reserved_soft, balance.available) == (0, 10)
    stored = await get_reservation(agent.stub, reservation_id)
    assert stored.state == common_pb2.RESERVATION_STATE_RELEASED


async def test_pick_partial_full_and_release_remainder(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10)
    await stocked_item(agent.stub, "B", 10)
    await upsert_location(agent.stub, "aisle-1")
    await receive(agent.stub, "A", 5, location_id="aisle-1")

    made = await reserve(agent.stub, {"A": 6}, kind=HARD)
    reservation_id = made.reservation.reservation_id
    partial = await agent.stub.Pick(
        edge_pb2.PickRequest(
            request_id=new_id(),
            reservation_id=reservation_id,
            lines=[edge_pb2.PickLine(sku="A", quantity=2, location_id="aisle-1")],
        )
    )
    assert partial.reservation.state == common_pb2.RESERVATION_STATE_OPEN
    assert lines_of(partial.reservation) == {"A": (6, 4, 2, 0)}
    assert [(e.type, e.location_id, e.quantity) for e in partial.events] == [
        (common_pb2.EVENT_TYPE_PICKED, "aisle-1", 2)
    ]
    balance = await availability(agent.stub, "A")
    assert buckets(balance) == {("aisle-1", SELLABLE): 3, ("default", SELLABLE): 10}
    assert (balance.reserved_hard, balance.available) == (4, 9)

    full = await agent.stub.Pick(
        edge_pb2.PickRequest(
            request_id=new_id(),
            reservation_id=reservation_id,
            lines=[edge_pb2.PickLine(sku="A", quantity=4)],
        )
    )
    assert full.reservation.state == common_pb2.RESERVATION_STATE_PICKED
    assert lines_of(full.reservation) == {"A": (6, 0, 6, 0)}
    balance = await availability(agent.stub, "A")
    assert (balance.on_hand_sellable, balance.reserved_hard, balance.available) == (9, 0, 9)

    second = await reserve(agent.stub, {"A": 3, "B": 2})
    remainder = await agent.stub.Pick(
        edge_pb2.PickRequest(
            request_id=new_id(),
            reservation_id=second.reservation.reservation_id,
            lines=[edge_pb2.PickLine(sku="A", quantity=1)],
            release_remainder=True,
        )
    )
    assert remainder.reservation.state == common_pb2.RESERVATION_STATE_PICKED
    assert lines_of(remainder.reservation) == {"A": (3, 0, 1, 2), "B": (2, 0, 0, 2)}
    assert event_summary(list(remainder.events)) == [
        (common_pb2.EVENT_TYPE_PICKED, "A", 1),
        (common_pb2.EVENT_TYPE_RELEASED, "A", 2),
        (common_pb2.EVENT_TYPE_RELEASED, "B", 2),
    ]
    a = await availability(agent.stub, "A")
    b = await availability(agent.stub, "B")
    assert (a.on_hand_sellable, a.reserved_soft, a.available) == (8, 0, 8)
    assert (b.on_hand_sellable, b.reserved_soft, b.available) == (10, 0, 10)


# ----- reads -----------------------------------------------------------------------


async def test_get_availability_for_named_skus_and_by_page(agent: Agent) -> None:
    for index, sku in enumerate(["E", "C", "A", "D", "B"]):
        await stocked_item(agent.stub, sku, index + 1)
    named = await agent.stub.GetAvailability(edge_pb2.GetAvailabilityRequest(skus=["C", "A"]))
    assert [(a.sku, a.on_hand_sellable) for a in named.availability] == [("C", 2), ("A", 3)]
    assert named.next_page_token == ""
    assert named.as_of_sequence == 5
    assert {a.as_of_sequence for a in named.availability} == {5}

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await agent.stub.GetAvailability(
            edge_pb2.GetAvailabilityRequest(page_size=2, page_token=token)
        )
        pages.append([a.sku for a in page.availability])
        assert page.as_of_sequence == 5
        token = page.next_page_token
        if not token:
            break
    assert pages == [["A", "B"], ["C", "D"], ["E"]]


async def test_get_reservation_returns_open_and_ended_reservations(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10)
    made = await reserve(agent.stub, {"A": 2}, kind=HARD)
    reservation_id = made.reservation.reservation_id
    assert await get_reservation(agent.stub, reservation_id) == made.reservation
    await agent.stub.Release(
        edge_pb2.ReleaseRequest(request_id=new_id(), reservation_id=reservation_id)
    )
    ended = await get_reservation(agent.stub, reservation_id)
    assert ended.state == common_pb2.RESERVATION_STATE_RELEASED
    assert ended.created_sequence == made.reservation.created_sequence
    assert lines_of(ended) == {"A": (2, 0, 0, 2)}


async def test_list_reservations_filters_by_state_and_sku_and_pages(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 100)
    await stocked_item(agent.stub, "B", 100)
    r1 = (await reserve(agent.stub, {"A": 1})).reservation.reservation_id
    r2 = (await reserve(agent.stub, {"B": 1}, kind=HARD)).reservation.reservation_id
    r3 = (await reserve(agent.stub, {"A": 1, "B": 1})).reservation.reservation_id
    r4 = (await reserve(agent.stub, {"A": 1})).reservation.reservation_id
    r5 = (await reserve(agent.stub, {"A": 2})).reservation.reservation_id
    await agent.stub.Release(edge_pb2.ReleaseRequest(request_id=new_id(), reservation_id=r4))
    await agent.stub.Pick(
        edge_pb2.PickRequest(
            request_id=new_id(),
            reservation_id=r5,
            lines=[edge_pb2.PickLine(sku="A", quantity=2)],
        )
    )

    async def ids(request: edge_pb2.ListReservationsRequest) -> list[str]:
        return [r.reservation_id for r in await all_reservations(agent.stub, request)]

    open_state = common_pb2.RESERVATION_STATE_OPEN
    assert await ids(edge_pb2.ListReservationsRequest()) == [r5, r4, r3, r2, r1]
    assert await ids(edge_pb2.ListReservationsRequest(state=open_state)) == [r3, r2, r1]
    assert await ids(
        edge_pb2.ListReservationsRequest(state=common_pb2.RESERVATION_STATE_RELEASED)
    ) == [r4]
    assert await ids(
        edge_pb2.ListReservationsRequest(state=common_pb2.RESERVATION_STATE_PICKED)
    ) == [r5]
    assert await ids(edge_pb2.ListReservationsRequest(sku="B")) == [r3, r2]
    assert await ids(edge_pb2.ListReservationsRequest(sku="A", state=open_state)) == [r3, r1]
    assert await ids(edge_pb2.ListReservationsRequest(sku="nothing")) == []

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await agent.stub.ListReservations(
            edge_pb2.ListReservationsRequest(page_size=2, page_token=token)
        )
        pages.append([r.reservation_id for r in page.reservations])
        token = page.next_page_token
        if not token:
            break
    assert pages == [[r5, r4], [r3, r2], [r1]]

    filtered = await agent.stub.ListReservations(
        edge_pb2.ListReservationsRequest(state=open_state, page_size=2)
    )
    assert [r.reservation_id for r in filtered.reservations] == [r3, r2]
    rest = await agent.stub.ListReservations(
        edge_pb2.ListReservationsRequest(
            state=open_state, page_size=2, page_token=filtered.next_page_token
        )
    )
    assert [r.reservation_id for r in rest.reservations] == [r1]
    assert rest.next_page_token == ""


async def test_list_events_filters_and_pages_and_records_the_principal(
    auth_agent: Agent,
) -> None:
    stub = auth_agent.stub
    await stocked_item(stub, "A", 10, ALICE)
    await stocked_item(stub, "B", 20, BOB)
    first_phase = await all_events(stub, metadata=ALICE)
    assert len(first_phase) == 2
    # Let the wall clock move on, so the two phases have different timestamps.
    last_ms = max(e.recorded_at.ToMilliseconds() for e in first_phase)
    await wait_for(lambda: time.time_ns() // 1_000_000 > last_ms + 1, 5, message="clock tick")
    made = await reserve(stub, {"A": 2}, metadata=ALICE)
    await stub.Adjust(
        edge_pb2.AdjustRequest(
            request_id=new_id(),
            sku="B",
            quantity_delta=-1,
            reason_code=common_pb2.ADJUSTMENT_REASON_SHRINK,
        ),
        metadata=BOB,
    )
    assert made.reservation.actor == "alice"

    every = await all_events(stub, metadata=ALICE)
    assert [e.sequence for e in every] == [1, 2, 3, 4]
    # Hybrid logical clock: strictly increasing, physical part = recording time.
    hlcs = [e.hlc for e in every]
    assert hlcs == sorted(set(hlcs))
    assert all(e.hlc >> 16 == e.recorded_at.ToMilliseconds() for e in every)
    assert {e.site_id for e in every} == {SITE_ID}
    assert [(e.actor, e.type, e.sku) for e in every] == [
        ("alice", common_pb2.EVENT_TYPE_RECEIVED, "A"),
        ("bob", common_pb2.EVENT_TYPE_RECEIVED, "B"),
        ("alice", common_pb2.EVENT_TYPE_RESERVED, "A"),
        ("bob", common_pb2.EVENT_TYPE_ADJUSTED, "B"),
    ]

    def seqs(events: list[common_pb2.LedgerEvent]) -> list[int]:
        return [e.sequence for e in events]

    async def query(**filters: object) -> list[int]:
        request = edge_pb2.ListEventsRequest(**filters)  # type: ignore[arg-type]
        return seqs(await all_events(stub, request, metadata=BOB))

    assert await query(sku="A") == [1, 3]
    assert await query(actor="alice") == [1, 3]
    assert await query(actor="bob") == [2, 4]
    assert await query(actor="anonymous") == []
    assert await query(types=[common_pb2.EVENT_TYPE_RESERVED]) == [3]
    movements = [common_pb2.EVENT_TYPE_ADJUSTED, common_pb2.EVENT_TYPE_RECEIVED]
    assert await query(types=movements) == [1, 2, 4]
    assert await query(after_sequence=2) == [3, 4]
    assert await query(sku="B", actor="bob", after_sequence=2) == [4]

    pivot = every[2].recorded_at
    pivot_ms = pivot.ToMilliseconds()
    assert pivot_ms > last_ms
    expected_since = [e.sequence for e in every if e.recorded_at.ToMilliseconds() >= pivot_ms]
    expected_until = [e.sequence for e in every if e.recorded_at.ToMilliseconds() < pivot_ms]
    assert expected_since == [3, 4]
    assert expected_until == [1, 2]
    assert await query(since=pivot) == expected_since
    assert await query(until=pivot) == expected_until
    later = timestamp_pb2.Timestamp()
    later.FromMilliseconds(pivot_ms + 3_600_000)
    assert await query(since=later) == []
    assert await query(since=every[0].recorded_at, until=later) == [1, 2, 3, 4]

    pages: list[list[int]] = []
    request = edge_pb2.ListEventsRequest(page_size=2)
    while True:
        page = await stub.ListEvents(request, metadata=ALICE)
        pages.append(seqs(list(page.events)))
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert pages == [[1, 2], [3, 4]]

    filtered = await stub.ListEvents(
        edge_pb2.ListEventsRequest(actor="alice", page_size=1), metadata=ALICE
    )
    assert seqs(list(filtered.events)) == [1]
    rest = await stub.ListEvents(
        edge_pb2.ListEventsRequest(actor="alice", page_size=1, page_token=filtered.next_page_token),
        metadata=ALICE,
    )
    assert seqs(list(rest.events)) == [3]


async def test_watch_availability_sends_a_snapshot_then_changes(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10)
    await stocked_item(agent.stub, "B", 3)
    stream = agent.stub.WatchAvailability(edge_pb2.WatchAvailabilityRequest(skus=["A"]))
    everything = agent.stub.WatchAvailability(edge_pb2.WatchAvailabilityRequest())
    try:
        first = await asyncio.wait_for(stream.read(), 10)
        assert isinstance(first, edge_pb2.WatchAvailabilityResponse)
        assert first.snapshot
        assert (first.availability.sku, first.availability.on_hand_sellable) == ("A", 10)
        assert first.availability.as_of_sequence == 2

        snapshots = [await asyncio.wait_for(everything.read(), 10) for _ in range(2)]
        assert [
            (m.availability.sku, m.snapshot)
            for m in snapshots
            if isinstance(m, edge_pb2.WatchAvailabilityResponse)
        ] == [("A", True), ("B", True)]

        await receive(agent.stub, "B", 1)  # not watched by `stream`
        response = await receive(agent.stub, "A", 5)
        change = await asyncio.wait_for(stream.read(), 10)
        assert isinstance(change, edge_pb2.WatchAvailabilityResponse)
        assert not change.snapshot
        assert change.availability == response.availability[0]
        assert change.availability.on_hand_sellable == 15

        changes = [await asyncio.wait_for(everything.read(), 10) for _ in range(2)]
        assert [
            (m.availability.sku, m.snapshot, m.availability.as_of_sequence)
            for m in changes
            if isinstance(m, edge_pb2.WatchAvailabilityResponse)
        ] == [("B", False, 3), ("A", False, 4)]
    finally:
        stream.cancel()
        everything.cancel()


async def test_watch_availability_of_an_unknown_sku_is_not_found(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 1)
    stream = agent.stub.WatchAvailability(edge_pb2.WatchAvailabilityRequest(skus=["A", "nope"]))
    try:
        details = await expect_error(
            stream.read(), grpc.StatusCode.NOT_FOUND, "ERROR_REASON_UNKNOWN_SKU"
        )
    finally:
        stream.cancel()
    assert details.metadata == {"sku": "nope", "field": "skus[1]"}


async def test_get_sync_status_without_a_hub(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 3)
    status = await agent.stub.GetSyncStatus(edge_pb2.GetSyncStatusRequest())
    assert status.site_id == SITE_ID
    assert not status.hub_configured
    assert not status.connected
    assert status.last_sequence == (await snapshot(agent.stub)).as_of_sequence == 1


# ----- health, reflection, auth ----------------------------------------------------


async def test_health_reports_serving(agent: Agent) -> None:
    health = health_pb2_grpc.HealthStub(agent.channel)
    for service in ("", SERVICE_NAME):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(agent: Agent) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(agent.channel)
    call = reflection.ServerReflectionInfo(timeout=10)
    try:
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        await call.done_writing()
    finally:
        call.cancel()
    assert isinstance(response, reflection_pb2.ServerReflectionResponse)
    names = {service.name for service in response.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


async def test_calls_without_a_known_token_are_unauthenticated(auth_agent: Agent) -> None:
    stub = auth_agent.stub
    await stocked_item(stub, "A", 10, ALICE)
    before = await snapshot(stub, ALICE)

    await expect_error(
        stub.GetItem(edge_pb2.GetItemRequest(sku="A")),
        grpc.StatusCode.UNAUTHENTICATED,
        UNAUTHENTICATED,
    )
    await expect_error(
        stub.GetItem(
            edge_pb2.GetItemRequest(sku="A"), metadata=(("authorization", "Bearer t-eve"),)
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        UNAUTHENTICATED,
    )
    await expect_error(
        stub.GetItem(edge_pb2.GetItemRequest(sku="A"), metadata=(("authorization", "t-alice"),)),
        grpc.StatusCode.UNAUTHENTICATED,
        UNAUTHENTICATED,
    )
    await expect_error(
        receive(stub, "A", 5),
        grpc.StatusCode.UNAUTHENTICATED,
        UNAUTHENTICATED,
    )
    await expect_error(
        reserve(stub, {"A": 1}, metadata=(("authorization", "Bearer nope"),)),
        grpc.StatusCode.UNAUTHENTICATED,
        UNAUTHENTICATED,
    )
    watch = stub.WatchAvailability(edge_pb2.WatchAvailabilityRequest())
    try:
        await expect_error(watch.read(), grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
    finally:
        watch.cancel()
    assert await snapshot(stub, ALICE) == before
    # A valid token still works.
    got = await stub.GetItem(edge_pb2.GetItemRequest(sku="A"), metadata=BOB)
    assert got.item.sku == "A"


async def test_agent_refuses_a_database_of_another_site(tmp_path: Path) -> None:
    other = tmp_path / "site-a.db"
    async with running_agent(other, site_id="site-a") as agent:
        await stocked_item(agent.stub, "A", 1)
    with pytest.raises(SiteMismatchError):
        async with running_agent(other, site_id="site-b"):
            raise AssertionError("an agent served another site's ledger")


async def test_agent_process_takes_tokens_from_its_config_file(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(
        "sweep_interval_seconds = 0.2\n[tokens]\n"
        + "".join(f'"{token}" = "{principal}"\n' for token, principal in TOKENS.items())
    )
    async with agent_process(
        tmp_path / "process.db", tmp_path / "process.log", config_path=config
    ) as child:
        await child.start()
        await check_process(child)
        assert await child.terminate() == 0


async def check_process(child: AgentProcess) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{child.port}", options=channel_options())
    try:
        stub = make_stub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        checked = await health.Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10
        )
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        await expect_error(
            stub.ListItems(edge_pb2.ListItemsRequest()),
            grpc.StatusCode.UNAUTHENTICATED,
            UNAUTHENTICATED,
        )
        await stocked_item(stub, "A", 5, BOB)
        made = await reserve(stub, {"A": 2}, metadata=ALICE)
        assert made.reservation.actor == "alice"
        events = await all_events(stub, metadata=BOB)
        assert [(e.actor, e.type) for e in events] == [
            ("bob", common_pb2.EVENT_TYPE_RECEIVED),
            ("alice", common_pb2.EVENT_TYPE_RESERVED),
        ]
    finally:
        await channel.close(None)


STOP_PROMPTLY_SECONDS = 3.0


async def test_sigterm_with_an_open_watcher_stops_promptly(child_agent: AgentProcess) -> None:
    await child_agent.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{child_agent.port}", options=channel_options())
    try:
        stub = make_stub(channel)
        await stocked_item(stub, "A", 1)
        stream = stub.WatchAvailability(edge_pb2.WatchAvailabilityRequest())
        first = await asyncio.wait_for(stream.read(), 10)
        assert isinstance(first, edge_pb2.WatchAvailabilityResponse)
        process = child_agent.process
        assert process is not None
        process.terminate()
        await wait_for(
            lambda: process.returncode is not None,
            STOP_PROMPTLY_SECONDS,
            message="the agent to exit after SIGTERM",
        )
        assert process.returncode == 0
        stream.cancel()
    finally:
        await channel.close(None)
