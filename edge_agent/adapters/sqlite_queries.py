"""Read-side queries on the ledger database (aiosqlite, a read-only connection).

WAL lets these run beside the writer without blocking it; they only ever see
committed batches, so a listed event or reservation is durable.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from edge_agent.adapters.sqlite_ledger import EVENT_COLUMNS, row_to_event
from edge_agent.domain.ledger import HeldLine, Reservation
from server.domain.model import LedgerEvent, ReservationKind, ReservationState


@dataclass(frozen=True, slots=True)
class EventFilter:
    sku: str = ""
    actor: str = ""
    since_ms: int | None = None
    until_ms: int | None = None
    after_sequence: int = 0
    types: tuple[int, ...] = ()


class LedgerQueries:
    """Owns one read-only aiosqlite connection."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._connection: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self._connection = await aiosqlite.connect(f"file:{self._path}?mode=ro", uri=True)
        await self._connection.execute("PRAGMA busy_timeout=5000")

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @property
    def _db(self) -> aiosqlite.Connection:
        assert self._connection is not None, "LedgerQueries.open() not awaited"
        return self._connection

    async def list_events(self, where: EventFilter, limit: int) -> list[LedgerEvent]:
        clauses = ["sequence > ?"]
        params: list[object] = [where.after_sequence]
        if where.sku:
            clauses.append("sku = ?")
            params.append(where.sku)
        if where.actor:
            clauses.append("actor = ?")
            params.append(where.actor)
        if where.since_ms is not None:
            clauses.append("recorded_at_ms >= ?")
            params.append(where.since_ms)
        if where.until_ms is not None:
            clauses.append("recorded_at_ms < ?")
            params.append(where.until_ms)
        if where.types:
            clauses.append(f"type IN ({', '.join('?' * len(where.types))})")
            params.extend(where.types)
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)} "
            "ORDER BY sequence LIMIT ?"
        )
        params.append(limit)
        async with self._db.execute(sql, params) as cursor:
            return [row_to_event(tuple(row)) for row in await cursor.fetchall()]

    async def get_reservation(self, reservation_id: str) -> Reservation | None:
        found = await self._reservations("WHERE reservation_id = ?", [reservation_id], 1)
        return found[0] if found else None

    async def list_reservations(
        self, state: int, sku: str, before_sequence: int | None, limit: int
    ) -> list[Reservation]:
        clauses: list[str] = []
        params: list[object] = []
        if state:
            clauses.append("state = ?")
            params.append(state)
        if sku:
            clauses.append(
                "reservation_id IN (SELECT reservation_id FROM reservation_lines WHERE sku = ?)"
            )
            params.append(sku)
        if before_sequence is not None:
            clauses.append("created_sequence < ?")
            params.append(before_sequence)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return await self._reservations(
            f"{where} ORDER BY created_sequence DESC", params, limit
        )

    async def _reservations(
        self, tail: str, params: list[object], limit: int
    ) -> list[Reservation]:
        async with self._db.execute(
            f"SELECT * FROM reservations {tail} LIMIT ?", [*params, limit]
        ) as cursor:
            rows = await cursor.fetchall()
        found: dict[str, Reservation] = {}
        for row in rows:
            (
                reservation_id, request_id, kind, state, channel, tier, reference,
                created_at_ms, expires_at_ms, actor, created_sequence, updated_sequence,
                hub_promise_id,
            ) = tuple(row)  # fmt: skip
            found[str(reservation_id)] = Reservation(
                reservation_id=str(reservation_id),
                request_id=str(request_id),
                kind=ReservationKind(kind),
                channel=str(channel),
                customer_tier=str(tier),
                reference=str(reference),
                created_at_ms=int(created_at_ms),
                expires_at_ms=int(expires_at_ms),
                actor=str(actor),
                created_sequence=int(created_sequence),
                state=ReservationState(state),
                updated_sequence=int(updated_sequence),
                hub_promise_id=str(hub_promise_id),
            )
        if found:
            marks = ", ".join("?" * len(found))
            async with self._db.execute(
                f"SELECT * FROM reservation_lines WHERE reservation_id IN ({marks})",
                list(found),
            ) as cursor:
                for reservation_id, sku, reserved, held, picked, released in (
                    await cursor.fetchall()
                ):
                    found[reservation_id].lines[sku] = HeldLine(
                        sku, reserved, held, picked, released
                    )
        return list(found.values())
