"""The edge agent's settings: one frozen object built from file, environment, flags.

Precedence: command-line flag > environment (STOCKD_*) > config file > default.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.domain import limits


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    site_id: str
    db_path: Path
    listen: str = "127.0.0.1:7400"
    port_file: Path | None = None
    tokens: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "info"
    log_json: bool | None = None
    sweep_interval_seconds: float = 0.5
    commands_per_batch_max: int = limits.COMMANDS_PER_BATCH_MAX
    write_queue_max: int = limits.WRITE_QUEUE_MAX
    request_retention_seconds: int = limits.REQUEST_RETENTION_SECONDS_DEFAULT
    nats_url: str = ""
    checksum_interval_seconds: float = 10.0
    quota_low_water: int = 0
    quota_high_water: int = 0
    nats_replicas: int = 1
    # Optimistic segments: (SKU prefix, units a reservation may overbook while offline).
    optimistic_segments: tuple[tuple[str, int], ...] = ()


def parse_tokens(text: str) -> dict[str, str]:
    """Parses "token=principal,token2=principal2" (the STOCKD_TOKENS format)."""
    tokens: dict[str, str] = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        token, _, principal = pair.partition("=")
        if not token or not principal:
            raise ValueError(f"bad token entry {pair!r}; expected token=principal")
        tokens[token] = principal
    return tokens


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stockd edge", description="Run a stockd edge agent for one site."
    )
    parser.add_argument("--site", help="site id (env STOCKD_SITE)")
    parser.add_argument("--db", help="SQLite ledger path (env STOCKD_DB)")
    parser.add_argument("--listen", help="host:port to serve gRPC on (env STOCKD_LISTEN)")
    parser.add_argument("--config", help="TOML config file (env STOCKD_CONFIG)")
    parser.add_argument("--port-file", help="write the bound port here once serving")
    parser.add_argument(
        "--nats", help="NATS URL of the hub's bus; enables sync and hub-managed shares"
    )
    parser.add_argument("--log-level", help="debug, info, warning, error")
    parser.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    return parser


def load(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> EdgeSettings:
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    config_path = args.config or env.get("STOCKD_CONFIG")
    file: dict[str, Any] = {}
    if config_path:
        with open(config_path, "rb") as handle:
            file = tomllib.load(handle)
        file = {**file, **file.get("edge", {})}

    def pick(flag: object, env_key: str, file_key: str, default: Any = None) -> Any:
        if flag is not None:
            return flag
        if env_key in env:
            return env[env_key]
        return file.get(file_key, default)

    site_id = pick(args.site, "STOCKD_SITE", "site_id")
    db = pick(args.db, "STOCKD_DB", "db")
    if not site_id or not db:
        raise SystemExit("stockd edge: --site and --db are required (or STOCKD_SITE/STOCKD_DB)")
    tokens = dict(file.get("tokens", {}))
    if "STOCKD_TOKENS" in env:
        tokens.update(parse_tokens(env["STOCKD_TOKENS"]))
    port_file = pick(args.port_file, "STOCKD_PORT_FILE", "port_file")
    sync = dict(file.get("sync", {}))
    return EdgeSettings(
        site_id=str(site_id),
        db_path=Path(db),
        listen=str(pick(args.listen, "STOCKD_LISTEN", "listen", "127.0.0.1:7400")),
        port_file=Path(port_file) if port_file else None,
        tokens=tokens,
        log_level=str(pick(args.log_level, "STOCKD_LOG_LEVEL", "log_level", "info")),
        log_json=args.log_json,
        sweep_interval_seconds=float(file.get("sweep_interval_seconds", 0.5)),
        commands_per_batch_max=int(
            file.get("commands_per_batch_max", limits.COMMANDS_PER_BATCH_MAX)
        ),
        write_queue_max=int(file.get("write_queue_max", limits.WRITE_QUEUE_MAX)),
        request_retention_seconds=int(
            file.get("request_retention_seconds", limits.REQUEST_RETENTION_SECONDS_DEFAULT)
        ),
        nats_url=str(pick(args.nats, "STOCKD_NATS", "nats", "") or ""),
        checksum_interval_seconds=float(sync.get("checksum_interval_seconds", 10.0)),
        quota_low_water=int(sync.get("quota_low_water", 0)),
        quota_high_water=int(sync.get("quota_high_water", 0)),
        nats_replicas=int(sync.get("replicas", 1)),
        optimistic_segments=tuple(
            (str(segment["sku_prefix"]), int(segment["overbook_max"]))
            for segment in sync.get("optimistic", [])
        ),
    )
