"""Import directions hold: pure domains import no I/O, processes stay independent.

STYLE: domain modules import no grpc, nats, aiosqlite, sqlite3 or asyncio;
edge_agent and hub never import each other; clients import only the generated
stubs (and their own modules), never the servers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IO_MODULES = {"grpc", "nats", "aiosqlite", "sqlite3", "asyncio", "uvloop", "structlog"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["server/domain", "edge_agent/domain", "hub/domain"])
def test_domain_modules_import_no_io(package: str) -> None:
    for path in python_files(package):
        offending = imported_roots(path) & IO_MODULES
        assert not offending, f"{path.relative_to(ROOT)} imports {sorted(offending)}"


@pytest.mark.parametrize(("package", "forbidden"), [("edge_agent", "hub"), ("hub", "edge_agent")])
def test_edge_and_hub_never_import_each_other(package: str, forbidden: str) -> None:
    for path in python_files(package):
        assert forbidden not in imported_roots(path), (
            f"{path.relative_to(ROOT)} imports {forbidden}"
        )


def test_server_imports_neither_process() -> None:
    for path in python_files("server"):
        roots = imported_roots(path)
        assert not roots & {"edge_agent", "hub", "clients"}, str(path.relative_to(ROOT))


def test_clients_import_only_stubs_and_themselves() -> None:
    for path in python_files("clients"):
        roots = imported_roots(path)
        assert not roots & {"server", "edge_agent", "hub", "bench", "tests"}, str(
            path.relative_to(ROOT)
        )
