"""The results file: its fixed shape, how figures are computed and shown.

Shape: ``{"<case>": [<run>, ...]}``; each run has ``params`` (always with
``concurrency``), ``ops_per_s``, ``p50_ms`` and ``p99_ms``, and, where the case
is compared with another one measured in the same harness run, ``baseline``,
``baseline_ops_per_s`` and ``ratio``. Cases may add counters such as
``errors``. Nothing else goes at the top level, so readers can iterate it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NotRequired, TypedDict

from rich.console import Console
from rich.table import Table

ParamValue = int | float | str


class Run(TypedDict):
    """One measured run of a case at one set of parameters."""

    params: dict[str, ParamValue]
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    baseline: NotRequired[str]
    baseline_ops_per_s: NotRequired[float]
    ratio: NotRequired[float]
    errors: NotRequired[int]


Results = dict[str, list[Run]]


def percentile_ms(sorted_latencies_ns: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile in milliseconds; 0.0 when nothing was measured.

    Nearest rank rather than interpolation: the figure is a latency some call
    really had.
    """
    assert 0 < fraction <= 1, fraction
    if not sorted_latencies_ns:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_latencies_ns)))
    return sorted_latencies_ns[rank - 1] / 1e6


def make_run(
    params: Mapping[str, ParamValue],
    operations: int,
    window_ns: int,
    latencies_ns: Sequence[int],
) -> Run:
    """Builds a run from raw counts.

    Args:
        params: Parameters of the run; must include ``concurrency``.
        operations: Units of work completed in the window (calls, or rows).
        window_ns: Length of the measured window.
        latencies_ns: One latency per completed call or commit, in any order.
    """
    assert "concurrency" in params, params
    assert window_ns > 0, window_ns
    ordered = sorted(latencies_ns)
    return {
        "params": dict(params),
        "ops_per_s": round(operations / (window_ns / 1e9), 1),
        "p50_ms": round(percentile_ms(ordered, 0.50), 3),
        "p99_ms": round(percentile_ms(ordered, 0.99), 3),
    }


def with_baseline(run: Run, baseline_case: str, baseline_ops_per_s: float) -> Run:
    """Returns the run with its baseline figures and ratio added."""
    ratio = run["ops_per_s"] / baseline_ops_per_s if baseline_ops_per_s > 0 else 0.0
    return {
        **run,
        "baseline": baseline_case,
        "baseline_ops_per_s": baseline_ops_per_s,
        "ratio": round(ratio, 3),
    }


def write_results(results: Results, path: Path) -> None:
    """Writes the JSON file whole or not at all, so a reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _format_params(params: Mapping[str, ParamValue]) -> str:
    return " ".join(f"{key}={value}" for key, value in params.items())


def render_table(results: Results, console: Console) -> None:
    """Prints every run as one row of a table."""
    table = Table(title="stockd bench")
    table.add_column("case")
    table.add_column("params")
    for heading in ("ops/s", "p50 ms", "p99 ms", "errors", "baseline ops/s", "ratio"):
        table.add_column(heading, justify="right")
    for case, runs in results.items():
        for run in runs:
            errors = run.get("errors")
            baseline_ops_per_s = run.get("baseline_ops_per_s")
            ratio = run.get("ratio")
            table.add_row(
                case,
                _format_params(run["params"]),
                f"{run['ops_per_s']:,.0f}",
                f"{run['p50_ms']:.3f}",
                f"{run['p99_ms']:.3f}",
                "" if errors is None else str(errors),
                "" if baseline_ops_per_s is None else f"{baseline_ops_per_s:,.0f}",
                "" if ratio is None else f"{ratio:.2f}",
            )
    console.print(table)
