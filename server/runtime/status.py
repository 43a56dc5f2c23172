"""The one place that turns a domain error into a gRPC status.

Every error carries exactly one google.rpc.ErrorInfo (domain "stockd", reason
from the proto ErrorReason enum, machine-readable metadata) and, for bad
input, a google.rpc.BadRequest with one field violation per bad field.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.domain.errors import StockdError

ERROR_DOMAIN = "stockd"
FIELD_VIOLATIONS_MAX = 20


def grpc_code(error: StockdError) -> grpc.StatusCode:
    return grpc.StatusCode[error.code]


def to_status(error: StockdError) -> grpc.Status:
    details: list[any_pb2.Any] = []
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.reason_name, domain=ERROR_DOMAIN, metadata=error.metadata
        )
    )
    details.append(info)
    if error.violations:
        # Capped: gRPC drops trailers above 16 KiB, which would lose the status
        # details altogether; the count of the rest is stated.
        shown = error.violations[:FIELD_VIOLATIONS_MAX]
        field_violations = [
            error_details_pb2.BadRequest.FieldViolation(
                field=violation.field, description=violation.description
            )
            for violation in shown
        ]
        if len(error.violations) > len(shown):
            field_violations.append(
                error_details_pb2.BadRequest.FieldViolation(
                    field="",
                    description=f"{len(error.violations) - len(shown)} more violations not listed",
                )
            )
        bad_request = error_details_pb2.BadRequest(field_violations=field_violations)
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code), message=error.message, details=details
    )
    return rpc_status.to_status(status)
