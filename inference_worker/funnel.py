"""The funnel tier: a fast classifier on sentence embeddings that clears obviously safe items.

Training data per policy version: the labelled examples in the policy text plus the policy's accepted golden
set. With at least MIN_PER_CLASS_FOR_LOGISTIC labels of each class the classifier is a logistic regression,
below that a similarity-weighted vote of the nearest labelled examples. Either way p(violation) comes with the
nearest labelled examples as its explanation.

The threshold is calibrated for a target recall of violations on cross-validated scores of the training
data (out-of-fold for the regression, leave-one-out for the neighbours): items scoring below it are cleared,
the rest go on to the reasoner (or to humans). With fewer than MIN_PER_CLASS_FOR_CALIBRATION labels of a
class there is nothing to calibrate on, and the funnel clears nothing.

Database work (fingerprints, training data, calibration rows) happens in `funnel_prepare`; `works_score`
only encodes and scores, so the triage pump runs it in a thread while it keeps saving engine results.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from django.conf import settings
from django.db import IntegrityError, connection, transaction

from inference_worker import embeddings
from inference_worker.models import FunnelCalibration
from inference_worker.policy_examples import policy_examples_parse
from moderation.models import Policy
from reviews import audit
from reviews.models import Decision, GoldenExample

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

    from inference_worker.services import CaseWork

MIN_PER_CLASS_FOR_CALIBRATION = 2
# Below this many labels of either class a regression overfits 384 dimensions; neighbours do better.
MIN_PER_CLASS_FOR_LOGISTIC = 8
CV_FOLDS = 5
LOGISTIC_C = 4.0
NEIGHBOURS = 5
# Similarity differences of a few hundredths matter between MiniLM embeddings; this sharpens the vote.
NEIGHBOUR_TEMPERATURE = 0.05
NEAREST_SHOWN = 3
NEAREST_TEXT_CHARS = 300
FITTED_CACHE_SIZE = 32
EMBEDDING_CACHE_SIZE = 20_000

ENGINE_NAME = "sentence-transformers"


@dataclass(frozen=True)
class TrainingExample:
    text: str
    violation: bool
    origin: str  # "policy" (its Examples section) or "golden"


@dataclass(frozen=True)
class Calibration:
    method: str
    threshold: float | None
    measured_recall: float | None
    clear_rate: float | None
    violations: int
    safe: int
    note: str


@dataclass
class FittedFunnel:
    """A policy version's classifier and threshold, for one state of its golden set."""

    calibration_id: int
    method: str
    threshold: float | None
    note: str
    examples: list[TrainingExample]
    vectors: np.ndarray
    labels: np.ndarray
    regression: LogisticRegression | None

    @property
    def calibrated(self) -> bool:
        return self.threshold is not None

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        if self.regression is not None:
            return np.asarray(self.regression.predict_proba(vectors)[:, 1])
        return neighbour_scores(self.vectors, self.labels, vectors)

    def nearest(self, similarities: np.ndarray) -> list[dict[str, Any]]:
        order = np.argsort(-similarities)[:NEAREST_SHOWN]
        return [
            {
                "text": self.examples[i].text[:NEAREST_TEXT_CHARS],
                "label": "violation" if self.examples[i].violation else "safe",
                "origin": self.examples[i].origin,
                "similarity": round(float(similarities[i]), 3),
            }
            for i in order
        ]


@dataclass(frozen=True)
class FunnelScore:
    """What the funnel said about one item; saved as a TriageResult of tier `funnel`."""

    p_violation: float | None
    threshold: float | None
    cleared: bool
    method: str
    calibration_id: int
    note: str
    nearest: list[dict[str, Any]]
    latency_ms: int

    def as_json(self) -> dict[str, Any]:
        return {
            "p_violation": self.p_violation,
            "threshold": self.threshold,
            "method": FunnelCalibration.Method(self.method).label,
            "calibration_id": self.calibration_id,
            "note": self.note,
            "nearest": self.nearest,
        }

    @property
    def explanation(self) -> str:
        if self.p_violation is None or self.threshold is None:
            return f"funnel passed it on: {self.note}"
        if not self.cleared and self.p_violation < self.threshold:
            return (
                f"p(violation) {self.p_violation:.3f} is below the calibrated threshold "
                f"{self.threshold:.3f}, "
                "but the item looks like a prompt-injection attempt: passed on"
            )
        where = "below" if self.cleared else "at or above"
        return f"p(violation) {self.p_violation:.3f} is {where} the calibrated threshold {self.threshold:.3f}"


# --- scoring and calibration (pure numpy / scikit-learn) ------------------------------------------------


