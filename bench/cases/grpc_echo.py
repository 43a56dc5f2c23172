"""grpc_echo: the rate and latency of a bare grpc.aio unary call on this machine.

It is the ceiling for every stockd RPC and the baseline other cases divide
by: a real RPC's ratio to it is the share of the time spent on gRPC itself.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from bench.channels import open_channel, raw_unary
from bench.config import CALL_TIMEOUT_SECONDS, BenchConfig
from bench.context import CaseContext
from bench.echo_server import METHOD_PATH
from bench.environment import scratch_directory
from bench.loadgen import closed_loop
from bench.processes import served
from bench.results import Run, make_run

CASE_NAME = "grpc_echo"
# About the size of a one-line ReserveRequest, so the baseline carries the
# same bytes as the call it is compared with.
PAYLOAD_BYTES = 64
# ``python -m bench.echo_server`` must find the ``bench`` package whatever the
# harness's working directory is.
_REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


async def measure_echo(
    config: BenchConfig,
    concurrency_levels: Sequence[int],
    context: CaseContext | None = None,
) -> list[Run]:
    """Starts an echo server in its own process and measures each concurrency.

    Also used by cases whose baseline is the echo when this case was not run.
    """
    payload = b"x" * PAYLOAD_BYTES
    runs: list[Run] = []
    with scratch_directory(config) as scratch:
        port_file = scratch / "echo.port"
        argv = [sys.executable, "-m", "bench.echo_server", "--port-file", str(port_file)]
        async with (
            served(argv, port_file, scratch / "echo.log", cwd=_REPOSITORY_ROOT) as port,
            open_channel(f"127.0.0.1:{port}") as channel,
        ):
            echo = raw_unary(channel, METHOD_PATH)

            async def call() -> bool:
                try:
                    await echo(payload, timeout=CALL_TIMEOUT_SECONDS)
                except grpc.aio.AioRpcError:
                    return False
                return True

            for concurrency in concurrency_levels:
                result = await closed_loop(
                    call, concurrency, config.warmup_seconds, config.duration_seconds
                )
                run = make_run(
                    {"concurrency": concurrency, "payload_bytes": PAYLOAD_BYTES},
                    result.completed,
                    result.window_ns,
                    result.latencies_ns,
                )
                run["errors"] = result.errors
                if context is not None:
                    context.report_run(CASE_NAME, run)
                runs.append(run)
    return runs


async def run(context: CaseContext) -> list[Run]:
    """Measures the echo at every configured concurrency."""
    return await measure_echo(context.config, context.config.concurrency_levels, context)
