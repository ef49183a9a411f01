"""Settings read from the environment refuse values they cannot use, naming the variable."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_choice


def test_it_refuses_a_choice_that_is_not_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEGUARD_FUNNEL_PRECISION", "fp16")
    with pytest.raises(
        ImproperlyConfigured, match="SAFEGUARD_FUNNEL_PRECISION must be one of auto, bf16, fp32"
    ):
        env_choice("SAFEGUARD_FUNNEL_PRECISION", "auto", ("auto", "bf16", "fp32"))


def test_it_takes_the_default_when_unset_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEGUARD_FUNNEL_PRECISION", "")
    assert env_choice("SAFEGUARD_FUNNEL_PRECISION", "auto", ("auto", "bf16", "fp32")) == "auto"
    monkeypatch.setenv("SAFEGUARD_FUNNEL_PRECISION", "bf16")
    assert env_choice("SAFEGUARD_FUNNEL_PRECISION", "auto", ("auto", "bf16", "fp32")) == "bf16"