def neighbour_scores(
    train: np.ndarray, labels: np.ndarray, queries: np.ndarray, *, leave_one_out: bool = False
) -> np.ndarray:
    """p(violation) as a similarity-weighted vote of the NEIGHBOURS most similar labelled examples."""
    similarities = queries @ train.T
    if leave_one_out:
        np.fill_diagonal(similarities, -np.inf)
    k = min(NEIGHBOURS, train.shape[0] - (1 if leave_one_out else 0))
    nearest = np.argpartition(-similarities, k - 1, axis=1)[:, :k]
    chosen = np.take_along_axis(similarities, nearest, axis=1)
    weights = np.exp((chosen - chosen.max(axis=1, keepdims=True)) / NEIGHBOUR_TEMPERATURE)
    return np.asarray((weights * labels[nearest]).sum(axis=1) / weights.sum(axis=1))


def logistic_fit(vectors: np.ndarray, labels: np.ndarray) -> LogisticRegression:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=LOGISTIC_C, class_weight="balanced", max_iter=2000).fit(vectors, labels)


def cross_validated_scores(vectors: np.ndarray, labels: np.ndarray, method: str) -> np.ndarray:
    """Each example scored by a classifier that never saw it."""
    if method == FunnelCalibration.Method.NEAREST_NEIGHBOURS:
        return neighbour_scores(vectors, labels, vectors, leave_one_out=True)
    from sklearn.model_selection import StratifiedKFold

    folds = min(CV_FOLDS, int(labels.sum()), int((1 - labels).sum()))
    scores = np.zeros(len(labels))
    for train, held_out in StratifiedKFold(folds, shuffle=True, random_state=0).split(vectors, labels):
        scores[held_out] = logistic_fit(vectors[train], labels[train]).predict_proba(vectors[held_out])[:, 1]
    return scores


def threshold_for_recall(
    scores: np.ndarray, labels: np.ndarray, target_recall: float
) -> tuple[float, float, float]:
    """The highest threshold that passes on target_recall of the violations (score >= threshold), with one
    miss held in reserve.

    A threshold that misses exactly the allowed share of these cross-validated scores meets the target on
    new items only about half the time: 5-fold on XSTest / DICES-350 it held out 0.975 / 0.977 at a 0.98
    target; one miss fewer gave 0.980 / 0.989 (clear rates 0.404 -> 0.356 and 0.109 -> 0.074).
    Returns (threshold, measured recall, share of safe examples cleared).
    """
    violating = np.sort(scores[labels == 1])
    misses_allowed = max(0, math.floor((1 - target_recall) * len(violating) + 1e-9) - 1)
    threshold = float(violating[misses_allowed])
    recall = float((violating >= threshold).mean())
    safe = scores[labels == 0]
    return threshold, recall, float((safe < threshold).mean())


def method_for(violations: int, safe: int) -> str:
    if min(violations, safe) < MIN_PER_CLASS_FOR_CALIBRATION:
        return FunnelCalibration.Method.UNCALIBRATED
    if min(violations, safe) < MIN_PER_CLASS_FOR_LOGISTIC:
        return FunnelCalibration.Method.NEAREST_NEIGHBOURS
    return FunnelCalibration.Method.LOGISTIC_REGRESSION


def calibrate(vectors: np.ndarray, labels: np.ndarray, target_recall: float) -> Calibration:
    violations, safe = int(labels.sum()), int(len(labels) - labels.sum())
    method = method_for(violations, safe)
    if method == FunnelCalibration.Method.UNCALIBRATED:
        note = (
            f"not calibrated: needs at least {MIN_PER_CLASS_FOR_CALIBRATION} labelled violations and "
            f"{MIN_PER_CLASS_FOR_CALIBRATION} safe examples (policy Examples or accepted golden set); "
            f"has {violations} and {safe}"
        )
        return Calibration(method, None, None, None, violations, safe, note)
    scores = cross_validated_scores(vectors, labels, method)
    threshold, recall, clear_rate = threshold_for_recall(scores, labels, target_recall)
    return Calibration(method, threshold, recall, clear_rate, violations, safe, "")


def fit(examples: list[TrainingExample], vectors: np.ndarray, calibration: FunnelCalibration) -> FittedFunnel:
    labels = np.array([1 if e.violation else 0 for e in examples], dtype=np.int64)
    regression = None
    if calibration.method == FunnelCalibration.Method.LOGISTIC_REGRESSION:
        regression = logistic_fit(vectors, labels)
    return FittedFunnel(
        calibration_id=calibration.pk,
        method=calibration.method,
        threshold=calibration.threshold,
        note=calibration.note,
        examples=examples,
        vectors=vectors,
        labels=labels,
        regression=regression,
    )


