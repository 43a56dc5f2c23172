"""The edge ledger: decide (command -> events) and evolve (event -> state).

`decide` validates a command against the current state and returns the ledger
entries it would write, without touching the state; `evolve` applies one entry.
Balances are therefore always a fold of the log, which is what the property
tests check and what makes a crash-recovered projection trustworthy.

Escrow: the site may hold in reservations at most its local share. Without a
hub the local share is sellable on-hand minus safety stock; safety stock never
claws back units already reserved (they stop being promisable only as they
free up), so `reserved <= local_share` holds at every step.

With a hub (`hub_mode`), the local share is an explicit number moved only by
ledger entries (`local_share_delta`): receipts land in it, grants from the hub
raise it, returns lower it, and shrink is taken first from its free part
(DESIGN, rules 1, 2 and 6). What shrink does not take from the local share is
the deficit the hub charges to its own share.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

from edge_agent.domain import commands as c
from server.domain import limits
from server.domain.errors import (
    ExceedsHeld,
    FieldViolation,
    InsufficientOnHand,
    InsufficientStock,
    InvalidArgument,
    ReservationClosed,
    UnknownLocation,
    UnknownReservation,
    UnknownSku,
    Violations,
    WouldBreakReservations,
)
from server.domain.hlc import HybridClock
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
)

SHORTAGE_REASON = "stock_shortage"
EXPIRY_REASON = "ttl_expired"

BucketKey = tuple[str, StockStatus]


@dataclass(slots=True)
class Balance:
    """Projection of one SKU's stock at the site."""

    sku: str
    on_hand: dict[BucketKey, int] = field(default_factory=dict)
    sellable: int = 0
    total: int = 0
    reserved_soft: int = 0
    reserved_hard: int = 0
    local_share: int = 0
    # Held for hub promises (part of reserved_hard): drawn on the hub's share.
    reserved_hub: int = 0

    @property
    def reserved_local(self) -> int:
        return self.reserved_soft + self.reserved_hard - self.reserved_hub

    @property
    def reserved(self) -> int:
        return self.reserved_soft + self.reserved_hard

    def bucket(self, location_id: str, status: StockStatus) -> int:
        return self.on_hand.get((location_id, status), 0)

    def add(self, location_id: str, status: StockStatus, delta: int) -> None:
        key = (location_id, status)
        value = self.on_hand.get(key, 0) + delta
        assert value >= 0, f"bucket {self.sku}/{location_id}/{status.name} below zero"
        if value:
            self.on_hand[key] = value
        else:
            self.on_hand.pop(key, None)
        self.total += delta
        if status is StockStatus.SELLABLE:
            self.sellable += delta


@dataclass(slots=True)
class HeldLine:
    sku: str
    reserved: int
    held: int
    picked: int = 0
    released: int = 0


@dataclass(slots=True)
class Reservation:
    reservation_id: str
    request_id: str
    kind: ReservationKind
    channel: str
    customer_tier: str
    reference: str
    created_at_ms: int
    expires_at_ms: int
    actor: str
    created_sequence: int
    lines: dict[str, HeldLine] = field(default_factory=dict)
    state: ReservationState = ReservationState.OPEN
    updated_sequence: int = 0
    hub_promise_id: str = ""

    @property
    def held(self) -> int:
        return sum(line.held for line in self.lines.values())


@dataclass(frozen=True, slots=True)
class Decision:
    """What a command would write, plus facts the reply reports."""

    events: tuple[LedgerEvent, ...]
    reservation_id: str = ""
    shortfalls: tuple[tuple[str, int, int], ...] = ()
    variance: int = 0
    skus: tuple[str, ...] = ()


