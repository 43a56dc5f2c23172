"""A hub loaded with a large catalogue, shared by hub_atp, hub_atp_batch and hub_promise.

Seeding: 100,000 SKUs over 50 sites would take millions of ledger events
through edges and NATS; instead the hub's SQLite database is written
directly, before the hub starts, with the product's own storage code
(``sqlite_store.initialise``/``write`` with ``HubRows`` of ``SiteState`` and
``SiteBalance``, and ``promise_store`` rows for items, sites and a pool), in
transactions of ``BALANCES_PER_TRANSACTION`` rows. Each SKU is stocked at a
random subset of sites, ``SITES_PER_SKU_MEAN`` on average (so about 1,000,000
site balances for the full catalogue), each with a hub share above zero, so
ATP has something to promise everywhere. Every site's ``last_applied_ms`` is
the seeding time.

Two extra SKUs serve hub_promise: ``HOT_SKU``, stocked at ``HOT_SITES``
sites with a hub share no run can exhaust, and ``SELLOUT_SKU``, with a small
share that 64 callers sell out to prove nothing is promised twice.

The database is seeded once per harness run (cached per settings object and
catalogue size) in a directory under ``--work-dir``; the last hub case of the
run removes it (and an ``atexit`` hook does, should the run be interrupted).
Each case starts its own nats-server and hub process on it, so every case
measures a cold start and stops every process in a ``finally``. Only
hub_promise changes the database (promises, ``hub_reserved``), and it runs
last and reads the state before and after itself.

Staleness: no edge feeds the hub during the bench, so the seeded sites' data
would pass the hub's default 60 s staleness bound in the middle of a full run
and answers would take the flagged-stale path (explanations per stale site),
which is not the steady state of a fed hub. The hub is started with a config
file raising ``atp.stale_after_ms`` to ``STALE_AFTER_MS``, and answers are
checked not to be stale before anything is measured.

Catalogue size comes from ``STOCKD_BENCH_HUB_SKUS`` and
``STOCKD_BENCH_HUB_SITES`` (defaults 100,000 and 50), so a smoke test can use
a tiny one. ``STOCKD_BENCH_HUB_CACHE_ENTRIES`` sets the hub's
``[atp] cache_entries`` (0: no answer reuse, to measure the engine alone).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.cases.nats_publish import nats_server
from bench.channels import describe_error, open_channel, raw_unary
from bench.config import CALL_TIMEOUT_SECONDS, PORT_FILE_POLL_SECONDS, BenchConfig
from bench.context import CaseContext
from bench.environment import scratch_directory
from bench.errors import ServerStartError, TargetError
from bench.loadgen import Call, closed_loop
from bench.processes import log_tail, stop_process
from bench.results import ParamValue, Run, make_run
from hub.adapters import promise_store, sqlite_store
from hub.domain.catalog import HubItem, Pool, Site, SiteType
from hub.domain.view import SiteBalance, SiteState
from server.storage.sqlite import connect
from stockd.v1 import atp_pb2

# The cases that share the seeded database, in registry order.
HUB_CASES = ("hub_atp", "hub_atp_batch", "hub_promise")

SKUS_ENV = "STOCKD_BENCH_HUB_SKUS"
CACHE_ENTRIES_ENV = "STOCKD_BENCH_HUB_CACHE_ENTRIES"
CACHE_ENTRIES_LIMITS = (0, 10_000_000)
SITES_ENV = "STOCKD_BENCH_HUB_SITES"
SKUS_DEFAULT = 100_000
SITES_DEFAULT = 50
SKUS_LIMITS = (100, 1_000_000)
SITES_LIMITS = (2, 500)
# Sites per SKU are uniform on 1 .. 2 * mean - 1 (capped at the site count).
SITES_PER_SKU_MEAN = 10
BALANCES_PER_TRANSACTION = 100_000
# Fixed, so two runs load the same catalogue and ask for the same SKUs.
RANDOM_SEED = 20_240_917

ZIPF_EXPONENT = 1.1
# Requests are drawn and serialized before the load, then cycled.
ZIPF_SAMPLES = 65_536

CHANNEL = "web"
POOL_ID = "network"
HOT_SKU = "HOT-PROMO"
SELLOUT_SKU = "HOT-SELLOUT"
HOT_SITES = 10
# Far more than any run can promise one unit at a time.
HOT_SHARE_PER_SITE = 1_000_000_000
SELLOUT_SHARE_PER_SITE = 50

STALE_AFTER_MS = 24 * 3600 * 1000
# Loading a million balances takes a while; a hub that is not serving after
# this long is reported as failed to start.
HUB_START_TIMEOUT_SECONDS = 300.0
ANSWER_CHECK_SAMPLES = 200

_REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
_ATP_SERVICE = atp_pb2.DESCRIPTOR.services_by_name["HubAtpService"]
CHECK_METHOD_PATH = f"/{_ATP_SERVICE.full_name}/CheckAvailability"
PROMISE_METHOD_PATH = f"/{_ATP_SERVICE.full_name}/Promise"
_PORT_MAX = 65535


# ----- the catalogue ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CatalogueSize:
    skus: int
    sites: int

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> CatalogueSize:
        """Reads the size from the environment.

        Raises:
            ValueError: A variable is not an integer inside its limits.
        """
        env = os.environ if environ is None else environ
        return cls(
            skus=_bounded_int(env, SKUS_ENV, SKUS_DEFAULT, SKUS_LIMITS),
            sites=_bounded_int(env, SITES_ENV, SITES_DEFAULT, SITES_LIMITS),
        )


def answer_cache_entries(environ: Mapping[str, str] | None = None) -> int | None:
    """``[atp] cache_entries`` for the hub from ``STOCKD_BENCH_HUB_CACHE_ENTRIES``
    (0 measures the engine without answer reuse); None keeps the hub's default."""
    env = os.environ if environ is None else environ
    if CACHE_ENTRIES_ENV not in env:
        return None
    return _bounded_int(env, CACHE_ENTRIES_ENV, 0, CACHE_ENTRIES_LIMITS)


