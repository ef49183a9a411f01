"""The statistics behind every auto-clear: what a count of labelled violations lets us promise.

An auto-clear threshold is chosen on scores of labelled violations that the deployed classifier (or the
reasoning model) never trained on. If the threshold misses m of those n violations, the share of new
violations it misses is, with probability `confidence`, at most the one-sided Clopper-Pearson upper bound
for m of n (equivalently: the (m+1)-th order statistic of n exchangeable scores has a Beta(m+1, n-m)
coverage). So "recall >= 1 - that bound" holds with that confidence, whatever the score distribution.

Pure functions, no Django: the bench and the unit tests call them directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta


def miss_rate_upper_bound(misses: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound on a rate after `misses` of `n` (1.0 with no data)."""
    if n <= 0 or misses >= n:
        return 1.0
    return float(beta.ppf(confidence, misses + 1, n - misses))


def miss_rate_lower_bound(misses: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound on a rate after `misses` of `n` (0.0 with no misses)."""
    if n <= 0 or misses <= 0:
        return 0.0
    return float(beta.ppf(1 - confidence, misses, n - misses + 1))


def recall_lower_bound(misses: int, n: int, confidence: float) -> float:
    return 1.0 - miss_rate_upper_bound(misses, n, confidence)


def violations_needed(target_recall: float, confidence: float) -> int:
    """The fewest held-out violations with which any threshold can be proven: (target)^n <= 1 - confidence
    (149 at a 0.98 target and 0.95 confidence)."""
    return math.ceil(math.log(1 - confidence) / math.log(target_recall) - 1e-9)


def allowed_misses(n: int, target_recall: float, confidence: float) -> int | None:
    """The most held-out misses a threshold may have and still prove the target; None: not even zero."""
    if recall_lower_bound(0, n, confidence) < target_recall:
        return None
    misses = 0
    while misses + 1 < n and recall_lower_bound(misses + 1, n, confidence) >= target_recall:
        misses += 1
    return misses


@dataclass(frozen=True)
class GuaranteedThreshold:
    """Items scoring strictly below `threshold` may be cleared."""

    threshold: float
    misses: int  # held-out violations scoring below it
    n: int
    recall_lower_bound: float


def threshold_with_guarantee(
    violation_scores: np.ndarray, target_recall: float, confidence: float
) -> GuaranteedThreshold | None:
    """The highest threshold whose held-out misses still prove recall >= target at this confidence.

    `violation_scores` must come from the deployed scorer on violations it never trained on. None: too
    few of them to prove the target (the caller clears nothing).
    """
    n = len(violation_scores)
    allowed = allowed_misses(n, target_recall, confidence)
    if allowed is None:
        return None
    ordered = np.sort(np.asarray(violation_scores, dtype=np.float64))
    threshold = float(ordered[allowed])
    # Ties at the threshold are not cleared (strictly below clears), so misses can only be fewer.
    misses = int((ordered < threshold).sum())
    return GuaranteedThreshold(threshold, misses, n, recall_lower_bound(misses, n, confidence))


CONFIDENCE_ORDER = ("high", "medium", "low")


@dataclass(frozen=True)
class ConfidenceCutoff:
    """The lowest self-reported confidence at which a "safe" verdict may be cleared, if any."""

    min_confidence: str  # "" when no level is proven
    misses: int  # labelled violations the model called safe at or above that confidence
    n: int
    recall_lower_bound: float | None


def confidence_cutoff_with_guarantee(
    violation_verdicts: list[tuple[str, str]], target_recall: float, confidence: float
) -> ConfidenceCutoff:
    """Calibrate the reasoner's auto-clear on (verdict, confidence) pairs of labelled violations.

    Levels are tested in a fixed sequence (high, then medium, then low) and the sequence stops at the first
    level that fails, so the family of tests keeps the stated confidence without a multiplicity correction.
    """
    n = len(violation_verdicts)
    chosen = ConfidenceCutoff("", 0, n, None)
    for depth, level in enumerate(CONFIDENCE_ORDER):
        accepted = CONFIDENCE_ORDER[: depth + 1]
        misses = sum(1 for verdict, conf in violation_verdicts if verdict == "safe" and conf in accepted)
        bound = recall_lower_bound(misses, n, confidence)
        if bound < target_recall:
            break
        chosen = ConfidenceCutoff(level, misses, n, bound)
    return chosen
