"""The edge engine: group commit, idempotency, expiry sweeping, change feed.

Every write goes through one queue. The writer task takes everything queued
(up to a batch limit), decides and applies each command in order against the
in-memory ledger, writes the whole batch in one SQLite transaction, and only
then answers each caller. One fsync therefore serves many requests, and no
caller hears "OK" before its entries are on disk.

If a commit fails, nothing of the batch is acknowledged and the in-memory
state is reloaded from the database, which rolled the batch back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import structlog

from edge_agent.adapters import sqlite_ledger
from edge_agent.domain import commands as c
from edge_agent.domain.ledger import Decision, EdgeLedger
from edge_agent.domain.master import check_item, check_location
from server.domain import limits
from server.domain.errors import (
    DeadlineExceeded,
    Overloaded,
    RequestIdReused,
    ShuttingDown,
    StockdError,
    StorageUnavailable,
)
from server.domain.model import SYSTEM_ACTOR, Item, Location
from server.storage.bloom import BloomFilter
from server.storage.sqlite import SqliteWorker, lookup_requests

log = structlog.get_logger("stockd.edge.engine")

T = TypeVar("T")
Outcome = Decision | Item | Location
Render = Callable[[EdgeLedger, Outcome], bytes]
WallClock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def fingerprint(rpc: str, actor: str, payload: bytes) -> bytes:
    """Identifies a request's content and caller, so a reused request_id is told apart.

    The actor is part of it: another principal replaying someone's request_id
    is refused rather than handed their stored response.
    """
    return hashlib.sha256(rpc.encode() + b"\0" + actor.encode() + b"\0" + payload).digest()


@dataclass(slots=True)
class _Stored:
    fingerprint: bytes
    response: bytes
    committed: bool


@dataclass(slots=True)
class _Submission:
    rpc: str
    command: c.Command | c.UpsertItem | c.UpsertLocation | None
    actor: str
    request_id: str
    fingerprint: bytes | None
    render: Render | None
    deadline: float | None
    future: asyncio.Future[bytes]
    # Written in the same transaction as the command's entries (sync positions).
    meta: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class EngineSettings:
    site_id: str
    db_path: Path
    commands_per_batch_max: int = limits.COMMANDS_PER_BATCH_MAX
    write_queue_max: int = limits.WRITE_QUEUE_MAX
    sweep_interval_seconds: float = 0.5
    request_retention_seconds: int = limits.REQUEST_RETENTION_SECONDS_DEFAULT
    hub_mode: bool = False


@dataclass(slots=True)
class EngineStats:
    batches: int = 0
    commands: int = 0
    largest_batch: int = 0
    commit_failures: int = 0
    expired: int = 0


ChangeListener = Callable[[set[str]], None]


@dataclass
class EdgeEngine:
    """Owns the ledger state and its database for one site."""

    settings: EngineSettings
    clock: WallClock = wall_clock_ms
    ledger: EdgeLedger = field(init=False)
    stats: EngineStats = field(default_factory=EngineStats)
    _worker: SqliteWorker = field(init=False)
    _queue: asyncio.Queue[_Submission] = field(init=False)
    _cache: OrderedDict[str, _Stored] = field(default_factory=OrderedDict)
    _listeners: list[ChangeListener] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _closing: bool = False
    _seen: BloomFilter = field(init=False)
    _checkpointer: SqliteWorker = field(init=False)
    _pending_meta: dict[str, str] = field(default_factory=dict)
    committed_sequence: int = 0
    _committed: asyncio.Event = field(default_factory=asyncio.Event)
    meta: dict[str, str] = field(default_factory=dict)
    # Optimistic segments: (SKU prefix, overbook bound) applied while offline().
    optimistic_segments: tuple[tuple[str, int], ...] = ()
    offline: Callable[[], bool] = field(default=lambda: False)

    def overbook(self, sku: str) -> int:
        """The overbook bound of the SKU's optimistic segment (0: strict)."""
        for prefix, bound in self.optimistic_segments:
            if sku.startswith(prefix):
                return bound
        return 0

    async def start(self) -> None:
        self._worker = SqliteWorker(self.settings.db_path, auto_checkpoint=False)
        await self._worker.open()
        site_id = self.settings.site_id
        try:
            await self._worker.run(lambda conn: sqlite_ledger.initialise(conn, site_id))
        except BaseException:
            await self._worker.close()
            raise
        self._checkpointer = SqliteWorker(self.settings.db_path, "sqlite-checkpoint")
        await self._checkpointer.open()
        self.ledger = await self._worker.run(lambda conn: sqlite_ledger.load(conn, site_id))
        self.meta = await self._worker.run(sqlite_ledger.read_meta)
        self.committed_sequence = self.ledger.last_sequence
        await self._rebuild_seen()
        self._queue = asyncio.Queue(maxsize=self.settings.write_queue_max)
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="edge-writer"),
            asyncio.create_task(self._sweep_loop(), name="edge-sweeper"),
        ]
        if self.settings.hub_mode and not self.ledger.hub_mode:
            # From now on a hub manages the shares: make each one explicit,
            # starting from what the site could promise on its own.
            self.ledger.hub_mode = True
            await self.execute_internal(c.AdoptShares(), meta={"hub_mode": "1"})
            log.info("hub_mode_enabled", site_id=site_id)
        log.info(
            "ledger_loaded",
            site_id=site_id,
            last_sequence=self.ledger.last_sequence,
            skus=len(self.ledger.balances),
            open_reservations=len(self.ledger.reservations),
        )

    async def close(self) -> None:
        """Stops taking writes, finishes what is queued, closes the database."""
        self._closing = True
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout=limits.SHUTDOWN_GRACE_SECONDS)
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._tasks = []
            await self._checkpointer.close()
            await self._worker.close()
        log.info("ledger_closed", site_id=self.settings.site_id)

    async def _rebuild_seen(self) -> None:
        ids = await self._worker.run(sqlite_ledger.request_ids)
        seen = BloomFilter(max(limits.REQUEST_CACHE_ENTRIES_MAX * 5, len(ids) * 2))
        for request_id in ids:
            seen.add(request_id)
        self._seen = seen

    def add_listener(self, listener: ChangeListener) -> Callable[[], None]:
        """Registers a callback run with the SKUs touched by each durable batch."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # ----- writes ----------------------------------------------------------

    async def execute(
        self,
        rpc: str,
        command: c.Command | c.UpsertItem | c.UpsertLocation,
        *,
        actor: str,
        request_id: str,
        payload: bytes | None,
        render: Render,
        deadline: float | None = None,
    ) -> bytes:
        """Applies one command durably; returns the serialized response.

        `payload` is the request serialized without its request_id; a replay of
        the same request_id and payload returns the stored response.
        """
        if self._closing:
            raise ShuttingDown("the agent is shutting down")
        digest = fingerprint(rpc, actor, payload) if payload is not None else None
        stored = self._cache.get(request_id) if digest is not None else None
        if stored is not None and stored.committed:
            if stored.fingerprint != digest:
                raise _reused(request_id)
            self._cache.move_to_end(request_id)
            return stored.response
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        submission = _Submission(
            rpc, command, actor, request_id, digest, render, deadline, future
        )
        try:
            self._queue.put_nowait(submission)
        except asyncio.QueueFull:
            raise Overloaded(
                f"write queue is full ({self.settings.write_queue_max}); retry with backoff",
                metadata={"queue_depth": str(self._queue.qsize())},
            ) from None
        return await future

    async def execute_internal(
        self,
        command: c.Command | c.UpsertItem | None,
        *,
        meta: dict[str, str] | None = None,
        actor: str = SYSTEM_ACTOR,
        render: Render | None = None,
    ) -> bytes:
        """Applies a command of the agent itself (sync, sweeper) durably.

        `meta` is written in the same transaction, which is how a sync
        high-water mark moves exactly when its effect does. With no command
        only `meta` is written (and `render` still runs, at a consistent point).
        """
        if self._closing:
            raise ShuttingDown("the agent is shutting down")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(
                _Submission("internal", command, actor, "", None, render, None, future, meta)
            )
        except asyncio.QueueFull:
            raise Overloaded(
                f"write queue is full ({self.settings.write_queue_max}); retry with backoff"
            ) from None
        return await future

    async def consistent_read(self, read: Callable[[EdgeLedger], T]) -> T:
        """Runs `read` on the ledger at a point whose state is durable.

        The in-memory ledger runs ahead of the disk while a batch commits; a
        read that looked at it then could report a write that is later rolled
        back. So a read takes its place in the write queue: it sees every
        write queued before it, and answers only once they are committed. A
        batch of reads alone writes nothing and costs no fsync.
        """
        results: list[T] = []

        def capture(ledger: EdgeLedger, _outcome: Outcome) -> bytes:
            results.append(read(ledger))
            return b""

        await self.execute_internal(None, render=capture)
        return results[0]

    def stage_meta(self, key: str, value: str) -> None:
        """Writes a bookkeeping value with the next batch (not urgent, never lost twice)."""
        self._pending_meta[key] = value
        self.meta[key] = value

    async def wait_for_commit(self, after_sequence: int, timeout_seconds: float) -> int:
        """Waits until a batch beyond `after_sequence` is durable; returns the newest."""
        if self.committed_sequence <= after_sequence:
            self._committed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._committed.wait(), timeout=timeout_seconds)
        return self.committed_sequence

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.settings.commands_per_batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                await self._process(batch)
            except Exception:  # a bug, not an operating error: fail the batch, keep serving
                log.exception("batch_failed", size=len(batch))
                for submission in batch:
                    if not submission.future.done():
                        submission.future.set_exception(
                            StorageUnavailable("internal error while writing; retry")
                        )
                await self._reload()
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _process(self, batch: list[_Submission]) -> None:
        # Only ids the Bloom filter may have seen are looked up in the database.
        unknown = [
            s.request_id
            for s in batch
            if s.fingerprint is not None
            and s.request_id not in self._cache
            and s.request_id in self._seen
        ]
        if unknown:
            found = await self._worker.run(
                lambda conn: lookup_requests(conn, unknown)
            )
            for request_id, (digest, response) in found.items():
                self._remember(request_id, _Stored(digest, response, committed=True))
        now_ms = self.clock()
        rows = sqlite_ledger.BatchRows()
        answers: list[tuple[_Submission, bytes]] = []
        pending: list[str] = []
        for submission in batch:
            if submission.deadline is not None and time.monotonic() > submission.deadline:
                submission.future.set_exception(
                    DeadlineExceeded("deadline passed before the request was applied")
                )
                continue
            if submission.fingerprint is not None:
                stored = self._cache.get(submission.request_id)
                if stored is not None:
                    if stored.fingerprint != submission.fingerprint:
                        submission.future.set_exception(_reused(submission.request_id))
                    else:
                        answers.append((submission, stored.response))
                    continue
            try:
                response = self._apply(submission, now_ms, rows)
            except StockdError as error:
                submission.future.set_exception(error)
                continue
            answers.append((submission, response))
            if submission.meta:
                rows.meta.update(submission.meta)
            if submission.fingerprint is not None:
                rows.requests.append(
                    (submission.request_id, submission.rpc, submission.fingerprint, response,
                     now_ms)
                )  # fmt: skip
                self._remember(
                    submission.request_id,
                    _Stored(submission.fingerprint, response, committed=False),
                )
                pending.append(submission.request_id)
        buckets, reservations, skus = self.ledger.drain_dirty()
        for sku, location_id, status in buckets:
            quantity = self.ledger.balance(sku).bucket(location_id, status)
            rows.balances.append((sku, location_id, int(status), quantity))
        rows.reservations = list(reservations.values())
        if self.ledger.hub_mode:
            rows.shares = [(sku, self.ledger.balance(sku).local_share) for sku in skus]
        if self._pending_meta:
            rows.meta.update(self._pending_meta)
            self._pending_meta = {}
        if rows:
            try:
                await self._worker.run(lambda conn: sqlite_ledger.write_batch(conn, rows))
            except Exception as error:
                self.stats.commit_failures += 1
                log.error("commit_failed", error=repr(error), size=len(batch))
                for request_id in pending:
                    self._cache.pop(request_id, None)
                for submission, _ in answers:
                    if not submission.future.done():
                        submission.future.set_exception(
                            StorageUnavailable("the ledger could not be written; retry")
                        )
                await self._reload()
                return
        self.committed_sequence = self.ledger.last_sequence
        self.meta.update(rows.meta)
        self._committed.set()
        for request_id in pending:
            self._seen.add(request_id)
            stored = self._cache.get(request_id)
            if stored is not None:
                stored.committed = True
        self.stats.batches += 1
        self.stats.commands += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for submission, response in answers:
            if not submission.future.done():
                submission.future.set_result(response)
        if skus:
            for listener in list(self._listeners):
                try:
                    listener(skus)
                except Exception:
                    log.exception("listener_failed")

    def _apply(self, submission: _Submission, now_ms: int, rows: sqlite_ledger.BatchRows) -> bytes:
        command = submission.command
        render = submission.render
        if command is None:
            return render(self.ledger, Decision(events=())) if render else b""
        if isinstance(command, c.UpsertItem):
            item = self.ledger.upsert_item(check_item(command.item, now_ms))
            rows.items.append(item)
            return render(self.ledger, item) if render else b""
        if isinstance(command, c.UpsertLocation):
            location = self.ledger.upsert_location(check_location(command.location))
            rows.locations.append(location)
            return render(self.ledger, location) if render else b""
        ctx = c.Context(
            now_ms=now_ms,
            actor=submission.actor,
            request_id=submission.request_id,
            overbook=self.overbook if self.offline() else None,
        )
        decision = self.ledger.decide(command, ctx)
        for event in decision.events:
            self.ledger.evolve(event)
        rows.events.extend(decision.events)
        if isinstance(command, c.ExpireDue):
            self.stats.expired += len({e.reservation_id for e in decision.events})
        return render(self.ledger, decision) if render else b""

    def _remember(self, request_id: str, stored: _Stored) -> None:
        self._cache[request_id] = stored
        self._cache.move_to_end(request_id)
        while len(self._cache) > limits.REQUEST_CACHE_ENTRIES_MAX:
            self._cache.popitem(last=False)

    async def _reload(self) -> None:
        site_id = self.settings.site_id
        try:
            self.ledger = await self._worker.run(lambda conn: sqlite_ledger.load(conn, site_id))
            log.warning("ledger_reloaded", last_sequence=self.ledger.last_sequence)
        except Exception:
            log.exception("ledger_reload_failed")

    # ----- expiry and housekeeping -----------------------------------------

    async def _sweep_loop(self) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(self.settings.sweep_interval_seconds)
            try:
                await self._checkpointer.checkpoint()
                await self.sweep_once()
                if time.monotonic() - last_prune > 3600:
                    last_prune = time.monotonic()
                    cutoff = self.clock() - self.settings.request_retention_seconds * 1000
                    pruned = await self._worker.run(
                        functools.partial(sqlite_ledger.prune_requests, before_ms=cutoff)
                    )
                    if pruned:
                        log.info("requests_pruned", count=pruned)
                        await self._rebuild_seen()
            except StockdError as error:
                log.warning("sweep_skipped", reason=error.reason_name)
            except Exception:
                log.exception("sweep_failed")

    async def sweep_once(self) -> int:
        """Expires due soft reservations now; returns how many entries it wrote."""
        next_ms = self.ledger.next_expiry_ms()
        if next_ms is None or next_ms > self.clock() or self._closing:
            return 0
        expired = 0

        def _count(_ledger: EdgeLedger, outcome: Outcome) -> bytes:
            nonlocal expired
            assert isinstance(outcome, Decision)
            expired = len(outcome.events)
            return b""

        await self.execute(
            "Expire",
            c.ExpireDue(limit=limits.EXPIRIES_PER_SWEEP_MAX),
            actor=SYSTEM_ACTOR,
            request_id="",
            payload=None,
            render=_count,
        )
        if expired:
            log.info("reservations_expired", entries=expired)
        return expired


def _reused(request_id: str) -> RequestIdReused:
    return RequestIdReused(
        f"request_id {request_id!r} was used before with a different request",
        metadata={"request_id": request_id},
    )
