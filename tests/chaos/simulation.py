"""Deterministic simulation of the escrow protocol: pure domain, hostile network.

Three edge ledgers (`EdgeLedger` in hub mode) and the hub (`HubView`) exchange
ledger entries, checksums, quota requests, hub commands and acknowledgements
over a simulated network that drops, duplicates, delays (and so reorders)
messages and partitions sites. Edges crash (their projection is rebuilt from
the log with `replay`, their volatile sync position falls back to the last
durable one). Everything is driven by one `random.Random(seed)`: no asyncio,
no I/O, no wall clock, so a failing seed replays exactly:

    python -m tests.chaos.simulation --seed 1234 --trace

The transport is deliberately more hostile than JetStream (end-to-end
retransmission over a lossy, reordering network): the domain's contract is
what is tested (entries applied once and in order per site, commands applied
once and in order per site, units owned by exactly one side), not the bus.

Invariants (the same ones the process-level harness checks):

* strict escrow at every step: per site and SKU, reserved <= local share and
  reserved <= sellable on-hand;
* no unit owned twice, at every few steps, with the hub's knowledge brought
  up to date hypothetically (entries it has not seen yet applied on paper):
  local_share + hub_share + in_flight <= sellable + shortfall (the recorded
  shrink deficit, DESIGN rule 6);
* the projection equals the fold of the log (checked at every edge crash);
* after healing: the hub's view equals each ledger, nothing is in flight,
  checksums match, every grant command is applied exactly once and every
  recall at most once, every acknowledged write is in the log exactly once,
  and no soft reservation is open past its expiry.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import random
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from edge_agent.adapters.nats_sync import balance_digest
from edge_agent.domain import commands as c
from edge_agent.domain.ledger import Decision, EdgeLedger, replay
from hub.domain import atp
from hub.domain.answer_cache import AnswerCache, answer_lines
from hub.domain.catalog import Catalog, Demand, HubItem
from hub.domain.view import Command, HubView
from server.domain import limits
from server.domain.errors import StockdError
from server.domain.model import (
    AdjustmentReason,
    EventType,
    Item,
    LedgerEvent,
    ReservationKind,
    Sku,
    StockStatus,
)

EPOCH_MS: Final = 1_700_000_000_000
ADOPTED_REASON: Final = "shares_adopted"
TRACE_TAIL_LINES: Final = 80
# How many entries one events message carries, and messages per publish tick.
EVENTS_PER_MESSAGE_MAX: Final = 16
MESSAGES_PER_TICK_MAX: Final = 4
COMMANDS_PER_TICK_MAX: Final = 16
HEAL_TICKS_MAX: Final = 4000


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulated run. Probabilities are per message or per step."""

    seed: int
    sites: int = 3
    steps: int = 260
    step_ms_max: int = 60
    drop_probability: float = 0.12
    duplicate_probability: float = 0.1
    delay_ms_max: int = 300
    # A few messages are delayed far longer (reordering across many steps).
    long_delay_probability: float = 0.04
    long_delay_ms_max: int = 4000
    partition_probability: float = 0.02
    partition_ms_max: int = 4000
    crash_probability: float = 0.01
    # Forces HubView.start_repair (what checksum drift triggers).
    repair_probability: float = 0.0
    hub_demand_probability: float = 0.12
    resend_ms: int = 400
    checksum_ms: int = 700
    quota_ms: int = 500
    sweep_ms: int = 200
    replay_request_ms: int = 1000
    quota_low_water: int = 3
    quota_high_water: int = 25
    conservation_every_steps: int = 3


@dataclass(frozen=True, slots=True)
class SimItem:
    sku: str
    safety_stock: int = 0


ITEMS: Final = (SimItem("A"), SimItem("B", safety_stock=2))


# ----- messages ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventsMessage:
    site_id: str
    events: tuple[LedgerEvent, ...]


@dataclass(frozen=True, slots=True)
class ChecksumMessage:
    site_id: str
    as_of_sequence: int
    sku_count: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class QuotaRequestMessage:
    site_id: str
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class EventsAck:
    site_id: str
    applied_sequence: int


@dataclass(frozen=True, slots=True)
class CommandMessage:
    command: Command


@dataclass(frozen=True, slots=True)
class CommandAck:
    site_id: str
    applied_command_sequence: int


ToHub = EventsMessage | ChecksumMessage | QuotaRequestMessage | CommandAck
ToEdge = EventsAck | CommandMessage


@dataclass(order=True, slots=True)
class InTransit:
    deliver_at_ms: int
    order: int
    site_id: str = field(compare=False)
    to_hub: bool = field(compare=False)
    message: ToHub | ToEdge = field(compare=False)


