"""Proves the hub survives SIGKILL mid-stream: restarted on the same database it
resumes from its durable per-site position (applied_sequence never goes backwards,
as seen by a reader polling throughout), and once the edge's stream is drained
its view equals the edge's ledger and the test's tally exactly, so nothing was
applied twice or lost; and an idle hub and edge exit promptly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from server.sync.nats_server import NatsServer
from tests.integration.conftest import eventually
from tests.integration.sync_helpers import (
    HubProcess,
    ProcessGroup,
    Workload,
    wait_in_sync,
)

SITE = "S1"
SKUS = ("A", "B", "C")
INITIAL_RECEIPT = 80
CRASHES = 2
STEPS_BETWEEN_CRASHES = 80
STEPS_WHILE_DOWN = 40
MONITOR_POLL_SECONDS = 0.005
PROGRESS_TIMEOUT_SECONDS = 20.0
# Inside `docker stop`'s default 10 s grace (the bounded NATS drain and close
# take up to about 4 s of it; the old unbounded drain took 30 s).
SIGTERM_EXIT_SECONDS = 10.0
# Idle fetch rounds (one per second) each leave a stale pull-status message in
# nats-py's queue with a good chance, after which drain() cannot finish; three
# rounds make that state near certain for both processes.
IDLE_MS = 3000
IDLE_TIMEOUT_SECONDS = 15.0
# The hub's SQLite busy timeout is 5 s; observe well inside it.
STALL_OBSERVE_SECONDS = 2.0
STALL_LOCK_TIMEOUT_SECONDS = 5.0


@dataclass
class Monitor:
    """Polls ListSites while the hub runs; pauses (under `lock`) for kill/restart."""

    hub: HubProcess
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    samples: list[tuple[int, int]] = field(default_factory=list)  # (hub start, applied)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stop.is_set():
            async with self.lock:
                if self.hub.running:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        site = await self.hub.site(SITE)
                        if site is not None:
                            self.samples.append((self.hub.starts, site.applied_sequence))
            # Poll interval of a sampling loop, not synchronisation by sleep.
            await asyncio.sleep(MONITOR_POLL_SECONDS)

    def last(self) -> int:
        return self.samples[-1][1] if self.samples else 0


def durable_position(db_path: Path) -> int:
    """The applied_sequence the killed hub's database holds for the site."""
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = connection.execute(
            "SELECT applied_sequence FROM sites WHERE site_id = ?", (SITE,)
        ).fetchone()
    finally:
        connection.close()
    return int(row[0]) if row else 0


