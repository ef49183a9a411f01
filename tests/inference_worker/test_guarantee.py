"""The statistics behind auto-clear, against hand-worked numbers and a simulation. Pure: no services."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta as beta_dist

from inference_worker import guarantee


def test_it_needs_149_held_out_violations_for_098_recall_at_95_percent() -> None:
    # 0.98^148 = 0.0505 > 0.05: even the lowest of 148 scores may sit above 2% of violations too often.
    assert 0.98**148 > 0.05 > 0.98**149
    assert guarantee.violations_needed(0.98, 0.95) == 149
    assert guarantee.allowed_misses(148, 0.98, 0.95) is None
    assert guarantee.allowed_misses(149, 0.98, 0.95) == 0


def test_the_bound_matches_the_hand_worked_order_statistic() -> None:
    # Zero misses of n: the miss rate's 95% upper bound solves (1 - p)^n = 0.05.
    assert guarantee.recall_lower_bound(0, 149, 0.95) == pytest.approx(0.05 ** (1 / 149))

    # One miss may be allowed once P(Binomial(n, 0.02) <= 1) <= 0.05: first at n = 236.
    def p_at_most_one(n: int) -> float:
        return 0.98**n + n * 0.02 * 0.98 ** (n - 1)

    assert p_at_most_one(235) > 0.05 >= p_at_most_one(236)
    assert guarantee.allowed_misses(235, 0.98, 0.95) == 0
    assert guarantee.allowed_misses(236, 0.98, 0.95) == 1
    assert guarantee.recall_lower_bound(1, 236, 0.95) >= 0.98 > guarantee.recall_lower_bound(1, 235, 0.95)


def test_the_threshold_is_the_order_statistic_and_ties_are_not_cleared() -> None:
    scores = np.array([0.9, 0.1, 0.3, 0.3, 0.7] + [0.8] * 295)
    proven = guarantee.threshold_with_guarantee(scores, 0.98, 0.95)
    assert proven is not None
    # 300 held out allow one miss (see above): the threshold is the 2nd lowest score, 0.3 (tied with the 3rd).
    assert guarantee.allowed_misses(300, 0.98, 0.95) == 1
    assert proven.threshold == 0.3
    assert proven.misses == 1  # only 0.1 is strictly below
    assert proven.recall_lower_bound == pytest.approx(guarantee.recall_lower_bound(1, 300, 0.95))


def test_too_few_violations_prove_nothing() -> None:
    assert guarantee.threshold_with_guarantee(np.linspace(0, 1, 148), 0.98, 0.95) is None
    assert guarantee.threshold_with_guarantee(np.array([]), 0.98, 0.95) is None


def test_recall_meets_the_target_on_new_items_at_least_as_often_as_promised() -> None:
    """Simulated held-out sets and new violations from one score distribution: the promise holds."""
    rng = np.random.default_rng(7)
    target, confidence, n, trials = 0.95, 0.9, 120, 4000
    met = 0
    for _ in range(trials):
        proven = guarantee.threshold_with_guarantee(rng.beta(2, 5, n), target, confidence)
        assert proven is not None
        true_recall = 1 - beta_dist.cdf(proven.threshold, 2, 5)
        met += true_recall >= target
    share = met / trials
    standard_error = math.sqrt(confidence * (1 - confidence) / trials)
    assert share >= confidence - 3 * standard_error


def test_the_reasoner_cutoff_is_tested_high_then_medium_then_low() -> None:
    violations = [("violates", "high")] * 300
    cutoff = guarantee.confidence_cutoff_with_guarantee(violations, 0.98, 0.95)
    assert (cutoff.min_confidence, cutoff.misses, cutoff.n) == ("low", 0, 300)

    # Two highly confident "safe" calls on violations: 2 of 300 breaks 0.98 at 95%, so nothing is proven,
    # and lower levels are not even tried.
    called_safe = [("safe", "high")] * 2 + [("violates", "high")] * 298
    assert guarantee.confidence_cutoff_with_guarantee(called_safe, 0.98, 0.95).min_confidence == ""

    # One low-confidence "safe" call: high and medium hold, low does not.
    low_safe = [("safe", "low")] * 4 + [("violates", "high")] * 296
    cutoff = guarantee.confidence_cutoff_with_guarantee(low_safe, 0.98, 0.95)
    assert cutoff.min_confidence == "medium"
    assert cutoff.misses == 0

    assert guarantee.confidence_cutoff_with_guarantee(violations[:100], 0.98, 0.95).min_confidence == ""
