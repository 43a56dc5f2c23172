"""Rich tables for ``stockctl``: one function per kind of proto shown.

Kept apart from the command wiring so the layout can be tested without a
server; the edge and hub commands share it. Every function takes protos and
returns a renderable; nothing here prints or does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import timestamp_pb2
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from clients.parsing import enum_name
from stockd.v1 import common_pb2, edge_pb2, hub_pb2

# What a site holds and has promised: the first quantity columns of the
# edge's availability and of the hub's view of a site alike.
HELD_HEADINGS = ("On hand sellable", "On hand total", "Reserved soft", "Reserved hard")


def format_timestamp(timestamp: timestamp_pb2.Timestamp) -> str:
    """Formats a proto timestamp as UTC ``YYYY-MM-DD HH:MM:SSZ``; unset is empty."""
    if timestamp.seconds == 0 and timestamp.nanos == 0:
        return ""
    return timestamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")


def availability_table(
    rows: Iterable[common_pb2.SkuAvailability], *, title: str | None = None
) -> Table:
    """One row per SKU: the balance columns an operator compares, in base units."""
    table = Table(title=title)
    table.add_column("SKU", no_wrap=True)
    _add_number_columns(table, *HELD_HEADINGS, "Safety stock", "Local share", "Available")
    sequences = []
    for row in rows:
        sequences.append(row.as_of_sequence)
        _add_row(
            table,
            row.sku,
            str(row.on_hand_sellable),
            str(row.on_hand_total),
            str(row.reserved_soft),
            str(row.reserved_hard),
            str(row.safety_stock),
            str(row.local_share),
            Text(str(row.available), style="bold" if row.available > 0 else "red"),
        )
    if sequences:
        table.caption = f"as of ledger sequence {max(sequences)}"
    return table


def buckets_table(rows: Iterable[common_pb2.SkuAvailability]) -> Table:
    """On-hand per SKU, location and status: where the units physically are."""
    table = Table(title="On hand by location")
    table.add_column("SKU", no_wrap=True)
    table.add_column("Location")
    table.add_column("Status")
    table.add_column("Quantity", justify="right")
    for row in rows:
        for bucket in row.on_hand:
            _add_row(
                table,
                row.sku,
                bucket.location_id,
                enum_name(common_pb2.StockStatus, bucket.status),
                str(bucket.quantity),
            )
    return table


def items_table(items: Iterable[common_pb2.Item]) -> Table:
    """Item master rows; larger units shown as ``case=12``."""
    table = Table()
    table.add_column("SKU", no_wrap=True)
    table.add_column("Description")
    table.add_column("Base unit")
    table.add_column("Units")
    table.add_column("Min", justify="right")
    table.add_column("Multiple", justify="right")
    table.add_column("Safety stock", justify="right")
    table.add_column("Updated")
    for item in items:
        _add_row(
            table,
            item.sku,
            item.description,
            item.base_unit,
            ", ".join(f"{unit.unit}={unit.base_units_per_unit}" for unit in item.units),
            str(item.order_minimum),
            str(item.order_multiple),
            str(item.safety_stock),
            format_timestamp(item.updated_at),
        )
    return table


def locations_table(locations: Iterable[common_pb2.Location]) -> Table:
    """Locations of the site."""
    table = Table()
    table.add_column("Location", no_wrap=True)
    table.add_column("Description")
    for location in locations:
        _add_row(table, location.location_id, location.description)
    return table


def events_table(events: Iterable[common_pb2.LedgerEvent], *, title: str | None = None) -> Table:
    """Ledger entries; movement targets shown as ``from -> to``."""
    table = Table(title=title)
    table.add_column("Seq", justify="right")
    table.add_column("Recorded")
    table.add_column("Type")
    table.add_column("SKU", no_wrap=True)
    table.add_column("Location")
    table.add_column("Status")
    table.add_column("Quantity", justify="right")
    table.add_column("Reservation")
    table.add_column("Actor")
    table.add_column("Details")
    for event in events:
        location = event.location_id
        if event.to_location_id:
            location = f"{location} -> {event.to_location_id}"
        elif event.counterparty_site_id:
            location = f"{location} -> site {event.counterparty_site_id}"
        status = enum_name(common_pb2.StockStatus, event.status)
        if event.to_status:
            status = f"{status} -> {enum_name(common_pb2.StockStatus, event.to_status)}"
        _add_row(
            table,
            str(event.sequence),
            format_timestamp(event.recorded_at),
            enum_name(common_pb2.EventType, event.type),
            event.sku,
            location,
            status,
            str(event.quantity),
            event.reservation_id,
            event.actor,
            _event_details(event),
        )
    return table


def reservation_view(reservation: common_pb2.Reservation) -> RenderableType:
    """One reservation: a header of its attributes, then its lines."""
    header = _fields_grid(
        ("Reservation", reservation.reservation_id),
        ("State", enum_name(common_pb2.ReservationState, reservation.state)),
        ("Kind", enum_name(common_pb2.ReservationKind, reservation.kind)),
        ("Reference", reservation.reference),
        ("Channel", reservation.channel),
        ("Customer tier", reservation.customer_tier),
        ("Created", format_timestamp(reservation.created_at)),
        ("Expires", format_timestamp(reservation.expires_at)),
        ("Actor", reservation.actor),
        ("Request id", reservation.request_id),
        ("Sequence", str(reservation.created_sequence) if reservation.created_sequence else ""),
        skip_empty=True,
    )
    lines = Table()
    lines.add_column("SKU", no_wrap=True)
    for heading in ("Reserved", "Held", "Picked", "Released"):
        lines.add_column(heading, justify="right")
    for line in reservation.lines:
        _add_row(
            lines,
            line.sku,
            str(line.quantity_reserved),
            str(line.quantity_held),
            str(line.quantity_picked),
            str(line.quantity_released),
        )
    return Group(header, lines)


def reservations_table(reservations: Iterable[common_pb2.Reservation]) -> Table:
    """One row per reservation; lines summarised as ``SKU held/reserved``."""
    table = Table()
    table.add_column("Reservation", no_wrap=True)
    table.add_column("State")
    table.add_column("Kind")
    table.add_column("Lines (held/reserved)")
    table.add_column("Reference")
    table.add_column("Channel")
    table.add_column("Tier")
    table.add_column("Created")
    table.add_column("Expires")
    for reservation in reservations:
        _add_row(
            table,
            reservation.reservation_id,
            enum_name(common_pb2.ReservationState, reservation.state),
            enum_name(common_pb2.ReservationKind, reservation.kind),
            ", ".join(
                f"{line.sku} {line.quantity_held}/{line.quantity_reserved}"
                for line in reservation.lines
            ),
            reservation.reference,
            reservation.channel,
            reservation.customer_tier,
            format_timestamp(reservation.created_at),
            format_timestamp(reservation.expires_at),
        )
    return table


def shortfalls_table(shortfalls: Iterable[edge_pb2.LineShortfall]) -> Table:
    """Lines a partial reserve could not fill, in base units."""
    table = Table(title="Shortfalls")
    table.add_column("SKU", no_wrap=True)
    table.add_column("Requested", justify="right")
    table.add_column("Available", justify="right")
    for shortfall in shortfalls:
        _add_row(table, shortfall.sku, str(shortfall.requested), str(shortfall.available))
    return table


def sync_status_table(status: edge_pb2.GetSyncStatusResponse) -> Table:
    """An edge agent's sync state: what has reached the bus, what the hub sent."""
    return _fields_grid(
        ("Site", status.site_id),
        ("Hub configured", _yes_no(status.hub_configured)),
        ("Connected", _yes_no(status.connected, bad="no")),
        ("Last sequence", str(status.last_sequence)),
        ("Acknowledged sequence", str(status.acknowledged_sequence)),
        (
            "Backlog events",
            Text(str(status.backlog_events), style="yellow" if status.backlog_events else ""),
        ),
        ("Applied command sequence", str(status.applied_command_sequence)),
        ("Last acknowledged", format_timestamp(status.last_acknowledged_at)),
        ("Last error", Text(status.last_error, style="red")),
    )


