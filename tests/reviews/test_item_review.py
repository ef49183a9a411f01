"""Item-centric review (issue 16, item 1): one claim and one submit decide every open policy of an item."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from audit.models import AuditEvent
from moderation.models import Case, ContentItem
from policies import services as policy_services
from policies.models import GoldenExample, Policy, PolicyVersion
from reviews import services
from reviews.models import Decision, QueueGrant
from tests.conftest import POLICY_TEXT, ApiClient, ClientFor
from tests.reviews.helpers import user_create

HARASSMENT_TEXT = (
    POLICY_TEXT.replace("Spam policy", "Harassment policy").replace("SP1", "HA1").replace("SP2", "HA2")
)


@pytest.fixture
def harassment(db: None) -> Policy:
    policy = Policy.objects.create(slug="harassment", name="Harassment", qa_sample_rate=0)
    policy_services.policy_version_create(policy=policy, text=HARASSMENT_TEXT, activate=True)
    return policy


@pytest.fixture
def two_queues(policy: Policy, harassment: Policy) -> list[Policy]:
    Policy.objects.filter(pk=policy.pk).update(qa_sample_rate=0)
    return [policy, harassment]


def item_cases(source: ApiClient, policies: list[Policy], verdicts: list[str], **fields: Any) -> list[Case]:
    """One item, a waiting case per policy with the given model verdicts."""
    item = ContentItem.objects.create(
        source=source.source,
        external_id=f"post-{ContentItem.objects.count() + 1}",
        text="Triple your savings!",
    )
    return [
        Case.objects.create(
            item=item,
            policy_version=p.versions.get(status=PolicyVersion.Status.ACTIVE),
            state=Case.State.QUEUED,
            verdict=v,
            confidence="high" if v in ("violates", "safe") else "",
            priority=70,
            queued_at=timezone.now(),
            **fields,
        )
        for p, v in zip(policies, verdicts, strict=True)
    ]


def test_next_claims_every_open_case_of_the_item_under_one_lease(
    two_queues: list[Policy], source: ApiClient
) -> None:
    moderator = user_create("mona", "moderator", grants=two_queues)
    spam, _ = item_cases(source, two_queues, ["violates", "safe"])
    claimed = services.case_claim_next(moderator=moderator)
    assert claimed is not None and claimed.item_id == spam.item_id
    rows = Case.objects.filter(item_id=spam.item_id).values_list(
        "state", "lease_owner_id", "lease_expires_at"
    )
    assert {r[:2] for r in rows} == {(Case.State.CLAIMED, moderator.pk)}
    assert len({r[2] for r in rows}) == 1  # one lease
    assert AuditEvent.objects.filter(action="case.claimed").count() == 2


def test_the_claim_takes_only_the_moderators_granted_queues_and_skips_a_case_someone_holds(
    two_queues: list[Policy], source: ApiClient
) -> None:
    spam_only = user_create("mona", "moderator", grants=[two_queues[0]])
    spam, harassment = item_cases(source, two_queues, ["violates", "safe"])
    assert services.case_claim_next(moderator=spam_only) == spam
    harassment.refresh_from_db()
    assert harassment.state == Case.State.QUEUED

    other_item = item_cases(source, two_queues, ["violates", "violates"])
    both = user_create("otto", "moderator", grants=two_queues)
    QueueGrant.objects.create(user=spam_only, policy=two_queues[1])
    # otto holds the harassment case of the first item; mona's next claim is the second item, whole.
    claimed = services.case_claim_next(moderator=both)
    assert claimed == harassment
    mine = services.case_claim_next(moderator=spam_only)
    assert mine is not None and mine.item_id == spam.item_id  # still holds the first item's spam case
    assert set(Case.objects.filter(lease_owner=both).values_list("pk", flat=True)) == {harassment.pk}
    assert other_item[0].item_id != spam.item_id


def test_the_queue_lists_an_item_once_with_a_chip_per_policy(
    two_queues: list[Policy], source: ApiClient, client_for: ClientFor
) -> None:
    moderator = user_create("mona", "moderator", grants=two_queues)
    item_cases(source, two_queues, ["violates", "safe"])
    page = client_for(moderator).get("/queue/").content.decode()
    assert page.count("Triple your savings!") == 1
    assert page.count('class="chip ') == 2
    assert 'Harassment</bdi> v1: <span class="verdict-word">safe' in page


def test_one_submit_decides_every_policy_each_its_own_decision_and_audit_event(
    two_queues: list[Policy],
    source: ApiClient,
    django_capture_on_commit_callbacks: Any,
    client_for: ClientFor,
) -> None:
    moderator = user_create("mona", "moderator", grants=two_queues)
    spam, harassment = item_cases(source, two_queues, ["violates", "safe"])
    client = client_for(moderator)
    assert client.post("/queue/next")["Location"] == f"/cases/{spam.pk}/"
    page = client.get(f"/cases/{spam.pk}/").content.decode()
    assert "Triple your savings!" in page and page.count('class="card policy-panel') == 2
    assert "Confirm all 2" in page
    response = client.post(
        f"/cases/{spam.pk}/decide-item",
        {
            "action": "submit",
            f"case{spam.pk}-final_label": "violates",
            f"case{spam.pk}-rule_ids": ["SP2"],
            f"case{harassment.pk}-final_label": "violates",
            f"case{harassment.pk}-rule_ids": ["HA1"],
        },
    )
    assert response.status_code == 302 and response["Location"] == "/queue/"
    decisions = {d.case_id: d for d in Decision.objects.all()}
    assert (decisions[spam.pk].action, decisions[spam.pk].rule_ids) == ("confirm", ["SP2"])
    assert (decisions[harassment.pk].action, decisions[harassment.pk].final_label) == ("overturn", "violates")
    assert AuditEvent.objects.filter(action="case.decided").count() == 2
    assert set(Case.objects.filter(item_id=spam.item_id).values_list("state", flat=True)) == {"decided"}


def test_one_key_confirms_all_and_asks_for_a_rule_the_model_did_not_cite(
    two_queues: list[Policy], source: ApiClient, client_for: ClientFor
) -> None:
    moderator = user_create("mona", "moderator", grants=two_queues)
    spam, _ = item_cases(source, two_queues, ["violates", "safe"])
    client = client_for(moderator)
    client.post("/queue/next")
    refused = client.post(f"/cases/{spam.pk}/decide-item", {"action": "confirm_all"})
    assert refused.status_code == 400 and b"at least one rule" in refused.content
    assert not Decision.objects.exists()
    response = client.post(
        f"/cases/{spam.pk}/decide-item", {"action": "confirm_all", f"case{spam.pk}-rule_ids": ["SP1"]}
    )
    assert response.status_code == 302
    assert sorted(Decision.objects.values_list("action", "final_label")) == [
        ("confirm", "safe"),
        ("confirm", "violates"),
    ]


def test_confirm_all_is_offered_only_when_every_policy_has_a_verdict(
    two_queues: list[Policy], source: ApiClient, client_for: ClientFor
) -> None:
    moderator = user_create("mona", "moderator", grants=two_queues)
    spam, harassment = item_cases(source, two_queues, ["undetermined", "safe"])
    client = client_for(moderator)
    client.post("/queue/next")
    page = client.get(f"/cases/{spam.pk}/").content.decode()
    assert "Confirm all" not in page
    assert client.post(f"/cases/{spam.pk}/decide-item", {"action": "confirm_all"}).status_code == 400
    response = client.post(
        f"/cases/{spam.pk}/decide-item",
        {
            "action": "submit",
            f"case{spam.pk}-final_label": "safe",
            f"case{harassment.pk}-final_label": "safe",
        },
    )
    assert response.status_code == 302
    assert sorted(Decision.objects.values_list("action", flat=True)) == ["confirm", "decided"]


def test_a_lost_lease_records_nothing_for_any_policy(
    two_queues: list[Policy], source: ApiClient, client_for: ClientFor
) -> None:
    moderator = user_create("mona", "moderator", grants=two_queues)
    spam, harassment = item_cases(source, two_queues, ["safe", "safe"])
    client = client_for(moderator)
    client.post("/queue/next")
    Case.objects.filter(pk=harassment.pk).update(
        state=Case.State.QUEUED, lease_owner=None, lease_expires_at=None
    )
    both = f"{spam.pk},{harassment.pk}"
    response = client.post(f"/cases/{spam.pk}/decide-item", {"action": "confirm_all", "cases": both})
    assert response.status_code == 409
    assert b"no longer yours" in response.content and b"Next case" in response.content
    assert not Decision.objects.exists()


def test_skip_gives_back_every_case_of_the_item(
    two_queues: list[Policy], source: ApiClient, client_for: ClientFor
) -> None:
    moderator = user_create("mona", "moderator", grants=two_queues)
    spam, _ = item_cases(source, two_queues, ["safe", "safe"])
    client = client_for(moderator)
    client.post("/queue/next")
    client.post(f"/cases/{spam.pk}/skip")
    assert set(Case.objects.filter(item_id=spam.item_id).values_list("state", flat=True)) == {"queued"}


@pytest.mark.django_db(transaction=True)
def test_concurrent_item_claims_never_share_a_case_and_decide_each_once(policy: Policy) -> None:
    import threading
    from collections import Counter

    from django.db import connection

    from moderation.models import Source
    from reviews.services import DecisionIn

    harassment = Policy.objects.create(slug="harassment", name="Harassment", qa_sample_rate=0)
    policy_services.policy_version_create(policy=harassment, text=HARASSMENT_TEXT, activate=True)
    Policy.objects.filter(pk=policy.pk).update(qa_sample_rate=0)
    queues = [policy, harassment]
    source = Source.objects.create(name="S", slug="s", api_key_id="k", api_key_hash="h")
    versions = [p.versions.get(status=PolicyVersion.Status.ACTIVE) for p in queues]
    for n in range(15):
        item = ContentItem.objects.create(source=source, external_id=f"c-{n}", text=f"text {n}")
        for version in versions:
            Case.objects.create(
                item=item, policy_version=version, state=Case.State.QUEUED, verdict="safe",
                confidence="high", priority=70, queued_at=timezone.now(),
            )  # fmt: skip
    moderators = [user_create(f"m{n}", "moderator", grants=queues) for n in range(5)]
    start = threading.Barrier(len(moderators))
    claimed: list[int] = []
    errors: list[BaseException] = []

    def work(moderator: User) -> None:
        try:
            start.wait()
            while (case := services.case_claim_next(moderator=moderator)) is not None:
                held = list(Case.objects.filter(item_id=case.item_id, lease_owner=moderator, state="claimed"))
                claimed.extend(c.pk for c in held)
                services.item_decide(
                    moderator=moderator,
                    decisions=[(c, DecisionIn(action=Decision.Action.CONFIRM)) for c in held],
                )
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(m,)) for m in moderators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert Counter(claimed).most_common(1)[0][1] == 1, "a case was handed to two moderators"
    assert len(claimed) == 30 and Decision.objects.count() == 30
    assert not Case.objects.exclude(state=Case.State.DECIDED).exists()


def test_one_submit_writes_each_kind_of_row_in_one_statement_whatever_the_number_of_policies(
    two_queues: list[Policy], source: ApiClient, client_for: ClientFor
) -> None:
    moderator = user_create("mona", "moderator", grants=two_queues)
    spam, harassment = item_cases(source, two_queues, ["violates", "safe"])
    client = client_for(moderator)
    client.post("/queue/next")
    statements: list[str] = []

    def log(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.append(sql.lstrip())
        return execute(sql, params, many, context)

    with connection.execute_wrapper(log):
        response = client.post(
            f"/cases/{spam.pk}/decide-item", {"action": "confirm_all", f"case{spam.pk}-rule_ids": ["SP1"]}
        )
    assert response.status_code == 302
    assert Decision.objects.filter(case__in=[spam, harassment]).count() == 2
    assert GoldenExample.objects.count() == 2
    for write in (
        'INSERT INTO "reviews_decision"',
        'INSERT INTO "reviews_goldenexample"',
        'UPDATE "moderation_case" SET "state" = ',
        "INSERT INTO reviews_auditevent",
    ):
        assert len([s for s in statements if s.startswith(write)]) == 1, write
