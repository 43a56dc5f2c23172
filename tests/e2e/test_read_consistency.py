"""Reads report only durable ledger state, never a batch whose commit is still pending."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import grpc
import grpc.aio

from stockd.v1 import edge_pb2
from tests.e2e.helpers import (
    Agent,
    availability,
    expect_error,
    new_id,
    reserve,
    stocked_item,
    wait_for,
)

# SQLite's busy timeout in the agent is 5 s; the blocked commit fails after it.
BLOCKED_COMMIT_SECONDS = 15.0


async def test_reads_do_not_see_a_commit_that_is_still_pending(agent: Agent) -> None:
    await stocked_item(agent.stub, "A", 10)
    before = await availability(agent.stub, "A")
    # Another writer holds the write lock, so the agent's next commit waits (and fails).
    blocker = sqlite3.connect(agent.db_path, isolation_level=None, timeout=10)
    pending: asyncio.Task[edge_pb2.ReserveResponse] | None = None
    try:
        blocker.execute("BEGIN IMMEDIATE")
        pending = asyncio.create_task(reserve(agent.stub, {"A": 4}, request_id=new_id()))

        async def read_is_clean() -> bool:
            seen = await availability(agent.stub, "A")
            assert seen == before, "a read reported a write that is not durable"
            return pending.done()

        await wait_for(read_is_clean, BLOCKED_COMMIT_SECONDS, message="the blocked commit")
        await expect_error(pending, grpc.StatusCode.UNAVAILABLE, "ERROR_REASON_STORAGE_UNAVAILABLE")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        if pending is not None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await pending
    assert await availability(agent.stub, "A") == before