def _bounded_int(env: Mapping[str, str], name: str, default: int, limits: tuple[int, int]) -> int:
    text = env.get(name)
    if text is None:
        return default
    value = int(text)
    low, high = limits
    if not low <= value <= high:
        raise ValueError(f"{name}={value}: must be {low} to {high}")
    return value


def sku_code(index: int) -> str:
    """Zero-padded, so code order is index order (the primary key's order)."""
    return f"SKU{index:07d}"


def site_code(index: int) -> str:
    return f"S{index:03d}"


@dataclass(frozen=True, slots=True)
class SeededCatalogue:
    """A hub database ready to start a hub on.

    Attributes:
        directory: Where the database and the hub's config file live.
        size: SKUs and sites.
        site_balances: Rows in ``site_balances`` (the two hot SKUs included).
        seed_seconds: How long seeding took (the harness's cost, not the hub's).
    """

    directory: Path
    size: CatalogueSize
    site_balances: int
    seed_seconds: float

    @property
    def db_path(self) -> Path:
        return self.directory / "hub.db"

    @property
    def config_path(self) -> Path:
        return self.directory / "hub.toml"

    def params(self) -> dict[str, ParamValue]:
        return {
            "skus": self.size.skus,
            "sites": self.size.sites,
            "site_balances": self.site_balances,
        }


def _sites_per_sku(size: CatalogueSize, rng: random.Random) -> list[list[int]]:
    """Per site, the sorted indexes of the SKUs stocked there."""
    mean = min(SITES_PER_SKU_MEAN, size.sites)
    most = min(size.sites, 2 * mean - 1)
    sites = range(size.sites)
    per_site: list[list[int]] = [[] for _ in sites]
    for sku in range(size.skus):
        for site in rng.sample(sites, rng.randint(1, most)):
            per_site[site].append(sku)
    return per_site


def _balance(site_id: str, sku: str, sellable: int, hub_share: int, sequence: int) -> SiteBalance:
    """A balance keeping the escrow invariant: local + hub <= sellable - safety stock."""
    safety = sellable // 10
    return SiteBalance(
        site_id=site_id,
        sku=sku,
        sellable=sellable,
        total=sellable,
        local_share=sellable - safety - hub_share,
        hub_share=hub_share,
        as_of_sequence=sequence,
    )


