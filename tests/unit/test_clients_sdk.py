"""Proves the edge SDK's wire behaviour against a scripted in-process gRPC server.

The fake answers each RPC with whatever the test scripts (a response, a rich
error status, UNAVAILABLE n times) and records every request with its
metadata, so the tests can check what actually crossed the wire: the same
request_id on every retry, the bearer token, the lines built from tuples,
page tokens followed, and errors decoded from google.rpc.Status.

The fake is a synchronous grpc.server on its own threads, so the CLI and the
blocking client, which run their own event loops, can use it too.
"""

from __future__ import annotations

import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from clients.edge import (
    BACKOFF_CAP_SECONDS,
    EdgeClient,
    retry_delay_seconds,
)
from clients.edge_sync import EdgeClientSync
from clients.errors import StockdError
from stockd.v1 import common_pb2, edge_pb2

SERVICE = "stockd.v1.EdgeInventoryService"

Behaviour = Callable[[Any, grpc.ServicerContext], Any]


@dataclass
class Received:
    """One request as the server saw it."""

    method: str
    request: Any
    metadata: dict[str, str]


@dataclass
class FakeEdge:
    """Scripted EdgeInventoryService: ``behaviours[method](request, context)``."""

    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests(self, method: str) -> list[Any]:
        with self.lock:
            return [item.request for item in self.received if item.method == method]

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        service = edge_pb2.DESCRIPTOR.services_by_name["EdgeInventoryService"]
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for method in service.methods:
            request_class = getattr(edge_pb2, method.input_type.name)
            response_class = getattr(edge_pb2, method.output_type.name)
            function = self._dispatch(method.name)
            if method.server_streaming:
                handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                    function,
                    request_deserializer=request_class.FromString,
                    response_serializer=response_class.SerializeToString,
                )
            else:
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    function,
                    request_deserializer=request_class.FromString,
                    response_serializer=response_class.SerializeToString,
                )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _dispatch(self, method: str) -> Behaviour:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            metadata = {key: str(value) for key, value in context.invocation_metadata()}
            with self.lock:
                self.received.append(Received(method, request, metadata))
                behaviour = self.behaviours.get(method)
            if behaviour is None:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} not scripted")
            return behaviour(request, context)

        return handle


