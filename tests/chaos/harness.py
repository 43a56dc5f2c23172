"""Process-level chaos: a hub, three edge agents and a nats-server as separate
processes on loopback, seeded random traffic, faults on a seeded schedule, and
the invariants of `tests.chaos.invariants` checked once everything has healed.

Topology: each edge reaches NATS through its own `TcpProxy`, so one site can be
cut off (refused, black-holed, slowed, reset) while the others keep syncing;
the hub talks to NATS directly. The harness talks gRPC to every process.

Traffic and faults are both registries, so later kinds plug in without
touching the runner:

    @traffic_kind("oms_promise", weight=10, description="OMS promises from the hub")
    async def oms_promise(run: ChaosRun, rng: random.Random) -> bool:
        ...  # call run.call(run.cluster.hub, ...); return False if it could not act

Until the hub promises (OMS demand is a later issue), hub demand is modelled
as the hub recalling share from a site (hub_share grows) and granting it back.

Clock jumps at an edge are not injected: the edge agent has no setting or
environment variable that offsets its wall clock (`EdgeEngine.clock` is fixed
to `time.time_ns` by `edge_agent.__main__`), and product code is out of
bounds for this harness. The report lists the fault as skipped.

Seeds fix the traffic each worker draws and the fault schedule; the
interleaving of real processes is not deterministic, so a seed reproduces the
run's shape, and the recorded history (JSON lines) is the exact evidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from server.sync.nats_server import NatsServer
from server.sync.tcp_proxy import TcpProxy
from stockd.v1 import common_pb2, edge_pb2, hub_pb2
from tests.chaos.history import (
    SERVER_ERROR_CODES,
    CallRecord,
    History,
    Outcome,
    classify,
    summarise_error,
)
from tests.chaos.processes import ChildProcess, EdgeNode, HarnessError, HubNode

R = TypeVar("R", bound=Message)

SELLABLE: Final = common_pb2.STOCK_STATUS_SELLABLE
DAMAGED: Final = common_pb2.STOCK_STATUS_DAMAGED
SOFT: Final = common_pb2.RESERVATION_KIND_SOFT
HARD: Final = common_pb2.RESERVATION_KIND_HARD
OPEN: Final = common_pb2.RESERVATION_STATE_OPEN

START_ATTEMPTS_MAX: Final = 3
SETTLE_POLL_SECONDS: Final = 0.5
SETTLE_STABLE_SECONDS: Final = 4.0
EXPIRY_SLACK_SECONDS: Final = 2.0
STOP_POLL_SECONDS: Final = 0.2
KINDS_TRIED_PER_SLOT_MAX: Final = 5
# Bounded memory for the pools traffic draws from.
POOL_SIZE_MAX: Final = 4000

# Traffic started inside a fault (a burst right before a kill) targets this edge.
PINNED_EDGE: contextvars.ContextVar[str | None] = contextvars.ContextVar("pinned", default=None)
BURST_KINDS: Final = ("receive", "reserve_soft", "reserve_hard", "pick", "release", "count")
BURST_CALLS_MAX: Final = 12
# Calls that are not offered load: they do not count toward operations_target.
NOT_TRAFFIC: Final = frozenset({"setup", "final_replay"})

UNSUPPORTED_FAULTS: Final = {
    "clock_jump": (
        "skipped: the edge agent has no wall-clock offset (no setting or environment "
        "variable; EdgeEngine.clock is always time.time_ns), and product code is out of "
        "bounds for the harness"
    ),
}


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    """One chaos run. `traffic_seconds` bounds the traffic phase; with targets
    set, the phase ends early once both are met and `min_seconds` passed."""

    seed: int
    work_dir: Path
    traffic_seconds: float
    min_seconds: float = 0.0
    operations_target: int = 0
    faults_target: int = 0
    operations_per_second: float = 60.0
    workers: int = 8
    fault_interval_seconds: float = 4.0
    fault_kinds: tuple[str, ...] | None = None
    # (kind, weight) pairs replacing registered weights; weight 0 disables a kind.
    traffic_weights: tuple[tuple[str, int], ...] = ()
    sites: tuple[str, ...] = ("S1", "S2", "S3")
    skus: tuple[str, ...] = ("A", "B", "C")
    initial_stock: int = 40
    call_timeout_seconds: float = 5.0
    soft_ttl_seconds_min: int = 1
    soft_ttl_seconds_max: int = 4
    settle_timeout_seconds: float = 150.0
    sweep_interval_seconds: float = 0.2
    checksum_interval_seconds: float = 1.0
    quota_low_water: int = 4
    quota_high_water: int = 40
    replays_per_site_max: int = 400
    # How to run this experiment again (printed with every violation).
    rerun: str = ""


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    detail: str
    records: tuple[int, ...] = ()


@dataclass(slots=True)
class OpenReservation:
    site_id: str
    reservation_id: str
    kind: int
    held: dict[str, int]
    expires_at_seconds: float


@dataclass
class TrafficState:
    """What the traffic knows from acknowledged replies (never from the ledger)."""

    open: dict[str, dict[str, OpenReservation]] = field(default_factory=dict)
    acked_reservations: list[tuple[str, str, int]] = field(default_factory=list)
    acked_writes: list[CallRecord] = field(default_factory=list)
    unknown_writes: list[CallRecord] = field(default_factory=list)
    sellable: dict[tuple[str, str], int] = field(default_factory=dict)
    damaged: dict[tuple[str, str], int] = field(default_factory=dict)
    hub_share: dict[tuple[str, str], int] = field(default_factory=dict)

    def observe(self, site_id: str, availability: Sequence[common_pb2.SkuAvailability]) -> None:
        for entry in availability:
            sellable = damaged = 0
            for bucket in entry.on_hand:
                if bucket.location_id == "default" and bucket.status == SELLABLE:
                    sellable = bucket.quantity
                elif bucket.location_id == "default" and bucket.status == DAMAGED:
                    damaged = bucket.quantity
            self.sellable[(site_id, entry.sku)] = sellable
            self.damaged[(site_id, entry.sku)] = damaged

    def track(self, site_id: str, reservation: common_pb2.Reservation, ttl: int) -> None:
        if reservation.state != OPEN:
            self.open.get(site_id, {}).pop(reservation.reservation_id, None)
            return
        held = {line.sku: line.quantity_held for line in reservation.lines if line.quantity_held}
        if not held:
            self.open.get(site_id, {}).pop(reservation.reservation_id, None)
            return
        existing = self.open.setdefault(site_id, {}).get(reservation.reservation_id)
        expires = existing.expires_at_seconds if existing is not None else (
            time.monotonic() + ttl if reservation.kind == SOFT else 0.0
        )  # fmt: skip
        self.open[site_id][reservation.reservation_id] = OpenReservation(
            site_id, reservation.reservation_id, reservation.kind, held, expires
        )

    def remember(self, pool: list[CallRecord], record: CallRecord) -> None:
        pool.append(record)
        if len(pool) > POOL_SIZE_MAX:
            del pool[: len(pool) - POOL_SIZE_MAX]


# ----- registries -------------------------------------------------------------

TrafficRun = Callable[["ChaosRun", random.Random], Coroutine[Any, Any, bool]]
FaultRun = Callable[["ChaosRun", random.Random, str], Coroutine[Any, Any, str]]


@dataclass(frozen=True, slots=True)
class TrafficKind:
    """One kind of caller behaviour; `run` returns False when it could not act."""

    name: str
    weight: int
    run: TrafficRun
    description: str


@dataclass(frozen=True, slots=True)
class FaultKind:
    """One kind of fault; `targets` names the lockable things it may hit."""

    name: str
    weight: int
    targets: Callable[[ChaosConfig], Sequence[str]]
    run: FaultRun
    description: str


TRAFFIC_KINDS: dict[str, TrafficKind] = {}
FAULT_KINDS: dict[str, FaultKind] = {}


def traffic_kind(name: str, *, weight: int, description: str) -> Callable[[TrafficRun], TrafficRun]:
    def register(run: TrafficRun) -> TrafficRun:
        TRAFFIC_KINDS[name] = TrafficKind(name, weight, run, description)
        return run

    return register


def fault_kind(
    name: str, *, weight: int, targets: Callable[[ChaosConfig], Sequence[str]], description: str
) -> Callable[[FaultRun], FaultRun]:
    def register(run: FaultRun) -> FaultRun:
        FAULT_KINDS[name] = FaultKind(name, weight, targets, run, description)
        return run

    return register


def new_id() -> str:
    return uuid.uuid4().hex


# ----- the cluster ---------------------------------------------------------------


class Cluster:
    """nats-server, one proxy per edge, the hub and the edges; all stopped in `stop()`."""

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        config.work_dir.mkdir(parents=True, exist_ok=True)
        self.nats = NatsServer(config.work_dir / "nats")
        self.proxies: dict[str, TcpProxy] = {}
        self.edges: dict[str, EdgeNode] = {}
        self.hub = HubNode(config.work_dir, self.nats.url)
        self.locks: dict[str, asyncio.Lock] = {
            name: asyncio.Lock() for name in ("hub", "nats", *config.sites)
        }

    async def start(self) -> None:
        await self.nats.start()
        for site_id in self.config.sites:
            proxy = TcpProxy("127.0.0.1", self.nats.port)
            await proxy.start()
            self.proxies[site_id] = proxy
            self.edges[site_id] = EdgeNode(
                self.config.work_dir,
                site_id,
                proxy.nats_url,
                sweep_interval_seconds=self.config.sweep_interval_seconds,
                checksum_interval_seconds=self.config.checksum_interval_seconds,
                quota_low_water=self.config.quota_low_water,
                quota_high_water=self.config.quota_high_water,
            )
        await start_with_retries(self.hub)
        await asyncio.gather(*(start_with_retries(edge) for edge in self.edges.values()))

    async def heal(self) -> None:
        """Every process up, every proxy listening and forwarding without delay."""
        if not self.nats.running:
            await self.nats.start()
        for proxy in self.proxies.values():
            proxy.delay_seconds = 0.0
            proxy.forward()
            await proxy.start()
        if not self.hub.running:
            await start_with_retries(self.hub)
        for edge in self.edges.values():
            if not edge.running:
                await start_with_retries(edge)

    def nodes(self) -> list[EdgeNode | HubNode]:
        return [self.hub, *self.edges.values()]

    async def stop(self) -> None:
        """Stops everything, whatever failed before; raises the first error at the end."""
        errors: list[BaseException] = []
        results = await asyncio.gather(
            *(node.stop() for node in self.nodes()), return_exceptions=True
        )
        errors += [result for result in results if isinstance(result, BaseException)]
        for proxy in self.proxies.values():
            try:
                await proxy.stop()
            except Exception as error:
                errors.append(error)
        try:
            await self.nats.stop()
        except Exception as error:
            errors.append(error)
        if errors:
            raise errors[0]


async def start_with_retries(node: ChildProcess) -> None:
    for attempt in range(1, START_ATTEMPTS_MAX + 1):
        try:
            await node.start()
            return
        except HarnessError:
            if attempt == START_ATTEMPTS_MAX:
                raise


# ----- the run ---------------------------------------------------------------------


class Pacer:
    """Spreads operations evenly at a target rate across all workers."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self.next_at = 0.0

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self.next_at)
        self.next_at = slot + self.interval
        if slot > now:
            # Pacing of the offered load, not synchronisation.
            await asyncio.sleep(slot - now)


