"""Domain errors: one base class, each subclass maps 1:1 to a proto ErrorReason.

The domain imports no grpc, so the status code is carried as the name of a
gRPC status code; `server.runtime.errors` turns it into a real status once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from server.domain import limits


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field, with the path as the caller spelled it (lines[2].quantity)."""

    field: str
    description: str
    reason: str = "ERROR_REASON_INVALID_FIELD"


class StockdError(Exception):
    """Base of every operating error stockd reports to a caller."""

    code: ClassVar[str] = "INTERNAL"
    reason: ClassVar[str] = "ERROR_REASON_UNSPECIFIED"

    def __init__(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: tuple[FieldViolation, ...] = tuple(violations)

    @property
    def reason_name(self) -> str:
        """The reason this instance reports (bad input may carry a finer one)."""
        return self.reason


class InvalidArgument(StockdError):
    """Bad input; carries every field violation found, not just the first."""

    code = "INVALID_ARGUMENT"
    reason = "ERROR_REASON_INVALID_FIELD"

    @property
    def reason_name(self) -> str:
        return self.violations[0].reason if self.violations else self.reason


class InvalidPageToken(InvalidArgument):
    reason = "ERROR_REASON_INVALID_PAGE_TOKEN"

    @property
    def reason_name(self) -> str:
        return self.reason


class NotFound(StockdError):
    code = "NOT_FOUND"


class UnknownSku(NotFound):
    reason = "ERROR_REASON_UNKNOWN_SKU"


class UnknownLocation(NotFound):
    reason = "ERROR_REASON_UNKNOWN_LOCATION"


class UnknownReservation(NotFound):
    reason = "ERROR_REASON_UNKNOWN_RESERVATION"


class UnknownSite(NotFound):
    reason = "ERROR_REASON_UNKNOWN_SITE"


class UnknownPromise(NotFound):
    reason = "ERROR_REASON_UNKNOWN_PROMISE"


class FailedPrecondition(StockdError):
    code = "FAILED_PRECONDITION"


class InsufficientStock(FailedPrecondition):
    reason = "ERROR_REASON_INSUFFICIENT_STOCK"


class InsufficientOnHand(FailedPrecondition):
    reason = "ERROR_REASON_INSUFFICIENT_ON_HAND"


class ReservationClosed(FailedPrecondition):
    reason = "ERROR_REASON_RESERVATION_CLOSED"


class ExceedsHeld(FailedPrecondition):
    reason = "ERROR_REASON_EXCEEDS_HELD"


class WouldBreakReservations(FailedPrecondition):
    reason = "ERROR_REASON_WOULD_BREAK_RESERVATIONS"


class PromiseClosed(FailedPrecondition):
    reason = "ERROR_REASON_PROMISE_CLOSED"


class RequestIdReused(StockdError):
    code = "ALREADY_EXISTS"
    reason = "ERROR_REASON_REQUEST_ID_REUSED"


class Unauthenticated(StockdError):
    code = "UNAUTHENTICATED"
    reason = "ERROR_REASON_UNAUTHENTICATED"


class PermissionDenied(StockdError):
    code = "PERMISSION_DENIED"
    reason = "ERROR_REASON_PERMISSION_DENIED"


class Overloaded(StockdError):
    code = "RESOURCE_EXHAUSTED"
    reason = "ERROR_REASON_OVERLOADED"


class StorageUnavailable(StockdError):
    code = "UNAVAILABLE"
    reason = "ERROR_REASON_STORAGE_UNAVAILABLE"


class ShuttingDown(StockdError):
    code = "UNAVAILABLE"
    reason = "ERROR_REASON_SHUTTING_DOWN"


class DeadlineExceeded(StockdError):
    """The caller's deadline passed before the command was applied."""

    code = "DEADLINE_EXCEEDED"
    reason = "ERROR_REASON_UNSPECIFIED"


@dataclass
class Violations:
    """Collects field violations so one reply names every bad field."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, path: str, description: str, reason: str = "ERROR_REASON_INVALID_FIELD") -> None:
        self.items.append(FieldViolation(path, description, reason))

    def raise_if_any(self, message: str = "request has invalid fields") -> None:
        if self.items:
            first = self.items[0]
            raise InvalidArgument(
                f"{message}: {first.field}: {first.description}"
                + (f" (and {len(self.items) - 1} more)" if len(self.items) > 1 else ""),
                violations=self.items,
            )


def check_request_id(request_id: str, violations: Violations | None = None) -> None:
    """Every mutating call's idempotency key: 1 to 128 printable characters.

    With `violations`, records the problem there (the caller raises with its
    other findings); without, raises at once.
    """
    found = violations if violations is not None else Violations()
    if not request_id:
        found.add("request_id", "must not be empty (use a client-generated UUID)")
    elif len(request_id) > limits.REQUEST_ID_LENGTH_MAX:
        found.add("request_id", f"longer than {limits.REQUEST_ID_LENGTH_MAX} characters")
    elif not request_id.isprintable():
        found.add("request_id", "must be printable")
    if violations is None:
        found.raise_if_any()


ALL_ERRORS: tuple[type[StockdError], ...] = (
    InvalidArgument,
    InvalidPageToken,
    UnknownSku,
    UnknownLocation,
    UnknownReservation,
    UnknownSite,
    UnknownPromise,
    InsufficientStock,
    InsufficientOnHand,
    ReservationClosed,
    ExceedsHeld,
    WouldBreakReservations,
    PromiseClosed,
    RequestIdReused,
    Unauthenticated,
    PermissionDenied,
    Overloaded,
    StorageUnavailable,
    ShuttingDown,
)
