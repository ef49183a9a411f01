"""The funnel tier's recall guarantee on data it never saw, and its throughput by text length.

    python bench/funnel.py [--datasets ../shared/datasets] [--splits 50] [--target-recall 0.98]
                           [--confidence 0.95] [--also-target 0.95] [--skip-speed]

For each data set and each of --splits random 50/50 splits: one half becomes the policy's accepted golden set
(plus the policy text's own examples), and the production code decides what it can promise
(inference_worker.funnel: hold-out split, logistic regression, proven threshold or shadow mode). The other
half plays new traffic: an item is auto-cleared when its score (highest window) is below the threshold.
Per data set:
- `splits`, `enabled_share`: share of splits on which the guarantee held, so auto-clear was on;
- `enabled_met_target_share`: of those, share whose recall on the other half met the target (the promise is
  on recall over all new items; measured on a finite half it is met a little less often:
  `expected_met_target_share_if_exchangeable` is what exchangeability predicts for these sizes);
- `pooled_recall`: violations of the other halves not cleared / all their violations, enabled splits pooled;
- `clear_rate`: safe items of the other halves cleared, all splits pooled (shadow splits clear nothing).
`--also-target` repeats this at a lower target (a smaller golden set can prove it) under `at_target_<t>`.

Speed: encode_windows + classifier per text-length bucket (`items_per_second_by_length`), interleaved with
the old path (sentence-transformers encode, truncated at 256 word pieces) as the same-run baseline.

Data sets are read at run time, never copied into the repository (see each SOURCE.md for its licence):
XSTest (`xstest/normalized.jsonl`) under bench/policies/harmful_request.md, DICES-350
(`dices350/normalized_350_expert.jsonl`, the bot's reply) under bench/policies/unsafe_reply.md.
Needs no database. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-not-secret")

import django  # noqa: E402

django.setup()

from scipy.stats import hypergeom  # noqa: E402

from inference_worker import embeddings, funnel, guarantee  # noqa: E402
from inference_worker.models import FunnelCalibration  # noqa: E402

POLICIES = ROOT / "bench" / "policies"


def xstest(datasets: Path) -> list[tuple[str, int]]:
    rows = [json.loads(line) for line in (datasets / "xstest" / "normalized.jsonl").open()]
    return [(r["text"], int(r["label"])) for r in rows]


def dices(datasets: Path) -> list[tuple[str, int]]:
    # The funnel embeds the reply alone: with the conversation in front the embedding mostly says what the
    # user talked about.
    rows = [json.loads(line) for line in (datasets / "dices350" / "normalized_350_expert.jsonl").open()]
    return [(f"BOT: {r['response']}", int(r["label"])) for r in rows]


class Embedded:
    """Every text of a data set embedded once: one vector per text (training) and every window (scoring)."""

    def __init__(self, texts: list[str]) -> None:
        self.index = {text: n for n, text in enumerate(texts)}
        self.single = funnel.training_vectors(texts)
        self.windows, self.owner = funnel.scoring_windows(texts)

    def windows_of(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
        """The rows of these texts, owner = position in `texts` (a text listed twice gets its rows twice)."""
        rows_of = {n: np.flatnonzero(self.owner == n) for n in {self.index[t] for t in texts}}
        picked = [rows_of[self.index[t]] for t in texts]
        rows = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
        owner = (
            np.concatenate([np.full(len(p), k, dtype=np.int64) for k, p in enumerate(picked)])
            if picked
            else rows
        )
        return self.windows[rows], owner, len(texts)


def one_split(
    policy_text: str,
    items: list[tuple[str, int]],
    golden_half: np.ndarray,
    new_half: np.ndarray,
    embedded: Embedded,
    policy_vectors: dict[str, np.ndarray],
    target: float,
    confidence: float,
) -> dict[str, Any]:
    golden = [(items[i][0], "violates" if items[i][1] else "safe") for i in golden_half]
    examples = funnel.training_examples(policy_text, golden)
    split = funnel.calibration_split(examples, target, confidence)
    train = [examples[i] for i in split.train]

    def vector(text: str) -> np.ndarray:
        return embedded.single[embedded.index[text]] if text in embedded.index else policy_vectors[text]

    train_vectors = np.stack([vector(e.text) for e in train])
    labels = np.array([1 if e.violation else 0 for e in train], dtype=np.int64)
    calibration = funnel.calibrate(
        train_vectors,
        labels,
        embedded.windows_of([examples[i].text for i in split.held_out_violations]),
        embedded.windows_of([examples[i].text for i in split.held_out_safe]),
        target=target,
        confidence=confidence,
        violations_needed=split.violations_needed,
    )
    truth = np.array([items[i][1] for i in new_half]) == 1
    if calibration.threshold is None:
        return {"enabled": False, "violations": int(truth.sum()), "safe": int((~truth).sum()), "cleared": 0}
    row = FunnelCalibration(
        pk=0,
        method=calibration.method,
        threshold=calibration.threshold,
        note="",
        recall_lower_bound=calibration.recall_lower_bound,
        held_out_violations=calibration.held_out_violations,
        violations_needed=calibration.violations_needed,
        confidence=confidence,
    )
    fitted = funnel.fit(train, train_vectors, row)
    vectors, owner, n = embedded.windows_of([items[i][0] for i in new_half])
    scores = embeddings.max_per_owner(fitted.scores(vectors), owner, n)
    cleared = scores < calibration.threshold
    # What exchangeability predicts for this split: the threshold is the k-th lowest of n held-out scores,
    # and the other half's t violations meet the target when at most `allowed` of them fall below it.
    n, t = calibration.held_out_violations, int(truth.sum())
    k = (guarantee.allowed_misses(n, target, confidence) or 0) + 1
    allowed = int(np.floor((1 - target) * t + 1e-9))
    return {
        "expected_met": float(hypergeom.sf(k - 1, n + t, n, allowed + k)),
        "enabled": True,
        "violations": int(truth.sum()),
        "missed": int((cleared & truth).sum()),
        "safe": int((~truth).sum()),
        "cleared": int((cleared & ~truth).sum()),
        "recall": 1 - float((cleared & truth).sum()) / max(1, int(truth.sum())),
        "bound": calibration.recall_lower_bound,
        "held_out": calibration.held_out_violations,
    }


def guarantee_on_splits(
    policy_text: str, items: list[tuple[str, int]], splits: int, target: float, confidence: float
) -> dict[str, Any]:
    embedded = Embedded([text for text, _ in items])
    policy_examples = funnel.training_examples(policy_text, [])
    policy_vectors = dict(
        zip(
            [e.text for e in policy_examples],
            funnel.training_vectors([e.text for e in policy_examples]),
            strict=True,
        )
    )
    rng = np.random.default_rng(2026)
    outcomes = []
    for _ in range(splits):
        order = rng.permutation(len(items))
        half = len(items) // 2
        outcomes.append(
            one_split(
                policy_text,
                items,
                order[:half],
                order[half:],
                embedded,
                policy_vectors,
                target,
                confidence,
            )
        )
    enabled = [o for o in outcomes if o["enabled"]]
    violations = sum(o["violations"] for o in enabled)
    return {
        "items": len(items),
        "splits": splits,
        "enabled_share": round(len(enabled) / splits, 4),
        "enabled_met_target_share": round(sum(o["recall"] >= target for o in enabled) / len(enabled), 4)
        if enabled
        else None,
        # The share a finite other half should show if the promise holds exactly (it is about recall on all
        # new items; a half of ~100 violations measures it with noise, so this sits below the confidence).
        "expected_met_target_share_if_exchangeable": round(
            float(np.mean([o["expected_met"] for o in enabled])), 4
        )
        if enabled
        else None,
        "pooled_recall": round(1 - sum(o["missed"] for o in enabled) / violations, 4) if violations else None,
        "clear_rate": round(sum(o["cleared"] for o in outcomes) / sum(o["safe"] for o in outcomes), 4),
        "median_recall_lower_bound": float(np.median([o["bound"] for o in enabled])) if enabled else None,
        "median_held_out_violations": float(np.median([o["held_out"] for o in enabled])) if enabled else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--splits", type=int, default=50)
    parser.add_argument("--target-recall", type=float, default=0.98)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--also-target", type=float, default=0.95, help="a second, lower target (0: none)")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()

    datasets = {
        "xstest": ((POLICIES / "harmful_request.md").read_text(), xstest(args.datasets)),
        "dices350": ((POLICIES / "unsafe_reply.md").read_text(), dices(args.datasets)),
    }
    result: dict[str, Any] = {
        "bench": "funnel",
        "model": embeddings.model_name(),
        "precision": "bf16" if embeddings.uses_bf16() else "fp32",
        "cpus": os.cpu_count(),
        "target_recall": args.target_recall,
        "confidence": args.confidence,
    }
    for name, (policy_text, items) in datasets.items():
        result[name] = guarantee_on_splits(
            policy_text, items, args.splits, args.target_recall, args.confidence
        )
    if args.also_target:
        result[f"at_target_{args.also_target}"] = {
            name: guarantee_on_splits(policy_text, items, args.splits, args.also_target, args.confidence)
            for name, (policy_text, items) in datasets.items()
        }
    if not args.skip_speed:
        from bench.funnel_speed import speed_figures

        result.update(speed_figures())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
