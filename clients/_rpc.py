"""Channel, deadline and retry plumbing shared by the stockd clients.

``EdgeClient`` and ``HubClient`` differ only in their stub and methods; the
rules every call keeps live here once:

* a mutating call's request_id is fixed before the first attempt and sent
  unchanged on every retry, so a retry can never apply a change twice;
* only UNAVAILABLE is retried, with capped exponential backoff and full
  jitter, inside one deadline for the whole call;
* every failure surfaces as a ``StockdError``.
"""

from __future__ import annotations

import abc
import asyncio
import random
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

import grpc
import grpc.aio

from clients.errors import StockdError

# Limits and defaults, in one place (see STYLE.md, "a limit on everything").
DEFAULT_TIMEOUT_SECONDS = 5.0
DEFAULT_MAX_RETRIES = 5
MAX_RETRIES_LIMIT = 20
BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 2.0
# The contract's largest page (page_size "at most 1000").
PAGE_SIZE_MAX = 1000
USER_AGENT = "stockd-clients/0.1"

StubT = TypeVar("StubT")
RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
PageT = TypeVar("PageT", bound="Page")
PageT_co = TypeVar("PageT_co", bound="Page", covariant=True)
ItemT = TypeVar("ItemT")


def retry_delay_seconds(attempt: int, random_fraction: float) -> float:
    """Returns the pause before retry number ``attempt + 1`` ("full jitter").

    The ceiling doubles from 50 ms per attempt up to 2 s; the pause is a
    uniform fraction of it, so clients that failed together (a restarting
    server) do not come back together.

    Args:
        attempt: Retries made so far (0 before the first retry).
        random_fraction: A number in [0, 1), normally ``random.random()``.

    Returns:
        The pause in seconds.
    """
    assert attempt >= 0, attempt
    assert 0.0 <= random_fraction <= 1.0, random_fraction
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * (1 << min(attempt, 32)))
    return ceiling * random_fraction