@dataclass(slots=True)
class EdgeLedger:
    """In-memory state of one site's ledger; mutated only by `evolve`."""

    site_id: str
    hub_mode: bool = False
    items: dict[str, Item] = field(default_factory=dict)
    locations: dict[str, Location] = field(default_factory=dict)
    balances: dict[str, Balance] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    open_by_sku: dict[str, set[str]] = field(default_factory=dict)
    expiry_heap: list[tuple[int, str]] = field(default_factory=list)
    clock: HybridClock = field(default_factory=HybridClock)
    last_sequence: int = 0
    # Touched since the last drain; the storage adapter persists exactly these.
    dirty_buckets: set[tuple[str, str, StockStatus]] = field(default_factory=set)
    dirty_reservations: dict[str, Reservation] = field(default_factory=dict)
    dirty_skus: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.locations.setdefault(DEFAULT_LOCATION, Location(DEFAULT_LOCATION, "default location"))

    # ----- queries -------------------------------------------------------

    def balance(self, sku: str) -> Balance:
        found = self.balances.get(sku)
        return found if found is not None else Balance(sku)

    def local_share(self, sku: str) -> int:
        balance = self.balance(sku)
        if self.hub_mode:
            return balance.local_share
        return balance.reserved + self.available(sku)

    def available(self, sku: str) -> int:
        balance = self.balance(sku)
        item = self.items.get(sku)
        safety = item.safety_stock if item is not None else 0
        if self.hub_mode:
            room = min(balance.local_share, balance.sellable - safety - balance.reserved_hub)
            return max(0, room - balance.reserved_local)
        return max(0, balance.sellable - safety - balance.reserved)

    def reservable(self, sku: str, ctx: c.Context) -> int:
        """What a new local reservation may take now.

        Strict (the default): `available`. Optimistic segment while offline:
        up to `bound` units beyond the local share, never beyond physical
        sellable stock minus safety stock and the hub's holds.
        """
        bound = ctx.overbook(sku) if ctx.overbook is not None and self.hub_mode else 0
        if bound <= 0:
            return self.available(sku)
        balance = self.balance(sku)
        item = self.items.get(sku)
        safety = item.safety_stock if item is not None else 0
        room = min(
            balance.local_share + bound,
            balance.sellable - safety - balance.reserved_hub,
        )
        return max(0, room - balance.reserved_local)

    def local_free(self, sku: str) -> int:
        """Local share not held by local reservations (what may go back to the hub)."""
        balance = self.balance(sku)
        return max(0, self.local_share(sku) - balance.reserved_local)

    def reservation_state(self, reservation_id: str) -> Reservation | None:
        return self.reservations.get(reservation_id) or self.dirty_reservations.get(
            reservation_id
        )

    def drain_dirty(
        self,
    ) -> tuple[set[tuple[str, str, StockStatus]], dict[str, Reservation], set[str]]:
        buckets, reservations, skus = (
            self.dirty_buckets,
            self.dirty_reservations,
            self.dirty_skus,
        )
        self.dirty_buckets, self.dirty_reservations, self.dirty_skus = set(), {}, set()
        return buckets, reservations, skus

    # ----- master data (not ledger entries) --------------------------------

    def upsert_item(self, item: Item) -> Item:
        self.items[item.sku] = item
        self.dirty_skus.add(item.sku)
        return item

    def upsert_location(self, location: Location) -> Location:
        self.locations[location.location_id] = location
        return location

    # ----- evolve ----------------------------------------------------------

    def evolve(self, event: LedgerEvent) -> None:
        """Applies one entry. Entries come from `decide`, so they are valid."""
        assert event.sequence == self.last_sequence + 1, "ledger sequence gap"
        self.last_sequence = event.sequence
        if event.hlc > self.clock.last:
            self.clock.last = event.hlc
        if event.local_share_delta:
            balance = self.balances.get(event.sku)
            if balance is None:
                balance = self.balances[event.sku] = Balance(event.sku)
            balance.local_share += event.local_share_delta
            assert balance.local_share >= 0, "local share below zero"
            self.dirty_skus.add(event.sku)
        kind = event.type
        sku = event.sku
        if kind in (EventType.RECEIVED, EventType.ADJUSTED, EventType.COUNTED):
            self._move(sku, event.location_id, event.status, event.quantity)
        elif kind is EventType.STATUS_CHANGED:
            self._move(sku, event.location_id, event.status, -event.quantity)
            self._move(sku, event.location_id, event.to_status, event.quantity)
        elif kind is EventType.TRANSFERRED_OUT:
            self._move(sku, event.location_id, event.status, -event.quantity)
        elif kind is EventType.TRANSFERRED_IN:
            self._move(sku, event.location_id, event.status, event.quantity)
        elif kind is EventType.RESERVED:
            self._evolve_reserved(event)
        elif kind in (EventType.RELEASED, EventType.EXPIRED, EventType.PICKED):
            self._evolve_resolved(event)
        # Quota entries move only the local share (applied above).

    def _move(self, sku: str, location_id: str, status: StockStatus, delta: int) -> None:
        balance = self.balances.get(sku)
        if balance is None:
            balance = self.balances[sku] = Balance(sku)
        balance.add(location_id, status, delta)
        self.dirty_buckets.add((sku, location_id, status))
        self.dirty_skus.add(sku)

    def _evolve_reserved(self, event: LedgerEvent) -> None:
        reservation = self.reservations.get(event.reservation_id)
        if reservation is None:
            reservation = Reservation(
                reservation_id=event.reservation_id,
                request_id=event.request_id,
                kind=event.reservation_kind,
                channel=event.channel,
                customer_tier=event.customer_tier,
                reference=event.reference,
                created_at_ms=event.recorded_at_ms,
                expires_at_ms=event.expires_at_ms,
                actor=event.actor,
                created_sequence=event.sequence,
                hub_promise_id=event.hub_promise_id,
            )
            self.reservations[event.reservation_id] = reservation
            if reservation.kind is ReservationKind.SOFT:
                heapq.heappush(self.expiry_heap, (event.expires_at_ms, event.reservation_id))
        reservation.lines[event.sku] = HeldLine(event.sku, event.quantity, event.quantity)
        reservation.updated_sequence = event.sequence
        self.open_by_sku.setdefault(event.sku, set()).add(event.reservation_id)
        balance = self.balances.get(event.sku)
        if balance is None:
            balance = self.balances[event.sku] = Balance(event.sku)
        if reservation.kind is ReservationKind.HARD:
            balance.reserved_hard += event.quantity
        else:
            balance.reserved_soft += event.quantity
        if reservation.hub_promise_id:
            balance.reserved_hub += event.quantity
        assert balance.reserved <= balance.sellable, "reserved above sellable on-hand"
        self.dirty_reservations[reservation.reservation_id] = reservation
        self.dirty_skus.add(event.sku)

    def _evolve_resolved(self, event: LedgerEvent) -> None:
        reservation = self.reservations[event.reservation_id]
        line = reservation.lines[event.sku]
        assert 0 < event.quantity <= line.held, "resolving more than is held"
        line.held -= event.quantity
        balance = self.balances[event.sku]
        if reservation.kind is ReservationKind.HARD:
            balance.reserved_hard -= event.quantity
        else:
            balance.reserved_soft -= event.quantity
        if reservation.hub_promise_id:
            balance.reserved_hub -= event.quantity
        if event.type is EventType.PICKED:
            line.picked += event.quantity
            self._move(event.sku, event.location_id, StockStatus.SELLABLE, -event.quantity)
        else:
            line.released += event.quantity
        if line.held == 0:
            self.open_by_sku.get(event.sku, set()).discard(reservation.reservation_id)
        reservation.updated_sequence = event.sequence
        if reservation.held == 0:
            if any(held.picked for held in reservation.lines.values()):
                reservation.state = ReservationState.PICKED
            elif event.type is EventType.EXPIRED:
                reservation.state = ReservationState.EXPIRED
            else:
                reservation.state = ReservationState.RELEASED
            del self.reservations[reservation.reservation_id]
        self.dirty_reservations[reservation.reservation_id] = reservation
        self.dirty_skus.add(event.sku)

    # ----- decide ----------------------------------------------------------

    def decide(self, command: c.Command, ctx: c.Context) -> Decision:
        """Validates `command` and returns the entries it writes (state untouched)."""
        drafts: list[LedgerEvent]
        if isinstance(command, c.Reserve):
            drafts, shortfalls = self._decide_reserve(command, ctx)
            return self._stamp(
                drafts,
                ctx,
                reservation_id=command.reservation_id if drafts else "",
                shortfalls=shortfalls,
            )
        if isinstance(command, c.Receive):
            return self._stamp(self._decide_receive(command, ctx), ctx)
        if isinstance(command, c.Adjust):
            return self._stamp(self._decide_adjust(command, ctx), ctx)
        if isinstance(command, c.RecordCount):
            drafts, variance = self._decide_count(command, ctx)
            return self._stamp(drafts, ctx, variance=variance)
        if isinstance(command, c.ChangeStatus):
            return self._stamp(self._decide_change_status(command, ctx), ctx)
        if isinstance(command, c.Release):
            return self._stamp(
                self._decide_release(command, ctx), ctx, reservation_id=command.reservation_id
            )
        if isinstance(command, c.Pick):
            return self._stamp(
                self._decide_pick(command, ctx), ctx, reservation_id=command.reservation_id
            )
        if isinstance(command, c.Transfer):
            return self._stamp(self._decide_transfer(command, ctx), ctx)
        if isinstance(command, c.ExpireDue):
            return self._stamp(self._decide_expire(command, ctx), ctx)
        if isinstance(command, c.GrantQuota):
            return self._stamp(self._decide_grant(command, ctx), ctx)
        if isinstance(command, c.ReturnQuota):
            return self._stamp(self._decide_return(command, ctx), ctx)
        if isinstance(command, c.AdoptShares):
            return self._stamp(self._decide_adopt(ctx), ctx)
        if isinstance(command, c.HoldForPromise):
            reservation_id = (
                f"hub-{command.promise_id}-{command.sku}-{command.command_sequence}"
            )
            drafts = self._decide_hold(command, reservation_id)
            return self._stamp(drafts, ctx, reservation_id=reservation_id if drafts else "")
        if isinstance(command, c.ReleaseForPromise):
            return self._stamp(self._decide_release_promise(command), ctx)
        raise TypeError(f"not a ledger command: {type(command).__name__}")

    def _stamp(
        self,
        drafts: list[LedgerEvent],
        ctx: c.Context,
        *,
        reservation_id: str = "",
        shortfalls: tuple[tuple[str, int, int], ...] = (),
        variance: int = 0,
    ) -> Decision:
        """Numbers and timestamps the drafts.

        Drafts are fresh objects private to this decision, so they are filled
        in place (bypassing `frozen`) rather than copied: this runs once per
        ledger entry on the hot path.
        """
        clock = HybridClock(self.clock.last)
        sequence = self.last_sequence
        for draft in drafts:
            sequence += 1
            _fill(draft, "sequence", sequence)
            _fill(draft, "hlc", clock.tick(ctx.now_ms))
            _fill(draft, "recorded_at_ms", ctx.now_ms)
            if not draft.actor:
                _fill(draft, "actor", ctx.actor)
            if not draft.request_id:
                _fill(draft, "request_id", ctx.request_id)
        skus = tuple(dict.fromkeys(draft.sku for draft in drafts if draft.sku))
        return Decision(
            events=tuple(drafts),
            reservation_id=reservation_id,
            shortfalls=shortfalls,
            variance=variance,
            skus=skus,
        )

    # -- shared validation

    def _item(self, sku: str, path: str) -> Item:
        item = self.items.get(sku)
        if item is None:
            raise UnknownSku(
                f"unknown SKU {sku!r} ({path})", metadata={"sku": sku, "field": path}
            )
        return item

    def _location(self, location_id: str, path: str) -> LocationId:
        chosen = LocationId(location_id or DEFAULT_LOCATION)
        if chosen not in self.locations:
            raise UnknownLocation(
                f"unknown location {chosen!r} ({path})",
                metadata={"location_id": chosen, "field": path},
            )
        return chosen

    def _base_quantity(
        self,
        violations: Violations,
        path: str,
        item: Item,
        quantity: int,
        unit: str,
        unit_path: str,
        *,
        allow_zero: bool = False,
        order_rules: bool = False,
    ) -> int:
        """Converts to base units, recording a violation instead of raising."""
        factor = item.base_units_per(unit)
        if factor is None:
            violations.add(
                unit_path,
                f"unit {unit!r} is not defined for SKU {item.sku!r}",
                "ERROR_REASON_UNKNOWN_UNIT",
            )
            return 0
        base = quantity * factor
        if base > limits.QUANTITY_MAX:
            violations.add(
                path,
                f"{base} base units is above the limit of {limits.QUANTITY_MAX}",
                "ERROR_REASON_INVALID_QUANTITY",
            )
            return 0
        if order_rules and item.order_multiple > 1 and base % item.order_multiple:
            violations.add(
                path,
                f"{base} {item.base_unit} is not a whole multiple of the order multiple "
                f"{item.order_multiple}",
                "ERROR_REASON_NOT_ORDER_MULTIPLE",
            )
        if order_rules and base < item.order_minimum:
            violations.add(
                path,
                f"{base} {item.base_unit} is below the order minimum {item.order_minimum}",
                "ERROR_REASON_BELOW_ORDER_MINIMUM",
            )
        return base

    def _shrink_delta(self, sku: str, shrink: int, new_sellable: int) -> int:
        """How much a loss of `shrink` sellable units lowers the local share (hub mode).

        Free local share goes first; the local share also never stays above
        what is physically there. The rest is the hub's deficit.
        """
        if not self.hub_mode or shrink <= 0:
            return 0
        balance = self.balance(sku)
        free = max(0, balance.local_share - balance.reserved_local)
        physical_room = max(0, new_sellable - balance.reserved_hub)
        after = min(balance.local_share - min(shrink, free), physical_room)
        return min(0, after - balance.local_share)

    def _on_hand_change_delta(self, sku: str, status: StockStatus, delta: int) -> int:
        """Local-share change for on-hand moving by `delta` (adjustments, counts)."""
        if status is not StockStatus.SELLABLE or delta == 0:
            return 0
        if delta > 0:
            return self._growth_delta(delta)
        return self._shrink_delta(sku, -delta, self.balance(sku).sellable + delta)

    def _growth_delta(self, quantity: int) -> int:
        return quantity if self.hub_mode else 0

    def _shortage_releases(
        self,
        sku: str,
        new_sellable: int,
        ctx: c.Context,
        allowed: bool,
        share_delta: int = 0,
    ) -> list[LedgerEvent]:
        """Releases reservations (soft first, newest first) so reserved fits the stock."""
        balance = self.balance(sku)
        # Units held for hub promises are the hub's to resolve (DESIGN, rule 6):
        # only the site's own reservations give way here.
        limit = max(0, new_sellable - balance.reserved_hub)
        if self.hub_mode:
            limit = min(limit, balance.local_share + share_delta)
        excess = balance.reserved_local - limit
        if excess <= 0:
            return []
        if not allowed:
            raise WouldBreakReservations(
                f"the change leaves room for {limit} reserved units of {sku!r} but "
                f"{balance.reserved} are reserved; pass release_reservations to release some",
                metadata={
                    "sku": sku,
                    "reserved": str(balance.reserved),
                    "sellable_after": str(max(0, new_sellable)),
                },
            )
        candidates = [
            self.reservations[rid]
            for rid in self.open_by_sku.get(sku, ())
            if not self.reservations[rid].hub_promise_id
        ]
        candidates.sort(
            key=lambda r: (r.kind is ReservationKind.HARD, -r.created_sequence)
        )
        releases: list[LedgerEvent] = []
        for reservation in candidates:
            if excess <= 0:
                break
            take = min(excess, reservation.lines[sku].held)
            excess -= take
            releases.append(
                _draft(
                    EventType.RELEASED,
                    sku=sku,
                    quantity=take,
                    reservation_id=reservation.reservation_id,
                    reason=SHORTAGE_REASON,
                    reservation_kind=reservation.kind,
                )
            )
        assert excess <= 0
        return releases

    # -- receive / adjust / count / status / transfer

    def _decide_receive(self, command: c.Receive, ctx: c.Context) -> list[LedgerEvent]:
        violations = Violations()
        if not command.lines:
            violations.add("lines", "at least one line is required")
        if len(command.lines) > limits.LINES_PER_REQUEST_MAX:
            violations.add(
                "lines",
                f"{len(command.lines)} lines is above the limit of {limits.LINES_PER_REQUEST_MAX}",
                "ERROR_REASON_TOO_MANY_LINES",
            )
        _check_text(violations, "reference", command.reference)
        _check_text(violations, "reason", command.reason)
        for index, line in enumerate(command.lines):
            path = f"lines[{index}]"
            _check_sku(violations, f"{path}.sku", line.sku)
            _check_positive(violations, f"{path}.quantity", line.quantity)
            _check_status(violations, f"{path}.status", line.status, allow_unspecified=True)
        violations.raise_if_any()
        items = [self._item(line.sku, f"lines[{i}].sku") for i, line in enumerate(command.lines)]
        locations = [
            self._location(line.location_id, f"lines[{i}].location_id")
            for i, line in enumerate(command.lines)
        ]
        drafts: list[LedgerEvent] = []
        added: dict[str, int] = {}
        for index, (line, item, location) in enumerate(
            zip(command.lines, items, locations, strict=True)
        ):
            base = self._base_quantity(
                violations,
                f"lines[{index}].quantity",
                item,
                line.quantity,
                line.unit,
                f"lines[{index}].unit",
            )
            added[line.sku] = added.get(line.sku, 0) + base
            if self.balance(line.sku).total + added[line.sku] > limits.ON_HAND_MAX:
                violations.add(
                    f"lines[{index}].quantity",
                    f"on-hand would exceed the limit of {limits.ON_HAND_MAX}",
                    "ERROR_REASON_INVALID_QUANTITY",
                )
            drafts.append(
                _draft(
                    EventType.RECEIVED,
                    sku=line.sku,
                    location_id=location,
                    status=StockStatus(line.status or StockStatus.SELLABLE),
                    quantity=base,
                    reference=command.reference,
                    reason=command.reason,
                    local_share_delta=(
                        self._growth_delta(base)
                        if line.status in (0, StockStatus.SELLABLE)
                        else 0
                    ),
                )
            )
        violations.raise_if_any()
        return drafts

    def _decide_adjust(self, command: c.Adjust, ctx: c.Context) -> list[LedgerEvent]:
        violations = Violations()
        _check_sku(violations, "sku", command.sku)
        if command.quantity_delta == 0:
            violations.add(
                "quantity_delta", "must not be zero", "ERROR_REASON_INVALID_QUANTITY"
            )
        elif abs(command.quantity_delta) > limits.QUANTITY_MAX:
            violations.add(
                "quantity_delta",
                f"magnitude above the limit of {limits.QUANTITY_MAX}",
                "ERROR_REASON_INVALID_QUANTITY",
            )
        if command.reason_code == 0:
            violations.add("reason_code", "a reason code is required")
        elif command.reason_code not in AdjustmentReason._value2member_map_:
            violations.add("reason_code", f"unknown reason code {command.reason_code}")
        _check_status(violations, "status", command.status, allow_unspecified=True)
        _check_text(violations, "reason", command.reason)
        violations.raise_if_any()
        item = self._item(command.sku, "sku")
        location = self._location(command.location_id, "location_id")
        magnitude = self._base_quantity(
            violations, "quantity_delta", item, abs(command.quantity_delta), command.unit, "unit"
        )
        violations.raise_if_any()
        delta = magnitude if command.quantity_delta > 0 else -magnitude
        status = StockStatus(command.status or StockStatus.SELLABLE)
        balance = self.balance(command.sku)
        bucket = balance.bucket(location, status)
        if bucket + delta < 0:
            raise InsufficientOnHand(
                f"{location}/{status.name.lower()} holds {bucket} of {command.sku!r}; "
                f"cannot remove {-delta}",
                metadata={"sku": command.sku, "on_hand": str(bucket), "requested": str(-delta)},
            )
        if balance.total + delta > limits.ON_HAND_MAX:
            raise _too_much("quantity_delta")
        share_delta = self._on_hand_change_delta(command.sku, status, delta)
        drafts = [
            _draft(
                EventType.ADJUSTED,
                sku=command.sku,
                location_id=location,
                status=status,
                quantity=delta,
                reason_code=AdjustmentReason(command.reason_code),
                reason=command.reason,
                local_share_delta=share_delta,
            )
        ]
        if status is StockStatus.SELLABLE and delta < 0:
            drafts += self._shortage_releases(
                command.sku,
                balance.sellable + delta,
                ctx,
                command.release_reservations,
                share_delta,
            )
        return drafts

    def _decide_count(
        self, command: c.RecordCount, ctx: c.Context
    ) -> tuple[list[LedgerEvent], int]:
        violations = Violations()
        _check_sku(violations, "sku", command.sku)
        if command.counted_quantity < 0 or command.counted_quantity > limits.QUANTITY_MAX:
            violations.add(
                "counted_quantity",
                f"must be between 0 and {limits.QUANTITY_MAX}",
                "ERROR_REASON_INVALID_QUANTITY",
            )
        _check_status(violations, "status", command.status, allow_unspecified=True)
        _check_text(violations, "reason", command.reason)
        violations.raise_if_any()
        item = self._item(command.sku, "sku")
        location = self._location(command.location_id, "location_id")
        counted = self._base_quantity(
            violations,
            "counted_quantity",
            item,
            command.counted_quantity,
            command.unit,
            "unit",
            allow_zero=True,
        )
        violations.raise_if_any()
        status = StockStatus(command.status or StockStatus.SELLABLE)
        balance = self.balance(command.sku)
        variance = counted - balance.bucket(location, status)
        if balance.total + variance > limits.ON_HAND_MAX:
            raise _too_much("counted_quantity")
        share_delta = self._on_hand_change_delta(command.sku, status, variance)
        drafts = [
            _draft(
                EventType.COUNTED,
                sku=command.sku,
                location_id=location,
                status=status,
                quantity=variance,
                variance=variance,
                reason=command.reason,
                local_share_delta=share_delta,
            )
        ]
        if status is StockStatus.SELLABLE and variance < 0:
            # A count is physical truth: it is never refused, reservations give way.
            drafts += self._shortage_releases(
                command.sku, balance.sellable + variance, ctx, True, share_delta
            )
        return drafts, variance

    def _decide_change_status(
        self, command: c.ChangeStatus, ctx: c.Context
    ) -> list[LedgerEvent]:
        violations = Violations()
        _check_sku(violations, "sku", command.sku)
        _check_positive(violations, "quantity", command.quantity)
        _check_status(violations, "from_status", command.from_status, allow_unspecified=False)
        _check_status(violations, "to_status", command.to_status, allow_unspecified=False)
        if command.from_status == command.to_status and command.from_status:
            violations.add("to_status", "must differ from from_status")
        _check_text(violations, "reason", command.reason)
        violations.raise_if_any()
        item = self._item(command.sku, "sku")
        location = self._location(command.location_id, "location_id")
        quantity = self._base_quantity(
            violations, "quantity", item, command.quantity, command.unit, "unit"
        )
        violations.raise_if_any()
        source = StockStatus(command.from_status)
        target = StockStatus(command.to_status)
        balance = self.balance(command.sku)
        bucket = balance.bucket(location, source)
        if bucket < quantity:
            raise InsufficientOnHand(
                f"{location}/{source.name.lower()} holds {bucket} of {command.sku!r}; "
                f"cannot move {quantity}",
                metadata={"sku": command.sku, "on_hand": str(bucket), "requested": str(quantity)},
            )
        share_delta = 0
        if source is StockStatus.SELLABLE:
            share_delta = self._shrink_delta(command.sku, quantity, balance.sellable - quantity)
        elif target is StockStatus.SELLABLE:
            share_delta = self._growth_delta(quantity)
        drafts = [
            _draft(
                EventType.STATUS_CHANGED,
                sku=command.sku,
                location_id=location,
                status=source,
                to_status=target,
                quantity=quantity,
                reason=command.reason,
                local_share_delta=share_delta,
            )
        ]
        if source is StockStatus.SELLABLE:
            drafts += self._shortage_releases(
                command.sku,
                balance.sellable - quantity,
                ctx,
                command.release_reservations,
                share_delta,
            )
        return drafts

    def _decide_transfer(self, command: c.Transfer, ctx: c.Context) -> list[LedgerEvent]:
        violations = Violations()
        _check_sku(violations, "sku", command.sku)
        _check_positive(violations, "quantity", command.quantity)
        _check_status(violations, "status", command.status, allow_unspecified=True)
        if bool(command.to_location_id) == bool(command.to_site_id):
            violations.add("to_location_id", "set exactly one of to_location_id and to_site_id")
        if command.to_site_id:
            _check_id(violations, "to_site_id", command.to_site_id)
            if command.to_site_id == self.site_id:
                violations.add("to_site_id", "must name another site")
        _check_text(violations, "reference", command.reference)
        _check_text(violations, "reason", command.reason)
        violations.raise_if_any()
        item = self._item(command.sku, "sku")
        source = self._location(command.from_location_id, "from_location_id")
        target = (
            self._location(command.to_location_id, "to_location_id")
            if command.to_location_id
            else None
        )
        if target == source:
            violations.add("to_location_id", "must differ from from_location_id")
        quantity = self._base_quantity(
            violations, "quantity", item, command.quantity, command.unit, "unit"
        )
        violations.raise_if_any()
        status = StockStatus(command.status or StockStatus.SELLABLE)
        balance = self.balance(command.sku)
        bucket = balance.bucket(source, status)
        if bucket < quantity:
            raise InsufficientOnHand(
                f"{source}/{status.name.lower()} holds {bucket} of {command.sku!r}; "
                f"cannot transfer {quantity}",
                metadata={"sku": command.sku, "on_hand": str(bucket), "requested": str(quantity)},
            )
        share_delta = 0
        if target is None and status is StockStatus.SELLABLE:
            # Stock leaving the site may not take units that are promised, nor
            # (with a hub) units of the hub's share.
            self._shortage_releases(command.sku, balance.sellable - quantity, ctx, allowed=False)
            if self.hub_mode:
                free = self.local_free(command.sku)
                if quantity > free:
                    raise InsufficientStock(
                        f"{free} of {command.sku!r} is free local share; cannot transfer "
                        f"{quantity} out of the site",
                        metadata={
                            "sku": command.sku,
                            "requested": str(quantity),
                            "available": str(free),
                        },
                    )
                share_delta = -quantity
        out = _draft(
            EventType.TRANSFERRED_OUT,
            sku=command.sku,
            location_id=source,
            status=status,
            quantity=quantity,
            to_location_id=target or "",
            counterparty_site_id=command.to_site_id,
            reference=command.reference,
            reason=command.reason,
            local_share_delta=share_delta,
        )
        if target is None:
            return [out]
        return [
            out,
            _draft(
                EventType.TRANSFERRED_IN,
                sku=command.sku,
                location_id=target,
                status=status,
                quantity=quantity,
                reference=command.reference,
                reason=command.reason,
            ),
        ]

    # -- reservations

    def _decide_reserve(
        self, command: c.Reserve, ctx: c.Context
    ) -> tuple[list[LedgerEvent], tuple[tuple[str, int, int], ...]]:
        violations = Violations()
        _check_id(violations, "reservation_id", command.reservation_id)
        if not command.lines:
            violations.add("lines", "at least one line is required")
        if len(command.lines) > limits.LINES_PER_REQUEST_MAX:
            violations.add(
                "lines",
                f"{len(command.lines)} lines is above the limit of {limits.LINES_PER_REQUEST_MAX}",
                "ERROR_REASON_TOO_MANY_LINES",
            )
        if command.kind not in ReservationKind._value2member_map_:
            violations.add("kind", f"unknown reservation kind {command.kind}")
        kind = ReservationKind(command.kind or ReservationKind.SOFT) if not violations.items else (
            ReservationKind.SOFT
        )
        if command.ttl_seconds < 0 or command.ttl_seconds > limits.TTL_SECONDS_MAX:
            violations.add("ttl_seconds", f"must be between 0 and {limits.TTL_SECONDS_MAX}")
        for name, value in (
            ("channel", command.channel),
            ("customer_tier", command.customer_tier),
        ):
            if len(value) > limits.ID_LENGTH_MAX:
                violations.add(name, f"longer than {limits.ID_LENGTH_MAX} characters")
        _check_text(violations, "reference", command.reference)
        seen: dict[str, int] = {}
        for index, line in enumerate(command.lines):
            path = f"lines[{index}]"
            _check_sku(violations, f"{path}.sku", line.sku)
            _check_positive(violations, f"{path}.quantity", line.quantity)
            if line.sku in seen:
                violations.add(
                    f"{path}.sku", f"SKU {line.sku!r} already on lines[{seen[line.sku]}]"
                )
            seen.setdefault(line.sku, index)
        violations.raise_if_any()
        if command.reservation_id in self.reservations or (
            command.reservation_id in self.dirty_reservations
        ):
            violations.add("reservation_id", "already exists")
            violations.raise_if_any()
        items = [self._item(line.sku, f"lines[{i}].sku") for i, line in enumerate(command.lines)]
        quantities = [
            self._base_quantity(
                violations,
                f"lines[{index}].quantity",
                item,
                line.quantity,
                line.unit,
                f"lines[{index}].unit",
                order_rules=True,
            )
            for index, (line, item) in enumerate(zip(command.lines, items, strict=True))
        ]
        violations.raise_if_any()
        ttl_ms = (command.ttl_seconds or limits.TTL_SECONDS_DEFAULT) * 1000
        expires_at_ms = ctx.now_ms + ttl_ms if kind is ReservationKind.SOFT else 0
        drafts: list[LedgerEvent] = []
        shortfalls: list[tuple[str, int, int]] = []
        for line, item, quantity in zip(command.lines, items, quantities, strict=True):
            available = self.reservable(line.sku, ctx)
            granted = quantity
            if quantity > available:
                if not command.allow_partial:
                    raise InsufficientStock(
                        f"{available} of {line.sku!r} available, {quantity} requested",
                        metadata={
                            "sku": line.sku,
                            "requested": str(quantity),
                            "available": str(available),
                        },
                    )
                granted = available
                if item.order_multiple > 1:
                    granted -= granted % item.order_multiple
                if granted < item.order_minimum:
                    granted = 0
                shortfalls.append((line.sku, quantity, available))
            if granted:
                drafts.append(
                    _draft(
                        EventType.RESERVED,
                        sku=line.sku,
                        quantity=granted,
                        reservation_id=command.reservation_id,
                        reservation_kind=kind,
                        channel=command.channel,
                        customer_tier=command.customer_tier,
                        reference=command.reference,
                        expires_at_ms=expires_at_ms,
                    )
                )
        return drafts, tuple(shortfalls)

    def _open_reservation(self, reservation_id: str) -> Reservation:
        reservation = self.reservations.get(reservation_id)
        if reservation is not None:
            return reservation
        closed = self.dirty_reservations.get(reservation_id)
        if closed is not None:
            raise _closed(closed)
        raise UnknownReservation(
            f"no open reservation {reservation_id!r}",
            metadata={"reservation_id": reservation_id},
        )

    def _decide_release(self, command: c.Release, ctx: c.Context) -> list[LedgerEvent]:
        violations = Violations()
        _check_id(violations, "reservation_id", command.reservation_id)
        _check_lines_limit(violations, len(command.lines))
        _check_text(violations, "reason", command.reason)
        for index, line in enumerate(command.lines):
            _check_sku(violations, f"lines[{index}].sku", line.sku)
            _check_positive(violations, f"lines[{index}].quantity", line.quantity)
        violations.raise_if_any()
        reservation = self._open_reservation(command.reservation_id)
        if not command.lines:
            return [
                _draft(
                    EventType.RELEASED,
                    sku=line.sku,
                    quantity=line.held,
                    reservation_id=reservation.reservation_id,
                    reservation_kind=reservation.kind,
                    reason=command.reason,
                )
                for line in reservation.lines.values()
                if line.held
            ]
        wanted: dict[str, int] = {}
        for index, line in enumerate(command.lines):
            path = f"lines[{index}]"
            held = reservation.lines.get(line.sku)
            if held is None:
                violations.add(f"{path}.sku", f"reservation has no line for {line.sku!r}")
                continue
            item = self._item(line.sku, f"{path}.sku")
            wanted[line.sku] = wanted.get(line.sku, 0) + self._base_quantity(
                violations, f"{path}.quantity", item, line.quantity, line.unit, f"{path}.unit"
            )
        violations.raise_if_any()
        for sku, quantity in wanted.items():
            held_now = reservation.lines[sku].held
            if quantity > held_now:
                raise ExceedsHeld(
                    f"reservation holds {held_now} of {sku!r}; cannot release {quantity}",
                    metadata={"sku": sku, "held": str(held_now), "requested": str(quantity)},
                )
        return [
            _draft(
                EventType.RELEASED,
                sku=sku,
                quantity=quantity,
                reservation_id=reservation.reservation_id,
                reservation_kind=reservation.kind,
                reason=command.reason,
            )
            for sku, quantity in wanted.items()
        ]

    def _decide_pick(self, command: c.Pick, ctx: c.Context) -> list[LedgerEvent]:
        violations = Violations()
        _check_id(violations, "reservation_id", command.reservation_id)
        if not command.lines:
            violations.add("lines", "at least one line is required")
        _check_lines_limit(violations, len(command.lines))
        for index, line in enumerate(command.lines):
            _check_sku(violations, f"lines[{index}].sku", line.sku)
            _check_positive(violations, f"lines[{index}].quantity", line.quantity)
        violations.raise_if_any()
        reservation = self._open_reservation(command.reservation_id)
        picks: list[tuple[str, LocationId, int]] = []
        for index, line in enumerate(command.lines):
            path = f"lines[{index}]"
            if line.sku not in reservation.lines:
                violations.add(f"{path}.sku", f"reservation has no line for {line.sku!r}")
                continue
            item = self._item(line.sku, f"{path}.sku")
            location = self._location(line.location_id, f"{path}.location_id")
            quantity = self._base_quantity(
                violations, f"{path}.quantity", item, line.quantity, line.unit, f"{path}.unit"
            )
            picks.append((line.sku, location, quantity))
        violations.raise_if_any()
        per_sku: dict[str, int] = {}
        per_bucket: dict[tuple[str, str], int] = {}
        for sku, location, quantity in picks:
            per_sku[sku] = per_sku.get(sku, 0) + quantity
            per_bucket[(sku, location)] = per_bucket.get((sku, location), 0) + quantity
        for sku, quantity in per_sku.items():
            held = reservation.lines[sku].held
            if quantity > held:
                raise ExceedsHeld(
                    f"reservation holds {held} of {sku!r}; cannot pick {quantity}",
                    metadata={"sku": sku, "held": str(held), "requested": str(quantity)},
                )
        for (sku, bucket_location), quantity in per_bucket.items():
            on_hand = self.balance(sku).bucket(bucket_location, StockStatus.SELLABLE)
            if quantity > on_hand:
                raise InsufficientOnHand(
                    f"{bucket_location} holds {on_hand} sellable of {sku!r}; "
                    f"cannot pick {quantity}",
                    metadata={
                        "sku": sku,
                        "location_id": bucket_location,
                        "on_hand": str(on_hand),
                        "requested": str(quantity),
                    },
                )
        drafts = [
            _draft(
                EventType.PICKED,
                sku=sku,
                location_id=location,
                status=StockStatus.SELLABLE,
                quantity=quantity,
                reservation_id=reservation.reservation_id,
                reservation_kind=reservation.kind,
                local_share_delta=(
                    0 if reservation.hub_promise_id else -self._growth_delta(quantity)
                ),
                hub_promise_id=reservation.hub_promise_id,
            )
            for (sku, location), quantity in per_bucket.items()
        ]
        if command.release_remainder:
            for sku, held_line in reservation.lines.items():
                rest = held_line.held - per_sku.get(sku, 0)
                if rest > 0:
                    drafts.append(
                        _draft(
                            EventType.RELEASED,
                            sku=sku,
                            quantity=rest,
                            reservation_id=reservation.reservation_id,
                            reservation_kind=reservation.kind,
                            reason="pick_remainder",
                        )
                    )
        return drafts

    def _decide_expire(self, command: c.ExpireDue, ctx: c.Context) -> list[LedgerEvent]:
        # Popping due entries is index upkeep, not a state change: every entry
        # popped here either belongs to an ended reservation or is expired by
        # the entries returned (or pushed back when over the limit).
        due: list[Reservation] = []
        while self.expiry_heap and self.expiry_heap[0][0] <= ctx.now_ms:
            if len(due) >= command.limit:
                break
            expires_at_ms, reservation_id = heapq.heappop(self.expiry_heap)
            reservation = self.reservations.get(reservation_id)
            if reservation is not None and reservation.expires_at_ms == expires_at_ms:
                due.append(reservation)
        drafts: list[LedgerEvent] = []
        for reservation in due:
            for line in reservation.lines.values():
                if line.held:
                    drafts.append(
                        _draft(
                            EventType.EXPIRED,
                            sku=line.sku,
                            quantity=line.held,
                            reservation_id=reservation.reservation_id,
                            reservation_kind=reservation.kind,
                            reason=EXPIRY_REASON,
                        )
                    )
        return drafts

    # -- escrow shares (hub mode)

    def _decide_grant(self, command: c.GrantQuota, ctx: c.Context) -> list[LedgerEvent]:
        violations = Violations()
        _check_sku(violations, "sku", command.sku)
        _check_positive(violations, "quantity", command.quantity)
        violations.raise_if_any()
        self._item(command.sku, "sku")
        if not self.hub_mode:
            return []  # without a hub there are no shares to move (like ReturnQuota)
        return [
            _draft(
                EventType.QUOTA_GRANTED,
                sku=command.sku,
                quantity=command.quantity,
                reference=f"cmd:{command.command_sequence}",
                reason="hub_grant",
                local_share_delta=command.quantity,
            )
        ]

    def _decide_return(self, command: c.ReturnQuota, ctx: c.Context) -> list[LedgerEvent]:
        violations = Violations()
        _check_sku(violations, "sku", command.sku)
        if command.quantity < 0:
            violations.add("quantity", "must not be negative", "ERROR_REASON_INVALID_QUANTITY")
        violations.raise_if_any()
        self._item(command.sku, "sku")
        balance = self.balance(command.sku)
        item = self.items[command.sku]
        # Only free share backed by sellable stock above safety stock goes back.
        backed = max(0, min(balance.local_share, balance.sellable - item.safety_stock))
        quantity = min(command.quantity, max(0, backed - balance.reserved))
        if not self.hub_mode or quantity <= 0:
            return []
        return [
            _draft(
                EventType.QUOTA_RETURNED,
                sku=command.sku,
                quantity=quantity,
                reference=f"cmd:{command.command_sequence}" if command.command_sequence else "",
                reason=command.reason or "surplus_returned",
                local_share_delta=-quantity,
            )
        ]

    def _decide_hold(self, command: c.HoldForPromise, reservation_id: str) -> list[LedgerEvent]:
        """Holds units the hub promised: physically free units, not the local share."""
        violations = Violations()
        _check_sku(violations, "sku", command.sku)
        _check_positive(violations, "quantity", command.quantity)
        _check_id(violations, "promise_id", command.promise_id)
        violations.raise_if_any()
        self._item(command.sku, "sku")
        balance = self.balance(command.sku)
        quantity = min(command.quantity, max(0, balance.sellable - balance.reserved))
        if quantity <= 0:
            return []
        return [
            _draft(
                EventType.RESERVED,
                sku=command.sku,
                quantity=quantity,
                reservation_id=reservation_id,
                reservation_kind=ReservationKind.HARD,
                channel="hub",
                reference=f"promise:{command.promise_id}",
                reason="hub_promise",
                hub_promise_id=command.promise_id,
            )
        ]

    def _decide_release_promise(self, command: c.ReleaseForPromise) -> list[LedgerEvent]:
        held = sorted(
            (
                reservation
                for reservation in self.reservations.values()
                if reservation.hub_promise_id == command.promise_id
                and command.sku in reservation.lines
                and reservation.lines[command.sku].held
            ),
            key=lambda r: -r.created_sequence,
        )
        left = command.quantity
        drafts: list[LedgerEvent] = []
        for reservation in held:
            if left <= 0:
                break
            take = min(left, reservation.lines[command.sku].held)
            left -= take
            drafts.append(
                _draft(
                    EventType.RELEASED,
                    sku=command.sku,
                    quantity=take,
                    reservation_id=reservation.reservation_id,
                    reservation_kind=reservation.kind,
                    reason="hub_release",
                    hub_promise_id=command.promise_id,
                )
            )
        return drafts

    def _decide_adopt(self, ctx: c.Context) -> list[LedgerEvent]:
        """Sets each local share to what the site could promise on its own."""
        drafts: list[LedgerEvent] = []
        for sku in sorted(self.balances):
            balance = self.balances[sku]
            item = self.items.get(sku)
            safety = item.safety_stock if item is not None else 0
            target = max(balance.reserved, balance.sellable - safety, 0)
            delta = target - balance.local_share
            if delta:
                drafts.append(
                    _draft(
                        EventType.QUOTA_GRANTED if delta > 0 else EventType.QUOTA_RETURNED,
                        sku=sku,
                        quantity=abs(delta),
                        reason="shares_adopted",
                        local_share_delta=delta,
                    )
                )
        return drafts

    def prune_expiry_heap(self) -> None:
        """Drops heap entries of reservations that already ended, keeping it small."""
        while self.expiry_heap and self.expiry_heap[0][1] not in self.reservations:
            heapq.heappop(self.expiry_heap)

    def next_expiry_ms(self) -> int | None:
        self.prune_expiry_heap()
        return self.expiry_heap[0][0] if self.expiry_heap else None