def seed_database(directory: Path, size: CatalogueSize, now_ms: int) -> int:
    """Writes the whole catalogue into ``directory / "hub.db"``; returns the balance count.

    Blocking (a few seconds for the full catalogue): run it in a thread.
    """
    rng = random.Random(RANDOM_SEED)
    per_site = _sites_per_sku(size, rng)
    site_ids = [site_code(index) for index in range(size.sites)]
    hot_sites = set(site_ids[: min(HOT_SITES, size.sites)])
    connection = connect(directory / "hub.db")
    try:
        sqlite_store.initialise(connection)
        catalog_rows = [promise_store.item_row(HubItem(sku_code(i))) for i in range(size.skus)]
        catalog_rows += [
            promise_store.item_row(HubItem(HOT_SKU)),
            promise_store.item_row(HubItem(SELLOUT_SKU)),
            promise_store.pool_row(Pool(POOL_ID, tuple(site_ids), (CHANNEL,))),
        ]
        catalog_rows += [
            promise_store.site_row(
                Site(site_id, SiteType.DC if index % 5 == 0 else SiteType.STORE, index % 3)
            )
            for index, site_id in enumerate(site_ids)
        ]
        sqlite_store.write(connection, sqlite_store.HubRows(catalog=catalog_rows))
        states: list[SiteState] = []
        chunk: list[SiteBalance] = []
        written = 0
        for site_index, site_id in enumerate(site_ids):
            sequence = 0
            # Site by site and in SKU order: the primary key's order, so
            # SQLite appends to its B-tree instead of splitting pages at random.
            extra: list[tuple[str, int]] = []
            if site_id in hot_sites:
                extra = [(HOT_SKU, HOT_SHARE_PER_SITE), (SELLOUT_SKU, SELLOUT_SHARE_PER_SITE)]
            for sku, share in extra:
                sequence += 1
                chunk.append(_balance(site_id, sku, 2 * share, share, sequence))
            for sku_index in per_site[site_index]:
                sequence += 1
                # A deterministic spread of 20 to 499 units, 40% of it the hub's.
                sellable = 20 + (104_729 * sku_index + 7_919 * site_index) % 480
                chunk.append(
                    _balance(site_id, sku_code(sku_index), sellable, sellable * 2 // 5, sequence)
                )
                if len(chunk) >= BALANCES_PER_TRANSACTION:
                    sqlite_store.write(connection, sqlite_store.HubRows(balances=chunk))
                    written += len(chunk)
                    chunk = []
            states.append(
                SiteState(
                    site_id,
                    applied_sequence=sequence,
                    last_event_ms=now_ms,
                    last_applied_ms=now_ms,
                    known_sequence=sequence,
                )
            )
        sqlite_store.write(connection, sqlite_store.HubRows(sites=states, balances=chunk))
        written += len(chunk)
    finally:
        connection.close()
    cache_entries = answer_cache_entries()
    (directory / "hub.toml").write_text(
        f"[atp]\nstale_after_ms = {STALE_AFTER_MS}\n"
        + (f"cache_entries = {cache_entries}\n" if cache_entries is not None else ""),
        encoding="utf-8",
    )
    return written


# Seeded catalogues of this process, by (settings object, size).
_SEEDED: dict[tuple[BenchConfig, CatalogueSize], SeededCatalogue] = {}


def _remove(entry: SeededCatalogue) -> None:
    shutil.rmtree(entry.directory, ignore_errors=True)


async def _seed(context: CaseContext, size: CatalogueSize) -> SeededCatalogue:
    key = (context.config, size)
    found = _SEEDED.get(key)
    if found is not None and found.db_path.exists():
        return found
    directory = Path(tempfile.mkdtemp(prefix="stockd-bench-hub-", dir=context.config.work_dir))
    entry = SeededCatalogue(directory, size, 0, 0.0)
    # Should the run stop before the last hub case, the directory still goes.
    atexit.register(_remove, entry)
    context.console.print(
        f"seeding hub database: {size.skus:,} SKUs over {size.sites} sites in {directory}",
        markup=False,
    )
    started = time.perf_counter()
    try:
        balances = await asyncio.to_thread(
            seed_database, directory, size, time.time_ns() // 1_000_000
        )
    except BaseException:
        _remove(entry)
        raise
    seeded = SeededCatalogue(directory, size, balances, time.perf_counter() - started)
    size_mb = seeded.db_path.stat().st_size / 1e6
    context.console.print(
        f"seeded {balances:,} site balances in {seeded.seed_seconds:.1f} s ({size_mb:,.0f} MB)",
        markup=False,
    )
    _SEEDED[key] = seeded
    return seeded


def _last_hub_case(config: BenchConfig, case: str) -> bool:
    selected = [name for name in config.cases if name in HUB_CASES]
    return not selected or selected[-1] == case


@contextlib.asynccontextmanager
async def seeded_catalogue(context: CaseContext, case: str) -> AsyncIterator[SeededCatalogue]:
    """The seeded database of this run, seeding it on first use.

    The last hub case of the run removes it on the way out, whatever happened.

    Raises:
        TargetError: The catalogue size in the environment is invalid.
    """
    assert case in HUB_CASES, case
    try:
        size = CatalogueSize.from_environment()
    except ValueError as error:
        raise TargetError("environment", "catalogue size", str(error)) from None
    try:
        yield await _seed(context, size)
    finally:
        if _last_hub_case(context.config, case):
            entry = _SEEDED.pop((context.config, size), None)
            if entry is not None:
                _remove(entry)


# ----- the hub process ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HubProcess:
    """A serving hub and what its start cost.

    Attributes:
        channel: Connected to the hub; shared by every caller.
        target: Its host:port.
        pid: Its process id.
        port_seconds: From spawn until its port file appeared.
        cold_start_seconds: From spawn until the first CheckAvailability answer.
        rss_mb: Its resident memory (VmRSS) right after that answer.
        rss_peak_mb: Its peak resident memory (VmHWM) by then.
    """

    channel: grpc.aio.Channel
    target: str
    pid: int
    port_seconds: float
    cold_start_seconds: float
    rss_mb: float
    rss_peak_mb: float
    # ATP answer reuse over the hub's life ("hits", "misses"), read from its
    # log once it has stopped.
    answer_cache: dict[str, int] = field(default_factory=dict)

    def params(self) -> dict[str, ParamValue]:
        return {
            "rss_mb": round(self.rss_mb, 1),
            "rss_peak_mb": round(self.rss_peak_mb, 1),
            "cold_start_s": round(self.cold_start_seconds, 2),
        }

    def memory_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) now."""
        return read_memory_mb(self.pid)


def read_memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB from /proc; (-1, -1) where there is none."""
    values = {"VmRSS:": -1.0, "VmHWM:": -1.0}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                fields = line.split()  # "VmRSS:", "123456", "kB"
                if fields and fields[0] in values:
                    values[fields[0]] = int(fields[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return values["VmRSS:"], values["VmHWM:"]


def _read_port(port_file: Path) -> int | None:
    """The port in the file, or None while there is none (the hub writes it by rename)."""
    try:
        text = port_file.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) <= _PORT_MAX else None


async def _wait_for_port(
    process: asyncio.subprocess.Process, argv: list[str], port_file: Path, log_path: Path
) -> int:
    """Polls the port file (written whole, by rename) until the hub serves or gives up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HUB_START_TIMEOUT_SECONDS
    while True:
        if process.returncode is not None:
            raise ServerStartError(
                argv, f"exited with code {process.returncode} before serving", log_tail(log_path)
            )
        port = _read_port(port_file)
        if port is not None:
            return port
        if loop.time() > deadline:
            raise ServerStartError(
                argv,
                f"no port in {port_file} after {HUB_START_TIMEOUT_SECONDS:.0f} s",
                log_tail(log_path),
            )
        await asyncio.sleep(PORT_FILE_POLL_SECONDS)


async def _first_answer(channel: grpc.aio.Channel, target: str, request: bytes) -> None:
    """Returns once CheckAvailability answers OK (the view and catalogue are loaded)."""
    check = raw_unary(channel, CHECK_METHOD_PATH)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HUB_START_TIMEOUT_SECONDS
    while True:
        try:
            await check(request, timeout=CALL_TIMEOUT_SECONDS)
            return
        except grpc.aio.AioRpcError as error:
            if loop.time() > deadline:
                detail = describe_error(error)
                raise TargetError(target, "first CheckAvailability", detail) from None
        await asyncio.sleep(PORT_FILE_POLL_SECONDS)


@contextlib.asynccontextmanager
async def hub_process(
    context: CaseContext, seeded: SeededCatalogue, case: str
) -> AsyncIterator[HubProcess]:
    """A nats-server and a hub on the seeded database; both stopped on the way out.

    Cold start is timed from spawning the hub until it has written its port
    file and answered a CheckAvailability; the memory is read then.

    Raises:
        ServerStartError: NATS or the hub did not start.
        TargetError: The hub did not answer.
    """
    probe = check_request([sku_code(0)])
    with scratch_directory(context.config) as scratch:
        async with nats_server(scratch / "nats") as nats:
            port_file = scratch / "hub.port"
            log_path = scratch / "hub.log"
            argv = [
                sys.executable, "-m", "hub",
                "--db", str(seeded.db_path),
                "--config", str(seeded.config_path),
                "--nats", nats.url,
                "--listen", "127.0.0.1:0",
                "--port-file", str(port_file),
            ]  # fmt: skip
            with log_path.open("wb") as log:
                started = time.perf_counter()
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=_REPOSITORY_ROOT,
                )
            hub: HubProcess | None = None
            try:
                port = await _wait_for_port(process, argv, port_file, log_path)
                port_seconds = time.perf_counter() - started
                target = f"127.0.0.1:{port}"
                async with open_channel(target) as channel:
                    await _first_answer(channel, target, probe)
                    cold_start_seconds = time.perf_counter() - started
                    rss_mb, rss_peak_mb = read_memory_mb(process.pid)
                    hub = HubProcess(
                        channel, target, process.pid, port_seconds, cold_start_seconds,
                        rss_mb, rss_peak_mb,
                    )  # fmt: skip
                    context.console.print(
                        f"{case}: hub cold start {cold_start_seconds:.2f} s (port file after "
                        f"{port_seconds:.2f} s), RSS {rss_mb:,.0f} MB (peak "
                        f"{rss_peak_mb:,.0f} MB) with {seeded.site_balances:,} site balances",
                        markup=False,
                    )
                    yield hub
            finally:
                await stop_process(process)
                if hub is not None:
                    hub.answer_cache.update(read_answer_cache(log_path))


def read_answer_cache(log_path: Path) -> dict[str, int]:
    """The hub's answer-cache counters from the line it logs when it stops ({} if absent)."""
    with contextlib.suppress(OSError):
        for line in reversed(log_path.read_text(errors="replace").splitlines()):
            if '"atp_answer_cache"' in line:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    data = json.loads(line)
                    return {"hits": int(data["hits"]), "misses": int(data["misses"])}
    return {}


def with_answer_cache(runs: list[Run], hub: HubProcess) -> list[Run]:
    """Adds the share of lines answered by reuse (over the hub's whole life in
    the case: warm-up and every level) to each run's params."""
    hits, misses = hub.answer_cache.get("hits", 0), hub.answer_cache.get("misses", 0)
    entries = answer_cache_entries()
    for run in runs:
        if entries is not None:
            run["params"]["answer_cache_entries"] = entries
        if hits + misses:
            run["params"]["answer_reuse_ratio"] = round(hits / (hits + misses), 3)
    return runs


# ----- requests and load -----------------------------------------------------------------


def zipf_sku_indexes(skus: int, samples: int, seed: int = RANDOM_SEED) -> list[int]:
    """``samples`` SKU indexes, rank r drawn with weight 1 / r ** ZIPF_EXPONENT.

    Ranks are mapped to SKUs through a fixed shuffle, so the popular SKUs are
    spread over the catalogue (and over sites) rather than being the first ones.
    """
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(rank**-ZIPF_EXPONENT for rank in range(1, skus + 1)))
    ranks = rng.choices(range(skus), cum_weights=cumulative, k=samples)
    by_rank = list(range(skus))
    rng.shuffle(by_rank)
    return [by_rank[rank] for rank in ranks]