class SimulationViolation(Exception):
    """An invariant did not hold; carries its name and the evidence."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


# ----- network -------------------------------------------------------------------


@dataclass
class Network:
    """Loses, duplicates and delays messages; partitions sites."""

    rng: random.Random
    config: SimConfig
    heap: list[InTransit] = field(default_factory=list)
    partitioned_until_ms: dict[str, int] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)
    _order: int = 0
    healed: bool = False

    def partitioned(self, site_id: str, now_ms: int) -> bool:
        return self.partitioned_until_ms.get(site_id, 0) > now_ms

    def send(self, now_ms: int, site_id: str, to_hub: bool, message: ToHub | ToEdge) -> None:
        self.stats["sent"] += 1
        if self.partitioned(site_id, now_ms):
            self.stats["lost_to_partition"] += 1
            return
        if not self.healed and self.rng.random() < self.config.drop_probability:
            self.stats["dropped"] += 1
            return
        copies = 1
        if not self.healed and self.rng.random() < self.config.duplicate_probability:
            copies = 2
            self.stats["duplicated"] += 1
        for _ in range(copies):
            if not self.healed and self.rng.random() < self.config.long_delay_probability:
                delay = self.rng.randint(self.config.delay_ms_max, self.config.long_delay_ms_max)
                self.stats["long_delayed"] += 1
            else:
                delay = self.rng.randint(0, self.config.delay_ms_max)
            self._order += 1
            heapq.heappush(
                self.heap, InTransit(now_ms + delay, self._order, site_id, to_hub, message)
            )

    def due(self, now_ms: int) -> list[InTransit]:
        """Messages whose time has come; those reaching a partitioned site are lost."""
        ready: list[InTransit] = []
        while self.heap and self.heap[0].deliver_at_ms <= now_ms:
            item = heapq.heappop(self.heap)
            if self.partitioned(item.site_id, now_ms):
                self.stats["lost_to_partition"] += 1
                continue
            self.stats["delivered"] += 1
            ready.append(item)
        return ready


# ----- the sites ---------------------------------------------------------------------


@dataclass
class SimEdge:
    """One site's ledger, its log (the durable outbox) and its sync positions."""

    site_id: str
    ledger: EdgeLedger
    log: list[LedgerEvent] = field(default_factory=list)
    acked: int = 0
    durable_acked: int = 0
    sent_upto: int = 0
    resend_at_ms: int = 0
    applied_command: int = 0
    next_sweep_ms: int = 0
    next_checksum_ms: int = 0
    next_quota_ms: int = 0
    last_quota_request_ms: dict[str, int] = field(default_factory=dict)
    crashes: int = 0


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """An acknowledged write: which entries it made (by sequence)."""

    site_id: str
    request_id: str
    kind: str
    sequences: tuple[int, ...]


@dataclass
class SimResult:
    seed: int
    replay_command: str = ""
    steps: int = 0
    operations: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    network: Counter[str] = field(default_factory=Counter)
    invariants_checked: Counter[str] = field(default_factory=Counter)
    violation: SimulationViolation | None = None
    trace: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.violation is None

    def trace_digest(self) -> str:
        return hashlib.sha256("\n".join(self.trace).encode()).hexdigest()

    def describe(self) -> str:
        """The failure with its seed, the replay command and the tail of the trace."""
        if self.violation is None:
            return f"seed {self.seed}: ok"
        tail = "\n".join(self.trace[-TRACE_TAIL_LINES:])
        return (
            f"simulation seed {self.seed} violated {self.violation.invariant}: "
            f"{self.violation.detail}\n"
            f"replay: {self.replay_command}\n"
            f"last {TRACE_TAIL_LINES} trace lines:\n{tail}"
        )


def reference_digest(ledger: EdgeLedger) -> tuple[int, int, bytes]:
    """The balance digest, as the edge adapter publishes it."""
    return balance_digest(ledger)


def balance_fields(ledger: EdgeLedger, sku: str) -> tuple[int, int, int, int, int]:
    balance = ledger.balance(sku)
    return (
        balance.sellable,
        balance.total,
        balance.reserved_soft,
        balance.reserved_hard,
        ledger.local_share(sku),
    )


# ----- the simulation -------------------------------------------------------------------


