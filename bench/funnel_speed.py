"""Funnel encoding speed by text length: embeddings.encode_windows against the old truncating encode.

    python bench/funnel_speed.py [--per-bucket 128] [--rounds 5]

Texts are English prose from the shared data sets (XSTest prompts, DICES-350 conversation turns; read at run
time, never copied into the repository), concatenated to a length drawn uniformly from each bucket:
`lt200` (20-199 characters), `200_500`, `500_800` and `gt800` (801-3000). Each round times, per bucket, one
pass of the new path (`encode_windows`: every window of every text), one of the path of an item the funnel
could clear (its windows, then each sentence alone: `..._with_sentences`) and one of the baseline, the
encode as it was before windows (sentence-transformers `encode`, which truncates at 256 word pieces,
under bf16 autocast where `uses_bf16`); which goes first rotates by round. The machine is shared, so the
figures are medians over rounds of the interleaved passes, and items per CPU second (process time) are given
too.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-not-secret")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from inference_worker import embeddings  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
# Characters, both ends included.
BUCKETS = {"lt200": (20, 199), "200_500": (200, 499), "500_800": (500, 800), "gt800": (801, 3000)}

Encode = Callable[[list[str]], Any]


def prose_pieces(datasets: Path = DATASETS) -> list[str]:
    """Sentences people wrote: XSTest prompts and every turn of the DICES-350 conversations (no speaker)."""
    pieces = [json.loads(line)["text"] for line in (datasets / "xstest" / "normalized.jsonl").open()]
    for line in (datasets / "dices350" / "normalized_350_expert.jsonl").open():
        row = json.loads(line)
        for turn in [*row["context"].splitlines(), row["response"]]:
            text = turn.split(":", 1)[1] if ":" in turn[:12] else turn
            if text.strip():
                pieces.append(" ".join(text.split()))
    return pieces


def texts_by_length_bucket(
    n_per_bucket: int, datasets: Path = DATASETS, seed: int = 0
) -> dict[str, list[str]]:
    """`n_per_bucket` texts per bucket: random pieces joined until a length drawn in the bucket is reached,
    then cut at a space if they overshoot the bucket."""
    pieces = prose_pieces(datasets)
    rng = np.random.default_rng(seed)
    buckets: dict[str, list[str]] = {}
    for name, (low, high) in BUCKETS.items():
        texts: list[str] = []
        while len(texts) < n_per_bucket:
            target = int(rng.integers(low, high + 1))
            text = ""
            while len(text) < target:
                text = f"{text} {pieces[int(rng.integers(len(pieces)))]}".strip()
            if len(text) > high:
                text = text[: text.rfind(" ", 0, high + 1)].rstrip()
            if low <= len(text) <= high:
                texts.append(text)
        buckets[name] = texts
    return buckets


def timed_pass(encode_fn: Encode, texts: list[str]) -> tuple[float, float]:
    """Items per second of one call, by the clock and by this process's CPU time."""
    wall, cpu = time.perf_counter(), time.process_time()
    encode_fn(texts)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(texts) / wall, len(texts) / max(cpu, 1e-9)


def throughput_by_length(
    encode_fn: Encode, texts_by_bucket: dict[str, list[str]], rounds: int = 3
) -> dict[str, float]:
    """Median items/s of `encode_fn` per bucket over `rounds` timed passes, after one warm-up call."""
    encode_fn(["warm up"])
    return {
        name: round(statistics.median(timed_pass(encode_fn, texts)[0] for _ in range(rounds)), 1)
        for name, texts in texts_by_bucket.items()
    }