def check_request(skus: Sequence[str]) -> bytes:
    """A serialized CheckAvailabilityRequest, one line of quantity 1 per SKU."""
    return atp_pb2.CheckAvailabilityRequest(
        lines=[
            atp_pb2.AtpLine(line_id=str(index), sku=sku, quantity=1)
            for index, sku in enumerate(skus)
        ],
        channel=CHANNEL,
    ).SerializeToString()


def check_requests(skus: int, lines_per_request: int, count: int) -> list[bytes]:
    """``count`` requests of ``lines_per_request`` distinct Zipf-chosen SKUs each."""
    draws = itertools.cycle(zipf_sku_indexes(skus, max(ZIPF_SAMPLES, count * lines_per_request)))
    requests: list[bytes] = []
    for _ in range(count):
        chosen: dict[int, None] = {}
        while len(chosen) < min(lines_per_request, skus):
            chosen[next(draws)] = None
        requests.append(check_request([sku_code(index) for index in chosen]))
    return requests


async def check_answers(hub: HubProcess, requests: Sequence[bytes]) -> None:
    """Parses a sample of answers: every line answered, stock found, nothing stale.

    Raises:
        TargetError: An answer is not what the seeded catalogue implies.
    """
    check = raw_unary(hub.channel, CHECK_METHOD_PATH)
    lines = stocked = stale = 0
    for request in requests[:ANSWER_CHECK_SAMPLES]:
        try:
            reply = await check(request, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise TargetError(hub.target, "CheckAvailability", describe_error(error)) from None
        asked = atp_pb2.CheckAvailabilityRequest.FromString(request)
        answer = atp_pb2.CheckAvailabilityResponse.FromString(reply)
        if len(answer.lines) != len(asked.lines):
            raise TargetError(
                hub.target,
                "CheckAvailability",
                f"{len(answer.lines)} lines answered of {len(asked.lines)}",
            )
        lines += len(answer.lines)
        stocked += sum(1 for line in answer.lines if line.available_now > 0)
        stale += sum(1 for line in answer.lines if line.stale)
    if stale or stocked < lines:
        raise TargetError(
            hub.target,
            "CheckAvailability",
            f"of {lines} sampled lines {stocked} show stock and {stale} are stale; "
            "every seeded SKU has a fresh hub share",
        )


@dataclass
class CallTally:
    """Outcomes of every call of a load, warm-up and overrun included."""

    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)


