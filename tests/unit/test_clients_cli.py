"""Proves stockctl's contract: what it sends, what it prints, and its exit codes.

Each test runs the real Typer app in-process against the scripted fake edge
server from test_clients_sdk: 0 on success, 1 when the server refuses (one
``error: CODE REASON: message`` line on stderr), 2 for bad usage, in which
case nothing reaches the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2
from typer.testing import CliRunner, Result

from clients.cli import app
from stockd.v1 import common_pb2, edge_pb2
from tests.unit.test_clients_sdk import (
    FakeEdge,
    abort_with_details,
    reservation_response,
    serving,
)

# Wide enough that rich never wraps a cell the assertions look for.
WIDE = {"COLUMNS": "250", "STOCKD_TARGET": None, "STOCKD_TOKEN": None, "STOCKD_TIMEOUT": None}


@pytest.fixture
def fake() -> FakeEdge:
    return FakeEdge()


@pytest.fixture
def target(fake: FakeEdge) -> Iterator[str]:
    with serving(fake) as address:
        yield address


def run(target: str, *args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(app, ["--target", target, *args], env={**WIDE, **(env or {})})


def test_reserve_sends_every_option_and_prints_json(fake: FakeEdge, target: str) -> None:
    fake.behaviours["Reserve"] = lambda request, context: reservation_response(request.request_id)
    result = run(
        target,
        "--json",
        "reserve",
        "A:5",
        "B:2:case",
        "--hard",
        "--ttl",
        "300",
        "--channel",
        "web",
        "--tier",
        "gold",
        "--reference",
        "ORDER1",
        "--partial",
        "--request-id",
        "rid-7",
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["reservation"]["reservation_id"] == "RES-1"
    assert printed["reservation"]["request_id"] == "rid-7"
    # Zero values are printed, so scripts need not guess what a missing key means.
    assert printed["reservation"]["lines"][0]["quantity_picked"] == "0"
    assert "request_id: rid-7" in result.stderr
    (request,) = fake.requests("Reserve")
    assert [(line.sku, line.quantity, line.unit) for line in request.lines] == [
        ("A", 5, ""),
        ("B", 2, "case"),
    ]
    assert request.kind == common_pb2.RESERVATION_KIND_HARD
    assert (request.ttl_seconds, request.channel, request.customer_tier) == (300, "web", "gold")
    assert (request.reference, request.allow_partial, request.request_id) == (
        "ORDER1",
        True,
        "rid-7",
    )


def test_mutating_commands_generate_and_print_a_request_id(fake: FakeEdge, target: str) -> None:
    fake.behaviours["Reserve"] = lambda request, context: reservation_response()
    result = run(target, "reserve", "A:5")
    assert result.exit_code == 0, result.output
    (request,) = fake.requests("Reserve")
    assert request.kind == common_pb2.RESERVATION_KIND_SOFT
    assert f"request_id: {request.request_id}" in result.stderr
    assert "RES-1" in result.stdout


def test_refusal_prints_one_error_line_with_details_and_exits_1(
    fake: FakeEdge, target: str
) -> None:
    def short(request: Any, context: grpc.ServicerContext) -> None:
        abort_with_details(
            context,
            code_pb2.FAILED_PRECONDITION,
            "not enough A",
            "ERROR_REASON_INSUFFICIENT_STOCK",
            {"sku": "A", "requested": "5", "available": "3"},
            violations=[("lines[0].quantity", "above available")],
        )

    fake.behaviours["Reserve"] = short
    result = run(target, "reserve", "A:5")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    error_at = next(index for index, line in enumerate(lines) if line.startswith("error: "))
    assert lines[error_at] == (
        "error: FAILED_PRECONDITION ERROR_REASON_INSUFFICIENT_STOCK: not enough A"
    )
    details = lines[error_at + 1 :]
    assert "  lines[0].quantity: above available" in details
    assert "  available: 3" in details
    assert "  sku: A" in details
    assert result.stdout == ""


def test_unreachable_server_says_the_request_id_is_safe_to_repeat(target: str) -> None:
    def down(request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")

    fake = FakeEdge(behaviours={"Receive": down})
    with serving(fake) as address:
        result = run(address, "--timeout", "0.3", "receive", "A:1", "--request-id", "rid-9")
    assert result.exit_code == 1
    assert "error: UNAVAILABLE: shutting down" in result.stderr
    assert "--request-id rid-9 is safe" in result.stderr
    assert {request.request_id for request in fake.requests("Receive")} == {"rid-9"}


@pytest.mark.parametrize(
    "args",
    [
        ["reserve", "A:x"],
        ["reserve", "A:5@bin"],
        ["reserve"],
        ["adjust", "A", "-3", "--reason-code", "stolen"],
        ["adjust", "A", "-3"],
        ["adjust", "A", "0", "--reason-code", "shrink"],
        ["status", "A", "2", "--to", "broken"],
        ["status", "A", "2"],
        ["transfer", "A", "5"],
        ["transfer", "A", "5", "--to", "B1", "--to-site", "S2"],
        ["count", "A", "-1"],
        ["events", "--since", "yesterday"],
        ["events", "--type", "teleported"],
        ["reservations", "--state", "lost"],
        ["item-upsert", "A", "--unit", "case"],
        ["receive", "A:1", "--status", "wet"],
    ],
)
def test_bad_usage_exits_2_without_calling_the_server(
    fake: FakeEdge, target: str, args: list[str]
) -> None:
    result = run(target, *args)
    assert result.exit_code == 2, result.output
    assert fake.received == []


def test_adjust_takes_a_negative_delta_and_friendly_enums(fake: FakeEdge, target: str) -> None:
    fake.behaviours["Adjust"] = lambda request, context: edge_pb2.AdjustResponse(
        events=[
            common_pb2.LedgerEvent(
                sequence=12,
                type=common_pb2.EVENT_TYPE_ADJUSTED,
                sku="A",
                quantity=-3,
                reason_code=common_pb2.ADJUSTMENT_REASON_SHRINK,
            )
        ],
        availability=common_pb2.SkuAvailability(sku="A", available=7, as_of_sequence=12),
    )
    result = run(
        target,
        "adjust",
        "A",
        "-3",
        "--reason-code",
        "shrink",
        "--location",
        "bin-1",
        "--status",
        "damaged",
        "--release-reservations",
        "--note",
        "dropped",
    )
    assert result.exit_code == 0, result.output
    (request,) = fake.requests("Adjust")
    assert (request.quantity_delta, request.reason_code) == (
        -3,
        common_pb2.ADJUSTMENT_REASON_SHRINK,
    )
    assert (request.location_id, request.status) == ("bin-1", common_pb2.STOCK_STATUS_DAMAGED)
    assert request.release_reservations
    assert request.reason == "dropped"
    assert "adjusted" in result.stdout
    assert "shrink" in result.stdout


def test_availability_table_shows_the_balance_columns(fake: FakeEdge, target: str) -> None:
    fake.behaviours["GetAvailability"] = lambda request, context: edge_pb2.GetAvailabilityResponse(
        availability=[
            common_pb2.SkuAvailability(
                sku=sku,
                on_hand_sellable=40,
                on_hand_total=45,
                reserved_soft=6,
                reserved_hard=2,
                safety_stock=3,
                local_share=37,
                available=29,
                as_of_sequence=88,
            )
            for sku in request.skus
        ],
        as_of_sequence=88,
    )
    result = run(target, "availability", "SKU-1", "SKU-2")
    assert result.exit_code == 0, result.output
    for heading in (
        "On hand sellable",
        "On hand total",
        "Reserved soft",
        "Reserved hard",
        "Safety stock",
        "Local share",
        "Available",
    ):
        assert heading in result.stdout
    row = next(line for line in result.stdout.splitlines() if "SKU-2" in line)
    assert [cell.strip() for cell in row.split("│")[2:9]] == [
        "40",
        "45",
        "6",
        "2",
        "3",
        "37",
        "29",
    ]
    assert "as of ledger sequence 88" in result.stdout
    assert list(fake.requests("GetAvailability")[0].skus) == ["SKU-1", "SKU-2"]


def test_user_text_is_shown_literally_not_as_markup(fake: FakeEdge, target: str) -> None:
    fake.behaviours["GetItem"] = lambda request, context: edge_pb2.GetItemResponse(
        item=common_pb2.Item(
            sku="A",
            description="[bold]odd[/] text",
            base_unit="each",
            units=[common_pb2.UnitConversion(unit="case", base_units_per_unit=12)],
        )
    )
    result = run(target, "item-get", "A")
    assert result.exit_code == 0, result.output
    assert "[bold]odd[/] text" in result.stdout
    assert "case=12" in result.stdout


def test_events_filters_and_limit(fake: FakeEdge, target: str) -> None:
    def events(request: Any, context: grpc.ServicerContext) -> edge_pb2.ListEventsResponse:
        return edge_pb2.ListEventsResponse(
            events=[
                common_pb2.LedgerEvent(sequence=number, type=common_pb2.EVENT_TYPE_RESERVED)
                for number in range(1, request.page_size + 1)
            ],
            next_page_token="more",
        )

    fake.behaviours["ListEvents"] = events
    result = run(
        target,
        "--json",
        "events",
        "--sku",
        "A",
        "--type",
        "reserved",
        "--type",
        "picked",
        "--since",
        "2025-01-31T08:00",
        "--after",
        "41",
        "--limit",
        "3",
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert [event["sequence"] for event in printed["events"]] == ["1", "2", "3"]
    assert "showing the first 3" in result.stderr
    (request,) = fake.requests("ListEvents")
    assert request.sku == "A"
    assert list(request.types) == [common_pb2.EVENT_TYPE_RESERVED, common_pb2.EVENT_TYPE_PICKED]
    assert request.since.ToJsonString() == "2025-01-31T08:00:00Z"
    assert request.after_sequence == 41
    # One more than the limit, to know whether there is more.
    assert request.page_size == 4


def test_transfer_to_another_site(fake: FakeEdge, target: str) -> None:
    fake.behaviours["Transfer"] = lambda request, context: edge_pb2.TransferResponse()
    result = run(target, "transfer", "A", "5", "--from", "bin-1", "--to-site", "S2")
    assert result.exit_code == 0, result.output
    (request,) = fake.requests("Transfer")
    assert (request.from_location_id, request.to_site_id, request.to_location_id) == (
        "bin-1",
        "S2",
        "",
    )


def test_pick_and_release_lines(fake: FakeEdge, target: str) -> None:
    fake.behaviours["Pick"] = lambda request, context: edge_pb2.PickResponse(
        reservation=reservation_response().reservation
    )
    fake.behaviours["Release"] = lambda request, context: edge_pb2.ReleaseResponse(
        reservation=reservation_response().reservation
    )
    picked = run(target, "pick", "RES-1", "A:2@bin-4", "B:1:case", "--release-remainder")
    released = run(target, "release", "RES-1")
    assert picked.exit_code == 0, picked.output
    assert released.exit_code == 0, released.output
    (pick,) = fake.requests("Pick")
    assert [(line.sku, line.quantity, line.unit, line.location_id) for line in pick.lines] == [
        ("A", 2, "", "bin-4"),
        ("B", 1, "case", ""),
    ]
    assert pick.release_remainder
    (release,) = fake.requests("Release")
    assert (release.reservation_id, list(release.lines)) == ("RES-1", [])


def test_watch_prints_json_lines(fake: FakeEdge, target: str) -> None:
    def watch(
        request: Any, context: grpc.ServicerContext
    ) -> Iterator[edge_pb2.WatchAvailabilityResponse]:
        for available in (5, 4):
            yield edge_pb2.WatchAvailabilityResponse(
                availability=common_pb2.SkuAvailability(sku="A", available=available),
                snapshot=available == 5,
            )

    fake.behaviours["WatchAvailability"] = watch
    result = run(target, "--json", "watch", "A", "--duration", "10")
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["snapshot"], line["availability"]["available"]) for line in printed] == [
        (True, "5"),
        (False, "4"),
    ]


def test_target_and_token_come_from_the_environment(fake: FakeEdge, target: str) -> None:
    fake.behaviours["GetReservation"] = lambda request, context: edge_pb2.GetReservationResponse(
        reservation=reservation_response().reservation
    )
    result = CliRunner().invoke(
        app,
        ["reservation", "RES-1"],
        env={**WIDE, "STOCKD_TARGET": target, "STOCKD_TOKEN": "tok"},
    )
    assert result.exit_code == 0, result.output
    assert "RES-1" in result.stdout
    assert fake.received[0].metadata["authorization"] == "Bearer tok"
