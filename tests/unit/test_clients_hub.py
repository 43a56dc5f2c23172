"""Proves the hub SDK and ``stockctl hub`` against a scripted in-process hub.

The fake HubInventoryService reuses the scripted edge fake's recording and
dispatch (test_clients_sdk), so the tests see what crossed the wire: one
request_id across the retries of a grant or recall, the same stored reply
for a replayed request_id, page tokens followed, errors decoded from
google.rpc.Status. The edge's GetSyncStatus and ``stockctl sync-status`` are
proved here too, against the edge fake.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2
from typer.testing import CliRunner, Result

from clients import HubClient
from clients.cli import app
from clients.edge import EdgeClient
from clients.errors import StockdError
from stockd.v1 import common_pb2, edge_pb2, hub_pb2
from tests.unit.test_clients_sdk import (
    Behaviour,
    FakeEdge,
    abort_with_details,
    serving,
    unavailable_then,
)

HUB_SERVICE = "stockd.v1.HubInventoryService"

# Wide enough that rich never wraps a cell the assertions look for; no
# target, token or timeout leaks in from the developer's shell.
CLEAN_ENV: dict[str, str | None] = {
    "COLUMNS": "250",
    "STOCKD_TARGET": None,
    "STOCKD_HUB_TARGET": None,
    "STOCKD_TOKEN": None,
    "STOCKD_TIMEOUT": None,
}


@dataclass
class FakeHub(FakeEdge):
    """Scripted HubInventoryService; every hub RPC is unary.

    Attributes:
        target: Where the ``hub`` fixture serves it.
    """

    target: str = ""

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        service = hub_pb2.DESCRIPTOR.services_by_name["HubInventoryService"]
        handlers = {
            method.name: grpc.unary_unary_rpc_method_handler(
                self._dispatch(method.name),
                request_deserializer=getattr(hub_pb2, method.input_type.name).FromString,
                response_serializer=getattr(hub_pb2, method.output_type.name).SerializeToString,
            )
            for method in service.methods
        }
        return grpc.method_handlers_generic_handler(HUB_SERVICE, handlers)


@dataclass
class StoredReplies:
    """The hub's idempotency rule: a request_id seen before gets its stored reply."""

    answer: Behaviour
    replies: dict[str, Message] = field(default_factory=dict)

    def __call__(self, request: Any, context: grpc.ServicerContext) -> Message:
        if request.request_id not in self.replies:
            self.replies[request.request_id] = self.answer(request, context)
        return self.replies[request.request_id]


def site_status(site_id: str = "S1", **fields: Any) -> hub_pb2.SiteSyncStatus:
    return hub_pb2.SiteSyncStatus(site_id=site_id, **fields)


def site_balance(sku: str, site_id: str = "S1", **fields: Any) -> hub_pb2.SiteBalance:
    return hub_pb2.SiteBalance(site_id=site_id, sku=sku, **fields)


def numbered_grants() -> Behaviour:
    """Answers each grant with the next command number, so a replay is visible."""
    numbers = itertools.count(1)

    def behave(request: Any, context: grpc.ServicerContext) -> hub_pb2.GrantQuotaResponse:
        return hub_pb2.GrantQuotaResponse(
            command_sequence=next(numbers),
            balance=site_balance(request.sku, request.site_id, in_flight=request.quantity),
        )

    return behave


def unknown_site(request: Any, context: grpc.ServicerContext) -> None:
    abort_with_details(
        context,
        code_pb2.NOT_FOUND,
        f"the hub has not heard from site {request.site_id!r}",
        "ERROR_REASON_UNKNOWN_SITE",
        {"site_id": request.site_id},
    )


