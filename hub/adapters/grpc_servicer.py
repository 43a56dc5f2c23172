"""gRPC servicer for stockd.v1.HubInventoryService: answers from the in-memory view."""

from __future__ import annotations

import time
from collections import Counter

from hub.domain.view import Command, SiteBalance, SiteState
from hub.service.engine import HubEngine
from server.domain import limits, paging
from server.domain.errors import UnknownSite, Violations, check_request_id
from server.runtime.auth import Authenticator
from server.runtime.calls import Call, unary
from server.sync.wire import timestamp
from stockd.v1 import hub_pb2, hub_pb2_grpc


def status_to_proto(state: SiteState, now_ms: int) -> hub_pb2.SiteSyncStatus:
    message = hub_pb2.SiteSyncStatus(
        site_id=state.site_id,
        applied_sequence=state.applied_sequence,
        sync_lag_ms=state.last_lag_ms,
        data_age_ms=max(0, now_ms - state.last_applied_ms) if state.last_applied_ms else 0,
        known_sequence=state.known_sequence,
        checksums_matched=state.checksums_matched,
        drift_detected=state.drift_detected,
        repairing=state.repairing,
        next_command_sequence=state.next_command_sequence,
    )
    if state.last_event_ms:
        message.last_event_at.CopyFrom(timestamp(state.last_event_ms))
    if state.last_applied_ms:
        message.last_applied_at.CopyFrom(timestamp(state.last_applied_ms))
    return message


def balance_to_proto(balance: SiteBalance) -> hub_pb2.SiteBalance:
    return hub_pb2.SiteBalance(
        site_id=balance.site_id,
        sku=balance.sku,
        on_hand_sellable=balance.sellable,
        on_hand_total=balance.total,
        reserved_soft=balance.reserved_soft,
        reserved_hard=balance.reserved_hard,
        local_share=balance.local_share,
        hub_share=balance.hub_share,
        in_flight=balance.in_flight,
        as_of_sequence=balance.as_of_sequence,
        hub_reserved=balance.hub_reserved,
    )


def _check_write(request_id: str, site_id: str, sku: str) -> None:
    violations = Violations()
    check_request_id(request_id, violations)
    if not site_id:
        violations.add("site_id", "must not be empty")
    if not sku:
        violations.add("sku", "must not be empty")
    violations.raise_if_any()


class HubServicer(hub_pb2_grpc.HubInventoryServiceServicer):
    def __init__(self, engine: HubEngine, auth: Authenticator) -> None:
        self.engine = engine
        self.auth = auth
        self.rpc_counts: Counter[tuple[str, str]] = Counter()

    def _site(self, site_id: str) -> SiteState:
        state = self.engine.view.sites.get(site_id)
        if state is None:
            raise UnknownSite(f"the hub has not heard from site {site_id!r}",
                           metadata={"site_id": site_id})  # fmt: skip
        return state

    @unary("ListSites", mutating=False)
    async def ListSites(
        self, request: hub_pb2.ListSitesRequest, call: Call
    ) -> hub_pb2.ListSitesResponse:
        await self.engine.settled()
        now_ms = time.time_ns() // 1_000_000
        return hub_pb2.ListSitesResponse(
            sites=[
                status_to_proto(self.engine.view.sites[site], now_ms)
                for site in sorted(self.engine.view.sites)
            ]
        )

    @unary("GetSiteBalances", mutating=False)
    async def GetSiteBalances(
        self, request: hub_pb2.GetSiteBalancesRequest, call: Call
    ) -> hub_pb2.GetSiteBalancesResponse:
        await self.engine.settled()
        state = self._site(request.site_id)
        view = self.engine.view
        now_ms = time.time_ns() // 1_000_000
        if request.skus:
            balances = [
                view.balances.get((request.site_id, sku), SiteBalance(request.site_id, sku))
                for sku in request.skus[: limits.SKUS_PER_QUERY_MAX]
            ]
            return hub_pb2.GetSiteBalancesResponse(
                balances=[balance_to_proto(b) for b in balances],
                status=status_to_proto(state, now_ms),
            )
        size = paging.page_size(request.page_size)
        query = ("site_balances", request.site_id)
        after = paging.decode(request.page_token, query)
        skus = sorted(view.by_site.get(request.site_id, {}))
        if isinstance(after, str):
            skus = [sku for sku in skus if sku > after]
        page = skus[:size]
        return hub_pb2.GetSiteBalancesResponse(
            balances=[balance_to_proto(view.balances[(request.site_id, sku)]) for sku in page],
            status=status_to_proto(state, now_ms),
            next_page_token=paging.encode(page[-1], query) if len(skus) > size else "",
        )

    @unary("GrantQuota", mutating=True)
    async def GrantQuota(
        self, request: hub_pb2.GrantQuotaRequest, call: Call
    ) -> hub_pb2.GrantQuotaResponse:
        _check_write(request.request_id, request.site_id, request.sku)
        self._site(request.site_id)

        def render(command: Command, balance: SiteBalance) -> bytes:
            return hub_pb2.GrantQuotaResponse(
                command_sequence=command.command_sequence, balance=balance_to_proto(balance)
            ).SerializeToString()

        data = await self.engine.grant(
            request.request_id,
            request.SerializeToString(deterministic=True),
            request.site_id,
            request.sku,
            request.quantity,
            render,
        )
        return hub_pb2.GrantQuotaResponse.FromString(data)

    @unary("RecallQuota", mutating=True)
    async def RecallQuota(
        self, request: hub_pb2.RecallQuotaRequest, call: Call
    ) -> hub_pb2.RecallQuotaResponse:
        _check_write(request.request_id, request.site_id, request.sku)
        self._site(request.site_id)

        def render(command: Command) -> bytes:
            return hub_pb2.RecallQuotaResponse(
                command_sequence=command.command_sequence
            ).SerializeToString()

        data = await self.engine.recall(
            request.request_id,
            request.SerializeToString(deterministic=True),
            request.site_id,
            request.sku,
            request.quantity,
            render,
        )
        return hub_pb2.RecallQuotaResponse.FromString(data)
