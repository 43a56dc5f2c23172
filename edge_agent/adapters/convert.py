"""Translation between stockd.v1 messages and the pure edge domain."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from edge_agent.domain import commands as c
from edge_agent.domain.ledger import EdgeLedger, Reservation
from server.domain.model import (
    AdjustmentReason,
    EventType,
    Item,
    LedgerEvent,
    Location,
    LocationId,
    ReservationKind,
    Sku,
    StockStatus,
    UnitConversion,
)
from stockd.v1 import common_pb2, edge_pb2


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def event_from_proto(message: common_pb2.LedgerEvent) -> LedgerEvent:
    """Inverse of event_to_proto (used by tests and tools reading the sync stream)."""
    return LedgerEvent(
        sequence=message.sequence,
        hlc=message.hlc,
        recorded_at_ms=message.recorded_at.ToMilliseconds(),
        type=EventType(message.type),
        sku=message.sku,
        location_id=message.location_id,
        status=StockStatus(message.status),
        quantity=message.quantity,
        reservation_id=message.reservation_id,
        actor=message.actor,
        reason=message.reason,
        reason_code=AdjustmentReason(message.reason_code),
        request_id=message.request_id,
        variance=message.variance,
        to_status=StockStatus(message.to_status),
        to_location_id=message.to_location_id,
        counterparty_site_id=message.counterparty_site_id,
        reservation_kind=ReservationKind(message.reservation_kind),
        reference=message.reference,
        local_share_delta=message.local_share_delta,
    )


def item_from_proto(message: common_pb2.Item) -> Item:
    return Item(
        sku=Sku(message.sku),
        description=message.description,
        base_unit=message.base_unit or "each",
        units=tuple(UnitConversion(unit.unit, unit.base_units_per_unit) for unit in message.units),
        order_minimum=message.order_minimum,
        order_multiple=message.order_multiple,
        safety_stock=message.safety_stock,
    )


def item_to_proto(item: Item) -> common_pb2.Item:
    return common_pb2.Item(
        sku=item.sku,
        description=item.description,
        base_unit=item.base_unit,
        units=[
            common_pb2.UnitConversion(unit=u.unit, base_units_per_unit=u.base_units_per_unit)
            for u in item.units
        ],
        order_minimum=item.order_minimum,
        order_multiple=item.order_multiple,
        safety_stock=item.safety_stock,
        updated_at=timestamp(item.updated_at_ms),
    )


def location_from_proto(message: common_pb2.Location) -> Location:
    return Location(LocationId(message.location_id), message.description)


def location_to_proto(location: Location) -> common_pb2.Location:
    return common_pb2.Location(location_id=location.location_id, description=location.description)


def availability(ledger: EdgeLedger, sku: str) -> common_pb2.SkuAvailability:
    balance = ledger.balance(sku)
    item = ledger.items.get(sku)
    return common_pb2.SkuAvailability(
        sku=sku,
        on_hand=[
            common_pb2.StockBucket(
                location_id=location,
                status=common_pb2.StockStatus.ValueType(int(status)),
                quantity=quantity,
            )
            for (location, status), quantity in sorted(balance.on_hand.items())
        ],
        on_hand_sellable=balance.sellable,
        on_hand_total=balance.total,
        reserved_soft=balance.reserved_soft,
        reserved_hard=balance.reserved_hard,
        safety_stock=item.safety_stock if item is not None else 0,
        local_share=ledger.local_share(sku),
        available=ledger.available(sku),
        as_of_sequence=ledger.last_sequence,
    )


def reservation_to_proto(reservation: Reservation) -> common_pb2.Reservation:
    message = common_pb2.Reservation(
        reservation_id=reservation.reservation_id,
        request_id=reservation.request_id,
        kind=common_pb2.ReservationKind.ValueType(int(reservation.kind)),
        state=common_pb2.ReservationState.ValueType(int(reservation.state)),
        channel=reservation.channel,
        customer_tier=reservation.customer_tier,
        reference=reservation.reference,
        lines=[
            common_pb2.ReservationLine(
                sku=line.sku,
                quantity_reserved=line.reserved,
                quantity_held=line.held,
                quantity_picked=line.picked,
                quantity_released=line.released,
            )
            for line in reservation.lines.values()
        ],
        created_at=timestamp(reservation.created_at_ms),
        actor=reservation.actor,
        created_sequence=reservation.created_sequence,
    )
    if reservation.expires_at_ms:
        message.expires_at.CopyFrom(timestamp(reservation.expires_at_ms))
    return message


def event_to_proto(event: LedgerEvent, site_id: str) -> common_pb2.LedgerEvent:
    return common_pb2.LedgerEvent(
        sequence=event.sequence,
        hlc=event.hlc,
        recorded_at=timestamp(event.recorded_at_ms),
        type=common_pb2.EventType.ValueType(int(event.type)),
        site_id=site_id,
        sku=event.sku,
        location_id=event.location_id,
        status=common_pb2.StockStatus.ValueType(int(event.status)),
        quantity=event.quantity,
        reservation_id=event.reservation_id,
        actor=event.actor,
        reason=event.reason,
        reason_code=common_pb2.AdjustmentReason.ValueType(int(event.reason_code)),
        request_id=event.request_id,
        variance=event.variance,
        to_status=common_pb2.StockStatus.ValueType(int(event.to_status)),
        to_location_id=event.to_location_id,
        counterparty_site_id=event.counterparty_site_id,
        reservation_kind=common_pb2.ReservationKind.ValueType(int(event.reservation_kind)),
        reference=event.reference,
        local_share_delta=event.local_share_delta,
    )


# ----- requests -> commands ------------------------------------------------


def receive(request: edge_pb2.ReceiveRequest) -> c.Receive:
    return c.Receive(
        lines=tuple(
            c.ReceiptLine(
                sku=line.sku,
                quantity=line.quantity,
                unit=line.unit,
                location_id=line.location_id,
                status=line.status,
            )
            for line in request.lines
        ),
        reference=request.reference,
        reason=request.reason,
    )


def adjust(request: edge_pb2.AdjustRequest) -> c.Adjust:
    return c.Adjust(
        sku=request.sku,
        quantity_delta=request.quantity_delta,
        reason_code=request.reason_code,
        location_id=request.location_id,
        status=request.status,
        unit=request.unit,
        reason=request.reason,
        release_reservations=request.release_reservations,
    )


def record_count(request: edge_pb2.RecordCountRequest) -> c.RecordCount:
    return c.RecordCount(
        sku=request.sku,
        counted_quantity=request.counted_quantity,
        location_id=request.location_id,
        status=request.status,
        unit=request.unit,
        reason=request.reason,
    )


def change_status(request: edge_pb2.ChangeStatusRequest) -> c.ChangeStatus:
    return c.ChangeStatus(
        sku=request.sku,
        quantity=request.quantity,
        from_status=request.from_status,
        to_status=request.to_status,
        location_id=request.location_id,
        unit=request.unit,
        reason=request.reason,
        release_reservations=request.release_reservations,
    )


def reserve(request: edge_pb2.ReserveRequest, reservation_id: str) -> c.Reserve:
    return c.Reserve(
        reservation_id=reservation_id,
        lines=tuple(
            c.ReserveLine(sku=line.sku, quantity=line.quantity, unit=line.unit)
            for line in request.lines
        ),
        kind=request.kind,
        ttl_seconds=request.ttl_seconds,
        channel=request.channel,
        customer_tier=request.customer_tier,
        reference=request.reference,
        allow_partial=request.allow_partial,
    )


def release(request: edge_pb2.ReleaseRequest) -> c.Release:
    return c.Release(
        reservation_id=request.reservation_id,
        lines=tuple(
            c.QuantityLine(sku=line.sku, quantity=line.quantity, unit=line.unit)
            for line in request.lines
        ),
        reason=request.reason,
    )


def pick(request: edge_pb2.PickRequest) -> c.Pick:
    return c.Pick(
        reservation_id=request.reservation_id,
        lines=tuple(
            c.PickLine(
                sku=line.sku,
                quantity=line.quantity,
                unit=line.unit,
                location_id=line.location_id,
            )
            for line in request.lines
        ),
        release_remainder=request.release_remainder,
    )


def transfer(request: edge_pb2.TransferRequest) -> c.Transfer:
    return c.Transfer(
        sku=request.sku,
        quantity=request.quantity,
        status=request.status,
        unit=request.unit,
        from_location_id=request.from_location_id,
        to_location_id=request.to_location_id,
        to_site_id=request.to_site_id,
        reference=request.reference,
        reason=request.reason,
    )


SELLABLE = int(StockStatus.SELLABLE)
