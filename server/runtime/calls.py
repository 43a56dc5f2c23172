"""The call wrapper every unary servicer method goes through.

It authenticates, computes the caller's deadline, maps errors to statuses in
one place and logs. A decorator costs less per call than a grpc.aio
interceptor chain, which matters when Python gRPC itself is the throughput
ceiling; for the same reason successful calls are counted and summarised
periodically (`rpc_summary`) and logged one by one only at debug level, while
every refused or failed call is logged with its request_id, rpc and peer.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
import structlog

from server.domain.errors import FieldViolation, InvalidArgument, StockdError
from server.runtime.auth import Authenticator
from server.runtime.status import to_status

log = structlog.get_logger("stockd.rpc")


class Servicer(Protocol):
    auth: Authenticator
    rpc_counts: Counter[tuple[str, str]]


class Call:
    """What a handler knows about its call beyond the request."""

    __slots__ = ("context", "deadline", "principal")

    def __init__(self, principal: str, deadline: float | None, context: Any) -> None:
        self.principal = principal
        self.deadline = deadline
        self.context = context


def deadline_of(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic() + remaining


class Undecodable:
    """Stands for request bytes the request type could not parse."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error

    def as_error(self) -> InvalidArgument:
        return InvalidArgument(
            f"the request could not be decoded: {self.error}",
            violations=[FieldViolation("", "not a valid protobuf message of the request type")],
        )


def safe_deserializer(request_type: Any) -> Callable[[bytes], Any]:
    """Parses requests; bad bytes become an `Undecodable` that `unary` refuses
    with INVALID_ARGUMENT (gRPC itself would answer UNKNOWN)."""

    def parse(data: bytes) -> Any:
        try:
            return request_type.FromString(data)
        except Exception as error:
            return Undecodable(str(error))

    return parse


Handler = Callable[[Any, Any, Call], Awaitable[Any]]
Method = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def unary(rpc: str, *, mutating: bool) -> Callable[[Handler], Method]:
    """Wraps `async def handler(self, request, call) -> response`."""

    def wrap(handler: Handler) -> Method:
        @functools.wraps(handler)
        async def method(
            self: Servicer, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            started = time.perf_counter()
            principal = ""
            try:
                if self.auth.enabled:
                    principal = self.auth.principal(context.invocation_metadata())
                else:
                    principal = self.auth.principal(None)
                if isinstance(request, Undecodable):
                    raise request.as_error()
                call = Call(principal, deadline_of(context), context)
                response = await handler(self, request, call)
            except StockdError as error:
                self.rpc_counts[(rpc, error.code)] += 1
                log.info(
                    "rpc_refused",
                    rpc=rpc,
                    request_id=getattr(request, "request_id", ""),
                    peer=context.peer(),
                    principal=principal,
                    code=error.code,
                    reason=error.reason_name,
                    message=error.message,
                    duration_ms=round((time.perf_counter() - started) * 1000, 3),
                )
                await context.abort_with_status(to_status(error))  # type: ignore[attr-defined]
                raise AssertionError("abort_with_status returned") from error
            except Exception:
                self.rpc_counts[(rpc, "INTERNAL")] += 1
                log.exception(
                    "rpc_crashed",
                    rpc=rpc,
                    request_id=getattr(request, "request_id", ""),
                    peer=context.peer(),
                )
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the log")
                raise
            self.rpc_counts[(rpc, "OK")] += 1
            if mutating:
                log.debug(
                    "rpc_completed",
                    rpc=rpc,
                    request_id=request.request_id,
                    principal=principal,
                    duration_ms=round((time.perf_counter() - started) * 1000, 3),
                )
            return response

        return method

    return wrap


def summarise(counts: Counter[tuple[str, str]]) -> dict[str, int]:
    """Flattens and resets the per-(rpc, code) counters for a summary log line."""
    summary = {f"{rpc}.{code}": count for (rpc, code), count in sorted(counts.items())}
    counts.clear()
    return summary
