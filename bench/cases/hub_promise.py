"""hub_promise: many callers promising ONE hot SKU, and proof that none is promised twice.

Same hub and catalogue as hub_atp. Every call is a Promise of one unit of
``HOT_SKU`` (stocked at ``HOT_SITES`` sites with a hub share no run can
exhaust), each with a fresh request_id, all callers contending for the same
(site, SKU) rows: the OMS flash-sale case, where the peer to beat (a
``SELECT ... FOR UPDATE`` reservation in PostgreSQL) manages 660 txn/s with a
p99 of 450 ms. ``ops_per_s`` is acknowledged promises per second; the ratio
is to grpc_echo at the same concurrency (target: at least 0.5).

Then a sell-out: ``SELLOUT_SKU`` (a small share) is promised by as many
callers as the highest concurrency until each is refused, so the contention
runs into the limit.

Oversell check, on every run of the case (figures cover the whole case,
warm-up included): the hot SKU's and the sell-out SKU's hub_share and
hub_reserved per site are read from the hub's database before the hub starts
and after it stops; acknowledged promises are counted. ``oversell`` is, per
SKU, the largest of: units held at some site beyond its hub share, and
acknowledged or held units beyond the free share before the case; summed
over both SKUs. It must be 0. ``promised`` (OK replies) and ``held_at_hub``
(increase of hub_reserved in the database) must agree: a difference means an
acknowledged promise was lost or a promise was held without its reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.cases import _hub_fixture as fixture
from bench.cases import grpc_echo
from bench.cases.edge_reserve import echo_baselines
from bench.channels import describe_error, raw_unary
from bench.config import CALL_TIMEOUT_SECONDS
from bench.context import CaseContext
from bench.errors import LoadError, TargetError
from bench.results import ParamValue, Run, with_baseline
from stockd.v1 import atp_pb2

CASE_NAME = "hub_promise"
# Longer than any run, so no promise expires (and frees share) mid-case.
PROMISE_TTL_SECONDS = 24 * 3600
# Slack beyond the sell-out share each caller may try before it is stopped.
SELLOUT_SLACK_CALLS = 100

# (hub_share, hub_reserved) per site.
Shares = dict[str, tuple[int, int]]


def read_shares(db_path: Path, sku: str) -> Shares:
    """Reads one SKU's shares per site from the hub's database (hub not running)."""
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        return {
            str(site): (int(share), int(reserved))
            for site, share, reserved in connection.execute(
                "SELECT site_id, hub_share, hub_reserved FROM site_balances WHERE sku = ?",
                (sku,),
            )
        }


@dataclass(frozen=True, slots=True)
class Accounting:
    """One SKU's promises checked against its shares."""

    free_before: int
    acknowledged: int
    held: int
    oversell: int

    @classmethod
    def of(cls, before: Shares, after: Shares, acknowledged: int) -> Accounting:
        free_before = sum(max(0, share - reserved) for share, reserved in before.values())
        held = sum(reserved for _, reserved in after.values()) - sum(
            reserved for _, reserved in before.values()
        )
        beyond_site = sum(max(0, reserved - share) for share, reserved in after.values())
        oversell = max(0, beyond_site, acknowledged - free_before, held - free_before)
        return cls(free_before, acknowledged, held, oversell)


def promise_request(sku: str) -> bytes:
    """One unit of ``sku``, all or nothing, with a fresh request_id."""
    return atp_pb2.PromiseRequest(
        request_id=uuid.uuid4().hex,
        lines=[atp_pb2.AtpLine(line_id="1", sku=sku, quantity=1)],
        channel=fixture.CHANNEL,
        ttl_seconds=PROMISE_TTL_SECONDS,
        reference="bench",
    ).SerializeToString()


