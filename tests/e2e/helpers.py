"""Helpers for the end-to-end tests: running agents, decoding errors, polling.

Everything here talks to a real agent over real gRPC on 127.0.0.1: an
in-process agent (`serve()` in a task) or a child process (`python -m
edge_agent`) that a test may SIGKILL. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import grpc.aio
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from edge_agent.__main__ import serve
from edge_agent.settings import EdgeSettings
from stockd.v1 import common_pb2, edge_pb2, edge_pb2_grpc

if TYPE_CHECKING:
    from stockd.v1.edge_pb2_grpc import EdgeInventoryServiceAsyncStub

    Stub: TypeAlias = EdgeInventoryServiceAsyncStub
else:
    Stub = Any

SERVICE_NAME: str = edge_pb2.DESCRIPTOR.services_by_name["EdgeInventoryService"].full_name
SITE_ID = "site-a"
TOKENS: Mapping[str, str] = {"t-alice": "alice", "t-bob": "bob"}
ALICE: tuple[tuple[str, str], ...] = (("authorization", "Bearer t-alice"),)
BOB: tuple[tuple[str, str], ...] = (("authorization", "Bearer t-bob"),)

# Every call carries a deadline: the channel's service config gives each
# method of the edge service this timeout unless the call names its own.
CALL_TIMEOUT_SECONDS = 20.0
START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 30.0
POLL_INTERVAL_SECONDS = 0.02
SWEEP_INTERVAL_SECONDS = 0.1

SELLABLE = common_pb2.STOCK_STATUS_SELLABLE
DAMAGED = common_pb2.STOCK_STATUS_DAMAGED
QUARANTINE = common_pb2.STOCK_STATUS_QUARANTINE
SOFT = common_pb2.RESERVATION_KIND_SOFT
HARD = common_pb2.RESERVATION_KIND_HARD


def channel_options() -> list[tuple[str, Any]]:
    service_config = {
        "methodConfig": [
            {
                "name": [{"service": SERVICE_NAME}],
                "timeout": f"{CALL_TIMEOUT_SECONDS:.0f}s",
            }
        ]
    }
    return [
        ("grpc.service_config", json.dumps(service_config)),
        ("grpc.enable_retries", 0),
    ]


def new_id() -> str:
    return uuid.uuid4().hex


# ----- polling ---------------------------------------------------------------


async def wait_for(
    predicate: Callable[[], Awaitable[bool] | bool],
    within_seconds: float,
    *,
    interval: float = POLL_INTERVAL_SECONDS,
    message: str = "condition",
) -> None:
    """Polls `predicate` (sync or async) until it is true; fails after `within_seconds`."""
    deadline = time.monotonic() + within_seconds
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_seconds}s waiting for {message}")
        await asyncio.sleep(interval)


async def wait_for_port_file(
    port_file: Path, within_seconds: float, alive: Callable[[], str | None]
) -> int:
    """Waits until the agent wrote its bound port; `alive` returns why it died, if it did."""
    found: list[int] = []

    def ready() -> bool:
        problem = alive()
        if problem is not None:
            raise AssertionError(f"agent stopped before serving: {problem}")
        if port_file.exists():
            text = port_file.read_text().strip()
            if text:
                found.append(int(text))
                return True
        return False

    await wait_for(ready, within_seconds, message=f"port file {port_file}")
    return found[0]


# ----- errors ----------------------------------------------------------------


@dataclass(frozen=True)
class ErrorDetails:
    """The google.rpc.Status an agent sent, unpacked."""

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    violations: dict[str, str]
    error_infos: int


def decode_error(error: grpc.aio.AioRpcError) -> ErrorDetails:
    """Reads 'grpc-status-details-bin' into ErrorInfo and BadRequest."""
    blob: bytes | None = None
    # grpc.aio.Metadata iterates as (key, value) pairs; the stubs type it as a Mapping.
    pairs: Iterable[tuple[str, str | bytes]] = error.trailing_metadata() or ()  # type: ignore[assignment]
    for key, value in pairs:
        if key == "grpc-status-details-bin":
            blob = value if isinstance(value, bytes) else value.encode()
    reason = domain = ""
    metadata: dict[str, str] = {}
    violations: dict[str, str] = {}
    infos = 0
    if blob is not None:
        status = status_pb2.Status.FromString(blob)
        assert status.code == error.code().value[0], "status code differs from the details"
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                infos += 1
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                for violation in bad_request.field_violations:
                    violations[violation.field] = violation.description
    return ErrorDetails(
        code=error.code(),
        message=error.details() or "",
        reason=reason,
        domain=domain,
        metadata=metadata,
        violations=violations,
        error_infos=infos,
    )


async def expect_error(
    call: Awaitable[object],
    code: grpc.StatusCode,
    reason: str | None = None,
    *,
    field: str | None = None,
) -> ErrorDetails:
    """Awaits a call that must fail; checks code, reason and a named field."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        details = decode_error(error)
    else:
        raise AssertionError(f"expected {code.name}, the call succeeded")
    assert details.code == code, details
    if reason is not None:
        assert details.error_infos == 1, details
        assert details.domain == "stockd", details
        assert details.reason == reason, details
    if field is not None:
        assert field in details.violations, details
    return details


