"""``stockctl``: the operator's command line for an edge agent and the hub.

Global options come before the command (``stockctl --target X --json reserve
A:5``). Edge commands are flat, one per RPC. Hub commands live under
``stockctl hub``, which takes its own ``--target`` (the hub's address; the
token, timeout and ``--json`` are the global ones): ``stockctl --json hub
--target H balances S1``. Output is a rich table, or the response proto as
JSON with ``--json`` for scripts. Mutating commands print their request_id
to stderr before the call, so an operator whose call timed out can repeat
it safely with ``--request-id``.

Exit codes: 0 success, 1 the server refused or could not be reached, 2 bad
usage (the server is never called).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeAlias, TypeVar

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from clients import render
from clients._rpc import RpcClient, paginate
from clients.edge import DEFAULT_TIMEOUT_SECONDS, EdgeClient
from clients.errors import StockdError
from clients.hub import HubClient
from clients.parsing import (
    LineSpec,
    enum_names,
    parse_adjustment_reason,
    parse_event_type,
    parse_line,
    parse_quantity,
    parse_reservation_state,
    parse_stock_status,
    parse_timestamp,
    parse_unit_conversion,
)
from stockd.v1 import common_pb2, edge_pb2, hub_pb2

ResultT = TypeVar("ResultT")
ParsedT = TypeVar("ParsedT")
ClientT = TypeVar("ClientT", bound=RpcClient[Any])

DEFAULT_TARGET = "127.0.0.1:7400"
DEFAULT_HUB_TARGET = "127.0.0.1:7500"
# Lists stop here unless --limit says otherwise: an audit trail can be
# millions of entries, and a terminal is not the place to page them all.
DEFAULT_LIST_LIMIT = 100
EXIT_SERVER_ERROR = 1
# Conventional exit code after SIGINT (128 + 2) is not used for watch: a
# watch ended by Ctrl-C ended as asked.
EXIT_OK = 0

STATUS_HELP = "Stock status: " + ", ".join(enum_names(common_pb2.StockStatus)) + "."
REASON_CODE_HELP = "Reason code: " + ", ".join(enum_names(common_pb2.AdjustmentReason)) + "."
STATE_HELP = "Reservation state: " + ", ".join(enum_names(common_pb2.ReservationState)) + "."
EVENT_TYPE_HELP = "Event type (repeatable): " + ", ".join(enum_names(common_pb2.EventType)) + "."
REQUEST_ID_HELP = "Idempotency key; repeat a call safely by reusing it. Default: a new UUID."

# Parameters several commands declare alike.
SkusArgument: TypeAlias = Annotated[
    list[str] | None, typer.Argument(metavar="[SKU]...", help="SKUs; none: every SKU.")
]
LimitWithoutSkusOption: TypeAlias = Annotated[
    int, typer.Option(min=1, help="With no SKUs, show at most this many.")
]
# The hub's own --target, after "hub": the global one names the edge agent.
HubTargetOption: TypeAlias = Annotated[
    str, typer.Option(envvar="STOCKD_HUB_TARGET", help="Hub host:port.")
]

app = typer.Typer(
    name="stockctl",
    help="Operate a stockd edge agent: items, stock movements, reservations, audit.",
    no_args_is_help=True,
    add_completion=False,
    # Locals would include the bearer token.
    pretty_exceptions_show_locals=False,
)
hub_app = typer.Typer(
    name="hub",
    help="Operate the stockd hub: sites, their balances, escrow grants and recalls.",
    no_args_is_help=True,
)
app.add_typer(hub_app)

stdout_console = Console(highlight=False)
stderr_console = Console(stderr=True, highlight=False)


@dataclass(frozen=True, slots=True)
class Settings:
    """What the global options chose; one per invocation.

    Attributes:
        target: ``host:port`` of the edge agent.
        token: Bearer token, or None.
        timeout_seconds: Deadline of each call, retries included.
        json_output: Print responses as JSON instead of tables.
        hub_target: ``host:port`` of the hub (set by ``stockctl hub``).
    """

    target: str
    token: str | None
    timeout_seconds: float
    json_output: bool
    hub_target: str = DEFAULT_HUB_TARGET

    def client(self) -> EdgeClient:
        """Returns a client configured by these settings."""
        return EdgeClient(self.target, token=self.token, timeout_seconds=self.timeout_seconds)

    def hub_client(self) -> HubClient:
        """Returns a hub client configured by these settings."""
        return HubClient(self.hub_target, token=self.token, timeout_seconds=self.timeout_seconds)


@app.callback()
def main(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Option(envvar="STOCKD_TARGET", help="Edge agent host:port.")
    ] = DEFAULT_TARGET,
    token: Annotated[
        str | None,
        typer.Option(envvar="STOCKD_TOKEN", help="Bearer token.", show_default=False),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            envvar="STOCKD_TIMEOUT",
            min=0.001,
            help="Deadline of each call in seconds, retries included.",
        ),
    ] = DEFAULT_TIMEOUT_SECONDS,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the response proto as JSON.")
    ] = False,
) -> None:
    """Operate a stockd edge agent: items, stock movements, reservations, audit.

    ``stockctl hub ...`` operates the hub.
    """
    ctx.obj = Settings(
        target=target, token=token or None, timeout_seconds=timeout, json_output=json_output
    )


# -- item master and locations ------------------------------------------------


@app.command("item-upsert")
def item_upsert(
    ctx: typer.Context,
    sku: Annotated[str, typer.Argument(metavar="SKU", help="The SKU.")],
    base_unit: Annotated[str, typer.Option(help="Unit every quantity is stored in.")] = "each",
    unit: Annotated[
        list[str] | None,
        typer.Option("--unit", help="Larger unit as UNIT=N base units, e.g. case=12 (repeatable)."),
    ] = None,
    minimum: Annotated[
        int, typer.Option("--min", min=0, help="Order minimum, base units (0: none).")
    ] = 0,
    multiple: Annotated[
        int, typer.Option(min=0, help="Order multiple, base units (0 or 1: any).")
    ] = 0,
    safety_stock: Annotated[int, typer.Option(min=0, help="Units never promised here.")] = 0,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    request_id: Annotated[str | None, typer.Option(help=REQUEST_ID_HELP)] = None,
) -> None:
    """Create or replace an item (its units replace the previous set)."""
    settings = _settings(ctx)
    units = [_parse(parse_unit_conversion, text, "--unit") for text in unit or []]
    request_id = _announce_request_id(request_id)
    response = _call(
        settings,
        lambda client: client.upsert_item(
            sku,
            base_unit=base_unit,
            description=description,
            units=units,
            order_minimum=minimum,
            order_multiple=multiple,
            safety_stock=safety_stock,
            request_id=request_id,
        ),
    )
    _show(settings, response, lambda: render.items_table([response.item]))


@app.command("item-get")
def item_get(
    ctx: typer.Context, sku: Annotated[str, typer.Argument(metavar="SKU", help="The SKU.")]
) -> None:
    """Show one item."""
    settings = _settings(ctx)
    response = _call(settings, lambda client: client.get_item(sku))
    _show(settings, response, lambda: render.items_table([response.item]))


@app.command("items")
def items(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = (
        DEFAULT_LIST_LIMIT
    ),
) -> None:
    """List items in SKU order."""
    settings = _settings(ctx)
    found = _collect(settings, lambda client: client.iterate_items(limit=limit + 1), limit)
    response = edge_pb2.ListItemsResponse(items=found)
    _show(settings, response, lambda: render.items_table(found))


@app.command("location-upsert")
def location_upsert(
    ctx: typer.Context,
    location_id: Annotated[str, typer.Argument(metavar="ID", help="Location code.")],
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    request_id: Annotated[str | None, typer.Option(help=REQUEST_ID_HELP)] = None,
) -> None:
    """Create or replace a location."""
    settings = _settings(ctx)
    request_id = _announce_request_id(request_id)
    response = _call(
        settings,
        lambda client: client.upsert_location(
            location_id, description=description, request_id=request_id
        ),
    )
    _show(settings, response, lambda: render.locations_table([response.location]))


@app.command("locations")
def locations(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = (
        DEFAULT_LIST_LIMIT
    ),
) -> None:
    """List locations in id order."""
    settings = _settings(ctx)
    found = _collect(settings, lambda client: client.iterate_locations(limit=limit + 1), limit)
    response = edge_pb2.ListLocationsResponse(locations=found)
    _show(settings, response, lambda: render.locations_table(found))


# -- stock movements ------------------------------------------------------------


@app.command("receive")
def receive(
    ctx: typer.Context,
    lines: Annotated[
        list[str],
        typer.Argument(metavar="SKU:QTY[:UNIT][@LOCATION]...", help="Lines received."),
    ],
    reference: Annotated[str, typer.Option(help="Purchase order or shipment id.")] = "",
    status: Annotated[str, typer.Option(help=STATUS_HELP)] = "sellable",
    note: Annotated[str, typer.Option(help="Free-text note.")] = "",
    request_id: Annotated[str | None, typer.Option(help=REQUEST_ID_HELP)] = None,
) -> None:
    """Record arriving stock, all lines at once."""
    settings = _settings(ctx)
    specs = _parse_lines(lines, allow_location=True)
    status_value = _parse(parse_stock_status, status, "--status")
    request_id = _announce_request_id(request_id)
    response = _call(
        settings,
        lambda client: client.receive(
            [(spec.sku, spec.quantity, spec.unit, spec.location_id) for spec in specs],
            reference=reference,
            reason=note,
            status=status_value,
            request_id=request_id,
        ),
    )
    _show(
        settings,
        response,
        lambda: Group(
            render.events_table(response.events), render.availability_table(response.availability)
        ),
    )


@app.command("adjust", context_settings={"ignore_unknown_options": True})
def adjust(
    ctx: typer.Context,
    sku: Annotated[str, typer.Argument(metavar="SKU", help="The SKU.")],
    delta: Annotated[str, typer.Argument(metavar="DELTA", help="Signed change, e.g. -3 or +5.")],
    reason_code: Annotated[str, typer.Option(help=REASON_CODE_HELP, show_default=False)],
    location: Annotated[str, typer.Option(help="Location (default: the site default).")] = "",
    status: Annotated[str, typer.Option(help=STATUS_HELP)] = "sellable",
    unit: Annotated[str, typer.Option(help="Unit of DELTA (default: base unit).")] = "",
    note: Annotated[str, typer.Option(help="Free-text note.")] = "",
    release_reservations: Annotated[
        bool,
        typer.Option(
            "--release-reservations",
            help="Release reservations rather than refuse a decrease below what is reserved.",
        ),
    ] = False,
    request_id: Annotated[str | None, typer.Option(help=REQUEST_ID_HELP)] = None,
) -> None:
    """Change on-hand by a signed quantity with a reason code."""
    settings = _settings(ctx)
    quantity_delta = _parse(lambda text: parse_quantity(text, allow_negative=True), delta, "DELTA")
    reason_value = _parse(parse_adjustment_reason, reason_code, "--reason-code")
    status_value = _parse(parse_stock_status, status, "--status")
    request_id = _announce_request_id(request_id)
    response = _call(
        settings,
        lambda client: client.adjust(
            sku,
            quantity_delta,
            reason_code=reason_value,
            location_id=location,
            status=status_value,
            unit=unit,
            reason=note,
            release_reservations=release_reservations,
            request_id=request_id,
        ),
    )
    _show(
        settings,
        response,
        lambda: Group(
            render.events_table(response.events),
            render.availability_table([response.availability]),
        ),
    )


@app.command("count")
def count(
    ctx: typer.Context,
    sku: Annotated[str, typer.Argument(metavar="SKU", help="The SKU.")],
    counted: Annotated[
        str, typer.Argument(metavar="COUNTED", help="Quantity counted (0 or more).")
    ],
    location: Annotated[str, typer.Option(help="Location (default: the site default).")] = "",
    status: Annotated[str, typer.Option(help=STATUS_HELP)] = "sellable",
    unit: Annotated[str, typer.Option(help="Unit of COUNTED (default: base unit).")] = "",
    note: Annotated[str, typer.Option(help="Free-text note.")] = "",
    request_id: Annotated[str | None, typer.Option(help=REQUEST_ID_HELP)] = None,
) -> None:
    """Record a cycle count: on-hand becomes the counted quantity."""
    settings = _settings(ctx)
    counted_quantity = _parse(
        lambda text: parse_quantity(text, allow_zero=True), counted, "COUNTED"
    )
    status_value = _parse(parse_stock_status, status, "--status")
    request_id = _announce_request_id(request_id)
    response = _call(
        settings,
        lambda client: client.record_count(
            sku,
            counted_quantity,
            location_id=location,
            status=status_value,
            unit=unit,
            reason=note,
            request_id=request_id,
        ),
    )
    _show(
        settings,
        response,
        lambda: Group(
            render.events_table(response.events),
            Text(f"variance {response.variance:+d}"),
            render.availability_table([response.availability]),
        ),
    )


@app.command("status")
def change_status(
    ctx: typer.Context,
    sku: Annotated[str, typer.Argument(metavar="SKU", help="The SKU.")],
    quantity: Annotated[str, typer.Argument(metavar="QTY", help="Units to move.")],
    to_status: Annotated[str, typer.Option("--to", help="New status. " + STATUS_HELP)],
    from_status: Annotated[str, typer.Option("--from", help=STATUS_HELP)] = "sellable",
    location: Annotated[str, typer.Option(help="Location (default: the site default).")] = "",
    unit: Annotated[str, typer.Option(help="Unit of QTY (default: base unit).")] = "",
    note: Annotated[str, typer.Option(help="Free-text note.")] = "",
    release_reservations: Annotated[
        bool,
        typer.Option(
            "--release-reservations",
            help="Release reservations rather than refuse moving reserved sellable units.",
        ),
    ] = False,
    request_id: Annotated[str | None, typer.Option(help=REQUEST_ID_HELP)] = None,
) -> None:
    """Move units between stock statuses at one location."""
    settings = _settings(ctx)
    quantity_value = _parse(parse_quantity, quantity, "QTY")
    from_value = _parse(parse_stock_status, from_status, "--from")
    to_value = _parse(parse_stock_status, to_status, "--to")
    request_id = _announce_request_id(request_id)
    response = _call(
        settings,
        lambda client: client.change_status(
            sku,
            quantity_value,
            from_status=from_value,
            to_status=to_value,
            location_id=location,
            unit=unit,
            reason=note,
            release_reservations=release_reservations,
            request_id=request_id,
        ),
    )
    _show(
        settings,
        response,
        lambda: Group(
            render.events_table(response.events),
            render.availability_table([response.availability]),
        ),
    )


@app.command("transfer")
def transfer(
    ctx: typer.Context,
    sku: Annotated[str, typer.Argument(metavar="SKU", help="The SKU.")],
    quantity: Annotated[str, typer.Argument(metavar="QTY", help="Units to move.")],
    from_location: Annotated[
        str, typer.Option("--from", help="Source location (default: the site default).")
    ] = "",
    to_location: Annotated[
        str, typer.Option("--to", help="Destination location at this site.")
    ] = "",
    to_site: Annotated[str, typer.Option("--to-site", help="Destination site.")] = "",
    status: Annotated[str, typer.Option(help=STATUS_HELP)] = "sellable",
    unit: Annotated[str, typer.Option(help="Unit of QTY (default: base unit).")] = "",
    reference: Annotated[str, typer.Option(help="Transfer order id.")] = "",
    note: Annotated[str, typer.Option(help="Free-text note.")] = "",
    request_id: Annotated[str | None, typer.Option(help=REQUEST_ID_HELP)] = None,
) -> None:
    """Move units to another location (--to) or out to another site (--to-site)."""
    settings = _settings(ctx)
    quantity_value = _parse(parse_quantity, quantity, "QTY")
    if bool(to_location) == bool(to_site):
        raise typer.BadParameter("give exactly one of --to and --to-site", param_hint="--to")
    status_value = _parse(parse_stock_status, status, "--status")
    request_id = _announce_request_id(request_id)
    response = _call(
        settings,
        lambda client: client.transfer(
            sku,
            quantity_value,
            to_location_id=to_location,
            to_site_id=to_site,
            from_location_id=from_location,
            status=status_value,
            unit=unit,
            reference=reference,
            reason=note,
            request_id=request_id,
        ),
    )
    _show(
        settings,
        response,
        lambda: Group(
            render.events_table(response.events),
            render.availability_table([response.availability]),
        ),
    )


# -- reservations ------------------------------------------------------------------


@app.command("reserve")
def reserve(
    ctx: typer.Context,
    lines: Annotated[list[str], typer.Argument(metavar="SKU:QTY[:UNIT]...", help="Lines to hold.")],
    hard: Annotated[
        bool, typer.Option("--hard", help="Hold until picked or released (no expiry).")
    ] = False,
    ttl: Annotated[
        int, typer.Option(min=0, help="Seconds a soft reservation lives (0: site default).")
    ] = 0,
    channel: Annotated[str, typer.Option(help="Sales or fulfilment channel.")] = "",
    tier: Annotated[str, typer.Option(help="Customer tier.")] = "",
    reference: Annotated[str, typer.Option(help="Order number or other reference.")] = "",
    partial: Annotated[
        bool, typer.Option("--partial", help="Reserve what is available instead of failing.")
    ] = False,
    request_id: Annotated[str | None, typer.Option(help=REQUEST_ID_HELP)] = None,
) -> None:
    """Hold stock for an order; all lines or none unless --partial."""
    settings = _settings(ctx)
    specs = _parse_lines(lines, allow_location=False)
    request_id = _announce_request_id(request_id)
    response = _call(
        settings,
        lambda client: client.reserve(
            [(spec.sku, spec.quantity, spec.unit) for spec in specs],
            kind=common_pb2.RESERVATION_KIND_HARD if hard else common_pb2.RESERVATION_KIND_SOFT,
            ttl_seconds=ttl,
            channel=channel,
            customer_tier=tier,
            reference=reference,
            allow_partial=partial,
            request_id=request_id,
        ),
    )

    def view() -> RenderableType:
        parts: list[RenderableType] = []
        if response.HasField("reservation"):
            parts.append(render.reservation_view(response.reservation))
        else:
            parts.append(Text("nothing reserved", style="yellow"))
        if response.shortfalls:
            parts.append(render.shortfalls_table(response.shortfalls))
        return Group(*parts)

    _show(settings, response, view)


@app.command("release")
def release(
    ctx: typer.Context,
    reservation_id: Annotated[
        str, typer.Argument(metavar="RESERVATION_ID", help="The reservation.")
    ],
    lines: Annotated[
        list[str] | None,
        typer.Argument(metavar="[SKU:QTY[:UNIT]]...", help="Units to release; none: all held."),
    ] = None,
    note: Annotated[str, typer.Option(help="Free-text note.")] = "",
    request_id: Annotated[str | None, typer.Option(help=REQUEST_ID_HELP)] = None,
) -> None:
    """Give back all or part of a reservation."""
    settings = _settings(ctx)
    specs = _parse_lines(lines or [], allow_location=False)
    request_id = _announce_request_id(request_id)
    response = _call(
        settings,
        lambda client: client.release(
            reservation_id,
            [(spec.sku, spec.quantity, spec.unit) for spec in specs],
            reason=note,
            request_id=request_id,
        ),
    )
    _show(
        settings,
        response,
        lambda: Group(
            render.reservation_view(response.reservation), render.events_table(response.events)
        ),
    )


@app.command("pick")
def pick(
    ctx: typer.Context,
    reservation_id: Annotated[
        str, typer.Argument(metavar="RESERVATION_ID", help="The reservation.")
    ],
    lines: Annotated[
        list[str],
        typer.Argument(metavar="SKU:QTY[:UNIT][@LOCATION]...", help="Units picked."),
    ],
    release_remainder: Annotated[
        bool,
        typer.Option("--release-remainder", help="Release what is still held afterwards."),
    ] = False,
    request_id: Annotated[str | None, typer.Option(help=REQUEST_ID_HELP)] = None,
) -> None:
    """Pick reserved units: on-hand and the reservation go down together."""
    settings = _settings(ctx)
    specs = _parse_lines(lines, allow_location=True)
    request_id = _announce_request_id(request_id)
    response = _call(
        settings,
        lambda client: client.pick(
            reservation_id,
            [(spec.sku, spec.quantity, spec.unit, spec.location_id) for spec in specs],
            release_remainder=release_remainder,
            request_id=request_id,
        ),
    )
    _show(
        settings,
        response,
        lambda: Group(
            render.reservation_view(response.reservation), render.events_table(response.events)
        ),
    )


@app.command("reservation")
def reservation(
    ctx: typer.Context,
    reservation_id: Annotated[
        str, typer.Argument(metavar="RESERVATION_ID", help="The reservation.")
    ],
) -> None:
    """Show one reservation."""
    settings = _settings(ctx)
    response = _call(settings, lambda client: client.get_reservation(reservation_id))
    _show(settings, response, lambda: render.reservation_view(response.reservation))


@app.command("reservations")
def reservations(
    ctx: typer.Context,
    state: Annotated[str, typer.Option(help=STATE_HELP + " Default: any.")] = "",
    sku: Annotated[str, typer.Option(help="Only reservations with a line for this SKU.")] = "",
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = (
        DEFAULT_LIST_LIMIT
    ),
) -> None:
    """List reservations, newest first."""
    settings = _settings(ctx)
    state_value = (
        _parse(parse_reservation_state, state, "--state")
        if state
        else common_pb2.RESERVATION_STATE_UNSPECIFIED
    )
    found = _collect(
        settings,
        lambda client: client.iterate_reservations(state=state_value, sku=sku, limit=limit + 1),
        limit,
    )
    response = edge_pb2.ListReservationsResponse(reservations=found)
    _show(settings, response, lambda: render.reservations_table(found))


# -- balances and the ledger ---------------------------------------------------------


@app.command("availability")
def availability(
    ctx: typer.Context,
    skus: SkusArgument = None,
    by_location: Annotated[
        bool, typer.Option("--by-location", help="Also show on-hand per location and status.")
    ] = False,
    limit: LimitWithoutSkusOption = DEFAULT_LIST_LIMIT,
) -> None:
    """Show balances: on hand, reserved, safety stock, local share, available."""
    settings = _settings(ctx)
    if skus:
        response = _call(settings, lambda client: client.get_availability(skus))
    else:
        found = _collect(
            settings, lambda client: client.iterate_availability(limit=limit + 1), limit
        )
        response = edge_pb2.GetAvailabilityResponse(
            availability=found,
            as_of_sequence=max((row.as_of_sequence for row in found), default=0),
        )

    def view() -> RenderableType:
        table = render.availability_table(response.availability)
        if by_location:
            return Group(table, render.buckets_table(response.availability))
        return table

    _show(settings, response, view)


@app.command("events")
def events(
    ctx: typer.Context,
    sku: Annotated[str, typer.Option(help="Only this SKU.")] = "",
    actor: Annotated[str, typer.Option(help="Only this actor.")] = "",
    since: Annotated[
        str, typer.Option(help="Only entries at or after this ISO time (no offset: UTC).")
    ] = "",
    until: Annotated[
        str, typer.Option(help="Only entries before this ISO time (no offset: UTC).")
    ] = "",
    after: Annotated[int, typer.Option(min=0, help="Only entries after this sequence.")] = 0,
    event_type: Annotated[list[str] | None, typer.Option("--type", help=EVENT_TYPE_HELP)] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = (
        DEFAULT_LIST_LIMIT
    ),
) -> None:
    """List ledger entries (the audit trail) in sequence order."""
    settings = _settings(ctx)
    since_value = _parse(parse_timestamp, since, "--since") if since else None
    until_value = _parse(parse_timestamp, until, "--until") if until else None
    types = [_parse(parse_event_type, text, "--type") for text in event_type or []]
    found = _collect(
        settings,
        lambda client: client.iterate_events(
            sku=sku,
            actor=actor,
            since=since_value,
            until=until_value,
            after_sequence=after,
            types=types,
            limit=limit + 1,
        ),
        limit,
    )
    response = edge_pb2.ListEventsResponse(events=found)
    _show(settings, response, lambda: render.events_table(found))


@app.command("watch")
def watch(
    ctx: typer.Context,
    skus: SkusArgument = None,
    duration: Annotated[
        float | None,
        typer.Option(min=0.001, help="Stop after this many seconds (default: until Ctrl-C)."),
    ] = None,
) -> None:
    """Follow balances live until Ctrl-C (JSON lines with --json)."""
    settings = _settings(ctx)
    watched = list(skus or [])
    on_terminal = stdout_console.is_terminal and not settings.json_output

    async def follow(client: EdgeClient) -> None:
        stream = client.watch_availability(watched, timeout_seconds=duration)
        if on_terminal:
            await _follow_live(stream)
        else:
            async for message in stream:
                if settings.json_output:
                    typer.echo(_to_json(message, indent=None))
                else:
                    typer.echo(render.availability_line(message.availability))

    try:
        _call(settings, follow, deadline_ends_quietly=duration is not None)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_OK) from None


async def _follow_live(stream: AsyncIterator[edge_pb2.WatchAvailabilityResponse]) -> None:
    # Latest balance per SKU: a snapshot replaces, a change replaces; both
    # carry the full balance, so no arithmetic happens here.
    latest: dict[str, common_pb2.SkuAvailability] = {}
    with Live(render.availability_table([]), console=stdout_console, refresh_per_second=4) as live:
        async for message in stream:
            latest[message.availability.sku] = message.availability
            live.update(render.availability_table([latest[sku] for sku in sorted(latest)]))


# -- sync with the hub -------------------------------------------------------------------


@app.command("sync-status")
def sync_status(ctx: typer.Context) -> None:
    """Show the agent's sync state: ledger entries not yet on the bus, hub commands applied."""
    settings = _settings(ctx)
    response = _call(settings, lambda client: client.get_sync_status())
    _show(settings, response, lambda: render.sync_status_table(response))


