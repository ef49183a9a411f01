from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from inference_worker.vocabulary import (
    ENCODINGS_BASE_VARIABLE,
    O200K_FILE_NAME,
    O200K_SHA256,
    harmony_vocabulary_ensure,
)


@pytest.fixture
def empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty cache home and no vocabulary variable (both restored afterwards)."""
    monkeypatch.delenv(ENCODINGS_BASE_VARIABLE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "safeguard-queue" / "tiktoken"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_it_unpacks_the_shipped_vocabulary_and_points_harmony_at_it(empty_cache: Path) -> None:
    harmony_vocabulary_ensure()

    assert sha256_of(empty_cache / O200K_FILE_NAME) == O200K_SHA256
    assert Path(os.environ[ENCODINGS_BASE_VARIABLE]) == empty_cache
    assert [p.name for p in empty_cache.iterdir()] == [O200K_FILE_NAME]  # no temporary left


def test_it_replaces_a_corrupted_vocabulary(empty_cache: Path) -> None:
    empty_cache.mkdir(parents=True)
    (empty_cache / O200K_FILE_NAME).write_bytes(b"truncated")

    harmony_vocabulary_ensure()

    assert sha256_of(empty_cache / O200K_FILE_NAME) == O200K_SHA256


def test_it_leaves_a_valid_vocabulary_in_place(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    harmony_vocabulary_ensure()
    first_write = (empty_cache / O200K_FILE_NAME).stat().st_mtime_ns
    monkeypatch.delenv(ENCODINGS_BASE_VARIABLE)
    time.sleep(0.01)

    harmony_vocabulary_ensure()

    assert (empty_cache / O200K_FILE_NAME).stat().st_mtime_ns == first_write


def test_it_respects_a_vocabulary_directory_the_deployer_set(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENCODINGS_BASE_VARIABLE, str(tmp_path / "provided"))

    harmony_vocabulary_ensure()

    assert not empty_cache.exists()
