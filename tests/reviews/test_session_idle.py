"""Issue 14: sessions end after SESSION_IDLE_TIMEOUT_SECONDS without a request of the user's own; the
case page's lease renewal and the queue's counters (polling) do not keep an idle session alive."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from config.middleware import SESSION_LAST_ACTIVE_KEY
from moderation.models import Case
from reviews import services
from tests.conftest import CasesFactory, ClientFor

TIMEOUT = 3600


@pytest.fixture(autouse=True)
def idle_timeout(settings: Any) -> None:
    settings.SESSION_IDLE_TIMEOUT_SECONDS = TIMEOUT


def last_active(client: Client, seconds_ago: int | None = None) -> Any:
    session = client.session
    if seconds_ago is not None:
        session[SESSION_LAST_ACTIVE_KEY] = int(time.time()) - seconds_ago
        session.save()
    return session.get(SESSION_LAST_ACTIVE_KEY)


def test_it_logs_out_a_session_idle_for_longer_than_the_timeout(
    moderator: User, client_for: ClientFor
) -> None:
    client = client_for(moderator)
    assert client.get("/queue/").status_code == 200
    last_active(client, seconds_ago=TIMEOUT + 5)

    response = client.get("/queue/")

    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
    assert client.get("/queue/").status_code == 302  # logged out for good, not just this request


def test_it_keeps_a_session_that_was_active_within_the_timeout(
    moderator: User, client_for: ClientFor
) -> None:
    client = client_for(moderator)
    last_active(client, seconds_ago=TIMEOUT - 60)

    assert client.get("/queue/").status_code == 200
    assert last_active(client) >= int(time.time()) - 5  # and the request counts as activity


def test_lease_renewal_and_counters_polling_do_not_count_as_activity(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    client = client_for(moderator)
    client.post("/queue/next")
    before = last_active(client, seconds_ago=TIMEOUT - 60)

    assert client.post(f"/cases/{case.pk}/renew").status_code == 204
    assert client.get("/queue/counts", headers={"HX-Request": "true"}).status_code == 200
    assert last_active(client) == before


def test_an_idle_tab_polling_for_its_lease_is_sent_to_the_login_page_and_loses_the_lease(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    client = client_for(moderator)
    client.post("/queue/next")
    case.refresh_from_db()
    held_until = case.lease_expires_at
    last_active(client, seconds_ago=TIMEOUT + 5)

    response = client.post(
        f"/cases/{case.pk}/renew",
        headers={"HX-Request": "true", "HX-Current-URL": f"http://testserver/cases/{case.pk}/"},
    )

    assert response["HX-Redirect"] == f"/login/?next=%2Fcases%2F{case.pk}%2F"
    case.refresh_from_db()
    assert case.lease_expires_at == held_until  # not renewed: the sweep frees it when it runs out
    assert services.case_lease_renew(case=case, moderator=moderator)  # (the lease itself was still fine)
    assert Case.objects.get(pk=case.pk).lease_owner == moderator


def test_a_zero_timeout_turns_it_off(moderator: User, settings: Any, client_for: ClientFor) -> None:
    settings.SESSION_IDLE_TIMEOUT_SECONDS = 0
    client = client_for(moderator)
    last_active(client, seconds_ago=10 * TIMEOUT)

    assert client.get("/queue/").status_code == 200
