"""What the hub receives from edges, after parsing and validation (pure values)."""

from __future__ import annotations

from dataclasses import dataclass

from server.domain.model import LedgerEvent


@dataclass(frozen=True, slots=True)
class EventsIn:
    site_id: str
    events: tuple[LedgerEvent, ...]


@dataclass(frozen=True, slots=True)
class ChecksumIn:
    site_id: str
    as_of_sequence: int
    sku_count: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class QuotaRequestIn:
    site_id: str
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that must go to the dead-letter subject, with why."""

    reason: str
    detail: str = ""


Incoming = EventsIn | ChecksumIn | QuotaRequestIn | Rejected
