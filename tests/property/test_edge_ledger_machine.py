"""Random command sequences keep the edge ledger equal to a tiny reference model and to its log.

A Hypothesis state machine drives `EdgeLedger.decide`/`evolve` with every
command over three SKUs and two locations. A dict-based model predicts, for
each command, either the exact refusal (which must leave the ledger untouched)
or the resulting stock, reservations and local share. After every step the
escrow invariants hold and replaying the log so far rebuilds the same
projection. The machine runs twice: standalone (local share = sellable minus
safety stock) and in hub mode (explicit local share moved by receipts, shrink,
picks, transfers, grants, returns and adoption; DESIGN rules 1, 2 and 6).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import ClassVar, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import event as note_outcome
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

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
from edge_agent.domain.ledger import Decision, EdgeLedger, replay
from server.domain import limits
from server.domain.errors import (
    ExceedsHeld,
    InsufficientOnHand,
    InsufficientStock,
    InvalidArgument,
    ReservationClosed,
    StockdError,
    UnknownReservation,
    WouldBreakReservations,
)
from server.domain.model import (
    DEFAULT_LOCATION,
    AdjustmentReason,
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

T = TypeVar("T")

SITE = "site-a"
OTHER_SITE = "site-b"
START_MS = 1_700_000_000_000
BACK = LocationId("back")
LOCATIONS = (DEFAULT_LOCATION, BACK)
STATUSES = (StockStatus.SELLABLE, StockStatus.DAMAGED)

PLAIN = Sku("plain")
CASED = Sku("cased")  # a case is 4 each
MULTIPLE = Sku("multiple")  # reserved in multiples of 3, at least 3
CASE_SIZE = 4
ITEMS: dict[str, Item] = {
    PLAIN: Item(PLAIN),
    CASED: Item(CASED, units=(UnitConversion("case", CASE_SIZE),)),
    MULTIPLE: Item(MULTIPLE, order_multiple=3, order_minimum=3),
}

SEED_RESERVATIONS = (
    (ReservationKind.HARD, 0),
    (ReservationKind.SOFT, 30),
    (ReservationKind.SOFT, 30),
)

skus = st.sampled_from(tuple(ITEMS))
locations = st.sampled_from(LOCATIONS)
statuses = st.sampled_from((StockStatus.SELLABLE, *STATUSES))  # mostly sellable
quantities = st.integers(min_value=1, max_value=20)

BucketKey = tuple[str, str, StockStatus]


@dataclass
class ModelReservation:
    kind: ReservationKind
    created: int
    expires_at_ms: int
    held: dict[str, int]
    picked_any: bool = False


@dataclass
class Model:
    """What the ledger should hold, kept with plain dicts."""

    on_hand: dict[BucketKey, int] = field(default_factory=dict)
    safety: dict[str, int] = field(default_factory=dict)
    open: dict[str, ModelReservation] = field(default_factory=dict)
    closed: dict[str, ReservationState] = field(default_factory=dict)  # not yet drained
    drained: set[str] = field(default_factory=set)
    created: int = 0
    hub_mode: bool = False
    share: dict[str, int] = field(default_factory=dict)  # explicit local share (hub mode)

    def bucket(self, sku: str, location_id: str, status: StockStatus) -> int:
        return self.on_hand.get((sku, location_id, status), 0)

    def move(self, sku: str, location_id: str, status: StockStatus, delta: int) -> None:
        key = (sku, location_id, status)
        self.on_hand[key] = self.on_hand.get(key, 0) + delta
        assert self.on_hand[key] >= 0

    def sellable(self, sku: str) -> int:
        return sum(self.bucket(sku, location, StockStatus.SELLABLE) for location in LOCATIONS)

    def reserved(self, sku: str, kind: ReservationKind | None = None) -> int:
        return sum(r.held.get(sku, 0) for r in self.open.values() if kind is None or r.kind is kind)

    def available(self, sku: str) -> int:
        ceiling = self.sellable(sku) - self.safety.get(sku, 0)
        if self.hub_mode:
            ceiling = min(ceiling, self.share.get(sku, 0))
        return max(0, ceiling - self.reserved(sku))

    def local_share(self, sku: str) -> int:
        if self.hub_mode:
            return self.share.get(sku, 0)
        return self.reserved(sku) + self.available(sku)

    def grow(self, sku: str, quantity: int) -> None:
        """Sellable stock arriving lands in the local share (rule 2)."""
        if self.hub_mode:
            self.share[sku] = self.share.get(sku, 0) + quantity

    def share_after_shrink(self, sku: str, shrink: int, new_sellable: int) -> int:
        """Shrink comes out of free local share first, the rest is the hub's (rule 6);
        the local share never stays above what is physically there."""
        share = self.share.get(sku, 0)
        if not self.hub_mode:
            return share
        free = max(0, share - self.reserved(sku))
        return min(share - min(shrink, free), max(0, new_sellable))

    def shortage(
        self, sku: str, new_sellable: int, share_after: int | None = None
    ) -> list[tuple[str, int]]:
        """Releases that make reserved fit the stock (and share): soft first, newest first."""
        room = max(0, new_sellable)
        if self.hub_mode:
            room = min(room, self.share.get(sku, 0) if share_after is None else share_after)
        excess = self.reserved(sku) - room
        plan: list[tuple[str, int]] = []
        candidates = sorted(
            (rid for rid, r in self.open.items() if r.held.get(sku, 0) > 0),
            key=lambda rid: (self.open[rid].kind is ReservationKind.HARD, -self.open[rid].created),
        )
        for rid in candidates:
            if excess <= 0:
                break
            take = min(excess, self.open[rid].held[sku])
            plan.append((rid, take))
            excess -= take
        return plan

    def resolve(self, rid: str, sku: str, quantity: int, ending: ReservationState) -> None:
        reservation = self.open[rid]
        assert 0 < quantity <= reservation.held[sku]
        reservation.held[sku] -= quantity
        if sum(reservation.held.values()) == 0:
            del self.open[rid]
            self.closed[rid] = ReservationState.PICKED if reservation.picked_any else ending

    def release_for_shortage(self, sku: str, plan: list[tuple[str, int]]) -> None:
        for rid, take in plan:
            self.resolve(rid, sku, take, ReservationState.RELEASED)


class EdgeLedgerMachine(RuleBasedStateMachine):
    """Drives one site's ledger; every rule predicts its outcome with the model."""

    hub_mode: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.ledger = EdgeLedger(SITE, hub_mode=self.hub_mode)
        self.items = dict(ITEMS)
        for item in self.items.values():
            self.ledger.upsert_item(item)
        self.ledger.upsert_location(Location(BACK, "back room"))
        self.ledger.drain_dirty()
        self.model = Model(hub_mode=self.hub_mode)
        self.events: list[LedgerEvent] = []
        self.checked_events = 0
        self.now_ms = START_MS
        self.next_id = 0

    # ----- plumbing --------------------------------------------------------------

    def snapshot(self) -> str:
        """Everything `decide` must not touch, as text (the dataclass reprs name every
        field, and this is several times cheaper than a deep copy)."""
        ledger = self.ledger
        return repr(
            (
                ledger.items,
                ledger.locations,
                ledger.balances,
                ledger.reservations,
                ledger.open_by_sku,
                ledger.expiry_heap,
                ledger.clock,
                ledger.last_sequence,
                ledger.hub_mode,
                ledger.dirty_buckets,
                ledger.dirty_reservations,
                ledger.dirty_skus,
            )
        )

    def run(
        self,
        command: Command,
        expected: type[StockdError] | None,
        reason: str | None = None,
    ) -> Decision | None:
        """Decides and applies `command`, which must be refused exactly when `expected`."""
        # Only a predicted refusal needs a snapshot (an unexpected one fails anyway).
        before = self.snapshot() if expected is not None else None
        context = Context(now_ms=self.now_ms, actor="machine", request_id=f"q{len(self.events)}")
        refusal: StockdError | None = None
        try:
            decision = self.ledger.decide(command, context)
        except StockdError as error:
            refusal = error
        if refusal is not None:
            note_outcome(f"{type(command).__name__} refused: {type(refusal).__name__}")
            assert expected is not None, f"refused unexpectedly: {refusal!r}"
            assert type(refusal) is expected, f"expected {expected.__name__}, got {refusal!r}"
            if reason is not None:
                assert refusal.reason_name == reason, refusal
            assert before is not None
            assert self.snapshot() == before, "a refused command changed the ledger"
            return None
        assert expected is None, f"expected {expected.__name__}, but {command} was accepted"
        note_outcome(f"{type(command).__name__} accepted")
        for event in decision.events:
            self.ledger.evolve(event)
        self.events.extend(decision.events)
        return decision

    def new_id(self) -> str:
        self.next_id += 1
        return f"r{self.next_id}"

    def slack(self, sku: str, leaving: bool = False) -> int:
        """Sellable units that may go before a reservation breaks (or, leaving the site in
        hub mode, before units of the hub's share would go)."""
        model = self.model
        slack = model.sellable(sku) - model.reserved(sku)
        if leaving and model.hub_mode:
            slack = min(slack, model.share.get(sku, 0) - model.reserved(sku))
        return slack

    def edge_quantity(
        self, sku: str, magnitude: int, bucket: int, choice: int, leaving: bool = False
    ) -> int:
        """A quantity to take out of a bucket, often at an edge where the outcome flips."""
        edges = {0: bucket, 1: self.slack(sku, leaving), 2: self.slack(sku, leaving) + 1}
        value = edges.get(choice, magnitude)
        return value if value > 0 else magnitude

    def has_open_reservations(self) -> bool:
        return bool(self.model.open)

    # ----- stock movements -----------------------------------------------------------

    @initialize(
        stock=st.lists(
            st.tuples(locations, st.integers(0, 40)), min_size=len(ITEMS), max_size=len(ITEMS)
        )
    )
    def seed(self, stock: list[tuple[LocationId, int]]) -> None:
        """Starts with some sellable stock of every SKU so reservations have work to do."""
        lines = tuple(
            ReceiptLine(sku, quantity, location_id=location)
            for sku, (location, quantity) in zip(ITEMS, stock, strict=True)
            if quantity
        )
        if lines:
            self.run(Receive(lines), None)
            for line in lines:
                self.model.move(line.sku, line.location_id, StockStatus.SELLABLE, line.quantity)
                self.model.grow(line.sku, line.quantity)
        # Reservations to pick, release and break from the start; the two soft ones
        # fall due together, so the sweeper's limit matters.
        for kind, ttl_seconds in SEED_RESERVATIONS:
            command = Reserve(
                self.new_id(),
                (
                    ReserveLine(PLAIN, 2),
                    ReserveLine(CASED, 1, unit="case"),
                    ReserveLine(MULTIPLE, 3),
                ),
                kind=int(kind),
                ttl_seconds=ttl_seconds,
                allow_partial=True,
            )
            self.check_reserve(command, reused=False)

    @rule(
        lines=st.lists(
            st.tuples(skus, quantities, st.booleans(), locations, statuses),
            min_size=1,
            max_size=3,
        )
    )
    def receive(self, lines: list[tuple[str, int, bool, LocationId, StockStatus]]) -> None:
        command_lines: list[ReceiptLine] = []
        for sku, quantity, in_cases, location, status in lines:
            unit = "case" if in_cases and sku == CASED else ""
            command_lines.append(
                ReceiptLine(sku, quantity, unit=unit, location_id=location, status=int(status))
            )
        self.run(Receive(tuple(command_lines)), None)
        for sku, quantity, in_cases, location, status in lines:
            base = quantity * (CASE_SIZE if in_cases and sku == CASED else 1)
            self.model.move(sku, location, status, base)
            if status is StockStatus.SELLABLE:
                self.model.grow(sku, base)

    @rule(
        sku=skus,
        location=locations,
        status=statuses,
        magnitude=quantities,
        down=st.booleans(),
        whole=st.integers(0, 5),
        release=st.booleans(),
        reason_code=st.sampled_from([r for r in AdjustmentReason if r]),
    )
    def adjust(
        self,
        sku: str,
        location: LocationId,
        status: StockStatus,
        magnitude: int,
        down: bool,
        whole: int,
        release: bool,
        reason_code: AdjustmentReason,
    ) -> None:
        model = self.model
        bucket = model.bucket(sku, location, status)
        delta = -self.edge_quantity(sku, magnitude, bucket, whole) if down else magnitude
        command = Adjust(
            sku,
            delta,
            int(reason_code),
            location_id=location,
            status=int(status),
            release_reservations=release,
        )
        plan: list[tuple[str, int]] = []
        share_after = model.share.get(sku, 0)
        expected: type[StockdError] | None = None
        if bucket + delta < 0:
            expected = InsufficientOnHand
        elif status is StockStatus.SELLABLE and delta < 0:
            new_sellable = model.sellable(sku) + delta
            share_after = model.share_after_shrink(sku, -delta, new_sellable)
            plan = model.shortage(sku, new_sellable, share_after)
            if plan and not release:
                expected = WouldBreakReservations
        if self.run(command, expected) is not None:
            model.move(sku, location, status, delta)
            if status is StockStatus.SELLABLE:
                if delta > 0:
                    model.grow(sku, delta)
                elif model.hub_mode:
                    model.share[sku] = share_after
            model.release_for_shortage(sku, plan)

    @rule(
        sku=skus,
        location=locations,
        status=statuses,
        counted=st.integers(0, 25),
        near=st.integers(0, 3),
        shift=st.integers(-3, 3),
    )
    def count(
        self,
        sku: str,
        location: LocationId,
        status: StockStatus,
        counted: int,
        near: int,
        shift: int,
    ) -> None:
        """A count is never refused; it may land near the record or at the reserved edge."""
        model = self.model
        bucket = model.bucket(sku, location, status)
        if near == 1:
            counted = max(0, bucket + shift)
        elif near >= 2:
            # One unit below (near == 2) or exactly at what keeps reservations whole.
            counted = max(0, bucket - self.slack(sku) - (near == 2))
        variance = counted - model.bucket(sku, location, status)
        plan: list[tuple[str, int]] = []
        share_after = model.share.get(sku, 0)
        if status is StockStatus.SELLABLE and variance < 0:
            new_sellable = model.sellable(sku) + variance
            share_after = model.share_after_shrink(sku, -variance, new_sellable)
            plan = model.shortage(sku, new_sellable, share_after)
        command = RecordCount(sku, counted, location_id=location, status=int(status))
        decision = self.run(command, None)
        assert decision is not None
        assert decision.variance == variance
        model.move(sku, location, status, variance)
        if status is StockStatus.SELLABLE:
            if variance > 0:
                model.grow(sku, variance)
            elif model.hub_mode:
                model.share[sku] = share_after
        model.release_for_shortage(sku, plan)

    @rule(
        sku=skus,
        location=locations,
        from_status=statuses,
        same=st.integers(0, 9),
        quantity=quantities,
        whole=st.integers(0, 5),
        release=st.booleans(),
    )
    def change_status(
        self,
        sku: str,
        location: LocationId,
        from_status: StockStatus,
        same: int,
        quantity: int,
        whole: int,
        release: bool,
    ) -> None:
        model = self.model
        bucket = model.bucket(sku, location, from_status)
        quantity = self.edge_quantity(sku, quantity, bucket, whole)
        # Now and then the same status, which is refused.
        to_status = from_status if same == 0 else other(STATUSES, from_status)
        command = ChangeStatus(
            sku,
            quantity,
            int(from_status),
            int(to_status),
            location_id=location,
            release_reservations=release,
        )
        plan: list[tuple[str, int]] = []
        share_after = model.share.get(sku, 0)
        expected: type[StockdError] | None = None
        if from_status is to_status:
            expected = InvalidArgument
        elif model.bucket(sku, location, from_status) < quantity:
            expected = InsufficientOnHand
        elif from_status is StockStatus.SELLABLE:
            new_sellable = model.sellable(sku) - quantity
            share_after = model.share_after_shrink(sku, quantity, new_sellable)
            plan = model.shortage(sku, new_sellable, share_after)
            if plan and not release:
                expected = WouldBreakReservations
        if self.run(command, expected) is not None:
            model.move(sku, location, from_status, -quantity)
            model.move(sku, location, to_status, quantity)
            if to_status is StockStatus.SELLABLE:
                model.grow(sku, quantity)
            elif model.hub_mode:
                model.share[sku] = share_after
            model.release_for_shortage(sku, plan)

    @rule(
        sku=skus,
        source=locations,
        destination=st.sampled_from(("other", OTHER_SITE, OTHER_SITE, "same")),
        status=statuses,
        quantity=quantities,
        whole=st.integers(0, 5),
    )
    def transfer(
        self,
        sku: str,
        source: LocationId,
        destination: str,
        status: StockStatus,
        quantity: int,
        whole: int,
    ) -> None:
        model = self.model
        bucket = model.bucket(sku, source, status)
        quantity = self.edge_quantity(sku, quantity, bucket, whole, leaving=True)
        leaves = destination == OTHER_SITE
        if not leaves:
            destination = source if destination == "same" else other(LOCATIONS, source)
        command = Transfer(
            sku,
            quantity,
            status=int(status),
            from_location_id=source,
            to_location_id="" if leaves else destination,
            to_site_id=OTHER_SITE if leaves else "",
        )
        expected: type[StockdError] | None = None
        if destination == source:
            expected = InvalidArgument
        elif model.bucket(sku, source, status) < quantity:
            expected = InsufficientOnHand
        elif leaves and status is StockStatus.SELLABLE:
            if model.shortage(sku, model.sellable(sku) - quantity):
                expected = WouldBreakReservations
            elif model.hub_mode and quantity > model.share.get(sku, 0) - model.reserved(sku):
                # Units of the hub's share may not leave the site either.
                expected = InsufficientStock
        decision = self.run(command, expected)
        if decision is not None:
            assert len(decision.events) == (1 if leaves else 2)
            model.move(sku, source, status, -quantity)
            if not leaves:
                model.move(sku, destination, status, quantity)
            elif status is StockStatus.SELLABLE and model.hub_mode:
                model.share[sku] -= quantity

    # ----- reservations ------------------------------------------------------------

    @rule(
        data=st.data(),
        lines=st.lists(
            st.tuples(skus, st.integers(1, 8), st.booleans()),
            min_size=1,
            max_size=3,
            unique_by=lambda line: line[0],
        ),
        kind=st.sampled_from(
            (ReservationKind.UNSPECIFIED, ReservationKind.SOFT, ReservationKind.HARD)
        ),
        allow_partial=st.booleans(),
        ttl_seconds=st.sampled_from((0, 1, 30, 30, 120)),  # shared expiries test the limit
        reuse=st.integers(0, 9),
    )
    def reserve(
        self,
        data: st.DataObject,
        lines: list[tuple[str, int, bool]],
        kind: ReservationKind,
        allow_partial: bool,
        ttl_seconds: int,
        reuse: int,
    ) -> None:
        taken = sorted(self.model.open) + sorted(self.model.closed)
        rid = data.draw(st.sampled_from(taken)) if taken and reuse == 0 else self.new_id()
        command = Reserve(
            rid,
            tuple(reserve_line(sku, quantity, flag) for sku, quantity, flag in lines),
            kind=int(kind),
            ttl_seconds=ttl_seconds,
            allow_partial=allow_partial,
        )
        self.check_reserve(command, reused=rid in taken)

    def check_reserve(self, command: Reserve, reused: bool) -> None:
        model = self.model
        if reused:
            self.run(command, InvalidArgument, "ERROR_REASON_INVALID_FIELD")
            return
        bases = [line.quantity * (CASE_SIZE if line.unit else 1) for line in command.lines]
        for line, base in zip(command.lines, bases, strict=True):
            item = self.items[line.sku]
            if item.order_multiple > 1 and base % item.order_multiple:
                self.run(command, InvalidArgument, "ERROR_REASON_NOT_ORDER_MULTIPLE")
                return
            if base < item.order_minimum:
                self.run(command, InvalidArgument, "ERROR_REASON_BELOW_ORDER_MINIMUM")
                return
        granted: dict[str, int] = {}
        shortfalls: list[tuple[str, int, int]] = []
        for line, base in zip(command.lines, bases, strict=True):
            item = self.items[line.sku]
            available = model.available(line.sku)
            if base <= available:
                granted[line.sku] = base
                continue
            if not command.allow_partial:
                self.run(command, InsufficientStock, "ERROR_REASON_INSUFFICIENT_STOCK")
                return
            share = available
            if item.order_multiple > 1:
                share -= share % item.order_multiple
            if share >= item.order_minimum and share:
                granted[line.sku] = share
            shortfalls.append((line.sku, base, available))
        decision = self.run(command, None)
        assert decision is not None
        assert decision.shortfalls == tuple(shortfalls)
        assert decision.reservation_id == (command.reservation_id if granted else "")
        assert [(event.sku, event.quantity) for event in decision.events] == list(granted.items())
        if granted:
            soft = command.kind != ReservationKind.HARD
            ttl_seconds = command.ttl_seconds or limits.TTL_SECONDS_DEFAULT
            model.created += 1
            model.open[command.reservation_id] = ModelReservation(
                kind=ReservationKind.SOFT if soft else ReservationKind.HARD,
                created=model.created,
                expires_at_ms=self.now_ms + ttl_seconds * 1000 if soft else 0,
                held=granted,
            )

    @rule(data=st.data(), picking=st.booleans())
    def resolve_ended_or_unknown(self, data: st.DataObject, picking: bool) -> None:
        """Release or pick of a reservation that ended (in this batch or before) or never was."""
        model = self.model
        rid = data.draw(
            st.sampled_from([*sorted(model.closed), *sorted(model.drained)[-2:], "ghost"]),
            label="reservation_id",
        )
        expected = ReservationClosed if rid in model.closed else UnknownReservation
        command: Command = Pick(rid, (PickLine(PLAIN, 1),)) if picking else Release(rid)
        self.run(command, expected)

    @precondition(has_open_reservations)
    @rule(data=st.data(), whole=st.booleans())
    def release(self, data: st.DataObject, whole: bool) -> None:
        model = self.model
        rid = data.draw(st.sampled_from(sorted(model.open)), label="reservation_id")
        if whole:
            self.run(Release(rid, reason="done"), None)
            for sku, held in list(model.open[rid].held.items()):
                if held:
                    model.resolve(rid, sku, held, ReservationState.RELEASED)
            return
        held_now = model.open[rid].held
        lines = data.draw(
            st.lists(
                st.sampled_from(sorted(held_now)).flatmap(
                    lambda sku: st.tuples(st.just(sku), st.integers(1, held_now[sku] + 1))
                ),
                min_size=1,
                max_size=2,
            ),
            label="lines",
        )
        wanted: dict[str, int] = {}
        for sku, quantity in lines:
            wanted[sku] = wanted.get(sku, 0) + quantity
        exceeds = any(quantity > held_now[sku] for sku, quantity in wanted.items())
        command = Release(rid, tuple(QuantityLine(sku, quantity) for sku, quantity in lines))
        if self.run(command, ExceedsHeld if exceeds else None) is not None:
            for sku, quantity in wanted.items():
                model.resolve(rid, sku, quantity, ReservationState.RELEASED)

    @precondition(has_open_reservations)
    @rule(data=st.data(), release_remainder=st.booleans())
    def pick(self, data: st.DataObject, release_remainder: bool) -> None:
        model = self.model
        rid = data.draw(st.sampled_from(sorted(model.open)), label="reservation_id")
        held_now = dict(model.open[rid].held)
        lines = data.draw(
            st.lists(
                st.sampled_from(sorted(held_now)).flatmap(
                    lambda sku: st.tuples(
                        st.just(sku),
                        locations,
                        st.just(max(1, held_now[sku]))
                        | st.integers(1, max(1, held_now[sku] // 2))
                        | st.integers(1, held_now[sku] + 1),
                    )
                ),
                min_size=1,
                max_size=2,
            ),
            label="lines",
        )
        per_sku: dict[str, int] = {}
        per_bucket: dict[tuple[str, LocationId], int] = {}
        for sku, location, quantity in lines:
            per_sku[sku] = per_sku.get(sku, 0) + quantity
            per_bucket[(sku, location)] = per_bucket.get((sku, location), 0) + quantity
        expected: type[StockdError] | None = None
        if any(quantity > held_now[sku] for sku, quantity in per_sku.items()):
            expected = ExceedsHeld
        elif any(
            quantity > model.bucket(sku, location, StockStatus.SELLABLE)
            for (sku, location), quantity in per_bucket.items()
        ):
            expected = InsufficientOnHand
        command = Pick(
            rid,
            tuple(
                PickLine(sku, quantity, location_id=location) for sku, location, quantity in lines
            ),
            release_remainder=release_remainder,
        )
        if self.run(command, expected) is None:
            return
        model.open[rid].picked_any = True
        for (sku, location), quantity in per_bucket.items():
            model.move(sku, location, StockStatus.SELLABLE, -quantity)
            model.resolve(rid, sku, quantity, ReservationState.PICKED)
            if model.hub_mode:
                model.share[sku] -= quantity
        if release_remainder and rid in model.open:
            for sku, held in list(model.open[rid].held.items()):
                if held:
                    model.resolve(rid, sku, held, ReservationState.RELEASED)

    @rule(
        horizon=st.sampled_from(("next expiry", "next expiry", "step", "an hour")),
        step_ms=st.integers(0, 120_000),
        limit=st.integers(1, 2),
    )
    def expire(self, horizon: str, step_ms: int, limit: int) -> None:
        """The sweeper runs after the clock moved to the next expiry, a bit, or far ahead."""
        model = self.model
        expiries = [r.expires_at_ms for r in model.open.values() if r.expires_at_ms]
        if horizon == "next expiry" and expiries:
            self.now_ms = max(self.now_ms, min(expiries))
        elif horizon == "an hour":
            self.now_ms += 3_600_000
        else:
            self.now_ms += step_ms
        due = sorted(
            (r.expires_at_ms, rid)
            for rid, r in model.open.items()
            if r.kind is ReservationKind.SOFT and r.expires_at_ms <= self.now_ms
        )[:limit]
        decision = self.run(ExpireDue(limit=limit), None)
        assert decision is not None
        assert sorted({event.reservation_id for event in decision.events}) == sorted(
            rid for _, rid in due
        )
        for _, rid in due:
            for sku, held in list(model.open[rid].held.items()):
                if held:
                    model.resolve(rid, sku, held, ReservationState.EXPIRED)

    # ----- master data and housekeeping ------------------------------------------------

    @rule(sku=skus, safety_stock=st.integers(0, 12))
    def set_safety_stock(self, sku: str, safety_stock: int) -> None:
        self.items[sku] = replace(self.items[sku], safety_stock=safety_stock)
        self.ledger.upsert_item(self.items[sku])
        self.model.safety[sku] = safety_stock

    @rule(back_ms=st.integers(1, 5_000))
    def wall_clock_steps_back(self, back_ms: int) -> None:
        self.now_ms -= back_ms

    @rule()
    def drain(self) -> None:
        """What the storage adapter does after each committed batch."""
        self.ledger.drain_dirty()
        self.model.drained |= set(self.model.closed)
        self.model.closed.clear()

    # ----- invariants ---------------------------------------------------------------

    @invariant()
    def balances_are_consistent(self) -> None:
        ledger = self.ledger
        for sku in ITEMS:
            balance = ledger.balance(sku)
            assert ledger.available(sku) >= 0
            assert balance.reserved <= ledger.local_share(sku)
            assert balance.reserved <= balance.sellable
            assert all(quantity > 0 for quantity in balance.on_hand.values())
            assert balance.sellable == sum(
                q for (_, status), q in balance.on_hand.items() if status is StockStatus.SELLABLE
            )
            assert balance.total == sum(balance.on_hand.values())

    @invariant()
    def ledger_matches_the_model(self) -> None:
        ledger, model = self.ledger, self.model
        buckets = {
            (sku, location, status): quantity
            for sku, balance in ledger.balances.items()
            for (location, status), quantity in balance.on_hand.items()
        }
        assert buckets == {key: q for key, q in model.on_hand.items() if q}
        for sku in ITEMS:
            balance = ledger.balance(sku)
            assert balance.reserved_soft == model.reserved(sku, ReservationKind.SOFT)
            assert balance.reserved_hard == model.reserved(sku, ReservationKind.HARD)
            assert ledger.available(sku) == model.available(sku)
            assert ledger.local_share(sku) == model.local_share(sku)
            assert ledger.local_free(sku) == model.local_share(sku) - model.reserved(sku)
            if self.hub_mode:
                assert balance.local_share == model.share.get(sku, 0)
                assert balance.local_share <= balance.sellable
            else:
                assert balance.local_share == 0
        assert open_holdings(ledger) == {
            rid: dict(reservation.held) for rid, reservation in model.open.items()
        }
        for rid, reservation in model.open.items():
            assert ledger.reservations[rid].kind is reservation.kind
            assert ledger.reservations[rid].expires_at_ms == reservation.expires_at_ms
        for rid, ending in model.closed.items():
            found = ledger.reservation_state(rid)
            assert found is not None
            assert found.state is ending, (rid, found.state, ending)

    @invariant()
    def log_is_gapless_and_rebuilds_the_projection(self) -> None:
        events = self.events
        assert [event.sequence for event in events] == list(range(1, len(events) + 1))
        assert self.ledger.last_sequence == len(events)
        start = max(0, self.checked_events - 1)
        assert all(a.hlc < b.hlc for a, b in itertools.pairwise(events[start:]))
        self.checked_events = len(events)
        rebuilt = replay(SITE, self.items.values(), events)
        assert rebuilt.balances == self.ledger.balances
        assert open_holdings(rebuilt) == open_holdings(self.ledger)


def other(choices: tuple[T, ...], this: T) -> T:
    (found,) = (choice for choice in choices if choice != this)
    return found


def reserve_line(sku: str, quantity: int, flag: bool) -> ReserveLine:
    """`flag` asks in cases for CASED and for a whole order multiple for MULTIPLE."""
    if sku == CASED and flag:
        return ReserveLine(sku, quantity, unit="case")
    if sku == MULTIPLE and flag:
        return ReserveLine(sku, quantity * ITEMS[MULTIPLE].order_multiple)
    return ReserveLine(sku, quantity)


def open_holdings(ledger: EdgeLedger) -> dict[str, dict[str, int]]:
    return {
        rid: {sku: line.held for sku, line in reservation.lines.items()}
        for rid, reservation in ledger.reservations.items()
    }


class HubModeLedgerMachine(EdgeLedgerMachine):
    """The same commands while a hub manages the site's local share, plus grants and returns."""

    hub_mode = True

    def touched_skus(self) -> set[str]:
        return {event.sku for event in self.events if event.sku}

    @rule(sku=skus, quantity=quantities)
    def grant(self, sku: str, quantity: int) -> None:
        """The hub grants part of its share; it only ever owns sellable stock above safety."""
        model = self.model
        hub_part = model.sellable(sku) - model.safety.get(sku, 0) - model.share.get(sku, 0)
        if hub_part <= 0:
            return
        quantity = min(quantity, hub_part)
        self.run(GrantQuota(sku, quantity, command_sequence=len(self.events)), None)
        model.grow(sku, quantity)

    @rule(sku=skus, requested=st.integers(0, 15))
    def return_quota(self, sku: str, requested: int) -> None:
        """Only free local share backed by sellable stock above safety stock goes back."""
        model = self.model
        backed = max(
            0, min(model.share.get(sku, 0), model.sellable(sku) - model.safety.get(sku, 0))
        )
        returned = min(requested, max(0, backed - model.reserved(sku)))
        decision = self.run(ReturnQuota(sku, requested, reason="rebalance"), None)
        assert decision is not None
        assert [event.quantity for event in decision.events] == ([returned] if returned else [])
        model.share[sku] = model.share.get(sku, 0) - returned

    @rule(now=st.integers(0, 3))
    def adopt_shares(self, now: int) -> None:
        """Each local share becomes what the site could promise on its own (now and then)."""
        if now:
            return
        model = self.model
        self.run(AdoptShares(), None)
        for sku in self.touched_skus():
            model.share[sku] = max(
                model.reserved(sku), model.sellable(sku) - model.safety.get(sku, 0), 0
            )


MACHINE_SETTINGS = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEdgeLedgerMachine = EdgeLedgerMachine.TestCase
TestEdgeLedgerMachine.settings = MACHINE_SETTINGS
TestHubModeLedgerMachine = HubModeLedgerMachine.TestCase
TestHubModeLedgerMachine.settings = MACHINE_SETTINGS
