"""sync_lag: how long an edge commit takes to reach the hub's view, at a steady rate.

A nats-server, a hub and an edge agent (with ``--nats``) run in their own
processes. After one item and a large receipt are seeded (and seen at the
hub), callers send one-line hard Reserves paced to ``OFFERED_RATE_PER_S``
(a shared schedule of send slots, one per 1/rate seconds, taken by
``CALLERS`` concurrent callers, so the offered rate holds while latency
stays under callers/rate).

Per event: its commit time is when its Reserve reply arrived (the edge
replies only after the commit), its sequence is the reply's
``as_of_sequence``; the hub's ListSites is polled every
``POLL_INTERVAL_SECONDS`` and each reply that shows a higher
``applied_sequence`` marks every sequence up to it as applied at that reply's
arrival. Lag is apply time minus commit time, both on this process's
monotonic clock, so no clock skew enters; the figure includes up to one poll
interval plus one ListSites round trip of measurement error.

``ops_per_s`` is events applied at the hub per second of the measured
window; the achieved Reserve rate is in ``params["achieved_per_s"]`` (a
measured value, not a setting: the results shape has nowhere else for it).
``errors`` counts failed Reserves plus measured events the hub had not
applied ``DRAIN_TIMEOUT_SECONDS`` after the window.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from bench.cases.nats_publish import nats_server
from bench.channels import describe_error, open_channel, raw_unary
from bench.config import CALL_TIMEOUT_SECONDS, SETUP_CALL_TIMEOUT_SECONDS, BenchConfig
from bench.context import CaseContext
from bench.environment import scratch_directory
from bench.errors import LoadError, TargetError
from bench.processes import served
from bench.results import Run, make_run, percentile_ms
from stockd.v1 import common_pb2, edge_pb2, edge_pb2_grpc, hub_pb2, hub_pb2_grpc

if TYPE_CHECKING:
    # The async stub types exist only in the generated .pyi files.
    from stockd.v1.edge_pb2_grpc import EdgeInventoryServiceAsyncStub as EdgeStub
    from stockd.v1.hub_pb2_grpc import HubInventoryServiceAsyncStub as HubStub

CASE_NAME = "sync_lag"
SITE_ID = "lag"
# 1,000 ledger entries/s as 250 Reserve calls/s of 4 lines (one entry per line):
# the target is about entries, and fewer calls leave the 2 cores to sync.
LINES_PER_REQUEST = 4
SKUS = [f"LAG{index:05d}" for index in range(1, LINES_PER_REQUEST + 1)]
SKU = SKUS[0]
# Far more than a run can reserve (OFFERED_RATE_PER_S x the longest allowed
# warm-up plus duration is 660,000).
RECEIVE_QUANTITY = 10_000_000
OFFERED_RATE_PER_S = 1000
# Enough that the callers are never what limits the rate: at 1,000/s they
# cover replies of up to 128 ms. Fewer would turn a slow edge into a lower
# offered rate instead of a longer queue.
CALLERS = 64
POLL_INTERVAL_SECONDS = 0.002
# How long after the window the hub may take to apply the measured events
# before the missing ones are counted as errors.
DRAIN_TIMEOUT_SECONDS = 30.0
# How long the hub may take to apply the seed before anything is measured.
HUB_READY_TIMEOUT_SECONDS = 60.0
# The poller gives up when ListSites has failed for this long in a row.
POLL_FAILURE_SECONDS_MAX = CALL_TIMEOUT_SECONDS

_EDGE_SERVICE = edge_pb2.DESCRIPTOR.services_by_name["EdgeInventoryService"]
RESERVE_METHOD_PATH = f"/{_EDGE_SERVICE.full_name}/{_EDGE_SERVICE.methods_by_name['Reserve'].name}"


# ----- processes ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def edge_process(scratch: Path, site_id: str, nats_url: str) -> AsyncIterator[str]:
    """An edge agent syncing to ``nats_url``; yields its host:port.

    Raises:
        ServerStartError: The agent did not start.
    """
    port_file = scratch / f"edge-{site_id}.port"
    argv = [
        sys.executable, "-m", "edge_agent",
        "--site", site_id,
        "--db", str(scratch / f"edge-{site_id}.db"),
        "--listen", "127.0.0.1:0",
        "--port-file", str(port_file),
        "--nats", nats_url,
    ]  # fmt: skip
    async with served(argv, port_file, scratch / f"edge-{site_id}.log") as port:
        yield f"127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def hub_process(scratch: Path, nats_url: str) -> AsyncIterator[str]:
    """A hub consuming from ``nats_url``; yields its host:port.

    Raises:
        ServerStartError: The hub did not start.
    """
    port_file = scratch / "hub.port"
    argv = [
        sys.executable, "-m", "hub",
        "--db", str(scratch / "hub.db"),
        "--nats", nats_url,
        "--listen", "127.0.0.1:0",
        "--port-file", str(port_file),
    ]  # fmt: skip
    async with served(argv, port_file, scratch / "hub.log") as port:
        yield f"127.0.0.1:{port}"


# ----- set-up calls ----------------------------------------------------------------


async def upsert_items(
    stub: EdgeStub, target: str, skus: Sequence[str], concurrency: int = 16
) -> None:
    """Creates the items.

    Raises:
        TargetError: The agent refused one.
    """
    limit = asyncio.Semaphore(concurrency)

    async def upsert(sku: str) -> None:
        request = edge_pb2.UpsertItemRequest(
            request_id=str(uuid.uuid4()),
            item=common_pb2.Item(sku=sku, base_unit="each"),
        )
        async with limit:
            try:
                await stub.UpsertItem(request, timeout=SETUP_CALL_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as error:
                raise TargetError(target, f"UpsertItem {sku}", describe_error(error)) from None

    await asyncio.gather(*(upsert(sku) for sku in skus))


async def receive(stub: EdgeStub, target: str, lines: Sequence[tuple[str, int]]) -> None:
    """One Receive call (at most 500 lines); each line is one ledger entry.

    Raises:
        TargetError: The agent refused it.
    """
    request = edge_pb2.ReceiveRequest(
        request_id=str(uuid.uuid4()),
        lines=[edge_pb2.ReceiptLine(sku=sku, quantity=quantity) for sku, quantity in lines],
        reference="bench",
    )
    try:
        await stub.Receive(request, timeout=SETUP_CALL_TIMEOUT_SECONDS)
    except grpc.aio.AioRpcError as error:
        raise TargetError(target, "Receive", describe_error(error)) from None


async def edge_sync_status(stub: EdgeStub, target: str) -> edge_pb2.GetSyncStatusResponse:
    """The agent's sync state.

    Raises:
        TargetError: The call failed.
    """
    try:
        return await stub.GetSyncStatus(
            edge_pb2.GetSyncStatusRequest(), timeout=SETUP_CALL_TIMEOUT_SECONDS
        )
    except grpc.aio.AioRpcError as error:
        raise TargetError(target, "GetSyncStatus", describe_error(error)) from None


async def hub_applied(stub: HubStub, site_id: str) -> tuple[int, int]:
    """(applied_sequence, sync_lag_ms) of one site at the hub; (0, 0) before it is known.

    Raises:
        grpc.aio.AioRpcError: The call failed.
    """
    reply = await stub.ListSites(hub_pb2.ListSitesRequest(), timeout=CALL_TIMEOUT_SECONDS)
    for site in reply.sites:
        if site.site_id == site_id:
            return site.applied_sequence, site.sync_lag_ms
    return 0, 0


async def wait_for_hub(stub: HubStub, target: str, site_id: str, sequence: int) -> None:
    """Returns once the hub has applied ``sequence`` of the site.

    Raises:
        TargetError: It had not within ``HUB_READY_TIMEOUT_SECONDS``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HUB_READY_TIMEOUT_SECONDS
    applied = 0
    while loop.time() < deadline:
        with contextlib.suppress(grpc.aio.AioRpcError):
            applied, _ = await hub_applied(stub, site_id)
            if applied >= sequence:
                return
        await asyncio.sleep(0.05)  # poll interval of a condition loop
    raise TargetError(
        target,
        f"wait for {site_id} sequence {sequence}",
        f"applied_sequence still {applied} after {HUB_READY_TIMEOUT_SECONDS:.0f} s",
    )


