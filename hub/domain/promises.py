"""Hub promises and conflict resolution (pure).

A promise reserves units of the hub's share at one or more sites (`hub_reserved`
goes up, never past `hub_share`). Confirming it asks each site to hold the
units as a hard reservation (a command); picking them there lowers the hub's
share and the promise together (DESIGN, rule 5).

Conflicts: when physical stock at a site falls so far that the hub's share
no longer covers what the hub promised there (`hub_reserved > hub_share`),
the hub takes the excess back from its promises at that site, lowest
priority first and, among equals, newest first, and for each unit tries, in
order: another site of the promise's pool, a substitute SKU, a backorder.
Every such step is an immutable decision with its reason. Backorders are
filled, highest priority and oldest first, when the hub's free share grows.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from hub.domain import atp
from hub.domain.catalog import Catalog, Demand, HubItem
from hub.domain.view import HubView
from server.domain.errors import (
    InsufficientStock,
    PromiseClosed,
    UnknownPromise,
    Violations,
)


class PromiseState(IntEnum):
    UNSPECIFIED = 0
    HELD = 1
    CONFIRMED = 2
    RELEASED = 3
    EXPIRED = 4


class DecisionAction(IntEnum):
    UNSPECIFIED = 0
    RESOURCED = 1
    SUBSTITUTED = 2
    BACKORDERED = 3
    BACKORDER_FILLED = 4


@dataclass(slots=True)
class Allocation:
    site_id: str
    sku: str
    quantity: int
    picked: int = 0

    @property
    def open(self) -> int:
        return self.quantity - self.picked


@dataclass(slots=True)
class PromiseLine:
    line_id: str
    sku: str
    requested: int
    allocations: list[Allocation] = field(default_factory=list)
    backordered: int = 0


@dataclass(slots=True)
class Promise:
    promise_id: str
    request_id: str
    state: PromiseState
    channel: str
    customer_tier: str
    reference: str
    pool_id: str
    priority: int
    created_at_ms: int
    expires_at_ms: int
    lines: list[PromiseLine] = field(default_factory=list)

    @property
    def demand(self) -> Demand:
        return Demand(self.channel, self.customer_tier, self.pool_id, self.priority)

    @property
    def active(self) -> bool:
        return self.state in (PromiseState.HELD, PromiseState.CONFIRMED)


@dataclass(frozen=True, slots=True)
class Decision:
    decision_id: int
    promise_id: str
    sku: str
    quantity: int
    action: DecisionAction
    from_site_id: str
    to_site_id: str
    substitute_sku: str
    reason: str
    decided_at_ms: int


@dataclass(frozen=True, slots=True)
class PromiseRequestLine:
    line_id: str
    sku: str
    quantity: int  # base units


@dataclass(slots=True)
class PromiseBook:
    promises: dict[str, Promise] = field(default_factory=dict)
    next_decision_id: int = 1
    dirty: set[str] = field(default_factory=set)
    new_decisions: list[Decision] = field(default_factory=list)
    # (site, sku) -> promise ids with an open allocation there.
    by_site_sku: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    backorders: set[str] = field(default_factory=set)
    # (expires_at_ms, promise_id) of held promises: expiry never scans them all.
    expiry_heap: list[tuple[int, str]] = field(default_factory=list)

    def drain(self) -> tuple[set[str], list[Decision]]:
        dirty, decisions = self.dirty, self.new_decisions
        self.dirty, self.new_decisions = set(), []
        return dirty, decisions

    def index(self) -> None:
        """Rebuilds the indexes after promises were loaded in bulk."""
        self.by_site_sku, self.backorders = {}, set()
        self.expiry_heap = []
        for promise in self.promises.values():
            if promise.active:
                self._index(promise)
            if promise.state is PromiseState.HELD:
                self.expiry_heap.append((promise.expires_at_ms, promise.promise_id))
        heapq.heapify(self.expiry_heap)

    def _index(self, promise: Promise) -> None:
        for line in promise.lines:
            for allocation in line.allocations:
                if allocation.open > 0:
                    self.by_site_sku.setdefault((allocation.site_id, allocation.sku), set()).add(
                        promise.promise_id
                    )
            if line.backordered > 0:
                self.backorders.add(promise.promise_id)

    def _decide(
        self,
        promise: Promise,
        sku: str,
        quantity: int,
        action: DecisionAction,
        now_ms: int,
        *,
        from_site: str = "",
        to_site: str = "",
        substitute: str = "",
        reason: str,
    ) -> None:
        self.new_decisions.append(
            Decision(
                self.next_decision_id,
                promise.promise_id,
                sku,
                quantity,
                action,
                from_site,
                to_site,
                substitute,
                reason,
                now_ms,
            )
        )
        self.next_decision_id += 1

    def get(self, promise_id: str) -> Promise:
        promise = self.promises.get(promise_id)
        if promise is None:
            raise UnknownPromise(f"no promise {promise_id!r}", metadata={"promise_id": promise_id})
        return promise

    # ----- promise, confirm, release, expire ------------------------------------

    def promise(
        self,
        catalog: Catalog,
        view: HubView,
        *,
        promise_id: str,
        request_id: str,
        lines: Sequence[PromiseRequestLine],
        demand: Demand,
        reference: str,
        ttl_ms: int,
        allow_partial: bool,
        now_ms: int,
    ) -> Promise:
        """Reserves hub share for every line, all or nothing unless allow_partial."""
        seen: dict[str, int] = {}
        violations = Violations()
        for index, line in enumerate(lines):
            if line.sku in seen:
                violations.add(
                    f"lines[{index}].sku", f"SKU {line.sku!r} is on lines[{seen[line.sku]}]"
                )
            seen.setdefault(line.sku, index)
        violations.raise_if_any()
        plans: list[tuple[PromiseRequestLine, list[tuple[str, int]]]] = []
        for line in lines:
            plan = atp.allocate(catalog, view, line.sku, line.quantity, demand, now_ms)
            granted = sum(quantity for _, quantity in plan)
            if granted < line.quantity and not allow_partial:
                raise InsufficientStock(
                    f"{granted} of {line.sku!r} can be promised, {line.quantity} requested",
                    metadata={
                        "sku": line.sku,
                        "requested": str(line.quantity),
                        "available": str(granted),
                    },
                )
            plans.append((line, plan))
        promise = Promise(
            promise_id=promise_id,
            request_id=request_id,
            state=PromiseState.HELD,
            channel=demand.channel,
            customer_tier=demand.customer_tier,
            reference=reference,
            pool_id=demand.pool_id,
            priority=demand.priority,
            created_at_ms=now_ms,
            expires_at_ms=now_ms + ttl_ms,
        )
        for line, plan in plans:
            promise_line = PromiseLine(line.line_id, line.sku, line.quantity)
            for site_id, quantity in plan:
                self._hold(
                    catalog, view, promise, promise_line, site_id, line.sku, quantity, now_ms
                )
            short = line.quantity - sum(a.quantity for a in promise_line.allocations)
            if short > 0:
                promise_line.backordered = short
                self._decide(
                    promise, line.sku, short, DecisionAction.BACKORDERED, now_ms,
                    reason="not enough promisable supply in the pool at promise time",
                )
            promise.lines.append(promise_line)
        self.promises[promise_id] = promise
        heapq.heappush(self.expiry_heap, (promise.expires_at_ms, promise_id))
        self._index(promise)
        self.dirty.add(promise_id)
        return promise

    def _hold(
        self,
        catalog: Catalog,
        view: HubView,
        promise: Promise,
        line: PromiseLine,
        site_id: str,
        sku: str,
        quantity: int,
        now_ms: int,
    ) -> Allocation:
        balance = view.balance(site_id, sku)
        assert quantity <= balance.hub_free, "allocation above the hub's free share"
        balance.hub_reserved += quantity
        # Only the caps and protections that cover this site count the units.
        for rule in atp.usage_rules(catalog, sku, site_id, promise.demand):
            catalog.record_usage(rule, now_ms, quantity)
        allocation = Allocation(site_id, sku, quantity)
        line.allocations.append(allocation)
        self.by_site_sku.setdefault((site_id, sku), set()).add(promise.promise_id)
        if promise.state is PromiseState.CONFIRMED:
            view._command(
                site_id, "promise_hold", sku=sku, quantity=quantity,
                promise_id=promise.promise_id,
            )
        return allocation

    def _unhold(
        self, view: HubView, promise: Promise, allocation: Allocation, quantity: int
    ) -> None:
        balance = view.balance(allocation.site_id, allocation.sku)
        balance.hub_reserved = max(0, balance.hub_reserved - quantity)
        allocation.quantity -= quantity
        if promise.state is PromiseState.CONFIRMED:
            view._command(
                allocation.site_id, "promise_release", sku=allocation.sku, quantity=quantity,
                promise_id=promise.promise_id,
            )

    def confirm(self, view: HubView, promise_id: str, now_ms: int) -> Promise:
        promise = self.get(promise_id)
        if promise.state is PromiseState.CONFIRMED:
            return promise
        if promise.state is not PromiseState.HELD:
            raise _closed(promise)
        promise.state = PromiseState.CONFIRMED
        for line in promise.lines:
            for allocation in line.allocations:
                if allocation.open > 0:
                    view._command(
                        allocation.site_id, "promise_hold", sku=allocation.sku,
                        quantity=allocation.open, promise_id=promise_id,
                    )
        self.dirty.add(promise_id)
        return promise

    def release(
        self,
        view: HubView,
        promise_id: str,
        now_ms: int,
        state: PromiseState = PromiseState.RELEASED,
    ) -> Promise:
        promise = self.get(promise_id)
        if not promise.active:
            if promise.state is state:
                return promise
            raise _closed(promise)
        for line in promise.lines:
            for allocation in line.allocations:
                if allocation.open > 0:
                    self._unhold(view, promise, allocation, allocation.open)
                    allocation.quantity = allocation.picked
                self.by_site_sku.get((allocation.site_id, allocation.sku), set()).discard(
                    promise_id
                )
            line.backordered = 0
        self.backorders.discard(promise_id)
        promise.state = state
        self.dirty.add(promise_id)
        return promise

    def expire_due(self, view: HubView, now_ms: int, limit: int = 1000) -> list[str]:
        due: list[str] = []
        while self.expiry_heap and self.expiry_heap[0][0] <= now_ms and len(due) < limit:
            _, promise_id = heapq.heappop(self.expiry_heap)
            if self.promises[promise_id].state is PromiseState.HELD:  # else confirmed or gone
                due.append(promise_id)
        for promise_id in due:
            self.release(view, promise_id, now_ms, PromiseState.EXPIRED)
        return due

    def on_picked(self, site_id: str, sku: str, promise_id: str, quantity: int) -> None:
        """Records a pick of a confirmed promise at a site (the view already moved shares)."""
        promise = self.promises.get(promise_id)
        if promise is None:
            return
        left = quantity
        for line in promise.lines:
            for allocation in line.allocations:
                if allocation.site_id == site_id and allocation.sku == sku and left > 0:
                    take = min(left, allocation.open)
                    allocation.picked += take
                    left -= take
        self.dirty.add(promise_id)

    # ----- conflicts and backorders ------------------------------------------------

    def resolve_conflicts(
        self, catalog: Catalog, view: HubView, site_id: str, sku: str, now_ms: int
    ) -> int:
        """Takes back what the hub promised beyond its share at (site, sku)."""
        balance = view.balances.get((site_id, sku))
        if balance is None or balance.hub_reserved <= balance.hub_share:
            return 0
        excess = balance.hub_reserved - balance.hub_share
        victims = [
            self.promises[promise_id]
            for promise_id in self.by_site_sku.get((site_id, sku), set())
            if self.promises[promise_id].active
        ]
        victims.sort(key=lambda p: (p.priority, -p.created_at_ms, p.promise_id))
        moved = 0
        for promise in victims:
            for line in promise.lines:
                for allocation in list(line.allocations):
                    if excess <= 0:
                        break
                    if allocation.site_id != site_id or allocation.sku != sku:
                        continue
                    take = min(excess, allocation.open)
                    if take <= 0:
                        continue
                    self._unhold(view, promise, allocation, take)
                    excess -= take
                    moved += take
                    self._resource(catalog, view, promise, line, take, site_id, now_ms)
                    self.dirty.add(promise.promise_id)
        return moved

    def _resource(
        self,
        catalog: Catalog,
        view: HubView,
        promise: Promise,
        line: PromiseLine,
        quantity: int,
        from_site: str,
        now_ms: int,
    ) -> None:
        reason = (
            f"stock at {from_site} fell below what the hub promised; promise priority "
            f"{promise.priority} ranked lowest (newest first among equals)"
        )
        plan = atp.allocate(
            catalog, view, line.sku, quantity, promise.demand, now_ms,
            exclude_sites=frozenset({from_site}),
        )  # fmt: skip
        for site_id, granted in plan:
            self._hold(catalog, view, promise, line, site_id, line.sku, granted, now_ms)
            quantity -= granted
            self._decide(
                promise, line.sku, granted, DecisionAction.RESOURCED, now_ms,
                from_site=from_site, to_site=site_id, reason=reason,
            )
        item = catalog.items.get(line.sku) or HubItem(line.sku)
        for substitute in item.substitutes:
            if quantity <= 0:
                break
            needed = substitute.needed_for(quantity)
            plan = atp.allocate(catalog, view, substitute.sku, needed, promise.demand, now_ms)
            for site_id, granted in plan:
                covered = min(quantity, substitute.covers(granted))
                if covered <= 0:
                    continue
                self._hold(catalog, view, promise, line, site_id, substitute.sku, granted, now_ms)
                quantity -= covered
                self._decide(
                    promise, line.sku, covered, DecisionAction.SUBSTITUTED, now_ms,
                    from_site=from_site, to_site=site_id, substitute=substitute.sku,
                    reason=reason + f"; substituted by {substitute.sku} "
                    f"({substitute.numerator}:{substitute.denominator})",
                )
        if quantity > 0:
            line.backordered += quantity
            self.backorders.add(promise.promise_id)
            self._decide(
                promise, line.sku, quantity, DecisionAction.BACKORDERED, now_ms,
                from_site=from_site, reason=reason + "; no other site or substitute could serve",
            )

    def fill_backorders(self, catalog: Catalog, view: HubView, now_ms: int) -> int:
        """Re-sources backordered lines, highest priority and oldest first."""
        filled = 0
        waiting = sorted(
            (self.promises[promise_id] for promise_id in self.backorders),
            key=lambda p: (-p.priority, p.created_at_ms, p.promise_id),
        )
        for promise in waiting:
            for line in promise.lines:
                if line.backordered <= 0:
                    continue
                plan = atp.allocate(
                    catalog, view, line.sku, line.backordered, promise.demand, now_ms
                )
                for site_id, granted in plan:
                    self._hold(catalog, view, promise, line, site_id, line.sku, granted, now_ms)
                    line.backordered -= granted
                    filled += granted
                    self._decide(
                        promise, line.sku, granted, DecisionAction.BACKORDER_FILLED, now_ms,
                        to_site=site_id, reason="supply arrived; filled in priority order",
                    )
                    self.dirty.add(promise.promise_id)
            if all(line.backordered <= 0 for line in promise.lines):
                self.backorders.discard(promise.promise_id)
        return filled


def _closed(promise: Promise) -> PromiseClosed:
    return PromiseClosed(
        f"promise {promise.promise_id!r} is {promise.state.name.lower()}",
        metadata={"promise_id": promise.promise_id, "state": promise.state.name},
    )
