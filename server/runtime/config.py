"""Layered settings: flag > environment (STOCKD_*) > config file > default.

Both processes build one frozen settings object from these layers in their
composition root; this module only reads the layers, it holds no state.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every stockd process takes."""
    parser.add_argument("--listen", help="host:port to serve gRPC on (env STOCKD_LISTEN)")
    parser.add_argument("--config", help="TOML config file (env STOCKD_CONFIG)")
    parser.add_argument("--port-file", help="write the bound port here once serving")
    parser.add_argument("--log-level", help="debug, info, warning, error")
    parser.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")


class Layers:
    """Looks a setting up in the flag, then the environment, then the file."""

    def __init__(
        self, args: argparse.Namespace, environ: Mapping[str, str] | None, section: str
    ) -> None:
        self.env = os.environ if environ is None else environ
        path = args.config or self.env.get("STOCKD_CONFIG")
        file: dict[str, Any] = {}
        if path:
            with open(path, "rb") as handle:
                file = tomllib.load(handle)
            # A [edge] or [hub] table overrides the top level, so one file can
            # configure both processes.
            file = {**file, **file.get(section, {})}
        self.file = file

    def pick(self, flag: object, env_key: str, file_key: str, default: Any = None) -> Any:
        if flag is not None:
            return flag
        if env_key in self.env:
            return self.env[env_key]
        return self.file.get(file_key, default)

    def table(self, name: str) -> dict[str, Any]:
        return dict(self.file.get(name, {}))


def write_port_file(path: Path, port: int) -> None:
    """Atomically, so a watcher never reads a half-written port."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(str(port))
    os.replace(temporary, path)
