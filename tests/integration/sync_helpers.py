"""Helpers for the sync tests: the hub and edge agents as real child processes
(`python -m hub`, `python -m edge_agent`), their gRPC clients, and comparisons of
the hub's view of a site with the edge's own ledger.

Every process is started with a port file and a deadline, and a `ProcessGroup`
stops (SIGTERM, then SIGKILL) and reaps every process it started in `finally`.
Nothing is mocked: real nats-server, real SQLite files, real gRPC on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Final, Self

import grpc
import grpc.aio
import nats
import pytest
from nats.aio.client import Client as NatsClient

from clients.edge import EdgeClient
from clients.errors import StockdError
from server.runtime.child_process import end_process, log_tail
from stockd.v1 import common_pb2, edge_pb2, edge_pb2_grpc, hub_pb2, hub_pb2_grpc

if TYPE_CHECKING:
    from stockd.v1.edge_pb2_grpc import EdgeInventoryServiceAsyncStub
    from stockd.v1.hub_pb2_grpc import HubInventoryServiceAsyncStub

START_TIMEOUT_SECONDS: Final = 30.0
# A SIGTERM'd hub or edge spends up to its bounded NATS drain (about 2 s) on the
# way out; teardown does not wait for that: after this grace the process is
# killed, which SQLite and JetStream survive by design.
STOP_GRACE_SECONDS: Final = 1.0
KILL_TIMEOUT_SECONDS: Final = 10.0
CALL_TIMEOUT_SECONDS: Final = 5.0
CONVERGE_TIMEOUT_SECONDS: Final = 45.0
PROGRESS_TIMEOUT_SECONDS: Final = 30.0
POLL_INTERVAL_SECONDS: Final = 0.02
LOG_TAIL_BYTES: Final = 3000
CHECKSUM_INTERVAL_SECONDS: Final = 0.3
SWEEP_INTERVAL_SECONDS: Final = 0.2
# Soft reservations in these tests outlive the test, so no expiry races a comparison.
LONG_TTL_SECONDS: Final = 3600
NATS_CONNECT_TIMEOUT_SECONDS: Final = 5


def new_id() -> str:
    return uuid.uuid4().hex


# ----- processes -------------------------------------------------------------


class ChildProcess:
    """One `python -m <module>` child serving gRPC on 127.0.0.1 port 0.

    `start()` returns once the child wrote its port file; the same object can
    be started again after `stop()`/`kill()` (same arguments, same database).
    """

    def __init__(self, name: str, module: str, args: Sequence[str], work_dir: Path) -> None:
        self.name = name
        self.module = module
        self.args = list(args)
        self.work_dir = work_dir
        self.port_file = work_dir / f"{name}.port"
        self.log_path = work_dir / f"{name}.log"
        self.port = 0
        self.starts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int:
        assert self._process is not None, f"{self.name} was never started"
        return self._process.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> int:
        """Spawns the child; returns its gRPC port once it is serving."""
        assert not self.running, f"{self.name} is already running"
        self.port_file.unlink(missing_ok=True)
        self._log = self.log_path.open("ab")
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            *self.args,
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(self.port_file),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.starts += 1
        try:
            self.port = await self._wait_port()
        except BaseException:
            await self.kill()
            raise
        await self._connected()
        return self.port

    async def _wait_port(self) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_SECONDS
        while True:
            process = self._process
            assert process is not None
            if process.returncode is not None:
                pytest.fail(
                    f"{self.name} exited with {process.returncode} before serving:\n"
                    f"{self.log_tail()}"
                )
            if self.port_file.exists():
                text = self.port_file.read_text().strip()
                if text:
                    return int(text)
            if loop.time() >= deadline:
                pytest.fail(f"{self.name} wrote no port file in {START_TIMEOUT_SECONDS}s")
            # Poll interval of a condition loop, not synchronisation by sleep.
            await asyncio.sleep(POLL_INTERVAL_SECONDS)

    async def _connected(self) -> None:
        """Hook: open clients once the port is known."""

    async def _disconnected(self) -> None:
        """Hook: close clients before the process goes away."""

    async def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM, then SIGKILL after `grace_seconds`; always reaps the child."""
        await self._signal(signal.SIGTERM, grace_seconds)

    async def kill(self) -> None:
        """SIGKILL, as a crash would: no flush, no goodbye."""
        await self._signal(signal.SIGKILL, KILL_TIMEOUT_SECONDS)

    async def stopped_within(self, seconds: float) -> float | None:
        """SIGTERM; the seconds the child took to exit on its own, or None past `seconds`.

        The child is killed afterwards either way.
        """
        process = self._process
        assert process is not None
        assert process.returncode is None
        await self._disconnected()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), seconds)
        except TimeoutError:
            await self.kill()
            return None
        taken = loop.time() - started
        await self.kill()
        return taken

    async def _signal(self, signum: signal.Signals, grace_seconds: float) -> None:
        process = self._process
        try:
            await self._disconnected()
            if process is not None:
                await end_process(process, signum, grace_seconds, KILL_TIMEOUT_SECONDS)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def log_tail(self) -> str:
        return log_tail(self.log_path, LOG_TAIL_BYTES)


