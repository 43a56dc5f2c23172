"""gRPC servicer for stockd.v1.EdgeInventoryService: proto -> command -> engine -> proto."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
import structlog

from edge_agent.adapters import convert
from edge_agent.adapters.sqlite_queries import EventFilter, LedgerQueries
from edge_agent.domain import commands as c
from edge_agent.domain.ledger import Decision, EdgeLedger
from edge_agent.service.engine import EdgeEngine, Outcome
from server.domain import limits, paging
from server.domain.errors import (
    Overloaded,
    ReservationClosed,
    StockdError,
    UnknownReservation,
    UnknownSku,
    Violations,
    check_request_id,
)
from server.domain.model import EventType, ReservationState
from server.runtime.auth import Authenticator
from server.runtime.calls import Call, Undecodable, safe_deserializer, unary
from server.runtime.status import to_status
from stockd.v1 import common_pb2, edge_pb2, edge_pb2_grpc

log = structlog.get_logger("stockd.edge.rpc")

T = TypeVar("T")


def _milliseconds(violations: Violations, name: str, request: Any) -> int | None:
    """A Timestamp field as milliseconds, or a violation when it is out of range."""
    if not request.HasField(name):
        return None
    try:
        milliseconds: int = getattr(request, name).ToMilliseconds()
        return milliseconds
    except (ValueError, OverflowError):
        violations.add(name, "timestamp out of range (years 1 to 9999)")
        return None


class EdgeServicer(edge_pb2_grpc.EdgeInventoryServiceServicer):
    def __init__(
        self,
        engine: EdgeEngine,
        queries: LedgerQueries,
        auth: Authenticator,
        sync_status: Callable[[], edge_pb2.GetSyncStatusResponse] | None = None,
    ) -> None:
        self.sync_status = sync_status
        self.engine = engine
        self.queries = queries
        self.auth = auth
        self.site_id = engine.settings.site_id
        self._watch_queues: set[asyncio.Queue[edge_pb2.WatchAvailabilityResponse | None]] = set()
        self.rpc_counts: Counter[tuple[str, str]] = Counter()

    @property
    def ledger(self) -> EdgeLedger:
        return self.engine.ledger

    async def _write(
        self,
        rpc: str,
        request: Any,
        call: Call,
        command: c.Command | c.UpsertItem | c.UpsertLocation,
        render: Callable[[EdgeLedger, Outcome], Any],
    ) -> bytes:
        """Runs a write; returns the serialized response (stored for replays)."""
        check_request_id(request.request_id)
        return await self.engine.execute(
            rpc,
            command,
            actor=call.principal,
            request_id=request.request_id,
            payload=request.SerializeToString(deterministic=True),
            render=lambda ledger, outcome: render(ledger, outcome).SerializeToString(),
            deadline=call.deadline,
        )

    def _events(self, decision: Decision) -> list[common_pb2.LedgerEvent]:
        return [convert.event_to_proto(event, self.site_id) for event in decision.events]

    # ----- master data -----------------------------------------------------

    @unary("UpsertItem", mutating=True)
    async def UpsertItem(self, request: edge_pb2.UpsertItemRequest, call: Call) -> bytes:
        def render(_ledger: EdgeLedger, item: Outcome) -> edge_pb2.UpsertItemResponse:
            assert not isinstance(item, Decision)
            return edge_pb2.UpsertItemResponse(item=convert.item_to_proto(item))  # type: ignore[arg-type]

        command = c.UpsertItem(convert.item_from_proto(request.item))
        result = await self._write("UpsertItem", request, call, command, render)
        return result

    @unary("GetItem", mutating=False)
    async def GetItem(
        self, request: edge_pb2.GetItemRequest, call: Call
    ) -> edge_pb2.GetItemResponse:
        item = await self.engine.consistent_read(lambda ledger: ledger.items.get(request.sku))
        if item is None:
            raise UnknownSku(f"unknown SKU {request.sku!r}", metadata={"sku": request.sku})
        return edge_pb2.GetItemResponse(item=convert.item_to_proto(item))

    @unary("ListItems", mutating=False)
    async def ListItems(
        self, request: edge_pb2.ListItemsRequest, call: Call
    ) -> edge_pb2.ListItemsResponse:
        size = paging.page_size(request.page_size)
        after = paging.decode(request.page_token, "items")

        def read(ledger: EdgeLedger) -> edge_pb2.ListItemsResponse:
            skus = sorted(ledger.items)
            if isinstance(after, str):
                skus = [sku for sku in skus if sku > after]
            page = skus[:size]
            return edge_pb2.ListItemsResponse(
                items=[convert.item_to_proto(ledger.items[sku]) for sku in page],
                next_page_token=paging.encode(page[-1], "items") if len(skus) > size else "",
            )

        return await self.engine.consistent_read(read)

    @unary("UpsertLocation", mutating=True)
    async def UpsertLocation(self, request: edge_pb2.UpsertLocationRequest, call: Call) -> bytes:
        def render(_ledger: EdgeLedger, location: Outcome) -> edge_pb2.UpsertLocationResponse:
            return edge_pb2.UpsertLocationResponse(
                location=convert.location_to_proto(location)  # type: ignore[arg-type]
            )

        command = c.UpsertLocation(convert.location_from_proto(request.location))
        result = await self._write("UpsertLocation", request, call, command, render)
        return result

    @unary("ListLocations", mutating=False)
    async def ListLocations(
        self, request: edge_pb2.ListLocationsRequest, call: Call
    ) -> edge_pb2.ListLocationsResponse:
        size = paging.page_size(request.page_size)
        after = paging.decode(request.page_token, "locations")

        def read(ledger: EdgeLedger) -> edge_pb2.ListLocationsResponse:
            ids = sorted(ledger.locations)
            if isinstance(after, str):
                ids = [location for location in ids if location > after]
            page = ids[:size]
            return edge_pb2.ListLocationsResponse(
                locations=[convert.location_to_proto(ledger.locations[i]) for i in page],
                next_page_token=paging.encode(page[-1], "locations") if len(ids) > size else "",
            )

        return await self.engine.consistent_read(read)

    # ----- stock movements -------------------------------------------------

    @unary("Receive", mutating=True)
    async def Receive(self, request: edge_pb2.ReceiveRequest, call: Call) -> bytes:
        def render(ledger: EdgeLedger, decision: Outcome) -> edge_pb2.ReceiveResponse:
            assert isinstance(decision, Decision)
            return edge_pb2.ReceiveResponse(
                events=self._events(decision),
                availability=[convert.availability(ledger, sku) for sku in decision.skus],
            )

        result = await self._write("Receive", request, call, convert.receive(request), render)
        return result

    def _sku_change(self, response_type: Any, sku: str) -> Callable[[EdgeLedger, Outcome], Any]:
        """Renders the common reply of a one-SKU stock change: entries and new balance."""

        def render(ledger: EdgeLedger, decision: Outcome) -> Any:
            assert isinstance(decision, Decision)
            return response_type(
                events=self._events(decision), availability=convert.availability(ledger, sku)
            )

        return render

    @unary("Adjust", mutating=True)
    async def Adjust(self, request: edge_pb2.AdjustRequest, call: Call) -> bytes:
        render = self._sku_change(edge_pb2.AdjustResponse, request.sku)
        return await self._write("Adjust", request, call, convert.adjust(request), render)

    @unary("RecordCount", mutating=True)
    async def RecordCount(self, request: edge_pb2.RecordCountRequest, call: Call) -> bytes:
        change = self._sku_change(edge_pb2.RecordCountResponse, request.sku)

        def render(ledger: EdgeLedger, decision: Outcome) -> edge_pb2.RecordCountResponse:
            assert isinstance(decision, Decision)
            response: edge_pb2.RecordCountResponse = change(ledger, decision)
            response.variance = decision.variance
            return response

        return await self._write(
            "RecordCount", request, call, convert.record_count(request), render
        )

    @unary("ChangeStatus", mutating=True)
    async def ChangeStatus(self, request: edge_pb2.ChangeStatusRequest, call: Call) -> bytes:
        render = self._sku_change(edge_pb2.ChangeStatusResponse, request.sku)
        return await self._write(
            "ChangeStatus", request, call, convert.change_status(request), render
        )

    @unary("Transfer", mutating=True)
    async def Transfer(self, request: edge_pb2.TransferRequest, call: Call) -> bytes:
        render = self._sku_change(edge_pb2.TransferResponse, request.sku)
        return await self._write("Transfer", request, call, convert.transfer(request), render)

    # ----- reservations ----------------------------------------------------

    def _reservation_proto(self, ledger: EdgeLedger, reservation_id: str) -> common_pb2.Reservation:
        reservation = ledger.reservation_state(reservation_id)
        assert reservation is not None
        return convert.reservation_to_proto(reservation)

    @unary("Reserve", mutating=True)
    async def Reserve(self, request: edge_pb2.ReserveRequest, call: Call) -> bytes:
        def render(ledger: EdgeLedger, decision: Outcome) -> edge_pb2.ReserveResponse:
            assert isinstance(decision, Decision)
            response = edge_pb2.ReserveResponse(
                shortfalls=[
                    edge_pb2.LineShortfall(sku=sku, requested=requested, available=available)
                    for sku, requested, available in decision.shortfalls
                ],
                as_of_sequence=ledger.last_sequence,
            )
            if decision.reservation_id:
                response.reservation.CopyFrom(
                    self._reservation_proto(ledger, decision.reservation_id)
                )
            return response

        command = convert.reserve(request, reservation_id=uuid.uuid4().hex)
        result = await self._write("Reserve", request, call, command, render)
        return result

    async def _closed_or_unknown(
        self, error: UnknownReservation, reservation_id: str
    ) -> StockdError:
        stored = await self.queries.get_reservation(reservation_id)
        if stored is not None and stored.state is not ReservationState.OPEN:
            return ReservationClosed(
                f"reservation {reservation_id!r} is {stored.state.name.lower()}",
                metadata={"reservation_id": reservation_id, "state": stored.state.name},
            )
        return error

    async def _resolve(
        self, rpc: str, request: Any, call: Call, command: c.Command, response_type: Any
    ) -> bytes:
        """Release and Pick: the reply is the reservation after its entries."""

        def render(ledger: EdgeLedger, decision: Outcome) -> Any:
            assert isinstance(decision, Decision)
            return response_type(
                reservation=self._reservation_proto(ledger, request.reservation_id),
                events=self._events(decision),
            )

        try:
            return await self._write(rpc, request, call, command, render)
        except UnknownReservation as error:
            raise await self._closed_or_unknown(error, request.reservation_id) from None

    @unary("Release", mutating=True)
    async def Release(self, request: edge_pb2.ReleaseRequest, call: Call) -> bytes:
        return await self._resolve(
            "Release", request, call, convert.release(request), edge_pb2.ReleaseResponse
        )

    @unary("Pick", mutating=True)
    async def Pick(self, request: edge_pb2.PickRequest, call: Call) -> bytes:
        return await self._resolve(
            "Pick", request, call, convert.pick(request), edge_pb2.PickResponse
        )

    # ----- reads -------------------------------------------------------------

    def _check_skus(
        self, skus: list[str], path: str = "skus", ledger: EdgeLedger | None = None
    ) -> None:
        violations = Violations()
        if len(skus) > limits.SKUS_PER_QUERY_MAX:
            violations.add(
                path,
                f"{len(skus)} SKUs is above the limit of {limits.SKUS_PER_QUERY_MAX}",
                "ERROR_REASON_TOO_MANY_LINES",
            )
        for index, sku in enumerate(skus):
            if not sku:
                violations.add(f"{path}[{index}]", "must not be empty")
        violations.raise_if_any()
        items = (ledger or self.ledger).items
        for index, sku in enumerate(skus):
            if sku not in items:
                raise UnknownSku(
                    f"unknown SKU {sku!r} ({path}[{index}])",
                    metadata={"sku": sku, "field": f"{path}[{index}]"},
                )

    @unary("GetAvailability", mutating=False)
    async def GetAvailability(
        self, request: edge_pb2.GetAvailabilityRequest, call: Call
    ) -> edge_pb2.GetAvailabilityResponse:
        if request.skus:
            skus = list(request.skus)
            self._check_skus(skus)

            def read_named(ledger: EdgeLedger) -> edge_pb2.GetAvailabilityResponse:
                self._check_skus(skus, ledger=ledger)
                return edge_pb2.GetAvailabilityResponse(
                    availability=[convert.availability(ledger, sku) for sku in skus],
                    as_of_sequence=ledger.last_sequence,
                )

            return await self._read(read_named)
        size = paging.page_size(request.page_size)
        after = paging.decode(request.page_token, "availability")

        def read_page(ledger: EdgeLedger) -> edge_pb2.GetAvailabilityResponse:
            every = sorted(ledger.items)
            if isinstance(after, str):
                every = [sku for sku in every if sku > after]
            page = every[:size]
            return edge_pb2.GetAvailabilityResponse(
                availability=[convert.availability(ledger, sku) for sku in page],
                next_page_token=(
                    paging.encode(page[-1], "availability") if len(every) > size else ""
                ),
                as_of_sequence=ledger.last_sequence,
            )

        return await self.engine.consistent_read(read_page)

    async def _read(self, read: Callable[[EdgeLedger], T]) -> T:
        """A consistent read whose own domain errors (raised inside) reach the caller."""
        failure: list[StockdError] = []

        def guarded(ledger: EdgeLedger) -> T | None:
            try:
                return read(ledger)
            except StockdError as error:
                failure.append(error)
                return None

        result = await self.engine.consistent_read(guarded)
        if failure:
            raise failure[0]
        assert result is not None
        return result

    @unary("GetReservation", mutating=False)
    async def GetReservation(
        self, request: edge_pb2.GetReservationRequest, call: Call
    ) -> edge_pb2.GetReservationResponse:
        # The database holds every committed reservation, open or closed.
        reservation = await self.queries.get_reservation(request.reservation_id)
        if reservation is None:
            raise UnknownReservation(
                f"no reservation {request.reservation_id!r}",
                metadata={"reservation_id": request.reservation_id},
            )
        return edge_pb2.GetReservationResponse(
            reservation=convert.reservation_to_proto(reservation)
        )

    @unary("ListReservations", mutating=False)
    async def ListReservations(
        self, request: edge_pb2.ListReservationsRequest, call: Call
    ) -> edge_pb2.ListReservationsResponse:
        violations = Violations()
        if request.state not in ReservationState._value2member_map_:
            violations.add("state", f"unknown reservation state {request.state}")
        violations.raise_if_any()
        size = paging.page_size(request.page_size)
        query = ("reservations", request.state, request.sku)
        before = paging.decode(request.page_token, query)
        found = await self.queries.list_reservations(
            request.state, request.sku, before if isinstance(before, int) else None, size + 1
        )
        page = found[:size]
        return edge_pb2.ListReservationsResponse(
            reservations=[convert.reservation_to_proto(r) for r in page],
            next_page_token=(
                paging.encode(page[-1].created_sequence, query) if len(found) > size else ""
            ),
        )

    @unary("ListEvents", mutating=False)
    async def ListEvents(
        self, request: edge_pb2.ListEventsRequest, call: Call
    ) -> edge_pb2.ListEventsResponse:
        violations = Violations()
        for index, event_type in enumerate(request.types):
            if event_type not in EventType._value2member_map_ or event_type == 0:
                violations.add(f"types[{index}]", f"unknown event type {event_type}")
        violations.raise_if_any()
        if request.after_sequence > paging.INT64_MAX:
            violations.add("after_sequence", f"above the limit of {paging.INT64_MAX}")
        since_ms = _milliseconds(violations, "since", request)
        until_ms = _milliseconds(violations, "until", request)
        violations.raise_if_any()
        size = paging.page_size(request.page_size)
        query = (
            "events", request.sku, request.actor, since_ms, until_ms,
            request.after_sequence, sorted(request.types),
        )  # fmt: skip
        after = paging.decode(request.page_token, query)
        where = EventFilter(
            sku=request.sku,
            actor=request.actor,
            since_ms=since_ms,
            until_ms=until_ms,
            after_sequence=after if isinstance(after, int) else request.after_sequence,
            types=tuple(request.types),
        )
        found = await self.queries.list_events(where, size + 1)
        page = found[:size]
        return edge_pb2.ListEventsResponse(
            events=[convert.event_to_proto(event, self.site_id) for event in page],
            next_page_token=paging.encode(page[-1].sequence, query) if len(found) > size else "",
        )

    @unary("GetSyncStatus", mutating=False)
    async def GetSyncStatus(
        self, request: edge_pb2.GetSyncStatusRequest, call: Call
    ) -> edge_pb2.GetSyncStatusResponse:
        if self.sync_status is not None:
            return self.sync_status()
        return edge_pb2.GetSyncStatusResponse(
            site_id=self.site_id,
            hub_configured=False,
            last_sequence=self.engine.committed_sequence,
        )

    async def WatchAvailability(
        self,
        request: edge_pb2.WatchAvailabilityRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[edge_pb2.WatchAvailabilityResponse]:
        """Streams balances; a watcher that falls behind gets a fresh snapshot.

        The snapshot and the subscription are taken at one durable point in the
        write queue, and every change is computed right after its batch
        commits, so the stream never shows a write that is not on disk and
        misses none in between.
        """
        try:
            self.auth.principal(context.invocation_metadata())
            if isinstance(request, Undecodable):
                raise request.as_error()
            self._check_skus(list(request.skus))
            if len(self._watch_queues) >= limits.WATCHERS_MAX:
                raise Overloaded(f"at most {limits.WATCHERS_MAX} watchers")
        except StockdError as error:
            await context.abort_with_status(to_status(error))  # type: ignore[attr-defined]
            return
        watched = set(request.skus) or None
        queue: asyncio.Queue[edge_pb2.WatchAvailabilityResponse | None] = asyncio.Queue(
            maxsize=limits.WATCH_QUEUE_MAX
        )
        behind = False

        def snapshot(ledger: EdgeLedger) -> list[edge_pb2.WatchAvailabilityResponse]:
            return [
                edge_pb2.WatchAvailabilityResponse(
                    availability=convert.availability(ledger, sku), snapshot=True
                )
                for sku in sorted(watched or ledger.items)
            ]

        def listener(touched: set[str]) -> None:
            nonlocal behind
            for sku in sorted(touched):
                if watched is None or sku in watched:
                    change = edge_pb2.WatchAvailabilityResponse(
                        availability=convert.availability(self.engine.ledger, sku),
                        snapshot=False,
                    )
                    try:
                        queue.put_nowait(change)
                    except asyncio.QueueFull:
                        behind = True

        removers: list[Callable[[], None]] = []

        def subscribe(ledger: EdgeLedger) -> list[edge_pb2.WatchAvailabilityResponse]:
            removers.append(self.engine.add_listener(listener))
            return snapshot(ledger)

        self._watch_queues.add(queue)
        try:
            for message in await self.engine.consistent_read(subscribe):
                yield message
            while True:
                change = await queue.get()
                if change is None:
                    return  # the agent is stopping
                if behind:
                    behind = False
                    while not queue.empty():
                        if queue.get_nowait() is None:
                            return
                    for message in await self.engine.consistent_read(snapshot):
                        yield message
                    continue
                yield change
        finally:
            self._watch_queues.discard(queue)
            for remove in removers:
                remove()

    def close_streams(self) -> None:
        """Ends every open watch stream, so shutdown does not wait out its grace."""
        for queue in list(self._watch_queues):
            while True:
                try:
                    queue.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    queue.get_nowait()


WRITE_METHODS = (
    "UpsertItem", "UpsertLocation", "Receive", "Adjust", "RecordCount", "ChangeStatus",
    "Reserve", "Release", "Pick", "Transfer",
)  # fmt: skip
SERVICE_NAME = "stockd.v1.EdgeInventoryService"


def _identity(data: bytes) -> bytes:
    return data


def register(server: grpc.aio.Server, servicer: EdgeServicer) -> None:
    """Adds the service; write handlers return stored bytes, sent as they are.

    Writes already hold their serialized response (it is what a replay
    returns), so their serializer is the identity: no parse, no re-encode.
    """
    service = edge_pb2.DESCRIPTOR.services_by_name["EdgeInventoryService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_type = getattr(edge_pb2, method.input_type.name)
        response_type = getattr(edge_pb2, method.output_type.name)
        behaviour = getattr(servicer, method.name)
        serializer = _identity if method.name in WRITE_METHODS else response_type.SerializeToString
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour,
                request_deserializer=safe_deserializer(request_type),
                response_serializer=serializer,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=safe_deserializer(request_type),
                response_serializer=serializer,
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
