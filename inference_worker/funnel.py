"""The funnel tier: a fast classifier on sentence embeddings that clears obviously safe items.

Training data per policy version: the labelled examples in the policy text plus the policy's accepted golden
set. With at least MIN_PER_CLASS_FOR_LOGISTIC training labels of each class the classifier is a logistic
regression, below that a similarity-weighted vote of the nearest labelled examples. Either way p(violation)
comes with the nearest labelled examples as its explanation. A text longer than the embedding model's window
is scored on every window (overlapping); its score is the highest, so harmless padding cannot lower it.

Auto-clear is a promise, so the threshold must be proven (inference_worker/guarantee.py): part of the golden
violations is held out (chosen by a hash of the text, never by score), the regression trains without them,
and the threshold is the highest one whose misses among them still give P(recall >= target) >= confidence.
Until the golden set holds enough violations for that (149 held out at 0.98 / 0.95), and always in
nearest-neighbour mode, the funnel runs in shadow mode: it scores and orders, and clears nothing.

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
from django.db import IntegrityError, connection, transaction

from audit import services as audit
from inference_worker import autoclear, embeddings, guarantee
from inference_worker.models import FunnelCalibration
from policies.examples import policy_examples_parse
from policies.models import GoldenExample, Label

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

    from inference_worker.claims import CaseWork

# Below this many labels of either class there is nothing to score with.
MIN_PER_CLASS_FOR_SCORING = 2
# Below this many training labels of either class a regression overfits 384 dimensions; neighbours do better
# (and never clear).
MIN_PER_CLASS_FOR_LOGISTIC = 8
# Share of golden violations held out to prove the threshold (more when the guarantee needs more), and of
# golden safe examples held out to measure the clear rate honestly.
HELD_OUT_SHARE = 0.5
HELD_OUT_SAFE_SHARE = 0.3
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
    threshold: float | None  # None: shadow mode
    measured_recall: float | None  # on the held-out violations
    recall_lower_bound: float | None
    clear_rate: float | None  # on the held-out safe examples
    held_out_violations: int
    held_out_misses: int
    held_out_safe: int
    violations_needed: int
    violations: int  # trained on
    safe: int
    note: str


@dataclass
class FittedFunnel:
    """A policy version's classifier and threshold, for one state of its golden set."""

    calibration_id: int
    method: str
    threshold: float | None
    note: str
    recall_lower_bound: float | None
    held_out_violations: int
    violations_needed: int
    confidence: float
    examples: list[TrainingExample]
    vectors: np.ndarray
    labels: np.ndarray
    regression: LogisticRegression | None
    # Set per batch (autoclear.funnel_blocks): why it may not clear now although proven ("" if it may).
    clear_block: str = ""

    @property
    def scoring(self) -> bool:
        return self.method != FunnelCalibration.Method.UNCALIBRATED

    @property
    def may_clear(self) -> bool:
        return self.threshold is not None and not self.clear_block

    @property
    def mode(self) -> str:
        if not self.scoring:
            return "off"
        if self.threshold is None:
            return "shadow"
        return "blocked" if self.clear_block else "clearing"

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
    mode: str = "off"  # FittedFunnel.mode
    recall_lower_bound: float | None = None
    held_out_violations: int = 0
    violations_needed: int = 0
    confidence: float = 0.0
    windows: int = 1
    # Why an item below the threshold was passed on anyway (injection, switch off, suspended).
    held_back: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "p_violation": self.p_violation,
            "threshold": self.threshold,
            "method": FunnelCalibration.Method(self.method).label,
            "calibration_id": self.calibration_id,
            "note": self.note,
            "nearest": self.nearest,
            "mode": self.mode,
            "recall_lower_bound": self.recall_lower_bound,
            "held_out_violations": self.held_out_violations,
            "violations_needed": self.violations_needed,
            "confidence": self.confidence,
            "windows": self.windows,
            "held_back": self.held_back,
        }

    @property
    def explanation(self) -> str:
        if self.p_violation is None:
            return f"funnel passed it on: {self.note}"
        if self.threshold is None:
            return f"p(violation) {self.p_violation:.3f}; {self.note}: passed on"
        if not self.cleared and self.p_violation < self.threshold:
            return (
                f"p(violation) {self.p_violation:.3f} is below the proven threshold {self.threshold:.3f}, "
                f"but {self.held_back}: passed on"
            )[:500]
        where = "below" if self.cleared else "at or above"
        return f"p(violation) {self.p_violation:.3f} is {where} the proven threshold {self.threshold:.3f}"