def balances_in_pages(skus: list[str], page_size_max: int = 2) -> Behaviour:
    """Serves a site's SKUs in order, at most ``page_size_max`` a page (also the default).

    A page token is the index of the next SKU; each page's status has a
    data age of that index plus one, so a test can tell pages apart.
    """

    def behave(request: Any, context: grpc.ServicerContext) -> hub_pb2.GetSiteBalancesResponse:
        first = int(request.page_token or "0")
        after = first + min(request.page_size or page_size_max, page_size_max)
        return hub_pb2.GetSiteBalancesResponse(
            balances=[
                site_balance(sku, request.site_id, as_of_sequence=40) for sku in skus[first:after]
            ],
            status=site_status(request.site_id, data_age_ms=first + 1),
            next_page_token=str(after) if after < len(skus) else "",
        )

    return behave


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    with serving(fake) as address:
        fake.target = address
        yield fake


# -- SDK: retries and replays ----------------------------------------------------------


async def test_grant_retries_unavailable_with_the_same_request_id(hub: FakeHub) -> None:
    hub.behaviours["GrantQuota"] = unavailable_then(
        2, hub_pb2.GrantQuotaResponse(command_sequence=7, balance=site_balance("A", in_flight=5))
    )
    async with HubClient(hub.target) as client:
        response = await client.grant_quota("S1", "A", 5)
    assert (response.command_sequence, response.balance.in_flight) == (7, 5)
    requests = hub.requests("GrantQuota")
    assert len(requests) == 3
    assert {(request.site_id, request.sku, request.quantity) for request in requests} == {
        ("S1", "A", 5)
    }
    request_ids = {request.request_id for request in requests}
    assert len(request_ids) == 1
    uuid.UUID(request_ids.pop())


async def test_a_replayed_grant_gets_the_stored_reply(hub: FakeHub) -> None:
    hub.behaviours["GrantQuota"] = StoredReplies(numbered_grants())
    async with HubClient(hub.target) as client:
        first = await client.grant_quota("S1", "A", 5, request_id="grant-1")
        replay = await client.grant_quota("S1", "A", 5, request_id="grant-1")
        other = await client.grant_quota("S1", "A", 5)
    assert replay == first
    assert other.command_sequence != first.command_sequence
    assert [request.request_id for request in hub.requests("GrantQuota")][:2] == ["grant-1"] * 2


async def test_recall_keeps_its_request_id_when_retries_run_out(hub: FakeHub) -> None:
    hub.behaviours["RecallQuota"] = unavailable_then(100, hub_pb2.RecallQuotaResponse())
    async with HubClient(hub.target, max_retries=2) as client:
        with pytest.raises(StockdError) as caught:
            await client.recall_quota("S1", "A", 3, request_id="recall-1")
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert caught.value.request_id == "recall-1"
    assert caught.value.retryable
    assert [request.request_id for request in hub.requests("RecallQuota")] == ["recall-1"] * 3


async def test_a_replayed_recall_gets_the_stored_reply(hub: FakeHub) -> None:
    commands = iter(range(1, 100))
    hub.behaviours["RecallQuota"] = StoredReplies(
        lambda request, context: hub_pb2.RecallQuotaResponse(command_sequence=next(commands))
    )
    async with HubClient(hub.target) as client:
        first = await client.recall_quota("S1", "A", 3, request_id="recall-2")
        replay = await client.recall_quota("S1", "A", 3, request_id="recall-2")
    assert first.command_sequence == replay.command_sequence == 1
    (request, _) = hub.requests("RecallQuota")
    assert (request.site_id, request.sku, request.quantity) == ("S1", "A", 3)


async def test_refusals_are_not_retried_and_keep_their_details(hub: FakeHub) -> None:
    def short(request: Any, context: grpc.ServicerContext) -> None:
        abort_with_details(
            context,
            code_pb2.FAILED_PRECONDITION,
            "the hub holds 2 of 'A' at 'S1'; cannot grant 5",
            "ERROR_REASON_INSUFFICIENT_STOCK",
            {"site_id": "S1", "sku": "A", "requested": "5", "available": "2"},
        )

    hub.behaviours["GrantQuota"] = short
    async with HubClient(hub.target) as client:
        with pytest.raises(StockdError) as caught:
            await client.grant_quota("S1", "A", 5, request_id="grant-2")
    error = caught.value
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason_value == common_pb2.ERROR_REASON_INSUFFICIENT_STOCK
    assert (error.metadata["requested"], error.metadata["available"]) == ("5", "2")
    assert error.request_id == "grant-2"
    assert not error.retryable
    assert len(hub.requests("GrantQuota")) == 1


