"""gRPC client plumbing shared by the cases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from bench.config import CHANNEL_READY_TIMEOUT_SECONDS
from bench.errors import TargetError


@asynccontextmanager
async def open_channel(target: str) -> AsyncIterator[grpc.aio.Channel]:
    """One insecure channel, connected before it is handed out.

    One channel per load-generating process, shared by all callers: that is
    how a real client would talk to one server, and it keeps the client's
    cost per call low.

    Raises:
        TargetError: The target did not accept a connection in time.
    """
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), CHANNEL_READY_TIMEOUT_SECONDS)
        except TimeoutError:
            raise TargetError(
                target, "connect", f"not ready after {CHANNEL_READY_TIMEOUT_SECONDS:.0f} s"
            ) from None
        yield channel


def raw_unary(
    channel: grpc.aio.Channel, method_path: str
) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """A unary method that sends and returns bytes, with no (de)serialization.

    The load generator shares the machine with the server, so it builds and
    serializes requests itself, once where it can, and never parses replies
    it only needs the status of.
    """
    return channel.unary_unary(method_path, request_serializer=None, response_deserializer=None)


def describe_error(error: grpc.aio.AioRpcError) -> str:
    """Status code and message of a failed call, for reports."""
    return f"{error.code().name}: {error.details()}"
