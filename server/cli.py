"""`stockd`: runs a server process (`stockd edge ...`, `stockd hub ...`).

The subcommand's package is imported by name so `server` depends on neither
process package (edge_agent and hub stay independent of each other).
"""

from __future__ import annotations

import importlib
import sys

PROCESSES = {"edge": "edge_agent.__main__", "hub": "hub.__main__"}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in PROCESSES:
        print("usage: stockd {edge|hub} [options]  (stockd edge --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(PROCESSES[sys.argv[1]])
    result: int = module.main(sys.argv[2:])
    return result


if __name__ == "__main__":
    sys.exit(main())
