"""The hub's master data and allocation policy (pure values).

Everything ATP needs besides the per-site balances (hub/domain/view.py):
items with units, order rules and substitutes; sites and pools; future
supply; allocation rules (safety stock, buffers, caps, protections); demand
priorities; and how much of each cap or protection the current period has
used. Indexes are kept so that an ATP answer touches only the rows of the
SKUs it is about (never a scan of the catalogue).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

DAY_MS = 86_400_000


class SiteType(IntEnum):
    UNSPECIFIED = 0
    DC = 1
    STORE = 2
    CROSS_DOCK = 3
    SUPPLIER = 4


class SupplyType(IntEnum):
    UNSPECIFIED = 0
    IN_TRANSIT = 1
    PURCHASE_ORDER = 2
    SUPPLIER = 3


class RuleType(IntEnum):
    UNSPECIFIED = 0
    SAFETY_STOCK = 1
    BUFFER = 2
    CAP = 3
    PROTECTION = 4


class ExplanationKind(IntEnum):
    UNSPECIFIED = 0
    ON_HAND = 1
    IN_TRANSIT = 2
    PURCHASE_ORDER = 3
    SUPPLIER = 4
    SAFETY_STOCK = 5
    BUFFER = 6
    CAP = 7
    PROTECTION = 8
    OBTAINABLE = 9
    ORDER_MULTIPLE = 10
    STALE = 11


@dataclass(frozen=True, slots=True)
class Substitute:
    """`numerator / denominator` units of `sku` replace one unit of the item."""

    sku: str
    numerator: int = 1
    denominator: int = 1

    def needed_for(self, quantity: int) -> int:
        """Units of the substitute that replace `quantity` of the item (rounded up)."""
        return -(-quantity * self.numerator // self.denominator)

    def covers(self, substitute_units: int) -> int:
        """Units of the item that `substitute_units` of the substitute replace."""
        return substitute_units * self.denominator // self.numerator


@dataclass(frozen=True, slots=True)
class HubItem:
    sku: str
    description: str = ""
    base_unit: str = "each"
    units: tuple[tuple[str, int], ...] = ()
    order_minimum: int = 0
    order_multiple: int = 0
    substitutes: tuple[Substitute, ...] = ()

    def base_units_per(self, unit: str) -> int | None:
        if unit in ("", self.base_unit):
            return 1
        for name, factor in self.units:
            if name == unit:
                return factor
        return None

    def round_down(self, quantity: int) -> int:
        """Largest promisable quantity not above `quantity` (order multiple and minimum)."""
        if self.order_multiple > 1:
            quantity -= quantity % self.order_multiple
        return quantity if quantity >= self.order_minimum else 0


@dataclass(frozen=True, slots=True)
class Site:
    site_id: str
    type: SiteType = SiteType.DC
    lead_time_days: int = 0
    description: str = ""


@dataclass(frozen=True, slots=True)
class Pool:
    pool_id: str
    site_ids: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()

    def serves(self, channel: str) -> bool:
        return not self.channels or channel in self.channels


@dataclass(frozen=True, slots=True)
class Supply:
    supply_id: str
    type: SupplyType
    site_id: str
    sku: str
    quantity: int
    eta_ms: int = 0
    lead_time_days: int = 0

    def available_from_ms(self, now_ms: int) -> int:
        """When these units can be promised as arrived."""
        if self.type is SupplyType.SUPPLIER:
            return now_ms + self.lead_time_days * DAY_MS
        return self.eta_ms


@dataclass(frozen=True, slots=True)
class Rule:
    rule_id: str
    type: RuleType
    sku: str = ""
    site_id: str = ""
    pool_id: str = ""
    quantity: int = 0
    percent: int = 0
    min_priority: int = 0
    channel: str = ""
    customer_tier: str = ""
    period_days: int = 1

    def applies_to(self, sku: str, site_id: str, pool_id: str) -> bool:
        return (
            (not self.sku or self.sku == sku)
            and (not self.site_id or self.site_id == site_id)
            and (not self.pool_id or self.pool_id == pool_id)
        )

    def in_group(self, channel: str, customer_tier: str) -> bool:
        """Whether a demand belongs to this cap's or protection's demand group."""
        return (not self.channel or self.channel == channel) and (
            not self.customer_tier or self.customer_tier == customer_tier
        )

    def period_start_ms(self, now_ms: int) -> int:
        length = max(1, self.period_days) * DAY_MS
        return now_ms - now_ms % length


@dataclass(frozen=True, slots=True)
class Demand:
    """Who asks: what they may consume depends on it."""

    channel: str = ""
    customer_tier: str = ""
    pool_id: str = ""
    priority: int = 0


_GENERATIONS = itertools.count(1)


@dataclass(slots=True)
class Catalog:
    items: dict[str, HubItem] = field(default_factory=dict)
    sites: dict[str, Site] = field(default_factory=dict)
    pools: dict[str, Pool] = field(default_factory=dict)
    supplies: dict[str, Supply] = field(default_factory=dict)
    rules: dict[str, Rule] = field(default_factory=dict)
    channel_priorities: dict[str, int] = field(default_factory=dict)
    tier_priorities: dict[str, int] = field(default_factory=dict)
    # (rule_id, period_start_ms) -> units promised under a cap or protection.
    usage: dict[tuple[str, int], int] = field(default_factory=dict)
    # Indexes, maintained by the upsert methods.
    supplies_by_sku: dict[str, dict[str, Supply]] = field(default_factory=dict)
    rules_by_sku: dict[str, dict[str, Rule]] = field(default_factory=dict)
    # Renewed by every change (ATP answers computed before it are not reused);
    # drawn from one counter, so a reloaded catalogue never repeats a value.
    generation: int = field(default_factory=lambda: next(_GENERATIONS))

    def changed(self) -> None:
        """Call after changing any field directly (the upsert methods call it)."""
        self.generation = next(_GENERATIONS)

    def priority(self, channel: str, customer_tier: str) -> int:
        return self.channel_priorities.get(channel, 0) + self.tier_priorities.get(customer_tier, 0)

    def demand(self, channel: str, customer_tier: str, pool_id: str = "") -> Demand:
        return Demand(channel, customer_tier, pool_id, self.priority(channel, customer_tier))

    def upsert_supply(self, supply: Supply) -> None:
        self.generation = next(_GENERATIONS)
        old = self.supplies.pop(supply.supply_id, None)
        if old is not None:
            self.supplies_by_sku.get(old.sku, {}).pop(old.supply_id, None)
        if supply.quantity > 0:
            self.supplies[supply.supply_id] = supply
            self.supplies_by_sku.setdefault(supply.sku, {})[supply.supply_id] = supply

    def upsert_rule(self, rule: Rule) -> None:
        self.generation = next(_GENERATIONS)
        old = self.rules.pop(rule.rule_id, None)
        if old is not None:
            self.rules_by_sku.get(old.sku, {}).pop(old.rule_id, None)
        if rule.quantity > 0 or rule.percent > 0:
            self.rules[rule.rule_id] = rule
            self.rules_by_sku.setdefault(rule.sku, {})[rule.rule_id] = rule

    def rules_for(self, sku: str) -> list[Rule]:
        """Rules naming this SKU plus rules for every SKU (sku == "")."""
        return [*self.rules_by_sku.get(sku, {}).values(), *self.rules_by_sku.get("", {}).values()]

    def pool_sites(self, demand: Demand, known_sites: Mapping[str, object]) -> list[str]:
        """Sites that may serve the demand, in preference order.

        A named pool gives its sites in its order; otherwise every pool serving
        the channel, in pool id order; with no pools at all, every known site.
        """
        if demand.pool_id:
            pool = self.pools.get(demand.pool_id)
            return list(pool.site_ids) if pool is not None else []
        serving = [self.pools[pool_id] for pool_id in sorted(self.pools)]
        serving = [pool for pool in serving if pool.serves(demand.channel)]
        if not self.pools:
            return sorted(known_sites)
        ordered: dict[str, None] = {}
        for pool in serving:
            ordered.update(dict.fromkeys(pool.site_ids))
        return list(ordered)

    def cap_used(self, rule: Rule, now_ms: int) -> int:
        return self.usage.get((rule.rule_id, rule.period_start_ms(now_ms)), 0)

    def record_usage(self, rule: Rule, now_ms: int, quantity: int) -> None:
        self.generation = next(_GENERATIONS)
        key = (rule.rule_id, rule.period_start_ms(now_ms))
        self.usage[key] = max(0, self.usage.get(key, 0) + quantity)
