"""Commands the edge ledger decides on: plain values mirroring the proto requests.

Enum fields are raw ints on purpose: a caller may send a number the contract
does not define, and rejecting it precisely is the ledger's job, not the
transport's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from server.domain.model import Item, Location


@dataclass(frozen=True, slots=True)
class Context:
    """Who asks, when, and under which idempotency key.

    `overbook` is set only while the site is cut off from the hub: for SKUs of
    an optimistic segment it gives how far reservations may exceed the local
    share (the hub reconciles afterwards); strict SKUs get 0.
    """

    now_ms: int
    actor: str
    request_id: str = ""
    overbook: Callable[[str], int] | None = None


@dataclass(frozen=True, slots=True)
class UpsertItem:
    item: Item


@dataclass(frozen=True, slots=True)
class UpsertLocation:
    location: Location


@dataclass(frozen=True, slots=True)
class ReceiptLine:
    sku: str
    quantity: int
    unit: str = ""
    location_id: str = ""
    status: int = 0


@dataclass(frozen=True, slots=True)
class Receive:
    lines: tuple[ReceiptLine, ...]
    reference: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Adjust:
    sku: str
    quantity_delta: int
    reason_code: int
    location_id: str = ""
    status: int = 0
    unit: str = ""
    reason: str = ""
    release_reservations: bool = False


@dataclass(frozen=True, slots=True)
class RecordCount:
    sku: str
    counted_quantity: int
    location_id: str = ""
    status: int = 0
    unit: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ChangeStatus:
    sku: str
    quantity: int
    from_status: int
    to_status: int
    location_id: str = ""
    unit: str = ""
    reason: str = ""
    release_reservations: bool = False


@dataclass(frozen=True, slots=True)
class ReserveLine:
    sku: str
    quantity: int
    unit: str = ""


@dataclass(frozen=True, slots=True)
class Reserve:
    reservation_id: str
    lines: tuple[ReserveLine, ...]
    kind: int = 0
    ttl_seconds: int = 0
    channel: str = ""
    customer_tier: str = ""
    reference: str = ""
    allow_partial: bool = False


@dataclass(frozen=True, slots=True)
class QuantityLine:
    sku: str
    quantity: int
    unit: str = ""


@dataclass(frozen=True, slots=True)
class Release:
    reservation_id: str
    lines: tuple[QuantityLine, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PickLine:
    sku: str
    quantity: int
    unit: str = ""
    location_id: str = ""


@dataclass(frozen=True, slots=True)
class Pick:
    reservation_id: str
    lines: tuple[PickLine, ...]
    release_remainder: bool = False


@dataclass(frozen=True, slots=True)
class Transfer:
    sku: str
    quantity: int
    status: int = 0
    unit: str = ""
    from_location_id: str = ""
    to_location_id: str = ""
    to_site_id: str = ""
    reference: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ExpireDue:
    """Expire soft reservations whose TTL has passed (issued by the sweeper)."""

    limit: int


@dataclass(frozen=True, slots=True)
class GrantQuota:
    """Applies a hub grant: local share grows (command from the hub)."""

    sku: str
    quantity: int
    command_sequence: int


@dataclass(frozen=True, slots=True)
class ReturnQuota:
    """Returns up to `quantity` of free local share to the hub (0 returns nothing)."""

    sku: str
    quantity: int
    reason: str = ""
    command_sequence: int = 0


@dataclass(frozen=True, slots=True)
class HoldForPromise:
    """A hard reservation for a hub promise, drawn on the hub's share (command)."""

    promise_id: str
    sku: str
    quantity: int
    command_sequence: int


@dataclass(frozen=True, slots=True)
class ReleaseForPromise:
    """Gives back units held for a hub promise (command)."""

    promise_id: str
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class AdoptShares:
    """Makes every SKU's local share explicit when a hub starts managing shares."""


Command = (
    UpsertItem
    | UpsertLocation
    | Receive
    | Adjust
    | RecordCount
    | ChangeStatus
    | Reserve
    | Release
    | Pick
    | Transfer
    | ExpireDue
    | GrantQuota
    | ReturnQuota
    | AdoptShares
    | HoldForPromise
    | ReleaseForPromise
)
