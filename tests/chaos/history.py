"""The chaos run's history: every call with its request_id, outcome and reply.

An outcome is one of:

* ``ok``: the server acknowledged the call; the reply bytes are kept (a
  replay of the same request_id must return exactly them);
* ``refused``: the server answered with a domain error (its reason is kept),
  which by contract wrote nothing;
* ``unknown``: the call died with the process, the link or its deadline; the
  write may or may not have happened, and must have happened at most once.

Faults are recorded in the same timeline, so a violation can be printed with
the calls and faults around it and the whole history is written as JSON lines
for offline study.
"""

from __future__ import annotations

import base64
import enum
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc
import grpc.aio
from google.rpc import error_details_pb2, status_pb2

# Codes a stockd server uses for a refusal that wrote nothing.
REFUSAL_CODES: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
# Server errors no stockd call should ever end with, crash or not.
SERVER_ERROR_CODES: Final = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
FAULT_WINDOW_SECONDS: Final = 30.0


class Outcome(enum.StrEnum):
    OK = "ok"
    REFUSED = "refused"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ErrorSummary:
    """What a failed call said: its code, the stockd reason (if any) and message."""

    code: grpc.StatusCode
    reason: str
    message: str

    @property
    def from_stockd(self) -> bool:
        return bool(self.reason)


def summarise_error(error: grpc.aio.AioRpcError) -> ErrorSummary:
    """Reads the ErrorInfo reason out of grpc-status-details-bin, when there is one."""
    reason = ""
    # grpc.aio.Metadata iterates as (key, value) pairs; the stubs type it as a Mapping.
    pairs: Iterable[tuple[str, str | bytes]] = error.trailing_metadata() or ()  # type: ignore[assignment]
    for key, value in pairs:
        if key != "grpc-status-details-bin":
            continue
        blob = value if isinstance(value, bytes) else str(value).encode()
        status = status_pb2.Status.FromString(blob)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
    return ErrorSummary(error.code(), reason, error.details() or "")


def classify(error: ErrorSummary) -> Outcome:
    """Refused only when the server said so; anything else might have been applied."""
    if error.code in REFUSAL_CODES:
        return Outcome.REFUSED
    if error.code is grpc.StatusCode.UNAVAILABLE and error.reason in (
        "ERROR_REASON_STORAGE_UNAVAILABLE",
        "ERROR_REASON_SHUTTING_DOWN",
    ):
        return Outcome.REFUSED  # documented: nothing was applied
    if error.code is grpc.StatusCode.DEADLINE_EXCEEDED and error.from_stockd:
        return Outcome.REFUSED  # the server dropped it before applying it
    return Outcome.UNKNOWN


@dataclass(slots=True)
class CallRecord:
    """One call made by the harness."""

    index: int
    at_seconds: float
    target: str
    kind: str
    rpc: str
    request_id: str
    request: bytes
    write: bool
    outcome: Outcome = Outcome.UNKNOWN
    code: str = ""
    reason: str = ""
    message: str = ""
    response: bytes = b""
    duration_seconds: float = 0.0
    skus: tuple[str, ...] = ()
    note: str = ""

    def line(self) -> str:
        detail = self.reason or self.code
        return (
            f"#{self.index} t={self.at_seconds:.3f}s {self.target} {self.kind} {self.rpc} "
            f"request_id={self.request_id or '-'} skus={','.join(self.skus) or '-'} "
            f"-> {self.outcome}{' ' + detail if detail else ''}"
            f"{' (' + self.note + ')' if self.note else ''}"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "at_seconds": round(self.at_seconds, 4),
            "target": self.target,
            "kind": self.kind,
            "rpc": self.rpc,
            "request_id": self.request_id,
            "request_b64": base64.b64encode(self.request).decode(),
            "write": self.write,
            "outcome": str(self.outcome),
            "code": self.code,
            "reason": self.reason,
            "message": self.message[:300],
            "response_b64": base64.b64encode(self.response).decode(),
            "duration_seconds": round(self.duration_seconds, 4),
            "skus": list(self.skus),
            "note": self.note,
        }


@dataclass(slots=True)
class FaultRecord:
    index: int
    at_seconds: float
    kind: str
    target: str
    detail: str
    ended_at_seconds: float = 0.0

    def line(self) -> str:
        return (
            f"#{self.index} t={self.at_seconds:.3f}s FAULT {self.kind} {self.target} "
            f"{self.detail} (healed at {self.ended_at_seconds:.3f}s)"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "at_seconds": round(self.at_seconds, 4),
            "fault": self.kind,
            "target": self.target,
            "detail": self.detail,
            "ended_at_seconds": round(self.ended_at_seconds, 4),
        }


@dataclass
class History:
    """Append-only record of calls and faults, in the order they started."""

    calls: list[CallRecord] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    _next_index: int = 0

    def _index(self) -> int:
        self._next_index += 1
        return self._next_index

    def begin(
        self,
        at_seconds: float,
        target: str,
        kind: str,
        rpc: str,
        request_id: str,
        request: bytes,
        *,
        write: bool,
        skus: Iterable[str] = (),
        note: str = "",
    ) -> CallRecord:
        record = CallRecord(
            self._index(), at_seconds, target, kind, rpc, request_id, request, write,
            skus=tuple(skus), note=note,
        )  # fmt: skip
        self.calls.append(record)
        return record

    def fault(self, at_seconds: float, kind: str, target: str, detail: str) -> FaultRecord:
        record = FaultRecord(self._index(), at_seconds, kind, target, detail)
        self.faults.append(record)
        return record

    def writes(self) -> Iterator[CallRecord]:
        return (record for record in self.calls if record.write)

    def by_request(self, target: str) -> dict[str, list[CallRecord]]:
        """Every attempt of each write request_id sent to `target`, in order."""
        found: dict[str, list[CallRecord]] = {}
        for record in self.calls:
            if record.write and record.target == target and record.request_id:
                found.setdefault(record.request_id, []).append(record)
        return found

    def operation_counts(self) -> Counter[tuple[str, str]]:
        return Counter((record.kind, str(record.outcome)) for record in self.calls)

    def fault_counts(self) -> Counter[str]:
        return Counter(record.kind for record in self.faults)

    def around(self, records: Iterable[CallRecord], span: int = 12) -> list[str]:
        """Lines of the timeline near `records`: calls around each, and the faults
        of the `fault_window_seconds` before the first one."""
        chosen = sorted(records, key=lambda record: record.index)
        if not chosen:
            return []
        timeline: list[tuple[int, str]] = [(r.index, r.line()) for r in self.calls]
        window_start = chosen[0].at_seconds - FAULT_WINDOW_SECONDS
        timeline += [
            (f.index, f.line())
            for f in self.faults
            if (f.ended_at_seconds or float("inf")) >= window_start
            and f.at_seconds <= chosen[-1].at_seconds + 1
        ]
        timeline.sort()
        positions = {index: position for position, (index, _) in enumerate(timeline)}
        keep = {position for position, (index, line) in enumerate(timeline) if " FAULT " in line}
        for record in chosen:
            position = positions[record.index]
            keep.update(range(max(0, position - span), min(len(timeline), position + 3)))
        return [timeline[position][1] for position in sorted(keep)]

    def write_jsonl(self, path: Path) -> None:
        with path.open("w", encoding="utf-8") as out:
            entries: list[tuple[int, dict[str, object]]] = [
                (record.index, record.to_json()) for record in self.calls
            ]
            entries += [(record.index, record.to_json()) for record in self.faults]
            for _, entry in sorted(entries, key=lambda pair: pair[0]):
                out.write(json.dumps(entry, sort_keys=True) + "\n")
