"""Fixtures for the end-to-end tests: real agents on 127.0.0.1 port 0, real SQLite files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.helpers import TOKENS, Agent, AgentProcess, agent_process, running_agent


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "edge.db"


@pytest.fixture
async def agent(db_path: Path) -> AsyncIterator[Agent]:
    """An in-process agent with auth disabled (actor "anonymous")."""
    async with running_agent(db_path) as running:
        yield running


@pytest.fixture
async def auth_agent(db_path: Path) -> AsyncIterator[Agent]:
    """An in-process agent that requires the bearer tokens t-alice and t-bob."""
    async with running_agent(db_path, tokens=TOKENS) as running:
        yield running


@pytest.fixture
async def child_agent(tmp_path: Path, db_path: Path) -> AsyncIterator[AgentProcess]:
    """An agent child process (not yet started); always killed and reaped at teardown."""
    async with agent_process(db_path, tmp_path / "agent.log") as child:
        yield child
