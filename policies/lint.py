"""Hints for a policy draft, from the recommended structure of a gpt-oss-safeguard policy.

The recommended structure: Instructions, Definitions, Criteria, Examples, Output (asking for the verdict
JSON), with rule ids defined one per line, and 400-600 tokens as the sweet spot (shorter policies leave the
model guessing, much longer ones dilute the criteria and cost prefill on every item).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from inference_worker.prompts import token_count
from policies.examples import policy_examples_parse
from policies.rules import policy_rule_definitions, policy_rule_ids_parse

SECTIONS = ("Instructions", "Definitions", "Criteria", "Examples", "Output")
SWEET_SPOT = (400, 600)
TOO_LONG_TOKENS = 1500
# The title is the rest of the line, trimmed in Python: "(?P<title>.+?)[ \t]*#*[ \t]*$" backtracked cubically
# on a heading followed by a long run of spaces (2,000 spaces: 36 seconds).
_HEADING = re.compile(r"^#{1,6}[ \t](?P<title>[^\n]+)", re.MULTILINE)


def _heading_title(raw: str) -> str:
    """A heading's text without the closing hashes a markdown heading may end with."""
    return raw.strip(" \t").rstrip("#").rstrip(" \t")


# A new policy's first draft: the recommended structure with placeholders to replace.
POLICY_OUTLINE = """# {name}

## Instructions
Decide whether the content violates this policy. Judge the content itself, not the person. Read the
definitions and criteria, cite the rule ids that apply, and answer only with the JSON object described in
the Output section.

## Definitions
- Term: what it means in this policy.

## Criteria
- R1: The first kind of content this policy does not allow.
- R2: The second kind.

Not a violation: content that looks close to the rules but is allowed (quoting to report, news, fiction).

## Examples
- "An example that breaks R1" -> violation, R1
- "An example that breaks R2" -> violation, R2
- "A close call that is allowed" -> no violation
- "An ordinary post" -> no violation

## Output
Answer with one JSON object and nothing else:
{{"violation": 0 or 1, "policy_category": "a short category" or null, "rule_ids": ["R1"],
 "confidence": "low" or "medium" or "high", "rationale": "one or two sentences"}}
"""


# The outline's stand-ins for the policy's own words: a draft that still has any of them is not finished.
OUTLINE_PLACEHOLDERS = (
    "Term: what it means in this policy.",
    "The first kind of content this policy does not allow.",
    "The second kind.",
    "content that looks close to the rules but is allowed",
    "An example that breaks R1",
    "An example that breaks R2",
    "A close call that is allowed",
    "An ordinary post",
)


def _placeholders_left(text: str) -> list[str]:
    """The outline placeholders still in ``text``, ignoring case (plain substring searches: linear time)."""
    folded = text.casefold()
    return [p for p in OUTLINE_PLACEHOLDERS if p.casefold() in folded]


@dataclass(frozen=True)
class PolicyLint:
    token_count: int
    rule_ids: list[str]
    hints: list[str]
    sections: list[str]

    @property
    def in_sweet_spot(self) -> bool:
        return SWEET_SPOT[0] <= self.token_count <= SWEET_SPOT[1]


def _section_bodies(text: str) -> dict[str, str]:
    """Heading title (case-folded first word) -> the text up to the next heading."""
    bodies: dict[str, str] = {}
    matches = list(_HEADING.finditer(text))
    for n, match in enumerate(matches):
        end = matches[n + 1].start() if n + 1 < len(matches) else len(text)
        words = _heading_title(match["title"]).split()
        key = words[0].strip(":").casefold() if words else ""
        bodies.setdefault(key, text[match.end() : end])
    return bodies


# o200k's BPE is quadratic in the length of one pre-token (a run of 100,000 spaces or letters took 5 seconds),
# so the lint counts pieces of at most this many characters, cut before a space or newline where there is one.
_TOKEN_PIECE_CHARS = 1_000


def _token_count_linear(text: str) -> int:
    """``token_count`` in linear time; cuts before whitespace keep the count exact or within a token or so."""
    total = start = 0
    while start < len(text):
        end = min(start + _TOKEN_PIECE_CHARS, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end))
            end = cut if cut > start else end
        total += token_count(text[start:end])
        start = end
    return total


def policy_lint(text: str) -> PolicyLint:
    tokens = _token_count_linear(text)
    rule_ids = policy_rule_ids_parse(text)
    bodies = _section_bodies(text)
    hints = []
    present = [s for s in SECTIONS if s.casefold() in bodies]
    missing = [s for s in SECTIONS if s.casefold() not in bodies]
    if missing:
        hints.append(f"Missing sections: {', '.join(missing)} (use markdown headings, e.g. '## Criteria').")
    if not rule_ids:
        hints.append("No rule ids defined: define each rule on its own line, e.g. '- SP1: ...'.")
    duplicates = [r for r, n in Counter(policy_rule_definitions(text)).items() if n > 1]
    if duplicates:
        hints.append(f"Rule ids defined more than once: {', '.join(duplicates)}.")
    output = bodies.get("output", "")
    if "output" in bodies and not ('"violation"' in output and "rule_ids" in output):
        hints.append(
            'The Output section should ask for the verdict JSON: {"violation": 0|1, "policy_category": ..., '
            '"rule_ids": [...], "confidence": "low"|"medium"|"high", "rationale": ...}.'
        )
    examples = policy_examples_parse(text)
    if examples.has_section and not examples.examples:
        hints.append('The Examples section has no examples: one per bullet, e.g. - "text" -> violation, SP1.')
    for line_number, _line in examples.unparsed[:5]:
        hints.append(
            f"Line {line_number} of Examples is not an example the funnel tier can learn from: write "
            '- "text" -> violation, SP1 or - "text" -> no violation.'
        )
    for label, count in (
        ("violating", sum(e.violation for e in examples.examples)),
        ("safe", sum(not e.violation for e in examples.examples)),
    ):
        if examples.examples and count < 2:
            hints.append(f"Fewer than 2 {label} examples: the funnel cannot calibrate on the text alone.")
    undefined = sorted({r for e in examples.examples for r in e.rule_ids} - set(rule_ids))
    if undefined:
        hints.append(f"Examples cite rule ids the policy does not define: {', '.join(undefined)}.")
    placeholders = ", ".join(f'"{p}"' for p in _placeholders_left(text))
    if placeholders:
        hints.append(f"Placeholder text left in: {placeholders} (from the outline: write your own).")
    if tokens < SWEET_SPOT[0]:
        hints.append(f"{tokens} tokens: shorter than the {SWEET_SPOT[0]}-{SWEET_SPOT[1]} sweet spot.")
    elif tokens > TOO_LONG_TOKENS:
        hints.append(f"{tokens} tokens: much longer than the {SWEET_SPOT[0]}-{SWEET_SPOT[1]} sweet spot.")
    elif tokens > SWEET_SPOT[1]:
        hints.append(f"{tokens} tokens: longer than the {SWEET_SPOT[0]}-{SWEET_SPOT[1]} sweet spot.")
    return PolicyLint(token_count=tokens, rule_ids=rule_ids, hints=hints, sections=present)
