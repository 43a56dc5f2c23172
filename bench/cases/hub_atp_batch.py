"""hub_atp_batch: 20-line CheckAvailability calls (an order's lines in one call).

Same hub and catalogue as hub_atp, each call asking about 20 distinct
Zipf-chosen SKUs. ``ops_per_s`` counts LINES answered per second (calls x 20);
p50/p99 are per call. The baseline is hub_atp (one line per call) at the same
concurrency, from this harness run or, when it did not run, measured on the
same hub just before: the ratio is how much batching multiplies the lines a
hub answers (target: at least 10).
"""

from __future__ import annotations

from bench.cases import _hub_fixture as fixture
from bench.cases import hub_atp
from bench.context import CaseContext
from bench.results import Run, with_baseline

CASE_NAME = "hub_atp_batch"
LINES_PER_REQUEST = 20
# Distinct requests drawn before the load and cycled.
REQUESTS = 8192


async def run(context: CaseContext) -> list[Run]:
    """Seeds (once per harness run), starts a hub and measures 20-line calls."""
    baselines = {
        int(measured["params"]["concurrency"]): measured["ops_per_s"]
        for measured in context.results.get(hub_atp.CASE_NAME, [])
    }
    async with (
        fixture.seeded_catalogue(context, CASE_NAME) as seeded,
        fixture.hub_process(context, seeded, CASE_NAME) as hub,
    ):
        levels = context.config.concurrency_levels
        missing = [level for level in levels if level not in baselines]
        if missing:
            single = await hub_atp.measure_single_line(
                context, hub, seeded, concurrency_levels=missing
            )
            for measured in single:
                baselines[int(measured["params"]["concurrency"])] = measured["ops_per_s"]
        requests = fixture.check_requests(seeded.size.skus, LINES_PER_REQUEST, REQUESTS)
        await fixture.check_answers(hub, requests)
        tally = fixture.CallTally()
        call = fixture.unary_load(hub, fixture.CHECK_METHOD_PATH, fixture.cycle(requests), tally)
        runs = await fixture.run_levels(
            context,
            CASE_NAME,
            hub,
            call,
            tally,
            {
                "lines_per_request": LINES_PER_REQUEST,
                "ops": "lines",
                "zipf_s": fixture.ZIPF_EXPONENT,
                **seeded.params(),
                **hub.params(),
            },
            operations_per_call=LINES_PER_REQUEST,
        )
    runs = fixture.with_answer_cache(runs, hub)
    return [
        with_baseline(
            measured, hub_atp.CASE_NAME, baselines[int(measured["params"]["concurrency"])]
        )
        for measured in runs
    ]