# ----- reading state ---------------------------------------------------------


@dataclass(frozen=True)
class LedgerSnapshot:
    """What "nothing changed" compares: the sequence, balances, reservations, master data."""

    as_of_sequence: int
    availability: tuple[bytes, ...]
    reservations: tuple[bytes, ...]
    items: tuple[bytes, ...]
    locations: tuple[bytes, ...]


async def snapshot(stub: Stub, metadata: Sequence[tuple[str, str]] = ()) -> LedgerSnapshot:
    """Reads the whole (small) state of a test agent; every list fits one page."""
    page = await stub.GetAvailability(
        edge_pb2.GetAvailabilityRequest(page_size=1000), metadata=metadata
    )
    reservations = await stub.ListReservations(
        edge_pb2.ListReservationsRequest(page_size=1000), metadata=metadata
    )
    items = await stub.ListItems(edge_pb2.ListItemsRequest(page_size=1000), metadata=metadata)
    locations = await stub.ListLocations(
        edge_pb2.ListLocationsRequest(page_size=1000), metadata=metadata
    )
    tokens = (
        page.next_page_token,
        reservations.next_page_token,
        items.next_page_token,
        locations.next_page_token,
    )
    assert tokens == ("", "", "", ""), "snapshot() is for small ledgers"

    def wire(messages: Iterable[Message]) -> tuple[bytes, ...]:
        return tuple(m.SerializeToString(deterministic=True) for m in messages)

    return LedgerSnapshot(
        as_of_sequence=page.as_of_sequence,
        availability=wire(page.availability),
        reservations=wire(reservations.reservations),
        items=wire(items.items),
        locations=wire(locations.locations),
    )


async def availability(
    stub: Stub, sku: str, metadata: Sequence[tuple[str, str]] = ()
) -> common_pb2.SkuAvailability:
    response = await stub.GetAvailability(
        edge_pb2.GetAvailabilityRequest(skus=[sku]), metadata=metadata
    )
    assert len(response.availability) == 1
    found: common_pb2.SkuAvailability = response.availability[0]
    return found


async def all_events(
    stub: Stub,
    request: edge_pb2.ListEventsRequest | None = None,
    metadata: Sequence[tuple[str, str]] = (),
) -> list[common_pb2.LedgerEvent]:
    """Pages through ListEvents with the given filters."""
    query = edge_pb2.ListEventsRequest()
    if request is not None:
        query.CopyFrom(request)
    events: list[common_pb2.LedgerEvent] = []
    for _ in range(10_000):
        page = await stub.ListEvents(query, metadata=metadata)
        events.extend(page.events)
        if not page.next_page_token:
            return events
        query.page_token = page.next_page_token
    raise AssertionError("ListEvents never ended")


