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
    vectors, owner = embeddings.encode_windows([text])
    [alone] = embeddings.encode([target])
    return float((vectors @ alone).max()), len(owner)


@pytest.mark.parametrize("where", ["after", "before"])
def test_a_violation_behind_2000_characters_of_padding_has_a_window_of_its_own(where: str) -> None:
    assert len(HARMLESS) > 1900
    padded = f"{HARMLESS}{VIOLATING}" if where == "after" else f"{VIOLATING} {HARMLESS}"
    closest, windows = best_cosine_to(padded, VIOLATING)
    assert windows > 1
    assert closest >= 0.9
    # The control: the harmless text alone has no window like the violation.
    assert best_cosine_to(HARMLESS, VIOLATING)[0] < 0.5


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