class Simulation:
    """One seeded run; `run()` returns the result (never raises for a violation)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.now_ms = EPOCH_MS
        self.network = Network(self.rng, config)
        self.hub = HubView()
        # ATP over the hub's view: answers reused across steps must stay exact.
        self.catalog = Catalog(items={item.sku: HubItem(item.sku) for item in ITEMS})
        self.answers: AnswerCache[atp.LineAnswer] = AnswerCache()
        self.hub_outbox: dict[str, list[Command]] = {}
        self.hub_acked_command: dict[str, int] = {}
        self.hub_resend_at_ms: dict[str, int] = {}
        self.hub_replay_asked_ms: dict[str, int] = {}
        self.edges: dict[str, SimEdge] = {}
        self.result = SimResult(config.seed, replay_command(config))
        self.writes: list[WriteRecord] = []
        self.grants_issued: dict[tuple[str, int], int] = {}
        self.recalls_issued: set[tuple[str, int]] = set()
        self._request_counter = 0
        self._reservation_counter = 0
        self.skus = tuple(item.sku for item in ITEMS)
        for index in range(config.sites):
            site_id = f"S{index + 1}"
            ledger = EdgeLedger(site_id, hub_mode=True)
            for item in ITEMS:
                ledger.upsert_item(Item(Sku(item.sku), safety_stock=item.safety_stock))
            ledger.drain_dirty()
            self.edges[site_id] = SimEdge(site_id, ledger)
            self.hub_outbox[site_id] = []
            self.hub_acked_command[site_id] = 0

    # -- bookkeeping

    def trace(self, line: str) -> None:
        self.result.trace.append(f"{self.now_ms - EPOCH_MS:>7} {line}")

    def _request_id(self) -> str:
        self._request_counter += 1
        return f"q{self._request_counter}"

    def _check(self, invariant: str, condition: bool, detail: Callable[..., str]) -> None:
        self.result.invariants_checked[invariant] += 1
        if not condition:
            raise SimulationViolation(invariant, detail())

    # -- running

    def run(self) -> SimResult:
        try:
            self._setup()
            for step in range(self.config.steps):
                self.result.steps = step + 1
                self._step(step)
            self._heal()
            self._final_checks()
        except SimulationViolation as violation:
            self.result.violation = violation
            self.trace(f"VIOLATION {violation}")
        except AssertionError as error:
            # A domain assertion is a programmer error surfaced by the run.
            self.result.violation = SimulationViolation("domain_assertion", repr(error))
            self.trace(f"VIOLATION domain assertion {error!r}")
        self.result.network = self.network.stats
        return self.result

    def _setup(self) -> None:
        for edge in self.edges.values():
            lines = tuple(
                c.ReceiptLine(sku, self.rng.randint(5, 30)) for sku in self.skus
            )
            self._write(edge, "receive", c.Receive(lines, reference="initial"))

    def _step(self, step: int) -> None:
        self.now_ms += self.rng.randint(1, self.config.step_ms_max)
        self._faults()
        self._deliver()
        self._traffic()
        self._periodic()
        self._check_edges()
        if step % self.config.conservation_every_steps == 0:
            self._check_conservation()
            self._check_atp_reuse()

    # -- faults

    def _faults(self) -> None:
        config = self.config
        if self.rng.random() < config.partition_probability:
            site_id = self.rng.choice(sorted(self.edges))
            if not self.network.partitioned(site_id, self.now_ms):
                until = self.now_ms + self.rng.randint(300, config.partition_ms_max)
                self.network.partitioned_until_ms[site_id] = until
                self.result.faults["partition"] += 1
                self.trace(f"{site_id} FAULT partition until {until - EPOCH_MS}")
        if self.rng.random() < config.crash_probability:
            self._crash_edge(self.edges[self.rng.choice(sorted(self.edges))])
        if config.repair_probability and self.rng.random() < config.repair_probability:
            site_id = self.rng.choice(sorted(self.edges))
            if site_id in self.hub.sites:
                self.hub.start_repair(site_id, "sim_forced_repair")
                self.result.faults["hub_repair"] += 1
                self.trace(f"hub FAULT start_repair {site_id}")
                self._drain_hub()

    def _crash_edge(self, edge: SimEdge) -> None:
        """kill -9: the ledger survives on disk; the projection is rebuilt from the log."""
        before = edge.ledger
        rebuilt = replay(edge.site_id, list(before.items.values()), edge.log)
        rebuilt.hub_mode = True
        for sku in sorted(set(before.balances) | set(rebuilt.balances)):
            mine, folded = before.balance(sku), rebuilt.balance(sku)
            self._check(
                "projection_equals_log_fold",
                balance_fields(before, sku) == balance_fields(rebuilt, sku)
                and mine.on_hand == folded.on_hand,
                lambda sku=sku: (
                    f"{edge.site_id}/{sku}: projection {balance_fields(before, sku)} "
                    f"!= fold {balance_fields(rebuilt, sku)}"
                ),
            )
        self._check(
            "projection_equals_log_fold",
            sorted(before.reservations) == sorted(rebuilt.reservations),
            lambda: f"{edge.site_id}: open reservations differ after replay",
        )
        edge.ledger = rebuilt
        edge.acked = edge.durable_acked
        edge.sent_upto = edge.acked
        edge.crashes += 1
        self.result.faults["edge_crash"] += 1
        self.trace(f"{edge.site_id} FAULT crash; resumes sync from {edge.acked}")

    # -- edge writes

    def _write(
        self,
        edge: SimEdge,
        kind: str,
        command: c.Command,
        *,
        internal: bool = False,
        command_sequence: int = 0,
    ) -> Decision | None:
        request_id = "" if internal else self._request_id()
        ctx = c.Context(now_ms=self.now_ms, actor="system" if internal else "sim",
                        request_id=request_id)  # fmt: skip
        try:
            decision = edge.ledger.decide(command, ctx)
        except StockdError as error:
            self.result.operations[f"{kind}:{error.reason_name}"] += 1
            self.trace(f"{edge.site_id} {kind} {request_id} refused {error.reason_name}")
            return None
        for event in decision.events:
            edge.ledger.evolve(event)
            edge.log.append(event)
        edge.ledger.drain_dirty()
        self.result.operations[f"{kind}:ok"] += 1
        sequences = tuple(event.sequence for event in decision.events)
        if not internal:
            self.writes.append(WriteRecord(edge.site_id, request_id, kind, sequences))
        summary = ",".join(
            f"{event.type.name}:{event.sku}:{event.quantity}:{event.local_share_delta}"
            for event in decision.events
        )
        self.trace(f"{edge.site_id} {kind} {request_id or command_sequence} ok [{summary}]")
        return decision

    def _traffic(self) -> None:
        if self.rng.random() < self.config.hub_demand_probability:
            self._hub_demand()
            return
        edge = self.edges[self.rng.choice(sorted(self.edges))]
        operations: list[tuple[str, int]] = [
            ("receive", 12), ("reserve", 30), ("release", 12), ("pick", 14),
            ("count", 6), ("status", 6), ("adjust", 5), ("transfer", 4),
        ]  # fmt: skip
        name = self.rng.choices([n for n, _ in operations], [w for _, w in operations])[0]
        getattr(self, f"_op_{name}")(edge)

    def _op_receive(self, edge: SimEdge) -> None:
        sku = self.rng.choice(self.skus)
        status = StockStatus.DAMAGED if self.rng.random() < 0.1 else StockStatus.SELLABLE
        line = c.ReceiptLine(sku, self.rng.randint(1, 12), status=int(status))
        self._write(edge, "receive", c.Receive((line,), reference="po"))

    def _op_reserve(self, edge: SimEdge) -> None:
        skus = self.rng.sample(self.skus, self.rng.randint(1, len(self.skus)))
        hard = self.rng.random() < 0.4
        self._reservation_counter += 1
        command = c.Reserve(
            reservation_id=f"{edge.site_id}-r{self._reservation_counter}",
            lines=tuple(c.ReserveLine(sku, self.rng.randint(1, 6)) for sku in skus),
            kind=int(ReservationKind.HARD if hard else ReservationKind.SOFT),
            ttl_seconds=0 if hard else self.rng.randint(1, 3),
            allow_partial=self.rng.random() < 0.2,
        )
        self._write(edge, "reserve_hard" if hard else "reserve_soft", command)

    def _open_reservation(self, edge: SimEdge) -> str:
        open_ids = sorted(edge.ledger.reservations)
        if not open_ids or self.rng.random() < 0.05:
            return f"{edge.site_id}-r{self.rng.randint(1, self._reservation_counter + 1)}"
        return self.rng.choice(open_ids)

    def _op_release(self, edge: SimEdge) -> None:
        reservation_id = self._open_reservation(edge)
        reservation = edge.ledger.reservations.get(reservation_id)
        lines: tuple[c.QuantityLine, ...] = ()
        if reservation is not None and self.rng.random() < 0.5:
            held = [line for line in reservation.lines.values() if line.held]
            if held:
                line = self.rng.choice(held)
                lines = (c.QuantityLine(line.sku, self.rng.randint(1, line.held)),)
        self._write(edge, "release", c.Release(reservation_id, lines))

    def _op_pick(self, edge: SimEdge) -> None:
        reservation_id = self._open_reservation(edge)
        reservation = edge.ledger.reservations.get(reservation_id)
        lines: tuple[c.PickLine, ...] = (c.PickLine(self.skus[0], 1),)
        if reservation is not None:
            held = [line for line in reservation.lines.values() if line.held]
            if held:
                line = self.rng.choice(held)
                # Sometimes one more than held: refused with EXCEEDS_HELD.
                quantity = self.rng.randint(1, line.held + (1 if self.rng.random() < 0.1 else 0))
                lines = (c.PickLine(line.sku, quantity),)
        self._write(
            edge, "pick", c.Pick(reservation_id, lines, release_remainder=self.rng.random() < 0.3)
        )

    def _op_count(self, edge: SimEdge) -> None:
        sku = self.rng.choice(self.skus)
        recorded = edge.ledger.balance(sku).bucket("default", StockStatus.SELLABLE)
        counted = max(0, recorded + self.rng.randint(-5, 4))
        self._write(edge, "count", c.RecordCount(sku, counted))

    def _op_status(self, edge: SimEdge) -> None:
        sku = self.rng.choice(self.skus)
        damaged = edge.ledger.balance(sku).bucket("default", StockStatus.DAMAGED)
        if damaged and self.rng.random() < 0.4:
            command = c.ChangeStatus(
                sku, self.rng.randint(1, damaged), int(StockStatus.DAMAGED),
                int(StockStatus.SELLABLE),
            )  # fmt: skip
        else:
            command = c.ChangeStatus(
                sku, self.rng.randint(1, 3), int(StockStatus.SELLABLE), int(StockStatus.DAMAGED),
                release_reservations=self.rng.random() < 0.5,
            )  # fmt: skip
        self._write(edge, "status", command)

    def _op_adjust(self, edge: SimEdge) -> None:
        sku = self.rng.choice(self.skus)
        if self.rng.random() < 0.6:
            delta, reason = -self.rng.randint(1, 4), AdjustmentReason.SHRINK
        else:
            delta, reason = self.rng.randint(1, 4), AdjustmentReason.FOUND
        self._write(
            edge,
            "adjust",
            c.Adjust(sku, delta, int(reason), release_reservations=self.rng.random() < 0.5),
        )

    def _op_transfer(self, edge: SimEdge) -> None:
        sku = self.rng.choice(self.skus)
        destination = self.rng.choice(sorted(set(self.edges) - {edge.site_id}))
        quantity = self.rng.randint(1, 3)
        decision = self._write(
            edge, "transfer", c.Transfer(sku, quantity, to_site_id=destination, reference="to")
        )
        if decision is not None:
            line = c.ReceiptLine(sku, quantity)
            self._write(self.edges[destination], "receive", c.Receive((line,), reference="to"))

    # -- hub demand (stands in for OMS traffic until the hub promises)

    def _hub_demand(self) -> None:
        site_id = self.rng.choice(sorted(self.edges))
        sku = self.rng.choice(self.skus)
        if site_id not in self.hub.sites:
            return
        balance = self.hub.balances.get((site_id, sku))
        hub_share = balance.hub_share if balance is not None else 0
        if self.rng.random() < 0.55:
            quantity = self.rng.randint(1, 8)
            command = self.hub.recall(site_id, sku, quantity)
            self.recalls_issued.add((site_id, command.command_sequence))
            self.result.operations["hub_recall:ok"] += 1
            self.trace(f"hub recall {site_id}/{sku} {quantity} cmd {command.command_sequence}")
        else:
            quantity = self.rng.randint(1, hub_share + 2)
            try:
                command = self.hub.grant(site_id, sku, quantity)
            except StockdError as error:
                self.result.operations[f"hub_grant:{error.reason_name}"] += 1
                self.trace(f"hub grant {site_id}/{sku} {quantity} refused {error.reason_name}")
                return
            self.grants_issued[(site_id, command.command_sequence)] = quantity
            self.result.operations["hub_grant:ok"] += 1
            self.trace(f"hub grant {site_id}/{sku} {quantity} cmd {command.command_sequence}")
        self._drain_hub()

    def _drain_hub(self) -> None:
        _sites, _balances, commands, _settled = self.hub.drain()
        for command in commands:
            self.hub_outbox[command.site_id].append(command)
            self.network.send(self.now_ms, command.site_id, False, CommandMessage(command))

    # -- delivery

    def _deliver(self) -> None:
        for item in self.network.due(self.now_ms):
            message = item.message
            if item.to_hub:
                self._hub_receive(item.site_id, message)  # type: ignore[arg-type]
            else:
                self._edge_receive(self.edges[item.site_id], message)  # type: ignore[arg-type]

    def _hub_receive(self, site_id: str, message: ToHub) -> None:
        if isinstance(message, EventsMessage):
            outcome = self.hub.apply_batch(site_id, message.events, self.now_ms)
            if outcome.gap_from is not None:
                asked = self.hub_replay_asked_ms.get(site_id, 0)
                if self.now_ms - asked >= self.config.replay_request_ms:
                    self.hub_replay_asked_ms[site_id] = self.now_ms
                    self.hub._command(
                        site_id, "replay_request", from_sequence=outcome.gap_from, reason="gap"
                    )
                    self.trace(f"hub gap {site_id} asks replay from {outcome.gap_from}")
            applied = self.hub.sites[site_id].applied_sequence
            self.network.send(self.now_ms, site_id, False, EventsAck(site_id, applied))
        elif isinstance(message, ChecksumMessage):
            result = self.hub.check_checksum(
                site_id, message.as_of_sequence, message.sku_count, message.digest
            )
            self.result.operations[f"checksum:{result}"] += 1
            self._check(
                "no_checksum_drift",
                result != "drift",
                lambda: f"{site_id}: hub digest differs at sequence {message.as_of_sequence}",
            )
        elif isinstance(message, QuotaRequestMessage):
            balance = self.hub.balances.get((site_id, message.sku))
            if balance is not None and balance.hub_share > 0:
                quantity = min(message.quantity, balance.hub_share)
                command = self.hub.grant(site_id, message.sku, quantity)
                self.grants_issued[(site_id, command.command_sequence)] = quantity
                self.result.operations["quota_request_granted:ok"] += 1
                self.trace(
                    f"hub grants {site_id}/{message.sku} {quantity} on request "
                    f"cmd {command.command_sequence}"
                )
        else:
            self.hub_acked_command[site_id] = max(
                self.hub_acked_command[site_id], message.applied_command_sequence
            )
        self._drain_hub()

    def _edge_receive(self, edge: SimEdge, message: ToEdge) -> None:
        if isinstance(message, EventsAck):
            if message.applied_sequence > edge.acked:
                edge.acked = message.applied_sequence
                edge.resend_at_ms = self.now_ms + self.config.resend_ms
                edge.sent_upto = max(edge.sent_upto, edge.acked)
                # The acknowledged position is staged with a later batch.
                if self.rng.random() < 0.5:
                    edge.durable_acked = edge.acked
            return
        command = message.command
        sequence = command.command_sequence
        if sequence == edge.applied_command + 1:
            self._apply_command(edge, command)
            edge.applied_command = sequence
        if sequence <= edge.applied_command:
            self.network.send(
                self.now_ms, edge.site_id, True, CommandAck(edge.site_id, edge.applied_command)
            )

    def _apply_command(self, edge: SimEdge, command: Command) -> None:
        sequence = command.command_sequence
        if command.kind == "quota_grant":
            self._write(
                edge, "apply_grant", c.GrantQuota(command.sku, command.quantity, sequence),
                internal=True, command_sequence=sequence,
            )  # fmt: skip
        elif command.kind == "quota_recall":
            self._write(
                edge,
                "apply_recall",
                c.ReturnQuota(command.sku, command.quantity, reason="hub_recall",
                              command_sequence=sequence),
                internal=True,
                command_sequence=sequence,
            )  # fmt: skip
        elif command.kind == "replay_request":
            edge.acked = min(edge.acked, max(0, command.from_sequence - 1))
            edge.sent_upto = edge.acked
            self.trace(f"{edge.site_id} replays from {command.from_sequence}")

    # -- periodic work

    def _periodic(self) -> None:
        for site_id in sorted(self.edges):
            edge = self.edges[site_id]
            self._sweep(edge)
            self._publish(edge)
            self._quota(edge)
        for site_id in sorted(self.hub_outbox):
            self._resend_commands(site_id)

    def _sweep(self, edge: SimEdge) -> None:
        if self.now_ms < edge.next_sweep_ms:
            return
        edge.next_sweep_ms = self.now_ms + self.config.sweep_ms
        due = edge.ledger.next_expiry_ms()
        if due is not None and due <= self.now_ms:
            self._write(
                edge, "expire", c.ExpireDue(limit=limits.EXPIRIES_PER_SWEEP_MAX), internal=True
            )

    def _publish(self, edge: SimEdge) -> None:
        last = edge.ledger.last_sequence
        if edge.acked < last and self.now_ms >= edge.resend_at_ms:
            edge.sent_upto = edge.acked  # nothing acknowledged for a while: send again
            edge.resend_at_ms = self.now_ms + self.config.resend_ms
        for _ in range(MESSAGES_PER_TICK_MAX):
            if edge.sent_upto >= last:
                break
            chunk = tuple(edge.log[edge.sent_upto : edge.sent_upto + EVENTS_PER_MESSAGE_MAX])
            self.network.send(self.now_ms, edge.site_id, True, EventsMessage(edge.site_id, chunk))
            edge.sent_upto = chunk[-1].sequence
        if edge.acked == last and self.now_ms >= edge.next_checksum_ms:
            edge.next_checksum_ms = self.now_ms + self.config.checksum_ms
            as_of, count, digest = reference_digest(edge.ledger)
            self.network.send(
                self.now_ms, edge.site_id, True, ChecksumMessage(edge.site_id, as_of, count, digest)
            )

    def _quota(self, edge: SimEdge) -> None:
        """The edge's quota loop: cede surplus above high water, ask below low water."""
        if self.now_ms < edge.next_quota_ms or self.network.partitioned(edge.site_id, self.now_ms):
            return
        edge.next_quota_ms = self.now_ms + self.config.quota_ms
        low, high = self.config.quota_low_water, self.config.quota_high_water
        target = (low + high) // 2
        for sku in sorted(edge.ledger.balances):
            free = edge.ledger.local_free(sku)
            if free > high:
                self._write(
                    edge, "return_surplus",
                    c.ReturnQuota(sku, free - target, reason="above_high_water"), internal=True,
                )  # fmt: skip
            elif free < low:
                asked = edge.last_quota_request_ms.get(sku, -(10**12))
                if self.now_ms - asked >= self.config.quota_ms * 5:
                    edge.last_quota_request_ms[sku] = self.now_ms
                    self.network.send(
                        self.now_ms, edge.site_id, True,
                        QuotaRequestMessage(edge.site_id, sku, target - free),
                    )  # fmt: skip

    def _resend_commands(self, site_id: str) -> None:
        if self.now_ms < self.hub_resend_at_ms.get(site_id, 0):
            return
        self.hub_resend_at_ms[site_id] = self.now_ms + self.config.resend_ms
        pending = [
            command
            for command in self.hub_outbox[site_id]
            if command.command_sequence > self.hub_acked_command[site_id]
        ]
        for command in pending[:COMMANDS_PER_TICK_MAX]:
            self.network.send(self.now_ms, site_id, False, CommandMessage(command))

    # -- invariants

    def _check_edges(self) -> None:
        for site_id in sorted(self.edges):
            ledger = self.edges[site_id].ledger
            for sku in self.skus:
                balance = ledger.balance(sku)
                self._check(
                    "reserved_within_local_share",
                    balance.reserved <= ledger.local_share(sku),
                    lambda b=balance, s=site_id: (
                        f"{s}/{b.sku}: reserved {b.reserved} > local share {b.local_share}"
                    ),
                )
                self._check(
                    "reserved_within_physical_stock",
                    balance.reserved <= balance.sellable,
                    lambda b=balance, s=site_id: (
                        f"{s}/{b.sku}: reserved {b.reserved} > sellable {b.sellable}"
                    ),
                )

    def _check_atp_reuse(self) -> None:
        """A reused ATP answer equals a fresh one, whatever the hub applied since
        (entries, repairs, grants, recalls change balances through the view's own
        paths here)."""
        known = [sku for sku in self.skus if sku in self.hub.by_sku]
        if not known:
            return
        queries = [atp.LineQuery(sku, sku, 1) for sku in known]
        request = atp.validate(self.catalog, self.hub, queries, Demand())
        reused = answer_lines(
            self.catalog, self.hub, request, self.now_ms, self.answers, lambda answer: answer
        )
        fresh = atp.check(self.catalog, self.hub, queries, Demand(), self.now_ms)
        for old, new in zip(reused, fresh, strict=True):
            self._check(
                "atp_reuse_exact",
                replace(old, valid_until_ms=0) == replace(new, valid_until_ms=0),
                lambda old=old, new=new: f"reused {old} but a fresh answer is {new}",
            )

    def _check_conservation(self) -> None:
        """No unit owned twice, with the hub's knowledge brought up to date on paper."""
        for site_id in sorted(self.edges):
            edge = self.edges[site_id]
            state = self.hub.sites.get(site_id)
            applied = state.applied_sequence if state is not None else 0
            # During a repair the hub's shares already carry every entry up to
            # replay_until; only later entries are settled on paper.
            if state is not None:
                applied = max(applied, state.replay_until)
            settled = settle_hub_shares(self.hub, site_id, edge.log[applied:], self.skus)
            for sku in self.skus:
                hub_share, in_flight, shortfall = settled[sku]
                balance = edge.ledger.balance(sku)
                owned = balance.local_share + hub_share + in_flight
                self._check(
                    "no_unit_owned_twice",
                    owned <= balance.sellable + shortfall,
                    lambda s=site_id, k=sku, o=owned, b=balance, h=settled[sku]: (
                        f"{s}/{k}: local {b.local_share} + hub {h[0]} + in flight {h[1]} = {o} "
                        f"> sellable {b.sellable} + recorded shortfall {h[2]}"
                    ),
                )

    # -- healing and the final checks

    def _quiet(self) -> bool:
        if self.network.heap:
            return False
        for site_id, edge in self.edges.items():
            state = self.hub.sites.get(site_id)
            last = edge.ledger.last_sequence
            if state is None or state.applied_sequence != last or edge.acked != last:
                return False
            commands = self.hub_outbox[site_id]
            newest = commands[-1].command_sequence if commands else 0
            if edge.applied_command != newest or self.hub_acked_command[site_id] != newest:
                return False
            due = edge.ledger.next_expiry_ms()
            if due is not None and due <= self.now_ms:
                return False
        return True

    def _heal(self) -> None:
        """Partitions end, the network stops losing; time runs past every TTL."""
        self.network.partitioned_until_ms.clear()
        self.network.healed = True
        self.trace("HEAL")
        horizon = self.now_ms + 4_000
        for _ in range(HEAL_TICKS_MAX):
            self.now_ms += self.config.step_ms_max
            self._deliver()
            self._periodic()
            self._check_edges()
            if self.now_ms > horizon and self._quiet():
                return
        raise SimulationViolation(
            "converges_after_healing",
            "not quiet after healing: "
            + "; ".join(
                f"{site_id} last {edge.ledger.last_sequence} acked {edge.acked} hub "
                f"{state.applied_sequence if (state := self.hub.sites.get(site_id)) else 0}"
                f" cmd {edge.applied_command}/{len(self.hub_outbox[site_id])}"
                for site_id, edge in sorted(self.edges.items())
            ),
        )

    def _final_checks(self) -> None:
        self._check_conservation()
        for site_id in sorted(self.edges):
            edge = self.edges[site_id]
            for sku in self.skus:
                mine = balance_fields(edge.ledger, sku)
                theirs = self.hub.balances.get((site_id, sku))
                hub_fields = (
                    (theirs.sellable, theirs.total, theirs.reserved_soft, theirs.reserved_hard,
                     theirs.local_share)
                    if theirs is not None else (0, 0, 0, 0, 0)
                )  # fmt: skip
                self._check(
                    "hub_view_equals_ledger",
                    mine == hub_fields,
                    lambda s=site_id, k=sku, m=mine, h=hub_fields: f"{s}/{k}: edge {m} != hub {h}",
                )
                in_flight = theirs.in_flight if theirs is not None else 0
                self._check(
                    "nothing_in_flight_after_healing",
                    in_flight == 0,
                    lambda s=site_id, k=sku, f=in_flight: f"{s}/{k}: {f} units still in flight",
                )
            as_of, count, digest = reference_digest(edge.ledger)
            result = self.hub.check_checksum(site_id, as_of, count, digest)
            self._check(
                "checksum_matches_after_healing",
                result == "match",
                lambda s=site_id, r=result: f"{s}: checksum {r}",
            )
            open_due = [
                reservation.reservation_id
                for reservation in edge.ledger.reservations.values()
                if reservation.kind is ReservationKind.SOFT
                and reservation.expires_at_ms <= self.now_ms
            ]
            self._check(
                "expired_reservations_released",
                not open_due,
                lambda s=site_id, o=open_due: f"{s}: soft reservations open past expiry {o}",
            )
        self._check_exactly_once()

    def _check_exactly_once(self) -> None:
        by_request: dict[tuple[str, str], list[int]] = {}
        granted: Counter[tuple[str, int]] = Counter()
        returned: Counter[tuple[str, int]] = Counter()
        for site_id, edge in self.edges.items():
            for event in edge.log:
                if event.request_id:
                    by_request.setdefault((site_id, event.request_id), []).append(event.sequence)
                if event.reference.startswith("cmd:"):
                    key = (site_id, int(event.reference[4:]))
                    if event.type is EventType.QUOTA_GRANTED:
                        granted[key] += 1
                    elif event.type is EventType.QUOTA_RETURNED:
                        returned[key] += 1
        for write in self.writes:
            found = by_request.get((write.site_id, write.request_id), [])
            self._check(
                "acknowledged_write_present_once",
                tuple(found) == write.sequences,
                lambda w=write, f=found: (
                    f"{w.site_id} {w.kind} {w.request_id}: acknowledged entries {w.sequences}, "
                    f"log has {f}"
                ),
            )
        for key in sorted(self.grants_issued):
            self._check(
                "grant_applied_exactly_once",
                granted[key] == 1,
                lambda k=key: f"grant command {k} applied {granted[k]} times",
            )
        for key in sorted(self.recalls_issued):
            self._check(
                "recall_applied_at_most_once",
                returned[key] <= 1,
                lambda k=key: f"recall command {k} applied {returned[k]} times",
            )