async def all_reservations(
    stub: Stub, request: edge_pb2.ListReservationsRequest | None = None
) -> list[common_pb2.Reservation]:
    query = edge_pb2.ListReservationsRequest(page_size=1000)
    if request is not None:
        query.CopyFrom(request)
    found: list[common_pb2.Reservation] = []
    for _ in range(10_000):
        page = await stub.ListReservations(query)
        found.extend(page.reservations)
        if not page.next_page_token:
            return found
        query.page_token = page.next_page_token
    raise AssertionError("ListReservations never ended")


async def last_sequence(stub: Stub) -> int:
    response = await stub.GetAvailability(edge_pb2.GetAvailabilityRequest(page_size=1))
    sequence: int = response.as_of_sequence
    return sequence


# ----- building state --------------------------------------------------------


def item(
    sku: str,
    *,
    units: Mapping[str, int] | None = None,
    order_minimum: int = 0,
    order_multiple: int = 0,
    safety_stock: int = 0,
    description: str = "",
) -> common_pb2.Item:
    return common_pb2.Item(
        sku=sku,
        description=description or f"item {sku}",
        base_unit="each",
        units=[
            common_pb2.UnitConversion(unit=unit, base_units_per_unit=factor)
            for unit, factor in (units or {}).items()
        ],
        order_minimum=order_minimum,
        order_multiple=order_multiple,
        safety_stock=safety_stock,
    )


async def upsert_item(
    stub: Stub, message: common_pb2.Item, metadata: Sequence[tuple[str, str]] = ()
) -> common_pb2.Item:
    response = await stub.UpsertItem(
        edge_pb2.UpsertItemRequest(request_id=new_id(), item=message), metadata=metadata
    )
    stored: common_pb2.Item = response.item
    return stored


async def upsert_location(stub: Stub, location_id: str) -> None:
    await stub.UpsertLocation(
        edge_pb2.UpsertLocationRequest(
            request_id=new_id(),
            location=common_pb2.Location(location_id=location_id, description=location_id),
        )
    )


async def receive(
    stub: Stub,
    sku: str,
    quantity: int,
    *,
    location_id: str = "",
    unit: str = "",
    status: int = 0,
    metadata: Sequence[tuple[str, str]] = (),
) -> edge_pb2.ReceiveResponse:
    response: edge_pb2.ReceiveResponse = await stub.Receive(
        edge_pb2.ReceiveRequest(
            request_id=new_id(),
            lines=[
                edge_pb2.ReceiptLine(
                    sku=sku,
                    quantity=quantity,
                    unit=unit,
                    location_id=location_id,
                    status=status,  # type: ignore[arg-type]
                )
            ],
            reference="PO-1",
        ),
        metadata=metadata,
    )
    return response


async def stocked_item(
    stub: Stub, sku: str, quantity: int, metadata: Sequence[tuple[str, str]] = (), **rules: Any
) -> None:
    """Creates an item and receives `quantity` sellable units at "default"."""
    await upsert_item(stub, item(sku, **rules), metadata)
    if quantity:
        await receive(stub, sku, quantity, metadata=metadata)


async def reserve(
    stub: Stub,
    lines: Mapping[str, int],
    *,
    kind: int = SOFT,
    ttl_seconds: int = 0,
    request_id: str | None = None,
    metadata: Sequence[tuple[str, str]] = (),
) -> edge_pb2.ReserveResponse:
    response: edge_pb2.ReserveResponse = await stub.Reserve(
        edge_pb2.ReserveRequest(
            request_id=request_id or new_id(),
            lines=[edge_pb2.ReserveLine(sku=sku, quantity=q) for sku, q in lines.items()],
            kind=kind,  # type: ignore[arg-type]
            ttl_seconds=ttl_seconds,
        ),
        metadata=metadata,
    )
    return response


# ----- in-process agent ------------------------------------------------------


@dataclass
class Agent:
    """A running agent and a channel to it."""

    stub: Stub
    port: int
    db_path: Path
    site_id: str
    channel: grpc.aio.Channel
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def open_channel(self) -> grpc.aio.Channel:
        """Another channel to the agent; closed when the agent stops."""
        channel = grpc.aio.insecure_channel(self.target, options=channel_options())
        self._channels.append(channel)
        return channel

    async def close_channels(self) -> None:
        for channel in [self.channel, *self._channels]:
            await channel.close(None)


