"""Every edge-ledger command writes the right entries or is refused for the right reason.

Each refusal is checked for its exception type, its reason or field path, and
that `decide` left the ledger exactly as it was.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import TypeVar

import pytest

from edge_agent.domain.commands import (
    Adjust,
    AdoptShares,
    ChangeStatus,
    Command,
    Context,
    ExpireDue,
    GrantQuota,
    Pick,
    PickLine,
    QuantityLine,
    ReceiptLine,
    Receive,
    RecordCount,
    Release,
    Reserve,
    ReserveLine,
    ReturnQuota,
    Transfer,
)
from edge_agent.domain.ledger import (
    EXPIRY_REASON,
    SHORTAGE_REASON,
    Decision,
    EdgeLedger,
    replay,
)
from server.domain import limits
from server.domain.errors import (
    ExceedsHeld,
    InsufficientOnHand,
    InsufficientStock,
    InvalidArgument,
    ReservationClosed,
    StockdError,
    UnknownLocation,
    UnknownReservation,
    UnknownSku,
    WouldBreakReservations,
)
from server.domain.model import (
    DEFAULT_LOCATION,
    AdjustmentReason,
    EventType,
    Item,
    LedgerEvent,
    Location,
    LocationId,
    ReservationKind,
    ReservationState,
    Sku,
    StockStatus,
    UnitConversion,
)

E = TypeVar("E", bound=StockdError)

SITE = "site-a"
OTHER_SITE = "site-b"
NOW_MS = 1_700_000_000_000
BACK = LocationId("back")

PLAIN = Sku("plain")  # no rules
CASED = Sku("cased")  # a case is 12 each
MULTIPLE = Sku("multiple")  # sold in whole cases of 12
MINIMUM = Sku("minimum")  # at least 5 per reservation line
SAFE = Sku("safe")  # 3 units of safety stock

ITEMS = (
    Item(PLAIN),
    Item(CASED, units=(UnitConversion("case", 12),)),
    Item(MULTIPLE, units=(UnitConversion("case", 12),), order_multiple=12),
    Item(MINIMUM, order_minimum=5),
    Item(SAFE, safety_stock=3),
)

SELLABLE = int(StockStatus.SELLABLE)
DAMAGED = int(StockStatus.DAMAGED)
SOFT = int(ReservationKind.SOFT)
HARD = int(ReservationKind.HARD)
SHRINK = int(AdjustmentReason.SHRINK)
FOUND = int(AdjustmentReason.FOUND)


# ----- helpers -------------------------------------------------------------------


def new_ledger(hub_mode: bool = False) -> EdgeLedger:
    ledger = EdgeLedger(SITE, hub_mode=hub_mode)
    for item in ITEMS:
        ledger.upsert_item(item)
    ledger.upsert_location(Location(BACK, "back room"))
    ledger.drain_dirty()
    return ledger


def context(now_ms: int = NOW_MS) -> Context:
    return Context(now_ms=now_ms, actor="tester", request_id="request-1")


def apply(ledger: EdgeLedger, command: Command, now_ms: int = NOW_MS) -> Decision:
    decision = ledger.decide(command, context(now_ms))
    for event in decision.events:
        ledger.evolve(event)
    return decision


def receive(
    ledger: EdgeLedger,
    sku: str,
    quantity: int,
    location_id: str = "",
    status: int = 0,
) -> Decision:
    line = ReceiptLine(sku, quantity, location_id=location_id, status=status)
    return apply(ledger, Receive((line,)))


def reserve(
    ledger: EdgeLedger,
    reservation_id: str,
    lines: Mapping[str, int],
    kind: int = SOFT,
    ttl_seconds: int = 0,
    now_ms: int = NOW_MS,
) -> Decision:
    command = Reserve(
        reservation_id,
        tuple(ReserveLine(sku, quantity) for sku, quantity in lines.items()),
        kind=kind,
        ttl_seconds=ttl_seconds,
    )
    return apply(ledger, command, now_ms)


def snapshot(ledger: EdgeLedger) -> tuple[object, ...]:
    """Deep copy of everything `decide` must not touch."""
    return copy.deepcopy(
        (
            ledger.items,
            ledger.locations,
            ledger.balances,
            ledger.reservations,
            ledger.open_by_sku,
            list(ledger.expiry_heap),
            ledger.clock.last,
            ledger.last_sequence,
            ledger.dirty_buckets,
            ledger.dirty_reservations,
            ledger.dirty_skus,
        )
    )


def refuse(ledger: EdgeLedger, command: Command, error: type[E], now_ms: int = NOW_MS) -> E:
    """Asserts `command` is refused with exactly `error` and changes nothing."""
    before = snapshot(ledger)
    with pytest.raises(error) as caught:
        ledger.decide(command, context(now_ms))
    assert type(caught.value) is error
    assert snapshot(ledger) == before
    return caught.value


def violation_fields(error: StockdError) -> list[str]:
    return [violation.field for violation in error.violations]


def types(decision: Decision) -> list[EventType]:
    return [event.type for event in decision.events]


def held(ledger: EdgeLedger, reservation_id: str) -> dict[str, int]:
    reservation = ledger.reservation_state(reservation_id)
    assert reservation is not None
    return {sku: line.held for sku, line in reservation.lines.items()}


def state(ledger: EdgeLedger, reservation_id: str) -> ReservationState:
    reservation = ledger.reservation_state(reservation_id)
    assert reservation is not None
    return reservation.state


def releases(decision: Decision) -> list[tuple[str, int, str]]:
    return [
        (event.reservation_id, event.quantity, event.reason)
        for event in decision.events
        if event.type is EventType.RELEASED
    ]


def shortage_setup() -> EdgeLedger:
    """10 sellable PLAIN; soft-old 2, then hard 3, then soft-new 2 reserved."""
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    reserve(ledger, "soft-old", {PLAIN: 2})
    reserve(ledger, "hard", {PLAIN: 3}, kind=HARD)
    reserve(ledger, "soft-new", {PLAIN: 2})
    return ledger


# ----- stamping ------------------------------------------------------------------


def test_entries_are_stamped_with_gapless_sequences_rising_hlc_and_the_context() -> None:
    ledger = new_ledger()
    first = receive(ledger, PLAIN, 5)
    decision = apply(
        ledger,
        Receive((ReceiptLine(PLAIN, 1), ReceiptLine(CASED, 1), ReceiptLine(PLAIN, 2))),
        now_ms=NOW_MS - 60_000,  # the wall clock stepped back
    )
    events = first.events + decision.events
    assert [event.sequence for event in events] == [1, 2, 3, 4]
    assert all(a.hlc < b.hlc for a, b in itertools.pairwise(events))
    assert {(event.actor, event.request_id) for event in events} == {("tester", "request-1")}
    assert decision.events[0].recorded_at_ms == NOW_MS - 60_000
    assert decision.skus == (PLAIN, CASED)
    assert ledger.last_sequence == 4


# ----- receive -------------------------------------------------------------------


def test_receive_converts_cases_to_base_units() -> None:
    ledger = new_ledger()
    decision = apply(ledger, Receive((ReceiptLine(CASED, 2, unit="case"),), reference="PO-1"))
    (event,) = decision.events
    assert (event.type, event.sku, event.quantity, event.reference) == (
        EventType.RECEIVED,
        CASED,
        24,
        "PO-1",
    )
    assert ledger.balance(CASED).bucket(DEFAULT_LOCATION, StockStatus.SELLABLE) == 24
    assert ledger.available(CASED) == 24


def test_receive_in_the_base_unit_by_name() -> None:
    ledger = new_ledger()
    apply(ledger, Receive((ReceiptLine(CASED, 5, unit="each"),)))
    assert ledger.balance(CASED).sellable == 5


def test_receive_defaults_to_the_default_location_and_sellable() -> None:
    ledger = new_ledger()
    (event,) = receive(ledger, PLAIN, 7).events
    assert (event.location_id, event.status) == (DEFAULT_LOCATION, StockStatus.SELLABLE)
    balance = ledger.balance(PLAIN)
    assert balance.on_hand == {(DEFAULT_LOCATION, StockStatus.SELLABLE): 7}
    assert (balance.sellable, balance.total) == (7, 7)


def test_receive_into_a_named_location_and_status() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 4, location_id=BACK, status=DAMAGED)
    balance = ledger.balance(PLAIN)
    assert balance.on_hand == {(BACK, StockStatus.DAMAGED): 4}
    assert (balance.sellable, balance.total) == (0, 4)
    assert ledger.available(PLAIN) == 0


def test_receive_unknown_unit_is_refused() -> None:
    ledger = new_ledger()
    error = refuse(ledger, Receive((ReceiptLine(CASED, 1, unit="pallet"),)), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_UNKNOWN_UNIT"
    assert violation_fields(error) == ["lines[0].unit"]


def test_receive_unknown_location_is_refused() -> None:
    ledger = new_ledger()
    command = Receive(
        (ReceiptLine(PLAIN, 1), ReceiptLine(PLAIN, 1, location_id="attic")),
    )
    error = refuse(ledger, command, UnknownLocation)
    assert error.reason_name == "ERROR_REASON_UNKNOWN_LOCATION"
    assert error.metadata == {"location_id": "attic", "field": "lines[1].location_id"}


def test_receive_unknown_sku_is_refused() -> None:
    ledger = new_ledger()
    error = refuse(ledger, Receive((ReceiptLine("ghost", 1),)), UnknownSku)
    assert error.reason_name == "ERROR_REASON_UNKNOWN_SKU"
    assert error.metadata == {"sku": "ghost", "field": "lines[0].sku"}


def test_receive_is_atomic_one_bad_line_rejects_every_line() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 3)
    before = ledger.balance(PLAIN).sellable
    command = Receive(
        (
            ReceiptLine(PLAIN, 5),
            ReceiptLine(CASED, 1, unit="case"),
            ReceiptLine(CASED, 1, unit="pallet"),
            ReceiptLine(PLAIN, 2, unit="crate"),
        )
    )
    error = refuse(ledger, command, InvalidArgument)
    # Every bad line is named, not just the first.
    assert violation_fields(error) == ["lines[2].unit", "lines[3].unit"]
    assert ledger.balance(PLAIN).sellable == before
    assert CASED not in ledger.balances
    unknown = refuse(ledger, Receive((ReceiptLine(PLAIN, 5), ReceiptLine("ghost", 1))), UnknownSku)
    assert unknown.metadata == {"sku": "ghost", "field": "lines[1].sku"}
    assert ledger.balance(PLAIN).sellable == before


@pytest.mark.parametrize("quantity", [0, -1, 2**62])
def test_receive_quantity_out_of_range_is_refused(quantity: int) -> None:
    ledger = new_ledger()
    error = refuse(ledger, Receive((ReceiptLine(PLAIN, quantity),)), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_QUANTITY"
    assert violation_fields(error) == ["lines[0].quantity"]


def test_receive_above_the_line_limit_after_unit_conversion_is_refused() -> None:
    ledger = new_ledger()
    cases = limits.QUANTITY_MAX // 12 + 1
    error = refuse(ledger, Receive((ReceiptLine(CASED, cases, unit="case"),)), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_QUANTITY"
    assert violation_fields(error) == ["lines[0].quantity"]


def test_receive_beyond_the_on_hand_limit_is_refused() -> None:
    ledger = new_ledger()
    full = tuple(
        ReceiptLine(PLAIN, limits.QUANTITY_MAX) for _ in range(limits.LINES_PER_REQUEST_MAX)
    )
    apply(ledger, Receive(full))
    apply(ledger, Receive(full))
    assert ledger.balance(PLAIN).total == limits.ON_HAND_MAX
    error = refuse(ledger, Receive((ReceiptLine(PLAIN, 1),)), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_QUANTITY"
    assert violation_fields(error) == ["lines[0].quantity"]
    adjust = refuse(ledger, Adjust(PLAIN, 1, FOUND, location_id=BACK), InvalidArgument)
    assert adjust.reason_name == "ERROR_REASON_INVALID_QUANTITY"
    assert violation_fields(adjust) == ["quantity_delta"]
    count = refuse(ledger, RecordCount(PLAIN, 1, location_id=BACK), InvalidArgument)
    assert count.reason_name == "ERROR_REASON_INVALID_QUANTITY"
    assert violation_fields(count) == ["counted_quantity"]


def test_receive_without_lines_is_refused() -> None:
    error = refuse(new_ledger(), Receive(()), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_FIELD"
    assert violation_fields(error) == ["lines"]


def test_receive_with_too_many_lines_is_refused() -> None:
    lines = tuple(ReceiptLine(PLAIN, 1) for _ in range(limits.LINES_PER_REQUEST_MAX + 1))
    error = refuse(new_ledger(), Receive(lines), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_TOO_MANY_LINES"
    assert violation_fields(error) == ["lines"]


def test_receive_unknown_status_is_refused() -> None:
    error = refuse(new_ledger(), Receive((ReceiptLine(PLAIN, 1, status=9),)), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_FIELD"
    assert violation_fields(error) == ["lines[0].status"]


# ----- adjust --------------------------------------------------------------------


@pytest.mark.parametrize("reason_code", [0, 99])
def test_adjust_requires_a_known_reason_code(reason_code: int) -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 5)
    error = refuse(ledger, Adjust(PLAIN, -1, reason_code), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_FIELD"
    assert violation_fields(error) == ["reason_code"]


@pytest.mark.parametrize("delta", [0, limits.QUANTITY_MAX + 1, -(2**62)])
def test_adjust_quantity_out_of_range_is_refused(delta: int) -> None:
    ledger = new_ledger()
    error = refuse(ledger, Adjust(PLAIN, delta, FOUND), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_QUANTITY"
    assert violation_fields(error) == ["quantity_delta"]


def test_adjust_up_and_down_records_the_reason_code() -> None:
    ledger = new_ledger()
    receive(ledger, CASED, 30)
    up = apply(ledger, Adjust(CASED, 1, FOUND, unit="case", reason="found on shelf"))
    (event,) = up.events
    assert (event.type, event.quantity, event.reason_code, event.reason) == (
        EventType.ADJUSTED,
        12,
        AdjustmentReason.FOUND,
        "found on shelf",
    )
    down = apply(ledger, Adjust(CASED, -40, SHRINK))
    assert [event.quantity for event in down.events] == [-40]
    assert ledger.balance(CASED).sellable == 2


def test_adjust_below_zero_in_the_bucket_is_refused() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 5)
    receive(ledger, PLAIN, 50, location_id=BACK)
    error = refuse(ledger, Adjust(PLAIN, -6, SHRINK), InsufficientOnHand)
    assert error.reason_name == "ERROR_REASON_INSUFFICIENT_ON_HAND"
    assert error.metadata == {"sku": PLAIN, "on_hand": "5", "requested": "6"}


def test_adjust_of_a_non_sellable_bucket_leaves_reservations_alone() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 4)
    receive(ledger, PLAIN, 3, status=DAMAGED)
    reserve(ledger, "r", {PLAIN: 4})
    decision = apply(ledger, Adjust(PLAIN, -3, SHRINK, status=DAMAGED))
    assert types(decision) == [EventType.ADJUSTED]
    assert held(ledger, "r") == {PLAIN: 4}


def test_adjust_below_reserved_is_refused_without_release_reservations() -> None:
    ledger = shortage_setup()
    error = refuse(ledger, Adjust(PLAIN, -6, SHRINK), WouldBreakReservations)
    assert error.reason_name == "ERROR_REASON_WOULD_BREAK_RESERVATIONS"
    assert error.metadata == {"sku": PLAIN, "reserved": "7", "sellable_after": "4"}


def test_adjust_with_release_reservations_releases_soft_newest_first() -> None:
    ledger = shortage_setup()
    decision = apply(ledger, Adjust(PLAIN, -6, SHRINK, release_reservations=True))
    assert types(decision)[0] is EventType.ADJUSTED
    assert releases(decision) == [
        ("soft-new", 2, SHORTAGE_REASON),
        ("soft-old", 1, SHORTAGE_REASON),
    ]
    balance = ledger.balance(PLAIN)
    assert (balance.sellable, balance.reserved_soft, balance.reserved_hard) == (4, 1, 3)
    assert state(ledger, "soft-new") is ReservationState.RELEASED
    assert held(ledger, "soft-old") == {PLAIN: 1}


def test_adjust_with_release_reservations_releases_every_soft_before_a_hard() -> None:
    ledger = shortage_setup()
    decision = apply(ledger, Adjust(PLAIN, -8, SHRINK, release_reservations=True))
    # The hard reservation is older than soft-new and newer than soft-old: kind wins.
    assert releases(decision) == [
        ("soft-new", 2, SHORTAGE_REASON),
        ("soft-old", 2, SHORTAGE_REASON),
        ("hard", 1, SHORTAGE_REASON),
    ]
    balance = ledger.balance(PLAIN)
    assert (balance.sellable, balance.reserved_soft, balance.reserved_hard) == (2, 0, 2)
    assert held(ledger, "hard") == {PLAIN: 2}


def test_adjust_within_free_stock_releases_nothing() -> None:
    ledger = shortage_setup()
    decision = apply(ledger, Adjust(PLAIN, -3, SHRINK, release_reservations=True))
    assert types(decision) == [EventType.ADJUSTED]
    assert ledger.balance(PLAIN).reserved == 7


def test_adjust_at_an_unknown_location_or_sku_is_refused() -> None:
    ledger = new_ledger()
    error = refuse(ledger, Adjust(PLAIN, 1, FOUND, location_id="attic"), UnknownLocation)
    assert error.metadata["field"] == "location_id"
    unknown = refuse(ledger, Adjust("ghost", 1, FOUND), UnknownSku)
    assert unknown.metadata == {"sku": "ghost", "field": "sku"}


# ----- count ---------------------------------------------------------------------


def test_count_records_the_variance_both_ways() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    down = apply(ledger, RecordCount(PLAIN, 7, reason="cycle count"))
    (event,) = down.events
    assert (event.type, event.quantity, event.variance, down.variance) == (
        EventType.COUNTED,
        -3,
        -3,
        -3,
    )
    up = apply(ledger, RecordCount(PLAIN, 15))
    assert (up.variance, up.events[0].variance) == (8, 8)
    assert ledger.balance(PLAIN).sellable == 15


def test_count_in_cases_of_an_empty_bucket() -> None:
    ledger = new_ledger()
    decision = apply(ledger, RecordCount(CASED, 3, unit="case", location_id=BACK))
    assert decision.variance == 36
    assert ledger.balance(CASED).bucket(BACK, StockStatus.SELLABLE) == 36


def test_count_below_reserved_releases_soft_first_newest_first() -> None:
    ledger = shortage_setup()
    decision = apply(ledger, RecordCount(PLAIN, 2))
    assert decision.variance == -8
    assert releases(decision) == [
        ("soft-new", 2, SHORTAGE_REASON),
        ("soft-old", 2, SHORTAGE_REASON),
        ("hard", 1, SHORTAGE_REASON),
    ]
    assert ledger.balance(PLAIN).reserved == 2


def test_count_to_zero_releases_every_reservation() -> None:
    ledger = shortage_setup()
    apply(ledger, RecordCount(PLAIN, 0))
    assert ledger.balance(PLAIN).reserved == 0
    assert ledger.reservations == {}
    assert {state(ledger, r) for r in ("soft-old", "hard", "soft-new")} == {
        ReservationState.RELEASED
    }


@pytest.mark.parametrize("counted", [-1, limits.QUANTITY_MAX + 1])
def test_count_out_of_range_is_refused(counted: int) -> None:
    error = refuse(new_ledger(), RecordCount(PLAIN, counted), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_QUANTITY"
    assert violation_fields(error) == ["counted_quantity"]


def test_count_at_an_unknown_location_is_refused() -> None:
    error = refuse(new_ledger(), RecordCount(PLAIN, 1, location_id="attic"), UnknownLocation)
    assert error.metadata["field"] == "location_id"


# ----- change status ----------------------------------------------------------------


def test_change_status_sellable_to_damaged_reduces_available() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    decision = apply(ledger, ChangeStatus(PLAIN, 4, SELLABLE, DAMAGED, reason="dropped"))
    (event,) = decision.events
    assert (event.type, event.status, event.to_status, event.quantity) == (
        EventType.STATUS_CHANGED,
        StockStatus.SELLABLE,
        StockStatus.DAMAGED,
        4,
    )
    balance = ledger.balance(PLAIN)
    assert (balance.sellable, balance.total, ledger.available(PLAIN)) == (6, 10, 6)
    assert balance.bucket(DEFAULT_LOCATION, StockStatus.DAMAGED) == 4


def test_change_status_damaged_to_sellable_raises_available() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 5, status=DAMAGED)
    apply(ledger, ChangeStatus(PLAIN, 2, DAMAGED, SELLABLE))
    assert (ledger.available(PLAIN), ledger.balance(PLAIN).total) == (2, 5)


def test_change_status_to_the_same_status_is_refused() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 5)
    error = refuse(ledger, ChangeStatus(PLAIN, 1, SELLABLE, SELLABLE), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_FIELD"
    assert violation_fields(error) == ["to_status"]


def test_change_status_requires_both_statuses() -> None:
    ledger = new_ledger()
    error = refuse(ledger, ChangeStatus(PLAIN, 1, 0, 0), InvalidArgument)
    assert violation_fields(error) == ["from_status", "to_status"]


def test_change_status_of_more_than_the_bucket_is_refused() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 3)
    error = refuse(ledger, ChangeStatus(PLAIN, 4, SELLABLE, DAMAGED), InsufficientOnHand)
    assert error.metadata == {"sku": PLAIN, "on_hand": "3", "requested": "4"}


def test_change_status_breaking_reservations_needs_release_reservations() -> None:
    ledger = shortage_setup()
    error = refuse(ledger, ChangeStatus(PLAIN, 5, SELLABLE, DAMAGED), WouldBreakReservations)
    assert error.metadata == {"sku": PLAIN, "reserved": "7", "sellable_after": "5"}
    decision = apply(ledger, ChangeStatus(PLAIN, 5, SELLABLE, DAMAGED, release_reservations=True))
    assert releases(decision) == [("soft-new", 2, SHORTAGE_REASON)]
    assert ledger.balance(PLAIN).reserved == 5


# ----- transfer ------------------------------------------------------------------


def test_transfer_inside_the_site_moves_stock_and_keeps_totals() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    reserve(ledger, "r", {PLAIN: 8})  # reserved units may move between locations
    decision = apply(ledger, Transfer(PLAIN, 9, to_location_id=BACK, reference="T-1"))
    out, into = decision.events
    assert (out.type, out.location_id, out.to_location_id, out.quantity) == (
        EventType.TRANSFERRED_OUT,
        DEFAULT_LOCATION,
        BACK,
        9,
    )
    assert (into.type, into.location_id, into.quantity) == (EventType.TRANSFERRED_IN, BACK, 9)
    balance = ledger.balance(PLAIN)
    assert balance.on_hand == {
        (DEFAULT_LOCATION, StockStatus.SELLABLE): 1,
        (BACK, StockStatus.SELLABLE): 9,
    }
    assert (balance.sellable, balance.total, balance.reserved) == (10, 10, 8)


def test_transfer_to_another_site_takes_stock_off_hand() -> None:
    ledger = new_ledger()
    receive(ledger, CASED, 30, location_id=BACK)
    decision = apply(
        ledger,
        Transfer(CASED, 2, unit="case", from_location_id=BACK, to_site_id=OTHER_SITE),
    )
    (event,) = decision.events
    assert (event.type, event.counterparty_site_id, event.location_id, event.quantity) == (
        EventType.TRANSFERRED_OUT,
        OTHER_SITE,
        BACK,
        24,
    )
    balance = ledger.balance(CASED)
    assert (balance.sellable, balance.total) == (6, 6)


def test_transfer_of_reserved_sellable_units_out_of_the_site_is_refused() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    reserve(ledger, "r", {PLAIN: 8})
    error = refuse(ledger, Transfer(PLAIN, 3, to_site_id=OTHER_SITE), WouldBreakReservations)
    assert error.metadata == {"sku": PLAIN, "reserved": "8", "sellable_after": "7"}
    apply(ledger, Transfer(PLAIN, 2, to_site_id=OTHER_SITE))
    assert ledger.balance(PLAIN).sellable == 8


def test_transfer_of_damaged_units_out_of_the_site_ignores_reservations() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 5)
    receive(ledger, PLAIN, 5, status=DAMAGED)
    reserve(ledger, "r", {PLAIN: 5})
    apply(ledger, Transfer(PLAIN, 5, status=DAMAGED, to_site_id=OTHER_SITE))
    assert ledger.balance(PLAIN).total == 5


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (Transfer(PLAIN, 1), "to_location_id"),
        (Transfer(PLAIN, 1, to_location_id=BACK, to_site_id=OTHER_SITE), "to_location_id"),
        (Transfer(PLAIN, 1, to_site_id=SITE), "to_site_id"),
        (Transfer(PLAIN, 1, to_location_id=DEFAULT_LOCATION), "to_location_id"),
    ],
    ids=["no-destination", "two-destinations", "own-site", "same-location"],
)
def test_transfer_destination_must_be_one_other_place(command: Transfer, field: str) -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 5)
    error = refuse(ledger, command, InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_FIELD"
    assert violation_fields(error) == [field]


def test_transfer_of_more_than_the_bucket_is_refused() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 5)
    error = refuse(ledger, Transfer(PLAIN, 6, to_location_id=BACK), InsufficientOnHand)
    assert error.metadata == {"sku": PLAIN, "on_hand": "5", "requested": "6"}


def test_transfer_to_an_unknown_location_is_refused() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 5)
    error = refuse(ledger, Transfer(PLAIN, 1, to_location_id="attic"), UnknownLocation)
    assert error.metadata == {"location_id": "attic", "field": "to_location_id"}


# ----- reserve -------------------------------------------------------------------


def test_reserve_is_all_or_nothing_when_a_line_is_short() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    receive(ledger, CASED, 5)
    command = Reserve("r", (ReserveLine(PLAIN, 4), ReserveLine(CASED, 8)))
    error = refuse(ledger, command, InsufficientStock)
    assert error.reason_name == "ERROR_REASON_INSUFFICIENT_STOCK"
    assert error.metadata == {"sku": CASED, "requested": "8", "available": "5"}
    assert ledger.balance(PLAIN).reserved == 0
    assert ledger.reservations == {}


def test_reserve_allow_partial_reports_shortfalls() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    receive(ledger, CASED, 5)
    command = Reserve("r", (ReserveLine(PLAIN, 4), ReserveLine(CASED, 8)), allow_partial=True)
    decision = apply(ledger, command)
    assert decision.reservation_id == "r"
    assert decision.shortfalls == ((CASED, 8, 5),)
    assert [(event.sku, event.quantity) for event in decision.events] == [(PLAIN, 4), (CASED, 5)]
    assert held(ledger, "r") == {PLAIN: 4, CASED: 5}


def test_reserve_allow_partial_rounds_down_to_the_order_multiple() -> None:
    ledger = new_ledger()
    receive(ledger, MULTIPLE, 30)
    decision = apply(
        ledger, Reserve("r", (ReserveLine(MULTIPLE, 3, unit="case"),), allow_partial=True)
    )
    assert decision.shortfalls == ((MULTIPLE, 36, 30),)
    assert held(ledger, "r") == {MULTIPLE: 24}


def test_reserve_allow_partial_below_the_order_minimum_reserves_nothing() -> None:
    ledger = new_ledger()
    receive(ledger, MINIMUM, 4)
    decision = apply(ledger, Reserve("r", (ReserveLine(MINIMUM, 6),), allow_partial=True))
    assert decision.events == ()
    assert decision.reservation_id == ""
    assert decision.shortfalls == ((MINIMUM, 6, 4),)
    assert ledger.reservation_state("r") is None


def test_reserve_a_fraction_of_a_case_is_refused() -> None:
    ledger = new_ledger()
    receive(ledger, MULTIPLE, 48)
    error = refuse(ledger, Reserve("r", (ReserveLine(MULTIPLE, 6),)), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_NOT_ORDER_MULTIPLE"
    assert violation_fields(error) == ["lines[0].quantity"]
    apply(ledger, Reserve("r", (ReserveLine(MULTIPLE, 2, unit="case"),)))
    assert held(ledger, "r") == {MULTIPLE: 24}


def test_reserve_below_the_order_minimum_is_refused() -> None:
    ledger = new_ledger()
    receive(ledger, MINIMUM, 10)
    error = refuse(ledger, Reserve("r", (ReserveLine(MINIMUM, 4),)), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_BELOW_ORDER_MINIMUM"
    assert violation_fields(error) == ["lines[0].quantity"]


def test_reserve_the_same_sku_twice_is_refused() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    command = Reserve("r", (ReserveLine(PLAIN, 1), ReserveLine(CASED, 1), ReserveLine(PLAIN, 1)))
    error = refuse(ledger, command, InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_FIELD"
    assert violation_fields(error) == ["lines[2].sku"]


def test_reserve_hard_and_soft_count_separately() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    reserve(ledger, "soft", {PLAIN: 3})
    reserve(ledger, "hard", {PLAIN: 4}, kind=HARD)
    balance = ledger.balance(PLAIN)
    assert (balance.reserved_soft, balance.reserved_hard, balance.reserved) == (3, 4, 7)
    assert ledger.available(PLAIN) == 3
    assert ledger.reservations["hard"].kind is ReservationKind.HARD


def test_reserve_unspecified_kind_is_soft() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    reserve(ledger, "r", {PLAIN: 1}, kind=0)
    assert ledger.reservations["r"].kind is ReservationKind.SOFT
    assert ledger.balance(PLAIN).reserved_soft == 1


def test_reserve_ttl_defaults_and_hard_reservations_never_expire() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    default = reserve(ledger, "default", {PLAIN: 1})
    short = reserve(ledger, "short", {PLAIN: 1}, ttl_seconds=60)
    longest = reserve(ledger, "longest", {PLAIN: 1}, ttl_seconds=limits.TTL_SECONDS_MAX)
    hard = reserve(ledger, "hard", {PLAIN: 1}, kind=HARD, ttl_seconds=60)
    assert default.events[0].expires_at_ms == NOW_MS + limits.TTL_SECONDS_DEFAULT * 1000
    assert short.events[0].expires_at_ms == NOW_MS + 60_000
    assert longest.events[0].expires_at_ms == NOW_MS + limits.TTL_SECONDS_MAX * 1000
    assert hard.events[0].expires_at_ms == 0
    assert ledger.reservations["short"].expires_at_ms == NOW_MS + 60_000


@pytest.mark.parametrize("ttl_seconds", [-1, limits.TTL_SECONDS_MAX + 1])
def test_reserve_ttl_out_of_bounds_is_refused(ttl_seconds: int) -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    command = Reserve("r", (ReserveLine(PLAIN, 1),), ttl_seconds=ttl_seconds)
    error = refuse(ledger, command, InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_FIELD"
    assert violation_fields(error) == ["ttl_seconds"]


def test_reserve_never_takes_safety_stock() -> None:
    ledger = new_ledger()
    receive(ledger, SAFE, 10)
    assert (ledger.available(SAFE), ledger.local_share(SAFE)) == (7, 7)
    error = refuse(ledger, Reserve("r", (ReserveLine(SAFE, 8),)), InsufficientStock)
    assert error.metadata == {"sku": SAFE, "requested": "8", "available": "7"}
    reserve(ledger, "r", {SAFE: 7})
    assert (ledger.available(SAFE), ledger.local_share(SAFE)) == (0, 7)
    more = refuse(ledger, Reserve("more", (ReserveLine(SAFE, 1),)), InsufficientStock)
    assert more.metadata == {"sku": SAFE, "requested": "1", "available": "0"}


def test_raising_safety_stock_does_not_claw_back_reserved_units() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    reserve(ledger, "r", {PLAIN: 6})
    ledger.upsert_item(Item(PLAIN, safety_stock=8))
    assert (ledger.available(PLAIN), ledger.local_share(PLAIN)) == (0, 6)
    assert held(ledger, "r") == {PLAIN: 6}
    apply(ledger, Release("r", (QuantityLine(PLAIN, 5),)))
    # Freed units stay behind the safety stock instead of becoming promisable.
    assert (ledger.available(PLAIN), ledger.local_share(PLAIN)) == (1, 2)


@pytest.mark.parametrize("quantity", [2**62, limits.QUANTITY_MAX + 1, 0, -1])
def test_reserve_quantity_out_of_range_is_refused(quantity: int) -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    error = refuse(ledger, Reserve("r", (ReserveLine(PLAIN, quantity),)), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_QUANTITY"
    assert violation_fields(error) == ["lines[0].quantity"]


def test_reserve_above_the_limit_after_unit_conversion_is_refused() -> None:
    ledger = new_ledger()
    cases = limits.QUANTITY_MAX // 12 + 1
    error = refuse(ledger, Reserve("r", (ReserveLine(CASED, cases, unit="case"),)), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_QUANTITY"


def test_reserve_with_too_many_lines_is_refused() -> None:
    lines = tuple(
        ReserveLine(f"sku-{index}", 1) for index in range(limits.LINES_PER_REQUEST_MAX + 1)
    )
    error = refuse(new_ledger(), Reserve("r", lines), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_TOO_MANY_LINES"
    assert violation_fields(error) == ["lines"]


def test_reserve_without_lines_is_refused() -> None:
    error = refuse(new_ledger(), Reserve("r", ()), InvalidArgument)
    assert violation_fields(error) == ["lines"]


def test_reserve_unknown_kind_is_refused() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    error = refuse(ledger, Reserve("r", (ReserveLine(PLAIN, 1),), kind=7), InvalidArgument)
    assert violation_fields(error) == ["kind"]


@pytest.mark.parametrize("reservation_id", ["", " padded", "x" * (limits.ID_LENGTH_MAX + 1)])
def test_reserve_malformed_reservation_id_is_refused(reservation_id: str) -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    error = refuse(ledger, Reserve(reservation_id, (ReserveLine(PLAIN, 1),)), InvalidArgument)
    assert violation_fields(error) == ["reservation_id"]


def test_reserve_an_existing_reservation_id_is_refused() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    reserve(ledger, "r", {PLAIN: 1})
    error = refuse(ledger, Reserve("r", (ReserveLine(PLAIN, 1),)), InvalidArgument)
    assert violation_fields(error) == ["reservation_id"]
    apply(ledger, Release("r"))
    # Still refused while the closed reservation is in the current batch.
    again = refuse(ledger, Reserve("r", (ReserveLine(PLAIN, 1),)), InvalidArgument)
    assert violation_fields(again) == ["reservation_id"]


def test_reserve_unknown_sku_or_unit_is_refused() -> None:
    ledger = new_ledger()
    receive(ledger, CASED, 10)
    error = refuse(ledger, Reserve("r", (ReserveLine("ghost", 1),)), UnknownSku)
    assert error.metadata == {"sku": "ghost", "field": "lines[0].sku"}
    unit = refuse(ledger, Reserve("r", (ReserveLine(CASED, 1, unit="pallet"),)), InvalidArgument)
    assert unit.reason_name == "ERROR_REASON_UNKNOWN_UNIT"
    assert violation_fields(unit) == ["lines[0].unit"]


# ----- release -------------------------------------------------------------------


def two_line_reservation() -> EdgeLedger:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    receive(ledger, CASED, 24)
    reserve(ledger, "r", {PLAIN: 4, CASED: 12})
    return ledger


def test_release_whole_reservation() -> None:
    ledger = two_line_reservation()
    decision = apply(ledger, Release("r", reason="customer cancelled"))
    assert decision.reservation_id == "r"
    assert [(e.sku, e.quantity, e.reason) for e in decision.events] == [
        (PLAIN, 4, "customer cancelled"),
        (CASED, 12, "customer cancelled"),
    ]
    assert state(ledger, "r") is ReservationState.RELEASED
    assert "r" not in ledger.reservations
    assert ledger.balance(PLAIN).reserved == ledger.balance(CASED).reserved == 0


def test_release_part_keeps_the_reservation_open() -> None:
    ledger = two_line_reservation()
    apply(ledger, Release("r", (QuantityLine(CASED, 1, unit="case"), QuantityLine(PLAIN, 1))))
    assert held(ledger, "r") == {PLAIN: 3, CASED: 0}
    assert state(ledger, "r") is ReservationState.OPEN
    assert (ledger.available(PLAIN), ledger.available(CASED)) == (7, 24)
    # Releasing what is left line by line ends it as released.
    apply(ledger, Release("r", (QuantityLine(PLAIN, 3),)))
    assert state(ledger, "r") is ReservationState.RELEASED


def test_release_more_than_held_is_refused() -> None:
    ledger = two_line_reservation()
    command = Release("r", (QuantityLine(PLAIN, 3), QuantityLine(PLAIN, 2)))
    error = refuse(ledger, command, ExceedsHeld)
    assert error.reason_name == "ERROR_REASON_EXCEEDS_HELD"
    assert error.metadata == {"sku": PLAIN, "held": "4", "requested": "5"}


def test_release_a_sku_the_reservation_does_not_hold_is_refused() -> None:
    ledger = two_line_reservation()
    error = refuse(ledger, Release("r", (QuantityLine(MINIMUM, 1),)), InvalidArgument)
    assert violation_fields(error) == ["lines[0].sku"]


def test_release_a_closed_reservation_in_the_same_batch_is_refused() -> None:
    ledger = two_line_reservation()
    apply(ledger, Release("r"))
    error = refuse(ledger, Release("r"), ReservationClosed)
    assert error.reason_name == "ERROR_REASON_RESERVATION_CLOSED"
    assert error.metadata == {"reservation_id": "r", "state": "RELEASED"}


def test_release_an_unknown_reservation_is_refused() -> None:
    error = refuse(new_ledger(), Release("ghost"), UnknownReservation)
    assert error.reason_name == "ERROR_REASON_UNKNOWN_RESERVATION"
    assert error.metadata == {"reservation_id": "ghost"}


@pytest.mark.parametrize("quantity", [0, -2, 2**62])
def test_release_quantity_out_of_range_is_refused(quantity: int) -> None:
    ledger = two_line_reservation()
    error = refuse(ledger, Release("r", (QuantityLine(PLAIN, quantity),)), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_INVALID_QUANTITY"
    assert violation_fields(error) == ["lines[0].quantity"]


def test_release_with_too_many_lines_is_refused() -> None:
    ledger = two_line_reservation()
    lines = tuple(QuantityLine(PLAIN, 1) for _ in range(limits.LINES_PER_REQUEST_MAX + 1))
    error = refuse(ledger, Release("r", lines), InvalidArgument)
    assert error.reason_name == "ERROR_REASON_TOO_MANY_LINES"


# ----- pick ----------------------------------------------------------------------


def test_pick_part_keeps_the_reservation_open() -> None:
    ledger = two_line_reservation()
    decision = apply(ledger, Pick("r", (PickLine(PLAIN, 3),)))
    (event,) = decision.events
    assert (event.type, event.location_id, event.status, event.quantity) == (
        EventType.PICKED,
        DEFAULT_LOCATION,
        StockStatus.SELLABLE,
        3,
    )
    assert state(ledger, "r") is ReservationState.OPEN
    assert held(ledger, "r") == {PLAIN: 1, CASED: 12}
    balance = ledger.balance(PLAIN)
    # On-hand and reserved fall together; what others may reserve is unchanged.
    assert (balance.sellable, balance.reserved, ledger.available(PLAIN)) == (7, 1, 6)


def test_pick_everything_ends_the_reservation_as_picked() -> None:
    ledger = two_line_reservation()
    apply(ledger, Pick("r", (PickLine(PLAIN, 4), PickLine(CASED, 1, unit="case"))))
    assert state(ledger, "r") is ReservationState.PICKED
    assert "r" not in ledger.reservations
    assert ledger.balance(CASED).total == 12
    assert ledger.balance(PLAIN).reserved == 0


def test_pick_with_release_remainder_releases_what_was_not_picked() -> None:
    ledger = two_line_reservation()
    decision = apply(ledger, Pick("r", (PickLine(PLAIN, 1),), release_remainder=True))
    assert [(e.type, e.sku, e.quantity, e.reason) for e in decision.events] == [
        (EventType.PICKED, PLAIN, 1, ""),
        (EventType.RELEASED, PLAIN, 3, "pick_remainder"),
        (EventType.RELEASED, CASED, 12, "pick_remainder"),
    ]
    assert state(ledger, "r") is ReservationState.PICKED
    assert (ledger.available(PLAIN), ledger.available(CASED)) == (9, 24)


def test_pick_from_two_locations_in_one_call() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 2)
    receive(ledger, PLAIN, 5, location_id=BACK)
    reserve(ledger, "r", {PLAIN: 6})
    apply(ledger, Pick("r", (PickLine(PLAIN, 2), PickLine(PLAIN, 4, location_id=BACK))))
    assert ledger.balance(PLAIN).on_hand == {(BACK, StockStatus.SELLABLE): 1}
    assert state(ledger, "r") is ReservationState.PICKED


def test_pick_more_than_held_is_refused() -> None:
    ledger = two_line_reservation()
    error = refuse(ledger, Pick("r", (PickLine(PLAIN, 2), PickLine(PLAIN, 3))), ExceedsHeld)
    assert error.metadata == {"sku": PLAIN, "held": "4", "requested": "5"}


def test_pick_from_a_location_without_enough_sellable_stock_is_refused() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    receive(ledger, PLAIN, 2, location_id=BACK)
    receive(ledger, PLAIN, 9, location_id=BACK, status=DAMAGED)
    reserve(ledger, "r", {PLAIN: 5})
    error = refuse(ledger, Pick("r", (PickLine(PLAIN, 3, location_id=BACK),)), InsufficientOnHand)
    assert error.reason_name == "ERROR_REASON_INSUFFICIENT_ON_HAND"
    assert error.metadata == {
        "sku": PLAIN,
        "location_id": BACK,
        "on_hand": "2",
        "requested": "3",
    }


def test_pick_may_break_a_case_of_an_order_multiple_item() -> None:
    """Order rules bind what is reserved; a picker may still break a case."""
    ledger = new_ledger()
    receive(ledger, MULTIPLE, 48)
    reserve(ledger, "r", {MULTIPLE: 24})
    apply(ledger, Pick("r", (PickLine(MULTIPLE, 6),)))
    assert held(ledger, "r") == {MULTIPLE: 18}


def test_pick_in_whole_cases_of_an_order_multiple_item() -> None:
    ledger = new_ledger()
    receive(ledger, MULTIPLE, 48)
    reserve(ledger, "r", {MULTIPLE: 24})
    apply(ledger, Pick("r", (PickLine(MULTIPLE, 1, unit="case"),)))
    assert held(ledger, "r") == {MULTIPLE: 12}


def test_pick_a_sku_the_reservation_does_not_hold_is_refused() -> None:
    ledger = two_line_reservation()
    error = refuse(ledger, Pick("r", (PickLine(MINIMUM, 1),)), InvalidArgument)
    assert violation_fields(error) == ["lines[0].sku"]


def test_pick_without_lines_or_from_an_unknown_location_is_refused() -> None:
    ledger = two_line_reservation()
    error = refuse(ledger, Pick("r", ()), InvalidArgument)
    assert violation_fields(error) == ["lines"]
    where = refuse(ledger, Pick("r", (PickLine(PLAIN, 1, location_id="attic"),)), UnknownLocation)
    assert where.metadata == {"location_id": "attic", "field": "lines[0].location_id"}


def test_pick_a_closed_or_unknown_reservation_is_refused() -> None:
    ledger = two_line_reservation()
    apply(ledger, Pick("r", (PickLine(PLAIN, 1),), release_remainder=True))
    closed = refuse(ledger, Pick("r", (PickLine(PLAIN, 1),)), ReservationClosed)
    assert closed.metadata == {"reservation_id": "r", "state": "PICKED"}
    unknown = refuse(ledger, Pick("ghost", (PickLine(PLAIN, 1),)), UnknownReservation)
    assert unknown.metadata == {"reservation_id": "ghost"}


# ----- expiry --------------------------------------------------------------------


def test_expire_due_expires_soft_reservations_only_once_due() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    reserve(ledger, "soft", {PLAIN: 3}, ttl_seconds=60)
    reserve(ledger, "hard", {PLAIN: 4}, kind=HARD)
    expires_at_ms = NOW_MS + 60_000
    assert apply(ledger, ExpireDue(limit=10), now_ms=expires_at_ms - 1).events == ()
    decision = apply(ledger, ExpireDue(limit=10), now_ms=expires_at_ms)
    assert [(e.type, e.reservation_id, e.quantity, e.reason) for e in decision.events] == [
        (EventType.EXPIRED, "soft", 3, EXPIRY_REASON)
    ]
    assert state(ledger, "soft") is ReservationState.EXPIRED
    assert ledger.balance(PLAIN).reserved_soft == 0
    # A hard reservation never expires, however late it gets.
    far = expires_at_ms + limits.TTL_SECONDS_MAX * 10_000
    assert apply(ledger, ExpireDue(limit=10), now_ms=far).events == ()
    assert held(ledger, "hard") == {PLAIN: 4}


def test_expire_due_respects_the_limit_earliest_first() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    reserve(ledger, "third", {PLAIN: 1}, ttl_seconds=30)
    reserve(ledger, "first", {PLAIN: 1}, ttl_seconds=10)
    reserve(ledger, "second", {PLAIN: 1}, ttl_seconds=20)
    later = NOW_MS + 3_600_000
    first = apply(ledger, ExpireDue(limit=2), now_ms=later)
    assert [event.reservation_id for event in first.events] == ["first", "second"]
    assert held(ledger, "third") == {PLAIN: 1}
    rest = apply(ledger, ExpireDue(limit=2), now_ms=later)
    assert [event.reservation_id for event in rest.events] == ["third"]
    assert ledger.balance(PLAIN).reserved == 0


def test_expire_due_expires_what_a_partly_released_reservation_still_holds() -> None:
    ledger = two_line_reservation()
    apply(ledger, Release("r", (QuantityLine(PLAIN, 4),)))
    decision = apply(ledger, ExpireDue(limit=1), now_ms=NOW_MS + 10**9)
    assert [(e.sku, e.quantity) for e in decision.events] == [(CASED, 12)]
    assert state(ledger, "r") is ReservationState.EXPIRED


def test_expire_due_skips_reservations_that_already_ended() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    reserve(ledger, "released", {PLAIN: 1}, ttl_seconds=10)
    reserve(ledger, "picked", {PLAIN: 1}, ttl_seconds=10)
    reserve(ledger, "open", {PLAIN: 1}, ttl_seconds=20)
    apply(ledger, Release("released"))
    apply(ledger, Pick("picked", (PickLine(PLAIN, 1),)))
    decision = apply(ledger, ExpireDue(limit=1), now_ms=NOW_MS + 60_000)
    assert [event.reservation_id for event in decision.events] == ["open"]
    assert state(ledger, "released") is ReservationState.RELEASED
    assert state(ledger, "picked") is ReservationState.PICKED


def test_a_picked_then_expired_reservation_ends_as_picked() -> None:
    ledger = two_line_reservation()
    apply(ledger, Pick("r", (PickLine(PLAIN, 4),)))
    apply(ledger, ExpireDue(limit=1), now_ms=NOW_MS + 10**9)
    assert state(ledger, "r") is ReservationState.PICKED


# ----- decide leaves the state alone ----------------------------------------------


def populated() -> EdgeLedger:
    """PLAIN 10 default + 5 back, CASED 24; hard-1 holds 6 PLAIN, soft-1 3 PLAIN + 12 CASED."""
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    receive(ledger, PLAIN, 5, location_id=BACK)
    receive(ledger, CASED, 24)
    reserve(ledger, "hard-1", {PLAIN: 6}, kind=HARD)
    reserve(ledger, "soft-1", {PLAIN: 4, CASED: 12})
    apply(ledger, Release("soft-1", (QuantityLine(PLAIN, 1),)))
    reserve(ledger, "gone", {CASED: 1})
    apply(ledger, Release("gone"))
    return ledger


REFUSED: list[tuple[Command, type[StockdError], str]] = [
    (Receive((ReceiptLine(PLAIN, 1), ReceiptLine("ghost", 1))), UnknownSku, "lines[1].sku"),
    (
        Receive((ReceiptLine(PLAIN, 1), ReceiptLine(PLAIN, 1, unit="crate"))),
        InvalidArgument,
        "lines[1].unit",
    ),
    (Adjust(PLAIN, -11, SHRINK), InsufficientOnHand, ""),
    (Adjust(PLAIN, -9, SHRINK), WouldBreakReservations, ""),
    (Adjust(PLAIN, -1, 0), InvalidArgument, "reason_code"),
    (RecordCount(PLAIN, -1), InvalidArgument, "counted_quantity"),
    (ChangeStatus(PLAIN, 10, SELLABLE, DAMAGED), WouldBreakReservations, ""),
    (ChangeStatus(PLAIN, 1, DAMAGED, SELLABLE), InsufficientOnHand, ""),
    (Transfer(PLAIN, 7, to_site_id=OTHER_SITE), WouldBreakReservations, ""),
    (Transfer(PLAIN, 11, to_location_id=BACK), InsufficientOnHand, ""),
    (
        Reserve("new", (ReserveLine(CASED, 1), ReserveLine(PLAIN, 99))),
        InsufficientStock,
        "",
    ),
    (Reserve("hard-1", (ReserveLine(CASED, 1),)), InvalidArgument, "reservation_id"),
    (Reserve("new", (ReserveLine(MULTIPLE, 1),)), InvalidArgument, "lines[0].quantity"),
    (Release("soft-1", (QuantityLine(PLAIN, 4),)), ExceedsHeld, ""),
    (Release("gone"), ReservationClosed, ""),
    (Release("ghost"), UnknownReservation, ""),
    (Pick("hard-1", (PickLine(PLAIN, 7),)), ExceedsHeld, ""),
    (Pick("hard-1", (PickLine(PLAIN, 6, location_id=BACK),)), InsufficientOnHand, ""),
    (
        Pick("soft-1", (PickLine(CASED, 1, location_id="attic"),)),
        UnknownLocation,
        "lines[0].location_id",
    ),
]


@pytest.mark.parametrize(
    ("command", "error", "field"),
    REFUSED,
    ids=[f"{type(command).__name__}-{error.__name__}" for command, error, _ in REFUSED],
)
def test_decide_leaves_the_state_untouched_when_refusing(
    command: Command, error: type[StockdError], field: str
) -> None:
    refused = refuse(populated(), command, error)
    assert refused.reason_name == (
        refused.violations[0].reason if refused.violations else error.reason
    )
    named = violation_fields(refused) or [refused.metadata.get("field", "")]
    assert named[0] == field


ACCEPTED: list[Command] = [
    Receive((ReceiptLine(PLAIN, 1), ReceiptLine(CASED, 1, unit="case", location_id=BACK))),
    Adjust(PLAIN, -9, SHRINK, release_reservations=True),
    RecordCount(PLAIN, 0),
    ChangeStatus(PLAIN, 10, SELLABLE, DAMAGED, release_reservations=True),
    Transfer(PLAIN, 5, from_location_id=BACK, to_location_id=DEFAULT_LOCATION),
    Transfer(PLAIN, 5, to_site_id=OTHER_SITE),
    Reserve("new", (ReserveLine(CASED, 1), ReserveLine(PLAIN, 99)), allow_partial=True),
    Release("soft-1"),
    Pick("soft-1", (PickLine(PLAIN, 1),), release_remainder=True),
]


@pytest.mark.parametrize("command", ACCEPTED, ids=[type(command).__name__ for command in ACCEPTED])
def test_decide_alone_changes_nothing_until_the_entries_are_evolved(command: Command) -> None:
    ledger = populated()
    before = snapshot(ledger)
    decision = ledger.decide(command, context())
    assert decision.events
    assert snapshot(ledger) == before
    for event in decision.events:
        ledger.evolve(event)
    assert snapshot(ledger) != before


def test_decide_expire_due_only_pops_the_expiry_index() -> None:
    ledger = populated()
    before = snapshot(ledger)
    decision = ledger.decide(ExpireDue(limit=10), context(NOW_MS + 10**9))
    assert [event.reservation_id for event in decision.events] == ["soft-1", "soft-1"]
    after = snapshot(ledger)
    heap_index = 5
    assert (
        after[:heap_index] + after[heap_index + 1 :]
        == before[:heap_index] + before[heap_index + 1 :]
    )


# ----- the log rebuilds the projection ----------------------------------------------


def test_replay_of_the_log_rebuilds_balances_and_open_reservations() -> None:
    ledger = new_ledger()
    log: list[LedgerEvent] = []
    commands: list[Command] = [
        Receive((ReceiptLine(PLAIN, 20), ReceiptLine(CASED, 3, unit="case", location_id=BACK))),
        Reserve("a", (ReserveLine(PLAIN, 5), ReserveLine(CASED, 10)), ttl_seconds=30),
        Reserve("b", (ReserveLine(PLAIN, 6),), kind=HARD),
        Pick("b", (PickLine(PLAIN, 2),)),
        ChangeStatus(PLAIN, 12, SELLABLE, DAMAGED, release_reservations=True),
        Transfer(CASED, 20, from_location_id=BACK, to_location_id=DEFAULT_LOCATION),
        RecordCount(CASED, 5, location_id=BACK),
    ]
    for command in commands:
        log += apply(ledger, command).events
    log += apply(ledger, ExpireDue(limit=5), now_ms=NOW_MS + 60_000).events
    rebuilt = replay(SITE, ledger.items.values(), log)
    assert rebuilt.balances == ledger.balances
    assert rebuilt.last_sequence == ledger.last_sequence == len(log)
    assert {rid: held(rebuilt, rid) for rid in rebuilt.reservations} == {
        rid: held(ledger, rid) for rid in ledger.reservations
    }
    assert set(ledger.reservations) == {"b"}


# ----- hub mode: an explicit local share (escrow) ------------------------------------


def hub_ledger_with_hub_share() -> EdgeLedger:
    """Hub mode; 10 sellable PLAIN of which the site owns 4 and the hub 6."""
    ledger = new_ledger(hub_mode=True)
    receive(ledger, PLAIN, 10)
    decision = apply(ledger, ReturnQuota(PLAIN, 6, reason="rebalance"))
    assert [event.local_share_delta for event in decision.events] == [-6]
    assert ledger.local_share(PLAIN) == 4
    return ledger


def test_hub_mode_receipts_of_sellable_stock_land_in_the_local_share() -> None:
    ledger = new_ledger(hub_mode=True)
    decision = apply(
        ledger,
        Receive((ReceiptLine(PLAIN, 10), ReceiptLine(PLAIN, 5, status=DAMAGED))),
    )
    assert [event.local_share_delta for event in decision.events] == [10, 0]
    assert (ledger.local_share(PLAIN), ledger.available(PLAIN)) == (10, 10)
    apply(ledger, ChangeStatus(PLAIN, 2, DAMAGED, SELLABLE))
    assert ledger.local_share(PLAIN) == 12


def test_hub_mode_reserves_only_the_local_share() -> None:
    ledger = hub_ledger_with_hub_share()
    error = refuse(ledger, Reserve("r", (ReserveLine(PLAIN, 5),)), InsufficientStock)
    assert error.metadata == {"sku": PLAIN, "requested": "5", "available": "4"}
    reserve(ledger, "r", {PLAIN: 4})
    assert (ledger.available(PLAIN), ledger.local_free(PLAIN)) == (0, 0)


def test_hub_mode_shrink_takes_free_local_share_first_and_leaves_the_rest_to_the_hub() -> None:
    ledger = hub_ledger_with_hub_share()
    reserve(ledger, "r", {PLAIN: 3})  # local share 4: 3 reserved, 1 free
    decision = apply(ledger, Adjust(PLAIN, -3, SHRINK))
    # One unit from the free local share; the hub's share absorbs the other two.
    assert [event.local_share_delta for event in decision.events] == [-1]
    assert ledger.local_share(PLAIN) == 3
    assert held(ledger, "r") == {PLAIN: 3}


def test_hub_mode_shrink_below_reserved_releases_and_caps_the_local_share() -> None:
    ledger = hub_ledger_with_hub_share()
    reserve(ledger, "r", {PLAIN: 4})
    error = refuse(ledger, Adjust(PLAIN, -8, SHRINK), WouldBreakReservations)
    assert error.metadata == {"sku": PLAIN, "reserved": "4", "sellable_after": "2"}
    decision = apply(ledger, RecordCount(PLAIN, 2))
    assert decision.events[0].local_share_delta == -2
    assert releases(decision) == [("r", 2, SHORTAGE_REASON)]
    assert (ledger.local_share(PLAIN), ledger.balance(PLAIN).reserved) == (2, 2)


def test_hub_mode_transfer_out_of_the_site_may_not_take_the_hubs_share() -> None:
    ledger = hub_ledger_with_hub_share()
    error = refuse(ledger, Transfer(PLAIN, 5, to_site_id=OTHER_SITE), InsufficientStock)
    assert error.reason_name == "ERROR_REASON_INSUFFICIENT_STOCK"
    assert error.metadata == {"sku": PLAIN, "requested": "5", "available": "4"}
    decision = apply(ledger, Transfer(PLAIN, 4, to_site_id=OTHER_SITE))
    assert [event.local_share_delta for event in decision.events] == [-4]
    assert (ledger.local_share(PLAIN), ledger.balance(PLAIN).sellable) == (0, 6)


def test_hub_mode_pick_lowers_the_local_share_with_on_hand() -> None:
    ledger = hub_ledger_with_hub_share()
    reserve(ledger, "r", {PLAIN: 3})
    decision = apply(ledger, Pick("r", (PickLine(PLAIN, 2),)))
    assert [event.local_share_delta for event in decision.events] == [-2]
    assert (ledger.local_share(PLAIN), ledger.balance(PLAIN).reserved) == (2, 1)


def test_hub_mode_grant_raises_and_return_lowers_the_local_share() -> None:
    ledger = hub_ledger_with_hub_share()
    grant = apply(ledger, GrantQuota(PLAIN, 5, command_sequence=7))
    (event,) = grant.events
    assert (event.type, event.quantity, event.local_share_delta, event.reference) == (
        EventType.QUOTA_GRANTED,
        5,
        5,
        "cmd:7",
    )
    reserve(ledger, "r", {PLAIN: 6})
    # Only free share goes back, however much is asked for.
    returned = apply(ledger, ReturnQuota(PLAIN, 100))
    assert [(e.type, e.quantity) for e in returned.events] == [(EventType.QUOTA_RETURNED, 3)]
    assert (ledger.local_share(PLAIN), ledger.local_free(PLAIN)) == (6, 0)
    assert apply(ledger, ReturnQuota(PLAIN, 1)).events == ()


def test_hub_mode_return_keeps_safety_stock_back() -> None:
    ledger = new_ledger(hub_mode=True)
    receive(ledger, SAFE, 10)
    decision = apply(ledger, ReturnQuota(SAFE, 100))
    # The share was 10 but only 7 of it is backed by stock above the safety stock.
    assert [event.quantity for event in decision.events] == [7]
    assert ledger.local_share(SAFE) == 3


def test_return_quota_outside_hub_mode_writes_nothing() -> None:
    ledger = new_ledger()
    receive(ledger, PLAIN, 10)
    assert apply(ledger, ReturnQuota(PLAIN, 5)).events == ()
    assert ledger.available(PLAIN) == 10


def test_quota_commands_validate_their_input() -> None:
    ledger = new_ledger(hub_mode=True)
    unknown = refuse(ledger, GrantQuota("ghost", 1, command_sequence=1), UnknownSku)
    assert unknown.metadata == {"sku": "ghost", "field": "sku"}
    zero = refuse(ledger, GrantQuota(PLAIN, 0, command_sequence=1), InvalidArgument)
    assert zero.reason_name == "ERROR_REASON_INVALID_QUANTITY"
    assert violation_fields(zero) == ["quantity"]
    negative = refuse(ledger, ReturnQuota(PLAIN, -1), InvalidArgument)
    assert negative.reason_name == "ERROR_REASON_INVALID_QUANTITY"
    assert violation_fields(negative) == ["quantity"]


def test_adopt_shares_makes_each_local_share_what_the_site_could_promise() -> None:
    ledger = new_ledger()
    receive(ledger, SAFE, 10)
    receive(ledger, PLAIN, 6)
    reserve(ledger, "r", {PLAIN: 5})
    ledger.upsert_item(Item(PLAIN, safety_stock=4))  # reserved above sellable - safety
    ledger.hub_mode = True
    decision = apply(ledger, AdoptShares())
    assert [(e.type, e.sku, e.local_share_delta) for e in decision.events] == [
        (EventType.QUOTA_GRANTED, PLAIN, 5),
        (EventType.QUOTA_GRANTED, SAFE, 7),
    ]
    assert (ledger.local_share(PLAIN), ledger.available(PLAIN)) == (5, 0)
    assert (ledger.local_share(SAFE), ledger.available(SAFE)) == (7, 7)
    assert apply(ledger, AdoptShares()).events == ()