# --- training data, fingerprints and the per-process caches ---------------------------------------------

_cache_lock = threading.Lock()
_fitted: OrderedDict[tuple[object, ...], FittedFunnel] = OrderedDict()
_vectors: OrderedDict[str, np.ndarray] = OrderedDict()


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def training_vectors(texts: list[str]) -> np.ndarray:
    """Embeddings of training texts; a golden set that grows by one example re-encodes one text."""
    keys = [_text_key(t) for t in texts]
    with _cache_lock:
        missing = list(dict.fromkeys(k for k in keys if k not in _vectors))
    by_key = dict(zip(keys, texts, strict=True))
    fresh = embeddings.encode([by_key[k] for k in missing])
    with _cache_lock:
        for key, vector in zip(missing, fresh, strict=True):
            _vectors[key] = vector
        rows = []
        for key in keys:
            _vectors.move_to_end(key)
            rows.append(_vectors[key])
        while len(_vectors) > EMBEDDING_CACHE_SIZE:
            _vectors.popitem(last=False)
    return np.stack(rows) if rows else np.zeros((0, embeddings.DIMENSIONS), dtype=np.float32)


GOLDEN_FINGERPRINT_SQL = """
    SELECT policy_id,
           encode(sha256(convert_to(string_agg(id || ':' || text_hash || ':' || expected_label, ','
                                                ORDER BY id), 'UTF8')), 'hex')
    FROM reviews_goldenexample
    WHERE status = %s AND policy_id = ANY(%s)
    GROUP BY policy_id
"""
EMPTY_GOLDEN_FINGERPRINT = hashlib.sha256(b"").hexdigest()


def golden_fingerprint(rows: list[tuple[int, str, str]]) -> str:
    """The same sha256 as GOLDEN_FINGERPRINT_SQL, over (id, text_hash, expected_label) in id order."""
    joined = ",".join(f"{pk}:{text_hash}:{label}" for pk, text_hash, label in sorted(rows))
    return hashlib.sha256(joined.encode()).hexdigest()


def golden_fingerprints(policy_ids: list[int]) -> dict[int, str]:
    """One query for every policy of a batch; a policy without accepted examples gets the empty digest."""
    with connection.cursor() as cursor:
        cursor.execute(GOLDEN_FINGERPRINT_SQL, [GoldenExample.Status.ACCEPTED, policy_ids])
        found = dict(cursor.fetchall())
    return {pk: found.get(pk, EMPTY_GOLDEN_FINGERPRINT) for pk in policy_ids}


def target_recall_for(policy: Policy) -> float:
    if policy.funnel_target_recall is not None:
        return policy.funnel_target_recall
    return settings.SAFEGUARD_FUNNEL_TARGET_RECALL


def training_examples(policy_text: str, golden: list[tuple[str, str]]) -> list[TrainingExample]:
    """The policy's examples and the golden set, one per text (the golden label wins a disagreement)."""
    by_text: dict[str, TrainingExample] = {}
    for example in policy_examples_parse(policy_text).examples:
        by_text[example.text] = TrainingExample(example.text, example.violation, "policy")
    for text, label in golden:
        by_text[text] = TrainingExample(text, label == Decision.Label.VIOLATES, "golden")
    return list(by_text.values())


def _fitted_build(
    policy_version_id: int, policy_id: int, policy_text: str, target: float
) -> tuple[str, FittedFunnel]:
    """Load the training data, reuse or compute the calibration, fit. Returns (fingerprint, fitted)."""
    golden_rows = list(
        GoldenExample.objects.filter(policy_id=policy_id, status=GoldenExample.Status.ACCEPTED).values_list(
            "id", "text_hash", "expected_label", "text"
        )
    )
    fingerprint = golden_fingerprint([(pk, text_hash, label) for pk, text_hash, label, _ in golden_rows])
    examples = training_examples(policy_text, [(text, label) for _, _, label, text in golden_rows])
    key = {
        "policy_version_id": policy_version_id,
        "golden_fingerprint": fingerprint,
        "target_recall": target,
        "embedding_model": embeddings.model_name(),
    }
    labels = np.array([1 if e.violation else 0 for e in examples], dtype=np.int64)
    method = method_for(int(labels.sum()), int(len(labels) - labels.sum()))
    vectors = (
        training_vectors([e.text for e in examples])
        if method != FunnelCalibration.Method.UNCALIBRATED
        else np.zeros((len(examples), embeddings.DIMENSIONS), dtype=np.float32)
    )
    stored = FunnelCalibration.objects.filter(**key).first()
    if stored is None:
        measured = calibrate(vectors, labels, target)
        try:
            with transaction.atomic():
                stored = FunnelCalibration.objects.create(
                    **key,
                    method=measured.method,
                    threshold=measured.threshold,
                    measured_recall=measured.measured_recall,
                    clear_rate=measured.clear_rate,
                    policy_examples=sum(1 for e in examples if e.origin == "policy"),
                    golden_examples=sum(1 for e in examples if e.origin == "golden"),
                    violations=measured.violations,
                    safe=measured.safe,
                    note=measured.note[:300],
                )
                audit.record(
                    "funnel.calibrated",
                    actor=None,
                    obj=stored,
                    payload={
                        "policy_version": policy_version_id,
                        "golden_fingerprint": fingerprint,
                        "method": stored.method,
                        "threshold": stored.threshold,
                        "measured_recall": stored.measured_recall,
                        "clear_rate": stored.clear_rate,
                        "target_recall": target,
                    },
                )
        except IntegrityError:  # another worker calibrated the same state first; same data, same result
            stored = FunnelCalibration.objects.get(**key)
    return fingerprint, fit(examples, vectors, stored)


