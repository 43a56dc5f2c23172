"""The hub and the edge agents as real child processes the chaos harness can kill.

No pytest here: the soak runs as a plain program. Each node is started with
`--listen 127.0.0.1:0` and a port file, so every restart gets a new port; the
node reopens its gRPC channel on each start. `kill()` is SIGKILL (kill -9);
`stop()` is SIGTERM with a short grace, then SIGKILL (a SIGTERM'd agent may
wait out nats-py's drain timeout, which teardown does not need to wait for).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

import grpc
import grpc.aio

from server.runtime.child_process import end_process, log_tail
from stockd.v1 import edge_pb2_grpc, hub_pb2_grpc

if TYPE_CHECKING:
    from stockd.v1.edge_pb2_grpc import EdgeInventoryServiceAsyncStub
    from stockd.v1.hub_pb2_grpc import HubInventoryServiceAsyncStub

START_TIMEOUT_SECONDS: Final = 60.0
STOP_GRACE_SECONDS: Final = 2.0
KILL_TIMEOUT_SECONDS: Final = 10.0
POLL_INTERVAL_SECONDS: Final = 0.02
LOG_TAIL_BYTES: Final = 4000


class HarnessError(RuntimeError):
    """The harness itself could not do its job (a process would not start)."""


class ChildProcess:
    """One `python -m <module>` child serving gRPC on 127.0.0.1 port 0."""

    def __init__(self, name: str, module: str, args: Sequence[str], work_dir: Path) -> None:
        self.name = name
        self.module = module
        self.args = list(args)
        self.work_dir = work_dir
        self.port_file = work_dir / f"{name}.port"
        self.log_path = work_dir / f"{name}.log"
        self.port = 0
        self.starts = 0
        self.kills = 0
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._channel: grpc.aio.Channel | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def serving(self) -> bool:
        """Running and its channel is open (callers may use the stub)."""
        return self.running and self._channel is not None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> int:
        """Spawns the child; returns its gRPC port once it is serving."""
        if self.running:
            raise HarnessError(f"{self.name} is already running")
        self.port_file.unlink(missing_ok=True)
        self._log = self.log_path.open("ab")
        environment = {k: v for k, v in os.environ.items() if not k.startswith("STOCKD_")}
        environment["PYTHONUNBUFFERED"] = "1"
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, *self.args,
            "--listen", "127.0.0.1:0", "--port-file", str(self.port_file),
            stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=asyncio.subprocess.STDOUT,
            env=environment,
        )  # fmt: skip
        self.starts += 1
        try:
            self.port = await self._wait_port()
        except BaseException:
            await self.kill()
            raise
        self._channel = grpc.aio.insecure_channel(self.target)
        self._connected(self._channel)
        return self.port

    async def _wait_port(self) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_SECONDS
        while True:
            process = self._process
            assert process is not None
            if process.returncode is not None:
                raise HarnessError(
                    f"{self.name} exited with {process.returncode} before serving:\n"
                    f"{self.log_tail()}"
                )
            if self.port_file.exists():
                text = self.port_file.read_text().strip()
                if text:
                    return int(text)
            if loop.time() >= deadline:
                raise HarnessError(f"{self.name} wrote no port file in {START_TIMEOUT_SECONDS}s")
            # Poll interval of a condition loop, not synchronisation by sleep.
            await asyncio.sleep(POLL_INTERVAL_SECONDS)

    def _connected(self, channel: grpc.aio.Channel) -> None:
        """Hook: build stubs on the fresh channel."""

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(grace=None)

    async def kill(self) -> None:
        """SIGKILL, as a crash would: no flush, no goodbye."""
        if self.running:
            self.kills += 1
        await self._signal(signal.SIGKILL, KILL_TIMEOUT_SECONDS)

    async def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM, then SIGKILL after `grace_seconds`; always reaps the child."""
        await self._signal(signal.SIGTERM, grace_seconds)

    async def _signal(self, signum: signal.Signals, grace_seconds: float) -> None:
        process = self._process
        try:
            # The process goes first: calls in flight then fail the way a crash
            # fails them (the connection drops), not by a client-side cancel.
            if process is not None:
                await end_process(process, signum, grace_seconds, KILL_TIMEOUT_SECONDS)
        finally:
            await self._close_channel()
            if self._log is not None:
                self._log.close()
                self._log = None

    def log_tail(self) -> str:
        return log_tail(self.log_path, LOG_TAIL_BYTES)


class HubNode(ChildProcess):
    """`python -m hub` with a stub reopened on every start."""

    def __init__(self, work_dir: Path, nats_url: str) -> None:
        self.db_path = work_dir / "hub.db"
        super().__init__("hub", "hub", ["--db", str(self.db_path), "--nats", nats_url], work_dir)
        self._stub: HubInventoryServiceAsyncStub | None = None

    @property
    def stub(self) -> HubInventoryServiceAsyncStub:
        if self._stub is None or not self.serving:
            raise HarnessError("hub is not serving")
        return self._stub

    def _connected(self, channel: grpc.aio.Channel) -> None:
        self._stub = hub_pb2_grpc.HubInventoryServiceStub(channel)


class EdgeNode(ChildProcess):
    """`python -m edge_agent --nats <proxy>` for one site, with its stub."""

    def __init__(
        self,
        work_dir: Path,
        site_id: str,
        nats_url: str,
        *,
        sweep_interval_seconds: float,
        checksum_interval_seconds: float,
        quota_low_water: int,
        quota_high_water: int,
    ) -> None:
        self.site_id = site_id
        self.db_path = work_dir / f"edge-{site_id}.db"
        self.config_path = work_dir / f"edge-{site_id}.toml"
        self.config_path.write_text(
            f"sweep_interval_seconds = {sweep_interval_seconds}\n"
            "[sync]\n"
            f"checksum_interval_seconds = {checksum_interval_seconds}\n"
            f"quota_low_water = {quota_low_water}\n"
            f"quota_high_water = {quota_high_water}\n"
        )
        super().__init__(
            f"edge-{site_id}",
            "edge_agent",
            ["--site", site_id, "--db", str(self.db_path), "--nats", nats_url,
             "--config", str(self.config_path)],
            work_dir,
        )  # fmt: skip
        self._stub: EdgeInventoryServiceAsyncStub | None = None

    @property
    def stub(self) -> EdgeInventoryServiceAsyncStub:
        if self._stub is None or not self.serving:
            raise HarnessError(f"edge {self.site_id} is not serving")
        return self._stub

    def _connected(self, channel: grpc.aio.Channel) -> None:
        self._stub = edge_pb2_grpc.EdgeInventoryServiceStub(channel)
