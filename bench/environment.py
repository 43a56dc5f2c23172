"""The machine a run happens on: facts to print beside the figures, and scratch space.

Figures mean little without the core count and library versions, and fsync
figures mean nothing on tmpfs, so the file system of the scratch directory is
reported too.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from bench.config import BenchConfig


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def file_system_type(path: Path) -> str:
    """Returns the type of the file system holding ``path`` (Linux), or "unknown"."""
    resolved = str(path.resolve())
    best_mount = ""
    best_type = "unknown"
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount_point, fs_type = fields[1], fields[2]
                inside = resolved == mount_point or resolved.startswith(
                    mount_point.rstrip("/") + "/"
                )
                if inside and len(mount_point) >= len(best_mount):
                    best_mount, best_type = mount_point, fs_type
    except OSError:
        return "unknown"
    return best_type


def machine_facts(config: BenchConfig) -> dict[str, str]:
    """Returns what a reader needs to compare figures across machines."""
    work_dir = config.work_dir or Path(tempfile.gettempdir())
    return {
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "uvloop": _version("uvloop"),
        "protobuf": _version("protobuf"),
        "platform": platform.platform(),
        "work_dir": f"{work_dir} ({file_system_type(work_dir)})",
    }


@contextlib.contextmanager
def scratch_directory(config: BenchConfig) -> Iterator[Path]:
    """A temporary directory on the configured disk, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="stockd-bench-", dir=config.work_dir) as name:
        yield Path(name)
