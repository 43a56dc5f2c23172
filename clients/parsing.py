"""Pure parsers for the text people type at ``stockctl`` and the SDK's friendly names.

Nothing here does I/O or imports grpc, so every rule about what a line, a
quantity, a unit conversion, a timestamp or an enum name may look like is
tested in microseconds and shared by the CLI and the SDK. Parsers raise
``ValueError`` with a message fit to show a person; the CLI turns it into a
usage error (exit code 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from stockd.v1 import common_pb2

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

EnumValueT = TypeVar("EnumValueT", bound=int)

# Protobuf int64 bounds: anything outside would fail later, deep inside
# protobuf, with a message that names no argument.
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# Matches the proto limits on codes (SKU and location 1 to 64 characters,
# unit at most 32), so a typo is caught before a round trip.
SKU_LENGTH_MAX = 64
LOCATION_ID_LENGTH_MAX = 64
UNIT_LENGTH_MAX = 32

_UNSIGNED_INTEGER = re.compile(r"[0-9]+")
_SIGNED_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True, slots=True)
class LineSpec:
    """One ``SKU:QTY[:UNIT][@LOCATION]`` argument, parsed.

    Attributes:
        sku: The SKU code.
        quantity: How many, in ``unit``; at least 1.
        unit: Unit of measure; empty means the item's base unit.
        location_id: Location; empty means the server's default location.
    """

    sku: str
    quantity: int
    unit: str = ""
    location_id: str = ""


def parse_quantity(text: str, *, allow_zero: bool = False, allow_negative: bool = False) -> int:
    """Parses a whole-number quantity.

    Quantities are integers in a unit, never floats, so "1.5" or "1e3" are
    refused here rather than rounded somewhere else.

    Args:
        text: The digits, optionally signed when ``allow_negative``.
        allow_zero: Accept 0 (a cycle count may find nothing).
        allow_negative: Accept a sign (adjustment deltas).

    Returns:
        The quantity.

    Raises:
        ValueError: When the text is not a whole number in the allowed range.
    """
    stripped = text.strip()
    pattern = _SIGNED_INTEGER if allow_negative else _UNSIGNED_INTEGER
    if not pattern.fullmatch(stripped):
        kind = "a whole number" if allow_negative else "a non-negative whole number"
        raise ValueError(f"quantity {text!r} is not {kind}")
    value = int(stripped)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"quantity {text!r} is out of range")
    if value == 0 and not allow_zero:
        raise ValueError("quantity must not be zero")
    return value


def parse_line(text: str, *, allow_location: bool = False) -> LineSpec:
    """Parses ``SKU:QTY[:UNIT][@LOCATION]``.

    The location is whatever follows the last ``@``. The quantity is the last
    ``:``-separated part that is a number, so a SKU may itself contain colons
    (``A:B:5`` is 5 of ``A:B``); a trailing non-numeric part is the unit.

    Args:
        text: The argument as typed.
        allow_location: Whether ``@LOCATION`` is meaningful for this command
            (receive and pick); elsewhere it is refused instead of ignored.

    Returns:
        The parsed line.

    Raises:
        ValueError: When the text does not have that shape.
    """
    body, at, location_id = text.rpartition("@")
    if not at:
        body, location_id = text, ""
    else:
        if not allow_location:
            raise ValueError(f"line {text!r}: this command takes no @LOCATION")
        _check_code(location_id, "location", LOCATION_ID_LENGTH_MAX, text)
    parts = body.split(":")
    unit = ""
    if len(parts) >= 2 and _UNSIGNED_INTEGER.fullmatch(parts[-1]):
        sku_parts, quantity_text = parts[:-1], parts[-1]
    elif len(parts) >= 3 and _UNSIGNED_INTEGER.fullmatch(parts[-2]):
        sku_parts, quantity_text, unit = parts[:-2], parts[-2], parts[-1]
        _check_code(unit, "unit", UNIT_LENGTH_MAX, text)
    else:
        shape = "SKU:QTY[:UNIT][@LOCATION]" if allow_location else "SKU:QTY[:UNIT]"
        raise ValueError(f"line {text!r} is not {shape}")
    sku = ":".join(sku_parts)
    _check_code(sku, "SKU", SKU_LENGTH_MAX, text)
    try:
        quantity = parse_quantity(quantity_text)
    except ValueError as error:
        raise ValueError(f"line {text!r}: {error}") from None
    return LineSpec(sku=sku, quantity=quantity, unit=unit, location_id=location_id)


def parse_unit_conversion(text: str) -> tuple[str, int]:
    """Parses ``UNIT=N``: one ``UNIT`` is N base units (``case=12``).

    Args:
        text: The argument as typed.

    Returns:
        The unit code and base units per unit.

    Raises:
        ValueError: When the text is not ``UNIT=N`` with N at least 1.
    """
    unit, equals, count_text = text.partition("=")
    unit = unit.strip()
    if not equals:
        raise ValueError(f"unit {text!r} is not UNIT=N (for example case=12)")
    _check_code(unit, "unit", UNIT_LENGTH_MAX, text)
    try:
        base_units_per_unit = parse_quantity(count_text)
    except ValueError as error:
        raise ValueError(f"unit {text!r}: {error}") from None
    return unit, base_units_per_unit


def parse_timestamp(text: str) -> datetime:
    """Parses an ISO 8601 date or date-time into an aware UTC datetime.

    A time without an offset is taken as UTC, not local time: ledger
    timestamps are UTC, and the same command must mean the same range on
    every machine.

    Args:
        text: For example ``2025-01-31``, ``2025-01-31T08:00`` or
            ``2025-01-31T08:00:00+01:00`` (``Z`` is accepted).

    Returns:
        The instant, in UTC.

    Raises:
        ValueError: When the text is not ISO 8601.
    """
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"time {text!r} is not ISO 8601 (for example 2025-01-31T08:00Z)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def enum_names(enum_type: _EnumTypeWrapper[EnumValueT]) -> list[str]:
    """Lists the friendly names of a proto enum, in number order.

    The friendly name is the value name without the enum's prefix, in lower
    case (``STOCK_STATUS_SELLABLE`` -> ``sellable``). The zero value is left
    out: it means "not set" and is never typed on purpose.

    Args:
        enum_type: A generated enum, for example ``common_pb2.StockStatus``.

    Returns:
        The names.
    """
    prefix = _enum_prefix(enum_type)
    return [
        name.removeprefix(prefix).lower()
        for name, number in sorted(enum_type.items(), key=lambda item: item[1])
        if number != 0
    ]


def enum_name(enum_type: _EnumTypeWrapper[EnumValueT], value: int) -> str:
    """Returns the friendly name of an enum value, for display.

    Unknown numbers (a newer server) are shown as the number rather than
    failing, since a display must never break on a value it does not know.

    Args:
        enum_type: A generated enum.
        value: The number.

    Returns:
        The friendly name, ``""`` for the zero value, or the number as text.
    """
    if value == 0:
        return ""
    prefix = _enum_prefix(enum_type)
    for name, number in enum_type.items():
        if number == value:
            return name.removeprefix(prefix).lower()
    return str(value)


def parse_enum(enum_type: _EnumTypeWrapper[EnumValueT], text: str) -> EnumValueT:
    """Parses a friendly or full enum name, case-insensitively.

    ``expired_product``, ``expired-product``, ``EXPIRED_PRODUCT`` and
    ``ADJUSTMENT_REASON_EXPIRED_PRODUCT`` all name the same value, so people
    can type what they see in tables and scripts can use proto names.

    Args:
        enum_type: A generated enum, for example ``common_pb2.StockStatus``.
        text: The name.

    Returns:
        The enum value.

    Raises:
        ValueError: When the name matches no value other than the zero value.
    """
    prefix = _enum_prefix(enum_type)
    wanted = text.strip().upper().replace("-", "_")
    for name, number in enum_type.items():
        if number != 0 and wanted in (name, name.removeprefix(prefix)):
            return number
    choices = ", ".join(enum_names(enum_type))
    raise ValueError(f"{text!r} is not one of: {choices}")


def parse_stock_status(text: str) -> common_pb2.StockStatus.ValueType:
    """Parses a stock status name (sellable, damaged, quarantine, returned)."""
    return parse_enum(common_pb2.StockStatus, text)


def parse_reservation_kind(text: str) -> common_pb2.ReservationKind.ValueType:
    """Parses a reservation kind name (soft, hard)."""
    return parse_enum(common_pb2.ReservationKind, text)


def parse_reservation_state(text: str) -> common_pb2.ReservationState.ValueType:
    """Parses a reservation state name (open, picked, released, expired)."""
    return parse_enum(common_pb2.ReservationState, text)


def parse_adjustment_reason(text: str) -> common_pb2.AdjustmentReason.ValueType:
    """Parses an adjustment reason code (shrink, damage, found, ...)."""
    return parse_enum(common_pb2.AdjustmentReason, text)


def parse_event_type(text: str) -> common_pb2.EventType.ValueType:
    """Parses a ledger event type name (received, reserved, picked, ...)."""
    return parse_enum(common_pb2.EventType, text)


def _enum_prefix(enum_type: _EnumTypeWrapper[EnumValueT]) -> str:
    # Buf's style makes every value start with the zero value's prefix
    # ("STOCK_STATUS_UNSPECIFIED" -> "STOCK_STATUS_"), so the prefix follows
    # the contract instead of being repeated here per enum.
    zero_name = enum_type.Name(enum_type.values()[0])
    assert zero_name.endswith("_UNSPECIFIED"), zero_name
    return zero_name.removesuffix("UNSPECIFIED")


def _check_code(code: str, what: str, length_max: int, text: str) -> None:
    if not code:
        raise ValueError(f"{text!r}: the {what} is empty")
    if len(code) > length_max:
        raise ValueError(f"{text!r}: the {what} is longer than {length_max} characters")
    if any(character.isspace() for character in code):
        raise ValueError(f"{text!r}: the {what} contains white space")