def replay(site_id: str, items: Iterable[Item], events: Iterable[LedgerEvent]) -> EdgeLedger:
    """Rebuilds a ledger from its log (the reference the projection must equal)."""
    ledger = EdgeLedger(site_id)
    for item in items:
        ledger.upsert_item(item)
    for event in events:
        ledger.evolve(event)
    ledger.drain_dirty()
    return ledger


_fill = object.__setattr__


def _draft(event_type: EventType, **fields: object) -> LedgerEvent:
    return LedgerEvent(sequence=0, hlc=0, recorded_at_ms=0, type=event_type, **fields)  # type: ignore[arg-type]


def _closed(reservation: Reservation) -> ReservationClosed:
    return ReservationClosed(
        f"reservation {reservation.reservation_id!r} is {reservation.state.name.lower()}",
        metadata={
            "reservation_id": reservation.reservation_id,
            "state": reservation.state.name,
        },
    )


def _too_much(path: str) -> InvalidArgument:
    return InvalidArgument(
        f"{path}: on-hand would exceed the limit of {limits.ON_HAND_MAX}",
        violations=[
            FieldViolation(
                path,
                f"on-hand would exceed the limit of {limits.ON_HAND_MAX}",
                "ERROR_REASON_INVALID_QUANTITY",
            )
        ],
    )