async def test_a_misspelt_option_fails_before_the_network(hub: FakeHub) -> None:
    async with HubClient(hub.target) as client:
        with pytest.raises(TypeError, match="requestid"):
            await client.grant_quota("S1", "A", 5, requestid="grant-3")  # type: ignore[call-arg]
    assert hub.received == []


async def test_a_closed_hub_client_refuses_calls(hub: FakeHub) -> None:
    client = HubClient(hub.target)
    await client.close()
    with pytest.raises(RuntimeError, match="HubClient is closed"):
        await client.list_sites()


def test_hub_constructor_validates_limits() -> None:
    with pytest.raises(ValueError, match="timeout_seconds"):
        HubClient("127.0.0.1:1", timeout_seconds=0)
    with pytest.raises(ValueError, match="max_retries"):
        HubClient("127.0.0.1:1", max_retries=-1)


# -- SDK: reads --------------------------------------------------------------------------


async def test_list_sites_sends_the_token_and_returns_every_site(hub: FakeHub) -> None:
    hub.behaviours["ListSites"] = lambda request, context: hub_pb2.ListSitesResponse(
        sites=[site_status("S1", applied_sequence=40), site_status("S2", repairing=True)]
    )
    async with HubClient(hub.target, token="s3cret") as client:
        response = await client.list_sites()
    assert [(site.site_id, site.applied_sequence) for site in response.sites] == [
        ("S1", 40),
        ("S2", 0),
    ]
    assert hub.received[0].metadata["authorization"] == "Bearer s3cret"


async def test_site_balances_of_named_skus(hub: FakeHub) -> None:
    hub.behaviours["GetSiteBalances"] = lambda request, context: hub_pb2.GetSiteBalancesResponse(
        balances=[site_balance(sku, request.site_id, hub_share=9) for sku in request.skus],
        status=site_status(request.site_id, data_age_ms=1500),
    )
    async with HubClient(hub.target) as client:
        response = await client.get_site_balances("S1", ["A", "B"])
        with pytest.raises(TypeError, match="not a string"):
            await client.get_site_balances("S1", "AB")
    assert [(balance.sku, balance.hub_share) for balance in response.balances] == [
        ("A", 9),
        ("B", 9),
    ]
    assert response.status.data_age_ms == 1500
    (request,) = hub.requests("GetSiteBalances")
    assert (request.site_id, list(request.skus)) == ("S1", ["A", "B"])


async def test_an_unknown_site_is_not_found(hub: FakeHub) -> None:
    hub.behaviours["GetSiteBalances"] = unknown_site
    async with HubClient(hub.target) as client:
        with pytest.raises(StockdError) as caught:
            await client.get_site_balances("S9")
    assert caught.value.code is grpc.StatusCode.NOT_FOUND
    assert caught.value.reason_value == common_pb2.ERROR_REASON_UNKNOWN_SITE
    assert caught.value.metadata == {"site_id": "S9"}
    assert caught.value.request_id is None


async def test_iterate_site_balances_follows_page_tokens(hub: FakeHub) -> None:
    hub.behaviours["GetSiteBalances"] = balances_in_pages(["A", "B", "C", "D", "E"])
    async with HubClient(hub.target) as client:
        every = [balance.sku async for balance in client.iterate_site_balances("S1")]
        first_three = [balance.sku async for balance in client.iterate_site_balances("S1", limit=3)]
    assert every == ["A", "B", "C", "D", "E"]
    assert first_three == ["A", "B", "C"]
    requests = hub.requests("GetSiteBalances")
    assert [request.page_token for request in requests[:3]] == ["", "2", "4"]
    # With a limit, no page asks for more than is still wanted.
    assert [request.page_size for request in requests[3:]] == [3, 1]
    assert all(request.site_id == "S1" for request in requests)


# -- SDK: the edge's sync status ----------------------------------------------------------------


