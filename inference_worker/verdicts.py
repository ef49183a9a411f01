"""The verdict in the model's final message, parsed defensively.

The policy asks for ``{"violation": 0|1, "policy_category": str|null,
"rule_ids": [str], "confidence": "low"|"medium"|"high", "rationale": str}``.
The model does not always comply, so the parse tries, in order: a bare ``0`` /
``1``; the first balanced ``{...}`` once code fences are stripped; a
``"violation": 0|1`` regex (true / false too); and otherwise ``undetermined``, which always
goes to a human. Only the final message is ever parsed, never the chain of
thought.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

Label = Literal["violates", "safe", "undetermined"]
Confidence = Literal["low", "medium", "high"]
ParsePath = Literal["json", "bare", "regex", "none"]

_CONFIDENCES: dict[str, Confidence] = {"low": "low", "medium": "medium", "high": "high"}
# The spellings of "violation" we accept: JSON 0 / 1 / true / false / "0" / "1".
_JSON_VIOLATION_LABELS: dict[int | str, Label] = {1: "violates", 0: "safe", "1": "violates", "0": "safe"}
_REGEX_VIOLATION_LABELS: dict[str, Label] = {
    "1": "violates",
    "0": "safe",
    '"1"': "violates",
    '"0"': "safe",
    "true": "violates",
    "false": "safe",
}
_CODE_FENCE = re.compile(r"```[A-Za-z0-9_-]*")
_VIOLATION_FIELD = re.compile(r'"violation"\s*:\s*("[01]"|[01]|true|false)(?![\w.])')


@dataclass(frozen=True)
class Verdict:
    label: Label
    policy_category: str | None
    rule_ids: tuple[str, ...]
    confidence: Confidence | None
    rationale: str
    hallucinated_rule_ids: tuple[str, ...]
    parse_path: ParsePath


UNDETERMINED = Verdict(
    label="undetermined",
    policy_category=None,
    rule_ids=(),
    confidence=None,
    rationale="",
    hallucinated_rule_ids=(),
    parse_path="none",
)


def verdict_parse(final_text: str | None, *, policy_rule_ids: Collection[str]) -> Verdict:
    """The verdict in ``final_text``; cited ids outside ``policy_rule_ids`` are hallucinated."""
    if final_text is None:
        return UNDETERMINED
    text = _CODE_FENCE.sub("", final_text).strip()
    if text in ("0", "1"):
        return _verdict_bare(text)
    verdict_object = _first_json_object(text)
    if verdict_object is not None:
        verdict = _verdict_from_object(verdict_object, policy_rule_ids)
        if verdict is not None:
            return verdict
    return _verdict_from_regex(text)


def _verdict_bare(text: str) -> Verdict:
    return Verdict(
        label=_JSON_VIOLATION_LABELS[text],
        policy_category=None,
        rule_ids=(),
        confidence=None,
        rationale="",
        hallucinated_rule_ids=(),
        parse_path="bare",
    )


def _verdict_from_regex(text: str) -> Verdict:
    match = _VIOLATION_FIELD.search(text)
    if match is None:
        return UNDETERMINED
    return Verdict(
        label=_REGEX_VIOLATION_LABELS[match[1]],
        policy_category=None,
        rule_ids=(),
        confidence=None,
        rationale="",
        hallucinated_rule_ids=(),
        parse_path="regex",
    )


def _verdict_from_object(
    verdict_object: Mapping[str, object], policy_rule_ids: Collection[str]
) -> Verdict | None:
    label = _label(verdict_object.get("violation"))
    if label is None:
        return None
    defined, hallucinated = _rule_ids_split(verdict_object.get("rule_ids"), policy_rule_ids)
    return Verdict(
        label=label,
        policy_category=_optional_text(verdict_object.get("policy_category")),
        rule_ids=defined,
        confidence=_confidence(verdict_object.get("confidence")),
        rationale=_optional_text(verdict_object.get("rationale")) or "",
        hallucinated_rule_ids=hallucinated,
        parse_path="json",
    )


def _label(violation: object) -> Label | None:
    # bool is an int subclass, so it is told apart before the int lookup.
    if isinstance(violation, bool):
        return "violates" if violation else "safe"
    if isinstance(violation, int | str):
        return _JSON_VIOLATION_LABELS.get(violation)
    return None


def _confidence(value: object) -> Confidence | None:
    if not isinstance(value, str):
        return None
    return _CONFIDENCES.get(value.strip().lower())


def _optional_text(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


def _rule_ids_split(
    cited: object, policy_rule_ids: Collection[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(ids the policy defines, ids it does not), in citation order, without repeats.

    A cited id matches a defined one regardless of case and is reported in the
    policy's spelling.
    """
    if not isinstance(cited, list) or not all(isinstance(rule_id, str) for rule_id in cited):
        return (), ()
    defined_by_key = {rule_id.upper(): rule_id for rule_id in policy_rule_ids}
    defined: dict[str, None] = {}
    hallucinated: dict[str, None] = {}
    for rule_id in (raw.strip() for raw in cited):
        if not rule_id:
            continue
        if rule_id.upper() in defined_by_key:
            defined[defined_by_key[rule_id.upper()]] = None
        else:
            hallucinated[rule_id] = None
    return tuple(defined), tuple(hallucinated)


def _first_json_object(text: str) -> dict[str, object] | None:
    candidate = _first_balanced_braces(text)
    if candidate is None:
        return None
    try:
        decoded = json.loads(candidate)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


def _first_balanced_braces(text: str) -> str | None:
    """The first ``{...}`` whose braces balance, skipping braces inside JSON strings."""
    start = text.find("{")
    if start < 0:
        return None
    depth = 0
    in_string = False
    escaped = False
    for index in range(start, len(text)):
        character = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif character == "\\":
                escaped = True
            elif character == '"':
                in_string = False
        elif character == '"':
            in_string = True
        elif character == "{":
            depth += 1
        elif character == "}":
            depth -= 1
            if depth == 0:
                return text[start : index + 1]
    return None