# ----- the hub's progress, as seen by polling -----------------------------------


@dataclass
class AppliedTimeline:
    """When the hub was first seen to have applied each sequence of one site.

    ``times_ns[i]`` is the arrival of the first ListSites reply that showed
    ``sequences[i]``; both lists only grow, so sequence ``s`` was applied by
    ``times_ns[bisect_left(sequences, s)]``.
    """

    times_ns: list[int] = field(default_factory=list)
    sequences: list[int] = field(default_factory=list)
    hub_lag_ms: list[tuple[int, int]] = field(default_factory=list)
    poll_round_trips_ns: list[int] = field(default_factory=list)
    poll_failures: int = 0

    @property
    def applied(self) -> int:
        return self.sequences[-1] if self.sequences else 0

    def observe(self, at_ns: int, sequence: int) -> None:
        if sequence > self.applied:
            self.times_ns.append(at_ns)
            self.sequences.append(sequence)

    def applied_at(self, sequence: int) -> int | None:
        """When ``sequence`` was first seen applied, or None if not yet."""
        index = bisect.bisect_left(self.sequences, sequence)
        return self.times_ns[index] if index < len(self.sequences) else None

    def applied_by(self, at_ns: int) -> int:
        """The highest sequence seen applied before ``at_ns``."""
        index = bisect.bisect_left(self.times_ns, at_ns)
        return self.sequences[index - 1] if index > 0 else 0


