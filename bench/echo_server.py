"""Bare grpc.aio unary echo server: the ceiling any stockd RPC can reach here.

It does no work beyond gRPC itself (bytes in, the same bytes out, no protobuf),
so the ratio of a real RPC's rate to this one's says how much the RPC's own
work costs. Run as ``python -m bench.echo_server --port-file F``; it writes
its port once serving and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from pathlib import Path

import grpc
import uvloop

SERVICE_NAME = "bench.Echo"
METHOD_NAME = "Echo"
METHOD_PATH = f"/{SERVICE_NAME}/{METHOD_NAME}"

_STOP_GRACE_SECONDS = 1.0
# How often the server checks that the harness that started it still lives,
# so a harness killed with SIGKILL does not leave it running.
_PARENT_CHECK_SECONDS = 1.0


async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    """Returns the request unchanged."""
    return request


def _write_port_file(port_file: Path, port: int) -> None:
    """Writes the port atomically, so a reader sees all of it or nothing."""
    temporary = port_file.with_name(port_file.name + ".tmp")
    temporary.write_text(f"{port}\n", encoding="ascii")
    os.replace(temporary, port_file)


async def _watch_parent(stop: asyncio.Event) -> None:
    parent_pid = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent_pid:
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=_PARENT_CHECK_SECONDS)


async def serve(listen: str, port_file: Path) -> None:
    """Serves until SIGTERM or SIGINT, or until the parent process is gone."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        # No (de)serializers: grpc hands the raw request bytes to the handler
        # and sends the returned bytes as they are.
        {METHOD_NAME: grpc.unary_unary_rpc_method_handler(echo)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(listen)
    await server.start()
    try:
        _write_port_file(port_file, port)
        await _watch_parent(stop)
    finally:
        await server.stop(_STOP_GRACE_SECONDS)


def main() -> None:
    """Parses flags and serves on uvloop, the loop stockd itself runs on."""
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server", description=__doc__)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--listen", default="127.0.0.1:0")
    arguments = parser.parse_args()
    uvloop.run(serve(arguments.listen, arguments.port_file))


if __name__ == "__main__":
    main()
