"""SQLite persistence of the hub's catalogue, promises and decisions.

Catalogue entries and promises are small documents kept as JSON, one row
each, rewritten whole when they change (in the same transaction as the view
rows they affect); the whole set is loaded into memory at start, which is
what ATP answers from. Decisions are an append-only table.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import Any

from hub.domain.catalog import (
    Catalog,
    HubItem,
    Pool,
    Rule,
    RuleType,
    Site,
    SiteType,
    Substitute,
    Supply,
    SupplyType,
)
from hub.domain.promises import (
    Allocation,
    Decision,
    DecisionAction,
    Promise,
    PromiseBook,
    PromiseLine,
    PromiseState,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS catalog (
  kind TEXT NOT NULL,
  key TEXT NOT NULL,
  document TEXT NOT NULL,
  PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS promises (
  promise_id TEXT PRIMARY KEY,
  state INTEGER NOT NULL,
  reference TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS promises_by_created ON promises (created_at_ms);
CREATE TABLE IF NOT EXISTS decisions (
  decision_id INTEGER PRIMARY KEY,
  promise_id TEXT NOT NULL,
  document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_promise ON decisions (promise_id, decision_id);
"""

CatalogRow = tuple[str, str, str]


def initialise(connection: sqlite3.Connection) -> None:
    connection.executescript(SCHEMA)


def _document(value: Any) -> str:
    return json.dumps(_plain(value), separators=(",", ":"), sort_keys=True)


_SCALARS = (str, int, float, bool, type(None))


def _plain(value: Any) -> Any:
    """What `dataclasses.asdict` gives, without its deep copies (every promise
    written costs one of these; asdict took 0.2 ms of it)."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def item_row(item: HubItem) -> CatalogRow:
    return ("item", item.sku, _document(item))


def site_row(site: Site) -> CatalogRow:
    return ("site", site.site_id, _document(site))


def pool_row(pool: Pool) -> CatalogRow:
    return ("pool", pool.pool_id, _document(pool))


def supply_row(supply: Supply) -> CatalogRow:
    return ("supply", supply.supply_id, _document(supply))


def rule_row(rule: Rule) -> CatalogRow:
    return ("rule", rule.rule_id, _document(rule))


def priorities_row(catalog: Catalog) -> CatalogRow:
    return (
        "priorities",
        "",
        json.dumps({"channels": catalog.channel_priorities, "tiers": catalog.tier_priorities}),
    )


def usage_row(catalog: Catalog) -> CatalogRow:
    return (
        "usage",
        "",
        json.dumps(
            [[rule_id, start, quantity] for (rule_id, start), quantity in catalog.usage.items()]
        ),
    )


def promise_row(promise: Promise) -> tuple[str, int, str, int, str]:
    return (
        promise.promise_id,
        int(promise.state),
        promise.reference,
        promise.created_at_ms,
        _document(promise),
    )


def decision_row(decision: Decision) -> tuple[int, str, str]:
    return (decision.decision_id, decision.promise_id, _document(decision))


def write(
    connection: sqlite3.Connection,
    catalog_rows: list[CatalogRow],
    deleted: list[tuple[str, str]],
    promises: list[tuple[str, int, str, int, str]],
    decisions: list[tuple[int, str, str]],
) -> None:
    """Runs inside the hub's batch transaction (the caller owns BEGIN/COMMIT)."""
    if catalog_rows:
        connection.executemany("INSERT OR REPLACE INTO catalog VALUES (?, ?, ?)", catalog_rows)
    if deleted:
        connection.executemany("DELETE FROM catalog WHERE kind = ? AND key = ?", deleted)
    if promises:
        connection.executemany("INSERT OR REPLACE INTO promises VALUES (?, ?, ?, ?, ?)", promises)
    if decisions:
        connection.executemany("INSERT INTO decisions VALUES (?, ?, ?)", decisions)


def load(connection: sqlite3.Connection) -> tuple[Catalog, PromiseBook]:
    catalog = Catalog()
    for kind, _key, text in connection.execute("SELECT kind, key, document FROM catalog"):
        data = json.loads(text)
        if kind == "item":
            catalog.items[data["sku"]] = item_from(data)
        elif kind == "site":
            catalog.sites[data["site_id"]] = Site(
                data["site_id"], SiteType(data["type"]), data["lead_time_days"], data["description"]
            )
        elif kind == "pool":
            catalog.pools[data["pool_id"]] = Pool(
                data["pool_id"], tuple(data["site_ids"]), tuple(data["channels"])
            )
        elif kind == "supply":
            catalog.upsert_supply(Supply(**{**data, "type": SupplyType(data["type"])}))
        elif kind == "rule":
            catalog.upsert_rule(Rule(**{**data, "type": RuleType(data["type"])}))
        elif kind == "priorities":
            catalog.channel_priorities = dict(data["channels"])
            catalog.tier_priorities = dict(data["tiers"])
        elif kind == "usage":
            catalog.usage = {(rule_id, start): quantity for rule_id, start, quantity in data}
    book = PromiseBook()
    for (text,) in connection.execute("SELECT document FROM promises"):
        promise = promise_from(json.loads(text))
        book.promises[promise.promise_id] = promise
    row = connection.execute("SELECT MAX(decision_id) FROM decisions").fetchone()
    book.next_decision_id = (row[0] or 0) + 1
    book.index()
    return catalog, book


def item_from(data: dict[str, Any]) -> HubItem:
    return HubItem(
        sku=data["sku"],
        description=data["description"],
        base_unit=data["base_unit"],
        units=tuple((unit, factor) for unit, factor in data["units"]),
        order_minimum=data["order_minimum"],
        order_multiple=data["order_multiple"],
        substitutes=tuple(Substitute(**s) for s in data["substitutes"]),
    )


def promise_from(data: dict[str, Any]) -> Promise:
    return Promise(
        **{
            **data,
            "state": PromiseState(data["state"]),
            "lines": [
                PromiseLine(
                    **{
                        **line,
                        "allocations": [Allocation(**a) for a in line["allocations"]],
                    }
                )
                for line in data["lines"]
            ],
        }
    )


def decision_from(data: dict[str, Any]) -> Decision:
    return Decision(**{**data, "action": DecisionAction(data["action"])})


def list_decisions(
    connection: sqlite3.Connection, promise_id: str, after: int, limit: int
) -> list[Decision]:
    if promise_id:
        rows = connection.execute(
            "SELECT document FROM decisions WHERE promise_id = ? AND decision_id > ? "
            "ORDER BY decision_id LIMIT ?",
            (promise_id, after, limit),
        )
    else:
        rows = connection.execute(
            "SELECT document FROM decisions WHERE decision_id > ? ORDER BY decision_id LIMIT ?",
            (after, limit),
        )
    return [decision_from(json.loads(text)) for (text,) in rows]
