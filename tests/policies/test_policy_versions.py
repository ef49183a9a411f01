"""Policy drafts, immutable published versions, and the gated activation."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.utils import DatabaseError

from accounts.roles import Role
from audit.models import AuditEvent
from moderation import services
from moderation.models import Case, Source
from policies import services as policy_services
from policies.lint import OUTLINE_PLACEHOLDERS, POLICY_OUTLINE, policy_lint
from policies.models import Policy, PolicyVersion
from tests.conftest import POLICY_TEXT, ApiClient
from tests.policies.evaluation_helpers import finished_run, golden_set_small
from tests.reviews.helpers import user_create

NEW_TEXT = POLICY_TEXT.replace("- SP2: Links", "- SP3: Fake giveaways.\n- SP2: Links")


@pytest.fixture
def editor(db: None) -> User:
    return user_create("pete", Role.POLICY_EDITOR)


def test_it_saves_a_draft_with_its_rule_ids_tokens_and_hash_and_audits_the_edit(
    policy: Policy, editor: User
) -> None:
    draft = policy_services.policy_draft_create(policy=policy, author=editor)
    assert draft.is_draft and draft.number == 2 and draft.text == POLICY_TEXT
    edited = policy_services.policy_draft_update(version=draft, text=NEW_TEXT, author=editor)
    assert edited.rule_ids == ["SP1", "SP3", "SP2"]
    assert edited.token_count > 0 and edited.content_hash == policy_services.policy_text_hash(NEW_TEXT)
    event = AuditEvent.objects.get(action="policy.draft_edited")
    assert event.actor_label == "pete" and event.payload["content_hash"] == edited.content_hash


def test_it_refuses_to_change_a_published_version_in_the_service(policy: Policy, editor: User) -> None:
    draft = policy_services.policy_draft_create(policy=policy, author=editor)
    policy_services.policy_version_publish(version=draft, author=editor)
    with pytest.raises(policy_services.PolicyVersionRefused):
        policy_services.policy_draft_update(version=draft, text=NEW_TEXT, author=editor)
    draft.refresh_from_db()
    draft.text = NEW_TEXT
    with pytest.raises(ValidationError):
        draft.save()
    assert PolicyVersion.objects.get(pk=draft.pk).text == POLICY_TEXT


def test_it_refuses_to_change_a_published_version_in_the_database(active_version: PolicyVersion) -> None:
    for sql in (
        "UPDATE moderation_policyversion SET text = 'rewritten' WHERE id = %s",
        "UPDATE moderation_policyversion SET content_hash = 'x' WHERE id = %s",
        "UPDATE moderation_policyversion SET status = 'draft' WHERE id = %s",
        "DELETE FROM moderation_policyversion WHERE id = %s",
    ):
        with (
            pytest.raises(DatabaseError, match="immutable"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, [active_version.pk])
    assert PolicyVersion.objects.get(pk=active_version.pk).text == POLICY_TEXT


def test_it_lets_the_database_change_a_draft_and_the_status_of_a_published_version(
    policy: Policy, editor: User, active_version: PolicyVersion
) -> None:
    draft = policy_services.policy_draft_create(policy=policy, author=editor)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE moderation_policyversion SET text = 'x' WHERE id = %s", [draft.pk])
        cursor.execute(
            "UPDATE moderation_policyversion SET status = 'retired' WHERE id = %s", [active_version.pk]
        )
    assert PolicyVersion.objects.get(pk=draft.pk).text == "x"


def test_it_refuses_to_publish_twice(policy: Policy, editor: User) -> None:
    draft = policy_services.policy_draft_create(policy=policy, author=editor)
    policy_services.policy_version_publish(version=draft, author=editor)
    with pytest.raises(policy_services.PolicyVersionRefused, match="already published"):
        policy_services.policy_version_publish(version=draft, author=editor)


def test_publishing_with_the_editors_text_saves_it_then_freezes_it_in_one_call(
    policy: Policy, editor: User
) -> None:
    draft = policy_services.policy_draft_create(policy=policy, author=editor)
    published = policy_services.policy_version_publish(version=draft, author=editor, text=NEW_TEXT)
    assert published.status == PolicyVersion.Status.PUBLISHED
    assert (published.text, published.rule_ids) == (NEW_TEXT, ["SP1", "SP3", "SP2"])
    assert PolicyVersion.objects.get(pk=draft.pk).content_hash == policy_services.policy_text_hash(NEW_TEXT)
    edited = AuditEvent.objects.get(action="policy.draft_edited")
    frozen = AuditEvent.objects.get(action="policy.version_published")
    assert edited.seq < frozen.seq and frozen.payload["content_hash"] == published.content_hash


def test_publishing_refuses_a_blank_text_and_leaves_the_draft_as_it_was(policy: Policy, editor: User) -> None:
    draft = policy_services.policy_draft_create(policy=policy, author=editor)
    with pytest.raises(policy_services.PolicyVersionRefused, match="empty"):
        policy_services.policy_version_publish(version=draft, author=editor, text=" \n")
    draft.refresh_from_db()
    assert draft.is_draft and draft.text == POLICY_TEXT
    with pytest.raises(policy_services.PolicyVersionRefused, match="already published"):
        policy_services.policy_version_publish(
            version=_published(policy, editor), author=editor, text="# rewritten after publishing"
        )


def _published(policy: Policy, editor: User, text: str = NEW_TEXT) -> PolicyVersion:
    draft = policy_services.policy_draft_create(policy=policy, author=editor, text=text)
    return policy_services.policy_version_publish(version=draft, author=editor)


def test_the_gate_blocks_a_version_without_a_run_on_the_current_golden_set(
    policy: Policy, editor: User, active_version: PolicyVersion
) -> None:
    golden_set_small(policy)
    candidate = _published(policy, editor)
    with pytest.raises(policy_services.PolicyVersionRefused, match="no finished evaluation run"):
        policy_services.policy_version_activate(version=candidate, actor=editor)
    assert PolicyVersion.objects.get(pk=active_version.pk).status == PolicyVersion.Status.ACTIVE


def test_the_gate_blocks_a_regression_beyond_the_tolerance(
    policy: Policy, editor: User, active_version: PolicyVersion
) -> None:
    golden_set_small(policy)
    candidate = _published(policy, editor)
    finished_run(active_version, f1=0.90, accuracy=0.90)
    finished_run(candidate, f1=0.85, accuracy=0.91)  # F1 drops 0.05 > tolerance 0.02
    with pytest.raises(policy_services.PolicyVersionRefused, match=r"f1 0\.850 is below"):
        policy_services.policy_version_activate(version=candidate, actor=editor)
    candidate.refresh_from_db()
    assert candidate.status == PolicyVersion.Status.PUBLISHED


def test_the_gate_ignores_runs_made_before_the_golden_set_changed(
    policy: Policy, editor: User, active_version: PolicyVersion
) -> None:
    examples = golden_set_small(policy)
    candidate = _published(policy, editor)
    finished_run(active_version, f1=0.9, accuracy=0.9)
    finished_run(candidate, f1=0.95, accuracy=0.95)
    examples[0].status = "rejected"
    examples[0].save()
    with pytest.raises(policy_services.PolicyVersionRefused, match="current golden set"):
        policy_services.policy_version_activate(version=candidate, actor=editor)


def test_the_gate_passes_within_the_tolerance_and_activation_applies_to_new_cases_only(
    policy: Policy, editor: User, active_version: PolicyVersion, source: ApiClient
) -> None:
    golden_set_small(policy)
    before = services.items_ingest(source=source.source, items=[services.ItemIn("before", "old text")])
    candidate = _published(policy, editor)
    finished_run(active_version, f1=0.90, accuracy=0.90)
    finished_run(candidate, f1=0.89, accuracy=0.95)  # within 0.02
    activation = policy_services.policy_version_activate(version=candidate, actor=editor)
    assert not activation.overridden
    assert PolicyVersion.objects.get(pk=active_version.pk).status == PolicyVersion.Status.RETIRED
    assert PolicyVersion.objects.get(pk=candidate.pk).status == PolicyVersion.Status.ACTIVE
    after = services.items_ingest(source=source.source, items=[services.ItemIn("after", "new text")])
    assert Case.objects.get(pk=before[0].case_ids[0]).policy_version_id == active_version.pk
    assert Case.objects.get(pk=after[0].case_ids[0]).policy_version_id == candidate.pk
    assert AuditEvent.objects.filter(action="policy.version_activated", object_id=str(candidate.pk)).exists()


def test_an_override_needs_a_reason_and_is_audited(
    policy: Policy, editor: User, active_version: PolicyVersion
) -> None:
    golden_set_small(policy)
    candidate = _published(policy, editor)
    with pytest.raises(policy_services.PolicyVersionRefused):
        policy_services.policy_version_activate(version=candidate, actor=editor, override_reason="   ")
    activation = policy_services.policy_version_activate(
        version=candidate, actor=editor, override_reason="Legal asked for the new wording today."
    )
    assert activation.overridden
    event = AuditEvent.objects.get(action="policy.version_activation_overridden")
    assert event.payload["reason"] == "Legal asked for the new wording today."
    assert event.payload["gate_reasons"] and event.actor_label == "pete"


def test_the_first_version_of_a_policy_needs_only_a_finished_run(editor: User) -> None:
    policy = Policy.objects.create(slug="new", name="New")
    version = _published(policy, editor, POLICY_TEXT)
    golden_set_small(policy)
    with pytest.raises(policy_services.PolicyVersionRefused, match="no finished evaluation run"):
        policy_services.policy_version_activate(version=version, actor=editor)
    finished_run(version, f1=0.1, accuracy=0.1)
    assert not policy_services.policy_version_activate(version=version, actor=editor).overridden


def test_the_gate_needs_a_golden_set(policy: Policy, editor: User) -> None:
    candidate = _published(policy, editor)
    with pytest.raises(policy_services.PolicyVersionRefused, match="no accepted examples"):
        policy_services.policy_version_activate(version=candidate, actor=editor)


def test_a_draft_cannot_be_activated(policy: Policy, editor: User) -> None:
    draft = policy_services.policy_draft_create(policy=policy, author=editor)
    with pytest.raises(policy_services.PolicyVersionRefused, match="publish it first"):
        policy_services.policy_version_activate(version=draft, actor=editor, override_reason="because")


def test_the_lint_lists_rule_ids_missing_sections_duplicates_and_length() -> None:
    lint = policy_lint(POLICY_TEXT + "\n- SP1: again\n")
    assert lint.rule_ids == ["SP1", "SP2"]
    assert any("Missing sections: Definitions, Criteria, Examples" in h for h in lint.hints)
    assert any("more than once: SP1" in h for h in lint.hints)
    assert any("shorter than the 400-600 sweet spot" in h for h in lint.hints)
    bare = policy_lint("# P\n\n## Output\nSay yes or no.\n\n## Examples\nnone here\n")
    assert any("verdict JSON" in h for h in bare.hints)
    assert any("Examples section has no examples" in h for h in bare.hints)
    assert any("No rule ids" in h for h in bare.hints)


def test_the_lint_names_example_lines_the_funnel_cannot_learn_from() -> None:
    text = (
        "## Criteria\n- SP1: Spam.\n\n## Examples\n"
        '- "Buy now at bit-ly-fake/x" -> violation, SP1, SP9\n'
        "- buy my stuff (no quotes, no label)\n"
        '- "Nice photo!" -> no violation\n'
    )
    hints = policy_lint(text).hints
    assert any(h.startswith("Line 6 of Examples is not an example") for h in hints)
    assert any("Fewer than 2 violating examples" in h for h in hints)
    assert any("Fewer than 2 safe examples" in h for h in hints)
    assert any("does not define: SP9" in h for h in hints)
    assert not any("Examples section has no examples" in h for h in hints)


def test_the_lint_names_the_outline_placeholders_left_in() -> None:
    outline = POLICY_OUTLINE.format(name="Scams")
    [hint] = [h for h in policy_lint(outline).hints if h.startswith("Placeholder text left in: ")]
    for placeholder in OUTLINE_PLACEHOLDERS:
        assert placeholder in outline, placeholder  # the list follows the outline
        assert f'"{placeholder}"' in hint
    half_done = outline.replace("An example that breaks R1", "Send 0.1 BTC to double it").replace(
        "An ordinary post", "Lunch was great"
    )
    [hint] = [h for h in policy_lint(half_done).hints if h.startswith("Placeholder")]
    assert '"An example that breaks R2"' in hint and "breaks R1" not in hint and "ordinary" not in hint
    assert not [h for h in policy_lint(POLICY_TEXT).hints if "Placeholder" in h]


def test_the_demo_policies_follow_the_recommended_structure() -> None:
    from moderation.management.commands.seed_demo import DEMO_DIR, DEMO_POLICIES, EXAMPLE_POLICIES

    for _, _, filename in DEMO_POLICIES + EXAMPLE_POLICIES:
        lint = policy_lint((DEMO_DIR / filename).read_text())
        assert lint.hints == [], filename
        assert lint.in_sweet_spot and len(lint.rule_ids) == 4, filename


def test_seed_demo_loads_the_example_policies_as_active_versions(db: None) -> None:
    from django.core.management import call_command

    call_command("seed_demo", "--admin-password", "a long demo password", stdout=StringIO())
    active = dict(
        PolicyVersion.objects.filter(status=PolicyVersion.Status.ACTIVE).values_list("policy__slug", "number")
    )
    assert active == {"spam": 1, "harassment": 1, "personal-information": 1, "impersonation": 1}
    assert sorted(Source.objects.get(slug="demo-forum").policies.values_list("slug", flat=True)) == [
        "harassment",
        "spam",
    ]