def sync_status_response() -> edge_pb2.GetSyncStatusResponse:
    return edge_pb2.GetSyncStatusResponse(
        site_id="S1",
        hub_configured=True,
        connected=False,
        last_sequence=120,
        acknowledged_sequence=117,
        backlog_events=3,
        applied_command_sequence=9,
        last_error="nats: no servers available",
        last_acknowledged_at=timestamp_pb2.Timestamp(seconds=1_738_310_400),
    )


async def test_get_sync_status_retries_unavailable() -> None:
    edge = FakeEdge(behaviours={"GetSyncStatus": unavailable_then(1, sync_status_response())})
    with serving(edge) as address:
        async with EdgeClient(address) as client:
            response = await client.get_sync_status()
    assert (response.backlog_events, response.applied_command_sequence) == (3, 9)
    assert len(edge.requests("GetSyncStatus")) == 2


# -- stockctl hub ---------------------------------------------------------------------------


def run_hub(target: str, *args: str, options: tuple[str, ...] = ()) -> Result:
    """Runs ``stockctl [options] hub --target target args``."""
    return CliRunner().invoke(app, [*options, "hub", "--target", target, *args], env=CLEAN_ENV)


def test_sites_table_shows_how_current_each_site_is(hub: FakeHub) -> None:
    hub.behaviours["ListSites"] = lambda request, context: hub_pb2.ListSitesResponse(
        sites=[
            site_status("S1", applied_sequence=40, known_sequence=44, data_age_ms=1200),
            site_status("S2", drift_detected=1, repairing=True),
        ]
    )
    result = run_hub(hub.target, "sites", options=("--token", "tok"))
    assert result.exit_code == 0, result.output
    for heading in ("Applied sequence", "Known sequence", "Data age ms", "Repairing"):
        assert heading in result.stdout
    row = next(line for line in result.stdout.splitlines() if "S1" in line)
    assert [cell.strip() for cell in row.split("│")[1:6]] == ["S1", "40", "44", "0", "1200"]
    assert hub.received[0].metadata["authorization"] == "Bearer tok"


def test_balances_of_named_skus_as_json(hub: FakeHub) -> None:
    hub.behaviours["GetSiteBalances"] = lambda request, context: hub_pb2.GetSiteBalancesResponse(
        balances=[site_balance(sku, request.site_id, hub_share=9) for sku in request.skus],
        status=site_status(request.site_id, data_age_ms=1500),
    )
    result = run_hub(hub.target, "balances", "S1", "A", "B", options=("--json",))
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert [(row["sku"], row["hub_share"]) for row in printed["balances"]] == [
        ("A", "9"),
        ("B", "9"),
    ]
    assert printed["status"]["data_age_ms"] == "1500"
    (request,) = hub.requests("GetSiteBalances")
    assert (request.site_id, list(request.skus)) == ("S1", ["A", "B"])


def test_balances_of_every_sku_page_up_to_the_limit(hub: FakeHub) -> None:
    hub.behaviours["GetSiteBalances"] = balances_in_pages(["A", "B", "C", "D", "E"])
    result = run_hub(hub.target, "balances", "S1", "--limit", "3")
    assert result.exit_code == 0, result.output
    for heading in ("Local share", "Hub share", "In flight"):
        assert heading in result.stdout
    shown = [line.split("│")[1].strip() for line in result.stdout.splitlines() if "│" in line]
    assert shown == ["A", "B", "C"]
    assert "showing the first 3" in result.stderr
    # The caption speaks for the newest page fetched.
    assert "as of site ledger sequence 40; hub data 3 ms old" in result.stdout
    # One more than the limit, to know whether there is more.
    assert [request.page_size for request in hub.requests("GetSiteBalances")] == [4, 2]


