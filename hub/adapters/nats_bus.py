"""The hub's side of the bus: a durable consumer of every site's events, the
dead-letter subject, and the publisher of the command outbox.

Messages are acknowledged only after the transaction that applied them has
committed; a crash in between means redelivery, which the per-site
high-water marks make harmless. Malformed or unauthorised messages are
republished to `stockd.deadletter.events` with the reason and acknowledged,
so they never stop the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck

from hub.adapters import wire
from hub.domain.incoming import EventsIn, Incoming, Rejected
from hub.service.engine import HubEngine
from server.sync import streams
from server.sync.connection import BusConnection

log = structlog.get_logger("stockd.hub.bus")

CONSUMER_NAME = "stockd-hub"
FETCH_BATCH = 64
# Ingest is CPU work on the event loop; applying at most this many entries per
# transaction keeps reads (ATP) answered within their budget during a catch-up.
EVENTS_PER_INGEST_MAX = 2_000
ACK_WAIT_SECONDS = 30.0
COMMANDS_PER_ROUND_MAX = 512
PUBLISH_TIMEOUT_SECONDS = 5.0


@dataclass
class HubBus:
    engine: HubEngine
    url: str
    replicas: int = 1
    bus: BusConnection = field(init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _js: JetStreamContext | None = None
    _js_owner: object = None
    _streams_owner: object = None

    async def start(self) -> None:
        self.bus = BusConnection(self.url, "stockd-hub")
        self.bus.start()
        self._tasks = [
            asyncio.create_task(self._consume_loop(), name="hub-consume"),
            asyncio.create_task(self._command_loop(), name="hub-commands"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.bus.close()

    def _jetstream(self) -> JetStreamContext:
        client = self.bus.client
        if self._js is None or self._js_owner is not client:
            self._js = self.bus.js
            self._js_owner = client
        return self._js

    async def _ready(self) -> bool:
        if not await self.bus.wait_connected(1.0):
            return False
        if self._streams_owner is not self.bus.client:
            await streams.ensure_streams(self._jetstream(), replicas=self.replicas)
            self._streams_owner = self.bus.client
        return True

    async def _consume_loop(self) -> None:
        subscription: JetStreamContext.PullSubscription | None = None
        while True:
            try:
                if not await self._ready():
                    continue
                if subscription is None:
                    subscription = await self._jetstream().pull_subscribe(
                        f"{streams.EVENTS_SUBJECT_PREFIX}.>",
                        durable=CONSUMER_NAME,
                        stream=streams.EVENTS_STREAM,
                        config=ConsumerConfig(
                            ack_policy=AckPolicy.EXPLICIT,
                            deliver_policy=DeliverPolicy.ALL,
                            ack_wait=ACK_WAIT_SECONDS,
                            max_ack_pending=FETCH_BATCH * 8,
                        ),
                    )
                messages = await subscription.fetch(batch=FETCH_BATCH, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.bus.last_error = repr(error)
                log.warning("hub_fetch_failed", error=repr(error))
                subscription = None
                self._streams_owner = None  # recreate them if the store was lost
                await asyncio.sleep(1.0)
                continue
            await self._handle(messages)

    async def _handle(self, messages: list[Msg]) -> None:
        parsed = [wire.parse(message.subject, message.data) for message in messages]
        group: list[tuple[Msg, Incoming]] = []
        events = 0
        for message, incoming in zip(messages, parsed, strict=True):
            group.append((message, incoming))
            events += len(incoming.events) if isinstance(incoming, EventsIn) else 1
            if events >= EVENTS_PER_INGEST_MAX:
                await self._ingest_group(group)
                group, events = [], 0
                await asyncio.sleep(0)  # let waiting reads run between transactions
        if group:
            await self._ingest_group(group)

    async def _ingest_group(self, group: list[tuple[Msg, Incoming]]) -> None:
        try:
            outcomes = await self.engine.ingest([incoming for _, incoming in group])
        except Exception:
            log.exception("hub_ingest_failed", messages=len(group))
            for message, _ in group:
                with contextlib.suppress(Exception):
                    await message.nak(delay=1.0)
            return
        for (message, _), outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, Rejected):
                await self._dead_letter(message, outcome)
            with contextlib.suppress(Exception):
                await message.ack()

    async def _dead_letter(self, message: Msg, rejected: Rejected) -> None:
        log.error(
            "sync_dead_lettered",
            subject=message.subject,
            reason=rejected.reason,
            detail=rejected.detail,
        )
        with contextlib.suppress(Exception):
            await self._jetstream().publish(
                streams.deadletter_subject("events"),
                message.data,
                headers={
                    "Stockd-Reason": rejected.reason,
                    "Stockd-Detail": rejected.detail[:512],
                    "Stockd-Subject": message.subject,
                },
                timeout=PUBLISH_TIMEOUT_SECONDS,
            )

    async def _command_loop(self) -> None:
        """Publishes the outbox in per-site order; marks what JetStream acknowledged."""
        while True:
            await self.engine.commands_ready.wait()
            self.engine.commands_ready.clear()
            while True:
                try:
                    if not await self._ready():
                        self.engine.commands_ready.set()
                        break
                    batch = await self.engine.unpublished_commands(COMMANDS_PER_ROUND_MAX)
                    if not batch:
                        break
                    js = self._jetstream()
                    futures: list[tuple[tuple[str, int], asyncio.Future[PubAck]]] = []
                    for site_id, sequence, payload in batch:
                        future = await js.publish_async(
                            streams.commands_subject(site_id),
                            payload,
                            headers={"Nats-Msg-Id": f"{site_id}:cmd:{sequence}"},
                        )
                        futures.append(((site_id, sequence), future))
                    done: list[tuple[str, int]] = []
                    try:
                        for key, future in futures:
                            await asyncio.wait_for(asyncio.shield(future), PUBLISH_TIMEOUT_SECONDS)
                            done.append(key)
                    finally:
                        for _, future in futures:
                            if not future.done():
                                future.cancel()
                            elif not future.cancelled():
                                future.exception()
                        if done:
                            await self.engine.mark_published(done)
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    self.bus.last_error = repr(error)
                    log.warning("hub_command_publish_failed", error=repr(error))
                    self._streams_owner = None
                    await asyncio.sleep(1.0)
