"""Ending a child process and reading its log: one way for nats-server (which
the product starts embedded) and for the hubs, edges and servers that the
test and bench harnesses start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path


async def end_process(
    process: asyncio.subprocess.Process,
    signum: signal.Signals,
    grace_seconds: float,
    kill_seconds: float,
) -> None:
    """Sends `signum` and waits `grace_seconds`, then SIGKILLs; returns once reaped.

    Raises:
        TimeoutError: Not reaped `kill_seconds` after SIGKILL.
    """
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)
    try:
        await asyncio.wait_for(process.wait(), grace_seconds)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await asyncio.wait_for(process.wait(), kill_seconds)


def log_tail(path: Path, size: int, missing: str = "<no log>") -> str:
    """The last `size` bytes of a log, for error messages (`missing` if unreadable)."""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - size))
            return log.read().decode("utf-8", errors="replace")
    except OSError:
        return missing
