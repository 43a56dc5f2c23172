"""What must hold once a chaos run has healed, checked against the real processes.

`settle()` waits (on conditions, with a deadline) until every process is up,
every edge's backlog is on the bus, the hub applied every site's last entry,
every hub command was applied, no grant is in flight, the quota loops are at
rest and the sweeper expired every due soft reservation. `snapshot()` then
reads each edge's whole ledger, balances and reservations and the hub's view.
The checks are plain functions over the snapshot and the recorded history:

* acknowledged writes: the ledger entries carrying the request_id are exactly
  the ones the acknowledged reply reported (present exactly once); writes
  whose outcome is unknown are present at most once (one contiguous run of
  entries, one reservation); refused writes left no entry; replaying an
  acknowledged request_id returns the stored reply;
* hub commands: every grant the hub acknowledged is applied by its edge
  exactly once, no command is applied twice, every command is applied, and
  nothing is left in flight;
* strict escrow over the whole history: folding each ledger, at every command
  boundary reserved <= local share and reserved <= sellable on-hand (no unit
  was ever promised beyond physical stock), and the fold equals the balances
  the edge serves;
* the hub's view equals each edge's ledger and no checksum drift was seen;
* no unit owned twice: local + hub share + in flight <= sellable + recorded
  shortfall, on the hub's durable view (read from its database once stopped);
* every expired soft reservation was released;
* `PRAGMA integrity_check` is ok on every database.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc.aio

from stockd.v1 import common_pb2, edge_pb2, hub_pb2
from tests.chaos.harness import (
    EXPIRY_SLACK_SECONDS,
    SETTLE_POLL_SECONDS,
    SETTLE_STABLE_SECONDS,
    ChaosRun,
    check_replay,
    resend,
)
from tests.chaos.history import CallRecord, Outcome

PAGE_SIZE: Final = 1000
PAGES_MAX: Final = 100_000
T = common_pb2
EVENT_BEARING: Final = frozenset(
    {"Receive", "Release", "Pick", "RecordCount", "ChangeStatus", "Adjust", "Transfer"}
)
SHARES_ADOPTED: Final = "shares_adopted"


@dataclass
class SiteSnapshot:
    site_id: str
    status: edge_pb2.GetSyncStatusResponse
    availability: dict[str, common_pb2.SkuAvailability]
    availability_sequence: int
    events: list[common_pb2.LedgerEvent]
    reservations: list[common_pb2.Reservation]
    hub_site: hub_pb2.SiteSyncStatus | None
    hub_balances: dict[str, hub_pb2.SiteBalance]
    taken_at_wall_seconds: float


@dataclass
class Snapshot:
    sites: dict[str, SiteSnapshot] = field(default_factory=dict)
    # False when the cluster never came to rest: the hub and the edges are then
    # compared only where a moving system must still agree.
    settled: bool = True


# ----- settling ------------------------------------------------------------------


async def settle(run: ChaosRun) -> list[str]:
    """Heals everything and waits until the cluster is at rest; returns what is not."""
    await run.cluster.heal()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + run.config.settle_timeout_seconds
    stable_since: float | None = None
    last_seen: tuple[int, ...] | None = None
    problems: list[str] = ["not polled yet"]
    previous: list[str] = []
    while loop.time() < deadline:
        try:
            problems, sequences = await _unsettled(run)
        except grpc.aio.AioRpcError as error:
            problems, sequences = [f"unreachable: {error.code().name}"], ()
        if problems and problems != previous:
            run.settle_log.append(f"{run.now():.1f}s {'; '.join(problems[:6])}")
        previous = problems
        if problems:
            stable_since = None
        elif stable_since is None or sequences != last_seen:
            stable_since = loop.time()  # at rest from now on, unless something moves
        elif loop.time() - stable_since >= SETTLE_STABLE_SECONDS:
            return []
        last_seen = sequences
        # Poll interval of a condition loop, not synchronisation by sleep.
        await asyncio.sleep(SETTLE_POLL_SECONDS)
    return problems or ["ledgers kept moving: no quiet stretch of the settle window"]


async def _unsettled(run: ChaosRun) -> tuple[list[str], tuple[int, ...]]:
    problems: list[str] = []
    sequences: list[int] = []
    timeout = run.config.call_timeout_seconds
    hub = run.cluster.hub.stub
    sites = {
        site.site_id: site
        for site in (await hub.ListSites(hub_pb2.ListSitesRequest(), timeout=timeout)).sites
    }
    now = time.time()
    for site_id in run.config.sites:
        edge = run.cluster.edges[site_id].stub
        status = await edge.GetSyncStatus(edge_pb2.GetSyncStatusRequest(), timeout=timeout)
        sequences.append(status.last_sequence)
        if not status.connected or status.backlog_events:
            problems.append(
                f"{site_id}: connected={status.connected} backlog={status.backlog_events}"
            )
        hub_site = sites.get(site_id)
        if hub_site is None:
            problems.append(f"{site_id}: unknown to the hub")
            continue
        if hub_site.applied_sequence != status.last_sequence or hub_site.repairing:
            problems.append(
                f"{site_id}: hub applied {hub_site.applied_sequence} of {status.last_sequence}"
                f"{' (repairing)' if hub_site.repairing else ''}"
            )
        if hub_site.next_command_sequence - 1 != status.applied_command_sequence:
            problems.append(
                f"{site_id}: edge applied command {status.applied_command_sequence} of "
                f"{hub_site.next_command_sequence - 1}"
            )
        balances = await hub.GetSiteBalances(
            hub_pb2.GetSiteBalancesRequest(site_id=site_id, skus=list(run.config.skus)),
            timeout=timeout,
        )
        for balance in balances.balances:
            free = balance.local_share - balance.reserved_soft - balance.reserved_hard
            if balance.in_flight:
                problems.append(f"{site_id}/{balance.sku}: {balance.in_flight} in flight")
            if free > run.config.quota_high_water:
                problems.append(f"{site_id}/{balance.sku}: surplus {free} not yet returned")
            if free < run.config.quota_low_water and balance.hub_share > 0:
                problems.append(f"{site_id}/{balance.sku}: quota request pending")
        for reservation in await all_reservations(run, site_id, T.RESERVATION_STATE_OPEN):
            if (
                reservation.kind == T.RESERVATION_KIND_SOFT
                and reservation.expires_at.seconds + EXPIRY_SLACK_SECONDS < now
            ):
                problems.append(f"{site_id}: {reservation.reservation_id} not yet expired")
                break
    return problems, tuple(sequences)


# ----- reading everything ----------------------------------------------------------


async def all_events(run: ChaosRun, site_id: str) -> list[common_pb2.LedgerEvent]:
    stub = run.cluster.edges[site_id].stub
    request = edge_pb2.ListEventsRequest(page_size=PAGE_SIZE)
    events: list[common_pb2.LedgerEvent] = []
    for _ in range(PAGES_MAX):
        page = await stub.ListEvents(request, timeout=run.config.call_timeout_seconds * 4)
        events.extend(page.events)
        if not page.next_page_token:
            return events
        request.page_token = page.next_page_token
    raise AssertionError("ListEvents never ended")


async def all_reservations(
    run: ChaosRun, site_id: str, state: int = 0
) -> list[common_pb2.Reservation]:
    stub = run.cluster.edges[site_id].stub
    request = edge_pb2.ListReservationsRequest(page_size=PAGE_SIZE, state=state)  # type: ignore[arg-type]
    found: list[common_pb2.Reservation] = []
    for _ in range(PAGES_MAX):
        page = await stub.ListReservations(request, timeout=run.config.call_timeout_seconds * 4)
        found.extend(page.reservations)
        if not page.next_page_token:
            return found
        request.page_token = page.next_page_token
    raise AssertionError("ListReservations never ended")


async def snapshot(run: ChaosRun) -> Snapshot:
    """Each edge (balances, then its ledger, reservations and status), then the hub.

    Balances are read first and say which sequence they reflect; the ledger,
    read after, is append-only, so its prefix up to that sequence is exactly
    what the balances fold (the projection check uses that prefix even if
    entries were appended in between).
    """
    timeout = run.config.call_timeout_seconds * 4
    result = Snapshot()
    for site_id in run.config.sites:
        stub = run.cluster.edges[site_id].stub
        availability = await stub.GetAvailability(
            edge_pb2.GetAvailabilityRequest(skus=list(run.config.skus)), timeout=timeout
        )
        events = await all_events(run, site_id)
        reservations = await all_reservations(run, site_id)
        status = await stub.GetSyncStatus(edge_pb2.GetSyncStatusRequest(), timeout=timeout)
        result.sites[site_id] = SiteSnapshot(
            site_id=site_id,
            status=status,
            availability={entry.sku: entry for entry in availability.availability},
            availability_sequence=availability.as_of_sequence,
            events=events,
            reservations=reservations,
            hub_site=None,
            hub_balances={},
            taken_at_wall_seconds=time.time(),
        )
    hub = run.cluster.hub.stub
    sites = {
        site.site_id: site
        for site in (await hub.ListSites(hub_pb2.ListSitesRequest(), timeout=timeout)).sites
    }
    for site_id, site in result.sites.items():
        site.hub_site = sites.get(site_id)
        balances = await hub.GetSiteBalances(
            hub_pb2.GetSiteBalancesRequest(site_id=site_id, skus=list(run.config.skus)),
            timeout=timeout,
        )
        site.hub_balances = {balance.sku: balance for balance in balances.balances}
    return result


# ----- checks over the snapshot and the history -------------------------------------------


def _entries(events: Sequence[common_pb2.LedgerEvent]) -> list[tuple[int, int, str, int, str]]:
    return sorted((e.sequence, e.type, e.sku, e.quantity, e.reservation_id) for e in events)


def _reserve_entries(events: Sequence[common_pb2.LedgerEvent]) -> list[tuple[int, str, int, str]]:
    return sorted((e.type, e.sku, e.quantity, e.reservation_id) for e in events)


def expected_entries(record: CallRecord) -> list[tuple[int, int, str, int, str]] | None:
    """The entries an acknowledged reply reports; None for Reserve (compared apart)."""
    if record.rpc == "Reserve":
        return None
    if record.rpc not in EVENT_BEARING:
        return []
    from tests.chaos.harness import RESPONSE_TYPES

    response = RESPONSE_TYPES[record.rpc].FromString(record.response)
    return _entries(response.events)  # type: ignore[attr-defined]


def check_writes_exactly_once(run: ChaosRun, snap: Snapshot) -> None:
    for site_id, site in snap.sites.items():
        by_request: dict[str, list[common_pb2.LedgerEvent]] = {}
        for event in site.events:
            if event.request_id:
                by_request.setdefault(event.request_id, []).append(event)
        attempts = run.history.by_request(f"edge-{site_id}")
        for request_id, tries in attempts.items():
            found = by_request.pop(request_id, [])
            _check_request(run, site_id, tries, found)
        extra = sorted(by_request)
        run.check(
            "ledger_entries_come_from_recorded_requests",
            not extra,
            lambda s=site_id, e=extra: f"{s}: entries carry request_ids never sent: {e[:5]}",
        )


def _check_request(
    run: ChaosRun, site_id: str, tries: list[CallRecord], found: list[common_pb2.LedgerEvent]
) -> None:
    oks = [record for record in tries if record.outcome is Outcome.OK]
    first = tries[0]
    if oks:
        run.check(
            "replay_returns_stored_response",
            all(record.response == oks[0].response for record in oks),
            lambda: f"{site_id} {first.rpc} {first.request_id}: acknowledged twice, differently",
            oks,
        )
        acked = oks[0]
        if acked.rpc == "Reserve":
            response = edge_pb2.ReserveResponse.FromString(acked.response)
            reservation = response.reservation
            expected = sorted(
                (T.EVENT_TYPE_RESERVED, line.sku, line.quantity_reserved,
                 reservation.reservation_id)
                for line in reservation.lines
            ) if response.HasField("reservation") else []  # fmt: skip
            actual: list[tuple[int, str, int, str]] | list[tuple[int, int, str, int, str]] = (
                _reserve_entries(found)
            )
            equal = expected == actual
        else:
            expected_other = expected_entries(acked)
            actual = _entries(found)
            equal = expected_other == actual
            expected = expected_other  # type: ignore[assignment]
        run.check(
            "acknowledged_write_present_exactly_once",
            equal,
            lambda: (
                f"{site_id} {acked.rpc} {acked.request_id}: reply reported {expected}, "
                f"ledger holds {actual}"
            ),
            tries,
        )
        return
    if all(record.outcome is Outcome.REFUSED for record in tries):
        run.check(
            "refused_write_left_nothing",
            not found,
            lambda: f"{site_id} {first.rpc} {first.request_id}: refused, yet ledger holds "
            f"{_entries(found)}",
            tries,
        )
        return
    sequences = sorted(event.sequence for event in found)
    contiguous = not sequences or sequences[-1] - sequences[0] + 1 == len(sequences)
    reservations = {event.reservation_id for event in found if event.type == T.EVENT_TYPE_RESERVED}
    run.check(
        "unknown_write_at_most_once",
        contiguous and len(reservations) <= 1,
        lambda: (
            f"{site_id} {first.rpc} {first.request_id}: outcome unknown, ledger holds it "
            f"more than once: {_entries(found)}"
        ),
        tries,
    )


def check_hub_commands(run: ChaosRun, snap: Snapshot) -> None:
    grants: dict[tuple[str, int], list[int]] = {}
    returns: Counter[tuple[str, int]] = Counter()
    for site_id, site in snap.sites.items():
        for event in site.events:
            if not event.reference.startswith("cmd:"):
                continue
            key = (site_id, int(event.reference[4:]))
            if event.type == T.EVENT_TYPE_QUOTA_GRANTED:
                grants.setdefault(key, []).append(event.quantity)
            elif event.type == T.EVENT_TYPE_QUOTA_RETURNED:
                returns[key] += 1
        hub_site = site.hub_site
        newest = hub_site.next_command_sequence - 1 if hub_site is not None else 0
        if not snap.settled:
            continue
        run.check(
            "every_hub_command_applied",
            site.status.applied_command_sequence == newest,
            lambda s=site_id, n=newest, a=site.status.applied_command_sequence: (
                f"{s}: edge applied command {a}, hub issued {n}"
            ),
        )
    for key, quantities in sorted(grants.items()):
        run.check(
            "hub_command_applied_at_most_once",
            len(quantities) == 1,
            lambda k=key, q=quantities: f"grant command {k} applied {len(q)} times: {q}",
        )
    for key, times in sorted(returns.items()):
        run.check(
            "hub_command_applied_at_most_once",
            times == 1,
            lambda k=key, t=times: f"recall command {k} applied {t} times",
        )
    for request_id, tries in run.history.by_request("hub").items():
        oks = [record for record in tries if record.outcome is Outcome.OK]
        if not oks or oks[0].rpc != "GrantQuota":
            continue
        request = hub_pb2.GrantQuotaRequest.FromString(oks[0].request)
        response = hub_pb2.GrantQuotaResponse.FromString(oks[0].response)
        key = (request.site_id, response.command_sequence)
        landed = grants.get(key)
        if not snap.settled and landed is None:
            continue  # may still be on its way; applied twice is checked above
        run.check(
            "acknowledged_grant_applied_exactly_once",
            landed == [request.quantity],
            lambda k=key, q=request.quantity, r=request_id: (
                f"grant {r} (command {k}, {q} units) applied as {grants.get(k)}"
            ),
            tries,
        )


@dataclass
class Folded:
    sellable: int = 0
    total: int = 0
    reserved_soft: int = 0
    reserved_hard: int = 0
    local_share: int = 0

    @property
    def reserved(self) -> int:
        return self.reserved_soft + self.reserved_hard


def fold(
    run: ChaosRun, site_id: str, events: Sequence[common_pb2.LedgerEvent]
) -> dict[str, Folded]:
    """An independent fold of a ledger, checking strict escrow at command boundaries.

    One command's entries share its request_id and recording time, so the
    invariants are checked where that pair changes (entries inside one
    command may pass through states no reader ever sees).
    """
    balances: dict[str, Folded] = {}
    touched: set[str] = set()
    group: tuple[str, int] | None = None
    previous_sequence = 0
    for event in events:
        run.check(
            "ledger_sequence_gapless",
            event.sequence == previous_sequence + 1,
            lambda e=event, p=previous_sequence: f"{site_id}: entry {e.sequence} after {p}",
        )
        previous_sequence = event.sequence
        key = (event.request_id, event.recorded_at.ToMilliseconds())
        if group is not None and key != group:
            _check_boundary(run, site_id, balances, touched, event.sequence - 1)
            touched = set()
        group = key
        balance = balances.setdefault(event.sku, Folded())
        touched.add(event.sku)
        balance.local_share += event.local_share_delta
        sellable = event.status == T.STOCK_STATUS_SELLABLE
        kind = event.type
        if kind in (T.EVENT_TYPE_RECEIVED, T.EVENT_TYPE_ADJUSTED, T.EVENT_TYPE_COUNTED):
            balance.total += event.quantity
            balance.sellable += event.quantity if sellable else 0
        elif kind == T.EVENT_TYPE_STATUS_CHANGED:
            balance.sellable -= event.quantity if sellable else 0
            balance.sellable += event.quantity if event.to_status == T.STOCK_STATUS_SELLABLE else 0
        elif kind == T.EVENT_TYPE_TRANSFERRED_OUT:
            balance.total -= event.quantity
            balance.sellable -= event.quantity if sellable else 0
        elif kind == T.EVENT_TYPE_TRANSFERRED_IN:
            balance.total += event.quantity
            balance.sellable += event.quantity if sellable else 0
        elif kind in (T.EVENT_TYPE_RESERVED, T.EVENT_TYPE_RELEASED, T.EVENT_TYPE_EXPIRED,
                      T.EVENT_TYPE_PICKED):  # fmt: skip
            sign = 1 if kind == T.EVENT_TYPE_RESERVED else -1
            if event.reservation_kind == T.RESERVATION_KIND_HARD:
                balance.reserved_hard += sign * event.quantity
            else:
                balance.reserved_soft += sign * event.quantity
            if kind == T.EVENT_TYPE_PICKED:
                balance.sellable -= event.quantity
                balance.total -= event.quantity
    if group is not None:
        _check_boundary(run, site_id, balances, touched, previous_sequence)
    return balances


def _check_boundary(
    run: ChaosRun, site_id: str, balances: dict[str, Folded], touched: set[str], sequence: int
) -> None:
    for sku in touched:
        balance = balances[sku]
        run.check(
            "history_reserved_within_local_share",
            balance.reserved <= balance.local_share,
            lambda b=balance, k=sku: (
                f"{site_id}/{k} after entry {sequence}: reserved {b.reserved} > "
                f"local share {b.local_share}"
            ),
        )
        run.check(
            "history_reserved_within_physical_stock",
            balance.reserved <= balance.sellable,
            lambda b=balance, k=sku: (
                f"{site_id}/{k} after entry {sequence}: reserved {b.reserved} > "
                f"sellable on-hand {b.sellable}"
            ),
        )


def check_history_and_projection(run: ChaosRun, snap: Snapshot) -> None:
    for site_id, site in snap.sites.items():
        prefix = [e for e in site.events if e.sequence <= site.availability_sequence]
        folded = fold(run, site_id, prefix)
        for sku in run.config.skus:
            mine = site.availability[sku]
            theirs = folded.get(sku, Folded())
            served = (mine.on_hand_sellable, mine.on_hand_total, mine.reserved_soft,
                      mine.reserved_hard, mine.local_share)  # fmt: skip
            computed = (theirs.sellable, theirs.total, theirs.reserved_soft,
                        theirs.reserved_hard, theirs.local_share)  # fmt: skip
            run.check(
                "projection_equals_log_fold",
                served == computed,
                lambda s=site_id, k=sku, a=served, b=computed: (
                    f"{s}/{k}: served (sellable, total, soft, hard, local) {a} != fold of "
                    f"the ledger {b}"
                ),
            )


def check_hub_view(run: ChaosRun, snap: Snapshot) -> None:
    for site_id, site in snap.sites.items():
        for sku in run.config.skus:
            mine = site.availability[sku]
            reserved = mine.reserved_soft + mine.reserved_hard
            run.check(
                "reserved_within_local_share",
                reserved <= mine.local_share,
                lambda s=site_id, k=sku, r=reserved, m=mine: (
                    f"{s}/{k}: reserved {r} > local share {m.local_share}"
                ),
            )
        if not snap.settled:
            continue  # converges_after_healing already failed; the views differ
        hub_site = site.hub_site
        run.check(
            "hub_caught_up",
            hub_site is not None
            and hub_site.applied_sequence == site.status.last_sequence
            and site.status.backlog_events == 0,
            lambda s=site_id, h=hub_site, e=site.status: (
                f"{s}: hub applied {h.applied_sequence if h else None}, edge last "
                f"{e.last_sequence}, backlog {e.backlog_events}"
            ),
        )
        run.check(
            "no_checksum_drift",
            hub_site is not None and hub_site.drift_detected == 0,
            lambda s=site_id, h=hub_site: (
                f"{s}: the hub detected drift {h.drift_detected if h else '?'} time(s) "
                "(and repaired by replay)"
            ),
        )
        for sku in run.config.skus:
            mine = site.availability[sku]
            theirs = site.hub_balances.get(sku)
            edge_view = (mine.on_hand_sellable, mine.on_hand_total, mine.reserved_soft,
                         mine.reserved_hard, mine.local_share)  # fmt: skip
            hub_view = (
                (theirs.on_hand_sellable, theirs.on_hand_total, theirs.reserved_soft,
                 theirs.reserved_hard, theirs.local_share)
                if theirs is not None else None
            )  # fmt: skip
            run.check(
                "hub_view_equals_ledger",
                edge_view == hub_view,
                lambda s=site_id, k=sku, a=edge_view, b=hub_view: (
                    f"{s}/{k}: edge (sellable, total, soft, hard, local) {a} != hub {b}"
                ),
            )
            in_flight = theirs.in_flight if theirs is not None else 0
            run.check(
                "nothing_in_flight_after_healing",
                in_flight == 0,
                lambda s=site_id, k=sku, f=in_flight: f"{s}/{k}: {f} granted units never landed",
            )


def check_expiry(run: ChaosRun, snap: Snapshot) -> None:
    for site_id, site in snap.sites.items():
        late = [
            r.reservation_id
            for r in site.reservations
            if r.state == T.RESERVATION_STATE_OPEN
            and r.kind == T.RESERVATION_KIND_SOFT
            and r.expires_at.seconds + EXPIRY_SLACK_SECONDS < site.taken_at_wall_seconds
        ]
        run.check(
            "expired_reservations_released",
            not late,
            lambda s=site_id, ids=late: f"{s}: soft reservations open past expiry: {ids[:10]}",
        )
        for reservation in site.reservations:
            held = sum(line.quantity_held for line in reservation.lines)
            run.check(
                "reservation_resolved_exactly_once",
                (reservation.state == T.RESERVATION_STATE_OPEN) == (held > 0)
                and all(
                    line.quantity_reserved
                    == line.quantity_held + line.quantity_picked + line.quantity_released
                    for line in reservation.lines
                ),
                lambda s=site_id, r=reservation: (
                    f"{s}: reservation {r.reservation_id} state {r.state} lines {list(r.lines)}"
                ),
            )


async def check_replays(run: ChaosRun, snap: Snapshot) -> None:
    """Replays acknowledged writes (a sample per edge, every hub write): stored replies."""
    rng = random.Random(f"{run.config.seed}:final-replays")
    targets = [f"edge-{site}" for site in run.config.sites] + ["hub"]
    for target in targets:
        acked: list[CallRecord] = []
        for tries in run.history.by_request(target).values():
            oks = [record for record in tries if record.outcome is Outcome.OK]
            if oks:
                acked.append(oks[0])
        if target != "hub" and len(acked) > run.config.replays_per_site_max:
            acked = rng.sample(acked, run.config.replays_per_site_max)
        for original in acked:
            record = await resend(run, original, "final_replay")
            if record is not None:
                check_replay(run, original, record)


# ----- offline checks (processes stopped) -------------------------------------------------


def check_integrity(run: ChaosRun, paths: Sequence[Path]) -> None:
    for path in paths:
        connection = sqlite3.connect(path)
        try:
            rows = connection.execute("PRAGMA integrity_check").fetchall()
        finally:
            connection.close()
        run.check(
            "sqlite_integrity_ok",
            rows == [("ok",)],
            lambda p=path, r=rows: f"{p.name}: integrity_check says {r[:5]}",
        )


def check_hub_escrow(run: ChaosRun, hub_db: Path, snap: Snapshot) -> None:
    """No unit owned twice, on the hub's durable view; it also equals what the hub served."""
    connection = sqlite3.connect(hub_db)
    try:
        rows = connection.execute(
            "SELECT site_id, sku, sellable, local_share, hub_share, in_flight, shortfall "
            "FROM site_balances"
        ).fetchall()
    finally:
        connection.close()
    deficits = [(site_id, sku, row[-1]) for site_id, sku, *row in rows if row[-1]]
    run.notes.append(
        f"shrink deficits the hub recorded (DESIGN rule 6): {len(deficits)} of {len(rows)} "
        f"site/SKU rows, {sum(units for _s, _k, units in deficits)} units"
        + (f" {deficits[:6]}" if deficits else "")
    )
    for site_id, sku, sellable, local, hub_share, in_flight, shortfall in rows:
        owned = local + hub_share + in_flight
        run.check(
            "no_unit_owned_twice",
            owned <= sellable + shortfall,
            lambda s=site_id, k=sku, o=owned, v=(local, hub_share, in_flight): (
                f"{s}/{k}: local {v[0]} + hub {v[1]} + in flight {v[2]} = {o} > "
                f"sellable + recorded shortfall"
            ),
        )
        served = snap.sites.get(site_id)
        balance = served.hub_balances.get(sku) if served is not None else None
        if balance is not None and snap.settled:
            served_values = (balance.on_hand_sellable, balance.local_share, balance.hub_share,
                             balance.in_flight)  # fmt: skip
            stored_values = (sellable, local, hub_share, in_flight)
            run.check(
                "hub_durable_view_equals_served_view",
                served_values == stored_values,
                lambda s=site_id, k=sku, a=served_values, b=stored_values: (
                    f"{s}/{k}: served (sellable, local, hub, in flight) {a} != stored {b}"
                ),
            )


LIVE_CHECKS: Final = (
    check_writes_exactly_once,
    check_hub_commands,
    check_history_and_projection,
    check_hub_view,
    check_expiry,
)