def test_grant_prints_its_request_id_and_the_new_balance(hub: FakeHub) -> None:
    hub.behaviours["GrantQuota"] = lambda request, context: hub_pb2.GrantQuotaResponse(
        command_sequence=12,
        balance=site_balance(request.sku, request.site_id, hub_share=15, in_flight=5),
    )
    result = run_hub(hub.target, "grant", "S1", "A", "5")
    assert result.exit_code == 0, result.output
    (request,) = hub.requests("GrantQuota")
    assert (request.site_id, request.sku, request.quantity) == ("S1", "A", 5)
    assert f"request_id: {request.request_id}" in result.stderr
    assert "grant sent to site S1 as command 12" in result.stdout
    row = next(line for line in result.stdout.splitlines() if "│ A" in line)
    assert [cell.strip() for cell in row.split("│")[6:9]] == ["0", "15", "5"]


def test_recall_with_a_request_id_as_json(hub: FakeHub) -> None:
    hub.behaviours["RecallQuota"] = lambda request, context: hub_pb2.RecallQuotaResponse(
        command_sequence=13
    )
    result = run_hub(
        hub.target, "recall", "S1", "A", "3", "--request-id", "rid-5", options=("--json",)
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"command_sequence": "13"}
    assert "request_id: rid-5" in result.stderr
    (request,) = hub.requests("RecallQuota")
    assert (request.request_id, request.site_id, request.sku, request.quantity) == (
        "rid-5",
        "S1",
        "A",
        3,
    )


def test_an_unreachable_hub_says_the_request_id_is_safe_to_repeat(hub: FakeHub) -> None:
    hub.behaviours["RecallQuota"] = unavailable_then(10_000, hub_pb2.RecallQuotaResponse())
    result = run_hub(
        hub.target, "recall", "S1", "A", "3", "--request-id", "rid-6", options=("--timeout", "0.3")
    )
    assert result.exit_code == 1
    assert "--request-id rid-6 is safe" in result.stderr
    assert {request.request_id for request in hub.requests("RecallQuota")} == {"rid-6"}


def test_an_unknown_site_exits_1_with_one_error_line(hub: FakeHub) -> None:
    hub.behaviours["GetSiteBalances"] = unknown_site
    result = run_hub(hub.target, "balances", "S9")
    assert result.exit_code == 1
    assert "error: NOT_FOUND ERROR_REASON_UNKNOWN_SITE: the hub has not heard" in result.stderr
    assert "  site_id: S9" in result.stderr.splitlines()
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["grant", "S1", "A", "0"],
        ["grant", "S1", "A", "1.5"],
        ["recall", "S1", "A", "-2"],
        ["recall", "S1", "A"],
        ["balances"],
        ["balances", "S1", "--limit", "0"],
    ],
)
def test_bad_hub_usage_exits_2_without_calling_the_hub(hub: FakeHub, args: list[str]) -> None:
    result = run_hub(hub.target, *args)
    assert result.exit_code == 2, result.output
    assert hub.received == []


def test_the_hub_target_comes_from_its_own_option_or_variable(hub: FakeHub) -> None:
    hub.behaviours["ListSites"] = lambda request, context: hub_pb2.ListSitesResponse(
        sites=[site_status("S1")]
    )
    # The global --target names the edge agent and must not redirect hub calls.
    result = CliRunner().invoke(
        app,
        ["--target", "127.0.0.1:1", "--json", "hub", "sites"],
        env={**CLEAN_ENV, "STOCKD_HUB_TARGET": hub.target},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sites"][0]["site_id"] == "S1"
    assert len(hub.requests("ListSites")) == 1


# -- stockctl sync-status ---------------------------------------------------------------------


def test_sync_status_shows_the_backlog_and_the_last_error() -> None:
    edge = FakeEdge(behaviours={"GetSyncStatus": lambda request, context: sync_status_response()})
    with serving(edge) as address:
        table = CliRunner().invoke(app, ["--target", address, "sync-status"], env=CLEAN_ENV)
        printed = CliRunner().invoke(
            app, ["--target", address, "--json", "sync-status"], env=CLEAN_ENV
        )
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert any(line.split() == ["Backlog", "events", "3"] for line in lines)
    assert any(line.split() == ["Connected", "no"] for line in lines)
    assert "nats: no servers available" in table.stdout
    assert "2025-01-31 08:00:00Z" in table.stdout
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout)["acknowledged_sequence"] == "117"