def sites_table(sites: Iterable[hub_pb2.SiteSyncStatus]) -> Table:
    """One row per site the hub knows: how far it has applied and how old its view is."""
    table = Table(title="Sites")
    table.add_column("Site", no_wrap=True)
    _add_number_columns(
        table,
        "Applied sequence",
        "Known sequence",
        "Sync lag ms",
        "Data age ms",
        "Checksums matched",
        "Drift detected",
        "Next command",
    )
    table.add_column("Last event")
    table.add_column("Last applied")
    table.add_column("Repairing")
    for site in sites:
        _add_row(
            table,
            site.site_id,
            str(site.applied_sequence),
            # Above applied_sequence means a backlog is on its way.
            Text(
                str(site.known_sequence),
                style="yellow" if site.known_sequence > site.applied_sequence else "",
            ),
            str(site.sync_lag_ms),
            str(site.data_age_ms),
            str(site.checksums_matched),
            Text(str(site.drift_detected), style="red" if site.drift_detected else ""),
            str(site.next_command_sequence),
            format_timestamp(site.last_event_at),
            format_timestamp(site.last_applied_at),
            _yes_no(site.repairing, bad="yes"),
        )
    return table


def site_balances_table(
    balances: Iterable[hub_pb2.SiteBalance], *, status: hub_pb2.SiteSyncStatus | None = None
) -> Table:
    """The hub's view of one site's SKUs, in base units, with how old that view is."""
    table = Table(title=f"Site {status.site_id}" if status is not None else None)
    table.add_column("SKU", no_wrap=True)
    _add_number_columns(table, *HELD_HEADINGS, "Local share", "Hub share", "In flight")
    sequences = []
    for balance in balances:
        sequences.append(balance.as_of_sequence)
        quantities = (
            balance.on_hand_sellable,
            balance.on_hand_total,
            balance.reserved_soft,
            balance.reserved_hard,
            balance.local_share,
            balance.hub_share,
            balance.in_flight,
        )
        _add_row(table, balance.sku, *(str(quantity) for quantity in quantities))
    notes = []
    if sequences:
        notes.append(f"as of site ledger sequence {max(sequences)}")
    if status is not None:
        notes.append(f"hub data {status.data_age_ms} ms old")
        if status.repairing:
            notes.append("repair by replay under way")
    table.caption = "; ".join(notes) or None
    return table


