"""Case name -> case function, in the order the harness runs them.

Adding a case is one module in ``bench/cases`` with an ``async def
run(context) -> list[Run]`` and one line here. A case that uses another as its
baseline comes after it, so the baseline is measured once and reused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.cases import (
    edge_reserve,
    grpc_echo,
    hub_atp,
    hub_atp_batch,
    hub_promise,
    nats_publish,
    sqlite_commit,
    sync_catchup,
    sync_lag,
)
from bench.context import CaseContext
from bench.results import Run

CaseFunction = Callable[[CaseContext], Awaitable[list[Run]]]

CASES: dict[str, CaseFunction] = {
    grpc_echo.CASE_NAME: grpc_echo.run,
    sqlite_commit.CASE_NAME: sqlite_commit.run,
    edge_reserve.CASE_NAME: edge_reserve.run,
    nats_publish.CASE_NAME: nats_publish.run,
    sync_lag.CASE_NAME: sync_lag.run,
    sync_catchup.CASE_NAME: sync_catchup.run,
    hub_atp.CASE_NAME: hub_atp.run,
    hub_atp_batch.CASE_NAME: hub_atp_batch.run,
    hub_promise.CASE_NAME: hub_promise.run,
}
