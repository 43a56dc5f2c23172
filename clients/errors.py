"""The one error type of the stockd SDK, decoded from gRPC rich status.

The server answers every refusal with a ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer: one ``ErrorInfo`` (domain ``stockd``,
a reason named by ``stockd.v1.ErrorReason``, machine-readable metadata such
as the available quantity) and, for bad input, a ``BadRequest``. Callers
should branch on ``reason`` and read ``metadata``, never parse the message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from stockd.v1 import common_pb2

# The trailer gRPC reserves for a serialized google.rpc.Status (the same key
# grpc_status.rpc_status reads).
STATUS_DETAILS_METADATA_KEY = "grpc-status-details-bin"

# The ErrorInfo domain of errors raised by stockd itself.
ERROR_DOMAIN = "stockd"


class StockdError(Exception):
    """A call to stockd ended with a non-OK status (after any retries).

    Attributes:
        code: The gRPC status code.
        reason: The ErrorInfo reason, for example
            ``"ERROR_REASON_INSUFFICIENT_STOCK"``; empty when the status
            carried none (transport errors, deadlines, proxies).
        message: The human-readable status message.
        domain: The ErrorInfo domain (``"stockd"`` for server errors).
        metadata: The ErrorInfo metadata, for example ``{"sku": "A",
            "requested": "5", "available": "3"}``.
        field_violations: ``(field, description)`` pairs from BadRequest.
        request_id: The request_id the call carried, when it was a mutating
            call. After an UNAVAILABLE or DEADLINE_EXCEEDED the outcome is
            unknown; retrying with this id is safe and tells you which.
        status: The decoded ``google.rpc.Status``, for details this class
            does not lift into fields.
    """

    code: grpc.StatusCode
    reason: str
    message: str
    domain: str
    metadata: dict[str, str]
    field_violations: list[tuple[str, str]]
    request_id: str | None
    status: status_pb2.Status | None

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: list[tuple[str, str]] | None = None,
        request_id: str | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        """Builds an error from already-decoded parts (tests, fakes, wrappers)."""
        assert code is not grpc.StatusCode.OK, "an OK status is not an error"
        self.code = code
        self.reason = reason
        self.message = message
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations or [])
        self.request_id = request_id
        self.status = status
        super().__init__(self.summary())

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields would be lost by Exception's default pickling,
        # which replays only args; errors must survive a process pool.
        return (
            _restore,
            (
                self.code,
                self.message,
                self.reason,
                self.domain,
                self.metadata,
                self.field_violations,
                self.request_id,
                self.status,
            ),
        )

    @property
    def reason_value(self) -> common_pb2.ErrorReason.ValueType:
        """The reason as a ``stockd.v1.ErrorReason`` value.

        ``ERROR_REASON_UNSPECIFIED`` when the reason is empty, from another
        domain, or newer than these stubs, so a comparison never raises.
        """
        if self.domain not in ("", ERROR_DOMAIN) or not self.reason:
            return common_pb2.ERROR_REASON_UNSPECIFIED
        try:
            return common_pb2.ErrorReason.Value(self.reason)
        except ValueError:
            return common_pb2.ERROR_REASON_UNSPECIFIED

    @property
    def retryable(self) -> bool:
        """Whether the same request (same request_id) may simply be sent again."""
        return self.code is grpc.StatusCode.UNAVAILABLE

    def summary(self) -> str:
        """Returns ``CODE REASON: message``, the one line the CLI prints."""
        head = f"{self.code.name} {self.reason}" if self.reason else self.code.name
        return f"{head}: {self.message}" if self.message else head

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, *, request_id: str | None = None) -> StockdError:
        """Decodes a failed call (``grpc.aio.AioRpcError`` or a sync ``grpc.RpcError``).

        This follows ``grpc_status.rpc_status.from_call`` but reads the
        trailers synchronously (an ``AioRpcError`` already holds them) and
        never raises: a malformed or missing status still yields an error
        with the transport's code and message.

        Args:
            error: The exception grpc raised.
            request_id: The request_id the call carried, if any.

        Returns:
            The structured error.
        """
        code = error.code()
        details = error.details() or ""
        # grpc.aio gives a Metadata object (or None), sync grpc a tuple of
        # namedtuples; both iterate as (key, value) pairs.
        raw_trailing: Iterable[Any] = error.trailing_metadata() or ()
        trailing = [(str(key), value) for key, value in raw_trailing]
        return cls.from_parts(code, details, trailing, request_id=request_id)

    @classmethod
    def from_parts(
        cls,
        code: grpc.StatusCode,
        details: str,
        trailing_metadata: Iterable[tuple[str, str | bytes]],
        *,
        request_id: str | None = None,
    ) -> StockdError:
        """Decodes a status code, message and trailing metadata.

        Args:
            code: The gRPC status code of the call.
            details: The status message of the call.
            trailing_metadata: The call's trailing metadata pairs.
            request_id: The request_id the call carried, if any.

        Returns:
            The structured error.
        """
        status = decode_status(trailing_metadata)
        reason = ""
        domain = ""
        metadata: dict[str, str] = {}
        field_violations: list[tuple[str, str]] = []
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and not reason:
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad_request = error_details_pb2.BadRequest()
                    detail.Unpack(bad_request)
                    field_violations.extend(
                        (violation.field, violation.description)
                        for violation in bad_request.field_violations
                    )
        message = details or (status.message if status is not None else "")
        return cls(
            code,
            message,
            reason=reason,
            domain=domain,
            metadata=metadata,
            field_violations=field_violations,
            request_id=request_id,
            status=status,
        )


def _restore(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    domain: str,
    metadata: dict[str, str],
    field_violations: list[tuple[str, str]],
    request_id: str | None,
    status: status_pb2.Status | None,
) -> StockdError:
    return StockdError(
        code,
        message,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=field_violations,
        request_id=request_id,
        status=status,
    )


def decode_status(
    trailing_metadata: Iterable[tuple[str, str | bytes]],
) -> status_pb2.Status | None:
    """Finds and parses the ``google.rpc.Status`` in trailing metadata.

    Args:
        trailing_metadata: Metadata pairs as grpc returns them (binary keys
            ending in ``-bin`` carry bytes).

    Returns:
        The status, or None when absent or not decodable (a proxy may send
        its own, unrelated trailers; they must not hide the real error).
    """
    for key, value in trailing_metadata:
        if key != STATUS_DETAILS_METADATA_KEY:
            continue
        raw = value if isinstance(value, bytes) else value.encode("latin-1")
        try:
            return status_pb2.Status.FromString(raw)
        except DecodeError:
            return None
    return None
