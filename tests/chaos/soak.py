"""The chaos soak: `python -m tests.chaos.soak --seconds N [--seed S]` (`make chaos`).

Runs traffic and faults for N seconds against a hub, three edge agents and a
nats-server, heals, checks every invariant and prints a report whose last
line is `violations: N`; the exit code is 1 when N > 0. The work dir (logs,
databases, the history as JSON lines) is kept when anything was violated.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.chaos.harness import FAULT_KINDS, ChaosConfig
from tests.chaos.runner import ChaosReport, run_chaos


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, required=True, help="traffic and faults, seconds")
    parser.add_argument("--seed", type=int, default=None, help="seed (random when omitted)")
    parser.add_argument("--rate", type=float, default=50.0, help="operations per second offered")
    parser.add_argument("--workers", type=int, default=8, help="concurrent callers")
    parser.add_argument(
        "--fault-interval", type=float, default=5.0, help="mean seconds between fault starts"
    )
    parser.add_argument(
        "--faults", default="", help=f"comma-separated subset of {','.join(sorted(FAULT_KINDS))}"
    )
    parser.add_argument(
        "--settle-timeout", type=float, default=300.0,
        help="seconds the healed cluster may take to come to rest before it is a violation",
    )  # fmt: skip
    parser.add_argument("--work-dir", type=Path, default=None, help="kept after the run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    work_dir: Path = args.work_dir or Path(tempfile.mkdtemp(prefix=f"stockd-chaos-{seed}-"))
    faults = tuple(name for name in args.faults.split(",") if name) or None
    unknown = [name for name in faults or () if name not in FAULT_KINDS]
    if unknown:
        print(f"unknown fault kinds: {unknown}", file=sys.stderr)
        return 2
    config = ChaosConfig(
        seed=seed,
        work_dir=work_dir,
        traffic_seconds=args.seconds,
        operations_per_second=args.rate,
        workers=args.workers,
        fault_interval_seconds=args.fault_interval,
        fault_kinds=faults,
        settle_timeout_seconds=args.settle_timeout,
        rerun=(
            f"python -m tests.chaos.soak --seconds {args.seconds:g} --seed {seed} "
            f"--rate {args.rate:g} --workers {args.workers} "
            f"--fault-interval {args.fault_interval:g} --settle-timeout {args.settle_timeout:g}"
            + (f" --faults {args.faults}" if args.faults else "")
        ),
    )
    print(f"chaos soak: seed {seed}, {args.seconds:.0f} s, work dir {work_dir}", flush=True)
    report: ChaosReport = asyncio.run(run_chaos(config))
    if not report.violations and args.work_dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)
        report.history_path = None
        report.notes.append("work dir removed (no violations)")
    print(report.render(), flush=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
