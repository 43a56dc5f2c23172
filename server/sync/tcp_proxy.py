"""A loopback TCP proxy that injects network faults between an edge and NATS.

The fault harness points an edge at the proxy instead of nats-server and then
cuts, refuses, black-holes or slows the link, so partitions are real socket
behaviour seen by the real client library rather than a mocked transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from types import TracebackType
from typing import Final, Self

LOOPBACK_HOST: Final = "127.0.0.1"
CHUNK_BYTES_MAX: Final = 64 * 1024
CONNECTIONS_MAX: Final = 256
UPSTREAM_CONNECT_TIMEOUT_SECONDS_DEFAULT: Final = 5.0
DELAY_SECONDS_MAX: Final = 60.0
# Bound on waiting for handler tasks to finish after their sockets were aborted.
SHUTDOWN_TIMEOUT_SECONDS: Final = 5.0


class ProxyMode(enum.Enum):
    """What the proxy does with bytes on live connections."""

    FORWARD = "forward"
    DROP = "drop"


class _Link:
    """One proxied connection: the accepted client side and its upstream side."""

    __slots__ = ("client", "discarded_bytes", "upstream")

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        # Bytes thrown away in drop mode; such a stream has a hole in it.
        self.discarded_bytes = 0

    def abort(self) -> None:
        """Close both sides at once, with RST rather than FIN where possible."""
        for writer in (self.client, self.upstream):
            _abort(writer)

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            writer.close()


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER on with a zero timeout makes close() send RST, which is how
        # a peer sees a crashed middlebox or a yanked cable come back.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Forward 127.0.0.1:<port> to ``target_host:target_port`` with faults on demand.

    Faults:
        ``stop()``: listener closed and live connections reset, so the client
        gets "connection refused" until ``start()`` reopens the same port.
        ``cut()``: live connections reset, listener stays open.
        ``mode = ProxyMode.DROP``: connections stay up but bytes vanish both
        ways (a black hole); setting FORWARD again resets the connections that
        lost bytes, since TCP never delivers a stream with a hole in it.
        ``delay_seconds``: latency added to every chunk in each direction.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_port: int | None = None,
        delay_seconds: float = 0.0,
        upstream_connect_timeout_seconds: float = UPSTREAM_CONNECT_TIMEOUT_SECONDS_DEFAULT,
    ) -> None:
        """Prepare, but do not start, a proxy.

        Args:
            target_host: where traffic goes.
            target_port: where traffic goes.
            listen_port: loopback port to listen on; a free one on first start if None.
            delay_seconds: initial per-chunk latency.
            upstream_connect_timeout_seconds: bound on connecting to the target.
        """
        self._target_host = target_host
        self._target_port = target_port
        self._port = listen_port or 0
        self._upstream_connect_timeout_seconds = upstream_connect_timeout_seconds
        self._delay_seconds = 0.0
        self.delay_seconds = delay_seconds
        self._mode = ProxyMode.FORWARD
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    # -- properties ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port; 0 until the first ``start()`` picked one."""
        return self._port

    @property
    def nats_url(self) -> str:
        return f"nats://{LOOPBACK_HOST}:{self._port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def connection_count(self) -> int:
        """Live proxied connections (both sides open)."""
        return len(self._links)

    @property
    def delay_seconds(self) -> float:
        return self._delay_seconds

    @delay_seconds.setter
    def delay_seconds(self, value: float) -> None:
        if not 0 <= value <= DELAY_SECONDS_MAX:
            raise ValueError(f"delay must be 0-{DELAY_SECONDS_MAX}s, got {value}")
        self._delay_seconds = value

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    @mode.setter
    def mode(self, value: ProxyMode) -> None:
        self._mode = value
        if value is ProxyMode.FORWARD:
            for link in list(self._links):
                if link.discarded_bytes:
                    link.abort()

    def drop(self) -> None:
        """Black-hole every connection, live and new."""
        self.mode = ProxyMode.DROP

    def forward(self) -> None:
        """Back to normal forwarding (resetting connections that lost bytes)."""
        self.mode = ProxyMode.FORWARD

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Listen, on the same port as before if this proxy ever listened."""
        if self._server is not None:
            return
        # reuse_address: a restarted listener must get its port back even with
        # the previous connections' sockets still in TIME_WAIT.
        self._server = await asyncio.start_server(
            self._handle, LOOPBACK_HOST, self._port, reuse_address=True, backlog=CONNECTIONS_MAX
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener (new connects are refused) and reset live connections."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self.cut()
        if server is not None:
            await asyncio.wait_for(server.wait_closed(), SHUTDOWN_TIMEOUT_SECONDS)

    async def cut(self) -> None:
        """Reset every live connection; return once their handlers have finished."""
        for link in list(self._links):
            link.abort()
        await self._drain_handlers()

    async def _drain_handlers(self) -> None:
        handlers = [task for task in self._handlers if task is not asyncio.current_task()]
        if not handlers:
            return
        _, pending = await asyncio.wait(handlers, timeout=SHUTDOWN_TIMEOUT_SECONDS)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=SHUTDOWN_TIMEOUT_SECONDS)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- data path ----------------------------------------------------------

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(client_reader, client_writer)
        except asyncio.CancelledError:
            _abort(client_writer)
            raise
        finally:
            self._handlers.discard(task)

    async def _serve(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self._server is None or len(self._links) >= CONNECTIONS_MAX:
            # Accepted in the instant before stop() or over the limit.
            _abort(client_writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(self._target_host, self._target_port),
                self._upstream_connect_timeout_seconds,
            )
        except (OSError, TimeoutError):
            # Target down: mirror it to the client as a reset, not a hang.
            _abort(client_writer)
            return
        link = _Link(client_writer, upstream_writer)
        if self._server is None:
            # stop() ran while we were connecting upstream; it could not see us.
            link.abort()
            return
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(link, client_reader, upstream_writer),
                self._pump(link, upstream_reader, client_writer),
            )
        finally:
            self._links.discard(link)
            link.close()
            for writer in (client_writer, upstream_writer):
                with contextlib.suppress(OSError):
                    await asyncio.wait_for(writer.wait_closed(), SHUTDOWN_TIMEOUT_SECONDS)

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy one direction until EOF or error, then close the whole link.

        No half-close: NATS never relies on it, and closing both sides when
        either ends keeps the number of states small.
        """
        try:
            while True:
                chunk = await reader.read(CHUNK_BYTES_MAX)
                if not chunk:
                    return
                if self._delay_seconds > 0:
                    # Injected latency, not synchronisation.
                    await asyncio.sleep(self._delay_seconds)
                if self._mode is ProxyMode.DROP:
                    link.discarded_bytes += len(chunk)
                    continue
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            link.close()
