"""Proves the benchmark harness still runs end to end and writes its fixed shape.

It runs ``python -m bench`` as a real process (as ``make bench`` does) with
warnings as errors, for the cases that need no stockd server, with runs far
too short to mean anything: the point is that the harness cannot rot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

_REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
_CONCURRENCY_LEVELS = (1, 4)
_HARNESS_TIMEOUT_SECONDS = 25


def _run_harness(output_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable, "-W", "error", "-m", "bench",
        "--duration", "0.5",
        "--warmup", "0.1",
        "--concurrency", ",".join(str(level) for level in _CONCURRENCY_LEVELS),
        "--output", str(output_path),
        "--work-dir", str(output_path.parent),
        *arguments,
    ]  # fmt: skip
    return subprocess.run(
        argv,
        cwd=_REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=_HARNESS_TIMEOUT_SECONDS,
        check=False,
    )


def _assert_run_shape(run: dict[str, Any]) -> None:
    assert {"params", "ops_per_s", "p50_ms", "p99_ms"} <= run.keys()
    assert isinstance(run["params"], dict)
    assert isinstance(run["params"]["concurrency"], int)
    for key in ("ops_per_s", "p50_ms", "p99_ms"):
        assert isinstance(run[key], float), (key, run[key])
    assert run["ops_per_s"] > 0
    assert 0 < run["p50_ms"] <= run["p99_ms"]


def test_harness_writes_results_for_echo_and_sqlite(tmp_path: Path) -> None:
    output_path = tmp_path / "results.json"

    completed = _run_harness(output_path, "--cases", "grpc_echo,sqlite_commit")

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Warning" not in completed.stderr, completed.stderr
    results = json.loads(output_path.read_text(encoding="utf-8"))
    assert set(results) == {"grpc_echo", "sqlite_commit"}
    for runs in results.values():
        assert isinstance(runs, list)
        for run in runs:
            _assert_run_shape(run)
    echo_levels = [run["params"]["concurrency"] for run in results["grpc_echo"]]
    assert echo_levels == list(_CONCURRENCY_LEVELS)
    assert all(run["errors"] == 0 for run in results["grpc_echo"])
    rows_per_commit = [run["params"]["rows_per_commit"] for run in results["sqlite_commit"]]
    assert rows_per_commit == [1, 100]
    assert "grpc_echo" in completed.stdout  # the table


def test_harness_rejects_an_unknown_case(tmp_path: Path) -> None:
    output_path = tmp_path / "results.json"

    completed = _run_harness(output_path, "--cases", "no_such_case")

    assert completed.returncode == 2
    assert "no_such_case" in completed.stderr
    assert not output_path.exists()
