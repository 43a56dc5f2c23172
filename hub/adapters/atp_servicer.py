"""gRPC servicers for stockd.v1.HubAtpService and HubAdminService.

ATP answers are computed synchronously from the in-memory view and catalogue;
a call whose deadline (or the configured latency budget) has already passed
when it reaches the front of the event loop is answered DEADLINE_EXCEEDED
instead of being computed late.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from hub.adapters import promise_store
from hub.domain import answer_cache, atp
from hub.domain.catalog import (
    Catalog,
    ExplanationKind,
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
from hub.domain.promises import Decision, Promise, PromiseRequestLine
from hub.service.engine import HubEngine, wall_clock_ms
from server.domain import limits, paging
from server.domain.errors import DeadlineExceeded, StockdError, Violations, check_request_id
from server.runtime.auth import Authenticator
from server.runtime.calls import Call, unary
from server.runtime.status import to_status
from server.sync.wire import timestamp
from stockd.v1 import atp_pb2, atp_pb2_grpc

PROMISE_TTL_SECONDS_DEFAULT = 900
ATP_CHUNK_LINES = 50
PromiseRender = Callable[[Promise], bytes]
DECISION_QUEUE_MAX = 1024


def promise_to_proto(promise: Promise) -> atp_pb2.Promise:
    return atp_pb2.Promise(
        promise_id=promise.promise_id,
        request_id=promise.request_id,
        state=atp_pb2.PromiseState.ValueType(int(promise.state)),
        channel=promise.channel,
        customer_tier=promise.customer_tier,
        reference=promise.reference,
        pool_id=promise.pool_id,
        created_at=timestamp(promise.created_at_ms),
        expires_at=timestamp(promise.expires_at_ms),
        lines=[
            atp_pb2.PromiseLine(
                line_id=line.line_id,
                sku=line.sku,
                requested=line.requested,
                backordered=line.backordered,
                allocations=[
                    atp_pb2.Allocation(site_id=a.site_id, quantity=a.quantity, sku=a.sku)
                    for a in line.allocations
                    if a.quantity > 0
                ],
            )
            for line in promise.lines
        ],
    )


def decision_to_proto(decision: Decision) -> atp_pb2.AllocationDecision:
    return atp_pb2.AllocationDecision(
        decision_id=decision.decision_id,
        promise_id=decision.promise_id,
        sku=decision.sku,
        quantity=decision.quantity,
        action=atp_pb2.DecisionAction.ValueType(int(decision.action)),
        from_site_id=decision.from_site_id,
        to_site_id=decision.to_site_id,
        substitute_sku=decision.substitute_sku,
        reason=decision.reason,
        decided_at=timestamp(decision.decided_at_ms),
    )


def answer_to_proto(answer: atp.LineAnswer) -> atp_pb2.AtpLineResult:
    """Built in place, field by field: a constructor given lists copies every
    submessage and keyword arguments cost more than attribute stores (together
    about twice as slow), and this runs for every line not served from cache."""
    result = atp_pb2.AtpLineResult()
    result.line_id = answer.line_id
    result.sku = answer.sku
    result.requested = answer.requested
    result.available_now = answer.available_now
    result.stale = answer.stale
    # Buckets where availability changes, plus the horizon's: the rest is implied.
    buckets = answer.buckets
    last = len(buckets) - 1
    add_bucket = result.buckets.add
    for index, (until_ms, available) in enumerate(buckets):
        if index == last or buckets[index + 1][1] != available:
            bucket = add_bucket()
            bucket.available = available
            bucket.until.FromMilliseconds(until_ms)
    add_option = result.sourcing.add
    for option in answer.sourcing:
        message = add_option()
        message.site_id = option.site_id
        message.available_now = option.available_now
        message.available_by_horizon = option.available_by_horizon
        message.lead_time_days = option.lead_time_days
    add_explanation = result.explanations.add
    for e in answer.explanations:
        explanation = add_explanation()
        explanation.kind = atp_pb2.ExplanationKind.ValueType(e.kind)
        explanation.site_id = e.site_id
        explanation.quantity = e.quantity
        explanation.detail = e.detail
    for sku, available, covers in answer.substitutes:
        result.substitutes.add(sku=sku, available_now=available, covers=covers)
    return result


RenderedLine = tuple[atp_pb2.AtpLineResult, tuple[str, ...]]


def _render(answer: atp.LineAnswer) -> RenderedLine:
    """The line's message and the sites whose freshness the response reports."""
    site_ids = {option.site_id for option in answer.sourcing}
    if answer.stale:
        site_ids.update(e.site_id for e in answer.explanations if e.kind is ExplanationKind.STALE)
    return answer_to_proto(answer), tuple(site_ids)


