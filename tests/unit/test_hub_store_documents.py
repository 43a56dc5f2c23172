"""Stored documents keep the shape `dataclasses.asdict` gave them (the hub reads
back documents written before the faster encoder replaced it)."""

from __future__ import annotations

import dataclasses
import json

from hub.adapters import promise_store
from hub.domain.catalog import HubItem, Pool, Rule, RuleType, Site, Substitute, Supply, SupplyType
from hub.domain.promises import Allocation, Promise, PromiseLine, PromiseState


def _as_before(value: object) -> str:
    return json.dumps(dataclasses.asdict(value), separators=(",", ":"), sort_keys=True)  # type: ignore[call-overload]


def test_every_stored_kind_encodes_as_asdict_did() -> None:
    values: list[object] = [
        Promise(
            "p1", "r1", PromiseState.CONFIRMED, "web", "gold", "order-7", "pool-a", 3, 10, 20,
            [PromiseLine("1", "A", 5, [Allocation("S1", "A", 3, 1), Allocation("S2", "A", 2)], 0)],
        ),
        HubItem("A", units=(("case", 12),), order_multiple=2, substitutes=(Substitute("B", 1, 2),)),
        Rule("r1", RuleType.CAP, sku="A", quantity=3, channel="web", period_days=7),
        Supply("po-1", SupplyType.PURCHASE_ORDER, "S1", "A", 40, eta_ms=123),
        Pool("pool-a", ("S1", "S2"), ("web",)),
        Site("S1"),
    ]  # fmt: skip
    for value in values:
        assert promise_store._document(value) == _as_before(value)
