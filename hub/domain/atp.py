"""The hub's available-to-promise engine (pure: plain values in, plain values out).

An answer is built from the hub's view of each site (hub/domain/view.py) and
the catalogue (hub/domain/catalog.py), for one demand (channel, tier, pool,
priority) at one instant `now_ms` the caller passes in.

Per site in the demand's pools (DESIGN, "ATP at the hub reports..."):

- promisable now: the hub's free share `Hf`, minus safety stock, minus buffers
  kept for higher priorities, minus protections that another demand group
  still needs this period at that site;
- future supply at the site (in-transit and purchase orders by eta, supplier
  stock after its lead time), phased into cumulative date buckets; a
  deduction that on-hand cannot cover is taken from the first supply to
  arrive;
- obtainable: the edge's free local share, reported but not counted (the hub
  would have to recall it first);
- how old the hub's knowledge of the site is.

Caps of the demand's group (at most N per period) and protections of other
groups that span several sites (at least N per period kept for them) limit
the total over the sites they cover, not each site; they are applied after
the per-site terms. Totals are rounded down to the item's order multiple and
minimum.

Safety stock is escrow-aware: the shares already satisfy
`local_share + hub_share + in_flight <= sellable - safety stock` when the edge
keeps the same safety stock, so only the part of the rule that is not already
kept outside both shares comes off the hub's free share (DESIGN, "Escrow
accounting"). Of several safety-stock rules for a site, the most specific one
wins (SKU, then site, then pool), not their sum; buffers and protections add
up.

The hot path touches only the rows of the SKU asked about: `view.by_sku`,
`catalog.supplies_by_sku` and `catalog.rules_for`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from hub.domain.catalog import (
    DAY_MS,
    Catalog,
    Demand,
    ExplanationKind,
    HubItem,
    Rule,
    RuleType,
    Supply,
    SupplyType,
)
from hub.domain.view import HubView, SiteBalance
from server.domain import limits
from server.domain.errors import UnknownSku, Violations

# The ATP window; kept here beside the engine that defines its meaning.
HORIZON_DAYS_DEFAULT = 14
HORIZON_DAYS_MAX = 90
BUCKET_DAYS_DEFAULT = 1
STALE_AFTER_MS_DEFAULT = 60_000
# Sourcing options per line: the best few; the line total counts every site.
SOURCING_OPTIONS_MAX = 10
MINUTE_MS = 60_000

_SUPPLY_KINDS = {
    SupplyType.IN_TRANSIT: ExplanationKind.IN_TRANSIT,
    SupplyType.PURCHASE_ORDER: ExplanationKind.PURCHASE_ORDER,
    SupplyType.SUPPLIER: ExplanationKind.SUPPLIER,
}


@dataclass(frozen=True, slots=True)
class LineQuery:
    line_id: str
    sku: str
    quantity: int
    unit: str = ""


@dataclass(frozen=True, slots=True)
class Explanation:
    """One term of an answer: supply counted (positive) or a deduction (its size)."""

    kind: ExplanationKind
    site_id: str
    quantity: int
    detail: str


@dataclass(frozen=True, slots=True)
class SiteOption:
    site_id: str
    available_now: int
    available_by_horizon: int
    lead_time_days: int


@dataclass(frozen=True, slots=True)
class LineAnswer:
    """One line's answer; every quantity in the SKU's base unit."""

    line_id: str
    sku: str
    requested: int
    available_now: int
    # (until_ms, cumulative available by then), one per date bucket.
    buckets: tuple[tuple[int, int], ...]
    # Best first.
    sourcing: tuple[SiteOption, ...]
    explanations: tuple[Explanation, ...]
    # (substitute sku, its available_now, units of the requested SKU it covers).
    substitutes: tuple[tuple[str, int, int], ...]
    stale: bool
    # Until when the clock alone cannot change this answer (0: not reusable,
    # as a stale answer is): the next minute (explanations name times to the
    # minute; buckets, periods and lead times move by whole days) or a
    # counted site turning stale, whichever is first.
    valid_until_ms: int = 0


# ----- input -----------------------------------------------------------------


def to_base(
    catalog: Catalog, view: HubView, query: LineQuery, path: str = ""
) -> tuple[HubItem, int]:
    """The line's item and its quantity in base units.

    Raises:
        InvalidArgument: naming every bad field under `path` (`lines[2].unit`).
        UnknownSku: the SKU is neither in the catalogue nor in any site's data.
    """
    violations = Violations()
    unknown: list[tuple[str, str]] = []
    item, base = _convert(catalog, view, query, path, violations, unknown)
    violations.raise_if_any()
    if item is None:
        raise _unknown_sku(*unknown[0])
    return item, base


def _convert(
    catalog: Catalog,
    view: HubView,
    query: LineQuery,
    path: str,
    violations: Violations,
    unknown: list[tuple[str, str]],
) -> tuple[HubItem | None, int]:
    """Records violations (and an unknown SKU) instead of raising.

    Field paths are built only for a violation: this runs for every line."""
    if len(query.line_id) > limits.ID_LENGTH_MAX:
        violations.add(_field(path, "line_id"), f"longer than {limits.ID_LENGTH_MAX} characters")
    item: HubItem | None = None
    if not query.sku:
        violations.add(_field(path, "sku"), "is required")
    elif len(query.sku) > limits.ID_LENGTH_MAX:
        violations.add(_field(path, "sku"), f"longer than {limits.ID_LENGTH_MAX} characters")
    else:
        item = catalog.items.get(query.sku)
        if item is None and query.sku in view.by_sku:
            item = HubItem(query.sku)
        if item is None:
            unknown.append((_field(path, "sku"), query.sku))
    quantity_ok = True
    if query.quantity <= 0:
        violations.add(
            _field(path, "quantity"), "must be at least 1", "ERROR_REASON_INVALID_QUANTITY"
        )
        quantity_ok = False
    elif query.quantity > limits.QUANTITY_MAX:
        violations.add(
            _field(path, "quantity"),
            f"above the limit of {limits.QUANTITY_MAX}",
            "ERROR_REASON_INVALID_QUANTITY",
        )
        quantity_ok = False
    if len(query.unit) > limits.UNIT_LENGTH_MAX:
        violations.add(
            _field(path, "unit"),
            f"longer than {limits.UNIT_LENGTH_MAX} characters",
            "ERROR_REASON_UNKNOWN_UNIT",
        )
        return item, 0
    if item is None:
        return None, 0
    factor = item.base_units_per(query.unit)
    if factor is None:
        violations.add(
            _field(path, "unit"),
            f"unit {query.unit!r} is not defined for SKU {item.sku!r}",
            "ERROR_REASON_UNKNOWN_UNIT",
        )
        return item, 0
    if not quantity_ok:
        return item, 0
    base = query.quantity * factor
    if base > limits.QUANTITY_MAX:
        violations.add(
            _field(path, "quantity"),
            f"{base} base units is above the limit of {limits.QUANTITY_MAX}",
            "ERROR_REASON_INVALID_QUANTITY",
        )
        return item, 0
    return item, base


def _field(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _unknown_sku(path: str, sku: str) -> UnknownSku:
    return UnknownSku(f"unknown SKU {sku!r} ({path})", metadata={"sku": sku, "field": path})


# ----- the demand's scope ----------------------------------------------------------


@dataclass(slots=True)
class _Scope:
    """What every line of one call shares: the demand, its sites, the clock."""

    catalog: Catalog
    view: HubView
    demand: Demand
    now_ms: int
    # Pool sites -> preference position (pool order).
    order: dict[str, int]
    # Pool id -> its sites, filled as rules name pools.
    members: dict[str, frozenset[str]]
    stale_after_ms: int = STALE_AFTER_MS_DEFAULT

    @classmethod
    def build(
        cls,
        catalog: Catalog,
        view: HubView,
        demand: Demand,
        now_ms: int,
        stale_after_ms: int = STALE_AFTER_MS_DEFAULT,
    ) -> _Scope:
        # Without pools every site serves: those in the catalogue (supplier sites
        # have no edge) and those the hub has heard from.
        known: dict[str, object] = {} if catalog.pools else {**catalog.sites, **view.sites}
        sites = catalog.pool_sites(demand, known)
        order = {site_id: position for position, site_id in enumerate(sites)}
        return cls(catalog, view, demand, now_ms, order, {}, stale_after_ms)

    def covers(self, rule: Rule, site_id: str) -> bool:
        """Whether a rule's site or pool scope includes the site (a pool rule
        applies at each of that pool's sites)."""
        if rule.site_id and rule.site_id != site_id:
            return False
        if rule.pool_id:
            members = self.members.get(rule.pool_id)
            if members is None:
                pool = self.catalog.pools.get(rule.pool_id)
                members = frozenset(pool.site_ids) if pool is not None else frozenset()
                self.members[rule.pool_id] = members
            return site_id in members
        return True

    def lead_time_days(self, site_id: str) -> int:
        site = self.catalog.sites.get(site_id)
        return site.lead_time_days if site is not None else 0


