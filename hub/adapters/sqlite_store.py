"""The hub's SQLite database: the view of every site and the command outbox.

One ingest batch (many sync messages from many sites) is one transaction: the
per-site high-water marks move in the same commit as the balances they
describe, so a crash between commit and ack only causes redelivery, which the
marks turn into no-ops.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from hub.adapters import promise_store
from hub.domain.view import Command, HubView, SiteBalance, SiteState

SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
  site_id TEXT PRIMARY KEY,
  applied_sequence INTEGER NOT NULL,
  last_event_ms INTEGER NOT NULL,
  last_applied_ms INTEGER NOT NULL,
  last_lag_ms INTEGER NOT NULL,
  known_sequence INTEGER NOT NULL,
  checksums_matched INTEGER NOT NULL,
  drift_detected INTEGER NOT NULL,
  repairing INTEGER NOT NULL,
  next_command_sequence INTEGER NOT NULL,
  gaps INTEGER NOT NULL,
  replay_until INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS site_balances (
  site_id TEXT NOT NULL,
  sku TEXT NOT NULL,
  sellable INTEGER NOT NULL,
  total INTEGER NOT NULL,
  reserved_soft INTEGER NOT NULL,
  reserved_hard INTEGER NOT NULL,
  local_share INTEGER NOT NULL,
  hub_share INTEGER NOT NULL,
  in_flight INTEGER NOT NULL,
  shortfall INTEGER NOT NULL,
  as_of_sequence INTEGER NOT NULL,
  hub_reserved INTEGER NOT NULL,
  reserved_hub INTEGER NOT NULL,
  PRIMARY KEY (site_id, sku)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS grants_in_flight (
  site_id TEXT NOT NULL,
  command_sequence INTEGER NOT NULL,
  sku TEXT NOT NULL,
  quantity INTEGER NOT NULL,
  PRIMARY KEY (site_id, command_sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS commands (
  site_id TEXT NOT NULL,
  command_sequence INTEGER NOT NULL,
  payload BLOB NOT NULL,
  published INTEGER NOT NULL DEFAULT 0,
  created_at_ms INTEGER NOT NULL,
  PRIMARY KEY (site_id, command_sequence)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS commands_unpublished ON commands (published, site_id, command_sequence);
CREATE TABLE IF NOT EXISTS requests (
  request_id TEXT PRIMARY KEY,
  rpc TEXT NOT NULL,
  fingerprint BLOB NOT NULL,
  response BLOB NOT NULL,
  created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS drift_log (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  site_id TEXT NOT NULL,
  as_of_sequence INTEGER NOT NULL,
  detected_at_ms INTEGER NOT NULL,
  outcome TEXT NOT NULL
);
"""

_SITE_FIELDS = (
    "site_id", "applied_sequence", "last_event_ms", "last_applied_ms", "last_lag_ms",
    "known_sequence", "checksums_matched", "drift_detected", "repairing",
    "next_command_sequence", "gaps", "replay_until",
)  # fmt: skip
_BALANCE_FIELDS = (
    "site_id", "sku", "sellable", "total", "reserved_soft", "reserved_hard", "local_share",
    "hub_share", "in_flight", "shortfall", "as_of_sequence", "hub_reserved", "reserved_hub",
)  # fmt: skip


@dataclass(slots=True)
class HubRows:
    sites: list[SiteState] = field(default_factory=list)
    balances: list[SiteBalance] = field(default_factory=list)
    commands: list[tuple[Command, bytes, int]] = field(default_factory=list)
    grants_added: list[tuple[str, int, str, int]] = field(default_factory=list)
    grants_settled: list[tuple[str, int]] = field(default_factory=list)
    requests: list[tuple[str, str, bytes, bytes, int]] = field(default_factory=list)
    drift: list[tuple[str, int, int, str]] = field(default_factory=list)
    catalog: list[promise_store.CatalogRow] = field(default_factory=list)
    catalog_deleted: list[tuple[str, str]] = field(default_factory=list)
    promises: list[tuple[str, int, str, int, str]] = field(default_factory=list)
    decisions: list[tuple[int, str, str]] = field(default_factory=list)


def initialise(connection: sqlite3.Connection) -> None:
    connection.executescript(SCHEMA)
    promise_store.initialise(connection)


def load(connection: sqlite3.Connection) -> HubView:
    view = HubView()
    for row in connection.execute(f"SELECT {', '.join(_SITE_FIELDS)} FROM sites"):
        state = SiteState(*row)
        state.repairing = bool(state.repairing)
        view.sites[state.site_id] = state
    for row in connection.execute(f"SELECT {', '.join(_BALANCE_FIELDS)} FROM site_balances"):
        balance = SiteBalance(*row)
        view.balances[(balance.site_id, balance.sku)] = balance
    view.index()
    for site_id, sequence, sku, quantity in connection.execute(
        "SELECT site_id, command_sequence, sku, quantity FROM grants_in_flight"
    ):
        view.grants_in_flight[(site_id, sequence)] = (sku, quantity)
    view.drain()
    return view


def write(connection: sqlite3.Connection, rows: HubRows) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        if rows.sites:
            connection.executemany(
                f"INSERT OR REPLACE INTO sites VALUES ({', '.join('?' * len(_SITE_FIELDS))})",
                [tuple(getattr(s, name) for name in _SITE_FIELDS) for s in rows.sites],
            )
        if rows.balances:
            connection.executemany(
                "INSERT OR REPLACE INTO site_balances VALUES "
                f"({', '.join('?' * len(_BALANCE_FIELDS))})",
                [tuple(getattr(b, name) for name in _BALANCE_FIELDS) for b in rows.balances],
            )
        if rows.commands:
            connection.executemany(
                "INSERT INTO commands (site_id, command_sequence, payload, published, "
                "created_at_ms) VALUES (?, ?, ?, 0, ?)",
                [(cmd.site_id, cmd.command_sequence, payload, now) for cmd, payload, now in
                 rows.commands],
            )  # fmt: skip
        if rows.grants_added:
            connection.executemany(
                "INSERT OR REPLACE INTO grants_in_flight VALUES (?, ?, ?, ?)", rows.grants_added
            )
        if rows.grants_settled:
            connection.executemany(
                "DELETE FROM grants_in_flight WHERE site_id = ? AND command_sequence = ?",
                rows.grants_settled,
            )
        if rows.requests:
            connection.executemany("INSERT INTO requests VALUES (?, ?, ?, ?, ?)", rows.requests)
        if rows.drift:
            connection.executemany(
                "INSERT INTO drift_log (site_id, as_of_sequence, detected_at_ms, outcome) "
                "VALUES (?, ?, ?, ?)",
                rows.drift,
            )
        promise_store.write(
            connection, rows.catalog, rows.catalog_deleted, rows.promises, rows.decisions
        )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def unpublished_commands(
    connection: sqlite3.Connection, limit: int
) -> list[tuple[str, int, bytes]]:
    return [
        (str(site), int(sequence), bytes(payload))
        for site, sequence, payload in connection.execute(
            "SELECT site_id, command_sequence, payload FROM commands WHERE published = 0 "
            "ORDER BY site_id, command_sequence LIMIT ?",
            (limit,),
        )
    ]


def mark_published(connection: sqlite3.Connection, keys: list[tuple[str, int]]) -> None:
    connection.execute("BEGIN IMMEDIATE")
    connection.executemany(
        "UPDATE commands SET published = 1 WHERE site_id = ? AND command_sequence = ?", keys
    )
    connection.execute("COMMIT")