def settle_hub_shares(
    hub: HubView, site_id: str, unseen: Sequence[LedgerEvent], skus: Sequence[str]
) -> dict[str, tuple[int, int, int]]:
    """(hub_share, in_flight, shortfall) per SKU once `unseen` entries reach the hub.

    An independent, on-paper model of what the hub does with escrow entries:
    a grant's entry settles its in-flight units, a return joins the hub
    share, shrink the edge did not absorb is charged to the hub share and
    past that recorded as shortfall.
    """
    settled: dict[str, list[int]] = {}
    for sku in skus:
        balance = hub.balances.get((site_id, sku))
        settled[sku] = (
            [balance.hub_share, balance.in_flight, balance.shortfall]
            if balance is not None
            else [0, 0, 0]
        )
    for event in unseen:
        values = settled.setdefault(event.sku, [0, 0, 0])
        if event.type is EventType.QUOTA_GRANTED and event.reference.startswith("cmd:"):
            grant = hub.grants_in_flight.get((site_id, int(event.reference[4:])))
            if grant is not None:
                values[1] -= grant[1]
        elif event.type is EventType.QUOTA_RETURNED and event.reason != ADOPTED_REASON:
            values[0] += event.quantity
        elif event.status is StockStatus.SELLABLE and (
            (event.type in (EventType.ADJUSTED, EventType.COUNTED) and event.quantity < 0)
            or event.type is EventType.STATUS_CHANGED
        ):
            shrink = -event.quantity if event.quantity < 0 else event.quantity
            deficit = shrink + event.local_share_delta
            if deficit > 0:
                taken = min(deficit, values[0])
                values[0] -= taken
                values[2] += deficit - taken
    return {sku: (values[0], values[1], values[2]) for sku, values in settled.items()}