class RpcClient(abc.ABC, Generic[StubT]):
    """Base of the async clients: one lazily opened channel, deadlines, retries.

    Constructing a client does no I/O and needs no running event loop: the
    channel is opened on first use, in the loop that makes the call (a
    grpc.aio channel belongs to one loop). Use it as ``async with`` or call
    ``close()``. Subclasses say which stub to build and add the methods.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """Configures the client.

        Args:
            target: ``host:port`` of the server.
            token: Bearer token, sent as ``authorization: Bearer <token>``.
            timeout_seconds: Default deadline of each call, retries included.
            max_retries: Retries after the first attempt, on UNAVAILABLE only.
            credentials: TLS channel credentials; None means plaintext.

        Raises:
            ValueError: When the timeout is not positive or max_retries is
                outside 0 to ``MAX_RETRIES_LIMIT``.
        """
        if not target:
            raise ValueError("target must be host:port")
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be positive, got {timeout_seconds}")
        if not 0 <= max_retries <= MAX_RETRIES_LIMIT:
            raise ValueError(f"max_retries must be 0 to {MAX_RETRIES_LIMIT}, got {max_retries}")
        self._target = target
        self._timeout_seconds = timeout_seconds
        self._max_retries = max_retries
        self._credentials = credentials
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._random = random.Random()
        self._channel: grpc.aio.Channel | None = None
        self._stub: StubT | None = None
        self._closed = False

    @property
    def target(self) -> str:
        """The ``host:port`` this client calls."""
        return self._target

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel, cancelling calls in flight. Safe to call twice."""
        self._closed = True
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close(grace=None)

    @abc.abstractmethod
    def _new_stub(self, channel: grpc.aio.Channel) -> StubT:
        """Returns the service's async stub on ``channel``."""

    def _get_stub(self) -> StubT:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        if self._stub is None:
            options = [("grpc.primary_user_agent", USER_AGENT)]
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self._target, options=options)
            else:
                self._channel = grpc.aio.secure_channel(
                    self._target, self._credentials, options=options
                )
            self._stub = self._new_stub(self._channel)
        return self._stub

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
        request: RequestT,
        timeout_seconds: float | None,
        *,
        request_id: str | None = None,
    ) -> ResponseT:
        """Calls ``method`` with retries on UNAVAILABLE inside one deadline.

        The same request object (so the same request_id) is sent on every
        attempt; each attempt gets what is left of the deadline.
        """
        budget = self._timeout_seconds if timeout_seconds is None else timeout_seconds
        if not budget > 0:
            raise ValueError(f"timeout_seconds must be positive, got {budget}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        attempt = 0
        while True:
            try:
                return await method(
                    request,
                    timeout=deadline - loop.time(),
                    metadata=self._metadata or None,
                )
            except grpc.aio.AioRpcError as error:
                delay = self._retry_delay(error, attempt, deadline - loop.time())
                if delay is None:
                    raise StockdError.from_rpc_error(error, request_id=request_id) from error
            await asyncio.sleep(delay)
            attempt += 1

    def _retry_delay(
        self, error: grpc.aio.AioRpcError, attempt: int, remaining_seconds: float | None
    ) -> float | None:
        """Returns the pause before retrying, or None when the error is final.

        Final means: not UNAVAILABLE, retries used up, or the pause would
        reach past the deadline (the attempt after it could not finish).
        """
        if error.code() is not grpc.StatusCode.UNAVAILABLE or attempt >= self._max_retries:
            return None
        delay = retry_delay_seconds(attempt, self._random.random())
        if remaining_seconds is not None and delay >= remaining_seconds:
            return None
        return delay


class Page(Protocol):
    """A list response: anything with a ``next_page_token``."""

    @property
    def next_page_token(self) -> str: ...


async def paginate(
    fetch: Callable[[str, int], Awaitable[PageT]],
    items_of: Callable[[PageT], Iterable[ItemT]],
    page_size: int,
    limit: int | None,
) -> AsyncGenerator[ItemT, None]:
    """Walks pages until the token runs out or ``limit`` items were yielded.

    Args:
        fetch: Returns the page after ``token`` (empty: the first) of at most
            ``size`` items (0: the server default).
        items_of: Picks the items out of a page.
        page_size: Items per page; 0 means the server default.
        limit: Stop after this many items; None means all.

    Yields:
        Each item, in the server's order.

    Raises:
        ValueError: When ``limit`` is negative.
        RuntimeError: When the server hands back the token it was given.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    token = ""
    yielded = 0
    while limit is None or yielded < limit:
        size = page_size
        if limit is not None:
            # Do not fetch a full default page to show three rows.
            size = min(page_size or PAGE_SIZE_MAX, limit - yielded, PAGE_SIZE_MAX)
        page = await fetch(token, size)
        for item in items_of(page):
            yield item
            yielded += 1
            if limit is not None and yielded >= limit:
                return
        next_token = page.next_page_token
        if not next_token:
            return
        # A server that hands back the same token would loop forever.
        if next_token == token:
            raise RuntimeError(f"server repeated page token {token!r}")
        token = next_token


class ListMethod(Protocol[PageT_co]):
    """A client's list method with its filters bound (``functools.partial``)."""

    def __call__(
        self, *, page_size: int, page_token: str, timeout_seconds: float | None
    ) -> Awaitable[PageT_co]: ...


def iterate_pages(
    list_method: ListMethod[PageT],
    items_of: Callable[[PageT], Iterable[ItemT]],
    *,
    page_size: int,
    limit: int | None,
    timeout_seconds: float | None,
) -> AsyncGenerator[ItemT, None]:
    """Yields the items of every page of ``list_method``; at most ``limit`` when given.

    ``timeout_seconds`` is the deadline of each page, not of the whole walk.
    """

    async def fetch(token: str, size: int) -> PageT:
        return await list_method(page_size=size, page_token=token, timeout_seconds=timeout_seconds)

    return paginate(fetch, items_of, page_size, limit)


def request_id_or_new(request_id: str | None) -> str:
    """Returns ``request_id``, or a new UUID when it is None.

    Called once per logical call, before the first attempt, so every retry
    carries the same key.
    """
    return str(uuid.uuid4()) if request_id is None else request_id


def sku_list(skus: Sequence[str]) -> list[str]:
    """Copies SKUs for a repeated field, refusing a bare string."""
    if isinstance(skus, str):
        # A bare string is a Sequence[str] too and would become one SKU per letter.
        raise TypeError("skus must be a sequence of SKUs, not a string")
    return list(skus)
