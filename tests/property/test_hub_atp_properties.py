"""Over random catalogues, views and demands the ATP engine keeps its promises.

Hypothesis draws sites with random balances (including inconsistent ones: a
share above on-hand, promises above the share, stale or unknown sites),
pools, future supply, and every kind of rule with random usage; then asks
`check` and `allocate` as a random demand. Whatever the input: ATP is never
negative; buckets never go down; no site offers more than its free hub share
or its `site_promisable`; `allocate` never gives a site more than that, never
more than asked, and keeps every cap of the demand's group and every other
group's protection; a network-wide cap bounds every total; and with no caps
or protections the answer is exactly the sum of what each site may promise.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from hub.domain.atp import LineAnswer, LineQuery, allocate, check, site_promisable
from hub.domain.catalog import (
    DAY_MS,
    Catalog,
    Demand,
    HubItem,
    Pool,
    Rule,
    RuleType,
    Site,
    Substitute,
    Supply,
    SupplyType,
)
from hub.domain.view import HubView

SITES = ("S0", "S1", "S2", "S3", "S4")
SKUS = ("A", "B")
CHANNELS = ("", "web", "store")
TIERS = ("", "gold", "silver")
POOLS = ("p1", "p2")
DAY0 = 19_700 * DAY_MS


@dataclass
class Network:
    catalog: Catalog
    view: HubView
    demand: Demand
    now_ms: int
    quantity: int
    exclude_sites: frozenset[str]

    def promisable(self, sku: str, site_id: str) -> int:
        units, _why = site_promisable(
            self.catalog, self.view, sku, site_id, self.demand, self.now_ms
        )
        return units

    def hub_free(self, sku: str, site_id: str) -> int:
        balance = self.view.balances.get((site_id, sku))
        return balance.hub_free if balance is not None else 0

    def pool_sites(self) -> list[str]:
        known: dict[str, object] = (
            {} if self.catalog.pools else {**self.catalog.sites, **self.view.sites}
        )
        return self.catalog.pool_sites(self.demand, known)

    def group_rules(self, sku: str, kind: RuleType) -> list[Rule]:
        """Rules of a kind over the whole network that bind this demand for `sku`."""
        in_group = kind is RuleType.CAP
        return [
            rule
            for rule in self.catalog.rules_for(sku)
            if rule.type is kind
            and not rule.site_id
            and not rule.pool_id
            and rule.in_group(self.demand.channel, self.demand.customer_tier) is in_group
        ]

    def remaining(self, rule: Rule) -> int:
        return max(0, rule.quantity - self.catalog.cap_used(rule, self.now_ms))


@st.composite
def networks(draw: st.DrawFn) -> Network:
    now_ms = DAY0 + draw(st.integers(0, 3 * DAY_MS))
    catalog = Catalog()
    catalog.channel_priorities = {"web": draw(st.integers(0, 5)), "store": draw(st.integers(0, 5))}
    catalog.tier_priorities = {"gold": draw(st.integers(0, 5)), "silver": draw(st.integers(0, 5))}
    for site_id in SITES:
        catalog.sites[site_id] = Site(site_id, lead_time_days=draw(st.integers(0, 4)))
    catalog.items["A"] = HubItem(
        "A",
        units=(("case", draw(st.integers(1, 12))),),
        order_multiple=draw(st.sampled_from([0, 1, 2, 6])),
        order_minimum=draw(st.integers(0, 10)),
        substitutes=(Substitute("B", draw(st.integers(1, 3)), draw(st.integers(1, 3))),),
    )
    catalog.items["B"] = HubItem("B", order_multiple=draw(st.sampled_from([0, 4])))
    if draw(st.booleans()):
        for pool_id in POOLS:
            members = draw(st.lists(st.sampled_from(SITES), unique=True, max_size=len(SITES)))
            channels = draw(st.lists(st.sampled_from(CHANNELS[1:]), unique=True, max_size=2))
            catalog.pools[pool_id] = Pool(pool_id, tuple(members), tuple(channels))

    view = HubView()
    for site_id in SITES:
        if draw(st.integers(0, 4)) == 0:
            continue  # the hub never heard from this site
        view.site(site_id).last_applied_ms = draw(
            st.sampled_from([0, now_ms - 1_000, now_ms - 120_000])
        )
        for sku in SKUS:
            if not draw(st.booleans()):
                continue
            balance = view.balance(site_id, sku)
            balance.sellable = draw(st.integers(0, 100))
            balance.hub_share = draw(st.integers(0, 60))
            balance.hub_reserved = draw(st.integers(0, 70))
            balance.local_share = draw(st.integers(0, 60))
            balance.reserved_soft = draw(st.integers(0, 20))
            balance.reserved_hard = draw(st.integers(0, 20))
            balance.in_flight = draw(st.integers(0, 10))

    rule_kinds = st.sampled_from(
        [RuleType.SAFETY_STOCK, RuleType.BUFFER, RuleType.CAP, RuleType.PROTECTION]
    )
    for index in range(draw(st.integers(0, 6))):
        kind = draw(rule_kinds)
        percent = (
            draw(st.sampled_from([0, 0, 10, 50]))
            if kind in (RuleType.SAFETY_STOCK, RuleType.BUFFER)
            else 0
        )
        scope = draw(st.sampled_from(["network", "network", "site", "pool"]))
        rule = Rule(
            f"r{index}",
            kind,
            sku=draw(st.sampled_from(("", *SKUS))),
            site_id=draw(st.sampled_from(SITES)) if scope == "site" else "",
            pool_id=draw(st.sampled_from(POOLS)) if scope == "pool" else "",
            quantity=draw(st.integers(0, 80)),
            percent=percent,
            min_priority=draw(st.integers(0, 10)),
            channel=draw(st.sampled_from(("", *CHANNELS))),
            customer_tier=draw(st.sampled_from(("", *TIERS))),
            period_days=draw(st.integers(1, 7)),
        )
        catalog.upsert_rule(rule)
        if kind in (RuleType.CAP, RuleType.PROTECTION) and rule.rule_id in catalog.rules:
            catalog.record_usage(rule, now_ms, draw(st.integers(0, 100)))

    supply_types = st.sampled_from(
        [SupplyType.IN_TRANSIT, SupplyType.PURCHASE_ORDER, SupplyType.SUPPLIER]
    )
    for index in range(draw(st.integers(0, 4))):
        catalog.upsert_supply(
            Supply(
                f"sup{index}",
                draw(supply_types),
                draw(st.sampled_from(SITES)),
                draw(st.sampled_from(SKUS)),
                draw(st.integers(1, 50)),
                eta_ms=now_ms + draw(st.integers(-DAY_MS, 20 * DAY_MS)),
                lead_time_days=draw(st.integers(0, 20)),
            )
        )

    channel, tier = draw(st.sampled_from(CHANNELS)), draw(st.sampled_from(TIERS))
    pool_id = draw(st.sampled_from(("", *POOLS))) if catalog.pools else ""
    return Network(
        catalog,
        view,
        catalog.demand(channel, tier, pool_id),
        now_ms,
        draw(st.integers(1, 200)),
        frozenset(draw(st.lists(st.sampled_from(SITES), unique=True, max_size=2))),
    )


def answers(network: Network, horizon_days: int, bucket_days: int) -> list[LineAnswer]:
    lines = [LineQuery(sku, sku, network.quantity) for sku in SKUS]
    return check(
        network.catalog,
        network.view,
        lines,
        network.demand,
        network.now_ms,
        horizon_days=horizon_days,
        bucket_days=bucket_days,
        include_substitutes=True,
    )


@settings(max_examples=400)
@given(networks(), st.integers(1, 20), st.integers(1, 7))
def test_check_is_never_negative_and_never_offers_more_than_a_site_has(
    network: Network, horizon_days: int, bucket_days: int
) -> None:
    bucket_days = min(bucket_days, horizon_days)
    for answer in answers(network, horizon_days, bucket_days):
        item = network.catalog.items[answer.sku]
        assert answer.available_now >= 0
        totals = [available for _until_ms, available in answer.buckets]
        assert totals == sorted(totals)
        assert totals[0] >= answer.available_now >= 0
        assert all(until > network.now_ms for until, _available in answer.buckets)
        # Limits only ever lower the plain sum of what each site may promise.
        pool_sites = network.pool_sites()
        plain = sum(network.promisable(answer.sku, site_id) for site_id in pool_sites)
        assert answer.available_now <= item.round_down(plain)
        if not any(
            rule.type in (RuleType.CAP, RuleType.PROTECTION)
            for rule in network.catalog.rules_for(answer.sku)
        ):
            assert answer.available_now == item.round_down(plain)
        for option in answer.sourcing:
            assert option.site_id in pool_sites
            assert 0 <= option.available_now <= network.hub_free(answer.sku, option.site_id)
            assert option.available_now <= network.promisable(answer.sku, option.site_id)
            assert option.available_now <= option.available_by_horizon
        for rule in network.group_rules(answer.sku, RuleType.CAP):
            assert max(totals) <= network.remaining(rule)
            assert all(o.available_by_horizon <= network.remaining(rule) for o in answer.sourcing)
        for substitute, available, covers in answer.substitutes:
            assert substitute == "B"
            assert 0 <= covers <= available * 3


@settings(max_examples=400)
@given(networks())
def test_allocate_stays_within_each_site_the_request_and_every_limit(network: Network) -> None:
    catalog, demand = network.catalog, network.demand
    allocations = allocate(
        catalog,
        network.view,
        "A",
        network.quantity,
        demand,
        network.now_ms,
        exclude_sites=network.exclude_sites,
    )
    sites = [site_id for site_id, _units in allocations]
    assert len(sites) == len(set(sites))
    assert not set(sites) & network.exclude_sites
    assert set(sites) <= set(network.pool_sites())
    total = sum(units for _site_id, units in allocations)
    assert total <= network.quantity
    for site_id, units in allocations:
        assert 0 < units <= network.promisable("A", site_id)
        assert units <= network.hub_free("A", site_id)
    for rule in network.group_rules("A", RuleType.CAP):
        assert total <= network.remaining(rule)
    candidates = [s for s in network.pool_sites() if s not in network.exclude_sites]
    supply = sum(network.promisable("A", site_id) for site_id in candidates)
    for rule in network.group_rules("A", RuleType.PROTECTION):
        assert total <= max(0, supply - network.remaining(rule))
    # Promisable now is what allocate can reach, limits aside.
    if not any(r.type in (RuleType.CAP, RuleType.PROTECTION) for r in catalog.rules_for("A")):
        assert total == min(network.quantity, supply)


@settings(max_examples=200)
@given(networks())
def test_one_network_wide_cap_is_exact(network: Network) -> None:
    catalog = network.catalog
    for rule in list(catalog.rules.values()):
        if rule.type in (RuleType.CAP, RuleType.PROTECTION):
            catalog.upsert_rule(Rule(rule.rule_id, rule.type))  # removed
    cap = Rule("cap", RuleType.CAP, quantity=network.quantity, channel=network.demand.channel)
    catalog.upsert_rule(cap)
    (answer, _b) = answers(network, 14, 1)
    plain = sum(network.promisable("A", site_id) for site_id in network.pool_sites())
    item = catalog.items["A"]
    assert answer.available_now == item.round_down(min(plain, network.quantity))