# -- the hub (stockctl hub ...) ----------------------------------------------------------


@hub_app.callback()
def hub_main(
    ctx: typer.Context,
    target: HubTargetOption = DEFAULT_HUB_TARGET,
) -> None:
    """Operate the stockd hub: sites, their balances, escrow grants and recalls."""
    ctx.obj = dataclasses.replace(_settings(ctx), hub_target=target)


@hub_app.command("sites")
def hub_sites(ctx: typer.Context) -> None:
    """List the sites the hub has heard from, with how current its view of each is."""
    settings = _settings(ctx)
    response = _call_hub(settings, lambda client: client.list_sites())
    _show(settings, response, lambda: render.sites_table(response.sites))


@hub_app.command("balances")
def hub_balances(
    ctx: typer.Context,
    site_id: Annotated[str, typer.Argument(metavar="SITE", help="The site.")],
    skus: SkusArgument = None,
    limit: LimitWithoutSkusOption = DEFAULT_LIST_LIMIT,
) -> None:
    """Show the hub's view of a site's balances, and how old it is."""
    settings = _settings(ctx)
    if skus:
        response = _call_hub(settings, lambda client: client.get_site_balances(site_id, skus))
    else:
        response = _call_hub(settings, lambda client: _site_balances(client, site_id, limit + 1))
        _trim(response.balances, limit)
    _show(
        settings,
        response,
        lambda: render.site_balances_table(response.balances, status=response.status),
    )


