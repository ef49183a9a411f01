"""Issue 14: compose refuses to start without a real SECRET_KEY (DEBUG is off there)."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "compose.yaml"


def test_compose_requires_a_secret_key_instead_of_defaulting_one() -> None:
    environment = yaml.safe_load(COMPOSE.read_text())["x-app"]["environment"]

    # ${VAR:?message}: compose stops with the message when SECRET_KEY is unset or empty.
    assert environment["SECRET_KEY"].startswith("${SECRET_KEY:?")
    assert environment.get("DEBUG", "0") in ("0", "", None)
