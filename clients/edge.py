"""Async SDK for a site's edge agent (``stockd.v1.EdgeInventoryService``).

Scanner guns, the WMS and admin tools call the edge agent through this
client rather than raw stubs so that three rules are kept everywhere:

* every mutating call carries a request_id, generated once and reused on
  every retry, so a retry can never apply a change twice;
* only UNAVAILABLE is retried (the server wrote nothing or the reply was
  lost; the request_id makes either case safe), with capped exponential
  backoff and full jitter, inside one deadline for the whole call;
* every failure surfaces as one exception type, ``StockdError``, carrying
  the server's machine-readable reason and metadata.

Methods take plain keyword arguments and return the response protos
unchanged, so nothing the server sends is hidden. The channel, deadline and
retry plumbing is shared with ``HubClient`` and lives in ``clients._rpc``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TypeAlias

import grpc.aio
from google.protobuf import timestamp_pb2

# The limits and the backoff moved to clients._rpc; these names are
# re-exported because callers have always imported them from here.
from clients._rpc import BACKOFF_CAP_SECONDS as BACKOFF_CAP_SECONDS
from clients._rpc import DEFAULT_MAX_RETRIES as DEFAULT_MAX_RETRIES
from clients._rpc import DEFAULT_TIMEOUT_SECONDS as DEFAULT_TIMEOUT_SECONDS
from clients._rpc import RpcClient, paginate, request_id_or_new, sku_list
from clients._rpc import retry_delay_seconds as retry_delay_seconds
from clients.errors import StockdError
from clients.parsing import (
    parse_adjustment_reason,
    parse_event_type,
    parse_reservation_kind,
    parse_reservation_state,
    parse_stock_status,
)
from stockd.v1 import common_pb2, edge_pb2, edge_pb2_grpc

if TYPE_CHECKING:
    from stockd.v1.edge_pb2_grpc import EdgeInventoryServiceAsyncStub

# Enum arguments accept the generated value or its friendly name ("hard").
StockStatusArg: TypeAlias = common_pb2.StockStatus.ValueType | str
ReservationKindArg: TypeAlias = common_pb2.ReservationKind.ValueType | str
ReservationStateArg: TypeAlias = common_pb2.ReservationState.ValueType | str
AdjustmentReasonArg: TypeAlias = common_pb2.AdjustmentReason.ValueType | str
EventTypeArg: TypeAlias = common_pb2.EventType.ValueType | str

# Lines accept (sku, quantity), (sku, quantity, unit) or the proto message;
# where a line has a location, (sku, quantity, unit, location_id) as well.
LineTuple: TypeAlias = tuple[str, int] | tuple[str, int, str]
LocatedLineTuple: TypeAlias = LineTuple | tuple[str, int, str, str]
ReserveLineArg: TypeAlias = edge_pb2.ReserveLine | LineTuple
QuantityLineArg: TypeAlias = edge_pb2.QuantityLine | LineTuple
PickLineArg: TypeAlias = edge_pb2.PickLine | LocatedLineTuple
ReceiptLineArg: TypeAlias = edge_pb2.ReceiptLine | LocatedLineTuple
UnitsArg: TypeAlias = Mapping[str, int] | Iterable[tuple[str, int] | common_pb2.UnitConversion]


class EdgeClient(RpcClient["EdgeInventoryServiceAsyncStub"]):
    """Async client of one edge agent.

    Constructing it does no I/O and needs no running event loop: the channel
    is opened on first use, in the loop that makes the call (a grpc.aio
    channel belongs to one loop). Use it as ``async with EdgeClient(...) as
    client`` or call ``close()``.

    Every unary call has one deadline (``timeout_seconds``, default the
    client's) covering all its retries. When a mutating call still fails
    with UNAVAILABLE or DEADLINE_EXCEEDED its outcome is unknown: call again
    with ``request_id=error.request_id`` to apply it once or get the stored
    reply.
    """

    # -- item master and locations -------------------------------------------

    async def upsert_item(
        self,
        sku: str,
        *,
        base_unit: str = "each",
        description: str = "",
        units: UnitsArg = (),
        order_minimum: int = 0,
        order_multiple: int = 0,
        safety_stock: int = 0,
        request_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> edge_pb2.UpsertItemResponse:
        """Creates or replaces an item; ``units`` replace the previous set.

        Args:
            sku: The SKU.
            base_unit: The unit every stored quantity is in.
            description: Free text.
            units: Larger units as ``{"case": 12}``, pairs or protos.
            order_minimum: Smallest reservable line, in base units (0: none).
            order_multiple: Reserve and pick in multiples of this (0 or 1: any).
            safety_stock: Units never promised at this site.
            request_id: Idempotency key; a new UUID when None.
            timeout_seconds: Deadline for the call; the client's default when None.

        Returns:
            The stored item.
        """
        request_id = request_id_or_new(request_id)
        request = edge_pb2.UpsertItemRequest(
            request_id=request_id,
            item=common_pb2.Item(
                sku=sku,
                description=description,
                base_unit=base_unit,
                units=_unit_conversions(units),
                order_minimum=order_minimum,
                order_multiple=order_multiple,
                safety_stock=safety_stock,
            ),
        )
        return await self._unary(
            self._get_stub().UpsertItem, request, timeout_seconds, request_id=request_id
        )

    async def get_item(
        self, sku: str, *, timeout_seconds: float | None = None
    ) -> edge_pb2.GetItemResponse:
        """Returns one item; raises StockdError (NOT_FOUND) for an unknown SKU."""
        request = edge_pb2.GetItemRequest(sku=sku)
        return await self._unary(self._get_stub().GetItem, request, timeout_seconds)

    async def list_items(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout_seconds: float | None = None,
    ) -> edge_pb2.ListItemsResponse:
        """Returns one page of items in SKU order (``page_size`` 0: server default)."""
        request = edge_pb2.ListItemsRequest(page_size=page_size, page_token=page_token)
        return await self._unary(self._get_stub().ListItems, request, timeout_seconds)

    def iterate_items(
        self,
        *,
        page_size: int = 0,
        limit: int | None = None,
        timeout_seconds: float | None = None,
    ) -> AsyncGenerator[common_pb2.Item, None]:
        """Yields every item, following page tokens; at most ``limit`` when given.

        ``timeout_seconds`` is the deadline of each page, not of the whole walk.
        """

        async def fetch(token: str, size: int) -> edge_pb2.ListItemsResponse:
            return await self.list_items(
                page_size=size, page_token=token, timeout_seconds=timeout_seconds
            )

        return paginate(fetch, lambda page: page.items, page_size, limit)

    async def upsert_location(
        self,
        location_id: str,
        *,
        description: str = "",
        request_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> edge_pb2.UpsertLocationResponse:
        """Creates or replaces a location."""
        request_id = request_id_or_new(request_id)
        request = edge_pb2.UpsertLocationRequest(
            request_id=request_id,
            location=common_pb2.Location(location_id=location_id, description=description),
        )
        return await self._unary(
            self._get_stub().UpsertLocation, request, timeout_seconds, request_id=request_id
        )

    async def list_locations(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout_seconds: float | None = None,
    ) -> edge_pb2.ListLocationsResponse:
        """Returns one page of locations in id order."""
        request = edge_pb2.ListLocationsRequest(page_size=page_size, page_token=page_token)
        return await self._unary(self._get_stub().ListLocations, request, timeout_seconds)

    def iterate_locations(
        self,
        *,
        page_size: int = 0,
        limit: int | None = None,
        timeout_seconds: float | None = None,
    ) -> AsyncGenerator[common_pb2.Location, None]:
        """Yields every location, following page tokens; at most ``limit`` when given."""

        async def fetch(token: str, size: int) -> edge_pb2.ListLocationsResponse:
            return await self.list_locations(
                page_size=size, page_token=token, timeout_seconds=timeout_seconds
            )

        return paginate(fetch, lambda page: page.locations, page_size, limit)

    # -- stock movements ------------------------------------------------------

    async def receive(
        self,
        lines: Sequence[ReceiptLineArg],
        *,
        reference: str = "",
        reason: str = "",
        status: StockStatusArg = common_pb2.STOCK_STATUS_UNSPECIFIED,
        request_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> edge_pb2.ReceiveResponse:
        """Records arriving stock, all lines atomically.

        Args:
            lines: ``(sku, quantity[, unit[, location_id]])`` or ReceiptLine.
            reference: Purchase order, shipping notice or transfer id.
            reason: Free-text note.
            status: Condition of lines given as tuples (unspecified: sellable);
                proto lines keep their own.
            request_id: Idempotency key; a new UUID when None.
            timeout_seconds: Deadline for the call; the client's default when None.

        Returns:
            The RECEIVED entries and the new balances.
        """
        request_id = request_id_or_new(request_id)
        status_value = _stock_status(status)
        request = edge_pb2.ReceiveRequest(
            request_id=request_id,
            lines=[_receipt_line(line, status_value) for line in lines],
            reference=reference,
            reason=reason,
        )
        return await self._unary(
            self._get_stub().Receive, request, timeout_seconds, request_id=request_id
        )

    async def adjust(
        self,
        sku: str,
        quantity_delta: int,
        *,
        reason_code: AdjustmentReasonArg,
        location_id: str = "",
        status: StockStatusArg = common_pb2.STOCK_STATUS_UNSPECIFIED,
        unit: str = "",
        reason: str = "",
        release_reservations: bool = False,
        request_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> edge_pb2.AdjustResponse:
        """Changes on-hand by a signed quantity, with a required reason code.

        Args:
            sku: The SKU.
            quantity_delta: Signed change in ``unit``; not zero.
            reason_code: Why (``"shrink"``, ``"found"``, ... or the enum value).
            location_id: The location; empty means "default".
            status: The status adjusted; unspecified means sellable.
            unit: Unit of measure; empty means the base unit.
            reason: Free-text note.
            release_reservations: Release reservations instead of refusing a
                decrease that would leave less than is reserved.
            request_id: Idempotency key; a new UUID when None.
            timeout_seconds: Deadline for the call; the client's default when None.

        Returns:
            The entries written and the new balance.
        """
        request_id = request_id_or_new(request_id)
        request = edge_pb2.AdjustRequest(
            request_id=request_id,
            sku=sku,
            location_id=location_id,
            status=_stock_status(status),
            quantity_delta=quantity_delta,
            unit=unit,
            reason_code=_adjustment_reason(reason_code),
            reason=reason,
            release_reservations=release_reservations,
        )
        return await self._unary(
            self._get_stub().Adjust, request, timeout_seconds, request_id=request_id
        )

    async def record_count(
        self,
        sku: str,
        counted_quantity: int,
        *,
        location_id: str = "",
        status: StockStatusArg = common_pb2.STOCK_STATUS_UNSPECIFIED,
        unit: str = "",
        reason: str = "",
        request_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> edge_pb2.RecordCountResponse:
        """Records a cycle count: on-hand becomes ``counted_quantity``.

        A count is physical truth, so when it leaves less than is reserved the
        server releases reservations and returns those entries too.
        """
        request_id = request_id_or_new(request_id)
        request = edge_pb2.RecordCountRequest(
            request_id=request_id,
            sku=sku,
            location_id=location_id,
            status=_stock_status(status),
            counted_quantity=counted_quantity,
            unit=unit,
            reason=reason,
        )
        return await self._unary(
            self._get_stub().RecordCount, request, timeout_seconds, request_id=request_id
        )

    async def change_status(
        self,
        sku: str,
        quantity: int,
        *,
        from_status: StockStatusArg,
        to_status: StockStatusArg,
        location_id: str = "",
        unit: str = "",
        reason: str = "",
        release_reservations: bool = False,
        request_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> edge_pb2.ChangeStatusResponse:
        """Moves units between statuses at one location (sellable -> damaged)."""
        request_id = request_id_or_new(request_id)
        request = edge_pb2.ChangeStatusRequest(
            request_id=request_id,
            sku=sku,
            location_id=location_id,
            quantity=quantity,
            unit=unit,
            from_status=_stock_status(from_status),
            to_status=_stock_status(to_status),
            reason=reason,
            release_reservations=release_reservations,
        )
        return await self._unary(
            self._get_stub().ChangeStatus, request, timeout_seconds, request_id=request_id
        )

    async def transfer(
        self,
        sku: str,
        quantity: int,
        *,
        to_location_id: str = "",
        to_site_id: str = "",
        from_location_id: str = "",
        status: StockStatusArg = common_pb2.STOCK_STATUS_UNSPECIFIED,
        unit: str = "",
        reference: str = "",
        reason: str = "",
        request_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> edge_pb2.TransferResponse:
        """Moves units to another location here, or out to another site.

        Exactly one of ``to_location_id`` and ``to_site_id`` must be set; the
        server checks it, so the rule lives in one place.
        """
        request_id = request_id_or_new(request_id)
        request = edge_pb2.TransferRequest(
            request_id=request_id,
            sku=sku,
            quantity=quantity,
            unit=unit,
            status=_stock_status(status),
            from_location_id=from_location_id,
            to_location_id=to_location_id,
            to_site_id=to_site_id,
            reference=reference,
            reason=reason,
        )
        return await self._unary(
            self._get_stub().Transfer, request, timeout_seconds, request_id=request_id
        )

    # -- reservations ---------------------------------------------------------

    async def reserve(
        self,
        lines: Sequence[ReserveLineArg],
        *,
        kind: ReservationKindArg = common_pb2.RESERVATION_KIND_UNSPECIFIED,
        ttl_seconds: int = 0,
        channel: str = "",
        customer_tier: str = "",
        reference: str = "",
        allow_partial: bool = False,
        request_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> edge_pb2.ReserveResponse:
        """Holds stock for an order; all-or-nothing unless ``allow_partial``.

        Args:
            lines: ``(sku, quantity[, unit])`` or ReserveLine; each SKU once.
            kind: ``"soft"`` (expires; the default) or ``"hard"``.
            ttl_seconds: Life of a soft reservation; 0 means the site default.
            channel: Sales or fulfilment channel, for allocation rules.
            customer_tier: Customer tier, for allocation rules.
            reference: Caller's reference, for example an order number.
            allow_partial: Reserve what is available instead of failing.
            request_id: Idempotency key; a new UUID when None.
            timeout_seconds: Deadline for the call; the client's default when None.

        Returns:
            The reservation (unset when a partial reserve found nothing) and
            any shortfalls.

        Raises:
            StockdError: FAILED_PRECONDITION / ERROR_REASON_INSUFFICIENT_STOCK
                with metadata ``sku``, ``requested`` and ``available`` when
                stock is short and ``allow_partial`` is False; any other
                refusal.
        """
        request_id = request_id_or_new(request_id)
        request = edge_pb2.ReserveRequest(
            request_id=request_id,
            lines=[_reserve_line(line) for line in lines],
            kind=_reservation_kind(kind),
            ttl_seconds=ttl_seconds,
            channel=channel,
            customer_tier=customer_tier,
            reference=reference,
            allow_partial=allow_partial,
        )
        return await self._unary(
            self._get_stub().Reserve, request, timeout_seconds, request_id=request_id
        )

    async def release(
        self,
        reservation_id: str,
        lines: Sequence[QuantityLineArg] = (),
        *,
        reason: str = "",
        request_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> edge_pb2.ReleaseResponse:
        """Gives back part of a reservation, or everything held when ``lines`` is empty."""
        request_id = request_id_or_new(request_id)
        request = edge_pb2.ReleaseRequest(
            request_id=request_id,
            reservation_id=reservation_id,
            lines=[_quantity_line(line) for line in lines],
            reason=reason,
        )
        return await self._unary(
            self._get_stub().Release, request, timeout_seconds, request_id=request_id
        )

    async def pick(
        self,
        reservation_id: str,
        lines: Sequence[PickLineArg],
        *,
        release_remainder: bool = False,
        request_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> edge_pb2.PickResponse:
        """Picks reserved units; on-hand and the reservation go down together.

        Args:
            reservation_id: The reservation.
            lines: ``(sku, quantity[, unit[, location_id]])`` or PickLine.
            release_remainder: Release what is still held afterwards, ending it.
            request_id: Idempotency key; a new UUID when None.
            timeout_seconds: Deadline for the call; the client's default when None.

        Returns:
            The reservation after the pick and the entries written.
        """
        request_id = request_id_or_new(request_id)
        request = edge_pb2.PickRequest(
            request_id=request_id,
            reservation_id=reservation_id,
            lines=[_pick_line(line) for line in lines],
            release_remainder=release_remainder,
        )
        return await self._unary(
            self._get_stub().Pick, request, timeout_seconds, request_id=request_id
        )

    async def get_reservation(
        self, reservation_id: str, *, timeout_seconds: float | None = None
    ) -> edge_pb2.GetReservationResponse:
        """Returns one reservation; raises StockdError (NOT_FOUND) for an unknown id."""
        request = edge_pb2.GetReservationRequest(reservation_id=reservation_id)
        return await self._unary(self._get_stub().GetReservation, request, timeout_seconds)

    async def list_reservations(
        self,
        *,
        state: ReservationStateArg = common_pb2.RESERVATION_STATE_UNSPECIFIED,
        sku: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout_seconds: float | None = None,
    ) -> edge_pb2.ListReservationsResponse:
        """Returns one page of reservations, newest first (state unspecified: any)."""
        request = edge_pb2.ListReservationsRequest(
            state=_reservation_state(state),
            sku=sku,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._unary(self._get_stub().ListReservations, request, timeout_seconds)

    def iterate_reservations(
        self,
        *,
        state: ReservationStateArg = common_pb2.RESERVATION_STATE_UNSPECIFIED,
        sku: str = "",
        page_size: int = 0,
        limit: int | None = None,
        timeout_seconds: float | None = None,
    ) -> AsyncGenerator[common_pb2.Reservation, None]:
        """Yields matching reservations newest first, following page tokens.

        ``timeout_seconds`` is the deadline of each page, not of the whole walk.
        """
        state_value = _reservation_state(state)

        async def fetch(token: str, size: int) -> edge_pb2.ListReservationsResponse:
            return await self.list_reservations(
                state=state_value,
                sku=sku,
                page_size=size,
                page_token=token,
                timeout_seconds=timeout_seconds,
            )

        return paginate(fetch, lambda page: page.reservations, page_size, limit)

    # -- balances and the ledger ---------------------------------------------

    async def get_availability(
        self,
        skus: Sequence[str] = (),
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout_seconds: float | None = None,
    ) -> edge_pb2.GetAvailabilityResponse:
        """Returns balances of the named SKUs, or one page of all SKUs when none are named."""
        request = edge_pb2.GetAvailabilityRequest(
            skus=sku_list(skus), page_size=page_size, page_token=page_token
        )
        return await self._unary(self._get_stub().GetAvailability, request, timeout_seconds)

    def iterate_availability(
        self,
        *,
        page_size: int = 0,
        limit: int | None = None,
        timeout_seconds: float | None = None,
    ) -> AsyncGenerator[common_pb2.SkuAvailability, None]:
        """Yields the balance of every SKU in SKU order, following page tokens."""

        async def fetch(token: str, size: int) -> edge_pb2.GetAvailabilityResponse:
            return await self.get_availability(
                page_size=size, page_token=token, timeout_seconds=timeout_seconds
            )

        return paginate(fetch, lambda page: page.availability, page_size, limit)

    async def list_events(
        self,
        *,
        sku: str = "",
        actor: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        after_sequence: int = 0,
        types: Sequence[EventTypeArg] = (),
        page_size: int = 0,
        page_token: str = "",
        timeout_seconds: float | None = None,
    ) -> edge_pb2.ListEventsResponse:
        """Returns one page of ledger entries in sequence order.

        Args:
            sku: Only this SKU; empty means any.
            actor: Only this actor; empty means any.
            since: Only entries recorded at or after this instant (naive: UTC).
            until: Only entries recorded before this instant (naive: UTC).
            after_sequence: Only entries with a sequence above this.
            types: Only these event types (``"reserved"`` or enum values).
            page_size: At most this many; 0 means the server default.
            page_token: Token from a previous page.
            timeout_seconds: Deadline for the call; the client's default when None.

        Returns:
            The page.
        """
        request = edge_pb2.ListEventsRequest(
            sku=sku,
            actor=actor,
            since=_timestamp(since),
            until=_timestamp(until),
            after_sequence=after_sequence,
            types=[_event_type(event_type) for event_type in types],
            page_size=page_size,
            page_token=page_token,
        )
        return await self._unary(self._get_stub().ListEvents, request, timeout_seconds)

    def iterate_events(
        self,
        *,
        sku: str = "",
        actor: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        after_sequence: int = 0,
        types: Sequence[EventTypeArg] = (),
        page_size: int = 0,
        limit: int | None = None,
        timeout_seconds: float | None = None,
    ) -> AsyncGenerator[common_pb2.LedgerEvent, None]:
        """Yields matching ledger entries in sequence order, following page tokens.

        ``timeout_seconds`` is the deadline of each page, not of the whole walk.
        """
        type_values = [_event_type(event_type) for event_type in types]

        async def fetch(token: str, size: int) -> edge_pb2.ListEventsResponse:
            return await self.list_events(
                sku=sku,
                actor=actor,
                since=since,
                until=until,
                after_sequence=after_sequence,
                types=type_values,
                page_size=size,
                page_token=token,
                timeout_seconds=timeout_seconds,
            )

        return paginate(fetch, lambda page: page.events, page_size, limit)

    async def watch_availability(
        self,
        skus: Sequence[str] = (),
        *,
        timeout_seconds: float | None = None,
    ) -> AsyncGenerator[edge_pb2.WatchAvailabilityResponse, None]:
        """Streams balances: a snapshot of each matching SKU, then every change.

        A watch is meant to stay open, so it has no deadline unless one is
        given. When the stream breaks with UNAVAILABLE (the agent restarted)
        it is reopened with backoff; the server then sends a fresh snapshot
        (``snapshot`` is True), so a consumer that applies snapshots as
        replacements never misses a change. ``max_retries`` bounds
        consecutive failed reopenings; a received message resets the count.

        Args:
            skus: SKUs to watch; empty watches every SKU.
            timeout_seconds: Deadline for the whole watch, reopenings included.

        Yields:
            Each balance message, in order.

        Raises:
            StockdError: When the stream ends with another error, or keeps
                failing with UNAVAILABLE.
        """
        request = edge_pb2.WatchAvailabilityRequest(skus=sku_list(skus))
        loop = asyncio.get_running_loop()
        deadline = None if timeout_seconds is None else loop.time() + timeout_seconds
        failures = 0
        while True:
            remaining = None if deadline is None else deadline - loop.time()
            call = self._get_stub().WatchAvailability(
                request, timeout=remaining, metadata=self._metadata or None
            )
            try:
                async for response in call:
                    failures = 0
                    yield response
                return
            except grpc.aio.AioRpcError as error:
                left = None if deadline is None else deadline - loop.time()
                delay = self._retry_delay(error, failures, left)
                if delay is None:
                    raise StockdError.from_rpc_error(error) from error
            finally:
                # Ends the call when the consumer stops early (break, aclose).
                call.cancel()
            await asyncio.sleep(delay)
            failures += 1

    # -- sync with the hub ----------------------------------------------------

    async def get_sync_status(
        self, *, timeout_seconds: float | None = None
    ) -> edge_pb2.GetSyncStatusResponse:
        """Returns the agent's sync state: ledger entries on the bus, hub commands applied.

        Entries counted in ``backlog_events`` are durable here but not yet
        acknowledged by JetStream; while ``connected`` is False,
        ``last_error`` says why.
        """
        request = edge_pb2.GetSyncStatusRequest()
        return await self._unary(self._get_stub().GetSyncStatus, request, timeout_seconds)

    # -- plumbing -------------------------------------------------------------

    def _new_stub(self, channel: grpc.aio.Channel) -> EdgeInventoryServiceAsyncStub:
        return edge_pb2_grpc.EdgeInventoryServiceStub(channel)


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(value)
    return timestamp


def _stock_status(value: StockStatusArg) -> common_pb2.StockStatus.ValueType:
    return parse_stock_status(value) if isinstance(value, str) else value


def _reservation_kind(value: ReservationKindArg) -> common_pb2.ReservationKind.ValueType:
    return parse_reservation_kind(value) if isinstance(value, str) else value


def _reservation_state(value: ReservationStateArg) -> common_pb2.ReservationState.ValueType:
    return parse_reservation_state(value) if isinstance(value, str) else value


def _adjustment_reason(value: AdjustmentReasonArg) -> common_pb2.AdjustmentReason.ValueType:
    return parse_adjustment_reason(value) if isinstance(value, str) else value


def _event_type(value: EventTypeArg) -> common_pb2.EventType.ValueType:
    return parse_event_type(value) if isinstance(value, str) else value


def _unit_conversions(units: UnitsArg) -> list[common_pb2.UnitConversion]:
    pairs = units.items() if isinstance(units, Mapping) else units
    conversions = []
    for pair in pairs:
        if isinstance(pair, common_pb2.UnitConversion):
            conversions.append(pair)
        else:
            unit, base_units_per_unit = pair
            conversions.append(
                common_pb2.UnitConversion(unit=unit, base_units_per_unit=base_units_per_unit)
            )
    return conversions


def _line_parts(line: tuple[object, ...], size_max: int) -> tuple[str, int, str, str]:
    """Checks and pads a line tuple to ``(sku, quantity, unit, location_id)``."""
    if not 2 <= len(line) <= size_max:
        raise TypeError(f"line {line!r} must have 2 to {size_max} items")
    sku, quantity, unit, location_id = (*line, "", "")[:4]
    if (
        not isinstance(sku, str)
        or isinstance(quantity, bool)
        or not isinstance(quantity, int)
        or not isinstance(unit, str)
        or not isinstance(location_id, str)
    ):
        raise TypeError(f"line {line!r} must be (sku: str, quantity: int[, unit: str...])")
    return sku, quantity, unit, location_id


def _reserve_line(line: ReserveLineArg) -> edge_pb2.ReserveLine:
    if isinstance(line, edge_pb2.ReserveLine):
        return line
    sku, quantity, unit, _ = _line_parts(line, 3)
    return edge_pb2.ReserveLine(sku=sku, quantity=quantity, unit=unit)


def _quantity_line(line: QuantityLineArg) -> edge_pb2.QuantityLine:
    if isinstance(line, edge_pb2.QuantityLine):
        return line
    sku, quantity, unit, _ = _line_parts(line, 3)
    return edge_pb2.QuantityLine(sku=sku, quantity=quantity, unit=unit)


def _pick_line(line: PickLineArg) -> edge_pb2.PickLine:
    if isinstance(line, edge_pb2.PickLine):
        return line
    sku, quantity, unit, location_id = _line_parts(line, 4)
    return edge_pb2.PickLine(sku=sku, quantity=quantity, unit=unit, location_id=location_id)


def _receipt_line(
    line: ReceiptLineArg, status: common_pb2.StockStatus.ValueType
) -> edge_pb2.ReceiptLine:
    if isinstance(line, edge_pb2.ReceiptLine):
        return line
    sku, quantity, unit, location_id = _line_parts(line, 4)
    return edge_pb2.ReceiptLine(
        sku=sku, quantity=quantity, unit=unit, location_id=location_id, status=status
    )