@dataclass(slots=True)
class _Rules:
    """A SKU's rules, sorted by what they do to one demand at one instant."""

    # (specificity, scoped, rule), most specific first: per site, the first that
    # covers it wins. `scoped`: the rule names a site or pool (else it covers all).
    safety: list[tuple[int, bool, Rule]]
    # (scoped, rule) for buffers this demand's priority may not consume.
    buffers: list[tuple[bool, Rule]]
    # Other groups' protections naming one site: (rule, used, still needed) this period.
    site_protections: list[tuple[Rule, int, int]]
    # Caps of this demand's group and other groups' protections over many sites.
    group_limits: list[Rule]

    @property
    def per_site(self) -> bool:
        return bool(self.safety or self.buffers or self.site_protections)

    @property
    def everywhere(self) -> bool:
        """Every per-site rule covers every site and one safety stock wins everywhere."""
        return (
            not self.site_protections
            and not any(scoped for _rank, scoped, _rule in self.safety)
            and not any(scoped for scoped, _rule in self.buffers)
            and (len(self.safety) < 2 or self.safety[0][0] > self.safety[1][0])
        )


def _sort_rules(catalog: Catalog, sku: str, demand: Demand, now_ms: int) -> _Rules:
    rules = _Rules([], [], [], [])
    for rule in catalog.rules_for(sku):
        kind = rule.type
        if kind == RuleType.SAFETY_STOCK:
            scoped = bool(rule.site_id or rule.pool_id)
            rules.safety.append((_specificity(rule), scoped, rule))
        elif kind == RuleType.BUFFER:
            if rule.min_priority > demand.priority:
                rules.buffers.append((bool(rule.site_id or rule.pool_id), rule))
        elif kind == RuleType.CAP:
            if rule.in_group(demand.channel, demand.customer_tier):
                rules.group_limits.append(rule)
        elif kind == RuleType.PROTECTION and not rule.in_group(
            demand.channel, demand.customer_tier
        ):
            if rule.site_id:
                used = catalog.cap_used(rule, now_ms)
                rules.site_protections.append((rule, used, max(0, rule.quantity - used)))
            else:
                rules.group_limits.append(rule)
    rules.safety.sort(key=lambda pair: -pair[0])
    return rules


def _specificity(rule: Rule) -> int:
    return (4 if rule.sku else 0) + (2 if rule.site_id else 0) + (1 if rule.pool_id else 0)


def _group(rule: Rule) -> str:
    return f"{rule.channel or 'any channel'}/{rule.customer_tier or 'any tier'}"


