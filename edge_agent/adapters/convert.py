"""Translation between stockd.v1 messages and the pure edge domain."""

from __future__ import annotations

from edge_agent.domain import commands as c
from edge_agent.domain.ledger import EdgeLedger, Reservation
from server.domain.model import (
    Item,
    Location,
    LocationId,
    Sku,
    UnitConversion,
)
from server.sync.wire import event_from_proto, event_to_proto, timestamp
from stockd.v1 import common_pb2, edge_pb2

__all__ = ["event_from_proto", "event_to_proto", "timestamp"]


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
        hub_promise_id=reservation.hub_promise_id,
    )
    if reservation.expires_at_ms:
        message.expires_at.CopyFrom(timestamp(reservation.expires_at_ms))
    return message


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

