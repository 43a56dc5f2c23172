"""The edge agent's settings: one frozen object built from file, environment, flags.

Precedence: command-line flag > environment (STOCKD_*) > config file > default.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.domain import limits
from server.runtime.config import Layers, add_common_arguments


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
    parser.add_argument(
        "--nats", help="NATS URL of the hub's bus; enables sync and hub-managed shares"
    )
    add_common_arguments(parser)
    return parser


def load(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> EdgeSettings:
    args = build_parser().parse_args(argv)
    layers = Layers(args, environ, "edge")
    env, file, pick = layers.env, layers.file, layers.pick

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