async def poll_hub(
    stub: HubStub,
    site_id: str,
    timeline: AppliedTimeline,
    interval_seconds: float,
    until: Callable[[], bool],
) -> None:
    """Polls ListSites about every ``interval_seconds`` until ``until()`` holds.

    Raises:
        LoadError: ListSites failed for ``POLL_FAILURE_SECONDS_MAX`` in a row.
    """
    clock = time.perf_counter_ns
    interval_ns = int(interval_seconds * 1e9)
    last_success_ns = clock()
    while not until():
        sent_ns = clock()
        try:
            applied, hub_lag_ms = await hub_applied(stub, site_id)
        except grpc.aio.AioRpcError as error:
            timeline.poll_failures += 1
            if clock() - last_success_ns > POLL_FAILURE_SECONDS_MAX * 1e9:
                raise LoadError(f"hub ListSites failing: {describe_error(error)}") from None
        else:
            last_success_ns = clock()
            timeline.poll_round_trips_ns.append(last_success_ns - sent_ns)
            timeline.observe(last_success_ns, applied)
            timeline.hub_lag_ms.append((last_success_ns, hub_lag_ms))
        pause_ns = sent_ns + interval_ns - clock()
        if pause_ns > 0:
            await asyncio.sleep(pause_ns / 1e9)


# ----- paced load ----------------------------------------------------------------


@dataclass
class PacedResult:
    """Replies of a paced load: (arrival, sequence) of each success, in any order."""

    commits: list[tuple[int, int]]
    call_latencies_ns: list[tuple[int, int]]
    errors: list[int]


