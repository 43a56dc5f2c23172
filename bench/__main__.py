"""``python -m bench``: runs the cases, writes the results JSON, prints a table.

A case that fails is reported and skipped so the others still produce
figures, but the exit status is then non-zero so ``make bench`` in CI notices.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType

import uvloop
from rich.console import Console
from rich.markup import escape

from bench.config import (
    CONCURRENCY_LEVELS_DEFAULT,
    CONCURRENCY_LEVELS_MAX,
    CONCURRENCY_MAX,
    DURATION_SECONDS_DEFAULT,
    DURATION_SECONDS_MAX,
    OUTPUT_PATH_DEFAULT,
    WARMUP_SECONDS_DEFAULT,
    WARMUP_SECONDS_MAX,
    BenchConfig,
)
from bench.context import CaseContext
from bench.environment import machine_facts
from bench.errors import BenchError
from bench.registry import CASES
from bench.results import Results, render_table, write_results

_PIPED_WIDTH_COLUMNS = 140
_INTERRUPTED_EXIT_STATUS = 130


def _seconds(maximum: float, allow_zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError("expected a number of seconds") from None
        low = value >= 0 if allow_zero else value > 0
        if not (low and value <= maximum):
            raise argparse.ArgumentTypeError(
                f"must be {'at least' if allow_zero else 'above'} 0 and at most {maximum}"
            )
        return value

    return parse


def _concurrency_levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("expected integers separated by commas") from None
    if not 0 < len(levels) <= CONCURRENCY_LEVELS_MAX:
        raise argparse.ArgumentTypeError(f"1 to {CONCURRENCY_LEVELS_MAX} levels")
    if not all(0 < level <= CONCURRENCY_MAX for level in levels):
        raise argparse.ArgumentTypeError(f"each level must be 1 to {CONCURRENCY_MAX}")
    return levels


def _case_names(text: str) -> tuple[str, ...]:
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(wanted - CASES.keys())
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"unknown case(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(CASES)}"
        )
    # Registry order, whatever order was typed: baselines run first.
    return tuple(name for name in CASES if name in wanted)


def parse_arguments(argv: Sequence[str] | None = None) -> BenchConfig:
    """Builds the one settings object of this process from the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--duration",
        type=_seconds(DURATION_SECONDS_MAX, allow_zero=False),
        default=DURATION_SECONDS_DEFAULT,
        help="seconds per measured run (default %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=_seconds(WARMUP_SECONDS_MAX, allow_zero=True),
        default=WARMUP_SECONDS_DEFAULT,
        help="seconds of unmeasured load before each run (default %(default)s)",
    )
    parser.add_argument(
        "--cases",
        type=_case_names,
        default=tuple(CASES),
        help=f"comma-separated cases (default all: {','.join(CASES)})",
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrency_levels,
        default=CONCURRENCY_LEVELS_DEFAULT,
        help="comma-separated numbers of concurrent callers (default 1,16,64)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=OUTPUT_PATH_DEFAULT,
        help="results JSON path (default %(default)s)",
    )
    parser.add_argument(
        "--edge-target",
        metavar="HOST:PORT",
        help="call this running edge agent instead of starting one",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="directory for scratch databases and logs; must be on the disk under test",
    )
    arguments = parser.parse_args(argv)
    return BenchConfig(
        duration_seconds=arguments.duration,
        warmup_seconds=arguments.warmup,
        concurrency_levels=arguments.concurrency,
        cases=arguments.cases,
        output_path=arguments.output,
        edge_target=arguments.edge_target,
        work_dir=arguments.work_dir,
    )


async def run_cases(config: BenchConfig, console: Console) -> tuple[Results, list[str]]:
    """Runs the selected cases in registry order; returns results and failed names."""
    results: Results = {}
    failed: list[str] = []
    for name in config.cases:
        console.rule(name)
        context = CaseContext(config, MappingProxyType(dict(results)), console)
        try:
            results[name] = await CASES[name](context)
        except BenchError as error:
            console.print(f"[red]{name} skipped:[/red] {escape(str(error))}")
            failed.append(name)
        except Exception:
            # A harness bug or an agent answering nonsense: still worth the
            # other cases' figures, but with the traceback to fix it.
            console.print(f"[red]{name} failed:[/red]")
            console.print_exception()
            failed.append(name)
    return results, failed


async def _run_until_signalled(config: BenchConfig, console: Console) -> tuple[Results, list[str]]:
    """Runs the cases; SIGTERM cancels them like Ctrl-C does.

    Cancelling, rather than dying on the default SIGTERM action, runs every
    ``finally`` on the way out, so servers under test are stopped and waited
    for instead of being left running.
    """
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run_cases(config, console)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the harness; returns the process exit status."""
    config = parse_arguments(argv)
    console = Console()
    if not console.is_terminal:
        # Piped or logged output would otherwise be wrapped at 80 columns.
        console = Console(width=_PIPED_WIDTH_COLUMNS)
    for key, value in machine_facts(config).items():
        console.print(f"{key}: {escape(value)}")
    try:
        results, failed = uvloop.run(_run_until_signalled(config, console))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[red]interrupted; no results written[/red]")
        return _INTERRUPTED_EXIT_STATUS
    write_results(results, config.output_path)
    render_table(results, console)
    console.print(f"wrote {escape(str(config.output_path))}")
    if failed:
        console.print(f"[red]failed cases: {', '.join(failed)}[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
