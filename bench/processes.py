"""Servers under test run in their own process, found through a port file.

Their own process so that the server and the load generator each get a core,
as they would in production, and so the measured server cannot share the
load generator's event loop. Port 0 plus a port file avoids both fixed ports
(collisions between runs) and sleeping until the server is probably up.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import BinaryIO

from bench.config import (
    PORT_FILE_POLL_SECONDS,
    SERVER_START_TIMEOUT_SECONDS,
    SERVER_STOP_TIMEOUT_SECONDS,
)
from bench.errors import ServerStartError
from server.runtime.child_process import end_process

_LOG_TAIL_BYTES = 4000
_LOG_TAIL_LINES = 20
_PORT_MAX = 65535


def log_tail(log_path: Path) -> str:
    """Returns the last lines of a process log, for error messages."""
    try:
        with log_path.open("rb") as log:
            log.seek(0, 2)
            size = log.tell()
            log.seek(max(0, size - _LOG_TAIL_BYTES))
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])


def _read_port(port_file: Path) -> str | None:
    try:
        return port_file.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None


async def _wait_for_port(
    process: asyncio.subprocess.Process,
    argv: list[str],
    port_file: Path,
    log_path: Path,
    timeout_seconds: float,
) -> int:
    """Polls the port file until it holds a port, the process dies or time runs out.

    A port is accepted only once two reads in a row agree, so a file caught
    half-written (``"5"`` of ``"50051"``) is never taken for the port.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    previous: str | None = None
    while True:
        if process.returncode is not None:
            raise ServerStartError(
                argv,
                f"exited with code {process.returncode} before writing {port_file}",
                log_tail(log_path),
            )
        text = _read_port(port_file)
        if text is not None and text == previous and text.isdigit():
            port = int(text)
            if 0 < port <= _PORT_MAX:
                return port
        previous = text
        if loop.time() > deadline:
            raise ServerStartError(
                argv,
                f"no port in {port_file} after {timeout_seconds:.0f} s",
                log_tail(log_path),
            )
        await asyncio.sleep(PORT_FILE_POLL_SECONDS)


def _fresh_log(port_file: Path, log_path: Path) -> BinaryIO:
    """Removes a stale port file and opens the process log for writing.

    Synchronous on purpose: two metadata operations on a local file, before
    anything is measured.
    """
    port_file.unlink(missing_ok=True)
    return log_path.open("wb")


async def stop_process(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if the process has not exited in time; always waits."""
    with contextlib.suppress(TimeoutError):
        await end_process(
            process, signal.SIGTERM, SERVER_STOP_TIMEOUT_SECONDS, SERVER_STOP_TIMEOUT_SECONDS
        )
    await process.wait()


@contextlib.asynccontextmanager
async def served(
    argv: Sequence[str],
    port_file: Path,
    log_path: Path,
    start_timeout_seconds: float = SERVER_START_TIMEOUT_SECONDS,
    cwd: Path | None = None,
) -> AsyncIterator[int]:
    """Starts a server process and yields its port once it is serving.

    The process writes its output to ``log_path`` (a file, not a pipe nobody
    reads, which would stall it once full) and gets its own session, so a
    Ctrl-C reaches only the harness, which then stops it in order.

    Raises:
        ServerStartError: The process exited or wrote no port in time.
    """
    command = list(argv)
    with _fresh_log(port_file, log_path) as log:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
        )
    try:
        yield await _wait_for_port(process, command, port_file, log_path, start_timeout_seconds)
    finally:
        await stop_process(process)