async def sell_out(hub: fixture.HubProcess, callers: int, share: int) -> int:
    """Promises ``SELLOUT_SKU`` from ``callers`` callers until each is refused.

    Returns the promises acknowledged.

    Raises:
        LoadError: A caller was never refused (the share never ran out).
        TargetError: A call failed other than by running out of stock.
    """
    promise = raw_unary(hub.channel, fixture.PROMISE_METHOD_PATH)
    acknowledged = 0

    async def caller() -> None:
        nonlocal acknowledged
        for _ in range(share + SELLOUT_SLACK_CALLS):
            try:
                await promise(promise_request(fixture.SELLOUT_SKU), timeout=CALL_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.FAILED_PRECONDITION:
                    return  # sold out
                raise TargetError(hub.target, "sell-out Promise", describe_error(error)) from None
            acknowledged += 1
        raise LoadError(f"{fixture.SELLOUT_SKU} never sold out")

    await asyncio.gather(*(caller() for _ in range(callers)))
    return acknowledged


async def available_now(hub: fixture.HubProcess, skus: list[str]) -> list[int]:
    """The hub's live ATP of each SKU (the in-memory view after the promises).

    Raises:
        TargetError: The call failed.
    """
    check = raw_unary(hub.channel, fixture.CHECK_METHOD_PATH)
    try:
        reply = await check(fixture.check_request(skus), timeout=CALL_TIMEOUT_SECONDS)
    except grpc.aio.AioRpcError as error:
        raise TargetError(hub.target, "CheckAvailability", describe_error(error)) from None
    answer = atp_pb2.CheckAvailabilityResponse.FromString(reply)
    return [line.available_now for line in answer.lines]


def _params(hot: Accounting, sellout: Accounting, live_mismatch: int) -> Mapping[str, ParamValue]:
    return {
        "hot_share": hot.free_before,
        "promised": hot.acknowledged,
        "held_at_hub": hot.held,
        "sellout_share": sellout.free_before,
        "sellout_promised": sellout.acknowledged,
        "atp_mismatch": live_mismatch,
        "oversell": hot.oversell + sellout.oversell,
    }


async def run(context: CaseContext) -> list[Run]:
    """Promises the hot SKU at each concurrency, sells out the other, checks the books."""
    config = context.config
    async with fixture.seeded_catalogue(context, CASE_NAME) as seeded:
        hot_before, sellout_before = await asyncio.gather(
            asyncio.to_thread(read_shares, seeded.db_path, fixture.HOT_SKU),
            asyncio.to_thread(read_shares, seeded.db_path, fixture.SELLOUT_SKU),
        )
        async with fixture.hub_process(context, seeded, CASE_NAME) as hub:
            tally = fixture.CallTally()
            call = fixture.unary_load(
                hub, fixture.PROMISE_METHOD_PATH, lambda: promise_request(fixture.HOT_SKU), tally
            )
            runs = await fixture.run_levels(
                context,
                CASE_NAME,
                hub,
                call,
                tally,
                {"lines_per_request": 1, **seeded.params(), **hub.params()},
            )
            sellout_free = sum(max(0, share - held) for share, held in sellout_before.values())
            sold = await sell_out(hub, max(config.concurrency_levels), sellout_free)
            hot_left, sellout_left = await available_now(
                hub, [fixture.HOT_SKU, fixture.SELLOUT_SKU]
            )
            rss_mb, _ = hub.memory_mb()
        hot_after, sellout_after = await asyncio.gather(
            asyncio.to_thread(read_shares, seeded.db_path, fixture.HOT_SKU),
            asyncio.to_thread(read_shares, seeded.db_path, fixture.SELLOUT_SKU),
        )
    hot = Accounting.of(hot_before, hot_after, tally.ok)
    sellout = Accounting.of(sellout_before, sellout_after, sold)
    live_mismatch = abs(hot.free_before - hot.acknowledged - hot_left) + abs(
        sellout.free_before - sellout.acknowledged - sellout_left
    )
    params = _params(hot, sellout, live_mismatch)
    context.console.print(
        f"{CASE_NAME}: hot SKU {hot.acknowledged:,} promises acknowledged, {hot.held:,} held "
        f"in the hub's database, ATP after {hot_left:,} of {hot.free_before:,}; sell-out "
        f"{sellout.acknowledged} acknowledged / {sellout.held} held of {sellout.free_before} "
        f"(ATP after {sellout_left}); oversell {params['oversell']}; hub RSS after "
        f"{rss_mb:,.0f} MB",
        markup=False,
    )
    if params["oversell"] or hot.held != hot.acknowledged or sellout.held != sellout.acknowledged:
        context.console.print(f"[red]{CASE_NAME}: promise accounting does not add up[/red]")
    baselines = await echo_baselines(context)
    return [
        with_baseline(
            {**measured, "params": {**measured["params"], **params}},
            grpc_echo.CASE_NAME,
            baselines[int(measured["params"]["concurrency"])],
        )
        for measured in runs
    ]
