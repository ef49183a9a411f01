from __future__ import annotations

import pytest

from policies.rules import policy_rule_ids_parse


@pytest.mark.parametrize(
    ("line", "rule_id"),
    [
        ("HS1: Slurs aimed at a protected group", "HS1"),
        ("- HS1: bullet", "HS1"),
        ("* HS1: star bullet", "HS1"),
        ("  - HS1: indented bullet", "HS1"),
        ("**HS1:** bold with the colon inside", "HS1"),
        ("**HS1**: bold with the colon outside", "HS1"),
        ("- **HS1** - bold with a dash", "HS1"),
        ("[HS1]: bracketed", "HS1"),
        ("- [HS1] - bracketed with a dash", "HS1"),
        ("HS1) parenthesis", "HS1"),
        ("HS1 - dash", "HS1"),
        ("SP2.1: sub-rule", "SP2.1"),
        ("VIO-3: hyphenated", "VIO-3"),
        ("ABCDEF12: six letters", "ABCDEF12"),
        ("R7: one letter", "R7"),
    ],
)
def test_it_finds_a_rule_defined_on_a_line(line: str, rule_id: str) -> None:
    assert policy_rule_ids_parse(line) == [rule_id]


@pytest.mark.parametrize(
    "line",
    [
        "Content that breaks HS1: see below.",
        "See HS1: it covers slurs.",
        "## Output",
        "ABCDEFG1: seven letters is too many",
        "hs1: lower case",
        "HS: no digits",
        "HS1 covers slurs, with no separator",
        "HS1a: letters after the digits",
        "HS1-: dash without a space",
        '{"violation": 0|1, "rule_ids": [str]}',
        "1. HS1: numbered lists are not bullets",
    ],
)
def test_it_ignores_lines_that_do_not_define_a_rule(line: str) -> None:
    assert policy_rule_ids_parse(line) == []


def test_it_lists_rules_in_order_without_repeats() -> None:
    policy = """# Hate speech

## Definitions
A slur is ... Rules HS2 and HS1 below apply to text only.

## Rules
- HS2: Slurs
- HS1: Dehumanising comparisons
  - HS1.1: Comparisons to animals
- HS2: Slurs (repeated by mistake)
VIO-3) Threats

## Output
Cite rule ids such as HS1: in rule_ids.
"""

    assert policy_rule_ids_parse(policy) == ["HS2", "HS1", "HS1.1", "VIO-3"]


def test_it_finds_no_rules_in_an_empty_policy() -> None:
    assert policy_rule_ids_parse("") == []
