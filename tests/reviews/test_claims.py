"""Claims and leases: one case per moderator at a time, 10-minute renewable leases, skips, expiry sweep."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from accounts.roles import Role
from audit.models import AuditEvent
from moderation.models import Case, Source
from policies.models import Policy
from reviews import selectors, services, tasks
from reviews.models import Decision
from reviews.services import DecisionIn, DecisionRefused
from tests.conftest import CasesFactory, ClientFor
from tests.reviews.helpers import cases_create, text_of, user_create


def test_it_claims_the_next_case_with_a_ten_minute_lease(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [low] = queued_cases(priority=10)
    [high] = queued_cases(priority=80)
    before = timezone.now()
    response = client_for(moderator).post("/queue/next")
    assert response.status_code == 302 and response["Location"] == f"/cases/{high.pk}/"
    high.refresh_from_db()
    assert high.state == Case.State.CLAIMED and high.lease_owner == moderator
    assert high.lease_expires_at is not None
    lease = high.lease_expires_at - before
    assert timedelta(minutes=9, seconds=55) < lease <= timedelta(minutes=10, seconds=5)
    low.refresh_from_db()
    assert low.state == Case.State.QUEUED
    assert AuditEvent.objects.filter(action="case.claimed", object_id=str(high.pk)).count() == 1


def test_it_gives_back_the_case_already_held_on_reload(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    first, _second = queued_cases(2)
    client = client_for(moderator)
    assert client.post("/queue/next")["Location"] == f"/cases/{first.pk}/"
    assert client.post("/queue/next")["Location"] == f"/cases/{first.pk}/"
    assert Case.objects.filter(state=Case.State.CLAIMED).count() == 1
    assert AuditEvent.objects.filter(action="case.claimed").count() == 1
    page = client.get(f"/cases/{first.pk}/")
    assert page.status_code == 200 and b'id="decision-form"' in page.content


def test_it_shows_a_case_held_by_someone_else_without_the_decision_form(
    moderator: User, other_moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    services.case_claim_next(moderator=other_moderator)
    page = client_for(moderator).get(f"/cases/{case.pk}/")
    assert page.status_code == 200
    assert b'id="decision-form"' not in page.content
    assert "otto is reviewing it" in text_of(page.content)


def test_it_releases_a_skipped_case_and_hands_out_another(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [first] = queued_cases(priority=80)
    [second] = queued_cases(priority=70)
    client = client_for(moderator)
    client.post("/queue/next")
    response = client.post(f"/cases/{first.pk}/skip")
    assert response.status_code == 302 and response["Location"] == f"/cases/{second.pk}/"
    first.refresh_from_db()
    assert first.state == Case.State.QUEUED
    assert first.lease_owner is None and first.lease_expires_at is None
    assert AuditEvent.objects.filter(action="case.released", object_id=str(first.pk)).count() == 1
    # Skip the second too: the first is not handed straight back; the queue page says what is left.
    response = client.post(f"/cases/{second.pk}/skip")
    assert response["Location"] == "/queue/"
    assert not Case.objects.filter(state=Case.State.CLAIMED).exists()
    # Once the moderator came back to the queue, the skipped cases are offered again.
    assert client.post("/queue/next")["Location"] == f"/cases/{first.pk}/"


def test_it_lets_another_moderator_take_a_skipped_case(
    moderator: User, other_moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    client = client_for(moderator)
    client.post("/queue/next")
    client.post(f"/cases/{case.pk}/skip")
    assert client_for(other_moderator).post("/queue/next")["Location"] == f"/cases/{case.pk}/"


@pytest.mark.parametrize(
    ("fields", "waiting"),
    [
        ({}, Case.State.QUEUED),
        ({"needs_senior": True}, Case.State.ESCALATED),
        ({"appeal": True}, Case.State.APPEALED),
    ],
)
def test_it_releases_a_skipped_case_to_the_queue_it_came_from(
    fields: dict[str, bool],
    waiting: str,
    senior_moderator: User,
    queued_cases: CasesFactory,
    client_for: ClientFor,
) -> None:
    extra: dict[str, object] = {"needs_senior": fields.get("needs_senior", False)}
    if fields.get("appeal"):
        [extra["appeal_of"]] = queued_cases(state=Case.State.DECIDED)
    [case] = queued_cases(state=waiting, **extra)
    claimed = services.case_claim_next(moderator=senior_moderator)
    assert claimed == case
    assert client_for(senior_moderator).post(f"/cases/{case.pk}/skip").status_code == 302
    case.refresh_from_db()
    assert case.state == waiting and case.lease_owner is None


def test_it_renews_a_lease_for_its_holder_only(
    moderator: User, other_moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    services.case_claim_next(moderator=moderator)
    Case.objects.filter(pk=case.pk).update(lease_expires_at=timezone.now() + timedelta(minutes=1))

    assert client_for(other_moderator).post(f"/cases/{case.pk}/renew").status_code == 409
    case.refresh_from_db()
    assert case.lease_expires_at is not None
    assert case.lease_expires_at < timezone.now() + timedelta(minutes=2)

    assert client_for(moderator).post(f"/cases/{case.pk}/renew").status_code == 204
    case.refresh_from_db()
    assert case.lease_expires_at is not None
    assert case.lease_expires_at > timezone.now() + timedelta(minutes=9, seconds=50)


def test_it_refuses_to_renew_a_lease_that_was_swept(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    services.case_claim_next(moderator=moderator)
    Case.objects.filter(pk=case.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert services.leases_expire() == 1
    response = client_for(moderator).post(f"/cases/{case.pk}/renew")
    assert response.status_code == 409 and b"expired" in response.content
    case.refresh_from_db()
    assert case.state == Case.State.QUEUED and case.lease_owner is None


def test_the_sweep_returns_expired_claims_to_the_queue_they_came_from(
    senior_moderator: User, moderator: User, queued_cases: CasesFactory
) -> None:
    [decided] = queued_cases(state=Case.State.DECIDED)
    [plain] = queued_cases()
    [escalated] = queued_cases(state=Case.State.ESCALATED, needs_senior=True)
    [appeal] = queued_cases(state=Case.State.APPEALED, appeal_of=decided)
    [fresh] = queued_cases()
    for case in (plain, escalated, appeal):
        assert services.case_claim_next(moderator=senior_moderator, skip_ids=[fresh.pk]) == case
        # A tab closed long ago: the lease ran out.
        Case.objects.filter(pk=case.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=5))
    assert services.case_claim_next(moderator=moderator) == fresh

    tasks.leases_expire()  # the beat task's body

    states = dict(
        Case.objects.filter(pk__in=[plain.pk, escalated.pk, appeal.pk, fresh.pk]).values_list("pk", "state")
    )
    assert states == {
        plain.pk: Case.State.QUEUED,
        escalated.pk: Case.State.ESCALATED,
        appeal.pk: Case.State.APPEALED,
        fresh.pk: Case.State.CLAIMED,  # its lease still runs
    }
    assert not Case.objects.filter(
        pk__in=[plain.pk, escalated.pk, appeal.pk], lease_owner__isnull=False
    ).exists()
    events = AuditEvent.objects.filter(action="case.lease_expired")
    assert sorted(int(e.object_id) for e in events) == sorted([plain.pk, escalated.pk, appeal.pk])
    assert all(e.payload == {"lease_owner": senior_moderator.pk} for e in events)
    assert services.leases_expire() == 0  # nothing left to free


def test_it_treats_an_expired_lease_as_not_held(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    first, second = queued_cases(2)
    services.case_claim_next(moderator=moderator)
    Case.objects.filter(pk=first.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    client = client_for(moderator)
    # The decision form is gone, and the decide URL no longer answers for this moderator.
    assert b'id="decision-form"' not in client.get(f"/cases/{first.pk}/").content
    assert services.case_claim_next(moderator=moderator) == second


def test_the_service_refuses_a_decision_after_the_lease_was_taken_over(
    moderator: User, other_moderator: User, queued_cases: CasesFactory
) -> None:
    [case] = queued_cases()
    mine = services.case_claim_next(moderator=moderator)
    assert mine is not None
    Case.objects.filter(pk=case.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    services.leases_expire()
    assert services.case_claim_next(moderator=other_moderator) == case

    with pytest.raises(DecisionRefused):
        services.case_decide(
            case=mine, moderator=moderator, decision=DecisionIn(action=Decision.Action.CONFIRM)
        )
    assert not Decision.objects.exists()
    case.refresh_from_db()
    assert case.state == Case.State.CLAIMED and case.lease_owner == other_moderator


def test_the_view_answers_409_to_a_decision_after_the_lease_was_taken_over(
    moderator: User, other_moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    client = client_for(moderator)
    client.post("/queue/next")
    Case.objects.filter(pk=case.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    services.leases_expire()
    services.case_claim_next(moderator=other_moderator)
    response = client.post(f"/cases/{case.pk}/decide", {"action": "confirm"})
    assert not Decision.objects.exists()
    assert response.status_code == 409


def test_the_view_refuses_a_decision_after_the_lease_was_taken_over(
    moderator: User, other_moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    client = client_for(moderator)
    client.post("/queue/next")
    Case.objects.filter(pk=case.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    services.leases_expire()
    services.case_claim_next(moderator=other_moderator)
    response = client.post(f"/cases/{case.pk}/decide", {"action": "confirm"})
    assert response.status_code in (404, 409)
    assert not Decision.objects.exists()
    case.refresh_from_db()
    assert case.state == Case.State.CLAIMED and case.lease_owner == other_moderator


MODERATORS = 8
CASES = 40


@pytest.mark.django_db(transaction=True)
def test_it_never_gives_one_case_to_two_moderators(policy: Policy) -> None:
    policy.qa_sample_rate = 0
    policy.save()
    source = Source.objects.create(name="S", slug="s", api_key_id="k", api_key_hash="h")
    cases = cases_create(policy, source, CASES)
    moderators = [user_create(f"m{n}", Role.MODERATOR, grants=[policy]) for n in range(MODERATORS)]
    start = threading.Barrier(MODERATORS)
    claimed: dict[int, list[int]] = {m.pk: [] for m in moderators}
    errors: list[BaseException] = []

    def work(moderator: User) -> None:
        try:
            start.wait()
            while True:
                case = services.case_claim_next(moderator=moderator)
                if case is None:
                    return
                claimed[moderator.pk].append(case.pk)
                services.case_decide(
                    case=case,
                    moderator=moderator,
                    decision=DecisionIn(action=Decision.Action.CONFIRM, rule_ids=["SP1"]),
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
    every_claim = [pk for pks in claimed.values() for pk in pks]
    assert Counter(every_claim).most_common(1)[0][1] == 1, "a case was handed to two moderators"
    assert sorted(every_claim) == sorted(c.pk for c in cases)
    assert sum(1 for pks in claimed.values() if pks) > 1, "the moderators did not actually compete"
    assert Decision.objects.count() == CASES
    assert AuditEvent.objects.filter(action="case.claimed").count() == CASES
    assert not selectors.cases_claimed_by(moderators[0]).exists()


@pytest.mark.django_db(transaction=True)
def test_a_double_click_on_next_case_claims_one_case(policy: Policy) -> None:
    source = Source.objects.create(name="S", slug="s", api_key_id="k", api_key_hash="h")
    cases_create(policy, source, 10)
    moderator = user_create("quick", Role.MODERATOR, grants=[policy])
    clicks = 6
    start = threading.Barrier(clicks)
    handed: list[int] = []
    errors: list[BaseException] = []

    def click() -> None:
        try:
            start.wait()
            case = services.case_claim_next(moderator=moderator)
            assert case is not None
            handed.append(case.pk)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=click) for _ in range(clicks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert len(set(handed)) == 1, "one moderator ended up holding several cases"
    assert Case.objects.filter(state=Case.State.CLAIMED).count() == 1


# Issue 14: a lease that ran out is lost at once, not when the sweep gets to it -------------------------


def test_it_refuses_to_renew_an_expired_lease_the_sweep_has_not_freed_yet(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    services.case_claim_next(moderator=moderator)
    ran_out = timezone.now() - timedelta(seconds=1)
    Case.objects.filter(pk=case.pk).update(lease_expires_at=ran_out)

    response = client_for(moderator).post(f"/cases/{case.pk}/renew")

    assert response.status_code == 409
    case.refresh_from_db()
    assert case.lease_expires_at == ran_out
    assert services.leases_expire() == 1  # still the sweep's to free


def test_it_refuses_a_decision_on_an_expired_lease_the_sweep_has_not_freed_yet(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    services.case_claim_next(moderator=moderator)
    Case.objects.filter(pk=case.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    response = client_for(moderator).post(f"/cases/{case.pk}/decide", {"action": "confirm"})

    assert response.status_code == 409
    assert b"no longer yours" in response.content
    assert not Decision.objects.exists()
    with pytest.raises(services.LeaseLost):
        services.case_decide(
            case=case, moderator=moderator, decision=DecisionIn(action=Decision.Action.CONFIRM)
        )