def availability_line(availability: common_pb2.SkuAvailability) -> str:
    """One balance as ``key=value`` text, for watch output that is not a terminal."""
    return (
        f"sequence={availability.as_of_sequence} sku={availability.sku}"
        f" on_hand_sellable={availability.on_hand_sellable}"
        f" on_hand_total={availability.on_hand_total}"
        f" reserved_soft={availability.reserved_soft}"
        f" reserved_hard={availability.reserved_hard}"
        f" safety_stock={availability.safety_stock}"
        f" local_share={availability.local_share}"
        f" available={availability.available}"
    )


def _add_number_columns(table: Table, *headings: str) -> None:
    for heading in headings:
        # Wide enough for the longest word, so a narrow terminal wraps a
        # heading instead of cutting it to "Reserv…".
        table.add_column(
            heading, justify="right", min_width=max(len(word) for word in heading.split())
        )


def _fields_grid(*fields: tuple[str, str | Text], skip_empty: bool = False) -> Table:
    """A two-column grid of bold labels and values, for one record."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, value in fields:
        if value or not skip_empty:
            _add_row(grid, label, value)
    return grid


def _yes_no(value: bool, *, bad: str = "") -> Text:
    """``yes`` or ``no``; red when it is the ``bad`` answer."""
    answer = "yes" if value else "no"
    return Text(answer, style="red" if answer == bad else "")


def _add_row(table: Table, *cells: str | Text) -> None:
    # Cells become Text, not markup: a description or note typed by a user
    # must show as typed, and "[/]" in one must not break the whole table.
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def _event_details(event: common_pb2.LedgerEvent) -> str:
    parts = []
    if event.reason_code:
        parts.append(enum_name(common_pb2.AdjustmentReason, event.reason_code))
    if event.type == common_pb2.EVENT_TYPE_COUNTED:
        parts.append(f"variance {event.variance:+d}")
    if event.reservation_kind:
        parts.append(enum_name(common_pb2.ReservationKind, event.reservation_kind))
    if event.reference:
        parts.append(f"ref {event.reference}")
    if event.reason:
        parts.append(event.reason)
    return "; ".join(parts)