async def paced_load(
    call: Callable[[], Awaitable[int | None]],
    rate_per_s: float,
    callers: int,
    start_ns: int,
    stop_ns: int,
) -> PacedResult:
    """Sends calls at ``rate_per_s`` from ``start_ns`` until ``stop_ns``.

    Send slot k is due at ``start_ns + k / rate``; each of ``callers`` tasks
    takes the next free slot, waits for it, calls and records. A caller that
    falls behind sends at once, so the offered rate is kept on average as
    long as the callers suffice. ``call`` returns the reply's sequence, or
    None on an expected error.
    """
    assert rate_per_s > 0, rate_per_s
    assert callers > 0, callers
    clock = time.perf_counter_ns
    interval_ns = 1e9 / rate_per_s
    next_slot = 0
    result = PacedResult(commits=[], call_latencies_ns=[], errors=[])

    async def caller() -> None:
        nonlocal next_slot
        while True:
            due_ns = start_ns + int(next_slot * interval_ns)
            if due_ns >= stop_ns:
                return
            next_slot += 1
            pause_ns = due_ns - clock()
            if pause_ns > 0:
                await asyncio.sleep(pause_ns / 1e9)
            sent_ns = clock()
            sequence = await call()
            done_ns = clock()
            if sequence is None:
                result.errors.append(done_ns)
            else:
                result.commits.append((done_ns, sequence))
                result.call_latencies_ns.append((done_ns, done_ns - sent_ns))

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    timeout_seconds = (stop_ns - clock()) / 1e9 + CALL_TIMEOUT_SECONDS + 5.0
    try:
        done, pending = await asyncio.wait(
            tasks, timeout=timeout_seconds, return_when=asyncio.FIRST_EXCEPTION
        )
        for task in done:
            task.result()
        if pending:
            raise LoadError(f"{len(pending)} callers still busy after {timeout_seconds:.0f} s")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return result


def describe_polls(timeline: AppliedTimeline) -> str:
    """ListSites round trips: a slow one is a hub whose reads stalled."""
    trips = sorted(timeline.poll_round_trips_ns)
    longest = trips[-1] / 1e6 if trips else 0.0
    return (
        f"ListSites round trip p50 {percentile_ms(trips, 0.5):.1f} ms "
        f"p99 {percentile_ms(trips, 0.99):.1f} ms max {longest:.1f} ms "
        f"over {len(trips)} polls, {timeline.poll_failures} failed"
    )


def lag_run(
    context: CaseContext,
    timeline: AppliedTimeline,
    load: PacedResult,
    window: tuple[int, int],
) -> Run:
    """Turns the replies and the hub's timeline into the run's figures."""
    start_ns, end_ns = window
    window_ns = end_ns - start_ns
    measured = [(at, seq) for at, seq in load.commits if start_ns <= at < end_ns]
    lags_ns: list[int] = []
    unapplied = 0
    for committed_ns, sequence in measured:
        applied_ns = timeline.applied_at(sequence)
        if applied_ns is None:
            unapplied += 1
        else:
            # A poll can see an entry applied before its Reserve reply arrived;
            # that lag is 0, not negative.
            lags_ns.append(max(0, applied_ns - committed_ns))
    applied_in_window = timeline.applied_by(end_ns) - timeline.applied_by(start_ns)
    failed = sum(1 for at in load.errors if start_ns <= at < end_ns)
    achieved = len(measured) * LINES_PER_REQUEST / (window_ns / 1e9)
    run = make_run(
        {
            "concurrency": CALLERS,
            "offered_per_s": OFFERED_RATE_PER_S,
            "achieved_per_s": round(achieved, 1),
            "lines_per_request": LINES_PER_REQUEST,
            "poll_interval_ms": POLL_INTERVAL_SECONDS * 1000,
        },
        applied_in_window,
        window_ns,
        lags_ns,
    )
    run["errors"] = failed + unapplied
    calls = sorted(latency for at, latency in load.call_latencies_ns if start_ns <= at < end_ns)
    hub_lags = sorted(lag * 1_000_000 for at, lag in timeline.hub_lag_ms if start_ns <= at < end_ns)
    context.console.print(
        f"{CASE_NAME}: {len(measured)} Reserves in window ({achieved:,.0f}/s, "
        f"reply p50 {percentile_ms(calls, 0.5):.2f} ms p99 {percentile_ms(calls, 0.99):.2f} ms), "
        f"{failed} failed, {unapplied} not applied after {DRAIN_TIMEOUT_SECONDS:.0f} s; "
        f"hub's own sync_lag_ms p50 {percentile_ms(hub_lags, 0.5):.0f} "
        f"p99 {percentile_ms(hub_lags, 0.99):.0f}; "
        f"{len(hub_lags) / (window_ns / 1e9):,.0f} polls/s; {describe_polls(timeline)}",
        markup=False,
    )
    return run