def _period(rule: Rule) -> str:
    return f"{rule.quantity} per {max(1, rule.period_days)} day(s)"


class _Tally:
    """One rule's deductions summed over the sites it applied at (updated
    in place by the hot loop)."""

    __slots__ = ("kept", "quantity", "site_id", "sites")

    def __init__(self) -> None:
        self.quantity = 0
        self.kept = 0
        self.sites = 0
        self.site_id = ""

    def where(self) -> tuple[str, str]:
        """The site when there is one, else "" and a suffix saying how many."""
        if self.sites == 1:
            return self.site_id, ""
        return "", f" (at {self.sites} sites)"


def _new_tally(tallies: dict[str, _Tally], rule: Rule) -> _Tally:
    tally = tallies[rule.rule_id] = _Tally()
    return tally


def _deductions(
    scope: _Scope,
    rules: _Rules,
    site_id: str,
    balance: SiteBalance | None,
    tallies: dict[str, _Tally] | None,
) -> int:
    """Units of a site's supply this demand may not take: safety stock, buffers,
    other groups' site protections (tallied per rule when asked). The hot loop
    of an answer: one call per site, so everything is inlined."""
    if balance is None:
        sellable = outside = 0
    else:
        sellable = balance.sellable
        # Units owned by neither share already keep (part of) the safety stock.
        outside = sellable - balance.local_share - balance.hub_share - balance.in_flight
        if outside < 0:
            outside = 0
        if sellable < 0:
            sellable = 0
    # Safety stock and buffers: fixed, or a percentage of sellable rounded up.
    total = 0
    if rules.safety:
        chosen: Rule | None = None
        amount = 0
        chosen_specificity = -1
        for specificity, scoped, rule in rules.safety:
            if specificity < chosen_specificity:
                break
            if scoped and not scope.covers(rule, site_id):
                continue
            candidate = -(-sellable * rule.percent // 100) if rule.percent > 0 else rule.quantity
            if chosen is None or candidate > amount:
                chosen, amount, chosen_specificity = rule, candidate, specificity
        if chosen is not None:
            total = amount - outside if amount > outside else 0
            if tallies is not None:
                tally = tallies.get(chosen.rule_id) or _new_tally(tallies, chosen)
                tally.quantity += total
                tally.kept += amount - total
                tally.sites += 1
                tally.site_id = site_id
    for scoped, rule in rules.buffers:
        if scoped and not scope.covers(rule, site_id):
            continue
        amount = -(-sellable * rule.percent // 100) if rule.percent > 0 else rule.quantity
        total += amount
        if tallies is not None:
            tally = tallies.get(rule.rule_id) or _new_tally(tallies, rule)
            tally.quantity += amount
            tally.sites += 1
            tally.site_id = site_id
    for rule, _used, need in rules.site_protections:
        if scope.covers(rule, site_id):
            total += need
            if tallies is not None:
                tally = tallies.get(rule.rule_id) or _new_tally(tallies, rule)
                tally.quantity += need
                tally.sites += 1
                tally.site_id = site_id
    return total


def _deductions_everywhere(
    rules: _Rules,
    site_ids: list[str],
    site_balances: list[SiteBalance | None],
    counted: list[int],
    tallies: dict[str, _Tally] | None,
) -> list[int]:
    """`_deductions` for every site at once when every rule covers every site
    (`_Rules.everywhere`), the common case: a column at a time, not a site at a time."""
    count = len(site_ids)
    deducted = [0] * count
    if not counted:
        return deducted
    balances = [site_balances[position] for position in counted]
    sellable = [0 if b is None or b.sellable < 0 else b.sellable for b in balances]

    def amounts(rule: Rule) -> list[int]:
        if rule.percent > 0:
            return [-(-units * rule.percent // 100) for units in sellable]
        return [rule.quantity] * len(counted)

    def tally(rule: Rule, quantities: list[int], kept: int = 0) -> None:
        if tallies is not None:
            found = tallies.get(rule.rule_id) or _new_tally(tallies, rule)
            found.quantity += sum(quantities)
            found.kept += kept
            found.sites += len(counted)
            found.site_id = site_ids[counted[-1]]

    if rules.safety:
        rule = rules.safety[0][2]
        wanted = amounts(rule)
        # Units owned by neither share already keep (part of) the safety stock.
        outside = [
            0 if b is None else b.sellable - b.local_share - b.hub_share - b.in_flight
            for b in balances
        ]
        taken = [
            (a - o if a > o else 0) if o > 0 else a for a, o in zip(wanted, outside, strict=True)
        ]
        for position, units in zip(counted, taken, strict=True):
            deducted[position] = units
        tally(rule, taken, sum(wanted) - sum(taken))
    for _scoped, rule in rules.buffers:
        kept = amounts(rule)
        for position, units in zip(counted, kept, strict=True):
            deducted[position] += units
        tally(rule, kept)
    return deducted


def _rule_terms(
    scope: _Scope, rules: _Rules, tallies: dict[str, _Tally], out: list[Explanation]
) -> None:
    """Appends one explanation per per-site rule that applied, in rule order."""
    if not tallies:
        return
    for _rank, _scoped, rule in rules.safety:
        tally = tallies.get(rule.rule_id)
        if tally is not None:
            site_id, suffix = tally.where()
            size = f"{rule.percent}% of sellable" if rule.percent > 0 else f"{rule.quantity}"
            out.append(
                Explanation(
                    ExplanationKind.SAFETY_STOCK,
                    site_id,
                    tally.quantity,
                    f"rule {rule.rule_id}: keep {size}; {tally.kept} of it already kept"
                    f" outside the shares{suffix}",
                )
            )
    for _scoped, rule in rules.buffers:
        tally = tallies.get(rule.rule_id)
        if tally is not None:
            site_id, suffix = tally.where()
            out.append(
                Explanation(
                    ExplanationKind.BUFFER,
                    site_id,
                    tally.quantity,
                    f"rule {rule.rule_id}: kept for priority {rule.min_priority} and above;"
                    f" this demand has {scope.demand.priority}{suffix}",
                )
            )
    for rule, used, _need in rules.site_protections:
        tally = tallies.get(rule.rule_id)
        if tally is not None:
            out.append(
                Explanation(
                    ExplanationKind.PROTECTION,
                    rule.site_id,
                    tally.quantity,
                    f"rule {rule.rule_id}: {_period(rule)} kept for {_group(rule)};"
                    f" {used} used this period",
                )
            )


def _stale_detail(scope: _Scope, site_id: str) -> str | None:
    """Why the hub's data of a site is too old to trust, or None when fresh."""
    state = scope.view.sites.get(site_id)
    if state is None or state.last_applied_ms <= 0:
        return "the hub has applied no data from this site"
    age_ms = scope.now_ms - state.last_applied_ms
    if age_ms > scope.stale_after_ms:
        return f"data is {age_ms} ms old (bound {scope.stale_after_ms} ms)"
    return None


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


# ----- limits over many sites ------------------------------------------------------


@dataclass(slots=True)
class _Limit:
    """A cap (bound: `remaining`) or another group's protection (bound: the
    covered supply minus `remaining`) over the sites at `positions`."""

    rule: Rule
    is_cap: bool
    used: int
    remaining: int
    # Covered candidate sites, in preference order.
    positions: list[int]


def _apply_limits(pre: list[int], group_limits: list[_Limit]) -> tuple[int, list[int]]:
    """The total the limits allow over per-site amounts `pre`, and each limit's bound.

    Narrow limits go first (they are sorted by size); a limit that binds takes
    the excess from its least preferred sites. The result is always feasible
    (every limit holds) and exact when the limits nest, the usual case (a site
    cap inside a pool cap inside a network-wide cap).
    """
    if not group_limits:
        return sum(pre), []
    work = pre.copy()
    bounds: list[int] = []
    count = len(pre)
    for limit in group_limits:
        everywhere = len(limit.positions) == count
        if limit.is_cap:
            bound = limit.remaining
        else:
            supply = sum(pre) if everywhere else sum([pre[p] for p in limit.positions])
            bound = max(0, supply - limit.remaining)
        bounds.append(bound)
        covered = sum(work) if everywhere else sum([work[p] for p in limit.positions])
        excess = covered - bound
        if excess > 0:
            for position in reversed(limit.positions):
                taken = min(work[position], excess)
                work[position] -= taken
                excess -= taken
                if not excess:
                    break
    return sum(work), bounds


def _site_bounds(count: int, group_limits: list[_Limit], bounds: list[int]) -> list[int] | None:
    """Per site, the smallest bound of the limits covering it (None: no limits)."""
    if not group_limits:
        return None
    floor = limits.QUANTITY_MAX * limits.LINES_PER_REQUEST_MAX
    narrow: list[tuple[_Limit, int]] = []
    for limit, bound in zip(group_limits, bounds, strict=True):
        if len(limit.positions) == count:
            floor = min(floor, bound)
        else:
            narrow.append((limit, bound))
    smallest = [floor] * count
    for limit, bound in narrow:
        for position in limit.positions:
            if bound < smallest[position]:
                smallest[position] = bound
    return smallest


# ----- one SKU over the demand's sites -------------------------------------------


@dataclass(frozen=True, slots=True)
class _Window:
    """Date buckets aligned to UTC days: bucket k ends at day start + k * width."""

    now_ms: int
    start_ms: int
    width_ms: int
    ends: tuple[int, ...]

    @classmethod
    def build(cls, now_ms: int, horizon_days: int, bucket_days: int) -> _Window:
        start_ms = now_ms - now_ms % DAY_MS
        width_ms = bucket_days * DAY_MS
        horizon_end_ms = start_ms + horizon_days * DAY_MS
        count = -(-horizon_days // bucket_days)
        ends = tuple(min(start_ms + k * width_ms, horizon_end_ms) for k in range(1, count + 1))
        return cls(now_ms, start_ms, width_ms, ends)

    def bucket(self, arrival_ms: int) -> int | None:
        """1-based bucket of an arrival at or after now; None past the horizon."""
        if arrival_ms > self.ends[-1]:
            return None
        return min(len(self.ends), max(1, -(-(arrival_ms - self.start_ms) // self.width_ms)))


@dataclass(slots=True)
class _Evaluation:
    """One SKU for one demand: per-site amounts and the limits over them."""

    site_ids: list[str]
    # Promisable now per site, after per-site deductions (before group limits).
    now: list[int]
    group_limits: list[_Limit]
    # Total now after group limits, and each limit's bound now.
    total_now: int
    bounds_now: list[int]
    # Cumulative totals per bucket after group limits (non-decreasing).
    bucket_totals: list[int]
    # Per site by the horizon (before group limits), and the bounds then.
    by_horizon: list[int]
    bounds_horizon: list[int]
    stale: bool
    # When the first counted site's data passes the staleness bound.
    fresh_until_ms: int


_NO_BALANCES: dict[str, SiteBalance] = {}
_NO_SUPPLIES: dict[str, Supply] = {}


def _evaluate(
    scope: _Scope,
    sku: str,
    window: _Window | None,
    explanations: list[Explanation] | None,
    exclude_sites: frozenset[str] = frozenset(),
) -> _Evaluation:
    """Per-site terms, group limits and (with a window) the buckets for one SKU.

    Explanations, when asked for, are one per term: supply per supply, rules
    per rule (summed over the sites they applied at), on-hand and obtainable
    summed over sites, staleness per site. Per-site figures are in the
    sourcing options; `site_promisable` explains one site in full. (Keeping
    the list short keeps the rendered answer inside the latency budget.)
    """
    catalog, order, now_ms = scope.catalog, scope.order, scope.now_ms
    balances = scope.view.by_sku.get(sku) or _NO_BALANCES
    # Candidate sites, in pool order: pool sites with a balance or (with a
    # window) supply of the SKU.
    supplies_at: dict[str, list[Supply]] = {}
    if window is not None:
        for supply in catalog.supplies_by_sku.get(sku, _NO_SUPPLIES).values():
            if supply.site_id in order:
                supplies_at.setdefault(supply.site_id, []).append(supply)
    if len(balances) * 4 < len(order):
        # Few sites hold the SKU: look them up, then sort by preference.
        found = {site_id: order[site_id] for site_id in balances if site_id in order}
        for site_id in supplies_at:
            found[site_id] = order[site_id]
        site_ids = sorted(found, key=found.__getitem__)
    elif supplies_at:
        site_ids = [s for s in order if s in balances or s in supplies_at]
    else:
        site_ids = [s for s in order if s in balances]
    if exclude_sites:
        site_ids = [s for s in site_ids if s not in exclude_sites]
    count = len(site_ids)
    site_balances = [balances.get(site_id) for site_id in site_ids]
    # SiteBalance.hub_free, inlined: this runs for every site of every line.
    hub_free = [
        0 if b is None or b.hub_reserved >= b.hub_share else b.hub_share - b.hub_reserved
        for b in site_balances
    ]

    # Future supply, by bucket: [(site position, units arriving)].
    arrivals: dict[int, list[tuple[int, int]]] = {}
    incoming: list[int] | None = None
    supply_terms: list[Explanation] = []
    if supplies_at:
        assert window is not None
        incoming = [0] * count
        for position, site_id in enumerate(site_ids):
            for supply in supplies_at.get(site_id, ()):
                arrival_ms = max(supply.available_from_ms(now_ms), now_ms)
                bucket = window.bucket(arrival_ms)
                if bucket is None:
                    continue
                arrivals.setdefault(bucket, []).append((position, supply.quantity))
                incoming[position] += supply.quantity
                if explanations is not None:
                    supply_terms.append(
                        Explanation(
                            _SUPPLY_KINDS.get(supply.type, ExplanationKind.PURCHASE_ORDER),
                            site_id,
                            supply.quantity,
                            f"{supply.supply_id}: available from {_iso(arrival_ms)}",
                        )
                    )

    # Per-site deductions, only where something could be counted.
    rules = _sort_rules(catalog, sku, scope.demand, now_ms)
    tallies: dict[str, _Tally] | None = {} if explanations is not None else None
    deducted: list[int] | None = None
    now = hub_free
    if rules.per_site:
        counted = [
            position
            for position in range(count)
            if hub_free[position] or (incoming is not None and incoming[position])
        ]
        if rules.everywhere:
            deducted = _deductions_everywhere(rules, site_ids, site_balances, counted, tallies)
        else:
            deducted = [0] * count
            for position in counted:
                deducted[position] = _deductions(
                    scope, rules, site_ids[position], site_balances[position], tallies
                )
        now = [
            free - gone if free > gone else 0 for free, gone in zip(hub_free, deducted, strict=True)
        ]

    # Staleness of the sites whose on-hand the answer counts.
    stale = False
    stale_terms: list[Explanation] = []
    stale_before_ms = now_ms - scope.stale_after_ms
    oldest_ms = now_ms
    view_sites = scope.view.sites
    for position, free in enumerate(hub_free):
        if free:
            state = view_sites.get(site_ids[position])
            if state is not None and 0 < state.last_applied_ms < oldest_ms:
                oldest_ms = state.last_applied_ms
            if (
                state is None
                or state.last_applied_ms <= 0
                or state.last_applied_ms < stale_before_ms
            ):
                stale = True
                if explanations is not None:
                    detail = _stale_detail(scope, site_ids[position]) or ""
                    stale_terms.append(
                        Explanation(ExplanationKind.STALE, site_ids[position], free, detail)
                    )

    group_limits: list[_Limit] = []
    for rule in rules.group_limits:
        if rule.site_id or rule.pool_id:
            positions = [
                position for position, site_id in enumerate(site_ids) if scope.covers(rule, site_id)
            ]
        else:
            positions = list(range(count))
        if positions:
            used = catalog.cap_used(rule, now_ms)
            is_cap = rule.type == RuleType.CAP
            group_limits.append(_Limit(rule, is_cap, used, max(0, rule.quantity - used), positions))
    group_limits.sort(key=lambda limit: len(limit.positions))
    total_now, bounds_now = _apply_limits(now, group_limits)

    bucket_totals: list[int] = []
    by_horizon = now
    bounds_horizon = bounds_now
    if window is not None and not arrivals:
        bucket_totals = [total_now] * len(window.ends)
    elif window is not None:
        running = total_now
        by_horizon = now.copy()
        cumulative = [0] * count
        for bucket in range(1, len(window.ends) + 1):
            arriving = arrivals.get(bucket)
            if arriving:
                for position, quantity in arriving:
                    cumulative[position] += quantity
                    gone = deducted[position] if deducted is not None else 0
                    by_horizon[position] = max(0, hub_free[position] + cumulative[position] - gone)
                total, bounds_horizon = _apply_limits(by_horizon, group_limits)
                # What is promisable by an earlier date still is by a later one.
                running = max(running, total)
            bucket_totals.append(running)

    if explanations is not None:
        assert tallies is not None
        _explain(
            scope,
            explanations,
            site_ids,
            site_balances,
            hub_free,
            now,
            supply_terms,
            rules,
            tallies,
            group_limits,
            bounds_now,
            stale_terms,
        )
    return _Evaluation(
        site_ids,
        now,
        group_limits,
        total_now,
        bounds_now,
        bucket_totals,
        by_horizon,
        bounds_horizon,
        stale,
        oldest_ms + scope.stale_after_ms + 1,
    )


def _explain(
    scope: _Scope,
    out: list[Explanation],
    site_ids: list[str],
    site_balances: list[SiteBalance | None],
    hub_free: list[int],
    now: list[int],
    supply_terms: list[Explanation],
    rules: _Rules,
    tallies: dict[str, _Tally],
    group_limits: list[_Limit],
    bounds_now: list[int],
    stale_terms: list[Explanation],
) -> None:
    """The answer's terms in a fixed order: on-hand, supply, per-site rules,
    limits over many sites, obtainable, staleness."""
    free_sites = [position for position, free in enumerate(hub_free) if free]
    if len(free_sites) == 1:
        position = free_sites[0]
        out.append(
            Explanation(
                ExplanationKind.ON_HAND, site_ids[position], hub_free[position], "free hub share"
            )
        )
    else:
        out.append(
            Explanation(
                ExplanationKind.ON_HAND,
                "",
                sum(hub_free),
                f"free hub share at {len(free_sites)} of {len(site_ids)} sites",
            )
        )
    out.extend(supply_terms)
    _rule_terms(scope, rules, tallies, out)
    for limit, bound in zip(group_limits, bounds_now, strict=True):
        rule = limit.rule
        if limit.is_cap:
            covered = sum(now[position] for position in limit.positions)
            out.append(
                Explanation(
                    ExplanationKind.CAP,
                    rule.site_id,
                    limit.remaining,
                    f"rule {rule.rule_id}: at most {_period(rule)} for {_group(rule)};"
                    f" {limit.used} used this period"
                    + (f"; limits {covered} to {bound}" if covered > bound else ""),
                )
            )
        else:
            out.append(
                Explanation(
                    ExplanationKind.PROTECTION,
                    rule.site_id,
                    limit.remaining,
                    f"rule {rule.rule_id}: {_period(rule)} kept for {_group(rule)};"
                    f" {limit.used} used this period",
                )
            )
    local_total = local_sites = 0
    local_site = ""
    for position, b in enumerate(site_balances):
        if b is not None:
            # SiteBalance.local_free, inlined.
            local_free = b.local_share - b.reserved_soft - b.reserved_hard
            if local_free > 0:
                local_total += local_free
                local_sites += 1
                local_site = site_ids[position]
    if local_total:
        out.append(
            Explanation(
                ExplanationKind.OBTAINABLE,
                local_site if local_sites == 1 else "",
                local_total,
                "free local share the edge could return on request"
                if local_sites == 1
                else f"free local share {local_sites} edges could return on request",
            )
        )
    out.extend(stale_terms)


# ----- public ------------------------------------------------------------------------


def site_promisable(
    catalog: Catalog,
    view: HubView,
    sku: str,
    site_id: str,
    demand: Demand,
    now_ms: int,
) -> tuple[int, list[Explanation]]:
    """What the demand may take from one site's hub share now, and why.

    The hub's free share (ON_HAND) minus safety stock, buffers kept for
    higher priorities and other groups' protections naming this site; never
    negative. Caps, and protections over several sites, limit totals rather
    than one site: `check` and `allocate` apply them.
    """
    scope = _Scope(catalog, view, demand, now_ms, {}, {})
    balance = view.by_sku.get(sku, _NO_BALANCES).get(site_id)
    free = balance.hub_free if balance is not None else 0
    detail = (
        f"hub share {balance.hub_share}, {balance.hub_reserved} of it promised"
        if balance is not None
        else "the hub holds no share here"
    )
    explanations = [Explanation(ExplanationKind.ON_HAND, site_id, free, detail)]
    rules = _sort_rules(catalog, sku, demand, now_ms)
    tallies: dict[str, _Tally] = {}
    deduction = _deductions(scope, rules, site_id, balance, tallies)
    _rule_terms(scope, rules, tallies, explanations)
    return max(0, free - deduction), explanations


def usage_rules(catalog: Catalog, sku: str, site_id: str, demand: Demand) -> list[Rule]:
    """Caps and protections of the demand's group that a promise of `sku` from
    the site draws on: record its units against each (`Catalog.record_usage`)."""
    scope = _Scope(catalog, HubView(), demand, 0, {}, {})
    return [
        rule
        for rule in catalog.rules_for(sku)
        if rule.type in (RuleType.CAP, RuleType.PROTECTION)
        and rule.in_group(demand.channel, demand.customer_tier)
        and scope.covers(rule, site_id)
    ]


@dataclass(frozen=True, slots=True)
class CheckRequest:
    """A validated availability check: every line's item known, quantities in base units."""

    lines: tuple[tuple[LineQuery, HubItem, int], ...]
    demand: Demand
    horizon_days: int
    bucket_days: int
    include_substitutes: bool
    stale_after_ms: int
    sourcing_max: int

    def key(self, index: int) -> tuple[object, ...]:
        """What line `index`'s answer depends on besides the data (`inputs`) and the clock."""
        _query, item, requested = self.lines[index]
        return (
            item.sku,
            requested,
            self.demand,
            self.horizon_days,
            self.bucket_days,
            self.include_substitutes,
            self.stale_after_ms,
            self.sourcing_max,
        )


def validate(
    catalog: Catalog,
    view: HubView,
    queries: Sequence[LineQuery],
    demand: Demand,
    *,
    horizon_days: int = HORIZON_DAYS_DEFAULT,
    bucket_days: int = BUCKET_DAYS_DEFAULT,
    include_substitutes: bool = False,
    stale_after_ms: int = STALE_AFTER_MS_DEFAULT,
    sourcing_max: int = SOURCING_OPTIONS_MAX,
) -> CheckRequest:
    """Checks every line before any is answered; one error names every bad field.

    Raises:
        InvalidArgument: bad lines, horizon or bucket width (field paths such as
            `lines[2].unit`; too many lines is ERROR_REASON_TOO_MANY_LINES).
        UnknownSku: a line names a SKU the hub does not know.
    """
    assert stale_after_ms >= 0
    assert sourcing_max >= 0
    violations = Violations()
    if not queries:
        violations.add("lines", "at least one line is required")
    elif len(queries) > limits.LINES_PER_REQUEST_MAX:
        violations.add(
            "lines",
            f"{len(queries)} lines is above the limit of {limits.LINES_PER_REQUEST_MAX}",
            "ERROR_REASON_TOO_MANY_LINES",
        )
    if horizon_days == 0:
        horizon_days = HORIZON_DAYS_DEFAULT
    if not 0 < horizon_days <= HORIZON_DAYS_MAX:
        violations.add("horizon_days", f"must be between 0 and {HORIZON_DAYS_MAX}")
        horizon_days = HORIZON_DAYS_DEFAULT
    if bucket_days == 0:
        bucket_days = BUCKET_DAYS_DEFAULT
    if not 0 < bucket_days <= horizon_days:
        violations.add("bucket_days", f"must be between 0 and the horizon ({horizon_days} days)")
    unknown: list[tuple[str, str]] = []
    lines: list[tuple[LineQuery, HubItem, int]] = []
    for index, query in enumerate(queries[: limits.LINES_PER_REQUEST_MAX]):
        item, base = _convert(catalog, view, query, f"lines[{index}]", violations, unknown)
        if item is not None:
            lines.append((query, item, base))
    violations.raise_if_any()
    if unknown:
        raise _unknown_sku(*unknown[0])
    return CheckRequest(
        tuple(lines),
        demand,
        horizon_days,
        bucket_days,
        include_substitutes,
        stale_after_ms,
        sourcing_max,
    )


class Answerer:
    """Answers a validated request's lines against one state of the view and
    catalogue at one instant (build a new one after either changes)."""

    __slots__ = ("_request", "_scope", "_window")

    def __init__(self, catalog: Catalog, view: HubView, request: CheckRequest, now_ms: int):
        self._request = request
        self._scope = _Scope.build(catalog, view, request.demand, now_ms, request.stale_after_ms)
        self._window = _Window.build(now_ms, request.horizon_days, request.bucket_days)

    def answer(self, index: int) -> LineAnswer:
        request = self._request
        query, item, requested = request.lines[index]
        return _answer(
            self._scope,
            self._window,
            query,
            item,
            requested,
            request.include_substitutes,
            request.sourcing_max,
        )


def inputs(
    catalog: Catalog, view: HubView, request: CheckRequest, index: int
) -> tuple[object, ...]:
    """Everything line `index`'s answer is computed from besides `CheckRequest.key`
    and the clock: while these are equal and the answer's `valid_until_ms` has
    not passed, recomputing it gives the same answer, so it may be reused.

    The catalogue counts as one value (its generation); the view as its epoch,
    its number of sites (sites serve when no pool is defined) and the version
    of the SKU (and of its substitutes, when they are asked for), which moves
    whenever one of the SKU's balances is handed out for change. Site
    freshness is in `valid_until_ms`.
    """
    item = request.lines[index][1]
    versions = view.sku_versions
    if request.include_substitutes and item.substitutes:
        return (
            catalog.generation,
            view.epoch,
            len(view.sites),
            versions.get(item.sku, 0),
            *(versions.get(substitute.sku, 0) for substitute in item.substitutes),
        )
    return (catalog.generation, view.epoch, len(view.sites), versions.get(item.sku, 0))


def check(
    catalog: Catalog,
    view: HubView,
    queries: Sequence[LineQuery],
    demand: Demand,
    now_ms: int,
    *,
    horizon_days: int = HORIZON_DAYS_DEFAULT,
    bucket_days: int = BUCKET_DAYS_DEFAULT,
    include_substitutes: bool = False,
    stale_after_ms: int = STALE_AFTER_MS_DEFAULT,
    sourcing_max: int = SOURCING_OPTIONS_MAX,
) -> list[LineAnswer]:
    """Available-to-promise for every line, in request order.

    Lines are answered independently (two lines of one SKU each see all of
    it): ATP reads, `Promise` consumes. At most `sourcing_max` sourcing
    options per line, best first. Raises what `validate` raises.
    """
    request = validate(
        catalog,
        view,
        queries,
        demand,
        horizon_days=horizon_days,
        bucket_days=bucket_days,
        include_substitutes=include_substitutes,
        stale_after_ms=stale_after_ms,
        sourcing_max=sourcing_max,
    )
    answerer = Answerer(catalog, view, request, now_ms)
    return [answerer.answer(index) for index in range(len(request.lines))]


def _answer(
    scope: _Scope,
    window: _Window,
    query: LineQuery,
    item: HubItem,
    requested: int,
    include_substitutes: bool,
    sourcing_max: int,
) -> LineAnswer:
    explanations: list[Explanation] = []
    evaluation = _evaluate(scope, item.sku, window, explanations)
    total_now = evaluation.total_now
    available_now = item.round_down(total_now)
    if available_now < total_now:
        explanations.append(
            Explanation(
                ExplanationKind.ORDER_MULTIPLE,
                "",
                total_now - available_now,
                f"rounded {total_now} down to {available_now} (order multiple"
                f" {item.order_multiple}, minimum {item.order_minimum})",
            )
        )
    buckets = tuple(
        (until_ms, available_now if total == total_now else item.round_down(total))
        for until_ms, total in zip(window.ends, evaluation.bucket_totals, strict=True)
    )

    sourcing = _sourcing(scope, item, evaluation, requested, sourcing_max)

    now_ms = scope.now_ms
    valid_until_ms = min(now_ms - now_ms % MINUTE_MS + MINUTE_MS, evaluation.fresh_until_ms)
    substitutes: tuple[tuple[str, int, int], ...] = ()
    if include_substitutes and item.substitutes:
        found = []
        for substitute in item.substitutes:
            other = scope.catalog.items.get(substitute.sku) or HubItem(substitute.sku)
            other_evaluation = _evaluate(scope, substitute.sku, None, None)
            valid_until_ms = min(valid_until_ms, other_evaluation.fresh_until_ms)
            other_now = other.round_down(other_evaluation.total_now)
            found.append((substitute.sku, other_now, substitute.covers(other_now)))
        substitutes = tuple(found)

    return LineAnswer(
        query.line_id,
        item.sku,
        requested,
        available_now,
        buckets,
        sourcing,
        tuple(explanations),
        substitutes,
        evaluation.stale,
        0 if evaluation.stale else valid_until_ms,
    )


def _sourcing(
    scope: _Scope, item: HubItem, evaluation: _Evaluation, requested: int, sourcing_max: int
) -> tuple[SiteOption, ...]:
    """Sites that can fill the whole line now first (shortest lead time, then most
    available), then the rest by most available now, then by the horizon."""
    count = len(evaluation.site_ids)
    nows = evaluation.now
    laters = evaluation.by_horizon
    bound_now = _site_bounds(count, evaluation.group_limits, evaluation.bounds_now)
    bound_horizon = _site_bounds(count, evaluation.group_limits, evaluation.bounds_horizon)
    if bound_now is not None and bound_horizon is not None:
        nows = [a if a < b else b for a, b in zip(nows, bound_now, strict=True)]
        laters = [a if a < b else b for a, b in zip(laters, bound_horizon, strict=True)]
    multiple = item.order_multiple
    if multiple > 1:
        nows = [units - units % multiple for units in nows]
        laters = [units - units % multiple for units in laters]
    # A cap can bound the horizon below now only through rounding; never report less.
    laters = [b if b > a else a for a, b in zip(nows, laters, strict=True)]
    sites = scope.catalog.sites
    lead_times = [
        0 if (site := sites.get(site_id)) is None else site.lead_time_days
        for site_id in evaluation.site_ids
    ]
    fill = sorted(
        (lead_times[position], -nows[position], position)
        for position in range(count)
        if nows[position] >= requested
    )
    chosen = [key[-1] for key in fill[:sourcing_max]]
    if len(chosen) < sourcing_max:
        rest = sorted(
            (-nows[position], -laters[position], lead_times[position], position)
            for position in range(count)
            if nows[position] < requested and laters[position] > 0
        )
        chosen.extend(key[-1] for key in rest[: sourcing_max - len(chosen)])
    return tuple(
        SiteOption(
            evaluation.site_ids[position], nows[position], laters[position], lead_times[position]
        )
        for position in chosen
    )


def allocate(
    catalog: Catalog,
    view: HubView,
    sku: str,
    quantity: int,
    demand: Demand,
    now_ms: int,
    *,
    exclude_sites: frozenset[str] = frozenset(),
) -> list[tuple[str, int]]:
    """How the hub would source `quantity` base units of `sku` from what is promisable now.

    One site that covers it all when there is one (shortest lead time, then
    most available, then pool order); otherwise a greedy split, most available
    first. Each allocation is a whole order multiple where that still fills
    the line; caps of the demand's group and other groups' protections hold
    over the allocations together. Returns what it can: the sum may be less
    than `quantity` (the order minimum is the caller's to enforce), and no
    site gets more than its `site_promisable`.
    """
    if quantity <= 0:
        return []
    scope = _Scope.build(catalog, view, demand, now_ms)
    evaluation = _evaluate(scope, sku, None, None, exclude_sites)
    count = len(evaluation.site_ids)
    if not count:
        return []
    bounds = _site_bounds(count, evaluation.group_limits, evaluation.bounds_now)
    available = (
        evaluation.now
        if bounds is None
        else [min(now, bound) for now, bound in zip(evaluation.now, bounds, strict=True)]
    )
    lead_times = [scope.lead_time_days(site_id) for site_id in evaluation.site_ids]

    whole = [position for position in range(count) if available[position] >= quantity]
    if whole:
        best = min(
            whole, key=lambda position: (lead_times[position], -available[position], position)
        )
        return [(evaluation.site_ids[best], quantity)]

    covering: list[list[int]] = [[] for _ in range(count)]
    for index, limit in enumerate(evaluation.group_limits):
        for position in limit.positions:
            covering[position].append(index)
    room_left = list(evaluation.bounds_now)
    ranked = sorted(
        (position for position in range(count) if available[position] > 0),
        key=lambda position: (-available[position], lead_times[position], position),
    )
    item = catalog.items.get(sku)
    multiple = item.order_multiple if item is not None else 0
    taken = [0] * count

    def fill(order: list[int], need: int, whole: int) -> int:
        """Takes up to `need` from the sites in `order` (in multiples of
        `whole` when above 1) within every limit; returns what is still needed."""
        for position in order:
            if not need:
                break
            room = min(need, available[position] - taken[position])
            for index in covering[position]:
                room = min(room, room_left[index])
            if whole > 1:
                room -= room % whole
            if room <= 0:
                continue
            taken[position] += room
            need -= room
            for index in covering[position]:
                room_left[index] -= room
        return need

    need = fill(ranked, quantity, multiple)
    if need and multiple > 1:
        # What whole multiples cannot fill comes from the sites with the most
        # left, so the fewest allocations break the multiple.
        leftovers = sorted(ranked, key=lambda position: taken[position] - available[position])
        fill(leftovers, need, 0)
    allocations = [
        (evaluation.site_ids[position], taken[position]) for position in ranked if taken[position]
    ]
    assert sum(units for _site_id, units in allocations) <= quantity
    return allocations
