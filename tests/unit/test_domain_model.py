"""Domain enums and error reasons match the proto contract; the hybrid clock never runs back.

Adapters convert domain enums with a plain int() and error reasons by name, so
a drift between `server.domain` and `stockd/v1/common.proto` would put wrong
values on the wire without any other test noticing.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from enum import IntEnum
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.domain import ledger
from server.domain import errors
from server.domain.errors import ALL_ERRORS, InvalidArgument, StockdError, Violations
from server.domain.hlc import LOGICAL_MAX, HybridClock, pack, physical_ms
from server.domain.model import (
    AdjustmentReason,
    EventType,
    Item,
    LedgerEvent,
    ReservationKind,
    ReservationState,
    Sku,
    StockStatus,
    UnitConversion,
)
from stockd.v1 import common_pb2

PROTO_ERROR_REASONS = frozenset(common_pb2.ErrorReason.keys())

ENUM_PAIRS: list[tuple[type[IntEnum], str, str]] = [
    (StockStatus, "StockStatus", "STOCK_STATUS_"),
    (ReservationKind, "ReservationKind", "RESERVATION_KIND_"),
    (ReservationState, "ReservationState", "RESERVATION_STATE_"),
    (EventType, "EventType", "EVENT_TYPE_"),
    (AdjustmentReason, "AdjustmentReason", "ADJUSTMENT_REASON_"),
]

# Finer reasons the ledger puts on field violations (not error classes).
VIOLATION_REASONS = (
    "ERROR_REASON_INVALID_QUANTITY",
    "ERROR_REASON_UNKNOWN_UNIT",
    "ERROR_REASON_NOT_ORDER_MULTIPLE",
    "ERROR_REASON_BELOW_ORDER_MINIMUM",
    "ERROR_REASON_TOO_MANY_LINES",
    "ERROR_REASON_INVALID_FIELD",
)


def _reason_literals(path: str | None) -> set[str]:
    assert path is not None
    return set(re.findall(r'"(ERROR_REASON_[A-Z_]+)"', Path(path).read_text(encoding="utf-8")))


# ----- enums -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "proto_name", "prefix"), ENUM_PAIRS, ids=[pair[1] for pair in ENUM_PAIRS]
)
def test_domain_enum_matches_proto_enum_names_and_numbers(
    domain: type[IntEnum], proto_name: str, prefix: str
) -> None:
    descriptor = common_pb2.DESCRIPTOR.enum_types_by_name[proto_name]
    proto = {value.name: value.number for value in descriptor.values}
    mirrored = {prefix + member.name: int(member) for member in domain}
    assert mirrored == proto


# Domain fields whose proto field carries the unit in its type (a Timestamp).
TIMESTAMP_FIELDS = {"recorded_at_ms": "recorded_at", "expires_at_ms": "expires_at"}


def test_every_ledger_event_field_has_a_proto_field() -> None:
    proto_fields = set(common_pb2.LedgerEvent.DESCRIPTOR.fields_by_name)
    missing = [
        field.name
        for field in dataclasses.fields(LedgerEvent)
        if TIMESTAMP_FIELDS.get(field.name, field.name) not in proto_fields
    ]
    assert missing == []


def test_ledger_event_fields_other_than_the_reservation_header_have_proto_fields() -> None:
    proto_fields = set(common_pb2.LedgerEvent.DESCRIPTOR.fields_by_name)
    header = {"channel", "customer_tier", "expires_at_ms"}
    missing = [
        field.name
        for field in dataclasses.fields(LedgerEvent)
        if field.name not in header
        and TIMESTAMP_FIELDS.get(field.name, field.name) not in proto_fields
    ]
    assert missing == []


# ----- error reasons -----------------------------------------------------------


@pytest.mark.parametrize("error", ALL_ERRORS, ids=[error.__name__ for error in ALL_ERRORS])
def test_error_reason_is_a_proto_error_reason(error: type[StockdError]) -> None:
    assert error.reason in PROTO_ERROR_REASONS
    assert error.reason != "ERROR_REASON_UNSPECIFIED"
    assert error.code in grpc.StatusCode.__members__


def test_error_reasons_map_one_to_one_to_error_classes() -> None:
    reasons = [error.reason for error in ALL_ERRORS]
    assert len(reasons) == len(set(reasons))


def test_every_error_class_with_a_reason_is_listed_in_all_errors() -> None:
    defined = {
        value
        for value in vars(errors).values()
        if isinstance(value, type)
        and issubclass(value, StockdError)
        and value.reason != "ERROR_REASON_UNSPECIFIED"
    }
    assert defined == set(ALL_ERRORS)


@pytest.mark.parametrize("reason", VIOLATION_REASONS)
def test_violation_reason_is_a_proto_error_reason(reason: str) -> None:
    assert reason in PROTO_ERROR_REASONS


def test_every_reason_literal_in_the_domain_is_a_proto_error_reason() -> None:
    used = _reason_literals(ledger.__file__) | _reason_literals(errors.__file__)
    assert set(VIOLATION_REASONS) <= used
    assert used <= PROTO_ERROR_REASONS


def test_every_proto_error_reason_is_reported_by_the_domain() -> None:
    used = (
        {error.reason for error in ALL_ERRORS}
        | _reason_literals(ledger.__file__)
        | _reason_literals(errors.__file__)
    )
    assert PROTO_ERROR_REASONS - {"ERROR_REASON_UNSPECIFIED"} <= used


def test_invalid_argument_reports_the_reason_of_its_first_violation() -> None:
    violations = Violations()
    violations.add("lines[0].unit", "unknown", "ERROR_REASON_UNKNOWN_UNIT")
    violations.add("lines[1].quantity", "too small", "ERROR_REASON_INVALID_QUANTITY")
    with pytest.raises(InvalidArgument) as caught:
        violations.raise_if_any()
    assert caught.value.reason_name == "ERROR_REASON_UNKNOWN_UNIT"
    assert [v.field for v in caught.value.violations] == ["lines[0].unit", "lines[1].quantity"]
    assert "(and 1 more)" in caught.value.message


# ----- units of measure ----------------------------------------------------------


def test_item_converts_defined_units_and_rejects_unknown_ones() -> None:
    item = Item(Sku("widget"), base_unit="each", units=(UnitConversion("case", 12),))
    assert item.base_units_per("") == 1
    assert item.base_units_per("each") == 1
    assert item.base_units_per("case") == 12
    assert item.base_units_per("pallet") is None


# ----- hybrid logical clock --------------------------------------------------------


def test_hlc_stays_monotonic_when_the_wall_clock_jumps_backwards() -> None:
    clock = HybridClock()
    walls = [1_000, 1_005, 990, 990, 1_005, 500, 1_006, 2_000, 1_999]
    issued: list[int] = []
    for index, wall_ms in enumerate(walls):
        issued.append(clock.tick(wall_ms))
        assert physical_ms(issued[-1]) == max(walls[: index + 1])
    assert all(earlier < later for earlier, later in itertools.pairwise(issued))
    # A backwards jump keeps the physical part and counts in the logical part.
    assert issued[2] == pack(1_005, 1)
    assert issued[5] == pack(1_005, 4)
    assert issued[6] == pack(1_006, 0)


def test_hlc_logical_overflow_carries_into_the_physical_part() -> None:
    clock = HybridClock(pack(1_000, LOGICAL_MAX - 1))
    assert clock.tick(1_000) == pack(1_000, LOGICAL_MAX)
    assert clock.tick(1_000) == pack(1_001, 0)
    assert clock.tick(900) == pack(1_001, 1)


def test_hlc_logical_counter_runs_through_a_full_millisecond() -> None:
    clock = HybridClock()
    first = clock.tick(5_000)
    for _ in range(LOGICAL_MAX):
        clock.tick(5_000)
    assert clock.last == pack(5_000, LOGICAL_MAX)
    assert clock.tick(5_000) == pack(5_001, 0) > first


def test_hlc_observe_of_a_remote_timestamp_ahead_moves_past_it() -> None:
    clock = HybridClock()
    clock.tick(1_000)
    remote = pack(5_000, 7)
    observed = clock.observe(remote, 1_200)
    assert observed == pack(5_000, 8)
    assert observed > remote
    # The local wall clock is still behind: later ticks stay on the remote's millisecond.
    assert clock.tick(1_300) == pack(5_000, 9)
    assert clock.tick(5_001) == pack(5_001, 0)


def test_hlc_observe_of_a_remote_timestamp_behind_is_a_plain_tick() -> None:
    clock = HybridClock()
    clock.tick(9_000)
    assert clock.observe(pack(100, 3), 9_500) == pack(9_500, 0)


def test_hlc_observe_of_a_remote_at_logical_max_carries() -> None:
    clock = HybridClock()
    assert clock.observe(pack(7_000, LOGICAL_MAX), 10) == pack(7_001, 0)


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=10_000),
            st.none() | st.integers(min_value=0, max_value=(10_001 << 16) - 1),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_hlc_is_strictly_increasing_and_ahead_of_everything_observed(
    steps: list[tuple[int, int | None]],
) -> None:
    clock = HybridClock()
    previous = 0
    for wall_ms, remote in steps:
        value = clock.tick(wall_ms) if remote is None else clock.observe(remote, wall_ms)
        assert value > previous
        assert physical_ms(value) >= wall_ms
        if remote is not None:
            assert value > remote
        previous = value
