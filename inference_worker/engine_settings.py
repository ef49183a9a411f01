"""The reasoning engine's connection: the environment wins, then what an admin saved, then the defaults.

For each field an environment variable (``SAFEGUARD_BASE_URL``, ...) that is set and not empty wins; the
value saved on /settings/engine (``EngineSettings``, one row) applies otherwise; without either, the built-in
default (the value ``config/settings.py`` falls back to). Two defaults follow another field, as the settings
do: the escalation model is the first-pass model, the give-up delay is the timeout.

``EngineConfig.from_settings`` (the triage pump, evaluation runs, the commands) reads the row through a
per-process cache of ``CACHE_SECONDS``, so a saved change reaches every worker within that time; the process
that saves it sees it at once. The API key is stored in the database as typed (this project has no
encryption-at-rest key), shown back only as "set" / "not set", and never written to the audit log.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from audit import services as audit
from inference_worker.models import EngineSettings

CACHE_SECONDS = 5.0
Source = Literal["environment", "database", "default"]


@dataclass(frozen=True)
class EngineField:
    """One setting of the connection: its ``EngineSettings`` / ``EngineConfig`` name and its env variable."""

    name: str
    env: str
    label: str
    secret: bool = False
    # The field whose value is this one's default (the escalation model is the first-pass model).
    follows: str = ""

    @property
    def env_set(self) -> bool:
        if self.secret and os.environ.get(f"{self.env}_FILE", "").strip():
            return True
        return os.environ.get(self.env, "").strip() != ""

    @property
    def built_in(self) -> Any:
        """What config/settings.py holds for it: the default when the variable is not set."""
        return getattr(settings, self.env)


FIELDS: tuple[EngineField, ...] = (
    EngineField("base_url", "SAFEGUARD_BASE_URL", "Base URL"),
    EngineField("transport", "SAFEGUARD_TRANSPORT", "Transport"),
    EngineField("model", "SAFEGUARD_MODEL", "Model"),
    EngineField("effort", "SAFEGUARD_EFFORT", "Reasoning effort"),
    EngineField("escalation_model", "SAFEGUARD_ESCALATION_MODEL", "Escalation model", follows="model"),
    EngineField("escalation_effort", "SAFEGUARD_ESCALATION_EFFORT", "Escalation effort"),
    EngineField("api_key", "SAFEGUARD_API_KEY", "API key", secret=True),
    EngineField("timeout_seconds", "SAFEGUARD_TIMEOUT_SECONDS", "Timeout per request (s)"),
    EngineField(
        "give_up_after_seconds",
        "SAFEGUARD_GIVE_UP_AFTER_SECONDS",
        "Give up after (s)",
        follows="timeout_seconds",
    ),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}


@dataclass(frozen=True)
class EngineValue:
    """A field's value in effect and where it comes from (``value`` of the API key: never shown)."""

    field: EngineField
    value: Any
    source: Source

    @property
    def from_environment(self) -> bool:
        return self.source == "environment"

    @property
    def from_database(self) -> bool:
        return self.source == "database"

    @property
    def is_set(self) -> bool:
        return self.value not in ("", None)


def _stored(row: EngineSettings | None, name: str) -> Any:
    """The row's value, or None when the row leaves the field to the default."""
    value = getattr(row, name) if row is not None else None
    return None if value in ("", None) else value


def engine_values(row: EngineSettings | None) -> dict[str, EngineValue]:
    """Every field's value in effect, given the saved row (None: nothing saved)."""
    values: dict[str, EngineValue] = {}
    for field in FIELDS:  # a field's `follows` comes before it
        stored = _stored(row, field.name)
        if field.env_set:
            values[field.name] = EngineValue(field, field.built_in, "environment")
        elif stored is not None:
            values[field.name] = EngineValue(field, stored, "database")
        elif field.follows and values[field.follows].source == "database":
            values[field.name] = EngineValue(field, values[field.follows].value, "default")
        else:
            values[field.name] = EngineValue(field, field.built_in, "default")
    return values


# --- the saved row, cached per process -------------------------------------------------------------

_cache_lock = threading.Lock()
_cache: tuple[float, EngineSettings | None] | None = None


def engine_settings_get() -> EngineSettings | None:
    """The saved row, read now."""
    return EngineSettings.objects.filter(pk=EngineSettings.SINGLETON_PK).first()


def engine_settings_cached() -> EngineSettings | None:
    """The saved row as read at most CACHE_SECONDS ago in this process (one small query per period)."""
    global _cache
    now = time.monotonic()
    with _cache_lock:
        if _cache is not None and now - _cache[0] < CACHE_SECONDS:
            return _cache[1]
    row = engine_settings_get()
    with _cache_lock:
        _cache = (now, row)
    return row


def engine_settings_cache_clear() -> None:
    global _cache
    with _cache_lock:
        _cache = None


def engine_values_now() -> dict[str, Any]:
    """Field name -> the value in effect, for ``EngineConfig.from_settings``."""
    return {name: v.value for name, v in engine_values(engine_settings_cached()).items()}


# --- the admin's write -----------------------------------------------------------------------------

KEY_SET, KEY_NOT_SET, KEY_CHANGED = "set", "not set", "changed"


@transaction.atomic
def engine_settings_update(
    *, actor: User, values: dict[str, Any], api_key: str = "", clear_api_key: bool = False
) -> dict[str, list[Any]]:
    """Save the fields in ``values`` ("" / None: back to the default) and a new API key (or clear it).

    Fields an environment variable controls are left alone (the page shows them read-only). Returns the
    changes, ``{field: [before, after]}``, audited as ``engine.settings_changed``; the key appears there
    only as ``["set", "changed"]`` (or ``[..., "not set"]`` when cleared), never itself.
    """
    unknown = set(values) - (set(FIELDS_BY_NAME) - {"api_key"})
    if unknown:
        raise ValueError(f"not engine settings: {sorted(unknown)}")
    row, _ = EngineSettings.objects.select_for_update().get_or_create(pk=EngineSettings.SINGLETON_PK)
    changes: dict[str, list[Any]] = {}
    for name, value in values.items():
        if FIELDS_BY_NAME[name].env_set:
            continue
        before = getattr(row, name)
        after = _normalized(name, value)
        if before != after:
            setattr(row, name, after)
            changes[name] = [before, after]
    if not FIELDS_BY_NAME["api_key"].env_set:
        had_key = KEY_SET if row.api_key else KEY_NOT_SET
        if api_key and api_key != row.api_key:
            row.api_key = api_key
            changes["api_key"] = [had_key, KEY_CHANGED]
        elif clear_api_key and row.api_key:
            row.api_key = ""
            changes["api_key"] = [had_key, KEY_NOT_SET]
    if changes:
        row.updated_by = actor
        row.save()
        audit.record("engine.settings_changed", actor=actor, obj=row, payload={"changes": changes})
        transaction.on_commit(engine_settings_cache_clear)
    engine_settings_cache_clear()
    return changes


def _normalized(name: str, value: Any) -> Any:
    if name in ("timeout_seconds", "give_up_after_seconds"):
        return None if value in ("", None) else float(value)
    text = "" if value is None else str(value).strip()
    return text.rstrip("/") if name == "base_url" else text


def engine_connected() -> bool:
    """A reasoning engine is configured (by the environment or on the page): evaluations can run."""
    return bool(engine_values_now()["base_url"])
