"""Sync messages <-> hub domain values. Anything malformed becomes `Rejected`."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from hub.domain.incoming import ChecksumIn, EventsIn, Incoming, QuotaRequestIn, Rejected
from hub.domain.view import Command
from server.domain import limits
from server.domain.model import EventType
from server.sync import streams
from server.sync.wire import event_from_proto, timestamp
from stockd.v1 import sync_pb2

EVENTS_PER_MESSAGE_MAX = 10_000


def parse(subject: str, data: bytes) -> Incoming:
    """Validates one edge message; the subject's site is the only trusted identity."""
    site = streams.site_from_subject(subject)
    if site is None:
        return Rejected("bad_subject", subject)
    try:
        message = sync_pb2.EdgeMessage.FromString(data)
    except DecodeError as error:
        return Rejected("malformed", str(error))
    if message.site_id != site:
        # NATS permissions should already stop this; the hub checks anyway.
        return Rejected("site_mismatch", f"{message.site_id!r} published on {subject!r}")
    body = message.WhichOneof("body")
    if body == "events":
        return _events(site, message.events)
    if body == "checksum":
        checksum = message.checksum
        if len(checksum.digest) != 32:
            return Rejected("malformed", "checksum digest is not SHA-256")
        return ChecksumIn(site, checksum.as_of_sequence, checksum.sku_count, checksum.digest)
    if body == "quota_request":
        request = message.quota_request
        if not request.sku or not 0 < request.quantity <= limits.QUANTITY_MAX:
            return Rejected("malformed", "quota request needs a SKU and a positive quantity")
        return QuotaRequestIn(site, request.sku, request.quantity)
    return Rejected("malformed", "empty message")


def _events(site: str, batch: sync_pb2.EventBatch) -> Incoming:
    count = len(batch.events)
    if count == 0 or count > EVENTS_PER_MESSAGE_MAX:
        return Rejected("malformed", f"{count} events in a batch")
    if batch.first_sequence < 1 or batch.last_sequence - batch.first_sequence + 1 != count:
        return Rejected("malformed", "sequence range does not match the entries")
    events = []
    for offset, proto in enumerate(batch.events):
        if proto.sequence != batch.first_sequence + offset:
            return Rejected("malformed", f"entry {offset} breaks the sequence")
        if proto.site_id and proto.site_id != site:
            return Rejected("site_mismatch", f"entry of site {proto.site_id!r}")
        try:
            event = event_from_proto(proto)
        except ValueError as error:
            return Rejected("malformed", f"entry {proto.sequence}: {error}")
        if event.type is EventType.UNSPECIFIED or not event.sku:
            return Rejected("malformed", f"entry {proto.sequence} has no type or SKU")
        if abs(event.quantity) > limits.QUANTITY_MAX or (
            event.quantity < 0 and event.type not in (EventType.ADJUSTED, EventType.COUNTED)
        ):
            return Rejected("malformed", f"entry {proto.sequence} has quantity {event.quantity}")
        events.append(event)
    return EventsIn(site, tuple(events))


def encode(command: Command, now_ms: int) -> bytes:
    message = sync_pb2.HubCommand(
        site_id=command.site_id,
        command_sequence=command.command_sequence,
        issued_at=timestamp(now_ms),
    )
    if command.kind == "quota_grant":
        message.quota_grant.CopyFrom(
            sync_pb2.QuotaGrant(sku=command.sku, quantity=command.quantity)
        )
    elif command.kind == "quota_recall":
        message.quota_recall.CopyFrom(
            sync_pb2.QuotaRecall(sku=command.sku, quantity=command.quantity)
        )
    elif command.kind == "promise_hold":
        message.promise_hold.CopyFrom(
            sync_pb2.PromiseHold(
                promise_id=command.promise_id, sku=command.sku, quantity=command.quantity
            )
        )
    elif command.kind == "promise_release":
        message.promise_release.CopyFrom(
            sync_pb2.PromiseRelease(
                promise_id=command.promise_id, sku=command.sku, quantity=command.quantity
            )
        )
    elif command.kind == "replay_request":
        message.replay_request.CopyFrom(
            sync_pb2.ReplayRequest(from_sequence=command.from_sequence, reason=command.reason)
        )
    else:
        raise ValueError(f"unknown command kind {command.kind!r}")
    return message.SerializeToString()