async def _site_balances(
    client: HubClient, site_id: str, limit: int
) -> hub_pb2.GetSiteBalancesResponse:
    """Gathers up to ``limit`` balances of a site and the newest page's sync state."""
    status = hub_pb2.SiteSyncStatus()

    async def fetch(token: str, size: int) -> hub_pb2.GetSiteBalancesResponse:
        page = await client.get_site_balances(site_id, page_size=size, page_token=token)
        status.CopyFrom(page.status)
        return page

    balances = [balance async for balance in paginate(fetch, lambda page: page.balances, 0, limit)]
    return hub_pb2.GetSiteBalancesResponse(balances=balances, status=status)


# Grant and recall take the same arguments, so one function serves both; the
# name it was called by picks the RPC. Decorators apply bottom-up, so grant
# is registered (and listed) first.
@hub_app.command(
    "recall", help="Ask SITE's edge to return up to QTY units of its free local share of SKU."
)
@hub_app.command(
    "grant", help="Move QTY units of SKU from the hub's share of SITE to the site's edge."
)
def hub_quota(
    ctx: typer.Context,
    site_id: Annotated[str, typer.Argument(metavar="SITE", help="The site.")],
    sku: Annotated[str, typer.Argument(metavar="SKU", help="The SKU.")],
    quantity: Annotated[str, typer.Argument(metavar="QTY", help="Units, in base units.")],
    request_id: Annotated[str | None, typer.Option(help=REQUEST_ID_HELP)] = None,
) -> None:
    """Grants or recalls escrow share (the decorators hold the help text)."""
    settings = _settings(ctx)
    quantity_value = _parse(parse_quantity, quantity, "QTY")
    request_id = _announce_request_id(request_id)
    response: hub_pb2.GrantQuotaResponse | hub_pb2.RecallQuotaResponse
    if ctx.command.name == "grant":
        response = _call_hub(
            settings,
            lambda client: client.grant_quota(site_id, sku, quantity_value, request_id=request_id),
        )
    else:
        response = _call_hub(
            settings,
            lambda client: client.recall_quota(site_id, sku, quantity_value, request_id=request_id),
        )

    def view() -> RenderableType:
        sent = Text(
            f"{ctx.command.name} sent to site {site_id} as command {response.command_sequence}"
        )
        if isinstance(response, hub_pb2.GrantQuotaResponse):
            return Group(sent, render.site_balances_table([response.balance]))
        # A recall's units reach the hub share only when the edge returns them.
        return Group(
            sent, Text("the hub's share grows when the edge's return arrives", style="dim")
        )

    _show(settings, response, view)


