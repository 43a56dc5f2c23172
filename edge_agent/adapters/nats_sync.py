"""Edge <-> hub sync over NATS JetStream.

Outbound, the ledger is the outbox: entries are read back from SQLite in
sequence order and published in batches, many in flight at once, each with
`Nats-Msg-Id` = site and sequence range. The position that JetStream has
acknowledged is kept in SQLite; after any failure publishing resumes from it,
and the hub's per-site high-water mark turns the resulting duplicates into
no-ops. A NATS outage never touches local serving: this module only reads
committed entries and stages bookkeeping.

Inbound, hub commands (quota grants and recalls, item updates, replay
requests) are applied strictly in command-sequence order; the applied
high-water mark is written in the same SQLite transaction as the command's
effect, so a redelivered command changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck

from edge_agent.adapters import convert
from edge_agent.adapters.sqlite_queries import EventFilter, LedgerQueries
from edge_agent.domain import commands as c
from edge_agent.domain.ledger import EdgeLedger
from edge_agent.service.engine import EdgeEngine, Outcome
from server.domain.digest import balance_digest as digest_rows
from server.domain.errors import StockdError
from server.sync import streams
from server.sync.connection import BusConnection
from stockd.v1 import edge_pb2, sync_pb2

log = structlog.get_logger("stockd.edge.sync")

ACKNOWLEDGED_KEY = "sync_acknowledged_sequence"
APPLIED_COMMAND_KEY = "sync_applied_command_sequence"

EVENTS_PER_MESSAGE_MAX = 500
MESSAGES_IN_FLIGHT_MAX = 32
PUBLISH_ACK_TIMEOUT_SECONDS = 5.0
COMMAND_FETCH_BATCH = 64
COMMAND_ACK_WAIT_SECONDS = 30.0
RETRY_BACKOFF_MAX_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class SyncSettings:
    nats_url: str
    checksum_interval_seconds: float = 10.0
    quota_low_water: int = 0
    quota_high_water: int = 0
    quota_interval_seconds: float = 2.0
    replicas: int = 1


def balance_digest(ledger: EdgeLedger) -> tuple[int, int, bytes]:
    """(as_of_sequence, sku_count, digest) of every non-empty balance.

    The hub computes the same digest over its view; a difference is drift.
    """
    rows = (
        (
            sku,
            (
                balance.sellable,
                balance.total,
                balance.reserved_soft,
                balance.reserved_hard,
                ledger.local_share(sku),
            ),
        )
        for sku, balance in ledger.balances.items()
    )
    count, digest = digest_rows(rows)
    return ledger.last_sequence, count, digest


@dataclass
class EdgeSync:
    engine: EdgeEngine
    queries: LedgerQueries
    settings: SyncSettings
    bus: BusConnection = field(init=False)
    acknowledged_sequence: int = 0
    applied_command_sequence: int = 0
    last_acknowledged_ms: int = 0
    published_messages: int = 0
    _replay_from: int | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _js: JetStreamContext | None = None
    _js_owner: object = None
    _last_quota_request: dict[str, float] = field(default_factory=dict)
    _streams_owner: object = None
    _replays: int = 0

    @property
    def site_id(self) -> str:
        return self.engine.settings.site_id

    async def start(self) -> None:
        streams.check_site_id(self.site_id)
        meta = self.engine.meta
        self.acknowledged_sequence = int(meta.get(ACKNOWLEDGED_KEY, "0"))
        self.applied_command_sequence = int(meta.get(APPLIED_COMMAND_KEY, "0"))
        self.bus = BusConnection(self.settings.nats_url, f"stockd-edge-{self.site_id}")
        self.bus.start()
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="sync-publish"),
            asyncio.create_task(self._command_loop(), name="sync-commands"),
            asyncio.create_task(self._quota_loop(), name="sync-quota"),
        ]
        log.info(
            "sync_started",
            site_id=self.site_id,
            nats=self.settings.nats_url,
            acknowledged_sequence=self.acknowledged_sequence,
            applied_command_sequence=self.applied_command_sequence,
        )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.bus.close()

    def status(self) -> edge_pb2.GetSyncStatusResponse:
        committed = self.engine.committed_sequence
        response = edge_pb2.GetSyncStatusResponse(
            site_id=self.site_id,
            hub_configured=True,
            connected=self.bus.connected,
            last_sequence=committed,
            acknowledged_sequence=self.acknowledged_sequence,
            backlog_events=max(0, committed - self.acknowledged_sequence),
            applied_command_sequence=self.applied_command_sequence,
            last_error=self.bus.last_error,
        )
        if self.last_acknowledged_ms:
            response.last_acknowledged_at.CopyFrom(convert.timestamp(self.last_acknowledged_ms))
        return response

    async def _ensure_streams(self) -> None:
        """Creates the streams once per connection (idempotent, any process may)."""
        if self._streams_owner is not self.bus.client:
            await streams.ensure_streams(self._jetstream(), replicas=self.settings.replicas)
            self._streams_owner = self.bus.client

    def _message_id(self, first: int, last: int) -> str:
        """Site and sequence range; a replay adds its round, so JetStream's
        duplicate window cannot drop the very batches the hub asked for again."""
        base = f"{self.site_id}:{first}-{last}"
        return f"{base}:r{self._replays}" if self._replays else base

    def _jetstream(self) -> JetStreamContext:
        client = self.bus.client
        if self._js is None or self._js_owner is not client:
            self._js = self.bus.js
            self._js_owner = client
        return self._js

    # ----- outbound ----------------------------------------------------------

    async def _publish_loop(self) -> None:
        backoff = 0.2
        last_checksum = time.monotonic()
        while True:
            if not await self.bus.wait_connected(1.0):
                continue
            if self._replay_from is not None:
                self.acknowledged_sequence = min(self.acknowledged_sequence, self._replay_from)
                self._replay_from = None
            try:
                await self._ensure_streams()
            except Exception as error:
                self.bus.last_error = repr(error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_BACKOFF_MAX_SECONDS)
                continue
            position = self.acknowledged_sequence
            if position >= self.engine.committed_sequence:
                if time.monotonic() - last_checksum >= self.settings.checksum_interval_seconds:
                    last_checksum = time.monotonic()
                    await self._publish_checksum()
                await self.engine.wait_for_commit(position, 0.5)
                continue
            try:
                await self._publish_from(position)
                backoff = 0.2
            except Exception as error:
                self.bus.last_error = repr(error)
                # The server may have come back without its JetStream store:
                # make sure the streams exist again before the next try.
                self._streams_owner = None
                log.warning(
                    "sync_publish_failed",
                    error=repr(error),
                    acknowledged_sequence=self.acknowledged_sequence,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_BACKOFF_MAX_SECONDS)

    async def _publish_from(self, position: int) -> None:
        events = await self.queries.list_events(
            EventFilter(after_sequence=position),
            EVENTS_PER_MESSAGE_MAX * MESSAGES_IN_FLIGHT_MAX,
        )
        if not events:
            return
        js = self._jetstream()
        subject = streams.events_subject(self.site_id)
        pending: list[tuple[int, asyncio.Future[PubAck]]] = []
        try:
            for start in range(0, len(events), EVENTS_PER_MESSAGE_MAX):
                chunk = events[start : start + EVENTS_PER_MESSAGE_MAX]
                first, last = chunk[0].sequence, chunk[-1].sequence
                message = sync_pb2.EdgeMessage(
                    site_id=self.site_id,
                    events=sync_pb2.EventBatch(
                        first_sequence=first,
                        last_sequence=last,
                        events=[convert.event_to_proto(e, self.site_id) for e in chunk],
                        published_at=convert.timestamp(time.time_ns() // 1_000_000),
                    ),
                )
                future = await js.publish_async(
                    subject,
                    message.SerializeToString(),
                    headers={"Nats-Msg-Id": self._message_id(first, last)},
                )
                pending.append((last, future))
            for last, future in pending:
                await asyncio.wait_for(asyncio.shield(future), PUBLISH_ACK_TIMEOUT_SECONDS)
                self.acknowledged_sequence = max(self.acknowledged_sequence, last)
                self.published_messages += 1
            self.last_acknowledged_ms = time.time_ns() // 1_000_000
            self.engine.stage_meta(ACKNOWLEDGED_KEY, str(self.acknowledged_sequence))
        finally:
            for _, future in pending:
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # retrieved, so asyncio does not warn

    async def _publish_checksum(self) -> None:
        """Publishes a digest taken at a consistent point, right after its entries."""
        captured: list[tuple[int, int, bytes]] = []

        def capture(ledger: EdgeLedger, _outcome: Outcome) -> bytes:
            captured.append(balance_digest(ledger))
            return b""

        try:
            await self.engine.execute_internal(None, render=capture)
        except StockdError:
            return
        as_of, count, digest = captured[0]
        if as_of != self.acknowledged_sequence:
            return  # entries after the digest are not on the bus yet; next round
        message = sync_pb2.EdgeMessage(
            site_id=self.site_id,
            checksum=sync_pb2.BalanceChecksum(
                as_of_sequence=as_of, sku_count=count, digest=digest
            ),
        )
        with contextlib.suppress(Exception):
            await self._jetstream().publish(
                streams.events_subject(self.site_id),
                message.SerializeToString(),
                timeout=PUBLISH_ACK_TIMEOUT_SECONDS,
            )

    async def _quota_loop(self) -> None:
        """Keeps local free share between the low and high water marks."""
        low, high = self.settings.quota_low_water, self.settings.quota_high_water
        if low <= 0 and high <= 0:
            return
        while True:
            await asyncio.sleep(self.settings.quota_interval_seconds)
            if not self.bus.connected:
                continue
            ledger = self.engine.ledger
            target = (low + high) // 2 if high > 0 else low
            for sku in list(ledger.balances):
                free = ledger.local_free(sku)
                try:
                    if high > 0 and free > high:
                        await self.engine.execute_internal(
                            c.ReturnQuota(sku, free - target, reason="above_high_water")
                        )
                    elif low > 0 and free < low:
                        await self._request_quota(sku, target - free, free)
                except StockdError as error:
                    log.warning("quota_rebalance_failed", sku=sku, reason=error.reason_name)

    async def _request_quota(self, sku: str, quantity: int, free: int) -> None:
        now = time.monotonic()
        if now - self._last_quota_request.get(sku, 0.0) < self.settings.quota_interval_seconds * 5:
            return
        self._last_quota_request[sku] = now
        message = sync_pb2.EdgeMessage(
            site_id=self.site_id,
            quota_request=sync_pb2.QuotaRequest(sku=sku, quantity=quantity, local_free=free),
        )
        with contextlib.suppress(Exception):
            await self._jetstream().publish(
                streams.events_subject(self.site_id),
                message.SerializeToString(),
                timeout=PUBLISH_ACK_TIMEOUT_SECONDS,
            )

    # ----- inbound -------------------------------------------------------------

    async def _command_loop(self) -> None:
        subscription: JetStreamContext.PullSubscription | None = None
        while True:
            if not await self.bus.wait_connected(1.0):
                continue
            try:
                if subscription is None:
                    subscription = await self._jetstream().pull_subscribe(
                        streams.commands_subject(self.site_id),
                        durable=f"edge-{self.site_id}",
                        stream=streams.COMMANDS_STREAM,
                        config=ConsumerConfig(
                            ack_policy=AckPolicy.EXPLICIT,
                            deliver_policy=DeliverPolicy.ALL,
                            ack_wait=COMMAND_ACK_WAIT_SECONDS,
                            max_ack_pending=COMMAND_FETCH_BATCH * 4,
                        ),
                    )
                messages = await subscription.fetch(batch=COMMAND_FETCH_BATCH, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except Exception as error:
                self.bus.last_error = repr(error)
                subscription = None
                self._streams_owner = None
                await asyncio.sleep(1.0)
                continue
            # A fetched batch may hold redeliveries ahead of newer commands:
            # apply in command order, not arrival order.
            parsed: list[tuple[int, Msg, sync_pb2.HubCommand]] = []
            for message in messages:
                try:
                    command = sync_pb2.HubCommand.FromString(message.data)
                except Exception:
                    await self._dead_letter(message, "malformed_command")
                    continue
                if command.site_id != self.site_id:
                    await self._dead_letter(message, "wrong_site")
                    continue
                parsed.append((command.command_sequence, message, command))
            parsed.sort(key=lambda entry: entry[0])
            for _, message, command in parsed:
                await self._handle_command(message, command)

    async def _handle_command(self, message: Msg, command: sync_pb2.HubCommand) -> bool:
        """Applies one command; False when it must wait for an earlier one (NAKed)."""
        sequence = command.command_sequence
        if sequence <= self.applied_command_sequence:
            await message.ack()
            return True
        if sequence > self.applied_command_sequence + 1:
            await message.nak(delay=0.5)
            return False
        meta = {APPLIED_COMMAND_KEY: str(sequence)}
        body = command.WhichOneof("body")
        try:
            if body == "quota_grant":
                grant = command.quota_grant
                await self.engine.execute_internal(
                    c.GrantQuota(grant.sku, grant.quantity, sequence), meta=meta
                )
            elif body == "quota_recall":
                recall = command.quota_recall
                await self.engine.execute_internal(
                    c.ReturnQuota(
                        recall.sku, recall.quantity, reason="hub_recall", command_sequence=sequence
                    ),
                    meta=meta,
                )
            elif body == "promise_hold":
                hold = command.promise_hold
                await self.engine.execute_internal(
                    c.HoldForPromise(hold.promise_id, hold.sku, hold.quantity, sequence),
                    meta=meta,
                )
            elif body == "promise_release":
                release = command.promise_release
                await self.engine.execute_internal(
                    c.ReleaseForPromise(release.promise_id, release.sku, release.quantity),
                    meta=meta,
                )
            elif body == "item_update":
                await self.engine.execute_internal(
                    c.UpsertItem(convert.item_from_proto(command.item_update)), meta=meta
                )
            elif body == "replay_request":
                self._replay_from = max(0, command.replay_request.from_sequence - 1)
                self._replays += 1
                await self.engine.execute_internal(None, meta=meta)
                log.warning(
                    "sync_replay_requested",
                    from_sequence=command.replay_request.from_sequence,
                    reason=command.replay_request.reason,
                )
            else:
                await self.engine.execute_internal(None, meta=meta)
                log.warning("sync_command_unknown", command_sequence=sequence)
        except StockdError as error:
            # A refused command must not block the ones after it.
            log.error(
                "sync_command_refused",
                command_sequence=sequence,
                reason=error.reason_name,
                message=error.message,
            )
            await self.engine.execute_internal(None, meta=meta)
        self.applied_command_sequence = sequence
        await message.ack()
        return True

    async def _dead_letter(self, message: Msg, reason: str) -> None:
        log.error("sync_dead_lettered", reason=reason, subject=message.subject)
        with contextlib.suppress(Exception):
            await self._jetstream().publish(
                streams.deadletter_subject("commands"),
                message.data,
                headers={"Stockd-Reason": reason, "Stockd-Subject": message.subject},
                timeout=PUBLISH_ACK_TIMEOUT_SECONDS,
            )
        await message.ack()
