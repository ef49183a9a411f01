"""The funnel tier: throughput of batched encode + score, and cross-validated recall / clear rate.

    python bench/funnel.py [--datasets ../shared/datasets] [--folds 5] [--limit N] [--target-recall 0.98]

Throughput: all items of both datasets, encoded in batches of SAFEGUARD_FUNNEL_BATCH_SIZE and scored, after
one warm-up pass; the median of --passes timed passes (and the best) in items/s, and items per CPU second.
It uses every core torch sees: on a shared machine the wall-clock figure is only as good as the machine is
quiet.

Datasets are read at run time (never copied into the repository; see each SOURCE.md for licence):
- XSTest (`xstest/normalized.jsonl`: text, label 1 = unsafe) under bench/policies/harmful_request.md;
- DICES-350 (`dices350/normalized_350_expert.jsonl`: context, response, label 1 = unsafe reply) under
  bench/policies/unsafe_reply.md; the item is the chatbot's reply.
For each fold, the training data is the policy's own examples plus the other folds as its golden set; the
threshold is calibrated on them exactly as in production, and recall of violations / share of safe items
cleared are measured on the held-out fold. Needs no database. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-not-secret")

import django  # noqa: E402

django.setup()

from inference_worker import embeddings, funnel  # noqa: E402
from inference_worker.models import FunnelCalibration  # noqa: E402

POLICIES = ROOT / "bench" / "policies"


def xstest(datasets: Path) -> list[tuple[str, int]]:
    rows = [json.loads(line) for line in (datasets / "xstest" / "normalized.jsonl").open()]
    return [(r["text"], int(r["label"])) for r in rows]


def dices(datasets: Path) -> list[tuple[str, int]]:
    # The funnel embeds the reply alone: with the last user turn in front, cross-validated clear rates were
    # a third of this (the embedding then mostly says what the user talked about).
    rows = [json.loads(line) for line in (datasets / "dices350" / "normalized_350_expert.jsonl").open()]
    return [(f"BOT: {r['response']}", int(r["label"])) for r in rows]


def cross_validated(
    policy_text: str, items: list[tuple[str, int]], folds: int, target_recall: float
) -> dict[str, Any]:
    """k-fold: calibrate on the policy examples + k-1 folds (the golden set), measure on the held-out fold."""
    policy_examples = funnel.training_examples(policy_text, [])
    policy_vectors = funnel.training_vectors([e.text for e in policy_examples])
    policy_labels = np.array([1 if e.violation else 0 for e in policy_examples])
    vectors = funnel.training_vectors([text for text, _ in items])
    labels = np.array([label for _, label in items])
    order = np.random.default_rng(0).permutation(len(items))
    caught = violations = cleared = safe = 0
    thresholds, methods = [], set()
    for fold in range(folds):
        held_out = order[fold::folds]
        train = np.setdiff1d(order, held_out)
        train_vectors = np.vstack([policy_vectors, vectors[train]])
        train_labels = np.concatenate([policy_labels, labels[train]])
        calibration = funnel.calibrate(train_vectors, train_labels, target_recall)
        examples = policy_examples + [
            funnel.TrainingExample(items[i][0], bool(labels[i]), "golden") for i in train
        ]
        row = FunnelCalibration(pk=0, method=calibration.method, threshold=calibration.threshold, note="")
        fitted = funnel.fit(examples, train_vectors, row)
        assert fitted.threshold is not None, calibration.note
        scores = fitted.scores(vectors[held_out])
        passed_on = scores >= fitted.threshold
        truth = labels[held_out] == 1
        caught += int((passed_on & truth).sum())
        violations += int(truth.sum())
        cleared += int((~passed_on & ~truth).sum())
        safe += int((~truth).sum())
        thresholds.append(round(fitted.threshold, 4))
        methods.add(fitted.method)
    return {
        "items": len(items),
        "recall": round(caught / violations, 4),
        "clear_rate": round(cleared / safe, 4),
        "violations_missed": violations - caught,
        "safe_cleared": cleared,
        "thresholds": thresholds,
        "method": sorted(methods),
    }


def throughput(policy_text: str, items: list[tuple[str, int]], passes: int) -> list[tuple[float, float]]:
    """Items per wall-clock second and per CPU second (all threads) of the production scoring path
    (batched encode, classifier, nearest examples), per pass."""
    golden = [(text, "violates" if label else "safe") for text, label in items[:200]]
    examples = funnel.training_examples(policy_text, golden)
    vectors = funnel.training_vectors([e.text for e in examples])
    labels = np.array([1 if e.violation else 0 for e in examples])
    calibration = funnel.calibrate(vectors, labels, 0.98)
    row = FunnelCalibration(pk=0, method=calibration.method, threshold=calibration.threshold, note="")
    fitted = funnel.fit(examples, vectors, row)
    texts = [text for text, _ in items]
    embeddings.encode(texts)  # warm-up: oneDNN prepares kernels for each new batch shape
    rates = []
    for _ in range(passes):
        started, cpu_started = time.perf_counter(), time.process_time()
        queries = embeddings.encode(texts)
        fitted.scores(queries)
        for similarities in queries @ fitted.vectors.T:
            fitted.nearest(similarities)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        rates.append((len(texts) / wall, len(texts) / cpu))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=0, help="items per dataset (0 = all); for smoke runs")
    parser.add_argument("--target-recall", type=float, default=0.98)
    parser.add_argument("--passes", type=int, default=3, help="timed scoring passes (median reported)")
    args = parser.parse_args()

    rng = np.random.default_rng(1)
    datasets = {
        "xstest": ((POLICIES / "harmful_request.md").read_text(), xstest(args.datasets)),
        "dices350": ((POLICIES / "unsafe_reply.md").read_text(), dices(args.datasets)),
    }
    if args.limit:
        datasets = {
            name: (policy, [items[i] for i in sorted(rng.permutation(len(items))[: args.limit])])
            for name, (policy, items) in datasets.items()
        }
    all_items = [item for _, items in datasets.values() for item in items]
    result: dict[str, Any] = {
        "bench": "funnel",
        "model": embeddings.model_name(),
        "precision": "bf16" if embeddings.uses_bf16() else "fp32",
        "cpus": os.cpu_count(),
        "target_recall": args.target_recall,
        "folds": args.folds,
    }
    rates = sorted(throughput(datasets["xstest"][0], all_items, args.passes))
    result["items_per_second"] = round(rates[len(rates) // 2][0], 1)
    result["items_per_second_best"] = round(rates[-1][0], 1)
    # Less sensitive to other processes than wall-clock time: on an idle machine with N cores the
    # wall-clock rate approaches N times this (torch uses every core for a batch).
    result["items_per_cpu_second"] = round(sorted(cpu for _, cpu in rates)[len(rates) // 2], 1)
    for name, (policy_text, items) in datasets.items():
        result[name] = cross_validated(policy_text, items, args.folds, args.target_recall)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
