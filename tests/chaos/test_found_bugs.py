"""Proves the bugs the chaos harness found stay fixed, each with a minimal
deterministic reproduction (the harness finds them again only by luck).

The edge's hub-command consumer used to stop at the first out-of-order command
of a fetched batch (NAK with a 0.5 s delay, then `break`), leaving the rest
neither acked nor NAKed: a batch fetched as [n+1, n] (redeliveries come first,
nats-py hands out buffered messages first) did not apply n, which JetStream
redelivered only after ack_wait (30 s), often again behind n+1. Under chaos
(seed 20261123) grants sat in flight for minutes and a replay_request stayed
unapplied for over 150 s, so the hub's view of the site stopped; with seeds 7
and 8 the healed cluster needed 185 s and 246 s to come to rest. Fixed in
65370df (the batch is applied in command order and every message settled)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import nats.errors

from edge_agent.adapters.nats_sync import EdgeSync, SyncSettings
from edge_agent.adapters.sqlite_queries import LedgerQueries
from edge_agent.domain import commands as c
from edge_agent.service.engine import EdgeEngine, EngineSettings
from server.domain.model import Item, Sku
from stockd.v1 import sync_pb2

SITE: Final = "S1"
LOOP_TIMEOUT_SECONDS: Final = 10.0


class FakeMessage:
    """A JetStream message as the command loop sees it; records how it was settled."""

    def __init__(self, command: sync_pb2.HubCommand) -> None:
        self.data = command.SerializeToString()
        self.subject = f"stockd.commands.{command.site_id}"
        self.command_sequence = command.command_sequence
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")


class OneBatchSubscription:
    """Hands out one fetched batch, then nothing (as JetStream does until ack_wait)."""

    def __init__(self, batch: Sequence[FakeMessage]) -> None:
        self.batch = list(batch)
        self.fetches = 0
        self.drained = asyncio.Event()

    async def fetch(self, batch: int = 1, **_options: Any) -> list[FakeMessage]:
        self.fetches += 1
        if self.fetches == 1:
            return self.batch
        self.drained.set()
        await asyncio.sleep(0.01)
        raise nats.errors.TimeoutError


class FakeJetStream:
    def __init__(self, subscription: OneBatchSubscription) -> None:
        self.subscription = subscription

    async def pull_subscribe(self, *args: Any, **kwargs: Any) -> OneBatchSubscription:
        return self.subscription


class FakeBus:
    """Always connected; its JetStream hands out the one subscription."""

    def __init__(self, subscription: OneBatchSubscription) -> None:
        self.client = object()
        self.js = FakeJetStream(subscription)
        self.connected = True
        self.last_error = ""

    async def wait_connected(self, timeout_seconds: float) -> bool:
        return True


def grant(sequence: int, quantity: int) -> FakeMessage:
    return FakeMessage(
        sync_pb2.HubCommand(
            site_id=SITE,
            command_sequence=sequence,
            quota_grant=sync_pb2.QuotaGrant(sku="A", quantity=quantity),
        )
    )


async def test_commands_fetched_out_of_order_in_one_batch_are_all_applied(
    tmp_path: Path,
) -> None:
    engine = EdgeEngine(EngineSettings(site_id=SITE, db_path=tmp_path / "edge.db", hub_mode=True))
    await engine.start()
    queries = LedgerQueries(str(tmp_path / "edge.db"))
    await queries.open()
    sync = EdgeSync(engine, queries, SyncSettings(nats_url="nats://127.0.0.1:1"))
    second, first = grant(2, 7), grant(1, 5)
    subscription = OneBatchSubscription([second, first])
    sync.bus = FakeBus(subscription)  # type: ignore[assignment]
    loop_task: asyncio.Task[None] | None = None
    try:
        await engine.execute_internal(c.UpsertItem(Item(Sku("A"))))
        loop_task = asyncio.create_task(sync._command_loop())
        await asyncio.wait_for(subscription.drained.wait(), LOOP_TIMEOUT_SECONDS)
        share = await engine.consistent_read(lambda ledger: ledger.local_share("A"))
        assert sync.applied_command_sequence == 2, (first.settled, second.settled)
        assert share == 12
        assert first.settled == ["ack"]
        assert second.settled == ["ack"]
    finally:
        if loop_task is not None:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
        await engine.close()
        await queries.close()