@contextmanager
def serving(fake: FakeEdge) -> Iterator[str]:
    """Runs the fake on 127.0.0.1, a free port; yields its target."""
    executor = ThreadPoolExecutor(max_workers=8)
    server = grpc.server(executor)
    try:
        server.add_generic_rpc_handlers((fake.handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()
        executor.shutdown(wait=True)


def abort_with_details(
    context: grpc.ServicerContext,
    code: int,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    violations: Sequence[tuple[str, str]] = (),
) -> None:
    """Ends the call the way the real server does: ErrorInfo plus BadRequest."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="stockd", metadata=metadata or {}))
    details = [info]
    if violations:
        bad_request = any_pb2.Any()
        bad_request.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=name, description=text)
                    for name, text in violations
                ]
            )
        )
        details.append(bad_request)
    status = status_pb2.Status(code=code, message=message, details=details)
    context.abort_with_status(rpc_status.to_status(status))


def unavailable_then(times: int, response: Message) -> Behaviour:
    """Fails the first ``times`` calls with UNAVAILABLE, then answers."""
    calls = {"count": 0}

    def behave(request: Any, context: grpc.ServicerContext) -> Message:
        calls["count"] += 1
        if calls["count"] <= times:
            context.abort(grpc.StatusCode.UNAVAILABLE, "storage busy")
        return response

    return behave


def reservation_response(request_id: str = "r") -> edge_pb2.ReserveResponse:
    return edge_pb2.ReserveResponse(
        reservation=common_pb2.Reservation(
            reservation_id="RES-1",
            request_id=request_id,
            kind=common_pb2.RESERVATION_KIND_SOFT,
            state=common_pb2.RESERVATION_STATE_OPEN,
            lines=[
                common_pb2.ReservationLine(sku="A", quantity_reserved=5, quantity_held=5),
            ],
        ),
        as_of_sequence=7,
    )


@pytest.fixture
def fake() -> FakeEdge:
    return FakeEdge()


@pytest.fixture
def target(fake: FakeEdge) -> Iterator[str]:
    with serving(fake) as address:
        yield address


# -- retries ------------------------------------------------------------------------


async def test_reserve_retries_unavailable_with_the_same_request_id(
    fake: FakeEdge, target: str
) -> None:
    fake.behaviours["Reserve"] = unavailable_then(2, reservation_response())
    async with EdgeClient(target) as client:
        response = await client.reserve([("A", 5)], kind="soft", ttl_seconds=300)
    assert response.reservation.reservation_id == "RES-1"
    requests = fake.requests("Reserve")
    assert len(requests) == 3
    request_ids = {request.request_id for request in requests}
    assert len(request_ids) == 1
    uuid.UUID(request_ids.pop())


async def test_explicit_request_id_is_sent_unchanged(fake: FakeEdge, target: str) -> None:
    fake.behaviours["Reserve"] = unavailable_then(1, reservation_response())
    async with EdgeClient(target) as client:
        await client.reserve([("A", 5)], request_id="order-42-try")
    assert [request.request_id for request in fake.requests("Reserve")] == ["order-42-try"] * 2


async def test_each_call_gets_its_own_request_id(fake: FakeEdge, target: str) -> None:
    fake.behaviours["Reserve"] = lambda request, context: reservation_response()
    async with EdgeClient(target) as client:
        await client.reserve([("A", 1)])
        await client.reserve([("A", 1)])
    first, second = fake.requests("Reserve")
    assert first.request_id != second.request_id


async def test_retries_stop_at_max_retries_and_keep_the_request_id(
    fake: FakeEdge, target: str
) -> None:
    fake.behaviours["Reserve"] = unavailable_then(100, reservation_response())
    async with EdgeClient(target, max_retries=2) as client:
        with pytest.raises(StockdError) as caught:
            await client.reserve([("A", 5)], request_id="rid-1")
    assert len(fake.requests("Reserve")) == 3
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert caught.value.request_id == "rid-1"
    assert caught.value.retryable


async def test_retries_stop_at_the_deadline(fake: FakeEdge, target: str) -> None:
    fake.behaviours["GetItem"] = unavailable_then(10_000, edge_pb2.GetItemResponse())
    started = time.monotonic()
    async with EdgeClient(target, max_retries=20, timeout_seconds=0.3) as client:
        with pytest.raises(StockdError) as caught:
            await client.get_item("A")
    elapsed = time.monotonic() - started
    assert caught.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    # 20 retries would need far longer than 0.3 s of backoff; the deadline won.
    assert elapsed < 1.5
    assert len(fake.requests("GetItem")) < 21


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
    ],
)
async def test_other_codes_are_not_retried(
    fake: FakeEdge, target: str, code: grpc.StatusCode
) -> None:
    def fail(request: Any, context: grpc.ServicerContext) -> None:
        context.abort(code, "no")

    fake.behaviours["Reserve"] = fail
    async with EdgeClient(target) as client:
        with pytest.raises(StockdError) as caught:
            await client.reserve([("A", 5)])
    assert caught.value.code is code
    assert len(fake.requests("Reserve")) == 1


def test_retry_delay_grows_to_the_cap_with_full_jitter() -> None:
    assert retry_delay_seconds(0, 1.0) == pytest.approx(0.05)
    assert retry_delay_seconds(1, 1.0) == pytest.approx(0.1)
    assert retry_delay_seconds(3, 0.5) == pytest.approx(0.2)
    assert retry_delay_seconds(6, 1.0) == BACKOFF_CAP_SECONDS
    assert retry_delay_seconds(500, 1.0) == BACKOFF_CAP_SECONDS
    assert retry_delay_seconds(4, 0.0) == 0.0


# -- errors --------------------------------------------------------------------------


async def test_insufficient_stock_is_decoded_from_rich_status(fake: FakeEdge, target: str) -> None:
    def short(request: Any, context: grpc.ServicerContext) -> None:
        abort_with_details(
            context,
            code_pb2.FAILED_PRECONDITION,
            "not enough A",
            "ERROR_REASON_INSUFFICIENT_STOCK",
            {"sku": "A", "requested": "5", "available": "3"},
        )

    fake.behaviours["Reserve"] = short
    async with EdgeClient(target) as client:
        with pytest.raises(StockdError) as caught:
            await client.reserve([("A", 5)], request_id="rid-2")
    error = caught.value
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "ERROR_REASON_INSUFFICIENT_STOCK"
    assert error.reason_value == common_pb2.ERROR_REASON_INSUFFICIENT_STOCK
    assert error.domain == "stockd"
    assert error.message == "not enough A"
    assert error.metadata == {"sku": "A", "requested": "5", "available": "3"}
    assert error.field_violations == []
    assert error.request_id == "rid-2"
    assert not error.retryable
    assert str(error) == "FAILED_PRECONDITION ERROR_REASON_INSUFFICIENT_STOCK: not enough A"


async def test_bad_request_field_violations_are_decoded(fake: FakeEdge, target: str) -> None:
    def invalid(request: Any, context: grpc.ServicerContext) -> None:
        abort_with_details(
            context,
            code_pb2.INVALID_ARGUMENT,
            "bad lines",
            "ERROR_REASON_INVALID_QUANTITY",
            violations=[("lines[0].quantity", "must be at least 1"), ("ttl_seconds", "too long")],
        )

    fake.behaviours["Reserve"] = invalid
    async with EdgeClient(target) as client:
        with pytest.raises(StockdError) as caught:
            await client.reserve([("A", 1)])
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "ERROR_REASON_INVALID_QUANTITY"
    assert caught.value.field_violations == [
        ("lines[0].quantity", "must be at least 1"),
        ("ttl_seconds", "too long"),
    ]


async def test_errors_without_details_keep_code_and_message(fake: FakeEdge, target: str) -> None:
    async with EdgeClient(target) as client:
        with pytest.raises(StockdError) as caught:
            await client.get_item("A")
    assert caught.value.code is grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.reason == ""
    assert caught.value.reason_value == common_pb2.ERROR_REASON_UNSPECIFIED
    assert caught.value.message == "GetItem not scripted"
    assert caught.value.request_id is None


def test_undecodable_details_do_not_hide_the_error() -> None:
    error = StockdError.from_parts(
        grpc.StatusCode.INTERNAL,
        "boom",
        [("grpc-status-details-bin", b"\xff\xff not a proto")],
    )
    assert error.code is grpc.StatusCode.INTERNAL
    assert error.message == "boom"
    assert error.reason == ""
    assert error.status is None


def test_errors_survive_pickling_with_all_fields() -> None:
    error = StockdError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "short",
        reason="ERROR_REASON_INSUFFICIENT_STOCK",
        domain="stockd",
        metadata={"available": "3"},
        field_violations=[("lines[0]", "too many")],
        request_id="rid",
        status=status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message="short"),
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.reason, copy.metadata, copy.field_violations, copy.request_id) == (
        error.code,
        error.reason,
        error.metadata,
        error.field_violations,
        error.request_id,
    )
    assert copy.status == error.status
    assert str(copy) == str(error)


def test_unknown_reason_maps_to_unspecified() -> None:
    error = StockdError(grpc.StatusCode.INTERNAL, "x", reason="ERROR_REASON_FROM_THE_FUTURE")
    assert error.reason_value == common_pb2.ERROR_REASON_UNSPECIFIED


# -- request building ----------------------------------------------------------------


async def test_token_is_sent_as_bearer_metadata(fake: FakeEdge, target: str) -> None:
    fake.behaviours["GetItem"] = lambda request, context: edge_pb2.GetItemResponse(
        item=common_pb2.Item(sku=request.sku)
    )
    async with EdgeClient(target, token="s3cret") as client:
        response = await client.get_item("A")
    assert response.item.sku == "A"
    assert fake.received[0].metadata["authorization"] == "Bearer s3cret"


async def test_no_token_sends_no_authorization(fake: FakeEdge, target: str) -> None:
    fake.behaviours["GetItem"] = lambda request, context: edge_pb2.GetItemResponse()
    async with EdgeClient(target) as client:
        await client.get_item("A")
    assert "authorization" not in fake.received[0].metadata


async def test_lines_accept_tuples_and_protos(fake: FakeEdge, target: str) -> None:
    fake.behaviours["Reserve"] = lambda request, context: reservation_response()
    fake.behaviours["Pick"] = lambda request, context: edge_pb2.PickResponse()
    fake.behaviours["Receive"] = lambda request, context: edge_pb2.ReceiveResponse()
    async with EdgeClient(target) as client:
        await client.reserve(
            [("A", 5), ("B", 2, "case"), edge_pb2.ReserveLine(sku="C", quantity=1)],
            kind="hard",
            channel="web",
            customer_tier="gold",
            allow_partial=True,
        )
        await client.pick("RES-1", [("A", 5, "", "bin-1"), ("B", 1)], release_remainder=True)
        await client.receive([("A", 10, "", "bin-1")], status="returned", reference="PO1")
    (reserve,) = fake.requests("Reserve")
    assert [(line.sku, line.quantity, line.unit) for line in reserve.lines] == [
        ("A", 5, ""),
        ("B", 2, "case"),
        ("C", 1, ""),
    ]
    assert reserve.kind == common_pb2.RESERVATION_KIND_HARD
    assert (reserve.channel, reserve.customer_tier, reserve.allow_partial) == ("web", "gold", True)
    (pick,) = fake.requests("Pick")
    assert [(line.sku, line.quantity, line.location_id) for line in pick.lines] == [
        ("A", 5, "bin-1"),
        ("B", 1, ""),
    ]
    assert pick.release_remainder
    (receipt,) = fake.requests("Receive")
    assert receipt.lines[0].status == common_pb2.STOCK_STATUS_RETURNED
    assert receipt.lines[0].location_id == "bin-1"
    assert receipt.reference == "PO1"


@pytest.mark.parametrize(
    "line",
    [("A",), ("A", 1.5), ("A", True), ("A", 1, "case", "bin"), (5, "A")],
)
async def test_malformed_line_tuples_fail_before_the_network(
    fake: FakeEdge, target: str, line: Any
) -> None:
    async with EdgeClient(target) as client:
        with pytest.raises(TypeError):
            await client.reserve([line])
    assert fake.received == []


async def test_enum_arguments_accept_names_and_values(fake: FakeEdge, target: str) -> None:
    fake.behaviours["Adjust"] = lambda request, context: edge_pb2.AdjustResponse()
    fake.behaviours["ChangeStatus"] = lambda request, context: edge_pb2.ChangeStatusResponse()
    async with EdgeClient(target) as client:
        await client.adjust("A", -3, reason_code="shrink", release_reservations=True)
        await client.adjust("A", 2, reason_code=common_pb2.ADJUSTMENT_REASON_FOUND)
        await client.change_status("A", 1, from_status="sellable", to_status="damaged")
        with pytest.raises(ValueError, match="not one of"):
            await client.adjust("A", 1, reason_code="stolen")
    shrink, found = fake.requests("Adjust")
    assert (shrink.quantity_delta, shrink.reason_code) == (-3, common_pb2.ADJUSTMENT_REASON_SHRINK)
    assert shrink.release_reservations
    assert found.reason_code == common_pb2.ADJUSTMENT_REASON_FOUND
    (change,) = fake.requests("ChangeStatus")
    assert (change.from_status, change.to_status) == (
        common_pb2.STOCK_STATUS_SELLABLE,
        common_pb2.STOCK_STATUS_DAMAGED,
    )


async def test_upsert_item_builds_units_from_a_mapping(fake: FakeEdge, target: str) -> None:
    fake.behaviours["UpsertItem"] = lambda request, context: edge_pb2.UpsertItemResponse(
        item=request.item
    )
    async with EdgeClient(target) as client:
        response = await client.upsert_item(
            "A", units={"case": 12, "pallet": 480}, order_minimum=2, safety_stock=4
        )
    assert response.item.base_unit == "each"
    assert [(unit.unit, unit.base_units_per_unit) for unit in response.item.units] == [
        ("case", 12),
        ("pallet", 480),
    ]
    assert fake.requests("UpsertItem")[0].request_id


async def test_a_bare_string_of_skus_is_refused(target: str) -> None:
    async with EdgeClient(target) as client:
        with pytest.raises(TypeError, match="not a string"):
            await client.get_availability("ABC")


# -- paging ---------------------------------------------------------------------------


def paged_events(total: int, page_size_default: int = 2) -> Behaviour:
    """Serves events 1..total, ``page_size`` per page, tokens are offsets."""

    def behave(request: Any, context: grpc.ServicerContext) -> edge_pb2.ListEventsResponse:
        start = int(request.page_token or "0")
        size = request.page_size or page_size_default
        end = min(start + size, total)
        return edge_pb2.ListEventsResponse(
            events=[common_pb2.LedgerEvent(sequence=number + 1) for number in range(start, end)],
            next_page_token=str(end) if end < total else "",
        )

    return behave


async def test_iterate_events_follows_page_tokens(fake: FakeEdge, target: str) -> None:
    fake.behaviours["ListEvents"] = paged_events(5)
    async with EdgeClient(target) as client:
        sequences = [
            event.sequence async for event in client.iterate_events(sku="A", types=["reserved"])
        ]
    assert sequences == [1, 2, 3, 4, 5]
    requests = fake.requests("ListEvents")
    assert [request.page_token for request in requests] == ["", "2", "4"]
    assert all(request.sku == "A" for request in requests)
    assert all(list(request.types) == [common_pb2.EVENT_TYPE_RESERVED] for request in requests)


async def test_iterate_stops_at_limit_and_asks_only_for_what_it_needs(
    fake: FakeEdge, target: str
) -> None:
    fake.behaviours["ListEvents"] = paged_events(50)
    async with EdgeClient(target) as client:
        sequences = [event.sequence async for event in client.iterate_events(limit=3)]
    assert sequences == [1, 2, 3]
    (request,) = fake.requests("ListEvents")
    assert request.page_size == 3


async def test_iterate_reservations_follows_page_tokens(fake: FakeEdge, target: str) -> None:
    def behave(request: Any, context: grpc.ServicerContext) -> edge_pb2.ListReservationsResponse:
        if not request.page_token:
            return edge_pb2.ListReservationsResponse(
                reservations=[common_pb2.Reservation(reservation_id="R2")],
                next_page_token="next",
            )
        return edge_pb2.ListReservationsResponse(
            reservations=[common_pb2.Reservation(reservation_id="R1")]
        )

    fake.behaviours["ListReservations"] = behave
    async with EdgeClient(target) as client:
        found = [
            reservation.reservation_id
            async for reservation in client.iterate_reservations(state="open", sku="A")
        ]
    assert found == ["R2", "R1"]
    assert all(
        request.state == common_pb2.RESERVATION_STATE_OPEN
        for request in fake.requests("ListReservations")
    )


async def test_a_repeated_page_token_stops_the_walk(fake: FakeEdge, target: str) -> None:
    fake.behaviours["ListItems"] = lambda request, context: edge_pb2.ListItemsResponse(
        items=[common_pb2.Item(sku="A")], next_page_token="same"
    )
    async with EdgeClient(target) as client:
        with pytest.raises(RuntimeError, match="repeated page token"):
            _ = [item async for item in client.iterate_items()]
    assert len(fake.requests("ListItems")) == 2


async def test_list_events_sends_time_filters(fake: FakeEdge, target: str) -> None:
    from datetime import UTC, datetime

    fake.behaviours["ListEvents"] = lambda request, context: edge_pb2.ListEventsResponse()
    async with EdgeClient(target) as client:
        await client.list_events(
            since=datetime(2025, 1, 31, 8, 0, tzinfo=UTC), after_sequence=9, page_size=10
        )
    (request,) = fake.requests("ListEvents")
    assert request.since.ToDatetime() == datetime(2025, 1, 31, 8, 0)
    assert not request.HasField("until")
    assert (request.after_sequence, request.page_size) == (9, 10)


# -- watch ------------------------------------------------------------------------------


def balance(sku: str, available: int, sequence: int) -> common_pb2.SkuAvailability:
    return common_pb2.SkuAvailability(sku=sku, available=available, as_of_sequence=sequence)


async def test_watch_reopens_after_unavailable_and_resumes_with_a_snapshot(
    fake: FakeEdge, target: str
) -> None:
    opened = {"count": 0}

    def watch(
        request: Any, context: grpc.ServicerContext
    ) -> Iterator[edge_pb2.WatchAvailabilityResponse]:
        opened["count"] += 1
        yield edge_pb2.WatchAvailabilityResponse(
            availability=balance("A", 5, opened["count"]), snapshot=True
        )
        if opened["count"] == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "agent restarting")
        yield edge_pb2.WatchAvailabilityResponse(availability=balance("A", 4, 10))

    fake.behaviours["WatchAvailability"] = watch
    async with EdgeClient(target) as client:
        messages = [message async for message in client.watch_availability(["A"])]
    assert [(message.snapshot, message.availability.available) for message in messages] == [
        (True, 5),
        (True, 5),
        (False, 4),
    ]
    assert [list(request.skus) for request in fake.requests("WatchAvailability")] == [["A"]] * 2


async def test_watch_raises_other_errors(fake: FakeEdge, target: str) -> None:
    def watch(
        request: Any, context: grpc.ServicerContext
    ) -> Iterator[edge_pb2.WatchAvailabilityResponse]:
        abort_with_details(
            context, code_pb2.PERMISSION_DENIED, "viewer only", "ERROR_REASON_PERMISSION_DENIED"
        )
        yield edge_pb2.WatchAvailabilityResponse()

    fake.behaviours["WatchAvailability"] = watch
    async with EdgeClient(target) as client:
        with pytest.raises(StockdError) as caught:
            _ = [message async for message in client.watch_availability()]
    assert caught.value.reason == "ERROR_REASON_PERMISSION_DENIED"
    assert len(fake.requests("WatchAvailability")) == 1


async def test_leaving_a_watch_early_cancels_the_call(fake: FakeEdge, target: str) -> None:
    ended = threading.Event()

    def watch(
        request: Any, context: grpc.ServicerContext
    ) -> Iterator[edge_pb2.WatchAvailabilityResponse]:
        context.add_callback(ended.set)
        sequence = 0
        while context.is_active():
            sequence += 1
            yield edge_pb2.WatchAvailabilityResponse(availability=balance("A", 1, sequence))

    fake.behaviours["WatchAvailability"] = watch
    async with EdgeClient(target) as client:
        stream = client.watch_availability()
        async for message in stream:
            assert message.availability.sku == "A"
            break
        await stream.aclose()
        assert ended.wait(5.0)


# -- client life cycle and the blocking wrapper ---------------------------------------


async def test_a_closed_client_refuses_calls(target: str) -> None:
    client = EdgeClient(target)
    await client.close()
    await client.close()
    with pytest.raises(RuntimeError, match="closed"):
        await client.get_item("A")


def test_constructor_validates_limits() -> None:
    with pytest.raises(ValueError, match="timeout_seconds"):
        EdgeClient("127.0.0.1:1", timeout_seconds=0)
    with pytest.raises(ValueError, match="max_retries"):
        EdgeClient("127.0.0.1:1", max_retries=-1)
    with pytest.raises(ValueError, match="max_retries"):
        EdgeClient("127.0.0.1:1", max_retries=1000)


def test_sync_client_retries_and_decodes_errors(fake: FakeEdge, target: str) -> None:
    fake.behaviours["Reserve"] = unavailable_then(1, reservation_response())

    def missing(request: Any, context: grpc.ServicerContext) -> None:
        abort_with_details(
            context, code_pb2.NOT_FOUND, "no such reservation", "ERROR_REASON_UNKNOWN_RESERVATION"
        )

    fake.behaviours["GetReservation"] = missing
    with EdgeClientSync(target, token="t") as client:
        response = client.reserve([("A", 5)], kind="hard")
        assert response.reservation.reservation_id == "RES-1"
        with pytest.raises(StockdError) as caught:
            client.get_reservation("nope")
    assert caught.value.code is grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "ERROR_REASON_UNKNOWN_RESERVATION"
    first, second = fake.requests("Reserve")
    assert first.request_id == second.request_id
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.get_item("A")


def test_sync_client_iterates_pages_and_watches(fake: FakeEdge, target: str) -> None:
    fake.behaviours["ListEvents"] = paged_events(5)

    def watch(
        request: Any, context: grpc.ServicerContext
    ) -> Iterator[edge_pb2.WatchAvailabilityResponse]:
        for sequence in range(1, 4):
            yield edge_pb2.WatchAvailabilityResponse(availability=balance("A", sequence, sequence))

    fake.behaviours["WatchAvailability"] = watch
    with EdgeClientSync(target) as client:
        assert [event.sequence for event in client.iterate_events()] == [1, 2, 3, 4, 5]
        watched = client.watch_availability(["A"])
        assert next(watched).availability.available == 1
        watched.close()
        assert [event.sequence for event in client.iterate_events(limit=2)] == [1, 2]
