"""Shared by the export tests: decided cases with the model's verdict, and reading streamed exports."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from django.contrib.auth.models import User

from moderation.models import Case, TriageResult
from policies.models import Policy
from reviews.models import Decision
from tests.conftest import ApiClient
from tests.reviews.helpers import cases_create

CHAIN_OF_THOUGHT = "The user repeats a promotion; SP1 looks relevant. Thinking about zorblax."


def decided_case(
    policy: Policy,
    source: ApiClient,
    moderator: User,
    *,
    model_verdict: str = "violates",
    action: str = "confirm",
    final_label: str = "violates",
    rule_ids: tuple[str, ...] = ("SP1",),
    note: str = "checked the link",
    **case_fields: Any,
) -> tuple[Case, Decision]:
    case = cases_create(
        policy, source.source, 1, state=Case.State.DECIDED, verdict=model_verdict, **case_fields
    )[0]
    TriageResult.objects.create(
        case=case,
        tier=TriageResult.Tier.SAFEGUARD,
        model="openai/gpt-oss-safeguard-20b",
        verdict=model_verdict,
        confidence="high",
        rule_ids=list(rule_ids) if model_verdict == "violates" else [],
        rationale="Repeated unsolicited promotion.",
        chain_of_thought=CHAIN_OF_THOUGHT,
    )
    decision = Decision.objects.create(
        case=case,
        moderator=moderator,
        action=action,
        final_label=final_label,
        rule_ids=list(rule_ids) if final_label == "violates" else [],
        note=note,
        model_verdict=model_verdict,
    )
    return case, decision


def body_of(response: Any) -> str:
    assert response.status_code == 200, response.content[:500]
    return b"".join(response.streaming_content).decode()


def csv_rows(response: Any) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body_of(response))))


def jsonl_rows(response: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body_of(response).splitlines()]
