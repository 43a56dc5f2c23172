"""Proves the fault proxy's faults are what a real nats-py client sees: refused then
reconnected after stop/start, reset on cut, silence in drop mode, latency with delay."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from server.sync.nats_server import NatsServer
from server.sync.streams import EVENTS_STREAM, ensure_streams, events_subject
from server.sync.tcp_proxy import ProxyMode, TcpProxy
from tests.integration.conftest import eventually

EVENT_TIMEOUT_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 5.0
PING_SUBJECT = "stockd.test.ping"


@dataclass
class WatchedClient:
    """A nats-py client through the proxy that records its connection events."""

    client: Client
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    reconnected: asyncio.Event = field(default_factory=asyncio.Event)
    errors: list[Exception] = field(default_factory=list)


@pytest.fixture
async def proxy(nats_server: NatsServer) -> AsyncIterator[TcpProxy]:
    """A started proxy in front of the test's nats-server, stopped in ``finally``."""
    tcp_proxy = TcpProxy("127.0.0.1", nats_server.port)
    try:
        await tcp_proxy.start()
        yield tcp_proxy
    finally:
        await tcp_proxy.stop()


@pytest.fixture
async def watched(proxy: TcpProxy) -> AsyncIterator[WatchedClient]:
    """A client connected through the proxy that reconnects forever, fast."""
    disconnected = asyncio.Event()
    reconnected = asyncio.Event()
    errors: list[Exception] = []

    async def on_disconnected() -> None:
        disconnected.set()

    async def on_reconnected() -> None:
        reconnected.set()

    async def on_error(error: Exception) -> None:
        # Reconnect attempts against a refused port land here; kept for asserts.
        errors.append(error)

    client = await nats.connect(
        proxy.nats_url,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.05,  # seconds; float is fine at run time
        connect_timeout=2,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        error_cb=on_error,
    )
    try:
        yield WatchedClient(client, disconnected, reconnected, errors)
    finally:
        await client.close()


@pytest.fixture
async def responder(nats_server: NatsServer) -> AsyncIterator[Client]:
    """A client straight to the server (not through the proxy) answering pings."""
    client = await nats.connect(nats_server.url, allow_reconnect=False)

    async def pong(msg: Msg) -> None:
        await msg.respond(b"pong")

    try:
        await client.subscribe(PING_SUBJECT, cb=pong)
        await client.flush(timeout=5)
        yield client
    finally:
        await client.close()


async def _ping(client: Client, timeout_seconds: float = REQUEST_TIMEOUT_SECONDS) -> bytes:
    reply = await client.request(PING_SUBJECT, b"ping", timeout=timeout_seconds)
    return reply.data


async def test_publishes_with_ack_through_the_proxy(
    proxy: TcpProxy, watched: WatchedClient
) -> None:
    js = watched.client.jetstream(timeout=5)
    await ensure_streams(js)
    ack = await js.publish(events_subject("site-a"), b"through-proxy", timeout=5)
    assert ack.stream == EVENTS_STREAM
    assert proxy.connection_count == 1


async def test_stop_refuses_and_start_reconnects_on_the_same_port(
    proxy: TcpProxy, watched: WatchedClient
) -> None:
    port = proxy.port
    await proxy.stop()
    assert not proxy.listening
    assert proxy.connection_count == 0
    await asyncio.wait_for(watched.disconnected.wait(), EVENT_TIMEOUT_SECONDS)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    await eventually(lambda: bool(watched.errors), what="a failed reconnect attempt")

    await proxy.start()
    assert proxy.port == port
    await asyncio.wait_for(watched.reconnected.wait(), EVENT_TIMEOUT_SECONDS)
    js = watched.client.jetstream(timeout=5)
    await ensure_streams(js)
    ack = await js.publish(events_subject("site-a"), b"after-reconnect", timeout=5)
    assert ack.seq == 1


async def test_cut_resets_live_connections(proxy: TcpProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        info = await asyncio.wait_for(reader.readline(), 5)
        assert info.startswith(b"INFO ")
        assert proxy.connection_count == 1
        await proxy.cut()
        assert proxy.connection_count == 0
        assert proxy.listening
        # SO_LINGER 0: the peer sees a reset, not an orderly end of stream.
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_cut_makes_the_client_reconnect(proxy: TcpProxy, watched: WatchedClient) -> None:
    await proxy.cut()
    await asyncio.wait_for(watched.reconnected.wait(), EVENT_TIMEOUT_SECONDS)
    assert watched.disconnected.is_set()
    await watched.client.flush(timeout=5)
    assert proxy.connection_count == 1


@pytest.mark.usefixtures("responder")
async def test_drop_mode_black_holes_requests(proxy: TcpProxy, watched: WatchedClient) -> None:
    assert await _ping(watched.client) == b"pong"

    proxy.drop()
    assert proxy.mode is ProxyMode.DROP
    with pytest.raises(NatsTimeoutError):
        await _ping(watched.client, timeout_seconds=0.3)
    # A black hole, not a reset: the connection is still up.
    assert proxy.connection_count == 1
    assert not watched.disconnected.is_set()

    # The stream lost bytes, so forwarding again resets it and the client recovers.
    proxy.forward()
    await asyncio.wait_for(watched.reconnected.wait(), EVENT_TIMEOUT_SECONDS)
    assert await _ping(watched.client) == b"pong"


@pytest.mark.usefixtures("responder")
async def test_delay_adds_latency_each_way(proxy: TcpProxy, watched: WatchedClient) -> None:
    assert await _ping(watched.client) == b"pong"
    delay_seconds = 0.1
    proxy.delay_seconds = delay_seconds
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _ping(watched.client) == b"pong"
    # The request and the reply each wait once.
    assert loop.time() - started >= 2 * delay_seconds


def test_delay_is_bounded() -> None:
    with pytest.raises(ValueError, match="delay"):
        TcpProxy("127.0.0.1", 1, delay_seconds=-1)


async def test_target_down_resets_the_client(nats_server: NatsServer) -> None:
    port = nats_server.port
    await nats_server.stop()
    async with TcpProxy("127.0.0.1", port) as tcp_proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_proxy.port)
        try:
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(1), 5)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        assert tcp_proxy.connection_count == 0
