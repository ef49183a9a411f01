from __future__ import annotations

import json

import pytest

from inference_worker.verdicts import Verdict, verdict_parse

RULES = ("SP1", "SP2", "SP2.1")


def parse(final_text: str | None) -> Verdict:
    return verdict_parse(final_text, policy_rule_ids=RULES)


def verdict_json(**fields: object) -> str:
    verdict: dict[str, object] = {
        "violation": 1,
        "policy_category": "spam",
        "rule_ids": ["SP1"],
        "confidence": "high",
        "rationale": "Repeated promotion.",
    }
    return json.dumps(verdict | fields)


def test_it_reads_a_complete_json_verdict() -> None:
    verdict = parse(verdict_json())

    assert verdict == Verdict(
        label="violates",
        policy_category="spam",
        rule_ids=("SP1",),
        confidence="high",
        rationale="Repeated promotion.",
        hallucinated_rule_ids=(),
        parse_path="json",
    )


@pytest.mark.parametrize(
    ("violation", "label"),
    [(1, "violates"), (0, "safe"), (True, "violates"), (False, "safe"), ("1", "violates"), ("0", "safe")],
)
def test_it_accepts_each_spelling_of_violation(violation: object, label: str) -> None:
    assert parse(verdict_json(violation=violation)).label == label


@pytest.mark.parametrize("violation", [2, -1, 0.5, 1.0, "yes", "true", None, [1], {"v": 1}])
def test_it_gives_undetermined_for_any_other_violation_value(violation: object) -> None:
    verdict = parse(verdict_json(violation=violation))

    assert verdict.label == "undetermined"
    assert verdict.parse_path == "none"


def test_it_gives_undetermined_when_violation_is_missing() -> None:
    assert parse('{"rule_ids": ["SP1"], "confidence": "high"}').label == "undetermined"


@pytest.mark.parametrize("text", ["1", " 1\n", "```\n1\n```"])
def test_it_reads_a_bare_one_as_violates(text: str) -> None:
    verdict = parse(text)

    assert verdict.label == "violates"
    assert verdict.parse_path == "bare"
    assert verdict.confidence is None


def test_it_reads_a_bare_zero_as_safe() -> None:
    assert parse("0") == Verdict(
        label="safe",
        policy_category=None,
        rule_ids=(),
        confidence=None,
        rationale="",
        hallucinated_rule_ids=(),
        parse_path="bare",
    )


def test_it_reads_json_inside_code_fences() -> None:
    verdict = parse(f"```json\n{verdict_json()}\n```")

    assert verdict.label == "violates"
    assert verdict.parse_path == "json"


def test_it_reads_the_first_json_object_among_prose() -> None:
    text = f"Here is my verdict: {verdict_json(violation=0, rule_ids=[])} and {verdict_json()}"

    verdict = parse(text)

    assert verdict.label == "safe"
    assert verdict.parse_path == "json"


def test_it_skips_braces_inside_json_strings() -> None:
    text = verdict_json(rationale='He wrote "}{" and \\"{\\" to confuse parsers.')

    verdict = parse(text)

    assert verdict.parse_path == "json"
    assert verdict.rationale == 'He wrote "}{" and \\"{\\" to confuse parsers.'


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ('{"violation": 1, "rule_ids": [', "violates"),
        ('{"violation": 0, "rationale": "cut off', "safe"),
        ('The verdict is "violation": 1 as JSON would say', "violates"),
        ('{"violation":"1", "confidence": high}', "violates"),
        ('{"violation": true, oops}', "violates"),
    ],
)
def test_it_falls_back_to_the_violation_regex(text: str, label: str) -> None:
    verdict = parse(text)

    assert verdict.label == label
    assert verdict.parse_path == "regex"
    assert verdict.rule_ids == ()
    assert verdict.confidence is None


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   ",
        "I think this violates the policy.",
        '{"violation": 10',
        '"violation": 1.5',
        "[1]",
        "```json\n```",
    ],
)
def test_it_gives_undetermined_when_nothing_parses(text: str | None) -> None:
    verdict = parse(text)

    assert verdict.label == "undetermined"
    assert verdict.parse_path == "none"


def test_it_records_cited_rule_ids_the_policy_does_not_define() -> None:
    verdict = parse(verdict_json(rule_ids=["SP1", "ZZ99", "SP2.1", "HS4"]))

    assert verdict.rule_ids == ("SP1", "SP2.1")
    assert verdict.hallucinated_rule_ids == ("ZZ99", "HS4")


def test_it_matches_rule_ids_regardless_of_case_and_whitespace() -> None:
    verdict = parse(verdict_json(rule_ids=[" sp1 ", "SP1", "sp2"]))

    assert verdict.rule_ids == ("SP1", "SP2")
    assert verdict.hallucinated_rule_ids == ()


@pytest.mark.parametrize("rule_ids", ["SP1", ["SP1", 2], [None], {"SP1": True}, None, 1])
def test_it_ignores_rule_ids_that_are_not_a_list_of_strings(rule_ids: object) -> None:
    verdict = parse(verdict_json(rule_ids=rule_ids))

    assert verdict.label == "violates"
    assert verdict.rule_ids == ()
    assert verdict.hallucinated_rule_ids == ()


@pytest.mark.parametrize(
    ("confidence", "expected"),
    [("high", "high"), (" Medium ", "medium"), ("LOW", "low"), ("certain", None), (0.9, None), (None, None)],
)
def test_it_normalises_confidence(confidence: object, expected: str | None) -> None:
    assert parse(verdict_json(confidence=confidence)).confidence == expected


@pytest.mark.parametrize("value", [None, 3, "", "  ", ["spam"]])
def test_it_ignores_a_policy_category_that_is_not_text(value: object) -> None:
    assert parse(verdict_json(policy_category=value)).policy_category is None


@pytest.mark.parametrize("value", [None, 3, {"why": "x"}])
def test_it_gives_an_empty_rationale_when_it_is_not_text(value: object) -> None:
    assert parse(verdict_json(rationale=value)).rationale == ""
