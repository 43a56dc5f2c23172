"""Proves the OMS side of the hub end to end, over gRPC, with two edge agents
syncing through a real nats-server: ATP answers with sourcing, explanations and
time-phased supply; promises are all-or-nothing (or backorder) and idempotent;
a confirmed promise becomes a hard reservation the scanner picks, lowering the
hub's share; a count below what was promised is resolved by priority (re-sourced,
backordered, streamed on WatchDecisions); backorders fill when share arrives;
release and expiry give units back; bad input and expired deadlines get the
documented statuses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Final

import grpc

from server.sync.nats_server import NatsServer
from stockd.v1 import atp_pb2, common_pb2
from tests.integration.conftest import eventually
from tests.integration.hub_helpers import (
    CHANNEL,
    EXPIRY_TIMEOUT_SECONDS,
    TIER_BRONZE,
    TIER_GOLD,
    allocations,
    explained,
    hub_network,
    line,
    promise_request,
    summary,
    timestamp_ms,
    watch_decisions,
)
from tests.integration.sync_helpers import CALL_TIMEOUT_SECONDS, new_id, rpc_error

SKU: Final = "A"
SITES: Final = ("S1", "S2")
DAY_MS: Final = 86_400_000
LOADED_CALLS: Final = 200
LOADED_DEADLINE_SECONDS: Final = 0.05
# A refused call ends this soon after its deadline (a hang would take CALL_TIMEOUT_SECONDS).
LATE_SECONDS_MAX: Final = 2.0


# ----- 1. the OMS walk-through --------------------------------------------------------


async def test_oms_walk_through_check_promise_confirm_pick(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with hub_network(tmp_path, nats_server.url, SITES) as net:
        await net.setup_catalog([SKU])
        await net.stock("S1", SKU, received=50, recalled=20)
        await net.stock("S2", SKU, received=30, recalled=10)

        # ATP now: the hub's free share per site, and what the edges could return.
        answer = await net.check(SKU, 12)
        result = answer.lines[0]
        assert (result.line_id, result.sku, result.requested) == ("1", SKU, 12)
        assert result.available_now == 30
        assert {o.site_id: o.available_now for o in result.sourcing} == {"S1": 20, "S2": 10}
        assert result.sourcing[0].site_id == "S1", "the site that fills the line comes first"
        on_hand = explained(result, atp_pb2.EXPLANATION_KIND_ON_HAND)
        obtainable = explained(result, atp_pb2.EXPLANATION_KIND_OBTAINABLE)
        assert sum(e.quantity for e in on_hand) == 30, result.explanations
        assert sum(e.quantity for e in obtainable) == 30 + 20, result.explanations
        assert not result.stale
        assert {site.site_id for site in answer.sites} == set(SITES)
        assert not any(site.stale for site in answer.sites)

        # A purchase order lands in the time-phased buckets from its eta.
        eta_ms = int(time.time() * 1000) + 3 * DAY_MS + 6 * 3_600_000
        await net.admin.UpsertSupply(
            atp_pb2.UpsertSupplyRequest(
                request_id=new_id(),
                supply=atp_pb2.Supply(
                    supply_id="PO-1",
                    type=atp_pb2.SUPPLY_TYPE_PURCHASE_ORDER,
                    site_id="S2",
                    sku=SKU,
                    quantity=25,
                    eta=timestamp_ms(eta_ms),
                ),
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        result = (await net.check(SKU, 12, horizon_days=7)).lines[0]
        assert result.available_now == 30, "a purchase order is not promisable now"
        # Only the buckets after which availability changes are listed, plus the horizon's.
        assert len(result.buckets) == 2
        for bucket in result.buckets:
            expected = 55 if bucket.until.ToMilliseconds() >= eta_ms else 30
            assert bucket.available == expected, (bucket, eta_ms)
        orders = explained(result, atp_pb2.EXPLANATION_KIND_PURCHASE_ORDER)
        assert [(e.site_id, e.quantity) for e in orders] == [("S2", 25)], result.explanations
        by_site = {o.site_id: o for o in result.sourcing}
        assert by_site["S2"].available_by_horizon == 35
        assert by_site["S1"].available_by_horizon == 20

        # All or nothing: one unit more than the pool holds is refused, nothing held.
        error = await rpc_error(net.atp.Promise(promise_request(SKU, 31)))
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION, error
        assert error.reason == "ERROR_REASON_INSUFFICIENT_STOCK", error
        assert error.metadata.get("requested") == "31", error.metadata
        assert error.metadata.get("available") == "30", error.metadata
        for site_id in SITES:
            assert (await net.balance(site_id, SKU)).hub_reserved == 0

        # Promise 12: one site covers it; replaying the request changes nothing.
        request_id = new_id()
        promise = await net.promise(SKU, 12, request_id=request_id, reference="ORD-1")
        assert promise.state == atp_pb2.PROMISE_STATE_HELD
        assert promise.request_id == request_id
        assert allocations(promise) == {"S1": 12}
        assert promise.lines[0].backordered == 0
        assert (await net.balance("S1", SKU)).hub_reserved == 12
        replay = await net.promise(SKU, 12, request_id=request_id, reference="ORD-1")
        assert replay.promise_id == promise.promise_id
        assert replay == promise
        assert (await net.balance("S1", SKU)).hub_reserved == 12
        assert (await net.balance("S2", SKU)).hub_reserved == 0
        listed = await net.atp.ListPromises(
            atp_pb2.ListPromisesRequest(reference="ORD-1"), timeout=CALL_TIMEOUT_SECONDS
        )
        assert [p.promise_id for p in listed.promises] == [promise.promise_id]

        # allow_partial: what is short is backordered (and the decision says so).
        partial = await net.promise(SKU, 25, allow_partial=True, reference="ORD-2")
        assert allocations(partial) == {"S1": 8, "S2": 10}
        assert partial.lines[0].backordered == 7
        backorders = await net.decisions(partial.promise_id)
        assert [(d.action, d.quantity) for d in backorders] == [
            (atp_pb2.DECISION_ACTION_BACKORDERED, 7)
        ], [summary(d) for d in backorders]
        released = await net.release(partial.promise_id)
        assert released.state == atp_pb2.PROMISE_STATE_RELEASED
        assert (await net.balance("S1", SKU)).hub_reserved == 12
        assert (await net.balance("S2", SKU)).hub_reserved == 0

        # Confirm: the edge shows an OPEN hard reservation for the promise.
        confirm_id = new_id()
        confirmed = await net.confirm(promise.promise_id, confirm_id)
        assert confirmed.state == atp_pb2.PROMISE_STATE_CONFIRMED
        assert (await net.confirm(promise.promise_id, confirm_id)) == confirmed, "replay"
        assert (await net.confirm(promise.promise_id)).state == atp_pb2.PROMISE_STATE_CONFIRMED
        await net.wait_held("S1", promise.promise_id, SKU, 12)
        holds = await net.hub_holds("S1", promise.promise_id)
        assert len(holds) == 1, holds
        hold = holds[0]
        assert hold.state == common_pb2.RESERVATION_STATE_OPEN
        assert hold.kind == common_pb2.RESERVATION_KIND_HARD
        assert await net.hub_holds("S2", promise.promise_id) == []
        await net.wait_balance("S1", SKU, "hold synced", reserved_hard=12, hub_reserved=12)

        # The scanner picks 5: the hub's share and its promise drop with it.
        picked = await net.edge("S1").client.pick(hold.reservation_id, [(SKU, 5)])
        assert picked.reservation.lines[0].quantity_picked == 5
        assert picked.reservation.lines[0].quantity_held == 7
        await net.wait_balance(
            "S1",
            SKU,
            "pick synced",
            on_hand_sellable=45,
            reserved_hard=7,
            hub_share=15,
            hub_reserved=7,
            local_share=30,
        )
        assert (await net.check(SKU, 1)).lines[0].available_now == 8 + 10

        # Releasing the rest gives the 7 unpicked units back on both sides.
        await net.release(promise.promise_id)
        await net.wait_held("S1", promise.promise_id, SKU, 0)
        await net.wait_balance(
            "S1", SKU, "release synced", reserved_hard=0, hub_share=15, hub_reserved=0
        )
        assert (await net.check(SKU, 1)).lines[0].available_now == 15 + 10


# ----- 2. conflict: a count below what the hub promised ---------------------------------


async def test_count_below_promises_resources_lowest_priority_first(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with hub_network(tmp_path, nats_server.url, SITES) as net:
        # S1 is the nearer site, so both promises are sourced there.
        await net.setup_catalog([SKU, "Z"], lead_time_days={"S1": 1, "S2": 2})
        await net.stock("S1", SKU, received=50, recalled=20)
        await net.stock("S2", SKU, received=50, recalled=4)

        gold = await net.promise(SKU, 10, tier=TIER_GOLD, reference="ORD-GOLD")
        bronze = await net.promise(SKU, 8, tier=TIER_BRONZE, reference="ORD-BRONZE")
        assert allocations(gold) == {"S1": 10}
        assert allocations(bronze) == {"S1": 8}
        await net.confirm(gold.promise_id)
        await net.confirm(bronze.promise_id)
        await net.wait_held("S1", gold.promise_id, SKU, 10)
        await net.wait_held("S1", bronze.promise_id, SKU, 8)
        await net.wait_balance(
            "S1", SKU, "holds synced", reserved_hard=18, hub_share=20, hub_reserved=18
        )
        assert await net.decisions() == []

        async with watch_decisions(net.atp) as watch:
            # The stream is live before the count: a sentinel backorder (a SKU
            # nobody stocks) shows on it.
            sentinel = await net.promise("Z", 1, allow_partial=True)
            await watch.wait_for(
                lambda seen: any(d.promise_id == sentinel.promise_id for d in seen),
                "the sentinel backorder",
            )
            await net.release(sentinel.promise_id)
            sentinel_ids = {d.decision_id for d in watch.seen}

            # 50 -> 12 at S1: the free local share (30) absorbs 30 units, the
            # other 8 come off the hub's share (20 -> 12) which no longer covers
            # the 18 promised there: 6 units must move.
            await net.edge("S1").client.record_count(SKU, 12, reason="cycle count")
            seen = await watch.wait_for(
                lambda seen: (
                    sum(d.quantity for d in seen if d.promise_id == bronze.promise_id) >= 6
                ),
                "6 units of the bronze promise re-sourced or backordered",
            )

        streamed = [d for d in seen if d.decision_id not in sentinel_ids]
        assert [
            (d.promise_id, d.action, d.quantity, d.from_site_id, d.to_site_id) for d in streamed
        ] == [
            (bronze.promise_id, atp_pb2.DECISION_ACTION_RESOURCED, 4, "S1", "S2"),
            (bronze.promise_id, atp_pb2.DECISION_ACTION_BACKORDERED, 2, "S1", ""),
        ], [summary(d) for d in streamed]
        assert all(d.sku == SKU and d.reason for d in streamed)
        listed = [d for d in await net.decisions() if d.decision_id not in sentinel_ids]
        assert listed == streamed, "ListDecisions agrees with the stream"
        assert await net.decisions(gold.promise_id) == []

        # The hub's book: gold keeps its allocation; bronze moved and waits for 2.
        gold_now = await net.get_promise(gold.promise_id)
        bronze_now = await net.get_promise(bronze.promise_id)
        assert allocations(gold_now) == {"S1": 10}
        assert gold_now.lines[0].backordered == 0
        assert allocations(bronze_now) == {"S1": 2, "S2": 4}
        assert bronze_now.lines[0].backordered == 2
        assert bronze_now.state == atp_pb2.PROMISE_STATE_CONFIRMED

        # The edges follow: S1 released what moved (PromiseRelease), S2 holds it.
        await net.wait_held("S1", bronze.promise_id, SKU, 2)
        await net.wait_held("S2", bronze.promise_id, SKU, 4)
        await net.wait_held("S1", gold.promise_id, SKU, 10)
        released = sum(
            held_line.quantity_released
            for reservation in await net.hub_holds("S1", bronze.promise_id)
            for held_line in reservation.lines
        )
        assert released == 6
        await net.wait_balance(
            "S1", SKU, "S1 after the count", on_hand_sellable=12, reserved_hard=12,
            hub_share=12, hub_reserved=12, local_share=0,
        )  # fmt: skip
        await net.wait_balance(
            "S2", SKU, "S2 after re-sourcing", reserved_hard=4, hub_share=4, hub_reserved=4
        )


# ----- 3. backorders fill when share arrives ------------------------------------------------


async def test_backorders_fill_in_priority_order_when_share_arrives(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with hub_network(tmp_path, nats_server.url, SITES) as net:
        await net.setup_catalog([SKU])
        await net.stock("S1", SKU, received=20, recalled=5)
        await net.stock("S2", SKU, received=10, recalled=3)

        # The older, lower-priority promise takes all 8 and waits for 2; the
        # newer gold one gets nothing and waits for 4. Both are confirmed.
        bronze = await net.promise(SKU, 10, tier=TIER_BRONZE, allow_partial=True)
        gold = await net.promise(SKU, 4, tier=TIER_GOLD, allow_partial=True)
        assert allocations(bronze) == {"S1": 5, "S2": 3}
        assert bronze.lines[0].backordered == 2
        assert allocations(gold) == {}
        assert gold.lines[0].backordered == 4
        await net.confirm(bronze.promise_id)
        await net.confirm(gold.promise_id)
        await net.wait_held("S2", bronze.promise_id, SKU, 3)
        before = await net.decisions()
        assert [(d.promise_id, d.action, d.quantity) for d in before] == [
            (bronze.promise_id, atp_pb2.DECISION_ACTION_BACKORDERED, 2),
            (gold.promise_id, atp_pb2.DECISION_ACTION_BACKORDERED, 4),
        ], [summary(d) for d in before]

        # The watch replays what came after the bronze backorder, then streams.
        async with watch_decisions(net.atp, after_decision_id=before[0].decision_id) as watch:
            await watch.wait_for(
                lambda seen: [d.decision_id for d in seen] == [before[1].decision_id],
                "the replayed gold backorder",
            )
            # 5 more units reach the hub: received at S2, then recalled from it.
            await net.edge("S2").client.receive([(SKU, 5)])
            await net.wait_balance("S2", SKU, "receipt synced", on_hand_sellable=15)
            await net.hub.recall("S2", SKU, 5)
            seen = await watch.wait_for(
                lambda seen: (
                    sum(
                        d.quantity
                        for d in seen
                        if d.action == atp_pb2.DECISION_ACTION_BACKORDER_FILLED
                    )
                    >= 5
                ),
                "5 backordered units filled",
            )

        fills = [d for d in seen if d.action == atp_pb2.DECISION_ACTION_BACKORDER_FILLED]
        assert [(d.promise_id, d.quantity, d.to_site_id) for d in fills] == [
            (gold.promise_id, 4, "S2"),
            (bronze.promise_id, 1, "S2"),
        ], [summary(d) for d in seen]
        assert [d.decision_id for d in await net.decisions()][-2:] == [d.decision_id for d in fills]
        gold_now = await net.get_promise(gold.promise_id)
        bronze_now = await net.get_promise(bronze.promise_id)
        assert allocations(gold_now) == {"S2": 4}
        assert gold_now.lines[0].backordered == 0
        assert allocations(bronze_now) == {"S1": 5, "S2": 4}
        assert bronze_now.lines[0].backordered == 1
        # Confirmed promises are held at the edge for what was filled.
        await net.wait_held("S2", gold.promise_id, SKU, 4)
        await net.wait_held("S2", bronze.promise_id, SKU, 4)
        await net.wait_held("S1", bronze.promise_id, SKU, 5)
        await net.wait_balance("S2", SKU, "fills synced", hub_share=8, hub_reserved=8)


# ----- 4. release and expiry ---------------------------------------------------------------


async def test_release_frees_the_edge_hold_and_held_promises_expire(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with hub_network(tmp_path, nats_server.url, ("S1",)) as net:
        await net.setup_catalog([SKU])
        await net.stock("S1", SKU, received=20, recalled=10)

        promise = await net.promise(SKU, 6)
        await net.confirm(promise.promise_id)
        await net.wait_held("S1", promise.promise_id, SKU, 6)
        await net.wait_balance("S1", SKU, "hold synced", reserved_hard=6, hub_reserved=6)

        release_id = new_id()
        released = await net.release(promise.promise_id, release_id)
        assert released.state == atp_pb2.PROMISE_STATE_RELEASED
        assert await net.release(promise.promise_id, release_id) == released, "replay"
        again = await net.release(promise.promise_id)
        assert again.state == atp_pb2.PROMISE_STATE_RELEASED
        await net.wait_held("S1", promise.promise_id, SKU, 0)
        (hold,) = await net.hub_holds("S1", promise.promise_id)
        assert hold.state != common_pb2.RESERVATION_STATE_OPEN
        assert hold.lines[0].quantity_released == 6
        await net.wait_balance(
            "S1", SKU, "release synced", reserved_hard=0, hub_share=10, hub_reserved=0
        )

        # A held promise with a 1 s TTL expires and its units come back.
        short = await net.promise(SKU, 4, ttl_seconds=1)
        assert short.state == atp_pb2.PROMISE_STATE_HELD
        assert short.expires_at.ToMilliseconds() - short.created_at.ToMilliseconds() == 1000
        assert (await net.balance("S1", SKU)).hub_reserved == 4

        async def expired() -> bool:
            found = await net.get_promise(short.promise_id)
            return found.state == atp_pb2.PROMISE_STATE_EXPIRED

        await eventually(
            expired, timeout_seconds=EXPIRY_TIMEOUT_SECONDS, what="the promise expired"
        )
        assert (await net.balance("S1", SKU)).hub_reserved == 0
        assert (await net.check(SKU, 1)).lines[0].available_now == 10
        assert await net.hub_holds("S1", short.promise_id) == [], "never held at the edge"
        error = await rpc_error(
            net.atp.ConfirmPromise(
                atp_pb2.ConfirmPromiseRequest(request_id=new_id(), promise_id=short.promise_id),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        )
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION, error
        assert error.reason == "ERROR_REASON_PROMISE_CLOSED", error


# ----- 5. bad input --------------------------------------------------------------------------


async def test_bad_input_gets_the_documented_status_and_changes_nothing(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with hub_network(tmp_path, nats_server.url, ("S1",)) as net:
        await net.setup_catalog([SKU], units={"case": 12})
        await net.stock("S1", SKU, received=30, recalled=24)

        def check(*lines: atp_pb2.AtpLine) -> atp_pb2.CheckAvailabilityRequest:
            return atp_pb2.CheckAvailabilityRequest(
                lines=list(lines), channel=CHANNEL, customer_tier=TIER_GOLD
            )

        # Units of measure convert; a case is 12.
        result = (await net.atp.CheckAvailability(check(line(SKU, 2, "case")))).lines[0]
        assert (result.requested, result.available_now) == (24, 24)

        # Unknown SKU: NOT_FOUND, for reads and promises alike.
        reads_and_promises: tuple[Awaitable[object], ...] = (
            net.atp.CheckAvailability(check(line("NOPE", 1)), timeout=CALL_TIMEOUT_SECONDS),
            net.atp.Promise(promise_request("NOPE", 1), timeout=CALL_TIMEOUT_SECONDS),
        )
        for call in reads_and_promises:
            error = await rpc_error(call)
            assert error.code is grpc.StatusCode.NOT_FOUND, error
            assert error.reason == "ERROR_REASON_UNKNOWN_SKU", error
            assert error.metadata.get("sku") == "NOPE", error.metadata

        # Zero quantity and an unknown unit: INVALID_ARGUMENT naming the fields.
        error = await rpc_error(
            net.atp.CheckAvailability(
                check(line(SKU, 1, line_id="a"), line(SKU, 0, line_id="b")),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        )
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT, error
        assert error.reason == "ERROR_REASON_INVALID_QUANTITY", error
        assert [path for path, _ in error.field_violations] == ["lines[1].quantity"], error
        error = await rpc_error(
            net.atp.CheckAvailability(check(line(SKU, 1, "pallet")), timeout=CALL_TIMEOUT_SECONDS)
        )
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT, error
        assert error.reason == "ERROR_REASON_UNKNOWN_UNIT", error
        assert [path for path, _ in error.field_violations] == ["lines[0].unit"], error
        for bad in (promise_request(SKU, 0), promise_request(SKU, 1, unit="pallet")):
            error = await rpc_error(net.atp.Promise(bad, timeout=CALL_TIMEOUT_SECONDS))
            assert error.code is grpc.StatusCode.INVALID_ARGUMENT, error
            assert error.field_violations, error
            assert error.field_violations[0][0] in ("lines[0].quantity", "lines[0].unit"), error
        listed = await net.atp.ListPromises(atp_pb2.ListPromisesRequest())
        assert list(listed.promises) == [], "bad input held nothing"
        assert (await net.balance("S1", SKU)).hub_reserved == 0

        # Unknown promise: NOT_FOUND on every call that names one.
        naming_a_promise: tuple[Awaitable[object], ...] = (
            net.atp.GetPromise(atp_pb2.GetPromiseRequest(promise_id="nope")),
            net.atp.ConfirmPromise(
                atp_pb2.ConfirmPromiseRequest(request_id=new_id(), promise_id="nope")
            ),
            net.atp.ReleasePromise(
                atp_pb2.ReleasePromiseRequest(request_id=new_id(), promise_id="nope")
            ),
        )
        for call in naming_a_promise:
            error = await rpc_error(call)
            assert error.code is grpc.StatusCode.NOT_FOUND, error
            assert error.reason == "ERROR_REASON_UNKNOWN_PROMISE", error

        # Confirming a released promise: FAILED_PRECONDITION, PROMISE_CLOSED.
        request_id = new_id()
        promise = await net.promise(SKU, 1, unit="case", request_id=request_id)
        assert promise.lines[0].requested == 12
        assert allocations(promise) == {"S1": 12}
        await net.release(promise.promise_id)
        error = await rpc_error(
            net.atp.ConfirmPromise(
                atp_pb2.ConfirmPromiseRequest(request_id=new_id(), promise_id=promise.promise_id)
            )
        )
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION, error
        assert error.reason == "ERROR_REASON_PROMISE_CLOSED", error
        assert error.metadata.get("state") == "RELEASED", error.metadata

        # A request_id reused with another payload: ALREADY_EXISTS, nothing held.
        error = await rpc_error(
            net.atp.Promise(promise_request(SKU, 2, request_id=request_id, unit="case"))
        )
        assert error.code is grpc.StatusCode.ALREADY_EXISTS, error
        assert error.reason == "ERROR_REASON_REQUEST_ID_REUSED", error
        assert (await net.balance("S1", SKU)).hub_reserved == 0
        still = await net.get_promise(promise.promise_id)
        assert still.state == atp_pb2.PROMISE_STATE_RELEASED


# ----- 6. latency budget ---------------------------------------------------------------------


async def test_expired_deadline_is_deadline_exceeded_never_a_hang(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with hub_network(tmp_path, nats_server.url, ("S1",)) as net:
        await net.setup_catalog([SKU])
        await net.stock("S1", SKU, received=10, recalled=5)
        # Callers queued behind each other: the late ones end DEADLINE_EXCEEDED on time.
        single = atp_pb2.CheckAvailabilityRequest(lines=[line(SKU, 1)], channel=CHANNEL)

        async def within_budget() -> grpc.StatusCode:
            try:
                await net.atp.CheckAvailability(single, timeout=LOADED_DEADLINE_SECONDS)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        started = time.monotonic()
        codes = await asyncio.wait_for(
            asyncio.gather(*(within_budget() for _ in range(LOADED_CALLS))),
            CALL_TIMEOUT_SECONDS,
        )
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        assert time.monotonic() - started < LOADED_DEADLINE_SECONDS + LATE_SECONDS_MAX

        # A deadline that has passed (or will before any answer) on a big batch.
        batch = atp_pb2.CheckAvailabilityRequest(
            lines=[line(SKU, 1, line_id=str(index)) for index in range(500)],
            channel=CHANNEL,
            horizon_days=90,
        )
        for timeout_seconds in (0.0, 1e-4, 1e-3):
            started = time.monotonic()
            error = await rpc_error(
                asyncio.wait_for(
                    net.atp.CheckAvailability(batch, timeout=timeout_seconds),
                    CALL_TIMEOUT_SECONDS,
                )
            )
            assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED, (timeout_seconds, error)
            assert time.monotonic() - started < LATE_SECONDS_MAX, "answered late"

        # The hub is not wedged by the abandoned calls.
        answer = await net.atp.CheckAvailability(batch, timeout=CALL_TIMEOUT_SECONDS)
        assert [result.available_now for result in answer.lines] == [5] * 500


# ----- escrow: the hub never gives away share it promised ------------------------------------


async def test_grant_never_gives_away_promised_share(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with hub_network(tmp_path, nats_server.url, ("S1",)) as net:
        await net.setup_catalog([SKU])
        await net.stock("S1", SKU, received=30, recalled=20)
        promise = await net.promise(SKU, 12)
        assert allocations(promise) == {"S1": 12}

        error = await rpc_error(net.hub.grant("S1", SKU, 20))
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION, error
        assert error.reason == "ERROR_REASON_INSUFFICIENT_STOCK", error
        assert error.metadata.get("available") == "8", error.metadata
        balance = await net.balance("S1", SKU)
        assert (balance.hub_share, balance.hub_reserved) == (20, 12)


async def test_quota_request_never_takes_promised_share(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with hub_network(tmp_path, nats_server.url, ("S1",), quota_low_water=10) as net:
        await net.setup_catalog([SKU])
        await net.stock("S1", SKU, received=30, recalled=20)
        promise = await net.promise(SKU, 12)
        assert allocations(promise) == {"S1": 12}

        # The site reserves its whole local share; its free share (0) is below the
        # low-water mark, so it asks the hub for 10. The hub has 8 it has not promised.
        await net.edge("S1").client.reserve([(SKU, 10)], kind=common_pb2.RESERVATION_KIND_HARD)
        balance = await net.wait_for_balance(
            "S1", SKU, lambda balance: balance.local_share > 10, "the hub answered the request"
        )
        assert balance.hub_reserved <= balance.hub_share, balance
        assert (balance.hub_share, balance.local_share) == (12, 18), balance
        assert await net.decisions(promise.promise_id) == []
        assert allocations(await net.get_promise(promise.promise_id)) == {"S1": 12}


# ----- answer reuse never serves an outdated answer ----------------------------------


async def test_atp_follows_every_change_though_answers_are_reused(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """The hub reuses ATP answers (hub/domain/answer_cache.py); each kind of change
    below reaches the next answer at once: a promise, a shrink synced from an
    edge, a catalogue change and a release."""
    async with hub_network(tmp_path, nats_server.url, SITES) as net:
        await net.setup_catalog([SKU])
        await net.stock("S1", SKU, received=40, recalled=30)

        async def available() -> int:
            return (await net.check(SKU, 1)).lines[0].available_now

        assert [await available() for _ in range(3)] == [30, 30, 30]

        # A promise held at the hub: the very next answer counts it.
        promise = await net.promise(SKU, 5)
        assert await available() == 25

        # Shrink at the edge beyond its free local share (10): the hub's share
        # takes the rest (30 -> 26) once the entry is applied.
        balance = await net.balance("S1", SKU)
        await net.edge("S1").client.record_count(SKU, 26, reason="cycle count")
        await net.wait_for_balance(
            "S1", SKU, lambda b: b.as_of_sequence > balance.as_of_sequence, "count synced"
        )
        assert await available() == 26 - 5

        # A catalogue change: a safety stock of 6 at S1 (nothing kept outside the shares).
        await net.admin.UpsertRule(
            atp_pb2.UpsertRuleRequest(
                request_id=new_id(),
                rule=atp_pb2.Rule(
                    rule_id="safety-S1",
                    type=atp_pb2.RULE_TYPE_SAFETY_STOCK,
                    sku=SKU,
                    site_id="S1",
                    quantity=6,
                ),
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        assert await available() == 26 - 5 - 6

        await net.release(promise.promise_id)
        assert await available() == 26 - 6
