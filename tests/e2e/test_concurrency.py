"""Concurrent callers never take more stock than there is, and counts stay exact."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
import grpc.aio

from stockd.v1 import common_pb2, edge_pb2
from tests.e2e.helpers import (
    HARD,
    SOFT,
    Agent,
    ErrorDetails,
    Stub,
    all_reservations,
    availability,
    decode_error,
    make_stub,
    new_id,
    reserve,
    stocked_item,
)

CALLERS = 50
ROUNDS = 4
ON_HAND = 100
ASK = 3
CHANNELS = 5
INSUFFICIENT = "ERROR_REASON_INSUFFICIENT_STOCK"


@dataclass(frozen=True)
class Outcome:
    kind: int
    reservation_id: str = ""
    error: ErrorDetails | None = None


async def try_reserve(stub: Stub, lines: dict[str, int], kind: int) -> Outcome:
    try:
        made = await reserve(stub, lines, kind=kind)
    except grpc.aio.AioRpcError as error:
        return Outcome(kind, error=decode_error(error))
    return Outcome(kind, reservation_id=made.reservation.reservation_id)


def stubs_for(agent: Agent) -> list[Stub]:
    return [agent.stub] + [make_stub(agent.open_channel()) for _ in range(CHANNELS - 1)]


async def test_fifty_callers_never_reserve_more_than_is_on_hand(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", ON_HAND)
    stubs = stubs_for(agent)
    granted: list[Outcome] = []
    refused: list[Outcome] = []
    released = 0

    for round_number in range(ROUNDS):
        outcomes = await asyncio.gather(
            *(
                try_reserve(stubs[caller % CHANNELS], {"A": ASK}, HARD if caller % 2 else SOFT)
                for caller in range(CALLERS)
            )
        )
        granted += [o for o in outcomes if o.error is None]
        refused += [o for o in outcomes if o.error is not None]
        open_now = len(granted) - released
        # The ledger decides one request at a time: every grant that fits is made.
        assert open_now == (ON_HAND // ASK), f"round {round_number}"
        balance = await availability(agent.stub, "A")
        assert balance.available == ON_HAND - ASK * open_now
        # Free some units for the next round.
        for outcome in granted[released : released + 5]:
            await agent.stub.Release(
                edge_pb2.ReleaseRequest(request_id=new_id(), reservation_id=outcome.reservation_id)
            )
        released = min(len(granted), released + 5)

    assert len(granted) + len(refused) == CALLERS * ROUNDS
    assert len(granted) == ON_HAND // ASK + 5 * (ROUNDS - 1)
    open_outcomes = granted[released:]
    assert ASK * len(open_outcomes) <= ON_HAND

    for outcome in refused:
        error = outcome.error
        assert error is not None
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION, error
        assert error.reason == INSUFFICIENT, error
        assert error.metadata["sku"] == "A"
        assert error.metadata["requested"] == str(ASK)
        assert int(error.metadata["available"]) < ASK

    balance = await availability(agent.stub, "A")
    soft = sum(1 for o in open_outcomes if o.kind == SOFT)
    hard = sum(1 for o in open_outcomes if o.kind == HARD)
    assert balance.reserved_soft == ASK * soft
    assert balance.reserved_hard == ASK * hard
    assert balance.available == ON_HAND - ASK * len(open_outcomes)
    assert balance.on_hand_sellable == ON_HAND

    listed = await all_reservations(
        agent.stub,
        edge_pb2.ListReservationsRequest(state=common_pb2.RESERVATION_STATE_OPEN, sku="A"),
    )
    assert {r.reservation_id for r in listed} == {o.reservation_id for o in open_outcomes}
    assert sum(line.quantity_held for r in listed for line in r.lines) == ASK * len(open_outcomes)


async def test_concurrent_multi_line_reservations_are_all_or_nothing(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 20)
    await stocked_item(agent.stub, "B", 30)
    stubs = stubs_for(agent)
    outcomes = await asyncio.gather(
        *(try_reserve(stubs[i % CHANNELS], {"A": 1, "B": 1}, SOFT) for i in range(CALLERS))
    )
    granted = [o for o in outcomes if o.error is None]
    assert len(granted) == 20
    a = await availability(agent.stub, "A")
    b = await availability(agent.stub, "B")
    assert (a.reserved_soft, a.available) == (20, 0)
    assert (b.reserved_soft, b.available) == (20, 10)
    for outcome in outcomes:
        if outcome.error is not None:
            assert outcome.error.reason == INSUFFICIENT
            assert outcome.error.metadata["sku"] == "A"


async def test_racing_picks_and_releases_resolve_each_unit_once(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10)
    made = await reserve(agent.stub, {"A": 10}, kind=HARD)
    reservation_id = made.reservation.reservation_id

    async def act(index: int) -> str:
        stub = agent.stub
        try:
            if index % 2:
                await stub.Pick(
                    edge_pb2.PickRequest(
                        request_id=new_id(),
                        reservation_id=reservation_id,
                        lines=[edge_pb2.PickLine(sku="A", quantity=1)],
                    )
                )
                return "picked"
            await stub.Release(
                edge_pb2.ReleaseRequest(
                    request_id=new_id(),
                    reservation_id=reservation_id,
                    lines=[edge_pb2.QuantityLine(sku="A", quantity=1)],
                )
            )
        except grpc.aio.AioRpcError as error:
            return decode_error(error).reason
        return "released"

    results = await asyncio.gather(*(act(i) for i in range(30)))
    picked = results.count("picked")
    released = results.count("released")
    assert picked + released == 10
    assert set(results) - {"picked", "released"} <= {
        "ERROR_REASON_RESERVATION_CLOSED",
        "ERROR_REASON_EXCEEDS_HELD",
    }
    response = await agent.stub.GetReservation(
        edge_pb2.GetReservationRequest(reservation_id=reservation_id)
    )
    line = response.reservation.lines[0]
    resolved = (line.quantity_held, line.quantity_picked, line.quantity_released)
    assert resolved == (0, picked, released)
    balance = await availability(agent.stub, "A")
    assert balance.on_hand_sellable == 10 - picked
    assert balance.reserved_hard == 0
    assert balance.available == 10 - picked