def old_encode() -> Encode:
    """The funnel's encode before windows: sentence-transformers with its truncation, bf16 autocast."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(embeddings.model_path(), device="cpu", local_files_only=True)
    bf16 = embeddings.uses_bf16()
    # It ran one batch at a time on every core (torch's default); the new encoder sets torch to one thread
    # per batch, so the baseline puts the default back for its own passes.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def encode(texts: list[str]) -> np.ndarray:
        kept = torch.get_num_threads()
        torch.set_num_threads(cores)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                vectors = model.encode(
                    texts,
                    batch_size=settings.SAFEGUARD_FUNNEL_BATCH_SIZE,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
        finally:
            torch.set_num_threads(kept)
        return np.asarray(vectors, dtype=np.float32)

    return encode


def interleaved(
    encoders: dict[str, Encode], texts_by_bucket: dict[str, list[str]], rounds: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Per encoder and bucket, the medians of passes taken in turn (the order rotates by round):
    {"wall"|"cpu": {label: {bucket: items per second}}}."""
    for encode_fn in encoders.values():
        encode_fn(["warm up"])
    labels = list(encoders)
    runs: dict[tuple[str, str, int], list[float]] = {}
    for round_ in range(rounds):
        order = labels[round_ % len(labels) :] + labels[: round_ % len(labels)]
        for name, texts in texts_by_bucket.items():
            for label in order:
                for kind, figure in enumerate(timed_pass(encoders[label], texts)):
                    runs.setdefault((label, name, kind), []).append(figure)
    return {
        clock: {
            label: {name: round(statistics.median(runs[label, name, kind]), 1) for name in texts_by_bucket}
            for label in labels
        }
        for kind, clock in enumerate(("wall", "cpu"))
    }


def precision_agreement(texts: list[str]) -> float:
    """The lowest cosine between the bf16 and the float32 embedding of any window of `texts`."""
    from django.test.utils import override_settings

    with override_settings(SAFEGUARD_FUNNEL_PRECISION="fp32"):
        exact, _ = embeddings.encode_windows(texts)
    with override_settings(SAFEGUARD_FUNNEL_PRECISION="bf16"):
        fast, _ = embeddings.encode_windows(texts)
    return float((exact * fast).sum(axis=1).min())


def speed_figures(per_bucket: int = 128, rounds: int = 5) -> dict[str, Any]:
    """The figures bench/funnel.py merges into its line."""

    texts = texts_by_length_bucket(per_bucket)
    baseline = old_encode()

    def windows_only(batch: list[str]) -> np.ndarray:
        return embeddings.encode_windows(batch)[0]

    def with_sentences(batch: list[str]) -> np.ndarray:
        # What an item that could be cleared costs: its windows, then each of its sentences alone.
        return np.vstack([embeddings.encode_windows(batch)[0], embeddings.encode_sentences(batch)[0]])

    runs = interleaved(
        {"new": windows_only, "with_sentences": with_sentences, "baseline": baseline}, texts, rounds
    )
    figures: dict[str, Any] = {
        "items_per_second_by_length": runs["wall"]["new"],
        "items_per_second_by_length_with_sentences": runs["wall"]["with_sentences"],
        "baseline_items_per_second_by_length": runs["wall"]["baseline"],
        "items_per_cpu_second_by_length": runs["cpu"]["new"],
        "baseline_items_per_cpu_second_by_length": runs["cpu"]["baseline"],
    }
    windows = {name: len(embeddings.encode_windows(batch)[1]) / len(batch) for name, batch in texts.items()}
    sample = [t for batch in texts.values() for t in batch[:50]]
    agreement = (embeddings.encode(sample) * baseline(sample)).sum(axis=1)
    figures.update(
        {
            "windows_per_text_by_length": {name: round(w, 2) for name, w in windows.items()},
            "texts_per_bucket": per_bucket,
            "rounds": rounds,
            "speed_precision": "bf16" if embeddings.uses_bf16() else "fp32",
            "threads": embeddings.threads(),
            "batch_size": settings.SAFEGUARD_FUNNEL_BATCH_SIZE,
            "min_cosine_encode_vs_baseline": round(float(agreement.min()), 5),
            "min_cosine_bf16_vs_fp32_windows": round(precision_agreement(sample), 5),
            "cosine_texts": len(sample),
        }
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-bucket", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = {"bench": "funnel_speed", "model": embeddings.model_name(), "cpus": os.cpu_count()}
    result.update(speed_figures(args.per_bucket, args.rounds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
