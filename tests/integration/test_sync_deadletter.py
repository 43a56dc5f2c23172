"""Proves bad messages on a site's events subject are dead-lettered, not applied and
not blocking: garbage bytes, a site_id that differs from the subject, a batch whose
sequence range does not match its entries and one whose entries skip a sequence
each land on stockd.deadletter.events with a Stockd-Reason header, the hub's view
is unchanged, and a later valid edge write still reaches the hub."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats.errors
from nats.aio.msg import Msg

from server.sync import streams
from server.sync.nats_server import NatsServer
from stockd.v1 import common_pb2, sync_pb2
from tests.integration.sync_helpers import (
    ProcessGroup,
    headers_of,
    nats_client,
    new_id,
    wait_in_sync,
)

SITE = "S1"
SKUS = ("A",)
PUBLISH_TIMEOUT_SECONDS = 5.0
FETCH_TIMEOUT_SECONDS = 1.0
DEADLETTER_TIMEOUT_SECONDS = 20.0


def received(sequence: int, quantity: int) -> common_pb2.LedgerEvent:
    """A well-formed RECEIVED entry of site S1 (so only the framing is wrong)."""
    return common_pb2.LedgerEvent(
        sequence=sequence,
        type=common_pb2.EVENT_TYPE_RECEIVED,
        site_id=SITE,
        sku="A",
        location_id="default",
        status=common_pb2.STOCK_STATUS_SELLABLE,
        quantity=quantity,
        local_share_delta=quantity,
    )


def batch_message(site_id: str, first: int, last: int, sequences: list[int]) -> bytes:
    return sync_pb2.EdgeMessage(
        site_id=site_id,
        events=sync_pb2.EventBatch(
            first_sequence=first,
            last_sequence=last,
            events=[received(sequence, 1000) for sequence in sequences],
        ),
    ).SerializeToString()


async def test_bad_messages_are_dead_lettered_and_the_hub_keeps_consuming(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with ProcessGroup(tmp_path) as group:
        hub, edge, before = await group.synced_site(nats_server.url, SITE, SKUS, [("A", 10)])
        assert before.site is not None
        mark = before.site.applied_sequence
        # Each would add 1000 units at the next sequences if the hub took it.
        bad = {
            "garbage": (b"\xff\xfe garbage \x00\x01", "malformed"),
            "other site": (batch_message("S2", mark + 1, mark + 1, [mark + 1]), "site_mismatch"),
            "range": (batch_message(SITE, mark + 1, mark + 5, [mark + 1, mark + 2]), "malformed"),
            "skip": (batch_message(SITE, mark + 1, mark + 2, [mark + 1, mark + 3]), "malformed"),
        }

        async with nats_client(nats_server.url) as client:
            js = client.jetstream(timeout=PUBLISH_TIMEOUT_SECONDS)
            dead = await js.pull_subscribe(
                streams.deadletter_subject("events"), stream=streams.DEADLETTER_STREAM
            )
            for data, _ in bad.values():
                await js.publish(
                    streams.events_subject(SITE),
                    data,
                    headers={"Nats-Msg-Id": f"test-{new_id()}"},
                    timeout=PUBLISH_TIMEOUT_SECONDS,
                )

            letters: list[Msg] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DEADLETTER_TIMEOUT_SECONDS
            while len(letters) < len(bad) and loop.time() < deadline:
                try:
                    fetched = await dead.fetch(batch=len(bad), timeout=FETCH_TIMEOUT_SECONDS)
                except nats.errors.TimeoutError:
                    continue
                for letter in fetched:
                    await letter.ack()
                letters.extend(fetched)
            await dead.unsubscribe()

        assert len(letters) == len(bad), (len(letters), hub.log_tail())
        by_data = {letter.data: headers_of(letter.headers) for letter in letters}
        for name, (data, reason) in bad.items():
            assert data in by_data, f"{name} was not dead-lettered"
            headers = by_data[data]
            assert headers.get("Stockd-Reason") == reason, (name, headers)
            assert headers.get("Stockd-Subject") == streams.events_subject(SITE), headers

        # Nothing of it was applied, and the hub kept consuming: a later valid
        # write at the edge still arrives.
        site = await hub.site(SITE)
        assert site is not None
        assert site.applied_sequence == mark
        await edge.client.receive([("A", 3)])
        after = await wait_in_sync(hub, edge, SKUS)
        assert after.hub["A"].on_hand_sellable == 13
        assert after.site is not None
        assert after.site.applied_sequence > mark
