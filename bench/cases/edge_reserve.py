"""edge_reserve: durable one-line hard reservations against a real edge agent.

Each reply means a ledger entry is on disk, so this is the edge's answer to
"how many scanner guns can one site serve". Its ratio to grpc_echo at the same
concurrency shows how much of the budget the agent itself spends.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import grpc

from bench.cases import grpc_echo
from bench.channels import describe_error, open_channel, raw_unary
from bench.config import CALL_TIMEOUT_SECONDS, SETUP_CALL_TIMEOUT_SECONDS
from bench.context import CaseContext
from bench.environment import scratch_directory
from bench.errors import TargetError
from bench.loadgen import closed_loop
from bench.processes import served
from bench.results import Run, make_run, with_baseline
from stockd.v1 import common_pb2, edge_pb2, edge_pb2_grpc

CASE_NAME = "edge_reserve"
SITE_ID = "bench"
SKU_COUNT = 1000
# Far more than a run can reserve (a few hundred thousand calls spread over
# SKU_COUNT SKUs) while staying well inside any sane per-line quantity limit.
RECEIVE_QUANTITY = 1_000_000
RECEIVE_LINES_PER_CALL = 500
SEED_CONCURRENCY = 16
# Fixed, so two runs reserve the same sequence of SKUs.
RANDOM_SEED = 20_240_601

_SERVICE = edge_pb2.DESCRIPTOR.services_by_name["EdgeInventoryService"]
RESERVE_METHOD_PATH = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Reserve'].name}"


def sku_codes() -> list[str]:
    """The SKUs the case creates and reserves."""
    return [f"SKU{index:05d}" for index in range(SKU_COUNT)]


@asynccontextmanager
async def edge_target(context: CaseContext) -> AsyncIterator[str]:
    """The agent to call: the configured one, or a fresh one in its own process.

    Raises:
        ServerStartError: The agent did not start.
    """
    config = context.config
    if config.edge_target is not None:
        yield config.edge_target
        return
    with scratch_directory(config) as scratch:
        port_file = scratch / "edge.port"
        argv = [
            sys.executable, "-m", "edge_agent",
            "--site", SITE_ID,
            "--db", str(scratch / "edge.db"),
            "--listen", "127.0.0.1:0",
            "--port-file", str(port_file),
        ]  # fmt: skip
        async with served(argv, port_file, scratch / "edge.log") as port:
            yield f"127.0.0.1:{port}"


async def seed(
    stub: edge_pb2_grpc.EdgeInventoryServiceAsyncStub, target: str, skus: Sequence[str]
) -> None:
    """Creates the items and receives plenty of each, so no Reserve runs short.

    Raises:
        TargetError: The agent refused a set-up call.
    """
    limit = asyncio.Semaphore(SEED_CONCURRENCY)

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
    for first in range(0, len(skus), RECEIVE_LINES_PER_CALL):
        request = edge_pb2.ReceiveRequest(
            request_id=str(uuid.uuid4()),
            lines=[
                edge_pb2.ReceiptLine(sku=sku, quantity=RECEIVE_QUANTITY)
                for sku in skus[first : first + RECEIVE_LINES_PER_CALL]
            ],
            reference="bench",
        )
        try:
            await stub.Receive(request, timeout=SETUP_CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise TargetError(target, "Receive", describe_error(error)) from None


async def measure_reserve(context: CaseContext, target: str) -> list[Run]:
    """Seeds the agent, then measures Reserve at each concurrency."""
    config = context.config
    skus = sku_codes()
    # Lines are built once; each call only adds a fresh request_id, since a
    # repeated one would be answered from the stored response.
    lines = [edge_pb2.ReserveLine(sku=sku, quantity=1) for sku in skus]
    chooser = random.Random(RANDOM_SEED)
    runs: list[Run] = []
    async with open_channel(target) as channel:
        await seed(edge_pb2_grpc.EdgeInventoryServiceStub(channel), target, skus)
        reserve = raw_unary(channel, RESERVE_METHOD_PATH)
        error_codes: Counter[str] = Counter()

        async def call() -> bool:
            request = edge_pb2.ReserveRequest(
                request_id=str(uuid.uuid4()),
                lines=[chooser.choice(lines)],
                kind=common_pb2.RESERVATION_KIND_HARD,
            )
            try:
                await reserve(request.SerializeToString(), timeout=CALL_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as error:
                error_codes[describe_error(error)] += 1
                return False
            return True

        for concurrency in config.concurrency_levels:
            error_codes.clear()
            result = await closed_loop(
                call, concurrency, config.warmup_seconds, config.duration_seconds
            )
            run = make_run(
                {"concurrency": concurrency, "lines_per_request": 1},
                result.completed,
                result.window_ns,
                result.latencies_ns,
            )
            run["errors"] = result.errors
            for description, count in error_codes.most_common(3):
                context.console.print(
                    f"{CASE_NAME} concurrency={concurrency}: {count} x {description}"
                    " (warm-up included)",
                    markup=False,
                )
            if result.completed == 0:
                # Nothing succeeded: a figure of 0 ops/s would read as a
                # measurement when it is a broken agent.
                detail = error_codes.most_common(1)[0][0] if error_codes else "no reply"
                raise TargetError(target, f"Reserve at concurrency {concurrency}", detail)
            context.report_run(CASE_NAME, run)
            runs.append(run)
    return runs


async def echo_baselines(context: CaseContext) -> dict[int, float]:
    """grpc_echo rate per concurrency: from this harness run, or measured now."""
    baselines = {
        int(run["params"]["concurrency"]): run["ops_per_s"]
        for run in context.results.get(grpc_echo.CASE_NAME, [])
    }
    missing = [level for level in context.config.concurrency_levels if level not in baselines]
    if missing:
        for run in await grpc_echo.measure_echo(context.config, missing, context):
            baselines[int(run["params"]["concurrency"])] = run["ops_per_s"]
    return baselines


async def run(context: CaseContext) -> list[Run]:
    """Measures Reserve, then adds the echo baseline at the same concurrency.

    A missing echo baseline is measured after the agent has stopped, so the
    two never compete for the machine.
    """
    async with edge_target(context) as target:
        runs = await measure_reserve(context, target)
    baselines = await echo_baselines(context)
    return [
        with_baseline(
            measured, grpc_echo.CASE_NAME, baselines[int(measured["params"]["concurrency"])]
        )
        for measured in runs
    ]