# -- plumbing -------------------------------------------------------------------------------


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings), "the app callback sets ctx.obj"
    return settings


def _parse(parser: Callable[[str], ParsedT], text: str, hint: str) -> ParsedT:
    """Runs a parser from clients.parsing, turning ValueError into a usage error (exit 2)."""
    try:
        return parser(text)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=hint) from None


def _parse_lines(texts: Sequence[str], *, allow_location: bool) -> list[LineSpec]:
    return [
        _parse(lambda text: parse_line(text, allow_location=allow_location), text, "LINES")
        for text in texts
    ]


def _announce_request_id(request_id: str | None) -> str:
    """Fixes the request_id before the call and tells the operator, on stderr.

    Generated here rather than in the SDK so it is known even when the call
    fails or the process is killed mid-call: repeating the command with
    ``--request-id`` then either applies it once or returns the stored reply.
    """
    chosen = request_id if request_id else str(uuid.uuid4())
    stderr_console.print(Text(f"request_id: {chosen}", style="dim"))
    return chosen


def _call(
    settings: Settings,
    work: Callable[[EdgeClient], Awaitable[ResultT]],
    *,
    deadline_ends_quietly: bool = False,
) -> ResultT:
    """Runs ``work`` with a fresh edge client; a StockdError exits with code 1."""
    return _run(settings.client, work, deadline_ends_quietly=deadline_ends_quietly)


