"""The hub's pure ATP engine answers right and explains itself.

Each test builds a small catalogue and hub view by hand and checks one part
of the model: time-phased supply, safety stock, buffers, caps and
protections per period, order minimums and multiples, units of measure,
substitutes, staleness, sourcing order, the explanations, bad input (with
field paths), and how `allocate` sources a quantity.
"""

from __future__ import annotations

import pytest

from hub.domain.atp import (
    HORIZON_DAYS_DEFAULT,
    Explanation,
    LineAnswer,
    LineQuery,
    SiteOption,
    allocate,
    check,
    site_promisable,
    to_base,
    usage_rules,
)
from hub.domain.catalog import (
    DAY_MS,
    Catalog,
    Demand,
    ExplanationKind,
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
from server.domain import limits
from server.domain.errors import InvalidArgument, UnknownSku

HOUR_MS = 3_600_000
DAY0 = 19_700 * DAY_MS  # a UTC midnight
NOW = DAY0 + 10 * HOUR_MS
WEB = Demand(channel="web", customer_tier="silver", priority=0)


def hub(*sites: tuple[str, int]) -> tuple[Catalog, HubView]:
    """A catalogue with item A and the given (site, lead time) pairs, and an empty view."""
    catalog = Catalog()
    catalog.items["A"] = HubItem("A", units=(("case", 12),))
    for site_id, lead_time_days in sites:
        catalog.sites[site_id] = Site(site_id, lead_time_days=lead_time_days)
    return catalog, HubView()


def stock(
    view: HubView,
    site_id: str,
    sku: str = "A",
    *,
    hub_share: int = 0,
    hub_reserved: int = 0,
    local_share: int = 0,
    sellable: int | None = None,
    reserved_soft: int = 0,
    applied_ms: int = NOW - 1_000,
) -> None:
    """A site's balance; sellable defaults to exactly both shares (nothing kept outside)."""
    balance = view.balance(site_id, sku)
    balance.hub_share = hub_share
    balance.hub_reserved = hub_reserved
    balance.local_share = local_share
    balance.reserved_soft = reserved_soft
    balance.sellable = hub_share + local_share if sellable is None else sellable
    balance.total = balance.sellable
    view.site(site_id).last_applied_ms = applied_ms


def one(
    catalog: Catalog,
    view: HubView,
    quantity: int = 1,
    demand: Demand = WEB,
    *,
    sku: str = "A",
    unit: str = "",
    now_ms: int = NOW,
    horizon_days: int = 0,
    bucket_days: int = 0,
    include_substitutes: bool = False,
    stale_after_ms: int = 60_000,
    sourcing_max: int = 10,
) -> LineAnswer:
    answers = check(
        catalog,
        view,
        [LineQuery("l1", sku, quantity, unit)],
        demand,
        now_ms,
        horizon_days=horizon_days,
        bucket_days=bucket_days,
        include_substitutes=include_substitutes,
        stale_after_ms=stale_after_ms,
        sourcing_max=sourcing_max,
    )
    assert len(answers) == 1
    return answers[0]


def terms(answer: LineAnswer, kind: ExplanationKind) -> list[Explanation]:
    return [term for term in answer.explanations if term.kind is kind]


def term(answer: LineAnswer, kind: ExplanationKind) -> Explanation:
    found = terms(answer, kind)
    assert len(found) == 1, answer.explanations
    return found[0]


def totals(answer: LineAnswer) -> list[int]:
    return [available for _until_ms, available in answer.buckets]


# ----- on-hand and time-phased supply ------------------------------------------------


def test_on_hand_is_the_free_hub_share_in_every_bucket() -> None:
    catalog, view = hub(("S1", 0))
    stock(view, "S1", hub_share=30, hub_reserved=5, local_share=40)
    answer = one(catalog, view, 10)
    assert answer.available_now == 25
    assert answer.requested == 10
    assert totals(answer) == [25] * HORIZON_DAYS_DEFAULT
    assert [until for until, _ in answer.buckets] == [
        DAY0 + k * DAY_MS for k in range(1, HORIZON_DAYS_DEFAULT + 1)
    ]
    assert term(answer, ExplanationKind.ON_HAND) == Explanation(
        ExplanationKind.ON_HAND, "S1", 25, "free hub share"
    )
    assert answer.sourcing == (SiteOption("S1", 25, 25, 0),)
    assert not answer.stale


def test_purchase_orders_in_transit_and_supplier_stock_are_phased_by_date() -> None:
    catalog, view = hub(("S1", 0), ("S2", 1), ("V1", 0))
    stock(view, "S1", hub_share=10)
    supplies = [
        Supply(
            "po-1", SupplyType.PURCHASE_ORDER, "S1", "A", 40, eta_ms=DAY0 + 2 * DAY_MS + HOUR_MS
        ),
        Supply("ship-7", SupplyType.IN_TRANSIT, "S2", "A", 5, eta_ms=DAY0 + DAY_MS + 8 * HOUR_MS),
        # Supplier stock counts after its lead time: NOW + 5 days is in bucket 6.
        Supply("vendor", SupplyType.SUPPLIER, "V1", "A", 100, lead_time_days=5),
        # Past the horizon: not counted.
        Supply("po-late", SupplyType.PURCHASE_ORDER, "S1", "A", 1000, eta_ms=DAY0 + 30 * DAY_MS),
        # Overdue: expected in the first bucket, never counted as on hand.
        Supply("po-due", SupplyType.PURCHASE_ORDER, "S2", "A", 3, eta_ms=DAY0 - DAY_MS),
        # Another SKU's supply is not this line's.
        Supply("po-b", SupplyType.PURCHASE_ORDER, "S1", "B", 7, eta_ms=NOW),
    ]
    for supply in supplies:
        catalog.upsert_supply(supply)
    answer = one(catalog, view, 10)
    assert answer.available_now == 10
    assert totals(answer) == [13, 18, 58, 58, 58] + [158] * 9
    purchase_orders = [
        (t.site_id, t.quantity, t.detail) for t in terms(answer, ExplanationKind.PURCHASE_ORDER)
    ]
    assert purchase_orders == [
        ("S1", 40, "po-1: available from 2023-12-11 01:00 UTC"),
        ("S2", 3, "po-due: available from 2023-12-09 10:00 UTC"),
    ]
    assert term(answer, ExplanationKind.IN_TRANSIT) == Explanation(
        ExplanationKind.IN_TRANSIT,
        "S2",
        5,
        term(answer, ExplanationKind.IN_TRANSIT).detail,
    )
    assert term(answer, ExplanationKind.IN_TRANSIT).detail.startswith("ship-7: available from")
    supplier = term(answer, ExplanationKind.SUPPLIER)
    assert (supplier.site_id, supplier.quantity) == ("V1", 100)
    by_site = {option.site_id: option for option in answer.sourcing}
    assert by_site["S1"] == SiteOption("S1", 10, 50, 0)
    assert by_site["V1"] == SiteOption("V1", 0, 100, 0)


def test_bucket_width_and_horizon() -> None:
    catalog, view = hub(("S1", 0))
    stock(view, "S1", hub_share=5)
    catalog.upsert_supply(
        Supply("po", SupplyType.PURCHASE_ORDER, "S1", "A", 7, eta_ms=DAY0 + 8 * DAY_MS)
    )
    weekly = one(catalog, view, horizon_days=14, bucket_days=7)
    assert weekly.buckets == ((DAY0 + 7 * DAY_MS, 5), (DAY0 + 14 * DAY_MS, 12))
    ragged = one(catalog, view, horizon_days=10, bucket_days=3)
    assert [until for until, _ in ragged.buckets] == [
        DAY0 + days * DAY_MS for days in (3, 6, 9, 10)
    ]
    assert totals(ragged) == [5, 5, 12, 12]
    short = one(catalog, view, horizon_days=5)
    assert totals(short) == [5] * 5
    assert short.sourcing == (SiteOption("S1", 5, 5, 0),)


# ----- safety stock --------------------------------------------------------------------


def test_fixed_safety_stock_comes_off_the_hub_share_unless_kept_outside_the_shares() -> None:
    catalog, view = hub(("S1", 0), ("S2", 0))
    catalog.upsert_rule(Rule("ss", RuleType.SAFETY_STOCK, sku="A", quantity=10))
    stock(view, "S1", hub_share=60, local_share=40)  # nothing outside the shares
    stock(view, "S2", hub_share=60, local_share=30, sellable=96)  # the edge keeps 6 outside
    answer = one(catalog, view)
    assert answer.available_now == 50 + 56
    safety = term(answer, ExplanationKind.SAFETY_STOCK)
    assert (safety.site_id, safety.quantity) == ("", 14)
    assert "rule ss" in safety.detail
    assert "6 of it already kept outside the shares" in safety.detail
    assert "2 sites" in safety.detail
    promisable, why = site_promisable(catalog, view, "A", "S2", WEB, NOW)
    assert promisable == 56
    assert [(t.kind, t.site_id, t.quantity) for t in why] == [
        (ExplanationKind.ON_HAND, "S2", 60),
        (ExplanationKind.SAFETY_STOCK, "S2", 4),
    ]


def test_percent_safety_stock_rounds_up_and_the_most_specific_rule_wins() -> None:
    catalog, view = hub(("S1", 0), ("S2", 0))
    catalog.upsert_rule(Rule("everywhere", RuleType.SAFETY_STOCK, percent=5))
    catalog.upsert_rule(Rule("s2", RuleType.SAFETY_STOCK, sku="A", site_id="S2", quantity=3))
    stock(view, "S1", hub_share=51, local_share=50)  # 5% of 101 is 5.05: keep 6
    stock(view, "S2", hub_share=50, local_share=50)
    assert site_promisable(catalog, view, "A", "S1", WEB, NOW)[0] == 45
    assert site_promisable(catalog, view, "A", "S2", WEB, NOW)[0] == 47
    answer = one(catalog, view)
    assert answer.available_now == 92
    by_rule = {t.detail.split(":")[0]: t for t in terms(answer, ExplanationKind.SAFETY_STOCK)}
    assert by_rule["rule s2"].quantity == 3
    assert by_rule["rule s2"].site_id == "S2"
    assert by_rule["rule everywhere"].quantity == 6
    assert "5% of sellable" in by_rule["rule everywhere"].detail


def test_safety_stock_not_covered_by_on_hand_comes_off_future_supply() -> None:
    catalog, view = hub(("S1", 0))
    catalog.upsert_rule(Rule("ss", RuleType.SAFETY_STOCK, quantity=10))
    stock(view, "S1", hub_share=4)
    catalog.upsert_supply(
        Supply("po", SupplyType.PURCHASE_ORDER, "S1", "A", 20, eta_ms=DAY0 + 2 * DAY_MS)
    )
    answer = one(catalog, view, horizon_days=4)
    assert answer.available_now == 0
    assert totals(answer) == [0, 14, 14, 14]
    assert answer.sourcing == (SiteOption("S1", 0, 14, 0),)


def test_a_pool_rule_applies_at_each_site_of_the_pool() -> None:
    catalog, view = hub(("S1", 0), ("S2", 0))
    catalog.pools["east"] = Pool("east", ("S1",))
    catalog.pools["all"] = Pool("all", ("S1", "S2"))
    catalog.upsert_rule(Rule("east-ss", RuleType.SAFETY_STOCK, pool_id="east", quantity=5))
    stock(view, "S1", hub_share=20)
    stock(view, "S2", hub_share=20)
    assert one(catalog, view).available_now == 35
    assert site_promisable(catalog, view, "A", "S2", WEB, NOW)[0] == 20


# ----- buffers -------------------------------------------------------------------------


def test_a_buffer_is_kept_from_lower_priorities_and_open_to_higher_ones() -> None:
    catalog, view = hub(("S1", 0))
    catalog.channel_priorities["b2b"] = 10
    catalog.tier_priorities["gold"] = 5
    catalog.upsert_rule(Rule("vip", RuleType.BUFFER, sku="A", quantity=20, min_priority=15))
    stock(view, "S1", hub_share=50)
    low = one(catalog, view, demand=catalog.demand("web", "gold"))
    assert low.available_now == 30
    buffer = term(low, ExplanationKind.BUFFER)
    assert (buffer.site_id, buffer.quantity) == ("S1", 20)
    assert "priority 15 and above" in buffer.detail
    assert "this demand has 5" in buffer.detail
    high = one(catalog, view, demand=catalog.demand("b2b", "gold"))
    assert high.available_now == 50
    assert not terms(high, ExplanationKind.BUFFER)
    assert site_promisable(catalog, view, "A", "S1", catalog.demand("web", ""), NOW)[0] == 30


def test_buffers_add_up_and_can_be_a_percentage() -> None:
    catalog, view = hub(("S1", 0))
    catalog.upsert_rule(Rule("b1", RuleType.BUFFER, quantity=5, min_priority=1))
    catalog.upsert_rule(Rule("b2", RuleType.BUFFER, percent=10, min_priority=1))
    stock(view, "S1", hub_share=40, local_share=60)
    assert one(catalog, view).available_now == 40 - 5 - 10


# ----- caps and protections per period -----------------------------------------------


def test_a_cap_limits_the_total_for_its_group_and_resets_next_period() -> None:
    catalog, view = hub(("S1", 0), ("S2", 0))
    cap = Rule("web-cap", RuleType.CAP, sku="A", quantity=30, channel="web", period_days=1)
    catalog.upsert_rule(cap)
    catalog.record_usage(cap, NOW, 12)
    stock(view, "S1", hub_share=25)
    stock(view, "S2", hub_share=25)
    catalog.upsert_supply(
        Supply("po", SupplyType.PURCHASE_ORDER, "S1", "A", 100, eta_ms=DAY0 + 3 * DAY_MS)
    )
    answer = one(catalog, view)
    assert answer.available_now == 18
    assert max(totals(answer)) == 18
    capped = term(answer, ExplanationKind.CAP)
    assert (capped.site_id, capped.quantity) == ("", 18)
    assert "12 used this period" in capped.detail
    assert "limits 50 to 18" in capped.detail
    assert all(option.available_now <= 18 for option in answer.sourcing)
    assert all(option.available_by_horizon <= 18 for option in answer.sourcing)
    # The next day is a new period: the cap is whole again.
    tomorrow = one(catalog, view, now_ms=NOW + DAY_MS)
    assert tomorrow.available_now == 30
    assert term(tomorrow, ExplanationKind.CAP).quantity == 30
    # Another group is not capped.
    store = one(catalog, view, demand=Demand(channel="store"))
    assert store.available_now == 50
    assert not terms(store, ExplanationKind.CAP)


def test_a_weekly_cap_keeps_its_usage_all_week() -> None:
    catalog, view = hub(("S1", 0))
    cap = Rule("weekly", RuleType.CAP, quantity=40, channel="web", period_days=7)
    catalog.upsert_rule(cap)
    stock(view, "S1", hub_share=100)
    start = cap.period_start_ms(NOW)
    catalog.record_usage(cap, start, 35)
    assert one(catalog, view, now_ms=start + 6 * DAY_MS).available_now == 5
    assert one(catalog, view, now_ms=start + 7 * DAY_MS).available_now == 40


def test_a_site_cap_limits_only_that_site() -> None:
    catalog, view = hub(("S1", 0), ("S2", 0))
    catalog.upsert_rule(Rule("s1-cap", RuleType.CAP, site_id="S1", quantity=4, channel="web"))
    stock(view, "S1", hub_share=20)
    stock(view, "S2", hub_share=20)
    answer = one(catalog, view)
    assert answer.available_now == 24
    assert term(answer, ExplanationKind.CAP).site_id == "S1"
    assert {o.site_id: o.available_now for o in answer.sourcing} == {"S1": 4, "S2": 20}


def test_protections_of_another_group_are_kept_and_its_own_group_may_use_them() -> None:
    catalog, view = hub(("S1", 0), ("S2", 0))
    gold = Rule("gold-min", RuleType.PROTECTION, sku="A", quantity=15, customer_tier="gold")
    catalog.upsert_rule(gold)
    catalog.record_usage(gold, NOW, 5)
    stock(view, "S1", hub_share=20)
    stock(view, "S2", hub_share=20)
    silver = one(catalog, view, demand=Demand(channel="web", customer_tier="silver"))
    assert silver.available_now == 40 - 10
    kept = term(silver, ExplanationKind.PROTECTION)
    assert (kept.site_id, kept.quantity) == ("", 10)
    assert "kept for any channel/gold" in kept.detail
    assert "5 used this period" in kept.detail
    # One site alone may still give all it has: the other keeps the protection.
    assert {o.site_id: o.available_now for o in silver.sourcing} == {"S1": 20, "S2": 20}
    own = one(catalog, view, demand=Demand(channel="web", customer_tier="gold"))
    assert own.available_now == 40
    assert not terms(own, ExplanationKind.PROTECTION)
    # Next period the whole protection is needed again.
    assert one(catalog, view, now_ms=NOW + DAY_MS).available_now == 25


def test_a_site_protection_is_a_deduction_at_that_site() -> None:
    catalog, view = hub(("S1", 0), ("S2", 0))
    catalog.upsert_rule(
        Rule("s1-b2b", RuleType.PROTECTION, site_id="S1", quantity=8, channel="b2b")
    )
    stock(view, "S1", hub_share=20)
    stock(view, "S2", hub_share=20)
    promisable, why = site_promisable(catalog, view, "A", "S1", WEB, NOW)
    assert promisable == 12
    assert why[-1].kind is ExplanationKind.PROTECTION
    assert (why[-1].site_id, why[-1].quantity) == ("S1", 8)
    answer = one(catalog, view)
    assert answer.available_now == 32
    assert term(answer, ExplanationKind.PROTECTION).site_id == "S1"


def test_usage_rules_name_the_caps_and_protections_a_promise_draws_on() -> None:
    catalog, _view = hub(("S1", 0))
    catalog.pools["east"] = Pool("east", ("S1",))
    catalog.upsert_rule(Rule("web-cap", RuleType.CAP, quantity=5, channel="web"))
    catalog.upsert_rule(Rule("east-cap", RuleType.CAP, pool_id="east", quantity=5, channel="web"))
    catalog.upsert_rule(Rule("silver-min", RuleType.PROTECTION, quantity=5, customer_tier="silver"))
    catalog.upsert_rule(Rule("b2b-cap", RuleType.CAP, quantity=5, channel="b2b"))
    catalog.upsert_rule(Rule("ss", RuleType.SAFETY_STOCK, quantity=5))
    names = {rule.rule_id for rule in usage_rules(catalog, "A", "S1", WEB)}
    assert names == {"web-cap", "east-cap", "silver-min"}
    assert {rule.rule_id for rule in usage_rules(catalog, "A", "S9", WEB)} == {
        "web-cap",
        "silver-min",
    }


# ----- order rules and units ----------------------------------------------------------------


def test_totals_round_down_to_the_order_multiple_and_minimum() -> None:
    catalog, view = hub(("S1", 0), ("S2", 0))
    catalog.items["A"] = HubItem("A", order_multiple=6, order_minimum=12)
    stock(view, "S1", hub_share=15)
    stock(view, "S2", hub_share=10)
    answer = one(catalog, view, 6)
    assert answer.available_now == 24
    rounded = term(answer, ExplanationKind.ORDER_MULTIPLE)
    assert (rounded.site_id, rounded.quantity) == ("", 1)
    assert "rounded 25 down to 24" in rounded.detail
    assert totals(answer) == [24] * HORIZON_DAYS_DEFAULT
    # Each site's option is a whole number of multiples.
    assert {o.site_id: o.available_now for o in answer.sourcing} == {"S1": 12, "S2": 6}
    view.by_sku["A"]["S1"].hub_share = 1
    below_minimum = one(catalog, view, 6)
    assert below_minimum.available_now == 0
    assert term(below_minimum, ExplanationKind.ORDER_MULTIPLE).quantity == 11


def test_units_of_measure_convert_to_base_units() -> None:
    catalog, view = hub(("S1", 0))
    stock(view, "S1", hub_share=30)
    answer = one(catalog, view, 2, unit="case")
    assert answer.requested == 24
    assert answer.available_now == 30
    assert answer.sourcing[0].available_now == 30
    assert one(catalog, view, 3, unit="each").requested == 3
    item, base = to_base(catalog, view, LineQuery("x", "A", 5, "case"))
    assert (item.sku, base) == ("A", 60)


def test_a_line_for_a_sku_only_the_view_knows_uses_base_units() -> None:
    catalog, view = hub(("S1", 0))
    stock(view, "S1", "LOOSE", hub_share=7)
    answer = one(catalog, view, 2, sku="LOOSE")
    assert (answer.sku, answer.available_now) == ("LOOSE", 7)
    item, base = to_base(catalog, view, LineQuery("x", "LOOSE", 2), "lines[0]")
    assert item == HubItem("LOOSE")
    assert base == 2


# ----- substitutes ----------------------------------------------------------------------------


def test_substitutes_report_what_they_cover_of_the_requested_sku() -> None:
    catalog, view = hub(("S1", 0), ("S2", 0))
    catalog.items["A"] = HubItem(
        "A", substitutes=(Substitute("B", 2, 1), Substitute("C"), Substitute("NOWHERE"))
    )
    catalog.items["B"] = HubItem("B")
    stock(view, "S1", hub_share=3)
    stock(view, "S1", "B", hub_share=5)
    stock(view, "S2", "B", hub_share=4)
    stock(view, "S2", "C", hub_share=2)
    answer = one(catalog, view, 10, include_substitutes=True)
    assert answer.available_now == 3
    # Two B replace one A: 9 B cover 4 A.
    assert answer.substitutes == (("B", 9, 4), ("C", 2, 2), ("NOWHERE", 0, 0))
    assert one(catalog, view, 10).substitutes == ()


# ----- staleness -----------------------------------------------------------------------------


def test_an_answer_counting_a_stale_site_is_flagged() -> None:
    catalog, view = hub(("S1", 0), ("S2", 0), ("S3", 0))
    stock(view, "S1", hub_share=10, applied_ms=NOW - 5_000)
    stock(view, "S2", hub_share=10, applied_ms=NOW - 70_000)
    fresh_only = one(catalog, view, stale_after_ms=100_000)
    assert not fresh_only.stale
    assert not terms(fresh_only, ExplanationKind.STALE)
    answer = one(catalog, view, stale_after_ms=60_000)
    assert answer.stale
    stale = term(answer, ExplanationKind.STALE)
    assert (stale.site_id, stale.quantity) == ("S2", 10)
    assert "70000 ms old (bound 60000 ms)" in stale.detail
    # A site the hub never applied data from is stale too.
    stock(view, "S3", hub_share=4, applied_ms=0)
    never = one(catalog, view, stale_after_ms=100_000)
    assert never.stale
    assert term(never, ExplanationKind.STALE).site_id == "S3"
    assert "no data" in term(never, ExplanationKind.STALE).detail


def test_a_stale_site_that_counts_nothing_does_not_flag_the_answer() -> None:
    catalog, view = hub(("S1", 0), ("S2", 0))
    stock(view, "S1", hub_share=10)
    stock(view, "S2", hub_share=0, local_share=5, applied_ms=NOW - 10 * 60_000)
    answer = one(catalog, view)
    assert not answer.stale
    assert term(answer, ExplanationKind.OBTAINABLE).site_id == "S2"


# ----- explanations ------------------------------------------------------------------------


def test_every_kind_of_explanation_appears_where_it_applies() -> None:
    catalog, view = hub(("S1", 0), ("S2", 2), ("V1", 0))
    catalog.items["A"] = HubItem("A", order_multiple=4)
    for rule in (
        Rule("ss", RuleType.SAFETY_STOCK, quantity=3),
        Rule("vip", RuleType.BUFFER, quantity=2, min_priority=9),
        Rule("cap", RuleType.CAP, quantity=1000, channel="web"),
        Rule("gold", RuleType.PROTECTION, quantity=5, customer_tier="gold"),
    ):
        catalog.upsert_rule(rule)
    for supply in (
        Supply("it", SupplyType.IN_TRANSIT, "S1", "A", 6, eta_ms=NOW + DAY_MS),
        Supply("po", SupplyType.PURCHASE_ORDER, "S2", "A", 8, eta_ms=NOW + 2 * DAY_MS),
        Supply("vendor", SupplyType.SUPPLIER, "V1", "A", 50, lead_time_days=3),
    ):
        catalog.upsert_supply(supply)
    stock(view, "S1", hub_share=30, local_share=12, reserved_soft=2)
    stock(view, "S2", hub_share=11, applied_ms=NOW - 120_000)
    answer = one(catalog, view, 20)
    kinds = {term.kind for term in answer.explanations}
    assert kinds == set(ExplanationKind) - {ExplanationKind.UNSPECIFIED}
    # Per site: 30 - 3 - 2 = 25 and 11 - 3 - 2 = 6; the gold protection keeps 5;
    # 26 rounds down to the multiple of 4.
    assert answer.available_now == 24
    assert term(answer, ExplanationKind.ON_HAND) == Explanation(
        ExplanationKind.ON_HAND, "", 41, "free hub share at 2 of 3 sites"
    )
    assert term(answer, ExplanationKind.OBTAINABLE).quantity == 10
    # Global rules apply at the supplier site too (its supply counts).
    assert term(answer, ExplanationKind.SAFETY_STOCK).quantity == 9
    assert "3 sites" in term(answer, ExplanationKind.SAFETY_STOCK).detail
    assert term(answer, ExplanationKind.BUFFER).quantity == 6
    assert term(answer, ExplanationKind.PROTECTION).quantity == 5
    assert term(answer, ExplanationKind.CAP).quantity == 1000
    assert term(answer, ExplanationKind.ORDER_MULTIPLE).quantity == 2
    assert term(answer, ExplanationKind.STALE).site_id == "S2"
    # Order: on hand, supply, per-site rules, limits, obtainable, staleness, rounding.
    order = [term.kind for term in answer.explanations]
    assert order.index(ExplanationKind.ON_HAND) == 0
    assert order.index(ExplanationKind.SAFETY_STOCK) > order.index(ExplanationKind.SUPPLIER)
    assert order[-1] is ExplanationKind.ORDER_MULTIPLE


def test_site_promisable_explains_one_site_in_full() -> None:
    catalog, view = hub(("S1", 0))
    catalog.upsert_rule(Rule("ss", RuleType.SAFETY_STOCK, quantity=5))
    catalog.upsert_rule(Rule("vip", RuleType.BUFFER, quantity=100, min_priority=3))
    stock(view, "S1", hub_share=50, hub_reserved=10)
    promisable, why = site_promisable(catalog, view, "A", "S1", WEB, NOW)
    assert promisable == 0  # never negative
    assert [(t.kind, t.quantity) for t in why] == [
        (ExplanationKind.ON_HAND, 40),
        (ExplanationKind.SAFETY_STOCK, 5),
        (ExplanationKind.BUFFER, 100),
    ]
    assert why[0].detail == "hub share 50, 10 of it promised"
    assert site_promisable(catalog, view, "A", "S9", WEB, NOW)[0] == 0


# ----- sourcing -------------------------------------------------------------------------------


def sourcing_network() -> tuple[Catalog, HubView]:
    catalog, view = hub(("S1", 3), ("S2", 1), ("S3", 2), ("S4", 0))
    for site_id, units in (("S1", 50), ("S2", 20), ("S3", 30), ("S4", 5)):
        stock(view, site_id, hub_share=units)
    return catalog, view


def test_sites_that_fill_the_line_come_first_by_lead_time_then_by_available() -> None:
    catalog, view = sourcing_network()
    fills = one(catalog, view, 20)
    assert [o.site_id for o in fills.sourcing] == ["S2", "S3", "S1", "S4"]
    assert fills.sourcing[0] == SiteOption("S2", 20, 20, 1)
    none_fill = one(catalog, view, 60)
    assert [o.site_id for o in none_fill.sourcing] == ["S1", "S3", "S2", "S4"]
    assert [o.site_id for o in one(catalog, view, 20, sourcing_max=2).sourcing] == ["S2", "S3"]


def test_a_named_pool_limits_the_sites_and_pools_serve_their_channels() -> None:
    catalog, view = sourcing_network()
    catalog.pools["web"] = Pool("web", ("S4", "S2"), ("web",))
    catalog.pools["stores"] = Pool("stores", ("S1", "S3"), ("store",))
    assert one(catalog, view).available_now == 25
    assert one(catalog, view, demand=Demand(channel="store")).available_now == 80
    assert one(catalog, view, demand=Demand(pool_id="stores")).available_now == 80
    assert one(catalog, view, demand=Demand(pool_id="missing")).available_now == 0


# ----- bad input -----------------------------------------------------------------------------


def violations(error: InvalidArgument) -> list[tuple[str, str]]:
    return [(v.field, v.reason) for v in error.violations]


def test_every_bad_field_of_every_line_is_named_before_any_answer() -> None:
    catalog, view = hub(("S1", 0))
    stock(view, "S1", hub_share=10)
    lines = [
        LineQuery("ok", "A", 1),
        LineQuery("zero", "A", 0),
        LineQuery("unit", "A", 1, "pallet"),
        LineQuery("neg", "A", -3, "crate"),
        LineQuery("big", "A", limits.QUANTITY_MAX // 12 + 1, "case"),
        LineQuery("huge", "A", limits.QUANTITY_MAX + 1),
        LineQuery("nosku", "", 1),
        LineQuery("x" * (limits.ID_LENGTH_MAX + 1), "A", 1),
    ]
    with pytest.raises(InvalidArgument) as caught:
        check(catalog, view, lines, WEB, NOW, horizon_days=91, bucket_days=-1)
    assert violations(caught.value) == [
        ("horizon_days", "ERROR_REASON_INVALID_FIELD"),
        ("bucket_days", "ERROR_REASON_INVALID_FIELD"),
        ("lines[1].quantity", "ERROR_REASON_INVALID_QUANTITY"),
        ("lines[2].unit", "ERROR_REASON_UNKNOWN_UNIT"),
        ("lines[3].quantity", "ERROR_REASON_INVALID_QUANTITY"),
        ("lines[3].unit", "ERROR_REASON_UNKNOWN_UNIT"),
        ("lines[4].quantity", "ERROR_REASON_INVALID_QUANTITY"),
        ("lines[5].quantity", "ERROR_REASON_INVALID_QUANTITY"),
        ("lines[6].sku", "ERROR_REASON_INVALID_FIELD"),
        ("lines[7].line_id", "ERROR_REASON_INVALID_FIELD"),
    ]
    assert caught.value.reason_name == "ERROR_REASON_INVALID_FIELD"


@pytest.mark.parametrize(
    ("count", "reason"),
    [
        (0, "ERROR_REASON_INVALID_FIELD"),
        (limits.LINES_PER_REQUEST_MAX + 1, "ERROR_REASON_TOO_MANY_LINES"),
    ],
)
def test_line_count_limits(count: int, reason: str) -> None:
    catalog, view = hub(("S1", 0))
    with pytest.raises(InvalidArgument) as caught:
        check(catalog, view, [LineQuery(str(i), "A", 1) for i in range(count)], WEB, NOW)
    assert violations(caught.value) == [("lines", reason)]
    assert caught.value.reason_name == reason


def test_the_most_lines_allowed_are_answered() -> None:
    catalog, view = hub(("S1", 0))
    stock(view, "S1", hub_share=3)
    lines = [LineQuery(str(i), "A", 1) for i in range(limits.LINES_PER_REQUEST_MAX)]
    answers = check(catalog, view, lines, WEB, NOW)
    assert [a.line_id for a in answers] == [str(i) for i in range(len(lines))]
    assert {a.available_now for a in answers} == {3}


@pytest.mark.parametrize(
    ("horizon_days", "bucket_days", "field"),
    [
        (-1, 0, "horizon_days"),
        (91, 0, "horizon_days"),
        (10, 11, "bucket_days"),
        (0, 15, "bucket_days"),
        (5, -2, "bucket_days"),
    ],
)
def test_bad_windows_are_named(horizon_days: int, bucket_days: int, field: str) -> None:
    catalog, view = hub(("S1", 0))
    with pytest.raises(InvalidArgument) as caught:
        check(
            catalog,
            view,
            [LineQuery("l", "A", 1)],
            WEB,
            NOW,
            horizon_days=horizon_days,
            bucket_days=bucket_days,
        )
    assert [v.field for v in caught.value.violations] == [field]


def test_window_defaults_and_limits() -> None:
    catalog, view = hub(("S1", 0))
    assert len(one(catalog, view, horizon_days=0, bucket_days=0).buckets) == 14
    assert len(one(catalog, view, horizon_days=90).buckets) == 90
    assert len(one(catalog, view, horizon_days=90, bucket_days=90).buckets) == 1


def test_an_unknown_sku_is_not_found_after_field_checks() -> None:
    catalog, view = hub(("S1", 0))
    lines = [LineQuery("a", "A", 1), LineQuery("b", "GHOST", 1)]
    with pytest.raises(UnknownSku) as caught:
        check(catalog, view, lines, WEB, NOW)
    assert caught.value.metadata == {"sku": "GHOST", "field": "lines[1].sku"}
    assert caught.value.code == "NOT_FOUND"
    # A bad field elsewhere is reported first, as INVALID_ARGUMENT.
    with pytest.raises(InvalidArgument):
        check(catalog, view, [*lines, LineQuery("c", "A", 0)], WEB, NOW)


def test_to_base_names_fields_under_its_path() -> None:
    catalog, view = hub()
    with pytest.raises(InvalidArgument) as caught:
        to_base(catalog, view, LineQuery("x", "A", 0, "pallet"), "lines[2]")
    assert violations(caught.value) == [
        ("lines[2].quantity", "ERROR_REASON_INVALID_QUANTITY"),
        ("lines[2].unit", "ERROR_REASON_UNKNOWN_UNIT"),
    ]
    with pytest.raises(InvalidArgument) as bare:
        to_base(catalog, view, LineQuery("x", "A", 1, "pallet"))
    assert violations(bare.value) == [("unit", "ERROR_REASON_UNKNOWN_UNIT")]
    with pytest.raises(UnknownSku):
        to_base(catalog, view, LineQuery("x", "GHOST", 1), "lines[0]")


# ----- allocate --------------------------------------------------------------------------------


def test_allocate_prefers_one_site_with_the_shortest_lead_time() -> None:
    catalog, view = sourcing_network()
    assert allocate(catalog, view, "A", 20, WEB, NOW) == [("S2", 20)]
    assert allocate(catalog, view, "A", 25, WEB, NOW) == [("S3", 25)]
    assert allocate(catalog, view, "A", 5, WEB, NOW) == [("S4", 5)]
    assert allocate(catalog, view, "A", 20, WEB, NOW, exclude_sites=frozenset({"S2"})) == [
        ("S3", 20)
    ]


def test_allocate_splits_by_most_available_and_returns_what_it_can() -> None:
    catalog, view = sourcing_network()
    assert allocate(catalog, view, "A", 70, WEB, NOW) == [("S1", 50), ("S3", 20)]
    assert allocate(catalog, view, "A", 200, WEB, NOW) == [
        ("S1", 50),
        ("S3", 30),
        ("S2", 20),
        ("S4", 5),
    ]
    assert allocate(catalog, view, "A", 0, WEB, NOW) == []
    assert allocate(catalog, view, "NOTHING", 3, WEB, NOW) == []


def test_allocate_respects_caps_protections_and_per_site_deductions() -> None:
    catalog, view = sourcing_network()
    catalog.upsert_rule(Rule("ss", RuleType.SAFETY_STOCK, site_id="S1", quantity=10))
    catalog.upsert_rule(Rule("cap", RuleType.CAP, quantity=60, channel="web"))
    assert allocate(catalog, view, "A", 100, WEB, NOW) == [("S1", 40), ("S3", 20)]
    catalog.upsert_rule(Rule("cap", RuleType.CAP, quantity=0))  # removed
    catalog.upsert_rule(Rule("gold", RuleType.PROTECTION, quantity=90, customer_tier="gold"))
    # 95 promisable, 90 of it kept for gold: any one site may give 5; the
    # shortest lead time wins the tie.
    assert allocate(catalog, view, "A", 100, WEB, NOW) == [("S4", 5)]
    assert allocate(catalog, view, "A", 100, Demand(customer_tier="gold"), NOW)[0] == ("S1", 40)


def test_allocate_takes_whole_order_multiples_where_it_can() -> None:
    catalog, view = hub(("S1", 0), ("S2", 0), ("S3", 0))
    catalog.items["A"] = HubItem("A", order_multiple=6)
    stock(view, "S1", hub_share=17)
    stock(view, "S2", hub_share=13)
    stock(view, "S3", hub_share=5)
    assert allocate(catalog, view, "A", 24, WEB, NOW) == [("S1", 12), ("S2", 12)]
    # 34 cannot be made of whole multiples from these sites: the rest fills it.
    assert allocate(catalog, view, "A", 34, WEB, NOW) == [("S1", 17), ("S2", 12), ("S3", 5)]
