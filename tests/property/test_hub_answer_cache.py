"""A reused ATP answer is always the answer a recomputation gives.

Hypothesis draws a network (the same generator as the ATP properties), then
a history of changes between checks: any balance field of any site, a site's
data arriving (or growing stale as the clock runs), rules, supply and cap
usage, the clock crossing minute and day boundaries. Every check goes through
the answer cache exactly as the hub's CheckAvailability does and is compared
with a fresh `check` on the same state.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from hub.domain.answer_cache import AnswerCache, answer_lines
from hub.domain.atp import LineAnswer, LineQuery, check, validate
from hub.domain.catalog import DAY_MS, Rule, RuleType, Supply, SupplyType
from tests.property.test_hub_atp_properties import SITES, SKUS, Network, networks

BALANCE_FIELDS = (
    "sellable",
    "hub_share",
    "hub_reserved",
    "local_share",
    "reserved_soft",
    "reserved_hard",
    "in_flight",
)
STALE_AFTER_MS = 60_000

steps = st.one_of(
    # Changes to balances that exist (a new balance is a change of shape, easy to see).
    *[
        st.tuples(
            st.just("change"),
            st.integers(0, 20),
            st.sampled_from(BALANCE_FIELDS),
            st.integers(0, 80),
        )
    ]
    * 3,
    st.tuples(
        st.just("balance"),
        st.sampled_from(SITES),
        st.sampled_from(SKUS),
        st.sampled_from(BALANCE_FIELDS),
        st.integers(0, 80),
    ),
    st.tuples(st.just("heard"), st.sampled_from(SITES)),
    st.tuples(st.just("clock"), st.sampled_from([1, 999, 30_000, 59_999, 61_000, DAY_MS])),
    st.tuples(st.just("rule"), st.sampled_from(list(RuleType)[1:]), st.integers(0, 40)),
    st.tuples(st.just("usage"), st.integers(0, 30)),
    st.tuples(st.just("supply"), st.sampled_from(SITES), st.integers(1, 30)),
    # Few distinct checks, so that later ones find earlier answers to reuse.
    st.tuples(st.just("check"), st.sampled_from([1, 7]), st.booleans(), st.sampled_from([1, 14])),
)


def _apply(network: Network, step: tuple[object, ...], index: int) -> None:
    catalog, view = network.catalog, network.view
    kind = step[0]
    if kind == "clock":
        assert isinstance(step[1], int)
        network.now_ms += step[1]
    elif kind == "balance":
        _kind, site_id, sku, name, value = step
        assert isinstance(site_id, str)
        assert isinstance(sku, str)
        assert isinstance(name, str)
        setattr(view.balance(site_id, sku), name, value)
    elif kind == "change":
        _kind, position, name, value = step
        assert isinstance(position, int)
        assert isinstance(name, str)
        if view.balances:
            # Through `balance`, as every change of the hub's own code goes.
            site_id, sku = sorted(view.balances)[position % len(view.balances)]
            setattr(view.balance(site_id, sku), name, value)
    elif kind == "heard":
        assert isinstance(step[1], str)
        view.site(step[1]).last_applied_ms = network.now_ms
    elif kind == "rule":
        rule_type, quantity = step[1], step[2]
        assert isinstance(rule_type, RuleType)
        assert isinstance(quantity, int)
        catalog.upsert_rule(Rule(f"step{index}", rule_type, sku="A", quantity=quantity))
    elif kind == "usage":
        limits = [
            r for r in catalog.rules.values() if r.type in (RuleType.CAP, RuleType.PROTECTION)
        ]
        assert isinstance(step[1], int)
        if limits:
            catalog.record_usage(limits[0], network.now_ms, step[1])
    elif kind == "supply":
        site_id, quantity = step[1], step[2]
        assert isinstance(site_id, str)
        assert isinstance(quantity, int)
        catalog.upsert_supply(
            Supply(
                f"sup-step{index}", SupplyType.SUPPLIER, site_id, "A", quantity, lead_time_days=2
            )
        )


def _comparable(answer: LineAnswer) -> LineAnswer:
    """Line ids are the caller's; a reused answer keeps the validity it was computed with."""
    return dataclasses.replace(answer, line_id="", valid_until_ms=0)


@settings(max_examples=400)
@given(networks(), st.lists(steps, min_size=1, max_size=30))
def test_a_cached_answer_equals_a_fresh_one(
    network: Network, history: list[tuple[object, ...]]
) -> None:
    cache: AnswerCache[LineAnswer] = AnswerCache(capacity=8)
    # Start fresh (stale answers are never kept); the clock steps age the sites.
    for state in network.view.sites.values():
        state.last_applied_ms = network.now_ms
    for index, step in enumerate(history):
        if step[0] == "check":
            _kind, quantity, substitutes, horizon_days = step
            assert isinstance(quantity, int)
            assert isinstance(substitutes, bool)
            assert isinstance(horizon_days, int)
            _compare(network, cache, f"{index}", quantity, substitutes, horizon_days)
        else:
            _apply(network, step, index)
            # The same check after every change: it must see the change.
            _compare(network, cache, f"{index}", 7, False, 14)
    assert cache.hits + cache.misses == len(SKUS) * len(history)


def _compare(
    network: Network,
    cache: AnswerCache[LineAnswer],
    line_id: str,
    quantity: int,
    substitutes: bool,
    horizon_days: int,
) -> None:
    catalog, view, demand, now_ms = network.catalog, network.view, network.demand, network.now_ms
    queries = [LineQuery(f"{sku}-{line_id}", sku, quantity) for sku in SKUS]
    request = validate(
        catalog,
        view,
        queries,
        demand,
        horizon_days=horizon_days,
        include_substitutes=substitutes,
        stale_after_ms=STALE_AFTER_MS,
    )
    reused = answer_lines(catalog, view, request, now_ms, cache, lambda a: a)
    fresh = check(
        catalog,
        view,
        queries,
        demand,
        now_ms,
        horizon_days=horizon_days,
        include_substitutes=substitutes,
        stale_after_ms=STALE_AFTER_MS,
    )
    assert [_comparable(a) for a in reused] == [_comparable(a) for a in fresh]
