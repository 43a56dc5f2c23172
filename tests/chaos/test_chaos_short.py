"""Proves, under real crashes and partitions, that no acknowledged unit is lost,
applied twice or promised twice: a short chaos run (at least 5,000 operations
and 20 faults: kill -9 of edges, of the hub and of nats-server, edges cut off,
black-holed, slowed and reset) ends with every invariant of
`tests.chaos.invariants` holding. Part of `make test`; `pytest -m chaos` runs
it alone, `make chaos CHAOS_SECONDS=N` runs the long soak."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Final

import pytest

from tests.chaos.harness import NOT_TRAFFIC, ChaosConfig
from tests.chaos.runner import run_chaos

SEED: Final = int(os.environ.get("CHAOS_SEED", "20261123"))
OPERATIONS_MIN: Final = 5_000
FAULTS_MIN: Final = 20
# The traffic phase ends once both minimums are met (and not before this)...
TRAFFIC_SECONDS_MIN: Final = 60.0
# ...or at this bound, which the minimums must fit in with slack on a busy box.
TRAFFIC_SECONDS_MAX: Final = 140.0
OPERATIONS_PER_SECOND: Final = 70.0
FAULT_INTERVAL_SECONDS: Final = 2.5
SETTLE_TIMEOUT_SECONDS: Final = 150.0


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_short_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    config = ChaosConfig(
        seed=SEED,
        work_dir=tmp_path / "chaos",
        traffic_seconds=TRAFFIC_SECONDS_MAX,
        min_seconds=TRAFFIC_SECONDS_MIN,
        operations_target=OPERATIONS_MIN,
        faults_target=FAULTS_MIN,
        operations_per_second=OPERATIONS_PER_SECOND,
        fault_interval_seconds=FAULT_INTERVAL_SECONDS,
        replays_per_site_max=200,
        settle_timeout_seconds=SETTLE_TIMEOUT_SECONDS,
        rerun=f"CHAOS_SEED={SEED} .venv/bin/python -m pytest -m chaos tests/chaos -s",
    )
    report = await run_chaos(config)
    rendered = report.render()
    print(rendered)
    if report.violations:
        # pytest rotates tmp_path away; keep the logs, databases and history.
        kept = Path(tempfile.gettempdir()) / f"stockd-chaos-failed-{SEED}-{time.time_ns()}"
        shutil.copytree(config.work_dir, kept, ignore_dangling_symlinks=True)
        rendered += f"\nevidence kept in {kept}"
    assert not report.violations, rendered
    traffic = sum(
        count for (kind, _outcome), count in report.operations.items() if kind not in NOT_TRAFFIC
    )
    assert traffic >= OPERATIONS_MIN, rendered
    assert report.faults_total >= FAULTS_MIN, rendered
    assert len(report.faults) >= 5, f"too few fault kinds exercised:\n{rendered}"