async def test_hub_sigkill_mid_stream_resumes_from_its_durable_position(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with ProcessGroup(tmp_path) as group:
        hub = await group.hub(nats_server.url)
        edge = await group.edge(SITE, nats_server.url)
        await edge.setup_items(SKUS)
        workload = Workload(edge, SKUS, random.Random(11))
        workload.apply_events(
            (await edge.client.receive([(sku, INITIAL_RECEIPT) for sku in SKUS])).events
        )
        await wait_in_sync(hub, edge, SKUS)

        monitor = Monitor(hub)

        async def hub_progressed(beyond: int) -> bool:
            return monitor.last() > beyond

        stop_writing = asyncio.Event()
        writer = asyncio.create_task(workload.run_until(stop_writing))
        sampler = asyncio.create_task(monitor.run())
        try:
            steps = 0
            durables: list[int] = []
            for _ in range(CRASHES):
                steps += STEPS_BETWEEN_CRASHES
                await workload.reach(steps)
                await eventually(lambda: hub_progressed(0), what="the hub to apply something")
                async with monitor.lock:
                    await hub.kill()
                durable = durable_position(hub.db_path)
                durables.append(durable)
                # The edge keeps writing while the hub is down.
                steps += STEPS_WHILE_DOWN
                await workload.reach(steps)
                async with monitor.lock:
                    await hub.start()
                    first = await hub.site(SITE)
                    assert first is not None
                    assert first.applied_sequence >= durable, (first, durable)
                    monitor.samples.append((hub.starts, first.applied_sequence))
                await eventually(
                    functools.partial(hub_progressed, durable),
                    timeout_seconds=PROGRESS_TIMEOUT_SECONDS,
                    what="the restarted hub to resume applying",
                )
            steps += STEPS_BETWEEN_CRASHES
            await workload.reach(steps)
        finally:
            stop_writing.set()
            await writer
            report = None
            try:
                report = await wait_in_sync(hub, edge, SKUS)
            finally:
                monitor.stop.set()
                await sampler
        assert report is not None
        assert report.edge == workload.expected()
        # Never backwards: within each life of the hub, and from one durable
        # position to the next. (What a client saw just before a crash may
        # still be ahead of the durable position: that known bug is pinned
        # deterministically by the xfail test below, not left to a race here.)
        regressions = [
            (earlier, later)
            for earlier, later in itertools.pairwise(monitor.samples)
            if earlier[0] == later[0] and later[1] < earlier[1]
        ]
        assert not regressions, regressions[:5]
        assert durables == sorted(durables), durables
        assert durables[0] > 0
        assert report.site is not None
        assert report.site.applied_sequence >= durables[-1]
        assert hub.starts == CRASHES + 1
        assert report.site is not None
        assert report.site.drift_detected == 0


async def test_sigterm_stops_an_idle_hub_and_edge_promptly(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Regression: both used to wait out nats-py's 30 s drain timeout here."""
    async with ProcessGroup(tmp_path) as group:
        hub = await group.hub(nats_server.url)
        # No checksums, so nothing at all reaches the hub while it idles.
        edge = await group.edge(SITE, nats_server.url, checksum_interval_seconds=3600.0)
        await edge.setup_items(SKUS)
        await edge.client.receive([("A", 1)])
        await wait_in_sync(hub, edge, SKUS[:1])

        async def idle() -> bool:
            site = await hub.site(SITE)
            return site is not None and site.data_age_ms >= IDLE_MS

        # Nothing applied for a few fetch rounds (the hub's fetch expires every second).
        await eventually(idle, timeout_seconds=IDLE_TIMEOUT_SECONDS, what="an idle hub")
        hub_seconds, edge_seconds = await asyncio.gather(
            hub.stopped_within(SIGTERM_EXIT_SECONDS), edge.stopped_within(SIGTERM_EXIT_SECONDS)
        )
        assert hub_seconds is not None, f"hub still running {SIGTERM_EXIT_SECONDS}s after SIGTERM"
        assert edge_seconds is not None, f"edge still running {SIGTERM_EXIT_SECONDS}s after SIGTERM"


async def test_reported_applied_sequence_never_runs_ahead_of_the_durable_one(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with ProcessGroup(tmp_path) as group:
        hub, edge, report = await group.synced_site(nats_server.url, SITE, SKUS, [("A", 10)])
        assert report.site is not None
        durable = report.site.applied_sequence

        # A stalled disk: another connection holds the hub database's write
        # lock, so the hub's next commit waits (for less than its busy timeout).
        stall = sqlite3.connect(hub.db_path, timeout=STALL_LOCK_TIMEOUT_SECONDS)
        stall.isolation_level = None
        try:
            stall.execute("BEGIN IMMEDIATE")
            await edge.client.receive([("A", 5)])
            # What clients are told while the commit is stalled.
            seen = durable
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STALL_OBSERVE_SECONDS
            while seen == durable and loop.time() < deadline:
                try:
                    site = await hub.site(SITE)
                except grpc.aio.AioRpcError as error:
                    # Reads wait for the stalled commit rather than report it early.
                    if error.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise
                    continue
                assert site is not None
                seen = site.applied_sequence
                # Poll interval of a sampling loop, not synchronisation by sleep.
                await asyncio.sleep(MONITOR_POLL_SECONDS)
            await hub.kill()
        finally:
            stall.rollback()
            stall.close()
        await hub.start()
        site = await hub.site(SITE)
        assert site is not None
        assert site.applied_sequence >= seen, (
            f"clients were told applied_sequence {seen}; after the crash it is "
            f"{site.applied_sequence}"
        )
        # And the restarted hub catches up (the next entry opens a gap, healed by replay).
        await edge.client.receive([("A", 1)])
        await wait_in_sync(hub, edge, SKUS)
