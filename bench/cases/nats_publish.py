"""nats_publish: raw JetStream publishes with durable acks, the bus's ceiling.

A real nats-server is started with the product's own config (JetStream,
``sync_interval: always``, so an ack means the message was fsynced) and the
product's own stream (``ensure_streams``). Messages of about 1 KiB go to one
site's events subject, each with a unique ``Nats-Msg-Id`` as the edge sends
them (so the server's duplicate tracking is paid for here too).

Two runs: one message at a time (the latency of one durable ack) and a
window of ``PIPELINED_IN_FLIGHT`` unacknowledged messages (the throughput the
disk allows). ``ops_per_s`` is acknowledged messages per second; p50/p99 are
publish-to-ack latencies. The pipelined run is the baseline of
``sync_catchup``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.api import PubAck

from bench.config import CALL_TIMEOUT_SECONDS, BenchConfig
from bench.context import CaseContext
from bench.environment import scratch_directory
from bench.errors import LoadError, ServerStartError, TargetError
from bench.results import Run, make_run
from server.sync import streams
from server.sync.nats_server import NatsServer, NatsServerError

CASE_NAME = "nats_publish"
PAYLOAD_BYTES = 1024
PIPELINED_IN_FLIGHT = 256
IN_FLIGHT_LEVELS = (1, PIPELINED_IN_FLIGHT)
# The subject of one (fictitious) site on the product's events stream.
SITE_ID = "bench-publish"
NATS_CONNECT_TIMEOUT_SECONDS = 5.0
# nats-py's own cap on unacknowledged publishes; the case keeps its own,
# smaller window, so this one must never be what blocks.
_CLIENT_PENDING_MAX = 65_536


@contextlib.asynccontextmanager
async def nats_server(work_dir: Path) -> AsyncIterator[NatsServer]:
    """A started nats-server (product config), stopped (SIGTERM, then kill) on exit.

    Raises:
        ServerStartError: The binary is missing or the server did not come up.
    """
    server = NatsServer(work_dir)
    try:
        await server.start()  # kills its own process if it fails to start
    except NatsServerError as error:
        argv = ["nats-server", "-c", str(server.config_path)]
        raise ServerStartError(argv, str(error), "") from None
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def nats_client(url: str, name: str) -> AsyncIterator[NatsClient]:
    """One NATS connection that never reconnects (a dead server must fail the run).

    Raises:
        TargetError: The server did not accept the connection.
    """

    async def ignore_error(_: Exception) -> None:
        """Errors surface as failed publishes; logging each would flood the output."""

    try:
        client = await asyncio.wait_for(
            nats.connect(
                url,
                name=name,
                allow_reconnect=False,
                connect_timeout=NATS_CONNECT_TIMEOUT_SECONDS,
                error_cb=ignore_error,
            ),
            NATS_CONNECT_TIMEOUT_SECONDS * 2,
        )
    except (NatsError, OSError, TimeoutError) as error:
        raise TargetError(url, "connect", repr(error)) from None
    try:
        yield client
    finally:
        await client.close()


async def measure_window(
    client: NatsClient, config: BenchConfig, in_flight: int, run_label: str
) -> Run:
    """Publishes for warm-up plus duration with at most ``in_flight`` unacked messages.

    An ack counts when it arrives inside the measured window; its latency is
    from the publish call (after a window slot was free) to the ack.

    Raises:
        LoadError: No ack freed a window slot within the call timeout.
    """
    assert in_flight > 0, in_flight
    js = client.jetstream(publish_async_max_pending=_CLIENT_PENDING_MAX)
    subject = streams.events_subject(SITE_ID)
    payload = b"x" * PAYLOAD_BYTES
    window = asyncio.Semaphore(in_flight)
    clock = time.perf_counter_ns
    start_ns = clock() + int(config.warmup_seconds * 1e9)
    end_ns = start_ns + int(config.duration_seconds * 1e9)
    latencies_ns: list[int] = []
    errors = 0
    outstanding: set[asyncio.Future[PubAck]] = set()

    def on_ack(sent_ns: int, future: asyncio.Future[PubAck]) -> None:
        nonlocal errors
        done_ns = clock()
        window.release()
        outstanding.discard(future)
        failed = future.cancelled() or future.exception() is not None
        if start_ns <= done_ns < end_ns:
            if failed:
                errors += 1
            else:
                latencies_ns.append(done_ns - sent_ns)

    number = 0
    try:
        while True:
            try:
                await asyncio.wait_for(window.acquire(), CALL_TIMEOUT_SECONDS)
            except TimeoutError:
                raise LoadError(
                    f"{CASE_NAME}: no JetStream ack for {CALL_TIMEOUT_SECONDS:.0f} s"
                ) from None
            sent_ns = clock()
            if sent_ns >= end_ns:
                window.release()
                break
            number += 1
            try:
                future = await js.publish_async(
                    subject, payload, headers={"Nats-Msg-Id": f"{run_label}:{number}"}
                )
            except NatsError as error:
                raise LoadError(f"{CASE_NAME}: publish failed: {error!r}") from None
            outstanding.add(future)
            future.add_done_callback(functools.partial(on_ack, sent_ns))
        if outstanding:
            # Acks after the window do not count, but are waited for so the
            # next run starts on an idle server.
            await asyncio.wait(set(outstanding), timeout=CALL_TIMEOUT_SECONDS)
    finally:
        for future in list(outstanding):
            future.cancel()
    run = make_run(
        {"concurrency": in_flight, "in_flight": in_flight, "payload_bytes": PAYLOAD_BYTES},
        len(latencies_ns),
        end_ns - start_ns,
        latencies_ns,
    )
    run["errors"] = errors
    return run


async def measure_publish(config: BenchConfig, context: CaseContext | None = None) -> list[Run]:
    """Starts a nats-server and measures each in-flight window against it.

    Also used by ``sync_catchup`` when this case was not run.
    """
    runs: list[Run] = []
    with scratch_directory(config) as scratch:
        async with (
            nats_server(scratch / "nats") as server,
            nats_client(server.url, "stockd-bench-publish") as client,
        ):
            await streams.ensure_streams(client.jetstream())
            for in_flight in IN_FLIGHT_LEVELS:
                run = await measure_window(client, config, in_flight, f"w{in_flight}")
                if context is not None:
                    context.report_run(CASE_NAME, run)
                runs.append(run)
    return runs


def pipelined_ops_per_s(runs: list[Run]) -> float | None:
    """The rate of the widest-window run, or None when there is none."""
    pipelined = [run for run in runs if int(run["params"].get("in_flight", 0)) > 1]
    if not pipelined:
        return None
    return max(pipelined, key=lambda run: int(run["params"]["in_flight"]))["ops_per_s"]


async def run(context: CaseContext) -> list[Run]:
    """Measures one-at-a-time and pipelined durable publishes."""
    return await measure_publish(context.config, context)