def _call_hub(settings: Settings, work: Callable[[HubClient], Awaitable[ResultT]]) -> ResultT:
    """Runs ``work`` with a fresh hub client; a StockdError exits with code 1."""
    return _run(settings.hub_client, work)


def _run(
    make_client: Callable[[], ClientT],
    work: Callable[[ClientT], Awaitable[ResultT]],
    *,
    deadline_ends_quietly: bool = False,
) -> ResultT:
    """Runs ``work`` with a client from ``make_client``; a StockdError exits with code 1."""

    async def run() -> ResultT:
        async with make_client() as client:
            return await work(client)

    try:
        return asyncio.run(run())
    except StockdError as error:
        if deadline_ends_quietly and error.code is grpc.StatusCode.DEADLINE_EXCEEDED:
            raise typer.Exit(EXIT_OK) from None
        _print_error(error)
        raise typer.Exit(EXIT_SERVER_ERROR) from None


def _collect(
    settings: Settings,
    iterate: Callable[[EdgeClient], AsyncIterator[ParsedT]],
    limit: int,
) -> list[ParsedT]:
    """Gathers up to ``limit`` items; warns on stderr when there were more.

    The iterator is asked for one extra item, which is how "more" is known
    without a count query.
    """

    async def gather(client: EdgeClient) -> list[ParsedT]:
        return [item async for item in iterate(client)]

    found = _call(settings, gather)
    _trim(found, limit)
    return found