# --- scoring and calibration (pure numpy / scikit-learn) ------------------------------------------------


def neighbour_scores(train: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """p(violation) as a similarity-weighted vote of the NEIGHBOURS most similar labelled examples."""
    similarities = queries @ train.T
    k = min(NEIGHBOURS, train.shape[0])
    nearest = np.argpartition(-similarities, k - 1, axis=1)[:, :k]
    chosen = np.take_along_axis(similarities, nearest, axis=1)
    weights = np.exp((chosen - chosen.max(axis=1, keepdims=True)) / NEIGHBOUR_TEMPERATURE)
    return np.asarray((weights * labels[nearest]).sum(axis=1) / weights.sum(axis=1))


def logistic_fit(vectors: np.ndarray, labels: np.ndarray) -> LogisticRegression:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=LOGISTIC_C, class_weight="balanced", max_iter=2000).fit(vectors, labels)


def method_for(violations: int, safe: int) -> str:
    if min(violations, safe) < MIN_PER_CLASS_FOR_SCORING:
        return FunnelCalibration.Method.UNCALIBRATED
    if min(violations, safe) < MIN_PER_CLASS_FOR_LOGISTIC:
        return FunnelCalibration.Method.NEAREST_NEIGHBOURS
    return FunnelCalibration.Method.LOGISTIC_REGRESSION


def _hold_out_order(key: str) -> str:
    # A hash of the text, not its score or its age: the held-out violations stay exchangeable with new ones.
    return hashlib.sha256(f"funnel-hold-out:{key}".encode()).hexdigest()


@dataclass(frozen=True)
class CalibrationSplit:
    """Indexes into the training examples: what the classifier trains on, and what proves it."""

    train: list[int]
    held_out_violations: list[int]
    held_out_safe: list[int]
    violations_needed: int


def calibration_split(examples: list[TrainingExample], target: float, confidence: float) -> CalibrationSplit:
    """Hold out HELD_OUT_SHARE of the golden violations (at least as many as the guarantee needs) while
    MIN_PER_CLASS_FOR_LOGISTIC violations remain to train on; else hold out nothing (shadow mode). The
    policy text's own examples always train: they were written with the policy, not sampled."""
    needed = guarantee.violations_needed(target, confidence)
    golden = sorted(
        (i for i, e in enumerate(examples) if e.origin == "golden"),
        key=lambda i: _hold_out_order(examples[i].text),
    )
    golden_violations = [i for i in golden if examples[i].violation]
    golden_safe = [i for i in golden if not examples[i].violation]
    policy_violations = sum(1 for e in examples if e.origin == "policy" and e.violation)
    policy_safe = sum(1 for e in examples if e.origin == "policy" and not e.violation)
    trainable = len(golden_violations) + policy_violations - MIN_PER_CLASS_FOR_LOGISTIC
    held = min(max(math.ceil(HELD_OUT_SHARE * len(golden_violations)), needed), trainable)
    if held < needed:
        return CalibrationSplit(list(range(len(examples))), [], [], needed)
    held_safe = math.floor(HELD_OUT_SAFE_SHARE * len(golden_safe))
    if len(golden_safe) - held_safe + policy_safe < MIN_PER_CLASS_FOR_LOGISTIC:
        held_safe = 0
    out = set(golden_violations[:held]) | set(golden_safe[:held_safe])
    return CalibrationSplit(
        [i for i in range(len(examples)) if i not in out],
        golden_violations[:held],
        golden_safe[:held_safe],
        needed,
    )


