"""Bad input and refused operations get the documented status and reason, and change nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.message import Message

from server.domain import limits
from stockd.v1 import common_pb2, edge_pb2
from tests.e2e.helpers import (
    ALICE,
    DAMAGED,
    HARD,
    SELLABLE,
    Agent,
    Stub,
    availability,
    decode_error,
    expect_error,
    item,
    new_id,
    reserve,
    running_agent,
    snapshot,
    stocked_item,
    upsert_location,
)

Context = dict[str, str]
Build = Callable[[Context], Message]

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

INVALID_FIELD = "ERROR_REASON_INVALID_FIELD"
INVALID_QUANTITY = "ERROR_REASON_INVALID_QUANTITY"
UNKNOWN_UNIT = "ERROR_REASON_UNKNOWN_UNIT"
NOT_ORDER_MULTIPLE = "ERROR_REASON_NOT_ORDER_MULTIPLE"
BELOW_ORDER_MINIMUM = "ERROR_REASON_BELOW_ORDER_MINIMUM"
TOO_MANY_LINES = "ERROR_REASON_TOO_MANY_LINES"
UNKNOWN_SKU = "ERROR_REASON_UNKNOWN_SKU"
UNKNOWN_LOCATION = "ERROR_REASON_UNKNOWN_LOCATION"
UNKNOWN_RESERVATION = "ERROR_REASON_UNKNOWN_RESERVATION"
INSUFFICIENT_STOCK = "ERROR_REASON_INSUFFICIENT_STOCK"
RESERVATION_CLOSED = "ERROR_REASON_RESERVATION_CLOSED"
EXCEEDS_HELD = "ERROR_REASON_EXCEEDS_HELD"
INSUFFICIENT_ON_HAND = "ERROR_REASON_INSUFFICIENT_ON_HAND"
INVALID_PAGE_TOKEN = "ERROR_REASON_INVALID_PAGE_TOKEN"
WOULD_BREAK_RESERVATIONS = "ERROR_REASON_WOULD_BREAK_RESERVATIONS"
UNAUTHENTICATED = "ERROR_REASON_UNAUTHENTICATED"
REQUEST_ID_REUSED = "ERROR_REASON_REQUEST_ID_REUSED"

HUGE = 2**62
# A number of cases whose base quantity is just above the per-line cap.
CASES_OVER_CAP = limits.QUANTITY_MAX // 12 + 1


async def prepare(stub: Stub) -> Context:
    """A: 100 each (case = 12) with 10 held hard; M: order multiple 12; N: minimum 10."""
    await stocked_item(stub, "A", 100, units={"case": 12})
    await stocked_item(stub, "M", 100, units={"case": 12}, order_multiple=12)
    await stocked_item(stub, "N", 100, order_minimum=10)
    await upsert_location(stub, "aisle-1")
    held = await reserve(stub, {"A": 10}, kind=HARD)
    closed = await reserve(stub, {"A": 1})
    await stub.Release(
        edge_pb2.ReleaseRequest(
            request_id=new_id(), reservation_id=closed.reservation.reservation_id
        )
    )
    page = await stub.ListItems(edge_pb2.ListItemsRequest(page_size=1))
    events = await stub.ListEvents(edge_pb2.ListEventsRequest(sku="A", page_size=1))
    return {
        "held": held.reservation.reservation_id,
        "closed": closed.reservation.reservation_id,
        "items_token": page.next_page_token,
        "events_token": events.next_page_token,
    }


@dataclass(frozen=True)
class Bad:
    """One request that must be refused."""

    name: str
    rpc: str
    build: Build
    code: grpc.StatusCode
    reason: str
    violation: str | None = None  # a BadRequest field violation that must be present
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)  # must be in ErrorInfo


def receive(*lines: edge_pb2.ReceiptLine, request_id: str | None = None) -> Build:
    return lambda _: edge_pb2.ReceiveRequest(
        request_id=new_id() if request_id is None else request_id, lines=list(lines)
    )


def reserve_lines(*lines: edge_pb2.ReserveLine, **fields: Any) -> Build:
    return lambda _: edge_pb2.ReserveRequest(
        request_id=fields.pop("request_id", None) or new_id(), lines=list(lines), **fields
    )


def adjust(**fields: Any) -> Build:
    defaults: dict[str, Any] = {"sku": "A", "reason_code": common_pb2.ADJUSTMENT_REASON_SHRINK}
    return lambda _: edge_pb2.AdjustRequest(request_id=new_id(), **{**defaults, **fields})


def count(**fields: Any) -> Build:
    return lambda _: edge_pb2.RecordCountRequest(request_id=new_id(), **{"sku": "A", **fields})


def change_status(**fields: Any) -> Build:
    defaults: dict[str, Any] = {
        "sku": "A",
        "quantity": 1,
        "from_status": SELLABLE,
        "to_status": DAMAGED,
    }
    return lambda _: edge_pb2.ChangeStatusRequest(request_id=new_id(), **{**defaults, **fields})


def transfer(**fields: Any) -> Build:
    defaults: dict[str, Any] = {"sku": "A", "quantity": 1, "to_location_id": "aisle-1"}
    return lambda _: edge_pb2.TransferRequest(request_id=new_id(), **{**defaults, **fields})


def release(reservation: str, *lines: edge_pb2.QuantityLine) -> Build:
    return lambda context: edge_pb2.ReleaseRequest(
        request_id=new_id(),
        reservation_id=context.get(reservation, reservation),
        lines=list(lines),
    )


def pick(reservation: str, *lines: edge_pb2.PickLine, remainder: bool = False) -> Build:
    return lambda context: edge_pb2.PickRequest(
        request_id=new_id(),
        reservation_id=context.get(reservation, reservation),
        lines=list(lines),
        release_remainder=remainder,
    )


def upsert(message: common_pb2.Item) -> Build:
    return lambda _: edge_pb2.UpsertItemRequest(request_id=new_id(), item=message)


R = edge_pb2.ReceiptLine
L = edge_pb2.ReserveLine
Q = edge_pb2.QuantityLine
P = edge_pb2.PickLine


def unknown_enum(value: int) -> Any:
    """An enum number the contract does not define (proto3 enums are open)."""
    return value


BAD: list[Bad] = [
    # ----- quantities: zero, negative, huge, and a unit that overflows the cap
    Bad("receive zero", "Receive", receive(R(sku="A", quantity=0)), INVALID, INVALID_QUANTITY,
        "lines[0].quantity"),
    Bad("receive negative", "Receive", receive(R(sku="A", quantity=-5)), INVALID,
        INVALID_QUANTITY, "lines[0].quantity"),
    Bad("receive huge", "Receive", receive(R(sku="A", quantity=HUGE)), INVALID, INVALID_QUANTITY,
        "lines[0].quantity"),
    Bad("receive cases over the cap", "Receive",
        receive(R(sku="A", quantity=CASES_OVER_CAP, unit="case")), INVALID, INVALID_QUANTITY,
        "lines[0].quantity"),
    Bad("receive second line bad", "Receive",
        receive(R(sku="A", quantity=1), R(sku="A", quantity=0)), INVALID, INVALID_QUANTITY,
        "lines[1].quantity"),
    Bad("reserve zero", "Reserve", reserve_lines(L(sku="A", quantity=0)), INVALID,
        INVALID_QUANTITY, "lines[0].quantity"),
    Bad("reserve negative", "Reserve", reserve_lines(L(sku="A", quantity=-3)), INVALID,
        INVALID_QUANTITY, "lines[0].quantity"),
    Bad("reserve huge", "Reserve", reserve_lines(L(sku="A", quantity=HUGE)), INVALID,
        INVALID_QUANTITY, "lines[0].quantity"),
    Bad("reserve cases over the cap", "Reserve",
        reserve_lines(L(sku="A", quantity=CASES_OVER_CAP, unit="case")), INVALID,
        INVALID_QUANTITY, "lines[0].quantity"),
    Bad("adjust zero", "Adjust", adjust(quantity_delta=0), INVALID, INVALID_QUANTITY,
        "quantity_delta"),
    Bad("adjust huge negative", "Adjust", adjust(quantity_delta=-HUGE), INVALID,
        INVALID_QUANTITY, "quantity_delta"),
    Bad("adjust cases over the cap", "Adjust",
        adjust(quantity_delta=CASES_OVER_CAP, unit="case",
               reason_code=common_pb2.ADJUSTMENT_REASON_FOUND),
        INVALID, INVALID_QUANTITY, "quantity_delta"),
    Bad("count negative", "RecordCount", count(counted_quantity=-1), INVALID, INVALID_QUANTITY,
        "counted_quantity"),
    Bad("count huge", "RecordCount", count(counted_quantity=HUGE), INVALID, INVALID_QUANTITY,
        "counted_quantity"),
    Bad("count cases over the cap", "RecordCount",
        count(counted_quantity=CASES_OVER_CAP, unit="case"), INVALID, INVALID_QUANTITY,
        "counted_quantity"),
    Bad("change status zero", "ChangeStatus", change_status(quantity=0), INVALID,
        INVALID_QUANTITY, "quantity"),
    Bad("transfer negative", "Transfer", transfer(quantity=-1), INVALID, INVALID_QUANTITY,
        "quantity"),
    Bad("transfer huge", "Transfer", transfer(quantity=HUGE), INVALID, INVALID_QUANTITY,
        "quantity"),
    Bad("release zero", "Release", release("held", Q(sku="A", quantity=0)), INVALID,
        INVALID_QUANTITY, "lines[0].quantity"),
    Bad("pick huge", "Pick", pick("held", P(sku="A", quantity=HUGE)), INVALID,
        INVALID_QUANTITY, "lines[0].quantity"),
    Bad("pick negative", "Pick", pick("held", P(sku="A", quantity=-1)), INVALID,
        INVALID_QUANTITY, "lines[0].quantity"),
    Bad("unit of zero base units", "UpsertItem", upsert(item("A", units={"case": 0})), INVALID,
        INVALID_QUANTITY, "item.units[0].base_units_per_unit"),
    Bad("negative safety stock", "UpsertItem", upsert(item("A", safety_stock=-1)), INVALID,
        INVALID_QUANTITY, "item.safety_stock"),
    # ----- unknown SKUs, locations, units
    Bad("receive unknown sku", "Receive", receive(R(sku="nope", quantity=1)), NOT_FOUND,
        UNKNOWN_SKU, metadata={"sku": "nope", "field": "lines[0].sku"}),
    Bad("reserve unknown sku", "Reserve",
        reserve_lines(L(sku="A", quantity=1), L(sku="nope", quantity=1)), NOT_FOUND,
        UNKNOWN_SKU, metadata={"sku": "nope", "field": "lines[1].sku"}),
    Bad("adjust unknown sku", "Adjust", adjust(sku="nope", quantity_delta=1), NOT_FOUND,
        UNKNOWN_SKU, metadata={"sku": "nope", "field": "sku"}),
    Bad("get unknown item", "GetItem", lambda _: edge_pb2.GetItemRequest(sku="nope"), NOT_FOUND,
        UNKNOWN_SKU, metadata={"sku": "nope"}),
    Bad("availability of unknown sku", "GetAvailability",
        lambda _: edge_pb2.GetAvailabilityRequest(skus=["A", "nope"]), NOT_FOUND, UNKNOWN_SKU,
        metadata={"sku": "nope", "field": "skus[1]"}),
    Bad("receive at unknown location", "Receive",
        receive(R(sku="A", quantity=1, location_id="nowhere")), NOT_FOUND, UNKNOWN_LOCATION,
        metadata={"location_id": "nowhere", "field": "lines[0].location_id"}),
    Bad("transfer to unknown location", "Transfer", transfer(to_location_id="nowhere"),
        NOT_FOUND, UNKNOWN_LOCATION, metadata={"field": "to_location_id"}),
    Bad("pick at unknown location", "Pick",
        pick("held", P(sku="A", quantity=1, location_id="nowhere")), NOT_FOUND,
        UNKNOWN_LOCATION, metadata={"field": "lines[0].location_id"}),
    Bad("receive unknown unit", "Receive", receive(R(sku="A", quantity=1, unit="crate")),
        INVALID, UNKNOWN_UNIT, "lines[0].unit"),
    Bad("reserve unknown unit", "Reserve", reserve_lines(L(sku="A", quantity=1, unit="crate")),
        INVALID, UNKNOWN_UNIT, "lines[0].unit"),
    Bad("adjust unknown unit", "Adjust", adjust(quantity_delta=1, unit="crate"), INVALID,
        UNKNOWN_UNIT, "unit"),
    Bad("release unknown unit", "Release", release("held", Q(sku="A", quantity=1, unit="crate")),
        INVALID, UNKNOWN_UNIT, "lines[0].unit"),
    # ----- order rules
    Bad("a fraction of a case", "Reserve", reserve_lines(L(sku="M", quantity=5)), INVALID,
        NOT_ORDER_MULTIPLE, "lines[0].quantity"),
    Bad("a case and one", "Reserve", reserve_lines(L(sku="M", quantity=13)), INVALID,
        NOT_ORDER_MULTIPLE, "lines[0].quantity"),
    Bad("below the order minimum", "Reserve", reserve_lines(L(sku="N", quantity=5)), INVALID,
        BELOW_ORDER_MINIMUM, "lines[0].quantity"),
    # ----- required and malformed fields
    Bad("empty request_id", "Receive", receive(R(sku="A", quantity=1), request_id=""), INVALID,
        INVALID_FIELD, "request_id"),
    Bad("empty request_id on reserve", "Reserve",
        lambda _: edge_pb2.ReserveRequest(lines=[L(sku="A", quantity=1)]), INVALID,
        INVALID_FIELD, "request_id"),
    Bad("request_id too long", "Receive",
        receive(R(sku="A", quantity=1), request_id="x" * (limits.REQUEST_ID_LENGTH_MAX + 1)),
        INVALID, INVALID_FIELD, "request_id"),
    Bad("empty sku on a line", "Receive", receive(R(sku="", quantity=1)), INVALID, INVALID_FIELD,
        "lines[0].sku"),
    Bad("empty sku", "Adjust", adjust(sku="", quantity_delta=1), INVALID, INVALID_FIELD, "sku"),
    Bad("empty item sku", "UpsertItem", upsert(item("")), INVALID, INVALID_FIELD, "item.sku"),
    Bad("empty location id", "UpsertLocation",
        lambda _: edge_pb2.UpsertLocationRequest(
            request_id=new_id(), location=common_pb2.Location(location_id="")
        ),
        INVALID, INVALID_FIELD, "location.location_id"),
    Bad("unit defined twice", "UpsertItem",
        upsert(common_pb2.Item(
            sku="A", base_unit="each",
            units=[common_pb2.UnitConversion(unit="each", base_units_per_unit=2)],
        )),
        INVALID, INVALID_FIELD, "item.units[0].unit"),
    Bad("sku too long", "Receive", receive(R(sku="S" * (limits.ID_LENGTH_MAX + 1), quantity=1)),
        INVALID, INVALID_FIELD, "lines[0].sku"),
    Bad("sku with a leading space", "Reserve", reserve_lines(L(sku=" A", quantity=1)), INVALID,
        INVALID_FIELD, "lines[0].sku"),
    Bad("request_id not printable", "Adjust",
        lambda _: edge_pb2.AdjustRequest(
            request_id="id\x00", sku="A", quantity_delta=1,
            reason_code=common_pb2.ADJUSTMENT_REASON_FOUND,
        ),
        INVALID, INVALID_FIELD, "request_id"),
    Bad("channel too long", "Reserve",
        reserve_lines(L(sku="A", quantity=1), channel="c" * (limits.ID_LENGTH_MAX + 1)),
        INVALID, INVALID_FIELD, "channel"),
    Bad("reference too long", "Receive",
        lambda _: edge_pb2.ReceiveRequest(
            request_id=new_id(), lines=[R(sku="A", quantity=1)],
            reference="r" * (limits.TEXT_LENGTH_MAX + 1),
        ),
        INVALID, INVALID_FIELD, "reference"),
    Bad("description too long", "UpsertItem",
        upsert(item("A", description="d" * (limits.TEXT_LENGTH_MAX + 1))), INVALID,
        INVALID_FIELD, "item.description"),
    Bad("empty reservation id", "Release", release(""), INVALID, INVALID_FIELD,
        "reservation_id"),
    Bad("transfer from unknown location", "Transfer", transfer(from_location_id="nowhere"),
        NOT_FOUND, UNKNOWN_LOCATION, metadata={"field": "from_location_id"}),
    Bad("no lines", "Receive", receive(), INVALID, INVALID_FIELD, "lines"),
    Bad("no pick lines", "Pick", pick("held"), INVALID, INVALID_FIELD, "lines"),
    Bad("same sku twice", "Reserve",
        reserve_lines(L(sku="A", quantity=1), L(sku="A", quantity=1)), INVALID, INVALID_FIELD,
        "lines[1].sku"),
    Bad("negative ttl", "Reserve", reserve_lines(L(sku="A", quantity=1), ttl_seconds=-1),
        INVALID, INVALID_FIELD, "ttl_seconds"),
    Bad("huge ttl", "Reserve", reserve_lines(L(sku="A", quantity=1), ttl_seconds=HUGE), INVALID,
        INVALID_FIELD, "ttl_seconds"),
    Bad("ttl above a week", "Reserve",
        reserve_lines(L(sku="A", quantity=1), ttl_seconds=limits.TTL_SECONDS_MAX + 1), INVALID,
        INVALID_FIELD, "ttl_seconds"),
    Bad("adjust without a reason code", "Adjust",
        adjust(quantity_delta=-1, reason_code=common_pb2.ADJUSTMENT_REASON_UNSPECIFIED),
        INVALID, INVALID_FIELD, "reason_code"),
    Bad("change to the same status", "ChangeStatus", change_status(to_status=SELLABLE), INVALID,
        INVALID_FIELD, "to_status"),
    Bad("change status from unspecified", "ChangeStatus",
        change_status(from_status=common_pb2.STOCK_STATUS_UNSPECIFIED), INVALID, INVALID_FIELD,
        "from_status"),
    Bad("transfer to a location and a site", "Transfer", transfer(to_site_id="site-b"), INVALID,
        INVALID_FIELD, "to_location_id"),
    Bad("transfer to nowhere", "Transfer", transfer(to_location_id=""), INVALID, INVALID_FIELD,
        "to_location_id"),
    Bad("transfer to this site", "Transfer", transfer(to_location_id="", to_site_id="site-a"),
        INVALID, INVALID_FIELD, "to_site_id"),
    Bad("transfer to the same location", "Transfer", transfer(to_location_id="default"),
        INVALID, INVALID_FIELD, "to_location_id"),
    Bad("release a sku not reserved", "Release", release("held", Q(sku="M", quantity=1)),
        INVALID, INVALID_FIELD, "lines[0].sku"),
    Bad("empty sku in availability", "GetAvailability",
        lambda _: edge_pb2.GetAvailabilityRequest(skus=["A", ""]), INVALID, INVALID_FIELD,
        "skus[1]"),
    Bad("negative page size", "ListItems", lambda _: edge_pb2.ListItemsRequest(page_size=-1),
        INVALID, INVALID_FIELD, "page_size"),
    # ----- unknown enum values
    Bad("unknown status", "Receive",
        receive(R(sku="A", quantity=1, status=unknown_enum(99))), INVALID, INVALID_FIELD,
        "lines[0].status"),
    Bad("unknown kind", "Reserve", reserve_lines(L(sku="A", quantity=1), kind=unknown_enum(7)),
        INVALID, INVALID_FIELD, "kind"),
    Bad("unknown reason code", "Adjust", adjust(quantity_delta=-1, reason_code=unknown_enum(42)),
        INVALID, INVALID_FIELD, "reason_code"),
    Bad("unknown adjust status", "Adjust", adjust(quantity_delta=1, status=unknown_enum(99)),
        INVALID, INVALID_FIELD, "status"),
    Bad("unknown count status", "RecordCount", count(counted_quantity=1, status=unknown_enum(99)),
        INVALID, INVALID_FIELD, "status"),
    Bad("unknown target status", "ChangeStatus", change_status(to_status=unknown_enum(99)),
        INVALID, INVALID_FIELD, "to_status"),
    Bad("unknown transfer status", "Transfer", transfer(status=unknown_enum(99)), INVALID,
        INVALID_FIELD, "status"),
    Bad("unknown state filter", "ListReservations",
        lambda _: edge_pb2.ListReservationsRequest(state=unknown_enum(9)), INVALID,
        INVALID_FIELD, "state"),
    Bad("unknown event type filter", "ListEvents",
        lambda _: edge_pb2.ListEventsRequest(types=[common_pb2.EVENT_TYPE_RECEIVED,
                                                    unknown_enum(77)]),
        INVALID, INVALID_FIELD, "types[1]"),
    Bad("unspecified event type filter", "ListEvents",
        lambda _: edge_pb2.ListEventsRequest(types=[common_pb2.EVENT_TYPE_UNSPECIFIED]), INVALID,
        INVALID_FIELD, "types[0]"),
    # ----- limits on lines
    Bad("501 receipt lines", "Receive",
        receive(*[R(sku="A", quantity=1)] * (limits.LINES_PER_REQUEST_MAX + 1)), INVALID,
        TOO_MANY_LINES, "lines"),
    Bad("501 reserve lines", "Reserve",
        lambda _: edge_pb2.ReserveRequest(
            request_id=new_id(),
            lines=[L(sku=f"S{i}", quantity=1) for i in range(limits.LINES_PER_REQUEST_MAX + 1)],
        ),
        INVALID, TOO_MANY_LINES, "lines"),
    Bad("501 release lines", "Release",
        release("held", *[Q(sku="A", quantity=1)] * (limits.LINES_PER_REQUEST_MAX + 1)), INVALID,
        TOO_MANY_LINES, "lines"),
    Bad("501 pick lines", "Pick",
        pick("held", *[P(sku="A", quantity=1)] * (limits.LINES_PER_REQUEST_MAX + 1)), INVALID,
        TOO_MANY_LINES, "lines"),
    Bad("1001 skus", "GetAvailability",
        lambda _: edge_pb2.GetAvailabilityRequest(
            skus=["A"] * (limits.SKUS_PER_QUERY_MAX + 1)
        ),
        INVALID, TOO_MANY_LINES, "skus"),
    # ----- page tokens
    Bad("malformed items token", "ListItems",
        lambda _: edge_pb2.ListItemsRequest(page_token="not a token!"), INVALID,
        INVALID_PAGE_TOKEN, "page_token"),
    Bad("json but not a token", "ListItems",
        lambda _: edge_pb2.ListItemsRequest(page_token="WzEsMl0"), INVALID,  # "[1,2]"
        INVALID_PAGE_TOKEN, "page_token"),
    Bad("items token for locations", "ListLocations",
        lambda context: edge_pb2.ListLocationsRequest(page_token=context["items_token"]),
        INVALID, INVALID_PAGE_TOKEN, "page_token"),
    Bad("malformed availability token", "GetAvailability",
        lambda _: edge_pb2.GetAvailabilityRequest(page_token="%%%"), INVALID,
        INVALID_PAGE_TOKEN, "page_token"),
    Bad("malformed reservations token", "ListReservations",
        lambda _: edge_pb2.ListReservationsRequest(page_token="AAAA"), INVALID,
        INVALID_PAGE_TOKEN, "page_token"),
    Bad("events token for another filter", "ListEvents",
        lambda context: edge_pb2.ListEventsRequest(
            sku="M", page_size=1, page_token=context["events_token"]
        ),
        INVALID, INVALID_PAGE_TOKEN, "page_token"),
    # ----- refused operations
    Bad("reserve more than available", "Reserve", reserve_lines(L(sku="A", quantity=91)),
        PRECONDITION, INSUFFICIENT_STOCK,
        metadata={"sku": "A", "requested": "91", "available": "90"}),
    Bad("all or nothing", "Reserve",
        reserve_lines(L(sku="M", quantity=12), L(sku="A", quantity=8, unit="case")),
        PRECONDITION, INSUFFICIENT_STOCK,
        metadata={"sku": "A", "requested": "96", "available": "90"}),
    Bad("release a released reservation", "Release", release("closed"), PRECONDITION,
        RESERVATION_CLOSED, metadata={"state": "RELEASED"}),
    Bad("pick a released reservation", "Pick", pick("closed", P(sku="A", quantity=1)),
        PRECONDITION, RESERVATION_CLOSED),
    Bad("release more than held", "Release", release("held", Q(sku="A", quantity=11)),
        PRECONDITION, EXCEEDS_HELD, metadata={"sku": "A", "held": "10", "requested": "11"}),
    Bad("release more than held in two lines", "Release",
        release("held", Q(sku="A", quantity=6), Q(sku="A", quantity=6)), PRECONDITION,
        EXCEEDS_HELD),
    Bad("pick more than held", "Pick", pick("held", P(sku="A", quantity=1, unit="case")),
        PRECONDITION, EXCEEDS_HELD, metadata={"held": "10", "requested": "12"}),
    Bad("pick where nothing is", "Pick",
        pick("held", P(sku="A", quantity=1, location_id="aisle-1")), PRECONDITION,
        INSUFFICIENT_ON_HAND, metadata={"location_id": "aisle-1", "on_hand": "0"}),
    Bad("adjust below zero", "Adjust", adjust(quantity_delta=-101), PRECONDITION,
        INSUFFICIENT_ON_HAND, metadata={"on_hand": "100", "requested": "101"}),
    Bad("change status of missing units", "ChangeStatus",
        change_status(from_status=DAMAGED, to_status=SELLABLE), PRECONDITION,
        INSUFFICIENT_ON_HAND),
    Bad("transfer more than there is", "Transfer", transfer(quantity=101), PRECONDITION,
        INSUFFICIENT_ON_HAND),
    Bad("adjust into reserved stock", "Adjust", adjust(quantity_delta=-95), PRECONDITION,
        WOULD_BREAK_RESERVATIONS, metadata={"reserved": "10", "sellable_after": "5"}),
    Bad("damage reserved stock", "ChangeStatus", change_status(quantity=95), PRECONDITION,
        WOULD_BREAK_RESERVATIONS),
    Bad("ship reserved stock away", "Transfer",
        transfer(quantity=95, to_location_id="", to_site_id="site-b"), PRECONDITION,
        WOULD_BREAK_RESERVATIONS),
    Bad("get unknown reservation", "GetReservation",
        lambda _: edge_pb2.GetReservationRequest(reservation_id="nope"), NOT_FOUND,
        UNKNOWN_RESERVATION, metadata={"reservation_id": "nope"}),
    Bad("release unknown reservation", "Release", release("nope"), NOT_FOUND,
        UNKNOWN_RESERVATION),
    Bad("pick unknown reservation", "Pick", pick("nope", P(sku="A", quantity=1)), NOT_FOUND,
        UNKNOWN_RESERVATION),
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD, ids=[bad.name for bad in BAD])
async def test_refused_with_reason_and_nothing_changes(agent: Agent, bad: Bad) -> None:
    context = await prepare(agent.stub)
    before = await snapshot(agent.stub)
    method: Callable[[Message], Any] = getattr(agent.stub, bad.rpc)
    details = await expect_error(
        method(bad.build(context)), bad.code, bad.reason, field=bad.violation
    )
    if bad.code == INVALID:
        assert details.violations, details
    for key, value in bad.metadata.items():
        assert details.metadata.get(key) == value, details
    assert await snapshot(agent.stub) == before


async def test_message_above_four_mebibytes_is_refused_by_grpc(agent: Agent) -> None:
    await prepare(agent.stub)
    before = await snapshot(agent.stub)
    request = edge_pb2.ReceiveRequest(
        request_id=new_id(),
        lines=[edge_pb2.ReceiptLine(sku="A", quantity=1)],
        reason="x" * (limits.MESSAGE_BYTES_MAX + 1024),
    )
    assert request.ByteSize() > 4 * 1024 * 1024
    details = await expect_error(agent.stub.Receive(request), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert details.reason == ""  # refused by gRPC before any stockd code ran
    assert await snapshot(agent.stub) == before


async def test_on_hand_cap_is_enforced_across_lines(agent: Agent) -> None:
    await prepare(agent.stub)
    lines = [
        edge_pb2.ReceiptLine(sku="A", quantity=limits.QUANTITY_MAX)
        for _ in range(limits.LINES_PER_REQUEST_MAX)
    ]
    await agent.stub.Receive(edge_pb2.ReceiveRequest(request_id=new_id(), lines=lines))
    before = await snapshot(agent.stub)
    # 100 + 500 * 10**12 are on hand; another 500 * 10**12 crosses 10**15 on the last line.
    await expect_error(
        agent.stub.Receive(edge_pb2.ReceiveRequest(request_id=new_id(), lines=lines)),
        INVALID,
        INVALID_QUANTITY,
        field=f"lines[{limits.LINES_PER_REQUEST_MAX - 1}].quantity",
    )
    assert await snapshot(agent.stub) == before


async def test_full_write_queue_is_overloaded_and_refused_calls_write_nothing(
    db_path: Path,
) -> None:
    async with running_agent(db_path, write_queue_max=1) as agent:
        await stocked_item(agent.stub, "A", 1000)
        granted = overloaded = 0
        for _ in range(20):
            before = (await availability(agent.stub, "A")).reserved_soft
            results = await asyncio.gather(
                *(reserve(agent.stub, {"A": 1}) for _ in range(40)), return_exceptions=True
            )
            round_granted = 0
            for result in results:
                if isinstance(result, grpc.aio.AioRpcError):
                    details = decode_error(result)
                    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
                    assert details.reason == "ERROR_REASON_OVERLOADED", details
                    overloaded += 1
                else:
                    assert isinstance(result, edge_pb2.ReserveResponse), result
                    round_granted += 1
            granted += round_granted
            after = (await availability(agent.stub, "A")).reserved_soft
            assert after - before == round_granted
            if overloaded:
                break
        assert overloaded > 0
        assert granted > 0


async def test_storage_failure_is_unavailable_applies_nothing_and_may_be_retried(
    agent: Agent,
) -> None:
    await stocked_item(agent.stub, "A", 10)
    before = await snapshot(agent.stub)
    request = edge_pb2.ReserveRequest(
        request_id=new_id(), lines=[edge_pb2.ReserveLine(sku="A", quantity=4)]
    )
    # Another writer holds the database's write lock past the agent's busy timeout.
    blocker = sqlite3.connect(agent.db_path, isolation_level=None, timeout=10)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        try:
            await expect_error(
                agent.stub.Reserve(request),
                grpc.StatusCode.UNAVAILABLE,
                "ERROR_REASON_STORAGE_UNAVAILABLE",
            )
        finally:
            blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    assert await snapshot(agent.stub) == before
    made = await agent.stub.Reserve(request)
    assert made.reservation.lines[0].quantity_held == 4
    assert (await availability(agent.stub, "A")).available == 6
    assert (await agent.stub.Reserve(request)) == made


async def test_unauthenticated_writes_are_refused_and_change_nothing(auth_agent: Agent) -> None:
    stub = auth_agent.stub
    await stocked_item(stub, "A", 10, ALICE)
    before = await snapshot(stub, ALICE)
    for metadata in ((), (("authorization", "Bearer t-mallory"),), (("authorization", "Basic x"),)):
        details = await expect_error(
            stub.Receive(
                edge_pb2.ReceiveRequest(
                    request_id=new_id(), lines=[edge_pb2.ReceiptLine(sku="A", quantity=1)]
                ),
                metadata=metadata,
            ),
            grpc.StatusCode.UNAUTHENTICATED,
            UNAUTHENTICATED,
        )
        assert "t-mallory" not in details.message  # the token is never echoed
    assert await snapshot(stub, ALICE) == before


async def test_request_id_reused_with_another_payload_changes_nothing(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10)
    request_id = new_id()
    await reserve(agent.stub, {"A": 1}, request_id=request_id)
    before = await snapshot(agent.stub)
    await expect_error(
        reserve(agent.stub, {"A": 2}, request_id=request_id),
        grpc.StatusCode.ALREADY_EXISTS,
        REQUEST_ID_REUSED,
        # More cases, one per mutating RPC, are in test_idempotency.py.
    )
    assert await snapshot(agent.stub) == before


# Reasons the edge agent cannot produce today, and why.
NOT_PRODUCIBLE_AT_THE_EDGE = {
    "ERROR_REASON_UNSPECIFIED": "never sent",
    "ERROR_REASON_PERMISSION_DENIED": "tokens carry no roles yet (server/runtime/auth.py)",
    "ERROR_REASON_SHUTTING_DOWN": "the gRPC server stops taking calls before the engine closes",
    "ERROR_REASON_UNKNOWN_SITE": "raised by the hub only",
    "ERROR_REASON_UNKNOWN_PROMISE": "hub only: test_hub_atp_flow.py",
    "ERROR_REASON_PROMISE_CLOSED": "hub only: test_hub_atp_flow.py",
}
TRIGGERED_IN_THIS_MODULE = {
    *(bad.reason for bad in BAD),
    UNAUTHENTICATED,
    REQUEST_ID_REUSED,
    "ERROR_REASON_OVERLOADED",
    "ERROR_REASON_STORAGE_UNAVAILABLE",
}


def test_every_error_reason_the_edge_can_produce_is_triggered() -> None:
    every = set(common_pb2.ErrorReason.keys())
    assert set(NOT_PRODUCIBLE_AT_THE_EDGE) <= every
    assert every - set(NOT_PRODUCIBLE_AT_THE_EDGE) == TRIGGERED_IN_THIS_MODULE