def unary_load(
    hub: HubProcess, method_path: str, next_request: Callable[[], bytes], tally: CallTally
) -> Call:
    """A closed-loop call sending ``next_request()`` and never parsing the reply."""
    method = raw_unary(hub.channel, method_path)

    async def call() -> bool:
        try:
            await method(next_request(), timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            tally.errors[describe_error(error)] += 1
            return False
        tally.ok += 1
        return True

    return call


def cycle(requests: Sequence[bytes]) -> Callable[[], bytes]:
    """The next pre-serialized request, round and round."""
    iterator: Iterator[bytes] = itertools.cycle(requests)
    return iterator.__next__


async def run_levels(
    context: CaseContext,
    case: str,
    hub: HubProcess,
    call: Call,
    tally: CallTally,
    params: Mapping[str, ParamValue],
    operations_per_call: int = 1,
    concurrency_levels: Sequence[int] | None = None,
) -> list[Run]:
    """One closed-loop run per concurrency level; operations = calls x ``operations_per_call``.

    Raises:
        TargetError: No call of a run succeeded.
    """
    config = context.config
    runs: list[Run] = []
    for concurrency in concurrency_levels or config.concurrency_levels:
        tally.errors.clear()
        result = await closed_loop(
            call, concurrency, config.warmup_seconds, config.duration_seconds
        )
        run = make_run(
            {"concurrency": concurrency, **params},
            result.completed * operations_per_call,
            result.window_ns,
            result.latencies_ns,
        )
        run["errors"] = result.errors
        for description, count in tally.errors.most_common(3):
            context.console.print(
                f"{case} concurrency={concurrency}: {count} x {description} (warm-up included)",
                markup=False,
            )
        if result.completed == 0:
            detail = tally.errors.most_common(1)[0][0] if tally.errors else "no reply"
            raise TargetError(hub.target, f"{case} at concurrency {concurrency}", detail)
        context.report_run(case, run)
        runs.append(run)
    return runs
