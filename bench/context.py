"""What a case is given: settings, earlier results and somewhere to report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rich.console import Console

from bench.config import BenchConfig
from bench.results import Run


@dataclass(frozen=True, slots=True)
class CaseContext:
    """Everything a case function may use, passed explicitly.

    Attributes:
        config: Settings of this harness run.
        results: Runs of the cases that ran earlier in this harness run, so a
            case can use one of them as its baseline instead of measuring it
            again.
        console: Where progress lines go (stdout; the table comes at the end).
    """

    config: BenchConfig
    results: Mapping[str, list[Run]]
    console: Console

    def report_run(self, case: str, run: Run) -> None:
        """Prints one finished run, so long runs show progress."""
        params = " ".join(f"{key}={value}" for key, value in run["params"].items())
        extra = ""
        if "errors" in run:
            extra += f" errors={run['errors']}"
        if "ratio" in run:
            extra += f" ratio={run['ratio']:.2f}"
        self.console.print(
            f"{case} {params}: {run['ops_per_s']:,.0f} ops/s "
            f"p50 {run['p50_ms']:.3f} ms p99 {run['p99_ms']:.3f} ms{extra}"
        )
