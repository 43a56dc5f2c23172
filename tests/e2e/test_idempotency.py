"""Every mutating RPC is idempotent by request_id: retries, reuse, races and restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from stockd.v1 import common_pb2, edge_pb2
from tests.e2e.helpers import (
    DAMAGED,
    HARD,
    SELLABLE,
    Agent,
    Stub,
    all_events,
    availability,
    expect_error,
    item,
    last_sequence,
    new_id,
    receive,
    reserve,
    running_agent,
    snapshot,
    stocked_item,
    upsert_location,
    wait_for,
)

REUSED = "ERROR_REASON_REQUEST_ID_REUSED"
DUPLICATES = 10

Context = dict[str, str]


@dataclass(frozen=True)
class Case:
    """One mutating RPC: how to call it, how to change its payload, what it writes."""

    rpc: str
    build: Callable[[Context, str], Message]
    vary: Callable[[Message], None]
    events: int

    def call(self, stub: Stub, request: Message) -> Awaitable[Any]:
        method: Callable[[Message], Awaitable[Any]] = getattr(stub, self.rpc)
        return method(request)


async def prepare(stub: Stub) -> Context:
    """State every case can act on: 100 of A at "default", aisle-1, a hard hold of 10."""
    await stocked_item(stub, "A", 100, units={"case": 12})
    await upsert_location(stub, "aisle-1")
    made = await reserve(stub, {"A": 10}, kind=HARD)
    return {"reservation_id": made.reservation.reservation_id}


def _upsert_item(_: Context, request_id: str) -> Message:
    return edge_pb2.UpsertItemRequest(
        request_id=request_id, item=item("NEW", units={"case": 6}, order_multiple=2)
    )


def _vary_upsert_item(request: Message) -> None:
    assert isinstance(request, edge_pb2.UpsertItemRequest)
    request.item.safety_stock = 1


def _upsert_location(_: Context, request_id: str) -> Message:
    return edge_pb2.UpsertLocationRequest(
        request_id=request_id,
        location=common_pb2.Location(location_id="aisle-9", description="ninth"),
    )


def _vary_upsert_location(request: Message) -> None:
    assert isinstance(request, edge_pb2.UpsertLocationRequest)
    request.location.description = "another"


def _receive(_: Context, request_id: str) -> Message:
    return edge_pb2.ReceiveRequest(
        request_id=request_id,
        lines=[
            edge_pb2.ReceiptLine(sku="A", quantity=5),
            edge_pb2.ReceiptLine(sku="A", quantity=1, unit="case", location_id="aisle-1"),
        ],
        reference="PO-1",
    )


def _vary_receive(request: Message) -> None:
    assert isinstance(request, edge_pb2.ReceiveRequest)
    request.lines[0].quantity = 6


def _adjust(_: Context, request_id: str) -> Message:
    return edge_pb2.AdjustRequest(
        request_id=request_id,
        sku="A",
        quantity_delta=-2,
        reason_code=common_pb2.ADJUSTMENT_REASON_SHRINK,
    )


def _vary_adjust(request: Message) -> None:
    assert isinstance(request, edge_pb2.AdjustRequest)
    request.quantity_delta = -3


def _record_count(_: Context, request_id: str) -> Message:
    return edge_pb2.RecordCountRequest(request_id=request_id, sku="A", counted_quantity=50)


def _vary_record_count(request: Message) -> None:
    assert isinstance(request, edge_pb2.RecordCountRequest)
    request.counted_quantity = 51


def _change_status(_: Context, request_id: str) -> Message:
    return edge_pb2.ChangeStatusRequest(
        request_id=request_id, sku="A", quantity=3, from_status=SELLABLE, to_status=DAMAGED
    )


def _vary_change_status(request: Message) -> None:
    assert isinstance(request, edge_pb2.ChangeStatusRequest)
    request.quantity = 4


def _reserve(_: Context, request_id: str) -> Message:
    return edge_pb2.ReserveRequest(
        request_id=request_id, lines=[edge_pb2.ReserveLine(sku="A", quantity=4)]
    )


def _vary_reserve(request: Message) -> None:
    assert isinstance(request, edge_pb2.ReserveRequest)
    request.lines[0].quantity = 5


def _release(context: Context, request_id: str) -> Message:
    return edge_pb2.ReleaseRequest(
        request_id=request_id,
        reservation_id=context["reservation_id"],
        lines=[edge_pb2.QuantityLine(sku="A", quantity=2)],
    )


def _vary_release(request: Message) -> None:
    assert isinstance(request, edge_pb2.ReleaseRequest)
    request.lines[0].quantity = 3


def _pick(context: Context, request_id: str) -> Message:
    return edge_pb2.PickRequest(
        request_id=request_id,
        reservation_id=context["reservation_id"],
        lines=[edge_pb2.PickLine(sku="A", quantity=2)],
    )


def _vary_pick(request: Message) -> None:
    assert isinstance(request, edge_pb2.PickRequest)
    request.lines[0].quantity = 3


def _transfer(_: Context, request_id: str) -> Message:
    return edge_pb2.TransferRequest(
        request_id=request_id, sku="A", quantity=4, to_location_id="aisle-1"
    )


def _vary_transfer(request: Message) -> None:
    assert isinstance(request, edge_pb2.TransferRequest)
    request.quantity = 5


CASES = [
    Case("UpsertItem", _upsert_item, _vary_upsert_item, events=0),
    Case("UpsertLocation", _upsert_location, _vary_upsert_location, events=0),
    Case("Receive", _receive, _vary_receive, events=2),
    Case("Adjust", _adjust, _vary_adjust, events=1),
    Case("RecordCount", _record_count, _vary_record_count, events=1),
    Case("ChangeStatus", _change_status, _vary_change_status, events=1),
    Case("Reserve", _reserve, _vary_reserve, events=1),
    Case("Release", _release, _vary_release, events=1),
    Case("Pick", _pick, _vary_pick, events=1),
    Case("Transfer", _transfer, _vary_transfer, events=2),
]

cases = pytest.mark.parametrize("case", CASES, ids=[case.rpc for case in CASES])


def wire(response: Message) -> bytes:
    return response.SerializeToString(deterministic=True)


async def clock_moves_on() -> None:
    """Waits for the next millisecond, so a second write would carry a new timestamp."""
    start_ms = time.time_ns() // 1_000_000
    await wait_for(lambda: time.time_ns() // 1_000_000 > start_ms + 1, 5, message="clock tick")


async def written_by(stub: Stub, after_sequence: int) -> list[common_pb2.LedgerEvent]:
    return await all_events(stub, edge_pb2.ListEventsRequest(after_sequence=after_sequence))


@cases
async def test_retry_returns_the_stored_response_and_writes_once(agent: Agent, case: Case) -> None:
    context = await prepare(agent.stub)
    request_id = new_id()
    request = case.build(context, request_id)
    before = await last_sequence(agent.stub)

    first = await case.call(agent.stub, request)
    after_first = await snapshot(agent.stub)
    assert after_first.as_of_sequence == before + case.events
    events = await written_by(agent.stub, before)
    assert len(events) == case.events
    assert {e.request_id for e in events} <= {request_id}

    await clock_moves_on()
    again = await case.call(agent.stub, case.build(context, request_id))
    assert wire(again) == wire(first)
    assert again == first
    assert await snapshot(agent.stub) == after_first
    assert len(await written_by(agent.stub, before)) == case.events


@cases
async def test_same_request_id_with_another_payload_is_refused(agent: Agent, case: Case) -> None:
    context = await prepare(agent.stub)
    request_id = new_id()
    first = await case.call(agent.stub, case.build(context, request_id))
    before = await snapshot(agent.stub)

    changed = case.build(context, request_id)
    case.vary(changed)
    details = await expect_error(
        case.call(agent.stub, changed), grpc.StatusCode.ALREADY_EXISTS, REUSED
    )
    assert details.metadata["request_id"] == request_id
    assert await snapshot(agent.stub) == before
    # The original payload still replays.
    assert wire(await case.call(agent.stub, case.build(context, request_id))) == wire(first)


@cases
async def test_concurrent_duplicates_apply_once(agent: Agent, case: Case) -> None:
    context = await prepare(agent.stub)
    request_id = new_id()
    before = await last_sequence(agent.stub)

    responses = await asyncio.gather(
        *(case.call(agent.stub, case.build(context, request_id)) for _ in range(DUPLICATES))
    )
    assert len({wire(response) for response in responses}) == 1
    assert await last_sequence(agent.stub) == before + case.events
    events = await written_by(agent.stub, before)
    assert len(events) == case.events
    assert {e.request_id for e in events} <= {request_id}


@cases
async def test_replay_after_restart_returns_the_stored_response(db_path: Path, case: Case) -> None:
    request_id = new_id()
    async with running_agent(db_path) as agent:
        context = await prepare(agent.stub)
        first = await case.call(agent.stub, case.build(context, request_id))
        before = await snapshot(agent.stub)

    async with running_agent(db_path) as agent:
        assert await snapshot(agent.stub) == before
        again = await case.call(agent.stub, case.build(context, request_id))
        assert wire(again) == wire(first)
        assert await snapshot(agent.stub) == before
        changed = case.build(context, request_id)
        case.vary(changed)
        await expect_error(case.call(agent.stub, changed), grpc.StatusCode.ALREADY_EXISTS, REUSED)
        assert await snapshot(agent.stub) == before


async def test_request_id_reused_by_another_rpc_is_refused(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10)
    request_id = new_id()
    await agent.stub.Receive(
        edge_pb2.ReceiveRequest(
            request_id=request_id, lines=[edge_pb2.ReceiptLine(sku="A", quantity=1)]
        )
    )
    before = await snapshot(agent.stub)
    await expect_error(
        agent.stub.Reserve(
            edge_pb2.ReserveRequest(
                request_id=request_id, lines=[edge_pb2.ReserveLine(sku="A", quantity=1)]
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        REUSED,
    )
    assert await snapshot(agent.stub) == before


async def test_replay_answers_even_when_the_state_has_moved_on(agent: Agent) -> None:
    """A replay returns what happened, not what would happen now."""
    await stocked_item(agent.stub, "A", 10)
    request_id = new_id()
    first = await reserve(agent.stub, {"A": 4}, request_id=request_id)
    await reserve(agent.stub, {"A": 6})
    assert (await availability(agent.stub, "A")).available == 0
    assert wire(await reserve(agent.stub, {"A": 4}, request_id=request_id)) == wire(first)

    release_id = new_id()
    release = edge_pb2.ReleaseRequest(
        request_id=release_id, reservation_id=first.reservation.reservation_id
    )
    released = await agent.stub.Release(release)
    assert released.reservation.state == common_pb2.RESERVATION_STATE_RELEASED
    # The reservation is closed now, yet the same release replays its answer.
    assert wire(await agent.stub.Release(release)) == wire(released)


async def test_refused_request_may_be_retried_with_the_same_request_id(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10)
    request_id = new_id()
    before = await snapshot(agent.stub)
    await expect_error(
        reserve(agent.stub, {"A": 15}, request_id=request_id),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_INSUFFICIENT_STOCK",
    )
    assert await snapshot(agent.stub) == before
    await receive(agent.stub, "A", 5)
    made = await reserve(agent.stub, {"A": 15}, request_id=request_id)
    assert made.reservation.request_id == request_id
    assert (await availability(agent.stub, "A")).available == 0