class HubProcess(ChildProcess):
    """`python -m hub` with a gRPC stub that is reopened after every restart."""

    def __init__(self, work_dir: Path, nats_url: str, *, name: str = "hub") -> None:
        self.db_path = work_dir / f"{name}.db"
        self.nats_url = nats_url
        super().__init__(name, "hub", ["--db", str(self.db_path), "--nats", nats_url], work_dir)
        self._channel: grpc.aio.Channel | None = None
        self._stub: HubInventoryServiceAsyncStub | None = None

    @property
    def stub(self) -> HubInventoryServiceAsyncStub:
        assert self._stub is not None, "hub is not running"
        return self._stub

    async def _connected(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.target)
        self._stub = hub_pb2_grpc.HubInventoryServiceStub(self._channel)

    async def _disconnected(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close(grace=None)

    async def list_sites(self) -> dict[str, hub_pb2.SiteSyncStatus]:
        response = await self.stub.ListSites(
            hub_pb2.ListSitesRequest(), timeout=CALL_TIMEOUT_SECONDS
        )
        return {site.site_id: site for site in response.sites}

    async def site(self, site_id: str) -> hub_pb2.SiteSyncStatus | None:
        return (await self.list_sites()).get(site_id)

    async def balances(self, site_id: str, skus: Sequence[str]) -> dict[str, hub_pb2.SiteBalance]:
        response = await self.stub.GetSiteBalances(
            hub_pb2.GetSiteBalancesRequest(site_id=site_id, skus=list(skus)),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return {balance.sku: balance for balance in response.balances}

    async def grant(
        self, site_id: str, sku: str, quantity: int, *, request_id: str | None = None
    ) -> hub_pb2.GrantQuotaResponse:
        return await self.stub.GrantQuota(
            hub_pb2.GrantQuotaRequest(
                request_id=request_id or new_id(), site_id=site_id, sku=sku, quantity=quantity
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    async def recall(
        self, site_id: str, sku: str, quantity: int, *, request_id: str | None = None
    ) -> hub_pb2.RecallQuotaResponse:
        return await self.stub.RecallQuota(
            hub_pb2.RecallQuotaRequest(
                request_id=request_id or new_id(), site_id=site_id, sku=sku, quantity=quantity
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )


class EdgeProcess(ChildProcess):
    """`python -m edge_agent --nats ...` for one site, with the SDK client and a
    raw stub for GetSyncStatus (which the SDK does not wrap)."""

    def __init__(
        self,
        work_dir: Path,
        site_id: str,
        nats_url: str,
        *,
        checksum_interval_seconds: float = CHECKSUM_INTERVAL_SECONDS,
        extra_config: str = "",
    ) -> None:
        self.site_id = site_id
        self.db_path = work_dir / f"edge-{site_id}.db"
        self.config_path = work_dir / f"edge-{site_id}.toml"
        self.config_path.write_text(
            f"sweep_interval_seconds = {SWEEP_INTERVAL_SECONDS}\n"
            "[sync]\n"
            f"checksum_interval_seconds = {checksum_interval_seconds}\n"
            "quota_low_water = 0\n"
            "quota_high_water = 0\n" + extra_config
        )
        super().__init__(
            f"edge-{site_id}",
            "edge_agent",
            [
                "--site",
                site_id,
                "--db",
                str(self.db_path),
                "--nats",
                nats_url,
                "--config",
                str(self.config_path),
            ],
            work_dir,
        )
        self._client: EdgeClient | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: EdgeInventoryServiceAsyncStub | None = None

    @property
    def client(self) -> EdgeClient:
        assert self._client is not None, f"edge {self.site_id} is not running"
        return self._client

    async def _connected(self) -> None:
        self._client = EdgeClient(self.target, timeout_seconds=CALL_TIMEOUT_SECONDS)
        self._channel = grpc.aio.insecure_channel(self.target)
        self._stub = edge_pb2_grpc.EdgeInventoryServiceStub(self._channel)

    async def _disconnected(self) -> None:
        client, self._client = self._client, None
        channel, self._channel, self._stub = self._channel, None, None
        if client is not None:
            await client.close()
        if channel is not None:
            await channel.close(grace=None)

    async def sync_status(self) -> edge_pb2.GetSyncStatusResponse:
        assert self._stub is not None, f"edge {self.site_id} is not running"
        return await self._stub.GetSyncStatus(
            edge_pb2.GetSyncStatusRequest(), timeout=CALL_TIMEOUT_SECONDS
        )

    async def availability(self, skus: Sequence[str]) -> dict[str, Balance]:
        response = await self.client.get_availability(list(skus))
        return {
            entry.sku: Balance(
                entry.on_hand_sellable,
                entry.on_hand_total,
                entry.reserved_soft,
                entry.reserved_hard,
                entry.local_share,
            )
            for entry in response.availability
        }

    async def setup_items(self, skus: Sequence[str]) -> None:
        for sku in skus:
            await self.client.upsert_item(sku)


class ProcessGroup:
    """Starts hubs and edges for one test and always stops and reaps them all."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.processes: list[ChildProcess] = []

    async def hub(self, nats_url: str, *, name: str = "hub") -> HubProcess:
        process = HubProcess(self.work_dir, nats_url, name=name)
        self.processes.append(process)
        await process.start()
        return process

    async def edge(
        self,
        site_id: str,
        nats_url: str,
        *,
        checksum_interval_seconds: float = CHECKSUM_INTERVAL_SECONDS,
        extra_config: str = "",
    ) -> EdgeProcess:
        process = EdgeProcess(
            self.work_dir,
            site_id,
            nats_url,
            checksum_interval_seconds=checksum_interval_seconds,
            extra_config=extra_config,
        )
        self.processes.append(process)
        await process.start()
        return process

    async def synced_site(
        self, nats_url: str, site_id: str, skus: Sequence[str], receipt: Sequence[tuple[str, int]]
    ) -> tuple[HubProcess, EdgeProcess, SyncReport]:
        """A hub and one edge that has received `receipt`, once the hub's view equals it."""
        hub = await self.hub(nats_url)
        edge = await self.edge(site_id, nats_url)
        await edge.setup_items(skus)
        await edge.client.receive(list(receipt))
        return hub, edge, await wait_in_sync(hub, edge, skus)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        results = await asyncio.gather(
            *(process.stop() for process in self.processes), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result


# ----- comparing the hub's view with an edge's ledger ------------------------


@dataclass(frozen=True, slots=True)
class Balance:
    """The fields both sides report for one SKU at one site, in base units."""

    sellable: int
    total: int
    reserved_soft: int
    reserved_hard: int
    local_share: int

    @property
    def reserved(self) -> int:
        return self.reserved_soft + self.reserved_hard


def hub_balance(balance: hub_pb2.SiteBalance) -> Balance:
    return Balance(
        balance.on_hand_sellable,
        balance.on_hand_total,
        balance.reserved_soft,
        balance.reserved_hard,
        balance.local_share,
    )


@dataclass
class SyncReport:
    """One look at both sides; `problems` is empty when they agree exactly."""

    problems: list[str] = field(default_factory=list)
    edge: dict[str, Balance] = field(default_factory=dict)
    hub: dict[str, hub_pb2.SiteBalance] = field(default_factory=dict)
    edge_status: edge_pb2.GetSyncStatusResponse | None = None
    site: hub_pb2.SiteSyncStatus | None = None


async def compare(hub: HubProcess, edge: EdgeProcess, skus: Sequence[str]) -> SyncReport:
    """Reads the edge first, then the hub, and lists every difference.

    Agreement means: the hub applied exactly the edge's last sequence, JetStream
    acknowledged all of it (no backlog), and every SKU's sellable, total,
    reserved soft/hard and local share are equal.
    """
    report = SyncReport()
    status = await edge.sync_status()
    report.edge_status = status
    report.edge = await edge.availability(skus)
    site = await hub.site(edge.site_id)
    report.site = site
    if site is None:
        report.problems.append(f"hub has not heard from {edge.site_id}")
        return report
    report.hub = await hub.balances(edge.site_id, skus)
    if site.applied_sequence != status.last_sequence:
        report.problems.append(
            f"applied_sequence {site.applied_sequence} != edge last_sequence {status.last_sequence}"
        )
    if status.acknowledged_sequence != status.last_sequence or status.backlog_events:
        report.problems.append(
            f"edge acknowledged {status.acknowledged_sequence} of {status.last_sequence} "
            f"(backlog {status.backlog_events})"
        )
    for sku in skus:
        mine, theirs = report.edge.get(sku), report.hub.get(sku)
        if mine is None or theirs is None:
            report.problems.append(f"{sku}: missing (edge {mine}, hub {theirs})")
        elif hub_balance(theirs) != mine:
            report.problems.append(f"{sku}: edge {mine} != hub {hub_balance(theirs)}")
    return report


async def wait_in_sync(
    hub: HubProcess,
    edge: EdgeProcess,
    skus: Sequence[str],
    *,
    timeout_seconds: float = CONVERGE_TIMEOUT_SECONDS,
) -> SyncReport:
    """Polls until the hub's view of the edge's site equals the edge's ledger."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    while True:
        report = await compare(hub, edge, skus)
        if not report.problems:
            return report
        if loop.time() >= deadline:
            pytest.fail(
                f"hub view of {edge.site_id} did not converge within {timeout_seconds}s: "
                f"{report.problems[:10]}\nhub log:\n{hub.log_tail()}\n"
                f"edge log:\n{edge.log_tail()}"
            )
        # Poll interval of a condition loop, not synchronisation by sleep.
        await asyncio.sleep(POLL_INTERVAL_SECONDS * 5)


# ----- a workload with an independent tally of what the edge acknowledged -----


@dataclass
class Tally:
    """Per SKU: what the edge's acknowledged replies say the balance must be.

    Built only from replies the test received (never from reads), so it is an
    independent check that nothing acknowledged was lost or applied twice.
    """

    sellable: int = 0
    total: int = 0
    reserved_soft: int = 0
    reserved_hard: int = 0
    local_share: int = 0

    def balance(self) -> Balance:
        return Balance(
            self.sellable, self.total, self.reserved_soft, self.reserved_hard, self.local_share
        )

    def reserve(self, kind: common_pb2.ReservationKind.ValueType, quantity: int) -> None:
        if kind == common_pb2.RESERVATION_KIND_HARD:
            self.reserved_hard += quantity
        else:
            self.reserved_soft += quantity


@dataclass
class OpenLine:
    kind: common_pb2.ReservationKind.ValueType
    held: int


OPERATIONS: Final = ("receive", "reserve", "release", "pick", "count", "status")


@dataclass
class Workload:
    """Random receives, reserves (soft and hard), releases, picks, counts and
    status changes against one edge; FAILED_PRECONDITION refusals are allowed
    and counted, anything else fails the test."""

    edge: EdgeProcess
    skus: Sequence[str]
    rng: random.Random
    weights: Mapping[str, int] = field(
        default_factory=lambda: {
            "receive": 15, "reserve": 35, "release": 15, "pick": 15, "count": 8, "status": 12,
        }
    )  # fmt: skip
    reserve_quantity_max: int = 6
    receive_quantity_max: int = 20
    tallies: dict[str, Tally] = field(default_factory=dict)
    open: dict[str, dict[str, OpenLine]] = field(default_factory=dict)
    done: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    call_seconds_max: float = 0.0

    def tally(self, sku: str) -> Tally:
        return self.tallies.setdefault(sku, Tally())

    def expected(self) -> dict[str, Balance]:
        return {sku: self.tally(sku).balance() for sku in self.skus}

    @property
    def steps(self) -> int:
        """Operations finished so far, done or refused."""
        return sum(self.done.values()) + sum(self.refused.values())

    async def run(self, steps: int) -> None:
        for _ in range(steps):
            await self.step()

    async def run_until(self, stop: asyncio.Event) -> None:
        """Writes back to back until `stop` is set (run it as a background task)."""
        while not stop.is_set():
            await self.step()

    async def reach(self, steps: int, timeout_seconds: float = PROGRESS_TIMEOUT_SECONDS) -> None:
        """Waits until a background `run_until` has finished `steps` operations."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while self.steps < steps:
            if loop.time() >= deadline:
                pytest.fail(f"only {self.steps} of {steps} writes in {timeout_seconds}s")
            # Poll interval of a condition loop, not synchronisation by sleep.
            await asyncio.sleep(POLL_INTERVAL_SECONDS)

    async def step(self) -> None:
        names = list(self.weights)
        operation = self.rng.choices(names, [self.weights[name] for name in names])[0]
        if operation in ("release", "pick") and not self.open:
            operation = "reserve"
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await getattr(self, f"_{operation}")()
        except StockdError as error:
            if error.code is not grpc.StatusCode.FAILED_PRECONDITION:
                raise
            self.refused[operation] += 1
        else:
            self.done[operation] += 1
        self.call_seconds_max = max(self.call_seconds_max, loop.time() - started)

    def apply_events(self, events: Sequence[common_pb2.LedgerEvent]) -> None:
        """Folds the entries a reply carried into the tally and the open reservations."""
        for event in events:
            tally = self.tally(event.sku)
            tally.local_share += event.local_share_delta
            sellable = event.status == common_pb2.STOCK_STATUS_SELLABLE
            if event.type in (common_pb2.EVENT_TYPE_RECEIVED, common_pb2.EVENT_TYPE_COUNTED):
                tally.total += event.quantity
                if sellable:
                    tally.sellable += event.quantity
            elif event.type == common_pb2.EVENT_TYPE_STATUS_CHANGED:
                if sellable:
                    tally.sellable -= event.quantity
                elif event.to_status == common_pb2.STOCK_STATUS_SELLABLE:
                    tally.sellable += event.quantity
            elif event.type in (common_pb2.EVENT_TYPE_RELEASED, common_pb2.EVENT_TYPE_PICKED):
                tally.reserve(event.reservation_kind, -event.quantity)
                if event.type == common_pb2.EVENT_TYPE_PICKED:
                    tally.sellable -= event.quantity
                    tally.total -= event.quantity
                lines = self.open.get(event.reservation_id)
                if lines is not None and event.sku in lines:
                    lines[event.sku].held -= event.quantity
                    if lines[event.sku].held <= 0:
                        del lines[event.sku]
                    if not lines:
                        del self.open[event.reservation_id]

    async def _receive(self) -> None:
        sku = self.rng.choice(self.skus)
        quantity = self.rng.randint(1, self.receive_quantity_max)
        response = await self.edge.client.receive([(sku, quantity)])
        self.apply_events(response.events)

    async def reserve(
        self, lines: Sequence[tuple[str, int]], kind: common_pb2.ReservationKind.ValueType
    ) -> str:
        """Reserves all lines or raises; records the reservation in the tally."""
        response = await self.edge.client.reserve(
            list(lines), kind=kind, ttl_seconds=LONG_TTL_SECONDS
        )
        reservation = response.reservation
        self.open[reservation.reservation_id] = {
            line.sku: OpenLine(reservation.kind, line.quantity_held) for line in reservation.lines
        }
        for line in reservation.lines:
            self.tally(line.sku).reserve(reservation.kind, line.quantity_held)
        return reservation.reservation_id

    async def _reserve(self) -> None:
        count = self.rng.randint(1, min(2, len(self.skus)))
        skus = self.rng.sample(list(self.skus), count)
        kind = self.rng.choice((common_pb2.RESERVATION_KIND_SOFT, common_pb2.RESERVATION_KIND_HARD))
        await self.reserve(
            [(sku, self.rng.randint(1, self.reserve_quantity_max)) for sku in skus], kind
        )

    async def _release(self) -> None:
        reservation_id = self.rng.choice(sorted(self.open))
        lines = self.open[reservation_id]
        if self.rng.random() < 0.5:
            response = await self.edge.client.release(reservation_id)
        else:
            sku = self.rng.choice(sorted(lines))
            quantity = self.rng.randint(1, lines[sku].held)
            response = await self.edge.client.release(reservation_id, [(sku, quantity)])
        self.apply_events(response.events)

    async def _pick(self) -> None:
        reservation_id = self.rng.choice(sorted(self.open))
        lines = self.open[reservation_id]
        sku = self.rng.choice(sorted(lines))
        quantity = self.rng.randint(1, lines[sku].held)
        response = await self.edge.client.pick(
            reservation_id, [(sku, quantity)], release_remainder=self.rng.random() < 0.3
        )
        self.apply_events(response.events)

    async def _count(self) -> None:
        sku = self.rng.choice(self.skus)
        counted = max(0, self.tally(sku).sellable + self.rng.randint(-6, 4))
        response = await self.edge.client.record_count(sku, counted)
        self.apply_events(response.events)

    async def _status(self) -> None:
        sku = self.rng.choice(self.skus)
        tally = self.tally(sku)
        damaged = tally.total - tally.sellable
        if damaged > 0 and self.rng.random() < 0.4:
            response = await self.edge.client.change_status(
                sku,
                self.rng.randint(1, damaged),
                from_status=common_pb2.STOCK_STATUS_DAMAGED,
                to_status=common_pb2.STOCK_STATUS_SELLABLE,
            )
        else:
            response = await self.edge.client.change_status(
                sku,
                self.rng.randint(1, 3),
                from_status=common_pb2.STOCK_STATUS_SELLABLE,
                to_status=common_pb2.STOCK_STATUS_DAMAGED,
                release_reservations=self.rng.random() < 0.5,
            )
        self.apply_events(response.events)


# ----- errors and NATS -------------------------------------------------------


async def rpc_error(call: Awaitable[object]) -> StockdError:
    """Awaits a hub or edge call that must fail and decodes its google.rpc.Status."""
    try:
        await call
    except StockdError as error:
        return error
    except grpc.aio.AioRpcError as error:
        return StockdError.from_rpc_error(error)
    pytest.fail("the call succeeded but was expected to fail")


@contextlib.asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[NatsClient]:
    """A plain nats-py client for injecting messages, closed in `finally`."""
    errors: list[Exception] = []

    async def record(error: Exception) -> None:
        errors.append(error)

    client = await nats.connect(
        url,
        connect_timeout=NATS_CONNECT_TIMEOUT_SECONDS,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        error_cb=record,
        name="stockd-sync-test",
    )
    try:
        yield client
    finally:
        await client.close()


def headers_of(headers: Mapping[str, str] | None) -> dict[str, str]:
    return dict(headers or {})
