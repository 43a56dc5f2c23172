"""Reuse of ATP answers while nothing they were computed from has changed (pure).

OMS traffic is skewed: a few SKUs take most of the checks, and between two
checks of one SKU its data usually has not moved. An entry is reused only
when the line's key (`atp.CheckRequest.key`) and its inputs
(`atp.inputs`: the catalogue's generation and every balance field ATP reads)
are equal to those it was computed from, and before its `valid_until_ms`
(when the clock alone would change the answer). So a reused answer is the
answer a recomputation would give; the cache saves time, never correctness.

Entries are evicted oldest first past `capacity`; a capacity of 0 turns the
cache off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hub.domain.atp import Answerer, CheckRequest, LineAnswer, inputs
from hub.domain.catalog import Catalog
from hub.domain.view import HubView

T = TypeVar("T")

CAPACITY_DEFAULT = 20_000


@dataclass(slots=True)
class AnswerCache(Generic[T]):
    capacity: int = CAPACITY_DEFAULT
    hits: int = 0
    misses: int = 0
    # key -> (inputs, valid_until_ms, value); insertion order is age.
    _entries: dict[tuple[object, ...], tuple[tuple[object, ...], int, T]] = field(
        default_factory=dict
    )

    def get(self, key: tuple[object, ...], inputs: tuple[object, ...], now_ms: int) -> T | None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] > now_ms and entry[0] == inputs:
            self.hits += 1
            return entry[2]
        self.misses += 1
        return None

    def put(
        self, key: tuple[object, ...], inputs: tuple[object, ...], valid_until_ms: int, value: T
    ) -> None:
        if self.capacity <= 0:
            return
        entries = self._entries
        entries.pop(key, None)
        if len(entries) >= self.capacity:
            del entries[next(iter(entries))]
        entries[key] = (inputs, valid_until_ms, value)

    def __len__(self) -> int:
        return len(self._entries)


def answer_lines(
    catalog: Catalog,
    view: HubView,
    request: CheckRequest,
    now_ms: int,
    cache: AnswerCache[T],
    render: Callable[[LineAnswer], T],
    start: int = 0,
    stop: int | None = None,
) -> list[T]:
    """Lines [start, stop) of a validated request, rendered; each reused from
    `cache` when it may be, else computed, rendered and kept when reusable.

    Reused values carry the line id they were computed for: the caller sets
    its own.
    """
    answerer: Answerer | None = None
    found: list[T] = []
    for index in range(start, len(request.lines) if stop is None else stop):
        key = request.key(index)
        line_inputs = inputs(catalog, view, request, index)
        value = cache.get(key, line_inputs, now_ms)
        if value is None:
            if answerer is None:
                answerer = Answerer(catalog, view, request, now_ms)
            answer = answerer.answer(index)
            value = render(answer)
            if answer.valid_until_ms > now_ms:
                cache.put(key, line_inputs, answer.valid_until_ms, value)
        found.append(value)
    return found