def replay_command(config: SimConfig) -> str:
    """The command line that reruns `config` (the options main() understands)."""
    command = f"python -m tests.chaos.simulation --seed {config.seed} --trace"
    if config.steps != SimConfig(seed=0).steps:
        command += f" --steps {config.steps}"
    if config.repair_probability:
        command += f" --repair {config.repair_probability}"
    return command


def run_simulation(config: SimConfig) -> SimResult:
    return Simulation(config).run()


def run_seeds(seeds: Sequence[int], **overrides: object) -> list[SimResult]:
    """Runs one simulation per seed with the same overrides of `SimConfig`."""
    base = SimConfig(seed=0)
    return [run_simulation(replace(base, seed=seed, **overrides)) for seed in seeds]  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Replay simulation seeds of the escrow protocol.")
    parser.add_argument("--seed", type=int, action="append", help="seed to run (repeatable)")
    parser.add_argument("--seeds", type=int, default=0, help="run seeds 0..N-1")
    parser.add_argument("--steps", type=int, default=SimConfig(seed=0).steps)
    parser.add_argument("--repair", type=float, default=0.0, help="forced hub repair probability")
    parser.add_argument("--trace", action="store_true", help="print the whole trace")
    args = parser.parse_args(argv)
    seeds: list[int] = list(args.seed or []) + list(range(args.seeds))
    failures = 0
    totals: Counter[str] = Counter()
    for seed in seeds:
        result = run_simulation(SimConfig(seed=seed, steps=args.steps,
                                          repair_probability=args.repair))  # fmt: skip
        totals.update(result.operations)
        if args.trace:
            print("\n".join(result.trace))
        if not result.ok:
            failures += 1
            print(result.describe())
    print(f"seeds: {len(seeds)}  operations: {sum(totals.values())}  failures: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