@dataclass
class ChaosRun:
    config: ChaosConfig
    cluster: Cluster
    history: History = field(default_factory=History)
    state: TrafficState = field(default_factory=TrafficState)
    violations: list[Violation] = field(default_factory=list)
    checks: Counter[str] = field(default_factory=Counter)
    started_at: float = 0.0
    traffic_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    settle_log: list[str] = field(default_factory=list)

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.started_at

    def violate(self, invariant: str, detail: str, records: Sequence[CallRecord] = ()) -> None:
        self.violations.append(
            Violation(invariant, detail, tuple(record.index for record in records))
        )

    def check(
        self, invariant: str, condition: bool, detail: Callable[..., str],
        records: Sequence[CallRecord] = (),
    ) -> None:  # fmt: skip
        self.checks[invariant] += 1
        if not condition:
            self.violate(invariant, detail(), records)

    # -- calls

    async def call(
        self,
        node: EdgeNode | HubNode,
        kind: str,
        rpc: str,
        request: Message,
        response_type: type[R],
        *,
        write: bool,
        request_id: str = "",
        skus: Sequence[str] = (),
        note: str = "",
    ) -> tuple[CallRecord, R | None]:
        """One recorded call with a deadline; never raises for an RPC failure."""
        stub: object = node.stub
        payload = request.SerializeToString(deterministic=True)
        record = self.history.begin(
            self.now(), node.name, kind, rpc, request_id, payload,
            write=write, skus=skus, note=note,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            response = await getattr(stub, rpc)(
                request, timeout=self.config.call_timeout_seconds
            )
        except grpc.aio.AioRpcError as error:
            summary = summarise_error(error)
            record.outcome = classify(summary)
            record.code, record.reason = summary.code.name, summary.reason
            record.message = summary.message
            if summary.code in SERVER_ERROR_CODES:
                self.violate(
                    "no_server_errors",
                    f"{node.name} {rpc} answered {summary.code.name}: {summary.message}",
                    [record],
                )
            return record, None
        except (grpc.aio.UsageError, RuntimeError) as error:
            # The channel closed under us (the node restarted): maybe sent, maybe not.
            record.outcome, record.code, record.message = Outcome.UNKNOWN, "CLOSED", repr(error)
            return record, None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task is being cancelled: not the call's business
            # grpc.aio cancels the calls of a channel it closes (the node went away).
            record.outcome, record.code = Outcome.UNKNOWN, "CANCELLED"
            return record, None
        finally:
            record.duration_seconds = loop.time() - started
        if not isinstance(response, response_type):
            raise HarnessError(f"{rpc} returned {type(response).__name__}")
        record.outcome = Outcome.OK
        record.response = response.SerializeToString(deterministic=True)
        return record, response

    def traffic_operations(self) -> int:
        return sum(1 for record in self.history.calls if record.kind not in NOT_TRAFFIC)

    def written(self, record: CallRecord) -> None:
        """Files a write's record where replay and retry traffic can draw from it."""
        if record.outcome is Outcome.OK:
            self.state.remember(self.state.acked_writes, record)
        elif record.outcome is Outcome.UNKNOWN:
            self.state.remember(self.state.unknown_writes, record)

    def serving_edge(self, rng: random.Random) -> EdgeNode | None:
        pinned = PINNED_EDGE.get()
        if pinned is not None:
            edge = self.cluster.edges[pinned]
            return edge if edge.serving else None
        sites = [site for site in self.config.sites if self.cluster.edges[site].serving]
        return self.cluster.edges[rng.choice(sites)] if sites else None

    def node(self, name: str) -> EdgeNode | HubNode:
        for node in self.cluster.nodes():
            if node.name == name:
                return node
        raise HarnessError(f"no node {name!r}")

    # -- phases

    async def run_traffic(self) -> None:
        """Workers and the fault schedule until the phase ends; then faults heal."""
        stop = asyncio.Event()
        pacer = Pacer(self.config.operations_per_second)
        workers = [
            asyncio.create_task(self._worker(index, pacer, stop), name=f"chaos-worker-{index}")
            for index in range(self.config.workers)
        ]
        faults = asyncio.create_task(self._fault_schedule(stop), name="chaos-faults")
        phase_started = self.now()
        try:
            while True:
                await asyncio.sleep(STOP_POLL_SECONDS)
                elapsed = self.now() - phase_started
                if elapsed >= self.config.traffic_seconds:
                    break
                if (
                    self.config.operations_target
                    and elapsed >= self.config.min_seconds
                    and self.traffic_operations() >= self.config.operations_target
                    and len(self.history.faults) >= self.config.faults_target
                ):
                    break
                if faults.done():
                    faults.result()  # a harness error in a fault surfaces here
        finally:
            stop.set()
            self.traffic_seconds = self.now() - phase_started
            results = await asyncio.gather(*workers, faults, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _worker(self, index: int, pacer: Pacer, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.config.seed}:traffic:{index}")
        overrides = dict(self.config.traffic_weights)
        kinds = [
            kind
            for kind in sorted(TRAFFIC_KINDS.values(), key=lambda kind: kind.name)
            if overrides.get(kind.name, kind.weight) > 0
        ]
        weights = [overrides.get(kind.name, kind.weight) for kind in kinds]
        while not stop.is_set():
            await pacer.wait()
            if stop.is_set():
                return
            for _ in range(KINDS_TRIED_PER_SLOT_MAX):
                kind = rng.choices(kinds, weights)[0]
                try:
                    if await kind.run(self, rng):
                        break
                except HarnessError:
                    continue  # the node went away between the check and the call

    async def _fault_schedule(self, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.config.seed}:faults")
        names = self.config.fault_kinds or tuple(sorted(FAULT_KINDS))
        kinds = [FAULT_KINDS[name] for name in names if name in FAULT_KINDS]
        weights = [kind.weight for kind in kinds]
        mean = self.config.fault_interval_seconds
        running: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                gap = min(max(rng.expovariate(1.0 / mean), mean / 4), mean * 3)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=gap)
                if stop.is_set():
                    break
                kind = rng.choices(kinds, weights)[0]
                targets = list(kind.targets(self.config))
                rng.shuffle(targets)
                free = [t for t in targets if not self.cluster.locks[t].locked()]
                if not free:
                    continue
                fault_rng = random.Random(rng.getrandbits(64))
                task = asyncio.create_task(self._fault(kind, free[0], fault_rng))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            results = await asyncio.gather(*running, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    async def _fault(self, kind: FaultKind, target: str, rng: random.Random) -> None:
        async with self.cluster.locks[target]:
            record = self.history.fault(self.now(), kind.name, target, "")
            record.detail = await kind.run(self, rng, target)
            record.ended_at_seconds = self.now()


# ----- traffic kinds ------------------------------------------------------------------


def _lines_skus(rng: random.Random, skus: Sequence[str], most: int) -> list[str]:
    return rng.sample(list(skus), rng.randint(1, min(most, len(skus))))


@traffic_kind("receive", weight=9, description="a scanner receives 1-2 lines")
async def receive(run: ChaosRun, rng: random.Random) -> bool:
    edge = run.serving_edge(rng)
    if edge is None:
        return False
    skus = _lines_skus(rng, run.config.skus, 2)
    request = edge_pb2.ReceiveRequest(
        request_id=new_id(),
        lines=[
            edge_pb2.ReceiptLine(
                sku=sku,
                quantity=rng.randint(1, 12),
                status=DAMAGED if rng.random() < 0.1 else SELLABLE,
            )
            for sku in skus
        ],
        reference=f"PO-{rng.randint(1, 9999)}",
    )
    record, response = await run.call(
        edge, "receive", "Receive", request, edge_pb2.ReceiveResponse,
        write=True, request_id=request.request_id, skus=skus,
    )  # fmt: skip
    run.written(record)
    if response is not None:
        run.state.observe(edge.site_id, response.availability)
    return True


async def _reserve(run: ChaosRun, rng: random.Random, kind: int, name: str) -> bool:
    edge = run.serving_edge(rng)
    if edge is None:
        return False
    skus = _lines_skus(rng, run.config.skus, 2)
    ttl = rng.randint(run.config.soft_ttl_seconds_min, run.config.soft_ttl_seconds_max)
    request = edge_pb2.ReserveRequest(
        request_id=new_id(),
        lines=[edge_pb2.ReserveLine(sku=sku, quantity=rng.randint(1, 8)) for sku in skus],
        kind=kind,  # type: ignore[arg-type]
        ttl_seconds=ttl if kind == SOFT else 0,
        channel=rng.choice(("store", "web")),
        reference=f"ORDER-{rng.randint(1, 99999)}",
        allow_partial=rng.random() < 0.2,
    )
    record, response = await run.call(
        edge, name, "Reserve", request, edge_pb2.ReserveResponse,
        write=True, request_id=request.request_id, skus=skus,
    )  # fmt: skip
    run.written(record)
    if response is not None and response.HasField("reservation"):
        reservation = response.reservation
        run.state.track(edge.site_id, reservation, ttl)
        run.state.acked_reservations.append(
            (edge.site_id, reservation.reservation_id, record.index)
        )
        if len(run.state.acked_reservations) > POOL_SIZE_MAX:
            del run.state.acked_reservations[0]
    return True


@traffic_kind("reserve_soft", weight=20, description="soft reservation with a 1-4 s TTL")
async def reserve_soft(run: ChaosRun, rng: random.Random) -> bool:
    return await _reserve(run, rng, SOFT, "reserve_soft")


@traffic_kind("reserve_hard", weight=9, description="hard reservation")
async def reserve_hard(run: ChaosRun, rng: random.Random) -> bool:
    return await _reserve(run, rng, HARD, "reserve_hard")


def _choose_open(run: ChaosRun, rng: random.Random, edge: EdgeNode) -> OpenReservation | None:
    known = run.state.open.get(edge.site_id, {})
    if not known:
        return None
    now = time.monotonic()
    live = [r for r in known.values() if not r.expires_at_seconds or r.expires_at_seconds > now]
    # Mostly live ones; sometimes one that has probably expired (refused as closed).
    pool = live if live and rng.random() < 0.9 else list(known.values())
    pool.sort(key=lambda r: r.reservation_id)
    return rng.choice(pool)


def _after_resolution(
    run: ChaosRun, edge: EdgeNode, chosen: OpenReservation, record: CallRecord,
    reservation: common_pb2.Reservation | None,
) -> None:  # fmt: skip
    if reservation is not None:
        run.state.track(edge.site_id, reservation, 0)
    elif record.reason in (
        "ERROR_REASON_RESERVATION_CLOSED", "ERROR_REASON_UNKNOWN_RESERVATION",
    ):  # fmt: skip
        run.state.open.get(edge.site_id, {}).pop(chosen.reservation_id, None)


@traffic_kind("release", weight=8, description="release all or part of a reservation")
async def release(run: ChaosRun, rng: random.Random) -> bool:
    edge = run.serving_edge(rng)
    chosen = _choose_open(run, rng, edge) if edge is not None else None
    if edge is None or chosen is None:
        return False
    request = edge_pb2.ReleaseRequest(
        request_id=new_id(), reservation_id=chosen.reservation_id, reason="chaos"
    )
    if rng.random() < 0.5:
        sku = rng.choice(sorted(chosen.held))
        request.lines.append(
            edge_pb2.QuantityLine(sku=sku, quantity=rng.randint(1, chosen.held[sku]))
        )
    record, response = await run.call(
        edge, "release", "Release", request, edge_pb2.ReleaseResponse,
        write=True, request_id=request.request_id, skus=sorted(chosen.held),
    )  # fmt: skip
    run.written(record)
    _after_resolution(run, edge, chosen, record, response.reservation if response else None)
    return True


@traffic_kind("pick", weight=10, description="pick reserved units, sometimes ending the rest")
async def pick(run: ChaosRun, rng: random.Random) -> bool:
    edge = run.serving_edge(rng)
    chosen = _choose_open(run, rng, edge) if edge is not None else None
    if edge is None or chosen is None:
        return False
    sku = rng.choice(sorted(chosen.held))
    request = edge_pb2.PickRequest(
        request_id=new_id(),
        reservation_id=chosen.reservation_id,
        lines=[edge_pb2.PickLine(sku=sku, quantity=rng.randint(1, chosen.held[sku]))],
        release_remainder=rng.random() < 0.3,
    )
    record, response = await run.call(
        edge, "pick", "Pick", request, edge_pb2.PickResponse,
        write=True, request_id=request.request_id, skus=[sku],
    )  # fmt: skip
    run.written(record)
    _after_resolution(run, edge, chosen, record, response.reservation if response else None)
    return True


@traffic_kind("count", weight=4, description="cycle count near the last known quantity")
async def count(run: ChaosRun, rng: random.Random) -> bool:
    edge = run.serving_edge(rng)
    if edge is None:
        return False
    sku = rng.choice(run.config.skus)
    known = run.state.sellable.get((edge.site_id, sku), run.config.initial_stock)
    request = edge_pb2.RecordCountRequest(
        request_id=new_id(), sku=sku, counted_quantity=max(0, known + rng.randint(-4, 3)),
        status=SELLABLE, reason="cycle count",
    )  # fmt: skip
    record, response = await run.call(
        edge, "count", "RecordCount", request, edge_pb2.RecordCountResponse,
        write=True, request_id=request.request_id, skus=[sku],
    )  # fmt: skip
    run.written(record)
    if response is not None:
        run.state.observe(edge.site_id, [response.availability])
    return True


@traffic_kind("status", weight=3, description="units become damaged, or damaged ones sellable")
async def change_status(run: ChaosRun, rng: random.Random) -> bool:
    edge = run.serving_edge(rng)
    if edge is None:
        return False
    sku = rng.choice(run.config.skus)
    damaged = run.state.damaged.get((edge.site_id, sku), 0)
    request = edge_pb2.ChangeStatusRequest(request_id=new_id(), sku=sku, reason="chaos")
    if damaged > 0 and rng.random() < 0.4:
        request.quantity = rng.randint(1, damaged)
        request.from_status, request.to_status = DAMAGED, SELLABLE
    else:
        request.quantity = rng.randint(1, 3)
        request.from_status, request.to_status = SELLABLE, DAMAGED
        request.release_reservations = rng.random() < 0.5
    record, response = await run.call(
        edge, "status", "ChangeStatus", request, edge_pb2.ChangeStatusResponse,
        write=True, request_id=request.request_id, skus=[sku],
    )  # fmt: skip
    run.written(record)
    if response is not None:
        run.state.observe(edge.site_id, [response.availability])
    return True


@traffic_kind("adjust", weight=2, description="shrink or found stock")
async def adjust(run: ChaosRun, rng: random.Random) -> bool:
    edge = run.serving_edge(rng)
    if edge is None:
        return False
    sku = rng.choice(run.config.skus)
    shrink = rng.random() < 0.6
    request = edge_pb2.AdjustRequest(
        request_id=new_id(), sku=sku,
        quantity_delta=-rng.randint(1, 3) if shrink else rng.randint(1, 3),
        reason_code=(common_pb2.ADJUSTMENT_REASON_SHRINK if shrink
                     else common_pb2.ADJUSTMENT_REASON_FOUND),
        release_reservations=rng.random() < 0.5,
    )  # fmt: skip
    record, response = await run.call(
        edge, "adjust", "Adjust", request, edge_pb2.AdjustResponse,
        write=True, request_id=request.request_id, skus=[sku],
    )  # fmt: skip
    run.written(record)
    if response is not None:
        run.state.observe(edge.site_id, [response.availability])
    return True


@traffic_kind("transfer_out", weight=2, description="units leave for another site")
async def transfer_out(run: ChaosRun, rng: random.Random) -> bool:
    edge = run.serving_edge(rng)
    if edge is None:
        return False
    sku = rng.choice(run.config.skus)
    others = [site for site in run.config.sites if site != edge.site_id]
    request = edge_pb2.TransferRequest(
        request_id=new_id(), sku=sku, quantity=rng.randint(1, 3),
        to_site_id=rng.choice(others), reference=f"TO-{rng.randint(1, 9999)}",
    )  # fmt: skip
    record, response = await run.call(
        edge, "transfer_out", "Transfer", request, edge_pb2.TransferResponse,
        write=True, request_id=request.request_id, skus=[sku],
    )  # fmt: skip
    run.written(record)
    if response is not None:
        run.state.observe(edge.site_id, [response.availability])
    return True


@traffic_kind("read_availability", weight=4, description="read balances; strict escrow live")
async def read_availability(run: ChaosRun, rng: random.Random) -> bool:
    edge = run.serving_edge(rng)
    if edge is None:
        return False
    request = edge_pb2.GetAvailabilityRequest(skus=list(run.config.skus))
    record, response = await run.call(
        edge, "read_availability", "GetAvailability", request,
        edge_pb2.GetAvailabilityResponse, write=False, skus=run.config.skus,
    )  # fmt: skip
    if response is None:
        return True
    run.state.observe(edge.site_id, response.availability)
    for entry in response.availability:
        reserved = entry.reserved_soft + entry.reserved_hard
        run.check(
            "reserved_within_local_share",
            reserved <= entry.local_share,
            lambda e=entry, r=reserved: (
                f"{edge.site_id}/{e.sku} at sequence {e.as_of_sequence}: reserved {r} > "
                f"local share {e.local_share}"
            ),
            [record],
        )
        run.check(
            "reserved_within_physical_stock",
            reserved <= entry.on_hand_sellable,
            lambda e=entry, r=reserved: (
                f"{edge.site_id}/{e.sku} at sequence {e.as_of_sequence}: reserved {r} > "
                f"sellable on-hand {e.on_hand_sellable}"
            ),
            [record],
        )
    return True


@traffic_kind("get_reservation", weight=3, description="an acknowledged reservation is there")
async def get_reservation(run: ChaosRun, rng: random.Random) -> bool:
    if not run.state.acked_reservations:
        return False
    site_id, reservation_id, index = rng.choice(run.state.acked_reservations)
    edge = run.cluster.edges[site_id]
    if not edge.serving:
        return False
    request = edge_pb2.GetReservationRequest(reservation_id=reservation_id)
    record, _response = await run.call(
        edge, "get_reservation", "GetReservation", request, edge_pb2.GetReservationResponse,
        write=False, note=f"reserved by #{index}",
    )  # fmt: skip
    original = [r for r in run.history.calls if r.index == index]
    run.check(
        "acknowledged_reservation_readable",
        record.reason != "ERROR_REASON_UNKNOWN_RESERVATION",
        lambda: f"{site_id}: acknowledged reservation {reservation_id} is NOT_FOUND",
        [*original, record],
    )
    return True


REQUEST_TYPES: Final[dict[str, type[Message]]] = {
    "Receive": edge_pb2.ReceiveRequest,
    "Reserve": edge_pb2.ReserveRequest,
    "Release": edge_pb2.ReleaseRequest,
    "Pick": edge_pb2.PickRequest,
    "RecordCount": edge_pb2.RecordCountRequest,
    "ChangeStatus": edge_pb2.ChangeStatusRequest,
    "Adjust": edge_pb2.AdjustRequest,
    "Transfer": edge_pb2.TransferRequest,
    "UpsertItem": edge_pb2.UpsertItemRequest,
    "GrantQuota": hub_pb2.GrantQuotaRequest,
    "RecallQuota": hub_pb2.RecallQuotaRequest,
}
RESPONSE_TYPES: Final[dict[str, type[Message]]] = {
    "Receive": edge_pb2.ReceiveResponse,
    "Reserve": edge_pb2.ReserveResponse,
    "Release": edge_pb2.ReleaseResponse,
    "Pick": edge_pb2.PickResponse,
    "RecordCount": edge_pb2.RecordCountResponse,
    "ChangeStatus": edge_pb2.ChangeStatusResponse,
    "Adjust": edge_pb2.AdjustResponse,
    "Transfer": edge_pb2.TransferResponse,
    "UpsertItem": edge_pb2.UpsertItemResponse,
    "GrantQuota": hub_pb2.GrantQuotaResponse,
    "RecallQuota": hub_pb2.RecallQuotaResponse,
}


async def resend(run: ChaosRun, original: CallRecord, kind: str) -> CallRecord | None:
    """Sends a recorded write again, same request_id and payload; None if its node is down."""
    node = run.node(original.target)
    if not node.serving:
        return None
    request = REQUEST_TYPES[original.rpc].FromString(original.request)
    record, _ = await run.call(
        node, kind, original.rpc, request, RESPONSE_TYPES[original.rpc],
        write=True, request_id=original.request_id, skus=original.skus,
        note=f"{kind} of #{original.index}",
    )  # fmt: skip
    return record


@traffic_kind("replay", weight=4, description="replay an acknowledged write: same reply")
async def replay_acknowledged(run: ChaosRun, rng: random.Random) -> bool:
    if not run.state.acked_writes:
        return False
    original = rng.choice(run.state.acked_writes)
    record = await resend(run, original, "replay")
    if record is None:
        return False
    check_replay(run, original, record)
    return True


def check_replay(run: ChaosRun, original: CallRecord, record: CallRecord) -> None:
    """An acknowledged write replayed: the stored reply, or an outcome that says nothing."""
    if record.outcome is Outcome.UNKNOWN or record.reason == "ERROR_REASON_OVERLOADED":
        return
    run.check(
        "replay_returns_stored_response",
        record.outcome is Outcome.OK and record.response == original.response,
        lambda: (
            f"replay of acknowledged #{original.index} ({original.rpc} {original.request_id}) "
            f"-> {record.outcome} {record.reason or record.code}"
            + (" with a different reply" if record.outcome is Outcome.OK else "")
        ),
        [original, record],
    )


@traffic_kind("retry_unknown", weight=5, description="retry a write whose outcome is unknown")
async def retry_unknown(run: ChaosRun, rng: random.Random) -> bool:
    if not run.state.unknown_writes:
        return False
    original = run.state.unknown_writes.pop(rng.randrange(len(run.state.unknown_writes)))
    record = await resend(run, original, "retry")
    if record is None:
        run.state.unknown_writes.append(original)
        return False
    run.written(record)
    return True


@traffic_kind("hub_recall", weight=4, description="hub demand: recall share from a site")
async def hub_recall(run: ChaosRun, rng: random.Random) -> bool:
    hub = run.cluster.hub
    if not hub.serving:
        return False
    site_id, sku = rng.choice(run.config.sites), rng.choice(run.config.skus)
    request = hub_pb2.RecallQuotaRequest(
        request_id=new_id(), site_id=site_id, sku=sku, quantity=rng.randint(1, 10)
    )
    record, _ = await run.call(
        hub, "hub_recall", "RecallQuota", request, hub_pb2.RecallQuotaResponse,
        write=True, request_id=request.request_id, skus=[sku], note=site_id,
    )  # fmt: skip
    run.written(record)
    return True


@traffic_kind("hub_grant", weight=4, description="hub demand falls: grant share back")
async def hub_grant(run: ChaosRun, rng: random.Random) -> bool:
    hub = run.cluster.hub
    if not hub.serving:
        return False
    site_id, sku = rng.choice(run.config.sites), rng.choice(run.config.skus)
    read = hub_pb2.GetSiteBalancesRequest(site_id=site_id, skus=[sku])
    _, balances = await run.call(
        hub, "hub_read", "GetSiteBalances", read, hub_pb2.GetSiteBalancesResponse,
        write=False, skus=[sku], note=site_id,
    )  # fmt: skip
    hub_share = balances.balances[0].hub_share if balances and balances.balances else 0
    # Sometimes more than the hub holds: refused with INSUFFICIENT_STOCK.
    quantity = rng.randint(1, max(1, hub_share) + (1 if rng.random() < 0.15 else 0))
    request = hub_pb2.GrantQuotaRequest(
        request_id=new_id(), site_id=site_id, sku=sku, quantity=quantity
    )
    if not hub.serving:
        return True
    record, _ = await run.call(
        hub, "hub_grant", "GrantQuota", request, hub_pb2.GrantQuotaResponse,
        write=True, request_id=request.request_id, skus=[sku], note=site_id,
    )  # fmt: skip
    run.written(record)
    return True


# ----- fault kinds ---------------------------------------------------------------------


def _sites(config: ChaosConfig) -> Sequence[str]:
    return config.sites


async def _down_for(rng: random.Random, low: float, high: float) -> float:
    seconds = rng.uniform(low, high)
    # Injected downtime: how long the fault lasts, not synchronisation.
    await asyncio.sleep(seconds)
    return seconds


@fault_kind("edge_kill", weight=5, targets=_sites, description="kill -9 an edge, restart it")
async def edge_kill(run: ChaosRun, rng: random.Random, site_id: str) -> str:
    """Sometimes under a burst of writes, so some die in flight (outcome unknown)."""
    edge = run.cluster.edges[site_id]
    burst: list[asyncio.Task[bool]] = []
    if rng.random() < 0.6:
        token = PINNED_EDGE.set(site_id)
        try:
            for name in rng.choices(BURST_KINDS, k=rng.randint(4, BURST_CALLS_MAX)):
                kind_rng = random.Random(rng.getrandbits(64))
                burst.append(asyncio.create_task(TRAFFIC_KINDS[name].run(run, kind_rng)))
        finally:
            PINNED_EDGE.reset(token)
        # Let the burst reach the agent: some calls are applied, some are not.
        await asyncio.sleep(rng.uniform(0.0, 0.03))
    await edge.kill()
    results = await asyncio.gather(*burst, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, HarnessError):
            raise result
    down = await _down_for(rng, 0.1, 2.0)
    await start_with_retries(edge)
    return f"killed under a burst of {len(burst)} calls, down {down:.2f}s"


@fault_kind("hub_kill", weight=3, targets=lambda _c: ("hub",), description="kill -9 the hub")
async def hub_kill(run: ChaosRun, rng: random.Random, _target: str) -> str:
    await run.cluster.hub.kill()
    down = await _down_for(rng, 0.1, 2.0)
    await start_with_retries(run.cluster.hub)
    return f"down {down:.2f}s"


@fault_kind("nats_kill", weight=2, targets=lambda _c: ("nats",), description="kill -9 NATS")
async def nats_kill(run: ChaosRun, rng: random.Random, _target: str) -> str:
    await run.cluster.nats.kill()
    down = await _down_for(rng, 0.2, 2.5)
    await run.cluster.nats.start()
    return f"down {down:.2f}s"


@fault_kind(
    "partition_refused", weight=3, targets=_sites,
    description="an edge's NATS link refuses connections (proxy stopped)",
)  # fmt: skip
async def partition_refused(run: ChaosRun, rng: random.Random, site_id: str) -> str:
    proxy = run.cluster.proxies[site_id]
    await proxy.stop()
    held = await _down_for(rng, 1.0, 6.0)
    await proxy.start()
    return f"cut {held:.2f}s"


@fault_kind(
    "partition_blackhole", weight=3, targets=_sites,
    description="an edge's NATS link silently drops bytes",
)  # fmt: skip
async def partition_blackhole(run: ChaosRun, rng: random.Random, site_id: str) -> str:
    proxy = run.cluster.proxies[site_id]
    proxy.drop()
    held = await _down_for(rng, 1.0, 6.0)
    proxy.forward()
    return f"black hole {held:.2f}s"


@fault_kind("link_delay", weight=2, targets=_sites, description="an edge's NATS link slows")
async def link_delay(run: ChaosRun, rng: random.Random, site_id: str) -> str:
    proxy = run.cluster.proxies[site_id]
    delay = rng.uniform(0.05, 0.6)
    proxy.delay_seconds = delay
    held = await _down_for(rng, 2.0, 6.0)
    proxy.delay_seconds = 0.0
    return f"{delay * 1000:.0f} ms per chunk for {held:.2f}s"


@fault_kind("link_reset", weight=2, targets=_sites, description="reset an edge's NATS link")
async def link_reset(run: ChaosRun, rng: random.Random, site_id: str) -> str:
    proxy = run.cluster.proxies[site_id]
    connections = proxy.connection_count
    await proxy.cut()
    return f"{connections} connection(s) reset"


# ----- set-up -------------------------------------------------------------------------


async def set_up_sites(run: ChaosRun) -> None:
    """Items at every edge and initial stock, recorded like any other write."""
    for site_id in run.config.sites:
        edge = run.cluster.edges[site_id]
        for sku in run.config.skus:
            item = edge_pb2.UpsertItemRequest(
                request_id=new_id(),
                item=common_pb2.Item(sku=sku, description=f"chaos item {sku}", base_unit="each"),
            )
            record, response = await run.call(
                edge, "setup", "UpsertItem", item, edge_pb2.UpsertItemResponse,
                write=True, request_id=item.request_id, skus=[sku],
            )  # fmt: skip
            if response is None:
                raise HarnessError(f"set-up of {site_id}/{sku} failed: {record.line()}")
        stock = edge_pb2.ReceiveRequest(
            request_id=new_id(),
            lines=[
                edge_pb2.ReceiptLine(sku=sku, quantity=run.config.initial_stock)
                for sku in run.config.skus
            ],
            reference="initial",
        )
        record, received = await run.call(
            edge, "setup", "Receive", stock, edge_pb2.ReceiveResponse,
            write=True, request_id=stock.request_id, skus=run.config.skus,
        )  # fmt: skip
        if received is None:
            raise HarnessError(f"initial stock at {site_id} failed: {record.line()}")
        run.written(record)
        run.state.observe(site_id, received.availability)
