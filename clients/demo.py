"""`make demo`: starts an edge agent and drives a short warehouse scenario.

It shows, against a real agent process (gRPC on loopback, a SQLite ledger on
disk): receipts in cases, hard and soft reservations, a refused oversell with
the quantity that was available, an idempotent retry, a pick, a TTL expiry
seen on the live availability stream, a cycle count with its variance, and
the audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from clients.edge import EdgeClient
from clients.errors import StockdError
from stockd.v1 import common_pb2

console = Console()

SITE = "WH-DEMO"
TOKEN = "demo-operator-token"
START_TIMEOUT_SECONDS = 20.0


def _start_agent(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    config = work / "edge.toml"
    config.write_text(f'[tokens]\n"{TOKEN}" = "demo-operator"\n')
    port_file = work / "edge.port"
    log = (work / "edge.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "edge_agent",
            "--site", SITE, "--db", str(work / "edge.db"), "--listen", "127.0.0.1:0",
            "--port-file", str(port_file), "--config", str(config), "--log-json",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise SystemExit(f"edge agent did not start; see {work / 'edge.log'}")
        time.sleep(0.05)
    return process, int(port_file.read_text())


async def _wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout_seconds: float, what: str
) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not await predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _availability_table(rows: list[common_pb2.SkuAvailability], title: str) -> Table:
    table = Table(title=title)
    for column in ("sku", "on hand", "reserved soft", "reserved hard", "safety", "available"):
        table.add_column(column, justify="left" if column == "sku" else "right")
    for row in rows:
        table.add_row(
            row.sku,
            str(row.on_hand_sellable),
            str(row.reserved_soft),
            str(row.reserved_hard),
            str(row.safety_stock),
            f"[bold]{row.available}[/bold]",
        )
    return table


def step(text: str) -> None:
    console.rule(f"[bold cyan]{text}")


async def scenario(port: int) -> None:
    async with EdgeClient(f"127.0.0.1:{port}", token=TOKEN) as edge:
        step("1. Item master: T-shirts come in cases of 12, mugs by the each")
        await edge.upsert_item("TEE-BLK-M", units={"case": 12}, safety_stock=2,
                               description="T-shirt black M")  # fmt: skip
        await edge.upsert_item("MUG-01", description="Mug")
        console.print("items: TEE-BLK-M (case = 12 each, safety stock 2), MUG-01")

        step("2. Receiving: 5 cases of T-shirts and 24 mugs against PO-1001")
        await edge.receive([("TEE-BLK-M", 5, "case"), ("MUG-01", 24)], reference="PO-1001")
        availability = await edge.get_availability(["TEE-BLK-M", "MUG-01"])
        console.print(_availability_table(list(availability.availability), "after receipt"))

        watched: list[str] = []
        watch_started = asyncio.Event()

        async def watch() -> None:
            async for change in edge.watch_availability(["TEE-BLK-M"]):
                watch_started.set()
                if not change.snapshot:
                    watched.append(
                        f"seq {change.availability.as_of_sequence}: available "
                        f"{change.availability.available}"
                    )

        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(watch_started.wait(), timeout=10)

        step("3. Reservations: a scanner holds 10 (hard), the web shop 20 (soft, 2 s TTL)")
        hard = await edge.reserve([("TEE-BLK-M", 10)], kind="hard", channel="store",
                                  reference="ORDER-A")  # fmt: skip
        soft_request_id = str(uuid.uuid4())
        soft = await edge.reserve([("TEE-BLK-M", 20)], ttl_seconds=2, channel="web",
                                  customer_tier="gold", reference="ORDER-B",
                                  request_id=soft_request_id)  # fmt: skip
        console.print(f"hard {hard.reservation.reservation_id[:8]}…  soft "
                      f"{soft.reservation.reservation_id[:8]}… (expires in 2 s)")  # fmt: skip

        step("4. The network hiccups: the web shop retries with the same request_id")
        retry = await edge.reserve([("TEE-BLK-M", 20)], ttl_seconds=2, channel="web",
                                   customer_tier="gold", reference="ORDER-B",
                                   request_id=soft_request_id)  # fmt: skip
        same = retry.reservation.reservation_id == soft.reservation.reservation_id
        unchanged = retry.as_of_sequence == soft.as_of_sequence
        console.print(f"same reservation returned: [bold]{same}[/bold]; "
                      f"ledger sequence unchanged: {unchanged}")  # fmt: skip

        step("5. An oversell is refused, and the reply says what was available")
        try:
            await edge.reserve([("TEE-BLK-M", 40)], reference="ORDER-C")
        except StockdError as error:
            console.print(f"[red]{error.code.name} {error.reason}[/red]: {error.message} "
                          f"(metadata {dict(error.metadata)})")  # fmt: skip

        step("6. The picker picks order A")
        picked = await edge.pick(hard.reservation.reservation_id, [("TEE-BLK-M", 10)])
        console.print(f"reservation state: "
                      f"{common_pb2.ReservationState.Name(picked.reservation.state)}")  # fmt: skip

        step("7. Nobody pays for order B: its soft reservation expires")

        async def expired() -> bool:
            found = await edge.get_reservation(soft.reservation.reservation_id)
            return found.reservation.state == common_pb2.RESERVATION_STATE_EXPIRED

        await _wait_until(expired, 15, "the soft reservation to expire")
        console.print("reservation state: RESERVATION_STATE_EXPIRED (released by the sweeper)")

        step("8. A cycle count finds 45 T-shirts where the ledger says 50")
        count = await edge.record_count("TEE-BLK-M", 45, reason="cycle count aisle 3")
        console.print(f"variance: {count.variance}")
        availability = await edge.get_availability(["TEE-BLK-M", "MUG-01"])
        console.print(_availability_table(list(availability.availability), "final balances"))

        async def seen_all() -> bool:
            return len(watched) >= 5

        await _wait_until(seen_all, 10, "the availability stream")
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        console.print("[bold]live availability stream (WatchAvailability) saw:[/bold]")
        for line in watched:
            console.print(f"  {line}")

        step("9. The audit trail (ListEvents)")
        events = await edge.list_events(page_size=50)
        table = Table(title=f"ledger of {SITE}")
        for column in ("seq", "type", "sku", "qty", "actor", "reason / reference"):
            table.add_column(column)
        for event in events.events:
            table.add_row(
                str(event.sequence),
                common_pb2.EventType.Name(event.type).removeprefix("EVENT_TYPE_"),
                event.sku,
                str(event.quantity),
                event.actor,
                event.reason or event.reference,
            )
        console.print(table)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="stockd-demo-") as directory:
        work = Path(directory)
        step("starting an edge agent (SQLite WAL ledger, gRPC on loopback)")
        process, port = _start_agent(work)
        console.print(f"edge agent {SITE} pid {process.pid} on 127.0.0.1:{port}, db {work}/edge.db")
        try:
            asyncio.run(scenario(port))
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        console.rule("[bold green]demo finished: agent stopped cleanly"
                     if process.returncode == 0 else "[bold red]agent exit code "
                     f"{process.returncode}")  # fmt: skip
        return 0 if process.returncode == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
