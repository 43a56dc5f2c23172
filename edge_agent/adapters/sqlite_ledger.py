"""The edge ledger on SQLite: schema, one-transaction batch writes, recovery.

Events, the balance projection, reservations and idempotency records of a
whole group commit go into one transaction: either all of a batch is durable
or none of it is, so the projection can always be trusted after kill -9.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

from edge_agent.domain.ledger import EdgeLedger, HeldLine, Reservation
from server.domain.model import (
    AdjustmentReason,
    EventType,
    Item,
    LedgerEvent,
    Location,
    LocationId,
    ReservationKind,
    ReservationState,
    Sku,
    StockStatus,
    UnitConversion,
)

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
  sku TEXT PRIMARY KEY,
  description TEXT NOT NULL,
  base_unit TEXT NOT NULL,
  units_json TEXT NOT NULL,
  order_minimum INTEGER NOT NULL,
  order_multiple INTEGER NOT NULL,
  safety_stock INTEGER NOT NULL,
  updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS locations (
  location_id TEXT PRIMARY KEY,
  description TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
  sequence INTEGER PRIMARY KEY,
  hlc INTEGER NOT NULL,
  recorded_at_ms INTEGER NOT NULL,
  type INTEGER NOT NULL,
  sku TEXT NOT NULL,
  location_id TEXT NOT NULL,
  status INTEGER NOT NULL,
  quantity INTEGER NOT NULL,
  reservation_id TEXT NOT NULL,
  actor TEXT NOT NULL,
  reason TEXT NOT NULL,
  reason_code INTEGER NOT NULL,
  request_id TEXT NOT NULL,
  variance INTEGER NOT NULL,
  to_status INTEGER NOT NULL,
  to_location_id TEXT NOT NULL,
  counterparty_site_id TEXT NOT NULL,
  reservation_kind INTEGER NOT NULL,
  reference TEXT NOT NULL,
  channel TEXT NOT NULL,
  customer_tier TEXT NOT NULL,
  expires_at_ms INTEGER NOT NULL,
  local_share_delta INTEGER NOT NULL,
  hub_promise_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_sku ON events (sku, sequence);
CREATE TABLE IF NOT EXISTS balances (
  sku TEXT NOT NULL,
  location_id TEXT NOT NULL,
  status INTEGER NOT NULL,
  quantity INTEGER NOT NULL CHECK (quantity >= 0),
  PRIMARY KEY (sku, location_id, status)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shares (
  sku TEXT PRIMARY KEY,
  local_share INTEGER NOT NULL CHECK (local_share >= 0)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
  reservation_id TEXT PRIMARY KEY,
  request_id TEXT NOT NULL,
  kind INTEGER NOT NULL,
  state INTEGER NOT NULL,
  channel TEXT NOT NULL,
  customer_tier TEXT NOT NULL,
  reference TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  expires_at_ms INTEGER NOT NULL,
  actor TEXT NOT NULL,
  created_sequence INTEGER NOT NULL,
  updated_sequence INTEGER NOT NULL,
  hub_promise_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_by_state ON reservations (state, created_sequence);
CREATE TABLE IF NOT EXISTS reservation_lines (
  reservation_id TEXT NOT NULL REFERENCES reservations (reservation_id),
  sku TEXT NOT NULL,
  reserved INTEGER NOT NULL,
  held INTEGER NOT NULL CHECK (held >= 0),
  picked INTEGER NOT NULL,
  released INTEGER NOT NULL,
  PRIMARY KEY (reservation_id, sku)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reservation_lines_by_sku ON reservation_lines (sku, reservation_id);
CREATE TABLE IF NOT EXISTS requests (
  request_id TEXT PRIMARY KEY,
  rpc TEXT NOT NULL,
  fingerprint BLOB NOT NULL,
  response BLOB NOT NULL,
  created_at_ms INTEGER NOT NULL
);
"""

EVENT_COLUMNS = (
    "sequence, hlc, recorded_at_ms, type, sku, location_id, status, quantity, reservation_id, "
    "actor, reason, reason_code, request_id, variance, to_status, to_location_id, "
    "counterparty_site_id, reservation_kind, reference, channel, customer_tier, expires_at_ms, "
    "local_share_delta, hub_promise_id"
)
_EVENT_INSERT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ({', '.join('?' * 24)})"

EventRow = tuple[
    int, int, int, int, str, str, int, int, str, str, str, int, str, int, int, str, str, int,
    str, str, str, int, int, str,
]


class SiteMismatchError(RuntimeError):
    """The database belongs to another site; refusing protects both ledgers."""


