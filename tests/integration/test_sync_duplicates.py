"""Proves the hub is exact under duplicated and reordered deliveries: copies of an
edge's batches injected with nats-py under fresh Nats-Msg-Ids (so JetStream does
not drop them) change nothing, and a later batch delivered before an earlier one
opens a gap that heals by replay (the hub asks, the edge republishes), after which
the hub's view equals the edge's ledger exactly."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from server.sync import streams
from server.sync.nats_server import NatsServer
from stockd.v1 import common_pb2, sync_pb2
from tests.integration.conftest import eventually
from tests.integration.sync_helpers import (
    EdgeProcess,
    ProcessGroup,
    Workload,
    nats_client,
    new_id,
    wait_in_sync,
)

SITE = "S1"
SKUS = ("A", "B")
INITIAL_RECEIPT = 50
PUBLISH_TIMEOUT_SECONDS = 5.0
# Many checksum rounds (0.3 s each) and replay round trips.
LOST_TAIL_TIMEOUT_SECONDS = 6.0
HARD = common_pb2.RESERVATION_KIND_HARD
SOFT = common_pb2.RESERVATION_KIND_SOFT


@dataclass(frozen=True)
class StoredBatch:
    """An EventBatch message as the edge put it on the stream."""

    stream_sequence: int
    first_sequence: int
    last_sequence: int
    data: bytes


async def batches_above(js: JetStreamContext, sequence: int) -> list[StoredBatch]:
    """The site's EventBatch messages on the stream with entries above `sequence`."""
    info = await js.stream_info(streams.EVENTS_STREAM)
    stored: list[StoredBatch] = []
    for stream_sequence in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            raw = await js.get_msg(streams.EVENTS_STREAM, stream_sequence)
        except NotFoundError:
            continue
        message = sync_pb2.EdgeMessage.FromString(raw.data or b"")
        if message.WhichOneof("body") != "events" or message.site_id != SITE:
            continue
        batch = message.events
        if batch.last_sequence > sequence:
            stored.append(
                StoredBatch(
                    stream_sequence, batch.first_sequence, batch.last_sequence, raw.data or b""
                )
            )
    return stored


async def edge_acknowledged_all(edge: EdgeProcess) -> int:
    """Waits until JetStream acknowledged every entry; returns the last sequence."""
    seen: list[int] = []

    async def caught_up() -> bool:
        status = await edge.sync_status()
        seen.append(status.last_sequence)
        return status.acknowledged_sequence == status.last_sequence

    await eventually(caught_up, what="the edge's backlog to reach JetStream")
    return seen[-1]


async def test_duplicates_change_nothing_and_a_reordered_gap_heals_by_replay(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with ProcessGroup(tmp_path) as group:
        hub = await group.hub(nats_server.url)
        # No checksums here: a checksum ahead of the hub would (rightly) trigger a
        # replay of the lost tail before the test injects its reordered copies.
        edge = await group.edge(SITE, nats_server.url, checksum_interval_seconds=3600)
        await edge.setup_items(SKUS)
        workload = Workload(edge, SKUS, random.Random(5))
        workload.apply_events(
            (await edge.client.receive([(sku, INITIAL_RECEIPT) for sku in SKUS])).events
        )
        held = await workload.reserve([("A", 5)], HARD)
        await wait_in_sync(hub, edge, SKUS)
        site = await hub.site(SITE)
        assert site is not None
        before = site.applied_sequence
        commands_before = site.next_command_sequence

        # The hub is down while two groups of entries reach the stream.
        await hub.kill()
        workload.apply_events((await edge.client.receive([("A", 5)])).events)
        await workload.reserve([("B", 3)], HARD)
        earlier_last = await edge_acknowledged_all(edge)
        workload.apply_events((await edge.client.receive([("B", 7)])).events)
        await workload.reserve([("A", 4)], SOFT)
        workload.apply_events((await edge.client.release(held)).events)
        later_last = await edge_acknowledged_all(edge)
        assert before < earlier_last < later_last

        async with nats_client(nats_server.url) as client:
            js = client.jetstream(timeout=PUBLISH_TIMEOUT_SECONDS)
            stored = await batches_above(js, before)
            earlier = [b for b in stored if b.last_sequence <= earlier_last]
            later = [b for b in stored if b.first_sequence > earlier_last]
            assert earlier, stored
            assert later, stored
            assert len(earlier) + len(later) == len(stored), "a batch straddles the groups"
            assert earlier[0].first_sequence == before + 1
            # Take both groups off the stream so only the test delivers them.
            for copy in stored:
                assert await js.delete_msg(streams.EVENTS_STREAM, copy.stream_sequence)

            await hub.start()
            site = await hub.site(SITE)
            assert site is not None
            assert site.applied_sequence == before

            async def publish(batches: Sequence[StoredBatch], tag: str) -> None:
                for batch in batches:
                    ack = await js.publish(
                        streams.events_subject(SITE),
                        batch.data,
                        headers={"Nats-Msg-Id": f"test-{tag}-{new_id()}"},
                        timeout=PUBLISH_TIMEOUT_SECONDS,
                    )
                    assert not ack.duplicate

            # Reordered: the later group first (a gap: the hub asks for a
            # replay), then the earlier one.
            await publish(later, "later")
            await publish(earlier, "earlier")
            report = await wait_in_sync(hub, edge, SKUS)
            assert report.edge == workload.expected()
            assert report.site is not None
            # Exactly one command was sent: the replay request, and the edge applied it.
            assert report.site.next_command_sequence == commands_before + 1
            status = await edge.sync_status()
            assert status.applied_command_sequence == commands_before

            # Pure duplicates, also out of order: nothing may change.
            await publish(later, "dup-later")
            await publish(earlier, "dup-earlier")
            await publish(earlier + later, "dup-all")
            # A barrier: the hub consumes in stream order, so once this entry
            # is applied every injected copy before it was handled.
            workload.apply_events((await edge.client.receive([("A", 1)])).events)
            report = await wait_in_sync(hub, edge, SKUS)
            assert report.edge == workload.expected()
            assert report.site is not None
            assert report.site.next_command_sequence == commands_before + 1, (
                "a duplicate was taken for a gap"
            )
            assert report.site.drift_detected == 0


async def test_a_lost_tail_is_repaired_without_new_writes(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with ProcessGroup(tmp_path) as group:
        hub, edge, report = await group.synced_site(
            nats_server.url, SITE, SKUS, [(sku, INITIAL_RECEIPT) for sku in SKUS]
        )
        assert report.site is not None
        before = report.site.applied_sequence

        await hub.kill()
        await edge.client.receive([("A", 5)])
        await edge.client.reserve([("B", 3)], kind=HARD)
        await edge_acknowledged_all(edge)
        async with nats_client(nats_server.url) as client:
            js = client.jetstream(timeout=PUBLISH_TIMEOUT_SECONDS)
            tail = await batches_above(js, before)
            assert tail
            for copy in tail:
                assert await js.delete_msg(streams.EVENTS_STREAM, copy.stream_sequence)
        await hub.start()

        # The edge's checksums tell the hub how far the site really is, and the
        # hub must fetch the rest, with no further writes at the site. (The moment
        # the hub knows it is behind is too brief to sample: it asks at once.)
        await wait_in_sync(hub, edge, SKUS, timeout_seconds=LOST_TAIL_TIMEOUT_SECONDS)
        site = await hub.site(SITE)
        assert site is not None
        assert site.known_sequence == site.applied_sequence
