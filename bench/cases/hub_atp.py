"""hub_atp: single-line CheckAvailability against a hub holding a large catalogue.

The hub is loaded with 100,000 SKUs over 50 sites (about 1,000,000 site
balances; see ``_hub_fixture``) and callers ask about one SKU each, chosen
Zipf-skewed (s = 1.1) over the whole catalogue, as an OMS checkout does. The
answer comes from the hub's in-memory view, so this is the ATP engine plus
gRPC; its ratio to grpc_echo at the same concurrency is the share of the
bare-RPC ceiling it keeps (target: at least 0.7 at 64 callers, p99 under
2 ms at 1 caller).

Every run also carries the hub's cold-start time (spawn until its port file
appears and a CheckAvailability answers) and its resident memory after
loading, in ``params``.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.cases import _hub_fixture as fixture
from bench.cases import grpc_echo
from bench.cases.edge_reserve import echo_baselines
from bench.context import CaseContext
from bench.results import Run, with_baseline

CASE_NAME = "hub_atp"
LINES_PER_REQUEST = 1


async def measure_single_line(
    context: CaseContext,
    hub: fixture.HubProcess,
    seeded: fixture.SeededCatalogue,
    case: str = CASE_NAME,
    concurrency_levels: Sequence[int] | None = None,
) -> list[Run]:
    """Measures one-line CheckAvailability at each concurrency (also hub_atp_batch's
    baseline when this case did not run)."""
    requests = fixture.check_requests(seeded.size.skus, LINES_PER_REQUEST, fixture.ZIPF_SAMPLES)
    await fixture.check_answers(hub, requests)
    tally = fixture.CallTally()
    call = fixture.unary_load(hub, fixture.CHECK_METHOD_PATH, fixture.cycle(requests), tally)
    return await fixture.run_levels(
        context,
        case,
        hub,
        call,
        tally,
        {
            "lines_per_request": LINES_PER_REQUEST,
            "zipf_s": fixture.ZIPF_EXPONENT,
            **seeded.params(),
            **hub.params(),
        },
        concurrency_levels=concurrency_levels,
    )


async def run(context: CaseContext) -> list[Run]:
    """Seeds (once per harness run), starts a hub, measures, then adds the echo baseline.

    A missing echo baseline is measured after the hub has stopped, so the two
    never compete for the machine.
    """
    async with (
        fixture.seeded_catalogue(context, CASE_NAME) as seeded,
        fixture.hub_process(context, seeded, CASE_NAME) as hub,
    ):
        runs = await measure_single_line(context, hub, seeded)
    runs = fixture.with_answer_cache(runs, hub)
    baselines = await echo_baselines(context)
    return [
        with_baseline(
            measured, grpc_echo.CASE_NAME, baselines[int(measured["params"]["concurrency"])]
        )
        for measured in runs
    ]
