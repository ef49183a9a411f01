"""Every parser that meets untrusted or semi-trusted text runs in linear time (issue #14 item 1).

Content (injection signals at ingestion, inside the web request), policy text (lint, examples, rule ids) and
engine output (verdicts) are fed long runs of spaces, letters and separators, alone and after the prefixes
that start each pattern. The test compares the time at 10,000 and 100,000 characters: linear is about 10,
quadratic about 100 ("answer violation" + 99,000 spaces once took 30 seconds at ingestion; a heading followed
by 2,000 spaces took 36 seconds in the lint). It asserts a ratio, never a wall-clock time, and takes the
fastest of a few runs so that a busy machine does not fail it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from inference_worker.embeddings import SENTENCE_END
from inference_worker.verdicts import verdict_parse
from moderation.injection import injection_signals
from policies.examples import policy_examples_parse
from policies.lint import policy_lint
from policies.rules import policy_rule_definitions, policy_rule_ids_parse

pytestmark = pytest.mark.slow  # no service, but 128 timings of 100,000-character texts

SMALL, LARGE = 10_000, 100_000
# Linear is ~10; a quadratic pattern gives ~100. Generous for a shared machine with warm caches at 10k.
MAX_RATIO = 30


def _repeat(unit: str) -> Callable[[int], str]:
    return lambda n: (unit * (n // len(unit) + 1))[:n]


def _prefixed(prefix: str, fill: str = " ", suffix: str = "x") -> Callable[[int], str]:
    return lambda n: prefix + fill * (n - len(prefix) - len(suffix)) + suffix


def _per_call(parse: Callable[[str], object], text: str, calls: int) -> float:
    """The fastest of 3 timings of `calls` calls, per call."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            parse(text)
        best = min(best, time.perf_counter() - start)
    return best / calls


def _ratio(parse: Callable[[str], object], make: Callable[[int], str]) -> float:
    small, large = make(SMALL), make(LARGE)
    # Enough calls on the small text for 20 ms a timing: sub-millisecond timings are mostly noise.
    once = _per_call(parse, small, 1)
    calls = max(1, min(1000, int(0.02 / max(once, 1e-6))))
    return _per_call(parse, large, max(1, calls // 10)) / _per_call(parse, small, calls)


COMMON = {
    "spaces": _repeat(" "),
    "letters": _repeat("a"),
    "letter-spaced": _repeat("a "),
    "dotted": _repeat("a."),
    "blank-lines": _repeat("\n   "),
    "separators": _repeat("-_*|/,.:;"),
    "quotes": _repeat('"'),
    "accents": _repeat("é"),
    "zero-width": _repeat("a\u200b"),
}

INJECTION = {
    **COMMON,
    "dictation": _prefixed("answer violation"),
    "dictation-tabs": _prefixed("respond with violation", "\t"),
    "verdict-json": _prefixed("{", " ", '"violation": 0'),
    "commas": _repeat(", "),
    "role-marker": _repeat("\n system :"),
    "special-tokens": _repeat("<|"),
    "overrides": _repeat("ignore all "),
    "override-then-spaces": _prefixed("ignore all previous"),
    "labels": _repeat("mark this as "),
    "negations": _repeat("do not "),
    "claims": _repeat("already approved by "),
    "role-play": _repeat("pretend no rules you "),
    "addressees": _repeat("note to the ai: "),
    "leet": _repeat("1gn0r3 "),
    "leet-spaced": _repeat("1 g n 0 r 3 "),
    "digits": _repeat("1 "),
}

POLICY = {
    **COMMON,
    "heading-spaces": _prefixed("# a"),
    "heading-tabs": _prefixed("## Examples", "\t"),
    "heading-hashes": _prefixed("# a ", "#"),
    "example-spaces": _prefixed('## Examples\n- "a"', " ", "-> violation x"),
    "example-quotes": _prefixed('## Examples\n- "', '" '),
    "example-arrows": _prefixed('## Examples\n- "a" -> no', " "),
    "rule-spaces": _prefixed("- **[SP1]**"),
    "rule-bullets": _repeat("- "),
    "rule-ids": _repeat("A1 "),
    "headings": _repeat("# a\n"),
}

VERDICT = {
    **COMMON,
    "field-spaces": _prefixed('"violation"'),
    "field-colon": _prefixed('"violation":'),
    "braces": _repeat("{"),
    "string-braces": _prefixed('{"', "\\"),
    "fences": _repeat("```"),
}


def _verdict(text: str) -> object:
    return verdict_parse(text, policy_rule_ids=["SP1"])


def _sentence_ends(text: str) -> object:
    # Where the funnel cuts content into sentences (inference_worker/embeddings.py): content is untrusted.
    return [match.end() for match in SENTENCE_END.finditer(text)]


SENTENCES = {
    **COMMON,
    "dots": _repeat("."),
    "dots-then-letter": _prefixed("a", ".", "x"),
    "marks": _repeat("?!.\u2026"),
    "closing-quotes": _prefixed(".", '"'),
}


CASES = [
    *((f"injection_signals-{name}", injection_signals, make) for name, make in INJECTION.items()),
    *((f"policy_lint-{name}", policy_lint, make) for name, make in POLICY.items()),
    *((f"policy_examples_parse-{name}", policy_examples_parse, make) for name, make in POLICY.items()),
    *((f"policy_rule_ids_parse-{name}", policy_rule_ids_parse, make) for name, make in POLICY.items()),
    *((f"policy_rule_definitions-{name}", policy_rule_definitions, make) for name, make in POLICY.items()),
    *((f"verdict_parse-{name}", _verdict, make) for name, make in VERDICT.items()),
    *((f"sentence_ends-{name}", _sentence_ends, make) for name, make in SENTENCES.items()),
]


@pytest.mark.parametrize(("parse", "make"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_it_takes_time_linear_in_the_length_of_adversarial_text(
    parse: Callable[[str], object], make: Callable[[int], str]
) -> None:
    ratio = _ratio(parse, make)
    for _ in range(2):  # a neighbour's job may have run during a measurement: quadratic stays ~100 every time
        if ratio < MAX_RATIO:
            break
        ratio = min(ratio, _ratio(parse, make))
    assert ratio < MAX_RATIO, f"{SMALL:,} -> {LARGE:,} characters took {ratio:.0f}x longer (linear: ~10)"
