"""After kill -9 mid-load, every acknowledged reservation survives and nothing else appears."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio

from edge_agent.adapters.sqlite_ledger import EVENT_COLUMNS, row_to_event
from edge_agent.domain.ledger import replay
from server.domain.model import Item, ReservationKind, ReservationState, Sku, UnitConversion
from stockd.v1 import edge_pb2
from tests.e2e.helpers import (
    SITE_ID,
    AgentProcess,
    Stub,
    all_reservations,
    channel_options,
    decode_error,
    make_stub,
    new_id,
    stocked_item,
    wait_for,
)

# A runs out early (so some requests are refused before the kill); the others
# keep the writer busy until it dies.
STOCK = {"A": 20, "B": 400, "C": 400, "D": 400}
CALLERS = 16
CYCLES = 2
ACKNOWLEDGED_BEFORE_KILL = 120
REFUSED_BEFORE_KILL = 5
LOAD_TIMEOUT_SECONDS = 30.0


@dataclass
class Ledger:
    """What the callers know: acknowledged, refused, and unknown outcomes."""

    requests: dict[str, edge_pb2.ReserveRequest] = field(default_factory=dict)
    acknowledged: dict[str, str] = field(default_factory=dict)  # request_id -> reservation_id
    refused: set[str] = field(default_factory=set)
    refusal_reasons: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    acknowledged_this_cycle: int = 0
    refused_this_cycle: int = 0


async def caller(stub: Stub, index: int, book: Ledger, stop: asyncio.Event) -> None:
    skus = list(STOCK)
    turn = index
    while not stop.is_set():
        sku = skus[turn % len(skus)]
        turn += 1
        request = edge_pb2.ReserveRequest(
            request_id=new_id(),
            lines=[edge_pb2.ReserveLine(sku=sku, quantity=1)],
            reference=f"caller-{index}",
        )
        book.requests[request.request_id] = request
        book.unknown.add(request.request_id)  # until an answer arrives
        try:
            response = await stub.Reserve(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            details = decode_error(error)
            if details.code == grpc.StatusCode.FAILED_PRECONDITION:
                book.refusal_reasons.add(details.reason)
                book.unknown.discard(request.request_id)
                book.refused.add(request.request_id)
                book.refused_this_cycle += 1
                continue
            # The agent died under us: this one's outcome stays unknown.
            return
        book.unknown.discard(request.request_id)
        book.acknowledged[request.request_id] = response.reservation.reservation_id
        book.acknowledged_this_cycle += 1


async def load_then_kill(child: AgentProcess, book: Ledger) -> None:
    """Runs the callers against the child and SIGKILLs it while they are busy."""
    book.acknowledged_this_cycle = book.refused_this_cycle = 0
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{child.port}", options=channel_options())
        for _ in range(4)
    ]
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(caller(make_stub(channels[i % 4]), i, book, stop))
        for i in range(CALLERS)
    ]
    try:
        await wait_for(
            lambda: (
                book.acknowledged_this_cycle >= ACKNOWLEDGED_BEFORE_KILL
                and book.refused_this_cycle >= REFUSED_BEFORE_KILL
            ),
            LOAD_TIMEOUT_SECONDS,
            message="load to build up",
        )
        assert not any(task.done() for task in tasks), "a caller stopped before the kill"
        await child.kill()
    finally:
        stop.set()
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), LOAD_TIMEOUT_SECONDS)
        finally:
            for channel in channels:
                await channel.close(None)


async def check_recovered(stub: Stub, book: Ledger) -> None:
    present = {r.request_id: r for r in await all_reservations(stub)}

    assert set(book.acknowledged) <= set(present), "an acknowledged reservation was lost"
    assert not (book.refused & set(present)), "a refused reservation appeared"
    assert set(present) - set(book.acknowledged) <= book.unknown, "a reservation from nowhere"

    for request_id, reservation_id in book.acknowledged.items():
        got = await stub.GetReservation(
            edge_pb2.GetReservationRequest(reservation_id=reservation_id)
        )
        assert got.reservation.request_id == request_id
        assert got.reservation == present[request_id]
    # Every committed request (acknowledged or not) replays its stored answer.
    for request_id, reservation in present.items():
        again = await stub.Reserve(book.requests[request_id])
        assert again.reservation.reservation_id == reservation.reservation_id

    per_sku = {sku: 0 for sku in STOCK}
    for reservation in present.values():
        assert [(line.sku, line.quantity_held) for line in reservation.lines] == [
            (book.requests[reservation.request_id].lines[0].sku, 1)
        ]
        per_sku[reservation.lines[0].sku] += 1
    balances = await stub.GetAvailability(edge_pb2.GetAvailabilityRequest(skus=list(STOCK)))
    for balance in balances.availability:
        reserved = balance.reserved_soft + balance.reserved_hard
        assert reserved == per_sku[balance.sku], balance
        assert balance.on_hand_sellable == STOCK[balance.sku]
        assert balance.available == STOCK[balance.sku] - reserved
    total = sum(b.reserved_soft + b.reserved_hard for b in balances.availability)
    assert total == len(present) >= len(book.acknowledged)


def inspect_database(db_path: Path) -> None:
    """Integrity of the file, and the projection equal to a replay of the log."""
    connection = sqlite3.connect(db_path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        first, last, count = connection.execute(
            "SELECT MIN(sequence), MAX(sequence), COUNT(*) FROM events"
        ).fetchone()
        assert (first, last) == (1, count), "the event log has gaps"

        items = [
            Item(
                sku=Sku(sku),
                description=description,
                base_unit=base_unit,
                units=tuple(UnitConversion(u, f) for u, f in json.loads(units_json)),
                order_minimum=minimum,
                order_multiple=multiple,
                safety_stock=safety,
                updated_at_ms=updated,
            )
            for sku, description, base_unit, units_json, minimum, multiple, safety, updated in (
                connection.execute("SELECT * FROM items")
            )
        ]
        events = [
            row_to_event(row)
            for row in connection.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY sequence")
        ]
        rebuilt = replay(SITE_ID, items, events)
        assert rebuilt.last_sequence == count

        on_hand: dict[str, dict[tuple[str, int], int]] = {}
        for sku, location_id, status, quantity in connection.execute(
            "SELECT sku, location_id, status, quantity FROM balances WHERE quantity > 0"
        ):
            on_hand.setdefault(sku, {})[(location_id, status)] = quantity
        reserved: dict[tuple[str, int], int] = {}
        held: dict[tuple[str, str], int] = {}
        for reservation_id, kind, sku, quantity in connection.execute(
            "SELECT r.reservation_id, r.kind, l.sku, l.held FROM reservation_lines l "
            "JOIN reservations r USING (reservation_id) WHERE r.state = ?",
            (int(ReservationState.OPEN),),
        ):
            reserved[(sku, kind)] = reserved.get((sku, kind), 0) + quantity
            held[(reservation_id, sku)] = quantity
    finally:
        connection.close()

    assert set(on_hand) == {sku for sku, b in rebuilt.balances.items() if b.on_hand}
    for sku, balance in rebuilt.balances.items():
        assert {(loc, int(status)): q for (loc, status), q in balance.on_hand.items()} == (
            on_hand.get(sku, {})
        ), sku
        assert balance.reserved_soft == reserved.get((sku, int(ReservationKind.SOFT)), 0), sku
        assert balance.reserved_hard == reserved.get((sku, int(ReservationKind.HARD)), 0), sku
    assert held == {
        (reservation.reservation_id, line.sku): line.held
        for reservation in rebuilt.reservations.values()
        for line in reservation.lines.values()
    }


async def test_kill_9_under_reservation_load_loses_nothing_acknowledged(
    child_agent: AgentProcess, db_path: Path
) -> None:
    book = Ledger()
    await child_agent.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{child_agent.port}", options=channel_options())
    try:
        for sku, quantity in STOCK.items():
            await stocked_item(make_stub(channel), sku, quantity)
    finally:
        await channel.close(None)

    for cycle in range(CYCLES):
        await load_then_kill(child_agent, book)
        assert book.unknown, f"cycle {cycle}: no request was in flight at the kill"
        assert book.refusal_reasons == {"ERROR_REASON_INSUFFICIENT_STOCK"}
        await child_agent.start()
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{child_agent.port}", options=channel_options()
        )
        try:
            await check_recovered(make_stub(channel), book)
        finally:
            await channel.close(None)

    assert await child_agent.terminate() == 0
    await asyncio.to_thread(inspect_database, db_path)
