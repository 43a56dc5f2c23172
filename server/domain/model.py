"""Shared pure model: ids, enums mirroring the proto contract, ledger events.

Enum values equal the proto enum numbers (a unit test holds them together),
so adapters convert with a plain int() and the domain never imports protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NewType

Sku = NewType("Sku", str)
SiteId = NewType("SiteId", str)
LocationId = NewType("LocationId", str)
ReservationId = NewType("ReservationId", str)
RequestId = NewType("RequestId", str)

DEFAULT_LOCATION = LocationId("default")
SYSTEM_ACTOR = "system"


class StockStatus(IntEnum):
    UNSPECIFIED = 0
    SELLABLE = 1
    DAMAGED = 2
    QUARANTINE = 3
    RETURNED = 4


class ReservationKind(IntEnum):
    UNSPECIFIED = 0
    SOFT = 1
    HARD = 2


class ReservationState(IntEnum):
    UNSPECIFIED = 0
    OPEN = 1
    PICKED = 2
    RELEASED = 3
    EXPIRED = 4


class EventType(IntEnum):
    UNSPECIFIED = 0
    RECEIVED = 1
    ADJUSTED = 2
    COUNTED = 3
    RESERVED = 4
    RELEASED = 5
    EXPIRED = 6
    PICKED = 7
    STATUS_CHANGED = 8
    TRANSFERRED_OUT = 9
    TRANSFERRED_IN = 10
    QUOTA_GRANTED = 11
    QUOTA_RETURNED = 12


class AdjustmentReason(IntEnum):
    UNSPECIFIED = 0
    DAMAGE = 1
    SHRINK = 2
    FOUND = 3
    CORRECTION = 4
    EXPIRED_PRODUCT = 5
    RETURN_TO_VENDOR = 6
    INTERNAL_USE = 7


@dataclass(frozen=True, slots=True)
class UnitConversion:
    unit: str
    base_units_per_unit: int


@dataclass(frozen=True, slots=True)
class Item:
    """Master data of one SKU at a site; every quantity in base units."""

    sku: Sku
    description: str = ""
    base_unit: str = "each"
    units: tuple[UnitConversion, ...] = ()
    order_minimum: int = 0
    order_multiple: int = 0
    safety_stock: int = 0
    updated_at_ms: int = 0

    def base_units_per(self, unit: str) -> int | None:
        """Factor for a unit code; None when the item does not define it."""
        if unit in ("", self.base_unit):
            return 1
        for conversion in self.units:
            if conversion.unit == unit:
                return conversion.base_units_per_unit
        return None


@dataclass(frozen=True, slots=True)
class Location:
    location_id: LocationId
    description: str = ""


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """One immutable ledger entry. Fields that do not apply stay at zero.

    RESERVED entries (one per line) repeat the reservation header (kind,
    channel, tier, reference, expiry) so the log alone rebuilds every balance.
    """

    sequence: int
    hlc: int
    recorded_at_ms: int
    type: EventType
    sku: str = ""
    location_id: str = ""
    status: StockStatus = StockStatus.UNSPECIFIED
    quantity: int = 0
    reservation_id: str = ""
    actor: str = ""
    reason: str = ""
    reason_code: AdjustmentReason = AdjustmentReason.UNSPECIFIED
    request_id: str = ""
    variance: int = 0
    to_status: StockStatus = StockStatus.UNSPECIFIED
    to_location_id: str = ""
    counterparty_site_id: str = ""
    reservation_kind: ReservationKind = ReservationKind.UNSPECIFIED
    reference: str = ""
    channel: str = ""
    customer_tier: str = ""
    expires_at_ms: int = 0
    local_share_delta: int = 0
    hub_promise_id: str = ""
