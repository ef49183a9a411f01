"""Fault test fixtures: a platform (policies + source) committed for the stack to see, and an engine."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.stack import PYTHON, ROOT
from inference_worker.testing.engine_simulator import EngineSimulator
from moderation import services
from policies import services as policy_services
from policies.models import Policy
from tests.conftest import POLICY_TEXT
from tests.faults.stack import manage_env

# Every source in these tests has a per-minute budget far above what they send, so the rate limiter's
# Redis counters are in the path (and must not get in the way when Redis is gone).
RATE_LIMIT_PER_MINUTE = 1_000_000

Platform = services.SourceCreated
PlatformFactory = Callable[..., Platform]


@pytest.fixture
def platform_create(transactional_db: None) -> PlatformFactory:
    """platform_create(callback_url=...) -> a source under two active policies, with its API key."""

    def make(*, callback_url: str = "", require_signature: bool = False) -> Platform:
        policies = []
        for slug in ("spam", "scam"):
            policy = Policy.objects.create(slug=slug, name=slug.title(), qa_sample_rate=0)
            policy_services.policy_version_create(policy=policy, text=POLICY_TEXT, activate=True)
            policies.append(policy)
        return services.source_create(
            name="Faults Platform",
            slug="faults",
            policies=policies,
            callback_url=callback_url,
            require_signature=require_signature,
            rate_limit_per_minute=RATE_LIMIT_PER_MINUTE,
        )

    return make


@pytest.fixture
def platform(platform_create: PlatformFactory) -> Platform:
    return platform_create()


@pytest.fixture
def engine() -> Iterator[EngineSimulator]:
    """The engine simulator, answering after a short latency so requests are really in flight."""
    with EngineSimulator(latency=0.05, mode="ok") as simulator:
        yield simulator


@pytest.fixture(scope="session")
def static_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Static files collected as production serves them (hashed names and a manifest), for HTML pages."""
    root = tmp_path_factory.mktemp("static")
    subprocess.run(
        [str(PYTHON), "manage.py", "collectstatic", "--no-input", "--verbosity=0"],
        cwd=ROOT,
        env={**manage_env(), "STATIC_ROOT": str(root)},
        check=True,
        timeout=300,
    )
    return root
