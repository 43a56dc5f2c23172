"""Ledger entries on the wire: shared by the edge (publisher) and the hub (ingest)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from server.domain.model import (
    AdjustmentReason,
    EventType,
    LedgerEvent,
    ReservationKind,
    StockStatus,
)
from stockd.v1 import common_pb2


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


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
        hub_promise_id=event.hub_promise_id,
        channel=event.channel,
        customer_tier=event.customer_tier,
        expires_at=timestamp(event.expires_at_ms) if event.expires_at_ms else None,
    )


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
        hub_promise_id=message.hub_promise_id,
        channel=message.channel,
        customer_tier=message.customer_tier,
        expires_at_ms=message.expires_at.ToMilliseconds() if message.HasField("expires_at") else 0,
    )