def _check_sku(violations: Violations, path: str, sku: str) -> None:
    if not sku:
        violations.add(path, "must not be empty")
    elif len(sku) > limits.ID_LENGTH_MAX:
        violations.add(path, f"longer than {limits.ID_LENGTH_MAX} characters")
    elif not sku.isprintable() or sku != sku.strip():
        violations.add(path, "must be printable with no leading or trailing spaces")


def _check_id(violations: Violations, path: str, value: str) -> None:
    _check_sku(violations, path, value)


def _check_positive(violations: Violations, path: str, quantity: int) -> None:
    if quantity <= 0:
        violations.add(path, "must be at least 1", "ERROR_REASON_INVALID_QUANTITY")
    elif quantity > limits.QUANTITY_MAX:
        violations.add(
            path, f"above the limit of {limits.QUANTITY_MAX}", "ERROR_REASON_INVALID_QUANTITY"
        )


def _check_status(
    violations: Violations, path: str, value: int, *, allow_unspecified: bool
) -> None:
    if value not in StockStatus._value2member_map_:
        violations.add(path, f"unknown stock status {value}")
    elif value == 0 and not allow_unspecified:
        violations.add(path, "a stock status is required")


def _check_text(violations: Violations, path: str, value: str) -> None:
    if len(value) > limits.TEXT_LENGTH_MAX:
        violations.add(path, f"longer than {limits.TEXT_LENGTH_MAX} characters")


def _check_lines_limit(violations: Violations, count: int) -> None:
    if count > limits.LINES_PER_REQUEST_MAX:
        violations.add(
            "lines",
            f"{count} lines is above the limit of {limits.LINES_PER_REQUEST_MAX}",
            "ERROR_REASON_TOO_MANY_LINES",
        )


__all__ = [
    "Balance",
    "Decision",
    "EdgeLedger",
    "HeldLine",
    "Reservation",
    "Sku",
    "replay",
]
