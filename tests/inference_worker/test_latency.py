"""Engine latency in 10% buckets per version and hour (inference_worker/latency.py): the metrics page's p50
and p95 without sorting a day of engine calls."""

from __future__ import annotations

import random
import statistics
from datetime import timedelta

import pytest
from django.db.models import Sum
from django.utils import timezone

from inference_worker import latency
from inference_worker.models import EngineLatencyHour
from inference_worker.runner import EngineConfig
from moderation.models import TriageResult
from policies.models import Policy
from tests.inference_worker.test_triage import cases_for, triage


@pytest.mark.parametrize("ms", [0, 1, 9, 250, 1234, 119_999])
def test_a_buckets_middle_is_within_five_percent_of_any_latency_in_it(ms: int) -> None:
    middle = latency.bucket_middle_ms(latency.bucket_of(ms))
    assert abs((middle + 1) / (ms + 1) - 1) < 0.05 + 1e-9


def test_it_estimates_percentiles_within_five_percent_and_compacts_without_losing_calls(
    policy: Policy,
) -> None:
    cases = cases_for(policy, *[f"post {n}" for n in range(3)])
    rng = random.Random(7)
    latencies = [round(rng.lognormvariate(6.5, 0.6)) for _ in range(600)]
    common = {"tier": "safeguard", "verdict": "safe"}
    answered = TriageResult.objects.bulk_create(
        [TriageResult(case=cases[n % 3], latency_ms=ms, **common) for n, ms in enumerate(latencies)]
    )
    ignored = TriageResult.objects.bulk_create(
        [
            TriageResult(case=cases[0], latency_ms=5, error="engine unavailable", **common),
            TriageResult(case=cases[0], latency_ms=5, tier="funnel", verdict="safe"),
        ]
    )
    # In batches, as triage saves them: a row per batch, version, hour and bucket.
    for start in range(0, len(answered), 100):
        latency.engine_latency_add([r.pk for r in answered[start : start + 100]] + [r.pk for r in ignored])
    version_ids = [cases[0].policy_version_id]
    since = timezone.now() - timedelta(hours=24)
    before = latency.latency_percentiles(version_ids, since)
    rows_before = EngineLatencyHour.objects.count()
    latency.engine_latency_compact()
    assert EngineLatencyHour.objects.count() < rows_before
    assert EngineLatencyHour.objects.aggregate(n=Sum("calls"))["n"] == 600  # errors and funnel scores aside
    figures = latency.latency_percentiles(version_ids, since)
    assert figures == before and figures["calls"] == 600
    latency.engine_latency_recount()
    assert latency.latency_percentiles(version_ids, since) == figures
    exact = statistics.quantiles(latencies, n=100, method="inclusive")
    assert figures["p50_ms"] == pytest.approx(exact[49], rel=0.06)
    assert figures["p95_ms"] == pytest.approx(exact[94], rel=0.06)


def test_triage_counts_its_engine_calls_in(policy: Policy, engine_config: EngineConfig) -> None:
    triage(cases_for(policy, "buy zorblax now", "hello there"), engine_config)
    calls = TriageResult.objects.filter(error="").exclude(tier="funnel").count()
    assert calls >= 2
    assert EngineLatencyHour.objects.aggregate(n=Sum("calls"))["n"] == calls
