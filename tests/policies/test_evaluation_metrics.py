"""Evaluation metrics against confusion matrices worked out by hand."""

from __future__ import annotations

import pytest

from policies.evaluation_metrics import (
    ItemResult,
    confusion_of,
    evaluation_metrics,
    metric_deltas,
    percentile,
)


def items(*pairs: tuple[str, str, int]) -> list[ItemResult]:
    """(expected, verdict, count) -> that many results."""
    return [ItemResult(expected=e, verdict=v) for e, v, n in pairs for _ in range(n)]


def test_it_computes_the_metrics_of_a_hand_made_confusion_matrix() -> None:
    # TP 6, FN 2, FP 1, TN 11 (20 items). Worked out by hand:
    # accuracy 17/20 = .85; precision 6/7; recall 6/8 = .75; F1 = 2*(6/7)(.75)/((6/7)+.75) = 0.8;
    # FPR 1/12; kappa: po .85, pe = (8/20)(7/20) + (12/20)(13/20) = .14 + .39 = .53 -> (.85-.53)/.47.
    results = items(
        ("violates", "violates", 6), ("violates", "safe", 2), ("safe", "violates", 1), ("safe", "safe", 11)
    )
    m = evaluation_metrics(results)
    assert m["confusion"] == {
        "true_positive": 6,
        "false_positive": 1,
        "true_negative": 11,
        "false_negative": 2,
        "undetermined_positive": 0,
        "undetermined_negative": 0,
    }
    assert m["accuracy"] == pytest.approx(0.85)
    assert m["precision"] == pytest.approx(6 / 7)
    assert m["recall"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.8)
    assert m["false_positive_rate"] == pytest.approx(1 / 12)
    assert m["kappa"] == pytest.approx(0.32 / 0.47)
    assert m["undetermined_rate"] == 0


def test_it_counts_undetermined_as_wrong_and_as_missed_violations_but_never_as_false_positives() -> None:
    # TP 2, FN 1, undetermined-positive 1, TN 3, undetermined-negative 1 (8 items).
    # accuracy 5/8; precision 2/2; recall 2/4; FPR 0/4; undetermined 2/8;
    # kappa: po 5/8, predicted violates 2/8, predicted safe 4/8, pe = (4/8)(2/8) + (4/8)(4/8) = 3/8
    # -> (5/8 - 3/8) / (5/8) = 0.4.
    results = items(
        ("violates", "violates", 2),
        ("violates", "safe", 1),
        ("violates", "undetermined", 1),
        ("safe", "safe", 3),
        ("safe", "undetermined", 1),
    )
    m = evaluation_metrics(results)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["false_positive_rate"] == 0
    assert m["undetermined_rate"] == pytest.approx(0.25)
    assert m["kappa"] == pytest.approx(0.4)


def test_it_reports_unmeasurable_ratios_as_none_when_there_are_no_positives() -> None:
    m = evaluation_metrics(items(("safe", "safe", 3), ("safe", "violates", 1)))
    assert m["recall"] is None
    assert m["f1"] is None
    assert m["precision"] == 0
    assert m["false_positive_rate"] == pytest.approx(0.25)
    assert m["accuracy"] == pytest.approx(0.75)


def test_it_survives_a_run_where_every_verdict_is_undetermined() -> None:
    m = evaluation_metrics(items(("violates", "undetermined", 2), ("safe", "undetermined", 2)))
    assert m["accuracy"] == 0
    assert m["precision"] is None
    assert m["recall"] == 0
    assert m["f1"] is None
    assert m["undetermined_rate"] == 1
    assert m["kappa"] == 0  # po 0, pe 0


def test_it_survives_an_empty_run() -> None:
    m = evaluation_metrics([])
    assert m["total"] == 0
    assert m["accuracy"] is None and m["kappa"] is None and m["latency_p50_ms"] is None


def test_it_gives_no_kappa_when_chance_explains_all_agreement() -> None:
    assert evaluation_metrics(items(("safe", "safe", 4)))["kappa"] is None


def test_it_breaks_down_by_rule_and_category_and_counts_invented_citations() -> None:
    results = [
        ItemResult("violates", "violates", ["SP1"], ["SP1"], category="promo"),
        ItemResult("violates", "violates", ["SP2"], ["SP1"], category="promo"),
        ItemResult("violates", "safe", ["SP2"], [], category="links"),
        ItemResult("safe", "violates", [], ["ZZ99"], ["ZZ99"], category="links"),
    ]
    m = evaluation_metrics(results, policy_rule_ids=["SP1", "SP2", "SP3"])
    rules = {r["rule_id"]: r for r in m["rules"]}
    assert rules["SP1"] == {
        "rule_id": "SP1",
        "expected": 1,
        "cited": 2,
        "cited_correctly": 1,
        "caught": 1,
        "precision": 0.5,
        "recall": 1.0,
    }
    assert rules["SP2"]["expected"] == 2 and rules["SP2"]["caught"] == 1 and rules["SP2"]["recall"] == 0
    assert rules["SP3"]["precision"] is None and rules["SP3"]["recall"] is None
    categories = {c["category"]: c for c in m["categories"]}
    assert categories["promo"]["accuracy"] == 1.0
    assert categories["links"]["accuracy"] == 0
    assert m["hallucinated_items"] == 1 and m["hallucinated_rate"] == 0.25


def test_it_takes_nearest_rank_percentiles_of_latency_and_sums_tokens() -> None:
    results = [
        ItemResult("safe", "safe", latency_ms=ms, prompt_tokens=100, completion_tokens=10 * n)
        for n, ms in enumerate([50, 10, 40, 20, 30, 60, 70, 80, 90, 100], start=1)
    ]
    m = evaluation_metrics(results)
    assert m["latency_p50_ms"] == 50
    assert m["latency_p95_ms"] == 100
    assert m["prompt_tokens_total"] == 1000
    assert m["completion_tokens_total"] == 550
    assert percentile([], 0.5) is None


def test_it_colours_deltas_by_the_direction_of_each_metric() -> None:
    before = {"accuracy": 0.8, "false_positive_rate": 0.1, "f1": 0.7, "latency_p50_ms": 100}
    after = {"accuracy": 0.9, "false_positive_rate": 0.2, "f1": 0.7, "latency_p50_ms": None}
    deltas = {d.name: d for d in metric_deltas(before, after)}
    assert deltas["accuracy"].verdict == "better" and deltas["accuracy"].delta == pytest.approx(0.1)
    assert deltas["false_positive_rate"].verdict == "worse"
    assert deltas["f1"].verdict == "same"
    assert deltas["latency_p50_ms"].verdict == "" and deltas["latency_p50_ms"].delta is None


def test_it_builds_the_confusion_from_verdicts_it_does_not_know_as_undetermined() -> None:
    assert confusion_of([ItemResult("violates", "")]).undetermined_positive == 1
