"""Registers the `chaos` marker: `pytest -m chaos` runs the process-level chaos test."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: process-level fault injection (kill -9, partitions, NATS crashes)"
    )
