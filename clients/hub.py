"""Async SDK for the hub (``stockd.v1.HubInventoryService``).

Planners and admin tools read the hub's view of every site and move escrow
shares between the hub and a site's edge through this client. It keeps the
same three rules as ``EdgeClient``, with the same code (``clients._rpc``):
a grant or recall carries a request_id fixed before the first attempt and
reused on every retry; only UNAVAILABLE is retried, inside one deadline for
the whole call; every failure is a ``StockdError``.

The hub answers from what the sync stream has told it, so every read comes
with the site's ``SiteSyncStatus``: ``data_age_ms`` says how old the view is.
Methods return the response protos unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, TypedDict, TypeVar, Unpack

import grpc.aio

from clients._rpc import RpcClient, iterate_pages, request_id_or_new, sku_list
from stockd.v1 import hub_pb2, hub_pb2_grpc

if TYPE_CHECKING:
    from stockd.v1.hub_pb2_grpc import HubInventoryServiceAsyncStub

QuotaRequestT = TypeVar("QuotaRequestT", hub_pb2.GrantQuotaRequest, hub_pb2.RecallQuotaRequest)
ResponseT = TypeVar("ResponseT")


class CommandOptions(TypedDict, total=False):
    """Keyword options of the hub's mutating calls.

    Attributes:
        request_id: Idempotency key; a new UUID when absent or None.
        timeout_seconds: Deadline for the call; the client's default when
            absent or None.
    """

    request_id: str | None
    timeout_seconds: float | None


class HubClient(RpcClient["HubInventoryServiceAsyncStub"]):
    """Async client of the hub.

    Built, used and closed like ``EdgeClient``: the same constructor
    arguments, no I/O until the first call, ``async with HubClient(...) as
    client`` or ``close()``. Every call has one deadline covering all its
    retries. Grants and recalls are durable commands to an edge: when one
    still fails with UNAVAILABLE or DEADLINE_EXCEEDED its outcome is
    unknown, and calling again with ``request_id=error.request_id`` either
    sends it once or returns the stored reply.
    """

    # -- sites and balances -----------------------------------------------------

    async def list_sites(
        self, *, timeout_seconds: float | None = None
    ) -> hub_pb2.ListSitesResponse:
        """Returns every site the hub has heard from, in site id order, with its sync state."""
        request = hub_pb2.ListSitesRequest()
        return await self._unary(self._get_stub().ListSites, request, timeout_seconds)

    async def get_site_balances(
        self,
        site_id: str,
        skus: Sequence[str] = (),
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout_seconds: float | None = None,
    ) -> hub_pb2.GetSiteBalancesResponse:
        """Returns the hub's view of a site's named SKUs, or one page of all its SKUs.

        A named SKU the hub knows nothing about comes back with zero
        balances, not an error.

        Args:
            site_id: The site.
            skus: SKUs to report; empty pages through every SKU of the site.
            page_size: With no SKUs, at most this many; 0 means the server default.
            page_token: With no SKUs, the token from a previous page.
            timeout_seconds: Deadline for the call; the client's default when None.

        Returns:
            The balances and the site's sync state (how old they are).

        Raises:
            StockdError: NOT_FOUND / ERROR_REASON_UNKNOWN_SITE when the hub
                has never heard from the site; any other refusal.
        """
        request = hub_pb2.GetSiteBalancesRequest(
            site_id=site_id, skus=sku_list(skus), page_size=page_size, page_token=page_token
        )
        return await self._unary(self._get_stub().GetSiteBalances, request, timeout_seconds)

    def iterate_site_balances(
        self,
        site_id: str,
        *,
        page_size: int = 0,
        limit: int | None = None,
        timeout_seconds: float | None = None,
    ) -> AsyncGenerator[hub_pb2.SiteBalance, None]:
        """Yields the balance of every SKU of a site in SKU order, following page tokens.

        At most ``limit`` when given; ``timeout_seconds`` is the deadline of
        each page, not of the whole walk.
        """
        return iterate_pages(
            functools.partial(self.get_site_balances, site_id),
            lambda page: page.balances,
            page_size=page_size,
            limit=limit,
            timeout_seconds=timeout_seconds,
        )

    # -- escrow shares ------------------------------------------------------------

    async def grant_quota(
        self, site_id: str, sku: str, quantity: int, **options: Unpack[CommandOptions]
    ) -> hub_pb2.GrantQuotaResponse:
        """Moves hub share of a site to that site's edge.

        The units leave the hub share at once and are ``in_flight`` until the
        edge applies the command; only then do they count in its local share.

        Args:
            site_id: The site.
            sku: The SKU.
            quantity: Units in base units; at least 1 and at most the hub's
                free share of the SKU at the site.
            **options: ``request_id`` and ``timeout_seconds`` (see ``CommandOptions``).

        Returns:
            The command number sent to the edge and the balance after the grant.

        Raises:
            StockdError: FAILED_PRECONDITION / ERROR_REASON_INSUFFICIENT_STOCK
                with metadata ``requested`` and ``available`` when the hub
                holds less; NOT_FOUND / ERROR_REASON_UNKNOWN_SITE; any other
                refusal.
        """
        return await self._quota_command(
            self._get_stub().GrantQuota, hub_pb2.GrantQuotaRequest, site_id, sku, quantity, options
        )

    async def recall_quota(
        self, site_id: str, sku: str, quantity: int, **options: Unpack[CommandOptions]
    ) -> hub_pb2.RecallQuotaResponse:
        """Asks a site's edge to return up to ``quantity`` units of its free local share.

        The edge returns what is free when it applies the command, so the
        reply is only the command number; the hub share grows when the
        edge's return reaches the hub. ``options`` as for ``grant_quota``.
        """
        return await self._quota_command(
            self._get_stub().RecallQuota,
            hub_pb2.RecallQuotaRequest,
            site_id,
            sku,
            quantity,
            options,
        )

    # -- plumbing -----------------------------------------------------------------

    def _new_stub(self, channel: grpc.aio.Channel) -> HubInventoryServiceAsyncStub:
        return hub_pb2_grpc.HubInventoryServiceStub(channel)

    async def _quota_command(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[QuotaRequestT, ResponseT],
        request_type: type[QuotaRequestT],
        site_id: str,
        sku: str,
        quantity: int,
        options: CommandOptions,
    ) -> ResponseT:
        # Grant and recall requests have the same fields; only the RPC differs.
        unknown = options.keys() - CommandOptions.__optional_keys__
        if unknown:
            # Typed callers never get here; a misspelt request_id must not
            # silently become a fresh one and apply the command twice.
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
        request_id = request_id_or_new(options.get("request_id"))
        request = request_type(request_id=request_id, site_id=site_id, sku=sku, quantity=quantity)
        return await self._unary(
            method, request, options.get("timeout_seconds"), request_id=request_id
        )
