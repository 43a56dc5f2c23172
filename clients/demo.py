"""`make demo`: the embedded default network, driven through a short story.

It starts, as separate processes on loopback: a NATS server (JetStream,
`sync_interval: always`), the hub, and two edge agents (SQLite ledgers). Then
it shows a warehouse day at WH-EAST (receipts in cases, hard and soft
reservations, a refused oversell with what was available, an idempotent
retry, a pick, a TTL expiry seen live, a cycle count), the hub's synced view,
escrow shares moving to the hub, an OMS availability check and promises, a
confirmed promise picked at the site, a count that breaks a promise and the
hub's re-sourcing decision, and a NATS outage the site does not notice.

Processes are started by module name, so this client imports nothing of the
servers (clients depend only on the generated stubs).
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
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

from clients.edge import EdgeClient
from clients.errors import StockdError
from clients.hub import HubClient
from stockd.v1 import atp_pb2, atp_pb2_grpc, common_pb2

console = Console()

EAST, WEST = "WH-EAST", "WH-WEST"
TOKEN = "demo-operator-token"
START_TIMEOUT_SECONDS = 30.0
WAIT_TIMEOUT_SECONDS = 20.0
METADATA = (("authorization", f"Bearer {TOKEN}"),)


class Process:
    """A server process started by module name, waited for by its port file."""

    def __init__(self, name: str, work: Path, module: str, arguments: Sequence[str]) -> None:
        self.name = name
        self.work = work
        self.module = module
        self.arguments = list(arguments)
        self.port_file = work / f"{name}.port"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> int:
        self.port_file.unlink(missing_ok=True)
        log = (self.work / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                *self.arguments,
                "--port-file",
                str(self.port_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{self.name} did not start; see {self.work / self.name}.log")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        return self.port

    def stop(self) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


async def wait_until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_SECONDS
    while not await predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def step(text: str) -> None:
    console.rule(f"[bold cyan]{text}")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    result = Table(title=title)
    for index, column in enumerate(columns):
        result.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        result.add_row(*(str(cell) for cell in row))
    return result


async def availability_rows(edge: EdgeClient, skus: Sequence[str]) -> list[list[object]]:
    response = await edge.get_availability(list(skus))
    return [
        [a.sku, a.on_hand_sellable, a.reserved_soft, a.reserved_hard, a.safety_stock,
         a.local_share, f"[bold]{a.available}[/bold]"]
        for a in response.availability
    ]  # fmt: skip


AVAILABILITY_COLUMNS = ("sku", "on hand", "soft", "hard", "safety", "local share", "available")


async def warehouse_day(east: EdgeClient) -> None:
    step("1. WH-EAST item master: T-shirts come in cases of 12, mugs by the each")
    await east.upsert_item("TEE-BLK-M", units={"case": 12}, safety_stock=2, description="T-shirt")
    await east.upsert_item("MUG-01", description="Mug")

    step("2. Receiving 5 cases of T-shirts and 24 mugs against PO-1001")
    await east.receive([("TEE-BLK-M", 5, "case"), ("MUG-01", 24)], reference="PO-1001")
    rows = await availability_rows(east, ["TEE-BLK-M", "MUG-01"])
    console.print(table("WH-EAST after receipt", AVAILABILITY_COLUMNS, rows))

    watched: list[str] = []
    watch_started = asyncio.Event()

    async def watch() -> None:
        async for change in east.watch_availability(["TEE-BLK-M"]):
            watch_started.set()
            if not change.snapshot:
                watched.append(
                    f"seq {change.availability.as_of_sequence}: available "
                    f"{change.availability.available}"
                )

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(watch_started.wait(), timeout=10)

    step("3. A scanner holds 10 (hard); the web shop holds 20 (soft, 2 s TTL)")
    hard = await east.reserve([("TEE-BLK-M", 10)], kind="hard", channel="store",
                              reference="ORDER-A")  # fmt: skip
    soft_request_id = str(uuid.uuid4())
    soft = await east.reserve([("TEE-BLK-M", 20)], ttl_seconds=2, channel="web",
                              reference="ORDER-B", request_id=soft_request_id)  # fmt: skip

    step("4. The web shop's network hiccups: it retries with the same request_id")
    retry = await east.reserve([("TEE-BLK-M", 20)], ttl_seconds=2, channel="web",
                               reference="ORDER-B", request_id=soft_request_id)  # fmt: skip
    same = retry.reservation.reservation_id == soft.reservation.reservation_id
    unchanged = retry.as_of_sequence == soft.as_of_sequence
    console.print(f"same reservation: [bold]{same}[/bold]; ledger unchanged: {unchanged}")

    step("5. An oversell is refused, and the reply says what was available")
    try:
        await east.reserve([("TEE-BLK-M", 40)], reference="ORDER-C")
    except StockdError as error:
        console.print(f"[red]{error.code.name} {error.reason}[/red]: {error.message}")

    step("6. The picker picks order A; nobody pays for order B, so it expires")
    await east.pick(hard.reservation.reservation_id, [("TEE-BLK-M", 10)])

    async def expired() -> bool:
        found = await east.get_reservation(soft.reservation.reservation_id)
        return found.reservation.state == common_pb2.RESERVATION_STATE_EXPIRED

    await wait_until(expired, "the soft reservation to expire")
    console.print("order B: RESERVATION_STATE_EXPIRED (released by the sweeper)")

    step("7. A cycle count finds 45 T-shirts where the ledger says 50")
    count = await east.record_count("TEE-BLK-M", 45, reason="cycle count aisle 3")
    console.print(f"variance: {count.variance}")

    async def seen_all() -> bool:
        return len(watched) >= 5

    await wait_until(seen_all, "the availability stream")
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    console.print("live availability stream (WatchAvailability): " + "; ".join(watched))


async def network(east: EdgeClient, west: EdgeClient, hub: HubClient, hub_target: str) -> None:
    step("8. WH-WEST receives too; both ledgers sync to the hub over JetStream")
    await west.upsert_item("TEE-BLK-M", units={"case": 12}, safety_stock=2)
    await west.receive([("TEE-BLK-M", 4, "case")], reference="PO-2001")
    last = {EAST: 0, WEST: 0}
    for site, edge in ((EAST, east), (WEST, west)):
        last[site] = (await edge.get_sync_status()).last_sequence

    async def synced() -> bool:
        sites = {s.site_id: s for s in (await hub.list_sites()).sites}
        return all(site in sites and sites[site].applied_sequence >= last[site] for site in last)

    await wait_until(synced, "the hub to apply both ledgers")
    sites = (await hub.list_sites()).sites
    console.print(table(
        "hub: sync state", ("site", "applied seq", "sync lag ms", "data age ms"),
        [(s.site_id, s.applied_sequence, s.sync_lag_ms, s.data_age_ms) for s in sites],
    ))  # fmt: skip

    step("9. Escrow: the hub takes 20 T-shirts of each site's free share for the OMS")
    for site in (EAST, WEST):
        await hub.recall_quota(site, "TEE-BLK-M", 20)

    async def shared() -> bool:
        for site in (EAST, WEST):
            balances = (await hub.get_site_balances(site, ["TEE-BLK-M"])).balances
            if balances[0].hub_share < 20:
                return False
        return True

    await wait_until(shared, "the recalled share to reach the hub")
    rows = []
    for site in (EAST, WEST):
        b = (await hub.get_site_balances(site, ["TEE-BLK-M"])).balances[0]
        rows.append((site, b.on_hand_sellable, b.local_share, b.hub_share, b.hub_reserved))
    console.print(table(
        "hub: escrow per site (TEE-BLK-M)",
        ("site", "sellable", "local share", "hub share", "hub promised"), rows,
    ))  # fmt: skip

    async with grpc.aio.insecure_channel(hub_target) as channel:
        atp = atp_pb2_grpc.HubAtpServiceStub(channel)
        admin = atp_pb2_grpc.HubAdminServiceStub(channel)
        await admin.UpsertHubItem(atp_pb2.UpsertHubItemRequest(
            request_id=str(uuid.uuid4()),
            item=atp_pb2.HubItem(sku="TEE-BLK-M", units=[common_pb2.UnitConversion(
                unit="case", base_units_per_unit=12)]),
        ), metadata=METADATA)  # fmt: skip
        await admin.UpsertPool(atp_pb2.UpsertPoolRequest(
            request_id=str(uuid.uuid4()),
            pool=atp_pb2.Pool(pool_id="ecom", site_ids=[EAST, WEST], channels=["web"]),
        ), metadata=METADATA)  # fmt: skip
        await admin.SetPriorities(atp_pb2.SetPrioritiesRequest(
            request_id=str(uuid.uuid4()),
            channels=[atp_pb2.Priority(name="web", priority=10)],
            customer_tiers=[atp_pb2.Priority(name="gold", priority=5)],
        ), metadata=METADATA)  # fmt: skip

        step("10. The OMS asks: can I promise 2 cases of T-shirts, from where?")
        check = await atp.CheckAvailability(atp_pb2.CheckAvailabilityRequest(
            lines=[atp_pb2.AtpLine(line_id="1", sku="TEE-BLK-M", quantity=2, unit="case")],
            channel="web", customer_tier="gold", horizon_days=3,
        ), metadata=METADATA, timeout=2)  # fmt: skip
        line = check.lines[0]
        console.print(
            f"requested {line.requested}, promisable now [bold]{line.available_now}[/bold]"
        )
        console.print(table(
            "sourcing", ("site", "now", "by horizon", "lead days"),
            [(o.site_id, o.available_now, o.available_by_horizon, o.lead_time_days)
             for o in line.sourcing],
        ))  # fmt: skip
        console.print("explanations: " + "; ".join(
            f"{atp_pb2.ExplanationKind.Name(e.kind).removeprefix('EXPLANATION_KIND_')}"
            f"{' ' + e.site_id if e.site_id else ''} {e.quantity}"
            for e in line.explanations
        ))  # fmt: skip

        step("11. Two orders are promised: a gold customer's and a standard one")
        gold = await atp.Promise(atp_pb2.PromiseRequest(
            request_id=str(uuid.uuid4()), channel="web", customer_tier="gold",
            reference="OMS-GOLD", lines=[atp_pb2.AtpLine(line_id="1", sku="TEE-BLK-M",
                                                           quantity=18)],
        ), metadata=METADATA)  # fmt: skip
        standard = await atp.Promise(atp_pb2.PromiseRequest(
            request_id=str(uuid.uuid4()), channel="web", customer_tier="standard",
            reference="OMS-STD", lines=[atp_pb2.AtpLine(line_id="1", sku="TEE-BLK-M",
                                                          quantity=18)],
        ), metadata=METADATA)  # fmt: skip
        for name, promise in (("gold", gold.promise), ("standard", standard.promise)):
            where = ", ".join(f"{a.quantity} at {a.site_id}" for a in promise.lines[0].allocations)
            console.print(f"{name}: {where}")
        for promise in (gold.promise, standard.promise):
            await atp.ConfirmPromise(atp_pb2.ConfirmPromiseRequest(
                request_id=str(uuid.uuid4()), promise_id=promise.promise_id,
            ), metadata=METADATA)  # fmt: skip

        step("12. Confirmed promises become hard reservations the pickers see")
        gold_site = gold.promise.lines[0].allocations[0].site_id
        gold_edge = east if gold_site == EAST else west

        async def held_at_site() -> bool:
            listed = await gold_edge.list_reservations(state="open")
            return any(r.hub_promise_id == gold.promise.promise_id for r in listed.reservations)

        await wait_until(held_at_site, "the hub promise to reach the site")
        listed = await gold_edge.list_reservations(state="open")
        held = next(r for r in listed.reservations if r.hub_promise_id == gold.promise.promise_id)
        quantity = held.lines[0].quantity_held
        console.print(f"{gold_site}: reservation {held.reservation_id} holds {quantity} "
                      f"for promise {held.hub_promise_id[:8]}…")  # fmt: skip
        await gold_edge.pick(held.reservation_id, [("TEE-BLK-M", held.lines[0].quantity_held)])
        console.print(f"picked at {gold_site}: the hub's share there falls with it (rule 5)")

        step("13. A count at the site of the standard promise finds stock missing")
        standard_site = standard.promise.lines[0].allocations[0].site_id
        standard_edge = east if standard_site == EAST else west
        watch = atp.WatchDecisions(atp_pb2.WatchDecisionsRequest(), metadata=METADATA)
        await standard_edge.record_count("TEE-BLK-M", 10, reason="pallet damaged in transit")
        first = await asyncio.wait_for(watch.read(), WAIT_TIMEOUT_SECONDS)
        watch.cancel()
        assert isinstance(first, atp_pb2.WatchDecisionsResponse)
        decisions = await atp.ListDecisions(
            atp_pb2.ListDecisionsRequest(promise_id=first.decision.promise_id), metadata=METADATA
        )
        for decision in decisions.decisions:
            target = decision.to_site_id or "a backorder"
            console.print(
                f"hub decision: [bold]{atp_pb2.DecisionAction.Name(decision.action)}[/bold] "
                f"{decision.quantity} of promise {decision.promise_id[:8]}… from "
                f"{decision.from_site_id} to {target}"
            )
        console.print(f"why: {first.decision.reason}")


async def outage(east: EdgeClient, nats: Process) -> None:
    step("14. The WAN link drops: NATS is stopped, WH-EAST keeps serving")
    nats.stop()
    reply = await east.reserve([("MUG-01", 2)], kind="hard", reference="WALK-IN")
    status = await east.get_sync_status()
    console.print(
        f"reserve while offline: OK ({reply.reservation.reservation_id[:8]}…); sync connected: "
        f"{status.connected}, backlog {status.backlog_events} entries"
    )
    nats.start()

    async def drained() -> bool:
        current = await east.get_sync_status()
        return current.connected and current.backlog_events == 0

    await wait_until(drained, "the backlog to drain")
    console.print("NATS back: backlog drained, nothing lost")


async def audit(east: EdgeClient) -> None:
    step("15. The audit trail of WH-EAST (ListEvents)")
    events = await east.list_events(page_size=50)
    rows = [
        (e.sequence, common_pb2.EventType.Name(e.type).removeprefix("EVENT_TYPE_"), e.sku,
         e.quantity, e.local_share_delta, e.actor, e.reason or e.reference)
        for e in events.events
    ]  # fmt: skip
    console.print(table(
        f"ledger of {EAST}", ("seq", "type", "sku", "qty", "share Δ", "actor", "why"), rows
    ))  # fmt: skip


async def story(edges: dict[str, int], hub_port: int, nats: Process) -> None:
    async with (
        EdgeClient(f"127.0.0.1:{edges[EAST]}", token=TOKEN) as east,
        EdgeClient(f"127.0.0.1:{edges[WEST]}", token=TOKEN) as west,
        HubClient(f"127.0.0.1:{hub_port}", token=TOKEN) as hub,
    ):
        await warehouse_day(east)
        await network(east, west, hub, f"127.0.0.1:{hub_port}")
        await outage(east, nats)
        await audit(east)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="stockd-demo-") as directory:
        work = Path(directory)
        config = work / "stockd.toml"
        config.write_text(
            f'[tokens]\n"{TOKEN}" = "demo-operator"\n[sync]\nchecksum_interval_seconds = 2\n'
        )
        step("starting NATS (JetStream, sync_interval: always), the hub and two edge agents")
        nats = Process("nats", work, "server.sync", ["--work-dir", str(work / "nats")])
        processes: list[Process] = [nats]
        codes: dict[str, int | None] = {}
        try:
            nats.start()
            url = f"nats://127.0.0.1:{nats.port}"
            nats.arguments += ["--port", str(nats.port)]  # restart on the same port
            hub = Process("hub", work, "hub", [
                "--db", str(work / "hub.db"), "--nats", url, "--listen", "127.0.0.1:0",
                "--config", str(config), "--log-json"])  # fmt: skip
            processes.append(hub)
            hub.start()
            edges: dict[str, int] = {}
            for site in (EAST, WEST):
                edge = Process(site, work, "edge_agent", [
                    "--site", site, "--db", str(work / f"{site}.db"), "--listen", "127.0.0.1:0",
                    "--nats", url, "--config", str(config), "--log-json"])  # fmt: skip
                processes.append(edge)
                edges[site] = edge.start()
            console.print(f"NATS {url}; hub 127.0.0.1:{hub.port}; "
                          f"{EAST} 127.0.0.1:{edges[EAST]}; {WEST} 127.0.0.1:{edges[WEST]}; "
                          f"logs and databases in {work}")  # fmt: skip
            asyncio.run(story(edges, hub.port, nats))
        finally:
            for process in reversed(processes):
                codes[process.name] = process.stop()
        clean = all(code in (0, None) for code in codes.values())
        console.rule("[bold green]demo finished: every process stopped cleanly" if clean
                     else f"[bold red]exit codes {codes}")  # fmt: skip
        return 0 if clean else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
