"""Helpers for the hub ATP tests: a hub and its edges as real processes (built on
`sync_helpers`), the OMS-facing stubs (HubAtpService, HubAdminService), the
master data an OMS walk-through needs, and a recorder of the WatchDecisions stream.

Every wait is a condition with a deadline (`eventually`), never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import grpc
import grpc.aio
import pytest
from google.protobuf import timestamp_pb2

from stockd.v1 import atp_pb2, atp_pb2_grpc, common_pb2, hub_pb2
from tests.integration.conftest import eventually
from tests.integration.sync_helpers import (
    CALL_TIMEOUT_SECONDS,
    EdgeProcess,
    HubProcess,
    ProcessGroup,
    new_id,
)

if TYPE_CHECKING:
    from stockd.v1.atp_pb2_grpc import HubAdminServiceAsyncStub, HubAtpServiceAsyncStub

CHANNEL: Final = "web"
POOL_ID: Final = "web-pool"
TIER_GOLD: Final = "gold"
TIER_BRONZE: Final = "bronze"
CHANNEL_PRIORITY: Final = 1
GOLD_PRIORITY: Final = 10
BRONZE_PRIORITY: Final = 0
# Sync through NATS takes milliseconds here; the bound only turns a hang into a failure.
SYNC_TIMEOUT_SECONDS: Final = 20.0
# The hub sweeps expired promises every second.
EXPIRY_TIMEOUT_SECONDS: Final = 10.0


# ----- the network --------------------------------------------------------------


@dataclass
class HubNetwork:
    """One hub, its edges and the OMS's stubs on the hub."""

    hub: HubProcess
    edges: dict[str, EdgeProcess]
    atp: HubAtpServiceAsyncStub
    admin: HubAdminServiceAsyncStub

    def edge(self, site_id: str) -> EdgeProcess:
        return self.edges[site_id]

    # -- master data ---------------------------------------------------------------

    async def setup_catalog(
        self,
        skus: Sequence[str],
        *,
        lead_time_days: Mapping[str, int] | None = None,
        units: Mapping[str, int] | None = None,
        pool_sites: Sequence[str] = (),
    ) -> None:
        """Items, sites (with lead times), one pool serving CHANNEL over
        `pool_sites` (default: every edge's site, in order), and priorities
        (gold above bronze)."""
        for sku in skus:
            await self.admin.UpsertHubItem(
                atp_pb2.UpsertHubItemRequest(
                    request_id=new_id(),
                    item=atp_pb2.HubItem(
                        sku=sku,
                        base_unit="each",
                        units=[
                            common_pb2.UnitConversion(unit=unit, base_units_per_unit=factor)
                            for unit, factor in (units or {}).items()
                        ],
                    ),
                ),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        for site_id, days in (lead_time_days or {}).items():
            await self.admin.UpsertSite(
                atp_pb2.UpsertSiteRequest(
                    request_id=new_id(),
                    site=atp_pb2.Site(
                        site_id=site_id, type=atp_pb2.SITE_TYPE_DC, lead_time_days=days
                    ),
                ),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        await self.admin.UpsertPool(
            atp_pb2.UpsertPoolRequest(
                request_id=new_id(),
                pool=atp_pb2.Pool(
                    pool_id=POOL_ID,
                    site_ids=list(pool_sites or self.edges),
                    channels=[CHANNEL],
                ),
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        await self.admin.SetPriorities(
            atp_pb2.SetPrioritiesRequest(
                request_id=new_id(),
                channels=[atp_pb2.Priority(name=CHANNEL, priority=CHANNEL_PRIORITY)],
                customer_tiers=[
                    atp_pb2.Priority(name=TIER_GOLD, priority=GOLD_PRIORITY),
                    atp_pb2.Priority(name=TIER_BRONZE, priority=BRONZE_PRIORITY),
                ],
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    # -- the hub's view of a site ---------------------------------------------------

    async def balance(self, site_id: str, sku: str) -> hub_pb2.SiteBalance:
        found = (await self.hub.balances(site_id, [sku])).get(sku)
        assert found is not None, f"the hub has no balance of {sku} at {site_id}"
        return found

    async def wait_balance(
        self,
        site_id: str,
        sku: str,
        what: str,
        **expected: int,
    ) -> None:
        """Waits until the hub's SiteBalance of (site, sku) has every expected field."""

        def matches(balance: hub_pb2.SiteBalance) -> bool:
            return all(int(getattr(balance, name)) == value for name, value in expected.items())

        await self.wait_for_balance(site_id, sku, matches, f"{what}: {expected}")

    async def wait_for_balance(
        self,
        site_id: str,
        sku: str,
        condition: Callable[[hub_pb2.SiteBalance], bool],
        what: str,
    ) -> hub_pb2.SiteBalance:
        """Waits until the hub's SiteBalance of (site, sku) satisfies `condition`."""
        last: list[hub_pb2.SiteBalance] = []

        async def holds() -> bool:
            try:
                balance = (await self.hub.balances(site_id, [sku])).get(sku)
            except grpc.aio.AioRpcError as error:
                # Before the hub heard from the site it does not know it.
                if error.code() is grpc.StatusCode.NOT_FOUND:
                    return False
                raise
            if balance is None:
                return False
            last[:] = [balance]
            return condition(balance)

        try:
            await eventually(
                holds,
                timeout_seconds=SYNC_TIMEOUT_SECONDS,
                what=f"hub view of {sku}@{site_id}: {what}",
            )
        except pytest.fail.Exception as failure:
            shown = " ".join(str(last[0]).split()) if last else "no balance"
            pytest.fail(f"{failure.msg}; last seen: {shown}")
        return last[0]

    async def stock(self, site_id: str, sku: str, *, received: int, recalled: int) -> None:
        """Receives at the edge, waits for the hub to see it, then recalls share
        (the edge returns free local share) and waits until the hub owns it."""
        edge = self.edge(site_id)
        await edge.client.upsert_item(sku)
        receipt = await edge.client.receive([(sku, received)])
        sequence = receipt.events[-1].sequence
        before = await self.wait_for_balance(
            site_id,
            sku,
            lambda balance: balance.as_of_sequence >= sequence,
            f"receipt (sequence {sequence}) synced",
        )
        await self.hub.recall(site_id, sku, recalled)
        await self.wait_balance(
            site_id,
            sku,
            "recall applied",
            hub_share=before.hub_share + recalled,
            local_share=before.local_share - recalled,
        )

    # -- the edge's side of hub promises --------------------------------------------

    async def hub_holds(self, site_id: str, promise_id: str) -> list[common_pb2.Reservation]:
        """The edge's reservations made for a hub promise (any state)."""
        response = await self.edge(site_id).client.list_reservations(page_size=1000)
        return [r for r in response.reservations if r.hub_promise_id == promise_id]

    async def held_for(self, site_id: str, promise_id: str, sku: str) -> int:
        """Units the edge holds, in OPEN hard reservations, for a hub promise."""
        held = 0
        for reservation in await self.hub_holds(site_id, promise_id):
            if (
                reservation.state == common_pb2.RESERVATION_STATE_OPEN
                and reservation.kind == common_pb2.RESERVATION_KIND_HARD
            ):
                held += sum(line.quantity_held for line in reservation.lines if line.sku == sku)
        return held

    async def wait_held(self, site_id: str, promise_id: str, sku: str, quantity: int) -> None:
        last = [-1]

        async def held() -> bool:
            last[0] = await self.held_for(site_id, promise_id, sku)
            return last[0] == quantity

        await eventually(
            held,
            timeout_seconds=SYNC_TIMEOUT_SECONDS,
            what=f"edge {site_id} holds {quantity} of {sku} for promise {promise_id}"
            f" (last {last[0]})",
        )

    # -- promises -------------------------------------------------------------------

    async def promise(
        self,
        sku: str,
        quantity: int,
        *,
        tier: str = TIER_GOLD,
        request_id: str | None = None,
        allow_partial: bool = False,
        ttl_seconds: int = 0,
        reference: str = "",
        unit: str = "",
    ) -> atp_pb2.Promise:
        response = await self.atp.Promise(
            promise_request(
                sku,
                quantity,
                tier=tier,
                request_id=request_id,
                allow_partial=allow_partial,
                ttl_seconds=ttl_seconds,
                reference=reference,
                unit=unit,
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return response.promise

    async def confirm(self, promise_id: str, request_id: str | None = None) -> atp_pb2.Promise:
        response = await self.atp.ConfirmPromise(
            atp_pb2.ConfirmPromiseRequest(request_id=request_id or new_id(), promise_id=promise_id),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return response.promise

    async def release(self, promise_id: str, request_id: str | None = None) -> atp_pb2.Promise:
        response = await self.atp.ReleasePromise(
            atp_pb2.ReleasePromiseRequest(
                request_id=request_id or new_id(), promise_id=promise_id, reason="test"
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return response.promise

    async def get_promise(self, promise_id: str) -> atp_pb2.Promise:
        response = await self.atp.GetPromise(
            atp_pb2.GetPromiseRequest(promise_id=promise_id), timeout=CALL_TIMEOUT_SECONDS
        )
        return response.promise

    async def check(
        self,
        sku: str,
        quantity: int,
        *,
        tier: str = TIER_GOLD,
        horizon_days: int = 0,
    ) -> atp_pb2.CheckAvailabilityResponse:
        return await self.atp.CheckAvailability(
            atp_pb2.CheckAvailabilityRequest(
                lines=[line(sku, quantity)],
                channel=CHANNEL,
                customer_tier=tier,
                horizon_days=horizon_days,
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    async def decisions(self, promise_id: str = "") -> list[atp_pb2.AllocationDecision]:
        response = await self.atp.ListDecisions(
            atp_pb2.ListDecisionsRequest(promise_id=promise_id, page_size=1000),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return list(response.decisions)


async def _edge(
    group: ProcessGroup, site_id: str, nats_url: str, quota_low_water: int
) -> EdgeProcess:
    """An edge like `ProcessGroup.edge`, optionally asking the hub for quota when
    its free local share falls below `quota_low_water`."""
    if not quota_low_water:
        return await group.edge(site_id, nats_url)
    edge = EdgeProcess(group.work_dir, site_id, nats_url)
    edge.config_path.write_text(
        edge.config_path.read_text().replace(
            "quota_low_water = 0", f"quota_low_water = {quota_low_water}"
        )
    )
    group.processes.append(edge)
    await edge.start()
    return edge


@contextlib.asynccontextmanager
async def hub_network(
    work_dir: Path, nats_url: str, site_ids: Sequence[str], *, quota_low_water: int = 0
) -> AsyncIterator[HubNetwork]:
    """Starts a hub and one edge per site (in parallel); stops every process in
    `finally` (through ProcessGroup) and closes the OMS channel."""
    async with ProcessGroup(work_dir) as group:
        hub = await group.hub(nats_url)
        edges = await asyncio.gather(
            *(_edge(group, site_id, nats_url, quota_low_water) for site_id in site_ids)
        )
        channel = grpc.aio.insecure_channel(hub.target)
        try:
            yield HubNetwork(
                hub=hub,
                edges=dict(zip(site_ids, edges, strict=True)),
                atp=atp_pb2_grpc.HubAtpServiceStub(channel),
                admin=atp_pb2_grpc.HubAdminServiceStub(channel),
            )
        finally:
            await channel.close(grace=None)


# ----- requests and answers ------------------------------------------------------------


def line(sku: str, quantity: int, unit: str = "", line_id: str = "1") -> atp_pb2.AtpLine:
    return atp_pb2.AtpLine(line_id=line_id, sku=sku, quantity=quantity, unit=unit)


def promise_request(
    sku: str,
    quantity: int,
    *,
    tier: str = TIER_GOLD,
    request_id: str | None = None,
    allow_partial: bool = False,
    ttl_seconds: int = 0,
    reference: str = "",
    unit: str = "",
) -> atp_pb2.PromiseRequest:
    return atp_pb2.PromiseRequest(
        request_id=request_id or new_id(),
        lines=[line(sku, quantity, unit)],
        channel=CHANNEL,
        customer_tier=tier,
        ttl_seconds=ttl_seconds,
        allow_partial=allow_partial,
        reference=reference,
    )


def allocations(promise: atp_pb2.Promise) -> dict[str, int]:
    """Site -> units the promise's (only) line holds there."""
    assert len(promise.lines) == 1, promise
    held: dict[str, int] = {}
    for allocation in promise.lines[0].allocations:
        held[allocation.site_id] = held.get(allocation.site_id, 0) + allocation.quantity
    return held


def explained(
    result: atp_pb2.AtpLineResult, kind: atp_pb2.ExplanationKind.ValueType
) -> list[atp_pb2.Explanation]:
    return [explanation for explanation in result.explanations if explanation.kind == kind]


def timestamp_ms(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


# ----- WatchDecisions ---------------------------------------------------------------------


@dataclass
class DecisionWatch:
    """Reads a WatchDecisions stream in the background into `seen`."""

    call: grpc.aio.UnaryStreamCall[atp_pb2.WatchDecisionsRequest, atp_pb2.WatchDecisionsResponse]
    seen: list[atp_pb2.AllocationDecision] = field(default_factory=list)
    error: BaseException | None = None
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.seen.append(response.decision)
        except grpc.aio.AioRpcError as error:
            if error.code() is not grpc.StatusCode.CANCELLED:
                self.error = error

    async def wait_for(
        self,
        condition: Callable[[list[atp_pb2.AllocationDecision]], bool],
        what: str,
    ) -> list[atp_pb2.AllocationDecision]:
        def holds() -> bool:
            assert self.error is None, f"WatchDecisions failed: {self.error}"
            return condition(self.seen)

        await eventually(
            holds,
            timeout_seconds=SYNC_TIMEOUT_SECONDS,
            what=f"WatchDecisions shows {what} (seen {[summary(d) for d in self.seen]})",
        )
        return list(self.seen)

    async def close(self) -> None:
        self.call.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.asynccontextmanager
async def watch_decisions(
    stub: HubAtpServiceAsyncStub, after_decision_id: int = 0
) -> AsyncIterator[DecisionWatch]:
    watch = DecisionWatch(
        stub.WatchDecisions(atp_pb2.WatchDecisionsRequest(after_decision_id=after_decision_id))
    )
    watch.start()
    try:
        yield watch
    finally:
        await watch.close()


def summary(decision: atp_pb2.AllocationDecision) -> str:
    return (
        f"#{decision.decision_id} {atp_pb2.DecisionAction.Name(decision.action)} "
        f"{decision.quantity} {decision.sku} {decision.from_site_id or '-'}->"
        f"{decision.to_site_id or '-'} promise {decision.promise_id[:8]}"
    )
