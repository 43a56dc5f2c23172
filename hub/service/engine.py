"""Hub use cases: ingest sync messages, answer from the view, move escrow shares.

All writes are serialised by one lock and each is one SQLite transaction; the
view in memory is what reads answer from (never the database on the request
path). If a commit fails the view is reloaded from the database, which rolled
back, and the messages are not acknowledged, so NATS redelivers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import structlog

from hub.adapters import promise_store, sqlite_store
from hub.domain import atp
from hub.domain.answer_cache import AnswerCache, answer_lines
from hub.domain.catalog import Catalog, Demand
from hub.domain.incoming import ChecksumIn, EventsIn, Incoming, QuotaRequestIn, Rejected
from hub.domain.promises import Decision, Promise, PromiseBook, PromiseRequestLine
from hub.domain.view import Command, HubView, SiteBalance
from server.domain.errors import Overloaded, RequestIdReused, StockdError, StorageUnavailable
from server.storage.sqlite import SqliteWorker, lookup_requests

log = structlog.get_logger("stockd.hub.engine")
T = TypeVar("T")

REPLAY_REQUEST_INTERVAL_MS = 10_000
WRITES_PER_BATCH_MAX = 256
WRITE_QUEUE_MAX = 10_000

Encoder = Callable[[Command, int], bytes]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Write:
    rpc: str
    request_id: str
    digest: bytes
    action: Callable[[], bytes]
    future: asyncio.Future[bytes]


def _reused(request_id: str) -> RequestIdReused:
    return RequestIdReused(
        f"request_id {request_id!r} was used before with a different request",
        metadata={"request_id": request_id},
    )


@dataclass
class HubStats:
    messages: int = 0
    events_applied: int = 0
    duplicates: int = 0
    gaps: int = 0
    rejected: int = 0
    checksums_matched: int = 0
    drift: int = 0


@dataclass
class HubEngine:
    db_path: Path
    encode: Encoder
    clock: Callable[[], int] = wall_clock_ms
    view: HubView = field(init=False)
    stats: HubStats = field(default_factory=HubStats)
    _worker: SqliteWorker = field(init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _replay_asked_ms: dict[str, int] = field(default_factory=dict)
    commands_ready: asyncio.Event = field(default_factory=asyncio.Event)
    catalog: Catalog = field(init=False)
    book: PromiseBook = field(init=False)
    decision_listeners: list[Callable[[list[Decision]], None]] = field(default_factory=list)
    _catalog_rows: list[promise_store.CatalogRow] = field(default_factory=list)
    _catalog_deleted: list[tuple[str, str]] = field(default_factory=list)
    stale_after_ms: int = 60_000
    _settled: asyncio.Event = field(default_factory=asyncio.Event)
    _writes: asyncio.Queue[_Write] = field(init=False)
    _writer: asyncio.Task[None] = field(init=False)

    async def start(self) -> None:
        self._writes = asyncio.Queue(maxsize=WRITE_QUEUE_MAX)
        self._writer = asyncio.create_task(self._write_loop(), name="hub-writer")
        self._worker = SqliteWorker(self.db_path, "hub-writer")
        await self._worker.open()
        await self._worker.run(sqlite_store.initialise)
        self.view = await self._worker.run(sqlite_store.load)
        self.catalog, self.book = await self._worker.run(promise_store.load)
        self._settled.set()
        self.commands_ready.set()
        log.info(
            "hub_view_loaded",
            sites=len(self.view.sites),
            balances=len(self.view.balances),
        )

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        """Serialises writers and marks the view unsettled until their commit ends."""
        async with self._lock:
            self._settled.clear()
            try:
                yield
            finally:
                self._settled.set()

    async def settled(self) -> None:
        """Waits until no write is between changing the view and committing it.

        Reads call this first, so nothing they report can be rolled back or
        lost in a crash (the view runs ahead of the disk only inside a write).
        """
        if not self._settled.is_set():
            await self._settled.wait()

    async def close(self) -> None:
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        await self._worker.close()

    async def ingest(self, messages: Sequence[Incoming]) -> list[Rejected | None]:
        """Applies a fetched batch in one transaction; returns per message None or why
        it must be dead-lettered."""
        async with self._writing():
            now_ms = self.clock()
            outcomes: list[Rejected | None] = []
            drift: list[tuple[str, int, int, str]] = []
            for message in messages:
                self.stats.messages += 1
                if isinstance(message, Rejected):
                    self.stats.rejected += 1
                    outcomes.append(message)
                    continue
                if isinstance(message, EventsIn):
                    outcome = self.view.apply_batch(message.site_id, message.events, now_ms)
                    self.stats.events_applied += outcome.applied
                    self.stats.duplicates += outcome.duplicates
                    if outcome.gap_from is not None:
                        self.stats.gaps += 1
                        self._ask_replay(message.site_id, outcome.gap_from, now_ms, "gap")
                elif isinstance(message, ChecksumIn):
                    result = self.view.check_checksum(
                        message.site_id,
                        message.as_of_sequence,
                        message.sku_count,
                        message.digest,
                        now_ms,
                    )
                    state = self.view.sites.get(message.site_id)
                    if (
                        result == "skipped"
                        and state is not None
                        and not state.repairing
                        and state.applied_sequence < message.as_of_sequence
                    ):
                        # The checksum follows the entries it covers on the stream,
                        # so being behind it means entries were lost: ask again.
                        self._ask_replay(
                            message.site_id, state.applied_sequence + 1, now_ms, "behind_checksum"
                        )
                    if result == "match":
                        self.stats.checksums_matched += 1
                    elif result == "drift":
                        self.stats.drift += 1
                        drift.append((message.site_id, message.as_of_sequence, now_ms, "drift"))
                        log.warning(
                            "drift_detected",
                            site_id=message.site_id,
                            as_of_sequence=message.as_of_sequence,
                        )
                elif isinstance(message, QuotaRequestIn):
                    balance = self.view.balances.get((message.site_id, message.sku))
                    if balance is not None and balance.hub_free > 0:
                        quantity = min(message.quantity, balance.hub_free)
                        self.view.grant(message.site_id, message.sku, quantity)
                        log.info(
                            "quota_granted_on_request",
                            site_id=message.site_id,
                            sku=message.sku,
                            quantity=quantity,
                        )
                outcomes.append(None)
            self._after_view_change(now_ms)
            await self._commit(now_ms, drift=drift)
            return outcomes

    def _after_view_change(self, now_ms: int) -> None:
        """Promise bookkeeping that follows the sites' entries: picks, conflicts, backorders."""
        picks, self.view.hub_picks = self.view.hub_picks, []
        for site_id, sku, promise_id, quantity in picks:
            self.book.on_picked(site_id, sku, promise_id, quantity)
        for key in list(self.view.dirty_balances):
            covered = self.view.cover_overbooking(*key)
            if covered:
                log.warning("overbooking_reconciled", site_id=key[0], sku=key[1], quantity=covered)
            balance = self.view.balances.get(key)
            if balance is not None and balance.hub_reserved > balance.hub_share:
                moved = self.book.resolve_conflicts(self.catalog, self.view, *key, now_ms)
                if moved:
                    log.warning("promises_resourced", site_id=key[0], sku=key[1], quantity=moved)
        if self.book.backorders:
            self.book.fill_backorders(self.catalog, self.view, now_ms)

    def _ask_replay(self, site_id: str, from_sequence: int, now_ms: int, reason: str) -> None:
        if now_ms - self._replay_asked_ms.get(site_id, 0) < REPLAY_REQUEST_INTERVAL_MS:
            return
        self._replay_asked_ms[site_id] = now_ms
        self.view._command(site_id, "replay_request", from_sequence=from_sequence, reason=reason)
        log.warning("sync_gap", site_id=site_id, from_sequence=from_sequence)

    async def _commit(
        self,
        now_ms: int,
        *,
        requests: list[tuple[str, str, bytes, bytes, int]] | None = None,
        drift: list[tuple[str, int, int, str]] | None = None,
    ) -> None:
        promise_ids, decisions = self.book.drain()
        sites, balances, commands, settled = self.view.drain()
        rows = sqlite_store.HubRows(
            sites=[self.view.sites[site] for site in sites],
            balances=[self.view.balances[key] for key in balances],
            commands=[(command, self.encode(command, now_ms), now_ms) for command in commands],
            grants_added=[
                (command.site_id, command.command_sequence, command.sku, command.quantity)
                for command in commands
                if command.kind == "quota_grant"
            ],
            grants_settled=sorted(settled),
            requests=requests or [],
            drift=drift or [],
            catalog=self._catalog_rows,
            catalog_deleted=self._catalog_deleted,
            promises=[
                promise_store.promise_row(self.book.promises[promise_id])
                for promise_id in sorted(promise_ids)
            ],
            decisions=[promise_store.decision_row(decision) for decision in decisions],
        )
        self._catalog_rows, self._catalog_deleted = [], []
        try:
            await self._worker.run(lambda conn: sqlite_store.write(conn, rows))
        except Exception:
            log.exception("hub_commit_failed")
            self.view = await self._worker.run(sqlite_store.load)
            self.catalog, self.book = await self._worker.run(promise_store.load)
            raise
        if commands:
            self.commands_ready.set()
        if decisions:
            for listener in list(self.decision_listeners):
                listener(decisions)

    # ----- admin: escrow shares ----------------------------------------------

    async def grant(
        self, request_id: str, payload: bytes, site_id: str, sku: str, quantity: int,
        render: Callable[[Command, SiteBalance], bytes],
    ) -> bytes:  # fmt: skip
        return await self._idempotent(
            "GrantQuota",
            request_id,
            payload,
            lambda: self._render_grant(self.view.grant(site_id, sku, quantity), render),
        )

    def _render_grant(
        self, command: Command, render: Callable[[Command, SiteBalance], bytes]
    ) -> bytes:
        return render(command, self.view.balances[(command.site_id, command.sku)])

    async def recall(
        self, request_id: str, payload: bytes, site_id: str, sku: str, quantity: int,
        render: Callable[[Command], bytes],
    ) -> bytes:  # fmt: skip
        return await self._idempotent(
            "RecallQuota",
            request_id,
            payload,
            lambda: render(self.view.recall(site_id, sku, quantity)),
        )

    async def _idempotent(
        self, rpc: str, request_id: str, payload: bytes, action: Callable[[], bytes]
    ) -> bytes:
        """Queues a write; the writer task group-commits everything queued with it."""
        digest = hashlib.sha256(rpc.encode() + b"\0" + payload).digest()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        try:
            self._writes.put_nowait(_Write(rpc, request_id, digest, action, future))
        except asyncio.QueueFull:
            raise Overloaded("the hub's write queue is full; retry with backoff") from None
        return await future

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._writes.get()]
            while len(batch) < WRITES_PER_BATCH_MAX and not self._writes.empty():
                batch.append(self._writes.get_nowait())
            try:
                await self._write_batch(batch)
                await asyncio.sleep(0)  # let reads waiting for the commit run first
            except Exception:
                log.exception("hub_write_batch_failed", size=len(batch))
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(
                            StorageUnavailable("the hub could not write; retry")
                        )

    async def _write_batch(self, batch: list[_Write]) -> None:
        """One lookup, every action in order, one transaction, then the replies."""
        ids = [write.request_id for write in batch]
        async with self._writing():
            stored = await self._worker.run(lambda conn: lookup_requests(conn, ids))
            now_ms = self.clock()
            rows: list[tuple[str, str, bytes, bytes, int]] = []
            answered: list[tuple[_Write, bytes]] = []
            for write in batch:
                prior = stored.get(write.request_id)
                if prior is not None:
                    if prior[0] != write.digest:
                        write.future.set_exception(_reused(write.request_id))
                    else:
                        answered.append((write, prior[1]))
                    continue
                try:
                    response = write.action()
                except StockdError as error:
                    write.future.set_exception(error)
                    continue
                stored[write.request_id] = (write.digest, response)
                rows.append((write.request_id, write.rpc, write.digest, response, now_ms))
                answered.append((write, response))
            if self.book.dirty:
                self._catalog_rows.append(promise_store.usage_row(self.catalog))
            await self._commit(now_ms, requests=rows)
        for write, response in answered:
            if not write.future.done():
                write.future.set_result(response)

    # ----- ATP and promises --------------------------------------------------------

    def validate(
        self,
        queries: Sequence[atp.LineQuery],
        demand: Demand,
        *,
        horizon_days: int = 14,
        bucket_days: int = 1,
        include_substitutes: bool = False,
    ) -> atp.CheckRequest:
        return atp.validate(
            self.catalog,
            self.view,
            queries,
            demand,
            horizon_days=horizon_days,
            bucket_days=bucket_days,
            include_substitutes=include_substitutes,
            stale_after_ms=self.stale_after_ms,
        )

    def answerer(self, request: atp.CheckRequest) -> atp.Answerer:
        """Answers lines against the view as it is now (build a new one after an await)."""
        return atp.Answerer(self.catalog, self.view, request, self.clock())

    def answer_lines(
        self,
        request: atp.CheckRequest,
        cache: AnswerCache[T],
        render: Callable[[atp.LineAnswer], T],
        start: int,
        stop: int,
    ) -> list[T]:
        """Lines [start, stop) against the view as it is now, reusing `cache`."""
        return answer_lines(
            self.catalog, self.view, request, self.clock(), cache, render, start, stop
        )

    async def promise(
        self,
        request_id: str,
        payload: bytes,
        *,
        lines: Sequence[PromiseRequestLine],
        demand: Demand,
        reference: str,
        ttl_ms: int,
        allow_partial: bool,
        render: Callable[[Promise], bytes],
    ) -> bytes:
        def action() -> bytes:
            promise = self.book.promise(
                self.catalog,
                self.view,
                promise_id=uuid.uuid4().hex,
                request_id=request_id,
                lines=lines,
                demand=demand,
                reference=reference,
                ttl_ms=ttl_ms,
                allow_partial=allow_partial,
                now_ms=self.clock(),
            )
            return render(promise)

        return await self._idempotent("Promise", request_id, payload, action)

    async def confirm(
        self, request_id: str, payload: bytes, promise_id: str, render: Callable[[Promise], bytes]
    ) -> bytes:
        return await self._idempotent(
            "ConfirmPromise",
            request_id,
            payload,
            lambda: render(self.book.confirm(self.view, promise_id, self.clock())),
        )

    async def release_promise(
        self, request_id: str, payload: bytes, promise_id: str, render: Callable[[Promise], bytes]
    ) -> bytes:
        def action() -> bytes:
            promise = self.book.release(self.view, promise_id, self.clock())
            if self.book.backorders:
                self.book.fill_backorders(self.catalog, self.view, self.clock())
            return render(promise)

        return await self._idempotent("ReleasePromise", request_id, payload, action)

    async def admin(
        self,
        rpc: str,
        request_id: str,
        payload: bytes,
        change: Callable[[Catalog], tuple[list[promise_store.CatalogRow], bytes]],
    ) -> bytes:
        """Applies a catalogue change idempotently, in one transaction with its rows."""

        def action() -> bytes:
            rows, response = change(self.catalog)
            self.catalog.changed()
            self._catalog_rows.extend(rows)
            if self.book.backorders:
                self.book.fill_backorders(self.catalog, self.view, self.clock())
            return response

        return await self._idempotent(rpc, request_id, payload, action)

    async def expire_promises(self) -> int:
        async with self._writing():
            now_ms = self.clock()
            expired = self.book.expire_due(self.view, now_ms)
            if not expired:
                return 0
            if self.book.backorders:
                self.book.fill_backorders(self.catalog, self.view, now_ms)
            self._catalog_rows.append(promise_store.usage_row(self.catalog))
            await self._commit(now_ms)
            log.info("promises_expired", count=len(expired))
            return len(expired)

    async def list_decisions(self, promise_id: str, after: int, limit: int) -> list[Decision]:
        return await self._worker.run(
            lambda conn: promise_store.list_decisions(conn, promise_id, after, limit)
        )

    # ----- command outbox --------------------------------------------------------

    async def unpublished_commands(self, limit: int) -> list[tuple[str, int, bytes]]:
        return await self._worker.run(lambda conn: sqlite_store.unpublished_commands(conn, limit))

    async def mark_published(self, keys: list[tuple[str, int]]) -> None:
        await self._worker.run(lambda conn: sqlite_store.mark_published(conn, keys))
