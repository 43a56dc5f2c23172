"""Closed-loop load generator: N callers, each with one call in flight.

Closed loop because that is how scanner guns and an OMS behave (a caller
waits for its answer before asking again), and it keeps the client cheap: it
runs in this process on the same event loop, beside the server's process, so
every microsecond it spends is a microsecond taken from the server's core.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.config import CALL_TIMEOUT_SECONDS
from bench.errors import LoadError

Call = Callable[[], Awaitable[bool]]
"""One operation; returns True on success and False on an expected error."""

# Slack beyond warm-up plus duration before the whole load is abandoned: the
# last calls may still be in flight when the window closes.
_FINISH_GRACE_SECONDS = CALL_TIMEOUT_SECONDS + 5.0


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What the callers did inside the measured window.

    Attributes:
        completed: Successful calls that finished inside the window.
        errors: Failed calls that finished inside the window.
        window_ns: Length of the window.
        latencies_ns: Latency of each successful call counted in ``completed``.
    """

    completed: int
    errors: int
    window_ns: int
    latencies_ns: list[int]


async def closed_loop(
    call: Call,
    concurrency: int,
    warmup_seconds: float,
    duration_seconds: float,
) -> LoadResult:
    """Runs ``concurrency`` callers through a warm-up and a measured window.

    A call counts when it finishes inside the window, wherever it started, so
    the rate is completions per second of window, exact for a closed loop.
    Each caller stops on its own after the window closes: no shared flag and
    no sleeping coordinator.
    """
    assert concurrency > 0, concurrency
    start_ns = time.perf_counter_ns() + int(warmup_seconds * 1e9)
    end_ns = start_ns + int(duration_seconds * 1e9)
    latencies_ns: list[int] = []
    errors = 0

    async def caller() -> None:
        nonlocal errors
        clock = time.perf_counter_ns
        while True:
            sent_ns = clock()
            ok = await call()
            done_ns = clock()
            if start_ns <= done_ns < end_ns:
                if ok:
                    latencies_ns.append(done_ns - sent_ns)
                else:
                    errors += 1
            elif done_ns >= end_ns:
                return

    tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
    timeout_seconds = warmup_seconds + duration_seconds + _FINISH_GRACE_SECONDS
    try:
        done, pending = await asyncio.wait(
            tasks, timeout=timeout_seconds, return_when=asyncio.FIRST_EXCEPTION
        )
        for task in done:
            task.result()  # Re-raises the first caller's failure, if any.
        if pending:
            raise LoadError(f"{len(pending)} callers still busy after {timeout_seconds:.0f} s")
    finally:
        for task in tasks:
            task.cancel()
        # Collects every outcome so that no task is left unretrieved.
        await asyncio.gather(*tasks, return_exceptions=True)
    return LoadResult(
        completed=len(latencies_ns),
        errors=errors,
        window_ns=end_ns - start_ns,
        latencies_ns=latencies_ns,
    )
