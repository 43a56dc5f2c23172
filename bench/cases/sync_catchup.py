"""sync_catchup: how fast the hub drains a backlog of ledger events after an outage.

A nats-server and an edge agent (with ``--nats``) run while the hub does
not. The edge writes ``CATCHUP_EVENTS_DEFAULT`` ledger entries (Receives of
500 lines, one entry per line, over ``SKU_COUNT`` SKUs) and the case waits
until GetSyncStatus shows every one acknowledged by JetStream, so the whole
backlog is on the bus. Then the hub starts and ListSites is polled until it
has applied the edge's last sequence.

Timing starts at the first ListSites reply (the hub's gRPC port comes up a
moment after its consumer starts, so a few batches may already be applied;
they are left out of both the count and the time, and the hub's start-up
time is left out with them). When the whole backlog was already applied by
then (a tiny backlog), timing starts at the hub's spawn instead; the run's
``timed_from`` param says which. ``seconds_from_spawn`` is the whole time,
start-up included.

``ops_per_s`` is events applied per second; p50/p99 are the times from the
start of timing until half and 99% of the timed events were seen applied.
The baseline is the pipelined ``nats_publish`` run (messages/s of durable
publishes; each sync message carries up to 500 entries).

The backlog size can be shrunk (the smoke test does) with the environment
variable ``STOCKD_BENCH_CATCHUP_EVENTS``: the harness's command line belongs
to ``bench/__main__.py`` and the settings object to ``bench/config.py``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

import grpc

from bench.cases import nats_publish
from bench.cases.nats_publish import nats_server
from bench.cases.sync_lag import (
    AppliedTimeline,
    describe_polls,
    edge_process,
    edge_sync_status,
    hub_applied,
    hub_process,
    poll_hub,
    receive,
    upsert_items,
)
from bench.channels import open_channel
from bench.context import CaseContext
from bench.environment import scratch_directory
from bench.errors import BenchError, LoadError
from bench.results import Run, make_run, with_baseline
from stockd.v1 import edge_pb2_grpc, hub_pb2_grpc

if TYPE_CHECKING:
    from stockd.v1.edge_pb2_grpc import EdgeInventoryServiceAsyncStub as EdgeStub
    from stockd.v1.hub_pb2_grpc import HubInventoryServiceAsyncStub as HubStub

CASE_NAME = "sync_catchup"
SITE_ID = "catchup"
CATCHUP_EVENTS_DEFAULT = 100_000
CATCHUP_EVENTS_MIN = 500
CATCHUP_EVENTS_MAX = 2_000_000
CATCHUP_EVENTS_ENV = "STOCKD_BENCH_CATCHUP_EVENTS"
LINES_PER_RECEIVE = 500
SKU_COUNT = LINES_PER_RECEIVE
RECEIVE_CONCURRENCY = 4
POLL_INTERVAL_SECONDS = 0.005
STATUS_POLL_SECONDS = 0.05
# Bounds on each phase; the drain bound grows with the backlog (at least
# 1,000 events/s is expected of any hub worth measuring).
PUBLISH_TIMEOUT_SECONDS_MIN = 120.0
DRAIN_TIMEOUT_SECONDS_MIN = 120.0
EVENTS_PER_SECOND_FLOOR = 1000


class CatchupConfigError(BenchError):
    """The backlog size from the environment is not a usable number."""


def catchup_events() -> int:
    """The backlog size: the environment override, or the default.

    Raises:
        CatchupConfigError: The override is not an integer in range.
    """
    text = os.environ.get(CATCHUP_EVENTS_ENV)
    if text is None:
        return CATCHUP_EVENTS_DEFAULT
    try:
        value = int(text)
    except ValueError:
        raise CatchupConfigError(f"{CATCHUP_EVENTS_ENV}={text!r} is not an integer") from None
    if not CATCHUP_EVENTS_MIN <= value <= CATCHUP_EVENTS_MAX:
        raise CatchupConfigError(
            f"{CATCHUP_EVENTS_ENV}={value} is outside {CATCHUP_EVENTS_MIN}-{CATCHUP_EVENTS_MAX}"
        )
    return value


async def write_backlog(stub: EdgeStub, target: str, events: int) -> int:
    """Writes ``events`` receipt entries; returns once all are on the bus.

    Returns:
        The edge's last sequence, every entry up to which JetStream acknowledged.

    Raises:
        TargetError: The agent refused a call.
        LoadError: The agent did not publish everything in time.
    """
    skus = [f"CU{index:05d}" for index in range(SKU_COUNT)]
    await upsert_items(stub, target, skus)
    calls: list[list[tuple[str, int]]] = []
    for first in range(0, events, LINES_PER_RECEIVE):
        count = min(LINES_PER_RECEIVE, events - first)
        calls.append([(sku, 1) for sku in skus[:count]])
    limit = asyncio.Semaphore(RECEIVE_CONCURRENCY)

    async def one(lines: list[tuple[str, int]]) -> None:
        async with limit:
            await receive(stub, target, lines)

    await asyncio.gather(*(one(lines) for lines in calls))
    loop = asyncio.get_running_loop()
    timeout_seconds = max(PUBLISH_TIMEOUT_SECONDS_MIN, events / EVENTS_PER_SECOND_FLOOR)
    deadline = loop.time() + timeout_seconds
    while True:
        status = await edge_sync_status(stub, target)
        if status.last_sequence > 0 and status.acknowledged_sequence >= status.last_sequence:
            last: int = status.last_sequence
            return last
        if loop.time() > deadline:
            raise LoadError(
                f"{CASE_NAME}: edge acknowledged {status.acknowledged_sequence} of "
                f"{status.last_sequence} after {timeout_seconds:.0f} s "
                f"(connected={status.connected}, last_error={status.last_error!r})"
            )
        await asyncio.sleep(STATUS_POLL_SECONDS)  # poll interval of a condition loop


async def first_reply(stub: HubStub, timeline: AppliedTimeline) -> tuple[int, int]:
    """Waits for the hub's first ListSites answer and records it.

    Returns:
        (arrival, applied_sequence) of that answer.

    Raises:
        LoadError: The hub did not answer within the call timeout.
    """
    try:
        applied, _ = await hub_applied(stub, SITE_ID)
    except grpc.aio.AioRpcError as error:
        raise LoadError(f"{CASE_NAME}: first ListSites failed: {error.code().name}") from None
    at_ns = time.perf_counter_ns()
    timeline.observe(at_ns, applied)
    return at_ns, applied


async def measure_catchup(context: CaseContext) -> Run:
    """Builds the backlog with the hub down, then times the hub draining it."""
    events = catchup_events()
    with scratch_directory(context.config) as scratch:
        async with (
            nats_server(scratch / "nats") as nats,
            edge_process(scratch, SITE_ID, nats.url) as edge_target,
        ):
            async with open_channel(edge_target) as edge_channel:
                edge_stub: EdgeStub = edge_pb2_grpc.EdgeInventoryServiceStub(edge_channel)
                written_at = time.perf_counter_ns()
                last = await write_backlog(edge_stub, edge_target, events)
                context.console.print(
                    f"{CASE_NAME}: {last} ledger entries on the bus in "
                    f"{(time.perf_counter_ns() - written_at) / 1e9:.1f} s; starting the hub",
                    markup=False,
                )
            spawned_ns = time.perf_counter_ns()
            async with (
                hub_process(scratch, nats.url) as hub_target,
                open_channel(hub_target) as hub_channel,
            ):
                hub_stub: HubStub = hub_pb2_grpc.HubInventoryServiceStub(hub_channel)
                timeline = AppliedTimeline()
                first = await first_reply(hub_stub, timeline)
                drain_timeout = max(DRAIN_TIMEOUT_SECONDS_MIN, last / EVENTS_PER_SECOND_FLOOR)
                try:
                    await asyncio.wait_for(
                        poll_hub(
                            hub_stub,
                            SITE_ID,
                            timeline,
                            POLL_INTERVAL_SECONDS,
                            lambda: timeline.applied >= last,
                        ),
                        drain_timeout,
                    )
                except TimeoutError:
                    raise LoadError(
                        f"{CASE_NAME}: hub applied {timeline.applied} of {last} "
                        f"in {drain_timeout:.0f} s"
                    ) from None
    return catchup_run(context, timeline, first, events, last, spawned_ns)


def catchup_run(
    context: CaseContext,
    timeline: AppliedTimeline,
    first: tuple[int, int],
    events: int,
    last: int,
    spawned_ns: int,
) -> Run:
    """The run's figures from the hub's timeline and its first ListSites answer."""
    first_ns, first_applied = first
    done_ns = timeline.times_ns[-1]
    if first_applied < last:
        timed_from, zero_ns, base = "first_list_sites", first_ns, first_applied
    else:
        timed_from, zero_ns, base = "hub_spawn", spawned_ns, 0
    # Each event's time-to-visible: the reply that first showed it applied.
    visible_ns: list[int] = []
    previous = base
    for at_ns, sequence in zip(timeline.times_ns, timeline.sequences, strict=True):
        if sequence > previous:
            visible_ns.extend([at_ns - zero_ns] * (sequence - previous))
            previous = sequence
    window_ns = max(1, done_ns - zero_ns)
    run = make_run(
        {
            "concurrency": 1,
            "receipt_events": events,
            "ledger_events": last,
            "timed_events": last - base,
            "timed_from": timed_from,
            "seconds_from_spawn": round((done_ns - spawned_ns) / 1e9, 3),
        },
        last - base,
        window_ns,
        visible_ns,
    )
    context.console.print(
        f"{CASE_NAME}: hub applied {last - base} of {last} entries in "
        f"{window_ns / 1e9:.2f} s (timed from {timed_from}); "
        f"{(done_ns - spawned_ns) / 1e9:.2f} s from the hub's spawn; {describe_polls(timeline)}",
        markup=False,
    )
    return run


async def publish_baseline(context: CaseContext) -> float:
    """The pipelined nats_publish rate: from this harness run, or measured now."""
    earlier = nats_publish.pipelined_ops_per_s(context.results.get(nats_publish.CASE_NAME, []))
    if earlier is not None:
        return earlier
    measured = nats_publish.pipelined_ops_per_s(await nats_publish.measure_publish(context.config))
    assert measured is not None
    return measured


async def run(context: CaseContext) -> list[Run]:
    """Measures the catch-up, then adds the publish baseline (measured after, if missing)."""
    measured = await measure_catchup(context)
    result = with_baseline(measured, nats_publish.CASE_NAME, await publish_baseline(context))
    context.report_run(CASE_NAME, result)
    return [result]
