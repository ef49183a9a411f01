"""The policy team's pages: who may open them, the draft editor and its checks, diffs, runs, activation."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client

from audit.models import AuditEvent
from inference_worker import evaluation_runs
from inference_worker.runner import EngineConfig
from policies import evaluations
from policies import services as policy_services
from policies.models import EvaluationRun, Policy, PolicyVersion
from tests.conftest import POLICY_TEXT
from tests.policies.evaluation_helpers import finished_run, golden_accepted, golden_set_small

PAGES = [
    ("get", "/policies/"),
    ("get", "/policies/spam/"),
    ("get", "/policies/spam/v1/"),
    ("post", "/policies/spam/v1/lint"),
    ("post", "/policies/spam/drafts"),
    ("get", "/policies/spam/diff?a=1&b=1"),
    ("get", "/policies/spam/golden/"),
    ("get", "/policies/spam/golden/import"),
    ("post", "/policies/spam/runs"),
    ("post", "/policies/spam/v1/activate"),
    ("get", "/runs/compare?a=1&b=1"),
    ("post", "/runs/1/cancel"),
    ("get", "/policies/new"),
    ("post", "/policies/new"),
    ("get", "/policies/spam/settings"),
    ("post", "/policies/spam/settings"),
]


@pytest.mark.parametrize(("method", "url"), PAGES)
@pytest.mark.parametrize("persona", ["moderator", "auditor", "senior_moderator"])
def test_it_refuses_moderators_and_auditors(
    client: Client, request: pytest.FixtureRequest, persona: str, method: str, url: str, policy: Policy
) -> None:
    client.force_login(request.getfixturevalue(persona))
    assert getattr(client, method)(url).status_code == 403


@pytest.mark.parametrize(("method", "url"), PAGES)
def test_it_sends_anonymous_visitors_to_log_in(client: Client, method: str, url: str, policy: Policy) -> None:
    response = getattr(client, method)(url)
    assert response.status_code == 302 and response["Location"].startswith("/login/")


@pytest.mark.parametrize("persona", ["policy_editor", "admin"])
def test_policy_editors_and_admins_see_the_pages_and_the_nav_link(
    client: Client, request: pytest.FixtureRequest, persona: str, policy: Policy
) -> None:
    client.force_login(request.getfixturevalue(persona))
    page = client.get("/policies/")
    assert page.status_code == 200 and 'href="/policies/spam/"' in page.content.decode()
    assert '<a href="/policies/">Policies</a>' in page.content.decode()
    assert client.get("/policies/spam/").status_code == 200


def test_a_policy_editor_lands_on_the_policies(client: Client, policy_editor: User) -> None:
    client.force_login(policy_editor)
    assert client.get("/")["Location"] == "/policies/"


@pytest.fixture
def editor_client(client: Client, policy_editor: User) -> Client:
    client.force_login(policy_editor)
    return client


def test_the_draft_editor_checks_the_text_as_typed_without_saving_it(
    editor_client: Client, policy: Policy, policy_editor: User
) -> None:
    draft = policy_services.policy_draft_create(policy=policy, author=policy_editor)
    page = editor_client.get(f"/policies/spam/v{draft.number}/").content.decode()
    assert 'hx-post="/policies/spam/v2/lint"' in page and 'hx-trigger="input changed delay:400ms"' in page
    typed = POLICY_TEXT + "\n- SP9: <b>new</b> rule\n- SP1: twice\n"
    response = editor_client.post(
        f"/policies/spam/v{draft.number}/lint", {"text": typed}, headers={"HX-Request": "true"}
    )
    panel = response.content.decode()
    assert response.status_code == 200 and panel.lstrip().startswith('<aside id="draft-lint"')
    assert "<code>SP1</code> <code>SP2</code> <code>SP9</code>" in panel
    assert "Rule ids defined more than once: SP1." in panel
    assert "sweet spot 400\N{EN DASH}600" in panel and "tokens (o200k)" in panel
    draft.refresh_from_db()
    assert draft.text == POLICY_TEXT


def test_saving_a_draft_and_publishing_freezes_it(
    editor_client: Client, policy: Policy, policy_editor: User
) -> None:
    draft = policy_services.policy_draft_create(policy=policy, author=policy_editor)
    new_text = POLICY_TEXT + "\n- SP3: Fake giveaways.\n"
    assert editor_client.post("/policies/spam/v2/", {"text": new_text}).status_code == 302
    draft.refresh_from_db()
    assert draft.text == new_text and draft.rule_ids == ["SP1", "SP2", "SP3"]
    assert editor_client.post("/policies/spam/v2/", {"text": ""}).status_code == 400
    assert editor_client.post("/policies/spam/v2/publish").status_code == 302
    draft.refresh_from_db()
    assert draft.status == PolicyVersion.Status.PUBLISHED
    assert editor_client.post("/policies/spam/v2/", {"text": "changed"}).status_code == 403
    again = editor_client.post("/policies/spam/v2/publish")
    assert again.status_code == 409 and "Not published: v2 is already published" in again.content.decode()
    page = editor_client.get("/policies/spam/v2/").content.decode()
    assert "this text never changes" in page and "<textarea" not in page


def test_publishing_from_the_editor_saves_the_text_as_shown_first(
    editor_client: Client, policy: Policy, policy_editor: User
) -> None:
    draft = policy_services.policy_draft_create(policy=policy, author=policy_editor)
    page = editor_client.get("/policies/spam/v2/").content.decode()
    # One form: "Publish" submits the textarea too, so an edit not saved yet is not lost.
    assert 'formaction="/policies/spam/v2/publish"' in page and 'data-unsaved-note="unsaved-note"' in page
    edited = POLICY_TEXT + "\n- SP3: Fake giveaways that ask for a fee.\n"
    response = editor_client.post("/policies/spam/v2/publish", {"text": edited}, follow=True)
    assert response.redirect_chain == [("/policies/spam/", 302)]
    assert "v2 published with your latest edits: its text is now frozen." in response.content.decode()
    draft.refresh_from_db()
    assert draft.status == PolicyVersion.Status.PUBLISHED
    assert (draft.text, draft.rule_ids) == (edited, ["SP1", "SP2", "SP3"])
    actions = list(
        AuditEvent.objects.filter(object_id=str(draft.pk)).order_by("seq").values_list("action", flat=True)
    )
    assert actions[-2:] == ["policy.draft_edited", "policy.version_published"]


def test_publishing_a_blank_editor_is_refused_in_the_editor_and_publishes_nothing(
    editor_client: Client, policy: Policy, policy_editor: User
) -> None:
    draft = policy_services.policy_draft_create(policy=policy, author=policy_editor)
    for blank in ("", "  \n "):
        response = editor_client.post("/policies/spam/v2/publish", {"text": blank})
        assert response.status_code == 400
        body = response.content.decode()
        assert "<textarea" in body and (
            "This field is required." in body or "the policy text is empty" in body
        )
    draft.refresh_from_db()
    assert draft.is_draft and draft.text == POLICY_TEXT


def test_publishing_from_the_policy_page_freezes_the_saved_text(
    editor_client: Client, policy: Policy, policy_editor: User
) -> None:
    draft = policy_services.policy_draft_create(policy=policy, author=policy_editor)
    response = editor_client.post("/policies/spam/v2/publish", follow=True)
    assert "v2 published: its text is now frozen." in response.content.decode()
    draft.refresh_from_db()
    assert draft.status == PolicyVersion.Status.PUBLISHED and draft.text == POLICY_TEXT
    again = editor_client.post("/policies/spam/v2/publish", {"text": "changed"})
    assert again.status_code == 409 and "Not published: v2 is already published" in again.content.decode()


def test_the_diff_shows_both_versions_side_by_side_escaped(
    editor_client: Client, policy: Policy, policy_editor: User
) -> None:
    policy_services.policy_draft_create(
        policy=policy,
        author=policy_editor,
        text=POLICY_TEXT.replace("SP2: Links", "SP2: <script>alert(1)</script>"),
    )
    page = editor_client.get("/policies/spam/diff?a=1&b=2").content.decode()
    assert "<script>alert" not in page
    assert '<tr class="diff-replace">' in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<td class="diff-left">- SP2: Links that disguise their destination.</td>' in page
    assert editor_client.get("/policies/spam/diff?a=1").status_code == 400


def test_starting_a_run_from_the_policy_page_queues_it_for_a_worker(
    editor_client: Client,
    policy: Policy,
    engine_simulator: object,
    settings: object,
    redis_test_db: redis.Redis,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.SAFEGUARD_BASE_URL = engine_simulator.base_url  # type: ignore[attr-defined]
    golden_set_small(policy)
    redis_test_db.delete("celery")
    with django_capture_on_commit_callbacks(execute=True):
        response = editor_client.post(
            "/policies/spam/runs", {"version": policy.versions.get().pk, "effort": "high"}
        )
    run = EvaluationRun.objects.get()
    assert response["Location"] == f"/runs/{run.pk}/"
    assert (run.status, run.effort, run.total) == ("queued", "high", 4)
    message = json.loads(redis_test_db.lindex("celery", 0) or b"{}")
    assert message["headers"]["task"] == "reviews.evaluation_run"
    assert f"'run_id': {run.pk}" in message["headers"]["kwargsrepr"]


def test_a_run_of_another_policys_version_is_refused_with_the_field_error(
    editor_client: Client, policy: Policy, engine_simulator: object, settings: object
) -> None:
    settings.SAFEGUARD_BASE_URL = engine_simulator.base_url  # type: ignore[attr-defined]
    other = Policy.objects.create(slug="other", name="Other")
    version = policy_services.policy_version_create(policy=other, text=POLICY_TEXT)
    response = editor_client.post("/policies/spam/runs", {"version": version.pk, "effort": "extreme"})
    assert response.status_code == 400
    body = response.content.decode()
    assert "Select a valid choice" in body and "extreme is not one of the available choices" in body
    assert not EvaluationRun.objects.exists()


def test_starting_a_run_without_an_engine_says_so(
    editor_client: Client, policy: Policy, settings: object
) -> None:
    settings.SAFEGUARD_BASE_URL = ""  # type: ignore[attr-defined]
    golden_set_small(policy)
    response = editor_client.post("/policies/spam/runs", {"version": policy.versions.get().pk})
    assert response.status_code == 409
    assert "Not started: no reasoning engine configured" in response.content.decode()
    assert not EvaluationRun.objects.exists()


def test_the_progress_partial_polls_until_the_run_ends_then_answers_286_with_the_results(
    editor_client: Client, policy: Policy, active_version: PolicyVersion, engine_config: EngineConfig
) -> None:
    golden_set_small(policy)
    golden_accepted(policy, "<img src=x onerror=alert(1)> zorblax", "violates")
    run = evaluations.evaluation_run_create(
        version=active_version, actor=None, config=engine_config, enqueue=False
    )
    polling = editor_client.get(f"/runs/{run.pk}/progress", headers={"HX-Request": "true"})
    assert polling.status_code == 200 and 'hx-trigger="every 1s"' in polling.content.decode()
    assert '<progress id="run-progress" max="5" value="0">' in polling.content.decode()
    evaluation_runs.evaluation_run_execute(run_id=run.pk, config=engine_config)
    done = editor_client.get(f"/runs/{run.pk}/progress", headers={"HX-Request": "true"})
    body = done.content.decode()
    assert done.status_code == 286
    assert 'value="5"' in body and "hx-trigger" not in body
    assert "Confusion matrix" in body and "<details>" in body
    assert "<img src=x" not in body and "&lt;img src=x onerror=alert(1)&gt;" in body


def test_a_policy_editor_cancels_a_queued_run_from_its_page_and_polling_stops(
    editor_client: Client, policy: Policy, active_version: PolicyVersion, engine_config: EngineConfig
) -> None:
    golden_set_small(policy)
    run = evaluations.evaluation_run_create(
        version=active_version, actor=None, config=engine_config, enqueue=False
    )
    page = editor_client.get(f"/runs/{run.pk}/").content.decode()
    assert f'action="/runs/{run.pk}/cancel"' in page and "Cancel run" in page
    assert editor_client.get(f"/runs/{run.pk}/cancel").status_code == 405
    response = editor_client.post(f"/runs/{run.pk}/cancel", follow=True)
    body = response.content.decode()
    assert response.redirect_chain == [(f"/runs/{run.pk}/", 302)]
    assert f"Run #{run.pk} cancelled." in body and "Cancelled by pete" in body
    assert "Cancel run" not in body
    polled = editor_client.get(f"/runs/{run.pk}/progress", headers={"HX-Request": "true"})
    assert polled.status_code == 286 and "hx-trigger" not in polled.content.decode()
    again = editor_client.post(f"/runs/{run.pk}/cancel")
    assert (
        again.status_code == 409
        and f"Not cancelled: run #{run.pk} is already cancelled." in again.content.decode()
    )


@pytest.mark.parametrize("persona", ["moderator", "auditor"])
def test_only_the_policy_team_cancels_runs(
    client: Client,
    request: pytest.FixtureRequest,
    persona: str,
    policy: Policy,
    active_version: PolicyVersion,
    engine_config: EngineConfig,
) -> None:
    golden_set_small(policy)
    run = evaluations.evaluation_run_create(
        version=active_version, actor=None, config=engine_config, enqueue=False
    )
    client.force_login(request.getfixturevalue(persona))
    assert client.post(f"/runs/{run.pk}/cancel").status_code == 403
    run.refresh_from_db()
    assert run.status == EvaluationRun.Status.QUEUED


def test_the_comparison_page_shows_deltas_and_flipped_items(
    editor_client: Client,
    policy: Policy,
    active_version: PolicyVersion,
    engine_config: EngineConfig,
    engine_simulator: object,
) -> None:
    golden_set_small(policy)
    golden_accepted(policy, "a glorpnik for sale", "violates")
    engine_simulator.violating_words = frozenset({"zorblax"})  # type: ignore[attr-defined]
    runs = []
    for words in ({"zorblax"}, {"zorblax", "glorpnik"}):
        engine_simulator.violating_words = frozenset(words)  # type: ignore[attr-defined]
        run = evaluations.evaluation_run_create(
            version=active_version, actor=None, config=engine_config, enqueue=False
        )
        evaluation_runs.evaluation_run_execute(run_id=run.pk, config=engine_config)
        runs.append(run)
    page = editor_client.get(f"/runs/compare?a={runs[0].pk}&b={runs[1].pk}").content.decode()
    assert '<tr class="delta-better"><th>Recall</th>' in page
    assert "a glorpnik for sale" in page and "1 changed verdict" in page


def test_activation_through_the_page_is_blocked_then_overridden_with_a_reason(
    editor_client: Client, policy: Policy, policy_editor: User, active_version: PolicyVersion
) -> None:
    golden_set_small(policy)
    draft = policy_services.policy_draft_create(policy=policy, author=policy_editor)
    policy_services.policy_version_publish(version=draft, author=policy_editor)
    blocked = editor_client.post("/policies/spam/v2/activate", {"override_reason": "  "})
    assert blocked.status_code == 400
    body = blocked.content.decode()
    assert "Not activated: Give a reason to override the activation gate." in body
    assert "the activation gate is closed" not in body
    assert blocked.context["activate_form"].errors == {
        "override_reason": ["Give a reason to override the activation gate."]
    }
    assert "no finished evaluation run on the current golden set" in body  # the gate says why it is closed
    assert policy.versions.get(status=PolicyVersion.Status.ACTIVE).number == 1
    response = editor_client.post("/policies/spam/v2/activate", {"override_reason": "urgent legal change"})
    assert response.status_code == 302
    assert policy.versions.get(status=PolicyVersion.Status.ACTIVE).number == 2


def test_the_policy_page_offers_activation_when_the_gate_is_open(
    editor_client: Client, policy: Policy, policy_editor: User, active_version: PolicyVersion
) -> None:
    golden_set_small(policy)
    draft = policy_services.policy_draft_create(policy=policy, author=policy_editor)
    policy_services.policy_version_publish(version=draft, author=policy_editor)
    baseline = finished_run(active_version, f1=0.8, accuracy=0.8)
    candidate = finished_run(draft, f1=0.9, accuracy=0.9)
    page = editor_client.get("/policies/spam/").content.decode()
    assert "Gate open" in page and "Activate v2" in page
    assert f"/runs/compare?a={baseline.pk}&amp;b={candidate.pk}" in page