def calibrate(
    train_vectors: np.ndarray,
    train_labels: np.ndarray,
    violation_windows: tuple[np.ndarray, np.ndarray, int],
    safe_windows: tuple[np.ndarray, np.ndarray, int],
    *,
    target: float,
    confidence: float,
    violations_needed: int,
) -> Calibration:
    """Fit on the training part; prove a threshold on the held-out violations (windows, owner, texts).

    Only a logistic regression with enough held-out violations gets a threshold: nearest neighbours (no
    held-out scores to speak of with so few labels) and thin golden sets run in shadow mode.
    """
    violations, safe = int(train_labels.sum()), int(len(train_labels) - train_labels.sum())
    method = method_for(violations, safe)
    held_v, held_s = violation_windows[2], safe_windows[2]

    def shadow(note: str) -> Calibration:
        return Calibration(
            method, None, None, None, None, held_v, 0, held_s, violations_needed, violations, safe, note
        )

    if method == FunnelCalibration.Method.UNCALIBRATED:
        return shadow(
            f"not scoring: needs at least {MIN_PER_CLASS_FOR_SCORING} labelled violations and "
            f"{MIN_PER_CLASS_FOR_SCORING} safe examples (policy Examples or accepted golden set); "
            f"has {violations} and {safe}"
        )
    if method == FunnelCalibration.Method.NEAREST_NEIGHBOURS:
        return shadow(
            f"shadow mode: nearest neighbours never auto-clear; a regression needs "
            f"{MIN_PER_CLASS_FOR_LOGISTIC} of each class to train on"
        )
    if held_v < violations_needed:
        return shadow(
            f"shadow mode: proving recall >= {target:.2f} at {confidence:.0%} confidence needs "
            f"{violations_needed} labelled violations held out from training, and "
            f"{MIN_PER_CLASS_FOR_LOGISTIC} more to train on"
        )
    regression = logistic_fit(train_vectors, train_labels)
    vectors, owner, texts = violation_windows
    scores = embeddings.max_per_owner(regression.predict_proba(vectors)[:, 1], owner, texts)
    proven = guarantee.threshold_with_guarantee(scores, target, confidence)
    assert proven is not None, "violations_needed held-out violations always prove a threshold"
    clear_rate = None
    if held_s:
        safe_vectors, safe_owner, _ = safe_windows
        safe_scores = embeddings.max_per_owner(
            regression.predict_proba(safe_vectors)[:, 1], safe_owner, held_s
        )
        clear_rate = float((safe_scores < proven.threshold).mean())
    return Calibration(
        method,
        proven.threshold,
        1 - proven.misses / proven.n,
        proven.recall_lower_bound,
        clear_rate,
        proven.n,
        proven.misses,
        held_s,
        violations_needed,
        violations,
        safe,
        "",
    )


