"""The labelled examples in a policy's Examples section (the funnel's training data from the policy text)."""

from __future__ import annotations

from pathlib import Path

from policies.examples import policy_examples_parse

DEMO = Path(__file__).resolve().parents[2] / "moderation" / "demo"


def test_it_reads_the_demo_policys_examples_with_labels_and_rules() -> None:
    parsed = policy_examples_parse((DEMO / "harassment.md").read_text())
    assert parsed.has_section and parsed.unparsed == []
    assert [(e.text[:20], e.violation, e.rule_ids) for e in parsed.examples] == [
        ("I know where you liv", True, ("HR1", "HR3")),
        ("This patch note is t", False, ()),
        ("Everyone go flood he", True, ("HR4",)),
        ("My character swears ", False, ()),
    ]


def test_it_keeps_quotes_inside_an_example_and_reports_lines_it_cannot_read() -> None:
    text = """# P
## Criteria
- "not an example here" -> violation

## Examples
- "She said "stop" twice." -> no violation
* “Curly quotes work too” → violation, X1

- "missing an arrow" violation
- "unknown label" -> maybe

## Output
- "after the section" -> violation
"""
    parsed = policy_examples_parse(text)
    assert [(e.text, e.violation, e.rule_ids, e.line_number) for e in parsed.examples] == [
        ('She said "stop" twice.', False, (), 6),
        ("Curly quotes work too", True, ("X1",), 7),
    ]
    assert parsed.unparsed == [(9, '- "missing an arrow" violation'), (10, '- "unknown label" -> maybe')]


def test_a_policy_without_an_examples_section_has_no_examples() -> None:
    parsed = policy_examples_parse("# P\n## Instructions\nDecide.\n")
    assert (parsed.has_section, parsed.examples, parsed.unparsed) == (False, [], [])