def _trim(found: MutableSequence[Any], limit: int) -> None:
    """Cuts ``found`` to ``limit`` items, warning on stderr when there were more."""
    if len(found) > limit:
        stderr_console.print(
            Text(f"showing the first {limit}; use --limit to see more", style="yellow")
        )
        del found[limit:]


def _print_error(error: StockdError) -> None:
    """Prints ``error: CODE REASON: message`` and its details to stderr."""
    lines = [f"error: {error.summary()}"]
    lines.extend(f"  {field}: {description}" for field, description in error.field_violations)
    lines.extend(f"  {key}: {value}" for key, value in sorted(error.metadata.items()))
    if error.request_id and error.code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        lines.append(
            "  the call may or may not have been applied;"
            f" repeating it with --request-id {error.request_id} is safe"
        )
    # Plain text, no markup: messages come from the server and may hold brackets.
    print("\n".join(lines), file=sys.stderr)


def _to_json(message: Message, *, indent: int | None = 2) -> str:
    # Zero values are printed too: "available": 0 is an answer, and a
    # missing key would make scripts guess.
    return json_format.MessageToJson(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        indent=indent,
    )


def _show(settings: Settings, response: Message, view: Callable[[], RenderableType]) -> None:
    """Prints the response as JSON, or the rich view of it."""
    if settings.json_output:
        typer.echo(_to_json(response))
    else:
        stdout_console.print(view())
