"""Proves the CLI's text parsers accept what operators type and refuse the rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from clients.parsing import (
    LineSpec,
    enum_name,
    enum_names,
    parse_adjustment_reason,
    parse_enum,
    parse_event_type,
    parse_line,
    parse_quantity,
    parse_reservation_kind,
    parse_reservation_state,
    parse_stock_status,
    parse_timestamp,
    parse_unit_conversion,
)
from stockd.v1 import common_pb2


@pytest.mark.parametrize(
    ("text", "allow_location", "expected"),
    [
        ("SKU1:5", False, LineSpec("SKU1", 5)),
        ("SKU1:5:case", False, LineSpec("SKU1", 5, "case")),
        ("SKU1:5@A-01", True, LineSpec("SKU1", 5, "", "A-01")),
        ("SKU1:2:case@bin-7", True, LineSpec("SKU1", 2, "case", "bin-7")),
        ("A:B:5", False, LineSpec("A:B", 5)),
        ("A:B:5:case", False, LineSpec("A:B", 5, "case")),
        ("SKU1:007", False, LineSpec("SKU1", 7)),
        ("x@y:3@loc", True, LineSpec("x@y", 3, "", "loc")),
    ],
)
def test_parse_line_accepts_documented_shapes(
    text: str, allow_location: bool, expected: LineSpec
) -> None:
    assert parse_line(text, allow_location=allow_location) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SKU1", "is not SKU:QTY"),
        ("SKU1:", "is not SKU:QTY"),
        (":5", "SKU is empty"),
        ("SKU1:0", "must not be zero"),
        ("SKU1:-2", "is not SKU:QTY"),
        ("SKU1:1.5", "is not SKU:QTY"),
        ("SKU1:five:case", "is not SKU:QTY"),
        ("SKU1:5:", "unit is empty"),
        ("SKU 1:5", "white space"),
        ("S" * 65 + ":1", "longer than 64"),
        ("SKU1:5:" + "u" * 33, "longer than 32"),
        ("SKU1:" + "9" * 20, "out of range"),
    ],
)
def test_parse_line_refuses_malformed_lines(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_line(text)


def test_parse_line_refuses_location_where_it_means_nothing() -> None:
    with pytest.raises(ValueError, match="takes no @LOCATION"):
        parse_line("SKU1:5@bin", allow_location=False)


def test_parse_line_refuses_empty_location() -> None:
    with pytest.raises(ValueError, match="location is empty"):
        parse_line("SKU1:5@", allow_location=True)


@pytest.mark.parametrize(
    ("text", "allow_zero", "allow_negative", "expected"),
    [
        ("5", False, False, 5),
        (" 12 ", False, False, 12),
        ("0", True, False, 0),
        ("-3", False, True, -3),
        ("+4", False, True, 4),
        (str(2**63 - 1), False, False, 2**63 - 1),
    ],
)
def test_parse_quantity_accepts_whole_numbers(
    text: str, allow_zero: bool, allow_negative: bool, expected: int
) -> None:
    assert parse_quantity(text, allow_zero=allow_zero, allow_negative=allow_negative) == expected


@pytest.mark.parametrize(
    ("text", "allow_zero", "allow_negative"),
    [
        ("0", False, False),
        ("0", False, True),
        ("-1", False, False),
        ("1.0", False, False),
        ("1e3", False, False),
        ("1_000", False, False),
        ("", True, True),
        (str(2**63), False, False),
        (str(-(2**63) - 1), False, True),
    ],
)
def test_parse_quantity_refuses_the_rest(text: str, allow_zero: bool, allow_negative: bool) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text, allow_zero=allow_zero, allow_negative=allow_negative)


def test_parse_unit_conversion() -> None:
    assert parse_unit_conversion("case=12") == ("case", 12)
    assert parse_unit_conversion(" pallet = 480") == ("pallet", 480)


@pytest.mark.parametrize("text", ["case", "case=", "=12", "case=0", "case=-1", "case=1.5"])
def test_parse_unit_conversion_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="unit"):
        parse_unit_conversion(text)


def test_parse_timestamp_reads_naive_times_as_utc() -> None:
    assert parse_timestamp("2025-01-31T08:00") == datetime(2025, 1, 31, 8, 0, tzinfo=UTC)
    assert parse_timestamp("2025-01-31") == datetime(2025, 1, 31, tzinfo=UTC)


def test_parse_timestamp_converts_offsets_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    parsed = parse_timestamp("2025-01-31T09:00:00+01:00")
    assert parsed == datetime(2025, 1, 31, 9, 0, tzinfo=paris)
    assert parsed.tzinfo is UTC
    assert parse_timestamp("2025-01-31T08:00:00Z") == datetime(2025, 1, 31, 8, 0, tzinfo=UTC)


def test_parse_timestamp_refuses_other_formats() -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_timestamp("yesterday")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sellable", common_pb2.STOCK_STATUS_SELLABLE),
        ("Damaged", common_pb2.STOCK_STATUS_DAMAGED),
        ("QUARANTINE", common_pb2.STOCK_STATUS_QUARANTINE),
        ("STOCK_STATUS_RETURNED", common_pb2.STOCK_STATUS_RETURNED),
    ],
)
def test_parse_stock_status(text: str, expected: int) -> None:
    assert parse_stock_status(text) == expected


def test_friendly_names_cover_every_enum_the_cli_takes() -> None:
    assert parse_reservation_kind("soft") == common_pb2.RESERVATION_KIND_SOFT
    assert parse_reservation_kind("hard") == common_pb2.RESERVATION_KIND_HARD
    assert parse_reservation_state("open") == common_pb2.RESERVATION_STATE_OPEN
    assert parse_reservation_state("expired") == common_pb2.RESERVATION_STATE_EXPIRED
    assert parse_adjustment_reason("shrink") == common_pb2.ADJUSTMENT_REASON_SHRINK
    assert (
        parse_adjustment_reason("expired-product") == common_pb2.ADJUSTMENT_REASON_EXPIRED_PRODUCT
    )
    assert (
        parse_adjustment_reason("return_to_vendor") == common_pb2.ADJUSTMENT_REASON_RETURN_TO_VENDOR
    )
    assert parse_event_type("reserved") == common_pb2.EVENT_TYPE_RESERVED
    assert parse_event_type("transferred_out") == common_pb2.EVENT_TYPE_TRANSFERRED_OUT


@pytest.mark.parametrize("text", ["unspecified", "STOCK_STATUS_UNSPECIFIED", "broken", ""])
def test_parse_enum_refuses_unknown_and_zero_names(text: str) -> None:
    with pytest.raises(ValueError, match="sellable, damaged, quarantine, returned"):
        parse_enum(common_pb2.StockStatus, text)


def test_enum_names_follow_the_contract_in_number_order() -> None:
    assert enum_names(common_pb2.StockStatus) == ["sellable", "damaged", "quarantine", "returned"]
    assert enum_names(common_pb2.AdjustmentReason) == [
        "damage",
        "shrink",
        "found",
        "correction",
        "expired_product",
        "return_to_vendor",
        "internal_use",
    ]
    assert "quota_granted" in enum_names(common_pb2.EventType)


def test_enum_name_round_trips_and_tolerates_unknown_numbers() -> None:
    for name in enum_names(common_pb2.EventType):
        assert enum_name(common_pb2.EventType, parse_event_type(name)) == name
    assert enum_name(common_pb2.StockStatus, 0) == ""
    assert enum_name(common_pb2.StockStatus, 99) == "99"
