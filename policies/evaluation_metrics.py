"""Metrics of an evaluation run: pure functions of its per-item results, no database.

"Positive" means the content violates the policy. The engine may answer ``undetermined`` (or fail), which
is neither verdict: it counts as wrong for accuracy, as a missed violation for recall when the example
violates, and never as a false positive. Cohen's kappa treats it as a third answer the expected labels
never give. Every ratio whose denominator is zero is ``None`` ("not measurable"), never a division error.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

VIOLATES = "violates"
SAFE = "safe"
UNDETERMINED = "undetermined"
NO_CATEGORY = "(none)"

# For comparisons: (label, True when a higher value is better).
METRIC_DIRECTIONS: dict[str, tuple[str, bool]] = {
    "accuracy": ("Accuracy", True),
    "precision": ("Precision", True),
    "recall": ("Recall", True),
    "f1": ("F1", True),
    "kappa": ("Cohen's kappa", True),
    "false_positive_rate": ("False-positive rate", False),
    "undetermined_rate": ("Undetermined rate", False),
    "hallucinated_rate": ("Hallucinated citations", False),
    "latency_p50_ms": ("Latency p50 (ms)", False),
    "latency_p95_ms": ("Latency p95 (ms)", False),
    "completion_tokens_mean": ("Completion tokens (mean)", False),
}


@dataclass(frozen=True)
class ItemResult:
    expected: str  # violates | safe
    verdict: str  # violates | safe | undetermined ("" or anything else counts as undetermined)
    expected_rule_ids: Sequence[str] = ()
    rule_ids: Sequence[str] = ()
    hallucinated_rule_ids: Sequence[str] = ()
    category: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: int | None = None


@dataclass(frozen=True)
class Confusion:
    true_positive: int = 0
    false_positive: int = 0
    true_negative: int = 0
    false_negative: int = 0
    undetermined_positive: int = 0  # expected violates, no verdict
    undetermined_negative: int = 0  # expected safe, no verdict

    @property
    def total(self) -> int:
        return (
            self.true_positive
            + self.false_positive
            + self.true_negative
            + self.false_negative
            + self.undetermined_positive
            + self.undetermined_negative
        )

    @property
    def positives(self) -> int:
        return self.true_positive + self.false_negative + self.undetermined_positive

    @property
    def negatives(self) -> int:
        return self.true_negative + self.false_positive + self.undetermined_negative

    @property
    def undetermined(self) -> int:
        return self.undetermined_positive + self.undetermined_negative


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def confusion_of(items: Iterable[ItemResult]) -> Confusion:
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        positive = item.expected == VIOLATES
        if item.verdict == VIOLATES:
            counts["true_positive" if positive else "false_positive"] += 1
        elif item.verdict == SAFE:
            counts["false_negative" if positive else "true_negative"] += 1
        else:
            counts["undetermined_positive" if positive else "undetermined_negative"] += 1
    return Confusion(**counts)


def classification_metrics(confusion: Confusion) -> dict[str, float | None]:
    c = confusion
    n = c.total
    precision = ratio(c.true_positive, c.true_positive + c.false_positive)
    recall = ratio(c.true_positive, c.positives)
    f1: float | None = None
    if precision is not None and recall is not None:
        f1 = ratio(2 * precision * recall, precision + recall) if precision + recall else 0.0
    return {
        "accuracy": ratio(c.true_positive + c.true_negative, n),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_positive_rate": ratio(c.false_positive, c.negatives),
        "kappa": cohen_kappa(c),
        "undetermined_rate": ratio(c.undetermined, n),
    }


def cohen_kappa(c: Confusion) -> float | None:
    """Agreement between expected labels and verdicts beyond chance; None when chance explains all."""
    n = c.total
    if not n:
        return None
    observed = (c.true_positive + c.true_negative) / n
    predicted_positive = (c.true_positive + c.false_positive) / n
    predicted_negative = (c.true_negative + c.false_negative) / n
    # The expected labels are never "undetermined", so that answer adds nothing to chance agreement.
    chance = (c.positives / n) * predicted_positive + (c.negatives / n) * predicted_negative
    if math.isclose(chance, 1.0):
        return None
    return (observed - chance) / (1 - chance)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def rule_breakdown(items: Sequence[ItemResult], policy_rule_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Per rule: examples expected to break it, verdicts citing it, and both (citation precision/recall)."""
    rules = list(dict.fromkeys([*policy_rule_ids, *(r for i in items for r in i.expected_rule_ids)]))
    rows = []
    for rule in rules:
        expected = [i for i in items if rule in i.expected_rule_ids]
        cited = [i for i in items if rule in i.rule_ids]
        both = sum(1 for i in cited if rule in i.expected_rule_ids)
        rows.append(
            {
                "rule_id": rule,
                "expected": len(expected),
                "cited": len(cited),
                "cited_correctly": both,
                "caught": sum(1 for i in expected if i.verdict == VIOLATES),
                "precision": ratio(both, len(cited)),
                "recall": ratio(both, len(expected)),
            }
        )
    return rows


def category_breakdown(items: Sequence[ItemResult]) -> list[dict[str, Any]]:
    groups: dict[str, list[ItemResult]] = defaultdict(list)
    for item in items:
        groups[item.category or NO_CATEGORY].append(item)
    rows = []
    for category in sorted(groups):
        confusion = confusion_of(groups[category])
        rows.append(
            {
                "category": category,
                "total": confusion.total,
                "confusion": confusion.__dict__,
                **classification_metrics(confusion),
            }
        )
    return rows


def evaluation_metrics(items: Sequence[ItemResult], *, policy_rule_ids: Sequence[str] = ()) -> dict[str, Any]:
    """Everything the run page and the comparison show, as plain JSON-able values."""
    confusion = confusion_of(items)
    latencies = [i.latency_ms for i in items if i.latency_ms is not None]
    completion = [i.completion_tokens for i in items if i.completion_tokens is not None]
    prompt = [i.prompt_tokens for i in items if i.prompt_tokens is not None]
    hallucinating = sum(1 for i in items if i.hallucinated_rule_ids)
    return {
        "total": confusion.total,
        "confusion": confusion.__dict__,
        **classification_metrics(confusion),
        "hallucinated_rate": ratio(hallucinating, len(items)),
        "hallucinated_items": hallucinating,
        "prompt_tokens_total": sum(prompt),
        "completion_tokens_total": sum(completion),
        "completion_tokens_mean": ratio(sum(completion), len(completion)),
        "latency_p50_ms": percentile(latencies, 0.50),
        "latency_p95_ms": percentile(latencies, 0.95),
        "rules": rule_breakdown(items, policy_rule_ids),
        "categories": category_breakdown(items),
    }


@dataclass(frozen=True)
class MetricDelta:
    name: str
    label: str
    before: float | None
    after: float | None
    delta: float | None
    # "better", "worse", "same" or "" (not comparable)
    verdict: str


def metric_deltas(before: dict[str, Any], after: dict[str, Any]) -> list[MetricDelta]:
    rows = []
    for name, (label, higher_is_better) in METRIC_DIRECTIONS.items():
        a, b = before.get(name), after.get(name)
        if a is None or b is None:
            rows.append(MetricDelta(name, label, a, b, None, ""))
            continue
        delta = b - a
        if math.isclose(delta, 0.0, abs_tol=1e-9):
            verdict = "same"
        else:
            verdict = "better" if (delta > 0) == higher_is_better else "worse"
        rows.append(MetricDelta(name, label, a, b, delta, verdict))
    return rows
