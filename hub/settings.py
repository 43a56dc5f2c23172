"""The hub's settings: flag > environment (STOCKD_*) > config file > default."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.runtime.config import Layers, add_common_arguments


@dataclass(frozen=True, slots=True)
class HubSettings:
    db_path: Path
    nats_url: str
    listen: str = "127.0.0.1:7500"
    port_file: Path | None = None
    tokens: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "info"
    log_json: bool | None = None
    nats_replicas: int = 1
    stale_after_ms: int = 60_000
    atp_budget_ms: int = 1000
    # ATP answers kept for reuse while their inputs are unchanged (0: off).
    atp_cache_entries: int = 20_000


def load(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> HubSettings:
    parser = argparse.ArgumentParser(prog="stockd hub", description="Run the stockd hub.")
    parser.add_argument("--db", help="SQLite path of the hub's view (env STOCKD_DB)")
    parser.add_argument("--nats", help="NATS URL (env STOCKD_NATS)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    layers = Layers(args, environ, "hub")
    file, pick = layers.file, layers.pick

    db = pick(args.db, "STOCKD_DB", "db")
    nats_url = pick(args.nats, "STOCKD_NATS", "nats")
    if not db or not nats_url:
        raise SystemExit("stockd hub: --db and --nats are required (or STOCKD_DB/STOCKD_NATS)")
    port_file = pick(args.port_file, "STOCKD_PORT_FILE", "port_file")
    return HubSettings(
        db_path=Path(db),
        nats_url=str(nats_url),
        listen=str(pick(args.listen, "STOCKD_LISTEN", "listen", "127.0.0.1:7500")),
        port_file=Path(port_file) if port_file else None,
        tokens=dict(file.get("tokens", {})),
        log_level=str(pick(args.log_level, "STOCKD_LOG_LEVEL", "log_level", "info")),
        log_json=args.log_json,
        nats_replicas=int(file.get("sync", {}).get("replicas", 1)),
        stale_after_ms=int(file.get("atp", {}).get("stale_after_ms", 60_000)),
        atp_budget_ms=int(file.get("atp", {}).get("budget_ms", 1000)),
        atp_cache_entries=int(file.get("atp", {}).get("cache_entries", 20_000)),
    )
