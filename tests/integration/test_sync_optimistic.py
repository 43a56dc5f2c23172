"""Optimistic segments: offline, an edge overbooks at most its bound, strict SKUs
never; after healing the hub reconciles by granting the overbooked units from
its own share (and re-sourcing any promise that relied on them)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from clients.edge import EdgeClient
from clients.errors import StockdError
from clients.hub import HubClient
from server.sync.nats_server import NatsServer
from server.sync.tcp_proxy import TcpProxy

START_TIMEOUT_SECONDS = 30.0
WAIT_TIMEOUT_SECONDS = 30.0
FRESH, DRY = "FRESH-MILK", "DRY-RICE"
BOUND = 5


async def eventually(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_TIMEOUT_SECONDS
    while not await predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def process(
    work: Path, name: str, module: str, *arguments: str
) -> AsyncIterator[int]:
    port_file = work / f"{name}.port"
    log = (work / f"{name}.log").open("wb")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *arguments, "--listen", "127.0.0.1:0",
        "--port-file", str(port_file), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_SECONDS
        while not port_file.exists():
            if child.returncode is not None or loop.time() > deadline:
                pytest.fail(f"{name} did not start: {(work / f'{name}.log').read_text()[-2000:]}")
            await asyncio.sleep(0.05)
        yield int(port_file.read_text())
    finally:
        if child.returncode is None:
            child.terminate()
            try:
                await asyncio.wait_for(child.wait(), timeout=10)
            except TimeoutError:
                child.kill()
                await child.wait()
        log.close()


@pytest.mark.timeout(180)
async def test_offline_overbooking_is_bounded_and_reconciled(tmp_path: Path) -> None:
    async with NatsServer(tmp_path / "nats") as nats, TcpProxy("127.0.0.1", nats.port) as proxy:
        config = tmp_path / "edge.toml"
        config.write_text(
            "[sync]\nchecksum_interval_seconds = 0.5\n"
            f'[[sync.optimistic]]\nsku_prefix = "FRESH-"\noverbook_max = {BOUND}\n'
        )
        async with (
            process(tmp_path, "hub", "hub", "--db", str(tmp_path / "hub.db"), "--nats",
                    nats.url) as hub_port,
            process(tmp_path, "edge", "edge_agent", "--site", "S1", "--db",
                    str(tmp_path / "edge.db"), "--nats", proxy.nats_url,
                    "--config", str(config)) as edge_port,
            EdgeClient(f"127.0.0.1:{edge_port}") as edge,
            HubClient(f"127.0.0.1:{hub_port}") as hub,
        ):  # fmt: skip
            for sku in (FRESH, DRY):
                await edge.upsert_item(sku)
            await edge.receive([(FRESH, 30), (DRY, 30)])

            async def hub_knows_site() -> bool:
                sites = (await hub.list_sites()).sites
                return bool(sites) and sites[0].applied_sequence >= 2

            await eventually(hub_knows_site, "the hub to see the site")
            for sku in (FRESH, DRY):
                await hub.recall_quota("S1", sku, 20, request_id=str(uuid.uuid4()))

            async def recalled() -> bool:
                shares = await edge.get_availability([FRESH, DRY])
                return all(a.local_share == 10 for a in shares.availability)

            await eventually(recalled, "the recalls to reach the edge")

            await proxy.stop()  # the site is cut off from the bus

            async def offline() -> bool:
                return not (await edge.get_sync_status()).connected

            await eventually(offline, "the edge to notice the outage")

            # Strict SKU: never beyond the local share.
            await edge.reserve([(DRY, 10)], kind="hard")
            with pytest.raises(StockdError) as refused:
                await edge.reserve([(DRY, 1)], kind="hard")
            assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
            assert refused.value.reason == "ERROR_REASON_INSUFFICIENT_STOCK"

            # Optimistic SKU: the local share plus at most the bound.
            await edge.reserve([(FRESH, 10 + BOUND)], kind="hard")
            with pytest.raises(StockdError) as over:
                await edge.reserve([(FRESH, 1)], kind="hard")
            assert over.value.metadata["available"] == "0"
            fresh = (await edge.get_availability([FRESH])).availability[0]
            assert fresh.reserved_hard == 10 + BOUND
            assert fresh.local_share == 10, "overbooking does not invent local share"

            await proxy.start()  # heal

            async def reconciled() -> bool:
                mine = (await edge.get_availability([FRESH])).availability[0]
                view = (await hub.get_site_balances("S1", [FRESH])).balances[0]
                return (
                    mine.local_share >= mine.reserved_hard
                    and view.in_flight == 0
                    and view.hub_share == 20 - BOUND
                )

            await eventually(reconciled, "the hub to reconcile the overbooking")
            mine = (await edge.get_availability([FRESH])).availability[0]
            view = (await hub.get_site_balances("S1", [FRESH])).balances[0]
            assert mine.local_share == 10 + BOUND
            # Every unit is owned by exactly one side again, and none twice.
            assert view.local_share + view.hub_share + view.in_flight <= view.on_hand_sellable
            dry = (await hub.get_site_balances("S1", [DRY])).balances[0]
            assert dry.hub_share == 20, "strict SKUs are untouched by reconciliation"
