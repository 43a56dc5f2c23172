"""Proves every edge RPC survives hostile input: Hypothesis builds requests from
the proto descriptors (random field values, huge and negative integers, unknown
enum numbers, empty, overlong and odd strings, too many lines) and sends raw
random bytes through a generic unary call; the agent answers only OK or a
proper stockd error status (one ErrorInfo of domain "stockd" with a documented
reason, and a code from INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,
ALREADY_EXISTS, RESOURCE_EXHAUSTED, ...), never UNKNOWN, INTERNAL or a crash,
and an error (or any read) changes nothing: as_of_sequence, balances,
reservations, items and locations are byte-for-byte the same afterwards.

Hypothesis runs in a worker thread with a blocking gRPC channel while the
agent serves from the test's event loop; each test has its own agent and a
bounded number of examples. The tests at the end pin the bugs this fuzzing
found (fixed in 65370df) with one minimal input each.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.domain import paging
from server.domain.limits import MESSAGE_BYTES_MAX
from stockd.v1 import common_pb2, edge_pb2, edge_pb2_grpc
from tests.e2e.helpers import (
    HARD,
    SOFT,
    Agent,
    new_id,
    reserve,
    running_agent,
    stocked_item,
    upsert_location,
)

SERVICE: Final = edge_pb2.DESCRIPTOR.services_by_name["EdgeInventoryService"]
METHODS: Final = {method.name: method for method in SERVICE.methods}
UNARY_RPCS: Final = tuple(sorted(name for name, m in METHODS.items() if not m.server_streaming))
MUTATING_RPCS: Final = frozenset(
    {"UpsertItem", "UpsertLocation", "Receive", "Adjust", "RecordCount", "ChangeStatus",
     "Reserve", "Release", "Pick", "Transfer"}
)  # fmt: skip
PROPER_ERRORS: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ABORTED,
    }
)
REASONS: Final = frozenset(common_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
CALL_TIMEOUT_SECONDS: Final = 15.0
WATCH_TIMEOUT_SECONDS: Final = 2.0
EXAMPLES_PER_RPC: Final = 40
RAW_EXAMPLES: Final = 150
WATCH_EXAMPLES: Final = 12
# No sweeper during a fuzz test: a soft reservation expiring between the two
# snapshots of an example would look like an error that changed state.
SWEEP_INTERVAL_SECONDS: Final = 3600.0
INT64_MAX: Final = 2**63 - 1
# google.protobuf.Timestamp's valid range (0001-01-01 to 9999-12-31).
TIMESTAMP_SECONDS_MIN: Final = -62_135_596_800
TIMESTAMP_SECONDS_MAX: Final = 253_402_300_799

ODD_STRINGS: Final = (
    "", " ", " A", "A ", "\x00", "A\x00", "\n", "\t", "\u200b", "é", "💥", "\ud7ff", "A\x7f",
    "a" * 64, "a" * 65, "a" * 129, "x" * 1025, "*", ">", ".", "stockd.events.>",
    "../../etc/passwd", "%s%n", "' OR 1=1 --", "null", "-1", "9" * 30,
)  # fmt: skip


# ----- the agent and its state ---------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """Names that exist in the agent, so generated requests often reach deep logic."""

    held: str
    closed: str
    items_token: str
    events_token: str


async def prepare(agent: Agent) -> Prepared:
    stub = agent.stub
    await stocked_item(stub, "A", 100, units={"case": 12})
    await stocked_item(stub, "M", 60, units={"case": 12}, order_multiple=12)
    await stocked_item(stub, "N", 40, order_minimum=10, safety_stock=5)
    await upsert_location(stub, "aisle-1")
    held = await reserve(stub, {"A": 10, "M": 12}, kind=HARD)
    closed = await reserve(stub, {"A": 1}, kind=SOFT, ttl_seconds=3600)
    await stub.Release(
        edge_pb2.ReleaseRequest(
            request_id=new_id(), reservation_id=closed.reservation.reservation_id
        )
    )
    items = await stub.ListItems(edge_pb2.ListItemsRequest(page_size=1))
    events = await stub.ListEvents(edge_pb2.ListEventsRequest(page_size=1))
    return Prepared(
        held=held.reservation.reservation_id,
        closed=closed.reservation.reservation_id,
        items_token=items.next_page_token,
        events_token=events.next_page_token,
    )


@contextmanager
def blocking_stub(agent: Agent) -> Iterator[tuple[grpc.Channel, Any]]:
    channel = grpc.insecure_channel(agent.target)
    try:
        yield channel, edge_pb2_grpc.EdgeInventoryServiceStub(channel)
    finally:
        channel.close()


def state(stub: Any) -> tuple[bytes, ...]:
    """Everything a refused call must leave untouched (the test ledgers fit one page)."""
    timeout = CALL_TIMEOUT_SECONDS
    availability = stub.GetAvailability(
        edge_pb2.GetAvailabilityRequest(page_size=1000), timeout=timeout
    )
    reservations = stub.ListReservations(
        edge_pb2.ListReservationsRequest(page_size=1000), timeout=timeout
    )
    items = stub.ListItems(edge_pb2.ListItemsRequest(page_size=1000), timeout=timeout)
    locations = stub.ListLocations(edge_pb2.ListLocationsRequest(page_size=1000), timeout=timeout)
    return tuple(
        message.SerializeToString(deterministic=True)
        for message in (availability, reservations, items, locations)
    )


def error_info(error: grpc.RpcError) -> list[error_details_pb2.ErrorInfo]:
    infos: list[error_details_pb2.ErrorInfo] = []
    # The trailing metadata iterates as (key, value) pairs; the stubs type it loosely.
    pairs: Iterable[tuple[str, str | bytes]] = error.trailing_metadata() or ()  # type: ignore[assignment]
    for key, value in pairs:
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value if isinstance(value, bytes) else value.encode())
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                infos.append(info)
    return infos


def size(request: object) -> int:
    if isinstance(request, bytes):
        return len(request)
    assert isinstance(request, Message)
    return request.ByteSize()


def check_answer(rpc: str, call: Callable[[], object], stub: Any, request: object) -> None:
    """One call: OK or a proper stockd error; errors and reads change nothing."""
    check_call(rpc, call, request, lambda: state(stub), mutating=rpc in MUTATING_RPCS)


def check_call(
    rpc: str,
    call: Callable[[], object],
    request: object,
    snapshot: Callable[[], tuple[bytes, ...]],
    *,
    mutating: bool,
) -> None:
    """OK or a proper stockd error; an error (or any read) leaves `snapshot()` as it was."""
    before = snapshot()
    try:
        call()
    except grpc.RpcError as error:
        code = error.code()
        details = error.details() or ""
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED and size(request) > MESSAGE_BYTES_MAX:
            pass  # gRPC's own receive limit (the contract's MESSAGE_BYTES_MAX); no ErrorInfo
        else:
            assert code in PROPER_ERRORS, f"{rpc} answered {code}: {details}\nrequest: {request!r}"
            infos = error_info(error)
            assert len(infos) == 1, f"{rpc} {code}: {len(infos)} ErrorInfo\nrequest: {request!r}"
            assert infos[0].domain == "stockd", infos[0]
            assert infos[0].reason in REASONS, infos[0]
        assert snapshot() == before, f"{rpc} refused ({code}) yet changed state: {request!r}"
        return
    if not mutating:
        assert snapshot() == before, f"read {rpc} changed state: {request!r}"


# ----- strategies from descriptors --------------------------------------------------------


INTEGER_RANGES: Final = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), INT64_MAX),
    FieldDescriptor.TYPE_SINT64: (-(2**63), INT64_MAX),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), INT64_MAX),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
INTERESTING_INTEGERS: Final = (
    0, 1, -1, 2, 3, 5, 7, 10, 11, 12, 13, 24, 100, 499, 500, 501, 1000, 1001, 3600,
    7 * 24 * 3600, 7 * 24 * 3600 + 1, 10**6, 10**6 + 1, 10**12, 10**12 + 1, 10**15, 10**15 + 1,
    2**31 - 1, 2**31, 2**53, -(2**31), INT64_MAX, -(2**63),
)  # fmt: skip


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    interesting = sorted({v for v in (*INTERESTING_INTEGERS, low, high) if low <= v <= high})
    return st.one_of(st.sampled_from(interesting), st.integers(low, high))


def known_strings(field: FieldDescriptor, prepared: Prepared) -> list[str]:
    name = field.name
    if "sku" in name:
        return ["A", "M", "N", "Z"]
    if "location" in name:
        return ["default", "aisle-1", "nowhere"]
    if name == "reservation_id":
        return [prepared.held, prepared.closed, "unknown-reservation"]
    if "unit" in name:
        return ["", "each", "case", "pallet"]
    if name == "page_token":
        return ["", prepared.items_token, prepared.events_token, "bm90LWEtdG9rZW4", "!!!"]
    if "site" in name:
        return ["site-a", "site-b", "S1"]
    if name in ("channel", "customer_tier", "reference", "reason", "description", "actor"):
        return ["web", "gold", "PO-1", "cycle count"]
    return ["A"]


# Names that exist in the server under test, for a string field.
KnownStrings = Callable[[FieldDescriptor], list[str]]


def edge_known(prepared: Prepared) -> KnownStrings:
    return lambda field: known_strings(field, prepared)


def string_field(field: FieldDescriptor, known: KnownStrings) -> st.SearchStrategy[str]:
    if field.name == "request_id":
        return st.one_of(
            st.uuids().map(lambda value: value.hex), st.sampled_from(ODD_STRINGS)
        )
    return st.one_of(
        st.sampled_from(known(field)),
        st.sampled_from(ODD_STRINGS),
        st.text(max_size=70),
        st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=12),
    )


def scalar(field: FieldDescriptor, known: KnownStrings) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in INTEGER_RANGES:
        return integers(*INTEGER_RANGES[kind])
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return string_field(field, known)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=40)
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        numbers = sorted(value.number for value in field.enum_type.values)
        return st.one_of(st.sampled_from(numbers), integers(-(2**31), 2**31 - 1))
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=False, width=32)
    raise AssertionError(f"no strategy for {field.full_name}")


def message(
    descriptor: Descriptor,
    known: KnownStrings,
    depth: int = 0,
    overrides: Mapping[str, st.SearchStrategy[Any]] | None = None,
) -> st.SearchStrategy[Message]:
    """Requests of a type; `overrides` replaces the strategy of fields by name."""
    cls = message_factory.GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Timestamp":
        # Mostly valid times, sometimes outside Timestamp's range (years 1 to 9999).
        return st.builds(
            cls,
            seconds=st.one_of(
                integers(TIMESTAMP_SECONDS_MIN, TIMESTAMP_SECONDS_MAX),
                integers(-(2**63), INT64_MAX),
            ),
            nanos=st.one_of(st.integers(0, 999_999_999), integers(-(2**31), 2**31 - 1)),
        )
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if overrides and field.name in overrides:
            element: st.SearchStrategy[Any] = overrides[field.name]
        elif field.message_type is not None:
            if depth >= 2:
                continue
            element = message(field.message_type, known, depth + 1, overrides)
        else:
            element = scalar(field, known)
        if field.is_repeated:
            fields[field.name] = st.one_of(
                st.lists(element, max_size=4),
                # Past the 500-line and 1000-SKU limits: one element repeated.
                element.flatmap(lambda one: st.sampled_from((501, 1001)).map(lambda n: [one] * n)),
            )
        else:
            fields[field.name] = st.one_of(st.none(), element)
    return st.fixed_dictionaries(fields).map(lambda values: build(cls, values))


def build(cls: type[Message], values: dict[str, Any]) -> Message:
    built = cls()
    for name, value in values.items():
        if value is None:
            continue
        field = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(built, name)
        if field.is_repeated and field.message_type is not None:
            for element in value:
                target.add().CopyFrom(element)
        elif field.is_repeated:
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(built, name, value)
    return built


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# ----- the properties ----------------------------------------------------------------------


def fuzz_unary(agent: Agent, prepared: Prepared, rpc: str, examples: int) -> None:
    """Runs in a worker thread: Hypothesis drives blocking calls to the agent."""
    request_type = METHODS[rpc].input_type
    with blocking_stub(agent) as (_channel, stub):
        method = getattr(stub, rpc)

        @fuzz_settings(examples)
        @given(message(request_type, edge_known(prepared)))
        def property_holds(request: Message) -> None:
            check_answer(
                rpc, lambda: method(request, timeout=CALL_TIMEOUT_SECONDS), stub, request
            )

        property_holds()


@pytest.mark.parametrize("rpc", UNARY_RPCS)
async def test_every_unary_rpc_answers_ok_or_a_proper_error_and_errors_change_nothing(
    tmp_path: Path, rpc: str
) -> None:
    async with running_agent(
        tmp_path / "edge.db", sweep_interval_seconds=SWEEP_INTERVAL_SECONDS
    ) as agent:
        prepared = await prepare(agent)
        await asyncio.to_thread(fuzz_unary, agent, prepared, rpc, EXAMPLES_PER_RPC)


def fuzz_raw_bytes(agent: Agent, examples: int) -> None:
    with blocking_stub(agent) as (channel, stub):

        @fuzz_settings(examples)
        @given(st.sampled_from(UNARY_RPCS), st.binary(max_size=160))
        def property_holds(rpc: str, payload: bytes) -> None:
            generic = channel.unary_unary(f"/{SERVICE.full_name}/{rpc}", None, None)
            check_answer(
                rpc, lambda: generic(payload, timeout=CALL_TIMEOUT_SECONDS), stub, payload
            )

        property_holds()


async def test_raw_random_bytes_get_a_status_and_change_nothing(tmp_path: Path) -> None:
    async with running_agent(
        tmp_path / "edge.db", sweep_interval_seconds=SWEEP_INTERVAL_SECONDS
    ) as agent:
        await prepare(agent)
        await asyncio.to_thread(fuzz_raw_bytes, agent, RAW_EXAMPLES)


def fuzz_watch(agent: Agent, prepared: Prepared, examples: int) -> None:
    request_type = METHODS["WatchAvailability"].input_type
    with blocking_stub(agent) as (_channel, stub):

        @fuzz_settings(examples)
        @given(message(request_type, edge_known(prepared)))
        def property_holds(request: Message) -> None:
            before = state(stub)
            stream = stub.WatchAvailability(request, timeout=WATCH_TIMEOUT_SECONDS)
            try:
                first = next(iter(stream))
                assert first.snapshot, first
            except StopIteration:
                pass
            except grpc.RpcError as error:
                code = error.code()
                # No snapshot to send (no SKU matched) ends at the deadline.
                allowed = PROPER_ERRORS | {grpc.StatusCode.DEADLINE_EXCEEDED}
                assert code in allowed, f"WatchAvailability answered {code}: {request}"
            finally:
                stream.cancel()
            assert state(stub) == before

        property_holds()


async def test_watch_availability_answers_snapshots_or_a_proper_error(tmp_path: Path) -> None:
    async with running_agent(
        tmp_path / "edge.db", sweep_interval_seconds=SWEEP_INTERVAL_SECONDS
    ) as agent:
        prepared = await prepare(agent)
        await asyncio.to_thread(fuzz_watch, agent, prepared, WATCH_EXAMPLES)


# ----- the bugs this fuzzing found (fixed in 65370df), one minimal input each ----------------


def blocking_error(
    agent: Agent, call: Callable[[Any, grpc.Channel], object]
) -> tuple[grpc.StatusCode, list[error_details_pb2.ErrorInfo]]:
    with blocking_stub(agent) as (channel, stub):
        try:
            call(stub, channel)
        except grpc.RpcError as error:
            return error.code(), error_info(error)
    return grpc.StatusCode.OK, []


async def expect_invalid_argument(
    tmp_path: Path, call: Callable[[Any, grpc.Channel], object], reason: str
) -> None:
    async with running_agent(tmp_path / "edge.db") as agent:
        await prepare(agent)
        code, infos = await asyncio.to_thread(blocking_error, agent, call)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, code
    assert [info.reason for info in infos] == [reason], infos


async def test_undecodable_request_bytes_are_invalid_argument(tmp_path: Path) -> None:
    """Was UNKNOWN ("Unexpected DecodeError"), answered by grpc before stockd saw it."""

    def corrupt(_stub: Any, channel: grpc.Channel) -> object:
        generic = channel.unary_unary(f"/{SERVICE.full_name}/Receive", None, None)
        return generic(b"\x0a\x02\xff\xfe", timeout=CALL_TIMEOUT_SECONDS)  # bad UTF-8

    await expect_invalid_argument(tmp_path, corrupt, "ERROR_REASON_INVALID_FIELD")


async def test_an_error_with_many_bad_lines_is_invalid_argument_with_its_details(
    tmp_path: Path,
) -> None:
    """Was RESOURCE_EXHAUSTED without details: 501 violations made a 40 KB trailer,
    which gRPC drops above its 16 KiB metadata limit."""
    request = edge_pb2.ReceiveRequest(
        request_id=new_id(), lines=[edge_pb2.ReceiptLine(sku="", quantity=0)] * 501
    )
    await expect_invalid_argument(
        tmp_path,
        lambda stub, _channel: stub.Receive(request, timeout=CALL_TIMEOUT_SECONDS),
        "ERROR_REASON_TOO_MANY_LINES",
    )


async def test_list_events_after_sequence_beyond_int64_is_invalid_argument(
    tmp_path: Path,
) -> None:
    """Was INTERNAL: the uint64 reached SQLite (OverflowError)."""
    await expect_invalid_argument(
        tmp_path,
        lambda stub, _channel: stub.ListEvents(
            edge_pb2.ListEventsRequest(after_sequence=2**64 - 1), timeout=CALL_TIMEOUT_SECONDS
        ),
        "ERROR_REASON_INVALID_FIELD",
    )


async def test_list_events_with_a_timestamp_out_of_range_is_invalid_argument(
    tmp_path: Path,
) -> None:
    """Was INTERNAL: Timestamp.ToMilliseconds() raised ValueError in the servicer."""
    request = edge_pb2.ListEventsRequest()
    request.since.seconds = 2**62
    await expect_invalid_argument(
        tmp_path,
        lambda stub, _channel: stub.ListEvents(request, timeout=CALL_TIMEOUT_SECONDS),
        "ERROR_REASON_INVALID_FIELD",
    )


async def test_forged_page_token_position_is_invalid_argument(tmp_path: Path) -> None:
    """Was INTERNAL: page tokens are unsigned, and a position past int64 reached SQLite."""
    token = paging.encode(2**70, ("reservations", 0, ""))
    await expect_invalid_argument(
        tmp_path,
        lambda stub, _channel: stub.ListReservations(
            edge_pb2.ListReservationsRequest(page_token=token), timeout=CALL_TIMEOUT_SECONDS
        ),
        "ERROR_REASON_INVALID_PAGE_TOKEN",
    )
