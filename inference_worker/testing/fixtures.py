"""Pytest fixtures for the engine layer (test infrastructure only).

Loaded by the root ``tests/conftest.py`` through ``pytest_plugins``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inference_worker.testing.engine_simulator import EngineSimulator


@pytest.fixture
def engine_simulator() -> Iterator[EngineSimulator]:
    """A started loopback engine simulator: zero latency, mode ``ok``."""
    with EngineSimulator(latency=0.0, mode="ok") as simulator:
        yield simulator
