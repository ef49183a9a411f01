"""Who may see and do what, through the HTTP views: every screen is scoped by role and queue grants."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from accounts.roles import Role
from moderation.models import Case
from reviews import services
from reviews.models import Decision
from tests.conftest import CasesFactory, ClientFor
from tests.reviews.helpers import case_ids_in


def test_it_creates_one_group_per_role(db: None) -> None:
    names = set(Group.objects.values_list("name", flat=True))
    assert {r.value for r in Role} <= names


def test_it_hides_an_ungranted_queue_from_a_moderator(
    outsider: User, moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    client = client_for(outsider)
    assert client.get(f"/cases/{case.pk}/").status_code == 404
    assert case_ids_in(client.get("/queue/").content) == []
    # The granted moderator sees it, so the 404 is about the grant.
    assert case_ids_in(client_for(moderator).get("/queue/").content) == [case.pk]
    assert client_for(moderator).get(f"/cases/{case.pk}/").status_code == 200


def test_it_never_lets_a_moderator_claim_from_an_ungranted_queue(
    outsider: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    response = client_for(outsider).post("/queue/next")
    assert response.status_code == 302 and response["Location"] == "/queue/"
    case.refresh_from_db()
    assert case.state == Case.State.QUEUED and case.lease_owner is None


def test_it_refuses_a_decision_on_an_ungranted_case(
    outsider: User, moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    # Even a case claimed in outsider's name (say, before the grant was revoked) stays out of reach.
    Case.objects.filter(pk=case.pk).update(
        state=Case.State.CLAIMED, lease_owner=outsider, lease_expires_at=timezone.now() + timedelta(minutes=5)
    )
    response = client_for(outsider).post(f"/cases/{case.pk}/decide", {"action": "confirm"})
    assert response.status_code == 404
    assert not Decision.objects.exists()


@pytest.mark.parametrize("persona", ["auditor", "policy_editor"])
def test_it_keeps_auditors_and_policy_editors_out_of_the_queue(
    persona: str, request: Any, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    user = request.getfixturevalue(persona)
    [case] = queued_cases()
    client = client_for(user)
    assert client.get("/queue/").status_code == 403
    assert client.get("/queue/counts").status_code == 403
    assert client.post("/queue/next").status_code == 403
    assert client.get(f"/cases/{case.pk}/").status_code == 403
    assert client.post(f"/cases/{case.pk}/decide", {"action": "confirm"}).status_code == 403
    case.refresh_from_db()
    assert case.state == Case.State.QUEUED and not Decision.objects.exists()


@pytest.mark.parametrize(
    ("method", "url"),
    [("get", "/queue/"), ("get", "/metrics/"), ("get", "/callbacks/"), ("post", "/queue/next")],
)
def test_it_sends_anonymous_visitors_to_the_login_page(method: str, url: str, db: None) -> None:
    response = getattr(Client(), method)(url)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={url}"


def test_it_refuses_an_anonymous_decision(queued_cases: CasesFactory) -> None:
    [case] = queued_cases()
    response = Client().post(f"/cases/{case.pk}/decide", {"action": "confirm"})
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert not Decision.objects.exists()


@pytest.mark.parametrize(
    ("persona", "status"),
    [
        ("admin", 200),
        ("moderator", 403),
        ("senior_moderator", 403),
        ("auditor", 403),
        ("policy_editor", 403),
    ],
)
def test_it_shows_callback_deliveries_to_admins_only(
    persona: str, status: int, request: Any, client_for: ClientFor, db: None
) -> None:
    user = request.getfixturevalue(persona)
    assert client_for(user).get("/callbacks/").status_code == status


@pytest.mark.parametrize("waiting", ["escalated", "appealed"])
def test_it_keeps_escalations_and_appeals_for_senior_moderators(
    waiting: str,
    moderator: User,
    senior_moderator: User,
    admin: User,
    queued_cases: CasesFactory,
    client_for: ClientFor,
) -> None:
    [original] = queued_cases(state=Case.State.DECIDED)
    extra: dict[str, Any] = {"needs_senior": True} if waiting == "escalated" else {"appeal_of": original}
    [case] = queued_cases(state=waiting, **extra)

    response = client_for(moderator).post("/queue/next")
    assert response["Location"] == "/queue/"
    case.refresh_from_db()
    assert case.state == waiting

    response = client_for(senior_moderator).post("/queue/next")
    assert response["Location"] == f"/cases/{case.pk}/"
    case.refresh_from_db()
    assert case.state == Case.State.CLAIMED and case.lease_owner == senior_moderator

    # Back in the queue, an admin may take it as well.
    assert services.case_release(case=case, moderator=senior_moderator)
    assert client_for(admin).post("/queue/next")["Location"] == f"/cases/{case.pk}/"


def test_it_lets_an_admin_review_every_queue_without_a_grant(
    admin: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    client = client_for(admin)
    assert case_ids_in(client.get("/queue/").content) == [case.pk]
    assert client.post("/queue/next")["Location"] == f"/cases/{case.pk}/"


def test_the_item_history_shows_only_cases_of_granted_policies(
    moderator: User, queued_cases: CasesFactory, source: Any, client_for: ClientFor
) -> None:
    """Issue 14: another policy's decision on the same item, and who made it, are not the viewer's to see."""
    from policies import services as policy_services
    from policies.models import Policy
    from tests.conftest import POLICY_TEXT
    from tests.reviews.helpers import user_create

    [case] = queued_cases()
    secret = Policy.objects.create(slug="secret-team", name="Secret team")
    version = policy_services.policy_version_create(policy=secret, text=POLICY_TEXT, activate=True)
    hidden_moderator = user_create("hank", Role.MODERATOR, grants=[secret])
    other = Case.objects.create(item=case.item, policy_version=version, state=Case.State.DECIDED)
    Decision.objects.create(
        case=other, moderator=hidden_moderator, action=Decision.Action.OVERTURN, final_label="safe"
    )

    page = client_for(moderator).get(f"/cases/{case.pk}/").content.decode()
    seen_by_hank = client_for(hidden_moderator).get(f"/cases/{other.pk}/").content.decode()

    assert f"/cases/{other.pk}/" not in page
    assert "hank" not in page and "Secret team" not in page
    assert f"/cases/{case.pk}/" not in seen_by_hank  # and the other way round
