"""The funnel's embeddings read every part of a text: windows of a long text, with the real model."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from inference_worker import embeddings

pytestmark = pytest.mark.usefixtures("sentence_model")

VIOLATING = "I will kill you and your whole family tonight."
HARMLESS = (
    "Garden club notes: the spring plant swap went well and we thank everyone who brought seedlings. "
    "Tomatoes, basil and marigolds were the most popular, and the compost workshop is on the second "
    "Saturday of the month. Please return borrowed tools to the shed and sign the watering rota. "
) * 7


def best_cosine_to(text: str, target: str) -> tuple[float, int]:
    windows, window_owner = embeddings.encode_windows([text])
    sentences, _ = embeddings.encode_sentences([text])
    [alone] = embeddings.encode([target])
    return float((np.vstack([windows, sentences]) @ alone).max()), len(window_owner)


@pytest.mark.parametrize(
    ("padding", "where"),
    [(HARMLESS, "after"), (HARMLESS, "before"), (HARMLESS[:282], "after"), (HARMLESS[:282], "before")],
)
def test_a_violation_among_padding_is_also_read_alone(padding: str, where: str) -> None:
    """Windows read a long text whole; sentences read a violation without the padding around it, whether
    the padding spills over several windows (2,000 characters) or shares one with it (three sentences)."""
    padded = f"{padding} {VIOLATING}" if where == "after" else f"{VIOLATING} {padding}"
    closest, windows = best_cosine_to(padded, VIOLATING)
    assert (windows == 1) == (len(padding) < 1000)
    assert closest >= 0.9
    # The control: the harmless text alone has no window or sentence like the violation.
    assert best_cosine_to(padding, VIOLATING)[0] < 0.5


def test_sentences_split_on_marks_and_line_breaks_in_linear_time() -> None:
    vectors, owner = embeddings.encode_sentences(["One. Two! Three?", "no mark at all", "a\nb"])
    assert owner.tolist() == [0, 0, 0, 2, 2]
    assert vectors.shape == (5, embeddings.DIMENSIONS)
    # A run of marks is one sentence end, found once: no quadratic backtracking on "....x".
    assert [m.end() for m in embeddings.SENTENCE_END.finditer("a...b... c")] == [8]


def test_a_short_text_gives_one_window_equal_to_encode() -> None:
    text = "What a beautiful sunny morning for a walk in the park with my dog."
    vectors, owner = embeddings.encode_windows([text])
    assert owner.tolist() == [0] and vectors.shape == (1, embeddings.DIMENSIONS)
    assert float(vectors[0] @ embeddings.encode([text])[0]) >= 0.999
    assert abs(float(np.linalg.norm(vectors[0])) - 1) < 1e-5


def test_owner_says_which_text_each_window_came_from() -> None:
    texts = ["short one", HARMLESS + VIOLATING, "", "another short one", HARMLESS * 2]
    vectors, owner = embeddings.encode_windows(texts)
    assert vectors.shape == (len(owner), embeddings.DIMENSIONS) and vectors.dtype == np.float32
    counts = np.bincount(owner, minlength=len(texts)).tolist()
    assert counts[0] == counts[2] == counts[3] == 1
    assert 1 < counts[1] < counts[4]
    assert owner.tolist() == sorted(owner.tolist())  # a text's windows are together, in reading order
    # Each text's first window is its `encode` (the first max_seq_length - 2 word pieces).
    first = [int(np.flatnonzero(owner == i)[0]) for i in range(len(texts))]
    assert (vectors[first] * embeddings.encode(texts)).sum(axis=1).min() >= 0.999


def test_windows_of_a_long_text_overlap_and_cover_it() -> None:
    assert embeddings._window_starts(0, 254) == [0]
    assert embeddings._window_starts(254, 254) == [0]
    starts = embeddings._window_starts(1000, 254)
    assert starts[0] == 0 and starts[-1] + 254 == 1000
    assert all(b - a <= 254 - embeddings.WINDOW_OVERLAP for a, b in itertools.pairwise(starts))


def test_an_empty_text_gets_one_window() -> None:
    vectors, owner = embeddings.encode_windows([""])
    assert owner.tolist() == [0] and vectors.shape == (1, embeddings.DIMENSIONS)
    assert np.isfinite(vectors).all()
    empty_rows = embeddings.encode_windows([])
    assert empty_rows[0].shape == (0, embeddings.DIMENSIONS) and empty_rows[1].shape == (0,)


def test_max_per_owner_keeps_each_texts_highest_window() -> None:
    scores = np.array([0.1, 0.7, 0.2, 0.4, 0.3])
    assert embeddings.max_per_owner(scores, np.array([0, 0, 1, 2, 2]), 3).tolist() == [0.7, 0.2, 0.4]


def test_one_thread_and_two_give_the_same_embeddings(settings: Any) -> None:
    texts = [HARMLESS + VIOLATING, "short one", ""]
    settings.SAFEGUARD_FUNNEL_THREADS = 1
    alone, owner_alone = embeddings.encode_windows(texts)
    settings.SAFEGUARD_FUNNEL_THREADS = 2
    shared, owner_shared = embeddings.encode_windows(texts)
    assert owner_alone.tolist() == owner_shared.tolist()
    assert (alone * shared).sum(axis=1).min() >= 0.9999