async def measure_lag(context: CaseContext, edge_target: str, hub_target: str) -> Run:
    """Seeds, drives paced Reserves, and measures commit-to-apply lag."""
    config: BenchConfig = context.config
    async with open_channel(edge_target) as edge_channel, open_channel(hub_target) as hub_channel:
        edge_stub: EdgeStub = edge_pb2_grpc.EdgeInventoryServiceStub(edge_channel)
        hub_stub: HubStub = hub_pb2_grpc.HubInventoryServiceStub(hub_channel)
        await upsert_items(edge_stub, edge_target, SKUS)
        await receive(edge_stub, edge_target, [(sku, RECEIVE_QUANTITY) for sku in SKUS])
        seeded = await edge_sync_status(edge_stub, edge_target)
        # The hub is consuming and has caught up before anything is measured.
        await wait_for_hub(hub_stub, hub_target, SITE_ID, seeded.last_sequence)

        reserve = raw_unary(edge_channel, RESERVE_METHOD_PATH)
        lines = [edge_pb2.ReserveLine(sku=sku, quantity=1) for sku in SKUS]
        error_codes: Counter[str] = Counter()

        async def call() -> int | None:
            request = edge_pb2.ReserveRequest(
                request_id=str(uuid.uuid4()),
                lines=lines,
                kind=common_pb2.RESERVATION_KIND_HARD,
            )
            try:
                reply = await reserve(request.SerializeToString(), timeout=CALL_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as error:
                error_codes[describe_error(error)] += 1
                return None
            sequence: int = edge_pb2.ReserveResponse.FromString(reply).as_of_sequence
            return sequence

        timeline = AppliedTimeline()
        timeline.observe(time.perf_counter_ns(), (await hub_applied(hub_stub, SITE_ID))[0])
        clock = time.perf_counter_ns
        load_start_ns = clock()
        start_ns = load_start_ns + int(config.warmup_seconds * 1e9)
        end_ns = start_ns + int(config.duration_seconds * 1e9)
        target_sequence = 0
        load_done = False

        def drained() -> bool:
            return load_done and timeline.applied >= target_sequence

        poller = asyncio.create_task(
            poll_hub(hub_stub, SITE_ID, timeline, POLL_INTERVAL_SECONDS, drained)
        )
        try:
            load = await paced_load(
                call, OFFERED_RATE_PER_S // LINES_PER_REQUEST, CALLERS, load_start_ns, end_ns
            )
            target_sequence = max((seq for at, seq in load.commits if at < end_ns), default=0)
            load_done = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(poller), DRAIN_TIMEOUT_SECONDS)
            if poller.done():
                poller.result()  # re-raises a poller failure
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        for description, count in error_codes.most_common(3):
            context.console.print(
                f"{CASE_NAME}: {count} x {description} (warm-up included)", markup=False
            )
        if not any(start_ns <= at < end_ns for at, _ in load.commits):
            detail = error_codes.most_common(1)[0][0] if error_codes else "no reply"
            raise TargetError(edge_target, "Reserve", detail)
        return lag_run(context, timeline, load, (start_ns, end_ns))


async def run(context: CaseContext) -> list[Run]:
    """Starts NATS, a hub and an edge, and measures sync lag at the offered rate."""
    with scratch_directory(context.config) as scratch:
        async with (
            nats_server(scratch / "nats") as nats,
            hub_process(scratch, nats.url) as hub_target,
            edge_process(scratch, SITE_ID, nats.url) as edge_target,
        ):
            measured = await measure_lag(context, edge_target, hub_target)
    context.report_run(CASE_NAME, measured)
    return [measured]