def _queries(lines: Any) -> list[atp.LineQuery]:
    return [
        atp.LineQuery(line.line_id or str(index), line.sku, line.quantity, line.unit)
        for index, line in enumerate(lines)
    ]


class AtpServicer(atp_pb2_grpc.HubAtpServiceServicer):
    def __init__(
        self,
        engine: HubEngine,
        auth: Authenticator,
        budget_ms: int = 1000,
        cache_entries: int = answer_cache.CAPACITY_DEFAULT,
    ) -> None:
        self.engine = engine
        self.auth = auth
        self.budget_ms = budget_ms
        self.answers: answer_cache.AnswerCache[RenderedLine] = answer_cache.AnswerCache(
            cache_entries
        )
        self.rpc_counts: Counter[tuple[str, str]] = Counter()
        self._watchers: set[asyncio.Queue[Decision | None]] = set()
        engine.decision_listeners.append(self._broadcast)

    def _broadcast(self, decisions: list[Decision]) -> None:
        for queue in list(self._watchers):
            for decision in decisions:
                if queue.full():
                    queue.get_nowait()  # a slow watcher loses the oldest; it can ListDecisions
                queue.put_nowait(decision)

    def close_streams(self) -> None:
        for queue in list(self._watchers):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    @unary("CheckAvailability", mutating=False)
    async def CheckAvailability(
        self, request: atp_pb2.CheckAvailabilityRequest, call: Call
    ) -> atp_pb2.CheckAvailabilityResponse:
        await self.engine.settled()
        started = time.monotonic()
        deadline = started + self.budget_ms / 1000
        if call.deadline is not None:
            deadline = min(deadline, call.deadline)
        if started >= deadline:
            raise DeadlineExceeded("the deadline passed before the answer could start")
        engine = self.engine
        demand = engine.catalog.demand(request.channel, request.customer_tier, request.pool_id)
        checked = engine.validate(
            _queries(request.lines),
            demand,
            horizon_days=request.horizon_days,
            bucket_days=request.bucket_days,
            include_substitutes=request.include_substitutes,
        )
        response = atp_pb2.CheckAvailabilityResponse()
        results = response.lines
        # The sites the answer relies on, and any stale pool site: their freshness.
        site_ids: set[str] = set()
        line_count = len(checked.lines)
        for start in range(0, line_count, ATP_CHUNK_LINES):
            if start:
                # Long requests answer in chunks, yielding between them and
                # giving up once the budget is spent: a late answer is no
                # answer, and it must not hold up the callers behind it.
                await asyncio.sleep(0)
                await engine.settled()
                if time.monotonic() >= deadline:
                    raise DeadlineExceeded(
                        f"the answer did not fit the {self.budget_ms} ms budget or the deadline",
                        metadata={"lines_answered": str(start), "lines": str(line_count)},
                    )
            stop = min(start + ATP_CHUNK_LINES, line_count)
            rendered = engine.answer_lines(checked, self.answers, _render, start, stop)
            for index, (message, line_sites) in enumerate(rendered, start):
                result = results.add()
                result.CopyFrom(message)
                result.line_id = checked.lines[index][0].line_id
                site_ids.update(line_sites)
        now_ms = wall_clock_ms()
        sites = engine.view.sites
        stale_after_ms = engine.stale_after_ms
        add_site = response.sites.add
        for site_id in sorted(site_ids):
            state = sites.get(site_id)
            age = now_ms - state.last_applied_ms if state and state.last_applied_ms else -1
            freshness = add_site()
            freshness.site_id = site_id
            if age > 0:
                freshness.data_age_ms = age
            if age < 0 or age > stale_after_ms:
                freshness.stale = True
        response.evaluated_at.FromMilliseconds(now_ms)
        return response

    @unary("Promise", mutating=True)
    async def Promise(self, request: atp_pb2.PromiseRequest, call: Call) -> atp_pb2.PromiseResponse:
        check_request_id(request.request_id)
        violations = Violations()
        if not 0 <= request.ttl_seconds <= limits.TTL_SECONDS_MAX:
            violations.add("ttl_seconds", f"must be between 0 and {limits.TTL_SECONDS_MAX}")
        violations.raise_if_any()
        queries = _queries(request.lines)
        demand = self.engine.catalog.demand(request.channel, request.customer_tier, request.pool_id)
        # Validates every line (units, quantities, SKUs) before anything is held.
        lines = []
        for index, query in enumerate(queries):
            item, base = atp.to_base(
                self.engine.catalog, self.engine.view, query, f"lines[{index}]"
            )
            if item.order_multiple > 1 and base % item.order_multiple:
                violations.add(
                    f"lines[{index}].quantity",
                    f"{base} is not a multiple of the order multiple {item.order_multiple}",
                    "ERROR_REASON_NOT_ORDER_MULTIPLE",
                )
            if base < item.order_minimum:
                violations.add(
                    f"lines[{index}].quantity",
                    f"{base} is below the order minimum {item.order_minimum}",
                    "ERROR_REASON_BELOW_ORDER_MINIMUM",
                )
            lines.append(PromiseRequestLine(query.line_id, item.sku, base))
        if not lines:
            violations.add("lines", "at least one line is required")
        if len(lines) > limits.LINES_PER_REQUEST_MAX:
            violations.add("lines", "too many lines", "ERROR_REASON_TOO_MANY_LINES")
        violations.raise_if_any()
        ttl_ms = (request.ttl_seconds or PROMISE_TTL_SECONDS_DEFAULT) * 1000
        data = await self.engine.promise(
            request.request_id,
            request.SerializeToString(deterministic=True),
            lines=lines,
            demand=demand,
            reference=request.reference,
            ttl_ms=ttl_ms,
            allow_partial=request.allow_partial,
            render=lambda p: atp_pb2.PromiseResponse(
                promise=promise_to_proto(p)
            ).SerializeToString(),
        )
        return atp_pb2.PromiseResponse.FromString(data)

    @unary("ConfirmPromise", mutating=True)
    async def ConfirmPromise(
        self, request: atp_pb2.ConfirmPromiseRequest, call: Call
    ) -> atp_pb2.ConfirmPromiseResponse:
        response: atp_pb2.ConfirmPromiseResponse = await self._promise_change(
            self.engine.confirm, request, atp_pb2.ConfirmPromiseResponse
        )
        return response

    @unary("ReleasePromise", mutating=True)
    async def ReleasePromise(
        self, request: atp_pb2.ReleasePromiseRequest, call: Call
    ) -> atp_pb2.ReleasePromiseResponse:
        response: atp_pb2.ReleasePromiseResponse = await self._promise_change(
            self.engine.release_promise, request, atp_pb2.ReleasePromiseResponse
        )
        return response

    async def _promise_change(
        self,
        change: Callable[[str, bytes, str, PromiseRender], Awaitable[bytes]],
        request: Any,
        response_type: Any,
    ) -> Any:
        """Confirm and release: an idempotent change answered with the promise after it."""
        check_request_id(request.request_id)
        data = await change(
            request.request_id,
            request.SerializeToString(deterministic=True),
            request.promise_id,
            lambda promise: response_type(promise=promise_to_proto(promise)).SerializeToString(),
        )
        return response_type.FromString(data)

    @unary("GetPromise", mutating=False)
    async def GetPromise(
        self, request: atp_pb2.GetPromiseRequest, call: Call
    ) -> atp_pb2.GetPromiseResponse:
        await self.engine.settled()
        return atp_pb2.GetPromiseResponse(
            promise=promise_to_proto(self.engine.book.get(request.promise_id))
        )

    @unary("ListPromises", mutating=False)
    async def ListPromises(
        self, request: atp_pb2.ListPromisesRequest, call: Call
    ) -> atp_pb2.ListPromisesResponse:
        await self.engine.settled()
        size = paging.page_size(request.page_size)
        query = ("promises", request.state, request.reference)
        after = paging.decode(request.page_token, query)
        promises = sorted(
            (
                p
                for p in self.engine.book.promises.values()
                if (not request.state or int(p.state) == request.state)
                and (not request.reference or p.reference == request.reference)
            ),
            key=lambda p: (-p.created_at_ms, p.promise_id),
        )
        if isinstance(after, list):
            position = (int(after[0]), str(after[1]))
            promises = [p for p in promises if (-p.created_at_ms, p.promise_id) > position]
        page = promises[:size]
        token = ""
        if len(promises) > size:
            token = paging.encode([-page[-1].created_at_ms, page[-1].promise_id], query)
        return atp_pb2.ListPromisesResponse(
            promises=[promise_to_proto(p) for p in page], next_page_token=token
        )

    @unary("ListDecisions", mutating=False)
    async def ListDecisions(
        self, request: atp_pb2.ListDecisionsRequest, call: Call
    ) -> atp_pb2.ListDecisionsResponse:
        _check_after_decision_id(request.after_decision_id)
        size = paging.page_size(request.page_size)
        decisions = await self.engine.list_decisions(
            request.promise_id, request.after_decision_id, size
        )
        return atp_pb2.ListDecisionsResponse(decisions=[decision_to_proto(d) for d in decisions])

    async def WatchDecisions(
        self,
        request: atp_pb2.WatchDecisionsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[atp_pb2.WatchDecisionsResponse]:
        try:
            self.auth.principal(context.invocation_metadata())
            _check_after_decision_id(request.after_decision_id)
        except StockdError as error:
            await context.abort_with_status(to_status(error))  # type: ignore[attr-defined]
            return
        queue: asyncio.Queue[Decision | None] = asyncio.Queue(maxsize=DECISION_QUEUE_MAX)
        self._watchers.add(queue)
        try:
            last = request.after_decision_id
            if last:
                for past in await self.engine.list_decisions("", last, limits.PAGE_SIZE_MAX):
                    last = past.decision_id
                    yield atp_pb2.WatchDecisionsResponse(decision=decision_to_proto(past))
            while True:
                decision = await queue.get()
                if decision is None:
                    return
                if decision.decision_id <= last:
                    continue
                last = decision.decision_id
                yield atp_pb2.WatchDecisionsResponse(decision=decision_to_proto(decision))
        finally:
            self._watchers.discard(queue)


def _check_after_decision_id(after: int) -> None:
    """Decision ids are SQLite integers: a uint64 past int64 would overflow there."""
    if after > paging.INT64_MAX:
        violations = Violations()
        violations.add("after_decision_id", f"above the limit of {paging.INT64_MAX}")
        violations.raise_if_any()


def _units(units: Any) -> tuple[tuple[str, int], ...]:
    return tuple((u.unit, u.base_units_per_unit) for u in units)


class AdminServicer(atp_pb2_grpc.HubAdminServiceServicer):
    def __init__(self, engine: HubEngine, auth: Authenticator) -> None:
        self.engine = engine
        self.auth = auth
        self.rpc_counts: Counter[tuple[str, str]] = Counter()

    async def _apply(
        self,
        rpc: str,
        request: Any,
        change: Callable[[Catalog], tuple[list[promise_store.CatalogRow], bytes]],
    ) -> bytes:
        check_request_id(request.request_id)
        return await self.engine.admin(
            rpc, request.request_id, request.SerializeToString(deterministic=True), change
        )

    @unary("UpsertHubItem", mutating=True)
    async def UpsertHubItem(
        self, request: atp_pb2.UpsertHubItemRequest, call: Call
    ) -> atp_pb2.UpsertHubItemResponse:
        message = request.item
        violations = Violations()
        if not message.sku or len(message.sku) > limits.ID_LENGTH_MAX:
            violations.add("item.sku", "must be 1 to 64 characters")
        for index, unit in enumerate(message.units):
            if not unit.unit or not 1 <= unit.base_units_per_unit <= limits.BASE_UNITS_PER_UNIT_MAX:
                violations.add(f"item.units[{index}]", "needs a name and a factor of at least 1")
        for index, substitute in enumerate(message.substitutes):
            if (
                not substitute.sku
                or substitute.ratio_numerator < 1
                or substitute.ratio_denominator < 1
            ):
                violations.add(f"item.substitutes[{index}]", "needs a SKU and a positive ratio")
        for name in ("order_minimum", "order_multiple"):
            if not 0 <= getattr(message, name) <= limits.QUANTITY_MAX:
                violations.add(f"item.{name}", "out of range", "ERROR_REASON_INVALID_QUANTITY")
        violations.raise_if_any()
        item = HubItem(
            sku=message.sku,
            description=message.description,
            base_unit=message.base_unit or "each",
            units=_units(message.units),
            order_minimum=message.order_minimum,
            order_multiple=message.order_multiple,
            substitutes=tuple(
                Substitute(s.sku, s.ratio_numerator, s.ratio_denominator)
                for s in message.substitutes
            ),
        )

        def change(catalog: Catalog) -> tuple[list[promise_store.CatalogRow], bytes]:
            catalog.items[item.sku] = item
            return [promise_store.item_row(item)], atp_pb2.UpsertHubItemResponse(
                item=message
            ).SerializeToString()

        return atp_pb2.UpsertHubItemResponse.FromString(
            await self._apply("UpsertHubItem", request, change)
        )

    @unary("UpsertSite", mutating=True)
    async def UpsertSite(
        self, request: atp_pb2.UpsertSiteRequest, call: Call
    ) -> atp_pb2.UpsertSiteResponse:
        message = request.site
        violations = Violations()
        if not message.site_id:
            violations.add("site.site_id", "must not be empty")
        if message.type not in SiteType._value2member_map_:
            violations.add("site.type", f"unknown site type {message.type}")
        if not 0 <= message.lead_time_days <= 365:
            violations.add("site.lead_time_days", "must be between 0 and 365")
        violations.raise_if_any()
        site = Site(
            message.site_id,
            SiteType(message.type or SiteType.DC),
            message.lead_time_days,
            message.description,
        )

        def change(catalog: Catalog) -> tuple[list[promise_store.CatalogRow], bytes]:
            catalog.sites[site.site_id] = site
            return [promise_store.site_row(site)], atp_pb2.UpsertSiteResponse(
                site=message
            ).SerializeToString()

        return atp_pb2.UpsertSiteResponse.FromString(
            await self._apply("UpsertSite", request, change)
        )

    @unary("UpsertPool", mutating=True)
    async def UpsertPool(
        self, request: atp_pb2.UpsertPoolRequest, call: Call
    ) -> atp_pb2.UpsertPoolResponse:
        message = request.pool
        violations = Violations()
        if not message.pool_id:
            violations.add("pool.pool_id", "must not be empty")
        if not message.site_ids:
            violations.add("pool.site_ids", "at least one site is required")
        violations.raise_if_any()
        pool = Pool(message.pool_id, tuple(message.site_ids), tuple(message.channels))

        def change(catalog: Catalog) -> tuple[list[promise_store.CatalogRow], bytes]:
            catalog.pools[pool.pool_id] = pool
            return [promise_store.pool_row(pool)], atp_pb2.UpsertPoolResponse(
                pool=message
            ).SerializeToString()

        return atp_pb2.UpsertPoolResponse.FromString(
            await self._apply("UpsertPool", request, change)
        )

    @unary("UpsertSupply", mutating=True)
    async def UpsertSupply(
        self, request: atp_pb2.UpsertSupplyRequest, call: Call
    ) -> atp_pb2.UpsertSupplyResponse:
        message = request.supply
        violations = Violations()
        if not message.supply_id:
            violations.add("supply.supply_id", "must not be empty")
        if message.type not in SupplyType._value2member_map_ or message.type == 0:
            violations.add("supply.type", "a known supply type is required")
        if not message.site_id:
            violations.add("supply.site_id", "must not be empty")
        if not message.sku:
            violations.add("supply.sku", "must not be empty")
        if not 0 <= message.quantity <= limits.QUANTITY_MAX:
            violations.add("supply.quantity", "out of range", "ERROR_REASON_INVALID_QUANTITY")
        if message.type in (1, 2) and not message.HasField("eta"):
            violations.add("supply.eta", "in-transit and purchase-order supply needs an eta")
        violations.raise_if_any()
        supply = Supply(
            supply_id=message.supply_id,
            type=SupplyType(message.type),
            site_id=message.site_id,
            sku=message.sku,
            quantity=message.quantity,
            eta_ms=message.eta.ToMilliseconds() if message.HasField("eta") else 0,
            lead_time_days=message.lead_time_days,
        )

        def change(catalog: Catalog) -> tuple[list[promise_store.CatalogRow], bytes]:
            catalog.upsert_supply(supply)
            return [promise_store.supply_row(supply)], atp_pb2.UpsertSupplyResponse(
                supply=message
            ).SerializeToString()

        return atp_pb2.UpsertSupplyResponse.FromString(
            await self._apply("UpsertSupply", request, change)
        )

    @unary("UpsertRule", mutating=True)
    async def UpsertRule(
        self, request: atp_pb2.UpsertRuleRequest, call: Call
    ) -> atp_pb2.UpsertRuleResponse:
        message = request.rule
        violations = Violations()
        if not message.rule_id:
            violations.add("rule.rule_id", "must not be empty")
        if message.type not in RuleType._value2member_map_ or message.type == 0:
            violations.add("rule.type", "a known rule type is required")
        if not 0 <= message.quantity <= limits.QUANTITY_MAX:
            violations.add("rule.quantity", "out of range", "ERROR_REASON_INVALID_QUANTITY")
        if not 0 <= message.percent <= 100:
            violations.add("rule.percent", "must be between 0 and 100")
        if message.period_days < 0:
            violations.add("rule.period_days", "must not be negative")
        violations.raise_if_any()
        rule = Rule(
            rule_id=message.rule_id,
            type=RuleType(message.type),
            sku=message.sku,
            site_id=message.site_id,
            pool_id=message.pool_id,
            quantity=message.quantity,
            percent=message.percent,
            min_priority=message.min_priority,
            channel=message.channel,
            customer_tier=message.customer_tier,
            period_days=message.period_days or 1,
        )

        def change(catalog: Catalog) -> tuple[list[promise_store.CatalogRow], bytes]:
            catalog.upsert_rule(rule)
            return [promise_store.rule_row(rule)], atp_pb2.UpsertRuleResponse(
                rule=message
            ).SerializeToString()

        return atp_pb2.UpsertRuleResponse.FromString(
            await self._apply("UpsertRule", request, change)
        )

    @unary("SetPriorities", mutating=True)
    async def SetPriorities(
        self, request: atp_pb2.SetPrioritiesRequest, call: Call
    ) -> atp_pb2.SetPrioritiesResponse:
        channels = {p.name: p.priority for p in request.channels}
        tiers = {p.name: p.priority for p in request.customer_tiers}

        def change(catalog: Catalog) -> tuple[list[promise_store.CatalogRow], bytes]:
            catalog.channel_priorities = channels
            catalog.tier_priorities = tiers
            return [promise_store.priorities_row(catalog)], atp_pb2.SetPrioritiesResponse(
                channels=request.channels, customer_tiers=request.customer_tiers
            ).SerializeToString()

        return atp_pb2.SetPrioritiesResponse.FromString(
            await self._apply("SetPriorities", request, change)
        )
