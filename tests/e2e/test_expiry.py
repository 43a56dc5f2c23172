"""The sweeper expires due soft reservations (as "system") and never hard ones."""

from __future__ import annotations

from pathlib import Path

from stockd.v1 import common_pb2, edge_pb2
from tests.e2e.helpers import (
    HARD,
    SOFT,
    Agent,
    Stub,
    all_events,
    availability,
    new_id,
    reserve,
    running_agent,
    stocked_item,
    wait_for,
)

EXPIRY_TIMEOUT_SECONDS = 10.0
EXPIRED = common_pb2.RESERVATION_STATE_EXPIRED
OPEN = common_pb2.RESERVATION_STATE_OPEN


async def state_of(stub: Stub, reservation_id: str) -> int:
    response = await stub.GetReservation(
        edge_pb2.GetReservationRequest(reservation_id=reservation_id)
    )
    state: int = response.reservation.state
    return state


async def wait_until_expired(stub: Stub, reservation_id: str) -> None:
    async def expired() -> bool:
        return await state_of(stub, reservation_id) == EXPIRED

    await wait_for(expired, EXPIRY_TIMEOUT_SECONDS, message=f"{reservation_id} to expire")


async def test_soft_reservation_expires_and_gives_stock_back(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10)
    await stocked_item(agent.stub, "B", 10)
    soft = await reserve(agent.stub, {"A": 4, "B": 1}, kind=SOFT, ttl_seconds=1)
    hard = await reserve(agent.stub, {"A": 3}, kind=HARD, ttl_seconds=1)
    lasting = await reserve(agent.stub, {"B": 2}, kind=SOFT, ttl_seconds=3600)
    released = await reserve(agent.stub, {"A": 1}, kind=SOFT, ttl_seconds=1)
    await agent.stub.Release(
        edge_pb2.ReleaseRequest(
            request_id=new_id(), reservation_id=released.reservation.reservation_id
        )
    )
    assert not hard.reservation.HasField("expires_at")
    created_ms = soft.reservation.created_at.ToMilliseconds()
    assert soft.reservation.expires_at.ToMilliseconds() == created_ms + 1000
    assert (await availability(agent.stub, "A")).available == 3

    await wait_until_expired(agent.stub, soft.reservation.reservation_id)

    expired = await agent.stub.GetReservation(
        edge_pb2.GetReservationRequest(reservation_id=soft.reservation.reservation_id)
    )
    assert {line.sku: (line.quantity_held, line.quantity_released) for line in
            expired.reservation.lines} == {"A": (0, 4), "B": (0, 1)}  # fmt: skip

    events = await all_events(
        agent.stub, edge_pb2.ListEventsRequest(types=[common_pb2.EVENT_TYPE_EXPIRED])
    )
    assert sorted((e.sku, e.quantity, e.reservation_id, e.actor) for e in events) == [
        ("A", 4, soft.reservation.reservation_id, "system"),
        ("B", 1, soft.reservation.reservation_id, "system"),
    ]
    assert {e.reason for e in events} == {"ttl_expired"}
    assert {e.reservation_kind for e in events} == {SOFT}
    system_events = await all_events(agent.stub, edge_pb2.ListEventsRequest(actor="system"))
    assert [e.sequence for e in system_events] == [e.sequence for e in events]

    # The hard reservation was due at the same moment and is untouched; so is
    # the soft one with a long TTL and the one released before its time.
    assert await state_of(agent.stub, hard.reservation.reservation_id) == OPEN
    assert await state_of(agent.stub, lasting.reservation.reservation_id) == OPEN
    assert (
        await state_of(agent.stub, released.reservation.reservation_id)
        == common_pb2.RESERVATION_STATE_RELEASED
    )

    a = await availability(agent.stub, "A")
    b = await availability(agent.stub, "B")
    assert (a.reserved_soft, a.reserved_hard, a.available) == (0, 3, 7)
    assert (b.reserved_soft, b.reserved_hard, b.available) == (2, 0, 8)

    listed = await agent.stub.ListReservations(edge_pb2.ListReservationsRequest(state=EXPIRED))
    assert [r.reservation_id for r in listed.reservations] == [soft.reservation.reservation_id]


async def test_expiry_resumes_after_a_restart(db_path: Path) -> None:
    async with running_agent(db_path) as agent:
        await stocked_item(agent.stub, "A", 10)
        soft = await reserve(agent.stub, {"A": 6}, kind=SOFT, ttl_seconds=1)
        assert (await availability(agent.stub, "A")).available == 4

    async with running_agent(db_path) as agent:
        await wait_until_expired(agent.stub, soft.reservation.reservation_id)
        balance = await availability(agent.stub, "A")
        assert (balance.reserved_soft, balance.available) == (0, 10)
        events = await all_events(
            agent.stub, edge_pb2.ListEventsRequest(types=[common_pb2.EVENT_TYPE_EXPIRED])
        )
        assert [(e.quantity, e.actor) for e in events] == [(6, "system")]