def make_stub(channel: grpc.aio.Channel) -> Stub:
    return edge_pb2_grpc.EdgeInventoryServiceStub(channel)


def settings_for(
    db_path: Path,
    port_file: Path,
    *,
    site_id: str = SITE_ID,
    tokens: Mapping[str, str] | None = None,
    sweep_interval_seconds: float = SWEEP_INTERVAL_SECONDS,
) -> EdgeSettings:
    return EdgeSettings(
        site_id=site_id,
        db_path=db_path,
        listen="127.0.0.1:0",
        port_file=port_file,
        tokens=dict(tokens or {}),
        log_level="warning",
        sweep_interval_seconds=sweep_interval_seconds,
    )


@contextlib.asynccontextmanager
async def running_agent(
    db_path: Path,
    *,
    site_id: str = SITE_ID,
    tokens: Mapping[str, str] | None = None,
    sweep_interval_seconds: float = SWEEP_INTERVAL_SECONDS,
    **overrides: Any,
) -> AsyncIterator[Agent]:
    """Runs `serve()` in a task of the current loop; stops it and awaits it on exit.

    `overrides` replace further EdgeSettings fields (for example write_queue_max).
    """
    port_file = db_path.with_name(f"{db_path.stem}-{new_id()[:8]}.port")
    config = dataclasses.replace(
        settings_for(
            db_path,
            port_file,
            site_id=site_id,
            tokens=tokens,
            sweep_interval_seconds=sweep_interval_seconds,
        ),
        **overrides,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop), name="edge-agent-under-test")
    agent: Agent | None = None

    def alive() -> str | None:
        if not task.done():
            return None
        return repr(task.exception()) if not task.cancelled() else "cancelled"

    try:
        port = await wait_for_port_file(port_file, START_TIMEOUT_SECONDS, alive)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
        agent = Agent(make_stub(channel), port, db_path, site_id, channel)
        yield agent
    finally:
        try:
            if agent is not None:
                await agent.close_channels()
        finally:
            stop.set()
            await asyncio.wait_for(task, STOP_TIMEOUT_SECONDS)


# ----- agent as a child process ----------------------------------------------


class AgentProcess:
    """`python -m edge_agent` as a child process, for kill -9 tests."""

    def __init__(
        self,
        db_path: Path,
        log_path: Path,
        *,
        site_id: str = SITE_ID,
        config_path: Path | None = None,
    ) -> None:
        self.db_path = db_path
        self.log_path = log_path
        self.site_id = site_id
        self.config_path = config_path
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> int:
        assert self.process is None or self.process.returncode is not None
        port_file = self.db_path.with_name(f"{self.db_path.stem}-{new_id()[:8]}.port")
        config = ["--config", str(self.config_path)] if self.config_path is not None else []
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge_agent",
                "--site", self.site_id,
                "--db", str(self.db_path),
                "--listen", "127.0.0.1:0",
                "--port-file", str(port_file),
                "--log-level", "warning",
                "--log-json",
                *config,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={k: v for k, v in os.environ.items() if not k.startswith("STOCKD_")},
            )  # fmt: skip
        process = self.process

        def alive() -> str | None:
            if process.returncode is None:
                return None
            return f"exit code {process.returncode}; log:\n{self.log_path.read_text()}"

        self.port = await wait_for_port_file(port_file, START_TIMEOUT_SECONDS, alive)
        return self.port

    async def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)

    async def terminate(self) -> int:
        """SIGTERM (a clean stop) and reap; returns the exit code."""
        process = self.process
        assert process is not None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)


@contextlib.asynccontextmanager
async def agent_process(
    db_path: Path, log_path: Path, *, config_path: Path | None = None
) -> AsyncIterator[AgentProcess]:
    """Yields an AgentProcess; whatever happens, the child is killed and reaped."""
    child = AgentProcess(db_path, log_path, config_path=config_path)
    try:
        yield child
    finally:
        await child.kill()
