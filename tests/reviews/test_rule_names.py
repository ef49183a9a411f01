"""Rule names beside rule ids (issue 16, item 4): parsed from the policy's Definitions/Criteria/Rules."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import Client

from policies.models import Policy
from policies.rules import policy_rule_names
from reviews import services
from tests.conftest import CasesFactory
from tests.policies.evaluation_helpers import finished_run, golden_accepted

POLICY = """# Spam

## Instructions
Cite SP1 or SP2 when they apply.

## Definitions
- Link: an address.

## Criteria
- SP1: Unsolicited commercial promotion, repeated or unrelated to the conversation.
- **SP2** - Deceptive links; shortened or obfuscated URLs.
- SP3) Requests for passwords (or one-time codes) sent to strangers

## Examples
- "buy now" -> violation, SP1: not a definition
"""


def test_it_names_each_rule_from_its_definition() -> None:
    assert policy_rule_names(POLICY) == {
        "SP1": "Unsolicited commercial promotion",
        "SP2": "Deceptive links",
        "SP3": "Requests for passwords",
    }


def test_a_long_name_is_cut_at_a_word_and_a_text_without_headings_is_read_whole() -> None:
    names = policy_rule_names("- R1: " + "word " * 30)
    assert names["R1"].endswith("…") and len(names["R1"]) <= 60 and "wor…" not in names["R1"]


def test_the_case_view_golden_set_and_run_pages_name_the_rules(
    client: Client,
    policy: Policy,
    moderator: User,
    policy_editor: User,
    queued_cases: CasesFactory,
) -> None:
    [case] = queued_cases()
    assert services.case_claim_next(moderator=moderator) == case
    client.force_login(moderator)
    page = client.get(f"/cases/{case.pk}/").content.decode()
    assert "SP1 Unsolicited commercial promotion repeated across" in page
    assert "SP2 Links that disguise their destination" in page

    golden_accepted(policy, "zorblax links", "violates", ["SP2"])
    client.force_login(policy_editor)
    golden = client.get("/policies/spam/golden/").content.decode()
    assert "SP2 (Links that disguise their destination)" in golden
    version = policy.versions.get(status="active")
    run = finished_run(
        version,
        rules=[
            {
                "rule_id": "SP2",
                "expected": 1,
                "cited": 1,
                "cited_correctly": 1,
                "caught": 1,
                "precision": 1.0,
                "recall": 1.0,
            }
        ],
    )
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert "<code>SP2</code> Links that disguise their destination" in page