def fit(examples: list[TrainingExample], vectors: np.ndarray, calibration: FunnelCalibration) -> FittedFunnel:
    """The deployed classifier: the same training part, so the same model the calibration proved."""
    labels = np.array([1 if e.violation else 0 for e in examples], dtype=np.int64)
    regression = None
    if calibration.method == FunnelCalibration.Method.LOGISTIC_REGRESSION:
        regression = logistic_fit(vectors, labels)
    return FittedFunnel(
        calibration_id=calibration.pk,
        method=calibration.method,
        threshold=calibration.threshold,
        note=calibration.note,
        recall_lower_bound=calibration.recall_lower_bound,
        held_out_violations=calibration.held_out_violations,
        violations_needed=calibration.violations_needed,
        confidence=calibration.confidence,
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


def training_examples(policy_text: str, golden: list[tuple[str, str]]) -> list[TrainingExample]:
    """The policy's examples and the golden set, one per text (the golden label wins a disagreement)."""
    by_text: dict[str, TrainingExample] = {}
    for example in policy_examples_parse(policy_text).examples:
        by_text[example.text] = TrainingExample(example.text, example.violation, "policy")
    for text, label in golden:
        by_text[text] = TrainingExample(text, label == Label.VIOLATES, "golden")
    return list(by_text.values())


def scoring_windows(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every row an item's score is the highest of: each window of the text, and each of its sentences
    alone (a threat inside 200 word pieces of garden-club notes would score like the notes in a window
    mean-pooled over all of them). With the index of the text of each row."""
    windows, window_owner = embeddings.encode_windows(texts)
    sentences, sentence_owner = embeddings.encode_sentences(texts)
    return np.vstack([windows, sentences]), np.concatenate([window_owner, sentence_owner]).astype(np.int64)


def _windows(texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    vectors, owner = scoring_windows(texts)
    return vectors, owner, len(texts)


def calibration_measure(
    examples: list[TrainingExample], target: float, confidence: float
) -> tuple[list[TrainingExample], np.ndarray, Calibration]:
    """Split, embed, fit and prove. Returns the training part, its vectors and the calibration."""
    split = calibration_split(examples, target, confidence)
    train = [examples[i] for i in split.train]
    labels = np.array([1 if e.violation else 0 for e in train], dtype=np.int64)
    scoring = (
        method_for(int(labels.sum()), int(len(labels) - labels.sum()))
        != FunnelCalibration.Method.UNCALIBRATED
    )
    vectors = (
        training_vectors([e.text for e in train])
        if scoring
        else np.zeros((len(train), embeddings.DIMENSIONS), dtype=np.float32)
    )
    calibration = calibrate(
        vectors,
        labels,
        _windows([examples[i].text for i in split.held_out_violations]),
        _windows([examples[i].text for i in split.held_out_safe]),
        target=target,
        confidence=confidence,
        violations_needed=split.violations_needed,
    )
    return train, vectors, calibration


def _fitted_build(
    policy_version_id: int, policy_id: int, policy_text: str, target: float, confidence: float
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
        "confidence": confidence,
        "embedding_model": embeddings.model_name(),
    }
    stored = FunnelCalibration.objects.filter(**key).first()
    if stored is not None:
        # Same examples, same split, same deterministic fit: the model the stored calibration proved.
        split = calibration_split(examples, target, confidence)
        train = [examples[i] for i in split.train]
        vectors = (
            training_vectors([e.text for e in train])
            if stored.method != FunnelCalibration.Method.UNCALIBRATED
            else np.zeros((len(train), embeddings.DIMENSIONS), dtype=np.float32)
        )
        return fingerprint, fit(train, vectors, stored)
    train, vectors, measured = calibration_measure(examples, target, confidence)
    try:
        with transaction.atomic():
            stored = FunnelCalibration.objects.create(
                **key,
                method=measured.method,
                threshold=measured.threshold,
                measured_recall=measured.measured_recall,
                recall_lower_bound=measured.recall_lower_bound,
                held_out_violations=measured.held_out_violations,
                held_out_misses=measured.held_out_misses,
                violations_needed=measured.violations_needed,
                clear_rate=measured.clear_rate,
                held_out_safe=measured.held_out_safe,
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
                    "recall_lower_bound": stored.recall_lower_bound,
                    "held_out_violations": stored.held_out_violations,
                    "held_out_misses": stored.held_out_misses,
                    "clear_rate": stored.clear_rate,
                    "target_recall": target,
                    "confidence": confidence,
                },
            )
    except IntegrityError:  # another worker calibrated the same state first; same data, same result
        stored = FunnelCalibration.objects.get(**key)
    return fingerprint, fit(train, vectors, stored)


def funnel_prepare(works: list[CaseWork]) -> dict[int, FittedFunnel]:
    """The fitted funnel of each policy version in the batch, retrained when its golden set changed, with
    this batch's switches and suspensions applied."""
    versions = {w.policy_version_id: w for w in works}
    if not versions:
        return {}
    fingerprints = golden_fingerprints(sorted({w.policy.pk for w in versions.values()}))
    blocks = autoclear.funnel_blocks({pk: w.policy for pk, w in versions.items()})
    model = (os.getpid(), embeddings.model_path())
    fitted: dict[int, FittedFunnel] = {}
    for version_id, work in versions.items():
        target, confidence = autoclear.target_recall_for(work.policy), work.policy.recall_confidence
        key = (*model, version_id, fingerprints[work.policy.pk], target, confidence)
        with _cache_lock:
            cached = _fitted.get(key)
        if cached is None:
            fingerprint, cached = _fitted_build(
                version_id, work.policy.pk, work.policy_text, target, confidence
            )
            with _cache_lock:
                _fitted[(*model, version_id, fingerprint, target, confidence)] = cached
                while len(_fitted) > FITTED_CACHE_SIZE:
                    _fitted.popitem(last=False)
        fitted[version_id] = replace(cached, clear_block=blocks[version_id])
    return fitted


@dataclass
class _Best:
    """An item's highest-scoring row so far."""

    score: float
    vector: np.ndarray
    rows: int


def _best_rows_update(
    best: dict[int, _Best],
    items: list[CaseWork],
    fitted: dict[int, FittedFunnel],
    vectors: np.ndarray,
    owner: np.ndarray,
) -> None:
    """Score rows (owner: index into `items`) with each item's classifier; keep each item's highest."""
    for version_id, funnel in fitted.items():
        mine = [n for n, w in enumerate(items) if w.policy_version_id == version_id]
        rows = np.flatnonzero(np.isin(owner, mine))
        if not len(rows):
            continue
        row_scores = funnel.scores(vectors[rows])
        for n in mine:
            own = np.flatnonzero(owner[rows] == n)
            if not len(own):
                continue
            top = own[int(np.argmax(row_scores[own]))]
            case_id = items[n].case_id
            seen = best.get(case_id)
            if seen is None or row_scores[top] > seen.score:
                best[case_id] = _Best(float(row_scores[top]), vectors[rows[top]], len(own))
            if seen is not None:
                best[case_id].rows = seen.rows + len(own)


def works_score(works: list[CaseWork], fitted: dict[int, FittedFunnel]) -> list[CaseWork]:
    """The works with their funnel scores attached: batched encodes, no database access.

    An item's score is the highest of its rows (`scoring_windows`): every window, and every sentence alone.
    Sentences can only raise a score, so they are read only for items whose windows score below a proven
    threshold, the ones that could be cleared: the clear decision is the same as reading every row.
    """
    started = time.monotonic()
    scorable = [w for w in works if fitted[w.policy_version_id].scoring]
    best: dict[int, _Best] = {}
    if scorable:
        vectors, owner = embeddings.encode_windows([w.content for w in scorable])
        _best_rows_update(best, scorable, fitted, vectors, owner)
        candidates = [
            w
            for w in scorable
            if (threshold := fitted[w.policy_version_id].threshold) is not None
            and best[w.case_id].score < threshold
            and not w.injection_signals
            and not fitted[w.policy_version_id].clear_block
        ]
        if candidates:
            vectors, owner = embeddings.encode_sentences([w.content for w in candidates])
            _best_rows_update(best, candidates, fitted, vectors, owner)
    p_violation = {case_id: round(b.score, 4) for case_id, b in best.items()}
    windows = {case_id: b.rows for case_id, b in best.items()}
    nearest = {
        w.case_id: fitted[w.policy_version_id].nearest(
            fitted[w.policy_version_id].vectors @ best[w.case_id].vector
        )
        for w in scorable
    }
    latency_ms = round((time.monotonic() - started) * 1000 / max(1, len(scorable)))
    scored = []
    for work in works:
        funnel = fitted[work.policy_version_id]
        p = p_violation.get(work.case_id)
        threshold = funnel.threshold
        below = p is not None and threshold is not None and p < threshold
        # A likely injection attempt goes on to the reasoner (and then a human) whatever its score: the
        # funnel judges what the text is about, not what it tries to make a model do.
        held_back = ""
        if below and work.injection_signals:
            held_back = "the item looks like a prompt-injection attempt"
        elif below and funnel.clear_block:
            held_back = funnel.clear_block
        score = FunnelScore(
            p_violation=p,
            threshold=round(threshold, 4) if threshold is not None else None,
            cleared=below and not held_back,
            method=funnel.method,
            calibration_id=funnel.calibration_id,
            note=funnel.note,
            nearest=nearest.get(work.case_id, []),
            latency_ms=latency_ms if p is not None else 0,
            mode=funnel.mode,
            recall_lower_bound=funnel.recall_lower_bound,
            held_out_violations=funnel.held_out_violations,
            violations_needed=funnel.violations_needed,
            confidence=funnel.confidence,
            windows=windows.get(work.case_id, 1),
            held_back=held_back,
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
