"""Settings of one harness run and the limits that bound it.

One frozen object is built from the command line in ``__main__`` and passed
explicitly to every case, so a case never reads flags or globals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DURATION_SECONDS_DEFAULT = 5.0
WARMUP_SECONDS_DEFAULT = 1.0
CONCURRENCY_LEVELS_DEFAULT = (1, 16, 64)
OUTPUT_PATH_DEFAULT = Path("bench/results.json")

# Upper bounds on what the command line accepts: a typo must not start an
# hour-long run or ten thousand tasks.
DURATION_SECONDS_MAX = 600.0
WARMUP_SECONDS_MAX = 60.0
CONCURRENCY_MAX = 1024
CONCURRENCY_LEVELS_MAX = 16

# Every network await has a timeout.
CALL_TIMEOUT_SECONDS = 10.0
SETUP_CALL_TIMEOUT_SECONDS = 30.0
CHANNEL_READY_TIMEOUT_SECONDS = 10.0
SERVER_START_TIMEOUT_SECONDS = 30.0
SERVER_STOP_TIMEOUT_SECONDS = 10.0
PORT_FILE_POLL_SECONDS = 0.02


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to run and for how long.

    Attributes:
        duration_seconds: Length of each measured run.
        warmup_seconds: Load applied before each measured run and not counted,
            so connection set-up and caches do not skew the first figures.
        concurrency_levels: Numbers of concurrent callers, one run each.
        cases: Names of the cases to run, in registry order.
        output_path: Where the results JSON is written.
        edge_target: host:port of an edge agent that is already running; when
            set, edge cases call it instead of starting their own.
        work_dir: Directory for temporary databases and logs; it must be on
            the disk under test, since fsync cost is what is measured.
    """

    duration_seconds: float = DURATION_SECONDS_DEFAULT
    warmup_seconds: float = WARMUP_SECONDS_DEFAULT
    concurrency_levels: tuple[int, ...] = CONCURRENCY_LEVELS_DEFAULT
    cases: tuple[str, ...] = ()
    output_path: Path = OUTPUT_PATH_DEFAULT
    edge_target: str | None = None
    work_dir: Path | None = None

    def __post_init__(self) -> None:
        assert 0 < self.duration_seconds <= DURATION_SECONDS_MAX, self.duration_seconds
        assert 0 <= self.warmup_seconds <= WARMUP_SECONDS_MAX, self.warmup_seconds
        assert 0 < len(self.concurrency_levels) <= CONCURRENCY_LEVELS_MAX
        assert all(0 < level <= CONCURRENCY_MAX for level in self.concurrency_levels)
