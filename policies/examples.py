"""The labelled examples in a policy's `## Examples` section, which train the funnel tier.

One example a line, the text in double quotes, then `->` and the label, then the rule ids for violations:

    - "I know where you live, and you'll regret that post." -> violation, HR1, HR3
    - "This patch note is the worst design decision I've seen all year." -> no violation
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The title is the rest of the line, trimmed in Python: "(?P<title>.*?)\s*#*\s*$" backtracked cubically on a
# heading followed by a long run of spaces.
HEADING = re.compile(r"^\s{0,3}#{1,6}\s(?P<title>.*)")
EXAMPLE = re.compile(
    r"""^\s*[-*]\s+["“](?P<text>.+)["”]\s*(?:->|→)\s*(?P<label>no\s+violation|violation)\s*(?:,(?P<rules>.*))?$""",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PolicyExample:
    text: str
    violation: bool
    rule_ids: tuple[str, ...]
    line_number: int


@dataclass(frozen=True)
class PolicyExamples:
    examples: list[PolicyExample]
    # Non-blank lines of the Examples section that are not in the format above: (line number, line).
    unparsed: list[tuple[int, str]]
    has_section: bool


def policy_examples_parse(policy_text: str) -> PolicyExamples:
    """Every example in every section whose heading starts with "Example" (line numbers from 1)."""
    examples: list[PolicyExample] = []
    unparsed: list[tuple[int, str]] = []
    in_section = has_section = False
    for number, line in enumerate(policy_text.splitlines(), start=1):
        heading = HEADING.match(line)
        if heading:
            title = heading["title"].strip().rstrip("#").rstrip()
            in_section = title.lower().startswith("example")
            has_section = has_section or in_section
            continue
        if not in_section or not line.strip():
            continue
        match = EXAMPLE.match(line)
        if match is None:
            unparsed.append((number, line))
            continue
        violation = match["label"].lower() == "violation"
        rules = tuple(r.strip() for r in (match["rules"] or "").split(",") if r.strip())
        examples.append(PolicyExample(match["text"], violation, rules, number))
    return PolicyExamples(examples=examples, unparsed=unparsed, has_section=has_section)