@dataclass(slots=True)
class BatchRows:
    """Everything one group commit writes."""

    events: list[LedgerEvent] = field(default_factory=list)
    balances: list[tuple[str, str, int, int]] = field(default_factory=list)
    reservations: list[Reservation] = field(default_factory=list)
    requests: list[tuple[str, str, bytes, bytes, int]] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    locations: list[Location] = field(default_factory=list)
    shares: list[tuple[str, int]] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.events or self.balances or self.reservations or self.requests
            or self.items or self.locations or self.shares or self.meta
        )


def event_to_row(event: LedgerEvent) -> EventRow:
    return (
        event.sequence, event.hlc, event.recorded_at_ms, int(event.type), event.sku,
        event.location_id, int(event.status), event.quantity, event.reservation_id,
        event.actor, event.reason, int(event.reason_code), event.request_id, event.variance,
        int(event.to_status), event.to_location_id, event.counterparty_site_id,
        int(event.reservation_kind), event.reference, event.channel, event.customer_tier,
        event.expires_at_ms, event.local_share_delta, event.hub_promise_id,
    )  # fmt: skip


def row_to_event(row: tuple[object, ...] | sqlite3.Row) -> LedgerEvent:
    values = tuple(row)
    return LedgerEvent(
        sequence=int(values[0]),
        hlc=int(values[1]),
        recorded_at_ms=int(values[2]),
        type=EventType(values[3]),
        sku=str(values[4]),
        location_id=str(values[5]),
        status=StockStatus(values[6]),
        quantity=int(values[7]),
        reservation_id=str(values[8]),
        actor=str(values[9]),
        reason=str(values[10]),
        reason_code=AdjustmentReason(values[11]),
        request_id=str(values[12]),
        variance=int(values[13]),
        to_status=StockStatus(values[14]),
        to_location_id=str(values[15]),
        counterparty_site_id=str(values[16]),
        reservation_kind=ReservationKind(values[17]),
        reference=str(values[18]),
        channel=str(values[19]),
        customer_tier=str(values[20]),
        expires_at_ms=int(values[21]),
        local_share_delta=int(values[22]),
        hub_promise_id=str(values[23]),
    )


def initialise(connection: sqlite3.Connection, site_id: str) -> None:
    """Creates the schema and binds the file to a site (refuses another's file)."""
    connection.executescript(SCHEMA)
    row = connection.execute("SELECT value FROM meta WHERE key = 'site_id'").fetchone()
    if row is None:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO meta VALUES ('site_id', ?)", (site_id,))
        connection.execute(
            "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        connection.execute(
            "INSERT OR IGNORE INTO locations VALUES ('default', 'default location')"
        )
        connection.execute("COMMIT")
    elif row[0] != site_id:
        raise SiteMismatchError(f"database belongs to site {row[0]!r}, not {site_id!r}")


def read_meta(connection: sqlite3.Connection) -> dict[str, str]:
    return {key: value for key, value in connection.execute("SELECT key, value FROM meta")}


def load(connection: sqlite3.Connection, site_id: str) -> EdgeLedger:
    """Rebuilds in-memory state from the projection tables (not the whole log)."""
    meta = read_meta(connection)
    ledger = EdgeLedger(site_id, hub_mode=meta.get("hub_mode") == "1")
    for sku, description, base_unit, units_json, minimum, multiple, safety, updated in (
        connection.execute("SELECT * FROM items")
    ):
        ledger.items[sku] = Item(
            sku=Sku(sku),
            description=description,
            base_unit=base_unit,
            units=tuple(UnitConversion(u, f) for u, f in json.loads(units_json)),
            order_minimum=minimum,
            order_multiple=multiple,
            safety_stock=safety,
            updated_at_ms=updated,
        )
    for location_id, description in connection.execute("SELECT * FROM locations"):
        ledger.locations[location_id] = Location(LocationId(location_id), description)
    for sku, location_id, status, quantity in connection.execute("SELECT * FROM balances"):
        ledger._move(sku, location_id, StockStatus(status), quantity)
    for sku, local_share in connection.execute("SELECT sku, local_share FROM shares"):
        ledger.balances.setdefault(sku, ledger.balance(sku)).local_share = local_share
    open_rows = connection.execute(
        "SELECT * FROM reservations WHERE state = ? ORDER BY created_sequence",
        (int(ReservationState.OPEN),),
    ).fetchall()
    for row in open_rows:
        reservation = _row_to_reservation(row)
        ledger.reservations[reservation.reservation_id] = reservation
    if open_rows:
        for reservation_id, sku, reserved, held, picked, released in connection.execute(
            "SELECT l.* FROM reservation_lines l JOIN reservations r USING (reservation_id) "
            "WHERE r.state = ?",
            (int(ReservationState.OPEN),),
        ):
            reservation = ledger.reservations[reservation_id]
            reservation.lines[sku] = HeldLine(sku, reserved, held, picked, released)
    for reservation in ledger.reservations.values():
        if reservation.kind is ReservationKind.SOFT:
            ledger.expiry_heap.append((reservation.expires_at_ms, reservation.reservation_id))
        for line in reservation.lines.values():
            balance = ledger.balances.setdefault(line.sku, ledger.balance(line.sku))
            if reservation.kind is ReservationKind.HARD:
                balance.reserved_hard += line.held
            else:
                balance.reserved_soft += line.held
            if reservation.hub_promise_id:
                balance.reserved_hub += line.held
            if line.held:
                ledger.open_by_sku.setdefault(line.sku, set()).add(reservation.reservation_id)
    ledger.expiry_heap.sort()
    last = connection.execute("SELECT MAX(sequence), MAX(hlc) FROM events").fetchone()
    ledger.last_sequence = last[0] or 0
    ledger.clock.last = last[1] or 0
    ledger.drain_dirty()
    return ledger


