"""sqlite_commit: what a durable commit costs on this disk, alone and batched.

Raw stdlib sqlite3, WAL, synchronous=FULL: the floor under every durable
stockd write. One row per commit is one fsync per reply; a hundred rows per
commit shows what group commit buys.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from pathlib import Path

from bench.context import CaseContext
from bench.environment import scratch_directory
from bench.loadgen import LoadResult
from bench.results import Run, make_run

CASE_NAME = "sqlite_commit"
ROWS_PER_COMMIT_LEVELS = (1, 100)
_SKU_COUNT = 1000

# Shaped like a ledger entry, so row size and index upkeep are realistic.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    sequence INTEGER PRIMARY KEY,
    sku TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    recorded_at_ns INTEGER NOT NULL
)
"""
_INSERT = "INSERT INTO ledger (sku, quantity, request_id, recorded_at_ns) VALUES (?, ?, ?, ?)"


def _open(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are exactly the BEGIN/COMMIT below.
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        (journal_mode,) = connection.execute("PRAGMA journal_mode=WAL").fetchone()
        assert journal_mode == "wal", journal_mode
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute(_SCHEMA)
    except BaseException:
        connection.close()
        raise
    return connection


def measure_commits(
    path: Path, rows_per_commit: int, warmup_seconds: float, duration_seconds: float
) -> LoadResult:
    """Commits batches back to back; ``completed`` counts rows, latencies are per commit.

    Synchronous on purpose: it runs in a worker thread, and an awaited call
    per statement would measure asyncio instead of the disk.
    """
    assert rows_per_commit > 0, rows_per_commit
    rows = [
        (f"SKU{index % _SKU_COUNT:05d}", 1, str(uuid.uuid4()), time.time_ns())
        for index in range(rows_per_commit)
    ]
    connection = _open(path)
    try:
        clock = time.perf_counter_ns
        start_ns = clock() + int(warmup_seconds * 1e9)
        end_ns = start_ns + int(duration_seconds * 1e9)
        latencies_ns: list[int] = []
        while True:
            began_ns = clock()
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(_INSERT, rows)
            connection.execute("COMMIT")
            done_ns = clock()
            if start_ns <= done_ns < end_ns:
                latencies_ns.append(done_ns - began_ns)
            elif done_ns >= end_ns:
                break
    finally:
        connection.close()
    return LoadResult(
        completed=len(latencies_ns) * rows_per_commit,
        errors=0,
        window_ns=end_ns - start_ns,
        latencies_ns=latencies_ns,
    )


async def run(context: CaseContext) -> list[Run]:
    """One writer (SQLite has one), each batch size on a fresh database file."""
    config = context.config
    runs: list[Run] = []
    with scratch_directory(config) as scratch:
        for rows_per_commit in ROWS_PER_COMMIT_LEVELS:
            result = await asyncio.to_thread(
                measure_commits,
                scratch / f"commit-{rows_per_commit}.db",
                rows_per_commit,
                config.warmup_seconds,
                config.duration_seconds,
            )
            run = make_run(
                {"concurrency": 1, "rows_per_commit": rows_per_commit},
                result.completed,
                result.window_ns,
                result.latencies_ns,
            )
            context.report_run(CASE_NAME, run)
            runs.append(run)
    return runs
