"""The hub's view of every site: a projection of each site's ledger, plus the
hub's own escrow shares (pure; no NATS, gRPC or SQLite).

Each site's entries are applied strictly in sequence: entries at or below the
site's high-water mark are duplicates and change nothing; an entry beyond
mark + 1 is a gap, and the site stops until the missing entries arrive.

Escrow at the hub (DESIGN, "Escrow accounting"): per site and SKU the hub owns
`hub_share`; units it grants leave `hub_share` at once and sit `in_flight`
until the edge's QUOTA_GRANTED entry (reference "cmd:<n>") arrives; units an
edge returns (QUOTA_RETURNED) join `hub_share`. Shrink that the edge did not
take from its free local share is the hub's deficit: taken from `hub_share`,
and past that recorded as `shortfall` for conflict resolution.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from server.domain.digest import balance_digest
from server.domain.errors import InsufficientStock, Violations
from server.domain.model import EventType, LedgerEvent, ReservationKind, StockStatus


@dataclass(slots=True)
class SiteBalance:
    site_id: str
    sku: str
    sellable: int = 0
    total: int = 0
    reserved_soft: int = 0
    reserved_hard: int = 0
    local_share: int = 0
    hub_share: int = 0
    in_flight: int = 0
    shortfall: int = 0
    as_of_sequence: int = 0
    hub_reserved: int = 0
    # Of the edge's hard reservations, those holding hub promises (drawn on hub_share).
    reserved_hub: int = 0

    @property
    def hub_free(self) -> int:
        """Hub share not held by promises: what the hub may promise now."""
        return max(0, self.hub_share - self.hub_reserved)

    @property
    def local_free(self) -> int:
        """Edge share not held by its reservations: obtainable by a recall."""
        return max(0, self.local_share - self.reserved_soft - self.reserved_hard)


@dataclass(slots=True)
class SiteState:
    site_id: str
    applied_sequence: int = 0
    last_event_ms: int = 0
    last_applied_ms: int = 0
    last_lag_ms: int = 0
    known_sequence: int = 0
    checksums_matched: int = 0
    drift_detected: int = 0
    repairing: bool = False
    next_command_sequence: int = 1
    gaps: int = 0
    # During a repair by replay: entries up to here were applied before, so
    # their effects on the hub's own shares must not be applied twice.
    replay_until: int = 0


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    applied: int
    duplicates: int
    gap_from: int | None = None


@dataclass(frozen=True, slots=True)
class Command:
    """A hub-to-edge command, numbered per site."""

    site_id: str
    command_sequence: int
    kind: str
    sku: str = ""
    quantity: int = 0
    from_sequence: int = 0
    reason: str = ""
    promise_id: str = ""


_VERSIONS = itertools.count(1)


@dataclass(slots=True)
class HubView:
    sites: dict[str, SiteState] = field(default_factory=dict)
    balances: dict[tuple[str, str], SiteBalance] = field(default_factory=dict)
    grants_in_flight: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    # sku -> site -> balance: ATP touches only the rows of the SKUs it is asked about.
    by_sku: dict[str, dict[str, SiteBalance]] = field(default_factory=dict)
    # site -> sku -> balance: checksums and repairs touch one site's rows only.
    by_site: dict[str, dict[str, SiteBalance]] = field(default_factory=dict)
    dirty_sites: set[str] = field(default_factory=set)
    dirty_balances: set[tuple[str, str]] = field(default_factory=set)
    new_commands: list[Command] = field(default_factory=list)
    settled_grants: set[tuple[str, int]] = field(default_factory=set)
    # (site, sku, promise_id, quantity) picked since the last drain, for the promise book.
    hub_picks: list[tuple[str, str, str, int]] = field(default_factory=list)
    # sku -> when one of its balances was last handed out for change (see
    # `balance`); with `epoch`, what ATP answers are reused by. Values come
    # from one counter, so a reloaded view never repeats one.
    sku_versions: dict[str, int] = field(default_factory=dict)
    epoch: int = field(default_factory=lambda: next(_VERSIONS))

    def site(self, site_id: str) -> SiteState:
        state = self.sites.get(site_id)
        if state is None:
            state = self.sites[site_id] = SiteState(site_id)
            self.dirty_sites.add(site_id)
        return state

    def balance(self, site_id: str, sku: str) -> SiteBalance:
        """The balance, for changing: it is marked to be persisted and its SKU's
        version moves (every change of a balance goes through here or `_touch`;
        synchronously, so no reader sees the new version before the change)."""
        key = (site_id, sku)
        found = self.balances.get(key)
        if found is None:
            found = self.balances[key] = SiteBalance(site_id, sku)
            self.by_sku.setdefault(sku, {})[site_id] = found
            self.by_site.setdefault(site_id, {})[sku] = found
        self._touch(key)
        return found

    def _touch(self, key: tuple[str, str]) -> None:
        self.dirty_balances.add(key)
        self.sku_versions[key[1]] = next(_VERSIONS)

    def index(self) -> None:
        """Rebuilds the indexes after balances were loaded in bulk."""
        self.by_sku, self.by_site = {}, {}
        for (site_id, sku), balance in self.balances.items():
            self.by_sku.setdefault(sku, {})[site_id] = balance
            self.by_site.setdefault(site_id, {})[sku] = balance

    def drain(
        self,
    ) -> tuple[set[str], set[tuple[str, str]], list[Command], set[tuple[str, int]]]:
        drained = (self.dirty_sites, self.dirty_balances, self.new_commands, self.settled_grants)
        self.dirty_sites, self.dirty_balances = set(), set()
        self.new_commands, self.settled_grants = [], set()
        return drained

    # ----- ingest ------------------------------------------------------------

    def apply_batch(self, site_id: str, events: Sequence[LedgerEvent], now_ms: int) -> BatchOutcome:
        """Applies the entries above the site's mark, in order, stopping at a gap."""
        state = self.site(site_id)
        applied = duplicates = 0
        for event in events:
            if event.sequence <= state.applied_sequence:
                duplicates += 1
                continue
            if event.sequence != state.applied_sequence + 1:
                state.gaps += 1
                state.known_sequence = max(state.known_sequence, events[-1].sequence)
                self.dirty_sites.add(site_id)
                return BatchOutcome(applied, duplicates, gap_from=state.applied_sequence + 1)
            self._apply(site_id, event)
            state.applied_sequence = event.sequence
            state.last_event_ms = event.recorded_at_ms
            state.last_lag_ms = max(0, now_ms - event.recorded_at_ms)
            applied += 1
        if applied:
            state.last_applied_ms = now_ms
            state.known_sequence = max(state.known_sequence, state.applied_sequence)
            state.repairing = False
            self.dirty_sites.add(site_id)
        return BatchOutcome(applied, duplicates)

    def _apply(self, site_id: str, event: LedgerEvent) -> None:
        kind = event.type
        balance = self.balance(site_id, event.sku)
        # Replayed entries rebuild the projection only; the hub's shares
        # already carry their effects.
        hub_effects = event.sequence > self.sites[site_id].replay_until
        balance.as_of_sequence = event.sequence
        balance.local_share += event.local_share_delta
        sellable = event.status is StockStatus.SELLABLE
        if kind in (EventType.RECEIVED, EventType.ADJUSTED, EventType.COUNTED):
            balance.total += event.quantity
            if sellable:
                balance.sellable += event.quantity
                if event.quantity < 0 and hub_effects:
                    self._charge_deficit(balance, -event.quantity, event.local_share_delta)
        elif kind is EventType.STATUS_CHANGED:
            if sellable:
                balance.sellable -= event.quantity
                if hub_effects:
                    self._charge_deficit(balance, event.quantity, event.local_share_delta)
            elif event.to_status is StockStatus.SELLABLE:
                balance.sellable += event.quantity
        elif kind is EventType.TRANSFERRED_OUT:
            balance.total -= event.quantity
            if sellable:
                balance.sellable -= event.quantity
        elif kind is EventType.TRANSFERRED_IN:
            balance.total += event.quantity
            if sellable:
                balance.sellable += event.quantity
        elif kind is EventType.RESERVED:
            self._reserve(balance, event.reservation_kind, event.quantity)
            if event.hub_promise_id:
                balance.reserved_hub += event.quantity
        elif kind in (EventType.RELEASED, EventType.EXPIRED):
            self._reserve(balance, event.reservation_kind, -event.quantity)
            if event.hub_promise_id:
                balance.reserved_hub -= event.quantity
        elif kind is EventType.PICKED:
            self._reserve(balance, event.reservation_kind, -event.quantity)
            if event.hub_promise_id:
                balance.reserved_hub -= event.quantity
            balance.sellable -= event.quantity
            balance.total -= event.quantity
            if event.hub_promise_id and hub_effects:
                # Rule 5: picking a hub promise lowers the hub's share with it.
                balance.hub_share = max(0, balance.hub_share - event.quantity)
                balance.hub_reserved = max(0, balance.hub_reserved - event.quantity)
                self.hub_picks.append((site_id, event.sku, event.hub_promise_id, event.quantity))
        elif kind is EventType.QUOTA_GRANTED:
            if event.reference.startswith("cmd:"):
                key = (site_id, int(event.reference[4:]))
                grant = self.grants_in_flight.pop(key, None)
                if grant is not None:
                    balance.in_flight -= grant[1]
                    self.settled_grants.add(key)
        elif kind is EventType.QUOTA_RETURNED and event.reason != "shares_adopted" and hub_effects:
            balance.hub_share += event.quantity

    @staticmethod
    def _reserve(balance: SiteBalance, kind: ReservationKind, quantity: int) -> None:
        if kind is ReservationKind.HARD:
            balance.reserved_hard += quantity
        else:
            balance.reserved_soft += quantity

    @staticmethod
    def _charge_deficit(balance: SiteBalance, shrink: int, local_share_delta: int) -> None:
        """Rule 6: what the edge's free share did not absorb comes off the hub's."""
        deficit = shrink + local_share_delta  # local_share_delta <= 0 here
        if deficit <= 0:
            return
        taken = min(deficit, balance.hub_share)
        balance.hub_share -= taken
        balance.shortfall += deficit - taken

    # ----- reconciliation ------------------------------------------------------

    def digest(self, site_id: str) -> tuple[int, bytes]:
        """Same digest the edge computes over its own balances."""
        return balance_digest(
            (
                sku,
                (
                    balance.sellable,
                    balance.total,
                    balance.reserved_soft,
                    balance.reserved_hard,
                    balance.local_share,
                ),
            )
            for sku, balance in self.by_site.get(site_id, {}).items()
        )

    def check_checksum(
        self, site_id: str, as_of_sequence: int, sku_count: int, digest: bytes, now_ms: int = 0
    ) -> str:
        """'match', 'drift' (a repair by replay starts) or 'skipped' (not comparable).

        A match also proves the view current as of now: a quiet site is not stale.
        """
        state = self.site(site_id)
        state.known_sequence = max(state.known_sequence, as_of_sequence)
        self.dirty_sites.add(site_id)
        if state.repairing or state.applied_sequence != as_of_sequence:
            return "skipped"
        count, mine = self.digest(site_id)
        if count == sku_count and mine == digest:
            state.checksums_matched += 1
            state.last_applied_ms = max(state.last_applied_ms, now_ms)
            return "match"
        state.drift_detected += 1
        self.start_repair(site_id, "checksum_mismatch")
        return "drift"

    def start_repair(self, site_id: str, reason: str) -> Command:
        """Forgets the site's projection and asks the edge for its whole ledger.

        The hub's own records (hub_share, in_flight, hub_reserved, shortfall)
        are kept: they are not a projection of the edge's ledger, and the
        replayed entries do not apply their effects on them again.
        """
        state = self.site(site_id)
        for sku, balance in self.by_site.get(site_id, {}).items():
            balance.sellable = balance.total = 0
            balance.reserved_soft = balance.reserved_hard = balance.local_share = 0
            balance.reserved_hub = 0
            balance.as_of_sequence = 0
            self._touch((site_id, sku))
        state.replay_until = max(state.replay_until, state.applied_sequence)
        state.applied_sequence = 0
        state.repairing = True
        return self._command(site_id, "replay_request", from_sequence=1, reason=reason)

    # ----- escrow commands -----------------------------------------------------

    def _command(self, site_id: str, kind: str, **fields: object) -> Command:
        state = self.site(site_id)
        command = Command(site_id, state.next_command_sequence, kind, **fields)  # type: ignore[arg-type]
        state.next_command_sequence += 1
        self.dirty_sites.add(site_id)
        self.new_commands.append(command)
        return command

    def grant(self, site_id: str, sku: str, quantity: int) -> Command:
        """Moves hub share to the edge; the units are in flight until applied there."""
        _check_quantity(quantity)
        balance = self.balances.get((site_id, sku))
        # Only the free part: units the hub promised are not its to give away.
        free = balance.hub_free if balance is not None else 0
        if balance is None or quantity > free:
            raise InsufficientStock(
                f"the hub has {free} of {sku!r} free at {site_id!r}; cannot grant {quantity}",
                metadata={
                    "site_id": site_id,
                    "sku": sku,
                    "requested": str(quantity),
                    "available": str(free),
                },
            )
        balance = self.balance(site_id, sku)
        balance.hub_share -= quantity
        balance.in_flight += quantity
        command = self._command(site_id, "quota_grant", sku=sku, quantity=quantity)
        self.grants_in_flight[(site_id, command.command_sequence)] = (sku, quantity)
        return command

    def cover_overbooking(self, site_id: str, sku: str) -> int:
        """Reconciles an optimistic site that reserved beyond its local share offline.

        The units it overbooked were physically there, so they came out of the
        hub's share: the hub grants them to the edge (making its local share
        cover its reservations again) and lowers its own share. If the hub had
        promised them, its promises there now exceed its share, which conflict
        resolution settles by the allocation rules. Returns the units covered.
        """
        balance = self.balances.get((site_id, sku))
        if balance is None:
            return 0
        local_reserved = balance.reserved_soft + balance.reserved_hard - balance.reserved_hub
        overbook = local_reserved - (balance.local_share + balance.in_flight)
        take = min(overbook, balance.hub_share)
        if take <= 0:
            return 0
        balance = self.balance(site_id, sku)
        balance.hub_share -= take
        balance.in_flight += take
        command = self._command(site_id, "quota_grant", sku=sku, quantity=take)
        self.grants_in_flight[(site_id, command.command_sequence)] = (sku, take)
        return take

    def recall(self, site_id: str, sku: str, quantity: int) -> Command:
        """Asks the edge to return up to `quantity` of its free local share."""
        _check_quantity(quantity)
        return self._command(site_id, "quota_recall", sku=sku, quantity=quantity)


def _check_quantity(quantity: int) -> None:
    violations = Violations()
    if quantity <= 0:
        violations.add("quantity", "must be at least 1", "ERROR_REASON_INVALID_QUANTITY")
    violations.raise_if_any()
