"""Blocking wrapper of ``EdgeClient`` for scripts and threaded programs.

One private event loop runs in a daemon thread for the life of the wrapper,
and every call is handed to it. That keeps one gRPC channel (and its
connection) across calls, which ``asyncio.run`` per call could not: a
grpc.aio channel belongs to the loop that opened it. Calls from several
threads at once are safe; they run concurrently on that loop.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import grpc

from clients.edge import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_SECONDS, EdgeClient

P = ParamSpec("P")
ResultT = TypeVar("ResultT")
ItemT = TypeVar("ItemT")

# How long close() waits for the loop thread; the channel close itself is
# immediate (no grace), so this only guards against a wedged loop.
CLOSE_TIMEOUT_SECONDS = 5.0


def _blocking(
    method: Callable[Concatenate[EdgeClient, P], Coroutine[Any, Any, ResultT]],
) -> Callable[Concatenate[EdgeClientSync, P], ResultT]:
    """Turns an ``EdgeClient`` coroutine method into a blocking method.

    The wrapper keeps the wrapped signature (ParamSpec), so the sync client
    stays fully typed without restating eighteen signatures.
    """

    @functools.wraps(method)
    def call(self: EdgeClientSync, /, *args: P.args, **kwargs: P.kwargs) -> ResultT:
        return self._run(method(self._client, *args, **kwargs))

    return call


def _blocking_iterator(
    method: Callable[Concatenate[EdgeClient, P], AsyncGenerator[ItemT, None]],
) -> Callable[Concatenate[EdgeClientSync, P], Generator[ItemT, None, None]]:
    """Turns an ``EdgeClient`` async-generator method into a blocking generator.

    Closing the returned generator (or leaving a for loop early and letting
    it be collected) closes the async one, which ends the call.
    """

    @functools.wraps(method)
    def call(
        self: EdgeClientSync, /, *args: P.args, **kwargs: P.kwargs
    ) -> Generator[ItemT, None, None]:
        return self._iterate(method(self._client, *args, **kwargs))

    return call


class EdgeClientSync:
    """Blocking client of one edge agent; same methods as ``EdgeClient``.

    Use it as ``with EdgeClientSync(...) as client`` or call ``close()``;
    errors are the same ``StockdError``. Iterating methods return generators;
    close one (or break out of its loop) to end its call. From async code use
    ``EdgeClient`` instead: a blocking call would stall the caller's loop.
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
        """Starts the private loop; see ``EdgeClient`` for the arguments."""
        # Built first so bad arguments raise before a thread is started.
        self._client = EdgeClient(
            target,
            token=token,
            timeout_seconds=timeout_seconds,
            max_retries=max_retries,
            credentials=credentials,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"stockd-edge-{target}", daemon=True
        )
        self._thread.start()
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel and stops the loop thread. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(
                CLOSE_TIMEOUT_SECONDS
            )
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CLOSE_TIMEOUT_SECONDS)
            if not self._thread.is_alive():
                self._loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, ResultT]) -> ResultT:
        if self._closed:
            coroutine.close()
            raise RuntimeError("EdgeClientSync is closed")
        future: Future[ResultT] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            # The client enforces deadlines itself, so no timeout is needed here.
            return future.result()
        except BaseException:
            # KeyboardInterrupt in the caller's thread: stop the call too.
            future.cancel()
            raise

    def _iterate(self, iterator: AsyncGenerator[ItemT, None]) -> Generator[ItemT, None, None]:
        async def next_item() -> list[ItemT]:
            # A list, not Optional, so that a None item cannot look like the end.
            try:
                return [await anext(iterator)]
            except StopAsyncIteration:
                return []

        def generate() -> Generator[ItemT, None, None]:
            try:
                while items := self._run(next_item()):
                    yield items[0]
            finally:
                # Ends the call (a watch, a page walk) when the caller stops early.
                if not self._closed:
                    self._run(iterator.aclose())

        return generate()

    upsert_item = _blocking(EdgeClient.upsert_item)
    get_item = _blocking(EdgeClient.get_item)
    list_items = _blocking(EdgeClient.list_items)
    iterate_items = _blocking_iterator(EdgeClient.iterate_items)
    upsert_location = _blocking(EdgeClient.upsert_location)
    list_locations = _blocking(EdgeClient.list_locations)
    iterate_locations = _blocking_iterator(EdgeClient.iterate_locations)
    receive = _blocking(EdgeClient.receive)
    adjust = _blocking(EdgeClient.adjust)
    record_count = _blocking(EdgeClient.record_count)
    change_status = _blocking(EdgeClient.change_status)
    transfer = _blocking(EdgeClient.transfer)
    reserve = _blocking(EdgeClient.reserve)
    release = _blocking(EdgeClient.release)
    pick = _blocking(EdgeClient.pick)
    get_reservation = _blocking(EdgeClient.get_reservation)
    list_reservations = _blocking(EdgeClient.list_reservations)
    iterate_reservations = _blocking_iterator(EdgeClient.iterate_reservations)
    get_availability = _blocking(EdgeClient.get_availability)
    iterate_availability = _blocking_iterator(EdgeClient.iterate_availability)
    list_events = _blocking(EdgeClient.list_events)
    get_sync_status = _blocking(EdgeClient.get_sync_status)
    iterate_events = _blocking_iterator(EdgeClient.iterate_events)
    watch_availability = _blocking_iterator(EdgeClient.watch_availability)
