"""Proves every hub RPC survives hostile input, as the edge's do (same request
strategies and the same judgement, from tests/fuzz/test_fuzz_rpcs.py): the hub
answers OK or a proper stockd error status, and an error (or any read) changes
nothing: promises, decisions and the seeded sites' balances are byte-for-byte
the same afterwards.

The hub runs as a real process on a real nats-server, on a database seeded
with the bench's own code (a small catalogue: items, two sites, a pool and
balances with hub share). No edge runs, so nothing changes the hub's state
behind the test's back; promise TTLs are drawn from values that cannot expire
during the test (or are invalid), for the same reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from bench.cases import _hub_fixture as seeded
from server.domain import limits
from server.sync.nats_server import NatsServer
from stockd.v1 import atp_pb2, atp_pb2_grpc, hub_pb2, hub_pb2_grpc
from tests.fuzz.test_fuzz_rpcs import (
    CALL_TIMEOUT_SECONDS,
    ODD_STRINGS,
    check_call,
    fuzz_settings,
    message,
)
from tests.integration.sync_helpers import HubProcess, ProcessGroup, new_id

SERVICES: Final[dict[str, ServiceDescriptor]] = {
    "HubAtpService": atp_pb2.DESCRIPTOR.services_by_name["HubAtpService"],
    "HubAdminService": atp_pb2.DESCRIPTOR.services_by_name["HubAdminService"],
    "HubInventoryService": hub_pb2.DESCRIPTOR.services_by_name["HubInventoryService"],
}
UNARY_RPCS: Final = tuple(
    sorted(
        (service, method.name)
        for service, descriptor in SERVICES.items()
        for method in descriptor.methods
        if not method.server_streaming
    )
)
READS: Final = frozenset(
    {"CheckAvailability", "GetPromise", "ListPromises", "ListDecisions", "ListSites",
     "GetSiteBalances"}
)  # fmt: skip
EXAMPLES_PER_RPC: Final = 30
SKUS: Final = 20
SITES: Final = 2
# Valid TTLs far beyond the test (0 is the default), and invalid ones.
TTLS: Final = (0, 3600, limits.TTL_SECONDS_MAX, -1, limits.TTL_SECONDS_MAX + 1, 2**31 - 1)


def known_strings(field: FieldDescriptor, promise_id: str) -> list[str]:
    name = field.name
    if "sku" in name:
        return [seeded.sku_code(0), seeded.sku_code(1), seeded.HOT_SKU, "Z"]
    if "site" in name:
        return [seeded.site_code(0), seeded.site_code(1), "S9"]
    if name == "promise_id":
        return [promise_id, "unknown-promise"]
    if name == "pool_id":
        return [seeded.POOL_ID, "no-pool"]
    if name == "channel":
        return [seeded.CHANNEL, "store"]
    if "unit" in name:
        return ["", "each", "case"]
    if name == "page_token":
        return ["", "bm90LWEtdG9rZW4", "!!!"]
    return ["A", *ODD_STRINGS[:3]]


@contextmanager
def stubs(hub: HubProcess) -> Iterator[dict[str, Any]]:
    channel = grpc.insecure_channel(hub.target)
    try:
        yield {
            "HubAtpService": atp_pb2_grpc.HubAtpServiceStub(channel),
            "HubAdminService": atp_pb2_grpc.HubAdminServiceStub(channel),
            "HubInventoryService": hub_pb2_grpc.HubInventoryServiceStub(channel),
        }
    finally:
        channel.close()


def state(stub: dict[str, Any]) -> tuple[bytes, ...]:
    """What a refused call must leave untouched (sync ages and times excluded)."""
    timeout = CALL_TIMEOUT_SECONDS
    atp, inventory = stub["HubAtpService"], stub["HubInventoryService"]
    promises = atp.ListPromises(atp_pb2.ListPromisesRequest(page_size=1000), timeout=timeout)
    decisions = atp.ListDecisions(atp_pb2.ListDecisionsRequest(page_size=1000), timeout=timeout)
    balances = [
        inventory.GetSiteBalances(
            hub_pb2.GetSiteBalancesRequest(site_id=seeded.site_code(index), page_size=1000),
            timeout=timeout,
        ).balances
        for index in range(SITES)
    ]
    return (
        promises.SerializeToString(deterministic=True),
        decisions.SerializeToString(deterministic=True),
        *(b"".join(b.SerializeToString(deterministic=True) for b in site) for site in balances),
    )


def fuzz_unary(hub: HubProcess, promise_id: str, service: str, rpc: str) -> None:
    """Runs in a worker thread: Hypothesis drives blocking calls to the hub."""
    request_type = SERVICES[service].methods_by_name[rpc].input_type
    known = lambda field: known_strings(field, promise_id)  # noqa: E731
    overrides = {"ttl_seconds": st.sampled_from(TTLS)}
    with stubs(hub) as stub:
        method = getattr(stub[service], rpc)

        @fuzz_settings(EXAMPLES_PER_RPC)
        @given(message(request_type, known, overrides=overrides))
        def property_holds(request: Message) -> None:
            check_call(
                rpc,
                lambda: method(request, timeout=CALL_TIMEOUT_SECONDS),
                request,
                lambda: state(stub),
                mutating=rpc not in READS,
            )

        property_holds()


@pytest.fixture
async def seeded_hub(tmp_path: Path) -> Any:
    """A hub on a seeded database and a nats-server; one held promise to aim at."""
    work_dir = tmp_path / "hub"
    work_dir.mkdir()
    size = seeded.CatalogueSize(SKUS, SITES)
    await asyncio.to_thread(seeded.seed_database, work_dir, size, time.time_ns() // 1_000_000)
    nats = NatsServer(tmp_path / "nats")
    try:
        await nats.start()
        async with ProcessGroup(work_dir) as group:
            hub = await group.hub(nats.url)
            assert hub.db_path == work_dir / "hub.db"
            with stubs(hub) as stub:
                promise = (
                    stub["HubAtpService"]
                    .Promise(
                        atp_pb2.PromiseRequest(
                            request_id=new_id(),
                            lines=[atp_pb2.AtpLine(line_id="1", sku=seeded.HOT_SKU, quantity=3)],
                            channel=seeded.CHANNEL,
                            ttl_seconds=3600,
                        ),
                        timeout=CALL_TIMEOUT_SECONDS,
                    )
                    .promise
                )
            yield hub, promise.promise_id
    finally:
        await nats.stop()


@pytest.mark.parametrize(("service", "rpc"), UNARY_RPCS, ids=[rpc for _s, rpc in UNARY_RPCS])
async def test_every_hub_rpc_answers_ok_or_a_proper_error_and_errors_change_nothing(
    seeded_hub: tuple[HubProcess, str], service: str, rpc: str
) -> None:
    hub, promise_id = seeded_hub
    await asyncio.to_thread(fuzz_unary, hub, promise_id, service, rpc)


# ----- the bug this fuzzing found, one minimal input ---------------------------------------


def _after_beyond_int64(hub: HubProcess) -> list[grpc.StatusCode]:
    codes: list[grpc.StatusCode] = []
    with stubs(hub) as stub:
        atp = stub["HubAtpService"]
        calls: tuple[Callable[[], object], ...] = (
            lambda: atp.ListDecisions(
                atp_pb2.ListDecisionsRequest(after_decision_id=2**64 - 1),
                timeout=CALL_TIMEOUT_SECONDS,
            ),
            lambda: next(
                iter(
                    atp.WatchDecisions(
                        atp_pb2.WatchDecisionsRequest(after_decision_id=2**64 - 1),
                        timeout=CALL_TIMEOUT_SECONDS,
                    )
                )
            ),
        )
        for call in calls:
            try:
                call()
            except grpc.RpcError as error:
                codes.append(error.code())
            else:
                codes.append(grpc.StatusCode.OK)
    return codes


async def test_decisions_after_an_id_beyond_int64_are_invalid_argument(
    seeded_hub: tuple[HubProcess, str],
) -> None:
    """Was INTERNAL: the uint64 reached SQLite (OverflowError)."""
    hub, _promise_id = seeded_hub
    codes = await asyncio.to_thread(_after_beyond_int64, hub)
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 2
