"""The ATP answer cache: reuse only on equal key and inputs, before validity ends."""

from __future__ import annotations

from hub.domain.answer_cache import AnswerCache, answer_lines
from hub.domain.atp import LineAnswer, LineQuery, validate
from hub.domain.catalog import Catalog, Demand, HubItem
from hub.domain.view import HubView

NOW = 1_700_000_000_000


def test_an_entry_is_reused_for_equal_key_and_inputs_only() -> None:
    cache: AnswerCache[str] = AnswerCache(capacity=4)
    cache.put(("A", 1), (0, "x"), NOW + 10, "answer")
    assert cache.get(("A", 1), (0, "x"), NOW) == "answer"
    assert cache.get(("A", 1), (0, "y"), NOW) is None
    assert cache.get(("A", 2), (0, "x"), NOW) is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_an_entry_ends_at_its_validity() -> None:
    cache: AnswerCache[str] = AnswerCache(capacity=4)
    cache.put(("A",), (), NOW + 10, "answer")
    assert cache.get(("A",), (), NOW + 9) == "answer"
    assert cache.get(("A",), (), NOW + 10) is None


def test_the_oldest_entry_goes_first_and_capacity_zero_keeps_nothing() -> None:
    cache: AnswerCache[int] = AnswerCache(capacity=2)
    for number in range(3):
        cache.put((number,), (), NOW + 10, number)
    assert len(cache) == 2
    assert cache.get((0,), (), NOW) is None
    assert cache.get((2,), (), NOW) == 2
    off: AnswerCache[int] = AnswerCache(capacity=0)
    off.put((0,), (), NOW + 10, 0)
    assert len(off) == 0


def _network() -> tuple[Catalog, HubView]:
    catalog = Catalog()
    catalog.items["A"] = HubItem("A")
    view = HubView()
    view.site("S1").last_applied_ms = NOW
    view.balance("S1", "A").hub_share = 10
    view.balance("S1", "A").sellable = 10
    return catalog, view


def test_a_second_check_is_served_from_the_cache_until_a_balance_or_the_catalogue_moves() -> None:
    catalog, view = _network()
    cache: AnswerCache[LineAnswer] = AnswerCache()
    demand = Demand()
    request = validate(catalog, view, [LineQuery("1", "A", 3)], demand)

    def available() -> int:
        (answer,) = answer_lines(catalog, view, request, NOW + 1, cache, lambda a: a)
        return answer.available_now

    assert available() == 10
    assert available() == 10
    assert cache.hits == 1
    view.balance("S1", "A").hub_reserved = 4
    assert available() == 6
    catalog.changed()
    assert available() == 6
    assert cache.hits == 1  # every change above was a miss


def test_a_stale_answer_is_never_kept() -> None:
    catalog, view = _network()
    cache: AnswerCache[LineAnswer] = AnswerCache()
    request = validate(catalog, view, [LineQuery("1", "A", 3)], Demand(), stale_after_ms=1_000)
    (answer,) = answer_lines(catalog, view, request, NOW + 5_000, cache, lambda a: a)
    assert answer.stale
    assert len(cache) == 0
    # Fresh, it is kept until the site's data would turn stale.
    (answer,) = answer_lines(catalog, view, request, NOW + 500, cache, lambda a: a)
    assert not answer.stale
    assert answer.valid_until_ms == NOW + 1_001
    assert len(cache) == 1