def _row_to_reservation(row: tuple[object, ...]) -> Reservation:
    (
        reservation_id, request_id, kind, state, channel, tier, reference, created_at_ms,
        expires_at_ms, actor, created_sequence, updated_sequence, hub_promise_id,
    ) = row  # fmt: skip
    return Reservation(
        reservation_id=str(reservation_id),
        request_id=str(request_id),
        kind=ReservationKind(int(kind)),  # type: ignore[call-overload]
        channel=str(channel),
        customer_tier=str(tier),
        reference=str(reference),
        created_at_ms=int(created_at_ms),  # type: ignore[call-overload]
        expires_at_ms=int(expires_at_ms),  # type: ignore[call-overload]
        actor=str(actor),
        created_sequence=int(created_sequence),  # type: ignore[call-overload]
        state=ReservationState(int(state)),  # type: ignore[call-overload]
        updated_sequence=int(updated_sequence),  # type: ignore[call-overload]
        hub_promise_id=str(hub_promise_id),
    )


def write_batch(connection: sqlite3.Connection, rows: BatchRows) -> None:
    """Writes one group commit in one transaction; raises and rolls back on any error."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        if rows.items:
            connection.executemany(
                "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        item.sku, item.description, item.base_unit,
                        json.dumps([(u.unit, u.base_units_per_unit) for u in item.units]),
                        item.order_minimum, item.order_multiple, item.safety_stock,
                        item.updated_at_ms,
                    )
                    for item in rows.items
                ],
            )  # fmt: skip
        if rows.locations:
            connection.executemany(
                "INSERT OR REPLACE INTO locations VALUES (?, ?)",
                [(loc.location_id, loc.description) for loc in rows.locations],
            )
        if rows.events:
            connection.executemany(_EVENT_INSERT, [event_to_row(e) for e in rows.events])
        if rows.balances:
            connection.executemany(
                "INSERT INTO balances VALUES (?, ?, ?, ?) ON CONFLICT (sku, location_id, status) "
                "DO UPDATE SET quantity = excluded.quantity",
                rows.balances,
            )
        if rows.reservations:
            connection.executemany(
                f"INSERT OR REPLACE INTO reservations VALUES ({', '.join('?' * 13)})",
                [
                    (
                        r.reservation_id, r.request_id, int(r.kind), int(r.state), r.channel,
                        r.customer_tier, r.reference, r.created_at_ms, r.expires_at_ms, r.actor,
                        r.created_sequence, r.updated_sequence, r.hub_promise_id,
                    )
                    for r in rows.reservations
                ],
            )  # fmt: skip
            connection.executemany(
                "INSERT OR REPLACE INTO reservation_lines VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (r.reservation_id, line.sku, line.reserved, line.held, line.picked,
                     line.released)
                    for r in rows.reservations
                    for line in r.lines.values()
                ],
            )  # fmt: skip
        if rows.requests:
            connection.executemany("INSERT INTO requests VALUES (?, ?, ?, ?, ?)", rows.requests)
        if rows.shares:
            connection.executemany("INSERT OR REPLACE INTO shares VALUES (?, ?)", rows.shares)
        if rows.meta:
            connection.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", list(rows.meta.items())
            )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def request_ids(connection: sqlite3.Connection) -> list[str]:
    return [row[0] for row in connection.execute("SELECT request_id FROM requests")]


def prune_requests(connection: sqlite3.Connection, before_ms: int) -> int:
    """Forgets idempotency records older than the retention window."""
    cursor = connection.execute("DELETE FROM requests WHERE created_at_ms < ?", (before_ms,))
    return cursor.rowcount