def funnel_prepare(works: list[CaseWork]) -> dict[int, FittedFunnel]:
    """The fitted funnel of each policy version in the batch, retrained when its golden set changed."""
    versions = {w.policy_version_id: w for w in works}
    if not versions:
        return {}
    fingerprints = golden_fingerprints(sorted({w.policy.pk for w in versions.values()}))
    model = (os.getpid(), embeddings.model_path())
    fitted: dict[int, FittedFunnel] = {}
    for version_id, work in versions.items():
        target = target_recall_for(work.policy)
        key = (*model, version_id, fingerprints[work.policy.pk], target)
        with _cache_lock:
            cached = _fitted.get(key)
        if cached is None:
            fingerprint, cached = _fitted_build(version_id, work.policy.pk, work.policy_text, target)
            with _cache_lock:
                _fitted[(*model, version_id, fingerprint, target)] = cached
                while len(_fitted) > FITTED_CACHE_SIZE:
                    _fitted.popitem(last=False)
        fitted[version_id] = cached
    return fitted


def works_score(works: list[CaseWork], fitted: dict[int, FittedFunnel]) -> list[CaseWork]:
    """The works with their funnel scores attached: one batched encode, no database access."""
    started = time.monotonic()
    scorable = [w for w in works if fitted[w.policy_version_id].calibrated]
    vectors = embeddings.encode([w.content for w in scorable])
    row = {w.case_id: n for n, w in enumerate(scorable)}
    p_violation: dict[int, float] = {}
    nearest: dict[int, list[dict[str, Any]]] = {}
    for version_id, funnel in fitted.items():
        mine = [w for w in scorable if w.policy_version_id == version_id]
        if not mine:
            continue
        queries = vectors[[row[w.case_id] for w in mine]]
        similarities = queries @ funnel.vectors.T
        for work, score, sims in zip(mine, funnel.scores(queries), similarities, strict=True):
            p_violation[work.case_id] = round(float(score), 4)
            nearest[work.case_id] = funnel.nearest(sims)
    latency_ms = round((time.monotonic() - started) * 1000 / max(1, len(scorable)))
    scored = []
    for work in works:
        funnel = fitted[work.policy_version_id]
        p = p_violation.get(work.case_id)
        threshold = funnel.threshold
        # A likely injection attempt goes on to the reasoner (and then a human) whatever its score: the
        # funnel judges what the text is about, not what it tries to make a model do.
        cleared = p is not None and threshold is not None and p < threshold and not work.injection_signals
        score = FunnelScore(
            p_violation=p,
            threshold=round(threshold, 4) if threshold is not None else None,
            cleared=cleared,
            method=funnel.method,
            calibration_id=funnel.calibration_id,
            note=funnel.note,
            nearest=nearest.get(work.case_id, []),
            latency_ms=latency_ms if p is not None else 0,
        )
        scored.append(replace(work, funnel=score))
    return scored


def works_funnel(works: list[CaseWork]) -> list[CaseWork]:
    """Prepare and score on the calling thread. Appeals skip the funnel: they always reach a human."""
    candidates = [w for w in works if not w.is_appeal]
    scored = {w.case_id: w for w in works_score(candidates, funnel_prepare(candidates))}
    return [scored.get(w.case_id, w) for w in works]


_executor_lock = threading.Lock()
_executor: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None


def funnel_executor() -> concurrent.futures.ThreadPoolExecutor:
    """One scoring thread per process (torch parallelises inside a batch); rebuilt after a fork."""
    global _executor
    with _executor_lock:
        if _executor is None or _executor[0] != os.getpid():
            _executor = (os.getpid(), concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="funnel"))
        return _executor[1]
